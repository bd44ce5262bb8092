"""Train a small MLP on two interleaved spirals, eagerly and compiled, side by side.

    python examples/train_mlp.py [--epochs N] [--batch B] [--target ACC] [--plot PATH]

Shows the whole workflow as a PyTorch user writes it: a ``nn.Sequential`` of ``nn.Linear``
and ``nn.Tanh`` (2→64→64→2, float32), ``F.cross_entropy``, ``optim.Adam`` with a cosine
learning-rate schedule, and a ``DataLoader`` over a ``TensorDataset`` that reshuffles every
epoch from a fixed seed (so runs repeat exactly). Each step is
``zero_grad() → forward → loss → backward() → step()``.

Two twins train in lockstep on the same batches: one runs that step eagerly, the other runs
the very same Python function under ``@dg.compile`` (forward, backward and Adam traced into
one graph and run as native code). Their losses must agree step for step (float32 rounding:
the compiled kernels sum in their own order); the script asserts it and prints the largest
difference.

Training stops as soon as the train accuracy, measured after each epoch, reaches --target
(99% by default; the script asserts > 95%). Stopping early matters for speed as well as
taste: once the fit is near-perfect, float32 gradients become subnormal and numpy's
arithmetic on subnormals is many times slower.

Prints a progress bar, the final accuracy, and a table of the time per step eager and
compiled (the first compiled calls, which trace and compile, reported apart), and saves the
loss curves and the decision regions as a PNG (default: train_mlp.png next to this script).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path

# Tiny matmuls: waking BLAS worker threads costs more than the work they take over (and on a
# busy 2-core machine they contend with other processes: 10x slower steps were measured), so
# use one thread unless the environment says otherwise. Must precede numpy's import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import progress, pyplot, save  # noqa: E402

import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from dyngrad import nn, optim  # noqa: E402
from dyngrad.utils.data import DataLoader, TensorDataset  # noqa: E402


def two_spirals(n: int, noise: float = 0.15, seed: int = 0):
    """n points per class on two interleaved spirals (float32 features, int64 labels)."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * math.pi
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (3 * math.pi)
    x = np.concatenate([a, -a]) + rng.normal(0, noise / (3 * math.pi) * 3, (2 * n, 2))
    y = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int64)
    return x.astype(np.float32), y


def make_model(seed: int = 0) -> nn.Module:
    dg.manual_seed(seed)   # nn.Linear draws PyTorch's U(-1/√fan_in, 1/√fan_in) init
    return nn.Sequential(nn.Linear(2, 64), nn.Tanh(),
                         nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 2))


def accuracy(model: nn.Module, x: dg.Tensor, y: dg.Tensor) -> float:
    with dg.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150, help="at most this many epochs")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--target", type=float, default=0.99,
                    help="stop once the train accuracy reaches this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)

    x_np, y_np = two_spirals(1000)
    x_all, y_all = dg.from_numpy(x_np), dg.from_numpy(y_np)
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=args.batch, shuffle=True,
                        seed=args.seed)
    model = make_model(args.seed)
    twin = copy.deepcopy(model)  # the compiled one: the same initial weights

    def trainer(m):
        opt = optim.Adam(m.parameters(), lr=args.lr)
        sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs,
                                                     eta_min=args.lr / 20)

        def step(xb, yb):  # a training step, exactly as one writes it eagerly
            opt.zero_grad()
            loss = F.cross_entropy(m(xb), yb)
            loss.backward()
            opt.step()
            return loss
        return step, sched

    eager_step, eager_sched = trainer(model)
    compiled_step, compiled_sched = trainer(twin)
    compiled_step = dg.compile(compiled_step)

    losses, twin_losses, accs, steps = [], [], [], 0
    times = {"eager": [], "compiled": []}
    worst = 0.0  # largest relative difference of the two losses
    bar = progress(range(args.epochs), args.epochs, "epoch")
    for epoch in bar:
        for xb, yb in loader:
            for name, fn, out in (("eager", eager_step, losses),
                                  ("compiled", compiled_step, twin_losses)):
                t0 = time.perf_counter()
                loss = fn(xb, yb)
                times[name].append(time.perf_counter() - t0)
                out.append(loss.item())
            worst = max(worst, abs(twin_losses[-1] - losses[-1]) / abs(losses[-1]))
            steps += 1
        eager_sched.step()
        compiled_sched.step()
        acc = accuracy(model, x_all, y_all)
        accs.append((steps, acc))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-len(loader):]):.3f}", acc=f"{acc:.3f}")
        elif epoch % 10 == 0:
            print(f"epoch {epoch:4d}  loss {losses[-1]:.4f}  train accuracy {acc:.3f}",
                  flush=True)
        if acc >= args.target:
            break
    if hasattr(bar, "close"):
        bar.close()
    acc, twin_acc = accs[-1][1], accuracy(twin, x_all, y_all)
    print(f"\nstopped after {epoch + 1} epochs ({steps} steps): final loss "
          f"{np.mean(losses[-len(loader):]):.4f}, train accuracy {acc * 100:.1f}% eager, "
          f"{twin_acc * 100:.1f}% compiled")
    print(f"losses, compiled vs eager, step for step: largest relative difference {worst:.1e}")
    report(times, compiled_step, args.batch)
    assert acc > 0.95, f"train accuracy {acc:.3f} is not above 95%"
    assert worst < 1e-3, f"compiled and eager losses differ by {worst:.1e} (relative)"
    plot(args.plot, losses, twin_losses, accs, twin, x_np, y_np)
    return acc


def report(times: dict, compiled, batch: int) -> None:
    """The step-time table: medians over the steady-state steps (the compiled function's
    first calls, which trace and compile a variant, apart)."""
    n_first = 3 * len(compiled.variants)  # (each variant: an eager call, a trace, a compile)
    first = sorted(times["compiled"], reverse=True)[:n_first]
    eager = float(np.median(times["eager"])) * 1e6
    comp = float(np.median(times["compiled"])) * 1e6
    print(f"\nstep time (zero_grad + forward + cross-entropy + backward + Adam; batch {batch}, "
          f"2→64→64→2 tanh MLP, float32)")
    print(f"  {'':<22}{'µs per step':>12}{'× eager':>10}")
    print(f"  {'eager':<22}{eager:>12.0f}{1.0:>10.2f}")
    print(f"  {'compiled (llvm)':<22}{comp:>12.0f}{eager / comp:>10.2f}")
    print(f"  compiled: {len(compiled.variants)} variant(s) (the last batch of an epoch is "
          f"smaller), their first calls {sum(first) * 1e3:.0f} ms in all (trace + compile)")


def plot(path: Path, losses, twin_losses, accs, model, x, y) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    k = 16
    for series, color, label in ((losses, "tab:blue", "eager"),
                                 (twin_losses, "tab:orange", "compiled")):
        a1.plot(series, lw=0.5, alpha=0.35, color=color)
        smooth = np.convolve(series, np.ones(k) / k, mode="valid")
        a1.plot(np.arange(k - 1, len(series)), smooth, color=color,
                ls="-" if label == "eager" else "--", label=f"{label} (moving mean of {k})")
    a1.set(xlabel="step", ylabel="cross-entropy", yscale="log",
           title="training loss, eager and compiled twins")
    ax = a1.twinx()
    ax.plot(*zip(*accs), color="tab:green", marker=".", ms=3, lw=1, label="train accuracy")
    ax.set_ylabel("train accuracy (after each epoch)", color="tab:green")
    ax.set_ylim(0.4, 1.01)
    handles = a1.get_legend_handles_labels()[0] + ax.get_legend_handles_labels()[0]
    a1.legend(handles=handles, loc="lower left", fontsize=8)
    g = np.linspace(-1.3, 1.3, 200, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = dg.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
    with dg.no_grad():
        p = F.softmax(model(grid), 1)[:, 1].numpy().reshape(gx.shape)
    a2.contourf(gx, gy, p, levels=20, cmap="RdBu", alpha=0.6)
    a2.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=0.8)
    a2.scatter(x[:, 0], x[:, 1], c=y, s=4, cmap="RdBu", edgecolors="none")
    a2.set(title="compiled model's decision regions (black: p = 0.5)", aspect="equal")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
