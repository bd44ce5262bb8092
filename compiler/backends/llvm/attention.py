"""LLVM kernels of the fused attention pair (``dyngrad/ops/attention.py``), flash-style: no
L×S matrix, only tiles of :data:`BR` query rows x :data:`BC` keys on the stack.

**Forward** (``flash_attention``): one work item per leading index and block of ``BR``
query rows. Per key block: Kᵀ of the block packed once (so the score tile is a sum of
rank-one updates, vectorised along the keys), the tile scaled and masked, then the online
softmax — the running row maximum m, the sum l of exp(s - m) and the output accumulator,
rescaled by exp(m_old - m_new) whenever the maximum grows. At the end out = acc / l and the
logsumexp m + log l (a row that saw no finite score: zeros and -inf, Note [fully masked
rows]). With ``causal`` a row block reads no key block after its last row.

**Backward** (``flash_attention_backward``): one work item per leading index (dK and dV
sum over every query row, so one thread owns them). Per row block and key block the tile
of P = exp(s - lse) is recomputed from the saved logsumexp, dP = dO·Vᵀ from Vᵀ packed as
Kᵀ is, dS = P∘(dP - D + dlse) with D = rowsum(dO∘O), then dV += Pᵀ·dO, dK += scale·dSᵀ·Q
and dQ += scale·dS·K, row by row. Causal key blocks after a row block's last row are
skipped as in the forward.

Work items are handed to the pool's threads by index (``tid, tid + nt, ...``) and each
item's sums run in one fixed order, so the bits do not depend on the thread count. The
results differ from eager's numpy impls by rounding only (another summation order; exp and
log are vecmath's polynomials). Supported: float32 and float64, head sizes up to
:data:`MAX_HEAD`, sizes that are numbers (a symbolic variant's run in numpy); the mask a
bool or float one broadcast to the scores by strides (0 along its size-1 dims).
"""

from __future__ import annotations

import math

from dyngrad import dtypes as _dt

from ... import prims as P
from . import threads
from .emit import LLTYPE, MEMTYPE, Emitter, literal
from .window import WINDOWS, WindowBuilder

BR = 32  # query rows per tile
BC = 64  # keys per tile
MAX_HEAD = 256  # E and Ev up to this (the packed Kᵀ/Vᵀ tiles live on the stack)


class _Shape:
    """The sizes of one attention node: ``lead`` (the leading dims), ``B`` their product,
    L, S, E, Ev, and the mask's element strides along (*lead, L, S) with its LLVM type."""

    def __init__(self, q, k, v, mask) -> None:
        sizes = tuple(q.shape) + tuple(v.shape)
        if not all(isinstance(s, int) for s in sizes):
            raise NotImplementedError("LLVM attention codegen: a symbolic size")
        self.lead = tuple(q.shape[:-2])
        self.B = math.prod(self.lead)
        self.L, self.E = q.shape[-2:]
        self.S, self.Ev = v.shape[-2:]
        if max(self.E, self.Ev) > MAX_HEAD or 0 in (self.B, self.L, self.S, self.E, self.Ev):
            raise NotImplementedError(f"LLVM attention codegen: head sizes {self.E}, "
                                      f"{self.Ev} (up to {MAX_HEAD}) or an empty dim")
        self.mask_ty = None
        if mask is not None:
            self.mask_ty = "bool" if mask.dtype is _dt.bool_ else "float"
            full = self.lead + (self.L, self.S)
            shape = (1,) * (len(full) - len(mask.shape)) + tuple(mask.shape)
            strides, at = [], 1
            for n in reversed(shape):
                strides.append(0 if n == 1 else at)
                at *= n
            self.mask_strides = tuple(reversed(strides))  # over (*lead, L, S)


def _float_type(n) -> str:
    dt = n.out.dtype.name
    if dt not in ("float32", "float64"):
        raise NotImplementedError(f"LLVM attention codegen: {dt} (float32 and float64)")
    return LLTYPE[dt]


def _math(b: WindowBuilder, ty: str) -> tuple:
    """The names of exp and log of ``ty`` (vecmath's, added to the module)."""
    names = ("exp", "log") if ty == "float" else ("exp64", "log64")
    for f in names:
        if f not in b.vecmath:
            b.vecmath.append(f)
    suffix = "f" if ty == "float" else ""
    return tuple(f"@dg_{f}{suffix}" for f in names)


class _Item(Emitter):
    """One work item's function: loads, stores and loops over flat buffers."""

    def __init__(self, ty: str) -> None:
        super().__init__()
        self.ty = ty
        self.label("entry")

    def at(self, p: str, i) -> str:
        return self.gep(self.ty, p, i)

    def ld(self, p: str, i) -> str:
        return self.emit(f"load {self.ty}, ptr {self.at(p, i)}")

    def st(self, v: str, p: str, i) -> None:
        self.line(f"store {self.ty} {v}, ptr {self.at(p, i)}")

    def i(self, op: str, a, b) -> str:
        return self.emit(f"{op} i64 {a}, {b}")

    def f(self, op: str, a, b) -> str:
        return self.emit(f"{op} {self.ty} {a}, {b}")

    def lit(self, x: float) -> str:
        return literal(x, self.ty)

    def slot(self, init: str) -> str:
        """A stack scalar (promoted to a register by LLVM), set to ``init``."""
        p = self.emit(f"alloca {self.ty}")
        self.line(f"store {self.ty} {init}, ptr {p}")
        return p

    def get(self, p: str) -> str:
        return self.emit(f"load {self.ty}, ptr {p}")

    def put(self, v: str, p: str) -> None:
        self.line(f"store {self.ty} {v}, ptr {p}")

    def fmax(self, a: str, b: str) -> str:
        return self.emit(f"select i1 {self.emit(f'fcmp ogt {self.ty} {b}, {a}')}, "
                         f"{self.ty} {b}, {self.ty} {a}")


def _lead_offset(e: _Item, sh: _Shape, bh: str, strides: tuple) -> str:
    """The element offset of leading index ``bh`` (flat over ``sh.lead``) in a buffer with
    ``strides`` along the leading dims."""
    off, rest = "0", bh
    for n, s in zip(reversed(sh.lead), reversed(strides)):
        idx = e.i("urem", rest, n)
        rest = e.i("udiv", rest, n)
        if s:
            off = e.i("add", off, e.i("mul", idx, s))
    return off


def _pack_t(e: _Item, src: str, width: int, j0: str, cols: str, dst: str) -> None:
    """``dst[x·BC + c] = src[(j0 + c)·width + x]`` for x < width, c < cols: a key block of
    K (or V) transposed."""
    with e.rolled_loop(0, cols, scalar=True) as c:
        row = e.at(src, e.i("mul", e.i("add", j0, c), width))
        with e.rolled_loop(0, width) as x:
            e.st(e.ld(row, x), dst, e.i("add", e.i("mul", x, BC), c))


def _scores(e: _Item, sh: _Shape, qrow: str, kt: str, cols: str, srow: str, scale: float,
            causal: bool, mask: str | None, i: str, j0: str) -> None:
    """``srow[c]`` = scale·q_i·k_(j0+c), masked (-inf where a key is not attended, a float
    mask added), for c < cols."""
    ty = e.ty
    with e.rolled_loop(0, cols) as c:
        e.st(e.lit(0.0), srow, c)
    with e.rolled_loop(0, sh.E, scalar=True) as x:
        qx = e.ld(qrow, x)
        kx = e.at(kt, e.i("mul", x, BC))
        with e.rolled_loop(0, cols) as c:
            e.st(e.emit(f"call {ty} @llvm.fma.{'f32' if ty == 'float' else 'f64'}({ty} {qx}, "
                        f"{ty} {e.ld(kx, c)}, {ty} {e.ld(srow, c)})"), srow, c)
    ninf = e.lit(float("-inf"))
    with e.rolled_loop(0, cols) as c:
        s = e.f("fmul", e.ld(srow, c), e.lit(scale))
        j = e.i("add", j0, c)
        if causal:
            s = e.emit(f"select i1 {e.i('icmp sgt', j, i)}, {ty} {ninf}, {ty} {s}")
        if mask is not None:
            ms = sh.mask_strides
            at = e.i("add", e.i("mul", i, ms[-2]), e.i("mul", j, ms[-1]))
            if sh.mask_ty == "bool":
                mv = e.emit(f"load i8, ptr {e.gep('i8', mask, at)}")
                s = e.emit(f"select i1 {e.emit(f'icmp eq i8 {mv}, 0')}, {ty} {ninf}, "
                           f"{ty} {s}")
            else:
                s = e.f("fadd", s, e.ld(mask, at))
        e.st(s, srow, c)


def _key_end(e: _Item, sh: _Shape, causal: bool, i0: str, rows: str) -> str:
    """The keys a row block reads: all, or with ``causal`` those up to its last row."""
    return e.min(e.i("add", i0, rows), sh.S) if causal else str(sh.S)


def _forward_item(b: WindowBuilder, name: str, sh: _Shape, ty: str, p: dict) -> str:
    """``void @<name>_item(q, k, v, mask, out, i64 w)``: rows ``BR·(w mod blocks)`` on of
    leading index ``w div blocks``."""
    exp, log = _math(b, ty)
    e = _Item(ty)
    mask = "%mask" if sh.mask_ty else None
    blocks = -(-sh.L // BR)
    tile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    kt = e.emit(f"alloca [{sh.E * BC} x {ty}], align 64")
    acc = e.emit(f"alloca [{BR * sh.Ev} x {ty}], align 64")
    mrow = e.emit(f"alloca [{BR} x {ty}], align 64")
    lrow = e.emit(f"alloca [{BR} x {ty}], align 64")
    rmax, psum = e.slot(e.lit(0.0)), e.slot(e.lit(0.0))  # (in the entry block: registers)
    bh = e.i("udiv", "%w", blocks)
    i0 = e.i("mul", e.i("urem", "%w", blocks), BR)
    rows = e.min(BR, e.i("sub", sh.L, i0))
    q = e.at("%q", e.i("mul", bh, sh.L * sh.E))
    k = e.at("%k", e.i("mul", bh, sh.S * sh.E))
    v = e.at("%v", e.i("mul", bh, sh.S * sh.Ev))
    out = e.at("%out", e.i("mul", bh, sh.L * (sh.Ev + 1)))
    if mask is not None:
        mask = e.gep(MEMTYPE[LLTYPE["bool"]] if sh.mask_ty == "bool" else ty, "%mask",
                     _lead_offset(e, sh, bh, sh.mask_strides[:-2]))
    with e.rolled_loop(0, rows) as r:
        e.st(e.lit(float("-inf")), mrow, r)
        e.st(e.lit(0.0), lrow, r)
    with e.rolled_loop(0, e.i("mul", rows, sh.Ev)) as x:
        e.st(e.lit(0.0), acc, x)
    jend = _key_end(e, sh, p["causal"], i0, rows)
    with e.rolled_loop(0, jend, BC, scalar=True) as j0:
        cols = e.min(BC, e.i("sub", jend, j0))
        _pack_t(e, k, sh.E, j0, cols, kt)
        with e.rolled_loop(0, rows, scalar=True) as r:
            i = e.i("add", i0, r)
            srow = e.at(tile, e.i("mul", r, BC))
            _scores(e, sh, e.at(q, e.i("mul", i, sh.E)), kt, cols, srow, p["scale"],
                    p["causal"], mask, i, j0)
            mold = e.ld(mrow, r)
            e.put(mold, rmax)
            with e.rolled_loop(0, cols, scalar=True) as c:
                e.put(e.fmax(e.get(rmax), e.ld(srow, c)), rmax)
            mnew = e.get(rmax)
            ninf = e.lit(float("-inf"))
            shift = e.emit(f"select i1 {e.emit(f'fcmp oeq {ty} {mnew}, {ninf}')}, "
                           f"{ty} {e.lit(0.0)}, {ty} {mnew}")
            alpha = e.emit(f"call {ty} {exp}({ty} {e.f('fsub', mold, shift)})")
            e.put(e.lit(0.0), psum)
            with e.rolled_loop(0, cols, scalar=True) as c:
                pc = e.emit(f"call {ty} {exp}({ty} {e.f('fsub', e.ld(srow, c), shift)})")
                e.st(pc, srow, c)
                e.put(e.f("fadd", e.get(psum), pc), psum)
            e.st(e.f("fadd", e.f("fmul", e.ld(lrow, r), alpha), e.get(psum)), lrow, r)
            e.st(mnew, mrow, r)
            arow = e.at(acc, e.i("mul", r, sh.Ev))
            with e.rolled_loop(0, sh.Ev) as x:
                e.st(e.f("fmul", e.ld(arow, x), alpha), arow, x)
            with e.rolled_loop(0, cols, scalar=True) as c:
                pc = e.ld(srow, c)
                vrow = e.at(v, e.i("mul", e.i("add", j0, c), sh.Ev))
                with e.rolled_loop(0, sh.Ev) as x:
                    e.st(_fma(e, pc, e.ld(vrow, x), e.ld(arow, x)), arow, x)
    with e.rolled_loop(0, rows, scalar=True) as r:
        orow = e.at(out, e.i("mul", e.i("add", i0, r), sh.Ev + 1))
        arow = e.at(acc, e.i("mul", r, sh.Ev))
        m, total = e.ld(mrow, r), e.ld(lrow, r)
        dead = e.emit(f"fcmp oeq {ty} {m}, {e.lit(float('-inf'))}")
        with e.rolled_loop(0, sh.Ev) as x:
            o = e.f("fdiv", e.ld(arow, x), total)
            e.st(e.emit(f"select i1 {dead}, {ty} {e.lit(0.0)}, {ty} {o}"), orow, x)
        lse = e.f("fadd", m, e.emit(f"call {ty} {log}({ty} {total})"))
        e.st(e.emit(f"select i1 {dead}, {ty} {e.lit(float('-inf'))}, {ty} {lse}"), orow,
             sh.Ev)
    e.line("ret void")
    b.helpers.append(e.function(f"define internal void @{name}_item(ptr noalias %q, ptr "
                                f"noalias %k, ptr noalias %v, ptr noalias %mask, ptr noalias "
                                f"%out, i64 %w)"))
    return f"@{name}_item"


def _fma(e: _Item, a: str, b: str, c: str) -> str:
    ty = e.ty
    return e.emit(f"call {ty} @llvm.fma.{'f32' if ty == 'float' else 'f64'}({ty} {a}, {ty} "
                  f"{b}, {ty} {c})")


def _backward_item(b: WindowBuilder, name: str, sh: _Shape, ty: str, p: dict) -> str:
    """``void @<name>_item(q, k, v, o, do, mask, out, i64 w)``: every gradient of leading
    index ``w``."""
    exp, _ = _math(b, ty)
    e = _Item(ty)
    mask = "%mask" if sh.mask_ty else None
    E, Ev, L, S = sh.E, sh.Ev, sh.L, sh.S
    ptile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    dtile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    kt = e.emit(f"alloca [{E * BC} x {ty}], align 64")
    vt = e.emit(f"alloca [{Ev * BC} x {ty}], align 64")
    rowd = e.emit(f"alloca [{BR} x {ty}], align 64")  # dlse - D per row
    rowl = e.emit(f"alloca [{BR} x {ty}], align 64")  # the logsumexp used (0 if dead)
    rowdead = e.emit(f"alloca [{BR} x i8], align 64")
    dot = e.slot(e.lit(0.0))
    bh = "%w"
    q = e.at("%q", e.i("mul", bh, L * E))
    k = e.at("%k", e.i("mul", bh, S * E))
    v = e.at("%v", e.i("mul", bh, S * Ev))
    o = e.at("%o", e.i("mul", bh, L * (Ev + 1)))
    do = e.at("%do", e.i("mul", bh, L * (Ev + 1)))
    dq = e.at("%out", e.i("mul", bh, L * E + S * E + S * Ev))
    dk = e.at(dq, L * E)
    dv = e.at(dk, S * E)
    if mask is not None:
        mask = e.gep(MEMTYPE[LLTYPE["bool"]] if sh.mask_ty == "bool" else ty, "%mask",
                     _lead_offset(e, sh, bh, sh.mask_strides[:-2]))
    with e.rolled_loop(0, L * E + S * E + S * Ev) as x:
        e.st(e.lit(0.0), dq, x)
    ninf = e.lit(float("-inf"))
    scale = e.lit(p["scale"])
    with e.rolled_loop(0, L, BR, scalar=True) as i0:
        rows = e.min(BR, e.i("sub", L, i0))
        with e.rolled_loop(0, rows, scalar=True) as r:
            i = e.i("add", i0, r)
            orow, drow = e.at(o, e.i("mul", i, Ev + 1)), e.at(do, e.i("mul", i, Ev + 1))
            e.put(e.lit(0.0), dot)
            with e.rolled_loop(0, Ev, scalar=True) as x:
                e.put(_fma(e, e.ld(drow, x), e.ld(orow, x), e.get(dot)), dot)
            e.st(e.f("fsub", e.ld(drow, Ev), e.get(dot)), rowd, r)
            lse = e.ld(orow, Ev)
            dead = e.emit(f"fcmp oeq {ty} {lse}, {ninf}")
            e.st(e.emit(f"select i1 {dead}, {ty} {e.lit(0.0)}, {ty} {lse}"), rowl, r)
            e.line(f"store i8 {e.emit(f'zext i1 {dead} to i8')}, ptr "
                   f"{e.gep('i8', rowdead, r)}")
        jend = _key_end(e, sh, p["causal"], i0, rows)
        with e.rolled_loop(0, jend, BC, scalar=True) as j0:
            cols = e.min(BC, e.i("sub", jend, j0))
            _pack_t(e, k, E, j0, cols, kt)
            _pack_t(e, v, Ev, j0, cols, vt)
            with e.rolled_loop(0, rows, scalar=True) as r:
                i = e.i("add", i0, r)
                prow, drow_t = e.at(ptile, e.i("mul", r, BC)), e.at(dtile, e.i("mul", r, BC))
                _scores(e, sh, e.at(q, e.i("mul", i, E)), kt, cols, prow, p["scale"],
                        p["causal"], mask, i, j0)
                lse = e.ld(rowl, r)
                dead = e.emit(f"load i8, ptr {e.gep('i8', rowdead, r)}")
                dead = e.emit(f"icmp ne i8 {dead}, 0")
                with e.rolled_loop(0, cols) as c:
                    pc = e.emit(f"call {ty} {exp}({ty} {e.f('fsub', e.ld(prow, c), lse)})")
                    e.st(e.emit(f"select i1 {dead}, {ty} {e.lit(0.0)}, {ty} {pc}"), prow, c)
                with e.rolled_loop(0, cols) as c:
                    e.st(e.lit(0.0), drow_t, c)
                dorow = e.at(do, e.i("mul", i, Ev + 1))
                with e.rolled_loop(0, Ev, scalar=True) as x:
                    gx = e.ld(dorow, x)
                    vx = e.at(vt, e.i("mul", x, BC))
                    with e.rolled_loop(0, cols) as c:
                        e.st(_fma(e, gx, e.ld(vx, c), e.ld(drow_t, c)), drow_t, c)
                shift = e.ld(rowd, r)
                with e.rolled_loop(0, cols) as c:
                    ds = e.f("fmul", e.ld(prow, c), e.f("fadd", e.ld(drow_t, c), shift))
                    e.st(e.f("fmul", ds, scale), drow_t, c)
            with e.rolled_loop(0, rows, scalar=True) as r:
                i = e.i("add", i0, r)
                dorow = e.at(do, e.i("mul", i, Ev + 1))
                qrow, dqrow = e.at(q, e.i("mul", i, E)), e.at(dq, e.i("mul", i, E))
                prow, drow_t = e.at(ptile, e.i("mul", r, BC)), e.at(dtile, e.i("mul", r, BC))
                with e.rolled_loop(0, cols, scalar=True) as c:
                    j = e.i("add", j0, c)
                    pc, dsc = e.ld(prow, c), e.ld(drow_t, c)
                    dvrow, dkrow = e.at(dv, e.i("mul", j, Ev)), e.at(dk, e.i("mul", j, E))
                    krow = e.at(k, e.i("mul", j, E))
                    with e.rolled_loop(0, Ev) as x:
                        e.st(_fma(e, pc, e.ld(dorow, x), e.ld(dvrow, x)), dvrow, x)
                    with e.rolled_loop(0, E) as x:
                        e.st(_fma(e, dsc, e.ld(qrow, x), e.ld(dkrow, x)), dkrow, x)
                    with e.rolled_loop(0, E) as x:
                        e.st(_fma(e, dsc, e.ld(krow, x), e.ld(dqrow, x)), dqrow, x)
    e.line("ret void")
    b.helpers.append(e.function(
        f"define internal void @{name}_item(ptr noalias %q, ptr noalias %k, ptr noalias %v, "
        f"ptr noalias %o, ptr noalias %do, ptr noalias %mask, ptr noalias %out, i64 %w)"))
    return f"@{name}_item"


def _run_items(b: WindowBuilder, name: str, item: str, args: list, items: int) -> None:
    """The kernel's body: ``item(*args, w)`` for every w < ``items``, on the pool's threads
    (each every ``nt``-th item from its own) or, without a pool, in order here."""
    call = ", ".join(f"ptr {a}" for a in args)
    if threads.find() is None or items < 2:
        with b.rolled_loop(0, items, scalar=True) as w:
            b.line(f"call void {item}({call}, i64 {w})")
        b.line("ret i32 0")
        return
    b.line(f"%ctx = alloca [{len(args)} x ptr], align 8")
    for n, a in enumerate(args):
        b.line(f"store ptr {a}, ptr {b.gep('ptr', '%ctx', n)}")
    b.lines += threads.split_call(name, 0).split("\n")
    b.block = "par.joined"
    b.line("ret i32 0")
    e = Emitter()
    e.label("entry")
    names = [f"%x{n}" for n in range(len(args))]
    for n, reg in enumerate(names):
        e.line(f"{reg} = load ptr, ptr {e.gep('ptr', '%ctx', n)}")
    with e.parallel_for(items):
        e.line(f"call void {item}({', '.join(f'ptr {r}' for r in names)}, i64 %b)")
    b.helpers.append(e.function(f"define internal void @{name}_blocks(ptr %ctx, i64 %tid, "
                                f"i64 %nt)"))


@WINDOWS(P.FLASH_ATTENTION)
def _flash_attention(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    n = b.n
    ty = b.ty = _float_type(n)
    mask = n.inputs[3] if len(n.inputs) > 3 else None
    sh = _Shape(n.inputs[0], n.inputs[1], n.inputs[2], mask)
    item = _forward_item(b, name, sh, ty, n.params)
    args = ins[:3] + [ins[3] if mask is not None else "null", out]
    _run_items(b, name, item, args, sh.B * -(-sh.L // BR))


@WINDOWS(P.FLASH_ATTENTION_BACKWARD)
def _flash_attention_backward(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    n = b.n
    ty = b.ty = _float_type(n)
    mask = n.inputs[5] if len(n.inputs) > 5 else None
    sh = _Shape(n.inputs[0], n.inputs[1], n.inputs[2], mask)
    item = _backward_item(b, name, sh, ty, n.params)
    args = ins[:5] + [ins[5] if mask is not None else "null", out]
    _run_items(b, name, item, args, sh.B)
