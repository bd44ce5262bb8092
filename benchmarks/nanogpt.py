"""nanoGPT in dyngrad — the model, its optimizer groups, its learning-rate schedule and
character-level text from Python's standard library — shared by workload W8
(benchmarks/workloads.py) and examples/nanogpt_char.py.

The model follows karpathy/nanoGPT's ``model.py`` module for module, with PyTorch's
parameter names (the mirrors copy the weights by name): token and position embeddings →
``n_layer`` blocks of (LayerNorm → causal self-attention → residual, LayerNorm → MLP with
GELU → residual) → a final LayerNorm → the head, whose weight is the token embedding's
(weight tying). Attention is nanoGPT's "flash" path, ``F.scaled_dot_product_attention(q, k,
v, is_causal=True)``; its slow path (the hand-written mask and softmax) is left out, since
nanoGPT takes it only where PyTorch lacks SDPA. :meth:`GPT.configure_optimizers` is
nanoGPT's — AdamW with every 2-D parameter decayed and the rest (biases, LayerNorm weights)
not — and :func:`get_lr` its ``train.py``'s cosine schedule with linear warm-up.

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

>>> cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
>>> GPT(cfg).get_num_params()
880
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad import nn, optim


@dataclass
class GPTConfig:
    """nanoGPT's ``GPTConfig`` (the vocabulary is the text's)."""

    block_size: int = 64
    vocab_size: int = 96
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False


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


CPU = (GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
       TrainConfig(batch_size=12))  # nanoGPT's CPU configuration
QUICK = (GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False),
         TrainConfig(batch_size=4))  # the same model, small: the CI forms


# ------------------------------------------------------------------ the model
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's: PyTorch's has no ``bias=False``)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(dg.ones(ndim))
        self.bias = nn.Parameter(dg.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    """The query, key and value projections of every head in one Linear, causal
    ``scaled_dot_product_attention`` over the heads, the output projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Linear(C→4C) → GELU → Linear(4C→C) → dropout."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's GPT: ``forward(idx, targets)`` returns ``(logits, loss)`` — the logits of
    every position and the mean cross-entropy with targets; without targets, the last
    position's logits and None."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual outputs
            if pn.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters (the tied embedding counted once), without the position embedding's
        unless ``non_embedding`` is False."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"GPT: cannot forward a sequence of length {t}, the block size "
                             f"is only {self.config.block_size}")
        pos = dg.arange(0, t, dtype=dg.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1),
                                   ignore_index=-1)
            return logits, loss
        return self.lm_head(x[:, [-1], :]), None  # (the list keeps the time dimension)

    def configure_optimizers(self, weight_decay: float, learning_rate: float,
                             betas: tuple) -> optim.AdamW:
        """AdamW over two groups: the 2-D parameters (matmul weights, embeddings) decayed by
        ``weight_decay``, the others (biases, LayerNorm weights) not."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return optim.AdamW(groups, lr=learning_rate, betas=betas)

    @dg.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None):
        """Continue each row of ``idx`` (b, t) by ``max_new_tokens`` tokens drawn one at a
        time (``multinomial``) from the last position's softmax at ``temperature``, among the
        ``top_k`` likeliest when given; the context is cut to the last ``block_size``."""
        for _ in range(max_new_tokens):
            bs = self.config.block_size
            idx_cond = idx if idx.size(1) <= bs else idx[:, -bs:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = dg.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx = dg.cat((idx, dg.multinomial(probs, num_samples=1)), dim=1)
        return idx


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


def make_step(model: GPT, opt: optim.Optimizer, grad_clip: float):
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
