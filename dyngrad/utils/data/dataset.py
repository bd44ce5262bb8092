"""``dyngrad.utils.data.dataset``: where PyTorch scripts import ``Dataset`` from
(``from torch.utils.data.dataset import Dataset``); the definitions live in the package."""

from . import Dataset, TensorDataset

__all__ = ["Dataset", "TensorDataset"]
