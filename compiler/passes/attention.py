"""Attention written out by hand becomes the fused pair: nanoGPT's slow path

    att = (q @ k.transpose(-2, -1)) * scale
    att = att.masked_fill(mask, float('-inf'))      # optional
    att = F.softmax(att, dim=-1)
    y = att @ v

and its backward, as traced, become ``flash_attention`` (``plain=True``: a fully masked row
gives NaN, as the plain softmax does) and ``flash_attention_backward``, when the
probabilities are read by nothing else; without a backward (inference), the forward alone.

What is matched, exactly (anything else leaves the graph as it is): the scores
``s = matmul(q, k, tb)`` with q (*b, L, E), k (*b, S, E) of the same leading dims;
``mul(s, c)`` by a number; ``where(m, -inf, ·)`` with a bool m (its negation is the fused
primitive's mask: True attends); softmax as ``dyngrad.ops.reduce.softmax`` traces
(``x - max(x)`` with the maximum not differentiated, ``exp``, ``sum``, ``div``); ``y =
matmul(p, v)``. In the backward: ``dv = matmul(p, dy, ta)``, ``dp = matmul(dy, v, tb)``,
the softmax's vjp chain (``div``, ``neg``, ``mul``, ``mul``, ``div``, ``sum``, ``broadcast``,
``add``, ``mul`` — the rules of those primitives), the mask's ``where(m, 0, ·)``, the scale's
``mul``, ``dq = matmul(ds, k)`` and ``dkᵀ = matmul(q, ds, ta)``. Every intermediate must be
read only by these nodes.

Note (not in PIPELINE): the rewrite changes the arithmetic (another summation order, the
kernel's exp), so it runs only for backends that compute in vector code
(``compiler.pipeline.lower``'s ``vector_math``); the interpreter keeps eager's bits.
"""

from __future__ import annotations

import math

from dyngrad.dtypes import bool_

from .. import prims as P
from ..ir import Graph, Node, Uses, Value
from .dce import dce


def _made(v, prim) -> Node | None:
    n = v.producer if isinstance(v, Value) else None
    return n if n is not None and n.prim is prim else None


def _flags(n: Node, ta: bool, tb: bool) -> bool:
    return bool(n.params.get("ta", False)) == ta and bool(n.params.get("tb", False)) == tb


def _last_axis(n: Node, ndim: int) -> bool:
    return tuple(n.params["axes"]) == (ndim - 1,) and n.params["keepdims"]


def _reader(uses: Uses, v, prim, test) -> Node | None:
    """The one node of ``prim`` reading ``v`` that passes ``test``."""
    found = [n for n in uses.of(v) if n.prim is prim and test(n)]
    return found[0] if len(found) == 1 else None


class _Match:
    """One hand-written attention and its backward, found in the graph."""

    def __init__(self) -> None:
        self.forward: list = []  # nodes the fused forward replaces
        self.backward: list = []  # nodes the fused backward replaces


def _match(g: Graph, uses: Uses, y_node: Node):
    """The pieces of the attention computing ``y_node`` (q, k, v, mask, scale, dy and the
    nodes whose results are replaced), or None."""
    if not _flags(y_node, False, False):
        return None
    p, v = y_node.inputs
    div = _made(p, P.DIV)
    if div is None:
        return None
    e, total = div.inputs
    exp, sm = _made(e, P.EXP), _made(total, P.SUM)
    if exp is None or sm is None or sm.inputs[0] is not e:
        return None
    sub = _made(exp.inputs[0], P.SUB)
    if sub is None:
        return None
    x, top = sub.inputs
    mx = _made(top, P.MAX)
    if mx is None or mx.inputs[0] is not x or not isinstance(x, Value):
        return None
    nd = len(x.shape)
    if not (_last_axis(mx, nd) and _last_axis(sm, nd)):
        return None
    mask, scaled = None, x
    where = _made(x, P.WHERE)
    if where is not None:
        m, fill, scaled = where.inputs
        if not (isinstance(m, Value) and m.dtype is bool_
                and isinstance(fill, float) and fill == -math.inf):
            return None
        mask = m
    mul = _made(scaled, P.MUL)
    if mul is None:
        return None
    a, b = mul.inputs
    s, scale = (a, b) if isinstance(a, Value) else (b, a)
    if type(scale) is not float or not isinstance(s, Value):
        return None
    qk = _made(s, P.MATMUL)
    if qk is None or not _flags(qk, False, True):
        return None
    q, k = qk.inputs
    if not (len(q.shape) == len(k.shape) == len(v.shape) >= 2
            and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] == tuple(x.shape[:-2])
            and q.dtype is k.dtype is v.dtype and q.dtype.is_floating_point):
        return None
    forward = [qk, mul] + ([where] if where is not None else []) + [mx, sub, exp, sm, div, y_node]
    inner = [n.out for n in forward[:-1]]  # every intermediate: read by these nodes only
    back = _match_backward(uses, q, k, v, p, e, total, mask, scale, forward)
    if back is None:  # no backward (inference): the forward alone, if nothing else reads
        if not all(uses.only(val, forward) for val in inner):
            return None
        back = (None, None, None, None, [])
    dy, dq, dkt, dv, backward = back
    if not all(uses.only(val, forward + backward) for val in inner):
        return None
    return q, k, v, mask, scale, dy, y_node, dq, dkt, dv, forward, backward


def _match_backward(uses: Uses, q, k, v, p, e, total, mask, scale, forward):
    """(dy, dq node, dkᵀ node, dv node, the backward's nodes) of the softmax attention whose
    probabilities are ``p``, or None."""
    dvn = _reader(uses, p, P.MATMUL, lambda n: n.inputs[0] is p and _flags(n, True, False))
    if dvn is None:
        return None
    dy = dvn.inputs[1]
    dp = _reader(uses, dy, P.MATMUL, lambda n: n.inputs[1] is v and _flags(n, False, True))
    if dp is None or not isinstance(dy, Value):
        return None
    d1 = _reader(uses, dp.out, P.DIV, lambda n: n.inputs == [dp.out, total])
    neg = _reader(uses, dp.out, P.NEG, lambda n: True)
    if d1 is None or neg is None:
        return None
    m1 = _reader(uses, neg.out, P.MUL, lambda n: n.inputs == [neg.out, e])
    sq = _reader(uses, total, P.MUL, lambda n: n.inputs == [total, total])
    if m1 is None or sq is None:
        return None
    d2 = _reader(uses, m1.out, P.DIV, lambda n: n.inputs == [m1.out, sq.out])
    s2 = d2 and _reader(uses, d2.out, P.SUM, lambda n: _last_axis(n, len(e.shape)))
    bc = s2 and _reader(uses, s2.out, P.BROADCAST, lambda n: True)
    add = bc and _reader(uses, d1.out, P.ADD, lambda n: n.inputs == [d1.out, bc.out])
    m2 = add and _reader(uses, add.out, P.MUL, lambda n: n.inputs == [add.out, e])
    if not m2:
        return None
    chain = [dp, d1, neg, m1, sq, d2, s2, bc, add, m2]
    g = m2.out
    if mask is not None:
        w = _reader(uses, g, P.WHERE, lambda n: n.inputs[0] is mask and n.inputs[2] is g
                    and isinstance(n.inputs[1], float) and n.inputs[1] == 0.0)
        if w is None:
            return None
        chain.append(w)
        g = w.out
    sc = _reader(uses, g, P.MUL, lambda n: g in n.inputs and scale in n.inputs)
    if sc is None:
        return None
    chain.append(sc)
    ds = sc.out
    dq = _reader(uses, ds, P.MATMUL, lambda n: n.inputs == [ds, k] and _flags(n, False, False))
    dkt = _reader(uses, ds, P.MATMUL, lambda n: n.inputs == [q, ds] and _flags(n, True, False))
    if dq is None or dkt is None:
        return None
    inner = [n.out for n in chain]
    if not all(uses.only(val, chain + [dq, dkt]) for val in inner):
        return None
    return dy, dq, dkt, dvn, chain + [dq, dkt, dvn]


class _Fresh:
    """New nodes for one place of the schedule: ``node`` makes one, ``cut`` a view of a
    packed result; ``nodes`` lists them in order."""

    def __init__(self, g: Graph) -> None:
        self.g, self.nodes = g, []

    def node(self, prim, inputs: list, params: dict, shape: tuple, dtype) -> Value:
        out = self.g.new_value(shape, dtype)
        n = Node(prim, list(inputs), dict(params), out)
        out.producer = n
        self.nodes.append(n)
        return out

    def cut(self, x: Value, start: int, size: int, shape: tuple) -> Value:
        """``x[..., start:start + size]`` reshaped to ``shape``."""
        nd = len(x.shape)
        part = tuple(x.shape[:-1]) + (size,)
        sl = self.node(P.SLICE, [x], {"starts": (0,) * (nd - 1) + (start,),
                                      "stops": tuple(x.shape[:-1]) + (start + size,),
                                      "steps": (1,) * nd}, part, x.dtype)
        return sl if part == shape else self.node(P.RESHAPE, [sl], {"shape": shape}, shape,
                                                  x.dtype)

    def place(self, at: int, replacing: int = 0) -> None:
        """The new nodes at position ``at`` of the schedule, instead of the ``replacing``
        nodes there; guards stay after the same nodes."""
        self.g.nodes[at:at + replacing] = self.nodes
        for gd in self.g.guards:
            if gd.after >= at + replacing:
                gd.after += len(self.nodes) - replacing


def _rewrite(g: Graph, found) -> None:
    """The fused pair in place of the matched nodes: the forward where ``y`` was computed,
    the backward (when there is one) where the first of dq, dkᵀ, dv was; their results
    through views."""
    q, k, v, mask, scale, dy, y_node, dq, dkt, dv, _, _ = found
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    lead, nd, ty = tuple(q.shape[:-2]), len(q.shape), q.dtype
    params = {"scale": scale, "causal": False, "plain": True}
    fwd = _Fresh(g)
    attend = [] if mask is None else [fwd.node(P.BITWISE_NOT, [mask], {}, mask.shape,
                                               mask.dtype)]
    packed = fwd.node(P.FLASH_ATTENTION, [q, k, v] + attend, params, lead + (L, Ev + 1), ty)
    replace = {id(y_node.out): fwd.cut(packed, 0, Ev, lead + (L, Ev))}
    fwd.place(g.nodes.index(y_node), replacing=1)
    if dy is not None:
        bwd = _Fresh(g)
        grad = bwd.node(P.PAD, [dy], {"pads": ((0, 0, 0),) * (nd - 1) + ((0, 1, 0),),
                                      "value": 0}, lead + (L, Ev + 1), ty)
        flat = bwd.node(P.FLASH_ATTENTION_BACKWARD, [q, k, v, packed, grad] + attend, params,
                        lead + (L * E + S * E + S * Ev,), ty)
        gk = bwd.cut(flat, L * E, S * E, lead + (S, E))
        replace.update({
            id(dq.out): bwd.cut(flat, 0, L * E, lead + (L, E)),
            id(dkt.out): bwd.node(P.PERMUTE, [gk], {"perm": tuple(range(nd - 2)) +
                                                    (nd - 1, nd - 2)}, lead + (E, S), ty),
            id(dv.out): bwd.cut(flat, L * E + S * E, S * Ev, lead + (S, Ev))})
        bwd.place(min(g.nodes.index(n) for n in (dq, dkt, dv)))
    for n in g.nodes:
        n.inputs = [replace.get(id(x), x) if isinstance(x, Value) else x for x in n.inputs]
    g.outputs = [replace.get(id(x), x) for x in g.outputs]
    for gd in g.guards:
        gd.value = replace.get(id(gd.value), gd.value)


def fuse_attention(g: Graph) -> Graph:
    """Hand-written softmax attention and its backward as the fused pair (see the module's
    docstring); the replaced nodes are left for ``dce``. Example: nanoGPT's
    ``CausalSelfAttention`` with ``flash = False`` compiles to one ``flash_attention`` and
    one ``flash_attention_backward`` per layer."""
    while True:
        uses = Uses(g)
        found = next((m for n in g.nodes if n.prim is P.MATMUL
                      for m in [_match(g, uses, n)] if m is not None), None)
        if found is None:
            return g
        _rewrite(g, found)
        g = dce(g)
