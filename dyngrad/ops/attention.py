"""Fused attention: a primitive pair for softmax(Q·Kᵀ·scale + mask)·V that never keeps the
L×S probabilities, as flash attention does.

- ``flash_attention(q, k, v[, mask])``: q (*b, L, E), k (*b, S, E), v (*b, S, Ev) with the
  same leading dims ``*b`` -> (*b, L, Ev + 1): the output, and each row's logsumexp of its
  scores as the last column. A boolean mask keeps the scores where True, a float one
  (q's dtype) is added; either broadcasts to (*b, L, S). ``causal`` keeps key j for query i
  when j <= i (upper-left aligned). A row whose scores are all -inf gives zeros and a
  logsumexp of -inf (Note [fully masked rows] in ``dyngrad/nn/functional_attention.py``).
- ``flash_attention_backward(q, k, v, o, do[, mask])``: the vjp of the first in q, k and v,
  ``o`` its packed output and ``do`` the gradient of that (a gradient in the logsumexp
  column is honoured: d lse / d s = P) -> (*b, L·E + S·E + S·Ev): dq, dk and dv of each
  leading index flattened one after another.

Note (one output per node): the IR's nodes have one output each, so the pair packs: the
forward's logsumexp rides as an extra column of its output (``scaled_dot_product_attention``
returns the view without it), and the backward's three gradients are one flat row per
leading index, cut apart by views in the vjp.

Note (eager): the numpy impls are the plain formulation — the (L, S) scores of every
leading index exist while the impl runs (a temporary, never saved for backward); the
backward recomputes them from q, k and the saved logsumexp: P = exp(s - lse),
D = rowsum(dO∘O), dS = P∘(dO·Vᵀ - D + dlse), dV = Pᵀ·dO, dQ = scale·dS·K, dK = scale·dSᵀ·Q.
The blockwise online-softmax algorithm is the compiled kernel's
(``compiler/backends/llvm/attention.py``).

Note (plain): ``plain=True`` (the compiler's rewrite of hand-written attention,
``compiler/passes/attention.py``) keeps the plain softmax's answers on a fully masked row:
the output is NaN and so is that row's P (exp(-inf + inf)), which reaches dV through Pᵀ·dO;
but dS of that row is zero, as the hand-written backward's ``where(mask, 0, ·)`` makes it
(every score of the row is masked), so dQ and dK stay finite as in eager.

Note (derivatives of higher order): the forward's vjp is the backward primitive. The
forward's jvp and both rules of the backward primitive are composed from the same formulas
written with dyngrad's ops (:func:`_forward_ops`, :func:`_backward_ops`) — forward-mode AD
and autograd through them — which materialise the L×S matrix; they serve forward mode and
double backward, never a first-order training step. A float mask's gradient is computed the
same way (``scaled_dot_product_attention`` keeps the composite for a mask that requires
grad, so the fused path never needs it there).
"""

from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import enable_grad, is_grad_enabled
from ..dispatch import dispatch
from ..tensor import UPWARD, Tensor
from . import composites as _cm
from . import creation as _c
from . import elementwise as _e
from . import linalg as _la
from . import movement as _m
from . import reduce as _r
from .primitive import Primitive, quiet

NEG_INF = float("-inf")

# ------------------------------------------------------------------ numpy kernels


def _np_scores(q, k, mask, scale, causal):
    """scale·q·kᵀ with the causal rule and the mask applied: (*b, L, S)."""
    s = np.matmul(q, np.swapaxes(k, -1, -2))
    s *= s.dtype.type(float(scale))
    ninf = s.dtype.type(NEG_INF)
    if causal:
        L, S = s.shape[-2:]
        s = np.where(np.tri(L, S, dtype=bool), s, ninf)
    if mask is not None:
        s = np.where(mask, s, ninf) if mask.dtype == np.bool_ else s + mask
    return s


def _flash_impl(q, k, v, mask=None, *, scale, causal, plain=False):
    s = _np_scores(q, k, mask, scale, causal)
    m = s.max(-1, keepdims=True)
    dead = m == NEG_INF
    m = np.where(dead, s.dtype.type(0), m)
    p = np.exp(s - m)
    total = p.sum(-1, keepdims=True)
    out = np.where(dead, s.dtype.type(np.nan if plain else 0), np.matmul(p, v) / total)
    lse = m + np.log(total)  # (-inf for a dead row: log 0)
    return np.concatenate([out, lse.astype(out.dtype)], -1)


def _flash_backward_impl(q, k, v, o, do, mask=None, *, scale, causal, plain=False):
    s = _np_scores(q, k, mask, scale, causal)
    lse = o[..., -1:]
    dead = lse == NEG_INF
    if not plain:  # dead rows: exp(-inf) (plain: exp(-inf + inf), NaN)
        lse = np.where(dead, lse.dtype.type(0), lse)
    p = np.exp(s - lse)
    if do.shape[-1] == v.shape[-1]:  # (the output's gradient alone: the logsumexp's is zero,
        #   its column put back so that numpy's products read g laid out as the padded one's,
        #   bit for bit — a matrix-vector product's path depends on the layout)
        do = np.concatenate([do, np.zeros(do.shape[:-1] + (1,), do.dtype)], -1)
    g, dlse = do[..., :-1], do[..., -1:]
    delta = (g * o[..., :-1]).sum(-1, keepdims=True)
    ds = p * (np.matmul(g, np.swapaxes(v, -1, -2)) - delta + dlse)
    if plain:  # a dead row's dS is zero (Note (plain))
        ds = np.where(dead, ds.dtype.type(0), ds)
    dv = np.matmul(np.swapaxes(p, -1, -2), g)
    dq = np.matmul(ds, k)
    dk = np.matmul(np.swapaxes(ds, -1, -2), q)
    c = q.dtype.type(float(scale))
    lead = q.shape[:-2]  # (sizes spelled out: -1 is ambiguous for an empty batch)
    return np.concatenate([(dq * c).reshape(lead + (math.prod(dq.shape[-2:]),)),
                           (dk * c).reshape(lead + (math.prod(dk.shape[-2:]),)),
                           dv.reshape(lead + (math.prod(dv.shape[-2:]),))], -1)


# ------------------------------------------------------------------ shape rules


def _check(op: str, q, k, v, mask) -> None:
    if not q.dtype is k.dtype is v.dtype or not q.dtype.is_floating_point:
        raise RuntimeError(f"{op}: expected floating q, k and v of one dtype, got "
                           f"{q.dtype.name}, {k.dtype.name} and {v.dtype.name}")
    if q.ndim < 2 or q.ndim != k.ndim or k.ndim != v.ndim or q.shape[:-2] != k.shape[:-2] \
            or k.shape[:-2] != v.shape[:-2] or q.shape[-1] != k.shape[-1] \
            or k.shape[-2] != v.shape[-2]:
        raise RuntimeError(f"{op}: expected q (*b, L, E), k (*b, S, E) and v (*b, S, Ev) "
                           f"with the same leading dims, got {list(q.shape)}, "
                           f"{list(k.shape)} and {list(v.shape)}")
    if mask is not None:
        if mask.dtype is not _dt.bool_ and mask.dtype is not q.dtype:
            raise RuntimeError(f"{op}: expected a bool mask or one of q's dtype "
                               f"({q.dtype.name}), got {mask.dtype.name}")
        scores = tuple(q.shape[:-1]) + (k.shape[-2],)
        try:
            fits = np.broadcast_shapes(tuple(mask.shape), scores) == scores
        except ValueError:
            fits = False
        if not fits:
            raise RuntimeError(f"{op}: mask {list(mask.shape)} does not broadcast to the "
                               f"scores' shape {list(scores)}")


def _flash_rule(q, k, v, mask=None, *, scale, causal, plain=False):
    _check("flash_attention", q, k, v, mask)
    return tuple(q.shape[:-1]) + (v.shape[-1] + 1,), q.dtype


def _flash_backward_rule(q, k, v, o, do, mask=None, *, scale, causal, plain=False):
    _check("flash_attention_backward", q, k, v, mask)
    packed = tuple(q.shape[:-1]) + (v.shape[-1] + 1,)
    if tuple(o.shape) != packed or tuple(do.shape) not in (packed, packed[:-1] + (
            v.shape[-1],)) or o.dtype is not q.dtype or do.dtype is not q.dtype:
        raise RuntimeError(f"flash_attention_backward: expected the output of shape "
                           f"{list(packed)} and its gradient of that shape (or without the "
                           f"logsumexp's column: its gradient zero), got {list(o.shape)} and "
                           f"{list(do.shape)}")
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    return tuple(q.shape[:-2]) + (L * E + S * E + S * Ev,), q.dtype


# ------------------------------------------------------------------ the same, with ops


def attention_scores(q, k, mask, scale, causal):
    """scale·q·kᵀ (*b, L, S) with the causal rule (key j for query i when j <= i) and the
    mask applied (a bool one keeps where True, a float one is added): the composite of the
    pair's rules and of SDPA's unfused path."""
    s = _la.matmul(q, _m.transpose(k, -2, -1)) * scale
    if causal:
        keep = _cm.tril(_c.ones((q.shape[-2], k.shape[-2]), dtype=_dt.bool_))
        s = _e.where(keep, s, NEG_INF)
    if mask is not None:
        s = _e.where(mask, s, NEG_INF) if mask.dtype is _dt.bool_ else s + mask
    return s


def _forward_ops(q, k, v, mask, scale, causal, plain):
    """The forward as a composite (differentiable to any order)."""
    s = attention_scores(q, k, mask, scale, causal)
    dead = _r.all(_e.eq(s, NEG_INF), -1, keepdim=True)
    s = _e.where(dead, 0.0, s)
    lse = _r.logsumexp(s, -1, keepdim=True)
    out = _e.where(dead, float("nan") if plain else 0.0, _la.matmul(_e.exp(s - lse), v))
    return _m.cat([out, _e.where(dead, NEG_INF, lse)], -1)


def _probs_ops(q, k, o, mask, scale, causal, plain):
    lse = _m.narrow(o, -1, o.shape[-1] - 1, 1)
    s = attention_scores(q, k, mask, scale, causal)
    if plain:
        return _e.exp(s - lse)
    dead = _e.eq(lse, NEG_INF)
    return _e.where(dead, 0.0, _e.exp(s - _e.where(dead, 0.0, lse)))


def _score_grad_ops(q, k, v, o, do, mask, scale, causal, plain):
    """(P, dS): the probabilities and the gradient of the masked scores."""
    ev = v.shape[-1]
    p = _probs_ops(q, k, o, mask, scale, causal, plain)
    g, dlse = _m.narrow(do, -1, 0, ev), _m.narrow(do, -1, ev, 1)
    delta = _r.sum(g * _m.narrow(o, -1, 0, ev), -1, keepdim=True)
    ds = p * (_la.matmul(g, _m.transpose(v, -2, -1)) - delta + dlse)
    if plain:  # a dead row's dS is zero (Note (plain))
        ds = _e.where(_e.eq(_m.narrow(o, -1, o.shape[-1] - 1, 1), NEG_INF), 0.0, ds)
    return p, ds


def _backward_ops(q, k, v, o, do, mask, scale, causal, plain):
    """The backward primitive as a composite (differentiable to any order)."""
    ev = v.shape[-1]
    p, ds = _score_grad_ops(q, k, v, o, do, mask, scale, causal, plain)
    g = _m.narrow(do, -1, 0, ev)
    dq = _la.matmul(ds, k) * scale
    dk = _la.matmul(_m.transpose(ds, -2, -1), q) * scale
    dv = _la.matmul(_m.transpose(p, -2, -1), g)
    lead = tuple(q.shape[:-2])
    return _m.cat([_m.reshape(t, lead + (math.prod(t.shape[-2:]),)) for t in (dq, dk, dv)], -1)


def _composed_jvp(ops, arity: int, ts, xs, p):
    """The jvp of ``ops`` (one of the composites above, whose first ``arity`` inputs are
    tensors and the next the optional mask) by forward mode through it. A mask without a
    tangent (a bool one never has one) rides along as a constant."""
    mask = xs[arity] if len(xs) > arity else None
    moving = mask is not None and ts[arity] is not None
    primals = tuple(xs[:arity]) + ((mask,) if moving else ())
    tangents = tuple(t if t is not None else _c.zeros_like(x) for t, x in zip(ts, primals))

    def f(*args):
        return ops(*args[:arity], args[arity] if moving else mask, p["scale"], p["causal"],
                   p.get("plain", False))

    return UPWARD.jvp(f, primals, tangents)[1]  # (forward_ad: built on the op table)


# ------------------------------------------------------------------ derivatives


def _split_grads(flat: Tensor, q_shape, k_shape, v_shape) -> tuple:
    """The backward primitive's flat row cut into dq, dk, dv (views)."""
    sizes = [math.prod(s[-2:]) for s in (q_shape, k_shape, v_shape)]
    out, at = [], 0
    for shape, size in zip((q_shape, k_shape, v_shape), sizes):
        out.append(_m.reshape(_m.narrow(flat, -1, at, size), tuple(shape)))
        at += size
    return tuple(out)


def _flash_vjp(n, g, xs, out):
    q, k, v = xs[:3]
    mask = xs[3] if len(xs) > 3 else None
    p = n.params
    grads = [None] * len(xs)
    if any(n.needs[:3]):
        flat = dispatch(FLASH_ATTENTION_BACKWARD, q, k, v, out, g,
                        *([] if mask is None else [mask]), **p)
        grads[:3] = [d if need else None for d, need in
                     zip(_split_grads(flat, *n.in_shapes[:3]), n.needs)]
    if mask is not None and n.needs[3]:  # a float mask's gradient: dS summed to its shape
        _, ds = _score_grad_ops(q, k, v, out, g, mask, p["scale"], p["causal"],
                                p.get("plain", False))
        grads[3] = _m.sum_to(ds, n.in_shapes[3])
    return tuple(grads)


def _flash_jvp(ts, xs, out, p):
    return _composed_jvp(_forward_ops, 3, ts, xs, p)


def _flash_backward_vjp(n, g, xs, out):
    keep = is_grad_enabled()  # (the engine's create_graph)
    wanted = [i for i, need in enumerate(n.needs) if need]
    mask = xs[5] if len(xs) > 5 else None
    with enable_grad():
        # each wanted input through an identity op of its own: the partial derivatives of
        # the composite in its direct arguments, not through o's own history (o depends on
        # q, k and v)
        args = list(xs)
        for i in wanted:
            args[i] = args[i] + 0.0
        flat = _backward_ops(*args[:5], args[5] if mask is not None else None,
                             n.params["scale"], n.params["causal"], n.params.get("plain", False))
        gs = UPWARD.grad(flat, [args[i] for i in wanted], g, retain_graph=True, create_graph=keep,
                  allow_unused=True)  # (retain: the walk must not free the outer graph)
    grads = [None] * len(xs)
    for i, d in zip(wanted, gs):
        grads[i] = d
    return tuple(grads)


def _flash_backward_jvp(ts, xs, out, p):
    return _composed_jvp(_backward_ops, 5, ts, xs, p)


def _save_all(needs) -> tuple:
    return tuple(range(len(needs)))


FLASH_ATTENTION = Primitive(
    "flash_attention", "window", quiet(_flash_impl), _flash_rule, vjp=_flash_vjp,
    jvp=_flash_jvp, save=_save_all, save_out=True,
    doc="softmax(q·kᵀ·scale + mask)·v over (*b, L, S), with the row logsumexp as an extra "
        "last column: (*b, L, Ev + 1)")
FLASH_ATTENTION_BACKWARD = Primitive(
    "flash_attention_backward", "window", quiet(_flash_backward_impl), _flash_backward_rule,
    vjp=_flash_backward_vjp, jvp=_flash_backward_jvp, save=_save_all,
    doc="flash_attention's vjp in q, k and v from its packed output and that output's "
        "gradient (or the gradient of the output alone, (*b, L, Ev): the logsumexp's zero): "
        "(*b, L·E + S·E + S·Ev), dq, dk and dv flattened in turn")


# ------------------------------------------------------------------ the function


def flash_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                    scale: float, causal: bool) -> Tensor:
    """softmax(Q·Kᵀ·scale + mask)·V by the fused primitive, with leading dims broadcast
    (a broadcast key or value is expanded, and its gradient summed back); the checks are
    ``scaled_dot_product_attention``'s, done before.

    >>> q = dg.randn(2, 3, 4); k = v = dg.randn(2, 5, 4)
    >>> flash_attention(q, k, v, None, 0.5, False).shape
    (2, 3, 4)
    """
    lead = tuple(np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2]))

    def full(t: Tensor) -> Tensor:
        shape = lead + tuple(t.shape[-2:])
        return t if tuple(t.shape) == shape else _m.expand(t, *shape)

    packed = dispatch(FLASH_ATTENTION, full(query), full(key), full(value),
                      *([] if mask is None else [mask]), scale=scale, causal=bool(causal))
    return _m.narrow(packed, -1, 0, value.shape[-1])


__all__ = ["FLASH_ATTENTION", "FLASH_ATTENTION_BACKWARD", "attention_scores", "flash_attention"]
