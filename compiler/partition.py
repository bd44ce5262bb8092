"""Splitting a joint forward+backward graph for *backward outside*: the compiled forward
returns, besides its outputs, the values the backward part needs ("saved" values, fresh
arrays every call), and the backward part runs later from those and the cotangents.
:func:`precompute` goes further for one scalar loss (the LLVM backend uses it): the forward
computes the gradients themselves, and the backward scales them by the cotangent.

Rematerialisation (:func:`rematerialise`): a saved value whose forward nodes are cheap to run
again from values the backward has anyway (other saved values, constants) is recomputed by
the backward instead of being written, kept and read back — from saved values and constants
only (never from a graph input eager would not have saved: an in-place change of it before
``backward()`` must not change the gradient). The nodes run again are the value's producer
and, back to saved values, the elementwise nodes it needs (at most ``CONE_MAX``). The cost
model counts both sides per element: saving costs the bytes written by the forward (into a
fresh array: its pages are faulted in too) and read by the backward (``NS_PER_BYTE``);
recomputing costs the nodes' arithmetic (``OP_NS`` per operation, ``TRANSCENDENTAL_NS`` per
dtype for exp/log/tanh/sigmoid/erf/sin/cos — float32 ones are vector polynomials in the
LLVM backend's kernels, float64 ones and the interpreter's are numpy's). A value is
recomputed only when that is cheaper, repeated until nothing changes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ir import Graph, Value, renumber_guards
from .prims import MUL, traits


@dataclass(eq=False)
class Split:
    forward: Graph
    backward: Graph
    n_outputs: int  # forward outputs before the saved values
    saved_inputs: list  # for each saved value: index of the graph input it is, or None
    checked_inputs: list | None = None  # graph inputs version-checked at backward() (None:
    #                                     the saved ones, as eager checks its saved tensors)
    precomputed: bool = False  # the forward computed the gradients (see precompute)


def _live(values: list, nodes: list) -> set:
    live = {id(v) for v in values}
    for n in reversed(nodes):
        if id(n.out) in live:
            live.update(id(x) for x in n.inputs if isinstance(x, Value))
    return live


NS_PER_BYTE = 0.045  # written to a fresh array (~40 GB/s and a page fault per 4 KiB), read back
OP_NS = 0.05  # a vectorised add/mul/compare/select per element
CONE_MAX = 8  # nodes recomputed for one saved value at most
# per element, one core: a vecmath polynomial (float32 in LLVM kernels, interleaved: measured
# ~0.15 ns on the 2-core Zen machine), numpy's loops (float32 on the interpreter, float64)
TRANSCENDENTAL_NS = {"float32": 0.2, "float64": 2.0}
NUMPY_TRANSCENDENTAL_NS = {"float32": 1.0, "float64": 2.0}


def recompute_cost_ns(node, vector_math: bool = True) -> float:
    """Per element: what running ``node`` again costs (``vector_math``: the backend computes
    float32 transcendentals as vector polynomials — the LLVM backend; else numpy does)."""
    if traits(node.prim).transcendental:
        table = TRANSCENDENTAL_NS if vector_math else NUMPY_TRANSCENDENTAL_NS
        return table.get(node.out.dtype.name if node.out.dtype else "", 2.0)
    return OP_NS


def save_cost_ns(v: Value) -> float:
    """Per element: writing ``v`` in the forward and reading it in the backward."""
    return 2 * v.dtype.np.itemsize * NS_PER_BYTE


def rematerialise(saved: list, producer: dict, available: set,
                  vector_math: bool = True) -> tuple[list, list]:
    """(saved values, forward nodes the backward runs again, in order). ``available``: ids
    of other values the backward may read without saving them."""
    saved = list(saved)
    recompute: list = []
    again: set = set()  # ids of the nodes run again
    changed = True
    while changed:
        changed = False
        have = {id(v) for v in saved} | available
        for v in list(saved):
            cone = _cone(v, producer, have, again)
            if cone is None or not cone:
                continue
            if sum(recompute_cost_ns(n, vector_math) for n in cone) >= save_cost_ns(v):
                continue
            saved.remove(v)
            recompute += cone
            again.update(id(n) for n in cone)
            changed = True
    order = {id(n): i for i, n in enumerate(producer.values())}  # (forward order)
    recompute.sort(key=lambda n: order[id(n)])
    return saved, recompute


def _cone(v: Value, producer: dict, have: set, again: set) -> list | None:
    """The elementwise nodes (not yet run again) computing ``v`` from values in ``have``
    and constants, or None: a node that is not elementwise, a runtime scalar, an unsaved
    graph input, or more than ``CONE_MAX`` nodes."""
    cone: list = []
    seen: set = set()

    def visit(x) -> bool:
        if id(x) in seen or (id(x) in have and x is not v) or x.const is not None:
            return True
        n = producer.get(id(x))
        if n is None or n.prim.kind != "elementwise" or x.weak or x.dtype is None:
            return False
        seen.add(id(x))
        if id(n) in again:
            return True
        for y in n.inputs:
            if isinstance(y, Value) and not visit(y):
                return False
        cone.append(n)
        return len(cone) <= CONE_MAX

    return cone if visit(v) else None


def split(g: Graph, n_forward_outputs: int, cotangents: list,
          vector_math: bool = True) -> Split:
    fwd_out, grad_out = g.outputs[:n_forward_outputs], g.outputs[n_forward_outputs:]
    need_f = _live(fwd_out + [gd.value for gd in g.guards], g.nodes)
    need_b = _live(grad_out, g.nodes)
    F = [n for n in g.nodes if id(n.out) in need_f]
    B = [n for n in g.nodes if id(n.out) in need_b and id(n.out) not in need_f]
    made_in_b = {id(n.out) for n in B}
    cot_ids = {id(v) for v in cotangents}
    saved, seen = [], set()
    for x in [x for n in B for x in n.inputs] + grad_out:
        if isinstance(x, Value) and x.const is None and id(x) not in made_in_b \
                and id(x) not in cot_ids and id(x) not in seen:
            seen.add(id(x))
            saved.append(x)
    index_of = {id(v): i for i, v in enumerate(v for v in g.inputs if id(v) not in cot_ids)}
    # recompute only from what eager saves too (a graph input eager did not save is not
    # read: an in-place change of it before backward must not change the gradient)
    producer = {id(n.out): n for n in g.nodes}
    saved, again = rematerialise(saved, producer, set(), vector_math)
    B = again + B
    renumber_guards(g.guards, g.nodes, F)
    inputs = [v for v in g.inputs if id(v) not in cot_ids]
    forward = Graph(inputs=inputs, scalars=list(g.scalars), nodes=F,
                    outputs=list(fwd_out) + saved, guards=list(g.guards), _next=g._next)
    backward = Graph(inputs=saved + list(cotangents), scalars=[], nodes=B,
                     outputs=list(grad_out), guards=[], _next=g._next)
    return Split(forward, backward, len(fwd_out), [index_of.get(id(v)) for v in saved])


def precompute(g: Graph, n_forward_outputs: int, cotangents: list, normal: Split) -> Split | None:
    """Backward outside, computed inside: for one scalar loss, the forward graph is the whole
    joint graph with the loss's cotangent taken as 1.0, so the forward call returns the
    gradients too (one fused pass, as with ``backward()`` inside); ``backward()`` then scales
    them by the cotangent it is given (``x * 1.0`` is ``x``, so ``loss.backward()`` gets the
    fused pass's bits; any other cotangent, its product — the backward is linear in it).
    The inputs ``normal`` would have saved are version-checked at ``backward()`` as eager
    checks its saved tensors. None when it does not apply: not one scalar cotangent, or a
    gradient of another dtype."""
    if len(cotangents) != 1 or cotangents[0].shape != () or cotangents[0].dtype is None:
        return None
    cot = cotangents[0]
    fwd_out, grad_out = g.outputs[:n_forward_outputs], g.outputs[n_forward_outputs:]
    if not grad_out or any(v.dtype is not cot.dtype or v.weak for v in grad_out):
        return None
    if any(v is cot for v in grad_out) or any(v is cot for v in fwd_out):
        return None
    one = g.new_value((), cot.dtype, "cotangent 1", const=np.ones((), cot.dtype.np))
    nodes = []
    for n in g.nodes:
        if any(x is cot for x in n.inputs):
            n = type(n)(n.prim, [one if x is cot else x for x in n.inputs], dict(n.params),
                        n.out)
            n.out.producer = n
        nodes.append(n)
    inputs = [v for v in g.inputs if v is not cot]
    forward = Graph(inputs=inputs, scalars=list(g.scalars), nodes=nodes,
                    outputs=list(fwd_out) + list(grad_out), guards=list(g.guards),
                    _next=g._next)
    saved = [forward.new_value(v.shape, v.dtype, "gradient at 1") for v in grad_out]
    bcot = forward.new_value((), cot.dtype, "cotangent")
    backward = Graph(inputs=saved + [bcot], scalars=[], nodes=[], outputs=[],
                     guards=[], _next=forward._next)
    backward.outputs = [backward.add_node(MUL, [s, bcot], {}, s.shape, s.dtype)
                        for s in saved]
    forward._next = backward._next
    checked = [i for i in normal.saved_inputs if i is not None]
    return Split(forward, backward, len(fwd_out), [None] * len(saved), checked, True)
