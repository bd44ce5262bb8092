"""Adadelta, as in PyTorch (single-tensor form), with the step count kept as a tensor like
Adam's."""

from __future__ import annotations

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from .optimizer import Optimizer


class Adadelta(Optimizer):
    """Adadelta (Zeiler): v ← ρv + (1−ρ)g²; Δ = √(u + ε)/√(v + ε) · g; u ← ρu + (1−ρ)Δ²;
    p ← p − lr·Δ. ``weight_decay`` adds wd·p to g.

    >>> opt = dg.optim.Adadelta(model.parameters())   # lr=1.0, rho=0.9, eps=1e-6
    """

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, foreach=None, *, capturable: bool = False,
                 maximize: bool = False, differentiable: bool = False) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      foreach=foreach, capturable=capturable,
                                      maximize=maximize, differentiable=differentiable))

    def _fill_state(self, st: dict, p, group: dict) -> bool:
        st["step"] = _c.zeros((), dtype=_dt.float32)
        st["square_avg"] = _c.zeros_like(p)
        st["acc_delta"] = _c.zeros_like(p)
        return True

    @no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        for group in self.param_groups:
            lr = self.hyper(group, "lr")
            rho = self.hyper(group, "rho")
            eps = self.hyper(group, "eps")
            weight_decay = self.hyper(group, "weight_decay")
            for p, g in self._grads(group):
                st = self._state_for(p)
                if not st:
                    self._fill_state(st, p, group)
                st["step"].add_(1)
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                square_avg, acc_delta = st["square_avg"], st["acc_delta"]
                square_avg.mul_(rho).addcmul_(g, g, value=1 - rho)
                std = (square_avg + eps).sqrt()
                delta = (acc_delta + eps).sqrt() / std * g
                acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
                p.add_(delta, alpha=-lr)
        return loss
