"""``unique`` and ``unique_consecutive``: the distinct elements (or slices along a dim) of a
tensor, with PyTorch's options — the inverse indices (where each element went) and the
counts.

Their sizes depend on the data, so they are not primitives: they read the tensor into numpy
(an active dispatch mode is told, as for ``nonzero``: a compiled call is guarded on the
data) and return fresh tensors. They are not differentiable: the results never require grad.
(PyTorch's ``unique`` of a tensor that requires grad returns values with a ``grad_fn`` whose
backward raises "the derivative ... is not implemented"; here the values are constants, so a
graph through them differentiates as if they were data.)

Equality is ``==`` of the values: NaN differs from every value, itself included, so each NaN
is its own entry and sorts last (as in PyTorch, unlike numpy's ``np.unique``); -0.0 equals
0.0 and the first of them in the input is kept. Along a dim, slices that hold NaN sort last
too (PyTorch's order for them falls out of comparisons with NaN and is not meaningful).
"""

from __future__ import annotations

import numpy as np

from ..dispatch import STATE, report_read
from ..tensor import Tensor, _norm_dim


def _slices(x: Tensor, dim: int | None, op: str) -> tuple:
    """``x`` as a 2-d array of rows — one per element (``dim=None``) or per slice along
    ``dim`` — and the dim (None, or normalised)."""
    if STATE.modes:
        report_read(x, op)
    a = x._data
    if dim is None:
        return a.reshape(-1, 1), None
    if a.ndim == 0:
        raise IndexError(f"{op}: Dimension specified as {dim} but tensor has no dimensions")
    d = _norm_dim(dim, a.ndim, op)
    moved = np.moveaxis(a, d, 0)
    if a.shape.count(0) > 1:
        raise RuntimeError(f"{op}: Number of zero sized dimensions is more than one, so unique "
                           f"cannot be applied (input of shape {list(a.shape)})")
    if moved.shape[0] and 0 in moved.shape[1:]:
        raise RuntimeError(f"{op}: There are 0 sized dimensions, and they aren't selected, so "
                           f"unique cannot be applied (input of shape {list(a.shape)}, "
                           f"dim={dim})")
    return moved.reshape(moved.shape[0], int(np.prod(moved.shape[1:]))), d


def _runs(rows: np.ndarray) -> np.ndarray:
    """Where a new run of equal rows starts (``!=``: each NaN starts one)."""
    starts = np.ones(rows.shape[0], dtype=bool)
    starts[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    return starts


def _result(x: Tensor, rows: np.ndarray, d: int | None, starts: np.ndarray,
            inverse: np.ndarray, return_inverse: bool, return_counts: bool):
    """The values (the first row of each run, reshaped back), then the inverse and the
    counts when asked for, as PyTorch returns them: a tensor, or a tuple."""
    a = x._data
    if d is None:
        values = rows[starts, 0]
        inverse = inverse.reshape(a.shape)
    else:
        moved = np.moveaxis(a, d, 0)
        kept = rows[starts].reshape((int(starts.sum()),) + moved.shape[1:])
        values = np.moveaxis(kept, 0, d)
    out = [Tensor._constant(np.ascontiguousarray(values))]
    if return_inverse:
        out.append(Tensor._constant(inverse.astype(np.int64)))
    if return_counts:
        bounds = np.append(np.flatnonzero(starts), len(starts))
        out.append(Tensor._constant(np.diff(bounds).astype(np.int64)))
    return out[0] if len(out) == 1 else tuple(out)


def unique(input: Tensor, sorted: bool = True, return_inverse: bool = False,
           return_counts: bool = False, dim: int | None = None):
    """The distinct elements of ``input`` in ascending order (flattened), or with ``dim`` its
    distinct slices along ``dim`` in lexicographic order. ``return_inverse``: also the index
    in the output of each element (shaped as ``input``; with ``dim``, one per slice);
    ``return_counts``: also how often each one occurs. ``sorted=False`` gives the same sorted
    order, as PyTorch's CPU implementation does (PyTorch documents the order as unspecified).
    The results do not require grad.

    >>> dg.unique(dg.tensor([2, 1, 3, 1]), return_inverse=True, return_counts=True)
    (tensor([1, 2, 3]), tensor([1, 0, 2, 0]), tensor([2, 1, 1]))
    >>> dg.unique(dg.tensor([[1, 2], [0, 5], [1, 2]]), dim=0)
    tensor([[0, 5],
            [1, 2]])
    """
    rows, d = _slices(input, dim, "unique")
    n = rows.shape[0]
    # lexicographic and stable: among equal rows the first keeps its place (-0.0 before 0.0
    # when it comes first); lexsort's last key is the primary one
    order = np.lexsort(rows.T[::-1]) if rows.shape[1] and n else np.arange(n)
    sorted_rows = rows[order]
    starts = _runs(sorted_rows)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return _result(input, sorted_rows, d, starts, inverse, return_inverse, return_counts)


def unique_consecutive(input: Tensor, return_inverse: bool = False,
                       return_counts: bool = False, dim: int | None = None):
    """Each run of equal consecutive elements (flattened; with ``dim``, equal consecutive
    slices along ``dim``) reduced to one, in their order — ``itertools.groupby``, or Unix
    ``uniq``. ``return_inverse`` and ``return_counts`` as for :func:`unique`.

    >>> dg.unique_consecutive(dg.tensor([1, 1, 2, 2, 3, 1, 1]), return_counts=True)
    (tensor([1, 2, 3, 1]), tensor([2, 2, 1, 2]))
    """
    rows, d = _slices(input, dim, "unique_consecutive")
    starts = _runs(rows)
    inverse = np.cumsum(starts) - 1
    return _result(input, rows, d, starts, inverse, return_inverse, return_counts)


__all__ = ["unique", "unique_consecutive"]
