"""``vmap``: map a function over a batch dimension by batching each primitive once.

How it works. The function runs **once**, on the first example of every mapped input: real
tensors with the per-example (logical) shapes, so composites, shape arithmetic in Python and
autograd all behave exactly as in a loop. Alongside, :class:`BatchMode` — a dispatch mode —
runs the same program on the whole batch: every tensor that depends on the mapped inputs has
a **batched** *counterpart* (``(size, *shape)``, batch dim first), and for each primitive the
function issues, the primitive's **batching rule** (the table ``RULES``, in the spirit of JAX's
batching interpreter) computes the output's counterpart from the inputs' — one numpy call for
the whole batch. Everything else (constants, parameters passed with ``in_dims=None``, tensors
made from them) is the same for every example and stands for itself. Counterparts are found
by the identity of the logical tensor's ndarray, so ``detach()``, ``.data`` and the tensors
autograd saves for backward keep them, as forward mode's tangents do in
:mod:`dyngrad.forward_ad`.

Batching rules are ordinary dispatched operations, so transforms compose: ``vmap(grad(f))``
batches the backward pass (per-example gradients), ``grad(vmap(f))`` differentiates the
batched program, and ``vmap(vmap(f))`` stacks two modes.

Note (autograd inside and outside): the batched program must carry the autograd history a
caller outside vmap can see, not the one transforms *inside* the function create. So a leaf
made to require grad inside the function (``grad``'s differentiable stand-in for an unmapped
argument, ``requires_grad_`` on a local tensor) gets a detached counterpart, and so does
everything computed from it — the per-example gradients of ``vmap(grad(f))`` do not require
grad. Conversely a counterpart is detached wherever its logical tensor is (``detach()``).

Note (fallback): batching is only valid if every example would run the same program. When
the function reads a batched value into Python (``bool()``, ``item()``, ``numpy()``,
printing, boolean-mask indexing), issues a primitive without a batching rule, writes in place
into a mapped input or through a view, or draws random numbers with
``randomness='different'``, the batched attempt is abandoned and the function is called once
per example and the results stacked — the answer of a Python loop, never a wrong one. The
attempt is abandoned with :class:`_Fallback`, a ``BaseException`` so that a broad
``except Exception`` in user code cannot swallow it. The function then runs ``1 + size``
times, so its Python side effects happen that often; ``vmapped.fallback_reason`` says why
(``None`` after a batched call).

Known limit: index bounds that composites check in Python before flattening indices
(``take_along_dim``, indexing with several index tensors, ``one_hot`` with ``num_classes``)
are checked on the first example only, so an out-of-range index in another example reads a
wrong element where the loop would raise. The ``gather``/``scatter_add`` primitives themselves
check every example.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

from . import dtypes as _dt
from .dispatch import DispatchMode, dispatch, push_mode, suspend
from .ops import REGISTRY as P
from .ops import creation as _c
from .ops import movement as _m
from .tensor import Tensor

__all__ = ["vmap", "BatchMode", "RULES"]


class _Fallback(BaseException):  # control flow, not an error
    """Abandon the batched attempt of the vmap that owns ``mode``."""

    def __init__(self, mode: BatchMode, reason: str) -> None:
        super().__init__(reason)
        self.mode, self.reason = mode, reason


# ------------------------------------------------------------------ helpers for rules
# A batched counterpart has the batch dim first: logical shape s is physical (size, *s).


def _align(p: Tensor, rank: int) -> Tensor:
    """Batched ``p`` with size-1 dims inserted after the batch dim up to logical ``rank``,
    so numpy's right-aligned broadcasting pairs it with unbatched operands correctly."""
    if p.ndim == rank + 1:
        return p
    return dispatch(P["reshape"], p, shape=(p.shape[0],) + (1,) * (rank + 1 - p.ndim)
                    + tuple(p.shape[1:]))


def _materialize(x: Tensor, size: int) -> Tensor:
    """An unbatched tensor repeated over the batch (a broadcast view)."""
    x1 = dispatch(P["reshape"], x, shape=(1,) + tuple(x.shape))
    return dispatch(P["broadcast"], x1, shape=(size,) + tuple(x.shape))


def _permute(p: Tensor, perm) -> Tensor:
    perm = tuple(perm)
    return p if perm == tuple(range(p.ndim)) else dispatch(P["permute"], p, perm=perm)


def _rows_first(p: Tensor, axis: int) -> Tensor:
    """Batched (B, *pre, n, *post) as (B·n, *pre, *post): example b's row r at b·n + r."""
    q = _permute(p, (0, axis + 1) + tuple(d for d in range(1, p.ndim) if d != axis + 1))
    return dispatch(P["reshape"], q, shape=(q.shape[0] * q.shape[1],) + tuple(q.shape[2:]))


def _row_index(idx: Tensor, n: int) -> Tensor:
    """Batched indices (B, *i) into a dim of size n, as indices into :func:`_rows_first`'s
    rows. Bounds are checked first: an offset index would silently read the next example."""
    a = idx._data
    if a.size and (a.max() >= n or a.min() < -n):
        bad = a[(a >= n) | (a < -n)].ravel()[0]
        raise IndexError(f"index {bad} is out of bounds for dimension with size {n} (in a "
                         f"batched gather/scatter_add under vmap)")
    wrapped = dispatch(P["where"], dispatch(P["lt"], idx, 0), dispatch(P["add"], idx, n), idx)
    offset = dispatch(P["iota"], shape=tuple(idx.shape), axis=0, start=0, step=n,
                      dtype=_dt.int64)
    return dispatch(P["add"], wrapped, offset)


# ------------------------------------------------------------------ batching rules
# rule(prim, xs, bs, out, params, size) -> the output's counterpart. ``xs`` are the inputs'
# counterparts, ``bs[i]`` whether input i is batched (at least one is), ``out`` the logical
# output (its shape is the per-example shape). A result of out's own shape is unbatched.


def _elementwise(prim, xs, bs, out, params, size):
    return dispatch(prim, *(_align(x, out.ndim) if b else x for x, b in zip(xs, bs)), **params)


def _shift_axes(prim, xs, bs, out, params, size):  # sum, max, size_of
    return dispatch(prim, xs[0], **{**params, "axes": tuple(a + 1 for a in params["axes"])})


def _reshape(prim, xs, bs, out, params, size):
    return dispatch(prim, xs[0], shape=(size,) + tuple(out.shape))


def _broadcast(prim, xs, bs, out, params, size):
    return dispatch(prim, _align(xs[0], out.ndim), shape=(size,) + tuple(out.shape))


def _permute_rule(prim, xs, bs, out, params, size):
    return dispatch(prim, xs[0], perm=(0,) + tuple(d + 1 for d in params["perm"]))


def _slice(prim, xs, bs, out, params, size):
    return dispatch(prim, xs[0], starts=(0,) + tuple(params["starts"]),
                    stops=(size,) + tuple(params["stops"]), steps=(1,) + tuple(params["steps"]))


def _pad(prim, xs, bs, out, params, size):
    return dispatch(prim, xs[0], pads=((0, 0, 0),) + tuple(params["pads"]),
                    value=params["value"])


def _concat(prim, xs, bs, out, params, size):
    parts = [x if b else _materialize(x, size) for x, b in zip(xs, bs)]
    return dispatch(prim, *parts, axis=params["axis"] + 1)


def _matmul(prim, xs, bs, out, params, size):
    # batch dims broadcast right-aligned: give the batched operand the output's rank
    # (transpose flags act on the last two dims, so they carry over unchanged)
    return dispatch(prim, *(_align(x, out.ndim) if b else x for x, b in zip(xs, bs)),
                    **params)


def _gather(prim, xs, bs, out, params, size):
    (x, idx), (bx, bi), axis = xs, bs, params["axis"]
    if not bi:
        return dispatch(prim, x, idx, axis=axis + 1)
    if not bx:  # np.take puts the index's batch dim at ``axis``: move it to the front
        o = dispatch(prim, x, idx, axis=axis)
        return _permute(o, (axis,) + tuple(d for d in range(o.ndim) if d != axis))
    k = idx.ndim - 1  # both batched: gather rows of the flattened (B·n) axis
    o = dispatch(prim, _rows_first(x, axis), _row_index(idx, x.shape[axis + 1]), axis=0)
    # o is (B, *idx, *pre, *post); the logical layout is (*pre, *idx, *post)
    return _permute(o, (0,) + tuple(1 + k + j for j in range(axis))
                    + tuple(1 + j for j in range(k)) + tuple(range(1 + k + axis, o.ndim)))


def _scatter_add(prim, xs, bs, out, params, size):
    (base, idx, src), axis = xs, params["axis"]
    base = base if bs[0] else _materialize(base, size)
    src = src if bs[2] else _materialize(src, size)
    if not bs[1]:
        return dispatch(prim, base, idx, src, axis=axis + 1)
    k, n = idx.ndim - 1, base.shape[axis + 1]
    # src (B, *pre, *idx, *post) -> (B, *idx, *pre, *post), to match the flattened rows
    s = _permute(src, (0,) + tuple(1 + axis + j for j in range(k))
                 + tuple(1 + j for j in range(axis)) + tuple(range(1 + axis + k, src.ndim)))
    o = dispatch(prim, _rows_first(base, axis), _row_index(idx, n), s, axis=0)
    o = dispatch(P["reshape"], o, shape=(size, n) + tuple(o.shape[1:]))  # (B, n, *pre, *post)
    return _permute(o, (0,) + tuple(2 + j for j in range(axis)) + (1,)
                    + tuple(range(2 + axis, o.ndim)))


RULES: dict[str, Callable] = {
    "sum": _shift_axes, "max": _shift_axes, "size_of": _shift_axes,
    "reshape": _reshape, "broadcast": _broadcast, "permute": _permute_rule, "slice": _slice,
    "pad": _pad, "concat": _concat,
    "gather": _gather, "scatter_add": _scatter_add,
    "matmul": _matmul,
    # a bounds check looks at each index on its own: the batched indices, checked as one
    "index_check": lambda prim, xs, bs, out, params, size: dispatch(prim, xs[0], **params),
}
"""Batching rules by primitive name; every ``elementwise`` primitive uses ``KIND_RULES``.
Creation primitives have no tensor inputs, so they are never batched."""

KIND_RULES: dict[str, Callable] = {"elementwise": _elementwise}


# ------------------------------------------------------------------ the mode


class BatchMode(DispatchMode):
    """Runs the function's program on the first example and, alongside, on the whole batch
    (see the module's notes). ``counterpart(t)`` is ``(t's value in the batched program,
    whether it is batched)``."""

    def __init__(self, size: int, randomness: str = "error") -> None:
        self.size = size
        self.randomness = randomness
        # id(ndarray) -> (weakref to it, counterpart, storage version, batched), for the
        # tensors that do not stand for themselves; dropped when the ndarray dies, so a
        # batched intermediate lives only as long as its logical twin
        self.entries: dict[int, tuple] = {}
        self.made: dict[int, weakref.ref] = {}  # tensor objects made inside the function
        self.local: dict[int, object] = {}    # storages of tensors made inside the function
        self.inputs: dict[int, object] = {}   # storages of the mapped inputs' first examples
        self.written: dict[int, object] = {}  # storages written in place with batched values

    def bind(self, t: Tensor, p: Tensor, batched: bool) -> None:
        arr = t._data
        if self._entry(t) is None:
            weakref.finalize(arr, self.entries.pop, id(arr), None)
        self.entries[id(arr)] = (weakref.ref(arr), p, t._storage.version, batched)

    def _entry(self, t: Tensor):
        e = self.entries.get(id(t._data))
        return e if e is not None and e[0]() is t._data else None

    def counterpart(self, t) -> tuple:
        if not isinstance(t, Tensor):
            return t, False
        e = self._entry(t)
        if e is None:
            if self.written.get(id(t._storage)) is t._storage:
                raise _Fallback(self, f"a tensor of shape {list(t.shape)} views memory that "
                                      f"was written in place with batched values")
            return t, False
        if e[2] != t._storage.version:
            raise _Fallback(self, f"a tensor of shape {list(t.shape)} was changed in place "
                                  f"through another view")
        p = e[1]
        if p.requires_grad and not t.requires_grad:
            p = p.detach()
        return p, e[3]

    def dispatch(self, prim, args, params):
        if prim.kind == "random":
            if self.randomness == "error":
                raise RuntimeError(
                    f"vmap: called random operation {prim.name} while in randomness='error' "
                    f"mode; pass randomness='different' to vmap for independent draws per "
                    f"example, or draw the random numbers outside vmap")
            raise _Fallback(self, f"random operation {prim.name} with randomness='different'")
        with suspend(self):
            out = dispatch(prim, *args, **params)  # the first example: the logical result
            self.made[id(out)] = weakref.ref(out)
            if out._base is None:
                self.local[id(out._storage)] = out._storage
            cs = [self.counterpart(a) for a in args]
            if any(b for _, b in cs):
                rule = RULES.get(prim.name) or KIND_RULES.get(prim.kind)
                if rule is None:
                    raise _Fallback(self, f"primitive {prim.name} has no batching rule")
                p = rule(prim, [c for c, _ in cs], [b for _, b in cs], out, params, self.size)
            elif any(c is not a for (c, _), a in zip(cs, args)):
                p = dispatch(prim, *(c for c, _ in cs), **params)
            else:
                return out  # the same for every example: stands for itself
            batched = p.ndim == out.ndim + 1
            if p.shape != ((self.size,) if batched else ()) + out.shape or \
                    p.dtype is not out.dtype:
                raise _Fallback(self, f"the batching rule of {prim.name} gave "
                                      f"{p.dtype.name}{list(p.shape)} for a "
                                      f"{out.dtype.name}{list(out.shape)} output")
            self.bind(out, p, batched)
        return out

    def on_read(self, tensor, kind: str) -> None:
        if self.counterpart(tensor)[1]:
            raise _Fallback(self, f"the function reads the value of a batched tensor of shape "
                                  f"{list(tensor.shape)} into Python ({kind})")

    def on_write(self, tensor, what: str, value) -> None:
        if what == "requires_grad":  # a leaf made inside: its history stays inside
            made = self.made.get(id(tensor))
            if value and made is not None and made() is tensor and self._entry(tensor) is None:
                self.bind(tensor, tensor.detach(), False)
            return
        st = tensor._storage
        mine = self.local.get(id(st)) is st
        p, batched = self.counterpart(value)
        if what in ("grad", "data"):
            if batched and not mine and self.inputs.get(id(st)) is not st:
                raise RuntimeError(
                    f"vmap: setting .{what} of a tensor of shape {list(tensor.shape)} from "
                    f"outside the function to a batched value (did you call .backward() "
                    f"inside vmap? use dyngrad.func.grad for per-example gradients)")
            return
        if self.inputs.get(id(st)) is st:
            raise _Fallback(self, "in-place write to a mapped input")
        if not mine:  # a tensor from outside stands for itself: only unbatched data fits
            if batched:
                raise RuntimeError(
                    f"vmap: in-place write of a batched value into a tensor of shape "
                    f"{list(tensor.shape)} that is not batched (it comes from outside the "
                    f"function); use an out-of-place operation instead")
            return
        if p is value and self._entry(tensor) is None and self.written.get(id(st)) is not st:
            return  # unbatched data into memory that stands for itself
        if tensor._base is not None:
            raise _Fallback(self, "in-place write through a view")
        # the whole tensor now holds value (older views of its memory are stale from now on)
        self.bind(tensor, tensor if p is value else p, batched)
        if batched:
            self.written[id(st)] = st


# ------------------------------------------------------------------ the transform


def vmap(func: Callable, in_dims=0, out_dims=0, *, randomness: str = "error") -> Callable:
    """Vectorise ``func`` over a batch dimension (``torch.func.vmap``'s semantics).

    ``in_dims`` is an int (the mapped dim of every positional argument), None (not mapped),
    or a tuple with one int/None per positional argument; keyword arguments are never mapped.
    ``func`` returns a tensor or a tuple of tensors; ``out_dims`` (an int, or one int/None
    per output) says where the batch dim goes in each. Inside, ``func`` sees per-example
    shapes. Random operations raise unless ``randomness='different'`` (independent draws
    per example, computed by the per-example fallback).

    Each primitive runs once on the whole batch; a function that reads batched values into
    Python falls back to one call per example (see the module's notes), and
    ``vmapped.fallback_reason`` says why.

    >>> xs, w = dg.randn(8, 3), dg.randn(3, 2)
    >>> dg.func.vmap(lambda x: (x @ w).tanh())(xs).shape           # (8, 2)
    >>> dg.func.vmap(dg.func.grad(loss), in_dims=(None, 0))(w, xs)  # per-example gradients
    """
    if randomness not in ("error", "different"):
        raise ValueError(f"vmap: randomness must be 'error' or 'different', got "
                         f"{randomness!r}")
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def vmapped(*args, **kwargs):
        dims = _in_dims(name, in_dims, args)
        size = _batch_size(name, args, dims)
        phys = [None if d is None else _movedim(a, d, 0) for a, d in zip(args, dims)]
        mode = BatchMode(size, randomness)
        try:
            out, logical, physical = _run_batched(mode, func, args, dims, phys, kwargs)
        except _Fallback as exc:
            if exc.mode is not mode:
                raise  # an enclosing vmap's attempt is abandoned, not ours
            vmapped.fallback_reason = exc.reason
            return _run_per_example(name, func, args, dims, size, kwargs, out_dims, exc.reason)
        vmapped.fallback_reason = None
        odims = _out_dims(name, out_dims, out)
        results = []
        for o, (p, batched), d in zip(logical, physical, odims):
            if d is None:
                if batched:
                    raise ValueError(f"vmap({name}, ...): out_dims=None for an output that "
                                     f"depends on the mapped inputs")
                results.append(p)
                continue
            _check_tensor(name, o)
            p = p if batched else _materialize(p, size)
            results.append(_movedim(p, 0, _norm(d, p.ndim, name, "out_dim")))
        return _restructure(out, results)

    vmapped.fallback_reason = None
    return vmapped


def _run_batched(mode: BatchMode, func, args, dims, phys, kwargs):
    firsts = list(args)
    for i, (d, p) in enumerate(zip(dims, phys)):
        if d is not None:  # a copy, so an in-place write by func cannot reach the input
            firsts[i] = (_select(p, 0, 0).clone() if mode.size
                         else _c.zeros(p.shape[1:], dtype=p.dtype))
    with push_mode(mode):
        for d, f, p in zip(dims, firsts, phys):
            if d is not None:
                mode.bind(f, p, True)
                mode.inputs[id(f._storage)] = f._storage
        try:
            out = func(*firsts, **kwargs)
            logical = list(out) if isinstance(out, (tuple, list)) else [out]
            physical = [mode.counterpart(o) for o in logical]
        finally:
            mode.entries.clear()  # nothing batched outlives the call
    return out, logical, physical


def _run_per_example(name, func, args, dims, size, kwargs, out_dims, reason):
    if size == 0:
        raise ValueError(f"vmap({name}, ...): cannot run per example over an empty batch "
                         f"(the batched attempt stopped because {reason})")
    outs = []
    for i in range(size):
        ex = [a if d is None else _select(a, d, i) for a, d in zip(args, dims)]
        outs.append(func(*ex, **kwargs))
    first = outs[0]
    odims = _out_dims(name, out_dims, first)
    per_output = list(zip(*outs)) if isinstance(first, (tuple, list)) else [outs]
    results = []
    for column, d in zip(per_output, odims):
        if d is None:
            results.append(column[0])
            continue
        for o in column:
            _check_tensor(name, o)
        results.append(_m.stack(list(column), d))
    return _restructure(first, results)


def _restructure(out, results: list):
    """``results`` in the structure of ``out``: one tensor, a tuple or a list."""
    if isinstance(out, list):
        return results
    return tuple(results) if isinstance(out, tuple) else results[0]


def _movedim(x: Tensor, src: int, dst: int) -> Tensor:
    perm = [d for d in range(x.ndim) if d != src]
    perm.insert(dst, src)
    return _permute(x, perm)


def _select(x: Tensor, dim: int, i: int) -> Tensor:
    """Example ``i`` of ``x`` along ``dim`` (a view, as ``x[..., i, ...]``)."""
    return _m.squeeze_dims(_m.narrow(x, dim, i, 1), (dim,))


def _norm(d, ndim: int, name: str, what: str) -> int:
    if not isinstance(d, int) or not -ndim <= d < ndim:
        raise ValueError(f"vmap({name}, ...): got {what}={d!r}, but the tensor has "
                         f"{ndim} dims, so expected {-ndim} <= {what} < {ndim}")
    return d % ndim


def _in_dims(name: str, in_dims, args) -> list:
    if in_dims is None or isinstance(in_dims, int):
        dims = [in_dims] * len(args)
    elif isinstance(in_dims, (tuple, list)):
        if len(in_dims) != len(args):
            raise ValueError(f"vmap({name}, in_dims={tuple(in_dims)}): in_dims has "
                             f"{len(in_dims)} entries but the function got {len(args)} "
                             f"positional arguments")
        dims = list(in_dims)
    else:
        raise ValueError(f"vmap({name}, ...): in_dims must be an int, None or a tuple, got "
                         f"{type(in_dims).__name__}")
    for k, (a, d) in enumerate(zip(args, dims)):
        if d is None:
            continue
        if not isinstance(a, Tensor):
            raise ValueError(f"vmap({name}, ...): got in_dim={d} for argument {k}, which is "
                             f"a {type(a).__name__}; only tensors can be mapped over (use "
                             f"None as its in_dim)")
        if a.ndim == 0:
            raise ValueError(f"vmap({name}, ...): cannot map over argument {k}, a 0-d "
                             f"tensor; use None as its in_dim")
        dims[k] = _norm(d, a.ndim, name, "in_dim")
    return dims


def _batch_size(name: str, args, dims) -> int:
    sizes = [a.shape[d] for a, d in zip(args, dims) if d is not None]
    if not sizes:
        raise ValueError(f"vmap({name}, ...): expected at least one tensor to vmap over "
                         f"(in_dims are all None)")
    if len(set(sizes)) > 1:
        raise ValueError(f"vmap({name}, ...): expected all tensors to have the same size in "
                         f"the mapped dimension, got sizes {sizes} for the mapped dimension")
    return sizes[0]


def _out_dims(name: str, out_dims, out) -> list:
    n = len(out) if isinstance(out, (tuple, list)) else 1
    if out_dims is None or isinstance(out_dims, int):
        return [out_dims] * n
    if isinstance(out_dims, (tuple, list)) and len(out_dims) == n:
        return list(out_dims)
    raise ValueError(f"vmap({name}, out_dims={out_dims!r}): out_dims must be an int, None, "
                     f"or one entry per output ({n} outputs)")


def _check_tensor(name: str, o) -> None:
    if not isinstance(o, Tensor):
        raise ValueError(f"vmap({name}, ...): `{name}` must only return Tensors, got type "
                         f"{type(o).__name__}; set its out_dims to None to return it as is")
