"""Vector-friendly float64 math functions written in LLVM IR: ``exp``, ``log``, ``tanh``,
``sigmoid``, ``sin``, ``cos`` and ``erf`` — the float64 counterparts of ``vecmath.py``'s
float32 ones, so that float64 models (an LSTM on float64 data) run natively instead of in a
hybrid plan — and ``pow``, ``atan``, ``asin``, ``acos`` and ``atan2`` (both dtypes': float32
goes through them).

As in ``vecmath.py``: straight-line scalar IR (``select``, no branches; only intrinsics that
lower to single vector instructions: fma, rint, fabs, copysign), ``alwaysinline``, no
fast-math flags, so LLVM's loop vectoriser vectorises the loop calling them, and NaN and
infinities propagate as IEEE says. The coefficients are exact series, not fitted tables:

- exp: n = rint(x·log2e), r = x − n·ln2 (ln2 in a 32-bit head and its tail, fma), |r| <=
  ln2/2; e**r = 1 + r + r²·q(r) with q the Taylor series of (e**r − 1 − r)/r² to r¹¹ (the
  first omitted term is below 2**-60 of the result); the result scaled by 2**n as two
  power-of-two factors, so a subnormal result is rounded once. x is clamped to [−746, 710]
  (exp(−746) rounds to 0, exp(710) overflows to inf).
- log: x = 2**k·m with m in [sqrt(1/2), sqrt(2)) (subnormals scaled by 2**54 first);
  s = (m − 1)/(m + 1), log m = 2·atanh(s) = 2s + 2s·z·R(z), z = s², R the atanh series
  1/3 + z/5 + ... + z¹⁰/23 (|s| <= 0.1716: the first omitted term is below 2**-61);
  log x = k·ln2_head + (log m + k·ln2_tail).
- tanh: m = expm1(−2|x|) (the exp reduction with e**r − 1 = r + r²·q(r) and
  expm1 = 2**n·(e**r − 1) + (2**n − 1), no cancellation near 0), tanh = copysign(−m/(2 + m), x).
- sigmoid: t = exp(−|x|), (1 if x >= 0 else t)/(1 + t).
- sin, cos: k = rint(x·2/pi), r = x − k·pi/2 with pi/2 in three doubles (fma), the Taylor
  series of sin and cos on |r| <= pi/4 (to r¹⁹, r¹⁸), picked and negated by the quadrant;
  sin x = x for |x| < 2**-27. Measured within 1 ulp (of the result, or absolutely 2**-53
  near a zero) for |x| <= 2**50 (~1.1e15); beyond, the three-part pi/2 is too short and the
  result is only kept in [-1, 1].
- erf: eager's own algorithm and tables (``dyngrad.special``, see :func:`erf64_ir`): eager's
  bits below |x| = 1.25, within an ulp beyond.
- pow(x, y): e**(y·log|x|) in double-double (:func:`pow64_ir`): log|x| to about 2**-64,
  y·log|x| as hi + lo by fma, e**(hi + lo) with the reduced argument carried in two parts;
  C99's special cases by select.
- atan: |x| reduced to |t| <= 7/16 around c = 0, 1/2, 1, 3/2 or ∞ (exact numerators),
  atan c in two doubles plus t + t·z·P(z), P the Taylor series to z²¹ (:func:`_atan_body`);
  asin x = atan(x/√(1 − x²)) (1 − x² by fma), acos x = 2·atan(√((1 − x)/(1 + x))),
  atan2 by quadrant from atan(|y|/|x|) with C99's zeros and infinities. These four have no
  float32 forms: float32 computes in float64 and rounds once more.

Errors against numpy's float64 results, in ulps of the result, measured on dense grids and
random inputs (tests/test_vecmath64.py checks the documented bounds, ``MAX_ULPS``): exp 1.0
(bound 1.5), log 2.0 (2.5), tanh 3.0 (3.5), sigmoid 2.0 (3.0), sin and cos 1.0 (1.5, on |x|
<= 1e6), erf 1.0 (1.5; against math.erf), pow 1.0 (1.5; 94% of results numpy's bits),
atan 1.0 (1.5), asin and acos 2.0 (2.5), atan2 1.0 (1.5) —
numpy's own results being within about half an ulp. Special values exactly:
exp(−inf) = 0, exp(inf) = inf; log(±0) = −inf, log(x < 0) = NaN, log(inf) = inf; tanh(±inf)
= ±1, tanh(±0) = ±0; sigmoid(inf) = 1, sigmoid(−inf) = 0; NaN → NaN. sin(±inf) = cos(±inf) = NaN.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, getcontext
from fractions import Fraction

from dyngrad.special import ERF_TABLES

from .emit import Emitter, literal

getcontext().prec = 60
_LN2 = Decimal(2).ln()


def _head(v: Decimal, bits: int) -> float:
    """``v`` rounded to a double, its significand then cut to ``bits`` bits."""
    d = float(v)
    (u,) = struct.unpack("<Q", struct.pack("<d", d))
    u &= ~((1 << (52 - bits + 1)) - 1)
    return struct.unpack("<d", struct.pack("<Q", u))[0]


LN2_HI = _head(_LN2, 32)  # n·LN2_HI is exact for |n| < 2**21
LN2_LO = float(_LN2 - Decimal(LN2_HI))
LOG2E = float(1 / _LN2)
EXP_Q = [float(Fraction(1, math.factorial(k))) for k in range(2, 14)]  # 1/2! .. 1/13!
ATANH_R = [float(Fraction(1, 2 * k + 1)) for k in range(1, 12)]       # 1/3 .. 1/23
SQRT_HALF = 0.7071067811865476

MAX_ULPS = {"exp": 1.5, "log": 2.5, "tanh": 3.5, "sigmoid": 3.0, "sin": 1.5, "cos": 1.5,
            "erf": 1.5, "pow": 1.5, "atan": 1.5, "asin": 2.5, "acos": 2.5, "atan2": 1.5}

class Math64(Emitter):
    """An Emitter writing one straight-line ``double -> double`` function."""

    @staticmethod
    def c(v: float) -> str:
        return literal(v, "double")

    def op(self, name: str, a: str, b: str, ty: str = "double") -> str:
        return self.emit(f"{name} {ty} {a}, {b}")

    def call(self, name: str, *args: str) -> str:
        operands = ", ".join(f"double {a}" for a in args)
        return self.emit(f"call double @llvm.{name}.f64({operands})")

    def fma(self, a: str, b: str, c: str) -> str:
        return self.call("fma", a, b, c)

    def fcmp(self, pred: str, a: str, b: str) -> str:
        return self.emit(f"fcmp {pred} double {a}, {b}")

    def select(self, cond: str, a: str, b: str, ty: str = "double") -> str:
        return self.emit(f"select i1 {cond}, {ty} {a}, {ty} {b}")

    def horner(self, x: str, coeffs: list[float]) -> str:
        acc = self.c(coeffs[-1])
        for cf in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.c(cf))
        return acc

    def horner_rounded(self, x: str, coeffs) -> str:
        """A polynomial (highest degree first) by Horner's rule with every product and sum
        rounded on its own (no fma): numpy's arithmetic, so eager's bits."""
        acc = self.c(coeffs[0])
        for cf in coeffs[1:]:
            acc = self.op("fadd", self.op("fmul", acc, x), self.c(cf))
        return acc

    def pow2(self, ni: str) -> str:
        """2**n for an i64 n giving a normal double."""
        biased = self.op("add", ni, "1023", "i64")
        return self.emit(f"bitcast i64 {self.op('shl', biased, '52', 'i64')} to double")

    def define(self, name: str, result: str) -> str:
        body = "\n".join(self.lines)
        return (f"define internal double @{name}(double %x) alwaysinline nounwind {{\n"
                f"entry:\n{body}\n  ret double {result}\n}}\n")


def _reduce(b: Math64, x: str, lo: float, hi: float) -> tuple[str, str, str]:
    """(n as i64, r, NaN test) with clamp(x, lo, hi) = n·ln2 + r, |r| <= ln2/2 (a NaN x
    gives n = 0, its result chosen by the caller's select)."""
    isnan = b.fcmp("uno", x, x)
    xc = b.select(b.fcmp("ogt", x, b.c(hi)), b.c(hi), x)
    xc = b.select(b.fcmp("olt", xc, b.c(lo)), b.c(lo), xc)
    xc = b.select(isnan, b.c(0.0), xc)
    n = b.call("rint", b.op("fmul", xc, b.c(LOG2E)))
    r = b.fma(n, b.c(-LN2_HI), xc)
    r = b.fma(n, b.c(-LN2_LO), r)
    return b.emit(f"fptosi double {n} to i64"), r, isnan


def _exp_body(b: Math64, x: str) -> str:
    ni, r, isnan = _reduce(b, x, -746.0, 710.0)
    p = b.op("fadd", b.c(1.0), b.fma(b.op("fmul", r, r), b.horner(r, EXP_Q), r))
    n1 = b.op("ashr", ni, "1", "i64")
    n2 = b.op("sub", ni, n1, "i64")
    res = b.op("fmul", b.op("fmul", p, b.pow2(n1)), b.pow2(n2))
    return b.select(isnan, x, res)


def exp64_ir() -> str:
    b = Math64()
    return b.define("dg_exp64", _exp_body(b, "%x"))


def log64_ir() -> str:
    b = Math64()
    x = "%x"
    tiny = b.fcmp("olt", x, b.c(2.2250738585072014e-308))  # (subnormal, zero or negative)
    xs = b.select(tiny, b.op("fmul", x, b.c(2.0 ** 54)), x)
    bits = b.emit(f"bitcast double {xs} to i64")
    k0 = b.op("sub", b.op("lshr", bits, "52", "i64"), "1023", "i64")
    mant = b.op("and", bits, str((1 << 52) - 1), "i64")
    m0 = b.emit(f"bitcast i64 {b.op('or', mant, str(1023 << 52), 'i64')} to double")
    big = b.fcmp("oge", m0, b.c(2 * SQRT_HALF))  # m in [sqrt(2), 2): halve it
    m = b.select(big, b.op("fmul", m0, b.c(0.5)), m0)
    k = b.op("add", k0, b.emit(f"zext i1 {big} to i64"), "i64")
    k = b.select(tiny, b.op("sub", k, "54", "i64"), k, "i64")
    f = b.op("fsub", m, b.c(1.0))
    s = b.op("fdiv", f, b.op("fadd", m, b.c(1.0)))
    z = b.op("fmul", s, s)
    s2 = b.op("fadd", s, s)
    lm = b.fma(b.op("fmul", s2, z), b.horner(z, ATANH_R), s2)
    kf = b.emit(f"sitofp i64 {k} to double")
    res = b.fma(kf, b.c(LN2_HI), b.fma(kf, b.c(LN2_LO), lm))
    res = b.select(b.fcmp("oeq", x, b.c(0.0)), b.c(-math.inf), res)
    res = b.select(b.fcmp("olt", x, b.c(0.0)), b.c(math.nan), res)
    res = b.select(b.fcmp("oeq", x, b.c(math.inf)), x, res)
    return b.define("dg_log64", b.select(b.fcmp("uno", x, x), x, res))


def tanh64_ir() -> str:
    b = Math64()
    x = "%x"
    y = b.op("fmul", b.call("fabs", x), b.c(-2.0))  # (<= 0)
    ni, r, isnan = _reduce(b, y, -60.0, 0.0)
    em1 = b.fma(b.op("fmul", r, r), b.horner(r, EXP_Q), r)  # e**r - 1
    p2 = b.pow2(ni)
    m = b.fma(p2, em1, b.op("fsub", p2, b.c(1.0)))  # expm1(y)
    t = b.op("fdiv", b.op("fsub", b.c(-0.0), m), b.op("fadd", b.c(2.0), m))
    return b.define("dg_tanh64", b.select(isnan, x, b.call("copysign", t, x)))


def sigmoid64_ir() -> str:
    b = Math64()
    x = "%x"
    t = _exp_body(b, b.op("fsub", b.c(-0.0), b.call("fabs", x)))
    num = b.select(b.fcmp("oge", x, b.c(0.0)), b.c(1.0), t)
    return b.define("dg_sigmoid64", b.op("fdiv", num, b.op("fadd", b.c(1.0), t)))


_PI_2 = Decimal("1.57079632679489661923132169163975144209858469968755291048747229615390820314")
PIO2 = [float(_PI_2)]
PIO2.append(float(_PI_2 - Decimal(PIO2[0])))
PIO2.append(float(_PI_2 - Decimal(PIO2[0]) - Decimal(PIO2[1])))
SIN_S = [float(Fraction((-1) ** k, math.factorial(2 * k + 1))) for k in range(1, 10)]
COS_C = [float(Fraction((-1) ** k, math.factorial(2 * k))) for k in range(1, 10)]


def _sincos_body(b: Math64, x: str, quadrant_offset: int) -> str:
    """sin (offset 0) or cos (offset 1): k = rint(x·2/pi), r = x − k·pi/2 (pi/2 in three
    doubles, fma), the Taylor polynomials of sin and cos on |r| <= pi/4 (to r¹⁹ and r¹⁸),
    chosen and negated by the quadrant (k + offset) mod 4. NaN and ±inf give NaN."""
    bad = b.fcmp("uno", b.op("fsub", x, x), b.c(0.0))  # (NaN or an infinity)
    xs = b.select(bad, b.c(0.0), x)
    k = b.call("rint", b.op("fmul", xs, b.c(float(1 / _PI_2))))
    r = b.fma(k, b.c(-PIO2[0]), xs)
    r = b.fma(k, b.c(-PIO2[1]), r)
    r = b.fma(k, b.c(-PIO2[2]), r)
    z = b.op("fmul", r, r)
    sin_r = b.fma(b.op("fmul", r, z), b.horner(z, SIN_S), r)
    cos_r = b.fma(z, b.horner(z, COS_C), b.c(1.0))
    q = b.op("add", b.emit(f"fptosi double {k} to i64"), str(quadrant_offset), "i64")
    odd = b.emit(f"trunc i64 {b.op('and', q, '1', 'i64')} to i1")
    neg = b.emit(f"trunc i64 {b.op('lshr', b.op('and', q, '2', 'i64'), '1', 'i64')} to i1")
    v = b.select(odd, cos_r, sin_r)
    v = b.select(neg, b.op("fsub", b.c(-0.0), v), v)
    v = b.call("minnum", b.call("maxnum", v, b.c(-1.0)), b.c(1.0))  # (|x| > 2**50: kept in
    #                                                                  [-1, 1], inaccurate)
    if quadrant_offset == 0:  # sin x = x (correctly rounded) for |x| < 2**-27, ±0 kept
        v = b.select(b.fcmp("olt", b.call("fabs", x), b.c(2.0 ** -27)), x, v)
    return b.select(bad, b.c(math.nan), v)


def sin64_ir() -> str:
    b = Math64()
    return b.define("dg_sin64", _sincos_body(b, "%x", 0))


def cos64_ir() -> str:
    b = Math64()
    return b.define("dg_cos64", _sincos_body(b, "%x", 1))


def erf64_ir() -> str:
    """erf by eager's algorithm (``dyngrad.special.erf``, its tables ``ERF_TABLES``), every
    range computed and the one holding |x| selected. Below 1.25 the same operations in the
    same order as eager's numpy code, so the same bits; beyond, ``1 − erfc`` with exp and
    expm1 computed here (``_exp_body``; expm1 of the small exact-argument correction by
    its Taylor series), whose ulp or so on erfc ≤ 0.08 is a fraction of an ulp of erf."""
    t = ERF_TABLES
    b = Math64()
    x = "%x"
    a = b.call("fabs", x)
    small = b.op("fadd", a, b.op("fadd", b.op("fmul", a, b.horner_rounded(
        b.op("fmul", a, a), t.small)), b.op("fmul", a, b.c(t.small_lo))))
    u = b.op("fsub", a, b.c(t.mid_centre))
    mid = b.op("fadd", b.c(t.mid[-1]), b.op("fmul", b.horner_rounded(u, t.mid[:-1]), u))
    # beyond: erfcx(a) from one of three polynomials, chosen coefficient by coefficient
    # (the shorter ones led by zeros: 0·v + c is c exactly)
    ab = b.select(b.fcmp("olt", a, b.c(t.big_clamp)), a, b.c(t.big_clamp))
    first = b.fcmp("olt", ab, b.c(t.erfcx_bounds[0]))
    last = b.fcmp("oge", ab, b.c(t.erfcx_bounds[1]))
    v_tail = b.op("fsub", b.op("fdiv", b.c(1.0), b.op("fmul", ab, ab)), b.c(t.tail_centre))
    v = b.select(last, v_tail, b.op("fsub", ab, b.c(t.erfcx_centres[1])))
    v = b.select(first, b.op("fsub", ab, b.c(t.erfcx_centres[0])), v)
    width = max(len(t.erfcx[0]), len(t.erfcx[1]), len(t.tail))
    tables = [(0.0,) * (width - len(c)) + tuple(c) for c in (*t.erfcx, t.tail)]
    g = None
    for c1, c2, c3 in zip(*tables):
        c = b.select(first, b.c(c1), b.select(last, b.c(c3), b.c(c2)))
        g = c if g is None else b.op("fadd", b.op("fmul", g, v), c)
    g = b.select(last, b.op("fdiv", g, ab), g)
    h = b.op("fmul", b.call("rint", b.op("fmul", ab, b.c(4096.0))), b.c(1.0 / 4096.0))
    e = _exp_body(b, b.op("fsub", b.c(t.exp_shift), b.op("fmul", h, h)))
    w = b.op("fsub", b.c(t.exp_shift_lo),
             b.op("fmul", b.op("fsub", ab, h), b.op("fadd", ab, h)))
    m = b.fma(b.op("fmul", w, w), b.horner(w, EXP_Q), w)  # expm1(w), |w| < 2e-3
    m = b.op("fadd", b.op("fmul", m, g), g)
    big = b.op("fsub", b.c(1.0), b.op("fmul", b.op("fmul", m, e), b.c(t.unshift)))
    res = b.select(b.fcmp("oge", a, b.c(t.mid_end)), big, mid)  # (NaN: mid, stays NaN)
    res = b.select(b.fcmp("olt", a, b.c(t.small_end)), small, res)
    return b.define("dg_erf64", b.call("copysign", res, x))


TWO_THIRDS = float(Fraction(2, 3))
TWO_THIRDS_LO = float(Fraction(2, 3) - Fraction(TWO_THIRDS))
ATANH_R5 = [float(Fraction(2, 2 * k + 5)) for k in range(11)]  # 2/5 .. 2/25


def _two_sum(b: Math64, a: str, c: str) -> tuple[str, str]:
    """(s, e) with s = fl(a + c) and a + c = s + e exactly (Knuth's TwoSum)."""
    s = b.op("fadd", a, c)
    bb = b.op("fsub", s, a)
    e = b.op("fadd", b.op("fsub", a, b.op("fsub", s, bb)), b.op("fsub", c, bb))
    return s, e


def _log_dd(b: Math64, ax: str) -> tuple[str, str]:
    """log(ax) for a finite ax > 0 as hi + lo, to about 2**-64 of the result: log64's
    reduction, with s = (m − 1)/(m + 1) in double-double (the division's exact remainder by
    fma), 2s exact, the (2/3)s³ term in double-double and the rest of the atanh series
    (2/5)s⁵ + ... (below 2**-12 of the result) in double."""
    tiny = b.fcmp("olt", ax, b.c(2.2250738585072014e-308))
    xs = b.select(tiny, b.op("fmul", ax, b.c(2.0 ** 54)), ax)
    bits = b.emit(f"bitcast double {xs} to i64")
    k0 = b.op("sub", b.op("lshr", bits, "52", "i64"), "1023", "i64")
    mant = b.op("and", bits, str((1 << 52) - 1), "i64")
    m0 = b.emit(f"bitcast i64 {b.op('or', mant, str(1023 << 52), 'i64')} to double")
    big = b.fcmp("oge", m0, b.c(2 * SQRT_HALF))
    m = b.select(big, b.op("fmul", m0, b.c(0.5)), m0)
    k = b.op("add", k0, b.emit(f"zext i1 {big} to i64"), "i64")
    k = b.select(tiny, b.op("sub", k, "54", "i64"), k, "i64")
    f = b.op("fsub", m, b.c(1.0))  # (exact)
    d, d_lo = _two_sum(b, m, b.c(1.0))
    s = b.op("fdiv", f, d)
    rem = b.fma(b.op("fsub", b.c(-0.0), s), d, f)  # f − s·d, exactly
    s_lo = b.op("fdiv", b.op("fsub", rem, b.op("fmul", s, d_lo)), d)
    q = b.op("fmul", s, s)
    q_lo = b.fma(s, s, b.op("fsub", b.c(-0.0), q))
    c = b.op("fmul", s, q)  # s³ = c + c_lo
    c_lo = b.op("fadd", b.fma(s, q, b.op("fsub", b.c(-0.0), c)),
                b.op("fadd", b.op("fmul", s, q_lo),
                     b.op("fmul", b.op("fmul", b.c(3.0), q), s_lo)))
    t3 = b.op("fmul", c, b.c(TWO_THIRDS))
    t3_lo = b.op("fadd", b.fma(c, b.c(TWO_THIRDS), b.op("fsub", b.c(-0.0), t3)),
                 b.op("fadd", b.op("fmul", c, b.c(TWO_THIRDS_LO)),
                      b.op("fmul", c_lo, b.c(TWO_THIRDS))))
    rest = b.op("fmul", b.op("fmul", c, q), b.horner(q, ATANH_R5))
    s2 = b.op("fadd", s, s)
    lm = b.op("fadd", s2, t3)  # (|t3| < |2s|: Fast2Sum)
    lm_lo = b.op("fsub", t3, b.op("fsub", lm, s2))
    lm_lo = b.op("fadd", lm_lo, b.op("fadd", b.op("fadd", s_lo, s_lo),
                                       b.op("fadd", t3_lo, rest)))
    kf = b.emit(f"sitofp i64 {k} to double")
    hi, e = _two_sum(b, b.op("fmul", kf, b.c(LN2_HI)), lm)  # (k·LN2_HI exact)
    lo = b.op("fadd", e, b.fma(kf, b.c(LN2_LO), lm_lo))
    whole = b.op("fadd", hi, lo)  # (normalised: |lo| <= ulp(hi)/2, for _exp_dd)
    return whole, b.op("fsub", lo, b.op("fsub", whole, hi))


def _exp_dd(b: Math64, p: str, p_lo: str) -> str:
    """e**(p + p_lo) for |p_lo| tiny: the exp reduction of p, the reduced argument carried
    as r + r_lo (the n·ln2 tail's product error, TwoSum's error and p_lo), e**r = 1 + r + w
    (w by the series), 1 + r as a rounded sum and its exact error (Fast2Sum), then
    (1 + r) + (its error + w + r_lo·(1 + r + w)) rounded once and scaled as ``_exp_body``.
    Beyond [−746, 710] p is clamped (0 or inf) and p_lo dropped; NaN is the caller's."""
    inside = b.emit(f"and i1 {b.fcmp('oge', p, b.c(-746.0))}, {b.fcmp('ole', p, b.c(710.0))}")
    pc = b.select(b.fcmp("ogt", p, b.c(710.0)), b.c(710.0), p)
    pc = b.select(b.fcmp("olt", pc, b.c(-746.0)), b.c(-746.0), pc)
    pc = b.select(b.fcmp("uno", pc, pc), b.c(0.0), pc)
    lo = b.select(inside, p_lo, b.c(0.0))
    n = b.call("rint", b.op("fmul", pc, b.c(LOG2E)))
    r1 = b.fma(n, b.c(-LN2_HI), pc)  # (exact)
    t = b.op("fmul", n, b.c(LN2_LO))
    t_lo = b.fma(n, b.c(LN2_LO), b.op("fsub", b.c(-0.0), t))
    r, e = _two_sum(b, r1, b.op("fsub", b.c(-0.0), t))
    r_lo = b.op("fadd", b.op("fsub", e, t_lo), lo)
    w = b.op("fmul", b.op("fmul", r, r), b.horner(r, EXP_Q))  # e**r = 1 + r + w
    one_r = b.op("fadd", b.c(1.0), r)  # (|r| < 1: Fast2Sum)
    corr = b.op("fadd", b.op("fsub", r, b.op("fsub", one_r, b.c(1.0))), w)
    corr = b.op("fadd", corr, b.fma(r_lo, b.op("fadd", r, w), r_lo))
    ni = b.emit(f"fptosi double {n} to i64")
    n1 = b.op("ashr", ni, "1", "i64")
    n2 = b.op("sub", ni, n1, "i64")
    return b.op("fmul", b.op("fmul", b.op("fadd", one_r, corr), b.pow2(n1)), b.pow2(n2))


def pow64_ir() -> str:
    """x**y as C's pow (numpy's): e**(y·log|x|) with log|x| in double-double (``_log_dd``)
    and the product y·log|x| kept as hi + lo (fma), so an argument of e near ±700 still
    gives a result within about an ulp; the sign by the parity of an integer y; the special
    cases by select: x**±0 = 1 and 1**y = 1 (NaN too), (−1)**±inf = 1, a negative finite x
    to a finite non-integer y is NaN, ±0, ±inf and infinite y by the limit (0 or inf, the
    sign of an odd integer y kept), NaN otherwise propagating."""
    b = Math64()
    x, y = "%x", "%y"
    ax = b.call("fabs", x)
    hi, lo = _log_dd(b, ax)
    p = b.op("fmul", y, hi)
    p_lo = b.fma(y, lo, b.fma(y, hi, b.op("fsub", b.c(-0.0), p)))
    mag = _exp_dd(b, p, p_lo)
    ay = b.call("fabs", y)
    y_int = b.emit(f"and i1 {b.fcmp('oeq', b.call('rint', y), y)}, "
                   f"{b.fcmp('olt', ay, b.c(math.inf))}")
    half = b.op("fmul", y, b.c(0.5))
    odd = b.emit(f"and i1 {y_int}, {b.fcmp('une', b.call('rint', half), half)}")
    # the limits: x = ±0 or ±inf, or y = ±inf: 0 or inf (1 for |x| = 1)
    limit = b.select(b.emit(f"xor i1 {b.fcmp('ogt', ax, b.c(1.0))}, "
                            f"{b.fcmp('ogt', y, b.c(0.0))}"), b.c(0.0), b.c(math.inf))
    limit = b.select(b.fcmp("oeq", ax, b.c(1.0)), b.c(1.0), limit)
    edge = b.emit(f"or i1 {b.fcmp('oeq', ax, b.c(0.0))}, {b.fcmp('oeq', ax, b.c(math.inf))}")
    edge = b.emit(f"or i1 {edge}, {b.fcmp('oeq', ay, b.c(math.inf))}")
    res = b.select(edge, limit, mag)
    neg = b.emit(f"icmp slt i64 {b.emit(f'bitcast double {x} to i64')}, 0")
    res = b.select(b.emit(f"and i1 {neg}, {odd}"), b.op("fsub", b.c(-0.0), res), res)
    finite = b.emit(f"and i1 {b.fcmp('olt', ax, b.c(math.inf))}, "
                    f"{b.fcmp('olt', ay, b.c(math.inf))}")
    bad = b.emit(f"and i1 {b.fcmp('olt', x, b.c(0.0))}, {finite}")
    res = b.select(b.emit(f"and i1 {bad}, {b.emit(f'xor i1 {y_int}, true')}"),
                   b.c(math.nan), res)
    res = b.select(b.emit(f"or i1 {b.fcmp('uno', x, x)}, {b.fcmp('uno', y, y)}"),
                   b.c(math.nan), res)
    one = b.emit(f"or i1 {b.fcmp('oeq', y, b.c(0.0))}, {b.fcmp('oeq', x, b.c(1.0))}")
    res = b.select(one, b.c(1.0), res)
    body = "\n".join(b.lines)
    return (f"define internal double @dg_pow64(double %x, double %y) alwaysinline nounwind "
            f"{{\nentry:\n{body}\n  ret double {res}\n}}\n")


def _atan_decimal(v: Decimal) -> Decimal:
    """atan(v) to the context's precision: halve the angle until the argument is below
    2**-20 (atan v = 2·atan(v / (1 + √(1 + v²)))), then the Taylor series."""
    doublings = 0
    while abs(v) > Decimal(2) ** -20:
        v = v / (1 + (1 + v * v).sqrt())
        doublings += 1
    term, total, k, v2 = v, Decimal(0), 0, v * v
    while term != 0 and abs(term) > Decimal(10) ** -70:
        total += term / (2 * k + 1) * (-1) ** k
        term *= v2
        k += 1
    return total * 2 ** doublings


def _hi_lo(v: Decimal) -> tuple[float, float]:
    hi = float(v)
    return hi, float(v - Decimal(hi))


# atan's reduction points c (chosen so that (x − c)/(1 + c·x) is formed with an exact
# numerator) and atan(c) as a head and a tail double; beyond 39/16, atan x = π/2 − atan(1/x)
ATAN_POINTS = [(7 / 16, None), (11 / 16, _hi_lo(_atan_decimal(Decimal("0.5")))),
               (19 / 16, _hi_lo(_atan_decimal(Decimal(1)))),
               (39 / 16, _hi_lo(_atan_decimal(Decimal("1.5")))), (math.inf, _hi_lo(_PI_2))]
ATAN_P = [float(Fraction((-1) ** k, 2 * k + 1)) for k in range(1, 23)]  # −1/3 .. 1/45
PI = _hi_lo(2 * _PI_2)


def _atan_body(b: Math64, x: str, nonnegative: bool = False) -> str:
    """atan x: |x| reduced to |t| <= 7/16 by the nearest of c = 0, 1/2, 1, 3/2, ∞ (t =
    (|x| − c)/(1 + c·|x|), or −1/|x|), atan c (head + tail) + t + t·z·P(z) with z = t² and P
    the Taylor series of (atan t − t)/t³ to z²¹ (the first omitted term below 2**-57 of t);
    the sign by copysign (atan(−0) = −0). ±inf give ±π/2; NaN propagates (every compare
    false: the last range, t = NaN). ``nonnegative``: x >= 0 or NaN is known."""
    ax = x if nonnegative else b.call("fabs", x)
    two_ax = b.op("fadd", ax, ax)
    nums = [ax, b.op("fsub", two_ax, b.c(1.0)), b.op("fsub", ax, b.c(1.0)),  # (exact:
            b.op("fsub", two_ax, b.c(3.0)), b.c(-1.0)]                        # Sterbenz)
    dens = [b.c(1.0), b.op("fadd", b.c(2.0), ax), b.op("fadd", ax, b.c(1.0)),
            b.fma(b.c(3.0), ax, b.c(2.0)), ax]
    num, den, hi, lo = nums[-1], dens[-1], *(b.c(v) for v in ATAN_POINTS[-1][1])
    for k in range(len(ATAN_POINTS) - 2, -1, -1):
        below = b.fcmp("olt", ax, b.c(ATAN_POINTS[k][0]))
        head, tail = ATAN_POINTS[k][1] or (0.0, 0.0)
        num, den = b.select(below, nums[k], num), b.select(below, dens[k], den)
        hi, lo = b.select(below, b.c(head), hi), b.select(below, b.c(tail), lo)
    t = b.op("fdiv", num, den)
    z = b.op("fmul", t, t)
    poly = b.fma(b.op("fmul", t, z), b.horner(z, ATAN_P), t)
    res = b.op("fadd", hi, b.op("fadd", poly, lo))
    return res if nonnegative else b.call("copysign", res, x)


def atan64_ir() -> str:
    b = Math64()
    return b.define("dg_atan64", _atan_body(b, "%x"))


def asin64_ir() -> str:
    """asin x = atan(x / √(1 − x²)), 1 − x² rounded once (fma): ±1 give ±π/2 (x/0 = ±inf),
    |x| > 1 and ±inf NaN (the root of a negative number), −0 stays −0."""
    b = Math64()
    x = "%x"
    root = b.call("sqrt", b.fma(b.op("fsub", b.c(-0.0), x), x, b.c(1.0)))
    return b.define("dg_asin64", _atan_body(b, b.op("fdiv", x, root)))


def acos64_ir() -> str:
    """acos x = 2·atan(√((1 − x)/(1 + x))): 1 gives +0, −1 gives π (√inf), |x| > 1 and ±inf
    NaN; near ±1 the small side of 1 ∓ x is exact (Sterbenz), so no cancellation."""
    b = Math64()
    x = "%x"
    q = b.op("fdiv", b.op("fsub", b.c(1.0), x), b.op("fadd", b.c(1.0), x))
    half = _atan_body(b, b.call("sqrt", q), nonnegative=True)
    return b.define("dg_acos64", b.op("fadd", half, half))


def atan2_64_ir() -> str:
    """atan2(y, x) as C99's (numpy's): a = atan(|y|/|x|) in [0, π/2] (0 for two zeros, π/4
    for two infinities, where the quotient is NaN), π − a when x's sign bit is set (−0
    included), then y's sign; NaN in either operand propagates."""
    b = Math64()
    y, x = "%x", "%y"
    ay, ax = b.call("fabs", y), b.call("fabs", x)
    a = _atan_body(b, b.op("fdiv", ay, ax), nonnegative=True)
    zeros = b.emit(f"and i1 {b.fcmp('oeq', ay, b.c(0.0))}, {b.fcmp('oeq', ax, b.c(0.0))}")
    infs = b.emit(f"and i1 {b.fcmp('oeq', ay, b.c(math.inf))}, "
                  f"{b.fcmp('oeq', ax, b.c(math.inf))}")
    a = b.select(zeros, b.c(0.0), b.select(infs, b.c(float(_PI_2 / 2)), a))
    back = b.op("fadd", b.op("fsub", b.c(PI[0]), a), b.c(PI[1]))
    neg = b.emit(f"icmp slt i64 {b.emit(f'bitcast double {x} to i64')}, 0")
    res = b.call("copysign", b.select(neg, back, a), y)
    body = "\n".join(b.lines)
    return (f"define internal double @dg_atan2_64(double %x, double %y) alwaysinline "
            f"nounwind {{\nentry:\n{body}\n  ret double {res}\n}}\n")


def name64(fn: str) -> str:
    """The float64 function of vecmath name ``fn`` (``exp`` -> ``exp64``, ``atan2`` ->
    ``atan2_64``)."""
    return f"{fn}_64" if fn[-1].isdigit() else f"{fn}64"


FUNCTIONS = {"exp64": exp64_ir, "log64": log64_ir, "tanh64": tanh64_ir,
             "sigmoid64": sigmoid64_ir, "sin64": sin64_ir, "cos64": cos64_ir,
             "erf64": erf64_ir, "pow64": pow64_ir, "atan64": atan64_ir,
             "asin64": asin64_ir, "acos64": acos64_ir, "atan2_64": atan2_64_ir}
