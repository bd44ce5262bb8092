"""``dyngrad.optim``: each optimizer against its update written out by hand on one scalar
parameter, and against PyTorch for several steps on a small MLP with every option; zero_grad,
state dicts that resume identically, parameter groups, hyperparameters read through the
dispatch modes' ``on_scalar`` (observable and substitutable), the two version counters, step
counts as tensors, and the learning-rate schedulers against torch's ``get_last_lr``.

torch is an optional oracle: tests that need it call ``pytest.importorskip("torch")``.

float32 comparisons with torch allow twice dyngrad's rounding-error bound for the same
computation, derived by ``tolerance.ErrorBound`` from the values met (see tests/tolerance.py).
Training loops that compute their own gradients give torch dyngrad's parameters and optimizer
state before each step (:func:`step_like_torch`): from identical state one step's error is
bounded tightly (a median tolerance of 2e-6 relative for Adam), while over unsynchronised
steps each library's parameter errors feed back into its next gradients and the bound, which
must take every coupling at its worst, compounds (a median of 7e-4 after six Adam steps,
soon accepting anything). The float64 loop below runs unsynchronised.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from tolerance import ErrorBound, assert_within

import dyngrad as dg
from dyngrad.dispatch import DispatchMode, push_mode

nn, optim = dg.nn, dg.optim
sched = dg.optim.lr_scheduler


# ------------------------------------------------------------------ helpers


def scalar_param(value=1.0) -> nn.Parameter:
    return nn.Parameter(dg.tensor([value], dtype=dg.float64))


def run(opt_cls, grads, p0=1.0, **kw) -> list[float]:
    """Step ``opt_cls`` on one float64 parameter with the given gradients; the parameter's
    value after each step."""
    p = scalar_param(p0)
    opt = opt_cls([p], **kw)
    out = []
    for g in grads:
        p.grad = dg.tensor([g], dtype=dg.float64)
        opt.step()
        out.append(p.item())
    return out


def mlp(seed=0):
    dg.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def torch_mlp(m):
    torch = pytest.importorskip("torch")
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                        for k, v in m.state_dict().items()})
    return tm


DATA = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
TARGET = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)


def train_step(m, opt, lib=dg):
    x, y = lib.tensor(DATA), lib.tensor(TARGET)
    opt.zero_grad()
    loss = ((m(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss


def assert_params_close(m, tm, eb: ErrorBound | None, what=""):
    """Parameters equal torch's: float32 within twice their error bound under ``eb``; float64
    to 1e-10 relative, far above float64 rounding and far below any bug."""
    for (n, p), (_, tp) in zip(m.named_parameters(), tm.named_parameters()):
        a, b = p.detach().numpy(), tp.detach().numpy()
        if a.dtype == np.float32:
            assert_within(a, b, 2 * eb.bound(p), f"{what} {n}")
        else:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=f"{what} {n}")


def assert_state_close(m, opt, tm, topt, eb: ErrorBound, what=""):
    """Every optimizer state tensor (moments, buffers, step counts) equals torch's within
    twice its error bound under ``eb``."""
    for (n, p), tp in zip(m.named_parameters(), tm.parameters()):
        for key, tv in topt.state[tp].items():
            if tv is not None:
                v = opt.state[p][key]
                assert_within(v.numpy(), tv.numpy(), 2 * eb.bound(v), f"{what} {n}.{key}")


def step_like_torch(m, opt, tm, topt, step=train_step, what=""):
    """One step of dyngrad and one of torch from identical parameters and optimizer state
    (torch is given dyngrad's first), both compared within twice the error bound of
    dyngrad's step. Returns (dyngrad's result, torch's result, the :class:`ErrorBound`).

    The bound follows the step's float32 arithmetic: forward and backward (matmul γ(k)·|A||B|,
    tanh within a few ulps, sums γ(n)·Σ|x|), then the update. For Adam that is
    lr·m̂/(√v̂+ε): a gradient error δg reaches it through m̂ and √v̂, with weights
    1/(√v̂+ε) and |m̂|/(√v̂+ε)² at the actual values, so an element whose gradient nearly
    cancels (δg not small against g) gets a wide tolerance, the others a tight one."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        for p, tp in zip(m.parameters(), tm.parameters()):
            tp.copy_(torch.from_numpy(p.detach().numpy()))
            for key, tv in topt.state[tp].items():
                if tv is not None:
                    tv.copy_(torch.from_numpy(opt.state[p][key].numpy()))
    with ErrorBound() as eb:
        out = step(m, opt)
    t_out = step(tm, topt, torch)
    assert_params_close(m, tm, eb, what)
    assert_state_close(m, opt, tm, topt, eb, what)
    return out, t_out, eb


class ScalarSpy(DispatchMode):
    """Records every hyperparameter read; optionally substitutes values by key."""

    def __init__(self, substitute=None):
        self.seen: list[tuple] = []
        self.substitute = substitute or {}

    def on_scalar(self, owner, key, value):
        self.seen.append((owner, key, value))
        return self.substitute.get(key, value)

    def keys(self):
        return [k for _, k, _ in self.seen]


# ------------------------------------------------------------------ closed forms: SGD


def test_sgd_plain_update():
    assert run(optim.SGD, [0.5, -0.25], lr=0.1) == pytest.approx([0.95, 0.975], rel=1e-15)


def test_sgd_momentum_dampening_weight_decay():
    lr, mu, d, wd, p0, g1, g2 = 0.1, 0.9, 0.3, 0.01, 1.0, 0.5, -0.25
    ga = g1 + wd * p0
    buf = ga                                # first step: buffer = gradient, no dampening
    p1 = p0 - lr * buf
    gb = g2 + wd * p1
    buf = mu * buf + (1 - d) * gb
    p2 = p1 - lr * buf
    got = run(optim.SGD, [g1, g2], p0, lr=lr, momentum=mu, dampening=d, weight_decay=wd)
    assert got == pytest.approx([p1, p2], rel=1e-14)


def test_sgd_nesterov():
    lr, mu, g1, g2 = 0.1, 0.9, 0.5, -0.25
    buf = g1
    p1 = 1.0 - lr * (g1 + mu * buf)
    buf = mu * buf + g2
    p2 = p1 - lr * (g2 + mu * buf)
    assert run(optim.SGD, [g1, g2], lr=lr, momentum=mu, nesterov=True) == \
        pytest.approx([p1, p2], rel=1e-14)


def test_sgd_maximize_ascends():
    assert run(optim.SGD, [0.5, -0.25], lr=0.1, maximize=True) == \
        pytest.approx([1.05, 1.025], rel=1e-15)


def test_sgd_rejects_bad_hyperparameters():
    p = [scalar_param()]
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        optim.SGD(p, momentum=-0.1)
    with pytest.raises(ValueError, match="Invalid weight_decay value"):
        optim.SGD(p, weight_decay=-0.1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero "
                                         "dampening"):
        optim.SGD(p, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, momentum=0.9, dampening=0.1, nesterov=True)


# ------------------------------------------------------------------ closed forms: Adam


def _adam_ref(grads, p0=1.0, lr=0.1, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False,
              amsgrad=False):
    p, m, v, vmax, out = p0, 0.0, 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = max(vmax, v)
        vhat = (vmax if amsgrad else v) / (1 - b2 ** t)
        p -= lr * (m / (1 - b1 ** t)) / (math.sqrt(vhat) + eps)
        out.append(p)
    return out


def test_adam_first_step_moves_by_lr_times_sign():
    assert run(optim.Adam, [0.5], lr=0.1) == pytest.approx([0.9], rel=1e-7)
    assert run(optim.Adam, [-3.0], lr=0.1) == pytest.approx([1.1], rel=1e-7)


def test_adam_two_steps():
    assert run(optim.Adam, [0.5, -0.25], lr=0.1) == \
        pytest.approx(_adam_ref([0.5, -0.25]), rel=1e-12)


def test_adam_weight_decay_is_l2_on_the_gradient():
    got = run(optim.Adam, [0.5, -0.25], lr=0.1, weight_decay=0.5)
    assert got == pytest.approx(_adam_ref([0.5, -0.25], wd=0.5), rel=1e-12)


def test_adam_amsgrad_keeps_the_largest_second_moment():
    grads = [1.0, 0.01, 0.01]      # v shrinks after the first step; amsgrad keeps v₁
    got = run(optim.Adam, grads, lr=0.1, amsgrad=True)
    assert got == pytest.approx(_adam_ref(grads, amsgrad=True), rel=1e-12)
    assert got != pytest.approx(_adam_ref(grads), rel=1e-6)


def test_adam_maximize_and_betas_eps():
    got = run(optim.Adam, [0.5, -0.25], lr=0.1, betas=(0.5, 0.9), eps=0.1, maximize=True)
    assert got == pytest.approx(_adam_ref([-0.5, 0.25], b1=0.5, b2=0.9, eps=0.1), rel=1e-12)


def test_adamw_decays_the_weights_directly():
    got = run(optim.AdamW, [0.5, -0.25], lr=0.1, weight_decay=0.5)
    assert got == pytest.approx(_adam_ref([0.5, -0.25], wd=0.5, decoupled=True), rel=1e-12)
    assert optim.AdamW([scalar_param()]).defaults["weight_decay"] == 1e-2


def test_adam_rejects_bad_hyperparameters():
    p = [scalar_param()]
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid epsilon value"):
        optim.Adam(p, eps=-1.0)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.AdamW(p, lr=-1.0)


# ------------------------------------------------------------------ closed forms: RMSprop


def test_rmsprop_plain():
    lr, a, eps, g1, g2 = 0.01, 0.99, 1e-8, 0.5, -0.25
    v = (1 - a) * g1 ** 2
    p1 = 1.0 - lr * g1 / (math.sqrt(v) + eps)
    v = a * v + (1 - a) * g2 ** 2
    p2 = p1 - lr * g2 / (math.sqrt(v) + eps)
    assert run(optim.RMSprop, [g1, g2]) == pytest.approx([p1, p2], rel=1e-13)


def test_rmsprop_centered_with_momentum_and_weight_decay():
    lr, a, eps, mu, wd, g1, g2 = 0.01, 0.9, 1e-3, 0.5, 0.1, 0.5, -0.25
    p, v, ga, buf, out = 1.0, 0.0, 0.0, 0.0, []
    for g in (g1, g2):
        g = g + wd * p
        v = a * v + (1 - a) * g * g
        ga = a * ga + (1 - a) * g
        avg = math.sqrt(v - ga * ga) + eps
        buf = mu * buf + g / avg
        p -= lr * buf
        out.append(p)
    got = run(optim.RMSprop, [g1, g2], lr=lr, alpha=a, eps=eps, momentum=mu, weight_decay=wd,
              centered=True)
    assert got == pytest.approx(out, rel=1e-13)


def test_rmsprop_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="Invalid alpha value"):
        optim.RMSprop([scalar_param()], alpha=-0.5)
    with pytest.raises(ValueError, match="Invalid momentum value"):
        optim.RMSprop([scalar_param()], momentum=-0.5)


# ------------------------------------------------------------------ against torch


TORCH_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, weight_decay=0.05)),
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, amsgrad=True, weight_decay=0.05,
                  maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.2, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.2, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.5,
                     weight_decay=0.05)),
    ("RMSprop", dict(lr=0.01, maximize=True)),
]


CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in TORCH_CASES]


@pytest.mark.parametrize("name,kw", TORCH_CASES, ids=CASE_IDS)
def test_optimizer_update_matches_torch_float32(name, kw):
    """The same float32 gradients (dyngrad's, copied across) into both optimizers each step,
    eight steps without resynchronising: the gradients are exact inputs to both, so the
    parameters and state differ only by the updates' own rounding, which the error analysis
    of the optimizer steps bounds, carried from step to step (without feedback: neither
    library's gradients depend on its own parameters here).

    Note: feeding each library its own backward's gradients over unsynchronised steps is not
    a fair float32 test — RMSprop's first steps are ±lr/√(1−α) whatever the gradient's size,
    so one-ulp gradient differences near zero flip whole steps; see step_like_torch."""
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)
    opt = getattr(optim, name)(m.parameters(), **kw)
    topt = getattr(torch.optim, name)(tm.parameters(), **kw)
    eb = ErrorBound()
    for step in range(8):
        opt.zero_grad()
        ((m(dg.tensor(DATA)) - dg.tensor(TARGET)) ** 2).mean().backward()
        for p, tp in zip(m.parameters(), tm.parameters()):
            tp.grad = torch.from_numpy(p.grad.numpy().copy())
        with eb:
            opt.step()
        topt.step()
        assert_params_close(m, tm, eb, f"step {step}")
        assert_state_close(m, opt, tm, topt, eb, f"step {step}")


@pytest.mark.parametrize("name,kw", TORCH_CASES, ids=CASE_IDS)
def test_training_loop_matches_torch_float64(name, kw):
    torch = pytest.importorskip("torch")
    m = mlp().double()
    tm = torch_mlp(m).double()
    opt = getattr(optim, name)(m.parameters(), **kw)
    topt = getattr(torch.optim, name)(tm.parameters(), **kw)
    x, y = DATA.astype(np.float64), TARGET.astype(np.float64)
    for step in range(8):
        for model, o, lib in ((m, opt, dg), (tm, topt, torch)):
            o.zero_grad()
            ((model(lib.tensor(x)) - lib.tensor(y)) ** 2).mean().backward()
            o.step()
        assert_params_close(m, tm, None, f"step {step}")


def test_closure_is_evaluated_and_its_loss_returned():
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)
    opt, topt = optim.Adam(m.parameters(), lr=0.05), torch.optim.Adam(tm.parameters(), lr=0.05)

    def closure(model, o, lib):
        def f():
            o.zero_grad()
            loss = ((model(lib.tensor(DATA)) - lib.tensor(TARGET)) ** 2).mean()
            loss.backward()
            return loss
        return f

    def step_with_closure(model, o, lib=dg):
        return o.step(closure(model, o, lib))

    for step in range(3):
        loss, tloss, eb = step_like_torch(m, opt, tm, topt, step_with_closure, f"step {step}")
        assert_within(loss.item(), tloss.item(), 2 * eb.bound(loss), "loss")


def test_closure_runs_with_grad_enabled_even_under_no_grad():
    p = scalar_param(2.0)
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with dg.no_grad():
        assert opt.step(closure).item() == 4.0
    assert p.item() == pytest.approx(1.6)


def test_param_groups_with_different_lrs_match_torch():
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)

    def groups(model):
        return [{"params": model[0].parameters(), "lr": 0.1},
                {"params": model[2].parameters(), "momentum": 0.5}]

    opt = optim.SGD(groups(m), lr=0.01)
    topt = torch.optim.SGD(groups(tm), lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    assert [g["momentum"] for g in opt.param_groups] == [0.0, 0.5]
    for step in range(4):
        step_like_torch(m, opt, tm, topt, what=f"step {step}")


def test_each_group_uses_its_own_lr():
    a, b = scalar_param(), scalar_param()
    opt = optim.SGD([{"params": [a], "lr": 1.0}, {"params": b}], lr=0.1)
    a.grad = b.grad = dg.tensor([1.0], dtype=dg.float64)
    opt.step()
    assert (a.item(), b.item()) == pytest.approx((0.0, 0.9))


def test_add_param_group_trains_the_new_parameters_like_torch():
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)
    opt = optim.Adam(m[0].parameters(), lr=0.01)
    topt = torch.optim.Adam(tm[0].parameters(), lr=0.01)
    for step in range(2):
        step_like_torch(m, opt, tm, topt, what=f"step {step}")
    opt.add_param_group({"params": m[2].parameters(), "lr": 0.03})
    topt.add_param_group({"params": tm[2].parameters(), "lr": 0.03})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)      # defaults fill the rest
    for step in range(2, 5):
        step_like_torch(m, opt, tm, topt, what=f"step {step}")


def test_add_param_group_errors():
    a = scalar_param()
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter "
                                         "group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="can't optimize a non-leaf Tensor"):
        opt.add_param_group({"params": [scalar_param() * 2]})
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        opt.add_param_group({"params": [1.0]})
    with pytest.raises(TypeError, match="param_group must be a dict"):
        opt.add_param_group([scalar_param()])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)


def test_a_lone_tensor_param_group_is_accepted():
    opt = optim.SGD([scalar_param()], lr=0.1)
    b = scalar_param()
    opt.add_param_group({"params": b})
    assert opt.param_groups[1]["params"] == [b]


# ------------------------------------------------------------------ zero_grad


def test_zero_grad_sets_to_none_by_default():
    m = mlp()
    opt = optim.SGD(m.parameters(), lr=0.1)
    train_step(m, opt)
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_zero_grad_to_zeros_keeps_the_gradient_tensors():
    m = mlp()
    opt = optim.SGD(m.parameters(), lr=0.1)
    train_step(m, opt)
    grads = [p.grad for p in m.parameters()]
    opt.zero_grad(set_to_none=False)
    assert [p.grad for p in m.parameters()] == grads       # same objects, zeroed in place
    assert all(np.all(g.numpy() == 0) for g in grads)


def test_parameters_without_grad_are_skipped():
    a, b = scalar_param(), scalar_param()
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = dg.tensor([1.0], dtype=dg.float64)
    opt.step()
    assert b.item() == 1.0 and b not in opt.state and a in opt.state


# ------------------------------------------------------------------ state dicts


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)),
                                     ("Adam", dict(lr=0.01, amsgrad=True)),
                                     ("AdamW", dict(lr=0.01)),
                                     ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5))])
def test_state_dict_round_trip_resumes_identically(name, kw):
    m = mlp()
    opt = getattr(optim, name)(m.parameters(), **kw)
    for _ in range(3):
        train_step(m, opt)
    m_ckpt, opt_ckpt = copy.deepcopy(m.state_dict()), opt.state_dict()
    for _ in range(3):
        train_step(m, opt)

    m2 = mlp(seed=1)
    m2.load_state_dict(m_ckpt)
    opt2 = getattr(optim, name)(m2.parameters(), lr=123.0)   # hyperparameters come back too
    opt2.load_state_dict(opt_ckpt)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    for _ in range(3):
        train_step(m2, opt2)
    for (n, p), (_, q) in zip(m.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=n)


def test_state_dict_is_a_snapshot():
    m = mlp()
    opt = optim.Adam(m.parameters(), lr=0.01)
    train_step(m, opt)
    sd = opt.state_dict()
    saved = sd["state"][0]["exp_avg"].numpy().copy()
    train_step(m, opt)
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"].numpy(), saved)
    assert sd["state"][0]["step"].item() == 1.0


def test_state_dict_layout_matches_torch():
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)
    opt = optim.Adam([{"params": m[0].parameters()}, {"params": m[2].parameters(),
                                                      "lr": 0.1}], lr=0.01)
    topt = torch.optim.Adam([{"params": tm[0].parameters()}, {"params": tm[2].parameters(),
                                                             "lr": 0.1}], lr=0.01)
    for step in range(2):
        *_, eb = step_like_torch(m, opt, tm, topt, what=f"step {step}")
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == \
        [g["params"] for g in tsd["param_groups"]] == [[0, 1], [2, 3]]
    assert sd["state"].keys() == tsd["state"].keys()
    params = list(m.parameters())
    for k in tsd["state"]:
        assert set(sd["state"][k]) == set(tsd["state"][k])
        for name, tv in tsd["state"][k].items():
            bound = 2 * eb.bound(opt.state[params[k]][name])  # the state dict holds copies
            assert_within(sd["state"][k][name].numpy(), tv.numpy(), bound, f"{k}.{name}")
    for g, tg in zip(sd["param_groups"], tsd["param_groups"]):
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert g[key] == tg[key]


def test_state_dict_pickles():
    m = mlp()
    opt = optim.RMSprop(m.parameters(), lr=0.01, momentum=0.5)
    train_step(m, opt)
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    opt2 = optim.RMSprop(mlp().parameters(), lr=0.01, momentum=0.5)
    opt2.load_state_dict(sd)
    assert opt2.state_dict()["state"][0]["step"].item() == 1.0


def test_load_state_dict_rejects_a_different_layout():
    m = mlp()
    opt = optim.SGD(m.parameters(), lr=0.1)
    two = optim.SGD([{"params": m[0].parameters()}, {"params": m[2].parameters()}], lr=0.1)
    with pytest.raises(ValueError, match="different number of parameter groups"):
        opt.load_state_dict(two.state_dict())
    small = optim.SGD(m[0].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="doesn't match the size"):
        opt.load_state_dict(small.state_dict())


# ------------------------------------------------------------------ hyperparameters and modes


@pytest.mark.parametrize("name,keys", [
    ("SGD", ["lr", "momentum", "dampening", "weight_decay"]),
    ("Adam", ["lr", "betas", "eps", "weight_decay"]),
    ("AdamW", ["lr", "betas", "eps", "weight_decay"]),
    ("RMSprop", ["lr", "alpha", "eps", "weight_decay", "momentum"]),
])
def test_every_hyperparameter_is_read_through_on_scalar(name, keys):
    m = mlp()
    opt = getattr(optim, name)([{"params": m[0].parameters()},
                                {"params": m[2].parameters()}], lr=0.01)
    with push_mode(ScalarSpy()) as spy:
        train_step(m, opt)
    assert spy.keys() == keys * 2                      # every step, once per group
    assert [o for o, _, _ in spy.seen] == [opt.param_groups[0]] * len(keys) + \
        [opt.param_groups[1]] * len(keys)


def test_lr_change_mid_training_takes_effect_and_is_reported():
    p = scalar_param()
    opt = optim.SGD([p], lr=0.1)
    p.grad = dg.tensor([1.0], dtype=dg.float64)
    with push_mode(ScalarSpy()) as spy:
        opt.step()
        opt.param_groups[0]["lr"] = 0.5
        opt.step()
    assert [v for _, k, v in spy.seen if k == "lr"] == [0.1, 0.5]
    assert p.item() == pytest.approx(1.0 - 0.1 - 0.5)


def test_lr_change_mid_training_matches_torch():
    torch = pytest.importorskip("torch")
    m = mlp()
    tm = torch_mlp(m)
    opt = optim.Adam(m.parameters(), lr=0.01)
    topt = torch.optim.Adam(tm.parameters(), lr=0.01)
    for step in range(6):
        if step == 3:
            opt.param_groups[0]["lr"] = topt.param_groups[0]["lr"] = 0.05
        step_like_torch(m, opt, tm, topt, what=f"step {step}")


def test_a_mode_substituting_lr_changes_the_update():
    p = scalar_param()
    opt = optim.SGD([p], lr=0.1)
    p.grad = dg.tensor([1.0], dtype=dg.float64)
    with push_mode(ScalarSpy(substitute={"lr": 0.0})):
        opt.step()
    assert p.item() == 1.0
    with push_mode(ScalarSpy(substitute={"lr": 2.0})):
        opt.step()
    assert p.item() == pytest.approx(-1.0)
    assert opt.param_groups[0]["lr"] == 0.1                 # the group itself is untouched


def test_a_mode_substituting_adam_betas_changes_the_update():
    p = scalar_param()
    opt = optim.Adam([p], lr=0.1)
    p.grad = dg.tensor([0.5], dtype=dg.float64)
    with push_mode(ScalarSpy(substitute={"betas": (0.5, 0.9)})):
        opt.step()
        opt.step()
    assert p.item() == pytest.approx(_adam_ref([0.5, 0.5], b1=0.5, b2=0.9)[-1], rel=1e-12)


def test_versions_add_param_group_is_structural_lr_change_is_not():
    opt = optim.SGD([scalar_param()], lr=0.1)
    v, h = opt._version, opt._hyper_version
    opt.param_groups[0]["lr"] = 0.2
    assert (opt._version, opt._hyper_version) == (v, h + 1)
    opt.add_param_group({"params": [scalar_param()]})
    assert (opt._version, opt._hyper_version) == (v + 1, h + 1)
    opt.param_groups[1]["params"] = [scalar_param()]
    assert opt._version == v + 2
    opt.param_groups[0]["new_key"] = 1
    assert (opt._version, opt._hyper_version) == (v + 3, h + 1)
    opt.load_state_dict(opt.state_dict())
    assert opt._version == v + 4


def test_versions_count_dict_update_and_setdefault():
    opt = optim.SGD([scalar_param()], lr=0.1)
    g = opt.param_groups[0]
    v, h = opt._version, opt._hyper_version
    g.update(lr=0.3)
    assert (opt._version, opt._hyper_version) == (v, h + 1) and g["lr"] == 0.3
    g.update({"momentum": 0.5}, extra=1)
    assert (opt._version, opt._hyper_version) == (v + 1, h + 2)
    assert g.setdefault("lr", 9.0) == 0.3 and opt._hyper_version == h + 2
    assert g.setdefault("initial_lr", 0.1) == 0.1 and opt._version == v + 2


def test_stepping_does_not_bump_versions():
    m = mlp()
    opt = optim.Adam(m.parameters(), lr=0.01)
    v = opt._version, opt._hyper_version
    for _ in range(3):
        train_step(m, opt)
    assert (opt._version, opt._hyper_version) == v


def test_copied_optimizer_groups_still_report_changes():
    m = mlp()
    opt = optim.Adam(m.parameters(), lr=0.01)
    for c in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        g = c.param_groups[0]
        assert isinstance(g, optim.ParamGroup)
        h = c._hyper_version
        g["lr"] = 0.5
        assert c._hyper_version == h + 1 and opt.param_groups[0]["lr"] == 0.01


# ------------------------------------------------------------------ step counts


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_step_counts_are_0d_float32_tensors(name):
    m = mlp()
    opt = getattr(optim, name)(m.parameters(), lr=0.01)
    for _ in range(3):
        train_step(m, opt)
    for p in m.parameters():
        step = opt.state[p]["step"]
        assert isinstance(step, dg.Tensor) and step.shape == () and step.dtype is dg.float32
        assert step.item() == 3.0


def test_sgd_momentum_buffer_lives_in_state():
    p = scalar_param()
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = dg.tensor([2.0], dtype=dg.float64)
    opt.step()
    assert opt.state[p]["momentum_buffer"].item() == 2.0
    assert "step" not in opt.state[p]


def test_optimizer_steps_read_no_tensor_values():
    class ReadForbidden(DispatchMode):
        def on_read(self, tensor, kind):
            raise AssertionError(f"value read ({kind})")

    for name, kw in TORCH_CASES:
        m = mlp()
        opt = getattr(optim, name)(m.parameters(), **kw)
        train_step(m, opt)          # creates the state outside the mode
        x, y = dg.tensor(DATA), dg.tensor(TARGET)
        opt.zero_grad()
        ((m(x) - y) ** 2).mean().backward()
        with push_mode(ReadForbidden()):
            opt.step()


# ------------------------------------------------------------------ schedulers


SCHEDULERS = [
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("StepLR", dict(step_size=1, gamma=0.9)),
    ("ExponentialLR", dict(gamma=0.8)),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("CosineAnnealingLR", dict(T_max=20)),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.95 ** e / (1 + e % 3))),
    ("LambdaLR", dict(lr_lambda=[lambda e: 1.0 / (e + 1), lambda e: 0.5 ** e])),
]


@pytest.mark.parametrize("name,kw", SCHEDULERS, ids=[f"{n}{i}" for i, (n, _) in
                                                     enumerate(SCHEDULERS)])
def test_scheduler_matches_torch_for_20_epochs(name, kw):
    torch = pytest.importorskip("torch")
    p, tp = scalar_param(), torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    q, tq = scalar_param(), torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.3}], lr=0.1)
    topt = torch.optim.SGD([{"params": [tp]}, {"params": [tq], "lr": 0.3}], lr=0.1)
    s = getattr(sched, name)(opt, **kw)
    ts = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
    for epoch in range(20):
        opt.step(), topt.step()
        s.step(), ts.step()
        assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12, abs=1e-15), epoch
        assert [g["lr"] for g in opt.param_groups] == s.get_last_lr()


def test_scheduled_lr_is_used_by_the_next_step():
    p = scalar_param()
    opt = optim.SGD([p], lr=1.0)
    s = sched.StepLR(opt, step_size=1, gamma=0.5)
    moves = []
    for _ in range(3):
        before = p.item()
        p.grad = dg.tensor([1.0], dtype=dg.float64)
        opt.step()
        s.step()
        moves.append(before - p.item())
    assert moves == pytest.approx([1.0, 0.5, 0.25])


def test_scheduler_step_changes_only_the_hyper_version():
    opt = optim.SGD([scalar_param()], lr=1.0)
    s = sched.ExponentialLR(opt, gamma=0.5)
    v, h = opt._version, opt._hyper_version
    s.step()
    assert (opt._version, opt._hyper_version) == (v, h + 1)


def test_scheduler_state_dict_resumes():
    opt = optim.SGD([scalar_param()], lr=1.0)
    s = sched.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        s.step()
    sd = s.state_dict()
    expected = []
    for _ in range(3):
        s.step()
        expected.append(s.get_last_lr())
    opt2 = optim.SGD([scalar_param()], lr=1.0)
    s2 = sched.CosineAnnealingLR(opt2, T_max=10)
    s2.load_state_dict(sd)
    got = []
    for _ in range(3):
        s2.step()
        got.append(s2.get_last_lr())
    assert got == expected


def test_scheduler_errors():
    opt = optim.SGD([scalar_param()], lr=1.0)
    with pytest.raises(KeyError, match="initial_lr"):
        sched.StepLR(opt, step_size=2, last_epoch=3)
    with pytest.raises(ValueError, match="Expected 1 lr_lambdas, but got 2"):
        sched.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0])
    with pytest.raises(TypeError, match="is not an Optimizer"):
        sched.StepLR(object(), step_size=1)


# ---------------------------------------------------------------- prefill (a first step as a fill)

FILLED = {
    "adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda ps: optim.AdamW(ps, lr=1e-2, amsgrad=True, maximize=True),
    "adadelta": lambda ps: optim.Adadelta(ps, lr=1.0, weight_decay=0.01),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-2, momentum=0.9, centered=True),
    "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, nesterov=True,
                                         weight_decay=1e-3),
    "sgd-maximize": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, maximize=True),
}
# gradients with the values a fill could get wrong: signed zeros, a NaN, infinities, tiny
SPECIAL = np.array([-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -2.5, 1e30],
                   dtype=np.float32)


def _states(opt):
    return [(k, v.numpy().copy()) for st in opt.state.values() for k, v in st.items()]


@pytest.mark.parametrize("name", FILLED)
def test_prefill_then_step_is_the_first_step_bit_for_bit(name):
    """``Optimizer.prefill`` (the compiler fills state before a first compiled step, Note [a
    first step from a filled state] in compiler/variantcache.py) followed by ``step()``
    makes what a first ``step()`` makes, to the bit: parameters, state keys, values (signs
    of zero and NaNs included) and order — for two steps, so a wrong fill shows later too."""
    runs = []
    for fill in (False, True):
        ps = [nn.Parameter(dg.tensor(np.linspace(-1, 1, 10).astype(np.float32))),
              nn.Parameter(dg.tensor([[0.5, -0.0], [2.0, -3.0]], dtype=dg.float32))]
        opt = FILLED[name](ps)
        if fill:
            assert opt.prefill(ps[::-1]) is True
            assert list(opt.state) == ps  # (the groups' order, as step() makes it)
        seen = []
        for s in range(2):
            ps[0].grad = dg.tensor(np.roll(SPECIAL, s))
            ps[1].grad = dg.tensor(SPECIAL[s:s + 4].reshape(2, 2))
            opt.step()
            seen.append(([p.detach().numpy().copy() for p in ps], _states(opt)))
        runs.append(seen)
    for (p0, s0), (p1, s1) in zip(*runs):
        for a, b in zip(p0, p1):
            assert a.tobytes() == b.tobytes()
        assert [k for k, _ in s0] == [k for k, _ in s1]
        for (k, a), (_, b) in zip(s0, s1):
            assert a.tobytes() == b.tobytes(), (k, a, b)


def test_prefill_where_no_fill_exists_leaves_the_state_as_it_was():
    ps = [nn.Parameter(dg.ones(3)), nn.Parameter(dg.ones(2))]
    opt = optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1)  # (a first step skips dampening)
    opt.state[ps[1]] = {}
    assert opt.prefill(ps) is False
    assert list(opt.state) == [ps[1]] and opt.state[ps[1]] == {}
    assert optim.SGD(ps, lr=0.1)._fill_state({}, ps[0], {"momentum": 0, "dampening": 0}) \
        is False  # (no momentum: no state at all)
    assert optim.LBFGS(ps)._fill_state is None
