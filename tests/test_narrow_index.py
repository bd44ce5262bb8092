"""Narrowing the index values a compiled step keeps to itself to int32
(``compiler/passes/narrow.py``): which values narrow, which stay int64 (escaping, read by a
node that wants int64, or possibly too large), that eager's peak still counts them at
int64, and that a compiled training step gives the same bits with the pass as without it.
"""

from __future__ import annotations

import numpy as np

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import ir, pipeline
from compiler.backends.llvm import driver
from compiler.passes.memory import eager_peak_bytes
from compiler.passes.narrow import narrow_indices
from dyngrad import nn, optim
from dyngrad.ops import REGISTRY as P

F32, I64, I32 = dg.float32, dg.int64, dg.int32


def _node(g, name, inputs, **params):
    avals = [x.aval() if isinstance(x, ir.Value) and not x.weak else
             (1.0 if isinstance(x, ir.Value) else x) for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], inputs, params, shape, dtype)


def _pool_graph(reader: str = "gather", plane_step: int = 64):
    """max_pool2d's values and their gradient as the composite records them: the plane
    indices, flat indices ``idx + row · plane_step`` (``plane_step`` the plane's size), a
    gather and a scatter_add at them — or, with ``reader='cast'``, the indices also cast
    to float (a reader that wants them int64)."""
    g = ir.Graph()
    x = g.add_input((2, 3, 8, 8), F32)
    gy = g.add_input((6, 16), F32)
    idx = _node(g, "max_pool_indices", [x], kernel=(2, 2), stride=(2, 2),
                padding=((0, 0), (0, 0)), dilation=(1, 1))
    rows = _node(g, "reshape", [idx], shape=(6, 16))
    base = _node(g, "mul", [_node(g, "iota", [], shape=(6, 16), axis=0, start=0, step=1,
                                  dtype=I64), plane_step])
    flat = _node(g, "add", [rows, base])
    xf = _node(g, "reshape", [x], shape=(-1,))
    y = _node(g, "gather", [xf, flat], axis=0)
    zeros = _node(g, "full", [], shape=(384,), value=0, dtype=F32)
    gx = _node(g, "scatter_add", [zeros, flat, gy], axis=0)
    g.outputs = [y, gx]
    if reader == "cast":
        g.outputs.append(_node(g, "cast", [idx], dtype=F32))
    ir.verify(g)
    return g, dict(idx=idx, flat=flat, base=base)


def test_pooling_indices_read_only_by_gather_and_scatter_add_become_int32():
    g, v = _pool_graph()
    before = eager_peak_bytes(g)
    narrow_indices(g)
    ir.verify(g)
    assert v["idx"].dtype is I32 and v["idx"].producer.params["dtype"] is I32
    assert v["flat"].dtype is I32 and v["base"].dtype is I32
    assert set(g.narrowed) >= {v["idx"].id, v["flat"].id}
    assert eager_peak_bytes(g) == before  # eager holds them as int64


def test_indices_a_reader_wants_as_int64_stay_int64():
    g, v = _pool_graph(reader="cast")
    narrow_indices(g)
    assert v["idx"].dtype is I64 and "dtype" not in v["idx"].producer.params
    assert v["flat"].dtype is I64 and not g.narrowed  # (all or nothing: they are one sum)


def test_indices_that_may_not_fit_in_int32_stay_int64():
    g, v = _pool_graph(plane_step=1 << 30)  # rows · 2^30 passes int32's range
    narrow_indices(g)
    assert v["idx"].dtype is I64 and v["flat"].dtype is I64


def test_indices_the_graph_returns_stay_int64():
    g, v = _pool_graph()
    g.outputs.append(v["idx"])
    narrow_indices(g)
    assert v["idx"].dtype is I64 and v["flat"].dtype is I64


class _Mnist(nn.Module):  # pytorch/examples' mnist model, small
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, 1)
        self.conv2 = nn.Conv2d(4, 8, 3, 1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.log_softmax(self.fc(h.flatten(1)), dim=1)


def _train(narrow: bool, monkeypatch, steps: int = 4):
    if not narrow:
        monkeypatch.setattr(pipeline, "narrow_indices", lambda g: g)
    dg.manual_seed(0)
    model = _Mnist()
    opt = optim.Adadelta(model.parameters(), lr=1.0)
    r = np.random.default_rng(3)
    x = dg.tensor(r.standard_normal((5, 1, 12, 12)).astype(np.float32))
    y = dg.tensor(r.integers(0, 3, 5))

    @compiler.compile(backend="llvm")
    def step(x, y):
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        return loss, grads

    losses, grads = [], []
    for _ in range(steps):
        loss, gs = step(x, y)
        losses.append(loss.item())
        grads.append([gr.numpy().copy() for gr in gs])
    (v,) = [v for v in step.variants if v.calls]
    assert isinstance(v.plan, driver.DriverPlan)
    return losses, grads, [p.detach().numpy().copy() for p in model.parameters()], v


def _pool_indices(g) -> list:
    return [n.out for n in g.nodes if n.prim is P["max_pool_indices"]]


def test_a_compiled_mnist_step_keeps_int32_indices_and_the_same_bits(monkeypatch):
    losses, grads, params, v = _train(True, monkeypatch)
    (idx,) = _pool_indices(v.trace.graph)
    assert idx.dtype is I32, "the pooling indices were not narrowed: the test tests nothing"
    with monkeypatch.context() as m:
        losses0, grads0, params0, v0 = _train(False, m)
    (idx0,) = _pool_indices(v0.trace.graph)
    assert idx0.dtype is I64
    assert losses == losses0
    for a, b in zip(grads, grads0, strict=True):
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    for a, b in zip(params, params0, strict=True):
        assert np.array_equal(a, b)
    assert v.plan.memory.eager_peak_bytes == v0.plan.memory.eager_peak_bytes


def test_indices_returned_to_the_caller_stay_int64_and_equal_eager():
    r = np.random.default_rng(4)
    x = dg.tensor(r.standard_normal((2, 3, 9, 9)).astype(np.float32), requires_grad=True)

    def pool(x):
        y, idx = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, return_indices=True)
        y.sum().backward()
        return y, idx

    step = compiler.compile(pool, backend="llvm")
    for _ in range(2):  # (the second call runs the compiled variant)
        x.grad = None
        y, idx = step(x)
    assert [v for v in step.variants if v.calls]
    gx = x.grad.numpy().copy()
    x.grad = None
    ye, idxe = pool(x)
    assert idx.dtype is I64 and np.array_equal(idx.numpy(), idxe.numpy())
    assert np.array_equal(y.detach().numpy(), ye.detach().numpy())
    assert np.array_equal(gx, x.grad.numpy())


def test_padded_and_adaptive_pooling_steps_give_the_same_bits_narrowed(monkeypatch):
    r = np.random.default_rng(5)
    x0 = r.standard_normal((2, 3, 9, 9)).astype(np.float32)

    def run():
        x = dg.tensor(x0, requires_grad=True)

        @compiler.compile(backend="llvm")
        def step(x):
            a = F.max_pool2d(x, 3, stride=2, padding=1, dilation=2, ceil_mode=True)
            b = F.adaptive_max_pool2d(x, (4, 3))
            loss = (a * a).sum() + (b * 3.0).sum()
            loss.backward()
            return loss

        for _ in range(2):  # (the second call runs the compiled variant)
            x.grad = None
            loss = step(x).item()
        (v,) = [v for v in step.variants if v.calls]
        return loss, x.grad.numpy().copy(), v.trace.graph

    loss, gx, g = run()
    kinds = (P["max_pool_indices"], P["adaptive_max_indices"])
    assert all(n.out.dtype is I32 for n in g.nodes if n.prim in kinds)
    monkeypatch.setattr(pipeline, "narrow_indices", lambda g: g)
    loss0, gx0, g0 = run()
    assert all(n.out.dtype is I64 for n in g0.nodes if n.prim in kinds)
    assert loss == loss0 and np.array_equal(gx, gx0)
