"""``DistributedSampler``: each rank of a data-parallel job reads its own share of the
dataset (PyTorch's ``torch.utils.data.distributed.DistributedSampler``)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ...distributed.process_group import get_rank, get_world_size, is_available
from ...ops.random import Generator, randperm
from .sampler import Sampler

__all__ = ["DistributedSampler"]


class DistributedSampler(Sampler):
    """The indices of ``dataset`` that rank ``rank`` of ``num_replicas`` reads, with
    PyTorch's assignment: the index list (``0..n-1``, or with ``shuffle`` a permutation
    drawn from a generator seeded ``seed + epoch``) is padded by repeating its start to a
    multiple of ``num_replicas`` (or, with ``drop_last``, cut to one), and rank ``r`` takes
    every ``num_replicas``-th index from position ``r``. Every rank gets the same number
    of samples. Call ``set_epoch(epoch)`` before each epoch for a new shuffle; all ranks
    must use the same ``seed``. ``num_replicas`` and ``rank`` default to the process
    group's.

    The permutation is dyngrad's ``randperm`` (a stable argsort of counter-based uniforms),
    so its order is not PyTorch's for the same seed; without ``shuffle`` the indices are
    PyTorch's exactly.

    >>> s = DistributedSampler(range(10), num_replicas=4, rank=1, shuffle=False)
    >>> list(s)   # padded to 12 with 0 and 1, then positions 1, 5, 9
    [1, 5, 9]
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            if not is_available():
                raise RuntimeError("Requires distributed package to be available (the "
                                   "'dist' extra: pip install -e '.[dist]'), or pass "
                                   "num_replicas and rank")
            num_replicas = get_world_size() if num_replicas is None else num_replicas
            rank = get_rank() if rank is None else rank
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.epoch = 0
        self.drop_last, self.shuffle, self.seed = drop_last, shuffle, seed
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = Generator().manual_seed(self.seed + self.epoch)
            indices = randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding <= len(indices):
                indices += indices[:padding]
            else:
                indices += (indices * math.ceil(padding / len(indices)))[:padding]
        else:
            indices = indices[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Shuffle with ``seed + epoch`` from now on (call it at the start of each epoch, on
        every rank, or every epoch reads the same order)."""
        self.epoch = epoch
