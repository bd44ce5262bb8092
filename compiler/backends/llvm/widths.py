"""The width of loop vectors on AVX-512 targets: 256 or 512 bits, decided by measurement.

LLVM's own choice is a guess from the CPU's name: it vectorises for 512-bit registers on AMD's
Zen 4 and for 256-bit ones on Intel's AVX-512 parts (the ``prefer-256-bit`` tuning, from the
days when 512-bit instructions lowered the clock). Which is faster depends on the machine
and the kernel: a polynomial (``exp``, ``tanh``) is bound by its multiply-adds, and a Xeon
with two 512-bit FMA units does twice the work per instruction; a streaming update is bound
by memory either way. So :func:`decide` times one kernel of each class the code generator
makes, at both widths, on this machine:

- ``elementwise``: Adam's update of four float32 arrays (streaming, with a division and a
  square root), 32K elements — in L2, as a model's parameters are;
- ``vecmath``: ``x·exp(−x²)`` on 8K elements, a vecmath polynomial (compute-bound, as
  every vecmath function is);
- ``reduce``: a sum of squares in the reduction kernels' form (a vectorised loop filling a
  chunk buffer, folded into 16 fixed lanes), 64K elements.

All six are one module, each function marked ``prefer-vector-width``; they run in turns,
the best of several runs counts. 512 bits is taken unless the geometric mean of the three
ratios t512/t256 says 256 is faster by more than ``MARGIN`` (on a tie the wider vectors:
fewer instructions for the same time). One width for all loops of a module: a kernel's body
is inlined into the driver, which would impose its own width on it anyway.

The decision is kept per machine (``choices.py``: ``vector-width.json`` beside the compiled
code, under the target's CPU names and features), so a later process takes it without
measuring; ``compiler.clear_cache()`` forgets it. ``DYNGRAD_VECTOR_WIDTH=256|512`` forces
the width (for tests and benchmarks; a width the target does not have is an error). Targets
without AVX-512 have one width, their widest. The width never changes a result (see
``target.py``), only the speed.
"""

from __future__ import annotations

import ctypes
import math
import os
import time

import numpy as np

from . import choices, jit, target, vecmath
from .target import WIDTH_ENV, Target, TargetError

FILE = "vector-width.json"
KEY = "loop vector bits"
WIDTHS = (256, 512)
CLASSES = ("elementwise", "vecmath", "reduce")
SIZES = {"elementwise": 1 << 15, "vecmath": 1 << 13, "reduce": 1 << 16}
MARGIN = 0.03
ROUNDS = 7  # runs of each kernel at each width, alternating (the best counts)
REPS = 4  # calls per timed run
_decisions: dict[str, dict] = {}  # machine key -> the decision made in this process


def decide(t: Target) -> tuple[int, str]:
    """(loop vector bits, how it was decided) for target ``t`` (see the module docstring)."""
    forced = os.environ.get(WIDTH_ENV, "").strip()
    if forced:
        if forced not in ("256", "512"):
            raise TargetError(f"{WIDTH_ENV}={forced!r}: expected 256 or 512")
        if int(forced) > t.vector_bits:
            raise TargetError(f"{WIDTH_ENV}={forced}: the target ({t.cpu}) has "
                              f"{t.vector_bits}-bit vectors at most")
        return int(forced), f"{WIDTH_ENV}"
    if t.vector_bits != 512:
        return t.vector_bits, "the target's widest"
    machine = t.machine_key()
    entry = _decisions.get(machine) or choices.lookup(FILE, machine, KEY)
    if entry is None or entry.get("bits") not in WIDTHS:
        entry = measure(t)
        choices.store(FILE, machine, KEY, entry)
    _decisions[machine] = entry
    return entry["bits"], f"measured: 512-bit at {entry['ratio']:.2f}x the time of 256-bit"


def forget(disk: bool = False) -> None:
    """Forget this process's decisions (and, with ``disk``, the file)."""
    _decisions.clear()
    if disk:
        choices.remove(FILE)


# ------------------------------------------------------------------ the kernels

def _attrs(bits: int) -> str:
    return f'"prefer-vector-width"="{bits}"'


def _elementwise(bits: int, group: int) -> str:
    """Adam's update: m = .9m + .1g; v = .999v + .001g²; p -= .001·m/(√v + 1e-8)."""
    c = lambda v: vecmath.fconst(float(np.float32(v)))  # noqa: E731
    return f"""
define void @ew_{bits}(ptr noalias %p, ptr noalias %m, ptr noalias %v, ptr noalias %g,
                       i64 %n) #{group} {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %pp = getelementptr float, ptr %p, i64 %i
  %pm = getelementptr float, ptr %m, i64 %i
  %pv = getelementptr float, ptr %v, i64 %i
  %pg = getelementptr float, ptr %g, i64 %i
  %g0 = load float, ptr %pg
  %m0 = load float, ptr %pm
  %v0 = load float, ptr %pv
  %p0 = load float, ptr %pp
  %m1a = fmul float %m0, {c(0.9)}
  %m1b = fmul float %g0, {c(0.1)}
  %m1 = fadd float %m1a, %m1b
  %v1a = fmul float %v0, {c(0.999)}
  %gg = fmul float %g0, %g0
  %v1b = fmul float %gg, {c(0.001)}
  %v1 = fadd float %v1a, %v1b
  %r = call float @llvm.sqrt.f32(float %v1)
  %d = fadd float %r, {c(1e-8)}
  %q = fdiv float %m1, %d
  %s = fmul float %q, {c(0.001)}
  %p1 = fsub float %p0, %s
  store float %m1, ptr %pm
  store float %v1, ptr %pv
  store float %p1, ptr %pp
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %exit
exit:
  ret void
}}
"""


def _vecmath(bits: int, group: int) -> str:
    """A polynomial per element: x·exp(−x²) (the vecmath functions are chains of
    multiply-adds alike; one keeps the measurement's compile short)."""
    return f"""
define void @vm_{bits}(ptr noalias %x, ptr noalias %y, i64 %n) #{group} {{
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr float, ptr %x, i64 %i
  %py = getelementptr float, ptr %y, i64 %i
  %a = load float, ptr %px
  %aa = fmul float %a, %a
  %na = fneg float %aa
  %e = call float @dg_expf(float %na)
  %r = fmul float %e, %a
  store float %r, ptr %py
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %exit
exit:
  ret void
}}
"""


_LANES, _CHUNK = 16, 256  # as reduce.py folds: 16 lanes, chunks of 16 vectors


def _reduce(bits: int, group: int) -> str:
    """Sum of squares as the reduction kernels compute it: per chunk of 256 elements a
    plain loop (LLVM vectorises it) fills a buffer with x², then 16 ``<16 x float>`` adds
    fold it into the lanes; ``n`` a multiple of 256."""
    v = f"<{_LANES} x float>"
    return f"""
define float @rd_{bits}(ptr noalias %x, i64 %n) #{group} {{
entry:
  %tmp = alloca [{_CHUNK} x float], align 64
  br label %chunk
chunk:
  %c0 = phi i64 [0, %entry], [%c1, %fold.end]
  %acc = phi {v} [zeroinitializer, %entry], [%acc.n, %fold.end]
  br label %sq
sq:
  %j = phi i64 [0, %chunk], [%j1, %sq]
  %k = add i64 %c0, %j
  %px = getelementptr float, ptr %x, i64 %k
  %a = load float, ptr %px
  %a2 = fmul float %a, %a
  %pt = getelementptr float, ptr %tmp, i64 %j
  store float %a2, ptr %pt
  %j1 = add i64 %j, 1
  %jm = icmp slt i64 %j1, {_CHUNK}
  br i1 %jm, label %sq, label %fold
fold:
  %f = phi i64 [0, %sq], [%f1, %fold]
  %fa = phi {v} [%acc, %sq], [%fa.n, %fold]
  %off = mul i64 %f, {_LANES}
  %pf = getelementptr float, ptr %tmp, i64 %off
  %w = load {v}, ptr %pf, align 64
  %fa.n = fadd {v} %fa, %w
  %f1 = add i64 %f, 1
  %fm = icmp slt i64 %f1, {_CHUNK // _LANES}
  br i1 %fm, label %fold, label %fold.end
fold.end:
  %acc.n = phi {v} [%fa.n, %fold]
  %c1 = add i64 %c0, {_CHUNK}
  %cm = icmp slt i64 %c1, %n
  br i1 %cm, label %chunk, label %exit
exit:
  %lane = extractelement {v} %acc.n, i64 0
  ret float %lane
}}
"""


def module_ir() -> str:
    """The six measured kernels (three classes, two widths) in one module."""
    parts = [vecmath.module_ir(["exp"]),
             "declare float @llvm.sqrt.f32(float)\n"]
    for group, bits in enumerate(WIDTHS):
        parts += [_elementwise(bits, group), _vecmath(bits, group), _reduce(bits, group)]
    parts += [f"attributes #{group} = {{ {_attrs(bits)} }}\n"
              for group, bits in enumerate(WIDTHS)]
    return "".join(parts)


def measure(t: Target) -> dict:
    """Time the kernels at both widths on target ``t``; the decision and the timings (µs
    per call of each class at each width)."""
    compiled = jit.compile_ir(module_ir(), target=t)
    P = ctypes.c_void_p
    rng = np.random.default_rng(0)
    ew = [rng.standard_normal(SIZES["elementwise"]).astype(np.float32) for _ in range(4)]
    ew[2] = np.abs(ew[2])  # (v >= 0)
    x = rng.standard_normal(SIZES["vecmath"]).astype(np.float32)
    y = np.empty_like(x)
    r = rng.standard_normal(SIZES["reduce"]).astype(np.float32)
    calls = {}
    for bits in WIDTHS:
        f = compiled.cfunc(f"ew_{bits}", None, P, P, P, P, ctypes.c_int64)
        calls["elementwise", bits] = (f, [a.ctypes.data for a in ew] + [ew[0].size])
        f = compiled.cfunc(f"vm_{bits}", None, P, P, ctypes.c_int64)
        calls["vecmath", bits] = (f, [x.ctypes.data, y.ctypes.data, x.size])
        f = compiled.cfunc(f"rd_{bits}", ctypes.c_float, P, ctypes.c_int64)
        calls["reduce", bits] = (f, [r.ctypes.data, r.size])
    best = {k: math.inf for k in calls}
    for f, args in calls.values():  # warm-up: first touches, caches
        f(*args)
    for _ in range(ROUNDS):
        for k, (f, args) in calls.items():
            start = time.perf_counter()
            for _ in range(REPS):
                f(*args)
            best[k] = min(best[k], (time.perf_counter() - start) / REPS)
    return choose(best)


def choose(seconds: dict) -> dict:
    """The decision from the best time of each (class, width): 512 bits unless the geometric
    mean of t512/t256 over the classes exceeds ``1 + MARGIN``; with the ratio and the
    timings in µs (what the file keeps)."""
    ratios = [seconds[c, 512] / seconds[c, 256] for c in CLASSES]
    ratio = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return {"bits": 256 if ratio > 1 + MARGIN else 512, "ratio": round(ratio, 4),
            **{f"{c}_us": {str(b): round(seconds[c, b] * 1e6, 2) for b in WIDTHS}
               for c in CLASSES}}


target.register_width_decider(decide)  # (see target.register_width_decider)
