"""Fusion: partition a graph's nodes into kernels (:class:`FusionGroup` s) for a loop-nest
code generator. :func:`fuse` is a pure function: it reads the graph and returns the groups
in an order the driver can run them, and changes nothing (the interpreter is unaffected).

Roles of nodes (:func:`_roles`):

- *elementwise*: every ``elementwise`` primitive (arithmetic, ``cast``, ``where``,
  comparisons), its inputs broadcast into its output as numpy does;
- *reduce*: ``sum`` and ``max`` (over size-1 axes only they are elementwise: a copy);
- *map*: ``reshape``, ``broadcast`` and unit-step ``slice`` — index maps, no arithmetic;
- *leaf*: the constants ``full`` and ``size_of`` (``size_of`` reads only its input's
  *shape*, so that input is not a data dependence), and maps of data no fusable node
  computes (graph inputs, constants, a matmul's result...);
- *own*: ``matmul``, ``gather``, ``scatter_add``, ``concat``, ``pad``, stepped ``slice``,
  ``permute``, ``iota`` and ``random``: one group each, of kind 'matmul', 'index',
  'movement', 'creation' or 'random';
- *weak*: scalar arithmetic on Python-number inputs (optimizer hyperparameters).

Note (what one loop group is — the rules the code generator may rely on):

- *Elementwise group*: every computing node's output has the group's iteration shape, up
  to size-1 dims (``(64, 1)`` and ``(64,)`` are one space: the same elements in the same
  row-major order), so a reshape that only adds or drops unit dims fuses. Data from
  outside (other groups' outputs, graph inputs, constants) is read through any chain of
  maps — broadcast, reshape (a row-major relabelling: it assumes the buffer is
  contiguous, as every group output is), unit-step slice (an offset) — so broadcasting
  inputs fuse. A value of another shape is never computed inside: no recomputation across
  a broadcast.
- *Reduce group*: one or more ``sum``/``max`` over the same input shape ``S`` and axes
  (siblings share the loop), a *prologue* of elementwise nodes over ``S`` computed inside
  the reduction loop, and an *epilogue* of elementwise nodes depending on a reduction,
  either over the reduced shape (``sum(x) / n``: once per output element) or over ``S``,
  reading reduced values broadcast back along exactly the reduced axes (``e / s`` in
  softmax: a second pass over the reduced axes once the reduction is done; kept axes are
  the outer loops; prologue values it reads are kept or recomputed, the generator's
  choice). Nothing that depends on a reduction may feed a reduction of the same group (no
  chained reductions), and every internal edge must read its producer at the same
  iteration point — checked by giving each dim of each value an iteration axis (so
  ``x + s`` with ``s = x.sum(1)`` broadcast onto the *last* axis does not fuse).
  Softmax forward is thus two groups: ``max``; then ``sub, exp, sum, div``.
- *Outputs*: a value is a group output (materialised) only if something outside the group
  uses it — a node of another group, a graph output, a value guard; everything else stays
  in registers. Index maps of outside data may not be outputs (their users would sit in
  two groups): a map read by several groups is a 'movement' group of its own (a view of
  its input, no data moves). A constant read by several groups joins the first that can
  take it, as one of its outputs (the others may inline it: its producer says what it
  is).
- *Value guards*: no group spans a guard's ``after`` position (the schedule is cut into
  segments there), so each guard is checked between two kernels, before anything after it.
- *Weak nodes* join the one group that uses them (computed once at the kernel's entry)
  when their inputs come from outside it; otherwise they form a 'scalar' group.

How groups form: greedily along graph edges; a merge is kept only if the union is a legal
group (above), lies within one segment, leaves the groups acyclic and puts no value computed
again for late readers (``Graph.recomputed``, compiler/passes/remat.py) with a node before
it. In order: (1) each
reduction takes the producers that only it uses; (2) sibling reductions (same shape and
axes, a shared input) merge; (3) elementwise nodes merge with their elementwise
producers; (4) each reduction merges with the group computing its input; (5) any edge
between loop groups, repeated to a fixpoint (epilogues); (5b) elementwise siblings (the
same loops, a value both read, starting at most ``SIBLING_SPAN`` nodes apart, neither
writing a bound input in place); (6) leaves and weak nodes join their consumers; (7) copies
join the permute, concat or attention node that alone reads them; (8) an input gradient of a
convolution takes the add that alone reads it (a residual block's two gradients summed).

    >>> print(format_groups(fuse(graph_of_softmax)))
    group 0 [reduce 64x32 axes (1,)] nodes 0 in %0 out %1
    group 1 [reduce 64x32 axes (1,)] nodes 1,2,3,4 in %0 %1 out %5
"""

from __future__ import annotations

import bisect
import enum
import heapq
from dataclasses import dataclass

from dyngrad.dtypes import float32, float64

from ..ir import Graph, Value, VerifyError
from ..prims import ADD, CONCAT, CONSTANT, CONV_TRANSPOSE, ELEMENTWISE, PERMUTE, REDUCTION, traits
from .views import ATTENTION_OPERANDS, VIEWS, row_view

FLOOR_SLACK = 16  # nodes before a recomputed value's floor a merge may reach (_below_floor)


class GroupKind(enum.StrEnum):
    """What a fusion group is, each kind named once here (a str: ``grp.kind == "reduce"``
    holds)."""

    ELEMENTWISE = "elementwise"
    REDUCE = "reduce"
    MATMUL = "matmul"
    INDEX = "index"
    MOVEMENT = "movement"
    CREATION = "creation"
    RANDOM = "random"
    WINDOW = "window"  # convolution and pooling windows
    SCALAR = "scalar"
    COLLECTIVE = "collective"  # an MPI collective's start or wait: no loop, MPI calls

    @property
    def trivial(self) -> bool:
        """Python-number arithmetic, constants and views: nothing worth a kernel of its own
        when it is all a graph has."""
        return self in (GroupKind.SCALAR, GroupKind.CREATION, GroupKind.MOVEMENT)

    @property
    def may_fail(self) -> bool:
        """A kernel that returns a status, nonzero when it cannot finish (an index out of
        range: the call runs eagerly; a work buffer it could not allocate: the runner's plan
        runs the call)."""
        return self in (GroupKind.INDEX, GroupKind.WINDOW, GroupKind.COLLECTIVE)

    @property
    def stands_alone(self) -> bool:
        """A kernel a hybrid plan can call on its own (its inputs in, its outputs out)."""
        return self in (GroupKind.ELEMENTWISE, GroupKind.REDUCE, GroupKind.MATMUL)


_OWN_KIND = {k: GroupKind(k) for k in ("matmul", "index", "movement", "creation", "random",
                                        "window", "collective")}
_LOOP = ("ew", "reduce", "map")


def _may_fail(n) -> bool:
    """A node whose kernel returns a status (``GroupKind.may_fail``: index, window)."""
    kind = _OWN_KIND.get(n.prim.kind)
    return kind is not None and kind.may_fail


def _constant(n) -> bool:
    """A value known from its parameters and shapes alone (full, size_of)."""
    return traits(n.prim).role == CONSTANT


@dataclass(eq=False)
class FusionGroup:
    """One kernel: ``kind`` (a :class:`GroupKind`), ``nodes`` (indices into
    ``graph.nodes``, in schedule order), the ``inputs`` it reads and the ``outputs`` it
    materialises, its iteration ``shape`` and, for a reduce group, the reduced ``axes`` of
    that shape."""

    kind: GroupKind
    nodes: list
    inputs: list
    outputs: list
    shape: tuple
    axes: tuple = ()
    segment: int = 0  # how many value-guard cuts precede it

    def __post_init__(self) -> None:
        self.kind = GroupKind(self.kind)  # (a kind's name is accepted: ValueError if none)

    def describe(self) -> str:
        space = "x".join(map(str, self.shape)) if self.shape else "()"
        axes = f" axes {self.axes}" if self.kind == "reduce" else ""
        return (f"[{self.kind} {space}{axes}] nodes {','.join(map(str, self.nodes))} in "
                f"{' '.join(map(repr, self.inputs)) or '-'} out "
                f"{' '.join(map(repr, self.outputs)) or '-'}")


def data_inputs(n) -> list:
    """The values a node reads the data of (``size_of`` reads only a shape)."""
    return n.value_inputs() if traits(n.prim).reads_data else []


def _is_map(n) -> bool:
    return traits(n.prim).maps(n)


def _relabels(n) -> bool:
    """A reshape, or a reduction over size-1 axes only: the same elements in the same order."""
    t = traits(n.prim)
    if t.role == REDUCTION:
        return all(n.inputs[0].shape[a] == 1 for a in n.params["axes"])
    return t.relabels


def _roles(g: Graph, producer: dict) -> list:
    roles = []
    for n in g.nodes:
        if n.out.weak:
            role = "weak"
        elif traits(n.prim).role == ELEMENTWISE:
            role = "ew"
        elif traits(n.prim).role == REDUCTION:
            role = "ew" if _relabels(n) else "reduce"  # over size-1 axes only: a copy
        elif _constant(n):
            role = "leaf"
        elif _is_map(n):
            p = producer.get(id(n.inputs[0]))
            role = "map" if p is not None and roles[p] in _LOOP else "leaf"
        else:
            role = "own"
        roles.append(role)
    return roles


def _cuts(g: Graph) -> list:
    """Schedule positions where a value guard is checked between two nodes."""
    return sorted({gd.after for gd in g.guards if 0 < gd.after < len(g.nodes)})


SIBLING_SPAN = 16  # nodes between the starts of elementwise siblings merged (_merge_siblings)
HOLD_MAX = 16  # nodes after a group's last forward node a late value it computes may be read
#               from another kernel (_Partition._hands_on_late)

# how a node of a loop group reads its inputs' axes (_Partition.reading)
_REDUCES, _RELABELS, _SHIFTS, _BROADCASTS = "reduces", "relabels", "shifts", "broadcasts"


def _bytes(v) -> int:
    """A value's bytes when its size is a number (a symbolic one counts as 0)."""
    n = 1
    for d in v.shape:
        if not isinstance(d, int):
            return 0
        n *= d
    return n * (v.dtype.np.itemsize if v.dtype is not None and not v.weak else 8)


def _squeeze(shape) -> tuple:
    return tuple(s for s in shape if s != 1)


class _Partition:
    """Union-find over node indices with the legality checks (internal to one fuse call)."""

    def __init__(self, g: Graph, writes=()) -> None:
        self.g, self.nodes = g, g.nodes
        self.writes = frozenset(writes)  # nodes writing a bound input in place (_sink)
        n = len(g.nodes)
        self.producer = {id(node.out): i for i, node in enumerate(g.nodes)}
        self.roles = _roles(g, self.producer)
        self.preds = [[self.producer[id(v)] for v in data_inputs(node)
                       if id(v) in self.producer] for node in g.nodes]
        self.succs = [[] for _ in range(n)]
        for i, ps in enumerate(self.preds):
            for p in set(ps):
                self.succs[p].append(i)
        self.external = [False] * n  # used by a graph output or a value guard
        for v in list(g.outputs) + [gd.value for gd in g.guards]:
            if id(v) in self.producer:
                self.external[self.producer[id(v)]] = True
        cuts = _cuts(g)
        self.segment = [bisect.bisect_right(cuts, i) for i in range(n)]
        self.parent = list(range(n))
        self.members = {i: {i} for i in range(n)}
        self.first = list(range(n))  # per root: its smallest node index
        # per root: no node of its group may come before this index — a value computed
        # again for late readers (Graph.recomputed) starts the run of copies it is in
        self.floor = [0] * n
        copies = g.recomputed
        for i, node in enumerate(g.nodes):
            if node.out.id in copies:
                self.floor[i] = self.floor[i - 1] if i and g.nodes[i - 1].out.id in copies \
                    else i
        self.refused: set = set()  # unions found illegal
        self.sealed: set = set()  # groups that take no more nodes (absorb_sums)
        # values of the call's own backward (and what follows it, and values recomputed for
        # late readers: Graph.late_from, Graph.recomputed) — per root, whether its group computes
        # ("ew", "reduce" nodes) late values, early ones. A merged group runs where its
        # earliest node would: a late value it computes with the forward's kernel is held in
        # memory until a later kernel reads it (nanoGPT's GELU derivative, 6 MB). So a group
        # computing both may hand a late value on only to itself, to the graph's outputs or
        # to nodes at most HOLD_MAX after its last early node (a loss and its gradient in
        # one loop, or two: nothing is held for long)
        late_from = g.late_from()
        self.is_late = [k >= late_from or node.out.id in copies
                        for k, node in enumerate(g.nodes)]
        computes = [role in ("ew", "reduce") for role in self.roles]
        self.computes_late = [c and t for c, t in zip(computes, self.is_late)]
        self.computes_early = [c and not t for c, t in zip(computes, self.is_late)]
        # per root: the groups reachable from it, as a bitset of root indices (bits of
        # merged-away roots may stay set: no one asks about them again)
        self.reach = [0] * n
        for i in range(n - 1, -1, -1):
            for s in self.succs[i]:
                self.reach[i] |= (1 << s) | self.reach[s]
        # per node, what loop_nest asks of it again and again as groups grow: its output
        # shape without size-1 dims, how it relates its inputs' axes to its own, and its
        # data inputs as (producer or None, shape)
        self.squeezed = [_squeeze(node.out.shape) for node in g.nodes]
        self.reading = [_REDUCES if role == "reduce" else _RELABELS if _relabels(node)
                        else _SHIFTS if traits(node.prim).window else _BROADCASTS
                        for node, role in zip(g.nodes, self.roles)]
        self.reads = [[(self.producer.get(id(v)), v.shape) for v in data_inputs(node)]
                      for node in g.nodes]

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    # ------------------------------------------------------------ legality
    def _around(self, r: int, edges: list) -> set:
        """The groups next to group ``r`` along ``edges`` (``self.succs`` or ``self.preds``)."""
        find = self.find
        return {find(x) for m in self.members[r] for x in edges[m]} - {r}

    def _acyclic_root(self, a: int, b: int) -> tuple:
        """Whether groups ``a`` and ``b`` can merge without closing a cycle (a path from one
        to the other through a third group), and which root to keep: one whose reachability
        set stays exact with no update (when every edge leaving one group enters the other,
        or every edge entering one comes from the other), else None (update everyone)."""
        succ_a, succ_b = self._around(a, self.succs), self._around(b, self.succs)
        if succ_a == {b} or self._around(a, self.preds) == {b}:
            return True, b
        if succ_b == {a} or self._around(b, self.preds) == {a}:
            return True, a
        for succ, dst in ((succ_a, b), (succ_b, a)):
            bit = 1 << dst
            if any(x != dst and self.reach[x] & bit for x in succ):
                return False, None
        return True, None

    def loop_nest(self, members: set) -> tuple | None:
        """(kind, shape, axes) if ``members`` (loop, leaf and weak nodes) form one legal loop
        group, else None. See the module's Note."""
        nodes, roles, preds = self.nodes, self.roles, self.preds
        order = sorted(i for i in members if roles[i] != "weak")
        chain, compute = set(), []
        for i in order:  # reads of outside data through index maps
            if roles[i] in ("leaf", "map") and all(p in chain for p in preds[i] if p in members):
                chain.add(i)
            else:
                compute.append(i)
        if not compute:
            kind = GroupKind.CREATION if any(_constant(nodes[i]) for i in order) else \
                GroupKind.MOVEMENT
            return kind, nodes[order[-1]].out.shape, ()
        for i in chain:  # a shared index map would put its users in two groups
            if roles[i] != "leaf" or not _constant(nodes[i]):
                if self.external[i] or any(u not in members for u in self.succs[i]):
                    return None
        reds = [i for i in compute if roles[i] == "reduce"]
        if reds:
            r0 = nodes[reds[0]]
            s_in, axes = r0.inputs[0].shape, r0.params["axes"]
            if any(nodes[r].inputs[0].shape != s_in or nodes[r].params["axes"] != axes
                   for r in reds):
                return None
            dims = [d for d, s in enumerate(s_in) if s != 1]
            full = tuple(s_in[d] for d in dims)
            kept = [k for k, d in enumerate(dims) if d not in axes]
            reduced = tuple(full[k] for k in kept)
            shape = s_in
        else:
            full, reduced, kept = _squeeze(nodes[compute[0]].out.shape), None, []
            shape = max((nodes[i].out.shape for i in compute), key=len)
        axmap, post = {}, set()
        squeezed, reading, reads = self.squeezed, self.reading, self.reads
        for i in compute:
            out_shape = nodes[i].out.shape
            sq = squeezed[i]
            if sq == full:
                its = iter(range(len(full)))
            elif sq == reduced:
                its = iter(kept)
            else:
                return None
            ax = [next(its) if s != 1 else None for s in out_shape]
            axmap[i] = ax
            how = reading[i]
            if how is _REDUCES or any(p in post for p in preds[i]):
                post.add(i)
            for p, in_shape in reads[i]:
                if p is None or p not in axmap:  # outside, or read through an index map
                    continue
                if how is _REDUCES:
                    if p in post:  # a chained reduction: needs the first one finished
                        return None
                elif how is _RELABELS:
                    if [a for a in axmap[p] if a is not None] != \
                            [a for a in ax if a is not None]:
                        return None
                elif how is _SHIFTS:  # (a slice: its positions shift)
                    return None
                else:  # numpy broadcasting (elementwise, broadcast): right-aligned dims
                    lead = len(out_shape) - len(in_shape)
                    for d, s in enumerate(in_shape):
                        if s != 1 and axmap[p][d] != ax[d + lead]:
                            return None
        if reds:
            return GroupKind.REDUCE, tuple(shape), tuple(axes)
        return GroupKind.ELEMENTWISE, tuple(shape), ()

    # ------------------------------------------------------------ merging
    def try_merge(self, a: int, b: int, check=True) -> bool:
        """Merge the groups of nodes ``a`` and ``b`` if they are in one segment, the union
        is a legal loop group (unless ``check`` is off) and the groups stay acyclic."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if ra in self.sealed or rb in self.sealed:
            return False  # (rule 8's kernels: a transposed convolution and its add, no more)
        key = (min(ra, rb), max(ra, rb), len(self.members[ra]) + len(self.members[rb]))
        va, vb = self._views(ra), self._views(rb)  # (index maps only: nothing computed)
        if self.segment[ra] != self.segment[rb] or key in self.refused or (
                not (va or vb) and self._below_floor(ra, rb)):
            return False
        late = self.computes_late[ra] or self.computes_late[rb]
        if late and (self.computes_early[ra] or self.computes_early[rb]) and \
                self._hands_on_late(self.members[ra] | self.members[rb]):
            return False  # (the backward's line: see __init__)
        union = self.members[ra] | self.members[rb]
        if check and self.loop_nest(union) is None:
            self.refused.add(key)  # (a group only grows: the same union fails again)
            return False
        ok, keep = self._acyclic_root(ra, rb)
        if not ok:
            return False
        general = keep is None
        if general:
            keep = ra if len(self.members[ra]) >= len(self.members[rb]) else rb
        gone = rb if keep == ra else ra
        self.parent[gone] = keep
        self.members[keep] = union
        del self.members[gone]
        # a group of views joins where its reader is: it computes nothing, so it never
        # moves a recomputed value's kernel earlier (Graph.recomputed)
        self.first[keep] = self.first[rb] if va and not vb else \
            self.first[ra] if vb and not va else min(self.first[ra], self.first[rb])
        self.floor[keep] = max(self.floor[ra], self.floor[rb])
        self.computes_late[keep] = self.computes_late[ra] or self.computes_late[rb]
        self.computes_early[keep] = self.computes_early[ra] or self.computes_early[rb]
        if general:  # whoever reached either part now reaches all that the union reaches
            both = (1 << ra) | (1 << rb)
            merged = self.reach[keep] = (self.reach[ra] | self.reach[rb]) & ~both
            for z in self.members:
                if self.reach[z] & both and z != keep:
                    self.reach[z] |= merged | (1 << keep)
        return True

    def _below_floor(self, ra: int, rb: int) -> bool:
        """Whether the union of groups ``ra`` and ``rb`` would run before one of them may (a
        value computed again for late readers, ``floor``): it runs where its earliest node
        is, and that is before the floor — unless every node between is the union's own, or
        one it reads or that reads it (within ``FLOOR_SLACK`` nodes): no other kernel can
        then run between, and no value is computed sooner than it would be. nanoGPT's GELU
        derivative, computed again in the backward, then joins the kernel adding it to the
        product before it, and the GELU recomputed there for the projection's weight
        gradient: one kernel, not three."""
        lo = min(self.first[ra], self.first[rb])
        hi = max(self.floor[ra], self.floor[rb])
        if lo >= hi:
            return False
        after = self.reach[ra] | self.reach[rb]
        both = (1 << ra) | (1 << rb)

        def unrelated(j: int) -> bool:  # neither before the union nor after it, by its edges
            rj = self.find(j)
            return rj not in (ra, rb) and not after >> rj & 1 and not self.reach[rj] & both
        return hi - lo > FLOOR_SLACK or any(unrelated(j) for j in range(lo, hi))

    def _hands_on_late(self, union: set) -> bool:
        """Whether a late value computed in ``union`` is read by a node outside it more than
        ``HOLD_MAX`` nodes after the union's last early node (see ``__init__``)."""
        succs, is_late = self.succs, self.is_late
        until = max(m for m in union if not is_late[m]) + HOLD_MAX
        return any(is_late[m] and any(u > until and u not in union for u in succs[m])
                   for m in union)

    def _views(self, r: int) -> bool:
        """Whether group ``r`` holds only index maps (broadcast, reshape, slice) of data
        computed elsewhere: when merged, they are read through, not computed."""
        return all(self.roles[m] == "map" for m in self.members[r])

    def merge_loops(self) -> None:
        roles, preds, succs = self.roles, self.preds, self.succs
        reduces = [i for i, role in enumerate(roles) if role == "reduce"]
        for r in reduces:  # (1) each reduction takes the producers only it uses
            grown = True
            while grown:
                grown = False
                group = self.members[self.find(r)]
                for p in sorted({p for m in group for p in preds[m]} - group, reverse=True):
                    if roles[p] in ("ew", "map") and len(self.members[self.find(p)]) == 1 \
                            and not self.external[p] and all(u in group for u in succs[p]) \
                            and self.try_merge(p, r):
                        grown = True
                        break
        loops: dict = {}  # (2) sibling reductions: same loops, a shared input
        for r in reduces:
            loops.setdefault((self.nodes[r].inputs[0].shape, self.nodes[r].params["axes"]),
                             []).append(r)
        for same in loops.values():
            for k, a in enumerate(same):
                for b in same[k + 1:]:
                    if self.find(a) != self.find(b) and \
                            self._outside_reads(a) & self._outside_reads(b):
                        self.try_merge(a, b)
        for i, role in enumerate(roles):  # (3) elementwise with elementwise producers
            if role in ("ew", "map"):
                for p in preds[i]:
                    if roles[p] in ("ew", "map"):
                        self.try_merge(p, i)
        for i, role in enumerate(roles):  # (4) reductions with their prologue
            if role == "reduce" and preds[i] and roles[preds[i][0]] in _LOOP:
                self.try_merge(preds[i][0], i)
        changed = True
        while changed:  # (5) epilogues, and whatever else became legal
            changed = False
            for i, role in enumerate(roles):
                if role not in _LOOP:
                    continue
                for p in preds[i]:
                    if roles[p] in _LOOP and self.find(p) != self.find(i) \
                            and self.try_merge(p, i):
                        changed = True
        self._merge_siblings()

    def _merge_siblings(self) -> None:
        """(5b) elementwise siblings: two elementwise groups over the same loops that read
        one value from outside, and start within ``SIBLING_SPAN`` nodes of each other, are
        one kernel when legal (the value read once: nanoGPT's GELU recomputed for a weight
        gradient beside its derivative, both from the same pre-activation) — unless one of
        them writes a bound input in place (an optimizer's update)."""
        roles = self.roles
        by_shape: dict = {}
        for r in list(self.members):
            kinds = {roles[m] for m in self.members[r]}
            if "ew" not in kinds or not kinds <= {"ew", "map", "leaf", "weak"} or \
                    self.members[r] & self.writes:
                continue  # (not a kernel writing a bound input in place: its place is the
                #           driver's write rules')
            shape = next(self.nodes[m].out.shape for m in sorted(self.members[r])
                         if roles[m] == "ew")
            by_shape.setdefault(tuple(shape), []).append(r)
        for same in by_shape.values():
            same.sort(key=lambda r: self.first[r])
            for k, a in enumerate(same):
                for b in same[k + 1:]:
                    if self.first[b] - self.first[a] > SIBLING_SPAN:
                        break
                    if a in self.members and b in self.members and \
                            self.find(a) != self.find(b) and \
                            self._outside_reads(a) & self._outside_reads(b):
                        self.try_merge(a, b)

    def _outside_reads(self, i: int) -> set:
        group = self.members[self.find(i)]
        return {id(v) for m in group for v in data_inputs(self.nodes[m])
                if self.producer.get(id(v)) not in group}

    def place_leaves_and_weak(self) -> None:
        """(6) in reverse schedule order (users are placed first): join the one group that
        uses the node, when legal; a constant (``full``, ``size_of``) used by several groups
        joins the first that can take it, as one of its outputs (a kernel writes the
        constant; the others read it — or inline it, since its producer says what it is)."""
        roles, nodes = self.roles, self.nodes
        fusable = {"ew", "reduce", "map", "leaf", "weak"}
        for i in range(len(nodes) - 1, -1, -1):
            if roles[i] not in ("leaf", "weak"):
                continue
            users = {self.find(u) for u in self.succs[i]}
            loops = sorted((r for r in users if {roles[m] for m in self.members[r]} <= fusable),
                           key=lambda r: self.first[r])
            if roles[i] == "leaf" and _constant(nodes[i]):
                for r in loops:
                    if self.try_merge(i, r):
                        break
            elif self.external[i] or len(users) != 1 or len(loops) != 1:
                continue  # shared, or used by a matmul, an index op...: a group of its own
            elif roles[i] == "leaf":
                self.try_merge(i, loops[0])
            elif not any(p in self.members[loops[0]] for p in self.preds[i]):
                self.try_merge(i, loops[0], check=False)  # hoisted to the kernel's entry

    def chain_movements(self) -> None:
        """(7) a copy that only feeds a permute joins it: a permute takes the movement group
        before it (a slice and a reshape, say) when that group copies (it is not reshapes
        alone, which alias their source for free) and its one output is read by the
        permute alone — one kernel maps each output element back through the whole chain
        (``MoveBuilder``). nanoGPT's heads, split from the fused qkv product as ``slice →
        reshape → permute``, are then one copy reading the product's output where it is,
        not two. A concat takes its pieces' copies the same way (the heads' gradients, put
        back together by ``passes/pads.py``: one kernel writes the qkv gradient from the
        attention backward's output). (Not into a pad: a plain pad's kernel copies whole
        rows, which a chain's element-by-element mapping would lose.)"""
        nodes, roles = self.nodes, self.roles
        for i, n in enumerate(nodes):
            if n.prim in ATTENTION_OPERANDS:
                self._attention_views(i)
                continue
            if roles[i] != "own" or n.prim not in (PERMUTE, CONCAT):
                continue
            for p in sorted(set(self.preds[i])):
                if not self._feeds_only(p, i):
                    continue
                if not self._relabels(p):
                    self.try_merge(p, i, check=False)
                    continue
                # reshapes alone (aliases, free): taken only with the copy before them
                q = sorted(set(self.preds[p]))
                if len(self.members[self.find(p)]) == 1 and len(q) == 1 and \
                        self._feeds_only(q[0], p) and not self._relabels(q[0]):
                    self.try_merge(p, i, check=False)
                    self.try_merge(q[0], i, check=False)

    def absorb_sums(self) -> None:
        """(8) an input gradient of a convolution (``conv_transpose``) whose one reader is an
        add of another value of its shape and dtype, a group of its own, takes that add: its
        kernel writes ``conv_transpose(...) + other`` (``window.py``: each element the
        transposed convolution's sum, then the add, as eager rounds it). Where the branches
        of a residual block meet in the backward, the sum is then one kernel, not two, and
        the block input's gradient needs one buffer, not two — ``other``'s, written in place
        when it dies there (the memory plan's pairs). A batch of one sample stays apart (its
        kernel splits each product across the threads instead)."""
        nodes, roles = self.nodes, self.roles
        for i, n in enumerate(nodes):
            if n.prim is not CONV_TRANSPOSE or roles[i] != "own" or self.external[i] or \
                    len(self.succs[i]) != 1 or len(self.members[self.find(i)]) != 1:
                continue
            a = self.succs[i][0]
            add = nodes[a]
            if add.prim is not ADD or roles[a] != "ew" or len(self.members[self.find(a)]) != 1:
                continue
            xs = [x for x in add.inputs if isinstance(x, Value)]
            other = [x for x in xs if x is not n.out]
            shape = tuple(n.out.shape)
            made = self.producer.get(id(other[0])) if len(other) == 1 else None
            if made is not None and roles[made] in ("map", "leaf", "weak"):
                continue  # (a view or a constant: it would join the kernel; a buffer only)
            if len(xs) != 2 or len(other) != 1 or other[0].weak or \
                    tuple(other[0].shape) != shape or tuple(add.out.shape) != shape or \
                    other[0].dtype is not n.out.dtype or add.out.dtype is not n.out.dtype or \
                    n.out.dtype not in (float32, float64) or \
                    not all(isinstance(d, int) for d in shape) or shape[0] < 2:
                continue
            if self.try_merge(i, a, check=False):
                self.sealed.add(self.find(i))

    def _attention_views(self, i: int) -> None:
        """An attention node takes the copies making its operands when each is a strided
        view with contiguous rows of what it reads (``passes/views.py``: its kernel reads
        the view as it lies) — nanoGPT's heads, the output gradient's permute."""
        n = self.nodes[i]
        for k in ATTENTION_OPERANDS[n.prim]:
            x = n.inputs[k] if k < len(n.inputs) else None
            p = self.producer.get(id(x)) if isinstance(x, Value) else None
            if p is None or not self._feeds_only(p, i) or self._relabels(p):
                continue
            rp = self.find(p)
            if any(self.nodes[m].prim not in VIEWS for m in self.members[rp]):
                continue
            if row_view(x, lambda m, rp=rp: self.find(self.producer[id(m.out)]) == rp) \
                    is not None:
                self.try_merge(p, i, check=False)

    def _feeds_only(self, p: int, i: int) -> bool:
        """Whether node ``p``'s group only moves data and is read by node ``i`` alone,
        through ``p`` (every other value of it read inside it)."""
        rp = self.find(p)
        if rp == self.find(i) or self.external[p] or any(u != i for u in self.succs[p]) \
                or not self._moves_only(rp):
            return False
        return not any(self.external[m] or any(self.find(u) != rp for u in self.succs[m])
                       for m in self.members[rp] if m != p)

    def _relabels(self, p: int) -> bool:
        """Whether node ``p``'s group only relabels (reshapes: an alias, no copy)."""
        return all(traits(self.nodes[m].prim).relabels for m in self.members[self.find(p)])

    def _moves_only(self, r: int) -> bool:
        """Whether group ``r`` only moves data (index maps and movement nodes; no constant
        it makes, nothing computed)."""
        return all(self.nodes[m].prim.kind == "movement" and not _constant(self.nodes[m])
                   for m in self.members[r])

    # ------------------------------------------------------------ result
    def _schedule(self, roots, users, waiting) -> list:
        """The groups in an order that runs them correctly — topological, value-guard
        segments in order, then schedule order (each group where its earliest node was) —
        with a group moved later, to just before its first reader, when that keeps fewer
        bytes alive: the outputs it writes then live less long than the inputs it reads
        last live longer (a residual block's shortcut gradient, needed only where the two
        branches' gradients add, made there) — never across a value guard. A kernel that
        may fail (an index kernel on its data, a window kernel on its work buffer) is not
        moved past one computing a write-back (``writes``: an optimizer's update) that no
        other such kernel follows: the driver would then have to stage that write and copy
        it at the end of every call, as the transaction rule requires.

        Note: the order of kernels is also the order of a call's writes: the LLVM driver
        writes a bound input in place only where this order allows it
        (``driver._direct_writes``: after every kernel that may fail and every reader of
        the old value), and otherwise stages the new value and copies it at the end."""
        ready = [(self.segment[r], self.first[r], r) for r in roots if not waiting[r]]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, r = heapq.heappop(ready)
            order.append(r)
            for u in users[r]:
                waiting[u] -= 1
                if not waiting[u]:
                    heapq.heappush(ready, (self.segment[u], self.first[u], u))
        return self._sink(order, users)

    def _chain_collectives(self, roots, deps: dict) -> None:
        """Note [collectives keep their order]: every rank must start its collectives in
        one order (MPI matches them by it), so each collective's group depends on the
        previous collective's: no schedule puts a later start before an earlier one, or a
        wait before its start's predecessors. They are never sunk either (``_sink``): a
        start runs as soon as its input exists (its transfer overlaps what follows), and a
        wait where the trace waited (DDP: after the rest of the backward, before the
        optimizer reads the gradients)."""
        chain = sorted((self.first[r], r) for r in roots
                       if any(traits(self.nodes[m].prim).communicates
                              for m in self.members[r]))
        for (_, a), (_, b) in zip(chain, chain[1:]):
            deps[b].add(a)

    def _sink(self, order: list, users: dict) -> list:
        nodes, find = self.nodes, self.find
        readers: dict = {}  # value's producing node -> the groups reading it
        for r in order:
            for m in self.members[r]:
                for p in self.preds[m]:
                    if find(p) != r:
                        readers.setdefault(p, set()).add(r)
        pos = {r: k for k, r in enumerate(order)}
        writing = {find(j) for j in self.writes}
        failing = {r for r in order if any(_may_fail(nodes[m]) for m in self.members[r])}
        for r in list(reversed(order)):
            if not users[r] or any(traits(nodes[m].prim).communicates
                                   for m in self.members[r]):
                continue  # (Note [collectives keep their order])
            k, c = pos[r], min(pos[u] for u in users[r])
            if c - 1 <= k:
                continue
            made, held = self._made(r), self._held(r, readers, pos)
            if made <= held:
                if held:
                    continue
                # no input read here last: later, up to where one would be (none outlives
                # its other readers; what it makes lives less long, or is an output) — W7b's
                # 1x1 shortcut weight gradient then runs beside the other reader of the
                # activation it reads, and the kernel recomputing that activation with it
                c = min([c] + [max((pos[q] for q in readers[p] if q != r), default=k)
                               for p in self._inputs(r) if not self.external[p]])
            if c - 1 <= k or any(self.segment[order[j]] != self.segment[r]
                                 for j in range(k + 1, c)):
                continue
            if r in failing:  # (past a write-back no other such kernel follows anyway)
                last = max((pos[q] for q in failing if q != r), default=-1)
                if any(order[j] in writing for j in range(max(k, last) + 1, c)):
                    continue
            order[k:c] = order[k + 1:c] + [r]
            for j in range(k, c):
                pos[order[j]] = j
        return self._hoist(order, readers, writing, failing)

    def _inputs(self, r: int) -> set:
        """The nodes outside group ``r`` whose values it reads."""
        return {p for m in self.members[r] for p in self.preds[m] if self.find(p) != r}

    def _made(self, r: int) -> int:
        """The bytes group ``r`` writes for other groups (not the graph's outputs)."""
        return sum(_bytes(self.nodes[m].out) for m in self.members[r] if not self.external[m]
                   and any(self.find(u) != r for u in self.succs[m]))

    def _held(self, r: int, readers: dict, pos: dict) -> int:
        """The bytes of the values group ``r`` reads last, at its place in the order."""
        k = pos[r]
        return sum(_bytes(self.nodes[p].out) for p in self._inputs(r)
                   if not self.external[p] and max(pos[q] for q in readers[p]) == k)

    def _hoist(self, order: list, readers: dict, writing: set, failing: set) -> list:
        """A group moved earlier, to just after the last of what it reads and of the other
        readers of the values it reads last, when those values hold more bytes than it
        writes: they die sooner than its outputs are born (W7b's 1x1 shortcut convolution,
        the block input's last reader, run beside the block's first convolution, not after
        its batch norm) — never across a value guard, and never a write-back moved before
        a kernel that may fail (``_schedule``'s rule)."""
        nodes, find = self.nodes, self.find
        pos = {r: k for k, r in enumerate(order)}
        for r in list(order):
            if any(traits(nodes[m].prim).communicates for m in self.members[r]):
                continue  # (Note [collectives keep their order])
            k = pos[r]
            ins = self._inputs(r)
            last = [p for p in ins if not self.external[p]
                    and max(pos[q] for q in readers[p]) == k]
            if sum(_bytes(nodes[p].out) for p in last) <= self._made(r):
                continue
            t = 1 + max([pos[find(p)] for p in ins] +
                        [pos[q] for p in last for q in readers[p] if q != r], default=-1)
            if t >= k or any(self.segment[order[j]] != self.segment[r] for j in range(t, k)):
                continue
            if r in writing and any(order[j] in failing for j in range(t, k)):
                continue
            order[t:k + 1] = [r] + order[t:k]
            for j in range(t, k + 1):
                pos[order[j]] = j
        return order

    def groups(self) -> list:
        g, nodes, roles = self.g, self.nodes, self.roles
        roots = list(self.members)
        deps = {r: set() for r in roots}
        for r in roots:
            for m in self.members[r]:
                for p in self.preds[m]:
                    rp = self.find(p)
                    if rp != r:
                        deps[r].add(rp)
        self._chain_collectives(roots, deps)
        users = {r: [] for r in roots}
        for r, ds in deps.items():
            for d in ds:
                users[d].append(r)
        waiting = {r: len(ds) for r, ds in deps.items()}
        order = self._schedule(roots, users, waiting)
        assert len(order) == len(roots), "fusion: the groups form a cycle"
        out_ids = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
        result = []
        for r in order:
            idx = sorted(self.members[r])
            inside = {id(nodes[i].out) for i in idx}
            inputs, seen = [], set()
            for i in idx:
                for v in data_inputs(nodes[i]):
                    if id(v) not in inside and id(v) not in seen:
                        seen.add(id(v))
                        inputs.append(v)
            outputs = [nodes[i].out for i in idx
                       if id(nodes[i].out) in out_ids
                       or any(self.find(u) != r for u in self.succs[i])]
            present = {roles[i] for i in idx}
            if "own" in present and len(idx) > 1:  # a chain of movements (7), or an
                last = nodes[idx[-1]]  #                 attention node with its views
                kind = GroupKind.WINDOW if last.prim in ATTENTION_OPERANDS or \
                    nodes[idx[0]].prim is CONV_TRANSPOSE else GroupKind.MOVEMENT
                shape, axes = last.out.shape, ()
            elif present & {"ew", "reduce", "map", "leaf"}:
                kind, shape, axes = self.loop_nest(set(idx))
            elif present == {"weak"}:
                kind, shape, axes = GroupKind.SCALAR, (), ()
            else:
                n = nodes[idx[-1]]
                kind, shape, axes = _OWN_KIND[n.prim.kind], n.out.shape, ()
            result.append(FusionGroup(kind, idx, inputs, outputs, tuple(shape), axes,
                                      self.segment[idx[0]]))
        return result


def summed_gradient(g: Graph, grp) -> tuple | None:
    """For a window group of rule (8) — a ``conv_transpose`` node and the add reading it —
    ``(conv_transpose node, add node, the add's other operand)``; else None."""
    if len(grp.nodes) != 2:
        return None
    n, add = g.nodes[grp.nodes[0]], g.nodes[grp.nodes[1]]
    if n.prim is not CONV_TRANSPOSE or add.prim is not ADD or \
            [x for x in add.inputs if x is n.out] != [n.out] or len(add.inputs) != 2:
        return None
    other = next(x for x in add.inputs if x is not n.out)
    return n, add, other


def fuse(g: Graph, writes=()) -> list[FusionGroup]:
    """Partition ``g``'s nodes into fusion groups (kernels), in an order that runs them
    correctly (topological, value-guard segments in order). The graph is not modified.
    ``writes``: the nodes whose values are written into bound inputs in place
    (``pipeline.inplace_writes``), which no kernel that may fail is moved past.

    >>> cf = compiler.compile(lambda x: F.softmax(x, -1)); cf(x)
    >>> [grp.kind for grp in fuse(cf.variants[0].trace.graph)]
    ['reduce', 'reduce']
    """
    p = _Partition(g, writes)
    p.absorb_sums()  # (first: the add would otherwise join a loop kernel reading it)
    p.merge_loops()
    p.place_leaves_and_weak()
    p.chain_movements()
    return p.groups()


def format_groups(groups: list) -> str:
    """One line per group: ``group 3 [elementwise 32x32] nodes 12,13,14 in %4 %7 out %15``."""
    return "\n".join(f"group {k} {grp.describe()}" for k, grp in enumerate(groups))


def verify_groups(g: Graph, groups: list) -> None:
    """Check a partition: every node in exactly one group, node indices in schedule order,
    groups in a topological order with their value-guard segments in order, no group across
    a guard's position, inputs exactly the outside values read, outputs exactly the values
    used outside the group (another group, a graph output, a value guard), 'own' nodes
    alone, and each elementwise or reduce group one legal loop nest with the recorded shape
    and axes. Raises :class:`compiler.ir.VerifyError`."""
    where: dict[int, int] = {}
    for k, grp in enumerate(groups):
        if list(grp.nodes) != sorted(set(grp.nodes)) or not grp.nodes:
            raise VerifyError(f"group {k}: node indices {grp.nodes} not in schedule order")
        for i in grp.nodes:
            if not 0 <= i < len(g.nodes):
                raise VerifyError(f"group {k}: no node {i}")
            if i in where:
                raise VerifyError(f"node {i} is in groups {where[i]} and {k}")
            where[i] = k
    missing = sorted(set(range(len(g.nodes))) - set(where))
    if missing:
        raise VerifyError(f"nodes {missing[:10]} are in no group")
    producer = {id(n.out): i for i, n in enumerate(g.nodes)}
    cuts = _cuts(g)
    used_outside = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
    for k, grp in enumerate(groups):
        segs = {sum(1 for c in cuts if c <= i) for i in grp.nodes}
        if len(segs) > 1:
            raise VerifyError(f"group {k} spans a value guard (nodes {grp.nodes}, guard "
                              f"positions {cuts})")
        if k and min(segs) < groups[k - 1].segment or grp.segment != min(segs):
            raise VerifyError(f"group {k} runs before a value guard it must follow")
        reads, seen = [], set()
        for i in grp.nodes:
            for v in data_inputs(g.nodes[i]):
                j = producer.get(id(v))
                if j is not None and where[j] == k:
                    continue
                if j is not None:
                    if where[j] > k:
                        raise VerifyError(f"group {k} reads {v!r} from the later group "
                                          f"{where[j]}")
                    used_outside.add(id(v))
                if id(v) not in seen:
                    seen.add(id(v))
                    reads.append(v)
        if [id(v) for v in grp.inputs] != [id(v) for v in reads]:
            raise VerifyError(f"group {k}: inputs {grp.inputs} but it reads {reads}")
    for k, grp in enumerate(groups):
        expected = [g.nodes[i].out for i in grp.nodes if id(g.nodes[i].out) in used_outside]
        if [id(v) for v in grp.outputs] != [id(v) for v in expected]:
            raise VerifyError(f"group {k}: outputs {grp.outputs} but {expected} are used "
                              f"outside it")
    part = _Partition(g)
    for k, grp in enumerate(groups):
        roles = {part.roles[i] for i in grp.nodes}
        if "own" in roles and len(grp.nodes) > 1 and not (
                grp.kind == "movement" and len(grp.outputs) == 1 and
                all(g.nodes[i].prim.kind == "movement" for i in grp.nodes)) and not (
                grp.kind == "window" and len(grp.outputs) == 1 and
                g.nodes[grp.nodes[-1]].prim in ATTENTION_OPERANDS and
                all(g.nodes[i].prim in VIEWS for i in grp.nodes[:-1])) and not (
                grp.kind == "window" and summed_gradient(g, grp) is not None):
            raise VerifyError(f"group {k}: a {g.nodes[grp.nodes[0]].prim.name} node shares "
                              f"a group (matmul, index ops, iota and random are groups of "
                              f"their own; permute, pad, concat and stepped slices only "
                              f"with the movements that feed them alone, attention with "
                              f"the views of its operands, a convolution's input gradient "
                              f"with the add that alone reads it)")
        if roles != {"weak"} and any(part.roles[i] == "weak" and p in grp.nodes
                                     for i in grp.nodes for p in part.preds[i]):
            raise VerifyError(f"group {k}: a scalar node reads a value computed inside the "
                              f"group (it must be computable at the kernel's entry)")
        if grp.kind in ("elementwise", "reduce"):
            nest = part.loop_nest(set(grp.nodes))
            if nest != (grp.kind, grp.shape, grp.axes):
                raise VerifyError(f"group {k} [{grp.kind} {grp.shape} {grp.axes}] is not one "
                                  f"loop nest: {nest or 'its nodes cannot share one'}")


__all__ = ["FusionGroup", "fuse", "format_groups", "verify_groups", "data_inputs",
           "summed_gradient"]
