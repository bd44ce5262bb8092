"""What this machine can do, measured: the rate of the time-stamp counter, the peak
multiply-add rate, copy bandwidth — the limits the profiler (``compiler.profile``) and the
benchmarks hold kernels against.

- :func:`tsc_hz`: ticks per second of ``llvm.readcyclecounter`` (``rdtsc``: a constant
  rate on the CPUs this runs on), against ``time.perf_counter`` over about 20 ms.
- :func:`peak_flops`: float32 FLOP/s of a loop of independent vector multiply-adds (12
  register accumulators of the target's widest vectors, so neither latency nor memory
  limits it; two FLOPs per lane), on one thread or on the backend's thread pool
  (``threads.py``). Without FMA instructions, a multiply and an add.
- :func:`copy_bandwidth`: bytes per second read plus written by numpy copying 64 MiB (one
  thread, out of cache).

Each is measured once per process, on first use (about 50 ms in all), never during a
normal compiled call.

Example::

    >>> from compiler.backends.llvm import machine
    >>> machine.peak_flops(threads=1) / 1e9          # doctest: +SKIP
    125.3
"""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np

from . import jit, target, threads
from .emit import Emitter

_lock = threading.Lock()
_cache: dict = {}
ACCUMULATORS = 12
PEAK_ITERS = 1 << 16  # loop iterations per thread and timed run (~4 ms at 100 GFLOP/s)


def _module() -> jit.Compiled:
    """``i64 @dg_tsc()``, and ``@dg_peak(ptr %ctx)`` running the multiply-add loop on the
    team (``ctx``: iterations, then a float to start from)."""
    with _lock:
        if "module" in _cache:
            return _cache["module"]
    t = target.base()
    lanes = t.vector_bits // 32
    vt = f"<{lanes} x float>"
    par = threads.find() is not None
    f = Emitter()
    f.label("entry")
    f.line("%iters = load i64, ptr %ctx")
    f.line("%xp = getelementptr inbounds i64, ptr %ctx, i64 1")
    f.line("%x = load float, ptr %xp")
    f.line(f"%xv0 = insertelement {vt} poison, float %x, i64 0")
    f.line(f"%xv = shufflevector {vt} %xv0, {vt} poison, <{lanes} x i32> zeroinitializer")
    with f.loop("%i", "%iters", block="loop", exit="done", flags="", next="%i.n",
                more="%more", carry=[(f"%a{a}", vt, "%xv") for a in range(ACCUMULATORS)]
                ) as loop:
        for a in range(ACCUMULATORS):
            if t.fma:
                f.line(f"%a{a}.n = call {vt} @llvm.fma.v{lanes}f32({vt} %a{a}, {vt} %xv, "
                       f"{vt} %xv)")
            else:
                f.line(f"%a{a}.m = fmul {vt} %a{a}, %xv")
                f.line(f"%a{a}.n = fadd {vt} %a{a}.m, %xv")
        loop.next = [f"%a{a}.n" for a in range(ACCUMULATORS)]
    total = "%a0.n"
    for a in range(1, ACCUMULATORS):
        f.line(f"%s{a} = fadd {vt} {total}, %a{a}.n")
        total = f"%s{a}"
    f.line(f"%lane = extractelement {vt} {total}, i64 0")
    f.line("%outp = getelementptr inbounds i64, ptr %ctx, i64 2")
    f.line("%slot = getelementptr inbounds float, ptr %outp, i64 %tid")
    f.line("store volatile float %lane, ptr %slot")
    f.line("ret void")
    run = ["define void @dg_peak(ptr %ctx) {", "entry:"]
    if par:
        run += [threads.split_call("dg_peak", 0)]
    else:
        run.append("  call void @dg_peak_blocks(ptr %ctx, i64 0, i64 1)")
    run += ["  ret void", "}", "",
            "define void @dg_peak_one(ptr %ctx) {", "entry:",
            "  call void @dg_peak_blocks(ptr %ctx, i64 0, i64 1)", "  ret void", "}", "",
            "define i64 @dg_tsc() {", "entry:",
            "  %t = call i64 @llvm.readcyclecounter()", "  ret i64 %t", "}", "",
            "declare i64 @llvm.readcyclecounter()",
            f"declare {vt} @llvm.fma.v{lanes}f32({vt}, {vt}, {vt})"]
    text = ((threads.DECLARATIONS if par else "")
            + f.function("define internal void @dg_peak_blocks(ptr %ctx, i64 %tid, i64 %nt)")
            + "\n".join(run) + "\n")
    compiled = jit.compile_ir(text)
    with _lock:
        _cache.setdefault("module", compiled)
        return _cache["module"]


def tsc() -> int:
    """The time-stamp counter now (what an instrumented driver records)."""
    return _function("dg_tsc", ctypes.c_int64)()


def _function(name: str, restype, *argtypes):
    key = ("fn", name)
    if key not in _cache:
        _cache[key] = _module().cfunc(name, restype, *argtypes)
    return _cache[key]


def tsc_hz() -> float:
    """Ticks per second of the time-stamp counter (measured once per process)."""
    if "tsc_hz" not in _cache:
        read = _function("dg_tsc", ctypes.c_int64)
        best = None
        for _ in range(3):  # (the closest pair of readings: the least disturbed)
            t0, c0 = time.perf_counter(), read()
            time.sleep(0.005)
            t1, c1 = time.perf_counter(), read()
            rate = (c1 - c0) / (t1 - t0)
            best = rate if best is None else max(best, rate) if c1 > c0 else best
        _cache["tsc_hz"] = float(best)
    return _cache["tsc_hz"]


def team_threads() -> int:
    """Threads the backend's big kernels run on (the thread pool, or one)."""
    return max(threads.team(), 1) if threads.find() is not None else 1


def peak_flops(threads: int | None = None) -> float:
    """Peak float32 FLOP/s (see the module docstring): on one thread with ``threads=1``,
    else on the backend's team (``team_threads()``)."""
    one = threads == 1 or team_threads() == 1
    key = ("peak", one)
    if key not in _cache:
        fn = _function("dg_peak_one" if one else "dg_peak", None, ctypes.c_void_p)
        n = 1 if one else team_threads()
        ctx = np.zeros(2 + max(n, 1), np.int64)
        ctx[0] = PEAK_ITERS
        ctx[1:2] = np.array([1.0000001, 0], np.float32).view(np.int64)
        fn(ctx.ctypes.data)  # (warm-up: the team starting, the clock rising)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            fn(ctx.ctypes.data)
            best = min(best, time.perf_counter() - t)
        lanes = target.base().vector_bits // 32
        _cache[key] = PEAK_ITERS * ACCUMULATORS * lanes * 2 * n / best
    return _cache[key]


def copy_bandwidth(n_bytes: int = 64 * 2**20) -> float:
    """Bytes per second read plus written by numpy copying ``n_bytes`` (one thread)."""
    if "copy" not in _cache:
        src = np.ones(n_bytes // 4, np.float32)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t)
        _cache["copy"] = 2 * n_bytes / best
    return _cache["copy"]
