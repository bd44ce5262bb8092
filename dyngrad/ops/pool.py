"""Pooling: two index primitives (where each window's maximum is) and PyTorch's
``max_pool1d/2d``, ``avg_pool2d``, ``adaptive_avg_pool2d`` and ``adaptive_max_pool2d``
composed from them, ``gather`` and ``conv``.

Note (max pooling is an argmax and a gather): the primitive gives each window's first
maximum as a flat index within its input plane — exactly the indices PyTorch returns — and
the values are a gather at those indices. Backward is then the gather's scatter-add to the
saved indices, as PyTorch's max-pool backward is; nothing but the indices is saved.
"""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from . import creation as _c
from . import elementwise as _e
from . import indexing as _i
from . import movement as _m
from . import reduce as _r
from .conv import CONV, ntuple, out_size, padded, windows
from .primitive import Primitive

# ------------------------------------------------------------------ primitives


def window_argmax(flat: np.ndarray) -> np.ndarray:
    """Position of each row's maximum along the last axis as PyTorch's kernels choose it:
    the first maximum, or the last NaN when the row has one (NaN propagates)."""
    at = flat.argmax(-1)
    if flat.dtype.kind == "f" and np.isnan(flat).any():
        nan = np.isnan(flat)
        at = np.where(nan.any(-1), flat.shape[-1] - 1 - nan[..., ::-1].argmax(-1), at)
    return at


def _plane_index(spatial: tuple, padding: tuple) -> np.ndarray:
    """Flat positions within a plane of size ``spatial``, padded with -1."""
    flat = np.arange(math.prod(spatial), dtype=np.int64).reshape(spatial)
    return padded(flat, padding, -1)


def _max_pool_indices_impl(x, kernel, stride, padding, dilation, dtype=_dt.int64):
    nd = len(kernel)
    spatial = x.shape[-nd:]
    out = tuple(out_size(s, lo, hi, k, st, d) for s, (lo, hi), k, st, d
                in zip(spatial, padding, kernel, stride, dilation))
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = windows(padded(x, padding, low), out, kernel, stride, dilation)
    at = window_argmax(win.reshape(win.shape[:-nd] + (math.prod(kernel),)))
    where = windows(_plane_index(spatial, padding), out, kernel, stride, dilation)
    where = where.reshape((1,) + out + (math.prod(kernel),))
    lead = math.prod(at.shape[:-nd])
    idx = np.take_along_axis(where, at.reshape((lead,) + out + (1,)), -1)[..., 0]
    # a window of -inf only: PyTorch keeps its first position inside the input, not a pad
    first = np.where(where >= 0, where, np.iinfo(np.int64).max).min(-1)[0]
    empty = empty_windows(spatial, kernel, stride, padding, dilation)
    if empty is not None:  # (only padding: PyTorch's index of its clipped window start)
        starts = [np.arange(o) * st - lo for o, st, (lo, _) in zip(out, stride, padding)]
        starts = [np.where(s0 < 0, s0 + -(s0 // d) * d, s0) for s0, d in zip(starts, dilation)]
        flat = np.zeros(out, dtype=np.int64)
        for i, (s0, size) in enumerate(zip(starts, spatial)):
            flat = flat * size + s0.reshape((-1,) + (1,) * (nd - 1 - i))
        first = np.where(empty, flat, first)
    return np.where(idx < 0, first, idx).reshape(at.shape).astype(dtype.np, copy=False)


def empty_windows(spatial: tuple, kernel: tuple, stride: tuple, padding: tuple,
                  dilation: tuple) -> np.ndarray | None:
    """Which windows (a bool array of the output's spatial shape) read only padding — a
    dilated window can step over the input — or None when none does."""
    where = windows(_plane_index(spatial, padding), tuple(
        out_size(s, lo, hi, k, st, d) for s, (lo, hi), k, st, d
        in zip(spatial, padding, kernel, stride, dilation)), kernel, stride, dilation)
    empty = (where < 0).reshape(where.shape[:len(kernel)] + (-1,)).all(-1)
    return empty if empty.any() else None


def _index_dtype(op: str, dtype) -> _dt.DType:
    """A pooling-index primitive's output dtype: int64 (eager's, PyTorch's), or int32 when
    a compiled step keeps the indices inside it (compiler/passes/narrow.py)."""
    if dtype not in (_dt.int64, _dt.int32):
        raise TypeError(f"{op}: indices are int64 or int32, not {dtype.name}")
    return dtype


def _max_pool_indices_rule(x, kernel, stride, padding, dilation, dtype=_dt.int64):
    nd = len(kernel)
    out = tuple(out_size(s, lo, hi, k, st, d) for s, (lo, hi), k, st, d
                in zip(x.shape[-nd:], padding, kernel, stride, dilation))
    if x.ndim < nd + 1 or min(out) < 1:
        raise RuntimeError(f"max_pool: input {list(x.shape)} gives output size {list(out)}")
    return tuple(x.shape[:-nd]) + out, _index_dtype("max_pool_indices", dtype)


def _adaptive_bounds(size: int, out: int) -> list:
    """PyTorch's adaptive windows along one dim: [floor(i·S/O), ceil((i+1)·S/O))."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_max_indices_impl(x, output_size, dtype=_dt.int64):
    nd = len(output_size)
    spatial = x.shape[-nd:]
    plane = np.arange(math.prod(spatial), dtype=np.int64).reshape(spatial)
    res = np.empty(x.shape[:-nd] + tuple(output_size), dtype=np.int64)
    lead = x.shape[:-nd]
    for pos in np.ndindex(*output_size):  # (one vectorised argmax per output position)
        box = tuple(slice(*_adaptive_bounds(s, o)[i])
                    for s, o, i in zip(spatial, output_size, pos))
        part = x[(Ellipsis,) + box]
        at = window_argmax(part.reshape(lead + (math.prod(part.shape[-nd:]),)))
        res[(Ellipsis,) + pos] = plane[box].reshape(-1)[at]
    return res.astype(dtype.np, copy=False)


def _adaptive_max_indices_rule(x, output_size, dtype=_dt.int64):
    return (tuple(x.shape[:-len(output_size)]) + tuple(output_size),
            _index_dtype("adaptive_max_indices", dtype))


MAX_POOL_INDICES = Primitive(
    "max_pool_indices", "window", _max_pool_indices_impl, _max_pool_indices_rule,
    doc="each window's first maximum as a flat index within its input plane (``dtype``: "
        "int64, or int32 inside a compiled step); ``padding`` is (lo, hi) per spatial dim, "
        "hi including ceil_mode's extra")
ADAPTIVE_MAX_INDICES = Primitive(
    "adaptive_max_indices", "window", _adaptive_max_indices_impl, _adaptive_max_indices_rule,
    doc="adaptive max pooling's first maximum per window as a flat index within its plane")


# ------------------------------------------------------------------ helpers


def _gather_planes(x: Tensor, idx: Tensor, nd: int) -> Tensor:
    """``x``'s values at plane indices ``idx`` (PyTorch's gather over the flattened planes),
    as one ``gather`` from the flat input at ``idx + plane · plane size``: the indices come
    from a pooling-index primitive, so they need neither ``take_along_dim``'s bounds check
    nor its wrap of negative ones (a compiled step saved those two passes)."""
    lead = tuple(idx.shape[:-nd])
    plane = math.prod(x.shape[-nd:])
    rows = _m.reshape(idx, (math.prod(lead), math.prod(idx.shape[-nd:])))
    flat = rows + _c.iota_like(rows, 0) * plane
    return _m.reshape(_i.gather(_m.reshape(x, (-1,)), flat, 0), tuple(idx.shape))


def _pool_input(op: str, input: Tensor, nd: int) -> None:
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: Expected {nd + 1}D or {nd + 2}D input tensor, but got "
                           f"input of size: {list(input.shape)}")
    if min(input.shape[1:] if input.ndim == nd + 2 else input.shape, default=1) == 0:
        raise RuntimeError(f"{op}: Expected input's non-batch dimensions to have positive "
                           f"length, but input has a shape of {list(input.shape)}")


def _pool_size(op: str, size: int, k: int, s: int, pad: int, d: int, ceil_mode: bool,
               input: Tensor) -> int:
    """PyTorch's pooling output size: with ceil_mode, the last window must start inside the
    input or its left padding."""
    span = size + 2 * pad - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + pad:
        out -= 1
    if out < 1:
        raise RuntimeError(f"{op}: Given input size: {list(input.shape)}. Calculated output "
                           f"size is too small ({out}) for kernel_size={k}, stride={s}, "
                           f"padding={pad}, dilation={d}: use a larger input or a smaller "
                           f"kernel")
    return out


def _pool_args(op, input, kernel_size, stride, padding, dilation, nd):
    kernel = ntuple(kernel_size, nd, "kernel_size", op)
    stride = kernel if stride is None or stride == [] or stride == () else \
        ntuple(stride, nd, "stride", op)
    padding = ntuple(padding, nd, "padding", op)
    dilation = ntuple(dilation, nd, "dilation", op)
    if any(s == 0 for s in stride):
        raise RuntimeError(f"{op}: stride should not be zero")
    if any(s <= 0 for s in stride) or any(k <= 0 for k in kernel) or any(d <= 0 for d in dilation):
        raise RuntimeError(f"{op}: kernel_size, stride and dilation must be greater than "
                           f"zero, got kernel_size={list(kernel)}, stride={list(stride)}, "
                           f"dilation={list(dilation)}")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise RuntimeError(f"{op}: pad should be at most half of effective kernel size, but "
                           f"got pad={list(padding)}, kernel_size={list(kernel)}")
    return kernel, stride, padding, dilation


def max_pool(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool,
             return_indices: bool, nd: int, op: str):
    """PyTorch's ``max_pool{nd}d``."""
    _pool_input(op, input, nd)
    kernel, stride, padding, dilation = _pool_args(op, input, kernel_size, stride, padding,
                                                   dilation, nd)
    spatial = input.shape[-nd:]
    out = [_pool_size(op, s, k, st, p, d, ceil_mode, input)
           for s, k, st, p, d in zip(spatial, kernel, stride, padding, dilation)]
    pairs = tuple((p, max(p, (o - 1) * st + d * (k - 1) + 1 - s - p))
                  for s, k, st, p, d, o in zip(spatial, kernel, stride, padding, dilation, out))
    idx = dispatch(MAX_POOL_INDICES, input, kernel=kernel, stride=stride, padding=pairs,
                   dilation=dilation)
    empty = empty_windows(spatial, kernel, stride, pairs, dilation)
    if empty is None:
        values = _gather_planes(input, idx, nd)
    else:  # windows of padding only: -inf (and PyTorch's index, which is outside the input)
        mask = Tensor._constant(empty)
        values = _e.where(mask, -math.inf, _gather_planes(input, _e.where(mask, 0, idx), nd))
    return (values, idx) if return_indices else values


def max_pool1d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """PyTorch's ``F.max_pool1d`` on (N, C, L) or (C, L).

    >>> max_pool1d(dg.tensor([[1., 3., 2., 5.]]), 2)
    tensor([[3., 5.]])
    """
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                    1, "max_pool1d")


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """PyTorch's ``F.max_pool2d`` on (N, C, H, W) or (C, H, W); ``return_indices`` gives
    each maximum's flat index within its H×W plane (ties: the first).

    >>> max_pool2d(dg.randn(1, 1, 4, 4), 2).shape
    (1, 1, 2, 2)
    """
    return max_pool(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                    2, "max_pool2d")


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """PyTorch's ``F.avg_pool2d``: window sums (a convolution with a kernel of ones per
    plane) over PyTorch's divisors.

    >>> avg_pool2d(dg.ones(1, 1, 4, 4), 2)
    tensor([[[[1., 1.],
              [1., 1.]]]])
    """
    op = "avg_pool2d"
    _pool_input(op, input, 2)
    kernel, stride, padding, _ = _pool_args(op, input, kernel_size, stride, padding, 1, 2)
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("avg_pool2d: divisor must be not zero")
    spatial = tuple(input.shape[-2:])
    out = [_pool_size(op, s, k, st, p, 1, ceil_mode, input)
           for s, k, st, p in zip(spatial, kernel, stride, padding)]
    pairs = tuple((p, max(p, (o - 1) * st + k - s - p))
                  for s, k, st, p, o in zip(spatial, kernel, stride, padding, out))
    lead = tuple(input.shape[:-2])
    planes = _m.reshape(input, (-1, 1) + spatial)
    ones = _c.ones((1, 1) + kernel, dtype=input.dtype)
    sums = dispatch(CONV, planes, ones, stride=stride, padding=pairs, dilation=(1, 1),
                    groups=1)
    sums = _m.reshape(sums, lead + tuple(out))
    if divisor_override is not None:
        return sums / float(divisor_override)
    counts = []
    for s, k, st, p, o in zip(spatial, kernel, stride, padding, out):
        start = np.arange(o) * st - p
        end = np.minimum(start + k, s + p)  # (windows clipped to the padded input)
        if not count_include_pad:
            start, end = np.maximum(start, 0), np.minimum(end, s)
        counts.append(end - start)
    divisor = np.multiply.outer(counts[0], counts[1]).astype(input.dtype.np)
    return sums / Tensor._constant(divisor)


def _output_size(op: str, output_size, input: Tensor, nd: int) -> tuple:
    sizes = (output_size,) * nd if isinstance(output_size, int) or output_size is None \
        else tuple(output_size)
    if len(sizes) != nd:
        raise ValueError(f"{op}: output_size must be an int or a tuple of {nd}, got "
                         f"{output_size!r}")
    return tuple(input.shape[-nd + i] if s is None else int(s) for i, s in enumerate(sizes))


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """PyTorch's ``F.adaptive_avg_pool2d``: window i along a dim covers
    [floor(i·S/O), ceil((i+1)·S/O)). When the windows tile the plane (O divides S: global
    average pooling included) it is a mean over each box; otherwise the mean over a box is
    separable, so it is two matmuls with averaging matrices.

    >>> adaptive_avg_pool2d(dg.randn(1, 3, 7, 5), (2, None)).shape
    (1, 3, 2, 5)
    """
    op = "adaptive_avg_pool2d"
    _pool_input(op, input, 2)
    out = _output_size(op, output_size, input, 2)
    (sh, sw), (oh, ow) = input.shape[-2:], out
    if sh % oh == 0 and sw % ow == 0:  # windows that tile the plane (an output of 1 too):
        boxes = _m.reshape(input, input.shape[:-2] + (oh, sh // oh, ow, sw // ow))  # a mean
        return _r.mean(boxes, (-3, -1))  # over each box: summed, then divided (as PyTorch)
    mats = []
    for s, o in zip(input.shape[-2:], out):
        m = np.zeros((o, s), dtype=input.dtype.np)
        for i, (a, b) in enumerate(_adaptive_bounds(s, o)):
            m[i, a:b] = 1.0 / (b - a)
        mats.append(Tensor._constant(m))
    rows = _m.transpose(_m.transpose(input, -1, -2) @ _m.T(mats[0]), -1, -2)  # (.., Oh, W)
    return rows @ _m.T(mats[1])


def adaptive_avg_pool1d(input: Tensor, output_size) -> Tensor:
    """PyTorch's ``F.adaptive_avg_pool1d`` over the last dim of a (N, C, L) or (C, L) input:
    the 2-d one over planes of height 1.

    >>> adaptive_avg_pool1d(dg.randn(2, 3, 7), 1).shape
    (2, 3, 1)
    """
    if input.ndim not in (2, 3):
        raise ValueError(f"adaptive_avg_pool1d: expected a 2-d (C, L) or 3-d (N, C, L) input, "
                         f"got shape {list(input.shape)}")
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 1:
            raise ValueError(f"adaptive_avg_pool1d: output_size must be an int or a tuple of "
                             f"1, got {output_size!r}")
        output_size = output_size[0]
    out = adaptive_avg_pool2d(_m.unsqueeze(input, -2), (1, output_size))
    return _m.squeeze(out, -2)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """PyTorch's ``F.adaptive_max_pool2d`` (windows as in adaptive_avg_pool2d; ties: the
    first maximum).

    >>> adaptive_max_pool2d(dg.randn(1, 3, 7, 5), 1).shape
    (1, 3, 1, 1)
    """
    op = "adaptive_max_pool2d"
    _pool_input(op, input, 2)
    out = _output_size(op, output_size, input, 2)
    idx = dispatch(ADAPTIVE_MAX_INDICES, input, output_size=out)
    values = _gather_planes(input, idx, 2)
    return (values, idx) if return_indices else values


__all__ = ["MAX_POOL_INDICES", "ADAPTIVE_MAX_INDICES", "max_pool1d", "max_pool2d",
           "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"]
