"""Memory planning: every intermediate buffer of a graph gets a byte offset in one arena,
allocated once per variant and reused by every call.

The schedule is the node order, or ``steps`` (one per node: fused kernels in execution order,
the nodes of one kernel sharing a step; see :func:`plan_memory`). A *buffer* is the memory
one value needs: every non-view node output by default, or exactly the values a fuser lists
as ``materialised`` (the rest live in registers inside a fused kernel). Not buffers: graph
inputs (the caller owns them), constants, weak scalars (Python numbers), and views
(reshape/broadcast/permute/slice), which share their source's buffer and so extend its live
range instead. Graph outputs — and any buffer a graph output is a view of — are not planned
either: they leave the call, so a call allocates them fresh (its outputs and saved tensors)
and nothing else.

1. **Liveness.** A buffer lives from the step that defines it to the last step that reads
   it — directly, through a view, or through values with no memory of their own (a fused
   value is recomputed from its buffers wherever it is read). A value guard reads once every
   node before it has run.
2. **In place.** An elementwise node may write its output over an input buffer that dies at
   that node, when both have the same shape and element size and every read of that buffer
   at that step is element for element at the reader's own index: by an elementwise node of
   the buffer's shape, directly or through reshapes that only relabel it (not through a
   broadcast, another view or a fused value). Each output element then depends only on the
   input element it overwrites. The two values then share one
   buffer; the pairs are ``MemoryPlan.inplace``. When the node's output is a graph output,
   the whole in-place chain ending in it lives in that output's memory, which the call
   allocates anyway (``MemoryPlan.in_outputs``): an optimizer's update chain then needs no
   arena at all.
3. **Offsets.** Buffers (sizes rounded up to ``align``) are placed greedily, each at the
   lowest-waste gap among the already placed buffers whose lifetimes overlap it (best fit);
   the greedy runs in several orders — largest first (the "greedy by size" of TFLite's
   planner), largest size × lifetime first, earliest first (a simulated best-fit malloc),
   longest-lived first — and the smallest arena wins. ``peak_live_bytes`` (the most bytes
   alive at once) is a lower bound for any placement, so ``arena_bytes / peak_live_bytes``
   says how close to optimal the placement is.

Note (outputs' memory): a chain in ``in_outputs`` writes the output's memory from the
chain's first node on. A backend that writes that output straight into an input's array (an
in-place write-back, ``compiler.pipeline.inplace_writes``) must apply the write-back's rules —
after the last value guard, and no later reader of the input's old value — from that first
node (the least ``lifetimes[i][0]`` over the ``i`` with ``in_outputs[i] == o``), or plan
with ``into_outputs=False``.

Note (symbolic dimensions): a plan is for the shapes it is given. For a variant that serves
every batch size, the LLVM driver plans each size the first time it meets it, over the
size's graph built with a ``compiler.dims.Dim``: the byte counts and offsets are Dims too —
functions of the size — written into the driver's IR as run-time numbers
(``compiler/dims.py``). Which node outputs need memory does not depend on the size, only
where they go. :meth:`MemoryPlan.table` gives the offsets (their numbers at the size) as
one int64 per node, in node order. A kernel that runs in place (any pair in ``inplace`` at
any size) must load every element it overwrites before storing it; see
``compiler/backends/llvm/driver.py`` for why its ``noalias`` pointers stay sound.

>>> plan = plan_memory(graph)
>>> verify_plan(graph, plan)  # raises PlanError if two live buffers share a byte
>>> plan.offsets[value.id], plan.arena_bytes
(0, 802816)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..ir import Graph, Node, Value, ValueGuard, VerifyError
from ..prims import traits

ALIGN = 64  # a cache line, and a full AVX-512 vector


class PlanError(VerifyError):
    """A memory plan is wrong: two live buffers share bytes, a buffer leaves the arena, an
    offset is misaligned, a value has no buffer, or an in-place pair is illegal."""


@dataclass(eq=False)
class MemoryPlan:
    """Where every intermediate buffer lives (keys are ``Value.id``): at an offset in the
    arena, or inside the memory of a graph output its in-place chain ends in."""

    offsets: dict  # value id -> byte offset in the arena (views use their source's buffer)
    sizes: dict  # value id -> bytes reserved for it (its nbytes rounded up to ``align``)
    lifetimes: dict  # value id -> (defining step, last step that reads it); see ``steps``
    inplace: list  # (input value id, output value id): the output overwrites the input
    in_outputs: dict  # value id -> id of the graph output whose memory it uses
    arena_bytes: int
    sum_of_intermediates: int  # every buffer its own allocation, no reuse (aligned bytes)
    peak_live_bytes: int  # most arena bytes alive at once: no placement can do better
    eager_peak_bytes: int  # most bytes of intermediates alive at once with each non-view
    #                        node output its own allocation, as eager numpy runs (exact bytes)
    output_bytes: int  # fresh outputs of a call (at most: some may be written in place)
    align: int = ALIGN
    materialised: frozenset | None = None  # value ids given to plan_memory (None: all)
    steps: list | None = None  # the step of each node, when not node k at step k
    order: str = ""  # which greedy order gave the smallest arena
    buffers: list = field(default_factory=list)  # value ids sharing each arena buffer
    early: frozenset = frozenset()  # the nodes plan_memory's ``early`` answered True for

    def table(self, g: Graph) -> np.ndarray:
        """The offsets as one table, one int64 per node in node order: an offset
        into the arena, ``-2 - j`` when the value lives in the memory of node j's output (a
        graph output), or -1 when it is not a buffer of its own (an output, a view, a weak
        scalar, a fused value)."""
        node_of = {n.out.id: j for j, n in enumerate(g.nodes)}
        return np.array([self.offsets.get(n.out.id, -2 - node_of[self.in_outputs[n.out.id]]
                                          if n.out.id in self.in_outputs else -1)
                         for n in g.nodes], dtype=np.int64)

    def summary(self) -> str:
        """One line for ``explain()``."""
        ratio = self.arena_bytes / self.eager_peak_bytes if self.eager_peak_bytes else 0.0
        n = len(self.offsets)
        return (f"arena {_fmt_bytes(self.arena_bytes)} for {n} buffer{'s' * (n != 1)} "
                f"({len(self.inplace)} written in place, {len(self.in_outputs)} in their "
                f"outputs' memory); sum of all intermediates "
                f"{_fmt_bytes(self.sum_of_intermediates)}; eager's peak "
                f"{_fmt_bytes(self.eager_peak_bytes)} (arena/eager {ratio:.2f}); fresh "
                f"outputs per call ≤ {_fmt_bytes(self.output_bytes)}")


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def _nbytes(v: Value, dtype=None) -> int:
    shape = v.shape
    return math.prod(shape) * (dtype or v.dtype).itemsize  # (a symbolic variant's sizes: Dims)


def _shape(v: Value) -> tuple:
    return v.shape


def _at_index(n: Node, x: Value) -> bool:
    """Whether node ``n`` reads ``x`` element for element at its output's index (an
    elementwise node of ``x``'s shape, whatever its output's dtype)."""
    return n.prim.kind == "elementwise" and not n.out.weak and not x.weak \
        and _shape(x) == _shape(n.out)


def _fits(x: Value, v: Value) -> bool:
    """Whether ``v`` may take over ``x``'s buffer element for element: the same number of
    elements of the same size."""
    return x.dtype.itemsize == v.dtype.itemsize and math.prod(_shape(x)) == math.prod(_shape(v))


def _aligned(g: Graph, owns: set, early=None) -> dict:
    """value id -> the owned buffers reading that value reads element for element, element
    ``j`` of the value from element ``j`` of the buffer (in C order). A buffer is aligned with
    itself; a reshape that only relabels (the same elements in the same order: a buffer is
    C-contiguous) is aligned with what its input is; an elementwise node's output is aligned
    with what its inputs of its own shape are, less anything it reads another way (through a
    broadcast, another view, a reduction). A fused value is computed where it is read, so
    reading it reads these buffers at the reader's index — but for the fused value of a node
    ``early(k)`` answers True for: it is computed before its step writes anything in place,
    and reading it then reads no buffer."""
    aligned: dict[int, frozenset] = {}
    touched: dict[int, frozenset] = {}  # value id -> every owned buffer reading it touches
    none = frozenset()
    for k, n in enumerate(g.nodes):
        v = n.out
        if v.id in owns:
            aligned[v.id] = touched[v.id] = frozenset((v.id,))
            continue
        if early is not None and early(k):
            aligned[v.id] = touched[v.id] = none
            continue
        xs = [x for x in n.inputs if isinstance(x, Value)]
        touched[v.id] = frozenset().union(*(touched.get(x.id, none) for x in xs))
        if traits(n.prim).relabels and xs and not xs[0].weak:
            aligned[v.id] = aligned.get(xs[0].id, none)
        elif n.prim.kind == "elementwise" and not v.weak:
            same = [x for x in xs if _at_index(n, x)]
            other = frozenset().union(*(touched.get(x.id, none) for x in xs if x not in same),
                                      *(touched.get(x.id, none) - aligned.get(x.id, none)
                                        for x in same))
            aligned[v.id] = frozenset().union(*(aligned.get(x.id, none) for x in same)) - other
        else:
            aligned[v.id] = none
    return aligned


def _times(g: Graph, steps) -> list:
    """The step each node runs at: ``steps`` (one per node; a fused kernel's nodes share
    one), or node k at step k."""
    if steps is None:
        return list(range(len(g.nodes)))
    steps = [int(t) for t in steps]
    if len(steps) != len(g.nodes):
        raise ValueError(f"plan_memory: {len(steps)} steps for {len(g.nodes)} nodes")
    return steps


def _guard_times(g: Graph, times: list) -> list:
    """(value, step) per value guard: a guard checked before node ``after`` reads its value
    once every node before ``after`` has run."""
    prefix, top = [], 0
    for t in times:
        top = max(top, t)
        prefix.append(top)
    return [(gd.value, prefix[min(gd.after, len(prefix)) - 1] if gd.after > 0 and prefix
             else 0) for gd in g.guards]


def _owners(g: Graph, materialised) -> tuple[set, set]:
    """(ids of values that own a buffer, ids of those that leave the call as outputs)."""
    if materialised is None:
        owns = {n.out.id for n in g.nodes if not n.out.weak and not n.prim.view}
    else:
        owns = {v.id for v in materialised if v.producer is not None and not v.weak}
    escaping = set()
    for v in g.outputs:  # an output is memory the call hands back: its root buffer escapes
        while v.producer is not None and not v.weak and v.id not in owns \
                and v.producer.prim.view and isinstance(v.producer.inputs[0], Value):
            v = v.producer.inputs[0]
        if v.producer is not None and not v.weak:
            owns.add(v.id)  # (an output a fuser left unlisted is still written somewhere)
            escaping.add(v.id)
    return owns, escaping


def _liveness(g: Graph, owns: set, times: list, early=None) -> tuple:
    """Per owned value id: (defining step, last reading step), and whether every read at that
    last step is element for element at the reader's index (see :func:`_at_index`; through
    relabelling reshapes too) — or, by a node ``early(k)`` answers True for, of a value of
    its own input's shape aligned with the buffer (see :func:`plan_memory`); and
    :func:`_aligned`'s map, which decides it."""
    deps: dict[int, frozenset] = {}  # value id -> owned buffers that reading it touches
    start, last, clean = {}, {}, {}

    def reads(x) -> frozenset:
        return deps.get(x.id, frozenset()) if isinstance(x, Value) else frozenset()

    def note(r: int, t: int, direct: bool) -> None:
        if t > last[r]:
            last[r], clean[r] = t, direct
        elif t == last[r]:
            clean[r] = clean[r] and direct

    aligned = _aligned(g, owns, early)
    for k, (n, t) in enumerate(zip(g.nodes, times)):
        relabel = traits(n.prim).relabels and n.out.id not in owns  # (reads nothing itself:
        first = early is not None and early(k)  #                its readers read through it)
        for x in n.inputs:
            for r in reads(x):
                note(r, t, relabel or r in aligned.get(x.id, ()) and (
                    _at_index(n, x) or first and x is n.inputs[0]))
        v = n.out
        if v.id in owns:
            deps[v.id] = frozenset((v.id,))
            start[v.id], last[v.id], clean[v.id] = t, t, False
        elif first:  # (read at its own step only, after it read its sources: see above)
            deps[v.id] = frozenset()
        else:  # a view, a weak scalar or a fused value: reading it reads its sources
            deps[v.id] = frozenset().union(*(reads(x) for x in n.inputs))
    for value, t in _guard_times(g, times):
        for r in reads(value):
            note(r, t, False)
    return start, last, clean, aligned


def _peak(intervals: list) -> int:
    """Most bytes alive at once over (bytes, first, last) intervals, ends inclusive."""
    events: dict[int, int] = {}
    for size, s, e in intervals:
        events[s] = events.get(s, 0) + size
        events[e + 1] = events.get(e + 1, 0) - size
    peak = live = 0
    for t in sorted(events):
        live += events[t]
        peak = max(peak, live)
    return peak


def eager_peak_bytes(g: Graph) -> int:
    """Most bytes of intermediates alive at once when every non-view node output is its own
    allocation, freed after its last use — what eager numpy does (outputs and inputs are not
    intermediates; exact bytes, no rounding). Values computed again for late readers
    (``Graph.recomputed``) are not eager's: its readers read the original; and index values
    narrowed to int32 (``Graph.narrowed``) are eager's int64."""
    wide = g.narrowed
    g = _as_eager(g)
    owns, escaping = _owners(g, None)
    start, last, _, _ = _liveness(g, owns, _times(g, None))
    by_id = {n.out.id: n.out for n in g.nodes}
    return _peak([(_nbytes(by_id[i], wide.get(i)), start[i], last[i]) for i in start
                  if i not in escaping])


def _as_eager(g: Graph) -> Graph:
    """``g`` without the copies ``compiler/passes/remat.py`` made (their readers read the
    originals), as eager runs it: a new graph of new nodes over the same values."""
    if not g.recomputed:
        return g
    by_id = {n.out.id: n.out for n in g.nodes}
    original = {i: by_id[j] for i, j in g.recomputed.items()}
    nodes, kept_before = [], []  # kept_before[k]: nodes kept among the first k
    for n in g.nodes:
        kept_before.append(len(nodes))
        if n.out.id not in original:
            nodes.append(Node(n.prim, [original.get(x.id, x) if isinstance(x, Value) else x
                                       for x in n.inputs], n.params, n.out))
    kept_before.append(len(nodes))
    guards = [ValueGuard(original.get(gd.value.id, gd.value), gd.expected, gd.kind, gd.where,
                         kept_before[min(gd.after, len(g.nodes))]) for gd in g.guards]
    return Graph(inputs=g.inputs, scalars=g.scalars, nodes=nodes, outputs=g.outputs,
                 guards=guards)


REFUSE_TRIES = 8  # in-place pairs (the largest) tried apart when the arena exceeds the peak
REFUSE_ABOVE = 1.03  # ... by more than this: each try places every buffer again in every
#                      order (W8, 0.7% above its peak: 40 placements, ~150 ms of its compile)


class _Layout(NamedTuple):
    """One placement of :func:`plan_memory`'s buffers: the arena and offsets of the best
    greedy order, the spans placed, and the buffers (with their in-place pairs) placed."""

    arena: int
    offsets: list
    order: str
    spans: list
    buffer_of: dict
    members: list
    output_of: dict
    pairs: list

_ORDERS = {  # (size, first, last) -> sort key; each a greedy order worth trying
    "largest first": lambda b: (-b[0], b[1], b[2]),
    "largest size x lifetime first": lambda b: (-b[0] * (b[2] - b[1] + 1), b[1]),
    "earliest first": lambda b: (b[1], -b[0]),
    "longest-lived first": lambda b: (b[1] - b[2], -b[0], b[1]),
    "last dying first": lambda b: (-b[2], -b[0]),  # (W7b's arena at its live peak)
}


def _place(buffers: list, key) -> tuple[int, list]:
    """Greedy best-fit placement of (size, first, last) buffers in the order ``key`` gives:
    each goes in the smallest gap, among the buffers placed so far whose lifetimes overlap
    its own, that holds it — or on top of them."""
    offsets = [0] * len(buffers)
    placed: list = []  # (offset, end, first, last)
    for i in sorted(range(len(buffers)), key=lambda i: key(buffers[i])):
        size, s, e = buffers[i]
        if size == 0:
            continue
        busy = sorted((o, end) for o, end, s2, e2 in placed if s2 <= e and s <= e2)
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        offsets[i] = cursor if best is None else best
        placed.append((offsets[i], offsets[i] + size, s, e))
    return max((end for _, end, _, _ in placed), default=0), offsets


def plan_memory(g: Graph, materialised=None, align: int = ALIGN, *, steps=None,
                inplace: bool | Callable[[int], bool] = True,
                into_outputs: bool = True,
                early: Callable[[int], bool] | None = None) -> MemoryPlan:
    """Plan every intermediate buffer of ``g`` into one arena (see the module docstring).

    ``materialised``: the values that need memory of their own (a fuser's group outputs);
    None means every non-view node output. A view listed there gets its own buffer (a backend
    that must copy it, such as a reshape of a permuted value, lists it). ``steps``: for each
    node, the step it runs at — kernels in execution order, the nodes of one fused kernel
    sharing a step; None means node k runs at step k. ``inplace=False`` turns off in-place
    reuse; a callable ``inplace(k)`` allows it only for the outputs of the nodes ``k`` it
    answers True for (a backend whose kernels of some kinds cannot promise the order below);
    ``into_outputs=False`` keeps in-place chains out of the outputs' memory. ``early(k)``
    True says that node ``k`` reads each element of its (first) input, when that value is
    aligned with a buffer, before its step writes that element in place — a reduction whose
    kernel finishes its sums over a part of the elements before its second pass writes any
    of them (``compiler/backends/llvm/reduce.py``'s ``early_readers``): such a read then
    does not keep the buffer from being overwritten at that step. Shapes
    may hold ``compiler.dims.Dim`` sizes (a symbolic variant's): byte counts and offsets
    are then Dims too.

    With fusion groups (``compiler.passes.fusion.fuse``), in the groups' order::

        steps = [0] * len(g.nodes)
        for t, group in enumerate(groups):
            for k in group.nodes:
                steps[k] = t
        plan = plan_memory(g, [v for gr in groups for v in gr.outputs], steps=steps)

    Note: inside one kernel, an in-place pair assumes the kernel reads each element of the
    buffer it overwrites before writing that element — true of a loop nest that reads its
    inputs at the iteration point it writes; a kernel that cannot promise it plans with
    ``inplace=False``.

    >>> plan = plan_memory(cf.variants[0].trace.graph)  # the W2 training step
    >>> plan.arena_bytes, plan.peak_live_bytes, plan.eager_peak_bytes
    (802816, 802816, 2408448)
    """
    if align < 1 or align & (align - 1):
        raise ValueError(f"plan_memory: align must be a power of two, got {align}")
    owns, escaping = _owners(g, materialised)
    times = _times(g, steps)
    start, last, clean, aligned = _liveness(g, owns, times, early)
    by_id = {n.out.id: n.out for n in g.nodes}

    def chains(refused: frozenset) -> tuple:
        """The buffers, in-place pairs made but for the outputs in ``refused``."""
        buffer_of: dict[int, int] = {}  # value id -> index into `members` (arena candidates)
        members: list[list[int]] = []
        output_of: dict[int, int] = {}  # buffer index -> the output whose memory it is
        pairs, overwritten = [], set()
        for k, (n, t) in enumerate(zip(g.nodes, times)):
            v = n.out
            if v.id not in owns:
                continue
            into = None
            if inplace and n.prim.kind == "elementwise" and v.id not in refused \
                    and (into_outputs or v.id not in escaping) \
                    and (inplace is True or inplace(k)):
                into = next((by_id[r] for x in n.inputs if isinstance(x, Value)
                             and _at_index(n, x) for r in sorted(aligned.get(x.id, ()))
                             if r in buffer_of and r not in overwritten and last[r] == t
                             and clean[r] and _fits(by_id[r], v)), None)
            if into is not None:
                b = buffer_of[into.id]
                overwritten.add(into.id)
                pairs.append((into.id, v.id))
                if v.id in escaping:  # the chain lives in the output's memory from its start
                    output_of[b] = v.id
                    continue
                buffer_of[v.id] = b
                members[b].append(v.id)
            elif v.id not in escaping:
                buffer_of[v.id] = len(members)
                members.append([v.id])
        return buffer_of, members, output_of, pairs

    sizes = {i: _round_up(_nbytes(by_id[i]), align) for i in owns if i not in escaping}

    def placement(refused: frozenset) -> _Layout:
        """The best greedy order's arena for the buffers :func:`chains` gives."""
        buffer_of, members, output_of, pairs = chains(refused)
        spans = [(sizes[m[0]], start[m[0]], max(last[i] for i in m)) for m in members]
        arena_spans = [s for b, s in enumerate(spans) if b not in output_of]
        best = None
        for name, key in _ORDERS.items():
            arena, offs = _place(arena_spans, key)
            if best is None or arena < best[0]:
                best = (arena, offs, name)
        return _Layout(*best, arena_spans, buffer_of, members, output_of, pairs)

    # Note (in-place pairs refused): a pair joins two buffers into one of the two
    # lifetimes together — no more bytes alive at once, but a longer block to place: the
    # mnist step's dropout gradient (a matmul's output, then its mask and scale in place)
    # then overlaps both the pooled values it follows and the 9 MiB scatter-add it
    # precedes, and the arena exceeded the bytes ever alive at once by 2.25 MiB. When it
    # does, the largest pairs are refused one at a time, each kept when the arena shrinks.
    refused: frozenset = frozenset()
    best = placement(refused)
    live = _peak(best.spans)
    joined = sorted((v for _, v in best.pairs if v in best.buffer_of), key=lambda v: -sizes[v])
    for v in joined[:REFUSE_TRIES]:
        if best.arena <= live * REFUSE_ABOVE:
            break
        trial = placement(refused | {v})
        if trial.arena < best.arena:
            refused, best = refused | {v}, trial
    arena, offs, order, arena_spans, buffer_of, members, output_of, pairs = best
    sizes = {i: sizes[i] for i in buffer_of}
    placed = iter(offs)
    offset_of = {b: next(placed) for b in range(len(members)) if b not in output_of}
    return MemoryPlan(
        offsets={i: offset_of[b] for i, b in buffer_of.items() if b in offset_of},
        sizes=sizes, lifetimes={i: (start[i], last[i]) for i in buffer_of}, inplace=pairs,
        in_outputs={i: output_of[b] for i, b in buffer_of.items() if b in output_of},
        arena_bytes=arena, sum_of_intermediates=sum(sizes.values()),
        peak_live_bytes=_peak(arena_spans), eager_peak_bytes=eager_peak_bytes(g),
        output_bytes=sum(_nbytes(by_id[i]) for i in escaping), align=align,
        materialised=None if materialised is None else frozenset(v.id for v in materialised),
        steps=None if steps is None else times, order=order,
        buffers=[m for b, m in enumerate(members) if b not in output_of],
        early=frozenset(k for k in range(len(g.nodes)) if early is not None and early(k)))


def verify_plan(g: Graph, plan: MemoryPlan) -> None:
    """Raise :class:`PlanError` unless the plan is safe for ``g``: every arena offset aligned
    and every buffer inside the arena and big enough; no output (or what it is a view of) in
    the arena; every value that needs memory has it; every in-place pair legal; and no two
    buffers whose lifetimes overlap share a byte — in the arena or in an output's memory.
    Lifetimes are recomputed here from the graph, independently of the planner; what it
    takes from the plan is the backend's promise ``plan.early`` (see :func:`plan_memory`).

    >>> verify_plan(g, plan_memory(g))  # silent when the plan is safe
    """
    times = _times(g, plan.steps)
    when = {n.out.id: t for n, t in zip(g.nodes, times)}  # the step each value is written at
    node_of = {n.out.id: n for n in g.nodes}
    by_id = {n.out.id: n.out for n in g.nodes}
    arena, in_out = plan.offsets, plan.in_outputs
    life: dict = {}
    for n, t in zip(g.nodes, times):
        for x in n.value_inputs():
            if not traits(n.prim).reads_data:
                continue  # reads only its input's shape, known before anything runs
            if x.id in when and when[x.id] > t:
                raise PlanError(f"plan: the steps run {n.out!r} ({n.prim.name}, step {t}) "
                                f"before its input {x!r} (step {when[x.id]})")

    def name(i: int) -> str:
        v = by_id[i]
        where = f"arena [{arena[i]}, {arena[i] + plan.sizes[i]})" if i in arena else \
            f"in %{in_out[i]}'s memory" if i in in_out else "an output"
        first, end = life.get(i, ("?", "?"))
        return f"%{i} ({v.dtype.name}{list(_shape(v))}, {where}, steps {first}..{end})"

    for i, off in arena.items():
        if i not in by_id:
            raise PlanError(f"plan: %{i} is not a node output of this graph")
        size = plan.sizes.get(i)
        if size is None or size < _nbytes(by_id[i]):
            raise PlanError(f"plan: %{i} needs {_nbytes(by_id[i])} bytes, has {size}")
        if off % plan.align:
            raise PlanError(f"plan: %{i} at offset {off} is not aligned to {plan.align}")
        if off < 0 or off + size > plan.arena_bytes:
            raise PlanError(f"plan: %{i} at [{off}, {off + size}) exceeds the arena of "
                            f"{plan.arena_bytes} bytes")
    escaping = set()  # the values whose memory the call hands back
    for v in g.outputs:
        while True:
            if v.id in arena or v.id in in_out:
                raise PlanError(f"plan: output {v!r} (or the buffer it views) lives in memory "
                                f"that later nodes or the next call overwrite")
            p = v.producer
            if p is None or v.weak or not p.prim.view or (plan.materialised is not None
                                                           and v.id in plan.materialised):
                break
            v = p.inputs[0]
        if v.producer is not None and not v.weak:
            escaping.add(v.id)
    for i, o in in_out.items():
        if i not in by_id or i in arena or o not in escaping:
            raise PlanError(f"plan: %{i} is placed in %{o}'s memory, which is not a graph "
                            f"output's (or %{i} is also in the arena)")
        if _nbytes(by_id[i]) > _nbytes(by_id[o]):
            raise PlanError(f"plan: %{i} does not fit in the memory of output %{o}")
    located = set(arena) | set(in_out)
    for n in g.nodes:
        v = n.out
        wanted = not v.weak and (not n.prim.view if plan.materialised is None
                                 else v.id in plan.materialised)
        if wanted and v.id not in located and v.id not in escaping:
            raise PlanError(f"plan: {v!r} ({n.prim.name}) needs a buffer and has none")

    index = {n.out.id: k for k, n in enumerate(g.nodes)}
    early = plan.early

    def touched(x) -> set:
        """Buffers read when ``x`` is read: itself, or through views, weak and fused values
        (not an early node's: it was computed before its step wrote anything)."""
        found, stack = set(), [x]
        while stack:
            y = stack.pop()
            if not isinstance(y, Value) or y.producer is None or y.id in escaping:
                continue  # a literal, an input, a constant, or an output's own memory
            if y.id in located:
                found.add(y.id)
            elif index.get(y.id) not in early:
                stack.extend(y.producer.inputs)
        return found

    for i in located:
        life[i] = (when[i], when[i])
    for i in escaping:
        life[i] = (when[i], max(times) + 1)  # handed back: alive after the last step
    indirect: set = set()  # (buffer, step): read other than element for element at that step

    def read(i: int, k: int, direct: bool) -> None:
        life[i] = (life[i][0], max(life[i][1], k))
        if not direct:
            indirect.add((i, k))

    aligned = _aligned(g, located | escaping, early.__contains__)

    def reads_as(x, i: int) -> bool:  # reading x reads buffer i at x's own index
        return isinstance(x, Value) and i in aligned.get(x.id, ())

    for k, (n, t) in enumerate(zip(g.nodes, times)):
        relabel = traits(n.prim).relabels and n.out.id not in located
        for x in n.inputs:
            for i in touched(x):
                read(i, t, relabel or reads_as(x, i) and (
                    _at_index(n, x) or k in early and x is n.inputs[0]))
    for value, t in _guard_times(g, times):
        for i in touched(value):
            read(i, t, False)

    def location(i: int):
        return ("arena", arena[i]) if i in arena else ("output", in_out[i]) if i in in_out \
            else ("output", i) if i in escaping else None

    pairs = set()
    for a, b in plan.inplace:
        if a not in located or location(b) is None:
            raise PlanError(f"plan: in-place pair (%{a}, %{b}) names a value with no buffer")
        n = node_of[b]
        if not any(reads_as(x, a) and _at_index(n, x) for x in n.inputs) or \
                not _fits(by_id[a], by_id[b]) or \
                life[a][1] != when[b] or \
                (a, when[b]) in indirect or location(a) != location(b):
            raise PlanError(f"plan: {name(b)} ({n.prim.name}) may not overwrite {name(a)} "
                            f"in place: that needs an elementwise node reading it element for "
                            f"element at the same shape, as its last reader, at the same place")
        pairs.add((a, b))
    spaces: dict = {"arena": [(arena[i], arena[i] + plan.sizes[i], i) for i in arena]}
    for i, o in in_out.items():
        spaces.setdefault(o, [(0, _nbytes(by_id[o]), o)]).append(
            (0, _nbytes(by_id[i]), i))
    for spans in spaces.values():
        spans = sorted(s for s in spans if s[1] > s[0])
        for j, (_, hi, a) in enumerate(spans):
            for lo2, _, b in spans[j + 1:]:
                if lo2 >= hi:
                    break
                (s1, e1), (s2, e2) = life[a], life[b]
                if s1 <= e2 and s2 <= e1 and (a, b) not in pairs and (b, a) not in pairs:
                    raise PlanError(f"plan: {name(a)} and {name(b)} are alive at the same "
                                    f"time and share bytes")
