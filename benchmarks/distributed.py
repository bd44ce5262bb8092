"""Data-parallel W2 and W8 (nanoGPT) measured here: 2 ranks × 1 thread against 1 rank × 2
threads, on the same cores and the same global batch.

    python -m benchmarks --distributed [--quick] [--json PATH]
    python -m benchmarks.distributed [--quick] [--json PATH] [--only W2,W8]

Each configuration is a job of its own (``python -m dyngrad.distributed.run -n R``):

- **1 rank × 2 threads**: the workload's compiled step on the whole batch (dyngrad's kernels
  and numpy's BLAS on 2 threads), as ``python -m benchmarks`` runs it;
- **2 ranks × 1 thread**: the step of a ``DistributedDataParallel`` model on each rank's
  half of the batch, compiled — forward, backward, the bucket all-reduces and the update in
  one native call per rank.

Per workload it reports each step time (the median of the timed calls, every rank starting
each call after a barrier, each call's time the slowest rank's), the scaling efficiency —
the 1-rank step over the 2-rank step: above 1, two processes beat two threads on the same
batch — and how much of the all-reduce the backward hid: the all-reduces alone (the same
buckets, started together and waited for, compiled) cost ``comm``; the DDP step costs
``exposed`` more than the same step under ``no_sync()`` (its variant without
communication); hidden = 1 - exposed / comm, clamped to [0, 1]. The ranks share this
machine's cores, so the "network" is MPICH's shared memory.
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

if __package__ in (None, ""):  # (run as a script by the launcher: the repository on the path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS_RUN = ("W2", "W8")


def _split(args: tuple, rank: int, world: int) -> tuple:
    """This rank's share of a call's batch (every world-th sample from ``rank``)."""
    return tuple(a[rank::world].contiguous() for a in args)


def _ddp_step(name: str, inst, ddp):
    """The workload's step with the DDP model in place of its own (the same operations)."""
    import dyngrad.nn.functional as F
    from benchmarks import nanogpt
    if name == "W8":
        return nanogpt.make_step(ddp, inst.opt, inst.train.grad_clip)

    def step(x, y):
        inst.opt.zero_grad()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        inst.opt.step()
        return loss
    return step


def _median(fn, calls: int, barrier) -> float:
    """The median over ``calls`` of a call's time on the slowest rank (every rank starts
    each call together, after ``barrier``): a data-parallel step takes what its slowest
    rank takes."""
    import dyngrad as dg
    import dyngrad.distributed as dist
    times = []
    for _ in range(calls):
        barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    slowest = dg.tensor(times, dtype=dg.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(sorted(slowest.tolist())[len(times) // 2])


def child(name: str, quick: bool, threads: int, out: Path) -> None:
    """One rank of one configuration (run under the launcher): time the step, write the
    figures (rank 0)."""
    import compiler
    import dyngrad as dg
    import dyngrad.distributed as dist
    from benchmarks import suite
    from benchmarks.workloads import WORKLOADS
    from dyngrad.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    suite.set_threads(threads)
    inst = WORKLOADS[name].build(quick)
    calls = 5 if quick else 21
    args = inst.calls[0]
    fig = {"workload": name, "ranks": world, "threads": threads,
           "load_average_start": os.getloadavg()[0]}
    warnings.simplefilter("ignore")  # (the first call's fallback: optimizer state)
    if world == 1:
        step = inst.runnable(compiler.compile(inst.step, backend="llvm"))
        for _ in range(3):
            step(*args)
        fig["step_s"] = _median(lambda: step(*args), calls, dist.barrier)
    else:
        ddp = DDP(inst.model)
        cf = compiler.compile(_ddp_step(name, inst, ddp), backend="llvm")
        step = inst.runnable(cf)
        mine = _split(args, rank, world)
        for _ in range(3):
            step(*mine)
        fig["step_s"] = _median(lambda: step(*mine), calls, dist.barrier)
        fig["one_native_call"] = len(cf.variants) == 1 and \
            "run by one driver call" in cf.variants[0].plan.describe()

        def local():
            with ddp.no_sync():
                step(*mine)
        for _ in range(3):
            local()
        fig["local_s"] = _median(local, calls, dist.barrier)
        buckets = [dg.zeros(b.buffer.size) for b in ddp.reducer.buckets]

        def reduce_all(*bufs):
            works = [dist.all_reduce(b, async_op=True) for b in bufs]
            for w in works:
                w.wait()
            return bufs[0]
        creduce = compiler.compile(reduce_all, backend="llvm")
        for _ in range(3):
            creduce(*buckets)
        fig["comm_s"] = _median(lambda: creduce(*buckets), calls, dist.barrier)
        fig["buckets_bytes"] = [b.buffer.nbytes for b in ddp.reducer.buckets]
    if rank == 0:
        out.write_text(json.dumps(fig))
    dist.destroy_process_group()


def launch(name: str, ranks: int, threads: int, quick: bool) -> dict:
    """Run one configuration as a job; its figures."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "figures.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT))  # (threads: set by the child, as
        for var in ("OMP_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT"):  # python -m benchmarks
            env.pop(var, None)  # sets them; either set when OpenBLAS starts (2 threads,
        #  or benchmarks/__init__'s 1 ms spin) made W8's 2-thread step ~3x slower here)
        cmd = [sys.executable, "-m", "dyngrad.distributed.run", "-n", str(ranks),
               str(Path(__file__).resolve()), "--child", name, "--threads", str(threads),
               "--out", str(out)] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=1800)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"{name} on {ranks} rank(s) failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarise(one: dict, two: dict) -> dict:
    """The figures the table shows, from the two jobs'."""
    exposed = max(two["step_s"] - two["local_s"], 0.0)
    hidden = min(max(1.0 - exposed / two["comm_s"], 0.0), 1.0) if two["comm_s"] > 0 else 1.0
    return {"workload": one["workload"], "one_rank_two_threads_s": one["step_s"],
            "two_ranks_one_thread_s": two["step_s"], "local_s": two["local_s"],
            "efficiency": one["step_s"] / two["step_s"], "allreduce_s": two["comm_s"],
            "exposed_s": exposed, "hidden": hidden, "buckets_bytes": two["buckets_bytes"],
            "one_native_call": two["one_native_call"],
            "load_average": [one["load_average_start"], two["load_average_start"]]}


def table(rows: list) -> str:
    lines = ["| workload | 1 rank × 2 threads | 2 ranks × 1 thread | efficiency | all-reduce "
             "| exposed | hidden | one native call |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['one_rank_two_threads_s'] * 1e3:.2f} ms | "
                     f"{r['two_ranks_one_thread_s'] * 1e3:.2f} ms | {r['efficiency']:.2f} | "
                     f"{r['allreduce_s'] * 1e3:.2f} ms | {r['exposed_s'] * 1e3:.2f} ms | "
                     f"{r['hidden']:.0%} | {'yes' if r['one_native_call'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks --distributed",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small workloads, 5 timed calls")
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    ap.add_argument("--only", default=",".join(WORKLOADS_RUN), help="W2, W8 or both")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.threads, args.out)
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS_RUN]
    if unknown:
        ap.error(f"--only: unknown workload(s) {', '.join(unknown)}; choose from W2, W8")
    rows = []
    for name in names:
        print(f"{name}: 1 rank × 2 threads, then 2 ranks × 1 thread ...", file=sys.stderr)
        rows.append(summarise(launch(name, 1, 2, args.quick), launch(name, 2, 1, args.quick)))
    print(table(rows))
    print(f"(load average when the jobs started: "
          f"{', '.join(f'{a:.1f}/{b:.1f}' for a, b in (r['load_average'] for r in rows))} on "
          f"{os.cpu_count()} CPUs: other work slows a 2-thread step most)")
    if args.json:
        args.json.write_text(json.dumps({"run": "quick" if args.quick else "full",
                                         "workloads": rows}, indent=2))
    return 0 if all(r["one_native_call"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
