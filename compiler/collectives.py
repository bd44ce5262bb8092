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

from dyngrad.distributed.collectives import (
    MISSED,
    STARTED,
    agree_on_step,
    label,
)

from .dims import concrete
from .prims import traits
from .trace import Unsupported

__all__ = ["Collectives", "starts_of", "fingerprint", "check", "agreed", "agreed_call", "NONE"]


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
                             concrete(n.inputs[0].shape), n.params.get("src", -1))
                       for n in starts)
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
    if g.guards:
        gd = g.guards[0]
        raise Unsupported(f"a value guard ({gd.kind} at {gd.where}) in a compiled step with "
                          f"collectives (dist.{what}): it could fail on one rank only, "
                          f"inside the native code, after collectives started; keep "
                          f"data-dependent Python decisions out of the step")
    waits: dict = {}
    for n in communicating:
        if n.prim not in STARTED:
            start = n.inputs[0].producer
            waits[id(start)] = waits.get(id(start), 0) + 1
    for n in starts_of(g):
        if waits.get(id(n), 0) != 1:
            raise Unsupported(f"dist.{STARTED[n.prim].name} is started but not waited for "
                              f"exactly once in the compiled function")


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
