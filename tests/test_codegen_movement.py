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
