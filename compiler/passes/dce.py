"""Dead-code elimination: keep only nodes that outputs or value guards depend on, and the
collectives (every rank must run them)."""

from __future__ import annotations

from ..ir import Graph, Value, renumber_guards
from ..prims import traits


def dce(g: Graph) -> Graph:
    live = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
    kept = []
    for n in reversed(g.nodes):
        if id(n.out) in live or traits(n.prim).communicates:  # (every rank runs each
            #                                                      collective, used or not)
            kept.append(n)
            for x in n.inputs:
                if isinstance(x, Value):
                    live.add(id(x))
    kept.reverse()
    renumber_guards(g.guards, g.nodes, kept)  # (before the first kept node it preceded)
    g.nodes = kept
    return g
