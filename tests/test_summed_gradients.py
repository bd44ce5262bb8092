"""A convolution's input gradient summed with another gradient in one kernel (fusion's rule
(8), ``compiler/passes/fusion.py``; ``window.py``'s ``%a``).

Where a value feeds two branches — a residual block's input, read by its convolution and by
its shortcut — the backward adds the branches' gradients, one of them a ``conv_transpose``.
The kernel writes that sum, each element the transposed convolution's chain and then the
add, as eager rounds it, over the other gradient's buffer when that dies there (the memory
plan's in-place pair). Each path is forced (``DYNGRAD_CONV``: the direct tiles at stride 1,
the phased kernel when strided, the column path) and compared with eager over several
calls; the cases that must not share a buffer — the addend read by the convolution itself,
an addend the caller owns — are checked not to.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.passes.fusion import summed_gradient


def _summed(v) -> list:
    """The variant's window groups of rule (8), as (conv_transpose node, add node, other)."""
    g = v.trace.graph
    return [s for grp in v.plan.groups if grp.kind == "window"
            for s in [summed_gradient(g, grp)] if s is not None]


def _block(stride: int, groups: int, kernel: int):
    """A residual block's shape: ``h = relu(batch_norm(conv0(x)))`` feeds a 3x3 (or 1x1)
    convolution and a 1x1 shortcut, whose outputs add; ``h``'s gradient is the sum of their
    two input gradients, and flows on through the batch norm's backward (a reduction, which
    reads the sum where the ReLU lets it through) into ``conv0``'s weight gradient."""
    pad = kernel // 2

    def step(x, w0, w1, w2):
        for w in (w0, w1, w2):
            w.grad = None
        h = F.relu(F.batch_norm(F.conv2d(x, w0, padding=1), None, None, training=True))
        a = F.conv2d(h, w1, stride=stride, padding=pad, groups=groups)
        b = F.conv2d(h, w2, stride=stride)
        loss = (F.relu(a + b) ** 2).sum()
        loss.backward()
        return loss, w0.grad, w1.grad, w2.grad
    return step


def _weights(dtype, c: int, groups: int, kernel: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = dg.tensor(rng.standard_normal((3, 4, 9, 10)).astype(dtype))
    ws = [dg.tensor((0.3 * rng.standard_normal(s)).astype(dtype), requires_grad=True)
          for s in ((c, 4, 3, 3), (c, c // groups, kernel, kernel), (c, c, 1, 1))]
    return x, ws


GEOMETRIES = [(1, 1, 3), (2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 1, 1)]  # stride, groups, kernel


@pytest.mark.parametrize("path", ["direct", "columns"])
@pytest.mark.parametrize("stride,groups,kernel,dtype",
                         [(*geo, np.float32) for geo in GEOMETRIES] +
                         [(*geo, np.float64) for geo in GEOMETRIES[:2]])
def test_the_summed_input_gradient_equals_eager(path, stride, groups, kernel, dtype,
                                                monkeypatch):
    monkeypatch.setenv("DYNGRAD_CONV", path)
    step = _block(stride, groups, kernel)
    x, ws = _weights(dtype, 6, groups, kernel)
    cf = compiler.compile(step, backend="llvm")
    # (float32: the batch norm's backward subtracts means, so rounding shows relative to
    # each gradient's largest element; float64 agrees to 1e-12 on every path)
    rel = 3e-5 if dtype == np.float32 else 1e-12
    for k in range(3):
        xk = x * (1.0 + 0.25 * k)
        want = [t.detach().numpy().copy() for t in step(xk, *ws)]
        got = [t.detach().numpy().copy() for t in cf(xk, *ws)]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=rel, atol=rel * np.abs(b).max())
    (v,) = cf.variants
    sums = _summed(v)
    assert sums, "no convolution's input gradient took its add: the test tests nothing"
    mem = v.plan.memory
    for _, add, other in sums:  # (the other gradient dies at the add: written over)
        assert (other.id, add.out.id) in mem.inplace, (other, add.out)


def test_the_interpreter_runs_the_same_groups_bit_for_bit():
    step = _block(2, 1, 3)
    x, ws = _weights(np.float32, 6, 1, 3)
    cf = compiler.compile(step, backend="interp")
    for _ in range(3):
        want = [t.detach().numpy().copy() for t in step(x, *ws)]
        got = [t.detach().numpy().copy() for t in cf(x, *ws)]
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("path", ["direct", "columns"])
def test_an_addend_the_convolution_reads_keeps_its_own_buffer(path, monkeypatch):
    """``out = conv(h) + h`` (an identity shortcut, 3x3 at stride 1): ``h``'s gradient is
    ``conv_transpose(g) + g`` — the addend ``g`` is also what the transposed convolution
    reads, at every position of a window, so the sum may not be written over it."""
    monkeypatch.setenv("DYNGRAD_CONV", path)
    rng = np.random.default_rng(4)
    x = dg.tensor(rng.standard_normal((2, 5, 8, 8)).astype(np.float32))
    w0 = dg.tensor(0.3 * rng.standard_normal((5, 5, 3, 3)).astype(np.float32),
                   requires_grad=True)
    w1 = dg.tensor(0.3 * rng.standard_normal((5, 5, 3, 3)).astype(np.float32),
                   requires_grad=True)

    def step(x):
        w0.grad = w1.grad = None
        h = F.relu(F.batch_norm(F.conv2d(x, w0, padding=1), None, None, training=True))
        out = F.conv2d(h, w1, padding=1) + h
        loss = (F.relu(out) ** 2).sum()
        loss.backward()
        return loss, w0.grad, w1.grad

    cf = compiler.compile(step, backend="llvm")
    for _ in range(3):
        want = [t.detach().numpy().copy() for t in step(x)]
        got = [t.detach().numpy().copy() for t in cf(x)]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=3e-5, atol=3e-5 * np.abs(b).max())
    (v,) = cf.variants
    mem = v.plan.memory
    read = [(n, add, other) for n, add, other in _summed(v) if any(x is other for x in n.inputs)]
    assert read, "no sum whose addend the convolution reads: the test tests nothing"
    for _, add, other in read:
        assert (other.id, add.out.id) not in mem.inplace


def _conv_transpose_plus_argument(batch: int, seed: int, calls: int) -> tuple:
    """``conv_transpose2d(y, w) + extra`` with ``extra`` an argument, compiled and called
    ``calls`` times (checked against eager): (its variant, ``extra``, ``extra``'s values
    before the calls)."""
    rng = np.random.default_rng(seed)
    y = dg.tensor(rng.standard_normal((batch, 4, 6, 6)).astype(np.float32))
    w = dg.tensor(rng.standard_normal((4, 4, 3, 3)).astype(np.float32))
    extra = dg.tensor(rng.standard_normal((batch, 4, 6, 6)).astype(np.float32))
    before = extra.numpy().copy()

    def fn(y, extra):
        return F.conv_transpose2d(y, w, padding=1) + extra

    cf = compiler.compile(fn, backend="llvm")
    for _ in range(calls):
        got = cf(y, extra).numpy()
    np.testing.assert_allclose(got, fn(y, extra).numpy(), rtol=2e-5, atol=1e-5)
    (v,) = cf.variants
    return v, extra, before


def test_a_gradient_the_caller_passes_is_read_not_written():
    """``x.grad``'s sum with a gradient that is an argument of the call: the argument is the
    caller's, never an arena buffer, so the sum goes to memory of its own and the argument
    keeps its values."""
    v, extra, before = _conv_transpose_plus_argument(3, 5, calls=3)
    assert np.array_equal(extra.numpy(), before)
    assert _summed(v)


def test_one_sample_keeps_its_add_apart():
    """A batch of one splits each product across the threads instead of the samples: the
    add stays a kernel of its own."""
    v, _, _ = _conv_transpose_plus_argument(1, 6, calls=2)
    assert not _summed(v)


def test_a_negative_zero_sum_is_eagers():
    """Where no window element reaches (stride 2, 1x1: three positions in four), the sum is
    ``+0.0 + other`` — a -0.0 there becomes +0.0, as eager's add makes it."""
    y = dg.tensor(np.ones((2, 3, 4, 4), np.float32))
    w = dg.tensor(np.ones((3, 3, 1, 1), np.float32))
    extra = dg.tensor(np.full((2, 3, 7, 7), -0.0, np.float32))

    def fn(y, extra):
        return F.conv_transpose2d(y, w, stride=2) + extra

    cf = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        got = cf(y, extra).numpy()
    want = fn(y, extra).numpy()
    assert np.array_equal(np.signbit(got), np.signbit(want)) and np.array_equal(got, want)
    (v,) = cf.variants
    assert _summed(v)


@pytest.mark.parametrize("refuse", [False, True])
@pytest.mark.parametrize("path", ["direct", "columns"])
@pytest.mark.parametrize("stride", [1, 2])
def test_a_summed_kernel_that_fails_leaves_the_call_to_the_runner(path, stride, refuse,
                                                                  monkeypatch):
    """The window kernel of rule (8) returns a status — a non-finite weight (the direct
    paths), every work buffer refused (``refuse``) — after other kernels ran, with the
    addend's buffer to be written over: the call runs the runner's plan instead, and equals
    eager; a finite weight the next call runs natively again."""
    from compiler.backends.llvm import window
    monkeypatch.setenv("DYNGRAD_CONV", path)
    if refuse:
        monkeypatch.setattr(window, "MAX_WORK_BYTES", 0)
    rng = np.random.default_rng(8)
    y = dg.tensor(rng.standard_normal((4, 3, 5, 6)))
    u = dg.tensor(rng.standard_normal((4, 2, (5 - 1) * stride + 3, (6 - 1) * stride + 3)))
    w0 = rng.standard_normal((3, 2, 3, 3))

    def fn(y, u, w):
        s = F.conv_transpose2d(y, w, stride=stride) + (u * u).tanh()
        return (s * 2).sum((2, 3)), (s.relu() * u).sum(0)

    cf = compiler.compile(fn, backend="llvm")
    for bad in (None, np.inf, None, np.nan, None):
        w = w0.copy()
        if bad is not None:
            w[1, 0, 1, 2] = bad
        wt = dg.tensor(w)
        with np.errstate(invalid="ignore"):
            want = [t.numpy() for t in fn(y, u, wt)]
        got = [t.numpy() for t in cf(y, u, wt)]
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(np.isnan(a), np.isnan(b))
            ok = np.isfinite(b)
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-12, atol=1e-12)
    (v,) = cf.variants
    assert _summed(v) and not cf.fallbacks
    assert any((o.id, add.out.id) in v.plan.memory.inplace for _, add, o in _summed(v))
    assert (v.plan.fallback is not None) == (refuse or path == "direct")  # (the runner ran)


@pytest.mark.parametrize("path", ["direct", "columns"])
@pytest.mark.parametrize("nd,stride,dilation,groups,n", [
    (1, 1, 1, 1, 2), (1, 2, 1, 2, 3), (1, 1, 2, 1, 5), (2, 1, 2, 1, 3), (2, 3, 1, 3, 7),
    (2, (2, 1), 1, 1, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_summed_kernel_gives_the_bits_of_two_kernels(path, nd, stride, dilation, groups,
                                                         n, dtype, monkeypatch):
    """1-d and 2-d convolutions, dilated, grouped, strided unevenly, batches the threads
    split unevenly: the sum of rule (8) — in place over the other gradient — has the bits
    of the transposed convolution's kernel followed by the add's."""
    from compiler.passes import fusion
    monkeypatch.setenv("DYNGRAD_CONV", path)
    rng = np.random.default_rng(9)
    conv = F.conv1d if nd == 1 else F.conv2d
    x = dg.tensor(rng.standard_normal((n, 6) + (11, 9)[:nd]).astype(dtype), requires_grad=True)
    w = dg.tensor(0.5 * rng.standard_normal((6, 6 // groups) + (3, 2)[:nd]).astype(dtype))
    u = dg.tensor(rng.standard_normal(tuple(x.shape)).astype(dtype))
    with dg.no_grad():
        g = dg.tensor(rng.standard_normal(tuple(conv(x, w, stride=stride, padding=1,
                                                     dilation=dilation, groups=groups).shape)
                                          ).astype(dtype))

    def fn(x, g, u):
        y = conv(x, w, stride=stride, padding=1, dilation=dilation, groups=groups)
        loss = (y * g).sum() + ((x * u) ** 2).sum()
        (dx,) = dg.autograd.grad(loss, (x,))
        return (dx * 2).sum(0), (dx.relu() * u).sum((0, 1))

    def run():
        cf = compiler.compile(fn, backend="llvm")
        got = [[t.numpy().copy() for t in cf(x, g, u)] for _ in range(2)]
        return got, cf.variants[0]

    got, v = run()
    assert any((o.id, add.out.id) in v.plan.memory.inplace for _, add, o in _summed(v))
    with monkeypatch.context() as m:
        m.setattr(fusion._Partition, "absorb_sums", lambda self: None)
        apart, v0 = run()
    assert not _summed(v0)
    for a, b in zip(got, apart, strict=True):
        for p, q in zip(a, b, strict=True):
            assert np.array_equal(p, q)
    want = [t.detach().numpy() for t in fn(x, g, u)]
    rel = 3e-5 if dtype == np.float32 else 1e-12
    for p, q in zip(got[-1], want, strict=True):
        np.testing.assert_allclose(p, q, rtol=rel, atol=rel * np.abs(q).max())
