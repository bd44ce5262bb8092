"""Attention with PyTorch's semantics (re-exported by ``dyngrad.nn.functional``):
``scaled_dot_product_attention`` and ``multi_head_attention_forward``, the functional core of
``nn.MultiheadAttention``. Without dropout, SDPA runs as the fused primitive pair of
``dyngrad/ops/attention.py`` (eager computes the L×S scores inside its numpy impl but saves
only the output and a logsumexp per row; compiled steps get one flash-style kernel per
direction); with dropout, with a float mask that requires grad, and in MultiheadAttention's
weights path it is the plain formulation composed from the op table (matmul, where,
softmax, matmul), which materialises the L×S score matrix.

Note [two mask conventions]: SDPA's boolean ``attn_mask`` says where to *attend* (True keeps
a score); MultiheadAttention's boolean ``attn_mask`` and ``key_padding_mask`` say what is
*not allowed* (True masks). MultiheadAttention turns its boolean masks into float masks of
0 and -inf (``canonical_mask``) before anything else, so from there on every mask is added
to the scores, and SDPA only ever sees float masks from it. A float mask is added in both.

Note [fully masked rows]: a query row whose scores are all -inf has no defined softmax.
PyTorch 2.13's SDPA gives that row zeros (its ``_safe_softmax``) with zero gradients, while
MultiheadAttention with ``need_weights=True`` takes its own path (baddbmm, plain softmax)
and gives NaN. Both are reproduced: SDPA with a mask swaps such rows' scores for zeros
before the softmax (so no NaN reaches the backward) and zeroes their probabilities after;
the weights path of MultiheadAttention uses the plain softmax.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import dtypes as _dt
from ..ops import composites as _cm
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..ops import reduce as _r
from ..ops.attention import attention_scores, flash_attention
from ..tensor import Tensor
from .functional_dense import dropout, linear
from .functional_layout import pad

NEG_INF = float("-inf")


# ------------------------------------------------------------------ scaled dot product


def _check_sdpa(query: Tensor, key: Tensor, value: Tensor, attn_mask, dropout_p: float,
                is_causal: bool, enable_gqa: bool) -> None:
    """PyTorch's input checks, raised before any computation, naming the shapes."""
    op = "scaled_dot_product_attention"
    if min(query.ndim, key.ndim, value.ndim) < 2:
        raise RuntimeError(f"{op}: Expected query, key, and value to all be at least 2 "
                           f"dimensional, but got query.dim: {query.ndim} key.dim: "
                           f"{key.ndim} and value.dim: {value.ndim} instead.")
    if not query.dtype is key.dtype is value.dtype:
        raise RuntimeError(f"{op}: Expected query, key, and value to have the same dtype, "
                           f"but got query.dtype: {query.dtype.name} key.dtype: "
                           f"{key.dtype.name} and value.dtype: {value.dtype.name} instead.")
    if not query.dtype.is_floating_point:
        raise RuntimeError(f"{op}: expected floating query, key and value, got "
                           f"{query.dtype.name}")
    if key.shape[-1] != query.shape[-1]:
        raise RuntimeError(f"{op}: query and key must have the same embedding dimension E; "
                           f"query {list(query.shape)}, key {list(key.shape)}")
    if value.shape[-2] != key.shape[-2]:
        raise RuntimeError(f"{op}: key and value must have the same sequence length S "
                           f"(dim -2); key {list(key.shape)}, value {list(value.shape)}")
    if not 0.0 <= dropout_p <= 1.0:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got "
                           f"{dropout_p}")
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be "
                           "set when is_causal=True")
    if enable_gqa:
        if min(query.ndim, key.ndim, value.ndim) < 3:
            raise RuntimeError(f"{op}: enable_gqa needs a heads dimension (-3) in query, key "
                               f"and value; got {list(query.shape)}, {list(key.shape)}, "
                               f"{list(value.shape)}")
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hq % hk or hq % hv:
            raise RuntimeError(f"{op}: Number of heads in key and value must divide the "
                               f"number of heads in query; query has {hq}, key {hk}, value "
                               f"{hv} (enable_gqa=True)")
    lead = -3 if enable_gqa else -2  # with GQA the heads are checked above
    batch = [query.shape[:lead], key.shape[:lead], value.shape[:lead]]
    try:
        np.broadcast_shapes(*batch)
    except ValueError:
        raise RuntimeError(f"{op}: the batch dimensions of query, key and value do not "
                           f"broadcast: query {list(query.shape)}, key {list(key.shape)}, "
                           f"value {list(value.shape)} (pass enable_gqa=True to share key "
                           f"and value heads among query heads)") from None
    if attn_mask is not None:
        if attn_mask.dtype is not _dt.bool_ and attn_mask.dtype is not query.dtype:
            raise RuntimeError(f"{op}: Expected attn_mask dtype to be bool or to match query "
                               f"dtype, but got attn_mask.dtype: {attn_mask.dtype.name} and "
                               f"query.dtype: {query.dtype.name} instead.")


def _scores_shape(query: Tensor, key: Tensor) -> tuple:
    batch = np.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    return tuple(batch) + (query.shape[-2], key.shape[-2])


def _softmax_rows_may_be_masked(scores: Tensor) -> Tensor:
    """Softmax over the last dim, with rows that are entirely -inf giving zeros (and zero
    gradients) instead of NaN, as PyTorch's ``_safe_softmax``: see Note [fully masked rows]."""
    dead = _r.all(_e.eq(scores, NEG_INF), -1, keepdim=True)
    probs = _r.softmax(_e.where(dead, 0.0, scores), -1)
    return _e.where(dead, 0.0, probs)


def _fused(query: Tensor, key: Tensor, attn_mask: Tensor | None, dropout_p: float) -> bool:
    """Whether SDPA runs as the fused primitive pair (``dyngrad/ops/attention.py``): not with
    dropout (the probabilities must exist to be dropped), nor for a float mask that requires
    grad (its gradient is the L×S score gradient), nor for empty sequences."""
    if dropout_p > 0.0 or query.shape[-2] == 0 or key.shape[-2] == 0:
        return False
    return attn_mask is None or attn_mask.dtype is _dt.bool_ or not attn_mask.requires_grad


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, *, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """softmax(Q·Kᵀ·scale + mask)·V over the last two dims, with PyTorch's semantics.

    Shapes: query (..., Hq, L, E), key (..., H, S, E), value (..., H, S, Ev) → (..., Hq, L, Ev);
    the leading dims broadcast. A boolean ``attn_mask`` keeps the scores where it is True
    (True means *attend*); a float one (query's dtype) is added. ``is_causal`` keeps key j
    for query i when j ≤ i (upper-left aligned when L ≠ S) and excludes ``attn_mask``.
    ``dropout_p`` is applied whenever it is nonzero, in training or not. ``scale`` defaults
    to 1/√E. ``enable_gqa`` repeats each key/value head for Hq/H consecutive query heads.
    Rows with every key masked give zeros (Note [fully masked rows]).

    >>> q = dg.randn(2, 4, 5, 8); k = v = dg.randn(2, 4, 7, 8)
    >>> F.scaled_dot_product_attention(q, k, v, is_causal=True).shape
    (2, 4, 5, 8)
    """
    _check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
    if enable_gqa:
        key = _cm.repeat_interleave(key, query.shape[-3] // key.shape[-3], -3)
        value = _cm.repeat_interleave(value, query.shape[-3] // value.shape[-3], -3)
    # (E = 0: the scores are empty sums, zeros, whatever the factor; PyTorch's 1/√0 = inf
    # only ever multiplies the empty q and k, so its attention is uniform)
    factor = 1.0 / math.sqrt(query.shape[-1] or 1) if scale is None else scale
    if attn_mask is not None:
        expected = _scores_shape(query, key)
        try:
            fits = np.broadcast_shapes(attn_mask.shape, expected) == expected
        except ValueError:
            fits = False
        if not fits:
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape "
                               f"{list(attn_mask.shape)} does not broadcast to the attention "
                               f"weights' shape {list(expected)} (..., L, S)")
    if _fused(query, key, attn_mask, dropout_p):
        return flash_attention(query, key, value, attn_mask, factor, is_causal)
    scores = attention_scores(query, key, attn_mask, factor, is_causal)
    if attn_mask is not None:
        probs = _softmax_rows_may_be_masked(scores)
    else:
        # without a mask no row is all -inf (causal rows always keep key 0)
        probs = _r.softmax(scores, -1)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p, training=True)
    return probs @ value


# ------------------------------------------------------------------ multi-head attention


def canonical_mask(mask: Tensor | None, mask_name: str, other_type, other_name: str,
                   target_type, check_other: bool = True) -> Tensor | None:
    """A MultiheadAttention mask as a float mask of ``target_type``: a boolean one becomes
    -inf where True (*not allowed*) and 0 elsewhere; a float one is kept. Warns, as PyTorch
    does, when it and ``other_type`` (the other mask's dtype) differ."""
    if mask is None:
        return None
    if mask.dtype is not _dt.bool_ and not mask.dtype.is_floating_point:
        raise AssertionError(f"only bool and floating types of {mask_name} are supported "
                             f"(got {mask.dtype.name})")
    if check_other and other_type is not None and mask.dtype is not other_type:
        warnings.warn(f"Support for mismatched {mask_name} and {other_name} is deprecated. "
                      f"Use same type for both instead.", stacklevel=3)
    if mask.dtype is _dt.bool_:
        mask = _c.zeros(mask.shape, dtype=target_type).masked_fill(mask, NEG_INF)
    return mask


def _mha_is_batched(query: Tensor, key: Tensor, value: Tensor, key_padding_mask,
                    attn_mask, num_heads: int) -> bool:
    """PyTorch's ``_mha_shape_check``: 3-d inputs are batched, 2-d ones are not."""
    op = "multi_head_attention_forward"
    if query.ndim == 3:
        if key.ndim != 3 or value.ndim != 3:
            raise AssertionError(f"{op}: For batched (3-D) `query`, expected `key` and "
                                 f"`value` to be 3-D but found {key.ndim}-D and "
                                 f"{value.ndim}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.ndim != 2:
            raise AssertionError(f"{op}: For batched (3-D) `query`, expected "
                                 f"`key_padding_mask` to be `None` or 2-D but found "
                                 f"{key_padding_mask.ndim}-D tensor instead")
        if attn_mask is not None and attn_mask.ndim not in (2, 3):
            raise AssertionError(f"{op}: For batched (3-D) `query`, expected `attn_mask` to "
                                 f"be `None`, 2-D or 3-D but found {attn_mask.ndim}-D tensor "
                                 f"instead")
        return True
    if query.ndim == 2:
        if key.ndim != 2 or value.ndim != 2:
            raise AssertionError(f"{op}: For unbatched (2-D) `query`, expected `key` and "
                                 f"`value` to be 2-D but found {key.ndim}-D and "
                                 f"{value.ndim}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.ndim != 1:
            raise AssertionError(f"{op}: For unbatched (2-D) `query`, expected "
                                 f"`key_padding_mask` to be `None` or 1-D but found "
                                 f"{key_padding_mask.ndim}-D tensor instead")
        if attn_mask is not None:
            if attn_mask.ndim not in (2, 3):
                raise AssertionError(f"{op}: For unbatched (2-D) `query`, expected "
                                     f"`attn_mask` to be `None`, 2-D or 3-D but found "
                                     f"{attn_mask.ndim}-D tensor instead")
            expected = (num_heads, query.shape[0], key.shape[0])
            if attn_mask.ndim == 3 and tuple(attn_mask.shape) != expected:
                raise AssertionError(f"{op}: Expected `attn_mask` shape to be {expected} but "
                                     f"got {tuple(attn_mask.shape)}")
        return False
    raise AssertionError(f"{op}: query should be unbatched 2D or batched 3D tensor but "
                         f"received {query.ndim}-D query tensor")


def _in_projection(query, key, value, in_proj_weight, in_proj_bias, separate, q_proj_weight,
                   k_proj_weight, v_proj_weight, embed_dim: int):
    """q, k, v projected by the packed (3E, E) weight or by three separate ones. Self- and
    encoder-decoder attention project the shared input once (as PyTorch does)."""
    op = "multi_head_attention_forward"
    if not separate:
        if in_proj_weight is None:
            raise AssertionError(f"{op}: use_separate_proj_weight is False but "
                                 f"in_proj_weight is None")
        E = embed_dim
        if key is value and query is key:
            return _m.chunk(linear(query, in_proj_weight, in_proj_bias), 3, -1)
        if key is value:
            b_q = b_kv = None
            if in_proj_bias is not None:
                b_q, b_kv = in_proj_bias[:E], in_proj_bias[E:]
            k, v = _m.chunk(linear(key, in_proj_weight[E:], b_kv), 2, -1)
            return linear(query, in_proj_weight[:E], b_q), k, v
        w_q, w_k, w_v = _m.chunk(in_proj_weight, 3, 0)
        b_q = b_k = b_v = None
        if in_proj_bias is not None:
            b_q, b_k, b_v = _m.chunk(in_proj_bias, 3, 0)
        return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)
    for name, w in (("q", q_proj_weight), ("k", k_proj_weight), ("v", v_proj_weight)):
        if w is None:
            raise AssertionError(f"{op}: use_separate_proj_weight is True but "
                                 f"{name}_proj_weight is None")
    for what, w, x in (("query", q_proj_weight, query), ("key", k_proj_weight, key),
                       ("value", v_proj_weight, value)):
        expected = (embed_dim, x.shape[-1])
        if tuple(w.shape) != expected:
            raise AssertionError(f"{op}: expecting {what} weights shape of {expected}, but "
                                 f"got {tuple(w.shape)}")
    b_q = b_k = b_v = None
    if in_proj_bias is not None:
        b_q, b_k, b_v = _m.chunk(in_proj_bias, 3, 0)
    return (linear(query, q_proj_weight, b_q), linear(key, k_proj_weight, b_k),
            linear(value, v_proj_weight, b_v))


def multi_head_attention_forward(query: Tensor, key: Tensor, value: Tensor,
                                 embed_dim_to_check: int, num_heads: int,
                                 in_proj_weight: Tensor | None, in_proj_bias: Tensor | None,
                                 bias_k: Tensor | None, bias_v: Tensor | None,
                                 add_zero_attn: bool, dropout_p: float,
                                 out_proj_weight: Tensor, out_proj_bias: Tensor | None,
                                 training: bool = True,
                                 key_padding_mask: Tensor | None = None,
                                 need_weights: bool = True, attn_mask: Tensor | None = None,
                                 use_separate_proj_weight: bool = False,
                                 q_proj_weight: Tensor | None = None,
                                 k_proj_weight: Tensor | None = None,
                                 v_proj_weight: Tensor | None = None,
                                 static_k: Tensor | None = None,
                                 static_v: Tensor | None = None,
                                 average_attn_weights: bool = True,
                                 is_causal: bool = False):
    """The forward of ``nn.MultiheadAttention`` on sequence-first inputs, step for step as
    PyTorch's: (L, N, E) or unbatched (L, E) query, (S, N, Ek) key, (S, N, Ev) value →
    ``(attn_output, attn_weights)``. Boolean masks are True where attention is *not allowed*
    (Note [two mask conventions]). With ``need_weights`` the weights are computed
    explicitly (a fully masked row gives NaN, as in PyTorch) and returned averaged over
    heads (N, L, S) or per head (N, num_heads, L, S); without, the heads go through
    ``scaled_dot_product_attention`` (a fully masked row gives zeros) and the weights are
    None.

    >>> E, H = 8, 2; x = dg.randn(5, 3, E)
    >>> out, w = F.multi_head_attention_forward(x, x, x, E, H, dg.randn(3 * E, E), None,
    ...     None, None, False, 0.0, dg.randn(E, E), None)
    >>> out.shape, w.shape
    ((5, 3, 8), (3, 5, 5))
    """
    op = "multi_head_attention_forward"
    is_batched = _mha_is_batched(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = _unsqueeze_keeping_identity(query, key, value)
        if key_padding_mask is not None:
            key_padding_mask = _m.unsqueeze(key_padding_mask, 0)
    tgt_len, bsz, embed_dim = query.shape
    src_len = key.shape[0]

    key_padding_mask = canonical_mask(key_padding_mask, "key_padding_mask",
                                      None if attn_mask is None else attn_mask.dtype,
                                      "attn_mask", query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the "
                           "Transformer module method `generate_square_subsequent_mask` to "
                           "create this mask.")
    if is_causal and key_padding_mask is None and not need_weights:
        # the hint stands for the mask: SDPA applies it without reading the mask
        attn_mask = None
    else:
        attn_mask = canonical_mask(attn_mask, "attn_mask", None, "", query.dtype,
                                   check_other=False)
        if key_padding_mask is not None:
            is_causal = False  # the merged mask is no longer causal

    if embed_dim != embed_dim_to_check:
        raise AssertionError(f"{op}: was expecting embedding dimension of "
                             f"{embed_dim_to_check}, but got {embed_dim} (query of shape "
                             f"{list(query.shape)})")
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"{op}: embed_dim {embed_dim} not divisible by num_heads "
                             f"{num_heads}")
    if use_separate_proj_weight:
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(f"{op}: key's sequence and batch dims {list(key.shape[:2])} "
                                 f"do not match value's {list(value.shape[:2])}")
    elif key.shape != value.shape:
        raise AssertionError(f"{op}: key shape {list(key.shape)} does not match value shape "
                             f"{list(value.shape)}")

    q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias,
                             use_separate_proj_weight, q_proj_weight, k_proj_weight,
                             v_proj_weight, embed_dim)

    if attn_mask is not None:
        if attn_mask.ndim == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is "
                                   f"{list(attn_mask.shape)}, but should be "
                                   f"{[tgt_len, src_len]}.")
            attn_mask = _m.unsqueeze(attn_mask, 0)
        elif attn_mask.ndim == 3:
            if tuple(attn_mask.shape) != (bsz * num_heads, tgt_len, src_len):
                raise RuntimeError(f"The shape of the 3D attn_mask is "
                                   f"{list(attn_mask.shape)}, but should be "
                                   f"{[bsz * num_heads, tgt_len, src_len]}.")
        else:
            raise RuntimeError(f"attn_mask's dimension {attn_mask.ndim} is not supported")

    if bias_k is not None and bias_v is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError(f"{op}: bias cannot be added to static key or value.")
        k = _m.cat([k, _m.repeat(bias_k, 1, bsz, 1)])
        v = _m.cat([v, _m.repeat(bias_v, 1, bsz, 1)])
        attn_mask = None if attn_mask is None else pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else pad(key_padding_mask, (0, 1))
    elif bias_k is not None or bias_v is not None:
        raise AssertionError(f"{op}: bias_k and bias_v must be given together")

    # heads become part of the batch: (N·H, L, head_dim)
    q = _m.transpose(q.reshape(tgt_len, bsz * num_heads, head_dim), 0, 1)
    k = _heads_first(k, static_k, bsz, num_heads, head_dim, "static_k")
    v = _heads_first(v, static_v, bsz, num_heads, head_dim, "static_v")

    if add_zero_attn:
        k = _m.cat([k, _c.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype)], 1)
        v = _m.cat([v, _c.zeros((bsz * num_heads, 1, head_dim), dtype=v.dtype)], 1)
        attn_mask = None if attn_mask is None else pad(attn_mask, (0, 1))
        key_padding_mask = None if key_padding_mask is None else pad(key_padding_mask, (0, 1))

    src_len = k.shape[1]
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (bsz, src_len):
            raise AssertionError(f"{op}: expected key_padding_mask of shape "
                                 f"{[bsz, src_len]} (batch, source length), got "
                                 f"{list(key_padding_mask.shape)}")
        kpm = _m.expand(key_padding_mask.reshape(bsz, 1, 1, src_len), bsz, num_heads, 1,
                        src_len).reshape(bsz * num_heads, 1, src_len)
        attn_mask = kpm if attn_mask is None else attn_mask + kpm

    if not training:
        dropout_p = 0.0

    if need_weights:
        weights = (q * math.sqrt(1.0 / float(head_dim))) @ _m.transpose(k, -2, -1)
        if attn_mask is not None:
            weights = attn_mask + weights
        weights = _r.softmax(weights, -1)  # plain: NaN for fully masked rows, as PyTorch
        if dropout_p > 0.0:
            weights = dropout(weights, dropout_p)
        out = _m.transpose(weights @ v, 0, 1).reshape(tgt_len * bsz, embed_dim)
        out = linear(out, out_proj_weight, out_proj_bias).reshape(tgt_len, bsz, -1)
        weights = weights.reshape(bsz, num_heads, tgt_len, src_len)
        if average_attn_weights:
            weights = _r.mean(weights, 1)
        if not is_batched:
            out, weights = _m.squeeze(out, 1), _m.squeeze(weights, 0)
        return out, weights

    if attn_mask is not None:
        if attn_mask.shape[0] == 1 and attn_mask.ndim == 3:
            attn_mask = _m.unsqueeze(attn_mask, 0)
        else:
            attn_mask = attn_mask.reshape(bsz, num_heads, -1, src_len)
    q = q.reshape(bsz, num_heads, tgt_len, head_dim)
    k = k.reshape(bsz, num_heads, src_len, head_dim)
    v = v.reshape(bsz, num_heads, src_len, head_dim)
    out = scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal)
    out = _m.permute(out, (2, 0, 1, 3)).reshape(bsz * tgt_len, embed_dim)
    out = linear(out, out_proj_weight, out_proj_bias).reshape(tgt_len, bsz, -1)
    if not is_batched:
        out = _m.squeeze(out, 1)
    return out, None


def _unsqueeze_keeping_identity(query, key, value):
    """Unsqueeze dim 1 of each, keeping ``query is key`` and ``key is value`` true where they
    were (the in-projection projects a shared input once)."""
    k = _m.unsqueeze(key, 1)
    q = k if query is key else _m.unsqueeze(query, 1)
    v = k if value is key else _m.unsqueeze(value, 1)
    return q, k, v


def _heads_first(x: Tensor, static: Tensor | None, bsz: int, num_heads: int, head_dim: int,
                 name: str) -> Tensor:
    """(S, N, E) → (N·H, S, head_dim), or the given ``static_k``/``static_v`` after checking
    its shape."""
    if static is None:
        return _m.transpose(x.reshape(x.shape[0], bsz * num_heads, head_dim), 0, 1)
    if static.shape[0] != bsz * num_heads or static.shape[2] != head_dim:
        raise AssertionError(f"multi_head_attention_forward: expecting {name} of shape "
                             f"({bsz * num_heads}, S, {head_dim}), but got "
                             f"{list(static.shape)}")
    return static
