"""``dyngrad.distributed.nn``: collectives that autograd differentiates (PyTorch's
``torch.distributed.nn``)."""

from . import functional

__all__ = ["functional"]
