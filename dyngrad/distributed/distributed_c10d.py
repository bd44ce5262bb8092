"""PyTorch's collectives on tensors (``torch.distributed.all_reduce`` and friends): they write
their result into the tensors given, in place, and return None — or, with
``async_op=True``, a :class:`~dyngrad.distributed.work.Work` whose ``wait()`` puts it there.

Each is one run of a record of :mod:`dyngrad.distributed.collectives`; the list forms
(``all_gather``, ``reduce_scatter``) gather into, or scatter from, one contiguous buffer.

Note [in-place collectives and autograd]: as PyTorch's, these write a tensor's data without
recording anything for autograd — on a leaf that requires grad too (DDP broadcasts
parameters so). Unlike PyTorch's they bump the tensor's version counter, as every in-place
change does in dyngrad: a tensor saved for backward and then overwritten by a collective
is an error at backward time, not a silently wrong gradient. A tensor that is not
C-contiguous is communicated through a contiguous copy and written back.

Under a compiler tracer each is recorded instead (``collectives.record``; Note [collectives
in the IR]): its start and wait become IR nodes, and the write into the result tensor an
in-place ``copy_`` (the same bump of the version counter). ``barrier`` is not recorded: a
compiled function calling it runs eagerly (the reason is recorded).
"""

from __future__ import annotations

import numpy as np

from ..ops.movement import stack
from ..tensor import Tensor
from .collectives import (
    ALL_GATHER,
    ALL_REDUCE,
    BARRIER,
    BROADCAST,
    REDUCE_SCATTER,
    ReduceOp,
    check_modes,
    contiguous,
    launch,
    mpi_reduction,
    record,
    recording,
    source_rank,
)
from .process_group import resolve_group
from .work import Work

__all__ = ["all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter",
           "reduce_scatter_tensor", "barrier"]


def _check(name: str, t, what: str, writes: bool) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a dg.Tensor, got {type(t).__name__}")
    if writes and not t._data.flags.writeable:
        raise RuntimeError(f"{name}: {what} (shape {list(t.shape)}) is read-only (an expand()ed "
                           f"view or a read-only numpy array): clone() it first")


def _written(t: Tensor, data: np.ndarray) -> None:
    """``t`` now holds ``data`` (see Note [in-place collectives and autograd])."""
    if not np.may_share_memory(data, t._data):  # (a copy: t was not contiguous)
        np.copyto(t._data, data.reshape(t._data.shape))
    t._storage.version += 1


def _done(work: Work, async_op: bool) -> Work | None:
    if async_op:
        return work
    work.wait()
    return None


def all_reduce(tensor: Tensor, op: ReduceOp = ReduceOp.SUM, group=None,
               async_op: bool = False) -> Work | None:
    """Reduce ``tensor`` over all ranks with ``op``, in place: afterwards every rank holds
    the same result.

    >>> t = dg.tensor([float(dist.get_rank())])   # doctest: +SKIP
    >>> dist.all_reduce(t); t                     # on 2 ranks: tensor([1.])
    """
    recorded = recording("all_reduce")
    g = resolve_group(group)
    _check("all_reduce", tensor, "tensor", writes=True)
    mpi_reduction("all_reduce", op, tensor._data.dtype, g.mpi)
    if recorded:
        return record(ALL_REDUCE, tensor, {"op": op}, g, tensor.copy_, async_op)
    buf = contiguous(tensor._data)

    def finish():
        if op is ReduceOp.AVG:
            np.divide(buf, g.size(), out=buf)
        _written(tensor, buf)

    return _done(launch(g, ALL_REDUCE, buf, buf, {"op": op}, finish), async_op)


def broadcast(tensor: Tensor, src: int | None = None, group=None, async_op: bool = False,
              group_src: int | None = None) -> Work | None:
    """Copy rank ``src``'s ``tensor`` into ``tensor`` on every other rank.

    >>> dist.broadcast(weights, src=0)   # doctest: +SKIP
    """
    recorded = recording("broadcast")
    g = resolve_group(group)
    src = source_rank("broadcast", group_src if src is None else src, g.size())
    _check("broadcast", tensor, "tensor", writes=True)
    if recorded:
        return record(BROADCAST, tensor, {"src": src}, g, tensor.copy_, async_op)
    buf = contiguous(tensor._data)
    return _done(launch(g, BROADCAST, buf, buf, {"src": src},
                        lambda: _written(tensor, buf)), async_op)


def _one_per_rank(name: str, tensors: list, what: str, like: Tensor, g,
                  outputs: bool) -> None:
    """The list form's check: one tensor per rank, each of ``like``'s shape and dtype (the
    outputs of an all-gather, the inputs of a reduce-scatter)."""
    role, other = ("output", "input") if outputs else ("input", "output")
    if len(tensors) != g.size():
        raise ValueError(f"{name}: {what} has {len(tensors)} tensors but the world has "
                         f"{g.size()} ranks: pass one {role} per rank")
    for i, t in enumerate(tensors):
        _check(name, t, f"{what}[{i}]", writes=outputs)
        if t.shape != like.shape or t.dtype is not like.dtype:
            raise ValueError(f"{name}: {what}[{i}] is {t.dtype.name} {list(t.shape)} but "
                             f"the {other} is {like.dtype.name} {list(like.shape)}: each "
                             f"{role} must have the {other}'s shape and dtype")


def _all_blocks(name: str, whole: Tensor, what: str, block: Tensor, role: str,
                w: int) -> tuple:
    """The tensor form's check: ``whole`` holds one ``block`` per rank, concatenated along
    dim 0 or stacked, of ``block``'s dtype; returns the concatenated shape."""
    s = tuple(block.shape)
    concatenated = ALL_GATHER.shape(s, w, {})
    if whole.shape not in (concatenated, (w, *s)) or whole.dtype is not block.dtype:
        raise ValueError(f"{name}: {what} is {whole.dtype.name} {list(whole.shape)} but "
                         f"{w} ranks' {block.dtype.name} {list(s)} {role}s need "
                         f"{list(concatenated)} (concatenated) or {[w, *s]} (stacked)")
    return concatenated


def all_gather(tensor_list: list, tensor: Tensor, group=None,
               async_op: bool = False) -> Work | None:
    """Rank r's ``tensor`` into ``tensor_list[r]``, on every rank; each output has the
    input's shape and dtype.

    >>> out = [dg.zeros(3) for _ in range(dist.get_world_size())]   # doctest: +SKIP
    >>> dist.all_gather(out, dg.ones(3))
    """
    recorded = recording("all_gather")
    g = resolve_group(group)
    _check("all_gather", tensor, "tensor", writes=False)
    _one_per_rank("all_gather", tensor_list, "tensor_list", tensor, g, outputs=True)
    if recorded:
        def write(result):
            parts = result.reshape((g.size(), *tensor.shape))
            for i, t in enumerate(tensor_list):
                t.copy_(parts[i])
        return record(ALL_GATHER, tensor, {}, g, write, async_op)
    send = contiguous(tensor._data)
    recv = np.empty(ALL_GATHER.shape(send.shape, g.size(), {}), dtype=send.dtype)

    def finish():
        for t, part in zip(tensor_list, recv.reshape((g.size(), *send.shape))):
            _written(t, part)

    return _done(launch(g, ALL_GATHER, send, recv, {}, finish), async_op)


def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor, group=None,
                           async_op: bool = False) -> Work | None:
    """All ranks' ``input_tensor`` into ``output_tensor``, in rank order: concatenated along
    dim 0 (shape ``[world * n, ...]``) or stacked (``[world, n, ...]``).

    >>> out = dg.zeros(2 * dist.get_world_size())   # doctest: +SKIP
    >>> dist.all_gather_into_tensor(out, dg.ones(2))
    """
    recorded = recording("all_gather_into_tensor")
    g = resolve_group(group)
    _check("all_gather_into_tensor", input_tensor, "input_tensor", writes=False)
    _check("all_gather_into_tensor", output_tensor, "output_tensor", writes=True)
    concatenated = _all_blocks("all_gather_into_tensor", output_tensor, "output_tensor",
                               input_tensor, "input", g.size())
    if recorded:
        return record(ALL_GATHER, input_tensor, {}, g,
                      lambda r: output_tensor.copy_(r.reshape(output_tensor.shape)), async_op)
    send = contiguous(input_tensor._data)
    recv = contiguous(output_tensor._data).reshape(concatenated)
    if np.may_share_memory(send, recv):  # (the input a block of the output, PyTorch's in-place
        send = send.copy()               # form: MPI refuses aliased buffers)
    return _done(launch(g, ALL_GATHER, send, recv, {},
                        lambda: _written(output_tensor, recv)), async_op)


def reduce_scatter(output: Tensor, input_list: list, op: ReduceOp = ReduceOp.SUM, group=None,
                   async_op: bool = False) -> Work | None:
    """Reduce ``input_list[r]`` over all ranks with ``op`` into ``output`` on rank r.

    >>> out = dg.zeros(3)                                              # doctest: +SKIP
    >>> dist.reduce_scatter(out, [dg.ones(3)] * dist.get_world_size())  # out: the world size
    """
    recorded = recording("reduce_scatter")
    g = resolve_group(group)
    _check("reduce_scatter", output, "output", writes=True)
    _one_per_rank("reduce_scatter", input_list, "input_list", output, g, outputs=False)
    mpi_reduction("reduce_scatter", op, output._data.dtype, g.mpi)
    if recorded:
        return record(REDUCE_SCATTER, stack(list(input_list)), {"op": op}, g,
                      lambda r: output.copy_(r.reshape(output.shape)), async_op)
    send = np.stack([t._data for t in input_list])
    recv = np.empty(REDUCE_SCATTER.shape(send.shape, g.size(), {}), dtype=send.dtype)
    return _done(launch(g, REDUCE_SCATTER, send, recv, {"op": op},
                        _reduced(output, recv, op, g.size())), async_op)


def reduce_scatter_tensor(output: Tensor, input: Tensor, op: ReduceOp = ReduceOp.SUM,
                          group=None, async_op: bool = False) -> Work | None:
    """Reduce ``input`` over all ranks with ``op`` and give rank r its block r along dim 0
    (``input`` is ``[world * n, ...]``, or ``[world, n, ...]`` stacked; ``output`` is
    ``[n, ...]``).

    >>> out = dg.zeros(2)                                                      # doctest: +SKIP
    >>> dist.reduce_scatter_tensor(out, dg.ones(2 * dist.get_world_size()))   # out: [2., 2.]
    """
    recorded = recording("reduce_scatter_tensor")
    g = resolve_group(group)
    _check("reduce_scatter_tensor", input, "input", writes=False)
    _check("reduce_scatter_tensor", output, "output", writes=True)
    w = g.size()
    concatenated = _all_blocks("reduce_scatter_tensor", input, "input", output, "output", w)
    mpi_reduction("reduce_scatter_tensor", op, output._data.dtype, g.mpi)
    if recorded:
        return record(REDUCE_SCATTER, input.reshape(concatenated), {"op": op}, g,
                      lambda r: output.copy_(r.reshape(output.shape)), async_op)
    send = contiguous(input._data).reshape(concatenated)
    recv = np.empty(REDUCE_SCATTER.shape(send.shape, w, {}), dtype=send.dtype)
    return _done(launch(g, REDUCE_SCATTER, send, recv, {"op": op},
                        _reduced(output, recv, op, w)), async_op)


def _reduced(output: Tensor, recv: np.ndarray, op: ReduceOp, world: int):
    def finish():
        if op is ReduceOp.AVG:
            np.divide(recv, world, out=recv)
        _written(output, recv)
    return finish


def barrier(group=None, async_op: bool = False, device_ids=None) -> Work | None:
    """Return once every rank has called ``barrier``.

    >>> dist.barrier()   # doctest: +SKIP
    """
    check_modes("barrier")
    g = resolve_group(group)
    return _done(launch(g, BARRIER, None, None, {}, lambda: None), async_op)
