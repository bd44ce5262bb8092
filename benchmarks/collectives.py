"""What a collective costs on this machine: ``dist.all_reduce`` of 4 B, 1 KB, 1 MB and 25 MB
(float32) on the ranks started, against mpi4py's ``Iallreduce`` alone on the same arrays, and
what the ranks' agreement check adds to each collective (Note [agree, then send] in
dyngrad/distributed/work.py).

    python -m dyngrad.distributed.run -n 2 benchmarks/collectives.py [--quick]

Rank 0 prints a table (the median of the repetitions; every rank starts each repetition
together, after a barrier). The figures in docs/distributed.md come from this script.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import dyngrad as dg
import dyngrad.distributed as dist
from dyngrad.distributed.process_group import default_group

SIZES = [("4 B", 4), ("1 KB", 1024), ("1 MB", 1 << 20), ("25 MB", 25 << 20)]


def median_us(fn, reps: int) -> float:
    """Median time of ``fn()`` over ``reps`` runs, each started together on every rank."""
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few repetitions (for the tests)")
    args = ap.parse_args(argv)
    dist.init_process_group("mpi")
    g = default_group()
    mpi = g.mpi
    rows = []
    for name, nbytes in SIZES:
        reps = 3 if args.quick else (20 if nbytes >= 1 << 20 else 300)
        a = np.ones(nbytes // 4, dtype=np.float32)
        t = dg.from_numpy(a.copy())
        key = np.zeros(14, dtype=np.int64)

        def raw():
            g.comm.Iallreduce(mpi.IN_PLACE, a, op=mpi.SUM).Wait()

        def check_alone():
            g.comm.Iallreduce(mpi.IN_PLACE, key, op=mpi.MAX).Wait()

        ours = median_us(lambda: dist.all_reduce(t), reps)
        rows.append((name, ours, median_us(raw, reps), median_us(check_alone, reps)))
    if g.rank() == 0:
        print(f"all_reduce (SUM, float32) on {g.size()} ranks: median µs per call")
        print(f"{'size':>6} {'dist.all_reduce':>16} {'mpi4py alone':>13} "
              f"{'the check alone':>16}")
        for name, ours, raw_us, check_us in rows:
            print(f"{name:>6} {ours:16.1f} {raw_us:13.1f} {check_us:16.1f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
