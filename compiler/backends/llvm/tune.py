"""Which kernel a matmul shape gets: numpy's BLAS or the generated one (``gemm.py``), by
measurement, once per machine.

:func:`choose` answers ``"blas"`` or ``"generated"`` for (dtype, M, N, K, ta, tb) — the
product of one batch entry: every entry of a batched matmul is one call of the same routine,
so the batch does not change the answer. The generated kernel is taken without measuring
when BLAS is absent (``blas.find``, ``DYNGRAD_BLAS=0``), when ``K = 0`` or C is empty, and
below ``GENERATED_BELOW`` multiply-adds (where BLAS's call overhead alone loses). Otherwise
both run on scratch operands of the shape, alternately, for about ``BUDGET_S`` seconds
(products above ``WORK_CAP`` multiply-adds are timed on their first rows only, which keeps
a decision to a few milliseconds); the faster minimum wins, and a tie within
``TIE_MARGIN`` goes to the generated kernel (its results do not depend on thread counts).

Decisions are kept for the process and in ``matmul-choices.json`` in the compiled-code
cache's directory (``cache.directory()``; not with ``DYNGRAD_CACHE=0``), under a key naming
the CPU (name and features), the BLAS library and the thread settings, so a later process
takes the same kernels without measuring: results stay reproducible on one machine. The
file is replaced atomically; one that cannot be read or parsed is ignored (and rewritten at
the next decision). A forked child whose threads are off (``threads.py``) decides for itself
but does not write its decisions: its timings are of one thread.

Note (one thread pool at a time): BLAS's pool and the backend's own (``threads.py``)
each keep their threads spinning for a while after a parallel region; on a machine with as
many cores as threads, a graph alternating BLAS calls and big elementwise kernels then runs
each pool's work against the other's spinning threads. ``benchmarks/threads.py`` measured it
on the 2-core Zen machine (three runs, other jobs on the machine): a 512x1024x1024 matmul
then elementwise kernels took 15–57 ms with both pools at two threads, 5–36 ms with BLAS's
pool alone and 3–16 ms with the generated kernel on the team. So
when the team is on and BLAS's pool has more than one thread, the generated kernel (on the
team) is taken without measuring; BLAS is measured only when its pool is one thread
(``OPENBLAS_NUM_THREADS=1``, as the benchmarks and examples set) or the team is off
(``DYNGRAD_THREADS=1``, or no pool on the platform).

``DYNGRAD_MATMUL=blas|generated|measure`` (default ``measure``) forces a path — BLAS still
only where it can run — for tests and debugging.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np

from . import blas, choices, gemm, jit, target, threads
from .emit import Emitter

GENERATED_BELOW = 32 * 32 * 32  # m·n·k under which the generated kernel is taken unmeasured
WORK_CAP = 1 << 23  # m·n·k timed at most (larger products: their first rows)
BUDGET_S = 0.004  # seconds of timing per shape, after one warm-up run of each kernel
TIE_MARGIN = 0.03  # BLAS must be this much faster to be chosen
MODES = ("measure", "blas", "generated")
FILE = "matmul-choices.json"

_decided: dict[tuple, str] = {}  # (machine key, shape key) -> "blas" | "generated"
_lock = threading.Lock()


_timers: dict = {}  # (kernel name, Blas) -> the compiled timing module
_SUFFIX = {"float32": "f32", "float64": "f64"}
_LL = {"float32": "float", "float64": "double"}


def mode() -> str:
    """``DYNGRAD_MATMUL``, checked."""
    return choices.setting("DYNGRAD_MATMUL", MODES)


def choose(dtype_name: str, m: int, n: int, k: int, ta: bool, tb: bool) -> str:
    """``"blas"`` or ``"generated"`` for one product ``C[m x n] = op(A) @ op(B)`` (see the
    module docstring). Example: ``choose("float32", 128, 256, 784, False, True)``. (Sizes
    of a symbolic variant, ``compiler.dims.Dim``, are decided by their numbers.)"""
    m, n, k = int(m), int(n), int(k)
    forced = mode()
    if blas.find() is None or k == 0 or m * n == 0 or forced == "generated":
        return "generated"
    if forced == "blas":
        return "blas"
    if m * n * k < GENERATED_BELOW:
        return "generated"
    if threads.find() is not None and blas.pool_threads(blas.find()) > 1:
        return "generated"  # (two pools would fight: see the Note above)
    key = (machine_key(), shape_key(dtype_name, m, n, k, ta, tb))
    with _lock:
        choice = _decided.get(key)
        if choice is None:
            entry = _load().get(key[0], {}).get(key[1])
            choice = entry.get("choice") if isinstance(entry, dict) else None
            if choice not in ("blas", "generated"):
                t = measure(dtype_name, m, n, k, ta, tb)
                choice = t["choice"]
                if threads.team():  # (a forked child's timings are of one thread)
                    choice = _store(key, t)["choice"]  # (one stored meanwhile stands)
            _decided[key] = choice
    return choice


def shape_key(dtype_name: str, m: int, n: int, k: int, ta: bool, tb: bool) -> str:
    return f"{_SUFFIX[dtype_name]} {'t' if ta else 'n'}{'t' if tb else 'n'} {m}x{n}x{k}"


def machine_key() -> str:
    """The CPU, the generated kernel's version, the BLAS library and the thread settings the
    timings hold for."""
    b = blas.find()
    env = ",".join(f"{v}={os.environ.get(v, '')}" for v in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DYNGRAD_THREADS"))
    return (f"{target.current().machine_key()} gemm {gemm.version()} "
            f"{os.path.basename(b.path) if b else '-'} cpus={os.cpu_count()} {env}")


# ------------------------------------------------------------------ timing


def _timing_module(dtype_name: str) -> jit.Compiled:
    """Both kernels of a dtype behind ``void @dg_time_<gen|blas>_<f32|f64>(ptr %args)``,
    ``args`` the i64s (A, B, C, M, N, K, ta, tb, lda, ldb, reps): the product run ``reps``
    times (the BLAS entry only when BLAS is found). The generated kernel is
    ``gemm.library``'s, the very code graphs' modules call."""
    gemm.library(_LL[dtype_name])
    b = blas.find()
    key = (gemm.name(_LL[dtype_name]), b, target.current())
    if key in _timers:
        return _timers[key]
    parts = []
    for dt, s in [(dtype_name, _SUFFIX[dtype_name])]:
        ty = _LL[dt]
        parts.append(gemm.declaration(ty))
        for path in ("gen", "blas") if b else ("gen",):
            f = Emitter()
            f.label("entry")
            names = ("A", "B", "C", "M", "N", "K", "ta", "tb", "lda", "ldb", "reps")
            for i, a in enumerate(names):
                kind = "ptr" if a in ("A", "B", "C") else "i64"
                f.line(f"%{a}.p = getelementptr inbounds i64, ptr %args, i64 {i}")
                f.line(f"%{a} = load {kind}, ptr %{a}.p")
            with f.loop("%r", "%reps", block="loop", exit="exit", flags="", more="%more"):
                if path == "gen":  # A[i, k] at i·rs_a + k·cs_a: (lda, 1), or (1, lda) when ta
                    for line in ("%ta1 = icmp ne i64 %ta, 0", "%tb1 = icmp ne i64 %tb, 0",
                                 "%rsa = select i1 %ta1, i64 1, i64 %lda",
                                 "%csa = select i1 %ta1, i64 %lda, i64 1",
                                 "%rsb = select i1 %tb1, i64 1, i64 %ldb",
                                 "%csb = select i1 %tb1, i64 %ldb, i64 1"):
                        f.line(line)
                    f.lines.append(gemm.call(ty, "%A", "%rsa", "%csa", "%B", "%rsb", "%csb",
                                             "%C", "%M", "%N", "%K"))
                else:
                    parts.append(blas.declaration(b, dt))
                    f.line("%ta32 = trunc i64 %ta to i32")
                    f.line("%tb32 = trunc i64 %tb to i32")
                    f.line(f"%opa = add i32 %ta32, {blas.NO_TRANS}")
                    f.line(f"%opb = add i32 %tb32, {blas.NO_TRANS}")
                    f.line(f"call void @{b.gemm(dt)}(i32 {blas.ROW_MAJOR}, i32 %opa, i32 %opb, "
                           f"i64 %M, i64 %N, i64 %K, {ty} 1.0, ptr %A, i64 %lda, ptr %B, "
                           f"i64 %ldb, {ty} 0.0, ptr %C, i64 %N)")
            f.line("ret void")
            parts.append(f.function(f"define void @dg_time_{path}_{s}(ptr %args)"))
    _timers[key] = jit.compile_ir("".join(parts))  # (small, and needed only to measure)
    return _timers[key]


def product(path: str, a: np.ndarray, b: np.ndarray, ta: bool = False, tb: bool = False,
            out: np.ndarray | None = None, rows: int | None = None, reps: int = 1) -> np.ndarray:
    """``op(a) @ op(b)`` by one kernel (``path``: "blas" or "generated"), 2-d C-contiguous
    operands as the matmul primitive takes them; with ``rows``, only C's first rows (``out``
    has them); run ``reps`` times. Tests and benchmarks call it; :func:`measure` times it.
    Example: ``product("generated", x, w, tb=True)`` is ``x @ w.T``."""
    if path not in ("blas", "generated"):
        raise ValueError(f"tune.product: path {path!r} (expected 'blas' or 'generated')")
    if path == "blas" and blas.find() is None:
        raise RuntimeError("tune.product: no BLAS (numpy's OpenBLAS not found, or "
                           "DYNGRAD_BLAS=0)")
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.name not in _SUFFIX \
            or not (a.flags.c_contiguous and b.flags.c_contiguous):
        raise ValueError(f"tune.product: 2-d C-contiguous float32/float64 operands of one "
                         f"dtype, not {a.dtype}{a.shape} and {b.dtype}{b.shape}")
    m, k = a.shape[::-1] if ta else a.shape
    n, kb = b.shape if tb else b.shape[::-1]
    if k != kb:
        raise ValueError(f"tune.product: inner dimensions differ: op(a) is {m}x{k}, op(b) is "
                         f"{kb}x{n}")
    rows = m if rows is None else rows
    out = np.empty((rows, n), a.dtype) if out is None else out
    if out.shape != (rows, n) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"tune.product: out must be a C-contiguous {a.dtype} {(rows, n)}")
    fn = _timing_module(a.dtype.name).cfunc(f"dg_time_{'gen' if path == 'generated' else 'blas'}_"
                                f"{_SUFFIX[a.dtype.name]}", None, ctypes.c_void_p)
    if rows * n:
        fn((ctypes.c_int64 * 11)(a.ctypes.data, b.ctypes.data, out.ctypes.data, rows, n, k,
                                 int(ta), int(tb), m if ta else k, k if tb else n, reps))
    return out


def measure(dtype_name: str, m: int, n: int, k: int, ta: bool, tb: bool) -> dict:
    """Time both kernels on this product (BLAS must be present); returns the seconds per
    product of each (``"blas"``, ``"generated"``), the rows timed and the ``"choice"``."""
    rows = m if m * n * k <= WORK_CAP else min(m, max(2 * gemm.MR, WORK_CAP // (n * k)))
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype_name)
    a = rng.standard_normal((k, m) if ta else (rows, k)).astype(dt)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
    c = np.empty((rows, n), dt)
    reps = max(1, (1 << 21) // max(rows * n * k, 1))  # a timed call: 2M multiply-adds or more
    paths = ("generated", "blas")
    for p in paths:  # warm-up: first touches, BLAS's threads starting
        product(p, a, b, ta, tb, c, rows)
    best = {}
    start = time.perf_counter()
    while True:
        for p in paths:
            t = time.perf_counter()
            product(p, a, b, ta, tb, c, rows, reps)
            best[p] = min(best.get(p, float("inf")), (time.perf_counter() - t) / reps)
        if time.perf_counter() - start > BUDGET_S:
            break
    result = {p: best[p] * m / rows for p in paths}
    result["rows"] = rows
    result["choice"] = "blas" if best["blas"] * (1 + TIE_MARGIN) < best["generated"] \
        else "generated"
    return result


# ------------------------------------------------------------------ the file


def _load() -> dict:
    """The stored decisions (``{machine key: {shape key: entry}}``), or {}."""
    return choices.load(FILE)


def _store(key: tuple, timing: dict) -> dict:
    """Add one decision to the file (``choices.store``: merged, atomic) unless another
    process stored one for the shape while this one measured; the entry that stands."""
    return choices.store(FILE, key[0], key[1], {
        "choice": timing["choice"], "blas_us": round(timing["blas"] * 1e6, 2),
        "generated_us": round(timing["generated"] * 1e6, 2)}, keep=("blas", "generated"))


def forget(disk: bool = False) -> None:
    """Forget this process's decisions (and, with ``disk``, remove the file)."""
    with _lock:
        _decided.clear()
    if disk:
        choices.remove(FILE)
