"""Which elementwise primitive lowers natively for which dtype (issue 15: every primitive and
dtype native, or the exception listed with its reason). Each program applies one public
operation to a tensor of one dtype; compiled for the LLVM backend it must run as one native
driver call and equal eager — unless the pair is in ``NOT_NATIVE``, which must then still
run in numpy (so the table is kept true in both directions). Also: log1p's accuracy (its
lowering is log(u)·x/(u − 1) on the vecmath logs), bool comparisons and int64 sign."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import driver
from dyngrad.ops import REGISTRY

DTYPES = {"float32": dg.float32, "float64": dg.float64, "int64": dg.int64, "bool": dg.bool}

NOT_NATIVE = {
    ("erf", "float64"): "no float64 erf in vecmath64 yet",
    ("pow", "float32"): "pow by a tensor exponent: exp(y·log x) would not give numpy's values",
    ("pow", "float64"): "pow by a tensor exponent: exp(y·log x) would not give numpy's values",
    ("pow", "int64"): "int64 pow (repeated squaring with a data-dependent trip count)",
}
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow", "eq", "ne", "lt", "le",
          "gt", "ge")


def _input(dt: str):
    r = np.random.default_rng(0)
    if dt == "bool":
        return dg.tensor(r.random((9, 7)) > 0.5)
    if dt == "int64":
        return dg.tensor(r.integers(-5, 6, (9, 7)))
    return dg.tensor((r.random((9, 7)) + 0.5).astype(dt))


def _program(name: str, dt: str):
    if name == "cast":
        return lambda a: a.to(dg.float32 if dt != "float32" else dg.int64)
    if name == "where":
        return lambda a: dg.where(a > 0 if dt != "bool" else a, a, a)
    fn = getattr(dg, name)
    return (lambda a: fn(a, a)) if name in BINARY else fn


CASES = [(p.name, dt) for p in sorted(REGISTRY.values(), key=lambda p: p.name)
         if p.kind == "elementwise" for dt in DTYPES]


@pytest.mark.parametrize("name, dt", CASES)
def test_each_elementwise_primitive_and_dtype_lowers_or_is_listed(name, dt):
    fn, x = _program(name, dt), _input(dt)
    try:
        want = fn(x)
    except (RuntimeError, TypeError):
        pytest.skip(f"eager {name} rejects {dt} (as PyTorch)")
    f = compiler.compile(fn, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            got = f(x)
    np.testing.assert_allclose(got.numpy().astype(np.float64),
                               want.numpy().astype(np.float64), rtol=1e-6, atol=1e-7)
    plan = f.variants[0].plan
    native = isinstance(plan, driver.DriverPlan)
    assert native == ((name, dt) not in NOT_NATIVE), (name, dt, plan.describe())


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
