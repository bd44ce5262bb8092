"""``dyngrad.accelerator``: answers as ``torch.accelerator`` does on a machine without an
accelerator (dyngrad computes on the CPU only; see Note [devices] in dyngrad/tensor.py).

>>> dg.accelerator.is_available(), dg.accelerator.current_accelerator()
(False, None)
"""

from __future__ import annotations

from .tensor import NO_ACCELERATOR

__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index",
           "set_device_index", "synchronize"]


def is_available() -> bool:
    """False: there is no accelerator."""
    return False


def current_accelerator(check_available: bool = False):
    """None: there is no accelerator (PyTorch's answer without one)."""
    return None


def device_count() -> int:
    """0 accelerators."""
    return 0


def current_device_index() -> int:
    """Raises: there is no accelerator device to ask about."""
    raise RuntimeError(NO_ACCELERATOR)


def set_device_index(device) -> None:
    """Raises: there is no accelerator device to select."""
    raise RuntimeError(NO_ACCELERATOR)


def synchronize(device=None) -> None:
    """Raises: there is no accelerator to wait for."""
    raise RuntimeError(NO_ACCELERATOR)


current_device_idx = current_device_index
set_device_idx = set_device_index
