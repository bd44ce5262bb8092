"""Bad input gets a clear error: the right exception type, a message naming the op and the
shapes or dtypes involved, and never a numpy exception leaking through (not chained from
one, and any numpy context suppressed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dyngrad as dg

# phrases of numpy's own messages that must never reach a dyngrad user unexplained
RAW_NUMPY = ("operands could not be broadcast together", "matmul: Input operand",
             "cannot reshape array", "all the input array dimensions",
             "ufunc", "Cannot cast ufunc")


def check_error(exc_type, fn, *fragments):
    """Run ``fn``; it must raise exactly ``exc_type`` whose message holds every fragment,
    not chained from (or showing) another exception."""
    with pytest.raises(exc_type) as info:
        fn()
    exc = info.value
    assert type(exc) is exc_type, f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in message: {msg}"
    assert exc.__cause__ is None, f"chained from {exc.__cause__!r}"
    if exc.__context__ is not None:
        assert exc.__suppress_context__, f"shows context {exc.__context__!r}"
    for raw in RAW_NUMPY:
        assert raw not in msg, f"raw numpy message in: {msg}"
    return exc


# --------------------------------------------------------------------------- broadcasting


def test_add_broadcast_mismatch_names_op_and_both_shapes():
    check_error(RuntimeError, lambda: dg.ones(2, 3) + dg.ones(4, 3), "add", "[2, 3]", "[4, 3]")


def test_mul_broadcast_mismatch_names_op_and_both_shapes():
    check_error(RuntimeError, lambda: dg.ones(2, 3) * dg.ones(2, 4), "mul", "[2, 3]", "[2, 4]")
    check_error(RuntimeError, lambda: dg.mul(dg.ones(5), dg.ones(3)), "mul", "[5]", "[3]")


def test_sub_and_div_broadcast_mismatch_name_the_op():
    check_error(RuntimeError, lambda: dg.ones(2) - dg.ones(3), "sub", "[2]", "[3]")
    check_error(RuntimeError, lambda: dg.ones(2) / dg.ones(3), "div", "[2]", "[3]")


def test_where_broadcast_mismatch_names_op_and_shapes():
    cond = dg.ones(2, 3) > 0
    check_error(RuntimeError, lambda: dg.where(cond, dg.ones(4), 0.0), "where", "[2, 3]", "[4]")


def test_broadcast_mismatch_with_requires_grad_is_the_same_error():
    x = dg.ones(2, 3, requires_grad=True)
    check_error(RuntimeError, lambda: x * dg.ones(3, 2), "mul", "[2, 3]", "[3, 2]")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4),
       st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_any_broadcast_mismatch_reports_both_shapes(s1, s2):
    try:
        np.broadcast_shapes(tuple(s1), tuple(s2))
        assume(False)
    except ValueError:
        pass
    check_error(RuntimeError, lambda: dg.zeros(*s1) + dg.zeros(*s2), "add", str(s1), str(s2))


# --------------------------------------------------------------------------- matmul


def test_matmul_inner_dim_mismatch_uses_pytorch_wording():
    check_error(RuntimeError, lambda: dg.ones(2, 3) @ dg.ones(4, 5),
                "matmul", "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    check_error(RuntimeError, lambda: dg.matmul(dg.ones(2, 3), dg.ones(4, 5)),
                "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")


def test_mm_and_bmm_mismatches_name_the_shapes():
    check_error(RuntimeError, lambda: dg.mm(dg.ones(2, 3), dg.ones(4, 5)), "(2x3 and 4x5)")
    check_error(RuntimeError, lambda: dg.mm(dg.ones(3), dg.ones(3)), "mm", "2-d", "1-d")
    check_error(RuntimeError, lambda: dg.bmm(dg.ones(2, 2, 3), dg.ones(3, 3, 5)),
                "bmm", "[2, 2, 3]", "[3, 3, 5]")


def test_dot_size_mismatch_names_op_and_sizes():
    check_error(RuntimeError, lambda: dg.dot(dg.ones(3), dg.ones(4)), "dot", "[3]", "[4]")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
def test_any_matmul_inner_mismatch_reports_both_matrices(m, k1, k2, n):
    assume(k1 != k2)
    check_error(RuntimeError, lambda: dg.zeros(m, k1) @ dg.zeros(k2, n),
                f"mat1 and mat2 shapes cannot be multiplied ({m}x{k1} and {k2}x{n})")


# --------------------------------------------------------------------------- shapes


def test_reshape_to_incompatible_size_names_op_shape_and_size():
    check_error(RuntimeError, lambda: dg.ones(2, 3).reshape(4, 2), "reshape", "[4, 2]", "6")
    check_error(RuntimeError, lambda: dg.ones(2, 3).reshape(-1, 4), "reshape", "[-1, 4]", "6")
    check_error(RuntimeError, lambda: dg.ones(2, 3).reshape(-1, -1), "reshape",
                "only one dimension can be inferred")


def test_view_to_incompatible_size_names_view():
    check_error(RuntimeError, lambda: dg.ones(2, 3).view(5), "view", "[5]", "6")


def test_view_of_non_contiguous_tensor_suggests_reshape():
    check_error(RuntimeError, lambda: dg.ones(2, 3).T.view(6), "view", "reshape")


def test_expand_to_incompatible_size():
    check_error(RuntimeError, lambda: dg.ones(3).expand(4), "expand", "[4]", "[3]")


def test_permute_with_a_non_permutation():
    check_error(RuntimeError, lambda: dg.ones(2, 3).permute(0, 0), "permute", "[0, 0]",
                "[2, 3]")


@pytest.mark.parametrize("call,op", [
    (lambda t: t.sum(5), "sum"),
    (lambda t: t.transpose(0, 5), "transpose"),
    (lambda t: t.squeeze(4), "squeeze"),
    (lambda t: t.size(2), "size"),
])
def test_dimension_out_of_range(call, op):
    check_error(IndexError, lambda: call(dg.ones(2, 3)), op, "Dimension out of range", "[-2, 1]")


def test_cat_of_mismatched_shapes_names_op_and_shapes():
    check_error(RuntimeError, lambda: dg.cat([dg.ones(2, 3), dg.ones(2, 4)]), "cat", "[2, 3]",
                "[2, 4]")
    check_error(RuntimeError, lambda: dg.cat([dg.ones(2, 3), dg.ones(3, 3)], dim=1), "cat",
                "[2, 3]", "[3, 3]")


def test_stack_of_mismatched_shapes_names_op_and_shapes():
    check_error(RuntimeError, lambda: dg.stack([dg.ones(2, 3), dg.ones(2, 4)]), "stack",
                "[2, 3]", "[2, 4]")


# --------------------------------------------------------------------------- indexing


@pytest.mark.parametrize("key,frag", [
    (5, "index 5 is out of bounds for dimension 0 with size 2"),
    (-3, "index -3 is out of bounds for dimension 0 with size 2"),
    ((0, 3), "index 3 is out of bounds for dimension 1 with size 3"),
    ((slice(None), -4), "index -4 is out of bounds for dimension 1 with size 3"),
])
def test_integer_index_out_of_range(key, frag):
    t = dg.ones(2, 3)
    check_error(IndexError, lambda: t[key], frag)


def test_index_out_of_range_on_tensor_requiring_grad():
    x = dg.ones(2, 3, requires_grad=True)
    check_error(IndexError, lambda: x[2], "index 2 is out of bounds for dimension 0 with size 2")


@pytest.mark.parametrize("key,frag", [
    (lambda: dg.tensor([0, 2]), "index 2 is out of bounds for dimension 0 with size 2"),
    (lambda: (slice(None), dg.tensor([0, 7])),
     "index 7 is out of bounds for dimension 1 with size 3"),
    (lambda: (dg.tensor([0, 1]), dg.tensor([1, -4])),
     "index -4 is out of bounds for dimension 1 with size 3"),
    (lambda: [0, 5], "index 5 is out of bounds for dimension 0 with size 2"),
])
def test_integer_tensor_index_out_of_range(key, frag):
    t = dg.ones(2, 3)
    check_error(IndexError, lambda: t[key()], frag)


def test_setitem_index_out_of_range():
    t = dg.ones(2, 3)

    def write():
        t[dg.tensor([4])] = 1.0
    check_error(IndexError, write, "index 4 is out of bounds for dimension 0 with size 2")
    assert t._version == 0


def test_gather_index_out_of_range_names_gather():
    t = dg.ones(2, 3)
    check_error(IndexError, lambda: dg.gather(t, 1, dg.tensor([[0, 3]])), "gather", "index 3",
                "size 3")
    check_error(IndexError, lambda: t.gather(0, dg.tensor([[-3, 0, 0]])), "gather", "-3",
                "size 2")


def test_index_select_out_of_range():
    check_error(IndexError, lambda: dg.index_select(dg.ones(2, 3), 0, dg.tensor([3])),
                "index 3", "size 2")


def test_too_many_indices():
    t = dg.ones(2, 3)
    check_error(IndexError, lambda: t[0, 0, 0], "too many indices for tensor of dimension 2")
    check_error(IndexError, lambda: t[..., 0, 0, 0], "too many indices")


def test_negative_slice_step_raises_value_error_naming_indexing():
    t = dg.arange(5)
    check_error(ValueError, lambda: t[::-1], "indexing", "step must be greater than zero",
                "-1")
    check_error(ValueError, lambda: dg.ones(2, 3)[0, ::-2], "step must be greater than zero")


def test_float_tensor_used_as_index():
    t = dg.ones(3)
    check_error(IndexError, lambda: t[dg.tensor([0.0, 1.0])], "indices", "float32")
    check_error(IndexError, lambda: t[1.0], "indices", "float")
    check_error(IndexError, lambda: dg.index_select(t, 0, dg.tensor([0.0])), "float32")


def test_bool_mask_of_wrong_shape_uses_pytorch_wording():
    t = dg.ones(2, 3)
    check_error(IndexError, lambda: t[dg.tensor([True, False, True])],
                "The shape of the mask [3] at index 0 does not match the shape of the indexed "
                "tensor [2, 3] at index 0")
    check_error(IndexError, lambda: t[:, dg.tensor([True, False])],
                "The shape of the mask [2] at index 0 does not match the shape of the indexed "
                "tensor [2, 3] at index 1")

    def write():
        t[dg.tensor([True, False, True])] = 0.0
    check_error(IndexError, write, "The shape of the mask [3]")
    assert t._version == 0


def test_bool_mask_of_right_shape_selects():
    t = dg.arange(6).reshape(2, 3)
    assert t[t > 2].tolist() == [3, 4, 5]
    assert t[:, dg.tensor([True, False, True])].tolist() == [[0, 2], [3, 5]]
    assert t[dg.tensor([False, True])].tolist() == [[3, 4, 5]]


# --------------------------------------------------------------------------- autograd misuse


def test_requires_grad_on_int_tensor():
    check_error(RuntimeError, lambda: dg.tensor([1, 2]).requires_grad_(), "require gradients",
                "floating point", "int64")
    check_error(RuntimeError, lambda: dg.tensor([True]).requires_grad_(), "bool")
    check_error(RuntimeError, lambda: dg.ones(2, dtype=dg.int64, requires_grad=True), "int64")


def test_backward_on_tensor_not_requiring_grad():
    check_error(RuntimeError, lambda: dg.ones(3).sum().backward(), "backward",
                "does not require grad")
    with dg.no_grad():
        y = (dg.ones(3, requires_grad=True) * 2).sum()
    check_error(RuntimeError, y.backward, "backward", "does not require grad")


def test_autograd_grad_of_tensor_not_requiring_grad():
    x = dg.ones(2, requires_grad=True)
    check_error(RuntimeError, lambda: dg.autograd.grad(dg.ones(1).sum(), x), "autograd.grad",
                "does not require grad")


def test_backward_with_gradient_of_wrong_shape():
    x = dg.ones(3, requires_grad=True)
    y = x * 2
    check_error(RuntimeError, lambda: y.backward(dg.ones(2)), "shape", "[2]", "[3]")


def test_grad_assigned_with_wrong_shape():
    x = dg.ones(2, requires_grad=True)

    def assign():
        x.grad = dg.ones(3)
    check_error(RuntimeError, assign, "grad", "[3]", "[2]")
    assert x.grad is None


def test_grad_assigned_with_wrong_dtype_or_type():
    x = dg.ones(2, requires_grad=True)

    def wrong_dtype():
        x.grad = dg.ones(2, dtype=dg.float64)

    def not_a_tensor():
        x.grad = np.ones(2)
    check_error(RuntimeError, wrong_dtype, "grad", "float64", "float32")
    check_error(TypeError, not_a_tensor, "grad", "ndarray")


def test_autograd_grad_of_unused_input():
    x = dg.ones(2, requires_grad=True)
    z = dg.ones(2, requires_grad=True)
    check_error(RuntimeError, lambda: dg.autograd.grad((x * 2).sum(), [x, z]), "allow_unused")


# --------------------------------------------------------------------------- in-place misuse


@pytest.mark.parametrize("op,call", [
    ("add_", lambda t: t.add_(1.5)),
    ("mul_", lambda t: t.mul_(dg.tensor([1.5, 2.0]))),
    ("__iadd__", lambda t: t.__iadd__(0.5)),
    ("div_", lambda t: t.div_(2)),
    ("sqrt_", lambda t: t.sqrt_()),
])
def test_in_place_float_result_into_int_tensor(op, call):
    t = dg.tensor([1, 2])
    check_error(RuntimeError, lambda: call(t), op, "float32", "int64", "can't be cast")
    assert t.tolist() == [1, 2] and t._version == 0


def test_in_place_float_result_into_bool_tensor():
    check_error(RuntimeError, lambda: dg.tensor([True]).add_(1.5), "add_", "float32", "bool",
                "can't be cast")


def test_in_place_broadcast_to_a_bigger_shape():
    t = dg.ones(3)
    check_error(RuntimeError, lambda: t.add_(dg.ones(2, 3)), "add_", "[3]", "[2, 3]")
    assert t._version == 0


@pytest.mark.parametrize("op,call", [
    ("add_", lambda e: e.add_(1.0)),
    ("zero_", lambda e: e.zero_()),
    ("__setitem__", lambda e: e.__setitem__(0, 2.0)),
    ("__imul__", lambda e: e.__imul__(2.0)),
])
def test_in_place_on_expanded_view(op, call):
    base = dg.ones(3, 1)
    e = base.expand(3, 4)
    check_error(RuntimeError, lambda: call(e), op, "expanded", "clone()")
    assert base.tolist() == [[1.0], [1.0], [1.0]]


def test_in_place_on_leaf_requiring_grad_names_op_and_fix():
    w = dg.ones(2, requires_grad=True)
    check_error(RuntimeError, lambda: w.add_(1.0), "add_", "leaf Variable", "no_grad()")


def test_setitem_value_of_wrong_shape():
    t = dg.ones(3)

    def write():
        t[:] = dg.ones(4)
    check_error(RuntimeError, write, "__setitem__", "[4]", "[3]")
    assert t._version == 0

    x = dg.ones(3, requires_grad=True) * 1.0

    def write_tracked():
        x[:2] = dg.ones(3)
    check_error(RuntimeError, write_tracked, "__setitem__", "[3]", "[2]")


# --------------------------------------------------------------------------- creation


@pytest.mark.parametrize("np_dtype", [np.uint16, np.float16, np.uint32, np.complex64])
def test_from_numpy_unsupported_dtype_suggests_astype(np_dtype):
    a = np.zeros(2, dtype=np_dtype)
    check_error(TypeError, lambda: dg.from_numpy(a), "from_numpy", np.dtype(np_dtype).name,
                "astype")


def test_from_numpy_of_a_list():
    check_error(TypeError, lambda: dg.from_numpy([1, 2]), "from_numpy", "list")


def test_tensor_from_ragged_lists():
    check_error(ValueError, lambda: dg.tensor([[1, 2], [3]]), "tensor", "rectangular")


def test_tensor_from_non_numbers():
    check_error(TypeError, lambda: dg.tensor(["a", "b"]), "tensor", "numbers")
    check_error(TypeError, lambda: dg.tensor([object()]), "tensor")


def test_unsupported_dtype_name():
    check_error(TypeError, lambda: dg.zeros(2, dtype="float16"), "dtype", "float16",
                "float32, float64, int64, int32, int16, int8, uint8 and bool")



# --------------------------------------------------------------------------- values and dtypes


def test_item_of_multi_element_tensor():
    check_error(RuntimeError, lambda: dg.ones(2, 3).item(), "6 elements", "Scalar", "[2, 3]")


def test_bool_of_multi_element_tensor():
    check_error(RuntimeError, lambda: bool(dg.ones(2)), "ambiguous", "[2]")


def test_subtracting_bool_tensors():
    check_error(TypeError, lambda: dg.tensor([True]) - dg.tensor([False]), "sub", "bool")
    check_error(TypeError, lambda: dg.tensor([True]) - 1, "sub", "bool")


def test_negating_a_bool_tensor():
    check_error(TypeError, lambda: -dg.tensor([True]), "neg", "bool")


def test_binary_op_with_unsupported_operand():
    check_error(TypeError, lambda: dg.ones(2) + "x", "Tensor", "str")
    check_error(TypeError, lambda: dg.add(dg.ones(2), object()), "add", "object")


@pytest.mark.parametrize("decimals", [1.5, True, "2", None])
def test_round_decimals_that_is_not_an_int_names_round_and_the_type(decimals):
    check_error(TypeError, lambda: dg.round(dg.ones(2), decimals=decimals), "round()",
                "'decimals' must be int", type(decimals).__name__)


def test_round_with_decimals_of_an_integer_tensor_says_to_convert_it():
    check_error(TypeError, lambda: dg.tensor([15, 25]).round(decimals=-1), "round",
                "decimals=-1", "floating-point", "int64", ".double()")
