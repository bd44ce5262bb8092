"""dyngrad.linalg's norms against torch.linalg: values and shapes for every ord, dim and
keepdim; gradients (at the zero vector and on ties too) equal PyTorch's; vjp and jvp
against finite differences; PyTorch's errors; compiled equal to eager."""

from __future__ import annotations

import math

import numpy as np
import pytest

import compiler
import dyngrad as dg
from dyngrad.testing import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")

A = np.random.default_rng(0).standard_normal((3, 4, 5))
INF = math.inf


def _both(fn_name, a, *args, **kw):
    x = dg.tensor(a, requires_grad=True)
    t = torch.tensor(a, requires_grad=True)
    got = getattr(dg.linalg, fn_name)(x, *args, **kw)
    want = getattr(torch.linalg, fn_name)(t, *args, **kw)
    assert tuple(got.shape) == tuple(want.shape), (fn_name, args, kw)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-12,
                               atol=1e-12)
    if want.requires_grad:
        w = np.random.default_rng(1).standard_normal(tuple(want.shape))
        got.backward(dg.tensor(w))
        want.backward(torch.tensor(w))
        if t.grad is None:  # (ord 0: PyTorch leaves .grad None, dyngrad makes it zeros)
            assert x.grad is None or not np.any(x.grad.numpy())
            return
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12)


@needs_torch
@pytest.mark.parametrize("ord", [2, 1, INF, -INF, 0, 3, 0.5, -1.5])
@pytest.mark.parametrize("dim", [None, 0, -1, (0, 2), (2, 1, 0)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_vector_norm_equals_torchs(ord, dim, keepdim):
    _both("vector_norm", A, ord, dim, keepdim)


@needs_torch
@pytest.mark.parametrize("ord", ["fro", 1, -1, INF, -INF])
@pytest.mark.parametrize("dim", [(-2, -1), (0, 2), (2, 0)])
@pytest.mark.parametrize("keepdim", [False, True])
def test_matrix_norm_equals_torchs(ord, dim, keepdim):
    _both("matrix_norm", A, ord, dim, keepdim)


@needs_torch
@pytest.mark.parametrize("a, args", [
    (A, ()), (A, (None, 1)), (A, (3, 0)), (A, (None, (0, 1))), (A, (INF, (1, 2))),
    (A, ("fro", (0, 2), True)), (A[0], ()), (A[0], (1,)), (A[0], ("fro",)), (A[0], (-INF,)),
    (A[0, 0], ()), (A[0, 0], (3,)), (A[0, 0], (INF,)), (A[0, 0], (0,))])
def test_norm_equals_torchs(a, args):
    _both("norm", a, *args)


@needs_torch
@pytest.mark.parametrize("ord", [2, 1, 3, INF, "matrix"])
def test_gradient_at_zero_and_on_ties_equals_torchs(ord):
    """The 2-norm's (and p-norm's) gradient at the zero vector is 0; inf-norm ties share."""
    rows = np.array([[0.0, 0.0, 0.0], [1.0, -3.0, 3.0]])
    if ord == "matrix":
        _both("matrix_norm", np.zeros((2, 3)), "fro")
        _both("matrix_norm", rows, INF)
    else:
        _both("vector_norm", rows, ord, 1)


def test_vjp_jvp_and_second_derivatives_match_finite_differences():
    dg.manual_seed(0)
    x = dg.randn(3, 4, dtype=dg.float64, requires_grad=True)
    for fn in (lambda x: dg.linalg.vector_norm(x, 2, 1),
               lambda x: dg.linalg.vector_norm(x, 3.5, (0, 1)),
               lambda x: dg.linalg.matrix_norm(x, "fro"),
               lambda x: dg.linalg.matrix_norm(x, 1),
               lambda x: dg.linalg.norm(x, INF, 0)):
        assert gradcheck(fn, (x,))
        assert gradgradcheck(fn, (x,))


@needs_torch
def test_errors_are_torchs():
    cases = [
        (lambda m, t: m.linalg.vector_norm(t([1, 2])),
         "Expected a floating point or complex tensor as input"),
        (lambda m, t: m.linalg.matrix_norm(t([1.0, 2.0])),
         "The input tensor A must have at least 2 dimensions"),
        (lambda m, t: m.linalg.matrix_norm(t([[1.0]]), ord=3), "Order 3 not supported"),
        (lambda m, t: m.linalg.norm(t(np.zeros((2, 2, 2))), ord=1),
         "input must be 1D or 2D"),
        (lambda m, t: m.linalg.norm(t(np.zeros((2, 2))), dim=(0, 1, 1)),
         "it must be of length 1 or 2"),
    ]
    for make, pattern in cases:
        for m, t in ((dg, dg.tensor), (torch, torch.tensor)):
            with pytest.raises(RuntimeError, match=pattern):
                make(m, t)
    with pytest.raises(NotImplementedError, match="needs singular values"):
        dg.linalg.matrix_norm(dg.eye(3), ord="nuc")


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_compiled_norms_equal_eager(backend):
    def step(x):
        out = (dg.linalg.vector_norm(x, dim=1) + dg.linalg.matrix_norm(x, INF)
               + dg.linalg.norm(x) + dg.linalg.vector_norm(x, 3, 1)).sum()
        out.backward()
        return out

    def run(fn):
        x = dg.tensor(A[0].astype(np.float32), requires_grad=True)
        return fn(x).detach().numpy(), x.grad.numpy()
    f = compiler.compile(step, backend=backend)
    want = run(step)
    for _ in range(2):
        got = run(f)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert sum(v.calls for v in f.variants) >= 1, f.fallbacks
