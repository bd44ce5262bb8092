"""Calls, iteration and operators under the capture: what is interpreted, what runs natively,
and what a native call is told about the sources of its arguments.

- A Python function of the user's is interpreted in a new :class:`Frame` (its arguments keep
  their sources; its defaults are read from ``__defaults__`` as sources). So is a library
  function that calls user code (see :func:`compiler.capture.library.calls_user_code`).
- Bound methods, ``functools.partial`` objects, classes of the user's and objects with a
  ``__call__`` of the user's are unwrapped to the function they run.
- Anything else runs natively. A container from before the call that native code reads is
  guarded whole first (``Capture.contents_used``); a method that changes such a container is
  a side effect; a float read from a tensor (``.item()``) that reaches ``math.*`` is a
  recorded operation where the operation is exact in float64, and a guarded value otherwise.
"""

from __future__ import annotations

import builtins
import functools
import gc
import math
import operator as _op
import types
import weakref
from itertools import repeat

import numpy as np

from dyngrad.nn.containers import ModuleList, Sequential
from dyngrad.nn.module import Module
from dyngrad.optim.optimizer import Optimizer
from dyngrad.size import Size
from dyngrad.tensor import Tensor

from .. import prims as P
from ..scalars import TracedInt, TracedScalar
from .effect import BLIND_MUTATORS, Effect
from .frame import (
    CO_VARARGS,
    CO_VARKEYWORDS,
    NULL,
    PY,
    UNBOUND,
    Code,
    Frame,
    NotInterpretable,
    Raised,
    program,
    user,
)
from .library import (
    calls_user_code,
    is_library_code,
    is_library_module,
    is_library_type,
    is_user_callable,
)
from .sources import ArgTree, Attr, Call, Held, Item, literal_key

_MAX_DEPTH = 200  # interpreted frames (deeper recursion runs natively and is refused)


# ----------------------------------------------------------------- generators


def stop_iteration(value) -> StopIteration:
    """What a finished generator raises (``return None``: a StopIteration without arguments)."""
    return StopIteration() if value is None else StopIteration(value)


class InterpGenerator:
    """A generator of interpreted code: each ``next`` resumes its frame. Native code (``sum``,
    ``list``, a library loop) may drive it too; the frame still runs under the capture."""

    def __init__(self, cap, frame: Frame) -> None:
        self.cap = cap
        self.frame = frame
        self.__name__ = frame.code.co_name
        self.__qualname__ = frame.code.co_qualname

    def __iter__(self):
        return self

    def resume(self, value=None, src=None, throw=None):
        """(done, value, source); the program's exceptions come out as :class:`Raised`.
        ``throw``: an exception raised where the generator is suspended instead."""
        f = self.frame
        if f.done:
            return True, None, None
        self.cap.frames.append(f)
        try:
            v, s = f.run(value, src, throw)
        except Raised as r:  # (3.11 turns an escaping StopIteration into an error here;
            if PY == (3, 11) and isinstance(r.exc, StopIteration):  # 3.12+ in bytecode)
                exc = RuntimeError("generator raised StopIteration")
                exc.__cause__ = exc.__context__ = r.exc
                raise Raised(exc) from None
            raise
        finally:
            self.cap.frames.pop()
        if f.done:
            return True, v, s
        return False, v, s

    def send(self, value):
        if value is not None and self.frame.pc == 0 and not self.frame.done:
            raise TypeError("can't send non-None value to a just-started generator")
        done, v, _ = program(self.resume, value)
        if done:
            raise stop_iteration(v)
        return v

    def __next__(self):
        return self.send(None)

    def close(self) -> None:
        if not self.frame.yielded:  # (not started, or finished)
            self.frame.done = True
            return
        try:
            done, _, _ = program(self.resume, None, None, GeneratorExit())
        except (GeneratorExit, StopIteration):
            return
        if not done:
            raise RuntimeError("generator ignored GeneratorExit")

    def throw(self, exc, *args):
        exc = exc if isinstance(exc, BaseException) else exc(*args)
        if not self.frame.yielded:  # (not started, or finished: raised as it is)
            self.frame.done = True
            raise exc
        done, v, _ = program(self.resume, None, None, exc)
        if done:
            raise stop_iteration(v)
        return v


# ----------------------------------------------------------------- calling


def _unwrap(cap, fn, fs, args, asrc, kwargs, ksrc):
    """Bound methods and partials: the function they run, with its full arguments."""
    while True:
        if type(fn) is types.MethodType:
            self_ = fn.__self__
            if isinstance(fs, Attr) and cap.objects.get(fs.base) is self_:
                ss = fs.base  # obj.method: self is obj, read from its own source
            elif fs is not None:
                ss = Attr(fs, "__self__")
                cap.read(self_, ss, fn)
            else:
                ss = cap.source_of(self_)
            fn, fs = fn.__func__, (Attr(fs, "__func__") if fs is not None else None)
            args, asrc = [self_, *args], [ss, *asrc]
        elif _COMPILED and type(fn) is _COMPILED[0][1]:  # a compiled method's instance,
            #                                               held weakly
            self_ = fn.__self__
            ss = Attr(fs, "__self__") if fs is not None else None
            if ss is not None:
                cap.note_root(self_, ss)
            fn, fs = fn.func, (Attr(fs, "func") if fs is not None else None)
            args, asrc = [self_, *args], [ss, *asrc]
        elif type(fn) is functools.partial:
            p = fn
            psrc = fs
            pargs = list(p.args)
            pa_src = [Item(Attr(psrc, "args"), i) if psrc is not None else None
                      for i in range(len(pargs))]
            pargs = [cap.read(v, s, p.args) for v, s in zip(pargs, pa_src)]
            kw = dict(p.keywords)
            if psrc is not None:
                ks = Attr(psrc, "keywords")
                cap.read(p.keywords, ks, p)
                cap.structure_used(p.keywords, ks)
                kw_src = {k: Item(ks, k) for k in kw}
                kw = {k: cap.read(v, kw_src[k], p.keywords) for k, v in kw.items()}
            else:
                kw_src = {k: None for k in kw}
            fn, fs = p.func, (Attr(psrc, "func") if psrc is not None else None)
            if fs is not None:
                cap.read(fn, fs, p)
            args, asrc = [*pargs, *args], [*pa_src, *asrc]
            kwargs, ksrc = {**kw, **kwargs}, {**kw_src, **ksrc}
        else:
            return fn, fs, args, asrc, kwargs, ksrc


# The compiler's own callables the capture traces through, registered by compiler/api.py
# (the capture does not import it): a compiled function, traced through to the function it
# compiles (its variants are for calls made outside), and a compiled method's weakly bound
# instance.
_COMPILED: list = []  # [(compiled function type, bound method type)]


def trace_through(compiled_type: type, bound_type: type) -> None:
    """Register the compiler's compiled-function and bound-method types."""
    _COMPILED[:] = [(compiled_type, bound_type)]


def call(cap, f: Frame | None, fn, fs, args: list, asrc: list, kwargs: dict, ksrc: dict):
    """Call ``fn`` under the capture: (result, its source)."""
    if fn is NULL:
        raise Raised(TypeError("'NoneType' object is not callable"))
    fn, fs, args, asrc, kwargs, ksrc = _unwrap(cap, fn, fs, args, asrc, kwargs, ksrc)
    if _COMPILED and isinstance(fn, _COMPILED[0][0]):  # inside a trace, a compiled
        inner = fn.fn  # function is traced through (its variants are for calls made outside)
        fs = Attr(fs, "fn") if fs is not None else None
        if fs is not None:
            cap.read(inner, fs, fn)
        return call(cap, f, inner, fs, args, asrc, kwargs, ksrc)
    if isinstance(fn, types.FunctionType):
        library = is_library_code(fn.__code__)
        if not library or calls_user_code(fn, args, kwargs):
            if library and cap.fill is not None and args and isinstance(args[0], Optimizer):
                # (an optimizer's method interpreted, given user code — step(closure): it
                # would hold a filled state's objects while the tripwire springs midway)
                cap.fill.trip()
            return run_function(cap, fn, fs, args, asrc, kwargs, ksrc, library)
        return native(cap, f, fn, args, asrc, kwargs, ksrc)
    if fn is builtins.super and not args and f is not None:
        return _zero_arg_super(f), None
    if fn is enumerate:  # (a type: before instantiate)
        return _b_enumerate(cap, f, args, asrc, kwargs, ksrc)
    if isinstance(fn, type):
        return instantiate(cap, f, fn, args, asrc, kwargs, ksrc)
    special = _BUILTINS.get(id(fn))
    if special is not None and special[0] is fn:
        return special[1](cap, f, args, asrc, kwargs, ksrc)
    self_ = getattr(fn, "__self__", None)
    if isinstance(fn, (types.BuiltinMethodType, types.MethodWrapperType)) and \
            isinstance(self_, (list, dict, set)):
        return _container_method(cap, f, fn, self_, fs, args, asrc, kwargs, ksrc)
    if not isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        method = _class_attr(type(fn), "__call__")
        if isinstance(method, types.FunctionType) and \
                (not is_library_code(method.__code__) or
                 calls_user_code(method, [fn, *args], kwargs)):
            return run_function(cap, method, None, [fn, *args], [fs, *asrc], kwargs, ksrc,
                                is_library_code(method.__code__))
    return native(cap, f, fn, args, asrc, kwargs, ksrc)


def run_function(cap, fn: types.FunctionType, fs, args, asrc, kwargs, ksrc, library: bool):
    code = Code.of(fn.__code__)
    if code.refused is not None or len(cap.frames) >= _MAX_DEPTH:
        why = code.refused or "recursion deeper than the capture follows"
        if not library:
            cap.refuse(f"{fn.__qualname__} uses {why} at "
                       f"{fn.__code__.co_filename}:{fn.__code__.co_firstlineno}, which the "
                       f"capture does not follow: rewrite that part (a for loop for `yield "
                       f"from`, if/elif for a match on values, a class defined outside), or "
                       f"call {fn.__name__} outside the compiled function")
        return native(cap, None, fn, args, asrc, kwargs, ksrc, refused=True)
    loc, lsrc = bind(cap, fn, fs, args, asrc, kwargs, ksrc, library)
    frame = Frame(cap, fn, loc, lsrc, library)
    if code.generator:
        g = InterpGenerator(cap, frame)
        cap.keep.append(g)
        return g, None
    cap.frames.append(frame)
    try:
        return frame.run()
    except NotInterpretable as exc:
        raise RuntimeError(f"dyngrad.compile: the capture met {exc} after it had started "
                           f"running {fn.__qualname__}; please report this") from None
    finally:
        cap.frames.pop()


def native(cap, f, fn, args, asrc, kwargs, ksrc, refused: bool = False):
    """Run ``fn`` natively: containers from before the call that it reads are guarded whole;
    the result is a fresh value, or the source of the object it returned if that object
    existed before the call."""
    library = is_library_code(fn.__code__) if isinstance(fn, types.FunctionType) else \
        _is_library_callable(fn)
    if not refused:
        for v, s in zip(args, asrc):
            _native_arg(cap, v, s, library)
        for k, v in kwargs.items():
            _native_arg(cap, v, ksrc.get(k), library)
    stores = isinstance(getattr(fn, "__self__", None), (list, dict)) and \
        getattr(fn, "__name__", "") in _STORES
    if not stores:
        what = getattr(fn, "__name__", "a function")
        args = [_plain_ints(a, what) for a in args]
        kwargs = {k: _plain_ints(v, what) for k, v in kwargs.items()}
    ts = repeat(TracedScalar)  # (map, not a generator expression: no Python frame per call)
    if (any(map(isinstance, args, ts)) or any(map(isinstance, kwargs.values(), ts))) \
            and not _traces(fn) \
            and not (isinstance(getattr(fn, "__self__", None), (list, dict)) and
                     getattr(fn, "__name__", "") in _STORES):
        # (a container method stores the traced number as it is: effect replay makes the
        # store again with each call's value)
        what = getattr(fn, "__name__", "a function")  # (round, np.float32: a guarded value)
        args = [_plain_scalar(cap, a, what) for a in args]
        kwargs = {k: _plain_scalar(cap, v, what) for k, v in kwargs.items()}
    iterated = _drives(fn, len(args))
    if iterated is not None:  # a builtin that iterates its arguments or calls back: keep
        args = [_interpreted(cap, f, a, asrc[i] if i < len(asrc) else None,  # them seen
                             i in iterated) for i, a in enumerate(args)]
        kwargs = {k: _interpreted(cap, f, v, ksrc.get(k), False) for k, v in kwargs.items()}
    owner = getattr(fn, "__self__", None)
    roots = [*args, *kwargs.values()]
    if roots and isinstance(roots[0], Optimizer) and _stateless_method(roots[0], fn):
        if cap.fill is not None and fn.__name__ == "step":
            cap.fill.stepping(roots[0])  # (a fill that this step would not take as eager)
        roots = roots[1:]  # (its own step(): it reads the state as a first step would)
    if owner is not None and not (isinstance(owner, Optimizer) and
                                  getattr(fn, "__name__", "") in _STATELESS):
        roots.append(owner)
    if fn in (gc.get_referrers, gc.get_objects):
        cap.optimizers_given.add(None)  # (they find every object: any optimizer's state)
    _note_reached(cap, f, roots)
    watched = _watched_state(owner)
    if not all(type(k) is str for k in kwargs):  # (``f(**{1: 2})``: the call itself
        user(lambda: dict(**kwargs))  #           raises the program's TypeError)
    value = user(fn, *args, **kwargs)
    if watched is not None and _state_of(owner) != watched:
        cap.refuse(f"{type(owner).__name__}.{getattr(fn, '__name__', '?')}() at {cap.where()} "
                   f"changes the state of a library {type(owner).__name__}, which a compiled "
                   f"call would not repeat: call it outside the compiled function")
    return value, cap.source_of(value)


def _watched_state(obj):
    """The attributes of a library object (other than tensors, modules and optimizers,
    whose state the tracer and the version counters follow) a native method may change:
    compared after the call (an lr scheduler's ``step()`` advances ``last_epoch``)."""
    if obj is None or isinstance(obj, (Tensor, Module, types.ModuleType, type)) or \
            isinstance(obj, Optimizer):
        return None
    d = getattr(obj, "__dict__", None)
    if not d or type(obj).__module__.split(".")[0] != "dyngrad":
        return None
    return _state_of(obj)


def _state_of(obj) -> dict:
    return {k: (id(v), v if type(v) in (int, float, bool, str) else None)
            for k, v in vars(obj).items()}


# an optimizer's methods that read its state only as a first step() would (Note [a first
# step from a filled state] in compiler/variantcache.py)
_STATELESS = frozenset({"step", "zero_grad", "hyper"})


def _stateless_method(opt, fn) -> bool:
    """Whether ``fn`` is ``opt``'s own step() or zero_grad() (called as a function on it)."""
    name = getattr(fn, "__name__", "")
    return name in _STATELESS and getattr(type(opt), name, None) is fn


_REACH = 20_000  # objects `_note_reached` visits per native call at most
_ATOMS = frozenset({int, float, complex, bool, str, bytes, type(None), slice, range,
                    TracedScalar, TracedInt, types.BuiltinFunctionType, types.CodeType})


def _note_reached(cap, f, roots: list) -> None:
    """What native code given ``roots`` (its arguments and owner) by the program's frame
    ``f`` may read of optimizers' state (Note [a first step from a filled state] in
    compiler/variantcache.py): the ids of the objects reachable from them
    (``Capture.native_seen``: a state dict held in a namespace), and of the optimizers among
    them, not walked into (``Capture.optimizers_given``: ``copy.deepcopy([opt])``, a
    scheduler's ``optimizer``) — ``Capture.saw``, which also shows them to a first call's
    filled state. Functions are followed into their closures and defaults, classes and
    modules only where they are the user's; a walk longer than ``_REACH`` notes every
    optimizer (None). The library's own frames, interpreted because they call back
    into the program (``Module.__call__``), are not walked from: the library reads an
    optimizer's state only in the optimizer's methods. A module (``nn.Module``) walked once
    in the call is not walked again while its version stands (a GPT's blocks at each
    iteration: without it, a third of W8's trace)."""
    if f is not None and f.library:
        return
    stack, seen = list(roots), set()
    given, walked = cap.optimizers_given, cap.modules_walked
    while stack:
        x = stack.pop()
        t = type(x)
        if t in _ATOMS or id(x) in seen:
            continue
        seen.add(id(x))
        if len(seen) > _REACH:
            given.add(None)
            break
        if isinstance(x, Module):
            if walked.get(id(x)) == x._version:
                continue
            walked[id(x)] = x._version
            stack.extend(gc.get_referents(x))
        elif isinstance(x, Optimizer):
            given.add(id(x))
        elif isinstance(x, (Tensor, InterpGenerator, _Shim, _Driven, _Stepped)):
            continue  # (a tensor's hooks run outside the capture and are refused there;
            #            the capture's own iterators and shims are interpreted)
        elif isinstance(x, type):
            if not is_library_type(x):
                stack.extend(vars(x).values())
        elif isinstance(x, types.ModuleType):
            if not is_library_module(x):
                stack.extend(vars(x).values())
        elif isinstance(x, types.FunctionType):
            stack.extend(c.cell_contents for c in x.__closure__ or () if _filled_cell(c))
            stack.extend(x.__defaults__ or ())
            stack.extend((x.__kwdefaults__ or {}).values())
        elif isinstance(x, (types.GeneratorType, types.CoroutineType,
                            types.AsyncGeneratorType, types.FrameType)):
            frame = x if t is types.FrameType else \
                getattr(x, "gi_frame", None) or getattr(x, "cr_frame", None) or \
                getattr(x, "ag_frame", None)
            if frame is not None:
                stack.extend(frame.f_locals.values())
            stack.append(getattr(x, "gi_yieldfrom", None))
        elif isinstance(x, weakref.ref):
            stack.append(x())
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                stack.extend(x.ravel().tolist())
        elif t is dict:  # (its keys and values read: on 3.13 an instance's __dict__ whose
            stack.extend(x.keys())  # values live in the instance has no referents)
            stack.extend(x.values())
        else:
            stack.extend(gc.get_referents(x))
    cap.saw(seen, given)  # (before the native code runs)


def _plain_container(v) -> bool:
    """A subclass of a builtin container whose ``len``, ``bool`` and ``iter`` are the
    builtin's."""
    for base in (list, tuple, dict, set, frozenset):
        if isinstance(v, base):
            t = type(v)
            return all(getattr(t, m, None) is getattr(base, m, None)
                       for m in ("__len__", "__bool__", "__iter__"))
    return False


def _note_used(cap, f, v) -> None:
    """``len``, ``bool`` or ``iter`` of ``v`` run natively: a builtin container's reads only
    itself, as does a subclass's that keeps those methods (an optimizer's ``param_groups``,
    which holds its optimizer); another object (a ``ChainMap`` over the state) what it holds
    (`_note_reached`)."""
    if type(v) in (list, tuple, dict, set, frozenset) or _plain_container(v):
        cap.saw((id(v),))
    else:
        _note_reached(cap, f, [v])


def _filled_cell(c) -> bool:
    try:
        c.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


_STORES = frozenset({"append", "insert", "__setitem__"})  # (store a value, never read it)


def _traces(fn) -> bool:
    """Code that takes traced numbers as they are (dyngrad's and the compiler's own: its
    tensor operations record them); anything else reads them as plain floats."""
    mod = getattr(fn, "__module__", None)
    if not isinstance(mod, str):
        mod = getattr(type(fn), "__module__", "") or ""
    return mod.split(".")[0] in ("dyngrad", "compiler")


_DRIVERS: dict = {}  # id(builtin) -> (builtin, the positions of the arguments it iterates)


def _drives(fn, nargs: int) -> range | None:
    """For builtins that iterate their arguments or call the callables they are given: the
    positions of the arguments they iterate (``sum(xs, start)`` does not iterate ``start``,
    ``max(a, b)`` compares its arguments); None for other callables."""
    if not _DRIVERS:
        import itertools
        first, every, after_fn = range(1), range(1 << 16), range(1, 1 << 16)
        for x, which in (
                (sum, first), (list, first), (tuple, first), (set, first), (frozenset, first),
                (sorted, first), (min, first), (max, first), (any, first), (all, first),
                (enumerate, first), (dict, first), (itertools.accumulate, first),
                (itertools.groupby, first), (itertools.islice, first), (zip, every),
                (itertools.chain, every), (itertools.product, every),
                (itertools.zip_longest, every), (map, after_fn), (filter, after_fn),
                (itertools.starmap, after_fn), (itertools.takewhile, after_fn),
                (itertools.dropwhile, after_fn), (itertools.filterfalse, after_fn),
                (functools.reduce, range(1, 2))):
            _DRIVERS[id(x)] = (x, which)
    d = _DRIVERS.get(id(fn))
    if d is not None and d[0] is fn:
        return range(0) if fn in (min, max) and nargs > 1 else d[1]
    if getattr(fn, "__name__", None) in ("sort", "join", "extend", "update") and \
            isinstance(fn, types.BuiltinMethodType):
        return range(1)
    return None


def _interpreted(cap, f, x, s, iterated: bool):
    """``x`` as native code may use it: a user callable becomes a shim that interprets it,
    an object with a user ``__iter__`` that the builtin iterates the iterator the
    interpreter drives (not a mapping: ``dict()`` and ``update`` read its keys)."""
    if isinstance(x, (InterpGenerator, SourcedIter, ArgIter, Enumerated, Tensor)) or \
            type(x) in (list, tuple, dict, set, str, range):
        return x
    if isinstance(x, (types.FunctionType, types.MethodType, functools.partial)) and \
            is_user_callable(x):
        return _Shim(cap, f, x)
    if iterated and isinstance(x, types.GeneratorType) and \
            not is_library_code(x.gi_code):  # (resumed natively: its code runs unseen)
        cap.escaped(x.gi_code)
    if iterated and _user_dunder(type(x), "__iter__") is not None and \
            not hasattr(type(x), "keys"):
        it, its = get_iter(cap, f, x, s)
        return it if isinstance(it, (InterpGenerator, SourcedIter)) else _Driven(cap, f, it)
    return x


class _Shim:
    """A user function handed to native code that calls it: each call is interpreted."""

    def __init__(self, cap, f, fn) -> None:
        self.cap, self.f, self.fn = cap, f, fn

    def __call__(self, *args, **kwargs):
        return program(call, self.cap, self.f, self.fn, None, list(args), [None] * len(args),
                       kwargs, {k: None for k in kwargs})[0]


class _Driven:
    """An iterator of the user's handed to native code: each step is interpreted."""

    def __init__(self, cap, f, it) -> None:
        self.cap, self.f, self.it = cap, f, it

    def __iter__(self):
        return self

    def __next__(self):
        ok, v, _ = program(next_item, self.cap, self.f, self.it, None)
        if not ok:
            raise StopIteration
        return v


def _is_library_callable(fn) -> bool:
    mod = getattr(fn, "__module__", None)
    if isinstance(fn, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        self_ = getattr(fn, "__self__", None)
        if self_ is not None and not isinstance(self_, types.ModuleType):
            return is_library_type(type(self_))
        return mod is None or mod in ("builtins", "math", "operator", "_operator") or \
            mod.split(".")[0] in ("numpy", "dyngrad", "compiler", "_functools", "functools",
                                  "itertools")
    return is_library_type(type(fn))


def _native_arg(cap, v, s, library: bool) -> None:
    if s is None:
        s = cap.source_of(v)
    view = cap.views.get(id(v))
    if view is not None and view[0] is v:
        cap.contents_used(view[1], view[2])
    elif s is not None and isinstance(v, (list, tuple, dict, set, frozenset)):
        cap.contents_used(v, s)


def _plain_ints(x, what: str):
    """``x`` with its traced ints (deep in tuples, lists, dicts and slices) as plain ints,
    their values guarded: what code outside the interpreter gets."""
    ti = TracedInt
    t = type(x)
    if t is ti:
        return x._pin(what)
    if t is tuple or t is list:
        if any(type(e) is ti or type(e) in (tuple, list, dict, slice) for e in x):
            return t(_plain_ints(e, what) for e in x)
        return x
    if t is dict and any(type(e) is ti for e in x.values()):
        return {k: _plain_ints(e, what) for k, e in x.items()}
    if t is slice and ti in (type(x.start), type(x.stop), type(x.step)):
        return slice(_plain_ints(x.start, what), _plain_ints(x.stop, what),
                     _plain_ints(x.step, what))
    return x


def _plain_scalar(cap, x, what: str):
    """A traced number passed to code that reads it as a plain float: guarded."""
    if isinstance(x, TracedScalar):
        x._tracer.guard_scalar(x, what)
        return float(x)
    return x


def bind(cap, fn, fs, args, asrc, kwargs, ksrc, library: bool):
    """Bind a call's arguments to ``fn``'s parameters: (locals, their sources)."""
    code = fn.__code__
    names = code.co_varnames
    nargs, nkw = code.co_argcount, code.co_kwonlyargcount
    npos_only = code.co_posonlyargcount
    pos, kwonly = names[:nargs], names[nargs:nargs + nkw]
    k = nargs + nkw
    varargs = names[k] if code.co_flags & CO_VARARGS else None
    varkw = names[k + (varargs is not None)] if code.co_flags & CO_VARKEYWORDS else None
    loc: dict = {}
    src: dict = {}
    qual = fn.__qualname__
    for i, (v, s) in enumerate(zip(args, asrc)):
        if i >= nargs:
            break
        loc[pos[i]], src[pos[i]] = v, s
    if varargs is not None:
        t = tuple(args[nargs:])
        cap.built(t, list(asrc[nargs:]))
        loc[varargs] = t
    more: dict = {}
    for name, v in kwargs.items():
        if name in kwonly or (name in pos and pos.index(name) >= npos_only):
            if name in loc:
                raise Raised(TypeError(f"{qual}() got multiple values for argument {name!r}"))
            loc[name], src[name] = v, ksrc.get(name)
        elif varkw is not None:
            more[name] = v
        elif name in pos:
            raise Raised(TypeError(f"{qual}() got some positional-only arguments passed as "
                                   f"keyword arguments: {name!r}"))
        else:
            raise Raised(TypeError(f"{qual}() got an unexpected keyword argument {name!r}"))
    if varkw is not None:
        loc[varkw] = more
    if len(args) > nargs and varargs is None:
        raise Raised(TypeError(_too_many_positional(fn, len(args), kwargs)))
    made = cap.fn_parts.get(id(fn))
    made = made[1] if made is not None and made[0] is fn else None
    defaults = fn.__defaults__ or ()
    first = nargs - len(defaults)
    missing = [name for name in pos[:first] if name not in loc]
    if missing:
        raise Raised(TypeError(_missing(qual, "positional", missing)))
    for i, name in enumerate(pos[first:]):
        if name not in loc:
            loc[name], src[name] = _default_source(cap, fn, fs, made, "__defaults__", i,
                                                   defaults[i], library)
    kwd = fn.__kwdefaults__ or {}
    missing = [name for name in kwonly if name not in loc and name not in kwd]
    if missing:
        raise Raised(TypeError(_missing(qual, "keyword-only", missing)))
    for name in kwonly:
        if name not in loc:
            loc[name], src[name] = _default_source(cap, fn, fs, made, "__kwdefaults__",
                                                   name, kwd[name], library)
    return loc, src


def _missing(qual: str, kind: str, names: list) -> str:
    """CPython's message for missing arguments."""
    quoted = [repr(n) for n in names]
    listed = quoted[0] if len(quoted) == 1 else f"{quoted[0]} and {quoted[1]}" \
        if len(quoted) == 2 else f"{', '.join(quoted[:-1])}, and {quoted[-1]}"
    return f"{qual}() missing {len(names)} required {kind} argument" \
        f"{'s' if len(names) > 1 else ''}: {listed}"


def _too_many_positional(fn, given: int, kwargs: dict) -> str:
    """CPython's message for a call with more positional arguments than ``fn`` takes."""
    code = fn.__code__
    nargs, ndefaults = code.co_argcount, len(fn.__defaults__ or ())
    kwonly = code.co_varnames[nargs:nargs + code.co_kwonlyargcount]
    sig = f"from {nargs - ndefaults} to {nargs}" if ndefaults else str(nargs)
    plural = "s" if ndefaults or nargs != 1 else ""
    nkw = sum(1 for k in kwargs if k in kwonly)
    kw = f" positional argument{'s' if given != 1 else ''} (and {nkw} keyword-only " \
        f"argument{'s' if nkw != 1 else ''})" if nkw else ""
    verb = "was" if given == 1 and not nkw else "were"
    return f"{fn.__qualname__}() takes {sig} positional argument{plural} but {given}{kw} " \
        f"{verb} given"


def _default_source(cap, fn, fs, made, attr: str, key, value, library: bool):
    """(the value the call sees, its source) for a parameter left to its default."""
    if library:
        return value, None
    if made is not None:  # a function made in this call: the default's source at creation
        part = made.get(attr)
        if part is None:
            return value, None
        container, csrc = part
        if attr == "__defaults__":
            built = cap.tuple_src.get(id(container))
            return value, (built[1][key] if built is not None and built[0] is container
                           else None)
        return value, None
    base = fs if fs is not None else Held(fn, fn.__qualname__)
    s = Item(Attr(base, attr), key)
    return cap.read(value, s, getattr(fn, attr)), s


def _zero_arg_super(f: Frame):
    cell = f.cells.get("__class__")
    if cell is None or not f.code.co_varnames:
        raise Raised(RuntimeError("super(): no arguments"))
    first = f.code.co_varnames[0]
    obj = f.locals.get(first)
    if obj is None and first in f.cells:
        obj = f.cells[first].cell_contents
    return super(cell.cell_contents, obj)


def instantiate(cap, f, cls: type, args, asrc, kwargs, ksrc):
    """``cls(...)``: a class of the user's runs its ``__new__``/``__init__`` interpreted."""
    if is_library_type(cls) or type(cls) is not type and not is_library_type(type(cls)):
        init = getattr(cls, "__init__", None)
        if isinstance(init, types.FunctionType) and is_library_code(init.__code__) and \
                calls_user_code(init, args, kwargs) and type(cls) is type:
            pass  # a library class given user callables: interpreted below
        else:
            value, _ = native(cap, f, cls, args, asrc, kwargs, ksrc)
            return value, None
    new = _class_attr(cls, "__new__")
    if isinstance(new, staticmethod):
        new = new.__func__
    if new is object.__new__:
        obj = object.__new__(cls)
    elif isinstance(new, types.FunctionType):
        obj, _ = call(cap, f, new, None, [cls, *args], [None, *asrc], kwargs, ksrc)
    else:
        obj = user(new, cls, *args, **kwargs)
    cap.fresh_ids.add(id(obj))
    cap.keep.append(obj)
    if isinstance(obj, cls):
        init = _class_attr(cls, "__init__")
        if isinstance(init, types.FunctionType):
            call(cap, f, init, None, [obj, *args], [None, *asrc], kwargs, ksrc)
        elif init is not object.__init__:
            user(init, obj, *args, **kwargs)
    return obj, None


def _class_attr(t: type, name: str):
    for k in t.__mro__:
        if name in k.__dict__:
            return k.__dict__[name]
    return None


# ----------------------------------------------------------------- containers


_QUERY = {"get", "keys", "values", "items", "copy", "index", "count", "__contains__",
          "__len__", "__getitem__", "__iter__", "__reversed__"}


def _container_method(cap, f, fn, c, fs, args, asrc, kwargs, ksrc):
    """A method of a list, dict or set: a query of one from before the call is guarded by
    what it reads; a change to one is a side effect."""
    method = fn.__name__
    cs = fs.base if isinstance(fs, Attr) else cap.source_of(c)
    if cs is None or id(c) in cap.fresh_ids or isinstance(cs, ArgTree) and method in _QUERY:
        return native(cap, f, fn, args, asrc, kwargs, ksrc)
    if method == "get" and isinstance(c, dict) and not kwargs and args and \
            literal_key(args[0]) and (len(args) == 1 or literal_key(args[1])):
        value = user(fn, *args)
        s = Call("get", cs, tuple(args), method=True)
        return cap.read(value, s, c), s
    if method in ("keys", "values", "items") and isinstance(c, dict) and not args:
        view = user(fn)
        cap.views[id(view)] = (view, c, cs)
        cap.keep.append(view)
        return view, None
    if method in _QUERY:
        cap.contents_used(c, cs)
        return native(cap, f, fn, args, asrc, kwargs, ksrc)
    # a change: guarded by what it reads (pop, setdefault), recorded to replay
    if method not in BLIND_MUTATORS:
        cap.contents_used(c, cs)
    else:
        cap.will_mutate(c, cs)
    cap._effect(Effect("method", c, method, (tuple(args), dict(kwargs)), f.where() if f else "?",
                       f"{cs}.{method}(...)"))
    return native(cap, f, fn, args, asrc, kwargs, ksrc)


# ----------------------------------------------------------------- builtins


def _b_len(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 1 and not kwargs:
        v, s = args[0], asrc[0] or cap.source_of(args[0])
        n = cap.changed_len(v)
        if n is not None:
            return n, None
        if s is not None and not isinstance(v, Tensor):
            _note_used(cap, f, v)
            if isinstance(s, ArgTree):
                return user(len, v), None
            cap.structure_used(v, s)
            return user(len, v), None
        length = _class_attr(type(v), "__len__")
        if isinstance(length, types.FunctionType) and not is_library_code(length.__code__):
            return call(cap, f, length, None, [v], [s], {}, {})
    return native(cap, f, len, args, asrc, kwargs, ksrc)


def _b_getattr(cap, f, args, asrc, kwargs, ksrc):
    if len(args) in (2, 3) and type(args[1]) is str and not kwargs:
        obj, name = args[0], args[1]
        try:
            return cap.load_attr(f, obj, asrc[0], name)
        except Raised as r:
            if len(args) == 3 and isinstance(r.exc, AttributeError):
                os_ = asrc[0] or cap.source_of(obj)
                if os_ is not None:
                    cap.guard_absent(obj, os_, name)
                return args[2], asrc[2]
            raise
    return native(cap, f, getattr, args, asrc, kwargs, ksrc)


def _b_hasattr(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 2 and type(args[1]) is str and not kwargs:
        try:
            cap.load_attr(f, args[0], asrc[0], args[1])
            return True, None
        except Raised as r:
            if isinstance(r.exc, AttributeError):
                s = asrc[0] or cap.source_of(args[0])
                if s is not None:
                    cap.guard_absent(args[0], s, args[1])
                return False, None
            raise
    return native(cap, f, hasattr, args, asrc, kwargs, ksrc)


def _b_iter(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 1 and not kwargs:
        return get_iter(cap, f, args[0], asrc[0])
    return native(cap, f, iter, args, asrc, kwargs, ksrc)


def _b_enumerate(cap, f, args, asrc, kwargs, ksrc):
    """``enumerate(x)``: over an iteration whose items keep their sources (a container or
    a Sequential from before the call), the pairs keep them too (``for i, block in
    enumerate(self.blocks)``); anything else enumerates natively."""
    start = args[1] if len(args) == 2 else kwargs.get("start", 0)
    if len(args) in (1, 2) and set(kwargs) <= {"start"} and type(start) is int:
        it, its = get_iter(cap, f, args[0], asrc[0])
        if isinstance(it, (SourcedIter, ArgIter)):
            return Enumerated(it, start), None
        return native(cap, f, enumerate, [it, *args[1:]], [its, *asrc[1:]], kwargs, ksrc)
    return native(cap, f, enumerate, args, asrc, kwargs, ksrc)


def _b_next(cap, f, args, asrc, kwargs, ksrc):
    if len(args) in (1, 2) and not kwargs:
        ok, v, s = next_item(cap, f, args[0], asrc[0])
        if ok:
            return v, s
        if len(args) == 2:
            return args[1], asrc[1]
        raise Raised(v if isinstance(v, StopIteration) else StopIteration())
    return native(cap, f, next, args, asrc, kwargs, ksrc)


def _b_print(cap, f, args, asrc, kwargs, ksrc):
    for a in args:
        if isinstance(a, (Tensor, TracedScalar)):
            str(a)  # (the tracer refuses printed tensor data: use dg.debug_print)
    _note_reached(cap, f, [*args, *kwargs.values()])  # (print reads what they hold)
    cap._effect(Effect("print", None, "print", (tuple(args), dict(kwargs)),
                       f.where() if f else "?", "print(...)"))
    ti = TracedInt
    return user(print, *(a._v if type(a) is ti else a for a in args), **kwargs), None


def _b_isinstance(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 2 and not kwargs and type(args[0]) is TracedInt:
        return isinstance(args[0]._v, args[1]), None  # (an int, to the program)
    return native(cap, f, isinstance, args, asrc, kwargs, ksrc)


def _b_type(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 1 and not kwargs and type(args[0]) is TracedInt:
        return int, None
    return native(cap, f, type, args, asrc, kwargs, ksrc)


def _b_int(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 1 and not kwargs and type(args[0]) is TracedInt:
        return args[0], None  # int() of a traced int: itself
    return native(cap, f, int, args, asrc, kwargs, ksrc)


def _b_float(cap, f, args, asrc, kwargs, ksrc):
    if len(args) == 1 and not kwargs and isinstance(args[0], TracedScalar):
        return args[0], None  # float() of a traced number: the same traced number
    if len(args) == 1 and not kwargs and type(args[0]) is TracedInt:
        x = args[0]  # float() of a traced int: its float twin (the same graph value)
        return TracedScalar(float(x._v), x._tracer, x._value), None
    return native(cap, f, float, args, asrc, kwargs, ksrc)


def _scalar_fn(pyfn, prim=None):
    """``pyfn`` (a ``math`` function or ``abs``) of a traced number: a recorded float64
    operation ``prim`` when numpy's is the same correctly rounded result (sqrt, abs), else
    a guarded value."""

    def run(cap, f, args, asrc, kwargs, ksrc):
        ts = TracedScalar
        if len(args) == 1 and not kwargs and isinstance(args[0], ts):
            x = args[0]
            if prim is not None:
                return x._tracer.scalar_op(prim, x), None
            x._tracer.guard_scalar(x, f"math.{pyfn.__name__}")
            return pyfn(float(x)), None
        return native(cap, f, pyfn, args, asrc, kwargs, ksrc)
    return pyfn, run


def _namespace(f) -> dict:
    """The frame's locals as ``locals()`` gives them (a cell's variable by its contents)."""
    ns = {k: v for k, v in f.locals.items() if v is not UNBOUND}
    for name, cell in f.cells.items():
        try:
            ns[name] = cell.cell_contents
        except ValueError:
            ns.pop(name, None)
    return ns


# ``eval``, ``exec``, ``globals``, ``locals``, ``vars`` and ``dir`` with no namespace given
# read the calling frame's — run natively, the capture's own. They get the program's frame:
# ``locals()`` a snapshot of its locals (values the capture already follows); ``globals()``
# its module's dict, and ``eval``/``exec`` code the capture cannot see run in it, so their
# trace is refused (this call's values stand: eager's).
def _refuse_namespace(cap, fn) -> None:
    cap.refuse(f"{fn.__name__}() at {cap.where()} uses the function's namespace, which a "
               f"trace cannot follow: pass the values as arguments, or run it eagerly")


def _code_in_frame(fn):
    def run(cap, f, args, asrc, kwargs, ksrc):
        if f is None or len(args) != 1 or kwargs:
            return native(cap, f, fn, args, asrc, kwargs, ksrc)
        _refuse_namespace(cap, fn)
        return user(fn, args[0], f.globals, _namespace(f)), None
    return fn, run


def _frame_dict(fn, make):
    def run(cap, f, args, asrc, kwargs, ksrc):
        if f is None or args or kwargs:
            return native(cap, f, fn, args, asrc, kwargs, ksrc)
        return make(cap, f), None
    return fn, run


def _locals(cap, f) -> dict:
    return _namespace(f)


def _module_dict(cap, f) -> dict:
    _refuse_namespace(cap, builtins.globals)
    return f.globals


_BUILTINS: dict = {}


def _register_builtins() -> None:
    table = [(len, _b_len), (getattr, _b_getattr), (hasattr, _b_hasattr), (iter, _b_iter),
             (next, _b_next), (print, _b_print), (float, _b_float),
             (isinstance, _b_isinstance), (type, _b_type), (int, _b_int)]
    table += [_code_in_frame(builtins.eval), _code_in_frame(builtins.exec),
              _frame_dict(builtins.globals, _module_dict),
              _frame_dict(builtins.locals, _locals), _frame_dict(builtins.vars, _locals),
              _frame_dict(builtins.dir, lambda cap, f: sorted(_namespace(f)))]
    for fn, prim in ((math.sqrt, P.SQRT), (math.fabs, P.ABS), (builtins.abs, P.ABS)):
        table.append(_scalar_fn(fn, prim))
    m = math
    for fn in (m.exp, m.log, m.log2, m.log10, m.log1p, m.expm1, m.sin, m.cos, m.tan, m.tanh,
               m.sinh, m.cosh, m.atan, m.asin, m.acos, m.erf, m.erfc, m.floor, m.ceil,
               m.trunc, m.gamma, m.lgamma):
        table.append(_scalar_fn(fn))
    for fn, handler in table:
        _BUILTINS[id(fn)] = (fn, handler)


_register_builtins()


# ----------------------------------------------------------------- operators and truth

_DUNDERS = {
    "+": ("__add__", "__radd__"), "-": ("__sub__", "__rsub__"), "*": ("__mul__", "__rmul__"),
    "/": ("__truediv__", "__rtruediv__"), "//": ("__floordiv__", "__rfloordiv__"),
    "%": ("__mod__", "__rmod__"), "**": ("__pow__", "__rpow__"),
    "@": ("__matmul__", "__rmatmul__"), "&": ("__and__", "__rand__"),
    "|": ("__or__", "__ror__"), "^": ("__xor__", "__rxor__"),
    "<<": ("__lshift__", "__rlshift__"), ">>": ("__rshift__", "__rrshift__"),
    "<": ("__lt__", "__gt__"), "<=": ("__le__", "__ge__"), ">": ("__gt__", "__lt__"),
    ">=": ("__ge__", "__le__"), "==": ("__eq__", "__eq__"), "!=": ("__ne__", "__ne__"),
}
_UNARY = {"-": "__neg__", "+": "__pos__", "~": "__invert__"}


def _user_dunder(t: type, name: str):
    d = _class_attr(t, name)
    if isinstance(d, types.FunctionType) and not is_library_code(d.__code__):
        return d
    return None


def operator(cap, f, fn, args, srcs, sym: str):
    """An operator on values: dunders of the user's are interpreted (Python's protocol for
    reflected operands), containers from before the call are guarded by what it reads."""
    _note_reached(cap, f, list(args))  # (a library ``__eq__`` compares what its operands hold)
    if sym == "in":  # args = [container, item]
        return _contains(cap, f, args, srcs)
    if len(args) == 1:
        d = _user_dunder(type(args[0]), _UNARY[sym])
        if d is not None:
            return call(cap, f, d, None, args, srcs, {}, {})
        return user(fn, *args), None
    a, b = args
    sa, sb = srcs
    base = sym[:-1] if sym.endswith("=") and sym not in ("==", "!=", "<=", ">=") else sym
    ta, tb = type(a), type(b)
    names = _DUNDERS.get(base)
    if names is not None and (_user_dunder(ta, names[0]) or _user_dunder(tb, names[1]) or
                              base != sym and _user_dunder(ta, "__i" + names[0][2:]) or
                              base == "!=" and (_user_dunder(ta, "__eq__") or
                                                _user_dunder(tb, "__eq__"))):
        return _binary_protocol(cap, f, a, b, sa, sb, base, sym, names)
    for v, s in ((a, sa), (b, sb)):
        if isinstance(v, (list, tuple, dict, set)):
            _native_arg(cap, v, s, False)
    ts = TracedScalar
    if base in ("//", "%") and (isinstance(a, ts) or isinstance(b, ts)):
        a, b = _plain_scalar(cap, a, sym), _plain_scalar(cap, b, sym)
    ti = TracedInt
    if ti in (ta, tb):
        a, b = _int_operand(a, b, sym), _int_operand(b, a, sym)
    return user(fn, a, b), None


def _int_operand(x, other, sym: str):
    """A traced int meeting ``other`` in an operator: kept with numbers; with a floating
    tensor, its float twin (the same graph value: a float32 tensor times 3 or 3.0 is the
    same); with anything else, its guarded value."""
    ti = TracedInt
    if type(x) is not ti:
        return x
    if type(other) in (int, float, ti) or isinstance(other, TracedScalar):
        return x
    if isinstance(other, Tensor) and other.dtype.is_floating_point and \
            sym not in ("//", "%", "//=", "%="):
        return TracedScalar(float(x._v), x._tracer, x._value)
    return x._pin(sym)


def _binary_protocol(cap, f, a, b, sa, sb, base, sym, names):
    fwd, rev = names
    ta, tb = type(a), type(b)
    if base != sym:  # a += b: __iadd__ first
        d = _class_attr(ta, "__i" + fwd[2:])
        if d is not None:
            r = _call_dunder(cap, f, d, a, b, sa, sb)
            if r[0] is not NotImplemented:
                return r
    reflected_first = tb is not ta and issubclass(tb, ta) and _class_attr(tb, rev) is not \
        _class_attr(ta, rev)
    order = [(tb, rev, b, a, sb, sa), (ta, fwd, a, b, sa, sb)] if reflected_first else \
        [(ta, fwd, a, b, sa, sb), (tb, rev, b, a, sb, sa)]
    for t, name, x, y, sx, sy in order:
        if name == rev and t is ta and tb is ta and base not in COMPARE_SYMS:
            continue  # (no reflected call between operands of the same type)
        d = _class_attr(t, name)
        if d is None:
            continue
        r = _call_dunder(cap, f, d, x, y, sx, sy)
        if r[0] is not NotImplemented:
            return r
    if base == "==":
        return a is b, None
    if base == "!=":
        return a is not b, None
    raise Raised(TypeError(f"unsupported operand type(s) for {sym}: '{ta.__name__}' and "
                           f"'{tb.__name__}'"))


COMPARE_SYMS = {"<", "<=", ">", ">=", "==", "!="}


def _call_dunder(cap, f, d, x, y, sx, sy):
    if isinstance(d, types.FunctionType):
        return call(cap, f, d, None, [x, y], [sx, sy], {}, {})
    eq = _user_dunder(type(x), "__eq__")
    if d is object.__ne__ and eq is not None:  # (object's != inverts the user's ==)
        r, _ = call(cap, f, eq, None, [x, y], [sx, sy], {}, {})
        return (r if r is NotImplemented else not truth(cap, f, r, None)), None
    return user(d.__get__(x, type(x)), y), None


def _contains(cap, f, args, srcs):
    c, item = args
    cs, _ = srcs
    d = _user_dunder(type(c), "__contains__")
    if d is not None:
        return call(cap, f, d, None, [c, item], srcs, {}, {})
    if cs is None:
        cs = cap.source_of(c)
    if cs is not None and not isinstance(c, Tensor) and not isinstance(cs, ArgTree):
        if isinstance(c, (dict, set, frozenset)) and literal_key(item):
            v = user(_op.contains, c, item)
            cap.read(v, Call("__contains__", cs, (item,), method=True), c)
            return v, None
        if isinstance(c, (list, tuple, dict, set, frozenset)):
            cap.contents_used(c, cs)
    return user(_op.contains, c, item), None


def truth(cap, f, v, s) -> bool:
    t = type(v)
    if t is bool:
        return v
    if v is None or t in (int, float, str):
        return bool(v)
    d = _user_dunder(t, "__bool__")
    if d is None and _class_attr(t, "__bool__") is None:
        d = _user_dunder(t, "__len__")
    if d is not None:
        r, _ = call(cap, f, d, None, [v], [s], {}, {})
        return bool(r)
    if s is None and not isinstance(v, Tensor):
        s = cap.source_of(v)
    if s is not None and isinstance(v, (list, tuple, dict, set, frozenset)) and \
            not isinstance(s, ArgTree):
        r = user(bool, v)
        cap.read(r, Call("bool", s), v)
        return r
    _note_used(cap, f, v)
    return user(bool, v)


# ----------------------------------------------------------------- iteration


class _Stepped:
    """An iterator the interpreter steps with ``step(cap) -> (ok, value, source)``; native
    code iterating it directly gets the values."""

    def __iter__(self):
        return self

    def __next__(self):
        ok, v, _ = self.step(None)
        if not ok:
            raise StopIteration
        return v


class SourcedIter(_Stepped):
    """Iteration over a container from before the call: each item keeps its source."""

    def __init__(self, container, src, kind: str) -> None:
        self.c = container
        self.src = src
        self.kind = kind  # 'seq', 'keys', 'values', 'items'
        self.keys = list(container) if kind != "seq" else None
        self.i = 0

    def step(self, cap):
        i = self.i
        if self.kind == "seq":
            if i >= len(self.c):
                return False, None, None
            self.i += 1
            v, s = self.c[i], Item(self.src, i)
            return True, (cap.read(v, s, self.c) if cap is not None else v), s
        if i >= len(self.keys):
            return False, None, None
        self.i += 1
        k = self.keys[i]
        if self.kind == "keys":
            return True, k, None
        v = self.c[k]
        s = Item(self.src, k) if literal_key(k) or not isinstance(self.src, ArgTree) \
            else None
        if cap is not None and s is not None:
            v = cap.read(v, s, self.c)
        if self.kind == "values":
            return True, v, s
        pair = (k, v)
        if cap is not None:
            cap.built(pair, [None, s])
        return True, pair, None


def _plain_iteration(t: type) -> bool:
    """A list, tuple or dict, or a library subclass iterating as one (an optimizer's
    ``param_groups``)."""
    if t in (list, tuple, dict):
        return True
    return is_library_type(t) and any(
        issubclass(t, b) and t.__iter__ is b.__iter__ and t.__getitem__ is b.__getitem__
        for b in (list, tuple, dict))


_MODULE_SEQUENCE_ITERS = (Sequential.__iter__, ModuleList.__iter__)


def get_iter(cap, f, v, s):
    t = type(v)
    d = _user_dunder(t, "__iter__")
    if d is not None:
        return call(cap, f, d, None, [v], [s], {}, {})
    if isinstance(v, (InterpGenerator, SourcedIter, Enumerated)):
        return v, s
    view = cap.views.get(id(v))
    if view is not None and view[0] is v:
        _, c, cs = view
        cap.structure_used(c, cs)
        kind = "keys" if "keys" in t.__name__ else "values" if "values" in t.__name__ else \
            "items"
        return SourcedIter(c, cs, kind), None
    if s is None and not isinstance(v, Tensor):
        s = cap.source_of(v)
    if s is not None and not isinstance(s, ArgTree) and \
            getattr(t, "__iter__", None) in _MODULE_SEQUENCE_ITERS:
        # ``for block in self.blocks`` (a Sequential, a ModuleList): each module keeps its
        # source, so an attribute the loop stores on it (d2l's attention weights) is an
        # effect a compiled call replays; the registry's changes move the version guarded
        cap.structure_used(v, s)
        return SourcedIter(v._modules, Attr(s, "_modules"), "values"), None
    if s is not None and not isinstance(s, ArgTree) and _plain_iteration(t):
        cap.structure_used(v, s)
        return SourcedIter(v, s, "keys" if issubclass(t, dict) else "seq"), None
    if isinstance(s, ArgTree) and t in (list, tuple, Size):
        it = ArgIter(cap, v, s)
        return it, None
    if isinstance(v, (set, frozenset)) and s is not None:
        cap.contents_used(v, s)
    _note_used(cap, f, v)
    return user(iter, v), None


class Enumerated(_Stepped):
    """``enumerate`` over an iteration the interpreter steps: (count, item) pairs whose
    items keep their sources."""

    def __init__(self, it: _Stepped, start: int) -> None:
        self.it, self.n = it, start

    def step(self, cap):
        ok, v, vs = self.it.step(cap)
        if not ok:
            return False, None, None
        pair = (self.n, v)
        self.n += 1
        if cap is not None:
            cap.built(pair, [None, vs])
        return True, pair, None


class ArgIter(_Stepped):
    """Iteration over an argument's list or tuple: items map to the argument leaves."""

    def __init__(self, cap, c, src) -> None:
        self.items = [(x, cap.arg_paths.get(src.path + (i,))) for i, x in enumerate(c)]
        self.i = 0

    def step(self, cap):
        if self.i >= len(self.items):
            return False, None, None
        self.i += 1
        v, s = self.items[self.i - 1]
        return True, v, s


def next_item(cap, f, it, s):
    """(has a value, value, source); at the end, (False, the StopIteration if there was one,
    None): ``next()`` raises it again, with the generator's return value. (Without its
    traceback: that would keep the frames it went through, and their objects, alive.)"""
    if isinstance(it, (SourcedIter, ArgIter, Enumerated)):
        return it.step(cap)
    if isinstance(it, InterpGenerator):
        done, v, vs = it.resume()
        return (False, stop_iteration(v), None) if done else (True, v, vs)
    d = _user_dunder(type(it), "__next__")
    if d is not None:
        try:
            v, vs = call(cap, f, d, None, [it], [s], {}, {})
        except Raised as r:
            if isinstance(r.exc, StopIteration):
                return False, r.exc.with_traceback(None), None
            raise
        return True, v, vs
    if isinstance(it, types.GeneratorType) and not is_library_code(it.gi_code):
        cap.escaped(it.gi_code)  # (a suspended generator of the user's, resumed natively:
        #                           the watchdog sees only starts)
    try:
        v = next(it)
    except StopIteration as stop:
        return False, stop.with_traceback(None), None
    except BaseException as exc:  # noqa: BLE001 - the program's
        raise Raised(exc) from None
    return True, v, cap.source_of(v)


def unpack(cap, f, v, s, n):
    """The items of ``v`` (for ``a, b = v``, ``*v``): [(item, source)]."""
    built = cap.tuple_src.get(id(v))
    if built is not None and built[0] is v:
        return list(zip(v, built[1]))
    if type(v) is tuple and s is None:
        return [(x, None) for x in v]
    if isinstance(s, ArgTree) and type(v) in (list, tuple, Size):
        return [(x, cap.arg_paths.get(s.path + (i,))) for i, x in enumerate(v)]
    it, its = get_iter(cap, f, v, s)
    out = []
    while True:
        ok, x, xs = next_item(cap, f, it, its)
        if not ok:
            return out
        out.append((x, xs))


# ----------------------------------------------------------------- formatting, with


def format_value(cap, f, v, s, conv: int, spec):
    if type(v) not in _ATOMS:
        _note_reached(cap, f, [v])  # (str, repr and format read what ``v`` holds, natively)
    if conv:
        name = {1: "__str__", 2: "__repr__", 3: "__repr__"}[conv]
        d = _user_dunder(type(v), name)
        if d is not None:
            v, _ = call(cap, f, d, None, [v], [s], {}, {})
        else:
            v = user({1: str, 2: repr, 3: ascii}[conv], v)
        s = None
    if spec is None:
        return v
    d = _user_dunder(type(v), "__format__")
    if d is not None:
        return call(cap, f, d, None, [v, spec], [s, None], {}, {})[0]
    if not isinstance(v, str) and spec == "":
        d = _user_dunder(type(v), "__str__")
        if d is not None and _class_attr(type(v), "__format__") is object.__format__:
            return call(cap, f, d, None, [v], [s], {}, {})[0]
    return user(format, v, spec)


def enter(cap, f, mgr, ms):
    """``with mgr:`` — ((bound __exit__, None), (what __enter__ returned, its source))."""
    t = type(mgr)
    ent, ex = _class_attr(t, "__enter__"), _class_attr(t, "__exit__")
    if ent is None or ex is None:
        raise Raised(TypeError(f"'{t.__name__}' object does not support the context "
                               f"manager protocol"))
    bound_exit = user(ex.__get__, mgr, t)
    if isinstance(ent, types.FunctionType):
        r = call(cap, f, ent, None, [mgr], [ms], {}, {})
    else:
        r = (user(ent.__get__(mgr, t)), None)
    return (bound_exit, None), r
