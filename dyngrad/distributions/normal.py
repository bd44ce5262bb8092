"""``Normal(loc, scale)``: the Gaussian, reparameterised (``rsample`` = loc + scale·ε)."""

from __future__ import annotations

import math

from ..ops import elementwise as _e
from ..ops import random as _rnd
from ..tensor import Tensor
from . import constraints
from .distribution import Distribution
from .utils import broadcast_all

__all__ = ["Normal"]

_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


class Normal(Distribution):
    """Normal distributions with mean ``loc`` and standard deviation ``scale`` (numbers or
    tensors, broadcast together; the batch shape is theirs).

    >>> d = Normal(dg.tensor([0.0, 1.0]), 2.0)
    >>> d.log_prob(dg.tensor([0.0, 0.0]))          # log N(0; 0, 4), log N(0; 1, 4)
    >>> d.rsample((5,)).shape                        # (5, 2), differentiable in loc, scale
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        both_numbers = not isinstance(loc, Tensor) and not isinstance(scale, Tensor)
        super().__init__(() if both_numbers else tuple(self.loc.shape),
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return self._expanded(batch_shape, _instance, loc=self.loc, scale=self.scale)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale * self.scale

    def rsample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        eps = _rnd.randn(shape, dtype=self.loc.dtype)
        return self.loc + eps * self.scale

    def log_prob(self, value: Tensor) -> Tensor:
        """−(x − loc)²/(2·scale²) − log scale − log √(2π)."""
        if self._validate_args:
            self._validate_sample(value)
        var = self.scale * self.scale
        return -((value - self.loc) ** 2) / (2 * var) - _e.log(self.scale) - _LOG_SQRT_2PI

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return 0.5 * (1 + _e.erf((value - self.loc) / self.scale / math.sqrt(2)))

    def entropy(self) -> Tensor:
        """½ + ½·log 2π + log scale."""
        return 0.5 + 0.5 * math.log(2 * math.pi) + _e.log(self.scale)
