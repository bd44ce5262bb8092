"""Vector-friendly float64 math functions written in LLVM IR: ``exp``, ``log``, ``tanh``,
``sigmoid``, ``sin`` and ``cos`` — the float64 counterparts of ``vecmath.py``'s float32
ones, so that float64 models (an LSTM on float64 data) run natively instead of in a hybrid
plan.

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

Errors against numpy's float64 results, in ulps of the result, measured on dense grids and
random inputs (tests/test_vecmath64.py checks the documented bounds, ``MAX_ULPS``): exp 1.0
(bound 1.5), log 2.0 (2.5), tanh 3.0 (3.5), sigmoid 2.0 (3.0), sin and cos 1.0 (1.5, on |x|
<= 1e6) — numpy's own results being within about half an ulp. Special values exactly:
exp(−inf) = 0, exp(inf) = inf; log(±0) = −inf, log(x < 0) = NaN, log(inf) = inf; tanh(±inf)
= ±1, tanh(±0) = ±0; sigmoid(inf) = 1, sigmoid(−inf) = 0; NaN → NaN. sin(±inf) = cos(±inf) = NaN.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, getcontext
from fractions import Fraction

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

MAX_ULPS = {"exp": 1.5, "log": 2.5, "tanh": 3.5, "sigmoid": 3.0, "sin": 1.5, "cos": 1.5}

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


FUNCTIONS = {"exp64": exp64_ir, "log64": log64_ir, "tanh64": tanh64_ir,
             "sigmoid64": sigmoid64_ir, "sin64": sin64_ir, "cos64": cos64_ir}
