"""``isclose``, ``allclose`` and ``equal`` (PyTorch's closeness tests), against PyTorch where
it is installed and against their definitions where it is not."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dyngrad as dg

A = [0.0, 1.0, 1.0 + 1e-6, 1.0 + 1e-3, math.inf, -math.inf, math.nan, 1e-9, -2.0]
B = [0.0, 1.0, 1.0, 1.0, math.inf, math.inf, math.nan, 0.0, math.inf]


@pytest.mark.parametrize("equal_nan", [False, True])
@pytest.mark.parametrize("rtol,atol", [(1e-5, 1e-8), (0.0, 0.0), (1e-2, 0.0), (0.0, 1e-8)])
def test_isclose_follows_the_definition(rtol, atol, equal_nan):
    a, b = np.array(A), np.array(B)
    want = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan)  # (same definition)
    got = dg.isclose(dg.tensor(A), dg.tensor(B), rtol=rtol, atol=atol, equal_nan=equal_nan)
    assert got.dtype == dg.bool and got.tolist() == want.tolist()
    assert dg.tensor(A).isclose(dg.tensor(B), rtol, atol, equal_nan).tolist() == want.tolist()


def test_isclose_broadcasts_and_takes_numbers_and_integers():
    assert dg.isclose(dg.tensor([[1.0], [2.0]]), dg.tensor([1.0, 2.0])).tolist() == \
        [[True, False], [False, True]]
    assert dg.isclose(dg.tensor([1.0, 1.1]), 1.0, rtol=0.01).tolist() == [True, False]
    assert dg.isclose(dg.tensor([1, 2, 5]), dg.tensor([2, 2, 2]), atol=1).tolist() == \
        [True, True, False]


def test_allclose_and_equal_give_python_bools():
    x = dg.tensor([1.0, 2.0, 3.0])
    assert dg.allclose(x, x + 1e-9) is True and dg.allclose(x, x + 1e-3) is False
    assert x.allclose(x) is True
    assert dg.equal(x, x.clone()) is True and dg.equal(x, x + 1e-9) is True
    assert dg.equal(x, x[:2]) is False and dg.equal(x, dg.tensor([1.0, 2.0, 4.0])) is False
    assert x.equal(x) is True
    assert dg.allclose(dg.tensor([math.nan]), dg.tensor([math.nan])) is False
    assert dg.allclose(dg.tensor([math.nan]), dg.tensor([math.nan]), equal_nan=True) is True


def test_bad_tolerances_name_the_function():
    with pytest.raises(ValueError, match="isclose: rtol and atol must be non-negative"):
        dg.isclose(dg.ones(2), dg.ones(2), rtol=-1.0)
    with pytest.raises(TypeError, match="equal: other must be a Tensor"):
        dg.equal(dg.ones(2), [1.0, 1.0])


def test_against_pytorch():
    torch = pytest.importorskip("torch")
    ta, tb = torch.tensor(A), torch.tensor(B)
    for rtol, atol, en in [(1e-5, 1e-8, False), (1e-2, 0.0, True), (0.0, 0.0, False)]:
        want = torch.isclose(ta, tb, rtol=rtol, atol=atol, equal_nan=en).tolist()
        assert dg.isclose(dg.tensor(A), dg.tensor(B), rtol=rtol, atol=atol,
                          equal_nan=en).tolist() == want
    x = [1.0, 2.0, 3.0]
    assert dg.equal(dg.tensor(x), dg.tensor(x)) == torch.equal(torch.tensor(x), torch.tensor(x))
    assert dg.allclose(dg.tensor(x), dg.tensor(x) + 1e-4) == \
        torch.allclose(torch.tensor(x), torch.tensor(x) + 1e-4)
