"""The inverse trigonometric functions (``asin``, ``acos``, ``atan``, ``atan2`` and their
numpy-style aliases): four primitives, PyTorch as the oracle for values and for gradients —
at the domain's edges too, where a composite would give inf·0 = NaN (asin'(±1) = inf) — and
vjp and jvp against finite differences (float64), compiled equal to eager on both backends
(natively in the LLVM one: vecmath64's polynomials)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import driver
from dyngrad.forward_ad import jvp
from dyngrad.testing import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")

UNARY = ["asin", "acos", "atan"]
EDGES = [-2.0, -1.0, -0.999, -0.5, -0.0, 0.0, 1e-300, 0.5, 0.999, 1.0, 2.0, float("inf"),
         float("-inf"), float("nan")]


def _same(got, want, rtol=1e-15):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)  # (NaN equals NaN; inf inf)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", UNARY)
def test_values_and_gradients_equal_torchs_at_the_domain_edges(name, dtype):
    """asin/acos of ±1 have infinite slope, outside [-1, 1] NaN values and gradients; the
    gradient of -0.0 and of ±inf is PyTorch's too."""
    xs = np.array(EDGES, dtype=dtype)
    x = dg.tensor(xs, requires_grad=True)
    y = getattr(dg, name)(x)
    y.backward(dg.ones_like(y))
    t = torch.tensor(xs, requires_grad=True)
    ty = getattr(torch, name)(t)
    ty.backward(torch.ones_like(ty))
    rtol = 1e-15 if dtype == "float64" else 1e-6
    _same(y.detach().numpy(), ty.detach().numpy(), rtol)
    num = ~np.isnan(xs)  # (a NaN's sign bit is not specified)
    assert np.array_equal(np.signbit(y.detach().numpy())[num],
                          np.signbit(ty.detach().numpy())[num])
    _same(x.grad.numpy(), t.grad.numpy(), rtol)
    assert y.dtype.name == dtype


@needs_torch
def test_atan2_values_and_gradients_equal_torchs_on_signed_zeros_and_infinities():
    sv = np.array([0.0, -0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"), float("nan")])
    ys, xs = (v.ravel() for v in np.meshgrid(sv, sv))
    a, b = dg.tensor(ys, requires_grad=True), dg.tensor(xs, requires_grad=True)
    out = dg.atan2(a, b)
    out.sum().backward()
    ta = torch.tensor(ys, requires_grad=True)
    tb = torch.tensor(xs, requires_grad=True)
    tout = torch.atan2(ta, tb)
    tout.sum().backward()
    _same(out.detach().numpy(), tout.detach().numpy(), 1e-7)
    num = ~np.isnan(ys) & ~np.isnan(xs)
    assert np.array_equal(np.signbit(out.detach().numpy())[num],
                          np.signbit(tout.detach().numpy())[num])
    _same(a.grad.numpy(), ta.grad.numpy(), 1e-7)  # (0, -0) at the origin, as PyTorch
    _same(b.grad.numpy(), tb.grad.numpy(), 1e-7)


@needs_torch
def test_atan2_broadcasts_and_promotes_like_torch():
    cases = [(dg.tensor([1, -2, 3]), 2, torch.tensor([1, -2, 3]), 2),
             (dg.tensor([[1.0], [-1.0]]), dg.tensor([0.5, -0.5, 0.0]),
              torch.tensor([[1.0], [-1.0]]), torch.tensor([0.5, -0.5, 0.0])),
             (dg.tensor([1.0], dtype=dg.float64), dg.tensor([2.0]),
              torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0]))]
    for a, b, ta, tb in cases:
        got = dg.atan2(a, b) if not isinstance(b, int) else dg.atan2(a, dg.tensor(b))
        want = torch.atan2(ta, tb if not isinstance(tb, int) else torch.tensor(tb))
        assert got.dtype.name == str(want.dtype).removeprefix("torch.")
        assert tuple(got.shape) == tuple(want.shape)
        _same(got.numpy(), want.numpy(), 1e-6)


@needs_torch
def test_integer_inputs_give_the_default_float_dtype():
    for name in UNARY:
        got = getattr(dg, name)(dg.tensor([0, 1, -1]))
        want = getattr(torch, name)(torch.tensor([0, 1, -1]))
        assert got.dtype is dg.float32 and want.dtype == torch.float32
        _same(got.numpy(), want.numpy(), 1e-7)


def test_aliases_and_methods():
    x = dg.tensor([-0.5, 0.25, 0.75], dtype=dg.float64)
    for name, alias in [("asin", "arcsin"), ("acos", "arccos"), ("atan", "arctan")]:
        want = getattr(np, alias)(x.numpy())
        for got in (getattr(dg, name)(x), getattr(dg, alias)(x), getattr(x, name)(),
                    getattr(x, alias)()):
            np.testing.assert_array_equal(got.numpy(), want)
        y = x.clone()
        getattr(y, name + "_")()
        np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal(x.atan2(x + 1).numpy(), np.arctan2(x.numpy(), x.numpy() + 1))
    np.testing.assert_array_equal(dg.arctan2(x, 2.0).numpy(), np.arctan2(x.numpy(), 2.0))
    y = x.clone()
    y.atan2_(dg.tensor(-1.0, dtype=dg.float64))
    np.testing.assert_array_equal(y.numpy(), np.arctan2(x.numpy(), -1.0))


def _inside(*shape):
    return (dg.rand(*shape, dtype=dg.float64) * 1.8 - 0.9).requires_grad_()


@pytest.mark.parametrize("name", UNARY)
def test_vjp_jvp_and_second_derivatives_match_finite_differences(name):
    dg.manual_seed(0)
    fn = getattr(dg, name)
    x = _inside(3, 4) if name != "atan" else (dg.randn(3, 4, dtype=dg.float64) * 3.0)
    x = x.detach().requires_grad_()
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_atan2_vjp_jvp_and_second_derivatives_match_finite_differences():
    dg.manual_seed(1)
    a = dg.randn(3, 4, dtype=dg.float64, requires_grad=True)
    b = (dg.randn(4, dtype=dg.float64) + 2.0).requires_grad_()
    assert gradcheck(dg.atan2, (a, b))
    assert gradgradcheck(dg.atan2, (a, b))


@needs_torch
def test_forward_mode_equals_torchs_at_the_edge():
    xs = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    for name in ("asin", "acos"):
        _, dy = jvp(getattr(dg, name), (dg.tensor(xs),), (dg.ones(6, dtype=dg.float64),))
        _, want = torch.func.jvp(getattr(torch, name), (torch.tensor(xs),),
                                 (torch.ones(6, dtype=torch.float64),))
        _same(dy.numpy(), want.numpy())


def test_atan2_of_mismatched_shapes_names_the_op_and_shapes():
    with pytest.raises(RuntimeError, match=r"atan2.*\[2, 3\] and \[4\]"):
        dg.atan2(dg.zeros(2, 3), dg.zeros(4))
    with pytest.raises(TypeError, match="atan2: unsupported operand of type str"):
        dg.atan2(dg.zeros(2), "1")


@pytest.mark.parametrize("backend", ["interp", "llvm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_equals_eager_values_and_gradients(backend, dtype):
    """A step using all four (values, NaN outside the domain, gradients); on LLVM one native
    driver call (float32 through the float64 polynomials)."""
    def step(x, y):
        out = x.asin() + 2.0 * x.acos() + (3.0 * y).atan() + dg.atan2(x, y) - dg.atan2(y, 0.5)
        (out.nan_to_num() if hasattr(out, "nan_to_num") else out).sum().backward()
        return out
    r = np.random.default_rng(0)
    xs, ys = r.uniform(-1.1, 1.1, (5, 7)).astype(dtype), r.standard_normal((5, 7)).astype(dtype)

    def run(fn):
        x = dg.tensor(xs, requires_grad=True)
        y = dg.tensor(ys, requires_grad=True)
        out = fn(x, y)
        return out.detach().numpy(), x.grad.numpy(), y.grad.numpy()
    f = compiler.compile(step, backend=backend)
    want = run(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            got = run(f)
    rtol = 1e-12 if dtype == "float64" else 2e-6
    for g, w in zip(got, want):
        if backend == "interp":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
    assert f.variants and sum(v.calls for v in f.variants) >= 1, f.fallbacks
    if backend == "llvm":
        assert all(isinstance(v.plan, driver.DriverPlan) for v in f.variants), \
            [v.plan.describe() for v in f.variants]
