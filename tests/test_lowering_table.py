"""Every primitive in the op table lowers natively for every dtype it accepts — or the pair is
listed in ``NOT_NATIVE`` with its reason (issue 15). One small program per primitive
(``PROGRAMS``: a primitive without one fails the test, so the table cannot fall behind the
registry) runs per dtype: when eager accepts it, the program compiled for the LLVM backend
must equal eager and run as one native driver call, unless listed — and a listed pair must
still fall back (a hybrid plan), so the table stays true in both directions, and a listed
pair eager refuses is a stale entry. Integer results must equal eager's bit for bit.
Elementwise primitives have their own table (``test_lowerings.py``), over the same dtypes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver
from dyngrad.ops import REGISTRY

DTYPES = ["float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
INTEGERS = ("int64", "int32", "int16", "int8", "uint8")
_CONV_WHY = ("no integer convolution kernel: PyTorch has none on the CPU (its conv2d refuses "
             "integer tensors) while dyngrad's eager computes one with numpy, which runs it")


def _x(dt: str, shape=(4, 5)):
    r = np.random.default_rng(0)
    if dt == "bool":
        return dg.tensor(r.random(shape) > 0.5)
    if dt.startswith(("int", "uint")):
        return dg.tensor(r.integers(0 if dt == "uint8" else -4, 5, shape).astype(dt))
    return dg.tensor(r.standard_normal(shape).astype(dt))


def _idx():
    return dg.tensor(np.array([3, 0, 1, 3, 2]))


# primitive name -> (dtype -> (program, inputs))
PROGRAMS = {
    "full": lambda dt: (lambda x: x * dg.full_like(x, 2), [_x(dt)]),
    "iota": lambda dt: (lambda x: x + dg.arange(5).to(x.dtype), [_x(dt)]),
    "broadcast": lambda dt: (lambda x: x[:1] * x, [_x(dt)]),
    "concat": lambda dt: (lambda x: dg.cat([x, x * x], 0), [_x(dt)]),
    "pad": lambda dt: (lambda x: F.pad(x * x, (1, 2)), [_x(dt)]),
    "permute": lambda dt: (lambda x: (x * x).t().contiguous() * x[0, 0], [_x(dt)]),
    "reshape": lambda dt: (lambda x: (x * x).t().reshape(-1) * x[0, 0], [_x(dt)]),
    "slice": lambda dt: (lambda x: (x * x)[::2, 1:] * x[0, 0], [_x(dt)]),
    "sum": lambda dt: (lambda x: x.sum(0), [_x(dt)]),
    "max": lambda dt: (lambda x: x.amax(1), [_x(dt)]),
    "size_of": lambda dt: (lambda x: x.mean(1), [_x(dt)]),
    "argsort": lambda dt: (lambda x: x.argsort(1), [_x(dt)]),
    "cumsum": lambda dt: (lambda x: x.cumsum(1), [_x(dt)]),
    "cumprod": lambda dt: (lambda x: x.cumprod(1), [_x(dt)]),
    "gather": lambda dt: (lambda x, i: x[i] * x[0, 0], [_x(dt), _idx()]),
    "index_check": lambda dt: (lambda x, i: x[:, i] * x[0, 0], [_x(dt), _idx()]),
    "scatter_add": lambda dt: (lambda x, i: dg.zeros(5, 5, dtype=x.dtype).scatter_add(
        0, i[:4, None].expand(4, 5), x), [_x(dt), _idx()]),
    "matmul": lambda dt: (lambda x: x @ x.t(), [_x(dt)]),
    "random": lambda dt: (lambda x: x * dg.rand(4, 5, dtype=x.dtype)  # (both distributions)
                          + dg.randn(4, 5, dtype=x.dtype), [_x(dt)]),
    "conv": lambda dt: (lambda x: F.conv2d(x, x[:2, :1, :3, :3]), [_x(dt, (2, 1, 6, 6))]),
    "conv_transpose": lambda dt: (lambda x: F.conv_transpose2d(x, x[:1, :2, :3, :3]),
                                  [_x(dt, (2, 1, 6, 6))]),
    "conv_weight_grad": lambda dt: (
        lambda x, w: dg.autograd.grad(F.conv2d(x, w).sum(), w)[0], [
            _x(dt, (2, 1, 6, 6)), _x(dt, (2, 1, 3, 3)).requires_grad_(dt.startswith("f"))]),
    "max_pool_indices": lambda dt: (lambda x: F.max_pool2d(x, 2, return_indices=True)[1],
                                    [_x(dt, (2, 3, 6, 6))]),
    "adaptive_max_indices": lambda dt: (
        lambda x: F.adaptive_max_pool2d(x, 2, return_indices=True)[1], [_x(dt, (2, 3, 5, 5))]),
    "flash_attention": lambda dt: (
        lambda x: F.scaled_dot_product_attention(x, x, x * x, is_causal=True),
        [_x(dt, (2, 5, 4))]),
    "flash_attention_backward": lambda dt: (
        lambda x: dg.autograd.grad(F.scaled_dot_product_attention(x, x * x, x).sum(), x)[0],
        [_x(dt, (2, 5, 4)).requires_grad_(dt.startswith("f"))]),
}

# (primitive, dtype) -> why it runs in numpy inside a compiled step
NOT_NATIVE = {(p, dt): _CONV_WHY for p in ("conv", "conv_transpose") for dt in INTEGERS}

# (the collectives' table runs on MPI ranks: tests/mpi/compiled.py, each op and dtype)
OWN_TABLES = ("elementwise", "collective")

CASES = [(p.name, dt) for p in sorted(REGISTRY.values(), key=lambda p: p.name)
         if p.kind not in OWN_TABLES for dt in DTYPES]


def test_every_primitive_has_a_program():
    missing = sorted(p.name for p in REGISTRY.values()
                     if p.kind not in OWN_TABLES and p.name not in PROGRAMS)
    assert not missing, f"add a program to PROGRAMS for {missing}"


@pytest.mark.parametrize("name, dt", CASES)
def test_each_primitive_and_dtype_lowers_or_is_listed(name, dt):
    if name not in PROGRAMS:
        pytest.skip("no program (test_every_primitive_has_a_program fails)")
    fn, xs = PROGRAMS[name](dt)
    try:
        dg.manual_seed(0)
        want = fn(*xs)
    except (RuntimeError, TypeError, ValueError, NotImplementedError):
        assert (name, dt) not in NOT_NATIVE, f"stale entry: eager rejects {name} on {dt}"
        pytest.skip(f"eager {name} rejects {dt}")
    f = compiler.compile(fn, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):
            dg.manual_seed(0)
            got = f(*xs)
    g, w = got.detach().numpy(), want.detach().numpy()
    assert g.dtype == w.dtype, (g.dtype, w.dtype)
    if g.dtype.kind == "f":
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(g, w)
    assert f.variants, f.fallbacks
    native = all(isinstance(v.plan, driver.DriverPlan) for v in f.variants)
    assert native == ((name, dt) not in NOT_NATIVE), (name, dt, [v.plan.describe()
                                                                 for v in f.variants])


@pytest.mark.parametrize("shape, dim", [((4, 5), 0), ((300, 700), 1), ((3000, 700), 0),
                                        ((1 << 20,), None)])
def test_bool_sums_any_and_all_count_exactly(shape, dim):
    """A bool sum (any, all, count_nonzero) is an int64 sum of the bools widened, in one
    thread or split across the pool."""
    x = dg.tensor(np.random.default_rng(1).random(shape) > 0.3)
    for fn in (lambda x: x.sum(dim), lambda x: x.any(dim), lambda x: x.all(dim),
               lambda x: (x & (x.sum(dim, keepdim=dim is not None) > 3)).sum(dim)):
        f = compiler.compile(fn, backend="llvm")
        for _ in range(2):
            got = f(x)
        want = fn(x)
        assert got.dtype == want.dtype and np.array_equal(got.numpy(), want.numpy())
        assert isinstance(f.variants[0].plan, driver.DriverPlan)
