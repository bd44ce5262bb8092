"""Narrowing index values a compiled step keeps to itself from int64 to int32.

Max pooling saves its indices (int64, as PyTorch's) from the forward to the backward's
scatter-add: in a training step compiled whole (the mnist model's), the pooling indices of
conv2 are a quarter of the arena at its peak. Their values are positions within a plane, so
int32 holds them, and half the bytes stay alive across the step.

An int64 value computed in the graph becomes int32 when

- its values provably fit: a range is known for it from the primitives' ``value_range``
  traits (a pooling index: below its plane's size; an ``iota``: its ends; ``add``/``mul``
  of ranges: their corners), and it lies in int32's;
- it never leaves the graph: not a graph output (a user's ``return_indices``, a value a
  backward outside the call reads) and not read by a value guard;
- every reader takes it as int32: a reader narrowed too, whose shape rule then gives int32
  (an elementwise node or a view of narrowed values and Python ints in int32's range; a
  node with a dtype parameter, ``Traits.dtype_param``, set to int32), or a reader that
  reads it only as an index (``Traits.index_inputs``: gather's and scatter_add's kernels
  widen each index as they load it) and whose shape rule accepts int32 there.

The conditions are solved together, dropping values until none breaks one: a value is
narrowed with all the values it is computed from and read by, or not at all. Every value
narrowed is computed exactly — each node's result lies in int32, so int32 arithmetic gives
int64's numbers — and the values read from it (gathered, scattered) are the same bits.

Only a backend that plans memory runs this pass (``pipeline.lower``): the interpreter runs
eager's numpy and keeps eager's dtypes. ``Graph.narrowed`` records each narrowed value's
eager dtype, so ``memory.eager_peak_bytes`` counts it as eager holds it.
"""

from __future__ import annotations

from dyngrad import dtypes as _dt
from dyngrad.ops.primitive import AbstractValue

from ..ir import Graph, Node, Value
from ..prims import traits

INT32 = (-(1 << 31), (1 << 31) - 1)


def _fits(r: tuple | None) -> bool:
    return r is not None and INT32[0] <= r[0] and r[1] <= INT32[1]


def _number(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def value_ranges(g: Graph) -> dict:
    """id(value) -> (lo, hi), bounds of every int64 node output the traits can bound."""
    ranges: dict[int, tuple] = {}
    for n in g.nodes:
        rule = traits(n.prim).value_range
        if rule is None or n.out.dtype is not _dt.int64 or n.out.weak:
            continue
        r = rule(n, [ranges.get(id(x)) if isinstance(x, Value) else
                     (x, x) if _number(x) else None for x in n.inputs])
        if r is not None:
            ranges[id(n.out)] = r
    return ranges


def _aval(x, narrow: dict):
    """What a shape rule is given for input ``x``, with the values in ``narrow`` int32."""
    if not isinstance(x, Value):
        return x
    if x.weak:
        return 1.0
    return AbstractValue(x.shape, _dt.int32 if id(x) in narrow else x.dtype)


def _params(n: Node) -> dict:
    name = traits(n.prim).dtype_param
    return dict(n.params, **{name: _dt.int32}) if name else n.params


def _rule(n: Node, narrow: dict, params: dict):
    try:
        return n.prim.shape(*(_aval(x, narrow) for x in n.inputs), **params)
    except Exception:  # (a rule refusing int32: not narrowed)
        return None


def _computes_narrow(n: Node, narrow: dict) -> bool:
    """Whether ``n`` gives int32 from its inputs as narrowed (its Python ints in range)."""
    if any(_number(x) and not INT32[0] <= x <= INT32[1] for x in n.inputs):
        return False
    res = _rule(n, narrow, _params(n))
    return res is not None and res[1] is _dt.int32


def _reads_narrow(r: Node, k: int, narrow: dict) -> bool:
    """Whether reader ``r`` may read its input ``k`` narrowed."""
    if id(r.out) in narrow:
        return True  # (its own rule is checked as the reader's value)
    if k not in traits(r.prim).index_inputs:
        return False
    res = _rule(r, narrow, r.params)
    return res is not None and tuple(res[0]) == r.out.shape and res[1] is r.out.dtype


def narrow_indices(g: Graph) -> Graph:
    """Make the int64 values of ``g`` that hold bounded indices and stay inside it int32
    (see the module docstring). Returns ``g`` (changed in place).

    >>> g = narrow_indices(g)  # a max_pool2d step: its indices, and the flat ones, int32
    """
    ranges = value_ranges(g)
    pinned = {id(v) for v in g.outputs} | {id(gd.value) for gd in g.guards}
    narrow = {id(n.out): n for n in g.nodes
              if id(n.out) in ranges and id(n.out) not in pinned and _fits(ranges[id(n.out)])}
    readers: dict[int, list] = {}
    for r in g.nodes:
        for k, x in enumerate(r.inputs):
            if isinstance(x, Value) and id(x) in narrow:
                readers.setdefault(id(x), []).append((r, k))
    changed = True
    while changed:
        changed = False
        for key, n in list(narrow.items()):
            if not _computes_narrow(n, narrow) or not all(
                    _reads_narrow(r, k, narrow) for r, k in readers.get(key, ())):
                del narrow[key]
                changed = True
    for n in g.nodes:
        if id(n.out) in narrow:
            g.narrowed[n.out.id] = n.out.dtype
            n.params = _params(n)
            n.out.dtype = _dt.int32
    return g
