"""Function transforms (``dyngrad.func``): grad, grad_and_value, vjp, jvp, jacrev, jacfwd,
hessian and vmap — against closed forms, finite differences, each other, a Python loop and
(when installed) ``torch.func``.

vmap is checked three ways: its result equals stacking ``f`` over the examples, it calls
``f`` once (it batches each primitive instead of looping), and when ``f`` reads batched
values into Python it falls back to the loop and says why.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngrad as dg
from dyngrad.dispatch import active_modes
from dyngrad.forward_ad import JvpMode
from dyngrad.func import grad, grad_and_value, hessian, jacfwd, jacrev, jvp, vjp, vmap
from dyngrad.testing import assert_close

RNG = np.random.default_rng(0)


def t64(*shape, requires_grad=False):
    return dg.tensor(RNG.standard_normal(shape), dtype=dg.float64,
                     requires_grad=requires_grad)


def loop(f, *args, in_dims=0, out_dim=0):
    """What vmap must equal: ``f`` on each example, stacked."""
    dims = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    outs = [f(*[a if d is None else dg.narrow(a, d, i, 1).squeeze(d)
                for a, d in zip(args, dims)]) for i in range(size)]
    if isinstance(outs[0], tuple):
        return tuple(dg.stack([o[k] for o in outs], out_dim) for k in range(len(outs[0])))
    return dg.stack(outs, out_dim)


class Counted:
    """Wraps a function and counts its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0
        self.__name__ = getattr(f, "__name__", "f")

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.f(*args, **kwargs)


def batched_equals_loop(f, *args, in_dims=0, out_dims=0, atol=1e-10):
    """Assert vmap(f) equals the loop, called f exactly once and did not fall back."""
    counted = Counted(f)
    v = vmap(counted, in_dims=in_dims, out_dims=out_dims)
    got = v(*args)
    assert v.fallback_reason is None
    assert counted.calls == 1
    want = loop(f, *args, in_dims=in_dims, out_dim=out_dims if isinstance(out_dims, int) else 0)
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            assert_close(g.detach(), w.detach(), atol=atol)
    else:
        assert_close(got.detach(), want.detach(), atol=atol)
    return got


@pytest.fixture(autouse=True)
def no_mode_leaks():
    assert active_modes() == ()
    yield
    assert active_modes() == ()


# ==================================================================== grad


def test_grad_of_sum_of_cubes_is_three_x_squared():
    x = t64(5)
    assert_close(grad(lambda x: (x ** 3).sum())(x), 3 * x * x)


def test_grad_argnums_int_differentiates_that_argument():
    x, y = t64(3), t64(3)
    assert_close(grad(lambda x, y: (x * y).sum(), argnums=1)(x, y), x)


def test_grad_argnums_tuple_returns_one_gradient_per_argument():
    x, y = t64(3), t64(3)
    gx, gy = grad(lambda x, y: (x * y.sin()).sum(), argnums=(0, 1))(x, y)
    assert_close(gx, y.sin())
    assert_close(gy, x * y.cos())


def test_grad_has_aux_returns_aux_unchanged():
    x = t64(4)
    g, aux = grad(lambda x: ((x * x).sum(), {"n": 4, "y": x * 2}), has_aux=True)(x)
    assert_close(g, 2 * x)
    assert aux["n"] == 4
    assert_close(aux["y"], 2 * x)


def test_grad_and_value_returns_gradient_and_value():
    x = t64(4)
    g, value = grad_and_value(lambda x: x.exp().sum())(x)
    assert_close(g, x.exp())
    assert_close(value, x.exp().sum())
    assert not value.requires_grad


def test_grad_of_unused_argument_is_zero():
    x, y = t64(3), t64(2)
    gy = grad(lambda x, y: x.sum(), argnums=1)(x, y)
    assert_close(gy, dg.zeros(2, dtype=dg.float64))


def test_grad_leaves_dot_grad_of_inputs_untouched():
    x = t64(3, requires_grad=True)
    grad(lambda x: (x * x).sum())(x)
    assert x.grad is None


def test_grad_of_non_scalar_output_raises():
    with pytest.raises(RuntimeError, match="one-element"):
        grad(lambda x: x * 2)(t64(3))


def test_grad_of_grad_is_second_derivative():
    x = t64(4)
    d2 = grad(lambda x: grad(lambda x: (x ** 3).sum())(x).sum())(x)
    assert_close(d2, 6 * x)


# ==================================================================== vjp


def test_vjp_fn_can_be_called_several_times_with_different_cotangents():
    a = t64(3, 4)
    x = t64(4)
    out, vjp_fn = vjp(lambda x: (a @ x).tanh(), x)
    jac = (1 - out * out).unsqueeze(1) * a  # d tanh(a x) / dx
    for _ in range(3):
        v = t64(3)
        (g,) = vjp_fn(v)
        assert_close(g, v @ jac)


def test_vjp_of_tuple_output_takes_one_cotangent_per_output():
    x = t64(3)
    (y, z), vjp_fn = vjp(lambda x: (x * 2, x.sin()), x)
    u, w = t64(3), t64(3)
    (g,) = vjp_fn((u, w))
    assert_close(g, 2 * u + w * x.cos())


def test_vjp_with_two_primals_returns_two_gradients():
    x, y = t64(3), t64(3)
    _, vjp_fn = vjp(lambda x, y: x * y, x, y)
    v = t64(3)
    gx, gy = vjp_fn(v)
    assert_close(gx, v * y)
    assert_close(gy, v * x)


# ==================================================================== jvp


def test_jvp_matches_finite_differences():
    def f(x):
        return (x.sin() * x.exp()).sum(0, keepdim=True) * x
    x, t = t64(5), t64(5)
    out, tangent = jvp(f, (x,), (t,))
    eps = 1e-6
    fd = (f(x + eps * t) - f(x - eps * t)) / (2 * eps)
    assert_close(out, f(x))
    assert_close(tangent, fd, atol=1e-7)


def test_jvp_is_forward_mode_and_never_runs_backward(monkeypatch):
    import dyngrad.autograd as autograd
    import dyngrad.autograd.engine as engine

    def no_backward(*a, **k):
        raise AssertionError("jvp ran the backward engine")
    monkeypatch.setattr(engine, "run_backward", no_backward)
    monkeypatch.setattr(autograd, "run_backward", no_backward)
    seen = []

    def f(x):
        seen.extend(type(m) for m in active_modes())
        return (x * x).tanh()
    x, t = t64(3), t64(3)
    _, tangent = jvp(f, (x,), (t,))
    assert JvpMode in seen
    assert_close(tangent, t * 2 * x * (1 - (x * x).tanh() ** 2))


def test_jvp_with_has_aux_returns_aux():
    x, t = t64(3), t64(3)
    out, tangent, aux = jvp(lambda x: (x.exp(), "aux"), (x,), (t,), has_aux=True)
    assert aux == "aux"
    assert_close(tangent, t * x.exp())


def test_jvp_of_two_primals_sums_both_directions():
    x, y, tx, ty = t64(3), t64(3), t64(3), t64(3)
    _, tangent = jvp(lambda x, y: x * y, (x, y), (tx, ty))
    assert_close(tangent, tx * y + x * ty)


# ==================================================================== jacobians


def make_nm(n, m, seed=0):
    rng = np.random.default_rng(seed)
    a = dg.tensor(rng.standard_normal((m, n)), dtype=dg.float64)
    b = dg.tensor(rng.standard_normal((m, n)), dtype=dg.float64)

    def f(x):
        return (a @ x).tanh() * (x * x).sum() + b @ x.sin()
    return f, a, b


@pytest.mark.parametrize("n,m", [(1, 1), (3, 1), (1, 4), (3, 2), (2, 5), (6, 6)])
def test_jacrev_equals_jacfwd_for_n_to_m_functions(n, m):
    f, _, _ = make_nm(n, m, seed=n * 10 + m)
    x = t64(n)
    jr, jf = jacrev(f)(x), jacfwd(f)(x)
    assert jr.shape == jf.shape == (m, n)
    assert_close(jr, jf, atol=1e-12)


@pytest.mark.parametrize("n,m", [(1, 1), (3, 2), (2, 5), (6, 6)])
def test_jacrev_and_jacfwd_match_torch_func(n, m):
    torch = pytest.importorskip("torch")
    f, a, b = make_nm(n, m, seed=n * 10 + m)
    ta, tb = torch.from_numpy(a.numpy()), torch.from_numpy(b.numpy())

    def tf(x):
        return (ta @ x).tanh() * (x * x).sum() + tb @ x.sin()
    x = t64(n)
    want = torch.func.jacrev(tf)(torch.from_numpy(x.numpy().copy())).numpy()
    assert_close(jacrev(f)(x), want, atol=1e-12)
    assert_close(jacfwd(f)(x), want, atol=1e-12)


def test_jacobian_shape_is_output_shape_then_input_shape():
    x = t64(2, 3)
    j = jacrev(lambda x: x.sum(0) * 2)(x)
    assert j.shape == (3, 2, 3)
    assert_close(jacfwd(lambda x: x.sum(0) * 2)(x), j)


def test_jacrev_argnums_tuple_gives_one_jacobian_per_argument():
    x, y = t64(3), t64(3)
    jx, jy = jacrev(lambda x, y: x * y, argnums=(0, 1))(x, y)
    assert_close(jx, dg.tensor(np.diag(y.numpy())))
    assert_close(jy, dg.tensor(np.diag(x.numpy())))


def test_hessian_of_quadratic_form_is_symmetrised_matrix():
    a = t64(4, 4)
    h = hessian(lambda x: x @ a @ x)(t64(4))
    assert_close(h, a + a.T, atol=1e-12)


def test_hessian_matches_torch_func_hessian():
    torch = pytest.importorskip("torch")
    w = t64(3, 3)
    tw = torch.from_numpy(w.numpy())
    x = t64(3)
    got = hessian(lambda x: ((w @ x).tanh() * x.exp()).sum())(x)
    want = torch.func.hessian(lambda x: ((tw @ x).tanh() * x.exp()).sum())(
        torch.from_numpy(x.numpy().copy()))
    assert_close(got, want.numpy(), atol=1e-12)


def test_jacrev_of_jacrev_equals_hessian():
    f = lambda x: (x.sin() * x.sum()).sum()  # noqa: E731
    x = t64(3)
    assert_close(jacrev(jacrev(f))(x), hessian(f)(x), atol=1e-12)


# ==================================================================== vmap: batched rules


@pytest.mark.parametrize("f", [
    lambda x: x.sin() * 2 + 1,
    lambda x: (x.exp() - x).tanh().abs().sqrt(),
    lambda x: dg.where(x > 0, x, x * 0.1),
    lambda x: dg.maximum(x, 0.0) ** 2 - dg.minimum(x, 0.5),
    lambda x: x.erf() + x.sign() * x.floor() + (x * x + 1).log() + x.abs().log1p(),
    lambda x: (x > 0.2).float() + (x <= 0).long().double(),
    lambda x: dg.sigmoid(x) + dg.gelu(x) + dg.relu(x),
    lambda x: x.clamp(-0.5, 0.5),
], ids=["affine", "unary-chain", "where", "max-min-pow", "erf-sign-floor-log", "compare-cast",
        "activations", "clamp"])
def test_vmap_elementwise_equals_loop(f):
    batched_equals_loop(f, t64(6, 3, 2))


def test_vmap_elementwise_with_unbatched_operands_of_higher_rank_broadcasts_per_example():
    c = t64(4, 3)  # unbatched, higher rank than the per-example x of shape (3,)
    batched_equals_loop(lambda x: x * c + c.exp(), t64(5, 3))
    batched_equals_loop(lambda x, c: x - c, t64(5, 3), c, in_dims=(0, None))


@pytest.mark.parametrize("reduce", [
    lambda x: x.sum(),
    lambda x: x.sum(0),
    lambda x: x.sum(-1, keepdim=True),
    lambda x: x.sum((0, 2)),
    lambda x: x.mean(1),
    lambda x: x.amax(0, keepdim=True),
    lambda x: x.amin(),
    lambda x: x.var(-1),
    lambda x: x.std(),
    lambda x: x.softmax(-1),
    lambda x: x.log_softmax(0),
    lambda x: x.logsumexp(1),
    lambda x: x.argmax(1),
    lambda x: x.max(2).values,
    lambda x: x.prod(1),
    lambda x: x.norm(),
], ids=["sum", "sum0", "sum-keepdim", "sum02", "mean", "amax-keepdim", "amin", "var", "std",
        "softmax", "log_softmax", "logsumexp", "argmax", "max-values", "prod", "norm"])
def test_vmap_reduction_equals_loop(reduce):
    batched_equals_loop(reduce, t64(4, 3, 5, 2))


@pytest.mark.parametrize("shapes,in_dims", [
    (((5, 3, 4), (4, 2)), (0, None)),        # batched @ unbatched
    (((3, 4), (5, 4, 2)), (None, 0)),        # unbatched @ batched
    (((5, 3, 4), (5, 4, 2)), (0, 0)),        # both batched
    (((5, 2, 3, 4), (4, 6)), (0, None)),     # higher-rank batched @ matrix
    (((3, 4), (5, 7, 4, 2)), (None, 0)),     # matrix @ higher-rank batched
    (((5, 3, 4), (7, 4, 2)), (0, None)),     # batch dims broadcast against unbatched ones
    (((5, 4), (4, 2)), (0, None)),           # vector @ matrix per example
    (((3, 4), (5, 4)), (None, 0)),           # matrix @ vector per example
    (((5, 4), (5, 4)), (0, 0)),              # dot per example
])
def test_vmap_matmul_equals_loop(shapes, in_dims):
    a, b = (t64(*s) for s in shapes)
    batched_equals_loop(lambda a, b: a @ b, a, b, in_dims=in_dims)


@pytest.mark.parametrize("move", [
    lambda x: x.reshape(-1),
    lambda x: x.reshape(2, -1),
    lambda x: x.view(3, 2, 2).sum(1),
    lambda x: x.permute(2, 0, 1),
    lambda x: x.transpose(0, 2),
    lambda x: x.T,
    lambda x: x[1:, ::2],
    lambda x: x[0],
    lambda x: x[..., 1],
    lambda x: x[:, None],
    lambda x: dg.cat([x, x * 2], 1),
    lambda x: dg.stack([x, x.exp()], -1),
    lambda x: x[:, :1].expand(3, 4, 2),
    lambda x: x.unsqueeze(0).expand(5, 3, 2, 2),
    lambda x: x.flatten(1),
    lambda x: x.squeeze(),
    lambda x: x.split(1, 0)[1],
    lambda x: x.chunk(2, 2)[0] * x.chunk(2, 2)[1],
    lambda x: x.repeat(2, 1, 3),
    lambda x: x.narrow(1, 1, 1),
    lambda x: x.contiguous(),
], ids=["reshape-flat", "reshape-neg1", "view", "permute", "transpose", "T", "slice-step",
        "int-index", "ellipsis", "none-index", "cat", "stack", "expand", "expand-new-dims",
        "flatten", "squeeze", "split", "chunk", "repeat", "narrow", "contiguous"])
def test_vmap_movement_equals_loop(move):
    batched_equals_loop(move, t64(5, 3, 2, 2))


def test_vmap_cat_with_an_unbatched_operand_equals_loop():
    c = t64(2, 4)
    batched_equals_loop(lambda x: dg.cat([x, c], 0), t64(5, 3, 4))


def test_vmap_pad_primitive_equals_loop():
    from dyngrad.ops.movement import pad
    batched_equals_loop(lambda x: pad(x, [(1, 0), (2, 1, 1)], value=-1.0), t64(5, 3, 2))


def test_vmap_indexing_with_an_unbatched_index_equals_loop():
    idx = dg.tensor([2, 0, 2, 1])
    batched_equals_loop(lambda x: x[idx], t64(5, 3, 2))
    batched_equals_loop(lambda x: x[:, idx], t64(5, 2, 3))
    batched_equals_loop(lambda x: x.index_select(1, idx), t64(5, 2, 3))


def test_vmap_indexing_with_a_batched_index_into_an_unbatched_table_equals_loop():
    table = t64(6, 3)
    idx = dg.tensor(RNG.integers(-6, 6, size=(5, 4)))
    batched_equals_loop(lambda t, i: t[i], table, idx, in_dims=(None, 0))
    batched_equals_loop(lambda t, i: t.T[:, i], table, idx, in_dims=(None, 0))


def test_vmap_indexing_with_batched_index_and_batched_input_equals_loop():
    x = t64(5, 3, 6, 2)
    idx = dg.tensor(RNG.integers(-6, 6, size=(5, 4, 2)))
    batched_equals_loop(lambda x, i: x[:, i], x, idx)
    nonneg = lambda i: dg.where(i < 0, -i - 1, i)  # noqa: E731
    batched_equals_loop(lambda x, i: dg.gather(x, 1, nonneg(i)[None, :, :1].expand(3, 4, 2)),
                        x, idx)


def test_vmap_take_along_dim_gathers_per_example_indices():
    x = t64(5, 4, 3)
    idx = dg.tensor(RNG.integers(0, 3, size=(5, 4, 1)))
    batched_equals_loop(lambda x, i: x.take_along_dim(i, 1), x, idx)


def test_vmap_scatter_add_equals_loop_for_every_batched_combination():
    from dyngrad.ops.indexing import scatter_add
    base, src = t64(5, 4, 3), t64(5, 4, 2)
    idx = dg.tensor(RNG.integers(0, 3, size=(5, 2)))
    f = lambda b, i, s: scatter_add(b, i, s, 1)  # noqa: E731
    for dims in [(0, None, None), (None, None, 0), (0, 0, 0), (None, 0, None), (0, 0, None)]:
        args = [a if d is not None else a[0] for a, d in zip((base, idx, src), dims)]
        batched_equals_loop(f, *args, in_dims=dims)


def test_vmap_batched_index_out_of_bounds_raises_index_error():
    x = t64(3, 4)
    idx = dg.tensor([[0], [1], [7]])
    with pytest.raises(IndexError, match="out of bounds"):
        vmap(lambda x, i: x[i])(x, idx)


def test_vmap_setitem_on_a_clone_is_batched():
    def f(x):
        y = x.clone()
        y[0] = 0.0
        y.mul_(2.0)
        return y
    batched_equals_loop(f, t64(5, 3))


def test_vmap_in_place_writes_into_a_local_buffer_are_batched():
    def f(x):
        buf = dg.zeros(2, 3, dtype=dg.float64)
        buf[0] = x
        buf += 1.0
        buf[1] = buf[0] * x
        return buf
    batched_equals_loop(f, t64(5, 3))


def test_vmap_view_of_a_buffer_written_with_batched_values_falls_back_correctly():
    def f(x):
        buf = dg.zeros(3, dtype=dg.float64)
        tail = buf[1:]
        buf.add_(x)  # tail now sees per-example values
        return tail * 2
    v = vmap(f)
    x = t64(4, 3)
    assert_close(v(x), loop(f, x))
    assert v.fallback_reason is not None


def test_vmap_creation_ops_inside_are_unbatched_and_broadcast():
    batched_equals_loop(lambda x: x + dg.arange(3).double() + dg.ones(3, dtype=dg.float64),
                        t64(4, 3))
    batched_equals_loop(lambda x: dg.eye(3, dtype=dg.float64) @ x, t64(4, 3, 2))


def test_vmap_output_that_ignores_the_input_is_expanded_over_the_batch():
    c = t64(3)
    out = vmap(lambda x: c * 2)(t64(4, 2))
    assert out.shape == (4, 3)
    assert_close(out, dg.stack([c * 2] * 4))


# ==================================================================== vmap: dims


def test_vmap_in_dims_none_passes_the_argument_unmapped():
    w = t64(3, 2)
    batched_equals_loop(lambda x, w: x @ w, t64(5, 3), w, in_dims=(0, None))


def test_vmap_in_dims_one_maps_over_the_second_dim():
    x = t64(3, 5, 2)
    got = batched_equals_loop(lambda x: x.sum(-1) * 2, x, in_dims=1)
    assert got.shape == (5, 3)


def test_vmap_negative_in_dims_count_from_the_end():
    x = t64(3, 2, 5)
    assert_close(vmap(lambda x: x.sum(0), in_dims=-1)(x), x.sum(0).T)


def test_vmap_out_dims_one_puts_the_batch_second():
    x = t64(5, 3, 2)
    got = vmap(lambda x: x * 2, out_dims=1)(x)
    assert got.shape == (3, 5, 2)
    assert_close(got, (x * 2).permute(1, 0, 2))


def test_vmap_tuple_outputs_with_per_output_out_dims():
    x = t64(5, 3)
    a, b = vmap(lambda x: (x.sum(), x * 2), out_dims=(0, 1))(x)
    assert_close(a, x.sum(1))
    assert_close(b, (x * 2).T)


def test_vmap_list_output_stays_a_list():
    x = t64(4, 3)
    out = vmap(lambda x: [x * 2, x.sum()])(x)
    assert isinstance(out, list) and len(out) == 2
    assert_close(out[1], x.sum(1))


def test_vmap_keyword_arguments_are_not_mapped():
    x, s = t64(5, 3), t64(3)
    assert_close(vmap(lambda x, scale: x * scale)(x, scale=s), x * s)


def test_vmap_over_an_empty_batch_gives_an_empty_result():
    out = vmap(lambda x: (x @ x.T).sum(0))(dg.zeros(0, 3, 2, dtype=dg.float64))
    assert out.shape == (0, 3)


# ==================================================================== vmap: composition


def test_nested_vmap_equals_double_loop():
    x = t64(4, 5, 3)
    f = lambda x: (x.sin() @ x.cos().unsqueeze(1)).sum()  # noqa: E731
    counted = Counted(f)
    vv = vmap(vmap(counted))
    got = vv(x)
    want = dg.stack([dg.stack([f(x[i, j]) for j in range(5)]) for i in range(4)])
    assert counted.calls == 1
    assert_close(got, want)


def test_nested_vmap_with_in_dims_builds_an_outer_product():
    a, b = t64(4), t64(3)
    table = vmap(vmap(lambda u, v: u * v, in_dims=(None, 0)), in_dims=(0, None))(a, b)
    assert_close(table, a.unsqueeze(1) * b.unsqueeze(0))


def test_nested_vmap_of_matmul_maps_over_two_batch_dims():
    a, b = t64(4, 5, 2, 3), t64(5, 3, 2)
    got = vmap(vmap(lambda a, b: a @ b, in_dims=(0, 0)), in_dims=(0, None))(a, b)
    assert_close(got, a @ b)


def loss(w, x, y):
    return ((x @ w).tanh().sum() - y) ** 2


def test_vmap_of_grad_gives_per_example_gradients_without_a_loop():
    w, xs, ys = t64(3, 2), t64(6, 3), t64(6)
    counted = Counted(loss)
    v = vmap(grad(counted), in_dims=(None, 0, 0))
    got = v(w, xs, ys)
    assert v.fallback_reason is None and counted.calls == 1
    want = dg.stack([grad(loss)(w, xs[i], ys[i]) for i in range(6)])
    assert got.shape == (6, 3, 2)
    assert_close(got, want)
    assert not got.requires_grad  # grad's internal stand-in does not leak out


def test_vmap_of_grad_matches_torch_func_per_example_gradients():
    torch = pytest.importorskip("torch")
    w, xs, ys = t64(3, 2), t64(6, 3), t64(6)
    tw, txs, tys = (torch.from_numpy(t.numpy().copy()) for t in (w, xs, ys))
    want = torch.func.vmap(torch.func.grad(
        lambda w, x, y: ((x @ w).tanh().sum() - y) ** 2), in_dims=(None, 0, 0))(tw, txs, tys)
    assert_close(vmap(grad(loss), in_dims=(None, 0, 0))(w, xs, ys), want.numpy())


def test_vmap_of_grad_with_an_indexing_model_batches_gather_and_scatter():
    emb, idx = t64(7, 3), dg.tensor(RNG.integers(0, 7, size=(5, 4)))
    f = lambda e, i: (e[i] ** 2).sum()  # noqa: E731
    got = batched_equals_loop(grad(f), emb, idx, in_dims=(None, 0))
    assert got.shape == (5, 7, 3)


def test_grad_through_vmap_equals_grad_through_the_loop():
    w, xs = t64(3, 2), t64(6, 3)
    f = lambda w, x: (x @ w).sin().sum()  # noqa: E731
    g_vmap = grad(lambda w: vmap(f, in_dims=(None, 0))(w, xs).pow(2).sum())(w)
    g_loop = grad(lambda w: loop(f, w, xs, in_dims=(None, 0)).pow(2).sum())(w)
    assert_close(g_vmap, g_loop)


def test_backward_through_vmap_reaches_the_mapped_input():
    x = t64(5, 3, requires_grad=True)
    vmap(lambda x: (x.exp() * x).sum())(x).sum().backward()
    assert_close(x.grad, (x.exp() * (x + 1)).detach())


def test_detach_inside_vmap_stops_the_gradient():
    x = t64(4, 3)
    g = grad(lambda x: vmap(lambda x: x * x.detach())(x).sum())(x)
    assert_close(g, x)


def test_vmap_of_jvp_and_jvp_of_vmap_equal_the_loop():
    x, t = t64(5, 3), t64(5, 3)
    f = lambda x: (x.sin() * x).sum(-1, keepdim=True) * x  # noqa: E731
    want = loop(lambda x, t: jvp(f, (x,), (t,))[1], x, t)
    v = vmap(lambda x, t: jvp(f, (x,), (t,))[1])
    assert_close(v(x, t), want)
    assert v.fallback_reason is None
    assert_close(jvp(vmap(f), (x,), (t,))[1], want)


def test_vmap_of_jacrev_and_hessian_equal_the_loop():
    f = lambda x: (x.sin() * x.sum()).sum()  # noqa: E731
    x = t64(4, 3)
    batched_equals_loop(jacrev(f), x)
    batched_equals_loop(hessian(f), x)


def test_vmap_of_a_module_maps_over_examples():
    dg.manual_seed(0)
    model = dg.nn.Sequential(dg.nn.Linear(3, 4), dg.nn.Tanh(), dg.nn.Linear(4, 2))
    x = dg.randn(6, 3)
    got = batched_equals_loop(model, x, atol=1e-6)
    assert_close(got.detach(), model(x).detach())


# ==================================================================== vmap: fallback


def test_vmap_falls_back_to_the_loop_when_the_function_branches_on_a_value():
    def f(x):
        return x * 2 if x.sum() > 0 else -x
    x = t64(8, 3)
    counted = Counted(f)
    v = vmap(counted)
    assert_close(v(x), loop(f, x))
    assert "bool" in v.fallback_reason
    assert counted.calls == 1 + 8  # the abandoned batched attempt, then one per example


@pytest.mark.parametrize("f", [
    lambda x: x * x.sum().item(),
    lambda x: x[x > 0].sum() * dg.ones(2, dtype=dg.float64),
    lambda x: dg.tensor(x.numpy() * 2),
    lambda x: dg.tensor(x) * 3,
    lambda x: x * float(x[0]),
    lambda x: x[:2] * float(len(repr(x)) > 0),
], ids=["item", "bool-mask", "numpy", "tensor-copy", "float", "repr"])
def test_vmap_falls_back_when_values_reach_python(f):
    x = t64(5, 3)
    v = vmap(f)
    assert_close(v(x), loop(f, x))
    assert v.fallback_reason is not None


def test_vmap_reads_of_unbatched_values_do_not_fall_back():
    w = t64(3)
    x = t64(4, 3)
    v = vmap(lambda x: x * w if w.sum() > -100 else x)
    assert_close(v(x), x * w)
    assert v.fallback_reason is None


def test_vmap_fallback_cannot_be_swallowed_by_a_broad_except():
    def f(x):
        try:
            flag = bool(x.sum() > 0)
        except Exception:
            flag = True
        return x if flag else -x
    x = t64(6, 2)
    assert_close(vmap(f)(x), loop(f, x))


def test_nested_vmap_falls_back_at_both_levels_when_the_inner_function_reads_values():
    def f(x):
        return x.exp() if x.item() > 0 else x * 0
    x = t64(3, 4)
    assert_close(vmap(vmap(f))(x), dg.stack([loop(f, x[i]) for i in range(3)]))


def test_vmap_of_grad_falls_back_when_the_loss_branches_on_values():
    def f(w, x):
        y = (x * w).sum()
        return y * y if y > 0 else -y
    w, xs = t64(3), t64(6, 3)
    v = vmap(grad(f), in_dims=(None, 0))
    assert_close(v(w, xs), dg.stack([grad(f)(w, xs[i]) for i in range(6)]))
    assert v.fallback_reason is not None


def test_vmap_in_place_write_to_a_mapped_input_writes_through_like_the_loop():
    x = t64(4, 3)
    x_loop = x.clone()
    want = loop(lambda x: x.add_(1.0) * 2, x_loop)
    v = vmap(lambda x: x.add_(1.0) * 2)
    assert_close(v(x), want)
    assert_close(x, x_loop)
    assert "in-place" in v.fallback_reason


def test_vmap_in_place_through_a_view_falls_back_and_matches_the_loop():
    def f(x):
        y = x.clone()
        y[1:].mul_(3.0)
        return y
    x = t64(4, 3)
    v = vmap(f)
    assert_close(v(x), loop(f, x))


def test_vmap_in_place_write_of_a_batched_value_into_an_outside_tensor_raises():
    acc = dg.zeros(3, dtype=dg.float64)
    with pytest.raises(RuntimeError, match="not batched"):
        vmap(lambda x: acc.add_(x))(t64(4, 3))


def test_vmap_backward_inside_raises_and_points_to_func_grad():
    w = t64(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="func.grad"):
        vmap(lambda x: (x * w).sum().backward())(t64(4, 3))


# ==================================================================== vmap: randomness


def test_vmap_random_op_raises_in_randomness_error_mode():
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda x: x + dg.randn(3))(t64(4, 3))


def test_vmap_randomness_different_draws_independently_per_example():
    dg.manual_seed(0)
    out = vmap(lambda x: x * 0 + dg.rand(3, dtype=dg.float64), randomness="different")(
        t64(4, 3))
    rows = out.numpy()
    assert len({tuple(r) for r in rows}) == 4


# ==================================================================== vmap: errors


def test_vmap_mismatched_batch_sizes_raise_value_error():
    with pytest.raises(ValueError, match="same size in the mapped dimension"):
        vmap(dg.add)(t64(2, 3), t64(3, 3))


def test_vmap_with_no_mapped_input_raises_value_error():
    with pytest.raises(ValueError, match="at least one tensor"):
        vmap(dg.sin, in_dims=None)(t64(3))


def test_vmap_in_dims_out_of_range_raises_value_error():
    with pytest.raises(ValueError, match="in_dim=2"):
        vmap(dg.sin, in_dims=2)(t64(3))


def test_vmap_in_dims_of_the_wrong_length_raises_value_error():
    with pytest.raises(ValueError, match="in_dims"):
        vmap(dg.sin, in_dims=(0, 0))(t64(3))


def test_vmap_mapping_a_non_tensor_raises_value_error():
    with pytest.raises(ValueError, match="only tensors can be mapped"):
        vmap(lambda x, n: x * n)(t64(3), 2)


def test_vmap_non_tensor_output_raises_value_error():
    with pytest.raises(ValueError, match="must only return Tensors"):
        vmap(lambda x: 1.0)(t64(3))


def test_vmap_out_dims_none_returns_an_unbatched_output_as_is():
    c = t64(2)
    y, z = vmap(lambda x: (x * 2, c * 3), out_dims=(0, None))(t64(4, 3))
    assert y.shape == (4, 3)
    assert_close(z, c * 3)


def test_vmap_shape_errors_name_per_example_shapes():
    with pytest.raises(RuntimeError, match=r"\[3\] and \[4\]|size of tensor a \(3\)"):
        vmap(lambda x, y: x + y)(t64(5, 3), t64(5, 4))


# ==================================================================== vmap: properties


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       data=st.data())
def test_vmap_of_a_random_reduction_pipeline_equals_the_loop(shape, data):
    in_dim = data.draw(st.integers(0, len(shape) - 1))
    logical_ndim = len(shape) - 1
    axes = data.draw(st.lists(st.integers(0, max(logical_ndim - 1, 0)), max_size=2,
                              unique=True)) if logical_ndim else []
    keepdim = data.draw(st.booleans())
    x = dg.tensor(np.random.default_rng(len(shape)).standard_normal(shape), dtype=dg.float64)

    def f(x):
        y = (x.sin() * 2 + x * x).exp().log()
        y = y.sum(tuple(axes), keepdim=keepdim) if axes else y.sum()
        return y * y.amax() + y.reshape(-1)[:1]
    batched_equals_loop(f, x, in_dims=in_dim)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data())
def test_vmap_of_random_movement_and_matmul_equals_the_loop(shape, data):
    """Permute, slice, concatenate and multiply per-example tensors of random shapes."""
    in_dim = data.draw(st.integers(0, len(shape) - 1))
    lshape = shape[:in_dim] + shape[in_dim + 1:]
    perm = data.draw(st.permutations(range(len(lshape))))
    starts = [data.draw(st.integers(0, n - 1)) for n in lshape]
    w = dg.tensor(np.random.default_rng(1).standard_normal((8, 2)), dtype=dg.float64)
    x = dg.tensor(np.random.default_rng(len(shape)).standard_normal(shape), dtype=dg.float64)

    def f(x):
        y = x.permute(*perm)
        y = dg.cat([y, y * 2], 0)[tuple(slice(a, None) for a in
                                        [starts[perm[0]]] + [starts[p] for p in perm[1:]])]
        return (y @ w[:y.shape[-1]]).tanh().reshape(-1, 2)
    batched_equals_loop(f, x, in_dims=in_dim)


def test_vmap_agrees_with_torch_func_vmap():
    torch = pytest.importorskip("torch")
    x, w = t64(5, 4, 3), t64(3, 2)
    tx, tw = torch.from_numpy(x.numpy().copy()), torch.from_numpy(w.numpy().copy())
    got = vmap(lambda x: (x @ w).softmax(-1).sum(0), in_dims=1, out_dims=1)(x)
    want = torch.func.vmap(lambda x: (x @ tw).softmax(-1).sum(0), in_dims=1, out_dims=1)(tx)
    assert_close(got, want.numpy())
