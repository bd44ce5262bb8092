"""Footguns, what a call brings besides Python values (issue 13): the autograd history of its
arguments, the modes it runs under (an outer trace, ``vmap``/``jvp``/``jacfwd``, anomaly
detection), its sizes, its randomness, what its outputs alias, and what it keeps alive.

Each test runs a program eagerly and compiled on identical copies of the state (a builder
called twice, or ``copy.deepcopy``), changes what the call brings between calls, and compares
outputs, ``.grad`` and parameters after every call. Known failures are
``xfail(strict=True, reason="issue 13: <category>")``, the category as the issue names it.
"""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import numpy as np
import pytest
from _footgun_compare import assert_same, assert_same_model, compiled_calls, t
from conftest import on_llvm

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad import nn, optim
from dyngrad.func import grad, jacfwd, jacrev, jvp, vmap


@pytest.fixture(autouse=True)
def seeded():
    assert compiler.config.enabled
    dg.manual_seed(1234)
    yield


def xfail13(category: str, condition: bool = True):
    return pytest.mark.xfail(condition, strict=True, reason=f"issue 13: {category}")


X = t(1.0, 2.0, -3.0)


def _batches(n, shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [(dg.tensor(rng.standard_normal(shape).astype(np.float32)),
             dg.tensor(rng.standard_normal((shape[0], 1)).astype(np.float32)))
            for _ in range(n)]


def _warm(cf, *args, calls=3):
    for _ in range(calls):
        cf(*args)
    assert compiled_calls(cf) >= 1, "the warm-up calls should run compiled"


# ------------------------------------------------------------------ autograd history of arguments


HISTORY = "autograd history of arguments"


def _loss_step(out, y):
    loss = F.mse_loss(out, y)
    loss.backward()
    return loss


def test_a_non_leaf_argument_whose_graph_changes_every_batch():
    m1 = nn.Linear(3, 1)
    m2 = copy.deepcopy(m1)
    cf = compiler.compile(_loss_step)
    for i, (x, y) in enumerate(_batches(5)):
        for m in (m1, m2):
            m.zero_grad()
        assert_same(_loss_step(m1(x), y), cf(m2(x), y), f"loss {i}")
        assert_same_model(m1, m2, f"model after batch {i}")
    assert compiled_calls(cf) >= 1


def test_a_training_loop_through_a_compiled_loss_step_trains_like_eager():
    """The optimizer step between calls changes the parameters the arguments' graph
    reaches: gradients must still equal eager's (by a trace continuing into the arguments'
    graph, or by guards that send the call to eager)."""
    m1 = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    m2 = copy.deepcopy(m1)
    o1, o2 = optim.SGD(m1.parameters(), lr=0.1), optim.SGD(m2.parameters(), lr=0.1)
    cf = compiler.compile(_loss_step)
    batches = _batches(4)
    for epoch in range(2):
        for i, (x, y) in enumerate(batches):
            o1.zero_grad()
            o2.zero_grad()
            assert_same(_loss_step(m1(x), y), cf(m2(x), y), f"loss {epoch}.{i}")
            o1.step()
            o2.step()
            assert_same_model(m1, m2, f"model after {epoch}.{i}")


def _square_sum_backward(h):
    loss = (h * h).sum()
    loss.backward()
    return loss


def test_traced_with_one_non_leaf_and_called_with_another_the_gradient_lands_on_the_new_leaf():
    def leaves():
        return nn.Parameter(t(1.0, 2.0)), nn.Parameter(t(-1.0, 0.5))
    (w1, v1), (w2, v2) = leaves(), leaves()
    cf = compiler.compile(_square_sum_backward)
    for k in range(2):
        assert_same(_square_sum_backward(w1 * 2), cf(w2 * 2), f"w call {k}")
    assert_same(_square_sum_backward(v1 * 3), cf(v2 * 3), "v call")
    assert_same(w1.grad, w2.grad, "w.grad")
    assert_same(v1.grad, v2.grad, "v.grad")


def test_a_non_leaf_argument_with_the_same_graph_every_call():
    """The control: the argument's graph has the same leaves every call (the parameter is
    fixed, only its value changes), so replaying it is not the failure above."""
    w1, w2 = nn.Parameter(t(1.0, 2.0)), nn.Parameter(t(1.0, 2.0))
    cf = compiler.compile(_square_sum_backward)
    for k in range(4):
        assert_same(_square_sum_backward(w1 * 2), cf(w2 * 2), f"call {k}")
        assert_same(w1.grad, w2.grad, f"w.grad after call {k}")


def test_backward_outside_through_a_non_leaf_argument_reaches_the_model():
    m1 = nn.Linear(3, 2)
    m2 = copy.deepcopy(m1)

    def loss_of(h):
        return (h.tanh() * h).sum()
    cf = compiler.compile(loss_of)
    for i, (x, _) in enumerate(_batches(4)):
        for m in (m1, m2):
            m.zero_grad()
        l1, l2 = loss_of(m1(x)), cf(m2(x))
        assert_same(l1, l2, f"loss {i}")
        l1.backward()
        l2.backward()
        assert_same_model(m1, m2, f"model after batch {i}")
    assert compiled_calls(cf) >= 1


# ------------------------------------------------------------------ nesting and modes


def _train_step_of(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def test_a_warm_compiled_step_called_inside_another_compiled_function_trains():
    m1 = nn.Linear(3, 1)
    m2 = copy.deepcopy(m1)
    o1, o2 = optim.SGD(m1.parameters(), lr=0.1), optim.SGD(m2.parameters(), lr=0.1)
    eager_step = _train_step_of(m1, o1)
    inner = compiler.compile(_train_step_of(m2, o2))
    batches = _batches(8)
    for x, y in batches[:3]:  # warm the inner step on its own
        assert_same(eager_step(x, y), inner(x, y))
    assert compiled_calls(inner) >= 1

    def eager_outer(x, y):
        return eager_step(x, y).detach() * 2.0

    outer = compiler.compile(lambda x, y: inner(x, y).detach() * 2.0)
    for i, (x, y) in enumerate(batches[3:]):
        assert_same(eager_outer(x, y), outer(x, y), f"loss {i}")
        assert_same_model(m1, m2, f"model after outer call {i}")
    assert compiled_calls(outer) >= 2, "the outer function should trace through the inner " \
                                       "step and run compiled"


def _step_returning_a_function_of_the_spent_loss(w):
    def step(x):
        w.grad = None
        loss = (w * x).sum()
        loss.backward()
        return loss * 1.0  # eager: fine, as long as nobody calls backward on it again
    return step


def test_returning_arithmetic_on_the_loss_after_backward_inside():
    w1, w2 = nn.Parameter(t(1.0, 2.0)), nn.Parameter(t(1.0, 2.0))
    eager = _step_returning_a_function_of_the_spent_loss(w1)
    cf = compiler.compile(_step_returning_a_function_of_the_spent_loss(w2))
    for k in range(3):
        x = t(1.0, float(k))
        assert_same(eager(x).detach(), cf(x).detach(), f"call {k}")
        assert_same(w1.grad, w2.grad, f"w.grad after call {k}")


W = t(0.5, -1.0, 2.0)


def _warm_sin():
    cf = compiler.compile(lambda x: (x * W).sin())
    _warm(cf, t(0.1, 0.2, 0.3))
    return cf


def _eager_sin(x):
    return (x * W).sin()


def _jvp_of(f):
    return jvp(f, (t(1.0, 2.0, 3.0),), (t(1.0, 0.5, -1.0),))


def _vmap_of(f):
    return vmap(f)(dg.tensor(np.arange(12.0, dtype=np.float32).reshape(4, 3) / 4))


def _jacfwd_of(f):
    return jacfwd(f)(t(1.0, 2.0, 3.0))


def _jacrev_of(f):
    return jacrev(f)(t(1.0, 2.0, 3.0))


def _grad_of(f):
    return grad(lambda x: f(x).sum())(t(1.0, 2.0, 3.0))


@pytest.mark.parametrize("transform", [
    pytest.param(_jvp_of, id="jvp"),
    pytest.param(_vmap_of, id="vmap"),
    pytest.param(_jacfwd_of, id="jacfwd"),
    pytest.param(_jacrev_of, id="jacrev"),
    pytest.param(_grad_of, id="grad"),
])
def test_a_transform_around_a_warm_compiled_function(transform):
    cf = _warm_sin()
    for k in range(2):
        assert_same(transform(_eager_sin), transform(cf), f"call {k}")


def _sqrt_of_square_backward(x):
    loss = (x * x).sqrt().sum()  # at 0: d sqrt = inf, times 2x = 0: NaN
    loss.backward()
    return loss


@pytest.mark.filterwarnings("ignore:Anomaly Detection")
def test_detect_anomaly_after_tracing_raises_like_eager():
    cf = compiler.compile(_sqrt_of_square_backward)
    _warm(cf, t(1.0, 2.0).requires_grad_())
    x1, x2 = t(0.0, 2.0).requires_grad_(), t(0.0, 2.0).requires_grad_()
    with dg.autograd.detect_anomaly():
        with pytest.raises(RuntimeError, match="returned nan values"):
            _sqrt_of_square_backward(x1)
        with pytest.raises(RuntimeError, match="returned nan values"):
            cf(x2)


@pytest.mark.filterwarnings("ignore:Anomaly Detection")
def test_detect_anomaly_without_a_nan_gives_eager_results():
    cf = compiler.compile(_sqrt_of_square_backward)
    with dg.autograd.detect_anomaly():
        for k in range(3):
            x1, x2 = t(1.0, float(k + 1)).requires_grad_(), t(1.0, float(k + 1)).requires_grad_()
            assert_same(_sqrt_of_square_backward(x1), cf(x2))
            assert_same(x1.grad, x2.grad)


# ------------------------------------------------------------------ symbolic sizes


WS = dg.tensor(np.arange(1.0, 11.0, dtype=np.float32))


def _head_min_5(x):
    n = x.shape[0]
    return (x[:min(n, 5)] * WS[:min(n, 5)]).sum()


def _first_half(x):
    n = x.shape[0]
    return x[: n // 2] * WS[: n // 2]


def _branch_on_size(x):
    n = x.shape[0]
    if n > 3:
        return x * 2
    return x - 1


def _sized(n):
    return dg.tensor(np.linspace(-1.0, 1.0, n, dtype=np.float32))


@pytest.mark.parametrize("fn, sizes", [
    pytest.param(_head_min_5, (2, 3, 4, 6, 7, 5, 8), id="min(n, 5)"),
    pytest.param(_first_half, (2, 4, 6, 3, 5, 7, 9), id="n // 2"),
    pytest.param(_branch_on_size, (4, 5, 6, 2, 3, 7), id="if n > 3"),
    pytest.param(_head_min_5, (2, 3, 4, 3, 2), id="min(n, 5) seen sizes"),
])
def test_a_size_read_into_python(fn, sizes):
    cf = compiler.compile(fn)
    for n in sizes:
        assert_same(fn(_sized(n)), cf(_sized(n)), f"n = {n}")


# ------------------------------------------------------------------ randomness


def _shuffled(x):
    return x[dg.randperm(x.shape[0])] * 2


def test_randperm_is_drawn_on_every_call_like_eager():
    x = dg.tensor(np.arange(16.0, dtype=np.float32))
    cf = compiler.compile(_shuffled)
    for seed in range(5):
        dg.manual_seed(seed)
        expected = _shuffled(x)
        dg.manual_seed(seed)
        assert_same(expected, cf(x), f"seed {seed}")


def test_randperm_over_several_calls_follows_the_rng_stream():
    x = dg.tensor(np.arange(16.0, dtype=np.float32))
    cf = compiler.compile(_shuffled)
    dg.manual_seed(7)
    eager = [_shuffled(x) for _ in range(4)] + [dg.rand(3)]
    dg.manual_seed(7)
    compiled = [cf(x) for _ in range(4)] + [dg.rand(3)]
    assert_same(eager, compiled)


def test_dropout_over_several_calls_follows_the_rng_stream():
    d = nn.Dropout(0.5)
    x = dg.ones(32)
    cf = compiler.compile(lambda x: d(x) * 1.0)
    dg.manual_seed(7)
    eager = [d(x) * 1.0 for _ in range(4)] + [dg.rand(3)]
    dg.manual_seed(7)
    compiled = [cf(x) for _ in range(4)] + [dg.rand(3)]
    assert_same(eager, compiled)


# ------------------------------------------------------------------ aliasing of outputs


ALIASING = "aliasing and memory safety"


def _twice(x):
    y = x * 2
    return y, y


def test_returning_the_same_tensor_twice_returns_one_object():
    cf = compiler.compile(_twice)
    for k in range(3):
        a, b = cf(X)
        assert a is b, f"call {k}"


def _and_a_view(x):
    y = x * 2
    return y, y[1:]


def test_a_returned_view_aliases_its_base():
    cf = compiler.compile(_and_a_view)
    for k in range(3):
        e, c = _and_a_view(X), cf(X)
        for _, v in (e, c):
            v.add_(100.0)
        assert_same(e, c, f"call {k}")


def _view_of_argument(x):
    return x[1:]


def test_a_returned_view_of_an_argument_aliases_the_argument():
    cf = compiler.compile(_view_of_argument)
    for k in range(3):
        x1, x2 = t(1.0, 2.0, 3.0), t(1.0, 2.0, 3.0)
        v1, v2 = _view_of_argument(x1), cf(x2)
        v1.mul_(10.0)
        v2.mul_(10.0)
        assert_same(x1, x2, f"call {k}")


def _grad_of_w(w):
    def f(x):
        w.grad = None
        (w * x).sum().backward()
        return w.grad
    return f


def test_a_returned_grad_is_the_grad():
    w = nn.Parameter(t(1.0, 2.0, 3.0))
    cf = compiler.compile(_grad_of_w(w))
    for k in range(3):
        g = cf(t(1.0, 2.0, float(k)))
        assert g is w.grad, f"call {k}"


def _scale_then_read(w):
    def f(x):
        before = w * 1.0
        x.mul_(10.0)
        return before, w * 1.0
    return f


def test_an_argument_that_views_a_captured_tensor_at_another_offset():
    w1, w2 = t(1.0, 2.0, 3.0, 4.0), t(1.0, 2.0, 3.0, 4.0)
    eager, cf = _scale_then_read(w1), compiler.compile(_scale_then_read(w2))
    for k in range(2):
        assert_same(eager(w1[0:2]), cf(w2[0:2]), f"offset 0, call {k}")
        assert_same(w1, w2)
    for k in range(2):
        assert_same(eager(w1[1:3]), cf(w2[1:3]), f"offset 1, call {k}")
        assert_same(w1, w2)


# ------------------------------------------------------------------ other


@pytest.mark.parametrize("op", ["//", "%"])
def test_integer_division_by_zero_raises_like_eager(op):
    def f(a, b):
        return (a // b if op == "//" else a % b) + 1
    cf = compiler.compile(f)
    a = t(7, 8, -9)
    for b in (t(2, 3, 4), t(1, 5, 2), t(3, 3, 3)):
        assert_same(f(a, b), cf(a, b))
    assert compiled_calls(cf) >= 1
    zero = t(2, 0, 4)
    with pytest.raises(Exception) as eager:
        f(a, zero)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a note that the call ran eagerly)
        with pytest.raises(type(eager.value), match="division by zero"):
            cf(a, zero)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    @compiler.compile
    def predict(self, x):
        with dg.no_grad():
            return self.lin(x).tanh()


def test_a_compiled_method_does_not_keep_its_instance_alive():
    refs = []
    for _ in range(20):
        net = Net()
        for _ in range(2):
            net.predict(dg.ones(1, 3))
        refs.append(weakref.ref(net))
        del net
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of 20 dropped models are still alive"


@pytest.mark.skipif(not on_llvm(), reason="the interpreter compiles no native modules")
def test_the_in_process_module_cache_drops_modules_of_dropped_functions():
    from compiler.backends.llvm import cache
    assert hasattr(cache, "_memory"), "the in-process module cache moved: update this test"

    def make(c):
        return compiler.compile(lambda x: (x * c).exp() + c)
    gc.collect()
    before = len(cache._memory)
    for k in range(30):
        cf = make(1.0 + k / 64)
        _warm(cf, X)
        del cf
    gc.collect()
    grown = len(cache._memory) - before
    assert grown <= 4, f"{grown} modules of 30 dropped functions are still cached"

