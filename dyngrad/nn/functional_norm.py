"""Functional forms of normalisation, channel dropout and resizing, with PyTorch's
semantics (re-exported by ``dyngrad.nn.functional``): ``batch_norm``, ``instance_norm``,
``group_norm``, ``rms_norm``, ``local_response_norm``, ``dropout1d``, ``dropout2d`` and
``interpolate`` (nearest, bilinear). All are compositions of the op table, so they
differentiate, trace and compile as their parts do.

Note [batch norm's running statistics]: in training mode the batch is normalised with its
own mean and *biased* variance, and the running statistics move by ``momentum`` towards the
batch mean and the *unbiased* variance (n/(n-1)), as PyTorch does (the module's
``momentum=None`` makes the factor 1/num_batches_tracked: a cumulative average). The update
is an in-place write under no_grad into the buffers, so a compiled training step writes them
back like any other bound tensor it changes. Eval mode normalises with the running
statistics. ``instance_norm`` normalises each (sample, channel) over its spatial dims and
moves the running statistics towards the batch average of the per-instance mean and unbiased
variance (what PyTorch's batch norm over an (1, N·C, ...) view followed by a mean over N
gives).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import is_grad_enabled, no_grad
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import indexing as _i
from ..ops import movement as _m
from ..ops import random as _rnd
from ..ops import reduce as _r
from ..tensor import Tensor


def _per_channel(t: Tensor | None, ndim: int) -> Tensor | None:
    """A (C,) tensor shaped to broadcast along dim 1 of an ``ndim``-d input."""
    return None if t is None else t.reshape((1, -1) + (1,) * (ndim - 2))


def centred_moments(x: Tensor, dims) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, x - mean, biased variance)`` over ``dims`` (kept), with the variance written so
    that its backward needs no second pass (see Note [a variance whose gradient is one
    pass]).

    Note [a variance whose gradient is one pass]: with ``d = x - mean(x)``, the textbook
    ``var = mean(d·d)`` makes autograd send the variance's gradient through ``d`` into
    ``mean`` as well: ``x``'s gradient becomes ``g - mean(g)`` where ``g`` already holds a
    per-channel sum, a reduction that waits for another (two dependent passes over the
    activations in the backward, where PyTorch's kernels make one). The variance is
    computed instead as ``mean(e·e) - mean(e)²`` with ``e = x - c`` and ``c`` the mean
    *detached*: that expression equals Var(x) for every shift ``c`` (expand it), so as a
    function of ``x`` it is the variance exactly and every derivative of every order —
    double backward, forward mode — is the variance's, while autograd sends nothing from
    it to ``mean``. The backward's two sums (of the gradient and of the gradient times
    ``d``) then read the same inputs, and fuse into one pass; the input gradient is the
    textbook ``scale·(g - mean(g) - x̂·mean(g·x̂))``. Numerically it is the corrected
    two-pass formula (Chan, Golub and LeVeque): ``mean(e)`` is the rounding error of the
    mean, and its square corrects ``mean(e·e)`` for it. Compiled, ``e`` and ``d`` are one
    value (a detached alias is its owner)."""
    mean = _r.mean(x, dims, keepdim=True)
    tracked = x.requires_grad and is_grad_enabled()
    e = x - (mean.detach() if tracked else mean)
    drift = _r.mean(e, dims, keepdim=True)
    var = _r.mean(e * e, dims, keepdim=True) - drift * drift  # (the same numbers with or
    #                                                            without autograd)
    # ``d`` made last: the backward engine takes the ready node made last first, so the
    # sum of ``d``'s gradient (for ``mean``) runs right after the product that made that
    # gradient — beside it in the schedule, where the two sums fuse into one pass
    return mean, (x - mean) if tracked else e, var


def _normalised(d: Tensor, invstd: Tensor, weight: Tensor | None,
                bias: Tensor | None) -> Tensor:
    """``d · invstd · weight + bias`` with the per-channel factors multiplied first, as
    PyTorch's kernels do (one scale per channel). Autograd then saves ``d`` and the small
    scale, and never the normalised ``d · invstd``: one full-size tensor kept for backward
    per normalisation, not two (the weight's gradient is ``sum(g · d) · invstd``)."""
    scale = invstd if weight is None else invstd * _per_channel(weight, d.ndim)
    out = d * scale
    return out if bias is None else out + _per_channel(bias, d.ndim)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel (dim 1) over the batch and spatial dims (see Note [batch
    norm's running statistics])."""
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected an input of at least 2 dims (N, C, ...), got "
                         f"shape {list(input.shape)}")
    dims = (0,) + tuple(range(2, input.ndim))
    if training:
        n = math.prod(input.shape[d] for d in dims)
        if n <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got "
                             f"input size {list(input.shape)}")
        mean, d, var = centred_moments(input, dims)
        if running_mean is not None and running_var is not None:
            with no_grad():
                flat_mean = mean.reshape(-1)
                unbiased = var.reshape(-1) * (n / (n - 1))
                running_mean.mul_(1.0 - momentum).add_(flat_mean * momentum)
                running_var.mul_(1.0 - momentum).add_(unbiased * momentum)
        return _normalised(d, _e.rsqrt(var + eps), weight, bias)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: running_mean and running_var are needed in eval "
                         "mode (training=False)")
    mean = _per_channel(running_mean, input.ndim)
    var = _per_channel(running_var, input.ndim)
    return _normalised(input - mean, _e.rsqrt(var + eps), weight, bias)


def instance_norm(input: Tensor, running_mean: Tensor | None = None,
                  running_var: Tensor | None = None, weight: Tensor | None = None,
                  bias: Tensor | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Normalise each channel of each sample of (N, C, ...) ``input`` over its spatial dims
    (biased variance), then scale and shift per channel; ``use_input_stats=False``
    normalises with the running statistics instead (see Note [batch norm's running
    statistics] for the update).

    >>> F.instance_norm(dg.randn(2, 3, 8)).shape
    (2, 3, 8)
    """
    if use_input_stats and math.prod(input.shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                         f"{list(input.shape)}")
    if input.ndim < 2:
        raise ValueError(f"instance_norm: expected an input of at least 2 dims (N, C, ...), "
                         f"got shape {list(input.shape)}")
    if not use_input_stats and (running_mean is None or running_var is None):
        raise RuntimeError("Expected running_mean and running_var to be defined when "
                           "use_input_stats is false")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.numel() != c:
            raise RuntimeError(f"instance_norm: {name} should contain {c} elements (the "
                               f"channels, dim 1 of input {list(input.shape)}) not {t.numel()}")
    if use_input_stats:
        dims = tuple(range(2, input.ndim))
        mean, d, var = centred_moments(input, dims)
        if running_mean is not None and running_var is not None:
            n = math.prod(input.shape[2:])
            with no_grad():
                batch_mean = _r.mean(mean.reshape(input.shape[0], c), 0)
                unbiased = _r.mean(var.reshape(input.shape[0], c), 0) * (n / (n - 1))
                running_mean.mul_(1.0 - momentum).add_(batch_mean * momentum)
                running_var.mul_(1.0 - momentum).add_(unbiased * momentum)
        return _normalised(d, _e.rsqrt(var + eps), weight, bias)
    return _normalised(input - _per_channel(running_mean, input.ndim),
                       _e.rsqrt(_per_channel(running_var, input.ndim) + eps), weight, bias)


def group_norm(input: Tensor, num_groups: int, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise each of ``num_groups`` groups of channels over its channels and spatial
    dims (biased variance), then scale and shift per channel."""
    if input.ndim < 2:
        raise ValueError(f"group_norm: expected an input of at least 2 dims (N, C, ...), got "
                         f"shape {list(input.shape)}")
    n, c = input.shape[0], input.shape[1]
    if c % num_groups:
        raise RuntimeError(f"group_norm: expected the number of channels ({c}) to be "
                           f"divisible by num_groups ({num_groups})")
    g = input.reshape(n, num_groups, -1)
    _, d, var = centred_moments(g, 2)
    out = (d * _e.rsqrt(var + eps)).reshape(input.shape)
    if weight is not None:
        out = out * _per_channel(weight, input.ndim)
    if bias is not None:
        out = out + _per_channel(bias, input.ndim)
    return out


def rms_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
             eps: float | None = None) -> Tensor:
    """x / sqrt(mean(x², trailing dims) + eps), times ``weight``; ``eps=None`` is the
    machine epsilon of the input's dtype, as in PyTorch."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
        tuple(normalized_shape)
    if input.shape[input.ndim - len(shape):] != shape:
        raise RuntimeError(f"rms_norm: expected input with shape [*, "
                           f"{', '.join(map(str, shape))}], but got input of size "
                           f"{list(input.shape)}")
    if eps is None:
        eps = float(np.finfo(input.dtype.np).eps)
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    out = input * _e.rsqrt(_r.mean(input * input, dims, keepdim=True) + eps)
    return out if weight is None else out * weight


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """x / (k + alpha·mean(x² over ``size`` neighbouring channels))^beta, the window centred
    on each channel and zero-padded at the ends, as PyTorch (AlexNet's LRN).

    >>> F.local_response_norm(dg.randn(1, 6, 4, 4), 3).shape
    (1, 6, 4, 4)
    """
    if input.ndim < 3:
        raise ValueError(f"local_response_norm: Expected 3D or higher dimensionality input "
                         f"(got {input.ndim} dimensions)")
    if input.numel() == 0:
        return input
    c = input.shape[1]
    pads = [(0, 0)] * input.ndim
    pads[1] = (size // 2, (size - 1) // 2)
    sq = _m.pad(input * input, pads)
    window = _m.narrow(sq, 1, 0, c)
    for j in range(1, size):
        window = window + _m.narrow(sq, 1, j, c)
    return input / ((window / size * alpha + k) ** beta)


def _channel_dropout(input: Tensor, p: float, training: bool, inplace: bool, batched: int,
                     op: str) -> Tensor:
    """Zero whole channels with probability ``p`` (one draw per (sample, channel)), scaling
    the rest by 1/(1-p). ``batched``: the input's rank with a batch dim."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if input.ndim not in (batched - 1, batched):
        raise RuntimeError(f"{op}: Expected {batched - 1}D or {batched}D input, but received "
                           f"a {input.ndim}D input. Note that {op} exists to provide channel-"
                           f"wise dropout on inputs with {batched - 2} spatial dimension(s)")
    if not training or p == 0.0:
        return input
    lead = 2 if input.ndim == batched else 1
    mask_shape = tuple(input.shape[:lead]) + (1,) * (input.ndim - lead)
    if p == 1.0:
        out = input * 0.0
    else:
        keep = _e.ge(_rnd.rand(mask_shape, dtype=input.dtype), p)
        out = _e.where(keep, input * (1.0 / (1.0 - p)), 0.0)
    return input.copy_(out) if inplace else out


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel dropout of (N, C, L) or (C, L) inputs."""
    return _channel_dropout(input, p, training, inplace, 3, "dropout1d")


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True,
              inplace: bool = False) -> Tensor:
    """Channel dropout of (N, C, H, W) inputs; as PyTorch 2.x, a 3-D input is taken as
    (N, C, L) and a 2-D one gets elementwise dropout, each with PyTorch's warning."""
    if input.ndim == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L), where C is the channel dim. This behavior will change "
                      "in a future release to interpret the input as one without a batch "
                      "dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise "
                      "dropout behavior, please switch to using dropout1d instead.",
                      stacklevel=2)
        return _channel_dropout(input, p, training, inplace, 3, "dropout2d")
    if input.ndim == 2:
        warnings.warn("dropout2d: Received a 2-D input to dropout2d, which is deprecated and "
                      "will result in an error in a future release. To retain the behavior "
                      "and silence this warning, please use dropout instead. Note that "
                      "dropout2d exists to provide channel-wise dropout on inputs with 2 "
                      "spatial dimensions, a channel dimension, and an optional batch "
                      "dimension (i.e. 3D or 4D inputs).", stacklevel=2)
        return _channel_dropout(input.unsqueeze(-1), p, training, False, 3,
                                "dropout2d").squeeze(-1) if not inplace else \
            input.copy_(_channel_dropout(input.unsqueeze(-1), p, training, False, 3,
                                         "dropout2d").squeeze(-1))  # (one draw per element)
    return _channel_dropout(input, p, training, inplace, 4, "dropout2d")


def _out_sizes(input: Tensor, size, scale_factor, spatial: int) -> tuple[tuple, tuple]:
    """(output sizes, the scale each source index is computed with) of ``interpolate``."""
    if (size is None) == (scale_factor is None):
        raise ValueError("only one of size or scale_factor should be defined")
    ins = tuple(input.shape[2:])
    if size is not None:
        outs = (size,) * spatial if isinstance(size, int) else tuple(size)
        if len(outs) != spatial:
            raise ValueError(f"Input and output must have the same number of spatial "
                             f"dimensions, but got input with spatial dimensions of "
                             f"{list(ins)} and output size of {list(outs)}. Please provide "
                             f"input tensor in (N, C, d1, d2, ...,dK) format and output size "
                             f"in (o1, o2, ...,oK) format.")
        return outs, tuple(i / o for i, o in zip(ins, outs))
    sf = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) else \
        tuple(scale_factor)
    outs = tuple(int(math.floor(i * s)) for i, s in zip(ins, sf))
    return outs, tuple(1.0 / s for s in sf)  # (PyTorch: the given factor, not in/out)


def _source_index(out: int, size_in: int, scale: float, mode: str, align_corners: bool):
    """Per output position: (lower source index, upper, weight of the upper) as lists."""
    lo, hi, w = [], [], []
    for o in range(out):
        if mode == "nearest":
            s = min(int(math.floor(o * scale)), size_in - 1)
            lo.append(s), hi.append(s), w.append(0.0)
            continue
        if align_corners:
            src = o * (size_in - 1) / (out - 1) if out > 1 else 0.0
        else:
            src = max((o + 0.5) * scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), size_in - 1)
        i1 = min(i0 + 1, size_in - 1)
        lo.append(i0), hi.append(i1), w.append(src - i0)
    return lo, hi, w


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
                align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None) -> Tensor:
    """Resize the spatial dims of (N, C, ...) ``input``: ``mode`` 'nearest' (any number of
    spatial dims) or 'bilinear' (4-D input; ``align_corners`` as PyTorch)."""
    if mode not in ("nearest", "bilinear"):
        raise NotImplementedError(f"interpolate: mode {mode!r} is not supported yet "
                                  f"('nearest' and 'bilinear' are)")
    if mode == "bilinear" and input.ndim != 4:
        raise ValueError(f"interpolate: bilinear mode expects a 4-D input (N, C, H, W), got "
                         f"{input.ndim}-D")
    if mode == "nearest" and align_corners is not None:
        raise ValueError("align_corners option can only be set with the interpolating modes: "
                         "linear | bilinear | bicubic | trilinear")
    spatial = input.ndim - 2
    outs, scales = _out_sizes(input, size, scale_factor, spatial)
    if recompute_scale_factor:
        scales = tuple(i / o for i, o in zip(input.shape[2:], outs))
    out = input
    for k, (o, s) in enumerate(zip(outs, scales)):
        dim = 2 + k
        lo, hi, w = _source_index(o, input.shape[dim], s, mode, bool(align_corners))
        low = _i.index_select(out, dim, _c.tensor(lo, dtype=_dt.int64))
        if mode == "nearest":
            out = low
            continue
        high = _i.index_select(out, dim, _c.tensor(hi, dtype=_dt.int64))
        wt = _c.tensor(w, dtype=input.dtype).reshape((-1,) + (1,) * (input.ndim - 1 - dim))
        out = low + (high - low) * wt
    return out
