"""Slices' padded gradients joined into one concat (compiler/passes/pads.py): which sums it
rewrites, that the rewrite is exact bit for bit (signed zeros and NaN included) on both
backends, and that a compiled step splitting a tensor equals eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends import interp
from compiler.backends.llvm import runner
from compiler.ir import Graph, verify
from compiler.passes import dce, pads_to_concat
from dyngrad.ops import REGISTRY as P

F32, I64 = dg.float32, dg.int64


def op(g: Graph, name: str, *inputs, **params):
    avals = [x.aval() if hasattr(x, "aval") else x for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], list(inputs), params, shape, dtype)


def pad_axis(g, x, axis, lo, hi):
    pads = [(0, 0, 0)] * len(x.shape)
    pads[axis] = (lo, hi, 0)
    return op(g, "pad", x, pads=tuple(pads), value=0)


def split_sum(dtype=F32, sizes=(2, 3, 4), axis=1, order=(2, 0, 1), extra=(0, 0)):
    """A graph summing the pads of pieces of ``sizes`` along ``axis`` (adds in ``order``),
    the pieces tiling ``[extra[0], extra[0] + sum(sizes))`` of a width with ``extra``
    zeros around: the gradient a split leaves."""
    g = Graph()
    width = sum(sizes) + sum(extra)
    ins, padded, at = [], [], extra[0]
    for s in sizes:
        shape = [3, 5]
        shape[axis] = s
        x = g.add_input(tuple(shape), dtype)
        ins.append(x)
        padded.append(pad_axis(g, x, axis, at, width - at - s))
        at += s
    total = padded[order[0]]
    for k in order[1:]:
        total = op(g, "add", total, padded[k])
    g.outputs = [total]
    verify(g)
    return g, ins


def rewritten(g: Graph) -> Graph:
    """``g`` after the pass (and dead code dropped) — ``g`` itself, changed."""
    out = dce(pads_to_concat(g))
    verify(out)
    return out


def arrays(ins, rng, special=True):
    out = []
    for v in ins:
        a = rng.standard_normal(v.shape).astype(v.dtype.name)
        if special and a.dtype.kind == "f":
            a.flat[0], a.flat[-1] = -0.0, np.nan
            if a.size > 2:
                a.flat[1] = 0.0
        out.append(a)
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("extra", [(0, 0), (1, 2)])
def test_a_sum_of_disjoint_pads_is_one_concat_bit_for_bit(order, extra):
    g, ins = split_sum(order=order, extra=extra)
    h, h_ins = split_sum(order=order, extra=extra)
    h = rewritten(h)
    names = [n.prim.name for n in h.nodes]
    assert names == (["concat"] if extra == (0, 0) else ["concat", "pad"])
    concat = h.nodes[0]
    assert [id(x) for x in concat.inputs] == [id(x) for x in h_ins]  # (in axis order)
    assert concat.params == {"axis": 1, "plus_zero": True}
    xs = arrays(ins, np.random.default_rng(1))
    want = interp.compile_graph(g).run(xs, [])[0]
    assert np.signbit(want.flat[0]) == 0  # (eager's sum: -0.0 + 0.0 is +0.0)
    for run in (interp.compile_graph(h), runner.compile_graph(h)):
        assert same_bits(run.run(xs, [])[0], want)


def test_plus_zero_is_what_keeps_the_sign_of_zero():
    """Without ``plus_zero`` the concat would keep a piece's -0.0, which the sum does not."""
    g, ins = split_sum()
    h = rewritten(split_sum()[0])
    h.nodes[0].params = {**h.nodes[0].params, "plus_zero": False}
    xs = arrays(ins, np.random.default_rng(2))
    assert np.signbit(interp.compile_graph(h).run(xs, [])[0].flat[0])
    assert not np.signbit(interp.compile_graph(g).run(xs, [])[0].flat[0])


def test_integers_join_without_adding_zero():
    g, ins = split_sum(dtype=I64)
    h = rewritten(split_sum(dtype=I64)[0])
    assert h.nodes[0].params["plus_zero"] is False
    xs = arrays(ins, np.random.default_rng(3))
    assert same_bits(interp.compile_graph(h).run(xs, [])[0],
                     interp.compile_graph(g).run(xs, [])[0])


def test_sums_that_are_not_one_concat_stay_as_they_are():
    def unchanged(g):
        names = [n.prim.name for n in g.nodes]
        assert [n.prim.name for n in rewritten(g).nodes] == names

    g = Graph()  # overlapping supports
    a, b = g.add_input((3, 4), F32), g.add_input((3, 4), F32)
    g.outputs = [op(g, "add", pad_axis(g, a, 1, 0, 2), pad_axis(g, b, 1, 1, 1))]
    unchanged(g)
    g = Graph()  # the same support twice (a sum of two gradients of one slice)
    a, b = g.add_input((3, 4), F32), g.add_input((3, 4), F32)
    g.outputs = [op(g, "add", pad_axis(g, a, 1, 1, 1), pad_axis(g, b, 1, 1, 1))]
    unchanged(g)
    g = Graph()  # a gap between the pieces
    a, b = g.add_input((3, 2), F32), g.add_input((3, 2), F32)
    g.outputs = [op(g, "add", pad_axis(g, a, 1, 0, 3), pad_axis(g, b, 1, 3, 0))]
    unchanged(g)
    g = Graph()  # two axes
    a, b = g.add_input((3, 2), F32), g.add_input((2, 5), F32)
    g.outputs = [op(g, "add", pad_axis(g, a, 1, 0, 3), pad_axis(g, b, 0, 1, 0))]
    unchanged(g)
    g = Graph()  # a pad of another value
    a, b = g.add_input((3, 2), F32), g.add_input((3, 3), F32)
    g.outputs = [op(g, "add", op(g, "pad", a, pads=((0, 0, 0), (0, 3, 0)), value=1.0),
                    pad_axis(g, b, 1, 2, 0))]
    unchanged(g)
    g = Graph()  # an inner sum read elsewhere too: it is joined, the outer sum stays
    a, b, c = (g.add_input((3, 1), F32) for _ in range(3))
    inner = op(g, "add", pad_axis(g, a, 1, 0, 2), pad_axis(g, b, 1, 1, 1))
    g.outputs = [op(g, "add", inner, pad_axis(g, c, 1, 2, 0)), inner]
    assert [n.prim.name for n in rewritten(g).nodes] == ["concat", "pad", "pad", "add"]
    g = Graph()  # a term that is not a pad
    a, b = g.add_input((3, 2), F32), g.add_input((3, 4), F32)
    g.outputs = [op(g, "add", pad_axis(g, a, 1, 0, 2), b)]
    unchanged(g)


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_a_compiled_split_equals_eager_bit_for_bit(backend):
    """nanoGPT's ``q, k, v = qkv.split(n_embd, dim=2)``: the compiled gradient is one concat
    and equals eager's over several calls — bit for bit where the arithmetic is eager's, a
    piece whose gradient is -0.0 (times -0.0) included — and the split input is untouched."""
    rng = np.random.default_rng(4)
    x = dg.tensor(rng.standard_normal((4, 6, 24)).astype(np.float32), requires_grad=True)
    w = dg.tensor(rng.standard_normal((4, 6, 8)).astype(np.float32))
    before = x.detach().numpy().copy()

    def step(x, w):
        x.grad = None
        q, k, v = x.split(8, dim=2)
        ((q * w).tanh().sum() + (k * -0.0).sum() + (v * v).sum()).backward()
        return x.grad

    cf = compiler.compile(step, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = [cf(x, w).numpy().copy() for _ in range(4)]
    want = step(x, w).numpy()
    assert (np.signbit(want[..., 8:16]) == 0).all()
    for o in outs:
        if backend == "interp":  # (eager's order, bit for bit)
            assert same_bits(o, want)
        else:  # (tanh's derivative: vector math, to rounding; the other pieces exact)
            np.testing.assert_allclose(o, want, rtol=1e-5, atol=1e-6)
            assert same_bits(o[..., 8:], want[..., 8:])
    assert same_bits(x.detach().numpy(), before)
    graph = cf.variants[0].trace.graph
    names = [n.prim.name for n in graph.nodes]
    assert "concat" in names and "pad" not in names


def attention_backward_graph(causal: bool):
    """``flash_attention_backward`` given its output gradient padded with a zero logsumexp
    column, as the vjp of the output's slice makes it; the arrays to run it on."""
    rng = np.random.default_rng(5)
    B, L, S, E = 3, 7, 9 if not causal else 7, 5
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in
               ((B, L, E), (B, S, E), (B, S, E)))
    params = {"scale": 0.4, "causal": causal}
    o = P["flash_attention"].impl(q, k, v, **params)
    dy = rng.standard_normal((B, L, E)).astype(np.float32)
    dy.flat[0] = -0.0
    g = Graph()
    xs = [g.add_input(a.shape, F32) for a in (q, k, v, o, dy)]
    do = pad_axis(g, xs[4], 2, 0, 1)
    g.outputs = [op(g, "flash_attention_backward", *xs[:4], do, **params)]
    verify(g)
    return g, [q, k, v, o, dy]


@pytest.mark.parametrize("causal", [False, True])
def test_the_attention_backward_reads_its_output_gradient_unpadded(causal):
    g, arrays_ = attention_backward_graph(causal)
    h = rewritten(attention_backward_graph(causal)[0])
    assert [n.prim.name for n in h.nodes] == ["flash_attention_backward"]
    assert h.nodes[0].inputs[4] is h.inputs[4]
    for build in (interp.compile_graph, runner.compile_graph):
        assert same_bits(build(h).run(arrays_, [])[0], build(g).run(arrays_, [])[0])


def test_the_attention_backward_names_a_wrong_output_gradient():
    g, _ = attention_backward_graph(False)
    q, k, v, o, dy = (x.aval() for x in g.inputs)
    bad = dg.ops.primitive.AbstractValue((3, 7, 4), F32)
    with pytest.raises(RuntimeError, match=r"flash_attention_backward: expected the output "
                       r"of shape \[3, 7, 6\] and its gradient .* got \[3, 7, 6\] and "
                       r"\[3, 7, 4\]"):
        P["flash_attention_backward"].shape(q, k, v, o, bad, scale=1.0, causal=False)


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_a_sum_of_pads_by_negative_zero_keeps_its_signed_zeros(backend):
    """Pads by -0.0 sum to the pieces as they are (-0.0 + -0.0 is -0.0) and to -0.0 around
    them: not the concat with ``plus_zero``, which gives +0.0 there."""
    import dyngrad.nn.functional as F

    def f(a, b):
        return F.pad(a, (0, 2), value=-0.0) + F.pad(b, (2, 0), value=-0.0)

    a = dg.tensor(np.array([[-0.0, 1.0]], np.float32))
    b = dg.tensor(np.array([[2.0, -0.0]], np.float32))
    want = f(a, b).numpy()
    assert np.signbit(want).tolist() == [[True, False, False, True]]
    cf = compiler.compile(f, backend=backend)
    for _ in range(3):
        assert same_bits(cf(a, b).numpy(), want)


@pytest.mark.parametrize("dtype,lead,L,S,E,Ev", [(np.float32, (2, 3), 5, 1, 4, 4),
                                                (np.float64, (3, 2), 7, 3, 6, 1)])
def test_attention_with_one_key_or_one_value_column_compiles_to_eager_bits(dtype, lead, L, S,
                                                                           E, Ev):
    """The interpreter's backward reading the output's gradient unpadded computes what eager's
    reads padded, bit for bit — also where numpy's products take another path for one key
    or one value column (a matrix-vector product), which depends on the operand's layout."""
    import dyngrad.nn.functional as F

    rng = np.random.default_rng(6)
    q, k, v = (dg.tensor(rng.standard_normal(lead + s).astype(dtype), requires_grad=True)
               for s in ((L, E), (S, E), (S, Ev)))
    w = dg.tensor(rng.standard_normal(lead + (L, Ev)).astype(dtype))

    def step(q, k, v):
        q.grad = k.grad = v.grad = None
        (F.scaled_dot_product_attention(q, k, v) * w).sum().backward()
        return q.grad, k.grad, v.grad

    want = [t.numpy().copy() for t in step(q, k, v)]
    cf = compiler.compile(step, backend="interp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            for got, exp in zip(cf(q, k, v), want, strict=True):
                assert same_bits(got.numpy(), exp)
