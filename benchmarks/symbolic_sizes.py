"""New batch sizes of a compiled training step: one shared module against a module per size.

    PYTHONPATH=. python3 benchmarks/symbolic_sizes.py [--quick] [--json PATH] [--plot PATH]

The W2 step (784→256→256→10 ReLU MLP, cross-entropy, Adam) compiled twice on the LLVM
backend, in a fresh disk cache: once as users get it (the batch dimension becomes symbolic
after three sizes, and its sizes share one native module per form of their code:
``compiler/backends/llvm/forms.py``)
and once with ``dynamic=False`` (a variant, and a module, per size). For every new batch size:
the first call (ms: the trace that checks the size fits the variant), the second (ms:
planning, plus LLVM when the size needs a module of its own) and the step time
after (µs, median), for both; the first two steps at each size must agree with eager's
losses. Speed goals live here,
never in unit tests.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_CACHE = tempfile.mkdtemp(prefix="dyngrad-sizes-")  # a cold disk cache: first calls compile
os.environ["DYNGRAD_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from benchmarks.progress import Progress  # noqa: E402
from dyngrad import nn, optim  # noqa: E402

WARM_UP = (32, 48, 64)  # three sizes: the dimension becomes symbolic
NEW = (100, 17, 128, 33, 250, 77, 512)
NEW_QUICK = (100, 17, 33)


def make_step(model):
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def run(quick: bool) -> dict:
    dg.manual_seed(0)
    width = 64 if quick else 256
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                          nn.Linear(width, 10))
    models = [copy.deepcopy(model) for _ in range(3)]
    shared = compiler.compile(make_step(models[0]), backend="llvm")
    alone = compiler.compile(make_step(models[1]), backend="llvm", dynamic=False,
                             cache_limit=64)
    eager = make_step(models[2])
    r = np.random.default_rng(0)

    def batch(b):
        return (dg.tensor(r.standard_normal((b, 784)).astype(np.float32)),
                dg.tensor(r.integers(0, 10, b)))

    sizes = NEW_QUICK if quick else NEW
    progress = Progress(len(WARM_UP) + 2 * len(sizes))
    for b in WARM_UP:
        progress.phase(f"warm-up: batch {b}")
        data = batch(b)
        for f in (shared, alone, eager):
            f(*data), f(*data)
        progress.advance()
    rows, data = [], {}
    for b in sizes:  # first calls: the three models stay in step (two steps each)
        progress.phase(f"new batch size {b}")
        data[b] = batch(b)
        row = {"batch": b, "shared_agrees": True, "alone_agrees": True}
        for call in range(2):
            want = float(eager(*data[b]))
            for name, f in (("shared", shared), ("alone", alone)):
                t0 = time.perf_counter()
                got = float(f(*data[b]))
                row[f"{name}_{('first', 'second')[call]}_ms"] = 1e3 * (time.perf_counter() - t0)
                row[f"{name}_agrees"] &= abs(got - want) <= 1e-4 * max(1.0, abs(want))
        rows.append(row)
        progress.advance()
    for row in rows:  # then the step times (the models part ways: no more comparisons)
        progress.phase(f"timing batch {row['batch']}")
        n = 5 if quick else 20
        for name, f in (("shared", shared), ("alone", alone)):
            times = [t / n for t in timeit.repeat(lambda f=f: f(*data[row["batch"]]),
                                                  number=n, repeat=5 if quick else 15)]
            row[f"{name}_step_us"] = 1e6 * statistics.median(times)
        progress.advance()
    progress.close()
    (v,) = shared.variants
    fam = v.family
    return {"width": width, "rows": rows, "templates": fam.templates,
            "shared_sizes": fam.shared, "own_sizes": fam.own,
            "alone_variants": len(alone.variants), "fallbacks": list(shared.fallbacks)}


def report(res: dict) -> str:
    out = [f"W2 step (784→{res['width']}→{res['width']}→10, cross-entropy + Adam), LLVM, "
           f"cold disk cache; new batch sizes after {'/'.join(map(str, WARM_UP))}",
           "  batch   shared: first, second ms  step µs   per size: first, second ms  step µs"
           "   agree"]
    for row in res["rows"]:
        ok = "ok" if row["shared_agrees"] and row["alone_agrees"] else "DIFFERS"
        out.append(f"  {row['batch']:5d}   {row['shared_first_ms']:14.1f} "
                   f"{row['shared_second_ms']:7.1f}  {row['shared_step_us']:7.0f}   "
                   f"{row['alone_first_ms']:16.1f} {row['alone_second_ms']:7.1f}  "
                   f"{row['alone_step_us']:7.0f}   {ok}")
    out.append(f"  shared: {res['shared_sizes']} size(s) on {res['templates']} template "
               f"module(s) (one per form of the code), {res['own_sizes']} compiled alone; "
               f"per size: {res['alone_variants']} variants")
    return "\n".join(out)


def plot(res: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)", file=sys.stderr)
        return
    rows = res["rows"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [r["shared_first_ms"] for r in rows], 0.4, label="one shared module")
    ax.bar(x + 0.2, [r["alone_first_ms"] for r in rows], 0.4, label="a module per size")
    ax.set_xticks(x, [str(r["batch"]) for r in rows])
    ax.set_xlabel("new batch size (in call order)")
    ax.set_ylabel("first call, ms")
    ax.set_title("W2 step: the first call at a new batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller model, three new sizes")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", default=str(Path(__file__).with_name("symbolic_sizes.png")),
                    help="the bar chart's path ('' for none)")
    args = ap.parse_args()
    res = run(args.quick)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.plot:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
