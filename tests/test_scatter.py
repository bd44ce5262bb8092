"""``scatter``/``scatter_`` (dyngrad/ops/indexing.py ``scatter_dim``): PyTorch's values
(repeated indices too: the last write in index order, as PyTorch's CPU loop), its errors,
float64 gradchecks (vjp and jvp), and compiled calls equal to eager for indices that change
between calls (the composition reads no index in Python: no guard, no retrace)."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
from dyngrad.testing import gradcheck


def _case(rng, shape, dim, n_idx, unique):
    """An index of ``n_idx`` rows along ``dim`` (other dims as ``shape``'s, or smaller)."""
    ishape = list(shape)
    ishape[dim] = n_idx
    if unique:  # a permutation's prefix per line: no repeated target
        full = np.argsort(rng.random(tuple(ishape[:dim]) + (shape[dim],) +
                                     tuple(ishape[dim + 1:])), axis=dim)
        return np.take(full, np.arange(n_idx), axis=dim)
    return rng.integers(0, shape[dim], ishape)


CASES = [((4, 5), 0, 3), ((4, 5), 1, 5), ((3, 4, 6), 2, 4), ((3, 4, 6), 1, 2), ((7,), 0, 7),
         ((2, 3, 4, 5), 0, 2)]


@pytest.mark.parametrize("shape, dim, n", CASES)
@pytest.mark.parametrize("unique", [True, False], ids=["unique", "repeated"])
def test_scatter_matches_pytorch_values(shape, dim, n, unique):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(shape) * 10 + dim)
    x = rng.standard_normal(shape).astype(np.float32)
    idx = _case(rng, shape, dim, n, unique)
    src = rng.standard_normal(tuple(s + 1 for s in idx.shape)).astype(np.float32)  # larger
    ours = dg.tensor(x).scatter(dim, dg.tensor(idx), dg.tensor(src))
    theirs = torch.tensor(x).scatter(dim, torch.tensor(idx), torch.tensor(src))
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    v_ours = dg.scatter(dg.tensor(x), dim, dg.tensor(idx), value=2.5)
    v_theirs = torch.scatter(torch.tensor(x), dim, torch.tensor(idx), value=2.5)
    np.testing.assert_array_equal(v_ours.numpy(), v_theirs.numpy())


def test_scatter_in_place_one_hot_negative_zero_ints_bools_and_reduce_add():
    y = dg.tensor([2, 0, 1])
    one_hot = dg.zeros(3, 4).scatter_(1, y.unsqueeze(1), 1.0)
    np.testing.assert_array_equal(one_hot.numpy(), np.eye(4, dtype=np.float32)[[2, 0, 1]])
    z = dg.ones(3).scatter(0, dg.tensor([1]), dg.tensor([-0.0]))
    assert np.signbit(z.numpy()[1]) and z.numpy()[0] == 1.0  # -0.0 written as -0.0
    ints = dg.zeros(4, dtype=dg.int64).scatter(0, dg.tensor([3, 0, 3]), dg.tensor([5, 6, 7]))
    assert ints.tolist() == [6, 0, 0, 7]
    bools = dg.zeros(3, dtype=dg.bool).scatter(0, dg.tensor([2]), True)
    assert bools.tolist() == [False, False, True]
    added = dg.ones(3).scatter(0, dg.tensor([0, 0, 2]), dg.tensor([1., 2., 3.]), reduce="add")
    assert added.tolist() == [4.0, 1.0, 4.0]
    x = dg.zeros(2, 2)
    before = x._version
    assert x.scatter_(0, dg.tensor([[1, 0]]), 3.0) is x and x._version > before
    assert x.tolist() == [[0.0, 3.0], [3.0, 0.0]]


def test_scatter_errors_name_the_op_and_the_shapes():
    x = dg.zeros(3)
    with pytest.raises(IndexError, match="scatter"):
        x.scatter(0, dg.tensor([3]), 1.0)
    with pytest.raises(IndexError, match="scatter"):
        x.scatter(0, dg.tensor([-1]), 1.0)  # (PyTorch rejects negative indices here)
    with pytest.raises(RuntimeError, match="Expected self.dtype to be equal to src.dtype"):
        x.scatter(0, dg.tensor([1]), dg.ones(1, dtype=dg.float64))
    with pytest.raises(RuntimeError, match="same number of dimensions"):
        dg.zeros(2, 2).scatter(0, dg.tensor([1]), 1.0)
    with pytest.raises(RuntimeError, match=r"smaller than self \[2, 2\]"):
        dg.zeros(2, 2).scatter(0, dg.tensor([[0, 1, 1]]), 1.0)
    with pytest.raises(NotImplementedError, match="reduce='add'"):
        x.scatter(0, dg.tensor([1]), 2.0, reduce="multiply")
    with pytest.raises(TypeError, match="src tensor or a value"):
        x.scatter(0, dg.tensor([1]))
    with pytest.raises(IndexError, match="long, int or bool"):
        x.scatter(0, dg.tensor([1.0]), 1.0)


@pytest.mark.parametrize("shape, dim, n", CASES[:4])
def test_scatter_gradchecks_in_input_and_source(shape, dim, n):
    rng = np.random.default_rng(dim)
    idx = dg.tensor(_case(rng, shape, dim, n, unique=True))
    x = dg.tensor(rng.standard_normal(shape), requires_grad=True)
    src = dg.tensor(rng.standard_normal(tuple(idx.shape)), requires_grad=True)
    assert gradcheck(lambda a, b: a.scatter(dim, idx, b), (x, src))


def test_scatter_gradients_match_pytorch_and_repeats_feed_only_the_winner():
    torch = pytest.importorskip("torch")
    idx = np.array([[0, 2], [0, 1]])
    xv, sv = np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2) + 10
    x, s = dg.tensor(xv, requires_grad=True), dg.tensor(sv, requires_grad=True)
    (x.scatter(1, dg.tensor(idx), s) * dg.tensor(np.arange(6.0).reshape(2, 3))).sum().backward()
    tx, ts = torch.tensor(xv, requires_grad=True), torch.tensor(sv, requires_grad=True)
    (tx.scatter(1, torch.tensor(idx), ts) * torch.arange(6.0).reshape(2, 3)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())
    np.testing.assert_array_equal(s.grad.numpy(), ts.grad.numpy())  # (no repeats in a row)
    s2 = dg.tensor([1.0, 2.0], requires_grad=True)
    dg.zeros(3).scatter(0, dg.tensor([1, 1]), s2).sum().backward()
    assert s2.grad.tolist() == [0.0, 1.0]  # the overwritten write gets none (PyTorch: its
    #                                         documented "incorrect" gradient gives both 1)


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_compiled_scatter_follows_indices_that_change_between_calls(backend):
    """The winner of repeated indices and the hit mask come from the data on every call:
    no guard on the indices, one variant, each call equal to eager."""
    w = dg.tensor(np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32), requires_grad=True)

    def f(idx, src):
        out = (w * 2).scatter(1, idx, src)
        out.sum().backward()
        return out

    cf = compiler.compile(f, backend=backend)
    rng = np.random.default_rng(0)
    for call in range(5):
        idx = dg.tensor(rng.integers(0, 4, (3, 3)))
        src = dg.tensor(rng.standard_normal((3, 3)).astype(np.float32))
        w.grad = None
        want = f(idx, src)
        g_want = w.grad.numpy().copy()
        w.grad = None
        got = cf(idx, src)
        np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy(),
                                      err_msg=f"call {call}")
        np.testing.assert_array_equal(w.grad.numpy(), g_want, err_msg=f"call {call}")
    assert len(cf.variants) == 1 and cf.variants[0].calls >= 3
    if backend == "llvm":
        assert "all" in cf.variants[0].plan.describe()  # one native driver call


@pytest.mark.parametrize("backend", ["llvm", "interp"])
@pytest.mark.parametrize("form", ["d2l", "rows", "row_value"])
def test_a_boolean_mask_assignment_compiles_once_its_mask_is_data(backend, form):
    """``X[~mask] = v`` (d2l's sequence_mask), a mask over leading dims (``X[rows] = v``)
    and one value per selected row: a select, so the mask's contents are data — one
    variant over masks of every count, each call equal to eager (and to PyTorch)."""
    w = dg.tensor(np.linspace(-1, 1, 24).reshape(4, 6).astype(np.float32), requires_grad=True)
    value = dg.tensor(np.arange(6, dtype=np.float32)) if form == "row_value" else -1e6

    def f(lens):
        X = w * 3
        if form == "d2l":
            mask = dg.arange(6, dtype=dg.float32)[None, :] < lens[:, None]
            X[~mask] = value
        else:
            X[lens > 2] = value
        X.sum().backward()
        return X

    cf = compiler.compile(f, backend=backend)
    rng = np.random.default_rng(4)
    for _ in range(5):
        lens = dg.tensor(rng.integers(0, 7, 4).astype(np.float32))
        w.grad = None
        want = f(lens)
        g_want = w.grad.numpy().copy()
        w.grad = None
        got = cf(lens)
        np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
        np.testing.assert_array_equal(w.grad.numpy(), g_want)
    assert len(cf.variants) == 1 and cf.variants[0].calls >= 3
    torch = pytest.importorskip("torch")
    tw = torch.tensor(w.detach().numpy(), requires_grad=True)
    X = tw * 3
    tl = torch.tensor(lens.numpy())
    if form == "d2l":
        X[~(torch.arange(6, dtype=torch.float32)[None, :] < tl[:, None])] = -1e6
    else:
        X[tl > 2] = torch.arange(6, dtype=torch.float32) if form == "row_value" else -1e6
    X.sum().backward()
    np.testing.assert_array_equal(got.detach().numpy(), X.detach().numpy())
    np.testing.assert_array_equal(w.grad.numpy(), tw.grad.numpy())
