"""``dyngrad.xpu``: answers as ``torch.xpu`` does in a build without XPU support (Intel
GPUs; pytorch/examples' scripts ask ``torch.xpu.is_available()`` next to CUDA and MPS):
nothing is available, seeding is a no-op, and anything that needs a device raises PyTorch's
AssertionError.

>>> dg.xpu.is_available(), dg.xpu.device_count()
(False, 0)
"""

from __future__ import annotations

__all__ = ["is_available", "device_count", "is_initialized", "manual_seed",
           "manual_seed_all", "empty_cache", "current_device", "synchronize", "set_device"]

NO_XPU = "Torch not compiled with XPU enabled"


def is_available() -> bool:
    return False


def device_count() -> int:
    return 0


def is_initialized() -> bool:
    return False


def manual_seed(seed: int) -> None:
    """A no-op, as in PyTorch without XPU."""


def manual_seed_all(seed: int) -> None:
    """A no-op, as in PyTorch without XPU."""


def empty_cache() -> None:
    """A no-op: there is no XPU cache."""


def current_device() -> int:
    raise AssertionError(NO_XPU)


def synchronize(device=None) -> None:
    raise AssertionError(NO_XPU)


def set_device(device) -> None:
    raise AssertionError(NO_XPU)
