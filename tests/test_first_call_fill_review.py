"""Adversarial review of the first call traced from a filled optimizer state (Note [a first
call from a filled state] in compiler/firstfill.py): programs that look at, reorder or
reconfigure the optimizer state before its step() has made it. Each test runs an eager twin
and a compiled twin (same seed) and asserts the first call equal bit for bit — its result or
the exception it raised, the program's log, parameters, gradients and the optimizer state
entry by entry in the dict's order — and later calls within ``close_to_eager``."""

from __future__ import annotations

import copy
import gc
import pickle
import re
import warnings

import numpy as np
import pytest
from _fill_harness import (
    ADAM,
    SGDM,
    built,
    compare,
    descend,
    make_model,
    same,
    traced_from_first,
    train,
)

import compiler
import dyngrad as dg
from dyngrad import nn, optim

pytestmark = pytest.mark.filterwarnings("ignore:dyngrad.compile")


OPTIMIZERS = {
    "adam": ADAM,
    "adam_amsgrad_wd_max": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=0.1,
                                                 amsgrad=True, maximize=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": SGDM,
    "sgd_nesterov_wd_max": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                                weight_decay=0.01, maximize=True),
    "adadelta": lambda ps: optim.Adadelta(ps),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-3, momentum=0.5, centered=True),
}


# ----------------------------------------------------------------- baseline


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_baseline_every_optimizer_and_option(name):
    cf, _, _ = compare(train(OPTIMIZERS[name]))
    traced_from_first(cf)
    assert cf.variants[0].calls == 3  # (calls 2 to 4)


def test_zero_grad_to_zeros_at_the_end():
    compare(train(zero_first=False, after=lambda m, o, log: o.zero_grad(set_to_none=False)),
            steps=5)


def test_no_grad_region_and_detached_reads_before_the_step():
    def before(model, opt, log):
        with dg.no_grad():
            log.append(float(model[0].weight.sum()) == float(model[0].weight.sum()))
    compare(train(before=before))


# ----------------------------------------------------------------- reads of the state


def _reader(expr):
    def before(model, opt, log):
        log.append(expr(model, opt))
    return before


READS = {
    "len": lambda m, o: len(o.state),
    "bool": lambda m, o: bool(o.state),
    "in": lambda m, o: m[0].weight in o.state,
    "get": lambda m, o: o.state.get(m[0].weight) is None,
    "eq_dict": lambda m, o: o.state == {},
    "keys": lambda m, o: len(list(o.state.keys())),
    "dunder_dict": lambda m, o: len(o.__dict__["state"]),
    "vars": lambda m, o: len(vars(o)["state"]),
    "getattr_computed": lambda m, o: len(getattr(o, "sta" + "te")),
    "state_dict": lambda m, o: len(o.state_dict()["state"]),
    "deepcopy": lambda m, o: len(copy.deepcopy(o).state),
    "pickle": lambda m, o: len(pickle.loads(pickle.dumps(o.state_dict()))["state"]),
    "str_state": lambda m, o: str(o.state) == "{}",
    "first_step_creates_state": lambda m, o: o.first_step_creates_state(),
    "any_values": lambda m, o: any(True for _ in o.state.values()),
    "sorted_keys": lambda m, o: len(sorted(o.state, key=id)),
}


@pytest.mark.parametrize("what", list(READS))
def test_a_read_before_the_step_sees_no_state(what):
    compare(train(before=_reader(READS[what])))


def test_a_read_through_a_default_argument():
    def make_step(model, opt, log):
        def peek(state=opt.state):
            return len(state)

        def step(x, y):
            opt.zero_grad()
            log.append(peek())
            return descend(model, opt, x, y)
        return step
    compare(built(make_step))


def test_a_read_through_a_closure_cell_and_a_class_attribute_and_a_property():
    def make_step(model, opt, log):
        st = opt.state

        class Holder:
            state = opt.state

            @property
            def size(self):
                return len(self.state)
        h = Holder()

        def step(x, y):
            opt.zero_grad()
            log.append((len(st), len(Holder.state), h.size))
            return descend(model, opt, x, y)
        return step
    compare(built(make_step))


def test_a_read_through_a_weakref_to_the_optimizer():
    import weakref

    def make_step(model, opt, log):
        r = weakref.ref(opt)

        def step(x, y):
            opt.zero_grad()
            log.append(len(r().state))
            return descend(model, opt, x, y)
        return step
    compare(built(make_step))


def test_an_lr_scheduler_stepped_before_and_after():
    def build():
        model = make_model()
        opt = ADAM(model.parameters())
        sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        log: list = []

        def step(x, y):
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            sched.step()
            log.append(sched.get_last_lr())
            return loss
        return step, list(model.parameters()), [opt], log
    compare(build)


def test_a_manual_lr_warmup_before_the_step():
    def before(model, opt, log):
        for g in opt.param_groups:
            g["lr"] = 1e-2 * min(1.0, (len(log) + 1) / 3)
        log.append(None)
    compare(train(before=before))


def test_a_forward_hook_reading_the_state():
    def setup(model, opt, log):
        model[0].register_forward_hook(lambda mod, inp, out: log.append(len(opt.state)))
    compare(train(setup=setup))


def test_a_tensor_hook_reading_a_state_entry_during_backward():
    def setup(model, opt, log):
        w = model[2].weight
        w.register_hook(lambda g: log.append(w in opt.state))
    compare(train(setup=setup))


def test_a_post_accumulate_hook_stepping_per_parameter_optimizers():
    """The optimizer-in-backward pattern: each parameter's own optimizer stepped from a hook
    as its gradient lands (native code running the user's hook)."""
    def build():
        model = make_model()
        params = list(model.parameters())
        opts = [optim.Adam([p], lr=1e-2) for p in params]
        log: list = []
        for p, o in zip(params, opts):
            def hook(t, o=o):
                o.step()
                o.zero_grad()
            p.register_post_accumulate_grad_hook(hook)

        def step(x, y):
            log.append(sum(len(o.state) for o in opts))
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss
        return step, params, opts, log
    compare(build)


@pytest.mark.parametrize("reads", [False, True])
def test_step_with_a_closure(reads):
    """(the closure, user code, makes the capture interpret step(): the tripwire springs
    first — it would otherwise remove an entry step() holds)"""
    def make_step(model, opt, log):
        def step(x, y):
            def closure():
                opt.zero_grad()
                if reads:
                    log.append(len(opt.state))
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                return loss
            return opt.step(closure)
        return step
    compare(built(make_step))


# ----------------------------------------------------------------- holes in the tripwire


def test_a_state_entry_looked_up_through_a_tensor_attribute():
    """A tensor's attributes are not read through Capture.read: the state dict found there,
    and the entry looked up in it, must still spring the tripwire (eager: KeyError)."""
    def setup(model, opt, log):
        model[0].weight.opt_state = opt.state

    def before(model, opt, log):
        w = model[0].weight
        try:
            log.append(sorted(w.opt_state[w]))
        except KeyError:
            log.append("no entry")
    compare(train(setup=setup, before=before))


def test_a_state_entry_looked_up_in_a_container_the_call_changed():
    """A container the call appended to is read without a source (changed_read)."""
    def make_step(model, opt, log):
        held = [opt.state]

        def step(x, y):
            opt.zero_grad()
            held.append(0)
            w = model[0].weight
            try:
                log.append(sorted(held[0][w]))
            except KeyError:
                log.append("no entry")
            del held[1:]
            return descend(model, opt, x, y)
        return step
    compare(built(make_step))


def test_the_state_unpacked_into_a_dict_display_through_a_tensor_attribute():
    def setup(model, opt, log):
        model[0].weight.opt_state = opt.state

    def before(model, opt, log):
        log.append(len({**model[0].weight.opt_state}))
    compare(train(setup=setup, before=before))


def test_keywords_that_are_not_strings_raise_inside_the_program():
    """(Not about the fill: ``f(**d)`` with a key that is not a string raises a TypeError
    the program catches.)"""
    log1, log2 = [], []
    d = {1: 2}

    def make(log):
        def f(x):
            try:
                dict(**d)
                log.append("no error")
            except TypeError as e:
                log.append(str(e))
            return x * 2
        return f
    f1, cf = make(log1), compiler.compile(make(log2))
    for _ in range(2):
        x = dg.tensor(np.ones(3, np.float32))
        same(f1(x), cf(x), True, "result")
    assert log1 == log2


def _no_addresses(s: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "", s)


def test_an_fstring_of_the_optimizers_dict():
    """f-strings format natively (format_value): what they format must spring the tripwire."""
    def before(model, opt, log):
        log.append(_no_addresses(f"{opt.__dict__}").count("exp_avg"))
    compare(train(before=before))


def test_an_fstring_of_a_list_holding_the_state():
    def make_step(model, opt, log):
        held = [opt.state]

        def step(x, y):
            opt.zero_grad()
            log.append(f"{held!r}".count("exp_avg"))
            return descend(model, opt, x, y)
        return step
    compare(built(make_step))


def test_print_of_the_optimizers_dict(capsys):
    def before(model, opt, log):
        print(_no_addresses(str(len(opt.param_groups))), opt.__dict__)
        log.append(capsys.readouterr().out.count("exp_avg"))
    compare(train(before=before))


def test_a_generator_started_before_the_call_and_resumed_in_it():
    """A suspended generator of the user's, resumed by next(): its code runs natively."""
    def setup(model, opt, log):
        def sizes():
            while True:
                yield len(opt.state)
        g = sizes()
        next(g)
        model.sizes = [g]

    def before(model, opt, log):
        log.append(next(model.sizes[0]))
    cf, log1, _ = compare(train(setup=setup, before=before))
    assert log1 == [0, 4, 4, 4]


def test_a_generator_started_before_the_call_counts_each_call():
    """(Not about the fill: a suspended generator resumed in a compiled call yields what
    it yields at each call, not the first call's value.)"""
    def counter():
        i = 0
        while True:
            i += 1
            yield i
    g1, g2 = counter(), counter()
    log1, log2 = [], []

    def make(g, log):
        def f(x):
            log.append(next(g))
            return x * 2
        return f
    f1, cf = make(g1, log1), compiler.compile(make(g2, log2))
    for _ in range(4):
        x = dg.tensor(np.ones(3, np.float32))
        same(f1(x), cf(x), True, "result")
    assert log1 == log2 == [1, 2, 3, 4]


# ----------------------------------------------------------------- the fill vs settings


def test_amsgrad_switched_on_before_the_first_step():
    def before(model, opt, log):
        opt.param_groups[0]["amsgrad"] = True
    compare(train(before=before))


def test_amsgrad_switched_off_before_the_first_step():
    def before(model, opt, log):
        opt.param_groups[0]["amsgrad"] = False
    compare(train(lambda ps: optim.Adam(ps, lr=1e-2, amsgrad=True), before=before))


def test_sgd_dampening_set_before_the_first_step():
    def before(model, opt, log):
        opt.param_groups[0]["dampening"] = 0.5
    compare(train(SGDM, before=before))


def test_rmsprop_centered_switched_on_before_the_first_step():
    def before(model, opt, log):
        opt.param_groups[0]["centered"] = True
    compare(train(lambda ps: optim.RMSprop(ps, lr=1e-3), before=before))


def test_sgd_momentum_changed_before_the_first_step():
    def before(model, opt, log):
        opt.param_groups[0]["momentum"] = 0.5
    compare(train(SGDM, before=before))


# ----------------------------------------------------------------- the state's order


def _order(params, opt):
    index = {id(p): i for i, p in enumerate(params)}
    return [index[id(p)] for p in opt.state]


def test_two_steps_in_one_call_the_first_without_some_gradients():
    """Eager makes the state of a parameter at the first step that has its gradient: the
    dict's order is the order of those steps, not of the groups."""
    def build():
        model = make_model()
        opt = ADAM(model.parameters())
        log: list = []

        def step(x, y):
            opt.zero_grad()
            h = model[0](x).detach()  # (the first layer gets no gradient)
            ((model[2](model[1](h)) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            log.append(_order(list(model.parameters()), opt))
            return loss
        return step, list(model.parameters()), [opt], log
    _, log1, _ = compare(build)
    assert log1[0] == [2, 3, 0, 1]


def test_steps_in_a_loop_and_conditionally():
    def make_step(model, opt, log):
        def step(x, y):
            for k in range(3):
                opt.zero_grad()
                layer = model[2] if k == 0 else model
                inp = model[1](model[0](x)).detach() if k == 0 else x
                loss = ((layer(inp) - y) ** 2).mean()
                loss.backward()
                if k != 1:
                    opt.step()
            return loss
        return step
    compare(built(make_step, SGDM))


def test_a_parameter_made_trainable_inside_the_first_call():
    def setup(model, opt, log):
        model[0].weight.requires_grad_(False)

    def before(model, opt, log):
        model[0].weight.requires_grad_(True)
    compare(train(setup=setup, before=before))


def test_a_frozen_parameter_stays_without_state():
    def setup(model, opt, log):
        model[0].weight.requires_grad_(False)
    cf, _, _ = compare(train(setup=setup))
    traced_from_first(cf)


def test_a_groups_parameters_reordered_inside_the_first_call():
    def before(model, opt, log):
        if not log:
            opt.param_groups[0]["params"] = list(reversed(list(model.parameters())))
            log.append("reordered")
    compare(train(before=before))


def test_a_param_group_added_inside_the_first_call():
    def before(model, opt, log):
        if not log:
            extra = [p for p in model.parameters()][2:]
            opt.param_groups[0]["params"] = [p for p in model.parameters()][:2]
            opt.add_param_group({"params": extra, "lr": 1e-3})
            log.append("added")
    compare(train(before=before))


def test_parameter_groups_with_their_own_settings_and_an_unused_module():
    def build():
        model = make_model()
        model.spare = nn.Linear(2, 2)
        opt = optim.Adam([{"params": model[2].parameters(), "lr": 1e-3},
                          {"params": model.spare.parameters()},
                          {"params": model[0].parameters(), "amsgrad": True}], lr=1e-2)

        def step(x, y):
            opt.zero_grad()
            return descend(model, opt, x, y)
        return step, list(model.parameters()), [opt], []
    cf, _, _ = compare(build)
    traced_from_first(cf)


def test_a_parameter_listed_twice_in_a_group():
    def build():
        model = make_model()
        ps = list(model.parameters())
        opt = optim.SGD([ps[0], *ps], lr=0.05, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            return descend(model, opt, x, y)
        return step, ps, [opt], []
    compare(build)


def test_two_optimizers_sharing_parameters():
    def build():
        model = make_model()
        ps = list(model.parameters())
        o1, o2 = ADAM(ps), SGDM(ps[2:])

        def step(x, y):
            o1.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            o2.step()
            o1.step()
            return loss
        return step, ps, [o1, o2], []
    cf, _, _ = compare(build)
    traced_from_first(cf)


def test_gradients_that_appear_only_from_the_second_call():
    def make_step(model, opt, log):
        def step(x, y):
            opt.zero_grad()
            inp = x if log else x * 0
            h = model[0](inp)
            if not log:
                h = h.detach()
            loss = ((model[2](model[1](h)) - y) ** 2).mean()
            loss.backward()
            opt.step()
            log.append(len(opt.state))
            return loss
        return step
    compare(built(make_step))


def test_a_user_subclass_is_not_filled():
    class MyAdam(optim.Adam):
        def step(self, closure=None):
            self.seen = len(self.state)
            return super().step(closure)

    def after(model, opt, log):
        log.append(opt.seen)
    cf, log1, _ = compare(train(MyAdam, after=after))
    assert log1[0] == 0


def test_an_optimizer_made_inside_the_compiled_function():
    def build():
        model = make_model()
        log: list = []
        made: list = []

        def step(x, y):
            opt = SGDM(model.parameters())
            made[:] = [opt]
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            log.append(len(opt.state))
            return loss
        return step, list(model.parameters()), [], log
    compare(build)


def test_an_error_after_the_step():
    def after(model, opt, log):
        if len(log) == 0:
            log.append("raised")
            raise RuntimeError("after the step")
    compare(train(after=after))


def test_an_error_in_a_module_hook_before_the_step_then_a_retry():
    def setup(model, opt, log):
        def hook(mod, inp, out):
            if not log:
                log.append("raised")
                raise ValueError("hook")
        model[2].register_forward_hook(hook)
    compare(train(setup=setup))


def test_the_state_order_equals_eager_with_an_unused_middle_layer():
    def build():
        dg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        opt = ADAM(model.parameters())
        log: list = []

        def step(x, y):
            opt.zero_grad()
            skip = len(log) == 0
            h = model[0](x)
            if not skip:
                h = model[1](h)
            loss = ((model[2](h) - y) ** 2).mean()
            loss.backward()
            opt.step()
            log.append(_order(list(model.parameters()), opt))
            return loss
        return step, list(model.parameters()), [opt], log
    compare(build)


def test_gc_referrers_of_a_parameter_finds_no_state():
    def before(model, opt, log):
        w = model[0].weight
        n = 0
        for r in gc.get_referrers(w):
            if r is opt.state:
                n += 1
        log.append(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(train(before=before))


def test_a_frozen_parameter_with_a_stale_gradient_is_stepped_in_order():
    """step() steps every parameter with a gradient, trainable or not: a frozen one whose
    gradient was left at zeros gets its state first, as in eager."""
    def setup(model, opt, log):
        w = model[0].weight
        w.requires_grad_(False)
        w.grad = dg.zeros(tuple(w.shape))
    compare(train(setup=setup, zero_first=False,
                  after=lambda m, o, log: o.zero_grad(set_to_none=False)))
