"""What both backends share: the :class:`Backend` record the pipeline sees, the
:class:`Executable` every compile returns, a value guard's failure (:class:`GuardFailed`),
how a value is compared with a guard's expected one, how a primitive's numpy result is kept,
and the step plan that runs a graph node by node with each primitive's own ``impl`` — the
interpreter's whole plan, and the numpy steps of the LLVM backend's hybrid plans."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..ir import Graph, Value
from ..symbolic import instantiate


class SettingError(ValueError):
    """An environment setting a backend cannot honour (``DYNGRAD_TARGET=not-a-cpu``,
    ``DYNGRAD_CONV=fastest``): the user's to fix, so raised from the call even when the
    compile of a trace fails on it (other compile errors fall back to the traced call's
    result: ``compiler.api``)."""


@dataclass(frozen=True)
class Backend:
    """A backend as the pipeline sees it (``compiler.backends.get(name)``)."""

    name: str
    compile: Callable  # (graph, inplace=None[, family=]) -> Executable
    compile_at_size: Callable | None = None  # (graph, templates, size, inplace) ->
    #   Executable: a backend that plans a symbolic variant's parameter templates at each
    #   size itself (the interpreter); without it, the pipeline hands it concrete graphs per
    #   size
    family: Callable | None = None  # () -> an object every size of one symbolic variant is
    #   compiled with (``family=``, the graph built with ``compiler.dims.Dim`` sizes inside
    #   ``dims.recording()``): the LLVM backend serves a form's sizes from one module
    vector_math: bool = True  # transcendentals in vector code (else numpy's, in eager's
    #   order, bit for bit: the interpreter), so the pipeline may recompute them
    plans_memory: bool = True  # runs from a planned arena, where activations computed again
    #   for their late readers (``passes/remat.py``) save memory (not the interpreter)
    keeps_plans: bool = False  # its executables pickle, to be restored in another process
    #   (``compiler/plancache.py``: the LLVM backend's driver plans)


class Executable(abc.ABC):
    """What a backend's ``compile`` returns: a graph made ready to run.

    ``run(inputs, scalars) -> outputs`` executes it (the graph's input arrays and runtime
    scalars in its order; raises :class:`GuardFailed` before writing anything the caller can
    see). ``describe()`` says in a line or a few how it runs, for ``explain``. ``groups`` are
    the fusion groups it runs as kernels, in their order, and ``memory`` the arena plan it
    actually uses — None for a backend that has neither (the interpreter allocates each
    value in numpy, as eager does). ``native_kernels()`` is (kernels run natively, kernels
    in all); ``numpy_groups()`` the groups it runs in numpy although they compute something
    (not views, constants or scalar arithmetic)."""

    groups: list | None = None
    memory = None  # passes.memory.MemoryPlan | None

    @abc.abstractmethod
    def run(self, inputs: list, scalars: list) -> list:
        """The outputs of one call (raises GuardFailed before any write)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """How it runs, for ``explain``."""

    def native_kernels(self) -> tuple[int, int]:
        return 0, 0

    def numpy_groups(self) -> list:
        return []


class Untemplatable(Exception):
    """A symbolic variant's size whose code cannot run from its form's shared module (a
    size where the backend's code needs a constant): the pipeline compiles the size with
    its numbers instead."""


class GuardFailed(Exception):
    """A value guard did not hold: the call must run eagerly instead."""

    def __init__(self, index: int, expected, got) -> None:
        super().__init__(index)
        self.index, self.expected, self.got = index, expected, got


def same_value(expected, got) -> bool:
    if isinstance(expected, (bool, int, float)):
        return bool(got == expected)
    return np.array_equal(np.asarray(got), expected)


def result(r, weak: bool):
    """What an impl returned, as the environment keeps it: a Python number for Python-number
    arithmetic (as eager keeps it), else an ndarray."""
    if weak:
        return r.item() if hasattr(r, "item") else r
    return r if type(r) is np.ndarray else np.asarray(r)


def step_plan(g: Graph, templates: list | None = None, size: int | None = None,
                       inplace: dict | None = None) -> tuple:
    """(plan for :func:`run_steps`, {id(value): environment slot}). Every value gets a slot in one
    environment list: inputs, scalar inputs, constants and literals first, then node outputs;
    a node is (impl, input slots, params, output slot, in-place target, guards to check
    before it).

    With ``templates`` (symbolic dimensions), node k's params are ``templates[k]``
    instantiated at ``size``. ``inplace`` maps node k to the graph input whose array receives
    its result directly (a write-back after the last guard)."""
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


def run_steps(plan, inputs: list, scalars: list) -> list:
    """Execute: returns the output arrays (raises GuardFailed)."""
    steps, outs, tail, base, n_in, n_sc = plan
    env = base[:]
    env[:n_in] = inputs
    env[n_in:n_in + n_sc] = scalars
    for impl, ins, params, out, target, weak, checks in steps:
        for gi, s, expected in checks:
            if not same_value(expected, env[s]):
                raise GuardFailed(gi, expected, env[s])
        args = [env[i] for i in ins]
        if target is not None:
            env[out] = impl(*args, out=inputs[target], **params)
            continue
        env[out] = result(impl(*args, **params), weak)
    for gi, s, expected in tail:
        if not same_value(expected, env[s]):
            raise GuardFailed(gi, expected, env[s])
    return [env[i] for i in outs]
