"""Backward outside: what the compiled forward saves and what the backward recomputes
(compiler/partition.py's cost model), with gradients equal to eager's."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import partition
from dyngrad import nn


def _compiled_loss(model):
    return compiler.compile(lambda x, y: F.mse_loss(model(x), y), backend="interp")


def _split_of(cf):
    return cf.variants[0].backward.parts


def test_cheap_elementwise_values_are_recomputed_and_transcendentals_saved():
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(),
                      nn.Linear(32, 1))
    m2 = copy.deepcopy(m)
    cf = _compiled_loss(m2)
    x, y = dg.randn(8, 16), dg.randn(8, 1)
    for _ in range(3):
        l1, l2 = F.mse_loss(m(x), y), cf(x, y)
        l1.backward()
        l2.backward()
    for p, q in zip(m.parameters(), m2.parameters()):  # bit for bit on the interpreter
        assert np.array_equal(p.grad.numpy(), q.grad.numpy())
    parts = _split_of(cf)
    producer = {id(n.out): n for n in cf.variants[0].trace.graph.nodes}
    saved_ops = {producer[id(v)].prim.name for v in parts.backward.inputs if id(v) in producer}
    assert "tanh" in saved_ops  # compute-bound: saved, not recomputed
    assert "maximum" not in saved_ops  # relu: recomputed from its saved input
    recomputed = [n.prim.name for n in parts.backward.nodes if id(n.out) in producer and
                  n in cf.variants[0].trace.graph.nodes]
    assert "maximum" in recomputed


def test_the_cost_model_weighs_bytes_against_arithmetic():
    """float32 vecmath is cheaper to run again than its bytes are to keep; numpy's float64
    transcendentals are not; plain arithmetic always is."""
    g = compiler.Graph()
    from dyngrad.ops import REGISTRY as P
    a = g.add_input((100,), dg.float32)
    b = g.add_node(P["mul"], [a, 2.0], {}, (100,), dg.float32)
    t = g.add_node(P["tanh"], [a], {}, (100,), dg.float32)
    c = g.add_node(P["gt"], [a, 0.0], {}, (100,), dg.bool_)
    d = g.add_input((100,), dg.float64)
    t64 = g.add_node(P["tanh"], [d], {}, (100,), dg.float64)
    nodes = {id(n.out): n for n in g.nodes}
    assert partition.recompute_cost_ns(nodes[id(b)]) < partition.save_cost_ns(b)
    assert partition.recompute_cost_ns(nodes[id(t)]) < partition.save_cost_ns(t)
    assert partition.recompute_cost_ns(nodes[id(c)]) < partition.save_cost_ns(c)
    assert partition.recompute_cost_ns(nodes[id(t64)]) > partition.save_cost_ns(t64)
    saved, again = partition.rematerialise([a, b, t, c, d, t64], nodes, set())
    assert saved == [a, d, t64] and [n.out for n in again] == [b, t, c]


def test_a_chain_back_to_saved_values_is_recomputed_when_cheaper():
    """tanh(1.5x + 0.5) needs two nodes before it that nothing saves: the whole chain runs
    again from x (3 nodes, cheaper than writing and reading the tanh); a chain past
    ``CONE_MAX`` nodes is saved."""
    g = compiler.Graph()
    from dyngrad.ops import REGISTRY as P
    x = g.add_input((100,), dg.float32)
    m = g.add_node(P["mul"], [x, 1.5], {}, (100,), dg.float32)
    s = g.add_node(P["add"], [m, 0.5], {}, (100,), dg.float32)
    t = g.add_node(P["tanh"], [s], {}, (100,), dg.float32)
    long = t
    for _ in range(partition.CONE_MAX):
        long = g.add_node(P["neg"], [long], {}, (100,), dg.float32)
    nodes = {id(n.out): n for n in g.nodes}
    saved, again = partition.rematerialise([x, t], nodes, set())
    assert saved == [x] and [n.out for n in again] == [m, s, t]
    saved, again = partition.rematerialise([x, long], nodes, set())
    assert saved == [x, long] and again == []


@pytest.mark.parametrize("backend", ["llvm", "interp"])
def test_w3_with_backward_outside_recomputes_vector_math_on_llvm_only(backend):
    """On the LLVM backend the float32 transcendentals are cheaper to run again than to keep:
    only x is saved. The interpreter computes them with numpy, slower: it saves them."""
    x = dg.tensor(np.random.default_rng(0).standard_normal(4096).astype(np.float32),
                  requires_grad=True)

    def f(x):
        return ((x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()).sum()
    cf = compiler.compile(f, backend=backend)
    for _ in range(3):
        x.grad = None
        f(x).backward()
        want = x.grad.numpy().copy()
        x.grad = None
        cf(x).backward()
        np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5, atol=1e-6)
    parts = _split_of(cf)
    if backend == "llvm":  # x and the loss's cotangent: nothing else kept
        assert len(parts.backward.inputs) == 2
    else:  # tanh, sigmoid and exp kept too
        assert len(parts.backward.inputs) == 5


def test_a_value_needing_an_unsaved_input_is_saved():
    g = compiler.Graph()
    from dyngrad.ops import REGISTRY as P
    a = g.add_input((10,), dg.float32)
    w = g.add_input((10,), dg.float32)
    b = g.add_node(P["mul"], [a, w], {}, (10,), dg.float32)
    nodes = {id(n.out): n for n in g.nodes}
    saved, again = partition.rematerialise([a, b], nodes, set())  # w is not saved
    assert saved == [a, b] and again == []
