"""Normal numbers from pairs of uniforms by Box–Muller, z = √(−2·log u)·cos 2πv, with log
and cos of our own: IEEE basic operations only, so eager and compiled code get the same bits.

Note (why not numpy's log and cos): ``np.log`` and ``np.cos`` dispatch to CPU-specific SIMD
code (AVX-512, AVX2, or the C library), and no kernel of ours can promise their bits on
every CPU. Here every step is ``+ − × ÷``, ``sqrt``, ``rint``, an exact scaling or a
bit-level split of a double, each rounded on its own (no fma: numpy has none), in a fixed
order; the LLVM backend (``compiler/backends/llvm/randomgen.py``) writes the very same
operations from the constants :data:`BOX_MULLER` holds, so compiled normals equal eager's
bit for bit on any machine.

The arguments are narrow — u in [2⁻⁵³, 1], v in [0, 1), both multiples of 2⁻⁵³ — which
keeps the reductions simple and exact:

- log u (:func:`log_unit`): u = 2ᵏ·m with m in [√½, √2) from u's bits; with f = m − 1
  (exact) and s = f/(2 + f), log m = 2·atanh s = f − (f²/2 − s·(f²/2 + R)), R = z·P(z),
  z = s², P the series 2/3 + 2z/5 + … + 2z⁹/21 (|s| ≤ 0.1716: the first omitted term is
  below 2⁻⁶⁰ of the result); log u = k·ln2_hi − ((f²/2 − (s·(f²/2 + R) + k·ln2_lo)) − f)
  (fdlibm's form; ln 2 as a 32-bit head, so k·ln2_hi is exact, and its tail).
- cos 2πv (:func:`cos_2pi`): q = rint(4v), r = 4v − q in [−½, ½] (both exact), so 2πv =
  (π/2)·(q + r): cos 2πv is ±cos(πr/2) or ±sin(πr/2) by q mod 4, each a Taylor series in
  r (to r¹⁷ and r¹⁶: the first omitted terms are below 2⁻⁵⁸ of the result) whose leading
  term is formed exactly — r·π/2 from Veltkamp's split of r and a 27-bit head of π/2, and
  1 − (π²/8)·r² from r's head on a 2⁻¹³ grid, its square and a 28-bit head of π²/8 — so
  only the small rest is rounded before the last addition. Being exact, the reduction keeps
  the relative accuracy near the zeros of cos, where ``np.cos(2π·v)`` loses it to the
  rounding of 2π·v (5 ulp off where |cos| > 0.5, 46 where |cos| > 0.1, 360 where |cos| > 0.01).

Errors, in ulps of the exact value, measured on 2²⁶ random arguments (half the u
log-uniform over its 53 binades) against 64-bit-significand references: log_unit 0.88,
cos_2pi 0.80, the normal 2.47 (it multiplies two rounded factors, one a rounded square
root). tests/test_boxmuller.py checks the bounds in :data:`MAX_ULPS` against
mpmath, and the ends (u = 2⁻⁵³ and 1, v = 0 and 1 − 2⁻⁵³).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

from ..special import horner

__all__ = ["BoxMullerTables", "BOX_MULLER", "MAX_ULPS", "log_unit", "cos_2pi", "box_muller"]

MAX_ULPS = {"log_unit": 1.0, "cos_2pi": 1.0, "box_muller": 2.5}

_PI = Decimal("3.14159265358979323846264338327950288419716939937510582097494459230781640628")


def _head(v: Decimal, bits: int) -> float:
    """``v`` rounded to a double, its significand then cut to ``bits`` bits."""
    m, e = math.frexp(float(v))
    return math.ldexp(math.trunc(math.ldexp(m, bits)), e - bits)


@dataclass(frozen=True)
class BoxMullerTables:
    """The constants of :func:`log_unit` and :func:`cos_2pi`, for another implementation of
    the same operations to read — the LLVM backend's normal kernel
    (``compiler/backends/llvm/randomgen.py``). Polynomials run from the highest degree down.
    In cos_2pi, r is split twice, exactly: r = rh + rt by Veltkamp's split (26 significant
    bits each) for sin, r = h + t with h = r rounded to a multiple of 2**-split (13 bits at
    most) for cos.

    >>> BOX_MULLER.log_p[-1]   # 2/3: log m = f − (f²/2 − s·(f²/2 + z·P(z)))
    0.6666666666666666
    """

    sqrt2: float  # m >= sqrt2 is halved (k + 1): m in [√½, √2)
    ln2_hi: float  # ln 2 = ln2_hi + ln2_lo, ln2_hi with 32 significant bits (k·ln2_hi exact)
    ln2_lo: float
    log_p: tuple  # P(z) = 2/3 + 2z/5 + … + 2z⁹/21
    splitter: float  # 2**27 + 1: rh = c − (c − r), c = r·splitter
    sin_hi: float  # π/2 = sin_hi + sin_lo, sin_hi with 27 significant bits (rh·sin_hi exact)
    sin_lo: float
    sin_s: tuple  # sin(πr/2) = rh·sin_hi + (rt·sin_hi + (r·sin_lo + r·z·S(z))), z = r²
    split: int
    cos_hi: float  # −π²/8 = cos_hi + cos_lo, cos_hi with 28 significant bits (1 + h²·cos_hi
    cos_lo: float  # exact)
    cos_c: tuple  # cos(πr/2) = (1 + h²·cos_hi) + (t·(h + r)·cos_hi + (z·cos_lo + z²·C(z)))


def _tables() -> BoxMullerTables:
    with localcontext() as ctx:
        ctx.prec = 60
        ln2 = Decimal(2).ln()
        half_pi = _PI / 2

        def taylor(n: int) -> Decimal:  # (−1)^⌊n/2⌋ (π/2)ⁿ/n!, the coefficient of rⁿ
            return (-1) ** (n // 2) * half_pi ** n / math.factorial(n)

        def hi_lo(v: Decimal, bits: int) -> tuple[float, float]:
            hi = _head(v, bits)
            return hi, float(v - Decimal(hi))
        return BoxMullerTables(
            float(Decimal(2).sqrt()), *hi_lo(ln2, 32),
            tuple(float(Fraction(2, 2 * k + 1)) for k in range(10, 0, -1)),
            2.0 ** 27 + 1, *hi_lo(half_pi, 27), tuple(float(taylor(n)) for n in range(17, 2, -2)),
            13, *hi_lo(taylor(2), 28), tuple(float(taylor(n)) for n in range(16, 3, -2)))


BOX_MULLER = _tables()

_MANTISSA = np.int64((1 << 52) - 1)
_ONE = np.int64(1023 << 52)  # the bits of 1.0
_SLICE = 1 << 15


def log_unit(u: np.ndarray) -> np.ndarray:
    """log u of a float64 array, u in [2⁻⁵³, 1] (any normal positive double, in fact).

    >>> log_unit(np.array([1.0, 0.5]))
    array([ 0.        , -0.69314718])
    """
    t = BOX_MULLER
    bits = u.view(np.int64)
    k = bits >> 52
    k -= 1023
    m = ((bits & _MANTISSA) | _ONE).view(np.float64)  # u = 2**k·m, m in [1, 2)
    big = m >= t.sqrt2
    np.multiply(m, 0.5, out=m, where=big)  # m in [√½, √2)
    k += big
    f = m - 1.0
    s = 2.0 + f
    np.divide(f, s, out=s)
    z = s * s
    corr = horner(z, t.log_p)
    corr *= z  # R
    hfsq = f * 0.5
    hfsq *= f
    corr += hfsq
    corr *= s
    kf = k.astype(np.float64)
    corr += kf * t.ln2_lo
    np.subtract(hfsq, corr, out=corr)
    corr -= f
    kf *= t.ln2_hi
    kf -= corr
    return kf


def cos_2pi(v: np.ndarray) -> np.ndarray:
    """cos 2πv of a float64 array, v in [0, 1) (any |v| < 2⁶⁰, in fact).

    >>> cos_2pi(np.array([0.0, 0.5]))
    array([ 1., -1.])
    """
    t = BOX_MULLER
    r = v * 4.0
    q = np.rint(r)
    r -= q  # in [−½, ½], exact
    z = r * r
    sin = horner(z, t.sin_s)
    sin *= r * z
    sin += r * t.sin_lo
    c = r * t.splitter
    rh = c - r
    np.subtract(c, rh, out=rh)
    sin += (r - rh) * t.sin_hi
    sin += rh * t.sin_hi  # sin(πr/2), the last two products exact
    h = r * 2.0 ** t.split
    np.rint(h, out=h)
    h *= 2.0 ** -t.split
    tail = r - h  # (exact)
    cos = horner(z, t.cos_c)
    cos *= z
    cos *= z
    cos += z * t.cos_lo
    hr = h + r
    hr *= tail
    hr *= t.cos_hi
    cos += hr
    lead = h * h
    lead *= t.cos_hi
    lead += 1.0  # (exact)
    cos += lead  # cos(πr/2)
    quadrant = q.astype(np.int64)
    quadrant += 1  # 2πv = (π/2)·quadrant + (πr/2) − π/2: cos where odd, negated in 1, 2 mod 4
    out = np.where(quadrant & 1, cos, sin)
    np.negative(out, out=out, where=(quadrant & 2).astype(bool))
    return out


def box_muller(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """√(−2·log u)·cos 2πv of 1-d float64 arrays, u in [2⁻⁵³, 1] and v in [0, 1): normal
    numbers for uniform u and v. Computed in slices of ``_SLICE`` elements, whose temporaries
    stay in the cache: a million numbers take about half the time whole arrays would.

    >>> box_muller(np.array([1.0, 0.25]), np.array([0.5, 0.0]))   # (√(2·ln 4) = 1.665…)
    array([0.        , 1.66510922])
    """
    out = np.empty(u.shape)
    for i in range(0, u.size, _SLICE):
        z = log_unit(u[i:i + _SLICE])
        z *= -2.0
        np.sqrt(z, out=z)
        z *= cos_2pi(v[i:i + _SLICE])
        out[i:i + _SLICE] = z
    return out
