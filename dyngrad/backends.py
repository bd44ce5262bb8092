"""``dyngrad.backends``: the flags scripts set on ``torch.backends`` (``cudnn.benchmark``,
``cudnn.deterministic``, ``cuda.matmul.allow_tf32``, …), settable and queryable with the
values a CPU-only PyTorch build reports. They change nothing: dyngrad's kernels are
deterministic and never use TF32 or cuDNN.

>>> dg.backends.cudnn.benchmark = True
>>> dg.backends.mps.is_available()
False
"""

from __future__ import annotations

__all__ = ["cudnn", "cuda", "mps", "mkldnn", "openmp"]


class _Cudnn:
    """``torch.backends.cudnn`` without cuDNN."""

    def __init__(self) -> None:
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


class _Cuda:
    """``torch.backends.cuda`` without CUDA."""

    def __init__(self) -> None:
        self.matmul = _Matmul()

    def is_built(self) -> bool:
        return False


class _Available:
    """A backend that answers ``is_available()`` and ``is_built()`` with fixed values."""

    def __init__(self, available: bool, built: bool) -> None:
        self._answer = (available, built)

    def is_available(self) -> bool:
        return self._answer[0]

    def is_built(self) -> bool:
        return self._answer[1]


cudnn = _Cudnn()
cuda = _Cuda()
mps = _Available(False, False)
mkldnn = _Available(False, False)
openmp = _Available(False, False)
