"""The PyTorch surface around a model, as in a CPU-only PyTorch build: devices, ``cuda``,
``accelerator``, ``backends``, ``amp``, ``load(weights_only=)``; the losses, optimizers and
learning-rate schedulers of issue 15. Where torch is installed it is the oracle (the
oracle tests skip without it)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg

try:
    import torch
except ImportError:  # torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")


def _error(fn):
    """(type name, message) of what ``fn()`` raises, or None."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever is raised
        return type(exc).__name__, str(exc)
    return None


def _warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [(w.category.__name__, str(w.message)) for w in caught]


def _ours(text: str) -> str:
    """PyTorch's message with dyngrad's name where PyTorch names itself."""
    return text.replace("torch", "dyngrad").replace("Torch", "dyngrad")


def _plain_sizes(text: str) -> str:
    """PyTorch's message with ``torch.Size([2, 3])`` written as dyngrad's ``[2, 3]``."""
    return re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", text)


# ------------------------------------------------------------------ devices


def test_device_parses_compares_and_prints_as_torch():
    for args in [("cpu",), ("cpu:0",), ("cpu", 0), ("cuda",), ("cuda:1",), ("cuda", 2),
                 ("mps",), ("meta",)]:
        d = dg.device(*args)
        assert (d.type, d.index) in [("cpu", None), ("cpu", 0), ("cuda", None), ("cuda", 1),
                                     ("cuda", 2), ("mps", None), ("meta", None)]
        if torch is not None:
            t = torch.device(*args)
            assert (repr(d), str(d), d.type, d.index) == (repr(t), str(t), t.type, t.index)
    assert dg.device("cpu") == dg.device(dg.device("cpu"))
    assert dg.device("cpu") != dg.device("cpu:0") and dg.device("cpu") != "cpu"
    assert len({dg.device("cpu"), dg.device("cpu")}) == 1
    with pytest.raises(AttributeError):
        dg.device("cpu").type = "cuda"


@needs_torch
def test_device_errors_are_torchs():
    for bad in [("foo",), (0,), ("cuda:0", 1), ("cuda:x",), ("cpu:-1",), ("",)]:
        assert _error(lambda b=bad: dg.device(*b)) == _error(lambda b=bad: torch.device(*b))


def test_a_tensor_is_on_the_cpu():
    x = dg.ones(2)
    assert x.device == dg.device("cpu") and x.device.type == "cpu"
    assert x.is_cuda is False and x.is_xpu is False and x.is_cpu is True
    assert x.cpu() is x and x.to("cpu") is x and x.to(dg.device("cpu")) is x and x.to(x) is x


def test_creation_functions_take_device():
    cpu = dg.device("cpu")
    x = dg.ones(2, 3)
    made = [
        dg.tensor([1.0], device="cpu"), dg.as_tensor([1.0], device=cpu),
        dg.zeros(2, device="cpu"), dg.ones(2, device=cpu), dg.full((2,), 3.0, device="cpu"),
        dg.empty(2, device="cpu"), dg.arange(3, device="cpu"),
        dg.linspace(0, 1, 3, device="cpu"), dg.eye(2, device="cpu"),
        dg.rand(2, device="cpu"), dg.randn(2, device=cpu), dg.randint(0, 3, (2,), device="cpu"),
        dg.randperm(3, device="cpu"), dg.zeros_like(x, device="cpu"),
        dg.ones_like(x, device=cpu), dg.full_like(x, 2.0, device="cpu"),
        dg.empty_like(x, device="cpu"), dg.rand_like(x, device="cpu"),
        dg.randn_like(x, device="cpu"), dg.randint_like(x, 3, device="cpu"),
    ]
    assert all(t.device == cpu for t in made)


@needs_torch
def test_asking_for_cuda_raises_torchs_assertion():
    cases = [
        (lambda: dg.zeros(2, device="cuda"), lambda: torch.zeros(2, device="cuda")),
        (lambda: dg.tensor([1.0], device="cuda:0"), lambda: torch.tensor([1.0], device="cuda:0")),
        (lambda: dg.randn(2, device=dg.device("cuda")),
         lambda: torch.randn(2, device=torch.device("cuda"))),
        (lambda: dg.ones(2).to("cuda"), lambda: torch.ones(2).to("cuda")),
        (lambda: dg.ones(2).cuda(), lambda: torch.ones(2).cuda()),
        (lambda: dg.nn.Linear(2, 2).to("cuda"), lambda: torch.nn.Linear(2, 2).to("cuda")),
        (lambda: dg.nn.Linear(2, 2).cuda(), lambda: torch.nn.Linear(2, 2).cuda()),
        (lambda: dg.cuda.current_device(), lambda: torch.cuda.current_device()),
    ]
    for ours, theirs in cases:
        kind, message = _error(theirs)
        assert _error(ours) == (kind, _ours(message))
    assert _error(lambda: dg.ones(2).to(0)) == _error(lambda: torch.ones(2).to(0))


@needs_torch
def test_the_default_device_is_the_cpu_and_cuda_cannot_be_made_the_default():
    assert dg.get_default_device() == dg.device("cpu")
    assert repr(dg.get_default_device()) == repr(torch.get_default_device())
    dg.set_default_device("cpu")
    dg.set_default_device(None)
    assert _error(lambda: dg.set_default_device("cuda")) == \
        ("AssertionError", "dyngrad not compiled with CUDA enabled")


def test_another_device_type_is_refused_naming_the_cpu():
    assert _error(lambda: dg.zeros(2, device="mps")) == (
        "RuntimeError", "device 'mps' is not available: dyngrad computes on the CPU only "
        "(use device='cpu')")


def test_tensor_to_takes_every_torch_form():
    x = dg.ones(2)
    assert x.to(dg.float64).dtype is dg.float64
    assert x.to("cpu", dg.float64).dtype is dg.float64
    assert x.to(device="cpu", dtype=dg.float64, non_blocking=True).dtype is dg.float64
    assert x.to(dg.device("cpu"), non_blocking=True) is x
    assert x.to(dg.zeros(1, dtype=dg.float64)).dtype is dg.float64
    assert x.to("float64").dtype is dg.float64
    y = x.to("cpu", copy=True)
    assert y is not x and np.array_equal(y.numpy(), x.numpy())


def test_module_to_takes_every_torch_form():
    m = dg.nn.Linear(2, 2)
    assert m.to("cpu") is m and m.cpu() is m and m.to(dg.device("cpu"), non_blocking=True) is m
    assert m.to("cpu", dg.float64).weight.dtype is dg.float64
    assert m.to(dg.zeros(1)).weight.dtype is dg.float32
    assert m.to(dtype=dg.float64, device="cpu").bias.dtype is dg.float64


@needs_torch
def test_module_to_an_integer_dtype_raises_as_torch():
    ours = _error(lambda: dg.nn.Linear(2, 2).to(dg.int64))
    theirs = _error(lambda: torch.nn.Linear(2, 2).to(torch.int64))
    assert ours == (theirs[0], theirs[1].replace("torch.int64", "dyngrad.int64"))


@needs_torch
def test_cuda_and_accelerator_answer_as_torch_without_them():
    assert dg.cuda.is_available() is torch.cuda.is_available() is False
    assert dg.cuda.device_count() == torch.cuda.device_count() == 0
    assert dg.cuda.is_initialized() is False
    assert dg.cuda.manual_seed(0) is None and dg.cuda.manual_seed_all(0) is None
    assert dg.cuda.empty_cache() is None
    assert dg.accelerator.is_available() is torch.accelerator.is_available()
    assert dg.accelerator.current_accelerator() is torch.accelerator.current_accelerator()
    assert dg.accelerator.device_count() == torch.accelerator.device_count()
    for name in ["current_device_index", "synchronize"]:
        assert _error(getattr(dg.accelerator, name)) == \
            _error(getattr(torch.accelerator, name))


def test_the_idiomatic_device_line_picks_the_cpu():
    dev = dg.device("cuda" if dg.cuda.is_available() else "cpu")
    acc = dg.accelerator.current_accelerator() if dg.accelerator.is_available() else "cpu"
    model = dg.nn.Linear(3, 1).to(dev)
    assert model(dg.randn(4, 3, device=dev).to(acc)).device == dev


@needs_torch
def test_backends_flags_read_as_torchs_and_can_be_set():
    for ours, theirs in [(dg.backends.cudnn, torch.backends.cudnn)]:
        for flag in ["enabled", "benchmark", "deterministic", "allow_tf32"]:
            assert getattr(ours, flag) == getattr(theirs, flag), flag
        assert ours.is_available() == theirs.is_available()
    assert dg.backends.cuda.matmul.allow_tf32 == torch.backends.cuda.matmul.allow_tf32
    assert dg.backends.mps.is_available() == torch.backends.mps.is_available()
    assert dg.backends.mps.is_built() == torch.backends.mps.is_built()
    assert dg.backends.cuda.is_built() == torch.backends.cuda.is_built()
    old = dg.backends.cudnn.benchmark, dg.backends.cudnn.deterministic
    try:
        dg.backends.cudnn.benchmark = True
        dg.backends.cudnn.deterministic = True
        assert dg.backends.cudnn.benchmark and dg.backends.cudnn.deterministic
    finally:
        dg.backends.cudnn.benchmark, dg.backends.cudnn.deterministic = old


def test_backends_import_as_modules_as_scripts_write_them():
    # (pytorch/examples dcgan: ``import torch.backends.cudnn as cudnn``)
    import dyngrad.backends.cudnn as cudnn

    from dyngrad.backends import mps
    assert cudnn is dg.backends.cudnn and mps is dg.backends.mps
    assert cudnn.__name__ == "dyngrad.backends.cudnn" and cudnn.is_available() is False


# ------------------------------------------------------------------ amp


def test_autocast_on_the_cpu_keeps_float32_as_context_and_decorator():
    m = dg.nn.Linear(3, 2)
    x = dg.randn(4, 3)
    with dg.amp.autocast(device_type="cpu"):
        assert dg.is_autocast_enabled("cpu")
        y = m(x)
    assert not dg.is_autocast_enabled("cpu")
    assert y.dtype is dg.float32 and np.array_equal(y.detach().numpy(), m(x).detach().numpy())

    @dg.autocast("cpu", enabled=False)
    def f(v):
        return m(v)
    assert np.array_equal(f(x).detach().numpy(), m(x).detach().numpy())


@needs_torch
def test_cpu_autocast_to_a_full_precision_dtype_warns_and_disables_itself_as_torch():
    def enter(mod):
        with mod.autocast("cpu", dtype=mod.float32):
            return mod.is_autocast_enabled("cpu")
    ours, ours_w = _warnings(lambda: enter(dg))
    theirs, theirs_w = _warnings(lambda: enter(torch))
    assert ours is theirs is False
    assert ours_w == [(k, t.replace("torch.", "")) for k, t in theirs_w]
    assert _error(lambda: dg.autocast("tpu")) == _error(lambda: torch.autocast("tpu"))


@needs_torch
def test_autocast_for_cuda_warns_and_disables_itself():
    def enter(mod):
        with mod.amp.autocast("cuda"):
            return mod.is_autocast_enabled()
    ours, ours_w = _warnings(lambda: enter(dg))
    theirs, theirs_w = _warnings(lambda: enter(torch))
    assert ours is theirs is False
    assert ours_w == [("UserWarning", "CUDA is not available. Disabling autocast.")]
    assert theirs_w[0][0] == "UserWarning" and "Disabling autocast" in theirs_w[0][1]


@needs_torch
def test_the_deprecated_cuda_autocast_warns_as_torch_and_disables_itself():
    def enter(mod):
        with mod.cuda.amp.autocast():
            return mod.is_autocast_enabled()
    ours, ours_w = _warnings(lambda: enter(dg))
    theirs, theirs_w = _warnings(lambda: enter(torch))
    assert ours is theirs is False
    assert ours_w[0] == ("FutureWarning", _ours(theirs_w[0][1]))
    assert [k for k, _ in ours_w] == [k for k, _ in theirs_w]


@needs_torch
@pytest.mark.parametrize("make", [
    lambda m: m.amp.GradScaler(),
    lambda m: m.amp.GradScaler("cuda"),
    lambda m: m.cuda.amp.GradScaler(),
])
def test_a_cuda_grad_scaler_warns_as_torch_and_passes_through(make):
    ours, ours_w = _warnings(lambda: make(dg))
    theirs, theirs_w = _warnings(lambda: make(torch))
    assert ours_w == [(kind, _ours(text)) for kind, text in theirs_w]
    assert ours.is_enabled() is theirs.is_enabled() is False
    assert ours.get_scale() == theirs.get_scale() == 1.0
    assert ours.state_dict() == theirs.state_dict() == {}
    p = dg.nn.Parameter(dg.ones(2))
    opt = dg.optim.SGD([p], lr=0.5)
    loss = (p * p).sum()
    assert ours.scale(loss) is loss
    loss.backward()
    ours.step(opt)
    ours.update()
    assert np.array_equal(p.detach().numpy(), [0.0, 0.0])


@needs_torch
def test_a_cpu_grad_scaler_scales_unscales_and_skips_as_torch():
    def run(m):
        p = m.nn.Parameter(m.tensor([1.0, -2.0]))
        opt = m.optim.SGD([p], lr=0.1)
        scaler = m.amp.GradScaler("cpu", init_scale=4.0, growth_interval=2)
        history = []
        for k in range(5):
            opt.zero_grad()
            loss = (p * p).sum() * (float("inf") if k == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            history.append((scaler.get_scale(), p.detach().numpy().tolist()))
        return history, scaler.state_dict()
    assert run(dg) == run(torch)


# ------------------------------------------------------------------ load


def test_load_accepts_weights_only_and_map_location(tmp_path):
    m = dg.nn.Linear(3, 2)
    path = tmp_path / "m.npz"
    dg.save(m.state_dict(), path)
    for kwargs in [dict(weights_only=True), dict(weights_only=False),
                   dict(map_location="cpu", weights_only=True),
                   dict(map_location=dg.device("cpu")),
                   dict(map_location=lambda storage, loc: storage), dict(map_location={})]:
        state = dg.load(path, **kwargs)
        assert np.array_equal(state["weight"].numpy(), m.weight.detach().numpy())
    m2 = dg.nn.Linear(3, 2)
    m2.load_state_dict(dg.load(path, map_location="cpu", weights_only=True))
    assert np.array_equal(m2.bias.detach().numpy(), m.bias.detach().numpy())
    assert _error(lambda: dg.load(path, map_location="cuda")) == \
        ("AssertionError", "dyngrad not compiled with CUDA enabled")


# ------------------------------------------------------------------ losses

F = dg.nn.functional


def _pair(shape, seed=0, low=-2.0, high=2.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape), rng.uniform(low, high, shape)


def _probs(shape, seed):
    p = np.random.default_rng(seed).uniform(0.1, 1.0, shape)
    return p / p.sum(-1, keepdims=True)


LOSS_CASES = {
    # name: (fn(F, a, b, extra), inputs as numpy float64, where `a` (and `b`) get gradients)
    "smooth_l1": (lambda f, a, b: f.smooth_l1_loss(a, b), _pair((4, 3), 1)),
    "smooth_l1_beta_sum": (lambda f, a, b: f.smooth_l1_loss(a, b, reduction="sum", beta=0.7),
                           _pair((4, 3), 2)),
    "smooth_l1_beta0": (lambda f, a, b: f.smooth_l1_loss(a, b, beta=0.0), _pair((5,), 3)),
    "smooth_l1_none": (lambda f, a, b: f.smooth_l1_loss(a, b, reduction="none", beta=2.0),
                       _pair((2, 3), 4)),
    "huber": (lambda f, a, b: f.huber_loss(a, b), _pair((4, 3), 5)),
    "huber_delta_sum": (lambda f, a, b: f.huber_loss(a, b, reduction="sum", delta=0.6),
                        _pair((4, 3), 6)),
    "kl_batchmean": (lambda f, a, b: f.kl_div(a.log_softmax(1), b, reduction="batchmean"),
                     (np.random.default_rng(7).normal(size=(3, 4)), _probs((3, 4), 8))),
    "kl_sum_zero_target": (lambda f, a, b: f.kl_div(a, b * (b > 0.25), reduction="sum"),
                           (np.random.default_rng(9).normal(size=(3, 4)), _probs((3, 4), 10))),
    "kl_none_log_target": (lambda f, a, b: f.kl_div(a, b.log(), reduction="none",
                                                    log_target=True),
                           (np.random.default_rng(11).normal(size=(3, 4)),
                            _probs((3, 4), 12))),
    "cosine": (lambda f, a, b: f.cosine_similarity(a, b), _pair((4, 5), 13)),
    "cosine_dim0_broadcast": (lambda f, a, b: f.cosine_similarity(a, b[:1], dim=0, eps=1e-6),
                              _pair((3, 4), 14)),
    "margin_ranking": (lambda f, a, b: f.margin_ranking_loss(a, b, _sign_of(f, a), margin=0.3),
                       _pair((6,), 15)),
    "margin_ranking_sum": (lambda f, a, b: f.margin_ranking_loss(
        a, b, _sign_of(f, a), reduction="sum"), _pair((6,), 16)),
}


def _sign_of(f, a):
    """A fixed ±1 target of a's length, in a's library."""
    mod = dg if f is dg.nn.functional else torch
    return mod.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0], dtype=a.dtype)


@needs_torch
@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_value_and_gradients_match_torch_in_float64(name):
    fn, (a, b) = LOSS_CASES[name]
    da, db = (dg.tensor(v, requires_grad=True) for v in (a, b))
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    ours, theirs = fn(dg.nn.functional, da, db), fn(torch.nn.functional, ta, tb)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-12,
                               atol=1e-14)
    up = np.random.default_rng(0).normal(size=theirs.shape)
    ours.backward(dg.tensor(up))
    theirs.backward(torch.tensor(up))
    for d, t in [(da, ta), (db, tb)]:
        assert (d.grad is None) == (t.grad is None)
        if t.grad is not None:
            theirs_grad = t.grad.numpy()
            if name == "kl_sum_zero_target":  # a zero target's gradient: 0 here, nan in torch
                theirs_grad = np.where(np.isnan(theirs_grad), 0.0, theirs_grad)
            np.testing.assert_allclose(d.grad.numpy(), theirs_grad, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_gradcheck(name):
    fn, (a, b) = LOSS_CASES[name]
    if "kl" in name:  # target probabilities stay fixed (their log has a kink at 0)
        b = dg.tensor(b)
        assert dg.testing.gradcheck(lambda x: fn(F, x, b), (dg.tensor(a, requires_grad=True),))
        return
    assert dg.testing.gradcheck(lambda x, y: fn(F, x, y),
                                (dg.tensor(a, requires_grad=True),
                                 dg.tensor(b, requires_grad=True)))


@needs_torch
def test_loss_modules_match_the_functions():
    a, b = _pair((4, 3), 20)
    da, db, ta, tb = dg.tensor(a), dg.tensor(b), torch.tensor(a), torch.tensor(b)
    for make in [lambda m: m.nn.SmoothL1Loss(beta=0.5), lambda m: m.nn.HuberLoss(delta=0.4),
                 lambda m: m.nn.SmoothL1Loss(reduction="none")]:
        np.testing.assert_allclose(make(dg)(da, db).numpy(), make(torch)(ta, tb).numpy(),
                                   rtol=1e-12)
    kl = (lambda m: m.nn.KLDivLoss(reduction="batchmean", log_target=True))
    np.testing.assert_allclose(kl(dg)(da, db).numpy(), kl(torch)(ta, tb).numpy(), rtol=1e-12)
    cs = (lambda m: m.nn.CosineSimilarity(dim=0))
    np.testing.assert_allclose(cs(dg)(da, db).numpy(), cs(torch)(ta, tb).numpy(), rtol=1e-12)
    y = np.array([1.0, -1.0, 1.0])
    mr = (lambda m: m.nn.MarginRankingLoss(margin=0.2))
    np.testing.assert_allclose(mr(dg)(da[0], db[0], dg.tensor(y)).numpy(),
                               mr(torch)(ta[0], tb[0], torch.tensor(y)).numpy(), rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("loss", ["mse_loss", "smooth_l1_loss", "huber_loss"])
def test_a_broadcasting_target_is_allowed_with_torchs_warning(loss):
    a, b = np.arange(2.0).reshape(2, 1), np.array([0.5, 3.0])
    ours, ours_w = _warnings(lambda: getattr(F, loss)(dg.tensor(a), dg.tensor(b)))
    theirs, theirs_w = _warnings(
        lambda: getattr(torch.nn.functional, loss)(torch.tensor(a), torch.tensor(b)))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)
    assert ours_w == [(k, _plain_sizes(t)) for k, t in theirs_w]


def test_the_broadcast_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        F.mse_loss(dg.zeros(2, 1), dg.zeros(2))
    assert caught[0].filename == __file__


@needs_torch
def test_kl_div_mean_warns_and_legacy_arguments_map_as_torch():
    a, b = np.log(_probs((2, 3), 1)), _probs((2, 3), 2)
    for kwargs in [dict(), dict(reduction="mean"), dict(size_average=False),
                   dict(reduce=False)]:
        ours, ours_w = _warnings(lambda k=kwargs: F.kl_div(dg.tensor(a), dg.tensor(b), **k))
        theirs, theirs_w = _warnings(
            lambda k=kwargs: torch.nn.functional.kl_div(torch.tensor(a), torch.tensor(b), **k))
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12)
        assert ours_w == theirs_w


@needs_torch
def test_loss_argument_errors_are_torchs():
    x = np.ones(3)
    assert _error(lambda: F.smooth_l1_loss(dg.tensor(x), dg.tensor(x), beta=-1.0)) == \
        _error(lambda: torch.nn.functional.smooth_l1_loss(torch.tensor(x), torch.tensor(x),
                                                           beta=-1.0))
    m = np.ones((2, 3))
    kind, text = _error(lambda: torch.nn.functional.margin_ranking_loss(
        torch.tensor(m), torch.tensor(m), torch.tensor(x)))
    assert _error(lambda: F.margin_ranking_loss(dg.tensor(m), dg.tensor(m), dg.tensor(x))) == \
        (kind, _plain_sizes(text))


# ------------------------------------------------------------------ optimizers

OPTIM_CASES = [
    ("Adadelta", dict()),
    ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=0.1)),
    ("Adadelta", dict(lr=2.0, maximize=True)),
    ("Adagrad", dict()),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, initial_accumulator_value=0.2,
                     eps=1e-8)),
    ("Adagrad", dict(lr=0.05, maximize=True)),
]
OPTIM_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in OPTIM_CASES]


def _regression(mod, dtype):
    """A 3→5→1 tanh net with fixed weights, its data, and its loss, in library ``mod``."""
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=(1, 5))
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    params = [mod.tensor(a.astype(dtype), requires_grad=True) for a in (w1, b1, w2)]

    def loss():
        h = mod.tanh(mod.tensor(x.astype(dtype)) @ params[0].T + params[1])
        return ((h @ params[2].T - mod.tensor(y.astype(dtype))) ** 2).mean()
    return params, loss


def _trajectory(mod, name, kw, dtype, steps=10):
    params, loss = _regression(mod, dtype)
    opt = getattr(mod.optim, name)(params, **kw)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
        out.append(float(value.detach()))
    state = [{k: v.detach().numpy().copy() for k, v in opt.state[p].items()} for p in params]
    return out, [p.detach().numpy().copy() for p in params], state, opt


@needs_torch
@pytest.mark.parametrize("name,kw", OPTIM_CASES, ids=OPTIM_IDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimizer_trajectory_matches_torch_over_10_steps(name, kw, dtype):
    ours = _trajectory(dg, name, kw, dtype)
    theirs = _trajectory(torch, name, kw, dtype)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(ours[0], theirs[0], rtol=rtol)
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    for sa, sb in zip(ours[2], theirs[2]):
        assert sorted(sa) == sorted(sb)
        for k in sa:
            assert sa[k].dtype == sb[k].dtype, k
            np.testing.assert_allclose(sa[k], sb[k], rtol=rtol, atol=rtol * 1e-3)
    groups = ours[3].state_dict()["param_groups"], theirs[3].state_dict()["param_groups"]
    assert groups[0] == groups[1]


@needs_torch
def test_adagrad_state_exists_from_construction_as_torchs():
    def fresh(mod):
        p = mod.nn.Parameter(mod.ones(2))
        return mod.optim.Adagrad([p], initial_accumulator_value=0.5).state_dict()
    ours, theirs = fresh(dg), fresh(torch)
    assert ours["param_groups"] == theirs["param_groups"]
    assert {k: v.numpy().tolist() for k, v in ours["state"][0].items()} == \
        {k: v.numpy().tolist() for k, v in theirs["state"][0].items()}


@needs_torch
@pytest.mark.parametrize("name,kw", [
    ("Adadelta", dict(lr=-1.0)), ("Adadelta", dict(rho=1.5)), ("Adadelta", dict(eps=-1.0)),
    ("Adadelta", dict(weight_decay=-1.0)), ("Adagrad", dict(lr=-1.0)),
    ("Adagrad", dict(lr_decay=-1.0)), ("Adagrad", dict(weight_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)), ("Adagrad", dict(eps=-1.0)),
])
def test_optimizer_argument_errors_are_torchs(name, kw):
    assert _error(lambda: getattr(dg.optim, name)([dg.nn.Parameter(dg.ones(1))], **kw)) == \
        _error(lambda: getattr(torch.optim, name)([torch.nn.Parameter(torch.ones(1))], **kw))


def _compiled_twins(make_opt, backend):
    """Two identical MLPs and optimizers; the second's training step compiled."""
    dg.manual_seed(0)
    m1 = dg.nn.Sequential(dg.nn.Linear(6, 8), dg.nn.Tanh(), dg.nn.Linear(8, 1))
    m2 = dg.nn.Sequential(dg.nn.Linear(6, 8), dg.nn.Tanh(), dg.nn.Linear(8, 1))
    m2.load_state_dict(m1.state_dict())
    o1, o2 = make_opt(m1.parameters()), make_opt(m2.parameters())

    def step_of(m, o):
        def step(x, y):
            o.zero_grad()
            loss = F.mse_loss(m(x), y)
            loss.backward()
            o.step()
            return loss
        return step
    return (step_of(m1, o1), compiler.compile(step_of(m2, o2), backend=backend),
            (m1, o1), (m2, o2))


COMPILED_OPTIMIZERS = {
    "adadelta": lambda ps: dg.optim.Adadelta(ps, weight_decay=1e-2),
    "adagrad": lambda ps: dg.optim.Adagrad(ps, lr=0.05, lr_decay=1e-2),
    "adagrad_plain": lambda ps: dg.optim.Adagrad(ps, lr=0.05),
}


@pytest.mark.parametrize("backend", ["interp", "llvm"])
@pytest.mark.parametrize("name", sorted(COMPILED_OPTIMIZERS))
def test_compiled_training_step_equals_eager(name, backend):
    """Loss, parameters and optimizer state over 5 steps: bit for bit on the interpreter
    (each primitive's numpy impl in eager's order), to float32 rounding on LLVM."""
    eager, compiled, (m1, o1), (m2, o2) = _compiled_twins(COMPILED_OPTIMIZERS[name], backend)
    rng = np.random.default_rng(0)

    def same(a, b, what):
        a, b = np.asarray(a), np.asarray(b)
        if backend == "interp":
            assert np.array_equal(a, b), what
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)
    for i in range(5):
        x = dg.tensor(rng.normal(size=(4, 6)).astype(np.float32))
        y = dg.tensor(rng.normal(size=(4, 1)).astype(np.float32))
        same(eager(x, y).item(), compiled(x, y).item(), f"loss {i}")
        for j, (p1, p2) in enumerate(zip(m1.parameters(), m2.parameters())):
            same(p1.detach().numpy(), p2.detach().numpy(), f"parameter {j} at step {i}")
            s1, s2 = o1.state[p1], o2.state[p2]
            assert sorted(s1) == sorted(s2)
            for k in s1:
                same(s1[k].numpy(), s2[k].numpy(), f"state {k} of parameter {j} at step {i}")
    assert sum(v.calls for v in compiled.variants) >= 3, compiled.fallbacks


# ------------------------------------------------------------------ schedulers


def _lr_sequence(mod, make_opt, make_sched, steps, metrics=None):
    """(lr of every group, momentum or β₁ of group 0) after construction and each step."""
    params = [mod.nn.Parameter(mod.ones(2)), mod.nn.Parameter(mod.ones(1))]
    opt = make_opt(mod, [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}])
    sched = make_sched(mod.optim.lr_scheduler, opt)

    def now():
        g = opt.param_groups[0]
        momentum = g["betas"][0] if "betas" in g else g.get("momentum")
        return [g["lr"] for g in opt.param_groups], momentum, sched.get_last_lr()
    out = [now()]
    for k in range(steps):
        opt.step()
        sched.step(metrics[k]) if metrics is not None else sched.step()
        out.append(now())
    return out


def _sgd(mod, groups):
    return mod.optim.SGD(groups, lr=0.1, momentum=0.9)


def _adam(mod, groups):
    return mod.optim.Adam(groups, lr=0.1)


SCHEDULES = {
    "multistep": (_sgd, lambda s, o: s.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3), 12),
    "linear_warmup": (_sgd, lambda s, o: s.LinearLR(o, start_factor=0.1, total_iters=4), 8),
    "linear_decay": (_sgd, lambda s, o: s.LinearLR(o, start_factor=1.0, end_factor=0.2,
                                                   total_iters=6), 9),
    "linear_default": (_adam, lambda s, o: s.LinearLR(o), 7),
    "onecycle_cos_sgd": (_sgd, lambda s, o: s.OneCycleLR(o, max_lr=[0.5, 0.2],
                                                         total_steps=20), 20),
    "onecycle_linear_adam": (_adam, lambda s, o: s.OneCycleLR(
        o, max_lr=0.3, epochs=3, steps_per_epoch=5, anneal_strategy="linear",
        pct_start=0.25, base_momentum=0.8, max_momentum=0.9), 15),
    "onecycle_three_phase": (_sgd, lambda s, o: s.OneCycleLR(
        o, max_lr=0.4, total_steps=17, three_phase=True, div_factor=10.0,
        final_div_factor=100.0), 17),
    "onecycle_no_momentum": (_sgd, lambda s, o: s.OneCycleLR(
        o, max_lr=0.4, total_steps=10, cycle_momentum=False), 10),
    "sequential": (_sgd, lambda s, o: s.SequentialLR(
        o, [s.LinearLR(o, start_factor=0.1, total_iters=3), s.ExponentialLR(o, gamma=0.5)],
        milestones=[3]), 10),
    "sequential_three": (_adam, lambda s, o: s.SequentialLR(
        o, [s.LinearLR(o, start_factor=0.5, total_iters=2),
            s.MultiStepLR(o, milestones=[1, 3], gamma=0.3), s.StepLR(o, 2, gamma=0.5)],
        milestones=[2, 6]), 12),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_scheduler_lr_sequence_equals_torchs_exactly(name):
    """(ExponentialLR and StepLR, older and closed-form, appear inside SequentialLR with
    γ = 0.5, whose powers are exact either way.)"""
    make_opt, make_sched, steps = SCHEDULES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's about the order of the two step()s
        theirs = _lr_sequence(torch, make_opt, make_sched, steps)
    assert _lr_sequence(dg, make_opt, make_sched, steps) == theirs


PLATEAUS = {
    "min_rel": dict(patience=2),
    "min_abs_patience": dict(patience=1, threshold=0.05, threshold_mode="abs", factor=0.5),
    "max_rel_cooldown": dict(mode="max", patience=0, cooldown=2, factor=0.5),
    "max_abs_min_lr": dict(mode="max", patience=1, threshold_mode="abs", factor=0.2,
                           min_lr=[0.004, 0.01]),
    "eps_stops_tiny_changes": dict(patience=0, factor=0.5, eps=0.02),
}


@needs_torch
@pytest.mark.parametrize("name", sorted(PLATEAUS))
def test_reduce_lr_on_plateau_equals_torchs(name):
    metrics = [1.0, 0.9, 0.95, 0.95, 0.9, 0.97, 0.85, 0.85, 0.86, 0.86, 0.9, 0.84, 0.849,
               0.9, 0.9, 0.9]
    make = (lambda s, o: s.ReduceLROnPlateau(o, **PLATEAUS[name]))
    ours = _lr_sequence(dg, _sgd, make, len(metrics), metrics)
    theirs = _lr_sequence(torch, _sgd, make, len(metrics), metrics)
    assert ours == theirs
    assert len({tuple(lrs) for lrs, _, _ in ours}) > 1, "the schedule never reduced"


def test_reduce_lr_on_plateau_takes_a_tensor_metric_and_round_trips_its_state():
    opt = dg.optim.SGD([dg.nn.Parameter(dg.ones(1))], lr=1.0)
    s = dg.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    s.step(dg.tensor(1.0))
    s.step(dg.tensor(2.0))
    assert s.get_last_lr() == [0.5]
    state = s.state_dict()
    s2 = dg.optim.lr_scheduler.ReduceLROnPlateau(opt)
    s2.load_state_dict(state)
    assert (s2.best, s2.patience, s2.factor) == (1.0, 0, 0.5)


@needs_torch
@pytest.mark.parametrize("make", [
    lambda s, o: s.LinearLR(o, start_factor=0.0),
    lambda s, o: s.LinearLR(o, end_factor=1.5),
    lambda s, o: s.OneCycleLR(o, max_lr=0.1),
    lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=0),
    lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=5, pct_start=1),
    lambda s, o: s.OneCycleLR(o, max_lr=0.1, total_steps=5, anneal_strategy="exp"),
    lambda s, o: s.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=5),
    lambda s, o: s.SequentialLR(o, [s.LinearLR(o)], milestones=[2]),
    lambda s, o: s.ReduceLROnPlateau(o, factor=1.0),
    lambda s, o: s.ReduceLROnPlateau(o, mode="up"),
    lambda s, o: s.ReduceLROnPlateau(o, min_lr=[0.1, 0.2]),
])
def test_scheduler_argument_errors_are_torchs(make):
    def build(mod):
        return make(mod.optim.lr_scheduler,
                    mod.optim.SGD([mod.nn.Parameter(mod.ones(1))], lr=0.1))
    assert _error(lambda: build(dg)) == _error(lambda: build(torch))


@needs_torch
def test_onecycle_past_its_total_steps_raises_as_torch():
    def run(mod):
        opt = mod.optim.SGD([mod.nn.Parameter(mod.ones(1))], lr=0.1, momentum=0.9)
        s = mod.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=3)
        for _ in range(4):
            opt.step()
            s.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _error(lambda: run(dg)) == _error(lambda: run(torch))


def test_a_compiled_step_sees_each_new_learning_rate():
    """A schedule's rate reaches a compiled training step (a hyperparameter read through
    the optimizer's tracked accessor), so compiled equals eager along the schedule."""
    eager, compiled, (m1, o1), (m2, o2) = _compiled_twins(
        lambda ps: dg.optim.SGD(ps, lr=0.1, momentum=0.9), "interp")
    s1 = dg.optim.lr_scheduler.OneCycleLR(o1, max_lr=0.2, total_steps=6)
    s2 = dg.optim.lr_scheduler.OneCycleLR(o2, max_lr=0.2, total_steps=6)
    rng = np.random.default_rng(0)
    for i in range(6):
        x = dg.tensor(rng.normal(size=(4, 6)).astype(np.float32))
        y = dg.tensor(rng.normal(size=(4, 1)).astype(np.float32))
        assert eager(x, y).item() == compiled(x, y).item(), f"loss {i}"
        s1.step()
        s2.step()
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            assert np.array_equal(p1.detach().numpy(), p2.detach().numpy())


# ------------------------------------------------------------------ LBFGS (eager only)


def _lbfgs_run(mod, line_search_fn, steps=4):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=8)
    w = mod.tensor(np.zeros(3), requires_grad=True)
    c = mod.tensor([0.5], dtype=w.dtype, requires_grad=True)
    opt = mod.optim.LBFGS([w, c], lr=0.8, max_iter=5, history_size=3,
                          line_search_fn=line_search_fn)

    def closure():
        opt.zero_grad()
        loss = ((mod.tanh(mod.tensor(a) @ w + c) - mod.tensor(b)) ** 2).mean()
        loss.backward()
        return loss
    losses = [float(opt.step(closure).detach()) for _ in range(steps)]
    st = opt.state[w]
    return losses, [w.detach().numpy().copy(), c.detach().numpy().copy()], \
        (st["func_evals"], st["n_iter"])


@needs_torch
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_matches_torch_in_float64(line_search_fn):
    ours, theirs = _lbfgs_run(dg, line_search_fn), _lbfgs_run(torch, line_search_fn)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert ours[2] == theirs[2]


@needs_torch
def test_lbfgs_refuses_groups_and_unknown_line_searches_as_torch():
    def groups(mod):
        return mod.optim.LBFGS([{"params": [mod.nn.Parameter(mod.ones(1))]},
                                {"params": [mod.nn.Parameter(mod.ones(1))]}])
    assert _error(lambda: groups(dg)) == _error(lambda: groups(torch))

    def bad_search(mod):
        p = mod.nn.Parameter(mod.ones(1))
        opt = mod.optim.LBFGS([p], line_search_fn="armijo")

        def closure():
            opt.zero_grad()
            loss = (p * p).sum()
            loss.backward()
            return loss
        opt.step(closure)
    assert _error(lambda: bad_search(dg)) == _error(lambda: bad_search(torch))


def test_a_compiled_function_calling_lbfgs_step_runs_eagerly_naming_it():
    dg.manual_seed(0)
    model = dg.nn.Linear(3, 1)
    opt = dg.optim.LBFGS(model.parameters(), max_iter=3)
    x, y = dg.randn(8, 3), dg.randn(8, 1)

    def train():
        def closure():
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss
        return opt.step(closure)
    compiled = compiler.compile(train)
    first = float(F.mse_loss(model(x), y).detach())
    with pytest.warns(UserWarning, match=r"runs eagerly from now on: optim\.LBFGS\.step"):
        losses = [float(compiled().detach()) for _ in range(3)]
    assert losses[0] == pytest.approx(first) and losses[-1] < first
    assert compiled.variants == []
    assert any("optim.LBFGS.step" in reason and "not compilable" in reason
               for reason in compiled.fallbacks), compiled.fallbacks


def test_device_code_compiles_to_the_same_result():
    """``.to(device)``, ``device=x.device`` and ``.cpu()`` inside a compiled function are
    checks, not ops: the function still compiles and equals eager."""
    dev = dg.device("cuda" if dg.cuda.is_available() else "cpu")

    def f(x):
        y = x.to(dev, non_blocking=True) * 2 + dg.ones(x.shape, device=x.device)
        return (y.cpu() + dg.zeros_like(y, device="cpu")).sum()
    cf = compiler.compile(f, backend="interp")
    for k in range(4):
        x = dg.tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3) + k)
        assert f(x).item() == cf(x).item()
    assert sum(v.calls for v in cf.variants) >= 2, cf.fallbacks


def test_a_compiled_step_with_a_cpu_grad_scaler_equals_eager_and_sees_each_scale():
    """The scale and the growth tracker are tensors written in place and the skip decision
    is one bool read (a guard): the compiled step follows eager through two growths, a
    skipped (inf) step and its backoff."""
    def make():
        m = dg.nn.Module()
        m.p = p = dg.nn.Parameter(dg.tensor([0.1, -0.2, 0.3]))
        o = dg.optim.SGD([p], lr=0.1)
        s = dg.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)

        def step(x, w):  # (no matmul: numpy's warns on inf operands)
            o.zero_grad()
            loss = (p * x).exp().mean() * w
            s.scale(loss).backward()
            s.step(o)
            s.update()
            return loss
        return m, s, step
    m1, s1, eager = make()
    m2, s2, step2 = make()
    compiled = compiler.compile(step2, backend="interp")
    rng = np.random.default_rng(0)
    for i in range(7):  # (positive x and an exp: the inf step's gradients are all +inf, and
        #                   no sum meets inf − inf)
        x = dg.tensor(np.abs(rng.normal(size=(4, 3))).astype(np.float32))
        w = dg.tensor(float("inf") if i == 3 else 1.0)
        assert np.array_equal(eager(x, w).detach().numpy(),
                              compiled(x, w).detach().numpy()), f"loss {i}"
        assert s1.get_scale() == s2.get_scale()
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            assert np.array_equal(p1.detach().numpy(), p2.detach().numpy()), f"step {i}"
        assert s2.get_scale() == [8.0, 16.0, 16.0, 8.0, 8.0, 16.0, 16.0][i]
    assert sum(v.calls for v in compiled.variants) >= 2, compiled.fallbacks
