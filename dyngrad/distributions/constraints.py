"""The sets a distribution's parameters and samples live in (``torch.distributions.
constraints``): each constraint's ``check(value)`` is a bool tensor of where ``value``
belongs, over the batch (an event's elements are combined), and its ``repr`` is PyTorch's,
since validation errors print it.

>>> constraints.positive.check(dg.tensor([1.0, -1.0]))
tensor([ True, False])
"""

from __future__ import annotations

from ..ops import elementwise as _e
from ..ops import reduce as _r

__all__ = ["Constraint", "real", "positive", "unit_interval", "simplex", "boolean",
           "nonnegative_integer", "interval", "integer_interval", "greater_than", "less_than",
           "independent", "multinomial", "dependent", "dependent_property", "is_dependent"]


class Constraint:
    """A region of values; ``is_discrete`` and ``event_dim`` (how many rightmost dims make
    one value) as PyTorch's."""

    is_discrete = False
    event_dim = 0

    def check(self, value):
        """A bool tensor: True where ``value`` satisfies the constraint (one per event)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__.lstrip("_") + "()"


class _Real(Constraint):
    def check(self, value):
        return _e.eq(value, value)  # (everything but NaN)


class _Boolean(Constraint):
    is_discrete = True

    def check(self, value):
        return _e.logical_or(_e.eq(value, 0), _e.eq(value, 1))


class _GreaterThan(Constraint):
    def __init__(self, lower_bound) -> None:
        self.lower_bound = lower_bound

    def check(self, value):
        return _e.lt(self.lower_bound, value) if not isinstance(self.lower_bound, (int, float)) \
            else _e.gt(value, self.lower_bound)

    def __repr__(self) -> str:
        return f"GreaterThan(lower_bound={self.lower_bound})"


class _LessThan(Constraint):
    def __init__(self, upper_bound) -> None:
        self.upper_bound = upper_bound

    def check(self, value):
        return _e.lt(value, self.upper_bound)

    def __repr__(self) -> str:
        return f"LessThan(upper_bound={self.upper_bound})"


class _Interval(Constraint):
    """lower_bound <= value <= upper_bound (the bounds numbers or tensors)."""

    def __init__(self, lower_bound, upper_bound) -> None:
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def check(self, value):
        return _e.logical_and(_e.le(self.lower_bound, value) if not isinstance(
            self.lower_bound, (int, float)) else _e.ge(value, self.lower_bound),
            _e.le(value, self.upper_bound))

    def __repr__(self) -> str:
        return (f"{type(self).__name__.lstrip('_')}(lower_bound={self.lower_bound}, "
                f"upper_bound={self.upper_bound})")


class _IntegerInterval(_Interval):
    is_discrete = True

    def check(self, value):
        return _e.logical_and(_e.eq(_e.remainder(value, 1), 0), super().check(value))


class _IntegerGreaterThan(_GreaterThan):
    is_discrete = True

    def check(self, value):
        return _e.logical_and(_e.eq(_e.remainder(value, 1), 0),
                              _e.ge(value, self.lower_bound))

    def __repr__(self) -> str:
        return f"IntegerGreaterThan(lower_bound={self.lower_bound})"


class _Simplex(Constraint):
    """Non-negative along the last dim, summing to 1 (within 1e-6)."""

    event_dim = 1

    def check(self, value):
        return _e.logical_and(_r.all(_e.ge(value, 0), -1),
                              _e.lt(_e.abs(_r.sum(value, -1) - 1), 1e-6))


class _Multinomial(Constraint):
    """Non-negative counts along the last dim summing to at most ``upper_bound``."""

    is_discrete = True
    event_dim = 1

    def __init__(self, upper_bound: int) -> None:
        self.upper_bound = upper_bound

    def check(self, value):
        return _e.logical_and(_r.all(_e.ge(value, 0), -1),
                              _e.le(_r.sum(value, -1), self.upper_bound))


class _IndependentConstraint(Constraint):
    """``base_constraint`` over the last ``reinterpreted_batch_ndims`` dims as one event."""

    def __init__(self, base_constraint: Constraint, reinterpreted_batch_ndims: int) -> None:
        self.base_constraint = base_constraint
        self.reinterpreted_batch_ndims = reinterpreted_batch_ndims
        self.is_discrete = base_constraint.is_discrete
        self.event_dim = base_constraint.event_dim + reinterpreted_batch_ndims

    def check(self, value):
        ok = self.base_constraint.check(value)
        for _ in range(self.reinterpreted_batch_ndims):
            ok = _r.all(ok, -1)
        return ok

    def __repr__(self) -> str:
        return (f"IndependentConstraint({self.base_constraint!r}, "
                f"{self.reinterpreted_batch_ndims})")


class _Dependent(Constraint):
    """A constraint that depends on other parameters (Uniform's ``low`` and ``high``): not
    checked on its own."""

    def check(self, value):
        raise ValueError("Cannot determine validity of dependent constraint")


class dependent_property(property):
    """A property whose value is a constraint built from the instance (Uniform's support
    ``interval(low, high)``); on the class it reads as a dependent constraint."""

    def __get__(self, obj, objtype=None):
        return dependent if obj is None else super().__get__(obj, objtype)


def is_dependent(constraint) -> bool:
    return isinstance(constraint, _Dependent)


dependent = _Dependent()
real = _Real()
boolean = _Boolean()
positive = _GreaterThan(0.0)
nonnegative_integer = _IntegerGreaterThan(0)
unit_interval = _Interval(0.0, 1.0)
simplex = _Simplex()
interval = _Interval
integer_interval = _IntegerInterval
greater_than = _GreaterThan
less_than = _LessThan
independent = _IndependentConstraint
multinomial = _Multinomial
