"""``Dataset``, ``TensorDataset`` and ``DataLoader`` (batching, seeded shuffling, drop_last)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..ops import creation as _c
from ..ops import movement as _m
from ..tensor import Tensor


class Dataset:
    """Anything with ``__getitem__(i)`` and ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__")


class TensorDataset(Dataset):
    """Samples are the i-th rows of each tensor (all tensors share their first dim)."""

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        n = tensors[0].shape[0]
        for t in tensors:
            if t.shape[0] != n:
                raise ValueError(f"Size mismatch between tensors: {t.shape[0]} vs {n}")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]


def default_collate(samples: list):
    first = samples[0]
    if isinstance(first, Tensor):
        return _m.stack(samples, 0)
    if isinstance(first, (tuple, list)):
        return type(first)(default_collate([s[i] for s in samples]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, np.ndarray):
        return _c.from_numpy(np.stack(samples))
    if isinstance(first, (int, float, bool, np.number)):
        return _c.tensor(samples)
    if isinstance(first, (str, bytes)):  # labels, file names: kept as a list, as in PyTorch
        return list(samples)
    raise TypeError(f"default_collate: cannot batch samples of type {type(first).__name__}")


class DataLoader:
    """Iterate over ``dataset`` in batches.

    ``shuffle=True`` draws a new permutation every epoch from a numpy generator seeded with
    ``seed`` (so runs repeat exactly); the last partial batch is kept unless ``drop_last``.
    A :class:`TensorDataset` is batched by indexing each tensor once per batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = 0, collate_fn=None) -> None:
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.collate_fn = collate_fn or default_collate
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> Iterator[np.ndarray]:
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        bs = self.batch_size or 1
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if self.drop_last and len(idx) < bs:
                return
            yield idx

    def __iter__(self):
        ds = self.dataset
        for idx in self._batches():
            if self.batch_size is None:
                yield ds[int(idx[0])]
            elif isinstance(ds, TensorDataset) and self.collate_fn is default_collate:
                sel = Tensor._constant(idx.astype(np.int64))
                yield tuple(t[sel] for t in ds.tensors)
            else:
                yield self.collate_fn([ds[int(i)] for i in idx])
