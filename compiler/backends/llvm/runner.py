"""The LLVM backend's executor, first stage: native kernels for the elementwise and reduce
fusion groups, numpy for everything else.

:func:`compile_graph` partitions the graph with :func:`compiler.passes.fusion.fuse`, lowers
every elementwise and reduce group the code generator supports (float32, float64 and bool;
see ``codegen``) into
one LLVM module per graph — a kernel per group, the vector math shared — and keeps the other
groups as the interpreter's steps, the very ``impl`` each primitive runs eagerly. Either way
it returns a ``base.Executable`` (``run(inputs, scalars) -> outputs``, raising
``GuardFailed``), as the interpreter does, so a variant runs either.

Note (what the hybrid plan runs in numpy, and why results can differ from eager): the groups
that do not lower (those ``driver.py`` lists) and the index, movement, random and scalar
groups, one Python step each; every call allocates its kernels' outputs. A graph whose groups
all lower runs as one native driver call instead. Within a native kernel, ``+ - * /``,
``sqrt``, comparisons, ``where``, ``maximum``/``minimum`` are IEEE operations in numpy's order
and give eager's bits; ``exp log tanh sigmoid erf sin cos`` are the vecmath polynomials,
within the ulp bounds documented in ``vecmath`` of the correctly rounded result — not
bit-identical to numpy's; sums add in the kernel's fixed lane order (see
``codegen.ReduceBuilder``), not numpy's pairwise order, so they differ from eager's by
rounding.
"""

from __future__ import annotations

import ctypes
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...dims import concrete
from ...passes.fusion import fuse
from ...prims import traits
from ..base import Executable, GuardFailed, result, same_value, step_plan
from . import cache, codegen, driver, farm, gemm, machine, window
from .emit import LLTYPE

_KERNEL = object()  # tags a native step in the plan's step list
_CHECKS = object()  # tags a step that only checks value guards



def _hybrid_runner(g, inplace, groups):
    """The hybrid plan of ``g`` as a callable ``(inputs, scalars) -> outputs``: what a
    driver plan runs when another thread holds its arena (given as a ``functools.partial``
    of this function, which pickles with the plan: Note [a plan in the plan cache])."""
    return compile_hybrid(g, inplace, groups).run


def compile_graph(g, inplace: dict | None = None, family=None, groups: list | None = None):
    """The executable of ``g``: one native driver call when every fusion group lowers
    (``driver.DriverPlan``), else :func:`compile_hybrid`'s kernels-and-numpy
    :class:`HybridPlan`. ``family``: a symbolic variant's ``forms.Forms``;
    ``groups``: ``g``'s fusion groups when the caller has them (made here otherwise)."""
    for dt in {n.out.dtype.name for n in g.nodes if n.prim.kind == "matmul"} & \
            {"float32", "float64"}:  # (the products' kernel compiles on another core
        gemm.prepare(LLTYPE[dt])  #     meanwhile: gemm.prepare)
    window.prepare(g)  # (and the timing modules of convolution paths to be measured)
    if len(g.nodes) >= farm.PRESTART_NODES:  # (and the compile workers of its large module)
        farm.prestart()
    groups = fuse(g, inplace or ()) if groups is None else groups
    if any(not grp.kind.trivial for grp in groups):
        try:  # (a group that does not lower raises while the driver builds its module)
            return driver.build(g, inplace, functools.partial(_hybrid_runner, g, inplace, groups),
                                groups, family)
        except NotImplementedError:  # (NotDrivable included): the hybrid plan runs it
            pass
    return compile_hybrid(g, inplace, groups, family)


@dataclass
class Profiled:
    """A plan that times its kernels (``compiler.profile``): ``plan`` runs as the variant's
    plan would, and after each call :meth:`seconds` gives every kernel's (start, end) in
    seconds — ``groups[k]`` for row ``k``, the whole run's last — or None when the call did
    not get to its end (a guard failed: the call runs eagerly)."""

    plan: Any
    groups: list  # the fusion groups in the order they run (a numpy group is one entry)
    native: bool  # one driver call (the clock read in the native code), else a hybrid plan
    _clock: np.ndarray  # (len(groups) + 1, 2): ticks of the native clock, or seconds

    def seconds(self) -> np.ndarray | None:
        c = self._clock.copy()
        self._clock[:] = 0
        if not c[-1, 1]:
            return None
        return c / machine.tsc_hz() if self.native else c


def profiled(g, inplace: dict | None = None, groups: list | None = None) -> Profiled:
    """``g``'s plan as :func:`compile_graph` makes it, with a clock around every kernel: the
    driver's module built again with the time-stamp counter read in it (``driver._Ticks``),
    or the hybrid plan with clock readings between its groups."""
    groups = fuse(g, inplace or ()) if groups is None else groups
    try:
        plan = driver.build(g, inplace, functools.partial(_hybrid_runner, g, inplace, groups),
                            groups, profile=True)
        return Profiled(plan, plan.kernels, True, plan.ticks)
    except NotImplementedError:
        pass
    timed = [grp for grp in groups if grp.kind != "creation"]
    clock = np.zeros((len(timed) + 1, 2))
    return Profiled(compile_hybrid(g, inplace, groups, clock=clock), timed, False, clock)


def _tick(clock: np.ndarray, k: int, end: int) -> None:
    clock[k, end] = time.perf_counter()


def compile_hybrid(g, inplace: dict | None = None, groups: list | None = None,
                   family=None, clock: np.ndarray | None = None) -> HybridPlan:
    """A :class:`HybridPlan`: the fusion groups in their order, each lowerable group
    (elementwise, reduce, matmul) as one native kernel call, the others as the interpreter's
    steps of their nodes.

    Note (value guards and write-backs in group order): a guard is checked before the first
    group of the segment after it (fusion keeps segments in order). A write-back the runtime
    allows in place (``inplace``: node -> graph input) is computed into a fresh array and
    copied over the input once everything has run and every guard has passed — so nothing
    the user can see changes before the call cannot fail any more (a transaction, even if a
    step raised unexpectedly).

    ``size_of`` steps become constants: they read only a shape, and their input may be a
    value that lives only inside a native kernel.

    ``family`` (a symbolic variant's sizes: ``forms.Forms``): the kernels' module may be
    the template of the size's form; a run then holds the module's lock and first gives the
    module this size's numbers (``dg_set_sizes``).

    ``clock`` (profiling: :func:`profiled`): an array the plan writes ``perf_counter``
    readings into, around every group but creation groups (in order) and the whole run
    (last row) — readings taken by numpy-style steps of their own, so a plan made without
    it runs no timing code."""
    inplace = inplace or {}
    iplan, slot = step_plan(g, inplace={})
    steps, outs, tail, base, n_in, n_sc = iplan
    if clock is not None:  # (the readings' results go to a slot of their own)
        base = [*base, None]
        tick = lambda k, end: (functools.partial(_tick, clock, k, end), (), {},  # noqa: E731
                               len(base) - 1, True)
    deferred = [(slot[id(g.nodes[k].out)], t) for k, t in inplace.items()]
    producer = {id(n.out): k for k, n in enumerate(g.nodes)}
    groups = fuse(g, inplace) if groups is None else groups
    native = [grp for grp in groups if codegen.lowerable(g, grp)]
    kernels, sized = {}, None
    if native:
        text, fns = codegen.module_ir(g, native)
        numbers = None
        if family is None:
            compiled = cache.load_or_compile(text)  # (memory, the disk cache, LLVM)
        else:
            compiled, numbers = family.module(text)
        if numbers is not None:
            setter = compiled.cfunc("dg_set_sizes", None, ctypes.c_void_p)
            sized = (setter, numbers, compiled.lock)
        for grp, (name, layout) in zip(native, fns, strict=True):
            fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
            n_in_k = len(grp.inputs)
            ins = tuple((slot[id(v)], concrete(v.shape), np.float64 if v.weak else v.dtype.np)
                        for v in layout[:n_in_k])  # (a Python number: one float64)
            kouts = tuple((slot[id(v)], concrete(v.shape), v.dtype.np)
                          for v in layout[n_in_k:])  # (the kernel's outputs: no constants)
            kernels[id(grp)] = (_KERNEL, fn, ins, kouts, concrete(math.prod(grp.shape)),
                                ctypes.c_void_p * max(len(layout), 1))
    # value guards: due before the first group of the segment after their cut
    cuts = sorted({gd.after for gd in g.guards if 0 < gd.after < len(g.nodes)})
    checks_at: dict[int, list] = {}
    for step in steps:
        for c in step[6]:
            a = g.guards[c[0]].after
            checks_at.setdefault(cuts.index(a) + 1 if a in cuts else 0, []).append(c)
    def numpy_step(k: int) -> tuple:  # (impl, input slots, params, output slot, weak)
        n = g.nodes[k]
        if not traits(n.prim).reads_data:  # size_of, a constant: a fresh copy of it
            return (codegen.constant_value(n).copy, (), {}, steps[k][3], False)
        impl, ins, params, out, _, weak, _ = steps[k]  # (no target, no checks: see above)
        return impl, ins, concrete(params), out, weak

    order, done_upto = [], -1
    timed = [grp for grp in groups if grp.kind != "creation"]
    if clock is not None:
        order.append(tick(len(timed), 0))
    for grp in groups:
        for seg in range(done_upto + 1, grp.segment + 1):
            if checks_at.get(seg):
                order.append((_CHECKS, tuple(checks_at[seg])))
        done_upto = max(done_upto, grp.segment)
        t = timed.index(grp) if clock is not None and grp.kind != "creation" else None
        if t is not None:
            order.append(tick(t, 0))
        k = kernels.get(id(grp))
        if k is not None:
            order += [numpy_step(producer[id(v)]) for v in codegen.constant_outputs(g, grp)]
            order.append(k)
        else:
            order += [numpy_step(i) for i in grp.nodes]
        if t is not None:
            order.append(tick(t, 1))
    for seg in range(done_upto + 1, len(cuts) + 1):
        if checks_at.get(seg):
            order.append((_CHECKS, tuple(checks_at[seg])))
    if clock is not None:
        order.append(tick(len(timed), 1))
    return HybridPlan(g, groups, native, order, outs, tail, base, n_in, n_sc, tuple(deferred),
                      sized)


def _check(checks, env) -> None:
    for gi, s, expected in checks:
        if not same_value(expected, env[s]):
            raise GuardFailed(gi, expected, env[s])


class HybridPlan(Executable):
    """The kernels-and-numpy executable of :func:`compile_hybrid`: ``order`` is its steps
    (a native kernel, a numpy step of one node, or value checks); the environment list
    starts as ``base`` with the inputs and scalars in front; ``deferred`` are the write-backs
    done once everything ran; ``sized`` is (set sizes, numbers, lock) when the kernels'
    module is the template of a symbolic variant's form (``forms.py``)."""

    def __init__(self, g, groups, native, order, outs, tail, base, n_in, n_sc, deferred,
                 sized) -> None:
        self.g, self.groups, self.native = g, groups, native
        self.order, self.outs, self.tail, self.base = order, outs, tail, base
        self.n_in, self.n_sc, self.deferred, self.sized = n_in, n_sc, deferred, sized
        self.memory = None  # (numpy allocates every value, kernel outputs included)

    def __reduce__(self):
        raise TypeError("a hybrid plan (native kernels and numpy steps) is not kept in the "
                        "plan cache")

    def run(self, inputs: list, scalars: list) -> list:
        """Execute: returns the output arrays (raises GuardFailed)."""
        if self.sized is None:
            return self._run(inputs, scalars)
        set_sizes, numbers, lock = self.sized
        with lock:  # (the template's global of numbers: this size's, until the run ends)
            set_sizes(numbers.ctypes.data)
            return self._run(inputs, scalars)

    def _run(self, inputs: list, scalars: list) -> list:
        env = self.base[:]
        env[:self.n_in] = inputs
        env[self.n_in:self.n_in + self.n_sc] = scalars
        for step in self.order:
            if step[0] is _CHECKS:
                _check(step[1], env)
                continue
            if step[0] is _KERNEL:
                _, fn, ins, kouts, n, ptr_array = step
                arrays = []
                for s, shape, dtype in ins:
                    a = np.asarray(env[s], dtype=dtype, order="C")  # (0-d stays 0-d)
                    if a.shape != shape:  # a Python number or a 0-d array for a (1,) buffer
                        a = np.ascontiguousarray(np.broadcast_to(a, shape))
                    arrays.append(a)
                results = [np.empty(shape, dtype=dtype) for _, shape, dtype in kouts]
                fn(ptr_array(*[a.ctypes.data for a in arrays + results]), n)  # (per call:
                #                                          thread-safe, the arrays stay alive)
                for (s, _, _), r in zip(kouts, results, strict=True):
                    env[s] = r
                continue
            impl, ins, params, out, weak = step
            env[out] = result(impl(*[env[i] for i in ins], **params), weak)
        _check(self.tail, env)
        for s, target in self.deferred:  # every write-back, once all ran and every guard
            np.copyto(inputs[target], env[s])  # passed
            env[s] = inputs[target]
        return [env[i] for i in self.outs]

    def native_kernels(self) -> tuple[int, int]:
        return len(self.native), len(self.groups)

    def describe(self) -> str:
        """How much runs natively, and per group run in numpy, why (what the code generator
        says of it)."""
        text = f"{len(self.native)} of {len(self.groups)} kernels native (elementwise and " \
               f"reduce); the rest run in numpy"
        for grp in self.numpy_groups():
            try:
                codegen.builder(self.g, grp).build()
                why = "lowers, but runs in numpy in a hybrid plan"
            except NotImplementedError as exc:
                why = str(exc).split(" (supported")[0]
            text += f"\n  in numpy: {grp.describe()[:70]} — {why}"
        return text

    def numpy_groups(self) -> list:
        """The groups run as numpy steps (those ``codegen.lowerable`` rejects), leaving out
        the trivial ones (scalar arithmetic, constants, views)."""
        native = {id(grp) for grp in self.native}
        return [grp for grp in self.groups if id(grp) not in native
                and not grp.kind.trivial]
