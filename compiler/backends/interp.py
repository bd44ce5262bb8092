"""The numpy executor of the IR: each node runs its primitive's own ``impl`` — the very
function eager mode runs — on the same arrays in the same order, so results equal eager's bit
for bit. Value guards are checked as soon as the value they test is computed; nothing is
written anywhere except write-backs the runtime marked safe to do in place (see
``compiler.api._inplace_writes``)."""

from __future__ import annotations

import numpy as np

from ..ir import Graph, Value


class GuardFailed(Exception):
    """A value guard did not hold: the call must run eagerly instead."""

    def __init__(self, index: int, expected, got) -> None:
        super().__init__(index)
        self.index, self.expected, self.got = index, expected, got


def _same(expected, got) -> bool:
    if isinstance(expected, (bool, int, float)):
        return bool(got == expected)
    return np.array_equal(np.asarray(got), expected)


def result(r, weak: bool):
    """What an impl returned, as the environment keeps it: a Python number for Python-number
    arithmetic (as eager keeps it), else an ndarray."""
    if weak:
        return r.item() if hasattr(r, "item") else r
    return r if type(r) is np.ndarray else np.asarray(r)


def compile_graph(g: Graph, templates: list | None = None, size: int | None = None,
                  inplace: dict | None = None):
    """A plan for :func:`run` (see :func:`compile_with_slots`)."""
    return compile_with_slots(g, templates, size, inplace)[0]


def compile_with_slots(g: Graph, templates: list | None = None, size: int | None = None,
                       inplace: dict | None = None) -> tuple:
    """(plan for :func:`run`, {id(value): environment slot}). Every value gets a slot in one
    environment list: inputs, scalar inputs, constants and literals first, then node outputs;
    a node is (impl, input slots, params, output slot, in-place target, guards to check
    before it).

    With ``templates`` (symbolic dimensions), node k's params are ``templates[k]``
    instantiated at ``size``. ``inplace`` maps node k to the graph input whose array receives
    its result directly (a write-back after the last guard)."""
    from ..symbolic import instantiate
    inplace = inplace or {}
    slot: dict[int, int] = {}
    base: list = []

    def new_slot(value=None) -> int:
        base.append(value)
        return len(base) - 1

    for v in g.inputs:
        slot[id(v)] = new_slot()
    for v in g.scalars:
        slot[id(v)] = new_slot()
    n_in, n_sc = len(g.inputs), len(g.scalars)

    def src(x) -> int:
        if isinstance(x, Value):
            if x.const is not None:
                if id(x) not in slot:
                    slot[id(x)] = new_slot(x.const)
                return slot[id(x)]
            return slot[id(x)]
        return new_slot(x)  # a literal number

    by_step: dict[int, list] = {}
    for gi, gd in enumerate(g.guards):
        by_step.setdefault(gd.after, []).append(gi)
    steps = []
    for k, n in enumerate(g.nodes):
        ins = tuple(src(x) for x in n.inputs)
        params = n.params if templates is None else instantiate(templates[k], size)
        out = new_slot()
        slot[id(n.out)] = out
        checks = tuple((gi, src(g.guards[gi].value), g.guards[gi].expected)
                       for gi in by_step.get(k, ()))
        steps.append((n.prim.impl, ins, params, out, inplace.get(k), n.out.weak, checks))
    tail = tuple((gi, src(gd.value), gd.expected) for gi, gd in enumerate(g.guards)
                 if gd.after >= len(g.nodes))
    outs = tuple(src(v) for v in g.outputs)
    return (steps, outs, tail, base, n_in, n_sc), slot


def run(plan, inputs: list, scalars: list) -> list:
    """Execute: returns the output arrays (raises GuardFailed)."""
    steps, outs, tail, base, n_in, n_sc = plan
    env = base[:]
    env[:n_in] = inputs
    env[n_in:n_in + n_sc] = scalars
    for impl, ins, params, out, target, weak, checks in steps:
        for gi, s, expected in checks:
            if not _same(expected, env[s]):
                raise GuardFailed(gi, expected, env[s])
        args = [env[i] for i in ins]
        if target is not None:
            env[out] = impl(*args, out=inputs[target], **params)
            continue
        env[out] = result(impl(*args, **params), weak)
    for gi, s, expected in tail:
        if not _same(expected, env[s]):
            raise GuardFailed(gi, expected, env[s])
    return [env[i] for i in outs]
