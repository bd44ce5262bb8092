"""``nn.parallel``: :class:`DataParallel` (one process: its module's forward) and
:class:`DistributedDataParallel` (one process per rank, gradients averaged over MPI)."""

from .data_parallel import DataParallel
from .distributed import DistributedDataParallel

__all__ = ["DataParallel", "DistributedDataParallel"]
