"""``dyngrad.cuda.amp``: the deprecated spellings of ``dyngrad.amp``'s CUDA forms, which warn
as PyTorch's do and then disable themselves (there is no CUDA)."""

from __future__ import annotations

import warnings

from .. import amp as _amp

__all__ = ["GradScaler", "autocast"]


class GradScaler(_amp.GradScaler):
    """``dyngrad.amp.GradScaler('cuda', ...)`` after a FutureWarning: disabled."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True) -> None:
        warnings.warn("`dyngrad.cuda.amp.GradScaler(args...)` is deprecated. Please use "
                      "`dyngrad.amp.GradScaler('cuda', args...)` instead.", FutureWarning,
                      stacklevel=2)
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval,
                         enabled)


class autocast(_amp.autocast):
    """``dyngrad.amp.autocast('cuda', ...)`` after a FutureWarning: disabled."""

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True) -> None:
        warnings.warn("`dyngrad.cuda.amp.autocast(args...)` is deprecated. Please use "
                      "`dyngrad.amp.autocast('cuda', args...)` instead.", FutureWarning,
                      stacklevel=2)
        super().__init__("cuda", dtype, enabled, cache_enabled)
