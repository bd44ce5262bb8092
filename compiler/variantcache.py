"""Variants kept across processes: a compiled function's traces, kept on disk with their
assumptions, so that a new process's first calls skip the trace as well as the passes.

A variant's guards name objects of the process that traced it: a bound tensor by weak
reference, a module by the version counter it had, a global function by identity. None of
that means anything in another process. So a variant is kept as a *manifest* in which every
such object is named by what stays true across processes, and checked against the live
objects before anything of it is used:

- **Objects by path.** Every object the trace holds — a parameter, a buffer, an optimizer's
  state tensor, a module, a ``param_groups`` dict — is named by a path from the call's
  roots: the flattened arguments, the compiled function's closure cells (and ``self`` for a
  method), and the module globals its code or the capture's sources name; then attributes,
  items, ``.grad``, an optimizer's ``state[p]`` by the path of ``p``. The path is found by a
  walk from the roots after the trace (:class:`_Locator`) and followed again on load.
- **What the path must lead to** (a *signature*, checked on load): a tensor of the same
  type, shape, strides, dtype, ``requires_grad`` and leafness, sharing memory with the
  others exactly as at trace time; a versioned object (a module, an optimizer) of the same
  class whose state fingerprint is equal (see below); anything else of the same class.
- **Functions, classes and modules by name.** A module by its name; a module-level
  function, class or builtin by module and qualified name — and, for the user's code (not
  the library's, which the plan cache's key already pins: ``_sources``), a digest of its
  code, defaults and class body.
- **Versions as fingerprints.** Within a process a module's ``_version`` says that no
  attribute was assigned since the trace. Across processes the counter is replaced by a
  fingerprint of the object's ``__dict__``: plain values by type and value, tensors by their
  signature, containers element by element, objects by class and by which of them are the
  same object, functions by name and digest. An optimizer's hyperparameters and step counts
  are left out: they are read at each step through ``Optimizer.hyper`` and guarded (or fed
  to the graph) by value, never through the version.
- **The call itself.** ``build_guards`` takes what a guard expects from the call it is
  given — on restore the new call, whose guards would then pass whatever it is. So the
  manifest keeps the traced call's arguments (:func:`_argument_facts`), which of them alias
  captured tensors (:func:`_aliasing`), the default dtype, and what the capture read of the
  library unguarded (:func:`library_reads`, fixed within a process, not across); each must
  be equal on load. Values a trace baked from an array it held by identity are compared by
  digest (``dg.tensor(ARR)``).

On load the manifest is unpickled with every name resolved against the live objects, each
signature checked, the version checks given today's counters, and the guards built from it
as after a trace (``pipeline.compile_trace``), with the executables from the plan cache
(``plancache.py``). The restored variant serves a call only if its guards then hold. Anything
that does not resolve, match or pickle means no manifest: the call traces as without this
cache. A variant is not kept when it replays Python effects (stores into Python state), runs
collectives, reads a number through a generated reader, or holds anything without a path.

A manifest sits in the plan cache's directory under a key of the function's module,
qualified name and code, and the plan cache's environment (sources, versions, target,
settings); at most :data:`KEPT` per function, the newest first. ``DYNGRAD_PLAN_CACHE=0``
turns it off with the plan cache, ``DYNGRAD_VARIANT_CACHE=0`` alone; in ``roundtrip`` mode
(the test suite's) every variant traced is kept and restored in the same process, and the
restored one is run.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import os
import pickle
import sys
import types
import weakref
from collections import Counter, deque
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import numpy as np

from dyngrad.autograd.graph import Node
from dyngrad.nn.module import Module
from dyngrad.optim.optimizer import Optimizer
from dyngrad.tensor import Storage, Tensor

from . import plancache
from .capture.checks import Check, Version, is_plain
from .capture.library import is_library_module
from .capture.sources import Namer, Source
from .generated import eval_generated
from .trace import ScalarSource, Trace, Via

MAGIC = b"DGVARS02"
KEPT = 8  # manifests kept per function
WALK = 200_000  # objects the locator visits at most
stats = {"stored": 0, "restored": 0, "refused": 0, "unkept": 0}
unkept: Counter = Counter()  # why variants were not kept (the first words), for debugging


def mode() -> str:
    """'on', 'off' or 'roundtrip': the plan cache's mode (``DYNGRAD_PLAN_CACHE``), unless
    ``DYNGRAD_VARIANT_CACHE=0`` turns variants off alone (then a new process traces, and
    takes only the plans)."""
    if os.environ.get("DYNGRAD_VARIANT_CACHE", "1").strip().lower() in ("0", "off", "false",
                                                                         "no"):
        return "off"
    return plancache.mode()


class Refused(Exception):
    """The variant cannot be kept, or a manifest does not hold here (why, as the message)."""


# ----------------------------------------------------------------------------- names
_HEAPTYPE = 1 << 9  # (Py_TPFLAGS_HEAPTYPE: a class made by a class statement)
_DIGESTS: dict = {}  # id -> (object, digest), for one dump or load (cleared by each)
_QUALS: dict = {}  # id -> (object, qual(object)), likewise


def qual(obj) -> tuple | None:
    """``("qual", module, qualname, digest)`` for a module-level function, class or builtin
    found again by its module and qualified name, or None (once per object in a dump or a
    load: a manifest names the same classes hundreds of times)."""
    q = _QUALS.get(id(obj))
    if q is not None and q[0] is obj:
        return q[1]
    r = _qual(obj)
    _QUALS[id(obj)] = (obj, r)
    return r


def _qual(obj) -> tuple | None:
    mod, qn = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(mod, str) or not isinstance(qn, str) or "<" in qn:
        return None
    if isinstance(obj, type) and not obj.__flags__ & _HEAPTYPE:  # (a static type: the
        return ("qual", mod, qn, "")  # interpreter's or an extension's, fixed by versions)
    m = sys.modules.get(mod)
    if m is None or _lookup(m, qn) is not obj:
        return None
    if is_library_module(m):
        return ("qual", mod, qn, "")
    d = _DIGESTS.get(id(obj))
    if d is None or d[0] is not obj:
        d = _DIGESTS[id(obj)] = (obj, _digest(obj))
    return ("qual", mod, qn, d[1])


def _lookup(m, qn: str):
    obj = m
    for part in qn.split("."):
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if obj is None:
            return None
    return obj


def _digest(obj) -> str:
    """A digest of the user's function (its code, defaults and closure) or class (its body
    and bases): equal digests, the same behaviour."""
    h = hashlib.sha256()
    _feed(h, obj, set())
    return h.hexdigest()


def _feed_code(h, code: types.CodeType) -> None:
    """Feed a code object by its parts (``marshal``'s bytes depend on reference counts:
    the same code marshals differently once the capture has read it)."""
    h.update(code.co_code)
    h.update(repr((code.co_name, code.co_names, code.co_varnames, code.co_freevars,
                   code.co_cellvars, code.co_argcount, code.co_posonlyargcount,
                   code.co_kwonlyargcount, code.co_flags)).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _feed_code(h, c)
        else:
            h.update(_const_repr(c).encode() + b"\0")


def _const_repr(c) -> str:
    if isinstance(c, frozenset):  # (its order follows string hashes: randomised per process)
        return "frozenset(" + ",".join(sorted(map(_const_repr, c))) + ")"
    if isinstance(c, tuple):
        return "(" + ",".join(map(_const_repr, c)) + ")"
    return f"{type(c).__name__}:{c!r}"


def _name_of(v) -> tuple:
    return (getattr(v, "__module__", None), getattr(v, "__qualname__", type(v).__qualname__))


def _feed(h, obj, seen: set) -> None:
    """Feed the code of ``obj`` (a function or class) and of what it holds; what was fed
    already (a method's ``__class__`` cell) or is not the user's code goes in by name."""
    if id(obj) in seen:
        h.update(repr(_name_of(obj)).encode())
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        _feed_code(h, obj.__code__)
        h.update(repr((_plain_repr(obj.__defaults__), _plain_repr(obj.__kwdefaults__))).encode())
        for cell in obj.__closure__ or ():
            try:
                v = cell.cell_contents
            except ValueError:
                v = None
            _feed_value(h, v, seen)
    elif isinstance(obj, type):
        h.update(repr([_name_of(b) for b in obj.__bases__]).encode())
        for b in obj.__bases__:
            if b.__flags__ & _HEAPTYPE and not is_library_module(sys.modules.get(b.__module__)):
                _feed(h, b, seen)
        for k, v in sorted(vars(obj).items()):
            if k in ("__dict__", "__weakref__", "__doc__", "__module__", "__qualname__"):
                continue
            h.update(k.encode() + b"\0")
            _feed_value(h, v, seen)
    else:
        h.update(repr(type(obj)).encode())


def _feed_value(h, v, seen: set) -> None:
    if isinstance(v, (staticmethod, classmethod)):
        v = v.__func__
    if isinstance(v, property):
        for f in (v.fget, v.fset, v.fdel):
            _feed_value(h, f, seen)
        return
    if isinstance(v, (types.FunctionType, type)):
        m = sys.modules.get(getattr(v, "__module__", None) or "")
        if m is not None and is_library_module(m):
            h.update(repr(_name_of(v)).encode())
        else:
            _feed(h, v, seen)
    elif is_plain(v):
        h.update(repr((type(v).__name__, v)).encode())
    else:
        h.update(repr(_name_of(v)).encode())


def _plain_repr(x):
    if x is None or is_plain(x):
        return repr(x)
    if type(x) is dict:
        return repr({k: _plain_repr(v) for k, v in x.items()})
    q = qual(x)
    if q is None:
        raise Refused(f"a default of type {type(x).__name__}")
    return repr(q)


# ----------------------------------------------------------------------------- fingerprints
_NONE = object()
_PLAIN_TYPES = (int, float, bool, str, bytes, complex, type(None), type(Ellipsis))
_PLAIN_SIZE = type("_Plain", (), {}).__basicsize__  # (an instance of a class statement's
#                                                   class: no state but its __dict__)


class _Fingerprint:
    """Signatures and state fingerprints of the objects a manifest names, in the order it
    names them. Which of them are the same object, or share a tensor's memory, is part of
    it: a process where two tied weights are separate tensors is another program."""

    def __init__(self) -> None:
        self.objects: dict[int, int] = {}  # id -> first position
        self.storages: dict[int, tuple] = {}  # id(storage) -> (first position, address)
        self.keep: list = []  # (alive while ids mean them)
        self.states: dict[int, tuple] = {}  # id -> state(): an object's state is taken once
        #   per manifest (then the same: the positions it gives are assigned already)

    def same(self, obj) -> int:
        n = self.objects.setdefault(id(obj), len(self.objects))
        if n == len(self.objects) - 1:
            self.keep.append(obj)
        return n

    def tensor(self, t: Tensor) -> tuple:
        a = t._data
        first, base = self.storages.setdefault(id(t._storage), (len(self.storages),
                                                                 a.ctypes.data))
        return ("tensor", qual(type(t)), a.shape, a.strides, a.dtype.str, t._requires_grad,
                t._node is None, _hooked(t), self.same(t), first, a.ctypes.data - base)

    def signature(self, obj, contents: bool = False) -> tuple:
        """What the object a path leads to must be (``contents``: an array's values too)."""
        if isinstance(obj, Tensor):
            return self.tensor(obj)
        if isinstance(obj, np.ndarray):
            return ("array", obj.shape, obj.strides, obj.dtype.str,
                    _array_digest(obj) if contents else None)
        if isinstance(obj, (Module, Optimizer)):
            return ("versioned", self.state(obj))
        if type(obj) is functools.partial:  # (the capture takes its func as known with it:
            #                                  within a process a partial's func is fixed)
            return ("partial", self.same(obj), self.value(obj.func, 0))
        return ("object", _type_name(obj), self.same(obj))

    def state(self, obj) -> tuple:
        """What ``obj._version`` stands for within a process (see the module docstring)."""
        st = self.states.get(id(obj))
        if st is None:
            st = self.states[id(obj)] = self._state(obj)
            self.keep.append(obj)
        return st

    def _state(self, obj) -> tuple:
        if isinstance(obj, Optimizer):  # (its numbers are hyperparameters and step
            d = vars(obj)  #                 counts, read at each step: see the docstring)
            return ("optimizer", _type_name(obj), self.same(obj),
                    tuple((k, self.value(list(v) if k == "param_groups" else v, 0,
                                         numbers=False))
                          for k, v in d.items() if k not in ("_version", "_hyper_version")))
        d = vars(obj)
        return ("module", _type_name(obj), self.same(obj),
                tuple((k, self.value(v, 0)) for k, v in d.items() if k != "_version"))

    def value(self, v, depth: int, numbers: bool = True):
        t = type(v)
        if t in _PLAIN_TYPES or isinstance(v, np.generic):
            if not numbers and t in (int, float):
                return ("number", t.__name__)
            return ("plain", t.__name__, repr(v))
        if depth > 6:
            raise Refused("a module's state nested too deeply to fingerprint")
        if isinstance(v, Tensor):
            return self.tensor(v)
        if isinstance(v, (Module, Optimizer)):
            return ("object", _type_name(v), self.same(v))
        if isinstance(v, dict):
            return ("dict", _type_name(v), tuple((self.value(k, depth + 1, numbers),
                                                   self.value(x, depth + 1, numbers))
                                                  for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return ("seq", _type_name(v), tuple(self.value(x, depth + 1, numbers) for x in v))
        if isinstance(v, (set, frozenset)) and all(is_plain(x) for x in v):
            return ("set", t.__name__, tuple(sorted(map(repr, v))))
        if isinstance(v, types.MethodType):
            return ("method", self.value(v.__func__, depth + 1), self.value(v.__self__, depth + 1))
        q = qual(v)
        if q is not None:
            return q
        if isinstance(v, np.dtype):
            return ("dtype", v.str)
        if isinstance(v, np.ndarray):
            return ("ndarray", v.shape, v.dtype.str, hashlib.sha256(v.tobytes()).hexdigest())
        if type(v) is functools.partial:
            return ("partial", self.value(v.func, depth + 1, numbers),
                    self.value(v.args, depth + 1, numbers),
                    self.value(v.keywords, depth + 1, numbers),
                    self.value(instance_dict(v), depth + 1, numbers))
        if type(v).__basicsize__ == _PLAIN_SIZE and type(v).__dictoffset__ and \
                not hasattr(type(v), "__slots__"):
            # (a plain object, all of whose state is its __dict__: a configuration
            # dataclass — by class and contents; not a function with no name, whose code
            # and closure are no part of its __dict__, nor anything else with state of C)
            d = instance_dict(v)
            return ("instance", _type_name(v), self.same(v),
                    tuple((k, self.value(x, depth + 1, numbers)) for k, x in d.items()))
        raise Refused(f"a {type(v).__name__} in a module's state has no fingerprint")


def _array_digest(a: np.ndarray) -> str:
    """The values of an array the trace holds by identity: within a process the same array
    object, across processes the same values (``dg.tensor(ARR)`` bakes them into the
    graph)."""
    if a.dtype.hasobject:
        raise Refused("an array of objects")
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1)).hexdigest()


def _hooked(t: Tensor) -> bool:
    """Whether the tensor has gradient hooks (``build_guards`` guards their absence only
    where there are none when it runs: a variant traced without them must not meet them)."""
    return bool(t._hooks or t._post_accumulate_hooks or t._node is not None and
                t._node.pre_hooks)


def _argument_facts(flat: list, numbers) -> list:
    """What ``build_guards`` takes from the call's arguments as what they must be: a
    restored variant's guards are built from *this* call's, so every fact of the traced
    call they would compare with — a tensor's shape, strides, dtype, flags and aliasing,
    a plain argument's type and value (only its type for a runtime number: ``numbers``),
    another object's identity (across processes: its fingerprint) — is kept and compared.
    """
    fp = _Fingerprint()
    out = []
    for i, x in enumerate(flat):
        if isinstance(x, Tensor):
            out.append((i, fp.tensor(x)))
        elif type(x) in (int, float) and i in numbers:
            out.append((i, "number", type(x).__name__))
        elif is_plain(x):
            out.append((i, "plain", _plain_fact(x)))
        else:
            out.append((i, "object", fp.value(x, 0)))  # (raises Refused: no fingerprint)
    return out


def _aliasing(trace: Trace, flat: list) -> list:
    """Which tensor arguments share memory with a tensor the trace captured, and where:
    (argument, binding, byte offset) — ``build_guards`` guards the aliasing it sees in the
    call it is given, so a restored variant must be given the traced call's."""
    bound = [(k, b.resolve(flat)) for k, b in enumerate(trace.bindings) if b.kind is Via.REF]
    return [(i, k, x._data.ctypes.data - t._data.ctypes.data)
            for i, x in enumerate(flat) if isinstance(x, Tensor)
            for k, t in bound if isinstance(t, Tensor) and t._storage is x._storage]


def _default_float() -> str:
    """The default float dtype the trace's Python floats and factories took (``build_guards``
    guards today's: the manifest must say the trace's)."""
    from dyngrad import dtypes
    return dtypes.get_default_dtype().name


def _plain_fact(x) -> tuple:
    """A plain value by type and value (``2`` is not ``2.0``, ``-0.0`` is not ``0.0``)."""
    if type(x) is tuple:
        return ("tuple",) + tuple(map(_plain_fact, x))
    if type(x) is slice:
        return ("slice", _plain_fact(x.start), _plain_fact(x.stop), _plain_fact(x.step))
    return (type(x).__module__, type(x).__qualname__, repr(x))


def _type_name(obj) -> tuple:
    q = qual(type(obj))
    if q is None:
        raise Refused(f"the class {type(obj).__qualname__} is not found by its name")
    return q


# ----------------------------------------------------------------------------- paths
def _function(fn):
    """The Python function a compiled callable runs (a method's or a compiled method's:
    ``api.BoundMethod``, which holds it as ``func``)."""
    if type(fn).__name__ == "BoundMethod" and type(fn).__module__ == "compiler.api":
        return fn.func
    return getattr(fn, "__func__", fn)


def instance_dict(obj) -> dict:
    """``obj.__dict__`` for a plain instance; {} for a tensor (reading its dict would
    materialise it, and slow every attribute load after), a class, a module, or an object
    whose attribute lookup raises (a proxy's ``__getattr__``)."""
    if isinstance(obj, (Tensor, type, types.ModuleType)):
        return {}
    try:
        d = object.__getattribute__(obj, "__dict__")
    except Exception:  # noqa: BLE001 - (no instance dict, or a lookup that fails)
        return {}
    return d if type(d) is dict else {}


def _roots(fn, flat: list, sources: list) -> list:
    """(path, object) for each root of a call of ``fn`` with ``flat``."""
    roots: list = [((("flat", i),), x) for i, x in enumerate(flat)]
    self_obj = getattr(fn, "__self__", None)
    fn = _function(fn)
    if self_obj is not None and not isinstance(self_obj, types.ModuleType):
        roots.append(((("self",),), self_obj))
    for i, cell in enumerate(getattr(fn, "__closure__", None) or ()):
        try:
            roots.append(((("cell", i),), cell.cell_contents))
        except ValueError:
            pass
    code = getattr(fn, "__code__", None)
    glb = getattr(fn, "__globals__", None)
    if code is not None and glb is not None:
        mod = glb.get("__name__")
        if isinstance(mod, str) and sys.modules.get(mod) is not None and \
                vars(sys.modules[mod]) is glb:
            for n in _names(code):
                if n in glb:
                    roots.append(((("global", mod, n),), glb[n]))
    roots.append(((("global", "dyngrad.ops.random", "default_generator"),),  # (its state
                  sys.modules["dyngrad.ops.random"].default_generator))  # tensor: dropout)
    for src in sources:  # (globals of other modules the capture read)
        g = getattr(src, "globals", None)
        mod = getattr(src, "module", None)
        if type(g) is dict and isinstance(mod, str) and mod in sys.modules and \
                vars(sys.modules[mod]) is g and src.name in g:
            roots.append(((("global", mod, src.name),), g[src.name]))
    return roots


def _names(code) -> set:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


_LEAVES = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type,
           types.MethodType, np.ndarray, np.generic, np.dtype, weakref.ref)


class _Locator:
    """A path to each object reachable from the roots (breadth first: the shortest)."""

    def __init__(self, roots: list) -> None:
        self.path: dict[int, tuple] = {}
        self.keep: list = []
        queue: deque = deque()
        keyed: list = []  # (dict, its path): dicts keyed by objects (an optimizer's state)

        def visit(obj, path) -> None:
            if type(obj) in _PLAIN_TYPES or id(obj) in self.path:
                return
            self.path[id(obj)] = path
            self.keep.append(obj)
            queue.append((obj, path))

        for path, obj in roots:
            visit(obj, path)
        while queue:
            while queue and len(self.path) < WALK:
                obj, path = queue.popleft()
                if len(path) > 12 or isinstance(obj, _LEAVES) or \
                        type(obj).__module__.startswith("compiler."):
                    continue
                if isinstance(obj, Tensor):
                    self.path.setdefault(id(obj._data), path + (("data",),))
                    self.keep.append(obj._data)
                    if obj._grad is not None:
                        visit(obj._grad, path + (("grad",),))
                elif isinstance(obj, dict):
                    for k, v in list(obj.items()):
                        if _literal(k):
                            visit(v, path + (("item", k),))
                        else:
                            keyed.append((obj, path))
                elif isinstance(obj, (list, tuple)):
                    for i, v in enumerate(obj):
                        visit(v, path + (("item", i),))
                elif not type(obj).__module__.startswith("compiler.") and \
                        type(obj).__dictoffset__:
                    d = instance_dict(obj)
                    if d:
                        visit(d, path + (("vars",),))
            if len(self.path) >= WALK:
                break
            for dct, p in keyed:  # dicts keyed by objects, once their keys have paths
                for k, v in list(dct.items()):
                    if not _literal(k) and id(k) in self.path:
                        visit(v, p + (("keyed", self.path[id(k)]),))
            keyed = []


def _literal(k) -> bool:
    return type(k) in (int, str, bool) or (type(k) is tuple and all(map(_literal, k)))


def _resolve(path: tuple, fn, flat: list):
    """The object at ``path`` now (raises Refused when there is none)."""
    try:
        head = path[0]
        if head[0] == "flat":
            obj = flat[head[1]]
        elif head[0] == "self":
            obj = fn.__self__
        elif head[0] == "cell":
            obj = _function(fn).__closure__[head[1]].cell_contents
        elif head[0] == "global":
            obj = vars(sys.modules[head[1]])[head[2]]
        else:
            raise Refused(f"an unknown root {head[0]!r}")
        for step in path[1:]:
            kind = step[0]
            if kind == "vars":
                obj = instance_dict(obj)
                if not obj:
                    raise Refused(f"{_describe(path)} has no instance dict")
            elif kind == "item":
                if not isinstance(obj, (dict, list, tuple)):
                    raise Refused("an item of something not a container")
                obj = (dict.__getitem__ if isinstance(obj, dict) else
                       list.__getitem__ if isinstance(obj, list) else tuple.__getitem__)(
                    obj, step[1])
            elif kind == "keyed":
                if not isinstance(obj, dict):
                    raise Refused("a keyed item of something not a dict")
                obj = dict.__getitem__(obj, _resolve(step[1], fn, flat))
            elif kind == "grad":
                obj = obj._grad
            elif kind == "data":
                obj = obj._data
            else:
                raise Refused(f"an unknown step {kind!r}")
    except (LookupError, AttributeError, TypeError, ValueError) as exc:
        raise Refused(f"{_describe(path)} is not there ({type(exc).__name__})") from None
    return obj


def _describe(path: tuple) -> str:
    head = path[0]
    out = {"flat": lambda: f"argument {head[1]}", "self": lambda: "self",
           "cell": lambda: f"closure cell {head[1]}",
           "global": lambda: f"{head[1]}.{head[2]}"}.get(head[0], lambda: "?")()
    for step in path[1:]:
        out += {"vars": lambda s: ".__dict__", "item": lambda s: f"[{s[1]!r}]",
                "keyed": lambda s: f"[{_describe(s[1])}]", "grad": lambda s: ".grad",
                "data": lambda s: ".data"}[step[0]](step)
    return out


# ----------------------------------------------------------------------------- pickling
class _Pickler(plancache._Pickler):
    def __init__(self, f, fn, flat: list, cf, locator: _Locator) -> None:
        super().__init__(f, protocol=pickle.HIGHEST_PROTOCOL)
        self.fn, self.cf, self.locator = fn, cf, locator
        self.fp = _Fingerprint()
        self.must_name: set = set()  # ids of objects to be named even if a dict or list
        self.by_value: set = set()  # ids of arrays held by identity: named with their values
        self.by_path: set = set()  # ids of the objects named by a path
        self.cells = {id(c): i for i, c in enumerate(
            getattr(_function(fn), "__closure__", None) or ())}
        self.module_dicts = {id(vars(m)): name for name, m in list(sys.modules.items())
                             if m is not None}

    def reducer_override(self, obj):
        if type(obj) is ScalarSource and obj.owner is not None and \
                type(obj.owner) is not weakref.ref:
            self.must_name.add(id(obj.owner))
        if isinstance(obj, (Source, Check)) and is_dataclass(obj):  # (fields only: no
            args = tuple(getattr(obj, f.name) for f in fields(obj))  # cached ids or refs)
            for f in ("obj", "owner"):  # (an object itself, never a copy of it)
                x = getattr(obj, f, None)
                if f in obj.__dataclass_fields__ and x is not None and type(x) not in \
                        _PLAIN_TYPES:
                    self.must_name.add(id(x))
                    if isinstance(x, np.ndarray):
                        self.by_value.add(id(x))
            if isinstance(obj, Version):  # (the plain values the trace read, for messages)
                return type(obj), args, {"seen": {k: v for k, v in obj.seen.items()
                                                  if is_plain(v)}}
            return type(obj), args
        return super().reducer_override(obj)

    def persistent_id(self, obj):
        t = type(obj)
        if t in _PLAIN_TYPES or isinstance(obj, tuple) and t.__module__ in ("builtins",
                                                                            "dyngrad.size"):
            return None
        if t is weakref.ref:
            r = obj()
            if r is None:
                raise Refused("a weak reference to an object gone")
            return ("ref", self._named(r))
        if obj is self.cf:
            return ("cf",)
        if obj is self.fn:
            return ("fn",)
        if id(obj) in self.must_name:
            return self._named(obj)
        if t is types.ModuleType or t is types.CellType or \
                t is dict and id(obj) in self.module_dicts:
            return self._named(obj)
        if id(obj) in self.locator.path:
            return self._named(obj)
        if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, type,
                            types.MethodType, types.MethodWrapperType)):
            return self._named(obj)
        if t in (list, dict, set, frozenset, slice, range, pickle.PickleBuffer) or \
                isinstance(obj, (np.ndarray, np.generic, np.dtype)) or \
                t.__module__.startswith(("compiler.", "dyngrad.")) and \
                not t.__module__.startswith("compiler.api") and \
                not isinstance(obj, (Tensor, Module, Optimizer, Storage, Node)):
            return None
        return self._named(obj)

    def _named(self, obj) -> tuple:
        """The persistent name of a live object (raises Refused when it has none)."""
        if obj is self.cf:
            return ("cf",)
        if obj is self.fn:
            return ("fn",)
        if obj is vars(builtins):
            return ("globals", "builtins")
        t = type(obj)
        if t is types.ModuleType:
            if sys.modules.get(obj.__name__) is not obj:
                raise Refused(f"module {obj.__name__} is not imported under its name")
            return ("module", obj.__name__)
        if t is dict and id(obj) in self.module_dicts:
            return ("globals", self.module_dicts[id(obj)])
        if t is types.CellType:
            if id(obj) not in self.cells:
                raise Refused("a closure cell of another function than the compiled one")
            return ("cell", self.cells[id(obj)])
        if isinstance(obj, types.MethodType):
            return ("method", self._named(obj.__func__), self._named(obj.__self__))
        path = self.locator.path.get(id(obj))
        if path is not None and not isinstance(obj, (types.FunctionType, type)):
            self.by_path.add(id(obj))
            return ("path", path, self.fp.signature(obj, id(obj) in self.by_value))
        q = qual(obj)
        if q is not None:
            return q
        raise Refused(f"a {t.__name__} the trace holds is found by no path from the call's "
                      f"roots")


class _Unpickler(plancache._Unpickler):
    def __init__(self, f, fn, flat: list, cf) -> None:
        super().__init__(f)
        self.fn, self.flat, self.cf = fn, flat, cf
        self.fp = _Fingerprint()
        self.named: dict = {}  # pid -> object, for names met again (the same answer: a
        #                        signature repeats itself for an object already signed)

    def persistent_load(self, pid):
        obj = self.named.get(pid, _NONE)
        if obj is _NONE:
            obj = self.named[pid] = self._load(pid)
        return obj

    def _load(self, pid):
        kind = pid[0]
        if kind == "ref":
            return weakref.ref(self.persistent_load(pid[1]))
        if kind == "cf":
            return self.cf
        if kind == "fn":
            return self.fn
        if kind == "module":
            m = sys.modules.get(pid[1])
            if m is None:
                raise Refused(f"module {pid[1]} is not imported")
            return m
        if kind == "globals":
            m = sys.modules.get(pid[1])
            if m is None:
                raise Refused(f"module {pid[1]} is not imported")
            return vars(m)
        if kind == "cell":
            cells = getattr(_function(self.fn), "__closure__", None) or ()
            if pid[1] >= len(cells):
                raise Refused("the compiled function has other closure cells")
            return cells[pid[1]]
        if kind == "method":
            func, obj = self.persistent_load(pid[1]), self.persistent_load(pid[2])
            return types.MethodType(func, obj)
        if kind == "qual":
            m = sys.modules.get(pid[1])
            obj = None if m is None else _lookup(m, pid[2])
            if obj is None or qual(obj) != tuple(pid):
                raise Refused(f"{pid[1]}.{pid[2]} is not the one the trace saw")
            return obj
        if kind == "path":
            obj = _resolve(pid[1], self.fn, self.flat)
            sig = pid[2]
            contents = type(sig) is tuple and len(sig) == 5 and sig[0] == "array" and \
                sig[4] is not None
            if self.fp.signature(obj, contents) != sig:
                raise Refused(f"{_describe(pid[1])} differs from the one the trace saw")
            return obj
        raise pickle.UnpicklingError(f"variant cache: unknown name {kind!r}")


def _evaluate(sources: list, flat: list) -> list:
    """The objects ``sources`` hold now (one generated function reads them all)."""
    if not sources:
        return []
    ns: dict = {}
    namer = Namer(ns)
    return list(eval_generated(f"lambda flat: ({', '.join(s.expr(namer) for s in sources)},)",
                               ns)(flat))


# ----------------------------------------------------------------------------- manifests
def keepable(trace: Trace) -> str | None:
    """Why ``trace`` cannot be kept (None: it can be tried)."""
    if trace.effects or trace.version_updates:
        return "it replays Python effects"
    if trace.continuation is not None:
        return "its backward continues into the arguments' history"
    if any(n.prim.kind == "collective" for n in trace.graph.nodes):
        return "it runs collectives"
    if any(b.kind in (Via.SOURCE, Via.ARRAY) for b in trace.bindings):
        return "it binds tensors read from Python state at each call"
    if any(s.owner is None and not (isinstance(s.key, tuple) and s.key[:1] == ("arg",))
           for s in trace.scalar_sources):
        return "it reads a global number at each call"
    return None


def library_reads(cap) -> list:
    """The sources of what the capture read of the library's modules and classes without a
    guard (``FROZEN``: their code is the plan cache's key) — ``F.relu``, ``dg.float32``."""
    from .capture.session import FROZEN
    return [s for s, state in cap.known.items() if state == FROZEN and
            getattr(s, "base", None) is not None]


def _library_names(sources: list, flat: list) -> list:
    """What each of ``sources`` holds now, by name or value: within a process the library's
    attributes are taken as fixed, but a program may replace one (``F.relu = my_relu``)
    before its first call."""
    try:
        values = _evaluate(sources, flat)
    except Exception as exc:  # noqa: BLE001 - (an attribute gone)
        raise Refused(f"a library attribute is not there ({type(exc).__name__})") from None
    fp = _Fingerprint()
    out = []
    for v in values:
        if isinstance(v, types.ModuleType):
            out.append(("module", v.__name__))
            continue
        try:
            out.append(fp.value(v, 0))
        except Refused:  # (a library object with no fingerprint: dg.float32, by its repr)
            out.append(("repr", _type_name(v), repr(v)))
    return out


# Note [a first step from a filled state]
# A training step's first call creates the optimizer's state (Adam's moments), tensors kept
# in Python state, which no trace replays. A new process restoring the step's variant would
# run that first step eagerly — on W8 ~110 ms of the ~200 ms it took to get going. But
# most optimizers have a state from which a step makes exactly what a first step makes
# (``Optimizer._fill_state``): Adam's, Adadelta's and RMSprop's first steps fill zeros and
# then update as any later step; SGD's momentum buffer starts as the gradient, which a
# buffer of −0 gives bit for bit (without dampening). So a first step *is* "fill the
# state, then step". The manifest lists, per such optimizer, the
# parameters that had state and their state's keys (``_fill_plan``); a new process whose
# optimizer has no state yet fills it (``Optimizer.prefill``) before resolving the rest of
# the manifest, whose paths then lead to the filled tensors and whose signatures and
# fingerprints check them; and it runs the restored variant from its first call. Filling
# before the call instead of inside step() is the same only if nothing else in the call
# sees the state, so the plan is made only when
#   - the interpreted code read nothing of the state (the dict, an entry, a tensor of it:
#     ``Capture.read_ids``), nor could native code reach it from what it was given, other
#     than the optimizer's own step() or zero_grad(), nor saw it otherwise (``Capture.saw``:
#     ``optimizers_given``, ``native_seen`` — ``state_dict()``, ``vars(opt)``,
#     ``copy.deepcopy([opt])``, ``operator.attrgetter("optimizer.state")(scheduler)``, an
#     f-string, ``{**state}``);
#   - every parameter with state was stepped by the trace (all its state tensors are named
#     by the manifest): a new first step then fills exactly those;
#   - the state's order is its groups' order, as prefill() makes it;
#   - the optimizer is the library's own (a user's class may fill otherwise).
# The trace itself is of a step made from a state already there (a later step's, or a cold
# first call's filled one: Note [a first call from a filled state] in compiler/firstfill.py);
# what it assumed of the state (its keys, shapes, dtypes) is checked on the filled one. And
# the variant's guards must hold with the state filled and with it empty
# (``without_state``): a read of the state that some guard pins down, through a path those
# records miss, refuses the fill too. Any refusal after filling (a signature, a guard, a
# value guard inside the native code) empties the state again (``unfill``) before the call
# runs eagerly.
def _fill_plan(locator: _Locator, named: set, read_ids=frozenset(),
               given=frozenset()) -> list:
    """(optimizer path, its class's name, [(parameter path, state keys)]) per optimizer
    whose state a new process may fill before the first call (Note [a first step from a
    filled state])."""
    out = []
    if None in given:  # (native code may have reached any of them)
        return out
    for obj in locator.keep:
        if not isinstance(obj, Optimizer) or id(obj) in given or \
                getattr(type(obj), "_fill_state", None) is None or \
                not type(obj).__module__.startswith("dyngrad.optim."):
            continue
        state = instance_dict(obj).get("state")
        if type(state) is not dict or not state or id(state) in read_ids:
            continue
        entries = list(state.items())
        if any(type(st) is not dict or not st or id(st) in read_ids or
               not all(isinstance(t, Tensor) and id(t) in named and id(t) not in read_ids
                       for t in st.values()) for _, st in entries):
            continue
        stepped = {id(p) for p, _ in entries}
        order = [id(p) for g in obj.param_groups for p in g["params"] if id(p) in stepped]
        paths = [locator.path.get(id(p)) for p, _ in entries]
        if order != [id(p) for p, _ in entries] or None in paths or \
                locator.path.get(id(obj)) is None:
            continue
        out.append((locator.path[id(obj)], _type_name(obj),
                    [(path, tuple(st)) for path, (_, st) in zip(paths, entries)]))
    return out


def _fill(fn, flat: list, plan: list) -> list:
    """Fill the state of each optimizer of ``plan`` that has none (raises Refused, with
    nothing filled, when the state made is not the one planned): the optimizers filled."""
    filled: list = []
    try:
        for opt_path, name, params in plan:
            opt = _resolve(opt_path, fn, flat)
            if not isinstance(opt, Optimizer) or _type_name(opt) != name:
                raise Refused(f"{_describe(opt_path)} is not the optimizer the trace stepped")
            state = instance_dict(opt).get("state")
            if type(state) is not dict:
                raise Refused(f"{_describe(opt_path)} has no state dict")
            if state:
                continue  # (a later call: its state is the manifest's to check)
            ps = [_resolve(path, fn, flat) for path, _ in params]  # (one not in its
            filled.append(opt)  # groups is not filled: the comparison below refuses it)
            if not opt.prefill(ps):
                raise Refused(f"{_describe(opt_path)} has no state to fill (SGD's dampening)")
            if [(id(p), tuple(st)) for p, st in state.items()] != \
                    [(id(p), keys) for p, (_, keys) in zip(ps, params)]:
                raise Refused(f"{_describe(opt_path)} fills other state than the trace's")
    except BaseException:
        unfill(filled)
        raise
    return filled


def without_state(filled: list, fn):
    """``fn()`` with the state of the optimizers ``filled`` emptied, as the call's eager
    run sees it until its step() fills it (then put back, in its order)."""
    kept = [(opt.state, list(opt.state.items())) for opt in filled]
    try:
        for state, _ in kept:
            state.clear()
        return fn()
    finally:
        for state, items in kept:
            state.clear()
            state.update(items)


def unfill(filled: list) -> None:
    """Empty again the state :func:`_fill` made (it was empty before)."""
    for opt in filled:
        opt.state.clear()


def parse(payload: bytes):
    """A manifest's parts, (pickled trace and checks, fingerprints, fill plan); None when it
    does not unpickle (corrupt: ``load`` refuses it)."""
    try:
        parts = plancache._loads(payload)
    except Exception:  # noqa: BLE001
        return None
    return parts if type(parts) is tuple and len(parts) == 3 else None


def fills(parts) -> bool:
    """Whether the manifest whose ``parse`` is ``parts`` may run a first step (fills
    optimizer state: Note [a first step from a filled state])."""
    return parts is not None and bool(parts[2])


def dump(cf, trace: Trace, checks: list, pkey: str, flat: list, spec,
         library: list = (), seen=(frozenset(), frozenset())) -> bytes:
    """The manifest of a variant just traced (raises Refused when it cannot be kept).
    ``seen``: the capture's ``read_ids`` and ``optimizers_given`` (see :func:`_fill_plan`)."""
    why = keepable(trace)
    if why is not None:
        raise Refused(why)
    _DIGESTS.clear()
    _QUALS.clear()
    library = list(library)
    names = _library_names(library, flat)
    fn = cf.fn
    locator = _Locator(_roots(fn, flat, [c.source.root() for c in checks]))
    f = io.BytesIO()
    p = _Pickler(f, fn, flat, cf, locator)
    try:
        # (the graph is the plan cache's: compile_trace puts the lowered one in its place)
        p.dump({"spec": spec, "trace": replace(trace, graph=None), "checks": checks,
                "pkey": pkey,
                "arguments": _argument_facts(flat, cf.dynamic_numbers),
                "numbers": sorted(cf.dynamic_numbers), "sources": list(cf.dynamic_sources),
                "default_float": _default_float(), "aliasing": _aliasing(trace, flat),
                "library": library, "names": names})
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - (something does not pickle)
        raise Refused(f"{type(exc).__name__}: {exc}") from None
    versions = []  # (what each version check stands for: the object's state now; after
    vc = [c for c in checks if isinstance(c, Version)]  # the signatures, as load() does)
    for c, obj in zip(vc, _evaluate([c.source for c in vc], flat), strict=True):
        if obj._version != c.box[0]:
            raise Refused("a version moved during the call")
        versions.append(p.fp.state(obj))
    return plancache._dumps((f.getvalue(), versions, _fill_plan(locator, p.by_path, *seen)))


def load(cf, payload, flat: list, spec) -> dict:
    """The manifest's trace and checks with today's objects (raises Refused); ``payload``:
    the manifest, or its :func:`parse`."""
    fn = cf.fn
    _DIGESTS.clear()
    _QUALS.clear()
    parts = parse(payload) if type(payload) is bytes else payload
    if parts is None:
        raise Refused("a corrupt or foreign manifest")
    main, versions, plan = parts
    filled = _fill(fn, flat, plan)
    try:
        m = _load(cf, fn, main, versions, flat, spec)
    except BaseException:
        unfill(filled)
        raise
    m["filled"] = filled
    return m


def _load(cf, fn, main: bytes, versions: list, flat: list, spec) -> dict:
    try:
        u = _Unpickler(io.BytesIO(main), fn, flat, cf)
        m = u.load()
    except (Refused, pickle.UnpicklingError):
        raise
    except Exception as exc:  # noqa: BLE001 - (a corrupt or foreign manifest)
        raise Refused(f"{type(exc).__name__}: {exc}") from None
    if m["spec"] != spec:
        raise Refused("the arguments have another structure")
    if m.get("default_float") != _default_float():
        raise Refused("the default dtype (set_default_dtype) is another")
    if m["arguments"] != _argument_facts(flat, set(m["numbers"])):
        raise Refused("an argument differs from the traced call's (a tensor's shape, "
                      "strides, dtype, flags or aliasing, a value, or an object)")
    if _library_names(m["library"], flat) != m["names"]:
        raise Refused("a library attribute the trace read holds something else")
    if m["aliasing"] != _aliasing(m["trace"], flat):
        raise Refused("an argument shares memory with a captured tensor otherwise than in "
                      "the traced call")
    fresh_versions = iter(versions)
    checks = []
    try:
        live = iter(_evaluate([c.source for c in m["checks"] if isinstance(c, Version)], flat))
    except Exception as exc:  # noqa: BLE001 - (a source that no longer reads)
        raise Refused(f"a versioned object is not there ({type(exc).__name__})") from None
    for c in m["checks"]:
        if isinstance(c, Version):
            obj = next(live)
            if u.fp.state(obj) != next(fresh_versions):
                raise Refused(f"{c.source} has other state than the one the trace saw")
            seen = c.seen
            c = Version(c.source, obj._version, id(obj))
            c.seen.update(seen)
        checks.append(c)
    trace = m["trace"]
    objects = []
    for ref, _ in trace.objects:  # (their state checked with their signature)
        obj = ref()
        objects.append((ref, obj._version))
    m["trace"] = replace(trace, objects=objects)
    m["checks"] = checks
    return m


# ----------------------------------------------------------------------------- the disk
def function_key(cf) -> str | None:
    """The key of ``cf``'s manifests: its function's module, name and code, with the plan
    cache's (None: not keyable)."""
    fn = _function(cf.fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    h = hashlib.sha256(MAGIC)
    h.update(repr((getattr(fn, "__module__", None), getattr(fn, "__qualname__", None),
                   cf.backend, cf.dynamic)).encode())
    _feed_code(h, code)
    h.update(plancache._sources().encode())
    h.update(plancache._setting())
    return h.hexdigest()


def _path(k: str) -> Path:
    from .backends.llvm import cache
    return cache.directory() / f"{k}.vars"


def read(cf) -> list:
    """The manifests kept for ``cf`` (newest first), or []."""
    from .backends.llvm import cache
    if mode() != "on":
        return []
    k = function_key(cf)
    if k is None:
        return []
    payload = cache._read(_path(k), MAGIC)
    if payload is None or not plancache._private(cache.directory()):
        return []
    try:
        out = plancache._loads(payload)
    except Exception:  # noqa: BLE001 - (corrupt: as if none)
        return []
    return out if type(out) is list and all(type(x) is bytes for x in out) else []


def write(cf, manifest: bytes) -> None:
    """Keep ``manifest`` first among ``cf``'s (the oldest beyond :data:`KEPT` dropped)."""
    from .backends.llvm import cache
    k = function_key(cf)
    if k is None:
        return
    old = [m for m in read(cf) if m != manifest]
    cache._write(_path(k), plancache._dumps([manifest] + old[:KEPT - 1]), MAGIC)
    stats["stored"] += 1
