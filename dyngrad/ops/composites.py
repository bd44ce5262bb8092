"""Tensor functions real scripts touch, composed from the primitives (no record of their
own): ``tril``/``triu``, ``t``, ``swapaxes``, ``meshgrid``, ``sinh``/``cosh``, ``trunc``,
``repeat_interleave``, ``new_zeros`` and friends, and ``type``'s PyTorch names."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

from .. import dtypes as _dt
from ..dispatch import STATE, report_read
from ..tensor import Tensor, _norm_dim
from . import creation as _c
from . import elementwise as _e
from . import movement as _m
from .indexing import index_select


def _triangle(x: Tensor, diagonal: int, op: str, lower: bool) -> Tensor:
    if x.ndim < 2:
        raise RuntimeError(f"{op}: input tensor must have at least 2 dimensions")
    n, m = x.shape[-2:]
    off = _m.reshape(_c.arange(m), (1, m)) - _m.reshape(_c.arange(n), (n, 1))  # j - i
    keep = _e.le(off, int(diagonal)) if lower else _e.ge(off, int(diagonal))
    return _e.where(keep, x, _c.zeros((), dtype=x.dtype))


def tril(input: Tensor, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two dims (elements with j - i <= diagonal); the rest 0.

    >>> dg.tril(dg.ones(3, 3))    # ones on and below the diagonal
    """
    return _triangle(input, diagonal, "tril", True)


def triu(input: Tensor, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two dims (elements with j - i >= diagonal); the rest 0."""
    return _triangle(input, diagonal, "triu", False)


def t(input: Tensor) -> Tensor:
    """The transpose of a matrix; 0-d and 1-d tensors are returned as they are (a view)."""
    if input.ndim > 2:
        raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is "
                           f"{input.ndim}D")
    if input.ndim < 2:
        return _m.permute(input, tuple(range(input.ndim)))
    return _m.transpose(input, 0, 1)


def swapaxes(input: Tensor, axis0: int, axis1: int) -> Tensor:
    """``transpose`` under numpy's name (also ``swapdims``)."""
    return _m.transpose(input, axis0, axis1)


swapdims = swapaxes


def meshgrid(*tensors, indexing: str | None = None) -> tuple:
    """Coordinate grids of 1-d tensors: ``indexing='ij'`` (the default, with PyTorch's
    warning when not given) gives shape (len(a), len(b), ...); ``'xy'`` swaps the first two.

    >>> xs, ys = dg.meshgrid(dg.arange(3), dg.arange(2), indexing="ij")   # both (3, 2)
    """
    if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)):
        tensors = tuple(tensors[0])
    if indexing is None:
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass "
                      "the indexing argument.", UserWarning, stacklevel=2)
        indexing = "ij"
    if indexing not in ("ij", "xy"):
        raise RuntimeError(f"torch.meshgrid: indexing must be one of \"xy\" or \"ij\", but "
                           f"received: {indexing}")
    for t_ in tensors:
        if t_.ndim > 1:
            raise RuntimeError(f"torch.meshgrid: Expected 0D or 1D tensor in the tensor list "
                               f"but got: {list(t_.shape)}")
    if tensors and len({t_.dtype for t_ in tensors}) > 1:
        raise RuntimeError("meshgrid expects all tensors to have the same dtype")
    flat = [_m.reshape(t_, (-1,)) for t_ in tensors]
    axis = list(range(len(flat)))  # where input k varies
    if indexing == "xy" and len(flat) >= 2:
        axis[0], axis[1] = 1, 0
    shape = [0] * len(flat)
    for k, f in enumerate(flat):
        shape[axis[k]] = f.shape[0]
    out = []
    for k, f in enumerate(flat):
        view = [1] * len(flat)
        view[axis[k]] = shape[axis[k]]
        out.append(_m.expand(_m.reshape(f, tuple(view)), tuple(shape)))
    return tuple(out)


def sinh(input: Tensor) -> Tensor:
    """Hyperbolic sine: (e^x - e^-x)/2, and its Taylor series for |x| < 1, where the
    difference would cancel (the series to x^17 is exact to float64 rounding there)."""
    x = _e._float_operand(input)
    small = _e.lt(_e.abs(x), 1.0)
    xs = _e.where(small, x, 0.0)  # (the unused branch stays finite: no inf·0 in backward)
    x2 = xs * xs
    coef = [1.0 / math.factorial(2 * k + 1) for k in range(9)]  # 1/1!, 1/3!, ..., 1/17!
    poly = coef[-1]
    for c in reversed(coef[:-1]):
        poly = poly * x2 + c
    series = xs * poly
    return _e.where(small, series, _e.exp(x) * 0.5 - _e.exp(-x) * 0.5)


def cosh(input: Tensor) -> Tensor:
    """Hyperbolic cosine: (e^x + e^-x)/2 (a sum, so no cancellation)."""
    x = _e._float_operand(input)
    return _e.exp(x) * 0.5 + _e.exp(-x) * 0.5


_BIG = 2.0 ** 28  # |x| from which asinh and acosh are log(2|x|) to float64 rounding
_TINY = 2.0 ** -28  # |x| below which asinh(x) and atanh(x) are x to float64 rounding


def asinh(input: Tensor) -> Tensor:
    """Inverse hyperbolic sine: sign(x)·log1p(|x| + x²/(1 + √(1 + x²))) — the log1p form
    keeps small |x| exact — and log(|x|) + log 2 from 2^28, where x² would overflow. Each
    branch reads an input clamped to its own range, so the unused one stays finite (no
    inf·0 in the backward)."""
    x = _e._float_operand(input)
    a = _e.abs(x)
    big = _e.ge(a, _BIG)
    s = _e.minimum(a, _BIG)
    s2 = s * s
    small = _e.log1p(s + s2 / (_e.sqrt(s2 + 1.0) + 1.0))
    large = _e.log(_e.maximum(a, _BIG)) + math.log(2.0)
    r = _e.where(big, large, small)
    # (below 2^-28, asinh(x) is x to float64 rounding: x itself, with -0.0's sign)
    return _e.where(_e.lt(a, _TINY), x, _e.where(_e.lt(x, 0.0), -r, r))


def acosh(input: Tensor) -> Tensor:
    """Inverse hyperbolic cosine: log1p((x - 1) + √((x - 1)(x + 1))) — exact near 1 — and
    log(x) + log 2 from 2^28; NaN below 1 (as PyTorch), each branch on a clamped input."""
    x = _e._float_operand(input)
    big = _e.ge(x, _BIG)
    s = _e.minimum(x, _BIG)
    t = s - 1.0
    small = _e.log1p(t + _e.sqrt(t * (s + 1.0)))
    large = _e.log(_e.maximum(x, _BIG)) + math.log(2.0)
    return _e.where(big, large, small)


def atanh(input: Tensor) -> Tensor:
    """Inverse hyperbolic tangent, odd: sign(x)·log1p(2|x|/(1 - |x|))/2 (exact for small x;
    on |x|, so log1p's argument never nears -1); ±inf at ±1, NaN beyond (as PyTorch)."""
    x = _e._float_operand(input)
    a = _e.abs(x)
    r = _e.log1p(2.0 * a / (1.0 - a)) * 0.5
    return _e.where(_e.lt(a, _TINY), x, _e.where(_e.lt(x, 0.0), -r, r))


arcsinh, arccosh, arctanh = asinh, acosh, atanh  # (numpy's names, as PyTorch has them)


def isnan(input: Tensor) -> Tensor:
    """Where ``input`` is NaN (a bool tensor; integer and bool inputs have none)."""
    return _e.ne(input, input)  # (NaN is the only value unequal to itself)


def isinf(input: Tensor) -> Tensor:
    """Where ``input`` is +inf or -inf (a bool tensor)."""
    if not input.dtype.is_floating_point:
        return _e.ne(input, input)
    return _e.eq(_e.abs(input), math.inf)


def isfinite(input: Tensor) -> Tensor:
    """Where ``input`` is neither NaN nor infinite (a bool tensor)."""
    if not input.dtype.is_floating_point:
        return _e.eq(input, input)
    return _e.lt(_e.abs(input), math.inf)


def isclose(input: Tensor, other, rtol: float = 1e-05, atol: float = 1e-08,
            equal_nan: bool = False) -> Tensor:
    """Where ``|input - other| <= atol + rtol·|other|`` (a bool tensor, broadcast): infinities
    are close only to themselves, NaN only to NaN with ``equal_nan``; as PyTorch's."""
    if not isinstance(other, Tensor):
        other = _c.as_tensor(other)
    if rtol < 0 or atol < 0:
        raise ValueError(f"isclose: rtol and atol must be non-negative, got rtol={rtol}, "
                         f"atol={atol}")
    same = _e.eq(input, other)  # (exact: equal infinities included)
    a, b = input, other
    if not a.dtype.is_floating_point and not b.dtype.is_floating_point:
        a, b = _e.cast(a, _dt.float64), _e.cast(b, _dt.float64)
    near = _e.le(_e.abs(_e.sub(a, b)), atol + rtol * _e.abs(b))
    out = _e.logical_or(same, _e.logical_and(_e.logical_and(isfinite(a), isfinite(b)), near))
    if equal_nan:
        out = _e.logical_or(out, _e.logical_and(isnan(input), isnan(other)))
    return out


def allclose(input: Tensor, other, rtol: float = 1e-05, atol: float = 1e-08,
             equal_nan: bool = False) -> bool:
    """Whether every element is close (:func:`isclose`), as a Python bool."""
    return bool(isclose(input, other, rtol, atol, equal_nan).all())


def equal(input: Tensor, other: Tensor) -> bool:
    """Whether the two tensors have the same shape and the same elements (a Python bool)."""
    if not isinstance(other, Tensor):
        raise TypeError(f"equal: other must be a Tensor, got {type(other).__name__}")
    return tuple(input.shape) == tuple(other.shape) and bool(_e.eq(input, other).all())


def log2(input: Tensor) -> Tensor:
    """Base-2 logarithm, ``log(x) / log(2)`` (within an ulp or two of PyTorch's)."""
    return _e.div(_e.log(_e._float_operand(input)), math.log(2.0))


def log10(input: Tensor) -> Tensor:
    """Base-10 logarithm, ``log(x) / log(10)`` (within an ulp or two of PyTorch's)."""
    return _e.div(_e.log(_e._float_operand(input)), math.log(10.0))


def trunc(input: Tensor) -> Tensor:
    """Rounds toward zero (``fix``); integer tensors are copied. The gradient is zero."""
    if not input.dtype.is_floating_point:
        return _e.cast(input, input.dtype)
    return _e.where(_e.ge(input, 0.0), _e.floor(input), _e.ceil(input))


fix = trunc


def _read_ints(t: Tensor, what: str) -> np.ndarray:
    """A small integer tensor's values, needed in Python for an output shape; reported to
    the dispatch modes (a tracer guards or falls back, as for any data-dependent shape)."""
    if STATE.modes:
        report_read(t, what)
    return np.asarray(t._data, dtype=np.int64)


def repeat_interleave(input, repeats=None, dim: int | None = None, *, output_size=None):
    """Each element repeated ``repeats`` times along ``dim`` (over the flattened input when
    ``dim`` is None). ``repeats`` is an int or a 1-d tensor with one count per element;
    ``repeat_interleave(counts)`` alone repeats 0..n-1.

    >>> dg.repeat_interleave(dg.tensor([1, 2]), 2)   # tensor([1, 1, 2, 2])
    """
    if repeats is None:  # repeat_interleave(repeats): the indices, repeated
        counts = _read_ints(input, "repeat_interleave")
        if counts.ndim > 1:
            raise RuntimeError("repeat_interleave only accept 1D vector as repeat")
        if (counts < 0).any():
            raise RuntimeError("repeats can not be negative")
        return Tensor._constant(np.repeat(np.arange(counts.shape[0]), counts))
    x = input
    if dim is None:
        x, d = _m.reshape(x, (-1,)), 0
    else:
        d = _norm_dim(dim, x.ndim, "repeat_interleave")
        if x.ndim == 0:
            x = _m.reshape(x, (1,))
    if isinstance(repeats, Tensor) and repeats.ndim == 0:
        repeats = int(_read_ints(repeats, "repeat_interleave"))
    if isinstance(repeats, (int, np.integer)):
        r = int(repeats)
        if r < 0:
            raise RuntimeError("repeats can not be negative")
        y = _m.unsqueeze(x, d + 1)
        shape = list(y.shape)
        shape[d + 1] = r
        y = _m.expand(y, tuple(shape))
        out_shape = list(x.shape)
        out_shape[d] *= r
        return _m.reshape(y, tuple(out_shape))
    counts = _read_ints(repeats if isinstance(repeats, Tensor) else
                        _c.tensor(repeats, dtype=_dt.int64), "repeat_interleave")
    if counts.ndim > 1:
        raise RuntimeError("repeat_interleave only accept 1D vector as repeat")
    n = x.shape[d]
    if counts.shape[0] == 1:
        counts = np.repeat(counts, n)
    if counts.shape[0] != n:
        raise RuntimeError(f"repeats must have the same size as input along dim, but got "
                           f"repeats.size(0) = {counts.shape[0]} and input.size({d}) = {n}")
    if (counts < 0).any():
        raise RuntimeError("repeats can not be negative")
    idx = Tensor._constant(np.repeat(np.arange(n, dtype=np.int64), counts))
    return index_select(x, d, idx)


# ------------------------------------------------------------------ Tensor.new_* and type


def _like(maker):
    @functools.wraps(maker)
    def new(self, *size, dtype=None, device=None, requires_grad: bool = False, **kwargs):
        return maker(*size, dtype=self.dtype if dtype is None else dtype,
                     requires_grad=requires_grad, **kwargs)
    return new


new_zeros = _like(_c.zeros)
new_ones = _like(_c.ones)
new_empty = _like(_c.empty)


def new_full(self, size, fill_value, *, dtype=None, device=None, requires_grad: bool = False):
    """A tensor of ``size`` filled with ``fill_value``, of self's dtype unless given."""
    return _c.full(size, fill_value, dtype=self.dtype if dtype is None else dtype,
                   requires_grad=requires_grad)


def new_tensor(self, data, *, dtype=None, device=None, requires_grad: bool = False):
    """A new tensor of ``data`` (a copy), of self's dtype unless given."""
    return _c.tensor(data, dtype=self.dtype if dtype is None else dtype,
                     requires_grad=requires_grad)


TYPE_NAMES = {"float32": "torch.FloatTensor", "float64": "torch.DoubleTensor",
              "int64": "torch.LongTensor", "int32": "torch.IntTensor",
              "int16": "torch.ShortTensor", "int8": "torch.CharTensor",
              "uint8": "torch.ByteTensor", "bool": "torch.BoolTensor"}
_BY_TYPE_NAME = {v: k for k, v in TYPE_NAMES.items()}


def type_(self, dtype=None, non_blocking: bool = False, **kwargs):
    """``t.type()``: PyTorch's type name (``'torch.FloatTensor'``); ``t.type(dtype)``: the
    tensor cast to ``dtype`` (a dtype, or a name like ``'torch.LongTensor'``), itself when
    it already has it."""
    if dtype is None:
        return TYPE_NAMES[self.dtype.name]
    if isinstance(dtype, str):
        name = dtype.replace("dyngrad.", "torch.")
        if name in _BY_TYPE_NAME:
            dtype = _BY_TYPE_NAME[name]
    d = _dt.as_dtype(dtype)
    return self if d is self.dtype else _e.cast(self, d)


def roll(input: Tensor, shifts, dims=None) -> Tensor:
    """Elements shifted along ``dims`` (cyclically) by ``shifts``; with no ``dims``, the
    flattened tensor is rolled and reshaped back, as PyTorch's ``roll``."""
    if dims is None:
        return roll(input.reshape(-1), shifts, 0).reshape(input.shape)
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    if len(shifts) != len(dims):
        raise RuntimeError(f"roll: shifts and dimensions must align. shifts: {len(shifts)}, "
                           f"dims:{len(dims)}")
    out = input
    for shift, dim in zip(shifts, dims):
        d = _norm_dim(dim, input.ndim, "roll")
        n = input.shape[d]
        if n == 0 or shift % n == 0:
            continue
        k = shift % n
        out = _m.cat([_m.narrow(out, d, n - k, k), _m.narrow(out, d, 0, n - k)], d)
    return out


__all__ = ["roll", "tril", "triu", "t", "swapaxes", "swapdims", "meshgrid", "sinh", "cosh",
           "asinh", "acosh", "atanh", "arcsinh", "arccosh", "arctanh",
           "trunc",
           "fix", "repeat_interleave", "new_zeros", "new_ones", "new_empty", "new_full",
           "new_tensor", "type_", "TYPE_NAMES"]
