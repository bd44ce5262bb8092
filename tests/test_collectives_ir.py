"""Collectives as IR operations, without MPI (Note [collectives in the IR] in
dyngrad/distributed/collectives.py): the passes keep every start and wait, fusion keeps them
in program order — a start as soon as its input exists, before the rest of the backward, a
wait where the trace waited, before the update reads it — and the memory plan keeps a
start's buffer (and what MPI reads) alive and untouched until its wait. What runs them on
ranks: tests/test_distributed_mpi.py (tests/mpi/compiled.py, single.py)."""

from __future__ import annotations

import pytest

from compiler import prims as P
from compiler.collectives import Collectives, check, fingerprint
from compiler.ir import Graph, verify
from compiler.passes import run_passes
from compiler.passes.fusion import fuse, verify_groups
from compiler.passes.memory import plan_memory, verify_plan
from compiler.trace import Unsupported
from dyngrad import float32
from dyngrad.distributed.collectives import ReduceOp

N = 32


def _matmul(g, a, b):
    return g.add_node(P.MATMUL, [a, b], {"ta": False, "tb": False}, (N, N), float32)


def _start(g, x, prim=P.ALL_REDUCE_START, **params):
    params = {"world": 2, "op": ReduceOp.SUM, **params}
    return g.add_node(prim, [x], params, x.shape, x.dtype)


def _wait(g, s, *kept):
    return g.add_node(P.COLLECTIVE_WAIT, [s, *kept], {}, s.shape, s.dtype)


def ddp_like():
    """A last layer's gradient (ready first) reduced while an earlier layer's gradient is
    computed; both waited for at the end; the update reads the averages."""
    g = Graph()
    x, w1, w2 = (g.add_input((N, N), float32, n) for n in ("x", "w1", "w2"))
    g2 = _matmul(g, x, w2)  # (the last layer's gradient)
    s2 = _start(g, g2)
    g1 = _matmul(g, _matmul(g, x, w1), w1)  # (the rest of the backward)
    s1 = _start(g, g1)
    r2, r1 = _wait(g, s2), _wait(g, s1)
    g.outputs = [g.add_node(P.SUB, [w2, r2], {}, (N, N), float32),
                 g.add_node(P.SUB, [w1, r1], {}, (N, N), float32)]
    verify(g)
    return g


def _positions(g, groups):
    where = {}
    for t, grp in enumerate(groups):
        for i in grp.nodes:
            where[g.nodes[i].prim.name + str(i)] = t
    return where


def test_passes_keep_two_all_reduces_of_one_value_and_an_unused_one():
    g = Graph()
    x = g.add_input((N, N), float32, "x")
    a, b = _start(g, x), _start(g, x)  # (the same collective twice: two on every rank)
    ra, rb = _wait(g, a), _wait(g, b)
    _wait(g, _start(g, x))  # (its result unused: every rank still runs it)
    g.outputs = [g.add_node(P.ADD, [ra, rb], {}, (N, N), float32)]
    g = run_passes(g)
    assert [n.prim for n in g.nodes].count(P.ALL_REDUCE_START) == 3
    assert [n.prim for n in g.nodes].count(P.COLLECTIVE_WAIT) == 3


def test_a_collective_of_a_constant_is_not_folded():
    import numpy as np
    g = Graph()
    c = g.add_const(np.ones((2, 2), np.float32))
    g.outputs = [_wait(g, _start(g, c))]
    g = run_passes(g)
    assert [n.prim for n in g.nodes] == [P.ALL_REDUCE_START, P.COLLECTIVE_WAIT]


def test_a_start_runs_before_the_rest_of_the_backward_and_waits_before_the_update():
    g = ddp_like()
    groups = fuse(g)
    verify_groups(g, groups)
    kinds = [grp.kind for grp in groups]
    names = [g.nodes[grp.nodes[0]].prim for grp in groups]
    first_start = names.index(P.ALL_REDUCE_START)
    last_matmul = max(t for t, k in enumerate(kinds) if k == "matmul")
    waits = [t for t, p in enumerate(names) if p is P.COLLECTIVE_WAIT]
    updates = [t for t, grp in enumerate(groups)
               if any(g.nodes[i].prim is P.SUB for i in grp.nodes)]
    assert first_start < last_matmul < min(waits)
    assert max(waits) < max(updates)
    assert all(k == "collective" for k, p in zip(kinds, names)
               if p in (P.ALL_REDUCE_START, P.COLLECTIVE_WAIT))


def test_collectives_keep_their_program_order_when_a_later_one_is_ready_first():
    g = Graph()
    x, w = g.add_input((N, N), float32, "x"), g.add_input((N, N), float32, "w")
    slow = _matmul(g, _matmul(g, x, w), w)
    s1 = _start(g, slow)  # (its input is ready late)
    s2 = _start(g, x)  # (ready at once: must still start after s1)
    g.outputs = [_wait(g, s1), _wait(g, s2)]
    groups = fuse(g)
    order = [i for grp in groups for i in grp.nodes
             if g.nodes[i].prim is P.ALL_REDUCE_START]
    assert order == [k for k, n in enumerate(g.nodes) if n.prim is P.ALL_REDUCE_START]


def test_a_start_is_not_sunk_to_its_wait_past_another_start_or_the_backward():
    """A start whose input is read again later frees nothing where it runs: the schedule's
    memory heuristic would move it to just before its wait — past the other start, and
    past the compute its transfer should overlap."""
    g = Graph()
    x, w = g.add_input((N, N), float32, "x"), g.add_input((N, N), float32, "w")
    y = _matmul(g, x, w)
    s1 = _start(g, y)
    z = _matmul(g, y, w)  # (reads y again)
    s2 = _start(g, z)
    g.outputs = [_wait(g, s1), _wait(g, s2)]
    groups = fuse(g)
    order = [g.nodes[grp.nodes[0]] for grp in groups]
    assert order.index(s1.producer) < order.index(z.producer) < order.index(s2.producer)


def test_the_memory_plan_keeps_a_starts_buffer_alive_until_its_wait():
    g = ddp_like()
    groups = fuse(g)
    steps = [0] * len(g.nodes)
    for t, grp in enumerate(groups):
        for k in grp.nodes:
            steps[k] = t
    plan = plan_memory(g, [v for grp in groups for v in grp.outputs], steps=steps,
                       inplace=False, into_outputs=False)
    verify_plan(g, plan)
    for k, n in enumerate(g.nodes):
        if n.prim is P.COLLECTIVE_WAIT:
            start = n.inputs[0]
            born, last = plan.lifetimes[start.id]
            assert born == steps[g.nodes.index(start.producer)] and last == steps[k]
            lo, hi = plan.offsets[start.id], plan.offsets[start.id] + plan.sizes[start.id]
            for v, (b, e) in plan.lifetimes.items():  # (nothing else in its bytes meanwhile)
                if v != start.id and v in plan.offsets and b <= last and e >= born:
                    o = plan.offsets[v]
                    assert o + plan.sizes[v] <= lo or o >= hi, (v, start.id)


def test_an_all_gathers_input_stays_alive_until_its_wait():
    g = Graph()
    x, w = g.add_input((N, N), float32, "x"), g.add_input((N, N), float32, "w")
    y = _matmul(g, x, w)
    s = g.add_node(P.ALL_GATHER_START, [y], {"world": 2}, (2 * N, N), float32)
    later = _matmul(g, x, x)
    r = _wait(g, s, y)  # (MPI reads y until the wait)
    g.outputs = [r, later]
    verify(g)
    groups = fuse(g)
    steps = [0] * len(g.nodes)
    for t, grp in enumerate(groups):
        for k in grp.nodes:
            steps[k] = t
    plan = plan_memory(g, [v for grp in groups for v in grp.outputs], steps=steps)
    assert plan.lifetimes[y.id][1] == steps[g.nodes.index(r.producer)]


def test_value_guards_and_a_backward_outside_are_refused_naming_why():
    g = ddp_like()
    check(g, backward_outside=False)
    with pytest.raises(Unsupported, match="compile the whole step"):
        check(g, backward_outside=True)
    g.add_guard(g.nodes[0].out, True, "bool", "model.py:3")
    with pytest.raises(Unsupported, match="value guard .* on tensor data"):
        check(g, backward_outside=False)


def test_a_start_without_its_wait_is_refused():
    g = Graph()
    x = g.add_input((N, N), float32, "x")
    _start(g, x)
    g.outputs = [x]
    with pytest.raises(Unsupported, match="not waited for exactly once"):
        check(g, backward_outside=False)


def test_the_fingerprint_names_kinds_ops_dtypes_and_shapes_in_order():
    g = ddp_like()
    cols = Collectives.of(g)
    assert cols.labels == ("all_reduce SUM of float32 [32, 32]",) * 2
    assert cols.fingerprint == fingerprint(list(cols.labels)) != fingerprint(list(cols.labels[:1]))
    assert Collectives.of(Graph()) is None


def test_a_start_records_the_world_and_its_shape_rule_names_bad_blocks():
    g = Graph()
    x = g.add_input((3, 2), float32, "x")
    with pytest.raises(ValueError, match="multiple of the world size 2"):
        P.REDUCE_SCATTER_START.shape(x.aval(), world=2, op=ReduceOp.SUM)
