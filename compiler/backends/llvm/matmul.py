"""LLVM IR for matmul groups: numpy's BLAS called from IR, or generated loops."""

from __future__ import annotations

import math

from .codegen import (
    _LLTYPE,
    _MEMTYPE,
    FN_NAME,
    _c_strides,
    _const,
    _Emitter,
    _entry,
    _prelude,
)

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
