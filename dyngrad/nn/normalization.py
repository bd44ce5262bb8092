"""Normalisation, channel dropout, resizing and shape layers, with PyTorch's semantics:
``BatchNorm1d``/``BatchNorm2d``, ``SyncBatchNorm``, ``InstanceNorm1d``/``2d``/``3d``, ``GroupNorm``,
``RMSNorm``, ``LocalResponseNorm``, ``Dropout1d``/``Dropout2d``,
``Upsample``, ``Unflatten`` and ``LazyLinear``. The computations are the functional forms
of ``functional_norm.py`` (see Note [batch norm's running statistics] there)."""

from __future__ import annotations

import math
import warnings

from .. import distributed as dist
from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..distributed.nn import functional as dF
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops.movement import cat
from ..tensor import Tensor, check_device
from . import init
from .functional_norm import (
    batch_norm,
    dropout1d,
    dropout2d,
    group_norm,
    instance_norm,
    interpolate,
    local_response_norm,
    rms_norm,
)
from .layers import Linear
from .module import Module
from .parameter import Parameter


class _BatchNorm(Module):
    """BatchNorm over dim 1 (see Note [batch norm's running statistics])."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        check_device(device)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        dtype = dtype or _dt.get_default_dtype()
        if affine:
            self.weight = Parameter(_c.ones(num_features, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        if affine and bias:
            self.bias = Parameter(_c.zeros(num_features, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", _c.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", _c.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", _c.tensor(0, dtype=_dt.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            with no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1.0)
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise RuntimeError(f"running_mean should contain {input.shape[1]} elements not "
                               f"{self.num_features}")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            with no_grad():
                self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if track else None,
                          self.running_var if track else None, self.weight, self.bias,
                          use_batch, factor, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, C) or (N, C, L) inputs."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {input.ndim}D input)")


class BatchNorm2d(_BatchNorm):
    """Batch norm of (N, C, H, W) inputs."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim != 4:
            raise ValueError(f"expected 4D input (got {input.ndim}D input)")


# Note [SyncBatchNorm]:
# ``SyncBatchNorm``: batch norm whose training statistics are those of the whole global batch,
# every rank's samples, as PyTorch's ``nn.SyncBatchNorm``.
#
# Each rank reduces its per-channel sums with a differentiable all-reduce
# (``dyngrad.distributed.nn.functional.all_reduce``): first the sum and the count, for the
# mean, then the sum of squared deviations from that mean, for the variance (two passes, as
# ``BatchNorm`` computes it, rather than a sum of squares). Autograd differentiates through
# both all-reduces, so the input gradient on each rank includes what its samples did to the
# other ranks' normalisation, and the running statistics — the global batch's — are the
# same on every rank. A data-parallel model with SyncBatchNorm therefore trains as one
# process with the whole batch. Outside training, or without a process group of more than
# one rank, it is ``BatchNorm``.


class SyncBatchNorm(_BatchNorm):
    """Batch norm over dim 1 of inputs of any rank ≥ 2, with statistics over every rank's
    batch while training (see Note [SyncBatchNorm]).

    >>> model = nn.SyncBatchNorm.convert_sync_batchnorm(model)   # doctest: +SKIP
    >>> ddp = nn.parallel.DistributedDataParallel(model)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, process_group=None,
                 device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(input)
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise RuntimeError(f"running_mean should contain {input.shape[1]} elements not "
                               f"{self.num_features}")
        dims = (0,) + tuple(range(2, input.ndim))
        shape = (1, -1) + (1,) * (input.ndim - 2)
        local = math.prod(input.shape[d] for d in dims)
        sums = dF.all_reduce(cat([input.sum(dims), _c.tensor([local], dtype=input.dtype)]),
                             group=self.process_group)
        count = int(sums[-1].item())
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"{count} over all ranks (input size {list(input.shape)} here)")
        mean = sums[:-1] / count
        d = input - mean.reshape(shape)
        var = dF.all_reduce((d * d).sum(dims), group=self.process_group) / count
        if self.track_running_stats:
            factor = self.momentum
            with no_grad():
                self.num_batches_tracked.add_(1)
                if factor is None:  # a cumulative moving average
                    factor = 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1.0 - factor).add_(mean * factor)
                self.running_var.mul_(1.0 - factor).add_(var * (count / (count - 1) * factor))
        scale = _e.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        out = d * scale.reshape(shape)
        return out if self.bias is None else out + self.bias.reshape(shape)

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """``module`` with every ``BatchNorm1d``/``BatchNorm2d`` in it replaced by a
        ``SyncBatchNorm`` holding the same parameters and buffers (the module itself when
        it is one), as PyTorch's."""
        out = module
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            for name in ("weight", "bias"):
                p = getattr(module, name)
                if p is not None:
                    setattr(out, name, p)
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                out.register_buffer(name, getattr(module, name))
            out.train(module.training)
        for name, child in list(module.named_children()):
            new = cls.convert_sync_batchnorm(child, process_group)
            if new is not child:
                setattr(out, name, new)
        return out


class _InstanceNorm(_BatchNorm):
    """Instance norm over dim 1 of a batched input, or dim 0 of an unbatched one; PyTorch's
    defaults: no affine parameters, no running statistics (see ``F.instance_norm``)."""

    _spatial = 1

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None,
                 dtype=None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)

    def _check_input_dim(self, input: Tensor) -> None:
        ranks = (self._spatial + 1, self._spatial + 2)
        if input.ndim not in ranks:
            raise ValueError(f"expected {ranks[0]}D or {ranks[1]}D input (got {input.ndim}D "
                             f"input)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        unbatched = input.ndim == self._spatial + 1
        feature_dim = 0 if unbatched else 1
        if input.shape[feature_dim] != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match "
                                 f"num_features ({self.num_features}), but got: "
                                 f"{input.shape[feature_dim]}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You "
                          f"can silence this warning by not passing in num_features, which is "
                          f"not used because affine=False", stacklevel=2)
        x = input.unsqueeze(0) if unbatched else input
        out = instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats,
                            self.momentum if self.momentum is not None else 0.0, self.eps)
        return out.squeeze(0) if unbatched else out


class InstanceNorm1d(_InstanceNorm):
    """Instance norm of (N, C, L) or (C, L) inputs."""


class InstanceNorm2d(_InstanceNorm):
    """Instance norm of (N, C, H, W) or (C, H, W) inputs.

    >>> nn.InstanceNorm2d(3)(dg.randn(2, 3, 4, 4)).shape
    (2, 3, 4, 4)
    """

    _spatial = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance norm of (N, C, D, H, W) or (C, D, H, W) inputs."""

    _spatial = 3


class LocalResponseNorm(Module):
    """``F.local_response_norm`` over ``size`` neighbouring channels."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75,
                 k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, input: Tensor) -> Tensor:
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class GroupNorm(Module):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None, *, bias: bool = True) -> None:
        super().__init__()
        if num_channels % num_groups:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups, self.num_channels, self.eps, self.affine = (num_groups, num_channels,
                                                                      eps, affine)
        dtype = dtype or _dt.get_default_dtype()
        if affine:
            self.weight = Parameter(_c.ones(num_channels, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        if affine and bias:
            self.bias = Parameter(_c.zeros(num_channels, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class RMSNorm(Module):
    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(_c.ones(shape, dtype=dtype or _dt.get_default_dtype()))
        else:
            self.register_parameter("weight", None)

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class _ChannelDropout(Module):
    _fn = staticmethod(dropout1d)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = p, inplace

    def forward(self, input: Tensor) -> Tensor:
        return self._fn(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class Dropout1d(_ChannelDropout):
    _fn = staticmethod(dropout1d)


class Dropout2d(_ChannelDropout):
    _fn = staticmethod(dropout2d)


class Upsample(Module):
    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners: bool | None = None,
                 recompute_scale_factor: bool | None = None) -> None:
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode
        self.align_corners, self.recompute_scale_factor = align_corners, recompute_scale_factor

    def forward(self, input: Tensor) -> Tensor:
        return interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                           self.recompute_scale_factor)

    def extra_repr(self) -> str:
        sf = self.scale_factor
        sf = float(sf) if isinstance(sf, (int, float)) else sf
        what = f"size={self.size}" if self.size is not None else f"scale_factor={sf}"
        return f"{what}, mode='{self.mode}'"


class Unflatten(Module):
    """Expand dim ``dim`` into ``unflattened_size``."""

    def __init__(self, dim: int, unflattened_size) -> None:
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, input: Tensor) -> Tensor:
        dim = self.dim % input.ndim
        return input.reshape(tuple(input.shape[:dim]) + self.unflattened_size
                             + tuple(input.shape[dim + 1:]))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class LazyLinear(Linear):
    """A Linear whose ``in_features`` is the last dim of its first input: its parameters are
    empty until then, and are made (with Linear's initialisation) in place on the first
    call — the same Parameter objects, so an optimizer made before keeps them — after
    which the module is a :class:`Linear`."""

    def __init__(self, out_features: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        Module.__init__(self)
        check_device(device)
        self.in_features, self.out_features = 0, out_features
        self._dtype = dtype or _dt.get_default_dtype()
        self.weight = Parameter(_c.zeros((0,), dtype=self._dtype))
        self.bias = Parameter(_c.zeros((0,), dtype=self._dtype)) if bias else None
        if not bias:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.in_features:
            super().reset_parameters()

    def forward(self, input: Tensor) -> Tensor:
        if self.in_features == 0:
            self._materialize(input.shape[-1])
        return Linear.forward(self, input)

    def _materialize(self, in_features: int) -> None:
        self.in_features = in_features
        with no_grad():
            self.weight.data = _c.zeros((self.out_features, self.in_features),
                                        dtype=self._dtype)
            if self.bias is not None:
                self.bias.data = _c.zeros((self.out_features,), dtype=self._dtype)
        super().reset_parameters()
        object.__setattr__(self, "__class__", Linear)  # (Module.__setattr__ would keep it)
        del self._dtype

    def _lazy_size_from(self, state_dict, prefix: str):
        """``in_features`` as a checkpoint's weight has it (None: not in it)."""
        w = state_dict.get(prefix + "weight")
        return w.shape[1] if w is not None and len(w.shape) == 2 else None
