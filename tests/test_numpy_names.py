"""What d2l.ai's chapters call that PyTorch's argument parser accepts (issue 15): numpy's
``axis=``/``keepdims=`` for ``dim=``/``keepdim=``, ``rand``/``randn(size=)``, int32
embedding indices, ``mv``, ``isnan``/``isinf``/``isfinite``, ``log2``/``log10`` and the
constants ``pi``, ``e``, ``inf``, ``nan`` — against PyTorch where it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

import compiler
import dyngrad as dg

torch = pytest.importorskip("torch")

X = np.array([[1.5, -2.0, 3.0], [0.5, 4.0, -1.0]], dtype=np.float32)

AXIS_CASES = {
    "argmax": (lambda m, x: m.argmax(x, axis=1), lambda x: x.argmax(axis=1)),
    "sum": (lambda m, x: m.sum(x, axis=0), lambda x: x.sum(axis=[0, 1])),
    "mean": (lambda m, x: m.mean(x, axis=1, keepdims=True), lambda x: x.mean(axis=0)),
    "max": (lambda m, x: m.max(x, axis=1).values, lambda x: x.max(axis=0).indices),
    "cumsum": (lambda m, x: m.cumsum(x, axis=1), lambda x: x.cumsum(axis=0)),
    "cat": (lambda m, x: m.cat([x, x], axis=1), lambda x: x.cumprod(axis=1)),
    "stack": (lambda m, x: m.stack([x, x], axis=1), lambda x: x.std(axis=0)),
}


@pytest.mark.parametrize("name", sorted(AXIS_CASES))
def test_axis_and_keepdims_spellings_match_pytorch(name):
    fn, method = AXIS_CASES[name]
    for f in (fn, lambda m, x: method(x)):
        ours = f(dg, dg.tensor(X))
        theirs = f(torch, torch.tensor(X))
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_axis_with_dim_is_an_error_and_compiled_calls_take_axis():
    with pytest.raises(TypeError, match="both dim= and its alias axis="):
        dg.tensor(X).sum(dim=0, axis=0)
    with pytest.raises(TypeError, match="both dim= and its alias axis="):
        dg.cat([dg.tensor(X)], dim=0, axis=0)
    f = lambda x: (x.argmax(axis=1), dg.cat([x, x], axis=0).sum(axis=0))  # noqa: E731
    cf = compiler.compile(f)
    x = dg.tensor(X)
    for _ in range(3):
        for got, want in zip(cf(x), f(x), strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_rand_and_randn_take_size_and_draw_what_positional_sizes_draw():
    for fn in (dg.rand, dg.randn):
        dg.manual_seed(3)
        a = fn(size=(2, 4))
        dg.manual_seed(3)
        b = fn(2, 4)
        assert a.shape == (2, 4) and np.array_equal(a.numpy(), b.numpy())
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        dg.rand(2, size=(2,))
    with pytest.raises(TypeError, match="unexpected keyword argument: shape"):
        dg.randn(shape=(2,))


def test_embedding_takes_int32_indices_as_pytorch():
    emb = dg.nn.Embedding(5, 3)
    idx = np.array([[0, 4], [2, 2]], dtype=np.int32)
    want = emb(dg.tensor(idx.astype(np.int64)))
    np.testing.assert_array_equal(emb(dg.tensor(idx)).detach().numpy(), want.detach().numpy())
    with pytest.raises(RuntimeError, match="int64 or int32 index tensor, got float32"):
        emb(dg.tensor([1.0]))


def test_mv_nan_inf_checks_logs_and_constants_match_pytorch():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    v = np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(dg.mv(dg.tensor(a), dg.tensor(v)).numpy(),
                               torch.mv(torch.tensor(a), torch.tensor(v)).numpy())
    with pytest.raises(RuntimeError, match=r"mv: expected a 2-d matrix and a 1-d vector"):
        dg.mv(dg.tensor(v), dg.tensor(v))
    x = np.array([1.0, np.nan, np.inf, -np.inf, -0.0, 3e38], dtype=np.float32)
    for name in ("isnan", "isinf", "isfinite"):
        assert np.array_equal(getattr(dg, name)(dg.tensor(x)).numpy(),
                              getattr(torch, name)(torch.tensor(x)).numpy()), name
        assert getattr(dg.tensor([1, 2]), name)().tolist() == \
            getattr(torch.tensor([1, 2]), name)().tolist(), name
    y = np.array([0.5, 1.0, 8.0, 1000.0, 0.0], dtype=np.float64)
    for name in ("log2", "log10"):
        np.testing.assert_allclose(getattr(dg.tensor(y), name)().numpy(),
                                   getattr(torch.tensor(y), name)().numpy(), rtol=1e-15)
    t = dg.tensor([2.0, 5.0], dtype=dg.float64, requires_grad=True)
    dg.log2(t).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), 1 / (np.array([2.0, 5.0]) * math.log(2)))
    assert (dg.pi, dg.e, dg.inf) == (torch.pi, torch.e, torch.inf) and math.isnan(dg.nan)
