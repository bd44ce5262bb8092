"""The LLVM backend's window kernels (``compiler/backends/llvm/window.py``): convolution in
its three directions and the pooling indices, compiled against eager over geometries
(stride, padding, dilation, groups, 1x1 windows, 1-d), batch sizes (one sample runs on the
caller's thread; more run in parallel; the weight gradient's fixed sample blocks), dtypes,
NaN and -inf windows, and thread counts (the same bits on one thread as on two). Every plan
here must be one native driver call."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver, threads, window

SOME = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _native(f) -> None:
    for v in f.variants:
        assert isinstance(v.plan, driver.DriverPlan), v.plan.describe()


def _grads_of(fn):
    """``fn``'s output and the gradients of a weighted sum of it for every input."""
    def run(*xs):
        y = fn(*xs)
        wts = dg.cos(dg.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        return (y, *dg.autograd.grad((y * wts).sum(), xs))
    return run


def _compare(fn, *arrays, rtol=1e-10, calls=2):
    """Compiled (LLVM) against eager for ``fn`` on float64 ``arrays``, value and gradients."""
    xs = [dg.tensor(a, requires_grad=True) for a in arrays]
    want = fn(*xs)
    f = compiler.compile(fn, backend="llvm")
    for _ in range(calls):
        got = f(*xs)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy(), rtol=rtol,
                                   atol=rtol)
    _native(f)
    return got


_small = st.integers(1, 3)


@SOME
@given(n=st.sampled_from([1, 2, 9]), groups=_small, cin=_small, cout=_small,
       h=st.integers(1, 8), w=st.integers(1, 8), kh=_small, kw=_small,
       stride=st.tuples(_small, _small), dilation=st.tuples(_small, _small),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_conv2d_and_its_gradients_compile_to_eager(n, groups, cin, cout, h, w, kh, kw, stride,
                                                   dilation, padding):
    assume(all(s + 2 * p >= d * (k - 1) + 1 for s, p, d, k in
               zip((h, w), padding, dilation, (kh, kw))))
    r = np.random.default_rng(0)
    x = r.standard_normal((n, cin * groups, h, w))
    wt = r.standard_normal((cout * groups, cin, kh, kw))
    _compare(_grads_of(lambda x, wt: F.conv2d(x, wt, stride=stride, padding=padding,
                                              dilation=dilation, groups=groups)), x, wt)


@SOME
@given(n=st.sampled_from([1, 3, 8, 17]), groups=_small, cin=_small, cout=_small,
       h=st.integers(1, 5), w=st.integers(1, 5), kh=_small, kw=_small,
       stride=st.tuples(_small, _small), dilation=st.tuples(_small, _small),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       extra=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_conv_transpose2d_and_its_gradients_compile_to_eager(n, groups, cin, cout, h, w, kh, kw,
                                                             stride, dilation, padding, extra):
    output_padding = tuple(min(e, max(s, d) - 1) for e, s, d in zip(extra, stride, dilation))
    assume(all((i - 1) * s - 2 * p + d * (k - 1) + 1 + o >= 1 for i, s, p, d, k, o in
               zip((h, w), stride, padding, dilation, (kh, kw), output_padding)))
    r = np.random.default_rng(1)
    x = r.standard_normal((n, cin * groups, h, w))
    wt = r.standard_normal((cin * groups, cout, kh, kw))
    _compare(_grads_of(lambda x, wt: F.conv_transpose2d(
        x, wt, stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation)), x, wt)


@pytest.mark.parametrize("n", [1, 2, 8, 9, 33])
@pytest.mark.parametrize("kernel, padding", [(1, 0), (3, 1), ((1, 3), (0, 1))])
def test_batch_sizes_split_samples_and_weight_gradient_blocks(n, kernel, padding):
    r = np.random.default_rng(n)
    x, wt = r.standard_normal((n, 4, 6, 5)), r.standard_normal((6, 2, *np.broadcast_to(
        kernel, 2)))
    _compare(_grads_of(lambda x, wt: F.conv2d(x, wt, padding=padding, groups=2)), x, wt)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2, groups=3),
                                dict(padding="same")])
def test_conv1d_compiles_to_eager(kw):
    r = np.random.default_rng(2)
    x, wt = r.standard_normal((5, 6, 11)), r.standard_normal((3, 6 // kw.get("groups", 1), 3))
    _compare(_grads_of(lambda x, wt: F.conv1d(x, wt, **kw)), x, wt)


def test_float32_depthwise_and_pointwise_layers_compile_to_eager():
    r = np.random.default_rng(3)
    x = r.standard_normal((4, 8, 10, 10)).astype(np.float32)
    dw = r.standard_normal((8, 1, 3, 3)).astype(np.float32)
    pw = r.standard_normal((16, 8, 1, 1)).astype(np.float32)
    _compare(_grads_of(lambda x, dw, pw: F.conv2d(F.conv2d(x, dw, padding=1, groups=8), pw)),
             x, dw, pw, rtol=2e-5)


def _pool_program(kw, adaptive=None):
    if adaptive is not None:
        return lambda x: F.adaptive_max_pool2d(x, adaptive, return_indices=True)
    return lambda x: F.max_pool2d(x, return_indices=True, **kw)


@SOME
@given(h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(_small, _small), pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil_mode=st.booleans(),
       dtype=st.sampled_from(["float32", "float64", "int64"]))
def test_max_pool_indices_compile_to_eager(h, w, kh, kw, stride, pad, dilation, ceil_mode,
                                           dtype):
    assume(2 * pad[0] <= kh and 2 * pad[1] <= kw)
    r = np.random.default_rng(4)
    x = np.round(r.standard_normal((2, 3, h, w)) * 2)  # ties
    if dtype != "int64":
        x[0, 0].flat[::3] = -np.inf
        x[1, 1].flat[::4] = np.nan
    x = dg.tensor(x.astype(dtype))
    fn = _pool_program(dict(kernel_size=(kh, kw), stride=stride, padding=pad,
                            dilation=dilation, ceil_mode=ceil_mode))
    try:
        want = fn(x)
    except RuntimeError:
        return  # (a geometry eager rejects, as PyTorch)
    f = compiler.compile(fn, backend="llvm")
    got = f(x)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    _native(f)


@pytest.mark.parametrize("size", [1, (2, 3), (5, 4), (7, 7)])
@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_adaptive_max_pool_indices_compile_to_eager(size, dtype):
    x = np.round(np.random.default_rng(5).standard_normal((2, 3, 7, 6)) * 2)
    if dtype == "float32":
        x[1, 2, 3, 3] = np.nan
    x = dg.tensor(x.astype(dtype))
    f = compiler.compile(_pool_program(None, size), backend="llvm")
    want, got = _pool_program(None, size)(x), f(x)
    np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    _native(f)


def test_max_pool1d_and_its_gradient_compile_to_eager():
    x = np.random.default_rng(6).standard_normal((3, 4, 17))
    _compare(_grads_of(lambda x: F.max_pool1d(x, 3, 2, padding=1, ceil_mode=True)), x)


def test_avg_pool_compiles_to_eager():
    x = np.random.default_rng(7).standard_normal((3, 4, 9, 8))
    _compare(_grads_of(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True,
                                              count_include_pad=False)), x)


@pytest.mark.parametrize("cout, stride", [(16, 1), (10, 2)])
def test_the_bits_do_not_depend_on_the_thread_count(cout, stride):
    if threads.find() is None:
        pytest.skip("no thread pool here (DYNGRAD_THREADS=1 or not Linux x86-64)")
    r = np.random.default_rng(8)
    x = dg.tensor(r.standard_normal((19, 8, 12, 12)).astype(np.float32), requires_grad=True)
    wt = dg.tensor(r.standard_normal((cout, 8, 3, 3)).astype(np.float32), requires_grad=True)
    fn = _grads_of(lambda x, wt: F.max_pool2d(F.conv2d(x, wt, padding=1, stride=stride), 2))
    before = threads.team()
    results = []
    try:
        for team in (1, 2, 3):
            threads.set_team(team)
            f = compiler.compile(fn, backend="llvm")
            results.append([t.detach().numpy() for t in f(x, wt)])
    finally:
        threads.set_team(max(before, 1))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, cin, cout, h, w, k, padding, groups, stride, dilation", [
    (4, 16, 16, 32, 32, 3, 1, 1, 1, 1),    # W7b's block: one full tile per output row
    (3, 32, 32, 16, 16, 3, 1, 1, 1, 1),    # rows of one vector
    (3, 4, 10, 5, 40, 5, 2, 1, 1, 1),      # a full tile and a masked tail; 10 = 8 + 2
    (2, 1, 6, 28, 28, 3, 0, 1, 1, 1),      # one input channel (mnist's conv1), a tail only
    (3, 6, 9, 7, 9, 2, "same", 3, 1, 1),   # an even window: padding (0, 1); groups
    (2, 3, 5, 1, 37, 3, 4, 1, 1, 1),       # one input row
    (3, 16, 32, 32, 32, 3, 1, 1, 2, 1),    # W7b's downsampling: four phase planes
    (3, 16, 32, 32, 32, 1, 0, 1, 2, 1),    # its 1x1 shortcut: one phase read
    (2, 5, 7, 13, 12, 4, 2, 1, (2, 3), 1),  # strides differing per dim, odd planes
    (2, 4, 6, 11, 11, 3, 2, 2, 1, 2),      # dilation: the window's reach, one phase
    (2, 3, 4, 12, 12, 3, 1, 1, 2, 3),      # stride and dilation: two phases of four
    (2, 3, 4, 5, 75, 3, 2, 1, 2, 1),       # wide odd rows: staged two vectors at a time
])
def test_staged_convolution_straight_from_the_planes_has_the_column_path_bits(
        n, cin, cout, h, w, k, padding, groups, stride, dilation, dtype, monkeypatch):
    """The forward convolution reads each sample's staged planes directly (window.py,
    ``_conv_direct``; at a stride, one plane per phase), every sample alone or in a batch;
    the column buffer and the GEMM run only for 1x1 windows at stride 1 (or strides above
    ``MAX_STAGED_STRIDE``). Each output is the same chain of multiply-adds either way: the
    same bits."""
    r = np.random.default_rng(cin * 7 + cout)
    x = dg.tensor(r.standard_normal((n, cin, h, w)).astype(dtype))
    wt = dg.tensor(r.standard_normal((cout, cin // groups, k, k)).astype(dtype))

    def conv(x, wt):
        return F.conv2d(x, wt, padding=padding, groups=groups, stride=stride,
                        dilation=dilation)

    many, lone = compiler.compile(conv, backend="llvm"), compiler.compile(conv, backend="llvm")
    for _ in range(2):
        got = many(x, wt).numpy()
        one = np.concatenate([lone(x[i:i + 1].contiguous(), wt).numpy() for i in range(n)])
    with monkeypatch.context() as m:
        m.setattr(window, "_staged", lambda geo: False)  # the column path
        columns = compiler.compile(conv, backend="llvm")
        for _ in range(2):
            ref = columns(x, wt).numpy()
    for f in (many, lone, columns):
        _native(f)
        assert sum(v.calls for v in f.variants) >= 1
    assert np.array_equal(got, one) and np.array_equal(got, ref)
    np.testing.assert_allclose(got, conv(x, wt).numpy(), rtol=1e-4 if dtype == np.float32
                               else 1e-12, atol=1e-4 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, cin, cout, h, w, k, padding, groups, stride", [
    (4, 16, 16, 32, 32, 3, 1, 1, 1), (3, 4, 10, 5, 40, 5, 2, 1, 1), (2, 1, 6, 28, 28, 3, 0, 1, 1),
    (3, 6, 9, 7, 9, 2, "same", 3, 1),
    (2, 3, 4, 5, 5, 3, 3, 1, 1),  # padding wider than the window: the column path
    (3, 16, 32, 32, 32, 3, 1, 1, 2),  # W7b's downsampling: four phases
    (3, 16, 32, 32, 32, 1, 0, 1, 2),  # its 1x1 shortcut: three phases of zeros
    (2, 5, 7, 13, 12, 4, 2, 1, (2, 3)),  # strides differing per dim, odd planes
    (2, 4, 6, 11, 11, 3, 0, 2, 3),  # groups; a stride as wide as the window
    (2, 3, 4, 9, 9, 5, 3, 1, 2),  # padding wider than the phase's window
])
def test_input_gradient_is_the_flipped_window_s_correlation_per_phase(
        n, cin, cout, h, w, k, padding, groups, stride, dtype):
    """The input gradient correlates the bordered output gradient with the flipped window
    (``_transpose_direct``) — at a stride, one correlation per phase of the input with the
    window's rows and columns of that phase (``_transpose_phases``) — at every batch size:
    equal to eager within rounding, and a sample's gradient has the same bits alone as in a
    batch."""
    r = np.random.default_rng(cin + 3 * cout)
    wt = dg.tensor(r.standard_normal((cout, cin // groups, k, k)).astype(dtype))
    x = dg.zeros(n, cin, h, w, dtype=wt.dtype, requires_grad=True)
    g = dg.tensor(r.standard_normal(F.conv2d(x, wt, padding=padding, groups=groups,
                                             stride=stride).shape).astype(dtype))

    def dx(x, g):
        y = F.conv2d(x, wt, padding=padding, groups=groups, stride=stride)
        return dg.autograd.grad((y * g).sum(), x)[0]

    batch, lone = compiler.compile(dx, backend="llvm"), compiler.compile(dx, backend="llvm")
    for _ in range(2):
        got = batch(x, g).numpy()
        one = np.concatenate([lone(x[i:i + 1].detach().requires_grad_(), g[i:i + 1]
                                   .contiguous()).numpy() for i in range(n)])
    _native(batch)
    assert np.array_equal(got, one)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, dx(x, g).numpy(), rtol=tol, atol=tol)


def _weight_grad(stride=1, padding=1, groups=1):
    def dw(x, g, wt):
        y = F.conv2d(x, wt, stride=stride, padding=padding, groups=groups)
        return dg.autograd.grad((y * g).sum(), wt)[0]
    return dw


@pytest.mark.parametrize("n, cin, cout, h, w, k, stride, padding, groups", [
    (5, 16, 16, 32, 32, 3, 1, 1, 1),   # W7b's block: whole tiles, two vectors a row
    (3, 6, 10, 9, 21, 3, 2, 1, 1),     # channel and window-element tails, masked rows
    (4, 4, 6, 8, 8, 1, 2, 0, 2),       # a 1x1 window at stride 2, groups
])
def test_weight_gradient_bits_do_not_depend_on_how_its_work_is_split(
        n, cin, cout, h, w, k, stride, padding, groups, monkeypatch):
    """The weight gradient (``_weight_grad_staged``) is split into tasks of (group, output
    channels, a run of window-element blocks); every element is summed whole by one task in
    one order, so any split gives the same bits — and the values of the column path's (its
    GEMMs per sample, ``_staged`` off) within rounding."""
    r = np.random.default_rng(cin + cout)
    x = dg.tensor(r.standard_normal((n, cin, h, w)))
    wt = dg.zeros(cout, cin // groups, k, k, dtype=dg.float64, requires_grad=True)
    fn = _weight_grad(stride, padding, groups)
    g = dg.tensor(r.standard_normal(F.conv2d(x, wt, stride=stride, padding=padding,
                                             groups=groups).shape))
    results = []
    for tasks, totals in [(16, 16 << 10), (1, 1 << 20), (1000, 1)]:
        with monkeypatch.context() as m:
            m.setattr(window, "WG_TASKS", tasks)
            m.setattr(window, "WG_TOTALS", totals)
            f = compiler.compile(fn, backend="llvm")
            results.append([f(x, g, wt).numpy() for _ in range(2)][-1])  # (2nd: compiled)
            _native(f)
    with monkeypatch.context() as m:
        m.setattr(window, "_staged", lambda geo: False)
        columns = compiler.compile(fn, backend="llvm")
        ref = [columns(x, g, wt).numpy() for _ in range(2)][-1]
    for other in results[1:]:
        assert np.array_equal(results[0], other)
    np.testing.assert_allclose(results[0], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[0], fn(x, g, wt).numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_reach_the_weight_gradient_elements_they_reach_in_eager(dtype):
    """The weight gradient's rows end in a masked vector (lanes past the row load zeros,
    never the next row's values): an infinity in the input's last column, which window
    column 0 never reads, must not turn that column's gradient into NaN; a NaN in the
    output gradient reaches every element it reaches in eager."""
    r = np.random.default_rng(4)
    x = r.standard_normal((2, 3, 9, 21)).astype(dtype)
    x[1, 2, 4, -1] = np.inf
    x[0, 1, 0, 0] = -np.inf
    x = dg.tensor(x)
    wt = dg.zeros(5, 3, 3, 3, dtype=x.dtype, requires_grad=True)
    for stride in (1, 2):
        fn = _weight_grad(stride, padding=0)
        g = r.standard_normal(F.conv2d(x, wt, stride=stride).shape).astype(dtype)
        g[0, 3, 1, 2] = np.nan
        g = dg.tensor(g)
        f = compiler.compile(fn, backend="llvm")
        with np.errstate(invalid="ignore"):
            want = fn(x, g, wt).numpy()
            got = [f(x, g, wt).numpy() for _ in range(2)][-1]
        _native(f)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isinf(got), np.isinf(want))
        assert np.isfinite(want).any() and not np.isfinite(want).all()
        ok = np.isfinite(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride, padding", [(1, 1), (1, "same"), (2, 0), ((1, 2), 2),
                                             (3, 0)])
def test_a_non_finite_weight_reaches_the_input_gradient_elements_it_reaches_in_eager(
        dtype, stride, padding):
    """The input gradient correlates the zero-bordered output gradient with the flipped
    window (at a stride, per phase): an inf or NaN weight times a border zero is NaN, a term
    eager's col2im never forms — the positions next to the border must keep eager's (and
    PyTorch's) finite values. Such a call runs another way (window.NON_FINITE_WEIGHT); a
    finite weight the next call runs natively again."""
    r = np.random.default_rng(5)
    x = dg.zeros(2, 2, 7, 8, dtype=dg.float32 if dtype == np.float32 else dg.float64,
                 requires_grad=True)
    wa = r.standard_normal((3, 2, 3, 3)).astype(dtype)
    g = dg.tensor(r.standard_normal(F.conv2d(x, dg.tensor(wa), stride=stride,
                                             padding=padding).shape).astype(dtype))

    def dx(x, g, wt):
        y = F.conv2d(x, wt, stride=stride, padding=padding)
        return dg.autograd.grad((y * g).sum(), x)[0]

    f = compiler.compile(dx, backend="llvm")
    for bad in (np.inf, np.nan, None):
        w = wa.copy()
        if bad is not None:
            w[1, 0, 0, 0] = bad
        wt = dg.tensor(w)
        with np.errstate(invalid="ignore"):
            want = dx(x, g, wt).numpy()
            got = [f(x, g, wt).numpy() for _ in range(2)][-1]
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.array_equal(np.isinf(got), np.isinf(want))
        ok = np.isfinite(want)
        assert ok.any()
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4, atol=1e-4)
    _native(f)
    assert sum(v.calls for v in f.variants) >= 5


# ------------------------------------------------------------------ soundness


def test_a_conv_module_s_geometry_changed_between_calls_is_followed():
    """The window kernel bakes stride and padding in: a change of the module's attributes
    must reach a new variant (the guard), never the old kernel."""
    dg.manual_seed(0)
    conv = dg.nn.Conv2d(3, 4, 3)
    x = dg.randn(2, 3, 9, 9)
    f = compiler.compile(lambda x: conv(x).sum((2, 3)), backend="llvm")
    for stride, padding in [(1, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 1)]:
        conv.stride, conv.padding = (stride, stride), (padding, padding)
        np.testing.assert_allclose(f(x).detach().numpy(), conv(x).sum((2, 3)).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    _native(f)


def test_aliased_input_and_weight_and_in_place_weight_updates():
    """The weight a view of the input's memory, and the weight changed in place between
    calls: the kernel reads both where they are now."""
    base = dg.randn(4 * 3 * 6 * 6 + 2 * 3 * 3 * 3, dtype=dg.float64)
    x = base[:4 * 3 * 6 * 6].reshape(4, 3, 6, 6)
    w = base[4 * 3 * 6 * 6:].reshape(2, 3, 3, 3)
    fn = lambda x, w: F.conv2d(x, w, padding=1)  # noqa: E731
    f = compiler.compile(fn, backend="llvm")
    for k in range(3):
        np.testing.assert_allclose(f(x, w).numpy(), fn(x, w).numpy(), rtol=1e-12)
        with dg.no_grad():
            base.mul_(1.5).add_(-0.25 * k)
    _native(f)


def test_compiled_conv_inside_a_compiled_function_and_under_func_grad():
    r = np.random.default_rng(9)
    x = dg.tensor(r.standard_normal((3, 2, 7, 7)))
    w = dg.tensor(r.standard_normal((4, 2, 3, 3)))
    inner = compiler.compile(lambda x, w: F.max_pool2d(F.conv2d(x, w), 2), backend="llvm")
    outer = compiler.compile(lambda x, w: inner(x, w).square().sum(), backend="llvm")
    loss = lambda x, w: F.max_pool2d(F.conv2d(x, w), 2).square().sum()  # noqa: E731
    for _ in range(2):
        np.testing.assert_allclose(outer(x, w).numpy(), loss(x, w).numpy(), rtol=1e-12)
    g = compiler.compile(dg.func.grad(loss, argnums=1), backend="llvm")
    for _ in range(2):
        np.testing.assert_allclose(g(x, w).numpy(), dg.func.grad(loss, argnums=1)(x, w).numpy(),
                                   rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("team, stride", [(None, 1), (1, 1), ("no pool", 1), (None, 2),
                                          ("no pool", 2)])
def test_a_work_buffer_that_cannot_be_allocated_runs_the_call_another_way(monkeypatch, team,
                                                                           stride):
    """Every malloc of the window kernels refused (``MAX_WORK_BYTES`` 0): compiled steps —
    the backward inside the call, or outside it — still equal eager, with the parameters
    updated once per call, on the pool and on one thread (the weight gradient's last
    sample block's status is read too)."""
    from compiler.backends.llvm import window
    monkeypatch.setattr(window, "MAX_WORK_BYTES", 0)
    before = threads.team()
    if team == "no pool":  # (kernels compiled without splits: the sample blocks in a loop)
        monkeypatch.setattr(threads, "find", lambda: None)
    elif team is not None:
        threads.set_team(team)
    try:
        r = np.random.default_rng(10)
        x0 = r.standard_normal((9, 3, 7, 7))
        for inside in (True, False):
            w0 = r.standard_normal((4, 3, 3, 3))
            ws = [dg.tensor(w0, requires_grad=True) for _ in range(2)]
            xs = [dg.tensor(x0, requires_grad=True) for _ in range(2)]  # (its gradient: the
            #                                                      input gradient's kernel)

            def step(w, x):
                w.grad = x.grad = None
                y = F.conv2d(x, w, padding=1, stride=stride).square().sum()
                if not inside:
                    return y
                y.backward()
                with dg.no_grad():
                    w -= 0.01 * w.grad
                return y

            f = compiler.compile(step, backend="llvm")
            for _ in range(3):
                a, b = step(ws[0], xs[0]), f(ws[1], xs[1])
                if not inside:
                    a.backward()
                    b.backward()
                np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=1e-12)
                np.testing.assert_allclose(ws[1].grad.numpy(), ws[0].grad.numpy(), rtol=1e-10)
                np.testing.assert_allclose(xs[1].grad.numpy(), xs[0].grad.numpy(), rtol=1e-10,
                                           atol=1e-12)
                np.testing.assert_allclose(ws[1].detach().numpy(), ws[0].detach().numpy(),
                                           rtol=1e-12)
            assert f.variants and not f.fallbacks, f.fallbacks
    finally:
        threads.set_team(max(before, 1))
