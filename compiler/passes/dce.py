"""Dead-code elimination: keep only nodes that outputs or value guards depend on."""

from __future__ import annotations

from ..ir import Graph, Value


def dce(g: Graph) -> Graph:
    live = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
    kept = []
    for n in reversed(g.nodes):
        if id(n.out) in live:
            kept.append(n)
            for x in n.inputs:
                if isinstance(x, Value):
                    live.add(id(x))
    kept.reverse()
    position = {id(n): i for i, n in enumerate(kept)}
    old_index = {id(n): i for i, n in enumerate(g.nodes)}
    for gd in g.guards:  # a guard runs before the first kept node it preceded
        gd.after = sum(1 for n in kept if old_index[id(n)] < gd.after)
    g.nodes = kept
    del position
    return g
