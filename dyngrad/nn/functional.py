"""``dyngrad.nn.functional`` (imported as ``F``): stateless layers and losses, each a
composition of the op table."""

from __future__ import annotations

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import elementwise as _e
from ..ops import indexing as _i
from ..ops import movement as _m
from ..ops import reduce as _r
from ..ops.conv import conv1d, conv2d, conv_transpose2d
from ..ops.elementwise import gelu, sigmoid, tanh
from ..ops.indexing import one_hot
from ..ops.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cosine_similarity,
    cross_entropy,
    huber_loss,
    kl_div,
    l1_loss,
    margin_ranking_loss,
    mse_loss,
    nll_loss,
    smooth_l1_loss,
)
from ..ops.pool import (
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    max_pool1d,
    max_pool2d,
)
from ..tensor import Tensor
from .functional_activation import (
    elu,
    hardsigmoid,
    hardswish,
    hardtanh,
    leaky_relu,
    logsigmoid,
    mish,
    prelu,
    relu,
    relu6,
    silu,
    softmin,
    softplus,
)
from .functional_attention import multi_head_attention_forward, scaled_dot_product_attention
from .functional_dense import dropout, linear
from .functional_layout import pad, pixel_shuffle, pixel_unshuffle
from .functional_norm import (
    batch_norm,
    centred_moments,
    dropout1d,
    dropout2d,
    group_norm,
    instance_norm,
    interpolate,
    local_response_norm,
    rms_norm,
)

__all__ = ["relu", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "linear", "dropout",
           "embedding", "embedding_renorm_", "layer_norm", "mse_loss", "l1_loss",
           "cross_entropy", "nll_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "softplus", "one_hot",
           "silu", "leaky_relu", "elu", "logsigmoid", "normalize", "pad", "batch_norm",
           "group_norm", "rms_norm", "dropout1d", "dropout2d", "interpolate", "conv1d", "conv2d",
           "conv_transpose2d", "max_pool1d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d",
           "adaptive_max_pool2d", "smooth_l1_loss", "huber_loss", "kl_div", "cosine_similarity",
           "margin_ranking_loss", "hardtanh", "relu6", "hardswish", "hardsigmoid", "mish",
           "prelu", "softmin", "pixel_shuffle", "pixel_unshuffle", "instance_norm",
           "local_response_norm", "scaled_dot_product_attention",
           "multi_head_attention_forward"]


def softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    return _r.softmax(input if dtype is None else input.to(dtype), dim)


def log_softmax(input: Tensor, dim: int, dtype=None) -> Tensor:
    return _r.log_softmax(input if dtype is None else input.to(dtype), dim)


def embedding(input: Tensor, weight: Tensor, padding_idx: int | None = None,
              max_norm: float | None = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` picked by integer ``input``; the row at ``padding_idx`` gets no
    gradient. With ``max_norm``, each row ``input`` picks whose ``norm_type``-norm exceeds
    it is first scaled in place to that norm (PyTorch's ``embedding_renorm_``: it changes
    ``weight`` outside autograd)."""
    idx = input if isinstance(input, Tensor) else _i._as_index(input)
    if idx.dtype is _dt.int32:  # (PyTorch takes Long or Int indices)
        idx = _i._as_index(idx)
    if idx.dtype is not _dt.int64:
        raise RuntimeError(f"embedding: expected an int64 or int32 index tensor, got "
                           f"{idx.dtype.name}")
    if sparse:
        raise NotImplementedError("embedding: sparse=True makes a sparse gradient, and "
                                  "dyngrad has no sparse tensors; use sparse=False (a dense "
                                  "gradient of the same values)")
    if scale_grad_by_freq:
        raise NotImplementedError("embedding: scale_grad_by_freq=True is not supported; "
                                  "use scale_grad_by_freq=False")
    if max_norm is not None:
        embedding_renorm_(weight, idx, max_norm, norm_type)
    out = _i.gather(weight, idx, 0)
    if padding_idx is not None:
        if padding_idx < 0:
            padding_idx += weight.shape[0]
        pad_rows = _m.unsqueeze(_e.eq(idx, padding_idx), -1)
        out = _e.where(pad_rows, out.detach(), out)
    return out


def embedding_renorm_(weight: Tensor, input: Tensor, max_norm: float,
                      norm_type: float = 2.0) -> Tensor:
    """Scale, in place and outside autograd, each row of ``weight`` that ``input`` picks and
    whose ``norm_type``-norm exceeds ``max_norm`` by ``max_norm / (norm + 1e-7)``."""
    with no_grad():
        rows = _m.reshape(input, (-1,))  # (a row picked twice is written twice, the same)
        picked = _i.index_select(weight, 0, rows)
        norms = _r.norm(picked, norm_type, 1, keepdim=True)
        scale = _e.where(_e.gt(norms, max_norm), max_norm / (norms + 1e-7), 1.0)
        weight[rows] = picked * scale
    return weight


def layer_norm(input: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Normalise over the trailing ``normalized_shape`` dims (biased variance), then scale
    and shift."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
        tuple(normalized_shape)
    if input.shape[input.ndim - len(shape):] != shape:
        raise RuntimeError(f"layer_norm: expected input with shape [*, "
                           f"{', '.join(map(str, shape))}], but got input of size "
                           f"{list(input.shape)}")
    dims = tuple(range(input.ndim - len(shape), input.ndim))
    _, d, var = centred_moments(input, dims)
    out = d * _e.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    return input / _e.maximum(_r.norm(input, p, dim, keepdim=True), eps)
