"""Slices' gradients put back together: a sum of zero pads with disjoint supports becomes
one concat.

A tensor split into slices (``qkv.split(n_embd, dim=2)``: three ``slice`` nodes) gets its
gradient as the sum of each slice's gradient padded back to the whole with zeros — the vjp
of ``slice`` is ``pad`` — so the backward writes three tensors of the whole's size, mostly
zeros, and adds them (nanoGPT's attention: per layer, three pads of 12x64x384 and an add,
~0.25 ms of W8's step). Where the pads all widen one axis and their pieces tile a run of it,
the sum is that run's concat of the pieces, padded to the whole if the run is shorter.

The attention backward's zero-padded output gradient is read unpadded the same way: the
fused forward's output carries the row's logsumexp as an extra column, which a user's
output does not include (a slice), so the gradient the backward is given is the output's
padded with a zero column; ``flash_attention_backward`` takes the output's gradient alone
as meaning that zero (:func:`unpadded_attention_gradients`).

Exact, bit for bit: each element of the sum is one piece's element plus zeros, ``x + 0.0``
in whatever order — ``x`` itself, except that ``-0.0`` becomes ``+0.0`` (and NaN stays a
NaN) — which the concat's ``plus_zero`` computes for floating dtypes (integers add exactly
and have no signed zero). So the interpreter runs it too.
"""

from __future__ import annotations

import math

from dyngrad.dtypes import bool_

from .. import prims as P
from ..ir import Graph, Node, Uses, Value


def _zero(value) -> bool:
    """Whether a pad's ``value`` is +0 (-0.0 is not: a sum keeps it, -0.0 + -0.0 is -0.0,
    where ``plus_zero`` and the pad around the concat would give +0.0)."""
    return type(value) is not bool and value == 0 and math.copysign(1.0, value) > 0


def _axis(pad: Node, shape: tuple) -> int | None:
    """The one axis a plain zero ``pad`` (no interior padding) widens, else None."""
    if not _zero(pad.params.get("value")):
        return None
    axes = [d for d, (lo, hi, it) in enumerate(pad.params["pads"]) if lo or hi or it]
    if len(axes) != 1 or any(it for _, _, it in pad.params["pads"]) or \
            any(lo < 0 or hi < 0 for lo, hi, _ in pad.params["pads"]) or \
            tuple(pad.out.shape) != tuple(shape):
        return None
    return axes[0]


def pads_to_concat(g: Graph) -> Graph:
    g = unpadded_attention_gradients(g)
    uses = Uses(g)

    def plain_add(n: Node) -> bool:
        return n.prim is P.ADD and len(n.inputs) == 2 and all(
            isinstance(x, Value) and tuple(x.shape) == tuple(n.out.shape)
            and x.dtype is n.out.dtype for x in n.inputs)

    def leaves(v: Value, parent: Node, out: list) -> bool:
        n = v.producer
        if n is None:
            return False
        if n.prim is P.PAD:
            out.append(n)
            return True
        return plain_add(n) and uses.only(v, [parent]) and \
            all(leaves(x, n, out) for x in n.inputs)

    absorbed: set = set()
    rewritten: list = []
    for n in reversed(g.nodes):
        if id(n) in absorbed or not plain_add(n) or n.out.weak or n.out.dtype is None or \
                n.out.dtype is bool_:
            continue
        pads: list = []
        if not all(leaves(x, n, pads) for x in n.inputs):
            continue
        axes = {_axis(p, n.out.shape) for p in pads}
        if len(axes) != 1 or None in axes:
            continue
        axis = axes.pop()
        size = n.out.shape[axis]
        spans = sorted(((p.params["pads"][axis][0], size - p.params["pads"][axis][1], p)
                        for p in pads), key=lambda span: span[:2])
        if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
            continue  # (overlapping or with a gap between: not one concat)
        first, last = spans[0][0], spans[-1][1]
        stack = list(n.inputs)
        while stack:  # (the adds inside the tree: dead once the root is rewritten)
            m = stack.pop().producer
            if m.prim is P.ADD:
                absorbed.add(id(m))
                stack.extend(m.inputs)
        rewritten.append((n, [p.inputs[0] for _, _, p in spans], axis, first, last))
    for n, pieces, axis, first, last in rewritten:
        params = {"axis": axis, "plus_zero": n.out.dtype.is_floating_point}
        if first == 0 and last == n.out.shape[axis]:
            n.prim, n.inputs, n.params = P.CONCAT, pieces, params
            continue
        shape = list(n.out.shape)
        shape[axis] = last - first
        joined = g.new_value(tuple(shape), n.out.dtype)
        node = Node(P.CONCAT, pieces, params, joined)
        joined.producer = node
        at = g.nodes.index(n)
        g.nodes.insert(at, node)
        for gd in g.guards:  # (a value guard after the sum runs after one node more)
            if gd.after > at:
                gd.after += 1
        if n.out.id in g.late:
            g.late.add(joined.id)
        pads = [(0, 0, 0)] * len(shape)
        pads[axis] = (first, n.out.shape[axis] - last, 0)
        n.prim, n.inputs, n.params = P.PAD, [joined], {"pads": tuple(pads), "value": 0}
    return g


def unpadded_attention_gradients(g: Graph) -> Graph:
    """A ``flash_attention_backward`` reading its output gradient padded with a zero
    logsumexp column reads it unpadded (the primitive's rule: that column's gradient is
    then zero, as the pad made it)."""
    for n in g.nodes:
        if n.prim is not P.FLASH_ATTENTION_BACKWARD:
            continue
        do = n.inputs[4]
        pad = do.producer if isinstance(do, Value) else None
        if pad is None or pad.prim is not P.PAD or not _zero(pad.params.get("value")):
            continue
        pads = tuple(tuple(p) for p in pad.params["pads"])
        if pads == ((0, 0, 0),) * (len(pads) - 1) + ((0, 1, 0),):
            n.inputs[4] = pad.inputs[0]
    return g
