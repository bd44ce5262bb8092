"""The seed notes (../shared/seeds/) as executable facts about dyngrad.

Each test pins down one behaviour a user's notes describe. Where a note is mistaken, the test
checks what PyTorch actually does and a comment says what the note got wrong.
"""

from __future__ import annotations

import gc
import math
import os
import warnings
import weakref

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.forward_ad import jvp

THIS_FILE = os.path.basename(__file__)


def arr(t):
    """The values of ``t`` as a float64 ndarray (detached)."""
    return np.asarray(t.detach().numpy(), dtype=np.float64)


# --------------------------------------------------------------------------- requires_grad


def test_requires_grad_at_creation_and_by_requires_grad_():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    assert x.requires_grad
    y = dg.tensor([1.0, 2.0])
    assert not y.requires_grad
    assert y.requires_grad_(True) is y
    assert y.requires_grad
    y.requires_grad_(False)
    assert not y.requires_grad


def test_requires_grad_defaults_to_true_in_requires_grad_():
    x = dg.arange(4.0)
    x.requires_grad_()
    assert x.requires_grad


def test_requires_grad_is_an_attribute_not_a_method():
    # Seed 000 writes `x.requires_grad(True)`: in PyTorch requires_grad is a bool attribute
    # (set with `x.requires_grad = True` or `x.requires_grad_(True)`); calling it fails.
    x = dg.tensor([1.0])
    assert x.requires_grad is False
    with pytest.raises(TypeError):
        x.requires_grad(True)
    x.requires_grad = True
    assert x.requires_grad is True


@pytest.mark.parametrize("make", [
    lambda: dg.tensor([1, 2, 3]),
    lambda: dg.arange(3),
    lambda: dg.tensor([True, False]),
    lambda: dg.zeros(2, dtype=dg.int64),
])
def test_requires_grad_only_on_floating_point_tensors(make):
    t = make()
    with pytest.raises(RuntimeError, match="floating point"):
        t.requires_grad_(True)
    with pytest.raises(RuntimeError, match="floating point"):
        t.requires_grad = True
    assert not t.requires_grad


def test_requires_grad_true_at_creation_of_int_tensor_raises():
    with pytest.raises(RuntimeError, match="floating point"):
        dg.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="floating point"):
        dg.arange(3, requires_grad=True)


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
def test_requires_grad_allowed_on_both_float_dtypes(dtype):
    assert dg.ones(2, dtype=dtype, requires_grad=True).requires_grad


def test_setting_requires_grad_false_on_non_leaf_raises_and_suggests_detach():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="leaf") as e1:
        y.requires_grad = False
    assert "detach()" in str(e1.value)
    # Seed 000 claims `requires_grad_` "doesn't check if the variable is a leaf node". It
    # does in PyTorch: turning requires_grad off on a non-leaf raises the same error.
    with pytest.raises(RuntimeError, match="leaf") as e2:
        y.requires_grad_(False)
    assert "detach()" in str(e2.value)
    assert y.requires_grad and y.grad_fn is not None


def test_requires_grad_true_on_non_leaf_attribute_raises_but_method_is_a_no_op():
    # PyTorch: `y.requires_grad = True` on a non-leaf raises ("you can only change
    # requires_grad flags of leaf variables"), while `y.requires_grad_(True)` is accepted and
    # changes nothing (y already requires grad). This is the grain of truth in seed 000.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match="leaf variables"):
        y.requires_grad = True
    assert y.requires_grad_(True) is y
    assert y.requires_grad and not y.is_leaf


def test_detach_is_the_fix_the_error_suggests():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2).detach()
    assert y.is_leaf and not y.requires_grad
    y.requires_grad = True  # a leaf now: allowed
    (y * y).sum().backward()
    np.testing.assert_allclose(arr(y.grad), [4.0, 8.0])
    assert x.grad is None


# --------------------------------------------------------------------------- grad_fn, is_leaf


def test_grad_fn_is_none_on_leaves_and_set_on_results():
    # Seed 002 says "Every tensor has one [grad_fn]" and then, correctly, that leaves and
    # tensors not requiring grad have grad_fn None.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    c = dg.tensor([3.0, 4.0])
    assert x.grad_fn is None
    assert c.grad_fn is None
    assert (c * 2).grad_fn is None  # requires_grad False: nothing is recorded
    y = x * c
    assert y.grad_fn is not None
    assert y.grad_fn.name() == "MulBackward0"
    assert (x + c).grad_fn.name() == "AddBackward0"
    assert x.exp().grad_fn.name() == "ExpBackward0"


def test_grad_fn_next_functions_lead_back_to_leaf_accumulators():
    # Seed 002: autograd keeps a DAG of Function objects; leaves are the inputs. Walking
    # next_functions from the root reaches an AccumulateGrad node for each leaf.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    w = dg.tensor([3.0, 4.0], requires_grad=True)
    loss = (x * w).sum()
    seen, stack, leaves = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.name() == "AccumulateGrad":
            leaves.append(node.variable)
        stack.extend(n for n, _ in node.next_functions)
    assert {id(t) for t in leaves} == {id(x), id(w)}


def test_in_place_op_replaces_grad_fn():
    # Seed 002 says grad_fn is "set only once when the tensor is created". In PyTorch an
    # in-place operation on a non-leaf rebases its history: grad_fn changes.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    assert y.grad_fn.name() == "MulBackward0"
    y.add_(1.0)
    assert y.grad_fn.name() == "AddBackward0"
    y.sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2.0, 2.0])


def test_is_leaf_for_user_tensors_results_and_no_grad_results():
    x = dg.tensor([1.0], requires_grad=True)
    c = dg.tensor([1.0])
    assert x.is_leaf and c.is_leaf
    assert not (x * 2).is_leaf
    assert (c * 2).is_leaf  # requires_grad False tensors are leaves by convention
    with dg.no_grad():
        assert (x * 2).is_leaf
    assert x.detach().is_leaf


# --------------------------------------------------------------------------- .grad buffers


def test_grad_is_none_until_backward_and_reading_it_allocates_nothing():
    # Seed 003 says that reading `x.grad` "allocates memory for the derivative". It does not:
    # .grad is None until a backward pass writes it.
    x = dg.arange(4.0)
    x.requires_grad_(True)
    assert x.grad is None
    assert x.grad is None
    (x * x).sum().backward()
    assert x.grad is not None


def test_grad_accumulates_across_backward_calls():
    x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for k in range(1, 4):
        (x * x).sum().backward()
        np.testing.assert_allclose(arr(x.grad), k * 2 * np.array([1.0, 2.0, 3.0]))


def test_grad_buffer_is_reused_while_accumulating():
    # Seed 001: the .grad buffers of leaves persist across steps; accumulation writes into
    # the same buffer rather than allocating a new one.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    buf = x.grad
    (x * 3).sum().backward()
    assert x.grad is buf
    np.testing.assert_allclose(arr(buf), [6.0, 6.0])


def test_grad_zero_resets_the_buffer():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    buf = x.grad
    x.grad.zero_()
    assert x.grad is buf
    np.testing.assert_array_equal(arr(x.grad), [0.0, 0.0])
    (x * x).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2.0, 4.0])


def test_setting_grad_to_none_resets_accumulation():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    x.grad = None
    assert x.grad is None
    (x * x).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2.0, 4.0])


def test_gradient_of_sum_of_losses_equals_accumulated_gradients():
    # Seed 000: accumulation "comes handy when gradient of sum of losses needs to be computed".
    x = dg.tensor([0.5, -1.0, 2.0], requires_grad=True)
    (x.sin().sum() + (x * x).sum()).backward()
    together = arr(x.grad)
    x.grad = None
    x.sin().sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(arr(x.grad), together, rtol=1e-6)
    xs = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(together, np.cos(xs) + 2 * xs, rtol=1e-6)


def test_leaf_without_requires_grad_gets_no_grad():
    # Seed 002: only leaves with requires_grad=True get .grad.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    c = dg.tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_allclose(arr(x.grad), [3.0, 4.0])


def test_grad_of_non_leaf_is_none_with_a_user_warning():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.sum().backward()
    with pytest.warns(UserWarning, match="retain_grad"):
        assert y.grad is None


def test_retain_grad_keeps_grad_of_non_leaf_without_warning():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.retain_grad()
    assert y.retains_grad
    (y * y).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = y.grad
    np.testing.assert_allclose(arr(g), [4.0, 8.0])
    np.testing.assert_allclose(arr(x.grad), [8.0, 16.0])


# --------------------------------------------------------------------------- non-scalar backward


def test_backward_on_non_scalar_without_gradient_raises():
    x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    with pytest.raises(RuntimeError, match="scalar outputs"):
        y.backward()
    assert x.grad is None


def test_backward_with_gradient_computes_vector_jacobian_product():
    x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    W = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]], dtype=np.float32)
    y = dg.tensor(W) @ (x * x)           # J = W @ diag(2x)
    v = np.array([0.5, -2.0], dtype=np.float32)
    y.backward(gradient=dg.tensor(v))
    J = W * (2 * np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(arr(x.grad), v @ J, rtol=1e-6)


def test_backward_with_ones_gradient_equals_sum_backward():
    # Seeds 000/001: y.backward(gradient=ones(len(y))) does the same as y.sum().backward().
    x1 = dg.tensor([1.0, -2.0, 0.5], requires_grad=True)
    x2 = dg.tensor([1.0, -2.0, 0.5], requires_grad=True)
    y1 = x1.exp() * x1
    y1.backward(gradient=dg.ones(len(y1)))
    (x2.exp() * x2).sum().backward()
    np.testing.assert_allclose(arr(x1.grad), arr(x2.grad), rtol=1e-6)


def test_jacobian_rows_from_one_hot_gradients():
    # Seed 002: the full Jacobian is not what backward computes, but vᵀJ with v = e_i gives
    # row i of it.
    x = dg.tensor([0.3, -1.2, 2.0], requires_grad=True)
    y = dg.stack([x[0] * x[1], x[1].sin(), x[2] * x[2] * x[0]])
    rows = []
    for i in range(3):
        x.grad = None
        v = dg.zeros(3)
        v[i] = 1.0
        y.backward(gradient=v, retain_graph=True)
        rows.append(arr(x.grad))
    a, b, c = 0.3, -1.2, 2.0
    expected = [[b, a, 0.0], [0.0, math.cos(b), 0.0], [c * c, 0.0, 2 * c * a]]
    np.testing.assert_allclose(np.stack(rows), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- retain_graph


def test_second_backward_without_retain_graph_raises():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time") as exc:
        y.backward()
    assert "retain_graph=True" in str(exc.value)


def test_second_backward_with_retain_graph_accumulates():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(arr(x.grad), 3 * 2 * np.array([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()


def test_saved_tensors_are_freed_after_backward():
    # Seed 002: backward runs once "for performance reasons" — the intermediate values saved
    # for backward are released as soon as they have been used.
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    ref = weakref.ref(a)
    loss = (a * a).sum()       # MulBackward0 saves a
    del a
    gc.collect()
    assert ref() is not None   # still needed for backward
    loss.backward()
    gc.collect()
    assert ref() is None       # dropped by backward
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_saved_tensors_of_custom_function_freed_after_backward():
    class Square(dg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 2 * x * g

    x = dg.tensor([1.0, 3.0], requires_grad=True)
    y = Square.apply(x)
    ctx = y.grad_fn
    y.sum().backward()
    np.testing.assert_allclose(arr(x.grad), [2.0, 6.0])
    with pytest.raises(RuntimeError, match="retain_graph"):
        ctx.saved_tensors


def test_custom_function_defines_forward_and_backward():
    # Seed 002: an autograd Function knows its forward computation and its derivative.
    class Cube(dg.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * 3 * x * x

    x = dg.tensor([1.0, -2.0], requires_grad=True)
    y = Cube.apply(x)
    assert y.grad_fn is not None and "Cube" in y.grad_fn.name()
    y.sum().backward()
    np.testing.assert_allclose(arr(x.grad), [3.0, 12.0])


# --------------------------------------------------------------------------- stopping tracking


def test_no_grad_stops_tracking():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    with dg.no_grad():
        assert (x ** 2).requires_grad is False
        assert (x ** 2).grad_fn is None
    assert (x ** 2).requires_grad is True


def test_no_grad_as_decorator_and_enable_grad_inside():
    x = dg.tensor([1.0], requires_grad=True)

    @dg.no_grad()
    def frozen(t):
        return t * 2

    assert frozen(x).requires_grad is False
    with dg.no_grad():
        with dg.enable_grad():
            assert (x * 2).requires_grad
    with dg.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert dg.is_grad_enabled()


def test_detach_stops_tracking_and_shares_memory():
    x = dg.ones(5)
    w = dg.randn(5, 3, requires_grad=True)
    b = dg.randn(3, requires_grad=True)
    z = dg.matmul(x, w) + b
    assert z.requires_grad is True
    z_det = z.detach()
    assert z_det.requires_grad is False
    assert z_det.grad_fn is None
    assert np.shares_memory(z_det.numpy(), z.detach().numpy())


def test_frozen_parameter_gets_no_gradient():
    # Seed 002: disabling tracking freezes parameters.
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    frozen = dg.tensor([3.0, 4.0], requires_grad=True)
    frozen.requires_grad_(False)
    (w * frozen).sum().backward()
    assert frozen.grad is None
    np.testing.assert_allclose(arr(w.grad), [3.0, 4.0])


# --------------------------------------------------------------------------- numpy memory


def test_from_numpy_objects_differ_but_memory_is_shared():
    # Seeds 000/001: `id(A) == id(B)` fails — they are different Python objects — but they
    # point at the same underlying memory.
    A = np.array([1, 2, 3])
    B = dg.from_numpy(A)
    assert id(A) != id(B)
    assert np.shares_memory(A, B.numpy())
    assert B.dtype is dg.int64


def test_from_numpy_in_place_numpy_change_is_visible_in_tensor():
    A = np.array([1.0, 2.0, 3.0])
    B = dg.from_numpy(A)
    A += 1
    assert B.tolist() == [2.0, 3.0, 4.0]
    A[:] = 0
    assert B.tolist() == [0.0, 0.0, 0.0]


def test_from_numpy_in_place_tensor_change_is_visible_in_array():
    A = np.array([1, 2, 3])
    B = dg.from_numpy(A)
    B.add_(1)
    assert A.tolist() == [2, 3, 4]
    B[0] = 10
    assert A.tolist() == [10, 3, 4]


def test_from_numpy_rebinding_with_a_new_array_is_not_shared():
    A = np.array([1, 2, 3])
    B = dg.from_numpy(A)
    A = A + 1  # a new array: B still sees the old memory
    assert B.tolist() == [1, 2, 3]
    assert not np.shares_memory(A, B.numpy())


def test_numpy_of_tensor_shares_memory_both_ways():
    t = dg.zeros(3)
    a = t.numpy()
    a[1] = 5.0
    assert t.tolist() == [0.0, 5.0, 0.0]
    t.add_(1.0)
    assert a.tolist() == [1.0, 6.0, 1.0]


# --------------------------------------------------------------------------- d2l examples


def test_d2l_gradient_of_two_x_dot_x_is_four_x():
    x = dg.arange(4.0)
    x.requires_grad_(True)
    assert x.grad is None
    y = 2 * dg.dot(x, x)
    assert y.item() == 28.0
    y.backward()
    np.testing.assert_array_equal(arr(x.grad), 4 * np.arange(4.0))
    assert (x.grad == 4 * x).all()
    x.grad.zero_()
    x.sum().backward()
    np.testing.assert_array_equal(arr(x.grad), np.ones(4))


def test_d2l_x_times_x_with_ones_gradient():
    x = dg.arange(4.0)
    x.requires_grad_(True)
    y = x * x
    y.backward(gradient=dg.ones(len(y)))
    np.testing.assert_array_equal(arr(x.grad), [0.0, 2.0, 4.0, 6.0])


def test_seed_example_z_equals_x_y_plus_y_squared():
    x = dg.tensor(2.0, requires_grad=True)
    y = dg.tensor(3.0, requires_grad=True)
    z = x * y + y ** 2
    z.backward()
    assert x.grad.item() == 3.0   # dz/dx = y
    assert y.grad.item() == 8.0   # dz/dy = x + 2y


def _bce_with_logits(z, y):
    """Mean binary cross-entropy with logits, the numerically stable form."""
    return (dg.maximum(z, 0.0) - z * y + dg.log1p(dg.exp(-dg.abs(z)))).mean()


def _bce_numpy(x, y, w, b):
    z = x @ w + b
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))


def _finite_difference(f, p, eps=1e-6):
    g = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + eps
        hi = f()
        p[i] = old - eps
        lo = f()
        p[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


def test_bce_with_logits_example_gradients_match_finite_differences():
    dg.manual_seed(0)
    x = dg.ones(5)
    y = dg.zeros(3)
    w = dg.randn(5, 3, requires_grad=True)
    b = dg.randn(3, requires_grad=True)
    z = dg.matmul(x, w) + b
    loss = _bce_with_logits(z, y)
    loss.backward()
    assert w.grad.shape == (5, 3) and b.grad.shape == (3,)

    xn, yn = arr(x), arr(y)
    wn, bn = arr(w).copy(), arr(b).copy()
    np.testing.assert_allclose(loss.item(), _bce_numpy(xn, yn, wn, bn), rtol=1e-5)
    gw = _finite_difference(lambda: _bce_numpy(xn, yn, wn, bn), wn)
    gb = _finite_difference(lambda: _bce_numpy(xn, yn, wn, bn), bn)
    np.testing.assert_allclose(arr(w.grad), gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(arr(b.grad), gb, rtol=1e-4, atol=1e-6)
    # and the closed form: dL/dz = (sigmoid(z) - y) / n
    zn = xn @ wn + bn
    dz = (1 / (1 + np.exp(-zn)) - yn) / 3
    np.testing.assert_allclose(arr(b.grad), dz, rtol=1e-5)
    np.testing.assert_allclose(arr(w.grad), np.outer(xn, dz), rtol=1e-5)


def test_seed_snippet_with_library_bce_with_logits_matches_the_stable_formula():
    # the seed's code verbatim, with dg.nn.functional in place of torch.nn.functional
    F = pytest.importorskip("dyngrad.nn.functional")
    dg.manual_seed(0)
    x = dg.ones(5)
    y = dg.zeros(3)
    w = dg.randn(5, 3, requires_grad=True)
    b = dg.randn(3, requires_grad=True)
    z = dg.matmul(x, w) + b
    loss = F.binary_cross_entropy_with_logits(z, y)
    loss.backward()
    grads = arr(w.grad), arr(b.grad)
    w.grad = b.grad = None
    ref = _bce_with_logits(dg.matmul(x, w) + b, y)
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    np.testing.assert_allclose(grads[0], arr(w.grad), rtol=1e-6)
    np.testing.assert_allclose(grads[1], arr(b.grad), rtol=1e-6)


def test_bce_with_logits_is_stable_for_large_logits():
    z = dg.tensor([-200.0, 0.0, 200.0], requires_grad=True)
    y = dg.tensor([1.0, 0.5, 0.0])
    loss = _bce_with_logits(z, y)
    assert math.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), (200 + math.log(2) + 200) / 3, rtol=1e-6)
    loss.backward()
    np.testing.assert_allclose(arr(z.grad), np.array([-1.0, 0.0, 1.0]) / 3, atol=1e-7)


def test_bce_with_logits_gradcheck_in_float64():
    dg.manual_seed(1)
    x = dg.randn(4, 5, dtype=dg.float64)
    y = (dg.rand(4, 3) > 0.5).double()
    w = dg.randn(5, 3, dtype=dg.float64, requires_grad=True)
    b = dg.randn(3, dtype=dg.float64, requires_grad=True)
    assert dg.testing.gradcheck(lambda w, b: _bce_with_logits(x @ w + b, y), (w, b))


# --------------------------------------------------------------------------- control flow


def d2l_f(a):
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    if b.sum() > 0:
        c = b
    else:
        c = 100 * b
    return c


@pytest.mark.parametrize("value", [0.3, 1.0, -0.7, 1e-3, -1e-3, 5.0, 700.0, -2000.0])
def test_d2l_control_flow_gradient_is_d_over_a(value):
    a = dg.tensor(value, requires_grad=True)
    d = d2l_f(a)
    d.backward()
    np.testing.assert_allclose(a.grad.item(), (d / a).item(), rtol=1e-6)


def test_d2l_control_flow_with_random_scalar_and_vector_input():
    dg.manual_seed(3)
    for shape in [(), (3,), (2, 2)]:
        for _ in range(5):
            a = dg.randn(*shape, requires_grad=True)
            d = d2l_f(a)
            d.sum().backward()
            np.testing.assert_allclose(arr(a.grad), arr(d / a), rtol=1e-5)


def test_dynamic_graph_is_rebuilt_every_iteration():
    # Seeds 001/002/004: a new graph each forward pass, so control flow and shapes may
    # change from one iteration to the next; .grad of parameters persists across them.
    w = dg.tensor(0.5, requires_grad=True)
    expected = 0.0
    for step, n in enumerate([1, 4, 2, 7, 3]):
        x = dg.arange(float(n)) + 1.0
        if step % 2:
            loss = (w * x).sum()
            expected += float(np.arange(n).sum() + n)
        else:
            loss = (w * w * x).mean()
            expected += 2 * 0.5 * float((np.arange(n) + 1).mean())
        loss.backward()
        np.testing.assert_allclose(w.grad.item(), expected, rtol=1e-6)


def test_each_iteration_builds_a_fresh_graph_after_backward_freed_the_old_one():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    nodes = []
    for _ in range(3):
        loss = (w * w).sum()
        nodes.append(loss.grad_fn)
        loss.backward()
    assert len({id(n) for n in nodes}) == 3
    np.testing.assert_allclose(arr(w.grad), 3 * np.array([2.0, 4.0]))


def test_print_and_python_debugging_inside_the_forward_pass():
    # Seed 001: because the graph is dynamic, reading values mid-forward just works.
    x = dg.tensor([1.0, -2.0], requires_grad=True)
    h = x * 3
    seen = repr(h), float(h.sum()), h.tolist()
    assert seen[1] == -3.0 and seen[2] == [3.0, -6.0]
    assert "grad_fn=<MulBackward0>" in seen[0]
    (h * h).sum().backward()
    np.testing.assert_allclose(arr(x.grad), [18.0, -36.0])


# --------------------------------------------------------------------------- modes of AD


def test_forward_mode_and_reverse_mode_agree():
    # Seed 004: forward accumulation gives J·v (one column per input direction), reverse
    # gives vᵀJ (one row per output); both assemble the same Jacobian.
    def f(x):
        return dg.stack([(x[0] * x[1]).sin(), x[1].exp() + x[2] * x[0], x.sum() * x[2]])

    x0 = np.array([0.4, -0.3, 1.5], dtype=np.float64)
    cols = []
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0
        _, t = jvp(f, (dg.tensor(x0),), (dg.tensor(e),))
        cols.append(arr(t))
    J_forward = np.stack(cols, axis=1)
    rows = []
    x = dg.tensor(x0, requires_grad=True)
    y = f(x)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0
        (g,) = dg.autograd.grad(y, x, grad_outputs=dg.tensor(e), retain_graph=True)
        rows.append(arr(g))
    J_reverse = np.stack(rows)
    np.testing.assert_allclose(J_forward, J_reverse, rtol=1e-12)


def test_forward_mode_directional_derivative_equals_gradient_dot_direction():
    x0 = dg.tensor([0.3, 0.7, -1.1], dtype=dg.float64)
    v = dg.tensor([1.0, -2.0, 0.5], dtype=dg.float64)

    def f(x):
        return (x * x.sin()).sum()

    _, dy = jvp(f, (x0,), (v,))
    x = x0.clone().requires_grad_(True)
    f(x).backward()
    np.testing.assert_allclose(dy.item(), float(arr(x.grad) @ arr(v)), rtol=1e-12)


def test_higher_order_gradient_with_create_graph():
    x = dg.tensor(2.0, requires_grad=True)
    y = x ** 3
    (g,) = dg.autograd.grad(y, x, create_graph=True)
    assert g.item() == pytest.approx(12.0)   # 3x²
    assert g.requires_grad
    (h,) = dg.autograd.grad(g, x, create_graph=True)
    assert h.item() == pytest.approx(12.0)   # 6x
    (t,) = dg.autograd.grad(h, x)
    assert t.item() == pytest.approx(6.0)


@pytest.mark.parametrize("value", [-1.5, 0.0, 0.5, 3.0])
def test_second_derivative_of_cube_is_six_x_with_backward(value):
    x = dg.tensor(value, dtype=dg.float64, requires_grad=True)
    y = x * x * x
    y.backward(create_graph=True)
    g = x.grad
    assert g.item() == pytest.approx(3 * value ** 2)
    x.grad = None
    g.backward()
    assert x.grad.item() == pytest.approx(6 * value)


# --------------------------------------------------------------------------- hooks


def test_hook_on_leaf_replaces_its_gradient():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.tolist()))
    x.register_hook(lambda g: g * 10)
    (x * x).sum().backward()
    assert seen == [[2.0, 4.0]]
    np.testing.assert_allclose(arr(x.grad), [20.0, 40.0])


def test_hook_on_non_leaf_replaces_gradient_flowing_on():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    y.register_hook(lambda g: dg.ones_like(g))
    (y * y).sum().backward()     # dL/dy = 2y replaced by 1
    np.testing.assert_allclose(arr(x.grad), [3.0, 3.0])


def test_hook_returning_none_keeps_gradient():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    calls = []
    x.register_hook(lambda g: calls.append(1))
    (x * 2).sum().backward()
    assert calls == [1]
    np.testing.assert_allclose(arr(x.grad), [2.0, 2.0])


def test_removed_hook_is_not_called():
    x = dg.tensor([1.0], requires_grad=True)
    y = x * 2
    h_leaf = x.register_hook(lambda g: g * 100)
    h_mid = y.register_hook(lambda g: g * 100)
    h_leaf.remove()
    h_mid.remove()
    h_mid.remove()  # removing twice is harmless
    y.sum().backward()
    assert x.grad.item() == 2.0


def test_register_hook_on_tensor_without_requires_grad_raises():
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        dg.tensor([1.0]).register_hook(lambda g: g)


# --------------------------------------------------------------------------- in-place


def test_in_place_on_leaf_requiring_grad_raises_outside_no_grad():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    for op in (lambda: w.add_(1.0), lambda: w.mul_(2.0), lambda: w.zero_()):
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            op()
    with pytest.raises(RuntimeError, match="leaf Variable"):
        w += 1
    with pytest.raises(RuntimeError, match="leaf Variable"):
        w[0] = 5.0
    with pytest.raises(RuntimeError, match="leaf Variable"):
        w[:1].add_(1.0)   # through a view of the leaf
    assert w.tolist() == [1.0, 2.0]


def test_in_place_on_leaf_requiring_grad_works_inside_no_grad():
    # what an optimizer step does
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    with dg.no_grad():
        w.sub_(0.1 * w.grad)
        w[0] = w[0] * 1.0
    np.testing.assert_allclose(arr(w), [0.8, 1.6], rtol=1e-6)
    assert w.is_leaf and w.requires_grad and w.grad_fn is None


def test_in_place_through_data_is_allowed_on_leaf():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    w.data.mul_(3.0)
    assert w.tolist() == [3.0, 6.0]
    assert w.is_leaf and w.requires_grad


def _modify_saved_through(kind):
    """y = exp(x·1) saves its output; change y in place through a view of ``kind``."""
    x = dg.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], requires_grad=True)
    y = (x * 1.0).exp()
    loss = y.sum()
    with dg.no_grad():
        if kind == "self":
            y.add_(1.0)
        elif kind == "reshape":
            y.reshape(6).add_(1.0)
        elif kind == "view":
            y.view(3, 2)[0].mul_(2.0)
        elif kind == "transpose":
            y.transpose(0, 1).add_(1.0)
        elif kind == "T":
            y.T.add_(1.0)
        elif kind == "slice":
            y[1, 1:].zero_()
        elif kind == "int_index":
            y[0].fill_(3.0)
        elif kind == "setitem":
            y[0, 0] = 7.0
        elif kind == "detach":
            y.detach().add_(1.0)
        elif kind == "data":
            y.data.add_(1.0)
        elif kind == "view_of_view":
            y.transpose(0, 1)[1:][0].add_(1.0)
        elif kind == "numpy_is_not_tracked":
            y.detach().numpy()[0, 0] = 9.0
    return x, loss


@pytest.mark.parametrize("kind", ["self", "reshape", "view", "transpose", "T", "slice",
                                  "int_index", "setitem", "detach", "data", "view_of_view"])
def test_in_place_change_of_saved_tensor_through_any_view_raises_at_backward(kind):
    # The version counter lives on the shared storage, so a write through any alias is seen.
    # Note: in PyTorch a write through `.data` is *not* detected (.data has its own version
    # counter) and silently gives a wrong gradient; dyngrad shares the counter with .data
    # as well, so the mistake is reported instead.
    x, loss = _modify_saved_through(kind)
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as exc:
        loss.backward()
    msg = str(exc.value)
    assert "ExpBackward0" in msg
    assert "version 1" in msg and "expected version 0" in msg


def test_write_through_numpy_memory_is_not_versioned():
    # A write through the raw numpy array bypasses dyngrad entirely (as in PyTorch):
    # backward runs, with the modified value.
    x, loss = _modify_saved_through("numpy_is_not_tracked")
    loss.backward()
    assert x.grad is not None


def test_in_place_change_of_saved_input_raises_naming_the_op_and_versions():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    a = x * 1.0
    y = a.sin()          # saves its input a
    a.mul_(2.0)
    with pytest.raises(RuntimeError, match="SinBackward0") as exc:
        y.sum().backward()
    assert "is at version 1; expected version 0" in str(exc.value)


def test_in_place_change_not_needed_by_backward_is_fine():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    a = x * 1.0
    y = a + 3.0          # add saves nothing
    a.mul_(2.0)
    y.sum().backward()
    np.testing.assert_allclose(arr(x.grad), [1.0, 1.0])


def test_in_place_through_view_flows_gradient_to_base():
    x = dg.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    y = x * 1.0
    y[1:3].mul_(10.0)
    y.sum().backward()
    np.testing.assert_allclose(arr(x.grad), [1.0, 10.0, 10.0, 1.0])


# --------------------------------------------------------------------------- anomaly mode


def test_anomaly_mode_names_the_forward_op_and_where_it_was_created():
    x = dg.tensor([0.0, 1.0], requires_grad=True)
    with pytest.warns(UserWarning, match="Anomaly Detection"):
        with dg.autograd.detect_anomaly():
            y = (x.sqrt() * 0.0).sum()   # d/dx sqrt at 0 is inf; inf·0 is nan
            with pytest.raises(RuntimeError, match="SqrtBackward0") as exc:
                y.backward()
    msg = str(exc.value)
    assert "nan" in msg
    assert THIS_FILE in msg
    assert "x.sqrt()" in msg


def test_without_anomaly_mode_nan_gradients_pass_silently():
    x = dg.tensor([0.0, 1.0], requires_grad=True)
    (x.sqrt() * 0.0).sum().backward()
    assert math.isnan(x.grad.tolist()[0])


# --------------------------------------------------------------------------- deep graphs


def test_chain_of_100000_ops_backpropagates():
    x = dg.tensor(1.0, requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0
    y.backward()
    assert x.grad.item() == 1.0
