"""Data-parallel training on 2 ranks, under MPI's own ``mpiexec`` (through the launcher,
``python -m dyngrad.distributed.run -n 2``). Each program in tests/mpi/ runs once for all the
checks it holds (one launch costs ~0.5 s plus ``import dyngrad``); each check is a test
here, passed only if it passed on both ranks. The failure programs must end the whole job
within seconds, with a nonzero status and a message naming what went wrong.

Skipped without the ``dist`` extra (mpi4py and MPICH's wheel)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from dyngrad.distributed import run

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ROOT / "tests" / "mpi"


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "the dist extra (mpi4py, mpich) is not installed: pip install -e '.[dist]'"
    try:
        run.find_mpiexec()
    except FileNotFoundError as exc:
        return str(exc)
    return None


# (one xdist worker runs them all, so each program runs once: `make test` passes
# --dist loadgroup)
pytestmark = [pytest.mark.mpi, pytest.mark.xdist_group("mpi"),
              pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))]


class Job:
    """A finished launch: its status, output and wall time."""

    def __init__(self, args: list[str], n: int = 2, timeout: float = 180) -> None:
        self.where = Path(tempfile.mkdtemp(prefix="mpi-results-"))
        env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg",
                   MPI_TEST_RESULTS=str(self.where))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dyngrad.distributed.run", "-n", str(n),
                               *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        self.seconds = time.perf_counter() - t0
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    def results(self) -> dict:
        """rank -> the checks' outcomes and figures it wrote (tests/mpi/checks.py)."""
        found = {int(p.stem[4:]): json.loads(p.read_text())
                 for p in self.where.glob("rank*.json")}
        assert self.code == 0 and found, \
            f"status {self.code}\n{self.out[-3000:]}\n{self.err[-5000:]}"
        return found


def _checks(program: str) -> list[str]:
    return re.findall(r"^@check\ndef (\w+)", (PROGRAMS / program).read_text(), re.M)


@pytest.fixture(scope="session")
def collectives() -> dict:
    return Job([str(PROGRAMS / "collectives.py")]).results()


@pytest.fixture(scope="session")
def training(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ddp") / "checkpoint.npz"
    results = Job([str(PROGRAMS / "training.py"), str(path)]).results()
    return {"results": results, "checkpoint": path}


def _passed(results: dict, name: str) -> None:
    assert sorted(results) == [0, 1], f"ranks that reported: {sorted(results)}"
    for rank, r in results.items():
        assert r["checks"][name] == "ok", f"rank {rank}: {r['checks'][name]}"


@pytest.mark.parametrize("name", _checks("collectives.py"))
def test_collectives(collectives, name):
    _passed(collectives, name)


@pytest.fixture(scope="session")
def compiled() -> dict:
    return Job([str(PROGRAMS / "compiled.py")]).results()


@pytest.mark.parametrize("name", _checks("compiled.py"))
def test_compiled_steps_with_collectives(compiled, name):
    _passed(compiled, name)


def test_one_rank_compiles_collectives_into_the_driver_with_handles_read_at_run_time():
    _passed_on(Job([str(PROGRAMS / "single.py")], n=1).results(), [0])


@pytest.mark.parametrize("name", _checks("training.py"))
def test_data_parallel_training(training, name):
    _passed(training["results"], name)


def test_a_checkpoint_saved_by_rank_0_loads_in_a_job_of_one_rank(training):
    job = Job([str(PROGRAMS / "checkpoint.py"), str(training["checkpoint"])], n=1)
    _passed_on(job.results(), [0])


def _passed_on(results: dict, ranks: list) -> None:
    assert sorted(results) == ranks
    for rank, r in results.items():
        assert all(v == "ok" for v in r["checks"].values()), (rank, r["checks"])


# ------------------------------------------------------------------ failures


def _failed(case: str, *args: str) -> Job:
    job = Job([str(PROGRAMS / "failures.py"), case, *args], timeout=60)
    assert job.code != 0, f"the job did not fail\n{job.out}\n{job.err}"
    assert job.seconds < 15, f"the job took {job.seconds:.1f} s to end"
    assert "never printed" not in job.out
    return job


def test_an_exception_on_one_rank_ends_the_job_on_every_rank():
    job = _failed("raise")
    assert "[rank 1] ValueError: rank 1 cannot go on" in job.err
    assert "ValueError on rank 1 ends the job: aborting all 2 ranks" in job.err


def test_an_exception_that_passes_a_finally_destroying_the_group_still_ends_the_job():
    job = _failed("raise-through-destroy")  # (PyTorch scripts clean up so)
    assert "[rank 1] ValueError: rank 1 cannot go on" in job.err
    assert "ValueError on rank 1 ends the job: aborting all 2 ranks" in job.err


def test_tensors_of_different_shapes_are_named_on_every_rank_never_summed():
    job = _failed("shapes")  # (every rank raises; the first to abort may cut the other short)
    assert re.search(r"\[rank \d\] dyngrad.distributed.work.DistBackendError: all_reduce: "
                     r"Detected mismatch between collectives on ranks", job.err), job.err
    assert "rank 0: all_reduce SUM of float32 [4, 3] (collective #1)" in job.err
    assert "rank 1: all_reduce SUM of float32 [4, 2] (collective #1)" in job.err


def test_collectives_called_in_another_order_are_named():
    job = _failed("order")
    assert "rank 0: all_reduce SUM of float32 [3] (collective #2)" in job.err
    assert "rank 1: broadcast from rank 0 of float32 [3] (collective #2)" in job.err


def test_a_collective_that_one_rank_never_reaches_times_out_naming_it():
    job = _failed("timeout")
    assert re.search(r"all_reduce SUM of float32 \[3\] \(collective #1\) timed out on rank 0 "
                     r"of 2 after 1\.\d\d s \(timeout 1 s\), waiting for every rank to reach "
                     r"it", job.err), job.err
    assert job.seconds < 8


def test_a_timeout_inside_a_compiled_step_ends_the_job_naming_the_collective():
    job = _failed("compiled-timeout")
    assert re.search(r"\[rank 0\] dyngrad.distributed.work.DistBackendError: all_reduce SUM "
                     r"of float32 \[3\] \(collective 1 of 1 in a compiled step\) timed out on "
                     r"rank 0 of 2 \(timeout 1 s\), waiting for its data", job.err), job.err
    assert job.seconds < 10


def test_a_rank_that_never_joins_the_group_times_out_init_process_group():
    job = _failed("init-timeout")
    assert "[rank 0] DistBackendError: init_process_group on rank 0 of 2: not every rank " \
           "joined within 1.0 s" in job.err
    assert job.seconds < 8


def test_a_caught_timeout_still_ends_the_job_at_exit():
    job = _failed("caught-timeout")
    assert "caught: all_reduce SUM of float32 [3]" in job.out
    assert "exiting with a broken process group" in job.err


def test_ddp_names_a_parameter_whose_shape_differs_between_ranks():
    job = _failed("ddp-shapes")
    assert "DistributedDataParallel: parameter 2 (1.weight) is float32 [3, 8] on rank 0 but " \
           "float32 [3, 6] on rank 1" in job.err


def test_ddp_names_a_parameter_trained_on_one_rank_and_frozen_on_another():
    job = _failed("ddp-frozen")  # (else one rank's gradient of 0.weight is averaged with
    #                               the other's of 1.weight: the buckets have the same size)
    assert "DistributedDataParallel: parameter 0 (0.weight) is float32 [4, 4] (frozen) on " \
           "rank 0 but float32 [4, 4] on rank 1" in job.err


def test_ddp_names_the_parameters_that_got_no_gradient():
    job = _failed("ddp-unused")
    assert re.search(r"Parameters which did not receive grad for rank \d: 2 \(unused.weight\), "
                     r"3 \(unused.bias\)", job.err), job.err
    assert "find_unused_parameters=True" in job.err


def test_ddp_refuses_to_go_on_after_a_backward_that_stopped_midway():
    """Rank 0 caught an exception raised after its first bucket's all-reduce had started:
    its next all-reduces would be summed with rank 1's later buckets. The next forward
    raises PyTorch's error, the group is broken, and the job ends at exit."""
    job = _failed("ddp-interrupted")
    assert "caught on rank 0: ValueError: rank 0's hook failed" in job.out
    assert "caught on rank 0: RuntimeError: DistributedDataParallel: Expected to have " \
           "finished reduction in the prior iteration before starting a new one" in job.out
    assert "exiting with a broken process group" in job.err


# ------------------------------------------------------------------ the example


def test_ddp_digits_example_equals_the_single_process_run():
    pytest.importorskip("sklearn")
    job = Job([str(ROOT / "examples" / "ddp_digits.py"), "--quick"], timeout=300)
    assert job.code == 0, job.out[-2000:] + job.err[-4000:]
    diff = float(re.search(r"largest difference from the single-process run: (\S+)",
                           job.out).group(1))
    assert diff <= 1e-10
    assert np.isfinite(float(re.search(r"test accuracy ([\d.]+)%", job.out).group(1)))


def test_the_collective_cost_benchmark_prints_its_table():
    job = Job([str(ROOT / "benchmarks" / "collectives.py"), "--quick"], timeout=120)
    assert job.code == 0, job.out[-2000:] + job.err[-4000:]
    rows = re.findall(r"^\s*(4 B|1 KB|1 MB|25 MB)((?:\s+[\d.]+){3})$", job.out, re.M)
    assert [r[0] for r in rows] == ["4 B", "1 KB", "1 MB", "25 MB"], job.out
