"""LLVM codegen of *reduce* fusion groups (llvm/reduce.py) against the numpy oracle:
every node's own primitive ``impl``, as in test_codegen.py.

Tolerances: a float32 sum may differ from numpy's (pairwise) by rounding, so it is checked
within 1e-5 of the sum of ``|x|`` (float64: 1e-13); ``max`` and every IEEE-exact epilogue of
exact values are compared bit for bit (NaNs at the same places); values computed with the
vecmath functions within a few float32 ulps; composite epilogues (softmax, layer norm) within
stated tolerances. Also checks the documented summation order (lane ``j`` takes elements
``j, j+L, ...``; a fixed tree; in the column form, four partials over the rows in order)
bit for bit, reproducibility, vectorisation, and the LLVM backend end to end (forward and
backward) against eager."""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np
import pytest
from test_codegen import evaluate, op, randf

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import codegen, jit
from compiler.backends.llvm.codegen import reduce_kernel, run_group
from compiler.ir import Graph
from compiler.passes.fusion import fuse, verify_groups

F32, F64 = dg.float32, dg.float64
RNG = np.random.default_rng(1)
SUM_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-13}  # of sum |x|
VM_RTOL = 8 * 2.0**-23  # a few float32 ulps: a vecmath function's result, once rounded
VECMATH = {"exp", "log", "tanh", "sigmoid", "erf", "sin", "cos"}


def rand(shape, dt) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dt.np)


def oracle(g: Graph, feeds: dict) -> dict:
    """test_codegen's ``evaluate``, quiet about NaN and inf (numpy warns; tests error)."""
    with np.errstate(all="ignore"):
        return evaluate(g, feeds)


def groups_of(g: Graph, outputs=None) -> list:
    if outputs is not None:
        g.outputs = list(outputs)
    groups = fuse(g)
    verify_groups(g, groups)
    return groups


def assert_sum_close(got, want, x, axes, keepdims) -> None:
    """A sum: non-finite results equal (NaN where numpy's is), finite ones within SUM_RTOL of
    the sum of |x| (summation order differs from numpy's pairwise)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    got, want = np.atleast_1d(got), np.atleast_1d(want)
    with np.errstate(all="ignore"):
        _assert_sum_close(got, want, x, axes, keepdims)


def _assert_sum_close(got, want, x, axes, keepdims) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    bad = ~np.isfinite(want)
    np.testing.assert_array_equal(got[bad], want[bad])
    scale = np.atleast_1d(np.sum(np.abs(x.astype(np.float64)), axis=axes, keepdims=keepdims))
    tol = SUM_RTOL[got.dtype] * scale + np.finfo(got.dtype).smallest_subnormal
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err[~bad] <= tol[~bad]), (np.max(err[~bad] / tol[~bad]), got, want)


def check_groups(g: Graph, groups: list, env: dict, rtol: float = 0.0, atol: float = 0.0,
                 kinds=("reduce",)) -> int:
    """Run every group of ``kinds`` natively on the oracle's inputs; compare each output with
    the oracle: a sum's output by :func:`assert_sum_close`; a max's exactly when the group
    computes no vecmath function; the others exactly (``rtol`` and ``atol`` 0) or within
    (rtol, atol). Returns how many groups ran."""
    producer = {id(n.out): n for n in g.nodes}
    ran = 0
    for grp in groups:
        if grp.kind not in kinds:
            continue
        exact = not any(g.nodes[i].prim.name in VECMATH for i in grp.nodes)
        ins = [env[id(v)] if v.const is None else v.const for v in grp.inputs]
        outs = run_group(g, grp, ins)
        assert len(outs) == len(grp.outputs)
        for v, got in zip(grp.outputs, outs):
            want = env[id(v)]
            assert got.shape == want.shape and got.dtype == want.dtype, (v, got, want)
            n = producer.get(id(v))
            if n is not None and n.prim.name == "sum" and grp.kind == "reduce" and \
                    tuple(n.params["axes"]) == tuple(grp.axes):
                assert_sum_close(got, want, env[id(n.inputs[0])], n.params["axes"],
                                 n.params["keepdims"])
            elif (rtol == 0.0 and atol == 0.0) or (exact and n is not None and
                                                   n.prim.name == "max"):
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
        ran += 1
    return ran


def sum_max_graph(shape, dt, axes, keepdims):
    g = Graph()
    a = g.add_input(shape, dt)
    s = op(g, "sum", a, axes=axes, keepdims=keepdims)
    m = op(g, "max", a, axes=axes, keepdims=keepdims)
    return g, a, s, m


def only_reduce_group(g, outputs) -> object:
    groups = groups_of(g, outputs)
    assert [grp.kind for grp in groups] == ["reduce"], groups
    return groups[0]


# ------------------------------------------------------------------ sum and max, many shapes

CASES = [
    ((50,), (0,)),                      # all axes of a vector: a scalar
    ((6, 17), (0, 1)),                  # all axes of a matrix
    *[((5, r), (1,)) for r in (3, 8, 16, 17, 50)],   # last axis, R around the lane counts
    *[((r, 7), (0,)) for r in (3, 8, 16, 17, 50)],   # first axis (strided reads)
    ((4, 3, 6), (1,)), ((4, 17, 6), (1,)), ((2, 50, 3), (1,)),  # a middle axis
    ((3, 4, 17), (2,)), ((17, 3, 4), (0,)),        # two kept dims
    ((3, 4, 5), (0, 1, 2)),                          # all axes of a 3-d array
    ((3, 5, 4, 6), (0, 2)), ((5, 3, 7), (0, 2)),     # two non-adjacent axes
    ((4, 5, 6), (1, 2)), ((4, 5, 6), (0, 1)),       # two adjacent axes
    ((1, 50), (1,)), ((50, 1), (0,)), ((1, 17, 1), (1,)),  # kept size 1
    ((3, 1, 20), (0, 1)), ((4, 1, 9), (1, 2)),      # a size-1 axis among the reduced
    ((1, 3), (0, 1)), ((2, 1, 5), (0,)),            # tiny
    ((2, 300), (1,)), ((300, 2), (0,)),             # above a chunk (16 vectors) of lanes
    ((50, 40), (0,)), ((7, 3, 33), (0,)), ((5, 6, 20), (0, 1)),  # the column form
    ((129, 16), (0,)), ((3, 17), (0,)),
]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,axes", CASES, ids=[f"{s}-{a}" for s, a in CASES])
def test_sum_and_max(shape, axes, dt, keepdims):
    g, a, s, m = sum_max_graph(shape, dt, axes, keepdims)
    grp = only_reduce_group(g, [s, m])  # siblings: one loop
    assert grp.axes == axes and [v.id for v in grp.outputs] == [s.id, m.id]
    x = rand(shape, dt) * 10.0
    x.flat[::7] += 100.0  # magnitudes differ: a sum's rounding shows
    env = evaluate(g, {id(a): x})
    assert check_groups(g, [grp], env) == 1


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["sum", "max"])
def test_single_reduction_and_large_r(name, dt):
    """One reduction alone (no sibling), R far above the lanes, and R % lanes != 0."""
    for shape, axes in (((3, 1000), (1,)), ((4097,), (0,)), ((333, 3), (0,))):
        g = Graph()
        a = g.add_input(shape, dt)
        r = op(g, name, a, axes=axes, keepdims=False)
        grp = only_reduce_group(g, [r])
        env = evaluate(g, {id(a): rand(shape, dt)})
        assert check_groups(g, [grp], env) == 1


def _lane_order_sum(x: np.ndarray, lanes: int):
    """The documented summation order of one reduction over ``x`` (1-d), in x's dtype: lane
    ``j`` adds elements ``j, j+L, j+2L, ...`` in order from +0.0 (unused lanes of the last
    vector get the identity), the L lanes combine in a fixed tree (pairs, then pairs of
    pairs), and the total gets + 0.0."""
    t = x.dtype.type
    acc = [t(0.0)] * lanes
    for r, v in enumerate(x):
        acc[r % lanes] = t(acc[r % lanes] + v)
    while len(acc) > 1:
        acc = [t(acc[k] + acc[k + 1]) for k in range(0, len(acc), 2)]
    return t(acc[0] + t(0.0))


@pytest.mark.parametrize("dt,lanes", [(F32, 16), (F64, 8)], ids=["f32", "f64"])
def test_summation_order_is_the_documented_one(dt, lanes):
    """Bit for bit as :func:`_lane_order_sum`, for R below, at and above the lanes and the
    chunk (16 vectors); the order depends only on R: a row sums as the same data as a column
    (axis 0, strided reads)."""
    for R in (3, 8, 16, 17, 50, 129, 16 * lanes, 16 * lanes + 5, 3 * 16 * lanes + lanes + 1):
        x = (rand((4, R), dt) * np.exp(rand((4, R), dt) * 4)).astype(dt.np)
        g = Graph()
        a = g.add_input((4, R), dt)
        s = op(g, "sum", a, axes=(1,), keepdims=False)
        (got,) = run_group(g, only_reduce_group(g, [s]), [x])
        want = np.array([_lane_order_sum(row, lanes) for row in x], dtype=dt.np)
        np.testing.assert_array_equal(got, want)
        g = Graph()  # the same rows as columns (axis 0, strided): the same bits
        a = g.add_input((R, 4), dt)
        s = op(g, "sum", a, axes=(0,), keepdims=False)
        (got_t,) = run_group(g, only_reduce_group(g, [s]), [np.ascontiguousarray(x.T)])
        np.testing.assert_array_equal(got_t, want)


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
def test_column_form_sums_rows_in_order_into_four_partials(dt):
    """Reducing the leading axis of an array with at least 16 kept elements (a bias
    gradient) runs the rows in order, each a vectorised loop over the columns: each column
    bit for bit as :func:`_lane_order_sum` with four lanes (row r into partial r mod 4, then
    the fixed tree), for R below, at and above the partial count."""
    for R in (2, 3, 4, 5, 17, 128, 129):
        for n in (16, 37, 256):
            x = (rand((R, n), dt) * np.exp(rand((R, n), dt) * 4)).astype(dt.np)
            g = Graph()
            a = g.add_input((R, n), dt)
            s = op(g, "sum", a, axes=(0,), keepdims=False)
            grp = only_reduce_group(g, [s])
            assert "%cols0" in reduce_kernel(g, grp)[0]  # (the column form)
            (got,) = run_group(g, grp, [x])
            want = np.array([_lane_order_sum(col, 4) for col in x.T], dtype=dt.np)
            np.testing.assert_array_equal(got, want, err_msg=f"R={R} n={n}")


@pytest.mark.parametrize("shape,axes,column", [
    ((128, 256), (0,), True), ((3, 4, 40), (0, 1), True), ((5, 6, 20), (0,), True),
    ((128, 8), (0,), False),   # fewer kept elements than a vector's lanes
    ((256, 128), (1,), False),  # the last axis: contiguous rows already
    ((4, 40, 6), (0, 2), False),  # a kept axis between reduced ones
    ((2, 70000), (0,), True),  # partials over COLUMNS_MAX_BYTES: tiles of kept elements
    ((16, 70000), (0,), False),  # over COLUMNS_MAX_ELEMENTS: the kept elements split
])
def test_the_column_form_is_taken_only_for_leading_reduced_axes(shape, axes, column):
    g = Graph()
    a = g.add_input(shape, F32)
    s = op(g, "sum", a, axes=axes, keepdims=False)
    assert ("%cols0" in reduce_kernel(g, only_reduce_group(g, [s]))[0]) == column


def test_many_sibling_column_reductions_stay_within_the_stack_budget():
    """Every reduction of a group has its own column buffers: their sum is what counts
    against COLUMNS_MAX_BYTES (40 sums over (8, 16384) used to overflow the stack) — the
    kept elements then run in tiles small enough for all of them."""
    from compiler.backends.llvm.reduce import COLUMNS_MAX_BYTES
    g = Graph()
    a = g.add_input((8, 4096), F32)
    outs = [op(g, "sum", op(g, "mul", a, float(k)), axes=(0,), keepdims=False)
            for k in range(8)]
    grp = only_reduce_group(g, outs)
    text = reduce_kernel(g, grp)[0]
    buffers = [int(n) for n in re.findall(r"%cols\d+ = alloca float, i64 (\d+)", text)]
    assert len(buffers) == 8 and "%tiles" in text
    assert sum(buffers) * 4 <= COLUMNS_MAX_BYTES < 8 * 4 * 4096 * 4
    x = rand((8, 4096), F32)
    got = run_group(g, grp, [x])
    for k, o in enumerate(got):
        assert_sum_close(o, (x * np.float32(k)).sum(0), x * np.float32(k), (0,), False)


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
def test_tiled_column_form_keeps_each_columns_order(dt):
    """More kept elements than one tile's partials hold (a position embedding's gradient:
    the batch summed out of (batch, time, features)): tiles of kept elements, the last
    one partial, each column still bit for bit the four-partial order of the untiled form,
    with a prologue and an epilogue over the kept elements."""
    from compiler.backends.llvm.reduce import COLUMNS_MAX_BYTES
    tile = COLUMNS_MAX_BYTES // (4 * dt.np.itemsize)
    for R, shape in ((3, (tile + 37,)), (5, (2, tile // 2 + 8)), (17, (64, 130))):
        x = (rand((R, *shape), dt) * np.exp(rand((R, *shape), dt) * 4)).astype(dt.np)
        y = rand((1, *shape), dt)
        g = Graph()
        a, b = g.add_input((R, *shape), dt), g.add_input((1, *shape), dt)
        s = op(g, "sum", op(g, "add", a, b), axes=(0,), keepdims=False)
        e = op(g, "mul", s, 2.0)
        grp = only_reduce_group(g, [s, e])
        text = reduce_kernel(g, grp)[0]
        assert "%cols0" in text and ("%tiles" in text) == (math.prod(shape) > tile)
        got = run_group(g, grp, [x, y])
        cols = (x + y).reshape(R, -1).T
        want = np.array([_lane_order_sum(c, 4) for c in cols], dtype=dt.np).reshape(shape)
        np.testing.assert_array_equal(got[0], want, err_msg=f"R={R} shape={shape}")
        np.testing.assert_array_equal(got[-1], want * dt.np.type(2.0))


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
def test_column_form_nan_inf_and_signed_zero(dt):
    """The special rows of :func:`_special_rows`, as columns (the column form)."""
    x = np.ascontiguousarray(_special_rows(40, dt).T)  # (40, 10)... kept 10: widen it
    x = np.ascontiguousarray(np.concatenate([x, x], axis=1))  # 20 kept columns
    g, a, s, m = sum_max_graph(x.shape, dt, (0,), False)
    grp = only_reduce_group(g, [s, m])
    assert "%cols0" in reduce_kernel(g, grp)[0]
    env = oracle(g, {id(a): x})
    got_s, got_m = run_group(g, grp, [x])
    np.testing.assert_array_equal(got_m, env[id(m)])
    assert_sum_close(got_s, env[id(s)], x, (0,), False)
    assert np.isnan(got_s[[0, 1, 4, 6, 7]]).all() and not np.isnan(got_s[[2, 3, 5, 8, 9]]).any()
    assert got_s[5] == 0.0 and not np.signbit(got_s[5])


def test_sibling_sums_of_mixed_dtypes_use_the_narrower_lane_count():
    """sum(x) in float32 and sum(float64(x)) share a loop (8 lanes, float64's); the float64
    sum is cast back to float32 in the epilogue."""
    g = Graph()
    a = g.add_input((6, 37), F32)
    s32 = op(g, "sum", a, axes=(1,), keepdims=False)
    s64 = op(g, "sum", op(g, "cast", a, dtype=F64), axes=(1,), keepdims=False)
    back = op(g, "cast", s64, dtype=F32)
    grp = only_reduce_group(g, [s32, s64, back])
    x = randf(6, 37)
    env = evaluate(g, {id(a): x})
    assert check_groups(g, [grp], env, rtol=1e-5, atol=1e-6) == 1  # (a sum that cancels)
    got32, got64, got_back = run_group(g, grp, [x])
    np.testing.assert_array_equal(got32, [_lane_order_sum(r, 8) for r in x])
    want64 = np.array([_lane_order_sum(r.astype(np.float64), 8) for r in x])
    np.testing.assert_array_equal(got64, want64)
    np.testing.assert_array_equal(got_back, want64.astype(np.float32))


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_reduction_of_broadcast_inputs(axes):
    """The reduced data is a broadcast view of a row and a column (stride-0 reads)."""
    g = Graph()
    r, c = g.add_input((1, 23), F32), g.add_input((9, 1), F32)
    p = op(g, "mul", op(g, "broadcast", r, shape=(9, 23)), op(g, "broadcast", c, shape=(9, 23)))
    s = op(g, "sum", p, axes=axes, keepdims=True)
    m = op(g, "max", op(g, "broadcast", r, shape=(9, 23)), axes=axes, keepdims=False)
    groups = groups_of(g, [s, m])
    env = evaluate(g, {id(r): randf(1, 23), id(c): randf(9, 1)})
    assert check_groups(g, groups, env) >= 1


# ------------------------------------------------------------------ size-1 axes (R = 1)

@pytest.mark.parametrize("name", ["sum", "max"])
def test_reduction_over_size_one_axes_is_a_copy(name):
    """R = 1: the reduction is an elementwise copy of a computed value."""
    g = Graph()
    a = g.add_input((5, 1), F32)
    r = op(g, name, op(g, "mul", a, 2.0), axes=(1,), keepdims=False)
    groups = groups_of(g, [r])
    assert [grp.kind for grp in groups] == ["elementwise"]
    x = randf(5, 1)
    x[0, 0], x[1, 0] = np.nan, np.inf
    env = oracle(g, {id(a): x})
    assert check_groups(g, groups, env, kinds=("elementwise",)) == 1


def test_sum_over_size_one_axis_of_negative_zero_is_positive_zero():
    """R = 1 (an elementwise copy): numpy's sum still gives +0.0 for -0.0 (np.sum([-0.0]) is
    +0.0), which shows after a division: x / sum(-0.0) is +inf, not -inf."""
    g = Graph()
    a = g.add_input((5, 1), F32)
    s = op(g, "sum", op(g, "add", a, -0.0), axes=(1,), keepdims=False)
    y = op(g, "div", 1.0, s)
    groups = groups_of(g, [s, y])
    x = np.full((5, 1), -0.0, np.float32)
    got_s, got_y = run_group(g, groups[0], [x])
    env = oracle(g, {id(a): x})
    assert not np.signbit(env[id(s)]).any() and (env[id(y)] == np.inf).all()
    np.testing.assert_array_equal(np.signbit(got_s), np.signbit(env[id(s)]))
    np.testing.assert_array_equal(got_y, env[id(y)])


# ------------------------------------------------------------------ NaN, inf, signed zero

def _special_rows(R: int, dt) -> np.ndarray:
    x = rand((10, R), dt)
    x[0, 0] = np.nan                            # first element (lane 0 of the first chunk)
    x[1, R - 1] = np.nan                        # last element (a leftover lane if any)
    x[2, R // 2] = np.inf                       # max +inf, sum +inf
    x[3, :] = -np.inf                           # max -inf (the start value), sum -inf
    x[4, 0], x[4, R - 1] = np.inf, -np.inf      # max +inf, sum NaN
    x[5, :] = -0.0                              # sum +0.0 as numpy's
    x[6, R // 3], x[6, R - 1] = np.inf, np.nan  # NaN wins over +inf
    x[7, 0], x[7, R // 2] = np.nan, -np.inf     # NaN wins over -inf
    x[8, :] = -1e30 if dt is F32 else -1e300    # all very negative: max > -inf
    return x                                    # row 9: clean


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("R", [3, 8, 17, 50, 300])
def test_nan_inf_and_signed_zero(R, dt):
    g, a, s, m = sum_max_graph((10, R), dt, (1,), False)
    grp = only_reduce_group(g, [s, m])
    x = _special_rows(R, dt)
    env = oracle(g, {id(a): x})
    got_s, got_m = run_group(g, grp, [x])
    np.testing.assert_array_equal(got_m, env[id(m)])  # NaNs at the same places
    assert np.isnan(got_m).tolist() == [True, True, False, False, False, False, True, True,
                                        False, False]
    assert got_m[2] == np.inf and got_m[3] == -np.inf and got_m[4] == np.inf
    assert_sum_close(got_s, env[id(s)], x, (1,), False)
    assert np.isnan(got_s[[0, 1, 4, 6, 7]]).all() and not np.isnan(got_s[[2, 3, 5, 8, 9]]).any()
    assert got_s[5] == 0.0 and not np.signbit(got_s[5]) and not np.signbit(env[id(s)][5])


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("R", [50, 300])
def test_nan_at_every_position_only_poisons_its_row(R, dt):
    """A NaN at each position 0..R-1 (every lane, every chunk, the leftovers) of its own row;
    the clean rows after them stay finite. Also over the first axis (columns)."""
    x = rand((R + 6, R), dt)
    x[np.arange(R), np.arange(R)] = np.nan
    for shape, axes, data in (((R + 6, R), (1,), x), ((R, R + 6), (0,), x.T.copy())):
        g, a, s, m = sum_max_graph(shape, dt, axes, True)
        grp = only_reduce_group(g, [s, m])
        env = oracle(g, {id(a): data})
        got_s, got_m = run_group(g, grp, [data])
        want_nan = np.arange(R + 6) < R
        assert np.isnan(got_m).ravel().tolist() == want_nan.tolist()
        assert np.isnan(got_s).ravel().tolist() == want_nan.tolist()
        np.testing.assert_array_equal(got_m, env[id(m)])
        assert check_groups(g, [grp], env) == 1


def test_all_axes_special_values():
    """A scalar result: NaN anywhere, inf, a vector of -0.0."""
    for dt in (F32, F64):
        for fill in ("nan", "inf", "negzero", "mixed_inf"):
            x = rand((7, 9), dt)
            if fill == "nan":
                x[6, 8] = np.nan
            elif fill == "inf":
                x[3, 4] = np.inf
            elif fill == "negzero":
                x[:] = -0.0
            else:
                x[0, 0], x[5, 5] = -np.inf, np.inf
            g, a, s, m = sum_max_graph((7, 9), dt, (0, 1), False)
            grp = only_reduce_group(g, [s, m])
            env = oracle(g, {id(a): x})
            got_s, got_m = run_group(g, grp, [x])
            np.testing.assert_array_equal(got_m, env[id(m)])
            assert_sum_close(got_s, env[id(s)], x, (0, 1), False)
            assert np.signbit(got_s) == np.signbit(env[id(s)])


# ------------------------------------------------------------------ prologue

def _prologue(g, a):
    """tanh(1.5x + 0.5) * sigmoid(x) - exp(-x*x), sigmoid as 1/(1 + exp(-x))."""
    t = op(g, "tanh", op(g, "add", op(g, "mul", a, 1.5), 0.5))
    sig = op(g, "div", 1.0, op(g, "add", 1.0, op(g, "exp", op(g, "neg", a))))
    return op(g, "sub", op(g, "mul", t, sig), op(g, "exp", op(g, "neg", op(g, "mul", a, a))))


@pytest.mark.parametrize("shape,axes", [((8, 50), (1,)), ((8, 50), (0, 1)), ((33, 5), (0,)),
                                        ((3, 17, 4), (1,)), ((3, 700), (1,))])
def test_prologue_fused_into_the_reduction(shape, axes):
    g = Graph()
    a = g.add_input(shape, F32)
    p = _prologue(g, a)
    s = op(g, "sum", p, axes=axes, keepdims=False)
    m = op(g, "max", p, axes=axes, keepdims=True)
    grp = only_reduce_group(g, [s, m])
    assert len(grp.nodes) == len(g.nodes) and grp.inputs == [a]  # one kernel, one read
    x = randf(*shape) * 2.0
    env = evaluate(g, {id(a): x})
    assert check_groups(g, [grp], env, rtol=VM_RTOL, atol=1e-30) == 1


@pytest.mark.parametrize("shape", [(6, 37), (3, 300)])
def test_prologue_value_that_is_also_an_output(shape):
    """exp(x) both summed and materialised (stored from inside the reduction loop)."""
    g = Graph()
    a = g.add_input(shape, F32)
    e = op(g, "exp", op(g, "mul", a, 0.5))
    s = op(g, "sum", e, axes=(1,), keepdims=True)
    grp = only_reduce_group(g, [e, s])
    assert len(grp.outputs) == 2
    env = evaluate(g, {id(a): randf(*shape)})
    assert check_groups(g, [grp], env, rtol=VM_RTOL, atol=1e-30) == 1


def test_prologue_reading_broadcast_inputs():
    """The prologue reads a row vector and a column vector broadcast over S."""
    g = Graph()
    a, r, c = g.add_input((9, 40), F32), g.add_input((40,), F32), g.add_input((9, 1), F32)
    p = op(g, "mul", op(g, "sub", a, r), c)
    s = op(g, "sum", p, axes=(1,), keepdims=False)
    m = op(g, "max", p, axes=(1,), keepdims=False)
    grp = only_reduce_group(g, [s, m])
    env = evaluate(g, {id(a): randf(9, 40), id(r): randf(40), id(c): randf(9, 1)})
    assert check_groups(g, [grp], env) == 1


# ------------------------------------------------------------------ epilogues

@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,axes,keepdims", [((8, 50), (1,), False), ((3, 5, 7), (0, 2), True),
                                                 ((40,), (0,), False), ((17, 3), (0,), True)])
def test_mean_epilogue_over_the_reduced_shape(shape, axes, keepdims, dt):
    """mean = sum / size_of: the size is a constant baked into the kernel."""
    g = Graph()
    a, b = g.add_input(shape, dt), g.add_input((), dt)
    s = op(g, "sum", a, axes=axes, keepdims=keepdims)
    n = op(g, "size_of", a, axes=axes, dtype=dt)
    mean = op(g, "div", s, n)
    out = op(g, "add", op(g, "mul", mean, 2.0), b)  # more kept-space work, an outside scalar
    grp = only_reduce_group(g, [out])
    x = rand(shape, dt)
    env = evaluate(g, {id(a): x, id(b): np.asarray(0.25, dt.np)})
    (got,) = run_group(g, grp, [env[id(v)] for v in grp.inputs])
    size = math.prod(shape[k] for k in axes)
    assert env[id(n)] == size
    want = env[id(out)]
    scale = np.sum(np.abs(x.astype(np.float64)), axis=axes, keepdims=keepdims) / size * 2
    assert got.shape == want.shape and got.dtype == want.dtype
    assert np.all(np.abs(got - want) <= SUM_RTOL[got.dtype] * scale + 4 * np.finfo(dt.np).eps)


def test_size_of_another_axis_and_kept_space_inputs():
    """An epilogue over the reduced shape using a kept-shape input and a size_of of other
    axes (also a constant)."""
    g = Graph()
    a, k = g.add_input((6, 21), F32), g.add_input((6, 1), F32)
    s = op(g, "sum", a, axes=(1,), keepdims=True)
    n0 = op(g, "size_of", a, axes=(0,), dtype=F32)
    out = op(g, "sub", op(g, "div", s, n0), op(g, "mul", k, 3.0))
    groups = groups_of(g, [out])
    x, kk = randf(6, 21), randf(6, 1)
    env = evaluate(g, {id(a): x, id(k): kk})
    assert check_groups(g, groups, env, rtol=1e-5, atol=1e-5) >= 1


def _softmax(g, a, axis):
    m = op(g, "max", a, axes=(axis,), keepdims=True)
    e = op(g, "exp", op(g, "sub", a, m))
    s = op(g, "sum", e, axes=(axis,), keepdims=True)
    return op(g, "div", e, s)


def _log_softmax(g, a, axis):
    m = op(g, "max", a, axes=(axis,), keepdims=True)
    d = op(g, "sub", a, m)
    s = op(g, "sum", op(g, "exp", d), axes=(axis,), keepdims=True)
    return op(g, "sub", d, op(g, "log", s))


def _layer_norm(g, a, axis, dt=F32):
    n = op(g, "size_of", a, axes=(axis,), dtype=dt)
    mean = op(g, "div", op(g, "sum", a, axes=(axis,), keepdims=True), n)
    d = op(g, "sub", a, mean)
    var = op(g, "div", op(g, "sum", op(g, "mul", d, d), axes=(axis,), keepdims=True), n)
    return op(g, "div", d, op(g, "sqrt", op(g, "add", var, 1e-5)))


@pytest.mark.parametrize("build", [_softmax, _log_softmax, _layer_norm])
@pytest.mark.parametrize("shape,axis", [((8, 50), 1), ((8, 3), 1), ((17, 6), 0),
                                        ((4, 17, 5), 1), ((2, 3, 33), 2), ((1, 20), 1),
                                        ((3, 600), 1), ((300, 2), 0)])
def test_epilogue_over_the_full_shape(build, shape, axis):
    """exp(x - max)/sum, log_softmax, (x - mean)/sqrt(var + eps): two groups each, the
    second with an epilogue over S reading reduced values broadcast back."""
    g = Graph()
    a = g.add_input(shape, F32)
    y = build(g, a, axis)
    groups = groups_of(g, [y])
    assert [grp.kind for grp in groups] == ["reduce", "reduce"], groups
    assert groups[1].nodes[-1] == len(g.nodes) - 1 and groups[1].outputs == [y]
    x = randf(*shape) * 3.0
    x[0, ..., 0] += 20.0  # a dominant element
    env = evaluate(g, {id(a): x})
    # softmax's outputs need no cancellation; log_softmax's and layer_norm's near 0 do
    # (the sum's rounding shows absolutely: about R float32 ulps of 1)
    atol = 1e-7 if build is _softmax else 1e-5
    assert check_groups(g, groups, env, rtol=1e-5, atol=atol) == 2


def test_layer_norm_float64_tight():
    g = Graph()
    a = g.add_input((7, 45), F64)
    y = _layer_norm(g, a, 1, F64)
    groups = groups_of(g, [y])
    env = evaluate(g, {id(a): rand((7, 45), F64) + 3.0})
    assert check_groups(g, groups, env, rtol=1e-12, atol=1e-13) == 2


def test_sibling_reductions_share_one_loop():
    """sum(x), sum(x*x) and max(x) of the same x: one group, one pass; then var in the
    kept-space epilogue and a full-shape epilogue reading all three."""
    g = Graph()
    a = g.add_input((12, 70), F32)
    s1 = op(g, "sum", a, axes=(1,), keepdims=True)
    s2 = op(g, "sum", op(g, "mul", a, a), axes=(1,), keepdims=True)
    mx = op(g, "max", a, axes=(1,), keepdims=True)
    n = op(g, "size_of", a, axes=(1,), dtype=F32)
    mean = op(g, "div", s1, n)
    var = op(g, "sub", op(g, "div", s2, n), op(g, "mul", mean, mean))
    z = op(g, "div", op(g, "sub", a, mx), op(g, "add", var, 1.0))
    groups = groups_of(g, [s1, s2, var, z])
    assert [grp.kind for grp in groups] == ["reduce"], groups
    ids = {n.out.id for k, n in enumerate(g.nodes) if k in groups[0].nodes}
    assert {s1.id, s2.id, mx.id} <= ids
    x = randf(12, 70) + 1.0
    env = evaluate(g, {id(a): x})
    assert check_groups(g, groups, env, rtol=2e-5, atol=1e-5) == 1


def test_kept_shape_input_in_prologue_and_epilogues():
    """A kept-shape input k (broadcast along the reduced axis) read by the prologue, by a
    kept-space node that needs no reduction, and by the full-shape epilogue."""
    g = Graph()
    a, k = g.add_input((7, 45), F32), g.add_input((7, 1), F32)
    d = op(g, "sub", a, k)
    s = op(g, "sum", op(g, "mul", d, d), axes=(1,), keepdims=True)
    k2 = op(g, "add", op(g, "mul", k, 2.0), 1.0)  # kept space, no reduction
    y = op(g, "div", op(g, "mul", d, k2), op(g, "add", s, 1.0))
    groups = groups_of(g, [s, y])
    assert [grp.kind for grp in groups] == ["reduce"], groups
    env = evaluate(g, {id(a): randf(7, 45), id(k): randf(7, 1)})
    assert check_groups(g, groups, env, rtol=1e-5, atol=1e-7) == 1


def test_column_centering_without_keepdims():
    """mean over axis 0 without keepdims, (7,), read back by numpy broadcasting along the
    reduced axis 0 of (R, 7)."""
    g = Graph()
    a = g.add_input((33, 7), F32)
    mean = op(g, "div", op(g, "sum", a, axes=(0,), keepdims=False),
              op(g, "size_of", a, axes=(0,), dtype=F32))
    y = op(g, "sub", a, mean)
    groups = groups_of(g, [y])
    assert [grp.kind for grp in groups] == ["reduce"], groups
    env = evaluate(g, {id(a): randf(33, 7) + 2.0})
    assert check_groups(g, groups, env, rtol=1e-5, atol=1e-6) == 1


def test_reduced_value_broadcast_onto_the_wrong_axis_is_not_fused():
    """x + x.sum(1) on a square x adds along the *last* axis: not the reduced one, so the add
    is its own group, and every group still gives numpy's values."""
    g = Graph()
    a = g.add_input((6, 6), F32)
    s = op(g, "sum", a, axes=(1,), keepdims=False)
    y = op(g, "add", a, s)
    groups = groups_of(g, [y])
    assert sorted(grp.kind for grp in groups) == ["elementwise", "reduce"], groups
    env = evaluate(g, {id(a): randf(6, 6)})
    assert check_groups(g, groups, env, kinds=("reduce", "elementwise"), rtol=1e-6) == 2


@pytest.mark.parametrize("dt", [F32, F64], ids=["f32", "f64"])
def test_global_normalisation_scalar_broadcast_back(dt):
    """x / sum(|x|) over all axes: a 0-d reduced space, the epilogue over all of S."""
    g = Graph()
    a = g.add_input((5, 40), dt)
    s = op(g, "sum", op(g, "abs", a), axes=(0, 1), keepdims=True)
    y = op(g, "div", a, s)
    groups = groups_of(g, [y])
    assert [grp.kind for grp in groups] == ["reduce"], groups
    env = evaluate(g, {id(a): rand((5, 40), dt)})
    assert check_groups(g, groups, env, rtol=1e-5 if dt is F32 else 1e-13, atol=0) == 1


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_map_of_an_in_group_constant(shape):
    """A reshape/broadcast of an in-group full() (shape (1,) or (1, 1): neither S nor the
    reduced shape) is a constant, as fusion's leaf role says (amax's backward has one: the
    seed full(()) -> reshape (1,) -> broadcast (8,))."""
    g = Graph()
    a = g.add_input((8, 40), F32)
    s = op(g, "sum", a, axes=(1,), keepdims=False)
    c = op(g, "reshape", op(g, "full", shape=(), value=2.0, dtype=F32), shape=shape)
    y = op(g, "mul", s, op(g, "broadcast", c, shape=(8,)) if shape == (1,) else c)
    grp = only_reduce_group(g, [y])
    env = evaluate(g, {id(a): randf(8, 40)})
    assert check_groups(g, [grp], env, rtol=1e-5, atol=1e-5) == 1


@pytest.mark.parametrize("cshape", [(), (1,), (8, 40)])
def test_constant_read_by_two_groups_is_an_output(cshape):
    """A full() read by the reduction and by another group joins the reduce group as one of
    its outputs (fusion's rule); run_group hands back its value."""
    g = Graph()
    a, b = g.add_input((8, 40), F32), g.add_input((3,), F32)
    c = op(g, "full", shape=cshape, value=2.5, dtype=F32)
    s = op(g, "sum", op(g, "mul", a, c), axes=(1,), keepdims=False)
    cs = op(g, "max", c, axes=tuple(range(len(cshape))), keepdims=False) if cshape else c
    u = op(g, "mul", b, cs)
    groups = groups_of(g, [s, u])
    env = evaluate(g, {id(a): randf(8, 40), id(b): randf(3)})
    assert check_groups(g, groups, env) >= 1
    assert any(c in grp.outputs for grp in groups if grp.kind == "reduce")


# ------------------------------------------------------------------ traced functions

def _sig_sum(x):
    return (dg.tanh(x * 1.5 + 0.5) * dg.sigmoid(x) - dg.exp(-x * x)).sum(1)


def _grad_of(loss_fn):
    """A function computing a loss, its backward, and returning the loss and x's gradient."""
    def fn(x, *rest):
        x = x.detach().requires_grad_()
        loss = loss_fn(x, *rest)
        loss.backward()
        return loss, x.grad
    return fn


def _ln(x):
    """layer_norm over the last axis with a weight and a bias (graph constants)."""
    n = x.shape[-1]
    w = dg.tensor(np.linspace(0.5, 1.5, n)).to(x.dtype)
    return F.layer_norm(x, n, w, w * 0.1 - 0.05)


def _softmax_sq(x):
    y = F.softmax(x, 1)
    return (y * y).sum()


def _mse(x):
    return F.mse_loss(x, x.detach() * 0.5 + 1.0)


TARGET = np.array([1, 0, 4, 2, 3, 3, 0, 1])
# name -> (function, input shape); a function named *_ce also takes the int64 targets
TRACED = {
    "prologue_sum": (_sig_sum, (8, 50)),
    "mean_var": (lambda x: x.mean(1) + x.var(0).sum(), (8, 50)),
    "softmax_last": (lambda x: F.softmax(x, -1), (8, 50)),
    "softmax_middle": (lambda x: F.softmax(x, 1), (4, 17, 5)),
    "softmax_first": (lambda x: F.softmax(x, 0), (17, 3)),
    "log_softmax": (lambda x: F.log_softmax(x, 1), (8, 33)),
    "layer_norm": (_ln, (8, 50)),
    "softmax_backward": (_grad_of(_softmax_sq), (8, 50)),
    "log_softmax_backward": (_grad_of(lambda x: (F.log_softmax(x, 1) * x).mean()), (8, 19)),
    "layer_norm_backward": (_grad_of(lambda x: (_ln(x) * x).sum()), (8, 50)),
    "mse_backward": (_grad_of(_mse), (8, 50)),
    "backward_ce": (_grad_of(F.cross_entropy), (8, 5)),
    "amax_backward": (_grad_of(lambda x: x.amax(1).sum()), (8, 40)),  # a map of a constant
    "bool_epilogue": (lambda x: (x > x.mean(1, keepdim=True),
                                 (x - x.amax(1, keepdim=True)).exp().sum(1)), (6, 30)),
}


def _args(name, shape, dt=F32) -> tuple:
    x = dg.tensor(rand(shape, dt))
    return (x, dg.tensor(TARGET)) if name.endswith("_ce") else (x,)


def _feeds(g: Graph, args) -> dict:
    """Graph inputs <- the call's tensors (matched by shape and dtype: each is unique here)."""
    feeds = {}
    for v in g.inputs:
        (t,) = [t for t in args if tuple(t.shape) == tuple(v.shape) and t.dtype is v.dtype]
        feeds[id(v)] = t.detach().numpy()
    return feeds


@pytest.mark.parametrize("name", list(TRACED))
def test_traced_function_reduce_groups(name):
    fn, shape = TRACED[name]
    args = _args(name, shape)
    cf = compiler.compile(fn, backend="interp")
    cf(*args)
    cf(*args)
    g = cf.variants[0].trace.graph  # (the variant serving the latest call)
    groups = fuse(g)
    verify_groups(g, groups)
    env = evaluate(g, _feeds(g, args))
    assert check_groups(g, groups, env, rtol=2e-5, atol=2e-6) >= 1


# ------------------------------------------------------------------ the LLVM backend, end to end

END_TO_END = {
    "softmax": (lambda x: F.softmax(x, -1), (8, 50), F32),
    "log_softmax": (lambda x: F.log_softmax(x, 1), (8, 33), F32),
    "layer_norm": (_ln, (8, 50), F32),
    "layer_norm_f64": (_ln, (6, 20), F64),
    "softmax_bwd": (_grad_of(_softmax_sq), (8, 50), F32),
    "log_softmax_bwd": (_grad_of(lambda x: (F.log_softmax(x, 1) * x).mean()), (8, 19), F32),
    "layer_norm_bwd": (_grad_of(lambda x: (_ln(x) * x).sum()), (8, 50), F32),
    "layer_norm_bwd_f64": (_grad_of(lambda x: (_ln(x) * x).sum()), (5, 12), F64),
    "mse_bwd": (_grad_of(_mse), (8, 50), F32),
    "mse_bwd_f64": (_grad_of(_mse), (8, 50), F64),
    "bwd_ce": (_grad_of(F.cross_entropy), (8, 5), F32),
    "amax_bwd": (_grad_of(lambda x: x.amax(1).sum()), (8, 40), F32),
}


def native_kernels(plan) -> int:
    """How many kernels of a plan run natively, as runner.describe says ("N of M kernels
    native", or "all N kernels native" when one driver call runs them all)."""
    text = plan.describe()
    m = re.search(r"(?:all )?(\d+) (?:of \d+ )?kernels native", text)
    assert m, text
    return int(m.group(1))


def _spy_native_groups(monkeypatch) -> list:
    """Records the groups the runner lowers (the runner passes them to codegen.module_ir)."""
    seen = []
    real = codegen.module_ir

    def spy(g, groups, *args, **kwargs):
        seen.extend(groups)
        return real(g, groups, *args, **kwargs)
    monkeypatch.setattr(codegen, "module_ir", spy)
    return seen


@pytest.mark.parametrize("name", list(END_TO_END))
def test_llvm_backend_matches_eager(name, monkeypatch):
    fn, shape, dt = END_TO_END[name]
    native = _spy_native_groups(monkeypatch)
    cf = compiler.compile(fn, backend="llvm")
    for _ in range(3):
        args = _args(name, shape, dt)
        got, want = cf(*args), fn(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            a, b = a.detach().numpy(), b.detach().numpy()
            assert a.shape == b.shape and a.dtype == b.dtype
            if dt is F64:
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    v = cf.variants[0]  # the variant serving the latest call
    text = v.plan.describe()
    assert native_kernels(v.plan) >= 1, text
    assert any(grp.kind == "reduce" for grp in native), text


SCALE = 0.5  # a global Python float: traced as a runtime (weak) scalar once it changes


def _scaled(x):
    return (x * SCALE).sum(1) + x.amax(1) * SCALE


def test_weak_python_number_input(monkeypatch):
    """A global float the compiler passes at run time (one float64) is read by the prologue
    and the kept-space epilogue of a native reduce kernel; changing it needs no retrace."""
    native = _spy_native_groups(monkeypatch)
    cf = compiler.compile(_scaled, backend="llvm")
    x = dg.tensor(randf(4, 40))
    for scale in (0.5, 0.25, 2.0, -3.0):
        monkeypatch.setitem(globals(), "SCALE", scale)
        # (a sum of 40 terms of up to ~3 in another order: where it cancels to near zero its
        # rounding is ~1e-5 absolute, so atol follows the terms' size)
        atol = 1e-6 * max(1.0, float(np.abs(x.numpy() * scale).sum(1).max()))
        np.testing.assert_allclose(cf(x).numpy(), _scaled(x).numpy(), rtol=1e-5, atol=atol)
    g = cf.variants[0].trace.graph
    assert g.scalars and len(cf.variants) <= 2
    weak = [grp for grp in native if grp.kind == "reduce" and any(v.weak for v in grp.inputs)]
    assert weak
    grp = [grp for grp in fuse(g) if grp.kind == "reduce"][0]
    env = evaluate(g, {id(g.inputs[0]): x.numpy(), id(g.scalars[0]): 0.1})
    assert check_groups(g, [grp], env, rtol=1e-5, atol=1e-6) == 1  # (a sum that cancels)


def test_int64_pow_in_a_prologue_and_float64_erf_and_exp_lower():
    """int64 pow by a tensor (square-and-multiply over the exponent's bits, wrapping) lowers
    in a reduction's prologue and sums to numpy's bits; float64 erf and exp (vecmath64)
    lower, and a float64 softmax is within a few ulps of eager's."""
    g = Graph()
    a = g.add_input((4, 10), dg.int64)
    s = op(g, "sum", op(g, "pow", a, a), axes=(1,), keepdims=False)
    grp = only_reduce_group(g, [s])
    assert codegen.lowerable(g, grp)
    x = np.random.default_rng(3).integers(0, 40, (4, 10))
    (got,) = run_group(g, grp, [x])
    np.testing.assert_array_equal(got, evaluate(g, {id(a): x})[id(s)])
    for name in ("erf", "exp"):
        g = Graph()
        a = g.add_input((4, 10), F64)
        s = op(g, "sum", op(g, name, a), axes=(1,), keepdims=False)
        assert codegen.lowerable(g, only_reduce_group(g, [s]))
    cf = compiler.compile(lambda x: F.softmax(x, 1), backend="llvm")
    x = dg.tensor(rand((4, 10), F64))
    for _ in range(2):
        np.testing.assert_allclose(cf(x).numpy(), F.softmax(x, 1).numpy(), rtol=1e-14)


# ------------------------------------------------------------------ assembly, reproducibility

def test_sum_kernel_vectorises():
    g = Graph()
    a = g.add_input((8, 4096), F32)
    s = op(g, "sum", a, axes=(1,), keepdims=False)
    text, name, layout = reduce_kernel(g, only_reduce_group(g, [s]))
    assert [v.id for v in layout] == [a.id, s.id]
    asm = jit.assembly(text)
    assert f"{name}:" in asm
    assert any(ins in asm for ins in ("vaddps", "addps")), "no packed float32 adds"


def test_reproducible_bit_for_bit():
    g = Graph()
    a = g.add_input((16, 1000), F32)
    p = _prologue(g, a)
    s = op(g, "sum", p, axes=(1,), keepdims=True)
    y = op(g, "div", p, s)
    grp = only_reduce_group(g, [s, y])
    x = randf(16, 1000)
    first = run_group(g, grp, [x])
    second = run_group(g, grp, [x.copy()])
    text, name, _ = reduce_kernel(g, grp)  # a fresh compile of the same IR
    assert text == codegen.builder(g, grp).build()[0]  # deterministic IR
    compiled = jit.compile_ir(text)  # (kept alive while its function runs)
    fresh = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
    outs = [np.empty(v.shape, v.dtype.np) for v in grp.outputs]
    ptrs = (ctypes.c_void_p * 3)(x.ctypes.data, *[o.ctypes.data for o in outs])
    fresh(ptrs, x.size)
    for u, w, z in zip(first, second, outs):
        assert u.tobytes() == w.tobytes() == z.tobytes()


@pytest.mark.parametrize("dt,lanes", [(F32, 16), (F64, 8)], ids=["f32", "f64"])
@pytest.mark.parametrize("n, run", [(3, 16), (2, 32), (5, 48)])
def test_batchnorm_statistics_read_runs_in_the_documented_order(dt, lanes, n, run):
    """A reduction over (N, ·, H·W) keeping the channels (BatchNorm's statistics), H·W a
    multiple of the chunk: each chunk lies in one run of H·W and is read contiguously
    (the run form) — and the sum is still bit for bit the documented order over the flat
    reduced index (n-major), as is the second pass (x − mean) over the runs."""
    from compiler.backends.llvm.reduce import ReduceBuilder
    hw = 16 * lanes * run // 16
    x = (rand((n, 3, hw), dt) * np.exp(rand((n, 3, hw), dt) * 3)).astype(dt.np)
    g = Graph()
    a = g.add_input((n, 3, hw), dt)
    s = op(g, "sum", a, axes=(0, 2), keepdims=True)
    d = op(g, "sub", a, op(g, "broadcast", s, shape=(n, 3, hw)))
    grp = only_reduce_group(g, [s, d])
    assert ReduceBuilder(g, grp)._run(16 * lanes) == (hw % (16 * lanes) == 0)
    got_s, got_d = run_group(g, grp, [x])
    want = np.array([_lane_order_sum(x[:, c, :].reshape(-1), lanes) for c in range(3)],
                    dtype=dt.np)
    np.testing.assert_array_equal(got_s.reshape(-1), want)
    np.testing.assert_array_equal(got_d, x - want.reshape(1, 3, 1))


@pytest.mark.parametrize("dt,lanes", [(F32, 16), (F64, 8)], ids=["f32", "f64"])
def test_runs_that_are_not_a_multiple_of_the_chunk_read_in_chunks_dividing_them(dt, lanes):
    """A conv's bias gradient over 24×24 maps: runs of 576, not a multiple of 16 vectors.
    The chunk becomes the largest multiple of the vector dividing the run (192 floats, 96
    doubles), so the run form still applies — with the same bits as the documented lane
    order, which does not depend on the chunk."""
    from compiler.backends.llvm.reduce import ReduceBuilder
    n, hw = 3, 576
    x = (rand((n, 4, hw), dt) * np.exp(rand((n, 4, hw), dt) * 3)).astype(dt.np)
    g = Graph()
    a = g.add_input((n, 4, hw), dt)
    s = op(g, "sum", a, axes=(0, 2), keepdims=True)
    grp = only_reduce_group(g, [s])
    b = ReduceBuilder(g, grp)
    assert b._chunk(lanes) == 12 * lanes and b._run(b._chunk(lanes))
    g2 = Graph()  # runs of 544 floats (34 vectors: divisors 2 and 17): the split form's chunk
    a2 = g2.add_input((n, 4, 544), dt)
    b2 = ReduceBuilder(g2, only_reduce_group(g2, [op(g2, "sum", a2, axes=(0, 2),
                                                      keepdims=True)]))
    assert b2._chunk(16) == 256 and b2._split_runs(256)
    (got,) = run_group(g, grp, [x])
    want = np.array([_lane_order_sum(x[:, c, :].reshape(-1), lanes) for c in range(4)],
                    dtype=dt.np)
    np.testing.assert_array_equal(got.reshape(-1), want)


@pytest.mark.parametrize("dt,lanes", [(F32, 16), (F64, 8)], ids=["f32", "f64"])
@pytest.mark.parametrize("hw", [676, 300, 1004, 196, 169, 49, 36])
def test_runs_chunks_do_not_tile_read_each_chunk_as_its_pieces(dt, lanes, hw):
    """Runs of 676 (a 26×26 map; 300, 1004 too) or of 196, 169, 49 (14×14, 13×13, 7×7
    maps; 36): no multiple of whole vectors divides them into chunks, so a chunk may span
    the end of one run, whole runs and the start of another — it is read as those
    contiguous pieces, into the lanes of the documented flat order: the same bits. And the
    second pass (x − sum) over the runs."""
    from compiler.backends.llvm.reduce import ReduceBuilder
    n = 3
    x = (rand((n, 4, hw), dt) * np.exp(rand((n, 4, hw), dt) * 3)).astype(dt.np)
    g = Graph()
    a = g.add_input((n, 4, hw), dt)
    s = op(g, "sum", a, axes=(0, 2), keepdims=True)
    d = op(g, "sub", a, op(g, "broadcast", s, shape=(n, 4, hw)))
    grp = only_reduce_group(g, [s, d])
    b = ReduceBuilder(g, grp)
    B = b._chunk(lanes)
    assert hw % B and not b._run(B) and b._split_runs(B)
    text = b.build()[0]
    assert "piece:" in text  # (the form under test)
    got_s, got_d = run_group(g, grp, [x])
    want = np.array([_lane_order_sum(x[:, c, :].reshape(-1), lanes) for c in range(4)],
                    dtype=dt.np)
    np.testing.assert_array_equal(got_s.reshape(-1), want)
    np.testing.assert_array_equal(got_d, x - want.reshape(1, 4, 1))


def test_runs_shorter_than_two_vectors_stay_on_the_flat_form():
    """Runs of 9 (3×3 maps): pieces under a vector each would gain nothing over the flat
    form's divided-out addresses, which still give the documented bits."""
    from compiler.backends.llvm.reduce import ReduceBuilder
    x = rand((5, 4, 9), F32)
    g = Graph()
    a = g.add_input((5, 4, 9), F32)
    s = op(g, "sum", a, axes=(0, 2), keepdims=True)
    grp = only_reduce_group(g, [s])
    b = ReduceBuilder(g, grp)
    assert not b._run(b._chunk(16)) and not b._split_runs(b._chunk(16))
    (got,) = run_group(g, grp, [x])
    want = np.array([_lane_order_sum(x[:, c, :].reshape(-1), 16) for c in range(4)],
                    dtype=np.float32)
    np.testing.assert_array_equal(got.reshape(-1), want)


@pytest.mark.parametrize("dt,lanes", [(F32, 16), (F64, 8)], ids=["f32", "f64"])
@pytest.mark.parametrize("channels", [2, 5])
def test_kept_elements_split_across_threads_keep_the_documented_bits(dt, lanes, channels):
    """A reduction keeping a few elements over a large reduced space (BatchNorm's statistics
    and its second pass) splits its kept elements across the threads, each element's
    reduction whole on one thread: on teams of 1, 2 and 3 threads (3 > 2 channels: a part
    with none) the bits are the documented order's."""
    from compiler.backends.llvm import threads
    if threads.find() is None:
        pytest.skip("no thread pool here (DYNGRAD_THREADS=1 or not Linux x86-64)")
    n, hw = 8, 1 << 15
    x = (rand((n, channels, hw), dt) * np.exp(rand((n, channels, hw), dt) * 3)).astype(dt.np)
    g = Graph()
    a = g.add_input((n, channels, hw), dt)
    s = op(g, "sum", a, axes=(0, 2), keepdims=True)
    d = op(g, "sub", a, op(g, "broadcast", s, shape=(n, channels, hw)))
    grp = only_reduce_group(g, [s, d])
    assert "_o_blocks" in reduce_kernel(g, grp)[0]  # (the split form taken)
    want = np.array([_lane_order_sum(x[:, c, :].reshape(-1), lanes) for c in range(channels)],
                    dtype=dt.np)
    before = threads.team()
    try:
        for team in (1, 2, 3):
            threads.set_team(team)
            got_s, got_d = run_group(g, grp, [x])
            np.testing.assert_array_equal(got_s.reshape(-1), want)
            np.testing.assert_array_equal(got_d, x - want.reshape(1, channels, 1))
    finally:
        threads.set_team(max(before, 1))
