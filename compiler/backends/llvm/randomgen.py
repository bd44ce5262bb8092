"""LLVM IR for 'random' groups: eager's Philox-4x32-10 numbers, the same bits.

``dyngrad/ops/random.py`` defines the generator: counter ``offset + b`` (64 bits, the high
counter words zero) under the 64-bit key ``seed`` gives block ``b`` of four 32-bit words;
float32 uniforms are ``(w >> 8) · 2⁻²⁴`` of one word each, float64 uniforms
``((w₀ >> 5) · 2²⁶ + (w₁ >> 6)) · 2⁻⁵³`` of two. Every step is integer arithmetic or an exact
float operation, so the kernel reproduces numpy's numbers bit for bit.

Normals (float32 or float64) take one block each: the float64 uniforms u of words 0, 1 and
v of words 2, 3 give z = √(−2·log(1 − u))·cos 2πv, computed in float64 and rounded once to
the output dtype. Eager computes log and cos with its own IEEE operations
(``dyngrad/ops/boxmuller.py``), not numpy's CPU-specific ones, and :func:`box_muller_ir`
writes the very same operations in the same order from the same constants — no fma, no
fast-math flags, which LLVM then has no licence to contract or reorder — so the kernel
reproduces eager's normals bit for bit too, on every CPU.
"""

from __future__ import annotations

import math

from dyngrad.ops.boxmuller import BOX_MULLER

from .emit import FN_NAME, Emitter, KernelBuilder, builds, entry_ir, interleaved
from .vecmath import prelude_ir
from .vecmath64 import Math64

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
_ROUNDS = 10


def _i32(v: int) -> str:
    """A 32-bit constant as LLVM's signed literal."""
    return str(v - (1 << 32) if v >= 1 << 31 else v)


def box_muller_ir(name: str) -> str:
    """``double @<name>_bm(double %u, double %v)``: ``dyngrad.ops.boxmuller.box_muller`` of
    one pair (u in [2⁻⁵³, 1], v in [0, 1)) — the operations of its ``log_unit``, ``cos_2pi``
    and the product, one for one and in their order, so eager's bits."""
    t = BOX_MULLER
    b = Math64()
    # log u: u = 2**k·m, m in [√½, √2)
    bits = b.emit("bitcast double %u to i64")
    k = b.op("sub", b.op("ashr", bits, "52", "i64"), "1023", "i64")
    m = b.op("or", b.op("and", bits, str((1 << 52) - 1), "i64"), str(1023 << 52), "i64")
    m = b.emit(f"bitcast i64 {m} to double")
    big = b.fcmp("oge", m, b.c(t.sqrt2))
    m = b.select(big, b.op("fmul", m, b.c(0.5)), m)
    k = b.op("add", k, b.emit(f"zext i1 {big} to i64"), "i64")
    f = b.op("fsub", m, b.c(1.0))
    s = b.op("fdiv", f, b.op("fadd", b.c(2.0), f))
    z = b.op("fmul", s, s)
    r = b.op("fmul", b.horner_rounded(z, t.log_p), z)
    hfsq = b.op("fmul", b.op("fmul", f, b.c(0.5)), f)
    r = b.op("fmul", b.op("fadd", r, hfsq), s)
    kf = b.emit(f"sitofp i32 {b.emit(f'trunc i64 {k} to i32')} to double")  # (|k| <= 53)
    r = b.op("fadd", r, b.op("fmul", kf, b.c(t.ln2_lo)))
    r = b.op("fsub", b.op("fsub", hfsq, r), f)
    log_u = b.op("fsub", b.op("fmul", kf, b.c(t.ln2_hi)), r)
    # cos 2πv: 4v = q + r; sin(πr/2) and cos(πr/2)
    v4 = b.op("fmul", "%v", b.c(4.0))
    q = b.call("rint", v4)
    r = b.op("fsub", v4, q)
    z = b.op("fmul", r, r)
    sin = b.op("fmul", b.horner_rounded(z, t.sin_s), b.op("fmul", r, z))
    sin = b.op("fadd", sin, b.op("fmul", r, b.c(t.sin_lo)))
    c = b.op("fmul", r, b.c(t.splitter))
    rh = b.op("fsub", c, b.op("fsub", c, r))
    sin = b.op("fadd", sin, b.op("fmul", b.op("fsub", r, rh), b.c(t.sin_hi)))
    sin = b.op("fadd", sin, b.op("fmul", rh, b.c(t.sin_hi)))
    h = b.op("fmul", b.call("rint", b.op("fmul", r, b.c(2.0 ** t.split))),
             b.c(2.0 ** -t.split))
    tail = b.op("fsub", r, h)
    cos = b.op("fmul", b.op("fmul", b.horner_rounded(z, t.cos_c), z), z)
    cos = b.op("fadd", cos, b.op("fmul", z, b.c(t.cos_lo)))
    hr = b.op("fmul", b.op("fmul", b.op("fadd", h, r), tail), b.c(t.cos_hi))
    cos = b.op("fadd", cos, hr)
    lead = b.op("fadd", b.op("fmul", b.op("fmul", h, h), b.c(t.cos_hi)), b.c(1.0))
    cos = b.op("fadd", cos, lead)
    quadrant = b.op("add", b.emit(f"fptosi double {q} to i32"), "1", "i32")
    odd = b.emit(f"trunc i32 {quadrant} to i1")
    neg = b.emit(f"icmp ne i32 {b.op('and', quadrant, '2', 'i32')}, 0")
    c = b.select(odd, cos, sin)
    c = b.select(neg, b.emit(f"fneg double {c}"), c)
    normal = b.op("fmul", b.call("sqrt", b.op("fmul", log_u, b.c(-2.0))), c)
    body = "\n".join(b.lines)
    return (f"define internal double @{name}_bm(double %u, double %v) alwaysinline nounwind "
            f"{{\nentry:\n{body}\n  ret double {normal}\n}}\n")


@builds("random")
class RandomBuilder(KernelBuilder):
    """A 'random' group: one ``random`` node, uniform or normal, float32 or float64. The
    state input is int64 ``[seed, offset]``; the kernel writes the numbers, the generator's
    offset update is an ordinary (int64 elementwise) group of its own."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "random")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM random codegen: a group of more than one node")
        self.n = n = g.nodes[group.nodes[0]]
        dist, dt = n.params["dist"], n.out.dtype.name
        if dist not in ("uniform", "normal") or dt not in ("float32", "float64"):
            raise NotImplementedError(f"LLVM random codegen: {dist} {dt} numbers (uniform "
                                      f"or normal, float32 or float64 only)")
        self.normal = dist == "normal"
        self.f32 = dt == "float32"
        self.per = 1 if self.normal else 4 if self.f32 else 2  # numbers per block

    def _philox(self, name: str) -> str:
        """``<4 x i32> @<name>_px(i64 %ctr, i64 %seed)``: one block of four words."""
        f = Emitter(prefix="x")
        f.label("entry")
        emit = f.emit
        c0 = emit("trunc i64 %ctr to i32")
        c1 = emit(f"trunc i64 {emit('lshr i64 %ctr, 32')} to i32")
        c2 = c3 = "0"
        k0 = emit("trunc i64 %seed to i32")
        k1 = emit(f"trunc i64 {emit('lshr i64 %seed, 32')} to i32")
        for r in range(_ROUNDS):
            p0 = emit(f"mul nuw i64 {emit(f'zext i32 {c0} to i64')}, {_M0}")
            p1 = emit(f"mul nuw i64 {emit(f'zext i32 {c2} to i64')}, {_M1}")
            hi0 = emit(f"trunc i64 {emit(f'lshr i64 {p0}, 32')} to i32")
            hi1 = emit(f"trunc i64 {emit(f'lshr i64 {p1}, 32')} to i32")
            lo0, lo1 = emit(f"trunc i64 {p0} to i32"), emit(f"trunc i64 {p1} to i32")
            c0 = emit(f"xor i32 {emit(f'xor i32 {hi1}, {c1}')}, {k0}")
            c1 = lo1
            c2 = emit(f"xor i32 {emit(f'xor i32 {hi0}, {c3}')}, {k1}")
            c3 = lo0
            if r < _ROUNDS - 1:
                k0 = emit(f"add i32 {k0}, {_i32(_W0)}")
                k1 = emit(f"add i32 {k1}, {_i32(_W1)}")
        v = "undef"
        for j, c in enumerate((c0, c1, c2, c3)):
            v = emit(f"insertelement <4 x i32> {v}, i32 {c}, i64 {j}")
        f.line(f"ret <4 x i32> {v}")
        return f.function(f"define internal <4 x i32> @{name}_px(i64 %ctr, i64 %seed) "
                          "alwaysinline")

    def _u53(self, w0: str, w1: str) -> str:
        """The float64 uniform of two words: ``((w₀ >> 5) · 2²⁶ + (w₁ >> 6)) · 2⁻⁵³``."""
        a = self.emit(f"uitofp i32 {self.emit(f'lshr i32 {w0}, 5')} to double")
        c = self.emit(f"uitofp i32 {self.emit(f'lshr i32 {w1}, 6')} to double")
        hi = self.emit(f"fmul double {a}, 0x4190000000000000")  # 2**26
        return self.emit(f"fmul double {self.emit(f'fadd double {hi}, {c}')}, "
                         f"0x3CA0000000000000")  # 2**-53

    def _store_block(self, words: str, blk: str, count: int, name: str) -> None:
        """The first ``count`` numbers of block ``blk`` (``self.per`` per block)."""
        base = self.emit(f"mul nuw nsw i64 {blk}, {self.per}") if self.per > 1 else blk
        w = [self.emit(f"extractelement <4 x i32> {words}, i64 {j}") for j in range(4)]
        ty = "float" if self.f32 else "double"
        for j in range(count):
            if self.normal:
                u = self.emit(f"fsub double 1.0, {self._u53(w[0], w[1])}")  # (exact: (0, 1])
                val = self.emit(f"call double @{name}_bm(double {u}, "
                                f"double {self._u53(w[2], w[3])})")
                if self.f32:
                    val = self.emit(f"fptrunc double {val} to float")
            elif self.f32:
                m = self.emit(f"lshr i32 {w[j]}, 8")
                val = self.emit(f"fmul float {self.emit(f'uitofp i32 {m} to float')}, "
                                f"0x3E70000000000000")  # 2**-24
            else:
                val = self._u53(w[2 * j], w[2 * j + 1])
            idx = self.emit(f"add nuw nsw i64 {base}, {j}") if j else base
            p = self.emit(f"getelementptr inbounds {ty}, ptr %a1, i64 {idx}")
            self.line(f"store {ty} {val}, ptr {p}")

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, n = self.group, self.n
        layout = list(grp.inputs) + list(grp.outputs)
        if layout != [n.inputs[0], n.out]:
            raise NotImplementedError("LLVM random codegen: the state in, the numbers out")
        count = math.prod(n.out.shape)
        full, rest = divmod(count, self.per)
        self.label("entry")
        self.line("%seed = load i64, ptr %a0")
        self.line("%offp = getelementptr inbounds i64, ptr %a0, i64 1")
        self.line("%off = load i64, ptr %offp")
        if full:
            # (normals: a long chain of dependent operations per block, as in a loop
            # calling vecmath functions, which interleaving hides: 7.9 → 5.2 ms a million)
            with self.loop("%b", full, block="blk", exit="tail",
                           hint=interleaved(self.normal, full)):
                ctr = self.emit("add i64 %off, %b")  # (wraps as eager's uint64 counter)
                words = self.emit(f"call <4 x i32> @{name}_px(i64 {ctr}, i64 %seed)")
                self._store_block(words, "%b", self.per, name)
        if rest:
            ctr = self.emit(f"add i64 %off, {full}")
            words = self.emit(f"call <4 x i32> @{name}_px(i64 {ctr}, i64 %seed)")
            self._store_block(words, str(full), rest, name)
        self.line("ret void")
        text = (
            (prelude_ir([]) if prelude else "") + self._philox(name)
            + (box_muller_ir(name) if self.normal else "")
            + self.function(f"define internal void @{name}_body(ptr noalias %a0, "
                            "ptr noalias %a1) alwaysinline")
            + entry_ir(name, len(layout)))
        return text, name, layout
