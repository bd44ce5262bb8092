"""``dyngrad.linalg``: the norms of ``torch.linalg`` — ``vector_norm``, ``matrix_norm`` and
``norm`` — composed of abs, powers, sums and max/min reductions, so autograd and the
compiler see ordinary ops. The matrix norms that need singular values (``ord`` 2, −2 and
``'nuc'``) raise NotImplementedError: dyngrad has no SVD.

>>> dg.linalg.vector_norm(dg.tensor([3.0, 4.0]))                 # tensor(5.)
>>> dg.linalg.matrix_norm(dg.eye(3), ord=float("inf"))           # tensor(1.)
"""

from __future__ import annotations

import math

from . import dtypes as _dt
from .ops import elementwise as _e
from .ops import reduce as _r
from .tensor import Tensor, _norm_dim

__all__ = ["vector_norm", "matrix_norm", "norm"]


def _float_input(x, op: str, dtype=None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}(): argument 'x' must be Tensor, not {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise RuntimeError(f"{op}: Expected a floating point or complex tensor as input. "
                           f"Got {x.dtype.name}")
    if dtype is not None:
        x = _e.cast(x, _dt.as_dtype(dtype))
    return x


def _root(s: Tensor, p: float) -> Tensor:
    """s**(1/p) with a zero gradient where s is 0 (PyTorch's norms: the gradient at the
    zero vector is 0, not 0·inf)."""
    zero = _e.eq(s, 0.0)
    root = _e.sqrt(_e.where(zero, 1.0, s)) if p == 2 else \
        _e.pow(_e.where(zero, 1.0, s), 1.0 / p)
    return _e.where(zero, 0.0, root)


def vector_norm(x, ord=2, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """The vector ``ord``-norm of ``x`` over ``dim`` (every element when None; an int or a
    tuple of ints): (Σ|x|^ord)^(1/ord) for a number, max|x| for inf, min|x| for −inf, the
    count of non-zeros for 0. The gradient at the zero vector is 0, as PyTorch's.

    >>> dg.linalg.vector_norm(dg.tensor([[3.0, 4.0], [6.0, 8.0]]), dim=1)  # tensor([5., 10.])
    """
    x = _float_input(x, "linalg.vector_norm", dtype)
    if isinstance(ord, bool) or not isinstance(ord, (int, float)):
        raise TypeError(f"linalg.vector_norm(): argument 'ord' must be a number, not "
                        f"{type(ord).__name__}")
    if isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    if x.numel() == 0 and ord < 0:
        raise RuntimeError(f"linalg.vector_norm cannot compute the {ord} norm on an empty "
                           f"tensor because the operation does not have an identity")
    a = _e.abs(x)
    if ord == math.inf:
        return _r.amax(a, dim, keepdim) if x.numel() else _r.sum(a, dim, keepdim)
    if ord == -math.inf:
        return _r.amin(a, dim, keepdim)
    if ord == 0:
        # (x·0 where x is 0: the count stays in the graph with a zero gradient, as PyTorch's)
        return _r.sum(_e.where(_e.ne(x, 0.0), 1.0, x * 0.0), dim, keepdim)
    if ord == 1:
        return _r.sum(a, dim, keepdim)
    if ord == 2:
        return _root(_r.sum(x * x, dim, keepdim), 2)
    return _root(_r.sum(_e.pow(a, float(ord)), dim, keepdim), float(ord))


def _two_dims(dim, ndim: int, op: str) -> tuple:
    if not isinstance(dim, (list, tuple)) or len(dim) != 2:
        raise RuntimeError(f"{op}: dim must be a 2-tuple. Got {dim}")
    d0, d1 = (_norm_dim(d, ndim, op) for d in dim)
    if d0 == d1:
        raise RuntimeError(f"{op}: dims must be different. Got ({dim[0]}, {dim[1]})")
    return d0, d1


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim: bool = False, *, dtype=None) -> Tensor:
    """The matrix ``ord``-norm over the two dims ``dim``: ``'fro'`` (the default), 1 / −1
    (max / min column sum of |A|), inf / −inf (max / min row sum). ``'nuc'``, 2 and −2 need
    singular values and raise NotImplementedError.

    >>> dg.linalg.matrix_norm(dg.tensor([[1.0, -2.0], [3.0, 4.0]]), ord=1)   # tensor(6.)
    """
    A = _float_input(A, "linalg.matrix_norm", dtype)
    if A.ndim < 2:
        raise RuntimeError(f"linalg.matrix_norm: The input tensor A must have at least 2 "
                           f"dimensions. Got shape {list(A.shape)}")
    d0, d1 = _two_dims(dim, A.ndim, "linalg.matrix_norm")
    if ord == "fro":
        return vector_norm(A, 2, (d0, d1), keepdim)
    if ord in ("nuc", 2, -2):
        raise NotImplementedError(f"linalg.matrix_norm: ord={ord!r} needs singular values, "
                                  f"which dyngrad does not compute (no SVD); use 'fro', 1, "
                                  f"-1, inf or -inf")
    if isinstance(ord, bool) or ord not in (1, -1, math.inf, -math.inf):
        raise RuntimeError(f"linalg.matrix_norm: Order {ord} not supported.")
    # ord 1: columns (sum over rows d0, then the extreme over d1); inf: rows, the reverse
    inner, outer = (d0, d1) if abs(ord) == 1 else (d1, d0)
    sums = _r.sum(_e.abs(A), inner, keepdim=True)
    out = _r.amax(sums, outer, keepdim=True) if ord > 0 else _r.amin(sums, outer, keepdim=True)
    return out if keepdim else out.squeeze(max(d0, d1)).squeeze(min(d0, d1))


def norm(A, ord=None, dim=None, keepdim: bool = False, *, dtype=None) -> Tensor:
    """``torch.linalg.norm``: with ``dim`` an int (or 1-tuple) a vector norm, a 2-tuple a
    matrix norm; with no ``dim``, the 2-norm of every element when ``ord`` is None, else a
    vector norm of a 1-d ``A`` or a matrix norm of a 2-d one.

    >>> dg.linalg.norm(dg.tensor([[1.0, 2.0], [2.0, 4.0]]))        # tensor(5.)
    """
    A = _float_input(A, "linalg.norm", dtype)
    if isinstance(dim, int):
        dim = (dim,)
    if dim is not None:
        dim = tuple(dim)
        if len(dim) == 1:
            if isinstance(ord, str):
                raise RuntimeError(f"linalg.norm: If dim is specified, it must be of length "
                                   f"2 to use ord={ord!r}. Got dim={dim}")
            return vector_norm(A, 2 if ord is None else ord, dim, keepdim)
        if len(dim) == 2:
            return matrix_norm(A, "fro" if ord is None else ord, dim, keepdim)
        raise RuntimeError(f"linalg.norm: If dim is specified, it must be of length 1 or 2. "
                           f"Got {list(dim)}")
    if ord is None:
        return vector_norm(A, 2, None, keepdim)
    if A.ndim == 1 and not isinstance(ord, str):
        return vector_norm(A, ord, None, keepdim)
    if A.ndim == 2:
        return matrix_norm(A, ord, (-2, -1), keepdim)
    raise RuntimeError(f"linalg.norm: If dim is not specified but ord is, the input must be "
                       f"1D or 2D. Got {A.ndim}D.")
