"""LLVM codegen of elementwise fusion groups (compiler/backends/llvm/codegen.py) against the
numpy oracle: every node's own primitive ``impl`` (what the interpreter runs).

Exact equality for IEEE-exact operations (no fast-math); the vecmath functions within their
documented ulp bounds (vecmath.MAX_ULPS), measured against a float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import jit, vecmath
from compiler.backends.llvm.codegen import elementwise_kernel, run_group
from compiler.ir import Graph, Value
from compiler.passes.fusion import FusionGroup, fuse, verify_groups
from dyngrad.ops import REGISTRY as P

F32 = dg.float32
RNG = np.random.default_rng(0)


def randf(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def op(g: Graph, name: str, *inputs, **params) -> Value:
    avals = [x.aval() if isinstance(x, Value) else x for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], list(inputs), params, shape, dtype)


def evaluate(g: Graph, feeds: dict) -> dict:
    """id(value) -> array for every value, running each primitive's impl (the oracle)."""
    env = dict(feeds)
    for n in g.nodes:
        args = [env[id(x)] if isinstance(x, Value) and x.const is None
                else x.const if isinstance(x, Value) else x for x in n.inputs]
        env[id(n.out)] = np.asarray(n.prim.impl(*args, **n.params))
    return env


def whole_group(g: Graph) -> FusionGroup:
    """All of a hand-built graph as one elementwise group (checked against fuse)."""
    g.outputs = [g.nodes[-1].out]
    groups = fuse(g)
    verify_groups(g, groups)
    assert len(groups) == 1 and groups[0].kind == "elementwise", groups
    return groups[0]


def check_groups(g: Graph, groups: list, env: dict, ulps: float = 0.0) -> int:
    """Run every elementwise group natively on the oracle's inputs; compare outputs."""
    ran = 0
    for grp in groups:
        if grp.kind != "elementwise":
            continue
        ins = [env[id(v)] if v.const is None else v.const for v in grp.inputs]
        outs = run_group(g, grp, ins)
        for v, got in zip(grp.outputs, outs):
            want = env[id(v)]
            assert got.shape == want.shape and got.dtype == want.dtype
            if ulps == 0.0:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=ulps * 2.0**-23, atol=1e-30)
        ran += 1
    return ran


def ulp_error(got: np.ndarray, ref64: np.ndarray) -> float:
    """Max error in float32 ulps at the float64 reference (as vecmath's tests measure)."""
    ref = ref64.astype(np.float64)
    ok = np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    _, e = np.frexp(np.abs(ref[ok]).astype(np.float32))
    ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
    return float(np.max(np.abs(got[ok].astype(np.float64) - ref[ok]) / ulp, initial=0.0))


# ------------------------------------------------------------------ exact operations

@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "maximum", "minimum",
                                  "eq", "ne", "lt", "le", "gt", "ge"])
def test_binary_exact(name):
    g = Graph()
    a, b = g.add_input((7, 33), F32), g.add_input((7, 33), F32)
    op(g, name, a, b)
    grp = whole_group(g)
    x, y = randf(7, 33), randf(7, 33)
    y[0, :5] = x[0, :5]  # ties for comparisons
    x[1, 0], y[1, 1], x[1, 2], y[1, 2] = np.nan, np.nan, np.inf, -np.inf
    env = evaluate(g, {id(a): x, id(b): y})
    assert check_groups(g, [grp], env) == 1


@pytest.mark.parametrize("dtype", [F32, dg.float64])
@pytest.mark.parametrize("name", ["neg", "abs", "sqrt", "sign", "floor", "ceil", "round"])
def test_unary_exact(name, dtype):
    g = Graph()
    a = g.add_input((100,), dtype)
    op(g, name, a)
    x = (randf(100) * 4).astype(dtype.np)
    x[:3] = [np.nan, -np.inf, -0.0]
    x[3:11] = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.3, 0.49999997]  # halves go to even
    env = evaluate(g, {id(a): x})
    assert check_groups(g, [whole_group(g)], env) == 1


@pytest.mark.parametrize("dtype", [F32, dg.float64])
@pytest.mark.parametrize("exponent", [2.0, 0.5, -1.0, 1.0, 0.0])
def test_pow_by_exact_literals_matches_numpy_bit_for_bit(exponent, dtype):
    g = Graph()
    a = g.add_input((50,), dtype)
    op(g, "pow", a, exponent)
    x = RNG.standard_normal(50).astype(dtype.np)
    x[:5] = [np.nan, -np.inf, -0.0, 0.0, np.inf]
    env = evaluate(g, {id(a): x})
    assert check_groups(g, [whole_group(g)], env) == 1


@pytest.mark.parametrize("dtype", [F32, dg.float64])
def test_pow_by_other_exponents_and_by_tensors_calls_vecmath64s_pow(dtype):
    g = Graph()
    a = g.add_input((100,), dtype)  # (a group of at most _LIBM_MAX elements may call libm)
    b = g.add_input((100,), dtype)
    # (the product's rounding is the one more, and both factors are within an ulp)
    op(g, "mul", op(g, "pow", a, 3.0), op(g, "pow", op(g, "abs", a), b))
    assert "@dg_pow64" in elementwise_kernel(g, whole_group(g))[0]
    x = (RNG.standard_normal(100) * 3).astype(dtype.np)
    y = (RNG.standard_normal(100) * 3).astype(dtype.np)
    env = evaluate(g, {id(a): x, id(b): y})
    assert check_groups(g, [whole_group(g)], env, ulps=3.0) == 1


def test_float64_arithmetic_and_casts_match_numpy_bit_for_bit():
    g = Graph()
    a, b = g.add_input((9, 13), dg.float64), g.add_input((9, 13), F32)
    c = op(g, "cast", b, dtype=dg.float64)
    d = op(g, "div", op(g, "sub", op(g, "mul", a, c), 0.1), op(g, "abs", a))
    op(g, "cast", op(g, "maximum", d, op(g, "sqrt", op(g, "abs", c))), dtype=F32)
    x, y = RNG.standard_normal((9, 13)), randf(9, 13)
    x[0, 0] = np.nan
    env = evaluate(g, {id(a): x, id(b): y})
    assert check_groups(g, [whole_group(g)], env) == 1


def test_where_cast_and_literals():
    g = Graph()
    a, b = g.add_input((5, 8), F32), g.add_input((5, 8), F32)
    c = op(g, "lt", a, 0.25)
    w = op(g, "where", c, op(g, "mul", a, 3.0), op(g, "sub", 1.5, b))
    e = op(g, "eq", c, op(g, "ge", b, 0.0))  # bool == bool
    op(g, "where", e, op(g, "cast", w, dtype=F32), -2.0)
    x, y = randf(5, 8), randf(5, 8)
    env = evaluate(g, {id(a): x, id(b): y})
    assert check_groups(g, [whole_group(g)], env) == 1


def test_broadcast_row_column_scalar():
    m, n = 37, 129
    g = Graph()
    r, c, s = g.add_input((1, n), F32), g.add_input((m, 1), F32), g.add_input((), F32)
    t = op(g, "mul", op(g, "add", r, c), s)
    op(g, "maximum", op(g, "sub", t, c), r)
    grp = whole_group(g)
    assert grp.shape == (m, n)
    text, _, layout = elementwise_kernel(g, grp)
    # rows x columns: the row input is read at the inner index, the column one at the outer
    assert "%o = phi" in text and "udiv" not in text
    assert [v.id for v in layout[:3]] == [r.id, c.id, s.id]
    env = evaluate(g, {id(r): randf(1, n), id(c): randf(m, 1), id(s): np.float32(1.7)})
    assert check_groups(g, [grp], env) == 1


def test_general_broadcast_3d():
    """A middle-dim input needs div and rem; a trailing one only rem."""
    g = Graph()
    a, b = g.add_input((4, 1, 6), F32), g.add_input((5, 1), F32)
    d = g.add_input((4, 5, 6), F32)
    op(g, "div", op(g, "add", a, b), op(g, "add", d, 3.0))
    env = evaluate(g, {id(a): randf(4, 1, 6), id(b): randf(5, 1), id(d): randf(4, 5, 6)})
    assert check_groups(g, [whole_group(g)], env) == 1


def test_chain_of_ten_ops_100k():
    n = 100_000
    g = Graph()
    a, b = g.add_input((n,), F32), g.add_input((n,), F32)
    v = a
    for k, name in enumerate(["add", "mul", "sub", "maximum", "div", "minimum", "mul", "add",
                              "sub", "div"]):
        v = op(g, name, v, b if k % 2 else 1.0 + k)
        if k == 4:
            v = op(g, "neg", v)
    assert len(g.nodes) == 11
    env = evaluate(g, {id(a): randf(n), id(b): randf(n)})
    assert check_groups(g, [whole_group(g)], env) == 1


# ------------------------------------------------------------------ transcendental

@pytest.mark.parametrize("name,lo,hi", [("exp", -80.0, 80.0), ("log", 1e-30, 1e30),
                                        ("tanh", -12.0, 12.0), ("sigmoid", -30.0, 30.0),
                                        ("erf", -5.0, 5.0),
                                        ("sin", -100.0, 100.0), ("cos", -100.0, 100.0)])
def test_vecmath_within_documented_ulps(name, lo, hi):
    g = Graph()
    a = g.add_input((20_000,), F32)
    op(g, name, a)
    if name == "log":
        x = np.exp(RNG.uniform(np.log(lo), np.log(hi), 20_000)).astype(np.float32)
    else:
        x = RNG.uniform(lo, hi, 20_000).astype(np.float32)
    (got,) = run_group(g, whole_group(g), [x])
    ref = evaluate(g, {id(a): x.astype(np.float64)})[id(g.nodes[0].out)]
    assert ulp_error(got, ref) <= vecmath.MAX_ULPS[name][0]


# ------------------------------------------------------------------ traced functions

def test_traced_function_groups():
    def fn(x, y, z):
        h = dg.where(x > y, (x * y - z).exp(), (x + z).tanh()) / 2.0
        return dg.where(h <= 0.1, h.maximum(-h.abs()), 0.0)
    x, y = dg.tensor(randf(16, 1)), dg.tensor(randf(1, 24))
    z = dg.tensor(np.array(0.5, dtype=np.float32))
    cf = compiler.compile(fn, backend="interp")
    cf(x, y, z)
    cf(x, y, z)
    g = cf.variants[0].trace.graph
    groups = fuse(g)
    verify_groups(g, groups)
    env = evaluate(g, {id(v): t.numpy() for v, t in zip(g.inputs, (x, y, z))})
    assert sum(grp.kind == "elementwise" for grp in groups) >= 2
    assert check_groups(g, groups, env, ulps=4.0) >= 2  # exp and tanh inside


# ------------------------------------------------------------------ errors, assembly

def test_unsupported_raises_clearly():
    g = Graph()
    a = g.add_input((8,), dg.int64)
    g.add_node(P["floor"], [a], {}, (8,), dg.int64)  # (eager: an integer's floor is itself)
    with pytest.raises(NotImplementedError, match="'floor' on dtype int64"):
        elementwise_kernel(g, whole_group(g))


def test_simple_kernel_vectorises():
    g = Graph()
    a, b = g.add_input((1024,), F32), g.add_input((1024,), F32)
    op(g, "mul", op(g, "add", a, b), a)
    text, name, _ = elementwise_kernel(g, whole_group(g))
    asm = jit.assembly(text)
    assert f"{name}:" in asm
    assert any(ins in asm for ins in ("vaddps", "vmulps", "addps", "mulps"))


@pytest.mark.parametrize("shape,axes", [((3, 1), (1,)), ((1, 4, 1), (0, 2)), ((1,), (0,)),
                                        ((), ())])
def test_a_sum_over_size_one_axes_of_an_input_is_a_relabelled_read(shape, axes):
    g = Graph()
    a = g.add_input(shape, F32)
    s = op(g, "sum", a, axes=axes, keepdims=False)
    b = g.add_input(s.shape, F32)
    op(g, "mul", op(g, "add", s, b), 3.0)
    x = randf(*shape) if shape else np.array(randf(1)[0])
    x.reshape(-1)[0] = -0.0  # numpy's sum makes it +0.0
    y = randf(*s.shape) if s.shape else np.array(randf(1)[0])
    env = evaluate(g, {id(a): x, id(b): y})
    assert check_groups(g, [whole_group(g)], env) == 1


@pytest.mark.parametrize("shape", [(64, 64, 24, 24), (3, 5, 7, 9), (2, 40, 16, 16), (70, 33),
                                   (8, 16, 5, 7), (4, 3, 3, 3), (6, 32, 3, 3)])
def test_broadcast_rows_run_over_the_longest_trailing_run_and_split_across_threads(shape):
    """A bias broadcast over a conv's output, + relu, and its mask: the kernel loops rows x
    the run of trailing dims the bias is constant over (no division of the inner index),
    big ones split by whole rows across the pool — the same bits as eager."""
    import compiler
    import dyngrad as dg
    from compiler.backends.llvm import loops
    r = np.random.default_rng(0)
    x = dg.tensor(r.standard_normal(shape).astype(np.float32))
    b = dg.tensor(r.standard_normal((1, shape[1]) + (1,) * (len(shape) - 2)).astype(np.float32))
    fn = lambda x, b: ((x + b).relu(), (x + b) > 0)  # noqa: E731
    f = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        got = f(x, b)
    for g, w in zip(got, fn(x, b), strict=True):
        assert np.array_equal(g.numpy(), w.numpy())
    from compiler.passes.fusion import fuse
    graph = f.variants[0].trace.graph
    groups = [grp for grp in fuse(graph) if grp.kind == "elementwise"]
    text = loops.LoopBuilder(graph, groups[0]).build()[0]
    assert "udiv i64 %i," not in text and "urem i64 %i," not in text
