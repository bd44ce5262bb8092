"""``Multinomial(total_count, probs=...)``: the counts of ``total_count`` categorical draws
(d2l: ``multinomial.Multinomial(1, fair_probs).sample((3,))``)."""

from __future__ import annotations

import math

from .. import dtypes as _dt
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import reduce as _r
from ..tensor import Tensor
from . import constraints
from .categorical import Categorical
from .distribution import Distribution
from .utils import broadcast_all, log_gamma, probs_to_logits

__all__ = ["Multinomial"]


class Multinomial(Distribution):
    """Counts over the K categories of ``probs`` (or ``logits``) along the last dim, from
    ``total_count`` independent draws each (an int: PyTorch does not support a tensor of
    counts either); the event shape is (K,).

    >>> d = Multinomial(10, dg.tensor([0.2, 0.8]))
    >>> d.sample()                            # e.g. tensor([3., 7.]), summing to 10
    >>> d.log_prob(dg.tensor([3.0, 7.0]))     # log(C(10, 3)·0.2³·0.8⁷)
    """

    arg_constraints = {"probs": constraints.simplex,
                       "logits": constraints.independent(constraints.real, 1)}

    def __init__(self, total_count: int = 1, probs=None, logits=None,
                 validate_args: bool | None = None) -> None:
        if not isinstance(total_count, int) or isinstance(total_count, bool):
            raise NotImplementedError("inhomogeneous total_count is not supported")
        self.total_count = total_count
        self._categorical = Categorical(probs=probs, logits=logits)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._expanded(batch_shape, _instance, total_count=self.total_count)
        new._categorical = self._categorical.expand(batch_shape)
        return new

    @constraints.dependent_property
    def support(self):
        return constraints.multinomial(self.total_count)

    @property
    def logits(self) -> Tensor:
        return self._categorical.logits

    @property
    def probs(self) -> Tensor:
        return self._categorical.probs

    @property
    def param_shape(self) -> tuple:
        return self._categorical.param_shape

    @property
    def mean(self) -> Tensor:
        return self.probs * self.total_count

    @property
    def variance(self) -> Tensor:
        return self.total_count * self.probs * (1 - self.probs)

    def sample(self, sample_shape=()) -> Tensor:
        """Counts of shape sample_shape + batch_shape + (K,), in probs' dtype: total_count
        categorical draws, each added to its category."""
        shape = self._extended_shape(sample_shape)
        draws = self._categorical.sample((self.total_count,) + tuple(sample_shape))
        draws = draws.permute(*range(1, draws.ndim), 0)  # (..., total_count)
        counts = _c.zeros(shape, dtype=_dt.int64).scatter_add(-1, draws, _c.ones_like(draws))
        return counts.to(self.probs.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        """log n! − Σ log xᵢ! + Σ xᵢ·log pᵢ (log-factorials by ``utils.log_gamma``; a zero
        count of a zero-probability category adds 0)."""
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        if value.dtype is not logits.dtype:
            value = value.to(logits.dtype)
        log_factorial_n = log_gamma(_r.sum(value, -1) + 1)
        log_factorial_xs = _r.sum(log_gamma(value + 1), -1)
        logits = _e.where(_e.logical_and(_e.eq(value, 0), _e.eq(logits, -math.inf)), 0.0,
                          logits)
        return log_factorial_n - log_factorial_xs + _r.sum(logits * value, -1)

    def entropy(self) -> Tensor:
        """n·H(categorical) − log n! + Σₖ Σᵢ Binomial(n, pᵢ)(k)·log k! over k = 1..n."""
        n = self.total_count
        term1 = n * self._categorical.entropy() - math.lgamma(n + 1)
        p = self.probs
        batch_dims = (1,) * p.ndim
        k = _c.arange(1, n + 1, dtype=p.dtype).reshape((-1,) + batch_dims)  # (n, 1, ..., 1)
        lgk = log_gamma(k + 1)
        logits = probs_to_logits(p, is_binary=True)  # PyTorch's Binomial, on logits
        normalize = n * _e.maximum(logits, 0.0) + n * _e.log1p(_e.exp(-_e.abs(logits))) \
            - math.lgamma(n + 1)
        log_pmf = k * logits - lgk - log_gamma(n - k + 1) - normalize
        return term1 + _r.sum(_r.sum(_e.exp(log_pmf) * lgk, 0), -1)
