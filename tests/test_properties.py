"""Property tests over random shapes: results agree with numpy, every primitive's shape rule
agrees with its impl, and movement ops round-trip.

Data are drawn from a seeded numpy generator (hypothesis draws the shapes, axes, keys and
the seed), which keeps each example cheap.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dyngrad as dg
from dyngrad.dispatch import dispatch
from dyngrad.ops import REGISTRY, AbstractValue

FEW = settings(max_examples=30, deadline=None)
SOME = settings(max_examples=50, deadline=None)

DTYPES = {"float32": dg.float32, "float64": dg.float64, "int64": dg.int64, "bool": dg.bool_}

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
nonempty_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4)
seeds = st.integers(0, 2**32 - 1)


def values(shape, seed, dtype="float64"):
    """Random data of ``shape``: normals for floats, small integers, or random bools."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "int64":
        return rng.integers(-5, 6, size=shape).astype(np.int64)
    return rng.standard_normal(shape).astype(dtype)


def tensor(arr, requires_grad=False):
    return dg.tensor(arr, requires_grad=requires_grad)


def aval(x):
    return AbstractValue(x.shape, x.dtype) if isinstance(x, dg.Tensor) else x


def assert_matches_numpy(actual, expected, rtol=1e-6, atol=1e-6):
    a = actual.detach().numpy() if isinstance(actual, dg.Tensor) else np.asarray(actual)
    assert a.shape == np.shape(expected)
    np.testing.assert_allclose(a, expected, rtol=rtol, atol=atol, equal_nan=True)


# ------------------------------------------------------------------ binary ops vs numpy

BINARY = {
    "add": (dg.add, np.add), "sub": (dg.sub, np.subtract), "mul": (dg.mul, np.multiply),
    "div": (dg.div, np.true_divide), "pow": (dg.pow, np.power),
    "maximum": (dg.maximum, np.maximum), "minimum": (dg.minimum, np.minimum),
    "eq": (dg.eq, np.equal), "ne": (dg.ne, np.not_equal), "lt": (dg.lt, np.less),
    "le": (dg.le, np.less_equal), "gt": (dg.gt, np.greater), "ge": (dg.ge, np.greater_equal),
}
FLOAT_ONLY = {"div", "pow"}


@pytest.mark.parametrize("op", sorted(BINARY))
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, min_side=0,
                                                max_side=4),
       dtype=st.sampled_from(["float32", "float64", "int64"]), seed=seeds)
def test_binary_op_broadcasts_like_numpy_and_its_shape_rule_agrees(op, shapes, dtype, seed):
    assume(dtype != "int64" or op not in FLOAT_ONLY)
    fn, np_fn = BINARY[op]
    (sa, sb), _ = shapes
    a, b = values(sa, seed, dtype), values(sb, seed + 1, dtype)
    out = fn(tensor(a), tensor(b))
    with np.errstate(all="ignore"):
        expected = np_fn(a, b)
    assert_matches_numpy(out, expected)
    rule = REGISTRY[op].abstract_eval(AbstractValue(sa, DTYPES[dtype]),
                                      AbstractValue(sb, DTYPES[dtype]))
    assert (rule.shape, rule.dtype) == (out.shape, out.dtype)


@pytest.mark.parametrize("op", sorted(BINARY))
@FEW
@given(shape=shapes, number=st.one_of(st.integers(-3, 3), st.floats(-3, 3)),
       dtype=st.sampled_from(["float32", "float64"]), reflected=st.booleans(), seed=seeds)
def test_binary_op_with_python_number_keeps_the_tensor_dtype(op, shape, number, dtype,
                                                             reflected, seed):
    fn, np_fn = BINARY[op]
    a = values(shape, seed, dtype)
    out = fn(number, tensor(a)) if reflected else fn(tensor(a), number)
    with np.errstate(all="ignore"):
        expected = np_fn(number, a) if reflected else np_fn(a, number)
    assert out.dtype is (dg.bool_ if op in ("eq", "ne", "lt", "le", "gt", "ge")
                         else DTYPES[dtype])
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert_matches_numpy(out, expected, rtol=rtol)


# ------------------------------------------------------------------ every shape rule

def _avals_and_eval(name, args, params):
    prim = REGISTRY[name]
    rule = prim.abstract_eval(*(aval(a) for a in args), **params)
    out = dispatch(prim, *args, **params)
    return rule, out


@st.composite
def unary_float(draw):
    x = values(draw(shapes), draw(seeds), draw(st.sampled_from(["float32", "float64"])))
    return (tensor(np.abs(x) + 0.5),), {}


@st.composite
def unary_signed(draw):
    return (tensor(values(draw(shapes), draw(seeds),
                          draw(st.sampled_from(["float32", "float64", "int64"])))),), {}


@st.composite
def unary_integer(draw):
    return (tensor(values(draw(shapes), draw(seeds), draw(st.sampled_from(["int64", "bool"])))),
            ), {}


@st.composite
def cast_case(draw):
    x = values(draw(shapes), draw(seeds), draw(st.sampled_from(sorted(DTYPES))))
    return (tensor(x),), {"dtype": DTYPES[draw(st.sampled_from(sorted(DTYPES)))]}


@st.composite
def binary_case(draw, dtypes=("float32", "float64", "int64", "bool"), non_negative_b=False):
    (sa, sb), _ = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4,
                                                          max_side=3))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(seeds)
    a = tensor(values(sa, seed, dtype))
    if dtype.startswith("float") and draw(st.booleans()):
        return (a, draw(st.floats(0.5, 2.0))), {}  # a weak Python-number operand
    b = values(sb, seed + 1, dtype)
    return (a, tensor(np.abs(b) if non_negative_b else b)), {}


@st.composite
def where_case(draw):
    (sc, sa, sb), _ = draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=4,
                                                              max_side=3))
    dtype, seed = draw(st.sampled_from(["float32", "float64", "int64"])), draw(seeds)
    return (tensor(values(sc, seed, "bool")), tensor(values(sa, seed + 1, dtype)),
            tensor(values(sb, seed + 2, dtype))), {}


@st.composite
def reduce_case(draw, nonempty=False, dtypes=("float32", "float64", "int64", "bool")):
    shape = draw(nonempty_shapes if nonempty else shapes)
    axes = tuple(sorted(a % len(shape) for a in draw(hnp.valid_tuple_axes(len(shape)))))
    x = tensor(values(shape, draw(seeds), draw(st.sampled_from(dtypes))))
    return (x,), {"axes": axes, "keepdims": draw(st.booleans())}


@st.composite
def size_of_case(draw):
    (x,), p = draw(reduce_case())
    return (x,), {"axes": p["axes"], "dtype": draw(st.sampled_from([dg.float32, dg.float64,
                                                                    dg.int64]))}


@st.composite
def reshape_case(draw):
    shape = draw(shapes)
    dims = [d for d in shape if d != 1] + [1] * draw(st.integers(0, 2))
    new = draw(st.permutations(dims))
    if new and draw(st.booleans()) and math.prod(new) > 0:
        new[draw(st.integers(0, len(new) - 1))] = -1
    return (tensor(values(shape, draw(seeds))),), {"shape": tuple(new)}


@st.composite
def broadcast_case(draw):
    shape = draw(shapes)
    lead = draw(st.lists(st.integers(0, 3), max_size=2))
    target = [draw(st.integers(0, 3)) if d == 1 else draw(st.sampled_from([d, -1]))
              for d in shape]
    return (tensor(values(shape, draw(seeds))),), {"shape": tuple(lead + target)}


@st.composite
def permute_case(draw):
    shape = draw(shapes)
    perm = tuple(draw(st.permutations(range(len(shape)))))
    return (tensor(values(shape, draw(seeds))),), {"perm": perm}


@st.composite
def slice_params(draw, shape):
    starts, stops, steps = [], [], []
    for n in shape:
        a = draw(st.integers(0, n))
        starts.append(a)
        stops.append(draw(st.integers(a, n)))
        steps.append(draw(st.integers(1, 3)))
    return {"starts": tuple(starts), "stops": tuple(stops), "steps": tuple(steps)}


@st.composite
def slice_case(draw):
    shape = draw(shapes)
    return (tensor(values(shape, draw(seeds))),), draw(slice_params(shape))


@st.composite
def pad_case(draw):
    shape = draw(shapes)
    pads = tuple(tuple(draw(st.integers(0, 2)) for _ in range(3)) for _ in shape)
    return (tensor(values(shape, draw(seeds))),), {"pads": pads, "value": draw(st.floats(-2, 2))}


@st.composite
def concat_case(draw):
    shape = list(draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3)))
    axis = draw(st.integers(0, len(shape) - 1))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(0, 3))
        parts.append(tensor(values(tuple(shape), draw(seeds))))
    return tuple(parts), {"axis": axis}


@st.composite
def gather_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    axis = draw(st.integers(0, len(shape) - 1))
    ishape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    n = shape[axis]
    idx = np.random.default_rng(draw(seeds)).integers(-n, n, size=ishape)
    return (tensor(values(shape, draw(seeds))), tensor(idx)), {"axis": axis}


@st.composite
def scatter_case(draw):
    (x, idx), p = draw(gather_case())
    axis = p["axis"]
    src_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    return (x, idx, tensor(values(src_shape, draw(seeds)))), p


@st.composite
def scan_case(draw, prim):
    shape = draw(shapes)
    n = max(len(shape), 1)
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool"]))
    p = {"axis": draw(st.integers(-n, n - 1))}
    if prim != "cumprod":
        p["reverse" if prim == "cumsum" else "descending"] = draw(st.booleans())
    return (tensor(values(shape, draw(seeds), dtype)),), p


@st.composite
def matmul_case(draw):
    (ba, bb), _ = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2,
                                                          max_side=3))
    m, k, n = (draw(st.integers(0, 3)) for _ in range(3))
    dtype, seed = draw(st.sampled_from(["float32", "float64", "int64"])), draw(seeds)
    return (tensor(values(ba + (m, k), seed, dtype)),
            tensor(values(bb + (k, n), seed + 1, dtype))), {}


@st.composite
def _geometry(draw, nd: int):
    """stride, (lo, hi) padding, dilation per spatial dim and a kernel, drawn small."""
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = tuple((draw(st.integers(0, 1)), draw(st.integers(0, 1))) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    spatial = tuple(d * (k - 1) + 1 + draw(st.integers(0, 3)) for k, d in zip(kernel, dilation))
    return stride, padding, dilation, kernel, spatial


def _conv_out(spatial, kernel, stride, padding, dilation) -> tuple:
    return tuple((s + lo + hi - d * (k - 1) - 1) // st_ + 1 for s, k, st_, (lo, hi), d
                 in zip(spatial, kernel, stride, padding, dilation))


@st.composite
def conv_case(draw, name: str):
    """conv, conv_transpose or conv_weight_grad on a small 1-d or 2-d geometry."""
    nd = draw(st.integers(1, 2))
    stride, padding, dilation, kernel, spatial = draw(_geometry(nd))
    groups = draw(st.sampled_from([1, 2]))
    n, cin, cout = draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)), \
        groups * draw(st.integers(1, 2))
    dtype, seed = draw(st.sampled_from(["float32", "float64"])), draw(seeds)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    out = _conv_out(spatial, kernel, stride, padding, dilation)
    w = tensor(values((cout, cin // groups) + kernel, seed + 1, dtype))
    if name == "conv":
        return (tensor(values((n, cin) + spatial, seed, dtype)), w), geometry
    if name == "conv_transpose":
        return (tensor(values((n, cout) + out, seed, dtype)), w), {**geometry, "size": spatial}
    return (tensor(values((n, cin) + spatial, seed, dtype)),
            tensor(values((n, cout) + out, seed + 2, dtype))), {**geometry, "kernel": kernel}


@st.composite
def attention_case(draw, name: str):
    """flash_attention (q, k, v[, mask]) or its backward (q, k, v, o, do[, mask]): leading
    dims, L, S, E, Ev of a few each; no mask, a bool one or a float one broadcast to the
    scores; causal or not."""
    lead = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(0, 2))))
    L, S, E, Ev = (draw(st.integers(1, 4)) for _ in range(4))
    dtype, seed = draw(st.sampled_from(["float32", "float64"])), draw(seeds)
    q, k, v = (tensor(values(lead + shape, seed + i, dtype))
               for i, shape in enumerate(((L, E), (S, E), (S, Ev))))
    kind = draw(st.sampled_from([None, "bool", "float"]))
    mask = [] if kind is None else [tensor(values((L, S), seed + 3, dtype) > 0)
                                    if kind == "bool" else
                                    tensor(values((1,) * len(lead) + (L, S), seed + 3, dtype))]
    params = {"scale": draw(st.sampled_from([0.5, 1.0])), "causal": draw(st.booleans())}
    if name == "flash_attention":
        return (q, k, v, *mask), params
    o, do = (tensor(values(lead + (L, Ev + 1), seed + i, dtype)) for i in (4, 5))
    return (q, k, v, o, do, *mask), params


@st.composite
def max_pool_case(draw):
    nd = draw(st.integers(1, 2))
    stride, padding, dilation, kernel, spatial = draw(_geometry(nd))
    padding = tuple((min(lo, k // 2), min(hi, k // 2)) for (lo, hi), k in zip(padding, kernel))
    lead = tuple(draw(st.integers(1, 2)) for _ in range(draw(st.integers(1, 2))))
    dtype, seed = draw(st.sampled_from(["float32", "float64", "int64"])), draw(seeds)
    return (tensor(values(lead + spatial, seed, dtype)),), {
        "kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}


@st.composite
def adaptive_max_case(draw):
    nd = draw(st.integers(1, 2))
    spatial = tuple(draw(st.integers(1, 6)) for _ in range(nd))
    out = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dtype, seed = draw(st.sampled_from(["float32", "float64"])), draw(seeds)
    return (tensor(values((2, 3) + spatial, seed, dtype)),), {"output_size": out}


@st.composite
def full_case(draw):
    return (), {"shape": draw(shapes), "value": draw(st.integers(-3, 3)),
                "dtype": draw(st.sampled_from(list(DTYPES.values())))}


@st.composite
def iota_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    return (), {"shape": shape, "axis": draw(st.integers(0, len(shape) - 1)),
                "start": draw(st.sampled_from([0, 2, 0.5])),
                "step": draw(st.sampled_from([1, 3, 0.25])),
                "dtype": draw(st.sampled_from([dg.int64, dg.float32, dg.float64]))}


@st.composite
def random_case(draw):
    state = tensor(np.array([draw(st.integers(0, 2**40)), draw(st.integers(0, 100))],
                            dtype=np.int64))
    return (state,), {"shape": draw(shapes), "dist": draw(st.sampled_from(["uniform",
                                                                           "normal"])),
                      "dtype": draw(st.sampled_from([dg.float32, dg.float64]))}


@st.composite
def index_check_case(draw):
    size = draw(st.integers(1, 5))
    ishape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    op = draw(st.sampled_from(["gather", "index", "one_hot"]))
    low = 0 if op == "one_hot" else -size
    idx = np.random.default_rng(draw(seeds)).integers(low, size, size=ishape)
    return (tensor(idx),), {"size": size, "dim": draw(st.integers(0, 2)), "op": op}


VALID_INPUTS = {
    **{name: unary_float() for name in ("floor", "ceil", "round", "exp", "log", "log1p",
                                        "sqrt", "sin", "cos", "tanh", "sigmoid", "erf",
                                        "asin", "acos", "atan")},
    **{name: unary_signed() for name in ("neg", "abs", "sign")},
    "cast": cast_case(),
    **{name: binary_case(("float32", "float64", "int64"))
       for name in ("add", "sub", "mul", "maximum", "minimum")},
    "pow": binary_case(("float32", "float64", "int64"), non_negative_b=True),  # ints: no x**-1
    "div": binary_case(("float32", "float64")),
    "atan2": binary_case(("float32", "float64")),
    **{name: binary_case() for name in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{name: binary_case(("int64", "bool"))
       for name in ("bitwise_and", "bitwise_or", "bitwise_xor")},
    **{name: binary_case(("int64",)) for name in ("bitwise_left_shift", "bitwise_right_shift")},
    "bitwise_not": unary_integer(),
    "where": where_case(),
    "sum": reduce_case(),
    "max": reduce_case(nonempty=True, dtypes=("float32", "float64", "int64")),
    "size_of": size_of_case(),
    "reshape": reshape_case(),
    "broadcast": broadcast_case(),
    "permute": permute_case(),
    "slice": slice_case(),
    "pad": pad_case(),
    "concat": concat_case(),
    "gather": gather_case(),
    "index_check": index_check_case(),
    "scatter_add": scatter_case(),
    "matmul": matmul_case(),
    "full": full_case(),
    "iota": iota_case(),
    "random": random_case(),
    **{name: scan_case(name) for name in ("cumsum", "cumprod", "argsort")},
    **{name: conv_case(name) for name in ("conv", "conv_transpose", "conv_weight_grad")},
    **{name: attention_case(name) for name in ("flash_attention",
                                                "flash_attention_backward")},
    "max_pool_indices": max_pool_case(),
    "adaptive_max_indices": adaptive_max_case(),
}


def test_every_primitive_has_a_valid_input_strategy():
    # (the collectives' impls communicate: their shape rules meet their results on MPI ranks,
    # where the IR verifier checks every traced node: tests/mpi/compiled.py, single.py)
    assert set(VALID_INPUTS) == {n for n, p in REGISTRY.items() if p.kind != "collective"}


@pytest.mark.parametrize("name", sorted(VALID_INPUTS))
@FEW
@given(data=st.data())
def test_shape_rule_agrees_with_impl_on_random_valid_inputs(name, data):
    args, params = data.draw(VALID_INPUTS[name])
    rule, out = _avals_and_eval(name, args, params)
    assert (rule.shape, rule.dtype) == (out.shape, out.dtype)
    assert out.numpy(force=True).dtype == out.dtype.np


# ------------------------------------------------------------------ reductions vs numpy

def random_dims(ndim):
    """None (all dims) or a non-empty tuple of distinct dims, possibly negative."""
    if ndim == 0:
        return st.none()
    return st.one_of(st.none(), hnp.valid_tuple_axes(ndim, min_size=1))


REDUCTIONS = {"sum": (dg.sum, np.sum), "amax": (dg.amax, np.max), "mean": (dg.mean, np.mean),
              "amin": (dg.amin, np.min)}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SOME
@given(shape=shapes, data=st.data(), keepdim=st.booleans(), seed=seeds)
def test_reduction_over_random_axes_equals_numpy(name, shape, data, keepdim, seed):
    fn, np_fn = REDUCTIONS[name]
    dims = data.draw(random_dims(len(shape)))
    if name in ("amax", "amin"):  # no identity: reduced dims must be non-empty
        reduced = range(len(shape)) if dims is None else dims
        assume(all(shape[d] > 0 for d in reduced))
    x = values(shape, seed)
    with warnings.catch_warnings():  # numpy warns on the mean of an empty slice (nan)
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np_fn(x, axis=dims, keepdims=keepdim)
    assert_matches_numpy(fn(tensor(x), dims, keepdim), expected, rtol=1e-12)


@SOME
@given(shape=shapes, data=st.data(), keepdim=st.booleans(),
       dtype=st.sampled_from(["int64", "bool"]), seed=seeds)
def test_sum_of_integers_and_bools_is_int64_and_equals_numpy(shape, data, keepdim, dtype, seed):
    dims = data.draw(random_dims(len(shape)))
    x = values(shape, seed, dtype)
    out = dg.sum(tensor(x), dims, keepdim)
    assert out.dtype is dg.int64
    np.testing.assert_array_equal(out.numpy(), np.sum(x, axis=dims, keepdims=keepdim))


# ------------------------------------------------------------------ movement round trips

@SOME
@given(data=st.data())
def test_reshape_there_and_back_is_the_identity(data):
    (x,), p = data.draw(reshape_case())
    y = x.reshape(p["shape"])
    assert y.numel() == x.numel()
    np.testing.assert_array_equal(y.reshape(x.shape).numpy(), x.numpy())
    np.testing.assert_array_equal(y.numpy(), x.numpy().reshape(p["shape"]))


@SOME
@given(data=st.data())
def test_permute_then_inverse_permute_is_the_identity(data):
    (x,), p = data.draw(permute_case())
    perm = p["perm"]
    y = x.permute(perm)
    np.testing.assert_array_equal(y.numpy(), np.transpose(x.numpy(), perm))
    np.testing.assert_array_equal(y.permute(tuple(np.argsort(perm))).numpy(), x.numpy())


@SOME
@given(data=st.data())
def test_slice_vjp_puts_the_gradient_back_where_the_slice_came_from(data):
    (x,), p = data.draw(slice_case())
    x.requires_grad_()
    y = dispatch(REGISTRY["slice"], x, **p)
    key = tuple(slice(a, b, c) for a, b, c in zip(p["starts"], p["stops"], p["steps"]))
    np.testing.assert_array_equal(y.detach().numpy(), x.detach().numpy()[key])
    g = np.random.default_rng(0).standard_normal(y.shape)
    y.backward(tensor(g))
    expected = np.zeros(x.shape)
    expected[key] = g
    np.testing.assert_array_equal(x.grad.numpy(), expected)


@SOME
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5), data=st.data(),
       seed=seeds)
def test_split_then_cat_is_the_identity(shape, data, seed):
    dim = data.draw(st.integers(0, len(shape) - 1))
    size = data.draw(st.integers(1, 3))
    x = tensor(values(shape, seed))
    pieces = dg.split(x, size, dim)
    assert all(p.shape[dim] <= size for p in pieces)
    np.testing.assert_array_equal(dg.cat(pieces, dim).numpy(), x.numpy())


@SOME
@given(data=st.data())
def test_pad_then_slice_recovers_the_input(data):
    (x,), p = data.draw(pad_case())
    y = dispatch(REGISTRY["pad"], x, **p)
    key = tuple(slice(lo, lo + (n - 1) * (it + 1) + 1 if n else lo, it + 1)
                for n, (lo, _, it) in zip(x.shape, p["pads"]))
    np.testing.assert_array_equal(y.numpy()[key], x.numpy())


# ------------------------------------------------------------------ gradients have input shapes

UNARY = ["neg", "abs", "exp", "log", "sqrt", "sin", "cos", "tanh", "erf", "sigmoid", "relu",
         "gelu", "square", "reciprocal"]


@pytest.mark.parametrize("name", UNARY)
@FEW
@given(shape=shapes, seed=seeds)
def test_gradient_of_sum_of_an_elementwise_function_has_the_input_shape(name, shape, seed):
    x = tensor(np.abs(values(shape, seed)) + 0.5, requires_grad=True)
    getattr(dg, name)(x).sum().backward()
    assert x.grad.shape == x.shape
    assert x.grad.dtype is x.dtype


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow", "maximum", "minimum"])
@FEW
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, min_side=0,
                                                max_side=3), seed=seeds)
def test_gradient_of_a_broadcast_binary_op_has_each_input_shape(op, shapes, seed):
    (sa, sb), _ = shapes
    a = tensor(np.abs(values(sa, seed)) + 0.5, requires_grad=True)
    b = tensor(np.abs(values(sb, seed + 1)) + 0.5, requires_grad=True)
    getattr(dg, op)(a, b).sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


# ------------------------------------------------------------------ matmul


@SOME
@given(shapes=hnp.mutually_broadcastable_shapes(signature="(m?,n),(n,p?)->(m?,p?)",
                                                max_dims=4, min_side=1, max_side=3), seed=seeds)
def test_matmul_broadcasts_batch_dims_and_promotes_vectors_like_numpy(shapes, seed):
    (sa, sb), result = shapes
    a = tensor(values(sa, seed), requires_grad=True)
    b = tensor(values(sb, seed + 1), requires_grad=True)
    out = dg.matmul(a, b)
    assert out.shape == result
    assert_matches_numpy(out, np.matmul(a.detach().numpy(), b.detach().numpy()), rtol=1e-12)
    out.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape


# ------------------------------------------------------------------ getitem


@st.composite
def basic_keys(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    key = draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    parts = key if isinstance(key, tuple) else (key,)
    # dyngrad, like PyTorch, only has positive steps
    assume(not any(isinstance(k, slice) and k.step is not None and k.step < 0 for k in parts))
    return shape, key


@SOME
@given(case=basic_keys(), seed=seeds)
@example(case=((), ()), seed=0)  # x[()] of a 0-d tensor once came back as a copy
def test_getitem_with_basic_indices_equals_numpy_and_is_a_view(case, seed):
    shape, key = case
    arr = values(shape, seed)
    x = tensor(arr.copy())
    y = x[key]
    expected = arr[key]
    np.testing.assert_array_equal(y.numpy(), expected)
    if y.numel():  # a write through the result is seen by x
        y.fill_(100.0)
        arr[key] = 100.0
        np.testing.assert_array_equal(x.numpy(), arr)


@SOME
@given(case=basic_keys(), seed=seeds)
def test_getitem_gradient_scatters_ones_to_the_selected_elements(case, seed):
    shape, key = case
    x = tensor(values(shape, seed), requires_grad=True)
    x[key].sum().backward()
    expected = np.zeros(shape)
    expected[key] = 1.0
    np.testing.assert_array_equal(x.grad.numpy(), expected)
