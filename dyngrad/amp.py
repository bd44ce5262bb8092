"""``dyngrad.amp``: ``autocast`` and ``GradScaler`` as in a CPU-only PyTorch build.

- ``autocast(device_type, dtype=None, enabled=True)`` is a context manager and a decorator.
  Not emulated: no op runs in a lower precision — inside it, computations keep their dtypes
  (float32 stays float32), so results equal those outside it. ``device_type='cuda'`` warns
  and disables itself, as PyTorch does without CUDA, and so does a CPU region asking for a
  dtype dyngrad has (PyTorch's CPU autocast takes only bfloat16 and float16, which dyngrad
  lacks; the default, ``dtype=None``, enables the region).
- ``GradScaler('cuda')`` (the default, and ``dyngrad.cuda.amp.GradScaler``) warns and
  disables itself: ``scale()`` returns its argument, ``step()`` calls ``optimizer.step()``,
  ``update()`` does nothing. ``GradScaler('cpu')`` scales as PyTorch's does: the loss is
  multiplied by the scale, ``step()`` unscales the gradients and skips the step when one is
  not finite, and ``update()`` grows or backs off the scale. As in PyTorch, the scale and
  the growth tracker are tensors updated by tensor ops, so a compiled training step
  carries them from call to call; whether to skip is one bool read (a guard).

>>> scaler = dg.amp.GradScaler("cpu")
>>> with dg.amp.autocast("cpu"):
...     loss = model(x).sum()
>>> scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
"""

from __future__ import annotations

import functools
import warnings

from . import dtypes as _dt
from .autograd.grad_mode import no_grad
from .ops import creation as _c
from .ops import elementwise as _e
from .ops import movement as _m
from .ops import reduce as _r
from .tensor import Tensor, device

__all__ = ["autocast", "GradScaler", "is_autocast_available"]

_ENABLED: list = []  # the device types of the enabled autocast regions, innermost last


def is_autocast_available(device_type: str) -> bool:
    """Whether ``autocast`` can be enabled for ``device_type`` (the CPU only)."""
    return device_type == "cpu"


def is_autocast_enabled(device_type: str | None = None) -> bool:
    """Whether an enabled autocast region (for ``device_type``, or CUDA's when None, as in
    PyTorch) is active."""
    return (device_type or "cuda") in _ENABLED


class autocast:
    """A region in which ops may run in ``dtype`` (see the module docstring: dyngrad keeps
    every dtype; the region is recorded, not emulated).

    >>> with dg.amp.autocast(device_type="cpu"):
    ...     y = model(x)          # float32, as outside the region
    """

    def __init__(self, device_type: str, dtype=None, enabled: bool = True,
                 cache_enabled: bool | None = None) -> None:
        if not isinstance(device_type, str):
            raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
        device(device_type)  # PyTorch's error for an unknown device type
        if device_type == "cuda" and enabled:
            warnings.warn("CUDA is not available. Disabling autocast.", UserWarning,
                          stacklevel=2)
            enabled = False
        elif device_type == "cpu" and enabled and dtype is not None:
            warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling "
                          "autocast.\nCPU Autocast only supports dtypes of bfloat16, float16 "
                          "currently.", UserWarning, stacklevel=2)
            enabled = False  # (dyngrad has neither: any dtype it has is refused, as PyTorch
            #                  refuses float32)
        self.device = device_type
        self.fast_dtype = dtype
        self._enabled = enabled

    def __enter__(self):
        _ENABLED.append(self.device if self._enabled else None)
        return self

    def __exit__(self, *exc) -> None:
        _ENABLED.pop()

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)
        return wrapped


def _map(fn, obj):
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _map(fn, v) for k, v in obj.items()}
    return obj


class GradScaler:
    """Loss scaling for mixed precision (see the module docstring for what CUDA's does).

    Note [the scaler's state is tensors]: the scale and the growth tracker are 0-d tensors
    changed in place by ``update()`` with tensor ops (no Python branch on their values), as
    PyTorch's ``_amp_update_scale_`` does: a compiled step replays those writes, where Python
    numbers changed inside it would keep the values of the call that was traced.
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        if device == "cuda" and enabled:
            warnings.warn("dyngrad.cuda.amp.GradScaler is enabled, but CUDA is not "
                          "available.  Disabling.", UserWarning, stacklevel=2)
            enabled = False
        self._device = device
        self._enabled = enabled
        if enabled:
            if growth_factor <= 1.0:
                raise AssertionError("The growth factor must be > 1.0.")
            if backoff_factor >= 1.0:
                raise AssertionError("The backoff factor must be < 1.0.")
        self._init_scale = float(init_scale)
        self._scale = _c.full((), float(init_scale), dtype=_dt.float32)
        self._growth_tracker = _c.zeros((), dtype=_dt.int64)
        self._growth_factor = growth_factor
        self._backoff_factor = backoff_factor
        self._growth_interval = growth_interval
        self._found_inf: dict = {}  # id(optimizer) -> 0-d float32: 1.0 if a grad was inf/nan

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        return float(self._scale) if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def scale(self, outputs):
        """``outputs`` (a tensor or nested lists/tuples/dicts of them) times the scale."""
        if not self._enabled:
            return outputs
        return _map(lambda t: t * self._scale.to(t.dtype), outputs)

    def unscale_(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale (once per step) and note whether
        any is not finite."""
        if not self._enabled:
            return
        if id(optimizer) in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since "
                               "the last update().")
        inv = self._scale.double().reciprocal().float()  # (PyTorch's rounding)
        finite = []
        with no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.mul_(inv.to(p.grad.dtype))
                        finite.append(_r.all(_e.eq(p.grad - p.grad, 0.0)))  # inf, nan: False
        ok = _r.all(_m.stack(finite)) if finite else _c.ones((), dtype=_dt.bool_)
        self._found_inf[id(optimizer)] = 1.0 - ok.float()

    def step(self, optimizer, *args, **kwargs):
        """``optimizer.step()``, after unscaling; skipped when a gradient is not finite."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if id(optimizer) not in self._found_inf:
            self.unscale_(optimizer)
        if bool(self._found_inf[id(optimizer)]):  # one bool read: a guard when compiled
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None) -> None:
        """Back off the scale after a skipped step; grow it after ``growth_interval`` clean
        steps in a row (see Note [the scaler's state is tensors])."""
        if not self._enabled:
            return
        with no_grad():
            if new_scale is not None:
                self._scale.fill_(float(new_scale))
            elif self._found_inf:
                found = _r.sum(_m.stack(list(self._found_inf.values()))) > 0
                grown = self._growth_tracker + 1
                hit = _e.eq(grown, self._growth_interval)
                self._scale.copy_(_e.where(found, self._scale * self._backoff_factor,
                                           _e.where(hit, self._scale * self._growth_factor,
                                                    self._scale)))
                self._growth_tracker.copy_(_e.where(found | hit, 0, grown))
        self._found_inf = {}

    def state_dict(self) -> dict:
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval,
                "_growth_tracker": int(self._growth_tracker)}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        self._scale.fill_(float(state_dict["scale"]))
        self._growth_factor = state_dict["growth_factor"]
        self._backoff_factor = state_dict["backoff_factor"]
        self._growth_interval = state_dict["growth_interval"]
        self._growth_tracker.fill_(int(state_dict["_growth_tracker"]))
