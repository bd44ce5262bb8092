"""``dyngrad.distributed``: data-parallel training over MPI, with PyTorch's names.

Start N ranks with the launcher, which wraps MPI's ``mpiexec``::

    python -m dyngrad.distributed.run -n 2 train.py

and in ``train.py``::

    import dyngrad.distributed as dist
    dist.init_process_group("mpi")
    model = nn.parallel.DistributedDataParallel(model)   # averages gradients over ranks

MPI comes from the ``dist`` extra (``pip install -e '.[dist]'``: mpi4py and MPICH's wheel);
``import dyngrad`` does not need it, and :func:`is_available` says whether it is there.
Collectives take a timeout, check that every rank calls the same one with the same shapes
(Note [agree, then send] in work.py), and an uncaught exception on one rank ends the job on
every rank (Note [one failing rank ends the job] in process_group.py). See
docs/distributed.md.
"""

from __future__ import annotations

from . import nn
from .collectives import ReduceOp
from .distributed_c10d import (
    all_gather,
    all_gather_into_tensor,
    all_reduce,
    barrier,
    broadcast,
    reduce_scatter,
    reduce_scatter_tensor,
)
from .process_group import (
    DEFAULT_TIMEOUT,
    ProcessGroup,
    destroy_process_group,
    get_backend,
    get_rank,
    get_world_size,
    init_process_group,
    is_available,
    is_initialized,
)
from .work import DistBackendError, Work

__all__ = ["is_available", "init_process_group", "destroy_process_group", "is_initialized",
           "get_rank", "get_world_size", "get_backend", "ProcessGroup", "ReduceOp",
           "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor",
           "reduce_scatter", "reduce_scatter_tensor", "barrier", "Work", "DistBackendError",
           "DEFAULT_TIMEOUT", "nn"]
