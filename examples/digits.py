"""Classify scikit-learn's 8×8 handwritten digits with a compiled training step.

    python examples/digits.py [--epochs N] [--quick] [--plot PATH]

The whole training step — ``zero_grad``, forward, cross-entropy, ``backward()`` and the Adam
update — is one function under ``@compiler.compile``: its first call runs eagerly (creating
Adam's state), the next is traced into a graph and compiled to native code, and every later
call with the same argument shapes replays that code. The last batch of an epoch is smaller
(1,347 training images are not a multiple of 64), so its shape guard fails once and a second
variant is traced: two variants serve the whole run.

An identical eager twin (the same initial weights, the same batches) trains in lockstep, so the
script can check that the compiled losses equal eager's to float32 rounding and time both
steps on the same machine at the same moment. Data: ``sklearn.datasets.load_digits`` (1,797
images, bundled with scikit-learn: no download), a stratified 75/25 split, pixels scaled to
[0, 1]; model 64→128→128→10 with ReLU.

Prints a progress bar, the test accuracy (asserted above 95%; above 90% with --quick), the
time per step eager and compiled, and saves a confusion matrix of the test set beside the loss
curves as a PNG (default: digits.png next to this script).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

# Tiny matmuls: waking BLAS worker threads costs more than the work they take over, so use one
# thread unless the environment says otherwise. Must precede numpy's import.
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


def load(seed: int = 0):
    """(x_train, y_train, x_test, y_test) as float32 pixels in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return train_test_split(x, d.target.astype(np.int64), test_size=0.25, stratify=d.target,
                            random_state=seed)


def make_model(seed: int = 0) -> nn.Module:
    dg.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def make_step(model: nn.Module, opt: optim.Optimizer):
    """The whole training step as one function: what ``compile`` traces."""
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return train_step


def predict(model: nn.Module, x: dg.Tensor) -> np.ndarray:
    with dg.no_grad():
        return model(x).argmax(1).numpy()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="6 epochs (for the tests)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    epochs = 6 if args.quick else args.epochs

    x_tr, x_te, y_tr, y_te = load(args.seed)
    train = TensorDataset(dg.from_numpy(x_tr), dg.from_numpy(y_tr))
    loader = DataLoader(train, batch_size=args.batch, shuffle=True, seed=args.seed)

    model = make_model(args.seed)
    twin = copy.deepcopy(model)  # the eager reference: same weights, same batches
    opt = optim.Adam(model.parameters(), lr=args.lr)
    twin_opt = optim.Adam(twin.parameters(), lr=args.lr)
    step = compiler.compile(make_step(model, opt))
    eager_step = make_step(twin, twin_opt)

    losses, eager_losses, t_compiled, t_eager, n = [], [], [], [], 0
    bar = progress(range(epochs), epochs, "epoch")
    for _ in bar:
        for xb, yb in loader:
            t0 = time.perf_counter()
            loss = step(xb, yb)
            t1 = time.perf_counter()
            eager_loss = eager_step(xb, yb)
            t2 = time.perf_counter()
            n += 1
            if n > 2 and len(xb) == args.batch:  # steady state: the full-batch variant
                t_compiled.append(t1 - t0)
                t_eager.append(t2 - t1)
            losses.append(loss.item())
            eager_losses.append(eager_loss.item())
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-len(loader):]):.3f}")
    if hasattr(bar, "close"):
        bar.close()

    pred = predict(model, dg.from_numpy(x_te))
    acc = float((pred == y_te).mean())
    twin_acc = float((predict(twin, dg.from_numpy(x_te)) == y_te).mean())
    a, b = np.array(losses), np.array(eager_losses)
    drift = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-3)))
    us_c, us_e = np.median(t_compiled) * 1e6, np.median(t_eager) * 1e6
    print(f"\n{n} steps over {epochs} epochs (batch {args.batch}); test accuracy "
          f"{acc * 100:.1f}% compiled, {twin_acc * 100:.1f}% eager twin")
    print(f"time per step (median): eager {us_e:.0f} µs, compiled {us_c:.0f} µs "
          f"({us_e / us_c:.1f}x)")
    print(f"compiled variants: {len(step.variants)} (batch sizes "
          f"{sorted({v.arg_meta[0][0][0] for v in step.variants})}); largest relative "
          f"loss difference from eager over all steps: {drift:.1e}")
    for reason in step.fallbacks:  # (the first call: Adam creates its state)
        print(f"  a call ran eagerly: {reason}")

    # the compiled steps really ran, and computed eager's numbers
    assert sum(v.calls for v in step.variants) >= n - 2 * len(step.variants) - 1, \
        "the compiled step did not replay"
    assert drift < 1e-3, f"compiled losses differ from eager's by {drift:.1e}"
    floor = 0.90 if args.quick else 0.95
    assert acc > floor, f"test accuracy {acc:.3f} is not above {floor:.0%}"
    plot(args.plot, losses, eager_losses, y_te, pred, acc, len(loader))
    return {"accuracy": acc, "eager_us": us_e, "compiled_us": us_c,
            "variants": len(step.variants), "drift": drift}


def plot(path: Path, losses, eager_losses, y_true, y_pred, acc: float, per_epoch: int):
    plt = pyplot()
    if plt is None:
        return
    cm = np.zeros((10, 10), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6),
                                 gridspec_kw={"width_ratios": [1, 1.15]})
    a1.imshow(cm, cmap="Blues")
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                a1.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    a1.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true",
           title=f"test set confusion matrix (accuracy {acc * 100:.1f}%)")
    steps = np.arange(1, len(losses) + 1)
    a2.plot(steps, eager_losses, lw=2.5, alpha=0.4, color="tab:orange", label="eager twin")
    a2.plot(steps, losses, lw=0.6, color="tab:blue", label="compiled step")
    ends = np.arange(per_epoch, len(losses) + 1, per_epoch)  # (the dips are the 3-image
    means = [np.mean(losses[e - per_epoch:e]) for e in ends]  # last batches)
    a2.plot(ends, means, "k.-", lw=1, label="compiled, mean per epoch")
    a2.set(xlabel=f"step ({per_epoch} per epoch)", ylabel="cross-entropy", yscale="log",
           title="training loss: compiled and eager")
    a2.legend()
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
