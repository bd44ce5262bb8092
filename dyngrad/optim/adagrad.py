"""Adagrad, as in PyTorch (single-tensor form), with the step count kept as a tensor like
Adam's."""

from __future__ import annotations

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..ops import creation as _c
from .optimizer import Optimizer


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.): s ← s + g²; p ← p − clr·g/(√s + ε) with
    clr = lr / (1 + (t − 1)·lr_decay). The sums start at ``initial_accumulator_value`` and,
    as in PyTorch, the state exists from construction (``state_dict()`` shows it at once).

    >>> opt = dg.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=1e-3)
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach=None, *, maximize: bool = False,
                 differentiable: bool = False, fused=None) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= lr_decay:
            raise ValueError(f"Invalid lr_decay value: {lr_decay}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: "
                             f"{initial_accumulator_value}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused))
        for group in self.param_groups:
            for p in group["params"]:
                st = self._state_for(p)
                st["step"] = _c.zeros((), dtype=_dt.float32)
                st["sum"] = _c.full_like(p, group["initial_accumulator_value"])

    @no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        for group in self.param_groups:
            lr = self.hyper(group, "lr")
            lr_decay = self.hyper(group, "lr_decay")
            eps = self.hyper(group, "eps")
            weight_decay = self.hyper(group, "weight_decay")
            for p, g in self._grads(group):
                st = self._state_for(p)
                step = st["step"]
                step.add_(1)
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                st["sum"].addcmul_(g, g, value=1)
                std = st["sum"].sqrt() + eps
                if lr_decay == 0:
                    p.addcdiv_(g, std, value=-lr)
                else:  # the decayed rate in float64, like PyTorch's Python float
                    clr = lr / ((step.double() - 1) * lr_decay + 1)
                    p.sub_(g / std * clr)
        return loss
