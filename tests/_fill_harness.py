"""The harness of the first-call fill tests (tests/test_first_call_fill*.py: Note [a first
call from a filled state] in compiler/firstfill.py): twins built the same way, one run
eagerly and one compiled, compared call by call — the first bit for bit (a traced call runs
the program), later ones within ``close_to_eager``."""

from __future__ import annotations

import numpy as np
from conftest import close_to_eager

import compiler
import dyngrad as dg
from dyngrad import nn, optim

ADAM = lambda ps: optim.Adam(ps, lr=1e-2)  # noqa: E731
SGDM = lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)  # noqa: E731


def descend(model, opt, x, y):
    """The training step's core: the loss, its backward and the optimizer's step."""
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss


def arr(t):
    return np.asarray(t.detach().numpy() if isinstance(t, dg.Tensor) else t)


def make_model():
    dg.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def batch(i: int):
    g = np.random.default_rng(i)
    return (dg.tensor(g.standard_normal((5, 4)).astype(np.float32)),
            dg.tensor(g.standard_normal((5, 2)).astype(np.float32)))


def same(a, b, exact: bool, what: str) -> None:
    a, b = arr(a), arr(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if exact:
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert close_to_eager(a, b), f"{what}: {a} vs {b}"


def state_of(params, opt) -> list:
    """The optimizer's state as (parameter index, [(key, value)]) in the dict's order."""
    index = {id(p): i for i, p in enumerate(params)}
    return [(index.get(id(p), "?"), [(k, arr(v).copy() if isinstance(v, dg.Tensor) else v)
                                     for k, v in st.items()])
            for p, st in opt.state.items()]


def assert_same(a, b, exact: bool) -> None:
    """Twins ``a``, ``b`` = (parameters, [optimizers]): equal parameters, gradients and
    state (keys and order exactly; values bit for bit when ``exact``)."""
    (pa, oa), (pb, ob) = a, b
    for i, (p, q) in enumerate(zip(pa, pb)):
        same(p, q, exact, f"parameter {i}")
        assert (p.grad is None) == (q.grad is None), f".grad of parameter {i}"
        if p.grad is not None:
            same(p.grad, q.grad, exact, f"grad {i}")
    assert len(oa) == len(ob)
    for j, (o1, o2) in enumerate(zip(oa, ob)):
        s1, s2 = state_of(pa, o1), state_of(pb, o2)
        assert [(i, [k for k, _ in e]) for i, e in s1] == \
            [(i, [k for k, _ in e]) for i, e in s2], f"state keys/order of optimizer {j}"
        for (i, e1), (_, e2) in zip(s1, s2):
            for (k, v1), (_, v2) in zip(e1, e2):
                if isinstance(v1, np.ndarray):
                    same(v1, v2, exact, f"state {k!r} of parameter {i} (optimizer {j})")
                else:
                    assert v1 == v2


def outcome(f, *args):
    """What a call gives: ('ok', result) or ('raised', type, message)."""
    try:
        return ("ok", f(*args))
    except Exception as e:  # noqa: BLE001 - the program's
        return ("raised", type(e).__name__, str(e))


def compare(build, steps: int = 4, args=None):
    """Run ``build()`` twice — each (function, parameters, [optimizers], log) — once eager,
    once compiled, and compare every call. Returns the compiled function and both logs."""
    (f1, p1, o1, log1), (f2, p2, o2, log2) = build(), build()
    cf = compiler.compile(f2)
    for i in range(steps):
        a = batch(i) if args is None else args(i)
        r1, r2 = outcome(f1, *a), outcome(cf, *a)
        assert r1[0] == r2[0], (i, r1, r2)
        if r1[0] == "raised":
            assert r1[1:] == r2[1:], (i, r1, r2)
        elif isinstance(r1[1], dg.Tensor):
            same(r1[1], r2[1], i == 0, f"result {i}")
        else:
            assert r1[1] == r2[1], (i, r1, r2)
        assert log1 == log2, (i, log1, log2)
        assert_same((p1, o1), (p2, o2), exact=i == 0)
    return cf, log1, log2


def built(make_step, make_opt=ADAM):
    """A builder of twins whose step ``make_step(model, optimizer, log)`` makes."""
    def build():
        model = make_model()
        opt = make_opt(model.parameters())
        log: list = []
        return make_step(model, opt, log), list(model.parameters()), [opt], log
    return build


def train(make_opt=ADAM, before=None, after=None, setup=None, zero_first=True):
    """A builder of the usual training step, with program code before and after step()."""
    def build():
        model = make_model()
        opt = make_opt(model.parameters())
        log: list = []
        if setup is not None:
            setup(model, opt, log)

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
        return step, list(model.parameters()), [opt], log
    return build


def traced_from_first(cf) -> None:
    assert cf.fallbacks == [] and len(cf.variants) == 1
