"""Functional activations with PyTorch's arguments and gradients (re-exported by
``dyngrad.nn.functional``). Each is a composition of the op table.

Note [gradients at the kinks]: PyTorch defines which side of a kink its backward takes —
hardtanh, relu6, hardsigmoid and hardswish take the outer (constant or identity) piece's
slope at their boundaries, leaky_relu and prelu take the negative slope at 0. The
compositions below pick their branches with ``where`` on the same strict or non-strict
comparisons, so autograd's answer is PyTorch's at those points too (``clamp`` would pass the
gradient at the boundary).
"""

from __future__ import annotations

import warnings

from ..ops import elementwise as _e
from ..ops import losses as _l
from ..ops import reduce as _r
from ..tensor import Tensor

__all__ = ["relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "silu", "mish", "softplus",
           "leaky_relu", "prelu", "elu", "logsigmoid", "softmin"]


def _apply(fn, input: Tensor, inplace: bool) -> Tensor:
    """``fn(input)``, or with ``inplace`` written into ``input``: computed from a clone, so
    the graph saves the values from before the write and backward still works (PyTorch's
    in-place activations keep their original input for backward likewise)."""
    return input.copy_(fn(input.clone())) if inplace else fn(input)


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """max(x, 0)."""
    return _apply(_e.relu, input, inplace)


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False) -> Tensor:
    """x clamped to [min_val, max_val], gradient 1 strictly inside (see Note [gradients at
    the kinks]).

    >>> F.hardtanh(dg.tensor([-2., 0.5, 3.]))
    tensor([-1.0000,  0.5000,  1.0000])
    """
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")

    def fn(x):  # (the bounds tested first: a NaN falls through to x, its gradient 1 — as
        #           PyTorch's; the gradient is 0 on the bounds)
        return _e.cast(_e.where(_e.le(x, min_val), min_val,
                                _e.where(_e.ge(x, max_val), max_val, x)), x.dtype)
    return _apply(fn, input, inplace)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """min(max(x, 0), 6): ``hardtanh(x, 0, 6)``."""
    return hardtanh(input, 0.0, 6.0, inplace)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """0 below −3, 1 above 3, x/6 + 1/2 between."""
    def fn(x):  # (a NaN stays NaN with gradient 0, as PyTorch's: the detached x)
        inside = _e.logical_and(_e.gt(x, -3.0), _e.lt(x, 3.0))
        outside = _e.where(_e.le(x, -3.0), 0.0, _e.where(_e.ge(x, 3.0), 1.0, x.detach()))
        return _e.cast(_e.where(inside, (x + 3.0) / 6.0, outside), x.dtype)
    return _apply(fn, input, inplace)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """x·hardsigmoid(x): 0 below −3, x above 3, x(x + 3)/6 between. (At −inf: 0, where
    PyTorch's x·0 gives NaN.)"""
    def fn(x):  # (the quadratic of x inside (−3, 3) only: an infinite x elsewhere would
        #           give its unselected branch a NaN gradient)
        inside = _e.logical_and(_e.gt(x, -3.0), _e.lt(x, 3.0))
        xs = _e.where(inside, x, 0.0)
        quad = (xs * (xs + 3.0)) / 6.0
        return _e.cast(_e.where(_e.le(x, -3.0), 0.0, _e.where(inside, quad, x)), x.dtype)
    return _apply(fn, input, inplace)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """x·sigmoid(x)."""
    return _apply(lambda x: x * _e.sigmoid(x), input, inplace)


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """x·tanh(softplus(x))."""
    return _apply(lambda x: x * _e.tanh(_l.softplus(x)), input, inplace)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(β·x))/β, and x itself where β·x > ``threshold`` (PyTorch's linear
    regime, gradient exactly 1 there).

    >>> F.softplus(dg.tensor([0.0]))
    tensor([0.6931])
    """
    z = input if beta == 1 else input * beta
    smooth = _l.softplus(z) if beta == 1 else _l.softplus(z) / beta
    return _e.where(_e.gt(z, threshold), input, smooth)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x for x > 0, negative_slope·x otherwise."""
    return _apply(lambda x: _e.where(_e.gt(x, 0.0), x, x * negative_slope), input, inplace)


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """leaky_relu with a learnt slope: one for all channels, or one per channel (dim 1).

    >>> F.prelu(dg.tensor([[-1., 2.]]), dg.tensor([0.25]))
    tensor([[-0.2500,  2.0000]])
    """
    if weight.ndim > 1:
        raise RuntimeError(f"prelu: Expected `weight` to be a scalar or 1D tensor, but got: "
                           f"ndim = {weight.ndim}")
    if weight.numel() != 1:
        if input.ndim == 0:
            raise RuntimeError("Not allow zero-dim input tensor.")
        channels = input.shape[1] if input.ndim > 1 else 1
        if channels != weight.numel():
            raise RuntimeError(f"Mismatch of parameter numbers and input channel size. Found "
                               f"parameter numbers = {weight.numel()} and channel size = "
                               f"{channels}.")
    if input.ndim >= 2:
        weight = weight.reshape((1, -1) + (1,) * (input.ndim - 2))
    elif weight.ndim == 1 and input.ndim == 0:
        weight = weight.reshape(())
    return _e.where(_e.gt(input, 0.0), input, weight * input)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """x for x > 0, alpha·(eᕽ − 1) otherwise — eᕽ − 1 as 2t/(1 − t) with t = tanh(x/2),
    which keeps its precision near 0 (PyTorch's expm1). The negative branch reads x where
    x ≤ 0 and 0 elsewhere (``where``, not ``minimum``, whose tie at 0 would halve the
    gradient there: PyTorch's is alpha)."""
    def fn(x):
        positive = _e.gt(x, 0.0)
        t = _e.tanh(_e.where(positive, 0.0, x) * 0.5)
        return _e.where(positive, x, (t * (2.0 * alpha)) / (1.0 - t))
    return _apply(fn, input, inplace)


def logsigmoid(input: Tensor) -> Tensor:
    """log(sigmoid(x)) = −softplus(−x), without overflow."""
    return -_l.softplus(-input)


def softmin(input: Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype=None) -> Tensor:
    """softmax(−x) over ``dim``; with no ``dim``, PyTorch's implicit choice (0 for 0-, 1- and
    3-d inputs, else 1) and its deprecation warning."""
    if dim is None:
        warnings.warn("Implicit dimension choice for softmin has been deprecated. Change the "
                      "call to include dim=X as an argument.", stacklevel=_stacklevel)
        dim = 0 if input.ndim in (0, 1, 3) else 1
    x = input if dtype is None else input.to(dtype)
    return _r.softmax(-x, dim)
