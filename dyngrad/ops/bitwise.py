"""Bitwise primitives — and, or, xor, not and the two shifts — and their front-end functions,
with PyTorch's semantics: on integer tensors they act on the bits (two's complement), on bool
tensors and, or, xor and not are logical (a bool result); floating-point operands are refused
with PyTorch's error. None is differentiable (the results are integers or bools).

Shifts follow PyTorch's kernels, which numpy's ``left_shift``/``right_shift`` share for
operands of one dtype: a shift by an amount outside ``[0, width)`` (negative, or the
type's width or more) gives 0 to the left and the sign fill to the right (0 or -1; 0 for
uint8), and the right shift of a signed type is arithmetic.

Note: a Python int operand is a weak scalar (it does not promote) that PyTorch converts to
the tensor's dtype by wrapping modulo 2**width — so ``int8 << 256`` shifts by 0 and
``int8 & 1000`` ands with -24 — and refuses outside [-2**63, 2**64). The front end wraps it
the same way before dispatch, so the primitive (and a compiled kernel) sees a number of the
operand's type."""

from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from .creation import tensor
from .elementwise import broadcast_shapes, promote_args
from .primitive import Primitive

# PyTorch's names for the dtypes in its "not implemented for" errors
_TORCH_NAME = {"float32": "Float", "float64": "Double", "bool": "Bool", "int64": "Long",
               "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte"}


def _refuse(kernel: str, dtype) -> NotImplementedError:
    """PyTorch's error for a dtype the kernel has no loop for (a RuntimeError subclass)."""
    return NotImplementedError(f'"{kernel}" not implemented for '
                               f"'{_TORCH_NAME.get(dtype.name, dtype.name)}'")


def _accepts(dtype, bools: bool) -> bool:
    return not dtype.is_floating_point and (bools or dtype is not _dt.bool_)


def _bitwise_rule(name: str, kernel: str, bools: bool):
    def rule(*xs, **_):
        shape = broadcast_shapes(*(getattr(x, "shape", ()) for x in xs), op=name)
        dts = {x.dtype for x in xs if isinstance(getattr(x, "dtype", None), _dt.DType)}
        if len(dts) > 1:
            raise TypeError(f"{name}: operands must have one dtype after promotion, got "
                            f"{' and '.join(sorted(d.name for d in dts))}")
        d = dts.pop() if dts else _dt.result_type(*xs)
        if not _accepts(d, bools):
            raise _refuse(kernel, d)
        return shape, d
    return rule


def _prim(name: str, impl, kernel: str, bools: bool = True, doc: str = "") -> Primitive:
    return Primitive(name, "elementwise", impl, _bitwise_rule(name, kernel, bools), doc=doc)


BITWISE_AND = _prim("bitwise_and", np.bitwise_and, "bitwise_and_cpu",
                    doc="bits and (logical and for bools)")
BITWISE_OR = _prim("bitwise_or", np.bitwise_or, "bitwise_or_cpu",
                   doc="bits or (logical or for bools)")
BITWISE_XOR = _prim("bitwise_xor", np.bitwise_xor, "bitwise_xor_cpu",
                    doc="bits xor (logical xor for bools)")
BITWISE_NOT = _prim("bitwise_not", np.invert, "bitwise_not_cpu",
                    doc="every bit flipped (logical not for bools)")
BITWISE_LEFT_SHIFT = _prim("bitwise_left_shift", np.left_shift, "lshift_cpu", bools=False,
                           doc="a << b in the type's width; 0 for b outside [0, width)")
BITWISE_RIGHT_SHIFT = _prim("bitwise_right_shift", np.right_shift, "rshift_cpu", bools=False,
                            doc="a >> b, arithmetic for signed types; the sign fill (0 or "
                                "-1) for b outside [0, width)")

# ------------------------------------------------------------------ front end

_INT_LIMITS = (-(1 << 63), 1 << 64)  # the Python ints PyTorch converts (int64 or uint64)


def _as_dtype_of(x, dt):
    """A Python-number operand as PyTorch converts it to the integer dtype ``dt``: wrapped
    modulo 2**width (see the module's Note); tensors and numbers already in range are
    returned unchanged."""
    if isinstance(x, Tensor) or dt is _dt.bool_ or dt.is_floating_point:
        return x
    info = np.iinfo(dt.np)
    if info.min <= x <= info.max:
        return int(x) if isinstance(x, (bool, np.bool_)) else x
    v = int(x)
    if not _INT_LIMITS[0] <= v < _INT_LIMITS[1]:
        raise OverflowError("int too big to convert" if v > 0 else
                            "can't convert negative int to unsigned")
    v &= (1 << info.bits) - 1
    return v - (1 << info.bits) if info.min < 0 and v > info.max else v


def _refuse_uint64_with_bools(a, b) -> None:
    """PyTorch types a Python int beyond int64 (up to 2**64) as uint64, which it does
    not promote with a bool tensor."""
    tensors = [x for x in (a, b) if isinstance(x, Tensor)]
    if all(t.dtype is _dt.bool_ for t in tensors) and any(
            isinstance(x, int) and x >= 1 << 63 for x in (a, b)):
        raise RuntimeError("Promotion for uint16, uint32, uint64 types is not supported, "
                           "attempted to promote Bool and UInt64")


def _binary(prim: Primitive, kernel: str, a, b, bools: bool = True) -> Tensor:
    _refuse_uint64_with_bools(a, b)
    (a, b), dt = promote_args(prim.name, a, b)
    if not _accepts(dt, bools):
        raise _refuse(kernel, dt)
    a, b = _as_dtype_of(a, dt), _as_dtype_of(b, dt)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = tensor(a, dtype=dt)
    return dispatch(prim, a, b)


def bitwise_and(input, other) -> Tensor:
    """Bitwise and of integer tensors (logical and of bools), broadcast and promoted like
    ``add``; a Python int does not promote.

    >>> dg.bitwise_and(dg.tensor([12, -1], dtype=dg.int8), 10)
    tensor([ 8, 10], dtype=dyngrad.int8)
    """
    return _binary(BITWISE_AND, "bitwise_and_cpu", input, other)


def bitwise_or(input, other) -> Tensor:
    """Bitwise or of integer tensors (logical or of bools).

    >>> dg.bitwise_or(dg.tensor([12, 1]), 3)
    tensor([15,  3])
    """
    return _binary(BITWISE_OR, "bitwise_or_cpu", input, other)


def bitwise_xor(input, other) -> Tensor:
    """Bitwise xor of integer tensors (logical xor of bools).

    >>> dg.bitwise_xor(dg.tensor([12, 1]), 5)
    tensor([9, 4])
    """
    return _binary(BITWISE_XOR, "bitwise_xor_cpu", input, other)


def bitwise_left_shift(input, other) -> Tensor:
    """``input << other`` on integer tensors, wrapping at the type's width; an amount that
    is negative or at least the width gives 0 (PyTorch's rule).

    >>> dg.bitwise_left_shift(dg.tensor([1, 3, 1], dtype=dg.int32), dg.tensor([4, 30, 40],
    ...                       dtype=dg.int32))
    tensor([         16, -1073741824,           0], dtype=dyngrad.int32)
    """
    return _binary(BITWISE_LEFT_SHIFT, "lshift_cpu", input, other, bools=False)


def bitwise_right_shift(input, other) -> Tensor:
    """``input >> other`` on integer tensors, arithmetic (sign-filling) for signed types; an
    amount that is negative or at least the width gives the sign fill: 0, or -1 for a
    negative signed number.

    >>> dg.bitwise_right_shift(dg.tensor([-16, -16, 16]), dg.tensor([2, 70, -1]))
    tensor([-4, -1,  0])
    """
    return _binary(BITWISE_RIGHT_SHIFT, "rshift_cpu", input, other, bools=False)


def bitwise_not(input) -> Tensor:
    """Every bit flipped (``-x - 1`` for signed integers, ``255 - x`` for uint8); logical
    not for bools.

    >>> dg.bitwise_not(dg.tensor([0, 5, -1]))
    tensor([-1, -6,  0])
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"bitwise_not(): argument 'input' must be Tensor, not "
                        f"{type(input).__name__}")
    if not _accepts(input.dtype, True):
        raise _refuse("bitwise_not_cpu", input.dtype)
    return dispatch(BITWISE_NOT, input)


def invert(input) -> Tensor:
    """The ``~`` operator: :func:`bitwise_not`, with PyTorch's TypeError for a
    floating-point tensor."""
    if input.dtype.is_floating_point:
        raise TypeError("~ (operator.invert) is only implemented on integer and Boolean-type "
                        "tensors")
    return dispatch(BITWISE_NOT, input)


__all__ = ["BITWISE_AND", "BITWISE_OR", "BITWISE_XOR", "BITWISE_NOT", "BITWISE_LEFT_SHIFT",
           "BITWISE_RIGHT_SHIFT", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
           "bitwise_left_shift", "bitwise_right_shift", "invert"]
