"""``DistributedDataParallel``: one process per rank, each with a replica of the model and its
own slice of every batch; gradients averaged over the ranks during ``backward()`` (see
:mod:`dyngrad.nn.parallel.reducer`), so every replica takes the same optimizer step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ...dispatch import STATE, read_flag, report_python_call
from ...distributed import all_gather_into_tensor, broadcast
from ...distributed.collectives import DTYPES, records_collectives
from ...distributed.process_group import resolve_group
from ...tensor import Tensor
from ..module import Module
from .reducer import (
    DEFAULT_BUCKET_CAP_MB,
    FIRST_BUCKET_BYTES,
    MB,
    Reducer,
    assign_buckets,
    find_output_tensors,
)

__all__ = ["DistributedDataParallel", "broadcast_coalesced"]


class DistributedDataParallel(Module):
    """Data-parallel training across the ranks of ``dyngrad.distributed``, as PyTorch's DDP.

    - At construction, rank 0's parameters and buffers are broadcast to every rank, after
      checking that every rank has the same parameters (count, shapes, dtypes,
      requires_grad, order).
    - Every ``backward()`` through its forward's output averages the gradients over the
      ranks: parameters are bucketed in reverse order (a 1 MiB first bucket, then
      ``bucket_cap_mb`` MiB each, 25 by default), each bucket's all-reduce starts from
      hooks on the parameters' gradient accumulators (after their own post-accumulate-grad
      hooks, as PyTorch's) as soon as its gradients are all there, and all
      are waited for, and written into ``.grad``, before ``backward()`` returns.
    - ``no_sync()``: gradients accumulate locally; the first synchronised backward after it
      averages the accumulated sums.
    - ``broadcast_buffers=True``: rank 0's buffers (BatchNorm's running statistics) are
      broadcast at the start of each forward, as PyTorch does — so in training each rank
      normalises with its own batch's statistics, and the running statistics are rank 0's,
      not those of the whole batch. ``nn.SyncBatchNorm.convert_sync_batchnorm(model)``
      normalises with the whole global batch's statistics instead (the single-process
      result; two small all-reduces per layer each way).
    - A parameter that gets no gradient in a backward pass is an error at the end of that
      pass, naming it (PyTorch raises at the next forward), unless
      ``find_unused_parameters=True``: then parameters the forward's output does not reach
      are reduced as zeros, and the ``.grad`` of one no rank used is left as it was.
    - Parameters with ``requires_grad=False`` are not reduced; a ``.grad`` of None
      (``zero_grad(set_to_none=True)``) is set by the reduction.
    - ``.module`` is the wrapped module: ``state_dict()`` keys start with ``module.``.

    Differences from PyTorch: the buckets are in reverse parameter order from the start
    (PyTorch begins with one bucket and rebuilds them after the first iteration, in the
    order it saw gradients arrive: the same order for the usual model); no
    ``gradient_as_bucket_view``, ``static_graph``, communication hooks or ``join``.

    Under ``dg.compile``, a whole step (forward, ``backward()``, optimizer) compiles, its
    bucket all-reduces inside the native code (Note [DDP under a compiler tracer] in
    reducer.py); ``no_sync()`` is guarded (each setting has its variant). A step runs
    eagerly, with the reason recorded, when ``find_unused_parameters=True``, or when buffers
    are broadcast at each forward (``broadcast_buffers=True`` on a module with buffers):
    what those do depends on Python state a compiled call would not update.

    >>> dist.init_process_group("mpi")                        # doctest: +SKIP
    >>> ddp = nn.parallel.DistributedDataParallel(model)
    >>> loss_fn(ddp(x), y).backward()                         # .grad: averaged over ranks
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, process_group=None,
                 bucket_cap_mb: float | None = None, find_unused_parameters: bool = False,
                 check_reduction: bool = False, gradient_as_bucket_view: bool = False,
                 static_graph: bool = False) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel wraps an nn.Module, got "
                            f"{type(module).__name__}")
        group = resolve_group(process_group)
        if device_ids or output_device is not None:
            raise ValueError(
                f"DistributedDataParallel device_ids and output_device arguments only work "
                f"with single-device/multiple-device GPU modules or CPU modules, but got "
                f"device_ids {device_ids}, output_device {output_device}, and module "
                f"parameters {{device(type='cpu')}}.")
        for flag, name in ((gradient_as_bucket_view, "gradient_as_bucket_view"),
                           (static_graph, "static_graph")):
            if flag:
                raise ValueError(f"DistributedDataParallel: {name}=True is not supported by "
                                 f"dyngrad (gradients are copied out of the buckets after "
                                 f"each all-reduce): leave it False")
        named = list(module.named_parameters())
        trained = [(n, p) for n, p in named if p.requires_grad]
        if not trained:
            raise RuntimeError("DistributedDataParallel is not needed when a module doesn't "
                               "have any parameter that requires a gradient.")
        self.module = module
        self.device_ids = None
        self.output_device = None
        self.dim = dim
        self.process_group = group
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        cap = DEFAULT_BUCKET_CAP_MB if bucket_cap_mb is None else bucket_cap_mb
        self.bucket_bytes_cap = int(cap * MB)
        # (flags written without a bump of the module's version, as `training`: a compiled
        # step guards their values instead, so no_sync() toggling does not trace again each
        # time: Note [training is not counted by _version] in nn/module.py)
        self.__dict__["require_backward_grad_sync"] = True
        self.__dict__["require_forward_param_sync"] = True

        _verify_same_parameters(group, named)
        self.modules_buffers = [b for _, b in module.named_buffers()]
        broadcast_coalesced([p for _, p in named] + self.modules_buffers, 0, group)

        params = [p for _, p in trained]
        limits = [self.bucket_bytes_cap] if bucket_cap_mb is not None else \
            [FIRST_BUCKET_BYTES, self.bucket_bytes_cap]
        buckets = assign_buckets([p._data.nbytes for p in params],
                                 [p._data.dtype for p in params], limits,
                                 order=range(len(params) - 1, -1, -1))
        self.reducer = Reducer(group, params, [n for n, _ in trained], buckets,
                               find_unused_parameters)

    def forward(self, *inputs, **kwargs):
        if STATE.modes:
            self._check_compilable()
        self.reducer.check_prior_reduction()  # (before this forward's own collectives)
        if self.require_forward_param_sync and self.broadcast_buffers and self.modules_buffers:
            broadcast_coalesced(self.modules_buffers, 0, self.process_group)
        output = self.module(*inputs, **kwargs)
        if STATE.grad_enabled and read_flag(self, "require_backward_grad_sync"):
            self.__dict__["require_forward_param_sync"] = True
            self.reducer.prepare_for_backward(
                find_output_tensors(output) if self.find_unused_parameters else [])
        else:
            self.__dict__["require_forward_param_sync"] = False
        return output

    def _check_compilable(self) -> None:
        """Under a dispatch mode (a compiler tracer): tell it when this forward cannot be
        recorded, so the call runs eagerly with that reason (see the class docstring)."""
        if not records_collectives():
            report_python_call("DistributedDataParallel.forward (it arms the gradient "
                               "all-reduce of the next backward pass, which this mode does "
                               "not record)")
        elif self.find_unused_parameters:
            report_python_call("DistributedDataParallel(find_unused_parameters=True).forward "
                               "(which gradients it reduces is decided in Python from each "
                               "backward's graph, which a compiled call would not repeat)")
        elif self.broadcast_buffers and self.modules_buffers:
            report_python_call("DistributedDataParallel.forward broadcasting buffers (whether "
                               "it broadcasts depends on the previous forward, Python state a "
                               "compiled call would not update): pass broadcast_buffers=False, "
                               "or use nn.SyncBatchNorm")

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Gradients computed in this block accumulate locally, without communication; the
        first synchronised backward after it averages the accumulated gradients.

        >>> with ddp.no_sync():                   # doctest: +SKIP
        ...     loss_fn(ddp(x1), y1).backward()   # local only
        >>> loss_fn(ddp(x2), y2).backward()       # averages the sum of both
        """
        old = read_flag(self, "require_backward_grad_sync")  # (a trace guards its value
        self.__dict__["require_backward_grad_sync"] = False  # at the call's entry)
        try:
            yield
        finally:
            self.__dict__["require_backward_grad_sync"] = old

    def extra_repr(self) -> str:
        return f"world_size={self.process_group.size()}"


def broadcast_coalesced(tensors: list, src: int, group) -> None:
    """Copy rank ``src``'s ``tensors`` into every rank's, one broadcast per dtype (a flat
    buffer of all tensors of that dtype), written as ``.data`` is (no autograd record)."""
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t._data.dtype, []).append(t)
    for same in by_dtype.values():
        flat = np.concatenate([t._data.reshape(-1) for t in same])
        broadcast(Tensor._fresh(flat), src, group)
        start = 0
        for t in same:
            n = t._data.size
            np.copyto(t._data, flat[start:start + n].reshape(t._data.shape))
            t._storage.version += 1
            start += n


def _verify_same_parameters(group, named: list) -> None:
    """Every rank has the same parameters (count, then dtype, shape and requires_grad of
    each, in order), or every rank raises the same error naming the first difference."""
    world, me = group.size(), group.rank()
    counts = Tensor._fresh(np.zeros(world, dtype=np.int64))
    all_gather_into_tensor(counts, Tensor._fresh(np.array([len(named)], dtype=np.int64)),
                           group)
    for r, n in enumerate(counts._data.tolist()):
        if n != len(named):
            raise RuntimeError(f"DDP expects same model across all ranks, but Rank {me} has "
                               f"{len(named)} params, while rank {r} has inconsistent {n} "
                               f"params.")
    rows = np.array([_describe(p) for _, p in named], dtype=np.int64)
    table = Tensor._fresh(np.zeros((world, *rows.shape), dtype=np.int64))
    all_gather_into_tensor(table, Tensor._fresh(rows), group)
    for j, (name, _) in enumerate(named):
        for r in range(world):
            if not np.array_equal(table._data[r, j], table._data[0, j]):
                raise RuntimeError(
                    f"DistributedDataParallel: parameter {j} ({name}) is "
                    f"{_shown(table._data[0, j])} on rank 0 but {_shown(table._data[r, j])} "
                    f"on rank {r}: every rank must build the same model (the same "
                    f"parameters, with the same shapes and dtypes, frozen or trained alike "
                    f"(requires_grad), in the same order)")


_DIMS = 8


def _describe(p) -> list:
    shape = p._data.shape
    dims = list(shape[:_DIMS]) + [-1] * (_DIMS - min(len(shape), _DIMS))
    return [DTYPES.index(p._data.dtype), len(shape), hash(shape) & (1 << 62) - 1, *dims,
            int(p._requires_grad)]  # (which are reduced: the buckets are built from these)


def _shown(row: np.ndarray) -> str:
    dtype, ndim = DTYPES[int(row[0])], int(row[1])
    dims = [int(d) for d in row[3:3 + min(ndim, _DIMS)]] + (["..."] if ndim > _DIMS else [])
    return f"{dtype} {dims}" + ("" if row[-1] else " (frozen)")
