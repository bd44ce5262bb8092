"""Reduction primitives (``sum``, ``max`` over axes, and ``size_of``, the element count of
some axes) and the reductions composed from them."""

from __future__ import annotations

import builtins as _py
import functools
from collections import namedtuple

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from . import creation as _c
from . import elementwise as _e
from . import indexing
from . import movement as _m
from .creation import iota_like
from .movement import SUM, check_axes, expand_back, norm_axes, reduced_shape
from .primitive import Primitive


def _max_rule(x, axes, keepdims):
    check_axes(x, axes, "max")
    for a in axes:
        if x.shape[a] == 0:
            raise RuntimeError(f"max: cannot reduce over an empty dimension {a} of shape "
                               f"{list(x.shape)}; there is no identity for max")
    return reduced_shape(x.shape, axes, keepdims), x.dtype


def _max_mask(x, y, axes, keepdims):
    yk = y if keepdims else _m.reshape(y, reduced_shape(x.shape, axes, True))
    mask = _e.cast(_e.eq(x, yk), x.dtype)
    return mask / sum(mask, axes, True)


def _max_vjp(n, g, xs, y):
    p = n.params
    x = xs[0]
    w = _max_mask(x, y, p["axes"], p["keepdims"])
    return (expand_back(g, x.shape, p["axes"], p["keepdims"]) * w,)


def _max_jvp(ts, xs, y, p):
    w = _max_mask(xs[0], y, p["axes"], p["keepdims"])
    return sum(ts[0] * w, p["axes"], p["keepdims"])


MAX = Primitive("max", "reduce", lambda x, axes, keepdims: np.max(x, axis=axes,
                                                                    keepdims=keepdims),
                _max_rule, vjp=_max_vjp, jvp=_max_jvp, save=(0,), save_out=True,
                doc="maximum over axes; the gradient is split evenly among ties (amax)")


def _size_rule(x, axes, dtype):
    check_axes(x, axes, "size_of")
    return (), dtype


def _size_impl(x, axes, dtype):
    return np.array(np.prod([x.shape[a] for a in axes], dtype=np.int64), dtype=dtype.np)


SIZE_OF = Primitive("size_of", "reduce", _size_impl, _size_rule,
                    jvp=lambda ts, xs, y, p: None,
                    doc="the number of elements in ``axes`` of the input, as a 0-d tensor "
                        "(so composites like mean never read a size into Python)")


# ------------------------------------------------------------------ front end


def keepdims_alias(fn):
    """``fn`` also taking numpy's spellings ``keepdims=`` for ``keepdim=`` and ``axis=`` for
    ``dim=`` (PyTorch accepts both; see :func:`~dyngrad.ops.movement.axis_alias`).

    >>> dg.sum(dg.ones(2, 3), axis=1, keepdims=True).shape   # (2, 1)
    """
    @functools.wraps(fn)
    def reduction(*args, keepdims=None, **kwargs):
        if keepdims is not None:
            if "keepdim" in kwargs:
                raise TypeError(f"{fn.__name__}() got both keepdim= and its alias keepdims=")
            kwargs["keepdim"] = keepdims
        if "axis" in kwargs:
            _m.axis_to_dim(fn.__name__, kwargs)
        return fn(*args, **kwargs)
    return reduction


@keepdims_alias
def sum(x, dim=None, keepdim: bool = False, *, dtype=None):
    """Sum over ``dim`` (all dims by default); bool and int sum to int64."""
    axes = norm_axes(dim, x.ndim, "sum")
    if dtype is not None:
        x = _e.cast(x, dtype)
    return dispatch(SUM, x, axes=axes, keepdims=bool(keepdim))


def size_of(x, dim=None, dtype=None) -> Tensor:
    """Number of elements over ``dim`` as a 0-d tensor."""
    d = _dt.as_dtype(dtype) if dtype is not None else (
        x.dtype if x.dtype.is_floating_point else _dt.get_default_dtype())
    return dispatch(SIZE_OF, x, axes=norm_axes(dim, x.ndim, "size_of"), dtype=d)


@keepdims_alias
def mean(x, dim=None, keepdim: bool = False, *, dtype=None):
    """Arithmetic mean over ``dim``."""
    if dtype is not None:
        x = _e.cast(x, dtype)
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be either "
                           f"a floating point or complex dtype. Got: {x.dtype.name}; use "
                           f".float() first")
    return sum(x, dim, keepdim) / size_of(x, dim)


@keepdims_alias
def var(x, dim=None, *, correction=None, unbiased=None, keepdim: bool = False):
    """Variance with Bessel's correction by default (``correction=1``), two-pass."""
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    m = mean(x, dim, keepdim=True)
    d = x - m
    return sum(d * d, dim, keepdim) / _e.maximum(size_of(x, dim) - correction, 0.0)


@keepdims_alias
def std(x, dim=None, *, correction=None, unbiased=None, keepdim: bool = False):
    return _e.sqrt(var(x, dim, correction=correction, unbiased=unbiased, keepdim=keepdim))


@keepdims_alias
def amax(x, dim=None, keepdim: bool = False):
    """Maximum over ``dim``; the gradient is split evenly among tied maxima."""
    return dispatch(MAX, x, axes=norm_axes(dim, x.ndim, "amax"), keepdims=bool(keepdim))


def _flip(x):
    """An order-reversing map of ``x`` that cannot overflow: ¬x for bools, −x for floats, and
    for integers c − x with c = −1 (signed: −1 − x never wraps, even at the minimum) or the
    dtype's maximum (unsigned). Its own inverse."""
    if x.dtype is _dt.bool_:
        return _e.logical_not(x)
    if x.dtype.is_floating_point:
        return -x
    c = -1 if np.iinfo(x.dtype.np).min < 0 else int(np.iinfo(x.dtype.np).max)
    return _e.sub(_e.cast(_c.full((), c, dtype=x.dtype), x.dtype), x)


@keepdims_alias
def amin(x, dim=None, keepdim: bool = False):
    return _flip(amax(_flip(x), dim, keepdim))


MaxResult = namedtuple("MaxResult", ["values", "indices"])


def _arg_extreme(x, dim, keepdim, largest: bool, op: str):
    if dim is None:
        out = _arg_extreme(_m.reshape(x, (-1,)), 0, False, largest, op)
        return _m.reshape(out, (1,) * x.ndim) if keepdim else out  # PyTorch: all dims kept
    axis = norm_axes(dim, x.ndim, op)
    if x.ndim == 0:
        return _e.cast(_e.mul(x, 0), _dt.int64)
    axis = axis[0]
    xx = x if largest else _flip(x)
    m = amax(xx, axis, keepdim=True)
    hit = _e.eq(xx, m)
    if xx.dtype.is_floating_point:  # NaN counts as the maximum, as in PyTorch
        hit = _e.logical_or(hit, _e.logical_and(_e.ne(xx, xx), _e.ne(m, m)))
    idx = iota_like(xx, axis)
    big = size_of(xx, axis, dtype=_dt.int64)
    cand = _e.where(hit, idx, big)
    return -amax(-cand, axis, keepdim)


@keepdims_alias
def argmax(x, dim=None, keepdim: bool = False):
    """Index of the first maximum over ``dim`` (over the flattened tensor by default)."""
    return _arg_extreme(x, dim, keepdim, True, "argmax")


@keepdims_alias
def argmin(x, dim=None, keepdim: bool = False):
    return _arg_extreme(x, dim, keepdim, False, "argmin")


def _max_min(x, dim, keepdim, other, largest):
    if isinstance(dim, Tensor) or other is not None:
        other = dim if other is None else other
        return _e.maximum(x, other) if largest else _e.minimum(x, other)
    if dim is None:
        return amax(x) if largest else amin(x)
    idx = _arg_extreme(x, dim, True, largest, "max" if largest else "min")
    axis = norm_axes(dim, x.ndim, "max")[0] if x.ndim else 0
    values = indexing.take_along_dim(x, idx, axis) if x.ndim else x
    if not keepdim and x.ndim:
        values = _m.squeeze(values, axis)
        idx = _m.squeeze(idx, axis)
    return MaxResult(values, idx)


@keepdims_alias
def max(x, dim=None, keepdim: bool = False, *, other=None):
    """``max(x)``: the maximum; ``max(x, dim)``: (values, indices), the gradient going to the
    returned index; ``max(x, y)``: elementwise maximum."""
    return _max_min(x, dim, keepdim, other, True)


@keepdims_alias
def min(x, dim=None, keepdim: bool = False, *, other=None):
    return _max_min(x, dim, keepdim, other, False)


def _shift(x, dim):
    """The (constant) maximum subtracted for stability; 0 over an empty dim, which has no
    maximum (PyTorch: logsumexp is -inf there, softmax empty)."""
    if _py.any(x.shape[a] == 0 for a in norm_axes(dim, x.ndim, "softmax")):
        return 0.0
    return amax(x, dim, keepdim=True).detach()


@keepdims_alias
def logsumexp(x, dim=None, keepdim: bool = False):
    """log(Σ exp(x)) computed stably (the maximum is subtracted first)."""
    x = _e._float_operand(x)
    m = _shift(x, dim)
    m = _e.where(_e.eq(_e.abs(m), float("inf")), 0.0, m) if isinstance(m, Tensor) else m
    out = _e.log(sum(_e.exp(x - m), dim, keepdim=True)) + m
    return out if keepdim else _m.squeeze_dims(out, norm_axes(dim, x.ndim, "logsumexp"))


def softmax(x, dim: int):
    x = _e._float_operand(x)
    e = _e.exp(x - _shift(x, dim))
    return e / sum(e, dim, keepdim=True)


def log_softmax(x, dim: int):
    x = _e._float_operand(x)
    shifted = x - _shift(x, dim)
    return shifted - _e.log(sum(_e.exp(shifted), dim, keepdim=True))


@keepdims_alias
def norm(x, p=2, dim=None, keepdim: bool = False):
    """Vector p-norm over ``dim`` (p = 1, 2, inf, or any positive number); the gradient of
    the 2-norm at zero is zero, as in PyTorch."""
    x = _e._float_operand(x)
    if p == 2 or p == "fro":
        s = sum(x * x, dim, keepdim)
        zero = _e.eq(s, 0.0)
        return _e.where(zero, 0.0, _e.sqrt(_e.where(zero, 1.0, s)))
    if p == 1:
        return sum(_e.abs(x), dim, keepdim)
    if p == float("inf"):
        return amax(_e.abs(x), dim, keepdim)
    if p == float("-inf"):
        return amin(_e.abs(x), dim, keepdim)
    if isinstance(p, (int, float)) and p > 0:
        return _e.pow(sum(_e.pow(_e.abs(x), float(p)), dim, keepdim), 1.0 / p)
    raise ValueError(f"norm: unsupported p={p!r}; use 1, 2, inf, -inf or a positive number")


@keepdims_alias
def prod(x, dim=None, keepdim: bool = False):
    """Product over ``dim`` by pairwise multiplication (exact gradients through zeros)."""
    if x.dtype.category < 2 and x.dtype is not _dt.int64:  # like sum: the product of
        x = _e.cast(x, _dt.int64)                           # bools and ints is int64
    if dim is None:
        out = prod(_m.reshape(x, (-1,)), 0)
        return _m.reshape(out, (1,) * x.ndim) if keepdim else out
    if not isinstance(dim, (int, np.integer)):  # else only the first dim would be reduced
        raise TypeError(f"prod(): argument 'dim' must be int, not {type(dim).__name__}; "
                        f"reduce one dim at a time")
    axis = norm_axes(dim, x.ndim, "prod")[0] if x.ndim else None
    if axis is None:
        return x.clone()
    n = x.shape[axis]
    one = 1 if not x.dtype.is_floating_point else 1.0
    while n > 1:
        if n % 2:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (0, 1)
            x = _m.pad(x, pad, value=one)
            n += 1
        half = n // 2
        a = _m.narrow(x, axis, 0, half)
        b = _m.narrow(x, axis, half, half)
        x = a * b
        n = half
    if n == 0:  # the empty product is 1 (as Σ∅ + 1, so the result stays in the graph)
        x = sum(x, axis, keepdim=True) + one
    return x if keepdim else _m.squeeze(x, axis)


@keepdims_alias
def all(x, dim=None, keepdim: bool = False):
    """True where every element over ``dim`` is non-zero."""
    return _e.eq(sum(_e.logical_not(x), dim, keepdim), 0)


@keepdims_alias
def any(x, dim=None, keepdim: bool = False):
    return _e.gt(sum(_e.cast(x, _dt.bool_), dim, keepdim), 0)
