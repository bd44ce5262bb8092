"""``scatter``: PyTorch's ``Tensor.scatter``/``scatter_`` composed from the index primitives
(``indexing.py``) and a stable ``argsort`` (``scan.py``), so that repeated indices pick their
last write without reading an index in Python."""

from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .creation import full, full_like, tensor, zeros
from .indexing import _as_index, gather, scatter_add, scatter_add_dim, scatter_operands
from .scan import argsort


def scatter_dim(x: Tensor, dim: int, index: Tensor, src=None, *, value=None,
                reduce=None) -> Tensor:
    """PyTorch's ``scatter(input, dim, index, src)`` (or a number ``value``): ``x`` with,
    for dim=0, ``out[index[i][j]][j] = src[i][j]`` for every element of ``index`` (src may
    be larger: only its index-shaped corner is read). Where indices repeat, the last write
    in ``index``'s row-major order wins, as PyTorch's CPU loop does (PyTorch documents the
    choice as undefined), and only that element of ``src`` gets a gradient. ``reduce='add'``
    is ``scatter_add``.

    Composed without reading the indices in Python (a compiled call repeats it for any
    indices): the flat target positions are sorted stably, the last of each run of equal
    positions is the winner, and the winners are added into ``-0.0`` (which changes no
    value, a negative zero's sign included) where a position is hit.

    >>> dg.zeros(2, 3).scatter(1, dg.tensor([[2], [0]]), 1.0)
    tensor([[0., 0., 1.],
            [1., 0., 0.]])
    """
    if src is None and value is None:
        raise TypeError("scatter(): expected a src tensor or a value (scatter(dim, index, src) "
                        "or scatter(dim, index, value))")
    if src is not None and value is not None:
        raise TypeError("scatter(): pass src or value, not both")
    if reduce is not None:
        if reduce != "add":
            raise NotImplementedError(f"scatter(reduce={reduce!r}): only reduce='add' is "
                                      f"supported (PyTorch deprecates the argument; use "
                                      f"scatter_add for sums)")
        if src is None or not isinstance(src, Tensor):
            src = full_like(_as_index(index), src if value is None else value, dtype=x.dtype)
        return scatter_add_dim(x, dim, index, src, "scatter")
    index = _as_index(index)
    if src is None or not isinstance(src, Tensor):
        number = value if src is None else src
        if isinstance(number, Tensor) or not isinstance(number, (bool, int, float,
                                                                  np.number)):
            raise TypeError(f"scatter(): value must be a number, not {type(number).__name__}")
        src = full_like(index, number, dtype=x.dtype)
    flat, src = scatter_operands(x, dim, index, src, "scatter", "scatter")
    m, n = flat.shape[0], x.numel()
    if m == 0:
        return _e.cast(x, x.dtype)  # (a copy, as PyTorch's out-of-place scatter)
    order = argsort(flat, 0)  # stable: equal positions keep index's order
    pos = gather(flat, order, 0)
    vals = gather(src, order, 0)
    after = _m.cat([pos[1:], tensor([-1])], 0)  # (no position is -1)
    last = _e.ne(pos, after)
    nothing = False if x.dtype is _dt.bool_ else -0.0
    placed = scatter_add(full((n,), nothing, dtype=x.dtype), pos,
                         _e.where(last, vals, nothing), 0)
    hit = scatter_add(zeros((n,), dtype=_dt.int64), flat,
                      _m.expand(Tensor._constant(np.array(1, np.int64)), (m,)), 0)
    out = _e.where(_e.gt(hit, 0), placed, _m.reshape(x, (-1,)))
    return _m.reshape(out, tuple(x.shape))
