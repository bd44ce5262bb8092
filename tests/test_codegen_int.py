"""Native int64 and bool code (issue 15: no hybrid plans for argmax, integer reductions,
float -> int64 casts and bool arithmetic): each program compiled for the LLVM backend runs
as one driver call and gives eager's values exactly, on shapes across the reduction's chunk
sizes and the thread threshold."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import driver

SHAPES = [(5, 7), (37, 300), (3, 4097)]

PROGRAMS = {
    "argmax_rows": lambda x: x.argmax(1),
    "argmin_cols_keepdim": lambda x: x.argmin(0, keepdim=True),
    "max_values_and_indices": lambda x: x.max(1),
    "argmax_all": lambda x: x.argmax(),
    "count_positive": lambda x: (x > 0).long().sum(1),
    "count_all": lambda x: (x > 0.5).long().sum(),
    "int_max_of_scaled": lambda x: (x * 10).long().amax(0),
    "int_sum_of_truncated": lambda x: (x * 100).long().sum(1),
    "bool_and_or": lambda x: ((x > 0) * (x < 1)) + ((x < -1) * (x > -2)),
    "bool_max_min": lambda x: dg.maximum(x > 0, x < -1).long() - dg.minimum(x > 0, x < 1).long(),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_int64_and_bool_programs_run_natively_and_exactly(name, shape):
    fn = PROGRAMS[name]
    f = compiler.compile(fn, backend="llvm")
    r = np.random.default_rng(hash(name) % 2**32)
    for _ in range(3):
        x = dg.tensor(r.standard_normal(shape).astype(np.float32))
        got, want = f(x), fn(x)
        for g, w in zip(got if isinstance(got, tuple) else (got,),
                        want if isinstance(want, tuple) else (want,)):
            assert g.dtype == w.dtype
            np.testing.assert_array_equal(g.numpy(), w.numpy())
    plan = f.variants[0].plan
    assert isinstance(plan, driver.DriverPlan), plan.describe()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_to_int64_truncates_and_gives_numpys_value_out_of_range(dtype):
    """Toward zero; NaN, ±inf and numbers out of int64's range give INT64_MIN, as numpy's
    astype does on x86-64 (eager also warns, numpy's RuntimeWarning; compiled code does not,
    as PyTorch does not)."""
    values = np.array([0.0, -0.0, 0.9, -0.9, 2.5, -2.5, 1e10, -1e10, 2.0 ** 62, -2.0 ** 63,
                       2.0 ** 63, 1e30, -1e30, np.inf, -np.inf, np.nan, 7.0, -7.99],
                      dtype=dtype)
    f = compiler.compile(lambda x: x.long(), backend="llvm")
    x = dg.tensor(values)
    with warnings.catch_warnings():  # (the first call is traced: eager's cast warns)
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            got = f(x).numpy()
    with np.errstate(invalid="ignore"):
        want = values.astype(np.int64)
    np.testing.assert_array_equal(got, want)
    assert isinstance(f.variants[0].plan, driver.DriverPlan)


@pytest.mark.parametrize("shape", [(300000,), (2, 200000)])
def test_reductions_above_the_thread_threshold_with_scalars_before_the_loop(shape):
    """A whole-tensor reduction large enough for the threaded (blocked) form, whose loop
    reads a scalar computed before it (argmax: the maximum; x - 2·max(x)): one thread, right
    (the blocks function would not see the scalar)."""
    x = dg.tensor(np.random.default_rng(2).standard_normal(shape).astype(np.float32))
    for fn, exact in ((lambda x: x.argmax(), True), (lambda x: x.argmin(), True),
                      (lambda x: (x - x.amax() * 2).sum(), False)):
        f = compiler.compile(fn, backend="llvm")
        for _ in range(2):
            got = f(x).numpy()
        want = fn(x).numpy()
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5)
        assert isinstance(f.variants[0].plan, driver.DriverPlan), f.variants[0].plan.describe()


def test_min_and_argmin_of_integers_at_their_extremes():
    """amin/argmin flip the order without overflow (c - x): uint8 zeros, int8/int64 minima."""
    cases = [([0, 1, 2], dg.uint8, 0, 0), ([7, 255, 0, 3], dg.uint8, 0, 2),
             ([-128, 5, 127], dg.int8, -128, 0), ([-2**63, 0, 2**63 - 1], dg.int64, -2**63, 0),
             ([2**63 - 1, 5], dg.int64, 5, 1), ([5, -3, -3], dg.int32, -3, 1)]
    for values, dtype, low, at in cases:
        t = dg.tensor(values, dtype=dtype)
        assert int(t.amin()) == low and int(t.min()) == low and int(t.argmin()) == at, values
    p = dg.randperm(5, dtype=dg.float32, requires_grad=True)
    assert p.dtype == dg.float32 and p.requires_grad
    np.testing.assert_array_equal(np.sort(p.detach().numpy()), np.arange(5.0))
