"""``matmul``: batched matrix product with numpy's broadcasting of batch dims."""

from __future__ import annotations

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .primitive import Primitive


def _matmul_rule(a, b):
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise RuntimeError(f"matmul primitive: operands must be at least 2-d, got "
                           f"{list(a.shape)} and {list(b.shape)}")
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(
            f"matmul: mat1 and mat2 shapes cannot be multiplied ({a.shape[-2]}x{a.shape[-1]} "
            f"and {b.shape[-2]}x{b.shape[-1]}); full shapes {list(a.shape)} @ {list(b.shape)}")
    if a.dtype is not b.dtype:
        raise TypeError(f"matmul: expected both operands to have one dtype, got "
                        f"{a.dtype.name} and {b.dtype.name}")
    if a.dtype is _dt.bool_:
        raise TypeError("matmul: not supported for bool tensors")
    batch = _e.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]), op="matmul")
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def _matmul_impl(a, b):
    import numpy as np
    return np.matmul(a, b)


def _matmul_vjp(n, g, xs, y):
    a, b = xs
    ga = gb = None
    if n.needs[0]:
        ga = _e.sum_to(dispatch(MATMUL, g, _m.mT(b)), n.in_shapes[0])
    if n.needs[1]:
        gb = _e.sum_to(dispatch(MATMUL, _m.mT(a), g), n.in_shapes[1])
    return ga, gb


def _matmul_jvp(ts, xs, y, p):
    a, b = xs
    out = None
    if ts[0] is not None:
        out = dispatch(MATMUL, ts[0], b)
    if len(ts) > 1 and ts[1] is not None:
        tb = dispatch(MATMUL, a, ts[1])
        out = tb if out is None else _e.add(_m.expand(out, y.shape), _m.expand(tb, y.shape))
    return out if out.shape == y.shape else _m.expand(out, y.shape)


MATMUL = Primitive("matmul", "matmul", _matmul_impl, _matmul_rule, vjp=_matmul_vjp,
                   jvp=_matmul_jvp, save=(0, 1),
                   doc="(..., m, k) @ (..., k, n) with broadcast batch dims")


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with PyTorch's rules for 1-d operands (a vector is promoted to a
    matrix and the added dim removed afterwards)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a._data.dtype is b._data.dtype \
            and a._data.ndim >= 2 and b._data.ndim >= 2:
        return dispatch(MATMUL, a, b)
    (a, b), _ = _e.promote_args("matmul", a, b)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.ndim == 0 or b.ndim == 0:
        raise RuntimeError("matmul: both arguments to matmul need to be at least 1D, but they "
                           f"are {getattr(a, 'ndim', 0)}D and {getattr(b, 'ndim', 0)}D")
    if a.ndim >= 2 and b.ndim >= 2:
        return dispatch(MATMUL, a, b)
    a2 = _m.unsqueeze(a, 0) if a.ndim == 1 else a
    b2 = _m.unsqueeze(b, -1) if b.ndim == 1 else b
    out = dispatch(MATMUL, a2, b2)
    if b.ndim == 1:
        out = _m.squeeze_dims(out, (out.ndim - 1,))
    if a.ndim == 1:
        out = _m.squeeze_dims(out, (out.ndim - 1 if b.ndim == 1 else out.ndim - 2,))
    return out


def mm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 2 or b.ndim != 2:
        raise RuntimeError(f"mm: expected 2-d tensors, got {a.ndim}-d and {b.ndim}-d")
    return matmul(a, b)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: expected 3-d tensors with one batch size, got "
                           f"{list(a.shape)} and {list(b.shape)}")
    return matmul(a, b)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner product of two 1-d tensors."""
    if a.ndim != 1 or b.ndim != 1:
        raise RuntimeError(f"dot: 1D tensors expected, but got {a.ndim}D and {b.ndim}D tensors")
    if a.shape != b.shape:
        raise RuntimeError(f"dot: inconsistent tensor size, expected tensor [{a.shape[0]}] and "
                           f"src [{b.shape[0]}] to have the same number of elements")
    return matmul(a, b)


def outer(a: Tensor, b: Tensor) -> Tensor:
    return _m.unsqueeze(a, 1) * _m.unsqueeze(b, 0)
