"""Transposes read by matmuls: ``a @ b.transpose(-2, -1)`` traces as a ``permute`` swapping
the last two dims and a ``matmul`` reading it. The product takes the operand as it is, with
its transpose flag flipped (``ta``/``tb``, as BLAS does), and the permute — a copy of the
operand in compiled code — goes when nothing else reads it (``dce``). The product is the
same sums in the same order: eager multiplies the transposed view, the interpreter calls
``np.matmul`` on the same view, bit for bit.
"""

from __future__ import annotations

from .. import prims as P
from ..ir import Graph, Value


def _swaps_last_two(n) -> bool:
    perm = tuple(n.params["perm"])
    k = len(perm)
    return k >= 2 and perm == tuple(range(k - 2)) + (k - 1, k - 2)


def fold_transposes(g: Graph) -> Graph:
    made = {id(n.out): n for n in g.nodes}
    for n in g.nodes:
        if n.prim is not P.MATMUL:
            continue
        for i, flag in ((0, "ta"), (1, "tb")):
            x = n.inputs[i]
            p = made.get(id(x)) if isinstance(x, Value) else None
            if p is not None and p.prim is P.PERMUTE and _swaps_last_two(p):
                n.inputs[i] = p.inputs[0]
                n.params = {**n.params, flag: not n.params.get(flag, False)}
    return g
