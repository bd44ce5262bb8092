"""Loss functions, composed from primitives in their numerically stable forms."""

from __future__ import annotations

import warnings

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from . import elementwise as _e
from . import indexing as _i
from . import movement as _m
from . import reduce as _r

_REDUCTIONS = ("mean", "sum", "none")
_BCE_EPSILON = float(np.float32(1e-12))  # (PyTorch's, a C float, in float64 too)


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


def _warn_broadcast(input: Tensor, target: Tensor) -> None:
    """PyTorch's warning when a pointwise regression loss broadcasts target against input
    (a (N, 1) prediction against (N,) targets gives an (N, N) loss): allowed, but warned."""
    if input.shape != target.shape:
        warnings.warn(f"Using a target size ({list(target.shape)}) that is different to the "
                      f"input size ({list(input.shape)}). This will likely lead to incorrect "
                      f"results due to broadcasting. Please ensure they have the same size.",
                      UserWarning, stacklevel=3)


def legacy_reduction(size_average, reduce, reduction: str) -> str:
    """The reduction named by PyTorch's deprecated ``size_average``/``reduce`` pair, if
    either is given."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    out = "none" if not reduce else "mean" if size_average else "sum"
    warnings.warn(f"size_average and reduce args will be deprecated, please use "
                  f"reduction='{out}' instead.", UserWarning, stacklevel=3)
    return out


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error; a target of another shape broadcasts against the input, with
    PyTorch's warning."""
    _warn_broadcast(input, target)
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
    """BCE on probabilities; logs are clamped at −100 as in PyTorch.

    Note: the gradient with respect to ``input`` is PyTorch's, (p − y) / max(p·(1 − p),
    1e-12), which stays finite where the logs' does not (at p = 0 or 1 it is ±1e12 there,
    where differentiating the clamped logs gives nan). The loss is its value at the detached
    input plus ``d · h(p₀ + d/2)``, where ``d = input − input.detach()`` is zero but carries
    the gradient and ``h`` is that formula: its first derivative is h(p), its second h′(p)
    (the midpoint makes the product rule count h′ once). The target's gradient comes from
    the clamped logs: PyTorch's, except at p = 0 or 1, where PyTorch's is ±inf and this one
    ±100."""
    _same_shape(input, target, "binary_cross_entropy")
    p0 = input.detach()
    logp = _e.maximum(_e.log(p0), -100.0)
    log1mp = _e.maximum(_e.log(1.0 - p0), -100.0)
    d = input - p0
    mid = p0 + d * 0.5
    h = (mid - target) / _e.maximum(mid * (1.0 - mid), _BCE_EPSILON)
    loss = -(target * logp + (1.0 - target) * log1mp) + d * h
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
    shape = tuple(target.shape)  # (reduction="none" gives a loss of the target's shape)
    if input.ndim == 1:
        input, target = _m.unsqueeze(input, 0), _m.unsqueeze(target, 0)
    if input.ndim > 2:  # (N, C, d...) -> (N·d..., C)
        if shape != (input.shape[0],) + tuple(input.shape[2:]):
            raise RuntimeError(f"nll_loss: Expected target size "
                               f"{[input.shape[0], *input.shape[2:]]}, got {list(shape)}")
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
    if reduction == "none":
        return _m.reshape(loss, shape)
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


# ------------------------------------------------------------------ regression and ranking


def smooth_l1_loss(input: Tensor, target: Tensor, size_average=None, reduce=None,
                   reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """0.5·d²/β where |d| < β, else |d| − 0.5·β (d = input − target); β = 0 is the L1 loss.

    >>> F.smooth_l1_loss(dg.tensor([0.5, 3.0]), dg.zeros(2))   # (0.125 + 2.5) / 2
    tensor(1.3125)
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    _warn_broadcast(input, target)
    z = _e.abs(input - target)
    if beta == 0:
        return _reduce(z, reduction, "smooth_l1_loss")
    loss = _e.where(_e.lt(z, beta), z * z * (0.5 / beta), z - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")


def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0,
               weight: Tensor | None = None) -> Tensor:
    """0.5·d² where |d| < δ, else δ·(|d| − 0.5·δ): ``smooth_l1_loss`` times δ.

    >>> F.huber_loss(dg.tensor([0.5, 3.0]), dg.zeros(2), delta=2.0)   # (0.125 + 4) / 2
    tensor(2.0625)
    """
    if delta <= 0:
        raise RuntimeError(f"huber_loss does not support non-positive values for delta, got "
                           f"{delta}")
    _warn_broadcast(input, target)
    z = _e.abs(input - target)
    loss = _e.where(_e.lt(z, delta), z * z * 0.5, (z - 0.5 * delta) * delta)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "huber_loss")


def kl_div(input: Tensor, target: Tensor, size_average=None, reduce=None,
           reduction: str = "mean", log_target: bool = False) -> Tensor:
    """KL(target ‖ exp(input)) pointwise: target·(log target − input), 0 where target is 0
    (with ``log_target``, exp(target)·(target − input)). ``input`` holds log-probabilities.
    ``reduction='batchmean'`` divides the sum by the batch size (the mathematical KL
    divergence); ``'mean'`` divides by every element and warns, as PyTorch does. The
    gradient with respect to a target element that is 0 is −input here (PyTorch: nan).

    >>> F.kl_div(F.log_softmax(logits, 1), probs, reduction="batchmean")
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    if log_target:
        loss = _e.exp(target) * (target - input)
    else:
        positive = _e.gt(target, 0.0)
        loss = _e.where(positive, target * _e.log(_e.where(positive, target, 1.0)), 0.0) - \
            target * input
    if reduction == "batchmean":
        return _r.sum(loss) / input.shape[0] if input.ndim else _r.sum(loss)
    if reduction == "mean":
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and "
                      "the support size.'batchmean' divides only by the batch size, and "
                      "aligns with the KL div math definition.'mean' will be changed to "
                      "behave the same as 'batchmean' in the next major release.",
                      UserWarning, stacklevel=2)
    return _reduce(loss, reduction, "kl_div")


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Σ (x1/‖x1‖)·(x2/‖x2‖) over ``dim``, each norm at least ``eps`` (after broadcasting).

    As in PyTorch, the clamp to ``eps`` changes the norm's value but not its gradient (it is
    applied outside autograd).

    >>> F.cosine_similarity(dg.tensor([[1.0, 0.0]]), dg.tensor([[1.0, 1.0]]))
    tensor([0.7071])
    """
    shape = _e.broadcast_shapes(x1.shape, x2.shape, op="cosine_similarity")
    x1, x2 = _m.expand(x1, shape), _m.expand(x2, shape)
    n1 = _r.norm(x1, 2, dim, keepdim=True)
    n2 = _r.norm(x2, 2, dim, keepdim=True)
    n1 = n1 + (_e.maximum(n1, eps) - n1).detach()
    n2 = n2 + (_e.maximum(n2, eps) - n2).detach()
    return _r.sum((x1 / n1) * (x2 / n2), dim)


def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                        size_average=None, reduce=None, reduction: str = "mean") -> Tensor:
    """max(0, −target·(input1 − input2) + margin): input1 should rank above input2 where
    target is 1, below where it is −1.

    >>> F.margin_ranking_loss(dg.tensor([1.0]), dg.tensor([2.0]), dg.tensor([1.0]))
    tensor(1.)
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    if not (input1.ndim == input2.ndim == target.ndim):
        raise RuntimeError(f"margin_ranking_loss : All input tensors should have same "
                           f"dimension but got sizes: input1: {list(input1.shape)}, input2: "
                           f"{list(input2.shape)}, target: {list(target.shape)} ")
    loss = _e.clamp(-target * (input1 - input2) + margin, min=0.0)
    return _reduce(loss, reduction, "margin_ranking_loss")
