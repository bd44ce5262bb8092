"""Recomputing activations for their late readers (``compiler/passes/remat.py``): which
values are copied, where the copies go, that fusion keeps them there, that the arena
shrinks, and that a compiled step gives the same bits with the copies as without them.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import ir, pipeline
from compiler.backends.llvm import driver
from compiler.passes.fusion import fuse
from compiler.passes.memory import eager_peak_bytes
from compiler.passes.remat import GAP, WORK_MAX, rematerialise
from compiler.prims import traits
from dyngrad import nn, optim
from dyngrad.ops import REGISTRY as P

F32 = dg.float32


def _node(g, name, inputs, **params):
    avals = [x.aval() if isinstance(x, ir.Value) and not x.weak else
             (1.0 if isinstance(x, ir.Value) else x) for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], inputs, params, shape, dtype)


def _filler(g, x, n):
    """``n`` nodes of work on ``x`` that no value of interest reads (a long stretch)."""
    for _ in range(n):
        x = _node(g, "tanh", [x])
    return x


def _relu_graph(gap: int, transcendental: bool = False):
    """A forward ``r = relu(d * s)`` read early and again after ``gap`` nodes, with ``d``
    (an exp, not to be recomputed) also read late — a ReLU over a batch norm's output."""
    g = ir.Graph()
    x = g.add_input((4, 8), F32)
    s = g.add_input((1, 8), F32)
    d = _node(g, "exp", [x])
    y = _node(g, "mul", [d, s])
    if transcendental:
        y = _node(g, "tanh", [y])
    m = _node(g, "le", [y, 0.0])
    r = _node(g, "where", [m, 0.0, y])
    early = _node(g, "mul", [r, 3.0])
    t = _filler(g, early, gap)
    late = _node(g, "add", [t, r])  # the late reader of r
    grad = _node(g, "where", [m, 0.0, late])  # the late reader of the mask
    out = _node(g, "sum", [_node(g, "mul", [grad, d])], axes=(0, 1), keepdims=False)
    g.outputs = [out]
    ir.verify(g)
    return g, dict(d=d, y=y, m=m, r=r, late=late, grad=grad)


def test_a_relu_read_across_a_gap_is_computed_again_before_its_late_reader():
    g, v = _relu_graph(GAP + 4)
    n_before = len(g.nodes)
    g = rematerialise(g)
    ir.verify(g)
    assert g.recomputed and len(g.nodes) > n_before
    late, grad = v["late"].producer, v["grad"].producer
    r_copy, m_copy = late.inputs[1], grad.inputs[0]
    assert r_copy is not v["r"] and g.recomputed[r_copy.id] == v["r"].id
    assert m_copy is not v["m"] and g.recomputed[m_copy.id] == v["m"].id
    index = {id(n.out): k for k, n in enumerate(g.nodes)}
    copies = [k for k, n in enumerate(g.nodes) if n.out.id in g.recomputed]
    assert min(copies) > index[id(v["r"])] + GAP  # placed late, not beside the original
    # nothing after the gap reads the originals: they die at their early readers
    for k, n in enumerate(g.nodes):
        if k >= min(copies):
            assert not any(x is v["r"] or x is v["m"] or x is v["y"] for x in n.inputs)
    # the copies read d (alive across anyway: the graph's last product reads it) and s
    assert any(x is v["d"] for k in copies for x in g.nodes[k].inputs)
    # eager's peak is measured without the copies: the same as before the pass
    g0, _ = _relu_graph(GAP + 4)
    assert eager_peak_bytes(g) == eager_peak_bytes(g0)


def test_a_copy_may_go_just_before_its_inputs_last_reader():
    """A GELU's ``u = x / sqrt(2)``, kept for the derivative's ``exp(-u²)``, read late two
    nodes after the backward's last read of ``x``: ``x`` is not alive at ``u``'s late
    reader, but ``u`` is computed again before ``x``'s last reader (at most ``SLACK``
    nodes earlier) instead of being kept across the whole gap."""
    from compiler.passes.remat import SLACK
    g = ir.Graph()
    h = g.add_input((4, 8), F32)
    x = _node(g, "exp", [h])  # (not an input: kept from the forward, like a matmul's output)
    u = _node(g, "mul", [x, 0.7071067811865476])
    early = _node(g, "erf", [u])
    t = _filler(g, early, GAP + 4)
    x_last = _node(g, "mul", [t, x])  # the backward's last read of x
    t = _filler(g, x_last, min(2, SLACK))
    late = _node(g, "mul", [t, u])  # u's late reader, after x's last reader
    g.outputs = [_node(g, "sum", [late], axes=(0, 1), keepdims=False)]
    ir.verify(g)
    g = rematerialise(g)
    ir.verify(g)
    index = {id(n.out): k for k, n in enumerate(g.nodes)}
    u_copy = late.producer.inputs[1]
    assert u_copy is not u and g.recomputed[u_copy.id] == u.id
    assert index[id(u_copy)] < index[id(x_last)]  # computed while x is still alive
    assert index[id(u_copy)] > index[id(early)] + GAP  # and late, not beside the original
    assert all(n.inputs[k] is not u for n in g.nodes[index[id(x_last)]:]
               for k in range(len(n.inputs)))


def _centred_relu_graph(gap: int, per_channel: bool):
    """``r = relu(x - s)`` read early and after ``gap`` nodes, where ``s`` is a sum of ``x``
    (no exact cone computes it again) that nothing after the gap reads: per channel, or
    of ``x``'s own shape."""
    g = ir.Graph()
    x = g.add_input((4, 8), F32)
    s = _node(g, "sum", [x], axes=(0,), keepdims=True) if per_channel else \
        _node(g, "exp", [x])
    y = _node(g, "sub", [x, s])
    m = _node(g, "le", [y, 0.0])
    r = _node(g, "where", [m, 0.0, y])
    t = _filler(g, _node(g, "mul", [r, 3.0]), gap)
    late = _node(g, "add", [t, r])
    g.outputs = [_node(g, "sum", [late], axes=(0, 1), keepdims=False)]
    ir.verify(g)
    return g, dict(s=s, r=r, late=late)


def test_a_small_value_the_cone_cannot_compute_is_kept_for_the_copy():
    g, v = _centred_relu_graph(GAP + 4, per_channel=True)
    g = rematerialise(g)
    ir.verify(g)
    r_copy = v["late"].producer.inputs[1]
    assert g.recomputed.get(r_copy.id) == v["r"].id
    at = {id(n.out): k for k, n in enumerate(g.nodes)}
    readers_of_s = [k for k, n in enumerate(g.nodes) if any(x is v["s"] for x in n.inputs)]
    assert max(readers_of_s) > at[id(v["r"])] + GAP  # the per-channel sum, read late
    g, v = _centred_relu_graph(GAP + 4, per_channel=False)  # as large as r: not kept
    assert not rematerialise(g).recomputed


@pytest.mark.parametrize("case", ["short gap", "transcendental", "output", "guard"])
def test_what_is_not_computed_again(case):
    g, v = _relu_graph(2 if case == "short gap" else GAP + 4, case == "transcendental")
    if case == "output":  # a value the call hands back stays as it is
        g.outputs.append(v["r"])
    if case == "guard":
        g.add_guard(v["r"], None, "bool").after = 3
    g = rematerialise(g)
    if case == "transcendental":  # the mask's cone would recompute tanh: neither is copied
        assert not g.recomputed
    elif case in ("output", "guard"):
        assert v["r"].id not in g.recomputed.values()
    else:
        assert not g.recomputed


def test_fusion_never_runs_a_copy_before_its_place():
    """A kernel computing a copy starts at the first copy's place — or earlier only where
    every node between is its own, or one it reads or that reads it: then no other kernel
    can run between, and nothing is computed sooner (fusion's ``_below_floor``)."""
    g, _ = _relu_graph(GAP + 4)
    g = rematerialise(g)
    first_copy = min(k for k, n in enumerate(g.nodes) if n.out.id in g.recomputed)
    at = {n.out.id: k for k, n in enumerate(g.nodes)}
    preds = [{at[x.id] for x in n.inputs if isinstance(x, ir.Value) and x.id in at}
             for n in g.nodes]

    def closure(start: set, edges) -> set:
        seen, stack = set(start), list(start)
        while stack:
            for j in edges(stack.pop()):
                if j not in seen:
                    seen.add(j)
                    stack.append(j)
        return seen

    succs = [{j for j, p in enumerate(preds) if k in p} for k in range(len(g.nodes))]
    checked = 0
    for grp in fuse(g):
        if any(g.nodes[k].out.id in g.recomputed for k in grp.nodes):
            checked += 1
            mine = set(grp.nodes)
            related = closure(mine, lambda k: preds[k]) | closure(mine, lambda k: succs[k])
            between = set(range(min(grp.nodes), first_copy))
            assert between <= related, (grp, between - related)
    assert checked


class _Net(nn.Module):  # conv -> batch norm -> relu, with a residual block
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c3, self.b3 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b3(self.c3(F.relu(self.b2(self.c2(h))))) + h)
        return self.fc(h.mean((2, 3)))


def _train(steps: int, shapes, remat: bool, monkeypatch):
    if not remat:
        monkeypatch.setattr(pipeline, "rematerialise", lambda g: g)
    dg.manual_seed(0)
    model = _Net()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    r = np.random.default_rng(1)
    batches = [(dg.tensor(r.standard_normal(s).astype(np.float32)),
                dg.tensor(r.integers(0, 3, s[0]))) for s in shapes]

    @compiler.compile(backend="llvm")
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    losses = [step(*batches[k % len(batches)]).item() for k in range(steps)]
    state = [p.detach().numpy().copy() for p in model.parameters()]
    state += [b.numpy().copy() for b in model.buffers()]
    plans = [v.plan for v in step.variants if v.calls]
    assert plans and all(isinstance(p, driver.DriverPlan) for p in plans)
    return losses, state, step


def test_a_compiled_step_gives_the_same_bits_with_and_without_the_copies(monkeypatch):
    losses, state, step = _train(5, [(6, 2, 9, 9)], True, monkeypatch)
    (v,) = [v for v in step.variants if v.calls]
    assert v.trace.graph.recomputed, "nothing was computed again: the test tests nothing"
    with monkeypatch.context() as m:
        losses0, state0, step0 = _train(5, [(6, 2, 9, 9)], False, m)
    (v0,) = [v for v in step0.variants if v.calls]
    assert not v0.trace.graph.recomputed
    assert losses == losses0
    for a, b in zip(state, state0, strict=True):
        assert np.array_equal(a, b)
    assert v.plan.memory.arena_bytes < v0.plan.memory.arena_bytes
    assert v.plan.memory.eager_peak_bytes == v0.plan.memory.eager_peak_bytes


class _NormMLP(nn.Module):  # linear -> layer norm -> relu, twice: a batch size that
    def __init__(self) -> None:  # is never read into Python (one symbolic variant)
        super().__init__()
        self.l1, self.n1 = nn.Linear(6, 32), nn.LayerNorm(32)
        self.l2, self.n2 = nn.Linear(32, 32), nn.LayerNorm(32)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        return self.out(F.relu(self.n2(self.l2(F.relu(self.n1(self.l1(x)))))))


def test_the_copies_follow_a_symbolic_batch_size_and_equal_eager():
    """Batch sizes 5, 7, 9, 6, 11: one symbolic variant serves them (the copies are chosen
    by structure, so every size makes the same ones), each step equal to eager's."""
    sizes = (5, 7, 9, 6, 11, 8)
    r = np.random.default_rng(3)
    batches = [(dg.tensor(r.standard_normal((n, 6)).astype(np.float32)),
                dg.tensor(r.integers(0, 3, n))) for n in sizes]
    runs = []
    for compiled in (False, True):
        dg.manual_seed(0)
        model = _NormMLP()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        f = compiler.compile(step, backend="llvm") if compiled else step
        runs.append(([f(*batches[k % len(batches)]).item() for k in range(10)], f))
    (want, _), (got, f) = runs
    np.testing.assert_allclose(got, want, rtol=1e-5)
    served = [v for v in f.variants if v.calls]
    assert served and all(v.sym is not None for v in served), [v.sym for v in f.variants]
    assert all(v.trace.graph.recomputed for v in served)


class _Mnist(nn.Module):  # pytorch/examples' mnist layers, smaller
    def __init__(self, c1: int = 1) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c1, 4, 3), nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return F.log_softmax(self.fc(h.flatten(1)), dim=1)


def _train_mnist(c1: int, remat: bool, monkeypatch):
    if not remat:
        monkeypatch.setattr(pipeline, "rematerialise", lambda g: g)
    dg.manual_seed(0)
    model = _Mnist(c1)
    opt = optim.Adadelta(model.parameters(), lr=1.0)
    r = np.random.default_rng(2)
    x = dg.tensor(r.standard_normal((5, c1, 12, 12)).astype(np.float32))
    y = dg.tensor(r.integers(0, 3, 5))

    @compiler.compile(backend="llvm")
    def step(x, y):
        opt.zero_grad()
        loss = F.nll_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    losses = [step(x, y).item() for _ in range(4)]
    (v,) = [v for v in step.variants if v.calls]
    assert isinstance(v.plan, driver.DriverPlan)
    return losses, [p.detach().numpy().copy() for p in model.parameters()], v


def _recomputed_convs(g) -> list:
    return [n for n in g.nodes if n.out.id in g.recomputed and n.prim is P["conv"]]


def test_a_first_layer_convolution_is_computed_again_with_the_same_bits(monkeypatch):
    """conv1 (one input channel: 9 multiply-adds per element) is computed again for
    conv2's weight gradient and for its ReLU's mask, so neither its output nor the mask is
    kept across the step; the step's bits are those without the copies."""
    losses, state, v = _train_mnist(1, True, monkeypatch)
    g = v.trace.graph
    convs = _recomputed_convs(g)
    assert convs and all(traits(n.prim).recompute_work(n) <= WORK_MAX for n in convs)
    assert all(n.inputs[0] in g.inputs for n in convs)  # from the images, read again
    with monkeypatch.context() as m:
        losses0, state0, v0 = _train_mnist(1, False, m)
    assert not v0.trace.graph.recomputed
    assert losses == losses0
    for a, b in zip(state, state0, strict=True):
        assert np.array_equal(a, b)
    assert v.plan.memory.arena_bytes < v0.plan.memory.arena_bytes
    assert v.plan.memory.eager_peak_bytes == v0.plan.memory.eager_peak_bytes


def test_a_costly_convolution_is_not_computed_again(monkeypatch):
    """conv1 over four input channels (36 multiply-adds per element) stays as it is."""
    _, _, v = _train_mnist(4, True, monkeypatch)
    assert traits(P["conv"]).recompute_work is not None
    assert not _recomputed_convs(v.trace.graph)


def test_a_convolutions_weight_gradient_comes_before_its_input_gradient():
    """The weight gradient is the saved input's last reader: made first, that input dies
    before the input gradient is allocated (dyngrad/ops/conv.py's note)."""
    dg.manual_seed(0)
    model = _Mnist()
    x = dg.tensor(np.ones((2, 1, 12, 12), np.float32))

    @compiler.compile(backend="interp")
    def step(x):
        model.zero_grad()
        model(x).sum().backward()
        return model.conv2.weight.grad

    step(x)
    order = [n.prim.name for n in step.variants[0].trace.graph.nodes
             if n.prim.name in ("conv_weight_grad", "conv_transpose")]
    assert order[:2] == ["conv_weight_grad", "conv_transpose"], order


def test_views_made_before_the_copies_are_read_through_by_the_copies_kernel():
    """A broadcast of a per-row value made early in the schedule (an average pool's
    gradient spread over its window) and read by the kernel of the recomputed values: the
    views join that kernel (they compute nothing, so they move no copy earlier) instead of
    being materialised as a tensor of their own."""
    g = ir.Graph()
    x = g.add_input((4, 8), F32)
    s = g.add_input((1, 8), F32)
    p = g.add_input((4,), F32)
    d = _node(g, "exp", [x])
    y = _node(g, "mul", [d, s])
    m = _node(g, "le", [y, 0.0])
    r = _node(g, "where", [m, 0.0, y])
    q = _node(g, "mul", [p, 0.5])  # computed early, per row
    spread = _node(g, "broadcast", [_node(g, "reshape", [q], shape=(4, 1))], shape=(4, 8))
    t = _filler(g, _node(g, "mul", [r, 3.0]), GAP + 4)
    late = _node(g, "add", [_node(g, "add", [t, r]), spread])
    grad = _node(g, "where", [m, 0.0, late])
    g.outputs = [_node(g, "sum", [_node(g, "mul", [grad, d])], axes=(0, 1), keepdims=False)]
    ir.verify(g)
    g = rematerialise(g)
    assert g.recomputed
    groups = fuse(g)
    assert not [grp for grp in groups if grp.kind == "movement"], \
        [grp.describe() for grp in groups]
    at = {id(n.out): k for k, n in enumerate(g.nodes)}
    home = {i: k for k, grp in enumerate(groups) for i in grp.nodes}
    assert home[at[id(spread)]] == home[at[id(late)]]


def test_a_view_read_late_is_computed_again_with_the_value_under_it():
    """A linear layer's input folded to rows (``reshape``) is what its weight gradient reads
    in the backward: the view and the elementwise value under it are computed again there
    from values alive anyway, and the original dies at its forward reader."""
    g = ir.Graph()
    x = g.add_input((4, 6, 8), F32)
    s = g.add_input((4, 6, 8), F32)
    w = g.add_input((5, 8), F32)
    d = _node(g, "exp", [x])  # (alive until the end: the last product reads it)
    y = _node(g, "mul", [d, s])  # the value under the view
    rows = _node(g, "reshape", [y], shape=(24, 8))
    early = _node(g, "matmul", [rows, w], ta=False, tb=True)
    t = _filler(g, _node(g, "sum", [early], axes=(0, 1), keepdims=False), GAP + 4)
    late = _node(g, "matmul", [rows, rows], ta=True, tb=False)  # the late reader
    last = _node(g, "mul", [_node(g, "sum", [late], axes=(0, 1), keepdims=False), t])
    g.outputs = [last, _node(g, "sum", [d], axes=(0, 1, 2), keepdims=False)]
    ir.verify(g)
    g = rematerialise(g)
    ir.verify(g)
    copy = late.producer.inputs[0]
    assert copy is not rows and g.recomputed.get(copy.id) == rows.id
    assert g.recomputed.get(copy.producer.inputs[0].id) == y.id  # (the mul again)
    at = {id(n.out): k for k, n in enumerate(g.nodes)}
    assert all(at[id(x)] <= at[id(early)] for n in g.nodes for x in n.inputs
               if x is y or x is rows)  # (the originals: read only early)


def test_fusion_runs_no_copy_before_an_unrelated_kernel():
    """As above, with an unrelated stretch of work between the early reader and the copy's
    place: the kernel computing the copy may not start before it (it would compute the copy
    that much sooner, and hold what it makes across that work)."""
    g = ir.Graph()
    x = g.add_input((4, 8), F32)
    s = g.add_input((1, 8), F32)
    w = g.add_input((4, 8), F32)
    d = _node(g, "exp", [x])
    m = _node(g, "le", [_node(g, "mul", [d, s]), 0.0])
    r = _node(g, "where", [m, 0.0, _node(g, "mul", [d, s])])
    t = _filler(g, _node(g, "mul", [r, 3.0]), 4)
    z = _filler(g, w, GAP)  # unrelated to r, its copy and what reads them
    t = _filler(g, t, 4)
    late = _node(g, "add", [t, r])
    grad = _node(g, "where", [m, 0.0, late])
    total = _node(g, "add", [_node(g, "sum", [_node(g, "mul", [grad, d])], axes=(0, 1),
                                    keepdims=False),
                             _node(g, "sum", [z], axes=(0, 1), keepdims=False)])
    g.outputs = [total]
    ir.verify(g)
    g = rematerialise(g)
    assert g.recomputed, "nothing was computed again: the test tests nothing"
    first_copy = min(k for k, n in enumerate(g.nodes) if n.out.id in g.recomputed)
    unrelated = {k for k, n in enumerate(g.nodes) if n.prim.name == "tanh"
                 and k < first_copy and _reads_only_w(g, k, w)}
    assert unrelated
    for grp in fuse(g):
        if any(g.nodes[k].out.id in g.recomputed for k in grp.nodes):
            assert not set(range(min(grp.nodes), first_copy)) & unrelated, grp


def _reads_only_w(g, k, w) -> bool:
    """Whether node ``k`` is computed from input ``w`` alone."""
    stack, seen = [g.nodes[k].out], set()
    while stack:
        v = stack.pop()
        if v is w:
            continue
        if v.producer is None or id(v) in seen:
            if v.producer is None:
                return False
            continue
        seen.add(id(v))
        stack.extend(x for x in v.producer.inputs if isinstance(x, ir.Value))
    return True
