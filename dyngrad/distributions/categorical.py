"""``Categorical(probs=...)`` or ``Categorical(logits=...)``: category indices 0..K−1."""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import indexing as _i
from ..ops import random as _rnd
from ..ops import reduce as _r
from ..tensor import Tensor
from . import constraints
from .distribution import Distribution
from .utils import lazy_property, logits_to_probs, probs_to_logits

__all__ = ["Categorical"]


class Categorical(Distribution):
    """Distributions over K categories given along the last dim of ``probs`` (non-negative
    weights, normalised here) or of ``logits`` (unnormalised log-probabilities, normalised
    by logsumexp), not both; the leading dims are the batch.

    >>> d = Categorical(dg.tensor([0.1, 0.2, 0.7]))
    >>> a = d.sample()                       # an int64 index, 2 most often
    >>> d.log_prob(a)                        # log 0.7 when a == 2 (differentiable in probs)
    """

    arg_constraints = {"probs": constraints.simplex,
                       "logits": constraints.independent(constraints.real, 1)}
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, validate_args: bool | None = None) -> None:
        if (probs is None) == (logits is None):
            raise ValueError("Either `probs` or `logits` must be specified, but not both.")
        if probs is not None:
            if probs.ndim < 1:
                raise ValueError("`probs` parameter must be at least one-dimensional.")
            self.probs = probs / _r.sum(probs, -1, keepdim=True)
        else:
            if logits.ndim < 1:
                raise ValueError("`logits` parameter must be at least one-dimensional.")
            self.logits = logits - _r.logsumexp(logits, -1, keepdim=True)
        self._param = self.probs if probs is not None else self.logits
        self._num_events = self._param.shape[-1]
        batch = tuple(self._param.shape[:-1]) if self._param.ndim > 1 else ()
        super().__init__(batch, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        name = "probs" if "probs" in self.__dict__ else "logits"
        new = self._expanded(batch_shape, _instance, **{name: self.__dict__[name]})
        new._param, new._num_events = new.__dict__[name], self._num_events
        return new

    @constraints.dependent_property
    def support(self):
        return constraints.integer_interval(0, self._num_events - 1)

    @lazy_property
    def logits(self) -> Tensor:
        return probs_to_logits(self.probs)

    @lazy_property
    def probs(self) -> Tensor:
        return logits_to_probs(self.logits)

    @property
    def param_shape(self) -> tuple:
        return tuple(self._param.shape)

    @property
    def mean(self) -> Tensor:
        return _c.full(self._extended_shape(), math.nan, dtype=self.probs.dtype)

    @property
    def mode(self) -> Tensor:
        return _r.argmax(self.probs, -1)

    @property
    def variance(self) -> Tensor:
        return _c.full(self._extended_shape(), math.nan, dtype=self.probs.dtype)

    def sample(self, sample_shape=()) -> Tensor:
        """int64 indices of shape sample_shape + batch_shape, drawn with ``multinomial``."""
        shape = self._extended_shape(sample_shape)
        n = int(np.prod(shape[:len(shape) - len(self._batch_shape)], dtype=np.int64))
        with no_grad():
            rows = self.probs.reshape(-1, self._num_events)
            drawn = _rnd.multinomial(rows, n, True)  # (batch, n)
            return drawn.t().reshape(shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """log p[value] over the broadcast of value with the batch."""
        if self._validate_args:
            self._validate_sample(value)
        idx = _e.cast(value, _dt.int64).unsqueeze(-1)
        shape = _e.broadcast_shapes(tuple(idx.shape), tuple(self.logits.shape),
                                    op="log_prob")
        log_pmf = self.logits.expand(shape)
        idx = idx.expand(shape[:-1] + (1,))
        return _i.take_along_dim(log_pmf, idx, -1).squeeze(-1)

    def entropy(self) -> Tensor:
        """−Σ p·log p (a zero probability adds 0: its logit is clamped to the dtype's
        lowest finite number, not −inf)."""
        lowest = float(np.finfo(self.logits.dtype.np).min)
        logits = _e.clamp(self.logits, min=lowest)
        return -_r.sum(logits * self.probs, -1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        values = _c.arange(self._num_events, dtype=_dt.int64).reshape(
            (-1,) + (1,) * len(self._batch_shape))
        return values.expand((self._num_events,) + self._batch_shape) if expand else values
