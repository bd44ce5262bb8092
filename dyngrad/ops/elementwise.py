"""Elementwise primitives (unary, binary, comparisons, ``where``, ``cast``) and their
front-end functions, which apply PyTorch's type promotion before dispatching."""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..dispatch import STATE, dispatch
from ..dtypes import DType
from ..special import erf as _np_erf
from ..tensor import Tensor
from . import movement
from .creation import tensor
from .movement import SUM, norm_axes, sum_to
from .primitive import Primitive, quiet

# ------------------------------------------------------------------ shape rules


def broadcast_shapes(*shapes: tuple, op: str = "broadcast") -> tuple:
    """numpy broadcasting of shapes, with PyTorch's error message."""
    ndim = max(len(s) for s in shapes)
    out = []
    for k in range(-ndim, 0):
        size = 1
        for s in shapes:
            if len(s) >= -k:
                d = s[k]
                if d != 1:
                    if size != 1 and d != size:
                        a, b = size, d
                        raise RuntimeError(
                            f"{op}: the size of tensor a ({a}) must match the size of tensor b "
                            f"({b}) at non-singleton dimension {ndim + k}; shapes "
                            f"{' and '.join(str(list(x)) for x in shapes)} cannot be broadcast")
                    size = d
        out.append(size)
    return tuple(out)


def _shape_of(x) -> tuple:
    return getattr(x, "shape", ())


def _dtype_of(xs) -> DType:
    for x in xs:
        d = getattr(x, "dtype", None)
        if isinstance(d, DType):
            return d
    return _dt.result_type(*xs)


def _same_rule(name: str, float_only: bool = False, no_bool: bool = False):
    def rule(x, **_):
        d = _dtype_of((x,))
        if float_only and not d.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor, got {d.name}")
        if no_bool and d is _dt.bool_:
            raise TypeError(f"{name}: not supported for bool tensors")
        return _shape_of(x), d
    return rule


def _binary_rule(name: str, out_dtype: DType | None = None, float_only: bool = False):
    def rule(a, b, **_):
        shape = broadcast_shapes(_shape_of(a), _shape_of(b), op=name)
        da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
        if isinstance(da, DType) and isinstance(db, DType) and da is not db:
            raise TypeError(f"{name}: operands must have one dtype after promotion, got "
                            f"{da.name} and {db.name}")
        d = _dtype_of((a, b))
        if float_only and not d.is_floating_point:
            raise TypeError(f"{name}: expected floating-point operands, got {d.name}")
        return shape, out_dtype or d
    return rule


# ------------------------------------------------------------------ helpers for rules

_q = quiet


def _t(ts, i):
    return ts[i] if i < len(ts) else None


# ------------------------------------------------------------------ unary primitives

def _unary(name, impl, vjp, jvp, *, save=(), save_out=False, float_only=True, no_bool=False,
           doc=""):
    return Primitive(name, "elementwise", impl, _same_rule(name, float_only, no_bool),
                     vjp=vjp, jvp=jvp, save=save, save_out=save_out, doc=doc)


NEG = _unary("neg", np.negative, lambda n, g, xs, y: (-g,),
             lambda ts, xs, y, p: -ts[0], float_only=False, no_bool=True)
ABS = _unary("abs", np.abs, lambda n, g, xs, y: (g * sign(xs[0]),),
             lambda ts, xs, y, p: ts[0] * sign(xs[0]), save=(0,), float_only=False)
SIGN = _unary("sign", np.sign, lambda n, g, xs, y: (g * 0.0,),
              lambda ts, xs, y, p: ts[0] * 0.0, float_only=False, no_bool=True)
FLOOR = _unary("floor", np.floor, lambda n, g, xs, y: (g * 0.0,),
               lambda ts, xs, y, p: ts[0] * 0.0)
ROUND = _unary("round", np.rint, lambda n, g, xs, y: (g * 0.0,),
               lambda ts, xs, y, p: ts[0] * 0.0,
               doc="round to the nearest integer, halves to even (np.rint, torch.round)")
CEIL = _unary("ceil", np.ceil, lambda n, g, xs, y: (g * 0.0,),
              lambda ts, xs, y, p: ts[0] * 0.0)
EXP = _unary("exp", _q(np.exp), lambda n, g, xs, y: (g * y,),
             lambda ts, xs, y, p: ts[0] * y, save_out=True)
LOG = _unary("log", _q(np.log), lambda n, g, xs, y: (g / xs[0],),
             lambda ts, xs, y, p: ts[0] / xs[0], save=(0,))
LOG1P = _unary("log1p", _q(np.log1p), lambda n, g, xs, y: (g / (xs[0] + 1.0),),
               lambda ts, xs, y, p: ts[0] / (xs[0] + 1.0), save=(0,))
SQRT = _unary("sqrt", _q(np.sqrt), lambda n, g, xs, y: (g / (y * 2.0),),
              lambda ts, xs, y, p: ts[0] / (y * 2.0), save_out=True)
SIN = _unary("sin", _q(np.sin), lambda n, g, xs, y: (g * cos(xs[0]),),
             lambda ts, xs, y, p: ts[0] * cos(xs[0]), save=(0,))
COS = _unary("cos", _q(np.cos), lambda n, g, xs, y: (-g * sin(xs[0]),),
             lambda ts, xs, y, p: -ts[0] * sin(xs[0]), save=(0,))
TANH = _unary("tanh", np.tanh, lambda n, g, xs, y: (g * (1.0 - y * y),),
              lambda ts, xs, y, p: ts[0] * (1.0 - y * y), save_out=True)


# Note: the inverse trigonometric functions are primitives, not composites: their
# derivatives are infinite at the domain's edge (asin'(±1) = inf) where any composition of
# sqrt, log or atan2 would give inf·0 = NaN; the rules below are PyTorch's derivatives.yaml
# formulas, which give inf at ±1 and NaN outside [-1, 1].


def _rsqrt_one_minus_sq(x):
    return 1.0 / sqrt(1.0 - x * x)


ASIN = _unary("asin", _q(np.arcsin), lambda n, g, xs, y: (g * _rsqrt_one_minus_sq(xs[0]),),
              lambda ts, xs, y, p: ts[0] * _rsqrt_one_minus_sq(xs[0]), save=(0,),
              doc="inverse sine on [-1, 1] (NaN outside); derivative 1/√(1−x²), inf at ±1")
ACOS = _unary("acos", _q(np.arccos), lambda n, g, xs, y: (-g * _rsqrt_one_minus_sq(xs[0]),),
              lambda ts, xs, y, p: -ts[0] * _rsqrt_one_minus_sq(xs[0]), save=(0,),
              doc="inverse cosine on [-1, 1] (NaN outside); derivative −1/√(1−x²)")
ATAN = _unary("atan", _q(np.arctan), lambda n, g, xs, y: (g / (xs[0] * xs[0] + 1.0),),
              lambda ts, xs, y, p: ts[0] / (xs[0] * xs[0] + 1.0), save=(0,),
              doc="inverse tangent, in (−π/2, π/2); derivative 1/(1+x²)")


def _np_sigmoid(x):
    """1/(1+exp(-x)) without overflow: exp(-|x|) is never large."""
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(x))
        pos = np.divide(1.0, np.add(1.0, e, dtype=x.dtype), dtype=x.dtype)
        return np.where(x >= 0, pos, np.multiply(e, pos, dtype=x.dtype))


SIGMOID = _unary("sigmoid", _np_sigmoid, lambda n, g, xs, y: (g * (y * (1.0 - y)),),
                 lambda ts, xs, y, p: ts[0] * (y * (1.0 - y)), save_out=True,
                 doc="the logistic function; its derivative is y·(1−y), as PyTorch's")
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
ERF = _unary("erf", _np_erf,
             lambda n, g, xs, y: (g * (exp(-(xs[0] * xs[0])) * _TWO_OVER_SQRT_PI),),
             lambda ts, xs, y, p: ts[0] * (exp(-(xs[0] * xs[0])) * _TWO_OVER_SQRT_PI),
             save=(0,), doc="Gauss error function, accurate to float64 (dyngrad.special.erf)")


def _cast_impl(x, dtype):
    return x.astype(dtype.np, order="C")  # C order, so contiguous() (a clone) is contiguous


def _cast_rule(x, dtype):
    return _shape_of(x), dtype


def _cast_vjp(n, g, xs, y):
    src = n.in_dtypes[0]
    return (cast(g, src) if src.is_floating_point else None,)


CAST = Primitive("cast", "elementwise", _cast_impl, _cast_rule, vjp=_cast_vjp,
                 jvp=lambda ts, xs, y, p: cast(ts[0], p["dtype"]),
                 doc="convert to ``dtype`` (always a copy: ``clone`` is a cast to the same "
                     "dtype)")

# ------------------------------------------------------------------ binary primitives


def _vjp_add(n, g, xs, y):
    s = n.in_shapes
    return (sum_to(g, s[0]) if n.needs[0] else None,
            sum_to(g, s[1]) if n.needs[1] else None)


def _vjp_sub(n, g, xs, y):
    s = n.in_shapes
    return (sum_to(g, s[0]) if n.needs[0] else None,
            sum_to(-g, s[1]) if n.needs[1] else None)


def _vjp_mul(n, g, xs, y):
    a, b = xs
    s = n.in_shapes
    return (sum_to(g * b, s[0]) if n.needs[0] else None,
            sum_to(g * a, s[1]) if n.needs[1] else None)


def _vjp_div(n, g, xs, y):
    a, b = xs
    s = n.in_shapes
    return (sum_to(g / b, s[0]) if n.needs[0] else None,
            sum_to(-g * a / (b * b), s[1]) if n.needs[1] else None)


def _atan2_scale(a, b):
    """1/(a² + b²), with 0 where that is inf (the origin, or a² + b² underflowing): PyTorch's
    atan2 gradient there is (0, −0), not NaN."""
    r = 1.0 / (a * a + b * b)
    return where(eq(r, math.inf), 0.0, r)


def _vjp_atan2(n, g, xs, y):
    a, b = xs  # atan2(a, b): d/da = b/(a²+b²), d/db = −a/(a²+b²)
    s = n.in_shapes
    r = _atan2_scale(a, b)
    return (sum_to(g * (b * r), s[0]) if n.needs[0] else None,
            sum_to(g * (-a * r), s[1]) if n.needs[1] else None)


def _jvp_atan2(ts, xs, y, p):
    a, b = xs
    r = _atan2_scale(a, b)
    out = None
    if ts[0] is not None:
        out = ts[0] * (b * r)
    if _t(ts, 1) is not None:
        tb = ts[1] * (-a * r)
        out = tb if out is None else out + tb
    return _bcast_like(out, y)


def _log_base(a):
    """log of pow's base; a Python-number base stays a full-precision Python float (a
    tensor made from it would be float32)."""
    if isinstance(a, Tensor):
        return log(a)
    return math.log(a) if a > 0 else (-math.inf if a == 0 else math.nan)


def _vjp_pow(n, g, xs, y):
    a, b = xs
    s = n.in_shapes
    ga = gb = None
    if n.needs[0]:
        ga = g * (b * pow(a, b - 1.0))
        if isinstance(b, Tensor) or b == 0:  # d(a**0)/da = 0, also at a = 0 (not 0·inf)
            ga = where(eq(b, 0.0), 0.0, ga)
        ga = sum_to(ga, s[0])
    if n.needs[1]:
        gb = sum_to(where(_and(eq(a, 0.0), ge(b, 0.0)), 0.0, g * (y * _log_base(a))), s[1])
    return ga, gb


def _jvp_pow(ts, xs, y, p):
    a, b = xs
    out = None
    if ts[0] is not None:
        out = ts[0] * (b * pow(a, b - 1.0))
        if isinstance(b, Tensor) or b == 0:
            out = where(eq(b, 0.0), 0.0, out)
    if _t(ts, 1) is not None:
        tb = where(_and(eq(a, 0.0), ge(b, 0.0)), 0.0, ts[1] * (y * _log_base(a)))
        out = tb if out is None else out + tb
    return out


def _vjp_minmax(is_max):
    def vjp(n, g, xs, y):
        a, b = xs
        s = n.in_shapes
        win = gt(a, b) if is_max else lt(a, b)
        tie = eq(a, b)
        ga = where(tie, g * 0.5, where(win, g, 0.0))
        gb = where(tie, g * 0.5, where(win, 0.0, g))
        return (sum_to(ga, s[0]) if n.needs[0] else None,
                sum_to(gb, s[1]) if n.needs[1] else None)

    def jvp(ts, xs, y, p):
        a, b = xs
        win = gt(a, b) if is_max else lt(a, b)
        tie = eq(a, b)
        ta = ts[0] if ts[0] is not None else 0.0
        tb = _t(ts, 1) if _t(ts, 1) is not None else 0.0
        return where(tie, (ta + tb) * 0.5, where(win, ta, tb)) * 1.0
    return vjp, jvp


def _lin_jvp(sign_b):
    def jvp(ts, xs, y, p):
        ta, tb = ts[0], _t(ts, 1)
        if tb is None:
            return _bcast_like(ta, y)
        tb = tb if sign_b > 0 else -tb
        return _bcast_like(tb, y) if ta is None else _bcast_like(ta + tb, y)
    return jvp


def _bcast_like(t, y):
    return t if t.shape == y.shape else movement.expand(t, y.shape)


def _jvp_mul(ts, xs, y, p):
    a, b = xs
    out = None
    if ts[0] is not None:
        out = ts[0] * b
    if _t(ts, 1) is not None:
        out = a * ts[1] if out is None else out + a * ts[1]
    return _bcast_like(out, y)


def _jvp_div(ts, xs, y, p):
    a, b = xs
    out = None
    if ts[0] is not None:
        out = ts[0] / b
    if _t(ts, 1) is not None:
        tb = -ts[1] * a / (b * b)
        out = tb if out is None else out + tb
    return _bcast_like(out, y)


def save_other(needs) -> tuple:
    """For products: input i's gradient uses the other input, so save input i only when the
    other one needs a gradient (``x * 2`` with x requiring grad saves nothing of x)."""
    return tuple(i for i, other in ((0, 1), (1, 0)) if needs[other])


def _save_div(needs) -> tuple:
    """d(a/b)/da uses b; d(a/b)/db uses a and b."""
    return (0, 1) if needs[1] else ((1,) if needs[0] else ())


def _binary_prim(name, impl, vjp, jvp, save=(0, 1), save_out=False, float_only=False):
    return Primitive(name, "elementwise", impl, _binary_rule(name, float_only=float_only),
                     vjp=vjp, jvp=jvp, save=save, save_out=save_out)


ADD = _binary_prim("add", _q(np.add), _vjp_add, _lin_jvp(1), save=())
SUB = _binary_prim("sub", _q(np.subtract), _vjp_sub, _lin_jvp(-1), save=())
MUL = _binary_prim("mul", _q(np.multiply), _vjp_mul, _jvp_mul, save=save_other)
DIV = _binary_prim("div", _q(np.true_divide), _vjp_div, _jvp_div, save=_save_div,
                   float_only=True)
def _pow_impl(a, b):
    """np.power, except that integer powers with negative tensor exponents follow PyTorch
    (1/aⁿ truncated: 1 for a = 1, ±1 for a = -1, else 0) where numpy raises."""
    if isinstance(b, np.ndarray) and b.dtype.kind == "i" and np.asarray(a).dtype.kind in "ib":
        neg = b < 0
        if neg.any():  # (in the operands' type: numpy's power wraps as it does)
            dt = np.result_type(a, b)
            with np.errstate(all="ignore"):
                out = np.power(np.asarray(a, dtype=dt), np.where(neg, 0, b).astype(dt))
            inv = np.where(a == 1, 1, np.where(a == -1, np.where(b % 2 == 0, 1, -1), 0))
            return np.where(neg, inv, out).astype(dt)
    with np.errstate(all="ignore"):
        return np.power(a, b)


POW = _binary_prim("pow", _pow_impl, _vjp_pow, _jvp_pow, save_out=True)
ATAN2 = _binary_prim("atan2", _q(np.arctan2), _vjp_atan2, _jvp_atan2, float_only=True)
_maxv, _maxj = _vjp_minmax(True)
_minv, _minj = _vjp_minmax(False)
MAXIMUM = _binary_prim("maximum", np.maximum, _maxv, _maxj)
MINIMUM = _binary_prim("minimum", np.minimum, _minv, _minj)


def _cmp(name, impl):
    return Primitive(name, "elementwise", impl, _binary_rule(name, out_dtype=_dt.bool_))


EQ = _cmp("eq", np.equal)
NE = _cmp("ne", np.not_equal)
LT = _cmp("lt", np.less)
LE = _cmp("le", np.less_equal)
GT = _cmp("gt", np.greater)
GE = _cmp("ge", np.greater_equal)


def _where_rule(c, a, b):
    shape = broadcast_shapes(_shape_of(c), _shape_of(a), _shape_of(b), op="where")
    if getattr(c, "dtype", _dt.bool_) is not _dt.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got {c.dtype.name}")
    da, db = getattr(a, "dtype", None), getattr(b, "dtype", None)
    if isinstance(da, DType) and isinstance(db, DType) and da is not db:
        raise TypeError(f"where: expected one dtype for both branches, got {da.name} and "
                        f"{db.name}")
    return shape, _dtype_of((a, b))


def _where_vjp(n, g, xs, y):
    c = xs[0]
    s = n.in_shapes
    return (None,
            sum_to(where(c, g, 0.0), s[1]) if n.needs[1] else None,
            sum_to(where(c, 0.0, g), s[2]) if n.needs[2] else None)


def _where_jvp(ts, xs, y, p):
    c = xs[0]
    ta = _t(ts, 1) if _t(ts, 1) is not None else 0.0
    tb = _t(ts, 2) if _t(ts, 2) is not None else 0.0
    return _bcast_like(where(c, ta, tb) * 1.0, y)


WHERE = Primitive("where", "elementwise", np.where, _where_rule, vjp=_where_vjp,
                  jvp=_where_jvp, save=(0,))

# ------------------------------------------------------------------ front end


def _literal(x):
    """A Python/numpy number as a weak Python scalar, or None if ``x`` is not a number."""
    if isinstance(x, np.generic):  # before float: np.float64 subclasses float but is strong
        return x.item() if x.dtype.kind in "biuf" else None
    if isinstance(x, (bool, int, float)):
        return x
    return None


def as_operand(x, op: str):
    """Tensor or weak scalar for a binary op; arrays and lists become constant tensors."""
    if isinstance(x, Tensor):
        return x
    lit = _literal(x)
    if lit is not None:
        return lit
    if isinstance(x, (np.ndarray, list, tuple)):
        return tensor(x)
    raise TypeError(f"{op}: unsupported operand of type {type(x).__name__}; expected a Tensor "
                    f"or a number")


def promote_args(op: str, *xs, floating: bool = False):
    """Cast tensors to the PyTorch result type of ``xs`` (scalars stay weak literals)."""
    xs = [as_operand(x, op) for x in xs]
    dt = _dt.result_type(*xs)
    if floating and not dt.is_floating_point:
        dt = _dt.get_default_dtype()
    out = []
    for x in xs:
        if isinstance(x, Tensor):
            if x._data.dtype is not dt.np:
                x = cast(x, dt)
        elif not dt.is_floating_point and isinstance(x, float):
            pass  # cannot happen: a float literal makes dt floating
        out.append(x)
    return out, dt


def _binary(prim, a, b, floating=False):
    # fast paths: same-dtype tensors, or a float tensor with a Python number
    if isinstance(a, Tensor):
        kind = a._data.dtype.kind
        if isinstance(b, Tensor):
            if a._data.dtype is b._data.dtype and (kind == "f" or not floating):
                return dispatch(prim, a, b)
        elif kind == "f" and type(b) in (float, int):
            return dispatch(prim, a, b)
    elif isinstance(b, Tensor) and b._data.dtype.kind == "f" and type(a) in (float, int):
        return dispatch(prim, a, b)
    (a, b), dt = promote_args(prim.name, a, b, floating=floating)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = tensor(a, dtype=dt)
    return dispatch(prim, a, b)


def _float_unary(prim, x):
    if not isinstance(x, Tensor):
        x = as_operand(x, prim.name)
        if not isinstance(x, Tensor):
            x = tensor(x)
    if not x.dtype.is_floating_point:
        x = cast(x, _dt.get_default_dtype())
    return dispatch(prim, x)


def _scaled(b, alpha):
    """alpha·b; for a Python number b the product stays a Python number (weak, full
    precision) instead of becoming a float32 tensor."""
    if alpha == 1:
        return b
    lit = _literal(b)
    return lit * alpha if lit is not None else mul(b, alpha)


def add(a, b, *, alpha=1):
    """a + alpha·b with broadcasting and PyTorch promotion."""
    return _binary(ADD, a, _scaled(b, alpha))


def _is_bool(x) -> bool:
    return isinstance(x, (bool, np.bool_)) or getattr(x, "dtype", None) is _dt.bool_


def sub(a, b, *, alpha=1):
    if _is_bool(a) or _is_bool(b):  # PyTorch refuses any bool operand, not just two
        raise TypeError("sub: subtraction, the `-` operator, with a bool tensor is not "
                        "supported; to invert a mask use the `~` operator or logical_not()")
    return _binary(SUB, a, _scaled(b, alpha))


def mul(a, b):
    return _binary(MUL, a, b)


def div(a, b, *, rounding_mode: str | None = None):
    """True division (integers give float32, as in PyTorch); ``rounding_mode='floor'``."""
    if rounding_mode == "floor":
        return floor_divide(a, b)
    if rounding_mode is not None:
        raise ValueError(f"div: rounding_mode must be None or 'floor', got {rounding_mode!r}")
    return _binary(DIV, a, b, floating=True)


def pow(a, b):
    if _is_bool(a) and _is_bool(b):  # numpy would make an int8 result; PyTorch refuses
        raise TypeError("pow: not implemented for bool operands; convert with .long() first")
    return _binary(POW, a, b)


def maximum(a, b):
    return _binary(MAXIMUM, a, b)


def minimum(a, b):
    return _binary(MINIMUM, a, b)


def eq(a, b):
    return _binary(EQ, a, b)


def ne(a, b):
    return _binary(NE, a, b)


def lt(a, b):
    return _binary(LT, a, b)


def le(a, b):
    return _binary(LE, a, b)


def gt(a, b):
    return _binary(GT, a, b)


def ge(a, b):
    return _binary(GE, a, b)


def neg(x):
    return dispatch(NEG, x)


def abs(x):
    return dispatch(ABS, x)


def sign(x):
    if x.dtype is _dt.bool_:  # sign of a bool is itself (PyTorch); numpy has no bool loop
        return x.clone()
    return dispatch(SIGN, x)


def floor(x):
    if not x.dtype.is_floating_point:
        return x.clone()
    return dispatch(FLOOR, x)


def ceil(x):
    """The smallest integer not below each element (a float result for a float tensor;
    integer and bool tensors come back unchanged, as a copy). The gradient is zero.

    >>> dg.ceil(dg.tensor([-1.5, -0.3, 0.2, 2.0]))
    tensor([-1., -0.,  1.,  2.])
    """
    if not x.dtype.is_floating_point:
        return x.clone()
    return dispatch(CEIL, x)


def round(x, *, decimals: int = 0):
    """Round to the nearest integer, halves to even (``np.rint``; ``torch.round`` too), or
    to ``decimals`` decimal places exactly as PyTorch does: ``round(x·10ᵈ) / 10ᵈ``, and for
    ``decimals < 0`` ``round(x / 10⁻ᵈ) · 10⁻ᵈ``, each step rounded in ``x``'s dtype (so
    ``round(x, decimals=1)`` of 0.25 is 0.2). Integer and bool tensors come back unchanged
    (a copy) when ``decimals`` is 0. The gradient is zero.

    >>> dg.round(dg.tensor([-1.5, -0.5, 0.5, 1.5, 2.5]))
    tensor([-2., -0.,  0.,  2.,  2.])
    >>> dg.round(dg.tensor([1234.5678], dtype=dg.float64), decimals=-2)
    tensor([1200.], dtype=dyngrad.float64)
    """
    if not isinstance(decimals, (int, np.integer)) or isinstance(decimals, (bool, np.bool_)):
        raise TypeError(f"round(): argument 'decimals' must be int, not "
                        f"{type(decimals).__name__}")
    if not x.dtype.is_floating_point:
        if decimals == 0:
            return x.clone()
        raise TypeError(f"round: decimals={decimals} needs a floating-point tensor, got "
                        f"{x.dtype.name}; convert it first (x.double().round(decimals=...))")
    if decimals == 0:
        return dispatch(ROUND, x)
    # Note: 10**|d| is a weak Python number, rounded to x's dtype like PyTorch's constant;
    # beyond float64's range it is inf, which makes every element nan, as in PyTorch.
    places = int(decimals) if decimals > 0 else -int(decimals)
    scale = 10.0 ** places if places <= 308 else math.inf
    if decimals > 0:
        return div(dispatch(ROUND, mul(x, scale)), scale)
    return mul(dispatch(ROUND, div(x, scale)), scale)


def exp(x):
    return _float_unary(EXP, x)


def log(x):
    return _float_unary(LOG, x)


def log1p(x):
    return _float_unary(LOG1P, x)


def sqrt(x):
    return _float_unary(SQRT, x)


def sin(x):
    return _float_unary(SIN, x)


def cos(x):
    return _float_unary(COS, x)


def tanh(x):
    return _float_unary(TANH, x)


def erf(x):
    return _float_unary(ERF, x)


def asin(x):
    """Inverse sine, elementwise: NaN outside [-1, 1]; integer tensors give the default
    float dtype. The gradient 1/√(1−x²) is inf at ±1 and NaN outside (as PyTorch's).

    >>> dg.asin(dg.tensor([-1.0, 0.0, 0.5, 2.0]))
    tensor([-1.5708,  0.0000,  0.5236,     nan])
    """
    return _float_unary(ASIN, x)


def acos(x):
    """Inverse cosine, elementwise, in [0, π]: NaN outside [-1, 1]. The gradient
    −1/√(1−x²) is −inf at ±1.

    >>> dg.acos(dg.tensor([1.0, 0.0, -1.0]))
    tensor([0.0000, 1.5708, 3.1416])
    """
    return _float_unary(ACOS, x)


def atan(x):
    """Inverse tangent, elementwise, in (−π/2, π/2); ±inf give ±π/2.

    >>> dg.atan(dg.tensor([0.0, 1.0, float("inf")]))
    tensor([0.0000, 0.7854, 1.5708])
    """
    return _float_unary(ATAN, x)


def atan2(input, other):
    """The angle of the point (other, input) — ``atan(input / other)`` in the right
    quadrant, in [−π, π] — with numpy's (C99's) signed zeros and infinities; both operands
    broadcast and promote, integers to the default float dtype. The gradient is
    (other, −input)/(input² + other²), and (0, −0) at the origin (as PyTorch's).

    >>> dg.atan2(dg.tensor([1.0, 1.0, -1.0]), dg.tensor([1.0, -1.0, -1.0]))
    tensor([ 0.7854,  2.3562, -2.3562])
    """
    return _binary(ATAN2, input, other, floating=True)


arcsin, arccos, arctan, arctan2 = asin, acos, atan, atan2


def cast(x, dtype) -> Tensor:
    """Convert ``x`` to ``dtype`` (a copy, with gradient between floating dtypes)."""
    return dispatch(CAST, x, dtype=_dt.as_dtype(dtype))


def where(cond, a, b):
    """Elementwise ``a if cond else b`` with broadcasting; a and b promote like a binary op."""
    if not isinstance(cond, Tensor):
        cond = tensor(cond, dtype=_dt.bool_)
    elif cond.dtype is not _dt.bool_:
        cond = cast(cond, _dt.bool_)
    (a, b), dt = promote_args("where", a, b)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = tensor(a, dtype=dt)
    return dispatch(WHERE, cond, a, b)


# ------------------------------------------------------------------ composites


def _and(a, b):
    return mul(a, b) if a.dtype is _dt.bool_ else logical_and(a, b)


def _truth(x):
    """x as bool: a cast for tensors, Python's bool() for numbers (mask & False)."""
    return cast(x, _dt.bool_) if isinstance(x, Tensor) else bool(as_operand(x, "logical"))


def logical_and(a, b):
    return mul(_truth(a), _truth(b))


def logical_or(a, b):
    return maximum(_truth(a), _truth(b))


def logical_xor(a, b):
    return ne(_truth(a), _truth(b))


def logical_not(a):
    return eq(_truth(a), False)


def floor_divide(a, b):
    """Floor division; integers are computed exactly through float64 up to 2**53."""
    (a, b), dt = promote_args("floor_divide", a, b)
    if dt.is_floating_point:
        return floor(div(a, b))
    _check_int_divisor(b, "floor_divide")
    q = floor(div(_as_f64(a), _as_f64(b)))
    return cast(q, dt)


def _check_int_divisor(b, op: str) -> None:
    """Integer division by zero has no result (PyTorch raises ZeroDivisionError too). Under
    a dispatch mode the check is made with ops and ``bool()``, so a tracer sees the read
    (a value guard: a compiled call whose divisor has a zero runs eagerly and raises)."""
    if not isinstance(b, Tensor):
        zero = b == 0
    elif STATE.modes:
        # (``reduce.any``, spelled with the primitives below the reductions)
        hit = cast(eq(b, 0), _dt.bool_)
        n_zero = dispatch(SUM, hit, axes=norm_axes(None, hit.ndim, "sum"), keepdims=False)
        zero = bool(gt(n_zero, 0))
    else:
        zero = bool((b._data == 0).any())
    if zero:
        raise ZeroDivisionError(f"{op}: integer division by zero")


def remainder(a, b):
    """Python's modulo (the sign of the divisor), like ``torch.remainder``."""
    (a, b), dt = promote_args("remainder", a, b)
    if dt.is_floating_point:
        if isinstance(a, (bool, np.bool_)):
            a = float(a)  # a weak Python True/False (sub refuses bools)
        return sub(a, mul(floor(div(a, b)), b))
    _check_int_divisor(b, "remainder")
    fa, fb = _as_f64(a), _as_f64(b)
    return cast(sub(fa, mul(floor(div(fa, fb)), fb)), dt)


def _as_f64(x):
    return cast(x, _dt.float64) if isinstance(x, Tensor) else float(x)


def reciprocal(x):
    return div(1.0, x)


def rsqrt(x):
    return div(1.0, sqrt(x))


def square(x):
    if isinstance(x, Tensor) and x.dtype is _dt.bool_:  # PyTorch: pow(bool, 2) is int64
        x = cast(x, _dt.int64)
    return mul(x, x)


def sigmoid(x):
    """1/(1+exp(-x)), computed without overflow: exp(-|x|) is never large."""
    return _float_unary(SIGMOID, x)


def relu(x):
    """max(x, 0) with PyTorch's gradient: 0 at x = 0 (``maximum``'s tie would split it in
    halves) and passed through at NaN, which stays NaN. (relu(-0.0) is +0.0 here, -0.0 in
    PyTorch.)"""
    if isinstance(x, Tensor) and not x.dtype.is_floating_point:
        return x if x.dtype is _dt.bool_ else maximum(x, 0)  # int64 stays int64 (PyTorch)
    return where(le(x, 0.0), 0.0, x)


def gelu(x, approximate: str = "none"):
    """GELU: x·Φ(x) with the exact erf form, or ``approximate='tanh'``."""
    x = _float_operand(x)
    if approximate == "tanh":
        inner = (x + 0.044715 * (x * x * x)) * math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + tanh(inner))
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return x * (0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0)))))


def _float_operand(x):
    if not isinstance(x, Tensor):
        x = tensor(x)
    if not x.dtype.is_floating_point:
        x = cast(x, _dt.get_default_dtype())
    return x


def clamp(x, min=None, max=None):
    """Limit to [min, max] (either may be None or a tensor). Gradient 1 inside, 0 outside
    (PyTorch's convention; at the boundary the gradient passes)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    out = x
    if min is not None:
        (out_, lo), dt = promote_args("clamp", out, min)
        out = where(lt(out_, lo), lo, out_)
    if max is not None:
        (out_, hi), dt = promote_args("clamp", out, max)
        out = where(gt(out_, hi), hi, out_)
    return out


def masked_fill(x, mask, value):
    """``x`` with ``value`` where ``mask`` is true (mask broadcasts to x)."""
    if isinstance(value, Tensor) and value.ndim:
        raise RuntimeError(f"masked_fill: value must be a number or a 0-d tensor, got shape "
                           f"{list(value.shape)}")
    out = where(mask, cast(value, x.dtype) if isinstance(value, Tensor) else value, x)
    return out if out.dtype is x.dtype else cast(out, x.dtype)


def lerp(start, end, weight):
    """start + weight·(end − start), evaluated from the nearer end as PyTorch does."""
    if isinstance(weight, Tensor):
        return where(lt(abs(weight), 0.5), start + weight * (end - start),
                     end - (end - start) * (1.0 - weight))
    if -0.5 < weight < 0.5:  # not abs(): that is this module's tensor op
        return add(start, mul(sub(end, start), weight))
    return sub(end, mul(sub(end, start), 1.0 - weight))


def addcmul(x, t1, t2, *, value=1):
    """x + value·t1·t2."""
    return add(x, mul(mul(t1, value), t2) if value != 1 else mul(t1, t2))


def addcdiv(x, t1, t2, *, value=1):
    """x + value·(t1 / t2)."""
    q = div(t1, t2)
    return add(x, mul(q, value) if value != 1 else q)
