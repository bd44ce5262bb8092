"""``Parameter``: a leaf tensor that a :class:`Module` registers as trainable."""

from __future__ import annotations

import numpy as np

from ..ops import creation as _c
from ..tensor import Storage, Tensor


class Parameter(Tensor):
    """A tensor that requires grad by default and that modules register when assigned as an
    attribute. ``Parameter(t)`` shares ``t``'s storage, as in PyTorch.

    >>> w = dg.nn.Parameter(dg.randn(3, 2))
    """


    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True):
        p = object.__new__(cls)
        if data is None:
            p._init(np.zeros(0, np.float32), Storage())
        elif isinstance(data, Tensor):
            p._init(data._data, data._storage)
        else:
            t = _c.tensor(data)
            p._init(t._data, t._storage)
        if requires_grad:
            p._set_requires_grad(True)
        return p

    def __init__(self, data=None, requires_grad: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "Parameter containing:\n" + Tensor.__repr__(self)

    __str__ = __repr__

    def __deepcopy__(self, memo):
        p = Parameter(Tensor._fresh(self._data.copy()), self._requires_grad)
        if self._grad is not None:
            p._grad = Tensor._fresh(self._grad._data.copy())
        memo[id(self)] = p
        return p

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (self._data.copy(), self._requires_grad))


def _rebuild_parameter(arr, requires_grad):
    return Parameter(Tensor._fresh(arr), requires_grad)
