"""What every LLVM kernel builder shares: the dtype tables and literals, the public
:class:`Emitter` (one LLVM function being written: fresh SSA names, blocks, counted loops),
the kernel's entry function, the base :class:`KernelBuilder`, and the registry of builders
by fusion-group kind (:func:`builds`, :func:`builder`). The builders live beside it:
``loops.py`` (elementwise and Python-number groups), ``reduce.py``, ``matmul.py``,
``datamove.py`` (indexing and movement) and ``randomgen.py``; ``codegen.py`` puts a graph's
kernels in one module."""

from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ...dims import Dim, current
from ...ir import Value, c_strides  # noqa: F401 - (c_strides: the backends import it from here)
from ...prims import CONSTANT, traits
from . import jit

FN_NAME = "dg_ew"

LLTYPE = {"float32": "float", "float64": "double", "bool": "i1", "int64": "i64",
          "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "i8"}
MEMTYPE = {"float": "float", "double": "double", "i1": "i8", "i64": "i64", "i32": "i32",
           "i16": "i16", "i8": "i8"}  # in a buffer
SUFFIX = {"float": "f32", "double": "f64"}
INTEGER = frozenset({"i64", "i32", "i16", "i8"})  # the integer dtypes' LLVM types
UNSIGNED = frozenset({"uint8"})  # Note: int8 and uint8 are both i8; the rules that care
#                                  (compare, extremum, abs, sign, cast, pow, widening) ask
#                                  the dtype whether it is unsigned; add, sub, mul and neg
#                                  wrap the same way in both.


def bits(ty: str) -> int:
    """The width of integer type ``ty`` (``i16`` -> 16)."""
    return int(ty[1:])


def fconst(v: float) -> str:
    """An LLVM IR float literal: the double-precision hex of an exactly representable float."""
    f = np.float32(v)
    if not (np.isnan(f) or float(f) == v or (np.isinf(f) and math.isinf(v))):
        raise ValueError(f"{v!r} is not a float32 value")
    return f"0x{struct.unpack('<Q', struct.pack('<d', float(f)))[0]:016X}"


def literal(x, ty: str) -> str:
    """A literal of LLVM type ``ty`` ('float' rounds as numpy's weak-scalar rule does). A
    size of a symbolic variant (``compiler.dims.Dim``) is written as itself: a placeholder
    the template reads at run time as ``ty`` (``forms.py``), else its number."""
    if isinstance(x, Dim):
        if ty != "i1" and current() is not None:
            return format(x)  # (a placeholder, read at run time as ty)
        x = x.value  # (no recording: the number, written as any number of its type)
    if ty == "i1":
        return "true" if x else "false"
    if ty in INTEGER:
        if isinstance(x, float) and not x.is_integer():
            raise NotImplementedError(f"LLVM codegen: the number {x!r} in an integer operation")
        w = bits(ty)  # (wrapped to the type's width, written signed: int8 and uint8 alike)
        v = int(x) & ((1 << w) - 1)
        return str(v - (1 << w) if v >> (w - 1) else v)
    if ty == "float":
        return fconst(float(np.float32(x)))
    return f"0x{struct.unpack('<Q', struct.pack('<d', float(x)))[0]:016X}"


def dtname(v) -> str:
    return v.dtype.name if isinstance(v, Value) and v.dtype is not None else type(v).__name__


INTERLEAVE_MIN = 256  # iterations from which a loop calling vecmath functions is interleaved


def interleaved(vecmath_used, trip: int) -> str:
    """The branch suffix asking LLVM to interleave a loop ``jit.INTERLEAVE`` times (the mark
    ``jit.number_loop_metadata`` numbers) when it runs at least ``INTERLEAVE_MIN`` times
    (shorter ones would spend their work in the scalar remainder) and its body
    calls vecmath functions: their polynomials are long chains of dependent operations, and
    independent iterations side by side hide that latency (W3's kernel: 1.5 → 1.2 ms);
    other loops keep LLVM's own choice."""
    return f", !llvm.loop {jit.LOOP_TOKEN}" if vecmath_used and trip >= INTERLEAVE_MIN else ""


@dataclass
class Loop:
    """A counted loop being written (:meth:`Emitter.loop`): its induction register ``i``, the
    registers of the values it carries from one iteration to the next (``carried``),
    ``next``: the values the body leaves for the next iteration, one per carried register
    (the body sets it), and ``hint``: the text after the back branch (loop metadata; the
    body may set it when it depends on what the body calls, as :func:`interleaved`)."""

    i: str
    carried: list[str]
    next: list[str] = field(default_factory=list)
    hint: str = ""


class Emitter:
    """One LLVM function body being written: its lines, fresh SSA names (``%t1``, ``%t2``,
    ...: ``prefix`` and a number), the block being written, and counted loops
    (:meth:`loop`, :meth:`parallel_for`, :meth:`rolled_loop`).

    Example: ``e = Emitter(); e.label("entry"); with e.loop("%i", 8, block="loop",
    exit="done"): e.line("call void @f(i64 %i)")``, then ``e.line("ret void")``."""

    def __init__(self, prefix: str = "t") -> None:
        self.lines: list[str] = []
        self.tmp = 0
        self.prefix = prefix
        self.block = ""  # the block being written (its label)

    def emit(self, text: str) -> str:
        """Write ``%tN = text``; returns ``%tN``."""
        self.tmp += 1
        r = f"%{self.prefix}{self.tmp}"
        self.lines.append(f"  {r} = {text}")
        return r

    def fresh(self, stem: str) -> str:
        """A fresh name ``stem`` and a number (for labels of blocks written many times)."""
        self.tmp += 1
        return f"{stem}{self.tmp}"

    def line(self, text: str) -> None:
        """Write an instruction that names no new value (or names its own)."""
        self.lines.append(f"  {text}")

    def label(self, block: str) -> None:
        """Start block ``block``."""
        self.lines.append(f"{block}:")
        self.block = block

    def jump(self, block: str) -> None:
        self.line(f"br label %{block}")

    def branch(self, cond: str, then: str, other: str) -> None:
        self.line(f"br i1 {cond}, label %{then}, label %{other}")

    def min(self, a, b) -> str:
        """The smaller of two i64 (signed)."""
        lt = self.emit(f"icmp slt i64 {a}, {b}")
        return self.emit(f"select i1 {lt}, i64 {a}, i64 {b}")

    def gep(self, ty: str, p: str, off) -> str:
        """The address of element ``off`` of type ``ty`` from pointer ``p``."""
        return self.emit(f"getelementptr inbounds {ty}, ptr {p}, i64 {off}")

    def function(self, signature: str) -> str:
        """The function written: ``signature {``, the lines, ``}``."""
        return f"{signature} {{\n" + "\n".join(self.lines) + "\n}\n\n"

    @contextmanager
    def loop(self, i: str, stop, *, block: str, exit: str, start=0, step=1,
             latch: str | None = None, entered: bool = False, exit_is_loop: bool = False,
             carry=(), hint: str = "", flags: str = "nuw nsw", next: str | None = None,
             more: str | None = None):
        """``for i in range(start, stop, step)`` (signed i64), run at least once: the body
        is block ``block`` (and the blocks it starts); the loop leaves to block ``exit``,
        which it starts. Yields the :class:`Loop`.

        The test is at the bottom, after the increment (``i.next``; ``i.more`` the
        comparison; ``next``/``more`` rename them), in the block the body ends in — or in
        ``latch``, started (and branched to) unless the body ends there. A loop that may
        run no time is guarded by the caller, who branches to ``block`` or past it and
        passes ``entered``; when ``exit`` is the header of the loop written next (which
        passes ``entered``), ``exit_is_loop`` leaves it for that loop to start.
        ``carry``: (register, type, initial value) of each value the loop carries; its
        ``phi`` takes the body's ``Loop.next``. ``hint``: text after the back branch (loop
        metadata, or ``Loop.hint`` set by the body); ``flags``: of the increment's
        ``add``.

        Example (``%acc`` the sum of ``%x`` over ``%i < 8``)::

            with e.loop("%i", 8, block="sum", exit="done",
                        carry=[("%acc", "float", "0.0")]) as lp:
                lp.next = [e.emit("fadd float %acc, %x")]
        """
        pre, lines = self.block, self.lines
        if not entered:
            self.jump(block)
        self.label(block)
        at = len(lines)
        lines.append("")  # the phi of i, once the latch is known
        lp = Loop(i, [reg for reg, _, _ in carry], hint=hint)
        yield lp
        if self.lines is not lines:
            raise RuntimeError(f"Emitter.loop {i}: the body left another list of lines")
        if latch is not None and self.block != latch:
            self.jump(latch)
            self.label(latch)
        if len(lp.next) != len(carry):
            raise ValueError(f"Emitter.loop {i}: the body set {len(lp.next)} next values "
                             f"for {len(carry)} carried ones")
        nxt, more = next or f"{i}.next", more or f"{i}.more"
        lines[at:at + 1] = [f"  {i} = phi i64 [{start}, %{pre}], [{nxt}, %{self.block}]"] + [
            f"  {reg} = phi {ty} [{first}, %{pre}], [{val}, %{self.block}]"
            for (reg, ty, first), val in zip(carry, lp.next)]
        self.line(f"{nxt} = add {flags + ' ' if flags else ''}i64 {i}, {step}")
        self.line(f"{more} = icmp slt i64 {nxt}, {stop}")
        self.line(f"br i1 {more}, label %{block}, label %{exit}{lp.hint}")
        if not exit_is_loop:
            self.label(exit)

    @contextmanager
    def rolled_loop(self, start, end, step=1, scalar: bool = False):
        """``for i in range(start, end, step)`` (signed i64) with bounds known at run time
        only (it may run no time: the test is at the top), its blocks named afresh; yields
        ``i``. LLVM does not unroll it (see ``jit.ROLLED_LOOP``), nor, with ``scalar``,
        vectorise it (code already written with vectors, or not worth it)."""
        b = self.fresh("L")
        i, pre = f"%{b}.i", self.block
        self.jump(f"{b}.head")
        self.label(f"{b}.head")
        self.line(f"{i} = phi i64 [{start}, %{pre}], [{i}.next, %{b}.latch]")
        more = self.emit(f"icmp slt i64 {i}, {end}")
        self.branch(more, f"{b}.body", f"{b}.exit")
        self.label(f"{b}.body")
        yield i
        self.jump(f"{b}.latch")
        self.label(f"{b}.latch")
        self.line(f"{i}.next = add nsw i64 {i}, {step}")
        mark = jit.SCALAR_LOOP if scalar else jit.ROLLED_LOOP
        self.line(f"br label %{b}.head, !llvm.loop {mark}")
        self.label(f"{b}.exit")

    @contextmanager
    def when(self, cond: str):
        """Code run only when ``cond`` (i1) holds."""
        b = self.fresh("W")
        self.branch(cond, f"{b}.then", f"{b}.end")
        self.label(f"{b}.then")
        yield
        self.jump(f"{b}.end")
        self.label(f"{b}.end")

    @contextmanager
    def parallel_for(self, parts):
        """The blocks ``%b`` = ``%tid``, ``%tid + %nt``, ... below ``parts`` — the body of a
        ``@<name>_blocks(ptr %ctx, i64 %tid, i64 %nt)`` function, which the thread pool
        calls for every part (``threads.split_call``); the function returns after it.
        Yields the :class:`Loop` (block ``blk``)."""
        self.line(f"%any = icmp slt i64 %tid, {parts}")
        self.branch("%any", "blk", "exit")
        with self.loop("%b", parts, start="%tid", step="%nt", block="blk", exit="exit",
                       entered=True) as lp:
            yield lp
        self.line("ret void")


class KernelBuilder(Emitter):
    """What every kernel builder has: an :class:`Emitter`, its group, the vecmath functions
    its code calls, and no declarations unless it says so. ``late``: a module builds the
    kernel after the others (its build may wait for a measurement under way meanwhile)."""

    late = False

    def __init__(self, g, group, kind: str) -> None:
        if group.kind != kind:
            raise NotImplementedError(f"LLVM {kind} codegen: group kind {group.kind!r}")
        super().__init__()
        self.g, self.group = g, group
        self.vecmath: list[str] = []

    def declarations(self) -> str:
        return ""


def entry_ir(name: str, n_args: int, pass_n: bool = False, status: bool = False) -> str:
    """The kernel's callable entry ``@<name>(ptr %args, i64 %n)``: loads the buffer pointers
    from ``args`` (one ``void**``: the cheapest ctypes call) and calls ``@<name>_body`` with
    them (and ``%n`` with ``pass_n``); returns the body's i32 status with ``status``."""
    loads = "".join(f"  %q{k} = getelementptr inbounds ptr, ptr %args, i64 {k}\n"
                    f"  %p{k} = load ptr, ptr %q{k}\n" for k in range(n_args))
    args = ", ".join([f"ptr %p{k}" for k in range(n_args)] + (["i64 %n"] if pass_n else []))
    if status:
        return (f"define i32 @{name}(ptr %args, i64 %n) {{\nentry:\n{loads}"
                f"  %st = call i32 @{name}_body({args})\n  ret i32 %st\n}}\n")
    return (f"define void @{name}(ptr %args, i64 %n) {{\nentry:\n{loads}"
            f"  call void @{name}_body({args})\n  ret void\n}}\n")


BUILDERS: dict[str, type] = {}  # fusion-group kind -> the class building its kernel


def builds(kind: str):
    """Register the decorated class as the kernel builder of fusion groups of ``kind``."""
    def register(cls: type) -> type:
        if kind in BUILDERS:
            raise ValueError(f"two kernel builders for group kind {kind!r}")
        BUILDERS[kind] = cls
        return cls
    return register


def builder(g, group):
    """The kernel builder of ``group`` (``codegen`` imports every builder module)."""
    cls = BUILDERS.get(group.kind)
    if cls is None:
        raise NotImplementedError(f"LLVM codegen: no kernel builder for group kind "
                                  f"{group.kind!r}")
    return cls(g, group)


def constant_outputs(g, group) -> list:
    """The group's outputs that are constants (``full``, ``size_of``) it hands to other
    groups: computed by their own primitive, not by the kernel (they need no loop)."""
    producer = {id(g.nodes[i].out): g.nodes[i] for i in group.nodes}
    return [v for v in group.outputs if traits(producer[id(v)].prim).role == CONSTANT]


def kernel_outputs(g, group) -> list:
    """The outputs a group's kernel writes (arg layout order): all but the constants."""
    consts = {id(v) for v in constant_outputs(g, group)}
    return [v for v in group.outputs if id(v) not in consts]
