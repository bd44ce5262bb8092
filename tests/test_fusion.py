"""Fusion (compiler/passes/fusion.py): which nodes become one kernel.

Graphs come from tracing real dyngrad code (``compiler.compile(fn, backend="interp")``, then
``cf.variants[0].trace.graph``) or are built by hand. Every partition is checked with
``verify_groups``. The group counts asserted for the composites are what the rules give
today (the module docstring states the rules); a change that makes a count smaller is an
improvement — lower the bound.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.ir import Graph, Node, VerifyError, verify
from compiler.passes.fusion import FusionGroup, format_groups, fuse, verify_groups
from dyngrad.ops import REGISTRY as P

sys.path.insert(0, str(Path(__file__).parent))
from test_random_programs import Program  # noqa: E402

F32 = dg.float32
RNG = np.random.default_rng(0)


def randn(*shape, grad=False):
    return dg.tensor(RNG.standard_normal(shape).astype(np.float32), requires_grad=grad)


def traced(fn, *args):
    """The graph of ``fn``'s first variant (after the passes) and its checked fusion groups."""
    cf = compiler.compile(fn, backend="interp")
    cf(*args)
    g = cf.variants[0].trace.graph
    groups = fuse(g)
    verify_groups(g, groups)
    return g, groups


def op(g: Graph, name: str, *inputs, **params):
    """Add a node, its shape and dtype from the primitive's own shape rule."""
    avals = [1.0 if getattr(x, "weak", False) else x.aval() if hasattr(x, "aval") else x
             for x in inputs]  # (a weak scalar acts as a Python number, as in verify)
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], list(inputs), params, shape, dtype)


def scalar_op(g: Graph, name: str, *inputs):
    """Python-number arithmetic as the tracer records it (a weak float64 value)."""
    out = g.new_value((), dg.float64, weak=True)
    node = Node(P[name], list(inputs), {}, out)
    out.producer = node
    g.nodes.append(node)
    return out


def group_of(groups, g: Graph, value) -> FusionGroup:
    i = next(k for k, n in enumerate(g.nodes) if n.out is value)
    return next(grp for grp in groups if i in grp.nodes)


def prims(g: Graph, grp: FusionGroup) -> list:
    return [g.nodes[i].prim.name for i in grp.nodes]


def test_backward_values_are_not_computed_early_and_held():
    """A step with its backward inside: the backward's elementwise nodes may share a loop
    with the forward's (a loss and its gradient in one kernel) but a value computed there
    is never kept for a kernel far later — nanoGPT's GELU derivative, ``exp(-x²/2)``, used
    to be computed with the forward's ``erf`` and held until the backward (6 MB)."""
    from compiler.passes.fusion import HOLD_MAX
    x, w1, w2 = randn(64, 32), randn(32, 48, grad=True), randn(48, 48, grad=True)

    def step(x):
        h = F.gelu(F.gelu(x @ w1) @ w2)
        loss = (h * h).mean()
        loss.backward()
        return loss

    g, groups = traced(step, x)
    assert g.late and len(g.late) < len(g.nodes)
    users: dict = {}
    for k, n in enumerate(g.nodes):
        for v in n.value_inputs():
            users.setdefault(id(v), []).append(k)
    for grp in groups:
        early = [i for i in grp.nodes if g.nodes[i].out.id not in g.late]
        late = [i for i in grp.nodes if g.nodes[i].out.id in g.late]
        if not early or not late or grp.kind not in ("elementwise", "reduce"):
            continue
        for i in late:
            outside = [u for u in users.get(id(g.nodes[i].out), []) if u not in grp.nodes]
            assert all(u <= max(early) + HOLD_MAX for u in outside), format_groups([grp])


def test_a_copy_feeding_only_a_permute_joins_it():
    """Heads split from a fused qkv product (``slice → reshape → permute``, as nanoGPT
    writes them) are one movement kernel each, reading the product's output where it is;
    a chain whose values are read elsewhere too stays apart. Compiled equals eager."""
    x, w = randn(2, 5, 8), randn(8, 24)

    def heads(x):
        q, k, v = (x @ w).split(8, dim=2)
        q, k = (t.reshape(2, 5, 2, 4).transpose(1, 2) for t in (q, k))
        return q * 2.0, k * 3.0, v.reshape(2, 5, 2, 4).transpose(1, 2), v + 1.0

    g, groups = traced(heads, x)
    chains = [prims(g, grp) for grp in groups if grp.kind == "movement"]
    assert chains.count(["slice", "reshape", "permute"]) == 2, chains
    assert ["permute"] in chains  # v's slice is read by the add too: its own copy
    cf = compiler.compile(heads, backend="llvm")
    for _ in range(2):
        for got, want in zip(cf(x), heads(x)):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


# ------------------------------------------------------------------ elementwise chains


def ten_ops(x):
    """mul add tanh sigmoid mul neg mul exp sub sin: ten primitives."""
    return dg.sin(dg.tanh(x * 1.5 + 0.5) * dg.sigmoid(x) - dg.exp(-x * x))


def test_ten_op_chain_with_backward_inside_is_one_kernel():
    """Forward, the loss's sum and the whole backward share one loop over the (64, 32)
    input: a reduce group that also writes the gradient (the sum's cotangent is a constant,
    so the gradient does not depend on the reduction). At most 2 kernels was the goal."""
    x = randn(64, 32, grad=True)

    def step(x):
        loss = ten_ops(x).sum()
        loss.backward()
        return loss

    g, groups = traced(step, x)
    assert len(g.nodes) > 30  # the ten, the loss's sum and the backward of each
    assert len(groups) == 1
    (grp,) = groups
    assert (grp.kind, grp.shape, grp.axes) == ("reduce", (64, 32), (0, 1))
    assert {id(v) for v in grp.outputs} == {id(v) for v in g.outputs}  # loss and grad only
    assert grp.inputs == [g.inputs[0]]


def test_ten_op_chain_with_backward_outside_is_one_kernel_each_way():
    x = randn(64, 32, grad=True)
    cf = compiler.compile(lambda x: ten_ops(x).sum(), backend="interp")
    cf(x).backward()
    v = cf.variants[0]
    fwd, bwd = v.trace.graph, v.backward.parts.backward
    for g, kind in ((fwd, "reduce"), (bwd, "elementwise")):
        groups = fuse(g)
        verify_groups(g, groups)
        assert [grp.kind for grp in groups] == [kind]
    assert v.groups is None  # (the interpreter runs node by node: it fuses nothing)
    cf = compiler.compile(lambda x: ten_ops(x).sum(), backend="llvm")
    cf(x).backward()
    v = cf.variants[0]  # the LLVM executable runs the groups it made: one kernel each way
    assert [grp.kind for grp in v.groups] == ["reduce"]
    assert [grp.kind for grp in v.backward.plan.groups] == ["elementwise"]


def test_broadcasting_inputs_fuse_into_one_group():
    x, b, c = randn(64, 32), randn(32), randn(64, 1)
    g, groups = traced(lambda x, b, c: dg.exp(x + b) * c - b.expand(64, 32) / 2, x, b, c)
    assert len(groups) == 1
    (grp,) = groups
    assert (grp.kind, grp.shape) == ("elementwise", (64, 32))
    assert {id(v) for v in grp.inputs} == {id(v) for v in g.inputs}
    assert [v.shape for v in grp.outputs] == [(64, 32)]


def test_reshape_adding_unit_dims_fuses_but_a_real_reshape_is_a_boundary():
    g = Graph()
    x = g.add_input((64, 32), F32)
    t = op(g, "tanh", x)
    u = op(g, "reshape", t, shape=(64, 1, 32))  # same elements, same order
    e = op(g, "exp", u)
    flat = op(g, "reshape", e, shape=(2048,))  # another iteration space
    y = op(g, "mul", flat, 2.0)
    g.outputs = [y]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    assert [prims(g, grp) for grp in groups] == [["tanh", "reshape", "exp"], ["reshape", "mul"]]
    assert groups[0].outputs == [e] and groups[1].inputs == [e]


# ------------------------------------------------------------------ composites


def _fwd(f):
    def fn(*args):
        with dg.no_grad():
            return f(*args)
    return fn


def _fwd_bwd(f, gy):
    def fn(*args):
        y = f(*args)
        if y.ndim:
            y.backward(gy)
        else:
            y.backward()
        return y
    return fn


def _loss(f):
    def fn(*args):
        y = f(*args)
        loss = (y * y).sum()
        loss.backward()
        return loss
    return fn


X, GY, W, B = randn(64, 32, grad=True), randn(64, 32), randn(32, grad=True), randn(32, grad=True)
T, TARGET = randn(64, 32), dg.tensor(RNG.integers(0, 32, 64))

# name: (function, arguments, groups of: the forward; forward and backward driven by a
# given cotangent (or by the scalar loss itself); forward, loss = (y * y).sum(), backward)
COMPOSITES = {
    # max; sub exp sum div.  Backward: one row kernel (sum of g*y, then its epilogue).
    # With the loss: its sum over all axes, and the backward's row sum (it reads the
    # softmax, which depends on the first row sum) can join neither
    "softmax": (lambda x: F.softmax(x, -1), (X,), 2, 3, 4),
    # max; sub exp sum log sub.  The backward's sum(-g) is a sibling of the forward's sum
    "log_softmax": (lambda x: F.log_softmax(x, -1), (X,), 2, 2, 4),
    # mean; var + normalise/scale/shift.  Backward adds the sums over the batch (dw, db)
    # and dx's second row reduction (its first is a sibling of the variance's)
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (32,), w, b), (X, W, B), 2, 4, 6),
    # one loop: difference, square, sum, divide, and the gradient (an epilogue pass)
    "mse_loss": (lambda x, t: F.mse_loss(x, t), (X, T), 1, 1, 1),
    # 4 loop kernels + iota + a flattening view + the targets' bounds check (index_check:
    # compiled code checks them too) + gather; backward adds zeros, scatter_add and a 5th
    # loop kernel (the gradient's row reduction)
    "cross_entropy": (lambda x, t: F.cross_entropy(x, t), (X, TARGET), 9, 12, 12),
}


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_forward_and_backward_become_a_few_kernels(name):
    f, args, *bounds = COMPOSITES[name]
    for make, bound in zip((_fwd, lambda f: _fwd_bwd(f, GY), _loss), bounds):
        for a in args:
            a.grad = None
        _, groups = traced(make(f), *args)
        assert len(groups) <= bound, format_groups(groups)


def test_softmax_is_max_then_one_row_kernel():
    g, groups = traced(_fwd(lambda x: F.softmax(x, -1)), X)
    assert [prims(g, grp) for grp in groups] == [["max"], ["sub", "exp", "sum", "div"]]
    assert all((grp.kind, grp.shape, grp.axes) == ("reduce", (64, 32), (1,)) for grp in groups)
    assert groups[1].outputs == g.outputs  # exp is never stored


def test_layer_norm_variance_and_normalisation_share_a_kernel():
    g, groups = traced(_fwd(lambda x, w, b: F.layer_norm(x, (32,), w, b)), X, W, B)
    mean, rest = groups
    assert prims(g, mean) == ["sum", "size_of", "div"]
    # the variance's two sums (of e², and of e for its mean(e)² term: functional_norm's
    # centred_moments) are siblings in the normalisation's kernel
    assert prims(g, rest).count("sum") == 2 and prims(g, rest)[-1] == "add"
    assert rest.outputs == g.outputs


# ------------------------------------------------------------------ reduction rules


def test_epilogue_needs_the_reduced_values_broadcast_back_along_the_reduced_axes():
    """``x + s.reshape(32, 1)`` reads each row's own sum: one row kernel. ``x + s`` with the
    (32,) sum broadcast onto the *last* axis reads other rows' sums: two kernels."""
    def build(keep_axis: bool):
        g = Graph()
        x = g.add_input((32, 32), F32)
        s = op(g, "sum", x, axes=(1,), keepdims=False)
        s2 = op(g, "reshape", s, shape=(32, 1)) if keep_axis else s
        g.outputs = [op(g, "add", x, s2)]
        verify(g)
        groups = fuse(g)
        verify_groups(g, groups)
        return g, groups

    g, groups = build(True)
    assert [prims(g, grp) for grp in groups] == [["sum", "reshape", "add"]]
    g, groups = build(False)
    assert [prims(g, grp) for grp in groups] == [["sum"], ["add"]]
    assert groups[0].outputs == [g.nodes[0].out]


def test_chained_reductions_split_and_sibling_reductions_share_a_loop():
    g = Graph()
    x = g.add_input((16, 8), F32)
    sq = op(g, "mul", x, x)
    s1 = op(g, "sum", x, axes=(1,), keepdims=True)
    s2 = op(g, "sum", sq, axes=(1,), keepdims=True)  # a sibling: same loops, reads x too
    m = op(g, "max", op(g, "sub", x, s1), axes=(1,), keepdims=True)  # chained after s1
    g.outputs = [s2, m]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    assert [prims(g, grp) for grp in groups] == [["mul", "sum", "sum"], ["sub", "max"]]
    assert groups[0].outputs == [s1, s2]


def test_a_reduction_over_size_one_axes_is_elementwise():
    g = Graph()
    x = g.add_input((8, 1), F32)
    s = op(g, "sum", op(g, "exp", x), axes=(1,), keepdims=False)
    g.outputs = [op(g, "mul", s, op(g, "reshape", x, shape=(8,)))]
    groups = fuse(g)
    verify_groups(g, groups)
    assert [(grp.kind, len(grp.nodes)) for grp in groups] == [("elementwise", 4)]


def test_reductions_over_different_axes_are_different_kernels():
    g = Graph()
    x = g.add_input((16, 8), F32)
    e = op(g, "exp", x)
    g.outputs = [op(g, "sum", e, axes=(0,), keepdims=False),
                 op(g, "sum", e, axes=(1,), keepdims=False)]
    groups = fuse(g)
    verify_groups(g, groups)
    assert [(grp.kind, grp.axes) for grp in groups] == [("reduce", (0,)), ("reduce", (1,))]
    assert groups[0].outputs[0] is e  # shared: materialised once


# ------------------------------------------------------------------ outputs and boundaries


def test_a_value_used_by_two_groups_is_an_output_of_its_group():
    g = Graph()
    x, w = g.add_input((8, 4), F32), g.add_input((4, 4), F32)
    a = op(g, "tanh", x)
    b = op(g, "mul", a, 2.0)  # used only inside
    m = op(g, "matmul", a, w, ta=False, tb=False)  # its own group: reads a
    g.outputs = [op(g, "add", b, 1.0), m]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    ew = group_of(groups, g, a)
    assert ew.kind == "elementwise" and prims(g, ew) == ["tanh", "mul", "add"]
    assert a in ew.outputs and b not in ew.outputs
    assert group_of(groups, g, m).kind == "matmul"


def test_own_kinds_are_groups_of_their_own():
    g = Graph()
    x = g.add_input((4, 6), F32)
    t = op(g, "exp", x)
    p = op(g, "permute", t, perm=(1, 0))
    s = op(g, "slice", p, starts=(0, 0), stops=(6, 4), steps=(2, 1))
    c = op(g, "concat", s, s, axis=0)
    z = op(g, "iota", shape=(6, 4), axis=0, start=0, step=1, dtype=F32)
    g.outputs = [op(g, "add", c, op(g, "pad", z, pads=((0, 0, 0), (0, 0, 0)), value=0))]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    assert sorted(grp.kind for grp in groups) == sorted(
        ["elementwise", "movement", "movement", "creation", "movement",
         "elementwise"])  # (in an order the schedule chooses: Partition._schedule)
    # the stepped slice, read by the concat alone, is copied by the concat's kernel
    # (chain_movements); the permute before it stays a kernel of its own
    assert prims(g, group_of(groups, g, c)) == ["slice", "concat"]
    assert prims(g, group_of(groups, g, p)) == ["permute"]


def test_a_branch_needed_only_at_a_join_runs_just_before_it(monkeypatch):
    """A residual block's shortcut, written first but read only where the branches add: its
    kernel moves to just before that add (Partition._sink), so its output is not held while
    the other branch runs — fewer bytes alive at once. A kernel whose move would hold its
    inputs longer than it frees stays."""
    from compiler.passes import fusion
    from compiler.passes.memory import plan_memory
    g = Graph()
    x = g.add_input((64, 64), F32)
    ws = [g.add_input((64, 64), F32) for _ in range(4)]
    short = op(g, "matmul", x, ws[0])
    c = op(g, "exp", x)
    for w in ws[1:]:
        c = op(g, "matmul", op(g, "tanh", c), w)
    g.outputs = [op(g, "add", c, short)]
    verify(g)

    def schedule():
        groups = fuse(g)
        verify_groups(g, groups)
        steps = [0] * len(g.nodes)
        for t, grp in enumerate(groups):
            for k in grp.nodes:
                steps[k] = t
        plan = plan_memory(g, [v for grp in groups for v in grp.outputs], steps=steps)
        return [prims(g, grp) for grp in groups], plan.peak_live_bytes
    order, peak = schedule()
    assert order[-2:] == [["matmul"], ["add"]]
    assert order[0] != ["matmul"]  # (the shortcut's product, written first, runs last)
    monkeypatch.setattr(fusion._Partition, "_sink", lambda self, order, users: order)
    order_before, peak_before = schedule()
    assert order_before[0] == ["matmul"] and peak < peak_before


def test_a_kernel_moved_after_an_in_place_update_still_reads_the_old_value():
    """A value of a parameter made before ``opt.step()`` and read only after it: its kernel
    moves to just before its reader, after the update that overwrites the parameter — the
    driver then stages that write (``driver._direct_writes`` reads the kernels' order), so
    the moved kernel reads the old weights as eager does, call after call."""
    from dyngrad import nn, optim

    def build():
        dg.manual_seed(0)
        lin = nn.Linear(8, 8)
        opt = optim.SGD(lin.parameters(), lr=0.5)
        v = dg.tensor(np.eye(8, dtype=np.float32))

        def step(x):
            opt.zero_grad()
            loss = lin(x).sum()
            loss.backward()
            s = lin.weight * 2.0  # the old weights
            opt.step()
            return loss, s @ v  # read after the update
        return lin, step
    x = randn(4, 8)
    (lin_e, eager), (lin_c, step) = build(), build()
    cf = compiler.compile(step, backend="llvm")
    for _ in range(4):
        (le, se), (lc, sc) = eager(x), cf(x)
        np.testing.assert_allclose(lc.detach().numpy(), le.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(sc.detach().numpy(), se.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(lin_c.weight.detach().numpy(), lin_e.weight.detach().numpy(),
                                   rtol=1e-6)
    v = cf.variants[0]
    kernels = [prims(v.plan.g, grp) for grp in v.plan.groups]
    # the weight's update (w + (-lr)·g) before the product's operand (w·2), which moved
    assert kernels.index(["mul"]) > kernels.index(["mul", "add"]), kernels


def test_a_map_of_an_input_read_by_two_groups_is_a_view_group():
    g = Graph()
    x, w = g.add_input((8, 4), F32), g.add_input((4,), F32)
    wb = op(g, "broadcast", w, shape=(8, 4))
    y = op(g, "mul", x, wb)
    g.outputs = [op(g, "sum", wb, axes=(0, 1), keepdims=False), op(g, "max", y, axes=(0,),
                                                                     keepdims=False)]
    groups = fuse(g)
    verify_groups(g, groups)
    view = group_of(groups, g, wb)
    assert (view.kind, prims(g, view), view.outputs) == ("movement", ["broadcast"], [wb])


def test_value_guards_split_groups():
    x = randn(64, 32)

    def f(x):
        y = dg.exp(x) * 0.5
        z = y * 2.0 + 1.0 if y.sum() > 0 else y - 1.0
        return z

    g, groups = traced(f, x)
    (guard,) = g.guards
    assert len(groups) == 2
    before, after = groups
    assert max(before.nodes) < guard.after <= min(after.nodes)
    assert guard.value in before.outputs and (before.segment, after.segment) == (0, 1)
    assert "guard" not in format_groups(groups)  # groups only; guards live on the graph


def test_a_guard_in_the_middle_of_a_chain_cuts_it():
    def build(with_guard: bool):
        g = Graph()
        x = g.add_input((8,), F32)
        e = op(g, "exp", x)
        s = op(g, "sum", e, axes=(0,), keepdims=False)
        if with_guard:
            g.add_guard(op(g, "gt", s, 0.0), True, "bool")
        g.outputs = [op(g, "mul", e, 3.0)]
        verify(g)
        groups = fuse(g)
        verify_groups(g, groups)
        return g, groups

    g, groups = build(False)
    assert [prims(g, grp) for grp in groups] == [["exp", "sum", "mul"]]
    g, groups = build(True)
    assert [prims(g, grp) for grp in groups] == [["exp", "sum", "gt"], ["mul"]]


def test_weak_scalars_join_their_one_user_or_form_a_scalar_group():
    g = Graph()
    x = g.add_input((8,), F32)
    lr = g.add_scalar("lr")
    half = scalar_op(g, "mul", lr, 0.5)  # used by one group: computed at its entry
    twice = scalar_op(g, "mul", lr, 2.0)  # used by two groups
    a = op(g, "mul", x, half)
    b = op(g, "sum", op(g, "mul", a, twice), axes=(0,), keepdims=False)
    c = op(g, "matmul", op(g, "reshape", x, shape=(1, 8)), op(g, "reshape", x, shape=(8, 1)),
           ta=False, tb=False)
    g.outputs = [b, op(g, "mul", c, twice)]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    assert group_of(groups, g, half) is group_of(groups, g, a)
    scalar = group_of(groups, g, twice)
    assert (scalar.kind, scalar.outputs) == ("scalar", [twice])


# ------------------------------------------------------------------ the checker


def test_verify_groups_rejects_broken_partitions():
    x = randn(16, 8)
    g, groups = traced(_fwd(lambda x: F.softmax(x, -1)), x)
    first, second = groups

    def broken(**changes):
        return [FusionGroup(**{**vars(first), **changes}), second]

    with pytest.raises(VerifyError, match="in no group"):
        verify_groups(g, [second])
    with pytest.raises(VerifyError, match="later group"):
        verify_groups(g, [second, first])
    with pytest.raises(VerifyError, match="used outside"):
        verify_groups(g, broken(outputs=[]))  # the max is read by the second group
    with pytest.raises(VerifyError, match="in groups"):
        verify_groups(g, broken(nodes=[0, 1]))
    with pytest.raises(VerifyError, match="inputs"):
        verify_groups(g, broken(inputs=[]))
    with pytest.raises(VerifyError, match="not one loop nest"):
        verify_groups(g, broken(shape=(8, 16)))
    with pytest.raises(VerifyError, match="cannot share one"):  # max then its chained sum
        verify_groups(g, [FusionGroup("reduce", [0, 1, 2, 3, 4], [g.inputs[0]], g.outputs,
                                      (16, 8), (1,))])


def test_fuse_does_not_change_the_graph():
    g, _ = traced(_fwd_bwd(lambda x: F.log_softmax(x, -1), GY), randn(64, 32, grad=True))
    before = str(g)
    fuse(g)
    assert str(g) == before


@pytest.mark.parametrize("seeds", [range(k, k + 50) for k in range(0, 200, 50)],
                         ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_groups_verify_on_random_programs(seeds):
    """The random-program generator's graphs (reductions over random axes, movement, matmul,
    index ops, in-place updates, value guards after write-backs) partition legally, forward
    and backward parts alike. (Seed 188 once made a cycle of groups.)"""
    for s in seeds:
        prog = Program(s)
        leaves = [dg.tensor(np.random.default_rng(s).standard_normal(shape), dtype=dg.float64,
                            requires_grad=True) for shape in prog.shapes]
        captured = [x if c else None for x, c in zip(leaves, prog.captured)]
        cf = compiler.compile(prog.function(captured), backend="interp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cf(*[x for x, c in zip(leaves, prog.captured) if not c])
        for v in cf.variants:
            graphs = [v.trace.graph] + ([v.backward.parts.backward] if v.backward else [])
            for g in graphs:
                try:
                    verify_groups(g, fuse(g))
                except VerifyError as exc:
                    raise AssertionError(f"{exc}\n{prog.listing()}\n{g}") from None


# ------------------------------------------------------------------ explain


def test_explain_lists_the_groups():
    x = randn(16, 8, grad=True)

    def step(x):
        loss = (F.softmax(x, -1) * 3.0).sum()
        loss.backward()
        return loss

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        compiler.explain(compiler.compile(step, backend="llvm"), x)
    text = out.getvalue()
    assert "fusion groups (" in text  # (the LLVM executable's: the interpreter fuses none)
    assert "group 0 [reduce 16x8 axes (1,)] nodes 0 in %0 out %1" in text


def test_elementwise_siblings_reading_one_value_share_a_kernel():
    """(5b) two elementwise groups over the same loops that read one value (each feeding a
    product of its own) are one kernel reading it once; compiled equals eager over calls."""
    g = Graph()
    x, w = g.add_input((8, 4), F32), g.add_input((4, 4), F32)
    a, b = op(g, "tanh", x), op(g, "exp", x)
    g.outputs = [op(g, "matmul", a, w, ta=False, tb=False),
                 op(g, "matmul", b, w, ta=False, tb=False)]
    verify(g)
    groups = fuse(g)
    verify_groups(g, groups)
    shared = group_of(groups, g, a)
    assert shared is group_of(groups, g, b) and sorted(prims(g, shared)) == ["exp", "tanh"]
    assert [id(v) for v in shared.inputs] == [id(x)]

    def step(x, w):
        return x.tanh() @ w, x.exp() @ w
    cf = compiler.compile(step, backend="llvm")
    for _ in range(3):
        xs, ws = randn(8, 4), randn(4, 4)
        for got, want in zip(cf(xs, ws), step(xs, ws)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_a_kernel_reading_a_value_last_runs_beside_its_other_reader(monkeypatch):
    """``h.sum()`` reads the product ``h`` last and writes one number: it runs right after
    the ReLU that also reads ``h`` (``_hoist``), not after an unrelated product, so ``h``
    dies before that product's output is born — fewer bytes alive at once, the same
    results."""
    rng = np.random.default_rng(0)
    w1, w2, w3 = (dg.tensor(rng.standard_normal(s).astype(np.float32))
                  for s in ((64, 256), (256, 64), (64, 512)))
    x = dg.tensor(rng.standard_normal((128, 64)).astype(np.float32))

    def f(x):
        h = x @ w1
        u = h.relu() @ w2
        v = (x @ w3).exp()
        return u.sum() + v.sum() + h.sum()

    def planned():
        cf = compiler.compile(f, backend="llvm")
        for _ in range(2):
            got = cf(x)
        np.testing.assert_allclose(got.item(), f(x).item(), rtol=1e-5)
        v = cf.variants[0]
        verify_groups(v.trace.graph, v.plan.groups)
        return v.plan.groups, v.plan.memory

    groups, memory = planned()
    kinds = [(grp.kind, grp.shape) for grp in groups]
    assert kinds.index(("reduce", (128, 256))) < kinds.index(("matmul", (128, 512))), kinds
    from compiler.passes import fusion
    monkeypatch.setattr(fusion._Partition, "_hoist", lambda self, order, *rest: order)
    groups0, memory0 = planned()
    kinds0 = [(grp.kind, grp.shape) for grp in groups0]
    assert kinds0.index(("reduce", (128, 256))) > kinds0.index(("matmul", (128, 512)))
    assert memory.peak_live_bytes < memory0.peak_live_bytes


def test_gelus_backward_is_one_kernel_with_what_it_computes_again():
    """nanoGPT's MLP (W8's quick form): each layer's GELU backward — the derivative from its
    pre-activation, the gradient's product and sum, and the GELU computed again for the
    projection's weight gradient — is one kernel beside the forward's one: the derivative,
    a value computed again for the backward (``Graph.recomputed``), joins the kernel of the
    product before it (``_below_floor``: nothing else runs between)."""
    from benchmarks.measure import Runner
    from benchmarks.workloads import WORKLOADS
    inst = WORKLOADS["W8"].build(True)
    cf = compiler.compile(inst.step, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Runner(inst.runnable(cf), inst.calls).run(3)
    (v,) = cf.variants
    g = v.trace.graph
    shape = next(tuple(grp.shape) for grp in v.plan.groups if any(
        g.nodes[k].prim.name == "erf" for k in grp.nodes))
    hidden = [grp for grp in v.plan.groups
              if grp.kind == "elementwise" and tuple(grp.shape) == shape]
    layers = inst.model.config.n_layer
    assert len(hidden) == 2 * layers, [[g.nodes[k].prim.name for k in grp.nodes]
                                       for grp in hidden]
