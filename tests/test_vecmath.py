"""Vector math in LLVM IR: accuracy in float32 ulps, special values, vectorisation, timing."""

import ctypes
import math
import re
import struct
import time

import numpy as np
import pytest

pytest.importorskip("llvmlite")
from conftest import packed_bits  # noqa: E402

from compiler.backends.llvm import jit, target, vecmath  # noqa: E402

PTR = ctypes.c_void_p
F32 = np.float32


def _sigmoid64(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        t = np.exp(-np.abs(x))
    return np.where(x < 0, t / (1 + t), 1 / (1 + t))


def _erf64(x):
    try:
        from scipy.special import erf
    except ImportError:  # pragma: no cover
        erf = np.vectorize(math.erf, otypes=[np.float64])
    return erf(x)


REFS = {
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sigmoid": _sigmoid64,
    "erf": _erf64,
    "sin": np.sin,
    "cos": np.cos,
}

# dense-grid domain per function (the domain of the documented ulp bound)
DOMAINS = {
    "exp": (-103.9, 88.72),
    "log": (0.0, float(np.finfo(F32).max)),
    "tanh": (-12.0, 12.0),
    "sigmoid": (-104.0, 30.0),
    "erf": (-10.0, 10.0),
    "sin": (-6000.0, 6000.0),
    "cos": (-6000.0, 6000.0),
}

_cache: dict[str, object] = {}


def apply(fn: str, x: np.ndarray) -> np.ndarray:
    if fn not in _cache:
        c = jit.compile_ir(vecmath.kernel_ir(fn))
        _cache[fn] = (c, c.cfunc(f"apply_{fn}", None, PTR, PTR, ctypes.c_int64))
    f = _cache[fn][1]
    x = np.ascontiguousarray(x, F32)
    y = np.empty_like(x)
    f(x.ctypes.data, y.ctypes.data, x.size)
    return y


def ulp_error(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|y - ref| in units of the float32 ulp at the float64 reference (denormal ulp 2**-149).
    An infinite y where the reference is finite counts as 2**128; matching non-finite values
    (same inf, both NaN) count 0, other mismatches inf."""
    ref = np.asarray(ref, np.float64)
    with np.errstate(over="ignore"):
        ref32 = ref.astype(F32)
    finite = np.isfinite(ref)
    y64 = y.astype(np.float64)
    y64 = np.where(finite & np.isinf(y64), np.copysign(2.0**128, y64), y64)
    _, e = np.frexp(np.where(finite, ref, 1.0))
    ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
    with np.errstate(invalid="ignore"):
        err = np.abs(y64 - ref) / ulp
    same = (y == ref32) | (np.isnan(y) & np.isnan(ref32))  # incl. overflow to the same inf
    err = np.where(same, 0.0, np.where(finite, err, np.inf))
    return np.where(np.isnan(err), np.inf, err)


def sample(fn: str, n: int = 1 << 22, seed: int = 0) -> np.ndarray:
    """A dense linear grid over the domain plus random float32 bit patterns inside it
    (covering every binade) and, for log, the denormals."""
    lo, hi = DOMAINS[fn]
    rng = np.random.default_rng(seed)
    grid = np.linspace(lo, hi, n).astype(F32)
    bits = rng.integers(0, 1 << 31, n, dtype=np.int64).astype(np.uint32)
    rnd = bits.view(F32).copy()  # random non-negative floats, every binade
    rnd = np.where(rng.random(n) < 0.5, -rnd, rnd)
    rnd = rnd[np.isfinite(rnd) & (rnd >= lo) & (rnd <= hi)]
    parts = [grid, rnd]
    if fn == "log":
        parts.append(np.linspace(0, np.finfo(F32).tiny, 1 << 16).astype(F32))
        parts.append(np.linspace(0.5, 2.0, n).astype(F32))
    else:
        parts.append(np.linspace(-2.0, 2.0, n).astype(F32))
    return np.concatenate(parts)


def max_ulps(fn: str) -> tuple[float, float]:
    x = sample(fn)
    with np.errstate(all="ignore"):
        ref = REFS[fn](x.astype(np.float64))
    err = ulp_error(apply(fn, x), ref)
    i = int(np.argmax(err))
    return float(err[i]), float(x[i])


@pytest.mark.parametrize("fn", list(vecmath.FUNCTIONS))
def test_max_ulp_error_within_documented_bound(fn):
    bound, domain = vecmath.MAX_ULPS[fn]
    worst, at = max_ulps(fn)
    print(f"{fn}: max {worst:.3f} ulp at x={at!r} over {domain} (documented {bound})")
    assert worst <= bound, (fn, worst, at)


SPECIAL = np.array(
    [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        1e-45,
        -1e-45,
        1e-40,
        -1e-40,
        1.17549435e-38,
        1.0,
        -1.0,
        0.5,
        -0.5,
        1e-7,
        -1e-7,
        3e38,
        -3e38,
        88.7,
        88.73,
        89.0,
        -87.3,
        -100.0,
        -103.9,
        -104.0,
        -200.0,
        200.0,
        1e10,
        -1e10,
    ],
    F32,
)


@pytest.mark.parametrize("fn", list(vecmath.FUNCTIONS))
def test_special_values_and_large_magnitudes(fn):
    bound, _ = vecmath.MAX_ULPS[fn]
    x = SPECIAL
    if fn in ("sin", "cos"):  # outside the accurate domain: only boundedness is promised
        lo, hi = DOMAINS[fn]
        far = np.abs(x) > hi
        yf = apply(fn, x[far])
        assert np.all(np.isnan(yf) == np.isinf(x[far]))
        assert np.all(np.abs(yf[np.isfinite(yf)]) <= 1.0)
        x = x[~far]
    with np.errstate(all="ignore"):
        ref = REFS[fn](x.astype(np.float64))
    y = apply(fn, x)
    err = ulp_error(y, ref)
    assert np.all(err <= bound), list(zip(x, y, ref, err))


def test_exact_special_values():
    inf, nan = np.inf, np.nan
    e = apply("exp", np.array([-inf, inf, nan, 0.0, -0.0, 100.0, -200.0], F32))
    assert e[0] == 0 and e[1] == inf and np.isnan(e[2]) and e[3] == 1 and e[4] == 1
    assert e[5] == inf and e[6] == 0
    lg = apply("log", np.array([0.0, -0.0, -1.0, -inf, inf, nan, 1.0, 1e-45], F32))
    assert lg[0] == -inf and lg[1] == -inf and np.isnan(lg[2]) and np.isnan(lg[3])
    assert lg[4] == inf and np.isnan(lg[5]) and lg[6] == 0
    assert lg[7] == F32(np.log(1.401298464324817e-45))
    th = apply("tanh", np.array([inf, -inf, nan, 0.0, -0.0, 20.0, -20.0], F32))
    assert th[0] == 1 and th[1] == -1 and np.isnan(th[2])
    assert th[3] == 0 and not np.signbit(th[3]) and th[4] == 0 and np.signbit(th[4])
    assert th[5] == 1 and th[6] == -1
    sg = apply("sigmoid", np.array([inf, -inf, nan, 0.0, -0.0, 200.0, -200.0], F32))
    assert sg[0] == 1 and sg[1] == 0 and np.isnan(sg[2]) and sg[3] == 0.5 and sg[4] == 0.5
    assert sg[5] == 1 and sg[6] == 0
    ef = apply("erf", np.array([inf, -inf, nan, 0.0, -0.0, 5.0, -5.0], F32))
    assert ef[0] == 1 and ef[1] == -1 and np.isnan(ef[2]) and ef[5] == 1 and ef[6] == -1
    assert ef[3] == 0 and not np.signbit(ef[3]) and ef[4] == 0 and np.signbit(ef[4])
    sn = apply("sin", np.array([inf, -inf, nan, 0.0, -0.0], F32))
    assert np.all(np.isnan(sn[:3])) and sn[3] == 0 and not np.signbit(sn[3])
    assert sn[4] == 0 and np.signbit(sn[4])
    cs = apply("cos", np.array([inf, -inf, nan, 0.0, -0.0], F32))
    assert np.all(np.isnan(cs[:3])) and cs[3] == 1 and cs[4] == 1


@pytest.mark.parametrize("fn", list(vecmath.FUNCTIONS))
def test_kernel_vectorises(fn):
    ir = vecmath.kernel_ir(fn)
    assert "call float @llvm.exp" not in ir and "@expf" not in ir and "@logf" not in ir
    asm = jit.assembly(ir)
    # packed multiplies (vmulps / mulps) as wide as the target's loop vectors (target.py)
    assert max(packed_bits(asm, "mulps"), default=0) == target.current().loop_bits, asm[:3000]
    body = asm[asm.index("apply_" + fn + ":") :]
    assert "call" not in body.split(".Lfunc_end")[0]  # no libm (or any) calls in the loop


def test_derive_reproduces_embedded_coefficients():
    assert vecmath._derive() == vecmath.COEFFS


def test_constants_are_exact_float32_hex():
    for coeffs in vecmath.COEFFS.values():
        for c in coeffs:
            assert float(F32(c)) == c
    ir = vecmath.module_ir()
    lits = re.findall(r"0x[0-9A-F]{16}", ir)
    assert lits
    for lit in lits:  # a double whose low 29 mantissa bits are zero is exactly a float32
        v = struct.unpack("<d", struct.pack("<Q", int(lit, 16)))[0]
        assert np.isnan(v) or float(F32(v)) == v, lit
    with pytest.raises(ValueError):
        vecmath.fconst(0.1)


@pytest.mark.parametrize("fn", list(vecmath.FUNCTIONS))
def test_functions_are_straight_line_with_vector_intrinsics_only(fn):
    text = vecmath.FUNCTIONS[fn]()
    assert "alwaysinline" in text
    assert " br " not in text and "phi " not in text
    allowed = {"fma", "fabs", "rint", "minnum", "maxnum", "copysign"}
    if vecmath.scalef():  # one vscalefps on AVX-512 hosts (a libm call elsewhere: not used)
        allowed.add("ldexp")
    assert set(re.findall(r"call float @llvm\.(\w+)\.f32", text)) <= allowed
    assert len(re.findall(r"\bcall\b", text)) == len(re.findall(r"call (float|i32) @llvm\.", text))
    for flag in ("fast", "nnan", "ninf"):
        assert f" {flag} " not in text


def _erf_f32(x):
    return _erf64(x).astype(F32)


@pytest.mark.parametrize("fn", list(vecmath.FUNCTIONS))
def test_timing_against_numpy(fn):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(1 << 22) * 4).astype(F32)
    if fn == "log":
        x = np.abs(x) + F32(1e-3)
    y = apply(fn, x)
    np_fn = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "erf": _erf_f32}.get(fn)
    np_fn = np_fn or getattr(np, fn)

    def best(f, reps=5):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts) * 1e3

    t_ir = best(lambda: apply(fn, x))
    with np.errstate(all="ignore"):
        t_np = best(lambda: np_fn(x))
    print(f"\n{fn}: IR kernel {t_ir:.2f} ms, numpy {t_np:.2f} ms over 4M float32")
    assert y.shape == x.shape


def _without_scalef(fn: str, x: np.ndarray, monkeypatch) -> np.ndarray:
    """``fn`` as a host without AVX-512 computes it (no vscalefps)."""
    monkeypatch.setattr(vecmath, "_SCALEF", False)
    assert "call float @llvm.ldexp" not in vecmath.kernel_ir(fn)
    c = jit.compile_ir(vecmath.kernel_ir(fn))
    f = c.cfunc(f"apply_{fn}", None, PTR, PTR, ctypes.c_int64)
    y = np.empty_like(x)
    f(x.ctypes.data, y.ctypes.data, x.size)
    return y


@pytest.mark.parametrize("fn", ["exp", "sigmoid", "erf"])
def test_exp_scaling_by_vscalef_and_by_two_factors_agree_bit_for_bit(fn, monkeypatch):
    """exp scales by 2**n with one vscalefps on AVX-512 hosts and with two exponent-bit
    multiplies elsewhere; both round once, so every result (denormals included) is equal."""
    if not vecmath.scalef():
        pytest.skip("the host has no AVX-512: only the two-factor path exists here")
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-110, 95, 200_000), rng.uniform(-104, -87, 100_000),
                        [-np.inf, np.inf, np.nan, 0.0, -0.0, 88.72, -103.9]]).astype(F32)
    fast = apply(fn, x)
    slow = _without_scalef(fn, x, monkeypatch)
    np.testing.assert_array_equal(fast.view(np.uint32), slow.view(np.uint32))


def test_tanh_without_avx512_is_the_polynomial_form_within_two_ulps(monkeypatch):
    """Hosts without vscalefps compute tanh as an odd polynomial below 0.625 and from exp
    above (1.509 ulp exhaustively); AVX-512 hosts use expm1 (2.498 ulp, ``MAX_ULPS``)."""
    x = sample("tanh", 1 << 20)
    y = _without_scalef("tanh", x, monkeypatch)
    assert ulp_error(y, np.tanh(x.astype(np.float64))).max() <= 2.0
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], F32)
    got = _without_scalef("tanh", special, monkeypatch)
    np.testing.assert_array_equal(got[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(got[1]) and np.isnan(got[4])
