"""Normalisation, channel dropout, resizing and shape layers (dyngrad/nn/functional_norm.py,
dyngrad/nn/normalization.py): PyTorch's values, running statistics and errors (the oracle
where torch is installed), float64 gradchecks of the functional forms (vjp and jvp), and
compiled training steps with BatchNorm equal to eager — buffers written back, modes
switched, a hyperparameter changed between calls."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad import nn, optim
from dyngrad.testing import gradcheck, gradgradcheck


@pytest.fixture(autouse=True)
def _seeded():
    dg.manual_seed(0)


def arr(t) -> np.ndarray:
    return t.detach().numpy()


def leaf(*shape):
    return dg.randn(*shape, dtype=dg.float64, requires_grad=True)


# ------------------------------------------------------------------ gradchecks


def test_batch_norm_training_gradchecks():
    x, w, b = leaf(4, 3, 2, 2), leaf(3), leaf(3)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                     (x, w, b))
    rm, rv = dg.zeros(3, dtype=dg.float64), dg.ones(3, dtype=dg.float64)
    assert gradcheck(lambda x, w: F.batch_norm(x, rm, rv, w, None, training=False), (x, w))


def test_group_rms_norm_and_bilinear_interpolation_gradcheck():
    x = leaf(2, 6, 3, 2)
    assert gradcheck(lambda x, w: F.group_norm(x, 3, w, None), (x, leaf(6)))
    assert gradcheck(lambda x, w: F.rms_norm(x, (3, 2), w, 1e-6), (x, leaf(3, 2)))
    assert gradcheck(lambda x: F.interpolate(x, size=(5, 3), mode="bilinear"), (x,))
    assert gradcheck(lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), (x,))



@pytest.mark.parametrize("norm", ["batch", "layer", "group", "instance"])
def test_second_derivatives_of_the_normalisations_are_the_variances(norm):
    """The variance is written as mean(e²) − mean(e)² with the shift in e detached (Note [a
    variance whose gradient is one pass]): the same function of x at every order, so double
    backward through each normalisation matches finite differences of its gradient."""
    x, w = leaf(3, 4, 2, 2), leaf(4)
    fn = {"batch": lambda x, w: F.batch_norm(x, None, None, w, None, training=True),
          "layer": lambda x, w: F.layer_norm(x, (2, 2), None, None) * w.sum(),
          "group": lambda x, w: F.group_norm(x, 2, w, None),
          "instance": lambda x, w: F.instance_norm(x, weight=w)}[norm]
    assert gradgradcheck(fn, (x, w))
    assert gradcheck(fn, (x, w))  # vjp and jvp


def test_the_centred_variance_is_the_two_pass_variance_and_keeps_a_large_mean():
    """Far from zero (a mean of 1e4, spread 1) the corrected two-pass form keeps float32's
    precision, where E[x²] − E[x]² would lose every digit."""
    r = np.random.default_rng(3)
    a = (1e4 + r.standard_normal((64, 3, 5, 5))).astype(np.float32)
    x = dg.tensor(a, requires_grad=True)
    _, d, var = F.centred_moments(x, (0, 2, 3))
    ref = a.astype(np.float64).var(axis=(0, 2, 3), keepdims=True)
    assert np.allclose(arr(var), ref, rtol=1e-4)
    assert np.allclose(arr(d), a - a.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True),
                       atol=2e-3)

# ------------------------------------------------------------------ the PyTorch oracle


def _pair(torch_mod, ours, x, steps=3, train=True):
    """Run both modules ``steps`` times on shifted inputs, backward of a random cotangent:
    outputs, input and parameter gradients, and buffers agree."""
    import torch
    r = np.random.default_rng(1)
    torch_mod.train(train), ours.train(train)
    for step in range(steps):
        xi = x + step
        a, b = dg.tensor(xi, requires_grad=True), torch.tensor(xi, requires_grad=True)
        ya, yb = ours(a), torch_mod(b)
        np.testing.assert_allclose(arr(ya), yb.detach().numpy(), rtol=1e-10, atol=1e-12)
        g = r.standard_normal(yb.shape)
        ya.backward(dg.tensor(g)), yb.backward(torch.tensor(g))
        np.testing.assert_allclose(arr(a.grad), b.grad.numpy(), rtol=1e-9, atol=1e-11)
        for (name, p), q in zip(ours.named_parameters(), torch_mod.parameters()):
            np.testing.assert_allclose(arr(p.grad), q.grad.numpy(), rtol=1e-9, atol=1e-11,
                                       err_msg=name)
        for (name, buf), tbuf in zip(ours.named_buffers(), torch_mod.buffers()):
            np.testing.assert_allclose(arr(buf), tbuf.numpy(), rtol=1e-12, atol=1e-14,
                                       err_msg=name)


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (5, 3)), ("BatchNorm1d", (4, 3, 6)),
                                        ("BatchNorm2d", (4, 3, 5, 2))])
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"affine": False},
                                {"track_running_stats": False}, {"eps": 1e-3, "momentum": 0.3}])
def test_batch_norm_matches_pytorch_in_training_and_eval(cls, shape, kw):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal(shape)
    ours, theirs = getattr(nn, cls)(3, **kw).double(), getattr(torch.nn, cls)(3, **kw).double()
    _pair(theirs, ours, x, train=True)
    _pair(theirs, ours, x, steps=1, train=False)  # the running statistics (or the batch's)


def test_group_norm_rms_norm_unflatten_match_pytorch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((2, 6, 4, 3))
    gn, tgn = nn.GroupNorm(3, 6).double(), torch.nn.GroupNorm(3, 6).double()
    with dg.no_grad():
        gn.weight.copy_(dg.tensor(np.linspace(0.5, 1.5, 6)))
    with torch.no_grad():
        tgn.weight.copy_(torch.tensor(np.linspace(0.5, 1.5, 6)))
    _pair(tgn, gn, x, steps=1)
    for eps in (None, 1e-3):
        _pair(torch.nn.RMSNorm((4, 3), eps=eps).double(), nn.RMSNorm((4, 3), eps=eps).double(),
              x, steps=1)
    np.testing.assert_array_equal(arr(nn.Unflatten(1, (2, 3))(dg.tensor(x))),
                                  torch.nn.Unflatten(1, (2, 3))(torch.tensor(x)).numpy())
    assert repr(nn.GroupNorm(3, 6)) == repr(torch.nn.GroupNorm(3, 6))
    assert repr(nn.RMSNorm((4, 3))) == repr(torch.nn.RMSNorm((4, 3)))
    assert repr(nn.BatchNorm2d(4)) == repr(torch.nn.BatchNorm2d(4))


@pytest.mark.parametrize("mode, align", [("nearest", None), ("bilinear", False),
                                         ("bilinear", True)])
@pytest.mark.parametrize("kw", [{"size": (7, 9)}, {"size": 3}, {"scale_factor": 2},
                                {"scale_factor": 1.7}, {"scale_factor": (0.5, 3)}])
def test_interpolate_matches_pytorch(mode, align, kw):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 4))
    a = dg.tensor(x, requires_grad=True)
    b = torch.tensor(x, requires_grad=True)
    ya = F.interpolate(a, mode=mode, align_corners=align, **kw)
    yb = torch.nn.functional.interpolate(b, mode=mode, align_corners=align, **kw)
    np.testing.assert_allclose(arr(ya), yb.detach().numpy(), rtol=1e-12, atol=1e-12)
    g = np.random.default_rng(5).standard_normal(yb.shape)
    ya.backward(dg.tensor(g)), yb.backward(torch.tensor(g))
    np.testing.assert_allclose(arr(a.grad), b.grad.numpy(), rtol=1e-12, atol=1e-12)
    up, tup = nn.Upsample(mode=mode, align_corners=align, **kw), \
        torch.nn.Upsample(mode=mode, align_corners=align, **kw)
    np.testing.assert_allclose(arr(up(dg.tensor(x))), tup(torch.tensor(x)).numpy(), rtol=1e-12,
                               atol=1e-12)


def test_channel_dropout_zeroes_whole_channels_and_scales_the_rest():
    x = dg.ones(64, 8, 5, 5)
    y = arr(F.dropout2d(x, 0.25))
    per_channel = y.reshape(64, 8, -1)
    assert np.all((per_channel == 0).all(-1) | (per_channel == 1 / 0.75).all(-1))
    assert 0.15 < (per_channel[..., 0] == 0).mean() < 0.35
    y1 = arr(F.dropout1d(dg.ones(32, 6, 7), 0.5))
    assert np.all((y1 == 0).all(-1) | (y1 == 2.0).all(-1))
    assert np.array_equal(arr(nn.Dropout2d(0.5).eval()(x)), arr(x))
    with pytest.raises(RuntimeError, match="dropout2d: Expected 3D or 4D input"):
        F.dropout2d(dg.ones(2, 3, 4, 5, 6), 0.5)
    with pytest.warns(UserWarning, match="Received a 3D input to dropout2d"):  # (N, C, L)
        y3 = arr(F.dropout2d(dg.ones(16, 8, 5), 0.5))
    assert np.all((y3 == 0).all(-1) | (y3 == 2.0).all(-1))
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):  # elementwise
        y2 = arr(F.dropout2d(dg.ones(64, 32), 0.5))
    assert not np.all((y2 == 0).all(-1) | (y2 == 2.0).all(-1)) and set(np.unique(y2)) == {0, 2}


def test_lazy_linear_materialises_its_parameters_in_place_on_the_first_call():
    m = nn.LazyLinear(5)
    before = list(m.parameters())
    opt = optim.SGD(m.parameters(), lr=0.1)
    out = m(dg.randn(2, 7))
    assert type(m) is nn.Linear and m.in_features == 7 and out.shape == (2, 5)
    assert before[0] is m.weight and m.weight.shape == (5, 7) and m.bias.shape == (5,)
    bound = 1 / np.sqrt(7)  # (Linear's initialisation: U(-1/sqrt(in), 1/sqrt(in)))
    assert np.all(np.abs(arr(m.weight)) <= bound) and np.all(np.abs(arr(m.bias)) <= bound)
    out.sum().backward()
    w = arr(m.weight).copy()
    opt.step()
    assert not np.array_equal(w, arr(m.weight))  # (the optimizer holds the same Parameter)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when "
                                         r"training, got input size \[1, 3\]"):
        nn.BatchNorm1d(3)(dg.randn(1, 3))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input\)"):
        nn.BatchNorm2d(3)(dg.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements not 3"):
        nn.BatchNorm1d(3)(dg.randn(2, 4))
    with pytest.raises(ValueError, match="num_channels must be divisible by num_groups"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="only one of size or scale_factor"):
        F.interpolate(dg.randn(1, 1, 2, 2), size=3, scale_factor=2)
    with pytest.raises(NotImplementedError, match="mode 'bicubic' is not supported"):
        F.interpolate(dg.randn(1, 1, 2, 2), size=3, mode="bicubic")


# ------------------------------------------------------------------ compiled


def _bn_model(cls=nn.BatchNorm1d, **kw):
    return nn.Sequential(nn.Linear(6, 8), cls(8, **kw), nn.ReLU(), nn.Linear(8, 3))


def _step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def _assert_state(m1, m2, rtol, atol):
    for (n1, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        np.testing.assert_allclose(arr(a), arr(b), rtol=rtol, atol=atol, err_msg=n1)


@pytest.mark.parametrize("backend", ["interp", "llvm"])
@pytest.mark.parametrize("kw", [{}, {"momentum": None}, {"track_running_stats": False}])
def test_a_compiled_training_step_with_batch_norm_equals_eager(backend, kw):
    """Loss, parameters, running statistics and num_batches_tracked over 6 steps; then eval
    mode (the module's flag is read: the call follows it), then training again."""
    exact = backend == "interp"
    rtol, atol = (0, 0) if exact else (2e-5, 1e-6)
    m1 = _bn_model(**kw)
    m2 = copy.deepcopy(m1)
    o1, o2 = optim.SGD(m1.parameters(), lr=0.1, momentum=0.9), \
        optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    eager, comp = _step(m1, o1), compiler.compile(_step(m2, o2), backend=backend)
    r = np.random.default_rng(6)
    for i in range(6):
        x = dg.tensor(r.standard_normal((16, 6)).astype(np.float32))
        y = dg.tensor(r.integers(0, 3, 16))
        l1, l2 = float(eager(x, y)), float(comp(x, y))
        assert abs(l1 - l2) <= rtol * abs(l1) + atol, (i, l1, l2)
        _assert_state(m1, m2, rtol, atol)
    m1.eval(), m2.eval()
    f1, f2 = (lambda x: m1(x)), compiler.compile(lambda x: m2(x), backend=backend)
    x = dg.tensor(r.standard_normal((5, 6)).astype(np.float32))
    for _ in range(2):
        np.testing.assert_allclose(arr(f2(x)), arr(f1(x)), rtol=rtol, atol=atol)
    m1.train(), m2.train()
    x, y = dg.tensor(r.standard_normal((16, 6)).astype(np.float32)), dg.tensor(r.integers(0, 3, 16))
    assert abs(float(eager(x, y)) - float(comp(x, y))) <= 1e-4
    _assert_state(m1, m2, max(rtol, 2e-5), max(atol, 1e-6))


def test_a_momentum_changed_between_compiled_calls_is_followed():
    """The module's momentum is Python state the step reads: changing it between calls
    must change what the compiled step writes into the running statistics."""
    m1 = _bn_model(nn.BatchNorm1d)
    m2 = copy.deepcopy(m1)
    o1, o2 = optim.SGD(m1.parameters(), lr=0.05), optim.SGD(m2.parameters(), lr=0.05)
    eager, comp = _step(m1, o1), compiler.compile(_step(m2, o2), backend="interp")
    r = np.random.default_rng(7)
    for i, mom in enumerate((0.1, 0.1, 0.1, 0.5, 0.5, 0.01)):
        m1[1].momentum = m2[1].momentum = mom
        x = dg.tensor(r.standard_normal((8, 6)).astype(np.float32))
        y = dg.tensor(r.integers(0, 3, 8))
        assert float(eager(x, y)) == float(comp(x, y)), i
        _assert_state(m1, m2, 0, 0)


def test_a_compiled_batch_norm_2d_and_upsample_forward_and_backward_equal_eager():
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.BatchNorm2d(3),
                          nn.Dropout2d(0.0), nn.Flatten(), nn.Unflatten(1, (3, 8, 8)),
                          nn.GroupNorm(3, 3), nn.Flatten(), nn.Linear(192, 2))
    twin = copy.deepcopy(model)
    f = compiler.compile(lambda x: model(x).square().mean(), backend="llvm")
    r = np.random.default_rng(8)
    for _ in range(3):
        x = dg.tensor(r.standard_normal((4, 3, 4, 4)).astype(np.float32))
        l1, l2 = twin(x).square().mean(), f(x)
        l1.backward(), l2.backward()
        assert abs(float(l1) - float(l2)) <= 1e-5 * max(1.0, abs(float(l1)))
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            np.testing.assert_allclose(arr(p.grad), arr(q.grad), rtol=1e-4, atol=1e-5,
                                       err_msg=n)
        _assert_state(model, twin, 1e-5, 1e-6)


def test_a_view_saved_for_a_backward_outside_keeps_its_base_without_an_escape():
    """GroupNorm's output is a view of a tensor made inside the call, and the returned
    loss's graph saves it (for the weight's gradient): its base is alive only through that
    view, which is no escape — the call compiles. The same base also stored by native code
    into a dict is an escape: the function runs eagerly, and the dict stays right."""
    import operator
    model = nn.GroupNorm(3, 3)
    f = compiler.compile(lambda x: model(x).square().mean(), backend="llvm")
    for _ in range(3):
        f(dg.randn(4, 3, 4, 4)).backward()
    assert not f.fallbacks and f.variants[0].calls >= 1

    w, store = dg.ones(3, requires_grad=True), {}

    def g(x):
        h = x * 2.0 + 1.0
        operator.setitem(store, "h", h)  # (native code: not a replayed effect)
        return (h.reshape(3, -1) * w.reshape(3, 1)).sum()
    cg = compiler.compile(g, backend="interp")
    for _ in range(3):
        x = dg.randn(3, 4)
        cg(x).backward()
        np.testing.assert_array_equal(arr(store["h"]), arr(x * 2.0 + 1.0))
    assert cg.fallbacks and "kept in Python state" in cg.fallbacks[0]


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_a_saved_tensor_also_stored_by_native_code_is_an_escape(backend):
    """The returned loss's graph saves ``b`` (for b*b's gradient), and native code
    (list.append called through map) also stores it: Python state a compiled call would not
    update, so the function runs eagerly and the list follows every call."""
    log = []

    def f(x):
        b = x * 2.0
        list(map(log.append, [b]))
        return (b * b).sum()
    cf = compiler.compile(f, backend=backend)
    for k in range(3):
        x = dg.full((2,), float(k + 1), requires_grad=True)
        cf(x).backward()
        assert len(log) == k + 1
        np.testing.assert_array_equal(arr(log[-1]), [2.0 * (k + 1)] * 2)
    assert not cf.variants or sum(v.calls for v in cf.variants) == 0


def test_a_compiled_batch_norm_backward_reads_the_activations_in_one_reduction():
    """Forward: the mean's pass, then the variance's with the normalisation as its epilogue;
    backward: one reduction (the gradient's sum and its sum against x − mean, siblings) with
    the input gradient as its epilogue — no reduction waits for another in the backward."""
    bn = nn.BatchNorm2d(4)
    x = dg.randn(8, 4, 6, 6, requires_grad=True)
    g = dg.randn(8, 4, 6, 6)

    def step(x, g):
        y = F.relu(bn(x))
        return dg.autograd.grad((y * g).sum(), x)[0]

    cf = compiler.compile(step, backend="llvm")
    ref = step(x, g)
    out = cf(x, g)
    assert np.allclose(arr(out), arr(ref), rtol=1e-4, atol=1e-5)
    groups = cf.variants[0].groups
    full = [grp for grp in groups if grp.kind == "reduce" and grp.shape == (8, 4, 6, 6)]
    assert len(full) == 3, [grp.describe() for grp in groups]


def test_a_normalisation_gives_the_same_bits_with_and_without_autograd():
    """One formula either way (the variance's mean(e)² term included without autograd too):
    rows of v and nextafter(v) with eps=0 — where the term is all of the variance — agree."""
    v = np.float32(1.5)
    row = np.array([v, np.nextafter(v, np.float32(2))] * 4, np.float32)
    a = np.stack([row, row[::-1]])
    with_grad = F.layer_norm(dg.tensor(a, requires_grad=True), (8,), eps=0.0)
    with dg.no_grad():
        without = F.layer_norm(dg.tensor(a), (8,), eps=0.0)
    np.testing.assert_array_equal(arr(with_grad), arr(without))
    x = dg.randn(4, 3, 5, 5)
    bn = nn.BatchNorm2d(3)
    y1 = bn(x.requires_grad_(True)).detach()
    bn.running_mean.zero_(), bn.running_var.fill_(1.0)
    with dg.no_grad():
        y2 = bn(x)
    np.testing.assert_array_equal(arr(y1), arr(y2))
