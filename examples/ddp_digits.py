"""LeNet on scikit-learn's digits, data-parallel: every rank trains on its share of each batch
and DistributedDataParallel averages the gradients, so the result is the single-process one.

    python -m dyngrad.distributed.run -n 2 examples/ddp_digits.py [--epochs N] [--quick]

The model and data are examples/cnn_digits.py's (LeNet-5, the 8×8 digits upsampled and split
75/25). A ``DistributedSampler`` (shuffled, reseeded each epoch with ``set_epoch``) gives
rank r every world-size-th index of each epoch's permutation, and each rank's
``DataLoader`` batches its share: a global batch of ``--batch`` samples is ``--batch /
world size`` on each rank. The training step is the plain PyTorch one — ``zero_grad``,
forward, cross-entropy, ``backward()`` (which averages the gradients over the ranks), an
Adam step — eager.

Rank 0 then trains a single-process twin from the same initial weights on the same global
batches (each the concatenation of the ranks' batches) and checks that the parameters are
equal to rounding (largest difference relative to the largest parameter below 1e-10). The
model is in float64 so that "equal" is visible: in float32 the two runs also start equal
to rounding, but one batch of 64 and two of 32 sum their gradients in different orders,
and training amplifies those differences of an ulp as it does between any two BLAS
libraries. It prints the test accuracy (above 95% asserted; 80% with ``--quick``), checks
that a checkpoint saved by rank 0 loads back, and plots both loss curves (default:
ddp_digits.png beside this script). Started without the launcher, it is a job of one rank.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pyplot, save  # noqa: E402
from cnn_digits import LeNet, load  # noqa: E402

import dyngrad as dg  # noqa: E402
import dyngrad.distributed as dist  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from dyngrad import nn, optim  # noqa: E402
from dyngrad.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402


def make_loaders(dataset, world: int, batch: int, seed: int) -> list:
    """One (sampler, loader) per rank: rank r's share of every epoch's permutation."""
    out = []
    for r in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=r, shuffle=True,
                                     seed=seed)
        out.append((sampler, DataLoader(dataset, batch_size=batch // world, sampler=sampler)))
    return out


def train_ddp(model, loader, sampler, epochs: int, lr: float) -> list:
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = optim.Adam(ddp.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()  # (averages the gradients over the ranks)
            opt.step()
            total = loss.detach().clone()
            dist.all_reduce(total, op=dist.ReduceOp.AVG)  # (the global batch's loss)
            losses.append(total.item())
    return losses


def train_single(model, loaders, epochs: int, lr: float) -> list:
    """The single-process twin: one step per global batch, the ranks' batches joined."""
    opt = optim.Adam(model.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        for sampler, _ in loaders:
            sampler.set_epoch(epoch)
        for parts in zip(*[loader for _, loader in loaders]):
            x = dg.cat([p[0] for p in parts])
            y = dg.cat([p[1] for p in parts])
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with dg.no_grad():
        pred = model(dg.from_numpy(x)).argmax(1).numpy()
    model.train()
    return float((pred == y).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64, help="the global batch (all ranks)")
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="7 epochs at 16×16 (for the tests)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the world size {world}")
    epochs, size = (7, 16) if args.quick else (args.epochs, 28)

    x_tr, x_te, y_tr, y_te = (a.astype(np.float64) if a.dtype == np.float32 else a
                              for a in load(size, args.seed))
    dataset = TensorDataset(dg.from_numpy(x_tr), dg.from_numpy(y_tr))
    loaders = make_loaders(dataset, world, args.batch, args.seed)
    dg.manual_seed(args.seed + rank)  # (DDP broadcasts rank 0's initial weights)
    model = LeNet(size).double()
    t0 = time.perf_counter()
    losses = train_ddp(model, loaders[rank][1], loaders[rank][0], epochs, args.lr)
    seconds = time.perf_counter() - t0

    if rank == 0:
        print(f"{world} ranks, {len(losses)} steps of {args.batch} samples "
              f"({args.batch // world} per rank) in {seconds:.1f} s; loss {losses[0]:.3f} → "
              f"{losses[-1]:.3f}")
        acc = accuracy(model, x_te, y_te)
        print(f"test accuracy {acc * 100:.1f}%")
        dg.manual_seed(args.seed)
        twin = LeNet(size).double()
        twin_losses = train_single(twin, loaders, epochs, args.lr)
        scale = max(float(p.detach().abs().max()) for p in twin.parameters())
        diff = max(float((p - q).detach().abs().max())
                   for p, q in zip(model.parameters(), twin.parameters())) / scale
        print(f"largest difference from the single-process run: {diff:.1e} (relative to "
              f"the largest parameter: float64 rounding)")
        assert diff <= 1e-10, f"data-parallel training differs from one process by {diff:.1e}"
        floor = 0.80 if args.quick else 0.95
        assert acc > floor, f"test accuracy {acc:.3f} is not above {floor:.0%}"
        with tempfile.TemporaryDirectory() as tmp:  # (a checkpoint: rank 0 saves it)
            path = Path(tmp) / "lenet.npz"
            dg.save(model.state_dict(), path)
            again = LeNet(size).double()
            again.load_state_dict(dg.load(path))
            assert accuracy(again, x_te, y_te) == acc
        plot(args.plot, losses, twin_losses, world)
    dist.barrier()  # (the other ranks wait, idle, while rank 0 checks)
    dist.destroy_process_group()


def plot(path: Path, losses: list, twin: list, world: int) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(twin, label="one process, whole batches", lw=3, alpha=0.5)
    ax.plot(losses, label=f"{world} ranks, DistributedDataParallel", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (global batch)")
    ax.set_title("LeNet on digits: data-parallel equals one process")
    ax.legend()
    fig.tight_layout()
    save(fig, path, "loss curves")


if __name__ == "__main__":
    main()
