"""Probability distributions with ``torch.distributions``' interface (d2l.ai's chapters and
pytorch/examples' reinforcement-learning scripts): ``Normal``, ``Uniform``, ``Bernoulli``,
``Categorical``, ``Multinomial``, ``kl_divergence``; each also under its PyTorch module name
(``from dyngrad.distributions import multinomial``; ``multinomial.Multinomial``).

>>> from dyngrad.distributions import Categorical
>>> m = Categorical(dg.tensor([0.25, 0.75]))
>>> action = m.sample(); loss = -m.log_prob(action)
"""

from . import (  # noqa: F401
    bernoulli,
    categorical,
    constraints,
    distribution,
    kl,
    multinomial,
    normal,
    uniform,
    utils,
)
from .bernoulli import Bernoulli
from .categorical import Categorical
from .distribution import Distribution
from .kl import kl_divergence, register_kl
from .multinomial import Multinomial
from .normal import Normal
from .uniform import Uniform

__all__ = ["Distribution", "Normal", "Uniform", "Bernoulli", "Categorical", "Multinomial",
           "kl_divergence", "register_kl", "constraints"]
