"""Tolerances for comparing dyngrad with PyTorch, derived from rounding-error analysis.

Two float32 implementations of one computation agree only to within their rounding errors,
and those depend on the kernels: the summation order of a matmul (MKL on one CPU, OpenBLAS
on another, AVX-512 or AVX2 code paths), which vector-math library evaluates ``exp``. A
tolerance tuned on one machine fails on the next. The tolerances here are bounds instead:

    |dyngrad − exact| ≤ E  and  |torch − exact| ≤ E   ⇒   |dyngrad − torch| ≤ 2E,

with ``E`` a first-order bound on the rounding error of the computation, per element, from
the operands' actual values. :class:`ErrorBound` computes it by running the dyngrad
computation under a dispatch mode that follows every primitive and propagates a bound
alongside each value (running error analysis: Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., §3.3; the rules are in :data:`RULES`), evaluated at dyngrad's computed
values (they differ from the exact ones by E, a second-order change). Every rule holds for
any evaluation order, vector width, FMA use or thread count, so the bound is the same on
every x86-64 CPU. It assumes torch evaluates the same expression; where it uses another
formula (its GELU's erf, its reciprocal's derivative), the test says so and adds the
difference (``ErrorBound``'s ``extra_abs``, ``extra_roundings``, ``scalar_roundings``).

Model, per primitive (``u`` the unit roundoff of the result's dtype, ``ulp(y)`` the spacing
of floats at the computed result ``y``, ``e_x`` the bound carried by operand ``x``):

- ``+ − ×`` are correctly rounded (IEEE 754): within ulp(y)/2, plus the propagated operand
  errors (``e_a·|b| + |a|·e_b + e_a·e_b`` for ×); ÷ within γ₂·|y|, because torch divides
  by a scalar as a multiplication by its reciprocal (two roundings), plus
  ``(e_a + |y|·e_b) / (|b| − e_b)``;
- a library function ``f`` (exp, log, tanh, …) is within :data:`ULPS` [f] ulps of f at its
  computed argument (and an absolute float32 ``tiny`` where results underflow), plus
  ``|f'(x)|·e_x``;
- a sum of n terms, in any order: ``|fl(Σx) − Σx| ≤ γ(n−1)·Σ|x|`` (Higham (4.4)), and a
  product ``A @ B`` with inner dimension k: ``|fl(AB) − AB| ≤ γ(k)·|A||B|`` (Higham (3.13));
- a Python float meeting a float32 tensor is rounded to float32 first (both libraries do):
  its rounding counts as an operand error; so does a float64 → float32 cast;
- data movement, gather and max are exact (the bound moves with the data; a max is off by
  at most its operands' largest bound); scatter_add sums like a sum;
- comparisons, ``where``, ``floor``, ``ceil``, ``round``, ``sign``: exact, unless an
  operand's interval straddles the decision; then the bound covers either outcome (a bool's
  bound is 1 where it may flip).

Second-order terms (products of two errors) are dropped except in ``×``, where they are
kept; they are below float32's resolution wherever the first-order bound is meaningful.

Checked against float64 references (each library separately within E, not only their
difference within 2E) for every float32 case of the oracle tests on 60 random draws, the
modules of tests/test_nn.py and the optimizer tests, with numpy, OpenBLAS, MKL, oneDNN and
ATen held to AVX-512, AVX2 and SSE4.2 code paths, one thread and two.
"""

from __future__ import annotations

import math

import numpy as np

from dyngrad.dispatch import DispatchMode, dispatch, push_mode, suspend
from dyngrad.ops.primitive import REGISTRY
from dyngrad.tensor import Tensor

U32 = 2.0 ** -24   # float32 unit roundoff: |fl(x) − x| ≤ U32·|x| for x in the normal range
U64 = 2.0 ** -53


def gamma(n, u: float = U32):
    """γₙ = n·u / (1 − n·u), for n·u < 1: the relative error bound of n successive roundings
    (Higham Lemma 3.1); elementwise for an array ``n``."""
    nu = np.asarray(n, dtype=np.float64) * u
    return nu / (1.0 - nu)


def unit_roundoff(dtype) -> float:
    """u of a float dtype (numpy or dyngrad); 0 for integer and bool dtypes (exact)."""
    dt = np.dtype(getattr(dtype, "np", dtype))
    return float(np.finfo(dt).eps) / 2 if dt.kind == "f" else 0.0


def ulp(y, dtype=np.float32) -> np.ndarray:
    """The spacing of ``dtype`` floats at |y| (float64): within k ulps means |err| ≤ k·ulp.
    At 0 it is the smallest subnormal, so a bound never collapses to exactly 0."""
    dt = np.dtype(getattr(dtype, "np", dtype))
    a = np.abs(np.asarray(y, dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.spacing(a.astype(dt)).astype(np.float64)


# Accuracy of library functions in float32, in ulps of the result: the largest of the bounds
# of the implementations in play. dyngrad's eager kernels are numpy's. Its own vector loops
# (AVX2, AVX-512) keep float32 exp within 3, log 4, sin, cos and tanh 2 ulps — the bounds
# numpy's accuracy tests assert (numpy/_core/tests/test_umath_accuracy.py with
# umath-validation-set-*.csv); log1p and power are Intel SVML's low-accuracy variants on
# AVX-512 (documented to 4 ulps); without AVX2 numpy calls the C library, whose tanhf glibc
# does not bound (2.17 ulps measured over 2e7 points, glibc 2.36), hence 3 for tanh; sqrt is
# correctly rounded; erf is dyngrad.special.erf, evaluated in float64 and rounded (1 ulp).
# PyTorch evaluates them with MKL VML in its high-accuracy mode (VML_HA: 1 ulp — sqrt too,
# which is therefore not correctly rounded) or SLEEF (``*_u10``: 1 ulp; sin/cos
# ``Sleef_sinf16_u35``: 3.5 ulps), see aten/src/ATen/cpu/vml.h and vec512_float.h; x**3 is
# x·x·x there (two roundings). float64 kernels are at least as accurate relative to their
# own ulp; the same counts are used for them.
ULPS = {"exp": 3.0, "log": 4.0, "log1p": 4.0, "sin": 3.5, "cos": 3.5, "tanh": 3.0,
        "erf": 1.0, "pow": 4.0, "sqrt": 1.0}

# torch's float32 GELU (exact form) does not call its 1-ulp erf: its kernels approximate erf by
# polynomials — Abramowitz & Stegun 7.1.26 (truncation error 1.5e-7 before float32 rounding)
# in ATen's vectorized kernel and in oneDNN below AVX-512, a minimax polynomial in oneDNN on
# AVX-512 (gelu_erf_minimax_approx, no documented bound). This one is measured, not derived:
# over 4.8e7 float32 points in [−12, 12], forward and backward, with and without oneDNN,
# oneDNN limited to AVX2 / AVX512_CORE and ATen to AVX2 / scalar code, the absolute error
# they add to erf beyond 1 ulp is at most 6.2e-7 (oneDNN's minimax polynomial; A&S: 4.6e-7).
# Pass as ``ErrorBound(extra_abs=TORCH_GELU_ERF)`` where torch's GELU runs.
TORCH_GELU_ERF = {"erf": 1e-6}

# ------------------------------------------------------------------ comparing


def assert_within(actual, expected, bound, what: str = "") -> float:
    """Assert ``|actual − expected| ≤ bound`` elementwise (equal values, infinities and NaNs
    included, always pass). Returns the margin: the largest |difference| / bound (≤ 1)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} vs {e.shape}"
    b = np.broadcast_to(np.asarray(bound, dtype=np.float64), a.shape)
    with np.errstate(invalid="ignore"):
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same, 0.0, np.abs(a - e))
        ratio = np.where(diff == 0, 0.0, diff / np.where(b > 0, b, np.nan))
    if np.isnan(b[diff > 0]).any():
        raise AssertionError(f"{what}: no error bound (the memory of a value changed behind "
                             f"the error analysis)")
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    worst = float(ratio.max()) if ratio.size else 0.0
    if worst > 1.0:
        i = np.unravel_index(int(np.argmax(ratio)), a.shape)
        raise AssertionError(
            f"{what}: |difference| exceeds the derived bound by {worst:.3g}x at {i}: "
            f"{a[i]!r} vs {e[i]!r}, difference {diff[i]:.3e}, bound {b[i]:.3e} "
            f"({int((ratio > 1).sum())} of {a.size} elements outside)")
    return worst


# ------------------------------------------------------------------ running error analysis


class ErrorBound(DispatchMode):
    """A dispatch mode that follows a dyngrad computation and bounds, per element, the
    rounding error of every tensor it produces relative to exact arithmetic on the same
    inputs. Tensors it did not see (inputs, parameters, gradients fed in) count as exact.

    ``extra_abs``: an absolute error to add to a library function's result, for a kernel
    that is less accurate than :data:`ULPS` says; ``extra_roundings``: roundings (u·|y|
    each) to add to a primitive's result, where the other library evaluates the same value
    by a formula with more roundings. Both are given at the call site, with the reason.
    ``scalar_roundings``: Python numbers meeting a float32 tensor carry, besides their own
    rounding to float32, this many float32 roundings of their value — for an API where the
    other library forms the number in float32 while dyngrad folds it in float64 (torch's
    ``add(x, c, alpha=a)`` computes a·c in float32).

    Use ``with ErrorBound() as eb:`` around forward, backward and optimizer steps (one
    mode may be entered many times; bounds carry over), then ``eb.bound(t)``. In-place
    writes are followed, through views too; a tensor whose memory changed behind the mode's
    back (an alias it was not told of) has no bound (NaN), and comparing it fails.
    """

    transparent = True

    def __init__(self, extra_abs: dict | None = None, scalar_roundings: int = 0,
                 extra_roundings: dict | None = None) -> None:
        self.extra_abs = dict(extra_abs or {})
        self.scalar_roundings = scalar_roundings
        self.extra_roundings = dict(extra_roundings or {})
        self._bounds: dict[int, tuple] = {}   # id -> (tensor, version, bound)
        self._ctx = None

    def __enter__(self) -> ErrorBound:
        self._ctx = push_mode(self)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    # ---- bookkeeping
    def _set(self, t: Tensor, e) -> None:
        e = np.broadcast_to(np.asarray(e, dtype=np.float64), t.shape).copy()
        self._bounds[id(t)] = (t, t._storage.version, e)

    def bound(self, t) -> np.ndarray:
        """The error bound of tensor ``t``: zeros if the mode never saw it being made, NaN
        where its memory changed behind the mode's back (then no bound is known)."""
        entry = self._bounds.get(id(t))
        if entry is None or entry[0] is not t:
            return np.zeros(t.shape)
        if entry[1] != t._storage.version:
            return np.full(t.shape, np.nan)
        return entry[2]

    def _operand(self, x, out_dtype):
        """(value, bound) of a primitive's operand; a Python number is rounded to the
        result's float dtype, and that rounding is its error."""
        if isinstance(x, Tensor):
            return x._data, self.bound(x)
        if isinstance(x, (bool, int, float)) and np.dtype(out_dtype).kind == "f":
            r = float(np.asarray(x, dtype=out_dtype))
            if not math.isfinite(r):
                return x, 0.0
            more = gamma(self.scalar_roundings, unit_roundoff(out_dtype)) * abs(float(x))
            return x, abs(float(x) - r) + float(more)
        return x, 0.0

    # ---- the mode protocol
    def dispatch(self, prim, args, params):
        with suspend(self):
            out = dispatch(prim, *args, **params)
        rule = RULES.get(prim.name)
        if rule is None:
            raise NotImplementedError(f"ErrorBound: no rule for primitive {prim.name!r}")
        y = out._data
        vals, errs = zip(*(self._operand(a, y.dtype) for a in args)) if args else ((), ())
        with np.errstate(all="ignore"):
            e = rule(self, y, list(vals), list(errs), params)
            more = self.extra_roundings.get(prim.name)
            if more and y.dtype.kind == "f":
                e = e + np.where(np.isfinite(y), more * unit_roundoff(y.dtype) * np.abs(y), 0.0)
        self._set(out, e)
        return out

    def on_write(self, tensor, what, value) -> None:
        if what == "data" and value is not None:
            self._set(tensor, self.bound(value))
        if what != "inplace":
            return
        base = tensor._base
        if base is not None:  # write the new bound into the base's, through the same view
            eb = self.bound(base).copy()
            view = eb
            for prim, params in tensor._view_chain:
                view = prim.impl(view, **params)
            if np.shares_memory(view, eb) and view.flags.writeable:
                view[...] = self.bound(value)
            else:
                eb[...] = np.nan
            self._set(base, eb)
        self._set(tensor, self.bound(value))

    def on_attr(self, owner, name, value) -> None:
        if name in ("detach", "data") and id(owner) in self._bounds and value is not None:
            self._set(value, self.bound(owner))

    # ---- helpers for the rules
    def rounding(self, y, name: str | None = None) -> np.ndarray:
        """The rounding error of result ``y``: half an ulp for a correctly rounded operation,
        ``ULPS[name]`` ulps (plus ``extra_abs[name]`` and float ``tiny``) for a library
        function."""
        if not np.issubdtype(y.dtype, np.floating):
            return np.zeros(y.shape)
        k = 0.5 if name is None else ULPS[name]
        r = k * ulp(y, y.dtype) + self.extra_abs.get(name, 0.0)
        if name is not None:  # below the normal range kernels may flush or overflow inside
            r = r + np.finfo(y.dtype).tiny
        return np.where(np.isfinite(y), r, 0.0)  # inf and nan: compared for equality


# ---- rules: rule(eb, y, values, errors, params) -> bound of y (first order)


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def _flip(a, ea, b, eb_):
    """1 where the comparison of a and b may come out differently in exact arithmetic."""
    gap = np.abs(_f64(a) - _f64(b))
    tol = ea + eb_
    return np.where(np.isnan(tol), np.nan, (gap <= tol) & (tol > 0))


def _unary(name, deriv):
    def rule(eb, y, v, e, p):
        x = _f64(v[0])
        return np.abs(deriv(x, _f64(y))) * e[0] + eb.rounding(y, name)
    return rule


def _exact_unary(eb, y, v, e, p):
    return e[0]


def _sign(eb, y, v, e, p):
    x = _f64(v[0])
    return np.where((np.abs(x) <= e[0]) & (e[0] > 0), 2.0, 0.0)


def _step(fn):
    """floor, ceil, round: exact, unless the operand's interval holds a jump (of 1)."""
    def rule(eb, y, v, e, p):
        x = _f64(v[0])
        return np.where(fn(x - e[0]) != fn(x + e[0]), 1.0, 0.0)
    return rule


def _sqrt(eb, y, v, e, p):
    x = _f64(v[0])
    prop = np.minimum(np.where(x > 0, e[0] / (2 * np.sqrt(x)), np.inf), np.sqrt(e[0]))
    return prop + eb.rounding(y, "sqrt")


def _sigmoid(eb, y, v, e, p):
    # dyngrad (numpy): E = exp(−|x|), relative error ≤ 2k·u (k = ULPS['exp']), then
    # 1/(1+E) (two roundings; E's error enters damped by E/(1+E)) and, for x < 0, E·that
    # (E's error undamped, one more rounding): relative ≤ 2k·u·(E/(1+E) + [x<0]) + 3u.
    # torch: 1/(1+exp(−x)), exp's error damped by 1 − s ≤ 1: ≤ 2k·u + 2u, within that.
    x, s = _f64(v[0]), _f64(y)
    big = np.exp(-np.abs(x))
    u = unit_roundoff(y.dtype)
    rel = 2 * ULPS["exp"] * u * (big / (1 + big) + (x < 0)) + 3 * u
    tiny = np.finfo(y.dtype).tiny  # exp(−x) overflows for x < −88.7: torch returns 0 there
    return s * (1 - s) * e[0] + np.where(np.isfinite(y), rel * np.abs(s) + tiny, 0.0)


def _cast(eb, y, v, e, p):
    x = _f64(v[0])
    yk, xk = y.dtype.kind, np.asarray(v[0]).dtype.kind
    if yk == "f":
        return e[0] + np.abs(_f64(y) - x) if xk in "fiu" else e[0]
    if yk == "b":                       # x != 0: flips if |x| ≤ e
        return np.where((np.abs(x) <= e[0]) & (e[0] > 0), 1.0, 0.0)
    if xk == "f":                       # truncation toward 0: jumps at the integers
        return np.where(np.trunc(x - e[0]) != np.trunc(x + e[0]), 1.0, 0.0) + 0.0
    return e[0]


def _add(eb, y, v, e, p):
    return e[0] + e[1] + eb.rounding(y)


def _mul(eb, y, v, e, p):
    a, b = _f64(v[0]), _f64(v[1])
    return e[0] * np.abs(b) + np.abs(a) * e[1] + e[0] * e[1] + eb.rounding(y)


def _div(eb, y, v, e, p):
    ab = np.abs(_f64(v[1]))
    prop = (e[0] + np.abs(_f64(y)) * e[1]) / np.where(ab > e[1], ab - e[1], np.nan)
    prop = np.where(e[0] + e[1] == 0, 0.0, prop)
    two = gamma(2, unit_roundoff(y.dtype)) * np.abs(_f64(y)) if y.dtype.kind == "f" else 0.0
    return np.where(np.isnan(prop), np.inf, prop) + np.where(np.isfinite(y), two, 0.0)


def _pow(eb, y, v, e, p):
    a, b, out = _f64(v[0]), _f64(v[1]), _f64(y)
    da = np.where(e[0] > 0, np.abs(b * np.power(a, b - 1)), 0.0)
    db = np.where(e[1] > 0, np.abs(out * np.log(np.abs(a))), 0.0)
    return da * e[0] + db * e[1] + eb.rounding(y, "pow")


def _minmax(eb, y, v, e, p):
    return np.maximum(e[0], e[1])


def _compare(eb, y, v, e, p):
    return _flip(v[0], e[0], v[1], e[1])


def _bitwise(eb, y, v, e, p):
    """Exact on exact operands; a bool result may flip where an operand may; an integer one
    with an uncertain operand is unbounded (any bit may differ)."""
    err = np.maximum(e[0], e[1]) if len(e) == 2 else e[0]
    return err if y.dtype == bool else np.where(err > 0, np.inf, 0.0)


def _where(eb, y, v, e, p):
    c, a, b = v
    ec, ea, eb_ = e
    chosen = np.where(np.asarray(c), ea, eb_)
    return chosen + ec * (np.abs(_f64(a) - _f64(b)) + np.maximum(ea, eb_))


def _movement(eb, y, v, e, p, *, prim):
    errs = [np.broadcast_to(ei, np.shape(vi)) for vi, ei in zip(v, e)]
    kw = dict(p)
    if prim.name == "pad":
        kw["value"] = 0.0
    return np.array(REGISTRY[prim.name].impl(*errs, **kw), dtype=np.float64)


def _sum(eb, y, v, e, p):
    x = np.asarray(v[0])
    n = math.prod(x.shape[a] for a in p["axes"]) if x.ndim else 1
    kw = dict(axis=p["axes"], keepdims=p["keepdims"])
    g = gamma(max(n - 1, 0), unit_roundoff(y.dtype))
    return np.sum(np.broadcast_to(e[0], x.shape), **kw) + g * np.sum(np.abs(_f64(x)), **kw)


def _max(eb, y, v, e, p):
    x = np.asarray(v[0])
    return np.max(np.broadcast_to(e[0], x.shape), axis=p["axes"], keepdims=p["keepdims"])


def _zero(eb, y, v, e, p):
    return 0.0


def _full(eb, y, v, e, p):
    value = p["value"]
    if isinstance(value, float) and y.dtype.kind == "f":
        return abs(value - float(np.asarray(value, dtype=y.dtype)))
    return 0.0


def _gather(eb, y, v, e, p):
    return np.take(np.broadcast_to(e[0], np.shape(v[0])), v[1], axis=p["axis"])


def _scatter_add(eb, y, v, e, p):
    base, idx, src = v
    eb_, _, es = e
    impl = REGISTRY["scatter_add"].impl
    shape_b, shape_s = np.shape(base), np.shape(src)
    prop = impl(np.broadcast_to(eb_, shape_b).astype(np.float64), idx,
                np.broadcast_to(es, shape_s).astype(np.float64), p["axis"])
    count = impl(np.zeros(shape_b), idx, np.ones(shape_s), p["axis"])
    mag = impl(np.abs(_f64(base)), idx, np.abs(_f64(src)), p["axis"])
    return prop + gamma(count, unit_roundoff(y.dtype)) * mag


def _matmul(eb, y, v, e, p):
    a, b = _f64(v[0]), _f64(v[1])
    ea, eb_ = np.broadcast_to(e[0], a.shape), np.broadcast_to(e[1], b.shape)
    mm = REGISTRY["matmul"].impl
    k = a.shape[-2] if p.get("ta", False) else a.shape[-1]
    mag = mm(np.abs(a), np.abs(b), **p)
    prop = mm(np.abs(a), eb_, **p) + mm(ea, np.abs(b), **p)
    return prop + gamma(k, unit_roundoff(y.dtype)) * mag


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

RULES = {
    "neg": _exact_unary, "abs": _exact_unary, "sign": _sign, "floor": _step(np.floor),
    "ceil": _step(np.ceil), "round": _step(np.rint),
    "exp": _unary("exp", lambda x, y: y),
    "log": _unary("log", lambda x, y: 1.0 / x),
    "log1p": _unary("log1p", lambda x, y: 1.0 / (1.0 + x)),
    "sqrt": _sqrt,
    "sin": _unary("sin", lambda x, y: np.cos(x)),
    "cos": _unary("cos", lambda x, y: np.sin(x)),
    "tanh": _unary("tanh", lambda x, y: 1.0 - y * y),
    "sigmoid": _sigmoid,
    "erf": _unary("erf", lambda x, y: _TWO_OVER_SQRT_PI * np.exp(-x * x)),
    "cast": _cast,
    "add": _add, "sub": _add, "mul": _mul, "div": _div, "pow": _pow,
    "maximum": _minmax, "minimum": _minmax,
    "eq": _compare, "ne": _compare, "lt": _compare, "le": _compare, "gt": _compare,
    "ge": _compare,
    "where": _where,
    "bitwise_and": _bitwise, "bitwise_or": _bitwise, "bitwise_xor": _bitwise,
    "bitwise_not": _bitwise, "bitwise_left_shift": _bitwise, "bitwise_right_shift": _bitwise,
    "sum": _sum, "max": _max, "size_of": _zero,
    "full": _full, "iota": _zero, "random": _zero,
    "gather": _gather, "scatter_add": _scatter_add, "index_check": _zero,
    "matmul": _matmul,
}
for _name in ("reshape", "broadcast", "permute", "slice", "pad", "concat"):
    RULES[_name] = (lambda prim: lambda eb, y, v, e, p: _movement(eb, y, v, e, p, prim=prim))(
        REGISTRY[_name])
