"""nanoGPT in dyngrad — the model, its optimizer groups, its learning-rate schedule and
character-level text from Python's standard library — shared by workload W8
(benchmarks/workloads.py) and examples/nanogpt_char.py.

The model is nanoGPT's own ``model.py`` (karpathy/nanoGPT, MIT): the corpus's port,
tests/corpus/nanogpt_model.py — verbatim but for its three import lines — loaded as a
module by the corpus's own loader (:func:`model_module`); for PyTorch the loader turns the
port's recorded import lines back, so the mirror runs the very same source on PyTorch. Its
modules carry PyTorch's parameter names, so the mirrors copy the weights by name. Attention
takes nanoGPT's "flash" path, ``F.scaled_dot_product_attention(q, k, v, is_causal=True)``
(the framework has SDPA).
:func:`GPT` and :func:`configure_optimizers` build the model and nanoGPT's AdamW groups
(every 2-D parameter decayed, the rest not) with nanoGPT's progress prints silenced;
:func:`get_lr` is ``train.py``'s cosine schedule with linear warm-up.

:data:`CPU` is nanoGPT's CPU configuration (its README: ``--device=cpu --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`` over ``config/train_shakespeare_char.py``). ``bias`` is ``train.py``'s
default, False (``GPTConfig``'s own default, True, is what ``train.py`` overrides), so the
Linear layers have no bias and the LayerNorms none either (nanoGPT's own LayerNorm class
takes ``bias``). The optimizer's betas are ``train.py``'s defaults, (0.9, 0.95);
``train_shakespeare_char.py`` raises β₂ to 0.99 for its small batches.

The text (:func:`stdlib_text`) is the source of a fixed list of standard-library modules,
read from the running interpreter's library directory (no download; another Python version
has other text). Every character it contains is a token (:class:`CharText`, as nanoGPT's
``data/shakespeare_char/prepare.py``): 96 of them on CPython 3.11 — printable ASCII and the
newline.

>>> cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8, bias=False)
>>> GPT(cfg).get_num_params()
880
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import itertools
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dyngrad as dg
from dyngrad import nn, optim

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "corpus"
_MODULES: dict = {}


def _harness() -> types.ModuleType:
    """The corpus's loader (tests/corpus/corpus_harness.py: a ported program under dyngrad,
    or with its recorded import lines turned back under PyTorch)."""
    mod = sys.modules.get("corpus_harness")
    if mod is None:
        spec = importlib.util.spec_from_file_location("corpus_harness",
                                                      CORPUS / "corpus_harness.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["corpus_harness"] = mod
        spec.loader.exec_module(mod)
    return mod


def model_module(framework: str = "dyngrad") -> types.ModuleType:
    """nanoGPT's ``model.py`` as a module on ``framework`` (``"dyngrad"`` or ``"torch"``),
    loaded once per process by the corpus's own loader."""
    mod = _MODULES.get(framework)
    if mod is None:
        if framework not in ("dyngrad", "torch"):
            raise ValueError(f"nanoGPT's model runs on 'dyngrad' or 'torch', not "
                             f"{framework!r}")
        mod = _harness().load("nanogpt_model", framework)
        if mod.torch.__name__ != framework:  # (the port's import lines not turned back)
            raise RuntimeError(f"nanoGPT's model.py loaded for {framework} runs on "
                               f"{mod.torch.__name__}")
        _MODULES[framework] = mod
    # registered as an imported module is: torch.compile looks the model's functions' module
    # up by name — on every call, since the corpus loader unregisters that name after
    # running its own copy (the corpus tests, run before, left it unregistered)
    sys.modules[mod.__name__] = mod
    return mod


GPTConfig = model_module().GPTConfig  # nanoGPT's (the vocabulary is the text's)


def GPT(config, framework: str = "dyngrad"):  # noqa: N802 - nanoGPT's class, built quietly
    """nanoGPT's ``GPT(config)`` on ``framework`` (a dyngrad config is converted), without
    its "number of parameters" print."""
    mod = model_module(framework)
    if not isinstance(config, mod.GPTConfig):
        config = mod.GPTConfig(**dataclasses.asdict(config))
    with contextlib.redirect_stdout(io.StringIO()):
        return mod.GPT(config)


def configure_optimizers(model, train: TrainConfig):
    """nanoGPT's ``model.configure_optimizers`` for the CPU (AdamW over the decayed 2-D
    parameters and the undecayed rest), without its prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return model.configure_optimizers(train.weight_decay, train.learning_rate,
                                          train.betas, "cpu")


@dataclass(frozen=True)
class TrainConfig:
    """What ``train.py`` reads besides the model: batch, AdamW, clipping, the schedule."""

    batch_size: int = 12
    learning_rate: float = 1e-3  # the schedule's peak
    weight_decay: float = 1e-1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    min_lr: float = 1e-4


CPU = (GPTConfig(block_size=64, vocab_size=96, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                 bias=False),
       TrainConfig(batch_size=12))  # nanoGPT's CPU configuration
QUICK = (GPTConfig(block_size=16, vocab_size=96, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                   bias=False),
         TrainConfig(batch_size=4))  # the same model, small: the CI forms


def get_lr(it: int, train: TrainConfig) -> float:
    """nanoGPT's schedule at iteration ``it``: linear warm-up to ``learning_rate`` over
    ``warmup_iters``, cosine decay to ``min_lr`` at ``lr_decay_iters``, ``min_lr`` after.

    >>> t = TrainConfig(); get_lr(0, t), get_lr(t.lr_decay_iters, t) == t.min_lr
    (9.900990099009901e-06, True)
    """
    if it < train.warmup_iters:
        return train.learning_rate * (it + 1) / (train.warmup_iters + 1)
    if it > train.lr_decay_iters:
        return train.min_lr
    ratio = (it - train.warmup_iters) / (train.lr_decay_iters - train.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # from 1 down to 0
    return train.min_lr + coeff * (train.learning_rate - train.min_lr)


def set_lr(opt: optim.Optimizer, lr: float) -> None:
    """``train.py``'s ``param_group['lr'] = lr`` for every group."""
    for group in opt.param_groups:
        group["lr"] = lr


def scheduled(opt, train: TrainConfig):
    """``around(step)``: the step with ``train.py``'s learning rate for the next iteration
    set into ``opt``'s groups before each call (outside what is compiled) — for the
    benchmark's modes and mirrors alike (any optimizer with ``param_groups``)."""
    def around(f):
        it = itertools.count()

        def step(*args):
            set_lr(opt, get_lr(next(it), train))
            return f(*args)
        return step
    return around


def make_step(model, opt: optim.Optimizer, grad_clip: float):
    """``train.py``'s iteration after the lr is set: forward with targets, ``backward()``,
    ``clip_grad_norm_``, the update, ``zero_grad(set_to_none=True)``; returns the loss. This
    is the function compiled; the lr is set outside it, as ``train.py`` does, and read by
    the optimizer as a run-time number."""
    def train_step(x, y):
        _, loss = model(x, y)
        loss.backward()
        if grad_clip != 0.0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return train_step


# ------------------------------------------------------------------ the text
STDLIB_MODULES = ("argparse", "inspect", "typing", "enum", "dataclasses",
                  "collections/__init__", "textwrap", "string", "pathlib", "ast",
                  "subprocess", "shutil")  # ~820K characters on CPython 3.11


def stdlib_text(modules: tuple = STDLIB_MODULES) -> str:
    """The source of the standard-library ``modules`` (paths under the directory ``os`` was
    loaded from, without ``.py``), concatenated in that order."""
    lib = Path(os.__file__).resolve().parent
    missing = [m for m in modules if not (lib / f"{m}.py").is_file()]
    if missing:
        raise FileNotFoundError(f"the standard library at {lib} has no "
                                f"{', '.join(m + '.py' for m in missing)}: pass other modules "
                                f"to stdlib_text()")
    return "".join((lib / f"{m}.py").read_text(encoding="utf-8") for m in modules)


class CharText:
    """Text as token ids, one per distinct character (sorted), split 90/10 into train and
    validation as nanoGPT's ``prepare.py`` does.

    >>> t = CharText("abcab" * 4); t.vocab_size, t.decode(t.encode("cab"))
    (3, 'cab')
    """

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = np.array(self.encode(text), np.int64)
        n = int(0.9 * len(data))
        self.train, self.val = data[:n], data[n:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        return [self.stoi[c] for c in s]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def batch(self, rng: np.random.Generator, batch_size: int, block_size: int,
              split: str = "train") -> tuple:
        """``train.py``'s ``get_batch``: ``batch_size`` windows at random offsets, the
        targets shifted by one — as dyngrad int64 tensors (B, T)."""
        data = self.train if split == "train" else self.val
        ix = rng.integers(0, len(data) - block_size, batch_size)
        x = np.stack([data[i:i + block_size] for i in ix])
        y = np.stack([data[i + 1:i + 1 + block_size] for i in ix])
        return dg.from_numpy(x), dg.from_numpy(y)


def matmuls(config: GPTConfig, batch_size: int) -> list:
    """The training step's matrix products, ``(M, K, N, needs_dx)`` as
    :func:`benchmarks.measure.step_bound_us` takes them: per layer the QKV, output, and two
    MLP projections over the B·T tokens, and per head Q·Kᵀ and P·V (counted as one product
    over all B·nh heads, T×hs by T), then the head over the vocabulary."""
    bt, c, t = batch_size * config.block_size, config.n_embd, config.block_size
    hs, heads = c // config.n_head, batch_size * config.n_head
    layer = [(bt, c, 3 * c, True), (bt, c, c, True), (bt, c, 4 * c, True),
             (bt, 4 * c, c, True),
             (heads * t, hs, t, True), (heads * t, t, hs, True)]
    return layer * config.n_layer + [(bt, c, config.vocab_size, True)]
