"""First calls of a compiled workload, in a fresh process.

    python -m benchmarks.firstcall W2 --modes interp,llvm [--quick]
    python -m benchmarks.firstcall W7a,W7b,W8 --compare [--plot docs/first-calls.png]

Builds the workload, compiles its step and times the warm-up — the first three passes over
its inputs, which trace and compile every variant and run each once — from ``compile()``
on, in each mode. Prints one JSON line: per mode the milliseconds (and how much of them the
kept variants' tracing and passes took), the variants made and the LLVM disk cache's
counters. The suite runs it twice with one empty ``DYNGRAD_CACHE_DIR``:
the first process is cold (trace, passes and LLVM compile), the second loads the compiled
modules, the plans and the variants from the disk cache (``compiler/plancache.py``,
``compiler/variantcache.py``: no trace when a kept variant holds; with an optimizer whose
first step is a fill of its state — Adam, Adadelta, SGD without dampening — even the first
step runs the kept variant; in a cold process that first step is the trace, made from the
filled state).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def warm_calls(n_inputs: int) -> int:
    """Calls until every variant of a step has been traced and run once: three passes over
    its inputs (a step whose gradients are zeroed to tensors, not None, traces its first
    call without them and its second with them; the third runs compiled)."""
    return 3 * n_inputs


def first_calls(name: str, mode: str, quick: bool) -> dict:
    """The warm-up of workload ``name`` in ``mode``: ms, variants, cache counters."""
    import compiler
    from compiler import backends, plancache, variantcache
    from compiler.backends.llvm import cache

    from .measure import Runner
    from .workloads import WORKLOADS

    inst = WORKLOADS[name].build(quick)
    backends.get(mode)  # (the backend's modules imported before the clock starts, as
    #                     ``import jax`` and ``import torch`` import theirs)
    before = dict(cache.stats)
    plans_before = plancache.stats["plans"]
    restored_before = variantcache.stats["restored"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (fallbacks are counted by the suite)
        t = time.perf_counter()
        cf = compiler.compile(inst.step, backend=mode)
        Runner(inst.runnable(cf), inst.calls).run(warm_calls(len(inst.calls)))
        ms = (time.perf_counter() - t) * 1e3
    return {"ms": ms, "variants": len(cf.variants),
            # of it, the kept variants' tracing (which runs the step) and passes + code (LLVM
            # or the disk cache); the rest is the steps run and the traces that fell back
            "trace_ms": sum(v.trace_seconds for v in cf.variants) * 1e3,
            "passes_ms": sum(v.compile_seconds for v in cf.variants) * 1e3,
            **{f"cache_{k}": cache.stats[k] - before[k] for k in ("compiled", "disk_hits")},
            "plans_restored": plancache.stats["plans"] - plans_before,
            "variants_restored": variantcache.stats["restored"] - restored_before}


# the ways a process can start (--compare), each with its settings: an empty cache; the
# object cache of a process before it, with the plan and variant caches off; with plans
# but no variants (the trace runs); with everything
STARTS = (("cold", {}), ("disk, objects only", {"DYNGRAD_PLAN_CACHE": "0"}),
          ("disk, objects and plans", {"DYNGRAD_VARIANT_CACHE": "0"}),
          ("disk, objects, plans, variants", {}))


def compare(names: list, repeats: int, quick: bool) -> dict:
    """Per workload and per start (``STARTS``): the LLVM warm-up of ``repeats`` fresh
    processes (median by ms, every run kept), each start's directory filled by a cold
    process first."""
    root = Path(__file__).resolve().parent.parent
    out: dict = {}
    for name in names:
        out[name] = {}
        with tempfile.TemporaryDirectory(prefix="dyngrad-firstcall-") as tmp:
            for start, settings in STARTS:
                runs = []
                for i in range(repeats):
                    d = Path(tmp) / (f"cold{i}" if start == "cold" else "shared")
                    if start != "cold" and not d.exists():  # (filled by a cold process)
                        _process(root, name, d, {}, quick)
                    runs.append(_process(root, name, d, settings, quick))
                runs.sort(key=lambda r: r["ms"])
                out[name][start] = {**runs[len(runs) // 2], "all_ms": [r["ms"] for r in runs]}
                print(f"{name} {start}: {out[name][start]['ms']:.0f} ms", file=sys.stderr)
    return out


def _process(root: Path, name: str, cache_dir: Path, settings: dict, quick: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DYNGRAD_PLAN_CACHE", "DYNGRAD_VARIANT_CACHE")}
    env.update(settings, DYNGRAD_CACHE_DIR=str(cache_dir), PYTHONPATH=str(root))
    args = [sys.executable, "-m", "benchmarks.firstcall", name] + (["--quick"] * quick)
    proc = subprocess.run(args, env=env, cwd=root, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["llvm"]


def plot(results: dict, path: str) -> None:
    """Stacked bars per workload and start: the trace, the passes (with code generation or
    its loading) and the rest (the steps themselves)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(results)
    fig, ax = plt.subplots(figsize=(3.6 + 3.0 * len(names), 4.4))
    width = 0.84 / len(STARTS)
    colors = {"trace": "#4c72b0", "passes": "#dd8452", "steps": "#a0a0a0"}
    for k, (start, _) in enumerate(STARTS):
        xs = [i + (k - (len(STARTS) - 1) / 2) * width for i in range(len(names))]
        parts = [[results[n][start][f"{p}_ms"] for n in names] for p in ("trace", "passes")]
        rest = [results[n][start]["ms"] - parts[0][i] - parts[1][i] for i, n in enumerate(names)]
        bottom = [0.0] * len(names)
        for label, vals in (("trace", parts[0]), ("passes", parts[1]), ("steps", rest)):
            ax.bar(xs, vals, width * 0.92, bottom=bottom, color=colors[label],
                   label=label if k == 0 else None, edgecolor="white", linewidth=0.5)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for x, total in zip(xs, bottom):
            ax.text(x, total + 20, f"{start.split(',')[-1].strip()}\n{total:.0f}", ha="center",
                    va="bottom", fontsize=6.5)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("first calls of a new process (ms)")
    ax.set_title("Warm-up of a compiled step in a new process: cold; with compiled code on "
                 "disk;\nwith code and plans (the trace remains); with code, plans and "
                 "variants (no trace)", fontsize=9)
    ax.legend(fontsize=8, title="passes: passes + code\ngeneration (or loading)",
              title_fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_ylim(0, max(results[n][s]["ms"] for n in names for s, _ in STARTS) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload", help="a workload, or with --compare a comma-separated list")
    ap.add_argument("--modes", default="llvm")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare", action="store_true",
                    help="new processes started cold, with compiled code on disk, and with "
                         "code and plans on disk (LLVM); prints JSON")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plot", help="with --compare: write a bar chart here (matplotlib)")
    args = ap.parse_args(argv)
    if args.compare:
        results = compare(args.workload.split(","), args.repeats, args.quick)
        print(json.dumps(results))
        if args.plot:
            plot(results, args.plot)
        return
    print(json.dumps({m: first_calls(args.workload, m, args.quick)
                      for m in args.modes.split(",")}))


if __name__ == "__main__":
    main()
