"""float64 vector math in LLVM IR (compiler/backends/llvm/vecmath64.py): accuracy against
numpy in ulps of the result on dense grids and random inputs, special values exactly, and
float64 programs — an LSTM step among them — compiled into one native driver call."""

from __future__ import annotations

import copy
import ctypes

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


def test_float64_transcendentals_compile_into_one_driver_call():
    fn = lambda x: (x.tanh() + x.sigmoid() * (x * 0.1).exp() - (x.abs() + 1.0).log()  # noqa: E731
                    + x.sin() * x.cos()).sum(1)
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
