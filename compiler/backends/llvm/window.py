"""LLVM IR for 'window' groups: the three convolution primitives and the two pooling-index
primitives (``dyngrad/ops/conv.py``, ``dyngrad/ops/pool.py``), one kernel per node (the
attention pair's are ``attention.py``'s, a group that may hold the views of its operands).

**Convolution** is a GEMM per sample and group whose ``k`` runs over the window
(``c, ki, kj``). Per sample, the window gather writes that sample's column block — ``C/groups
· K`` rows of ``P`` output positions, in a buffer of the kernel's own, never the batch's
im2col — and the generated register-blocked kernel (``gemm.py``) multiplies it:

- ``conv``: ``out[n, g] (O/G x P) = W[g] (O/G x C/G·K) @ cols(x[n, g])``;
- ``conv_transpose`` (the input gradient): ``cols = W[g]^T @ y[n, g]``, then the columns are
  added back to their window positions (col2im) in the zeroed ``dx[n, g]``;
- ``conv_weight_grad``: ``dW[g] += g[n, g] @ cols(x[n, g])^T``, summed over the samples.

A 1x1 kernel at stride 1 without padding needs no gather: the sample's planes are the
columns. Samples run in parallel (a part per thread, ``threads.py``), each part with its own
column buffer; with one sample the GEMM splits its rows across the threads instead. The
weight gradient sums its samples in ``WG_PARTS`` fixed blocks — each block's sum in sample
order, then the blocks in order — so its bits depend on the batch size only, never on the
thread count.

The direct path: except for a 1x1 window at stride 1 (a GEMM as it is) and strides above
``MAX_STAGED_STRIDE``, the forward convolution and the weight gradient can skip the
columns: each sample's planes are *staged* once — zero-bordered and, at a stride, split
into one plane per phase (a row and column remainder modulo the stride), so that every
window element's reads along an output row are contiguous (:class:`Direct`). The forward
convolution computes a register tile of output channels x one output row segment straight
from them (:func:`_conv_direct`, in the GEMM's order: the same bits as the column path —
``tests/test_conv_paths.py`` checks it). The weight gradient vectorises along the output
rows instead (:func:`_weight_grad_staged`): a tile of output channels x window elements,
each a vector of partial sums. The input gradient reads its bordered output gradient the
same way at stride 1 (the window flipped); at a stride, as one such correlation per phase
of the input — the window's rows and columns of that phase — whose results are then
interleaved into place (:func:`_transpose_phases`); with dilation at a stride, or padding
wider than the window at stride 1, it has the columns and col2im only. The two gradients'
direct kernels add in other orders than their column paths (the input gradient one chain
over (output channel, window row, window column) where col2im adds each window element's
GEMM sum in turn; the weight gradient vector lanes and blocks of ``WG_SAMPLES`` samples
where the column path has ``WG_PARTS`` blocks): the results agree within rounding, not bit
for bit.

Which path a direction takes, where both apply, is decided per shape and machine
(``convtune.py``, asked by :meth:`WindowBuilder._path`): the direct path without measuring
when the column path's GEMM has a side under ``convtune.DIRECT_BELOW`` (with few channels —
W7b's 16→16 convolutions — the column path spent as long writing and packing columns as
multiplying); otherwise both kernels are timed on a slice of the batch (:func:`race`) and
the decision is kept on disk, so that a machine's later processes take the same kernels —
and, for the gradients, the same bits. ``DYNGRAD_CONV`` forces a path.

Note (column buffers): the column buffer is ``malloc``'d per call and part (one sample's
columns: conv2 of the mnist model is 663 KB; the direct path's bordered planes are smaller);
a failed allocation makes the kernel return status -2, and the driver runs the runner's plan
instead (its window nodes numpy steps).

**Pooling indices** (``max_pool_indices``, ``adaptive_max_indices``) scan each window in
order with PyTorch's rule: a value replaces the maximum when it is greater or NaN, from
``-inf`` (an integer dtype's least value) at the window's first position inside the input —
so ties keep the first maximum, a NaN the last NaN, and a window of ``-inf`` or of padding
only its clipped start. Planes run in parallel.

Supported: float32 and float64 convolutions (integer ones run in numpy: no integer GEMM),
1-d and 2-d (a 1-d one is a 2-d one of height 1); pooling of float32, float64 and int64,
its indices int64 or int32 (positions computed in i64, stored narrowed: passes/narrow.py).
"""

from __future__ import annotations

import ctypes
import math
import threading
from dataclasses import dataclass

import numpy as np

from ... import prims as P
from ...ir import Node, Value
from ...passes.fusion import FusionGroup, GroupKind, summed_gradient
from ...passes.views import ATTENTION_OPERANDS, VIEWS, row_view
from ...prims import Lowerings
from . import convtune, gemm, jit, threads
from .emit import (
    FN_NAME,
    INTEGER,
    LLTYPE,
    MEMTYPE,
    UNSIGNED,
    Emitter,
    KernelBuilder,
    bits,
    builds,
    entry_ir,
    literal,
)
from .vecmath import prelude_ir

WG_PARTS = 8  # the weight gradient's fixed sample blocks (its partial sums: WG_PARTS·|W|)
UNROLL_WINDOW = 16  # positions up to which a pooling window inside the input is written out
PAR_POOL = 1 << 16  # window reads from which a pooling kernel splits its planes
ALLOC_FAILED = -2  # the kernel's status when malloc returns null (driver.DriverPlan.failed)
NON_FINITE_WEIGHT = -3  # an input gradient's status when its weight holds an inf or a NaN
#                         (as ALLOC_FAILED, the call runs another way: _refuse_non_finite)
MAX_WORK_BYTES = 1 << 40  # a work buffer above this is refused as if malloc had failed

WINDOWS = Lowerings("LLVM window codegen")

DECLARATIONS = ("declare noalias ptr @malloc(i64)\ndeclare void @free(ptr)\n"
                "declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)\n")


@dataclass(frozen=True)
class Geometry:
    """A 2-d convolution's sizes (a 1-d one has ``H = KH = OH = 1``): ``N`` samples,
    ``C`` input and ``Co`` output channels in ``G`` groups, input planes ``H x W`` (the
    transposed convolution's output), kernel ``KH x KW``, output planes ``OH x OW``, and
    per spatial dim the stride, the low padding and the dilation. ``N`` may be a size of a
    symbolic variant (``compiler.dims.Dim``); the others are numbers."""

    N: object
    C: int
    Co: int
    G: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    sh: int
    sw: int
    ph: int
    pw: int
    dh: int
    dw: int

    @property
    def cg(self) -> int:  # input channels per group
        return self.C // self.G

    @property
    def og(self) -> int:  # output channels per group
        return self.Co // self.G

    @property
    def rows(self) -> int:  # the GEMM's k: a group's window elements
        return self.cg * self.KH * self.KW

    @property
    def positions(self) -> int:  # output positions per plane
        return self.OH * self.OW

    @property
    def direct(self) -> bool:
        """A 1x1 window at stride 1 without padding: the input planes are the columns."""
        return (self.KH == self.KW == 1 and self.sh == self.sw == 1 and self.ph == self.pw == 0
                and (self.H, self.W) == (self.OH, self.OW))


def _geometry(n, x_shape, w_shape, planes: tuple, out_planes: tuple) -> Geometry:
    p = n.params
    nd = len(p["stride"])
    if nd not in (1, 2):
        raise NotImplementedError(f"LLVM window codegen: a {nd}-d convolution (1-d and 2-d "
                                  f"are lowered)")

    def two(t, fill: int = 1) -> tuple:
        return (fill,) * (2 - nd) + tuple(int(v) for v in t)

    (H, W), (KH, KW) = two(planes), two(w_shape[2:])
    (OH, OW), (sh, sw), (dh, dw) = two(out_planes), two(p["stride"]), two(p["dilation"])
    ph, pw = two((lo for lo, _ in p["padding"]), 0)
    geo = Geometry(x_shape[0], int(x_shape[1]), int(w_shape[0]), int(p["groups"]), H, W, KH,
                   KW, OH, OW, sh, sw, ph, pw, dh, dw)
    if geo.N == 0 or 0 in (geo.C, geo.Co, H, W, KH, KW, OH, OW):
        raise NotImplementedError("LLVM window codegen: an empty dimension")
    return geo


@builds("window")
class WindowBuilder(KernelBuilder):
    """A 'window' group: one convolution or pooling-index node, by its primitive's rule in
    ``WINDOWS``. The kernel's body returns an i32 status (0, or :data:`ALLOC_FAILED`), as
    an index kernel's does: the driver stops at a nonzero one. Built ``late`` in a module:
    a convolution's path may wait for its timing module, compiled meanwhile (:func:`prepare`)."""

    late = True

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "window")
        self.n = g.nodes[group.nodes[-1]]
        self.summed = summed_gradient(g, group)  # (conv_transpose, add, the add's other
        if self.summed is not None:  #              operand): fusion's rule (8)
            self.n = self.summed[0]
        elif len(group.nodes) != 1 and (
                self.n.prim not in ATTENTION_OPERANDS or
                any(g.nodes[i].prim not in VIEWS for i in group.nodes[:-1])):
            raise NotImplementedError("LLVM window codegen: a group of more than one node "
                                      "(other than attention and views of its operands, or "
                                      "a convolution's input gradient and its add)")
        self.rule = WINDOWS.of(self.n.prim)
        self.addend: str | None = None  # (rule 8) the add's other operand: out = rule + it
        self.views: dict = {}  # input position -> strides of an operand read as a view
        self.helpers: list[str] = []  # functions of the kernel's own (parts, samples)
        self.ty = ""  # the convolution's element type
        self.gemm = False  # whether the kernel calls the GEMM library (a column path)
        self.direct_decls = ""  # the intrinsics a direct convolution calls
        self.path: str | None = None  # a convolution's forced path (a timing module's)

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, n = self.group, self.n
        layout = list(grp.inputs) + list(grp.outputs)
        out = n.out if self.summed is None else self.summed[1].out
        if len(grp.outputs) != 1 or grp.outputs[0] is not out:
            raise NotImplementedError("LLVM window codegen: one output")
        self.helpers = []
        ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        self.addend = None if self.summed is None else ptr[id(self.summed[2])]
        self.label("entry")
        self.views = {}
        ins = []
        inside = {id(self.g.nodes[i]) for i in grp.nodes[:-1]}
        for k, v in enumerate(n.inputs):
            if id(v) in ptr:
                ins.append(ptr[id(v)])
                continue
            # an operand made inside the group: a strided view of a group input
            view = row_view(v, lambda m: id(m) in inside)
            if view is None or id(view[0]) not in ptr:
                raise NotImplementedError("LLVM window codegen: an operand made in the "
                                          "group that is not a strided view of an input")
            base, offset, strides = view
            ins.append(self.gep(MEMTYPE[LLTYPE[v.dtype.name]], ptr[id(base)], offset))
            self.views[k] = strides
        self.rule(self, name, ins, ptr[id(out)])
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))
        head = prelude_ir(self.vecmath) + self.declarations() if prelude else ""
        text = (head + "".join(self.helpers)
                + self.function(f"define internal i32 @{name}_body({params}) alwaysinline")
                + entry_ir(name, len(layout), status=True))
        return text, name, layout

    def declarations(self) -> str:
        decl = DECLARATIONS + (threads.DECLARATIONS if threads.find() else "")
        return decl + (gemm.declaration(self.ty) if self.gemm else "") + self.direct_decls

    # ------------------------------------------------------------------ shared pieces
    def _path(self, geo: Geometry) -> str:
        """``"columns"`` or ``"direct"`` for a convolution both kernels compute: the path
        this builder was given (a timing module's), else ``convtune.choose``'s."""
        if self.path is not None:
            return self.path
        direction = self.n.prim.name
        plain = convtune.rule(direction, geo)
        return convtune.choose(direction, _shape_key(self.ty, geo), plain,
                               lambda: race(self.n, geo))

    def _float_type(self) -> str:
        dt = self.n.out.dtype.name
        if dt not in ("float32", "float64"):
            raise NotImplementedError(f"LLVM window codegen: a {dt} convolution (float32 and "
                                      f"float64 are lowered)")
        self.ty = LLTYPE[dt]
        return self.ty

    def _gemm(self, *args) -> str:
        """``gemm.call(self.ty, *args)``, the library compiled or loaded now (the graph's
        module links to it) — only for a kernel that calls it: staged convolutions do not,
        and a graph without one does not pay the library's compile (~0.25 s cold)."""
        gemm.library(self.ty)
        self.gemm = True
        return gemm.call(self.ty, *args)

    def _split(self, name: str, args: list, parts) -> None:
        """Run ``@<name>_blocks(ctx, i, n)`` on the pool over ``parts`` (0: a part per
        thread) with ``args`` ((type, value) pairs) in ``ctx`` and a status slot after them,
        a part's nonzero status stored there (:meth:`_blocks`); returns that status."""
        slots = len(args) + 1
        self.line(f"%ctx = alloca [{slots} x i64], align 8")
        for k, (ty, v) in enumerate(args):
            self.line(f"store {ty} {v}, ptr {self.gep('i64', '%ctx', k)}")
        self.line(f"store i32 0, ptr {self.gep('i64', '%ctx', slots - 1)}")
        self.lines += threads.split_call(name, parts).split("\n")
        self.block = "par.joined"
        slot = self.gep("i64", "%ctx", slots - 1)
        self.line(f"ret i32 {self.emit(f'load i32, ptr {slot}')}")

    def _blocks(self, name: str, args: list, body) -> None:
        """The function ``@<name>_blocks(ctx, tid, nt)`` loading ``args`` ((type, register)
        pairs, in :meth:`_split`'s order) from ``ctx`` and running ``body(e)`` (IR returning
        an i32 status: stored into the status slot when not 0)."""
        e = Emitter()
        e.label("entry")
        for k, (ty, reg) in enumerate(args):
            e.line(f"{reg} = load {ty}, ptr {e.gep('i64', '%ctx', k)}")
        st = body(e)
        with e.when(e.emit(f"icmp ne i32 {st}, 0")):
            e.line(f"store i32 {st}, ptr {e.gep('i64', '%ctx', len(args))}")
        e.line("ret void")
        self.helpers.append(e.function(f"define internal void @{name}_blocks(ptr %ctx, i64 "
                                       f"%tid, i64 %nt)"))

    def _samples_fn(self, name: str, geo: Geometry, columns: bool, per_sample,
                    scratch: int = 0) -> None:
        """``i32 @<name>_samples(ptr %x, ptr %w, ptr %y, i64 %n0, i64 %step)`` (and ``ptr
        %a`` before ``%n0``: :meth:`_sample_args`): samples ``n0, n0 + step, ...`` below N,
        each by ``per_sample(e, n, cols)`` with a column buffer of the function's own
        (``columns``) — and ``per_sample(e, n, cols, buf)`` with a buffer of ``scratch``
        elements too, when asked; status 0, or ALLOC_FAILED."""
        e = Emitter()
        e.label("entry")
        cols = buf = "null"
        if columns:
            cols = _malloc(e, geo.rows * geo.positions * _size(self.ty))
        if scratch:
            buf = _malloc(e, scratch * _size(self.ty))
        if columns or scratch:
            bad = e.emit(f"or i1 {e.emit(f'icmp eq ptr {cols}, null')}, "
                         f"{e.emit(f'icmp eq ptr {buf}, null')}") if columns and scratch \
                else e.emit(f"icmp eq ptr {cols if columns else buf}, null")
            with e.when(bad):
                for p in (cols, buf):
                    if p != "null":
                        e.line(f"call void @free(ptr {p})")
                e.line(f"ret i32 {ALLOC_FAILED}")
        with e.rolled_loop("%n0", literal(geo.N, "i64"), "%step", scalar=True) as n:
            if scratch:
                per_sample(e, n, cols, buf)
            else:
                per_sample(e, n, cols)
        for p in (cols, buf):
            if p != "null":
                e.line(f"call void @free(ptr {p})")
        e.line("ret i32 0")
        self.helpers.append(e.function(f"define internal i32 @{name}_samples("
                                       f"{self._sample_params()})"))

    def _sample_params(self) -> str:
        """A samples function's parameters: ``%x``, ``%w``, ``%y``, then (rule 8's sum) the
        add's other operand ``%a``, laid out as ``%y``, then ``%n0`` and ``%step``.

        Note (in place): ``%a`` and ``%y`` may be one buffer (the memory plan's pair: the
        sum overwrites the operand it adds). Every path reads each element of ``%a`` once,
        in the loop that then stores that element of ``%y``, after the sum it adds to is
        complete — the transposed convolution's own stores go to ``%y`` only where it is not
        ``%a`` (the direct tiles add ``%a`` as they store; the phased path stores its
        phases' sums from its own buffer; the column path builds each sample in a buffer of
        its own) — so each element is read before it is written, as an in-place
        elementwise kernel's (``driver.py``: why ``noalias`` stays sound)."""
        a = ", ptr noalias %a" if self.addend else ""
        return f"ptr noalias %x, ptr noalias %w, ptr noalias %y{a}, i64 %n0, i64 %step"

    def _by_samples(self, name: str, geo: Geometry, x: str, w: str, y: str,
                    many: str | None = None) -> None:
        """The kernel's body: the samples in parallel (a part per thread, each every
        ``nt``-th sample), or all on this thread when there is one sample or no pool (the
        GEMMs then split their rows across the threads themselves); returns the status.
        ``many``: the samples function (``@<many>_samples``) the parallel parts call, when
        not the lone sample's."""
        def call(e, a, n0, step, fn=name) -> str:
            ptrs = "".join(f"ptr {p}, " for p in a)
            return e.emit(f"call i32 @{fn}_samples({ptrs}i64 {n0}, i64 {step})")

        mine = (x, w, y) + ((self.addend,) if self.addend else ())
        regs = ("%x", "%w", "%y") + (("%a",) if self.addend else ())
        if threads.find() is not None:
            self.branch(self.emit(f"icmp slt i64 {literal(geo.N, 'i64')}, 2"), "alone", "many")
            self.label("many")
            self._split(name, [("ptr", p) for p in mine], 0)
            self._blocks(name, [("ptr", r) for r in regs],
                         lambda e: call(e, regs, "%tid", "%nt", many or name))
            self.label("alone")
        elif many is not None:  # (no pool: the samples in order on this thread)
            self.branch(self.emit(f"icmp slt i64 {literal(geo.N, 'i64')}, 2"), "alone", "many")
            self.label("many")
            self.line(f"ret i32 {call(self, mine, 0, 1, many)}")
            self.label("alone")
        self.line(f"ret i32 {call(self, mine, 0, 1)}")

    # ------------------------------------------------------------------ the column loops
    def _columns(self, e: Emitter, geo: Geometry, x: str, cols: str, add: bool) -> None:
        """Between a group's input planes ``x`` (``C/G`` planes of ``H x W``) and its columns
        ``cols`` (row ``(c·KH + ki)·KW + kj``, column ``oh·OW + ow``): gather the windows
        into the columns (zero where a window reads padding), or with ``add`` add the
        columns back into the planes (col2im; the planes zeroed by the caller). Per row and
        output row, the positions inside the input form one range ``[lo, hi)`` of ``ow``,
        found by arithmetic: the loop over it has no test (at stride 1 a contiguous copy)."""
        ty = self.ty
        P, HW = geo.positions, geo.H * geo.W
        with e.rolled_loop(0, geo.cg, scalar=True) as c:
            xc = e.gep(ty, x, e.emit(f"mul i64 {c}, {HW}"))
            with e.rolled_loop(0, geo.KH, scalar=True) as ki:
                with e.rolled_loop(0, geo.KW, scalar=True) as kj:
                    r = _i(e, "add", _i(e, "mul", c, geo.KH * geo.KW),
                           _i(e, "add", _i(e, "mul", ki, geo.KW), kj))
                    row = e.gep(ty, cols, e.emit(f"mul i64 {r}, {P}"))
                    off = _i(e, "sub", _i(e, "mul", kj, geo.dw), geo.pw)
                    # lo: the first ow with ow·sw + off >= 0; hi: past the last with < W
                    neg = e.emit(f"sub i64 0, {off}")
                    lo = _i(e, "udiv", _i(e, "add", neg, geo.sw - 1), geo.sw)
                    lo = e.emit(f"select i1 {e.emit(f'icmp sgt i64 {off}, 0')}, i64 0, "
                                f"i64 {lo}")
                    room = e.emit(f"sub i64 {geo.W - 1}, {off}")
                    hi = _i(e, "add", _i(e, "udiv", room, geo.sw), 1)
                    hi = e.min(hi, geo.OW)
                    hi = e.emit(f"select i1 {e.emit(f'icmp slt i64 {room}, 0')}, i64 0, "
                                f"i64 {hi}")
                    lo = e.min(lo, hi)
                    with e.rolled_loop(0, geo.OH, scalar=True) as oh:
                        ih = _i(e, "add", _i(e, "mul", oh, geo.sh),
                                _i(e, "sub", _i(e, "mul", ki, geo.dh), geo.ph))
                        inside = e.emit(f"icmp ult i64 {ih}, {geo.H}")  # (0 <= ih < H)
                        a = e.emit(f"select i1 {inside}, i64 {lo}, i64 0")
                        b = e.emit(f"select i1 {inside}, i64 {hi}, i64 0")
                        seg = e.gep(ty, row, e.emit(f"mul i64 {oh}, {geo.OW}"))
                        src = e.gep(ty, xc, _i(e, "add", _i(e, "mul", ih, geo.W), off))
                        if not add:
                            with e.rolled_loop(0, a) as j:
                                e.line(f"store {ty} {literal(0.0, ty)}, ptr {e.gep(ty, seg, j)}")
                        with e.rolled_loop(a, b) as j:
                            at = e.gep(ty, src, e.emit(f"mul i64 {j}, {geo.sw}"))
                            c_at = e.gep(ty, seg, j)
                            if add:
                                s = e.emit(f"fadd {ty} {e.emit(f'load {ty}, ptr {at}')}, "
                                           f"{e.emit(f'load {ty}, ptr {c_at}')}")
                                e.line(f"store {ty} {s}, ptr {at}")
                            else:
                                e.line(f"store {ty} {e.emit(f'load {ty}, ptr {at}')}, ptr {c_at}")
                        if not add:
                            with e.rolled_loop(b, geo.OW) as j:
                                e.line(f"store {ty} {literal(0.0, ty)}, ptr {e.gep(ty, seg, j)}")


def _malloc(e: Emitter, nbytes) -> str:
    """A work buffer of ``nbytes`` from malloc, or null: also when it exceeds
    ``MAX_WORK_BYTES`` (asked as the largest size, which malloc refuses) — the limit the
    tests lower to take the failure path."""
    n = e.emit(f"select i1 {e.emit(f'icmp ule i64 {nbytes}, {MAX_WORK_BYTES}')}, i64 {nbytes}, "
               f"i64 -1")
    return e.emit(f"call ptr @malloc(i64 {n})")


def _i(e: Emitter, op: str, a, b) -> str:
    """``a op b`` on i64 (``op``: add, sub, mul, udiv)."""
    return e.emit(f"{op} i64 {a}, {b}")


def _size(ty: str) -> int:
    return 4 if ty == "float" else 8


# ------------------------------------------------------------------ convolution


# Per convolution primitive: (x's shape, w's shape, input planes, output planes) of the
# convolution it computes a direction of (the shapes ``_geometry`` reads).
_CONV_SHAPES = {
    P.CONV: lambda n: (n.inputs[0].shape, n.inputs[1].shape, n.inputs[0].shape[2:],
                       n.out.shape[2:]),
    P.CONV_TRANSPOSE: lambda n: (n.out.shape, n.inputs[1].shape, n.out.shape[2:],
                                 n.inputs[0].shape[2:]),
    P.CONV_WEIGHT_GRAD: lambda n: (n.inputs[0].shape, n.out.shape, n.inputs[0].shape[2:],
                                   n.inputs[1].shape[2:]),
}


def _conv_flops(n) -> float:
    x, w, _, out = _CONV_SHAPES[n.prim](n)
    return 2.0 * int(x[0]) * int(w[0]) * math.prod(int(v) for v in out) * math.prod(
        int(v) for v in w[1:])


FLOPS = {  # a window node's floating-point operations, per primitive
    **dict.fromkeys(_CONV_SHAPES, _conv_flops),
    P.MAX_POOL_INDICES: lambda n: float(math.prod(int(v) for v in n.out.shape)
                                        * math.prod(n.params["kernel"])),
    P.ADAPTIVE_MAX_INDICES: lambda n: float(math.prod(int(v) for v in n.inputs[0].shape)),
}


def flops(n) -> float:
    """A window node's floating-point operations (``compiler.profile``): a convolution
    direction's multiply-adds twice (for the transposed one, those of the convolution it is
    the adjoint of), a pooling node's comparisons, one per window read."""
    return FLOPS[n.prim](n)


def _stride_one(geo: Geometry) -> bool:
    """A window read without gaps (stride and dilation 1) that is not already a plain GEMM
    (1x1, no padding): the input gradient :func:`_transpose_direct` computes."""
    return geo.sh == geo.sw == geo.dh == geo.dw == 1 and not geo.direct


MAX_STAGED_STRIDE = 4  # strides up to which a convolution reads staged phase planes


def _staged(geo: Geometry) -> bool:
    """A convolution whose forward and weight gradient read each sample's staged planes
    (:class:`Direct`): every one but a plain GEMM (1x1 at stride 1 without padding), up to
    ``MAX_STAGED_STRIDE`` (a phase plane per used (row, column) remainder of the stride)."""
    return max(geo.sh, geo.sw) <= MAX_STAGED_STRIDE and not geo.direct


@dataclass(frozen=True)
class Direct:
    """A correlation computed straight from staged planes: per sample and group, ``out[o, y,
    x] = sum over k of w(o, k) · xs[off(k) + y·Wp + x]`` with ``k`` over (input channel,
    window row, window column) in that order, and the weight of (output channel ``o``,
    ``k``) at ``o·wrow + woff[k]`` from the group's weights (``woff`` None: ``k``).

    ``xs`` holds the sample's ``C`` planes of ``H x W`` as if placed at (``top``, ``left``)
    in zero-bordered planes, and read at stride (``sh``, ``sw``) and dilation (``dh``,
    ``dw``): per channel, one ``Hp x Wp`` plane per *phase* — a (row, column) remainder
    modulo the stride that some window element reads — holding the bordered plane's rows
    ``a, a + sh, ...`` and columns ``b, b + sw, ...``. So window element (ki, kj) of output
    (y, x) lies at row ``y + ki·dh // sh`` and column ``x + kj·dw // sw`` of phase
    ``(ki·dh % sh, kj·dw % sw)``: every read along an output row is contiguous. At stride 1
    the one phase is the bordered plane itself. The forward convolution is one (``w`` as
    stored); the input gradient another (stride 1, the window flipped, channels swapped)."""

    N: object
    C: int  # input channels (all groups)
    H: int
    W: int
    top: int
    left: int
    Hp: int
    Wp: int
    G: int
    cin: int  # input channels per group
    cout: int  # output channels per group
    OH: int
    OW: int
    KH: int
    KW: int
    wrow: int  # weights between one output channel's and the next's
    wgroup: int  # weights per group
    woff: tuple | None = None
    sh: int = 1
    sw: int = 1
    dh: int = 1
    dw: int = 1
    shift: tuple = (0, 0)  # (rows, columns) every read is moved by: a correlation reading
    #                        planes staged for a larger window (_transpose_phases' shared ones)

    @property
    def rows(self) -> int:  # k's range
        return self.cin * self.KH * self.KW

    @property
    def phases(self) -> list:
        """The (row, column) remainders some window element reads, in order."""
        return sorted({(ki * self.dh % self.sh, kj * self.dw % self.sw)
                       for ki in range(self.KH) for kj in range(self.KW)})

    @property
    def plane(self) -> int:  # one input channel's staged planes
        return len(self.phases) * self.Hp * self.Wp

    def offsets(self) -> list:
        """``off(k)`` for each ``k`` of a group, in order."""
        at = {ph: i for i, ph in enumerate(self.phases)}
        dy, dx = self.shift
        return [c * self.plane + (at[ki * self.dh % self.sh, kj * self.dw % self.sw] * self.Hp
                                  + ki * self.dh // self.sh + dy) * self.Wp
                + kj * self.dw // self.sw + dx
                for c in range(self.cin) for ki in range(self.KH) for kj in range(self.KW)]


def _tile(ty: str, d: Direct) -> tuple:
    """A direct convolution's register tile: (lanes, vectors per output row segment, output
    channels) — one vector when the output rows fit in it, else two; as many channels as
    keep the accumulators in half the vector registers (32 with AVX-512, 16 with AVX2)."""
    vl = gemm.lanes(ty)
    nv = 1 if d.OW <= vl else 2
    return vl, nv, (16 if gemm.vector_bits() >= 512 else 8) // nv


def _staged_bytes(ty: str, d: Direct) -> int:
    """Bytes of one sample's staged planes for :func:`_conv_direct`'s tiles: the planes
    and a tile's width more (a row's last tile loads whole vectors past its end)."""
    vl, nv, _ = _tile(ty, d)
    return (d.C * d.plane + nv * vl) * _size(ty)


def _chunks(total: int, most: int) -> list:
    """``[(first, rows)]`` covering ``range(total)``: blocks of ``most``, then of the powers
    of two below it (so only a few tile functions are written)."""
    out, at, size = [], 0, most
    while at < total:
        while size > total - at:
            size //= 2
        out.append((at, size))
        at += size
    return out


def vector_ir(ty: str) -> tuple:
    """(lanes, vector type, the intrinsics' type suffix, their declarations: fma, a masked
    store and load, and a masked load of two vectors — :func:`_stage_pairs`') of the direct
    kernels' vectors of ``ty``."""
    vl = gemm.lanes(ty)
    vt, sfx = f"<{vl} x {ty}>", "f32" if ty == "float" else "f64"
    wide = f"<{2 * vl} x {ty}>"
    return vl, vt, sfx, (f"declare {vt} @llvm.fma.v{vl}{sfx}({vt}, {vt}, {vt})\n"
                         f"declare void @llvm.masked.store.v{vl}{sfx}.p0({vt}, ptr, "
                         f"i32 immarg, <{vl} x i1>)\n"
                         f"declare {vt} @llvm.masked.load.v{vl}{sfx}.p0(ptr, i32 immarg, "
                         f"<{vl} x i1>, {vt})\n"
                         f"declare {wide} @llvm.masked.load.v{2 * vl}{sfx}.p0(ptr, i32 immarg, "
                         f"<{2 * vl} x i1>, {wide})\n")


def _rank_one(e: Emitter, ty: str, scalars: list, vectors: list, acc) -> list:
    """One step of a register tile: each of ``scalars`` (pointers) loaded and broadcast,
    times each of ``vectors``, added to ``acc(r, v)`` — a fused multiply-add where the CPU
    has one (``gemm.has_fma``, as the GEMM's micro-kernel); returns the new accumulators in
    (r, v) order."""
    vl, vt, sfx, _ = vector_ir(ty)
    out = []
    for r, p in enumerate(scalars):
        a = e.emit(f"load {ty}, ptr {p}")
        a = e.emit(f"insertelement {vt} poison, {ty} {a}, i64 0")
        a = e.emit(f"shufflevector {vt} {a}, {vt} poison, <{vl} x i32> zeroinitializer")
        for v, bv in enumerate(vectors):
            if gemm.has_fma():
                out.append(e.emit(f"call {vt} @llvm.fma.v{vl}{sfx}({vt} {a}, {vt} {bv}, "
                                  f"{vt} {acc(r, v)})"))
            else:
                out.append(e.emit(f"fadd {vt} {acc(r, v)}, {e.emit(f'fmul {vt} {a}, {bv}')}"))
    return out


def _conv_direct(b: WindowBuilder, name: str, d: Direct, samples: bool = True,
                 addend: bool = False) -> None:
    """``i32 @<name>d_samples(x, w, y, n0, step)`` (as ``_samples_fn``'s) computing
    :class:`Direct` ``d``: per sample, its planes are copied once into a zero-bordered
    buffer, and the output is computed straight from it — no column buffer, no packing. A
    tile of ``MR`` output channels x ``NV`` vectors of one output row lives in registers;
    for each ``k`` in order it loads the ``NV`` vectors at the row's offset for ``k`` (a
    table of the module's) and multiply-adds them with ``MR`` weights. Each output is thus
    the chain ``fma(w(o, k), x(k), ·)`` for ``k = 0, 1, ...`` from +0.0 — for the forward
    convolution the GEMM's order (``gemm.py``), so the column path's bits. With ``addend``
    (rule 8's sum, a samples function taking ``%a``), each stored vector is the chain plus
    the vector of ``%a`` at its place, loaded just before the store."""
    ty, size = b.ty, _size(b.ty)
    vl, nv, mr = _tile(ty, d)
    nr = nv * vl
    P_ = d.OH * d.OW
    _, vt, sfx, b.direct_decls = vector_ir(ty)
    offs = d.offsets()
    for tab, vals in (("off", offs), ("woff", d.woff)):
        if vals is not None:
            b.helpers.append(f"@{name}_{tab} = internal unnamed_addr constant [{len(vals)} x "
                             f"i64] [" + ", ".join(f"i64 {o}" for o in vals) + "], align 8\n\n")

    def tile(e: Emitter, xb: str, yb: str, ab: str | None, rows: int, vecs: int,
             tail: int | None) -> None:
        """``rows`` channels x ``vecs`` vectors at ``xb`` (the padded row) into ``yb`` (plus
        ``ab``'s, when given); ``tail``: the valid columns of a last, partial tile (masked
        loads and stores)."""
        blk = e.fresh("K")
        accs = [(r, v) for r in range(rows) for v in range(vecs)]
        with e.loop(f"%{blk}.k", d.rows, block=blk, exit=f"{blk}.done",
                    carry=[(f"%{blk}.a{r}.{v}", vt, "zeroinitializer") for r, v in accs],
                    hint=f", !llvm.loop {jit.ROLLED_LOOP}") as lp:
            k = f"%{blk}.k"
            off = e.emit(f"load i64, ptr {e.gep('i64', f'@{name}_off', k)}")
            wk = k if d.woff is None else \
                e.emit(f"load i64, ptr {e.gep('i64', f'@{name}_woff', k)}")
            base = e.gep(ty, xb, off)
            bs = [e.emit(f"load {vt}, ptr {e.gep(ty, base, v * vl)}, align {size}")
                  for v in range(vecs)]
            nxt = _rank_one(e, ty, [e.gep(ty, "%w", _i(e, "add", wk, r * d.wrow))
                                    for r in range(rows)], bs,
                            lambda r, v: f"%{blk}.a{r}.{v}")
            lp.next = nxt
        for i, (r, v) in enumerate(accs):
            at = e.gep(ty, yb, r * P_ + v * vl)
            valid = vl if tail is None else min(vl, tail - v * vl)
            if valid <= 0:
                continue
            mask = ", ".join("i1 true" if j < valid else "i1 false" for j in range(vl))
            val = nxt[i]
            if ab is not None:
                src = e.gep(ty, ab, r * P_ + v * vl)
                more = e.emit(f"load {vt}, ptr {src}, align {size}") if valid == vl else \
                    e.emit(f"call {vt} @llvm.masked.load.v{vl}{sfx}.p0(ptr {src}, i32 {size}, "
                           f"<{vl} x i1> <{mask}>, {vt} zeroinitializer)")
                val = e.emit(f"fadd {vt} {val}, {more}")
            if valid == vl:
                e.line(f"store {vt} {val}, ptr {at}, align {size}")
            else:
                e.line(f"call void @llvm.masked.store.v{vl}{sfx}.p0({vt} {val}, ptr {at}, "
                       f"i32 {size}, <{vl} x i1> <{mask}>)")

    full, tail = divmod(d.OW, nr)
    for rows in sorted({r for _, r in _chunks(d.cout, mr)}):
        e = Emitter()  # void @<name>_rt<rows>(xp, w, y): output channels [0, rows) of a group
        e.label("entry")
        with e.rolled_loop(0, d.OH, scalar=True) as oh:
            xrow = e.gep(ty, "%xp", _i(e, "mul", oh, d.Wp))
            yrow = e.gep(ty, "%y", _i(e, "mul", oh, d.OW))
            arow = e.gep(ty, "%a", _i(e, "mul", oh, d.OW)) if addend else None
            if full:
                with e.rolled_loop(0, full, scalar=True) as t:
                    at = _i(e, "mul", t, nr)
                    tile(e, e.gep(ty, xrow, at), e.gep(ty, yrow, at),
                         arow and e.gep(ty, arow, at), rows, nv, None)
            if tail:
                tile(e, e.gep(ty, xrow, full * nr), e.gep(ty, yrow, full * nr),
                     arow and e.gep(ty, arow, full * nr), rows, -(-tail // vl), tail)
        e.line("ret void")
        a = ", ptr noalias %a" if addend else ""
        b.helpers.append(e.function(f"define internal void @{name}_rt{rows}(ptr noalias %xp, "
                                    f"ptr noalias %w, ptr noalias %y{a}) noinline"))

    if not samples:  # (the caller runs the tiles: _conv_transpose_phased)
        return
    e = Emitter()
    e.label("entry")
    nbytes = _staged_bytes(ty, d)
    xp = _malloc(e, nbytes)
    with e.when(e.emit(f"icmp eq ptr {xp}, null")):
        e.line(f"ret i32 {ALLOC_FAILED}")
    e.line(f"call void @llvm.memset.p0.i64(ptr {xp}, i8 0, i64 {nbytes}, i1 false)")
    HW = d.H * d.W
    with e.rolled_loop("%n0", literal(d.N, "i64"), "%step", scalar=True) as s:
        _stage(e, ty, d, e.gep(ty, "%x", _i(e, "mul", s, d.C * HW)), xp)
        at = _i(e, "mul", s, d.G * d.cout * P_)
        _direct_groups(e, ty, name, d, xp, e.gep(ty, "%y", at),
                       e.gep(ty, "%a", at) if addend else None)
    e.line(f"call void @free(ptr {xp})")
    e.line("ret i32 0")
    b.helpers.append(e.function(f"define internal i32 @{name}d_samples("
                                f"{b._sample_params()})"))


def _direct_groups(e: Emitter, ty: str, name: str, d: Direct, xp: str, y: str,
                   a: str | None = None) -> None:
    """One sample of :class:`Direct` ``d`` from its staged planes at ``xp`` into its output
    at ``y`` (``G·cout`` planes of ``OH x OW``; plus ``a``'s, laid out as ``y``, when
    given): per group, the tile functions :func:`_conv_direct` wrote (``@<name>_rt<rows>``)
    over its chunks of output channels."""
    plane, P_ = d.plane, d.OH * d.OW
    mr = _tile(ty, d)[2]
    with e.rolled_loop(0, d.G, scalar=True) as grp:
        xg = e.gep(ty, xp, _i(e, "mul", grp, d.cin * plane))
        wg = e.gep(ty, "%w", _i(e, "mul", grp, d.wgroup))
        at = _i(e, "mul", grp, d.cout * P_)
        yg = e.gep(ty, y, at)
        ag = e.gep(ty, a, at) if a is not None else None
        for first, rows in _chunks(d.cout, mr):
            more = f", ptr {e.gep(ty, ag, first * P_)}" if ag is not None else ""
            e.line(f"call void @{name}_rt{rows}(ptr {xg}, ptr "
                   f"{e.gep(ty, wg, first * d.wrow)}, ptr {e.gep(ty, yg, first * P_)}{more})")


def _spans(d: Direct) -> list:
    """Per phase of ``d``'s staged planes: ``(i, a, b, y0, y1, x0, x1)`` — the rows
    ``[y0, y1)`` and columns ``[x0, x1)`` of its plane that hold input (the rest: zeros)."""
    out = []
    for i, (a, b) in enumerate(d.phases):
        y0, y1 = max(0, -(-(d.top - a) // d.sh)), min(d.Hp, (d.H - 1 + d.top - a) // d.sh + 1)
        x0, x1 = max(0, -(-(d.left - b) // d.sw)), min(d.Wp, (d.W - 1 + d.left - b) // d.sw + 1)
        out.append((i, a, b, y0, y1, x0, x1))
    return out


def _stage(e: Emitter, ty: str, d: Direct, src: str, dst: str) -> None:
    """One sample's ``C`` planes of ``H x W`` at ``src`` into its staged planes at ``dst``
    (:class:`Direct`; the zeros around written before, once, or by :func:`_zero_border`):
    per phase, the rows and columns of the input that it holds, each range found by
    arithmetic."""
    HW = d.H * d.W
    for i, a, b, y0, y1, x0, x1 in _spans(d):
        if y1 <= y0 or x1 <= x0:
            continue
        with e.rolled_loop(0, d.C, scalar=True) as c:
            with e.rolled_loop(y0, y1, scalar=True) as y:
                row = _i(e, "sub", _i(e, "add", _i(e, "mul", y, d.sh), a), d.top)
                at = e.gep(ty, src, _i(e, "add", _i(e, "mul", c, HW), _i(e, "mul", row, d.W)))
                to = e.gep(ty, dst, _i(e, "add", _i(e, "mul", c, d.plane),
                                       _i(e, "mul", _i(e, "add", y, i * d.Hp), d.Wp)))
                xs = x0
                if d.sw == 2:  # every other column: whole vectors by a shuffle of two
                    xs = _stage_pairs(e, ty, at, to, x0, x1, b - d.left, d.W)
                with e.rolled_loop(xs, x1, scalar=d.sw > 1) as x:  # (strided: no vectors,
                    #                                  LLVM's gathers cost ~40 ms of compile)
                    q = _i(e, "sub", _i(e, "add", _i(e, "mul", x, d.sw), b), d.left)
                    e.line(f"store {ty} {e.emit(f'load {ty}, ptr {e.gep(ty, at, q)}')}, "
                           f"ptr {e.gep(ty, to, x)}")


def _zero_border(e: Emitter, ty: str, d: Direct, dst: str) -> None:
    """The zeros of one sample's staged planes at ``dst`` — every element :func:`_stage`
    does not write — and nothing else (a whole plane's memset wrote most of it twice)."""
    size = _size(ty)

    def zero(at: str, count) -> None:
        e.line(f"call void @llvm.memset.p0.i64(ptr {at}, i8 0, i64 {count * size}, i1 false)")
    with e.rolled_loop(0, d.C, scalar=True) as c:
        base = e.gep(ty, dst, _i(e, "mul", c, d.plane))
        for i, _, _, y0, y1, x0, x1 in _spans(d):
            plane = e.gep(ty, base, i * d.Hp * d.Wp)
            if y1 <= y0 or x1 <= x0:
                zero(plane, d.Hp * d.Wp)
                continue
            if y0:
                zero(plane, y0 * d.Wp)
            if y1 < d.Hp:
                zero(e.gep(ty, plane, y1 * d.Wp), (d.Hp - y1) * d.Wp)
            if x0 or x1 < d.Wp:
                with e.rolled_loop(y0, y1, scalar=True) as y:
                    row = e.gep(ty, plane, _i(e, "mul", y, d.Wp))
                    if x0:
                        zero(row, x0)
                    if x1 < d.Wp:
                        zero(e.gep(ty, row, x1), d.Wp - x1)


def _stage_pairs(e: Emitter, ty: str, at: str, to: str, x0: int, x1: int, c: int,
                 width: int) -> int:
    """``to[x] = at[2·x + c]`` for the ``x`` from ``x0`` on, a vector at a time: two
    vectors' worth of the row loaded (the last, odd lane masked off: it may lie past the
    row) and its even lanes kept — while those stay inside the row's ``width`` elements.
    Returns the first ``x`` left to the caller."""
    vl = gemm.lanes(ty)
    last = min(x1 - vl, (width - 1 - c) // 2 - vl + 1)  # the last vector's first x
    if last < x0:
        return x0
    n = (last - x0) // vl + 1
    wide, vt = f"<{2 * vl} x {ty}>", f"<{vl} x {ty}>"
    sfx = "f32" if ty == "float" else "f64"
    mask = "<" + ", ".join("i1 true" for _ in range(2 * vl - 1)) + ", i1 false>"
    even = ", ".join(f"i32 {2 * j}" for j in range(vl))
    with e.rolled_loop(0, n, scalar=True) as k:
        x = _i(e, "add", x0, _i(e, "mul", k, vl))
        p = e.gep(ty, at, _i(e, "add", _i(e, "mul", x, 2), c))
        v = e.emit(f"call {wide} @llvm.masked.load.v{2 * vl}{sfx}.p0(ptr {p}, i32 {_size(ty)}, "
                   f"<{2 * vl} x i1> {mask}, {wide} poison)")
        v = e.emit(f"shufflevector {wide} {v}, {wide} poison, <{vl} x i32> <{even}>")
        e.line(f"store {vt} {v}, ptr {e.gep(ty, to, x)}, align {_size(ty)}")
    return x0 + n * vl


def _forward_direct(geo: Geometry) -> Direct:
    """The forward convolution of ``geo`` (:func:`_staged`) as a :class:`Direct`: its phase
    planes as tall and wide as the output plus the window's reach in them."""
    Hp = geo.OH + (geo.KH - 1) * geo.dh // geo.sh
    Wp = geo.OW + (geo.KW - 1) * geo.dw // geo.sw
    return Direct(geo.N, geo.C, geo.H, geo.W, geo.ph, geo.pw, Hp, Wp, geo.G, geo.cg, geo.og,
                  geo.OH, geo.OW, geo.KH, geo.KW, geo.rows, geo.og * geo.rows, None,
                  geo.sh, geo.sw, geo.dh, geo.dw)


def _transpose_direct(geo: Geometry) -> Direct | None:
    """The input gradient of ``geo``'s convolution (stride 1), ``dx[c] = sum over o, ki, kj of
    W[o, c, ki, kj] · dy[o, y + p - ki, x + p - kj]``, as a :class:`Direct` over ``dy``
    bordered by ``KH - 1 - p`` (the window flipped: ``woff``); None when the padding is
    wider than the window (the border would be negative)."""
    top, left = geo.KH - 1 - geo.ph, geo.KW - 1 - geo.pw
    if top < 0 or left < 0 or top + geo.OH > geo.H + geo.KH - 1 \
            or left + geo.OW > geo.W + geo.KW - 1:
        return None
    kk = geo.KH * geo.KW
    woff = tuple(o * geo.cg * kk + (geo.KH - 1 - ki) * geo.KW + (geo.KW - 1 - kj)
                 for o in range(geo.og) for ki in range(geo.KH) for kj in range(geo.KW))
    return Direct(geo.N, geo.Co, geo.OH, geo.OW, top, left, geo.H + geo.KH - 1,
                  geo.W + geo.KW - 1, geo.G, geo.og, geo.cg, geo.H, geo.W, geo.KH, geo.KW,
                  kk, geo.og * geo.cg * kk, woff)


@dataclass(frozen=True)
class _Phase:
    """The input gradient's positions of one (row, column) remainder: rows ``Y = sh·(y0 + y)
    + a - ph`` for ``y < rows``, columns likewise; ``d`` the correlation computing them
    (None: no window element lands there — zeros)."""

    a: int
    b: int
    y0: int
    x0: int
    rows: int
    cols: int
    d: Direct | None


def _transpose_phases(geo: Geometry) -> list | None:
    """The input gradient of ``geo``'s strided convolution (dilation 1) as one stride-1
    correlation per phase: with ``a = (Y + ph) mod sh``, ``dx[c, Y] = sum over o, m of
    W[o, c, a + sh·m] · dy[o, (Y + ph - a)/sh - m]`` (columns likewise) — the window's rows
    ``a, a + sh, ...`` flipped, over ``dy`` bordered; None where that does not apply.

    Every phase reads the same ``dy``: their correlations share one staging of it, bordered
    for the widest of them (each phase's reads moved by its border's difference: ``shift``),
    so a sample's ``dy`` is staged once, not once per phase."""
    if geo.dh != 1 or geo.dw != 1 or max(geo.sh, geo.sw) > MAX_STAGED_STRIDE or \
            max(geo.sh, geo.sw) == 1:
        return None
    kk = geo.KH * geo.KW
    spans = []  # (a, b, y0, x0, rows, cols, kh, kw)
    for a in range(geo.sh):
        y0, y1 = max(0, -(-(geo.ph - a) // geo.sh)), (geo.H - 1 + geo.ph - a) // geo.sh + 1
        for b_ in range(geo.sw):
            x0, x1 = max(0, -(-(geo.pw - b_) // geo.sw)), (geo.W - 1 + geo.pw - b_) // geo.sw + 1
            if y1 <= y0 or x1 <= x0:
                continue
            spans.append((a, b_, y0, x0, y1 - y0, x1 - x0, len(range(a, geo.KH, geo.sh)),
                          len(range(b_, geo.KW, geo.sw))))
    reads = [s for s in spans if s[6] and s[7]]
    if not reads:
        return [_Phase(a, b_, y0, x0, rows, cols, None)
                for a, b_, y0, x0, rows, cols, _, _ in spans]
    # the shared staging: dy placed at (top, left) in planes of Hp x Wp, as deep into its
    # border as the phase reaching furthest before it needs, as wide as the furthest after
    top = max(kh - 1 - y0 for _, _, y0, _, _, _, kh, _ in reads)
    left = max(kw - 1 - x0 for _, _, _, x0, _, _, _, kw in reads)
    Hp = max(top - (kh - 1 - y0) + rows + kh - 1 for _, _, y0, _, rows, _, kh, _ in reads)
    Wp = max(left - (kw - 1 - x0) + cols + kw - 1 for _, _, _, x0, _, cols, _, kw in reads)
    Hp, Wp = max(Hp, top + geo.OH), max(Wp, left + geo.OW)
    out = []
    for a, b_, y0, x0, rows, cols, kh, kw in spans:
        d = None
        if kh and kw:
            woff = tuple(o * geo.cg * kk + (a + geo.sh * (kh - 1 - m)) * geo.KW
                         + b_ + geo.sw * (kw - 1 - n)
                         for o in range(geo.og) for m in range(kh) for n in range(kw))
            d = Direct(geo.N, geo.Co, geo.OH, geo.OW, top, left, Hp, Wp, geo.G, geo.og,
                       geo.cg, rows, cols, kh, kw, kk, geo.og * geo.cg * kk, woff,
                       shift=(top - (kh - 1 - y0), left - (kw - 1 - x0)))
        out.append(_Phase(a, b_, y0, x0, rows, cols, d))
    return out


def _conv_transpose_phased(b: WindowBuilder, name: str, geo: Geometry, phases: list) -> None:
    """``i32 @<name>q_samples(dy, w, dx, n0, step)`` (as ``_samples_fn``'s): per sample, ``dy``
    staged once for all the phases' correlations (:func:`_transpose_phases`); per phase, the
    tile functions of :func:`_conv_direct` compute its positions into a buffer; then those
    are written to their places in ``dx`` (zeros for a phase no window element
    reaches; with rule 8's ``%a``, each plus ``%a``'s element there). Each ``dx`` element is
    one chain of multiply-adds over (output channel, window row, window column): the same
    bits alone as in a batch."""
    ty, size = b.ty, _size(b.ty)
    for i, ph in enumerate(phases):
        if ph.d is not None:
            _conv_direct(b, f"{name}p{i}", ph.d, samples=False)
    xbytes = max([_staged_bytes(ty, p.d) for p in phases if p.d] or [size])
    offsets, at = [], 0  # each phase's positions in the buffer, all channels
    for p in phases:
        offsets.append(at)
        at += geo.C * p.rows * p.cols
    tbytes = at * size
    e = Emitter()
    e.label("entry")
    xp, tmp = _malloc(e, xbytes), _malloc(e, tbytes)
    bad = e.emit(f"or i1 {e.emit(f'icmp eq ptr {xp}, null')}, {e.emit(f'icmp eq ptr {tmp}, null')}")
    with e.when(bad):
        e.line(f"call void @free(ptr {xp})")
        e.line(f"call void @free(ptr {tmp})")
        e.line(f"ret i32 {ALLOC_FAILED}")
    HW, OHW = geo.H * geo.W, geo.OH * geo.OW
    staged = next((p.d for p in phases if p.d), None)  # (the phases' shared staging)
    if staged is not None:  # (its border: zeros, written once; each sample its inside)
        e.line(f"call void @llvm.memset.p0.i64(ptr {xp}, i8 0, i64 {xbytes}, i1 false)")
    with e.rolled_loop("%n0", literal(geo.N, "i64"), "%step", scalar=True) as s:
        dx = e.gep(ty, "%y", _i(e, "mul", s, geo.C * HW))
        ax = e.gep(ty, "%a", _i(e, "mul", s, geo.C * HW)) if b.addend else None
        if staged is not None:
            _stage(e, ty, staged, e.gep(ty, "%x", _i(e, "mul", s, geo.Co * OHW)), xp)
        for i, ph in enumerate(phases):
            if ph.d is not None:
                _direct_groups(e, ty, f"{name}p{i}", ph.d, xp, e.gep(ty, tmp, offsets[i]))
        # the phases' positions to their places, a row of dx at a time: phase (a, b)'s
        # columns are sw·x + (b - pw) mod sw, so a row's phases interleave (one loop
        # storing all of them, which LLVM vectorises as an interleaved group)
        for a in sorted({ph.a for ph in phases}):
            row_phases = [(i, ph) for i, ph in enumerate(phases) if ph.a == a]
            rows = row_phases[0][1].rows
            first = (a - geo.ph) % geo.sh
            common = min(ph.cols for _, ph in row_phases)
            with e.rolled_loop(0, geo.C, scalar=True) as c:
                with e.rolled_loop(0, rows, scalar=True) as y:
                    row = _i(e, "add", _i(e, "mul", y, geo.sh), first)
                    place = _i(e, "add", _i(e, "mul", c, HW), _i(e, "mul", row, geo.W))
                    to = e.gep(ty, dx, place)
                    more = e.gep(ty, ax, place) if ax is not None else None
                    srcs = {i: e.gep(ty, tmp, _i(e, "add", offsets[i], _i(e, "mul", _i(
                        e, "add", _i(e, "mul", c, rows), y), ph.cols))) for i, ph in row_phases}

                    def put(x, i, ph) -> None:
                        v = literal(0.0, ty) if ph.d is None else \
                            e.emit(f"load {ty}, ptr {e.gep(ty, srcs[i], x)}")
                        col = _i(e, "add", _i(e, "mul", x, geo.sw), (ph.b - geo.pw) % geo.sw)
                        if more is not None:  # (+0.0 + a: a -0.0 becomes +0.0, as eager's)
                            a = e.emit(f"load {ty}, ptr {e.gep(ty, more, col)}")
                            v = e.emit(f"fadd {ty} {v}, {a}")
                        e.line(f"store {ty} {v}, ptr {e.gep(ty, to, col)}")
                    with e.rolled_loop(0, common) as x:
                        for i, ph in row_phases:
                            put(x, i, ph)
                    for i, ph in row_phases:
                        for x in range(common, ph.cols):
                            put(x, i, ph)
    e.line(f"call void @free(ptr {xp})")
    e.line(f"call void @free(ptr {tmp})")
    e.line("ret i32 0")
    b.helpers.append(e.function(f"define internal i32 @{name}q_samples("
                                f"{b._sample_params()})"))


@WINDOWS(P.CONV)
def _conv(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    """``y[n, g] = W[g] @ cols(x[n, g])`` per sample and group (at stride 1 on several
    samples, straight from the padded planes: :func:`_conv_direct`)."""
    ty = b._float_type()
    x, w = b.n.inputs
    geo = _geometry(b.n, x.shape, w.shape, x.shape[2:], b.n.out.shape[2:])
    HW, P_ = geo.H * geo.W, geo.positions

    def per_sample(e: Emitter, s: str, cols: str) -> None:
        with e.rolled_loop(0, geo.G, scalar=True) as grp:
            sg = _i(e, "add", _i(e, "mul", s, geo.G), grp)  # (sample, group)
            xg = e.gep(ty, "%x", _i(e, "mul", sg, geo.cg * HW))
            if not geo.direct:
                b._columns(e, geo, xg, cols, add=False)
            wg = e.gep(ty, "%w", e.emit(f"mul i64 {grp}, {geo.og * geo.rows}"))
            yg = e.gep(ty, "%y", _i(e, "mul", sg, geo.og * P_))
            e.lines.append(b._gemm(wg, geo.rows, 1, xg if geo.direct else cols, P_, 1,
                                     yg, geo.og, P_, geo.rows))

    if _staged(geo) and b._path(geo) == "direct":
        _conv_direct(b, name, _forward_direct(geo))
        b._by_samples(f"{name}d", geo, ins[0], ins[1], out)
        return
    b._samples_fn(name, geo, not geo.direct, per_sample)
    b._by_samples(name, geo, ins[0], ins[1], out)


@WINDOWS(P.CONV_TRANSPOSE)
def _conv_transpose(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    """``cols = W[g]^T @ y[n, g]`` per sample and group, added back to the window positions
    of the zeroed ``dx[n, g]`` (a 1x1 window: the product is ``dx[n, g]``). At stride 1, a
    correlation of the bordered ``y`` with the flipped window instead (:func:`_conv_direct`,
    every batch size: each ``dx`` element one chain of multiply-adds over (output channel,
    window row, window column)). With rule 8's addend (``b.addend``) the kernel writes that
    sum plus the addend, each element's sum complete before the add (see
    ``WindowBuilder._sample_params``)."""
    ty = b._float_type()
    y, w = b.n.inputs
    geo = _geometry(b.n, b.n.out.shape, w.shape, b.n.out.shape[2:], y.shape[2:])
    geo = Geometry(y.shape[0], *[getattr(geo, f) for f in (
        "C", "Co", "G", "H", "W", "KH", "KW", "OH", "OW", "sh", "sw", "ph", "pw", "dh", "dw")])
    HW, P_ = geo.H * geo.W, geo.positions
    d = _transpose_direct(geo) if _stride_one(geo) else None
    phases = None if geo.direct or d is not None else _transpose_phases(geo)
    direct = (d is not None or phases is not None) and b._path(geo) == "direct"
    if direct and d is not None:
        _conv_direct(b, name, d, addend=b.addend is not None)
        _refuse_non_finite(b, ty, ins[1], geo.Co * geo.rows)
        b._by_samples(f"{name}d", geo, ins[0], ins[1], out)
        return
    if direct:
        _conv_transpose_phased(b, name, geo, phases)
        _refuse_non_finite(b, ty, ins[1], geo.Co * geo.rows)
        b._by_samples(f"{name}q", geo, ins[0], ins[1], out)
        return

    def per_sample(e: Emitter, s: str, cols: str, buf: str | None = None) -> None:
        at = e.emit(f"mul i64 {s}, {geo.C * HW}")
        xs = buf if buf is not None else e.gep(ty, "%y", at)  # (rule 8: the sum in buf)
        if not geo.direct:
            e.line(f"call void @llvm.memset.p0.i64(ptr {xs}, i8 0, i64 "
                   f"{geo.C * HW * _size(ty)}, i1 false)")
        with e.rolled_loop(0, geo.G, scalar=True) as grp:
            wg = e.gep(ty, "%w", e.emit(f"mul i64 {grp}, {geo.og * geo.rows}"))
            sg = _i(e, "add", _i(e, "mul", s, geo.G), grp)  # (sample, group)
            yg = e.gep(ty, "%x", _i(e, "mul", sg, geo.og * P_))
            xg = e.gep(ty, xs, e.emit(f"mul i64 {grp}, {geo.cg * HW}"))
            e.lines.append(b._gemm(wg, 1, geo.rows, yg, P_, 1,
                                     xg if geo.direct else cols, geo.rows, P_, geo.og))
            if not geo.direct:
                b._columns(e, geo, xg, cols, add=True)
        if buf is not None:  # dx = the sample's sum + a, element by element
            dst, src = e.gep(ty, "%y", at), e.gep(ty, "%a", at)
            with e.rolled_loop(0, geo.C * HW) as i:
                v = e.emit(f"fadd {ty} {e.emit(f'load {ty}, ptr {e.gep(ty, buf, i)}')}, "
                           f"{e.emit(f'load {ty}, ptr {e.gep(ty, src, i)}')}")
                e.line(f"store {ty} {v}, ptr {e.gep(ty, dst, i)}")

    b._samples_fn(name, geo, not geo.direct, per_sample,
                  scratch=geo.C * HW if b.addend is not None else 0)
    b._by_samples(name, geo, ins[0], ins[1], out)


def _refuse_non_finite(b: WindowBuilder, ty: str, w: str, count: int) -> None:
    """Return :data:`NON_FINITE_WEIGHT` from the kernel when any of the ``count`` weights at
    ``w`` is an inf or a NaN.

    Note (the correlation's border): the input gradient read as a correlation of the
    zero-bordered output gradient (:func:`_transpose_direct`, :func:`_transpose_phases`)
    multiplies weights by border zeros for window positions outside the output — terms
    eager's col2im never forms. With finite weights they add +0.0 (or -0.0 to a sum that is
    then not -0.0 alone: the chain starts from +0.0) and change nothing; an inf or a NaN
    weight makes them NaN where eager (and PyTorch) give a number. Such a call runs the
    runner's plan instead (numpy's steps, as eager), as when a work buffer is refused."""
    blk = b.fresh("F")
    with b.loop(f"%{blk}.i", count, block=blk, exit=f"{blk}.done",
                carry=[(f"%{blk}.any", "i1", "false")]) as lp:
        v = b.emit(f"load {ty}, ptr {b.gep(ty, w, f'%{blk}.i')}")
        z = b.emit(f"fmul {ty} {v}, {literal(0.0, ty)}")  # (NaN exactly for an inf or a NaN)
        lp.next = [b.emit(f"or i1 %{blk}.any, {b.emit(f'fcmp uno {ty} {z}, {z}')}")]
    with b.when(lp.next[0]):
        b.line(f"ret i32 {NON_FINITE_WEIGHT}")


def _wg_tile(vector_bits: int) -> tuple:
    """The weight gradient's register tile: (output channels, window elements) — with
    their vectors of positions loaded, 4 x 6 accumulators fill 29 of AVX-512's 32 vector
    registers, 2 x 6 15 of AVX2's 16."""
    return (4, 6) if vector_bits >= 512 else (2, 6)


WG_TOTALS = 16 << 10  # bytes of one weight-gradient task's running sums (on its stack)
WG_TASKS = 16  # tasks a weight gradient is split into at least, where it has the tiles
UNROLL_ROW = 2  # vectors of an output row up to which the weight gradient writes them out
WG_SAMPLES = 8  # samples a weight-gradient tile sums in its registers before its running sums


def _weight_grad_staged(b: WindowBuilder, name: str, geo: Geometry, ins: list,
                        out: str) -> None:
    """The weight gradient from staged planes (:class:`Direct`, the forward's), nothing
    packed: ``dW[o, k] = sum over (n, y, x) of g[n, o, y, x] · xs[n, off(k) + y·Wp + x]``.

    Vectorised along the output rows: a register tile of ``MO`` output channels x ``MK``
    window elements holds a vector of partial sums each; per vector of positions it loads
    ``MO`` vectors of ``g`` (as it lies) and ``MK`` of the staged input, and multiply-adds
    every pair (a row's last, partial vector loaded masked: zeros beyond). Per block of
    ``WG_SAMPLES`` samples the tile starts from zeros and is then added to the running sums
    (in sample order: on small planes a sample's rows are too few to pay for the running
    sums' loads and stores); at the end each sum's lanes are added in order. So each dW
    element's rounding depends on the shapes only — not on the threads, nor on how the work
    is split.

    The input is staged first (a part per thread, samples in turn). Then tasks of (group,
    ``MO`` output channels, a run of ``MK``-element blocks) run in parallel, each over all
    samples, a block of samples at a time (its ``g`` rows stay in cache across its blocks)."""
    ty, size = b.ty, _size(b.ty)
    vl, vt, sfx, b.direct_decls = vector_ir(ty)
    d = _forward_direct(geo)
    K, P_, HW = geo.rows, geo.positions, geo.H * geo.W
    MO, MK = _wg_tile(gemm.vector_bits())
    offs = d.offsets()
    n_ob, n_kb = -(-geo.og // MO), -(-K // MK)
    # (the last block's elements past K read the last one's offset: computed, never stored)
    offs += [offs[-1]] * (n_kb * MK - K)
    b.helpers.append(f"@{name}_off = internal unnamed_addr constant [{len(offs)} x i64] ["
                     + ", ".join(f"i64 {o}" for o in offs) + "], align 8\n\n")
    full, tail = divmod(geo.OW, vl)
    tail_mask = f"<{vl} x i1> <" + ", ".join(f"i1 {'true' if j < tail else 'false'}"
                                           for j in range(vl)) + ">"
    hint = f", !llvm.loop {jit.ROLLED_LOOP}"
    most = max(1, WG_TOTALS // (MO * MK * vl * size))  # blocks per task (its sums' room)
    runs = max(-(-n_kb // most), min(n_kb, -(-WG_TASKS // (geo.G * n_ob))))
    per_run = -(-n_kb // runs)
    runs = -(-n_kb // per_run)

    def load(e: Emitter, p: str, masked: bool) -> str:
        if masked:
            return e.emit(f"call {vt} @llvm.masked.load.v{vl}{sfx}.p0(ptr {p}, i32 {size}, "
                          f"{tail_mask}, {vt} zeroinitializer)")
        return e.emit(f"load {vt}, ptr {p}, align {size}")

    def step(e: Emitter, xr: str, grows: list, at, offs_r: list, acc, masked: bool) -> list:
        """One vector of positions at ``at`` along an output row (``xr``: the staged row;
        ``grows``: each channel's ``g`` row): the tile's new partial sums, in (channel,
        element) order."""
        gs = [load(e, e.gep(ty, gr, at), masked) for gr in grows]
        out = {}
        for r, off in enumerate(offs_r):
            xv = load(e, e.gep(ty, xr, _i(e, "add", at, off)), masked)
            for o in range(MO):
                if gemm.has_fma():
                    out[o, r] = e.emit(f"call {vt} @llvm.fma.v{vl}{sfx}({vt} {gs[o]}, "
                                       f"{vt} {xv}, {vt} {acc(o, r)})")
                else:
                    out[o, r] = e.emit(f"fadd {vt} {acc(o, r)}, "
                                       f"{e.emit(f'fmul {vt} {gs[o]}, {xv}')}")
        return [out[o, r] for o in range(MO) for r in range(MK)]

    def ly_body(e: Emitter, ly, xsn: str, g_rows: list, offs_r: list, regs: list) -> None:
        """One output row ``%y`` of a sample: its vectors of positions onto the tile."""
        xr = e.gep(ty, xsn, _i(e, "mul", "%y", d.Wp))
        grows = [e.gep(ty, gr, _i(e, "mul", "%y", geo.OW)) for gr in g_rows]
        acc = [f"%y.a{o}.{r}" for o, r in regs]
        for v in range(full if full <= UNROLL_ROW else 0):  # (short rows written out)
            acc = step(e, xr, grows, v * vl, offs_r, lambda o, r, acc=acc: acc[o * MK + r],
                       False)
        if full > UNROLL_ROW:
            with e.loop("%v", full, block="bv", exit="bv.done", hint=hint,
                        carry=[(f"%v.a{o}.{r}", vt, a) for (o, r), a in zip(regs, acc)]) as lv:
                lv.next = step(e, xr, grows, _i(e, "mul", "%v", vl), offs_r,
                               lambda o, r: f"%v.a{o}.{r}", False)
            acc = lv.next
        if tail:
            acc = step(e, xr, grows, full * vl, offs_r, lambda o, r, acc=acc: acc[o * MK + r],
                       True)
        ly.next = acc

    # @<name>_kb(xn, gn, tot, k, omax, ns): the tile of channels [0, MO) from gn's and window
    # elements [k, k + MK) over ns samples (from xn, gn on), onto the sums at tot. A last
    # block's channels past omax read channel omax's row, and its elements past K the last
    # one's (computed, never stored): one function for every block, whatever the tails.
    e = Emitter()
    e.label("entry")
    offs_r = [e.emit(f"load i64, ptr {e.gep('i64', f'@{name}_off', _i(e, 'add', '%k', r))}")
              for r in range(MK)]
    g_base = [_i(e, "mul", e.min(o, "%omax"), P_) for o in range(MO)]
    regs = [(o, r) for o in range(MO) for r in range(MK)]
    with e.loop("%s", "%ns", block="bs", exit="bs.done", hint=hint,
                carry=[(f"%s.a{o}.{r}", vt, "zeroinitializer") for o, r in regs]) as ls:
        xsn = e.gep(ty, "%xn", _i(e, "mul", "%s", geo.C * d.plane))
        gsn = e.gep(ty, "%gn", _i(e, "mul", "%s", geo.Co * P_))
        g_rows = [e.gep(ty, gsn, gb) for gb in g_base]
        with e.loop("%y", geo.OH, block="by", exit="by.done", hint=hint,
                    carry=[(f"%y.a{o}.{r}", vt, f"%s.a{o}.{r}") for o, r in regs]) as ly:
            ly_body(e, ly, xsn, g_rows, offs_r, regs)
        ls.next = ly.next
    acc = ls.next
    for i in range(len(regs)):
        at = e.gep(vt, "%tot", i)
        t = e.emit(f"fadd {vt} {e.emit(f'load {vt}, ptr {at}, align {vl * size}')}, {acc[i]}")
        e.line(f"store {vt} {t}, ptr {at}, align {vl * size}")
    e.line("ret void")
    # (noinline: inlined into its one caller, the optimiser's passes over the two took
    #  twice as long, ~30 ms a kernel)
    b.helpers.append(e.function(f"define internal void @{name}_kb(ptr noalias %xn, ptr noalias "
                                f"%gn, ptr noalias %tot, i64 %k, i64 %omax, i64 %ns) noinline"))

    # @<name>_run(xs, g, dw, grp, o0, j0, j1): blocks [j0, j1) of output channels [o0, o0 +
    # MO) of group grp, over every sample; then each sum's lanes, in order, into dW
    N = literal(geo.N, "i64")
    tile_bytes = MO * MK * vl * size
    e = Emitter()
    e.label("entry")
    e.line(f"%tot = alloca [{per_run * MO * MK} x {vt}], align 64")
    e.line(f"call void @llvm.memset.p0.i64(ptr %tot, i8 0, i64 {per_run * tile_bytes}, "
           f"i1 false)")
    mo = e.min(MO, e.emit(f"sub i64 {geo.og}, %o0"))
    omax = _i(e, "sub", mo, 1)
    with e.rolled_loop(0, N, WG_SAMPLES, scalar=True) as n:
        ns = e.min(WG_SAMPLES, e.emit(f"sub i64 {N}, {n}"))
        xn = e.gep(ty, "%xs", _i(e, "add", _i(e, "mul", n, geo.C * d.plane),
                                 _i(e, "mul", "%grp", geo.cg * d.plane)))
        gn = e.gep(ty, "%g", _i(e, "mul", _i(e, "add", _i(e, "mul", n, geo.Co),
                                              _i(e, "add", _i(e, "mul", "%grp", geo.og),
                                                 "%o0")), P_))
        with e.rolled_loop("%j0", "%j1", scalar=True) as j:
            tot = e.gep(vt, "%tot", _i(e, "mul", _i(e, "sub", j, "%j0"), MO * MK))
            e.line(f"call void @{name}_kb(ptr {xn}, ptr {gn}, ptr {tot}, "
                   f"i64 {_i(e, 'mul', j, MK)}, i64 {omax}, i64 {ns})")
    with e.rolled_loop("%j0", "%j1", scalar=True) as j:
        k0 = _i(e, "mul", j, MK)
        mk = e.min(MK, e.emit(f"sub i64 {K}, {k0}"))
        with e.rolled_loop(0, mo, scalar=True) as o:
            row = e.gep(ty, "%dw", _i(e, "add", _i(e, "mul", _i(e, "add", _i(
                e, "add", _i(e, "mul", "%grp", geo.og), "%o0"), o), K), k0))
            with e.rolled_loop(0, mk, scalar=True) as r:
                lanes = e.gep(ty, "%tot", _i(e, "mul", _i(e, "add", _i(e, "mul", _i(
                    e, "sub", j, "%j0"), MO * MK), _i(e, "add", r, _i(e, "mul", o, MK))), vl))
                blk = e.fresh("H")
                with e.loop(f"%{blk}.l", vl, start=1, block=blk, exit=f"{blk}.done", hint=hint,
                            carry=[(f"%{blk}.s", ty, e.emit(f"load {ty}, ptr {lanes}"))]) as lh:
                    lv_ = e.emit(f"load {ty}, ptr {e.gep(ty, lanes, f'%{blk}.l')}")
                    lh.next = [e.emit(f"fadd {ty} %{blk}.s, {lv_}")]
                e.line(f"store {ty} {lh.next[0]}, ptr {e.gep(ty, row, r)}")
    e.line("ret void")
    b.helpers.append(e.function(
        f"define internal void @{name}_run(ptr noalias %xs, ptr noalias %g, "
        f"ptr noalias %dw, i64 %grp, i64 %o0, i64 %j0, i64 %j1)"))

    tasks = geo.G * n_ob * runs
    e = Emitter()  # void @<name>_task(xs, g, dw, t): task t = (group, channel block, run)
    e.label("entry")
    run = _i(e, "urem", "%t", runs)
    gb = _i(e, "udiv", "%t", runs)
    ob, grp = _i(e, "urem", gb, n_ob), _i(e, "udiv", gb, n_ob)
    j0 = _i(e, "mul", run, per_run)
    j1 = e.min(_i(e, "add", j0, per_run), n_kb)
    e.line(f"call void @{name}_run(ptr %xs, ptr %g, ptr %dw, i64 {grp}, "
           f"i64 {_i(e, 'mul', ob, MO)}, i64 {j0}, i64 {j1})")
    e.line("ret void")
    b.helpers.append(e.function(f"define internal void @{name}_task(ptr noalias %xs, "
                                f"ptr noalias %g, ptr noalias %dw, i64 %t)"))

    e = Emitter()  # void @<name>_stage(x, xs, s): sample s staged (its zeros, its input)
    e.label("entry")
    xs_s = e.gep(ty, "%xs", _i(e, "mul", "%s", geo.C * d.plane))
    _zero_border(e, ty, d, xs_s)
    _stage(e, ty, d, e.gep(ty, "%x", _i(e, "mul", "%s", geo.C * HW)), xs_s)
    e.line("ret void")
    b.helpers.append(e.function(f"define internal void @{name}_stage(ptr noalias %x, "
                                f"ptr noalias %xs, i64 %s)"))

    xin, gin = ins
    xbytes = b.emit(f"mul i64 {N}, {geo.C * d.plane * size}")
    xs = _malloc(b, xbytes)
    with b.when(b.emit(f"icmp eq ptr {xs}, null")):
        b.line(f"ret i32 {ALLOC_FAILED}")
    if threads.find() is not None:
        b.line("%wctx = alloca [4 x i64], align 8")
        for k, v in enumerate([xin, gin, xs, out]):
            b.line(f"store ptr {v}, ptr {b.gep('i64', '%wctx', k)}")
        b.line(f"call void @dg_parallel(ptr @{name}_stage_blocks, ptr %wctx, i64 0)")
        b.line(f"call void @dg_parallel(ptr @{name}_task_blocks, ptr %wctx, i64 {tasks})")
        for fn in ("stage", "task"):
            f = Emitter()
            f.label("entry")
            for k, reg in enumerate(["%x", "%g", "%xs", "%dw"]):
                f.line(f"{reg} = load ptr, ptr {f.gep('i64', '%ctx', k)}")
            if fn == "stage":  # samples tid, tid + nt, ...
                with f.rolled_loop("%tid", N, "%nt", scalar=True) as s:
                    f.line(f"call void @{name}_stage(ptr %x, ptr %xs, i64 {s})")
            else:
                f.line(f"call void @{name}_task(ptr %xs, ptr %g, ptr %dw, i64 %tid)")
            f.line("ret void")
            b.helpers.append(f.function(f"define internal void @{name}_{fn}_blocks(ptr %ctx, "
                                        f"i64 %tid, i64 %nt)"))
    else:
        with b.rolled_loop(0, N, scalar=True) as s:
            b.line(f"call void @{name}_stage(ptr {xin}, ptr {xs}, i64 {s})")
        with b.rolled_loop(0, tasks, scalar=True) as t:
            b.line(f"call void @{name}_task(ptr {xs}, ptr {gin}, ptr {out}, i64 {t})")
    b.line(f"call void @free(ptr {xs})")
    b.line("ret i32 0")


@WINDOWS(P.CONV_WEIGHT_GRAD)
def _conv_weight_grad(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    """``dW[g] = sum over n of g[n, g] @ cols(x[n, g])^T``: ``WG_PARTS`` fixed blocks of
    samples (fewer with fewer samples), each summed in order into a partial sum of its own
    (in parallel), then the partial sums added in order — where the planes are not staged
    (:func:`_staged`; else :func:`_weight_grad_staged`)."""
    ty = b._float_type()
    x, gout = b.n.inputs
    geo = _geometry(b.n, x.shape, b.n.out.shape, x.shape[2:], gout.shape[2:])
    if _staged(geo) and b._path(geo) == "direct":
        _weight_grad_staged(b, name, geo, ins, out)
        return
    HW, P_, size = geo.H * geo.W, geo.positions, _size(ty)
    whole = geo.Co * geo.rows  # dW's elements
    parts = WG_PARTS if geo.N >= WG_PARTS else int(geo.N)
    N = literal(geo.N, "i64")

    e = Emitter()  # i32 @<name>_part(x, g, acc, n0, n1): samples [n0, n1) into acc
    e.label("entry")
    cols = "null" if geo.direct else _malloc(e, geo.rows * P_ * size)
    prod = _malloc(e, geo.og * geo.rows * size)
    bad = e.emit(f"icmp eq ptr {prod}, null")
    if not geo.direct:
        bad = e.emit(f"or i1 {bad}, {e.emit(f'icmp eq ptr {cols}, null')}")
    with e.when(bad):
        e.line(f"call void @free(ptr {prod})")
        e.line(f"call void @free(ptr {cols})")
        e.line(f"ret i32 {ALLOC_FAILED}")
    e.line(f"call void @llvm.memset.p0.i64(ptr %acc, i8 0, i64 {whole * size}, i1 false)")
    with e.rolled_loop("%n0", "%n1", scalar=True) as s:
        with e.rolled_loop(0, geo.G, scalar=True) as grp:
            sg = _i(e, "add", _i(e, "mul", s, geo.G), grp)
            xg = e.gep(ty, "%x", e.emit(f"mul i64 {sg}, {geo.cg * HW}"))
            if not geo.direct:
                b._columns(e, geo, xg, cols, add=False)
            gg = e.gep(ty, "%g", e.emit(f"mul i64 {sg}, {geo.og * P_}"))
            e.lines.append(b._gemm(gg, P_, 1, xg if geo.direct else cols, 1, P_, prod,
                                     geo.og, geo.rows, P_))
            acc = e.gep(ty, "%acc", e.emit(f"mul i64 {grp}, {geo.og * geo.rows}"))
            with e.rolled_loop(0, geo.og * geo.rows) as i:
                pa = e.gep(ty, acc, i)
                v = e.emit(f"fadd {ty} {e.emit(f'load {ty}, ptr {pa}')}, "
                           f"{e.emit(f'load {ty}, ptr {e.gep(ty, prod, i)}')}")
                e.line(f"store {ty} {v}, ptr {pa}")
    e.line(f"call void @free(ptr {prod})")
    e.line(f"call void @free(ptr {cols})")
    e.line("ret i32 0")
    b.helpers.append(e.function(f"define internal i32 @{name}_part(ptr noalias %x, ptr "
                                f"noalias %g, ptr noalias %acc, i64 %n0, i64 %n1)"))

    def part(f: Emitter, q, acc: str) -> str:
        n0 = _i(f, "udiv", _i(f, "mul", q, N), parts)
        n1 = _i(f, "udiv", _i(f, "mul", _i(f, "add", q, 1), N), parts)
        at = f.gep(ty, acc, f.emit(f"mul i64 {q}, {whole}"))
        return f.emit(f"call i32 @{name}_part(ptr %x, ptr %g, ptr {at}, i64 {n0}, i64 {n1})")

    xin, gin = ins
    if parts == 1:
        st = b.emit(f"call i32 @{name}_part(ptr {xin}, ptr {gin}, ptr {out}, i64 0, i64 {N})")
        b.line(f"ret i32 {st}")
        return
    acc = _malloc(b, parts * whole * size)
    with b.when(b.emit(f"icmp eq ptr {acc}, null")):
        b.line(f"ret i32 {ALLOC_FAILED}")
    b.line(f"%x = getelementptr i8, ptr {xin}, i64 0")
    b.line(f"%g = getelementptr i8, ptr {gin}, i64 0")
    if threads.find() is not None:
        args = [("ptr", "%x"), ("ptr", "%g"), ("ptr", acc)]
        slots = len(args) + 1
        b.line(f"%ctx = alloca [{slots} x i64], align 8")
        for k, (t, v) in enumerate(args):
            b.line(f"store {t} {v}, ptr {b.gep('i64', '%ctx', k)}")
        b.line(f"store i32 0, ptr {b.gep('i64', '%ctx', slots - 1)}")
        b.lines += threads.split_call(name, parts).split("\n")
        b.block = "par.joined"
        status = b.emit(f"load i32, ptr {b.gep('i64', '%ctx', slots - 1)}")
        b._blocks(name, [("ptr", "%x"), ("ptr", "%g"), ("ptr", "%acc")],
                  lambda f: part(f, "%tid", "%acc"))
    else:  # (the status after the loop: the last block's or, which the exit follows)
        with b.loop("%q", parts, block="parts", exit="parts.done",
                    carry=[("%status", "i32", "0")]) as lp:
            st = part(b, "%q", acc)
            lp.next = [b.emit(f"or i32 %status, {st}")]
        status = lp.next[0]
    failed = b.emit(f"icmp ne i32 {status}, 0")
    with b.when(failed):
        b.line(f"call void @free(ptr {acc})")
        b.line(f"ret i32 {ALLOC_FAILED}")
    with b.rolled_loop(0, whole) as i:  # the partial sums, in order
        v = b.emit(f"load {ty}, ptr {b.gep(ty, acc, i)}")
        for q in range(1, parts):
            at = b.gep(ty, acc, _i(b, "add", i, q * whole))
            v = b.emit(f"fadd {ty} {v}, {b.emit(f'load {ty}, ptr {at}')}")
        b.line(f"store {ty} {v}, ptr {b.gep(ty, out, i)}")
    b.line(f"call void @free(ptr {acc})")
    b.line("ret i32 0")


# ------------------------------------------------------------------ the choice of path


_BATCHED = {  # per convolution primitive: which of (inputs..., output) have the batch first
    P.CONV: (True, False, True),
    P.CONV_TRANSPOSE: (True, False, True),
    P.CONV_WEIGHT_GRAD: (True, True, False),
}


def _shape_key(ty: str, geo: Geometry) -> str:
    """A convolution direction's shape as ``convtune`` keeps its decision: the dtype, one
    sample's geometry and whether the batch is one sample (its GEMMs then split across the
    threads) or more (a part per thread) — not the batch size, which changes the time of
    both paths alike."""
    one = "1" if int(geo.N) == 1 else "many"
    return (f"{'f32' if ty == 'float' else 'f64'} n={one} c={geo.C} o={geo.Co} g={geo.G} "
            f"in={geo.H}x{geo.W} k={geo.KH}x{geo.KW} out={geo.OH}x{geo.OW} "
            f"s={geo.sh},{geo.sw} p={geo.ph},{geo.pw} d={geo.dh},{geo.dw}")


def race(n, geo: Geometry | None = None) -> dict:
    """Seconds per call of each path's kernel for convolution node ``n`` (its ``geo``) on a
    slice of its batch (``convtune.SAMPLES`` samples, or one for a lone sample): both
    kernels built as the graph's would be, with the path forced, in one module (compiled
    here, or by :func:`prepare`'s thread), run on random operands (``convtune.race``).
    Example: ``race(n)`` is ``{"columns": 2.1e-4, "direct": 2.7e-4}`` for W7a's conv2 input
    gradient on the 2-core Zen 4 machine."""
    geo = geometry(n) if geo is None else geo
    key = (n.prim.name, _shape_key(LLTYPE[n.out.dtype.name], geo))
    with _lock:
        job = _timing_jobs.pop(key, None)
    if job is not None:
        job[0].join()
    made = job[1][0] if job is not None and job[1] else _timing_module(n, geo)
    if isinstance(made, Exception):  # (prepare's thread failed: raised here, once)
        raise made
    compiled, layout = made
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(tuple(int(s) for s in v.shape)).astype(v.dtype.np)
              for v in layout]
    args = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    calls = {}
    for path in convtune.PATHS:
        fn = compiled.cfunc(f"dg_race_{path}", ctypes.c_int32, ctypes.c_void_p, ctypes.c_int64)
        calls[path] = lambda fn=fn, path=path: _ran(fn(args, 0), path)
    return convtune.race(calls)


def _ran(status: int, path: str) -> None:
    """A timing kernel's status: nonzero (a column buffer it could not allocate) is a
    failed race — not a fast kernel."""
    if status != 0:
        raise RuntimeError(f"convolution timing: the {path} kernel returned status {status}")


def prepare(g) -> None:
    """Start building and compiling, on a thread each, the timing modules (:func:`race`) of
    the convolutions of graph ``g`` whose path will be measured — as ``gemm.prepare`` starts
    the GEMM's compile: LLVM (which releases the GIL) works on another core while the
    graph's fusion and its other kernels' IR are worked out in Python (a module builds its
    window kernels last: ``late``); the timing itself runs where the decision is asked. A
    failure there is kept for :func:`race` to raise. Example: ``runner.compile_graph``
    calls ``prepare(g)`` before fusing ``g``."""
    todo = []
    for n in g.nodes:
        ty = LLTYPE.get(n.out.dtype.name)
        if n.prim not in _BATCHED or ty not in ("float", "double"):
            continue
        try:
            geo = geometry(n)
        except NotImplementedError:
            continue
        key = (n.prim.name, _shape_key(ty, geo))
        if _has_direct(n.prim, geo) and key not in _timing_jobs and not any(
                k == key for k, _, _ in todo) and convtune.wanted(
                    *key, convtune.rule(n.prim.name, geo)):
            todo.append((key, n, geo))
    for key, n, geo in todo:  # (IR too: a column path waits for the GEMM's library)
        box: list = []
        th = threading.Thread(target=_make_timing_module, args=(box, n, geo),
                              name="dyngrad-conv-race", daemon=True)
        with _lock:
            _timing_jobs[key] = (th, box)
        th.start()


def _make_timing_module(box: list, n, geo: Geometry) -> None:
    """:func:`prepare`'s thread: ``box`` gets the timing module, or the exception that
    stopped it (for :func:`race` to raise, not a thread's traceback on stderr)."""
    try:
        box.append(_timing_module(n, geo))
    except Exception as exc:
        box.append(exc)


_timing_jobs: dict = {}  # prepare's: (direction, shape key) -> (its thread, a list that
#                          receives (compiled module, argument layout) or the exception)
_lock = threading.Lock()


def _has_direct(prim, geo: Geometry) -> bool:
    """Whether direction ``prim`` of ``geo``'s convolution has a direct kernel (else it has
    the column path only)."""
    if prim is P.CONV_TRANSPOSE:
        return (_stride_one(geo) and _transpose_direct(geo) is not None) or (
            not geo.direct and _transpose_phases(geo) is not None)
    return _staged(geo)


def _timing_module(n, geo: Geometry) -> tuple:
    """(the compiled :func:`_timing_ir` of ``n``, its argument layout)."""
    text, layout = _timing_ir(n, geo)
    return jit.compile_ir(text), layout


def _timing_ir(n, geo: Geometry) -> tuple:
    """(IR of both paths' kernels ``@dg_race_<path>`` for ``n`` on a slice of its batch,
    their argument layout)."""
    samples = 1 if int(geo.N) == 1 else min(int(geo.N), convtune.SAMPLES)
    values = [_with_batch(v, samples) if batched else v
              for v, batched in zip([*n.inputs, n.out], _BATCHED[n.prim], strict=True)]
    node = Node(n.prim, values[:-1], n.params, values[-1])
    texts, decls, layout = [], [], None
    for path in convtune.PATHS:
        b = node_builder(node, path)
        text, _, layout = b.build(f"dg_race_{path}", prelude=False)
        texts.append(text)
        decls += [d for d in b.declarations().splitlines(keepends=True) if d not in decls]
    return prelude_ir([]) + "".join(decls) + "".join(texts), layout


def geometry(n) -> Geometry:
    """The geometry of convolution node ``n``'s convolution (of any direction). Example:
    for W7a's conv2 weight gradient, ``Geometry(N=64, C=32, Co=64, ..., OH=24, OW=24, ...)``."""
    return _geometry(n, *_CONV_SHAPES[n.prim](n))


def node_builder(n: Node, path: str | None = None) -> WindowBuilder:
    """The kernel builder of window node ``n`` alone (a graph of that one node), its
    convolution's path forced to ``path`` where given — a timing module's kernel, or a
    test's. Example: ``node_builder(n, "columns").build()[0]`` is the column path's IR."""
    grp = FusionGroup(GroupKind.WINDOW, [0], n.value_inputs(), [n.out], ())
    b = WindowBuilder(_OneNode([n]), grp)
    b.path = path
    return b


def _with_batch(v: Value, samples: int) -> Value:
    """A value like ``v`` with ``samples`` in its first dimension."""
    return Value(v.id, (samples, *v.shape[1:]), v.dtype, v.name)


@dataclass
class _OneNode:
    """A graph of one node, as a kernel builder reads it."""

    nodes: list


# ------------------------------------------------------------------ pooling indices


@dataclass(frozen=True)
class _Windows:
    """Where a pooling kernel's windows lie in planes of ``H x W`` with ``OH x OW`` outputs:
    fixed windows (``kernel``, ``stride``, low ``padding``, ``dilation``) or adaptive ones
    (``kernel`` None: output i covers [floor(i·S/O), ceil((i+1)·S/O)))."""

    H: int
    W: int
    OH: int
    OW: int
    kernel: tuple | None = None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)

    def reads(self) -> int:
        """Window reads per output position (an adaptive window's largest)."""
        if self.kernel is not None:
            return self.kernel[0] * self.kernel[1]
        return (-(-self.H // self.OH) + 1) * (-(-self.W // self.OW) + 1)

    def inside(self) -> bool:
        """Whether every fixed window lies inside the input (no padding read)."""
        return self.kernel is not None and all(
            pad == 0 and (o - 1) * st + (k - 1) * dil + 1 <= size for o, st, k, dil, pad, size
            in zip((self.OH, self.OW), self.stride, self.kernel, self.dilation, self.padding,
                   (self.H, self.W)))

    def axis(self, e: Emitter, o: str, d: int) -> tuple:
        """Along dim ``d`` (0: rows) for output ``o``: the window's first index (may be
        negative), its step, its length, and its first index inside the input."""
        size, outs = (self.H, self.OH) if d == 0 else (self.W, self.OW)
        if self.kernel is None:
            start = _i(e, "udiv", _i(e, "mul", o, size), outs)
            end = _i(e, "udiv", _i(e, "add", _i(e, "mul", _i(e, "add", o, 1), size), outs - 1),
                     outs)
            return start, 1, _i(e, "sub", end, start), start
        k, st, pad, dil = self.kernel[d], self.stride[d], self.padding[d], self.dilation[d]
        start = _i(e, "sub", _i(e, "mul", o, st), pad)
        # PyTorch's clipped start: while start < 0, start += dilation
        skip = _i(e, "udiv", _i(e, "add", _i(e, "sub", 0, start), dil - 1), dil)
        clipped = _i(e, "add", start, _i(e, "mul", skip, dil))
        first = e.emit(f"select i1 {e.emit(f'icmp slt i64 {start}, 0')}, i64 {clipped}, "
                       f"i64 {start}")
        return start, dil, k, first


def _greater(e: Emitter, ty: str, v: str, best: str, unsigned: bool = False) -> str:
    """PyTorch's test for a new maximum: greater, or NaN (integers: greater; a bool, a
    byte 0 or 1, and uint8 compared unsigned)."""
    if ty in INTEGER:
        return e.emit(f"icmp {'ugt' if unsigned else 'sgt'} {ty} {v}, {best}")
    return e.emit(f"or i1 {e.emit(f'fcmp ogt {ty} {v}, {best}')}, "
                  f"{e.emit(f'fcmp uno {ty} {v}, 0.0')}")


def _scan_unrolled(e: Emitter, ty: str, xq: str, win: _Windows, hs: str, ws: str,
                   unsigned: bool) -> str:
    """A fixed window inside the input, its positions written out (no tests, no loops):
    the first one is the maximum so far — as it is after PyTorch's first step from
    ``-inf`` — and each next one replaces it by :func:`_greater`. Returns the position."""
    base = _i(e, "add", _i(e, "mul", hs, win.W), ws)
    best = at = ""
    for ki in range(win.kernel[0]):
        for kj in range(win.kernel[1]):
            pos = _i(e, "add", base, ki * win.dilation[0] * win.W + kj * win.dilation[1])
            v = e.emit(f"load {ty}, ptr {e.gep(ty, xq, pos)}")
            if not best:
                best, at = v, pos
                continue
            up = _greater(e, ty, v, best, unsigned)
            best = e.emit(f"select i1 {up}, {ty} {v}, {ty} {best}")
            at = e.emit(f"select i1 {up}, i64 {pos}, i64 {at}")
    return at


def _scan(e: Emitter, ty: str, xq: str, win: _Windows, rows: tuple, cols: tuple,
          unsigned: bool) -> str:
    """Any window: from ``-inf`` (an integer dtype's least value) at the clipped first
    position, every position inside the input in order. ``rows``/``cols``: the window's
    first index, step, length and clipped first index along each dim (``_Windows.axis``).
    Returns the position."""
    (hs, dh, kh, h0), (ws, dw, kw, w0) = rows, cols
    low = ("0" if unsigned else str(-(1 << (bits(ty) - 1)))) if ty in INTEGER \
        else "0xFFF0000000000000"  # (-inf)
    e.line(f"store {ty} {low}, ptr %best")
    e.line(f"store i64 {_i(e, 'add', _i(e, 'mul', h0, win.W), w0)}, ptr %at")
    with e.rolled_loop(0, kh, scalar=True) as ki:
        ih = _i(e, "add", hs, _i(e, "mul", ki, dh))
        with e.when(e.emit(f"icmp ult i64 {ih}, {win.H}")):  # (0 <= ih < H)
            with e.rolled_loop(0, kw, scalar=True) as kj:
                iw = _i(e, "add", ws, _i(e, "mul", kj, dw))
                with e.when(e.emit(f"icmp ult i64 {iw}, {win.W}")):
                    pos = _i(e, "add", _i(e, "mul", ih, win.W), iw)
                    v = e.emit(f"load {ty}, ptr {e.gep(ty, xq, pos)}")
                    with e.when(_greater(e, ty, v, e.emit(f"load {ty}, ptr %best"),
                                         unsigned)):
                        e.line(f"store {ty} {v}, ptr %best")
                        e.line(f"store i64 {pos}, ptr %at")
    return e.emit("load i64, ptr %at")


def _pool(b: WindowBuilder, name: str, ins: list, out: str, win: _Windows, nd: int) -> None:
    """A pooling-index kernel: for each plane and output position, the window scanned in
    order (positions outside the input skipped) with PyTorch's rule (module docstring).
    A fixed window that always lies inside the input and has at most ``UNROLL_WINDOW``
    positions is written out (:func:`_scan_unrolled`: the mnist model's 2x2 pool ran 5x
    faster so than by :func:`_scan`)."""
    x = b.n.inputs[0]
    dt = x.dtype.name
    if dt not in LLTYPE:
        raise NotImplementedError(f"LLVM window codegen: pooling of {dt}")
    ty = MEMTYPE[LLTYPE[dt]]  # (a bool: its byte)
    unsigned = dt in UNSIGNED or dt == "bool"
    ity = LLTYPE[b.n.out.dtype.name]  # the indices' type: i64, or i32 (narrowed)
    H, W, OH, OW = win.H, win.W, win.OH, win.OW
    planes = 1
    for s in b.n.out.shape[:-nd]:
        planes = planes * s
    unrolled = win.inside() and win.reads() <= UNROLL_WINDOW
    e = Emitter()
    e.label("entry")
    if not unrolled:
        e.line(f"%best = alloca {ty}")
        e.line("%at = alloca i64")
    with e.rolled_loop("%q0", "%q1", scalar=True) as q:
        xq = e.gep(ty, "%x", e.emit(f"mul i64 {q}, {H * W}"))
        yq = e.gep(ity, "%y", e.emit(f"mul i64 {q}, {OH * OW}"))
        with e.rolled_loop(0, OH, scalar=True) as oh:
            rows = win.axis(e, oh, 0)
            with e.rolled_loop(0, OW) as ow:
                cols = win.axis(e, ow, 1)
                at = (_scan_unrolled(e, ty, xq, win, rows[0], cols[0], unsigned) if unrolled
                      else _scan(e, ty, xq, win, rows, cols, unsigned))
                dst = e.gep(ity, yq, _i(e, "add", _i(e, "mul", oh, OW), ow))
                if ity != "i64":
                    at = e.emit(f"trunc i64 {at} to {ity}")
                e.line(f"store {ity} {at}, ptr {dst}")
    e.line("ret i32 0")
    b.helpers.append(e.function(f"define internal i32 @{name}_planes(ptr noalias %x, ptr "
                                f"noalias %y, i64 %q0, i64 %q1)"))
    count = literal(planes, "i64")
    if threads.find() is not None and planes * OH * OW * win.reads() >= PAR_POOL:
        def blocks(f: Emitter) -> str:  # (planes [tid·L/nt, (tid+1)·L/nt))
            q0 = _i(f, "udiv", _i(f, "mul", "%tid", count), "%nt")
            q1 = _i(f, "udiv", _i(f, "mul", _i(f, "add", "%tid", 1), count), "%nt")
            return f.emit(f"call i32 @{name}_planes(ptr %x, ptr %y, i64 {q0}, i64 {q1})")

        b._split(name, [("ptr", ins[0]), ("ptr", out)], 0)
        b._blocks(name, [("ptr", "%x"), ("ptr", "%y")], blocks)
    else:
        st = b.emit(f"call i32 @{name}_planes(ptr {ins[0]}, ptr {out}, i64 0, i64 {count})")
        b.line(f"ret i32 {st}")


def _planes2(shape, nd: int) -> tuple:
    """A plane's (rows, columns): a 1-d one is a row."""
    return (1, int(shape[-1])) if nd == 1 else (int(shape[-2]), int(shape[-1]))


@WINDOWS(P.MAX_POOL_INDICES)
def _max_pool_indices(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    p = b.n.params
    nd = len(p["kernel"])
    if nd not in (1, 2):
        raise NotImplementedError(f"LLVM window codegen: {nd}-d pooling")

    def two(t, fill) -> tuple:
        return (fill,) * (2 - nd) + tuple(int(v) for v in t)

    H, W = _planes2(b.n.inputs[0].shape, nd)
    OH, OW = _planes2(b.n.out.shape, nd)
    _pool(b, name, ins, out, _Windows(H, W, OH, OW, two(p["kernel"], 1), two(p["stride"], 1),
                                      two([lo for lo, _ in p["padding"]], 0),
                                      two(p["dilation"], 1)), nd)


@WINDOWS(P.ADAPTIVE_MAX_INDICES)
def _adaptive_max_indices(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    nd = len(b.n.params["output_size"])
    if nd not in (1, 2):
        raise NotImplementedError(f"LLVM window codegen: {nd}-d pooling")
    H, W = _planes2(b.n.inputs[0].shape, nd)
    OH, OW = _planes2(b.n.out.shape, nd)
    _pool(b, name, ins, out, _Windows(H, W, OH, OW), nd)
