"""Native code for the narrow integer dtypes (int32, int16, int8, uint8) and int64 powers
(issue 15): compiled for the LLVM backend, each program runs as one driver call and gives
eager's (numpy's) bits — wraparound at the type's width, floor division and remainder
rounding toward -inf, uint8 compared and widened unsigned, float -> int casts out of range
as numpy's ``astype`` on x86-64, integer powers by negative exponents as PyTorch's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver

INTS = ("int64", "int32", "int16", "int8", "uint8")


def _edges(dt: str, shape=(6, 40), seed: int = 0) -> np.ndarray:
    """The type's extremes, their neighbours, 0 and ±1 among random values of the type."""
    info = np.iinfo(dt)
    r = np.random.default_rng(seed)
    pool = np.array([info.min, info.min + 1, info.max, info.max - 1, 0, 1, 2, 3, 7,
                     info.max // 2 + 1] + ([] if info.min == 0 else [-1, -2, -3, -7]),
                    dtype=dt)
    a = r.integers(info.min, int(info.max) + 1, shape, dtype=dt)
    return np.where(r.random(shape) < 0.5, r.choice(pool, shape), a).astype(dt)


def _run(fn, *xs):
    """The compiled program's results (second call) and eager's; asserts one driver call."""
    f = compiler.compile(fn, backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = fn(*xs)
        for _ in range(2):
            got = f(*xs)
    assert isinstance(f.variants[0].plan, driver.DriverPlan), f.variants[0].plan.describe()
    pair = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    return list(zip(*pair))


def _assert_bits(got, want, what=""):
    g, w = got.detach().numpy(), want.detach().numpy()
    assert g.dtype == w.dtype and g.shape == w.shape, (what, g.dtype, w.dtype, g.shape)
    assert np.array_equal(g, w, equal_nan=g.dtype.kind == "f"), (what, g, w)


ARITHMETIC = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "mul_add_chain": lambda a, b: (a * b + a) * b - a,  # (each step wraps before the next)
    "neg": lambda a, b: -a if a.dtype is not dg.bool else a,
    "abs": lambda a, b: a.abs(),
    "sign": lambda a, b: a.sign(),
    "maximum": lambda a, b: dg.maximum(a, b),
    "minimum": lambda a, b: dg.minimum(a, b),
    "compare": lambda a, b: (a < b) * 1 + (a >= b) * 2 + (a == b) * 4 + (a > 3) * 8,
    "where": lambda a, b: dg.where(a > b, a, b * 3),
    "square": lambda a, b: a ** 2,
    "cube_plus_literal": lambda a, b: a ** 3 + 5,
}


@pytest.mark.parametrize("dt", INTS)
def test_narrow_integer_arithmetic_wraps_and_compares_as_eager_bit_for_bit(dt):
    a, b = dg.tensor(_edges(dt, seed=1)), dg.tensor(_edges(dt, seed=2))
    names = sorted(ARITHMETIC)
    for name, (got, want) in zip(names, _run(lambda a, b: tuple(ARITHMETIC[k](a, b)
                                                                for k in names), a, b)):
        _assert_bits(got, want, name)


def test_uint8_and_int16_wraparound_values():
    """Spelled out, not only compared with eager: 200 + 100 is 44 in uint8, 200 > 100
    (unsigned), 30000 + 30000 is -5536 in int16, -(-32768) and abs(-32768) stay -32768."""
    u = dg.tensor(np.array([200, 255, 0], np.uint8))
    v = dg.tensor(np.array([100, 2, 1], np.uint8))
    s = dg.tensor(np.array([30000, -32768, 7], np.int16))
    fn = (lambda u, v, s: (u + v, u * v, u - v, u > v, dg.maximum(u, v), s + s, -s, s.abs(),
                           s * s))
    (add, mul, sub, gt, mx, s2, neg, ab, sq), _ = zip(*_run(fn, u, v, s))
    assert add.numpy().tolist() == [44, 1, 1] and mul.numpy().tolist() == [32, 254, 0]
    assert sub.numpy().tolist() == [100, 253, 255] and gt.numpy().tolist() == [1, 1, 0]
    assert mx.numpy().tolist() == [200, 255, 1]
    assert s2.numpy().tolist() == [-5536, 0, 14] and neg.numpy().tolist() == [-30000, -32768, -7]
    assert ab.numpy().tolist() == [30000, -32768, 7] and sq.numpy().tolist()[2] == 49


@pytest.mark.parametrize("dt", INTS)
def test_floor_division_and_remainder_round_toward_minus_infinity_as_eager(dt):
    """``//`` and ``%`` are compositions through float64 with a cast back (exact for every
    narrow value); the type's minimum // -1 wraps as eager's cast does."""
    a = _edges(dt, seed=3)
    b = _edges(dt, seed=4)
    b[b == 0] = 3
    x, y = dg.tensor(a), dg.tensor(b)
    for got, want in _run(lambda x, y: (x // y, x % y, x // 7, x % 7), x, y):
        _assert_bits(got, want)
    if dt != "uint8":
        q = dg.tensor(np.array([-7, 7, -1, np.iinfo(dt).min], dt))
        d = dg.tensor(np.array([2, -2, 3, -1], dt))
        (fd, want_fd), (rm, want_rm) = _run(lambda q, d: (q // d, q % d), q, d)
        assert fd.numpy().tolist()[:3] == [-4, -4, -1] and rm.numpy().tolist()[:3] == [1, -1, 2]
        _assert_bits(fd, want_fd)
        _assert_bits(rm, want_rm)


@pytest.mark.parametrize("dt", INTS)
def test_integer_pow_by_a_tensor_wraps_and_gives_pytorchs_negative_powers(dt):
    r = np.random.default_rng(5)
    base = _edges(dt, (5, 60), seed=6)
    base[:, :6] = np.array([1, 0, 2, 3, 5, 7], dt)
    if dt != "uint8":
        base[:, 6:10] = -1
    exp = r.integers(0, 70 if dt == "int64" else np.iinfo(dt).max, base.shape).astype(dt)
    if dt != "uint8":
        exp[:, ::3] = -r.integers(1, 5, exp[:, ::3].shape)  # (1, ±1 or 0: PyTorch's rule)
    x, e = dg.tensor(base), dg.tensor(exp)
    (got, want), = _run(lambda x, e: x ** e, x, e)
    assert want.dtype is x.dtype  # (eager's negative-power path kept int64 for any int)
    _assert_bits(got, want)
    if dt == "int64":
        with np.errstate(over="ignore"):
            pos = np.power(base, np.maximum(exp, 0))
        assert np.array_equal(got.numpy()[exp >= 0], pos[exp >= 0])


def test_int64_pow_by_large_exponents_takes_every_exponent_bit():
    x = dg.tensor(np.array([3, -3, 2, 5, 1, -1, -1, 0, 7], np.int64))
    e = dg.tensor(np.array([2 ** 62 + 1, 2 ** 40 + 3, 63, 2 ** 63 - 1, 2 ** 62, 2 ** 61 + 1,
                            -(2 ** 62) - 1, 12, 0], np.int64))
    (got, want), = _run(lambda x, e: x ** e, x, e)
    _assert_bits(got, want)
    assert got.numpy()[2] == -(2 ** 63) and got.numpy()[5] == -1 and got.numpy()[6] == -1


FLOATS_OUT_OF_RANGE = [0.0, -0.0, 0.9, -0.9, 2.5, -2.5, 127.5, 128.0, -129.0, 255.9, 256.0,
                       300.0, -300.0, 32767.0, 32768.0, 65535.0, 65543.0, -32769.0, 2.0 ** 31,
                       -(2.0 ** 31), -(2.0 ** 31) - 1.0, 3e9, -3e9, 1e10, 1e19, 1e30, -1e30,
                       np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("src", ["float32", "float64"])
def test_float_to_narrow_int_casts_truncate_and_wrap_as_numpys_astype(src):
    """numpy on x86-64 converts through int32 (NaN and out-of-int32-range: INT32_MIN) and
    keeps the low bits; eager is numpy, and compiled code gives the same bits."""
    x = dg.tensor(np.array(FLOATS_OUT_OF_RANGE, src))
    names = ("int32", "int16", "int8", "uint8", "int64", "bool")
    fn = lambda x: tuple(x.to(getattr(dg, n)) for n in names)  # noqa: E731
    for name, (got, want) in zip(names, _run(fn, x)):
        _assert_bits(got, want, name)
    with warnings.catch_warnings():  # (eager's numpy warns of the invalid value)
        warnings.simplefilter("ignore", RuntimeWarning)
        assert dg.tensor(np.array([300.0, 1e10], src)).to(dg.uint8).numpy().tolist() == [44, 0]


def test_integer_casts_wrap_narrowing_and_widen_by_sign():
    """Every pair of integer dtypes, bool and the floats: int8 -1 widens to -1, uint8 255
    to 255; int64 70000 narrows to int16 4464; int8 <-> uint8 keep the bits."""
    srcs = {dt: dg.tensor(_edges(dt, (3, 17), seed=7)) for dt in INTS}
    srcs["bool"] = dg.tensor(np.random.default_rng(8).random((3, 17)) > 0.5)
    targets = INTS + ("bool", "float32", "float64")
    for sdt, x in srcs.items():
        fn = lambda x: tuple(x.to(getattr(dg, t)) for t in targets)  # noqa: E731
        for t, (got, want) in zip(targets, _run(fn, x)):
            _assert_bits(got, want, f"{sdt}->{t}")


@pytest.mark.parametrize("dt", INTS + ("bool",))
def test_narrow_reductions_sum_in_int64_and_max_in_the_type(dt):
    x = dg.tensor(_edges(dt, (37, 300), seed=9) if dt != "bool"
                  else np.random.default_rng(9).random((37, 300)) > 0.5)
    fn = lambda x: (x.sum(1), x.sum(0), x.amax(1), x.amax(0), x.amin(1), x.max(),  # noqa: E731
                    x.sum(), x.argmax(1), x.argmin(0), x.amin())
    for got, want in _run(fn, x):
        _assert_bits(got, want)


@pytest.mark.parametrize("dt", INTS)
def test_narrow_matmul_wraps_as_numpy(dt):
    a = dg.tensor(_edges(dt, (2, 9, 40), seed=10))
    b = dg.tensor(_edges(dt, (40, 7), seed=11))
    fn = lambda a, b: (a @ b, a[0].t() @ a[1], b.t() @ a[1].t())  # noqa: E731
    for got, want in _run(fn, a, b):
        _assert_bits(got, want)


@pytest.mark.parametrize("dt", INTS + ("bool",))
def test_narrow_scatter_add_gather_and_pooling_indices(dt):
    x = dg.tensor(_edges(dt, (2, 3, 7, 7), seed=12) if dt != "bool"
                  else np.random.default_rng(12).random((2, 3, 7, 7)) > 0.5)
    i = dg.tensor(np.array([3, 0, 1, 3, 2, 0, 3]))

    def fn(x, i):
        flat = x.reshape(6, 49)
        out = [flat[:, i], flat.index_select(1, i),
               F.adaptive_max_pool2d(x, 3, return_indices=True)[1]]
        if dt != "bool":  # (eager refuses bool max_pool2d, as PyTorch)
            out.append(F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)[1])
            out.append(F.max_pool2d(x, 2, return_indices=True)[1])
        out.append(dg.zeros(6, 4, dtype=x.dtype).scatter_add(1, i[None, :4].expand(6, 4),
                                                             flat[:, :4]))
        return tuple(out)
    for got, want in _run(fn, x, i):
        _assert_bits(got, want)


def test_comparisons_with_numbers_outside_the_type_compare_the_numbers_as_eager():
    """``u8 > 300`` is False everywhere and ``u8 == -1`` never holds (not the wrapped 44 or
    255): such a comparison is made in int64; clamp to bounds beyond the type is identity."""
    u = dg.tensor(np.array([200, 5, 255, 0, 44], np.uint8))
    s = dg.tensor(np.array([-100, 5, -128, 127, 0], np.int8))
    fn = lambda u, s: (u > 300, u == -1, u != -1, u >= -5, u < 256, u == 255, u < 300,  # noqa: E731
                       s < -200, s > -129, s == 128, s <= 127, u.clamp(0, 300),
                       s.clamp(-1000, 1000))
    for got, want in _run(fn, u, s):
        _assert_bits(got, want)
    (gt300, _), (eq_minus1, _) = _run(lambda u: (u > 300, u == -1), u)
    assert not gt300.numpy().any() and not eq_minus1.numpy().any()


@pytest.mark.parametrize("dt", INTS + ("bool", "float32"))
def test_reductions_over_size_one_axes_are_relabelled_copies_of_every_dtype(dt):
    """A sum over a size-1 axis is a copy (of a bool or narrow integer: its int64 value;
    of a float: plus +0.0, so -0.0 becomes +0.0), read from the input or computed."""
    x = dg.tensor(np.array([-3, -0.0, 1, 127, -128]).reshape(5, 1).astype(dt))
    fn = lambda x: (x.sum(1), x.amax(1), (x * x).sum(1), x.sum(1, keepdim=True) * 2,  # noqa: E731
                    x[:, None].expand(5, 3, 1).sum(2))
    for got, want in _run(fn, x):
        _assert_bits(got, want)
        if got.dtype.is_floating_point:
            assert np.array_equal(np.signbit(got.numpy()), np.signbit(want.numpy()))
