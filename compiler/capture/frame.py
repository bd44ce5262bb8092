"""The bytecode interpreter: one :class:`Frame` per interpreted Python call.

It executes CPython 3.11–3.13 bytecode on the real objects — the tracer records tensor ops
exactly as when the code runs natively — and keeps beside every stack slot and local the
value's :mod:`source <compiler.capture.sources>` (``None``: made by the call from constants
and guarded values). Reads from sources, calls and stores go to the :class:`Capture
<compiler.capture.session.Capture>`, which decides what is guarded, what is a runtime input,
what is interpreted and what is a side effect to replay.

Note: an exception raised by the *program* (a user function, a failed lookup, an operator)
is wrapped in :class:`Raised` where it happens, so the frame can route it through the code's
exception table. Any other exception out of a handler is a bug of the interpreter, and
propagates as one: it must never be caught by the user's ``try``.
"""

from __future__ import annotations

import dis
import operator
import sys
import types
from typing import Any

PY = sys.version_info[:2]
SUPPORTED = ((3, 11), (3, 12), (3, 13))


class _Null:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()  # the interpreter's NULL stack entry (what CPython pushes before a callable)
UNBOUND = _Null()  # a local that has no value


class Raised(Exception):
    """An exception the interpreted program raised (``exc``), travelling through the
    interpreter to the frame whose exception table handles it."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


class Returned(Exception):
    """A frame finished (internal control flow of the interpreter)."""


class NotInterpretable(Exception):
    """The code uses something the interpreter does not follow (``str()``: what and where);
    the call runs natively instead and the capture refuses the trace if it reads anything."""


def user(fn, *args, **kwargs):
    """Run one operation of the program: its exceptions are the program's."""
    try:
        return fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - re-raised as the program's
        raise Raised(exc) from None


def program(fn, *args, **kwargs):
    """The other way round, for interpreter code that native code calls (a generator's
    ``next``, a user callback): the program's exceptions come out as themselves, raised
    outside the handler so that their cause and context stay the program's."""
    try:
        return fn(*args, **kwargs)
    except Raised as r:
        exc = r.exc
    try:
        raise exc
    finally:
        del exc  # (no cycle through this frame, which the traceback holds)


def function_str(fn) -> str:
    """How CPython's messages name a callable: ``module.qualname()``."""
    qual = getattr(fn, "__qualname__", None)
    if not isinstance(qual, str):
        return str(fn)
    mod = getattr(fn, "__module__", None)
    return f"{qual}()" if not isinstance(mod, str) or mod == "builtins" else \
        f"{mod}.{qual}()"


# ----------------------------------------------------------------- decoded code objects

_BINARY = {}
for _i, (_name, _sym) in enumerate(dis._nb_ops):  # (NB_ADD, '+'), (NB_INPLACE_ADD, '+='), …
    _BINARY[_i] = _sym
_BINARY_FN = {
    "+": operator.add, "&": operator.and_, "//": operator.floordiv, "<<": operator.lshift,
    "@": operator.matmul, "*": operator.mul, "%": operator.mod, "|": operator.or_,
    "**": operator.pow, ">>": operator.rshift, "-": operator.sub, "/": operator.truediv,
    "^": operator.xor, "+=": operator.iadd, "&=": operator.iand, "//=": operator.ifloordiv,
    "<<=": operator.ilshift, "@=": operator.imatmul, "*=": operator.imul,
    "%=": operator.imod, "|=": operator.ior, "**=": operator.ipow, ">>=": operator.irshift,
    "-=": operator.isub, "/=": operator.itruediv, "^=": operator.ixor,
}
COMPARE = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
           ">": operator.gt, ">=": operator.ge}
_INTRINSIC1 = getattr(dis, "_intrinsic_1_descs", [])

# What the interpreter does not follow; such code runs natively (see NotInterpretable).
_REFUSED = {
    "LOAD_BUILD_CLASS": "a class statement", "SETUP_ANNOTATIONS": "annotations",
    "LOAD_NAME": "module-level code", "STORE_NAME": "module-level code",
    "DELETE_NAME": "module-level code", "IMPORT_STAR": "import *",
    "MATCH_CLASS": "a match statement", "MATCH_KEYS": "a match statement",
    "MATCH_MAPPING": "a match statement", "MATCH_SEQUENCE": "a match statement",
    "GET_AWAITABLE": "await", "GET_AITER": "async for", "GET_ANEXT": "async for",
    "BEFORE_ASYNC_WITH": "async with", "END_ASYNC_FOR": "async for",
    "ASYNC_GEN_WRAP": "an async generator", "CHECK_EG_MATCH": "except*",
    "PREP_RERAISE_STAR": "except*", "PRINT_EXPR": "interactive code",
    "LOAD_CLASSDEREF": "a class body", "LOAD_FROM_DICT_OR_DEREF": "a class body",
    "LOAD_FROM_DICT_OR_GLOBALS": "a class body", "LOAD_LOCALS": "a class body",
    "SEND": "yield from", "GET_YIELD_FROM_ITER": "yield from", "END_SEND": "yield from",
    "CLEANUP_THROW": "yield from", "CALL_INTRINSIC_2": "a generic class or function",
}
_CO_GENERATOR, _CO_COROUTINE, _CO_ITERABLE_COROUTINE, _CO_ASYNC_GENERATOR = \
    0x20, 0x80, 0x100, 0x200
CO_VARARGS, CO_VARKEYWORDS = 0x04, 0x08


class Code:
    """A code object decoded once: its instructions, where each offset sits, the exception
    table, and whether the interpreter can run it."""

    _cache: dict = {}

    def __init__(self, code: types.CodeType) -> None:
        self.code = code
        self.insts = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
        self.index = {i.offset: k for k, i in enumerate(self.insts)}
        self.table = [(e.start, e.end, e.target, e.depth, e.lasti)
                      for e in dis.Bytecode(code).exception_entries]
        self.generator = bool(code.co_flags & _CO_GENERATOR)
        self.cells = set(code.co_cellvars) | set(code.co_freevars)
        self.refused = None
        if code.co_flags & (_CO_COROUTINE | _CO_ITERABLE_COROUTINE | _CO_ASYNC_GENERATOR):
            self.refused = "a coroutine or async generator"
        for inst in self.insts:
            what = _REFUSED.get(inst.opname)
            if what is None and inst.opname.startswith("INSTRUMENTED_"):
                what = "instrumented bytecode"
            if what is not None:
                self.refused = f"{what} ({inst.opname})"
                break

    @classmethod
    def of(cls, code: types.CodeType) -> Code:
        c = cls._cache.get(code)
        if c is None or c.code is not code:  # (equal code objects may differ in filename)
            if len(cls._cache) >= 4096:  # bounded: programs that exec new code keep coming
                cls._cache.clear()
            c = cls._cache[code] = Code(code)
        return c

    def line(self, offset: int) -> int | None:
        for k in range(self.index.get(offset, 0), -1, -1):
            pos = self.insts[k].positions
            if pos is not None and pos.lineno is not None:
                return pos.lineno
        return self.code.co_firstlineno

    def handler(self, offset: int):
        """(target, depth, lasti) of the exception handler covering ``offset``, or None."""
        for start, end, target, depth, lasti in self.table:
            if start <= offset < end:
                return target, depth, lasti
        return None


def where(code: types.CodeType, offset: int) -> str:
    """``file:line (function)`` of an offset, for messages."""
    return f"{code.co_filename}:{Code.of(code).line(offset)} ({code.co_qualname})"


# ----------------------------------------------------------------- frames


class Frame:
    """The execution of one interpreted call. ``cap`` is the capture that owns the
    policy (reads, calls, stores); ``library`` frames run the library's own code (their
    global reads are not guarded: the library is not rebound between calls)."""

    def __init__(self, cap, fn: types.FunctionType, locals_: dict, sources: dict,
                 library: bool) -> None:
        code = fn.__code__
        self.cap = cap
        self.fn = fn
        self.code = code
        self.decoded = Code.of(code)
        self.insts = self.decoded.insts
        self.globals = fn.__globals__
        self.builtins = fn.__builtins__ if isinstance(fn.__builtins__, dict) else \
            fn.__builtins__.__dict__
        self.library = library
        self.locals = locals_
        self.lsrc = sources
        self.cells: dict[str, Any] = {}
        for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
            self.cells[name] = cell
        self.stack: list = []
        self.ssrc: list = []
        self.pc = 0
        self.offset = 0
        self.kw_names: tuple = ()
        self.exc_info: list = []  # exceptions being handled (PUSH_EXC_INFO / POP_EXCEPT)
        self.result = None
        self.result_src = None
        self.yielded = False
        self.done = False

    # -- the stack
    def push(self, v, s=None) -> None:
        self.stack.append(v)
        self.ssrc.append(s)

    def pop(self):
        return self.stack.pop(), self.ssrc.pop()

    def popn(self, n: int):
        if n == 0:
            return [], []
        vs, ss = self.stack[-n:], self.ssrc[-n:]
        del self.stack[-n:]
        del self.ssrc[-n:]
        return vs, ss

    def top(self, k: int = 1):
        return self.stack[-k], self.ssrc[-k]

    def where(self) -> str:
        return where(self.code, self.offset)

    # -- the loop
    def run(self, send=None, send_src=None, throw=None):
        """Run until return (or, for a generator, the next yield): the value and source.
        ``throw``: an exception to raise at the yield the generator is suspended at."""
        if self.yielded:  # resumed generator: the sent value is the yield's result
            self.yielded = False
            if throw is not None:
                self.unwind(Raised(throw), self.offset)
            else:
                self.push(send, send_src)
        insts = self.insts
        handlers = _HANDLERS
        while True:
            inst = insts[self.pc]
            self.offset = inst.offset
            self.pc += 1
            try:
                h = handlers.get(inst.opname)
                if h is None:
                    raise NotInterpretable(f"opcode {inst.opname} at {self.where()}")
                h(self, inst)
            except Returned:
                return self.result, self.result_src
            except Raised as r:
                self.chain(r.exc)
                self.unwind(r, self.offset)

    def chain(self, exc: BaseException) -> None:
        """Set a new exception's ``__context__`` to the one the program is handling (the
        innermost running frame's), as CPython does when it is raised; without a cycle."""
        if exc.__context__ is not None:
            return
        ctx = next((f.exc_info[-1] for f in reversed(self.cap.frames) if f.exc_info), None)
        if ctx is None or ctx is exc:
            return
        o = ctx
        while o is not None:  # (CPython cuts the chain where it would loop back to exc)
            if o.__context__ is exc:
                o.__context__ = None
                break
            o = o.__context__
        exc.__context__ = ctx

    def unwind(self, r: Raised, offset: int) -> None:
        """Route a program exception raised at ``offset`` to its handler, or out."""
        h = self.decoded.handler(offset)
        if h is None:
            self.done = True
            raise r
        target, depth, lasti = h
        del self.stack[depth:]
        del self.ssrc[depth:]
        if lasti:
            self.push(offset)
        self.push(r.exc)
        self.pc = self.decoded.index[target]

    def jump(self, inst) -> None:
        self.pc = self.decoded.index[inst.argval]

    def finish(self, value, src) -> None:
        self.result, self.result_src = value, src
        self.done = True
        raise Returned


# ----------------------------------------------------------------- handlers

_HANDLERS: dict = {}


def op(*names):
    def register(fn):
        for n in names:
            _HANDLERS[n] = fn
        return fn
    return register


@op("NOP", "RESUME", "EXTENDED_ARG", "PRECALL", "COPY_FREE_VARS", "CACHE")
def _nop(f: Frame, inst) -> None:
    pass


@op("POP_TOP")
def _pop_top(f, inst):
    f.pop()


@op("PUSH_NULL")
def _push_null(f, inst):
    f.push(NULL)


@op("END_FOR")
def _end_for(f, inst):
    f.pop()
    if PY == (3, 12):  # 3.12's END_FOR pops the iterator too; 3.13's POP_TOP follows
        f.pop()


@op("COPY")
def _copy(f, inst):
    f.push(*f.top(inst.arg))


@op("SWAP")
def _swap(f, inst):
    n = inst.arg
    f.stack[-1], f.stack[-n] = f.stack[-n], f.stack[-1]
    f.ssrc[-1], f.ssrc[-n] = f.ssrc[-n], f.ssrc[-1]


# -- locals, cells, globals, constants


@op("LOAD_CONST")
def _load_const(f, inst):
    f.push(inst.argval)


@op("RETURN_CONST")
def _return_const(f, inst):
    f.finish(inst.argval, None)


@op("RETURN_VALUE")
def _return_value(f, inst):
    f.finish(*f.pop())


def _load_fast_name(f: Frame, name: str, check: bool = True):
    if name in f.decoded.cells and name in f.cells:  # 3.13 loads a cell with LOAD_FAST
        f.push(f.cells[name])
        return
    v = f.locals.get(name, UNBOUND)
    if v is UNBOUND and check:
        raise Raised(UnboundLocalError(f"cannot access local variable {name!r} where it is "
                                       f"not associated with a value"))
    f.push(v, f.lsrc.get(name))


@op("LOAD_FAST", "LOAD_FAST_CHECK")
def _load_fast(f, inst):
    _load_fast_name(f, inst.argval)


@op("LOAD_FAST_LOAD_FAST")
def _load_fast_load_fast(f, inst):
    a, b = inst.argval
    _load_fast_name(f, a)
    _load_fast_name(f, b)


@op("LOAD_FAST_AND_CLEAR")
def _load_fast_and_clear(f, inst):
    name = inst.argval
    v = f.locals.pop(name, UNBOUND)
    f.push(NULL if v is UNBOUND else v, f.lsrc.pop(name, None))


def _store_fast_name(f: Frame, name: str, v, s) -> None:
    if v is NULL:  # (restoring a comprehension's variable that had no value)
        f.locals.pop(name, None)
        f.lsrc.pop(name, None)
        return
    f.locals[name] = v
    f.lsrc[name] = s


@op("STORE_FAST", "STORE_FAST_MAYBE_NULL")
def _store_fast(f, inst):
    _store_fast_name(f, inst.argval, *f.pop())


@op("STORE_FAST_STORE_FAST")
def _store_fast_store_fast(f, inst):
    a, b = inst.argval
    _store_fast_name(f, a, *f.pop())
    _store_fast_name(f, b, *f.pop())


@op("STORE_FAST_LOAD_FAST")
def _store_fast_load_fast(f, inst):
    a, b = inst.argval
    _store_fast_name(f, a, *f.pop())
    _load_fast_name(f, b)


@op("DELETE_FAST")
def _delete_fast(f, inst):
    if inst.argval not in f.locals:
        raise Raised(UnboundLocalError(f"cannot access local variable {inst.argval!r}"))
    del f.locals[inst.argval]
    f.lsrc.pop(inst.argval, None)


@op("MAKE_CELL")
def _make_cell(f, inst):
    name = inst.argval
    v = f.locals.pop(name, UNBOUND)
    cell = types.CellType() if v is UNBOUND else types.CellType(v)
    f.cells[name] = cell
    f.cap.new_cell(cell, f.lsrc.pop(name, None))


@op("LOAD_CLOSURE")
def _load_closure(f, inst):
    f.push(f.cells[inst.argval])


@op("LOAD_DEREF")
def _load_deref(f, inst):
    f.push(*f.cap.load_cell(f, f.cells[inst.argval], inst.argval))


@op("STORE_DEREF")
def _store_deref(f, inst):
    f.cap.store_cell(f, f.cells[inst.argval], inst.argval, *f.pop())


@op("DELETE_DEREF")
def _delete_deref(f, inst):
    f.cap.delete_cell(f, f.cells[inst.argval], inst.argval)


@op("LOAD_GLOBAL")
def _load_global(f, inst):
    if PY < (3, 13) and inst.arg & 1:
        f.push(NULL)
    f.push(*f.cap.load_global(f, inst.argval))
    if PY >= (3, 13) and inst.arg & 1:
        f.push(NULL)


@op("STORE_GLOBAL")
def _store_global(f, inst):
    f.cap.store_global(f, inst.argval, *f.pop())


@op("DELETE_GLOBAL")
def _delete_global(f, inst):
    f.cap.delete_global(f, inst.argval)


# -- attributes and items


def _push_method(f: Frame, v, s) -> None:
    """A method load: the bound attribute and NULL, in the version's CALL layout."""
    if PY >= (3, 13):
        f.push(v, s)
        f.push(NULL)
    else:
        f.push(NULL)
        f.push(v, s)


@op("LOAD_ATTR")
def _load_attr(f, inst):
    obj, osrc = f.pop()
    v, s = f.cap.load_attr(f, obj, osrc, inst.argval)
    if PY >= (3, 12) and inst.arg & 1:
        _push_method(f, v, s)
    else:
        f.push(v, s)


@op("LOAD_METHOD")
def _load_method(f, inst):
    obj, osrc = f.pop()
    _push_method(f, *f.cap.load_attr(f, obj, osrc, inst.argval))


@op("LOAD_SUPER_ATTR")
def _load_super_attr(f, inst):
    (sup, cls, self_), (_, cs, ssrc) = f.popn(3)
    if sup is super:
        bound = super(cls, self_)
    else:
        bound = f.cap.call(f, sup, None, [cls, self_], [cs, ssrc], {}, {})[0]
    v, s = f.cap.load_attr(f, bound, None, inst.argval)
    if inst.arg & 1:
        _push_method(f, v, s)
    else:
        f.push(v, s)


@op("STORE_ATTR")
def _store_attr(f, inst):
    obj, osrc = f.pop()
    v, vs = f.pop()
    f.cap.store_attr(f, obj, osrc, inst.argval, v, vs)


@op("DELETE_ATTR")
def _delete_attr(f, inst):
    obj, osrc = f.pop()
    f.cap.delete_attr(f, obj, osrc, inst.argval)


@op("BINARY_SUBSCR")
def _binary_subscr(f, inst):
    (c, k), (cs, ks) = f.popn(2)
    f.push(*f.cap.get_item(f, c, cs, k, ks))


@op("BINARY_SLICE")
def _binary_slice(f, inst):
    (c, a, b), (cs, _, _) = f.popn(3)
    f.push(*f.cap.get_item(f, c, cs, slice(a, b), None))


@op("STORE_SUBSCR")
def _store_subscr(f, inst):
    (v, c, k), (vs, cs, ks) = f.popn(3)
    f.cap.set_item(f, c, cs, k, v, vs)


@op("STORE_SLICE")
def _store_slice(f, inst):
    (v, c, a, b), (vs, cs, _, _) = f.popn(4)
    f.cap.set_item(f, c, cs, slice(a, b), v, vs)


@op("DELETE_SUBSCR")
def _delete_subscr(f, inst):
    (c, k), (cs, _) = f.popn(2)
    f.cap.delete_item(f, c, cs, k)


# -- operators


@op("BINARY_OP")
def _binary_op(f, inst):
    (a, b), (sa, sb) = f.popn(2)
    sym = _BINARY[inst.arg]
    f.push(*f.cap.operator(f, _BINARY_FN[sym], [a, b], [sa, sb], sym))


@op("COMPARE_OP")
def _compare_op(f, inst):
    (a, b), (sa, sb) = f.popn(2)
    v, s = f.cap.operator(f, COMPARE[inst.argval], [a, b], [sa, sb], inst.argval)
    if PY >= (3, 13) and inst.arg & 16:  # the result feeds a jump: made a bool here
        v, s = f.cap.truth(f, v, s), None
    f.push(v, s)


@op("IS_OP")
def _is_op(f, inst):
    (a, b), (sa, sb) = f.popn(2)
    f.cap.identity_used(f, a, sa)
    f.cap.identity_used(f, b, sb)
    f.push((a is not b) if inst.arg else (a is b))


@op("CONTAINS_OP")
def _contains_op(f, inst):
    (a, b), (sa, sb) = f.popn(2)
    v, _ = f.cap.operator(f, operator.contains, [b, a], [sb, sa], "in")
    f.push((not v) if inst.arg else v)


@op("UNARY_NEGATIVE")
def _unary_negative(f, inst):
    a, s = f.pop()
    f.push(*f.cap.operator(f, operator.neg, [a], [s], "-"))


@op("UNARY_POSITIVE")
def _unary_positive(f, inst):
    a, s = f.pop()
    f.push(*f.cap.operator(f, operator.pos, [a], [s], "+"))


@op("UNARY_INVERT")
def _unary_invert(f, inst):
    a, s = f.pop()
    f.push(*f.cap.operator(f, operator.invert, [a], [s], "~"))


@op("UNARY_NOT")
def _unary_not(f, inst):
    a, s = f.pop()
    f.push(not f.cap.truth(f, a, s))


@op("TO_BOOL")
def _to_bool(f, inst):
    a, s = f.pop()
    f.push(f.cap.truth(f, a, s))


@op("CALL_INTRINSIC_1")
def _call_intrinsic_1(f, inst):
    intrinsic = _INTRINSIC1[inst.arg]
    a, s = f.pop()
    if intrinsic == "INTRINSIC_UNARY_POSITIVE":
        f.push(*f.cap.operator(f, operator.pos, [a], [s], "+"))
    elif intrinsic == "INTRINSIC_LIST_TO_TUPLE":
        f.push(tuple(a))
    elif intrinsic == "INTRINSIC_STOPITERATION_ERROR":  # a generator let StopIteration escape
        exc = a
        if isinstance(a, StopIteration):
            exc = RuntimeError("generator raised StopIteration")
            exc.__cause__ = exc.__context__ = a
        raise Raised(exc)
    else:
        raise NotInterpretable(f"{intrinsic} at {f.where()}")


@op("LIST_TO_TUPLE")
def _list_to_tuple(f, inst):
    a, _ = f.pop()
    f.push(tuple(a))


# -- jumps


def _jump_if(f: Frame, inst, when: bool, pop: bool = True) -> None:
    v, s = f.pop() if pop else f.top()
    if f.cap.truth(f, v, s) is when:
        f.jump(inst)


@op("POP_JUMP_IF_TRUE", "POP_JUMP_FORWARD_IF_TRUE", "POP_JUMP_BACKWARD_IF_TRUE")
def _pop_jump_if_true(f, inst):
    _jump_if(f, inst, True)


@op("POP_JUMP_IF_FALSE", "POP_JUMP_FORWARD_IF_FALSE", "POP_JUMP_BACKWARD_IF_FALSE")
def _pop_jump_if_false(f, inst):
    _jump_if(f, inst, False)


def _jump_if_none(f: Frame, inst, when: bool) -> None:
    v, s = f.pop()
    f.cap.identity_used(f, v, s)
    if (v is None) is when:
        f.jump(inst)


@op("POP_JUMP_IF_NONE", "POP_JUMP_FORWARD_IF_NONE", "POP_JUMP_BACKWARD_IF_NONE")
def _pop_jump_if_none(f, inst):
    _jump_if_none(f, inst, True)


@op("POP_JUMP_IF_NOT_NONE", "POP_JUMP_FORWARD_IF_NOT_NONE", "POP_JUMP_BACKWARD_IF_NOT_NONE")
def _pop_jump_if_not_none(f, inst):
    _jump_if_none(f, inst, False)


@op("JUMP_IF_TRUE_OR_POP")
def _jump_if_true_or_pop(f, inst):
    v, s = f.top()
    if f.cap.truth(f, v, s):
        f.jump(inst)
    else:
        f.pop()


@op("JUMP_IF_FALSE_OR_POP")
def _jump_if_false_or_pop(f, inst):
    v, s = f.top()
    if not f.cap.truth(f, v, s):
        f.jump(inst)
    else:
        f.pop()


@op("JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_BACKWARD_NO_INTERRUPT", "JUMP", "JUMP_NO_INTERRUPT")
def _jump(f, inst):
    f.jump(inst)


# -- iteration


@op("GET_ITER")
def _get_iter(f, inst):
    v, s = f.pop()
    f.push(*f.cap.get_iter(f, v, s))


@op("FOR_ITER")
def _for_iter(f, inst):
    it, s = f.top()
    ok, v, vs = f.cap.next_item(f, it, s)
    if ok:
        f.push(v, vs)
    elif PY == (3, 11):
        f.pop()
        f.jump(inst)
    else:  # 3.12+: END_FOR (and 3.13's POP_TOP) at the target pop what is left
        f.push(None)
        f.jump(inst)


@op("GET_LEN")
def _get_len(f, inst):
    v, s = f.top()
    f.push(*f.cap.call(f, len, None, [v], [s], {}, {}))


@op("UNPACK_SEQUENCE")
def _unpack_sequence(f, inst):
    v, s = f.pop()
    items = f.cap.unpack(f, v, s, inst.arg)
    if len(items) != inst.arg:
        raise Raised(ValueError(f"too many values to unpack (expected {inst.arg})"
                                if len(items) > inst.arg else
                                f"not enough values to unpack (expected {inst.arg}, got "
                                f"{len(items)})"))
    for x, xs in reversed(items):
        f.push(x, xs)


@op("UNPACK_EX")
def _unpack_ex(f, inst):
    before, after = inst.arg & 0xFF, inst.arg >> 8
    v, s = f.pop()
    items = f.cap.unpack(f, v, s, None)
    if len(items) < before + after:
        raise Raised(ValueError(f"not enough values to unpack (expected at least "
                                f"{before + after}, got {len(items)})"))
    head, rest = items[:before], items[before:len(items) - after]
    tail = items[len(items) - after:]
    for x, xs in reversed(tail):
        f.push(x, xs)
    f.push([x for x, _ in rest])
    for x, xs in reversed(head):
        f.push(x, xs)


# -- building


@op("BUILD_TUPLE")
def _build_tuple(f, inst):
    vs, ss = f.popn(inst.arg)
    t = tuple(vs)
    f.cap.built(t, ss)
    f.push(t)


@op("BUILD_LIST")
def _build_list(f, inst):
    vs, _ = f.popn(inst.arg)
    f.push(list(vs))


@op("BUILD_SET")
def _build_set(f, inst):
    vs, _ = f.popn(inst.arg)
    f.push(user(set, vs))


@op("BUILD_MAP")
def _build_map(f, inst):
    vs, _ = f.popn(2 * inst.arg)
    d = {}
    for k in range(0, len(vs), 2):
        user(d.__setitem__, vs[k], vs[k + 1])
    f.push(d)


@op("BUILD_CONST_KEY_MAP")
def _build_const_key_map(f, inst):
    keys, _ = f.pop()
    vs, _ = f.popn(inst.arg)
    f.push(dict(zip(keys, vs)))


@op("BUILD_STRING")
def _build_string(f, inst):
    vs, _ = f.popn(inst.arg)
    f.push("".join(vs))


@op("BUILD_SLICE")
def _build_slice(f, inst):
    vs, _ = f.popn(inst.arg)
    f.push(slice(*vs))


@op("LIST_APPEND")
def _list_append(f, inst):
    v, _ = f.pop()
    f.stack[-inst.arg].append(v)


@op("SET_ADD")
def _set_add(f, inst):
    v, _ = f.pop()
    user(f.stack[-inst.arg].add, v)


@op("MAP_ADD")
def _map_add(f, inst):
    (k, v), _ = f.popn(2)
    user(f.stack[-inst.arg].__setitem__, k, v)


def _iterable(v) -> bool:
    """Whether ``*v`` can unpack ``v`` (CPython's check before its message)."""
    t = type(v)
    return hasattr(t, "__iter__") or hasattr(t, "__getitem__") and not isinstance(v, dict)


@op("LIST_EXTEND")
def _list_extend(f, inst):
    v, s = f.pop()
    if not _iterable(v):
        raise Raised(TypeError(f"Value after * must be an iterable, not {type(v).__name__}"))
    items = f.cap.unpack(f, v, s, None)
    f.stack[-inst.arg].extend(x for x, _ in items)


@op("SET_UPDATE")
def _set_update(f, inst):
    v, s = f.pop()
    items = f.cap.unpack(f, v, s, None)
    user(f.stack[-inst.arg].update, [x for x, _ in items])


@op("DICT_UPDATE", "DICT_MERGE")
def _dict_update(f, inst):
    v, s = f.pop()
    target = f.stack[-inst.arg]
    merge = inst.opname == "DICT_MERGE"  # (f(**v): the call's callable is below its args)
    fn = f.stack[-inst.arg - (3 if PY >= (3, 13) else 2)] if merge else None
    if not hasattr(v, "keys"):
        raise Raised(TypeError(f"{function_str(fn)} argument after ** must be a mapping, not "
                               f"{type(v).__name__}" if merge else
                               f"{type(v).__name__!r} object is not a mapping"))
    items = f.cap.mapping_items(f, v, s)
    for k, x in items:
        if merge and k in target:
            raise Raised(TypeError(f"{function_str(fn)} got multiple values for keyword "
                                   f"argument {k!r}"))
        target[k] = x


@op("FORMAT_VALUE")
def _format_value(f, inst):
    spec = f.pop()[0] if inst.arg & 4 else ""
    v, s = f.pop()
    conv = inst.arg & 3
    v = f.cap.format(f, v, s, conv, spec)
    f.push(v)


@op("CONVERT_VALUE")
def _convert_value(f, inst):
    v, s = f.pop()
    f.push(f.cap.format(f, v, s, inst.arg, None))


@op("FORMAT_SIMPLE")
def _format_simple(f, inst):
    v, s = f.pop()
    f.push(v if type(v) is str else f.cap.format(f, v, s, 0, ""))


@op("FORMAT_WITH_SPEC")
def _format_with_spec(f, inst):
    spec, _ = f.pop()
    v, s = f.pop()
    f.push(f.cap.format(f, v, s, 0, spec))


# -- functions and calls


_FLAGS = ((8, "__closure__"), (4, "__annotations__"), (2, "__kwdefaults__"),
          (1, "__defaults__"))


@op("MAKE_FUNCTION")
def _make_function(f, inst):
    code, _ = f.pop()
    parts: dict = {}
    if PY < (3, 13):
        for bit, name in _FLAGS:
            if inst.arg & bit:
                parts[name] = f.pop()
    closure = parts.get("__closure__", (None,))[0]
    if closure is None and code.co_freevars:  # (3.13 sets the closure right after)
        closure = tuple(types.CellType() for _ in code.co_freevars)
    fn = types.FunctionType(code, f.globals, code.co_name,
                            parts.get("__defaults__", (None,))[0], closure)
    fn.__qualname__ = code.co_qualname
    for attr in ("__kwdefaults__", "__annotations__"):
        if attr in parts:
            setattr(fn, attr, parts[attr][0])
    f.cap.new_function(fn, parts)
    f.push(fn)


@op("SET_FUNCTION_ATTRIBUTE")
def _set_function_attribute(f, inst):
    fn, _ = f.pop()
    v, s = f.pop()
    flag = dict(_FLAGS)[inst.arg]
    if flag == "__closure__":  # a new function's closure is fixed at creation
        old = fn
        fn = types.FunctionType(old.__code__, old.__globals__, old.__name__, old.__defaults__,
                                v)
        fn.__qualname__ = old.__qualname__
        fn.__kwdefaults__ = old.__kwdefaults__
        fn.__annotations__ = old.__annotations__
        parts = f.cap.fn_parts.get(id(old))
        if parts is not None and parts[0] is old:
            f.cap.new_function(fn, parts[1])
    else:
        setattr(fn, flag, v)
    f.cap.new_function(fn, {flag: (v, s)})
    f.push(fn)


@op("KW_NAMES")
def _kw_names(f, inst):
    f.kw_names = f.code.co_consts[inst.arg]


def _call(f: Frame, argc: int, kw_names: tuple) -> None:
    vs, ss = f.popn(argc)
    (a, b), (sa, sb) = f.popn(2)
    if PY >= (3, 13):
        fn, fs = a, sa
        if b is not NULL:
            vs, ss = [b, *vs], [sb, *ss]
    elif a is NULL:
        fn, fs = b, sb
    else:
        fn, fs = a, sa
        vs, ss = [b, *vs], [sb, *ss]
    nk = len(kw_names)
    kwargs, ksrc = {}, {}
    if nk:
        kwargs = dict(zip(kw_names, vs[-nk:]))
        ksrc = dict(zip(kw_names, ss[-nk:]))
        vs, ss = vs[:-nk], ss[:-nk]
    f.push(*f.cap.call(f, fn, fs, vs, ss, kwargs, ksrc))


@op("CALL")
def _call_op(f, inst):
    kw, f.kw_names = f.kw_names, ()
    _call(f, inst.arg, kw)


@op("CALL_KW")
def _call_kw(f, inst):
    names, _ = f.pop()
    _call(f, inst.arg, names)


@op("CALL_FUNCTION_EX")
def _call_function_ex(f, inst):
    kw, ks = f.pop() if inst.arg & 1 else ({}, None)
    args, asrc = f.pop()
    (a, b), (sa, sb) = f.popn(2)
    if PY >= (3, 13):
        fn, fs = a, sa
        extra = [] if b is NULL else [(b, sb)]
    elif a is NULL:
        fn, fs, extra = b, sb, []
    else:
        fn, fs, extra = a, sa, [(b, sb)]
    if not _iterable(args):
        raise Raised(TypeError(f"{function_str(fn)} argument after * must be an iterable, "
                               f"not {type(args).__name__}"))
    items = extra + f.cap.unpack(f, args, asrc, None)
    kwargs, ksrc = {}, {}
    for k, (v, s) in f.cap.mapping_sourced_items(f, kw, ks):
        kwargs[k], ksrc[k] = v, s
    f.push(*f.cap.call(f, fn, fs, [v for v, _ in items], [s for _, s in items], kwargs,
                       ksrc))


@op("BEFORE_WITH")
def _before_with(f, inst):
    mgr, ms = f.pop()
    (ex, es), (r, rs) = f.cap.enter(f, mgr, ms)
    f.push(ex, es)
    f.push(r, rs)


@op("WITH_EXCEPT_START")
def _with_except_start(f, inst):
    exc = f.stack[-1]
    exit_fn, es = f.stack[-4], f.ssrc[-4]
    f.push(*f.cap.call(f, exit_fn, es, [type(exc), exc, exc.__traceback__],
                       [None, None, None], {}, {}))


# -- exceptions


@op("PUSH_EXC_INFO")
def _push_exc_info(f, inst):
    exc, s = f.pop()
    f.push(f.exc_info[-1] if f.exc_info else None)
    f.exc_info.append(exc)
    f.push(exc, s)


@op("POP_EXCEPT")
def _pop_except(f, inst):
    f.pop()
    if f.exc_info:
        f.exc_info.pop()


@op("CHECK_EXC_MATCH")
def _check_exc_match(f, inst):
    t, _ = f.pop()
    exc = f.stack[-1]
    f.push(user(isinstance, exc, t))


@op("RERAISE")
def _reraise(f, inst):
    exc, _ = f.pop()  # (the handler is the one covering RERAISE itself: CPython's lasti
    f.unwind(Raised(exc), f.offset)  # operand only sets the traceback's line)


@op("RAISE_VARARGS")
def _raise_varargs(f, inst):
    if inst.arg == 0:
        if not f.exc_info:
            raise Raised(RuntimeError("No active exception to reraise"))
        raise Raised(f.exc_info[-1])
    cause = f.pop()[0] if inst.arg == 2 else None
    exc, _ = f.pop()
    if isinstance(exc, type) and issubclass(exc, BaseException):
        exc = user(exc)
    if not isinstance(exc, BaseException):
        raise Raised(TypeError("exceptions must derive from BaseException"))
    if inst.arg == 2:
        if isinstance(cause, type) and issubclass(cause, BaseException):
            cause = user(cause)
        exc.__cause__ = cause
    raise Raised(exc)


@op("LOAD_ASSERTION_ERROR")
def _load_assertion_error(f, inst):
    f.push(AssertionError)


# -- generators


@op("RETURN_GENERATOR")
def _return_generator(f, inst):
    f.push(None)  # what the first resume sends; POP_TOP follows


@op("YIELD_VALUE")
def _yield_value(f, inst):
    f.result, f.result_src = f.pop()
    f.yielded = True
    raise Returned


# -- imports


@op("IMPORT_NAME")
def _import_name(f, inst):
    (level, fromlist), _ = f.popn(2)
    f.push(*f.cap.import_name(f, inst.argval, fromlist, level))


@op("IMPORT_FROM")
def _import_from(f, inst):
    mod, ms = f.top()
    f.push(*f.cap.load_attr(f, mod, ms, inst.argval))
