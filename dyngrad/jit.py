"""``dyngrad.jit``: the TorchScript markers that model code carries, as no-ops.

Models written for TorchScript (torchvision's among them) decorate methods with
``torch.jit.unused`` or ``torch.jit.ignore``, declare overloads with
``torch.jit._overload_method`` and branch on ``torch.jit.is_scripting()``. Outside
TorchScript PyTorch makes each of these a no-op: ``is_scripting()`` is False and the
decorators return their function. dyngrad has no TorchScript compiler (``dyngrad.compile``
is its compiler), so those no-ops are all there is; ``script`` and ``trace`` raise.

>>> import dyngrad as dg
>>> @dg.jit.unused
... def f(x):
...     return x
>>> dg.jit.is_scripting()
False
"""

from __future__ import annotations

from typing import Final

__all__ = ["Final", "annotate", "export", "ignore", "is_scripting", "is_tracing", "script",
           "trace", "unused"]


def is_scripting() -> bool:
    """False: code never runs under TorchScript here."""
    return False


def is_tracing() -> bool:
    """False: there is no ``torch.jit.trace`` here (``dg.compile`` traces transparently)."""
    return False


def unused(fn):
    """Mark ``fn`` (or a property) as left out of TorchScript; returns it unchanged."""
    return fn


def ignore(drop=False, **kwargs):
    """``@ignore`` or ``@ignore(drop=...)``: mark a function as left to Python; returns it
    unchanged."""
    if callable(drop):
        return drop
    if not isinstance(drop, bool):
        raise RuntimeError(
            f"Argument to @torch.jit.ignore must be a bool or a function but got {drop}")
    return lambda fn: fn


def export(fn):
    """Mark a method as a TorchScript entry point; returns it unchanged."""
    return fn


def _overload(fn):
    """Declare a TorchScript overload of a function; the definition that follows wins."""
    return fn


def _overload_method(fn):
    """Declare a TorchScript overload of a method; the definition that follows wins."""
    return fn


def annotate(the_type, the_value):
    """``the_value``: in TorchScript this gives an empty container its type."""
    return the_value


def _no_torchscript(name: str):
    def refuse(obj, *args, **kwargs):
        raise RuntimeError(
            f"torch.jit.{name}: dyngrad has no TorchScript. To run {obj!r} compiled, use "
            f"dyngrad.compile (a model's forward or a training step); to save a model, save "
            f"its state_dict with dyngrad.save.")
    refuse.__name__ = name
    refuse.__doc__ = f"Raise: ``torch.jit.{name}`` makes TorchScript, which dyngrad lacks."
    return refuse


script = _no_torchscript("script")
trace = _no_torchscript("trace")
