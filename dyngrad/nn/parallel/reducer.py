"""The gradient reducer of :class:`~dyngrad.nn.parallel.DistributedDataParallel`: parameters
grouped into buckets, each bucket's gradients averaged over the ranks by one non-blocking
all-reduce started as soon as the bucket's last gradient is accumulated, and every
all-reduce waited for (and copied back into ``.grad``) before ``backward()`` returns.

Note [buckets]: gradients arrive roughly in reverse order of the parameters (the last layer's
first), so parameters are bucketed in reverse order: a bucket fills, and its all-reduce
starts, while backward is still computing the layers before it. The first bucket is capped
at 1 MiB so that communication starts early, the others at ``bucket_cap_mb`` (25 MiB);
one bucket holds one dtype. PyTorch's reducer starts with one bucket and, after the first
iteration, rebuilds its buckets in the order gradients were observed to arrive, with the
same caps; for a model whose parameters are used in the order they are defined (the usual
case) that order is the reverse parameter order this reducer uses from the start. The
assignment itself is PyTorch's ``compute_bucket_assignment_by_size`` (a bucket closes once
it reaches its cap, so it may exceed it by its last tensor).

Note [the average]: each gradient is multiplied by 1/world while it is copied into its
bucket, and the buckets are summed — PyTorch's order of operations (for a power-of-two
world the scaling is exact, so this equals summing then dividing).

Note [overlap and progress]: MPICH moves data only inside MPI calls (it runs no progress
thread), so every gradient hook also tests the all-reduces in flight; the rest of each
transfer happens while the end-of-backward callback waits.

Note [DDP under a compiler tracer]: while a compiled step is traced, the same hooks run,
but what they do is recorded (Note [collectives in the IR] in dyngrad/distributed/
collectives.py): each gradient, times 1/world, is a tensor op; when a bucket's last gradient
is in, its all-reduce starts (an IR start node taking the bucket's gradients, which it copies
into its flat buffer), and the end-of-backward callback records the waits and the copies
back into ``.grad``
(the compiled step waits there: after the rest of the backward, before the optimizer reads
the gradients). The reducer's own Python bookkeeping (which gradients are ready, which
bucket is next) runs as in eager while tracing and ends each step in the state it started
from, so a compiled call, which does not run it, leaves it right. The progress polls of Note
[overlap and progress] are left out (the native code polls between its kernels instead).

Note [a backward that stops midway]: an exception raised during backward (in a hook, say)
skips the end-of-backward callback. If the program catches it and goes on, this rank has
started only some of its buckets' all-reduces while the others may have started them all:
its next all-reduces would be matched with their later buckets — summed with them whenever
the sizes agree, silently — and the ranks would wait for each other at the end. So, as
PyTorch's reducer does, the next forward raises instead; and since no later collective of
this rank can be matched correctly, the process group is marked broken (every collective
raises at once, and the job is aborted at exit rather than leaving the others waiting).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import numpy as np

from ...autograd import no_grad, queue_callback
from ...autograd.graph import AccumulateGrad, RecordedCallback
from ...dispatch import STATE
from ...distributed import ReduceOp, all_reduce
from ...distributed.collectives import ALL_REDUCE, record, records_collectives
from ...ops.creation import zeros_like
from ...tensor import Tensor

__all__ = ["FIRST_BUCKET_BYTES", "DEFAULT_BUCKET_CAP_MB", "assign_buckets", "Reducer",
           "find_output_tensors"]

FIRST_BUCKET_BYTES = 1024 * 1024  # PyTorch's dist._DEFAULT_FIRST_BUCKET_BYTES
DEFAULT_BUCKET_CAP_MB = 25
MB = 1024 * 1024


def assign_buckets(nbytes: Sequence[int], dtypes: Sequence, limits: Sequence[int],
                   order: Sequence[int]) -> list[list[int]]:
    """Tensor indices grouped into buckets (Note [buckets]): tensors are taken in ``order``;
    each dtype fills its own bucket, which closes once its bytes reach the current limit
    (``limits[0]`` for a dtype's first bucket, then ``limits[1]``, …, the last one
    repeating); the buckets left open follow, in the order their dtypes first appeared.

    >>> assign_buckets([400, 400, 400], ["f4"] * 3, [500, 1000], order=[2, 1, 0])
    [[2, 1], [0]]
    """
    if len(nbytes) != len(dtypes):
        raise ValueError(f"assign_buckets: {len(nbytes)} sizes but {len(dtypes)} dtypes")
    if not limits:
        raise ValueError("assign_buckets: give at least one size limit")
    result: list[list[int]] = []
    open_: dict = {}  # dtype -> (indices, bytes, which limit)
    for i in order:
        indices, size, k = open_.get(dtypes[i], ([], 0, 0))
        indices.append(i)
        size += nbytes[i]
        if size >= limits[k]:
            result.append(indices)
            open_[dtypes[i]] = ([], 0, min(k + 1, len(limits) - 1))
        else:
            open_[dtypes[i]] = (indices, size, k)
    result.extend(indices for indices, _, _ in open_.values() if indices)
    return result


def find_output_tensors(obj) -> list:
    """The tensors in a forward's output: a tensor, or lists, tuples, dicts and dataclass
    instances of them (PyTorch's ``_find_tensors``).

    >>> [t.shape for t in find_output_tensors({"logits": dg.ones(2), "n": 3})]
    [(2,)]
    """
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in find_output_tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in find_output_tensors(x)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj)
                for t in find_output_tensors(getattr(obj, f.name))]
    return []


class _Bucket:
    """One flat buffer holding the scaled gradients of some parameters of one dtype."""

    __slots__ = ("indices", "offsets", "buffer", "tensor", "pending", "work", "parts")

    def __init__(self, indices: list[int], params: list) -> None:
        self.indices = indices
        sizes = [params[i]._data.size for i in indices]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        self.buffer = np.zeros(self.offsets[-1], dtype=params[indices[0]]._data.dtype)
        self.tensor = Tensor._fresh(self.buffer)
        self.pending = len(indices)
        self.work = None
        self.parts: list = [None] * len(indices)  # (recorded: the scaled gradients)

    def slot(self, k: int, shape: tuple) -> np.ndarray:
        return self.buffer[self.offsets[k]:self.offsets[k + 1]].reshape(shape)


class Reducer:
    """Averages the gradients of ``params`` over the ranks of ``group`` in ``buckets``
    (lists of parameter indices, in the order they are reduced), from hooks on the
    parameters' gradient accumulators, which run after the parameters' own post-accumulate-grad
    hooks (``AccumulatorHook``). ``prepare_for_backward`` arms it for one backward pass; hooks
    outside an armed pass (``no_sync``, a backward without a DDP forward) do nothing, so
    gradients accumulate locally as usual."""

    def __init__(self, group, params: list, names: list[str], buckets: list[list[int]],
                 find_unused: bool) -> None:
        self.group = group
        self.params = params
        self.names = names
        self.find_unused = find_unused
        self.buckets = [_Bucket(indices, params) for indices in buckets]
        self.locate = {i: (b, k) for b, bucket in enumerate(self.buckets)
                       for k, i in enumerate(bucket.indices)}
        self.expect_hooks = False
        self.ready: set[int] = set()
        self.next_bucket = 0
        self.unused: list[int] = []  # (find_unused) parameters the forward did not reach
        self.marked_unused = False
        self.used = np.zeros(len(params), dtype=np.int32)  # (find_unused) got a gradient
        self.recorded = False  # this backward pass is traced (Note [DDP under a compiler
        #                        tracer])
        me = weakref.ref(self)  # (the parameters' hooks must not keep the reducer alive;
        #                          they go with it)
        handles = [p._register_accumulator_hook(  # (after the parameter's own post-
            lambda p, i=i: _call(me, "on_gradient", i),  # accumulate hooks, as PyTorch's)
            recorded=True) for i, p in enumerate(params)]  # (Note [DDP under a compiler
        #                                                       tracer])
        weakref.finalize(self, _remove_all, handles)

    # ----------------------------------------------------------------- per iteration
    def check_prior_reduction(self) -> None:
        """Raise if the last armed backward pass started reducing and never finished (Note
        [a backward that stops midway]); the group is broken from then on."""
        if not (self.expect_hooks and self.ready):
            return
        r = self.group.rank()
        started = self.next_bucket
        self.group.broken = (f"a backward pass of DistributedDataParallel stopped on rank {r} "
                             f"after {started} of its {len(self.buckets)} gradient "
                             f"all-reduces had started")
        raise RuntimeError(
            f"DistributedDataParallel: Expected to have finished reduction in the prior "
            f"iteration before starting a new one. On rank {r}, the previous backward pass "
            f"through this module's output stopped before its end (an exception raised "
            f"during it was caught), after {len(self.ready)} of {len(self.params)} gradients "
            f"were ready and {started} of {len(self.buckets)} buckets' all-reduces had "
            f"started; the other ranks may have started more, so this rank's collectives no "
            f"longer match theirs. The process group is broken (every collective raises) and "
            f"the job is aborted at exit: let such an exception end the job instead of "
            f"catching it.")

    def prepare_for_backward(self, outputs: list) -> None:
        """Arm for the next backward pass; with ``find_unused``, find the parameters that
        ``outputs``' graph does not reach (their gradients will not come)."""
        self.expect_hooks = True
        self.ready.clear()
        self.next_bucket = 0
        for bucket in self.buckets:
            bucket.pending = len(bucket.indices)
            bucket.work = None
        self.marked_unused = False
        # (find_unused: the forward made the trace fall back already)
        self.recorded = records_collectives() and not self.find_unused
        if self.recorded:  # (a trace whose backward is not inside the call must fall back)
            for m in STATE.modes:
                m.on_collective(self, True)
        if self.find_unused:
            reached = _reached_leaves(outputs)
            self.unused = [i for i, p in enumerate(self.params) if id(p) not in reached]

    def on_gradient(self, i: int) -> None:
        """Parameter ``i``'s gradient has been accumulated into its ``.grad``."""
        if self.find_unused and self.params[i].grad is not None:
            self.used[i] = 1  # (also under no_sync: used once in the accumulation counts)
        if not self.expect_hooks:
            return
        if not self.ready:
            queue_callback(RecordedCallback(self.finalize))
        if not self.marked_unused:
            self.marked_unused = True
            for j in self.unused:
                self.mark_ready(j)
        self.mark_ready(i)
        if self.recorded:
            return
        for bucket in self.buckets[:self.next_bucket]:  # (Note [overlap and progress])
            bucket.work.is_completed()

    def mark_ready(self, i: int) -> None:
        if i in self.ready:
            raise RuntimeError(
                f"DistributedDataParallel: Expected to mark a variable ready only once. "
                f"Parameter at index {i} with name {self.names[i]} has been marked as ready "
                f"twice: it received gradients from two backward passes of one forward (a "
                f"parameter used outside forward, or a second backward through the same "
                f"graph); run one backward per forward of the DDP module")
        self.ready.add(i)
        b, k = self.locate[i]
        bucket = self.buckets[b]
        p = self.params[i]
        if self.recorded:  # (Note [DDP under a compiler tracer])
            g = p.grad
            with no_grad():
                part = zeros_like(p) if g is None else g * (1.0 / self.group.size())
                bucket.parts[k] = part.reshape(-1)
        else:
            slot = bucket.slot(k, p._data.shape)
            if p._grad is None:
                slot.fill(0)
            else:  # (Note [the average])
                np.multiply(p._grad._data, 1.0 / self.group.size(), out=slot)
        bucket.pending -= 1
        while self.next_bucket < len(self.buckets) and \
                self.buckets[self.next_bucket].pending == 0:
            launched = self.buckets[self.next_bucket]
            if self.recorded:  # (the start copies the parts into its buffer: no cat)
                launched.work = record(ALL_REDUCE, launched.parts, {"op": ReduceOp.SUM},
                                       self.group, _Result(launched), async_op=True)
                launched.parts = [None] * len(launched.indices)
            else:
                launched.work = all_reduce(launched.tensor, async_op=True)
            self.next_bucket += 1

    def finalize(self) -> None:
        """End of backward: wait for every bucket and write the averages into ``.grad``."""
        self.expect_hooks = False
        launched = self.buckets[:self.next_bucket]
        for bucket in launched:
            bucket.work.wait()
        if self.next_bucket < len(self.buckets):
            raise RuntimeError(self._unfinished())
        unused_everywhere = set()
        if self.find_unused:
            all_reduce(Tensor._fresh(self.used), op=ReduceOp.MAX)
            unused_everywhere = {i for i in range(len(self.params)) if not self.used[i]}
            self.used[:] = 0
        if self.recorded:
            self._write_recorded()
            return
        for bucket in self.buckets:
            for k, i in enumerate(bucket.indices):
                if i in unused_everywhere:
                    continue  # (PyTorch leaves the .grad of a parameter no rank used as is)
                p = self.params[i]
                avg = bucket.slot(k, p._data.shape)
                g = p._grad
                if g is None or g._requires_grad or not g._data.flags.writeable:
                    p.grad = Tensor._fresh(avg.copy())
                else:
                    np.copyto(g._data, avg)
                    g._storage.version += 1

    what = "DistributedDataParallel's gradient all-reduce (armed by its forward)"

    def _write_recorded(self) -> None:
        """The recorded end of backward: each bucket's averages into ``.grad`` (as tensor
        ops a trace sees), then the bucket buffers back to their own arrays."""
        for bucket in self.buckets:
            flat = bucket.tensor
            with no_grad():
                for k, i in enumerate(bucket.indices):
                    p = self.params[i]
                    avg = flat[bucket.offsets[k]:bucket.offsets[k + 1]].reshape(p.shape)
                    g = p.grad
                    if g is None or g._requires_grad or not g._data.flags.writeable:
                        p.grad = avg.clone()
                    else:
                        g.copy_(avg)
            bucket.tensor = Tensor._fresh(bucket.buffer)  # (no tensor of the trace is kept)
            bucket.work = None
        self.recorded = False
        for m in STATE.modes:
            m.on_collective(self, False)

    def _unfinished(self) -> str:
        missing = [i for i in range(len(self.params)) if i not in self.ready]
        named = ", ".join(f"{i} ({self.names[i]})" for i in missing)
        if self.find_unused:
            advice = ("Since `find_unused_parameters=True` is enabled, this likely means that "
                      "not all `forward` function outputs participate in computing loss: "
                      "make them all part of it.")
        else:
            advice = ("You can enable unused parameter detection by passing the keyword "
                      "argument `find_unused_parameters=True` to "
                      "`dyngrad.nn.parallel.DistributedDataParallel`, and by making sure all "
                      "`forward` function outputs participate in calculating loss.")
        return (f"DistributedDataParallel: backward finished on rank {self.group.rank()} "
                f"before every gradient was ready, so the gradients were not averaged. This "
                f"error indicates that your module has parameters that were not used in "
                f"producing loss. {advice}\nParameters which did not receive grad for rank "
                f"{self.group.rank()}: {named}")


class _Result:
    """Where a recorded bucket's all-reduce puts its result: the bucket's tensor (the
    recorded end of backward reads the averages from it)."""

    __slots__ = ("bucket",)

    def __init__(self, bucket) -> None:
        self.bucket = bucket

    def __call__(self, result) -> None:
        self.bucket.tensor = result


def _remove_all(handles: list) -> None:
    for h in handles:
        h.remove()


def _call(ref, method: str, *args) -> None:
    obj = ref()
    if obj is not None:
        getattr(obj, method)(*args)


def _reached_leaves(outputs: list) -> set:
    """ids of the leaves whose gradient accumulators ``outputs``' backward graph reaches."""
    seen, stack, leaves = set(), [], set()
    for t in outputs:
        edge = t._edge()
        if edge is not None and id(edge[0]) not in seen:
            seen.add(id(edge[0]))
            stack.append(edge[0])
    while stack:
        node = stack.pop()
        if isinstance(node, AccumulateGrad):
            leaf = node.leaf()
            if leaf is not None:
                leaves.add(id(leaf))
        for e in node.next:
            if e is not None and id(e[0]) not in seen:
                seen.add(id(e[0]))
                stack.append(e[0])
    return leaves

