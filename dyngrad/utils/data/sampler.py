"""``Sampler``: what a ``DataLoader(sampler=...)`` draws its indices from."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["Sampler"]


class Sampler:
    """Base of the index samplers: ``__iter__`` yields dataset indices, in the order the
    ``DataLoader`` batches them; ``__len__`` says how many (PyTorch's ``Sampler``).

    >>> class Evens(Sampler):
    ...     def __init__(self, n): self.n = n
    ...     def __iter__(self): return iter(range(0, self.n, 2))
    ...     def __len__(self): return (self.n + 1) // 2
    """

    def __iter__(self) -> Iterator[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")
