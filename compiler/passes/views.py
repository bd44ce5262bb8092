"""Attention reading its operands where they are: strided views instead of copies.

A transformer makes its heads by moving data: nanoGPT's ``q, k, v = qkv.split(C, dim=2)``
then ``q.view(B, T, nh, hs).transpose(1, 2)`` — a ``slice``, a ``reshape`` and a
``permute`` per operand, which compiled code would run as a copy of each (three per layer
in the forward; the output gradient's ``permute`` in the backward). Each of those is only a
*strided view* of the buffer it starts from: element ``(b, h, l, e)`` of q lies at
``b·L·3C + l·3C + h·E + e`` of the qkv product's output. The fused attention kernels read
their operands by row (a row of E contiguous elements, at a row stride, under leading
strides), so they can read such a view as it lies.

:func:`strided` computes a view's (base value, offset, strides) through ``permute``,
``reshape`` (where no copy is needed, as numpy decides) and ``slice``; :func:`attention_views`
gives each attention node a chain of its own for each operand that is such a view with
contiguous rows (a copy of the chain when other nodes read it too: the forward and the
backward both read q, k and v), which fusion then puts in the attention node's group
(``fusion.chain_movements``) and the LLVM window builder reads as strides
(``backends/llvm/attention.py``). Nothing is computed differently: the same elements are
read, bit for bit.
"""

from __future__ import annotations

import math

from .. import prims as P
from ..ir import Graph, Node, Uses, Value, c_strides
from .dce import dce

VIEWS = (P.PERMUTE, P.RESHAPE, P.SLICE)
ATTENTION_OPERANDS = {P.FLASH_ATTENTION: (0, 1, 2), P.FLASH_ATTENTION_BACKWARD: (0, 1, 2, 4)}


def reshape_strides(shape: tuple, strides: tuple, new: tuple) -> tuple | None:
    """The strides of a view of ``shape``/``strides`` reshaped to ``new`` without a copy
    (None when the elements are not evenly spaced within a group of merged dims)."""
    old = [(n, s) for n, s in zip(shape, strides) if n != 1]
    out = [0] * len(new)
    i = j = 0
    while j < len(new) and new[j] == 1:
        j += 1
    while i < len(old):
        if j >= len(new):
            return None
        i2, j2, a, b = i + 1, j + 1, old[i][0], new[j]
        while a != b:
            if a < b:
                if i2 >= len(old):
                    return None
                a *= old[i2][0]
                i2 += 1
            else:
                if j2 >= len(new):
                    return None
                b *= new[j2]
                j2 += 1
        if any(old[k][1] != old[k + 1][1] * old[k + 1][0] for k in range(i, i2 - 1)):
            return None
        st = old[i2 - 1][1]
        for k in range(j2 - 1, j - 1, -1):
            out[k] = st
            st *= new[k]
        i, j = i2, j2
        while j < len(new) and new[j] == 1:
            j += 1
    return tuple(out) if j == len(new) else None


def strided(v: Value, inside) -> tuple | None:
    """``(base, offset, strides)``: ``v`` as a strided view of ``base`` (C-contiguous), the
    first value up the chain of ``permute``/``reshape``/``slice`` nodes for which
    ``inside(node)`` is false or that no node makes; None where the chain is not a view."""
    n = v.producer
    if n is None or n.prim not in VIEWS or not inside(n) or not isinstance(n.inputs[0], Value):
        return v, 0, c_strides(v.shape)
    below = strided(n.inputs[0], inside)
    if below is None:
        return None
    base, offset, st = below
    if n.prim is P.PERMUTE:
        return base, offset, tuple(st[p] for p in n.params["perm"])
    if n.prim is P.SLICE:
        offset += sum(a * s for a, s in zip(n.params["starts"], st))
        return base, offset, tuple(s * c for s, c in zip(st, n.params["steps"]))
    new = reshape_strides(tuple(n.inputs[0].shape), st, tuple(v.shape))
    return None if new is None else (base, offset, new)


def row_view(v: Value, inside) -> tuple | None:
    """:func:`strided`'s answer when the view's rows are contiguous (its last dim's stride
    1, or a last dim of one) and every size is a number, else None."""
    if not all(isinstance(d, int) for d in v.shape) or math.prod(v.shape) == 0:
        return None
    got = strided(v, inside)
    if got is None or (v.shape[-1] != 1 and got[2][-1] != 1):
        return None
    if not all(isinstance(d, int) for d in got[0].shape):
        return None
    return got


def _chain(v: Value) -> list:
    """The view nodes making ``v``, first to last."""
    out = []
    while v.producer is not None and v.producer.prim in VIEWS and \
            isinstance(v.producer.inputs[0], Value):
        out.append(v.producer)
        v = v.producer.inputs[0]
    return out[::-1]


def attention_views(g: Graph) -> Graph:
    """Give each attention operand that is a strided view with contiguous rows a chain of
    view nodes read by that attention node alone (see the module docstring)."""
    uses = Uses(g)
    out = []
    for n in g.nodes:
        for k in ATTENTION_OPERANDS.get(n.prim, ()):
            x = n.inputs[k] if k < len(n.inputs) else None
            chain = _chain(x) if isinstance(x, Value) else []
            if all(m.prim is P.RESHAPE for m in chain) or row_view(x, lambda m: True) is None:
                continue  # (reshapes alone alias their source: nothing to read as strides,
                #           and copies of them would join the producer's kernel as outputs)
            if all(uses.only(m.out, [r]) for m, r in zip(chain, chain[1:] + [n])) and \
                    n.inputs.count(x) == 1:
                continue  # (already its own)
            v = chain[0].inputs[0]
            for m in chain:  # a copy of the chain, just before the node
                copy = g.new_value(m.out.shape, m.out.dtype)
                node = Node(m.prim, [v] + list(m.inputs[1:]), dict(m.params), copy)
                copy.producer = node
                if n.out.id in g.late:
                    g.late.add(copy.id)
                out.append(node)
                v = copy
            n.inputs[k] = v
        out.append(n)
    if len(out) != len(g.nodes):
        old = g.nodes
        g.nodes = out
        position = {id(m): i for i, m in enumerate(out)}
        for gd in g.guards:  # (a guard after node j of the old order: after it still)
            gd.after = position[id(old[gd.after - 1])] + 1 if gd.after else 0
        g = dce(g)  # (the chains only attention read, now copied)
        alive = {n.out.id for n in g.nodes} | {v.id for v in g.inputs}
        g.recomputed = {i: j for i, j in g.recomputed.items() if i in alive and j in alive}
    return g
