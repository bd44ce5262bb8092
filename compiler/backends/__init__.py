"""Executors of the IR. ``interp`` (numpy) is the oracle every other backend is tested
against. A backend is a pair ``compile_graph(graph, inplace=None, groups=None) -> plan``
(``groups``: the graph's fusion groups when the caller has them) and
``run(plan, inputs, scalars) -> outputs`` (raising ``interp.GuardFailed`` on a value guard
miss); a native backend may add ``family()``, an object that ``compile_graph(...,
family=)`` is given for every size of one symbolic variant (the LLVM backend's serves them
from one module); :func:`get` returns it by name."""

from __future__ import annotations

from types import SimpleNamespace


def get(backend: str) -> SimpleNamespace:
    """The backend called ``backend`` ('interp' or 'llvm'), imported on first use (llvmlite
    is loaded only when the LLVM backend is asked for)."""
    if backend == "interp":
        from . import interp
        return SimpleNamespace(
            compile_graph=lambda g, inplace=None, groups=None: interp.compile_graph(
                g, inplace=inplace), run=interp.run)
    if backend == "llvm":
        from .llvm import runner, sizes
        return SimpleNamespace(compile_graph=runner.compile_graph, run=runner.run,
                               family=sizes.Family)
    raise ValueError(f"unknown backend {backend!r}; choose 'interp' or 'llvm'")
