"""A character-level GRU trained on this repository's README.md, with a compiled training step
over sequences of varying length, bucketed.

    python examples/char_rnn.py [--steps N] [--hidden H] [--quick] [--plot PATH]

The model reads one line of the README at a time and predicts each next character:
``nn.Embedding`` → ``nn.GRUCell`` run by a Python ``for`` loop over the time steps →
``nn.Linear`` to the vocabulary; cross-entropy ignores the padding, gradients are clipped,
Adam updates. The whole step (forward, loss, ``backward()``, clipping, update) is one
function under ``compiler.compile``.

Note (why the lengths are bucketed): the tracer runs the Python loop and records every
iteration, so the compiled graph is the loop *unrolled* — its length is part of the graph's
structure, and the shape guard on the batch sees it. Each distinct sequence length is
therefore a distinct trace (a variant), compiled separately (about a third of a second of
LLVM time per time step at hidden size 128, once; the disk cache keeps it for later runs), and
``cache_limit`` bounds how many variants a function keeps: 8 by default, after which it runs
eagerly for good. (A symbolic dimension cannot help: it serves sizes used only through
operations' parameters, and ``range(x.shape[1])`` reads this one into Python.) The README's
lines come in dozens of lengths, so the script pads each line to the next of a few bucket
sizes and samples every batch from one bucket: as many variants as buckets, and
``cache_limit`` is set to exactly that so an unexpected shape would show up as a warning
rather than a silent slowdown. The padding is index 0, ignored by the loss.

An eager twin (same weights, same batches) runs the first steps of every bucket in lockstep
to check that compiled losses equal eager's to float32 rounding and to time eager steps.
Prints a progress bar, the time per step eager and compiled for each bucket,
``compiler.explain()`` of the step (its guards and variants; ``--explain-full`` adds the IR)
and text sampled from the trained model; saves the loss curve and the step times as a PNG
(default: char_rnn.png next to this script). A full run compiles four variants (about 9 s
on a 2-core machine the first time — the unrolled steps' kernels share their code, so LLVM
compiles each once; less once LLVM's output is in the disk cache) and trains 600 steps in
about 8 s.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _common import explain_text, progress, pyplot, save  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
import dyngrad.nn.functional as F  # noqa: E402
from dyngrad import nn, optim  # noqa: E402

PAD = 0


class Corpus:
    """The README's lines as index arrays (0 is padding), cut to at most ``buckets[-1] + 1``
    characters and grouped by the bucket their length (minus one: inputs and targets are
    shifted by one character) pads to."""

    def __init__(self, text: str, buckets: tuple[int, ...]) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}
        self.buckets = buckets
        longest = buckets[-1] + 1
        pieces = []
        for line in text.splitlines(keepends=True):
            pieces += [line[i:i + longest] for i in range(0, len(line), longest)]
        pieces = [p for p in pieces if len(p) >= 2]
        self.raw_lengths = {len(p) - 1 for p in pieces}
        self.by_bucket: dict[int, list[np.ndarray]] = {b: [] for b in buckets}
        for p in pieces:
            b = next(b for b in buckets if b >= len(p) - 1)
            ids = np.zeros(b + 1, np.int64)
            ids[:len(p)] = [self.index[c] for c in p]
            self.by_bucket[b].append(ids)

    @property
    def vocab(self) -> int:
        return len(self.chars) + 1

    def batches(self, n: int, batch: int, seed: int = 0):
        """``n`` batches (x, y) of shape (batch, bucket); each bucket is picked with
        probability proportional to its number of lines."""
        rng = np.random.default_rng(seed)
        sizes = np.array([len(self.by_bucket[b]) for b in self.buckets], np.float64)
        for _ in range(n):
            b = self.buckets[rng.choice(len(self.buckets), p=sizes / sizes.sum())]
            rows = self.by_bucket[b]
            pick = np.stack([rows[i] for i in rng.choice(len(rows), batch,
                                                         replace=len(rows) < batch)])
            yield b, dg.from_numpy(pick[:, :-1].copy()), dg.from_numpy(pick[:, 1:].copy())


class CharGRU(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, embed, padding_idx=PAD)
        self.cell = nn.GRUCell(embed, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: dg.Tensor) -> dg.Tensor:
        """x: (batch, time) indices → logits (batch, time, vocab)."""
        e = self.embed(x)
        h = dg.zeros(x.shape[0], self.hidden)
        hs = []
        for t in range(x.shape[1]):  # unrolled by the tracer: one variant per length
            h = self.cell(e[:, t], h)
            hs.append(h)
        return self.head(dg.stack(hs, 1))


def make_step(model: CharGRU, opt: optim.Optimizer):
    def train_step(x, y):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               ignore_index=PAD)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss
    return train_step


@dg.no_grad()
def sample(model: CharGRU, corpus: Corpus, prompt: str, n: int, temperature: float = 0.7,
           seed: int = 0) -> str:
    """Continue ``prompt`` by ``n`` characters, one GRU step at a time (eagerly)."""
    rng = np.random.default_rng(seed)
    h = dg.zeros(1, model.hidden)
    ids = [corpus.index[c] for c in prompt if c in corpus.index]
    out = []
    for i in range(len(ids) + n - 1):
        tok = ids[i] if i < len(ids) else out[-1]
        h = model.cell(model.embed(dg.tensor([tok])), h)
        if i >= len(ids) - 1:
            p = F.softmax(model.head(h)[0] / temperature, 0).numpy().astype(np.float64)
            p[PAD] = 0.0
            out.append(int(rng.choice(len(p), p=p / p.sum())))
    return prompt + "".join(corpus.chars[t - 1] for t in out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--buckets", type=lambda s: tuple(sorted(int(b) for b in s.split(","))),
                    default=(12, 24, 36, 48), help="padded lengths, e.g. 12,24,36,48")
    ap.add_argument("--check", type=int, default=3,
                    help="steps per bucket run by the eager twin too")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="buckets 4,8, hidden 32, 40 steps (for the tests)")
    ap.add_argument("--explain-full", action="store_true",
                    help="print explain()'s whole report (the IR of every variant)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.buckets, args.hidden, args.steps = (4, 8), 32, 40

    corpus = Corpus((ROOT / "README.md").read_text(encoding="utf-8"), args.buckets)
    print(f"README.md: {sum(map(len, corpus.by_bucket.values()))} lines (cut to at most "
          f"{args.buckets[-1] + 1} characters) of {len(corpus.raw_lengths)} distinct lengths, "
          f"padded to {len(args.buckets)} lengths; lines per bucket: "
          + ", ".join(f"{b}: {len(v)}" for b, v in corpus.by_bucket.items()))
    dg.manual_seed(args.seed)
    model = CharGRU(corpus.vocab, 32, args.hidden)
    twin = copy.deepcopy(model)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    twin_opt = optim.Adam(twin.parameters(), lr=args.lr)
    step = compiler.compile(make_step(model, opt), cache_limit=len(args.buckets))
    eager_step = make_step(twin, twin_opt)

    losses, lengths, diffs = [], [], []
    t_comp = {b: [] for b in args.buckets}
    t_eager = {b: [] for b in args.buckets}
    t_first = {}
    twin_alive = True
    seen = {b: 0 for b in args.buckets}
    bar = progress(corpus.batches(args.steps, args.batch, args.seed), args.steps, "step")
    for b, x, y in bar:
        n_var = len(step.variants)
        t0 = time.perf_counter()
        loss = step(x, y).item()
        t = time.perf_counter() - t0
        if len(step.variants) > n_var:
            t_first[b] = t  # this call traced and compiled the bucket's variant
        elif seen[b]:
            t_comp[b].append(t)
        seen[b] += 1
        losses.append(loss)
        lengths.append(b)
        if twin_alive:  # lockstep until every bucket has had its checked steps
            t0 = time.perf_counter()
            eager = eager_step(x, y).item()
            t_eager[b].append(time.perf_counter() - t0)
            diffs.append(abs(loss - eager) / abs(eager))
            twin_alive = min(seen.values()) < args.check
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", variants=len(step.variants))
    if hasattr(bar, "close"):
        bar.close()

    print(f"\n{len(losses)} steps, batch {args.batch}, GRU hidden {args.hidden}: loss "
          f"{np.mean(losses[:20]):.3f} (first 20 steps) → {np.mean(losses[-20:]):.3f} "
          f"(last 20)")
    print(f"{'bucket':>6} {'steps':>6} {'first call (trace + compile)':>29} "
          f"{'eager step':>11} {'compiled step':>14}")
    for b in args.buckets:
        med = lambda ts: f"{np.median(ts) * 1e3:.1f} ms" if ts else "-"
        first = f"{t_first[b]:.2f} s" if b in t_first else "-"
        print(f"{b:6d} {seen[b]:6d} {first:>29} {med(t_eager[b]):>11} {med(t_comp[b]):>14}")
    print(f"compiled vs eager loss, {len(diffs)} lockstep steps: largest relative "
          f"difference {max(diffs):.1e}")

    print("\ncompiler.explain(step):")
    print(explain_text(step, args.explain_full, ("  shape of argument", "  global", "  closure")))
    print("\nsampled (temperature 0.7):")
    print(sample(model, corpus, "The compiler ", 80 if args.quick else 300, seed=args.seed))

    assert step.eager_reason is None, step.eager_reason
    assert len(step.variants) == len([b for b in args.buckets if seen[b]])
    assert max(diffs) < 1e-4, f"compiled losses differ from eager's by {max(diffs):.1e}"
    assert sum(v.calls for v in step.variants) >= args.steps - 2 * len(args.buckets)
    plot(args.plot, losses, lengths, args.buckets, t_eager, t_comp, t_first)
    return {"losses": losses, "variants": len(step.variants), "max_rel_diff": max(diffs),
            "eager_ms": {b: np.median(v) * 1e3 for b, v in t_eager.items() if v},
            "compiled_ms": {b: np.median(v) * 1e3 for b, v in t_comp.items() if v},
            "first_s": t_first}


def plot(path: Path, losses, lengths, buckets, t_eager, t_comp, t_first) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4),
                                 gridspec_kw={"width_ratios": [1.6, 1]})
    steps, lengths = np.arange(len(losses)), np.array(lengths)
    cmap = plt.get_cmap("viridis")
    for k, b in enumerate(buckets):
        sel = lengths == b
        a1.scatter(steps[sel], np.array(losses)[sel], s=5,
                   color=cmap(k / max(len(buckets) - 1, 1)), label=f"length {b}")
    w = min(25, len(losses))
    a1.plot(steps[w - 1:], np.convolve(losses, np.ones(w) / w, "valid"), "k", lw=1.2,
            label=f"moving mean of {w}")
    a1.set(xlabel="step", ylabel="cross-entropy per character", title="training loss")
    a1.legend(fontsize=8, markerscale=2)
    x = np.arange(len(buckets))
    med = lambda d: [np.median(d[b]) * 1e3 if d[b] else np.nan for b in buckets]
    a2.bar(x - 0.2, med(t_eager), 0.4, color="0.6", label="eager step")
    a2.bar(x + 0.2, med(t_comp), 0.4, color="tab:blue", label="compiled step")
    for k, b in enumerate(buckets):
        if b in t_first:
            a2.annotate(f"compile\n{t_first[b]:.1f} s", (x[k] + 0.2, med(t_comp)[k]),
                        ha="center", va="bottom", fontsize=7)
    a2.set(xticks=x, xticklabels=[str(b) for b in buckets], xlabel="sequence length (bucket)",
           ylabel="median ms per step", title="one compiled variant per bucket")
    a2.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
