"""DistributedDataParallel on 2 ranks (run by tests/test_distributed_mpi.py): each rank trains
on its half of every batch (the interleaved half a DistributedSampler without shuffle gives
it) and must end where one process trained on the whole batch ends; every rank computes
that single-process reference itself. ``python training.py CHECKPOINT_PATH``."""

from __future__ import annotations

import copy
import datetime
import sys
import warnings

import numpy as np
from checks import check, report, run_checks

import compiler
import dyngrad as dg
import dyngrad.distributed as dist
import dyngrad.nn.functional as F
from dyngrad import nn, optim
from dyngrad.nn.parallel import DistributedDataParallel as DDP
from dyngrad.optim.lr_scheduler import StepLR

dist.init_process_group("mpi", timeout=datetime.timedelta(seconds=60))
R, W = dist.get_rank(), dist.get_world_size()
assert W == 2, "run on 2 ranks"
CHECKPOINT = sys.argv[1]
STEPS, BATCH = 20, 8

rng = np.random.default_rng(0)
X = rng.standard_normal((STEPS, BATCH, 6))
Y = rng.standard_normal((STEPS, BATCH, 3))


def batch(s: int, dtype=dg.float64, part=None):
    """Step ``s``'s whole batch, or this rank's half of it (part=R)."""
    x, y = X[s], Y[s]
    if part is not None:
        x, y = x[part::W], y[part::W]
    return dg.tensor(x, dtype=dtype), dg.tensor(y, dtype=dtype)


def mlp(seed: int, dtype=dg.float64) -> nn.Module:
    dg.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3)).to(dtype)


def largest_difference(a: nn.Module, b: nn.Module, relative: bool = False) -> float:
    worst = 0.0
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        d = np.abs(p.numpy().astype(np.float64) - q.numpy().astype(np.float64))
        if relative:
            d = d / np.maximum(np.abs(q.numpy().astype(np.float64)), 1e-3)
        worst = max(worst, float(d.max()))
    return worst


def train(model, make_opt, steps=STEPS, dtype=dg.float64, part=None, schedule=None):
    """SGD steps on the whole batch (part=None) or on this rank's half."""
    opt = make_opt(model.parameters())
    sched = schedule(opt) if schedule else None
    for s in range(steps):
        opt.zero_grad()
        x, y = batch(s, dtype, part)
        F.mse_loss(model(x), y).backward()
        opt.step()
        if sched:
            sched.step()
    return model


def sgd(params):
    return optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


@check
def ddp_starts_from_rank_0s_parameters():
    ddp = DDP(mlp(seed=R))  # (each rank initialises differently)
    assert largest_difference(ddp.module, mlp(seed=0)) == 0.0


@check
def twenty_sgd_steps_equal_one_process_with_the_whole_batch_in_float64():
    ddp = train(DDP(mlp(seed=R)), sgd, part=R)
    ref = train(mlp(seed=0), sgd)
    diff = largest_difference(ddp.module, ref)
    report("float64_largest_difference", diff)
    assert diff <= 1e-12, diff


@check
def twenty_sgd_steps_equal_one_process_to_float32_rounding():
    ddp = train(DDP(mlp(seed=R, dtype=dg.float32)), sgd, dtype=dg.float32, part=R)
    ref = train(mlp(seed=0, dtype=dg.float32), sgd, dtype=dg.float32)
    diff = largest_difference(ddp.module, ref, relative=True)
    report("float32_largest_relative_difference", diff)
    assert diff <= 1e-5, diff


@check
def adam_with_an_lr_schedule_equals_one_process():
    def adam(params):
        return optim.Adam(params, lr=0.01)

    def schedule(opt):
        return StepLR(opt, step_size=5, gamma=0.5)

    ddp = train(DDP(mlp(seed=R)), adam, part=R, schedule=schedule)
    ref = train(mlp(seed=0), adam, schedule=schedule)
    diff = largest_difference(ddp.module, ref)
    report("adam_schedule_largest_difference", diff)
    assert diff <= 1e-10, diff


@check
def no_sync_accumulates_two_micro_batches_then_averages_their_sum():
    ddp = DDP(mlp(seed=R))
    opt = sgd(ddp.parameters())
    for s in range(STEPS):
        opt.zero_grad()
        x, y = batch(s, part=R)
        with ddp.no_sync():
            (F.mse_loss(ddp(x[:2]), y[:2]) / 2).backward()
        if s == 0:  # (the local sum only, so far: nothing was averaged)
            local = [p.grad.clone() for p in ddp.parameters()]
        (F.mse_loss(ddp(x[2:]), y[2:]) / 2).backward()
        opt.step()
    ref = train(mlp(seed=0), sgd)
    diff = largest_difference(ddp.module, ref)
    assert diff <= 1e-12, diff
    assert all(g.shape == p.shape for g, p in zip(local, ddp.parameters()))


def bn_net(seed: int) -> nn.Module:
    dg.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(),
                         nn.Linear(12, 3)).double()


@check
def batchnorm_trains_as_two_ghost_batches_with_rank_0s_running_statistics():
    """With broadcast_buffers, each rank normalises with its own half's statistics and the
    running statistics are rank 0's: the single-process equal is a step on the two halves
    separately (loss averaged), keeping the running statistics of the first half."""
    ddp = train(DDP(bn_net(seed=R)), sgd, part=R)
    ref = bn_net(seed=0)
    whole = train(bn_net(seed=0), sgd)  # (the whole batch at once: other statistics)
    bn = ref[1]
    opt = sgd(ref.parameters())
    for s in range(STEPS):
        opt.zero_grad()
        (x0, y0), (x1, y1) = batch(s, part=0), batch(s, part=1)
        loss0 = F.mse_loss(ref(x0), y0)
        kept = [b.clone() for b in bn.buffers()]
        loss1 = F.mse_loss(ref(x1), y1)
        with dg.no_grad():
            for b, k in zip(bn.buffers(), kept):
                b.copy_(k)
        ((loss0 + loss1) / 2).backward()
        opt.step()
    params = max(float(np.abs(p.detach().numpy() - q.detach().numpy()).max())
                 for p, q in zip(ddp.module.parameters(), ref.parameters()))
    assert params <= 1e-12, params
    if R == 0:
        stats = largest_difference(ddp.module, ref)
        assert stats <= 1e-12, stats
    assert largest_difference(ddp.module, whole) > 1e-3  # (not the whole batch's)


@check
def sync_batchnorm_trains_as_one_process_with_the_whole_batch():
    """With SyncBatchNorm the statistics are the global batch's: parameters and running
    statistics equal one process's with BatchNorm on the whole batch, on every rank."""
    ddp = train(DDP(nn.SyncBatchNorm.convert_sync_batchnorm(bn_net(seed=R))), sgd, part=R)
    ref = train(bn_net(seed=0), sgd)
    assert isinstance(ddp.module[1], nn.SyncBatchNorm)
    diff = largest_difference(ddp.module, ref)
    report("sync_batchnorm_largest_difference", diff)
    assert diff <= 1e-12, diff


@check
def sync_batchnorm_gradient_includes_the_other_ranks_normalisation():
    """A gradcheck of the whole job: d(Σ_r loss_r)/dx on this rank, against finite
    differences that every rank evaluates together."""
    dg.manual_seed(3)
    bn = nn.SyncBatchNorm(3).double()
    rng = np.random.default_rng(7 + R)
    x0 = rng.standard_normal((4, 3))
    c = dg.tensor(rng.standard_normal((4, 3)))
    x = dg.tensor(x0, requires_grad=True)
    (bn(x) * c).sum().backward()
    eps, worst = 1e-6, 0.0
    for i in range(4):
        for j in range(3):
            total = []
            for sign in (1, -1):
                for who in range(W):
                    shifted = x0.copy()
                    if who == R:
                        shifted[i, j] += sign * eps
                    out = (bn(dg.tensor(shifted)) * c).sum().detach().reshape(1)
                    dist.all_reduce(out)
                    if who == R:
                        total.append(out.item())
            numeric = (total[0] - total[1]) / (2 * eps)
            worst = max(worst, abs(numeric - x.grad[i, j].item()))
    assert worst < 1e-6, worst


class TwoHeads(nn.Module):
    """``a`` always used; ``b`` used on rank 1 only; ``c`` never."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 3), nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x, use_b: bool):
        return self.a(x) + self.b(x) if use_b else self.a(x)


@check
def find_unused_parameters_averages_what_some_rank_used_and_leaves_the_rest():
    dg.manual_seed(0)
    ref = TwoHeads().double()
    ddp = DDP(copy.deepcopy(ref), find_unused_parameters=True)
    (x, y) = batch(0, part=R)
    F.mse_loss(ddp(x, use_b=R == 1), y).backward()
    (x0, y0), (x1, y1) = batch(0, part=0), batch(0, part=1)
    ((F.mse_loss(ref(x0, False), y0) + F.mse_loss(ref(x1, True), y1)) / 2).backward()
    for name in ("a", "b"):
        for p, q in zip(getattr(ddp.module, name).parameters(),
                        getattr(ref, name).parameters()):
            assert np.abs(p.grad.numpy() - q.grad.numpy()).max() <= 1e-14, name
    assert all(p.grad is None for p in ddp.module.c.parameters())


@check
def a_post_accumulate_hook_registered_after_ddp_changes_the_gradient_that_is_averaged():
    """PyTorch runs a tensor's post-accumulate-grad hooks before its DDP reducer's hook (on
    the gradient accumulator), whenever they were registered: a hook that scales .grad in
    place scales the average."""
    def times_ten(p):
        p.grad.mul_(10)

    model = mlp(seed=R)
    ddp = DDP(model)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(times_ten)
    x, y = batch(0, part=R)
    F.mse_loss(ddp(x), y).backward()
    ref = mlp(seed=0)
    (x0, y0), (x1, y1) = batch(0, part=0), batch(0, part=1)
    ((F.mse_loss(ref(x0), y0) + F.mse_loss(ref(x1), y1)) / 2).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert np.abs(p.grad.numpy() - 10 * q.grad.numpy()).max() <= 1e-13


@check
def frozen_parameters_are_not_reduced_and_grads_set_to_none_are_set():
    model = mlp(seed=R)
    for p in model[0].parameters():
        p.requires_grad_(False)
    ddp = DDP(model)
    assert len(ddp.reducer.params) == 4  # (the frozen layer's two are not reduced)
    for set_to_none in (True, False, True):
        ddp.zero_grad(set_to_none=set_to_none)
        x, y = batch(1, part=R)
        F.mse_loss(ddp(x), y).backward()
    ref = mlp(seed=0)
    for p in ref[0].parameters():
        p.requires_grad_(False)
    ref.zero_grad()
    F.mse_loss(ref(batch(1)[0]), batch(1)[1]).backward()
    assert all(p.grad is None for p in model[0].parameters())
    for p, q in zip(list(ddp.parameters())[2:], list(ref.parameters())[2:]):
        assert np.abs(p.grad.numpy() - q.grad.numpy()).max() <= 1e-14


@check
def buckets_are_reduced_while_backward_runs():
    model = mlp(seed=R)
    seen = []
    first = model[0].weight  # (defined first: its gradient comes last)
    first.register_post_accumulate_grad_hook(
        lambda p: seen.append([b.work is not None for b in ddp.reducer.buckets]))
    ddp = DDP(model, bucket_cap_mb=512 / 2**20)
    x, y = batch(0, part=R)
    F.mse_loss(ddp(x), y).backward()
    buckets = [b.indices for b in ddp.reducer.buckets]
    report("buckets", buckets)
    assert buckets == [[5, 4, 3], [2], [1, 0]], buckets  # (reverse order, 512 bytes each)
    assert seen == [[True, True, False]], seen  # (the last gradient: the others are sent)
    assert all(b.work.is_completed() for b in ddp.reducer.buckets)


@check
def the_first_bucket_holds_at_most_one_mebibyte_and_later_ones_the_cap():
    dg.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 512), nn.Linear(512, 512), nn.Linear(512, 512),
                        nn.Linear(512, 4))
    ddp = DDP(big, bucket_cap_mb=None)
    sizes = [sum(ddp.reducer.params[i]._data.nbytes for i in b.indices)
             for b in ddp.reducer.buckets]
    report("bucket_bytes", sizes)
    assert [b.indices for b in ddp.reducer.buckets] == [[7, 6, 5, 4], [3, 2, 1, 0]]
    assert sizes[0] >= 2**20 > sizes[0] - 512 * 512 * 4  # (closed by the tensor that
    #                                                     took it past 1 MiB)


@check
def a_checkpoint_saved_by_rank_0_loads_on_every_rank():
    ddp = train(DDP(mlp(seed=R)), sgd, steps=3, part=R)
    assert all(k.startswith("module.") for k in ddp.state_dict())
    if dist.get_rank() == 0:
        dg.save(ddp.module.state_dict(), CHECKPOINT)
    dist.barrier()
    fresh = mlp(seed=5)
    fresh.load_state_dict(dg.load(CHECKPOINT))
    assert largest_difference(fresh, ddp.module) == 0.0
    again = DDP(mlp(seed=7))
    again.load_state_dict({f"module.{k}": v for k, v in dg.load(CHECKPOINT).items()})
    assert largest_difference(again.module, ddp.module) == 0.0


@check
def a_compiled_ddp_step_with_broadcast_buffers_runs_eagerly_naming_why():
    eager, compiled = DDP(bn_net(seed=R)), DDP(bn_net(seed=R))
    o1, o2 = sgd(eager.parameters()), sgd(compiled.parameters())

    def step(model, opt, x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    cstep = compiler.compile(step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("runs eagerly from now on")
        for s in range(6):
            x, y = batch(s, part=R)
            assert step(eager, o1, x, y).item() == cstep(compiled, o2, x, y).item()
    assert largest_difference(eager.module, compiled.module) == 0.0
    assert any("broadcast_buffers=False" in r for r in cstep.fallbacks), cstep.fallbacks


@check
def forward_passes_arguments_through_and_keeps_the_module():
    dg.manual_seed(0)
    inner = TwoHeads().double()
    ddp = DDP(inner, find_unused_parameters=True)
    x, _ = batch(0)
    assert ddp.module is inner
    with dg.no_grad():  # (no backward can follow: the reducer is not armed)
        assert np.array_equal(ddp(x, use_b=True).numpy(), inner(x, use_b=True).numpy())
    assert not ddp.reducer.expect_hooks and not ddp.require_forward_param_sync
    ddp(x, use_b=False)
    assert ddp.reducer.expect_hooks and ddp.require_forward_param_sync


run_checks(R)
