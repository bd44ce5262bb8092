"""Convolutional networks on scikit-learn's digits, upsampled: LeNet and a small ResNet, each
trained by a compiled step beside an eager twin.

    python examples/cnn_digits.py [--epochs N] [--size PIXELS] [--quick] [--plot PATH]

The 8×8 digits (1,797 images bundled with scikit-learn: no download) are upsampled to
28×28 (LeNet) or ``--size`` pixels (the ResNet, 16 by default) with ``F.interpolate``
(bilinear) and split 75/25, stratified. Two models
with PyTorch's layers and names:

- **LeNet-5**: Conv2d(1, 6, 5, padding=2) → ReLU → MaxPool2d(2) → Conv2d(6, 16, 5) → ReLU →
  MaxPool2d(2) → Flatten → Linear → ReLU → Linear → ReLU → Linear(84, 10);
- **a small ResNet**: a 3×3 stem with BatchNorm, two residual blocks (the second halves the
  resolution, with a 1×1 convolution on its shortcut), AdaptiveAvgPool2d(1), Linear(32, 10).

Each trains with Adam (LeNet, with no BatchNorm, at three times the step for twice the
epochs); the whole step (forward, cross-entropy, ``backward()``, the update and
BatchNorm's running statistics) is one compiled function, and an eager twin with the same
initial weights takes the same batches, so the script checks that the compiled losses equal
eager's over the first 10 steps (within 1e-3: Adam's first steps turn the rounding of
near-zero gradients into steps of ±lr, and training amplifies such differences — the
compiled sums add in another fixed order, their gradients as close to float64's as eager's),
reports the largest difference over the whole run, and checks that both reach the same
accuracy within 3 points. Prints a progress bar, the test accuracy of each model (above
97% asserted; above 85% with --quick), the time per step compiled and eager, and writes the
loss curves and the accuracies as a PNG (default: cnn_digits.png next to this script).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import progress, pyplot, save  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from dyngrad import nn, optim  # noqa: E402
from dyngrad.utils.data import DataLoader, TensorDataset  # noqa: E402


def load(size: int, seed: int = 0):
    """(x_train, x_test, y_train, y_test): (N, 1, size, size) float32 images in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = dg.tensor((d.images / 16.0).astype(np.float32)[:, None])
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).numpy()
    return train_test_split(x, d.target.astype(np.int64), test_size=0.25, stratify=d.target,
                            random_state=seed)


class LeNet(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        flat = ((size // 2 - 4) // 2) ** 2 * 16
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84),
                                        nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    """A basic residual block: two 3×3 convolutions with BatchNorm; a strided 1×1
    convolution on the shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(Block(16, 16), Block(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def make_step(model: nn.Module, opt: optim.Optimizer):
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return train_step


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with dg.no_grad():
        pred = model(dg.from_numpy(x)).argmax(1).numpy()
    model.train()
    return float((pred == y).mean())


def train(name: str, model: nn.Module, loader, epochs: int, lr: float, data) -> dict:
    twin = copy.deepcopy(model)
    opt, twin_opt = optim.Adam(model.parameters(), lr=lr), optim.Adam(twin.parameters(), lr=lr)
    step, eager_step = compiler.compile(make_step(model, opt)), make_step(twin, twin_opt)
    losses, eager_losses, t_c, t_e = [], [], [], []
    bar = progress(range(epochs), epochs, f"{name} epoch")
    for _ in bar:
        for xb, yb in loader:
            t0 = time.perf_counter()
            loss = step(xb, yb)
            t1 = time.perf_counter()
            eager_loss = eager_step(xb, yb)
            t2 = time.perf_counter()
            if len(losses) > 2 and len(xb) == loader.batch_size:
                t_c.append(t1 - t0)
                t_e.append(t2 - t1)
            losses.append(loss.item())
            eager_losses.append(eager_loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-len(loader):]):.3f}")
    if hasattr(bar, "close"):
        bar.close()
    x_tr, x_te, y_tr, y_te = data
    a, b = np.array(losses), np.array(eager_losses)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-3)
    drift, drift10 = float(np.max(rel)), float(np.max(rel[:10]))
    acc, twin_acc = accuracy(model, x_te, y_te), accuracy(twin, x_te, y_te)
    us_c, us_e = np.median(t_c) * 1e6, np.median(t_e) * 1e6
    print(f"\n{name}: {len(losses)} steps; test accuracy {acc * 100:.1f}% compiled, "
          f"{twin_acc * 100:.1f}% eager twin; time per step (median) eager {us_e:.0f} µs, "
          f"compiled {us_c:.0f} µs ({us_e / us_c:.1f}x); largest relative loss difference "
          f"from eager: {drift10:.1e} over the first 10 steps, {drift:.1e} over all; "
          f"variants {len(step.variants)}")
    for reason in step.fallbacks:
        print(f"  a call ran eagerly: {reason}")
    assert sum(v.calls for v in step.variants) > 0, "the compiled step did not replay"
    assert drift10 < 1e-3, f"{name}: compiled losses differ from eager's by {drift10:.1e}"
    assert abs(acc - twin_acc) <= 0.03, f"{name}: accuracy {acc:.3f} compiled, " \
                                        f"{twin_acc:.3f} eager"
    return {"losses": losses, "eager_losses": eager_losses, "accuracy": acc,
            "eager_us": us_e, "compiled_us": us_c, "drift": drift, "drift10": drift10}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="the ResNet's (LeNet: twice)")
    ap.add_argument("--size", type=int, default=16, help="the ResNet's input (LeNet: 28)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="4 epochs, LeNet at 16×16 and the ResNet at 12×12 (for the tests)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    epochs = 4 if args.quick else args.epochs
    sizes = {"LeNet": 16 if args.quick else 28, "ResNet": 12 if args.quick else args.size}
    results, per_epoch = {}, 0
    for name, make, lr, n in (("LeNet", LeNet, 3 * args.lr, 2 * epochs),
                              ("ResNet", lambda size: SmallResNet(), args.lr, epochs)):
        data = load(sizes[name], args.seed)  # (LeNet, with no BatchNorm, learns slower:
        x_tr, x_te, y_tr, y_te = data          #  larger steps, twice the epochs — cheap)
        loader = DataLoader(TensorDataset(dg.from_numpy(x_tr), dg.from_numpy(y_tr)),
                            batch_size=args.batch, shuffle=True, seed=args.seed)
        per_epoch = len(loader)
        dg.manual_seed(args.seed)
        results[name] = train(name, make(sizes[name]), loader, n, lr, data)
    floor = 0.80 if args.quick else 0.97
    for name, r in results.items():
        assert r["accuracy"] > floor, f"{name}: test accuracy {r['accuracy']:.3f} is not " \
                                      f"above {floor:.0%}"
    plot(args.plot, results, per_epoch)
    return results


def plot(path: Path, results: dict, per_epoch: int) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        steps = np.arange(1, len(r["losses"]) + 1)
        ax.plot(steps, r["eager_losses"], lw=2.5, alpha=0.4, color="tab:orange",
                label="eager twin")
        ax.plot(steps, r["losses"], lw=0.7, color="tab:blue", label="compiled step")
        ax.set(xlabel=f"step ({per_epoch} per epoch)", ylabel="cross-entropy", yscale="log",
               title=f"{name}: test accuracy {r['accuracy'] * 100:.1f}%; step "
                     f"{r['compiled_us'] / 1e3:.1f} ms compiled, {r['eager_us'] / 1e3:.1f} ms "
                     f"eager")
        ax.legend()
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
