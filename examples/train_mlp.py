"""Train a small MLP on two interleaved spirals, eagerly, with plain dyngrad tensors.

    python examples/train_mlp.py [--steps N] [--plot PATH]

Shows the whole eager workflow: parameters as leaf tensors with requires_grad, a forward
pass, a stable softmax cross-entropy, ``loss.backward()``, an Adam update under ``no_grad``
and ``.grad`` reset to None. Prints progress, the final accuracy (>95% expected) and the
per-step time, and saves the loss curve and the decision regions as a PNG.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dyngrad as dg  # noqa: E402


def two_spirals(n: int, noise: float = 0.15, seed: int = 0):
    """n points per class on two interleaved spirals (float32 features, int64 labels)."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * math.pi
    a = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (3 * math.pi)
    x = np.concatenate([a, -a]) + rng.normal(0, noise / (3 * math.pi) * 3, (2 * n, 2))
    y = np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int64)
    return x.astype(np.float32), y


def init_params(sizes, seed: int = 0):
    """PyTorch's Linear initialisation: U(-1/√fan_in, 1/√fan_in)."""
    dg.manual_seed(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(fan_in)
        w = (dg.rand(fan_in, fan_out) * (2 * bound) - bound).requires_grad_()
        b = (dg.rand(fan_out) * (2 * bound) - bound).requires_grad_()
        params += [w, b]
    return params


def forward(params, x):
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = h.tanh()
    return h


def cross_entropy(logits, y):
    """Mean negative log-likelihood of the labels under softmax(logits), computed stably."""
    logp = logits.log_softmax(1)
    return -logp.gather(1, y.unsqueeze(1)).mean()


class Adam:
    """Adam written with dyngrad ops (the toolkit's dg.optim comes in the next issue)."""

    def __init__(self, params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m = [dg.zeros_like(p) for p in params]
        self.v = [dg.zeros_like(p) for p in params]
        self.t = 0

    @dg.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            m.mul_(b1).add_(g * (1 - b1))
            v.mul_(b2).add_(g * g * (1 - b2))
            p.sub_(self.lr * (m / c1) / ((v / c2).sqrt() + self.eps))

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def progress(iterable, total):
    try:
        from tqdm import tqdm
        return tqdm(iterable, total=total, ncols=80)
    except ImportError:
        return iterable


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--plot", type=Path, default=Path("examples/train_mlp.png"))
    args = ap.parse_args(argv)

    x_np, y_np = two_spirals(1000)
    x_all, y_all = dg.from_numpy(x_np), dg.from_numpy(y_np)
    params = init_params([2, 64, 64, 2])
    opt = Adam(params, lr=1e-2)
    rng = np.random.default_rng(1)
    losses = []
    start = time.perf_counter()
    bar = progress(range(args.steps), args.steps)
    for step in bar:
        idx = rng.integers(0, len(y_np), args.batch)
        xb, yb = x_all[dg.tensor(idx)], y_all[dg.tensor(idx)]
        opt.zero_grad()
        loss = cross_entropy(forward(params, xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if hasattr(bar, "set_postfix") and step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        elif not hasattr(bar, "set_postfix") and step % 250 == 0:
            print(f"step {step:5d}  loss {losses[-1]:.4f}", flush=True)
    elapsed = time.perf_counter() - start
    with dg.no_grad():
        acc = (forward(params, x_all).argmax(1) == y_all).float().mean().item()
    print(f"\nfinal loss {np.mean(losses[-50:]):.4f}   train accuracy {acc * 100:.1f}%")
    print(f"eager step time: {elapsed / args.steps * 1e6:.0f} µs per step "
          f"(batch {args.batch}, 2→64→64→2 tanh MLP, Adam)")
    plot(args.plot, losses, params, x_np, y_np)
    return acc


def plot(path: Path, losses, params, x, y) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; `pip install .[examples]`)")
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(losses, lw=0.8)
    a1.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="training loss")
    g = np.linspace(-1.3, 1.3, 200, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    grid = dg.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1))
    with dg.no_grad():
        p = forward(params, grid).softmax(1)[:, 1].numpy().reshape(gx.shape)
    a2.contourf(gx, gy, p, levels=20, cmap="RdBu", alpha=0.6)
    a2.scatter(x[:, 0], x[:, 1], c=y, s=4, cmap="RdBu", edgecolors="none")
    a2.set(title="decision regions", aspect="equal")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
