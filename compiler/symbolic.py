"""Symbolic dimensions: one variant for every size of a dimension (a batch size).

When a call misses only because one argument dimension changed, the new trace is compared
with the earlier ones node by node. If three traces at three sizes have the same structure and
every size that differs in a parameter is one affine function ``a·d + b`` of that dimension
``d`` (fitted from two pairs of traces, which must agree — two points alone cannot tell a line
from ``d·d`` or ``d // 2``), they are replaced by a single variant whose parameters are
templates;
the plan for a concrete size is instantiated on first use and cached ("compute the plan per
concrete size, cheap"). Anything else that differs — a constant, a literal number, a value
guard, a different op sequence (the function read the size into Python and branched on it) —
means the dimension is not symbolic, and the variants stay separate. Sizes 0 and 1 are never
generalised (broadcasting and empty tensors behave differently there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dyngrad.dtypes import DType
from dyngrad.ops.primitive import AbstractValue

from .ir import Graph, Value


@dataclass(frozen=True)
class Affine:
    """A size ``a·d + b`` of the symbolic dimension ``d``."""

    a: int
    b: int

    def at(self, d: int) -> int:
        return self.a * d + self.b

    def __repr__(self) -> str:
        return f"{self.a}·d{'+' if self.b >= 0 else '-'}{abs(self.b)}" if self.b else \
            f"{self.a}·d"


class NoFit(Exception):
    """The two traces differ in a way that is not an affine function of the dimension."""


def fit(x1, x2, d1: int, d2: int):
    """The template of a value seen as ``x1`` at size d1 and ``x2`` at size d2."""
    if isinstance(x1, bool) or isinstance(x2, bool):
        if x1 is not x2:
            raise NoFit
        return x1
    if isinstance(x1, (int, np.integer)) and isinstance(x2, (int, np.integer)):
        x1, x2 = int(x1), int(x2)
        if x1 == x2:
            return x1
        if (x2 - x1) % (d2 - d1):
            raise NoFit
        a = (x2 - x1) // (d2 - d1)
        return Affine(a, x1 - a * d1)
    if type(x1) is not type(x2):
        raise NoFit
    if isinstance(x1, (tuple, list)):
        if len(x1) != len(x2):
            raise NoFit
        return type(x1)(fit(a, b, d1, d2) for a, b in zip(x1, x2))
    if isinstance(x1, dict):
        if x1.keys() != x2.keys():
            raise NoFit
        return {k: fit(x1[k], x2[k], d1, d2) for k in x1}
    if isinstance(x1, np.ndarray):
        if x1.shape != x2.shape or x1.dtype != x2.dtype or not np.array_equal(x1, x2):
            raise NoFit
        return x1
    if isinstance(x1, DType):
        if x1 is not x2:
            raise NoFit
        return x1
    if isinstance(x1, float) and x1 != x1 and x2 != x2:
        return x1
    if x1 != x2:
        raise NoFit
    return x1


def _same_literal(a, b) -> bool:
    if type(a) is not type(b):
        return False
    return a == b or (isinstance(a, float) and a != a and b != b)


def same_template(a, b) -> bool:
    """Whether two templates (from different pairs of sizes) are the same function of d."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and \
            all(same_template(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and \
            all(same_template(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a == b or (a != a and b != b))


def instantiate(x, d: int):
    """Replace every :class:`Affine` in a template by its size at ``d``."""
    if isinstance(x, Affine):
        return x.at(d)
    if isinstance(x, tuple):
        return tuple(instantiate(e, d) for e in x)
    if isinstance(x, list):
        return [instantiate(e, d) for e in x]
    if isinstance(x, dict):
        return {k: instantiate(e, d) for k, e in x.items()}
    return x


def generalize(g1: Graph, g2: Graph, d1: int, d2: int) -> list | None:
    """Per node of ``g2``, its parameter template — or None when the graphs do not differ
    only affinely in the dimension."""
    if (len(g1.nodes), len(g1.inputs), len(g1.scalars), len(g1.outputs), len(g1.guards)) != \
            (len(g2.nodes), len(g2.inputs), len(g2.scalars), len(g2.outputs), len(g2.guards)):
        return None
    pair: dict[int, int] = {}
    for a, b in zip(g1.inputs + g1.scalars, g2.inputs + g2.scalars):
        pair[id(a)] = id(b)
    try:
        templates = []
        for n1, n2 in zip(g1.nodes, g2.nodes):
            if n1.prim is not n2.prim or len(n1.inputs) != len(n2.inputs):
                return None
            for x1, x2 in zip(n1.inputs, n2.inputs):
                if isinstance(x1, Value) != isinstance(x2, Value):
                    return None
                if isinstance(x1, Value):
                    if x1.const is not None or x2.const is not None:
                        if x1.const is None or x2.const is None:
                            return None
                        fit(x1.const, x2.const, d1, d2)
                    elif pair.get(id(x1)) != id(x2):
                        return None
                elif not _same_literal(x1, x2):  # numbers given to ops never vary: a
                    return None                    # size read into Python made them
            templates.append(fit(n1.params, n2.params, d1, d2))
            pair[id(n1.out)] = id(n2.out)
        for v1, v2 in zip(g1.outputs, g2.outputs):
            if v1.const is not None or v2.const is not None:
                fit(v1.const, v2.const, d1, d2)
            elif pair.get(id(v1)) != id(v2):
                return None
        for a, b in zip(g1.guards, g2.guards):
            if pair.get(id(a.value)) != id(b.value) or a.kind != b.kind:
                return None
            fit(np.asarray(a.expected), np.asarray(b.expected), d1, d2)
    except NoFit:
        return None
    return templates


@dataclass
class SymbolicDims:
    """Which argument dims follow the symbolic size: ``base`` = (argument, dim) defines d;
    ``dims[i]`` maps dims of argument i to their Affine."""

    base: tuple
    dims: dict

    def size(self, flat) -> int:
        i, k = self.base
        return flat[i]._data.shape[k]


def arg_shapes(flat: list) -> list:
    """(shape, dtype) of each tensor argument, None for other leaves."""
    from dyngrad.tensor import Tensor
    return [(x._data.shape, x._data.dtype) if isinstance(x, Tensor) else None for x in flat]


def arg_dims(meta1: list, meta2: list) -> SymbolicDims | None:
    """The symbolic dims between two calls' arguments (from :func:`arg_shapes`), if they
    differ only in sizes ≥ 2 that are affine in one of them."""
    if len(meta1) != len(meta2):
        return None
    base = None
    diffs = []
    for i, (a, b) in enumerate(zip(meta1, meta2)):
        if (a is None) != (b is None):
            return None
        if a is None:
            continue
        (sa, da), (sb, db) = a, b
        if len(sa) != len(sb) or da != db:
            return None
        for k, (s1, s2) in enumerate(zip(sa, sb)):
            if s1 != s2:
                if min(s1, s2) < 2:
                    return None
                diffs.append((i, k, s1, s2))
                if base is None:
                    base = (i, k, s1, s2)
    if base is None:
        return None
    _, _, d1, d2 = base
    dims: dict = {}
    for i, k, s1, s2 in diffs:
        try:
            aff = fit(s1, s2, d1, d2)
        except NoFit:
            return None
        dims.setdefault(i, {})[k] = aff
    return SymbolicDims((base[0], base[1]), dims)


def concrete_graph(g: Graph, templates: list, size: int, input_shapes: list) -> Graph:
    """A copy of ``g`` at symbolic size ``size``: node parameters instantiated from their
    ``templates`` and every shape recomputed by the primitives' shape rules from
    ``input_shapes`` (the shapes of ``g.inputs`` in the call at hand). Values keep their ids,
    so node indices, in-place maps and output positions mean the same in the copy. For a
    backend that compiles per concrete size (the LLVM backend)."""
    from .ir import Node, ValueGuard
    shapes = shapes_at(g, templates, size, input_shapes)
    new: dict[int, Value] = {}
    shared = {id(v) for v in g.scalars}

    def value(v):
        if not isinstance(v, Value):
            return v
        if id(v) in shared or v.const is not None:
            return v  # Python-number inputs and constants do not depend on the size
        if id(v) not in new:
            new[id(v)] = Value(v.id, shapes.get(v.id, v.shape), v.dtype, v.name,
                               weak=v.weak)
        return new[id(v)]

    out = Graph(inputs=[value(v) for v in g.inputs], scalars=list(g.scalars), _next=g._next,
                recomputed=dict(g.recomputed), narrowed=dict(g.narrowed),
                late=set(g.late))  # (the same value ids)
    for n, t in zip(g.nodes, templates):
        node = Node(n.prim, [value(x) for x in n.inputs], dict(instantiate(t, size)),
                    value(n.out))
        node.out.producer = node
        out.nodes.append(node)
    out.outputs = [value(v) for v in g.outputs]
    out.guards = [ValueGuard(value(gd.value), gd.expected, gd.kind, gd.where, gd.after)
                  for gd in g.guards]
    return out


def input_templates(g1: Graph, g2: Graph, d1: int, d2: int) -> list:
    """Per input of ``g2``, its shape's template between two traces at sizes d1 and d2
    (:func:`fit`: each dim an int or an :class:`Affine`), or None when it does not fit."""
    out = []
    for a, b in zip(g1.inputs, g2.inputs, strict=True):
        try:
            out.append(fit(tuple(a.shape), tuple(b.shape), d1, d2))
        except NoFit:
            out.append(None)
    return out


def symbolic_graph(g: Graph, templates: list, d: int, input_shapes: list,
                   shape_templates: list) -> Graph:
    """:func:`concrete_graph` at size ``d`` with the dimension a ``compiler.dims.Dim``: the
    node parameters' affine sizes are Dims, and so is each input dim whose template
    (``shape_templates``, from :func:`input_templates`) is affine — where the template
    gives this call's shape (``input_shapes``); any other input keeps its numbers. Every
    Dim equals the size it stands for at ``d``, so the graph is ``d``'s; shapes follow by
    the primitives' rules."""
    from . import dims as D
    x = D.dim(d)
    shapes = []
    for s, t in zip(input_shapes, shape_templates, strict=True):
        s = tuple(s)
        if t is not None and len(t) == len(s) and instantiate(t, d) == s:
            s = tuple(instantiate(t, x))
        shapes.append(s)
    return concrete_graph(g, templates, x, shapes)


def shapes_at(g: Graph, templates: list, size: int, input_shapes: list) -> dict:
    """Every value's shape at symbolic size ``size``: ``input_shapes`` are the shapes of
    ``g.inputs`` at that size (the arrays of the call at hand), ``templates`` the node
    parameter templates (:func:`compiler.symbolic.generalize`); each node's shape follows from
    its primitive's own shape rule."""
    if len(input_shapes) != len(g.inputs) or len(templates) != len(g.nodes):
        raise ValueError(f"shapes_at: {len(input_shapes)} input shapes and {len(templates)} "
                         f"templates for a graph of {len(g.inputs)} inputs and "
                         f"{len(g.nodes)} nodes")
    shapes = {v.id: tuple(s) for v, s in zip(g.inputs, input_shapes)}

    def aval(x):
        if not isinstance(x, Value):
            return x
        if x.weak:
            return 1.0
        return AbstractValue(shapes.get(x.id, x.shape), x.dtype)

    for n, t in zip(g.nodes, templates):
        if n.out.weak:
            continue
        shape, _ = n.prim.shape(*(aval(x) for x in n.inputs), **instantiate(t, size))
        shapes[n.out.id] = tuple(shape)
    return shapes
