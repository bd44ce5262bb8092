"""Bitwise operators as PyTorch has them (the oracle: torch 2.x on the CPU): ``& | ^ ~ << >>``,
their reflected and in-place forms, ``bitwise_*`` functions and methods — bitwise on integer
tensors, logical on bool tensors, PyTorch's type promotion (a Python int does not promote and
is wrapped to the tensor's width), PyTorch's error for floating-point operands, and its shift
rule for amounts outside [0, width): 0 to the left, the sign fill to the right. ``logical_*``
stay logical on any dtype. Compiled (LLVM) programs equal eager bit for bit and run natively."""

from __future__ import annotations

import operator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
from compiler.backends.llvm import driver  # noqa: E402

INTS = ("int64", "int32", "int16", "int8", "uint8")
DTYPES = INTS + ("bool",)
FLOATS = ("float32", "float64")


def edge_values(dt: str) -> np.ndarray:
    """Zero, ±1, the type's extremes and their neighbours, and a few ordinary numbers."""
    if dt == "bool":
        return np.array([False, True, True, False, True, False, False, True])
    info = np.iinfo(dt)
    vals = [0, 1, -1, 2, -2, 5, -6, 77, -100, info.min, info.min + 1, info.max, info.max - 1]
    return np.array([v for v in vals if info.min <= v <= info.max], dtype=dt)


def shift_amounts(dt: str) -> list:
    """0, 1, width-1, width, width+1, 40, 100 and negative amounts (those the type holds)."""
    w = np.iinfo(dt).bits
    info = np.iinfo(dt)
    return [s for s in (0, 1, 3, w - 1, w, w + 1, 40, 100, -1, -5, -w)
            if info.min <= s <= info.max]


def both(fn, *arrays):
    """``fn(m, *tensors)`` in torch and dyngrad: the same values and dtype, or the same error
    (type and message)."""
    ts = [torch.from_numpy(np.array(a)) if isinstance(a, np.ndarray) else a for a in arrays]
    ds = [dg.tensor(np.array(a)) if isinstance(a, np.ndarray) else a for a in arrays]
    try:
        want = fn(torch, *ts)
    except Exception as exc:  # noqa: BLE001 - the oracle's error is the expectation
        with pytest.raises(type(exc)) as got:
            fn(dg, *ds)
        assert str(got.value) == str(exc), (str(got.value), str(exc))
        return None
    got = fn(dg, *ds)
    assert got.dtype.name == str(want.dtype).removeprefix("torch."), (got.dtype, want.dtype)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert not got.requires_grad
    return got


BINARY = {
    "and": lambda m, a, b: a & b, "or": lambda m, a, b: a | b, "xor": lambda m, a, b: a ^ b,
    "lshift": lambda m, a, b: a << b, "rshift": lambda m, a, b: a >> b,
    "bitwise_and": lambda m, a, b: m.bitwise_and(a, b),
    "bitwise_or": lambda m, a, b: m.bitwise_or(a, b),
    "bitwise_xor": lambda m, a, b: m.bitwise_xor(a, b),
    "bitwise_left_shift": lambda m, a, b: m.bitwise_left_shift(a, b),
    "bitwise_right_shift": lambda m, a, b: m.bitwise_right_shift(a, b),
    "method_and": lambda m, a, b: a.bitwise_and(b),
    "method_right_shift": lambda m, a, b: a.bitwise_right_shift(b),
}
OPS = {"and": operator.and_, "or": operator.or_, "xor": operator.xor,
       "lshift": operator.lshift, "rshift": operator.rshift}


# ------------------------------------------------------------------ eager against torch


@pytest.mark.parametrize("name", list(BINARY))
@pytest.mark.parametrize("da", DTYPES)
@pytest.mark.parametrize("db", DTYPES)
def test_every_pair_of_integer_and_bool_dtypes_matches_torch(name, da, db):
    """Every value of one dtype against every value of the other (an outer product by
    broadcasting): results, promoted dtypes and bool's refusals of the shifts."""
    a = edge_values(da)[:, None]
    b = edge_values(db)[None, :]
    both(BINARY[name], a, b)


@pytest.mark.parametrize("dt", INTS)
@pytest.mark.parametrize("op", ["lshift", "rshift"])
def test_shifts_by_amounts_outside_the_width_follow_torch(dt, op):
    """Amounts 0, width-1, width, > width and negative, as a tensor and as a Python int:
    0 to the left; to the right the sign fill (-1 for negative signed numbers)."""
    x = edge_values(dt)
    amounts = shift_amounts(dt)
    both(lambda m, a, s: OPS[op](a[:, None], s[None, :]), x, np.array(amounts, dtype=dt))
    for s in amounts + [np.iinfo(dt).bits * 4, 255, 256, 264]:
        both(lambda m, a, s=s: OPS[op](a, s), x)


def test_right_shift_of_signed_types_is_arithmetic():
    x = dg.tensor(np.array([-128, -7, 7, 127], dtype=np.int8))
    assert (x >> 1).tolist() == [-64, -4, 3, 63]
    assert (x >> 7).tolist() == [-1, -1, 0, 0]
    assert (x >> 8).tolist() == [-1, -1, 0, 0]  # (the sign fill, not 0)
    assert (x >> -1).tolist() == [-1, -1, 0, 0]
    u = dg.tensor(np.array([128, 255, 7], dtype=np.uint8))
    assert (u >> 7).tolist() == [1, 1, 0] and (u >> 8).tolist() == [0, 0, 0]


def test_left_shift_wraps_at_the_width_of_the_type():
    x = dg.tensor(np.array([1, 3, 5], dtype=np.int32))
    assert (x << 31).tolist() == [-2**31, -2**31, -2**31]
    assert (x << 40).tolist() == [0, 0, 0]  # int32: 40 is past the width
    assert (x.long() << 40).tolist() == [1 << 40, 3 << 40, 5 << 40]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("scalar", [0, 1, -1, 3, 7, 8, 127, 128, 255, 256, 264, 1000, -1000,
                                    2**31, 2**63 - 1, 2**63, 2**64 - 1, -2**63, True, False])
def test_a_python_int_does_not_promote_and_wraps_to_the_tensor_s_width(dt, name, scalar):
    x = edge_values(dt)
    both(lambda m, a: OPS[name](a, scalar), x)
    both(lambda m, a: OPS[name](scalar, a), x)  # __rand__, __rlshift__, ...


@pytest.mark.parametrize("scalar", [2**64, -2**63 - 1, 10**30])
def test_a_python_int_beyond_64_bits_is_refused_like_torch(scalar):
    for name in OPS:
        both(lambda m, a: OPS[name](a, scalar), edge_values("int8"))


@pytest.mark.parametrize("dt", DTYPES + FLOATS)
def test_invert_and_bitwise_not(dt):
    x = edge_values(dt) if dt not in FLOATS else np.array([1.5, -2.0], dtype=dt)
    both(lambda m, a: ~a, x)  # floats: TypeError naming ~ (operator.invert)
    both(lambda m, a: m.bitwise_not(a), x)  # floats: "bitwise_not_cpu" not implemented
    both(lambda m, a: a.bitwise_not(), x)


@pytest.mark.parametrize("fdt", FLOATS)
@pytest.mark.parametrize("other", ["same", "int", "bool", "python_float", "python_int"])
@pytest.mark.parametrize("name", list(BINARY))
def test_floating_point_operands_raise_torch_s_error(fdt, other, name):
    """NotImplementedError (a RuntimeError) naming the kernel and the promoted dtype:
    '"bitwise_and_cpu" not implemented for 'Float''."""
    f = np.array([1.0, 2.0], dtype=fdt)
    b = {"same": f, "int": np.array([1, 2]), "bool": np.array([True, False]),
         "python_float": 1.5, "python_int": 1}[other]
    both(BINARY[name], f, b)
    both(BINARY[name], np.array([1, 2]) if other == "python_int" else f, 2.5)
    with pytest.raises(RuntimeError, match="not implemented for"):
        BINARY[name](dg, dg.tensor(f), dg.tensor(f))


def test_shifts_of_bools_are_refused_like_torch_and_promote_with_a_python_int():
    b = np.array([True, False])
    for op in ("lshift", "rshift"):
        both(lambda m, a, op=op: OPS[op](a, a), b)  # "lshift_cpu" not implemented for 'Bool'
        both(lambda m, a, op=op: OPS[op](a, 1), b)  # int64
        both(lambda m, a, op=op: OPS[op](a, True), b)


def test_type_promotion_follows_torch():
    i8, u8, i64 = (np.array([1, -3, 5], dtype=np.int8), np.array([1, 3, 200], dtype=np.uint8),
                   np.array([7, 7, 7]))
    assert both(lambda m, a, b: a & b, i8, i64).dtype is dg.int64
    assert both(lambda m, a, b: a & b, u8, i8).dtype is dg.int16
    assert both(lambda m, a, b: a >> b, u8, i8).dtype is dg.int16
    assert both(lambda m, a, b: a ^ b, np.array([True, False, True]), i8).dtype is dg.int8
    assert both(lambda m, a: a & 1, np.array([True, False])).dtype is dg.int64
    assert both(lambda m, a: a & True, np.array([True, False])).dtype is dg.bool_
    # a 0-d tensor does not promote a dimensioned one of the same category
    assert both(lambda m, a, b: a | b, i8, np.array(300, dtype=np.int16)).dtype is dg.int8


# ------------------------------------------------------------------ in place

INPLACE = {
    "iand": lambda a, b: a.__iand__(b), "ior": lambda a, b: a.__ior__(b),
    "ixor": lambda a, b: a.__ixor__(b), "ilshift": lambda a, b: a.__ilshift__(b),
    "irshift": lambda a, b: a.__irshift__(b),
    "bitwise_and_": lambda a, b: a.bitwise_and_(b), "bitwise_or_": lambda a, b: a.bitwise_or_(b),
    "bitwise_xor_": lambda a, b: a.bitwise_xor_(b),
    "bitwise_left_shift_": lambda a, b: a.bitwise_left_shift_(b),
    "bitwise_right_shift_": lambda a, b: a.bitwise_right_shift_(b),
    "logical_and_": lambda a, b: a.logical_and_(b), "logical_or_": lambda a, b: a.logical_or_(b),
    "logical_xor_": lambda a, b: a.logical_xor_(b),
}


@pytest.mark.parametrize("name", list(INPLACE))
@pytest.mark.parametrize("da, db", [("int8", "int8"), ("int8", "int64"), ("uint8", "int8"),
                                    ("int32", "bool"), ("bool", "bool"), ("bool", "int16"),
                                    ("int64", "python"), ("bool", "python"),
                                    ("float32", "float32")])
def test_in_place_forms_write_into_the_tensor_like_torch(name, da, db):
    if db == "python" and name.startswith("logical"):
        pytest.skip("torch's logical_*_ take tensors only; dyngrad's also take numbers")
    a = edge_values(da) if da != "float32" else np.array([1.0, 0.0, 2.5], dtype=np.float32)
    n = len(a)
    if db == "python":
        b = 3
    elif db == "float32":
        b = np.array([0.0, 1.0, 2.0], dtype=np.float32)
    else:
        b = np.resize(edge_values(db)[::-1], n)
        if name.endswith("shift_") or "shift" in name:
            b = np.resize(np.array(shift_amounts(db) if db != "bool" else [True, False],
                                   dtype=db), n)

    def run(m):
        t = (torch.from_numpy(a.copy()) if m is torch else dg.tensor(a.copy()))
        o = b if db == "python" else (torch.from_numpy(b.copy()) if m is torch else
                                      dg.tensor(b.copy()))
        r = INPLACE[name](t, o)
        assert r is t
        return t
    try:
        want = run(torch)
    except Exception as exc:  # noqa: BLE001
        with pytest.raises(type(exc) if not isinstance(exc, NotImplementedError)
                           else RuntimeError):
            run(dg)
        return
    got = run(dg)
    assert got.dtype.name == str(want.dtype).removeprefix("torch.")
    np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_in_place_bitwise_not_and_logical_not():
    for dt in DTYPES:
        x = edge_values(dt)
        t, d = torch.from_numpy(x.copy()), dg.tensor(x.copy())
        t.bitwise_not_()
        d.bitwise_not_()
        np.testing.assert_array_equal(d.numpy(), t.numpy())
        t.logical_not_()
        d.logical_not_()
        np.testing.assert_array_equal(d.numpy(), t.numpy())


def test_in_place_through_a_view_writes_the_base():
    x = dg.tensor(np.arange(8, dtype=np.int16).reshape(2, 4))
    x[1] <<= 2
    x[:, 0] |= 1
    assert x.tolist() == [[1, 1, 2, 3], [17, 20, 24, 28]]


# ------------------------------------------------------------------ logical ops on any dtype

LOGICAL = {
    "and": lambda m, a, b: m.logical_and(a, b), "or": lambda m, a, b: m.logical_or(a, b),
    "xor": lambda m, a, b: m.logical_xor(a, b), "not": lambda m, a, b: m.logical_not(a),
    "method_and": lambda m, a, b: a.logical_and(b),
}


@pytest.mark.parametrize("name", list(LOGICAL))
@pytest.mark.parametrize("da", DTYPES + FLOATS)
@pytest.mark.parametrize("db", ("int8", "bool", "float64"))
def test_logical_ops_stay_logical_on_every_dtype(name, da, db):
    a = edge_values(da)[:, None] if da not in FLOATS else \
        np.array([0.0, -0.0, 1.5, np.nan, -np.inf], dtype=da)[:, None]
    b = edge_values(db)[None, :] if db != "float64" else np.array([[0.0, 2.0, np.nan]])
    assert both(LOGICAL[name], a, b).dtype is dg.bool_


# ------------------------------------------------------------------ autograd


def test_bitwise_ops_are_not_differentiable():
    """A float tensor that requires grad is refused as any float (as PyTorch); integer
    results never require grad; logical ops of a tensor that requires grad give a bool
    tensor that does not."""
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    tw = torch.tensor([1.0, 2.0], requires_grad=True)
    for fn in (lambda m, a: a & a, lambda m, a: a << 1, lambda m, a: m.bitwise_not(a)):
        with pytest.raises(RuntimeError, match="not implemented for 'Float'"):
            fn(dg, w)
        with pytest.raises(RuntimeError, match="not implemented for 'Float'"):
            fn(torch, tw)
    for fn in (lambda m, a: m.logical_and(a, a), lambda m, a: m.logical_not(a),
               lambda m, a: (a > 1) ^ (a < 2)):
        got, want = fn(dg, w), fn(torch, tw)
        assert got.requires_grad == want.requires_grad is False
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    i = dg.tensor([3, 4])
    assert not (i & 1).requires_grad and (i & 1).grad_fn is None


# ------------------------------------------------------------------ compiled equals eager


def _native(fn, *xs):
    """``fn`` compiled for LLVM: its second call equals eager bit for bit (values and
    dtype) and ran as one native driver call."""
    want = fn(*xs)
    f = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        got = f(*xs)
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,)):
        assert g.dtype is w.dtype, (g.dtype, w.dtype)
        np.testing.assert_array_equal(g.numpy(), w.numpy())
    plan = f.variants[0].plan
    assert isinstance(plan, driver.DriverPlan), plan.describe()


@pytest.mark.parametrize("dt", DTYPES)
def test_compiled_bitwise_and_or_xor_not_equal_eager(dt):
    a = dg.tensor(edge_values(dt)[:, None])
    b = dg.tensor(edge_values(dt)[None, :])
    _native(lambda a, b: (a & b, a | b, a ^ b, ~a, dg.bitwise_not(b)), a, b)
    lit = True if dt == "bool" else 0x5A
    _native(lambda a, b: (a & lit, lit | b, a ^ lit, lit ^ b), a, b)


@pytest.mark.parametrize("dt", INTS)
def test_compiled_shifts_equal_eager_for_every_amount(dt):
    """By a tensor of amounts (0, width-1, width, past it, negative) and by each literal
    amount, wrapped Python ints included, from the left and from the right."""
    x = dg.tensor(edge_values(dt)[:, None])
    s = dg.tensor(np.array(shift_amounts(dt), dtype=dt)[None, :])
    _native(lambda x, s: (x << s, x >> s, s << x, s >> x), x, s)
    w = np.iinfo(dt).bits
    lits = shift_amounts(dt) + [w * 4, 255, 256, 264, -1, -w - 3]
    _native(lambda x: tuple(x << k for k in lits) + tuple(x >> k for k in lits)
            + tuple(k << x for k in lits[:4]), x)


@pytest.mark.parametrize("dt", INTS)
def test_compiled_random_shifts_and_masks_equal_eager(dt):
    r = np.random.default_rng(3)
    info = np.iinfo(dt)
    x = dg.tensor(r.integers(info.min, info.max, (37, 41), endpoint=True).astype(dt))
    s = dg.tensor(r.integers(info.min, info.max, (37, 41), endpoint=True).astype(dt))
    _native(lambda x, s: ((x >> (s & (info.bits - 1))) ^ (x << s)) | ~(x & s), x, s)


def test_compiled_mixed_dtypes_promote_like_eager():
    a = dg.tensor(edge_values("uint8"))
    b = dg.tensor(np.resize(edge_values("int8"), a.shape[0]))
    m = dg.tensor(np.resize(edge_values("bool"), a.shape[0]))
    _native(lambda a, b, m: (a & b, a >> b, m ^ b, m | 1, (a > 3) & (b < 0)), a, b, m)


def test_compiled_in_place_bitwise_ops_equal_eager():
    def step(x, y):
        z = x.clone()
        z &= y
        z <<= 2
        z.bitwise_xor_(y)
        z >>= 1
        return z
    x = dg.tensor(edge_values("int32"))
    y = dg.tensor(np.resize(edge_values("int32")[::-1], x.shape[0]))
    _native(step, x, y)


def test_compiled_shift_by_a_size_of_the_input():
    x = dg.tensor(np.arange(-8, 8, dtype=np.int64).reshape(2, 8))
    _native(lambda x: (x << x.shape[0], x >> x.shape[1]), x)
