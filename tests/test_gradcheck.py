"""Every derivative dyngrad defines, checked against float64 central finite differences.

``dg.testing.gradcheck`` compares both the reverse-mode (vjp) and the forward-mode (jvp)
Jacobian with finite differences, so each case below pins two rules at once. Inputs are kept
away from the points where a function is not differentiable (0 for abs/sqrt/log, ties for
max/min, integers for floor and ceil, halves for round), since finite differences are
meaningless there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.dispatch import dispatch
from dyngrad.forward_ad import jvp
from dyngrad.ops import REGISTRY
from dyngrad.testing import GradcheckError, gradcheck, gradgradcheck


@pytest.fixture(autouse=True)
def _seeded():
    dg.manual_seed(0)


# ------------------------------------------------------------------ inputs


def leaf(*shape):
    """Standard normal float64 leaf."""
    return dg.randn(*shape, dtype=dg.float64, requires_grad=True)


def positive(*shape):
    """Uniform in [0.5, 2.5): the domain of log, sqrt and a pow base."""
    return (dg.rand(*shape, dtype=dg.float64) * 2.0 + 0.5).requires_grad_()


def inside_unit(*shape):
    """Uniform in [-0.9, 0.9): inside the domain of asin and acos, away from its edges."""
    return (dg.rand(*shape, dtype=dg.float64) * 1.8 - 0.9).requires_grad_()


def away_from_zero(*shape):
    """Normal values pushed at least 0.3 away from 0 (abs, sign, relu, a divisor)."""
    x = dg.randn(*shape, dtype=dg.float64)
    return (x + x.sign() * 0.3).requires_grad_()


def distinct(*shape):
    """A random arrangement of values 0.1 apart, none near 0, an integer or a half and no two
    with equal absolute value: no ties for max/min/norm(inf), no kinks for abs/floor/round."""
    n = math.prod(shape)
    perm = dg.randperm(n).double()
    return (perm.reshape(shape) * 0.1 - (n * 0.1 / 3 - 0.013)).requires_grad_()


def index(values):
    return dg.tensor(values, dtype=dg.int64)


def prim(name):
    return REGISTRY[name]


# ------------------------------------------------------------------ the op table

# Primitives whose result carries no derivative: comparisons give bools, bitwise ops integers
# or bools, size_of a count, index_check and the max-pool argmaxes integer indices, and
# creation/random ops have no differentiable inputs. The collectives' IR records are recorded
# under no_grad, as in-place collectives record nothing for autograd (the differentiable
# collectives, dist.nn.functional, are records of dyngrad/distributed/collectives.py with
# their own vjps, tested on 2 ranks: tests/mpi/collectives.py).
NON_DIFFERENTIABLE = {"eq", "ne", "lt", "le", "gt", "ge", "size_of", "full", "iota", "random",
                      "index_check", "max_pool_indices", "adaptive_max_indices", "argsort",
                      "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
                      "bitwise_left_shift", "bitwise_right_shift", "all_reduce_start",
                      "broadcast_start", "all_gather_start", "reduce_scatter_start",
                      "collective_wait"}


def test_every_primitive_has_vjp_and_jvp_rules_or_is_listed_as_non_differentiable():
    missing = [name for name, p in REGISTRY.items()
               if name not in NON_DIFFERENTIABLE and (p.vjp is None or p.jvp is None)]
    assert not missing, (f"primitives {missing} have a floating-point output but lack a vjp "
                         f"or jvp rule; add the rules (and a case in PRIMITIVE_CASES)")


def test_non_differentiable_allow_list_names_only_existing_primitives_without_vjp():
    assert NON_DIFFERENTIABLE <= set(REGISTRY)
    assert all(REGISTRY[name].vjp is None for name in NON_DIFFERENTIABLE)


_CONV = dict(stride=(2, 1), padding=((1, 0), (1, 1)), dilation=(1, 1), groups=2)

# One case per differentiable primitive, dispatched directly (no front-end promotion or
# composites in between). Each entry: name -> (fn, make_inputs).
PRIMITIVE_CASES = {
    "neg": (lambda x: dispatch(prim("neg"), x), lambda: (leaf(2, 3),)),
    "abs": (lambda x: dispatch(prim("abs"), x), lambda: (away_from_zero(2, 3),)),
    "sign": (lambda x: dispatch(prim("sign"), x), lambda: (away_from_zero(2, 3),)),
    "floor": (lambda x: dispatch(prim("floor"), x), lambda: (distinct(2, 3),)),
    "round": (lambda x: dispatch(prim("round"), x), lambda: (distinct(2, 3),)),
    "ceil": (lambda x: dispatch(prim("ceil"), x), lambda: (distinct(2, 3),)),
    "exp": (lambda x: dispatch(prim("exp"), x), lambda: (leaf(2, 3),)),
    "log": (lambda x: dispatch(prim("log"), x), lambda: (positive(2, 3),)),
    "log1p": (lambda x: dispatch(prim("log1p"), x), lambda: (positive(2, 3) - 1.2,)),
    "sqrt": (lambda x: dispatch(prim("sqrt"), x), lambda: (positive(2, 3),)),
    "sin": (lambda x: dispatch(prim("sin"), x), lambda: (leaf(2, 3),)),
    "cos": (lambda x: dispatch(prim("cos"), x), lambda: (leaf(2, 3),)),
    "tanh": (lambda x: dispatch(prim("tanh"), x), lambda: (leaf(2, 3),)),
    "asin": (lambda x: dispatch(prim("asin"), x), lambda: (inside_unit(2, 3),)),
    "acos": (lambda x: dispatch(prim("acos"), x), lambda: (inside_unit(2, 3),)),
    "atan": (lambda x: dispatch(prim("atan"), x), lambda: (leaf(2, 3) * 3.0,)),
    "atan2": (lambda a, b: dispatch(prim("atan2"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "erf": (lambda x: dispatch(prim("erf"), x), lambda: (leaf(2, 3),)),
    "sigmoid": (lambda x: dispatch(prim("sigmoid"), x), lambda: (leaf(2, 3) * 4.0,)),
    "cast": (lambda x: dispatch(prim("cast"), x, dtype=dg.float64), lambda: (leaf(2, 3),)),
    "add": (lambda a, b: dispatch(prim("add"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "sub": (lambda a, b: dispatch(prim("sub"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "mul": (lambda a, b: dispatch(prim("mul"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "div": (lambda a, b: dispatch(prim("div"), a, b), lambda: (leaf(2, 3), away_from_zero(3))),
    "pow": (lambda a, b: dispatch(prim("pow"), a, b), lambda: (positive(2, 3), leaf(3))),
    "maximum": (lambda a, b: dispatch(prim("maximum"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "minimum": (lambda a, b: dispatch(prim("minimum"), a, b), lambda: (leaf(2, 3), leaf(3))),
    "where": (lambda a, b: dispatch(prim("where"), dg.tensor([True, False, True]), a, b),
              lambda: (leaf(2, 3), leaf(2, 1))),
    "sum": (lambda x: dispatch(prim("sum"), x, axes=(0, 2), keepdims=False),
            lambda: (leaf(2, 3, 4),)),
    "max": (lambda x: dispatch(prim("max"), x, axes=(1,), keepdims=True),
            lambda: (distinct(2, 3, 4),)),
    "reshape": (lambda x: dispatch(prim("reshape"), x, shape=(4, 6)),
                lambda: (leaf(2, 3, 4),)),
    "broadcast": (lambda x: dispatch(prim("broadcast"), x, shape=(2, 3, 4)),
                  lambda: (leaf(3, 1),)),
    "permute": (lambda x: dispatch(prim("permute"), x, perm=(2, 0, 1)),
                lambda: (leaf(2, 3, 4),)),
    "slice": (lambda x: dispatch(prim("slice"), x, starts=(0, 1, 1), stops=(2, 3, 4),
                                 steps=(1, 1, 2)), lambda: (leaf(2, 3, 4),)),
    "pad": (lambda x: dispatch(prim("pad"), x, pads=((1, 2, 1), (0, 1, 0)), value=1.5),
            lambda: (leaf(2, 3),)),
    "concat": (lambda a, b: dispatch(prim("concat"), a, b, axis=1),
               lambda: (leaf(2, 3), leaf(2, 2))),
    "gather": (lambda x: dispatch(prim("gather"), x, index([[0, 2], [-1, 0]]), axis=1),
               lambda: (leaf(2, 3, 2),)),
    "scatter_add": (lambda base, src: dispatch(prim("scatter_add"), base,
                                               index([0, 2, 0]), src, axis=1),
                    lambda: (leaf(2, 3), leaf(2, 3))),
    "matmul": (lambda a, b: dispatch(prim("matmul"), a, b), lambda: (leaf(2, 3, 4), leaf(4, 2))),
    # (every stride/padding/dilation/groups variant: tests/test_conv.py)
    "conv": (lambda x, w: dispatch(prim("conv"), x, w, **_CONV), lambda: (leaf(1, 4, 5, 6),
                                                                          leaf(2, 2, 2, 3))),
    "conv_transpose": (lambda y, w: dispatch(prim("conv_transpose"), y, w, size=(5, 6),
                                             **_CONV), lambda: (leaf(1, 2, 3, 5),
                                                                leaf(2, 2, 2, 3))),
    "conv_weight_grad": (lambda x, g: dispatch(prim("conv_weight_grad"), x, g, kernel=(2, 3),
                                               **_CONV), lambda: (leaf(1, 4, 5, 6),
                                                                  leaf(1, 2, 3, 5))),
    # (masks, dead rows, both directions' higher orders: tests/test_flash_attention.py)
    "flash_attention": (lambda q, k, v: dispatch(prim("flash_attention"), q, k, v, scale=0.7,
                                                 causal=True),
                        lambda: (leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 3))),
    "flash_attention_backward": (
        lambda q, k, v, o, do: dispatch(prim("flash_attention_backward"), q, k, v, o, do,
                                        scale=0.7, causal=False),
        lambda: (leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 3), leaf(2, 3, 4) * 0.5, leaf(2, 3, 4))),
    "cumsum": (lambda x: dispatch(prim("cumsum"), x, axis=1, reverse=False),
               lambda: (leaf(2, 3, 4),)),
    "cumprod": (lambda x: dispatch(prim("cumprod"), x, axis=2), lambda: (leaf(2, 3, 4),)),
}


def test_every_differentiable_primitive_has_a_gradcheck_case():
    differentiable = {name for name, p in REGISTRY.items() if p.vjp is not None}
    assert set(PRIMITIVE_CASES) == differentiable


@pytest.mark.parametrize("name", sorted(PRIMITIVE_CASES))
def test_primitive_vjp_and_jvp_match_finite_differences(name):
    fn, make = PRIMITIVE_CASES[name]
    inputs = [x.detach().requires_grad_() for x in make()]  # fresh contiguous leaves
    assert gradcheck(fn, inputs)


# ------------------------------------------------------------------ broadcasting


SHAPE_PAIRS = [
    ((2, 3), (2, 3)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 3, 4)),
    ((3, 1), (1, 4)),
    ((2, 1, 4), (3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (2, 3)),
    ((2, 1), (2, 3)),
    ((), ()),
]

BINARY = {
    "add": (dg.add, leaf, leaf),
    "sub": (dg.sub, leaf, leaf),
    "mul": (dg.mul, leaf, leaf),
    "div": (dg.div, leaf, away_from_zero),
    "pow": (dg.pow, positive, leaf),
    "maximum": (dg.maximum, leaf, leaf),
    "minimum": (dg.minimum, leaf, leaf),
}


@pytest.mark.parametrize("shapes", SHAPE_PAIRS, ids=str)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_op_gradients_sum_back_over_broadcast_dims(op, shapes):
    fn, make_a, make_b = BINARY[op]
    a, b = make_a(*shapes[0]), make_b(*shapes[1])
    assert gradcheck(fn, (a, b))


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3), (2, 3)), ((3,), (2, 1), ()),
                                    ((2, 1), (3,), (2, 3)), ((), (2, 3), (3,))], ids=str)
def test_where_gradients_route_to_the_chosen_branch_and_sum_over_broadcast(shapes):
    cs, sa, sb = shapes
    cond = dg.rand(*cs) > 0.5
    assert gradcheck(lambda a, b: dg.where(cond, a, b), (leaf(*sa), leaf(*sb)))


PYTHON_NUMBER_OPERANDS = {
    "x + 2.5": (lambda x: x + 2.5, leaf),
    "2.5 + x": (lambda x: 2.5 + x, leaf),
    "x + 2 (int)": (lambda x: x + 2, leaf),
    "x - 1.5": (lambda x: x - 1.5, leaf),
    "1.5 - x": (lambda x: 1.5 - x, leaf),
    "x * 3": (lambda x: x * 3, leaf),
    "3.0 * x": (lambda x: 3.0 * x, leaf),
    "x / 2": (lambda x: x / 2, leaf),
    "2 / x": (lambda x: 2 / x, away_from_zero),
    "x ** 3": (lambda x: x ** 3, leaf),
    "x ** 2.5": (lambda x: x ** 2.5, positive),
    "x ** -0.5": (lambda x: x ** -0.5, positive),
    "2.0 ** x": (lambda x: 2.0 ** x, leaf),
    "maximum(x, 0.1)": (lambda x: dg.maximum(x, 0.1), distinct),
    "minimum(0.1, x)": (lambda x: dg.minimum(0.1, x), distinct),
    "where(c, x, 0.0)": (lambda x: dg.where(x > 0, x, 0.0), away_from_zero),
    "where(c, 1.0, x)": (lambda x: dg.where(x > 0, 1.0, x), away_from_zero),
    "add(x, 2, alpha=3)": (lambda x: dg.add(x, 2, alpha=3), leaf),
    "sub(x, y=x, alpha=0.5)": (lambda x: dg.sub(x, x, alpha=0.5), leaf),
}


@pytest.mark.parametrize("case", sorted(PYTHON_NUMBER_OPERANDS))
@pytest.mark.parametrize("shape", [(), (2, 3)], ids=str)
def test_binary_op_with_python_number_operand_differentiates_the_tensor_side(case, shape):
    fn, make = PYTHON_NUMBER_OPERANDS[case]
    x = make(*shape)
    out = fn(x)
    assert out.dtype is dg.float64  # a Python number never promotes the tensor
    assert gradcheck(fn, (x,))


# ------------------------------------------------------------------ reductions

DIMS = [None, 0, 1, 2, -1, (0, 1), (0, 2), (1, 2), (0, 1, 2), (-1, 0)]
INT_DIMS = [None, 0, 1, 2, -1]

REDUCTIONS = {
    "sum": (lambda x, d, k: dg.sum(x, d, k), leaf),
    "amax": (lambda x, d, k: dg.amax(x, d, k), distinct),
    "amin": (lambda x, d, k: dg.amin(x, d, k), distinct),
    "mean": (lambda x, d, k: dg.mean(x, d, k), leaf),
    "var": (lambda x, d, k: dg.var(x, d, keepdim=k), leaf),
    "var_correction0": (lambda x, d, k: dg.var(x, d, correction=0, keepdim=k), leaf),
    "std": (lambda x, d, k: dg.std(x, d, keepdim=k), leaf),
    "logsumexp": (lambda x, d, k: dg.logsumexp(x, d, k), leaf),
    "norm_p1": (lambda x, d, k: dg.norm(x, 1, d, k), away_from_zero),
    "norm_p2": (lambda x, d, k: dg.norm(x, 2, d, k), leaf),
    "norm_pinf": (lambda x, d, k: dg.norm(x, float("inf"), d, k), distinct),
    "norm_p3": (lambda x, d, k: dg.norm(x, 3, d, k), away_from_zero),
}

INT_DIM_REDUCTIONS = {  # PyTorch takes a single int dim for these
    "prod": (lambda x, d, k: dg.prod(x, d, k), leaf),
    "max_values": (lambda x, d, k: dg.max(x, d, k)[0] if d is not None else dg.max(x),
                   distinct),
    "min_values": (lambda x, d, k: dg.min(x, d, k)[0] if d is not None else dg.min(x),
                   distinct),
}


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_gradient_matches_finite_differences_for_every_axis_set(name, dim, keepdim):
    fn, make = REDUCTIONS[name]
    x = make(2, 3, 4)
    assert gradcheck(lambda x: fn(x, dim, keepdim), (x,))


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", INT_DIMS, ids=str)
@pytest.mark.parametrize("name", sorted(INT_DIM_REDUCTIONS))
def test_single_dim_reduction_gradient_matches_finite_differences(name, dim, keepdim):
    fn, make = INT_DIM_REDUCTIONS[name]
    x = make(2, 3, 4)
    assert gradcheck(lambda x: fn(x, dim, keepdim), (x,))


def test_prod_with_a_zero_gets_the_product_of_the_others_as_gradient():
    x = dg.tensor([[2.0, 0.0, 3.0], [1.5, -1.0, 0.5]], dtype=dg.float64, requires_grad=True)
    assert gradcheck(lambda x: dg.prod(x, 1), (x,))
    dg.prod(x, 1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 6.0, 0.0], [-0.5, 0.75, -1.5]])


def test_prod_rejects_several_dims_instead_of_reducing_only_the_first():
    with pytest.raises(TypeError, match="prod"):
        dg.prod(leaf(2, 3, 4), (0, 1))


def test_amax_splits_the_gradient_evenly_among_ties():
    x = dg.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=dg.float64, requires_grad=True)
    dg.amax(x, 1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_max_with_dim_sends_the_gradient_to_the_returned_index_only():
    x = dg.tensor([[1.0, 3.0, 3.0]], dtype=dg.float64, requires_grad=True)
    values, indices = dg.max(x, 1)
    values.sum().backward()
    assert indices.tolist() == [1]
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 1.0, 0.0]])


def test_norm_2_gradient_is_zero_at_the_origin():
    x = dg.zeros(3, dtype=dg.float64, requires_grad=True)
    dg.norm(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])


# ------------------------------------------------------------------ composites

COMPOSITES = {
    "softmax dim 0": (lambda x: dg.softmax(x, 0), leaf, (2, 3, 4)),
    "softmax dim -1": (lambda x: x.softmax(-1), leaf, (2, 3, 4)),
    "log_softmax dim 1": (lambda x: dg.log_softmax(x, 1), leaf, (2, 3, 4)),
    "log_softmax dim -1": (lambda x: x.log_softmax(-1), leaf, (2, 3, 4)),
    "relu": (dg.relu, away_from_zero, (2, 3)),
    "sigmoid": (dg.sigmoid, leaf, (2, 3)),
    "sigmoid of large magnitudes": (lambda x: dg.sigmoid(x * 15.0), leaf, (2, 3)),
    "gelu": (dg.gelu, leaf, (2, 3)),
    "gelu tanh": (lambda x: dg.gelu(x, approximate="tanh"), leaf, (2, 3)),
    "clamp min max": (lambda x: dg.clamp(x, -0.45, 0.45), distinct, (2, 3)),
    "clamp min": (lambda x: x.clamp(min=0.05), distinct, (2, 3)),
    "clamp max": (lambda x: x.clamp(max=0.05), distinct, (2, 3)),
    "masked_fill": (lambda x: dg.masked_fill(x, dg.tensor([True, False, True]), 2.0), leaf,
                    (2, 3)),
    "one_hot times x": (lambda x: dg.one_hot(index([0, 2, 1]), 3).double() * x, leaf, (3, 3)),
    "reciprocal": (dg.reciprocal, away_from_zero, (2, 3)),
    "rsqrt": (dg.rsqrt, positive, (2, 3)),
    "square": (dg.square, leaf, (2, 3)),
    "round decimals 2": (lambda x: dg.round(x, decimals=2), distinct, (2, 3)),
    "round decimals -1": (lambda x: (x * 100.0).round(decimals=-1), distinct, (2, 3)),
    "mean all": (lambda x: x.mean(), leaf, (2, 3)),
    "amin dim": (lambda x: x.amin(1), distinct, (2, 3)),
    "flatten": (lambda x: dg.flatten(x, 1), leaf, (2, 3, 4)),
    "squeeze": (lambda x: dg.squeeze(x), leaf, (2, 1, 3, 1)),
    "squeeze dim": (lambda x: x.squeeze(1), leaf, (2, 1, 3)),
    "unsqueeze": (lambda x: dg.unsqueeze(x, -1), leaf, (2, 3)),
    "expand": (lambda x: x.expand(2, 3, 4), leaf, (3, 1)),
    "expand -1": (lambda x: x.expand(4, -1, 3), leaf, (2, 1)),
    "T": (lambda x: x.T, leaf, (2, 3, 4)),
    "mT": (lambda x: x.mT, leaf, (2, 3, 4)),
    "transpose": (lambda x: dg.transpose(x, 0, 2), leaf, (2, 3, 4)),
    "permute": (lambda x: x.permute(1, 2, 0), leaf, (2, 3, 4)),
    "reshape -1": (lambda x: x.reshape(3, -1), leaf, (2, 3, 2)),
    "reshape of a transpose": (lambda x: x.T.reshape(-1), leaf, (2, 3)),
    "view": (lambda x: x.view(6, 2), leaf, (2, 3, 2)),
    "narrow": (lambda x: dg.narrow(x, 1, 1, 2), leaf, (2, 4)),
    "repeat": (lambda x: x.repeat(2, 1, 3), leaf, (2, 3)),
    "chunk": (lambda x: dg.chunk(x, 3, 1), leaf, (2, 7)),
    "split sizes": (lambda x: dg.split(x, [1, 3], 1), leaf, (2, 4)),
    "split int": (lambda x: x.split(2, 0), leaf, (5, 2)),
    "unbind": (lambda x: dg.unbind(x, 1), leaf, (2, 3)),
    "stack": (lambda x: dg.stack([x, x * 2, x.sin()], 1), leaf, (2, 3)),
    "cat": (lambda x: dg.cat([x, x[:, :1], x.exp()], 1), leaf, (2, 3)),
    "pad with negative crop": (lambda x: dg.ops.movement.pad(x, [(1, -1), (-1, 2, 1)]), leaf,
                               (3, 3)),
    "take_along_dim": (lambda x: dg.take_along_dim(x, index([[0, 2, 2], [1, 1, 0]]), 1), leaf,
                       (2, 3)),
    "Tensor.gather negative index": (lambda x: x.gather(0, index([[1, -2, 0]])), leaf, (2, 3)),
    "index_select": (lambda x: dg.index_select(x, 1, index([2, 0, 2])), leaf, (2, 3)),
    "outer": (lambda x: dg.outer(x, x.cos()), leaf, (3,)),
}


@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_gradient_matches_finite_differences(name):
    fn, make, shape = COMPOSITES[name]
    assert gradcheck(fn, (make(*shape),))


TWO_INPUT_COMPOSITES = {
    "clamp with tensor bounds": (lambda x, y: dg.clamp(x, y - 0.5, y + 0.5), distinct, leaf),
    "max(x, y) elementwise": (lambda x, y: dg.max(x, y), leaf, leaf),
    "min(x, other=y)": (lambda x, y: x.min(other=y), leaf, leaf),
    "masked_fill with a 0-d tensor value": (
        lambda x, y: x.masked_fill(dg.tensor([False, True, True]), y[0, 0]), leaf, leaf),
    "stack of two": (lambda x, y: dg.stack([x, y], -1), leaf, leaf),
    "cat of two": (lambda x, y: dg.cat([x, y], 0), leaf, leaf),
    "var of a difference": (lambda x, y: (x - y).var(0, correction=0), leaf, leaf),
    "logsumexp of a sum": (lambda x, y: dg.logsumexp(x + y, 1), leaf, leaf),
}


@pytest.mark.parametrize("name", sorted(TWO_INPUT_COMPOSITES))
def test_two_input_composite_gradient_matches_finite_differences(name):
    fn, make_x, make_y = TWO_INPUT_COMPOSITES[name]
    assert gradcheck(fn, (make_x(2, 3), make_y(2, 3)))


@pytest.mark.parametrize("fn", [dg.argmax, dg.argmin, lambda x: x.argmax(1, keepdim=True),
                                lambda x: dg.max(x, 0).indices, lambda x: dg.min(x, 1)[1]],
                         ids=["argmax", "argmin", "argmax dim", "max indices", "min indices"])
def test_index_outputs_are_int64_and_carry_no_gradient(fn):
    out = fn(leaf(2, 3))
    assert out.dtype is dg.int64
    assert not out.requires_grad and out.grad_fn is None


MATMUL_SHAPES = [
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((2, 3), (3, 4)),
    ((2, 3, 4), (2, 4, 2)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((3, 4), (2, 4, 2)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_gradient_follows_1d_promotion_and_batch_broadcasting(shapes):
    assert gradcheck(dg.matmul, (leaf(*shapes[0]), leaf(*shapes[1])))


@pytest.mark.parametrize("fn,shapes", [(dg.dot, ((3,), (3,))), (dg.mm, ((2, 3), (3, 4))),
                                       (dg.bmm, ((2, 2, 3), (2, 3, 1))),
                                       (lambda a, b: a @ b, ((2, 3), (3,)))],
                         ids=["dot", "mm", "bmm", "@"])
def test_matrix_product_aliases_have_the_gradient_of_matmul(fn, shapes):
    assert gradcheck(fn, (leaf(*shapes[0]), leaf(*shapes[1])))


GETITEM_KEYS = {
    "int": 1,
    "negative int": -1,
    "int, int": (1, 2),
    "slice": slice(1, 3),
    "slice with step": (slice(None, None, 2), slice(1, None, 2)),
    "slice out of range": slice(1, 10),
    "None": (None, 1),
    "Ellipsis": (Ellipsis, 0),
    "Ellipsis and None": (0, Ellipsis, None),
    "int tensor": index([2, 0, 2]),
    "2-d int tensor": index([[0, 1], [2, 2]]),
    "negative int tensor": index([-1, 0]),
    "two int tensors": (index([0, 2]), index([1, 3])),
    "non-adjacent int tensors": (index([0, 1]), slice(None), index([1, 1])),
    "int tensor after a slice": (slice(None, 2), index([3, 0])),
    "int and int tensor": (1, index([0, 3])),
    "list index": [0, 2],
    "bool mask full shape": "mask3d",
    "bool mask first dim": dg.tensor([True, False, True]),
    "bool mask and slice": (slice(None), dg.tensor([True, False, True, True])),
}


@pytest.mark.parametrize("name", sorted(GETITEM_KEYS))
def test_getitem_gradient_scatters_back_to_the_indexed_positions(name):
    key = GETITEM_KEYS[name]
    x = leaf(3, 4, 2) if name != "non-adjacent int tensors" else leaf(2, 3, 4)
    if isinstance(key, str):
        key = dg.rand(3, 4, 2) > 0.5
    assert gradcheck(lambda x: x[key], (x,))


# ------------------------------------------------------------------ views and in-place

VIEW_CHAINS = {
    "reshape then slice with step": lambda x: x.reshape(4, 6)[1::2, ::3],
    "permute then reshape": lambda x: x.permute(2, 0, 1).reshape(4, 6),
    "transpose then index": lambda x: x.transpose(0, 1)[2],
    "expand then sum over new dim": lambda x: x[:, :1].expand(2, 5, 4).sum(1),
    "squeeze unsqueeze round trip": lambda x: x.unsqueeze(0).unsqueeze(-1).squeeze(),
    "slices of slices": lambda x: x[:, 1:][:, ::2][..., 1:3],
    "view of a view": lambda x: x.view(6, 4).view(3, 8)[1],
}


@pytest.mark.parametrize("name", sorted(VIEW_CHAINS))
def test_view_chain_gradient_matches_finite_differences(name):
    assert gradcheck(VIEW_CHAINS[name], (leaf(2, 3, 4),))


INPLACE = {
    "add_": lambda x, y: (x * 1).add_(y),
    "add_ alpha": lambda x, y: (x * 1).add_(y, alpha=2.5),
    "sub_": lambda x, y: (x * 1).sub_(y),
    "mul_": lambda x, y: (x * 1).mul_(y),
    "div_": lambda x, y: (x * 1).div_(y.exp()),
    "mul_ number": lambda x, y: (x * y).mul_(3.0),
    "clamp_": lambda x, y: (x + y).clamp_(-0.5, 0.5),
    "zero_": lambda x, y: (x * y).zero_() + x,
    "fill_ number": lambda x, y: (x * y).fill_(2.0) * x,
    "fill_ 0-d tensor": lambda x, y: (x * 1).fill_(y[0, 1]),
    "copy_": lambda x, y: (x * 2).copy_(y) * x,
    "copy_ broadcast": lambda x, y: (x * 2).copy_(y[0]),
    "+=": lambda x, y: _iop(x * 1, "__iadd__", y),
    "-=": lambda x, y: _iop(x * 1, "__isub__", y),
    "*=": lambda x, y: _iop(x * 1, "__imul__", y),
    "/=": lambda x, y: _iop(x * 1, "__itruediv__", y.exp()),
    "masked_fill_": lambda x, y: (x * y).masked_fill_(dg.tensor([True, False, False]), 1.5),
    "chain of in-place ops": lambda x, y: (x * 1).mul_(y).add_(x).div_(2.0).sub_(y),
    "exp_ then use": lambda x, y: _chain(x * 1, lambda c: c.exp_()) * y,
}


def _iop(c, name, y):
    return getattr(c, name)(y)


def _chain(c, f):
    f(c)
    return c


@pytest.mark.parametrize("name", sorted(INPLACE))
def test_inplace_op_gradient_matches_finite_differences(name):
    assert gradcheck(INPLACE[name], (leaf(2, 3), leaf(2, 3)))


def _through_view(view_of, op):
    def fn(x, y):
        c = x * 1
        op(view_of(c), y)
        return c
    return fn


INPLACE_THROUGH_VIEWS = {
    "int index mul_": _through_view(lambda c: c[1], lambda v, y: v.mul_(3)),
    "row add_ tensor": _through_view(lambda c: c[0], lambda v, y: v.add_(y[0])),
    "strided slice mul_ tensor": _through_view(lambda c: c[:, ::2],
                                               lambda v, y: v.mul_(y[:, :2])),
    "transpose sub_": _through_view(lambda c: c.T, lambda v, y: v.sub_(y.T * 2)),
    "reshape then slice div_": _through_view(lambda c: c.reshape(-1)[1:5],
                                             lambda v, y: v.div_(y[1].exp().sum())),
    "view of a view copy_": _through_view(lambda c: c[1:][:, 1], lambda v, y: v.copy_(y[0, :1])),
    "unsqueeze clamp_": _through_view(lambda c: c.unsqueeze(0), lambda v, y: v.clamp_(-0.5)),
    "+= on a slice": _through_view(lambda c: c[:, 1:], lambda v, y: v.__iadd__(y[:, 1:])),
    "zero_ a column": _through_view(lambda c: c[:, 1], lambda v, y: v.zero_()),
    "fill_ a row with a 0-d tensor": _through_view(lambda c: c[0],
                                                   lambda v, y: v.fill_(y.sum())),
}


@pytest.mark.parametrize("name", sorted(INPLACE_THROUGH_VIEWS))
def test_inplace_op_through_a_view_reaches_the_base_gradient(name):
    assert gradcheck(INPLACE_THROUGH_VIEWS[name], (leaf(2, 3), leaf(2, 3)))


def test_view_taken_before_an_inplace_change_of_its_base_sees_the_new_history():
    def fn(x, y):
        c = x * 1
        v = c[0]
        c.mul_(y)
        return v * 2.0
    assert gradcheck(fn, (leaf(2, 3), leaf(2, 3)))


def test_inplace_change_through_a_view_is_seen_by_a_second_view():
    def fn(x, y):
        c = x * 1
        row = c[1]
        col = c[:, 2]
        row.mul_(y[0])
        return col.exp()
    assert gradcheck(fn, (leaf(2, 3), leaf(2, 3)))


def _assign(key, value_of):
    def fn(x, y):
        c = x * 1
        c[key] = value_of(y)
        return c
    return fn


SETITEM = {
    "int row from tensor": _assign(1, lambda y: y[0]),
    "slice from tensor": _assign((slice(None), slice(1, 3)), lambda y: y[:, :2]),
    "strided slice": _assign((slice(None, None, 2), 1), lambda y: y[:2, 0]),
    "broadcast value": _assign((slice(None), 0), lambda y: y[0, 0]),
    "Python number": _assign((0, slice(None)), lambda y: 2.0),
    "int tensor rows": _assign(index([0, 2]), lambda y: y[:2]),
    "repeated int tensor (last write wins)": _assign(index([1, 1]), lambda y: y[:2]),
    "two int tensors": _assign((index([0, 2, 1]), index([3, 0, 3])), lambda y: y[0, :3]),
    "bool mask with tensor values": _assign(dg.tensor([[True, False, True, False],
                                                       [False, False, True, True],
                                                       [True, False, False, False]]),
                                            lambda y: dg.cat([y[0].sin(), y[1, :1]])),
    "bool mask with a number": _assign(dg.tensor([True, False, True]), lambda y: 0.0),
    "bool row mask with rows": _assign(dg.tensor([True, False, True]), lambda y: y[1:]),
}


@pytest.mark.parametrize("name", sorted(SETITEM))
def test_setitem_gradient_flows_to_the_untouched_base_and_the_assigned_value(name):
    assert gradcheck(SETITEM[name], (leaf(3, 4), leaf(3, 4)))


def test_setitem_with_a_data_dependent_mask_zeroes_the_masked_gradient():
    def fn(x):
        c = x * 1
        c[c > 0] = 0.0
        return c
    assert gradcheck(fn, (away_from_zero(3, 4),))


def test_setitem_through_a_view_reaches_the_base():
    def fn(x, y):
        c = x * 1
        v = c[1]
        v[0:2] = y[0, :2] * 3.0
        return c
    assert gradcheck(fn, (leaf(3, 4), leaf(3, 4)))


# ------------------------------------------------------------------ second derivatives

SECOND_ORDER = {
    **{f"{u}": (lambda x, u=u: getattr(dg, u)(x), make) for u, make in [
        ("neg", leaf), ("abs", away_from_zero), ("sign", away_from_zero), ("floor", distinct),
        ("round", distinct), ("ceil", distinct),
        ("exp", leaf), ("log", positive), ("log1p", positive), ("sqrt", positive),
        ("sin", leaf), ("cos", leaf), ("tanh", leaf), ("erf", leaf), ("sigmoid", leaf),
        ("asin", inside_unit), ("acos", inside_unit), ("atan", leaf)]},
    "atan2": (lambda x: dg.atan2(x, x * x - 0.5), away_from_zero),
    "mul": (lambda x: x * x.cos(), leaf),
    "div": (lambda x: x.sin() / x, away_from_zero),
    "pow tensor base": (lambda x: x ** 3.0, leaf),
    "pow tensor exponent": (lambda x: 1.7 ** x, leaf),
    "pow both": (lambda x: x ** x, positive),
    "matmul": (lambda x: x @ x.T, leaf),
    "softmax": (lambda x: dg.softmax(x, 1), leaf),
    "log_softmax": (lambda x: dg.log_softmax(x, 0), leaf),
    "sum": (lambda x: (x * x).sum(1), leaf),
    "amax": (lambda x: dg.amax(x * x, 0), distinct),
    "gather": (lambda x: dg.take_along_dim(x * x, index([[2, 0], [1, 1]]), 1), leaf),
    "slice": (lambda x: (x * x)[:, ::2], leaf),
    "pad": (lambda x: dispatch(prim("pad"), x * x, pads=((1, 0, 1), (0, 2, 0)), value=0.0),
            leaf),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_second_derivative_matches_finite_differences_of_the_vjp(name):
    fn, make = SECOND_ORDER[name]
    assert gradgradcheck(fn, (make(2, 3),))


# Forward-over-reverse: the vjp graph built with create_graph is itself differentiated in
# forward mode. Rules that use their primitive's saved output (exp, sqrt, tanh, pow) need it
# to be the very tensor that carries the forward tangent.
@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_forward_over_reverse_matches_finite_differences_of_the_vjp(name):
    fn, make = SECOND_ORDER[name]
    assert gradgradcheck(fn, (make(2, 3),), check_forward_ad=True)


def test_hessian_vector_product_by_forward_over_reverse_through_exp():
    x, v = leaf(3), dg.randn(3, dtype=dg.float64)

    def grad_of_sum_exp(x):
        return dg.autograd.grad(x.exp().sum(), x, create_graph=True)[0]

    _, hvp = jvp(grad_of_sum_exp, (x,), (v,))
    np.testing.assert_allclose(hvp.detach().numpy(), (x.exp() * v).detach().numpy())


def test_second_derivative_of_a_binary_op_with_respect_to_both_inputs():
    assert gradgradcheck(lambda a, b: a * b.exp() / (b * b + 1.0), (leaf(2, 3), leaf(3)))
    assert gradgradcheck(lambda a, b: dg.matmul(a, b), (leaf(2, 3), leaf(3, 2)))


# ------------------------------------------------------------------ the checker itself


class SquareWithWrongBackward(dg.autograd.Function):
    """x² whose backward forgets the factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x


def test_gradcheck_fails_on_a_wrong_custom_backward():
    x = leaf(3)
    with pytest.raises(GradcheckError, match="backward"):
        gradcheck(SquareWithWrongBackward.apply, (x,), check_forward_ad=False)
    assert gradcheck(SquareWithWrongBackward.apply, (x,), check_forward_ad=False,
                     raise_exception=False) is False


def test_gradcheck_fails_on_a_wrong_jvp_rule(monkeypatch):
    monkeypatch.setattr(prim("sin"), "jvp", lambda ts, xs, y, p: ts[0] * dg.sin(xs[0]))
    with pytest.raises(GradcheckError, match="forward"):
        gradcheck(dg.sin, (leaf(3),), check_backward_ad=False)


def test_gradgradcheck_fails_on_a_wrong_second_derivative(monkeypatch):
    # the vjp of sin is right in value but its own derivative is wrong (cos(x) frozen)
    monkeypatch.setattr(prim("sin"), "vjp", lambda n, g, xs, y: (g * dg.cos(xs[0]).detach(),))
    x = leaf(3)
    assert gradcheck(dg.sin, (x,), check_forward_ad=False)
    with pytest.raises(GradcheckError):
        gradgradcheck(dg.sin, (x,))
