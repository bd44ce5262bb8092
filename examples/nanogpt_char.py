"""nanoGPT trained by a compiled step on Python's standard-library source, character by
character, then sampled.

    python examples/nanogpt_char.py [--steps N] [--quick] [--plot PATH] [--explain-full]

The model (nanoGPT's own model.py, the corpus's port), its optimizer and its schedule are
nanoGPT's (benchmarks/nanogpt.py, shared with the benchmark suite's workload W8), in
nanoGPT's CPU configuration: 4 layers of causal self-attention
(``F.scaled_dot_product_attention(..., is_causal=True)``) with 4 heads, 128 wide, a context
of 64 characters, batches of 12, no dropout, no biases; AdamW with every 2-D parameter
decayed (0.1) and the rest not, gradients clipped at norm 1.0, the learning rate warmed up
over 100 steps to 1e-3 and decayed along a cosine to 1e-4 at the last step. The text is the
source of a dozen standard-library modules (argparse, inspect, typing, …, read from this
interpreter's library: no download), about 820K characters of 96 distinct ones, split 90/10
into training and validation text as nanoGPT's ``prepare.py`` does.

The training iteration of nanoGPT's ``train.py`` — forward with targets, ``backward()``,
``clip_grad_norm_``, ``optimizer.step()``, ``zero_grad(set_to_none=True)`` — is one function
under ``compiler.compile``; the loop around it sets each step's learning rate into the
optimizer's groups (the compiled step reads it as a run-time number: one variant for the
whole run) and, every ``--eval-interval`` steps, estimates the training and validation loss
as ``train.py``'s ``estimate_loss`` does (``model.eval()``, averaged batches under
``no_grad``, ``model.train()``), with the evaluation compiled too. An eager twin (same
weights, same batches) runs the first ``--check`` steps in lockstep, to check that the
compiled losses equal eager's to float32 rounding and to time eager steps.

Prints a progress bar, the losses at each evaluation, the time per step eager and compiled,
``compiler.explain()`` of the step (``--explain-full`` adds its IR) and text sampled from the
trained model as nanoGPT's ``sample.py`` does (``generate``: temperature, the ``top_k``
likeliest characters, ``multinomial``), and saves the loss curves as a PNG (default:
nanogpt_char.png next to this script). The full run takes the loss from ln 96 ≈ 4.56 to
below 2.0 (asserted; about 1.35 on the training text and 1.7 on the validation text at the
end) in nanoGPT's 2,000 steps: two and a half minutes on a 2-core AMD EPYC, the kernels on
one thread as ``OMP_NUM_THREADS=1`` (set below unless already set) asks — about 63 ms a
step compiled, 108 ms eager, 2 s to trace and compile the step. ``--quick`` (the CI form)
trains a 2-layer, 32-wide model for 60 steps in a few seconds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from benchmarks import nanogpt  # noqa: E402


def estimate_loss(evaluate, model: nanogpt.GPT, text: nanogpt.CharText,
                  rng: np.random.Generator, iters: int, batch_size: int) -> dict:
    """``train.py``'s ``estimate_loss``: the mean loss over ``iters`` random batches of
    each split, in eval mode, without gradients (``evaluate(x, y)`` is the loss)."""
    out = {}
    model.eval()
    with dg.no_grad():
        for split in ("train", "val"):
            out[split] = float(np.mean([
                evaluate(*text.batch(rng, batch_size, model.config.block_size, split)).item()
                for _ in range(iters)]))
    model.train()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000,
                    help="training steps (the schedule decays over them, as nanoGPT's "
                    "lr_decay_iters = max_iters)")
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--check", type=int, default=20,
                    help="steps run by the eager twin too")
    ap.add_argument("--samples", type=int, default=400, help="characters to sample")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--quick", action="store_true",
                    help="2 layers of 2 heads, 32 wide, context 16, batch 4, 60 steps (for "
                    "the tests)")
    ap.add_argument("--explain-full", action="store_true",
                    help="print explain()'s whole report (the IR of every variant)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.eval_interval, args.eval_iters = 60, 20, 4
        args.check, args.samples = 10, 80

    text = nanogpt.CharText(nanogpt.stdlib_text())
    config, train = nanogpt.QUICK if args.quick else nanogpt.CPU
    config = dataclasses.replace(config, vocab_size=text.vocab_size)
    train = dataclasses.replace(train, lr_decay_iters=args.steps,
                                warmup_iters=min(train.warmup_iters, args.steps // 10))
    print(f"text: {len(text.train) + len(text.val):,} characters of "
          f"{len(nanogpt.STDLIB_MODULES)} standard-library modules, {text.vocab_size} "
          f"distinct; {len(text.train):,} for training, {len(text.val):,} for validation")
    dg.manual_seed(args.seed)
    model = nanogpt.GPT(config)
    twin = copy.deepcopy(model)
    opt = nanogpt.configure_optimizers(model, train)
    twin_opt = nanogpt.configure_optimizers(twin, train)
    print(f"model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, "
          f"context {config.block_size}; {model.get_num_params():,} parameters; batch "
          f"{train.batch_size}, AdamW groups of {len(opt.param_groups[0]['params'])} decayed "
          f"and {len(opt.param_groups[1]['params'])} undecayed tensors")
    step = compiler.compile(nanogpt.make_step(model, opt, train.grad_clip))
    eager_step = nanogpt.make_step(twin, twin_opt, train.grad_clip)
    evaluate = compiler.compile(lambda x, y: model(x, y)[1])

    rng, eval_rng = np.random.default_rng(args.seed), np.random.default_rng(args.seed + 1)
    losses, lrs, evals, diffs, t_comp, t_eager = [], [], [], [], [], []
    t_first = None
    bar = progress(range(args.steps), args.steps, "step")
    for it in bar:
        lr = nanogpt.get_lr(it, train)
        nanogpt.set_lr(opt, lr)
        if it % args.eval_interval == 0:
            evals.append((it, estimate_loss(evaluate, model, text, eval_rng, args.eval_iters,
                                            train.batch_size)))
        x, y = text.batch(rng, train.batch_size, config.block_size)
        n_var = len(step.variants)
        t0 = time.perf_counter()
        loss = step(x, y).item()
        t = time.perf_counter() - t0
        if len(step.variants) > n_var:
            t_first = t  # this call traced and compiled the step
        elif it >= 2:
            t_comp.append(t)
        losses.append(loss)
        lrs.append(lr)
        if it < args.check:  # the twin, in lockstep
            nanogpt.set_lr(twin_opt, lr)
            t0 = time.perf_counter()
            eager = eager_step(x, y).item()
            t_eager.append(time.perf_counter() - t0)
            diffs.append(abs(loss - eager) / abs(eager))
        if hasattr(bar, "set_postfix") and it % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.1e}")
    if hasattr(bar, "close"):
        bar.close()
    evals.append((args.steps, estimate_loss(evaluate, model, text, eval_rng,
                                            args.eval_iters, train.batch_size)))

    print(f"\n{args.steps} steps: training loss {np.mean(losses[:10]):.3f} (first 10 steps) "
          f"→ {np.mean(losses[-20:]):.3f} (last 20)")
    print(f"{'step':>6} {'train loss':>11} {'val loss':>9}")
    for it, e in evals:
        print(f"{it:6d} {e['train']:11.4f} {e['val']:9.4f}")
    med = lambda ts: np.median(ts[2:] if len(ts) > 4 else ts) * 1e3  # noqa: E731
    print(f"step time: eager {med(t_eager):.1f} ms, compiled {np.median(t_comp) * 1e3:.1f} ms "
          f"({med(t_eager) / (np.median(t_comp) * 1e3):.1f}× eager); the first call traced "
          f"and compiled it in {t_first:.2f} s")
    print(f"compiled vs eager loss, {len(diffs)} lockstep steps: largest relative "
          f"difference {max(diffs):.1e}")

    print("\ncompiler.explain(step):")
    print(explain_text(step, args.explain_full, ("  shape of argument",)))

    prompt = "def "
    model.eval()
    dg.manual_seed(args.seed)
    idx = dg.tensor([text.encode(prompt)])
    out = model.generate(idx, args.samples, temperature=args.temperature, top_k=args.top_k)
    sampled = text.decode(out[0].tolist())
    print(f"\nsampled (temperature {args.temperature}, top_k {args.top_k}):")
    print(sampled)

    assert step.eager_reason is None, step.eager_reason
    assert len(step.variants) == 1, f"the step compiled {len(step.variants)} variants"
    assert sum(v.calls for v in step.variants) == args.steps - 1  # (the first traced it)
    assert max(diffs) < 1e-4, f"compiled losses differ from eager's by {max(diffs):.1e}"
    final = evals[-1][1]
    if args.quick:
        assert np.mean(losses[-10:]) < np.mean(losses[:10]), "the loss did not fall"
    else:
        assert final["train"] < 2.0, f"training loss {final['train']:.3f}, not below 2.0"
    plot(args.plot, losses, lrs, evals, config)
    return {"losses": losses, "evals": evals, "max_rel_diff": max(diffs),
            "eager_ms": med(t_eager), "compiled_ms": np.median(t_comp) * 1e3,
            "first_s": t_first, "sample": sampled}


def plot(path: Path, losses, lrs, evals, config) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    steps = np.arange(len(losses))
    ax.plot(steps, losses, color="0.75", lw=0.6, label="training batch")
    w = min(50, len(losses))
    ax.plot(steps[w - 1:], np.convolve(losses, np.ones(w) / w, "valid"), "k", lw=1.2,
            label=f"moving mean of {w}")
    its = [it for it, _ in evals]
    ax.plot(its, [e["train"] for _, e in evals], "o-", color="tab:blue", ms=4,
            label="estimated, training text")
    ax.plot(its, [e["val"] for _, e in evals], "s-", color="tab:orange", ms=4,
            label="estimated, validation text")
    ax.axhline(2.0, color="tab:red", lw=0.8, ls=":")
    ax.set(xlabel="step", ylabel="cross-entropy per character (nats)",
           title=f"nanoGPT ({config.n_layer} layers, {config.n_embd} wide), compiled, on "
                 f"standard-library source")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, lrs, color="tab:green", lw=0.8, alpha=0.6)
    lr_ax.set_ylabel("learning rate", color="tab:green")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
