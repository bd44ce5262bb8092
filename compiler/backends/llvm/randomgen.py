"""LLVM IR for 'random' groups: eager's Philox-4x32-10 numbers, the same bits.

``dyngrad/ops/random.py`` defines the generator: counter ``offset + b`` (64 bits, the high
counter words zero) under the 64-bit key ``seed`` gives block ``b`` of four 32-bit words;
float32 uniforms are ``(w >> 8) · 2⁻²⁴`` of one word each, float64 uniforms
``((w₀ >> 5) · 2²⁶ + (w₁ >> 6)) · 2⁻⁵³`` of two. Every step is integer arithmetic or an exact
float operation, so the kernel reproduces numpy's numbers bit for bit. Normals (Box–Muller
through numpy's log, sqrt and cos) are not lowered: NotImplementedError, and the group runs
in numpy.
"""

from __future__ import annotations

import math

from .emit import FN_NAME, Emitter, KernelBuilder, builds, entry_ir
from .vecmath import prelude_ir

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
_ROUNDS = 10


def _i32(v: int) -> str:
    """A 32-bit constant as LLVM's signed literal."""
    return str(v - (1 << 32) if v >= 1 << 31 else v)


@builds("random")
class RandomBuilder(KernelBuilder):
    """A 'random' group: one ``random`` node, uniform float32 or float64. The state input is
    int64 ``[seed, offset]``; the kernel writes the numbers, the generator's offset update is
    an ordinary (int64 elementwise) group of its own."""

    def __init__(self, g, group) -> None:
        super().__init__(g, group, "random")
        if len(group.nodes) != 1:
            raise NotImplementedError("LLVM random codegen: a group of more than one node")
        self.n = n = g.nodes[group.nodes[0]]
        dist, dt = n.params["dist"], n.out.dtype.name
        if dist != "uniform" or dt not in ("float32", "float64"):
            raise NotImplementedError(f"LLVM random codegen: {dist} {dt} numbers (uniform "
                                      f"float32/float64 only; normals use numpy's log and cos)")
        self.f32 = dt == "float32"

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

    def _store_block(self, words: str, blk: str, count: int) -> None:
        """The first ``count`` numbers of block ``blk`` (4 float32 or 2 float64 per block)."""
        per = 4 if self.f32 else 2
        base = self.emit(f"mul nuw nsw i64 {blk}, {per}")
        w = [self.emit(f"extractelement <4 x i32> {words}, i64 {j}") for j in range(4)]
        for j in range(count):
            if self.f32:
                m = self.emit(f"lshr i32 {w[j]}, 8")
                val = self.emit(f"fmul float {self.emit(f'uitofp i32 {m} to float')}, "
                                f"0x3E70000000000000")  # 2**-24
                ty = "float"
            else:
                a = self.emit(f"uitofp i32 {self.emit(f'lshr i32 {w[2 * j]}, 5')} to double")
                c = self.emit(f"uitofp i32 {self.emit(f'lshr i32 {w[2 * j + 1]}, 6')} "
                              f"to double")
                hi = self.emit(f"fmul double {a}, 0x4190000000000000")  # 2**26
                val = self.emit(f"fmul double {self.emit(f'fadd double {hi}, {c}')}, "
                                f"0x3CA0000000000000")  # 2**-53
                ty = "double"
            idx = self.emit(f"add nuw nsw i64 {base}, {j}")
            p = self.emit(f"getelementptr inbounds {ty}, ptr %a1, i64 {idx}")
            self.line(f"store {ty} {val}, ptr {p}")

    def build(self, name: str = FN_NAME, prelude: bool = True) -> tuple:
        grp, n = self.group, self.n
        layout = list(grp.inputs) + list(grp.outputs)
        if layout != [n.inputs[0], n.out]:
            raise NotImplementedError("LLVM random codegen: the state in, the numbers out")
        count = math.prod(n.out.shape)
        per = 4 if self.f32 else 2
        full, rest = divmod(count, per)
        self.label("entry")
        self.line("%seed = load i64, ptr %a0")
        self.line("%offp = getelementptr inbounds i64, ptr %a0, i64 1")
        self.line("%off = load i64, ptr %offp")
        if full:
            with self.loop("%b", full, block="blk", exit="tail"):
                ctr = self.emit("add i64 %off, %b")  # (wraps as eager's uint64 counter)
                words = self.emit(f"call <4 x i32> @{name}_px(i64 {ctr}, i64 %seed)")
                self._store_block(words, "%b", per)
        if rest:
            ctr = self.emit(f"add i64 %off, {full}")
            words = self.emit(f"call <4 x i32> @{name}_px(i64 {ctr}, i64 %seed)")
            self._store_block(words, str(full), rest)
        self.line("ret void")
        text = (
            (prelude_ir([]) if prelude else "") + self._philox(name)
            + self.function(f"define internal void @{name}_body(ptr noalias %a0, "
                            "ptr noalias %a1) alwaysinline")
            + entry_ir(name, len(layout)))
        return text, name, layout
