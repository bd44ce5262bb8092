"""Which elementwise primitive lowers natively for which dtype (issue 15: every primitive and
dtype native, or the exception listed with its reason). Each program applies one public
operation to a tensor of one dtype; compiled for the LLVM backend it must run as one native
driver call and equal eager — unless the pair is in ``NOT_NATIVE``, which must then still
run in numpy (so the table is kept true in both directions); integer results equal eager
bit for bit. Every dtype: the narrow integers too (edge values: ``test_codegen_narrow.py``).
The other primitive kinds: ``test_lowering_table.py``. Also: log1p's accuracy (its
lowering is log(u)·x/(u − 1) on the vecmath logs), bool comparisons and int64 sign."""

from __future__ import annotations

import ctypes
import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import codegen, driver, jit
from dyngrad.ops import REGISTRY

DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")

NOT_NATIVE: dict = {}  # (name, dtype) -> why it runs in numpy: none today
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow", "eq", "ne", "lt", "le",
          "gt", "ge", "atan2", "bitwise_and", "bitwise_or", "bitwise_xor",
          "bitwise_left_shift", "bitwise_right_shift")


def _input(dt: str):
    r = np.random.default_rng(0)
    if dt == "bool":
        return dg.tensor(r.random((9, 7)) > 0.5)
    if dt.startswith(("int", "uint")):
        return dg.tensor(r.integers(0 if dt == "uint8" else -5, 6, (9, 7)).astype(dt))
    return dg.tensor((r.random((9, 7)) + 0.5).astype(dt))


def _program(name: str, dt: str):
    if name == "cast":
        return lambda a: a.to(dg.float32 if dt != "float32" else dg.int64)
    if name == "where":
        return lambda a: dg.where(a > 0 if dt != "bool" else a, a, a)
    fn = getattr(dg, name)
    return (lambda a: fn(a, a)) if name in BINARY else fn


NAMES = sorted(p.name for p in REGISTRY.values() if p.kind == "elementwise")


def _compiled(fn, xs: list):
    """The program compiled for LLVM, its second call's results, and whether it is native."""
    f = compiler.compile(fn, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            got = f(*xs)
    return got, isinstance(f.variants[0].plan, driver.DriverPlan), f.variants[0].plan


@pytest.mark.parametrize("name", NAMES)
def test_each_elementwise_primitive_and_dtype_lowers_or_is_listed(name):
    """One program applies the primitive to every dtype eager accepts (one compile per
    primitive, not per pair); when it is not all native, each dtype is compiled alone to
    find which pairs fall back."""
    accepted, wants, xs = [], [], []
    for dt in DTYPES:
        fn, x = _program(name, dt), _input(dt)
        try:
            wants.append(fn(x))
        except (RuntimeError, TypeError):
            assert (name, dt) not in NOT_NATIVE, f"stale entry: eager rejects {name} on {dt}"
            continue
        accepted.append(dt)
        xs.append(x)
    fns = [_program(name, dt) for dt in accepted]
    gots, native, plan = _compiled(lambda *xs: tuple(f(x) for f, x in zip(fns, xs)), xs)
    for dt, got, want in zip(accepted, gots, wants):
        g, w = got.numpy(), want.numpy()
        assert g.dtype == w.dtype, (dt, g.dtype, w.dtype)
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=dt)
        else:
            np.testing.assert_array_equal(g, w, err_msg=dt)
    if native:
        listed = [dt for dt in accepted if (name, dt) in NOT_NATIVE]
        assert not listed, f"{name} on {listed} is listed in NOT_NATIVE but lowers natively"
        return
    for dt, x in zip(accepted, xs):
        _, alone, plan = _compiled(_program(name, dt), [x])
        assert alone == ((name, dt) not in NOT_NATIVE), (name, dt, plan.describe())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_lowers_within_three_ulps(dtype):
    r = np.random.default_rng(1)
    xs = np.concatenate([np.linspace(-0.999, 10, 20001), r.uniform(-1e-3, 1e-3, 10000),
                         np.exp(np.linspace(-80, 80, 2001)) * 1e-5,
                         -np.exp(np.linspace(-80, -0.01, 2001)),
                         [0.0, -0.0, np.inf, -1.0, -2.0, np.nan, 1e-30]]).astype(dtype)
    f = compiler.compile(lambda x: x.log1p(), backend="llvm")
    x = dg.tensor(xs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            got = f(x).numpy()
        want = np.log1p(xs)
    fin = np.isfinite(want) & (want != 0)
    err = np.abs(got[fin].astype(np.float64) - want[fin]) / np.spacing(np.abs(want[fin]))
    assert err.max() <= 3.0, (err.max(), xs[fin][err.argmax()])
    np.testing.assert_array_equal(got[~fin], want[~fin])
    assert isinstance(f.variants[0].plan, driver.DriverPlan)


def test_reshaped_strides_agree_with_numpys_no_copy_reshape():
    """For random broadcast and transposed views and random target shapes: the strides
    given exist exactly when numpy can reshape without a copy, and address the same
    elements."""
    from compiler.backends.llvm.loops import reshaped_strides
    r = np.random.default_rng(3)
    for _ in range(600):
        base = tuple(int(s) for s in r.integers(1, 4, r.integers(1, 4)))
        lead = tuple(int(s) for s in r.integers(1, 4, r.integers(0, 2)))
        a = np.arange(int(np.prod(base))).reshape(base)
        v = np.broadcast_to(a, lead + tuple(s if s != 1 else int(r.integers(1, 4))
                                            for s in base)).transpose(r.permutation(
                                                len(lead) + len(base)))
        n, factors = v.size, []
        for d in (2, 3, 4, 6):
            while n % d == 0 and r.random() < 0.5:
                factors.append(d)
                n //= d
        out = tuple(int(f) for f in r.permutation(factors + [n]))
        got = reshaped_strides(v.shape, tuple(s // v.itemsize for s in v.strides), out)
        try:
            w = v.view()
            w.shape = out  # (numpy: only without a copy)
            possible = True
        except AttributeError:
            possible = False
        assert (got is not None) == possible, (v.shape, v.strides, out)
        if got is not None:
            idx = np.indices(out).reshape(len(out), -1)
            offsets = (np.array(got)[:, None] * idx).sum(0)
            np.testing.assert_array_equal(a.reshape(-1)[offsets], v.reshape(-1))


@pytest.mark.parametrize("name", ["merge_inner_of_broadcast", "split_of_transposed",
                                  "merge_of_permuted_pairs"])
def test_reshapes_of_strided_views_lower(name):
    b = dg.tensor(np.random.default_rng(4).standard_normal((4, 5)).astype(np.float32))
    fn = {"merge_inner_of_broadcast": lambda x: (b.expand(6, 4, 5).reshape(6, 20) * x).sum(1),
          "split_of_transposed": lambda x: (b.T.reshape(5, 2, 2) * x).amax(0),
          "merge_of_permuted_pairs": lambda x: (b.reshape(2, 2, 5).permute(2, 0, 1)
                                                 .reshape(5, 4) + x).exp()}[name]
    shape = {"merge_inner_of_broadcast": (6, 20), "split_of_transposed": (5, 2, 2),
             "merge_of_permuted_pairs": (5, 4)}[name]
    x = dg.tensor(np.random.default_rng(5).standard_normal(shape).astype(np.float32))
    f = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        np.testing.assert_allclose(f(x).numpy(), fn(x).numpy(), rtol=1e-6, atol=1e-6)
    assert isinstance(f.variants[0].plan, driver.DriverPlan), f.variants[0].plan.describe()


@pytest.mark.parametrize("dt", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("shape,pads", [((5,), (2, 3)), ((3, 4), (1, 0, 2, 1)),
                                        ((2, 3, 4), (0, 0, 1, 1, 2, 0)),
                                        ((2, 3, 4), (3, 1)), ((2, 1, 3), (0, 2, 1, 0))])
def test_a_pad_of_a_computed_value_lowers_row_by_row_and_equals_eager(dt, shape, pads):
    """A constant pad by non-negative widths (a slice's gradient) runs as runs of the value
    and of the input's rows (datamove.MoveBuilder._pad_rows), pads in outer dims included."""
    r = np.random.default_rng(6)
    x = dg.tensor(r.random(shape) > 0.5 if dt == "bool" else
                  (r.standard_normal(shape) * 5).astype(dt))
    for value in (0, 1):
        def fn(x):
            y = ~x if dt == "bool" else x * 2
            return F.pad(y, pads, value=value)
        f = compiler.compile(fn, backend="llvm")
        for _ in range(2):
            np.testing.assert_array_equal(f(x).numpy(), fn(x).numpy())
        plan = f.variants[0].plan
        assert isinstance(plan, driver.DriverPlan), plan.describe()
        (grp,) = [grp for grp in plan.groups if grp.kind == "movement"]
        # the kernel alone, into a buffer of poison: it writes every element
        text, ((name, _),) = codegen.module_ir(f.variants[0].trace.graph, [grp])
        src = np.ascontiguousarray((~x if dt == "bool" else x * 2).numpy())
        out = np.full(grp.outputs[0].shape, 7 if dt != "bool" else True, dtype=src.dtype)
        args = (ctypes.c_void_p * 2)(src.ctypes.data, out.ctypes.data)
        jit.compile_ir(text).cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)(
            ctypes.addressof(args), 0)
        np.testing.assert_array_equal(out, np.pad(src, _np_widths(shape, pads),
                                                  constant_values=value))


def _np_widths(shape, pads) -> list:
    """F.pad's (last dim first) widths as numpy's per-dim pairs."""
    w = [(0, 0)] * len(shape)
    for k in range(len(pads) // 2):
        w[len(shape) - 1 - k] = (pads[2 * k], pads[2 * k + 1])
    return w


# ------------------------------------------------------------------ scans and argsort
# cumsum, cumprod and argsort lower to scan.py's kernels for every dtype their rules accept
# and along any axis: compiled (LLVM) equals eager and the numpy interpreter exactly — the
# same accumulators in the same order (float32 summed in float64, integers and bools in
# int64), the same stable permutation with NaN where eager puts it — and runs natively.

SCAN_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
SCAN_SHAPES = [((5, 7), 1), ((5, 7), 0), ((3, 4, 5), 1), ((3, 4, 5), -1), ((2, 3, 300), 0),
               ((6,), 0), ((), 0), ((4, 1), 1), ((1, 4), 0), ((0, 3), 1), ((3, 0), 1)]


def _cumsum_reversed(axis):  # (cumsum's vjp: the running sums from the end)
    from dyngrad.dispatch import dispatch
    from dyngrad.ops.scan import CUMSUM
    return lambda t: dispatch(CUMSUM, t, axis=axis % max(t.ndim, 1), reverse=True)


SCANS = {
    "cumsum": lambda axis: lambda t: dg.cumsum(t, axis),
    "cumsum_reversed": _cumsum_reversed,
    "cumprod": lambda axis: lambda t: dg.cumprod(t, axis),
    "argsort": lambda axis: lambda t: dg.argsort(t, axis),
    "argsort_descending": lambda axis: lambda t: dg.argsort(t, axis, descending=True),
}


def _scan_input(dt: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """Values with ties, signed zeros, NaN and infinities (floats), and repeated integers."""
    r = np.random.default_rng(seed)
    if dt == "bool":
        return r.random(shape) > 0.5
    if dt.startswith("float"):
        pool = np.array([np.nan, -np.nan, 0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 2.5, 1e-3])
        a = r.standard_normal(shape)
        return np.where(r.random(shape) < 0.3, r.choice(pool, shape), a).astype(dt)
    low = 0 if dt == "uint8" else -4
    return r.integers(low, 5, shape).astype(dt)


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and np.array_equal(
        got, want, equal_nan=got.dtype.kind == "f")


@pytest.mark.parametrize("name", sorted(SCANS))
@pytest.mark.parametrize("dt", SCAN_DTYPES)
def test_scans_and_argsort_lower_natively_and_equal_eager_and_the_interpreter(name, dt):
    for shape, axis in SCAN_SHAPES:
        fn = SCANS[name](axis)
        x = dg.tensor(_scan_input(dt, shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (cumprod overflows to inf)
            want = fn(x).numpy()
            native = compiler.compile(fn, backend="llvm")
            interp = compiler.compile(fn, backend="interp")
            for _ in range(2):
                got, oracle = native(x).numpy(), interp(x).numpy()
        assert _same(got, want), (name, dt, shape, axis, got, want)
        assert _same(oracle, want), (name, dt, shape, axis)
        plan = native.variants[0].plan
        assert isinstance(plan, driver.DriverPlan), (shape, axis, plan.describe())


def test_float32_running_sums_accumulate_in_float64_as_eager():
    """float32 rounding at each step would lose the small terms: 2**24 + 1 + 1 + ..."""
    a = np.array([[2.0 ** 24] + [1.0] * 63] * 2, np.float32)
    f = compiler.compile(lambda t: dg.cumsum(t, 1), backend="llvm")
    for _ in range(2):
        got = f(dg.tensor(a)).numpy()
    np.testing.assert_array_equal(got, dg.cumsum(dg.tensor(a), 1).numpy())
    assert got[0, -1] == np.float32(2.0 ** 24 + 64)


@pytest.mark.parametrize("descending", [False, True])
def test_argsort_of_long_lines_is_stable_with_nan_where_eager_puts_it(descending):
    r = np.random.default_rng(5)
    a = r.integers(-50, 50, (3, 5000)).astype(np.float64)
    a[r.random(a.shape) < 0.05] = np.nan
    x = dg.tensor(a)
    for axis in (0, 1):
        fn = lambda t, axis=axis: dg.sort(t, axis, descending=descending)  # noqa: E731
        f = compiler.compile(lambda t, fn=fn: fn(t).indices, backend="llvm")
        for _ in range(2):
            got = f(x).numpy()
        np.testing.assert_array_equal(got, fn(x).indices.numpy())
        assert isinstance(f.variants[0].plan, driver.DriverPlan)


def test_a_step_with_scans_sort_and_their_gradients_is_fully_native_by_explain():
    """``explain`` says the plan: all kernels native, one driver call — no numpy group."""
    w = dg.tensor(np.random.default_rng(6).standard_normal((6, 9)), requires_grad=True)

    def step(x):
        w.grad = None
        y = dg.cumsum(w * x, 1) + dg.cumprod(x, 0)
        loss = (dg.sort(y, 1, descending=True).values[:, :3]).sum()
        loss.backward()
        return loss, dg.argsort(y, 0)
    f = compiler.compile(step, backend="llvm")
    x = dg.tensor(np.random.default_rng(7).standard_normal((6, 9)))
    for _ in range(2):
        loss, order = f(x)
    text = str(compiler.explain(f))
    assert "kernels native, run by one driver call" in text, text
    assert "in numpy:" not in text
    w2 = dg.tensor(w.detach().numpy(), requires_grad=True)
    y = dg.cumsum(w2 * x, 1) + dg.cumprod(x, 0)
    want = (dg.sort(y, 1, descending=True).values[:, :3]).sum()
    want.backward()
    assert abs(loss.item() - want.item()) <= 1e-12 * abs(want.item())
    np.testing.assert_array_equal(order.numpy(), dg.argsort(y, 0).numpy())
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ pow by a tensor


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_pow_by_a_tensor_exponent_lowers_with_numpys_special_cases(dt):
    specials = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan,
                         3.0, -3.0, 2.5, -2.5, 1e30, -1e30, 1e-30, 2.0 ** 24, -(2.0 ** 24)])
    bx, by = (v.ravel().astype(dt) for v in np.meshgrid(specials, specials))
    r = np.random.default_rng(8)
    rx = np.concatenate([r.uniform(0, 4, 4000), -r.integers(1, 9, 1000).astype(float),
                         1 + r.uniform(-1e-3, 1e-3, 1000)]).astype(dt)
    ry = np.concatenate([r.uniform(-20, 20, 4000), r.integers(-9, 9, 1000).astype(float),
                         r.uniform(-3e4, 3e4, 1000)]).astype(dt)
    f = compiler.compile(lambda a, b: a ** b, backend="llvm")
    for x, y in ((bx, by), (rx, ry)):
        with np.errstate(all="ignore"):
            want = np.power(x, y)
        for _ in range(2):
            got = f(dg.tensor(x), dg.tensor(y)).numpy()
        assert isinstance(f.variants[0].plan, driver.DriverPlan)
        exact = ~np.isfinite(want) | (want == 0)
        np.testing.assert_array_equal(got[exact], want[exact])  # (NaN, ±inf, ±0, signs)
        num = ~np.isnan(want)  # (a NaN's sign bit is no part of pow's semantics)
        np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(want[num]))
        fin = ~exact
        ulps = np.abs(got[fin].astype(np.float64) - want[fin]) / np.spacing(np.abs(want[fin]))
        assert ulps.max() <= 1.5, (dt, ulps.max(), x[fin][ulps.argmax()], y[fin][ulps.argmax()])
