"""LLVM IR for matmul groups: per shape, numpy's BLAS called from IR or the generated kernel
(``gemm.py``), whichever measured faster on this machine (``tune.py``)."""

from __future__ import annotations

import math

from ...dims import Dim
from . import blas, gemm, threads, tune
from .emit import (
    FN_NAME,
    INTEGER,
    LLTYPE,
    MEMTYPE,
    KernelBuilder,
    builds,
    c_strides,
    entry_ir,
    literal,
)
from .vecmath import prelude_ir

SMALL_WORK = 32 * 32 * 32  # m·n·k up to which a product is loops of its own shape, inline


@builds("matmul")
class MatmulBuilder(KernelBuilder):
    """A 'matmul' group: ``C = op(A) @ op(B)`` over broadcast batch dims, float32/float64
    (integers: the small loops below at every size, wrapping as numpy).

    Per batch entry, one call: either numpy's BLAS gemm (``blas.find``) or the generated
    register-blocked kernel ``@dg_gemm_<f32|f64>`` (``gemm.py``: every C element the chain of
    fused multiply-adds over ``k`` in order, whatever the thread count). Which one is
    ``tune.choose``'s per-shape decision — measured once per machine, ``DYNGRAD_MATMUL``
    forces it — or ``use_blas`` when given (True: BLAS where it can run, False: generated).
    BLAS is never given ``K = 0`` (it would leave C alone: the generated kernel writes the
    zeros).

    Products of at most ``SMALL_WORK`` multiply-adds (unless ``DYNGRAD_MATMUL`` or
    ``use_blas`` says otherwise) are loops of their own shape written into the kernel
    (``small``): with every size a constant LLVM unrolls and vectorises them, and no call,
    packing or blocking is paid — W1's step ran 1.9 µs faster so than calling the general
    kernel. Each C element is the same fma chain over ``k`` in order as the generated
    kernel's, so the two give the same bits.
    """

    def __init__(self, g, group, use_blas: bool | None = None) -> None:
        super().__init__(g, group, "matmul")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM matmul codegen: a group of more than one node")
        self.n = n = g.nodes[group.nodes[0]]
        a, b = n.inputs
        dt = n.out.dtype.name if n.out.dtype is not None else "?"
        if dt not in LLTYPE or dt == "bool" or a.dtype is not b.dtype:
            raise NotImplementedError(f"LLVM matmul codegen: dtype {dt} is not supported "
                                      f"(float32, float64 and the integers)")
        self.ty = LLTYPE[dt]
        self.ta, self.tb = n.params.get("ta", False), n.params.get("tb", False)
        self.M, self.N = n.out.shape[-2], n.out.shape[-1]
        self.K = a.shape[-2] if self.ta else a.shape[-1]
        if self.ty in INTEGER:  # (no BLAS or generated kernel: the loops, at any size;
            path = "small"  #        sums of wrapping products, exact in any order)
        elif use_blas is None:
            small = self.M * self.N * self.K <= SMALL_WORK and tune.mode() == "measure"
            path = "small" if small else tune.choose(dt, self.M, self.N, self.K, self.ta,
                                                     self.tb)
        else:
            path = "blas" if use_blas and self.K > 0 else "generated"
        self.small = path == "small"
        self.blas = blas.find() if path == "blas" else None
        if self.blas is None and not self.small and self.M * self.N:
            gemm.library(self.ty)  # (compiled or loaded now: the graph's module links to it)

    def _batch_offsets(self, bt: str) -> tuple:
        """Element offsets of A's, B's and C's matrix for flat batch index ``bt``."""
        a, b = self.n.inputs
        batch = self.n.out.shape[:-2]
        offs = []
        for v in (a, b, self.n.out):
            vb = v.shape[:-2]
            mat = v.shape[-2] * v.shape[-1]
            st = c_strides(vb) if vb else ()
            lead = len(batch) - len(vb)
            acc = "0"
            inner = c_strides(batch)
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
        grp, n = self.group, self.n
        layout = list(grp.inputs) + list(grp.outputs)
        if len(grp.outputs) != 1 or grp.outputs[0] is not n.out:
            raise NotImplementedError("LLVM matmul codegen: one output, the product")
        ptr = {id(v): f"%a{k}" for k, v in enumerate(layout)}
        pa, pb, pc = ptr[id(n.inputs[0])], ptr[id(n.inputs[1])], ptr[id(n.out)]
        n_batch = math.prod(n.out.shape[:-2])
        params = ", ".join(f"ptr noalias %a{k}" for k in range(len(layout)))  # (A may be B:
        #                                             both only read, which noalias allows)
        per = self.par = self._batch_split(n_batch)
        self.label("entry")
        self._entries(pa, pb, pc, *(("%lo", "%hi") if per else (0, n_batch)))
        self.line("ret void")
        if per is None:
            body = self.function(f"define internal void @{name}_body({params}) alwaysinline")
        else:  # entries too small to split themselves: ranges of them, one per part
            body = (self.function(f"define internal void @{name}_range({params}, i64 %lo, "
                                  f"i64 %hi) noinline")
                    + threads.ranges_ir(name, len(layout), n_batch, per))
        text = (
            (prelude_ir([]) if prelude else "")
            + (self.declarations() if prelude else "")
            + body + entry_ir(name, len(layout)))
        return text, name, layout

    def _batch_split(self, n_batch) -> int | None:
        """Batch entries per part when the batch loop runs on the thread pool: each entry
        below ``gemm.PAR_WORK`` multiply-adds (bigger ones split their rows themselves), the
        whole above it, and the pool there (None: one loop on the calling thread). Every
        entry is computed whole by one thread, so the bits do not depend on the split
        (attention's per-head products: 48 entries of 64x64x32 ran on one core)."""
        if isinstance(n_batch, Dim) or n_batch < 2 or self.blas is not None or \
                threads.find() is None:
            return None
        work = self.M * self.N * max(self.K, 1)
        if isinstance(work, Dim) or work >= gemm.PAR_WORK or work * n_batch < gemm.PAR_WORK:
            return None
        return max(1, (gemm.PAR_WORK // 8) // work)  # (parts of ~128K multiply-adds)

    def _entries(self, pa: str, pb: str, pc: str, lo, hi) -> None:
        """The products of batch entries ``lo`` to ``hi`` (the caller opened block entry)."""
        n = self.n
        ty, M, N, K, ta, tb = self.ty, self.M, self.N, self.K, self.ta, self.tb
        st = MEMTYPE[ty]
        if self.small and tb and K:  # (see _small_loops; a symbolic variant's size: an
            count = K * N  #                      alloca of a run-time count)
            self.line(f"%bt.tmp = alloca {ty}, i64 {count}, align 64" if isinstance(count, Dim)
                      else f"%bt.tmp = alloca [{count} x {ty}], align 64")
        if lo != 0:  # (a range may be empty: the batch loop runs at least once)
            self.line(f"%none = icmp sge i64 {lo}, {hi}")
            self.branch("%none", "exit", "batch")
        with self.loop("%bt", hi, start=lo, block="batch", exit="exit", latch="batch.end",
                       entered=lo != 0):
            oa, ob, oc = self._batch_offsets("%bt")
            A = self.emit(f"getelementptr inbounds {st}, ptr {pa}, i64 {oa}")
            B = self.emit(f"getelementptr inbounds {st}, ptr {pb}, i64 {ob}")
            C = self.emit(f"getelementptr inbounds {st}, ptr {pc}, i64 {oc}")
            if M * N == 0:
                pass  # (nothing to compute)
            elif self.blas is not None:
                lda = M if ta else K
                ldb = K if tb else N
                self.line(
                    f"call void @{self.blas.gemm(n.out.dtype.name)}(i32 {blas.ROW_MAJOR}, "
                    f"i32 {blas.TRANS if ta else blas.NO_TRANS}, "
                    f"i32 {blas.TRANS if tb else blas.NO_TRANS}, i64 {M}, i64 {N}, i64 {K}, "
                    f"{ty} {literal(1.0, ty)}, ptr {A}, i64 {lda}, ptr {B}, i64 {ldb}, "
                    f"{ty} {literal(0.0, ty)}, ptr {C}, i64 {N})")
            elif self.small:
                self._small_loops(A, B, C)
            else:
                rs_a, cs_a = (1, M) if ta else (K, 1)  # A[i, k] at i·rs_a + k·cs_a
                rs_b, cs_b = (1, K) if tb else (N, 1)
                self.lines.append(gemm.call(ty, A, rs_a, cs_a, B, rs_b, cs_b, C, M, N, K))

    def _small_loops(self, A: str, B: str, C: str) -> None:
        """``small``: for each row i of C, C[i, :] = 0, then for k in order
        C[i, :] = fma(op(A)[i, k], op(B)[k, :], C[i, :]) — the loop over j is what LLVM
        vectorises; a transposed B is first copied to a K x N stack buffer, so that loop
        reads a row of it (contiguous: vector loads, no gathers)."""
        M, N, K, ta, tb, ty = self.M, self.N, self.K, self.ta, self.tb, self.ty
        st = MEMTYPE[ty]
        sfx = "f32" if ty == "float" else "f64"
        zero = literal(0, ty) if ty in INTEGER else literal(0.0, ty)
        if tb and K:  # (%bt.tmp: allocated in the entry block by build)
            with self.loop("%tk", K, block="tr", exit="tr.done"):
                with self.loop("%tj", N, block="tr.j", exit="tr.end"):
                    src = self.emit(f"add i64 {self.emit(f'mul i64 %tj, {K}')}, %tk")
                    psrc = self.emit(f"getelementptr inbounds {st}, ptr {B}, i64 {src}")
                    val = self.emit(f"load {ty}, ptr {psrc}")
                    dst = self.emit(f"add i64 {self.emit(f'mul i64 %tk, {N}')}, %tj")
                    pdst = self.emit(f"getelementptr inbounds {st}, ptr %bt.tmp, i64 {dst}")
                    self.line(f"store {ty} {val}, ptr {pdst}")
            B, tb = "%bt.tmp", False
        with self.loop("%i", M, block="row", exit="batch.end", latch="row.end"):
            crow = self.emit(f"mul i64 %i, {N}")
            with self.loop("%z", N, block="zero", exit="kloop.pre"):
                pz = self.emit(f"getelementptr inbounds {st}, ptr {C}, i64 "
                               f"{self.emit(f'add i64 {crow}, %z')}")
                self.line(f"store {ty} {zero}, ptr {pz}")
            if K:
                with self.loop("%k", K, block="kloop", exit="row.end"):
                    ia = self.emit(f"mul i64 %k, {M}") if ta else self.emit(f"mul i64 %i, {K}")
                    ia = self.emit(f"add i64 {ia}, {'%i' if ta else '%k'}")
                    pa = self.emit(f"getelementptr inbounds {st}, ptr {A}, i64 {ia}")
                    aik = self.emit(f"load {ty}, ptr {pa}")
                    brow = None if tb else self.emit(f"mul i64 %k, {N}")
                    with self.loop("%j", N, block="jloop", exit="kloop.end"):
                        ib = (self.emit(f"add i64 {self.emit(f'mul i64 %j, {K}')}, %k") if tb
                              else self.emit(f"add i64 {brow}, %j"))
                        pb = self.emit(f"getelementptr inbounds {st}, ptr {B}, i64 {ib}")
                        bkj = self.emit(f"load {ty}, ptr {pb}")
                        pc = self.emit(f"getelementptr inbounds {st}, ptr {C}, i64 "
                                       f"{self.emit(f'add i64 {crow}, %j')}")
                        c0 = self.emit(f"load {ty}, ptr {pc}")
                        c1 = (self.emit(f"add {ty} {c0}, {self.emit(f'mul {ty} {aik}, {bkj}')}")
                              if ty in INTEGER else
                              self.emit(f"call {ty} @llvm.fma.{sfx}({ty} {aik}, {ty} {bkj}, "
                                        f"{ty} {c0})") if gemm.has_fma() else
                              self.emit(f"fadd {ty} {c0}, {self.emit(f'fmul {ty} {aik}, {bkj}')}"))
                        self.line(f"store {ty} {c1}, ptr {pc}")

    def declarations(self) -> str:
        """The declaration of the BLAS routine or of the generated kernel it calls."""
        if self.blas is not None:
            return blas.declaration(self.blas, self.n.out.dtype.name)
        par = threads.DECLARATIONS if getattr(self, "par", None) else ""  # (set by build)
        if self.small:
            return par  # (llvm.fma.f32/f64: declared by every module's prelude)
        return par + (gemm.declaration(self.ty) if self.M * self.N else "")
