"""Small pieces of PyTorch's surface the corpus needed (tests/corpus/STATUS.md):
``Tensor.view_as``, ``size=`` on creation functions, ``inference_mode``, ``F.elu``/``nn.ELU``
and ``roll`` — against PyTorch where it is installed, with float64 gradchecks."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad.testing import gradcheck


def test_view_as_and_size_keyword():
    x = dg.arange(6.0)
    assert x.view_as(dg.zeros(2, 3)).shape == (2, 3)
    assert dg.empty(size=(2, 3)).shape == dg.zeros(size=[2, 3]).shape == (2, 3)
    assert dg.ones(size=(4,)).shape == (4,)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        dg.zeros(2, sise=3)


def test_inference_mode_as_context_and_decorator():
    x = dg.ones(2, requires_grad=True)
    with dg.inference_mode():
        assert not (x * 2).requires_grad and dg.is_inference_mode_enabled()
    with dg.inference_mode(False):
        assert (x * 2).requires_grad

    @dg.inference_mode
    def bare():
        return (x * 2).requires_grad

    @dg.inference_mode()
    def called():
        return (x * 2).requires_grad
    assert not bare() and not called() and (x * 2).requires_grad


def test_elu_and_roll_match_pytorch_and_gradcheck():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(0)
    x = r.standard_normal(500) * 3
    x[:4] = [-1e-5, -1e-9, 0.0, 1e-9]
    for alpha in (1.0, 0.3):
        np.testing.assert_allclose(F.elu(dg.tensor(x), alpha).numpy(),
                                   torch.nn.functional.elu(torch.tensor(x), alpha).numpy(),
                                   rtol=1e-14, atol=1e-300)
    assert repr(dg.nn.ELU(0.5)) == repr(torch.nn.ELU(0.5))
    a = np.arange(24).reshape(2, 3, 4)
    for shifts, dims in ((1, 0), ((1, -2), (0, 2)), (5, None), (-7, 1)):
        np.testing.assert_array_equal(dg.roll(dg.tensor(a), shifts, dims).numpy(),
                                      torch.roll(torch.tensor(a), shifts, dims).numpy())
    leaf = dg.randn(3, 4, dtype=dg.float64, requires_grad=True)
    assert gradcheck(lambda t: F.elu(t + 0.05, 0.7), (leaf,))
    assert gradcheck(lambda t: dg.roll(t, (1, -1), (0, 1)) * t, (leaf,))


def test_elu_and_roll_compile_and_equal_eager():
    fn = lambda x: (F.elu(x) * dg.roll(x, 2, 1)).sum(0)  # noqa: E731
    f = compiler.compile(fn, backend="llvm")
    x = dg.tensor(np.random.default_rng(1).standard_normal((5, 7)).astype(np.float32))
    for _ in range(2):
        np.testing.assert_allclose(f(x).numpy(), fn(x).numpy(), rtol=1e-5, atol=1e-6)
