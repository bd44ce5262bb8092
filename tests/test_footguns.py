"""Footguns: the silent failures tracing JITs are known for, one test each.

Each test runs the same program eagerly and compiled on identical copies of the state and
changes something between calls (a captured number, a rebound tensor, an alias, grad mode…).
The compiled function must follow the change exactly like eager — by a guard that makes it
trace again, a runtime input, or an eager fallback with a reason — never by silently replaying
a stale trace. Known bugs are ``xfail(strict=True)`` with the reason; they flip when fixed.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from conftest import close_numbers, close_to_eager

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad import nn, optim


@pytest.fixture(autouse=True)
def compilation_enabled():
    assert compiler.config.enabled
    dg.manual_seed(1234)
    yield


def assert_same(a, b, what="value"):
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, dg.Tensor):
        assert isinstance(b, dg.Tensor), f"{what}: tensor vs {type(b).__name__}"
        x, y = a._data, b._data
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {x.dtype}{x.shape} vs " \
                                                          f"{y.dtype}{y.shape}"
        assert close_to_eager(x, y), f"{what}: {x} vs {y}"
    else:
        assert a is None and b is None or close_numbers(a, b), f"{what}: {a!r} vs {b!r}"


def compiled_calls(cf) -> int:
    return sum(v.calls for v in cf.variants)


def t(*values, dtype=None):
    return dg.tensor(list(values), dtype=dtype)


X = t(1.0, 2.0, -3.0)


# ------------------------------------------------------------------ captured Python numbers


def test_closure_number_that_changes_between_calls_is_followed():
    def make():
        scale = 2.0

        def f(x):
            return x * scale

        def set_scale(v):
            nonlocal scale
            scale = v
        return f, set_scale
    f, set_scale = make()
    cf = compiler.compile(f)
    for v in (2.0, 2.0, 3.0, 3.0, -0.5):
        set_scale(v)
        assert_same(cf(X), X * v)
    assert compiled_calls(cf) >= 2


SCALE = 2.0


def _scaled(x):
    return x * SCALE


def _scaled_through_a_helper(x):
    return _scaled(x) + 1


@pytest.mark.parametrize("fn", [_scaled, _scaled_through_a_helper])
def test_global_number_that_changes_between_calls_is_followed(fn):
    global SCALE
    cf = compiler.compile(fn)
    try:
        for v in (2.0, 2.0, 5.0, 5.0, 0.25):
            SCALE = v
            assert_same(cf(X), fn(X))
    finally:
        SCALE = 2.0
    assert compiled_calls(cf) >= 2


COUNTER = 0


def _counting_step(x):
    global COUNTER
    COUNTER += 1
    return x * COUNTER


def test_a_global_counter_the_function_itself_increments_is_not_replayed_stale():
    global COUNTER
    COUNTER = 0
    cf = compiler.compile(_counting_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (cache_limit: the value feeds tensor arithmetic)
        for i in range(1, 12):
            assert_same(cf(X), X * i)
            assert COUNTER == i
    # each variant guards the value it multiplied by, so none is replayed stale
    assert all(any("COUNTER" in d for d in v.guards.describe) for v in cf.variants)


@pytest.mark.filterwarnings("ignore:dyngrad.compile")
def test_a_global_step_number_that_changes_every_call_becomes_a_runtime_input():
    global SCALE
    cf = compiler.compile(_scaled)
    try:
        for i in range(12):
            SCALE = 1.0 + i / 8
            assert_same(cf(X), _scaled(X))
    finally:
        SCALE = 2.0
    assert len(cf.variants) <= 2 and cf.eager_reason is None


def test_dropout_p_changed_on_the_module_between_calls_is_followed():
    d1, d2 = nn.Dropout(0.2), nn.Dropout(0.2)
    x = dg.ones(64)
    cf = compiler.compile(lambda x: d2(x))
    for p in (0.2, 0.2, 0.5, 0.5, 0.9):
        if p != d1.p:
            d1.p = d2.p = p
        dg.manual_seed(3)
        expected = d1(x)
        dg.manual_seed(3)
        assert_same(cf(x), expected)
    assert compiled_calls(cf) >= 2


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = 2.0  # a custom attribute read in forward

    def forward(self, x):
        return self.lin(x) * self.scale


def test_custom_module_attribute_changed_between_calls_is_followed():
    m1 = Scaled()
    m2 = copy.deepcopy(m1)
    cf = compiler.compile(m2)
    x = t(1.0, 2.0, 3.0).reshape(1, 3)
    with dg.no_grad():
        for s in (2.0, 2.0, 3.0, 3.0, -1.0):
            if s != m1.scale:
                m1.scale = m2.scale = s
            assert_same(cf(x), m1(x))
    assert compiled_calls(cf) >= 2


TEMPERATURE = 2.0


class Tempered(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) / TEMPERATURE  # a global of the module's own code


def test_a_global_read_by_a_called_modules_forward_that_changes_is_followed():
    global TEMPERATURE
    net = Tempered()

    def predict(x):
        with dg.no_grad():
            return net(x)
    cf = compiler.compile(predict)
    x = dg.ones(1, 3)
    try:
        for v in (2.0, 2.0, 4.0, 4.0, 0.5):
            TEMPERATURE = v
            assert_same(cf(x), predict(x))
    finally:
        TEMPERATURE = 2.0
    assert compiled_calls(cf) >= 2


def test_optimizer_lr_changed_between_calls_is_followed():
    w1, w2 = nn.Parameter(t(1.0, -2.0)), nn.Parameter(t(1.0, -2.0))
    o1, o2 = optim.SGD([w1], lr=0.1), optim.SGD([w2], lr=0.1)

    def step_of(w, o):
        def step(x):
            o.zero_grad()
            loss = (w * x).sum()
            loss.backward()
            o.step()
            return loss
        return step
    eager, cf = step_of(w1, o1), compiler.compile(step_of(w2, o2))
    for lr in (0.1, 0.1, 0.5, 1e-3, 2.0):
        o1.param_groups[0]["lr"] = o2.param_groups[0]["lr"] = lr
        assert_same(eager(t(1.0, 3.0)), cf(t(1.0, 3.0)))
        assert_same(w1, w2)
    assert len(cf.variants) <= 2 and compiled_calls(cf) >= 3  # (.grad None at first)


def test_a_number_from_a_plain_object_is_guarded_and_followed():
    """No longer a documented limit (issue 13): a number reached through a plain object is
    guarded by its source, explain() lists the guard, and a change traces again."""
    class Config:
        pass
    cfg = Config()
    cfg.scale = 2.0
    cf = compiler.compile(lambda x: x * cfg.scale)
    cf(X)
    text = str(compiler.explain(cf))
    assert "C['cfg'].scale == 2.0 (float)" in text and "baked in" not in text
    cfg.scale = 3.0
    assert_same(cf(X), X * 3.0)
    cfg.scale = 4.0
    assert_same(cf(X), X * 4.0)
    assert len(cf.variants) <= 2  # (a runtime input after its first change)


# ------------------------------------------------------------------ numbers read from tensors


def test_item_value_used_as_a_constant_in_later_tensor_math_is_not_stale():
    def normalise(x):
        s = x.sum().item()
        return x / s

    cf = compiler.compile(normalise)
    for v in ([1.0, 2.0], [3.0, 4.0], [5.0, -6.5], [1.0, 2.0]):
        x = dg.tensor(v)
        assert_same(cf(x), normalise(x))
    assert compiled_calls(cf) >= 1


def test_float_of_a_tensor_used_as_a_constant_is_not_stale():
    def centre(x):
        return x - float(x.mean())

    cf = compiler.compile(centre)
    for v in ([1.0, 2.0], [3.0, 4.0], [5.0, -6.5], [3.0, 4.0]):
        x = dg.tensor(v)
        assert_same(cf(x), centre(x))


def test_int_of_a_tensor_used_as_a_size_is_not_stale():
    def ones_of_length(x):
        return dg.ones(int(x.sum())) * 2

    cf = compiler.compile(ones_of_length)
    for v in ([1.0, 2.0], [3.0, 4.0], [1.0, 2.0]):
        x = dg.tensor(v)
        assert_same(cf(x), ones_of_length(x))


def test_item_appended_to_a_python_list_inside_is_appended_every_call():
    losses = []

    def f(x):
        loss = (x * 2).sum()
        losses.append(loss.item())
        return loss

    cf = compiler.compile(f)
    for i in range(4):
        cf(t(1.0, float(i)))
    assert losses == [2.0, 4.0, 6.0, 8.0]
    assert all(type(v) is float for v in losses)
    assert compiled_calls(cf) == 3  # the append is replayed with each call's value


# ------------------------------------------------------------------ methods and outputs


def test_one_compiled_method_called_on_two_instances_uses_each_instances_state():
    class Layer:
        def __init__(self, w, scale):
            self.w, self.scale = dg.tensor(w), scale

        @compiler.compile
        def __call__(self, x):
            return x * self.w

    a, b = Layer([1.0, 2.0, 3.0], 1.0), Layer([-1.0, 0.5, 4.0], 2.0)
    for _ in range(3):
        assert_same(a(X), X * a.w)
        assert_same(b(X), X * b.w)
    assert compiled_calls(Layer.__call__.__get__(a)) == 2


def test_a_decorated_method_follows_a_global_number_that_changes():
    global SCALE

    class Layer:
        @compiler.compile
        def f(self, x):
            return x * SCALE
    layer = Layer()
    try:
        for v in (2.0, 2.0, 3.0):
            SCALE = v
            assert_same(layer.f(X), X * v)
    finally:
        SCALE = 2.0


def test_a_returned_tensor_kept_by_the_user_is_not_overwritten_by_the_next_call():
    w = t(1.0, 2.0, 3.0)

    def f(x):
        y = x * w
        y.add_(1.0)  # an in-place op on an intermediate
        return y, y.sum()

    cf = compiler.compile(f)
    kept = [cf(t(float(i), 1.0, 0.0)) for i in range(5)]
    for i, out in enumerate(kept):
        assert_same(out, f(t(float(i), 1.0, 0.0)), f"output of call {i}")


def test_returned_optimizer_updated_parameter_copy_is_not_overwritten():
    w = nn.Parameter(t(1.0, 2.0))
    opt = optim.SGD([w], lr=0.5)

    def step(x):
        opt.zero_grad()
        (w * x).sum().backward()
        opt.step()
        return w.detach().clone()

    cf = compiler.compile(step)
    kept = [cf(t(1.0, 1.0)) for _ in range(4)]
    assert [k.tolist() for k in kept] == [[0.5, 1.5], [0.0, 1.0], [-0.5, 0.5], [-1.0, 0.0]]


def test_returning_an_argument_unchanged_returns_that_very_tensor():
    def f(x, y):
        return x, y * 2

    cf = compiler.compile(f)
    x = t(1.0, 2.0).requires_grad_()
    for _ in range(3):
        a, _ = cf(x, t(1.0, 1.0))
        assert a is x and a.requires_grad


# ------------------------------------------------------------------ in-place writes


def test_in_place_copy_into_a_captured_tensor_happens_on_every_call():
    buf1, buf2 = dg.zeros(3), dg.zeros(3)

    def accumulate_into(buf):
        def f(x):
            buf.copy_(buf + x)
            return buf.sum()
        return f

    eager, cf = accumulate_into(buf1), compiler.compile(accumulate_into(buf2))
    for i in range(5):
        x = t(1.0, float(i), -1.0)
        assert_same(eager(x), cf(x))
        assert_same(buf1, buf2)
    assert compiled_calls(cf) >= 3


def test_in_place_update_of_an_argument_happens_on_every_call():
    def bump(x):
        x.mul_(2.0).add_(1.0)
        return x.sum()

    cf = compiler.compile(bump)
    a1, a2 = t(1.0, 2.0), t(1.0, 2.0)
    for _ in range(4):
        assert_same(bump(a1), cf(a2))
        assert_same(a1, a2)
    assert compiled_calls(cf) >= 2


def test_a_view_of_a_parameter_mutated_inside_under_no_grad():
    l1 = nn.Linear(3, 2)
    l2 = copy.deepcopy(l1)

    def prune_then_run(layer):
        def f(x):
            with dg.no_grad():
                layer.weight[0].zero_()
                layer.weight[1, 1:].add_(1.0)
            return layer(x).sum()
        return f

    eager, cf = prune_then_run(l1), compiler.compile(prune_then_run(l2))
    for i in range(4):
        x = t(1.0, 2.0, float(i)).reshape(1, 3)
        assert_same(eager(x), cf(x))
        assert_same(l1.weight, l2.weight)
    assert compiled_calls(cf) >= 2


def _bump_data(p):
    def f(x):
        p.data[0] += 1
        loss = (p * x).sum()
        loss.backward()
        return loss
    return f


def test_p_data_element_incremented_inside_then_used_with_grad():
    p1, p2 = nn.Parameter(t(1.0, 2.0, 3.0)), nn.Parameter(t(1.0, 2.0, 3.0))
    eager, cf = _bump_data(p1), compiler.compile(_bump_data(p2))
    for i in range(5):
        x = t(1.0, 2.0, float(i))
        assert_same(eager(x), cf(x))
        assert_same(p1, p2)
        assert_same(p1.grad, p2.grad)


def test_p_data_element_incremented_inside_compiles_once():
    p = nn.Parameter(t(1.0, 2.0, 3.0))
    cf = compiler.compile(_bump_data(p))
    for i in range(5):
        cf(t(1.0, 2.0, float(i)))
    assert len(cf.variants) <= 2 and compiled_calls(cf) >= 3


# ------------------------------------------------------------------ rebinding between calls


def test_a_parameter_replaced_by_a_new_object_between_calls_is_used():
    l1 = nn.Linear(3, 2)
    l2 = copy.deepcopy(l1)
    cf = compiler.compile(lambda x: l2(x))
    x = t(1.0, 2.0, 3.0).reshape(1, 3)
    with dg.no_grad():
        for i in range(5):
            if i == 2:
                w = np.full((2, 3), 0.5, np.float32)
                l1.weight = nn.Parameter(dg.tensor(w))
                l2.weight = nn.Parameter(dg.tensor(w))
            assert_same(l1(x), cf(x))
    assert compiled_calls(cf) >= 2


def test_a_replaced_parameter_still_held_by_the_optimizer_is_not_used():
    """The old parameter stays alive (the optimizer holds it): identity of the *path*
    (module attribute) must be checked, not only liveness of the traced object."""
    l1 = nn.Linear(3, 1)
    l2 = copy.deepcopy(l1)
    o1, o2 = optim.SGD(l1.parameters(), lr=0.1), optim.SGD(l2.parameters(), lr=0.1)

    def step_of(layer, opt):
        def step(x):
            opt.zero_grad()
            loss = layer(x).sum()
            loss.backward()
            opt.step()
            return loss
        return step
    eager, cf = step_of(l1, o1), compiler.compile(step_of(l2, o2))
    x = t(1.0, 2.0, 3.0).reshape(1, 3)
    for i in range(5):
        if i == 2:
            l1.bias = nn.Parameter(t(5.0))
            l2.bias = nn.Parameter(t(5.0))
        assert_same(eager(x), cf(x), f"loss {i}")
        assert_same(l1.weight, l2.weight)
        assert_same(l1.bias, l2.bias)


GLOBAL_W = dg.tensor([1.0, 2.0, 3.0])


def _times_global_w(x):
    return x * GLOBAL_W


def test_a_global_tensor_rebound_while_the_old_one_is_alive_is_followed():
    global GLOBAL_W
    cf = compiler.compile(_times_global_w)
    old = GLOBAL_W
    try:
        cf(X)
        cf(X)
        GLOBAL_W = dg.tensor([10.0, 20.0, 30.0])
        assert_same(cf(X), X * GLOBAL_W)
    finally:
        GLOBAL_W = old


def test_a_tensor_in_a_list_replaced_between_calls_is_used():
    ws1, ws2 = [t(1.0, 2.0, 3.0)], [t(1.0, 2.0, 3.0)]
    cf = compiler.compile(lambda x: ws2[0] * x)
    for i in range(4):
        if i == 2:
            ws1[0], ws2[0] = t(5.0, 6.0, 7.0), t(5.0, 6.0, 7.0)  # the old ones die
        assert_same(ws1[0] * X, cf(X))


def test_p_data_rebound_between_calls_is_used():
    w1, w2 = nn.Parameter(t(1.0, 2.0, 3.0)), nn.Parameter(t(1.0, 2.0, 3.0))
    cf = compiler.compile(lambda x: (w2 * x).detach())
    for i in range(5):
        assert_same((w1 * X).detach(), cf(X))
        w1.data = t(7.0, float(i), 1.0)
        w2.data = t(7.0, float(i), 1.0)


# ------------------------------------------------------------------ aliasing


def _add_into_first(a, b):
    a.add_(1.0)
    return a * b


def test_aliasing_arguments_met_by_a_variant_traced_without_aliasing_are_noticed():
    def f(a, b):
        a.add_(1.0)
        c = a * b
        if c.sum() > 0:  # staged write: b must not be read as the old a
            return c * 2
        return c
    cf = compiler.compile(f)
    for i, same in enumerate([False, True, False, True]):
        a1, a2 = t(1.0, 2.0), t(1.0, 2.0)
        b1, b2 = (a1, a2) if same else (t(1.0, 2.0), t(1.0, 2.0))
        assert_same(f(a1, b1), cf(a2, b2), f"call {i}")
        assert_same(a1, a2)
    assert compiled_calls(cf) >= 2


def test_two_arguments_that_alias_and_then_do_not():
    cf = compiler.compile(_add_into_first)
    for i in range(6):
        if i % 2 == 0:
            a1, a2 = t(1.0, 2.0), t(1.0, 2.0)
            r1, r2 = _add_into_first(a1, a1), cf(a2, a2)
        else:
            a1, b1, a2, b2 = t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0), t(1.0, 2.0)
            r1, r2 = _add_into_first(a1, b1), cf(a2, b2)
        assert_same(r1, r2, f"call {i}")
        assert_same(a1, a2)
    assert compiled_calls(cf) >= 3


def _add_into_first_of_six(a, b, c, d, e, f):
    a.add_(b * c)  # the others are read after the writes: aliasing changes what they hold
    d.mul_(3.0)
    r = a + b * 2 + c * 3 + d * e + f * 5
    if r.sum() > 0:  # a value guard after the writes: they are staged, not done in place
        return r * 2
    return r


@pytest.mark.parametrize("pattern", [
    (0, 1, 2, 3, 4, 5),  # six storages: the guard compares a set of ids
    (0, 0, 2, 3, 4, 5), (0, 1, 2, 3, 4, 0), (0, 1, 1, 3, 3, 5),  # five and four
    (0, 1, 0, 1, 0, 1),  # two storages: pairwise
])
def test_six_arguments_whose_aliasing_pattern_changes_between_calls(pattern):
    cf = compiler.compile(_add_into_first_of_six)
    patterns = [(0, 1, 2, 3, 4, 5), pattern, (0, 1, 2, 3, 4, 5), pattern]
    for i, pat in enumerate(patterns):
        sets = []
        for _ in range(2):
            base = [t(1.0 + k, 2.0 - k) for k in range(6)]
            sets.append([base[k] for k in pat])
        r1, r2 = _add_into_first_of_six(*sets[0]), cf(*sets[1])
        assert_same(r1, r2, f"call {i} with pattern {pat}")
        for a, b in zip(sets[0], sets[1], strict=True):
            assert_same(a, b)


def test_weight_tying_train_step_matches_eager_and_untying_is_noticed():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 4, bias=False)
            self.dec = nn.Linear(4, 4, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.dec(self.enc(x).tanh())

    dg.manual_seed(0)
    m1 = Tied()
    m2 = copy.deepcopy(m1)
    assert m2.dec.weight is m2.enc.weight
    o1, o2 = optim.SGD(m1.parameters(), lr=0.1), optim.SGD(m2.parameters(), lr=0.1)

    def step_of(m, o):
        def step(x):
            o.zero_grad()
            loss = m(x).pow(2).mean()
            loss.backward()
            o.step()
            return loss
        return step
    eager, cf = step_of(m1, o1), compiler.compile(step_of(m2, o2))
    x = dg.tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    for i in range(6):
        if i == 3:  # untie: a new decoder weight (the optimizer keeps the tied one)
            for m in (m1, m2):
                m.dec.weight = nn.Parameter(m.enc.weight.detach().clone())
        assert_same(eager(x), cf(x), f"loss {i}")
        for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
            assert_same(p, q, n)
            assert_same(p.grad, q.grad, f"{n}.grad")
    assert compiled_calls(cf) >= 2


def test_two_view_arguments_that_overlap_differently_are_not_confused():
    def f(a, b):
        s = a * 1.0
        b.mul_(10.0)
        return s, a * 1.0

    cf = compiler.compile(f)
    for sl in (slice(0, 2), slice(0, 2), slice(1, 3)):
        base1, base2 = t(1.0, 2.0, 3.0), t(1.0, 2.0, 3.0)
        assert_same(f(base1, base1[sl]), cf(base2, base2[sl]))
        assert_same(base1, base2)


def test_writing_a_captured_view_then_reading_its_base():
    w1, w2 = dg.zeros(3), dg.zeros(3)
    v1, v2 = w1[0:2], w2[0:2]

    def write_view_read_base(w, v):
        def f(x):
            v.add_(x)
            return w.sum()
        return f
    eager, cf = write_view_read_base(w1, v1), compiler.compile(write_view_read_base(w2, v2))
    for _ in range(3):
        assert_same(eager(t(1.0, 2.0)), cf(t(1.0, 2.0)))
        assert_same(w1, w2)


def test_an_argument_that_aliases_a_captured_tensor_on_a_later_call():
    w1, w2 = t(1.0, 2.0, 3.0), t(1.0, 2.0, 3.0)

    def scale_then_read(w):
        def f(x):
            before = w * 1.0
            x.mul_(10.0)
            return before, w * 1.0
        return f
    eager, cf = scale_then_read(w1), compiler.compile(scale_then_read(w2))
    assert_same(eager(t(1.0, 2.0)), cf(t(1.0, 2.0)))
    assert_same(eager(w1[0:2]), cf(w2[0:2]))
    assert_same(w1, w2)


# ------------------------------------------------------------------ memory shared with numpy


def test_captured_from_numpy_tensor_mutated_by_numpy_between_calls():
    a1, a2 = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])
    w1, w2 = dg.from_numpy(a1), dg.from_numpy(a2)
    cf = compiler.compile(lambda x: w2 * x)
    x = X.double()
    for _ in range(4):
        assert_same(w1 * x, cf(x))
        a1[0] += 1
        a2[0] += 1
    assert compiled_calls(cf) >= 2


def test_from_numpy_argument_mutated_by_numpy_between_calls():
    a = np.array([1.0, 2.0, 3.0])
    x = dg.from_numpy(a)
    cf = compiler.compile(lambda x: (x * 2).exp())
    for i in range(4):
        assert_same(cf(x), (x * 2).exp())
        a[1] = 10.0 + i
    assert compiled_calls(cf) >= 2


def test_captured_numpy_array_rebound_by_a_new_from_numpy_tensor():
    holder = {"w": dg.from_numpy(np.array([1.0, 2.0]))}
    cf = compiler.compile(lambda x: holder["w"] * x)
    x = t(1.0, 1.0, dtype=dg.float64)
    cf(x)
    holder["w"] = dg.from_numpy(np.array([3.0, 4.0]))  # the old tensor and array die
    assert_same(cf(x), holder["w"] * x)


# ------------------------------------------------------------------ autograd state


def test_requires_grad_toggled_on_a_parameter_between_calls():
    l1 = nn.Linear(3, 1)
    l2 = copy.deepcopy(l1)

    def grads_of(layer):
        def f(x):
            for p in layer.parameters():
                p.grad = None
            loss = layer(x).sum()
            loss.backward()
            return loss
        return f
    eager, cf = grads_of(l1), compiler.compile(grads_of(l2))
    x = t(1.0, 2.0, 3.0).reshape(1, 3)
    for i in range(6):
        if i == 2:
            l1.bias.requires_grad_(False)
            l2.bias.requires_grad_(False)
        if i == 4:
            l1.bias.requires_grad_(True)
            l2.bias.requires_grad_(True)
        assert_same(eager(x), cf(x))
        assert_same(l1.weight.grad, l2.weight.grad)
        assert_same(l1.bias.grad, l2.bias.grad)
    assert compiled_calls(cf) >= 2


def test_grad_mode_differing_between_calls():
    w1, w2 = nn.Parameter(t(1.0, 2.0, 3.0)), nn.Parameter(t(1.0, 2.0, 3.0))

    def grads_of(w):
        def f(x):
            w.grad = None
            y = (w * x).sum()
            if y.requires_grad:
                y.backward()
            return y.detach()
        return f
    eager, cf = grads_of(w1), compiler.compile(grads_of(w2))
    for i in range(6):
        x = t(1.0, float(i), 2.0)
        if i % 2:
            with dg.no_grad():
                assert_same(eager(x), cf(x))
        else:
            assert_same(eager(x), cf(x))
        assert_same(w1.grad, w2.grad, f"grad after call {i}")
    assert len(cf.variants) == 2 and compiled_calls(cf) == 4


def test_grad_mode_differing_between_calls_for_a_returned_output():
    w = nn.Parameter(t(1.0, 2.0, 3.0))
    cf = compiler.compile(lambda x: (w * x).sum())
    for i in range(4):
        if i % 2:
            with dg.no_grad():
                out = cf(X)
            assert not out.requires_grad
        else:
            out = cf(X)
            assert out.requires_grad


def _square_sum_backward(x):
    loss = (x * x).sum()
    loss.backward()
    return loss


def test_a_fresh_argument_with_a_grad_gets_its_own_grad_accumulated():
    cf = compiler.compile(_square_sum_backward)
    a = t(1.0, 2.0).requires_grad_()
    a.grad = t(10.0, 10.0)
    cf(a)  # traced: a.grad is present, accumulated
    b = t(1.0, 2.0).requires_grad_()
    b.grad = t(100.0, 100.0)
    cf(b)
    assert_same(b.grad, t(102.0, 104.0))
    assert_same(a.grad, t(12.0, 14.0))  # untouched by the second call


def test_a_fresh_argument_with_a_grad_is_not_treated_as_grad_free():
    cf = compiler.compile(_square_sum_backward)
    a = t(1.0, 2.0).requires_grad_()
    cf(a)  # traced with a.grad None
    a.grad = None
    b = t(1.0, 2.0).requires_grad_()
    b.grad = t(10.0, 10.0)
    cf(b)
    assert_same(b.grad, t(12.0, 14.0))


def test_fresh_arguments_each_call_get_correct_grads():
    cf = compiler.compile(_square_sum_backward)
    for i in range(4):
        a1, a2 = t(1.0, float(i)).requires_grad_(), t(1.0, float(i)).requires_grad_()
        assert_same(_square_sum_backward(a1), cf(a2))
        assert_same(a1.grad, a2.grad)


def test_dropout_in_a_compiled_step_does_not_repeat_the_same_mask():
    d = nn.Dropout(0.5)
    cf = compiler.compile(lambda x: d(x))
    x = dg.ones(256)
    masks = [cf(x)._data.copy() for _ in range(4)]
    assert all(not np.array_equal(masks[i], masks[i + 1]) for i in range(3))


def test_cross_entropy_with_class_weights_captured_and_changed_in_place():
    w1, w2 = t(1.0, 2.0, 3.0), t(1.0, 2.0, 3.0)
    logits = dg.tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    y = dg.tensor([0, 1, 2, 1])
    cf = compiler.compile(lambda z, y: F.cross_entropy(z, y, weight=w2))
    for i in range(4):
        assert_same(F.cross_entropy(logits, y, weight=w1), cf(logits, y))
        with dg.no_grad():
            w1[i % 3] = 0.5 * i
            w2[i % 3] = 0.5 * i
    assert compiled_calls(cf) >= 2


# ------------------------------------------------------------------ hooks and nesting


def test_a_tensor_hook_with_a_side_effect_runs_on_every_call_or_falls_back():
    seen = []

    def f(x):
        y = x * 2
        y.register_hook(lambda g: seen.append(g.sum().item()))
        loss = y.sum()
        loss.backward()
        return loss
    cf = compiler.compile(f)
    x = t(1.0, 2.0).requires_grad_()
    for _ in range(4):
        x.grad = None
        cf(x)
    assert len(seen) == 4 or any("hook" in r for r in cf.fallbacks)


def test_a_module_forward_hook_runs_on_every_call_or_falls_back():
    layer = nn.Linear(2, 2)
    calls = []
    layer.register_forward_hook(lambda mod, inp, out: calls.append(1))
    cf = compiler.compile(lambda x: layer(x).sum().detach())
    for _ in range(3):
        cf(dg.ones(1, 2))
    assert len(calls) == 3 or any("hook" in r for r in cf.fallbacks)


def test_a_gradient_hook_that_only_rescales_is_replayed():
    def f(x):
        y = x * 2
        y.register_hook(lambda g: g * 10)
        loss = y.sum()
        loss.backward()
        return loss
    cf = compiler.compile(f)
    x1, x2 = t(1.0, 2.0).requires_grad_(), t(1.0, 2.0).requires_grad_()
    for _ in range(3):
        x1.grad = x2.grad = None
        assert_same(f(x1), cf(x2))
        assert_same(x1.grad, x2.grad)


def test_a_compiled_function_calling_another_compiled_function():
    w = t(1.0, 2.0, 3.0)
    inner = compiler.compile(lambda x: x * w)
    outer = compiler.compile(lambda x: inner(x).exp() + 1)
    for i in range(4):
        x = t(1.0, float(i), 0.5)
        assert_same(outer(x), (x * w).exp() + 1)
        assert_same(inner(x), x * w)
    assert compiled_calls(outer) >= 2


@pytest.mark.parametrize("backend", ["interp", "llvm"])
@pytest.mark.parametrize("case", ["cross_entropy", "take_along_dim", "two_index_tensors",
                                  "one_hot"])
def test_an_out_of_range_index_raises_in_a_compiled_call_as_in_eager(case, backend):
    """Bounds checks of composites that flatten indices are traced (index_check): a compiled
    call never silently reads another row, and leaves the state untouched."""
    w = nn.Parameter(dg.tensor(np.arange(15.0).reshape(5, 3)))

    def f(idx):
        if case == "cross_entropy":
            out = F.cross_entropy(w, idx.reshape(-1))
        elif case == "take_along_dim":
            out = dg.take_along_dim(w, idx, 1).sum()
        elif case == "two_index_tensors":
            out = w[idx.reshape(-1), idx.reshape(-1) % 3].sum()
        else:
            out = (F.one_hot(idx.reshape(-1), 3) * 1.0).sum() * w.sum()
        out.backward()
        return out
    cf = compiler.compile(f, backend=backend)
    good = dg.tensor(np.array([[0], [1], [2], [1], [0]]))
    for _ in range(3):
        cf(good)
    assert compiled_calls(cf) >= 1
    bad = dg.tensor(np.array([[0], [1], [7], [1], [0]]))
    with pytest.raises(Exception) as eager_error:
        f(bad)
    w.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the compiled call's note that it ran eagerly)
        with pytest.raises(type(eager_error.value), match="out of bounds|must be in"):
            cf(bad)
    assert w.grad is None  # nothing of the failed call was written
