"""First calls of a compiled workload, in a fresh process.

    python -m benchmarks.firstcall W2 --modes interp,llvm [--quick]

Builds the workload, compiles its step and times the warm-up — the first three passes over
its inputs, which trace and compile every variant and run each once — from ``compile()``
on, in each mode. Prints one JSON line: per mode the milliseconds (and how much of them the
kept variants' tracing and passes took), the variants made and the LLVM disk cache's
counters. The suite runs it twice with one empty ``DYNGRAD_CACHE_DIR``:
the first process is cold (trace, passes and LLVM compile), the second loads the compiled
modules and the plans from the disk cache (the trace still runs: variants are not cached on
disk; ``compiler/plancache.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def warm_calls(n_inputs: int) -> int:
    """Calls until every variant of a step has been traced and run once: three passes over
    its inputs (the first call traces with every ``.grad`` None, the second traces again
    with them present, the third runs compiled)."""
    return 3 * n_inputs


def first_calls(name: str, mode: str, quick: bool) -> dict:
    """The warm-up of workload ``name`` in ``mode``: ms, variants, cache counters."""
    import compiler
    from compiler import backends, plancache
    from compiler.backends.llvm import cache

    from .measure import Runner
    from .workloads import WORKLOADS

    inst = WORKLOADS[name].build(quick)
    backends.get(mode)  # (the backend's modules imported before the clock starts, as
    #                     ``import jax`` and ``import torch`` import theirs)
    before = dict(cache.stats)
    plans_before = plancache.stats["plans"]
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
            "plans_restored": plancache.stats["plans"] - plans_before}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("--modes", default="llvm")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    print(json.dumps({m: first_calls(args.workload, m, args.quick)
                      for m in args.modes.split(",")}))


if __name__ == "__main__":
    main()
