"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""

from __future__ import annotations

import math

from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD: g ← g + wd·p; buf ← μ·buf + (1 − dampening)·g (buf = g at the first
    step); g ← g + μ·buf (Nesterov) or buf; p ← p − lr·g."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def first_step_creates_state(self) -> bool:
        """Only a momentum buffer is state; without momentum a step makes none."""
        return any(p.requires_grad and not self.state.get(p)
                   for group in self.param_groups if group["momentum"] != 0
                   for p in group["params"])

    def _fill_state(self, st: dict, p, group: dict) -> bool:
        # (a first step's buffer is the gradient g; a later step's is m·buf + (1 − d)·g,
        # which for buf = −0 is g bit for bit when d = 0: −0·m is −0 for a finite m, and
        # −0 + g is g for every g, ±0 and NaN included — in any order, fused or not)
        m = group["momentum"]
        if group["dampening"] != 0 or not 0 < m < math.inf:
            return False
        st["momentum_buffer"] = _c.full_like(p, -0.0)
        return True

    @no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        for group in self.param_groups:
            lr = self.hyper(group, "lr")
            momentum = self.hyper(group, "momentum")
            dampening = self.hyper(group, "dampening")
            weight_decay = self.hyper(group, "weight_decay")
            nesterov = group["nesterov"]
            for p, g in self._grads(group):
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                if momentum != 0:
                    st = self._state_for(p)
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = g.clone()
                    else:
                        buf.mul_(momentum).add_(g, alpha=1 - dampening)
                    g = g.add(buf, alpha=momentum) if nesterov else buf
                p.add_(g, alpha=-lr)
        return loss
