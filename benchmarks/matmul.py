"""GFLOP/s of the LLVM backend's two matmul kernels: the generated one and numpy's BLAS.

    OPENBLAS_NUM_THREADS=1 DYNGRAD_THREADS=1 python benchmarks/matmul.py [--quick] [--json PATH]

Each product ``op(A) @ op(B)`` (float32 unless ``--f64``; ``nn``, ``tn`` = A transposed as
backward's ``dW = X^T·dY``, ``nt`` = B transposed as ``dX = dY·W^T``) runs through
``tune.product`` — the very kernels compiled graphs call, no Python in the timed loop — and
the best of several timed runs is reported, the two kernels alternating. The thread settings
are the environment's (set them as above for one thread each, or leave them for two).
Nothing is written except ``--json``; the disk cache is off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["DYNGRAD_CACHE"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from compiler.backends.llvm import blas, gemm, tune  # noqa: E402

SHAPES = [(32, 16, 32), (128, 784, 256), (128, 256, 256), (256, 256, 256), (1024, 1024, 1024)]
FLAGS = {"nn": (False, False), "tn": (True, False), "nt": (False, True)}


def best_seconds(path, a, b, ta, tb, c, budget) -> float:
    m, n, k = c.shape[0], c.shape[1], a.shape[0] if ta else a.shape[1]
    reps = max(1, (1 << 22) // (m * n * k))
    tune.product(path, a, b, ta, tb, c, reps=reps)  # warm-up
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < budget or best == float("inf"):
        t = time.perf_counter()
        tune.product(path, a, b, ta, tb, c, reps=reps)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--f64", action="store_true", help="float64 instead of float32")
    ap.add_argument("--json", help="write the results to this file")
    args = ap.parse_args()
    dt = np.float64 if args.f64 else np.float32
    have_blas = blas.find() is not None
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; kernel "
          f"{gemm.name('double' if args.f64 else 'float')} (MR={gemm.MR}, NV={gemm.NV}, "
          f"{gemm.vector_bits()}-bit); BLAS "
          f"{os.path.basename(blas.find().path) if have_blas else 'absent'} with "
          f"{blas.pool_threads(blas.find()) if have_blas else 0} thread(s); "
          f"DYNGRAD_THREADS={os.environ.get('DYNGRAD_THREADS', '')} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}", flush=True)
    print("| M×K @ K×N | flags | generated GF/s | BLAS GF/s |")
    print("|---|---|---|---|")
    rows = []
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        for label, (ta, tb) in FLAGS.items():
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dt)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dt)
            c = np.empty((m, n), dt)
            budget = 0.05 if args.quick else 0.3
            gf = {}
            for path in ("generated", "blas") if have_blas else ("generated",):
                gf[path] = 2 * m * n * k / best_seconds(path, a, b, ta, tb, c, budget) / 1e9
            rows.append({"m": m, "k": k, "n": n, "flags": label, **gf})
            print(f"| {m}×{k} @ {k}×{n} | {label} | {gf['generated']:.1f} | "
                  f"{gf.get('blas', float('nan')):.1f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
