"""Loss composites: values, gradients (finite differences) and stability at extreme logits."""

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.ops import losses as L
from dyngrad.testing import gradcheck, gradgradcheck


def r(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return dg.tensor(rng.standard_normal(shape), requires_grad=True)


def test_mse_loss_matches_closed_form_and_gradcheck():
    a, b = r(3, 4), r(3, 4, seed=1)
    expected = ((a.detach().numpy() - b.detach().numpy()) ** 2).mean()
    assert abs(L.mse_loss(a, b).item() - expected) < 1e-12
    assert gradcheck(lambda a, b: L.mse_loss(a, b), (a, b))


def test_l1_loss_gradcheck():
    assert gradcheck(lambda a, b: L.l1_loss(a, b, reduction="sum"), (r(5), r(5, seed=3)))


@pytest.mark.parametrize("kw", [{}, {"reduction": "sum"}, {"reduction": "none"},
                                {"label_smoothing": 0.1}, {"ignore_index": 1}])
def test_cross_entropy_gradcheck(kw):
    y = dg.tensor([0, 3, 1, 2])
    assert gradcheck(lambda x: L.cross_entropy(x, y, **kw), (r(4, 5),))


def test_cross_entropy_is_log_softmax_nll():
    x, y = r(6, 3), dg.tensor([0, 1, 2, 2, 1, 0])
    logp = x.detach().numpy() - np.log(np.exp(x.detach().numpy()).sum(1, keepdims=True))
    expected = -logp[np.arange(6), y.numpy()].mean()
    assert abs(L.cross_entropy(x, y).item() - expected) < 1e-12


def test_cross_entropy_stable_at_extreme_logits():
    x = dg.tensor([[1000.0, -1000.0], [-1000.0, 1000.0]], requires_grad=True)
    loss = L.cross_entropy(x, dg.tensor([1, 1]))
    loss.backward()
    assert np.isfinite(loss.item()) and abs(loss.item() - 1000.0) < 1e-3
    assert np.all(np.isfinite(x.grad.numpy()))


def test_cross_entropy_spatial_dims():
    x, y = r(2, 3, 4), dg.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    assert gradcheck(lambda x: L.cross_entropy(x, y), (x,))


def test_bce_with_logits_stable_and_gradcheck():
    z = dg.tensor([-1000.0, -5.0, 0.0, 5.0, 1000.0], dtype=dg.float64, requires_grad=True)
    t = dg.tensor([0.0, 1.0, 0.5, 1.0, 0.0], dtype=dg.float64)
    loss = L.binary_cross_entropy_with_logits(z, t, reduction="none")
    expected = np.maximum(z.detach().numpy(), 0) - z.detach().numpy() * t.numpy() + \
        np.log1p(np.exp(-np.abs(z.detach().numpy())))
    np.testing.assert_allclose(loss.detach().numpy(), expected, rtol=1e-12)
    loss.sum().backward()
    assert np.all(np.isfinite(z.grad.numpy()))
    assert gradcheck(lambda z: L.binary_cross_entropy_with_logits(z, t), (r(5),))
    assert gradcheck(lambda z: L.binary_cross_entropy_with_logits(
        z, t, pos_weight=dg.tensor(2.0, dtype=dg.float64)), (r(5),))


def test_binary_cross_entropy_clamps_log_at_minus_100():
    p = dg.tensor([0.0, 1.0, 0.3], dtype=dg.float64)
    t = dg.tensor([1.0, 0.0, 1.0], dtype=dg.float64)
    out = L.binary_cross_entropy(p, t, reduction="none").numpy()
    np.testing.assert_allclose(out, [100.0, 100.0, -np.log(0.3)])


def test_nll_loss_rejects_float_targets():
    with pytest.raises(RuntimeError, match="int64"):
        L.nll_loss(r(3, 2), dg.tensor([0.0, 1.0, 1.0]))


def test_losses_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    w = np.random.default_rng(1).random(4)
    for kw in [{}, {"label_smoothing": 0.1}, {"reduction": "sum"}, {"weight": w},
               {"weight": w, "label_smoothing": 0.2}]:
        kd = {k: dg.tensor(v) if k == "weight" else v for k, v in kw.items()}
        kt = {k: torch.tensor(v) if k == "weight" else v for k, v in kw.items()}
        a, b = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        la = L.cross_entropy(a, dg.tensor(y), **kd)
        lb = torch.nn.functional.cross_entropy(b, torch.tensor(y), **kt)
        la.backward()
        lb.backward()
        np.testing.assert_allclose(la.item(), lb.item(), rtol=1e-10)
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1}, {"ignore_index": 2},
                                {"weight": np.array([0.5, 1.0, 2.0])}])
def test_unreduced_loss_over_spatial_dims_has_the_target_s_shape_as_in_torch(kw):
    # d2l's MaskedSoftmaxCELoss multiplies the (N, T) loss by an (N, T) mask; a flat loss of
    # N·T elements cannot be multiplied by it (found by the corpus's d2l_torch)
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    y = np.random.default_rng(3).integers(0, 3, (2, 4, 5))
    kd = {k: dg.tensor(v) if k == "weight" else v for k, v in kw.items()}
    kt = {k: torch.tensor(v) if k == "weight" else v for k, v in kw.items()}
    a, b = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    la = L.cross_entropy(a, dg.tensor(y), reduction="none", **kd)
    lb = torch.nn.functional.cross_entropy(b, torch.tensor(y), reduction="none", **kt)
    assert la.shape == tuple(lb.shape) == (2, 4, 5)
    np.testing.assert_allclose(la.detach().numpy(), lb.detach().numpy(), rtol=1e-12)
    (la * dg.tensor(y.astype(np.float64))).sum().backward()
    (lb * torch.tensor(y.astype(np.float64))).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert gradcheck(lambda x: L.cross_entropy(x, dg.tensor(y), reduction="none", **kd),
                     (r(2, 3, 4, 5),))


def test_unreduced_nll_loss_of_one_sample_is_a_scalar_as_in_torch():
    logp = dg.tensor([-1.0, -2.0, -0.5])
    assert L.nll_loss(logp, dg.tensor(1), reduction="none").shape == ()
    assert L.cross_entropy(logp, dg.tensor(1), reduction="none").shape == ()


def test_nll_loss_rejects_a_target_of_the_wrong_spatial_size():
    with pytest.raises(RuntimeError, match=r"Expected target size \[2, 4\], got \[2, 3\]"):
        L.nll_loss(r(2, 3, 4), dg.tensor(np.zeros((2, 3), np.int64)))


def test_binary_cross_entropy_gradient_is_torch_s_at_probabilities_of_0_and_1():
    # d/dp = (p − y) / max(p(1 − p), 1e-12): ±1e12 where the clamped logs' gradient is nan
    # (pytorch/examples' siamese_network: a sigmoid saturated to 1.0 in float32 made every
    # weight nan after one step)
    torch = pytest.importorskip("torch")
    p = np.array([1.0, 0.0, 0.5, 1.0, 0.0, 1e-30, 0.3, 0.999])
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.2, 0.5])
    grads = []
    for lib, F in ((dg, L), (torch, torch.nn.functional)):
        x = lib.tensor(p, requires_grad=True)
        loss = F.binary_cross_entropy(x, lib.tensor(y), reduction="none")
        (loss * lib.tensor(np.arange(1.0, 9.0))).sum().backward()
        grads.append((loss.detach().numpy(), x.grad.numpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-12)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-12)


def test_binary_cross_entropy_gradcheck_and_gradgradcheck():
    rng = np.random.default_rng(4)
    p = dg.tensor(rng.uniform(0.1, 0.9, (3, 4)), requires_grad=True)
    y = dg.tensor(rng.uniform(0.0, 1.0, (3, 4)), requires_grad=True)
    assert gradcheck(lambda p, y: L.binary_cross_entropy(p, y, reduction="sum"), (p, y))
    assert gradgradcheck(lambda p, y: L.binary_cross_entropy(p, y), (p, y))
