"""A checkpoint that rank 0 of a 2-rank job saved (tests/mpi/training.py) loads into a job of
another size: ``python checkpoint.py CHECKPOINT_PATH`` on 1 rank."""

from __future__ import annotations

import sys

import numpy as np
from checks import check, run_checks

import dyngrad as dg
import dyngrad.distributed as dist
from dyngrad import nn

dist.init_process_group("mpi")
saved = dg.load(sys.argv[1])


@check
def the_checkpoint_loads_into_a_ddp_module_on_this_world_size():
    dg.manual_seed(11)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                          nn.Linear(16, 3)).double()
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp.module.load_state_dict(saved)
    for k, v in ddp.module.state_dict().items():
        assert np.array_equal(v.numpy(), saved[k].numpy()), k
    ddp(dg.ones(2, 6, dtype=dg.float64)).sum().backward()  # (trains on, on 1 rank)
    assert all(p.grad is not None for p in model.parameters())


run_checks(dist.get_rank())
