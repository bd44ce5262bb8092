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


class _Square(nn.Module):
    def forward(self, x):
        return x * x


def test_cheap_elementwise_values_are_recomputed_and_transcendentals_saved():
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), _Square(), nn.Linear(32, 32), nn.Tanh(),
                      nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
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
    graph = cf.variants[0].trace.graph
    producer = {id(n.out): n for n in graph.nodes}
    saved_ops = [producer[id(v)].prim.name for v in parts.backward.inputs if id(v) in producer]
    assert "tanh" in saved_ops  # compute-bound: saved, not recomputed
    square = next(n for n in graph.nodes if n.prim.name == "mul" and
                  n.inputs[0] is n.inputs[1])
    assert all(v is not square.out for v in parts.backward.inputs)  # x * x: not saved ...
    assert square in parts.backward.nodes  # ... but recomputed from x, which is saved anyway
    # relu, where(x <= 0, 0, x): its output (the next weight's gradient reads it) and its
    # one-byte mask are saved; nothing recomputes them (the pre-activation is not saved)
    assert saved_ops.count("where") == 1 and saved_ops.count("le") == 1


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
def test_w3_with_backward_outside_keeps_its_gradient_on_llvm_and_transcendentals_on_interp(
        backend):
    """On the LLVM backend one scalar loss's forward computes the gradient too (see
    partition.precompute): the backward gets it and the cotangent. The interpreter keeps
    eager's order and computes transcendentals with numpy: it saves them."""
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
    if backend == "llvm":  # the gradient, computed by the forward (see precompute), and
        assert parts.precomputed and len(parts.backward.inputs) == 2  # the cotangent
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


# ------------------------------------------------------------------ precomputed gradients


def _w3_pair(n=4096, seed=0):
    x = dg.tensor(np.random.default_rng(seed).standard_normal(n).astype(np.float32),
                  requires_grad=True)

    def f(x):
        return ((x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()).sum()
    return x, f, compiler.compile(f, backend="llvm")


def _eager_grad(f, x, cot=None):
    x.grad = None
    f(x).backward(cot)
    return x.grad.numpy().copy()


def test_one_scalar_loss_has_its_gradient_computed_by_the_forward_on_llvm():
    """Backward outside, on LLVM: the forward graph is the whole joint graph with the
    cotangent 1.0, the backward scales by the cotangent (the interpreter keeps eager's
    order); a kept .grad is never overwritten by a later call (the forward's output pool)."""
    x, f, cf = _w3_pair()
    kept = []
    for _ in range(3):
        want = _eager_grad(f, x)
        x.grad = None
        cf(x).backward()
        np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5, atol=1e-6)
        kept.append((x.grad, x.grad.numpy().copy()))
    for g, snapshot in kept:
        np.testing.assert_array_equal(g.numpy(), snapshot)
    parts = _split_of(cf)
    assert parts.precomputed and parts.checked_inputs == [0]  # x, as eager saves it
    assert not _split_of(_interp_twin(f, x)).precomputed


def _interp_twin(f, x):
    ci = compiler.compile(f, backend="interp")
    for _ in range(2):
        x.grad = None
        ci(x).backward()
    return ci


def test_precomputed_gradients_scale_by_another_cotangent_and_survive_retain_graph():
    x, f, cf = _w3_pair(seed=1)
    want = _eager_grad(f, x)
    for _ in range(2):  # (traced on a call, then compiled)
        x.grad = None
        cf(x).backward(dg.tensor(2.5))
    np.testing.assert_allclose(x.grad.numpy(), 2.5 * want, rtol=1e-5, atol=1e-6)
    x.grad = None
    loss = cf(x)
    loss.backward(retain_graph=True)
    loss.backward()  # the same saved gradient, accumulated twice
    np.testing.assert_allclose(x.grad.numpy(), 2 * want, rtol=1e-5, atol=1e-6)
    x.grad = None
    (cf(x) * 3.0).backward()  # a cotangent from eager code after the call
    np.testing.assert_allclose(x.grad.numpy(), 3 * want, rtol=1e-5, atol=1e-6)


def test_an_inplace_change_before_backward_raises_as_in_eager():
    x, f, cf = _w3_pair(seed=2)
    for _ in range(2):
        x.grad = None
        cf(x).backward()
    loss = cf(x)
    with dg.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    eager_loss = f(x)
    with dg.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        eager_loss.backward()


def test_a_training_loop_with_backward_outside_matches_eager():
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    m2 = copy.deepcopy(m)
    o1 = dg.optim.SGD(m.parameters(), lr=0.05)
    o2 = dg.optim.SGD(m2.parameters(), lr=0.05)
    cf = compiler.compile(lambda x, y: F.mse_loss(m2(x), y), backend="llvm")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = dg.tensor(rng.standard_normal((16, 8)).astype(np.float32))
        y = dg.tensor(rng.standard_normal((16, 1)).astype(np.float32))
        o1.zero_grad()
        F.mse_loss(m(x), y).backward()
        o1.step()
        o2.zero_grad()
        cf(x, y).backward()
        o2.step()
        for p, q in zip(m.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4,
                                       atol=1e-5)
    assert _split_of(cf).precomputed


def test_precomputed_gradients_with_a_symbolic_batch_size_match_eager():
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    m2 = copy.deepcopy(m)
    cf = compiler.compile(lambda x, y: F.cross_entropy(m2(x), y), backend="llvm")
    for b in (8, 8, 12, 16, 20, 9, 20, 8):
        x, y = dg.randn(b, 4), dg.randint(0, 3, (b,))
        for p, q in zip(m.parameters(), m2.parameters()):
            p.grad = q.grad = None
        F.cross_entropy(m(x), y).backward()
        cf(x, y).backward()
        for p, q in zip(m.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-6)
    (v,) = cf.variants
    assert v.sym is not None and v.backward.parts.precomputed and {8, 9, 20} <= v.sizes
    assert {8, 20} <= set(v.plans)  # (9 came once: traced to verify it, no plan made)


@pytest.mark.parametrize("backend,says", [
    ("llvm", "the forward computes the gradients too"),
    ("interp", "the forward saves 1 value(s) for it (0 of them inputs")])
def test_explain_says_how_backward_outside_is_served(backend, says, capsys):
    x = dg.tensor(np.random.default_rng(0).standard_normal(64).astype(np.float32),
                  requires_grad=True)
    cf = compiler.compile(lambda x: (x.tanh() * 2).sum(), backend=backend)
    for _ in range(3):
        x.grad = None
        cf(x).backward()
    compiler.explain(cf)
    assert f"backward outside: {says}" in capsys.readouterr().out
