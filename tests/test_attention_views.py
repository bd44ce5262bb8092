"""Attention reading its operands as strided views (compiler/passes/views.py): the strides
of a chain of permute / reshape / slice, which chains the attention kernels take into their
own groups, and that compiled steps whose heads are views of a fused product equal eager
(over several calls, with the input gradients, in float32 and float64)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.ir import Graph
from compiler.passes.fusion import fuse, verify_groups
from compiler.passes.views import reshape_strides, row_view, strided
from dyngrad.ops import REGISTRY as P


def op(g: Graph, name: str, *inputs, **params):
    avals = [x.aval() if hasattr(x, "aval") else x for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], list(inputs), params, shape, dtype)


def numpy_view_strides(shape, strides, new):
    """numpy's answer (in elements), or None where numpy must copy."""
    base = np.lib.stride_tricks.as_strided(np.zeros(1 + sum((n - 1) * s for n, s in
                                                            zip(shape, strides)), np.float32),
                                           shape, tuple(4 * s for s in strides))
    try:
        view = base.view()
        view.shape = new  # (raises where a copy is needed)
    except AttributeError:
        return None
    return tuple(s // 4 for s in view.strides)


SHAPES = [((4, 6), (6, 1)), ((4, 6), (1, 4)), ((2, 3, 4), (24, 8, 2)), ((2, 3, 4), (4, 8, 1)),
          ((6, 1, 4), (4, 99, 1)), ((3, 4, 5), (60, 15, 3))]


@pytest.mark.parametrize("shape,strides", SHAPES)
def test_reshape_strides_agree_with_numpy(shape, strides):
    n = int(np.prod(shape))
    shapes = {(n,), (1, n)} | {(a, n // a) for a in range(1, n + 1) if n % a == 0} | \
        {(a, b, n // (a * b)) for a in range(1, n + 1) for b in range(1, n + 1)
         if n % (a * b) == 0}
    for new in sorted(shapes):
        want = numpy_view_strides(shape, strides, new)
        got = reshape_strides(shape, strides, new)
        if want is None:
            assert got is None, (shape, strides, new)
        else:  # (a dim of one may have any stride)
            assert got is not None, (shape, strides, new)
            assert all(a == b for a, b, m in zip(got, want, new) if m != 1), (new, got, want)


def test_a_head_split_is_a_strided_view_of_the_product():
    """nanoGPT's q: ``qkv[:, :, 0:C].reshape(B, T, H, E).permute(0, 2, 1, 3)`` and k, v."""
    B, T, H, E = 2, 5, 3, 4
    C = H * E
    g = Graph()
    qkv = g.add_input((B, T, 3 * C), dg.float32)
    for k in range(3):
        s = op(g, "slice", qkv, starts=(0, 0, k * C), stops=(B, T, (k + 1) * C), steps=(1, 1, 1))
        q = op(g, "permute", op(g, "reshape", s, shape=(B, T, H, E)), perm=(0, 2, 1, 3))
        base, offset, st = row_view(q, lambda n: True)
        assert base is qkv and offset == k * C and st == (T * 3 * C, E, 3 * C, 1)
    t = op(g, "permute", qkv, perm=(0, 2, 1))  # (rows not contiguous: no row view)
    assert row_view(t, lambda n: True) is None
    assert strided(t, lambda n: True)[2] == (T * 3 * C, 1, 3 * C)


def gpt_attention_step(dtype, heads=3, width=12, causal=True):
    """One attention block's training step as nanoGPT writes it (the fused qkv product, the
    head split by views, SDPA, the output's heads joined), with its parameters."""
    rng = np.random.default_rng(7)
    C = width
    w_attn = dg.tensor(rng.standard_normal((C, 3 * C)).astype(dtype) * 0.3, requires_grad=True)
    w_proj = dg.tensor(rng.standard_normal((C, C)).astype(dtype) * 0.3, requires_grad=True)

    def step(x):
        w_attn.grad = w_proj.grad = None
        x.grad = None
        B, T, _ = x.shape
        q, k, v = (x @ w_attn).split(C, dim=2)
        q, k, v = (t.reshape(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        y = y.transpose(1, 2).reshape(B, T, C) @ w_proj
        (y * y).sum().backward()
        return y.detach(), x.grad, w_attn.grad, w_proj.grad
    return step


@pytest.mark.parametrize("dtype,causal", [(np.float32, True), (np.float32, False),
                                          (np.float64, True)])
def test_attention_reading_views_equals_eager(dtype, causal):
    step = gpt_attention_step(dtype, causal=causal)
    rng = np.random.default_rng(8)
    xs = [dg.tensor(rng.standard_normal((2, 7, 12)).astype(dtype), requires_grad=True)
          for _ in range(3)]
    cf = compiler.compile(step, backend="llvm")
    tol = 2e-5 if dtype == np.float32 else 1e-11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in itertools.islice(itertools.cycle(xs), 6):
            got, want = cf(x), step(x)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=tol, atol=tol)
    v = cf.variants[0]
    assert v.plan.describe().startswith("all ")  # (one native call: nothing fell back)
    g = v.trace.graph
    groups = fuse(g)
    verify_groups(g, groups)
    attention = [grp for grp in groups if grp.kind == "window"]
    assert len(attention) == 2  # the forward and the backward
    for grp in attention:  # each reads the product's output itself: no head copies
        names = [g.nodes[i].prim.name for i in grp.nodes]
        assert names[-1].startswith("flash_attention") and "permute" in names
    heads = [grp for grp in groups if grp.kind == "movement" and
             {g.nodes[i].prim.name for i in grp.nodes} >= {"slice", "permute"} and
             g.nodes[grp.nodes[-1]].prim.name == "permute" and
             tuple(g.nodes[grp.nodes[-1]].out.shape) == (2, 3, 7, 4)]
    assert not heads  # (q, k and v are not copied out of the product)


def test_views_change_no_bit(monkeypatch):
    """The kernels read the same elements through strides as from copies: the step's
    results are the same bits with the views pass and without it."""
    from compiler import pipeline

    rng = np.random.default_rng(9)
    x = dg.tensor(rng.standard_normal((2, 7, 12)).astype(np.float32), requires_grad=True)
    results = []
    for views in (True, False):
        if not views:
            monkeypatch.setattr(pipeline, "attention_views", lambda g: g)
        step = gpt_attention_step(np.float32)
        cf = compiler.compile(step, backend="llvm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                out = cf(x)
        kinds = [grp.kind for grp in fuse(cf.variants[0].trace.graph)]
        results.append(([t.numpy().copy() for t in out], kinds.count("movement")))
    (with_views, fewer), (copies, more) = results
    assert fewer < more
    for a, b in zip(with_views, copies):
        assert a.tobytes() == b.tobytes()


def test_grouped_query_attention_with_copied_heads_stays_one_native_call():
    """Key and value heads repeated for the query heads (``enable_gqa``: a broadcast, then a
    reshape to the query's heads) reach attention through reshapes alone — an alias of the
    broadcast, nothing for the kernel to read as strides. Giving the forward and the
    backward a reshape each would put both in the broadcast's copy (a movement kernel of two
    outputs, which does not lower: the whole step in numpy)."""
    rng = np.random.default_rng(10)
    B, T, H, E = 2, 5, 2, 3
    w_q = dg.tensor(rng.standard_normal((H * E, H * E)).astype(np.float32), requires_grad=True)
    w_kv = dg.tensor(rng.standard_normal((H * E, 2 * E)).astype(np.float32), requires_grad=True)

    def step(x):
        w_q.grad = w_kv.grad = None
        q = (x @ w_q).reshape(B, T, H, E).transpose(1, 2)
        k, v = ((x @ w_kv).split(E, dim=-1))
        k, v = (t.reshape(B, T, 1, E).transpose(1, 2).contiguous() for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        (y * y).sum().backward()
        return y.detach(), w_q.grad, w_kv.grad

    x = dg.tensor(rng.standard_normal((B, T, H * E)).astype(np.float32))
    cf = compiler.compile(step, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            got, want = cf(x), step(x)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-5)
    assert cf.variants[0].plan.describe().startswith("all ")
