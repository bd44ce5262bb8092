"""Collectives that autograd differentiates, out of place (PyTorch's
``torch.distributed.nn.functional``): the result is a new tensor with a backward node, and
backward runs the collective's vjp on every rank — the gradient of an ``all_reduce`` SUM is
an ``all_reduce`` SUM of the gradient, that of ``all_gather`` a ``reduce_scatter``, that
of ``reduce_scatter`` an ``all_gather``, and a ``broadcast``'s source gets the sum of every
rank's gradient (the others zero). Every rank must run the backward pass, as it must run
the forward one.

Only SUM and AVG reductions are differentiable (PyTorch's ``all_reduce`` backward applies
the same op to the gradient whatever it is, which is not the gradient of MAX or MIN: here
those raise when differentiated).

>>> import dyngrad.distributed.nn.functional as dF
>>> y = dF.all_reduce(x * 3)        # doctest: +SKIP
>>> y.sum().backward()              # x.grad: 3 × the world size, on every rank
"""

from __future__ import annotations

from ...ops.movement import stack
from ...tensor import Tensor
from ..collectives import ALL_GATHER, ALL_REDUCE, BROADCAST, REDUCE_SCATTER, ReduceOp, source_rank
from ..collectives import run_differentiable as _run
from ..process_group import resolve_group

__all__ = ["all_reduce", "broadcast", "all_gather", "reduce_scatter"]


def _tensor(name: str, t) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a dg.Tensor, got {type(t).__name__}")
    return t


def all_reduce(tensor: Tensor, op: ReduceOp = ReduceOp.SUM, group=None) -> Tensor:
    """The reduction over all ranks of ``tensor``, as a new tensor (the same on every rank).

    >>> dF.all_reduce(dg.ones(2))   # doctest: +SKIP
    """
    return _run(ALL_REDUCE, _tensor("all_reduce", tensor), {"op": op}, group)


def broadcast(tensor: Tensor, src: int, group=None) -> Tensor:
    """Rank ``src``'s ``tensor``, as a new tensor on every rank.

    >>> dF.broadcast(w, src=0)   # doctest: +SKIP
    """
    src = source_rank("broadcast", src, resolve_group(group).size())
    return _run(BROADCAST, _tensor("broadcast", tensor), {"src": src}, group)


def all_gather(tensor: Tensor, group=None) -> tuple:
    """Every rank's ``tensor``, in rank order: a tuple of ``world_size`` tensors.

    >>> parts = dF.all_gather(h)   # doctest: +SKIP
    """
    t = _tensor("all_gather", tensor)
    world = resolve_group(group).size()
    gathered = _run(ALL_GATHER, t, {}, group)
    return tuple(gathered.reshape((world, *t.shape)).unbind(0))


def reduce_scatter(output: Tensor, input_list: list, op: ReduceOp = ReduceOp.SUM,
                   group=None) -> Tensor:
    """On rank r, the reduction over all ranks of ``input_list[r]``, as a new tensor of
    ``output``'s shape (``output`` only gives the shape and dtype: it is not written,
    unlike PyTorch's, which writes it when it is contiguous).

    >>> mine = dF.reduce_scatter(dg.empty(3), [a, b])   # doctest: +SKIP
    """
    world = resolve_group(group).size()
    if len(input_list) != world:
        raise ValueError(f"reduce_scatter: input_list has {len(input_list)} tensors but the "
                         f"world has {world} ranks: pass one input per rank")
    for i, t in enumerate(input_list):
        if _tensor("reduce_scatter", t).shape != output.shape or t.dtype is not output.dtype:
            raise ValueError(f"reduce_scatter: input_list[{i}] is {t.dtype.name} "
                             f"{list(t.shape)} but the output is {output.dtype.name} "
                             f"{list(output.shape)}: each input must have the output's "
                             f"shape and dtype")
    mine = _run(REDUCE_SCATTER, stack(list(input_list)), {"op": op}, group)
    return mine.reshape(output.shape)
