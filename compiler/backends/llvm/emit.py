"""What every LLVM kernel builder shares: the dtype tables, literals, the kernel's entry
function and prelude, the base :class:`Emitter`, and the registry of builders by fusion-group
kind (:func:`builds`, :func:`builder`). The builders live beside it: ``loops.py``
(elementwise and Python-number groups), ``reduce.py``, ``matmul.py``, ``datamove.py``
(indexing and movement) and ``randomgen.py``; ``codegen.py`` puts a graph's kernels in one
module."""

from __future__ import annotations

import struct

import numpy as np

from ...ir import Value
from ...prims import CONSTANT, traits
from . import jit, vecmath

FN_NAME = "dg_ew"

LLTYPE = {"float32": "float", "float64": "double", "bool": "i1", "int64": "i64"}
MEMTYPE = {"float": "float", "double": "double", "i1": "i8", "i64": "i64"}  # in a buffer
SUFFIX = {"float": "f32", "double": "f64"}


def literal(x, ty: str) -> str:
    """A literal of LLVM type ``ty`` ('float' rounds as numpy's weak-scalar rule does)."""
    if ty == "i1":
        return "true" if x else "false"
    if ty == "i64":
        if isinstance(x, float) and not x.is_integer():
            raise NotImplementedError(f"LLVM codegen: the number {x!r} in an int64 operation")
        return str(int(x))
    if ty == "float":
        return vecmath.fconst(float(np.float32(x)))
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


def c_strides(shape) -> tuple:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


class Emitter:
    """What every kernel builder has: its group, the IR lines written so far, fresh SSA
    names, the vecmath functions its code calls, and no declarations unless it says so."""

    def __init__(self, g, group, kind: str) -> None:
        if group.kind != kind:
            raise NotImplementedError(f"LLVM {kind} codegen: group kind {group.kind!r}")
        self.g, self.group = g, group
        self.lines: list[str] = []
        self.tmp = 0
        self.vecmath: list[str] = []

    def emit(self, text: str) -> str:
        self.tmp += 1
        r = f"%t{self.tmp}"
        self.lines.append(f"  {r} = {text}")
        return r

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


def prelude_ir(math_functions) -> str:
    return (vecmath.module_ir(math_functions) + "declare float @llvm.sqrt.f32(float)\n"
            "declare double @llvm.sqrt.f64(double)\ndeclare double @llvm.fabs.f64(double)\n"
            "declare double @llvm.fma.f64(double, double, double)\n"
            "declare float @llvm.floor.f32(float)\ndeclare double @llvm.floor.f64(double)\n"
            "declare float @llvm.pow.f32(float, float)\n"
            "declare double @llvm.pow.f64(double, double)\n\n")


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
