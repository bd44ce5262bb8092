"""Guard scheduling: check each value guard as soon as the value it tests is computed.

A guard records, at trace time, how many nodes preceded the Python read that made it; but it
can be checked as early as its value exists. Earlier is better twice over: a failing call
stops sooner, and fewer write-backs come after a guard (writes after the last guard may be
done in place; see compiler.api). A guard on runtime scalars (an optimizer hyperparameter
compared with 0) moves to the very start."""

from __future__ import annotations

from ..ir import Graph, Value


def schedule_guards(g: Graph) -> Graph:
    # Python-number arithmetic on runtime scalars (``1 - beta1``, ``lr != 0``) depends on no
    # tensor: hoist it to the front (nodes are pure, so order among them is free), so guards
    # on it are checked before any tensor work
    early = {id(v) for v in g.scalars}
    hoisted, rest = [], []
    for n in g.nodes:
        if n.out.weak and all(not isinstance(x, Value) or id(x) in early or x.const is not None
                              for x in n.inputs):
            early.add(id(n.out))
            hoisted.append(n)
        else:
            rest.append(n)
    g.nodes = hoisted + rest
    position = {id(n.out): k for k, n in enumerate(g.nodes)}

    def ready(v: Value) -> int:
        k = position.get(id(v))
        return 0 if k is None else k + 1  # inputs, scalars and constants exist at the start

    for gd in g.guards:  # a guard needs nothing but its value
        gd.after = ready(gd.value)
    g.guards.sort(key=lambda gd: gd.after)
    return g
