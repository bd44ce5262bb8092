"""Both cores for big kernels (compiler/backends/llvm/threads.py): the blocks of a
reduction or an elementwise kernel split across the pool's threads have boundaries fixed by
the size alone, so the result is the same bits with 1, 2 or 3 threads, and without the pool
at all; the pool runs every part of every job exactly once, whoever takes it, and a caller
never waits for a thread that has not started."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import codegen, threads
from compiler.passes.fusion import fuse

ROOT = Path(__file__).resolve().parents[1]
N = threads.PAR_MIN * 2 + 12345  # several blocks, a partial last block and a remainder

CODE = textwrap.dedent(f"""
    import hashlib, numpy as np, dyngrad as dg, compiler
    x = dg.tensor(np.random.default_rng(0).standard_normal({N}).astype(np.float32),
                  requires_grad=True)
    def step(x):
        x.grad = None
        loss = ((x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()).sum()
        loss.backward()
        return loss
    def elementwise(x):  # a big elementwise kernel, split in blocks across threads
        return (x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()
    cf, ce = compiler.compile(step, backend="llvm"), compiler.compile(elementwise)
    with dg.no_grad():
        for _ in range(3):
            y = ce(x)
    for _ in range(3):
        loss = cf(x)
    h = hashlib.sha256(loss.detach().numpy().tobytes() + x.grad.numpy().tobytes()
                       + y.numpy().tobytes())
    print(h.hexdigest(), repr(loss.item()))
""")


def _run(env_extra: dict, tmp_path) -> tuple:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DYNGRAD_CACHE_DIR=str(tmp_path), **env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300).stdout.split()
    return out[0], float(out[1])


def test_a_big_reduction_gives_the_same_bits_with_any_number_of_threads(tmp_path):
    runs = {name: _run(env, tmp_path / name) for name, env in {
        "one thread (no runtime)": {"DYNGRAD_THREADS": "1"},
        "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
        "OMP_NUM_THREADS=2": {"OMP_NUM_THREADS": "2"},
        "OMP_NUM_THREADS=3": {"OMP_NUM_THREADS": "3"},
    }.items()}
    assert len({h for h, _ in runs.values()}) == 1, runs
    # and the number is eager's, to float32 rounding
    x = np.random.default_rng(0).standard_normal(N).astype(np.float32)
    t = dg.tensor(x)
    eager = ((t * 1.5 + 0.5).tanh() * t.sigmoid() - (-t * t).exp()).sum().item()
    (_, loss), *_ = runs.values()
    assert abs(loss - eager) <= 1e-5 * np.abs(x).sum()


def test_the_reduction_kernel_uses_the_pool_when_present(monkeypatch):
    if threads.find() is None:
        pytest.skip("no thread pool on this platform")
    x = dg.randn(N)
    cf = compiler.compile(lambda x: (x * x).sum(), backend="interp")
    cf(x)
    cf(x)
    g = cf.variants[0].trace.graph
    (grp,) = [gr for gr in fuse(g) if gr.kind == "reduce"]
    text, _, _ = codegen.reduce_kernel(g, grp)
    assert "@dg_parallel" in text and "_blocks" in text
    monkeypatch.setenv("DYNGRAD_THREADS", "1")
    monkeypatch.setattr(threads, "_found", [])
    text1, _, _ = codegen.reduce_kernel(g, grp)
    assert "@dg_parallel" not in text1 and "_blocks(ptr %ctx, i64 0, i64 1)" in text1


def test_small_reductions_stay_on_one_thread():
    x = dg.randn(1000)
    cf = compiler.compile(lambda x: (x * x).sum(), backend="interp")
    cf(x)
    cf(x)
    g = cf.variants[0].trace.graph
    (grp,) = [gr for gr in fuse(g) if gr.kind == "reduce"]
    assert "dg_parallel" not in codegen.reduce_kernel(g, grp)[0]
    assert hashlib  # (imported for the subprocess code's sake)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_runs_big_kernels_on_one_thread_with_the_same_bits(tmp_path):
    code = textwrap.dedent(f"""
        import os, numpy as np, dyngrad as dg, compiler
        x = dg.tensor(np.random.default_rng(0).standard_normal({N}).astype(np.float32))
        f = compiler.compile(lambda x: ((x * 1.5).tanh() * x).sum())
        for _ in range(3):
            r = f(x)
        print(r.numpy().tobytes().hex(), flush=True)
        pid = os.fork()
        if pid == 0:  # the pool's threads do not survive fork: the child must not hang
            print(f(x).numpy().tobytes().hex(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DYNGRAD_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert len(out) == 2 and out[0] == out[1]


POOL_KERNEL = threads.DECLARATIONS + """
declare i64 @syscall(i64, ...)
define void @k_blocks(ptr %ctx, i64 %i, i64 %n) {
entry:
  %tid = call i64 (i64, ...) @syscall(i64 186)
  %slot = getelementptr i64, ptr %ctx, i64 %i
  %c = load i64, ptr %slot
  %c1 = add i64 %c, 1
  store i64 %c1, ptr %slot
  %w = add i64 %i, 4096
  %who = getelementptr i64, ptr %ctx, i64 %w
  store i64 %tid, ptr %who
  %spin = mul i64 %i, 0
  br label %loop
loop:
  %k = phi i64 [0, %entry], [%k1, %loop]
  %k1 = add i64 %k, 1
  %z = getelementptr i64, ptr %ctx, i64 8192
  store volatile i64 %k1, ptr %z
  %more = icmp slt i64 %k1, 2000
  br i1 %more, label %loop, label %exit
exit:
  ret void
}
define void @run(ptr %ctx, i64 %n) {
entry:
  call void @dg_parallel(ptr @k_blocks, ptr %ctx, i64 %n)
  ret void
}
"""


def _pool_runner():
    import ctypes

    from compiler.backends.llvm import jit
    if threads.find() is None:
        pytest.skip("no thread pool on this platform")
    compiled = jit.compile_ir(POOL_KERNEL)  # (kept alive by the closure: its code runs)
    run = compiled.cfunc("run", None, ctypes.c_void_p, ctypes.c_int64)

    def job(parts: int, keep=compiled) -> np.ndarray:
        buf = np.zeros(8193, np.int64)  # per part: its run count, then the thread's id
        run(buf.ctypes.data, parts)
        return buf
    return job


def test_the_pool_runs_every_part_of_every_job_exactly_once():
    job = _pool_runner()
    rng = np.random.default_rng(0)
    for parts in [1, 2, 3, 64, 1000, *rng.integers(1, 300, 200)]:
        buf = job(int(parts))
        assert (buf[:parts] == 1).all() and not buf[parts:4096].any(), parts


def test_the_pool_spreads_parts_over_its_threads():
    job = _pool_runner()
    if threads.team_size() < 2:
        pytest.skip("one CPU: a team of one")
    seen: set = set()
    deadline = time.monotonic() + 10.0  # (on a busy machine the caller may take every part
    while len(seen) < 2 and time.monotonic() < deadline:  # of many jobs: keep asking)
        buf = job(256)
        seen |= set(buf[4096:4096 + 256].tolist())
    assert len(seen) >= 2


def test_jobs_from_several_python_threads_at_once_all_complete():
    """One job at a time in the pool: a caller finding it busy runs its parts alone."""
    import threading
    job = _pool_runner()
    errors = []

    def worker():
        for parts in (5, 50, 500) * 20:
            buf = job(parts)
            if not (buf[:parts] == 1).all():
                errors.append(parts)
    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in ts)


POOL_FORK = textwrap.dedent("""
    import os, ctypes, numpy as np
    from compiler.backends.llvm import jit, threads
    import test_llvm_threads as T
    assert threads.find() is not None  # (the pool's symbols, before a module calls them)
    compiled = jit.compile_ir(T.POOL_KERNEL)
    run = compiled.cfunc("run", None, ctypes.c_void_p, ctypes.c_int64)
    buf = np.zeros(8193, np.int64)
    run(buf.ctypes.data, 100)
    pid = os.fork()
    if pid == 0:
        threads._on.value = 4  # a team of four, and no worker at all (none survived)
        buf = np.zeros(8193, np.int64)
        run(buf.ctypes.data, 100)
        print("child", int((buf[:100] == 1).all()), len(set(buf[4096:4196].tolist())),
              flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_caller_never_waits_for_a_thread_that_has_not_started():
    """A team of four with no worker running (a forked child): the caller takes every part
    and returns — a job never waits for threads, only for parts they took."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    out = subprocess.run([sys.executable, "-c", POOL_FORK], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["child", "1", "1"]


TEAM_CODE = textwrap.dedent("""
    from compiler.backends.llvm import threads
    threads.find()
    print(threads._on.value, threads.team_size(), len(threads._workers) - 1)
""")


@pytest.mark.parametrize("env", [{}, {"OMP_NUM_THREADS": "3"}, {"OMP_NUM_THREADS": "1"}])
def test_the_team_size_is_the_processes_own(env):
    """Kernels use ``team_size()`` threads: OMP_NUM_THREADS when set, else the CPUs the
    process may use; the pool starts one worker fewer (the caller is the first)."""
    run_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run_env.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", TEAM_CODE], env=run_env, cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=120).stdout.split()
    on, size, workers = map(int, out)
    want = int(env["OMP_NUM_THREADS"]) if env else len(os.sched_getaffinity(0))
    assert on == size == want and workers == want - 1


def test_the_pool_s_generation_wraps_without_losing_a_job():
    """The ticket holds the job's generation in 32 bits; after 2^32 - 1 jobs it wraps to 1
    (never 0: the generation of no job). A copy of the pool's IR started two jobs before
    the wrap runs every part of the jobs across it (found in review: it used to hang)."""
    import ctypes

    from compiler.backends.llvm import jit
    if threads.find() is None:
        pytest.skip("no thread pool on this platform")
    near = (0xFFFFFFFE << 32)
    ir = (threads.POOL_IR.replace("@dg_pool_ticket = internal global i64 0",
                                  f"@dg_pool_ticket = internal global i64 {near}")
          .replace("@dg_parallel", "@wrap_parallel")
          .replace("@dg_pool_worker", "@wrap_pool_worker"))
    kernel = (POOL_KERNEL.replace(threads.DECLARATIONS, "")
              .replace("declare i64 @syscall(i64, ...)\n", "")
              .replace("@dg_parallel", "@wrap_parallel"))
    compiled = jit.compile_ir(ir + kernel)  # (no workers: the caller takes every part)
    run = compiled.cfunc("run", None, ctypes.c_void_p, ctypes.c_int64)
    counts = []

    def jobs():  # (in a thread: a pool that lost its job would hang here, not the suite)
        for _ in range(4):
            buf = np.zeros(8193, np.int64)
            run(buf.ctypes.data, 7)
            counts.append(buf[:7].tolist())
    import threading
    t = threading.Thread(target=jobs, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "a job across the wrap never finished"
    assert counts == [[1] * 7] * 4


def test_workers_have_stacks_for_the_kernels_whatever_the_program_set():
    """Kernels keep buffers on the stack (gemm's packed panels: ~160 KiB); a program that
    set a small ``threading.stack_size`` before the pool started must not crash it."""
    code = textwrap.dedent("""
        import threading
        threading.stack_size(128 * 1024)
        import numpy as np, dyngrad as dg, compiler
        x = dg.tensor(np.ones((256, 256), np.float32))
        f = compiler.compile(lambda a, b: a @ b, backend="llvm")
        for _ in range(3):
            y = f(x, x)
        print(float(y.numpy()[0, 0]))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["256.0"]
