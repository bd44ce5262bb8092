"""The numpy executor of the IR: each node runs its primitive's own ``impl`` — the very
function eager mode runs — on the same arrays in the same order, so results equal eager's bit
for bit. Value guards are checked as soon as the value they test is computed; nothing is
written anywhere except write-backs the runtime marked safe to do in place (see
``compiler.api._inplace_writes``)."""

from __future__ import annotations

from ..ir import Graph
from .base import GuardFailed, run_steps, step_plan  # noqa: F401 - (GuardFailed: callers')


def compile_graph(g: Graph, templates: list | None = None, size: int | None = None,
                  inplace: dict | None = None):
    """A plan for :func:`run`: the graph's step plan (``base.step_plan``)."""
    return step_plan(g, templates, size, inplace)[0]


run = run_steps  # (raises GuardFailed)
