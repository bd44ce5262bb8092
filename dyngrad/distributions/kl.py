"""``kl_divergence(p, q)``: KL(p ‖ q) by a table of rules keyed by the pair of types
(``register_kl``), as PyTorch's; the most specific registered pair wins."""

from __future__ import annotations

import math

from ..ops import elementwise as _e
from ..ops import losses as _l
from ..ops import reduce as _r
from .bernoulli import Bernoulli
from .categorical import Categorical
from .normal import Normal
from .uniform import Uniform

__all__ = ["kl_divergence", "register_kl"]

_KL_RULES: dict = {}


def register_kl(type_p, type_q):
    """Register ``fn(p, q)`` as KL(p ‖ q) for instances of ``type_p`` and ``type_q``.

    >>> @register_kl(MyNormal, MyNormal)
    ... def kl_mine(p, q): ...
    """
    def register(fn):
        _KL_RULES[type_p, type_q] = fn
        return fn
    return register


def _rule(tp, tq):
    matches = [(p, q) for p, q in _KL_RULES if issubclass(tp, p) and issubclass(tq, q)]
    if not matches:
        return None
    best = min(matches, key=lambda pq: (tp.__mro__.index(pq[0]), tq.__mro__.index(pq[1])))
    return _KL_RULES[best]


def kl_divergence(p, q):
    """KL(p ‖ q) = E_p[log p(x) − log q(x)], over the broadcast batch; NotImplementedError
    for a pair without a rule.

    >>> kl_divergence(Normal(0.0, 1.0), Normal(1.0, 2.0))
    """
    fn = _rule(type(p), type(q))
    if fn is None:
        raise NotImplementedError(f"No KL(p || q) is implemented for p = {type(p).__name__} "
                                  f"and q = {type(q).__name__}")
    return fn(p, q)


@register_kl(Normal, Normal)
def _kl_normal_normal(p, q):
    var_ratio = (p.scale / q.scale) ** 2
    t1 = ((p.loc - q.loc) / q.scale) ** 2
    return 0.5 * (var_ratio + t1 - 1 - _e.log(var_ratio))


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p, q):
    t = p.probs * (p.logits - q.logits)
    t = _e.where(_e.eq(q.probs, 0).expand(t.shape), math.inf, t)
    t = _e.where(_e.eq(p.probs, 0).expand(t.shape), 0.0, t)
    return _r.sum(t, -1)


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p, q):
    t1 = p.probs * (_l.softplus(-q.logits) - _l.softplus(-p.logits))
    t1 = _e.where(_e.eq(p.probs, 0), 0.0, _e.where(_e.eq(q.probs, 0), math.inf, t1))
    t2 = (1 - p.probs) * (_l.softplus(q.logits) - _l.softplus(p.logits))
    t2 = _e.where(_e.eq(p.probs, 1), 0.0, _e.where(_e.eq(q.probs, 1), math.inf, t2))
    return t1 + t2


@register_kl(Uniform, Uniform)
def _kl_uniform_uniform(p, q):
    result = _e.log((q.high - q.low) / (p.high - p.low))
    outside = _e.logical_or(_e.gt(q.low, p.low), _e.lt(q.high, p.high))
    return _e.where(outside, math.inf, result)
