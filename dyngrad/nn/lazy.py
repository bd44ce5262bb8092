"""PyTorch's lazy layers beyond ``LazyLinear``: ``LazyConv1d/2d`` and ``LazyBatchNorm1d/2d``
(d2l's convolutional chapters build every network from them).

Each is its eager class with the size it infers — the input channels, or the features — at 0
until the first call. That call makes the parameters in place (the same Parameter objects,
with ``.data`` set, so an optimizer made before keeps them) and the buffers anew, runs the
class's own initialisation, and turns the module into its eager class (``type(m)`` is
``Conv2d`` from then on, as PyTorch's ``cls_to_become``). A compiled step whose first call
is that call traces the eager class: the first call changes the module, so it runs once
eagerly before the trace is kept (as any first call that makes state does).
"""

from __future__ import annotations

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from ..tensor import Tensor
from .conv import Conv1d, Conv2d
from .normalization import BatchNorm1d, BatchNorm2d


class _LazyConv:
    """The lazy part of a convolution: ``in_channels`` from the first input's channel dim
    (dim 1, or dim 0 of an unbatched input)."""

    _becomes: type

    def reset_parameters(self) -> None:
        if self.in_channels:
            self._becomes.reset_parameters(self)

    def forward(self, input: Tensor) -> Tensor:
        becomes = self._becomes
        if self.in_channels == 0:
            batched = input.ndim == self._nd + 2
            self._materialize(input.shape[1 if batched else 0])
        return becomes.forward(self, input)

    def _materialize(self, c: int) -> None:
        if c % self.groups:
            raise ValueError("in_channels must be divisible by groups")
        self.in_channels = c
        with no_grad():
            self.weight.data = _c.zeros((self.out_channels, c // self.groups)
                                        + self.kernel_size, dtype=self.weight.dtype)
        becomes = self._becomes
        becomes.reset_parameters(self)
        object.__setattr__(self, "__class__", becomes)

    def _lazy_size_from(self, state_dict, prefix: str):
        """``in_channels`` as a checkpoint's weight has it (None: not in it)."""
        w = state_dict.get(prefix + "weight")
        return w.shape[1] * self.groups if w is not None and len(w.shape) >= 3 else None


class LazyConv1d(_LazyConv, Conv1d):
    """``Conv1d`` with ``in_channels`` inferred from the first input.

    >>> m = nn.LazyConv1d(4, 3); m(dg.randn(2, 5, 9)).shape, type(m).__name__
    ((2, 4, 7), 'Conv1d')
    """

    _becomes = Conv1d

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        Conv1d.__init__(self, 0, out_channels, kernel_size, stride, padding, dilation, groups,
                        bias, padding_mode, device=device, dtype=dtype)


class LazyConv2d(_LazyConv, Conv2d):
    """``Conv2d`` with ``in_channels`` inferred from the first input.

    >>> m = nn.LazyConv2d(6, 5, padding=2); m(dg.randn(1, 1, 28, 28)).shape
    (1, 6, 28, 28)
    """

    _becomes = Conv2d

    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        Conv2d.__init__(self, 0, out_channels, kernel_size, stride, padding, dilation, groups,
                        bias, padding_mode, device=device, dtype=dtype)


class _LazyBatchNorm:
    """The lazy part of a batch norm: ``num_features`` from the first input's dim 1."""

    _becomes: type

    def forward(self, input: Tensor) -> Tensor:
        becomes = self._becomes
        if self.num_features == 0:
            self._materialize(input.shape[1] if input.ndim > 1 else input.shape[0])
        return becomes.forward(self, input)

    def _materialize(self, n: int) -> None:
        self.num_features = n
        dtype = self._lazy_dtype
        with no_grad():
            if self.weight is not None:
                self.weight.data = _c.ones(n, dtype=dtype)
            if self.bias is not None:
                self.bias.data = _c.zeros(n, dtype=dtype)
        if self.track_running_stats:
            self.running_mean = _c.zeros(n, dtype=dtype)
            self.running_var = _c.ones(n, dtype=dtype)
        del self._lazy_dtype
        object.__setattr__(self, "__class__", self._becomes)

    def _lazy_size_from(self, state_dict, prefix: str):
        """``num_features`` as a checkpoint's weight or running mean has it."""
        for name in ("weight", "running_mean", "bias", "running_var"):
            t = state_dict.get(prefix + name)
            if t is not None and len(t.shape) == 1:
                return t.shape[0]
        return None


class LazyBatchNorm1d(_LazyBatchNorm, BatchNorm1d):
    """``BatchNorm1d`` with ``num_features`` inferred from the first input."""

    _becomes = BatchNorm1d

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        BatchNorm1d.__init__(self, 0, eps, momentum, affine, track_running_stats, device,
                             dtype)
        self._lazy_dtype = dtype or _dt.get_default_dtype()


class LazyBatchNorm2d(_LazyBatchNorm, BatchNorm2d):
    """``BatchNorm2d`` with ``num_features`` inferred from the first input.

    >>> m = nn.LazyBatchNorm2d(); m(dg.randn(2, 3, 4, 4)).shape, m.running_mean.shape
    ((2, 3, 4, 4), (3,))
    """

    _becomes = BatchNorm2d

    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        BatchNorm2d.__init__(self, 0, eps, momentum, affine, track_running_stats, device,
                             dtype)
        self._lazy_dtype = dtype or _dt.get_default_dtype()


__all__ = ["LazyConv1d", "LazyConv2d", "LazyBatchNorm1d", "LazyBatchNorm2d"]
