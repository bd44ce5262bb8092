"""Tensors as data: creation and dtypes, PyTorch's type promotion, storage and views with
their shared version counter, conversions to Python and numpy, printing, save/load, seeded
randomness and deepcopy."""

from __future__ import annotations

import copy
import io
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngrad as dg

# --------------------------------------------------------------------------- creation


def test_tensor_from_python_numbers_picks_pytorch_default_dtypes():
    assert dg.tensor(1.5).dtype is dg.float32
    assert dg.tensor([1.0, 2.0]).dtype is dg.float32
    assert dg.tensor([1, 2]).dtype is dg.int64
    assert dg.tensor([True, False]).dtype is dg.bool_
    assert dg.tensor([1, 2.5]).dtype is dg.float32
    assert dg.tensor([[1, 2], [3, 4]]).shape == (2, 2)
    assert dg.tensor(3).shape == ()


def test_tensor_from_numpy_keeps_supported_dtypes_and_copies():
    a = np.array([1.0, 2.0])
    t = dg.tensor(a)
    assert t.dtype is dg.float64
    a[0] = 9.0
    assert t.tolist() == [1.0, 2.0]
    assert dg.tensor(np.array([1, 2], dtype=np.int32)).dtype is dg.int32  # as torch.tensor
    assert dg.tensor(np.array([1, 2], dtype=np.uint16)).dtype is dg.int64
    assert dg.tensor(np.array([1, 2], dtype=np.float16)).dtype is dg.float32


def test_tensor_with_explicit_dtype():
    assert dg.tensor([1, 2], dtype=dg.float64).dtype is dg.float64
    assert dg.tensor([1.7, 2.2], dtype=dg.int64).tolist() == [1, 2]
    assert dg.tensor([0, 3], dtype=dg.bool_).tolist() == [False, True]
    assert dg.tensor([1.0], dtype="float64").dtype is dg.float64


def test_dtype_aliases():
    assert dg.float is dg.float32 and dg.double is dg.float64
    assert dg.long is dg.int64 and dg.bool is dg.bool_


def test_tensor_of_a_tensor_copies():
    t = dg.tensor([1.0, 2.0])
    u = dg.tensor(t)
    u.add_(1.0)
    assert t.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("fn,args,shape,dtype", [
    (dg.zeros, (2, 3), (2, 3), dg.float32),
    (dg.zeros, ((2, 3),), (2, 3), dg.float32),
    (dg.ones, (4,), (4,), dg.float32),
    (dg.empty, (2,), (2,), dg.float32),
    (dg.eye, (3,), (3, 3), dg.float32),
    (dg.eye, (2, 3), (2, 3), dg.float32),
    (dg.rand, (2, 2), (2, 2), dg.float32),
    (dg.randn, (5,), (5,), dg.float32),
])
def test_creation_function_shapes_and_default_dtypes(fn, args, shape, dtype):
    t = fn(*args)
    assert t.shape == shape and t.dtype is dtype
    assert t.is_leaf and not t.requires_grad


def test_creation_with_dtype_and_requires_grad():
    t = dg.zeros(2, dtype=dg.float64, requires_grad=True)
    assert t.dtype is dg.float64 and t.requires_grad and t.is_leaf
    assert dg.ones(2, dtype=dg.int64).tolist() == [1, 1]
    assert dg.randn(3, dtype=dg.float64).dtype is dg.float64


def test_zeros_ones_eye_values():
    assert dg.zeros(2, 2).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert dg.ones(3).tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(dg.eye(2, 3).numpy(), np.eye(2, 3, dtype=np.float32))


def test_full_infers_dtype_from_fill_value():
    assert dg.full((2,), 3).dtype is dg.int64
    assert dg.full((2,), 3.0).dtype is dg.float32
    assert dg.full((2,), True).dtype is dg.bool_
    assert dg.full((2, 2), 7.5).tolist() == [[7.5, 7.5], [7.5, 7.5]]
    assert dg.full((2,), 3, dtype=dg.float64).dtype is dg.float64


def test_arange_dtype_follows_its_arguments():
    assert dg.arange(5).dtype is dg.int64
    assert dg.arange(5).tolist() == [0, 1, 2, 3, 4]
    assert dg.arange(4.0).dtype is dg.float32
    assert dg.arange(1, 7, 2).tolist() == [1, 3, 5]
    assert dg.arange(0, 1, 0.25).tolist() == [0.0, 0.25, 0.5, 0.75]
    assert dg.arange(5, 0, -2).tolist() == [5, 3, 1]
    assert dg.arange(3, dtype=dg.float64).dtype is dg.float64


def test_linspace_includes_both_ends():
    t = dg.linspace(0, 1, 5)
    assert t.dtype is dg.float32
    assert t.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert dg.linspace(2, 2, 1).tolist() == [2.0]


def test_like_functions_keep_shape_and_dtype():
    i = dg.tensor([[1, 2, 3]])
    for fn in (dg.zeros_like, dg.ones_like, dg.empty_like, dg.rand_like, dg.randn_like):
        if fn in (dg.rand_like, dg.randn_like):
            t = fn(i.float())
            assert t.dtype is dg.float32
        else:
            t = fn(i)
            assert t.dtype is dg.int64
        assert t.shape == (1, 3)
    assert dg.full_like(i, 7).tolist() == [[7, 7, 7]]
    assert dg.zeros_like(i, dtype=dg.float64).dtype is dg.float64
    assert dg.randint_like(i, 5).dtype is dg.int64


def test_from_numpy_supports_exactly_the_four_dtypes():
    for npd, d in [(np.float32, dg.float32), (np.float64, dg.float64), (np.int64, dg.int64),
                   (np.bool_, dg.bool_)]:
        assert dg.from_numpy(np.zeros(2, dtype=npd)).dtype is d


def test_conversions_to_dtype():
    t = dg.tensor([1.5, -2.5])
    assert t.to(dg.int64).tolist() == [1, -2]
    assert t.long().dtype is dg.int64
    assert t.double().dtype is dg.float64
    assert t.long().float().dtype is dg.float32
    assert t.to(dg.float32) is t          # already that dtype: no copy (as in PyTorch)
    assert t.to("cpu") is t
    assert t.bool().tolist() == [True, True]
    assert t.float() is t


def test_clone_copies_memory_and_keeps_graph():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    c = x.clone()
    assert not np.shares_memory(c.detach().numpy(), x.detach().numpy())
    assert c.grad_fn is not None
    (c * 3).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


# --------------------------------------------------------------------------- promotion


B = lambda: dg.tensor([True, False])  # noqa: E731
L = lambda: dg.tensor([1, 2])  # noqa: E731
F = lambda: dg.tensor([1.0, 2.0])  # noqa: E731
D = lambda: dg.tensor([1.0, 2.0], dtype=dg.float64)  # noqa: E731
B0 = lambda: dg.tensor(True)  # noqa: E731
L0 = lambda: dg.tensor(3)  # noqa: E731
F0 = lambda: dg.tensor(1.5)  # noqa: E731
D0 = lambda: dg.tensor(1.5, dtype=dg.float64)  # noqa: E731

PROMOTION = [
    # tensor × Python scalar: scalars only raise the category
    (B, True, dg.bool_), (B, 2, dg.int64), (B, 2.5, dg.float32),
    (L, True, dg.int64), (L, 2, dg.int64), (L, 1.5, dg.float32),
    (F, True, dg.float32), (F, 2, dg.float32), (F, 2.5, dg.float32),
    (D, True, dg.float64), (D, 2, dg.float64), (D, 2.5, dg.float64),
    # tensor × 0-d tensor: a 0-d tensor of a higher category decides; same category: no widening
    (B, B0, dg.bool_), (B, L0, dg.int64), (B, F0, dg.float32), (B, D0, dg.float64),
    (L, B0, dg.int64), (L, L0, dg.int64), (L, F0, dg.float32), (L, D0, dg.float64),
    (F, B0, dg.float32), (F, L0, dg.float32), (F, F0, dg.float32), (F, D0, dg.float32),
    (D, B0, dg.float64), (D, L0, dg.float64), (D, F0, dg.float64), (D, D0, dg.float64),
    # tensor × tensor (both dimensioned): ordinary promotion
    (B, L, dg.int64), (B, F, dg.float32), (L, F, dg.float32), (F, D, dg.float64),
    (L, D, dg.float64), (B, D, dg.float64),
    # 0-d × 0-d: ordinary promotion among themselves; 0-d × scalar: scalar is weak
    (L0, D0, dg.float64), (F0, D0, dg.float64), (B0, L0, dg.int64),
    (L0, 1.5, dg.float32), (D0, 1.5, dg.float64), (F0, 2, dg.float32),
]


def _make(x):
    return x() if callable(x) else x


@pytest.mark.parametrize("a,b,expected", PROMOTION)
def test_pytorch_type_promotion_of_add(a, b, expected):
    x, y = _make(a), _make(b)
    assert (x + y).dtype is expected
    assert (y + x).dtype is expected
    assert dg.add(x, y).dtype is expected


@pytest.mark.parametrize("a,b,expected", PROMOTION)
def test_pytorch_type_promotion_of_mul_matches_add(a, b, expected):
    x, y = _make(a), _make(b)
    assert (x * y).dtype is expected
    assert (y * x).dtype is expected


NO_BOOL = [p for p in PROMOTION if all(not (callable(x) and x().dtype is dg.bool_)
                                        and not isinstance(x, bool) for x in p[:2])]


@pytest.mark.parametrize("a,b,expected", NO_BOOL)
def test_pytorch_type_promotion_of_sub_matches_add(a, b, expected):
    # (PyTorch refuses subtraction with any bool operand)
    x, y = _make(a), _make(b)
    assert (x - y).dtype is expected


def test_int64_plus_python_float_is_float32_and_exact():
    r = dg.tensor([1, 2]) + 1.5
    assert r.dtype is dg.float32
    assert r.tolist() == [2.5, 3.5]


def test_float32_plus_float64_zero_dim_stays_float32():
    r = dg.tensor([1.0, 2.0]) + dg.tensor(0.5, dtype=dg.float64)
    assert r.dtype is dg.float32 and r.tolist() == [1.5, 2.5]


def test_int64_tensor_plus_float64_zero_dim_is_float64():
    assert (dg.tensor([1, 2]) + dg.tensor(0.5, dtype=dg.float64)).dtype is dg.float64


def test_float32_plus_float64_one_dim_is_float64():
    assert (dg.tensor([1.0]) + dg.tensor([1.0], dtype=dg.float64)).dtype is dg.float64


def test_true_division_of_integers_is_float32():
    a, b = dg.tensor([1, 3]), dg.tensor([2, 2])
    assert (a / b).dtype is dg.float32
    assert (a / b).tolist() == [0.5, 1.5]
    assert (a / 2).dtype is dg.float32
    assert (3 / a).dtype is dg.float32
    assert (dg.tensor([True]) / dg.tensor([True])).dtype is dg.float32
    assert (dg.tensor([1, 2], dtype=dg.float64) / a).dtype is dg.float64


def test_floor_division_of_integers_stays_integer():
    r = dg.tensor([7, -7]) // 2
    assert r.dtype is dg.int64 and r.tolist() == [3, -4]


@pytest.mark.parametrize("op", ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"])
@pytest.mark.parametrize("a,b", [(L, 1.5), (F, D), (B, L0), (D, 2), (L, F)])
def test_comparisons_give_bool(op, a, b):
    assert getattr(_make(a), op)(_make(b)).dtype is dg.bool_


def test_comparison_values_across_dtypes():
    assert (dg.tensor([1, 2, 3]) > 1.5).tolist() == [False, True, True]
    assert (dg.tensor([1, 2]) == dg.tensor([1.0, 2.5])).tolist() == [True, False]


def test_unary_float_ops_promote_integers_to_float32():
    assert dg.tensor([1, 2]).exp().dtype is dg.float32
    assert dg.tensor([4]).sqrt().tolist() == [2.0]
    assert dg.tensor([1.0], dtype=dg.float64).exp().dtype is dg.float64


def test_round_sends_halves_to_the_even_neighbour_and_keeps_the_sign_of_zero():
    r = dg.round(dg.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.3], dtype=dg.float64))
    assert r.tolist() == [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0, -0.0]
    assert np.signbit(r.numpy()).tolist() == [True, True, True, False, False, False, True]


def test_ceil_of_a_negative_fraction_is_negative_zero():
    c = dg.tensor([-0.3, 0.3, -1.0, 2.5]).ceil()
    assert c.dtype is dg.float32 and c.tolist() == [-0.0, 1.0, -1.0, 3.0]
    assert np.signbit(c.numpy()).tolist() == [True, False, True, False]


def test_round_with_decimals_rounds_the_scaled_value_in_the_tensor_dtype():
    x = dg.tensor([0.25, 2.675, 1234.5678, -0.04], dtype=dg.float64)
    assert x.round(decimals=1).tolist() == [0.2, 2.7, 1234.6, -0.0]
    # 2.675 is stored just below 2.675, but its product with 100 rounds to 267.5 and then to
    # the even 268, as in PyTorch (Python's round(2.675, 2), exact in decimal, gives 2.67)
    assert x.round(decimals=2).tolist() == [0.25, 2.68, 1234.57, -0.04]
    assert x.round(decimals=-2).tolist() == [0.0, 0.0, 1200.0, -0.0]
    assert x.round(decimals=np.int64(1)).tolist() == x.round(decimals=1).tolist()


@pytest.mark.parametrize("op", [dg.round, dg.ceil, dg.floor], ids=["round", "ceil", "floor"])
@pytest.mark.parametrize("dtype", [dg.int64, dg.bool_], ids=["int64", "bool"])
def test_rounding_an_integer_or_bool_tensor_gives_an_unchanged_copy(op, dtype):
    x = dg.tensor([3, 0, 1], dtype=dtype)
    r = op(x)
    assert r.dtype is dtype and r.tolist() == x.tolist()
    assert not np.shares_memory(r.numpy(), x.numpy())


def test_numpy_scalars_are_weak_like_python_scalars():
    assert (dg.tensor([1.0]) + np.float64(2.0)).dtype is dg.float32
    assert (dg.tensor([1]) + np.int32(2)).dtype is dg.int64


def test_where_promotes_its_branches():
    c = dg.tensor([True, False])
    assert dg.where(c, dg.tensor([1, 2]), 0.5).dtype is dg.float32
    assert dg.where(c, dg.tensor([1, 2]), dg.tensor([1.0, 2.0], dtype=dg.float64)).dtype \
        is dg.float64
    assert dg.where(c, 1, 2).dtype is dg.int64


# --------------------------------------------------------------------------- storage and views


def _views(t):
    """Every kind of view of a 2x3 float tensor, each with a function writing through it."""
    return {
        "reshape": t.reshape(6),
        "view": t.view(3, 2),
        "view_minus_one": t.view(-1),
        "transpose": t.transpose(0, 1),
        "T": t.T,
        "permute": t.permute(1, 0),
        "slice": t[:, 1:],
        "step_slice": t[:, ::2],
        "int_index": t[1],
        "ellipsis": t[..., 0],
        "none_index": t[None],
        "squeeze": t.unsqueeze(0).squeeze(0),
        "unsqueeze": t.unsqueeze(1),
        "narrow": t.narrow(1, 0, 2),
        "flatten": t.flatten(),
        "data": t.data,
        "detach": t.detach(),
        "from_dlpack": dg.from_dlpack(t),
    }


@pytest.mark.parametrize("kind", list(_views(dg.zeros(2, 3))))
def test_every_view_shares_storage_and_version_counter(kind):
    t = dg.zeros(2, 3)
    v = _views(t)[kind]
    assert np.shares_memory(v.numpy(), t.numpy())
    assert v._version == t._version == 0
    v.add_(1.0)                      # a write through the view ...
    assert t._version == 1 and v._version == 1
    assert t.sum().item() == v.numel()   # ... is visible in the base
    t.mul_(2.0)                      # and a write to the base bumps the view's version
    assert v._version == 2
    assert v.sum().item() == 2 * v.numel()


def test_expand_is_a_view_that_cannot_be_written():
    t = dg.zeros(3, 1)
    e = t.expand(3, 4)
    assert e.shape == (3, 4)
    assert np.shares_memory(e.numpy(), t.numpy())
    t.add_(1.0)
    assert e._version == 1
    assert e.sum().item() == 12.0
    with pytest.raises(RuntimeError, match="expanded"):
        e.add_(1.0)


def test_views_of_views_share_the_same_storage():
    t = dg.arange(24.0).reshape(2, 3, 4)
    v = t.permute(2, 0, 1)[1:3].transpose(0, 1)[:, 0]   # v[b, c] is t[b, c, 1]
    assert v.shape == (2, 3)
    v.zero_()
    assert t._version == 1
    expected = np.arange(24.0).reshape(2, 3, 4)
    expected[:, :, 1] = 0
    np.testing.assert_array_equal(t.numpy(), expected)


def test_view_on_non_contiguous_raises_and_reshape_copies():
    t = dg.arange(6.0).reshape(2, 3)
    nt = t.T
    assert not nt.is_contiguous()
    with pytest.raises(RuntimeError, match="view size is not compatible.*reshape"):
        nt.view(6)
    r = nt.reshape(6)
    assert r.tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    assert not np.shares_memory(r.numpy(), t.numpy())
    r.add_(1.0)
    assert t._version == 0 and t.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_contiguous_copies_only_when_needed():
    t = dg.arange(6.0).reshape(2, 3)
    assert t.contiguous().is_contiguous()
    assert np.shares_memory(t.contiguous().numpy(), t.numpy())
    c = t.T.contiguous()
    assert c.is_contiguous() and not np.shares_memory(c.numpy(), t.numpy())


def test_contiguous_then_view_works_on_a_transposed_tensor():
    t = dg.arange(6.0).reshape(2, 3)
    assert t.T.contiguous().view(6).tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


@pytest.mark.parametrize("make", [
    lambda: dg.arange(4.0), lambda: dg.arange(4), lambda: dg.linspace(0, 1, 3),
    lambda: dg.zeros(2), lambda: dg.ones(1, 3), lambda: dg.full((2,), 1.0), lambda: dg.eye(2),
    lambda: dg.rand(2), lambda: dg.randn(2), lambda: dg.randint(0, 3, (2,)),
    lambda: dg.tensor([1.0]), lambda: dg.ones(3).expand(3).contiguous(),
    lambda: dg.arange(3.0).T.clone(),
])
def test_created_tensors_are_writeable(make):
    t = make()
    t.add_(1)
    assert t._version == 1


def test_clone_and_arithmetic_results_do_not_share_storage():
    t = dg.zeros(3)
    for other in (t.clone(), t + 0, t * 1, t.to(dg.float64), dg.tensor(t)):
        other.add_(1)
        assert t._version == 0 and t.tolist() == [0.0, 0.0, 0.0]


def test_in_place_ops_bump_the_version():
    t = dg.zeros(3)
    t.add_(1.0)
    t.mul_(2.0)
    t[0] = 5.0
    t += 1
    t.zero_()
    t.fill_(2.0)
    t.copy_(dg.ones(3))
    assert t._version == 7


def test_out_of_place_ops_and_reads_do_not_bump_the_version():
    t = dg.ones(3)
    _ = t + 1, t.sum(), t[0], t.tolist(), t.numpy(), repr(t)
    assert t._version == 0


def test_data_shares_storage_and_writes_are_visible_but_not_tracked():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    d = x.data
    assert d is not x
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    assert np.shares_memory(d.numpy(), x.detach().numpy())
    d.mul_(10.0)
    assert x.tolist() == [10.0, 20.0]
    assert x.is_leaf and x.requires_grad and x.grad_fn is None
    (x * x).sum().backward()
    assert x.grad.tolist() == [20.0, 40.0]


def test_assigning_data_replaces_contents_keeping_identity():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    x.data = dg.tensor([5.0, 6.0, 7.0])
    assert x.tolist() == [5.0, 6.0, 7.0] and x.shape == (3,)
    assert x.requires_grad and x.is_leaf


def test_detach_shares_storage_and_is_cut_from_the_graph():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    d = y.detach()
    assert d.is_leaf and not d.requires_grad
    assert np.shares_memory(d.numpy(), y.detach().numpy())


def test_detach_in_place_makes_a_leaf():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    assert y.detach_() is y
    assert y.is_leaf and not y.requires_grad and y.grad_fn is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
def test_permute_and_slice_views_share_version_for_any_shape(shape, data):
    t = dg.zeros(*shape)
    perm = data.draw(st.permutations(range(len(shape))))
    v = t.permute(*perm)
    assert v.shape == tuple(shape[p] for p in perm)
    k = data.draw(st.integers(0, shape[0] - 1))
    w = t[k:]
    v.add_(1.0)
    assert t._version == v._version == w._version == 1
    assert w.sum().item() == w.numel()
    np.testing.assert_array_equal(v.numpy(), np.transpose(t.numpy(), perm))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_reshape_of_contiguous_tensor_is_always_a_view(shape):
    t = dg.zeros(*shape)
    r = t.reshape(-1)
    assert r.shape == (t.numel(),)
    r.add_(1.0)
    assert t._version == 1 and t.sum().item() == t.numel()


# --------------------------------------------------------------------------- numpy, dlpack


def test_numpy_shares_memory_and_refuses_tensors_requiring_grad():
    t = dg.tensor([1.0, 2.0])
    a = t.numpy()
    a[0] = 5.0
    assert t.tolist() == [5.0, 2.0]
    x = dg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"detach\(\)\.numpy\(\)"):
        x.numpy()
    assert x.detach().numpy().tolist() == [1.0]


def test_array_protocol_shares_memory_and_converts_dtype():
    t = dg.tensor([1.5, 2.5])
    a = np.asarray(t)
    assert np.shares_memory(a, t.numpy())
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    assert np.array(t).tolist() == [1.5, 2.5]
    assert not np.shares_memory(np.array(t, copy=True), t.numpy())
    with pytest.raises(RuntimeError, match="requires grad"):
        np.asarray(dg.tensor([1.0], requires_grad=True))


def test_numpy_functions_accept_tensors():
    t = dg.tensor([1.0, 4.0])
    assert np.sqrt(t).tolist() == [1.0, 2.0]


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64, dg.int64, dg.bool_])
def test_numpy_round_trip_keeps_dtype_and_values(dtype):
    t = dg.tensor([[1, 0], [0, 1]], dtype=dtype)
    back = dg.from_numpy(t.numpy())
    assert back.dtype is dtype
    assert back.tolist() == t.tolist()


def test_dlpack_round_trips_share_memory():
    t = dg.arange(4.0)
    a = np.from_dlpack(t)
    assert np.shares_memory(a, t.numpy())
    u = dg.from_dlpack(a)
    assert np.shares_memory(u.numpy(), t.numpy())
    w = dg.from_dlpack(t)
    assert w._storage is t._storage
    a[0] = 42.0
    assert t[0].item() == 42.0 and u[0].item() == 42.0 and w[0].item() == 42.0


def test_dlpack_refuses_tensors_requiring_grad():
    with pytest.raises(RuntimeError, match="detach"):
        np.from_dlpack(dg.tensor([1.0], requires_grad=True))


# --------------------------------------------------------------------------- Python values


def test_item_and_scalar_conversions():
    assert dg.tensor(2.5).item() == 2.5
    assert isinstance(dg.tensor(2.5).item(), float)
    assert isinstance(dg.tensor(3).item(), int)
    assert isinstance(dg.tensor(True).item(), bool)
    assert dg.tensor([[7]]).item() == 7
    assert float(dg.tensor([1.5])) == 1.5
    assert int(dg.tensor(2.9)) == 2
    assert bool(dg.tensor([0.0])) is False
    assert bool(dg.tensor(3)) is True
    assert dg.tensor(2.5, requires_grad=True).item() == 2.5


def test_index_protocol_for_integer_tensors():
    assert list(range(dg.tensor(3))) == [0, 1, 2]
    assert [10, 20, 30][dg.tensor(1)] == 20
    assert [10, 20, 30][dg.tensor([2])] == 30
    with pytest.raises(TypeError, match="integer tensors of a single element"):
        range(dg.tensor(3.0))


def test_tolist_nests_like_the_shape():
    assert dg.tensor([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert dg.tensor(5).tolist() == 5
    assert dg.zeros(0).tolist() == []


def test_scalar_conversions_of_multi_element_tensors_raise():
    t = dg.tensor([1.0, 2.0])
    with pytest.raises(RuntimeError, match="2 elements cannot be converted to Scalar"):
        t.item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(t)
    with pytest.raises(RuntimeError, match="ambiguous"):
        if dg.tensor([1, 2]) > 0:
            pass
    # PyTorch: float()/int() raise ValueError and __index__ TypeError
    with pytest.raises(ValueError, match="only one element tensors"):
        float(t)
    with pytest.raises(ValueError, match="only one element tensors"):
        int(dg.tensor([1, 2]))
    with pytest.raises(TypeError, match="single element"):
        range(dg.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="0 elements"):
        dg.zeros(0).item()


def test_len_and_iteration():
    t = dg.tensor([[1, 2], [3, 4], [5, 6]])
    assert len(t) == 3
    assert [r.tolist() for r in t] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(TypeError):
        len(dg.tensor(1.0))
    with pytest.raises(TypeError):
        iter(dg.tensor(1.0))


def test_format_of_zero_dim_tensor_with_spec():
    assert f"{dg.tensor(3.14159):.2f}" == "3.14"
    assert f"{dg.tensor(7):d}" == "7"
    assert f"{dg.tensor([1.0, 2.0])}" == "tensor([1., 2.])"


# --------------------------------------------------------------------------- repr


def test_repr_of_plain_tensors():
    assert repr(dg.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(dg.tensor([1.5, 2.25])) == "tensor([1.5000, 2.2500])"
    assert repr(dg.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(dg.tensor([True, False])) == "tensor([ True, False])"
    assert repr(dg.tensor(2.5)) == "tensor(2.5000)"
    assert str(dg.tensor(3)) == "tensor(3)"


def test_repr_of_leaf_requiring_grad():
    assert repr(dg.tensor([1.0, 2.0], requires_grad=True)) == \
        "tensor([1., 2.], requires_grad=True)"


def test_repr_of_result_shows_grad_fn():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    assert repr(x * 2) == "tensor([2., 4.], grad_fn=<MulBackward0>)"
    assert repr((x * 2).sum()) == "tensor(6., grad_fn=<SumBackward0>)"


def test_repr_shows_non_default_dtype():
    assert repr(dg.tensor([1.0, 2.0], dtype=dg.float64)) == \
        "tensor([1., 2.], dtype=dyngrad.float64)"
    x = dg.tensor([1.0], dtype=dg.float64, requires_grad=True)
    assert repr(x) == "tensor([1.], dtype=dyngrad.float64, requires_grad=True)"
    assert "dtype" not in repr(dg.tensor([1]))


def test_repr_of_empty_and_large_tensors():
    assert repr(dg.zeros(0)) == "tensor([])"
    assert repr(dg.zeros(2, 0)) == "tensor([], size=(2, 0))"
    big = repr(dg.arange(5000))
    assert "..." in big and len(big) < 200


def test_repr_of_matrix_aligns_rows():
    assert repr(dg.tensor([[1, 2], [3, 4]])) == "tensor([[1, 2],\n        [3, 4]])"


def test_repr_of_bools_pads_to_the_widest_as_pytorch_does():
    assert repr(dg.tensor([True, False])) == "tensor([ True, False])"
    assert repr(dg.tensor([True, True])) == "tensor([True, True])"        # no False: width 4
    assert repr(dg.tensor(True)) == "tensor(True)"
    assert repr(dg.tensor(False)) == "tensor(False)"
    assert repr(dg.tensor([[True, False], [False, True]])) == \
        "tensor([[ True, False],\n        [False,  True]])"
    assert repr(dg.zeros(3) > -1) == "tensor([True, True, True])"


R = np.random.default_rng(0)
NAN, INF = float("nan"), float("inf")
PRINTED = [  # what PyTorch's printing decides: widths, wrapping, modes, summaries, suffixes
    np.array([True, False]), np.array(True), np.array(False), np.array([[True] * 30] * 2),
    np.arange(60).reshape(3, 4, 5) % 2 == 0, R.random(2000) > 0.5,
    np.array([True] * 1500 + [False]),                       # the False is not shown
    np.arange(40.0).reshape(2, 20) / 3, np.arange(30).reshape(2, 15), np.arange(2000),
    np.arange(2000.0) / 7, R.standard_normal((40, 40)),
    R.standard_normal((3, 4, 5, 6)).astype(np.float32), R.integers(-1000, 1000, (50, 30)),
    np.zeros((2, 0)), np.zeros(0), np.array(3.5), np.array(-7), R.standard_normal((2, 3, 2, 2)),
    np.array([NAN, 1.0]), np.array([NAN, 1.5]), np.array([INF, -INF, 1.0]),
    np.array([-INF, 1.5, 100.0]), np.array([NAN, 1e-5]), np.array([NAN, 12345.0]),
    np.array([1.0, 1000.0]), np.array([1.0, 1001.0]), np.array([0.5, 600.0]),
    np.array([1e8, 1.0]), np.array([-1e-5, 0.0]), np.array([-0.0, 1.0]), np.array(NAN),
    np.array([0.0, 0.0]), np.array(123456789.0), R.standard_normal(200) * 100,
    np.arange(3000.0).reshape(30, 100),
]


def _suffixes_on_one_line(text: str) -> str:
    """(``dyngrad.float64`` is two characters longer than ``torch.float64``, so a suffix that
    fits in PyTorch's line may wrap in ours: compare with the suffixes joined.)"""
    return re.sub(r",\n {7}(?=dtype=|requires_grad=|grad_fn=|size=)", ", ", text)


@pytest.mark.parametrize("a", PRINTED, ids=range(len(PRINTED)))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_repr_equals_pytorch_s(a, requires_grad):
    torch = pytest.importorskip("torch")
    if requires_grad and a.dtype.kind != "f":
        return
    t = torch.tensor(a, requires_grad=requires_grad)
    d = dg.tensor(a, requires_grad=requires_grad)
    pairs = [(d, t), (d * 2, t * 2)] if requires_grad else [(d, t)]
    for x, y in pairs:
        assert _suffixes_on_one_line(repr(x)) == \
            _suffixes_on_one_line(repr(y).replace("torch.", "dyngrad."))


def test_repr_wraps_suffixes_past_the_line_width_as_pytorch_does():
    x = dg.tensor(np.arange(16.0).reshape(2, 8) / 3, dtype=dg.float64, requires_grad=True)
    assert repr(x) == (
        "tensor([[0.0000, 0.3333, 0.6667, 1.0000, 1.3333, 1.6667, 2.0000, 2.3333],\n"
        "        [2.6667, 3.0000, 3.3333, 3.6667, 4.0000, 4.3333, 4.6667, 5.0000]],\n"
        "       dtype=dyngrad.float64, requires_grad=True)")


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_of_a_tensor(tmp_path):
    for t in (dg.randn(3, 4), dg.tensor([1, 2]), dg.tensor([True]),
              dg.tensor(2.5, dtype=dg.float64)):
        path = tmp_path / "t.npz"
        dg.save(t, path)
        back = dg.load(path)
        assert isinstance(back, dg.Tensor)
        assert back.dtype is t.dtype and back.shape == t.shape
        np.testing.assert_array_equal(back.numpy(), t.numpy())


def test_save_load_round_trip_of_nested_dicts(tmp_path):
    state = {"w": dg.randn(2, 3), "b": dg.zeros(3),
             "opt": {"step": dg.tensor(4), "m": {"w": dg.ones(2, 3, dtype=dg.float64)}}}
    path = str(tmp_path / "state.npz")
    dg.save(state, path)
    back = dg.load(path)
    assert set(back) == {"w", "b", "opt"}
    assert set(back["opt"]) == {"step", "m"}
    np.testing.assert_array_equal(back["w"].numpy(), state["w"].numpy())
    assert back["opt"]["step"].item() == 4 and back["opt"]["step"].dtype is dg.int64
    assert back["opt"]["m"]["w"].dtype is dg.float64


def test_save_load_through_a_file_object():
    buf = io.BytesIO()
    dg.save({"a": dg.tensor([1.0])}, buf)
    buf.seek(0)
    assert dg.load(buf)["a"].tolist() == [1.0]


def test_save_of_tensor_requiring_grad_stores_its_data(tmp_path):
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    dg.save(x, tmp_path / "x.npz")
    assert dg.load(tmp_path / "x.npz").tolist() == [1.0, 2.0]


def test_loaded_tensors_own_their_memory(tmp_path):
    dg.save({"a": dg.zeros(2)}, tmp_path / "a.npz")
    a = dg.load(tmp_path / "a.npz")["a"]
    a.add_(1.0)
    assert a.tolist() == [1.0, 1.0]


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        dg.load(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(ValueError, match="pickle"):
        dg.load(raw)


def test_save_refuses_non_tensor_objects(tmp_path):
    with pytest.raises(TypeError, match="can only save tensors"):
        dg.save([dg.zeros(1), "text"], tmp_path / "l.npz")
    with pytest.raises(TypeError, match="can only save tensors"):
        dg.save({"f": object()}, tmp_path / "o.npz")


# --------------------------------------------------------------------------- randomness


def test_manual_seed_makes_rand_randn_randint_reproducible():
    dg.manual_seed(123)
    a = (dg.rand(5), dg.randn(5), dg.randint(0, 10, (5,)), dg.randn(2, dtype=dg.float64))
    dg.manual_seed(123)
    b = (dg.rand(5), dg.randn(5), dg.randint(0, 10, (5,)), dg.randn(2, dtype=dg.float64))
    for x, y in zip(a, b):
        assert x.dtype is y.dtype
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_successive_draws_differ():
    dg.manual_seed(0)
    assert not np.array_equal(dg.rand(8).numpy(), dg.rand(8).numpy())


def test_different_seeds_give_different_numbers():
    dg.manual_seed(1)
    a = dg.randn(16).numpy().copy()
    r1 = dg.randint(0, 1000, (16,)).numpy().copy()
    dg.manual_seed(2)
    b = dg.randn(16).numpy().copy()
    r2 = dg.randint(0, 1000, (16,)).numpy().copy()
    assert not np.array_equal(a, b)
    assert not np.array_equal(r1, r2)


def test_random_dtypes():
    assert dg.rand(2).dtype is dg.float32
    assert dg.rand(2, dtype=dg.float64).dtype is dg.float64
    assert dg.randn(2).dtype is dg.float32
    assert dg.randint(0, 3, (2,)).dtype is dg.int64


def test_rand_is_in_half_open_unit_interval():
    dg.manual_seed(7)
    for dtype in (dg.float32, dg.float64):
        u = dg.rand(100_000, dtype=dtype).numpy()
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 0.01


def test_randn_mean_and_std_are_plausible():
    dg.manual_seed(11)
    z = dg.randn(100_000).numpy().astype(np.float64)
    assert abs(z.mean()) < 0.02           # ~6 standard errors
    assert abs(z.std() - 1.0) < 0.02
    assert 0.30 < np.mean(np.abs(z) > 1.0) < 0.335   # P(|z|>1) ≈ 0.3173


def test_randint_covers_its_half_open_range():
    dg.manual_seed(5)
    r = dg.randint(3, 8, (10_000,)).numpy()
    assert r.min() == 3 and r.max() == 7
    assert set(np.unique(r)) == {3, 4, 5, 6, 7}


def test_rng_state_can_be_saved_and_restored():
    dg.manual_seed(9)
    state = dg.get_rng_state()
    a = dg.randn(4).numpy().copy()
    dg.set_rng_state(state)
    np.testing.assert_array_equal(dg.randn(4).numpy(), a)


# --------------------------------------------------------------------------- deepcopy


def test_deepcopy_of_a_leaf_copies_data_grad_and_flag():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    y = copy.deepcopy(x)
    assert y is not x
    assert y.requires_grad and y.is_leaf
    assert y.tolist() == [1.0, 2.0]
    assert not np.shares_memory(y.detach().numpy(), x.detach().numpy())
    assert y.grad.tolist() == [3.0, 3.0] and y.grad is not x.grad
    with dg.no_grad():
        y.add_(1.0)
    assert x.tolist() == [1.0, 2.0]


def test_deepcopy_keeps_shared_references_shared():
    x = dg.tensor([1.0])
    a, b = copy.deepcopy([x, x])
    assert a is b


def test_deepcopy_of_non_leaf_raises():
    x = dg.tensor([1.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(x * 2)


def test_pickle_round_trip_of_a_leaf():
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = pickle.loads(pickle.dumps(x))
    assert y.tolist() == [1.0, 2.0] and y.requires_grad and y.is_leaf
