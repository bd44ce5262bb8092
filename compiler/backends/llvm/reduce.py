"""LLVM IR for reduce fusion groups: :class:`ReduceBuilder` (see its docstring)."""

from __future__ import annotations

import math

from dyngrad import dtypes as _dt

from ... import prims
from ...ir import Value
from ...prims import CONSTANT, MAP, REDUCTION, Lowerings, traits
from . import threads
from .emit import (
    FN_NAME,
    LLTYPE,
    MEMTYPE,
    UNSIGNED,
    Emitter,
    builds,
    c_strides,
    dtname,
    entry_ir,
    interleaved,
    kernel_outputs,
    literal,
)
from .loops import LoopBuilder
from .vecmath import prelude_ir

_LANES = {"float": 16, "double": 8, "i64": 8}  # accumulators per reduction: one AVX-512
#                                                 register
_CHUNK = 16  # vectors per chunk of the reduction loop
_BLOCK_CHUNKS = 64  # chunks per block of a reduction split across threads (see threads.py)
_PARTIALS = 4  # running partials per kept element in the column form (a power of two)
KEPT_SPLIT_MIN = 1 << 16  # elements (kept x reduced) from which a reduction keeping several
#                           elements splits them across the threads (each pass over 64K
#                           elements takes some 10–20 µs; a split costs about one)
COLUMNS_MAX_BYTES = 1 << 16  # the column form's stack buffers at most (all its reductions'):
#                              a worker thread's stack holds them, beside gemm's panels
COLUMNS_MAX_ELEMENTS = 1 << 20  # the column form reduces at most this many (on one thread:
#                                 ~0.1 ms; larger ones split the kept elements across threads)


@builds("reduce")
class ReduceBuilder(LoopBuilder):
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
    does.

    Threads: a full reduction of ``R >= threads.PAR_MIN`` elements splits its chunks into
    fixed blocks whose partial lanes add in order (:meth:`_blocks_function`); one keeping
    several elements over ``KEPT_SPLIT_MIN`` elements in all (BatchNorm's statistics and its
    passes over the activations) splits the kept elements instead, a contiguous range per
    thread, each element's reduction whole on one thread (:meth:`_kept_parts`). Either way
    the bits are the one-thread bits.

    A reduction over leading dims that keeps contiguous trailing ones (a bias gradient)
    takes the *column form* instead (:meth:`_build_columns`): walking each column down
    would read with a stride and fold one column at a time (W2's two 128x256 bias
    gradients with their Adam updates took ~110 µs each; the column form, ~5 µs)."""

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
        # the reduced dims after the last kept one (a contiguous run in every C-ordered
        # buffer of the full shape) and those before it: see _run
        last = max(self.kept, default=len(dims))
        self.inner = tuple(k for k in self.red if k > last)
        self.outer = tuple(k for k in self.red if k < last)
        self.IR = math.prod(self.full[k] for k in self.inner)

    def node(self, n) -> None:
        src = n.inputs[0] if n.inputs else None
        if n.prim is prims.BROADCAST and isinstance(src, Value) and id(src) in self.at_i \
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
            role, src = traits(n.prim).role, n.inputs[0] if n.inputs else None
            computed_src = isinstance(src, Value) and id(src) in inside and \
                inside[id(src)] not in setup  # (a map of a constant is a constant)
            if role == CONSTANT or (role == MAP and not computed_src):
                setup.append(i)
                continue
            sq = tuple(x for x in n.out.shape if x != 1)
            deps = [inside[id(x)] for x in n.inputs if isinstance(x, Value) and id(x) in inside]
            if role == REDUCTION and tuple(n.params["axes"]) == tuple(grp.axes) and \
                    tuple(src.shape) == tuple(grp.shape) and sq == self.reduced:
                reductions.append(i)
                post.add(i)
                continue
            if sq == self.full and sq != self.reduced:
                kind[i] = "S"
            elif sq == self.reduced:
                kind[i] = "K"
            else:
                raise NotImplementedError(f"LLVM reduce codegen: node {n.prim.name} of shape "
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

    def _in_space_run(self, j: str, i: str) -> None:
        """The full space with the reduced index split: ``j`` over the reduced dims before
        the last kept one, ``i`` over the run of those after it (see :meth:`_run`)."""
        self.space = self.full
        self.loops = [("%o", self.kept), (j, self.outer), (i, self.inner)]

    def _run(self, B: int) -> bool:
        """Whether the reduced elements are runs of ``IR`` along the trailing dims (BatchNorm's
        statistics: N runs of H·W per channel) with ``IR`` a multiple of the chunk ``B``:
        then each chunk lies in one run, and its elements are read at a run index
        ``i0 + k`` — contiguous, vector loads — instead of addresses divided out of the
        flat reduced index element by element (gathers). The chunks and their order are the
        same: so are the bits."""
        return bool(self.inner) and bool(self.outer) and self.IR % B == 0

    def _split_runs(self, B: int) -> bool:
        """Whether the reduced elements are runs of ``IR`` (see :meth:`_run`) that chunks of
        ``B`` do not tile (a conv's bias gradient over 26×26 maps: 676; BatchNorm over 14×14
        ones: 196), at least two vectors long: then a chunk is read as the contiguous pieces
        of the runs it spans — the rest of one run, whole runs, the start of the next — into
        the same lanes as the flat order, so the same bits. (Shorter runs would be pieces of
        less than a vector each: they stay on the flat form.)"""
        L = B // _CHUNK
        return bool(self.inner) and bool(self.outer) and self.IR % B != 0 and \
            self.IR >= 2 * L

    def _chunk(self, L: int) -> int:
        """Elements per chunk: ``_CHUNK`` vectors of ``L`` — or, when the reduced elements
        are runs (see :meth:`_run`) of a length ``IR`` that is a multiple of ``L`` but not of
        that, the largest multiple of ``L`` up to it dividing ``IR``: a conv's bias gradient
        over 24×24 maps reads runs of 576 in chunks of 192. Not under 4 vectors for a run
        longer than ``_CHUNK`` vectors (544 floats, 34 vectors, would take chunks of 2):
        that takes the split form (:meth:`_split_runs`) instead. Lane j takes elements j,
        j + L, ... in order whatever the chunk (the remainder's lanes too), so the sum's
        bits do not depend on it."""
        B = _CHUNK * L
        if self.inner and self.outer and self.IR % B and self.IR % L == 0:
            c = next(c for c in range(_CHUNK, 0, -1) if (self.IR // L) % c == 0)
            if c >= 4 or (c >= 2 and self.IR < B):  # (a longer run with only small
                return c * L  # divisors, 544 = 34 vectors: the split form's whole chunks)
        return B

    def _in_space_k(self) -> None:
        self.space = self.reduced
        self.loops = [("%o", tuple(range(len(self.reduced))))]

    def _store(self, v, arg: int, strides: tuple) -> None:
        val, ty = self.operand(v, v.shape, LLTYPE[v.dtype.name])
        if ty == "i1":
            val = self.emit(f"zext i1 {val} to i8")
        st = MEMTYPE[ty]
        off = self.index(strides)
        p = self.emit(f"getelementptr inbounds {st}, ptr %a{arg}, i64 {off}")
        self.lines.append(f"  store {st} {val}, ptr {p}")

    def _load_back(self, v, arg: int, strides: tuple) -> tuple:
        """What :meth:`_store` stored of ``v`` at this point, read back."""
        ty = LLTYPE[v.dtype.name]
        st = MEMTYPE[ty]
        p = self.emit(f"getelementptr inbounds {st}, ptr %a{arg}, i64 {self.index(strides)}")
        x = self.emit(f"load {st}, ptr {p}")
        return (self.emit(f"icmp ne i8 {x}, 0") if ty == "i1" else x), ty

    def _combine(self, op, ty: str, a: str, b: str) -> str:
        """Combine two partial results of reduction ``op`` (a primitive: :data:`_COMBINE`)."""
        return _COMBINE.of(op)(self, ty, a, b)

    def _lane(self, var: str, reductions, pre_s, s_outputs, base) -> list:
        """Evaluate the prologue at reduced index ``var``; returns each reduction's value."""
        self.at_i = dict(base)
        if isinstance(var, tuple):  # (run index: see _run)
            self._in_space_run(*var)
        else:
            self._in_space_s(var)
        for i in pre_s:
            self.node(self.g.nodes[i])
        for arg, v in s_outputs:
            self._store(v, arg, c_strides(self.full))
        nodes = self.g.nodes
        vals = []
        for i in reductions:
            src = nodes[i].inputs[0]
            val, ty = self.operand(src, src.shape, LLTYPE[src.dtype.name])
            if src.dtype.name in _WIDENED:  # a bool sum, a narrow max: in int64
                ext = "zext" if src.dtype.name in _ZEXT else "sext"
                elem = ty.rsplit(" ", 1)[-1].rstrip(">")
                val = self.emit(f"{ext} {ty} {val} to {ty[:-len(elem) - 1] + 'i64>'}"
                                if ty.startswith("<") else f"{ext} {ty} {val} to i64")
            vals.append(val)
        return vals

    def _total(self, n, total: str, ty: str) -> tuple:
        """A reduction's result as its output's type: a max of a narrow type or bool,
        reduced in int64, narrowed back."""
        dt = n.out.dtype.name
        if dt not in _WIDENED:
            return total, ty
        if dt == "bool":
            return self.emit(f"icmp ne i64 {total}, 0"), "i1"
        return self.emit(f"trunc i64 {total} to {LLTYPE[dt]}"), LLTYPE[dt]

    def _blocks_function(self, name, layout, tys, vec, init, NB, CB, B, chunks,
                         chunk_loop) -> str:
        """``@<name>_blocks(ctx, tid, nt)``: blocks tid, tid + nt, ... of CB chunks each,
        every block's lanes (from fresh ones) stored to its partials slot (the thread pool
        calls it once per block: ``nt`` = NB)."""
        saved = self.lines, self.block, self.reads, self.idx
        self.lines, self.reads, self.idx = [], {}, {}
        n_args = len(layout)
        self.label("entry")
        for k in range(n_args + len(tys)):
            self.line(f"%x{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}")
            dst = f"%a{k}" if k < n_args else f"%parts{k - n_args}"
            self.line(f"{dst} = load ptr, ptr %x{k}")
        for m, t in enumerate(tys):
            self.line(f"%tmp{m} = alloca [{B} x {t}], align 64")
        with self.parallel_for(NB):
            c0 = self.emit(f"mul nuw nsw i64 %b, {CB}")
            c1a = self.emit(f"add nuw nsw i64 {c0}, {CB}")
            lt = self.emit(f"icmp slt i64 {c1a}, {chunks}")
            c1 = self.emit(f"select i1 {lt}, i64 {c1a}, i64 {chunks}")
            lanes = chunk_loop(init, c0, c1)
            for m, v in enumerate(vec):
                p = self.emit(f"getelementptr inbounds {v}, ptr %parts{m}, i64 %b")
                self.line(f"store {v} {lanes[m]}, ptr {p}, align 64")
        text = self.function(f"define internal void @{name}_blocks(ptr %ctx, i64 %tid, i64 %nt)")
        self.lines, self.block, self.reads, self.idx = saved
        return text

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, nodes = self.group, self.g.nodes
        outputs = kernel_outputs(self.g, grp)
        layout = list(grp.inputs) + outputs
        params = []
        for k, v in enumerate(grp.inputs):
            self.ptr[id(v)] = f"%a{k}"
        for k, v in enumerate(layout):
            if not getattr(v, "weak", False) and (v.dtype is None or
                                                  v.dtype.name not in LLTYPE):
                raise NotImplementedError(f"LLVM reduce codegen: buffer {v!r} of dtype "
                                          f"{dtname(v)} is not supported")
            params.append(f"ptr noalias %a{k}")
        setup, reductions, pre_s, post_s, pre_k, post_k = self._classify()
        if not reductions:
            raise NotImplementedError("LLVM reduce codegen: no reduction in the group")
        tys = []
        for i in reductions:
            n = nodes[i]
            dt = n.out.dtype.name
            widened_sum = n.prim is prims.SUM and n.inputs[0].dtype.name in _WIDENED \
                and n.out.dtype is _dt.int64  # (a bool or narrow integer sum: in int64)
            narrow_max = n.prim is prims.MAX and dt in _WIDENED  # (in int64, see _lane)
            if (dt not in ("float32", "float64", "int64") and not narrow_max) or (
                    n.inputs[0].dtype is not n.out.dtype and not widened_sum):
                raise NotImplementedError(f"LLVM reduce codegen: {n.prim.name} of dtype "
                                          f"{dtname(n.inputs[0])} -> {dt}")
            tys.append("i64" if narrow_max else LLTYPE[dt])
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

        ops = [nodes[i].prim for i in reductions]
        ident = [traits(op).identity for op in ops]
        if self._columns(post_s, tys):
            return self._build_columns(name, prelude, params, layout, reductions, pre_s,
                                       pre_k, post_k, s_pre_out, k_out, tys, ops, ident)
        L = min(_LANES[t] for t in tys)
        B = self._chunk(L)  # elements per chunk: computed by a plain (vectorised) loop
        chunks, rem = divmod(self.R, B)
        vec = [f"<{L} x {t}>" for t in tys]
        init = [f"<{', '.join([f'{t} {_identity(e, t)}'] * L)}>" for e, t in zip(ident, tys)]
        self.label("entry")
        for m, t in enumerate(tys):
            self.line(f"%tmp{m} = alloca [{B} x {t}], align 64")
        blocked = not self.reduced and not post_s and not pre_k and self.R >= threads.PAR_MIN
        run = not blocked and self._run(B)
        split = not blocked and not run and self._split_runs(B)
        #  (the blocks function is one of its own: scalars computed before the loop, pre_k,
        #   are not in it — such groups take the one-thread form)
        CB = _BLOCK_CHUNKS
        NB = -(-chunks // CB)
        if blocked:  # one o: the chunks in fixed blocks, whose partial lanes add in order
            for m, v in enumerate(vec):  # (a count, not an array type: a number the
                #                             driver may pass at run time, see forms.py)
                self.line(f"%parts{m} = alloca {v}, i64 {NB}, align 64")
            n_args = len(layout)
            self.line(f"%ctx = alloca [{n_args + len(tys)} x ptr], align 8")
            for k in range(n_args + len(tys)):
                val = f"%a{k}" if k < n_args else f"%parts{k - n_args}"
                self.line(f"%ctx{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}")
                self.line(f"store ptr {val}, ptr %ctx{k}")

        def values_into_tmp(r: str, k: str) -> None:
            saved = dict(self.reads), dict(self.idx)  # (what this loop reads is read in
            vals = self._lane(r, reductions, pre_s, s_pre_out, base)  # it: the loop may be
            for m, t in enumerate(tys):  #                              skipped at run time)
                p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {k}")
                self.line(f"store {t} {vals[m]}, ptr {p}")
            self.reads, self.idx = saved

        def accumulate(acc: list, n_vectors: int) -> list:
            acc = list(acc)
            for q in range(n_vectors):  # lane j takes elements j, j + L, j + 2L, ... in order
                for m, t in enumerate(tys):
                    p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {q * L}")
                    v = self.emit(f"load {vec[m]}, ptr {p}, align 4")
                    acc[m] = self._combine(ops[m], vec[m], acc[m], v)
            return acc

        def chunk_loop(first: list, c0: str, c1: str, guard: bool = False) -> list:
            """Chunks c0 <= c < c1 from lanes ``first``; the lanes after. At least one unless
            ``guard`` (then the loop is skipped when there is none)."""
            if guard:
                self.line(f"%c.any = icmp slt i64 {c0}, {c1}")
                self.branch("%c.any", "chunk", "chunk.end")
            pred = self.block
            with self.loop("%c", c1, start=c0, block="chunk", exit="chunk.end", entered=guard,
                           carry=[(f"%acc{m}", vec[m], first[m]) for m in range(len(tys))]
                           ) as chunk:
                if run:  # chunk c: run j = c / (IR/B), from i0 = (c mod IR/B)·B
                    per = self.IR // B
                    j = self.emit(f"udiv i64 %c, {per}")
                    i0 = self.emit(f"mul nuw nsw i64 {self.emit(f'urem i64 %c, {per}')}, {B}")
                elif split:  # chunk c: the rest of run j from i0, then the runs after it
                    cb = self.emit(f"mul nuw nsw i64 %c, {B}")
                    j0 = self.emit(f"udiv i64 {cb}, {self.IR}")
                    i0 = self.emit(f"urem i64 {cb}, {self.IR}")
                    pieces = -(-B // self.IR) + 1  # (at most: a chunk starts inside a run)
                    with self.loop("%sq", pieces, block="piece", exit="piece.end",
                                   carry=[("%sk", "i64", "0"), ("%sj", "i64", j0),
                                          ("%si", "i64", i0)]) as piece:
                        n = self.min(self.emit(f"sub i64 {B}, %sk"),
                                     self.emit(f"sub i64 {self.IR}, %si"))
                        with self.when(self.emit(f"icmp sgt i64 {n}, 0")):
                            with self.loop("%st", n, block="inner", exit="inner.end") as inner:
                                values_into_tmp(("%sj", self.emit("add nuw nsw i64 %si, %st")),
                                                self.emit("add nuw nsw i64 %sk, %st"))
                                inner.hint = interleaved(self.vecmath, B)
                        piece.next = [self.emit(f"add i64 %sk, {n}"),
                                      self.emit("add i64 %sj, 1"), "0"]
                    self.jump("chunk.acc")
                    self.label("chunk.acc")
                else:
                    cb = self.emit(f"mul nuw nsw i64 %c, {B}")
                if not split:
                    with self.loop("%k", B, block="inner", exit="chunk.acc") as inner:
                        r = (j, self.emit(f"add nuw nsw i64 {i0}, %k")) if run else \
                            self.emit(f"add nuw nsw i64 {cb}, %k")
                        values_into_tmp(r, "%k")
                        inner.hint = interleaved(self.vecmath, B)
                chunk.next = accumulate(chunk.carried, B // L)
            if guard:  # the lanes from the loop, or as they came when it was skipped
                return [self.emit(f"phi {vec[m]} [{first[m]}, %{pred}], "
                                  f"[{chunk.next[m]}, %chunk.acc]") for m in range(len(tys))]
            return chunk.next

        K = math.prod(self.reduced)
        kept_split = threads.find() is not None and not blocked and isinstance(K, int) \
            and K >= 2 and K * self.R >= KEPT_SPLIT_MIN
        if kept_split:  # (a part of the kept elements: possibly none, with more threads)
            self.branch(self.emit("icmp slt i64 %o0, %o1"), "outer", "exit")
        with self.loop("%o", "%o1" if kept_split else K, start="%o0" if kept_split else 0,
                       block="outer", exit="exit", latch="outer.tail", entered=kept_split):
            self._in_space_k()
            for i in pre_k:
                self.node(nodes[i])
            base = dict(self.at_i)
            if blocked:
                self.extra = self._blocks_function(name, layout, tys, vec, init, NB, CB, B,
                                                   chunks, chunk_loop)
                self.lines.append(threads.split_call(name, NB) if threads.find() else
                                  f"  call void @{name}_blocks(ptr %ctx, i64 0, i64 1)\n"
                                  "  br label %par.joined\npar.joined:")
                self.block = "par.joined"  # (where both continue)
                with self.loop("%g", NB, block="gather", exit="gather.end",
                               carry=[(f"%gacc{m}", vec[m], init[m]) for m in range(len(tys))]
                               ) as gather:
                    for m, v in enumerate(vec):
                        p = self.emit(f"getelementptr inbounds {v}, ptr %parts{m}, i64 %g")
                        part = self.emit(f"load {v}, ptr {p}, align 64")
                        gather.next.append(self._combine(ops[m], v, f"%gacc{m}", part))
                acc = gather.next
                self.at_i = dict(base)
            else:  # (skipped at run time when R < B: the code has one form for every R)
                acc = chunk_loop(init, "0", str(chunks), guard=True)
            acc = self._remainder(acc, values_into_tmp, rem, chunks * B, L, tys, vec, ops,
                                  ident)
            self.at_i = dict(base)
            self._in_space_k()
            for m, i in enumerate(reductions):
                lanes = [self.emit(f"extractelement {vec[m]} {acc[m]}, i64 {j}")
                         for j in range(L)]
                while len(lanes) > 1:  # a fixed tree: pairs, then pairs of pairs
                    lanes = [self._combine(ops[m], tys[m], lanes[k], lanes[k + 1])
                             for k in range(0, len(lanes), 2)]
                total = lanes[0]
                if ops[m] is prims.SUM and tys[m] != "i64":  # +0.0 start, as numpy:
                    total = self.emit(f"fadd {tys[m]} {total}, {literal(0.0, tys[m])}")  # (-0.0)
                #                                                           + (+0.0) is +0.0
                self.at_i[id(nodes[i].out)] = self._total(nodes[i], total, tys[m])
            for i in post_k:
                self.node(nodes[i])
            for arg, v in k_out:
                self._store(v, arg, c_strides(self.reduced))
            if post_s:
                kbase = dict(self.at_i)

                back = read_back(self.g, grp, setup, pre_s, post_s)
                stored = {i: arg for i in back for arg, v in s_pre_out
                          if v is nodes[i].out}

                def second_pass() -> None:
                    for i in pre_s + post_s:
                        out = nodes[i].out
                        if id(out) in kbase:
                            continue
                        if i in stored:  # (the first pass stored it: read back, not
                            self.at_i[id(out)] = self._load_back(  #       computed again)
                                out, stored[i], c_strides(self.full))
                        else:
                            self.node(nodes[i])
                    for arg, v in s_post_out:
                        self._store(v, arg, c_strides(self.full))

                if self._run(1):  # (runs: contiguous, as the chunks above)
                    with self.loop("%pj", math.prod(self.full[k] for k in self.outer),
                                   block="post", exit="post.end", latch="post.jend"):
                        with self.loop("%pi", self.IR, block="post.i", exit="post.jend"):
                            self.at_i = dict(kbase)
                            self._in_space_run("%pj", "%pi")
                            second_pass()
                else:
                    with self.loop("%p", self.R, block="post", exit="post.end"):
                        self.at_i = kbase
                        self._in_space_s("%p")
                        second_pass()
        self.line("ret void")
        if kept_split:
            self.extra += self.function(f"define internal void @{name}_range("
                                        f"{', '.join(params)}, i64 %o0, i64 %o1) noinline")
            self._kept_parts(name, len(layout), K)
        text = (
            (prelude_ir(self.vecmath) + self.declarations() if prelude else "")
            + self.extra
            + self.function(f"define internal void @{name}_body({', '.join(params)}) "
                            "alwaysinline")
            + entry_ir(name, len(layout)))
        return text, name, layout

    def _kept_parts(self, name: str, n_args: int, K: int) -> None:
        """The kernel's body when its kept elements split across the threads (each element's
        reduction whole on one thread, in the order it has on one: the same bits): a part
        per thread, each a contiguous range of ``@<name>_range``; this emitter's lines become
        that body (and ``@<name>_o_blocks`` joins :attr:`extra`)."""
        args = ", ".join(f"ptr %a{k}" for k in range(n_args))
        e = Emitter()
        e.label("entry")
        for k in range(n_args):
            e.line(f"%a{k} = load ptr, ptr {e.gep('ptr', '%ctx', k)}")
        o0 = e.emit(f"udiv i64 {e.emit(f'mul i64 %tid, {K}')}, %nt")
        nxt = e.emit("add i64 %tid, 1")
        o1 = e.emit(f"udiv i64 {e.emit(f'mul i64 {nxt}, {K}')}, %nt")
        e.line(f"call void @{name}_range({args}, i64 {o0}, i64 {o1})")
        e.line("ret void")
        self.extra += e.function(f"define internal void @{name}_o_blocks(ptr %ctx, i64 %tid, "
                                 f"i64 %nt)")
        self.lines, self.block = [], "entry"
        self.label("entry")
        self.line(f"%ctx = alloca [{n_args} x ptr], align 8")
        for k in range(n_args):
            self.line(f"store ptr %a{k}, ptr {self.gep('ptr', '%ctx', k)}")
        self.lines += threads.split_call(f"{name}_o", 0).split("\n")
        self.block = "par.joined"
        self.line("ret void")

    # ------------------------------------------------------------ the column form
    def _columns(self, post_s, tys) -> bool:
        """Whether the group reduces over leading dims only, keeping trailing ones that are
        contiguous (a bias gradient: ``sum`` over the batch of a (batch, features) array;
        a position embedding's gradient: over the batch of (batch, time, features)), with
        no second pass over ``S`` and at most ``COLUMNS_MAX_ELEMENTS`` elements (one thread
        runs the form): then :meth:`_build_columns` runs the rows in order, each a
        vectorised loop over the kept elements, instead of a strided walk down every
        column. (A symbolic variant's sizes decide at their numbers, as every decision on a
        ``Dim`` does: a size sums in the order its own module would — the same bits.)"""
        if post_s or not self.red or not self.kept or max(self.red) > min(self.kept):
            return False
        n_cols = math.prod(self.reduced)
        return n_cols >= _LANES["float"] and n_cols * self.R <= COLUMNS_MAX_ELEMENTS

    def _tile(self, tys) -> int:
        """Kept elements per tile of the column form: its partials of every reduction fill
        at most ``COLUMNS_MAX_BYTES`` of stack (a worker thread's stack holds them, beside
        gemm's panels), in whole vectors."""
        per_col = sum(_PARTIALS * (4 if t == "float" else 8) for t in tys)
        return max(COLUMNS_MAX_BYTES // per_col // _LANES["float"], 1) * _LANES["float"]

    def _build_columns(self, name, prelude, params, layout, reductions, pre_s, pre_k,
                       post_k, s_pre_out, k_out, tys, ops, ident) -> tuple:
        """The column form (see :meth:`_columns`): ``_PARTIALS`` running partials per kept
        element, on the stack; row ``r`` is folded into partial ``r mod _PARTIALS`` by a loop
        over the kept elements ``o`` (which LLVM vectorises); then, per ``o``, the partials
        combine in a fixed tree (``(p0 + p1) + (p2 + p3)``), and the epilogue over the kept
        shape runs. Each element's sum order depends only on R: the rows in order within a
        partial, the partials in a fixed tree — never on a thread count or the machine."""
        nodes = self.g.nodes
        n_cols, P = math.prod(self.reduced), _PARTIALS
        T = min(n_cols, self._tile(tys))  # kept elements per tile
        tiles = -(-n_cols // T)
        setup_at = dict(self.at_i)
        self.label("entry")
        for m, t in enumerate(tys):  # (a count, not an array type: see forms.py)
            self.line(f"%cols{m} = alloca {t}, i64 {P * T}, align 64")
        if tiles > 1:  # tile %t: kept elements %o0 <= o < %o1
            self.jump("tiles")
            self.label("tiles")
            self.lines.append("")  # (the phi of %t, written once the latch is known)
            tile_at = len(self.lines) - 1
            self.line(f"%o0 = mul nuw nsw i64 %t, {T}")
            end = self.emit(f"add nuw nsw i64 %o0, {T}")
            self.line(f"%o1 = select i1 {self.emit(f'icmp slt i64 {end}, {n_cols}')}, "
                      f"i64 {end}, i64 {n_cols}")
            lo, hi = "%o0", "%o1"
        else:
            lo, hi = 0, n_cols
        with self.loop("%j", P * T, block="init", exit="rows", exit_is_loop=True):
            for m, t in enumerate(tys):
                p = self.emit(f"getelementptr inbounds {t}, ptr %cols{m}, i64 %j")
                self.line(f"store {t} {_identity(ident[m], t)}, ptr {p}")
        with self.loop("%r", self.R, block="rows", exit="fin", entered=True, exit_is_loop=True):
            part = self.emit(f"and i64 %r, {P - 1}")
            pbase = self.emit(f"mul nuw nsw i64 {part}, {T}")
            with self.loop("%o", hi, start=lo, block="cols", exit="rows.tail") as cols:
                self.reads, self.idx, self.at_i = {}, {}, dict(setup_at)
                self._in_space_k()
                for i in pre_k:
                    self.node(nodes[i])
                vals = self._lane("%r", reductions, pre_s, s_pre_out, dict(self.at_i))
                at = self.emit(f"add nuw nsw i64 {pbase}, %o")
                if tiles > 1:
                    at = self.emit(f"sub nuw nsw i64 {at}, %o0")
                for m, t in enumerate(tys):
                    p = self.emit(f"getelementptr inbounds {t}, ptr %cols{m}, i64 {at}")
                    old = self.emit(f"load {t}, ptr {p}")
                    self.line(f"store {t} {self._combine(ops[m], t, old, vals[m])}, ptr {p}")
                cols.hint = interleaved(self.vecmath, min(T, n_cols))
        with self.loop("%q", hi, start=lo, block="fin", entered=True,
                       exit="tiles.tail" if tiles > 1 else "exit"):
            self.reads, self.idx, self.at_i = {}, {}, dict(setup_at)
            self.space, self.loops = self.reduced, [("%q", tuple(range(len(self.reduced))))]
            for i in pre_k:
                self.node(nodes[i])
            local = self.emit("sub nuw nsw i64 %q, %o0") if tiles > 1 else "%q"
            for m, i in enumerate(reductions):
                t = tys[m]
                parts = []
                for k in range(P):
                    at = self.emit(f"add nuw nsw i64 {local}, {k * T}")
                    p = self.emit(f"getelementptr inbounds {t}, ptr %cols{m}, i64 {at}")
                    parts.append(self.emit(f"load {t}, ptr {p}"))
                while len(parts) > 1:  # a fixed tree: pairs, then pairs of pairs
                    parts = [self._combine(ops[m], t, parts[k], parts[k + 1])
                             for k in range(0, len(parts), 2)]
                total = parts[0]
                if ops[m] is prims.SUM and t != "i64":  # +0.0 start, as numpy: (-0.0) +
                    total = self.emit(f"fadd {t} {total}, {literal(0.0, t)}")  # (+0.0) is +0.0
                self.at_i[id(nodes[i].out)] = self._total(nodes[i], total, t)
            for i in post_k:
                self.node(nodes[i])
            for arg, v in k_out:
                self._store(v, arg, c_strides(self.reduced))
        if tiles > 1:
            self.lines[tile_at] = f"  %t = phi i64 [0, %entry], [%t.next, %{self.block}]"
            self.line("%t.next = add nuw nsw i64 %t, 1")
            self.line(f"br i1 {self.emit(f'icmp slt i64 %t.next, {tiles}')}, label %tiles, "
                      "label %exit")
            self.label("exit")
        self.line("ret void")
        text = ((prelude_ir(self.vecmath) + self.declarations() if prelude else "")
                + self.function(f"define internal void @{name}_body({', '.join(params)}) "
                                "alwaysinline")
                + entry_ir(name, len(layout)))
        return text, name, layout

    def _remainder(self, acc, values_into_tmp, rem, start, L, tys, vec, ops, ident) -> list:
        """The last partial chunk: its ``rem`` values (from element ``start``) into the
        stack buffer, the last vector's unused lanes set to the identity, then
        ``ceil(rem / L)`` vectors folded into the lanes in order — loops whose trip counts
        are numbers in the code (LLVM unrolls them when they are literals), so the kernel's
        form is the same for every R; skipped when ``rem`` is 0. Returns the lanes (in block
        ``r.done``)."""
        n_vec = -(-rem // L)
        block = self.block
        self.line(f"%r.any = icmp sgt i64 {rem}, 0")
        self.branch("%r.any", "rinner", "r.done")
        with self.loop("%j", rem, block="rinner", exit="rpad.pre", entered=True):
            values_into_tmp(self.emit(f"add nuw nsw i64 %j, {start}"), "%j")
        self.line(f"%pad.any = icmp slt i64 {rem}, {n_vec * L}")
        self.branch("%pad.any", "rpad", "racc.pre")
        with self.loop("%u", n_vec * L, start=rem, block="rpad", exit="racc.pre",
                       entered=True):
            for m, t in enumerate(tys):  # the last vector's unused lanes: identity
                p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 %u")
                self.line(f"store {t} {_identity(ident[m], t)}, ptr {p}")
        with self.loop("%q", n_vec, block="racc", exit="r.done",
                       carry=[(f"%racc{m}", vec[m], acc[m]) for m in range(len(tys))]) as racc:
            qe = self.emit(f"mul nuw nsw i64 %q, {L}")
            for m, t in enumerate(tys):  # lane j takes elements j, j + L, ... in order
                p = self.emit(f"getelementptr inbounds {t}, ptr %tmp{m}, i64 {qe}")
                v = self.emit(f"load {vec[m]}, ptr {p}, align 4")
                racc.next.append(self._combine(ops[m], vec[m], f"%racc{m}", v))
        return [self.emit(f"phi {vec[m]} [{acc[m]}, %{block}], [{racc.next[m]}, %racc]")
                for m in range(len(tys))]

    def declarations(self) -> str:
        return threads.DECLARATIONS if self.extra and threads.find() else ""


# The dtypes a reduction widens to int64 (a bool sum counts; a max of a narrow integer or
# bool is the same in int64, whose combine rule serves it) and how each widens.
_WIDENED = frozenset({"bool", "int32", "int16", "int8", "uint8"})
_ZEXT = frozenset({"bool"}) | UNSIGNED

# How partial results of each reduction combine (scalars or vectors of lanes).
_COMBINE = Lowerings("LLVM reduce codegen")


def in_place_nodes(g, grp) -> frozenset:
    """The nodes of reduce group ``grp`` whose outputs may take over the buffer of an input
    they read (the memory planner's in-place pairs).

    - With no second pass over ``S``: its prologue over ``S``. Each element of ``S`` is then
      visited once, in whichever form the kernel takes (chunks, runs, pieces, columns,
      blocks across threads): its inputs loaded, then its prologue outputs stored.
    - With one: its epilogue over ``S``; and those prologue nodes whose outputs the first
      pass stores (the group's outputs: the second pass reads them back rather than
      computing them again) and which read no input the second pass reads — it computes
      the other prologue values again from the inputs, which a prologue stored in place
      would have overwritten. Such a group takes the form that loops over the kept elements
      ``o`` outermost (never columns or blocks: see ``build``), and per ``o`` finishes its
      sums before the second pass over ``o``'s elements loads each element's inputs and
      then stores its outputs. What the sums read of a buffer aligned with ``S`` is ``o``'s
      elements alone, read before they are overwritten: :func:`early_readers` tells the
      planner so. (A batch norm's centred input, stored over the convolution output it
      came from; its normalised output over the centred one when that dies there.)"""
    try:
        setup, _, pre_s, post_s, _, _ = ReduceBuilder(g, grp)._classify()
    except NotImplementedError:  # (a group this backend does not lower: no kernel at all)
        return frozenset()
    if not post_s:
        return frozenset(pre_s)
    return frozenset(post_s) | read_back(g, grp, setup, pre_s, post_s)


def read_back(g, grp, setup, pre_s, post_s) -> frozenset:
    """The prologue nodes of a reduce group with a second pass whose values that pass reads
    back from the group's outputs, where the first pass stored them, instead of computing
    them again: those stored and computed from inputs the second pass reads nothing of
    (it then reads one stream either way; and they may take over such an input's buffer,
    :func:`in_place_nodes`)."""
    nodes, outputs = g.nodes, {id(v) for v in grp.outputs}
    inside = {id(nodes[i].out): i for i in grp.nodes}
    maps = set(setup)

    def sources(i: int) -> set:
        """The group inputs node ``i`` reads, directly or through index maps (not through
        values computed in the group)."""
        found, stack = set(), list(nodes[i].inputs)
        while stack:
            x = stack.pop()
            if not isinstance(x, Value):
                continue
            j = inside.get(id(x))
            if j is None:
                found.add(id(x))
            elif j in maps:
                stack.extend(nodes[j].inputs)
        return found

    def reaches(i: int) -> set:
        """The group inputs node ``i``'s value is computed from (through the group)."""
        found, stack, seen = set(), [i], set()
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            found |= sources(j)
            stack.extend(inside[id(x)] for x in nodes[j].inputs
                         if isinstance(x, Value) and id(x) in inside)
        return found

    back = {i for i in pre_s if id(nodes[i].out) in outputs}
    while True:  # (a stored value not read back is computed again: its reads count too)
        second = set().union(*(sources(i) for i in pre_s if i not in back),
                             *(sources(i) for i in post_s))
        kept = {i for i in back if not reaches(i) & second}
        if kept == back:
            return frozenset(back)
        back = kept


def early_readers(g, grp) -> frozenset:
    """The reductions of reduce group ``grp`` when it has a second pass over ``S``: they read
    the elements of each kept index before its second pass overwrites any (see
    :func:`in_place_nodes`; ``plan_memory``'s ``early``)."""
    try:
        _, reductions, _, post_s, _, _ = ReduceBuilder(g, grp)._classify()
    except NotImplementedError:
        return frozenset()
    return frozenset(reductions) if post_s else frozenset()


def _identity(e: float, t: str) -> str:
    """A reduction's identity as a literal of type ``t`` (int64: the extreme ints for ±inf)."""
    if t == "i64":
        return str(-(1 << 63) if e == -math.inf else (1 << 63) - 1 if e == math.inf else int(e))
    return literal(e, t)


@_COMBINE(prims.SUM)
def _add(b: ReduceBuilder, ty: str, x: str, y: str) -> str:
    return b.emit(f"{'add' if ty.endswith('i64') or ty.endswith('i64>') else 'fadd'} {ty} "
                  f"{x}, {y}")


@_COMBINE(prims.MAX)
def _max(b: ReduceBuilder, ty: str, x: str, y: str) -> str:  # numpy's max: NaN wins
    mask = f"<{ty[1:].split(' x ')[0]} x i1>" if ty.startswith("<") else "i1"
    if ty.endswith("i64") or ty.endswith("i64>"):
        return b.emit(f"select {mask} {b.emit(f'icmp sgt {ty} {x}, {y}')}, {ty} {x}, {ty} {y}")
    gt = b.emit(f"fcmp ogt {ty} {x}, {y}")
    nan = b.emit(f"fcmp uno {ty} {x}, {x}")
    keep = b.emit(f"or {mask} {gt}, {nan}")
    return b.emit(f"select {mask} {keep}, {ty} {x}, {ty} {y}")
