"""``dyngrad.nn.utils``: gradient clipping and parameter vectors."""

from __future__ import annotations

from collections.abc import Iterable

from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..ops import reduce as _r
from ..tensor import Tensor


def _grads(parameters) -> list:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach=None) -> Tensor:
    """Scale all gradients in place so their joint ``norm_type``-norm is at most
    ``max_norm``; returns the norm before clipping.

    Note: written without Python branches on tensor values — the scale is
    ``min(max_norm / (norm + 1e-6), 1)`` computed as a tensor and always applied — so a
    traced training step needs no value guard here.
    """
    grads = _grads(parameters)
    if not grads:
        return _c.tensor(0.0)
    norm_type = float(norm_type)
    with no_grad():
        norms = _m.stack([_r.norm(g, norm_type) for g in grads])
        total = _r.norm(norms, norm_type)
        if error_if_nonfinite and not bool(_r.all(_e.eq(total, total)) &
                                          _r.all(_e.lt(_e.abs(total), float("inf")))):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                               f"`parameters` is non-finite, so it cannot be clipped. Set "
                               f"error_if_nonfinite=False to disable this check.")
        scale = _e.clamp(float(max_norm) / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale.to(g.dtype))
    return total


def clip_grad_value_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """Clamp every gradient element to [−clip_value, clip_value] in place."""
    with no_grad():
        for g in _grads(parameters):
            g.clamp_(-clip_value, clip_value)


def parameters_to_vector(parameters: Iterable[Tensor]) -> Tensor:
    return _m.cat([_m.reshape(p, (-1,)) for p in parameters])


def vector_to_parameters(vec: Tensor, parameters: Iterable[Tensor]) -> None:
    start = 0
    with no_grad():
        for p in parameters:
            n = p.numel()
            p.copy_(_m.reshape(vec[start:start + n], p.shape))
            start += n
