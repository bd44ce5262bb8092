"""The compiler's speed goals, measured: W1–W4 on every backend, beside their bounds.

    python benchmarks/workloads.py [--quick] [--json PATH] [--plot PATH]

- **W1** 16→32→32→1 tanh MLP, batch 32, MSE + SGD (a whole training step).
- **W2** 784→256→256→10 ReLU MLP, batch 128, cross-entropy + Adam. Bound: numpy's matmuls of
  the step's shapes (three forward, five backward) plus the optimizer's bytes over copy
  bandwidth (reading parameters, gradients and two moments, writing three).
- **W3** ``sum(tanh(1.5x+0.5)·sigmoid(x) − exp(−x²))`` on 4M float32 with ``backward()``
  inside the compiled function. Bound: numpy writing a fresh 4M array from the input.
- **W4** the d2l control-flow function (a data-dependent ``while`` and ``if``) forward and
  backward, unchanged user code, on a fixed set of inputs.

Modes, one process: dyngrad eager, ``backend="interp"``, ``backend="llvm"`` (the default),
a hand-written numpy step where one exists, and PyTorch eager when torch is installed. Each
is the median over samples (IQR beside it), the modes alternating sample by sample so a
change of machine load hits all alike; each compiled mode is checked against eager first.
Reported too: the first call (trace + compile) of each compiled mode — cold, and from the
disk cache in a fresh process for W2 — and each workload's ratio to its bound. Speed goals
live here, never in unit tests; timings assume an idle machine (the load average is
printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS (the LLVM backend's own
    #                                   OpenMP threads stay: OMP_NUM_THREADS is not set)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from compile_overhead import w1 as w1_step  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from dyngrad import nn, optim  # noqa: E402

MODES = ("eager", "interp", "llvm")


# ------------------------------------------------------------------ workloads
def w1(seed: int = 0):
    step = w1_step(seed)  # (the step compile_overhead.py measures)
    r = np.random.default_rng(seed)
    args = (dg.tensor(r.standard_normal((32, 16)).astype(np.float32)),
            dg.tensor(r.standard_normal((32, 1)).astype(np.float32)))
    return step, args


def w2(seed: int = 0):
    dg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    r = np.random.default_rng(seed)
    args = (dg.tensor(r.standard_normal((128, 784)).astype(np.float32)),
            dg.tensor(r.integers(0, 10, 128)))
    return step, args


def w3(seed: int = 0, n: int = 4 * 1024 * 1024):
    r = np.random.default_rng(seed)
    x = dg.tensor(r.standard_normal(n).astype(np.float32), requires_grad=True)

    def step(x):
        x.grad = None
        loss = ((x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()).sum()
        loss.backward()
        return loss
    return step, (x,)


def w4(seed: int = 0):
    def f(a):  # d2l.ai §2.5.4, as written there
        b = a * 2
        while b.norm() < 1000:
            b = b * 2
        if b.sum() > 0:
            c = b
        else:
            c = 100 * b
        return c

    def step(a):
        a.grad = None
        d = f(a)
        d.backward()
        return d
    inputs = [(dg.tensor(np.float32(v), requires_grad=True),) for v in (0.7, -1.3, 2.5, 0.02)]
    return step, inputs  # the fixed set of inputs, taken in turn (see ``calls``)


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}


# ------------------------------------------------------------------ bounds and numpy steps
def numpy_w1():
    """The W1 step written by hand in numpy (forward, manual backward, in-place SGD)."""
    dg.manual_seed(0)
    ref = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                        nn.Linear(32, 1))
    ws = [p.detach().numpy().copy() for p in ref.parameters()]
    _, (x, y) = w1()
    x, y = x.numpy(), y.numpy()

    def step():
        w0, b0, w1_, b1, w2_, b2 = ws
        h0 = np.tanh(x @ w0.T + b0)
        h1 = np.tanh(h0 @ w1_.T + b1)
        out = h1 @ w2_.T + b2
        d = out - y
        loss = float(np.mean(d * d))
        g = 2.0 * d / d.size
        gw2, gb2 = g.T @ h1, g.sum(0)
        g1 = (g @ w2_) * (1 - h1 * h1)
        gw1, gb1 = g1.T @ h0, g1.sum(0)
        g0 = (g1 @ w1_) * (1 - h0 * h0)
        gw0, gb0 = g0.T @ x, g0.sum(0)
        for w, gr in zip(ws, (gw0, gb0, gw1, gb1, gw2, gb2)):
            w -= 0.01 * gr
        return loss
    return step


def bound_w2() -> float:
    """µs: the step's matmuls in numpy plus Adam's bytes over copy bandwidth."""
    r = np.random.default_rng(0)
    f = np.float32
    x, w0, w1, w2 = (r.standard_normal(s).astype(f) for s in
                     ((128, 784), (256, 784), (256, 256), (10, 256)))
    h0, h1, g2 = (r.standard_normal(s).astype(f) for s in ((128, 256), (128, 256), (128, 10)))

    def mm():
        x @ w0.T, h0 @ w1.T, h1 @ w2.T  # forward
        g2 @ w2, g2.T @ h1, h1 @ w1, h1.T @ h0, h0.T @ x  # backward (no dx)
    t_mm = _median(mm, 20)
    n = 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    big = np.ones(8 * 1024 * 1024, f)
    t_copy = _median(lambda: big.copy(), 10)
    gbps = big.nbytes * 2 / (t_copy * 1e-6)  # read + write
    return t_mm + (7 * n * 4) / gbps * 1e6


def bound_w3() -> float:
    """µs: numpy writing a fresh 4M float32 array from the input."""
    a = np.ones(4 * 1024 * 1024, np.float32)
    return _median(lambda: np.multiply(a, 1.0), 10)


def _median(fn, n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


# ------------------------------------------------------------------ measuring
def calls(args):
    """The argument tuples of successive calls: one tuple, or (W4) a list taken in turn."""
    if isinstance(args, list):
        while True:
            yield from args
    while True:
        yield args


def make(name: str, mode: str):
    step, args = WORKLOADS[name]()
    if mode == "eager":
        return step, args, None
    t0 = time.perf_counter()
    cf = compiler.compile(step, backend=mode)
    it = calls(args)
    for _ in range(3 if not isinstance(args, list) else 2 * len(args)):  # trace, compile
        cf(*next(it))
    return cf, args, (time.perf_counter() - t0) * 1e3


def agree(name: str, mode: str) -> float:
    """Max relative difference of the compiled mode's losses from eager's over 3 steps."""
    e, ea = WORKLOADS[name]()
    c, ca = WORKLOADS[name]()
    cf = compiler.compile(c, backend=mode)
    worst = 0.0
    ie, ic = calls(ea), calls(ca)
    for _ in range(8):
        a = np.asarray(e(*next(ie)).detach().numpy(), np.float64)
        b = np.asarray(cf(*next(ic)).detach().numpy(), np.float64)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30))))
    return worst


def measure(name: str, samples: int, inner: int) -> dict:
    fns = {}
    first = {}
    for mode in MODES:
        fn, args, t_first = make(name, mode)
        fns[mode] = (fn, args)
        first[mode] = t_first
    if name == "W1":
        fns["numpy"] = (numpy_w1(), ())
    times = {m: [] for m in fns}
    its = {m: calls(args) for m, (_, args) in fns.items()}
    for _ in range(samples):  # alternate the modes sample by sample
        for m, (fn, _) in fns.items():
            batch = [next(its[m]) for _ in range(inner)]
            t = time.perf_counter()
            for a in batch:
                fn(*a)
            times[m].append((time.perf_counter() - t) / inner * 1e6)
    out = {}
    for m, ts in times.items():
        q1, med, q3 = np.percentile(ts, [25, 50, 75])
        out[m] = {"us": float(med), "iqr": float(q3 - q1), "first_ms": first.get(m)}
    return out


def cache_load_ms() -> float:
    """W2's first three calls in a fresh process whose disk cache holds the module."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); "
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
            "import workloads as W, compiler\n"
            "step, args = W.w2()\n"
            "t = time.perf_counter(); cf = compiler.compile(step)\n"
            "[cf(*args) for _ in range(3)]\n"
            "print((time.perf_counter() - t) * 1e3)\n")
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, DYNGRAD_CACHE_DIR=d)
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
                for _ in range(2)]
    return runs[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "workloads.png")
    args = ap.parse_args(argv)
    samples = 5 if args.quick else 15
    inner = {"W1": 200, "W2": 5, "W3": 2, "W4": 100}
    if args.quick:
        inner = {k: max(1, v // 5) for k, v in inner.items()}
    print(f"load average {os.getloadavg()[0]:.2f}; BLAS threads "
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}", flush=True)
    results = {}
    for name in WORKLOADS:
        print(f"{name}: checking the compiled modes against eager...", flush=True)
        diffs = {m: agree(name, m) for m in ("interp", "llvm")}
        print(f"{name}: timing {', '.join(MODES)}{' and numpy' if name == 'W1' else ''}...",
              flush=True)
        r = measure(name, samples, inner[name])
        r["agreement"] = diffs
        results[name] = r
    results["bounds_us"] = {"W2": bound_w2(), "W3": bound_w3()}
    print("W2 from the disk cache in a new process...", flush=True)
    results["W2"]["llvm"]["cache_first_ms"] = cache_load_ms()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    plot(results, args.plot)
    return results


def report(results: dict) -> None:
    print("\nµs per step, median (IQR); speed-up over dyngrad eager; first 3 calls (trace + "
          "compile)")
    print(f"{'':4} {'mode':7} {'µs/step':>10} {'IQR':>8} {'× eager':>8} {'first ms':>9}")
    for name in WORKLOADS:
        r = results[name]
        e = r["eager"]["us"]
        for m in [*MODES, "numpy"]:
            if m not in r:
                continue
            x = r[m]
            first = f"{x['first_ms']:9.0f}" if x.get("first_ms") is not None else " " * 9
            print(f"{name:4} {m:7} {x['us']:10.1f} {x['iqr']:8.1f} {e / x['us']:8.2f} {first}")
        print(f"{'':4} compiled vs eager, max relative difference: "
              + ", ".join(f"{m} {d:.1e}" for m, d in r["agreement"].items()))
    b = results["bounds_us"]
    print(f"\nW2 bound {b['W2']:.0f} µs: llvm at {results['W2']['llvm']['us'] / b['W2']:.2f}× "
          f"(aim ≤ 1.15×); first calls from the disk cache "
          f"{results['W2']['llvm']['cache_first_ms']:.0f} ms (aim < 50 ms)")
    print(f"W3 bound {b['W3']:.0f} µs: llvm at {results['W3']['llvm']['us'] / b['W3']:.2f}× "
          f"(goal ≤ 2.5×, aim 1.5×)")
    w4 = results["W4"]
    print(f"W4 llvm speed-up over eager {w4['eager']['us'] / w4['llvm']['us']:.1f}× "
          f"(goal ≥ 5×)")


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    names = list(WORKLOADS)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.2
    for k, m in enumerate(MODES):
        ax.bar(np.arange(len(names)) + k * width,
               [results[n]["eager"]["us"] / results[n][m]["us"] for n in names], width,
               label=m)
    ax.set_xticks(np.arange(len(names)) + width, names)
    ax.set_ylabel("speed-up over dyngrad eager")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("dyngrad: compiled vs eager (this machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
