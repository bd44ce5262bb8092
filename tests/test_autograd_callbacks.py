"""Post-accumulate-grad hooks and end-of-backward callbacks (``autograd.queue_callback``): what
data-parallel training starts and finishes its all-reduces from. PyTorch's behaviour, with
torch as the oracle where it is installed."""

from __future__ import annotations

import warnings

import pytest

import compiler
import dyngrad as dg

try:
    import torch
except ImportError:  # torch is an optional oracle
    torch = None


def test_post_accumulate_grad_hook_sees_the_accumulated_grad():
    w = dg.ones(2, requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.tolist()))
    (3 * w).sum().backward()
    (2 * w).sum().backward()
    assert seen == [[3.0, 3.0], [5.0, 5.0]]


def test_post_accumulate_grad_hook_runs_after_the_pre_hooks_change_the_grad():
    w = dg.ones(2, requires_grad=True)
    seen = []
    w.register_hook(lambda g: g * 10)
    w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.tolist()))
    w.sum().backward()
    assert seen == [[10.0, 10.0]]


def test_post_accumulate_grad_hook_runs_with_backward_inputs_but_not_with_autograd_grad():
    w = dg.ones(2, requires_grad=True)
    calls = []
    w.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    dg.autograd.grad((w * 3).sum(), w)
    assert calls == []
    (w * 3).sum().backward(inputs=[w])
    assert calls == [1] and w.grad.tolist() == [3.0, 3.0]


def test_post_accumulate_grad_hook_handle_removes_it():
    w = dg.ones(2, requires_grad=True)
    calls = []
    h = w.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    w.sum().backward()
    h.remove()
    w.sum().backward()
    assert calls == [1]


def test_post_accumulate_grad_hook_refuses_non_leaves_and_tensors_without_grad():
    with pytest.raises(RuntimeError, match="cannot be registered on non-leaf tensors"):
        (dg.ones(2, requires_grad=True) * 2).register_post_accumulate_grad_hook(print)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        dg.ones(2).register_post_accumulate_grad_hook(print)


@pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")
def test_post_accumulate_grad_hook_errors_are_torchs():
    for make in (lambda m: m.ones(2, requires_grad=True) * 2, lambda m: m.ones(2)):
        with pytest.raises(RuntimeError) as ours:
            make(dg).register_post_accumulate_grad_hook(print)
        with pytest.raises(RuntimeError) as theirs:
            make(torch).register_post_accumulate_grad_hook(print)
        assert str(ours.value) == str(theirs.value)


def test_post_accumulate_grad_hook_that_returns_a_tensor_raises_as_torch():
    """It cannot replace the gradient (a pre-hook can): PyTorch refuses the return value
    rather than ignore it."""
    w = dg.ones(2, requires_grad=True)
    w.register_post_accumulate_grad_hook(lambda p: p.grad * 0)
    with pytest.raises(RuntimeError, match="^Tensor post accumulate grad hooks should return "
                                           "None"):
        (3 * w).sum().backward()
    if torch is not None:
        t = torch.ones(2, requires_grad=True)
        t.register_post_accumulate_grad_hook(lambda p: p.grad * 0)
        with pytest.raises(RuntimeError, match="^Tensor post accumulate grad hooks should "
                                               "return None"):
            (3 * t).sum().backward()


def test_queue_callback_outside_backward_raises_as_torch():
    with pytest.raises(RuntimeError, match="Final callbacks can only be installed during "
                                           "backward pass"):
        dg.autograd.queue_callback(lambda: None)


def test_queued_callbacks_run_after_every_grad_is_accumulated_in_order():
    a = dg.ones(2, requires_grad=True)
    b = dg.ones(2, requires_grad=True)
    events = []

    def hook(g):
        dg.autograd.queue_callback(lambda: events.append(("first", a.grad.tolist(),
                                                          b.grad.tolist())))
        dg.autograd.queue_callback(lambda: events.append(("second",)))
        events.append(("hook",))
        return g

    y = a * 2
    y.register_hook(hook)
    (y + 3 * b).sum().backward()
    assert events == [("hook",), ("first", [2.0, 2.0], [3.0, 3.0]), ("second",)]


def test_a_callback_may_queue_another_and_both_run_before_backward_returns():
    a = dg.ones(1, requires_grad=True)
    events = []

    def later():
        events.append("later")

    def hook(g):
        dg.autograd.queue_callback(lambda: (events.append("first"),
                                            dg.autograd.queue_callback(later)))
        return g

    y = a * 2
    y.register_hook(hook)
    y.sum().backward()
    assert events == ["first", "later"]


def test_callbacks_belong_to_their_own_backward_pass():
    a = dg.ones(1, requires_grad=True)
    events = []

    def hook(g):  # a backward pass inside a hook: its callbacks run when it ends
        inner = dg.ones(1, requires_grad=True)
        with dg.enable_grad():  # (hooks run with grad mode off)
            z = inner * 5
            z.register_hook(lambda g2: dg.autograd.queue_callback(
                lambda: events.append("inner")) or g2)
            z.sum().backward()
        events.append("inner returned")
        dg.autograd.queue_callback(lambda: events.append("outer"))
        return g

    y = a * 2
    y.register_hook(hook)
    y.sum().backward()
    assert events == ["inner", "inner returned", "outer"]


def test_a_failing_backward_runs_no_callback_and_leaves_none_queued():
    a = dg.ones(1, requires_grad=True)
    events = []

    def hook(g):
        dg.autograd.queue_callback(lambda: events.append("ran"))
        raise ValueError("hook failed")

    y = a * 2
    y.register_hook(hook)
    with pytest.raises(ValueError, match="hook failed"):
        y.sum().backward()
    assert events == []
    with pytest.raises(RuntimeError, match="Final callbacks"):
        dg.autograd.queue_callback(lambda: None)


def test_a_compiled_step_with_a_post_accumulate_hook_runs_it_every_call():
    w = dg.ones(2, requires_grad=True)
    calls = []
    w.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.tolist()))

    def step(x):
        w.grad = None
        (w * x).sum().backward()

    cf = compiler.compile(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("runs eagerly from now on")
        for k in range(4):
            cf(dg.full((2,), float(k)))
    assert calls == [[float(k)] * 2 for k in range(4)]
    assert cf.fallbacks  # (the hook is Python the compiled call would not run)


def test_registering_a_post_accumulate_hook_after_compiling_is_not_skipped():
    w = dg.ones(2, requires_grad=True)
    calls = []

    def step(x):
        w.grad = None
        (w * x).sum().backward()

    cf = compiler.compile(step)
    for _ in range(3):
        cf(dg.ones(2))
    w.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    for _ in range(2):
        cf(dg.ones(2))
    assert calls == [1, 1]


def test_a_post_accumulate_hook_on_an_argument_registered_after_compiling_runs():
    calls = []

    def step(w, x):
        (w * x).sum().backward()

    cf = compiler.compile(step)
    w = dg.ones(2, requires_grad=True)
    for _ in range(3):
        w.grad = None
        cf(w, dg.ones(2))
    w.register_post_accumulate_grad_hook(lambda p: calls.append(p.grad.tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the hooked calls run eagerly)
        for _ in range(2):
            w.grad = None
            cf(w, dg.ones(2))
    assert calls == [[1.0, 1.0]] * 2
