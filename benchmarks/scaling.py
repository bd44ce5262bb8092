"""Data-parallel training on paper: W2 and W8 (nanoGPT) on 8, 64 and 512 machines.

    PYTHONPATH=. python benchmarks/scaling.py [--quick] [--plot PATH] [--json PATH]

What it measures here, in this process: each workload's compiled step (LLVM, one rank),
profiled kernel by kernel — the time before the step's own ``backward()`` began (the
forward) and after it (the backward, clipping and the update: ``Graph.late``); its
parameters, bucketed as ``DistributedDataParallel`` buckets them (reverse order, a 1 MiB first
bucket, then 25 MiB: ``nn.parallel.reducer.assign_buckets``); and this machine's copy
bandwidth (the optimizer update's bound).

What it assumes (each a flag): weak scaling — every rank keeps the workload's batch, so the
compute per step does not change with the number of machines; a ring all-reduce per bucket,
``2(p-1)`` messages of ``n/p`` bytes, costing ``2(p-1)·α + 2(p-1)/p · n/β`` on a network of
``β`` bytes per second and ``α`` per message — and, beside it, the recursive-halving form
MPICH takes (Rabenseifner's reduce-scatter then all-gather, ``2·log2(p)`` messages: the same
bytes, ``2·log2(p)·α`` of latency) — plus a fixed software cost per collective
measured by ``benchmarks/collectives.py`` (docs/distributed.md: ``dist.all_reduce`` of 4 B,
15 µs on this machine); gradients become ready during the backward at a steady rate, in
reverse parameter order; one bucket on the network at a time, each started when its last
gradient exists and the one before it is done; the update waits for the last bucket. The
update's time is estimated as 32 bytes per parameter (AdamW reads parameter, gradient and
two moments, writes three) at the measured copy bandwidth; the rest of the time after
``backward()`` began is the window the all-reduces can hide behind.

It prints, per workload, network and machine count: the step time, the all-reduce time in
all, the part of it not hidden behind the backward (exposed), and the scaling efficiency
(one machine's step over the data-parallel step: throughput per machine against one
machine alone). ``--plot`` draws the efficiencies. docs/distributed.md quotes a run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # (run as a script: the repository on the path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import compiler  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402
from dyngrad.nn.parallel.reducer import (  # noqa: E402
    DEFAULT_BUCKET_CAP_MB,
    FIRST_BUCKET_BYTES,
    MB,
    assign_buckets,
)

MACHINES = (8, 64, 512)
NETWORKS = {  # name -> (bandwidth in bytes per second, latency per message in seconds)
    "10 Gbit/s Ethernet": (10e9 / 8, 25e-6),
    "25 Gbit/s Ethernet": (25e9 / 8, 15e-6),
    "100 Gbit/s RDMA": (100e9 / 8, 3e-6),
}
SOFTWARE_S = 15e-6  # dyngrad's cost per collective beside MPI's (docs/distributed.md)
UPDATE_BYTES_PER_PARAM = 32  # AdamW: reads p, g, m, v; writes p, m, v (float32)


@dataclass
class Step:
    """One workload's compiled step, measured here."""

    name: str
    step_s: float  # as called (median)
    forward_s: float  # kernels before backward() began
    after_s: float  # kernels after: backward, clipping, update
    update_s: float  # the update's estimate (not hidden: it waits for the last bucket)
    python_s: float  # the call's Python side
    params: int
    buckets: list  # bytes per bucket, in the order they are all-reduced


def measure(name: str, quick: bool, steps: int) -> Step:
    """Profile workload ``name``'s compiled step and bucket its parameters."""
    from compiler.backends.llvm import machine
    inst = WORKLOADS[name].build(quick)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the first call's fallback)
        cf = compiler.compile(inst.step, backend="llvm")
        with contextlib.redirect_stdout(io.StringIO()):  # (profile prints its table)
            prof = compiler.profile(cf, *inst.calls[0], steps=steps)
    forward = sum(k.mean for k in prof.kernels if not k.late)
    after = sum(k.mean for k in prof.kernels if k.late)
    params = [p for p in inst.model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    sizes = [p.numel() * p.element_size() for p in params]
    order = list(range(len(params)))[::-1]
    buckets = assign_buckets(sizes, [str(p.dtype) for p in params],
                             [FIRST_BUCKET_BYTES, DEFAULT_BUCKET_CAP_MB * MB], order)
    update = min(UPDATE_BYTES_PER_PARAM * n / machine.copy_bandwidth(), after)
    return Step(name, prof.step_seconds, forward, after, update,
                prof.overhead_seconds, n, [sum(sizes[i] for i in b) for b in buckets])


def messages(p: int, algorithm: str) -> int:
    """Messages one all-reduce sends one after another: a ring's ``2(p-1)``, recursive
    halving's ``2·log2(p)``."""
    return 2 * (p - 1) if algorithm == "ring" else 2 * math.ceil(math.log2(p))


def allreduce_seconds(nbytes: float, p: int, bandwidth: float, latency: float,
                      algorithm: str = "ring") -> float:
    """One all-reduce of ``nbytes`` over ``p`` machines, with dyngrad's own cost."""
    if p == 1:
        return 0.0
    return SOFTWARE_S + messages(p, algorithm) * latency + 2 * (p - 1) / p * nbytes / bandwidth


def data_parallel(s: Step, p: int, bandwidth: float, latency: float,
                  algorithm: str = "ring") -> dict:
    """The step on ``p`` machines (see the module docstring): buckets started as their
    gradients exist during the backward window, one on the network at a time."""
    window = s.after_s - s.update_s  # the backward (and clipping), where buckets hide
    total = sum(s.buckets)
    ready, done, comm = 0.0, 0.0, 0.0
    for nbytes in s.buckets:
        ready += window * nbytes / total  # (its last gradient exists)
        t = allreduce_seconds(nbytes, p, bandwidth, latency, algorithm)
        done = max(done, ready) + t
        comm += t
    exposed = max(0.0, done - window)
    step = s.step_s + exposed
    return {"machines": p, "step_ms": step * 1e3, "allreduce_ms": comm * 1e3,
            "exposed_ms": exposed * 1e3, "efficiency": s.step_s / step,
            "latency_share": messages(p, algorithm) * latency * len(s.buckets) / comm
            if comm else 0.0}


def table(steps: list[Step]) -> tuple[list[str], list[dict]]:
    rows, lines = [], []
    for s in steps:
        lines += [f"{s.name}: step {s.step_s * 1e3:.2f} ms on one machine (forward "
                  f"{s.forward_s * 1e3:.2f} ms, after backward() began {s.after_s * 1e3:.2f} "
                  f"ms of which the update ~{s.update_s * 1e3:.2f} ms, Python "
                  f"{s.python_s * 1e3:.2f} ms); {s.params:,} parameters in "
                  f"{len(s.buckets)} bucket(s) of "
                  f"{', '.join(f'{b / MB:.2f}' for b in s.buckets)} MiB",
                  f"  {'network':<20} {'machines':>8} {'step ms':>9} {'all-reduce ms':>14} "
                  f"{'exposed ms':>11} {'efficiency':>11} {'latency share':>14} "
                  f"{'halving: step ms':>17} {'efficiency':>11}"]
        for net, (bw, lat) in NETWORKS.items():
            for p in MACHINES:
                r = {"workload": s.name, "network": net, **data_parallel(s, p, bw, lat)}
                h = data_parallel(s, p, bw, lat, "halving")
                r["halving"] = h
                rows.append(r)
                lines.append(f"  {net:<20} {p:>8} {r['step_ms']:>9.2f} "
                             f"{r['allreduce_ms']:>14.2f} {r['exposed_ms']:>11.2f} "
                             f"{r['efficiency']:>10.0%} {r['latency_share']:>13.0%} "
                             f"{h['step_ms']:>17.2f} {h['efficiency']:>10.0%}")
    return lines, rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted({r["workload"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for net in NETWORKS:
            rs = [r for r in rows if r["workload"] == name and r["network"] == net]
            line, = ax.plot([r["machines"] for r in rs], [r["efficiency"] for r in rs],
                            marker="o", label=f"{net}, ring")
            ax.plot([r["machines"] for r in rs], [r["halving"]["efficiency"] for r in rs],
                    marker="x", ls="--", color=line.get_color(), label=f"{net}, halving")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("machines (weak scaling: each keeps the batch)")
        ax.set_ylabel("scaling efficiency")
        ax.set_title(f"{name}: data-parallel step, all-reduce model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the workloads' quick forms")
    ap.add_argument("--steps", type=int, default=20, help="profiled calls per workload")
    ap.add_argument("--plot", type=Path, help="write the efficiencies as a PNG here")
    ap.add_argument("--json", type=Path, help="write the measurements and rows here")
    args = ap.parse_args(argv)
    steps = [measure(name, args.quick, args.steps) for name in ("W2", "W8")]
    lines, rows = table(steps)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"steps": [asdict(s) for s in steps], "rows": rows},
                                        indent=1))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
