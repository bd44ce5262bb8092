"""Loss functions, composed from primitives in their numerically stable forms."""

from __future__ import annotations

from .. import dtypes as _dt
from ..tensor import Tensor
from . import elementwise as _e
from . import indexing as _i
from . import movement as _m
from . import reduce as _r

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str, op: str) -> Tensor:
    if reduction == "mean":
        return _r.mean(loss)
    if reduction == "sum":
        return _r.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _same_shape(a: Tensor, b: Tensor, op: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: target size {list(b.shape)} must be the same as input size "
                         f"{list(a.shape)}")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error."""
    _same_shape(input, target, "mse_loss")
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    _same_shape(input, target, "l1_loss")
    return _reduce(_e.abs(input - target), reduction, "l1_loss")


def softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))."""
    return _e.maximum(x, 0.0) + _e.log1p(_e.exp(-_e.abs(x)))


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor,
                                     weight: Tensor | None = None, reduction: str = "mean",
                                     pos_weight: Tensor | None = None) -> Tensor:
    """BCE on logits, stable at any magnitude: max(z,0) − z·y + log1p(exp(−|z|))."""
    _same_shape(input, target, "binary_cross_entropy_with_logits")
    if pos_weight is None:
        loss = softplus(input) - input * target
    else:  # (1 − y)·z + (1 + (pw − 1)·y)·softplus(−z)
        loss = (1.0 - target) * input + (1.0 + (pos_weight - 1.0) * target) * softplus(-input)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """BCE on probabilities; logs are clamped at −100 as in PyTorch."""
    _same_shape(input, target, "binary_cross_entropy")
    logp = _e.maximum(_e.log(input), -100.0)
    log1mp = _e.maximum(_e.log(1.0 - input), -100.0)
    loss = -(target * logp + (1.0 - target) * log1mp)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of integer class labels; input is (N, C) or (N, C, d1, ...)
    log-probabilities, target (N,) or (N, d1, ...)."""
    if input.ndim < 1:
        raise ValueError("nll_loss: input must have a class dimension")
    if target.dtype is not _dt.int64:
        raise RuntimeError(f"nll_loss: expected target of dtype int64 (class indices), got "
                           f"{target.dtype.name}")
    if input.ndim == 1:
        input, target = _m.unsqueeze(input, 0), _m.unsqueeze(target, 0)
    if input.ndim > 2:  # (N, C, d...) -> (N·d..., C)
        c = input.shape[1]
        perm = (0,) + tuple(range(2, input.ndim)) + (1,)
        input = _m.reshape(_m.permute(input, perm), (-1, c))
        target = _m.reshape(target, (-1,))
    if target.shape != input.shape[:1]:
        raise ValueError(f"nll_loss: expected target of shape {list(input.shape[:1])}, got "
                         f"{list(target.shape)}")
    valid = _e.ne(target, ignore_index)
    safe = _e.where(valid, target, 0)
    picked = _m.squeeze_dims(_i.take_along_dim(input, _m.unsqueeze(safe, 1), 1), (1,))
    w = _e.cast(valid, input.dtype)
    if weight is not None:
        w = w * _i.gather(weight, safe, 0)
    loss = -picked * w
    if reduction == "mean":
        return _r.sum(loss) / _r.sum(w)
    return _reduce(loss, reduction, "nll_loss")


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy from logits with integer class labels (or class probabilities
    of input's shape)."""
    logp = _r.log_softmax(input, 1 if input.ndim > 1 else 0)
    if target.dtype.is_floating_point:  # class probabilities
        _same_shape(input, target, "cross_entropy")
        t = target if label_smoothing == 0 else \
            target * (1 - label_smoothing) + label_smoothing / input.shape[1 if input.ndim > 1
                                                                           else 0]
        per = -_r.sum(logp * t if weight is None else logp * t * _m.reshape(
            weight, (-1,) + (1,) * (input.ndim - 2)), 1 if input.ndim > 1 else 0)
        return _reduce(per, reduction, "cross_entropy")
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if label_smoothing == 0:
        return nll
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    cdim = 1 if input.ndim > 1 else 0
    n_classes = input.shape[cdim]
    lp = logp if weight is None else logp * _m.reshape(weight, (-1,) + (1,) *
                                                          (input.ndim - cdim - 1))
    smooth = -_r.sum(lp, cdim)
    valid = _e.cast(_e.ne(target, ignore_index), input.dtype)
    smooth = smooth * valid
    if reduction == "mean":
        if weight is None:
            smooth = _r.sum(smooth) / _r.sum(valid)
        else:
            safe = _e.where(_e.ne(target, ignore_index), target, 0)
            smooth = _r.sum(smooth) / _r.sum(_i.gather(weight, safe, 0) * valid)
    else:
        smooth = _reduce(smooth, reduction, "cross_entropy")
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / n_classes)
