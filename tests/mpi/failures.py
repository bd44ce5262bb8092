"""Jobs that must fail, on 2 ranks (tests/test_distributed_mpi.py checks that each ends within
seconds, nonzero, with the message): ``python failures.py CASE``."""

from __future__ import annotations

import datetime
import sys
import time

import dyngrad as dg
import dyngrad.distributed as dist
import dyngrad.nn.functional as F
from dyngrad import nn

case = sys.argv[1]
timeout = datetime.timedelta(seconds=1 if "timeout" in case else 30)
if case == "init-timeout":  # rank 1 is late to join
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() == 1:
        time.sleep(60)
dist.init_process_group("mpi", timeout=timeout)
rank = dist.get_rank()

if case == "raise":  # rank 0 waits in the all-reduce that rank 1 never reaches
    if rank == 1:
        raise ValueError("rank 1 cannot go on")
    dist.all_reduce(dg.ones(3))
elif case == "raise-through-destroy":  # the exception passes `finally: destroy_process_group()`
    try:
        if rank == 1:
            raise ValueError("rank 1 cannot go on")
        dist.all_reduce(dg.ones(3))
    finally:
        dist.destroy_process_group()
elif case == "shapes":
    dist.all_reduce(dg.ones(4, 3 if rank == 0 else 2))
elif case == "order":
    dist.barrier()
    if rank == 0:
        dist.all_reduce(dg.ones(3))
    else:
        dist.broadcast(dg.ones(3), src=0)
elif case == "timeout":
    if rank == 1:
        time.sleep(60)
    dist.all_reduce(dg.ones(3))
elif case == "caught-timeout":  # the program catches the error and exits normally
    if rank == 1:
        time.sleep(60)
    try:
        dist.all_reduce(dg.ones(3))
    except dist.DistBackendError as exc:
        print(f"caught: {exc}")
        sys.exit(0)  # (a normal exit: the job must still end, not leave rank 1 waiting)
elif case == "ddp-shapes":
    width = 8 if rank == 0 else 6  # (the second layer's input differs)
    nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Linear(width, 3)))
elif case == "ddp-frozen":  # each rank trains another of two layers of the same shape
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[rank].weight.requires_grad_(False)
    ddp = nn.parallel.DistributedDataParallel(model)  # (one bucket, the same size on both)
    ddp(dg.ones(2, 4)).sum().backward()
elif case == "ddp-unused":  # a parameter no loss uses, without find_unused_parameters
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    ddp = nn.parallel.DistributedDataParallel(Net())
    F.mse_loss(ddp(dg.ones(3, 4)), dg.zeros(3, 2)).backward()
elif case == "ddp-interrupted":  # a backward stopped midway on rank 0, caught; it goes on
    model = nn.Sequential(*[nn.Linear(4, 4, bias=False) for _ in range(3)])
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=64 / 2**20)  # (a bucket each)
    failed = []

    def fail_once(p):  # (the last gradient: the first two buckets' all-reduces have started)
        if not failed:
            failed.append(1)
            raise ValueError("rank 0's hook failed")

    if rank == 0:
        model[0].weight.register_post_accumulate_grad_hook(fail_once)
    for _ in range(3):
        try:  # (skipping a failed step: rank 1 is still waiting for the other buckets)
            ddp(dg.ones(2, 4)).sum().backward()
        except Exception as exc:  # noqa: BLE001 - what the program under test does
            print(f"caught on rank {rank}: {type(exc).__name__}: {exc}")
    sys.exit(0)  # (a normal exit: the job must still end, not leave rank 1 waiting)
elif case == "compiled-timeout":  # inside the native code: rank 1 agrees, then never sends
    import compiler
    from dyngrad.distributed.collectives import agree_on_step
    from dyngrad.distributed.process_group import default_group

    def f(t):
        u = t * 2.0
        dist.all_reduce(u)
        return u

    cf = compiler.compile(f, backend="llvm")
    for _ in range(3):  # (traced, then compiled: both ranks have the variant)
        cf(dg.ones(3))
    params = [p.detach().clone() for p in [dg.ones(3)]]
    if rank == 1:  # (what a rank that agreed and then stopped looks like to rank 0)
        cols = cf.variants[0].collectives
        agree_on_step(default_group(), cols.fingerprint, cols.count)
        time.sleep(30)
    x = dg.ones(3)
    cf(x)
    assert x.tolist() == params[0].tolist()
else:
    raise SystemExit(f"unknown case {case}")
print("never printed: the job went on")
