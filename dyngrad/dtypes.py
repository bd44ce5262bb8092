"""dtypes and PyTorch's type-promotion rules.

dyngrad's dtypes: ``float32`` (the default for Python floats), ``float64``, ``int64`` (the
default for Python ints), the narrower integers ``int32``, ``int16``, ``int8`` and ``uint8``,
and ``bool``. Promotion follows PyTorch, not numpy: Python scalars and 0-d tensors are
*weak* — they only raise the result's category (bool < integer < floating), never its width
inside a category. So ``int64_tensor + 1.5`` is float32 and ``float32_tensor + float64_0d``
stays float32. Within the integers the wider type wins, and ``uint8`` with ``int8`` is
``int16`` (the smallest type holding both ranges), as in PyTorch's table.
"""

from __future__ import annotations

import numpy as np

from .dispatch import report_python_call

__all__ = ["DType", "float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool_",
           "get_default_dtype", "set_default_dtype", "as_dtype"]


class DType:
    """A dyngrad dtype: a name, its numpy dtype, and its promotion category."""

    __slots__ = ("name", "np", "category", "itemsize", "is_floating_point")

    def __init__(self, name: str, np_dtype: type, category: int) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)
        self.category = category  # 0 bool, 1 integer, 2 floating
        self.itemsize = self.np.itemsize
        self.is_floating_point = category == 2

    def __repr__(self) -> str:
        return f"dyngrad.{self.name}"

    def __reduce__(self):
        return (as_dtype, (self.name,))


bool_ = DType("bool", np.bool_, 0)
int64 = DType("int64", np.int64, 1)
float32 = DType("float32", np.float32, 2)
float64 = DType("float64", np.float64, 2)
int32 = DType("int32", np.int32, 1)
int16 = DType("int16", np.int16, 1)
int8 = DType("int8", np.int8, 1)
uint8 = DType("uint8", np.uint8, 1)

_BY_NP = {d.np: d for d in (bool_, int64, float32, float64, int32, int16, int8, uint8)}
_BY_NAME = {"bool": bool_, "int64": int64, "long": int64, "float32": float32, "float": float32,
            "float64": float64, "double": float64, "int32": int32, "int": int32,
            "int16": int16, "short": int16, "int8": int8, "uint8": uint8}
_SUPPORTED = "float32, float64, int64, int32, int16, int8, uint8 and bool"
_default_float = float32


def get_default_dtype() -> DType:
    """The dtype Python floats become (float32, as in PyTorch, unless
    :func:`set_default_dtype` changed it)."""
    return _default_float


def set_default_dtype(d) -> None:
    """``torch.set_default_dtype``: the dtype Python floats and factory functions without a
    ``dtype`` make from now on — float32 or float64 (PyTorch's error for any other). Not
    inside a compiled function (the call runs eagerly: a compiled call could not replay
    it); compiled functions guard the default their trace saw."""
    global _default_float
    t = as_dtype(d)
    if not t.is_floating_point:
        raise TypeError("only floating-point types are supported as the default type")
    report_python_call("torch.set_default_dtype")
    _default_float = t


def as_dtype(d) -> DType:
    """Turn a dyngrad dtype, numpy dtype, name or Python type into a :class:`DType`."""
    if isinstance(d, DType):
        return d
    if d is float:
        return _default_float
    if d is int:
        return int64
    if d is bool:
        return bool_
    if isinstance(d, str) and d in _BY_NAME:
        return _BY_NAME[d]
    try:
        npd = np.dtype(d)
    except TypeError:
        npd = None
    if npd is not None and npd in _BY_NP:
        return _BY_NP[npd]
    raise TypeError(f"unsupported dtype {d!r}: dyngrad supports {_SUPPORTED}")


def from_numpy_dtype(npd: np.dtype, *, copy: bool) -> DType:
    """The dyngrad dtype for an array's dtype. Without ``copy`` only exact matches are allowed
    (the memory is shared); with it, other ints (uint16 and wider unsigned) become int64 and
    other floats float32."""
    d = _BY_NP.get(npd)
    if d is not None:
        return d
    if copy:
        if npd.kind in "iu":
            return int64
        if npd.kind == "f":
            return float32
    raise TypeError(
        f"numpy dtype {npd} is not supported: dyngrad supports {_SUPPORTED}; "
        f"convert with arr.astype(...) first")


def promote(a: DType, b: DType) -> DType:
    """Promotion of two strong dtypes (same category: the wider one)."""
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    if a.itemsize == b.itemsize and (a is uint8 or b is uint8):
        return int16  # uint8 with int8: the smallest type holding both (PyTorch)
    return a if a.itemsize >= b.itemsize else b


def scalar_category(x) -> int:
    if isinstance(x, (bool, np.bool_)):
        return 0
    if isinstance(x, (int, np.integer)):
        return 1
    if isinstance(x, (float, np.floating)):
        return 2
    raise TypeError(f"expected a number, got {type(x).__name__}")


_CATEGORY_DEFAULT = {0: bool_, 1: int64}


def default_for_category(cat: int) -> DType:
    return _default_float if cat == 2 else _CATEGORY_DEFAULT[cat]


def result_type(*operands) -> DType:
    """PyTorch's result type of tensors and Python scalars (see the module docstring).

    >>> result_type(int64_tensor, 1.5)   # float32
    """
    dim = zero = None
    wrapped = -1
    for x in operands:
        dt = getattr(x, "dtype", None)
        if isinstance(dt, DType):
            if x.ndim:
                dim = dt if dim is None else promote(dim, dt)
            else:
                zero = dt if zero is None else promote(zero, dt)
        else:
            wrapped = max(wrapped, scalar_category(x))
    if dim is None:
        dim, zero = zero, None
    if dim is None:
        return default_for_category(wrapped)
    if zero is not None and zero.category > dim.category:
        dim = promote(dim, zero)
    if wrapped > dim.category:
        dim = default_for_category(wrapped)
    return dim


def can_cast_inplace(src: DType, dst: DType) -> bool:
    """Whether an in-place op may write a ``src`` result into a ``dst`` tensor (PyTorch:
    not to a lower category, e.g. float into int64)."""
    return src.category <= dst.category
