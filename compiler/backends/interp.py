"""The numpy executor of the IR: each node runs its primitive's own ``impl`` — the very
function eager mode runs — on the same arrays in the same order, so results equal eager's bit
for bit. Value guards are checked as soon as the value they test is computed; nothing is
written anywhere (the runtime commits writes after the whole graph ran)."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Value


class GuardFailed(Exception):
    """A value guard did not hold: the call must run eagerly instead."""

    def __init__(self, index: int, expected, got) -> None:
        super().__init__(index)
        self.index, self.expected, self.got = index, expected, got


def _same(expected, got) -> bool:
    if isinstance(expected, float):
        return float(got) == expected
    return np.array_equal(np.asarray(got), expected)


def compile_graph(g: Graph, templates: list | None = None, size: int | None = None):
    """A plan for :func:`run`: per node, its impl, params and where its inputs come from.
    With ``templates`` (symbolic dimensions), node k's params are ``templates[k]``
    instantiated at ``size``."""
    from ..symbolic import instantiate
    slot = {}
    for i, v in enumerate(g.inputs):
        slot[id(v)] = ("in", i)
    for i, v in enumerate(g.scalars):
        slot[id(v)] = ("sc", i)
    steps = []
    guards_after: dict[int, list] = {}
    for gi, gd in enumerate(g.guards):
        guards_after.setdefault(gd.after, []).append((gi, gd))
    for k, n in enumerate(g.nodes):
        srcs = []
        for x in n.inputs:
            if isinstance(x, Value):
                if x.const is not None:
                    srcs.append(("const", x.const))
                else:
                    srcs.append(slot[id(x)] + ((True,) if x.weak else (False,)))
            else:
                srcs.append(("lit", x))
        params = n.params if templates is None else instantiate(templates[k], size)
        steps.append((n.prim.impl, srcs, params, k))
        slot[id(n.out)] = ("node", k)
    outs = []
    for v in g.outputs:
        outs.append(("const", v.const) if v.const is not None else slot[id(v)])
    guard_list = []
    for gi, gd in enumerate(g.guards):
        guard_list.append((gi, gd.after, slot.get(id(gd.value), ("const", gd.value.const)),
                           gd.expected))
    return steps, outs, guard_list, len(g.nodes)


def run(plan, inputs: list, scalars: list) -> list:
    """Execute: returns the output arrays (raises GuardFailed)."""
    steps, outs, guards, n = plan
    vals = [None] * n
    gi = 0
    ng = len(guards)

    def fetch(src):
        kind = src[0]
        if kind == "node":
            a = vals[src[1]]
        elif kind == "in":
            a = inputs[src[1]]
        elif kind == "sc":
            return scalars[src[1]]
        elif kind == "const":
            return src[1]
        else:
            return src[1]
        if len(src) > 2 and src[2]:  # a weak scalar computed by a node
            return a.item()
        return a

    for impl, srcs, params, k in steps:
        while gi < ng and guards[gi][1] <= k:
            _check(guards[gi], fetch)
            gi += 1
        out = impl(*[fetch(s) for s in srcs], **params)
        vals[k] = out if type(out) is np.ndarray else np.asarray(out)
    while gi < ng:
        _check(guards[gi], fetch)
        gi += 1
    return [fetch(s) for s in outs]


def _check(guard, fetch) -> None:
    index, _, src, expected = guard
    got = fetch(src)
    if not _same(expected, got):
        raise GuardFailed(index, expected, got)
