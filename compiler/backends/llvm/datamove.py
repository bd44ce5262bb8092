"""LLVM IR for groups that move data: indexing (gather, scatter_add, index_check; the scans
and argsort, whose kernels are ``scan.py``'s) and movement (pad, slice, permute, broadcast,
concat, reshape chains)."""

from __future__ import annotations

import contextlib
import math

from dyngrad import dtypes as _dt

from ... import prims as P
from ...dims import Dim
from ...passes.views import VIEWS, reshape_strides, strided
from ...prims import Lowerings
from . import scan, threads
from .emit import (
    FN_NAME,
    LLTYPE,
    MEMTYPE,
    KernelBuilder,
    builds,
    c_strides,
    entry_ir,
    literal,
)
from .vecmath import prelude_ir


@builds("index")
class IndexBuilder(KernelBuilder):
    """An 'index' group: one node, whose rule in :data:`_KERNELS` writes the kernel's body —
    ``gather`` (np.take along an axis), ``scatter_add`` (np.add.at along an axis, repeated
    indices accumulating in index order, as numpy's) and ``index_check`` here, the scans
    and ``argsort`` in ``scan.py``. The body returns an i32 status: an index out of range
    makes it return 1 before writing anything the caller can see, so the driver stops and
    the call runs eagerly, raising eager's IndexError; otherwise 0."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "index")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM index codegen: a group of more than one node")
        self.n = g.nodes[group.nodes[0]]
        self.rule = _KERNELS.of(self.n.prim)

    def _loop(self, i: str, stop, **kw):
        """:meth:`Emitter.loop`, the increment and test named ``i.n`` and ``i.m``."""
        return self.loop(i, stop, next=f"{i}.n", more=f"{i}.m", **kw)

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        n, grp = self.n, self.group
        layout = list(grp.inputs) + list(grp.outputs)
        if len(grp.outputs) != 1 or grp.outputs[0] is not n.out:
            raise NotImplementedError("LLVM index codegen: one output")
        self.rule(self, n, {id(v): f"%a{k}" for k, v in enumerate(layout)})
        params = ", ".join(f"ptr noalias %a{q}" for q in range(len(layout)))
        text = (
            (prelude_ir([]) if prelude else "")
            + self.function(f"define internal i32 @{name}_body({params}) alwaysinline")
            + entry_ir(name, len(layout), status=True))
        return text, name, layout


# Each 'index' primitive's kernel body: rule(builder, node, {id(value): pointer}).
_KERNELS = Lowerings("LLVM index codegen")
_KERNELS(P.CUMSUM)(scan.running_sum)
_KERNELS(P.CUMPROD)(scan.running_product)
_KERNELS(P.ARGSORT)(scan.stable_argsort)


def _memtype(n) -> str:
    """The buffer type of the node's output (a bool is a byte: gathered as one, and a
    scatter_add of bools is their or, as numpy's ``add.at``)."""
    dt = n.out.dtype.name
    if dt not in LLTYPE:
        raise NotImplementedError(f"LLVM index codegen: {n.prim.name} of dtype {dt}")
    return MEMTYPE[LLTYPE[dt]]


def _index_type(v) -> str:
    """The LLVM type of an index value's elements: i64, or i32 for indices a compiled step
    narrowed (compiler/passes/narrow.py)."""
    if v.dtype not in (_dt.int64, _dt.int32):
        raise NotImplementedError(f"LLVM index codegen: indices of dtype {v.dtype.name}")
    return LLTYPE[v.dtype.name]


def _load_index(b: IndexBuilder, ty: str, p: str, at: str) -> str:
    """Index ``at`` of the indices at ``p`` (of type ``ty``), as an i64."""
    k = b.emit(f"load {ty}, ptr {b.emit(f'getelementptr inbounds {ty}, ptr {p}, i64 {at}')}")
    return k if ty == "i64" else b.emit(f"sext {ty} {k} to i64")


@_KERNELS(P.INDEX_CHECK)
def _check(b: IndexBuilder, n, ptr: dict) -> None:
    """``index_check``: status 1 if an index is outside [-size, size) ([0, size) without
    ``wrap``), else the indices copied to the output and 0."""
    ty = _index_type(n.out)
    size, m = n.params["size"], math.prod(n.out.shape)
    low = -size if n.params.get("wrap", True) else 0
    pi, po = ptr[id(n.inputs[0])], ptr[id(n.out)]
    b.label("entry")
    if m == 0:
        b.line("ret i32 0")
        return
    with b._loop("%q", m, block="chk", exit="done"):
        a = b.emit(f"getelementptr inbounds {ty}, ptr {pi}, i64 %q")
        v = b.emit(f"load {ty}, ptr {a}")
        k = v if ty == "i64" else b.emit(f"sext {ty} {v} to i64")
        lo = b.emit(f"icmp slt i64 {k}, {low}")
        hi = b.emit(f"icmp sge i64 {k}, {size}")
        bad = b.emit(f"or i1 {lo}, {hi}")
        c = b.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 %q")
        b.line(f"store {ty} {v}, ptr {c}")
        b.branch(bad, "bad", "ok")
        b.label("ok")
    b.line("ret i32 0")
    b.label("bad")
    b.line("ret i32 1")


@_KERNELS(P.GATHER, P.SCATTER_ADD)
def _gather_or_scatter(b: IndexBuilder, n, ptr: dict) -> None:
    ty = _memtype(n)
    axis = n.params["axis"]
    gather = n.prim is P.GATHER  # (else scatter_add)
    if gather:
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
    if m == 0 or pre == 0 or post == 0:
        raise NotImplementedError("LLVM index codegen: an empty dimension")
    px, pi, po = (ptr[id(n.inputs[0])], ptr[id(idx)], ptr[id(n.out)])
    ity = _index_type(idx)
    b.label("entry")
    if not gather:  # scatter_add: out = base, then validate, then add in order
        with b._loop("%c", math.prod(xs), block="cp", exit="chk.pre"):
            a = b.emit(f"getelementptr inbounds {ty}, ptr {px}, i64 %c")
            v = b.emit(f"load {ty}, ptr {a}")
            c = b.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 %c")
            b.line(f"store {ty} {v}, ptr {c}")
    # every index checked first: nothing is written past a bad one... (for gather the
    # output is fresh memory the caller discards on failure)
    with b._loop("%q", m, block="chk", exit="go"):
        k = _load_index(b, ity, pi, "%q")
        lo = b.emit(f"icmp slt i64 {k}, {-size}")
        hi = b.emit(f"icmp sge i64 {k}, {size}")
        bad = b.emit(f"or i1 {lo}, {hi}")
        b.branch(bad, "bad", "chk.ok")
        b.label("chk.ok")
    with b._loop("%p", pre, block="p.loop", exit="done", latch="p.end"):
        with b._loop("%j", m, block="j.loop", exit="p.end", latch="j.end"):
            k = _load_index(b, ity, pi, "%j")
            neg = b.emit(f"icmp slt i64 {k}, 0")
            kw = b.emit(f"add i64 {k}, {size}")
            k = b.emit(f"select i1 {neg}, i64 {kw}, i64 {k}")
            # source row (p, k) of x / destination row (p, k) of out; (p, j) of out / src
            rowk = b.emit(f"mul i64 %p, {size}")
            rowk = b.emit(f"add i64 {rowk}, {k}")
            rowk = b.emit(f"mul i64 {rowk}, {post}")
            rowj = b.emit(f"mul i64 %p, {m}")
            rowj = b.emit(f"add i64 {rowj}, %j")
            rowj = b.emit(f"mul i64 {rowj}, {post}")
            with b._loop("%r", post, block="r.loop", exit="j.end"):
                ik = b.emit(f"add i64 {rowk}, %r")
                ij = b.emit(f"add i64 {rowj}, %r")
                if gather:
                    a = b.emit(f"getelementptr inbounds {ty}, ptr {px}, i64 {ik}")
                    v = b.emit(f"load {ty}, ptr {a}")
                    c = b.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 {ij}")
                    b.line(f"store {ty} {v}, ptr {c}")
                else:
                    psrc = ptr[id(src)]
                    a = b.emit(f"getelementptr inbounds {ty}, ptr {psrc}, i64 {ij}")
                    v = b.emit(f"load {ty}, ptr {a}")
                    c = b.emit(f"getelementptr inbounds {ty}, ptr {po}, i64 {ik}")
                    old = b.emit(f"load {ty}, ptr {c}")
                    op = "or" if n.out.dtype is _dt.bool_ else \
                        "fadd" if ty in ("float", "double") else "add"  # (ints: wrapping)
                    new = b.emit(f"{op} {ty} {old}, {v}")
                    b.line(f"store {ty} {new}, ptr {c}")
    b.line("ret i32 0")
    b.label("bad")
    b.line("ret i32 1")


@builds("movement")
class MoveBuilder(KernelBuilder):
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
            _MOVES.of(g.nodes[i].prim)
        out = group.outputs[0]
        if out.dtype is None or out.dtype.name not in LLTYPE or math.prod(out.shape) == 0:
            raise NotImplementedError("LLVM movement codegen: dtype or empty output")
        self.ty = MEMTYPE[LLTYPE[out.dtype.name]]

    def _flat(self, idx: list, shape: tuple) -> str:
        return self._dot(idx, c_strides(shape))

    def _dot(self, idx: list, strides, offset: int = 0) -> str:
        """``offset + sum(idx[k] · strides[k])`` as i64 IR (an element's position)."""
        acc = str(offset)
        for i, st in zip(idx, strides):
            t = i if st == 1 else self.emit(f"mul i64 {i}, {st}")
            acc = t if acc == "0" else self.emit(f"add i64 {acc}, {t}")
        return acc

    def _split(self, flat: str, shape: tuple) -> list:
        out = []
        for k, (size, st) in enumerate(zip(shape, c_strides(shape))):
            t = flat if st == 1 else self.emit(f"udiv i64 {flat}, {st}")
            out.append(t if k == 0 else self.emit(f"urem i64 {t}, {size}"))
        return out

    def element(self, value) -> str:
        if self.ty == "i8":  # bool, stored as a byte
            return str(int(bool(value)))
        return literal(value, self.ty)

    def value_at(self, v, idx: list) -> str:
        """The element of ``v`` at multi-index ``idx`` (SSA i64 per dim of v)."""
        n = self.producer.get(id(v))
        if n is None:  # an input: C-contiguous in its own shape
            p = self.emit(f"getelementptr inbounds {self.ty}, ptr {self.ptr[id(v)]}, "
                          f"i64 {self._flat(idx, v.shape)}")
            return self.emit(f"load {self.ty}, ptr {p}")
        return _MOVES.of(n.prim)(self, n, v, idx)

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp = self.group
        out = grp.outputs[0]
        layout = list(grp.inputs) + [out]
        for v in grp.inputs:
            if v.weak or v.dtype is None or v.dtype.name not in LLTYPE or \
                    MEMTYPE[LLTYPE[v.dtype.name]] != self.ty:
                raise NotImplementedError("LLVM movement codegen: an input's dtype")
        self.ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        self.label("entry")
        pad, joined = self._plain_pad(), self._pieces()
        # the outermost loop: rows of the pad, else the output's first dim above 1
        dims = [d for d, n in enumerate(out.shape) if n != 1]
        outer = math.prod(out.shape[:-1]) if pad is not None else \
            (out.shape[dims[0]] if dims else 1)
        per = _parts(math.prod(out.shape), outer)
        lo, hi = ("%lo", "%hi") if per else (0, outer)
        if pad is not None:
            self._pad_rows(pad, f"%a{len(grp.inputs)}", lo, hi)
        elif joined is not None:
            self._copy_pieces(joined, f"%a{len(grp.inputs)}", lo, hi)
        else:
            self._copy_nested(out, f"%a{len(grp.inputs)}", lo, hi)
        self.line("ret void")
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))
        if per:  # (big: ranges of the outer loop on the thread pool, each written whole)
            body = (self.function(f"define internal void @{name}_range({params}, i64 %lo, "
                                  f"i64 %hi) noinline")
                    + threads.ranges_ir(name, len(layout), outer, per))
        else:
            body = self.function(f"define internal void @{name}_body({params}) alwaysinline")
        text = ((prelude_ir([]) if prelude else "")
                + (threads.DECLARATIONS if per and prelude else "")
                + body + entry_ir(name, len(layout)))
        self.par = bool(per)
        return text, name, layout

    def declarations(self) -> str:
        return threads.DECLARATIONS if getattr(self, "par", False) else ""

    def _copy_nested(self, out, out_ptr: str, lo, hi) -> None:
        """Every element of ``out`` from the chain, in a loop per dim of the output (size-1
        dims are index 0): each source index is then a sum of loop counters times
        constants, and the innermost loop — a row of the output — vectorises when its
        source is contiguous too (a permute keeping the last dim, a broadcast)."""
        dims = [d for d, n in enumerate(out.shape) if n != 1]
        idx = ["0"] * len(out.shape)
        stack = contextlib.ExitStack()
        with stack:
            for k, d in enumerate(dims):
                idx[d] = stack.enter_context(
                    self.rolled_loop(lo if k == 0 else 0, hi if k == 0 else out.shape[d],
                                     scalar=k < len(dims) - 1))
            val = self.value_at(out, idx)
            p = self.emit(f"getelementptr inbounds {self.ty}, ptr {out_ptr}, "
                          f"i64 {self._flat(idx, out.shape)}")
            self.line(f"store {self.ty} {val}, ptr {p}")

    def _pieces(self):
        """The group's output node when it is a ``concat`` along a dim after the output's
        first one above 1 (the copy's outer loop), else None."""
        out = self.group.outputs[0]
        n = self.producer.get(id(out))
        if n is None or n.prim is not P.CONCAT:
            return None
        dims = [d for d, m in enumerate(out.shape) if m != 1]
        return n if dims and n.params["axis"] > dims[0] else None

    def _copy_pieces(self, n, out_ptr: str, lo, hi) -> None:
        """A concat (:meth:`_pieces`) a piece at a time: each input's elements copied (through
        the chain that makes it) into its range of the output — no select among every
        input's element at each position, and contiguous runs where a piece has them."""
        out, axis, start = n.out, n.params["axis"], 0
        dims = [d for d, m in enumerate(out.shape) if m != 1]
        for x in n.inputs:
            size = x.shape[axis]
            if size and not self._copy_strided(n, x, start, out_ptr, lo, hi):
                idx = ["0"] * len(out.shape)
                with contextlib.ExitStack() as stack:
                    inner = [d for d in dims if d != axis or size != 1]
                    for k, d in enumerate(inner):
                        first, stop = (lo, hi) if k == 0 else (0, x.shape[d])
                        idx[d] = stack.enter_context(
                            self.rolled_loop(first, stop, scalar=k < len(inner) - 1))
                    val = _plus_zero(self, n, self.value_at(x, idx))
                    at = list(idx)
                    at[axis] = idx[axis] if not start else \
                        self.emit(f"add i64 {idx[axis]}, {start}")
                    p = self.emit(f"getelementptr inbounds {self.ty}, ptr {out_ptr}, "
                                  f"i64 {self._flat(at, out.shape)}")
                    self.line(f"store {self.ty} {val}, ptr {p}")
            start += size

    def _copy_strided(self, n, x, start: int, out_ptr: str, lo, hi) -> bool:
        """Piece ``x`` of concat ``n`` copied by strides, when it is (a reshape of) a
        strided view of a group input (``passes/views.strided``: the heads' gradients
        sliced from the attention backward's output, permuted, merged): a loop per dim of
        the view, the source and the destination each a sum of counters times strides — no
        index split per element, and the innermost loop contiguous on both sides, which
        LLVM vectorises. False (nothing written) where that does not apply."""
        out = n.out
        made = self.producer.get(id(x))
        u = made.inputs[0] if made is not None and made.prim is P.RESHAPE else x
        if not all(isinstance(d, int) for d in tuple(u.shape) + tuple(out.shape)):
            return False
        got = strided(u, lambda m: id(m.out) in self.producer and m.prim in VIEWS)
        if got is None or id(got[0]) not in self.ptr:
            return False
        base, src_off, src = got
        ost = c_strides(out.shape)
        dst = ost if u is x else reshape_strides(tuple(x.shape), ost, tuple(u.shape))
        udims = [d for d, m in enumerate(u.shape) if m != 1]
        first = [d for d, m in enumerate(out.shape) if m != 1][0]
        if dst is None or not udims or u.shape[udims[0]] != out.shape[first] or \
                dst[udims[0]] != ost[first]:
            return False  # (the outer loop must be the output's, split across threads)
        dst_off = start * ost[n.params["axis"]]
        with contextlib.ExitStack() as stack:
            idx = [stack.enter_context(self.rolled_loop(
                lo if k == 0 else 0, hi if k == 0 else u.shape[d], scalar=k < len(udims) - 1))
                for k, d in enumerate(udims)]
            p = self.emit(f"getelementptr inbounds {self.ty}, ptr {self.ptr[id(base)]}, "
                          f"i64 {self._dot(idx, [src[d] for d in udims], src_off)}")
            val = _plus_zero(self, n, self.emit(f"load {self.ty}, ptr {p}"))
            q = self.emit(f"getelementptr inbounds {self.ty}, ptr {out_ptr}, "
                          f"i64 {self._dot(idx, [dst[d] for d in udims], dst_off)}")
            self.line(f"store {self.ty} {val}, ptr {q}")
        return True

    def _plain_pad(self):
        """The group's node when it is one ``pad`` of an input by non-negative widths with
        no interior padding (a slice's gradient: the slice put back in place among
        zeros), else None."""
        grp = self.group
        if len(grp.nodes) != 1:
            return None
        n = self.g.nodes[grp.nodes[0]]
        if n.prim is not P.PAD or id(n.inputs[0]) in self.producer or \
                not n.inputs[0].shape or \
                any(lo < 0 or hi < 0 or it for lo, hi, it in n.params["pads"]):
            return None
        return n

    def _pad_rows(self, n, out_ptr: str, lo, hi) -> None:
        """``n`` (:meth:`_plain_pad`) row by row along its last dim: a row of the output
        outside the input is the pad value throughout; one inside is the value, the input's
        row, the value — contiguous runs, which LLVM vectorises (no per-element index
        arithmetic and selects, as the general copy loop has)."""
        src, prm = n.inputs[0], n.params
        shape, W = n.out.shape[:-1], n.out.shape[-1]
        (left, _, _), width = prm["pads"][-1], src.shape[-1]
        value = self.element(prm["value"])
        ty = self.ty

        def fill(row: str, lo: int, hi: int) -> None:
            if hi > lo:
                with self.rolled_loop(lo, hi) as j:
                    at = self.emit(f"add i64 {row}, {j}")
                    p = self.emit(f"getelementptr inbounds {ty}, ptr {out_ptr}, i64 {at}")
                    self.line(f"store {ty} {value}, ptr {p}")

        with self.rolled_loop(lo, hi, scalar=True) as r:
            row = self.emit(f"mul i64 {r}, {W}")
            idx = self._split(r, shape) if shape else []
            inside, inner = "true", []
            for i, n_d, (before, _, _) in zip(idx, src.shape[:-1], prm["pads"][:-1]):
                t = self.emit(f"sub i64 {i}, {before}")
                ok = self.emit(f"icmp ult i64 {t}, {n_d}")
                inside = ok if inside == "true" else self.emit(f"and i1 {inside}, {ok}")
                inner.append(t)
            if inside != "true":
                with self.when(self.emit(f"xor i1 {inside}, true")):
                    fill(row, 0, W)
            with self.when(inside) if inside != "true" else contextlib.nullcontext():
                fill(row, 0, left)
                base = self.emit(f"mul i64 {self._flat(inner, src.shape[:-1]) if inner else 0}"
                                 f", {width}")
                with self.rolled_loop(0, width) as j:
                    q = self.emit(f"getelementptr inbounds {ty}, ptr {self.ptr[id(src)]}, "
                                  f"i64 {self.emit(f'add i64 {base}, {j}')}")
                    v = self.emit(f"load {ty}, ptr {q}")
                    at = self.emit(f"add i64 {row}, {self.emit(f'add i64 {j}, {left}')}")
                    p = self.emit(f"getelementptr inbounds {ty}, ptr {out_ptr}, i64 {at}")
                    self.line(f"store {ty} {v}, ptr {p}")
                fill(row, left + width, W)


PAR_ELEMENTS = 1 << 16  # elements from which a copy is split across threads (a 64K copy
#                         takes ~10 µs on one core, a part of the pool ~1)


def _parts(elements: int, outer: int) -> int | None:
    """Outer iterations per part when a copy of ``elements`` runs on the thread pool (its
    outer loop of ``outer`` iterations in ranges; each element is written by one part, so
    the result does not depend on the split), or None (one loop on the calling thread)."""
    if isinstance(elements, Dim) or isinstance(outer, Dim) or elements < PAR_ELEMENTS or \
            outer < 2 or threads.find() is None:
        return None
    per = max(1, outer * PAR_ELEMENTS // (2 * elements))  # (parts of ~32K elements)
    return per if per < outer else None


# Each movement primitive maps an output multi-index back to its input's (see MoveBuilder).
_MOVES = Lowerings("LLVM movement codegen")


@_MOVES(P.RESHAPE)
def _reshape(b: MoveBuilder, n, v, idx: list) -> str:  # the same row-major order
    src = n.inputs[0]
    return b.value_at(src, b._split(b._flat(idx, v.shape), src.shape))


@_MOVES(P.BROADCAST)
def _broadcast(b: MoveBuilder, n, v, idx: list) -> str:
    src = n.inputs[0]
    lead = len(v.shape) - len(src.shape)
    return b.value_at(src, [idx[d + lead] if s != 1 else "0" for d, s in enumerate(src.shape)])


@_MOVES(P.PERMUTE)
def _permute(b: MoveBuilder, n, v, idx: list) -> str:
    inner = [None] * len(n.params["perm"])
    for d, p in enumerate(n.params["perm"]):
        inner[p] = idx[d]
    return b.value_at(n.inputs[0], inner)


@_MOVES(P.SLICE)
def _slice(b: MoveBuilder, n, v, idx: list) -> str:
    inner = []
    for i, a, c in zip(idx, n.params["starts"], n.params["steps"]):
        t = i if c == 1 else b.emit(f"mul i64 {i}, {c}")
        inner.append(t if a == 0 else b.emit(f"add i64 {t}, {a}"))
    return b.value_at(n.inputs[0], inner)


@_MOVES(P.PAD)
def _pad(b: MoveBuilder, n, v, idx: list) -> str:
    src, prm = n.inputs[0], n.params
    ok, inner = "true", []
    for i, n_d, (lo, _, it) in zip(idx, src.shape, prm["pads"]):
        t = b.emit(f"sub i64 {i}, {lo}")
        q = t if it == 0 else b.emit(f"sdiv i64 {t}, {it + 1}")
        good = b.emit(f"icmp sge i64 {t}, 0")
        good = b.emit(f"and i1 {good}, {b.emit(f'icmp slt i64 {q}, {n_d}')}")
        if it:
            r = b.emit(f"srem i64 {t}, {it + 1}")
            good = b.emit(f"and i1 {good}, {b.emit(f'icmp eq i64 {r}, 0')}")
        ok = good if ok == "true" else b.emit(f"and i1 {ok}, {good}")
        inner.append(b.emit(f"select i1 {good}, i64 {q}, i64 0"))
    val = b.value_at(src, inner)
    return b.emit(f"select i1 {ok}, {b.ty} {val}, {b.ty} {b.element(prm['value'])}")


@_MOVES(P.CONCAT)
def _concat(b: MoveBuilder, n, v, idx: list) -> str:
    """The input whose range along the axis holds the index (clamped reads, a select)."""
    axis, start, result = n.params["axis"], 0, None
    for x in n.inputs:
        size = x.shape[axis]
        t = b.emit(f"sub i64 {idx[axis]}, {start}")
        inside = b.emit(f"icmp ult i64 {t}, {size}")
        clamped = b.emit(f"select i1 {inside}, i64 {t}, i64 0")
        val = b.value_at(x, idx[:axis] + [clamped] + idx[axis + 1:])
        result = val if result is None else b.emit(
            f"select i1 {inside}, {b.ty} {val}, {b.ty} {result}")
        start += size
    return _plus_zero(b, n, result)


def _plus_zero(b: MoveBuilder, n, val: str) -> str:
    """``val + 0.0`` for a concat with ``plus_zero`` (compiler/passes/pads.py), else ``val``."""
    if n.params.get("plus_zero") and b.ty in ("float", "double"):
        return b.emit(f"fadd {b.ty} {val}, {literal(0.0, b.ty)}")
    return val
