"""Per-op overhead of dyngrad's eager dispatch over the raw numpy call, on small arrays.

    python benchmarks/eager_overhead.py [--quick] [--json PATH] [--plot PATH]

For each op: the numpy call alone, dyngrad without autograd (inputs not requiring grad),
dyngrad recording a backward node, and PyTorch eager when torch is installed. Times are the
best of several repeats (µs per call). Also measured: the cost of the dispatch-mode check that
eager pays when no mode is active (one truthiness test of the thread-local mode stack).
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dyngrad as dg  # noqa: E402
from dyngrad.dispatch import STATE  # noqa: E402


def best_us(fn, number: int, repeat: int = 5) -> float:
    fn()
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def cases(n: int = 8, m: int = 32):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, n)).astype(np.float32)
    b = rng.standard_normal((m, n)).astype(np.float32)
    w = rng.standard_normal((n, n)).astype(np.float32)
    ta, tb, tw = dg.tensor(a), dg.tensor(b), dg.tensor(w)
    ga = dg.tensor(a, requires_grad=True)
    gw = dg.tensor(w, requires_grad=True)
    return [
        ("add", lambda: np.add(a, b), lambda: ta + tb, lambda: ga + tb, "add"),
        ("mul scalar", lambda: a * 2.0, lambda: ta * 2.0, lambda: ga * 2.0, "mul_scalar"),
        ("exp", lambda: np.exp(a), lambda: ta.exp(), lambda: ga.exp(), "exp"),
        ("tanh", lambda: np.tanh(a), lambda: ta.tanh(), lambda: ga.tanh(), "tanh"),
        ("sum", lambda: a.sum(), lambda: ta.sum(), lambda: ga.sum(), "sum"),
        ("sum(dim=1)", lambda: a.sum(axis=1), lambda: ta.sum(1), lambda: ga.sum(1), "sum1"),
        ("matmul", lambda: a @ w, lambda: ta @ tw, lambda: ga @ gw, "matmul"),
        ("transpose", lambda: a.T, lambda: ta.T, lambda: ga.T, "t"),
        ("reshape", lambda: a.reshape(-1), lambda: ta.reshape(-1), lambda: ga.reshape(-1),
         "reshape"),
        ("getitem [1:5]", lambda: a[1:5], lambda: ta[1:5], lambda: ga[1:5], "slice"),
    ], (a, b, w)


def torch_cases(arrays):
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(1)
    a, b, w = (torch.from_numpy(x.copy()) for x in arrays)
    ga = a.clone().requires_grad_()
    gw = w.clone().requires_grad_()
    return {
        "add": (lambda: a + b, lambda: ga + b), "mul_scalar": (lambda: a * 2.0, lambda: ga * 2.0),
        "exp": (lambda: a.exp(), lambda: ga.exp()), "tanh": (lambda: a.tanh(), lambda: ga.tanh()),
        "sum": (lambda: a.sum(), lambda: ga.sum()), "sum1": (lambda: a.sum(1), lambda: ga.sum(1)),
        "matmul": (lambda: a @ w, lambda: ga @ gw), "t": (lambda: a.T, lambda: ga.T),
        "reshape": (lambda: a.reshape(-1), lambda: ga.reshape(-1)),
        "slice": (lambda: a[1:5], lambda: ga[1:5]),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--plot", type=Path, default=Path("benchmarks/eager_overhead.png"),
                    help="write a bar chart (needs matplotlib)")
    args = ap.parse_args(argv)
    number = 2000 if args.quick else 20000
    rows, arrays = cases()
    tcases = torch_cases(arrays)
    results = []
    head = f"{'op':<16}{'numpy':>9}{'dg':>9}{'dg+grad':>10}{'overhead':>10}"
    head += f"{'torch':>9}{'torch+grad':>12}" if tcases else ""
    print(f"per-call time in µs (best of 5 × {number} calls), float32 32×8 inputs")
    print(head)
    for name, f_np, f_dg, f_grad, key in rows:
        r = {"op": name, "numpy_us": best_us(f_np, number), "dyngrad_us": best_us(f_dg, number),
             "dyngrad_grad_us": best_us(f_grad, number // 2)}
        r["overhead_us"] = r["dyngrad_us"] - r["numpy_us"]
        line = (f"{name:<16}{r['numpy_us']:>9.2f}{r['dyngrad_us']:>9.2f}"
                f"{r['dyngrad_grad_us']:>10.2f}{r['overhead_us']:>10.2f}")
        if key in tcases:
            r["torch_us"] = best_us(tcases[key][0], number)
            r["torch_grad_us"] = best_us(tcases[key][1], number // 2)
            line += f"{r['torch_us']:>9.2f}{r['torch_grad_us']:>12.2f}"
        print(line, flush=True)
        results.append(r)
    mode_check = best_us(lambda: STATE.modes, number * 10) - best_us(lambda: None, number * 10)
    print(f"\ndispatch-mode check with no mode active: {mode_check * 1000:.0f} ns per op")
    out = {"ops": results, "mode_check_ns": mode_check * 1000, "numpy": np.__version__}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    _plot(results, args.plot)
    return out


def _plot(results, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    names = [r["op"] for r in results]
    x = np.arange(len(names))
    cols = [("numpy_us", "numpy"), ("dyngrad_us", "dyngrad"), ("dyngrad_grad_us", "dyngrad+grad")]
    if "torch_us" in results[0]:
        cols += [("torch_us", "torch"), ("torch_grad_us", "torch+grad")]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(cols)
    for i, (key, label) in enumerate(cols):
        ax.bar(x + i * width, [r.get(key, 0) for r in results], width, label=label)
    ax.set_xticks(x + width * (len(cols) - 1) / 2, names, rotation=20)
    ax.set_ylabel("µs per call")
    ax.set_title("eager per-op time on small arrays")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
