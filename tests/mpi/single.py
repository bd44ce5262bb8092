"""One rank (``python -m dyngrad.distributed.run -n 1 single.py``): the LLVM lowering of the
collectives, run by the driver, against eager and the interpreter; the MPI handles are read
from the run-time table, never written into the module's IR (which the disk cache keys)."""

from __future__ import annotations

import numpy as np
from checks import check, run_checks

import compiler
import dyngrad as dg
import dyngrad.distributed as dist
from dyngrad.distributed.process_group import default_group

dist.init_process_group("mpi")


def step(x, w):
    y = x @ w
    dist.all_reduce(y, op=dist.ReduceOp.AVG)
    g = dg.zeros(dist.get_world_size() * y.shape[0], y.shape[1])
    dist.all_gather_into_tensor(g, y * 2.0)
    return g.sum(0), y


@check
def the_driver_runs_collectives_and_equals_eager_and_the_interpreter():
    native = compiler.compile(step, backend="llvm")
    interp = compiler.compile(step, backend="interp")
    rng = np.random.default_rng(0)
    for _ in range(3):
        x, w = dg.tensor(rng.standard_normal((4, 5)), dtype=dg.float32), dg.ones(5, 3)
        want = step(x, w)
        for cf in (native, interp):
            got = cf(x, w)
            for a, b in zip(got, want):
                assert np.allclose(a.numpy(), b.numpy(), rtol=1e-6), (cf, a, b)
    for cf in (native, interp):
        assert len(cf.variants) == 1 and not cf.fallbacks, cf.fallbacks
    text = str(compiler.explain(native))
    assert "run by one driver call" in text and "2 collective(s) inside" in text, text


@check
def no_mpi_handle_is_in_the_module_text():
    from mpi4py import MPI
    cf = compiler.compile(step, backend="llvm")
    x, w = dg.ones(4, 5), dg.ones(5, 3)
    cf(x, w), cf(x, w)
    plan = cf.variants[0].plan
    text = plan._ir(plan.g, False)
    assert "@MPI_" not in text and "call i32 %c." in text
    for handle in (MPI._handleof(default_group().comm), MPI._handleof(MPI.FLOAT),
                   MPI._handleof(MPI.SUM)):
        assert str(handle) not in text and str(handle - (1 << 32)) not in text


@check
def the_sequence_moves_on_as_eager_would():
    cf = compiler.compile(step, backend="llvm")
    x, w = dg.ones(4, 5), dg.ones(5, 3)
    g = default_group()
    seq = g.seq
    step(x, w)
    assert g.seq == seq + 2  # (eager: two collectives)
    cf(x, w), cf(x, w)  # (traced, then compiled: the agreement and two collectives)
    seq = g.seq
    cf(x, w)
    assert g.seq == seq + 3, (g.seq, seq)


run_checks(0)
dist.destroy_process_group()
