"""``dyngrad.distributed`` without MPI: the sampler's index assignment, the bucket assignment,
the launcher's command line, what happens when the ``dist`` extra is missing or the group is
not initialised. (Programs on 2 ranks: tests/test_distributed_mpi.py.)"""

from __future__ import annotations

import array
import builtins
import dataclasses
import fcntl
import os
import stat
import subprocess
import sys
import termios
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngrad as dg
import dyngrad.distributed as dist
from dyngrad import nn
from dyngrad.distributed import collectives, process_group, run
from dyngrad.nn.parallel.reducer import FIRST_BUCKET_BYTES, assign_buckets, find_output_tensors
from dyngrad.utils.data import DataLoader, DistributedSampler, TensorDataset

try:
    import torch
    import torch.distributed as torch_dist
    from torch.utils.data.distributed import DistributedSampler as TorchSampler
except ImportError:  # torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch (the oracle) is not installed")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ DistributedSampler


def _ranks(n, replicas, **kw):
    return [list(DistributedSampler(range(n), num_replicas=replicas, rank=r, **kw))
            for r in range(replicas)]


@pytest.mark.parametrize("n, replicas, drop_last", [(10, 4, False), (10, 4, True),
                                                    (12, 3, False), (2, 5, False),
                                                    (7, 2, True), (1, 3, False)])
def test_sampler_without_shuffle_pads_by_repeating_and_interleaves(n, replicas, drop_last):
    parts = _ranks(n, replicas, shuffle=False, drop_last=drop_last)
    indices = list(range(n))
    if drop_last:
        total = (n // replicas) * replicas
        padded = indices[:total]
    else:
        total = -(-n // replicas) * replicas
        padded = (indices * total)[:total]
    assert parts == [padded[r::replicas] for r in range(replicas)]
    assert all(len(p) == len(DistributedSampler(range(n), replicas, 0, drop_last=drop_last))
               for p in parts)


@needs_torch
@pytest.mark.parametrize("n, replicas, drop_last", [(10, 4, False), (10, 4, True),
                                                    (2, 5, False), (13, 3, True)])
def test_sampler_without_shuffle_equals_torchs(n, replicas, drop_last):
    for r in range(replicas):
        ours = DistributedSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last)
        theirs = TorchSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last)
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


@given(n=st.integers(1, 60), replicas=st.integers(1, 6), seed=st.integers(0, 5),
       epoch=st.integers(0, 3), drop_last=st.booleans())
@settings(max_examples=60, deadline=None)
def test_shuffled_ranks_split_one_permutation(n, replicas, seed, epoch, drop_last):
    """The ranks' shares, interleaved again, are one permutation of the dataset (padded by
    repeating its start, or cut): every rank shuffles with the same generator."""
    samplers = [DistributedSampler(range(n), replicas, r, seed=seed, drop_last=drop_last)
                for r in range(replicas)]
    for s in samplers:
        s.set_epoch(epoch)
    parts = [list(s) for s in samplers]
    k = len(samplers[0])
    assert all(len(p) == k for p in parts)
    joined = [parts[i % replicas][i // replicas] for i in range(k * replicas)]
    if drop_last:
        assert len(set(joined)) == len(joined) and set(joined) <= set(range(n))
        assert len(joined) == n - n % replicas
    else:
        perm = joined[:n]
        assert sorted(perm) == list(range(n))
        assert joined[n:] == (perm * len(joined))[:len(joined) - n]
    g = dg.Generator().manual_seed(seed + epoch)
    assert joined[:min(n, len(joined))] == dg.randperm(n, generator=g).tolist()[:len(joined)]


def test_set_epoch_reshuffles_and_the_same_epoch_repeats():
    s = DistributedSampler(range(50), num_replicas=2, rank=1, seed=7)
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    s.set_epoch(0)
    assert list(s) == first != second


def test_sampler_rank_out_of_range_is_torchs_error():
    with pytest.raises(ValueError, match=r"Invalid rank 2, rank should be in the interval "
                                         r"\[0, 1\]"):
        DistributedSampler(range(4), num_replicas=2, rank=2)


def test_sampler_needs_the_group_when_rank_is_not_given():
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        DistributedSampler(range(4))


def test_dataloader_batches_in_the_samplers_order():
    ds = TensorDataset(dg.arange(10.0))
    s = DistributedSampler(ds, num_replicas=3, rank=1, shuffle=False)
    loader = DataLoader(ds, batch_size=2, sampler=s)
    assert [b[0].tolist() for b in loader] == [[1.0, 4.0], [7.0, 0.0]]
    assert len(loader) == 2


def test_dataloader_sampler_and_shuffle_are_exclusive_as_in_torch():
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(TensorDataset(dg.ones(4)), sampler=range(4), shuffle=True)


# ------------------------------------------------------------------ buckets


def test_buckets_follow_reverse_parameter_order_with_a_small_first_bucket():
    mib = 1 << 20
    nbytes = [mib // 2, 3 * mib, mib // 4, mib // 2, mib // 2]
    buckets = assign_buckets(nbytes, ["f4"] * 5, [mib, 2 * mib], order=[4, 3, 2, 1, 0])
    # 4+3 reach 1 MiB: the first bucket closes; then 2+1 pass 2 MiB; 0 is left over
    assert buckets == [[4, 3], [2, 1], [0]]


def test_a_bucket_closes_when_it_reaches_its_cap_not_before():
    assert assign_buckets([10, 10, 10], ["f4"] * 3, [20], order=[0, 1, 2]) == [[0, 1], [2]]
    assert assign_buckets([10, 10, 10], ["f4"] * 3, [21], order=[0, 1, 2]) == [[0, 1, 2]]


def test_each_dtype_fills_buckets_of_its_own():
    buckets = assign_buckets([8, 8, 8, 8], ["f4", "f8", "f4", "f8"], [16],
                             order=[3, 2, 1, 0])
    assert buckets == [[3, 1], [2, 0]]  # (the float64 bucket fills first)


def test_the_first_bucket_cap_is_pytorchs_one_mebibyte():
    assert FIRST_BUCKET_BYTES == 1024 * 1024


@needs_torch
def test_first_bucket_bytes_is_torchs():
    assert FIRST_BUCKET_BYTES == torch_dist._DEFAULT_FIRST_BUCKET_BYTES


@needs_torch
@given(sizes=st.lists(st.integers(1, 400_000), min_size=1, max_size=30),
       caps=st.lists(st.integers(1_000, 2_000_000), min_size=1, max_size=3))
@settings(max_examples=40, deadline=None)
def test_bucket_assignment_equals_torchs(sizes, caps):
    order = list(range(len(sizes) - 1, -1, -1))
    tensors = [torch.zeros(sizes[i]) for i in order]
    theirs, _ = torch_dist._compute_bucket_assignment_by_size(
        tensors, caps, [False] * len(sizes), order)
    ours = assign_buckets([4 * s for s in sizes], ["f4"] * len(sizes), caps, order)
    assert ours == theirs


@dataclasses.dataclass
class _Output:  # (a model's output, as many return one: HuggingFace's are dataclasses)
    logits: object
    aux: object
    steps: int = 0


def test_forward_outputs_searched_for_unused_parameters_include_dataclass_fields():
    """find_unused_parameters walks the graph from these: a tensor missed leaves every
    parameter behind it 'unused', and its own gradient then marks it ready twice."""
    found = find_output_tensors({"out": _Output(dg.ones(1), [dg.ones(2), (dg.ones(3),)]),
                                 "n": 3})
    assert [t.shape for t in found] == [(1,), (2,), (3,)]


@needs_torch
def test_forward_outputs_searched_for_unused_parameters_are_torchs():
    from torch.nn.parallel.distributed import _find_tensors

    def output(lib):
        return [_Output(lib.ones(1), {"a": lib.ones(2)}), (lib.ones(3), "text")]

    assert [tuple(t.shape) for t in find_output_tensors(output(dg))] == \
        [tuple(t.shape) for t in _find_tensors(output(torch))]


# ------------------------------------------------------------------ records


def test_collective_shape_rules():
    c = collectives
    assert c.ALL_REDUCE.shape((3, 4), 2, {}) == (3, 4)
    assert c.ALL_GATHER.shape((3, 4), 2, {}) == (6, 4)
    assert c.ALL_GATHER.shape((), 3, {}) == (3,)
    assert c.REDUCE_SCATTER.shape((6, 4), 2, {}) == (3, 4)
    with pytest.raises(ValueError, match="multiple of the world size 4, got shape"):
        c.REDUCE_SCATTER.shape((6, 4), 4, {})


class _PeerComm:
    """A communicator whose one other rank sends ``theirs`` (a compiled call's agreement
    key, or a collective's: 7 numbers) — the protocol's arithmetic without MPI."""

    def __init__(self, theirs: list, their_description=None) -> None:
        self.theirs, self.their_description = theirs, their_description

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 2

    def Iallreduce(self, inplace, both, op):
        other = np.array(self.theirs + [-k for k in self.theirs], dtype=np.int64)
        np.maximum(both, other, out=both)
        return SimpleNamespace(Test=lambda: True)

    def Iallgather(self, mine, table):
        table[0], table[1] = mine, self.their_description
        return SimpleNamespace(Test=lambda: True)


def _group(comm) -> process_group.ProcessGroup:
    from datetime import timedelta
    return process_group.ProcessGroup(SimpleNamespace(IN_PLACE=None, MAX=None), comm,
                                      timedelta(seconds=5))


def _key(seq, fingerprint, count, code=None):
    code = collectives.COMPILED_STEP.code if code is None else code
    return [seq, code, -1, -1, -1, count, fingerprint]


def test_ranks_with_the_same_compiled_collectives_agree_to_run_them():
    g = _group(_PeerComm(_key(1, 77, 2)))
    assert collectives.agree_on_step(g, 77, 2) is True
    assert g.seq == 1  # (the agreement is one collective; the call then advances by 2)
    collectives.advance(g, 2)
    assert g.seq == 3


@pytest.mark.parametrize("mine, theirs", [((77, 2), (78, 2)),  # another variant
                                          ((77, 2), (collectives.MISSED, 0)),  # it missed
                                          ((collectives.MISSED, 0), (77, 2)),  # this one did
                                          ((collectives.MISSED, 0), (collectives.MISSED, 0))])
def test_ranks_at_one_compiled_call_that_differ_or_miss_run_it_eagerly_together(mine, theirs):
    g = _group(_PeerComm(_key(1, *theirs)))
    assert collectives.agree_on_step(g, *mine) is False
    assert g.broken is None and g.seq == 1


def test_a_compiled_call_meeting_an_eager_collective_is_named_on_every_rank():
    eager = [1, collectives.ALL_REDUCE.code, 0, 6, -1, 12, hash((4, 3)) & ((1 << 62) - 1)]
    described = collectives._describe(1, collectives.ALL_REDUCE, collectives.ReduceOp.SUM,
                                      np.dtype(np.float32), (4, 3), -1)
    g = _group(_PeerComm(eager, described))
    with pytest.raises(dist.DistBackendError) as err:
        collectives.agree_on_step(g, 77, 2)
    text = str(err.value)
    assert "rank 0: a compiled step with 2 collective(s) inside (collective #1)" in text
    assert "rank 1: all_reduce SUM of float32 [4, 3] (collective #1)" in text


def test_a_compiled_call_refuses_a_broken_group():
    g = _group(_PeerComm(_key(1, 77, 2)))
    g.broken = "a collective timed out"
    with pytest.raises(dist.DistBackendError, match="the process group is broken"):
        collectives.agree_on_step(g, 77, 2)


def test_reductions_refuse_what_has_no_meaning_naming_the_collective():
    mpi = type("MPI", (), {k: k for k in ("SUM", "MAX", "MIN", "PROD", "BAND", "BOR",
                                           "BXOR")})
    red = collectives.mpi_reduction
    assert red("all_reduce", dist.ReduceOp.SUM, np.dtype(np.bool_), mpi) == (np.uint8, "MAX")
    assert red("all_reduce", dist.ReduceOp.PRODUCT, np.dtype(np.bool_), mpi) == (np.uint8,
                                                                                 "MIN")
    with pytest.raises(TypeError, match="all_reduce: ReduceOp.AVG of a int64 tensor"):
        red("all_reduce", dist.ReduceOp.AVG, np.dtype(np.int64), mpi)
    with pytest.raises(TypeError, match="ReduceOp.BAND needs an integer or bool tensor"):
        red("all_reduce", dist.ReduceOp.BAND, np.dtype(np.float32), mpi)
    with pytest.raises(TypeError, match="op must be a dist.ReduceOp"):
        red("reduce_scatter", "sum", np.dtype(np.float32), mpi)


# ------------------------------------------------------------------ launcher


def test_launcher_command_runs_this_python_under_mpiexec():
    cmd = run.build_command(2, ["train.py", "--lr", "0.1"], mpiexec="/x/mpiexec",
                            python="/venv/bin/python")
    assert cmd == ["/x/mpiexec", "-n", "2", "/venv/bin/python", "train.py", "--lr", "0.1"]


def test_launcher_command_with_a_hostfile_a_module_and_mpiexec_options():
    cmd = run.build_command(4, ["pkg.train", "-q"], hostfile="hosts", mpiexec="mpiexec",
                            python="py", module=True, mpiexec_args=["-x", "A"])
    assert cmd == ["mpiexec", "-n", "4", "-hostfile", "hosts", "-x", "A", "py", "-m",
                   "pkg.train", "-q"]


def test_launcher_refuses_no_program_and_no_ranks():
    with pytest.raises(ValueError, match="give the script"):
        run.build_command(2, [], mpiexec="mpiexec")
    with pytest.raises(ValueError, match="-n must be at least 1"):
        run.build_command(0, ["t.py"], mpiexec="mpiexec")


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_launcher_finds_the_mpiexec_beside_python_then_on_path(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    venv.mkdir()
    python = venv / "python"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"no mpiexec beside .* nor on PATH: install "
                                                r"the 'dist' extra"):
        run.find_mpiexec(str(python))
    other = tmp_path / "bin"
    other.mkdir()
    _executable(other / "mpiexec", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(other))
    assert run.find_mpiexec(str(python)) == str(other / "mpiexec")
    _executable(venv / "mpiexec", "#!/bin/sh\n")
    assert run.find_mpiexec(str(python)) == str(venv / "mpiexec")


def test_launcher_passes_the_environment_and_returns_mpiexecs_status(tmp_path, monkeypatch):
    fake = _executable(tmp_path / "mpiexec", '#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT"\n'
                                              'env > "$OUT.env"\nexit 3\n')
    monkeypatch.setenv("OUT", str(tmp_path / "args"))
    monkeypatch.setenv("MY_SETTING", "kept")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    code = run.main(["-n", "2", "--mpiexec", str(fake), "train.py", "--epochs", "3"])
    assert code == 3
    assert (tmp_path / "args").read_text().split() == \
        ["-n", "2", sys.executable, "train.py", "--epochs", "3"]
    env = (tmp_path / "args.env").read_text().splitlines()
    assert "MY_SETTING=kept" in env and "OMP_NUM_THREADS=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_launcher_keeps_a_thread_count_that_is_set():
    env = run.child_environment(2, base={"OMP_NUM_THREADS": "4"})
    assert env["OMP_NUM_THREADS"] == "4"
    assert "OMP_NUM_THREADS" not in run.child_environment(1, base={})


# ------------------------------------------------------------------ without MPI


def test_import_dyngrad_does_not_import_mpi4py():
    code = ("import sys, dyngrad, dyngrad.distributed, dyngrad.nn.parallel; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_missing_extra_names_it(monkeypatch):
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    monkeypatch.setattr(process_group.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mpi4py" else object())
    assert dist.is_available() is False
    with pytest.raises(RuntimeError, match=r"needs mpi4py .* install the 'dist' extra "
                                           r"\(pip install -e '\.\[dist\]'"):
        dist.init_process_group("mpi")
    assert not dist.is_initialized()


def test_other_backends_are_refused_naming_mpi():
    with pytest.raises(ValueError, match="backend 'gloo' is not available: dyngrad.distributed "
                                         "runs on MPI only"):
        dist.init_process_group("gloo")


def test_without_a_group_everything_raises_torchs_error():
    msg = "Default process group has not been initialized"
    for call in (dist.get_rank, dist.get_world_size, lambda: dist.all_reduce(dg.ones(2)),
                 lambda: dist.barrier(),
                 lambda: nn.parallel.DistributedDataParallel(nn.Linear(2, 2))):
        with pytest.raises(ValueError, match=msg):
            call()
    assert dist.is_initialized() is False


def test_a_timeout_must_be_a_timedelta():
    with pytest.raises(TypeError, match="Expected timeout argument to be of type "
                                        "datetime.timedelta"):
        dist.init_process_group("mpi", timeout=30)


def test_abort_waits_until_mpiexec_has_read_what_the_rank_wrote(monkeypatch):
    """MPICH's mpiexec drops what a rank wrote and it had not read yet when the rank aborts
    the job: the traceback naming the error (and the program's last lines) went missing
    from time to time. A fake MPI records how much was unread when Abort came."""
    r, w = os.pipe()
    os.write(w, b"the traceback\n" * 100)
    unread_at_abort = []

    class World:
        def Abort(self, code):
            unread = array.array("i", [0])
            fcntl.ioctl(w, termios.FIONREAD, unread)
            unread_at_abort.append(unread[0])

    group = process_group.ProcessGroup.__new__(process_group.ProcessGroup)
    group.mpi = SimpleNamespace(COMM_WORLD=World())
    monkeypatch.setattr(process_group, "OUTPUT_FDS", (w,), raising=False)
    monkeypatch.setattr(os, "_exit", lambda code: None)
    reader = threading.Timer(0.3, lambda: os.read(r, 1 << 16))  # (mpiexec, a little late)
    reader.start()
    try:
        group.abort()
    finally:
        reader.join()
        os.close(r)
        os.close(w)
    assert unread_at_abort == [0]


# ------------------------------------------------------------------ SyncBatchNorm


def test_sync_batchnorm_without_a_process_group_is_batchnorm():
    dg.manual_seed(0)
    x = dg.randn(6, 4, 5)
    sync, plain = nn.SyncBatchNorm(4), nn.BatchNorm1d(4)
    assert np.array_equal(sync(x).detach().numpy(), plain(x).detach().numpy())
    assert np.array_equal(sync.running_var.numpy(), plain.running_var.numpy())


def test_convert_sync_batchnorm_replaces_batchnorm_keeping_its_tensors():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4),
                          nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 9 * 9)),
                          nn.InstanceNorm2d(4))
    model.eval()
    bn = model[1]
    out = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert out is model
    assert type(model[1]) is nn.SyncBatchNorm and type(model[2][1]) is nn.SyncBatchNorm
    assert type(model[3]) is nn.InstanceNorm2d
    assert model[1].weight is bn.weight and model[1].running_mean is bn.running_mean
    assert not model[1].training
    with pytest.raises(ValueError, match="expected at least 2D input"):
        nn.SyncBatchNorm(3)(dg.ones(3))
