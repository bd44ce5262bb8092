"""The tracer: a dispatch mode that records the IR while the function runs eagerly.

Because the first call runs for real, it returns the right answer whatever happens to the
trace. What the tracer sees:

- every operation (``dispatch``) — forward, the backward engine's vjp ops and the
  optimizer's update alike, so one joint graph holds the whole step;
- tensors it did not see created: graph inputs, *bound by reference* (an argument position,
  a weak reference to the tensor object, or its owner's ``.grad`` attribute) and read at call
  time, never baked;
- in-place writes: the written tensor's storage slot gets a new value; other slots of the
  same storage that overlap it are updated functionally (a gather/where over the
  overlapping elements), so aliases and views stay consistent; written external slots
  become write-backs;
- ``.grad`` assignments: effects replayed by the runtime;
- value reads: a ``bool()``/``int()``/mask read records a *value guard* (the compiled program
  recomputes the value and checks it); data leaving through ``.numpy()``/``.tolist()``/
  printing makes the trace unusable (a recorded fallback reason);
- Python numbers read through ``dyngrad.dispatch.read_scalar`` (optimizer hyperparameters):
  runtime scalar inputs, carried through Python arithmetic as :class:`TracedScalar`.

Debugging aid: ``DYNGRAD_DEBUG_ESCAPES=1`` prints what holds a tensor that made a trace
"escape" (see ``Tracer._check_escapes``).

Note: tensors are identified by *slot*: (storage, data pointer, shape, strides, dtype). Two
tensor objects over the same memory in the same layout (``p`` and ``p.data``, ``x`` and
``x.detach()``) are one slot, so aliases need no special casing.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import operator
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dyngrad import dtypes as _dt
from dyngrad.dispatch import STATE, DispatchMode, dispatch, suspend
from dyngrad.tensor import Tensor

from . import prims as P
from . import results as R
from .ir import Graph, Value, VerifyError
from .prims import Primitive, traits
from .results import replay_view_array
from .scalars import TracedInt, TracedScalar, raw_number  # noqa: F401 - (the tracer's numbers)

_HERE = os.path.dirname(os.path.abspath(__file__))
_DYNGRAD = os.path.dirname(os.path.abspath(sys.modules["dyngrad"].__file__))


class Unsupported(Exception):
    """The trace cannot stand in for the function; ``str(exc)`` is the reason."""


class Via(enum.StrEnum):
    """How the runtime reaches a bound tensor at call time (:class:`Binding`)."""

    ARG = "arg"  # target: its index in the flattened arguments
    REF = "ref"  # target: a weak reference to the tensor object
    GRAD = "grad"  # target: the owner (a weak reference, or ("arg", index)); the tensor
    #                is ``owner.grad``
    ARRAY = "array"  # target: a weak reference to a numpy array shared through from_numpy
    SOURCE = "source"  # target(flat) reads it from the Python location it was read from,
    #                    such as ``self.hidden``: a location the call itself stores a new
    #                    tensor in, so each call reads whatever is there now


@dataclass(eq=False)
class Binding:
    """How the runtime finds an external tensor at call time: ``kind`` (a :class:`Via`)
    says what ``target`` is."""

    kind: Via
    target: Any
    name: str
    array: Any = None  # weak reference to the ndarray seen at trace time (identity guard)
    shape: tuple = ()
    dtype: Any = None
    strides: tuple = ()
    requires_grad: bool = False  # (SOURCE bindings: as at trace time)

    def owner(self, flat_args):
        """For GRAD bindings: the tensor whose .grad this is."""
        t = self.target
        return flat_args[t[1]] if isinstance(t, tuple) else t()

    def resolve(self, flat_args):
        """The tensor (or ndarray) now; None when it is gone."""
        if self.kind is Via.ARG:
            return flat_args[self.target]
        if self.kind is Via.GRAD:
            owner = self.owner(flat_args)
            return None if owner is None else owner._grad
        if self.kind is Via.SOURCE:
            return self.target(flat_args)
        return self.target()

    def now_at(self, reader, where: str, requires_grad: bool) -> None:
        """Make a REF binding a SOURCE one: from now on the tensor is read through
        ``reader(flat)`` (effect replay: the call stores a new tensor there each time).
        Changed in place, as result specs that reach the tensor hold this very binding."""
        self.kind, self.target, self.name = Via.SOURCE, reader, where
        self.requires_grad = requires_grad


@dataclass(eq=False)
class ScalarSource:
    """A Python number the function read through ``read_scalar``: ``owner[key]`` (or its
    ``index``-th element for tuples), fed to the graph at every call."""

    owner: Any  # weak reference when possible, else the object
    key: Any
    index: int | None
    value: Value
    observed: Any

    def read(self, flat):
        if self.owner is None:
            if self.key[0] == "arg":  # a float (or int) argument
                return float(flat[self.key[1]])
            return float(self.index(flat))  # a global or closure number: index holds its reader
        owner = self.owner() if isinstance(self.owner, weakref.ref) else self.owner
        v = owner[self.key]
        return v[self.index] if self.index is not None else v

    def source(self, i: int, ns: dict) -> str:
        """:meth:`read` as source text for a generated call path (``flat`` in scope; the
        objects it needs put in ``ns`` under names ending in ``i``): no method call."""
        if self.owner is None:
            if self.key[0] == "arg":
                return f"flat[{self.key[1]}]" if type(self.observed) is float else \
                    f"float(flat[{self.key[1]}])"  # (an int: the graph's scalars are float64)
            ns[f"S{i}"] = self.read
            return f"S{i}(flat)"
        ns[f"SK{i}"] = self.key
        if isinstance(self.owner, weakref.ref):
            ns[f"SW{i}"] = self.owner
            expr = f"SW{i}()[SK{i}]"
        else:
            ns[f"SO{i}"] = self.owner
            expr = f"SO{i}[SK{i}]"
        return expr if self.index is None else f"{expr}[{int(self.index)}]"


class Kept:
    """An object a side effect stores that existed before the call (or is immutable): effect
    replay stores the object itself (a ``("const", obj)`` spec)."""

    __slots__ = ("obj",)

    def __init__(self, obj) -> None:
        self.obj = obj


def user_frame(capture=None) -> str:
    """file:line of the innermost frame outside dyngrad and the compiler (of ``capture``'s
    interpreted code, while it runs: ``Capture.where_now``)."""
    loc = capture.where_now() if capture is not None else None
    if loc is not None:
        return loc
    f = sys._getframe(1)
    while f is not None:
        path = os.path.abspath(f.f_code.co_filename)
        if not path.startswith(_HERE) and not path.startswith(_DYNGRAD):
            return f"{os.path.basename(path)}:{f.f_lineno}"
        f = f.f_back
    return "?"


# ``type(x) is TracedInt`` as a C function, for map(): the tracer asks it of every operand of
# every op, and a generator expression is a Python frame each time
_is_traced_int = functools.partial(operator.is_, TracedInt)


def slot_key(t: Tensor) -> tuple:
    a = t._data
    # (the data pointer through __array_interface__, which is all C: ``a.ctypes`` builds a
    # Python helper object per call, twice the cost under the capture's watchdog)
    return (id(t._storage), a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str)


def _offsets(key: tuple) -> np.ndarray:
    """Byte offset of every element of a slot, in its shape."""
    _, ptr, shape, strides, _ = key
    off = np.zeros(shape, dtype=np.int64) + ptr
    for d, (n, s) in enumerate(zip(shape, strides)):
        view = [1] * len(shape)
        view[d] = n
        off = off + (np.arange(n, dtype=np.int64) * s).reshape(view)
    return off


def _overlap(a: tuple, b: tuple) -> bool:
    alo, ahi = _byte_range(a)
    blo, bhi = _byte_range(b)
    return alo < bhi and blo < ahi


def _byte_range(key: tuple) -> tuple:
    _, ptr, shape, strides, dt = key
    if 0 in shape:
        return (ptr, ptr)
    lo = ptr + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
    hi = ptr + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides)) + np.dtype(dt).itemsize
    return (lo, hi)


@dataclass(eq=False, frozen=True)
class Trace:
    """What one traced call produced (input to guards and the runtime). Never changed once
    made: the pipeline (``compiler/pipeline.py``) derives new traces from it
    (``dataclasses.replace``), the compiled graph and the write-backs it may do in place."""

    graph: Graph
    bindings: list  # one per graph input, in order
    scalar_sources: list
    writebacks: list  # (binding, output index, done in place): a bound tensor's new value
    grad_effects: list  # (owner binding, Value or None)
    out_spec: Any  # results.Spec: how each call's result is built from the outputs
    objects: list  # (weakref, version) of modules and optimizers used
    baked: list  # (where, value) Python numbers baked into the graph
    grad_guards: list = field(default_factory=list)  # (weakref owner, was None, name)
    grad_enabled: bool = True
    anomaly: bool = False  # detect_anomaly() was on (never: such calls run eagerly)
    prints: list = field(default_factory=list)  # dg.debug_print effects, in order
    checks: list = field(default_factory=list)  # the capture's checks on Python sources
    effects: list = field(default_factory=list)  # (kind, target, key): replayed Python
    #   effects (see compiler/api.py); their values are the out_spec's second half
    continuation: Any = None  # ([(argument index, output index)], retain_graph): the
    #   backward into the arguments' autograd history, run after each call (Tracer note)
    backward_inside: bool = False  # the call runs backward() itself
    version_updates: list = field(default_factory=list)  # (box, weak ref): expected
    #   versions moved on after each replay
    training: list = field(default_factory=list)  # (weakref, flag): the training flag of
    #   each module in ``objects`` when first used (train()/eval() leave versions alone)
    flags: list = field(default_factory=list)  # (weakref, name, value): flags library code
    #   decided by (dispatch.read_flag: DDP's no_sync), guarded by value
    backward: BackwardOutside | None = None  # for outputs differentiated after the call

    @property
    def joint(self) -> Graph:
        """The graph with the backward outside the call joined on: its cotangents as extra
        inputs, the gradients as extra outputs (a new Graph over the same nodes; the graph
        itself when there is no backward outside)."""
        g, bw = self.graph, self.backward
        if bw is None:
            return g
        return Graph(inputs=g.inputs + list(bw.cotangents), scalars=list(g.scalars),
                     nodes=list(g.nodes), outputs=g.outputs + list(bw.grads),
                     guards=list(g.guards), _next=g._next)


@dataclass(frozen=True)
class BackwardOutside:
    """The backward of the returned tensors, recorded for ``backward()`` after the call
    (:meth:`Tracer._trace_backward`): the joint graph takes ``cotangents`` as extra inputs
    and gives ``grads``, the gradients of the tensors ``leaves`` bind, as extra outputs."""

    leaves: tuple  # Bindings of the tensors receiving gradients
    grads: tuple  # their gradients' Values
    cotangents: tuple  # the cotangent inputs' Values, one per differentiable output


class Tracer(DispatchMode):
    """Records one call. Use :func:`trace_call`."""

    transparent = True  # (it records eager's operations: func transforms run as in eager)
    records_collectives = True  # (dist.all_reduce & co. are recorded as IR start/wait
    #                              nodes: Note [collectives in the IR] in dyngrad)

    def __init__(self, flat_args: list) -> None:
        self.graph = Graph()
        self.grad_enabled = STATE.grad_enabled  # (at the call's entry: a guard)
        self.saved_refs: dict[int, int] = {}  # id(tensor) -> references from saved tuples of
        #                                       the returned result's graph
        self.slots: dict[tuple, Value] = {}
        self.slot_tensor: dict[tuple, Tensor] = {}
        self.by_storage: dict[int, list] = {}
        self.input_binding: dict[tuple, Binding] = {}
        self.input_value: dict[tuple, Value] = {}
        self.arg_index = {id(a): i for i, a in enumerate(flat_args) if isinstance(a, Tensor)}
        self.attr_source: dict[int, tuple] = {}
        self.shared_arrays: dict[int, np.ndarray] = {}
        self.const_ids: set = set()
        self.keep: list = []  # keeps every tensor seen alive, so ids stay unique
        self.grad_effects: list = []
        self.objects: dict[int, tuple] = {}
        self.training: dict[int, tuple] = {}  # id -> (weakref, training flag at first use)
        self.scalar_sources: dict[tuple, ScalarSource] = {}
        self.baked: list = []
        self.created: list = []  # weak references to tensors made by traced ops
        self.unsupported: str | None = None
        self.names: dict[int, str] = {}
        self.grad_state: dict[int, tuple] = {}  # id(owner) -> (owner, grad was None at entry)
        self.backward_roots: dict[int, bool] = {}  # id(node) -> retain_graph
        self.backward_began: int | None = None  # nodes recorded when backward() first ran
        self.prints: list = []  # dg.debug_print calls: (items, sep, end)
        self.finished = False  # traced scalars outliving the trace act as plain floats
        self.alias_of: dict[int, Tensor] = {}  # id(alias from .data/detach()) -> its owner
        self.writes_to: dict[int, list] = {}  # id(storage) -> [(slot written, value)], in order
        # Note (argument history): a backward() inside the call stops at the autograd nodes
        # its arguments bring (the engine hands their gradients over: on_boundary); those
        # gradients leave the graph, and the backward continues eagerly into the arguments'
        # history after each compiled call (this tracing call continues at once: on_boundary),
        # so it reaches the leaves that history has now, not the ones it had at trace time.
        self.backward_boundary = {id(a._node): a._node for a in flat_args
                                  if isinstance(a, Tensor) and a._node is not None}
        self.boundary_args = {(id(a._node), a._out_nr): a for a in flat_args
                              if isinstance(a, Tensor) and a._node is not None}
        self.boundary_hits: list = []  # (node, gradient buffer, retain_graph)
        self.boundary_pending: list = []  # this backward's, until boundary_done
        self.capture = None  # the capture running the call (compiler/capture)
        self.open_collectives: dict[int, tuple] = {}  # id -> (work, where): started with
        #                            async_op (or DDP's armed reducer), not yet waited for
        self.flags: dict[tuple, tuple] = {}  # (id(owner), name) -> (weakref, name, value)
        self.copied: dict[int, tuple] = {}  # id(base array) -> (it, [(array copied into a
        #   tensor, its values then)]): baked into the graph (see capture.guard_copies)

    # ----------------------------------------------------------------- values and slots
    def _register(self, key: tuple, t: Tensor, v: Value) -> None:
        if key not in self.slot_tensor:
            self.by_storage.setdefault(key[0], []).append(key)
        self.slots[key] = v
        self.slot_tensor[key] = t
        self.keep.append(t)

    def value_of(self, t: Tensor) -> Value:
        key = slot_key(t)
        v = self.slots.get(key)
        if v is not None:
            return v
        if id(t) in self.const_ids:
            v = self.graph.add_const(t._data.copy())
            self._register(key, t, v)
            return v
        b = self._binding(t)
        v = self.graph.add_input(t._data.shape, t.dtype, b.name)
        self._register(key, t, v)
        self.input_binding[key] = b
        self.input_value[key] = v
        # Note: memory this trace already wrote through another slot (a captured view, an
        # alias in another layout) must be seen here too: the call-time array is read before
        # those writes, so apply them to the new slot's value in the order they happened.
        for other, _ in self.writes_to.get(key[0], ()):
            if other != key and _overlap(key, other):
                self.slots[key] = self._region_update(key, other, self.slots[other])
        return self.slots[key]

    def owner_ref(self, owner: Tensor):
        """How to reach ``owner`` at call time: its argument index, or a weak reference."""
        if id(owner) in self.arg_index:
            return ("arg", self.arg_index[id(owner)])
        return weakref.ref(owner)

    def _binding(self, t: Tensor) -> Binding:
        a = t._data
        meta = dict(array=weakref.ref(a), shape=a.shape, dtype=a.dtype, strides=a.strides)
        while id(t) in self.alias_of and id(t) not in self.arg_index:
            t = self.alias_of[id(t)]  # p.data, x.detach(): the same memory as their owner
        if id(t) in self.arg_index:
            i = self.arg_index[id(t)]
            return Binding(Via.ARG, i, f"arg{i}", **meta)
        if id(t) in self.attr_source:
            owner, attr = self.attr_source[id(t)]
            return Binding(Via.GRAD, self.owner_ref(owner), f"{self._name(owner)}.{attr}",
                           **meta)
        if id(t) in self.shared_arrays:
            arr = self.shared_arrays[id(t)]
            return Binding(Via.ARRAY, weakref.ref(arr), "from_numpy array", **meta)
        return Binding(Via.REF, weakref.ref(t), self._name(t), **meta)

    def _name(self, t) -> str:
        name = self.names.get(id(t))
        if name is None:
            name = f"{type(t).__name__.lower()}{len(self.names)}"
            self.names[id(t)] = name
        return name

    def _define(self, t: Tensor, v: Value) -> None:
        self._register(slot_key(t), t, v)
        self.created.append(weakref.ref(t))

    def where(self) -> str:
        """file:line of the user's code running now (the capture's frame, if it runs)."""
        return user_frame(self.capture)

    # ----------------------------------------------------------------- the mode
    def dispatch(self, prim, args, params):
        if self.unsupported is not None:
            with suspend(self):
                return dispatch(prim, *args, **params)
        if any(map(_is_traced_int, map(type, args))) or \
                any(map(_is_traced_int, map(type, params.values()))):
            args = [a._pin(prim.name) if type(a) is TracedInt else a for a in args]
            params = {k: p._pin(f"{prim.name}.{k}") if type(p) is TracedInt else p
                      for k, p in params.items()}
        ins = []
        for a in args:
            if isinstance(a, Tensor):
                ins.append(self.value_of(a))
            elif isinstance(a, TracedScalar) and a._tracer is self:
                # passed on as is: Primitive.apply gives numpy the plain float, and a backward
                # node saving it keeps the traced scalar, so the backward graph reads it too
                ins.append(a._value)
            else:
                if isinstance(a, (int, float)) and not isinstance(a, bool):
                    self.baked.append((f"{prim.name} literal", a))
                ins.append(a)
        for k, p in params.items():
            if isinstance(p, TracedScalar):
                self.guard_scalar(p, f"{prim.name}.{k}")
        with suspend(self):
            out = dispatch(prim, *args, **params)
        v = self.graph.add_node(prim, ins, dict(params), out._data.shape, out.dtype)
        self._define(out, v)
        return out

    def on_new(self, tensor, shared_array=None) -> None:
        self.keep.append(tensor)
        if shared_array is not None:
            self.shared_arrays[id(tensor)] = shared_array
        else:
            self.const_ids.add(id(tensor))

    def on_copied(self, array) -> None:
        root = array
        while isinstance(root.base, np.ndarray):
            root = root.base
        self.copied.setdefault(id(root), (root, []))[1].append((array, array.copy()))

    def on_attr(self, owner, attr, value) -> None:
        if attr in ("data", "detach"):  # an alias: bind it through its owner
            self.keep.extend((owner, value))
            self.alias_of[id(value)] = owner
            return
        if id(owner) not in self.grad_state:  # the first look at owner.grad: guard it
            self.keep.append(owner)
            self.grad_state[id(owner)] = (owner, value is None)
        if isinstance(value, Tensor) and slot_key(value) not in self.slots:
            self.keep.extend((owner, value))
            self.attr_source[id(value)] = (owner, attr)

    def on_python_call(self, what: str) -> None:
        if self.unsupported is None:
            self.unsupported = (f"{what} runs at {self.where()} (Python side effects cannot be "
                                f"replayed by a compiled call): remove it while the function "
                                f"is compiled, or call the function eagerly when it must run")

    def on_collective(self, work, started: bool) -> None:
        if started:
            self.open_collectives[id(work)] = (work, self.where())
        else:
            self.open_collectives.pop(id(work), None)

    def on_flag(self, owner, name: str, value) -> None:
        if value is not None and type(value) is not bool:  # (its guard compares by identity)
            self.on_python_call(f"{type(owner).__name__}.{name} (a flag of {value!r}, not a "
                                f"bool)")
            return
        key = (id(owner), name)
        if key not in self.flags:  # (its value at the call's entry: library code reports
            #                           a flag before it changes it)
            self.keep.append(owner)
            self.flags[key] = (weakref.ref(owner), name, value)

    def on_debug_print(self, args, sep, end) -> None:
        items = []
        for a in args:
            if isinstance(a, Tensor):
                items.append(("tensor", a))
                self.keep.append(a)
            elif isinstance(a, TracedScalar):
                items.append(("scalar", a))
            else:
                items.append(("const", str(a)))
        self.prints.append((items, sep, end))

    def source_scalar(self, key, name: str, reader, value: float) -> TracedScalar:
        """A global or closure float that changed between calls: a runtime input."""
        src = ScalarSource(None, key, reader, self.graph.add_scalar(name), value)
        self.scalar_sources[key] = src
        if type(value) is int:
            return TracedInt(value, self, src.value)
        return TracedScalar(float(value), self, src.value)

    def arg_scalar(self, index: int, value: float) -> TracedScalar:
        """A float argument that changed between calls: a runtime input from now on."""
        src = ScalarSource(None, ("arg", index), None, self.graph.add_scalar(f"arg{index}"),
                           value)
        self.scalar_sources[("arg", index)] = src
        if type(value) is int:
            return TracedInt(value, self, src.value)
        return TracedScalar(float(value), self, src.value)

    def on_backward(self, roots, retain_graph) -> None:
        if self.backward_began is None:
            self.backward_began = len(self.graph.nodes)
        for t in roots:
            if t._node is not None:
                self.backward_roots[id(t._node)] = retain_graph
                self.keep.append(t._node)

    def on_boundary(self, node, buf, retain_graph) -> None:
        """The engine stopped at an argument's autograd node: record the gradients (they
        leave the graph), and continue this tracing call's backward into the history right
        away, outside the tracer, as eager's backward would (compiled calls continue after
        the call: see :meth:`_continuation`)."""
        self.boundary_hits.append((node, list(buf), retain_graph))
        self.boundary_pending.append((node, buf))

    def boundary_done(self, retain_graph) -> None:
        """The end of a backward that stopped at arguments' nodes: continue it into their
        history now, in one pass (as eager's single backward), outside the tracer and the
        capture's watchdog (hooks there run eagerly, and again after each compiled call)."""
        roots, grads = [], []
        for node, buf in self.boundary_pending:
            for nr, g in enumerate(buf):
                a = self.boundary_args.get((id(node), nr))
                if g is not None and a is not None:
                    roots.append(a)
                    grads.append(g)
        self.boundary_pending.clear()
        if roots:
            from dyngrad.autograd import backward
            paused = self.capture.paused() if self.capture is not None else \
                contextlib.nullcontext()
            with suspend(self), paused:
                backward(roots, grads, retain_graph=retain_graph)

    def _continuation(self, flat_args, out_index):
        """(roots as (argument index, output index), retain_graph) for the runtime; raises
        Unsupported when continuing after the call could differ from eager's order."""
        if not self.boundary_hits:
            return None
        nodes = [h[0] for h in self.boundary_hits]
        if len({id(n) for n in nodes}) != len(nodes) or \
                len({bool(h[2]) for h in self.boundary_hits}) > 1:
            raise Unsupported("backward() runs more than once through the autograd history of "
                              "an argument; a compiled call continues into that history once, "
                              "after the call: call backward() once per call, or pass the "
                              "argument detached (x.detach().requires_grad_())")
        leaves = _history_leaves(nodes)
        for owner, _ in self.grad_state.values():
            if id(owner) in leaves:
                raise Unsupported(f"the function reads or sets {self._name(owner)}.grad, "
                                  f"which backward() reaches through the autograd history of an "
                                  f"argument; a compiled call continues into that history only "
                                  f"after the call: read or reset that .grad outside the "
                                  f"compiled function")
        roots = []
        index = {id(a): i for i, a in enumerate(flat_args) if isinstance(a, Tensor)}
        for node, buf, _ in self.boundary_hits:
            for nr, g in enumerate(buf):
                if g is None:
                    continue
                i = next((index[id(a)] for a in flat_args if isinstance(a, Tensor) and
                          a._node is node and a._out_nr == nr), None)
                if i is None:
                    raise Unsupported("backward() reaches an argument's history at an output "
                                      "no argument is: pass the tensor whose history it is as "
                                      "the argument, or detach it before the call")
                roots.append((i, out_index(self.value_of(g))))
        return roots, bool(self.boundary_hits[0][2])

    def on_object(self, obj) -> None:
        if id(obj) not in self.objects:
            self.objects[id(obj)] = (weakref.ref(obj), obj._version)
            if isinstance(getattr(obj, "training", None), bool):  # (a module: the flag
                #   its version does not count, Note [training is not counted by _version])
                self.training[id(obj)] = (self.objects[id(obj)][0], obj.training)

    def on_scalar(self, owner, key, value):
        opt = getattr(owner, "_owner", None)
        if opt is not None:
            self.on_object(opt)
        if isinstance(value, tuple):
            return tuple(self._scalar(owner, key, i, x) for i, x in enumerate(value))
        return self._scalar(owner, key, None, value)

    def _scalar(self, owner, key, index, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        if isinstance(value, TracedScalar) or type(value) is TracedInt:
            return value  # (stored by the call itself: already a value of the graph)
        cap = self.capture
        if cap is not None and (id(owner), key) in cap.written:
            return value  # stored by the call itself (a guarded or constant value), not the
            #               entry value a runtime input would read
        k = (id(owner), key, index)
        src = self.scalar_sources.get(k)
        if src is None:
            try:
                ref = weakref.ref(owner)
            except TypeError:
                ref = owner
            name = f"{key}" if index is None else f"{key}[{index}]"
            src = ScalarSource(ref, key, index, self.graph.add_scalar(name), value)
            self.scalar_sources[k] = src
            self.keep.append(owner)
        return TracedScalar(float(value), self, src.value)

    def scalar_op(self, prim: Primitive, *operands):
        """Python arithmetic on traced scalars, recorded in float64 (what Python computes);
        once the trace is finished, plain arithmetic."""
        vals = [float(raw_number(x)) for x in operands]
        result = traits(prim).python(*vals)
        if self.finished:
            return result
        self._scalar_domain(prim, operands, vals)
        ins = [x._value if isinstance(x, (TracedScalar, TracedInt)) else float(x)
               for x in operands]
        out = self.graph.new_value((), _dt.float64, weak=True)
        from .ir import Node
        node = Node(prim, ins, {}, out)
        out.producer = node
        self.graph.nodes.append(node)
        return TracedScalar(result, self, out)

    def _scalar_domain(self, prim: Primitive, operands, vals) -> None:
        """Where Python raises (``math.sqrt`` of a negative, a division by zero, ``0.0 **
        -1``) the recorded float64 node would give nan or inf: the trace guards that the
        operands stay where they were, so such a call runs eagerly and raises as eager's."""
        traced = [isinstance(x, (TracedScalar, TracedInt)) for x in operands]
        if prim is P.SQRT and traced[0]:
            self.scalar_compare(P.GE, operands[0], 0.0)
        elif prim is P.DIV and traced[1]:
            self.scalar_compare(P.NE, operands[1], 0.0)
        elif prim is P.POW and any(traced):
            if traced[0]:
                positive = self.scalar_compare(P.GT, operands[0], 0.0)
            else:
                positive = vals[0] > 0
            if not positive and traced[1]:  # (0 ** e, a negative base: the exponent pinned)
                self.guard_scalar(operands[1], "pow exponent")

    def scalar_compare(self, prim: Primitive, a, b) -> bool:
        result = traits(prim).python(raw_number(a), raw_number(b))
        if self.finished:
            return result
        out = self.graph.new_value((), _dt.bool_, weak=True)
        from .ir import Node
        ins = [x._value if isinstance(x, (TracedScalar, TracedInt)) else float(x)
               for x in (a, b)]
        node = Node(prim, ins, {}, out)
        out.producer = node
        self.graph.nodes.append(node)
        self.graph.add_guard(out, result, f"{a._value.name or 'scalar'} {prim.name} "
                             f"{raw_number(b)!r}" if isinstance(a, (TracedScalar, TracedInt))
                             else prim.name,
                             self.where())
        return result

    def guard_scalar(self, s: TracedScalar, kind: str) -> None:
        if self.finished:
            return
        self.graph.add_guard(s._value, s._v if type(s) is TracedInt else float(s), kind,
                             self.where())

    def on_read(self, tensor, kind) -> None:
        if self.unsupported is not None:
            return
        if kind in ("numpy", "array", "tolist", "dlpack", "copy"):
            self.unsupported = (f"tensor data leaves the trace through {kind} at "
                                f"{self.where()} (it cannot be replayed): return the tensor "
                                f"and convert it outside the compiled function")
        elif kind == "format":
            self.unsupported = (f"a tensor is printed or formatted at {self.where()}; use "
                                f"dg.debug_print inside compiled functions")
        elif kind == "item" and tensor.dtype.is_floating_point:
            # a number that may be logged or returned: an output, guarded only if it decides
            # control flow (TracedScalar's comparisons and truth test)
            v = self.value_of(tensor)
            flat = self.graph.add_node(P.RESHAPE, [v], {"shape": ()}, (), tensor.dtype)
            out = self.graph.new_value((), _dt.float64, weak=True)
            from .ir import Node
            node = Node(P.CAST, [flat], {"dtype": _dt.float64}, out)
            out.producer = node
            self.graph.nodes.append(node)
            return TracedScalar(float(tensor._data.reshape(()).item()), self, out)
        else:  # bool, float, int, index, nonzero, positions, size: control flow
            v = self.value_of(tensor)
            self.graph.add_guard(v, tensor._data.copy(), kind, self.where())
        return None

    def on_write(self, tensor, what, value) -> None:
        if self.unsupported is not None:
            return
        if what == "inplace":
            self._write(tensor, value)
        elif what == "grad":
            self.keep.append(tensor)
            self.grad_state.setdefault(id(tensor), (tensor, None))  # set before any read
            if value is not None:
                self.keep.append(value)
            self.grad_effects.append((tensor, value))
        elif what == "requires_grad":  # (a view made inside, e.g. func.jacrev's alias of its
            #                             argument, is a new leaf: as in eager, no input changes)
            if (slot_key(tensor) in self.input_binding or id(tensor) in self.arg_index) \
                    and not _is_created(tensor, self.created):
                self.unsupported = (f"requires_grad of an input is changed at {self.where()}: "
                                    f"set it before calling the compiled function")
        elif what == "data":
            if value._data is tensor._data and value._storage is tensor._storage:
                return  # `p.data -= u`: the alias written in place, stored back (a no-op)
            self.unsupported = (f"`.data` is rebound at {self.where()}: update it in place "
                                f"(p.data.copy_(new), p.data -= u) or rebind it outside the "
                                f"compiled function")

    # ----------------------------------------------------------------- writes
    def _write(self, t: Tensor, new: Tensor) -> None:
        new_v = self._in_layout_of(t, new, self.value_of(new))
        key = slot_key(t)
        if key not in self.slots:
            self.value_of(t)
        self.slots[key] = new_v
        self.slot_tensor[key] = t
        writes = self.writes_to.setdefault(key[0], [])
        writes[:] = [w for w in writes if w[0] != key] + [(key, new_v)]
        for other in self.by_storage.get(key[0], ()):
            if other != key and _overlap(key, other):
                self.slots[other] = self._region_update(other, key, new_v)

    def _in_layout_of(self, t: Tensor, new: Tensor, v: Value) -> Value:
        """An in-place write keeps ``t``'s memory layout (eager copies into t's own memory),
        and later reductions iterate in memory order: for a permuted layout (a transposed
        tensor) give the value that layout too — permute, copy, permute back — so compiled
        sums run in eager's order. Other layouts keep the value as computed."""
        a, b = t._data, new._data
        if a.strides == b.strides or a.ndim < 2 or a.flags.c_contiguous:
            return v
        perm = tuple(int(i) for i in np.argsort([-abs(s) for s in a.strides], kind="stable"))
        if not a.transpose(perm).flags.c_contiguous:
            return v
        inv = tuple(int(i) for i in np.argsort(perm))
        g = self.graph
        shape_p = tuple(a.shape[i] for i in perm)
        p1 = g.add_node(P.PERMUTE, [v], {"perm": perm}, shape_p, v.dtype)
        c = g.add_node(P.CAST, [p1], {"dtype": v.dtype}, shape_p, v.dtype)
        return g.add_node(P.PERMUTE, [c], {"perm": inv}, a.shape, v.dtype)

    def _region_update(self, dst: tuple, src: tuple, src_value: Value) -> Value:
        """dst's value after src's elements were overwritten with ``src_value``."""
        off_d, off_s = _offsets(dst), _offsets(src)
        flat_s = off_s.ravel()
        order = np.argsort(flat_s, kind="stable")
        pos = np.searchsorted(flat_s[order], off_d.ravel())
        pos = np.minimum(pos, flat_s.size - 1)
        hit = flat_s[order][pos] == off_d.ravel()
        if not hit.any():
            return self.slots[dst]
        idx = np.where(hit, order[pos], 0).reshape(off_d.shape).astype(np.int64)
        g = self.graph
        flat = g.add_node(P.RESHAPE, [src_value], {"shape": (-1,)}, (flat_s.size,),
                          src_value.dtype)
        picked = g.add_node(P.GATHER, [flat, g.add_const(idx)], {"axis": 0}, idx.shape,
                            src_value.dtype)
        if hit.all():
            return picked
        mask = g.add_const(hit.reshape(off_d.shape))
        return g.add_node(P.WHERE, [mask, picked, self.slots[dst]], {}, idx.shape,
                          src_value.dtype)

    # ----------------------------------------------------------------- finishing
    def finish(self, result, flat_args) -> Trace:
        """Close the trace: outputs, write-backs and effects; raises Unsupported."""
        try:
            return self._finish(result, flat_args)
        finally:
            self.finished = True

    def _finish(self, result, flat_args) -> Trace:
        if self.unsupported is not None:
            raise Unsupported(self.unsupported)
        for ref, name, value in self.flags.values():
            owner = ref()
            if owner is not None and getattr(owner, name) is not value:
                raise Unsupported(f"{type(owner).__name__}.{name} was {value} when the call "
                                  f"began and is {getattr(owner, name)} at its end: a compiled "
                                  f"call would not change it; change it outside the function")
        for work, where in self.open_collectives.values():
            raise Unsupported(f"{work.what}, started at {where}, is not waited for inside "
                              f"the call (its communication would be skipped by a compiled "
                              f"call): wait for it inside the function — for "
                              f"DistributedDataParallel, compile the whole step: forward, "
                              f"backward() and the optimizer")
        g = self.graph
        outputs: list[Value] = []

        def out_index(v: Value) -> int:
            outputs.append(v)
            return len(outputs) - 1

        writebacks = []
        for key, b in self.input_binding.items():
            final = self.slots[key]
            if final is not self.input_value[key]:
                writebacks.append((b, out_index(final)))
        effects = []
        for owner, value in self.grad_effects:
            okey = slot_key(owner)
            if okey not in self.input_binding:
                if not _is_created(owner, self.created):
                    self.value_of(owner)
                    okey = slot_key(owner)
            ob = self.input_binding.get(okey)
            if ob is None:
                continue  # a tensor made inside the call: local
            effects = [e for e in effects if e[0] is not ob]  # the last assignment wins
            effects.append((ob, None if value is None else out_index(self.value_of(value))))
        continuation = self._continuation(flat_args, out_index)
        self.boundary_hits.clear()
        returned: set = set()
        grad_outputs: list = []  # returned tensors a backward() may run through later
        prints = self._print_specs(out_index)
        out_spec = self._result_spec(result, flat_args, out_index, grad_outputs, returned)
        backward = None
        if grad_outputs:
            backward = self._trace_backward(grad_outputs)
        g.outputs = outputs
        if self.backward_began is not None:
            g.late = {n.out.id for n in g.nodes[self.backward_began:]}
        # (a module or optimizer made inside the call and gone now — `nn.MSELoss()(out, y)`
        # — is made again by the next call: its version needs no guard)
        objects = [(r, v) for r, v in self.objects.values() if r() is not None]
        training = [(r, t) for r, t in self.training.values() if r() is not None]
        by_value = {id(self.input_value[k]): b for k, b in self.input_binding.items()}
        bindings = [by_value[id(v)] for v in g.inputs]
        scalars = sorted(self.scalar_sources.values(), key=lambda s: s.value.id)
        g.scalars = [s.value for s in scalars]
        grad_guards = [(self.owner_ref(o), none, self._name(o))
                       for o, none in self.grad_state.values() if none is not None]
        trace = Trace(g, bindings, scalars, writebacks, effects, out_spec,
                      objects, self.baked, grad_guards, grad_enabled=self.grad_enabled,
                      prints=prints, backward=backward, continuation=continuation,
                      backward_inside=bool(self.backward_roots), training=training,
                      flags=[f for f in self.flags.values() if f[0]() is not None])
        self._check_escapes(returned)
        return trace

    def _result_spec(self, result, flat_args, out_index, grad_outputs: list,
                     returned: set):
        """The spec the runtime builds each call's result from (``compiler/results.py``).

        Note (the result aliases as eager's does): a tensor returned twice is one object
        (``return y, y``); a returned view of another returned tensor, or of an argument or
        captured tensor, is made again at call time by replaying its movement ops (its
        ``_view_chain``) on that tensor's array, so it shares its storage and writes through
        one are seen by the other; an argument or captured tensor comes back as itself
        (written in place or not), and a returned ``.grad`` as its owner's ``.grad`` after
        the call's effects. Tensors returned twice or viewed by another returned tensor are
        built first, into slots: ``Let(slots, body)``, with ``Ref(n)`` for slot n in
        ``body``. The common result, distinct fresh tensors, has no slots.
        """
        tensors: list = []
        count: dict[int, int] = {}

        def collect(x) -> None:
            if isinstance(x, Tensor):
                if id(x) not in count:
                    tensors.append(x)
                    self.value_of(x)  # (an argument or captured tensor not read yet: bound)
                count[id(x)] = count.get(id(x), 0) + 1
            elif isinstance(x, (tuple, list)):
                for e in x:
                    collect(e)
            elif isinstance(x, dict):
                for e in x.values():
                    collect(e)

        collect(result)
        # a view's source comes earlier in this order (fewer movement ops), so the slots
        # can be built in it
        order = {id(t): (len(t._view_chain), k) for k, t in enumerate(tensors)}
        sources: dict[int, tuple] = {}  # id(view) -> (returned tensor or spec, ops)
        for x in tensors:
            if x._base is not None and self._bound_binding(x, flat_args) is None:
                src = self._view_source(x, tensors, order, flat_args)
                if src is not None:
                    sources[id(x)] = src
        viewed = {id(src) for src, _ in sources.values() if isinstance(src, Tensor)}
        shared = sorted((t for t in tensors if count[id(t)] > 1 or id(t) in viewed),
                        key=lambda t: order[id(t)])
        slot: dict[int, int] = {}
        spent_seen: set = set()

        def tensor_spec(x: Tensor):
            if x._base is not None:  # a returned view keeps its base alive, as in eager
                returned.add(id(x._base))
            returned.add(id(x))
            b = self._bound_binding(x, flat_args)
            if b is not None:  # the very tensor (an argument or captured tensor) comes back
                return R.Input(b)
            owner = self._grad_owner(x)
            if owner is not None:  # a .grad: the owner's, once the call's effects are done
                return R.GradOf(self.owner_ref(owner))
            role = ("plain", x._requires_grad)
            if x._node is not None and x._requires_grad:
                if self.backward_roots.get(id(x._node)) is False or \
                        self._reaches_spent(x._node):
                    role = ("spent", x._node.name())  # backward already ran through it
                    # (what its graph still saves — `out.mean()`'s divisor after a backward
                    # through `out` — is held by the result only, as in eager: no escape)
                    _count_saved(x._node, self.saved_refs, spent_seen)
                else:  # backward outside: a compiled backward graph will serve it
                    grad_outputs.append(x)
                    role = ("grad", len(grad_outputs) - 1)
            src = sources.get(id(x))
            if src is not None:
                base, ops = src
                base_spec = R.Ref(slot[id(base)]) if isinstance(base, Tensor) else base
                return R.View(base_spec, ops, role)
            v = self.value_of(x)
            if role[0] == "grad":
                return R.GradOut(role[1], out_index(v))
            if role[0] == "spent":
                return R.Spent(out_index(v), role[1])
            b = self.input_binding.get(slot_key(x))
            if b is not None and b.kind in (Via.ARG, Via.REF):  # an alias (x.detach(), p.data)
                return R.Alias(b, x._requires_grad)
            return R.Fresh(out_index(v))

        lets = []
        for t in shared:
            lets.append(tensor_spec(t))
            slot[id(t)] = len(lets) - 1

        def spec_of(x):
            if isinstance(x, Tensor):
                n = slot.get(id(x))
                return R.Ref(n) if n is not None else tensor_spec(x)
            if isinstance(x, TracedScalar):
                return R.Number(out_index(x._value), float)
            if type(x) is TracedInt:
                return R.Number(out_index(x._value), int)
            if isinstance(x, tuple) and not hasattr(x, "_fields"):
                return R.Seq(tuple, tuple(spec_of(e) for e in x))
            if isinstance(x, tuple):
                return R.NamedTuple(type(x), tuple(spec_of(e) for e in x))
            if isinstance(x, list):
                return R.Seq(list, tuple(spec_of(e) for e in x))
            if isinstance(x, dict):
                return R.Dict(tuple(x), tuple(spec_of(e) for e in x.values()))
            if x is None or isinstance(x, (bool, int, float, str)):
                return R.Const(x)
            if isinstance(x, Kept):
                return R.Const(x.obj)
            raise Unsupported(f"the function returns a {type(x).__name__}; compiled functions "
                              f"return tensors, numbers, None and tuples/lists/dicts of them: "
                              f"return those, and build the {type(x).__name__} outside")

        body = spec_of(result)
        return R.Let(tuple(lets), body) if lets else body

    def _reaches_spent(self, node) -> bool:
        """Whether ``node``'s graph reaches a root a backward() inside the call freed (so a
        backward through it raises in eager, as it must through the spent result)."""
        from dyngrad.autograd.graph import FREED
        spent = {k for k, retain in self.backward_roots.items() if retain is False}
        if not spent:
            return False
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n is None or id(n) in seen:
                continue
            if id(n) in spent or getattr(n, "saved", None) is FREED:  # (freed by it)
                return True
            seen.add(id(n))
            stack.extend(e[0] for e in n.next if e is not None)
        return False

    def _bound_binding(self, x: Tensor, flat_args) -> Binding | None:
        """The binding of ``x`` when ``x`` is the very argument or captured tensor bound."""
        b = self.input_binding.get(slot_key(x))
        if b is not None and ((b.kind is Via.ARG and flat_args[b.target] is x) or
                              (b.kind is Via.REF and b.target() is x)):
            return b
        return None

    def _grad_owner(self, x: Tensor) -> Tensor | None:
        """The tensor from outside the call whose ``.grad`` is ``x`` now, if any."""
        for owner, _ in self.grad_state.values():
            if owner._grad is x and not _is_created(owner, self.created):
                return owner
        return None

    def _view_source(self, x: Tensor, tensors: list, order: dict, flat_args):
        """(source, movement ops) that make view ``x`` again at call time: the nearest
        returned tensor earlier in ``order``, or (as the spec reaching it) an argument, a
        captured tensor or a ``.grad``, whose view chain starts ``x``'s; None when there is
        none, or when the ops replayed on the source's array do not give ``x``'s very
        memory and layout."""
        cands = [t for t in tensors if t is not x and order[id(t)] < order[id(x)]]
        bound = []  # (tensor, the spec reaching it at call time)
        for b in self.input_binding.values():
            t = flat_args[b.target] if b.kind is Via.ARG else \
                b.target() if b.kind is Via.REF else None
            if t is not None:
                bound.append((t, R.Input(b)))
        for owner, _ in self.grad_state.values():
            if owner._grad is not None and not _is_created(owner, self.created):
                bound.append((owner._grad, R.GradOf(self.owner_ref(owner))))
        best = None
        for t, src in [(t, t) for t in cands] + bound:
            ops = _view_suffix(x, t)
            if ops is not None and (best is None or len(ops) < len(best[1])):
                best = (src, ops)
        return best

    def _trace_backward(self, outs: list) -> tuple:
        """Backward outside: record what ``autograd.grad(outs, leaves)`` does, with the
        cotangents as extra graph inputs, so the runtime can split the joint graph into a
        forward part (which also returns the values backward needs) and a backward part run
        by the returned tensors' grad_fn. The eager graph is retained: the first call's own
        outputs stay differentiable."""
        from dyngrad.autograd import grad as autograd_grad
        from dyngrad.dispatch import push_mode
        leaves = []
        for key, b in self.input_binding.items():
            t = self.slot_tensor.get(key)
            if t is not None and t._requires_grad and self.slots[key] is self.input_value[key]:
                leaves.append((b, t))
        n_guards = len(self.graph.guards)
        cots, cot_values = [], []
        for o in outs:
            c = Tensor._fresh(np.ones(o._data.shape, o._data.dtype))
            v = self.graph.new_value(o._data.shape, o.dtype, "cotangent")
            self._register(slot_key(c), c, v)
            cots.append(c)
            cot_values.append(v)
        try:
            with push_mode(self):
                grads = autograd_grad(outs, [t for _, t in leaves], grad_outputs=cots,
                                      retain_graph=True, allow_unused=True) if leaves else ()
        except VerifyError:  # (the compiler's own error: not the user's graph)
            raise
        except RuntimeError as exc:  # (the retained graph saw an in-place change since, as
            # when the call's own optimizer step updated what it saved: a backward() of these
            # tensors would raise in eager too, so there is nothing to record; this call's
            # result stands, as eager's)
            raise Unsupported(f"the backward of the tensors the call returns or keeps cannot "
                              f"be recorded: {exc} To compile the call, detach the tensors it "
                              f"keeps between calls (self.hidden = h.detach()), or do not "
                              f"retain the graph its optimizer step changes") from None
        if self.unsupported is not None:
            raise Unsupported(self.unsupported)
        if len(self.graph.guards) != n_guards:
            raise Unsupported("backward() of a returned tensor reads tensor values (a value "
                              "guard after the call returned cannot be honoured): call "
                              "backward() inside the compiled function, or avoid data-dependent "
                              "Python control flow in its gradient (hooks, custom functions)")
        used = [(b, self.value_of(g)) for (b, _), g in zip(leaves, grads) if g is not None]
        seen: set = set()
        for o in outs:  # what the retained eager graph keeps is not an escape (see
            _count_saved(o._node, self.saved_refs, seen)  # _check_escapes)
        return BackwardOutside(tuple(b for b, _ in used), tuple(v for _, v in used),
                               tuple(cot_values))

    def _print_specs(self, out_index) -> list:
        """debug_print effects with their tensors replaced by output indices (a method, so
        no local variable keeps a tensor alive during the escape check)."""
        prints = []
        for items, sep, end in self.prints:
            spec = []
            for kind, x in items:
                if kind == "tensor":
                    spec.append(("tensor", out_index(self.value_of(x))))
                elif kind == "scalar":
                    spec.append(("scalar", out_index(x._value)))
                else:
                    spec.append(("const", x))
            prints.append((spec, sep, end))
        return prints

    def _unexplained(self, alive: list) -> list:
        """The tensors of ``alive`` referred to by more than the returned result's graph
        (the saved tuples of its nodes) and the ``_base`` of live tensors made here — the
        references counted exactly (``sys.getrefcount``), so a tensor also stored anywhere
        else, by any code, is one too many and stays an escape."""
        tensors = [r() for r in self.created]
        base_refs: dict[int, int] = {}
        for t in tensors:
            if t is not None and t._base is not None:
                base_refs[id(t._base)] = base_refs.get(id(t._base), 0) + 1
        out = []
        for r in alive:
            t = r()
            if t is None:
                continue
            known = self.saved_refs.get(id(t), 0) + base_refs.get(id(t), 0)
            # (getrefcount's argument, this local and the list of live tensors above)
            if sys.getrefcount(t) - 3 > known:
                out.append(r)
        return out

    def _check_escapes(self, allowed: set) -> None:
        """A tensor made by a traced op that is still alive once the tracer lets go of it
        (other than the returned ones and new .grad fields) was stored into Python state —
        e.g. optimizer state created on the first step. Replaying the trace would not
        recreate that store, so the trace is rejected."""
        allowed = set(allowed) | {id(v) for _, v in self.grad_effects if v is not None}
        self.keep.clear()
        self.slot_tensor.clear()
        self.attr_source.clear()
        self.grad_effects.clear()
        self.prints.clear()
        self.alias_of.clear()
        self.grad_state.clear()
        alive = [r for r in self.created if r() is not None and id(r()) not in allowed]
        if alive:  # cycles (autograd nodes and their tensors): the young generations first,
            import gc  # which is usually enough and costs far less than a full collection
            gc.collect(1)
            alive = [r for r in alive if r() is not None]
            if alive:
                gc.collect()
                alive = [r for r in alive if r() is not None]
        if alive:  # held only by the returned result's graph (saved by its nodes, or the
            alive = self._unexplained(alive)  # base of such tensors or of returned views)
        if alive:
            t = alive[0]()
            if os.environ.get("DYNGRAD_DEBUG_ESCAPES"):
                import gc
                for r in gc.get_referrers(t):
                    print("held by", type(r), str(r)[:100])
                    for r2 in gc.get_referrers(r):
                        print("   which is held by", type(r2), str(r2)[:300].replace("\n", " "))
            raise Unsupported(f"a tensor made inside the function ({t.dtype.name}"
                              f"{list(t.shape)}) is kept in Python state the compiled function "
                              f"cannot update (e.g. optimizer state created on its first step); "
                              f"the next call traces again")


def _view_suffix(x: Tensor, t: Tensor) -> tuple | None:
    """The movement ops making view ``x`` from ``t`` (a tensor over the same root, whose
    chain starts ``x``'s), checked to give ``x``'s memory and layout; else None."""
    rt, chain_t = (t._base, t._view_chain) if t._base is not None else (t, ())
    chain_x = x._view_chain
    if len(chain_t) > len(chain_x) or slot_key(rt) != slot_key(x._base):
        return None
    for (p, a), (q, b) in zip(chain_t, chain_x):
        try:
            if p is not q or not bool(a == b):
                return None
        except (ValueError, TypeError):  # (parameters that do not compare)
            return None
    ops = chain_x[len(chain_t):]
    try:
        arr = replay_view_array(t._data, ops)
    except Exception:  # noqa: BLE001 - no replay: the view is returned as a fresh tensor
        return None
    a = x._data
    if arr.shape != a.shape or arr.strides != a.strides or arr.dtype != a.dtype or \
            arr.ctypes.data != a.ctypes.data:
        return None
    return ops


def _history_leaves(nodes: list) -> set:
    """ids of the leaf tensors the autograd graph below ``nodes`` accumulates into."""
    from dyngrad.autograd.graph import AccumulateGrad
    ids, stack, seen = set(), list(nodes), set()
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, AccumulateGrad):
            leaf = n.leaf()
            if leaf is not None:
                ids.add(id(leaf))
            continue
        stack.extend(e[0] for e in n.next if e is not None)
    return ids


def _is_created(t: Tensor, created: list) -> bool:
    return any(r() is t for r in created)


def _count_saved(root, counts: dict, seen: set) -> None:
    """Add to ``counts`` (id -> references) each tensor saved by the backward nodes reachable
    from ``root`` (every occurrence in a node's saved tuple is one reference); ``seen``: the
    nodes counted already."""
    stack = [root]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        for attr in ("saved", "to_save"):
            held = getattr(n, attr, ())
            if isinstance(held, (tuple, list)):
                for t in held:
                    if isinstance(t, Tensor):
                        counts[id(t)] = counts.get(id(t), 0) + 1
        stack.extend(e[0] for e in n.next if e is not None)
