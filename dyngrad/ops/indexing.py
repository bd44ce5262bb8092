"""Index primitives ``gather`` and ``scatter_add``, and everything built on them: integer
and boolean indexing (``x[idx]``), ``__setitem__``, ``take_along_dim``, ``index_select``,
``one_hot``, and the functional form of an in-place write through a view."""

from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..dispatch import STATE, dispatch, report_read
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .creation import (
    IOTA,
    arange,
    dtype_or_default,
    iota_like,
    maybe_requires_grad,
    tensor,
    zeros,
)
from .primitive import Primitive

INDEX_DTYPES = (_dt.int64, _dt.int32)  # the index primitives' index dtypes: int64, as
#   PyTorch's (the composites cast to it); int32 only where a compiled step narrows
#   indices it keeps to itself (compiler/passes/narrow.py)


def _gather_shape(xshape, ishape, axis):
    return tuple(xshape[:axis]) + tuple(ishape) + tuple(xshape[axis + 1:])


def _gather_rule(x, idx, axis):
    if idx.dtype not in INDEX_DTYPES:
        raise IndexError(f"gather: indices must be int64, got {idx.dtype.name}")
    if not 0 <= axis < max(len(x.shape), 1):
        raise IndexError(f"gather: axis {axis} out of range for shape {list(x.shape)}")
    if x.shape and x.shape[axis] == 0 and np.prod(idx.shape) > 0:
        raise IndexError(f"gather: index into an empty dimension {axis} of shape "
                         f"{list(x.shape)}")
    return _gather_shape(x.shape, idx.shape, axis), x.dtype


def _gather_impl(x, idx, axis):
    try:
        return np.take(x, idx, axis=axis)
    except IndexError:
        n = x.shape[axis]
        bad = idx[(idx >= n) | (idx < -n)].ravel()[0]
        raise IndexError(f"index {bad} is out of bounds for dimension {axis} with size {n} "
                         f"(gather from shape {list(x.shape)})") from None


def _gather_vjp(n, g, xs, y):
    idx = xs[1]
    base = zeros(n.in_shapes[0], dtype=g.dtype)
    return (dispatch(SCATTER_ADD, base, idx, g, axis=n.params["axis"]), None)


GATHER = Primitive("gather", "index", _gather_impl, _gather_rule, vjp=_gather_vjp,
                   jvp=lambda ts, xs, y, p: dispatch(GATHER, ts[0], xs[1], **p), save=(1,),
                   doc="np.take along ``axis``: out.shape = x.shape[:axis] + idx.shape + "
                       "x.shape[axis+1:]; negative indices wrap")


def _scatter_rule(base, idx, src, axis):
    if idx.dtype not in INDEX_DTYPES:
        raise IndexError(f"scatter_add: indices must be int64, got {idx.dtype.name}")
    want = _gather_shape(base.shape, idx.shape, axis)
    if tuple(src.shape) != want:
        raise RuntimeError(f"scatter_add: source of shape {list(src.shape)} does not match "
                           f"{list(want)} (base {list(base.shape)}, index "
                           f"{list(idx.shape)}, axis {axis})")
    if src.dtype is not base.dtype:
        raise TypeError(f"scatter_add: source dtype {src.dtype.name} differs from base dtype "
                        f"{base.dtype.name}")
    return tuple(base.shape), base.dtype


def _scatter_impl(base, idx, src, axis):
    out = base.copy()
    n = base.shape[axis]
    if idx.size and (idx.max() >= n or idx.min() < -n):
        bad = idx[(idx >= n) | (idx < -n)].ravel()[0]
        raise IndexError(f"index {bad} is out of bounds for dimension {axis} with size {n} "
                         f"(scatter_add into shape {list(base.shape)})")
    np.add.at(out, (slice(None),) * axis + (idx,), src)
    return out


def _scatter_vjp(n, g, xs, y):
    idx = xs[1]
    gs = dispatch(GATHER, g, idx, axis=n.params["axis"]) if n.needs[2] else None
    return (g if n.needs[0] else None, None, gs)


def _scatter_jvp(ts, xs, y, p):
    base, idx, src = xs
    tb = ts[0] if ts[0] is not None else zeros(base.shape, dtype=base.dtype)
    tsrc = ts[2] if len(ts) > 2 and ts[2] is not None else zeros(src.shape, dtype=src.dtype)
    return dispatch(SCATTER_ADD, tb, idx, tsrc, **p)


SCATTER_ADD = Primitive("scatter_add", "index", _scatter_impl, _scatter_rule,
                        vjp=_scatter_vjp, jvp=_scatter_jvp, save=(1,),
                        doc="base with src added at idx along axis (repeated indices "
                            "accumulate); the transpose of gather")


def _check_rule(idx, size, dim, op, wrap=True):
    if idx.dtype not in INDEX_DTYPES:
        raise IndexError(f"{op}: indices must be int64, got {idx.dtype.name}")
    return tuple(idx.shape), idx.dtype


def _check_impl(idx, size, dim, op, wrap=True):
    low = -size if wrap else 0
    if idx.size and (idx.max() >= size or idx.min() < low):
        if op == "one_hot":  # class values
            raise RuntimeError(f"one_hot: class values must be in [0, {size})")
        bad = idx[(idx >= size) | (idx < low)].ravel()[0]
        where = "" if op == "index" else f"{op}: "  # (x[i, j] reads as numpy's message)
        raise IndexError(f"{where}index {bad} is out of bounds for dimension {dim} with size "
                         f"{size}")
    return idx


INDEX_CHECK = Primitive("index_check", "index", _check_impl, _check_rule,
                        doc="the indices unchanged, after checking each is in [-size, size) "
                            "(``wrap``; else [0, size)) — an IndexError naming ``op`` and "
                            "``dim`` otherwise: a bounds check the tracer records, so "
                            "compiled code checks it too")


def check_index(idx: Tensor, size: int, dim: int, op: str, wrap: bool = True) -> Tensor:
    """``idx`` once every entry is known to index a dimension of ``size``: in [-size, size)
    (negative entries wrap, as numpy's and PyTorch's indexing), or in [0, size) without
    ``wrap`` (one_hot's class values, scatter_add's and index_add's indices: PyTorch
    rejects negative ones there). Composites check bounds through this primitive, never by
    reading the data in Python (which a compiled call would not repeat)."""
    return dispatch(INDEX_CHECK, idx, size=int(size), dim=int(dim), op=op, wrap=bool(wrap))


def gather(x: Tensor, idx: Tensor, axis: int = 0) -> Tensor:
    """``np.take(x, idx, axis)`` with autograd."""
    return dispatch(GATHER, x, _as_index(idx), axis=axis)


def scatter_add(base: Tensor, idx: Tensor, src: Tensor, axis: int = 0) -> Tensor:
    return dispatch(SCATTER_ADD, base, _as_index(idx), src, axis=axis)


def _narrow_int(t: Tensor) -> bool:
    """An int32 index tensor (PyTorch indexes with long and int tensors; it becomes int64
    here, the one dtype of indices in the primitives)."""
    return t.dtype is _dt.int32


def _as_index(idx) -> Tensor:
    if isinstance(idx, Tensor):
        if idx.dtype is _dt.int64:
            return idx
        if _narrow_int(idx):
            return _e.cast(idx, _dt.int64)
        if idx.dtype is _dt.bool_ or idx.dtype.is_floating_point:
            raise IndexError(f"tensors used as indices must be long, int or bool tensors, got "
                             f"{idx.dtype.name}")
    arr = np.asarray(idx)
    if arr.dtype.kind not in "iu" and arr.size:
        raise IndexError(f"indices must be integers, got {arr.dtype}")
    return Tensor._constant(arr.astype(np.int64))


# ------------------------------------------------------------------ PyTorch-style wrappers


def take_along_dim(x: Tensor, idx: Tensor, dim: int) -> Tensor:
    """PyTorch's ``gather(x, dim, idx)``: out has idx's shape and, for dim=1,
    out[i][j] = x[i][idx[i][j]]; idx may be smaller than x outside ``dim``."""
    idx = _as_index(idx)
    if idx.ndim != x.ndim:
        raise RuntimeError(f"gather: index tensor must have the same number of dimensions as "
                           f"input ({x.ndim}), got {idx.ndim}")
    d = dim % max(x.ndim, 1)
    if x.ndim == 0:
        return gather(_m.reshape(x, (1,)), _m.reshape(idx, (1,)), 0).reshape(())
    for i in range(x.ndim):
        if i != d and idx.shape[i] > x.shape[i]:
            raise RuntimeError(f"gather: size of index {list(idx.shape)} exceeds the input "
                               f"{list(x.shape)} at dimension {i} (only dim {d} may differ)")
    n = x.shape[d]
    idx = check_index(idx, n, d, "gather")
    idx = _e.where(_e.lt(idx, 0), idx + n, idx)
    return gather(_m.reshape(_m.contiguous(x), (-1,)), _flat_positions(idx, tuple(x.shape), d),
                  0)


def _flat_positions(idx: Tensor, shape: tuple, d: int) -> Tensor:
    """Flat positions in a C-ordered array of ``shape`` of the elements ``idx`` (checked,
    wrapped) picks along ``d``, the other coordinates those of ``idx``'s own elements."""
    flat, stride = None, 1
    for i in range(len(shape) - 1, -1, -1):
        part = idx if i == d else iota_like(idx, i)
        term = part * stride if stride != 1 else part
        flat = term if flat is None else flat + term
        stride *= shape[i]
    return flat


def scatter_operands(x: Tensor, dim: int, index: Tensor, src: Tensor, what: str,
                     op: str) -> tuple:
    """PyTorch's ``scatter``-family arguments checked (``what()`` names the function in the
    errors, ``op`` in the bounds check): the flat positions in ``x`` the elements of
    ``index`` target and the source values they take, both 1-d in ``index``'s row-major
    order (``src`` may be larger: only its index-shaped corner is read)."""
    index = _as_index(index)
    if index.ndim != x.ndim or src.ndim != x.ndim:
        raise RuntimeError(f"{what}(): Index tensor must have the same number of "
                           f"dimensions as self tensor (index {list(index.shape)}, self "
                           f"{list(x.shape)}, src {list(src.shape)})")
    if src.dtype is not x.dtype:
        raise RuntimeError(f"{what}(): Expected self.dtype to be equal to src.dtype "
                           f"({x.dtype.name} and {src.dtype.name})")
    shape = tuple(x.shape)
    if not shape:  # (a 0-d x: one element, as a 1-d one)
        shape, index, src, d = (1,), _m.reshape(index, (1,)), _m.reshape(src, (1,)), 0
    else:
        d = dim % x.ndim
    if any(index.shape[i] > src.shape[i] or (i != d and index.shape[i] > shape[i])
           for i in range(len(shape))):
        raise RuntimeError(f"{what}(): Expected index {list(index.shape)} to be smaller "
                           f"than self {list(x.shape)} apart from dimension {d} and to be "
                           f"smaller size than src {list(src.shape)}")
    if tuple(src.shape) != tuple(index.shape):
        src = src[tuple(slice(0, k) for k in index.shape)]
    idx = check_index(index, shape[d], d, op, wrap=False)
    return (_m.reshape(_flat_positions(idx, shape, d), (-1,)), _m.reshape(src, (-1,)))


def scatter_add_dim(x: Tensor, dim: int, index: Tensor, src: Tensor,
                    op: str = "scatter_add") -> Tensor:
    """PyTorch's ``scatter_add(input, dim, index, src)``: ``x`` with, for dim=0,
    ``out[index[i][j]][j] += src[i][j]`` for every element of ``index`` (src may be larger:
    only its index-shaped corner is read); repeated indices accumulate.

    >>> dg.zeros(3).scatter_add(0, dg.tensor([0, 2, 0]), dg.tensor([1., 2., 3.]))
    tensor([4., 0., 2.])
    """
    if not isinstance(src, Tensor):
        raise TypeError(f"scatter_add(): src must be a Tensor, not {type(src).__name__}")
    flat, vals = scatter_operands(x, dim, index, src, "scatter_add", op)
    out = scatter_add(_m.reshape(x, (-1,)), flat, vals, 0)
    return _m.reshape(out, tuple(x.shape))


def index_add(x: Tensor, dim: int, index: Tensor, source: Tensor, *, alpha=1) -> Tensor:
    """PyTorch's ``index_add``: ``x`` with ``alpha · source``'s slices along ``dim`` added to
    the slices of ``x`` that the 1-d ``index`` names (repeated ones accumulate).

    >>> dg.zeros(3, 2).index_add(0, dg.tensor([2, 0, 2]), dg.ones(3, 2))
    tensor([[1., 1.],
            [0., 0.],
            [2., 2.]])
    """
    index = _as_index(index)
    d = dim % max(x.ndim, 1)
    if index.ndim > 1:
        raise IndexError("index_add_(): Index is supposed to be a vector")
    if source.ndim != x.ndim or source.shape[d] != index.numel() or any(
            source.shape[i] != x.shape[i] for i in range(x.ndim) if i != d):
        raise RuntimeError(f"index_add_(): source {list(source.shape)} does not fit self "
                           f"{list(x.shape)} with an index of {index.numel()} along dim {d}")
    if source.dtype is not x.dtype:
        raise RuntimeError(f"index_add_(): self ({x.dtype.name}) and source "
                           f"({source.dtype.name}) must have the same scalar type")
    if alpha != 1:
        source = source * alpha
    shape = [1] * x.ndim
    shape[d] = index.numel()
    idx = _m.expand(_m.reshape(index, tuple(shape)), tuple(source.shape))
    return scatter_add_dim(x, d, idx, source, "index_add_")


def index_select(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Rows (or any dim's slices) picked by a 1-d index."""
    index = _as_index(index)
    if index.ndim > 1:
        raise IndexError("index_select(): Index is supposed to be a vector")
    return gather(x, _m.reshape(index, (-1,)), dim % max(x.ndim, 1))


def one_hot(idx: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding with a new last dim of ``num_classes``."""
    idx = _as_index(idx)
    if num_classes < 0:
        if STATE.modes:
            report_read(idx, "size")
        num_classes = int(idx._data.max()) + 1 if idx.numel() else 0
    idx = check_index(idx, num_classes, -1, "one_hot", wrap=False)
    return _e.cast(_e.eq(_m.unsqueeze(idx, -1), arange(num_classes)), _dt.int64)


def eye(n: int, m: int | None = None, *, dtype=None, requires_grad: bool = False,
        device=None) -> Tensor:
    """The identity matrix (n×m): the one-hot rows of ``arange(n)`` (so it lives beside
    ``one_hot``, above the comparisons it is made of).

    >>> dg.eye(2)
    tensor([[1., 0.],
            [0., 1.]])
    """
    m = n if m is None else m
    rows = dispatch(IOTA, shape=(n, m), axis=0, start=0, step=1, dtype=_dt.int64)
    cols = dispatch(IOTA, shape=(n, m), axis=1, start=0, step=1, dtype=_dt.int64)
    return maybe_requires_grad(_e.cast(_e.eq(rows, cols), dtype_or_default(dtype)), requires_grad,
                               device)


# ------------------------------------------------------------------ x[key]


def _parse_key(key, ndim: int):
    """Expand a key into one entry per consumed dim: ('none',), ('int', i), ('slice', s),
    ('adv', int64 Tensor), ('bool', bool Tensor)."""
    if not isinstance(key, tuple):
        key = (key,)
    entries = []
    for k in key:
        if k is None:
            entries.append(("none", None))
        elif k is Ellipsis:
            entries.append(("ellipsis", None))
        elif isinstance(k, slice):
            entries.append(("slice", k))
        elif isinstance(k, (bool, np.bool_)):
            raise IndexError("indexing with a Python bool is not supported; use a bool tensor")
        elif isinstance(k, (int, np.integer)):
            entries.append(("int", int(k)))
        elif isinstance(k, Tensor):
            if _narrow_int(k):
                k = _e.cast(k, _dt.int64)
            if k.dtype is _dt.bool_:
                entries.append(("bool", k))
            elif k.dtype is _dt.int64:  # a 0-d one selects like an int (PyTorch)
                entries.append(("int", int(k)) if k.ndim == 0 else ("adv", k))
            else:
                raise IndexError(f"tensors used as indices must be long, int or bool tensors, "
                                 f"got {k.dtype.name}")
        elif isinstance(k, (list, np.ndarray)):
            arr = np.asarray(k)
            if arr.dtype == np.bool_:
                entries.append(("bool", Tensor._constant(arr)))
            elif arr.dtype.kind in "iu" or arr.size == 0:
                entries.append(("adv", Tensor._constant(arr.astype(np.int64))))
            else:
                raise IndexError(f"indices must be integers or booleans, got {arr.dtype}")
        else:
            raise IndexError(f"only integers, slices (`:`), ellipsis (`...`), None and long or "
                             f"bool tensors are valid indices (got {type(k).__name__})")
    consumed = sum(e[1].ndim if e[0] == "bool" else (0 if e[0] in ("none", "ellipsis") else 1)
                   for e in entries)
    n_ell = sum(e[0] == "ellipsis" for e in entries)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if consumed > ndim:
        raise IndexError(f"too many indices for tensor of dimension {ndim} (got {consumed})")
    fill = [("slice", slice(None))] * (ndim - consumed)
    if n_ell:
        i = next(i for i, e in enumerate(entries) if e[0] == "ellipsis")
        entries = entries[:i] + fill + entries[i + 1:]
    else:
        entries = entries + fill
    return entries


def _basic(x: Tensor, key: tuple):
    """Fast path for keys of ints and slices only: one slice op (and a reshape for ints)."""
    shape = x._data.shape
    if len(key) > len(shape):
        return None
    starts, stops, steps, keep = [], [], [], []
    for d, k in enumerate(key):
        n = shape[d]
        if type(k) is int:
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for dimension {d} with size {n}")
            k %= n
            starts.append(k), stops.append(k + 1), steps.append(1)
        else:
            if k.step is not None and k.step <= 0:
                raise ValueError(_step_error(k.step))
            a, b, c = k.indices(n)
            starts.append(a), stops.append(max(a, b)), steps.append(c)
            keep.append(d)
    for d in range(len(key), len(shape)):
        starts.append(0), stops.append(shape[d]), steps.append(1)
        keep.append(d)
    out = dispatch(_m.SLICE, x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if len(keep) != len(shape):
        out = _m.reshape(out, tuple(out._data.shape[d] for d in keep))
    return out


def _step_error(step) -> str:
    return (f"indexing: step must be greater than zero (got {step}); to reverse a dim, index "
            f"it with a tensor, e.g. x[dg.arange(n - 1, -1, -1)]")


def getitem(x: Tensor, key) -> Tensor:
    """PyTorch/numpy indexing: basic indexing gives views; integer and bool tensors gather."""
    tk = type(key)
    if tk is int or tk is slice:
        out = _basic(x, (key,))
        if out is not None:
            return out
    elif tk is tuple and all(type(k) is int or type(k) is slice for k in key):
        out = _basic(x, key)
        if out is not None:
            return out
    orig = x
    entries = _parse_key(key, x.ndim)
    # a 0-d bool index (x[True], x[cond]) adds a dim of size 1 and masks it, as in PyTorch
    entries = [("none", v) if k == "bool" and v.ndim == 0 else (k, v) for k, v in entries]
    if any(e[0] == "none" for e in entries):
        shape, j = [], 0
        for kind, v in entries:
            if kind == "none":
                shape.append(1)
            else:
                n = v.ndim if kind == "bool" else 1
                shape.extend(x.shape[j:j + n])
                j += n
        x = _m.reshape(x, tuple(shape))
        entries = [(k, v) if k != "none" else ("slice", slice(None)) if v is None
                   else ("bool", _m.reshape(v, (1,))) for k, v in entries]
    if any(e[0] == "bool" for e in entries):
        new, j = [], 0  # j: the dim of x the entry starts at
        for kind, v in entries:
            if kind == "bool":
                for k, (m, n) in enumerate(zip(v.shape, x.shape[j:])):
                    if m != n:
                        raise IndexError(f"The shape of the mask {list(v.shape)} at index {k} "
                                         f"does not match the shape of the indexed tensor "
                                         f"{list(x.shape)} at index {j + k}")
                if STATE.modes:
                    report_read(v, "nonzero")
                for nz in np.nonzero(v._data):
                    new.append(("adv", Tensor._constant(nz.astype(np.int64))))
                j += v.ndim
            else:
                new.append((kind, v))
                j += 1
        entries = new
    has_adv = any(e[0] == "adv" for e in entries)
    starts, stops, steps, drop = [], [], [], []
    for d, (kind, v) in enumerate(entries):
        n = x.shape[d]
        if kind == "slice":
            if v.step is not None and v.step <= 0:
                raise ValueError(_step_error(v.step))
            a, b, c = v.indices(n)
            starts.append(a), stops.append(max(a, b)), steps.append(c)
        elif kind == "int":
            if not -n <= v < n:
                raise IndexError(f"index {v} is out of bounds for dimension {d} with size {n}")
            # an int selects (drops its dim) before any advanced indexing, as in PyTorch —
            # not numpy, where it joins the advanced indices (x[1, :, idx] differs)
            i = v % n
            starts.append(i), stops.append(i + 1), steps.append(1)
            drop.append(d)
        else:
            starts.append(0), stops.append(n), steps.append(1)
    if any(a != 0 or b != n or c != 1 for a, b, c, n in zip(starts, stops, steps, x.shape)):
        x = dispatch(_m.SLICE, x, starts=tuple(starts), stops=tuple(stops), steps=tuple(steps))
    if drop:
        x = _m.reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in drop))
    if not has_adv:
        return x if x is not orig else _m.reshape(x, x.shape)  # always a new view
    kept = [e for d, e in enumerate(entries) if d not in drop]
    return _advanced(x, [(d, v) for d, (k, v) in enumerate(kept) if k == "adv"])


def _advanced(x: Tensor, adv: list) -> Tensor:
    dims = [d for d, _ in adv]
    idxs = [v for _, v in adv]
    try:
        bshape = np.broadcast_shapes(*(i.shape for i in idxs))
    except ValueError:  # PyTorch's error type and message
        raise IndexError("shape mismatch: indexing tensors could not be broadcast together "
                         "with shapes " + ", ".join(str(list(i.shape)) for i in idxs)) from None
    if len(adv) > 1:  # bounds are checked here, before any index is flattened
        adv = [(d, check_index(i, x.shape[d], d, "index")) for d, i in adv]
        idxs = [v for _, v in adv]
    if len(adv) == 1:
        return gather(x, idxs[0], dims[0])
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    rest = [d for d in range(x.ndim) if d not in dims]
    xp = _m.permute(x, dims + rest) if dims != list(range(len(dims))) else x
    lead = int(np.prod([x.shape[d] for d in dims]))
    xf = _m.reshape(_m.contiguous(xp), (lead,) + tuple(x.shape[d] for d in rest))
    flat, stride = None, 1
    for d, i in reversed(adv):
        n = x.shape[d]
        i = _e.where(_e.lt(i, 0), i + n, i)
        term = i * stride if stride != 1 else i
        flat = term if flat is None else flat + term
        stride *= n
    flat = _m.expand(flat, bshape) if flat.shape != tuple(bshape) else flat
    out = gather(xf, flat, 0)
    if adjacent and dims[0] > 0:
        nb = len(bshape)
        k = dims[0]
        perm = list(range(nb, nb + k)) + list(range(nb)) + list(range(nb + k, out.ndim))
        out = _m.permute(out, perm)
    return out


# ------------------------------------------------------------------ writes


def positions(shape: tuple) -> Tensor:
    """An int64 tensor of ``shape`` holding each element's flat (row-major) position."""
    n = int(np.prod(shape))
    return _m.reshape(arange(n), shape)


def index_put(x: Tensor, pos: Tensor, value: Tensor) -> Tensor:
    """``x`` (functionally) with the flat positions ``pos`` set to ``value``; for repeated
    positions the last write wins, as in numpy."""
    flat_pos = _m.reshape(pos, (-1,))
    vals = _m.reshape(_m.contiguous(_m.expand(value, pos.shape)), (-1,))
    if STATE.modes:  # which writes are kept depends on the positions' values
        report_read(flat_pos, "index")
    p = flat_pos._data
    order = np.argsort(p[::-1], kind="stable")  # (not np.unique: its first call imports
    rev = p[::-1][order]  #                         numpy.ma, code a trace would flag)
    if p.size > 1 and (rev[1:] == rev[:-1]).any():  # keep the last occurrence of each
        first = np.concatenate(([True], rev[1:] != rev[:-1]))  # position
        keep = np.sort(p.size - 1 - order[first])
        flat_pos = gather(flat_pos, Tensor._constant(keep), 0)
        vals = gather(vals, Tensor._constant(keep), 0)
    n = x.numel()
    hit = scatter_add(zeros((n,), dtype=_dt.int64), flat_pos,
                      _m.expand(Tensor._constant(np.array(1, np.int64)), flat_pos.shape), 0)
    placed = scatter_add(zeros((n,), dtype=x.dtype), flat_pos, vals, 0)
    out = _e.where(_e.gt(hit, 0), placed, _m.reshape(x, (-1,)))
    return _m.reshape(out, x.shape)


def setitem(x: Tensor, key, value) -> None:
    """``x[key] = value`` — an in-place write with autograd through it."""
    if isinstance(value, Tensor):
        vt = value
    else:
        vt = tensor(value, dtype=x.dtype)
    lead = 0
    while lead < vt.ndim and vt.shape[lead] == 1:
        lead += 1
    if lead:  # PyTorch drops a value's leading size-1 dims (x[i] = y of shape (1, 1))
        vt = _m.reshape(vt, tuple(vt.shape[lead:]))
    graph = STATE.grad_enabled and (x._requires_grad or vt._requires_grad
                                    or (x._base is not None and x._base._requires_grad))
    x._check_inplace("__setitem__")
    if not graph and not STATE.modes and _numpy_agrees(key):
        try:
            x._data[_np_key(key)] = vt._data
        except (ValueError, IndexError):
            pass  # a clear message is derived below, outside numpy's exception context
        else:
            x._storage.version += 1
            return
        pos = getitem(positions(x.shape), key)
        raise RuntimeError(f"__setitem__: value of shape {list(vt.shape)} cannot be assigned "
                           f"to the indexed shape {list(pos.shape)}")
    if isinstance(key, Tensor) and key.dtype is _dt.bool_ and 0 < key.ndim <= x.ndim and \
            key.shape == x.shape[:key.ndim] and _fills(vt.shape, x.shape[key.ndim:]):
        # x[mask] = v with v one value, or one value per element of the dims the mask does
        # not index (a row for each selected row): a select, whose result never depends on
        # how many elements the mask holds (so a tracer need not read the mask: it is data)
        if vt.dtype is not x.dtype:
            vt = _e.cast(vt, x.dtype)
        keep = _m.reshape(key, key.shape + (1,) * (x.ndim - key.ndim))
        x._commit(_e.where(keep, vt, x), "__setitem__")
        return
    with no_grad():
        pos = getitem(positions(x.shape), key)
    try:
        np.broadcast_shapes(vt.shape, pos.shape)
    except ValueError:
        raise RuntimeError(f"__setitem__: shape mismatch: value tensor of shape "
                           f"{list(vt.shape)} cannot be broadcast to indexing result of shape "
                           f"{list(pos.shape)}") from None
    if vt.dtype is not x.dtype:
        vt = _e.cast(vt, x.dtype)
    x._commit(index_put(x, pos, vt), "__setitem__")


def _fills(value_shape: tuple, rest: tuple) -> bool:
    """Whether a value of ``value_shape`` broadcasts to ``rest`` (the dims a boolean mask
    leaves), so ``x[mask] = value`` puts the same ``rest``-shaped block at every selected
    position."""
    if len(value_shape) > len(rest):
        return False
    try:
        return np.broadcast_shapes(value_shape, rest) == tuple(rest)
    except ValueError:
        return False


def _numpy_agrees(key) -> bool:
    """Whether numpy indexes like PyTorch with ``key``: not when an int (or 0-d int tensor)
    meets an advanced index — numpy counts the int as advanced too, which can move the
    indexed dims to the front (x[1, :, idx])."""
    ks = key if isinstance(key, tuple) else (key,)
    n_int = n_adv = 0
    for k in ks:
        if isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            n_int += 1
        elif isinstance(k, Tensor) and k.ndim == 0 and (k.dtype is _dt.int64 or _narrow_int(k)):
            n_int += 1
        elif isinstance(k, (Tensor, list, np.ndarray)):
            n_adv += 1
    return not (n_int and n_adv)


def _np_key(key):
    if isinstance(key, tuple):
        return tuple(_np_key(k) for k in key)
    if isinstance(key, Tensor):
        return key._data
    return key


def replay_view(base: Tensor, chain: tuple) -> Tensor:
    """Re-create a view of ``base`` from the movement ops that made it."""
    out = base
    for prim, params in chain:
        out = dispatch(prim, out, **params)
    return out


def view_scatter(base: Tensor, chain: tuple, new_view: Tensor) -> Tensor:
    """``base`` (functionally) with the region a view selects replaced by ``new_view`` —
    how an in-place change through a view reaches the base's autograd history."""
    with no_grad():
        pos = replay_view(positions(base.shape), chain)
    return index_put(base, pos, new_view)


def nonzero(x: Tensor, *, as_tuple: bool = False):
    """PyTorch's ``nonzero``: the (n, ndim) int64 indices of the non-zero elements in C
    order, or with ``as_tuple`` one 1-d index tensor per dim (a 0-d input counts as 1-d
    there). Its shape depends on the data: a compiled call reading it is guarded on it (the
    tracer is told of the read), as boolean-mask indexing is.

    >>> dg.nonzero(dg.tensor([[0, 3], [4, 0]]))
    tensor([[0, 1],
            [1, 0]])
    """
    if STATE.modes:
        report_read(x, "nonzero")
    a = x._data
    if as_tuple:
        return tuple(Tensor._constant(i.astype(np.int64)) for i in np.nonzero(np.atleast_1d(a)))
    if a.ndim == 0:
        return Tensor._constant(np.zeros((int(a != 0), 0), dtype=np.int64))
    return Tensor._constant(np.stack(np.nonzero(a), axis=1).astype(np.int64).reshape(-1, a.ndim))
