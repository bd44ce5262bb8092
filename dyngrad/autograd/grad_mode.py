"""Grad modes: ``no_grad``, ``enable_grad``, ``set_grad_enabled`` (context managers and
decorators, thread-local like PyTorch's) and anomaly detection."""

from __future__ import annotations

import functools
import warnings

from ..dispatch import STATE

__all__ = ["no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "detect_anomaly",
           "is_anomaly_enabled", "inference_mode", "is_inference_mode_enabled"]


def is_grad_enabled() -> bool:
    """Whether operations are currently recorded for backward."""
    return STATE.grad_enabled


class _GradModeContext:
    """Base for context managers that also work as decorators."""

    _enabled: bool

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)._clone(self):
                return fn(*args, **kwargs)
        return wrapper

    def _clone(self):
        return type(self)()

    def __enter__(self):
        self._prev = STATE.grad_enabled
        STATE.grad_enabled = self._enabled

    def __exit__(self, *exc):
        STATE.grad_enabled = self._prev
        return False


class no_grad(_GradModeContext):
    """Stop recording operations for backward inside the block (or decorated function).

    >>> with dg.no_grad():
    ...     y = x * 2          # y.requires_grad is False
    """

    _enabled = False


class enable_grad(_GradModeContext):
    """Re-enable recording inside a ``no_grad`` block."""

    _enabled = True


class set_grad_enabled(_GradModeContext):
    """Set grad mode to ``mode``; takes effect immediately (like PyTorch), so it works as a
    plain call, a context manager and a decorator."""

    def __init__(self, mode: bool) -> None:
        self._prev = STATE.grad_enabled
        self._enabled = bool(mode)
        STATE.grad_enabled = self._enabled

    def _clone(self):
        return type(self)(self._enabled)

    def __enter__(self):
        STATE.grad_enabled = self._enabled


class inference_mode(_GradModeContext):
    """PyTorch's ``inference_mode(mode=True)``: here the same as ``no_grad`` (with
    ``mode=False``, as ``enable_grad``) — dyngrad has no separate inference tensors, so the
    tensors made inside can be used in autograd later, where PyTorch's cannot. A context
    manager and a decorator, with or without the call: ``@inference_mode`` and
    ``@inference_mode()``."""

    def __new__(cls, mode=True):
        if callable(mode):  # @inference_mode, without the call
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode: bool = True) -> None:
        self._enabled = not mode

    def _clone(self):
        return type(self)(not self._enabled)


def is_inference_mode_enabled() -> bool:
    """Whether an ``inference_mode`` block is active (here: whether grad mode is off)."""
    return not STATE.grad_enabled


class detect_anomaly:
    """Context manager: record where each backward node was created, and raise — naming the
    forward operation and that place — when a backward rule produces NaN.

    >>> with dg.autograd.detect_anomaly():
    ...     y = (x * 0).sqrt().sum(); y.backward()   # RuntimeError: 'SqrtBackward0' ... nan
    """

    def __init__(self, check_nan: bool = True) -> None:
        self.check_nan = check_nan

    def __enter__(self):
        warnings.warn("Anomaly Detection has been enabled. This mode will increase the runtime "
                      "and should only be enabled for debugging.", stacklevel=2)
        self._prev = (STATE.anomaly, STATE.anomaly_check_nan)
        STATE.anomaly, STATE.anomaly_check_nan = True, self.check_nan
        return self

    def __exit__(self, *exc):
        STATE.anomaly, STATE.anomaly_check_nan = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with detect_anomaly(self.check_nan):
                return fn(*args, **kwargs)
        return wrapper


def set_detect_anomaly(mode: bool) -> None:
    STATE.anomaly = bool(mode)


def is_anomaly_enabled() -> bool:
    return STATE.anomaly
