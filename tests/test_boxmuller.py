"""Eager's normal numbers (dyngrad/ops/boxmuller.py): Box–Muller with a log and a cos of IEEE
basic operations, checked against numpy's log and cos, against mpmath where installed, at the
ends of their ranges, and as a distribution. (That compiled code draws the same bits:
tests/test_llvm_random.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.ops.boxmuller import MAX_ULPS, box_muller, cos_2pi, log_unit

TINY = 2.0 ** -53  # the smallest u = 1 − (a 53-bit uniform)


def ulp_of(ref) -> np.ndarray:
    """The ulp of the binade holding each float64 reference (none is subnormal here)."""
    return np.ldexp(1.0, np.frexp(np.abs(np.asarray(ref, np.float64)))[1] - 53)


def unit_arguments(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """u in [2⁻⁵³, 1] and v in [0, 1) as the generator makes them (multiples of 2⁻⁵³):
    half the u uniform, half log-uniform over its 53 binades; v uniform."""
    r = np.random.default_rng(seed)
    uniform = r.integers(1, 2 ** 53, n, endpoint=True).astype(np.float64) * TINY
    binades = np.ldexp(r.integers(2 ** 52, 2 ** 53, n).astype(np.float64) * TINY,
                       -r.integers(0, 53, n))
    v = r.integers(0, 2 ** 53, 2 * n).astype(np.float64) * TINY
    return np.concatenate([uniform, binades]), v


def test_log_unit_is_within_an_ulp_of_numpys_log_over_every_binade():
    u, _ = unit_arguments(1 << 20)
    got, want = log_unit(u), np.log(u)
    err = np.abs(got - want) / ulp_of(want)
    assert err.max() <= 1.0, (err.max(), u[err.argmax()])
    assert np.mean(got == want) > 0.9  # (measured: 96% the same bits)


def test_cos_2pi_is_within_a_few_units_of_2_53_of_numpys_cos():
    """numpy's cos(2π·v) is off by up to 2π·v·2⁻⁵³ (the rounding of its argument), so
    they are compared absolutely: measured 6·2⁻⁵³ at most."""
    _, v = unit_arguments(1 << 20)
    diff = np.abs(cos_2pi(v) - np.cos(2.0 * np.pi * v))
    assert diff.max() <= 8 * TINY, diff.max() / TINY


def test_within_their_ulp_bounds_of_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 100
    u, v = unit_arguments(1500, seed=1)
    near_zeros = np.array([0.25, 0.75]) + np.arange(-3, 4)[:, None] * TINY  # cos → 0
    v = np.concatenate([v, near_zeros.ravel(), [0.0, 0.5, 1 - TINY]])
    u = np.concatenate([u, [TINY, 1.0, 1 - TINY, 0.5]])
    lu = [mpmath.log(mpmath.mpf(x)) for x in u.tolist()]
    cv = [mpmath.mpf(0) if 4 * x % 2 == 1 else mpmath.cospi(2 * mpmath.mpf(x))
          for x in v.tolist()]
    n = min(len(u), len(v))
    zs = [mpmath.sqrt(-2 * lu[i]) * cv[i] for i in range(n)]
    for name, got, exact in (("log_unit", log_unit(u), lu), ("cos_2pi", cos_2pi(v), cv),
                             ("box_muller", box_muller(u[:n], v[:n]), zs)):
        ref = np.array([float(x) for x in exact])
        err = [0.0 if x == 0 else float(abs(mpmath.mpf(g) - x)) / ulp_of(float(x))
               for g, x in zip(got.tolist(), exact)]
        assert np.all(got[ref == 0] == 0), name
        assert max(err) <= MAX_ULPS[name], (name, max(err))


def test_the_ends_of_the_ranges():
    assert log_unit(np.array([1.0]))[0] == 0.0
    assert log_unit(np.array([TINY]))[0] == math.log(TINY)  # (−36.7368005696771)
    assert log_unit(np.array([0.5]))[0] == -math.log(2)
    assert cos_2pi(np.array([0.0]))[0] == 1.0 and cos_2pi(np.array([0.5]))[0] == -1.0
    assert cos_2pi(np.array([1 - TINY]))[0] == 1.0  # (cos of 2π·2⁻⁵³)
    assert np.all(cos_2pi(np.array([0.25, 0.75])) == 0.0)
    # the largest normal Box–Muller makes: √(2·53·ln 2)
    assert box_muller(np.array([TINY]), np.array([0.0]))[0] == 8.571674348652905
    assert box_muller(np.array([1.0]), np.array([0.3]))[0] == 0.0


def test_sliced_and_whole_arrays_give_the_same_bits():
    u, v = unit_arguments(50_000, seed=2)
    whole = np.sqrt(log_unit(u) * -2.0) * cos_2pi(v[:len(u)])
    assert np.array_equal(box_muller(u, v[:len(u)]), whole)  # (slices of 2**15)


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
def test_randn_is_standard_normal(dtype):
    """Moments and the Kolmogorov–Smirnov distance of 400,000 draws (its 0.1% critical
    value is 1.95/√n)."""
    dg.manual_seed(5)
    z = np.sort(dg.randn(400_000, dtype=dtype).numpy().astype(np.float64))
    n = len(z)
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    cdf = 0.5 * (1 + np.array([math.erf(x / math.sqrt(2)) for x in z[::40].tolist()]))
    ks = np.abs(cdf - (np.arange(0, n, 40) + 0.5) / n).max()  # (every 40th order statistic)
    assert ks < 1.95 / math.sqrt(n), ks
    assert max(-z[0], z[-1]) <= 8.571674348652905  # (never beyond √(2·53·ln 2))
