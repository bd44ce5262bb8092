"""float64 vector math in LLVM IR (compiler/backends/llvm/vecmath64.py): accuracy against
numpy in ulps of the result on dense grids and random inputs, special values exactly, and
float64 programs — an LSTM step among them — compiled into one native driver call."""

from __future__ import annotations

import copy
import ctypes
import math

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver, jit, vecmath, vecmath64
from dyngrad import nn, optim


def _kernel(name: str):
    text = vecmath.module_ir([name]) + f"""
define void @apply(ptr noalias %x, ptr noalias %y, i64 %n) {{
entry:
  %empty = icmp sle i64 %n, 0
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds double, ptr %x, i64 %i
  %v = load double, ptr %px
  %r = call double @dg_{name}(double %v)
  %py = getelementptr inbounds double, ptr %y, i64 %i
  store double %r, ptr %py
  %i1 = add nuw nsw i64 %i, 1
  %more = icmp slt i64 %i1, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}}
"""
    module = jit.compile_ir(text)
    fn = module.cfunc("apply", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)

    def run(x):
        x = np.ascontiguousarray(x, np.float64)
        y = np.empty_like(x)
        fn(x.ctypes.data, y.ctypes.data, x.size)
        return y
    run.module = module
    return run


def _sigmoid(x):
    t = np.exp(-np.abs(x))
    return np.where(x < 0, t / (1 + t), 1 / (1 + t))


_R = np.random.default_rng(0)
CASES = {
    "exp": (np.exp, np.concatenate([np.linspace(-745, 709.7, 100001), _R.uniform(-1, 1, 50000),
                                    _R.uniform(-745, 709, 50000)])),
    "log": (np.log, np.concatenate([np.exp(np.linspace(-700, 700, 100001)),
                                    _R.uniform(0.5, 2, 50000),
                                    np.array([5e-324, 1e-310, 2.2e-308, 1.0 + 2**-52])])),
    "tanh": (np.tanh, np.concatenate([np.linspace(-25, 25, 100001), _R.uniform(-1e-3, 1e-3, 50000),
                                      np.exp(np.linspace(-700, 3, 10000))])),
    "sigmoid": (_sigmoid, np.concatenate([np.linspace(-740, 40, 100001),
                                          _R.uniform(-5, 5, 50000)])),
    "sin": (np.sin, np.concatenate([np.linspace(-10, 10, 100001), _R.uniform(-1e6, 1e6, 50000),
                                    _R.uniform(-1e-9, 1e-9, 1000)])),
    "cos": (np.cos, np.concatenate([np.linspace(-10, 10, 100001), _R.uniform(-1e6, 1e6, 50000)])),
    "erf": (np.vectorize(math.erf, otypes=[np.float64]),
            np.concatenate([np.linspace(-7, 7, 100001), _R.uniform(-6, 6, 50000),
                            np.exp(np.linspace(-700, 3, 5001)), -np.exp(np.linspace(-700, 3, 501)),
                            np.nextafter([0.7, 1.25, 2.0, 4.0, 6.0], 0.0), [0.7, 1.25, 2.0, 4.0],
                            [5e-324, 1e-310, 27.0]])),
    "atan": (np.arctan, np.concatenate([np.linspace(-5, 5, 100001), _R.uniform(-1e3, 1e3, 50000),
                                        np.exp(np.linspace(-700, 700, 20001)),
                                        -np.exp(np.linspace(-700, 700, 2001)),
                                        np.nextafter([7 / 16, 11 / 16, 19 / 16, 39 / 16], 0.0),
                                        [7 / 16, 11 / 16, 19 / 16, 39 / 16]])),
    "asin": (np.arcsin, np.concatenate([np.linspace(-1, 1, 100001), _R.uniform(-1, 1, 50000),
                                        1 - np.exp(np.linspace(-36, 0, 20001)),
                                        np.exp(np.linspace(-700, 0, 2001))])),
    "acos": (np.arccos, np.concatenate([np.linspace(-1, 1, 100001), _R.uniform(-1, 1, 50000),
                                        1 - np.exp(np.linspace(-36, 0, 20001)),
                                        -1 + np.exp(np.linspace(-36, 0, 20001))])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_function_within_its_documented_ulps(name):
    ref, xs = CASES[name]
    with np.errstate(over="ignore", under="ignore"):
        want = ref(xs)
    got = _kernel(f"{name}64")(xs)
    nonzero = want != 0
    scale = np.abs(want[nonzero])
    if name in ("sin", "cos"):  # (near a zero of sin/cos: an absolute 2**-53 is the ulp)
        scale = np.maximum(scale, 1.0)
    err = np.abs(got[nonzero] - want[nonzero]) / np.spacing(scale)
    assert err.max() <= vecmath64.MAX_ULPS[name], (name, err.max(), xs[nonzero][err.argmax()])
    np.testing.assert_array_equal(got[~nonzero], want[~nonzero])


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_special_values(name):
    ref, _ = CASES[name]
    big = 1e300 if name not in ("sin", "cos") else 1e15  # (sin/cos: within their domain)
    xs = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, big, -big, 5e-324])
    with np.errstate(all="ignore"):
        want = ref(xs)
    kernel = _kernel(f"{name}64")
    got = kernel(xs)
    if name in ("sin", "cos"):  # beyond 2**50: inaccurate, but kept in [-1, 1]
        far = kernel(np.array([1e300, -1e300, 2.0 ** 60]))
        assert np.all(np.abs(far) <= 1.0)
    np.testing.assert_array_equal(np.signbit(got[:2]), np.signbit(want[:2]))
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=2e-16)  # (NaN equals NaN here)


def _pow_kernel(name: str = "pow64"):
    text = vecmath.module_ir([name]) + f"""
define void @apply(ptr noalias %x, ptr noalias %y, ptr noalias %z, i64 %n) {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr inbounds double, ptr %x, i64 %i
  %v = load double, ptr %px
  %py = getelementptr inbounds double, ptr %y, i64 %i
  %w = load double, ptr %py
  %r = call double @dg_{name}(double %v, double %w)
  %pz = getelementptr inbounds double, ptr %z, i64 %i
  store double %r, ptr %pz
  %i1 = add nuw nsw i64 %i, 1
  %more = icmp slt i64 %i1, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}}
"""
    module = jit.compile_ir(text)
    fn = module.cfunc("apply", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.c_int64)

    def run(x, y):
        x, y = (np.ascontiguousarray(v, np.float64) for v in (x, y))
        z = np.empty_like(x)
        fn(x.ctypes.data, y.ctypes.data, z.ctypes.data, x.size)
        return z
    run.module = module
    return run


def test_float64_pow_within_its_documented_ulps():
    """Bases near 1 with large exponents and results near the overflow and underflow
    thresholds need y·log x to better than a double: the double-double path."""
    r = np.random.default_rng(3)
    n = 100000
    x = np.concatenate([r.uniform(0, 10, n), np.exp(r.uniform(-700, 700, n)),
                        1 + r.uniform(-1e-6, 1e-6, n), r.uniform(0.5, 2, n),
                        -r.integers(1, 50, n).astype(float)])
    y = np.concatenate([r.uniform(-50, 50, n), r.uniform(-1, 1, n), r.uniform(-1e8, 1e8, n),
                        r.uniform(-1000, 1000, n), r.integers(-150, 150, n).astype(float)])
    with np.errstate(all="ignore"):
        want = np.power(x, y)
    got = _pow_kernel()(x, y)
    normal = np.isfinite(want) & (np.abs(want) >= 2.2250738585072014e-308)
    err = np.abs(got[normal] - want[normal]) / np.spacing(np.abs(want[normal]))
    assert err.max() <= vecmath64.MAX_ULPS["pow"], (err.max(), x[normal][err.argmax()],
                                                    y[normal][err.argmax()])
    sub = ~normal & np.isfinite(want)  # (subnormal results: within an ulp of their grid)
    assert np.all(np.abs(got[sub] - want[sub]) <= 5e-324 * 1.0)
    np.testing.assert_array_equal(got[~np.isfinite(want)], want[~np.isfinite(want)])


def test_float64_pow_special_values_as_c99():
    """x**±0 = 1 and 1**y = 1 (NaN included), (−1)**±inf = 1, a negative base to a
    non-integer power NaN, zeros and infinities by the limit with an odd power's sign."""
    sv = np.array([0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan, 3.0,
                   -3.0, 2.5, -2.5, 1e300, -1e300, 5e-324, -5e-324, 2.0 ** 53, -(2.0 ** 53)])
    xs, ys = (v.ravel() for v in np.meshgrid(sv, sv))
    with np.errstate(all="ignore"):
        want = np.power(xs, ys)
    got = _pow_kernel()(xs, ys)
    exact = ~np.isfinite(want) | (want == 0) | (np.abs(want) == 1)
    np.testing.assert_array_equal(got[exact], want[exact])
    num = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(want[num]))
    np.testing.assert_allclose(got[~exact], want[~exact], rtol=3e-16)
    cubes = _pow_kernel()(np.arange(-20.0, 21.0), np.full(41, 3.0))
    np.testing.assert_array_equal(cubes, np.arange(-20.0, 21.0) ** 3)  # exact results exact


def test_float64_atan2_within_its_documented_ulps():
    r = np.random.default_rng(4)
    n = 200000
    y = r.standard_normal(n) * np.exp(r.uniform(-30, 30, n))
    x = r.standard_normal(n) * np.exp(r.uniform(-30, 30, n))
    want = np.arctan2(y, x)
    got = _pow_kernel("atan2_64")(y, x)
    err = np.abs(got - want) / np.spacing(np.abs(want))
    assert err.max() <= vecmath64.MAX_ULPS["atan2"], (err.max(), y[err.argmax()],
                                                      x[err.argmax()])


def test_float64_atan2_special_values_as_c99():
    """Signed zeros pick 0 or π with y's sign; two infinities ±π/4 or ±3π/4; NaN wins."""
    sv = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e300])
    ys, xs = (v.ravel() for v in np.meshgrid(sv, sv))
    want = np.arctan2(ys, xs)
    got = _pow_kernel("atan2_64")(ys, xs)
    np.testing.assert_allclose(got, want, rtol=3e-16, atol=0)  # (NaN equals NaN here)
    num = ~np.isnan(want)
    np.testing.assert_array_equal(np.signbit(got[num]), np.signbit(want[num]))


def test_float64_transcendentals_compile_into_one_driver_call():
    fn = lambda x: (x.tanh() + x.sigmoid() * (x * 0.1).exp() - (x.abs() + 1.0).log()  # noqa: E731
                    + x.sin() * x.cos() + x.erf() + x.abs() ** x + x.atan()
                    + dg.atan2(x, x + 1.0) + (x * 0.3).tanh().asin()
                    + (x * 0.3).tanh().acos()).sum(1)
    f = compiler.compile(fn, backend="llvm")
    x = dg.tensor(np.random.default_rng(1).standard_normal((33, 257)))
    for _ in range(2):
        np.testing.assert_allclose(f(x).numpy(), fn(x).numpy(), rtol=1e-13, atol=1e-13)
    assert isinstance(f.variants[0].plan, driver.DriverPlan), f.variants[0].plan.describe()


def test_a_float64_lstm_training_step_runs_natively_and_equals_eager():
    dg.manual_seed(0)
    model = nn.LSTM(3, 16, batch_first=True).double()
    head = nn.Linear(16, 1).double()
    twin, twin_head = copy.deepcopy(model), copy.deepcopy(head)

    def make(m, h):
        opt = optim.Adam(list(m.parameters()) + list(h.parameters()), lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            out, _ = m(x)
            loss = F.mse_loss(h(out[:, -1]), y)
            loss.backward()
            opt.step()
            return loss
        return step
    comp, eager = compiler.compile(make(model, head)), make(twin, twin_head)
    r = np.random.default_rng(2)
    for i in range(5):
        x = dg.tensor(r.standard_normal((8, 6, 3)))
        y = dg.tensor(r.standard_normal((8, 1)))
        a, b = float(comp(x, y)), float(eager(x, y))
        assert abs(a - b) <= 1e-10 * max(1.0, abs(b)), (i, a, b)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-9,
                                   atol=1e-12)
    plan = comp.variants[0].plan
    assert isinstance(plan, driver.DriverPlan), plan.describe()
