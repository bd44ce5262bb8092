"""The numpy executor of the IR: each node runs its primitive's own ``impl`` — the very
function eager mode runs — on the same arrays in the same order, so results equal eager's bit
for bit. Value guards are checked as soon as the value they test is computed; nothing is
written anywhere except write-backs the runtime marked safe to do in place (see
``compiler.pipeline.inplace_writes``)."""

from __future__ import annotations

from ..ir import Graph
from .base import Executable, run_steps, step_plan


class Steps(Executable):
    """The graph's step plan (``base.step_plan``), run node by node in numpy."""

    __slots__ = ("plan",)

    def __init__(self, plan: tuple) -> None:
        self.plan = plan

    def run(self, inputs: list, scalars: list) -> list:
        return run_steps(self.plan, inputs, scalars)  # (raises GuardFailed)

    def describe(self) -> str:
        return "numpy interpreter: each node runs its primitive's eager impl"


def compile_graph(g: Graph, templates: list | None = None, size: int | None = None,
                  inplace: dict | None = None) -> Steps:
    """The executable of ``g`` (with ``templates``: a symbolic variant's, at ``size``)."""
    return Steps(step_plan(g, templates, size, inplace)[0])
