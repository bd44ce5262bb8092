"""Special functions numpy lacks, accurate to float64: ``erf`` and ``erfc``.

Both are vectorised: the elements are split by range with index arrays, and each range gets
a fixed sequence of whole-array numpy operations (Horner steps; one ``exp`` and one ``expm1``
beyond |x| = 1); nothing runs per element in Python (a large array goes through in blocks
of 64K elements: see the Note (blocks)). Everything is computed in float64 on
``a = |x|``; ``erf`` puts the sign back with ``copysign``, so ``erf(-x) == -erf(x)`` exactly
and ``erf(-0.0) == -0.0``.

The ranges (each polynomial is a minimax fit derived with mpmath by ``_derive_tables``):

- ``a < 0.7``: ``erf(a) = a + a·P(a²)`` with P of degree 10 (P(0) = 2/√π − 1), so the
  leading term is exact. ``erfc(x) = (1 − x) − x·P(x²)``, for either sign of x, with
  ``1 − x`` kept as its rounded value plus the exact error (Fast2Sum).
- ``0.7 ≤ a < 1.25``: ``erf(a) = K + t·Q(t)``, ``t = a − c`` (exact), Q of degree 13. The
  centre c is chosen so that ``K = erf(c)`` is within 1e-4 ulp of a double: the large
  constant carries no rounding error. erfc (for 0.7 ≤ x < 1 and −1.25 < x ≤ −0.7) takes
  ``erf(a) = hi + lo`` in double-double, with ``K + c₁·t`` exact (Dekker's product; numpy
  has no fma), then ``erfc(x) = 1 ∓ (hi + lo)`` with one rounding.
- beyond: ``erfc(a) = exp(−a²)·erfcx(a)``, where erfcx(a) = exp(a²)·erfc(a) is a polynomial
  in ``a − c`` on [1, 2) (degree 16) and [2, 4) (degree 18), and ``g(1/a² − c)/a`` on
  [4, 27.5] (g of degree 14). exp(−a²) is ``exp(−h²)·(1 + expm1(−(a − h)(a + h)))`` with h =
  a rounded to the 2⁻¹² grid, so h² and the argument of ``exp`` are exact; that argument is
  also shifted by 64·ln 2 and the result scaled by 2⁻⁶⁴ at the very end, so that erfc's
  subnormal results (a > 26.55) are rounded only once. ``erf = 1 − erfc`` (exactly 1.0 from
  a ≈ 5.92); ``erfc(−a) = 2 − erfc(a)``. For ``erfc`` the leading terms of erfcx and the
  final product are carried in double-double; ``erf`` does without (erfc ≤ 0.08 there, which
  scales its error down).

Maximum error against mpmath (30 digits), in ulp of the exact value, measured on 5.25
million random points (uniform in each range below, log-uniform for the tiny ones) plus
dense grids around every range boundary; tests/test_special.py re-checks a sample:

- ``erf``: 0.82 ulp overall. Subnormal x: 0.55; [2⁻¹⁰²², 1e-8): 0.81 (a·P(a²) is subnormal
  below about 1.7e-307); [1e-8, 0.7): 0.70; [0.7, 1.25): 0.81; [1.25, 2): 0.67; [2, 6): 0.51;
  exactly ±1 beyond.
- ``erfc``: 1.61 ulp overall. x < 0: 0.65; [0, 0.5): 0.76; [0.5, 0.7): 1.04; [0.7, 1): 0.75;
  [1, 4): 1.55; [4, 26.55]: 1.61; subnormal results (26.55, 27.23): 1.24; 0.0 beyond.

float32 (or any other floating) input gives that dtype back, computed in float64; integer
and bool input gives float64. NaN → NaN; erf(±inf) = ±1, erfc(+inf) = 0, erfc(−inf) = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["erf", "erfc", "ErfTables", "ERF_TABLES"]

# ----------------------------------------------------------------------------- tables
# Coefficients run from the highest degree down to the constant term. ``python -m
# dyngrad.special`` re-derives and prints them (``_derive_tables``, needs mpmath). Each
# comment gives the fit's own maximum relative error in units of 2⁻⁵³.

_A_END = 0.7  # erf(a) = a + a·P(a²) below this
_B_START = 1.0  # erfc(a) = exp(−a²)·erfcx(a) from here on
_D_END = 1.25  # erf(a) = K + t·Q(t) below this, 1 − erfc(a) from here on

# P(z) = erf(√z)/√z − 1 on [0, 0.7²], error 0.0016 (relative to 1 + P);
# _P_LO is what rounding P(0) to a double lost
_P = (
    1.184695471860228e-08,
    -1.603371140513904e-07,
    1.644062561348006e-06,
    -1.4924779742702978e-05,
    0.00012055310220480005,
    -0.0008548326640186578,
    0.0052239776214102205,
    -0.026866170644883343,
    0.11283791670954342,
    -0.3761263890318374,
    0.1283791670955126,
)
_P_LO = -1.2617922805750665e-17

# erf(c + t) on [0.7, 1.25], error 0.011
_D_C = 0.98175048828125
_D = (
    2.491510900019797e-05,
    1.1171871318284368e-05,
    -0.0002037980927034775,
    0.00012991141034702586,
    0.0012046980226213073,
    -0.002107152503874475,
    -0.004449115592033584,
    0.015828652622807877,
    0.002632786027857675,
    -0.06958202673558735,
    0.07551728833104965,
    0.1330879095153965,
    -0.4225405452200711,
    0.43039504463075245,
    0.8349862012879328,
)
_D_LO = 2.5473846332364212e-18

# erfcx(c + t) on [1.0, 2], error 0.011
_B1_C = 1.5153045654296875
_B1 = (
    1.3130982565459487e-08,
    -4.6324710055060715e-08,
    1.5625050044507288e-07,
    -5.598569048256492e-07,
    1.952224556529171e-06,
    -6.60638891452322e-06,
    2.1721359658982664e-05,
    -6.924784414417597e-05,
    0.00021353875903379595,
    -0.0006351917453883725,
    0.0018166639573005848,
    -0.004975970286139767,
    0.012990102365175855,
    -0.03212388713501404,
    0.07465767756536433,
    -0.1613149503616918,
    0.31909895832049945,
)
_B1_LO = 3.8184987399072703e-19

# erfcx(c + t) on [2, 4], error 0.062
_B2_C = 2.9878692626953125
_B2 = (
    1.6297605918181924e-12,
    -8.487637114826283e-12,
    3.352141058517134e-11,
    -1.5712482556184424e-10,
    7.483701651120518e-10,
    -3.440912245533916e-09,
    1.5510145064559413e-08,
    -6.868346143635831e-08,
    2.982828489231723e-07,
    -1.2690026411815727e-06,
    5.283026839451816e-06,
    -2.1495501123026264e-05,
    8.535785467006435e-05,
    -0.0003302723649860217,
    0.0012428842116531888,
    -0.004539256445486131,
    0.01604847323226635,
    -0.05475962455210855,
    0.17966307226824707,
)
_B2_LO = -2.330989992150656e-18

# x·erfcx(x), 1/x² = c + v, on x in [4, 28], error 0.01
_T_C = 0.03189659118652344
_T = (
    66426960.39091187,
    -8359286.998443765,
    906388.7000857738,
    -134455.92042173364,
    21331.593067514033,
    -3550.069447680098,
    638.2583803004289,
    -125.55893954870291,
    27.451706228627504,
    -6.818672161986057,
    1.9855038248505181,
    -0.711179807920629,
    0.3402188145028632,
    -0.25792090627519054,
    0.5555912567591298,
)

# exp(−a²) is evaluated as 2⁻⁶⁴·exp(64·ln 2 − a²). _LN2_HI is ln 2 rounded to
# the 2⁻³² grid, so 64·_LN2_HI − h² is exact for h ≤ 28 on the 2⁻¹² grid.
_LN2_HI = 0.6931471806019545
_EXP_SHIFT = 64 * _LN2_HI
_EXP_SHIFT_LO = -2.688585646515894e-09  # 64·(ln 2 − _LN2_HI)
_UNSHIFT = 2.0**-64
_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's split


@dataclass(frozen=True)
class ErfTables:
    """The constants of :func:`erf`'s algorithm (the tables above), for another
    implementation of the same algorithm to read — the LLVM backend's float64 erf
    (``compiler/backends/llvm/vecmath64.py``) — so both compute with one set of numbers.
    Polynomials run from the highest degree down, as above.

    >>> ERF_TABLES.small_end   # erf(a) = a + a·P(a²) below this
    0.7
    """

    small_end: float
    mid_end: float
    small: tuple
    small_lo: float
    mid_centre: float
    mid: tuple
    erfcx_centres: tuple  # erfcx(c + t) on [1, 2) and [2, 4)
    erfcx: tuple
    erfcx_bounds: tuple  # (2, 4): where the first and the second polynomial end
    tail_centre: float  # x·erfcx(x) on [4, 28] as g(1/x² − c)
    tail: tuple
    exp_shift: float  # exp(−a²) = 2⁻⁶⁴·exp(exp_shift − h²)·(1 + expm1(exp_shift_lo − …))
    exp_shift_lo: float
    unshift: float
    big_clamp: float  # erf(a) for a beyond this is erf(this): 1.0


ERF_TABLES = ErfTables(_A_END, _D_END, _P, _P_LO, _D_C, _D, (_B1_C, _B2_C), (_B1, _B2),
                       (2.0, 4.0), _T_C, _T, _EXP_SHIFT, _EXP_SHIFT_LO, _UNSHIFT, 6.0)


# ----------------------------------------------------------------------------- pieces
def horner(v: np.ndarray, coef: tuple) -> np.ndarray:
    """The polynomial (highest degree first) at ``v`` by Horner's rule, each product and sum
    rounded on its own — the order the LLVM kernels repeat (``vecmath64``, ``randomgen``)."""
    p = v * coef[0]
    p += coef[1]
    for c in coef[2:]:
        p *= v
        p += c
    return p


def _two_prod_err(a: np.ndarray, b, p: np.ndarray) -> np.ndarray:
    """a·b − p exactly, for p = fl(a·b) (Dekker)."""
    c = a * _SPLITTER
    ah = c - (c - a)
    al = a - ah
    c = b * _SPLITTER
    bh = c - (c - b)
    bl = b - bh
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _poly_dd(t: np.ndarray, coef: tuple) -> tuple:
    """c₀ + t·Q(t) as an unevaluated sum (hi, lo): the last addition is a Fast2Sum."""
    tq = horner(t, coef[:-1])
    tq *= t
    hi = coef[-1] + tq
    return hi, (coef[-1] - hi) + tq


def _poly_dd2(t: np.ndarray, coef: tuple, c1_lo: float) -> tuple:
    """c₀ + (c₁ + c1_lo)·t + t²·S(t) as (hi, lo) with |lo| ≤ ulp(hi)/2; c₁·t and the sum
    c₀ + c₁·t are exact, which leaves only the smaller rest rounded."""
    c0, c1 = coef[-1], coef[-2]
    r = horner(t, coef[:-2])
    r *= t
    r += c1_lo
    r *= t
    p = t * c1
    s = c0 + p
    r += ((c0 - s) + p) + _two_prod_err(t, c1, p)
    hi = s + r
    return hi, (s - hi) + r


def _erf_small(a: np.ndarray) -> np.ndarray:
    """erf(a) for 0 ≤ a < _A_END."""
    return a + (a * horner(a * a, _P) + a * _P_LO)


def _erfc_small(x: np.ndarray) -> np.ndarray:
    """erfc(x) for |x| < _A_END, either sign."""
    s = 1.0 - x
    e = (1.0 - s) - x  # 1 − x = s + e exactly
    return s + (e - x * horner(x * x, _P))


def _erf_mid(a: np.ndarray) -> np.ndarray:
    """t·Q(t) for _A_END ≤ a < _D_END; erf(a) = _D[-1] + t·Q(t)."""
    t = a - _D_C
    tq = horner(t, _D[:-1])
    tq *= t
    return tq


def _erfcx_tail(a: np.ndarray, precise: bool) -> tuple:
    """erfcx(a) for 4 ≤ a ≤ 28 as (hi, lo); lo is None unless ``precise``."""
    v = 1.0 / (a * a) - _T_C
    if not precise:
        g = horner(v, _T)
        g /= a
        return g, None
    num, num_lo = _poly_dd(v, _T)
    q = num / a
    qa = q * a
    rem = (num - qa) - _two_prod_err(q, a, qa)  # num − q·a, exactly
    return q, (rem + num_lo) / a


def _erfcx(a: np.ndarray, region: int, precise: bool) -> tuple:
    if region == 2:
        return _erfcx_tail(a, precise)
    c, coef, c1_lo = (_B1_C, _B1, _B1_LO) if region == 0 else (_B2_C, _B2, _B2_LO)
    if precise:
        return _poly_dd2(a - c, coef, c1_lo)
    return horner(a - c, coef), None


def _erfc_big(a: np.ndarray, precise: bool) -> np.ndarray:
    """erfc(a) for _B_START ≤ a ≤ 28 (NaN passes through). ``precise`` carries erfcx and
    the final product in double-double: wanted for erfc itself, not for 1 − erfc."""
    first = a < 2.0
    if first.all():
        g, g_lo = _erfcx(a, 0, precise)
    else:
        g = np.empty_like(a)
        g_lo = np.empty_like(a) if precise else None
        last = a >= 4.0
        for region, m in enumerate((first, ~(first | last), last)):  # NaN: the middle one
            idx = np.flatnonzero(m)
            if idx.size:
                hi, lo = _erfcx(a[idx], region, precise)
                g[idx] = hi
                if precise:
                    g_lo[idx] = lo
    h = np.round(a * 4096.0)
    h *= 1.0 / 4096.0
    e = np.exp(_EXP_SHIFT - h * h)  # exact argument
    m = np.expm1(_EXP_SHIFT_LO - (a - h) * (a + h))  # exp(−a²) = e·(1 + m)·2⁻⁶⁴
    if not precise:
        m *= g
        m += g
        m *= e
        m *= _UNSHIFT
        return m
    w = g * m + g_lo
    s = g + w  # erfcx·(1 + m) = s + s_lo
    s_lo = (g - s) + w
    p = e * s
    r = p + (_two_prod_err(e, s, p) + e * s_lo)
    r *= _UNSHIFT  # the one rounding of a subnormal result
    return r


# Note (blocks): a large array is evaluated in blocks of _BLOCK elements. Each element's
# result is the same fixed sequence of float64 operations whatever block it falls in, so
# blocking changes no bits; it changes the memory traffic: erf makes a few dozen float64
# temporaries, and on a whole 400K-element array each is a fresh 3 MB allocation that
# glibc's malloc maps from the kernel page by page and gives back when it is freed (half
# of erf's time went to page faults). A block's temporaries (512 KB) stay in malloc's heap
# and mostly in cache; smaller blocks would pay more per-call overhead (about 150 numpy
# calls per block) than they save. Measured on a 400K-element GELU input: 16 ms → 5 ms.
_BLOCK = 65536


def _blockwise(kernel, x) -> np.ndarray:
    """``kernel`` (a flat float64 array → its float64 results) over ``x``, block by block,
    as ``x``'s floating dtype (float64 for integer or bool ``x``)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    flat = x.reshape(-1)
    with np.errstate(all="ignore"):
        if flat.size <= _BLOCK:
            out = kernel(flat.astype(np.float64, copy=False))
            return out.reshape(x.shape).astype(dtype, copy=False)
        out = np.empty(flat.size, dtype)
        for i in range(0, flat.size, _BLOCK):  # (the store rounds as astype(dtype) does)
            out[i:i + _BLOCK] = kernel(flat[i:i + _BLOCK].astype(np.float64, copy=False))
    return out.reshape(x.shape)


# ----------------------------------------------------------------------------- public
# The ranges are picked out with index arrays (np.flatnonzero, a[idx], out[idx] = ...): on
# large mixed arrays that is several times faster than indexing with the boolean masks.


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function, within 1 ulp (float32 in → float32 out, computed in
    float64; integer or bool in → float64)."""
    return _blockwise(_erf_flat, x)


def _erf_flat(xd: np.ndarray) -> np.ndarray:
    a = np.abs(xd)
    small = a < _A_END
    if small.all():
        out = _erf_small(a)
    else:
        out = np.empty_like(a)
        big = a >= _D_END
        idx = np.flatnonzero(small)
        if idx.size:
            out[idx] = _erf_small(a[idx])
        idx = np.flatnonzero(big)
        if idx.size:
            out[idx] = 1.0 - _erfc_big(np.minimum(a[idx], 6.0), False)
        idx = np.flatnonzero(~(small | big))  # NaN lands here and stays NaN
        if idx.size:
            out[idx] = _D[-1] + _erf_mid(a[idx])
    np.copysign(out, xd, out=out)
    return out


def erfc(x: np.ndarray) -> np.ndarray:
    """Elementwise complementary error function 1 − erf(x), accurate relative to its own
    value (within 1.7 ulp) in the tail too, down to the subnormal range (float32 in →
    float32 out, computed in float64; integer or bool in → float64)."""
    return _blockwise(_erfc_flat, x)


def _erfc_flat(xd: np.ndarray) -> np.ndarray:
    a = np.abs(xd)
    small = a < _A_END
    if small.all():
        out = _erfc_small(xd)
    else:
        out = np.empty_like(a)
        idx = np.flatnonzero(small)
        if idx.size:
            out[idx] = _erfc_small(xd[idx])
        # x < 0: erfc(x) = 1 + erf(a) up to _D_END, 2 − erfc(a) beyond
        big = (xd >= _B_START) | (xd <= -_D_END)
        idx = np.flatnonzero(~(small | big))  # NaN lands here and stays NaN
        if idx.size:
            xs = xd[idx]
            sgn = np.copysign(1.0, xs)
            hi, lo = _poly_dd2(np.abs(xs) - _D_C, _D, _D_LO)  # erf(|x|) = hi + lo
            hi *= sgn
            u = 1.0 - hi  # exact for x > 0
            out[idx] = u + (((1.0 - u) - hi) - sgn * lo)
        idx = np.flatnonzero(big)
        if idx.size:
            xs = xd[idx]
            sgn = np.copysign(1.0, xs)
            e = _erfc_big(np.minimum(np.abs(xs), 27.5), True)  # 0.0 from 27.23
            e *= sgn
            e += 1.0 - sgn  # e or 2 − e, rounded once
            out[idx] = e
    return out


# ----------------------------------------------------------------------------- derivation
def _horner_asc(coef: list, x):
    """Σ coef[j]·xʲ (lowest power first), by Horner's rule."""
    out = 0 * x
    for c in reversed(coef):
        out = out * x + c
    return out


def _derive_tables() -> list:
    """Re-derive the tables above with mpmath: ``python -m dyngrad.special`` prints them.

    Each polynomial minimises the maximum relative error of the function it stands for on
    its interval (Remez exchange at 50 digits on a 2000-point Chebyshev grid). Where it is
    expanded about a centre c, c is the point of a 2⁻¹⁶ grid (2⁻²⁴ for _T) near the middle of
    the interval at which the function is nearest to a double, so that the constant term is
    exact to about 1e-4 ulp. Returns (name, value, comment) triples in source order.
    """
    import mpmath  # (a development-time dependency only: the tables below are checked in)
    from mpmath import mpf

    mpmath.mp.dps = 50

    def remez(f, lo, hi, n, grid=2000):
        lo, hi = mpf(lo), mpf(hi)
        xs = [(lo + hi) / 2 - (hi - lo) / 2 * mpmath.cos(mpmath.pi * k / (grid - 1))
              for k in range(grid)]
        fx = [f(v) for v in xs]
        ref = [round(k * (grid - 1) / (n + 1)) for k in range(n + 2)]
        best = None
        for _ in range(40):
            rows = [[xs[k] ** j for j in range(n + 1)] + [(-1) ** i * abs(fx[k])]
                    for i, k in enumerate(ref)]
            sol = mpmath.lu_solve(mpmath.matrix(rows), mpmath.matrix([fx[k] for k in ref]))
            coef = [sol[j] for j in range(n + 1)]
            err = [_horner_asc(coef, xs[k]) / fx[k] - 1 for k in range(grid)]
            peak = max(abs(e) for e in err)
            if best is None or peak < best[1]:
                best = (coef, peak)
            if peak <= abs(sol[n + 1]) * (1 + mpf("1e-3")):
                break
            ref = []  # the largest error of each run of one sign, n + 2 of them
            for k in range(grid):
                if ref and (err[k] > 0) == (err[ref[-1]] > 0):
                    if abs(err[k]) > abs(err[ref[-1]]):
                        ref[-1] = k
                else:
                    ref.append(k)
            while len(ref) > n + 2:
                ref.pop(0 if abs(err[ref[0]]) < abs(err[ref[-1]]) else -1)
            if len(ref) < n + 2:
                break
        return best[0], float(best[1] * 2**53)

    def centre(f, nominal, step):
        def dist(c):
            v = f(c)
            return abs(v - mpf(float(v))) / math.ulp(float(v))
        return min((mpf(nominal) + k * mpf(step) for k in range(-1500, 1501)), key=dist)

    def erfcx(x):
        return mpmath.erfc(x) * mpmath.exp(x * x)

    def erf_ratio(z):  # erf(√z)/√z = 1 + P(z)
        return 2 / mpmath.sqrt(mpmath.pi) if z == 0 else mpmath.erf(mpmath.sqrt(z)) / mpmath.sqrt(z)

    def tail(s):  # x·erfcx(x) at x = 1/√s
        return erfcx(1 / mpmath.sqrt(s)) / mpmath.sqrt(s)

    def table(coef):
        return tuple(float(c) for c in reversed(coef))

    out = []
    coef, err = remez(erf_ratio, 0, mpf(_A_END) ** 2, 10)
    coef[0] -= 1
    out.append(("_P", table(coef), f"P(z) = erf(√z)/√z − 1 on [0, {_A_END}²], error {err:.2g}"
                " (relative to 1 + P);\n# _P_LO is what rounding P(0) to a double lost"))
    out.append(("_P_LO", float(coef[0] - float(coef[0])), None))
    for name, f, lo, hi, step, n, what in (
        ("_D", mpmath.erf, _A_END, _D_END, 2.0**-16, 14, "erf(c + t)"),
        ("_B1", erfcx, _B_START, 2, 2.0**-16, 16, "erfcx(c + t)"),
        ("_B2", erfcx, 2, 4, 2.0**-16, 18, "erfcx(c + t)"),
        ("_T", tail, mpf(1) / 28**2, mpf(1) / 16, 2.0**-24, 14, "x·erfcx(x), 1/x² = c + v,"),
    ):
        c = centre(f, round((lo + hi) / 2 / step) * step, step)
        coef, err = remez(lambda t, c=c, f=f: f(c + t), lo - c, hi - c, n)
        where = "x in [4, 28]" if name == "_T" else f"[{lo}, {hi}]"
        out.append((name + "_C", float(c), f"{what} on {where}, error {err:.2g}"))
        out.append((name, table(coef), None))
        if name != "_T":  # what rounding the linear coefficient lost (used by _poly_dd2)
            out.append((name + "_LO", float(coef[1] - float(coef[1])), None))
    return out


if __name__ == "__main__":
    for name, value, comment in _derive_tables():
        if comment:
            print(f"\n# {comment}")
        if isinstance(value, tuple):
            print(f"{name} = (\n" + "".join(f"    {c!r},\n" for c in value) + ")")
        else:
            print(f"{name} = {value!r}")
