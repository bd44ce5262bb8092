"""Primitives that read along one dim in order — ``cumsum``, ``cumprod`` and ``argsort`` — and
the front ends built on them: ``sort``, ``argsort``, ``topk``, ``cumsum``, ``cumprod``.

``sort``'s values and ``topk`` are compositions: the indices come from the ``argsort``
primitive (no gradient: integers), the values are gathered with them, so their gradient is
gather's (a scatter of the incoming gradient to the chosen positions), as in PyTorch.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor, _norm_dim
from . import elementwise as _e
from . import movement as _m
from .creation import arange
from .indexing import take_along_dim
from .movement import SUM, axis_alias
from .primitive import Primitive


def _axis_rule(name: str, int_to_long: bool):
    def rule(x, axis, **params):
        if not -max(x.ndim, 1) <= axis < max(x.ndim, 1):
            raise IndexError(f"{name}: Dimension out of range (expected to be in range of "
                             f"[{-max(x.ndim, 1)}, {max(x.ndim, 1) - 1}], but got {axis})")
        d = x.dtype
        if int_to_long and not d.is_floating_point:
            d = _dt.int64
        return tuple(x.shape), d
    return rule


def _along(fn):
    """``fn(x, axis)`` on a 0-d array too (as a 1-element axis)."""
    def impl(x, axis, **params):
        if x.ndim == 0:
            return fn(x.reshape(1), 0, **params).reshape(())
        return fn(x, axis, **params)
    return impl


def _acc(x):
    """PyTorch accumulates float32 scans in double and integers in int64."""
    return np.float64 if x.dtype == np.float32 else (
        np.int64 if x.dtype.kind in "biu" else x.dtype)


@_along
def _cumsum_impl(x, axis, reverse):
    out_dtype = np.int64 if x.dtype.kind in "biu" else x.dtype
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=_acc(x)).astype(out_dtype, copy=False)
    return np.ascontiguousarray(np.flip(out, axis)) if reverse else out


CUMSUM = Primitive(
    "cumsum", "index", _cumsum_impl, _axis_rule("cumsum", True),
    vjp=lambda n, g, xs, y: (dispatch(CUMSUM, g, axis=n.params["axis"],
                                      reverse=not n.params["reverse"]),),
    jvp=lambda ts, xs, y, p: dispatch(CUMSUM, ts[0], **p),
    doc="running sums along ``axis`` (from the end when ``reverse``); ints and bools "
        "sum to int64")


@_along
def _cumprod_impl(x, axis):
    out_dtype = np.int64 if x.dtype.kind in "biu" else x.dtype
    return np.cumprod(x, axis=axis, dtype=_acc(x)).astype(out_dtype, copy=False)


def _leave_one_out(x: Tensor, axis: int):
    """For the cumprod's derivatives: ``C[..., i, j]`` = the product of ``x[k]`` for k <= j,
    k != i (x's ``axis`` moved last), and the mask j >= i. ``d out_j / d x_i`` is
    ``C[i, j]`` where the mask holds: exact through zeros (no division), at n² memory along
    the dim."""
    n = x.shape[axis]
    xl = _m.unsqueeze(_m.transpose(x, axis, -1), -2)  # (..., 1, n)
    i = _m.reshape(arange(n), (n, 1))
    j = _m.reshape(arange(n), (1, n))
    c = cumprod(_e.where(_e.eq(i, j), 1.0, xl), -1)     # (..., i, j)
    return c, _e.le(i, j)


def _cumprod_vjp(n, g, xs, y):
    axis = n.params["axis"] % max(len(n.in_shapes[0]), 1)
    x = xs[0]
    if x.ndim == 0:
        return (g,)
    c, upper = _leave_one_out(x, axis)
    gl = _m.unsqueeze(_m.transpose(g, axis, -1), -2)     # g_j along the last axis
    gi = _e.where(upper, gl * c, 0.0)
    return (_m.transpose(dispatch(SUM, gi, axes=(gi.ndim - 1,), keepdims=False), axis, -1),)


def _cumprod_jvp(ts, xs, y, p):
    x, t = xs[0], ts[0]
    if x.ndim == 0:
        return t
    axis = p["axis"] % x.ndim
    c, upper = _leave_one_out(x, axis)
    tl = _m.unsqueeze(_m.transpose(t, axis, -1), -1)     # t_i along the second-last axis
    tj = _e.where(upper, tl * c, 0.0)
    return _m.transpose(dispatch(SUM, tj, axes=(tj.ndim - 2,), keepdims=False), axis, -1)


CUMPROD = Primitive("cumprod", "index", _cumprod_impl, _axis_rule("cumprod", True),
                    vjp=_cumprod_vjp, jvp=_cumprod_jvp, save=(0,),
                    doc="running products along ``axis``; the gradient is exact through "
                        "zeros (no division by the input)")


@_along
def _argsort_impl(x, axis, descending):
    if not descending:
        return np.argsort(x, axis=axis, kind="stable")  # NaN last, as PyTorch's
    if x.dtype.kind == "f":  # NaN first, then the largest; ties keep their order (stable)
        return np.lexsort((-x, ~np.isnan(x)), axis=axis)
    return np.argsort(~x if x.dtype.kind in "biu" else -x, axis=axis, kind="stable")


def _argsort_rule(x, axis, descending):
    _axis_rule("sort", False)(x, axis)
    return tuple(x.shape), _dt.int64


ARGSORT = Primitive("argsort", "index", _argsort_impl, _argsort_rule,
                    jvp=lambda ts, xs, y, p: None,
                    doc="the stable sorting permutation along ``axis`` (NaN counts as the "
                        "largest value, as in PyTorch); int64")


# ------------------------------------------------------------------ front end


def _scan_input(x: Tensor, dtype):
    return _e.cast(x, dtype) if dtype is not None else x


@axis_alias
def cumsum(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    """Running sums along ``dim``; bool and integer inputs give int64 (PyTorch).

    >>> dg.cumsum(dg.tensor([1, 2, 3]), 0)    # tensor([1, 3, 6])
    """
    x = _scan_input(input, dtype)
    return dispatch(CUMSUM, x, axis=_norm_dim(dim, x.ndim, "cumsum"), reverse=False)


@axis_alias
def cumprod(input: Tensor, dim: int, *, dtype=None) -> Tensor:
    """Running products along ``dim``; bool and integer inputs give int64 (PyTorch).

    >>> dg.cumprod(dg.tensor([1., 2., 3.]), 0)   # tensor([1., 2., 6.])
    """
    x = _scan_input(input, dtype)
    return dispatch(CUMPROD, x, axis=_norm_dim(dim, x.ndim, "cumprod"))


SortResult = namedtuple("sort", ["values", "indices"])
TopkResult = namedtuple("topk", ["values", "indices"])


def argsort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False):
    """Indices that sort ``input`` along ``dim`` (ties keep their order: PyTorch's CPU sort
    is stable whatever ``stable`` says)."""
    return dispatch(ARGSORT, input, axis=_norm_dim(dim, input.ndim, "sort"),
                    descending=bool(descending))


def _gather_sorted(x: Tensor, idx: Tensor, d: int) -> Tensor:
    return take_along_dim(x, idx, d) if x.ndim else x.clone()


def sort(input: Tensor, dim: int = -1, descending: bool = False, stable: bool = False):
    """``(values, indices)`` sorted along ``dim``; NaN sorts as the largest value and ties
    keep their order. The gradient flows to the values' original positions.

    >>> dg.sort(dg.tensor([3., 1., 2.])).indices   # tensor([1, 2, 0])
    """
    if isinstance(dim, bool):  # sort(x, True): PyTorch reads a lone bool as `descending`
        dim, descending = -1, dim
    idx = argsort(input, dim, descending, stable)
    return SortResult(_gather_sorted(input, idx, _norm_dim(dim, input.ndim, "sort")), idx)


def topk(input: Tensor, k: int, dim: int = -1, largest: bool = True, sorted: bool = True):
    """The ``k`` largest (``largest=False``: smallest) values along ``dim`` and their
    indices, in order. Among equal values the lower index comes first (PyTorch's CPU order
    among ties is an artefact of its selection algorithm and is not documented).

    >>> dg.topk(dg.tensor([1., 5., 3.]), 2).indices   # tensor([1, 2])
    """
    d = _norm_dim(dim, input.ndim, "topk")
    n = input.shape[d] if input.ndim else 1
    k = int(k)
    if not 0 <= k <= n:
        raise RuntimeError(f"selected index k out of range: topk got k={k} for a tensor of "
                           f"shape {list(input.shape)} along dim {d} (size {n})")
    idx = argsort(input, d, descending=largest)
    if input.ndim:
        idx = _m.narrow(idx, d, 0, k)
    return TopkResult(_gather_sorted(input, idx, d), idx)


def msort(input: Tensor) -> Tensor:
    """Sorted along dim 0 (values only)."""
    return sort(input, 0).values


__all__ = ["CUMSUM", "CUMPROD", "ARGSORT", "cumsum", "cumprod", "argsort", "sort", "topk",
           "msort"]
