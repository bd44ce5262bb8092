"""LLVM IR for elementwise and reduce :class:`~compiler.passes.fusion.FusionGroup` s (the
kernels ``compiler/backends/llvm/runner.py`` runs; :func:`module_ir` puts a graph's kernels in
one module).

:func:`elementwise_kernel` emits ``void @dg_ew(ptr %args, i64 %n)``: ``args`` is an array of
buffer pointers (the group's inputs, then its outputs, in ``arg_layout`` order; one ``void**``
is the cheapest ctypes call, see LLVM_NOTES) and the kernel loops ``i`` over the flattened
iteration space (``n`` elements). The entry function loads the pointers and calls an
``alwaysinline`` body whose pointer parameters are ``noalias`` (inputs and outputs are
distinct buffers), so after inlining LLVM still knows the stores do not alias the loads and
vectorises the loop.

Reads of outside data: every input buffer is C-contiguous in its own shape; maps of it inside
the group (``broadcast``, ``reshape``) are folded into a strided view, and a node reading it
with numpy broadcasting gets, per (squeezed) iteration dim, a stride (0 when broadcast). Its
flat index is ``sum_k ((i / inner_k) % size_k) * stride_k`` over coalesced dims — just ``i``
for an input of the full shape, ``0`` for a scalar / 0-d / all-broadcast one.

Supported (values float32 or float64, bool stored as one byte 0/1): ``add sub mul div neg
abs sqrt maximum minimum sign floor`` (NaN-propagating like numpy), ``pow`` by a literal 2,
0.5, -1, 1 or 0 (numpy computes these exactly as x·x, √x, 1/x, x, 1), in float32 also ``exp
log tanh erf sin cos`` (the vecmath functions, documented ulp bounds; float64 transcendentals
are not lowered), ``eq ne lt le gt ge`` (float or bool operands; ``ne`` is true for NaN as in
numpy), ``where``, ``cast`` between float32 and float64 (rounded to nearest, as numpy's
``astype``), bool -> float and to the same dtype, and as copies ``reshape``/``broadcast`` of
computed values and ``sum``/``max`` over size-1 axes; ``full`` and ``size_of`` become
constants; literal numbers become constants of the operation's dtype. A runtime Python number
(a weak scalar input, e.g. an optimizer's learning rate) is passed as a float64 in a
one-element buffer and rounded to the operation's dtype first, as numpy's weak-scalar rule
does. No fast-math flags. Anything else raises NotImplementedError naming the primitive and
dtype. Reduce groups: see :class:`_ReduceBuilder`.
"""

from __future__ import annotations

import ctypes
import math
import re
import struct

import numpy as np

from ...ir import Value
from . import jit, threads, vecmath

FN_NAME = "dg_ew"

_FBIN = {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv"}
_FCMP = {"eq": "oeq", "ne": "une", "lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge"}
_ICMP = {"eq": "eq", "ne": "ne"}
_VECMATH = ("exp", "log", "tanh", "erf", "sin", "cos")
_LLTYPE = {"float32": "float", "float64": "double", "bool": "i1", "int64": "i64"}
_MEMTYPE = {"float": "float", "double": "double", "i1": "i8", "i64": "i64"}  # in a buffer
_SCMP = {"eq": "eq", "ne": "ne", "lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge"}
_IBIN = {"add": "add", "sub": "sub", "mul": "mul"}  # int64: wrapping, as numpy's
_SUFFIX = {"float": "f32", "double": "f64"}
_EXACT_POW = (2.0, 0.5, -1.0, 1.0, 0.0)  # np.power computes these as x*x, sqrt, 1/x, x, 1
_NEST_MIN = 8  # an elementwise kernel loops rows x last dim when that dim is at least this
_LIBM_MAX = 16  # pow may call libm in groups of at most this many elements, or on scalar
#                operands (loop-invariant): never in a hot loop


def _const(x, ty: str) -> str:
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


def _dtname(v) -> str:
    return v.dtype.name if isinstance(v, Value) and v.dtype is not None else type(v).__name__


def _unsupported(prim: str, what) -> NotImplementedError:
    return NotImplementedError(
        f"LLVM elementwise codegen: primitive {prim!r} on dtype {what} is not supported "
        f"(supported: float32/float64 add sub mul div neg abs sqrt maximum minimum sign floor, "
        f"pow by 2, 0.5, -1, 1 or 0, float32 exp log tanh erf sin cos, comparisons, where, "
        f"casts between floats and from bool)")


def _c_strides(shape) -> tuple:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


class _Emitter:
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


class _Builder(_Emitter):
    """An elementwise group (the base of the loop builders: reduce and scalar groups)."""

    def __init__(self, g, group, kind: str = "elementwise", full=None) -> None:
        super().__init__(g, group, kind)
        self.full = tuple(s for s in group.shape if s != 1) if full is None else full
        # the dims the current code enumerates, and the loop variables enumerating them
        # (row-major each): one flat %i here; (%o kept, %r reduced) in a reduction kernel
        self.space = self.full
        self.loops = [("%i", tuple(range(len(self.full))))]
        self.nested = False  # one flat loop; build() retries as rows x last dim if it pays
        self.ptr: dict[int, str] = {}  # id(buffer value) -> pointer param
        self.at_i: dict[int, tuple] = {}  # id(value) -> (ssa, lltype) at iteration point i
        self.reads: dict[tuple, str] = {}
        self.idx: dict[tuple, str] = {}
        self.views: dict[int, tuple] = {}  # id(map value) -> (buffer, shape, strides, offset)
        self.consts: dict[int, tuple] = {}  # id(full value) -> (python value, dtype name)

    # ------------------------------------------------------------ reading outside data
    def view(self, v) -> tuple:
        """(buffer value, shape, element strides, element offset) of outside data ``v``."""
        if id(v) in self.ptr:
            return v, v.shape, _c_strides(v.shape), 0
        if id(v) in self.views:
            return self.views[id(v)]
        raise NotImplementedError(f"LLVM elementwise codegen: {v!r} is neither an input nor "
                                  f"a map of one")

    def map_view(self, n) -> None:
        buf, shape, st, off = self.view(n.inputs[0])
        name, out = n.prim.name, n.out.shape
        if name == "slice":  # unit steps (fusion's rule): an offset, the same strides
            p = n.params
            if any(c != 1 for c in p["steps"]):
                raise _unsupported("slice", "with steps (index map of outside data)")
            off += sum(a * t for a, t in zip(p["starts"], st))
            nst = list(st)
        elif name == "broadcast":
            lead = len(out) - len(shape)
            nst = [0] * lead + [0 if (s == 1 and o != 1) else t
                                for s, o, t in zip(shape, out[lead:], st)]
        elif name == "reshape":
            nz = [(s, t) for s, t in zip(shape, st) if s != 1]
            if tuple(t for _, t in nz) == _c_strides(tuple(s for s, _ in nz)):
                nst = list(_c_strides(out))  # contiguous: a row-major relabelling
            elif tuple(s for s, _ in nz) == tuple(s for s in out if s != 1):
                it = iter(t for _, t in nz)
                nst = [next(it) if s != 1 else 0 for s in out]
            else:
                raise NotImplementedError("LLVM elementwise codegen: reshape of a broadcast "
                                          "view that merges or splits dims")
        else:
            raise _unsupported(name, f"{_dtname(n.out)} (index map of outside data)")
        self.views[id(n.out)] = (buf, tuple(out), tuple(nst), off)

    def index(self, strides: tuple) -> str:
        """The element offset, from the loop variables, for per-space-dim ``strides``."""
        key = (tuple(var for var, _ in self.loops), tuple(strides))
        if key in self.idx:
            return self.idx[key]
        acc = None
        for var, dims in self.loops:
            sizes = [self.space[d] for d in dims]
            coalesced = []  # (size, inner, stride)
            for size, inner, st in zip(sizes, _c_strides(sizes), (strides[d] for d in dims)):
                if coalesced and coalesced[-1][2] == st * size:
                    psize, _, _ = coalesced[-1]
                    coalesced[-1] = (psize * size, inner, st)
                else:
                    coalesced.append((size, inner, st))
            for k, (size, inner, st) in enumerate(coalesced):
                if st == 0:
                    continue
                t = var if inner == 1 else self.emit(f"udiv i64 {var}, {inner}")
                if k > 0:
                    t = self.emit(f"urem i64 {t}, {size}")
                if st != 1:
                    t = self.emit(f"mul i64 {t}, {st}")
                acc = t if acc is None else self.emit(f"add i64 {acc}, {t}")
        self.idx[key] = acc = acc or "0"
        return acc

    def read(self, v, out_shape) -> tuple:
        """``v`` (outside data) as read by a node of shape ``out_shape`` at point ``i``."""
        buf, shape, st, base = self.view(v)
        lead = len(out_shape) - len(shape)
        strides = []
        for k, o in enumerate(out_shape):
            if o == 1:
                continue
            d = k - lead
            strides.append(st[d] if d >= 0 and shape[d] != 1 else 0)
        if len(strides) != len(self.space):
            raise NotImplementedError(f"LLVM elementwise codegen: node of shape {out_shape} "
                                      f"outside the iteration space {self.group.shape}")
        key = (id(buf), tuple(strides), base, tuple(var for var, _ in self.loops))
        if key not in self.reads:
            off = self.index(tuple(strides))
            if base:
                off = str(base) if off == "0" else self.emit(f"add i64 {off}, {base}")
            dt = buf.dtype.name
            ty = _MEMTYPE[_LLTYPE[dt]]
            p = self.emit(f"getelementptr inbounds {ty}, ptr {self.ptr[id(buf)]}, i64 {off}")
            x = self.emit(f"load {ty}, ptr {p}")
            if dt == "bool":
                x = self.emit(f"icmp ne i8 {x}, 0")
            self.reads[key] = x
        return self.reads[key], _LLTYPE[buf.dtype.name]

    # ------------------------------------------------------------ computing
    def operand(self, x, out_shape, want: str) -> tuple:
        if not isinstance(x, Value):  # a literal Python number
            return _const(x, want), want
        if id(x) in self.at_i:
            val, ty = self.at_i[id(x)]
            if x.weak and ty == "double" and want in ("float", "i1"):  # a computed number
                key = (id(x), want)
                if key not in self.reads:
                    self.reads[key] = self.emit(f"fptrunc double {val} to float") \
                        if want == "float" else self.emit(f"fcmp une double {val}, 0.0")
                return self.reads[key], want
            return val, ty
        if id(x) in self.consts:
            val, dt = self.consts[id(x)]
            return _const(val, _LLTYPE[dt]), _LLTYPE[dt]
        if x.weak:  # a runtime Python number, passed as a float64 in a one-element buffer
            if want == "i1" or id(x) not in self.ptr:
                raise NotImplementedError("LLVM elementwise codegen: a Python-number input "
                                          "used as a boolean or computed inside the group")
            key = (id(x), want)
            if key not in self.reads:
                r = self.emit(f"load double, ptr {self.ptr[id(x)]}")
                if want == "float":  # numpy's weak scalar: rounded to float32 first
                    r = self.emit(f"fptrunc double {r} to float")
                elif want == "i64":  # (only where the result's dtype proves it an int)
                    r = self.emit(f"fptosi double {r} to i64")
                self.reads[key] = r
            return self.reads[key], want
        return self.read(x, out_shape)

    def int_node(self, n, ins) -> None:
        """int64 arithmetic, wrapping on overflow as numpy's does."""
        name = n.prim.name
        a = [self.operand(x, n.out.shape, "i64")[0] for x in ins]
        if name in _IBIN:
            r = self.emit(f"{_IBIN[name]} i64 {a[0]}, {a[1]}")
        elif name == "neg":
            r = self.emit(f"sub i64 0, {a[0]}")
        elif name == "abs":
            c = self.emit(f"icmp slt i64 {a[0]}, 0")
            m = self.emit(f"sub i64 0, {a[0]}")
            r = self.emit(f"select i1 {c}, i64 {m}, i64 {a[0]}")
        elif name in ("maximum", "minimum"):
            c = self.emit(f"icmp {'sgt' if name == 'maximum' else 'slt'} i64 {a[0]}, {a[1]}")
            r = self.emit(f"select i1 {c}, i64 {a[0]}, i64 {a[1]}")
        else:
            raise _unsupported(name, "int64")
        self.at_i[id(n.out)] = (r, "i64")

    def weak_node(self, n) -> None:
        """Python-number arithmetic (an optimizer's hyperparameters): in float64, as numpy
        does it on Python floats; comparisons give 0.0 or 1.0."""
        name = n.prim.name
        if name not in _FBIN and name not in _FCMP and name not in (
                "neg", "abs", "sqrt", "maximum", "minimum"):
            raise _unsupported(name, "scalar (weak Python number)")
        for x in n.inputs:
            if isinstance(x, Value) and not x.weak:
                raise _unsupported(name, "scalar (weak) with a tensor operand")
        a = [self.operand(x, (), "double")[0] for x in n.inputs]
        if name in _FBIN:
            r = self.emit(f"{_FBIN[name]} double {a[0]}, {a[1]}")
        elif name in _FCMP:
            c = self.emit(f"fcmp {_FCMP[name]} double {a[0]}, {a[1]}")
            r = self.emit(f"uitofp i1 {c} to double")
        elif name == "neg":
            r = self.emit(f"fneg double {a[0]}")
        elif name in ("abs", "sqrt"):
            r = self.emit(f"call double @llvm.{'fabs' if name == 'abs' else 'sqrt'}.f64("
                          f"double {a[0]})")
        else:
            c = self.emit(f"fcmp {'ogt' if name == 'maximum' else 'olt'} double {a[0]}, {a[1]}")
            m = self.emit(f"select i1 {c}, double {a[0]}, double {a[1]}")
            nan = self.emit(f"fcmp uno double {a[0]}, {a[0]}")
            r = self.emit(f"select i1 {nan}, double {a[0]}, double {m}")
        self.at_i[id(n.out)] = (r, "double")

    def node(self, n) -> None:
        name, out = n.prim.name, n.out
        if out.weak:
            self.weak_node(n)
            return
        odt = out.dtype.name
        if name in ("full", "size_of"):  # constants: a parameter, or known from a shape
            if odt not in _LLTYPE:
                raise _unsupported(name, odt)
            value = n.params["value"] if name == "full" else \
                math.prod(n.inputs[0].shape[a] for a in n.params["axes"])
            self.consts[id(out)] = (value, odt)
            return
        if name == "slice" and isinstance(n.inputs[0], Value) and (
                id(n.inputs[0]) in self.ptr or id(n.inputs[0]) in self.views):
            self.map_view(n)  # a unit-step slice of outside data: an offset view
            return
        if name in ("broadcast", "reshape", "sum", "max"):
            src = n.inputs[0]
            if isinstance(src, Value) and id(src) in self.consts:
                self.consts[id(out)] = self.consts[id(src)]
                return
            if isinstance(src, Value) and id(src) in self.at_i and src.dtype is out.dtype \
                    and math.prod(src.shape) == math.prod(out.shape):
                val, ty = self.at_i[id(src)]  # a copy at the same point
                if name == "sum" and ty in ("float", "double"):  # numpy's sum starts at +0.0
                    val = self.emit(f"fadd {ty} {val}, {_const(0.0, ty)}")
                self.at_i[id(out)] = (val, ty)
                return
            if name in ("broadcast", "reshape") and isinstance(src, Value) and (
                    id(src) in self.ptr or id(src) in self.views):
                self.map_view(n)
                return
            if name in ("sum", "max") and isinstance(src, Value) and src.dtype is out.dtype \
                    and odt in ("float32", "float64") and (
                    id(src) in self.ptr or id(src) in self.views) \
                    and math.prod(src.shape) == math.prod(out.shape):
                # over size-1 axes: the same elements in the same order, read as a reshape
                buf, shape, st, base = self.view(src)
                it = iter([t for d, t in zip(shape, st) if d != 1])
                self.views[id(out)] = (buf, tuple(out.shape),
                                       tuple(next(it) if d != 1 else 0 for d in out.shape), base)
                val, ty = self.read(out, out.shape)
                if name == "sum":  # numpy's sum starts at +0.0
                    val = self.emit(f"fadd {ty} {val}, {_const(0.0, ty)}")
                self.at_i[id(out)] = (val, ty)
                return
            raise _unsupported(name, odt)
        ins = n.inputs
        vals = [x for x in ins if isinstance(x, Value) and not x.weak]
        in_dts = {x.dtype.name for x in vals if x.dtype is not None}
        if name in _FCMP:
            if not vals or len(in_dts) != 1 or next(iter(in_dts)) not in _LLTYPE:
                raise _unsupported(name, "/".join(sorted(in_dts)) or "literals")
            ty = _LLTYPE[next(iter(in_dts))]
            if ty == "i64" and any(isinstance(x, float) or (isinstance(x, Value) and x.weak)
                                   for x in ins):  # numpy would compare as float64
                raise _unsupported(name, "int64 with a float or Python-number operand")
            (a, _), (b, _) = (self.operand(x, out.shape, ty) for x in ins)
            if ty == "i64":
                r = self.emit(f"icmp {_SCMP[name]} i64 {a}, {b}")
            elif ty != "i1":
                r = self.emit(f"fcmp {_FCMP[name]} {ty} {a}, {b}")
            elif name in _ICMP:
                r = self.emit(f"icmp {_ICMP[name]} i1 {a}, {b}")
            else:
                raise _unsupported(name, "bool")
            self.at_i[id(out)] = (r, "i1")
            return
        if name == "cast":
            src = ins[0]
            sdt = _dtname(src)
            if sdt not in _LLTYPE or odt not in _LLTYPE or (sdt != odt and "bool" == odt
                                                             and sdt != "int64") or (
                    odt == "int64" and sdt not in ("int64", "bool")):
                raise _unsupported("cast", f"{sdt}->{odt}")
            sty, oty = _LLTYPE[sdt], _LLTYPE[odt]
            a, _ = self.operand(src, out.shape, sty)
            if sty == oty:
                self.at_i[id(out)] = (a, oty)
            elif sty == "i1":  # bool -> number: 0 or 1
                op = "zext" if oty == "i64" else "uitofp"
                self.at_i[id(out)] = (self.emit(f"{op} i1 {a} to {oty}"), oty)
            elif sty == "i64":  # int64 -> float (rounded to nearest) or -> bool
                self.at_i[id(out)] = (self.emit(f"icmp ne i64 {a}, 0"), oty) if oty == "i1" \
                    else (self.emit(f"sitofp i64 {a} to {oty}"), oty)
            else:  # float32 <-> float64, rounded to nearest as numpy's astype
                op = "fpext" if oty == "double" else "fptrunc"
                self.at_i[id(out)] = (self.emit(f"{op} {sty} {a} to {oty}"), oty)
            return
        if odt not in _LLTYPE:
            raise _unsupported(name, odt)
        ty = _LLTYPE[odt]
        if name == "where":
            c, _ = self.operand(ins[0], out.shape, "i1")
            (a, _), (b, _) = (self.operand(x, out.shape, ty) for x in ins[1:])
            self.at_i[id(out)] = (self.emit(f"select i1 {c}, {ty} {a}, {ty} {b}"), ty)
            return
        if ty == "i1" or any(d != odt for d in in_dts):
            raise _unsupported(name, "/".join(sorted(in_dts | {odt})))
        if ty == "i64":
            self.int_node(n, ins)
            return
        libm_pow = False
        if name == "pow":  # literal exponents numpy computes exactly: x², √x, 1/x, x, 1
            e = ins[1]
            e = self.consts[id(e)][0] if isinstance(e, Value) and id(e) in self.consts else e
            if isinstance(e, Value) or float(e) not in _EXACT_POW:
                invariant = all(math.prod(x.shape) <= 1 for x in ins if isinstance(x, Value))
                if math.prod(self.group.shape) > _LIBM_MAX and not invariant:
                    raise _unsupported("pow", f"{odt} with exponent {_dtname(ins[1])} other "
                                              f"than a literal {sorted(_EXACT_POW)}")
                libm_pow = True  # a few elements, or one value the loop does not change
                #                  (Adam's bias correction, hoisted by LLVM): libm, as numpy
            else:
                ins = [ins[0]]
        args = [self.operand(x, out.shape, ty)[0] for x in ins]
        sfx = _SUFFIX[ty]
        if libm_pow:
            r = self.emit(f"call {ty} @llvm.pow.{sfx}({ty} {args[0]}, {ty} {args[1]})")
        elif name == "pow":
            e, a = float(e), args[0]
            r = (self.emit(f"fmul {ty} {a}, {a}") if e == 2.0 else
                 self.emit(f"call {ty} @llvm.sqrt.{sfx}({ty} {a})") if e == 0.5 else
                 self.emit(f"fdiv {ty} {_const(1.0, ty)}, {a}") if e == -1.0 else
                 self.emit(f"fadd {ty} {a}, {_const(-0.0, ty)}") if e == 1.0 else
                 _const(1.0, ty))
        elif name == "sign":  # numpy: NaN stays NaN, ±0 gives +0
            a = args[0]
            pos = self.emit(f"fcmp ogt {ty} {a}, {_const(0.0, ty)}")
            neg = self.emit(f"fcmp olt {ty} {a}, {_const(0.0, ty)}")
            nan = self.emit(f"fcmp uno {ty} {a}, {a}")
            t = self.emit(f"select i1 {neg}, {ty} {_const(-1.0, ty)}, {ty} {_const(0.0, ty)}")
            t = self.emit(f"select i1 {pos}, {ty} {_const(1.0, ty)}, {ty} {t}")
            r = self.emit(f"select i1 {nan}, {ty} {a}, {ty} {t}")
        elif name == "floor":
            r = self.emit(f"call {ty} @llvm.floor.{sfx}({ty} {args[0]})")
        elif name in _FBIN:
            r = self.emit(f"{_FBIN[name]} {ty} {args[0]}, {args[1]}")
        elif name == "neg":
            r = self.emit(f"fneg {ty} {args[0]}")
        elif name == "abs":
            r = self.emit(f"call {ty} @llvm.fabs.{sfx}({ty} {args[0]})")
        elif name == "sqrt":
            r = self.emit(f"call {ty} @llvm.sqrt.{sfx}({ty} {args[0]})")
        elif name in ("maximum", "minimum"):  # numpy: NaN if either is NaN
            a, b = args
            c = self.emit(f"fcmp {'ogt' if name == 'maximum' else 'olt'} {ty} {a}, {b}")
            m = self.emit(f"select i1 {c}, {ty} {a}, {ty} {b}")
            nan = self.emit(f"fcmp uno {ty} {a}, {a}")
            r = self.emit(f"select i1 {nan}, {ty} {a}, {ty} {m}")
        elif name in _VECMATH and ty == "float":
            if name not in self.vecmath:
                self.vecmath.append(name)
            r = self.emit(f"call float @dg_{name}f(float {args[0]})")
        else:
            raise _unsupported(name, odt)
        self.at_i[id(out)] = (r, ty)

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        """(IR text, function name, arg layout); without ``prelude`` the text holds only the
        kernel's two functions (``self.vecmath`` names the math functions it calls), for
        :func:`module_ir` to put many kernels in one module."""
        grp = self.group
        outputs = kernel_outputs(self.g, grp)
        layout = list(grp.inputs) + outputs
        for k, v in enumerate(grp.inputs):
            self.ptr[id(v)] = f"%a{k}"
        nested = self.nested
        if nested:  # rows x a long last dim: a broadcast read is affine in the inner index
            self.loops = [("%o", tuple(range(len(self.full) - 1))), ("%i", (len(self.full) - 1,))]
        for i in grp.nodes:
            self.node(self.g.nodes[i])
        params = []
        for k, v in enumerate(layout):
            if getattr(v, "weak", False) and k < len(grp.inputs):
                params.append(f"ptr noalias %a{k}")  # one float64 (see operand)
                continue
            if v.dtype is None or v.dtype.name not in _LLTYPE:
                raise NotImplementedError(f"LLVM elementwise codegen: buffer {v!r} of dtype "
                                          f"{_dtname(v)} is not supported (float32, float64, bool)")
            params.append(f"ptr noalias %a{k}")
        for k, v in enumerate(outputs):
            if math.prod(v.shape) != math.prod(grp.shape):
                raise NotImplementedError(f"LLVM elementwise codegen: output {v!r} of shape "
                                          f"{v.shape} is not the iteration space {grp.shape}")
            val, ty = self.operand(v, v.shape, _LLTYPE[v.dtype.name])
            if ty == "i1":
                val = self.emit(f"zext i1 {val} to i8")
            st = _MEMTYPE[ty]
            off = self.index(_c_strides(self.full))
            p = self.emit(f"getelementptr inbounds {st}, ptr %a{len(grp.inputs) + k}, i64 {off}")
            self.lines.append(f"  store {st} {val}, ptr {p}")
        entry = _entry(name, len(layout), pass_n=True)
        body = "\n".join(self.lines)
        if nested:
            rows, inner = math.prod(self.full[:-1]), self.full[-1]
            loop = ("entry:\n  br label %outer\nouter:\n"
                    "  %o = phi i64 [0, %entry], [%o.next, %loop.end]\n"
                    "  br label %loop\nloop:\n"
                    "  %i = phi i64 [0, %outer], [%i.next, %loop]\n"
                    + body + "\n"
                    f"  %i.next = add nuw nsw i64 %i, 1\n  %more = icmp slt i64 %i.next, {inner}\n"
                    "  br i1 %more, label %loop, label %loop.end\nloop.end:\n"
                    f"  %o.next = add nuw nsw i64 %o, 1\n  %o.more = icmp slt i64 %o.next, {rows}\n"
                    "  br i1 %o.more, label %outer, label %exit\nexit:\n  ret void\n}\n\n")
        else:
            loop = ("entry:\n  %empty = icmp sle i64 %n, 0\n"
                    "  br i1 %empty, label %exit, label %loop\nloop:\n"
                    "  %i = phi i64 [0, %entry], [%i.next, %loop]\n"
                    + body + "\n"
                    "  %i.next = add nuw nsw i64 %i, 1\n  %more = icmp slt i64 %i.next, %n\n"
                    "  br i1 %more, label %loop, label %exit\nexit:\n  ret void\n}\n\n")
        if not nested and len(self.full) >= 2 and self.full[-1] >= _NEST_MIN and (
                "udiv" in body or "urem" in body):  # broadcast reads: rows x last dim
            b = type(self)(self.g, self.group)
            b.nested = True
            built = b.build(name, prelude)
            self.vecmath = b.vecmath
            return built
        n_static = math.prod(self.full)
        if not nested and n_static >= threads.PAR_MIN and threads.find():
            return self._parallel(name, prelude, params, body, entry, n_static), name, layout
        text = (
            (_prelude(self.vecmath) if prelude else "")
            + f"define internal void @{name}_body({', '.join(params + ['i64 %n'])}) "
            + "alwaysinline {\n" + loop + entry)
        return text, name, layout

    def _parallel(self, name, prelude, params, body, entry, n) -> str:
        """A big flat kernel on every OpenMP thread: blocks of ``_PAR_BLOCK`` elements,
        thread t taking blocks t, t + T, ... (each element is computed alone, so the result
        does not depend on the split)."""
        k_args = len(params)
        nb = -(-n // _PAR_BLOCK)
        ptrs = ", ".join(f"ptr %a{k}" for k in range(k_args))
        rng = (f"define internal void @{name}_range({', '.join(params)}, i64 %lo, i64 %hi) {{\n"
               "entry:\n  br label %loop\nloop:\n"
               "  %i = phi i64 [%lo, %entry], [%i.next, %loop]\n" + body + "\n"
               "  %i.next = add nuw nsw i64 %i, 1\n  %more = icmp slt i64 %i.next, %hi\n"
               "  br i1 %more, label %loop, label %exit\nexit:\n  ret void\n}\n\n")
        unpack = "".join(f"  %x{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}\n"
                         f"  %a{k} = load ptr, ptr %x{k}\n" for k in range(k_args))
        blocks = (f"define internal void @{name}_blocks(ptr %ctx, i64 %tid, i64 %nt) {{\n"
                  "entry:\n" + unpack
                  + f"  %any = icmp slt i64 %tid, {nb}\n"
                  "  br i1 %any, label %blk, label %exit\nblk:\n"
                  "  %b = phi i64 [%tid, %entry], [%b.next, %blk]\n"
                  f"  %lo = mul nuw nsw i64 %b, {_PAR_BLOCK}\n"
                  f"  %hi0 = add nuw nsw i64 %lo, {_PAR_BLOCK}\n"
                  f"  %lt = icmp slt i64 %hi0, {n}\n"
                  f"  %hi = select i1 %lt, i64 %hi0, i64 {n}\n"
                  f"  call void @{name}_range({ptrs}, i64 %lo, i64 %hi)\n"
                  "  %b.next = add nuw nsw i64 %b, %nt\n"
                  f"  %b.more = icmp slt i64 %b.next, {nb}\n"
                  "  br i1 %b.more, label %blk, label %exit\nexit:\n  ret void\n}\n\n"
                  f"define internal void @{name}_omp(ptr %ctx) {{\nentry:\n"
                  "  %t = call i32 @omp_get_thread_num()\n  %n = call i32 @omp_get_num_threads()\n"
                  "  %t64 = sext i32 %t to i64\n  %n64 = sext i32 %n to i64\n"
                  f"  call void @{name}_blocks(ptr %ctx, i64 %t64, i64 %n64)\n  ret void\n}}\n\n")
        pack = "".join(f"  %c{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}\n"
                       f"  store ptr %a{k}, ptr %c{k}\n" for k in range(k_args))
        main = (f"define internal void @{name}_body({', '.join(params + ['i64 %n'])}) "
                f"alwaysinline {{\nentry:\n  %ctx = alloca [{k_args} x ptr], align 8\n" + pack
                + threads.split_call(name) + "\n  ret void\n}\n\n")
        self.par = True
        return ((_prelude(self.vecmath) + threads.DECLARATIONS if prelude else "")
                + rng + blocks + main + entry)

    def declarations(self) -> str:
        return threads.DECLARATIONS if getattr(self, "par", False) else ""


_LANES = {"float": 16, "double": 8}  # accumulators per reduction: one AVX-512 register
_PAR_BLOCK = 1 << 16  # elements per block of an elementwise kernel split across threads
_CHUNK = 16  # vectors per chunk of the reduction loop
_BLOCK_CHUNKS = 64  # chunks per block of a reduction split across threads (see threads.py)


class _ReduceBuilder(_Builder):
    """A reduction group (see compiler/passes/fusion.py): ``sum``/``max`` nodes over the same
    input shape ``S`` and axes, a prologue over ``S``, an epilogue over the reduced shape and
    one over ``S`` reading reduced values broadcast back.

    The kernel loops ``%o`` over the kept (outer) dims of ``S``; per ``o``: the kept-space
    nodes that need no reduction; then the reduced index ``r`` runs in chunks of
    ``B = _CHUNK·L`` elements (``L`` = ``_LANES``: 16 float32 or 8 float64). A plain loop —
    which LLVM vectorises like an elementwise kernel — evaluates the prologue at each ``r``
    of the chunk into a stack buffer; the buffer is then folded into one ``<L x ty>``
    accumulator vector by explicit vector ops, so lane ``j`` takes elements ``j, j+L, j+2L,
    ...`` in order. The last partial chunk pads its last vector with the identity. The lanes
    then combine in a fixed tree. The summation order thus depends only on ``R`` — never on
    a thread count or the machine. Then the kept-space epilogue, and, if any, a second loop
    over ``r`` for the epilogue over ``S`` (prologue values it reads are recomputed). Sums
    start from +0.0, as numpy's do; ``max`` starts from -inf and propagates NaN as numpy's
    does."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "reduce")
        shape, axes = group.shape, group.axes
        dims = [d for d, n in enumerate(shape) if n != 1]
        self.kept = tuple(k for k, d in enumerate(dims) if d not in axes)
        self.red = tuple(k for k, d in enumerate(dims) if d in axes)
        self.reduced = tuple(self.full[k] for k in self.kept)
        self.R = math.prod(self.full[k] for k in self.red)
        if self.R == 0 or math.prod(self.reduced) == 0:
            raise NotImplementedError("LLVM reduce codegen: empty reduction or output")
        self.space, self.loops = self.reduced, [("%o", tuple(range(len(self.reduced))))]
        self.extra = ""  # functions of a reduction split across threads (see build)

    def node(self, n) -> None:
        src = n.inputs[0] if n.inputs else None
        if n.prim.name == "broadcast" and isinstance(src, Value) and id(src) in self.at_i \
                and self.space == self.full:
            # a kept-space value broadcast back along the reduced axes (fusion's rule):
            # the same at every reduced index
            self.at_i[id(n.out)] = self.at_i[id(src)]
            return
        super().node(n)

    # ------------------------------------------------------------ classifying nodes
    def _classify(self) -> tuple:
        nodes, grp = self.g.nodes, self.group
        inside = {id(nodes[i].out): i for i in grp.nodes}
        reductions, setup, kind, post = [], [], {}, set()
        for i in grp.nodes:
            n = nodes[i]
            name, src = n.prim.name, n.inputs[0] if n.inputs else None
            computed_src = isinstance(src, Value) and id(src) in inside and \
                inside[id(src)] not in setup  # (a map of a constant is a constant)
            if name in ("full", "size_of") or (name in ("broadcast", "reshape", "slice")
                                               and not computed_src):
                setup.append(i)
                continue
            sq = tuple(x for x in n.out.shape if x != 1)
            deps = [inside[id(x)] for x in n.inputs if isinstance(x, Value) and id(x) in inside]
            if name in ("sum", "max") and tuple(n.params["axes"]) == tuple(grp.axes) and \
                    tuple(src.shape) == tuple(grp.shape) and sq == self.reduced:
                reductions.append(i)
                post.add(i)
                continue
            if sq == self.full and sq != self.reduced:
                kind[i] = "S"
            elif sq == self.reduced:
                kind[i] = "K"
            else:
                raise NotImplementedError(f"LLVM reduce codegen: node {name} of shape "
                                          f"{n.out.shape} in a reduction over {grp.shape}")
            if any(d in post for d in deps):
                post.add(i)
        pre_s = [i for i in grp.nodes if kind.get(i) == "S" and i not in post]
        post_s = [i for i in grp.nodes if kind.get(i) == "S" and i in post]
        pre_k = [i for i in grp.nodes if kind.get(i) == "K" and i not in post]
        post_k = [i for i in grp.nodes if kind.get(i) == "K" and i in post]
        return setup, reductions, pre_s, post_s, pre_k, post_k

    # ------------------------------------------------------------ emitting
    def _in_space_s(self, var: str) -> None:
        self.space = self.full
        self.loops = [("%o", self.kept), (var, self.red)]

    def _in_space_k(self) -> None:
        self.space = self.reduced
        self.loops = [("%o", tuple(range(len(self.reduced))))]

    def _store(self, v, arg: int, strides: tuple) -> None:
        val, ty = self.operand(v, v.shape, _LLTYPE[v.dtype.name])
        if ty == "i1":
            val = self.emit(f"zext i1 {val} to i8")
        st = _MEMTYPE[ty]
        off = self.index(strides)
        p = self.emit(f"getelementptr inbounds {st}, ptr %a{arg}, i64 {off}")
        self.lines.append(f"  store {st} {val}, ptr {p}")

    def _combine(self, op: str, ty: str, a: str, b: str) -> str:
        if op == "sum":
            return self.emit(f"fadd {ty} {a}, {b}")
        mask = f"<{ty[1:].split(' x ')[0]} x i1>" if ty.startswith("<") else "i1"
        gt = self.emit(f"fcmp ogt {ty} {a}, {b}")  # numpy's max: NaN wins
        nan = self.emit(f"fcmp uno {ty} {a}, {a}")
        keep = self.emit(f"or {mask} {gt}, {nan}")
        return self.emit(f"select {mask} {keep}, {ty} {a}, {ty} {b}")

    def _lane(self, var: str, reductions, pre_s, s_outputs, base) -> list:
        """Evaluate the prologue at reduced index ``var``; returns each reduction's value."""
        self.at_i = dict(base)
        self._in_space_s(var)
        for i in pre_s:
            self.node(self.g.nodes[i])
        for arg, v in s_outputs:
            self._store(v, arg, _c_strides(self.full))
        nodes = self.g.nodes
        return [self.operand(nodes[i].inputs[0], nodes[i].inputs[0].shape,
                             _LLTYPE[nodes[i].out.dtype.name])[0] for i in reductions]

    def _blocks_function(self, name, layout, tys, vec, init, NB, CB, B, chunks,
                         chunk_loop) -> str:
        """``@<name>_blocks(ctx, tid, nt)``: blocks tid, tid + nt, ... of CB chunks each,
        every block's lanes (from fresh ones) stored to its partials slot; and
        ``@<name>_omp(ctx)``, which calls it with the OpenMP thread number and team size."""
        saved = self.lines, self.reads, self.idx
        self.lines, self.reads, self.idx = [], {}, {}
        out = self.lines
        n_args = len(layout)
        out.append("entry:")
        for k in range(n_args + len(tys)):
            out.append(f"  %x{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}")
            dst = f"%a{k}" if k < n_args else f"%parts{k - n_args}"
            out.append(f"  {dst} = load ptr, ptr %x{k}")
        for m, t in enumerate(tys):
            out.append(f"  %tmp{m} = alloca [{B} x {t}], align 64")
        out.append(f"  %any = icmp slt i64 %tid, {NB}")
        out.append("  br i1 %any, label %blk, label %exit\nblk:")
        out.append("  %b = phi i64 [%tid, %entry], [%b.next, %chunk.end]")
        c0 = self.emit(f"mul nuw nsw i64 %b, {CB}")
        c1a = self.emit(f"add nuw nsw i64 {c0}, {CB}")
        lt = self.emit(f"icmp slt i64 {c1a}, {chunks}")
        c1 = self.emit(f"select i1 {lt}, i64 {c1a}, i64 {chunks}")
        lanes = chunk_loop(init, c0, c1, "blk")
        for m, v in enumerate(vec):
            p = self.emit(f"getelementptr inbounds {v}, ptr %parts{m}, i64 %b")
            out.append(f"  store {v} {lanes[m]}, ptr {p}, align 64")
        out.append("  %b.next = add nuw nsw i64 %b, %nt")
        out.append(f"  %b.more = icmp slt i64 %b.next, {NB}")
        out.append("  br i1 %b.more, label %blk, label %exit\nexit:\n  ret void")
        body = "\n".join(out)
        self.lines, self.reads, self.idx = saved
        blocks = (f"define internal void @{name}_blocks(ptr %ctx, i64 %tid, i64 %nt) {{\n"
                  + body + "\n}\n\n")
        if not threads.find():
            return blocks
        return (blocks
                + f"define internal void @{name}_omp(ptr %ctx) {{\nentry:\n"
                "  %t = call i32 @omp_get_thread_num()\n  %n = call i32 @omp_get_num_threads()\n"
                "  %t64 = sext i32 %t to i64\n  %n64 = sext i32 %n to i64\n"
                f"  call void @{name}_blocks(ptr %ctx, i64 %t64, i64 %n64)\n  ret void\n}}\n\n")

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, nodes = self.group, self.g.nodes
        outputs = kernel_outputs(self.g, grp)
        layout = list(grp.inputs) + outputs
        params = []
        for k, v in enumerate(grp.inputs):
            self.ptr[id(v)] = f"%a{k}"
        for k, v in enumerate(layout):
            if not getattr(v, "weak", False) and (v.dtype is None or
                                                  v.dtype.name not in _LLTYPE):
                raise NotImplementedError(f"LLVM reduce codegen: buffer {v!r} of dtype "
                                          f"{_dtname(v)} is not supported")
            params.append(f"ptr noalias %a{k}")
        setup, reductions, pre_s, post_s, pre_k, post_k = self._classify()
        if not reductions:
            raise NotImplementedError("LLVM reduce codegen: no reduction in the group")
        tys = []
        for i in reductions:
            n = nodes[i]
            dt = n.out.dtype.name
            if dt not in ("float32", "float64") or n.inputs[0].dtype is not n.out.dtype:
                raise NotImplementedError(f"LLVM reduce codegen: {n.prim.name} of dtype "
                                          f"{_dtname(n.inputs[0])} -> {dt}")
            tys.append(_LLTYPE[dt])
        for i in setup:
            self.node(nodes[i])
        n_in = len(grp.inputs)
        out_space = {}
        for k, v in enumerate(outputs):
            sq = tuple(x for x in v.shape if x != 1)
            if sq not in (self.reduced, self.full):
                raise NotImplementedError(f"LLVM reduce codegen: output {v!r} of shape "
                                          f"{v.shape} in a reduction over {grp.shape}")
            out_space[id(v)] = (n_in + k, "K" if sq == self.reduced else "S")
        s_pre_out = [(a, v) for v in outputs for a, sp in [out_space[id(v)]]
                     if sp == "S" and id(v) not in {id(nodes[i].out) for i in post_s}]
        s_post_out = [(a, v) for v in outputs for a, sp in [out_space[id(v)]]
                      if sp == "S" and (a, v) not in s_pre_out]
        k_out = [(a, v) for v in outputs for a, sp in [out_space[id(v)]] if sp == "K"]

        L = min(_LANES[t] for t in tys)
        B = _CHUNK * L  # elements per chunk: computed by a plain (vectorised) loop
        chunks, rem = divmod(self.R, B)
        ops = [nodes[i].prim.name for i in reductions]
        ident = [0.0 if op == "sum" else -math.inf for op in ops]
        vec = [f"<{L} x {t}>" for t in tys]
        init = [f"<{', '.join([f'{t} {_const(e, t)}'] * L)}>" for e, t in zip(ident, tys)]
        lines = self.lines
        lines.append("entry:")
        for m, t in enumerate(tys):
            lines.append(f"  %tmp{m} = alloca [{B} x {t}], align 64")
        blocked = not self.reduced and not post_s and self.R >= threads.PAR_MIN
        CB = _BLOCK_CHUNKS
        NB = -(-chunks // CB)
        if blocked:  # one o: the chunks in fixed blocks, whose partial lanes add in order
            for m, v in enumerate(vec):
                lines.append(f"  %parts{m} = alloca [{NB} x {v}], align 64")
            n_args = len(layout)
            lines.append(f"  %ctx = alloca [{n_args + len(tys)} x ptr], align 8")
            for k in range(n_args + len(tys)):
                val = f"%a{k}" if k < n_args else f"%parts{k - n_args}"
                lines.append(f"  %ctx{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}")
                lines.append(f"  store ptr {val}, ptr %ctx{k}")
        lines.append("  br label %outer\nouter:")
        lines.append("  %o = phi i64 [0, %entry], [%o.next, %outer.tail]")
        self._in_space_k()
        for i in pre_k:
            self.node(nodes[i])
        base = dict(self.at_i)
        acc, block = list(init), "outer"

        def values_into_tmp(r: str, k: str) -> None:
            vals = self._lane(r, reductions, pre_s, s_pre_out, base)
            for m, t in enumerate(tys):
                p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {k}")
                self.lines.append(f"  store {t} {vals[m]}, ptr {p}")

        def accumulate(acc: list, n_vectors: int) -> list:
            acc = list(acc)
            for q in range(n_vectors):  # lane j takes elements j, j + L, j + 2L, ... in order
                for m, t in enumerate(tys):
                    p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {q * L}")
                    v = self.emit(f"load {vec[m]}, ptr {p}, align 4")
                    acc[m] = self._combine(ops[m], vec[m], acc[m], v)
            return acc

        def chunk_loop(first: list, c0: str, c1: str, pred: str) -> list:
            """Chunks c0 <= c < c1 (at least one) from lanes ``first``; the lanes after."""
            out = self.lines
            out.append("  br label %chunk\nchunk:")
            out.append(f"  %c = phi i64 [{c0}, %{pred}], [%c.next, %chunk.acc]")
            phi_at = len(out)
            cb = self.emit(f"mul nuw nsw i64 %c, {B}")
            out.append("  br label %inner\ninner:")
            out.append("  %k = phi i64 [0, %chunk], [%k.next, %inner]")
            values_into_tmp(self.emit(f"add nuw nsw i64 {cb}, %k"), "%k")
            out.append("  %k.next = add nuw nsw i64 %k, 1")
            out.append(f"  %k.more = icmp slt i64 %k.next, {B}")
            out.append("  br i1 %k.more, label %inner, label %chunk.acc\nchunk.acc:")
            nexts = accumulate([f"%acc{m}" for m in range(len(tys))], B // L)
            out[phi_at:phi_at] = [f"  %acc{m} = phi {vec[m]} [{first[m]}, %{pred}], "
                                  f"[{nexts[m]}, %chunk.acc]" for m in range(len(tys))]
            out.append("  %c.next = add nuw nsw i64 %c, 1")
            out.append(f"  %c.more = icmp slt i64 %c.next, {c1}")
            out.append("  br i1 %c.more, label %chunk, label %chunk.end\nchunk.end:")
            return nexts

        if blocked:
            self.extra = self._blocks_function(name, layout, tys, vec, init, NB, CB, B,
                                               chunks, chunk_loop)
            lines.append(threads.split_call(name) if threads.find() else
                         f"  call void @{name}_blocks(ptr %ctx, i64 0, i64 1)\n"
                         "  br label %par.joined\npar.joined:")
            lines.append("  br label %gather\ngather:")
            lines.append("  %g = phi i64 [0, %par.joined], [%g.next, %gather]")
            phi_at = len(lines)
            nexts = []
            for m, v in enumerate(vec):
                p = self.emit(f"getelementptr inbounds {v}, ptr %parts{m}, i64 %g")
                part = self.emit(f"load {v}, ptr {p}, align 64")
                nexts.append(self._combine(ops[m], v, f"%gacc{m}", part))
            lines[phi_at:phi_at] = [f"  %gacc{m} = phi {vec[m]} [{init[m]}, %par.joined], "
                                    f"[{nexts[m]}, %gather]" for m in range(len(tys))]
            lines.append("  %g.next = add nuw nsw i64 %g, 1")
            lines.append(f"  %g.more = icmp slt i64 %g.next, {NB}")
            lines.append("  br i1 %g.more, label %gather, label %gather.end\ngather.end:")
            acc, block = nexts, "gather.end"
            self.at_i = dict(base)
        elif chunks:
            acc, block = chunk_loop(init, "0", str(chunks), "outer"), "chunk.end"
        if rem:
            lines.append(f"  br label %rinner\nrinner:\n  %j = phi i64 [0, %{block}], "
                         f"[%j.next, %rinner]")
            values_into_tmp(self.emit(f"add nuw nsw i64 %j, {chunks * B}"), "%j")
            lines.append("  %j.next = add nuw nsw i64 %j, 1")
            lines.append(f"  %j.more = icmp slt i64 %j.next, {rem}")
            lines.append("  br i1 %j.more, label %rinner, label %rinner.end\nrinner.end:")
            n_vec = -(-rem // L)
            for j in range(rem, n_vec * L):  # the last vector's unused lanes: identity
                for m, t in enumerate(tys):
                    p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {j}")
                    lines.append(f"  store {t} {_const(ident[m], t)}, ptr {p}")
            acc = accumulate(acc, n_vec)
            block = "rinner.end"
        self.at_i = dict(base)
        self._in_space_k()
        for m, i in enumerate(reductions):
            lanes = [self.emit(f"extractelement {vec[m]} {acc[m]}, i64 {j}") for j in range(L)]
            while len(lanes) > 1:  # a fixed tree: pairs, then pairs of pairs
                lanes = [self._combine(ops[m], tys[m], lanes[k], lanes[k + 1])
                         for k in range(0, len(lanes), 2)]
            total = lanes[0]
            if ops[m] == "sum":  # +0.0 start, as numpy: (-0.0) + (+0.0) is +0.0
                total = self.emit(f"fadd {tys[m]} {total}, {_const(0.0, tys[m])}")
            self.at_i[id(nodes[i].out)] = (total, tys[m])
        for i in post_k:
            self.node(nodes[i])
        for arg, v in k_out:
            self._store(v, arg, _c_strides(self.reduced))
        if post_s:
            kbase = dict(self.at_i)
            lines.append("  br label %post\npost:")
            lines.append(f"  %p = phi i64 [0, %{block}], [%p.next, %post]")
            self.at_i = kbase
            self._in_space_s("%p")
            for i in pre_s + post_s:
                if id(nodes[i].out) not in kbase:
                    self.node(nodes[i])
            for arg, v in s_post_out:
                self._store(v, arg, _c_strides(self.full))
            lines.append("  %p.next = add nuw nsw i64 %p, 1")
            lines.append(f"  %p.more = icmp slt i64 %p.next, {self.R}")
            lines.append("  br i1 %p.more, label %post, label %post.end\npost.end:")
        lines.append("  br label %outer.tail\nouter.tail:")
        lines.append("  %o.next = add nuw nsw i64 %o, 1")
        lines.append(f"  %o.more = icmp slt i64 %o.next, {math.prod(self.reduced)}")
        lines.append("  br i1 %o.more, label %outer, label %exit\nexit:\n  ret void")
        text = (
            (_prelude(self.vecmath) + self.declarations() if prelude else "")
            + self.extra
            + f"define internal void @{name}_body({', '.join(params)}) alwaysinline {{\n"
            + "\n".join(lines) + "\n}\n\n" + _entry(name, len(layout)))
        return text, name, layout

    def declarations(self) -> str:
        return threads.DECLARATIONS if self.extra and threads.find() else ""


class _ScalarBuilder(_Builder):
    """A 'scalar' group: Python-number arithmetic only (see :meth:`_Builder.weak_node`); its
    inputs and outputs are float64 one-element buffers. No loop."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "scalar", full=())
        self.loops = []

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp = self.group
        layout = list(grp.inputs) + list(grp.outputs)
        for v in layout:
            if not v.weak:
                raise NotImplementedError(f"LLVM scalar codegen: {v!r} is not a Python number")
        for k, v in enumerate(grp.inputs):
            self.ptr[id(v)] = f"%a{k}"
        for i in grp.nodes:
            self.weak_node(self.g.nodes[i])
        for k, v in enumerate(grp.outputs):
            val, _ = self.at_i[id(v)]
            self.lines.append(f"  store double {val}, ptr %a{len(grp.inputs) + k}")
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))
        text = (
            (_prelude([]) if prelude else "")
            + f"define internal void @{name}_body({params}) alwaysinline {{\nentry:\n"
            + "\n".join(self.lines) + "\n  ret void\n}\n\n" + _entry(name, len(layout)))
        return text, name, layout


class _IndexBuilder(_Emitter):
    """An 'index' group: ``gather`` (np.take along an axis) or ``scatter_add`` (np.add.at
    along an axis, repeated indices accumulating in index order, as numpy's). Negative
    indices wrap; an index out of range makes the kernel return 1 before writing anything
    the caller can see (its body returns i32: 0 or 1), so the driver stops and the call runs
    eagerly, raising eager's IndexError."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "index")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM index codegen: a group of more than one node")
        self.n = g.nodes[group.nodes[0]]
        if self.n.prim.name not in ("gather", "scatter_add", "index_check"):
            raise NotImplementedError(f"LLVM index codegen: {self.n.prim.name}")
        dt = self.n.out.dtype.name
        if dt not in _LLTYPE or dt == "bool":
            raise NotImplementedError(f"LLVM index codegen: dtype {dt}")

    def _check(self, name: str, prelude: bool, layout: list, ptr: dict) -> tuple:
        """``index_check``: status 1 if an index is outside [-size, size) (one_hot:
        [0, size)), else the indices copied to the output and 0."""
        n = self.n
        size, m = n.params["size"], math.prod(n.out.shape)
        low = 0 if n.params["op"] == "one_hot" else -size
        pi, po = ptr[id(n.inputs[0])], ptr[id(n.out)]
        L = self.lines
        if m == 0:
            L.append("entry:\n  ret i32 0")
        else:
            L.append("entry:\n  br label %chk\nchk:\n  %q = phi i64 [0, %entry], [%q.n, %ok]")
            a = self.emit(f"getelementptr inbounds i64, ptr {pi}, i64 %q")
            k = self.emit(f"load i64, ptr {a}")
            lo = self.emit(f"icmp slt i64 {k}, {low}")
            hi = self.emit(f"icmp sge i64 {k}, {size}")
            bad = self.emit(f"or i1 {lo}, {hi}")
            b = self.emit(f"getelementptr inbounds i64, ptr {po}, i64 %q")
            L.append(f"  store i64 {k}, ptr {b}")
            L.append(f"  br i1 {bad}, label %bad, label %ok\nok:")
            L.append(f"  %q.n = add nuw nsw i64 %q, 1\n  %q.m = icmp slt i64 %q.n, {m}")
            L.append("  br i1 %q.m, label %chk, label %done\ndone:\n  ret i32 0")
            L.append("bad:\n  ret i32 1")
        return self._finish(name, prelude, layout)

    def _finish(self, name: str, prelude: bool, layout: list) -> tuple:
        params = ", ".join(f"ptr noalias %a{q}" for q in range(len(layout)))
        text = (
            (_prelude([]) if prelude else "")
            + f"define internal i32 @{name}_body({params}) alwaysinline {{\n"
            + "\n".join(self.lines) + "\n}\n\n" + _entry(name, len(layout), status=True))
        return text, name, layout

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        n, grp = self.n, self.group
        layout = list(grp.inputs) + list(grp.outputs)
        if len(grp.outputs) != 1 or grp.outputs[0] is not n.out:
            raise NotImplementedError("LLVM index codegen: one output")
        ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        ty = _MEMTYPE[_LLTYPE[n.out.dtype.name]]
        if n.prim.name == "index_check":
            return self._check(name, prelude, layout, ptr)
        axis = n.params["axis"]
        if n.prim.name == "gather":
            x, idx = n.inputs
            xs = x.shape
            if not xs:
                raise NotImplementedError("LLVM index codegen: gather from a 0-d value")
        else:
            base, idx, src = n.inputs
            xs = base.shape
        pre = math.prod(xs[:axis])
        size = xs[axis] if xs else 1
        post = math.prod(xs[axis + 1:])
        m = math.prod(idx.shape)
        L = self.lines
        px, pi, po = (ptr[id(n.inputs[0])], ptr[id(idx)], ptr[id(n.out)])
        if n.prim.name == "scatter_add":  # out = base, then validate, then add in order
            total = math.prod(xs)
            L.append("entry:\n  br label %cp\ncp:\n  %c = phi i64 [0, %entry], [%c.n, %cp]")
            a = self.emit(f"getelementptr inbounds {ty}, ptr {px}, i64 %c")
            v = self.emit(f"load {ty}, ptr {a}")
            b = self.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 %c")
            L.append(f"  store {ty} {v}, ptr {b}")
            L.append(f"  %c.n = add nuw nsw i64 %c, 1\n  %c.m = icmp slt i64 %c.n, {total}")
            L.append("  br i1 %c.m, label %cp, label %chk.pre\nchk.pre:")
            first = "chk.pre"
        else:
            L.append("entry:")
            first = "entry"
        # every index checked first: nothing is written past a bad one... (for gather the
        # output is fresh memory the caller discards on failure)
        L.append(f"  br label %chk\nchk:\n  %q = phi i64 [0, %{first}], [%q.n, %chk.ok]")
        a = self.emit(f"getelementptr inbounds i64, ptr {pi}, i64 %q")
        k = self.emit(f"load i64, ptr {a}")
        lo = self.emit(f"icmp slt i64 {k}, {-size}")
        hi = self.emit(f"icmp sge i64 {k}, {size}")
        bad = self.emit(f"or i1 {lo}, {hi}")
        L.append(f"  br i1 {bad}, label %bad, label %chk.ok\nchk.ok:")
        L.append(f"  %q.n = add nuw nsw i64 %q, 1\n  %q.m = icmp slt i64 %q.n, {m}")
        L.append("  br i1 %q.m, label %chk, label %go\ngo:")
        L.append("  br label %p.loop\np.loop:\n  %p = phi i64 [0, %go], [%p.n, %p.end]")
        L.append("  br label %j.loop\nj.loop:\n  %j = phi i64 [0, %p.loop], [%j.n, %j.end]")
        a = self.emit(f"getelementptr inbounds i64, ptr {pi}, i64 %j")
        k = self.emit(f"load i64, ptr {a}")
        neg = self.emit(f"icmp slt i64 {k}, 0")
        kw = self.emit(f"add i64 {k}, {size}")
        k = self.emit(f"select i1 {neg}, i64 {kw}, i64 {k}")
        # source row (p, k) of x / destination row (p, k) of out; (p, j) of out / src
        rowk = self.emit(f"mul i64 %p, {size}")
        rowk = self.emit(f"add i64 {rowk}, {k}")
        rowk = self.emit(f"mul i64 {rowk}, {post}")
        rowj = self.emit(f"mul i64 %p, {m}")
        rowj = self.emit(f"add i64 {rowj}, %j")
        rowj = self.emit(f"mul i64 {rowj}, {post}")
        L.append("  br label %r.loop\nr.loop:\n  %r = phi i64 [0, %j.loop], [%r.n, %r.loop]")
        ik = self.emit(f"add i64 {rowk}, %r")
        ij = self.emit(f"add i64 {rowj}, %r")
        if n.prim.name == "gather":
            a = self.emit(f"getelementptr inbounds {ty}, ptr {px}, i64 {ik}")
            v = self.emit(f"load {ty}, ptr {a}")
            b = self.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 {ij}")
            L.append(f"  store {ty} {v}, ptr {b}")
        else:
            psrc = ptr[id(src)]
            a = self.emit(f"getelementptr inbounds {ty}, ptr {psrc}, i64 {ij}")
            v = self.emit(f"load {ty}, ptr {a}")
            b = self.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 {ik}")
            old = self.emit(f"load {ty}, ptr {b}")
            op = "add" if ty == "i64" else "fadd"
            new = self.emit(f"{op} {ty} {old}, {v}")
            L.append(f"  store {ty} {new}, ptr {b}")
        L.append(f"  %r.n = add nuw nsw i64 %r, 1\n  %r.m = icmp slt i64 %r.n, {post}")
        L.append("  br i1 %r.m, label %r.loop, label %j.end\nj.end:")
        L.append(f"  %j.n = add nuw nsw i64 %j, 1\n  %j.m = icmp slt i64 %j.n, {m}")
        L.append("  br i1 %j.m, label %j.loop, label %p.end\np.end:")
        L.append(f"  %p.n = add nuw nsw i64 %p, 1\n  %p.m = icmp slt i64 %p.n, {pre}")
        L.append("  br i1 %p.m, label %p.loop, label %done\ndone:\n  ret i32 0")
        L.append("bad:\n  ret i32 1")
        if m == 0 or pre == 0 or post == 0:
            raise NotImplementedError("LLVM index codegen: an empty dimension")
        return self._finish(name, prelude, layout)


class _MoveBuilder(_Emitter):
    """A 'movement' group: data moved, none computed — ``reshape``, ``broadcast``,
    ``permute``, ``slice``, ``pad`` and ``concat`` chained from the group's inputs to its one
    output, written as a copy loop over the output: each output element's multi-index is
    mapped back through the chain to the element of an input it comes from (``pad`` and
    ``concat`` choose with a select, reading a clamped, always valid, index)."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "movement")
        if len(group.outputs) != 1:
            raise NotImplementedError("LLVM movement codegen: more than one output")
        self.producer = {id(g.nodes[i].out): g.nodes[i] for i in group.nodes}
        for i in group.nodes:
            n = g.nodes[i]
            if n.prim.name not in ("reshape", "broadcast", "permute", "slice", "pad",
                                   "concat"):
                raise NotImplementedError(f"LLVM movement codegen: {n.prim.name}")
        out = group.outputs[0]
        if out.dtype is None or out.dtype.name not in _LLTYPE or math.prod(out.shape) == 0:
            raise NotImplementedError("LLVM movement codegen: dtype or empty output")
        self.ty = _MEMTYPE[_LLTYPE[out.dtype.name]]

    def _flat(self, idx: list, shape: tuple) -> str:
        acc = "0"
        for i, st in zip(idx, _c_strides(shape)):
            t = i if st == 1 else self.emit(f"mul i64 {i}, {st}")
            acc = t if acc == "0" else self.emit(f"add i64 {acc}, {t}")
        return acc

    def _split(self, flat: str, shape: tuple) -> list:
        out = []
        for k, (size, st) in enumerate(zip(shape, _c_strides(shape))):
            t = flat if st == 1 else self.emit(f"udiv i64 {flat}, {st}")
            out.append(t if k == 0 else self.emit(f"urem i64 {t}, {size}"))
        return out

    def _const(self, value) -> str:
        if self.ty == "i8":  # bool, stored as a byte
            return str(int(bool(value)))
        return _const(value, self.ty)

    def value_at(self, v, idx: list) -> str:
        """The element of ``v`` at multi-index ``idx`` (SSA i64 per dim of v)."""
        n = self.producer.get(id(v))
        if n is None:  # an input: C-contiguous in its own shape
            p = self.emit(f"getelementptr inbounds {self.ty}, ptr {self.ptr[id(v)]}, "
                          f"i64 {self._flat(idx, v.shape)}")
            return self.emit(f"load {self.ty}, ptr {p}")
        name, prm, src = n.prim.name, n.params, n.inputs[0]
        if name == "reshape":  # the same row-major order
            return self.value_at(src, self._split(self._flat(idx, v.shape), src.shape))
        if name == "broadcast":
            lead = len(v.shape) - len(src.shape)
            return self.value_at(src, [idx[d + lead] if s != 1 else "0"
                                       for d, s in enumerate(src.shape)])
        if name == "permute":
            inner = [None] * len(prm["perm"])
            for d, p in enumerate(prm["perm"]):
                inner[p] = idx[d]
            return self.value_at(src, inner)
        if name == "slice":
            inner = []
            for i, a, c in zip(idx, prm["starts"], prm["steps"]):
                t = i if c == 1 else self.emit(f"mul i64 {i}, {c}")
                inner.append(t if a == 0 else self.emit(f"add i64 {t}, {a}"))
            return self.value_at(src, inner)
        if name == "pad":
            ok, inner = "true", []
            for i, n_d, (lo, _, it) in zip(idx, src.shape, prm["pads"]):
                t = self.emit(f"sub i64 {i}, {lo}")
                q = t if it == 0 else self.emit(f"sdiv i64 {t}, {it + 1}")
                good = self.emit(f"icmp sge i64 {t}, 0")
                good = self.emit(f"and i1 {good}, {self.emit(f'icmp slt i64 {q}, {n_d}')}")
                if it:
                    r = self.emit(f"srem i64 {t}, {it + 1}")
                    good = self.emit(f"and i1 {good}, {self.emit(f'icmp eq i64 {r}, 0')}")
                ok = good if ok == "true" else self.emit(f"and i1 {ok}, {good}")
                inner.append(self.emit(f"select i1 {good}, i64 {q}, i64 0"))
            val = self.value_at(src, inner)
            return self.emit(f"select i1 {ok}, {self.ty} {val}, {self.ty} "
                             f"{self._const(prm['value'])}")
        # concat: the input whose range along the axis holds the index
        axis, start, result = prm["axis"], 0, None
        for x in n.inputs:
            size = x.shape[axis]
            t = self.emit(f"sub i64 {idx[axis]}, {start}")
            inside = self.emit(f"icmp ult i64 {t}, {size}")
            clamped = self.emit(f"select i1 {inside}, i64 {t}, i64 0")
            val = self.value_at(x, idx[:axis] + [clamped] + idx[axis + 1:])
            result = val if result is None else self.emit(
                f"select i1 {inside}, {self.ty} {val}, {self.ty} {result}")
            start += size
        return result

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp = self.group
        out = grp.outputs[0]
        layout = list(grp.inputs) + [out]
        for v in grp.inputs:
            if v.weak or v.dtype is None or v.dtype.name not in _LLTYPE or \
                    _MEMTYPE[_LLTYPE[v.dtype.name]] != self.ty:
                raise NotImplementedError("LLVM movement codegen: an input's dtype")
        self.ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        self.lines.append("entry:\n  br label %loop\nloop:")
        self.lines.append("  %i = phi i64 [0, %entry], [%i.next, %loop]")
        val = self.value_at(out, self._split("%i", out.shape))
        p = self.emit(f"getelementptr inbounds {self.ty}, ptr %a{len(grp.inputs)}, i64 %i")
        self.lines.append(f"  store {self.ty} {val}, ptr {p}")
        self.lines.append("  %i.next = add nuw nsw i64 %i, 1")
        self.lines.append(f"  %more = icmp slt i64 %i.next, {math.prod(out.shape)}")
        self.lines.append("  br i1 %more, label %loop, label %exit\nexit:\n  ret void")
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))
        text = ((_prelude([]) if prelude else "")
                + f"define internal void @{name}_body({params}) alwaysinline {{\n"
                + "\n".join(self.lines) + "\n}\n\n" + _entry(name, len(layout)))
        return text, name, layout


BLAS_MIN_WORK = 64 * 64 * 64  # m·n·k from which a matmul calls BLAS (when numpy has one)
_TRANSPOSE_BYTES = 256 * 1024  # a transposed B up to this size is copied to a stack buffer


class _MatmulBuilder(_Emitter):
    """A 'matmul' group: ``C = op(A) @ op(B)`` over broadcast batch dims, float32/float64.

    Per batch entry, either a call into numpy's BLAS (``blas.find``; from
    ``BLAS_MIN_WORK`` multiply-adds on) or generated loops: for each row ``i`` of C, the row
    is zeroed, then for ``k`` in order ``C[i, :] += op(A)[i, k] * op(B)[k, :]`` — the inner
    loop over ``j`` is what LLVM vectorises. Each C element thus sums its products in ``k``
    order (no fused multiply-add: no fast-math), as a deterministic function of the shapes.
    """

    def __init__(self, g, group, use_blas: bool | None = None) -> None:
        super().__init__(g, group, "matmul")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM matmul codegen: a group of more than one node")
        self.n = n = g.nodes[group.nodes[0]]
        a, b = n.inputs
        dt = n.out.dtype.name if n.out.dtype is not None else "?"
        if dt not in ("float32", "float64") or a.dtype is not b.dtype:
            raise NotImplementedError(f"LLVM matmul codegen: dtype {dt} is not supported "
                                      f"(float32, float64)")
        self.ty = _LLTYPE[dt]
        self.ta, self.tb = n.params.get("ta", False), n.params.get("tb", False)
        self.M, self.N = n.out.shape[-2], n.out.shape[-1]
        self.K = a.shape[-2] if self.ta else a.shape[-1]
        work = self.M * self.N * self.K
        from . import blas as _blas
        self.blas = _blas.find() if (use_blas if use_blas is not None
                                     else work >= BLAS_MIN_WORK) else None

    def _batch_offsets(self, bt: str) -> tuple:
        """Element offsets of A's, B's and C's matrix for flat batch index ``bt``."""
        a, b = self.n.inputs
        batch = self.n.out.shape[:-2]
        offs = []
        for v in (a, b, self.n.out):
            vb = v.shape[:-2]
            mat = v.shape[-2] * v.shape[-1]
            st = _c_strides(vb) if vb else ()
            lead = len(batch) - len(vb)
            acc = "0"
            inner = _c_strides(batch)
            for d, size in enumerate(batch):
                k = d - lead
                if k < 0 or vb[k] == 1 or size == 1:
                    continue
                t = self.emit(f"udiv i64 {bt}, {inner[d]}") if inner[d] != 1 else bt
                t = self.emit(f"urem i64 {t}, {size}") if d > 0 else t
                t = self.emit(f"mul i64 {t}, {st[k] * mat}")
                acc = t if acc == "0" else self.emit(f"add i64 {acc}, {t}")
            offs.append(acc)
        return tuple(offs)

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, n, ty = self.group, self.n, self.ty
        M, N, K, ta, tb = self.M, self.N, self.K, self.ta, self.tb
        layout = list(grp.inputs) + list(grp.outputs)
        if len(grp.outputs) != 1 or grp.outputs[0] is not n.out:
            raise NotImplementedError("LLVM matmul codegen: one output, the product")
        ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        pa, pb, pc = ptr[id(n.inputs[0])], ptr[id(n.inputs[1])], ptr[id(n.out)]
        n_batch = math.prod(n.out.shape[:-2])
        st = _MEMTYPE[ty]
        lines = self.lines
        lines.append("entry:\n  br label %batch\nbatch:")  # (lines[0]: see the transpose)
        lines.append("  %bt = phi i64 [0, %entry], [%bt.next, %batch.end]")
        oa, ob, oc = self._batch_offsets("%bt")
        A = self.emit(f"getelementptr inbounds {st}, ptr {pa}, i64 {oa}")
        B = self.emit(f"getelementptr inbounds {st}, ptr {pb}, i64 {ob}")
        C = self.emit(f"getelementptr inbounds {st}, ptr {pc}, i64 {oc}")
        if M * N == 0:
            lines.append("  br label %batch.end")
        elif self.blas is not None:
            from . import blas as _blas
            lda = M if ta else K
            ldb = K if tb else N
            if K == 0:  # BLAS leaves C alone when k = 0: zero it ourselves
                raise NotImplementedError("LLVM matmul codegen: empty inner dimension")
            lines.append(
                f"  call void @{self.blas.gemm(n.out.dtype.name)}(i32 {_blas.ROW_MAJOR}, "
                f"i32 {_blas.TRANS if ta else _blas.NO_TRANS}, "
                f"i32 {_blas.TRANS if tb else _blas.NO_TRANS}, i64 {M}, i64 {N}, i64 {K}, "
                f"{ty} {_const(1.0, ty)}, ptr {A}, i64 {lda}, ptr {B}, i64 {ldb}, "
                f"{ty} {_const(0.0, ty)}, ptr {C}, i64 {N})")
            lines.append("  br label %batch.end")
        else:
            zero = _const(0.0, ty)
            first = "batch"
            if tb and K * N * (4 if ty == "float" else 8) <= _TRANSPOSE_BYTES:
                # B is stored N x K: copy it to K x N once, so the inner loop runs along a
                # row of it (contiguous: vector loads, no gathers)
                lines.append("  br label %tr\ntr:")
                lines.append("  %tk = phi i64 [0, %batch], [%tk.next, %tr.end]")
                lines.append("  br label %tr.j\ntr.j:")
                lines.append("  %tj = phi i64 [0, %tr], [%tj.next, %tr.j]")
                src = self.emit("mul i64 %tj, " + str(K))
                src = self.emit(f"add i64 {src}, %tk")
                psrc = self.emit(f"getelementptr inbounds {st}, ptr {B}, i64 {src}")
                val = self.emit(f"load {ty}, ptr {psrc}")
                dst = self.emit(f"mul i64 %tk, {N}")
                dst = self.emit(f"add i64 {dst}, %tj")
                pdst = self.emit(f"getelementptr inbounds {st}, ptr %bt.tmp, i64 {dst}")
                lines.append(f"  store {ty} {val}, ptr {pdst}")
                lines.append("  %tj.next = add nuw nsw i64 %tj, 1")
                lines.append(f"  %tj.more = icmp slt i64 %tj.next, {N}")
                lines.append("  br i1 %tj.more, label %tr.j, label %tr.end\ntr.end:")
                lines.append("  %tk.next = add nuw nsw i64 %tk, 1")
                lines.append(f"  %tk.more = icmp slt i64 %tk.next, {K}")
                lines.append("  br i1 %tk.more, label %tr, label %tr.done\ntr.done:")
                lines[0] = (f"entry:\n  %bt.tmp = alloca [{K * N} x {ty}], align 64\n"
                            f"  br label %batch\nbatch:")
                B, tb, first = "%bt.tmp", False, "tr.done"
            lines.append("  br label %row\nrow:")
            lines.append(f"  %i = phi i64 [0, %{first}], [%i.next, %row.end]")
            crow = self.emit(f"mul i64 %i, {N}")
            lines.append("  br label %zero\nzero:")
            lines.append("  %z = phi i64 [0, %row], [%z.next, %zero]")
            cz = self.emit(f"add i64 {crow}, %z")
            pz = self.emit(f"getelementptr inbounds {st}, ptr {C}, i64 {cz}")
            lines.append(f"  store {ty} {zero}, ptr {pz}")
            lines.append("  %z.next = add nuw nsw i64 %z, 1")
            lines.append(f"  %z.more = icmp slt i64 %z.next, {N}")
            lines.append("  br i1 %z.more, label %zero, label %kloop.pre\nkloop.pre:")
            if K == 0:
                lines.append("  br label %row.end")
            else:
                lines.append("  br label %kloop\nkloop:")
                lines.append("  %k = phi i64 [0, %kloop.pre], [%k.next, %kloop.end]")
                ia = self.emit(f"mul i64 %k, {M}") if ta else self.emit(f"mul i64 %i, {K}")
                ia = self.emit(f"add i64 {ia}, {'%i' if ta else '%k'}")
                pa_ = self.emit(f"getelementptr inbounds {st}, ptr {A}, i64 {ia}")
                aik = self.emit(f"load {ty}, ptr {pa_}")
                brow = None if tb else self.emit(f"mul i64 %k, {N}")
                lines.append("  br label %jloop\njloop:")
                lines.append("  %j = phi i64 [0, %kloop], [%j.next, %jloop]")
                if tb:
                    ib = self.emit(f"mul i64 %j, {K}")
                    ib = self.emit(f"add i64 {ib}, %k")
                else:
                    ib = self.emit(f"add i64 {brow}, %j")
                pb_ = self.emit(f"getelementptr inbounds {st}, ptr {B}, i64 {ib}")
                bkj = self.emit(f"load {ty}, ptr {pb_}")
                cj = self.emit(f"add i64 {crow}, %j")
                pc_ = self.emit(f"getelementptr inbounds {st}, ptr {C}, i64 {cj}")
                c0 = self.emit(f"load {ty}, ptr {pc_}")
                prod = self.emit(f"fmul {ty} {aik}, {bkj}")
                c1 = self.emit(f"fadd {ty} {c0}, {prod}")
                lines.append(f"  store {ty} {c1}, ptr {pc_}")
                lines.append("  %j.next = add nuw nsw i64 %j, 1")
                lines.append(f"  %j.more = icmp slt i64 %j.next, {N}")
                lines.append("  br i1 %j.more, label %jloop, label %kloop.end\nkloop.end:")
                lines.append("  %k.next = add nuw nsw i64 %k, 1")
                lines.append(f"  %k.more = icmp slt i64 %k.next, {K}")
                lines.append("  br i1 %k.more, label %kloop, label %row.end")
            lines.append("row.end:")
            lines.append("  %i.next = add nuw nsw i64 %i, 1")
            lines.append(f"  %i.more = icmp slt i64 %i.next, {M}")
            lines.append("  br i1 %i.more, label %row, label %batch.end")
        lines.append("batch.end:\n  %bt.next = add nuw nsw i64 %bt, 1")
        lines.append(f"  %bt.more = icmp slt i64 %bt.next, {n_batch}")
        lines.append("  br i1 %bt.more, label %batch, label %exit\nexit:\n  ret void")
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))  # (A may be B:
        #                                             both only read, which noalias allows)
        text = (
            (_prelude([]) if prelude else "")
            + (self.declarations() if prelude else "")
            + f"define internal void @{name}_body({params}) alwaysinline {{\n"
            + "\n".join(lines) + "\n}\n\n" + _entry(name, len(layout)))
        return text, name, layout

    def declarations(self) -> str:
        from . import blas as _blas
        return _blas.declaration(self.blas, self.n.out.dtype.name) if self.blas else ""


def constant_outputs(g, group) -> list:
    """The group's outputs that are constants (``full``, ``size_of``) it hands to other
    groups: computed by their own primitive, not by the kernel (they need no loop)."""
    producer = {id(g.nodes[i].out): g.nodes[i] for i in group.nodes}
    return [v for v in group.outputs if producer[id(v)].prim.name in ("full", "size_of")]


def kernel_outputs(g, group) -> list:
    """The outputs a group's kernel writes (arg layout order): all but the constants."""
    consts = {id(v) for v in constant_outputs(g, group)}
    return [v for v in group.outputs if id(v) not in consts]


def _builder(g, group):
    if group.kind == "matmul":
        return _MatmulBuilder(g, group)
    if group.kind == "scalar":
        return _ScalarBuilder(g, group)
    if group.kind == "index":
        return _IndexBuilder(g, group)
    if group.kind == "movement":
        return _MoveBuilder(g, group)
    return _ReduceBuilder(g, group) if group.kind == "reduce" else _Builder(g, group)


def reduce_kernel(g, group) -> tuple:
    """(LLVM IR text, function name, arg layout) for a reduction fusion group, with the
    calling convention of :func:`elementwise_kernel` (``n`` is ignored: sizes are baked)."""
    return _ReduceBuilder(g, group).build()


def _entry(name: str, n_args: int, pass_n: bool = False, status: bool = False) -> str:
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


def _prelude(math_functions) -> str:
    return (vecmath.module_ir(math_functions) + "declare float @llvm.sqrt.f32(float)\n"
            "declare double @llvm.sqrt.f64(double)\ndeclare double @llvm.fabs.f64(double)\n"
            "declare float @llvm.floor.f32(float)\ndeclare double @llvm.floor.f64(double)\n"
            "declare float @llvm.pow.f32(float, float)\n"
            "declare double @llvm.pow.f64(double, double)\n\n")


def module_ir(g, groups, prefix: str = "dg_k", inline: bool = True) -> tuple:
    """One LLVM module holding a kernel per group (``void @<prefix><k>(ptr %args, i64 %n)``,
    as :func:`elementwise_kernel`) and the math functions they share. Returns (IR text,
    [(function name, arg layout) per group]). Raises NotImplementedError as
    :func:`elementwise_kernel` does. ``inline=False`` keeps each kernel body a function of
    its own (``noinline``) — for a driver calling many kernels, whose compile time would
    otherwise grow faster than the number of kernels."""
    texts, kernels, math_functions, decls = [], [], [], []
    for k, group in enumerate(groups):
        b = _builder(g, group)
        text, name, layout = b.build(f"{prefix}{k}", prelude=False)
        if not inline:  # each kernel optimised on its own: compile time stays linear
            text = re.sub(r"^(define internal \w+ @\w+_body\(.*\)) alwaysinline \{",
                          r"\1 noinline {", text, flags=re.M)
        texts.append(text)
        kernels.append((name, layout))
        math_functions += [f for f in b.vecmath if f not in math_functions]
        d = b.declarations()
        if d and d not in decls:
            decls.append(d)
    return _prelude(math_functions) + "".join(decls) + "\n".join(texts), kernels


def elementwise_kernel(g, group) -> tuple:
    """(LLVM IR text, function name, arg layout) for an elementwise fusion group: the function
    is ``void @dg_ew(ptr %args, i64 %n)`` with ``args[k]`` the buffer of ``arg_layout[k]``
    (the group's inputs, C-contiguous in their own shapes, then its outputs)."""
    return _Builder(g, group).build()


_COMPILED: dict[str, tuple] = {}  # ir_text -> (Compiled, ctypes function)


def run_group(g, group, arrays) -> list:
    """Run an elementwise or reduce group natively: ``arrays`` are the values of
    ``group.inputs``; returns freshly allocated (C-contiguous) arrays for ``group.outputs``."""
    text, name, layout = _builder(g, group).build()
    entry = _COMPILED.get(text)
    if entry is None:
        compiled = jit.compile_ir(text)
        fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
        entry = _COMPILED[text] = (compiled, fn)
    fn = entry[1]
    n_in = len(group.inputs)
    ins = []
    for v, a in zip(layout[:n_in], arrays):
        a = np.asarray(a, dtype=np.float64 if v.weak else v.dtype.np, order="C")  # (0-d too)
        if a.shape != v.shape:
            raise ValueError(f"run_group: input {v!r} has shape {a.shape}, expected {v.shape}")
        ins.append(a)
    outs = [np.empty(v.shape, dtype=v.dtype.np) for v in layout[n_in:]]
    ptrs = (ctypes.c_void_p * max(len(layout), 1))(*[a.ctypes.data for a in ins + outs])
    fn(ptrs, math.prod(group.shape))
    result = {id(v): a for v, a in zip(layout[n_in:], outs)}
    producer = {id(g.nodes[i].out): g.nodes[i] for i in group.nodes}
    for v in constant_outputs(g, group):
        result[id(v)] = constant_value(producer[id(v)])
    return [result[id(v)] for v in group.outputs]


def constant_value(n) -> np.ndarray:
    """The value of a ``full`` or ``size_of`` node (known from its params and shapes)."""
    if n.prim.name == "size_of":
        return np.asarray(n.prim.impl(np.empty(n.inputs[0].shape, np.int8), **n.params))
    return np.asarray(n.prim.impl(**n.params))


__all__ = ["elementwise_kernel", "reduce_kernel", "module_ir", "run_group", "FN_NAME"]
