"""Running the suite: each workload in every mode, side by side in one process.

For a workload, in order: its first calls in fresh processes (cold, then from the disk
cache: :mod:`benchmarks.firstcall`); every mode built from the same seed and checked
against eager over its warm-up and two more passes over the inputs (compared over more
calls when the workload asks, for a goal; with ``tracemalloc`` on, for its memory); the
modes timed together, alternating sample by sample (:mod:`benchmarks.measure`); the
compiled modes' variants, fallbacks and arenas; the workload's bound on this machine; and
its goals (:mod:`benchmarks.goals`), judged from those figures and reported, never failing
the run. A mode that raises is recorded (``ran: False`` and the error) and the suite goes
on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import compiler
import dyngrad as dg
from dyngrad import func

from . import goals, jax_mirror, measure, torch_mirror
from .firstcall import warm_calls
from .measure import Runner
from .progress import Progress
from .workloads import Workload, jacobian_problem, jacobian_sizes, sweep_widths, sweep_workload

ROOT = Path(__file__).resolve().parents[1]
COMPILED = ("interp", "llvm")
EXTERNAL = ("torch", "torch.compile", "jax")  # other frameworks: no memory figure
COMPILERS = (*COMPILED, "torch.compile", "jax")  # modes with a first-call figure
# max relative difference of a mode's outputs from eager's over its first calls; the
# interpreter runs eager's numpy calls (bit for bit), the others their own kernels
TOLERANCE = {"interp": 1e-6, "llvm": 1e-4, "numpy": 1e-4, "torch": 1e-3,
             "torch.compile": 1e-3, "jax": 1e-3}
JACOBIAN_TOLERANCE = 1e-5  # max |J − J_ref| / max |J_ref|, J_ref in float64


class Options:
    """What to run and how long to measure."""

    def __init__(self, quick: bool, torch: bool = True, torch_compile: bool = True,
                 jax: bool = True, samples: int | None = None, threads: int | None = None,
                 only: list | None = None):
        self.quick = quick
        self.only = only  # the modes to run besides eager (None: every mode available)
        self.threads = threads or default_threads()
        set_threads(self.threads)  # (before torch and jax are imported)
        self.work = Path(tempfile.mkdtemp(prefix="dyngrad-bench-"))  # cache directories
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.work / "inductor")  # (before torch)
        self.torch = torch and torch_mirror.available()
        self.torch_compile = self.torch and torch_compile and not quick
        self.jax = jax and jax_mirror.available()
        self.samples = samples or (5 if quick else 21)
        self.target_s = 0.004 if quick else 0.02  # per sample and mode
        self.first_call_repeats = 1 if quick else 3  # fresh processes per figure

    def modes(self, wl: Workload) -> list[str]:
        """The modes ``wl`` runs in, eager first (the reference); with ``only`` (``--modes``)
        eager and those."""
        modes = ["eager", *COMPILED]
        if wl.numpy is not None:
            modes.append("numpy")
        if self.torch:
            modes.append("torch")
        if self.torch_compile:
            modes.append("torch.compile")
        if self.jax:
            modes.append("jax")
        return [m for m in modes if self.only is None or m == "eager" or m in self.only]


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int) -> None:
    """Every framework on ``n`` threads: numpy's BLAS (its pool, now), dyngrad's kernels
    (the backend's pool), PyTorch and XLA (when they are imported: the mirrors read
    ``THREADS``), and the fresh processes of the first calls (the environment)."""
    from compiler.backends.llvm import blas, threads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if blas.find() is not None:
        blas.set_pool_threads(blas.find(), n)
    threads.set_team(n)
    torch_mirror.THREADS[0] = jax_mirror.THREADS[0] = n


# ------------------------------------------------------------------ one workload
def build(wl: Workload, mode: str, quick: bool) -> Runner:
    """A fresh instance of ``wl`` in ``mode`` (same seed, so the same weights and data)."""
    inst = wl.build(quick)
    if mode == "eager":
        return Runner(inst.runnable(), inst.calls)
    if mode in COMPILED:
        cf = compiler.compile(inst.step, backend=mode)
        return Runner(inst.runnable(cf), inst.calls, cf)
    if mode == "numpy":
        return Runner(*wl.numpy(inst))
    if mode == "jax":
        return Runner(*jax_mirror.MIRRORS[wl.kind](inst))
    step, calls = torch_mirror.MIRRORS[wl.kind](inst)
    if mode == "torch.compile":
        step = torch_mirror.compiled(step)
    return Runner(step, calls)


def float64_reference(wl: Workload, quick: bool, n: int) -> list:
    """The eager step's first ``n`` outputs with the model, the inputs and so the whole step
    in float64 (the same seed: the same weights and data, rounded to float32 once)."""
    inst = wl.build(quick)
    inst.model.double()
    calls = [tuple(a.double() if isinstance(a, dg.Tensor) and a.dtype == dg.float32 else a
                   for a in c) for c in inst.calls]
    run = inst.runnable()
    return [measure.as_array(run(*calls[k % len(calls)])) for k in range(n)]


def ulp_reference(wl: Workload, quick: bool, n: int) -> list:
    """The eager step's first ``n`` outputs with every parameter moved by one ulp (toward
    +inf) after the first step: what one rounding does to the steps that follow (a step
    restored from disk runs compiled from its first call)."""
    inst = wl.build(quick)
    run = inst.runnable()
    out = []
    for k in range(n):
        out.append(measure.as_array(run(*inst.calls[k % len(inst.calls)])))
        if k == 0:
            for p in inst.model.parameters():
                p._data[...] = np.nextafter(p._data, np.inf)
    return out


def first_calls_fresh(name: str, modes: list, cache_dir: Path, quick: bool,
                      repeats: int) -> dict:
    """Per compiled mode: warm-up ms in a fresh process with an empty cache ('cold') and in
    one loading the modules a cold process left in ``cache_dir`` ('disk'; the LLVM backend
    only); the median of ``repeats`` processes each (single runs scatter on a busy machine),
    with every run kept."""
    def run(mode, directory):
        env = dict(os.environ, DYNGRAD_CACHE_DIR=str(directory), PYTHONPATH=str(ROOT))
        args = [sys.executable, "-m", "benchmarks.firstcall", name, "--modes", mode]
        proc = subprocess.run(args + (["--quick"] if quick else []), env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"first calls of {name} ({mode}) in a new process failed: "
                               + proc.stderr.strip().splitlines()[-1])
        return json.loads(proc.stdout.strip().splitlines()[-1])[mode]

    def median(runs):
        runs = sorted(runs, key=lambda r: r["ms"])
        return {**runs[len(runs) // 2], "all_ms": [r["ms"] for r in runs]}
    out = {}
    for mode in modes:
        colds = []
        for i in range(repeats):  # the last one leaves its modules in cache_dir
            directory = cache_dir if i == repeats - 1 else cache_dir / f"{mode}-cold{i}"
            colds.append(run(mode, directory))
            if directory != cache_dir:
                shutil.rmtree(directory, ignore_errors=True)
        out[mode] = {"cold": median(colds)}
        if mode == "llvm":
            out[mode]["disk"] = median([run(mode, cache_dir) for _ in range(repeats)])
    return out


def run_workload(wl: Workload, opts: Options, progress: Progress,
                 fresh_processes: bool = True, memory: bool = True,
                 modes: list | None = None) -> dict:
    """Every mode of ``wl``: checked, timed, counted and measured (see the module doc)."""
    modes = modes or opts.modes(wl)
    inst = wl.build(opts.quick)
    n_inputs = len(inst.calls)
    res = {"title": wl.title, "inputs": [[list(a.shape) for a in c if hasattr(a, "shape")]
                                         for c in inst.calls], "modes": {}}
    del inst
    cache_dir = opts.work / wl.name.replace(" ", "_")
    cache_dir.mkdir()
    compiled_modes = [m for m in modes if m in COMPILED]
    fresh = {}
    if fresh_processes and compiled_modes:
        progress.phase(f"{wl.name}: first calls in new processes")
        try:
            fresh = first_calls_fresh(wl.name, compiled_modes, cache_dir, opts.quick,
                                      opts.first_call_repeats)
        except Exception as exc:  # reported; the in-process figures still stand
            res["first_calls_error"] = str(exc)
    os.environ["DYNGRAD_CACHE_DIR"] = str(cache_dir)  # this process loads what they made

    warm = warm_calls(n_inputs)
    n_check = warm + 2 * n_inputs  # the warm-up and two passes of steady state (judged)
    n_run = max(n_check, wl.compared_calls)  # (the rest compared for a goal, not judged)
    res["compared_calls"] = n_run
    runners, ref, ref64 = {}, None, None
    for mode in modes:
        progress.phase(f"{wl.name}: {mode}: first calls and agreement with eager")
        entry = res["modes"][mode] = {"ran": False}
        try:
            if mode == "torch.compile":
                torch_mirror.reset_compiler()
            # memory is traced in this same run (not while timing; it slows Python down)
            with warnings.catch_warnings(), \
                    measure.TracedMemory(memory and mode not in EXTERNAL) as mem:
                warnings.simplefilter("ignore")  # fallbacks are counted below
                t = time.perf_counter()
                r = build(wl, mode, opts.quick)
                outs = [r.run(1) for _ in range(warm)]
                warm_ms = (time.perf_counter() - t) * 1e3
                mem.steady()
                outs += [r.run(1) for _ in range(n_run - warm)]
            outs = [measure.as_array(o) for o in outs]
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=-3)
            continue
        entry.update(mem.result)
        if mode == "eager":
            ref = outs
            if wl.reference64 and n_run > n_check:  # (how far float32 alone moves eager)
                progress.phase(f"{wl.name}: eager in float64 (the rounding reference)")
                ref64 = float64_reference(wl, opts.quick, n_run)
                res["float32_drift_per_call"] = [measure.max_rel_diff([a], [b])
                                                 for a, b in zip(ref64, ref)]
                res["float32_drift"] = max(res["float32_drift_per_call"])
            if wl.reference_ulp and n_run > n_check:  # (how far one rounding moves eager)
                progress.phase(f"{wl.name}: eager moved by one ulp (the rounding reference)")
                res["ulp_drift_per_call"] = [measure.max_rel_diff([a], [b]) for a, b in
                                             zip(ulp_reference(wl, opts.quick, n_run), ref)]
                res["ulp_drift"] = max(res["ulp_drift_per_call"])
        elif ref is not None:
            d = measure.max_rel_diff(ref[:n_check], outs[:n_check])
            tol = wl.tolerance.get(mode, TOLERANCE[mode])  # (None: not judged; why in
            entry.update(max_rel_diff=d, tolerance=tol,    #  wl.tolerance_why)
                         agreed=None if tol is None else bool(d <= tol))
            if n_run > n_check:
                per_call = [measure.max_rel_diff([a], [b]) for a, b in zip(ref, outs)]
                entry.update(rel_diff_per_call=per_call, max_rel_diff_all=max(per_call))
                if "ulp_drift" in res:
                    entry.update(vs_ulp=max(per_call) / max(res["ulp_drift"],
                                                            goals.F32_ROUNDING))
                if "float32_drift" in res:  # as far from float64 as eager is, or farther?
                    d64 = max(measure.max_rel_diff([a], [b]) for a, b in zip(ref64, outs))
                    entry.update(max_rel_diff_f64=d64,
                                 vs_float64=d64 / max(res["float32_drift"], 1e-30))
        if mode == "torch.compile":
            entry.update(torch_mirror.compile_counts())
        if mode in fresh:
            entry["first_cold_ms"] = fresh[mode]["cold"]["ms"]
            entry["first_calls"] = fresh[mode]  # every process's figures and cache counters
            if "disk" in fresh[mode]:
                entry["first_disk_ms"] = fresh[mode]["disk"]["ms"]
        elif mode in COMPILERS and not mem.on:
            entry["first_cold_ms"] = warm_ms  # in this process, with an empty cache dir
        entry["ran"] = True
        runners[mode] = r

    progress.phase(f"{wl.name}: timing {', '.join(runners)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = measure.time_alternating(runners, opts.samples, opts.target_s)
    eager_us = times["eager"]["us"] if "eager" in times else None
    for mode, t in times.items():
        entry = res["modes"][mode]
        entry.update(t)
        if eager_us:
            entry["speedup"] = eager_us / t["us"]
        cf = runners[mode].compiled
        if cf is not None:
            entry.update(variants=len(cf.variants), fallbacks=len(cf.fallbacks),
                         fallback_reasons=list(dict.fromkeys(cf.fallbacks)),
                         recompiles=len(cf.recompiles),
                         compiled_calls=sum(v.calls for v in cf.variants),
                         eager_reason=cf.eager_reason, **arena(cf))
        elif mode == "jax":
            entry["variants"] = jax_mirror.variants(runners[mode].fn)
    runners.clear()

    for entry in res["modes"].values():  # the compile: the warm-up less its steps' own time
        for when in ("cold", "disk"):  # (each of the warm-up's calls at the steady step's)
            if f"first_{when}_ms" in entry and "us" in entry:
                entry[f"compile_{when}_ms"] = entry[f"first_{when}_ms"] - \
                    warm * entry["us"] / 1e3
    if wl.flops is not None:  # the FLOP floor: the step's matmuls at the measured peak
        from compiler.backends.llvm import machine
        res["flops"] = wl.flops(opts.quick)
        res["floor_us"] = res["flops"] / machine.peak_flops() * 1e6
        for entry in res["modes"].values():
            if "us" in entry:
                entry["x_floor"] = entry["us"] / res["floor_us"]
    if wl.bound is not None:
        progress.phase(f"{wl.name}: bound")
        res["bound_us"] = wl.bound(opts.quick)
        res["bound_how"] = wl.bound_how
        for entry in res["modes"].values():
            if "us" in entry:
                entry["x_bound"] = entry["us"] / res["bound_us"]
    if wl.tolerance_why:
        res["tolerance_why"] = wl.tolerance_why
    if wl.goals:
        res["goals"] = [g.judge(res["modes"]) for g in wl.goals]
    return res


def arena(cf) -> dict:
    """``cf``'s variants' arenas: the largest (MB), and the largest ratio of a variant's
    arena to eager's peak of the same graph's intermediates (the memory plan's own figures);
    nothing when no variant runs from an arena (the interpreter, and hybrid plans, whose
    numpy kernels allocate)."""
    plans = [v.memory for v in cf.variants if v.memory is not None
             and isinstance(v.memory.arena_bytes, int) and v.memory.eager_peak_bytes]
    if not plans:
        return {}
    return {"arena_mb": max(m.arena_bytes for m in plans) / 2**20,
            "arena_vs_eager": max(m.arena_bytes / m.eager_peak_bytes for m in plans)}


# ------------------------------------------------------------------ W6
def _probe_compiled(kind: str, f, x, jac) -> dict:
    """Whether ``compile`` can run ``func.jacfwd``/``jacrev`` (the LLVM backend): a
    variant must have served a call, and agree with the reference Jacobian."""
    cf = compiler.compile(getattr(func, kind)(f), backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [cf(x) for _ in range(4)][-1]
    calls = sum(v.calls for v in cf.variants)
    if calls == 0:
        reason = cf.eager_reason or (cf.fallbacks[-1] if cf.fallbacks else "no variant ran")
        return {"supported": False, "reason": reason}
    d = _scaled_diff(jac, out)
    return {"supported": True, "max_scaled_diff": d, "agreed": bool(d <= JACOBIAN_TOLERANCE)}


def _scaled_diff(jac, out) -> float:
    return float(abs(measure.as_array(out) - jac).max() / abs(jac).max())


KINDS = ("jacfwd", "jacrev")


def run_jacobians(opts: Options, progress: Progress) -> dict:
    """W6: µs per Jacobian of tanh(W x) by jacfwd and by jacrev over a grid of (n, m)."""
    sizes = jacobian_sizes(opts.quick)
    f, x, _, jac = jacobian_problem(sizes[0], sizes[-1])
    progress.phase("W6: can the compiler trace jacfwd / jacrev?")
    compiled = {k: _probe_compiled(k, f, x, jac) for k in KINDS}
    points = []
    for n in sizes:
        for m in sizes:
            progress.phase(f"W6: n={n}, m={m}")
            f, x, w, jac = jacobian_problem(n, m)
            runners = {k: Runner(getattr(func, k)(f), [(x,)]) for k in KINDS}
            for k in KINDS:
                if compiled[k]["supported"]:
                    cf = compiler.compile(getattr(func, k)(f), backend="llvm")
                    runners[f"{k} llvm"] = Runner(cf, [(x,)], cf)
            for name, mirror, on in (("torch", torch_mirror, opts.torch),
                                     ("jax", jax_mirror, opts.jax)):
                for k in KINDS if on else ():
                    runners[f"{name} {k}"] = Runner(*mirror.jacobian(k, w, x))
            point = {"n": n, "m": m, "modes": {}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for mode, r in runners.items():
                    d = _scaled_diff(jac, [r.run(1) for _ in range(4)][-1])
                    point["modes"][mode] = {"max_scaled_diff": d,
                                            "agreed": bool(d <= JACOBIAN_TOLERANCE)}
                times = measure.time_alternating(runners, opts.samples, opts.target_s / 2)
            for mode, t in times.items():
                point["modes"][mode].update(t)
            point["faster"] = min(KINDS, key=lambda k: times[k]["us"])
            points.append(point)
            progress.advance()
    return {"title": "jacfwd vs jacrev of tanh(W x), W m×n", "sizes": list(sizes),
            "compiled": compiled, "tolerance": JACOBIAN_TOLERANCE, "points": points}


# ------------------------------------------------------------------ the size sweep
def run_sweep(opts: Options, progress: Progress) -> dict:
    """The MLP step at each width in eager, llvm and numpy (and PyTorch eager): where do
    compiled and eager converge? A width where llvm is slower than eager is flagged."""
    points = []
    for width in sweep_widths(opts.quick):
        wl = sweep_workload(width)
        modes = ["eager", "llvm", "numpy"] + ["torch"] * opts.torch + ["jax"] * opts.jax
        r = run_workload(wl, opts, progress, fresh_processes=False, memory=False, modes=modes)
        llvm, eager = r["modes"]["llvm"], r["modes"]["eager"]
        r["width"] = width
        r["compiled_slower"] = bool(llvm.get("ran") and eager.get("ran")
                                    and llvm["us"] > eager["us"])
        points.append(r)
        progress.advance()
    return {"title": "16→w→w→1 tanh MLP, batch 32, MSE + SGD", "widths":
            list(sweep_widths(opts.quick)), "points": points,
            "compiled_slower_at": [p["width"] for p in points if p["compiled_slower"]]}


# ------------------------------------------------------------------ the machine, the verdict
def machine_info(opts: Options) -> dict:
    """What the figures were measured on, and its limits measured in the same run."""
    import platform

    import llvmlite
    import llvmlite.binding as llvm
    import numpy as np

    from compiler.backends.llvm import blas, machine, target, threads
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)),
            "torch": torch_mirror.version() if opts.torch else None,
            "jax": jax_mirror.version() if opts.jax else None,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_average_start": os.getloadavg()[0],
            "threads": {"blas": blas.pool_threads(blas.find()) if blas.find() else None,
                        "llvm_kernels": threads.team() if threads.find() else 1,
                        "torch": torch_mirror.torch().get_num_threads() if opts.torch
                        else None, "xla": opts.threads if opts.jax else None},
            "target": target.current().describe(),
            "peak_gflops": machine.peak_flops() / 1e9,
            "peak_gflops_one": machine.peak_flops(threads=1) / 1e9,
            "copy_gbps": measure.copy_bandwidth_gbps(reps=5 if opts.quick else 15),
            "matmul_gflops": measure.matmul_gflops(reps=3 if opts.quick else 7)}


def problems(results: dict) -> list[str]:
    """Everything that did not run, did not agree with eager, or ran eagerly when compiled
    (never timings)."""
    out = []

    def modes_of(where: str, modes: dict) -> None:
        for mode, e in modes.items():
            if not e.get("ran", True):
                out.append(f"{where} {mode} did not run: {e.get('error')}")
            elif e.get("agreed") is False:
                diff = e.get("max_rel_diff", e.get("max_scaled_diff"))
                out.append(f"{where} {mode} disagrees with eager: {diff:.1e}")
            elif e.get("compiled_calls") == 0:
                out.append(f"{where} {mode} never ran compiled: "
                           f"{e.get('eager_reason') or e.get('fallback_reasons')}")
    for name, w in results.get("workloads", {}).items():
        modes_of(name, w["modes"])
        if "first_calls_error" in w:
            out.append(w["first_calls_error"])
    for kind, c in results.get("W6", {}).get("compiled", {}).items():
        if c.get("agreed") is False:
            out.append(f"W6 compiled {kind} disagrees with the Jacobian: "
                       f"{c['max_scaled_diff']:.1e}")
    for p in results.get("W6", {}).get("points", []):
        modes_of(f"W6 n={p['n']} m={p['m']}", p["modes"])
    for p in results.get("sweep", {}).get("points", []):
        modes_of(f"sweep width {p['width']}", p["modes"])
    return out
