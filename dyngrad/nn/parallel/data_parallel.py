"""``nn.DataParallel`` (and ``nn.parallel.DataParallel``) as a CPU-only PyTorch build has it:
with no accelerator it keeps no device ids and its forward is its module's (scripts such as
d2l's wrap every model in it). Data-parallel training across processes is
:class:`~dyngrad.nn.parallel.DistributedDataParallel`, not this."""

from __future__ import annotations

from ..module import Module


class DataParallel(Module):
    """Wraps ``module`` (as the submodule ``module``: state-dict keys start ``module.``, as
    PyTorch's); ``device_ids`` is empty on a machine without an accelerator, so the forward
    is the module's own.

    >>> nn.DataParallel(nn.Linear(3, 2))(dg.ones(4, 3)).shape
    (4, 2)
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0):
        super().__init__()
        self.module = module
        self.device_ids: list = []  # (no accelerator: PyTorch keeps none either)
        self.output_device = None
        self.dim = dim

    def forward(self, *inputs, **kwargs):
        return self.module(*inputs, **kwargs)


__all__ = ["DataParallel"]
