"""IR passes: functions Graph -> Graph, each followed by :func:`compiler.ir.verify`.

None reassociates or otherwise changes floating-point arithmetic, so the interpreter's
results stay equal to eager's bit for bit."""

from __future__ import annotations

from ..ir import Graph, verify
from .cse import cse
from .dce import dce
from .fold import fold
from .guards import schedule_guards
from .pads import pads_to_concat
from .transposes import fold_transposes

PIPELINE = (("fold", fold), ("transposes", fold_transposes), ("pads", pads_to_concat),
            ("cse", cse), ("dce", dce), ("schedule_guards", schedule_guards))


def run_passes(g: Graph, check: bool = True) -> Graph:
    """The default pipeline: fold trace-time constants, let products read transposed
    operands as they are (``transposes.py``), join slices' padded gradients into one concat
    (``pads.py``), merge common subexpressions, drop dead code, and check each value guard
    as early as its value exists."""
    for _, p in PIPELINE:
        g = p(g)
        if check:
            verify(g)
    return g


__all__ = ["run_passes", "dce", "cse", "fold", "fold_transposes", "pads_to_concat",
           "schedule_guards", "PIPELINE"]
