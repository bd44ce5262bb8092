"""``Dataset``, ``TensorDataset`` and ``DataLoader`` (batching, seeded shuffling, samplers,
drop_last, worker processes); ``DistributedSampler`` for data-parallel jobs."""

from __future__ import annotations

import multiprocessing
import queue
import sys
import traceback
import warnings
from collections.abc import Iterator

import numpy as np

from ...ops import creation as _c
from ...ops import movement as _m
from ...ops.random import manual_seed
from ...tensor import Tensor
from .distributed import DistributedSampler
from .sampler import Sampler

__all__ = ["Dataset", "TensorDataset", "DataLoader", "Sampler", "DistributedSampler",
           "default_collate", "get_worker_info", "WorkerInfo"]


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


class WorkerInfo:
    """What :func:`get_worker_info` returns inside a DataLoader worker process."""

    def __init__(self, id: int, num_workers: int, seed: int, dataset) -> None:
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self) -> str:
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker_info: WorkerInfo | None = None


def get_worker_info() -> WorkerInfo | None:
    """In a DataLoader worker process: its id, the number of workers, its seed and its copy
    of the dataset; None in the main process (as ``torch.utils.data.get_worker_info``)."""
    return _worker_info


def _fetch(dataset, idx: np.ndarray, batched: bool, collate_fn):
    """One batch (or one sample when ``batched`` is False) of ``dataset`` at ``idx``."""
    if not batched:
        return dataset[int(idx[0])]
    if isinstance(dataset, TensorDataset) and collate_fn is default_collate:
        sel = Tensor._constant(idx.astype(np.int64))
        return tuple(t[sel] for t in dataset.tensors)
    return collate_fn([dataset[int(i)] for i in idx])


def _worker_loop(dataset, batched, collate_fn, tasks, results, worker_id, num_workers,
                 seed, worker_init_fn) -> None:
    """A worker process: seeded as PyTorch's (its generator at ``seed``, numpy's at it
    too), ``worker_init_fn(worker_id)``, then (task id, indices) in, (task id, batch, error
    text) out, until None."""
    global _worker_info
    _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset)
    manual_seed(seed)
    np.random.seed(seed % 2**32)
    try:
        if worker_init_fn is not None:
            worker_init_fn(worker_id)
    except Exception:  # noqa: BLE001 - reported by the main process
        results.put((None, None, traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            return
        k, idx = task
        try:
            results.put((k, _fetch(dataset, idx, batched, collate_fn), None))
        except Exception as exc:  # noqa: BLE001 - re-raised in the main process
            results.put((k, None, f"{type(exc).__name__}\n{traceback.format_exc()}"))


class DataLoader:
    """Iterate over ``dataset`` in batches.

    ``shuffle=True`` draws a new permutation every epoch from a numpy generator seeded with
    ``seed`` (so runs repeat exactly); a ``sampler`` (an iterable of indices with a length,
    e.g. a :class:`DistributedSampler`) gives the indices instead, in its order. The last
    partial batch is kept unless ``drop_last``.
    A :class:`TensorDataset` is batched by indexing each tensor once per batch.

    ``num_workers > 0`` fetches and collates batches in that many worker processes (fork
    where the platform has it, else spawn; ``multiprocessing_context`` chooses), each with
    up to ``prefetch_factor`` (default 2) batches in flight, delivered in order — the same
    batches as with no workers — as PyTorch's DataLoader does: worker ``i`` is seeded
    ``base + i`` (``base`` drawn each time workers start), runs ``worker_init_fn(i)`` and sees
    :func:`get_worker_info`. An exception in a worker is raised in the main process with
    the worker's traceback; ``timeout`` (seconds, 0 for none) bounds the wait for a batch;
    ``persistent_workers`` keeps the processes between epochs. ``pin_memory`` has no effect
    on a CPU (PyTorch's warning says so).
    """

    def __init__(self, dataset: Dataset, batch_size: int | None = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = 0, collate_fn=None, *,
                 num_workers: int = 0, pin_memory: bool = False, timeout: float = 0,
                 worker_init_fn=None, multiprocessing_context=None,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 sampler=None) -> None:
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer, got {batch_size}")
        if num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to "
                             "disable multiprocessing.")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified in "
                             "multiprocessing.let num_workers > 0 to enable multiprocessing, "
                             "otherwise set prefetch_factor to None.")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.shuffle, self.drop_last = shuffle, drop_last
        self.collate_fn = collate_fn or default_collate
        self._rng = np.random.default_rng(seed)
        self._seeds = np.random.default_rng(None if seed is None else [seed, 1])  # (workers'
        #   seeds: a generator of their own, so the batches do not depend on num_workers)
        self.num_workers, self.pin_memory, self.timeout = num_workers, pin_memory, timeout
        self.worker_init_fn, self.persistent_workers = worker_init_fn, persistent_workers
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers else prefetch_factor
        if isinstance(multiprocessing_context, str):
            multiprocessing_context = multiprocessing.get_context(multiprocessing_context)
        self.multiprocessing_context = multiprocessing_context
        self._pool = None  # (persistent workers: processes, task queues, result queue)

    def __len__(self) -> int:
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> Iterator[np.ndarray]:
        if self.sampler is not None:
            order = np.fromiter(iter(self.sampler), dtype=np.int64)
        else:
            n = len(self.dataset)
            order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        n = len(order)
        bs = self.batch_size or 1
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if self.drop_last and len(idx) < bs:
                return
            yield idx

    def __iter__(self):
        if self.pin_memory:
            warnings.warn("'pin_memory' argument is set as true but no accelerator is found, "
                          "then device pinned memory won't be used.", stacklevel=2)
        if self.num_workers:
            return self._multiprocess()
        return self._single()

    def _single(self):
        batched = self.batch_size is not None
        for idx in self._batches():
            yield _fetch(self.dataset, idx, batched, self.collate_fn)

    # ------------------------------------------------------------------ worker processes
    def _start(self):
        ctx = self.multiprocessing_context or multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        results = ctx.Queue()
        base = int(self._seeds.integers(0, 2**62))
        workers, tasks = [], []
        for i in range(self.num_workers):
            q = ctx.Queue()
            p = ctx.Process(target=_worker_loop, daemon=True,
                            args=(self.dataset, self.batch_size is not None, self.collate_fn,
                                  q, results, i, self.num_workers, base + i,
                                  self.worker_init_fn))
            p.start()
            workers.append(p)
            tasks.append(q)
        return workers, tasks, results

    def _stop(self, pool) -> None:
        workers, tasks, results = pool
        for q in tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        for q in (*tasks, results):
            q.cancel_join_thread()
            q.close()

    def _get(self, pool):
        """The next result, watching the workers (one that died is an error, not a hang)."""
        workers, _, results = pool
        waited = 0.0
        while True:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
            dead = [p.pid for p in workers if not p.is_alive()]
            if dead:
                raise RuntimeError(f"DataLoader worker (pid(s) "
                                   f"{', '.join(map(str, dead))}) exited unexpectedly")
            if self.timeout and waited >= self.timeout:
                raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds")

    def _multiprocess(self):
        pool = self._pool or self._start()
        _, tasks, _ = pool
        done = False
        try:
            batches = enumerate(self._batches())
            sent, ready, nxt = 0, {}, 0
            limit = self.prefetch_factor * self.num_workers
            for k, idx in batches:  # fill the pipeline
                tasks[k % self.num_workers].put((k, idx))
                sent += 1
                if sent >= limit:
                    break
            while nxt < sent:
                while nxt not in ready:
                    k, batch, error = self._get(pool)
                    if error is not None:
                        worker = "worker_init_fn" if k is None else f"worker process " \
                            f"{k % self.num_workers}"
                        name, _, text = error.partition("\n")
                        raise RuntimeError(f"Caught {name} in DataLoader {worker}.\n"
                                           f"Original {text}")
                    ready[k] = batch
                batch = ready.pop(nxt)
                nxt += 1
                for k, idx in batches:  # one out, one in
                    tasks[k % self.num_workers].put((k, idx))
                    sent += 1
                    break
                yield batch
            done = True
        finally:
            if self.persistent_workers and done:
                self._pool = pool
            else:
                self._pool = None
                self._stop(pool)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and not sys.is_finalizing():
            self._stop(pool)
