"""``Uniform(low, high)``: uniform on [low, high), reparameterised (low + (high − low)·u)."""

from __future__ import annotations

import math

from ..ops import elementwise as _e
from ..ops import random as _rnd
from ..tensor import Tensor
from . import constraints
from .distribution import Distribution
from .utils import broadcast_all

__all__ = ["Uniform"]


class Uniform(Distribution):
    """Uniform distributions on [low, high) (numbers or tensors, broadcast together).

    >>> d = Uniform(0.0, dg.tensor([1.0, 4.0]))
    >>> d.entropy()                                  # log(high − low): [0, log 4]
    """

    has_rsample = True

    def __init__(self, low, high, validate_args: bool | None = None) -> None:
        self.low, self.high = broadcast_all(low, high)
        both_numbers = not isinstance(low, Tensor) and not isinstance(high, Tensor)
        super().__init__(() if both_numbers else tuple(self.low.shape),
                         validate_args=validate_args)

    @property
    def arg_constraints(self) -> dict:
        return {"low": constraints.less_than(self.high),
                "high": constraints.greater_than(self.low)}

    def expand(self, batch_shape, _instance=None):
        return self._expanded(batch_shape, _instance, low=self.low, high=self.high)

    @constraints.dependent_property
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def mean(self) -> Tensor:
        return (self.high + self.low) / 2

    @property
    def mode(self) -> Tensor:
        return self.high * math.nan

    @property
    def stddev(self) -> Tensor:
        return (self.high - self.low) / 12 ** 0.5

    @property
    def variance(self) -> Tensor:
        return (self.high - self.low) ** 2 / 12

    def rsample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        u = _rnd.rand(shape, dtype=self.low.dtype)
        return self.low + u * (self.high - self.low)

    def log_prob(self, value: Tensor) -> Tensor:
        """−log(high − low) inside [low, high), −inf outside."""
        if self._validate_args:
            self._validate_sample(value)
        lb = _e.le(self.low, value).to(self.low.dtype)
        ub = _e.gt(self.high, value).to(self.low.dtype)
        return _e.log(lb * ub) - _e.log(self.high - self.low)

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _e.clamp((value - self.low) / (self.high - self.low), 0, 1)

    def entropy(self) -> Tensor:
        return _e.log(self.high - self.low)
