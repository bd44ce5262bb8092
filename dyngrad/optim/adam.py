"""Adam and AdamW, with the step count kept as a tensor (PyTorch's capturable form)."""

from __future__ import annotations

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from ..ops import elementwise as _e
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba) with PyTorch's update: m ← lerp(m, g, 1−β₁), v ← β₂v + (1−β₂)g²,
    p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε). ``weight_decay`` adds wd·p to g (L2);
    AdamW decays the weights directly instead."""

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _fill_state(self, st: dict, p, group: dict) -> bool:
        st["step"] = _c.zeros((), dtype=_dt.float32)
        st["exp_avg"] = _c.zeros_like(p)
        st["exp_avg_sq"] = _c.zeros_like(p)
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = _c.zeros_like(p)
        return True

    @no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        for group in self.param_groups:
            lr = self.hyper(group, "lr")
            beta1, beta2 = self.hyper(group, "betas")
            eps = self.hyper(group, "eps")
            weight_decay = self.hyper(group, "weight_decay")
            amsgrad = group["amsgrad"]
            for p, g in self._grads(group):
                st = self._state_for(p)
                if not st:
                    self._fill_state(st, p, group)
                if weight_decay != 0:
                    if self.decoupled:
                        p.mul_(1 - lr * weight_decay)
                    else:
                        g = g.add(p, alpha=weight_decay)
                step = st["step"]
                step.add_(1)
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                t = step.double()  # bias corrections in float64, like PyTorch's Python floats
                step_size = lr / (1 - _e.pow(beta1, t))
                bc2_sqrt = _e.sqrt(1 - _e.pow(beta2, t))
                if amsgrad:
                    vmax = st["max_exp_avg_sq"]
                    vmax.copy_(_e.maximum(vmax, v))
                    v = vmax
                denom = v.sqrt() / bc2_sqrt + eps
                p.sub_(m / denom * step_size)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay: p ← p·(1 − lr·wd) before the Adam update."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
