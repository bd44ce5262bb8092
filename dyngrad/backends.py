"""``dyngrad.backends``: the flags scripts set on ``torch.backends`` (``cudnn.benchmark``,
``cudnn.deterministic``, ``cuda.matmul.allow_tf32``, …), settable and queryable with the
values a CPU-only PyTorch build reports. They change nothing: dyngrad's kernels are
deterministic and never use TF32 or cuDNN.

>>> dg.backends.cudnn.benchmark = True
>>> dg.backends.mps.is_available()
False

Note: scripts also import them as modules (``import torch.backends.cudnn as cudnn``, as
pytorch/examples' dcgan does), so each flag holder is a module object registered in
``sys.modules`` under its dotted name; the import system finds it there without
``dyngrad.backends`` being a package.
"""

from __future__ import annotations

import sys
import types

__all__ = ["cudnn", "cuda", "mps", "mkldnn", "openmp"]


class _Cudnn(types.ModuleType):
    """``torch.backends.cudnn`` without cuDNN."""

    def __init__(self) -> None:
        super().__init__(f"{__name__}.cudnn", self.__doc__)
        self.enabled = True
        self.benchmark = False
        self.deterministic = False
        self.allow_tf32 = True
        self.benchmark_limit = 10

    def is_available(self) -> bool:
        return False

    def version(self):
        return None


class _Matmul:
    def __init__(self) -> None:
        self.allow_tf32 = False
        self.allow_fp16_reduced_precision_reduction = True
        self.allow_bf16_reduced_precision_reduction = True


class _Cuda(types.ModuleType):
    """``torch.backends.cuda`` without CUDA."""

    def __init__(self) -> None:
        super().__init__(f"{__name__}.cuda", self.__doc__)
        self.matmul = _Matmul()

    def is_built(self) -> bool:
        return False


class _Available(types.ModuleType):
    """A backend that answers ``is_available()`` and ``is_built()`` with fixed values."""

    def __init__(self, name: str, available: bool, built: bool) -> None:
        super().__init__(f"{__name__}.{name}", self.__doc__)
        self._answer = (available, built)

    def is_available(self) -> bool:
        return self._answer[0]

    def is_built(self) -> bool:
        return self._answer[1]


cudnn = _Cudnn()
cuda = _Cuda()
mps = _Available("mps", False, False)
mkldnn = _Available("mkldnn", False, False)
openmp = _Available("openmp", False, False)
sys.modules.update({m.__name__: m for m in (cudnn, cuda, mps, mkldnn, openmp)})
