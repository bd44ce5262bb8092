"""``dyngrad.Size``: PyTorch's ``torch.Size``, a tuple of ints that prints as
``dyngrad.Size([2, 3])`` and knows its ``numel()``.

Note: ``Tensor.shape`` and ``Tensor.size()`` return plain tuples, not ``Size``. A ``Size``
equals the tuple of the same ints (``dg.Size([2, 3]) == x.shape``), so comparisons, unpacking,
indexing and passing a shape on to ``reshape``/``zeros``/``view`` behave the same; what differs
is ``repr(x.shape)`` (``(2, 3)``) and ``isinstance(x.shape, dg.Size)`` (False). Plain tuples
are kept because the compiler's argument flattening, guards and capture recognise
containers and constants by ``type(x) is tuple`` (a ``Size`` argument is flattened as the
tuple of ints it is, but a ``Size`` held elsewhere — a global, an attribute — is an object
guarded by identity), and because the shape is read on every op's eager path, where
building a subclass instance per read would cost time for no behaviour.
"""

from __future__ import annotations

import math
import operator


class Size(tuple):
    """A shape: a tuple of ints, as ``torch.Size``. Slicing it, adding or repeating it
    gives a ``Size``.

    >>> dg.Size([2, 3])
    dyngrad.Size([2, 3])
    >>> dg.Size([2, 3]).numel(), dg.Size([2, 3]) == dg.zeros(2, 3).shape
    (6, True)
    """

    __slots__ = ()

    def __new__(cls, sizes=()):
        try:
            items = tuple(sizes)
        except TypeError:
            raise TypeError(f"'{type(sizes).__name__}' object is not iterable") from None
        ints = []
        for i, v in enumerate(items):
            try:
                ints.append(v if type(v) is int else operator.index(v))
            except TypeError:
                raise TypeError(f"dyngrad.Size() takes an iterable of 'int' (item {i} is "
                                f"'{type(v).__name__}')") from None
        return super().__new__(cls, ints)

    def numel(self) -> int:
        """The number of elements of a tensor of this shape (1 for ``Size([])``)."""
        return math.prod(self)

    def __repr__(self) -> str:
        return f"dyngrad.Size({list(self)})"

    __str__ = __repr__

    def __getitem__(self, key):
        out = tuple.__getitem__(self, key)
        return Size(out) if isinstance(key, slice) else out

    def __add__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented
        return Size(tuple(self) + tuple(other))

    def __radd__(self, other):
        if not isinstance(other, tuple):
            return NotImplemented
        return Size(tuple(other) + tuple(self))

    def __mul__(self, n):
        return Size(tuple(self) * n)

    __rmul__ = __mul__


__all__ = ["Size"]
