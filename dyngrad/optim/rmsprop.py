"""RMSprop (centered and with momentum), as in PyTorch."""

from __future__ import annotations

from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """v ← αv + (1−α)g²; avg = √v (centered: √(v − ḡ²)) + ε; with momentum
    buf ← μ·buf + g/avg and p ← p − lr·buf, else p ← p − lr·g/avg."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if alpha < 0.0:
            raise ValueError(f"Invalid alpha value: {alpha}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _fill_state(self, st: dict, p, group: dict) -> bool:
        st["step"] = _c.zeros(())
        st["square_avg"] = _c.zeros_like(p)
        if group["momentum"] > 0:
            st["momentum_buffer"] = _c.zeros_like(p)
        if group["centered"]:
            st["grad_avg"] = _c.zeros_like(p)
        return True

    @no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        for group in self.param_groups:
            lr = self.hyper(group, "lr")
            alpha = self.hyper(group, "alpha")
            eps = self.hyper(group, "eps")
            weight_decay = self.hyper(group, "weight_decay")
            momentum = self.hyper(group, "momentum")
            centered = group["centered"]
            for p, g in self._grads(group):
                st = self._state_for(p)
                if not st:
                    self._fill_state(st, p, group)
                st["step"].add_(1)
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                sq = st["square_avg"]
                sq.mul_(alpha).addcmul_(g, g, value=1 - alpha)
                if centered:
                    ga = st["grad_avg"]
                    ga.lerp_(g, 1 - alpha)
                    avg = sq.addcmul(ga, ga, value=-1).sqrt() + eps
                else:
                    avg = sq.sqrt() + eps
                if momentum > 0:
                    buf = st["momentum_buffer"]
                    buf.mul_(momentum).addcdiv_(g, avg)
                    p.add_(buf, alpha=-lr)
                else:
                    p.addcdiv_(g, avg, value=-lr)
        return loss
