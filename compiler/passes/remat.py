"""Recomputing activations in a joint training step instead of keeping them.

A training step compiled whole (forward, backward and update in one graph) keeps a
forward value alive until its last reader in the backward pass — a ReLU's output until the
next convolution's weight gradient, say. When that value is a few exact elementwise
operations away from values that stay alive across the same stretch anyway (a batch
norm's centred input ``d``, kept for its own backward; the per-channel scale; a parameter),
the backward can compute it again just before it needs it: the forward's copy then dies at
its last forward reader, and the recomputed one lives only from just before its backward
readers on. This is activation checkpointing at its cheapest, chosen by structure alone
(so the sizes of a symbolic variant make the same choice, but for a dimension of 1):

- the value is the output of an elementwise node or a reshape of one (a linear layer's
  input folded to rows: the reshape is what its late reader reads), of at least two dims
  larger than one (not a per-channel statistic), not a graph output and not read by a
  value guard; its readers, in node order, have a gap of at least ``GAP`` nodes — the
  readers after the widest gap are *late*;
- the nodes computed again (its *cone*: the producer and, back from it, the elementwise
  nodes and the views it needs; at most ``CONE_MAX``) are exact operations — IEEE
  arithmetic, comparisons, selection, casts, square roots; no vector-math polynomial and
  no random numbers — so the copy has the original's bits wherever and however it is
  vectorised; or a kernel of its own whose bits depend only on its inputs
  (``Traits.recompute_work``: a convolution) costing at most ``WORK_MAX`` multiply-adds
  per element — a first layer's 3x3 convolution over one input channel, whose output and
  ReLU mask then need not be kept from the forward to the backward;
- every value the cone reads is a graph input, a constant, a Python number, or has a reader
  at or after the first late reader anyway (it stays alive across the gap regardless; or
  at most ``SLACK`` nodes before it: the copies then go before that reader) —
  not counting readers moved to a copy of it: values are taken in node order, so a ReLU's
  mask recomputed for its backward is computed again, not kept, for the ReLU's own copy.
  A value the cone cannot compute again is kept alive until the copy when it is small: of
  at most one dim larger than one, broadcast into the recomputed value (a batch norm's
  per-channel mean) — a choice by structure, as above.

The copies are placed just before the first late reader, which then reads them (as do the
later ones), and listed in ``Graph.recomputed``: fusion never puts one in a kernel with a node
that comes before it (or it would run early again, and live as long as the original did),
and ``memory.eager_peak_bytes`` measures eager's peak on the graph without them (eager
keeps the original). Graph inputs read by a copy are read later than before: the write-back rules
(``compiler.pipeline.inplace_writes``, the LLVM driver's direct writes) see those reads as
they see any other. Only a backend that plans memory runs this pass (``pipeline.lower``);
CSE would merge the copies back, so it runs after every other pass.
"""

from __future__ import annotations

from ..ir import Graph, Node, Value
from ..prims import ELEMENTWISE, MAP, traits

GAP = 16  # nodes between a value's readers for the later ones to read a recomputed copy
CONE_MAX = 16  # nodes computed again per value at most
SLACK = GAP // 2  # nodes before its first late reader a copy may be computed (_places)
WORK_MAX = 9  # multiply-adds per element a recomputed kernel of its own may cost (W7b
#              recomputing its 3-channel stem, 27, and its 1x1 shortcuts, 16, in 9 places ran
#              9–26% slower for 0.04 of eager's peak; W7a's 1-channel conv1, 9, pays)


def _exact(n: Node) -> bool:
    t = traits(n.prim)
    if t.role == ELEMENTWISE:
        return not t.transcendental and not n.out.weak
    if t.recompute_work is not None:
        return t.recompute_work(n) <= WORK_MAX
    return t.role == MAP and not t.window  # a reshape or a broadcast (a view: no work)


def _small(x: Value, v: Value) -> bool:
    """Whether ``x`` is a per-channel value of ``v``'s: at most one dim larger than one,
    and that dim one of ``v``'s at the same place from the right (``v`` has two or more)."""
    big = [k for k, d in enumerate(reversed(x.shape)) if d != 1]
    return len(x.shape) <= len(v.shape) and len(big) <= 1 and all(
        x.shape[-1 - k] == v.shape[-1 - k] for k in big)


def rematerialise(g: Graph) -> Graph:
    """Recompute cheap, long-lived activations of ``g`` near their late readers (see the
    module docstring). Returns ``g`` (changed in place)."""
    position = {id(n.out): k for k, n in enumerate(g.nodes)}
    readers: dict[int, list] = {}
    for k, n in enumerate(g.nodes):
        for x in n.inputs:
            if isinstance(x, Value) and (not readers.get(id(x)) or readers[id(x)][-1] != k):
                readers.setdefault(id(x), []).append(k)
    pinned = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
    inserts: dict[int, list] = {}  # node index -> (cone nodes, value, its copy) before it
    rewired: dict[int, dict] = {}  # reader index -> {id(value): copy}
    for k, n in enumerate(g.nodes):  # (in order: a value's readers that read a copy of
        v = n.out  #                       it no longer keep it alive for later cones)
        t = traits(n.prim)
        if id(v) in pinned or v.weak or not (t.role == ELEMENTWISE or t.relabels) \
                or not _exact(n) or sum(1 for d in v.shape if d != 1) < 2:  # (not a
            #  per-channel statistic; a reshape — a linear layer's input folded to rows —
            #  counts with the elementwise value under it, which its copy computes again)
            continue
        ks = [k] + readers.get(id(v), [])
        gap, at = max(((ks[j + 1] - ks[j], j + 1) for j in range(len(ks) - 1)),
                      default=(0, 0))
        if gap < GAP:
            continue
        late = ks[at:]
        for before in _places(n, late[0], readers):
            found = _cone(n, before, readers, position)
            if found is not None:
                break
        else:
            continue
        cone, kept = found
        for x in kept:  # (read by the copy: alive until it, for later cones too)
            readers[id(x)] = sorted({*readers.get(id(x), ()), before})
        inserts.setdefault(before, []).append((cone, v))
        for r in late:
            rewired.setdefault(r, {})[id(v)] = None  # (the copy, filled in below)
        readers[id(v)] = ks[1:at]
    if not inserts:
        return g
    nodes: list[Node] = []
    old_to_new: list[int] = []  # node index -> its index in the new order
    for k, n in enumerate(g.nodes):
        for cone, v in inserts.get(k, ()):
            copies: dict[int, Value] = {}
            for c in cone:
                out = g.new_value(c.out.shape, c.out.dtype, c.out.name)
                node = Node(c.prim, [copies.get(id(x), x) if isinstance(x, Value) else x
                                     for x in c.inputs], dict(c.params), out)
                out.producer = node
                copies[id(c.out)] = out
                g.recomputed[out.id] = c.out.id
                nodes.append(node)
            for r in [r for r, m in rewired.items() if id(v) in m and r >= k]:
                rewired[r][id(v)] = copies[id(v)]
        if k in rewired:
            m = rewired[k]
            n.inputs = [m.get(id(x)) or x if isinstance(x, Value) else x for x in n.inputs]
        old_to_new.append(len(nodes))
        nodes.append(n)
    for gd in g.guards:  # (checked after the same original nodes as before)
        gd.after = old_to_new[gd.after - 1] + 1 if gd.after > 0 else 0
    g.nodes = nodes
    return g


def _places(n: Node, first_late: int, readers: dict) -> list:
    """Where the copy of ``n``'s output may go, best first: before its first late reader,
    else before the last reader of one of ``n``'s inputs at most ``SLACK`` nodes earlier —
    a GELU's ``x / sqrt(2)`` is read late two nodes after the backward's last read of
    ``x``: computed again there, it costs two nodes of lifetime instead of the whole gap."""
    near = {r for x in n.value_inputs() for r in readers.get(id(x), ())
            if first_late - SLACK <= r < first_late}
    return [first_late, *sorted(near, reverse=True)]


def _cone(n: Node, first_late: int, readers: dict, position: dict) -> tuple | None:
    """The nodes to compute ``n``'s output again before node ``first_late``, in order, and
    the small values kept alive for them; or None when that would need a value that does
    not stay alive until then."""
    cone: dict[int, Node] = {}
    kept: dict[int, Value] = {}

    def add(m: Node) -> bool:
        if id(m.out) in cone:
            return True
        if len(cone) >= CONE_MAX or not _exact(m):
            return False
        for x in m.value_inputs():
            if id(x) in cone or x.producer is None or x.weak or x.const is not None:
                continue  # computed again already; a graph input, a Python number, a constant
            if any(r >= first_late for r in readers.get(id(x), ())) or id(x) in kept:
                continue  # alive across the gap anyway: read as it is
            trial, trial_kept = dict(cone), dict(kept)  # (a failed try adds nothing)
            if add(x.producer):
                continue
            cone.clear()
            cone.update(trial)
            kept.clear()
            kept.update(trial_kept)
            if not _small(x, n.out):
                return False
            kept[id(x)] = x  # (small: kept alive until the copy)
        cone[id(m.out)] = m
        return True

    if not add(n):
        return None
    return sorted(cone.values(), key=lambda m: position[id(m.out)]), list(kept.values())
