"""The dense layer and elementwise dropout (re-exported by ``dyngrad.nn.functional``):
``linear`` and ``dropout``. They live apart from ``functional.py`` so that compositions built
on them (attention, in ``functional_attention.py``) import them without a cycle."""

from __future__ import annotations

import math

from ..dispatch import dispatch
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..ops import random as _rnd
from ..ops.linalg import MATMUL
from ..tensor import Tensor


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x·Wᵀ + b with W of shape (out_features, in_features)."""
    if input.shape[-1:] != weight.shape[-1:]:
        raise RuntimeError(f"linear: mat1 and mat2 shapes cannot be multiplied: the input's "
                           f"last dimension must equal in_features ({weight.shape[-1]}); "
                           f"input {list(input.shape)}, weight {list(weight.shape)}")
    if weight.ndim == 2 and input.ndim >= 2 and input.dtype is weight.dtype:
        # one matmul with a transposed operand: no transposed copy in forward or backward;
        # leading dims fold into the rows (as PyTorch's linear): one product of
        # (batch·time) rows, not a product per batch entry
        if input.ndim > 2:
            rows = _m.reshape(input, (math.prod(input.shape[:-1]), input.shape[-1]))
            out = dispatch(MATMUL, rows, weight, ta=False, tb=True)
            out = _m.reshape(out, tuple(input.shape[:-1]) + (weight.shape[0],))
        else:
            out = dispatch(MATMUL, input, weight, ta=False, tb=True)
    else:
        out = input @ (_m.T(weight) if weight.ndim == 2 else weight)
    return out if bias is None else out + bias


def dropout(input: Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training
    only). The mask comes from the counter-based generator, so compiled code can reproduce
    it."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    keep = _e.ge(_rnd.rand(input.shape, dtype=input.dtype), p)
    out = _e.where(keep, input * (1.0 / (1.0 - p)), 0.0)
    if inplace:
        return input.copy_(out)
    return out
