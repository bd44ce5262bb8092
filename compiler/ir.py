"""The static IR: a :class:`Graph` of :class:`Node` s over typed :class:`Value` s.

A node applies one primitive of dyngrad's op table to values (or literal numbers) with fixed
parameters and produces one value. Graph inputs are values with no producer; a value may
also be a constant (an ndarray baked in at trace time) or a *scalar input* — a Python number
read at call time (an optimizer hyperparameter) and passed to ops as a weak scalar, exactly as
eager passes a Python float. Besides computing, a graph carries *value guards*: predicates
on computed values that must hold for the trace to be valid.

    %3:f32[32,32] = matmul %0 %1 ta=False tb=True
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyngrad.dtypes import DType
from dyngrad.ops.primitive import REGISTRY, AbstractValue, Primitive


def c_strides(shape) -> tuple:
    """Row-major (C) strides of ``shape``, in elements."""
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


class Value:
    """An SSA value: shape and dtype, produced by at most one node."""

    __slots__ = ("id", "shape", "dtype", "producer", "const", "name", "weak")

    def __init__(self, id: int, shape: tuple, dtype: DType | None, name: str = "",
                 const: np.ndarray | None = None, weak: bool = False) -> None:
        self.id, self.shape, self.dtype, self.name = id, tuple(shape), dtype, name
        self.producer: Node | None = None
        self.const = const
        self.weak = weak  # a Python number (scalar input): passed to ops as a weak literal

    def aval(self) -> AbstractValue:
        return AbstractValue(self.shape, self.dtype)

    def type_str(self) -> str:
        if self.weak:
            return "scalar"
        short = {"float32": "f32", "float64": "f64", "int64": "i64", "bool": "bool"}
        return f"{short.get(self.dtype.name, self.dtype.name)}[{','.join(map(str, self.shape))}]"

    def __repr__(self) -> str:
        return f"%{self.id}"


@dataclass(eq=False)
class Node:
    """``out = prim(*inputs, **params)``; inputs are Values or literal Python numbers."""

    prim: Primitive
    inputs: list
    params: dict
    out: Value

    def value_inputs(self) -> list:
        return [v for v in self.inputs if isinstance(v, Value)]


@dataclass(eq=False)
class ValueGuard:
    """``value`` (a 0-d or small value) must equal ``expected`` when the graph runs; ``kind``
    says what Python read it ('bool', 'item', 'int', ...) and ``where`` the source line."""

    value: Value
    expected: Any
    kind: str
    where: str = ""
    after: int = 0  # number of nodes that precede it in the schedule


@dataclass(eq=False)
class Graph:
    """Nodes in execution order; ``inputs`` are external tensors, ``scalars`` Python-number
    inputs, ``outputs`` the values the runtime needs back."""

    inputs: list = field(default_factory=list)
    scalars: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    guards: list = field(default_factory=list)
    _next: int = 0
    # id of a value computed again for late readers -> id of the value it copies (see
    # compiler/passes/remat.py; fusion keeps such copies from running early)
    recomputed: dict = field(default_factory=dict)
    # id of an index value narrowed to int32 -> its dtype as eager computes it (see
    # compiler/passes/narrow.py; memory.eager_peak_bytes counts it at that width)
    narrowed: dict = field(default_factory=dict)
    # ids of the values the tracer recorded once the call's own backward() began (the
    # backward, what follows it: clipping, the update); see late_from
    late: set = field(default_factory=set)

    def new_value(self, shape, dtype, name: str = "", const=None, weak: bool = False) -> Value:
        v = Value(self._next, shape, dtype, name, const, weak)
        self._next += 1
        return v

    def add_input(self, shape, dtype, name: str = "") -> Value:
        v = self.new_value(shape, dtype, name)
        self.inputs.append(v)
        return v

    def add_scalar(self, name: str) -> Value:
        v = self.new_value((), None, name, weak=True)
        self.scalars.append(v)
        return v

    def add_const(self, array: np.ndarray, name: str = "") -> Value:
        from dyngrad.dtypes import _BY_NP
        return self.new_value(array.shape, _BY_NP[array.dtype], name, const=array)

    def add_node(self, prim: Primitive, inputs: list, params: dict, shape, dtype) -> Value:
        out = self.new_value(shape, dtype)
        node = Node(prim, list(inputs), dict(params), out)
        out.producer = node
        self.nodes.append(node)
        return out

    def add_guard(self, value: Value, expected, kind: str, where: str = "") -> ValueGuard:
        g = ValueGuard(value, expected, kind, where, after=len(self.nodes))
        self.guards.append(g)
        return g

    def late_from(self) -> int:
        """The position of the first node computed once the call's own backward() began
        (``len(nodes)`` when none was), Python-number arithmetic aside (scalar nodes the
        passes may move to the front): passes keep the trace's order of tensor nodes and put
        a node they make where the one it replaces was, so every tensor node from there on
        is the backward's or after it — also the ones a pass made (a product reading a
        transposed operand, a copy recomputed for late readers). Fusion keeps such nodes out
        of the forward's kernels, where they would be computed early and held until the
        backward reads them."""
        return next((k for k, n in enumerate(self.nodes)
                     if n.out.id in self.late and not n.out.weak), len(self.nodes))

    def __str__(self) -> str:
        return format_graph(self)


class Uses:
    """Who reads each value of ``g``: nodes (each once, however many of its inputs the value
    is), the graph's outputs and its value guards (``pinned``) — for passes that rewrite a
    value only its own readers see."""

    def __init__(self, g: Graph) -> None:
        self.by: dict[int, list] = {}
        for n in g.nodes:
            for x in {id(x): x for x in n.inputs if isinstance(x, Value)}.values():
                self.by.setdefault(id(x), []).append(n)
        self.pinned = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}

    def of(self, v) -> list:
        return self.by.get(id(v), [])

    def only(self, v, nodes: list) -> bool:
        """Whether ``v`` is read by ``nodes`` alone (and is no output nor guarded)."""
        readers = self.of(v)
        return id(v) not in self.pinned and all(any(r is n for n in nodes) for r in readers)


def renumber_guards(guards: list, old_nodes: list, kept: list) -> None:
    """A pass kept ``kept`` of ``old_nodes``: each value guard of ``guards`` now runs after
    as many nodes as the kept ones that preceded it (its ``after``)."""
    old_index = {id(n): i for i, n in enumerate(old_nodes)}
    positions = sorted(old_index[id(n)] for n in kept)
    for gd in guards:
        gd.after = bisect.bisect_left(positions, gd.after)


def _fmt_input(v) -> str:
    return repr(v) if isinstance(v, Value) else repr(v)


def _fmt_param(v) -> str:
    if isinstance(v, DType):
        return v.name
    if isinstance(v, tuple) and len(v) > 8:
        return "(" + ", ".join(map(str, v[:8])) + ", …)"
    return str(v)


def format_graph(g: Graph) -> str:
    """One line per node, like a jaxpr."""
    lines = []
    ins = ", ".join(f"{v!r}:{v.type_str()}" + (f" ({v.name})" if v.name else "")
                    for v in g.inputs + g.scalars)
    lines.append(f"graph({ins}) {{")
    consts = {id(v): v for n in g.nodes for v in n.inputs
              if isinstance(v, Value) and v.const is not None}
    for v in consts.values():
        body = np.array2string(v.const, threshold=6, separator=",").replace("\n", "")
        lines.append(f"  {v!r}:{v.type_str()} = const {body}")
    guards = sorted(g.guards, key=lambda gd: gd.after)
    gi = 0
    for i, n in enumerate(g.nodes):
        while gi < len(guards) and guards[gi].after <= i:
            gd = guards[gi]
            lines.append(f"  guard {gd.value!r} == {gd.expected!r}  # {gd.kind} {gd.where}")
            gi += 1
        args = " ".join(_fmt_input(v) for v in n.inputs)
        params = " ".join(f"{k}={_fmt_param(p)}" for k, p in n.params.items())
        lines.append(f"  {n.out!r}:{n.out.type_str()} = {n.prim.name} {args}"
                     + (f" {params}" if params else ""))
    for gd in guards[gi:]:
        lines.append(f"  guard {gd.value!r} == {gd.expected!r}  # {gd.kind} {gd.where}")
    lines.append("  return " + ", ".join(repr(v) for v in g.outputs))
    lines.append("}")
    return "\n".join(lines)


class VerifyError(RuntimeError):
    """The IR broke an invariant (a bug in a pass or in the tracer)."""


def verify(g: Graph) -> None:
    """Check SSA form, that every value is defined before use, that each node's shape and dtype
    agree with its primitive's shape rule, and that guards and outputs refer to defined
    values. Run after every pass."""
    defined = {id(v) for v in g.inputs + g.scalars}
    registered = {id(p) for p in REGISTRY.values()}
    for i, n in enumerate(g.nodes):
        if id(n.prim) not in registered:
            raise VerifyError(f"node {i}: unknown primitive {n.prim!r}")
        if n.out.weak:  # Python-number arithmetic on scalar inputs (done in float64)
            for v in n.inputs:
                if isinstance(v, Value) and not v.weak and v.shape != ():
                    raise VerifyError(f"node {i} ({n.prim.name}): scalar op on tensor {v!r}")
                if isinstance(v, Value) and v.const is None and id(v) not in defined:
                    raise VerifyError(f"node {i} ({n.prim.name}): input {v!r} used before "
                                      f"it is defined")
            defined.add(id(n.out))
            continue
        avals = []
        for v in n.inputs:
            if isinstance(v, Value):
                if v.const is None and id(v) not in defined:
                    raise VerifyError(f"node {i} ({n.prim.name}): input {v!r} used before it is "
                                      f"defined")
                avals.append(v.aval() if not v.weak else 1.0)
            elif isinstance(v, (bool, int, float)):
                avals.append(v)
            else:
                raise VerifyError(f"node {i} ({n.prim.name}): bad input {v!r}")
        try:
            shape, dtype = n.prim.shape(*avals, **n.params)
        except Exception as exc:
            raise VerifyError(f"node {i} ({n.prim.name}): shape rule rejects inputs: "
                              f"{exc}") from None
        if tuple(shape) != n.out.shape or dtype is not n.out.dtype:
            raise VerifyError(f"node {i} ({n.prim.name}): output {n.out!r} is "
                              f"{n.out.type_str()} but the shape rule gives "
                              f"{dtype.name}{list(shape)}")
        if n.out.producer is not n:
            raise VerifyError(f"node {i}: output {n.out!r} has another producer")
        if id(n.out) in defined:
            raise VerifyError(f"node {i}: {n.out!r} defined twice")
        defined.add(id(n.out))
    for gd in g.guards:
        if id(gd.value) not in defined and gd.value.const is None:
            raise VerifyError(f"guard on undefined value {gd.value!r}")
    for v in g.outputs:
        if id(v) not in defined and v.const is None:
            raise VerifyError(f"output {v!r} is not defined")


def to_networkx(g: Graph):
    """The dataflow graph as a networkx DiGraph (nodes: values; edge attribute: the op)."""
    import networkx as nx
    G = nx.DiGraph()
    for v in g.inputs + g.scalars:
        G.add_node(v.id, label=f"{v!r} {v.name or 'input'}", kind="input")
    for n in g.nodes:
        G.add_node(n.out.id, label=f"{n.out!r} {n.prim.name}", kind=n.prim.kind,
                   type=n.out.type_str())
        for v in n.value_inputs():
            if v.const is not None and v.id not in G:
                G.add_node(v.id, label=f"{v!r} const", kind="const")
            G.add_edge(v.id, n.out.id)
    for k, v in enumerate(g.outputs):
        G.add_node(f"out{k}", label=f"output {k}", kind="output")
        G.add_edge(v.id, f"out{k}")
    return G


_COLORS = {"input": "lightblue", "const": "lightgrey", "output": "gold",
           "elementwise": "palegreen", "reduce": "lightsalmon", "movement": "khaki",
           "index": "plum", "matmul": "tomato", "creation": "white", "random": "orchid"}


_GROUP_COLORS = ("#e8f4ea", "#fdebd0", "#e8eaf6", "#fce4ec", "#e0f7fa", "#f9fbe7",
                 "#ede7f6", "#fff3e0")  # cluster backgrounds, in turn


def to_dot(g: Graph, title: str = "graph", groups: list | None = None) -> str:
    """Graphviz DOT text of :func:`to_networkx`, nodes coloured by primitive kind; with
    ``groups`` (``compiler.passes.fusion.fuse(g)``), each fusion group — one kernel — is a
    cluster of its own colour, labelled with its number, kind and iteration space."""
    G = to_networkx(g)
    lines = [f'digraph "{title}" {{', "  rankdir=TB; node [shape=box, style=filled];"]
    member = {}
    for k, grp in enumerate(groups or ()):
        for i in grp.nodes:
            member[g.nodes[i].out.id] = k

    def node_line(n, attrs) -> str:
        color = _COLORS.get(attrs.get("kind"), "white")
        label = attrs.get("label", str(n)).replace('"', "'")
        return f'  "{n}" [label="{label}", fillcolor="{color}"];'

    for k, grp in enumerate(groups or ()):
        space = "x".join(map(str, grp.shape)) or "()"
        lines.append(f'  subgraph cluster_{k} {{ label="kernel {k}: {grp.kind} {space}"; '
                     f'style=filled; color="{_GROUP_COLORS[k % len(_GROUP_COLORS)]}";')
        lines += ["  " + node_line(n, attrs) for n, attrs in G.nodes(data=True)
                  if member.get(n) == k]
        lines.append("  }")
    for n, attrs in G.nodes(data=True):
        if n not in member:
            lines.append(node_line(n, attrs))
    for a, b in G.edges():
        lines.append(f'  "{a}" -> "{b}";')
    lines.append("}")
    return "\n".join(lines)
