"""How a compiled step communicates: which collectives a graph runs (:class:`Collectives`),
what the compiler refuses around them (:func:`check`), and the ranks' agreement before
each call of a function that communicates (:func:`agreed`).

Note [the ranks agree before a compiled call]: MPI matches collectives by their order on
each rank, so every rank must run the same ones. A compiled variant runs its collectives
without eager's per-collective agreement check (Note [agree, then send] in
dyngrad/distributed/work.py), which would cost a round trip each; instead, before every
call of a function one of whose variants communicates, the ranks compare one signature —
the variant's collectives' fingerprint (kinds, ops, dtypes, shapes and roots, in order),
or "no variant" when this rank's guards missed — in one small all-reduce in the format of
eager's check (``agree_on_step``). Equal: every rank runs its variant (guards may differ
between ranks in what does not communicate — a Python float one rank changed — since each
rank's variant computes what its own eager code would). Otherwise every rank runs the call
eagerly (a rank that missed traces it), and eager checks each collective. Inside an agreed
call, the numpy executors run collectives without the check too (``group.agreed``), as the
native code does, so a plan falling back to the runner's stays in step.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from dyngrad.distributed.collectives import (
    IN_PLACE_STARTS,
    MISSED,
    STARTED,
    agree_on_step,
    label,
)

from .dims import concrete
from .prims import traits
from .trace import Unsupported

__all__ = ["Collectives", "starts_of", "fingerprint", "check", "agreed", "agreed_call", "NONE",
           "scalar_guards"]


def starts_of(g) -> list:
    """The graph's collective starts, in order (a start's index k names it in errors)."""
    return [n for n in g.nodes if n.prim in STARTED]


def fingerprint(labels: list) -> int:
    """A nonzero 62-bit number from the collectives' labels, in order: equal on two ranks
    when they run the same collectives."""
    h = hashlib.blake2b("\n".join(labels).encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") & ((1 << 62) - 1)) or 1


NONE = fingerprint([])  # a variant that runs no collective


@dataclass(frozen=True)
class Collectives:
    """The collectives a compiled graph runs: each start's label, in order, and their
    fingerprint (Note [the ranks agree before a compiled call])."""

    labels: tuple
    fingerprint: int

    @property
    def count(self) -> int:
        return len(self.labels)

    @staticmethod
    def of(g) -> Collectives | None:
        """Those of ``g``, or None when it runs none."""
        starts = starts_of(g)
        if not starts:
            return None
        labels = tuple(label(STARTED[n.prim], n.params.get("op"), n.inputs[0].dtype.np,
                             concrete((n.out if n.prim in IN_PLACE_STARTS else
                                       n.inputs[0]).shape), n.params.get("src", -1))
                       for n in starts)  # (an in-place start's buffer: its inputs, in order)
        return Collectives(labels, fingerprint(list(labels)))


def check(g, backward_outside: bool) -> None:
    """Refuse (``Unsupported``: the call runs eagerly, with the reason) what a compiled step
    with collectives cannot do soundly: a backward outside the call (its gradients would be
    reduced by hooks that a compiled forward does not arm), value guards (one failing on one
    rank only, inside the native code, would leave that rank out of step with the others),
    and a start without its one wait."""
    communicating = [n for n in g.nodes if traits(n.prim).communicates]
    if not communicating:
        return
    what = STARTED[starts_of(g)[0].prim].name if starts_of(g) else "a collective"
    if backward_outside:
        raise Unsupported(f"dist.{what} in a compiled function whose result is "
                          f"differentiated after the call: the backward's collectives would "
                          f"run outside it; compile the whole step (forward, backward() and "
                          f"the optimizer)")
    computed = _scalar_only(g)
    for gd in g.guards:
        if id(gd.value) not in computed:
            raise Unsupported(f"a value guard ({gd.kind} at {gd.where}) on tensor data in a "
                              f"compiled step with collectives (dist.{what}): it could fail "
                              f"on one rank only, inside the native code, out of step with "
                              f"the others; keep data-dependent Python decisions out of the "
                              f"step")
    waits: dict = {}
    for n in communicating:
        if n.prim not in STARTED:
            start = n.inputs[0].producer
            waits[id(start)] = waits.get(id(start), 0) + 1
    for n in starts_of(g):
        if waits.get(id(n), 0) != 1:
            raise Unsupported(f"dist.{STARTED[n.prim].name} is started but not waited for "
                              f"exactly once in the compiled function")


def _scalar_only(g) -> dict:
    """id(value) -> its node, for the values computed from the graph's Python-number inputs
    and constants alone (an optimizer's ``weight_decay != 0``), and those inputs (None)."""
    known: dict = {id(v): None for v in g.scalars}
    for n in g.nodes:
        if n.out.weak and all(not hasattr(x, "shape") or x.const is not None or id(x) in known
                              for x in n.inputs):
            known[id(n.out)] = n
    return known


def scalar_guards(g):
    """The value guards of a communicating graph, as a Python function of its scalar inputs
    (``-1`` when all hold, else the first failing one's index), or None without guards:
    checked before the ranks agree on a call, so that no guard fails inside the native
    code (they are all on Python numbers: :func:`check`). The scalar nodes run their
    primitives' impls on float64 numbers, as the interpreter and the driver compute them."""
    if not g.guards:
        return None
    known = _scalar_only(g)
    nodes = [n for n in g.nodes if known.get(id(n.out)) is n]
    index = {id(v): k for k, v in enumerate(g.scalars)}

    def failing(scalars: list) -> int:
        env = {id(v): np.float64(scalars[index[id(v)]]) for v in g.scalars}
        for n in nodes:
            args = [x if not hasattr(x, "shape") else x.const if x.const is not None
                    else env[id(x)] for x in n.inputs]
            env[id(n.out)] = n.prim.impl(*args, **n.params)
        for k, gd in enumerate(g.guards):
            if not bool(np.all(env[id(gd.value)] == gd.expected)):
                return k
        return -1
    return failing


def agreed(group, variant_collectives, hit: bool) -> bool:
    """The agreement before a call (Note [the ranks agree before a compiled call]): True
    when every rank runs compiled code with the same collectives. ``hit``: this rank's
    guards chose a variant, whose ``variant_collectives`` (or None) it runs."""
    if not hit:
        return agree_on_step(group, MISSED, 0)
    if variant_collectives is None:
        return agree_on_step(group, NONE, 0)
    return agree_on_step(group, variant_collectives.fingerprint, variant_collectives.count)


@contextmanager
def agreed_call(group):
    """Inside: the ranks agreed on this call, so collectives run by numpy executors skip
    the per-collective check, as the native code does (``group.agreed``)."""
    group.agreed = True
    try:
        yield
    finally:
        group.agreed = False
