"""A first training step traced from a filled optimizer state (Note [a first call from a
filled state] in compiler/firstfill.py): the compiled step equals eager from its first call
on — outputs, parameters, gradients, and the optimizer's state entry by entry, in order — even
where the program looks at the state before its step() has made it, which springs the fill's
tripwire and leaves the call eager. (The harness: tests/_fill_harness.py; a reviewer's
attacks, and every optimizer traced from its first call: tests/test_first_call_fill_review.py.)"""

from __future__ import annotations

import pytest
from _fill_harness import ADAM, compare, descend, make_model, same, traced_from_first, train

import compiler
from dyngrad import nn, optim


def test_an_optimizer_the_call_does_not_step_is_left_without_state():
    model = make_model()
    idle = optim.Adam(nn.Linear(3, 3).parameters())
    cf = compiler.compile(lambda x: model(x).sum() if idle.defaults else None)
    for i in range(3):
        x = (nn.Linear(4, 4).weight[:2] * i).detach()
        same(model(x).sum(), cf(x), i == 0, f"sum {i}")
        assert idle.state == {}
    traced_from_first(cf)


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
    cf, log1, _ = compare(train(before=before))
    assert log1[0] in (0, [], "[0]"), log1
    assert "kept in Python state" in cf.fallbacks[0]


def test_a_read_of_the_state_after_the_step_sees_the_stepped_state():
    cf, log1, _ = compare(train(after=_state_keys))
    assert log1[0] == [["exp_avg", "exp_avg_sq", "step"]] * 4
    traced_from_first(cf)


@pytest.mark.filterwarnings("ignore:dyngrad.compile")  # (the hook makes the step eager)
def test_a_hook_reading_the_state_during_backward_sees_it_empty():
    """A tensor hook runs natively inside backward(), out of the capture's sight: the
    watchdog springs the tripwire as it starts."""
    def setup(model, opt, log):
        model[0].weight.register_hook(lambda g: log.append(len(opt.state)))
    _, log1, _ = compare(train(setup=setup), steps=3)
    assert log1[0] == 0


@pytest.mark.filterwarnings("ignore:dyngrad.compile")  # (a dict of tensors: eager)
def test_the_state_passed_as_an_argument_is_seen_empty():
    def build():
        model = make_model()
        opt = ADAM(model.parameters())
        log: list = []

        def step(x, y):
            state = opt.state  # (read by the function: passed on as an argument)
            return inner(x, y, state)

        def inner(x, y, state):
            log.append(len(state))
            opt.zero_grad()
            return descend(model, opt, x, y)
        return step, list(model.parameters()), [opt], log
    _, log1, _ = compare(build, steps=3)
    assert log1[0] == 0


def test_an_error_before_the_step_leaves_no_state():
    def before(model, opt, log):
        if not log:
            log.append("raised")
            raise ValueError("not yet")
    cf, log1, _ = compare(train(before=before))
    assert log1 == ["raised"]


def test_gradients_zeroed_after_the_step_keep_every_call_equal():
    """Zeroing after the step (to zeros, not None): the first call starts without
    gradients and the later ones with zeros — two paths, both equal to eager."""
    def after(model, opt, log):
        opt.zero_grad(set_to_none=False)
    compare(train(zero_first=False, after=after), steps=5)


def test_two_optimizers_one_stepped_one_not():
    def build():
        model, other = make_model(), nn.Linear(4, 2)
        opt, idle = ADAM(model.parameters()), optim.SGD(other.parameters(), lr=0.1,
                                                        momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            return descend(model, opt, x, y) + 0 * len(idle.param_groups)
        return step, list(model.parameters()) + list(other.parameters()), [opt, idle], []
    cf, _, _ = compare(build, steps=3)
    traced_from_first(cf)
