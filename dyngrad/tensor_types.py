"""PyTorch's legacy tensor types — ``FloatTensor``, ``DoubleTensor``, ``LongTensor``,
``IntTensor``, ``ShortTensor``, ``CharTensor``, ``ByteTensor``, ``BoolTensor`` — as PyTorch
has them: calling one builds a :class:`Tensor` of its dtype with the legacy constructor's
forms (sizes, data, another tensor; see :func:`dyngrad.tensor.legacy_init`), and
``isinstance(t, FloatTensor)`` asks whether ``t`` is a float32 tensor. They are not
subclasses of Tensor (in PyTorch neither): what they make is a plain Tensor.

>>> dg.LongTensor([1.7, 2]), isinstance(dg.zeros(2), dg.FloatTensor)
(tensor([1, 2]), True)
"""

from __future__ import annotations

from . import dtypes as _dt
from .ops.composites import TYPE_NAMES
from .tensor import Tensor, legacy_init


class TensorType(type):
    """The metaclass of the legacy types: a call makes a Tensor of the type's ``dtype``, an
    isinstance check compares dtypes."""

    dtype: _dt.DType

    def __call__(cls, *args, **kwargs) -> Tensor:
        t = object.__new__(Tensor)
        legacy_init(t, args, kwargs, cls.dtype, cls.__name__)
        return t

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor) and obj.dtype is cls.dtype

    def __repr__(cls) -> str:
        return f"<class 'dyngrad.{cls.__name__}'>"


def _legacy_type(dtype_name: str) -> TensorType:
    name = TYPE_NAMES[dtype_name].split(".")[1]
    return TensorType(name, (), {"dtype": _dt.as_dtype(dtype_name), "__module__": "dyngrad",
                                 "__doc__": f"PyTorch's legacy {dtype_name} tensor type."})


FloatTensor = _legacy_type("float32")
DoubleTensor = _legacy_type("float64")
LongTensor = _legacy_type("int64")
IntTensor = _legacy_type("int32")
ShortTensor = _legacy_type("int16")
CharTensor = _legacy_type("int8")
ByteTensor = _legacy_type("uint8")
BoolTensor = _legacy_type("bool")

__all__ = ["TensorType", "FloatTensor", "DoubleTensor", "LongTensor", "IntTensor",
           "ShortTensor", "CharTensor", "ByteTensor", "BoolTensor"]
