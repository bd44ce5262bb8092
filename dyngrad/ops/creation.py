"""Creating tensors: from data (``tensor``, ``from_numpy``), and the creation primitives
``full`` and ``iota`` behind ``zeros ones full arange linspace`` and ``*_like`` (``eye`` is
in ``indexing``), so a tracer sees a constant's shape and recipe rather than a blob of numbers."""

from __future__ import annotations

import numbers

import numpy as np

from .. import dtypes as _dt
from ..dispatch import STATE, dispatch, report_copied, report_new
from ..tensor import Tensor, check_device, storage_over, to_array
from .primitive import Primitive


def shape_arg(shape, op: str) -> tuple:
    """The sizes of a creation function (``zeros(2, 3)`` or ``zeros((2, 3))``) as a tuple."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    out = []
    for s in shape:
        if isinstance(s, Tensor):
            s = int(s)
        if not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"{op}: sizes must be non-negative integers, got {list(shape)}")
        out.append(int(s))
    return tuple(out)


def _full_rule(shape, value, dtype):
    return tuple(shape), dtype


FULL = Primitive("full", "creation",
                 lambda shape, value, dtype: np.full(shape, value, dtype=dtype.np),
                 _full_rule, doc="a tensor of ``shape`` filled with ``value``")


def _iota_impl(shape, axis, start, step, dtype):
    n = shape[axis]
    line = (start + step * np.arange(n, dtype=np.float64)) if isinstance(step, float) or \
        isinstance(start, float) else start + step * np.arange(n, dtype=np.int64)
    line = line.astype(dtype.np)
    view = [1] * len(shape)
    view[axis] = n
    return np.broadcast_to(line.reshape(view), shape).copy()  # a writeable C-order array


IOTA = Primitive("iota", "creation", _iota_impl,
                 lambda shape, axis, start, step, dtype: (tuple(shape), dtype),
                 doc="start + step·i along ``axis``, broadcast over ``shape``")


def dtype_or_default(dtype, fallback=None):
    """``dtype`` as a DType, or the fallback (the default float dtype) when it is None."""
    if dtype is None:
        return fallback or _dt.get_default_dtype()
    return _dt.as_dtype(dtype)


def maybe_requires_grad(t: Tensor, requires_grad: bool, device=None) -> Tensor:
    """``t``, made to require grad if asked (the ``requires_grad=`` of creation functions);
    ``device`` is checked to be the CPU (see Note [devices] in dyngrad/tensor.py)."""
    check_device(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def full(size, fill_value, *, dtype=None, requires_grad: bool = False,
         device=None) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value`` (dtype inferred from the value)."""
    if dtype is None:
        dtype = _dt.default_for_category(_dt.scalar_category(fill_value))
    shape = shape_arg((size,) if isinstance(size, int) else (tuple(size),), "full")
    t = dispatch(FULL, shape=shape, value=fill_value, dtype=_dt.as_dtype(dtype))
    return maybe_requires_grad(t, requires_grad, device)


def zeros(*size, dtype=None, requires_grad: bool = False,
          device=None, **kw) -> Tensor:
    shape = shape_arg(size_keyword(size, kw, "zeros"), "zeros")
    t = dispatch(FULL, shape=shape, value=0, dtype=dtype_or_default(dtype))
    return maybe_requires_grad(t, requires_grad, device)


def ones(*size, dtype=None, requires_grad: bool = False,
         device=None, **kw) -> Tensor:
    shape = shape_arg(size_keyword(size, kw, "ones"), "ones")
    t = dispatch(FULL, shape=shape, value=1, dtype=dtype_or_default(dtype))
    return maybe_requires_grad(t, requires_grad, device)


def empty(*size, dtype=None, requires_grad: bool = False,
          device=None, **kw) -> Tensor:
    """Like ``zeros`` (dyngrad never hands out uninitialised memory)."""
    return zeros(*size_keyword(size, kw, "empty"), dtype=dtype, requires_grad=requires_grad,
                 device=device)


def size_keyword(size: tuple, kw: dict, op: str) -> tuple:
    """The sizes given positionally, or as PyTorch's ``size=`` keyword (the only keyword
    accepted beyond the named ones)."""
    if kw:
        if set(kw) != {"size"} or size:
            bad = ", ".join(sorted(set(kw) - {"size"})) or "size (with positional sizes)"
            raise TypeError(f"{op}() got an unexpected keyword argument: {bad}")
        size = (kw["size"],)
    return size


def zeros_like(x: Tensor, *, dtype=None, requires_grad: bool = False,
               device=None) -> Tensor:
    return zeros(x.shape, dtype=dtype or x.dtype, requires_grad=requires_grad, device=device)


def ones_like(x: Tensor, *, dtype=None, requires_grad: bool = False,
              device=None) -> Tensor:
    return ones(x.shape, dtype=dtype or x.dtype, requires_grad=requires_grad, device=device)


def full_like(x: Tensor, fill_value, *, dtype=None, requires_grad: bool = False,
              device=None) -> Tensor:
    return full(x.shape, fill_value, dtype=dtype or x.dtype, requires_grad=requires_grad,
                device=device)


empty_like = zeros_like


def iota_like(x: Tensor, axis: int, dtype=_dt.int64) -> Tensor:
    """Indices 0..n-1 along ``axis`` of x's shape."""
    return dispatch(IOTA, shape=tuple(x.shape), axis=axis, start=0, step=1,
                    dtype=_dt.as_dtype(dtype))


def arange(start, end=None, step=1, *, dtype=None, requires_grad: bool = False,
           device=None) -> Tensor:
    """Values from ``start`` (inclusive) to ``end`` (exclusive) by ``step``; int64 when all
    arguments are integers, else the default float dtype."""
    if end is None:
        start, end = 0, start
    args = [float(a) if isinstance(a, Tensor) and a.dtype.is_floating_point else
            (int(a) if isinstance(a, Tensor) else a) for a in (start, end, step)]
    start, end, step = args
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    is_int = all(isinstance(a, numbers.Integral) for a in args)
    if dtype is None:
        dtype = _dt.int64 if is_int else _dt.get_default_dtype()
    dtype = _dt.as_dtype(dtype)
    n = max(0, int(np.ceil((end - start) / step)))
    if not is_int:
        start, step = float(start), float(step)
    t = dispatch(IOTA, shape=(n,), axis=0, start=start, step=step, dtype=dtype)
    return maybe_requires_grad(t, requires_grad, device)


def linspace(start, end, steps: int, *, dtype=None, requires_grad: bool = False,
             device=None) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive."""
    if steps < 0:
        raise RuntimeError("linspace: number of steps must be non-negative")
    step = (float(end) - float(start)) / (steps - 1) if steps > 1 else 0.0
    t = dispatch(IOTA, shape=(steps,), axis=0, start=float(start), step=step,
                 dtype=dtype_or_default(dtype))
    return maybe_requires_grad(t, requires_grad, device)



# ------------------------------------------------------------------ from data




def tensor(data, dtype=None, requires_grad: bool = False, *, device=None,
           pin_memory: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (numbers, nested lists, arrays, tensors).

    Python floats become float32, ints int64, bools bool; numpy arrays keep their dtype.

    >>> x = dg.tensor([1.0, 2.0], requires_grad=True)
    """
    if STATE.modes and isinstance(data, np.ndarray):
        report_copied(data)
    t = Tensor._constant(to_array(data, dtype))
    return maybe_requires_grad(t, requires_grad, device)


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """``data`` itself if it is a tensor of that dtype, shared numpy memory for an array of
    a supported dtype, else a copy."""
    check_device(device)
    if isinstance(data, Tensor) and (dtype is None or _dt.as_dtype(dtype) is data.dtype):
        return data
    if isinstance(data, np.ndarray) and dtype is None and data.dtype in _dt._BY_NP:
        return from_numpy(data)
    return tensor(data, dtype)


def from_numpy(arr: np.ndarray) -> Tensor:
    """A tensor sharing ``arr``'s memory: in-place changes on either side are visible on the
    other (``A += 1`` is; ``A = A + 1`` makes a new array and is not)."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"from_numpy: expected np.ndarray (got {type(arr).__name__})")
    try:
        _dt.from_numpy_dtype(arr.dtype, copy=False)
    except TypeError as exc:
        raise TypeError(f"from_numpy: {exc}") from None
    t = Tensor._shared(arr.view(), storage_over(arr))  # (a view: see Note [the tensor's
    #                                                    array]; one Storage per memory)
    if STATE.modes:
        report_new(t, arr)
    return t


def from_dlpack(obj) -> Tensor:
    """A tensor sharing memory with any DLPack producer (numpy arrays, other tensors)."""
    if isinstance(obj, Tensor):
        return Tensor._shared(obj._data, obj._storage)
    return from_numpy(np.from_dlpack(obj))
