"""Splitting a joint forward+backward graph for *backward outside*: the compiled forward
returns, besides its outputs, the values the backward part needs ("saved" values, fresh
arrays every call), and the backward part runs later from those and the cotangents.

For now every value the traced backward used is saved, as eager would save it;
rematerialisation with a cost model comes with the LLVM backend."""

from __future__ import annotations

from dataclasses import dataclass

from .ir import Graph, Value


@dataclass(eq=False)
class Split:
    forward: Graph
    backward: Graph
    n_outputs: int  # forward outputs before the saved values
    saved_inputs: list  # for each saved value: index of the graph input it is, or None


def _live(values: list, nodes: list) -> set:
    live = {id(v) for v in values}
    for n in reversed(nodes):
        if id(n.out) in live:
            live.update(id(x) for x in n.inputs if isinstance(x, Value))
    return live


def split(g: Graph, n_forward_outputs: int, cotangents: list) -> Split:
    fwd_out, grad_out = g.outputs[:n_forward_outputs], g.outputs[n_forward_outputs:]
    need_f = _live(fwd_out + [gd.value for gd in g.guards], g.nodes)
    need_b = _live(grad_out, g.nodes)
    F = [n for n in g.nodes if id(n.out) in need_f]
    B = [n for n in g.nodes if id(n.out) in need_b and id(n.out) not in need_f]
    made_in_b = {id(n.out) for n in B}
    cot_ids = {id(v) for v in cotangents}
    saved, seen = [], set()
    for x in [x for n in B for x in n.inputs] + grad_out:
        if isinstance(x, Value) and x.const is None and id(x) not in made_in_b \
                and id(x) not in cot_ids and id(x) not in seen:
            seen.add(id(x))
            saved.append(x)
    index_of = {id(v): i for i, v in enumerate(v for v in g.inputs if id(v) not in cot_ids)}
    old_index = {id(n): i for i, n in enumerate(g.nodes)}
    for gd in g.guards:
        gd.after = sum(1 for n in F if old_index[id(n)] < gd.after)
    inputs = [v for v in g.inputs if id(v) not in cot_ids]
    forward = Graph(inputs=inputs, scalars=list(g.scalars), nodes=F,
                    outputs=list(fwd_out) + saved, guards=list(g.guards), _next=g._next)
    backward = Graph(inputs=saved + list(cotangents), scalars=[], nodes=B,
                     outputs=list(grad_out), guards=[], _next=g._next)
    return Split(forward, backward, len(fwd_out), [index_of.get(id(v)) for v in saved])
