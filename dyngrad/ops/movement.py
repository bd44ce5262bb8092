"""Movement primitives — ``reshape``, ``broadcast``, ``permute``, ``slice`` (views of their
input), ``pad`` and ``concat`` — the shape functions composed from them, and ``sum``, the
transpose of broadcasting (see Note [SUM lives with the movement ops])."""

from __future__ import annotations

import abc
import functools
import math

import numpy as np

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import UPWARD, Tensor, _norm_dim
from .creation import zeros
from .primitive import Primitive

# ------------------------------------------------------------------ reshape


class SymbolicSize(abc.ABC):  # noqa: B024 - (a registry for isinstance, nothing to implement)
    """An int-like size that is not an int — a compiler's symbolic size
    (``compiler.dims.Dim`` registers itself): shape rules keep it as it is, where they make
    every other size an int, so sizes computed from it stay symbolic."""


def as_size(s):
    """``s`` as a size: an int, or a :class:`SymbolicSize` kept as it is."""
    return s if type(s) is int or isinstance(s, SymbolicSize) else int(s)


def resolve_shape(shape: tuple, numel: int, op: str = "reshape") -> tuple:
    """Replace one -1 in ``shape`` so that it holds ``numel`` elements."""
    shape = tuple(as_size(s) for s in shape)
    neg = [i for i, s in enumerate(shape) if s == -1]
    if len(neg) > 1:
        raise RuntimeError(f"{op}: only one dimension can be inferred (got shape {list(shape)})")
    if any(s < -1 for s in shape):
        raise RuntimeError(f"{op}: invalid shape dimension in {list(shape)}")
    known = math.prod(s for s in shape if s != -1)
    if neg:
        if known == 0 or numel % known:
            raise RuntimeError(f"{op}: shape {list(shape)} is invalid for input of size {numel}")
        shape = shape[:neg[0]] + (numel // known,) + shape[neg[0] + 1:]
    elif known != numel:
        raise RuntimeError(f"{op}: shape {list(shape)} is invalid for input of size {numel}")
    return shape


def _reshape_rule(x, shape):
    return resolve_shape(shape, math.prod(x.shape)), x.dtype


RESHAPE = Primitive(
    "reshape", "movement", lambda x, shape: x.reshape(shape), _reshape_rule,
    vjp=lambda n, g, xs, y: (reshape(g, n.in_shapes[0]),),
    jvp=lambda ts, xs, y, p: reshape(ts[0], p["shape"]), view=True,
    doc="a view when the memory layout allows, else a copy (PyTorch's reshape)")

# ------------------------------------------------------------------ broadcast


def _bcast_target(xshape, shape, op="expand"):
    shape = tuple(as_size(s) for s in shape)
    lead = len(shape) - len(xshape)
    if lead < 0:
        raise RuntimeError(f"{op}: the number of sizes provided ({len(shape)}) must be greater "
                           f"or equal to the number of dimensions in the tensor "
                           f"({len(xshape)})")
    out = []
    for i, s in enumerate(shape):
        if i < lead:
            if s < 0:
                raise RuntimeError(f"{op}: -1 is not allowed in a leading, non-existing "
                                   f"dimension {i}")
            out.append(s)
            continue
        have = xshape[i - lead]
        if s == -1:
            s = have
        if have != s and have != 1:
            raise RuntimeError(
                f"{op}: the expanded size of the tensor ({s}) must match the existing size "
                f"({have}) at non-singleton dimension {i}. Target sizes: {list(shape)}. "
                f"Tensor sizes: {list(xshape)}")
        out.append(s)
    return tuple(out)


# ------------------------------------------------------------------ SUM, broadcasting's transpose
#
# Note [SUM lives with the movement ops]: summing a broadcast gradient back (``sum_to``) is
# the vjp of ``expand``, and ``expand`` is the vjp of ``sum``: the two primitives are each
# other's transpose, so they are defined in one module. The reductions module
# (``dyngrad.ops.reduce``) re-exports ``SUM`` and builds the other reductions on it; keeping
# SUM here is what lets elementwise (whose rules sum broadcast gradients) sit above movement
# and below the reductions, with no import cycle.

_ALL_AXES = [tuple(range(n)) for n in range(8)]


def norm_axes(dim, ndim: int, op: str) -> tuple:
    """Normalise ``dim`` (None, int or sequence) to a sorted tuple of non-negative axes."""
    if dim is None:
        return _ALL_AXES[ndim] if ndim < 8 else tuple(range(ndim))
    if type(dim) is int and -ndim <= dim < ndim:
        return (dim % ndim,)
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    n = max(ndim, 1)
    out = set()
    for d in dims:
        if not isinstance(d, (int, np.integer)):
            raise TypeError(f"{op}: dim must be an int or a sequence of ints, got {d!r}")
        if not -n <= d < n:
            raise IndexError(f"{op}: Dimension out of range (expected to be in range of "
                             f"[{-n}, {n - 1}], but got {d})")
        if ndim:
            out.add(int(d) % ndim)
    return tuple(sorted(out))


def reduced_shape(shape, axes, keepdims):
    """The shape left after reducing ``axes`` (kept as 1s with ``keepdims``)."""
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def check_axes(x, axes, op):
    """A reduction's shape rule: each of ``axes`` is a dimension of ``x``."""
    for a in axes:
        if not 0 <= a < max(len(x.shape), 1):
            raise IndexError(f"{op}: axis {a} out of range for shape {list(x.shape)}")


def _sum_rule(x, axes, keepdims):
    check_axes(x, axes, "sum")
    d = x.dtype
    return reduced_shape(x.shape, axes, keepdims), (_dt.int64 if d.category < 2 else d)


def _sum_impl(x, axes, keepdims):
    if x.dtype.kind in "biu" and x.dtype != np.int64:  # bools and narrower ints: int64
        x = x.astype(np.int64)
    return np.sum(x, axis=axes, keepdims=keepdims)


def expand_back(g, in_shape, axes, keepdims):
    """A reduction's gradient ``g`` broadcast back over the reduced ``axes`` of ``in_shape``."""
    if not keepdims:
        g = reshape(g, reduced_shape(in_shape, axes, True))
    return expand(g, in_shape)


def _sum_vjp(n, g, xs, y):
    p = n.params
    return (expand_back(g, n.in_shapes[0], p["axes"], p["keepdims"]),)


def _sum_jvp(ts, xs, y, p):
    t = ts[0]
    return dispatch(SUM, t, axes=norm_axes(p["axes"], t.ndim, "sum"),
                    keepdims=bool(p["keepdims"]))


SUM = Primitive("sum", "reduce", _sum_impl, _sum_rule, vjp=_sum_vjp, jvp=_sum_jvp)


def sum_to(g: Tensor, shape: tuple) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (the vjp of broadcasting)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    inner = tuple(i + lead for i, s in enumerate(shape) if s == 1 and g.shape[i + lead] != 1)
    if not inner:  # only leading dims were added: one sum, no reshape
        return dispatch(SUM, g, axes=tuple(range(lead)), keepdims=False)
    out = dispatch(SUM, g, axes=tuple(range(lead)) + inner, keepdims=True)
    return reshape(out, tuple(shape)) if out.shape != tuple(shape) else out


def _broadcast_impl(x, shape):
    target = _bcast_target(x.shape, shape)
    if math.prod(target) == x.size:  # nothing repeated: a writeable view, as in PyTorch
        return x.reshape(target)
    return np.broadcast_to(x, target)


BROADCAST = Primitive(
    "broadcast", "movement", _broadcast_impl,
    lambda x, shape: (_bcast_target(x.shape, shape), x.dtype),
    vjp=lambda n, g, xs, y: (sum_to(g, n.in_shapes[0]),),
    jvp=lambda ts, xs, y, p: expand(ts[0], p["shape"]), view=True,
    doc="numpy broadcasting to ``shape`` (-1 keeps a size); a view, read-only when "
                        "it repeats elements")

# ------------------------------------------------------------------ permute


def _perm_rule(x, perm):
    if sorted(perm) != list(range(len(x.shape))):
        raise RuntimeError(f"permute: {list(perm)} is not a permutation of the "
                           f"{len(x.shape)} dims of shape {list(x.shape)}")
    return tuple(x.shape[p] for p in perm), x.dtype


def _inv(perm):
    return tuple(int(i) for i in np.argsort(perm))


PERMUTE = Primitive(
    "permute", "movement", lambda x, perm: np.transpose(x, perm), _perm_rule,
    vjp=lambda n, g, xs, y: (permute(g, _inv(n.params["perm"])),),
    jvp=lambda ts, xs, y, p: permute(ts[0], p["perm"]), view=True)

# ------------------------------------------------------------------ slice / pad


def _slice_len(start, stop, step):
    return max(0, (stop - start + step - 1) // step)


def _slice_rule(x, starts, stops, steps):
    if not len(starts) == len(stops) == len(steps) == len(x.shape):
        raise RuntimeError(f"slice: expected one start/stop/step per dim of {list(x.shape)}")
    out = []
    for n, a, b, c in zip(x.shape, starts, stops, steps):
        if c <= 0:
            raise ValueError("slice: step must be greater than zero (negative steps are not "
                             "supported; use flip-free indexing or reverse with an index "
                             "tensor)")
        if not 0 <= a <= n or not 0 <= b <= n:
            raise IndexError(f"slice: bounds [{a}:{b}] outside a dimension of size {n}")
        out.append(_slice_len(a, b, c))
    return tuple(out), x.dtype


def _slice_impl(x, starts, stops, steps):
    # the trailing ... keeps a 0-d result an array view (x[()] would be a numpy scalar copy)
    return x[tuple(slice(a, b, c) for a, b, c in zip(starts, stops, steps)) + (Ellipsis,)]


def _slice_vjp(n, g, xs, y):
    p = n.params
    pads = []
    for size, a, c, m in zip(n.in_shapes[0], p["starts"], p["steps"], g.shape):
        span = (m - 1) * c + 1 if m else 0
        pads.append((a, size - a - span, c - 1) if m else (size, 0, 0))
    return (dispatch(PAD, g, pads=tuple(pads), value=0),)


SLICE = Primitive("slice", "movement", _slice_impl, _slice_rule, vjp=_slice_vjp,
                  jvp=lambda ts, xs, y, p: dispatch(SLICE, ts[0], **p), view=True,
                  doc="basic slicing with positive steps, one (start, stop, step) per dim")


def _pad_rule(x, pads, value):
    if len(pads) != len(x.shape):
        raise RuntimeError(f"pad: expected {len(x.shape)} (low, high, interior) triples, got "
                           f"{len(pads)}")
    out = []
    for n, (lo, hi, it) in zip(x.shape, pads):
        if lo < 0 or hi < 0 or it < 0:
            raise ValueError(f"pad: negative padding {(lo, hi, it)}; slice instead")
        out.append(lo + hi + (n + (n - 1) * it if n else 0))
    return tuple(out), x.dtype


def _pad_impl(x, pads, value):
    shape, _ = _pad_rule(x, pads, value)
    out = np.full(shape, value, dtype=x.dtype)
    idx = tuple(slice(lo, lo + (n - 1) * (it + 1) + 1 if n else lo, it + 1)
                for n, (lo, hi, it) in zip(x.shape, pads))
    out[idx] = x
    return out


def _pad_vjp(n, g, xs, y):
    pads = n.params["pads"]
    shape = n.in_shapes[0]
    starts = tuple(lo for lo, _, _ in pads)
    steps = tuple(it + 1 for _, _, it in pads)
    stops = tuple(min(lo + (m - 1) * (it + 1) + 1, gs) if m else lo
                  for m, (lo, _, it), gs in zip(shape, pads, g.shape))
    return (dispatch(SLICE, g, starts=starts, stops=stops, steps=steps),)


PAD = Primitive("pad", "movement", _pad_impl, _pad_rule, vjp=_pad_vjp,
                jvp=lambda ts, xs, y, p: dispatch(PAD, ts[0], pads=p["pads"], value=0),
                doc="constant padding: (low, high, interior) per dim, like XLA's pad")

# ------------------------------------------------------------------ concat


def _concat_rule(*xs, axis, plus_zero=False):
    first = xs[0]
    nd = len(first.shape)
    for x in xs:
        if len(x.shape) != nd:
            raise RuntimeError(f"cat: tensors must have the same number of dimensions: got "
                               f"{list(first.shape)} and {list(x.shape)}")
        if x.dtype is not first.dtype:
            raise TypeError(f"cat: tensors must have one dtype after promotion, got "
                            f"{first.dtype.name} and {x.dtype.name}")
        for d in range(nd):
            if d != axis and x.shape[d] != first.shape[d]:
                raise RuntimeError(
                    f"cat: sizes of tensors must match except in dimension {axis}. Expected "
                    f"size {first.shape[d]} but got size {x.shape[d]} for a tensor of shape "
                    f"{list(x.shape)} (first is {list(first.shape)})")
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return tuple(shape), first.dtype


def _concat_vjp(n, g, xs, y):
    axis = n.params["axis"]
    out, start = [], 0
    for need, shape in zip(n.needs, n.in_shapes):
        size = shape[axis]
        out.append(narrow(g, axis, start, size) if need else None)
        start += size
    return tuple(out)


def _concat_jvp(ts, xs, y, p):
    parts = [t if t is not None else zeros(x.shape, dtype=x.dtype) for t, x in zip(ts, xs)]
    return dispatch(CONCAT, *parts, axis=p["axis"])


def _concat_impl(*xs, axis, plus_zero=False):
    out = np.concatenate(xs, axis=axis)
    if plus_zero:  # (x + 0.0: -0.0 becomes +0.0, all else stays)
        np.add(out, out.dtype.type(0), out=out)
    return out


CONCAT = Primitive("concat", "movement", _concat_impl, _concat_rule,
                   vjp=_concat_vjp, jvp=_concat_jvp,
                   doc="join along ``axis``; ``plus_zero`` (the compiler's, never eager's: "
                       "compiler/passes/pads.py) adds +0.0 to every element, as the sum of "
                       "the slices' gradients it stands for does")

# ------------------------------------------------------------------ front end


def reshape(x: Tensor, shape) -> Tensor:
    """Same data in a new shape (one dim may be -1): a view when possible, else a copy."""
    shape = tuple(shape) if not isinstance(shape, (int, np.integer)) else (int(shape),)
    return dispatch(RESHAPE, x, shape=shape)


def view(x: Tensor, *shape) -> Tensor:
    """Like reshape, but raises instead of copying (PyTorch's ``view``)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 1 and isinstance(shape[0], _dt.DType):
        raise TypeError("view(dtype) is not supported; use .to(dtype)")
    target = resolve_shape(shape, x.numel(), "view")  # so a size error names view
    if not x.is_contiguous():
        try:
            x._data.reshape(target, copy=False)
        except ValueError:
            raise RuntimeError(
                f"view size is not compatible with input tensor's size and stride (shape "
                f"{list(x.shape)}, strides {list(x.stride())}): at least one dimension spans "
                f"across two contiguous subspaces. Use .reshape(...) instead.") from None
    return dispatch(RESHAPE, x, shape=tuple(shape))


def expand(x: Tensor, *shape) -> Tensor:
    """Broadcast to a larger shape without copying (-1 keeps a size)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return dispatch(BROADCAST, x, shape=tuple(as_size(s) for s in shape))


def expand_as(x: Tensor, other: Tensor) -> Tensor:
    return expand(x, other.shape)


broadcast_to = expand


def permute(x: Tensor, *dims) -> Tensor:
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    perm = tuple(_norm_dim(d, x.ndim, "permute") for d in dims)
    if len(perm) != x.ndim:
        raise RuntimeError(f"permute: number of dims don't match: got {len(perm)} dims for a "
                           f"tensor of shape {list(x.shape)}")
    return dispatch(PERMUTE, x, perm=perm)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """Swap two dims (a view)."""
    if x.ndim < 2 and dim0 in (0, -1) and dim1 in (0, -1):
        return reshape(x, x.shape)
    d0, d1 = _norm_dim(dim0, x.ndim, "transpose"), _norm_dim(dim1, x.ndim, "transpose")
    perm = list(range(x.ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return dispatch(PERMUTE, x, perm=tuple(perm))


def T(x: Tensor) -> Tensor:
    """All dims reversed (the matrix transpose for 2-d tensors)."""
    return dispatch(PERMUTE, x, perm=tuple(range(x.ndim - 1, -1, -1)))


def mT(x: Tensor) -> Tensor:
    """The last two dims swapped."""
    return transpose(x, -2, -1)


def squeeze(x: Tensor, dim=None) -> Tensor:
    """Remove size-1 dims (all, or the given ones; others are left alone as in PyTorch)."""
    if dim is None:
        dims = tuple(i for i, s in enumerate(x.shape) if s == 1)
    else:
        ds = (dim,) if isinstance(dim, int) else tuple(dim)
        dims = tuple(_norm_dim(d, x.ndim, "squeeze") for d in ds)
        dims = tuple(d for d in dims if x.ndim and x.shape[d] == 1)
    return squeeze_dims(x, dims)


def squeeze_dims(x: Tensor, dims) -> Tensor:
    if not dims:
        return x
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in dims))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """Insert a size-1 dim at ``dim``."""
    d = _norm_dim(dim, x.ndim + 1, "unsqueeze")
    shape = x.shape[:d] + (1,) + x.shape[d:]
    return reshape(x, shape)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    if x.ndim == 0:
        return reshape(x, (1,))
    s = _norm_dim(start_dim, x.ndim, "flatten")
    e = _norm_dim(end_dim, x.ndim, "flatten")
    if s > e:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    if s == e:
        return x
    return reshape(x, x.shape[:s] + (-1,) + x.shape[e + 1:])


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    """``length`` elements of ``dim`` from ``start`` (a view)."""
    d = _norm_dim(dim, x.ndim, "narrow")
    n = x.shape[d]
    if start < 0:
        start += n
    if not (0 <= start and start + length <= n and length >= 0):
        raise IndexError(f"narrow: start ({start}) + length ({length}) exceeds dimension size "
                         f"({n}) of shape {list(x.shape)}")
    starts = [0] * x.ndim
    stops = list(x.shape)
    starts[d], stops[d] = start, start + length
    return dispatch(SLICE, x, starts=tuple(starts), stops=tuple(stops), steps=(1,) * x.ndim)


def pad(x: Tensor, pads, value=0) -> Tensor:
    """Constant padding with one (low, high) or (low, high, interior) per dim of ``x``;
    negative low/high crop."""
    pads = [tuple(p) + (0,) * (3 - len(p)) for p in pads]
    if len(pads) != x.ndim:
        raise RuntimeError(f"pad: expected {x.ndim} (low, high) pairs for shape "
                           f"{list(x.shape)}, got {len(pads)}")
    if any(lo < 0 or hi < 0 for lo, hi, _ in pads):
        starts = tuple(max(-lo, 0) for lo, _, _ in pads)
        stops = tuple(n - max(-hi, 0) for n, (_, hi, _) in zip(x.shape, pads))
        x = dispatch(SLICE, x, starts=starts, stops=stops, steps=(1,) * x.ndim)
        pads = [(max(lo, 0), max(hi, 0), it) for lo, hi, it in pads]
    if all(p == (0, 0, 0) for p in pads):
        return x
    return dispatch(PAD, x, pads=tuple(pads), value=value)


def axis_to_dim(op: str, kwargs: dict) -> None:
    """Rename numpy's ``axis=`` keyword in ``kwargs`` to PyTorch's ``dim=`` (PyTorch's
    argument parser takes either: ``x.sum(axis=1)``, ``torch.cat(xs, axis=0)``)."""
    if "dim" in kwargs:
        raise TypeError(f"{op}() got both dim= and its alias axis=")
    kwargs["dim"] = kwargs.pop("axis")


def axis_alias(fn):
    """``fn`` also taking ``axis=`` for ``dim=``.

    >>> dg.cat([dg.ones(1), dg.zeros(1)], axis=0)   # tensor([1., 0.])
    """
    @functools.wraps(fn)
    def with_axis(*args, **kwargs):
        if "axis" in kwargs:
            axis_to_dim(fn.__name__, kwargs)
        return fn(*args, **kwargs)
    return with_axis


@axis_alias
def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along ``dim`` (dtypes promote as in PyTorch)."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("cat: expected a non-empty list of Tensors")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"cat: expected a sequence of Tensors, got {type(t).__name__}")
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = _dt.promote(dt, t.dtype)
    if any(t.dtype is not dt for t in tensors):
        tensors = [t if t.dtype is dt else UPWARD.cast(t, dt) for t in tensors]
    d = _norm_dim(dim, tensors[0].ndim, "cat")
    return dispatch(CONCAT, *tensors, axis=d)


concat = cat


@axis_alias
def stack(tensors, dim: int = 0) -> Tensor:
    """Join tensors of one shape along a new dim."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    shape = tensors[0].shape
    for t in tensors:
        if t.shape != shape:
            raise RuntimeError(f"stack expects each tensor to be equal size, but got "
                               f"{list(shape)} and {list(t.shape)}")
    d = _norm_dim(dim, len(shape) + 1, "stack")
    return cat([unsqueeze(t, d) for t in tensors], d)


def split(x: Tensor, split_size_or_sections, dim: int = 0) -> tuple:
    """Split into chunks of ``split_size`` (last may be smaller) or of the given sizes."""
    d = _norm_dim(dim, x.ndim, "split")
    n = x.shape[d]
    if isinstance(split_size_or_sections, int):
        size = split_size_or_sections
        if size <= 0:
            raise ValueError(f"split: split_size must be positive, got {size}")
        sizes = [size] * (n // size) + ([n % size] if n % size else [])
        if n == 0:
            sizes = [0]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split_with_sizes expects split_sizes to sum exactly to {n} "
                               f"(input tensor's size at dimension {d}), but got "
                               f"split_sizes={sizes}")
    out, start = [], 0
    for s in sizes:
        out.append(narrow(x, d, start, s))
        start += s
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple:
    """Split into ``chunks`` pieces of ceil(size/chunks) (fewer if the size is small)."""
    if chunks <= 0:
        raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
    d = _norm_dim(dim, x.ndim, "chunk")
    size = -(-x.shape[d] // chunks) if x.shape[d] else 1
    return split(x, max(size, 1), d)


def unbind(x: Tensor, dim: int = 0) -> tuple:
    d = _norm_dim(dim, x.ndim, "unbind")
    return tuple(squeeze_dims(p, (d,)) for p in split(x, 1, d))


def repeat(x: Tensor, *sizes) -> Tensor:
    """Tile ``x`` (PyTorch's ``repeat``), via expand and reshape."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if len(sizes) < x.ndim:
        raise RuntimeError("Number of dimensions of repeat dims can not be smaller than number "
                           "of dimensions of tensor")
    shape = (1,) * (len(sizes) - x.ndim) + x.shape
    inter = []
    for s in shape:
        inter += [1, s]
    y = reshape(x, tuple(inter))
    target = []
    for r, s in zip(sizes, shape):
        target += [r, s]
    y = expand(y, tuple(target))
    return reshape(y, tuple(r * s for r, s in zip(sizes, shape)))


def contiguous(x: Tensor) -> Tensor:
    return x if x.is_contiguous() else x.clone()
