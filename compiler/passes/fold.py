"""Constant folding: nodes whose inputs are all known at trace time (constants and literals)
are evaluated once, with the primitive's own impl, and become constants — except where the
result would be large (kept as a node to save memory) and creation ops, which stay nodes so
that their sizes can follow a symbolic dimension."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Value, renumber_guards
from ..prims import traits

MAX_FOLD_ELEMENTS = 1 << 16


def fold(g: Graph) -> Graph:
    replace: dict[int, Value] = {}
    kept = []
    for n in g.nodes:
        n.inputs = [replace.get(id(x), x) if isinstance(x, Value) else x for x in n.inputs]
        known = all(not isinstance(x, Value) or x.const is not None for x in n.inputs)
        # creation ops (zeros, arange, ...) stay nodes: their shapes may follow a symbolic
        # dimension, which a baked constant could not
        if known and not n.out.weak and n.prim.kind not in ("random", "creation") \
                and not traits(n.prim).communicates \
                and int(np.prod(n.out.shape)) <= MAX_FOLD_ELEMENTS:
            args = [x.const if isinstance(x, Value) else x for x in n.inputs]
            arr = np.asarray(n.prim.impl(*args, **n.params))
            c = g.add_const(np.array(arr, order="C"))  # (ascontiguousarray makes 0-d 1-d)
            replace[id(n.out)] = c
            continue
        kept.append(n)
    g.outputs = [replace.get(id(v), v) for v in g.outputs]
    for gd in g.guards:
        gd.value = replace.get(id(gd.value), gd.value)
    renumber_guards(g.guards, g.nodes, kept)
    g.nodes = kept
    return g
