"""``dyngrad.utils.data.dataloader``: where PyTorch scripts import ``DataLoader`` from
(``from torch.utils.data.dataloader import DataLoader``); the definitions live in the
package."""

from . import DataLoader, default_collate, get_worker_info

__all__ = ["DataLoader", "default_collate", "get_worker_info"]
