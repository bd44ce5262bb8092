"""Random numbers in compiled code (compiler/backends/llvm/randomgen.py): uniform and normal
numbers are eager's Philox-4x32-10 bits, drawn inside the driver's one native call — normals
by eager's Box–Muller, whose log and cos (dyngrad/ops/boxmuller.py) the kernel repeats
operation for operation, so the bits hold on any CPU (the AVX2 pass of ``make test`` runs
this file again for an AVX2-only target)."""

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


SHAPES = [(1,), (2,), (3,), (4,), (5,), (7, 5), (17,), (255,), (256,), (257,), (64, 33),
          (4099,)]


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_normal_numbers_are_eagers_bits_in_one_native_call(dtype, shape):
    """One number per Philox block: sizes below, at and past the interleaved loop's vectors
    (and not multiples of them), over calls that advance the offset, from a small seed and
    a large one."""
    def f():
        return dg.randn(*shape, dtype=dtype), dg.randn(3, dtype=dtype)
    cf = compiler.compile(f, backend="llvm")
    for seed in (3, 2**62 + 12345):
        got, want = _draws(cf, 4, seed), _draws(f, 4, seed)
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    assert isinstance(cf.variants[0].plan, driver.DriverPlan)


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
def test_normals_from_any_offset_and_a_counter_that_wraps_are_eagers(dtype):
    gen_c, gen_e = Generator(), Generator()

    def make(gen):
        return lambda: (dg.randn(37, dtype=dtype, generator=gen),
                        dg.normal(0.0, 2.0, size=(5,), dtype=dtype, generator=gen))
    cf, eager = compiler.compile(make(gen_c), backend="llvm"), make(gen_e)
    for state in ([0x7FFF_FFFF_FFFF_FF01, 2**63 - 50], [12345, 2**40 + 3], [-1, 7]):
        for gen in (gen_c, gen_e):
            gen.set_state(dg.tensor(np.array(state, np.int64)))
        for _ in range(3):  # (the first state's offset passes 2**63: a uint64 counter)
            for a, b in zip(cf(), eager()):
                assert np.array_equal(a.numpy(), b.numpy())
        assert np.array_equal(gen_c.state.numpy(), gen_e.state.numpy())
    assert isinstance(cf.variants[0].plan, driver.DriverPlan)


def test_explain_lists_normals_as_a_native_kernel(capsys):
    cf = compiler.compile(lambda: (dg.randn(6, 5),), backend="llvm")
    cf()
    compiler.explain(cf)
    out = capsys.readouterr().out
    assert "[random 6x5]" in out and "kernels native, run by one driver call" in out, out
    assert "in numpy" not in out, out


def test_a_noisy_training_step_runs_on_the_driver_with_eagers_noise():
    """``x + 0.1·randn_like(x)`` in a step with backward and an optimizer: no group left to
    numpy, the noise eager's bits at every call, the generator's state eager's after them."""
    dg.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    m2 = copy.deepcopy(m)
    o1, o2 = optim.Adam(m.parameters(), lr=0.01), optim.Adam(m2.parameters(), lr=0.01)

    def make(model, opt):
        def step(x, y):
            opt.zero_grad()
            noise = 0.1 * dg.randn_like(x)
            loss = F.mse_loss(model(x + noise), y)
            loss.backward()
            opt.step()
            return loss, noise
        return step
    eager, cf = make(m, o1), compiler.compile(make(m2, o2), backend="llvm")
    rng = np.random.default_rng(1)
    dg.manual_seed(7)
    for _ in range(5):
        x = dg.tensor(rng.standard_normal((32, 8)).astype(np.float32))
        y = dg.tensor(rng.standard_normal((32, 1)).astype(np.float32))
        state = dg.get_rng_state()
        l1, n1 = eager(x, y)
        dg.set_rng_state(state)
        l2, n2 = cf(x, y)
        assert np.array_equal(n1.numpy(), n2.numpy())
        assert np.array_equal(dg.get_rng_state().numpy(), (state + dg.tensor([0, 4 * 32 * 8]))
                              .numpy())
        assert abs(l1.item() - l2.item()) <= 1e-5 * abs(l1.item())
        for p, q in zip(m.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-4,
                                       atol=1e-6)
    assert len(cf.variants) == 1 and isinstance(cf.variants[0].plan, driver.DriverPlan)


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
def test_normal_of_a_mean_tensor_is_eagers_bits_on_the_driver(dtype):
    mean = dg.tensor(np.linspace(-3, 3, 24).reshape(4, 6).astype(dtype.np))
    std = dg.tensor(np.linspace(0.5, 2, 6).astype(dtype.np))

    def f(mean, std):
        return dg.normal(mean, 2.0), dg.normal(mean, std), dg.normal(1.0, std)
    cf = compiler.compile(f, backend="llvm")
    got, want = _draws(lambda: cf(mean, std), 3), _draws(lambda: f(mean, std), 3)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.dtype == b.dtype == dtype.np and np.array_equal(a, b)
    assert isinstance(cf.variants[0].plan, driver.DriverPlan)


def test_normal_noise_over_a_symbolic_batch_is_native_with_eagers_bits():
    def f(x):
        return x + dg.randn(x.shape[0], 3, dtype=dg.float64)
    cf = compiler.compile(f, backend="llvm")
    for b in (2, 3, 5, 9, 300, 17, 2):
        x = dg.tensor(np.full((b, 3), 0.5))
        dg.manual_seed(b)
        got = cf(x).numpy()
        dg.manual_seed(b)
        assert np.array_equal(got, f(x).numpy()), b
    (v,) = cf.variants
    assert v.sym is not None and len(v.plans) > 1
    assert all(isinstance(p[0], driver.DriverPlan) for p in v.plans.values())


def test_the_interpreter_draws_eagers_normals():
    def f():
        return (dg.randn(9, 7), dg.randn(5, dtype=dg.float64))
    cf = compiler.compile(f, backend="interp")
    for g, w in zip(_draws(cf, 3), _draws(f, 3)):
        for a, b in zip(g, w):
            assert np.array_equal(a, b)


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
