"""Kernel-by-kernel profiles of the compiled workloads: ``compiler.profile`` on W1, W2, W3.

    python benchmarks/profiles.py [--only W1,W2,W3] [--steps N] [--out DIR] [--quick]

For each workload: its compiled step (``backend="llvm"``), warmed up, then profiled for
``--steps`` calls (default 50; quick 5) — the table is printed, and ``DIR/<W>.json``
(Chrome trace: open in https://ui.perfetto.dev) and ``DIR/<W>.png`` (a bar chart, when
matplotlib is installed) are written (``DIR`` default ``benchmarks/profiles``). Threads as
the suite sets them (``--threads``, default the CPUs). benchmarks/README.md shows the
tables of the latest run.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compiler  # noqa: E402
from benchmarks import suite  # noqa: E402
from benchmarks.progress import Progress  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402


def profile_workload(name: str, steps: int, quick: bool, out: Path) -> compiler.Profile:
    """Profile workload ``name``'s compiled step (its first input); write its trace and
    chart under ``out``."""
    inst = WORKLOADS[name].build(quick)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the first call's fallback, counted by the suite)
        cf = compiler.compile(inst.step, backend="llvm")
        prof = compiler.profile(cf, *inst.calls[0], steps=steps)
    prof.chrome_trace(out / f"{name}.json")
    try:
        prof.plot(out / f"{name}.png")
    except RuntimeError:  # (no matplotlib: the table and the trace still stand)
        pass
    return prof


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="W1,W2,W3", help="comma-separated workloads")
    ap.add_argument("--steps", type=int, help="profiled calls per workload (50; quick 5)")
    ap.add_argument("--quick", action="store_true", help="few steps, the quick workloads")
    ap.add_argument("--threads", type=int, default=suite.default_threads())
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "profiles")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"--only: unknown workload(s) {', '.join(unknown)}")
    suite.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(names))
    try:
        for name in names:
            progress.phase(f"{name}: profiling")
            print(f"\n{name}  {WORKLOADS[name].title}", flush=True)
            profile_workload(name, args.steps or (5 if args.quick else 50), args.quick,
                             args.out)
            progress.advance()
    finally:
        progress.close()
    print(f"\ntraces and charts: {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
