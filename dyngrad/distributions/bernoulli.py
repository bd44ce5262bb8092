"""``Bernoulli(probs=...)`` or ``Bernoulli(logits=...)``: 1 with probability p, else 0."""

from __future__ import annotations

import math

from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import losses as _l
from ..ops import random as _rnd
from ..tensor import Tensor
from . import constraints
from .distribution import Distribution
from .utils import broadcast_all, lazy_property, logits_to_probs, probs_to_logits

__all__ = ["Bernoulli"]


class Bernoulli(Distribution):
    """Bernoulli distributions given by ``probs`` or by ``logits`` (log-odds), not both;
    the other is computed when first read (``probs_to_logits`` clamps p to [eps, 1 − eps]).

    >>> d = Bernoulli(logits=dg.tensor([0.0, 2.0]))
    >>> d.probs, d.entropy(), d.log_prob(dg.tensor([1.0, 0.0]))
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, validate_args: bool | None = None) -> None:
        if (probs is None) == (logits is None):
            raise ValueError("Either `probs` or `logits` must be specified, but not both.")
        given = probs if probs is not None else logits
        (param,) = broadcast_all(given)
        if probs is not None:
            self.probs = param
        else:
            self.logits = param
        self._param = param
        super().__init__(() if not isinstance(given, Tensor) else tuple(param.shape),
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        name = "probs" if "probs" in self.__dict__ else "logits"
        new = self._expanded(batch_shape, _instance, **{name: self.__dict__[name]})
        new._param = new.__dict__[name]
        return new

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs, is_binary=True)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits, is_binary=True)

    @property
    def param_shape(self) -> tuple:
        return tuple(self._param.shape)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def mode(self) -> Tensor:
        p = self.probs
        return _e.where(_e.eq(p, 0.5), math.nan, _e.ge(p, 0.5).to(p.dtype))

    @property
    def variance(self) -> Tensor:
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with no_grad():
            return _rnd.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """−BCE-with-logits(logits, value): stable for any logit."""
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        if not value.dtype.is_floating_point:
            value = value.to(logits.dtype)
        return -_l.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self) -> Tensor:
        return _l.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = _c.arange(2, dtype=self._param.dtype).reshape(
            (-1,) + (1,) * len(self._batch_shape))
        return values.expand((2,) + self._batch_shape) if expand else values
