"""``python -m benchmarks``: every workload in every mode, side by side, on this machine.

    python -m benchmarks [--quick] [--json PATH] [--plot PATH] [--only W1,W5,W6,sweep]
                         [--no-torch] [--no-torch-compile] [--no-jax] [--samples N]
                         [--threads N] [--modes llvm,jax]
    python -m benchmarks --distributed [--quick] [--json PATH] [--only W2,W8]

Workloads W1–W5 (training steps and control flow), W6 (jacfwd vs jacrev), W7a and W7b
(convolutional networks), W8 (nanoGPT) — W7 and W8 with their goals judged — and the size
sweep of the MLP step; modes
dyngrad eager, ``backend="interp"``, ``backend="llvm"``, a numpy step where one exists,
PyTorch eager and ``torch.compile`` when torch is installed, ``jax.jit`` when jax is.
Prints a table (progress on stderr while it runs), writes the figures as JSON and a PNG
chart.
``--quick`` (about a minute; no torch.compile) is the CI smoke test. Exits with status 1
when a mode did not run, disagreed with eager or never ran compiled — never for a timing.

``--distributed`` runs W2 and W8 data-parallel instead — 2 ranks × 1 thread against 1 rank
× 2 threads, the step times, the scaling efficiency and how much of the all-reduce the
backward hid (``benchmarks/distributed.py``; needs the ``dist`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import report, suite
from .progress import Progress
from .workloads import WORKLOADS, jacobian_sizes, sweep_widths

PARTS = (*WORKLOADS, "W6", "sweep")


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples, sizes and lengths, no torch.compile (CI smoke test)")
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--plot", type=Path, default=Path(__file__).parent / "suite.png",
                    help="the chart (default benchmarks/suite.png); 'none' for no chart")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-torch-compile", action="store_true",
                    help="PyTorch eager only (torch.compile takes 15+ s per workload)")
    ap.add_argument("--no-jax", action="store_true", help="leave JAX out")
    ap.add_argument("--samples", type=int, help="timed samples per mode (default 21; "
                    "quick 5)")
    ap.add_argument("--modes", help="comma-separated modes to run besides eager (the "
                    "reference), of interp, llvm, numpy, torch, torch.compile, jax — e.g. "
                    "'--modes jax' to time JAX in a process of its own")
    ap.add_argument("--threads", type=int, default=suite.default_threads(),
                    help="threads for every framework: numpy's BLAS, dyngrad's kernels, "
                    "PyTorch, XLA (default: the CPUs this process may use)")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        ap.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(PARTS)}")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--distributed" in argv:
        from . import distributed
        return distributed.main([a for a in argv if a != "--distributed"])
    args = parse(argv)
    t0 = time.perf_counter()
    opts = suite.Options(args.quick, torch=not args.no_torch,
                         torch_compile=not args.no_torch_compile, jax=not args.no_jax,
                         samples=args.samples, threads=args.threads,
                         only=args.modes.split(",") if args.modes else None)
    workloads = [p for p in args.parts if p in WORKLOADS]
    total = 1 + len(workloads) + ("W6" in args.parts) * len(jacobian_sizes(args.quick)) ** 2 \
        + ("sweep" in args.parts) * len(sweep_widths(args.quick))
    progress = Progress(total)
    try:
        progress.phase("the machine's limits")
        results = {"options": {"run": "quick" if args.quick else "full",
                               "samples": opts.samples, "parts": args.parts,
                               "torch": opts.torch, "torch_compile": opts.torch_compile,
                               "jax": opts.jax, "threads": opts.threads},
                   "machine": suite.machine_info(opts), "workloads": {}}
        progress.advance()
        for name in workloads:
            results["workloads"][name] = suite.run_workload(WORKLOADS[name], opts, progress)
            progress.advance()
        if "W6" in args.parts:
            results["W6"] = suite.run_jacobians(opts, progress)
        if "sweep" in args.parts:
            results["sweep"] = suite.run_sweep(opts, progress)
    finally:
        progress.close()
        shutil.rmtree(opts.work, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    results["problems"] = suite.problems(results)
    results["elapsed_s"] = time.perf_counter() - t0
    print(report.table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"json: {args.json}")
    if str(args.plot).lower() != "none":
        print(f"plot: {args.plot}" if report.plot(results, args.plot)
              else "(matplotlib not installed: no plot)")
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
