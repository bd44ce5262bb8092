"""A first training step traced from a filled optimizer state (Note [a first call from a
filled state] in compiler/firstfill.py): the compiled step equals eager from its first call
on — outputs, parameters, gradients, and the optimizer's state entry by entry, in order — even
where the program looks at the state before its step() has made it, which springs the fill's
tripwire and leaves the call eager."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import close_to_eager

import compiler
import dyngrad as dg
from dyngrad import nn, optim

OPTIMIZERS = {
    "adam": lambda ps: optim.Adam(ps, lr=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adadelta": lambda ps: optim.Adadelta(ps),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-3, momentum=0.5, centered=True),
}


def arr(t):
    return np.asarray(t.detach().numpy() if isinstance(t, dg.Tensor) else t)


def make(make_opt=OPTIMIZERS["adam"], unused: bool = False):
    dg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    if unused:
        model.spare = nn.Linear(2, 2)  # (never called: its parameters get no gradient)
    return model, make_opt(model.parameters())


def batch(i: int):
    g = np.random.default_rng(i)
    return (dg.tensor(g.standard_normal((5, 4)).astype(np.float32)),
            dg.tensor(g.standard_normal((5, 2)).astype(np.float32)))


def state_of(model, opt) -> list:
    """The optimizer's state as (parameter index, [(key, value)]) in the dict's order."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    return [(index[id(p)], [(k, arr(v).copy() if isinstance(v, dg.Tensor) else v)
                            for k, v in st.items()]) for p, st in opt.state.items()]


def same(a, b, exact: bool, what: str) -> None:
    """Bit for bit when ``exact`` (a traced call computes eager's own numbers), else within
    ``close_to_eager`` (native kernels may sum in another order)."""
    a, b = arr(a), arr(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if exact:
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert close_to_eager(a, b), f"{what}: {a} vs {b}"


def assert_same_state(a, b, exact: bool = False) -> None:
    (m1, o1), (m2, o2) = a, b
    for i, (p, q) in enumerate(zip(m1.parameters(), m2.parameters())):
        same(p, q, exact, f"parameter {i}")
        assert (p.grad is None) == (q.grad is None), f".grad of parameter {i}"
        if p.grad is not None:
            same(p.grad, q.grad, exact, f"grad {i}")
    s1, s2 = state_of(m1, o1), state_of(m2, o2)
    assert [(i, [k for k, _ in e]) for i, e in s1] == [(i, [k for k, _ in e]) for i, e in s2]
    for (i, e1), (_, e2) in zip(s1, s2):
        for (k, v1), (_, v2) in zip(e1, e2):
            same(v1, v2, exact, f"state {k!r} of parameter {i}")


def step_both(eager, cf, a, b, i: int, *args) -> None:
    """Step ``i`` of each twin: the same loss, parameters, gradients and state (the first
    call, traced or eager, bit for bit)."""
    x, y = batch(i)
    same(eager(x, y, *args), cf(x, y, *args), i == 0, f"loss {i}")
    assert_same_state(a, b, exact=i == 0)


def train(model, opt, log, before=None, after=None, zero_first=True):
    def step(x, y):
        if zero_first:
            opt.zero_grad()
        if before is not None:
            before(model, opt, log)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if after is not None:
            after(model, opt, log)
        if not zero_first:
            opt.zero_grad()
        return loss
    return step


def run(steps=4, make_opt=OPTIMIZERS["adam"], unused=False, **kw):
    """(compiled function, eager log, compiled log) after ``steps`` steps of twins, compared
    after each."""
    a, b = make(make_opt, unused), make(make_opt, unused)
    log1, log2 = [], []
    eager = train(*a, log1, **kw)
    cf = compiler.compile(train(*b, log2, **kw))
    for i in range(steps):
        step_both(eager, cf, a, b, i)
        assert log1 == log2, (i, log1, log2)
    return cf, log1, log2


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_first_call_is_traced_and_every_call_equals_eager(name):
    cf, _, _ = run(make_opt=OPTIMIZERS[name])
    assert cf.fallbacks == [] and len(cf.variants) == 1 and cf.variants[0].calls == 3


def test_parameters_without_a_gradient_get_no_state_as_in_eager():
    cf, _, _ = run(unused=True)
    assert len(cf.variants) == 1 and cf.variants[0].calls == 3


def test_an_optimizer_the_call_does_not_step_is_left_without_state():
    model, opt = make()
    idle = optim.Adam(nn.Linear(3, 3).parameters())
    cf = compiler.compile(lambda x: model(x).sum() if idle.defaults else None)
    for i in range(3):
        x, _ = batch(i)
        same(model(x).sum(), cf(x), i == 0, f"sum {i}")
        assert idle.state == {} and opt.state == {}
    assert cf.fallbacks == [] and len(cf.variants) == 1


def _state_size(model, opt, log):
    log.append(len(opt.state))


def _state_keys(model, opt, log):
    log.append([sorted(st) for st in opt.state.values()])


def _state_dict(model, opt, log):  # (a native method given the optimizer)
    log.append(len(opt.state_dict()["state"]))


HELD: list = []


def _native_walk(model, opt, log):  # (native code reaching the state through a list)
    log.append(repr([len(d) for d in HELD]))


STATE_GLOBAL = {}


def _global_alias(model, opt, log):
    log.append(len(STATE_GLOBAL["s"]))


@pytest.mark.parametrize("reader", [_state_size, _state_keys, _state_dict, _native_walk,
                                    _global_alias])
def test_a_read_of_the_state_before_the_step_sees_it_empty_as_in_eager(reader):
    """The tripwire springs before the read: the fill is removed, the step makes the state
    eagerly, and that trace is refused (the next call traces)."""
    def before(model, opt, log):
        HELD[:] = [opt.state]
        STATE_GLOBAL["s"] = opt.state
        reader(model, opt, log)
    a, b = make(), make()
    log1, log2 = [], []
    eager = train(*a, log1, before=before)
    cf = compiler.compile(train(*b, log2, before=before))
    for i in range(4):
        step_both(eager, cf, a, b, i)
        assert log1 == log2, (i, log1, log2)
    assert log1[0] in (0, [], "[0]"), log1
    assert "kept in Python state" in cf.fallbacks[0]


def test_a_read_of_the_state_after_the_step_sees_the_stepped_state():
    cf, log1, _ = run(after=_state_keys)
    assert log1[0] == [["exp_avg", "exp_avg_sq", "step"]] * 4
    assert cf.fallbacks == [] and len(cf.variants) == 1


@pytest.mark.filterwarnings("ignore:dyngrad.compile")  # (the hook makes the step eager)
def test_a_hook_reading_the_state_during_backward_sees_it_empty():
    """A tensor hook runs natively inside backward(), out of the capture's sight: the
    watchdog springs the tripwire as it starts."""
    a, b = make(), make()
    log1, log2 = [], []
    for (model, opt), log in ((a, log1), (b, log2)):
        model[0].weight.register_hook(
            lambda g, opt=opt, log=log: log.append(len(opt.state)))
    eager, cf = train(*a, log1), compiler.compile(train(*b, log2))
    for i in range(3):
        step_both(eager, cf, a, b, i)
        assert log1 == log2
    assert log1[0] == 0


@pytest.mark.filterwarnings("ignore:dyngrad.compile")  # (a dict of tensors: eager)
def test_the_state_passed_as_an_argument_is_seen_empty():
    a, b = make(), make()
    log1, log2 = [], []

    def make_step(model, opt, log):
        inner = train(model, opt, log)

        def step(x, y, state):
            log.append(len(state))
            return inner(x, y)
        return step
    eager, cf = make_step(*a, log1), compiler.compile(make_step(*b, log2))
    for i in range(3):
        x, y = batch(i)
        same(eager(x, y, a[1].state), cf(x, y, b[1].state), i == 0, f"loss {i}")
        assert_same_state(a, b, exact=i == 0)
        assert log1 == log2
    assert log1[0] == 0


def test_an_error_before_the_step_leaves_no_state():
    def before(model, opt, log):
        if not log:
            log.append("raised")
            raise ValueError("not yet")
    a, b = make(), make()
    log1, log2 = [], []
    eager, cf = train(*a, log1, before=before), compiler.compile(train(*b, log2,
                                                                       before=before))
    x, y = batch(0)
    for f in (eager, cf):
        with pytest.raises(ValueError, match="not yet"):
            f(x, y)
    assert a[1].state == {} and b[1].state == {}
    for i in range(3):
        step_both(eager, cf, a, b, i)


def test_gradients_zeroed_after_the_step_keep_every_call_equal():
    """Zeroing after the step (to zeros, not None): the first call starts without
    gradients and the later ones with zeros — two paths, both equal to eager."""
    def after(model, opt, log):
        opt.zero_grad(set_to_none=False)
    run(steps=5, zero_first=False, after=after)


def test_two_optimizers_one_stepped_one_not():
    dg.manual_seed(0)
    pairs = []
    for _ in range(2):
        dg.manual_seed(0)
        m = nn.Linear(4, 2)
        other = nn.Linear(4, 2)
        pairs.append((m, optim.Adam(m.parameters(), lr=1e-2), other,
                      optim.SGD(other.parameters(), lr=0.1, momentum=0.9)))

    def make_step(m, o, other, o2):
        def step(x, y):
            o.zero_grad()
            loss = ((m(x) - y) ** 2).mean() + 0 * len(o2.param_groups)
            loss.backward()
            o.step()
            return loss
        return step
    eager, cf = make_step(*pairs[0]), compiler.compile(make_step(*pairs[1]))
    for i in range(3):
        x, y = batch(i)
        same(eager(x, y), cf(x, y), i == 0, f"loss {i}")
        assert_same_state(pairs[0][:2], pairs[1][:2], exact=i == 0)
        assert pairs[0][3].state == {} and pairs[1][3].state == {}
    assert cf.fallbacks == [] and len(cf.variants) == 1
