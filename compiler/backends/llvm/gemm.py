"""The generated matmul kernel: a register-blocked ``C = A @ B`` in LLVM IR, shapes at run time.

``void @dg_gemm_<f32|f64>(A, rsa, csa, B, rsb, csb, C, M, N, K)`` computes ``C`` (M x N,
row-major) ``= A @ B`` where ``A[i, k]`` is at ``A + i·rsa + k·csa`` and ``B[k, j]`` at ``B +
k·rsb + j·csb`` — a transposed operand is just other strides. Its IR depends on the dtype and
the host only: :func:`library` compiles it once per process and dtype (or loads it from
the disk cache) and graphs' modules call it by name (``matmul.py``: once per batch entry), as
``tune.py`` does when it times it.

The loops are Goto's: ``k`` in blocks of ``KC``; rows in blocks of ``MC``, whose ``A`` block
is packed into ``MR``-row panels (``k``-major, missing rows zero); columns in panels of ``NR
= NV`` vectors, each ``B`` panel packed ``KC x NR`` (missing columns zero) — contiguous,
aligned, and free of the 4 KiB aliasing a power-of-two row length gives. The micro-kernel
keeps an ``MR x NR`` tile of C in ``MR·NV`` vector registers and, per ``k``, loads ``NV``
vectors of the B panel, broadcasts ``MR`` values of the A panel and does ``MR·NV``
multiply-adds. Tiles at the bottom edge use a kernel of 1, 2 or 4 rows; tiles that still
overhang (rows or columns) run on a stack tile copied in and out. The buffers live on the
stack (``(MC + NR)·KC + MR·NR`` elements: about 160 KiB).

Note (the sum order): every C element is the chain ``c = fma(a[i,k], b[k,j], c)`` for ``k =
0, 1, ..., K-1`` from ``c = +0.0`` — a later ``k`` block reloads the partial sums from C and
continues the chain. The order thus depends on nothing (not the blocking, the tile, the
thread split): the result is a function of the operands alone. It is fused (``llvm.fma``)
when the CPU has FMA and ``fmul`` + ``fadd`` otherwise — a property of the machine type,
which the compiled-code cache keys on. ``K = 0`` writes zeros; NaN and inf propagate (the
zero padding only feeds lanes that are never stored).

Both cores: from ``PAR_WORK`` multiply-adds (and ``2·MR`` rows) the rows are split in
``MR``-aligned ranges, one part per thread of the pool (``threads.py``); each part packs
its own panels. Since the sum order does not depend on the split, the bits do not either.
"""

from __future__ import annotations

import threading
from pathlib import Path

from . import cache, choices, jit, target, threads
from .emit import Emitter

MR = 8  # rows of the register tile
NV = 2  # vectors of the register tile (NR = NV · lanes columns)
KC = {"float": 256, "double": 128}  # k block: a packed B panel (KC x NR) stays in L1
MC = 128  # row block: a packed A block (MC x KC) stays in L2
PAR_WORK = 1 << 20  # multiply-adds from which a product is split across threads (~10 µs
#                    on one core, a few times the pool's cost of a part; a busy machine
#                    costs nothing more: the caller takes every part a thread does not)
EDGE_ROWS = (1, 2, 4)  # smaller kernels for the last rows of a block
TRANSPOSE = 8  # the packing's in-register transposes: 8 x 8 blocks (16 x 16 ran no faster
#                and cost LLVM twice the time)
_SUFFIX = {"float": "f32", "double": "f64"}
_SIZE = {"float": 4, "double": 8}
_lock = threading.Lock()
_libraries: dict[tuple, jit.Compiled] = {}  # (type, uses threads, target) -> the kernel


def version() -> str:
    """A digest of this module's source: decisions measured against the kernel
    (``tune.py``'s matmul choices) are taken again when its code changes."""
    return choices.digest(Path(__file__))


def vector_bits() -> int:
    """The width of the target's widest vector registers, which the kernel uses (the
    register tile is sized for them; ``target.py``)."""
    return target.base().vector_bits


def has_fma() -> bool:
    return target.base().fma


def lanes(ty: str) -> int:
    return vector_bits() // (8 * _SIZE[ty])


def name(ty: str) -> str:
    """The kernel's function name for LLVM type ``ty`` ('float', 'double'): ``dg_gemm_f32``,
    ``dg_gemm_f32_mt`` for the one splitting across threads."""
    return f"dg_gemm_{_SUFFIX[ty]}{'_mt' if uses_threads() else ''}"


class _Function(Emitter):
    """One of the kernel's functions being written (fresh names ``%v1``, ``%v2``, ...),
    from its header (``define ... {``) and entry block."""

    def __init__(self, header: str) -> None:
        super().__init__(prefix="v")
        self.header = header
        self.label("entry")

    def text(self) -> str:
        return "\n".join([self.header] + self.lines + ["}"]) + "\n\n"


def _micro(ty: str, rows: int) -> str:
    """``@<name>_k<rows>(ap, bp, c, ldc, kc, first)``: ``C[rows x NR] (+)= Ap·Bp`` over
    ``kc`` steps, the tile in registers (``first``: start from zero, else from C)."""
    vl, nr, size = lanes(ty), NV * lanes(ty), _SIZE[ty]
    vt = f"<{vl} x {ty}>"
    f = _Function(f"define internal void @{name(ty)}_k{rows}(ptr noalias %ap, ptr noalias %bp, "
                  f"ptr noalias %c, i64 %ldc, i64 %kc, i1 %first) noinline {{")
    f.line("br i1 %first, label %init, label %loadc")
    f.label("loadc")
    loaded = {}
    for r in range(rows):
        row = f.gep(ty, "%c", f.emit(f"mul i64 %ldc, {r}"))
        for v in range(NV):
            loaded[r, v] = f.emit(f"load {vt}, ptr {f.gep(ty, row, v * vl)}, align {size}")
    f.jump("init")
    f.label("init")
    init = {rv: f.emit(f"phi {vt} [zeroinitializer, %entry], [{x}, %loadc]")
            for rv, x in loaded.items()}
    tile = [(r, v) for r in range(rows) for v in range(NV)]
    with f.loop("%k", "%kc", block="loop", exit="done", hint=f", !llvm.loop {jit.ROLLED_LOOP}",
                carry=[(f"%acc{r}.{v}", vt, init[r, v]) for r, v in tile]) as loop:
        pb = f.gep(ty, "%bp", f.emit(f"mul i64 %k, {nr}"))
        b = [f.emit(f"load {vt}, ptr {f.gep(ty, pb, v * vl)}, align 64") for v in range(NV)]
        pa = f.gep(ty, "%ap", f.emit(f"mul i64 %k, {MR}"))
        for r in range(rows):
            a = f.emit(f"load {ty}, ptr {f.gep(ty, pa, r)}")
            a = f.emit(f"insertelement {vt} poison, {ty} {a}, i64 0")
            a = f.emit(f"shufflevector {vt} {a}, {vt} poison, <{vl} x i32> zeroinitializer")
            for v in range(NV):
                acc = f"%acc{r}.{v}"
                if has_fma():
                    f.line(f"{acc}.n = call {vt} @llvm.fma.v{vl}{_SUFFIX[ty]}({vt} {a}, "
                           f"{vt} {b[v]}, {vt} {acc})")
                else:
                    p = f.emit(f"fmul {vt} {a}, {b[v]}")
                    f.line(f"{acc}.n = fadd {vt} {acc}, {p}")
        loop.next = [f"%acc{r}.{v}.n" for r, v in tile]
    for r in range(rows):
        row = f.gep(ty, "%c", f.emit(f"mul i64 %ldc, {r}"))
        for v in range(NV):
            f.line(f"store {vt} %acc{r}.{v}.n, ptr {f.gep(ty, row, v * vl)}, align {size}")
    f.line("ret void")
    return f.text()


def _copy(ty: str) -> str:
    """``@<name>_copy(dst, ldd, src, lds, rows, cols)``: a rows x cols block."""
    f = _Function(f"define internal void @{name(ty)}_copy(ptr noalias %dst, i64 %ldd, "
                  f"ptr noalias %src, i64 %lds, i64 %rows, i64 %cols) noinline {{")
    with f.rolled_loop(0, "%rows") as i:
        d = f.gep(ty, "%dst", f.emit(f"mul i64 {i}, %ldd"))
        s = f.gep(ty, "%src", f.emit(f"mul i64 {i}, %lds"))
        with f.rolled_loop(0, "%cols") as j:
            x = f.emit(f"load {ty}, ptr {f.gep(ty, s, j)}")
            f.line(f"store {ty} {x}, ptr {f.gep(ty, d, j)}")
    f.line("ret void")
    return f.text()


def _edge(ty: str) -> str:
    """``@<name>_edge(ap, bp, c, ldc, kc, first, rows, cols, ct)``: a tile of ``rows < MR``
    or ``cols < NR``: the smallest kernel with enough rows, on C itself when the tile fits it
    exactly, else on the stack tile ``ct`` (C's part copied in, then out)."""
    nr = NV * lanes(ty)
    f = _Function(f"define internal void @{name(ty)}_edge(ptr noalias %ap, ptr noalias %bp, "
                  f"ptr noalias %c, i64 %ldc, i64 %kc, i1 %first, i64 %rows, i64 %cols, "
                  f"ptr noalias %ct) noinline {{")
    full = f.emit(f"icmp eq i64 %cols, {nr}")
    sizes = [r for r in EDGE_ROWS if r < MR] + [MR]
    for k, r in enumerate(sizes):
        if k < len(sizes) - 1:
            f.line(f"br i1 {f.emit(f'icmp sle i64 %rows, {r}')}, label %e{r}, label %n{r}")
        else:
            f.jump(f"e{r}")
        f.label(f"e{r}")
        direct = f.emit(f"and i1 {f.emit(f'icmp eq i64 %rows, {r}')}, {full}")
        f.line(f"br i1 {direct}, label %d{r}, label %t{r}")
        f.label(f"d{r}")
        f.line(f"call void @{name(ty)}_k{r}(ptr %ap, ptr %bp, ptr %c, i64 %ldc, i64 %kc, "
               "i1 %first)")
        f.line("ret void")
        f.label(f"t{r}")
        f.line(f"call void @{name(ty)}_copy(ptr %ct, i64 {nr}, ptr %c, i64 %ldc, i64 %rows, "
               "i64 %cols)")  # (garbage on a first block: the kernel does not read it then)
        f.line(f"call void @{name(ty)}_k{r}(ptr %ap, ptr %bp, ptr %ct, i64 {nr}, i64 %kc, "
               "i1 %first)")
        f.line(f"call void @{name(ty)}_copy(ptr %c, i64 %ldc, ptr %ct, i64 {nr}, i64 %rows, "
               "i64 %cols)")
        f.line("ret void")
        if k < len(sizes) - 1:
            f.label(f"n{r}")
    return f.text()


def _transpose(f: _Function, ty: str, vecs: list) -> list:
    """The n x n transpose of ``n`` vectors ``<n x ty>``: result ``k`` holds element ``k`` of
    every input, in order. log2(n) stages of two-input shuffles; stage ``s`` swaps bit ``s``
    of the row index with bit ``s`` of the column index."""
    n, v, s = len(vecs), list(vecs), 1
    vt = f"<{n} x {ty}>"
    while s < n:
        lo = ", ".join(f"i32 {t if t & s == 0 else t - s + n}" for t in range(n))
        hi = ", ".join(f"i32 {t + s if t & s == 0 else t + n}" for t in range(n))
        new = list(v)
        for i in range(n):
            if not i & s:
                new[i] = f.emit(f"shufflevector {vt} {v[i]}, {vt} {v[i + s]}, <{n} x i32> <{lo}>")
                new[i + s] = f.emit(f"shufflevector {vt} {v[i]}, {vt} {v[i + s]}, "
                               f"<{n} x i32> <{hi}>")
        v, s = new, 2 * s
    return v


def _pack_a(ty: str) -> str:
    """``@<name>_packa(ap, a, rsa, csa, mc, kc)``: ``A[0:mc, 0:kc]`` (``a`` at the block's
    first element) as MR-row panels, ``k``-major (``ap[p·MR·kc + k·MR + r]``); the last
    panel's missing rows zero. A whole panel of a row-major A (``csa`` 1) is read as
    ``MR``-element vectors of each row, ``MR`` columns at a time, transposed in registers; of
    a column-major A (``rsa`` 1, a transposed operand) as one vector per column. The loops
    left (the rest of the columns, a last panel, other strides) are scalar code."""
    size, vt = _SIZE[ty], f"<{MR} x {ty}>"
    f = _Function(f"define internal void @{name(ty)}_packa(ptr noalias %ap, ptr noalias %a, "
                  f"i64 %rsa, i64 %csa, i64 %mc, i64 %kc) noinline {{")
    row_major, col_major = f.emit("icmp eq i64 %csa, 1"), f.emit("icmp eq i64 %rsa, 1")
    kb = f.emit(f"and i64 %kc, {-MR}")  # the columns in whole blocks of MR
    with f.rolled_loop(0, "%mc", MR) as ir:
        panel = f.gep(ty, "%ap", f.emit(f"mul i64 {ir}, %kc"))
        rows = f.min(MR, f.emit(f"sub i64 %mc, {ir}"))
        full = f.emit(f"icmp eq i64 {rows}, {MR}")
        b = f.fresh("P")
        f.line(f"br i1 {f.emit(f'and i1 {full}, {row_major}')}, label %{b}.rm, label %{b}.x")
        f.label(f"{b}.rm")
        starts = [f.gep(ty, "%a", f.emit(f"mul i64 {f.emit(f'add i64 {ir}, {r}')}, %rsa"))
                  for r in range(MR)]
        with f.rolled_loop(0, kb, MR, scalar=True) as k0:
            vs = [f.emit(f"load {vt}, ptr {f.gep(ty, p, k0)}, align {size}") for p in starts]
            for k, t in enumerate(_transpose(f, ty, vs)):
                at = f.emit(f"mul i64 {f.emit(f'add i64 {k0}, {k}')}, {MR}")
                f.line(f"store {vt} {t}, ptr {f.gep(ty, panel, at)}, align {size}")
        with f.rolled_loop(kb, "%kc", scalar=True) as k:
            for r, p in enumerate(starts):
                x = f.emit(f"load {ty}, ptr {f.gep(ty, p, k)}")
                at = f.emit(f"add i64 {f.emit(f'mul i64 {k}, {MR}')}, {r}")
                f.line(f"store {ty} {x}, ptr {f.gep(ty, panel, at)}")
        f.jump(f"{b}.end")
        f.label(f"{b}.x")
        f.line(f"br i1 {f.emit(f'and i1 {full}, {col_major}')}, label %{b}.cm, label %{b}.any")
        f.label(f"{b}.cm")
        first = f.gep(ty, "%a", ir)
        with f.rolled_loop(0, "%kc", scalar=True) as k:
            p = f.gep(ty, first, f.emit(f"mul i64 {k}, %csa"))
            x = f.emit(f"load {vt}, ptr {p}, align {size}")
            f.line(f"store {vt} {x}, ptr {f.gep(ty, panel, f.emit(f'mul i64 {k}, {MR}'))}, "
                   f"align {size}")
        f.jump(f"{b}.end")
        f.label(f"{b}.any")
        with f.rolled_loop(0, rows, scalar=True) as r:
            src = f.gep(ty, "%a", f.emit(f"mul i64 {f.emit(f'add i64 {ir}, {r}')}, %rsa"))
            with f.rolled_loop(0, "%kc", scalar=True) as k:
                x = f.emit(f"load {ty}, ptr {f.gep(ty, src, f.emit(f'mul i64 {k}, %csa'))}")
                at = f.emit(f"add i64 {f.emit(f'mul i64 {k}, {MR}')}, {r}")
                f.line(f"store {ty} {x}, ptr {f.gep(ty, panel, at)}")
        with f.rolled_loop(rows, MR, scalar=True) as r:
            with f.rolled_loop(0, "%kc", scalar=True) as k:
                dst = f.gep(ty, panel, f.emit(f"add i64 {f.emit(f'mul i64 {k}, {MR}')}, {r}"))
                f.line(f"store {ty} 0.0, ptr {dst}")
        f.jump(f"{b}.end")
        f.label(f"{b}.end")
    f.line("ret void")
    return f.text()


def _pack_b(ty: str) -> str:
    """``@<name>_packb(bp, b, rsb, csb, kc, cols)``: ``B[0:kc, 0:cols]`` (``b`` at the
    panel's first element) as ``kc x NR`` rows (``bp[k·NR + j]``), missing columns zero; whole
    rows are vector copies when B's rows are contiguous; when its columns are (``rsb`` 1: a
    transposed operand, the forward's ``x @ Wᵀ``), ``VL x VL`` blocks are read as vectors
    of each column and transposed in registers. The loops left are scalar code."""
    nr, size = NV * lanes(ty), _SIZE[ty]
    vl = min(lanes(ty), TRANSPOSE)
    nt, vt = f"<{nr} x {ty}>", f"<{vl} x {ty}>"
    f = _Function(f"define internal void @{name(ty)}_packb(ptr noalias %bp, ptr noalias %b, "
                  f"i64 %rsb, i64 %csb, i64 %kc, i64 %cols) noinline {{")
    whole = f.emit(f"icmp eq i64 %cols, {nr}")
    fast = f.emit(f"and i1 {whole}, {f.emit('icmp eq i64 %csb, 1')}")
    f.line(f"br i1 {fast}, label %rows, label %x")
    f.label("rows")
    with f.rolled_loop(0, "%kc", scalar=True) as k:
        x = f.emit(f"load {nt}, ptr {f.gep(ty, '%b', f.emit(f'mul i64 {k}, %rsb'))}, align {size}")
        f.line(f"store {nt} {x}, ptr {f.gep(ty, '%bp', f.emit(f'mul i64 {k}, {nr}'))}, align 64")
    f.line("ret void")
    f.label("x")
    trans = f.emit(f"and i1 {whole}, {f.emit('icmp eq i64 %rsb, 1')}")
    f.line(f"br i1 {trans}, label %bycol, label %any")
    f.label("bycol")
    starts = [f.gep(ty, "%b", f.emit(f"mul i64 {j}, %csb")) for j in range(nr)]
    kb = f.emit(f"and i64 %kc, {-vl}")
    with f.rolled_loop(0, kb, vl, scalar=True) as k0:
        for h in range(nr // vl):
            vs = [f.emit(f"load {vt}, ptr {f.gep(ty, p, k0)}, align {size}")
                  for p in starts[h * vl:(h + 1) * vl]]
            for k, t in enumerate(_transpose(f, ty, vs)):
                row = f.emit(f"mul i64 {f.emit(f'add i64 {k0}, {k}')}, {nr}")
                at = f.emit(f"add i64 {row}, {h * vl}")
                f.line(f"store {vt} {t}, ptr {f.gep(ty, '%bp', at)}, align {size}")
    with f.rolled_loop(kb, "%kc", scalar=True) as k:
        row = f.emit(f"mul i64 {k}, {nr}")
        for j, p in enumerate(starts):
            x = f.emit(f"load {ty}, ptr {f.gep(ty, p, k)}")
            f.line(f"store {ty} {x}, ptr {f.gep(ty, '%bp', f.emit(f'add i64 {row}, {j}'))}")
    f.line("ret void")
    f.label("any")
    with f.rolled_loop(0, "%cols", scalar=True) as j:
        src = f.gep(ty, "%b", f.emit(f"mul i64 {j}, %csb"))
        with f.rolled_loop(0, "%kc", scalar=True) as k:
            x = f.emit(f"load {ty}, ptr {f.gep(ty, src, f.emit(f'mul i64 {k}, %rsb'))}")
            at = f.emit(f"add i64 {f.emit(f'mul i64 {k}, {nr}')}, {j}")
            f.line(f"store {ty} {x}, ptr {f.gep(ty, '%bp', at)}")
    with f.rolled_loop("%cols", nr, scalar=True) as j:
        with f.rolled_loop(0, "%kc", scalar=True) as k:
            dst = f.gep(ty, "%bp", f.emit(f"add i64 {f.emit(f'mul i64 {k}, {nr}')}, {j}"))
            f.line(f"store {ty} 0.0, ptr {dst}")
    f.line("ret void")
    return f.text()


def _rows(ty: str) -> str:
    """``@<name>_rows(A, rsa, csa, B, rsb, csb, C, N, K, r0, r1)``: rows ``[r0, r1)`` of C
    (``K > 0``), the blocked loops of the module docstring."""
    nr, kc_max = NV * lanes(ty), KC[ty]
    fn = name(ty)
    f = _Function(f"define internal void @{fn}_rows(ptr noalias %A, i64 %rsa, i64 %csa, "
                  f"ptr noalias %B, i64 %rsb, i64 %csb, ptr noalias %C, i64 %N, i64 %K, i64 %r0, "
                  f"i64 %r1) noinline {{")
    f.line(f"%Ap = alloca [{MC * kc_max} x {ty}], align 64")
    f.line(f"%Bp = alloca [{kc_max * nr} x {ty}], align 64")
    f.line(f"%Ct = alloca [{MR * nr} x {ty}], align 64")
    with f.rolled_loop(0, "%K", kc_max) as pc:
        kc = f.min(kc_max, f.emit(f"sub i64 %K, {pc}"))
        first = f.emit(f"icmp eq i64 {pc}, 0")
        a0 = f.gep(ty, "%A", f.emit(f"mul i64 {pc}, %csa"))
        b0 = f.gep(ty, "%B", f.emit(f"mul i64 {pc}, %rsb"))
        with f.rolled_loop("%r0", "%r1", MC) as ic:
            mc = f.min(MC, f.emit(f"sub i64 %r1, {ic}"))
            a = f.gep(ty, a0, f.emit(f"mul i64 {ic}, %rsa"))
            f.line(f"call void @{fn}_packa(ptr %Ap, ptr {a}, i64 %rsa, i64 %csa, i64 {mc}, "
                   f"i64 {kc})")
            with f.rolled_loop(0, "%N", nr) as jr:
                cols = f.min(nr, f.emit(f"sub i64 %N, {jr}"))
                b = f.gep(ty, b0, f.emit(f"mul i64 {jr}, %csb"))
                f.line(f"call void @{fn}_packb(ptr %Bp, ptr {b}, i64 %rsb, i64 %csb, i64 {kc}, "
                       f"i64 {cols})")
                full = f.emit(f"icmp eq i64 {cols}, {nr}")
                with f.rolled_loop(0, mc, MR) as ir:
                    rows = f.min(MR, f.emit(f"sub i64 {mc}, {ir}"))
                    ap = f.gep(ty, "%Ap", f.emit(f"mul i64 {ir}, {kc}"))
                    crow = f.emit(f"mul i64 {f.emit(f'add i64 {ic}, {ir}')}, %N")
                    cp = f.gep(ty, "%C", f.emit(f"add i64 {crow}, {jr}"))
                    whole = f.emit(f"and i1 {f.emit(f'icmp eq i64 {rows}, {MR}')}, {full}")
                    t = f.fresh("T")
                    f.line(f"br i1 {whole}, label %{t}.whole, label %{t}.edge")
                    f.label(f"{t}.whole")
                    f.line(f"call void @{fn}_k{MR}(ptr {ap}, ptr %Bp, ptr {cp}, i64 %N, "
                           f"i64 {kc}, i1 {first})")
                    f.jump(f"{t}.done")
                    f.label(f"{t}.edge")
                    f.line(f"call void @{fn}_edge(ptr {ap}, ptr %Bp, ptr {cp}, i64 %N, "
                           f"i64 {kc}, i1 {first}, i64 {rows}, i64 {cols}, ptr %Ct)")
                    f.jump(f"{t}.done")
                    f.label(f"{t}.done")
    f.line("ret void")
    return f.text()


_ARGS = ("A", "rsa", "csa", "B", "rsb", "csb", "C", "M", "N", "K")
_PTR = ("A", "B", "C")


def _entry(ty: str, par: bool) -> str:
    """``@<name>(A, rsa, csa, B, rsb, csb, C, M, N, K)``, and with ``par`` its ``_blocks``
    function for ``threads.split_call``."""
    fn = name(ty)
    params = ", ".join(f"ptr noalias %{a}" if a in _PTR else f"i64 %{a}" for a in _ARGS)
    f = _Function(f"define void @{fn}({params}) {{")
    mn = f.emit("mul i64 %M, %N")
    f.line(f"br i1 {f.emit(f'icmp eq i64 {mn}, 0')}, label %exit, label %nonempty")
    f.label("nonempty")
    f.line(f"br i1 {f.emit('icmp eq i64 %K, 0')}, label %zero, label %product")
    f.label("zero")
    with f.rolled_loop(0, mn) as i:
        f.line(f"store {ty} 0.0, ptr {f.gep(ty, '%C', i)}")
    f.jump("exit")
    f.label("product")
    call_rows = (f"call void @{fn}_rows(ptr %A, i64 %rsa, i64 %csa, ptr %B, i64 %rsb, "
                 f"i64 %csb, ptr %C, i64 %N, i64 %K, i64 0, i64 %M)")
    if par:
        work = f.emit(f"mul i64 {mn}, %K")
        big = f.emit(f"and i1 {f.emit(f'icmp sge i64 {work}, {PAR_WORK}')}, "
                f"{f.emit(f'icmp sge i64 %M, {2 * MR}')}")
        f.line(f"br i1 {big}, label %split, label %one")
        f.label("one")
        f.line(call_rows)
        f.jump("exit")
        f.label("split")
        f.line(f"%ctx = alloca [{len(_ARGS)} x i64], align 8")
        for k, a in enumerate(_ARGS):
            f.line(f"store {'ptr' if a in _PTR else 'i64'} %{a}, ptr "
                   f"{f.gep('i64', '%ctx', k)}")
        f.lines += threads.split_call(fn, 0).split("\n")  # (a part per thread)
        f.block = "par.joined"
        f.jump("exit")
    else:
        f.line(call_rows)
        f.jump("exit")
    f.label("exit")
    f.line("ret void")
    text = f.text()
    if not par:
        return text
    b = _Function(f"define internal void @{fn}_blocks(ptr %ctx, i64 %tid, i64 %nt) {{")
    for k, a in enumerate(_ARGS):
        b.line(f"%{a} = load {'ptr' if a in _PTR else 'i64'}, ptr {b.gep('i64', '%ctx', k)}")
    panels = b.emit(f"udiv i64 {b.emit(f'add i64 %M, {MR - 1}')}, {MR}")  # MR-row panels per thread
    spare = b.emit("sub i64 %nt, 1")
    per = b.emit(f"udiv i64 {b.emit(f'add i64 {panels}, {spare}')}, %nt")
    per = b.emit(f"mul i64 {per}, {MR}")
    r0 = b.emit(f"mul i64 %tid, {per}")
    r1 = b.min("%M", b.emit(f"add i64 {r0}, {per}"))
    with b.when(b.emit(f"icmp slt i64 {r0}, {r1}")):
        b.line(f"call void @{fn}_rows(ptr %A, i64 %rsa, i64 %csa, ptr %B, i64 %rsb, i64 %csb, "
               f"ptr %C, i64 %N, i64 %K, i64 {r0}, i64 {r1})")
    b.line("ret void")
    return text + b.text()


def functions(ty: str) -> str:
    """The IR defining ``@<name(ty)>`` and its helpers for LLVM type ``ty``."""
    vl = lanes(ty)
    fma = (f"declare <{vl} x {ty}> @llvm.fma.v{vl}{_SUFFIX[ty]}(<{vl} x {ty}>, <{vl} x {ty}>, "
           f"<{vl} x {ty}>)\n") if has_fma() else ""
    sizes = sorted({r for r in EDGE_ROWS if r < MR} | {MR})
    return (fma + "".join(_micro(ty, r) for r in sizes) + _copy(ty) + _edge(ty) + _pack_a(ty)
            + _pack_b(ty) + _rows(ty) + _entry(ty, uses_threads()))


def uses_threads() -> bool:
    return threads.find() is not None


def library(ty: str) -> jit.Compiled:
    """The kernel of LLVM type ``ty`` ('float' or 'double') in a module of its own,
    compiled once per process (or loaded from the disk cache), its entry symbol registered
    for other modules to call.

    Note (one copy, called by name): a graph's module only declares ``@<name(ty)>``, so its
    compile time does not grow with the kernel's size, and the code it calls is the very
    code ``tune.py`` times. The name says whether the kernel splits across threads, so a
    graph's IR — the cache key — says which kernel it runs. One dtype per module: a float32
    model never waits for the float64 kernel to compile (~150 ms each)."""
    par = uses_threads()
    key = (ty, par, target.current())
    with _lock:
        if key not in _libraries:
            compiled = cache.load_or_compile(
                lambda: (threads.DECLARATIONS if par else "") + functions(ty),
                f"{name(ty)} {version()} {vector_bits()} {has_fma()} {threads.split_call('')}")
            jit.add_symbol(name(ty), compiled.address(name(ty)))
            _libraries[key] = compiled
        return _libraries[key]


def prepare(ty: str) -> None:
    """Start making the kernel of ``ty`` (:func:`library`) on a thread of its own unless it
    exists or is under way: a graph with products calls this before its passes, so LLVM
    compiles the kernel (~150 ms, in LLVM's code, which releases the GIL) on another core
    while the fusion and the module's IR are worked out in Python. A failure there is
    left for :func:`library`'s own call to raise."""
    key = (ty, uses_threads(), target.current())
    with _lock:
        if key in _libraries or key in _preparing:
            return
        _preparing.add(key)

    def make():
        try:
            library(ty)
        except Exception:  # (raised again, with its context, where the kernel is needed)
            pass
        finally:
            _preparing.discard(key)
    # (not a daemon: a process that ends while the kernel compiles waits for it, rather
    # than finalise LLVM under it)
    threading.Thread(target=make, name=f"dyngrad-gemm-{ty}", daemon=False).start()


_preparing: set = set()  # keys of kernels a prepare() thread is making


def declaration(ty: str) -> str:
    """The declaration of ``@<name(ty)>`` for a module calling it (see :func:`library`)."""
    return f"declare void @{name(ty)}(ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, i64)\n"


def call(ty: str, a: str, rsa, csa, b: str, rsb, csb, c: str, m, n, k) -> str:
    """The IR line calling the kernel."""
    return (f"  call void @{name(ty)}(ptr {a}, i64 {rsa}, i64 {csa}, ptr {b}, i64 {rsb}, "
            f"i64 {csb}, ptr {c}, i64 {m}, i64 {n}, i64 {k})")
