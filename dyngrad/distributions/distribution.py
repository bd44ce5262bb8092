"""``Distribution``: the base of dyngrad's probability distributions, with PyTorch's
interface (``torch.distributions.Distribution``): ``batch_shape`` and ``event_shape``,
``sample``/``rsample``, ``log_prob``, ``entropy``, ``mean``/``variance``/``stddev``,
``expand``, and argument validation with PyTorch's ``ValueError`` texts.

Note (ordinary ops only): a distribution is a composite. Its parameters are tensors, its
densities and entropies are compositions of dyngrad's ops, and its samples come from the
generator (``manual_seed`` reproducible, the ``random`` primitive a tracer records), so
autograd differentiates ``log_prob`` and ``rsample`` and the compiler traces them like any
other code; validation reads values with ``bool()``, which a tracer turns into a guard.
Shapes are tuples (PyTorch's are ``torch.Size``).
"""

from __future__ import annotations

from ..autograd.grad_mode import no_grad
from ..ops import reduce as _r
from ..tensor import Tensor
from . import constraints
from .utils import as_sample_shape, lazy_property

__all__ = ["Distribution"]


class Distribution:
    """The base class: a batch of independent distributions of shape ``batch_shape``, each
    over events of shape ``event_shape``.

    >>> d = dg.distributions.Normal(dg.zeros(3), 1.0)
    >>> d.batch_shape, d.sample((2,)).shape
    ((3,), (2, 3))
    """

    has_rsample = False
    has_enumerate_support = False
    _validate_args = __debug__

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        """Whether distributions check their arguments unless told (True by default, as
        PyTorch's under ``__debug__``)."""
        if value not in (True, False):
            raise ValueError
        Distribution._validate_args = value

    def __init__(self, batch_shape=(), event_shape=(), validate_args: bool | None = None):
        self._batch_shape = tuple(batch_shape)
        self._event_shape = tuple(event_shape)
        if validate_args is not None:
            self._validate_args = validate_args
        if self._validate_args:
            self._check_parameters()

    def _check_parameters(self) -> None:
        for param, constraint in self.arg_constraints.items():
            if constraints.is_dependent(constraint):
                continue
            if param not in self.__dict__ and isinstance(getattr(type(self), param, None),
                                                         lazy_property):
                continue  # (the other parameterisation was given)
            value = getattr(self, param)
            if not bool(_r.all(constraint.check(value))):
                raise ValueError(
                    f"Expected parameter {param} ({type(value).__name__} of shape "
                    f"{tuple(value.shape)}) of distribution {self!r} to satisfy the "
                    f"constraint {constraint!r}, but found invalid values:\n{value}")

    # ------------------------------------------------------------------ shapes
    @property
    def batch_shape(self) -> tuple:
        return self._batch_shape

    @property
    def event_shape(self) -> tuple:
        return self._event_shape

    def _extended_shape(self, sample_shape=()) -> tuple:
        """sample_shape + batch_shape + event_shape: a sample's shape."""
        return as_sample_shape(sample_shape) + self._batch_shape + self._event_shape

    def expand(self, batch_shape, _instance=None):
        """The same distribution over a larger batch (parameters expanded, not copied)."""
        raise NotImplementedError(f"{type(self).__name__}.expand is not implemented")

    def _expanded(self, batch_shape, _instance, **params):
        new = _instance if _instance is not None else type(self).__new__(type(self))
        batch_shape = tuple(batch_shape)
        for name, value in params.items():
            setattr(new, name, value.expand(batch_shape + tuple(value.shape[len(
                self._batch_shape):])) if isinstance(value, Tensor) else value)
        Distribution.__init__(new, batch_shape, self._event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # ------------------------------------------------------------------ interface
    @property
    def arg_constraints(self) -> dict:
        return {}

    @property
    def support(self):
        raise NotImplementedError

    @property
    def mean(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no mean")

    @property
    def mode(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no mode")

    @property
    def variance(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no variance")

    @property
    def stddev(self) -> Tensor:
        return self.variance.sqrt()

    def sample(self, sample_shape=()) -> Tensor:
        """Draws of shape sample_shape + batch_shape + event_shape, without gradient."""
        with no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape=()) -> Tensor:
        """Reparameterised draws: differentiable with respect to the parameters."""
        raise NotImplementedError(f"{type(self).__name__} has no rsample (it is not "
                                  f"reparameterisable); use sample()")

    def log_prob(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def entropy(self) -> Tensor:
        raise NotImplementedError

    def perplexity(self) -> Tensor:
        return self.entropy().exp()

    def cdf(self, value: Tensor) -> Tensor:
        raise NotImplementedError

    def enumerate_support(self, expand: bool = True) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    def _validate_sample(self, value) -> None:
        """PyTorch's checks of a ``log_prob`` argument: a tensor, its event dims equal to
        event_shape, broadcastable with the batch, inside the support."""
        if not isinstance(value, Tensor):
            raise ValueError("The value argument to log_prob must be a Tensor")
        shape = tuple(value.shape)
        start = len(shape) - len(self._event_shape)
        if shape[start:] != self._event_shape:
            raise ValueError(f"The right-most size of value must match event_shape: {shape} "
                             f"vs {self._event_shape}.")
        expected = self._batch_shape + self._event_shape
        for i, j in zip(reversed(shape), reversed(expected)):
            if i != 1 and j != 1 and i != j:
                raise ValueError(f"Value is not broadcastable with batch_shape+event_shape: "
                                 f"{shape} vs {expected}.")
        support = self.support
        if not bool(_r.all(support.check(value))):
            raise ValueError(
                f"Expected value argument ({type(value).__name__} of shape {shape}) to be "
                f"within the support ({support!r}) of the distribution {self!r}, but found "
                f"invalid values:\n{value}")

    def __repr__(self) -> str:
        def show(v):  # (a one-element parameter by value, 0-d as a number; else its shape)
            return v.item() if v.ndim == 0 else v if v.numel() == 1 else tuple(v.shape)
        args = ", ".join(f"{p}: {show(self.__dict__[p])}" for p in self.arg_constraints
                         if p in self.__dict__)
        return f"{type(self).__name__}({args})"
