"""``dyngrad.cuda``: answers as ``torch.cuda`` does in a CPU-only build (see Note [devices]
in dyngrad/tensor.py): nothing is available, seeding is a no-op, and anything that needs a
device raises PyTorch's AssertionError.

>>> dg.cuda.is_available(), dg.cuda.device_count()
(False, 0)
"""

from __future__ import annotations

from ..tensor import NO_CUDA
from . import amp

__all__ = ["is_available", "device_count", "manual_seed", "manual_seed_all", "amp",
           "is_initialized", "empty_cache", "current_device", "get_device_name",
           "synchronize", "set_device"]


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def is_initialized() -> bool:
    return False


def manual_seed(seed: int) -> None:
    """A no-op, as in PyTorch without CUDA (the seed would apply when CUDA starts)."""


def manual_seed_all(seed: int) -> None:
    """A no-op, as in PyTorch without CUDA."""


def empty_cache() -> None:
    """A no-op: there is no CUDA cache."""


def current_device() -> int:
    raise AssertionError(NO_CUDA)


def get_device_name(device=None) -> str:
    raise AssertionError(NO_CUDA)


def synchronize(device=None) -> None:
    raise AssertionError(NO_CUDA)


def set_device(device) -> None:
    raise AssertionError(NO_CUDA)
