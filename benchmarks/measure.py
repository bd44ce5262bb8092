"""How the suite measures: alternating timed samples, agreement, peak memory, bounds.

Note (alternation): every mode of a workload is timed in the same loop, one sample of each
in turn, so a change of machine load during the run hits all modes alike; a sample is
``inner`` consecutive calls (a whole number of passes over the workload's inputs, so a
sample of a cycling workload always holds the same mix), and the figure is the median over
samples with the interquartile range as the spread.

Note (memory): ``tracemalloc`` sees Python objects and numpy's buffers (numpy registers
every data allocation with it, in its own domain), which covers dyngrad's tensors, the
compiled variants' constants and arenas and the numpy steps. It does not see PyTorch's
allocator, LLVM's code and JIT memory, or the BLAS library's workspace, so no memory is
reported for PyTorch modes. The figure is the peak of traced memory during two passes of
steady-state steps of a freshly built instance (the one checked against eager), counting
everything it holds (parameters, optimizer state, inputs, cached variants) plus the step's
temporaries.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Runner:
    """One mode of one workload: ``fn`` called on ``calls`` in turn."""

    fn: Callable
    calls: list
    compiled: Any = None  # the CompiledFunction, for compiled dyngrad modes
    position: int = 0
    inner: int = 1
    times: list = field(default_factory=list)  # µs per call, one entry per sample

    def run(self, n: int):
        out = None
        for _ in range(n):
            out = self.fn(*self.calls[self.position])
            self.position = (self.position + 1) % len(self.calls)
        return out

    def sample(self) -> None:
        t = time.perf_counter()
        self.run(self.inner)
        self.times.append((time.perf_counter() - t) / self.inner * 1e6)


def as_array(out) -> np.ndarray:
    """A step's output as a float64 array (dyngrad and PyTorch tensors, JAX and numpy
    arrays, Python numbers)."""
    if hasattr(out, "detach"):
        out = out.detach()
    if hasattr(out, "numpy"):
        out = out.numpy()
    return np.asarray(out, np.float64)


def max_rel_diff(ref: list, got: list) -> float:
    """Largest |a − b| / |a| over paired outputs (|a| floored at 1e-30)."""
    worst = 0.0
    for a, b in zip(ref, got):
        a, b = as_array(a), as_array(b)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30),
                                        initial=0.0)))
    return worst


def calibrate(runner: Runner, target_s: float, cap: int = 20000) -> None:
    """Set ``inner``: whole passes over the inputs, about ``target_s`` per sample."""
    cycle = len(runner.calls)
    t = time.perf_counter()
    runner.run(cycle)
    per_call = (time.perf_counter() - t) / cycle
    passes = max(1, int(target_s / max(per_call * cycle, 1e-9)))
    runner.inner = min(passes * cycle, max(cap // cycle, 1) * cycle)


SETTLE_S = 0.004  # a pause between two modes' samples: the last one's idle threads (dyngrad's
#                  pool, OpenBLAS's, PyTorch's OpenMP team) stop spinning before the next runs


def time_alternating(runners: dict, samples: int, target_s: float) -> dict:
    """Median µs per call of each runner, the modes taking turns sample by sample (with
    ``SETTLE_S`` between them)."""
    for r in runners.values():
        calibrate(r, target_s)
    for _ in range(samples):
        for r in runners.values():
            time.sleep(SETTLE_S)
            r.sample()
    return {m: summary(r.times, r.inner) for m, r in runners.items()}


def summary(times: list, inner: int) -> dict:
    """Median, quartiles and IQR (µs per call) of one mode's samples."""
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"us": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "samples": len(times), "calls_per_sample": inner}


def median_us(fn: Callable, n: int) -> float:
    """Median µs of ``n`` calls of ``fn`` (after one call to warm up)."""
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


class TracedMemory:
    """Traced memory (MB) of what runs inside the block: ``live`` at :meth:`steady` (what
    the instance holds once built and warmed up) and ``peak`` after it (that plus the
    steady-state steps' temporaries). Off when ``on`` is False."""

    def __init__(self, on: bool = True) -> None:
        self.on, self.result = on, {}

    def __enter__(self) -> TracedMemory:
        if self.on:
            tracemalloc.start()
            self.base = tracemalloc.get_traced_memory()[0]
        return self

    def steady(self) -> None:
        if self.on:
            gc.collect()  # (what building left for the cycle collector is not held)
            self.result["live_mb"] = (tracemalloc.get_traced_memory()[0] - self.base) / 2**20
            tracemalloc.reset_peak()

    def __exit__(self, *exc) -> None:
        if self.on:
            if "live_mb" in self.result:
                self.result["peak_mb"] = (tracemalloc.get_traced_memory()[1] - self.base) \
                    / 2**20
            tracemalloc.stop()


# ------------------------------------------------------------------ the machine's limits
def copy_bandwidth_gbps(n_bytes: int = 64 * 2**20, reps: int = 10) -> float:
    """GB/s of numpy copying a large float32 array (bytes read + bytes written)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    t = median_us(lambda: np.copyto(dst, src), reps) * 1e-6
    return 2 * n_bytes / t / 1e9


def matmul_gflops(n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of numpy's float32 n×n matmul (numpy's BLAS, on the threads it is given)."""
    r = np.random.default_rng(0)
    a, b = (r.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty((n, n), np.float32)
    t = median_us(lambda: np.matmul(a, b, out=out), reps) * 1e-6
    return 2 * n**3 / t / 1e9


_BANDWIDTH: list = []


def step_flops(matmuls: list) -> float:
    """FLOPs of a training step's matmuls, each ``(M, K, N, needs_dx)`` as in
    :func:`step_bound_us`: the forward product, the weight gradient, and the input gradient
    when the input needs one (2·M·K·N each)."""
    return sum(2 * m * k * n * (3 if needs_dx else 2) for m, k, n, needs_dx in matmuls)


def step_bound_us(matmuls: list, n_params: int = 0, passes: int = 0, reps: int = 20) -> float:
    """µs a training step cannot beat on this machine: its matmuls, each ``(M, K, N,
    needs_dx)`` for ``x[M,K] @ w[N,K]ᵀ``, timed in numpy with their backward (``g @ w`` when
    the input needs a gradient, ``gᵀ @ x``), plus the optimizer's traffic — ``passes``
    float32 arrays of ``n_params`` read or written — at numpy's copy bandwidth."""
    r = np.random.default_rng(0)
    ops = []
    for m, k, n, needs_dx in matmuls:
        x, w, g = (r.standard_normal(s).astype(np.float32) for s in ((m, k), (n, k), (m, n)))
        ops.append((x, w, g, needs_dx))

    def run():
        for x, w, g, needs_dx in ops:
            x @ w.T
            if needs_dx:
                g @ w
            g.T @ x
    if not _BANDWIDTH:
        _BANDWIDTH.append(copy_bandwidth_gbps(reps=5))
    return median_us(run, reps) + passes * n_params * 4 / (_BANDWIDTH[0] * 1e9) * 1e6
