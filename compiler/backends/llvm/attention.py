"""LLVM kernels of the fused attention pair (``dyngrad/ops/attention.py``), flash-style: no
L×S matrix, only tiles of :data:`BR` query rows x :data:`BC` keys on the stack.

**Forward** (``flash_attention``): one work item per leading index and block of ``BR``
query rows. Per key block: Kᵀ of the block packed once (so the score tile is a sum of
rank-one updates, vectorised along the keys), the tile scaled and masked, then the online
softmax — the running row maximum m, the sum l of exp(s - m) and the output accumulator,
rescaled by exp(m_old - m_new) whenever the maximum grows. At the end out = acc / l and the
logsumexp m + log l (a row that saw no finite score: zeros and -inf, Note [fully masked
rows]; with ``plain``, NaN and -inf, and the backward's P of that row exp(-inf + inf),
NaN, as the plain softmax's, while its dS is zero: the hand-written backward's
``where(mask, 0, ·)`` zeroes every masked score's gradient, so dQ and dK stay finite).
With ``causal`` a row block reads no key block after its last row.

**Backward** (``flash_attention_backward``): one work item per leading index (dK and dV
sum over every query row, so one thread owns them). Per row block and key block the tile
of P = exp(s - lse) is recomputed from the saved logsumexp, dP = dO·Vᵀ from Vᵀ packed as
Kᵀ is, dS = P∘(dP - D + dlse) with D = rowsum(dO∘O), then dV += Pᵀ·dO, dK += scale·dSᵀ·Q
and dQ += scale·dS·K, row by row. Causal key blocks after a row block's last row are
skipped as in the forward.

Operands are read by rows: q, k, v (and the backward's output gradient) at a row stride
under leading strides — as stored, or a strided view of what their group reads
(``passes/views.py``: nanoGPT's heads straight from the qkv product's output;
``_Shape.lay``); the packed output and the gradients are written contiguous.

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
from . import gemm, threads
from .emit import LLTYPE, Emitter, c_strides, literal
from .window import FLOPS, WINDOWS, WindowBuilder, vector_ir

BR = 32  # query rows per tile
BC = 64  # keys per tile
HALF = BC // 2  # the tiles' width for a key block of at most this many keys (_halves)
MAX_HEAD = 256  # E and Ev up to this (the packed Kᵀ/Vᵀ tiles live on the stack)
MAX_ROWS = 1 << 16  # queries up to this (the backward keeps three numbers per row on the stack)
ROW_GROUP = 4  # query rows whose tiles are computed together (independent FMA chains)
KEY_GROUP = 2  # keys whose dK and dV rows the backward accumulates together


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
        self.dw = self.Ev + 1  # (the backward's output gradient's row: see _backward_item)
        # per operand read by rows: (leading strides, row stride), in elements — as stored,
        # or a strided view's (WindowBuilder.views)
        self.lay = {name: (c_strides(t.shape)[:-2], t.shape[-1])
                    for name, t in (("q", q), ("k", k), ("v", v))}
        if max(self.E, self.Ev) > MAX_HEAD or self.L > MAX_ROWS \
                or 0 in (self.B, self.L, self.S, self.E, self.Ev):
            raise NotImplementedError(f"LLVM attention codegen: head sizes {self.E}, "
                                      f"{self.Ev} (up to {MAX_HEAD}), {self.L} queries (up "
                                      f"to {MAX_ROWS}) or an empty dim")
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
    """One work item's function: scalar and vector loads and stores over flat buffers, and
    register tiles (vectors of ``gemm.lanes`` elements, a tail chunk masked)."""

    def __init__(self, ty: str) -> None:
        super().__init__()
        self.ty = ty
        self.vl, self.vt, self.sfx, _ = vector_ir(ty)
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

    def pick(self, cond: str, a: str, b: str) -> str:
        return self.emit(f"select i1 {cond}, {self.ty} {a}, {self.ty} {b}")

    # ------------------------------------------------------------------ vectors
    def chunks(self, width: int) -> list:
        """(offset, lane mask or None) of the vectors covering a row of ``width``."""
        out = []
        for at in range(0, width, self.vl):
            n = min(self.vl, width - at)
            out.append((at, None if n == self.vl else
                        "<" + ", ".join(f"i1 {'true' if k < n else 'false'}"
                                        for k in range(self.vl)) + ">"))
        return out

    def vld(self, p: str, i, lanes: str | None = None) -> str:
        at, vt = self.at(p, i), self.vt
        if lanes is None:
            return self.emit(f"load {vt}, ptr {at}, align 4")
        return self.emit(f"call {vt} @llvm.masked.load.v{self.vl}{self.sfx}.p0(ptr {at}, "
                         f"i32 4, <{self.vl} x i1> {lanes}, {vt} zeroinitializer)")

    def vst(self, v: str, p: str, i, lanes: str | None = None) -> None:
        at, vt = self.at(p, i), self.vt
        if lanes is None:
            self.line(f"store {vt} {v}, ptr {at}, align 4")
        else:
            self.line(f"call void @llvm.masked.store.v{self.vl}{self.sfx}.p0({vt} {v}, "
                      f"ptr {at}, i32 4, <{self.vl} x i1> {lanes})")

    def splat(self, x: str) -> str:
        vt = self.vt
        a = self.emit(f"insertelement {vt} poison, {self.ty} {x}, i64 0")
        return self.emit(f"shufflevector {vt} {a}, {vt} poison, <{self.vl} x i32> "
                         f"zeroinitializer")

    def vfma(self, a: str, b: str, c: str) -> str:
        vt = self.vt
        if gemm.has_fma():
            return self.emit(f"call {vt} @llvm.fma.v{self.vl}{self.sfx}({vt} {a}, {vt} {b}, "
                             f"{vt} {c})")
        return self.emit(f"fadd {vt} {c}, {self.emit(f'fmul {vt} {a}, {b}')}")

    def fma(self, a: str, b: str, c: str) -> str:
        ty = self.ty
        return self.emit(f"call {ty} @llvm.fma.{self.sfx}({ty} {a}, {ty} {b}, {ty} {c})")

    def lanes_of(self, v: str) -> list:
        return [self.emit(f"extractelement {self.vt} {v}, i64 {k}") for k in range(self.vl)]

    def row_max(self, vs: list) -> str:
        """The largest element of vectors ``vs`` (NaN ignored, as -inf is)."""
        vt = self.vt
        m = vs[0]
        for v in vs[1:]:
            m = self.emit(f"select <{self.vl} x i1> {self.emit(f'fcmp ogt {vt} {v}, {m}')}, "
                          f"{vt} {v}, {vt} {m}")
        best = None
        for x in self.lanes_of(m):
            best = x if best is None else self.pick(self.emit(f"fcmp ogt {self.ty} {x}, "
                                                              f"{best}"), x, best)
        return best

    def row_sum(self, vs: list) -> str:
        """The sum of vectors ``vs``: lane-wise in order, then the lanes in order."""
        total = vs[0]
        for v in vs[1:]:
            total = self.emit(f"fadd {self.vt} {total}, {v}")
        out = None
        for x in self.lanes_of(total):
            out = x if out is None else self.f("fadd", out, x)
        return out

    def carried(self, stop, regs: list, body, start=0) -> list:
        """``for i in range(start, stop)`` (run at least once) carrying vectors ``regs``
        (their values before the loop); ``body(i, current)`` returns their next values.
        Returns the values after the loop."""
        blk = self.fresh("C")
        names = [f"%{blk}.v{k}" for k in range(len(regs))]
        with self.loop(f"%{blk}.i", stop, start=start, block=f"{blk}.body",
                       exit=f"{blk}.done", carry=[(n, self.vt, r) for n, r in
                                                  zip(names, regs)]) as lp:
            lp.next = body(f"%{blk}.i", names)
        return lp.next


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


def _transpose(e: _Item, vs: list) -> list:
    """The ``vl`` vectors of ``vs`` (a vl x vl block, one row each) transposed in registers:
    a butterfly of ``shufflevector`` s, one stage per bit of the lane index."""
    vl, vt = e.vl, e.vt
    h = vl // 2
    while h:
        out = list(vs)
        for a in range(vl):
            if a & h:
                continue
            b = a + h
            lo = [vl + (p ^ h) if p & h else p for p in range(vl)]
            hi = [vl + p if p & h else p ^ h for p in range(vl)]
            for k, idx in ((a, lo), (b, hi)):
                mask = ", ".join(f"i32 {x}" for x in idx)
                out[k] = e.emit(f"shufflevector {vt} {vs[a]}, {vt} {vs[b]}, <{vl} x i32> "
                                f"<{mask}>")
        vs, h = out, h // 2
    return vs


def _pack_t(e: _Item, src: str, width: int, j0: str, cols: str, dst: str,
            stride: int) -> None:
    """``dst[x·BC + c] = src[(j0 + c)·stride + x]`` for x < width and c < ``cols`` rounded
    up to whole vectors — a key block of K (or V) transposed, ``vl`` x ``vl`` blocks at a
    time in registers. Keys past ``cols`` in the last vector repeat the block's last key;
    the vectors past that are zeros.

    Note (columns no key fills): the callers mask those scores by select and never read
    those columns' results, but the columns are still multiplied: zeros, not stack garbage,
    which read as floats is often denormal (a multiply-add on a denormal takes a microcode
    assist) or NaN."""
    last = e.i("sub", cols, 1)
    with e.rolled_loop(0, BC, e.vl, scalar=True) as c0:  # (rolled: the transposes are most
        inside = e.i("icmp slt", c0, cols)  #             of the kernel's code, and its
        with e.when(inside):  #                           compile time)
            rows = [e.at(src, e.i("mul", e.i("add", j0, e.min(e.i("add", c0, t), last)),
                                  stride)) for t in range(e.vl)]
            for x0, lanes in e.chunks(width):
                block = _transpose(e, [e.vld(r, x0, lanes) for r in rows])
                for t in range(min(e.vl, width - x0)):
                    e.vst(block[t], dst, e.i("add", c0, (x0 + t) * BC))
        with e.when(e.emit(f"xor i1 {inside}, true")):  # (Note: columns no key fills)
            for x in range(width):
                e.vst("zeroinitializer", dst, e.i("add", c0, x * BC))


def _tile_rows(e: _Item, rows_t: str, width: int, xs: list, cw: int = BC) -> list:
    """Per row pointer of ``xs`` (query or output-gradient rows), the vectors of ``sum_x
    xs[x] · rows_t[x·BC + c]`` over c < ``cw``: a register tile of ``len(xs)`` rows
    (``rows_t`` a packed Kᵀ or Vᵀ), each row's sums in x order."""
    n = cw // e.vl

    def step(x, acc):
        col = e.at(rows_t, e.i("mul", x, BC))
        cv = [e.vld(col, v * e.vl) for v in range(n)]
        out = []
        for t, row in enumerate(xs):
            a = e.splat(e.ld(row, x))
            out += [e.vfma(a, cv[v], acc[t * n + v]) for v in range(n)]
        return out

    flat = e.carried(width, ["zeroinitializer"] * (n * len(xs)), step)
    return [flat[t * n:(t + 1) * n] for t in range(len(xs))]


def _scores(e: _Item, sh: _Shape, kt: str, cols: str, p: dict, mask: str | None, j0: str,
            rows: list, cw: int = BC) -> None:
    """For each (query index i, query row pointer, score row pointer) of ``rows``:
    ``srow[c]`` = scale·q_i·k_(j0+c), masked (-inf where a key is not attended or past
    ``cols``, a float mask added), for c < ``cw`` (``cols`` at most)."""
    tiles = _tile_rows(e, kt, sh.E, [qrow for _, qrow, _ in rows], cw)
    ninf = e.lit(float("-inf"))
    last = sh.S - 1
    for (i, _, srow), tile in zip(rows, tiles):
        for v, acc in enumerate(tile):
            e.vst(acc, srow, v * e.vl)
        with e.rolled_loop(0, cw) as c:
            s = e.f("fmul", e.ld(srow, c), e.lit(p["scale"]))
            j = e.i("add", j0, c)
            out = e.i("icmp sge", c, cols)
            if p["causal"]:
                out = e.emit(f"or i1 {out}, {e.i('icmp sgt', j, i)}")
            if mask is not None:
                ms = sh.mask_strides
                at = e.i("add", e.i("mul", i, ms[-2]), e.i("mul", e.min(j, last), ms[-1]))
                if sh.mask_ty == "bool":
                    mv = e.emit(f"load i8, ptr {e.gep('i8', mask, at)}")
                    out = e.emit(f"or i1 {out}, {e.emit(f'icmp eq i8 {mv}, 0')}")
                else:
                    s = e.f("fadd", s, e.ld(mask, at))
            e.st(e.pick(out, ninf, s), srow, c)


def _exp_row(e: _Item, exp: str, srow: str, shift: str, dead: str | None = None,
             cw: int = BC) -> None:
    """``srow[c] = exp(srow[c] - shift)`` for c < ``cw`` (0 everywhere on a ``dead`` row)."""
    with e.rolled_loop(0, cw) as c:
        p = e.emit(f"call {e.ty} {exp}({e.ty} {e.f('fsub', e.ld(srow, c), shift)})")
        e.st(p if dead is None else e.pick(dead, e.lit(0.0), p), srow, c)


def _row_vectors(e: _Item, row: str, cw: int = BC) -> list:
    return [e.vld(row, v * e.vl) for v in range(cw // e.vl)]


class _Term:
    """``dst[x] (· scale) += sum_n coef(n) · src(n)[x]`` for x < ``width`` — one row of
    :func:`_accumulate`."""

    def __init__(self, dst: str, width: int, coef, src, scale: str | None = None) -> None:
        self.dst, self.width, self.coef, self.src, self.scale = dst, width, coef, src, scale


def _accumulate(e: _Item, count, terms: list) -> None:
    """Every term of ``terms`` over n < ``count`` (at least one) in one loop, their rows in
    registers: each ``dst`` loaded once (times its ``scale``) and stored once; the terms'
    independent sums keep the FMA units busy."""
    parts = [e.chunks(t.width) for t in terms]
    regs = []
    for t, ps in zip(terms, parts):
        rs = [e.vld(t.dst, at, lanes) for at, lanes in ps]
        if t.scale is not None:
            a = e.splat(t.scale)
            rs = [e.emit(f"fmul {e.vt} {r}, {a}") for r in rs]
        regs += rs

    def step(n, acc):
        out, k, srcs = [], 0, {}
        for t, ps in zip(terms, parts):
            a, src = e.splat(t.coef(n)), t.src(n)
            for at, lanes in ps:
                key = (src, at)
                if key not in srcs:
                    srcs[key] = e.vld(src, at, lanes)
                out.append(e.vfma(a, srcs[key], acc[k]))
                k += 1
        return out

    done, k = e.carried(count, regs, step), 0
    for t, ps in zip(terms, parts):
        for at, lanes in ps:
            e.vst(done[k], t.dst, at, lanes)
            k += 1


def _halves(e: _Item, cols: str, body) -> None:
    """``body(cw)`` for a block of ``cols`` keys: with ``cw = HALF`` when they are at most
    that many (a causal row block's last key block, a ragged end: the other columns would
    only be masked), else ``BC``. A column's sums are the same chains either way: the same
    bits. (``HALF = 0``: full tiles only.)"""
    if not HALF:
        body(BC)
        return
    half = e.i("icmp sle", cols, HALF)
    with e.when(half):
        body(HALF)
    with e.when(e.emit(f"xor i1 {half}, true")):
        body(BC)


def _key_end(e: _Item, sh: _Shape, causal: bool, i0: str, rows: str) -> str:
    """The keys a row block reads: all, or with ``causal`` those up to its last row."""
    return e.min(e.i("add", i0, rows), sh.S) if causal else str(sh.S)


def _group(n: int, most: int) -> int:
    """Rows (or keys) handled together: the largest of ``most``, 2, 1 dividing ``n`` (row
    blocks then hold whole groups: :data:`BR` and :data:`BC` are multiples of it)."""
    return next(g for g in (most, 2, 1) if n % g == 0)


def _forward_item(b: WindowBuilder, name: str, sh: _Shape, ty: str, p: dict) -> str:
    """``void @<name>_item(q, k, v, mask, out, i64 w)``: rows ``BR·(w div B)`` on of
    leading index ``w mod B``, in groups of ``RB`` rows."""
    exp, log = _math(b, ty)
    e = _Item(ty)
    mask = "%mask" if sh.mask_ty else None
    E, Ev = sh.E, sh.Ev
    rb = _group(sh.L, ROW_GROUP)
    tile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    kt = e.emit(f"alloca [{E * BC} x {ty}], align 64")
    acc = e.emit(f"alloca [{BR * Ev} x {ty}], align 64")
    mrow = e.emit(f"alloca [{BR} x {ty}], align 64")
    lrow = e.emit(f"alloca [{BR} x {ty}], align 64")
    bh = e.i("urem", "%w", sh.B)  # (leading index fastest: a thread's items mix early
    i0 = e.i("mul", e.i("udiv", "%w", sh.B), BR)  # and late row blocks, causal or not)
    rows = e.min(BR, e.i("sub", sh.L, i0))
    q, k, v = (e.at(f"%{t}", _lead_offset(e, sh, bh, sh.lay[t][0])) for t in "qkv")
    rq, rk, rv = (sh.lay[t][1] for t in "qkv")  # (row strides)
    out = e.at("%out", e.i("mul", bh, sh.L * (Ev + 1)))
    if mask is not None:
        mask = e.gep("i8" if sh.mask_ty == "bool" else ty, "%mask",
                     _lead_offset(e, sh, bh, sh.mask_strides[:-2]))
    ninf, zero = e.lit(float("-inf")), e.lit(0.0)
    with e.rolled_loop(0, rows) as r:
        e.st(ninf, mrow, r)
        e.st(zero, lrow, r)
    with e.rolled_loop(0, e.i("mul", rows, Ev)) as x:
        e.st(zero, acc, x)
    jend = _key_end(e, sh, p["causal"], i0, rows)

    def block(j0: str, cols: str, cw: int) -> None:
        """The row groups against key block ``j0``: its ``cols`` keys, tiles ``cw`` wide."""
        with e.rolled_loop(0, rows, rb, scalar=True) as r0:
            group = [e.i("add", r0, t) for t in range(rb)]
            srows = [e.at(tile, e.i("mul", r, BC)) for r in group]
            idx = [e.i("add", i0, r) for r in group]
            _scores(e, sh, kt, cols, p, mask, j0,
                    [(i, e.at(q, e.i("mul", i, rq)), sr) for i, sr in zip(idx, srows)], cw)
            terms = []
            for r, srow in zip(group, srows):
                mold = e.ld(mrow, r)
                top = e.row_max(_row_vectors(e, srow, cw))
                mnew = e.pick(e.emit(f"fcmp ogt {ty} {top}, {mold}"), top, mold)
                shift = e.pick(e.emit(f"fcmp oeq {ty} {mnew}, {ninf}"), zero, mnew)
                alpha = e.emit(f"call {ty} {exp}({ty} {e.f('fsub', mold, shift)})")
                _exp_row(e, exp, srow, shift, cw=cw)
                psum = e.row_sum(_row_vectors(e, srow, cw))
                e.st(e.f("fadd", e.f("fmul", e.ld(lrow, r), alpha), psum), lrow, r)
                e.st(mnew, mrow, r)
                terms.append(_Term(e.at(acc, e.i("mul", r, Ev)), Ev,
                                   lambda c, srow=srow: e.ld(srow, c),
                                   lambda c: e.at(v, e.i("mul", e.i("add", j0, c), rv)),
                                   scale=alpha))
            _accumulate(e, cols, terms)

    with e.rolled_loop(0, jend, BC, scalar=True) as j0:
        cols = e.min(BC, e.i("sub", jend, j0))
        _pack_t(e, k, E, j0, cols, kt, rk)
        _halves(e, cols, lambda cw: block(j0, cols, cw))
    with e.rolled_loop(0, rows, scalar=True) as r:
        orow = e.at(out, e.i("mul", e.i("add", i0, r), Ev + 1))
        arow = e.at(acc, e.i("mul", r, Ev))
        m, total = e.ld(mrow, r), e.ld(lrow, r)
        dead = e.emit(f"fcmp oeq {ty} {m}, {ninf}")
        gone = e.lit(float("nan")) if p.get("plain") else zero  # (Note on plain rows)
        with e.rolled_loop(0, Ev) as x:
            e.st(e.pick(dead, gone, e.f("fdiv", e.ld(arow, x), total)), orow, x)
        lse = e.f("fadd", m, e.emit(f"call {ty} {log}({ty} {total})"))
        e.st(e.pick(dead, ninf, lse), orow, Ev)
    e.line("ret void")
    b.helpers.append(e.function(f"define internal void @{name}_item(ptr noalias %q, ptr "
                                f"noalias %k, ptr noalias %v, ptr noalias %mask, ptr noalias "
                                f"%out, i64 %w)"))
    return f"@{name}_item"


def _backward_item(b: WindowBuilder, name: str, sh: _Shape, ty: str, p: dict) -> str:
    """``void @<name>_item(q, k, v, o, do, mask, out, i64 w)``: every gradient of leading
    index ``w``. Per key block (Kᵀ and Vᵀ packed once) the row blocks that can see it (with
    ``causal``, from the block holding the key block's first key on); query rows in groups
    of ``RB``, keys in pairs where the sizes allow."""
    exp, _ = _math(b, ty)
    e = _Item(ty)
    mask = "%mask" if sh.mask_ty else None
    E, Ev, L, S = sh.E, sh.Ev, sh.L, sh.S
    causal = p["causal"]
    rb = _group(L, ROW_GROUP)
    kb = _group(math.gcd(L, S), KEY_GROUP)  # (a causal block's keys end at a row's index)
    ptile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    dtile = e.emit(f"alloca [{BR * BC} x {ty}], align 64")
    kt = e.emit(f"alloca [{E * BC} x {ty}], align 64")
    vt = e.emit(f"alloca [{Ev * BC} x {ty}], align 64")
    rowd = e.emit(f"alloca [{L} x {ty}], align 64")  # dlse - D per row
    rowl = e.emit(f"alloca [{L} x {ty}], align 64")  # the logsumexp used (0 if dead)
    rowdead = e.emit(f"alloca [{L} x i8], align 64")
    bh = "%w"
    q, k, v, do = (e.at(f"%{t}", _lead_offset(e, sh, bh, sh.lay[t][0]))
                   for t in ("q", "k", "v", "do"))
    rq, rk, rv, rd = (sh.lay[t][1] for t in ("q", "k", "v", "do"))  # (row strides; the
    #   output gradient's row is Ev + 1 wide, or Ev: the logsumexp's gradient zero, sh.dw)
    o = e.at("%o", e.i("mul", bh, L * (Ev + 1)))
    # strided rows read again and again (q and dO per key block, k per row block) are
    # copied once into contiguous scratch when small: rows at a large stride share few
    # cache sets (nanoGPT's: 3·128 floats apart), which cost the kernel ~12%
    q, rq = _rows_here(e, q, L, E, rq)
    k, rk = _rows_here(e, k, S, E, rk)
    do, rd = _rows_here(e, do, L, sh.dw, rd)
    dq = e.at("%out", e.i("mul", bh, L * E + S * E + S * Ev))
    dk = e.at(dq, L * E)
    dv = e.at(dk, S * E)
    if mask is not None:
        mask = e.gep("i8" if sh.mask_ty == "bool" else ty, "%mask",
                     _lead_offset(e, sh, bh, sh.mask_strides[:-2]))
    ninf, zero = e.lit(float("-inf")), e.lit(0.0)
    with e.rolled_loop(0, L * E + S * E + S * Ev) as x:
        e.st(zero, dq, x)
    scale = e.lit(p["scale"])
    with e.rolled_loop(0, L, scalar=True) as i:
        orow, drow = e.at(o, e.i("mul", i, Ev + 1)), e.at(do, e.i("mul", i, rd))
        delta = e.row_sum([e.emit(f"fmul {e.vt} {e.vld(drow, at, lanes)}, "
                                  f"{e.vld(orow, at, lanes)}")
                           for at, lanes in e.chunks(Ev)])  # D = rowsum(dO∘O)
        dlse = e.ld(drow, Ev) if sh.dw > Ev else zero
        e.st(e.f("fsub", dlse, delta), rowd, i)
        lse = e.ld(orow, Ev)
        dead = e.emit(f"fcmp oeq {ty} {lse}, {ninf}")
        e.st(lse if p.get("plain") else e.pick(dead, zero, lse), rowl, i)
        e.line(f"store i8 {e.emit(f'zext i1 {dead} to i8')}, ptr {e.gep('i8', rowdead, i)}")
    with e.rolled_loop(0, min(S, L) if causal else S, BC, scalar=True) as j0:
        keys = e.min(BC, e.i("sub", S, j0))
        _pack_t(e, k, E, j0, keys, kt, rk)
        _pack_t(e, v, Ev, j0, keys, vt, rv)
        first = e.i("mul", e.i("udiv", j0, BR), BR) if causal else "0"
        with e.rolled_loop(first, L, BR, scalar=True) as i0:
            rows = e.min(BR, e.i("sub", L, i0))
            cols = e.min(keys, e.i("sub", e.i("add", i0, rows), j0)) if causal else keys

            def rows_against(cw: int) -> None:
                """The row groups against the key block, tiles ``cw`` wide (as the
                forward's ``block``: a block of at most ``HALF`` visible keys, half)."""
                with e.rolled_loop(0, rows, rb, scalar=True) as r0:
                    group = [e.i("add", r0, t) for t in range(rb)]
                    idx = [e.i("add", i0, r) for r in group]
                    prows = [e.at(ptile, e.i("mul", r, BC)) for r in group]
                    srows = [e.at(dtile, e.i("mul", r, BC)) for r in group]
                    _scores(e, sh, kt, cols, p, mask, j0,
                            [(i, e.at(q, e.i("mul", i, rq)), pr) for i, pr in zip(idx, prows)],
                            cw)
                    for i, prow in zip(idx, prows):
                        flag = e.emit(f"load i8, ptr {e.gep('i8', rowdead, i)}")
                        _exp_row(e, exp, prow, e.ld(rowl, i), None if p.get("plain") else
                                 e.emit(f"icmp ne i8 {flag}, 0"), cw)
                    # dS = P∘(dO·Vᵀ - D + dlse)·scale, tile rows in registers
                    dps = _tile_rows(e, vt, Ev, [e.at(do, e.i("mul", i, rd)) for i in idx], cw)
                    sc = e.splat(scale)
                    for i, prow, srow, dp in zip(idx, prows, srows, dps):
                        shift = e.splat(e.ld(rowd, i))
                        gone = None  # plain: a dead row's dS is zero (Note on plain rows)
                        if p.get("plain"):
                            flag = e.emit(f"load i8, ptr {e.gep('i8', rowdead, i)}")
                            gone = e.emit(f"icmp ne i8 {flag}, 0")
                        vt_ = e.vt
                        for n, (pv, dv_) in enumerate(zip(_row_vectors(e, prow, cw), dp)):
                            ds = e.emit(f"fmul {vt_} {pv}, {e.emit(f'fadd {vt_} {dv_}, {shift}')}")
                            ds = e.emit(f"fmul {vt_} {ds}, {sc}")
                            if gone is not None:
                                ds = e.emit(f"select i1 {gone}, {vt_} zeroinitializer, {vt_} {ds}")
                            e.vst(ds, srow, n * e.vl)
                    # dQ_i += sum_c dS[i, c] · K_c
                    _accumulate(e, cols, [
                        _Term(e.at(dq, e.i("mul", i, E)), E, lambda c, srow=srow: e.ld(srow, c),
                              lambda c: e.at(k, e.i("mul", e.i("add", j0, c), rk)))
                        for i, srow in zip(idx, srows)])

            _halves(e, cols, rows_against)
            # per key: dV_c += sum_i P[i, c] · dO_i and dK_c += sum_i dS[i, c] · Q_i
            with e.rolled_loop(0, cols, kb, scalar=True) as c0:
                terms = []
                for c in [e.i("add", c0, t) for t in range(kb)]:
                    j = e.i("add", j0, c)
                    terms.append(_Term(e.at(dv, e.i("mul", j, Ev)), Ev,
                                       lambda r, c=c: e.ld(ptile, e.i("add", e.i("mul", r, BC), c)),
                                       lambda r: e.at(do, e.i("mul", e.i("add", i0, r), rd))))
                    terms.append(_Term(e.at(dk, e.i("mul", j, E)), E,
                                       lambda r, c=c: e.ld(dtile, e.i("add", e.i("mul", r, BC), c)),
                                       lambda r: e.at(q, e.i("mul", e.i("add", i0, r), rq))))
                _accumulate(e, rows, terms)
    e.line("ret void")
    b.helpers.append(e.function(
        f"define internal void @{name}_item(ptr noalias %q, ptr noalias %k, ptr noalias %v, "
        f"ptr noalias %o, ptr noalias %do, ptr noalias %mask, ptr noalias %out, i64 %w)"))
    return f"@{name}_item"


COPY_ROWS_MAX = 32 << 10  # bytes of strided rows a backward item copies to contiguous scratch


def _rows_here(e: _Item, src: str, rows: int, width: int, stride: int) -> tuple:
    """(pointer, row stride) of ``rows`` rows of ``width`` at ``stride`` from ``src``: the
    rows themselves when contiguous or too large to copy (``COPY_ROWS_MAX``), else a copy
    on the stack, rows ``width`` apart."""
    size = 8 if e.ty == "double" else 4
    if stride == width or rows * width * size > COPY_ROWS_MAX:
        return src, stride
    buf = e.emit(f"alloca [{rows * width} x {e.ty}], align 64")
    with e.rolled_loop(0, rows, scalar=True) as r:
        row, to = e.at(src, e.i("mul", r, stride)), e.at(buf, e.i("mul", r, width))
        for at, lanes in e.chunks(width):
            e.vst(e.vld(row, at, lanes), to, at, lanes)
    return buf, width


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


def _lower(b: WindowBuilder, name: str, ins: list, out: str, tensors: int, item_of,
           items) -> None:
    """A node of the pair: its ``tensors`` tensor inputs, then the optional mask (a null
    pointer when absent); ``item_of`` writes the work item's function, ``items(shape)``
    counts the items."""
    n = b.n
    ty = b.ty = _float_type(n)
    b.direct_decls = vector_ir(ty)[3]
    mask = n.inputs[tensors] if len(n.inputs) > tensors else None
    sh = _Shape(n.inputs[0], n.inputs[1], n.inputs[2], mask)
    if tensors == 5:
        sh.dw = n.inputs[4].shape[-1]
        sh.lay["do"] = (c_strides(n.inputs[4].shape)[:-2], sh.dw)
    for k, name_ in enumerate(("q", "k", "v", None, "do")[:tensors]):
        strides = b.views.get(k)
        if strides is not None and name_ is not None:
            sh.lay[name_] = (strides[:-2], strides[-2])
    item = item_of(b, name, sh, ty, n.params)
    args = ins[:tensors] + [ins[tensors] if mask is not None else "null", out]
    _run_items(b, name, item, args, items(sh))


@WINDOWS(P.FLASH_ATTENTION)
def _flash_attention(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    _lower(b, name, ins, out, 3, _forward_item, lambda sh: sh.B * -(-sh.L // BR))


@WINDOWS(P.FLASH_ATTENTION_BACKWARD)
def _flash_attention_backward(b: WindowBuilder, name: str, ins: list, out: str) -> None:
    _lower(b, name, ins, out, 5, _backward_item, lambda sh: sh.B)


def _flops(n, products: int) -> float:
    """Multiply-adds twice: ``products`` L×S products of head-sized rows (E or Ev), every
    key counted (a causal node does about half)."""
    q, v = n.inputs[0].shape, n.inputs[2].shape
    return 2.0 * math.prod(int(d) for d in q[:-1]) * int(v[-2]) * products


FLOPS[P.FLASH_ATTENTION] = lambda n: _flops(n, n.inputs[0].shape[-1] + n.inputs[2].shape[-1])
FLOPS[P.FLASH_ATTENTION_BACKWARD] = lambda n: _flops(
    n, 3 * n.inputs[0].shape[-1] + 2 * n.inputs[2].shape[-1])  # S, dQ, dK; dP, dV
