"""compiler.profile: kernel-by-kernel timing of a compiled step (compiler/profile.py), with
the clock compiled only into the profiled plan. Timings are never asserted; what is: which
kernels are reported, their work, that the profiled calls compute what eager does, that
normal calls run no timing code, and the trace and plot files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import driver
from dyngrad import nn, optim

pytest.importorskip("llvmlite")


def mlp_step(seed=0):
    dg.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(seed)
    x = dg.tensor(rng.standard_normal((16, 20)).astype(np.float32))
    y = dg.tensor(rng.standard_normal((16, 4)).astype(np.float32))

    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss
    return model, opt, step, (x, y)


def test_profile_reports_every_kernel_of_the_driver_with_its_work(capsys):
    _, _, step, args = mlp_step()
    cf = compiler.compile(step, backend="llvm")
    prof = compiler.profile(cf, *args, steps=4)
    out = capsys.readouterr().out
    assert "one native driver call" in out and "Python side" in out
    plan = cf.variants[0].plan
    assert plan.__class__ is driver.DriverPlan
    assert len(prof.kernels) == len(plan.kernels)
    assert all(k.calls == 4 and all(s >= 0 for s in k.seconds) for k in prof.kernels)
    matmuls = [k for k in prof.kernels if k.kind == "matmul"]
    assert matmuls  # forward, input gradient and weight gradients
    flops = sorted(k.flops for k in matmuls)
    # 16x20 @ 20x32 and its weight gradient (2·16·20·32 each), 16x32 @ 32x4 and friends
    assert flops.count(2 * 16 * 20 * 32) >= 2 and 2 * 16 * 32 * 4 in flops
    assert all(k.bytes > 0 for k in prof.kernels)
    tanh = [k for k in prof.kernels if "tanh" in k.label]
    assert tanh and tanh[0].flops >= 16 * 32 * 10  # the polynomial's instructions, counted
    assert prof.native_seconds > 0 and prof.step_seconds > 0
    assert prof.peak_flops > 1e9 and prof.bandwidth > 1e8
    assert prof.target and prof.threads >= 1
    assert str(prof) == prof.table()


def test_kernels_say_whether_they_run_the_backward(capsys):
    """``KernelStats.late``: the forward's two products are before the step's backward()
    began; the three gradient products (two weight gradients, the second layer's input
    gradient: the first's is not needed) and Adam's updates after it (what
    benchmarks/scaling.py splits a step by)."""
    _, _, step, args = mlp_step()
    cf = compiler.compile(step, backend="llvm")
    prof = compiler.profile(cf, *args, steps=2)
    products = [k for k in prof.kernels if k.kind == "matmul"]
    assert sum(not k.late for k in products) == 2 and sum(k.late for k in products) == 3
    first = min(k.index for k in prof.kernels if k.late)
    assert all(k.late for k in prof.kernels if k.index > first and k.kind == "matmul")


def test_profiled_calls_train_exactly_as_compiled_calls_do():
    """The profiled plan is the same kernels: after profiling, parameters, Adam's state and
    the loss equal those of a twin trained the same number of steps with the normal plan."""
    m1, o1, s1, args = mlp_step()
    m2, o2, s2, _ = mlp_step()
    cf1, cf2 = compiler.compile(s1, backend="llvm"), compiler.compile(s2, backend="llvm")
    warmup, steps = 3, 5
    compiler.profile(cf1, *args, steps=steps, warmup=warmup)
    for _ in range(warmup + 1 + 2 * steps):  # warm-up, the call finding the variant, the
        cf2(*args)  #                              normal calls and the profiled ones
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        np.testing.assert_array_equal(p1.detach().numpy(), p2.detach().numpy())
        np.testing.assert_array_equal(p1.grad.numpy(), p2.grad.numpy())
    for st1, st2 in zip(o1.state.values(), o2.state.values(), strict=True):
        for key in st1:
            np.testing.assert_array_equal(np.asarray(st1[key].numpy()),
                                          np.asarray(st2[key].numpy()))
    np.testing.assert_array_equal(cf1(*args).detach().numpy(), cf2(*args).detach().numpy())


def test_normal_calls_run_no_timing_code():
    _, _, step, args = mlp_step()
    cf = compiler.compile(step, backend="llvm")
    compiler.profile(cf, *args, steps=2)
    plan = cf.variants[0].plan
    assert plan.ticks is None  # the variant's own plan again: built without the clock
    n = cf.variants[0].calls
    cf(*args)
    assert cf.variants[0].calls == n + 1


def test_a_hybrid_plan_is_profiled_group_by_group():
    """An integer convolution runs in numpy (a hybrid plan): its groups are timed from
    Python, the numpy ones marked as such."""
    w = dg.ones(1, 1, 3, dtype=dg.int64)

    def f(x):
        c = nn.functional.conv1d((x * 4).to(dg.int64)[None, None], w)
        return (x[2:] * c.to(dg.float32)[0, 0]).tanh().sum()

    cf = compiler.compile(f, backend="llvm")
    prof = compiler.profile(cf, dg.ones(64), steps=3)
    assert "hybrid plan" in prof.plan
    assert any(not k.native for k in prof.kernels) and any(k.native for k in prof.kernels)
    assert all(k.calls == 3 for k in prof.kernels)
    assert "numpy: " in prof.table()


def test_a_symbolic_variant_profiles_the_size_it_serves():
    w = dg.tensor(np.ones((8, 3), np.float32))

    def f(x):
        return (x @ w).relu().sum()

    cf = compiler.compile(f, backend="llvm")
    for b in (4, 5, 6, 7):  # sizes that make one variant symbolic in the batch
        cf(dg.ones(b, 8))
    prof = compiler.profile(cf, dg.ones(9, 8), steps=2)
    mm = [k for k in prof.kernels if k.kind == "matmul"]
    assert mm and mm[0].flops == 2 * 9 * 8 * 3
    cf(dg.ones(11, 8))  # a size planned after 9's: profiling 9 again still finds 9's plan
    prof = compiler.profile(cf, dg.ones(9, 8), steps=2)
    assert [k.flops for k in prof.kernels if k.kind == "matmul"][0] == 2 * 9 * 8 * 3


def test_chrome_trace_has_a_slice_per_call_and_kernel(tmp_path):
    _, _, step, args = mlp_step()
    prof = compiler.profile(step, *args, steps=3)
    path = prof.chrome_trace(tmp_path / "trace.json")
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
    calls = [e for e in events if e["cat"] == "call"]
    kernels = [e for e in events if e["cat"] not in ("call", "plan")]
    assert len(calls) == 3 and len(kernels) == 3 * len(prof.kernels)
    for c in calls:  # every kernel slice lies inside its call's slice
        inside = [e for e in kernels if c["ts"] <= e["ts"] <= c["ts"] + c["dur"]]
        assert len(inside) == len(prof.kernels)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _, _, step, args = mlp_step()
    prof = compiler.profile(step, *args, steps=2)
    path = prof.plot(tmp_path / "kernels.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_refuses_what_it_cannot_time():
    with pytest.raises(ValueError, match="backend='llvm'"):
        compiler.profile(compiler.compile(lambda x: x * 2, backend="interp"), dg.ones(3))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        compiler.profile(lambda x: x * 2, dg.ones(3), steps=0)

    def reads_data(x):
        return x * 2 if float(x.numpy().sum()) > 0 else x  # data escapes: eager

    with pytest.raises(RuntimeError, match="ran eagerly"), pytest.warns(UserWarning):
        compiler.profile(reads_data, dg.ones(3), steps=1)
