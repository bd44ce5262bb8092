"""LLVM copy kernels of movement groups (llvm/datamove.py) and unit-step slices of
outside data read as offset views inside loop kernels — against each primitive's impl,
bit for bit (data is only moved)."""

from __future__ import annotations

import numpy as np
import pytest
from test_codegen import evaluate, op

import dyngrad as dg
from compiler.backends.llvm.codegen import builder, run_group
from compiler.ir import Graph
from compiler.passes.fusion import fuse

RNG = np.random.default_rng(3)


def data(shape, dtype):
    if dtype is dg.bool_:
        return RNG.random(shape) > 0.5
    if dtype is dg.int64:
        return RNG.integers(-9, 9, shape)
    return RNG.standard_normal(shape).astype(dtype.np)


def check(g, feeds) -> int:
    env = evaluate(g, feeds)
    ran = 0
    for grp in fuse(g):
        if grp.kind not in ("movement", "elementwise", "reduce"):
            continue
        ins = [env[id(v)] if v.const is None else v.const for v in grp.inputs]
        for v, got in zip(grp.outputs, run_group(g, grp, ins)):
            np.testing.assert_array_equal(got, env[id(v)])
        ran += 1
    return ran


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64, dg.int64, dg.bool_])
@pytest.mark.parametrize("case", ["pad", "pad_interior", "slice_steps", "permute", "concat",
                                  "reshape_slice", "broadcast_permute"])
def test_a_movement_group_copies_exactly(case, dtype):
    g = Graph()
    a = g.add_input((3, 4, 5), dtype)
    if case == "pad":
        out = op(g, "pad", a, pads=((1, 2, 0), (0, 0, 0), (2, 1, 0)), value=0)
    elif case == "pad_interior":
        out = op(g, "pad", a, pads=((0, 1, 1), (1, 0, 2), (0, 0, 0)), value=1)
    elif case == "slice_steps":
        out = op(g, "slice", a, starts=(1, 0, 1), stops=(3, 4, 5), steps=(1, 2, 3))
    elif case == "permute":
        out = op(g, "permute", a, perm=(2, 0, 1))
    elif case == "concat":
        b = g.add_input((3, 2, 5), dtype)
        out = op(g, "concat", a, b, op(g, "slice", a, starts=(0, 1, 0), stops=(3, 3, 5),
                                      steps=(1, 1, 1)), axis=1)
    elif case == "reshape_slice":
        out = op(g, "slice", op(g, "reshape", a, shape=(12, 5)), starts=(2, 1),
                 stops=(11, 5), steps=(3, 1))
    else:
        out = op(g, "permute", op(g, "broadcast", op(g, "reshape", a, shape=(3, 1, 4, 5)),
                                  shape=(3, 2, 4, 5)), perm=(3, 1, 0, 2))
    g.outputs = [out]
    feeds = {id(v): data(v.shape, dtype) for v in g.inputs}
    assert check(g, feeds) >= 1


def test_a_unit_step_slice_of_an_input_is_read_in_place_by_a_loop_kernel():
    g = Graph()
    a = g.add_input((6, 8), dg.float32)
    s = op(g, "slice", a, starts=(1, 2), stops=(5, 8), steps=(1, 1))
    out = op(g, "tanh", op(g, "mul", s, 2.0))
    g.outputs = [out]
    groups = fuse(g)
    assert [grp.kind for grp in groups] == ["elementwise"]  # no copy of the slice
    assert "getelementptr" in builder(g, groups[0]).build()[0]
    env = evaluate(g, {id(a): data((6, 8), dg.float32)})
    got = run_group(g, groups[0], [env[id(a)]])[0]
    np.testing.assert_allclose(got, env[id(out)], rtol=3e-7)


@pytest.mark.parametrize("dtype", [dg.float32, dg.int64, dg.bool_])
@pytest.mark.parametrize("case", ["pad_rows", "head_split", "swap_last_two", "broadcast"])
def test_a_big_copy_splits_across_threads_and_writes_every_element(case, dtype):
    """Copies from ``datamove.PAR_ELEMENTS`` elements run their outer loop in ranges on the
    pool: into a poisoned buffer, every element is the reference's, on 1, 2 and 3 threads."""
    from compiler.backends.llvm import datamove, threads
    g = Graph()
    if case == "pad_rows":
        a = g.add_input((12, 64, 128), dtype)
        out = op(g, "pad", a, pads=((0, 0, 0), (0, 0, 0), (128, 128, 0)), value=0)
    elif case == "head_split":
        a = g.add_input((12, 64, 4, 32), dtype)
        out = op(g, "permute", a, perm=(0, 2, 1, 3))
    elif case == "swap_last_two":
        a = g.add_input((12, 4, 64, 32), dtype)
        out = op(g, "permute", a, perm=(0, 1, 3, 2))
    else:
        a = g.add_input((1, 64, 1, 32), dtype)
        out = op(g, "broadcast", a, shape=(40, 64, 3, 32))
    g.outputs = [out]
    assert np.prod(out.shape) >= datamove.PAR_ELEMENTS
    feeds = {id(v): data(v.shape, dtype) for v in g.inputs}
    env = evaluate(g, feeds)
    (grp,) = [grp for grp in fuse(g) if grp.kind == "movement"]
    before = threads.team()
    try:
        for team in (1, 2, 3):
            threads.set_team(team)
            (got,) = run_group(g, grp, [feeds[id(a)]], poison=7 if dtype is not dg.bool_
                               else True)
            np.testing.assert_array_equal(got, env[id(out)])
            if dtype is dg.bool_:  # (True is the poison: check the False ones were written)
                (got,) = run_group(g, grp, [feeds[id(a)]], poison=False)
                np.testing.assert_array_equal(got, env[id(out)])
    finally:
        threads.set_team(max(before, 1))
