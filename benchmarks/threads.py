"""Do OpenBLAS's thread pool and the LLVM backend's own pool fight? Measured.

    python benchmarks/threads.py [--quick] [--json PATH]

Two compiled (``backend="llvm"``) workloads, each in a fresh subprocess per configuration
(the thread settings are read when the libraries load):

- **big**: ``y = x @ w`` (512x1024 @ 1024x1024 float32) then ``(tanh(1.5y+0.5)·sigmoid(y) −
  exp(−y²)).sum()``: one large matmul followed by large elementwise and reduction kernels
  (those run on the backend's pool from 32K elements).
- **mlp**: W2's training step (784→256→256→10 ReLU MLP, batch 128, cross-entropy, Adam):
  medium matmuls (forward and backward) between small kernels.

Configurations: the matmuls forced to BLAS or to the generated kernel
(``DYNGRAD_MATMUL``), BLAS's pool of 1 or 2 threads (``OPENBLAS_NUM_THREADS``), the team of
1 or 2 threads (``DYNGRAD_THREADS=1`` or ``OMP_NUM_THREADS=2``). Each figure is the median
(and IQR) over samples of calls; the table also shows each time relative to the best one of
its workload. Nothing is written outside benchmarks/ except ``--json``; the disk cache is
off in the children (``DYNGRAD_CACHE=0``). Timings assume an idle machine: the load average
is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [  # (matmul path, OPENBLAS_NUM_THREADS, team threads)
    (path, blas, team) for path in ("blas", "generated") for blas in (1, 2) for team in (1, 2)
    if not (path == "generated" and blas == 2)] + [("generated", 2, 2)]
WORKLOADS = ("big", "mlp")


def child(workload: str, quick: bool) -> dict:
    """Run in the subprocess: compile the workload, time it; returns the figures."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import compiler
    import dyngrad as dg
    import dyngrad.nn.functional as F
    from dyngrad import nn, optim

    r = np.random.default_rng(0)
    if workload == "big":
        x = dg.tensor(r.standard_normal((512, 1024)).astype(np.float32))
        w = dg.tensor((r.standard_normal((1024, 1024)) / 32).astype(np.float32))

        def fn(x, w):
            y = x @ w
            return ((y * 1.5 + 0.5).tanh() * y.sigmoid() - (-y * y).exp()).sum()
        args = (x, w)
        with dg.no_grad():
            f = compiler.compile(fn, backend="llvm")
            run = lambda: f(*args)  # noqa: E731
            run()
    else:
        dg.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 10))
        opt = optim.Adam(model.parameters(), lr=1e-3)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        f = compiler.compile(step, backend="llvm")
        args = (dg.tensor(r.standard_normal((128, 784)).astype(np.float32)),
                dg.tensor(r.integers(0, 10, 128)))
        run = lambda: f(*args)  # noqa: E731
    for _ in range(3):  # traced, compiled, warm
        run()
    calls = 3 if quick else 10
    samples = []
    deadline = time.perf_counter() + (1.0 if quick else 4.0)
    while len(samples) < 7 or time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - t) / calls)
        if len(samples) >= 200:
            break
    s = sorted(samples)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return {"median_ms": q(0.5) * 1e3, "iqr_ms": (q(0.75) - q(0.25)) * 1e3,
            "samples": len(s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing per configuration")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    for workload in WORKLOADS:
        for path, blas, team in CONFIGS:
            env = dict(os.environ, PYTHONPATH=str(ROOT), DYNGRAD_CACHE="0",
                       DYNGRAD_MATMUL=path, OPENBLAS_NUM_THREADS=str(blas))
            env.pop("DYNGRAD_THREADS", None)
            if team == 1:
                env["DYNGRAD_THREADS"] = "1"
            else:
                env["OMP_NUM_THREADS"] = str(team)
            cmd = [sys.executable, __file__, "--child", workload] + (
                ["--quick"] if args.quick else [])
            out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                                 timeout=600)
            if out.returncode:
                raise SystemExit(f"{workload} {path} blas={blas} team={team}: "
                                 f"{out.stderr[-2000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"workload": workload, "matmul": path, "blas_threads": blas,
                         "team_threads": team, **res})
            print(f"  {workload:4} matmul={path:9} OPENBLAS_NUM_THREADS={blas} team={team}: "
                  f"{res['median_ms']:8.3f} ms (IQR {res['iqr_ms']:.3f})", flush=True)
    print()
    print("| workload | matmul | BLAS threads | team threads | median ms | IQR ms | vs best |")
    print("|---|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        mine = [r for r in rows if r["workload"] == workload]
        best = min(r["median_ms"] for r in mine)
        for r in mine:
            print(f"| {workload} | {r['matmul']} | {r['blas_threads']} | {r['team_threads']} "
                  f"| {r['median_ms']:.3f} | {r['iqr_ms']:.3f} | {r['median_ms'] / best:.2f}x |")
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()},
                                              indent=1))


if __name__ == "__main__":
    main()
