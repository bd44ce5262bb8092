"""The compiled call path of the interpreter backend on the W1 training step.

    python benchmarks/compile_overhead.py [--quick] [--json PATH]

W1: one step (zero_grad, forward, MSE, backward, SGD) of a 16→32→32→1 tanh MLP at batch 32.
Reports the eager step, the compiled step (backend="interp"), the guard check alone, the
Python-side overhead of a compiled call (the whole call with the graph's execution replaced by
handing back outputs computed once) and the trace + passes time of the step. Speed goals live
here, never in unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from compiler.guards import flatten  # noqa: E402
from dyngrad import nn, optim  # noqa: E402


def w1(seed: int = 0, width: int = 32):
    """The W1 step: 16→width→width→1 tanh MLP, MSE, SGD (``step.model`` and ``step.opt``
    are its model and optimizer; the suite's size sweep varies ``width``)."""
    dg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 1))
    opt = optim.SGD(model.parameters(), lr=0.01)

    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    step.model, step.opt = model, opt
    return step


def median_us(fn, number: int, repeat: int) -> tuple[float, float]:
    times = np.array(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
    q1, q3 = np.percentile(times, [25, 75])
    return float(np.median(times)), float(q3 - q1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    number, repeat = (200, 5) if args.quick else (1000, 15)
    x, y = dg.randn(32, 16), dg.randn(32, 1)
    eager = w1()
    compiled = compiler.compile(w1(), backend="interp")
    t0 = time.perf_counter()
    compiled(x, y)  # traced with every .grad None (the first call makes them)
    compiled(x, y)  # traced again: now each .grad is present on entry
    trace_ms = (time.perf_counter() - t0) * 1e3
    compiled(x, y)  # served by the second variant, which moves to the front
    v = compiled.variants[0]
    flat, spec = flatten((x, y), {})
    inputs, scalars = v._gather(flat)
    plan = v.plan
    res = {
        "eager_step_us": median_us(lambda: eager(x, y), number, repeat),
        "compiled_step_us": median_us(lambda: compiled(x, y), number, repeat),
        "guard_check_us": median_us(lambda: v.guards.check(flat, spec), number * 10, repeat),
        "graph_execution_us": median_us(lambda: plan.run(inputs, scalars), number, repeat),
        "trace_and_passes_ms": trace_ms,
        "nodes": len(v.trace.graph.nodes),
        "guards": len(v.guards.describe),
    }
    # The Python side alone: the same compiled call with the graph's execution replaced by
    # handing back outputs computed once (everything else — guards, gathering the bound
    # arrays, write-backs, new .grad tensors, the result — runs as usual).
    outs = plan.run(inputs, scalars)
    namespace = v.call.__globals__
    namespace["RUN"] = lambda inputs, scalars: list(outs)
    try:
        res["call_overhead_us"] = median_us(lambda: compiled(x, y), number * 10, repeat)
    finally:
        namespace["RUN"] = plan.run
    print("W1 (16→32→32→1 tanh MLP, batch 32, MSE + SGD), interpreter backend; µs median "
          "(IQR); timings assume an idle machine")
    for k in ("eager_step_us", "compiled_step_us", "guard_check_us", "graph_execution_us",
              "call_overhead_us"):
        print(f"  {k:<22} {res[k][0]:9.2f}  ({res[k][1]:.2f})")
    print(f"  {'trace_and_passes_ms':<22} {trace_ms:9.2f}  (two traced calls)")
    print(f"  graph: {res['nodes']} nodes, {res['guards']} guards; speed-up over eager "
          f"{res['eager_step_us'][0] / res['compiled_step_us'][0]:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
