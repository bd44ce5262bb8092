"""Random numbers in compiled code (compiler/backends/llvm/randomgen.py): uniform numbers are
eager's Philox-4x32-10 bits, drawn inside the driver's one native call; normals run in numpy
(Box–Muller through numpy's log and cos), still eager's bits."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver
from dyngrad import nn, optim
from dyngrad.ops.random import Generator


def _draws(fn, calls, seed=3):
    dg.manual_seed(seed)
    return [tuple(np.array(t.detach().numpy()) for t in fn()) for _ in range(calls)]


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (5, 7), (64, 33), (1000, 3)])
def test_uniform_numbers_are_eagers_bits_in_one_native_call(dtype, shape):
    """Every block size remainder (4 float32 or 2 float64 numbers per Philox block), over
    calls that advance the generator's offset."""
    def f():
        return dg.rand(*shape, dtype=dtype), dg.rand(2, dtype=dtype)
    cf = compiler.compile(f, backend="llvm")
    got, want = _draws(cf, 4), _draws(f, 4)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert isinstance(cf.variants[0].plan, driver.DriverPlan)


def test_a_generator_near_the_end_of_its_counter_wraps_as_eager():
    gen_c, gen_e = Generator(), Generator()
    state = dg.tensor(np.array([0x7FFF_FFFF_FFFF_FF01, 2**63 - 3], np.int64))
    gen_c.set_state(state)
    gen_e.set_state(state)

    def make(gen):
        return lambda: (dg.rand(40, generator=gen), dg.rand(9, dtype=dg.float64, generator=gen))
    cf = compiler.compile(make(gen_c), backend="llvm")
    eager = make(gen_e)
    for _ in range(4):  # (the offset passes 2**63: the counter wraps as a uint64)
        for a, b in zip(cf(), eager()):
            assert np.array_equal(a.numpy(), b.numpy())
    assert np.array_equal(gen_c.state.numpy(), gen_e.state.numpy())


def test_normal_numbers_run_in_numpy_with_eagers_bits_and_explain_says_why(capsys):
    def f():
        return (dg.randn(6, 5),)
    cf = compiler.compile(f, backend="llvm")
    got, want = _draws(cf, 3), _draws(f, 3)
    for g, w in zip(got, want):
        assert np.array_equal(g[0], w[0])
    compiler.explain(cf)
    out = capsys.readouterr().out
    assert "random" in out and "normals use numpy" in out


def test_a_dropout_training_step_runs_on_the_driver_with_eagers_masks():
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Dropout(0.25), nn.Linear(32, 1))
    m2 = copy.deepcopy(m)
    o1, o2 = optim.SGD(m.parameters(), lr=0.05), optim.SGD(m2.parameters(), lr=0.05)

    def make(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step
    eager, cf = make(m, o1), compiler.compile(make(m2, o2), backend="llvm")
    rng = np.random.default_rng(0)
    for i in range(5):
        x = dg.tensor(rng.standard_normal((32, 16)).astype(np.float32))
        y = dg.tensor(rng.standard_normal((32, 1)).astype(np.float32))
        dg.manual_seed(100 + i)
        l1 = eager(x, y).item()
        dg.manual_seed(100 + i)
        l2 = cf(x, y).item()
        assert abs(l1 - l2) <= 1e-5 * abs(l1)  # (a different mask would differ by far more)
        for p, q in zip(m.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4,
                                       atol=1e-6)
    assert isinstance(cf.variants[0].plan, driver.DriverPlan)
