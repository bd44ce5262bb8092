"""Executors of the IR. ``interp`` (numpy) is the oracle every other backend is tested
against. A backend is a :class:`base.Backend`: ``compile(graph, inplace=None) ->``
:class:`base.Executable`, whose ``run(inputs, scalars) -> outputs`` raises
``base.GuardFailed`` on a value guard miss, and what it does with symbolic sizes
(``compile_at_size`` or ``family``); :func:`get` returns it by name."""

from __future__ import annotations

from .base import Backend

_MADE: dict[str, Backend] = {}


def get(backend: str) -> Backend:
    """The backend called ``backend`` ('interp' or 'llvm'), imported on first use (llvmlite
    is loaded only when the LLVM backend is asked for)."""
    made = _MADE.get(backend)
    if made is not None:
        return made
    if backend == "interp":
        from . import interp
        made = Backend("interp", lambda g, inplace=None: interp.compile_graph(
            g, inplace=inplace), compile_at_size=interp.compile_graph, vector_math=False,
            plans_memory=False)
    elif backend == "llvm":
        from .llvm import forms, runner
        made = Backend("llvm", runner.compile_graph, family=forms.Forms, keeps_plans=True)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose 'interp' or 'llvm'")
    _MADE[backend] = made
    return made
