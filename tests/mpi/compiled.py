"""Compiled steps with collectives inside, on 2 ranks (run by tests/test_distributed_mpi.py):
collectives and DDP steps compiled by the LLVM backend must equal eager on every rank, run as
one native call, agree across ranks before each call, and fall back together when one
rank's guards miss. ``python compiled.py``.

Tolerances: a compiled float32 step's reductions add in the kernels' lane order, not
numpy's pairwise order, so compiled and eager agree to float32 rounding (relative 2e-5 on
parameters after 20 steps), not bit for bit; collectives alone (no arithmetic around them)
equal eager exactly, and a rank's compiled parameters equal the other rank's exactly.
"""

from __future__ import annotations

import datetime
import warnings

import numpy as np
from checks import check, report, run_checks

import compiler
import dyngrad as dg
import dyngrad.distributed as dist
import dyngrad.nn.functional as F
from dyngrad import nn, optim
from dyngrad.distributed.process_group import default_group
from dyngrad.nn.parallel import DistributedDataParallel as DDP
from dyngrad.optim.lr_scheduler import StepLR

dist.init_process_group("mpi", timeout=datetime.timedelta(seconds=60))
R, W = dist.get_rank(), dist.get_world_size()
assert W == 2, "run on 2 ranks"
STEPS, BATCH = 20, 8
REL = 2e-5  # compiled against eager, float32 (see the module docstring)

rng = np.random.default_rng(0)
X = rng.standard_normal((STEPS, BATCH, 6)).astype(np.float32)
Y = rng.standard_normal((STEPS, BATCH, 3)).astype(np.float32)


def batch(s: int, part=None):
    x, y = X[s], Y[s]
    if part is not None:
        x, y = x[part::W], y[part::W]
    return dg.tensor(x), dg.tensor(y)


def mlp(seed: int) -> nn.Module:
    dg.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def relative_difference(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        p, q = p.detach().numpy().astype(np.float64), q.detach().numpy().astype(np.float64)
        worst = max(worst, float((np.abs(p - q) / np.maximum(np.abs(q), 1e-3)).max()))
    return worst


def same_on_every_rank(model: nn.Module) -> bool:
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    other = dg.tensor(flat)
    dist.broadcast(other, src=0)
    return bool(np.array_equal(other.numpy(), flat))


def sgd(params):
    return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


def step(model, opt, x, y):
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def refused(cf) -> list:
    """Fallbacks other than the first call's (optimizer state made eagerly: expected)."""
    return [r for r in cf.fallbacks if not r.startswith("untraced: ")]


def train(model, opt, fn, part=None, sched=None, steps=STEPS):
    losses = []
    for s in range(steps):
        x, y = batch(s, part)
        losses.append(fn(model, opt, x, y).item())
        if sched is not None:
            sched.step()
    return losses


@check
def compiled_all_reduce_of_each_op_and_dtype_equals_eager():
    ops = {dist.ReduceOp.SUM: ("float32", "float64", "int64", "int32", "uint8", "bool"),
           dist.ReduceOp.AVG: ("float32", "float64"),
           dist.ReduceOp.MAX: ("float32", "int64", "int8"),
           dist.ReduceOp.MIN: ("float64", "int16"),
           dist.ReduceOp.PRODUCT: ("float32", "int32"),
           dist.ReduceOp.BAND: ("int64", "bool"), dist.ReduceOp.BOR: ("uint8",),
           dist.ReduceOp.BXOR: ("int32",)}
    for op, dtypes in ops.items():
        for name in dtypes:
            def f(t, op=op):
                u = t.clone()
                dist.all_reduce(u, op=op)
                return u

            cf = compiler.compile(f, backend="llvm")
            for k in range(3):
                base = np.arange(6).reshape(2, 3) + 3 * k + 5 * R
                x = dg.tensor(base % 2 if name == "bool" else base).to(getattr(dg, name))
                got, want = cf(x), f(x)
                assert got.dtype is want.dtype and np.array_equal(got.numpy(), want.numpy()), \
                    (op, name, got, want)
            assert len(cf.variants) == 1 and not cf.fallbacks, (op, name, cf.fallbacks)
            assert "collective(s) inside" in cf.variants[0].plan.describe()


@check
def compiled_broadcast_all_gather_and_reduce_scatter_equal_eager():
    def f(t):
        a, b = t * 2.0, t + 1.0
        dist.broadcast(a, src=1)
        gathered = dg.zeros(2 * t.shape[0], t.shape[1])
        dist.all_gather_into_tensor(gathered, b)
        scattered = dg.zeros(t.shape[0] // 2, t.shape[1])
        dist.reduce_scatter_tensor(scattered, t * 3.0, op=dist.ReduceOp.AVG)
        return a, gathered, scattered

    cf = compiler.compile(f, backend="llvm")
    for k in range(3):
        x = dg.tensor(np.arange(8, dtype=np.float32).reshape(4, 2) + 10 * R + k)
        for got, want in zip(cf(x), f(x)):
            assert np.array_equal(got.numpy(), want.numpy()), (got, want)
    assert len(cf.variants) == 1 and not cf.fallbacks, cf.fallbacks
    assert "kernels native, run by one driver call" in cf.variants[0].plan.describe(), \
        cf.variants[0].plan.describe()


@check
def compiled_ddp_equals_eager_ddp_and_one_process_and_is_one_native_call():
    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())
    cstep = compiler.compile(step, backend="llvm")
    l1 = train(eager, o1, step, part=R)
    l2 = train(compiled, o2, cstep, part=R)
    ref = mlp(seed=0)
    train(ref, sgd(ref.parameters()), step)
    report("compiled_vs_eager_ddp", relative_difference(compiled.module, eager.module))
    report("compiled_vs_one_process", relative_difference(compiled.module, ref))
    assert relative_difference(compiled.module, eager.module) <= REL
    assert relative_difference(compiled.module, ref) <= REL
    assert np.allclose(l1, l2, rtol=REL), (l1, l2)
    assert same_on_every_rank(compiled.module)
    assert len(cstep.variants) == 1 and not refused(cstep), cstep.fallbacks
    text = compiler.explain(cstep)
    assert "run by one driver call" in str(text) and "collective(s) inside" in str(text), text


@check
def compiled_ddp_waits_after_the_backward_and_starts_each_bucket_when_it_is_full():
    compiled = DDP(mlp(seed=R), bucket_cap_mb=0.0005)  # (a bucket per ~2 layers' weights)
    o = sgd(compiled.parameters())
    cstep = compiler.compile(step, backend="llvm")
    train(compiled, o, cstep, part=R, steps=3)
    v = cstep.variants[0]
    kinds = [(grp.kind, v.trace.graph.nodes[grp.nodes[0]].prim.name) for grp in v.groups]
    starts = [k for k, (kind, name) in enumerate(kinds) if name.endswith("_start")]
    waits = [k for k, (kind, name) in enumerate(kinds) if name == "collective_wait"]
    matmuls = [k for k, (kind, _) in enumerate(kinds) if kind == "matmul"]
    assert len(starts) == len(compiled.reducer.buckets) >= 2, kinds
    assert starts[0] < matmuls[-1], kinds  # (the first bucket's transfer overlaps backward)
    assert min(waits) > max(starts) and min(waits) > matmuls[-1], kinds


@check
def compiled_no_sync_accumulation_equals_eager_and_one_process():
    def accumulate(model, opt, x, y):
        opt.zero_grad()
        with model.no_sync():
            (F.mse_loss(model(x[:2]), y[:2]) / 2).backward()
        (F.mse_loss(model(x[2:]), y[2:]) / 2).backward()
        opt.step()
        return x.sum()

    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())
    cacc = compiler.compile(accumulate, backend="llvm")
    train(eager, o1, accumulate, part=R)
    train(compiled, o2, cacc, part=R)
    ref = mlp(seed=0)
    train(ref, sgd(ref.parameters()), step)
    assert relative_difference(compiled.module, eager.module) <= REL
    assert relative_difference(compiled.module, ref) <= REL
    assert same_on_every_rank(compiled.module)
    assert len(cacc.variants) == 1 and not refused(cacc), (cacc.fallbacks, cacc.recompiles)


@check
def no_sync_outside_the_compiled_step_is_guarded_a_variant_each():
    """Toggling no_sync() changes what the step runs (no communication): a guard on DDP's
    flag picks the variant, and no call traces again once each has been seen. (Gradients
    zeroed in place: a .grad made again by zero_grad(set_to_none=True) is a new tensor,
    which the compiler's gradient bindings guard by identity.)"""
    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())

    def half(model, x, y):
        (F.mse_loss(model(x), y) / 2).backward()
        return x.sum()

    chalf = compiler.compile(half, backend="llvm")
    seen = []
    for s in range(STEPS):
        x, y = batch(s, part=R)
        for model, opt, fn in ((eager, o1, half), (compiled, o2, chalf)):
            opt.zero_grad(set_to_none=False)
            with model.no_sync():
                fn(model, x[:2], y[:2])
            fn(model, x[2:], y[2:])
            opt.step()
        seen.append(len(chalf.variants))
    assert relative_difference(compiled.module, eager.module) <= REL
    assert same_on_every_rank(compiled.module)
    assert seen[-1] == seen[1] <= 3, (seen, chalf.recompiles)
    assert {v.collectives is None for v in chalf.variants} == {False, True}
    assert any("require_backward_grad_sync" in d for v in chalf.variants
               for d in v.guards.describe)


@check
def compiled_ddp_with_adam_and_an_lr_schedule_never_recompiles():
    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = optim.Adam(eager.parameters(), lr=0.01), optim.Adam(compiled.parameters(), lr=0.01)
    s1, s2 = StepLR(o1, step_size=5, gamma=0.5), StepLR(o2, step_size=5, gamma=0.5)
    cstep = compiler.compile(step, backend="llvm")
    train(eager, o1, step, part=R, sched=s1)
    train(compiled, o2, cstep, part=R, sched=s2)
    ref = mlp(seed=0)
    ro = optim.Adam(ref.parameters(), lr=0.01)
    train(ref, ro, step, sched=StepLR(ro, step_size=5, gamma=0.5))
    assert relative_difference(compiled.module, eager.module) <= REL
    assert relative_difference(compiled.module, ref) <= REL
    assert len(cstep.variants) == 1 and not cstep.recompiles, cstep.recompiles


SCALE = 1.0  # a Python float the step reads (guarded by value)


@check
def a_guard_miss_on_one_rank_makes_every_rank_run_eagerly_together():
    global SCALE

    def scaled(model, opt, x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x) * SCALE, y)
        loss.backward()
        opt.step()
        return loss

    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())
    cscaled = compiler.compile(scaled, backend="llvm")
    for s in range(8):
        if s == 4 and R == 1:
            SCALE = 0.5  # (rank 1 only: its guard on SCALE misses, rank 0's holds)
        x, y = batch(s, part=R)
        scaled(eager, o1, x, y)
        cscaled(compiled, o2, x, y)
    SCALE = 1.0
    assert relative_difference(compiled.module, eager.module) <= REL
    assert same_on_every_rank(compiled.module)
    fell_back = [r for r in cscaled.fallbacks if "another rank" in r]
    report(f"rank{R}_fallbacks", len(cscaled.fallbacks))
    if R == 0:  # (it held its variant; rank 1 missed and traced a new one)
        assert fell_back, cscaled.fallbacks
    else:
        assert len(cscaled.variants) == 2, cscaled.variants


@check
def compiled_ddp_keeps_dot_grad_and_optimizer_state_as_eager():
    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1 = optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    o2 = optim.SGD(compiled.parameters(), lr=0.05, momentum=0.9)
    cstep = compiler.compile(step, backend="llvm")
    train(eager, o1, step, part=R, steps=5)
    train(compiled, o2, cstep, part=R, steps=5)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        assert np.allclose(p.grad.numpy(), q.grad.numpy(), rtol=REL, atol=1e-7)
        a, b = o2.state[p]["momentum_buffer"], o1.state[q]["momentum_buffer"]
        assert np.allclose(a.numpy(), b.numpy(), rtol=REL, atol=1e-7)
    # a .grad kept by the program across calls is left as eager leaves it (zero_grad sets
    # it to None: the next backward makes a new one)
    held = [p.grad for p in compiled.parameters()]
    before = [h.numpy().copy() for h in held]
    x, y = batch(5, part=R)
    cstep(compiled, o2, x, y)
    step(eager, o1, x, y)
    for h, b, p, q in zip(held, before, compiled.parameters(), eager.parameters()):
        assert h is not p.grad and np.array_equal(h.numpy(), b)
        assert np.allclose(p.grad.numpy(), q.grad.numpy(), rtol=REL, atol=1e-7)


@check
def a_forward_only_ddp_compile_falls_back_with_the_reason():
    ddp = DDP(mlp(seed=R))
    cf = compiler.compile(lambda x: ddp(x).sum(), backend="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(3):
            x, _ = batch(s, part=R)
            loss = cf(x)
            loss.backward()
    assert cf.fallbacks and all("compile the whole step" in r for r in cf.fallbacks), \
        cf.fallbacks


@check
def the_sequence_of_collectives_stays_in_step_after_compiled_calls():
    def f(t):
        u = t * 1.0
        dist.all_reduce(u)
        dist.all_reduce(u)
        return u

    cf = compiler.compile(f, backend="llvm")
    for _ in range(3):
        cf(dg.ones(3))
    seq = default_group().seq
    both = dg.tensor([seq, -seq])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)  # (eager: checked against the other rank)
    assert both.tolist() == [seq, -seq], (seq, both)


@check
def an_all_reduce_through_an_alias_is_seen_by_the_other_view_as_in_eager():
    def f(a, b):
        dist.all_reduce(a)  # (b views a's memory: it sees the sum too)
        return b * 1.0, a.sum()

    cf = compiler.compile(f, backend="llvm")
    for k in range(3):
        outs = []
        for fn in (f, cf):
            base = dg.tensor(np.arange(6, dtype=np.float32) + 10 * R + k)
            got = fn(base, base[2:])
            outs.append([t.numpy().copy() for t in got] + [base.numpy().copy()])
        for x, y in zip(*outs):
            assert np.array_equal(x, y), (x, y)
    assert not cf.fallbacks, cf.fallbacks


@check
def a_non_contiguous_tensor_and_an_async_wait_after_more_work_equal_eager():
    def f(t, w):
        u = (t * 2.0).t()  # (a transposed view: eager communicates a contiguous copy)
        work = dist.all_reduce(u, op=dist.ReduceOp.AVG, async_op=True)
        v = t @ w  # (work while the all-reduce is in flight)
        work.wait()
        return u + 1.0, v

    cf = compiler.compile(f, backend="llvm")
    for k in range(3):
        t = dg.tensor(np.arange(12, dtype=np.float32).reshape(3, 4) * (R + 1) + k)
        w = dg.ones(4, 2)
        for got, want in zip(cf(t, w), f(t, w)):
            assert np.array_equal(got.numpy(), want.numpy()), (got, want)
    assert not cf.fallbacks and len(cf.variants) == 1, cf.fallbacks


@check
def python_state_read_by_a_step_with_collectives_is_guarded_on_every_rank():
    """A Python number the step reads changes on both ranks between calls: each rank's
    guard misses together, they agree to run eagerly, and both trace again."""
    global SCALE

    def f(t):
        u = t * SCALE
        dist.all_reduce(u)
        return u

    cf = compiler.compile(f, backend="llvm")
    for k in range(6):
        SCALE = 1.0 if k < 3 else 3.0
        x = dg.full((4,), float(R + 1))
        assert cf(x).tolist() == f(x).tolist() == [3.0 * SCALE] * 4
    SCALE = 1.0
    assert len(cf.variants) == 2, cf.recompiles


@check
def compiled_ddp_on_the_interpreter_equals_eager_bit_for_bit():
    """The interpreter runs eager's impls in eager's order: with collectives inside, its
    compiled DDP steps must equal eager DDP's exactly."""
    eager, compiled = DDP(mlp(seed=R)), DDP(mlp(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())
    cstep = compiler.compile(step, backend="interp")
    l1 = train(eager, o1, step, part=R, steps=8)
    l2 = train(compiled, o2, cstep, part=R, steps=8)
    assert l1 == l2, (l1, l2)
    assert relative_difference(compiled.module, eager.module) == 0.0
    assert len(cstep.variants) == 1 and not refused(cstep), cstep.fallbacks


@check
def a_step_whose_other_groups_run_in_numpy_keeps_its_collectives_in_step():
    """An integer convolution has no native kernel: the hybrid plan runs it in numpy, and
    the collectives as numpy steps too (inside an agreed call, without their own check) —
    and the random numbers, eager's bits either way."""
    w = dg.tensor(np.array([[[1, -2, 1]]]))

    def f(t):
        c = F.conv1d((t * 8.0).to(dg.int64)[None, None], w, padding=1)[0, 0]
        u = (t.double() + c.double() + dg.randn(6, dtype=dg.float64)) * 2.0
        dist.all_reduce(u)
        v = u.float() + 1.0
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
        return v

    cf = compiler.compile(f, backend="llvm")
    for k in range(4):
        x = dg.tensor(np.linspace(-1, 1, 6, dtype=np.float32) * (R + 1) + 0.1 * k)
        dg.manual_seed(k)
        got = cf(x)
        dg.manual_seed(k)
        assert np.array_equal(got.numpy(), f(x).numpy())
    plan = cf.variants[0].plan.describe()
    assert len(cf.variants) == 1 and not cf.fallbacks and "driver" not in plan, plan
    seq = default_group().seq
    both = dg.tensor([seq, -seq])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    assert both.tolist() == [seq, -seq], (seq, both)


run_checks(R)
dist.destroy_process_group()
