"""Helpers the distributions share, as PyTorch's ``torch.distributions.utils``:
``broadcast_all``, ``lazy_property``, the probability/logit conversions, and ``log_gamma``
(a composite of log and division: dyngrad has no lgamma primitive)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .. import dtypes as _dt
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..ops import reduce as _r
from ..tensor import Tensor

__all__ = ["broadcast_all", "lazy_property", "probs_to_logits", "logits_to_probs",
           "clamp_probs", "log_gamma", "as_sample_shape"]


def broadcast_all(*values) -> tuple:
    """Numbers and tensors broadcast to one shape: numbers become tensors of the first
    tensor's dtype (the default dtype if there is none), as PyTorch's ``broadcast_all``.

    >>> loc, scale = broadcast_all(dg.zeros(3), 1.0)    # both shape (3,)
    """
    for v in values:
        if not isinstance(v, (Tensor, int, float)) or isinstance(v, bool):
            raise ValueError("Input arguments must all be instances of numbers.Number, "
                             "torch.Tensor or objects implementing __torch_function__.")
    tensors = [v for v in values if isinstance(v, Tensor)]
    dtype = tensors[0].dtype if tensors else _dt.get_default_dtype()
    out = [v if isinstance(v, Tensor) else _c.tensor(float(v), dtype=dtype) for v in values]
    shape = _e.broadcast_shapes(*(tuple(v.shape) for v in out), op="broadcast_all")
    return tuple(v if tuple(v.shape) == shape else _m.expand(v, shape) for v in out)


class lazy_property:
    """Computed on first read from the other parameterisation, then kept in the instance's
    ``__dict__`` (Bernoulli's ``logits`` when it was made from ``probs``)."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__
        self.name = fn.__name__

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


def clamp_probs(probs: Tensor) -> Tensor:
    """Probabilities kept in [eps, 1 − eps] (eps of their dtype), so their logs are finite."""
    eps = float(np.finfo(probs.dtype.np).eps)
    return _e.clamp(probs, eps, 1.0 - eps)


def probs_to_logits(probs: Tensor, is_binary: bool = False) -> Tensor:
    """log p (``is_binary``: log p − log(1 − p)), with p clamped away from 0 and 1."""
    p = clamp_probs(probs)
    return _e.log(p) - _e.log1p(-p) if is_binary else _e.log(p)


def logits_to_probs(logits: Tensor, is_binary: bool = False) -> Tensor:
    """sigmoid (``is_binary``) or softmax over the last dim."""
    return _e.sigmoid(logits) if is_binary else _r.softmax(logits, -1)


# Stirling's series for log Γ(z), z >= 8: (z − ½)·log z − z + ½·log 2π + Σ B₂ₖ/(2k(2k−1)z^(2k−1))
# to k = 7 (the first omitted term is below 1e-15 at z = 8).
_BERNOULLI = [Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30),
              Fraction(5, 66), Fraction(-691, 2730), Fraction(7, 6)]
_STIRLING = [float(b / (2 * k * (2 * k - 1))) for k, b in enumerate(_BERNOULLI, start=1)]
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_SHIFT = 8


def log_gamma(x: Tensor) -> Tensor:
    """log Γ(x) for x > 0 (what Multinomial's log-factorials need), composed of log and
    arithmetic so that autograd and the compiler see ordinary ops: below 8 the recurrence
    log Γ(x) = log Γ(x + 8) − log(x(x+1)···(x+7)), then Stirling's series. Within about
    1e-15 absolutely (relatively near its zeros at 1 and 2 it is only that absolutely);
    its gradient is the series' own derivative, digamma to the same accuracy.

    >>> log_gamma(dg.tensor([1.0, 5.0], dtype=dg.float64))     # [0, log 24]
    """
    small = _e.lt(x, float(_SHIFT))
    xs = _e.where(small, x, 1.0)  # (the unused branch stays finite: no inf·0 in backward)
    prod = xs
    for k in range(1, _SHIFT):
        prod = prod * (xs + float(k))
    z = _e.where(small, xs + float(_SHIFT), x)
    inv = 1.0 / z
    inv2 = inv * inv
    series = _STIRLING[-1]
    for c in reversed(_STIRLING[:-1]):
        series = series * inv2 + c
    big = (z - 0.5) * _e.log(z) - z + _HALF_LOG_2PI + series * inv
    return _e.where(small, big - _e.log(prod), big)


def as_sample_shape(sample_shape) -> tuple:
    """``sample_shape`` as a tuple of ints (a tuple, list or Size; an int is PyTorch's
    TypeError, since torch.Size(3) is)."""
    if isinstance(sample_shape, (int, np.integer)):
        raise TypeError(f"sample_shape must be a tuple or torch.Size, not "
                        f"{type(sample_shape).__name__} (write ({int(sample_shape)},))")
    return tuple(int(s) for s in sample_shape)
