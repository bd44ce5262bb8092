"""A capture: one tracing call run through the interpreter, and what it learned.

:class:`Capture` is the policy the :class:`~compiler.capture.frame.Frame` consults for every
read, store and call. Its rule, from DESIGN.md: every value that shapes the trace is a
constant of the code, read from a source with a guard on exactly what was used, a runtime
input, or the trace is refused with a reason that names the object and the line.

What a read guards (``read``), by what was read:

==========================  ===========================================================
a number, bool, str, None   type and value (``2`` is not ``2.0``, ``-0.0`` not ``0.0``);
                            a float seen to change before is a runtime input instead
a tensor                    identity (the tracer binds it and guards its storage)
a ``Module``                identity and its ``_version`` (which covers its attributes)
a function, class, object   identity; what is read from it is guarded in turn
a container, when its       ``len`` / keys, then each item read
structure is read
==========================  ===========================================================

A read needs no guard when its source is *covered*: an attribute a guarded module version
counts, an item of an immutable tuple already guarded, anything of the library (its modules
and classes are not rebound between calls), or a leaf of the arguments (guarded by the
argument guards).
"""

from __future__ import annotations

import operator
import os
import types
import weakref

import numpy as np

from dyngrad.nn.module import Module
from dyngrad.optim.optimizer import Optimizer
from dyngrad.tensor import Tensor

from ..generated import eval_generated
from . import calls, escape
from .checks import EXACT, Contents, Equals, Identity, SmallInt, Version, is_plain, same_array
from .effect import BLIND_MUTATORS, Effect  # noqa: F401 - (Effect: the package's)
from .frame import NULL, Frame, Raised, user, where
from .library import is_library_module, is_library_type
from .sources import (
    ArgTree,
    Attr,
    Builtin,
    Call,
    Cell,
    Flat,
    Global,
    Held,
    Item,
    Source,
    literal_key,
)

# known[source]: what the guards already pin down about the value read from it
VALUE, IDENTITY, SHELL, CONTENTS, FROZEN = "value", "identity", "shell", "contents", "frozen"
# VALUE: an immutable value; IDENTITY: the object; SHELL: the object, and it is immutable (a
# tuple, a bound method, a partial's func/args), so its parts' identities are known too;
# CONTENTS: a module whose version counter is guarded; FROZEN: the library's.

_MODULE_REGISTRIES = frozenset({"_parameters", "_buffers", "_modules", "_forward_hooks",
                                "_non_persistent"})
_MUTABLE = (list, dict, set, bytearray)
_BUILTIN_METHODS = (types.BuiltinMethodType, types.MethodWrapperType)


class Capture:
    """The policy for one tracing call; see the module docstring."""

    def __init__(self, tracer=None, dynamic: frozenset = frozenset()) -> None:
        self.tracer = tracer
        self.dynamic = dynamic  # sources (by description) whose float changed: runtime inputs
        self.checks: dict = {}  # Check.key() -> Check, in the order recorded
        self.known: dict = {}  # Source -> VALUE / IDENTITY / SHELL / CONTENTS / FROZEN
        self.objects: dict = {}  # Source -> the object read from it (kept alive)
        self.registry: dict = {}  # id(obj) -> (obj, source): objects from before the call
        self.fresh_ids: set = set()  # ids of objects the call made (kept alive in `keep`)
        self.cell_src: dict = {}  # id(cell) -> (cell, source of its contents): made here
        self.fn_parts: dict = {}  # id(fn) -> (fn, {attribute: (value, source)}): made here
        self.tuple_src: dict = {}  # id(tuple) -> (tuple, [sources]): built here
        self.views: dict = {}  # id(dict view) -> (view, dict, source)
        self.scalars: dict = {}  # Source -> runtime-input scalar standing for it
        self.effects: list[Effect] = []
        self.refused: str | None = None
        self.keep: list = []
        self.frames: list[Frame] = []
        self.arg_paths: dict = {}  # argument path -> Flat / ArgTree source
        self.written: dict = {}  # (id(target), key) -> source of the value the call stored
        self.entry: dict = {}  # (id(target), key) -> (target, value, source): first reads
        # containers from before the call it changed with a blind mutator (append, ...):
        # id -> [container, source, entry length, entry items, pinned]; see `changed_read`
        self.mutated: dict = {}
        self.hyper_seen: dict = {}  # id(optimizer) -> (optimizer, _hyper_version at first sight)
        # what the call saw of optimizers' state other than through their step() (Note [a
        # first step from a filled state] in compiler/variantcache.py): ids of the objects
        # it read (set by `note_reads`), and of optimizers native code was given otherwise
        self.read_ids: frozenset = frozenset()
        self.optimizers_given: set = set()  # (None: every optimizer)
        self.native_seen: set = set()  # ids of objects seen other than by a source (`saw`)
        self.modules_walked: dict = {}  # id(module) -> its _version when walked
        self.fill = None  # a first call's filled optimizer state: its tripwire (Note [a
        #                   first call from a filled state] in compiler/firstfill.py)
        if tracer is not None:
            tracer.capture = self

    def release(self) -> None:
        """Drop the objects the capture held during the call (so that tensors the call made
        die with it: the tracer checks none is kept in Python state)."""
        for d in (self.objects, self.registry, self.cell_src, self.fn_parts, self.tuple_src,
                  self.views, self.written, self.scalars, self.entry, self.mutated,
                  self.hyper_seen):
            d.clear()
        self.keep.clear()
        self.frames.clear()
        self.fresh_ids.clear()

    def guard_copies(self, flat: list) -> None:
        """Before :meth:`release`: each array the call copied into a tensor (the tracer's
        ``copied``: its values are in the graph) gets its values guarded wherever the call
        read it — an argument, a global, a module's attribute — and the call is refused if
        it changed such an array after copying it (the next call would copy other values)."""
        copied = getattr(self.tracer, "copied", None)
        if not copied:
            return
        for _, copies in copied.values():
            for arr, values in copies:
                if not same_array(arr, values):
                    self.refuse("the function changes a numpy array after copying it into a "
                                "tensor: copy it after the change, or make the tensor with "
                                "dg.from_numpy (which shares the array's memory)")
                    return

        def root(a):
            while isinstance(a.base, np.ndarray):
                a = a.base
            return a
        seen = [(src, v) for src, v in self.objects.items()] + \
            [(Flat(i, f"arg{i}"), x) for i, x in enumerate(flat)]
        for src, v in seen:
            if isinstance(v, np.ndarray) and id(root(v)) in copied:
                self.guard(Contents(src, v.copy()))

    def saw(self, ids, given=()) -> None:
        """The program, or native code it runs, is about to see the objects of ``ids``
        other than by reading them from a source (a lookup in a container found through a
        tensor's attribute, what native code can reach, what an f-string formats): they
        count as read for the variant cache's fill plan (``read_ids``), and a first call's
        filled optimizer state is shown them — and ``given``, the optimizers native code was
        handed (None: any) — before anything happens (its tripwire: Note [a first call from
        a filled state] in compiler/firstfill.py)."""
        self.native_seen.update(ids)
        if self.fill is not None:
            self.fill.sees(ids, given)

    def note_reads(self) -> None:
        """Before :meth:`release`: the ids of every object from before the call that the
        interpreted code read, or native code could reach (kept after it, for the variant
        cache)."""
        self.read_ids = frozenset(map(id, self.objects.values())) | \
            frozenset(id(v) for v, _ in self.registry.values()) | \
            frozenset(id(e[1]) for e in self.entry.values()) | frozenset(self.native_seen)

    def summarize(self) -> None:
        """Before :meth:`release`: what effect replay needs once the objects are let go —
        each effect's value at entry and its payload (see :class:`Effect`), and the
        ``version_objects``: (Version check, weak reference, stores) for each versioned
        object the call stores attributes on. Refuses an effect that cannot be replayed."""
        from ..trace import Kept
        stores: dict = {}
        for e in self.effects:
            if e.kind in ("setattr", "delattr"):
                stores[id(e.target)] = stores.get(id(e.target), 0) + 1
            ent = self.entry.get((id(e.target), e.key)) if e.target is not None and \
                literal_key(e.key) else None
            if ent is not None and ent[0] is e.target:
                e.entry = (ent[1], ent[2])
                e.runtime = ent[2] in self.scalars  # (its entry value is a runtime input)
            try:
                e.payload = self._replayable(e.value, Kept)
            except TypeError as exc:
                self.refuse(f"the function stores {exc} in {e.what} at {e.where}; a "
                            f"compiled call cannot make that object again (store a tensor, "
                            f"a number, a string or a tuple/list/dict of them)")
        for opt, seen in self.hyper_seen.values():  # hyperparameters changed natively
            n = sum(1 for e in self.effects if e.kind == "setitem" and
                    getattr(e.target, "_owner", None) is opt)
            if opt._hyper_version - seen != n:
                self.refuse(f"the hyperparameters of a {type(opt).__name__} change inside the "
                            f"function, in library code the compiled call would not repeat (a "
                            f"learning-rate scheduler's step(), for one): call it outside the "
                            f"compiled function")
        self.version_objects = []
        for c in self.checks.values():
            if isinstance(c, Version):
                obj = self.objects.get(c.source)
                if obj is not None and id(obj) in stores:
                    self.version_objects.append((c, weakref.ref(obj), stores[id(obj)]))

    def plain_effects(self) -> None:
        """Numbers the traced call stored in Python state are traced numbers (``.item()``
        results, runtime inputs): put plain ones in their place — deep in the containers
        stored — as eager stores, without bumping versions. Runs whether the call returned
        or raised."""
        from ..trace import TracedInt, TracedScalar, raw_number

        def traced(x):
            return isinstance(x, TracedScalar) or type(x) is TracedInt

        def plain(x):  # (x, or a plain copy of it; lists and dicts are fixed in place)
            if traced(x):
                return raw_number(x)
            t = type(x)
            if t is list:
                for i, e in enumerate(x):
                    p = plain(e)
                    if p is not e:
                        x[i] = p
            elif t is dict:
                for k, e in list(x.items()):
                    p = plain(e)
                    if p is not e:
                        x[k] = p
            elif t is tuple and any(traced(e) or type(e) in (tuple, list, dict) for e in x):
                made = tuple(plain(e) for e in x)
                if any(a is not b for a, b in zip(made, x)):
                    return made
            return x

        for e in self.effects:
            t, k, v = e.target, e.key, e.value
            try:
                if e.kind == "setattr":
                    p = plain(v)
                    d = getattr(t, "__dict__", None)
                    if p is not v and d is not None and d.get(k) is v:
                        d[k] = p
                    elif p is not v and getattr(t, k, None) is v:
                        object.__setattr__(t, k, p)
                elif e.kind in ("setitem", "global"):
                    p = plain(v)
                    if p is not v and t[k] is v:
                        t[k] = p
                elif e.kind == "cell":
                    p = plain(v)
                    if p is not v and t.cell_contents is v:
                        t.cell_contents = p
                elif e.kind == "method" and isinstance(t, (list, dict)):
                    plain(t)
            except Exception:  # noqa: BLE001 - (the location changed again: leave it)
                continue

    def _replayable(self, x, kept):
        """``x`` as effect replay makes it each call (see :meth:`summarize`)."""
        from ..trace import TracedInt, TracedScalar
        t = type(x)
        if isinstance(x, (Tensor, TracedScalar, TracedInt)) or x is None or \
                t in (bool, int, float, str):
            return x
        if id(x) in self.registry and self.registry[id(x)][0] is x or \
                isinstance(x, np.generic) or t in (bytes, complex, range, slice) or \
                isinstance(x, (types.FunctionType, types.BuiltinFunctionType, type,
                               types.ModuleType, Module)) or x is Ellipsis:
            return kept(x)  # from before the call, or immutable: the object itself
        if t is tuple or t is list:
            made = [self._replayable(e, kept) for e in x]
            return tuple(made) if t is tuple else made
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return t(*(self._replayable(e, kept) for e in x))
        if t is dict and all(type(k) in (int, str, bool) for k in x):
            return {k: self._replayable(v, kept) for k, v in x.items()}
        if id(x) not in self.fresh_ids and type(x).__module__ in ("io", "_io"):
            return kept(x)  # (print's file=sys.stderr)
        raise TypeError(f"a {t.__name__}")

    # ----------------------------------------------------------------- messages
    def where(self) -> str:
        return self.frames[-1].where() if self.frames else "?"

    def where_now(self) -> str | None:
        """``file:line`` of the innermost frame the capture interprets now, if any."""
        if not self.frames:
            return None
        f = self.frames[-1]
        return f"{os.path.basename(f.code.co_filename)}:{f.decoded.line(f.offset)}"

    def paused(self):
        """A context for native code run on purpose (eager work outside the trace): the
        watchdog does not count it as an escape (``escape.paused``)."""
        return escape.paused()

    def refuse(self, reason: str) -> None:
        """The trace cannot stand for the function (the first reason is kept)."""
        if self.refused is None:
            self.refused = reason

    def escaped(self, code) -> None:
        if self.fill is not None:  # (before the code runs: it may read anything)
            self.fill.trip()
        self.refuse(f"{code.co_qualname} ({code.co_filename}:{code.co_firstlineno}) ran "
                    f"outside the capture, called by native code at {self.where()}, so what "
                    f"it reads cannot be guarded: call it from Python code directly, or "
                    f"register it (a hook) and run it outside the compiled function")

    # ----------------------------------------------------------------- guards
    def guard(self, check) -> None:
        k = check.key()
        if k not in self.checks:
            self.checks[k] = check

    def note_root(self, value, src: Source) -> None:
        """An argument leaf or an object the capture holds: guarded already (identity or
        value); a module among them gets its version guarded."""
        if self.fill is not None:
            self.fill.sees((id(value),))
        if src in self.known:
            return
        self.objects[src] = value
        if isinstance(value, Module):
            self._guard_module(value, src)
            self.known[src] = CONTENTS
        elif is_plain(value):
            self.known[src] = VALUE
        else:
            self.known[src] = self._state_of(value)
        self._register(value, src)

    def _guard_module(self, module: Module, src: Source) -> None:
        """A module's version, which counts its attribute assignments, and its ``training``
        flag, which ``train()``/``eval()`` set without counting (Note [training is not
        counted by _version] in dyngrad/nn/module.py)."""
        self.guard(Version(src, module._version, id(module)))
        self.guard(Equals(Attr(src, "training"), module.training))

    def _state_of(self, value) -> str:
        if isinstance(value, types.ModuleType):
            return FROZEN if is_library_module(value) else IDENTITY
        if isinstance(value, type):
            return FROZEN if is_library_type(value) else IDENTITY
        if type(value) in (tuple, types.MethodType) or type(value).__name__ == "partial":
            return SHELL
        if isinstance(value, types.BuiltinMethodType) and \
                isinstance(getattr(value, "__self__", None), types.ModuleType):
            return FROZEN
        return IDENTITY

    def _register(self, value, src) -> None:
        if isinstance(value, Optimizer) and id(value) not in self.hyper_seen:  # (not
            # hasattr: an argument's own __getattr__ may raise anything, as a proxy's does)
            version = getattr(value, "_hyper_version", None)  # (None: a Mock(spec=Adam),
            if type(version) is int:  # or a subclass that skips Optimizer.__init__)
                self.hyper_seen[id(value)] = (value, version)
        # (an instance dict is asked of the type: reading ``value.__dict__`` would make
        # CPython 3.11/3.12 materialise it, after which every attribute load on the object
        # — a tensor argument's ``_data`` in each compiled call — takes a slower path)
        if isinstance(value, _MUTABLE) or type(value).__dictoffset__ and \
                not isinstance(value, (type, types.ModuleType, types.FunctionType)):
            self.registry.setdefault(id(value), (value, src))

    def covered(self, src: Source, value, owner=None) -> bool:
        """Whether the guards already pin down ``value`` read from ``src``."""
        if isinstance(src, (Flat, ArgTree, Held)):
            return True
        parent = getattr(src, "base", None)
        if parent is None:
            return False
        p = self.known.get(parent)
        if p in (FROZEN, VALUE):
            return True
        if p == SHELL:
            return isinstance(src, (Attr, Item))
        if p == CONTENTS and isinstance(src, Attr) and owner is not None:
            d = getattr(owner, "__dict__", None)
            if d is None or src.name not in d:
                return False  # a class attribute: the version does not count those
            if src.name in _MODULE_REGISTRIES:
                return True
            return not isinstance(value, _MUTABLE)
        if p == CONTENTS and isinstance(src, (Item, Call)):  # a module registry's item,
            #   length, keys or truth: the module's version counts every change to them
            return isinstance(parent, Attr) and parent.name in _MODULE_REGISTRIES
        return False

    def read(self, value, src: Source | None, owner=None):
        """Guard what the trace uses of ``value`` read from ``src``; the value the program
        sees (a runtime input stands for a float seen to change)."""
        if self.fill is not None:
            self.fill.sees((id(value),))
        if src is None:
            return value
        if src in self.known:
            return self.scalars.get(src, value)
        covered = self.covered(src, value, owner)
        if covered and isinstance(src, Attr) and isinstance(owner, Module):
            v = self.checks.get(("version", src.base))  # (named if the version guard fails)
            if v is not None:
                v.seen.setdefault(src.name, value)
        self.objects[src] = value
        state = self.known.get(getattr(src, "base", None))
        if covered and state == FROZEN:
            self.known[src] = FROZEN
            return value
        if is_plain(value):
            if type(value) in (int, float) and self.tracer is not None and \
                    src.describe() in self.dynamic and \
                    (type(value) is float or -EXACT < value < EXACT):  # (read at each call)
                return self._runtime_input(value, src)
            if not covered:
                self.guard(Equals(src, value))
            self.known[src] = VALUE
            return value
        if isinstance(value, types.MethodType):
            self._guard_method(value, src, owner, covered)
            self.known[src] = SHELL
            return value
        if owner is not None and isinstance(value, _BUILTIN_METHODS) and \
                getattr(value, "__self__", None) is owner:
            self.known[src] = SHELL  # a builtin type's method bound to the object read
            return value
        if not covered:
            self.guard(Identity(src, value))
        if isinstance(value, Module):
            self._guard_module(value, src)
            self.known[src] = CONTENTS
        elif isinstance(value, Tensor):
            self.known[src] = IDENTITY
        elif covered and isinstance(src, Attr) and src.name in _MODULE_REGISTRIES:
            self.known[src] = CONTENTS  # (a module's registry: covered by its version)
        else:
            self.known[src] = self._state_of(value)
        self._register(value, src)
        return value

    def _guard_method(self, m: types.MethodType, src: Source, owner, covered: bool) -> None:
        """A bound method read from an object: the function it binds (the class may be
        patched, or an instance attribute may shadow it) — unless it is the library's."""
        fn = m.__func__
        if covered and owner is not None and m.__self__ is owner:
            return
        if owner is not None and m.__self__ is owner and is_library_type(type(owner)) and \
                src.name not in getattr(owner, "__dict__", {}):
            return
        if not covered:
            self.guard(Identity(Attr(src, "__func__"), fn))

    def _runtime_input(self, value: float, src: Source):
        from .sources import Namer
        ns: dict = {}
        expr = src.expr(Namer(ns))
        reader = eval_generated(f"lambda flat: {expr}", ns)
        s = self.tracer.source_scalar(("source", src.describe()), src.describe(), reader, value)
        self.guard(Identity(Call("type", src), type(value)))
        if type(value) is int:
            self.guard(SmallInt(src))
        self.scalars[src] = s
        self.known[src] = VALUE
        return s

    def guard_absent(self, obj, src: Source, name: str) -> None:
        """``getattr(obj, name, default)`` found no attribute: it must stay absent."""
        self.guard(Equals(Call("hasattr", src, (name,)), False))

    # Note (reads after the call's own changes): a container the call appended to (or
    # changed otherwise without reading it) no longer holds what its source names at the
    # next call's entry. Its first change snapshots it; a later read guards the snapshot
    # (entry length and items), after which the container's state is determined by the
    # guards and the replayed changes, and what the program reads of it needs no source.
    # ``len()`` alone guards only the entry length — or, once that changed between calls,
    # is a runtime input plus the call's own additions (``log.append(len(log))``).
    def will_mutate(self, c, cs) -> None:
        if cs is not None and id(c) not in self.mutated and id(c) not in self.fresh_ids:
            items = list(c.items()) if isinstance(c, dict) else list(c) \
                if isinstance(c, (list, set)) else None
            self.mutated[id(c)] = [c, cs, len(c), items, False]

    def changed_read(self, c) -> bool:
        """Whether ``c`` is a container the call changed blindly (then its entry snapshot is
        guarded now, once): the caller reads it without a source."""
        m = self.mutated.get(id(c))
        if m is None or m[0] is not c:
            return False
        if not m[4]:
            m[4] = True
            _, cs, n, items, _ = m
            self.guard(Equals(Call("len", cs), n))
            if isinstance(c, set):
                if not is_plain(tuple(sorted(items, key=repr))):
                    self.refuse(f"a set of objects {cs} is read after the call changed it "
                                f"at {self.where()}: keep numbers or strings in it, or pass "
                                f"what the function needs as an argument")
                else:
                    self.guard(Equals(Call("frozenset", cs), frozenset(items)))
            elif items is not None:
                for k, x in (items if isinstance(c, dict) else enumerate(items)):
                    if not literal_key(k):
                        self.refuse(f"{cs} has a key that cannot be guarded, and is read after "
                                    f"the call changed it at {self.where()}: key it by numbers "
                                    f"or strings, or pass what the function needs as an "
                                    f"argument")
                        break
                    src = Item(cs, k)
                    if is_plain(x):
                        self.guard(Equals(src, x))
                    else:
                        self.guard(Identity(src, x))
        return True

    def changed_len(self, c):
        """``len(c)`` of a container the call changed blindly (see the note above), or None
        for any other container."""
        m = self.mutated.get(id(c))
        if m is None or m[0] is not c or m[4]:
            return None if m is None or m[0] is not c else len(c)
        _, cs, n, _, _ = m
        key = Call("len", cs)
        delta = len(c) - n
        if self.tracer is not None and key.describe() in self.dynamic and key not in self.known:
            return self._runtime_input(n, key) + delta
        if key in self.scalars:
            return self.scalars[key] + delta
        self.guard(Equals(key, n))
        return len(c)

    def structure_used(self, value, src: Source | None) -> None:
        """The program read ``value``'s length or keys (to iterate, unpack, test truth)."""
        if self.changed_read(value) or self.known.get(src) == CONTENTS and \
                not isinstance(value, Module):  # (a module's registry: its version)
            return
        if src is None or self.known.get(src) in (VALUE, FROZEN) or \
                self.covered(src, value) and not isinstance(value, _MUTABLE):
            return
        if isinstance(src, ArgTree):
            return
        if type(value) is tuple and self.known.get(src) == SHELL:
            return
        if isinstance(value, dict):
            keys = tuple(value)
            if is_plain(keys):
                self.guard(Equals(Call("tuple", src), keys))
                return
        self.guard(Equals(Call("len", src), len(value)))

    def contents_used(self, value, src: Source | None, depth: int = 3) -> None:
        """Native code reads all of ``value`` (a container passed to it): guard its length
        and every item, to ``depth`` levels; deeper than that the trace is refused."""
        if self.changed_read(value):
            return
        if src is None or self.known.get(src) in (VALUE, FROZEN) or isinstance(src, ArgTree):
            return
        if not isinstance(value, (list, tuple, dict, set, frozenset)):
            return
        if depth == 0:
            self.refuse(f"{src} is nested too deeply to guard its contents (read by native "
                        f"code at {self.where()}): flatten it, or pass what the function "
                        f"needs as an argument")
            return
        self.structure_used(value, src)
        if isinstance(value, (set, frozenset)):
            if not is_plain(tuple(sorted(value, key=repr))):
                self.refuse(f"a set of objects {src} is read by native code at "
                            f"{self.where()}: keep numbers or strings in it, or pass what the "
                            f"function needs as an argument")
            else:
                self.guard(Equals(Call("frozenset", src), frozenset(value)))
            return
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, x in items:
            s = Item(src, k)
            x2 = self.read(x, s, value)
            if x2 is not x:  # (a runtime input cannot stand inside a container native
                self.guard(Equals(s, x))  # code reads: the value is guarded instead)
            self.contents_used(x, s, depth - 1)

    # ----------------------------------------------------------------- globals and cells
    def load_global(self, f: Frame, name: str):
        g = f.globals
        w = self.written.get((id(g), name))
        if w is not None and name in g:
            return g[name], w[0]
        if name in g:
            value, src = g[name], Global(g, name, self._module_label(g))
        elif name in f.builtins:
            value, src = f.builtins[name], Builtin(g, f.builtins, name)
        else:
            raise Raised(NameError(f"name {name!r} is not defined"))
        if f.library:
            return value, None
        self._entry(g, name, value, src)
        return self.read(value, src), src

    def _entry(self, target, key, value, src) -> None:
        """A location read before the call wrote it: its value at entry, by source."""
        k = (id(target), key)
        if k not in self.entry and k not in self.written:
            self.entry[k] = (target, value, src)

    def _module_label(self, g: dict) -> str:
        top = self.frames[0].globals if self.frames else None
        return "" if g is top else str(g.get("__name__", "?"))

    def store_global(self, f: Frame, name: str, value, vsrc) -> None:
        self._effect(Effect("global", f.globals, name, value, f.where(), f"G[{name!r}]",
                            Global(f.globals, name, self._module_label(f.globals))))
        f.globals[name] = value
        self.written[(id(f.globals), name)] = (vsrc,)

    def delete_global(self, f: Frame, name: str) -> None:
        if name not in f.globals:
            raise Raised(NameError(f"name {name!r} is not defined"))
        self._effect(Effect("delglobal", f.globals, name, None, f.where(), f"G[{name!r}]"))
        del f.globals[name]

    def new_cell(self, cell, src) -> None:
        self.cell_src[id(cell)] = (cell, src)

    def load_cell(self, f: Frame, cell, name: str):
        try:
            value = cell.cell_contents
        except ValueError:
            raise Raised(NameError(f"cannot access free variable {name!r} where it is not "
                                   f"associated with a value in enclosing scope")) from None
        made = self.cell_src.get(id(cell))
        if made is not None:
            return value, made[1]
        w = self.written.get((id(cell), name))
        if w is not None:  # (stored by the call itself: that value, not the entry one)
            return value, w[0]
        if f.library:
            return value, None
        src = Cell(cell, name, f.code.co_qualname)
        self._entry(cell, name, value, src)
        return self.read(value, src), src

    def store_cell(self, f: Frame, cell, name: str, value, vsrc) -> None:
        made = self.cell_src.get(id(cell))
        if made is not None:
            self.cell_src[id(cell)] = (cell, vsrc)
        else:
            self._effect(Effect("cell", cell, name, value, f.where(), f"nonlocal {name}",
                                Cell(cell, name, f.code.co_qualname)))
            self.written[(id(cell), name)] = (vsrc,)
        cell.cell_contents = value

    def delete_cell(self, f: Frame, cell, name: str) -> None:
        self.written.pop((id(cell), name), None)
        if id(cell) not in self.cell_src:
            self._effect(Effect("delcell", cell, name, None, f.where(), f"nonlocal {name}"))
        try:
            del cell.cell_contents
        except ValueError:
            raise Raised(NameError(f"cannot access free variable {name!r}")) from None

    def new_function(self, fn, parts: dict) -> None:
        old = self.fn_parts.get(id(fn), (fn, {}))[1]
        self.fn_parts[id(fn)] = (fn, {**old, **parts})
        self.keep.append(fn)

    def built(self, t: tuple, sources: list) -> None:
        if any(s is not None for s in sources):
            self.tuple_src[id(t)] = (t, list(sources))

    def identity_used(self, f: Frame, value, src) -> None:
        """``is`` / ``is None`` tests: the value's identity was guarded when it was read."""

    # ----------------------------------------------------------------- attributes
    def source_of(self, obj) -> Source | None:
        """The source of an object from before the call that came back from native code."""
        r = self.registry.get(id(obj))
        return r[1] if r is not None and r[0] is obj else None

    def load_attr(self, f: Frame, obj, osrc, name: str):
        w = self.written.get((id(obj), name))
        if w is not None:
            return user(getattr, obj, name), w[0]
        if osrc is None and not f.library:
            osrc = self.source_of(obj)
        t = type(obj)
        if t is super:
            return self._super_attr(f, obj, name)
        if isinstance(obj, Tensor):  # (a tensor's state is the tracer's: bound, guarded)
            return user(getattr, obj, name), None
        if not is_library_type(t):
            raw = _class_lookup(t, name)
            if isinstance(raw, property) and raw.fget is not None and \
                    isinstance(raw.fget, types.FunctionType):
                if osrc is not None:
                    self.read(raw, Attr(Call("type", osrc), name))
                return calls.call(self, f, raw.fget, None, [obj], [osrc], {}, {})
        value = user(getattr, obj, name)
        if osrc is None or f.library and not isinstance(osrc, (Flat, Held)) and \
                self.known.get(osrc) is None:
            return value, None
        src = Attr(osrc, name)
        self._entry(obj, name, value, src)
        return self.read(value, src, obj), src

    def _super_attr(self, f: Frame, sup: super, name: str):
        value = user(getattr, sup, name)
        start = sup.__thisclass__
        mro = type(sup.__self__).__mro__ if not isinstance(sup.__self__, type) else \
            sup.__self__.__mro__
        for k in mro[mro.index(start) + 1:]:
            if name in k.__dict__:
                if not is_library_type(k):
                    self.guard(Identity(Item(Attr(Held(k, k.__qualname__), "__dict__"), name),
                                        k.__dict__[name]))
                break
        return value, None

    def store_attr(self, f: Frame, obj, osrc, name: str, value, vsrc) -> None:
        if osrc is None:
            osrc = self.source_of(obj)
        if not isinstance(obj, Tensor) and osrc is not None and id(obj) not in self.fresh_ids:
            self._effect(Effect("setattr", obj, name, value, f.where(), f"{osrc}.{name}",
                                Attr(osrc, name)))
        user(setattr, obj, name, value)
        if osrc is not None:
            self.written[(id(obj), name)] = (vsrc,)

    def delete_attr(self, f: Frame, obj, osrc, name: str) -> None:
        if osrc is None:
            osrc = self.source_of(obj)
        if not isinstance(obj, Tensor) and osrc is not None:
            self._effect(Effect("delattr", obj, name, None, f.where(), f"{osrc}.{name}"))
        user(delattr, obj, name)

    # ----------------------------------------------------------------- items
    def get_item(self, f: Frame, c, cs, k, ks):
        self.saw((id(c),))  # (a lookup in it, however the container was found)
        if literal_key(k):
            w = self.written.get((id(c), k))
            if w is not None:
                return user(operator.getitem, c, k), w[0]
        if isinstance(c, Tensor):
            return user(operator.getitem, c, calls._plain_ints(k, "a tensor index")), None
        getitem = _class_lookup(type(c), "__getitem__")
        if isinstance(getitem, types.FunctionType) and \
                not is_library_type(type(c)):
            return calls.call(self, f, getitem, None, [c, k], [cs, ks], {}, {})
        if self.changed_read(c):
            return user(operator.getitem, c, k), None
        value = user(operator.getitem, c, k)
        if cs is None:
            cs = self.source_of(c) if not f.library else None
            if cs is None:
                built = self.tuple_src.get(id(c))
                if built is not None and built[0] is c and type(k) is int:
                    return value, built[1][k]
                return value, None
        if isinstance(cs, ArgTree):
            if type(k) is int and k < 0:
                k += len(c)
            return value, (self.arg_paths.get(cs.path + (k,)) if literal_key(k) else None)
        if isinstance(k, slice):
            self.structure_used(c, cs)
        src = Item(cs, k)
        if literal_key(k):
            self._entry(c, k, value, src)
        return self.read(value, src, c), src

    def set_item(self, f: Frame, c, cs, k, value, vsrc) -> None:
        if isinstance(c, Tensor):
            user(operator.setitem, c, calls._plain_ints(k, "a tensor index"),
                 calls._plain_ints(value, "a tensor store"))
            return
        setitem = _class_lookup(type(c), "__setitem__")
        if isinstance(setitem, types.FunctionType) and not is_library_type(type(c)):
            calls.call(self, f, setitem, None, [c, k, value], [cs, None, vsrc], {}, {})
            return
        if cs is None:
            cs = self.source_of(c)
        if cs is not None and id(c) not in self.fresh_ids:
            self._effect(Effect("setitem", c, k, value, f.where(), f"{cs}[{k!r}]",
                                Item(cs, k) if literal_key(k) else None))
            if not isinstance(c, dict) or k not in c:  # (a list position, or a new key)
                self.will_mutate(c, cs)
        user(operator.setitem, c, k, value)
        if cs is not None and literal_key(k):
            self.written[(id(c), k)] = (vsrc,)

    def delete_item(self, f: Frame, c, cs, k) -> None:
        if cs is None:
            cs = self.source_of(c)
        if cs is not None and not isinstance(c, Tensor):
            self._effect(Effect("delitem", c, k, None, f.where(), f"{cs}[{k!r}]"))
        user(operator.delitem, c, k)

    # ----------------------------------------------------------------- effects
    def _effect(self, e: Effect) -> None:
        self.effects.append(e)
        self.keep.append(e.target)

    # ----------------------------------------------------------------- the rest
    def truth(self, f: Frame, v, s) -> bool:
        return calls.truth(self, f, v, s)

    def operator(self, f: Frame, fn, args, srcs, sym: str):
        return calls.operator(self, f, fn, args, srcs, sym)

    def call(self, f: Frame, fn, fs, args, asrc, kwargs, ksrc):
        return calls.call(self, f, fn, fs, args, asrc, kwargs, ksrc)

    def get_iter(self, f: Frame, v, s):
        return calls.get_iter(self, f, v, s)

    def next_item(self, f: Frame, it, s):
        return calls.next_item(self, f, it, s)

    def unpack(self, f: Frame, v, s, n):
        return calls.unpack(self, f, v, s, n)

    def mapping_items(self, f: Frame, v, s):
        return [(k, x) for k, (x, _) in self.mapping_sourced_items(f, v, s)]

    def mapping_sourced_items(self, f: Frame, v, s):
        if v is NULL or v is None:
            return []
        if not hasattr(v, "keys"):
            raise Raised(TypeError(f"argument after ** must be a mapping, not "
                                   f"{type(v).__name__}"))
        self.saw((id(v),))  # (its keys and items, however the mapping was found)
        if s is None:
            s = self.source_of(v)
        if s is not None:
            self.structure_used(v, s)
        out = []
        for k in user(list, v.keys()):
            x = user(operator.getitem, v, k)
            xs = Item(s, k) if s is not None and not isinstance(s, ArgTree) else (
                self.arg_paths.get(s.path + (k,)) if isinstance(s, ArgTree) else None)
            out.append((k, (self.read(x, xs, v) if xs is not None else x, xs)))
        return out

    def format(self, f: Frame, v, s, conv: int, spec):
        return calls.format_value(self, f, v, s, conv, spec)

    def enter(self, f: Frame, mgr, ms):
        return calls.enter(self, f, mgr, ms)

    def import_name(self, f: Frame, name: str, fromlist, level):
        mod = user(__import__, name, f.globals, None, fromlist, level)
        if f.library:
            return mod, None
        src = Held(mod, f"sys.modules[{mod.__name__!r}]")
        self.note_root(mod, src)
        return mod, src


def _class_lookup(t: type, name: str):
    for k in t.__mro__:
        if name in k.__dict__:
            return k.__dict__[name]
    return None


def location(code, offset: int) -> str:
    return where(code, offset)
