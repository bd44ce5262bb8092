"""``matmul``: batched matrix product with numpy's broadcasting of batch dims."""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .primitive import Primitive


def _dims(shape: tuple, transposed: bool) -> tuple:
    """(rows, cols) of a matrix operand, after its optional transpose."""
    return (shape[-1], shape[-2]) if transposed else (shape[-2], shape[-1])


def _matmul_rule(a, b, ta=False, tb=False):
    if len(a.shape) < 2 or len(b.shape) < 2:
        raise RuntimeError(f"matmul primitive: operands must be at least 2-d, got "
                           f"{list(a.shape)} and {list(b.shape)}")
    (m, k), (k2, n) = _dims(a.shape, ta), _dims(b.shape, tb)
    if k != k2:
        raise RuntimeError(
            f"matmul: mat1 and mat2 shapes cannot be multiplied ({m}x{k} and {k2}x{n}); "
            f"full shapes {list(a.shape)} @ {list(b.shape)}"
            + (f" (transposed: a={ta}, b={tb})" if ta or tb else ""))
    if a.dtype is not b.dtype:
        raise TypeError(f"matmul: expected both operands to have one dtype, got "
                        f"{a.dtype.name} and {b.dtype.name}")
    if a.dtype is _dt.bool_:
        raise TypeError("matmul: not supported for bool tensors")
    batch = _e.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2]), op="matmul")
    return batch + (m, n), a.dtype


def _matmul_impl(a, b, ta=False, tb=False):
    return np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)


def _matmul_vjp(n, g, xs, y):
    """For C = op(A)·op(B), op an optional transpose of the last two dims:
    dA = g·op(B)ᵀ (or op(B)·gᵀ when A was transposed), dB = op(A)ᵀ·g (or gᵀ·op(A)) — each
    one matmul with transpose flags, so backward never materialises a transposed copy."""
    a, b = xs
    ta, tb = n.params.get("ta", False), n.params.get("tb", False)
    ga = gb = None
    if n.needs[0]:
        ga = dispatch(MATMUL, b, g, ta=tb, tb=True) if ta else \
            dispatch(MATMUL, g, b, ta=False, tb=not tb)
        ga = _e.sum_to(ga, n.in_shapes[0])
    if n.needs[1]:
        sa, sb = n.in_shapes
        if len(sb) == 2 and len(sa) > 2 and not ta:
            # a batch of rows against one matrix (a linear layer over (batch, time, in)):
            # the batch folds into the rows — one product over all of them, as PyTorch's
            # linear backward, not a product per batch entry and then their sum
            rows = math.prod(sa[:-1])  # (not -1: K or N may be 0)
            a2 = _m.reshape(a, (rows, sa[-1]))
            g2 = _m.reshape(g, (rows, g.shape[-1]))
            gb = dispatch(MATMUL, g2, a2, ta=True, tb=False) if tb else \
                dispatch(MATMUL, a2, g2, ta=True, tb=False)
        else:
            gb = dispatch(MATMUL, g, a, ta=True, tb=ta) if tb else \
                dispatch(MATMUL, a, g, ta=not ta, tb=False)
            gb = _e.sum_to(gb, n.in_shapes[1])
    return ga, gb


def _matmul_jvp(ts, xs, y, p):
    a, b = xs
    out = None
    if ts[0] is not None:
        out = dispatch(MATMUL, ts[0], b, **p)
    if len(ts) > 1 and ts[1] is not None:
        tb = dispatch(MATMUL, a, ts[1], **p)
        out = tb if out is None else _e.add(_m.expand(out, y.shape), _m.expand(tb, y.shape))
    return out if out.shape == y.shape else _m.expand(out, y.shape)


MATMUL = Primitive("matmul", "matmul", _matmul_impl, _matmul_rule, vjp=_matmul_vjp,
                   jvp=_matmul_jvp, save=_e.save_other,
                   doc="op(a) @ op(b) with broadcast batch dims; ``ta``/``tb`` transpose the "
                       "last two dims of a/b first (as BLAS does), default False")


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with PyTorch's rules for 1-d operands (a vector is promoted to a
    matrix and the added dim removed afterwards)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a._data.dtype is b._data.dtype \
            and a._data.ndim >= 2 and b._data.ndim >= 2 and a._data.dtype != np.bool_:
        return dispatch(MATMUL, a, b)
    (a, b), _ = _e.promote_args("matmul", a, b)
    if a.dtype is _dt.bool_:  # (eager does not run the shape rule: numpy would multiply)
        raise RuntimeError("matmul: \"addmm_impl_cpu_\" not implemented for 'Bool' (as in "
                           "PyTorch: cast the operands to an integer or float dtype first)")
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


def mv(input: Tensor, vec: Tensor) -> Tensor:
    """A matrix times a vector."""
    if input.ndim != 2 or vec.ndim != 1:
        raise RuntimeError(f"mv: expected a 2-d matrix and a 1-d vector, got shapes "
                           f"{list(input.shape)} and {list(vec.shape)}")
    return matmul(input, vec)


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
