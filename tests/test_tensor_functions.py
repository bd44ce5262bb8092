"""The tensor functions real scripts touch (issue 15): tril/triu, t, swapaxes, meshgrid,
sinh/cosh, trunc, repeat_interleave, einsum, new_*, type, the keepdims= alias, the cumsum,
cumprod and argsort primitives with sort/topk on them, the small integer dtypes, and the
random functions normal, bernoulli, multinomial.

Each differentiable function is gradchecked in float64 (vjp and jvp), compared with PyTorch
where it is installed, and each new primitive runs compiled (interp: bit for bit; llvm:
as numpy steps of a hybrid plan) equal to eager.
"""

from __future__ import annotations

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.testing import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")


@pytest.fixture(autouse=True)
def _seeded():
    dg.manual_seed(0)


def leaf(*shape):
    return dg.randn(*shape, dtype=dg.float64, requires_grad=True)


def distinct(*shape):
    """Values with no ties (sort, topk: finite differences need a fixed order)."""
    n = int(np.prod(shape))
    perm = dg.randperm(n).double()
    return (perm.reshape(shape) * 0.1 - 0.37).requires_grad_()


def both(fn, *arrays, grad=True, rtol=1e-10, atol=1e-12):
    """Run ``fn(m, *xs)`` with m = dg and m = torch on the same float64 arrays; compare
    values, dtypes and (when ``grad``) the gradients of a weighted sum of the outputs."""
    xd = [dg.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    xt = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    od, ot = fn(dg, *xd), fn(torch, *xt)
    od = od if isinstance(od, (tuple, list)) else (od,)
    ot = ot if isinstance(ot, (tuple, list)) else (ot,)
    assert len(od) == len(ot)
    loss_d = loss_t = 0.0
    rng = np.random.default_rng(1)
    for a, b in zip(od, ot):
        assert tuple(a.shape) == tuple(b.shape), (a.shape, b.shape)
        assert a.dtype.name == str(b.dtype).replace("torch.", ""), (a.dtype, b.dtype)
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol, atol=atol)
        if grad and a.dtype.is_floating_point and a.requires_grad:
            w = rng.standard_normal(a.shape)
            loss_d = loss_d + (a * dg.tensor(w)).sum()
            loss_t = loss_t + (b * torch.tensor(w)).sum()
    if grad and not isinstance(loss_d, float):
        loss_d.backward()
        loss_t.backward()
        for a, b in zip(xd, xt):
            if a.requires_grad:
                np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=rtol,
                                           atol=atol)


def arr(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------ gradchecks (vjp and jvp)


@pytest.mark.parametrize("fn, shapes", [
    (lambda x: dg.tril(x), [(4, 5)]),
    (lambda x: dg.triu(x, diagonal=1), [(2, 3, 4)]),
    (lambda x: dg.tril(x, -1), [(5, 3)]),
    (lambda x: x.t() * 1.0, [(3, 4)]),
    (lambda x: dg.swapaxes(x, 0, 2) * 1.0, [(2, 3, 4)]),
    (lambda a, b: [g * 1.0 for g in dg.meshgrid(a, b, indexing="xy")], [(3,), (4,)]),
    (lambda a, b, c: [g * 1.0 for g in dg.meshgrid(a, b, c, indexing="ij")],
     [(2,), (3,), (2,)]),
    (dg.sinh, [(3, 4)]),
    (dg.cosh, [(3, 4)]),
    (lambda x: dg.sinh(x * 3.0), [(5,)]),
    (lambda x: dg.repeat_interleave(x, 3, dim=1), [(2, 3)]),
    (lambda x: dg.repeat_interleave(x, dg.tensor([2, 0, 1]), dim=0), [(3, 2)]),
    (lambda x: x.repeat_interleave(2), [(2, 2)]),
    (lambda a, b: dg.einsum("ij,jk->ik", a, b), [(2, 3), (3, 4)]),
    (lambda a, b: dg.einsum("bij,bjk->bik", a, b), [(2, 2, 3), (2, 3, 2)]),
    (lambda a: dg.einsum("ii->", a), [(3, 3)]),
    (lambda a: dg.einsum("ii->i", a), [(3, 3)]),
    (lambda a, b: dg.einsum("i,j->ij", a, b), [(3,), (4,)]),
    (lambda a: dg.einsum("ijk->kj", a), [(2, 3, 4)]),
    (lambda a, b, c: dg.einsum("ij,jk,kl->il", a, b, c), [(2, 3), (3, 2), (2, 2)]),
    (lambda a, b: dg.einsum("...ij,...jk", a, b), [(2, 2, 3), (3, 2)]),
    (lambda x: dg.cumsum(x, 1), [(3, 4)]),
    (lambda x: dg.cumsum(x, -1), [()]),
    (lambda x: x.cumsum(0), [(5,)]),
    (lambda x: dg.cumprod(x, 1), [(3, 4)]),
    (lambda x: dg.cumprod(x, 0), [(4, 2, 2)]),
    (lambda x: dg.cumprod(x, 0), [()]),
])
def test_gradcheck_vjp_and_jvp(fn, shapes):
    xs = [leaf(*s) for s in shapes]
    assert gradcheck(fn, xs)


def test_cumprod_gradient_is_exact_through_zeros():
    x = dg.tensor([[2.0, 0.0, 3.0, 0.0, 1.5], [0.0, 1.0, 2.0, -1.0, 0.5]],
                  dtype=dg.float64, requires_grad=True)
    assert gradcheck(lambda x: dg.cumprod(x, 1), [x])


@pytest.mark.parametrize("fn", [
    lambda x: dg.sort(x, 1).values,
    lambda x: dg.sort(x, 0, descending=True).values,
    lambda x: dg.topk(x, 2, dim=1).values,
    lambda x: dg.topk(x, 3, dim=0, largest=False).values,
    lambda x: dg.msort(x),
])
def test_gradcheck_sort_and_topk_values(fn):
    assert gradcheck(fn, [distinct(4, 3)])


# ------------------------------------------------------------------ PyTorch as the oracle


@needs_torch
@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 2), (2, 3, 4), (1, 1), (0, 3)])
@pytest.mark.parametrize("diagonal", [-2, -1, 0, 1, 3])
def test_tril_triu_equal_torch(shape, diagonal):
    both(lambda m, x: (m.tril(x, diagonal), m.triu(x, diagonal=diagonal),
                       x.tril(diagonal), x.triu(diagonal)), arr(*shape))


@needs_torch
@pytest.mark.parametrize("shape", [(), (3,), (3, 4)])
def test_t_equal_torch(shape):
    both(lambda m, x: (x.t() * 2, m.t(x) * 1), arr(*shape))


@needs_torch
def test_swapaxes_swapdims_equal_torch():
    both(lambda m, x: (m.swapaxes(x, 0, -1) * 1, x.swapdims(1, 2) * 1, x.swapaxes(0, 1) * 1),
         arr(2, 3, 4))


@needs_torch
@pytest.mark.parametrize("indexing", ["ij", "xy"])
@pytest.mark.parametrize("sizes", [(3,), (3, 4), (2, 3, 4), (1, 0)])
def test_meshgrid_equal_torch(indexing, sizes):
    arrays = [arr(n, seed=k) for k, n in enumerate(sizes)]
    both(lambda m, *xs: [g * 1 for g in m.meshgrid(*xs, indexing=indexing)], *arrays)


@needs_torch
def test_meshgrid_without_indexing_warns_and_is_ij():
    with pytest.warns(UserWarning, match="indexing"):
        a, b = dg.meshgrid(dg.arange(3), dg.arange(2))
    assert a.shape == (3, 2) and b.shape == (3, 2)


@needs_torch
@pytest.mark.parametrize("scale", [1e-8, 1e-3, 0.3, 1.0, 5.0, 30.0])
def test_sinh_cosh_equal_torch(scale):
    x = arr(50) * scale
    both(lambda m, x: (m.sinh(x), m.cosh(x), x.sinh(), x.cosh()), x, rtol=1e-12, atol=0)


@needs_torch
def test_sinh_cosh_float32_and_int_inputs_equal_torch():
    x = np.linspace(-6, 6, 101).astype(np.float32)
    for name in ("sinh", "cosh"):
        a = getattr(dg, name)(dg.tensor(x)).numpy()
        b = getattr(torch, name)(torch.tensor(x)).numpy()
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=3e-6, atol=1e-6)
    assert dg.sinh(dg.tensor([1, 2])).dtype is dg.float32


@needs_torch
def test_trunc_fix_equal_torch():
    x = np.array([-2.5, -1.0, -0.7, -0.0, 0.3, 1.0, 1.9, np.inf, -np.inf, np.nan])
    both(lambda m, x: (m.trunc(x), m.fix(x), x.trunc()), x, grad=False)
    a = dg.tensor([3, -4])
    assert dg.trunc(a).dtype is dg.int64 and dg.trunc(a).tolist() == [3, -4]


@needs_torch
@pytest.mark.parametrize("case", [
    lambda m, x: m.repeat_interleave(x, 2),
    lambda m, x: m.repeat_interleave(x, 3, dim=0),
    lambda m, x: x.repeat_interleave(2, dim=-1),
    lambda m, x: m.repeat_interleave(x, m.tensor([1, 0, 2]), dim=1),
    lambda m, x: m.repeat_interleave(x, m.tensor([3]), dim=1),
    lambda m, x: m.repeat_interleave(x, m.tensor(2)),
])
def test_repeat_interleave_equal_torch(case):
    both(case, arr(2, 3))


@needs_torch
def test_repeat_interleave_of_counts_alone_equal_torch():
    c = [2, 0, 3, 1]
    assert dg.repeat_interleave(dg.tensor(c)).tolist() == \
        torch.repeat_interleave(torch.tensor(c)).tolist()


@needs_torch
@pytest.mark.parametrize("eq, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ii->", [(4, 4)]),
    ("ii", [(4, 4)]),
    ("ii->i", [(4, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("i,i->", [(5,), (5,)]),
    ("ij->", [(3, 4)]),
    ("ijk->j", [(2, 3, 4)]),
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("ij,kj->ik", [(3, 4), (5, 4)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,jk->...ik", [(2, 2, 3, 4), (4, 5)]),
    ("b...,b...->b", [(3, 2, 2), (3, 2, 2)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("ij,ij->", [(1, 4), (3, 4)]),
    ("iij->j", [(3, 3, 2)]),
    ("i j , j k -> i k", [(2, 3), (3, 2)]),
])
def test_einsum_equal_torch(eq, shapes):
    arrays = [arr(*s, seed=k) for k, s in enumerate(shapes)]
    both(lambda m, *xs: m.einsum(eq, *xs), *arrays)


@needs_torch
def test_einsum_takes_a_list_of_operands():
    a, b = arr(2, 3), arr(3, 2, seed=1)
    both(lambda m, a, b: m.einsum("ij,jk->ik", [a, b]), a, b)


@needs_torch
@pytest.mark.parametrize("shape, dim", [((5,), 0), ((3, 4), 1), ((3, 4), 0), ((2, 3, 4), -2),
                                        ((), 0), ((0, 3), 1), ((4, 0), 0)])
def test_cumsum_cumprod_equal_torch(shape, dim):
    x = arr(*shape)
    both(lambda m, x: (m.cumsum(x, dim), m.cumprod(x, dim=dim), x.cumsum(dim),
                       x.cumprod(dim)), x)


@needs_torch
def test_cumprod_through_zeros_equals_torch():
    x = np.array([[2.0, 0.0, 3.0, 0.0, 1.5], [0.0, 1.0, 2.0, -1.0, 0.5], [1, 2, 3, 4, 0.]])
    both(lambda m, x: (m.cumprod(x, 1), m.cumprod(x, 0)), x)


@needs_torch
@pytest.mark.parametrize("dtype", ["int64", "bool", "float32"])
def test_cumsum_cumprod_dtypes_equal_torch(dtype):
    x = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    for fn in ("cumsum", "cumprod"):
        a = getattr(dg, fn)(dg.tensor(x), 1)
        b = getattr(torch, fn)(torch.tensor(x), 1)
        assert a.dtype.name == str(b.dtype).replace("torch.", "")
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
        c = getattr(dg, fn)(dg.tensor(x), 0, dtype=dg.float64)
        d = getattr(torch, fn)(torch.tensor(x), 0, dtype=torch.float64)
        assert c.dtype is dg.float64
        np.testing.assert_allclose(c.numpy(), d.numpy())


@needs_torch
def test_cumsum_float32_accumulates_as_torch():
    x = np.random.default_rng(3).standard_normal(10000).astype(np.float32)
    a = dg.cumsum(dg.tensor(x), 0).numpy()
    b = torch.cumsum(torch.tensor(x), 0).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _ties(*shape, seed=0):
    return np.random.default_rng(seed).integers(0, 4, shape).astype(np.float64)


@needs_torch
@pytest.mark.parametrize("make", [arr, _ties])
@pytest.mark.parametrize("shape, dim", [((7,), 0), ((3, 5), 1), ((3, 5), 0), ((2, 3, 4), -1),
                                        ((2, 3, 4), 1), ((), 0), ((0, 2), 0)])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_and_argsort_equal_torch_with_ties(make, shape, dim, descending):
    x = make(*shape)
    both(lambda m, x: (*m.sort(x, dim, descending=descending),
                       m.argsort(x, dim, descending=descending),
                       x.sort(dim=dim, descending=descending, stable=True).values), x)


@needs_torch
@pytest.mark.parametrize("dtype", ["int64", "bool", "float32"])
def test_sort_of_integers_bools_and_nan_equal_torch(dtype):
    x = np.array([3, 1, 0, 2, 1, 3, 0, 2]).astype(dtype)
    for desc in (False, True):
        a, b = dg.sort(dg.tensor(x), descending=desc), torch.sort(torch.tensor(x),
                                                                  descending=desc)
        assert a.values.tolist() == b.values.tolist()
        assert a.indices.tolist() == b.indices.tolist()
    y = np.array([1.0, np.nan, -np.inf, 2.0, np.nan, np.inf, 0.0])
    for desc in (False, True):
        a, b = dg.sort(dg.tensor(y), descending=desc), torch.sort(torch.tensor(y),
                                                                  descending=desc)
        np.testing.assert_array_equal(a.values.numpy(), b.values.numpy())
        assert a.indices.tolist() == b.indices.tolist()
    ints = np.array([np.iinfo(np.int64).min, 5, np.iinfo(np.int64).max, -3])
    a = dg.sort(dg.tensor(ints), descending=True)
    assert a.values.tolist() == torch.sort(torch.tensor(ints), descending=True).values.tolist()


@needs_torch
@pytest.mark.parametrize("shape, k, dim", [((7,), 3, 0), ((3, 5), 2, 1), ((3, 5), 3, 0),
                                           ((2, 3, 4), 4, -1), ((4,), 0, 0), ((4,), 4, 0)])
@pytest.mark.parametrize("largest", [True, False])
def test_topk_equals_torch(shape, k, dim, largest):
    both(lambda m, x: m.topk(x, k, dim, largest=largest), arr(*shape))
    both(lambda m, x: x.topk(k, dim=dim, largest=largest, sorted=True).values, arr(*shape))


@needs_torch
def test_topk_values_with_ties_equal_torch():
    """Which of equal values PyTorch returns depends on its selection algorithm; the values
    agree, and the indices point at them."""
    x = _ties(6, 9, seed=2)
    a, b = dg.topk(dg.tensor(x), 4, 1), torch.topk(torch.tensor(x), 4, 1)
    np.testing.assert_array_equal(a.values.numpy(), b.values.numpy())
    np.testing.assert_array_equal(np.take_along_axis(x, a.indices.numpy(), 1), a.values.numpy())


@needs_torch
def test_keepdims_alias_equals_torch():
    both(lambda m, x: (m.sum(x, 1, keepdims=True), x.sum(dim=0, keepdims=True),
                       x.mean(1, keepdims=True), m.amax(x, 0, keepdims=True),
                       x.amin(dim=1, keepdims=True), m.prod(x, 1, keepdims=True),
                       x.logsumexp(1, keepdims=True), m.std(x, 1, keepdims=True),
                       x.var(0, keepdims=True),
                       m.max(x, 1, keepdims=True).values, x.argmax(1, keepdims=True)),
         arr(3, 4))


def test_keepdims_and_keepdim_together_raise():
    with pytest.raises(TypeError, match="keepdims"):
        dg.sum(dg.ones(2, 2), 0, keepdim=True, keepdims=True)


@needs_torch
def test_new_tensors_and_type_names_equal_torch():
    for dtype in ("float32", "float64", "int64", "bool"):
        x = np.zeros((2, 3), dtype=dtype)
        a, b = dg.tensor(x), torch.tensor(x)
        for name, args in [("new_zeros", ((4, 2),)), ("new_ones", (3, 2)),
                           ("new_full", ((2,), 7)), ("new_empty", ((5,),))]:
            u, v = getattr(a, name)(*args), getattr(b, name)(*args)
            assert u.shape == tuple(v.shape) and u.dtype.name == str(v.dtype)[6:]
            if name != "new_empty":
                np.testing.assert_array_equal(u.numpy(), v.numpy())
        assert a.type() == b.type()
        assert a.type(dg.float64).type() == b.type(torch.float64).type()
        assert a.type("torch.LongTensor").dtype is dg.int64
    x = dg.ones(2)
    assert x.new_zeros(3, dtype=dg.int64).dtype is dg.int64
    assert x.new_ones((2,), requires_grad=True).requires_grad
    assert x.type(dg.float32) is x


def test_numel():
    assert dg.numel(dg.ones(2, 3)) == 6 and dg.ones(4).numel() == 4


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("fn, exc, text", [
    (lambda: dg.tril(dg.ones(3)), RuntimeError,
     "tril: input tensor must have at least 2 dimensions"),
    (lambda: dg.triu(dg.ones(())), RuntimeError, "triu: input tensor must have at least 2"),
    (lambda: dg.ones(2, 2, 2).t(), RuntimeError,
     "t() expects a tensor with <= 2 dimensions, but self is 3D"),
    (lambda: dg.topk(dg.ones(6), 7), RuntimeError, "selected index k out of range"),
    (lambda: dg.cumsum(dg.ones(6), 1), IndexError, "Dimension out of range"),
    (lambda: dg.sort(dg.ones(6), 1), IndexError, "Dimension out of range"),
    (lambda: dg.einsum("ij,jk->ik", dg.ones(2, 3), dg.ones(4, 5)), RuntimeError,
     "einsum(): subscript j has size 4 for operand 1 which does not broadcast with "
     "previously seen size 3"),
    (lambda: dg.einsum("ij->ik", dg.ones(2, 3)), RuntimeError,
     "einsum(): output subscript k does not appear in the equation for any input operand"),
    (lambda: dg.einsum("ijk->i", dg.ones(2, 3)), RuntimeError,
     "does not match the number of dimensions (2) for operand 0"),
    (lambda: dg.einsum("ij,jk->ik", dg.ones(2, 3)), ValueError, "fewer operands"),
    (lambda: dg.repeat_interleave(dg.ones(3), dg.tensor([1, 2])), RuntimeError,
     "repeats must have the same size as input along dim, but got repeats.size(0) = 2 and "
     "input.size(0) = 3"),
    (lambda: dg.repeat_interleave(dg.ones(3), -1), RuntimeError, "repeats can not be negative"),
    (lambda: dg.meshgrid(dg.ones(2, 2), indexing="ij"), RuntimeError,
     "Expected 0D or 1D tensor in the tensor list"),
    (lambda: dg.meshgrid(dg.ones(2), indexing="yx"), RuntimeError, "indexing must be one of"),
])
def test_errors_name_the_op_and_shapes(fn, exc, text):
    with pytest.raises(exc) as info:
        fn()
    assert text in str(info.value)


# ------------------------------------------------------------------ compiled equals eager


def _scans(x):
    v, i = dg.sort(x, 1, descending=True)
    top = dg.topk(x, 2, dim=0)
    return dg.cumsum(x, 1) * 2.0 + dg.cumprod(x, 0) + v, i, top.values, top.indices, \
        dg.argsort(x, 0)


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_new_primitives_compiled_equal_eager(backend):
    f = dg.compile(_scans, backend=backend)
    for shape in [(4, 5), (4, 5), (6, 3)]:
        x = dg.randn(*shape)
        want = _scans(x)
        got = f(x)
        for a, b in zip(got, want):
            assert a.dtype is b.dtype
            if backend == "interp" or not a.dtype.is_floating_point:
                np.testing.assert_array_equal(a.numpy(), b.numpy())
            else:
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    assert not f.fallbacks and sum(v.calls for v in f.variants) >= 1


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_gradients_of_new_primitives_compiled_equal_eager(backend):
    def step(w, x):
        loss = (dg.cumprod(w, 1) * dg.sort(x * w, 0).values).sum() + \
            dg.cumsum(w * x, 0).pow(2).mean() + dg.topk(w, 2, 1).values.sum()
        loss.backward()
        return loss

    f = dg.compile(step, backend=backend)
    x = dg.randn(4, 3, dtype=dg.float64)
    w1 = dg.randn(4, 3, dtype=dg.float64, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    for _ in range(2):
        want = step(w1, x)
        got = f(w2, x)
        exact = backend == "interp"
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), **tol)
        np.testing.assert_allclose(w2.grad.numpy(), w1.grad.numpy(), **tol)


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_composites_compiled_equal_eager(backend):
    def f(a, b):
        return (dg.einsum("bij,bjk->bik", a, b).tril() + dg.sinh(a).triu(1)
                - dg.cosh(a) * dg.trunc(a * 3.0) + a.swapaxes(1, 2).transpose(1, 2),
                dg.repeat_interleave(a, 2, dim=1).sum(1, keepdims=True))
    c = dg.compile(f, backend=backend)
    a, b = dg.randn(2, 3, 3), dg.randn(2, 3, 3)
    for got, want in zip(c(a, b), f(a, b)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the small integer dtypes

ALL_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float32", "float64"]


def test_small_integer_dtypes_exist_and_are_named():
    assert dg.int32 is dg.dtypes.int32 and dg.int is dg.int32 and dg.short is dg.int16
    for name in ("int32", "int16", "int8", "uint8"):
        d = getattr(dg, name)
        assert dg.dtypes.as_dtype(name) is d and dg.dtypes.as_dtype(np.dtype(name)) is d
        t = dg.zeros(2, 3, dtype=d)
        assert t.dtype is d and t.numpy().dtype == np.dtype(name)
        assert repr(dg.tensor([1, 2], dtype=d)) == f"tensor([1, 2], dtype=dyngrad.{name})"
    assert dg.tensor(np.array([1, 2], np.int32)).dtype is dg.int32
    assert dg.from_numpy(np.array([1, 2], np.uint8)).dtype is dg.uint8


@needs_torch
@pytest.mark.parametrize("a", ALL_DTYPES)
@pytest.mark.parametrize("b", ALL_DTYPES)
def test_promotion_table_equals_torch(a, b):
    x, y = np.array([1, 0, 1]).astype(a), np.array([1, 1, 0]).astype(b)
    for lhs, rhs in [(x, y), (x, y[0]), (x[0], y)]:
        got = (dg.tensor(lhs) + dg.tensor(rhs)).dtype.name
        want = str((torch.tensor(lhs) + torch.tensor(rhs)).dtype)[6:]
        if a == b == "bool":
            got = (dg.tensor(lhs) * dg.tensor(rhs)).dtype.name
            want = str((torch.tensor(lhs) * torch.tensor(rhs)).dtype)[6:]
        assert got == want, (lhs.dtype, np.shape(lhs), rhs.dtype, np.shape(rhs))
    for scalar in (2, 2.5, True):
        got = (dg.tensor(x) * scalar).dtype.name
        assert got == str((torch.tensor(x) * scalar).dtype)[6:], scalar


@needs_torch
@pytest.mark.parametrize("name", ["int32", "int16", "int8", "uint8"])
def test_small_integer_arithmetic_and_reductions_equal_torch(name):
    x = np.array([[3, 100, 7], [120, 5, 0]]).astype(name)
    y = np.array([[2, 3, 1], [4, 7, 5]]).astype(name)
    a, b = dg.tensor(x), dg.tensor(y)
    s, t = torch.tensor(x), torch.tensor(y)
    cases = [lambda m, p, q: p + q, lambda m, p, q: p * q + 3, lambda m, p, q: p // q,
             lambda m, p, q: p % q, lambda m, p, q: p / q, lambda m, p, q: p.sum(),
             lambda m, p, q: p.sum(1), lambda m, p, q: p.prod(0), lambda m, p, q: p.amax(1),
             lambda m, p, q: p.argmax(1), lambda m, p, q: m.cumsum(p, 1),
             lambda m, p, q: p.float() * 0.5, lambda m, p, q: p == q, lambda m, p, q: -q
             if name != "uint8" else q, lambda m, p, q: m.where(p > q, p, q),
             lambda m, p, q: p.to(m.int64), lambda m, p, q: m.sort(p, 1).values,
             lambda m, p, q: m.maximum(p, q), lambda m, p, q: p.abs()]
    for k, case in enumerate(cases):
        u, v = case(dg, a, b), case(torch, s, t)
        assert u.dtype.name == str(v.dtype)[6:], k
        np.testing.assert_array_equal(u.numpy(), v.numpy(), err_msg=str(k))


def test_indexing_with_int16_is_refused_as_in_torch():
    with pytest.raises(IndexError, match="must be long, int or bool tensors"):
        dg.arange(5)[dg.tensor([1], dtype=dg.int16)]


@needs_torch
@pytest.mark.parametrize("name", ["int32"])
def test_indexing_with_small_integer_tensors_equals_torch(name):
    x = np.arange(24.0).reshape(4, 6)
    i = np.array([3, 0, -1]).astype(name)
    a, s = dg.tensor(x), torch.tensor(x)
    ia, it = dg.tensor(i), torch.tensor(i)
    np.testing.assert_array_equal(a[ia].numpy(), s[it].numpy())
    np.testing.assert_array_equal(a[1, ia].numpy(), s[1, it].numpy())
    np.testing.assert_array_equal(a[dg.tensor(2, dtype=getattr(dg, name))].numpy(),
                                  s[torch.tensor(2, dtype=getattr(torch, name))].numpy())
    np.testing.assert_array_equal(a.index_select(1, ia % 6).numpy(),
                                  s.index_select(1, it % 6).numpy())
    a[ia, 0] = 100.0
    s[it, 0] = 100.0
    np.testing.assert_array_equal(a.numpy(), s.numpy())


@needs_torch
def test_conversion_methods_and_type_names_of_small_integers_equal_torch():
    x = np.array([1.7, -2.2, 300.0])
    a, s = dg.tensor(x), torch.tensor(x)
    for meth in ("int", "short", "long", "char", "byte", "bool", "float", "double"):
        if meth in ("char", "byte"):
            a2, s2 = dg.tensor(x[:2] if meth == "char" else np.abs(x[:2])), \
                torch.tensor(x[:2] if meth == "char" else np.abs(x[:2]))
        else:
            a2, s2 = a, s
        u, v = getattr(a2, meth)(), getattr(s2, meth)()
        assert u.dtype.name == str(v.dtype)[6:] and u.type() == v.type()
        np.testing.assert_array_equal(u.numpy(), v.numpy())


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_small_integer_dtypes_compiled_equal_eager(backend):
    def f(i, x):
        return (i * 2 + 1).sum(), x[i.long()] * 2.0, i.float() * x[:3], dg.cumsum(i, 0)

    c = dg.compile(f, backend=backend)
    for dtype in (dg.int32, dg.int16, dg.uint8):
        i, x = dg.tensor([0, 2, 1], dtype=dtype), dg.randn(5)
        for got, want in zip(c(i, x), f(i, x)):
            assert got.dtype is want.dtype
            np.testing.assert_array_equal(got.numpy(), want.numpy())


# ------------------------------------------------------------------ random distributions


def test_normal_forms_shapes_and_dtypes():
    assert dg.normal(0.0, 1.0, size=(2, 3)).shape == (2, 3)
    assert dg.normal(0.0, 1.0, (4,)).dtype is dg.float32
    assert dg.normal(dg.zeros(3, dtype=dg.float64), 2.0).dtype is dg.float64
    assert dg.normal(2.0, dg.ones(3)).shape == (3,)
    assert dg.normal(dg.zeros(2, 1), dg.ones(3)).shape == (2, 3)
    x = dg.normal(dg.full((20000,), 3.0), dg.full((20000,), 2.0)).numpy()
    assert abs(x.mean() - 3.0) < 0.05 and abs(x.std() - 2.0) < 0.05


def test_normal_requires_grad_with_a_zero_gradient_as_in_torch():
    m = dg.tensor([0.0, float("inf")], requires_grad=True)
    s = dg.ones(2, requires_grad=True)
    y = dg.normal(m, s)
    assert y.requires_grad
    y.sum().backward()
    assert m.grad.tolist() == [0.0, 0.0] and s.grad.tolist() == [0.0, 0.0]


def test_bernoulli_frequencies_and_forms():
    p = dg.tensor([0.0, 0.2, 0.7, 1.0], dtype=dg.float64)
    draws = dg.bernoulli(p.expand(20000, 4))
    assert draws.dtype is dg.float64
    freq = draws.numpy().mean(0)
    assert freq[0] == 0.0 and freq[3] == 1.0
    np.testing.assert_allclose(freq[1:3], [0.2, 0.7], atol=0.02)
    assert abs(dg.zeros(10000).bernoulli_(0.3).numpy().mean() - 0.3) < 0.02
    assert abs(dg.zeros(10000).bernoulli(0.6).numpy().mean() - 0.6) < 0.02


def test_multinomial_frequencies_with_and_without_replacement():
    w = dg.tensor([1.0, 0.0, 3.0, 6.0])
    s = dg.multinomial(w, 20000, replacement=True)
    assert s.dtype is dg.int64 and s.shape == (20000,)
    np.testing.assert_allclose(np.bincount(s.numpy(), minlength=4) / 20000,
                               [0.1, 0.0, 0.3, 0.6], atol=0.015)
    first = dg.multinomial(w.expand(20000, 4), 1)
    assert first.shape == (20000, 1)
    np.testing.assert_allclose(np.bincount(first.numpy()[:, 0], minlength=4) / 20000,
                               [0.1, 0.0, 0.3, 0.6], atol=0.015)
    rows = dg.multinomial(dg.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]]), 4).numpy()
    assert all(sorted(r) == [0, 1, 2, 3] for r in rows)  # without replacement: a permutation
    assert set(rows[1, :2]) == {2, 3}                     # zero weights come last


@pytest.mark.parametrize("fn, text", [
    (lambda: dg.normal(dg.zeros(2), -dg.ones(2)), "normal expects all elements of std >= 0.0"),
    (lambda: dg.normal(0.0, -1.0, size=(2,)), "normal expects std >= 0.0, but found std -1"),
    (lambda: dg.bernoulli(dg.tensor([1.5])), "0 <= p <= 1"),
    (lambda: dg.multinomial(dg.ones(3), 4), "cannot sample n_sample > prob_dist.size(-1)"),
    (lambda: dg.multinomial(dg.tensor([-1.0, 0.0]), 1),
     "probability tensor contains either `inf`, `nan` or element < 0"),
    (lambda: dg.multinomial(dg.zeros(2), 1),
     "invalid multinomial distribution (sum of probabilities <= 0)"),
    (lambda: dg.multinomial(dg.ones(2, 2, 2), 1), "prob_dist must be 1 or 2 dim"),
])
def test_random_argument_errors(fn, text):
    with pytest.raises(RuntimeError) as info:
        fn()
    assert text in str(info.value)


def _draws(mean, w):
    return (dg.normal(mean, 0.5), dg.normal(1.0, 2.0, size=(3,)), dg.bernoulli(w),
            dg.multinomial(w, 3, replacement=True), dg.multinomial(w, 2), dg.randperm(5),
            dg.zeros(4).bernoulli_(0.5))


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_random_draws_are_traced_fresh_per_call_and_equal_eager(backend):
    mean, w = dg.randn(4), dg.tensor([0.2, 0.5, 0.1, 0.9])
    dg.manual_seed(7)
    eager = [_draws(mean, w) for _ in range(3)]
    f = dg.compile(_draws, backend=backend)
    dg.manual_seed(7)
    compiled = [f(mean, w) for _ in range(3)]
    for want, got in zip(eager, compiled):
        for a, b in zip(want, got):
            assert a.dtype is b.dtype
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(compiled[0][0].numpy(), compiled[1][0].numpy())
    assert not np.array_equal(compiled[0][1].numpy(), compiled[2][1].numpy())
    assert not f.fallbacks and sum(v.calls for v in f.variants) >= 2


@needs_torch
@pytest.mark.parametrize("case", [
    lambda m, x: m.tril(x, 1),
    lambda m, x: m.einsum("bij,bkj->bik", x, x),
    lambda m, x: m.einsum("bii->b", x),
    lambda m, x: m.sort(x, 1).values,
    lambda m, x: m.topk(x, 2, 2).values,
    lambda m, x: m.cumsum(x, 2),
    lambda m, x: m.cumprod(x, 0),
    lambda m, x: m.repeat_interleave(x, 2, dim=2),
    lambda m, x: m.meshgrid(x[0, 0], x[1, 1], indexing="xy")[1],
])
def test_float32_results_and_gradients_equal_torch(case):
    x = arr(2, 3, 3).astype(np.float32)
    a, s = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    u, v = case(dg, a), case(torch, s)
    assert u.dtype is dg.float32 and v.dtype == torch.float32
    np.testing.assert_allclose(u.detach().numpy(), v.detach().numpy(), rtol=1e-5, atol=1e-6)
    w = np.random.default_rng(5).standard_normal(u.shape).astype(np.float32)
    (u * dg.tensor(w)).sum().backward()
    (v * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), s.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [
    lambda x: dg.cumsum(x, 1) ** 2,
    lambda x: dg.cumprod(x, 1),
    lambda x: dg.sort(x, 1).values ** 2,
    lambda x: dg.einsum("ij,kj->ik", x, x),
    lambda x: dg.sinh(x) * dg.cosh(x),
])
def test_second_derivatives(fn):
    assert gradgradcheck(fn, (leaf(3, 4),))


# ------------------------------------------------------------------ scatter_add, index_add

_SCATTER_INDEX = np.array([[0, 1, 2, 0], [2, 2, 1, 0], [1, 1, 1, 1]])


def test_scatter_add_and_index_add_gradcheck():
    idx = dg.tensor(_SCATTER_INDEX)
    assert gradcheck(lambda x, s: x.scatter_add(0, idx, s), [leaf(3, 4), leaf(3, 5)])
    assert gradcheck(lambda x, s: dg.scatter_add(x, 1, idx[:, :3], s), [leaf(3, 4), leaf(3, 4)])
    assert gradcheck(lambda x, s: x.index_add(1, dg.tensor([3, 0, 3]), s, alpha=-2.0),
                     [leaf(2, 4), leaf(2, 3)])


@needs_torch
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_add_and_index_add_match_torch(dim):
    r = np.random.default_rng(dim + 5)
    x, s = r.standard_normal((3, 4)), r.standard_normal((4, 5))
    idx = r.integers(0, 3 if dim == 0 else 4, (3, 4))
    got = dg.tensor(x).scatter_add(dim, dg.tensor(idx), dg.tensor(s))
    want = torch.tensor(x).scatter_add(dim, torch.tensor(idx), torch.tensor(s))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    j = r.integers(0, x.shape[dim], 6)
    src = r.standard_normal((6, 4) if dim == 0 else (3, 6))
    got = dg.tensor(x).index_add(dim, dg.tensor(j), dg.tensor(src), alpha=0.5)
    want = torch.tensor(x).index_add(dim, torch.tensor(j), torch.tensor(src), alpha=0.5)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12)
    y, yt = dg.tensor(x), torch.tensor(x)
    y.scatter_add_(dim, dg.tensor(idx), dg.tensor(s))
    yt.scatter_add_(dim, torch.tensor(idx), torch.tensor(s))
    np.testing.assert_allclose(y.numpy(), yt.numpy(), rtol=1e-12)


def test_scatter_add_errors_name_the_shapes():
    with pytest.raises(RuntimeError, match=r"index \[3, 5\] to be smaller than self \[3, 4\]"):
        dg.zeros(3, 4).scatter_add(0, dg.zeros(3, 5, dtype=dg.int64), dg.ones(3, 5))
    with pytest.raises(RuntimeError, match="same number of dimensions"):
        dg.zeros(3, 4).scatter_add(0, dg.zeros(3, dtype=dg.int64), dg.ones(3))
    with pytest.raises(IndexError, match="index 7 is out of bounds for dimension 0 with size 3"):
        dg.zeros(3, 4).scatter_add(0, dg.full((1, 4), 7, dtype=dg.int64), dg.ones(1, 4))
    with pytest.raises(RuntimeError, match="index_add_"):
        dg.zeros(3, 4).index_add(0, dg.tensor([0, 1]), dg.ones(3, 4))
    with pytest.raises(IndexError, match="index -1 is out of bounds for dimension 0 with size 3"):
        dg.zeros(3, 4).scatter_add(0, dg.full((1, 4), -1, dtype=dg.int64), dg.ones(1, 4))
    with pytest.raises(IndexError, match="index_add_: index -1 is out of bounds"):
        dg.zeros(3, 4).index_add(0, dg.tensor([-1]), dg.ones(1, 4))
    with pytest.raises(RuntimeError, match=r"self \(float32\) and source \(float64\)"):
        dg.zeros(3, 4).index_add(0, dg.tensor([1]), dg.ones(1, 4, dtype=dg.float64))


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_scatter_add_and_index_add_compile_to_eager(backend):
    import compiler
    idx = dg.tensor(_SCATTER_INDEX)
    fn = lambda x, s: x.scatter_add(0, idx, s).index_add(1, dg.tensor([3, 0, 3]), s[:, :3])  # noqa: E731
    f = compiler.compile(fn, backend=backend)
    x, s = dg.randn(3, 4), dg.randn(3, 5)
    for _ in range(2):
        np.testing.assert_allclose(f(x, s).numpy(), fn(x, s).numpy(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ inverse hyperbolic functions


def _inverse_hyperbolic_inputs(name: str, dt) -> np.ndarray:
    big = 1e200 if dt == np.float64 else 1e30
    if name == "acosh":
        x = [*np.linspace(1.0, 3.0, 41), 1 + 1e-9, 30.0, 2.0**28, 1e10, big, np.inf, 0.5,
             np.nan]
    elif name == "atanh":
        x = [*np.linspace(-0.999, 0.999, 41), 1e-12, -1e-30, 0.0, -0.0, 1.0, -1.0, 1.5,
             np.nan]
    else:
        x = [*np.linspace(-5.0, 5.0, 41), 1e-12, -1e-30, 0.0, -0.0, 2.0**28, 1e10, -big,
             np.inf, -np.inf, np.nan]
    return np.array(x, dtype=dt)


@needs_torch
@pytest.mark.parametrize("dt", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["asinh", "acosh", "atanh"])
def test_inverse_hyperbolic_functions_equal_torch(name, dt):
    """asinh, acosh and atanh (compositions: dyngrad/ops/composites.py) against PyTorch over
    their domains — tiny arguments, the neighbourhood of 1, huge ones where x² overflows,
    infinities, NaN, signed zeros, and outside the domain (NaN); the arc- aliases and the
    methods."""
    x = _inverse_hyperbolic_inputs(name, dt)
    with np.errstate(all="ignore"):
        got = getattr(dg, name)(dg.tensor(x)).numpy()
        want = getattr(torch, name)(torch.tensor(x)).numpy()
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-15 * 100 if dt == np.float64 else 4e-7,
                               atol=0)
    assert np.array_equal(np.signbit(got[x == 0]), np.signbit(want[x == 0]))
    np.testing.assert_array_equal(getattr(dg, "arc" + name[1:])(dg.tensor(x)).numpy(), got)
    np.testing.assert_array_equal(getattr(dg.tensor(x), name)().numpy(), got)
    assert getattr(dg, name)(dg.tensor([1, 2])).dtype is dg.float32


@needs_torch
@pytest.mark.parametrize("name, lo, hi", [("asinh", -4.0, 4.0), ("acosh", 1.05, 5.0),
                                          ("atanh", -0.95, 0.95)])
def test_inverse_hyperbolic_gradients_equal_torch(name, lo, hi):
    x = np.linspace(lo, hi, 37)
    both(lambda m, x: getattr(m, name)(x), x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, lo, hi", [("asinh", -4.0, 4.0), ("acosh", 1.05, 5.0),
                                          ("atanh", -0.95, 0.95)])
def test_inverse_hyperbolic_gradchecks(name, lo, hi):
    """float64 gradchecks of the compositions, vjp and jvp (dyngrad.testing), and second
    order."""
    x = dg.tensor(np.linspace(lo, hi, 7), requires_grad=True)
    fn = getattr(dg, name)
    assert gradcheck(fn, [x])
    assert gradgradcheck(fn, [x])


def test_inverse_hyperbolic_functions_compile_to_eager():
    import compiler
    f = lambda x: dg.asinh(x) + dg.acosh(x.abs() + 1.0) + dg.atanh(x.tanh() * 0.5)  # noqa: E731
    cf = compiler.compile(f, backend="llvm")
    x = dg.tensor(np.linspace(-3.0, 3.0, 50).astype(np.float32))
    for _ in range(2):
        np.testing.assert_allclose(cf(x).numpy(), f(x).numpy(), rtol=2e-6, atol=2e-6)
    assert cf.variants and cf.variants[0].calls >= 1
