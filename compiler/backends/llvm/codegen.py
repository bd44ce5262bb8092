"""LLVM IR for one elementwise :class:`~compiler.passes.fusion.FusionGroup` (a building block:
not wired into ``compiler.compile`` yet).

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
abs sqrt maximum minimum`` (NaN-propagating like numpy), in float32 also ``exp log tanh erf
sin cos`` (the vecmath functions, documented ulp bounds; float64 transcendentals are not
lowered), ``eq ne lt le gt ge`` (float or bool operands; ``ne`` is true for NaN as in
numpy), ``where``, ``cast`` between float32 and float64 (rounded to nearest, as numpy's
``astype``), bool -> float and to the same dtype, and as copies ``reshape``/``broadcast`` of
computed values and ``sum``/``max`` over size-1 axes; ``full`` becomes a constant; literal
numbers become constants of the operation's dtype. A runtime Python number (a weak scalar
input, e.g. an optimizer's learning rate) is passed as a float64 in a one-element buffer and
rounded to the operation's dtype first, as numpy's weak-scalar rule does. No fast-math flags.
Anything else raises NotImplementedError naming the primitive and dtype.
"""

from __future__ import annotations

import ctypes
import math
import struct

import numpy as np

from ...ir import Value
from . import jit, vecmath

FN_NAME = "dg_ew"

_FBIN = {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv"}
_FCMP = {"eq": "oeq", "ne": "une", "lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge"}
_ICMP = {"eq": "eq", "ne": "ne"}
_VECMATH = ("exp", "log", "tanh", "erf", "sin", "cos")
_LLTYPE = {"float32": "float", "float64": "double", "bool": "i1"}
_MEMTYPE = {"float": "float", "double": "double", "i1": "i8"}  # how a buffer stores it
_SUFFIX = {"float": "f32", "double": "f64"}


def _const(x, ty: str) -> str:
    """A literal of LLVM type ``ty`` ('float' rounds as numpy's weak-scalar rule does)."""
    if ty == "i1":
        return "true" if x else "false"
    if ty == "float":
        return vecmath.fconst(float(np.float32(x)))
    return f"0x{struct.unpack('<Q', struct.pack('<d', float(x)))[0]:016X}"


def _dtname(v) -> str:
    return v.dtype.name if isinstance(v, Value) and v.dtype is not None else type(v).__name__


def _unsupported(prim: str, what) -> NotImplementedError:
    return NotImplementedError(
        f"LLVM elementwise codegen: primitive {prim!r} on dtype {what} is not supported "
        f"(supported: float32/float64 add sub mul div neg abs sqrt maximum minimum, float32 "
        f"exp log tanh erf sin cos, comparisons, where, casts between floats and from bool)")


def _c_strides(shape) -> tuple:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= s
    return tuple(reversed(st))


class _Builder:
    def __init__(self, g, group) -> None:
        if group.kind != "elementwise":
            raise NotImplementedError(f"LLVM elementwise codegen: group kind {group.kind!r}")
        self.g, self.group = g, group
        self.full = tuple(s for s in group.shape if s != 1)
        self.inner = _c_strides(self.full)
        self.lines: list[str] = []
        self.tmp = 0
        self.vecmath: list[str] = []
        self.ptr: dict[int, str] = {}  # id(buffer value) -> pointer param
        self.at_i: dict[int, tuple] = {}  # id(value) -> (ssa, lltype) at iteration point i
        self.reads: dict[tuple, str] = {}
        self.idx: dict[tuple, str] = {}
        self.views: dict[int, tuple] = {}  # id(map value) -> (buffer, shape, strides)
        self.consts: dict[int, tuple] = {}  # id(full value) -> (python value, dtype name)

    def new(self) -> str:
        self.tmp += 1
        return f"%t{self.tmp}"

    def emit(self, text: str) -> str:
        r = self.new()
        self.lines.append(f"  {r} = {text}")
        return r

    # ------------------------------------------------------------ reading outside data
    def view(self, v) -> tuple:
        """(buffer value, shape, element strides) of outside data ``v``."""
        if id(v) in self.ptr:
            return v, v.shape, _c_strides(v.shape)
        if id(v) in self.views:
            return self.views[id(v)]
        raise NotImplementedError(f"LLVM elementwise codegen: {v!r} is neither an input nor "
                                  f"a map of one")

    def map_view(self, n) -> None:
        buf, shape, st = self.view(n.inputs[0])
        name, out = n.prim.name, n.out.shape
        if name == "broadcast":
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
        self.views[id(n.out)] = (buf, tuple(out), tuple(nst))

    def index(self, strides: tuple) -> str:
        """The flat element offset, from ``i``, for per-iteration-dim ``strides``."""
        dims = []  # coalesced (size, inner, stride)
        for size, inner, st in zip(self.full, self.inner, strides):
            if dims and dims[-1][2] == st * size:
                psize, _, _ = dims[-1]
                dims[-1] = (psize * size, inner, st)
            else:
                dims.append((size, inner, st))
        key = tuple(dims)
        if key in self.idx:
            return self.idx[key]
        acc = None
        for k, (size, inner, st) in enumerate(dims):
            if st == 0:
                continue
            t = "%i" if inner == 1 else self.emit(f"udiv i64 %i, {inner}")
            if k > 0:
                t = self.emit(f"urem i64 {t}, {size}")
            if st != 1:
                t = self.emit(f"mul i64 {t}, {st}")
            acc = t if acc is None else self.emit(f"add i64 {acc}, {t}")
        self.idx[key] = acc = acc or "0"
        return acc

    def read(self, v, out_shape) -> tuple:
        """``v`` (outside data) as read by a node of shape ``out_shape`` at point ``i``."""
        buf, shape, st = self.view(v)
        lead = len(out_shape) - len(shape)
        strides = []
        for k, o in enumerate(out_shape):
            if o == 1:
                continue
            d = k - lead
            strides.append(st[d] if d >= 0 and shape[d] != 1 else 0)
        if len(strides) != len(self.full):
            raise NotImplementedError(f"LLVM elementwise codegen: node of shape {out_shape} "
                                      f"outside the iteration space {self.group.shape}")
        key = (id(buf), tuple(strides))
        if key not in self.reads:
            off = self.index(tuple(strides))
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
            return self.at_i[id(x)]
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
                self.reads[key] = r
            return self.reads[key], want
        return self.read(x, out_shape)

    def node(self, n) -> None:
        name, out = n.prim.name, n.out
        if out.weak:
            raise _unsupported(name, "scalar (weak Python number)")
        odt = out.dtype.name
        if name == "full":
            if odt not in _LLTYPE:
                raise _unsupported(name, odt)
            self.consts[id(out)] = (n.params["value"], odt)
            return
        if name in ("broadcast", "reshape", "sum", "max"):
            src = n.inputs[0]
            if isinstance(src, Value) and id(src) in self.consts:
                self.consts[id(out)] = self.consts[id(src)]
                return
            if isinstance(src, Value) and id(src) in self.at_i and src.dtype is out.dtype \
                    and math.prod(src.shape) == math.prod(out.shape):
                self.at_i[id(out)] = self.at_i[id(src)]  # a copy at the same point
                return
            if name in ("broadcast", "reshape") and isinstance(src, Value) and (
                    id(src) in self.ptr or id(src) in self.views):
                self.map_view(n)
                return
            raise _unsupported(name, odt)
        ins = n.inputs
        vals = [x for x in ins if isinstance(x, Value) and not x.weak]
        in_dts = {x.dtype.name for x in vals if x.dtype is not None}
        if name in _FCMP:
            if not vals or len(in_dts) != 1 or next(iter(in_dts)) not in _LLTYPE:
                raise _unsupported(name, "/".join(sorted(in_dts)) or "literals")
            ty = _LLTYPE[next(iter(in_dts))]
            (a, _), (b, _) = (self.operand(x, out.shape, ty) for x in ins)
            if ty != "i1":
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
            if sdt not in _LLTYPE or odt not in _LLTYPE or (sdt != odt and "bool" == odt):
                raise _unsupported("cast", f"{sdt}->{odt}")
            sty, oty = _LLTYPE[sdt], _LLTYPE[odt]
            a, _ = self.operand(src, out.shape, sty)
            if sty == oty:
                self.at_i[id(out)] = (a, oty)
            elif sty == "i1":  # bool -> float: 0 or 1
                self.at_i[id(out)] = (self.emit(f"uitofp i1 {a} to {oty}"), oty)
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
        args = [self.operand(x, out.shape, ty)[0] for x in ins]
        sfx = _SUFFIX[ty]
        if name in _FBIN:
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
        layout = list(grp.inputs) + list(grp.outputs)
        for k, v in enumerate(grp.inputs):
            self.ptr[id(v)] = f"%a{k}"
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
        for k, v in enumerate(grp.outputs):
            if math.prod(v.shape) != math.prod(grp.shape):
                raise NotImplementedError(f"LLVM elementwise codegen: output {v!r} of shape "
                                          f"{v.shape} is not the iteration space {grp.shape}")
            val, ty = self.operand(v, v.shape, _LLTYPE[v.dtype.name])
            if ty == "i1":
                val = self.emit(f"zext i1 {val} to i8")
            st = _MEMTYPE[ty]
            p = self.emit(f"getelementptr inbounds {st}, ptr %a{len(grp.inputs) + k}, i64 %i")
            self.lines.append(f"  store {st} {val}, ptr {p}")
        n_args = len(layout)
        loads = []
        for k in range(n_args):
            loads.append(f"  %q{k} = getelementptr inbounds ptr, ptr %args, i64 {k}")
            loads.append(f"  %p{k} = load ptr, ptr %q{k}")
        call_args = ", ".join([f"ptr %p{k}" for k in range(n_args)] + ["i64 %n"])
        body = "\n".join(self.lines)
        text = (
            (_prelude(self.vecmath) if prelude else "")
            + f"define internal void @{name}_body({', '.join(params + ['i64 %n'])}) "
            + "alwaysinline {\n"
            + "entry:\n  %empty = icmp sle i64 %n, 0\n"
            + "  br i1 %empty, label %exit, label %loop\nloop:\n"
            + "  %i = phi i64 [0, %entry], [%i.next, %loop]\n"
            + body + "\n"
            + "  %i.next = add nuw nsw i64 %i, 1\n  %more = icmp slt i64 %i.next, %n\n"
            + "  br i1 %more, label %loop, label %exit\nexit:\n  ret void\n}\n\n"
            + f"define void @{name}(ptr %args, i64 %n) {{\nentry:\n"
            + "\n".join(loads) + "\n"
            + f"  call void @{name}_body({call_args})\n  ret void\n}}\n")
        return text, name, layout


def _prelude(math_functions) -> str:
    return (vecmath.module_ir(math_functions) + "declare float @llvm.sqrt.f32(float)\n"
            "declare double @llvm.sqrt.f64(double)\ndeclare double @llvm.fabs.f64(double)\n\n")


def module_ir(g, groups, prefix: str = "dg_k") -> tuple:
    """One LLVM module holding a kernel per group (``void @<prefix><k>(ptr %args, i64 %n)``,
    as :func:`elementwise_kernel`) and the math functions they share. Returns (IR text,
    [(function name, arg layout) per group]). Raises NotImplementedError as
    :func:`elementwise_kernel` does."""
    texts, kernels, math_functions = [], [], []
    for k, group in enumerate(groups):
        b = _Builder(g, group)
        text, name, layout = b.build(f"{prefix}{k}", prelude=False)
        texts.append(text)
        kernels.append((name, layout))
        math_functions += [f for f in b.vecmath if f not in math_functions]
    return _prelude(math_functions) + "\n".join(texts), kernels


def elementwise_kernel(g, group) -> tuple:
    """(LLVM IR text, function name, arg layout) for an elementwise fusion group: the function
    is ``void @dg_ew(ptr %args, i64 %n)`` with ``args[k]`` the buffer of ``arg_layout[k]``
    (the group's inputs, C-contiguous in their own shapes, then its outputs)."""
    return _Builder(g, group).build()


_COMPILED: dict[str, tuple] = {}  # ir_text -> (Compiled, ctypes function)


def run_group(g, group, arrays) -> list:
    """Run an elementwise group natively: ``arrays`` are the values of ``group.inputs``;
    returns freshly allocated (C-contiguous) arrays for ``group.outputs``."""
    text, name, layout = elementwise_kernel(g, group)
    entry = _COMPILED.get(text)
    if entry is None:
        compiled = jit.compile_ir(text)
        fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
        entry = _COMPILED[text] = (compiled, fn)
    fn = entry[1]
    n_in = len(group.inputs)
    ins = []
    for v, a in zip(layout[:n_in], arrays):
        a = np.asarray(a, dtype=v.dtype.np, order="C")  # (keeps 0-d)
        if a.shape != v.shape:
            raise ValueError(f"run_group: input {v!r} has shape {a.shape}, expected {v.shape}")
        ins.append(a)
    outs = [np.empty(v.shape, dtype=v.dtype.np) for v in layout[n_in:]]
    ptrs = (ctypes.c_void_p * max(len(layout), 1))(*[a.ctypes.data for a in ins + outs])
    fn(ptrs, math.prod(group.shape))
    return outs


__all__ = ["elementwise_kernel", "module_ir", "run_group", "FN_NAME"]
