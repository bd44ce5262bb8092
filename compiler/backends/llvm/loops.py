"""The loop kernels of elementwise fusion groups (and of Python-number scalar groups), and
the lowering rule of each primitive in them (:data:`_NODES`, :data:`_ARITH`); reduction
kernels (``reduce.py``) build on :class:`LoopBuilder`.

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

Supported (values float32 or float64, the integers as their own LLVM types — int8 and
uint8 both i8, the rules that care asking the dtype's signedness — bool stored as one byte
0/1): ``add sub mul div neg
abs sqrt maximum minimum sign floor`` (NaN-propagating like numpy), ``pow`` (by a literal 2,
0.5, -1, 1 or 0 as numpy computes them exactly: x·x, √x, 1/x, x, 1; by any other exponent,
a tensor's included, vecmath64's ``pow64``), ``exp log tanh sigmoid erf sin cos`` (the
vecmath and vecmath64 functions, documented ulp bounds), ``eq
ne lt le gt ge`` (``ne`` is true for NaN as in numpy), ``where``, ``cast`` between any two
dtypes as numpy's ``astype`` on x86-64 (see :func:`_cast`); integer ``add sub mul neg abs
sign maximum minimum pow`` wrapping at the type's width; ``bitwise_and or xor not`` on
integers and bools, the shifts on integers (PyTorch's rule for amounts outside the width:
see :func:`_shift`); bool ``mul add maximum minimum`` as and/or; and as copies
``reshape``/``broadcast`` of computed values and ``sum``/``max`` over size-1 axes; ``full``
and ``size_of`` become constants; literal numbers become constants of the operation's dtype.
A runtime Python number (a weak scalar input, e.g. an optimizer's learning rate) is passed
as a float64 in a one-element buffer and rounded to the operation's dtype first, as numpy's
weak-scalar rule does. No fast-math flags. Anything else raises NotImplementedError naming
the primitive and dtype. Reduce groups: see ``reduce.ReduceBuilder``.
"""


from __future__ import annotations

import math

import numpy as np

from ... import prims as P
from ...ir import Value
from ...prims import Lowerings
from . import threads, vecmath, vecmath64
from .emit import (
    FN_NAME,
    INTEGER,
    LLTYPE,
    MEMTYPE,
    SUFFIX,
    UNSIGNED,
    Emitter,
    KernelBuilder,
    bits,
    builds,
    c_strides,
    dtname,
    entry_ir,
    interleaved,
    kernel_outputs,
    literal,
)
from .vecmath import prelude_ir

_EXACT_POW = (2.0, 0.5, -1.0, 1.0, 0.0)  # np.power computes these as x*x, sqrt, 1/x, x, 1
_NEST_MIN = 8  # an elementwise kernel loops rows x a trailing run at least this long
_LIBM_MAX = 16  # pow may call libm in groups of at most this many elements, or on scalar
#                operands (loop-invariant): never in a hot loop


def _unsupported(prim: str, what) -> NotImplementedError:
    return NotImplementedError(
        f"LLVM elementwise codegen: primitive {prim!r} on dtype {what} is not supported "
        f"(supported: float32/float64 add sub mul div neg abs sqrt maximum minimum sign floor, "
        f"pow, exp log tanh sigmoid erf sin cos, comparisons, where, casts between any "
        f"dtypes, integer add sub mul neg abs sign maximum minimum pow, integer and bool "
        f"bitwise and/or/xor/not, integer shifts, bool and/or as mul/add/maximum/minimum)")


@builds("elementwise")
class LoopBuilder(KernelBuilder):
    """An elementwise group (the base of the loop builders: reduce and scalar groups)."""

    def __init__(self, g, group, kind: str = "elementwise", full=None) -> None:
        super().__init__(g, group, kind)
        self.full = tuple(s for s in group.shape if s != 1) if full is None else full
        # the dims the current code enumerates, and the loop variables enumerating them
        # (row-major each): one flat %i here; (%o kept, %r reduced) in a reduction kernel
        self.space = self.full
        self.loops = [("%i", tuple(range(len(self.full))))]
        self.nested = 0  # trailing dims of an inner loop (0: one flat loop); build() retries
        #                  as rows x a run of the trailing dims if it pays
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
            return v, v.shape, c_strides(v.shape), 0
        if id(v) in self.views:
            return self.views[id(v)]
        raise NotImplementedError(f"LLVM elementwise codegen: {v!r} is neither an input nor "
                                  f"a map of one")

    def map_view(self, n) -> None:
        """Outside data read through an index map (see :data:`_VIEWS`): a strided view."""
        buf, shape, st, off = self.view(n.inputs[0])
        rule = _VIEWS.get(n.prim)
        if rule is None:
            raise _unsupported(n.prim.name, f"{dtname(n.out)} (index map of outside data)")
        nst, off = rule(n, shape, st, off)
        self.views[id(n.out)] = (buf, tuple(n.out.shape), tuple(nst), off)

    def index(self, strides: tuple) -> str:
        """The element offset, from the loop variables, for per-space-dim ``strides``."""
        key = (tuple(var for var, _ in self.loops), tuple(strides))
        if key in self.idx:
            return self.idx[key]
        acc = None
        for var, dims in self.loops:
            sizes = [self.space[d] for d in dims]
            coalesced = []  # (size, inner, stride)
            for size, inner, st in zip(sizes, c_strides(sizes), (strides[d] for d in dims)):
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
            ty = MEMTYPE[LLTYPE[dt]]
            p = self.emit(f"getelementptr inbounds {ty}, ptr {self.ptr[id(buf)]}, i64 {off}")
            x = self.emit(f"load {ty}, ptr {p}")
            if dt == "bool":
                x = self.emit(f"icmp ne i8 {x}, 0")
            self.reads[key] = x
        return self.reads[key], LLTYPE[buf.dtype.name]

    # ------------------------------------------------------------ computing
    def operand(self, x, out_shape, want: str) -> tuple:
        if not isinstance(x, Value):  # a literal Python number
            return literal(x, want), want
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
            return literal(val, LLTYPE[dt]), LLTYPE[dt]
        if x.weak:  # a runtime Python number, passed as a float64 in a one-element buffer
            if want == "i1" or id(x) not in self.ptr:
                raise NotImplementedError("LLVM elementwise codegen: a Python-number input "
                                          "used as a boolean or computed inside the group")
            key = (id(x), want)
            if key not in self.reads:
                r = self.emit(f"load double, ptr {self.ptr[id(x)]}")
                if want == "float":  # numpy's weak scalar: rounded to float32 first
                    r = self.emit(f"fptrunc double {r} to float")
                elif want in INTEGER:  # (only where the result's dtype proves it an int)
                    r = self.emit(f"fptosi double {r} to i64")
                    if want != "i64":
                        r = self.emit(f"trunc i64 {r} to {want}")
                self.reads[key] = r
            return self.reads[key], want
        return self.read(x, out_shape)

    def args(self, n, ty: str) -> list:
        """The node's operands at point ``i``, as LLVM values of type ``ty``."""
        return [self.operand(x, n.out.shape, ty)[0] for x in n.inputs]

    def weak_node(self, n) -> None:
        """Python-number arithmetic (an optimizer's hyperparameters): in float64, as numpy
        does it on Python floats; comparisons give 0.0 or 1.0."""
        name = n.prim.name
        if n.prim not in _WEAK and n.prim not in _FCMP:
            raise _unsupported(name, "scalar (weak Python number)")
        for x in n.inputs:
            if isinstance(x, Value) and not x.weak:
                raise _unsupported(name, "scalar (weak) with a tensor operand")
        if n.prim in _FCMP:
            a = self.args(n, "double")
            c = self.emit(f"fcmp {_FCMP[n.prim]} double {a[0]}, {a[1]}")
            r = self.emit(f"uitofp i1 {c} to double")
        else:
            r = _ARITH[n.prim](self, n, "double")
        self.at_i[id(n.out)] = (r, "double")

    def node(self, n) -> None:
        """Lower node ``n`` at point ``i``: its own rule (:data:`_NODES`), or an arithmetic
        rule (:data:`_ARITH`) on operands of the output's dtype."""
        if n.out.weak:
            self.weak_node(n)
            return
        rule = _NODES.get(n.prim)
        if rule is not None:
            rule(self, n)
            return
        arith = _ARITH.get(n.prim)
        odt = n.out.dtype.name
        if arith is None or odt not in LLTYPE:
            raise _unsupported(n.prim.name, odt)
        ty = LLTYPE[odt]
        in_dts = {x.dtype.name for x in n.inputs
                  if isinstance(x, Value) and not x.weak and x.dtype is not None}
        if (ty == "i1" and n.prim not in _BOOL_RULES) or any(d != odt for d in in_dts):
            raise _unsupported(n.prim.name, "/".join(sorted(in_dts | {odt})))
        self.at_i[id(n.out)] = (arith(self, n, ty), ty)

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
        if nested:  # rows x a run of trailing dims: a broadcast read is affine in the run
            d = len(self.full) - nested
            self.loops = [("%o", tuple(range(d))), ("%i", tuple(range(d, len(self.full))))]
        for i in grp.nodes:
            self.node(self.g.nodes[i])
        params = []
        for k, v in enumerate(layout):
            if getattr(v, "weak", False) and k < len(grp.inputs):
                params.append(f"ptr noalias %a{k}")  # one float64 (see operand)
                continue
            if v.dtype is None or v.dtype.name not in LLTYPE:
                raise NotImplementedError(f"LLVM elementwise codegen: buffer {v!r} of dtype "
                                          f"{dtname(v)} is not supported")
            params.append(f"ptr noalias %a{k}")
        for k, v in enumerate(outputs):
            if math.prod(v.shape) != math.prod(grp.shape):
                raise NotImplementedError(f"LLVM elementwise codegen: output {v!r} of shape "
                                          f"{v.shape} is not the iteration space {grp.shape}")
            val, ty = self.operand(v, v.shape, LLTYPE[v.dtype.name])
            if ty == "i1":
                val = self.emit(f"zext i1 {val} to i8")
            st = MEMTYPE[ty]
            off = self.index(c_strides(self.full))
            p = self.emit(f"getelementptr inbounds {st}, ptr %a{len(grp.inputs) + k}, i64 {off}")
            self.lines.append(f"  store {st} {val}, ptr {p}")
        entry = entry_ir(name, len(layout), pass_n=True)
        body = "\n".join(self.lines)
        loop = Emitter()
        loop.label("entry")
        if nested:
            rows, inner = math.prod(self.full[:-nested]), math.prod(self.full[-nested:])
        else:
            rows, inner = math.prod(self.full), 1
        if nested:
            with loop.loop("%o", rows, block="outer", exit="exit"):
                with loop.loop("%i", inner, block="loop", exit="loop.end", more="%more",
                               hint=interleaved(self.vecmath, inner)):
                    loop.lines.append(body)
        else:
            loop.line("%empty = icmp sle i64 %n, 0")
            loop.branch("%empty", "exit", "loop")
            with loop.loop("%i", "%n", block="loop", exit="exit", entered=True, more="%more",
                           hint=interleaved(self.vecmath, math.prod(self.full))):
                loop.lines.append(body)
        loop.line("ret void")
        if not nested and len(self.full) >= 2 and math.prod(self.full[1:]) >= _NEST_MIN \
                and ("udiv" in body or "urem" in body):  # broadcast reads: rows x a run
            built = self._nest(name, prelude)
            if built is not None:
                return built
        n_static = math.prod(self.full)
        if n_static >= 2 * _PAR_BLOCK and threads.find():
            return self._parallel(name, prelude, params, body, entry, rows,
                                  inner), name, layout
        text = (
            (prelude_ir(self.vecmath) if prelude else "")
            + loop.function(f"define internal void @{name}_body({', '.join(params + ['i64 %n'])}) "
                            "alwaysinline") + entry)
        return text, name, layout

    def _nest(self, name: str, prelude: bool) -> tuple:
        """The kernel as rows x a run of trailing dims: the longest run (of at least
        ``_NEST_MIN`` elements) over which no read divides the inner index — a bias
        broadcast over a conv's (N, C, H, W) output reads one element per row, so the run
        is H·W — else the last dim when it is that long; None when neither is (the flat
        loop stays)."""
        last = None
        for k in range(len(self.full) - 1, 0, -1):
            if math.prod(self.full[-k:]) < _NEST_MIN:
                continue
            b = type(self)(self.g, self.group)
            b.nested = k
            built = b.build(name, prelude)
            if "udiv i64 %i," not in built[0] and "urem i64 %i," not in built[0]:
                break
            if k > 1:
                continue
            last = (b, built)  # (the last dim: the form the kernel took before runs)
        else:
            if last is None:
                return None
            b, built = last
        self.vecmath, self.par = b.vecmath, getattr(b, "par", False)
        return built

    def _parallel(self, name, prelude, params, body, entry, rows, inner) -> str:
        """A big kernel on the thread pool (``threads.py``): blocks of about ``_PAR_BLOCK``
        elements — whole rows of a nested kernel (``inner`` elements each; 1: flat) — each
        a part of its own (each element is computed alone, so the result does not depend on
        the split)."""
        per = max(1, _PAR_BLOCK // inner)  # rows per block
        rng = Emitter()
        rng.label("entry")
        if inner == 1:
            with rng.loop("%i", "%hi", start="%lo", block="loop", exit="exit", more="%more",
                          hint=interleaved(self.vecmath, rows)):
                rng.lines.append(body)
        else:
            with rng.loop("%o", "%hi", start="%lo", block="outer", exit="exit"):
                with rng.loop("%i", inner, block="loop", exit="loop.end", more="%more",
                              hint=interleaved(self.vecmath, inner)):
                    rng.lines.append(body)
        rng.line("ret void")
        self.par = True
        return ((prelude_ir(self.vecmath) + threads.DECLARATIONS if prelude else "")
                + rng.function(f"define internal void @{name}_range({', '.join(params)}, "
                               "i64 %lo, i64 %hi)")
                + threads.ranges_ir(name, len(params), rows, per, params + ["i64 %n"])
                + entry)

    def declarations(self) -> str:
        return threads.DECLARATIONS if getattr(self, "par", False) else ""


# ------------------------------------------------------------------ lowering rules
# How each primitive becomes LLVM IR in a loop kernel, keyed by its record. A new
# elementwise primitive needs one rule in _ARITH (its dtypes dispatched inside the rule;
# a new float32 transcendental also its vecmath function).

_VIEWS = Lowerings("LLVM index map of outside data")  # (node, shape, strides, offset)
#                                                       -> (strides, offset) of the view
_NODES = Lowerings("LLVM elementwise codegen")  # rule(builder, node): sets at_i or consts
_ARITH = Lowerings("LLVM elementwise codegen")  # rule(builder, node, lltype) -> SSA value
_WEAK = (P.ADD, P.SUB, P.MUL, P.DIV, P.NEG, P.ABS, P.SQRT, P.MAXIMUM, P.MINIMUM)  # on Python
#                                                   numbers too (float64: weak_node)
_FCMP = {P.EQ: "oeq", P.NE: "une", P.LT: "olt", P.LE: "ole", P.GT: "ogt", P.GE: "oge"}
_SCMP = {P.EQ: "eq", P.NE: "ne", P.LT: "slt", P.LE: "sle", P.GT: "sgt", P.GE: "sge"}
_ICMP = {P.EQ: "eq", P.NE: "ne", P.LT: "ult", P.LE: "ule", P.GT: "ugt", P.GE: "uge"}  # bool
#                                                                 operands (False < True)
_FBIN = {P.ADD: "fadd", P.SUB: "fsub", P.MUL: "fmul", P.DIV: "fdiv"}
_IBIN = {P.ADD: "add", P.SUB: "sub", P.MUL: "mul"}  # int64: wrapping, as numpy's
_BBIN = {P.ADD: "or", P.MUL: "and", P.MAXIMUM: "or", P.MINIMUM: "and"}  # bool, as numpy's
_BITS = {P.BITWISE_AND: "and", P.BITWISE_OR: "or", P.BITWISE_XOR: "xor"}  # integers and bools
_BOOL_RULES = frozenset({*_BBIN, P.ABS, *_BITS, P.BITWISE_NOT})  # the arithmetic rules that
#                                                                  take bools


@_VIEWS(P.SLICE)
def _slice_view(n, shape, st, off):  # unit steps (fusion's rule): an offset, same strides
    p = n.params
    if any(c != 1 for c in p["steps"]):
        raise _unsupported(n.prim.name, "with steps (index map of outside data)")
    return list(st), off + sum(a * t for a, t in zip(p["starts"], st))


@_VIEWS(P.BROADCAST)
def _broadcast_view(n, shape, st, off):
    out = n.out.shape
    lead = len(out) - len(shape)
    return [0] * lead + [0 if (s == 1 and o != 1) else t
                         for s, o, t in zip(shape, out[lead:], st)], off


@_VIEWS(P.RESHAPE)
def _reshape_view(n, shape, st, off):
    out = n.out.shape
    nz = [(s, t) for s, t in zip(shape, st) if s != 1]
    if tuple(t for _, t in nz) == c_strides(tuple(s for s, _ in nz)):
        return list(c_strides(out)), off  # contiguous: a row-major relabelling
    if tuple(s for s, _ in nz) == tuple(s for s in out if s != 1):
        it = iter(t for _, t in nz)
        return [next(it) if s != 1 else 0 for s in out], off
    strides = reshaped_strides(shape, st, out)
    if strides is None:
        raise NotImplementedError("LLVM elementwise codegen: reshape of a strided (broadcast "
                                  "or permuted) view that merges dims no stride can step "
                                  "over")
    return strides, off


def reshaped_strides(shape, strides, out) -> list | None:
    """The strides of ``out`` as a view of a strided (shape, strides) array when the reshape
    needs no copy — each run of dims merged or split into another is one evenly strided run
    (a broadcast run of stride 0 included) — else None. Size-1 dims are dropped first and
    get stride 0."""
    old = [(s, t) for s, t in zip(shape, strides) if s != 1]
    new = [k for k, s in enumerate(out) if s != 1]
    result = [0] * len(out)
    i = j = 0
    while i < len(old) and j < len(new):
        i0, j0 = i, j
        a, b = old[i][0], out[new[j]]
        while a != b:  # (grow the smaller side until the two runs hold the same elements)
            if a < b:
                i += 1
                a *= old[i][0]
            else:
                j += 1
                b *= out[new[j]]
        for k in range(i0, i):  # the old run must be evenly strided to be stepped through
            if old[k][1] != old[k + 1][1] * old[k + 1][0]:
                return None
        step = old[i][1]  # (the innermost stride of the run)
        for k in range(j, j0 - 1, -1):
            result[new[k]] = step
            step *= out[new[k]]
        i, j = i + 1, j + 1
    return result if i == len(old) and j == len(new) else None


@_NODES(P.FULL)
def _full(b: LoopBuilder, n) -> None:  # a constant: a parameter
    _constant(b, n, n.params["value"])


@_NODES(P.SIZE_OF)
def _size_of(b: LoopBuilder, n) -> None:  # a constant: known from a shape
    _constant(b, n, math.prod(n.inputs[0].shape[a] for a in n.params["axes"]))


def _constant(b: LoopBuilder, n, value) -> None:
    if n.out.dtype.name not in LLTYPE:
        raise _unsupported(n.prim.name, n.out.dtype.name)
    b.consts[id(n.out)] = (value, n.out.dtype.name)


def _outside(b: LoopBuilder, v) -> bool:
    return isinstance(v, Value) and (id(v) in b.ptr or id(v) in b.views)


@_NODES(P.SLICE)
def _slice(b: LoopBuilder, n) -> None:
    if not _outside(b, n.inputs[0]):
        raise _unsupported(n.prim.name, n.out.dtype.name)
    b.map_view(n)  # a unit-step slice of outside data: an offset view


@_NODES(P.BROADCAST, P.RESHAPE)
def _map(b: LoopBuilder, n) -> None:
    if not _copy(b, n, plus_zero=False):
        if not _outside(b, n.inputs[0]):
            raise _unsupported(n.prim.name, n.out.dtype.name)
        b.map_view(n)


@_NODES(P.SUM, P.MAX)
def _relabelled_reduction(b: LoopBuilder, n) -> None:
    """A reduction over size-1 axes (fusion's rule): the same elements in the same order,
    read as a reshape. numpy's sum starts at +0.0 (so -0.0 becomes +0.0); max is a copy; a
    sum of bools or narrow integers is their int64 value."""
    plus_zero = n.prim is P.SUM
    src, out, odt = n.inputs[0], n.out, n.out.dtype.name
    if src.dtype is out.dtype and _copy(b, n, plus_zero):
        return
    if isinstance(src, Value) and id(src) in b.consts and plus_zero and odt == "int64" \
            and not src.dtype.is_floating_point:  # (bool or a narrower integer)
        b.consts[id(out)] = (int(b.consts[id(src)][0]), odt)  # (a widened constant)
        return
    if not (isinstance(src, Value) and odt in LLTYPE and src.dtype.name in LLTYPE
            and math.prod(src.shape) == math.prod(out.shape)):
        raise _unsupported(n.prim.name, odt)
    if id(src) in b.at_i:  # (computed at the same point, of another dtype)
        val, ty = b.at_i[id(src)]
    elif _outside(b, src):
        buf, shape, st, base = b.view(src)
        it = iter([t for d, t in zip(shape, st) if d != 1])
        b.views[id(out)] = (buf, tuple(out.shape),
                            tuple(next(it) if d != 1 else 0 for d in out.shape), base)
        val, ty = b.read(out, out.shape)
    else:
        raise _unsupported(n.prim.name, odt)
    if src.dtype is not out.dtype:  # a widened sum (bool, narrow integers -> int64)
        oty = LLTYPE[odt]
        if not (plus_zero and ty in INTEGER | {"i1"} and oty == "i64"):
            raise _unsupported(n.prim.name, f"{src.dtype.name}->{odt}")
        ext = "zext" if ty == "i1" or src.dtype.name in UNSIGNED else "sext"
        val, ty = b.emit(f"{ext} {ty} {val} to i64"), oty
    elif plus_zero and ty in ("float", "double"):
        val = b.emit(f"fadd {ty} {val}, {literal(0.0, ty)}")
    b.at_i[id(out)] = (val, ty)


def _copy(b: LoopBuilder, n, plus_zero: bool) -> bool:
    """A map or relabelling of a constant or of a value computed at the same point: the
    same value (True), else False."""
    src, out = n.inputs[0], n.out
    if isinstance(src, Value) and id(src) in b.consts:
        b.consts[id(out)] = b.consts[id(src)]
        return True
    if isinstance(src, Value) and id(src) in b.at_i and src.dtype is out.dtype \
            and math.prod(src.shape) == math.prod(out.shape):
        val, ty = b.at_i[id(src)]  # a copy at the same point
        if plus_zero and ty in ("float", "double"):
            val = b.emit(f"fadd {ty} {val}, {literal(0.0, ty)}")
        b.at_i[id(out)] = (val, ty)
        return True
    return False


@_NODES(*_FCMP)
def _compare(b: LoopBuilder, n) -> None:
    ins = n.inputs
    vals = [x for x in ins if isinstance(x, Value) and not x.weak]
    in_dts = {x.dtype.name for x in vals if x.dtype is not None}
    if not vals or len(in_dts) != 1 or next(iter(in_dts)) not in LLTYPE:
        raise _unsupported(n.prim.name, "/".join(sorted(in_dts)) or "literals")
    dt = next(iter(in_dts))
    ty = LLTYPE[dt]
    if ty in INTEGER and any(isinstance(x, float) or (isinstance(x, Value) and x.weak)
                             for x in ins):  # numpy would compare as float64
        raise _unsupported(n.prim.name, f"{dt} with a float or Python-number operand")
    a, c = b.args(n, ty)
    if ty in INTEGER:
        info = np.iinfo(dt)
        if ty != "i64" and any(not isinstance(x, Value) and not info.min <= x <= info.max
                               for x in ins):  # a number out of the type's range (u8 > 300):
            ext = "zext" if dt in UNSIGNED else "sext"  # compared in int64, as numpy does
            a, c = (str(int(x)) if not isinstance(x, Value) else
                    b.emit(f"{ext} {ty} {v} to i64") for x, v in zip(ins, (a, c)))
            ty = "i64"
        cmp = (_ICMP if dt in UNSIGNED and ty != "i64" else _SCMP)[n.prim]
        r = b.emit(f"icmp {cmp} {ty} {a}, {c}")
    elif ty != "i1":
        r = b.emit(f"fcmp {_FCMP[n.prim]} {ty} {a}, {c}")
    elif n.prim in _ICMP:
        r = b.emit(f"icmp {_ICMP[n.prim]} i1 {a}, {c}")
    else:
        raise _unsupported(n.prim.name, "bool")
    b.at_i[id(n.out)] = (r, "i1")


@_NODES(P.CAST)
def _cast(b: LoopBuilder, n) -> None:
    """numpy's ``astype`` on x86-64 (the platform eager runs on): integers wrap to a
    narrower type and widen by their sign (uint8: by zeros); int -> float rounds to nearest;
    float -> int goes toward zero — to int64 directly, to the narrower ints through int32
    (numpy converts with the CPU's 32-bit instruction, then drops the high bits), NaN and
    numbers out of range giving the instruction's "indefinite" INT64_MIN or INT32_MIN; any
    number -> bool is ``!= 0`` (NaN is true)."""
    src, odt = n.inputs[0], n.out.dtype.name
    sdt = dtname(src)
    if sdt not in LLTYPE or odt not in LLTYPE:
        raise _unsupported(n.prim.name, f"{sdt}->{odt}")
    sty, oty = LLTYPE[sdt], LLTYPE[odt]
    a, _ = b.operand(src, n.out.shape, sty)
    if sty == oty:  # (int8 <-> uint8 too: the same bits)
        r = a
    elif oty == "i1":  # -> bool: nonzero (NaN too)
        r = b.emit(f"icmp ne {sty} {a}, 0") if sty in INTEGER else \
            b.emit(f"fcmp une {sty} {a}, {literal(0.0, sty)}")
    elif sty == "i1":  # bool -> number: 0 or 1
        r = b.emit(f"{'zext' if oty in INTEGER else 'uitofp'} i1 {a} to {oty}")
    elif sty in INTEGER and oty in INTEGER:  # wrap, or widen by the source's sign
        ext = "zext" if sdt in UNSIGNED else "sext"
        r = b.emit(f"trunc {sty} {a} to {oty}" if bits(oty) < bits(sty)
                   else f"{ext} {sty} {a} to {oty}")
    elif sty in INTEGER:  # int -> float, rounded to nearest
        r = b.emit(f"{'uitofp' if sdt in UNSIGNED else 'sitofp'} {sty} {a} to {oty}")
    elif oty in INTEGER:  # float -> int toward zero (see above)
        w = 64 if oty == "i64" else 32
        sat = b.emit(f"call i{w} @llvm.fptosi.sat.i{w}.{SUFFIX[sty]}({sty} {a})")
        lo = b.emit(f"fcmp oge {sty} {a}, {literal(-2.0 ** (w - 1), sty)}")
        hi = b.emit(f"fcmp olt {sty} {a}, {literal(2.0 ** (w - 1), sty)}")
        ok = b.emit(f"and i1 {lo}, {hi}")
        r = b.emit(f"select i1 {ok}, i{w} {sat}, i{w} {-(1 << (w - 1))}")
        if w != bits(oty):
            r = b.emit(f"trunc i{w} {r} to {oty}")
    else:  # float32 <-> float64, rounded to nearest as numpy's astype
        r = b.emit(f"{'fpext' if oty == 'double' else 'fptrunc'} {sty} {a} to {oty}")
    b.at_i[id(n.out)] = (r, oty)


@_NODES(P.WHERE)
def _where(b: LoopBuilder, n) -> None:
    odt = n.out.dtype.name
    if odt not in LLTYPE:
        raise _unsupported(n.prim.name, odt)
    ty = LLTYPE[odt]
    c, _ = b.operand(n.inputs[0], n.out.shape, "i1")
    (x, _), (y, _) = (b.operand(v, n.out.shape, ty) for v in n.inputs[1:])
    b.at_i[id(n.out)] = (b.emit(f"select i1 {c}, {ty} {x}, {ty} {y}"), ty)


def _float_only(n, ty: str) -> None:
    if ty in INTEGER:
        raise _unsupported(n.prim.name, dtname(n.out))


@_ARITH(*_FBIN)
def _binary(b: LoopBuilder, n, ty: str) -> str:
    a, c = b.args(n, ty)
    if ty == "i1":  # (only _BBIN's primitives reach here with bools)
        return b.emit(f"{_BBIN[n.prim]} i1 {a}, {c}")
    if ty in INTEGER:
        if n.prim not in _IBIN:
            raise _unsupported(n.prim.name, dtname(n.out))
        return b.emit(f"{_IBIN[n.prim]} {ty} {a}, {c}")
    return b.emit(f"{_FBIN[n.prim]} {ty} {a}, {c}")


@_ARITH(P.NEG)
def _neg(b: LoopBuilder, n, ty: str) -> str:
    a, = b.args(n, ty)
    return b.emit(f"sub {ty} 0, {a}") if ty in INTEGER else b.emit(f"fneg {ty} {a}")


@_ARITH(P.ABS)
def _abs(b: LoopBuilder, n, ty: str) -> str:
    a, = b.args(n, ty)
    if ty == "i1" or n.out.dtype.name in UNSIGNED:
        return a
    if ty in INTEGER:  # (the most negative number stays itself, as numpy's)
        c = b.emit(f"icmp slt {ty} {a}, 0")
        m = b.emit(f"sub {ty} 0, {a}")
        return b.emit(f"select i1 {c}, {ty} {m}, {ty} {a}")
    return b.emit(f"call {ty} @llvm.fabs.{SUFFIX[ty]}({ty} {a})")


@_ARITH(P.MAXIMUM, P.MINIMUM)
def _extremum(b: LoopBuilder, n, ty: str) -> str:
    a, c = b.args(n, ty)
    bigger = n.prim is P.MAXIMUM
    if ty == "i1":
        return b.emit(f"{_BBIN[n.prim]} i1 {a}, {c}")
    if ty in INTEGER:
        cmp = ("u" if n.out.dtype.name in UNSIGNED else "s") + ("gt" if bigger else "lt")
        gt = b.emit(f"icmp {cmp} {ty} {a}, {c}")
        return b.emit(f"select i1 {gt}, {ty} {a}, {ty} {c}")
    gt = b.emit(f"fcmp {'ogt' if bigger else 'olt'} {ty} {a}, {c}")  # numpy: NaN if either
    m = b.emit(f"select i1 {gt}, {ty} {a}, {ty} {c}")                # is NaN
    nan = b.emit(f"fcmp uno {ty} {a}, {a}")
    return b.emit(f"select i1 {nan}, {ty} {a}, {ty} {m}")


@_ARITH(*_BITS)
def _bitwise(b: LoopBuilder, n, ty: str) -> str:  # (i1 too: logical, as on bool tensors)
    if ty not in INTEGER and ty != "i1":
        raise _unsupported(n.prim.name, dtname(n.out))
    a, c = b.args(n, ty)
    return b.emit(f"{_BITS[n.prim]} {ty} {a}, {c}")


@_ARITH(P.BITWISE_NOT)
def _bitwise_not(b: LoopBuilder, n, ty: str) -> str:
    if ty not in INTEGER and ty != "i1":
        raise _unsupported(n.prim.name, dtname(n.out))
    a, = b.args(n, ty)
    return b.emit(f"xor {ty} {a}, {'true' if ty == 'i1' else -1}")


@_ARITH(P.BITWISE_LEFT_SHIFT, P.BITWISE_RIGHT_SHIFT)
def _shift(b: LoopBuilder, n, ty: str) -> str:
    """PyTorch's shifts (numpy's too): an amount outside [0, width) — LLVM's ``shl`` and
    ``ashr`` give poison there — shifts everything out: 0 to the left, the sign fill to the
    right (arithmetic for signed types: an ``ashr`` by width − 1). One unsigned comparison
    finds those amounts, negative ones included; the select never picks a poison value."""
    if ty not in INTEGER:
        raise _unsupported(n.prim.name, dtname(n.out))
    a, c = b.args(n, ty)
    w = bits(ty)
    inside = b.emit(f"icmp ult {ty} {c}, {w}")
    if n.prim is P.BITWISE_RIGHT_SHIFT and n.out.dtype.name not in UNSIGNED:
        amount = b.emit(f"select i1 {inside}, {ty} {c}, {ty} {w - 1}")
        return b.emit(f"ashr {ty} {a}, {amount}")
    op = "shl" if n.prim is P.BITWISE_LEFT_SHIFT else "lshr"
    return b.emit(f"select i1 {inside}, {ty} {b.emit(f'{op} {ty} {a}, {c}')}, {ty} 0")


_INTRINSICS = {P.SQRT: "sqrt", P.FLOOR: "floor", P.CEIL: "ceil",  # LLVM intrinsics numpy
               P.ROUND: "roundeven"}  # agrees with bit for bit (np.rint: half to even)


@_ARITH(*_INTRINSICS)
def _intrinsic(b: LoopBuilder, n, ty: str) -> str:
    _float_only(n, ty)
    a, = b.args(n, ty)
    return b.emit(f"call {ty} @llvm.{_INTRINSICS[n.prim]}.{SUFFIX[ty]}({ty} {a})")


@_ARITH(P.LOG1P)
def _log1p(b: LoopBuilder, n, ty: str) -> str:
    """log(1 + x) as log(u)·x/(u − 1) with u = 1 + x (exact where u − 1 is 0: x itself), so
    the rounding of 1 + x cancels: within a few ulps of numpy's log1p, with the vecmath log
    (float32) or vecmath64's (float64); +inf stays +inf."""
    _float_only(n, ty)
    a, = b.args(n, ty)
    name = "log" if ty == "float" else "log64"
    if name not in b.vecmath:
        b.vecmath.append(name)
    u = b.emit(f"fadd {ty} {literal(1.0, ty)}, {a}")
    lu = b.emit(f"call {ty} @dg_{'logf' if ty == 'float' else 'log64'}({ty} {u})")
    d = b.emit(f"fsub {ty} {u}, {literal(1.0, ty)}")
    r = b.emit(f"fmul {ty} {lu}, {b.emit(f'fdiv {ty} {a}, {d}')}")
    keep = b.emit(f"or i1 {b.emit(f'fcmp oeq {ty} {d}, {literal(0.0, ty)}')}, "
                  f"{b.emit(f'fcmp oeq {ty} {a}, {literal(math.inf, ty)}')}")
    return b.emit(f"select i1 {keep}, {ty} {a}, {ty} {r}")


@_ARITH(P.SIGN)
def _sign(b: LoopBuilder, n, ty: str) -> str:  # numpy: NaN stays NaN, ±0 gives +0
    a, = b.args(n, ty)
    if ty in INTEGER:  # -1, 0 or 1 (uint8: 0 or 1)
        if n.out.dtype.name in UNSIGNED:
            return b.emit(f"zext i1 {b.emit(f'icmp ne {ty} {a}, 0')} to {ty}")
        pos = b.emit(f"zext i1 {b.emit(f'icmp sgt {ty} {a}, 0')} to {ty}")
        neg = b.emit(f"zext i1 {b.emit(f'icmp slt {ty} {a}, 0')} to {ty}")
        return b.emit(f"sub {ty} {pos}, {neg}")
    pos = b.emit(f"fcmp ogt {ty} {a}, {literal(0.0, ty)}")
    neg = b.emit(f"fcmp olt {ty} {a}, {literal(0.0, ty)}")
    nan = b.emit(f"fcmp uno {ty} {a}, {a}")
    t = b.emit(f"select i1 {neg}, {ty} {literal(-1.0, ty)}, {ty} {literal(0.0, ty)}")
    t = b.emit(f"select i1 {pos}, {ty} {literal(1.0, ty)}, {ty} {t}")
    return b.emit(f"select i1 {nan}, {ty} {a}, {ty} {t}")


@_ARITH(P.POW)
def _pow(b: LoopBuilder, n, ty: str) -> str:
    """Literal exponents numpy computes exactly: x², √x, 1/x, x, 1; on a few elements or a
    value the loop does not change (Adam's bias correction, hoisted by LLVM) libm's pow;
    otherwise vecmath64's ``pow64`` (C's pow within an ulp; float32 through it in float64,
    rounded once more, as libm's powf computes). Integers: :func:`_int_pow`."""
    if ty in INTEGER:
        return _int_pow(b, n, ty)
    x, e = n.inputs
    e = b.consts[id(e)][0] if isinstance(e, Value) and id(e) in b.consts else e
    sfx = SUFFIX[ty]
    if isinstance(e, Value) or float(e) not in _EXACT_POW:
        invariant = all(math.prod(v.shape) <= 1 for v in n.inputs if isinstance(v, Value))
        a, p = b.args(n, ty)
        if math.prod(b.group.shape) <= _LIBM_MAX or invariant:
            return b.emit(f"call {ty} @llvm.pow.{sfx}({ty} {a}, {ty} {p})")
        if "pow64" not in b.vecmath:
            b.vecmath.append("pow64")
        if ty == "double":
            return b.emit(f"call double @dg_pow64(double {a}, double {p})")
        a, p = (b.emit(f"fpext float {v} to double") for v in (a, p))
        return b.emit(f"fptrunc double {b.emit(f'call double @dg_pow64(double {a}, double {p})')}"
                      " to float")
    a, _ = b.operand(x, n.out.shape, ty)
    e = float(e)
    return (b.emit(f"fmul {ty} {a}, {a}") if e == 2.0 else
            b.emit(f"call {ty} @llvm.sqrt.{sfx}({ty} {a})") if e == 0.5 else
            b.emit(f"fdiv {ty} {literal(1.0, ty)}, {a}") if e == -1.0 else
            b.emit(f"fadd {ty} {a}, {literal(-0.0, ty)}") if e == 1.0 else
            literal(1.0, ty))


def _int_pow(b: LoopBuilder, n, ty: str) -> str:
    """An integer power as numpy's (wrapping in the type: its product mod 2**bits does not
    depend on the order of the multiplications): by a literal exponent, its square-and-
    multiply chain; by a tensor, square-and-multiply over every bit of the exponent,
    unrolled and branch-free (selects: the loop stays vectorisable). A negative exponent
    gives eager's (PyTorch's) truncated 1/xⁿ: 1 for x = 1, ±1 for x = -1, else 0."""
    x, e = n.inputs
    e = b.consts[id(e)][0] if isinstance(e, Value) and id(e) in b.consts else e
    a, _ = b.operand(x, n.out.shape, ty)
    one = "1"
    if not isinstance(e, Value):
        k = int(e)
        if k != e or k < 0:
            raise _unsupported(n.prim.name, f"{dtname(n.out)} by the literal {e!r}")
        r, p = one, a
        while k:
            if k & 1:
                r = p if r == one else b.emit(f"mul {ty} {r}, {p}")
            k >>= 1
            if k:
                p = b.emit(f"mul {ty} {p}, {p}")
        return r
    _, c = b.args(n, ty)
    signed = n.out.dtype.name not in UNSIGNED
    r, p = one, a
    top = bits(ty) - 1 if signed else bits(ty)
    for k in range(top):
        hit = b.emit(f"icmp ne {ty} {b.emit(f'and {ty} {c}, {literal(1 << k, ty)}')}, 0")
        r = b.emit(f"select i1 {hit}, {ty} {b.emit(f'mul {ty} {r}, {p}')}, {ty} {r}")
        if k + 1 < top:
            p = b.emit(f"mul {ty} {p}, {p}")
    if not signed:
        return r
    odd = b.emit(f"trunc {ty} {c} to i1")
    is_one = b.emit(f"icmp eq {ty} {a}, 1")
    minus = b.emit(f"icmp eq {ty} {a}, -1")
    inv = b.emit(f"select i1 {odd}, {ty} -1, {ty} 1")
    inv = b.emit(f"select i1 {minus}, {ty} {inv}, {ty} 0")
    inv = b.emit(f"select i1 {is_one}, {ty} 1, {ty} {inv}")
    neg = b.emit(f"icmp slt {ty} {c}, 0")
    return b.emit(f"select i1 {neg}, {ty} {inv}, {ty} {r}")


@_ARITH(*vecmath.PRIMITIVES)
def _vecmath(b: LoopBuilder, n, ty: str) -> str:
    """A transcendental: the vecmath polynomial (vecmath.py, vecmath64.py for float64: their
    ulp bounds). A function with a float64 form only (atan, asin, acos, atan2) computes
    float32 in float64, rounded once more (within an ulp of float32)."""
    fn = vecmath.PRIMITIVES[n.prim]
    if ty == "float" and fn in vecmath.FUNCTIONS:
        name, symbol, via = fn, f"dg_{fn}f", None
    elif ty in ("float", "double") and vecmath64.name64(fn) in vecmath64.FUNCTIONS:
        name = vecmath64.name64(fn)
        symbol, via = f"dg_{name}", "double" if ty == "float" else None
    else:
        raise _unsupported(n.prim.name, dtname(n.out))
    args = b.args(n, ty)
    if name not in b.vecmath:
        b.vecmath.append(name)
    if via is None:
        return b.emit(f"call {ty} @{symbol}({', '.join(f'{ty} {a}' for a in args)})")
    wide = [b.emit(f"fpext {ty} {a} to {via}") for a in args]
    r = b.emit(f"call {via} @{symbol}({', '.join(f'{via} {a}' for a in wide)})")
    return b.emit(f"fptrunc {via} {r} to {ty}")


_PAR_BLOCK = 1 << 14  # elements per block (a part for the pool) of an elementwise kernel of
#                      two blocks or more: ~10 µs of streaming each, far above a part's cost


@builds("scalar")
class ScalarBuilder(LoopBuilder):
    """A 'scalar' group: Python-number arithmetic only (see :meth:`LoopBuilder.weak_node`); its
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
            (prelude_ir([]) if prelude else "")
            + f"define internal void @{name}_body({params}) alwaysinline {{\nentry:\n"
            + "\n".join(self.lines) + "\n  ret void\n}\n\n" + entry_ir(name, len(layout)))
        return text, name, layout
