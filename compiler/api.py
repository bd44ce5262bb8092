"""``compile``: the variant cache, the compiled call path and the fallback policy.

A call checks each cached variant's guards, the most recently used first (a newly traced
variant counts as used); the first whose guards hold runs its graph and commits its writes.
When none holds, the call is traced (running eagerly, so its result is eager's) into a new
variant — up to ``cache_limit`` variants, after which the function stays eager with one
warning naming the guard that kept failing.

Note (the transaction rule): a compiled call writes nothing the user can see until the whole
graph has run and every value guard in it has passed — outputs are fresh arrays, write-backs
and ``.grad`` effects are applied last. So when a value guard fails (or anything raises), the
call is simply rerun eagerly from untouched state, and the user sees eager's result, state
and exceptions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyngrad.autograd.graph import _FREED_MSG, FREED, Node
from dyngrad.dispatch import STATE, push_mode
from dyngrad.distributed.work import DistBackendError
from dyngrad.tensor import Storage, Tensor

from . import backends, capture, collectives, dims, firstfill, ir, plancache, variantcache
from .backends.base import Executable, GuardFailed, SettingError, Untemplatable
from .capture.calls import trace_through
from .effects import continue_backward, plan_effects, replay
from .generated import exec_generated
from .guards import GuardSet, build_guards, flatten, unflatten
from .passes.fusion import FusionGroup
from .passes.memory import MemoryPlan
from .pipeline import compile_trace, lower
from .results import fresh
from .symbolic import (
    arg_dims,
    arg_shapes,
    generalize,
    input_templates,
    same_template,
    symbolic_graph,
)
from .trace import Trace, Tracer, Unsupported, Via

log = logging.getLogger("dyngrad.compiler")

_LOG_TOPICS = {t.strip() for t in os.environ.get("DYNGRAD_LOG", "").split(",") if t.strip()}
if _LOG_TOPICS and not log.handlers:
    _h = logging.StreamHandler()
    _h.setFormatter(logging.Formatter("[dyngrad.compiler] %(message)s"))
    log.addHandler(_h)
    log.setLevel(logging.INFO)


class _Config:
    """Global switches: ``DYNGRAD_COMPILE=0`` in the environment, or :func:`disable`."""

    enabled = os.environ.get("DYNGRAD_COMPILE", "1").strip().lower() not in ("0", "false",
                                                                            "off", "no")
    # a compiled call that raises reruns eagerly; tests set this to see compiler bugs
    raise_internal_errors = os.environ.get("DYNGRAD_COMPILE_STRICT", "") not in ("", "0")
    # compiling a trace that raises (a compiler bug) falls back to the traced call's result;
    # strict mode and the test suite (tests/conftest.py) raise instead
    raise_compile_errors = raise_internal_errors
    # the IR is verified after every pass (a pass's bug named where it happens) in strict
    # mode and the test suite; otherwise once, as the backend gets it
    verify_each_pass = raise_internal_errors
    # the backend of compile() calls that name none: the LLVM backend, unless
    # DYNGRAD_BACKEND=interp (how the test suite also runs everything on the numpy oracle)
    backend = os.environ.get("DYNGRAD_BACKEND", "llvm").strip() or "llvm"


config = _Config()
_ALL: list = []  # weak references to every CompiledFunction (for reset)

BACKENDS = ("interp", "llvm")
MAX_UNSUPPORTED = 2


def _topic(name: str) -> bool:
    return name in _LOG_TOPICS or "all" in _LOG_TOPICS


@contextlib.contextmanager
def disable():
    """Run every compiled function eagerly inside the block (no code changes needed)."""
    prev = config.enabled
    config.enabled = False
    try:
        yield
    finally:
        config.enabled = prev


def clear_cache() -> int:
    """Remove the LLVM backend's compiled modules from the disk cache (see
    compiler/backends/llvm/cache.py) and its measured choices (``tune.py``'s matmul kernels,
    ``convtune.py``'s convolution paths, ``widths.py``'s loop vector width: measured again
    when next needed, in a new process for the width); returns how many modules were
    removed."""
    from .backends.llvm import cache, convtune, tune, widths
    tune.forget(disk=True)
    convtune.forget(disk=True)
    widths.forget(disk=True)
    return cache.clear()


def reset() -> None:
    """Drop every cached variant of every compiled function."""
    for ref in list(_ALL):
        cf = ref()
        if cf is None:
            _ALL.remove(ref)
        else:
            cf.reset()


class CompileVerifyError(AssertionError):
    """``verify=N``: the compiled call and the eager call disagreed."""


@dataclass(eq=False)
class Variant:
    """One traced specialisation: guards, graph and the plan the backend runs."""

    trace: Trace
    guards: GuardSet
    graph_before: str
    graph_after: str
    plan: Any
    trace_seconds: float
    compile_seconds: float
    copy_outputs: set = field(default_factory=set)
    backward: BackwardPlan | None = None
    calls: int = 0
    arg_meta: list = field(default_factory=list)
    sym: Any = None  # symbolic.SymbolicDims when one variant serves every size
    sizes: set = field(default_factory=set)  # the sizes a symbolic variant serves (traced)
    templates: list | None = None
    bw_templates: list | None = None
    shape_templates: list | None = None  # per graph input, its shape's template
    bw_shape_templates: list | None = None  # (symbolic.input_templates), and the backward's
    plans: dict = field(default_factory=dict)  # size -> (forward, backward) executables
    family: Any = None  # the native backend's forms of the sizes (llvm/forms.py)
    bw_family: Any = None  # and of the backward part's sizes (backward outside)
    inplace: dict = field(default_factory=dict)  # node -> input written in place
    backend_name: str = "interp"
    collectives: Any = None  # collectives.Collectives: those the graph runs (or None)
    scalar_guards: Any = None  # its value guards (on Python numbers), checked in Python
    #                            before the ranks agree (collectives.scalar_guards)
    number: int = 0  # 1, 2, ... in trace order: explain's "variant N", stable while the
    #                  lookup order (CompiledFunction.variants) changes

    @property
    def groups(self) -> list[FusionGroup] | None:
        """The fusion groups the executable runs (None on the interpreter)."""
        return self.plan.groups

    @property
    def memory(self) -> MemoryPlan | None:
        """The arena plan the executable runs with (None when numpy allocates)."""
        return self.plan.memory

    def use_plan(self, plan: Executable) -> None:
        """Run ``plan`` from now on (the profiler's timed twin, a test's rebuilt plan)."""
        self.plan = plan
        self._gather, self._commit, fast = _generate_call_path(self.trace, self.copy_outputs,
                                                               self)
        if self.call is not self.run:
            self.call = fast

    def plans_for(self, flat: list, inputs: list) -> tuple:
        if self.sym is None:
            return self.plan, (self.backward.plan if self.backward else None)
        d = self.sym.size(flat)
        p = self.plans.get(d)
        if p is None:
            backend = backends.get(self.backend_name)
            if backend.compile_at_size is not None:
                fwd = backend.compile_at_size(self.trace.graph, self.templates, d, self.inplace)
            else:  # the backend compiles the graph at this size, with d a Dim (its form's
                if self.family is None and backend.family is not None:  # one module)
                    self.family = backend.family()
                fwd = self.compile_sized(backend, self.trace.graph, self.templates, d,
                                         [np.shape(a) for a in inputs], self.shape_templates,
                                         self.inplace, self.family)
            if self.backward is None:
                bwd = None
            elif backend.compile_at_size is not None:
                bwd = backend.compile_at_size(self.backward.parts.backward, self.bw_templates,
                                              d, None)
            else:  # planned at the first backward() at this size, given its arrays
                bwd = SizedBackward(self, d)
            if len(self.plans) >= self.PLANS_KEPT:  # the oldest size's plan goes (its
                self.plans.pop(next(iter(self.plans)))  # arena, its outputs): made again
            p = self.plans[d] = (fwd, bwd)  #               in milliseconds if it returns
        return p

    PLANS_KEPT = 64  # sizes whose plans a symbolic variant keeps

    def compile_sized(self, backend, g, templates, d: int, shapes: list, shape_templates,
                      inplace, family):
        """The executable of ``g`` at size ``d`` (``shapes``: its inputs' shapes in the
        call at hand), built with the symbolic dimension a ``compiler.dims.Dim``: every
        size-dependent number of its IR is a placeholder, and ``family`` (the backend's,
        e.g. ``llvm/forms.Forms``) runs the size from its form's one module. When its IR
        cannot be a template, it is written with this size's numbers: a module of its own."""
        sym = symbolic_graph(g, templates, d, shapes, shape_templates)
        if family is not None:
            with dims.recording():
                try:
                    return backend.compile(sym, inplace=inplace, family=family)
                except Untemplatable:
                    family.compiled_alone()
        return backend.compile(sym, inplace=inplace)

    def __post_init__(self) -> None:
        self._gather, self._commit, fast = _generate_call_path(self.trace, self.copy_outputs,
                                                               self)
        self.call = fast if self.backward is None and not self.trace.prints else self.run

    def make_symbolic(self, sym, templates, bw_templates, old: Variant) -> None:
        """Serve every size of one dimension (see compiler/symbolic.py): plans per size.
        ``old``: a variant at another size, the templates were fitted with."""
        self.sym, self.templates, self.bw_templates = sym, templates, bw_templates
        i, k = sym.base
        d1, d2 = old.arg_meta[i][0][k], self.arg_meta[i][0][k]
        self.shape_templates = input_templates(old.trace.graph, self.trace.graph, d1, d2)
        if self.backward is not None:
            self.bw_shape_templates = input_templates(
                old.backward.parts.backward, self.backward.parts.backward, d1, d2)
        bwd = None  # this trace's own size keeps the executables compiled for it
        if self.backward is not None:
            bwd = self.backward.plan
            if backends.get(self.backend_name).compile_at_size is None:
                bwd = SizedBackward(self, d2)
                bwd.plan = self.backward.plan
        self.plans[d2] = (self.plan, bwd)
        self.call = self.run
        if self.backward is None and not self.trace.prints:  # straight-line, the plan
            _, _, self.call = _generate_call_path(self.trace, self.copy_outputs, self)
            #                                                    looked up by size

    def run(self, flat: list):
        """The general call path (``call`` is a generated straight-line one when the variant
        has no symbolic sizes, no backward outside and no debug prints)."""
        tr = self.trace
        inputs, scalars = self._gather(flat)
        plan, bplan = self.plans_for(flat, inputs)
        outs = plan.run(inputs, scalars)
        grad_node = None
        if self.backward is not None:
            n = self.backward.parts.n_outputs
            grad_node = self.backward.node(bplan, outs[n:], flat)
            outs = outs[:n]
        self._commit(flat, outs)
        if tr.prints:
            _print_effects(tr.prints, outs)
        self.calls += 1
        if tr.continuation is not None:
            continue_backward(tr.continuation, flat, outs)
        result = tr.out_spec.build(outs, flat, grad_node)
        if tr.effects:
            replay(tr, result[1])
            return result[0]
        return result


def _print_effects(prints: list, outs: list) -> None:
    """Replay ``dg.debug_print`` calls with this call's values."""
    from dyngrad.printing import tensor_repr
    for spec, sep, end in prints:
        print(sep.join(tensor_repr(Tensor._fresh(outs[k])) if kind == "tensor" else
                       str(float(outs[k])) if kind == "scalar" else k
                       for kind, k in spec), end=end)


def _binding_expr(b, local: str, array: bool) -> str:
    """Source text reaching a binding's tensor (or its ndarray with ``array``); ``local`` is
    the local variable holding the object its weak reference points to."""
    if b.kind is Via.ARG:
        obj = f"flat[{b.target}]"
    elif b.kind is Via.GRAD:
        owner = f"flat[{b.target[1]}]" if isinstance(b.target, tuple) else local
        obj = f"{owner}._grad"
    else:
        obj = local
    return obj if b.kind is Via.ARRAY or not array else f"{obj}._data"


def _generate_call_path(trace: Trace, copy_outputs: set, variant: Variant) -> tuple:
    """Three generated functions for the compiled call: ``gather(flat) -> (inputs, scalars)``
    reading every bound array and runtime scalar; ``commit(flat, outs)`` doing the
    write-backs, version bumps and ``.grad`` assignments; and ``fast(flat)``, the whole call
    (gather, the executable's ``run``, commit, building the result) as one straight-line function
    — no loops, no calls beyond the graph's execution and the tensors it must make. Each
    weakly bound object is dereferenced once per call (the guards have seen it alive). For
    a symbolic variant, ``fast`` takes the plan of the call's size from ``variant.plans``
    (``plans_for`` makes it on first use)."""
    ns: dict[str, Any] = {"COPYTO": np.copyto, "np": np, "NEW": object.__new__,
                          "TENSOR": Tensor, "STORAGE": Storage, "V": variant,
                          "FRESH": fresh}
    locals_: dict[int, str] = {}  # id(object) -> local name
    prelude: list[str] = []

    def local(b) -> str:
        if b.kind is Via.ARG or isinstance(b.target, tuple):
            return ""
        if b.kind is Via.SOURCE:  # read from its Python location (see Binding)
            name = locals_.get(id(b))
            if name is None:
                name = locals_[id(b)] = f"q{len(locals_)}"
                ns[name.upper()] = b.target
                prelude.append(f"{name} = {name.upper()}(flat)")
            return name
        obj = b.target()
        key = id(b.target) if obj is None else id(obj)
        name = locals_.get(key)
        if name is None:
            name = locals_[key] = f"r{len(locals_)}"
            ns[name.upper()] = b.target
            prelude.append(f"{name} = {name.upper()}()")
        return name

    ins = ", ".join(_binding_expr(b, local(b), True) for b in trace.bindings)
    scs = ", ".join(src.source(i, ns) for i, src in enumerate(trace.scalar_sources))
    body = []
    for k in sorted(copy_outputs):
        body.append(f"outs[{k}] = np.array(outs[{k}], copy=True)")
    for b, k, done in trace.writebacks:
        target = _binding_expr(b, local(b), False)
        if b.kind is Via.ARRAY:
            if not done:
                body.append(f"COPYTO({target}, outs[{k}])")
            continue
        body.append(f"o = {target}")
        if not done:
            body.append(f"COPYTO(o._data, outs[{k}])")
        body.append("o._storage.version += 1")
    for b, k in trace.grad_effects:
        owner = _binding_expr(b, local(b), False)
        if k is None:
            body.append(f"{owner}._grad = None")
        else:  # Tensor._fresh, inlined
            body += ["t = NEW(TENSOR)", f"t._data = outs[{k}]", "t._storage = STORAGE()",
                     f"{owner}._grad = t"]
    result_lines: list[str] = []
    result = trace.out_spec.expr(ns, result_lines)
    indent = [f"    {x}" for x in prelude]
    if variant.sym is None:
        ns["RUN"] = variant.plan.run
        run_lines = [f"    outs = RUN([{ins}], [{scs}])"]
    else:
        i, k = variant.sym.base
        ns["PLANS"] = variant.plans
        run_lines = [f"    ins = [{ins}]", f"    p = PLANS.get(flat[{i}]._data.shape[{k}])",
                     "    if p is None: p = V.plans_for(flat, ins)",
                     f"    outs = p[0].run(ins, [{scs}])"]
    lines = ["def gather(flat):", *indent, f"    return [{ins}], [{scs}]", "",
             "def commit(flat, outs):", *indent, *(f"    {x}" for x in body), "    return None",
             "", "def fast(flat):", *indent, *run_lines,
             *(f"    {x}" for x in body), "    V.calls += 1",
             *(["    CONTINUE(TR.continuation, flat, outs)"] if trace.continuation else []),
             *(f"    {x}" for x in result_lines),
             *([f"    r = {result}", "    REPLAY(TR, r[1])", "    return r[0]"]
               if trace.effects else [f"    return {result}"])]
    ns["REPLAY"], ns["TR"], ns["CONTINUE"] = replay, trace, continue_backward
    exec_generated("\n".join(lines), ns)
    return ns["gather"], ns["commit"], ns["fast"]


class SizedBackward(Executable):
    """The backward part of a symbolic variant at one size, on a native backend: compiled
    at the first ``backward()`` of that size — the arrays it is given (saved values and
    cotangents) have the shapes to plan with — into ``plan``, the executable it runs from
    then on; its sizes share modules by form as the forward's do."""

    def __init__(self, variant, d: int) -> None:
        self.variant, self.d, self.plan = variant, d, None

    def run(self, inputs: list, scalars: list) -> list:
        if self.plan is None:
            v = self.variant
            backend = backends.get(v.backend_name)
            if v.bw_family is None and backend.family is not None:
                v.bw_family = backend.family()
            self.plan = v.compile_sized(backend, v.backward.parts.backward, v.bw_templates,
                                        self.d, [np.shape(a) for a in inputs],
                                        v.bw_shape_templates, None, v.bw_family)
        return self.plan.run(inputs, scalars)

    def describe(self) -> str:
        return "compiled at the first backward() of its size" if self.plan is None else \
            self.plan.describe()


@dataclass(eq=False)
class BackwardPlan:
    """The backward part of a split graph, and how to connect it to autograd."""

    plan: Executable  # (of the traced sizes; a symbolic variant's others: Variant.plans)
    parts: Any  # partition.Split
    leaves: list  # bindings of the tensors that receive gradients
    grad_shapes: list
    bindings: list  # the forward graph's input bindings

    def node(self, plan, saved: list, flat: list) -> CompiledBackward:
        """The grad_fn for one call's outputs: saved values are this call's fresh arrays;
        bound inputs saved by reference are version-checked like eager's saved tensors."""
        versions = []
        checked = self.parts.checked_inputs
        for index in self.parts.saved_inputs if checked is None else checked:
            if index is not None:
                obj = self.bindings[index].resolve(flat)
                if isinstance(obj, Tensor):
                    versions.append((obj, obj._storage.version))
        edges = tuple(b.resolve(flat)._edge() for b in self.leaves)
        return CompiledBackward(self, plan, [np.asarray(a) for a in saved], versions, edges)


class CompiledBackward(Node):
    """grad_fn of the outputs of a compiled forward: runs the compiled backward graph."""

    __slots__ = ("bplan", "plan", "saved", "versions", "in_meta", "out_meta", "n_out")

    def __init__(self, bplan: BackwardPlan, plan, saved: list, versions: list,
                 edges: tuple) -> None:
        super().__init__(edges)
        self.bplan, self.plan, self.saved, self.versions = bplan, plan, saved, versions
        self.in_meta = [(e[0].variable.shape if hasattr(e[0], "variable") else shape, None)
                        for e, shape in zip(edges, bplan.grad_shapes)]
        cots = bplan.parts.backward.inputs[len(saved):]
        self.out_meta = [(v.shape, v.dtype) for v in cots]
        self.n_out = len(cots)

    @property
    def n_outputs(self) -> int:
        return self.n_out

    def name(self) -> str:
        return "CompiledFunctionBackward"

    def release(self) -> None:
        self.saved = FREED

    def apply(self, grads, create_graph, retain_graph):
        if create_graph:
            raise RuntimeError(
                "create_graph=True through a compiled backward is not supported: higher-order "
                "gradients need the eager graph; call the function under compiler.disable() "
                "or compile it with mode='eager'")
        if self.saved is FREED:
            raise RuntimeError(_FREED_MSG)
        for t, version in self.versions:
            if t._storage.version != version:
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified "
                    f"by an inplace operation: [{t.dtype.name} {list(t.shape)}] is at version "
                    f"{t._storage.version}; expected version {version} instead "
                    f"({self.name()} saved it)")
        cots = [g._data for g in grads]
        if self.bplan.parts.precomputed and cots[0] == 1.0:  # the gradients themselves:
            res = self.saved if not retain_graph else [a.copy() for a in self.saved]  # x·1 = x
        else:
            res = self.plan.run(self.saved + cots, [])
        if not retain_graph:
            self.release()
        return tuple(Tensor._fresh(np.asarray(r)) for r in res)


class BoundMethod:
    """``func`` bound to an instance held by weak reference: what a compiled method's
    per-instance compiled function calls (a bound method or a ``functools.partial`` would
    keep the instance alive as long as the compiled function).

    >>> m = BoundMethod(Model.step, model); m(x)   # Model.step(model, x)
    """

    def __init__(self, func: Callable, obj: Any) -> None:
        try:
            self.ref = weakref.ref(obj)
        except TypeError:
            raise TypeError(
                f"compile: {getattr(func, '__qualname__', func)} is compiled as a method, but "
                f"{type(obj).__name__} instances take no weak reference (__slots__ without "
                f"'__weakref__'); add '__weakref__' to its __slots__, or compile a function "
                f"taking the instance as an argument") from None
        self.func = func
        self.__name__ = getattr(func, "__name__", type(func).__name__)
        self.__qualname__ = getattr(func, "__qualname__", self.__name__)
        self.__doc__ = getattr(func, "__doc__", None)

    @property
    def __self__(self) -> Any:
        """The instance (None once it is gone)."""
        return self.ref()

    def __call__(self, *args, **kwargs):
        obj = self.ref()
        if obj is None:
            raise ReferenceError(f"{self.__qualname__}: the instance this compiled method was "
                                 f"bound to no longer exists")
        return self.func(obj, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<compiled method {self.__qualname__} of {self.ref()!r}>"


def _forget_bound(bound: dict, key: int, ref: weakref.ref) -> None:
    """An instance with a compiled method died: drop its compiled function."""
    entry = bound.get(key)
    if entry is not None and entry[0] is ref:
        del bound[key]


_WARNED_VERSIONS: set = set()  # (compile warns once per process on an unknown Python)


class CompiledFunction:
    """What :func:`compile` returns: call it like the original function."""

    def __init__(self, fn: Callable, *, backend: str | None = None, mode: str | None = None,
                 dynamic: bool | None = None, cache_limit: int = 8, verify: int = 0) -> None:
        backend = config.backend if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"compile: unknown backend {backend!r}; choose one of {BACKENDS}")
        if mode not in (None, "eager", "default"):
            raise ValueError(f"compile: mode must be None, 'default' or 'eager', got {mode!r}")
        if cache_limit < 1:
            raise ValueError("compile: cache_limit must be at least 1")
        self.fn = fn
        self.backend, self.mode, self.dynamic = backend, mode, dynamic
        self.cache_limit, self.verify = cache_limit, int(verify)
        self.variants: list[Variant] = []  # in lookup order: the most recently used first
        self.fallbacks: list[str] = []
        self.misses: list[Miss] = []  # per recompile, the guard that failed (see recompiles)
        self._traced = 0  # variants traced so far (their numbers)
        self.eager_reason: str | None = None
        self._verify_size = None  # (symbolic variant, size): the next trace checks the size
        self._unsupported_streak = 0
        self._verified = 0
        self._state_pending_ran = False  # (a first call creating optimizer state ran eagerly)
        self._kept: list | None = None  # manifests on disk not yet restored (variantcache):
        #                                 read at the first miss, tried at each miss
        self.communicates = False  # a variant runs collectives: every call is agreed on
        #                            by the ranks first (compiler/collectives.py)
        self.dynamic_numbers: set[int] = set()
        self.dynamic_sources: set = set()
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__doc__ = getattr(fn, "__doc__", None)
        _ALL.append(weakref.ref(self))
        if not capture.available():  # (bytecode the capture was not written for)
            v = ".".join(map(str, capture.frame.PY))
            known = ", ".join(".".join(map(str, p)) for p in capture.SUPPORTED)
            self.eager_reason = (f"the capture understands CPython {known}; this is {v}, so "
                                 f"{self.__name__} runs eagerly")
            if config.raise_internal_errors:
                raise RuntimeError(f"dyngrad.compile: {self.eager_reason} "
                                   f"(DYNGRAD_COMPILE_STRICT is set)")
            if v not in _WARNED_VERSIONS:
                _WARNED_VERSIONS.add(v)
                warnings.warn(f"dyngrad.compile: {self.eager_reason}", stacklevel=3)

    @property
    def recompiles(self) -> list[str]:
        """Why each recompile happened: the guard that failed in the most recently used
        variant, with its traced and new values (``misses`` holds the facts; they are
        formatted here, when read)."""
        return [str(m) for m in self.misses]

    def reset(self) -> None:
        self.variants.clear()
        self.communicates = False
        self._traced = 0
        self.eager_reason = None
        self._unsupported_streak = 0

    def __get__(self, obj, objtype=None):
        """``compile`` used as a method decorator: one compiled function per instance (its
        own variants), kept in ``_bound`` while the instance lives. It calls a
        :class:`BoundMethod`, which holds the instance weakly, and the entry is dropped when
        the instance dies: compiling a method keeps no instance alive."""
        if obj is None:
            return self
        bound = self.__dict__.setdefault("_bound", {})
        key = id(obj)
        entry = bound.get(key)
        if entry is not None and entry[0]() is obj:
            return entry[1]
        method = BoundMethod(self.fn, obj)
        cf = CompiledFunction(method, backend=self.backend, mode=self.mode,
                              dynamic=self.dynamic, cache_limit=self.cache_limit,
                              verify=self.verify)
        bound[key] = (method.ref, cf)
        weakref.finalize(obj, _forget_bound, bound, key, method.ref)
        return cf

    # ----------------------------------------------------------------- the call path
    def __call__(self, *args, **kwargs):
        # Note (calls under a dispatch mode): a variant runs native code or numpy that no
        # mode sees, so under an outer compiled function's tracer the call would be left
        # out of the outer trace, and under vmap/jvp/jacfwd (forward AD) it would give no
        # tangents and one row for the batch. With a mode active the function itself runs:
        # an outer tracer records its operations (inlined into the outer trace), and a
        # transform gets eager's answer.
        if not config.enabled or self.mode == "eager" or self.eager_reason is not None \
                or STATE.modes:
            return self.fn(*args, **kwargs)
        flat, spec = flatten(args, kwargs)
        if self.communicates:
            return self._agreed_call(args, kwargs, flat, spec)
        failed = []
        for v in self.variants:
            k = v.guards.check(flat, spec)
            if k >= 0:
                failed.append((v, k))
                continue
            if self.verify and self._verified < self.verify:
                if failed:
                    self._tried_first(v)
                return self._verified_call(v, flat, args, kwargs)
            try:
                out = v.call(flat)
            except GuardFailed as miss:
                failed.append((v, (miss.index, miss.got)))  # (raw facts: formatted if used)
                if _LOG_TOPICS and _topic("guards"):
                    log.info("%s", _value_miss(v, miss.index, miss.got))
                continue  # nothing was written: another variant may hold (another trip count)
            except DistBackendError:
                raise  # (a collective failed: the job ends, never a rerun)
            except Exception as exc:  # nothing was written: let eager raise or succeed
                self._internal_error(exc)
                return self.fn(*args, **kwargs)
            if failed:  # the variant that served this call is tried first by the next
                self._tried_first(v)
            return out
        return self._miss(args, kwargs, flat, spec, failed)

    def _agreed_call(self, args, kwargs, flat, spec):
        """A call of a function that communicates (Note [the ranks agree before a compiled
        call] in compiler/collectives.py): find the variant whose guards hold, agree with
        the other ranks, then run it — or, when any rank differs, run eagerly (trace) with
        them all. A failure after the agreement is not rerun eagerly: this rank's
        collectives may have started (the error is raised)."""
        from dyngrad.distributed.process_group import default_group
        group = default_group()
        chosen, failed = None, []
        for v in self.variants:
            k = v.guards.check(flat, spec)
            if k < 0 and v.scalar_guards is not None:
                gi = v.scalar_guards(v._gather(flat)[1])
                if gi >= 0:  # (a value guard: would fail inside the native code)
                    failed.append((v, (gi, None)))
                    continue
            if k < 0:
                chosen = v
                break
            failed.append((v, k))
        if chosen is not None and getattr(chosen.plan, "group", group) is not group:
            self.variants.remove(chosen)  # (made for a process group since destroyed:
            chosen = None  #                 traced again, for this one)
        if not collectives.agreed(group, chosen.collectives if chosen else None,
                                  chosen is not None):
            if chosen is None:
                return self._miss(args, kwargs, flat, spec, failed)
            reason = "another rank's guards chose another variant or none"
            self.fallbacks.append(f"ran eagerly with every rank: {reason}")
            self._note(f"{self.__name__} ran eagerly: {reason}", "guards")
            return self.fn(*args, **kwargs)
        if failed:
            self._tried_first(chosen)
        try:
            with collectives.agreed_call(group):
                return chosen.call(flat)
        except GuardFailed as miss:
            if chosen.collectives is None:  # (this rank runs eagerly, the others a variant
                #  without collectives too: eager's own collectives, if any, are checked)
                self._note(f"{self.__name__}: {_value_miss(chosen, miss.index, miss.got)}; "
                           f"running eagerly on this rank", "guards")
                return self.fn(*args, **kwargs)
            group.broken = "a compiled step's guard failed on one rank after the agreement"
            raise DistBackendError(
                f"{self.__name__}: {_value_miss(chosen, miss.index, miss.got)} in its native "
                f"code on rank {group.rank()}, after the ranks agreed to run it (its Python "
                f"check of the guard passed): this rank cannot join the others' collectives; "
                f"the job ends") from None

    def _tried_first(self, v: Variant) -> None:
        """Move ``v`` to the front of the lookup order (``variants``: the most recently used
        first), once it has served a call — not when its input guards held but a value
        guard then failed: a full miss leaves the order as it was."""
        self.variants.remove(v)
        self.variants.insert(0, v)

    def _miss(self, args, kwargs, flat, spec, failed):
        """No variant held: trace a new one, or stay eager once ``cache_limit`` is reached.
        ``failed`` lists (variant, why) per variant tried, in lookup order: ``why`` is the
        index of the input guard that failed, or (value guard index, the value it saw) for a
        value guard. The record names the miss of the first, the most recently used variant:
        what changed since the path the calls were on."""
        if STATE.anomaly:  # Note: detect_anomaly() checks each backward output for NaN by
            # reading its array in numpy, which no trace can follow; so calls under it run
            # eagerly (the variants, traced without it, fail their anomaly-mode guard)
            self._note(f"{self.__name__} ran eagerly: anomaly mode is on", "guards")
            return self.fn(*args, **kwargs)
        if failed:
            v, why = failed[0]
            if isinstance(why, int):
                why = v.guards.which(why, flat, spec)
                miss = Miss(v.number, v.guards.describe[why], v.guards.expected[why],
                            v.guards.current(why, flat))
                tag = v.guards.tags[why]
                if tag is not None and tag[0] == "size":  # a new size: verified by a trace
                    self._verify_size = (v, miss.got)
                if tag is not None and tag[0] == "number" and \
                        type(flat[tag[1]]) is type(miss.expected) and \
                        (type(miss.expected) is float or type(miss.expected) is int and
                         abs(miss.expected) < 1 << 52 and abs(flat[tag[1]]) < 1 << 52):
                    self.dynamic_numbers.add(tag[1])  # seen to change: a runtime input now
                if tag is not None and tag[0] == "source" and \
                        type(miss.got) is type(miss.expected) and type(miss.got) in (int, float):
                    self.dynamic_sources.add(tag[1])  # a global/closure number: likewise
            else:
                miss = _value_miss(v, *why, flat=flat)
            if len(self.variants) >= self.cache_limit and self._verify_size is None:
                self.eager_reason = (f"cache_limit ({self.cache_limit}) reached; last miss: "
                                     f"{miss}")
                warnings.warn(f"dyngrad.compile: {self.__name__} runs eagerly from now on: "
                              f"{self.eager_reason}", stacklevel=3)
                return self.fn(*args, **kwargs)
            self.misses.append(miss)
            if _LOG_TOPICS and _topic("recompiles"):
                log.info("recompiling %s: %s", self.__name__, miss)
        elif not self._state_pending_ran and self._traced == 0:
            opts = _optimizers_without_state(self.fn, flat)
            if opts:
                out = self._run_kept(args, kwargs, flat, spec, first=True)
                if out is not _MISSED:  # (Note [a first step from a filled state])
                    return out
                self._state_pending_ran = True
                fill = firstfill.arm(opts)
                if fill is not None:  # (Note [a first call from a filled state])
                    return self._trace(args, kwargs, flat, spec, fill)
                opt = opts[0]
                reason = (f"untraced: {type(opt).__name__} has parameters without optimizer "
                          f"state, which a first step creates and keeps in Python state (a "
                          f"trace would be refused); the next call traces")
                self.fallbacks.append(reason)
                self._note(f"{self.__name__} ran eagerly, {reason}", "recompiles")
                return self.fn(*args, **kwargs)
        out = self._run_kept(args, kwargs, flat, spec)
        if out is not _MISSED:
            return out
        return self._trace(args, kwargs, flat, spec)

    def _run_kept(self, args, kwargs, flat, spec, first: bool = False):
        """This call run by a variant kept on disk (``first``: only by one that may fill
        optimizer state, at a first call), or ``_MISSED``."""
        if self._kept is None:
            self._kept = [[variantcache.parse(m), 0] for m in variantcache.read(self)] \
                if self.backend == "llvm" else []
        restored = self._restore(flat, spec, first) if self._kept else None
        if restored is None:
            return _MISSED
        v, filled = restored
        try:
            return v.call(flat)
        except GuardFailed:  # (a value guard: nothing was written)
            self._unfill(v, filled)
        except DistBackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - nothing was written
            self._unfill(v, filled)
            self._internal_error(exc)
            return self.fn(*args, **kwargs)
        return _MISSED

    def _unfill(self, v: Variant, filled: list) -> None:
        """Empty the optimizer state ``v``'s restore filled (the call runs eagerly, as a first
        step); ``v`` goes with it: it is bound to the tensors of that state."""
        if filled:
            variantcache.unfill(filled)
            self.variants.remove(v)

    def _restore(self, flat: list, spec, first: bool = False) -> tuple | None:
        """(variant, the optimizers whose state it filled) of a variant kept on disk by an
        earlier process whose assumptions hold for this call (``compiler/variantcache.py``),
        made ready to run and put first; None when none does. Each manifest is tried at a
        few misses at most (a later call may be the one it was traced for: the second step,
        with gradients present; at a ``first`` call only those that fill optimizer state)."""
        for entry in list(self._kept):
            if first and not variantcache.fills(entry[0]):
                continue
            entry[1] += 1
            done = entry[1] >= 4  # (tried enough: dropped whatever happens now)
            t0 = time.perf_counter()
            try:
                m, lowered, made = self._from_manifest(entry[0], flat, spec)
            except variantcache.Refused as exc:
                variantcache.stats["refused"] += 1
                if _LOG_TOPICS and _topic("recompiles"):
                    log.info("%s: a kept variant does not serve this call: %s",
                             self.__name__, exc)
                m = None
            except Exception as exc:  # noqa: BLE001 - (a manifest of other code, corrupt)
                variantcache.stats["refused"] += 1
                if config.raise_compile_errors:
                    raise
                log.debug("kept variant refused: %r", exc)
                m, done = None, True
            if done or m is not None:
                self._kept.remove(entry)
            if m is None:
                continue
            self.dynamic_numbers |= set(m["numbers"])
            self.dynamic_sources |= set(m["sources"])
            variantcache.stats["restored"] += 1
            return self._add_variant(m["trace"], made, lowered, flat, spec, 0.0,
                                     time.perf_counter() - t0, "restored"), m["filled"]
        return None

    def _from_manifest(self, payload, flat: list, spec, lowered=None,
                       plans: dict | None = None) -> tuple:
        """(manifest, lowered graph, ``compile_trace``'s result) of a kept variant restored
        against this call's objects, whose guards hold for it unless ``lowered`` is given
        (the round trip, after the call); its plans from the plan cache unless given (raises
        ``variantcache.Refused``, with no optimizer state left filled)."""
        check = lowered is None
        m = variantcache.load(self, payload, flat, spec)
        try:
            if lowered is None:
                pe = plancache.load(m["pkey"])
                if pe is None:
                    raise variantcache.Refused("its plans are not in the plan cache")
                lowered, plans = pe.lowered, pe.plans
            made = compile_trace(m["trace"], lowered, backends.get(self.backend), flat, spec,
                                 set(m["numbers"]), m["checks"], plans)
            if check and made.guards.check(flat, spec) >= 0:
                raise variantcache.Refused("its guards do not hold for this call")
            if m["filled"] and variantcache.without_state(
                    m["filled"], lambda: made.guards.check(flat, spec)) >= 0:
                raise variantcache.Refused("its guards read the optimizer's state, which a "
                                           "first step sees empty")
        except BaseException:
            variantcache.unfill(m["filled"])  # (Note [a first step from a filled state])
            raise
        return m, lowered, made

    def _trace(self, args, kwargs, flat, spec, fill=None):
        """Trace this call (``fill``: the optimizer state its first step was filled with,
        settled after it: compiler/firstfill.py) and compile the variant."""
        t0 = time.perf_counter()
        backend = backends.get(self.backend)
        tracer = Tracer(flat)
        try:
            with push_mode(tracer):
                if self.dynamic_numbers:
                    traced = [tracer.arg_scalar(i, x) if i in self.dynamic_numbers else x
                              for i, x in enumerate(flat)]
                    args, kwargs = unflatten(spec, traced)
                result, cap = capture.run(tracer, self.fn, args, kwargs,
                                          self.dynamic_sources, flat, fill)
        finally:
            if fill is not None:
                fill.settle()
        t1 = time.perf_counter()
        try:
            if cap.refused is not None:
                raise Unsupported(cap.refused)
            if cap.effects:  # their values come out of the graph with the result
                trace = tracer.finish((result, [e.payload for e in cap.effects]), flat)
                trace = plan_effects(trace, cap, tracer, self.dynamic_sources)
            else:
                trace = tracer.finish(result, flat)
            pkey, entry = plancache.lookup(trace, backend, config.verify_each_pass)
            lowered = entry.lowered if entry is not None else lower(
                trace, backend.vector_math, backend.plans_memory, config.verify_each_pass)
            if self._verify_size is not None and \
                    self._size_verified(self._verify_size, lowered.graph, lowered.parts, flat):
                return _plain_numbers(result)  # (this call was the trace: its result stands)
            plans = {} if entry is None else entry.plans
            known = len(plans)
            checks = list(cap.checks.values())
            made = compile_trace(trace, lowered, backend, flat, spec, self.dynamic_numbers,
                                 checks, plans)
            if pkey is not None and (entry is None or len(plans) > known and
                                     not entry.unkept):
                copy = plancache.keep(pkey, lowered, plans)
                if copy is not None:  # (round trip: the variant runs the restored copy)
                    lowered, plans = copy.lowered, copy.plans
                    made = compile_trace(trace, lowered, backend, flat, spec,
                                         self.dynamic_numbers, checks, plans)
            if pkey is not None:
                trace, made = self._keep(trace, made, checks, pkey, lowered, plans, flat,
                                         spec, variantcache.library_reads(cap),
                                         (cap.read_ids, cap.optimizers_given))
        except Unsupported as exc:
            self._unsupported(str(exc))
            return _plain_numbers(result)
        except Exception as exc:  # a compiler bug after the traced call ran the function
            if config.raise_compile_errors or isinstance(exc, SettingError):  # (its effects
                raise  #                         are done: its result stands, unless raised)
            self._compile_error(exc)
            return _plain_numbers(result)
        t2 = time.perf_counter()
        self._unsupported_streak = 0
        self._add_variant(trace, made, lowered, flat, spec, t1 - t0, t2 - t1, "traced")
        return _plain_numbers(result)

    def _keep(self, trace: Trace, made, checks: list, pkey: str, lowered, plans: dict,
              flat: list, spec, library: list, seen: tuple) -> tuple:
        """Keep the variant just made on disk for later processes (variantcache). In
        round-trip mode it is restored here instead, and (trace, made) of the restored
        manifest returned, which the call runs from now on."""
        m = variantcache.mode()
        if m == "off":
            return trace, made
        try:
            manifest = variantcache.dump(self, trace, checks, pkey, flat, spec, library,
                                         seen)
        except variantcache.Refused as exc:
            variantcache.stats["unkept"] += 1
            variantcache.unkept[str(exc)[:70]] += 1
            if _LOG_TOPICS and _topic("recompiles"):
                log.info("%s: variant not kept on disk: %s", self.__name__, exc)
            return trace, made
        if m == "on":
            variantcache.write(self, manifest)
            return trace, made
        r, _, restored = self._from_manifest(manifest, flat, spec, lowered, plans)  # (round
        variantcache.stats["restored"] += 1  #                          trip: a failure is a bug)
        return r["trace"], restored

    def _add_variant(self, trace: Trace, made, lowered, flat: list, spec, trace_s: float,
                     compile_s: float, how: str) -> Variant:
        """Put the variant ``compile_trace`` made of ``trace`` first in the lookup order."""
        bw = trace.backward
        trace = made.trace
        backward = None if bw is None else BackwardPlan(
            made.backward, lowered.parts, list(bw.leaves), [v.shape for v in bw.grads],
            trace.bindings)
        v = Variant(trace, made.guards, lowered.before, lowered.after, made.plan, trace_s,
                    compile_s, made.copy_outputs, backward=backward, arg_meta=arg_shapes(flat),
                    inplace=made.inplace, backend_name=self.backend,
                    collectives=collectives.Collectives.of(trace.graph))
        if v.collectives is not None:
            v.scalar_guards = collectives.scalar_guards(trace.graph)
        self._traced += 1
        v.number = self._traced
        if v.collectives is not None:
            self.communicates = True  # (from now on every call is agreed on first)
        elif self.dynamic is not False:  # (a variant with collectives keeps its sizes: its
            self._generalize(v, flat, spec)  # MPI counts are numbers of its code)
        self.variants.insert(0, v)  # the next call on this path finds it first
        self._note(f"{how} variant {v.number} of {self.__name__}: "
                   f"{len(trace.graph.nodes)} nodes, {len(v.guards.describe)} guards, "
                   f"trace {1e3 * trace_s:.1f} ms + passes {1e3 * compile_s:.1f} ms", "graph")
        if _topic("graph"):
            log.info("%s", lowered.after)
        return v

    def _size_verified(self, pending, g, parts, flat) -> bool:
        """A symbolic variant missed only because the size was new: this call's trace at
        that size is compared with its templates; when they agree, the size is added to the
        ones it serves (no new variant, nothing compiled). Otherwise a variant of its own."""
        self._verify_size = None
        sv, d = pending
        if sv not in self.variants:
            return False
        i, k = sv.sym.base
        d0 = sv.arg_meta[i][0][k]
        t = generalize(sv.trace.graph, g, d0, d)
        if t is None or not same_template(t, sv.templates):
            return False
        if (parts is None) != (sv.backward is None):
            return False
        if parts is not None:
            tb = generalize(sv.backward.parts.backward, parts.backward, d0, d)
            if tb is None or not same_template(tb, sv.bw_templates):
                return False
        sv.sizes.add(d)
        self._note(f"{self.__name__}: size {d} traced and found to match the symbolic variant "
                   f"{sv.number}", "recompiles")
        return True

    def _generalize(self, v: Variant, flat, spec) -> None:
        """If ``v`` and two earlier variants differ only in one argument dimension, by the
        same affine function of it, make ``v`` symbolic in it and drop the two (see
        compiler/symbolic.py). Not when the result rebuilds a view: its movement ops hold
        the traced sizes."""
        if v.trace.out_spec.holds_views():
            return

        def fit(old):
            if old.sym is not None or (old.backward is None) != (v.backward is None):
                return None
            dims = arg_dims(old.arg_meta, v.arg_meta)
            if dims is None:
                return None
            i, k = dims.base
            d1, d2 = old.arg_meta[i][0][k], v.arg_meta[i][0][k]
            t = generalize(old.trace.graph, v.trace.graph, d1, d2)
            tb = None
            if t is not None and v.backward is not None:
                tb = generalize(old.backward.parts.backward, v.backward.parts.backward, d1, d2)
                if tb is None:
                    return None
            return None if t is None else (dims, t, tb)

        fits = [(old, fit(old)) for old in self.variants]
        fits = [(old, f) for old, f in fits if f is not None]
        for a, (dims_a, ta, tba) in fits:
            for b, (dims_b, tb_, tbb) in fits:
                if a is b or dims_a != dims_b or not same_template(ta, tb_) or \
                        not same_template(tba, tbb):
                    continue
                v.make_symbolic(dims_a, ta, tba, a)
                i, k = dims_a.base
                v.sizes = {a.arg_meta[i][0][k], b.arg_meta[i][0][k], v.arg_meta[i][0][k]}
                v.guards = build_guards(v.trace, flat, spec, self.dynamic_numbers,
                                        symbolic=dims_a, sizes=v.sizes)
                self.variants.remove(a)
                self.variants.remove(b)
                v.calls += a.calls + b.calls
                i, k = dims_a.base
                self._note(f"{self.__name__}: dimension {k} of argument {i} is symbolic "
                           f"(three sizes share one variant)", "recompiles")
                return

    def _internal_error(self, exc: Exception) -> None:
        """A compiled call raised (a shape the guards did not foresee, or a compiler bug):
        recorded, warned about once, and the call runs eagerly."""
        reason = _raised("compiled call", exc)
        self._note(reason + "; running eagerly", "guards")
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)
            warnings.warn(f"dyngrad.compile: {self.__name__}: {reason}; ran eagerly",
                          stacklevel=3)  # the user's call (via __call__)
        if config.raise_internal_errors:
            raise exc

    def _compile_error(self, exc: Exception) -> None:
        """Lowering or compiling a trace raised: the traced call has run the function (its
        result and effects are eager's), so that call returns its result; the error is
        recorded as the call's fallback and warned about once, and later calls try again —
        after ``MAX_UNSUPPORTED`` in a row the function stays eager. (With
        ``config.raise_compile_errors``, as in strict mode and the test suite, it raises.)"""
        reason = _raised("compiling the trace", exc)
        if reason not in self.fallbacks:
            warnings.warn(f"dyngrad.compile: {self.__name__}: {reason}; ran eagerly",
                          stacklevel=5)  # user → __call__ → _miss → _trace → here
        self._unsupported(reason)

    def _unsupported(self, reason: str) -> None:
        self.fallbacks.append(reason)
        self._unsupported_streak += 1
        self._note(f"{self.__name__} ran eagerly: {reason}", "recompiles")
        if self._unsupported_streak > MAX_UNSUPPORTED:
            self.eager_reason = reason
            warnings.warn(f"dyngrad.compile: {self.__name__} runs eagerly from now on: "
                          f"{reason}", stacklevel=5)  # user → __call__ → _miss → _trace → here

    def _note(self, msg: str, topic: str) -> None:
        if _topic(topic):
            log.info("%s", msg)

    # ----------------------------------------------------------------- verify=N
    def _verified_call(self, v: Variant, flat, args, kwargs):
        from .verify import compare, snapshot
        self._verified += 1
        before = snapshot(v.trace, flat)
        try:
            compiled = v.run(flat)
        except GuardFailed as miss:
            before.restore()
            return self._miss(args, kwargs, flat, flatten(args, kwargs)[1],
                              [(v, (miss.index, miss.got))])
        after_compiled = snapshot(v.trace, flat)
        rng = after_compiled
        before.restore()
        eager = self.fn(*args, **kwargs)
        after_eager = snapshot(v.trace, flat)
        problems = compare(compiled, eager, rng, after_eager, exact=self.backend == "interp")
        if problems:
            raise CompileVerifyError(f"verify: compiled {self.__name__} differs from eager: "
                                     + "; ".join(problems[:5]))
        return eager

    def __repr__(self) -> str:
        return f"<compiled {self.__name__}: {len(self.variants)} variant(s), backend=" \
               f"{self.backend}>"


_MISSED = object()  # (_run_kept: no kept variant served the call)


def _raised(what: str, exc: Exception) -> str:
    """``"<what> raised <type>: <message> (<the innermost line it came from>)"``."""
    import traceback
    where = traceback.format_exception(type(exc), exc, exc.__traceback__)[-2].strip()
    return f"{what} raised {type(exc).__name__}: {exc} ({where})"


def _optimizers_without_state(fn: Callable, flat: list) -> list:
    """The optimizers the function can reach — among its arguments, its closure cells, the
    globals its code names, or one attribute into any of those — with a parameter that
    requires grad and has no state yet (``Optimizer.first_step_creates_state``): a first
    training step creates that state, tensors the function keeps in Python state, which
    makes its trace refused. Such a first call is traced from a filled state (Note [a first
    call from a filled state] in compiler/firstfill.py) or, when one cannot be filled, runs
    eagerly without the capture (on W8 the refused capture cost 0.45 s of a 1.9 s cold
    start). Only ever a prediction: a call that would have traced fine (an optimizer the
    function does not step) merely runs eagerly once, or has its fill removed, and one whose
    optimizer is not found is traced and refused as before."""
    from dyngrad.optim.optimizer import Optimizer
    roots = list(flat) + [getattr(fn, "__self__", None)]  # (before a bound method's
    fn = getattr(fn, "__func__", fn)  # function replaces it: the instance holds self.opt)
    code = getattr(fn, "__code__", None)
    if code is not None:
        for cell in fn.__closure__ or ():
            try:
                roots.append(cell.cell_contents)
            except ValueError:  # (an empty cell)
                pass
        glb = getattr(fn, "__globals__", {})
        roots += [glb[n] for n in code.co_names if n in glb]
    seen: set = set()
    inner = [v for r in roots for v in variantcache.instance_dict(r).values()]
    out = []
    for obj in roots + inner:
        if isinstance(obj, Optimizer) and id(obj) not in seen:
            seen.add(id(obj))
            if _predicts_state(obj):
                out.append(obj)
    return out


def _predicts_state(opt) -> bool:
    """``opt.first_step_creates_state()``, False when it cannot say: an object that passes
    ``isinstance`` without an optimizer's attributes (``Mock(spec=Adam)``, a subclass that
    skips ``Optimizer.__init__``) is no error of the user's call."""
    try:
        return opt.first_step_creates_state() is True
    except Exception:
        return False


def _plain_numbers(x):
    """The traced call's result with traced scalars (from .item()) as plain floats."""
    from .trace import TracedInt, TracedScalar
    if isinstance(x, TracedScalar):
        return float(x)
    if type(x) is TracedInt:
        return x._v
    if type(x) in (tuple, list):
        return type(x)(_plain_numbers(e) for e in x)
    if type(x) is dict:
        return {k: _plain_numbers(e) for k, e in x.items()}
    return x


def _short(x, width: int = 80) -> str:
    s = repr(x).replace("\n", " ")
    return s if len(s) < width else s[:width - 3] + "..."


def describe_value_guard(gd: ir.ValueGuard) -> str:
    """A value guard as explain lists it: what Python read, where, and the traced value,
    e.g. ``bool at control_flow.py:42: %7 == array(False)``."""
    return f"{gd.kind} at {gd.where}: {gd.value!r} == {_short(gd.expected, 60)}"


@dataclass(frozen=True, eq=False)
class Miss:
    """Why a call traced again (or, at ``cache_limit``, stayed eager): the guard that failed
    in the first variant it tried (the most recently used) — an input guard's description,
    or the ir.ValueGuard — with the traced value and the one seen. Raw facts, formatted by
    ``str`` when read (``recompiles``, the cache-limit warning, ``DYNGRAD_LOG``)."""

    variant: int  # the variant's number (explain's "variant N")
    guard: Any  # str (an input guard's description) or ir.ValueGuard
    expected: Any
    got: Any

    def __str__(self) -> str:
        if isinstance(self.guard, str):
            return (f"guard '{self.guard}' of variant {self.variant} failed: traced "
                    f"{_short(self.expected)}, now {_short(self.got)}")
        return (f"value guard '{describe_value_guard(self.guard)}' of variant "
                f"{self.variant} failed: now {_short(self.got)}")


def _value_miss(v: Variant, index: int, got, flat=None) -> Miss:
    """The record of variant ``v``'s value guard ``index`` seeing ``got`` (as an array copy:
    it may be a buffer the next call reuses, and the backends hand arrays or numpy scalars).
    A guard on a runtime input itself names its source and reads its value now."""
    guard = v.trace.graph.guards[index]
    if isinstance(got, (np.ndarray, np.generic)):
        got = np.array(got)
    scalars = v.trace.graph.scalars
    if flat is not None and any(guard.value is sc for sc in scalars):
        j = next(j for j, sc in enumerate(scalars) if guard.value is sc)
        try:
            got = v.trace.scalar_sources[j].read(flat)
            if type(guard.expected) is int and float(got).is_integer():
                got = int(got)
        except Exception:  # noqa: BLE001 - (a message only)
            pass
        guard = f"{guard.value.name} == {guard.expected!r} ({guard.kind} at {guard.where})"
    return Miss(v.number, guard, v.trace.graph.guards[index].expected, got)


def compile(fn: Callable | None = None, *, backend: str | None = None, mode: str | None = None,
            dynamic: bool | None = None, cache_limit: int = 8, verify: int = 0):
    """Compile a function (a training step, a forward, an ``nn.Module``) by tracing it.

    >>> @dg.compile
    ... def train_step(x, y):
    ...     opt.zero_grad(); loss = F.mse_loss(model(x), y); loss.backward(); opt.step()
    ...     return loss

    Options: ``backend`` ('llvm', the default: native code, see
    compiler/backends/llvm/; or 'interp', the numpy executor, bit for bit equal to eager;
    ``DYNGRAD_BACKEND`` changes the default), ``mode='eager'``
    (a debugging switch: run the function as is), ``dynamic``, ``cache_limit`` (variants kept
    per function before it stays eager), ``verify=N`` (check the first N compiled calls
    against eager and raise on any difference).
    """
    def wrap(f):
        return CompiledFunction(f, backend=backend, mode=mode, dynamic=dynamic,
                                cache_limit=cache_limit, verify=verify)
    return wrap if fn is None else wrap(fn)


trace_through(CompiledFunction, BoundMethod)  # (the capture traces compiled functions through)
