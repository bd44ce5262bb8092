"""Both cores for big kernels (compiler/backends/llvm/threads.py): the blocks of a
reduction or an elementwise kernel split across OpenMP threads have boundaries fixed by the
size alone, so the result is the same bits with 1, 2 or 3 threads, and without the threading
runtime at all."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
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


def test_the_reduction_kernel_uses_the_runtime_when_present(monkeypatch):
    if threads.find() is None:
        pytest.skip("no libgomp on this machine")
    x = dg.randn(N)
    cf = compiler.compile(lambda x: (x * x).sum(), backend="interp")
    cf(x)
    cf(x)
    g = cf.variants[0].trace.graph
    (grp,) = [gr for gr in fuse(g) if gr.kind == "reduce"]
    text, _, _ = codegen.reduce_kernel(g, grp)
    assert "@GOMP_parallel" in text and "_blocks" in text
    monkeypatch.setenv("DYNGRAD_THREADS", "1")
    monkeypatch.setattr(threads, "_found", [])
    text1, _, _ = codegen.reduce_kernel(g, grp)
    assert "@GOMP_parallel" not in text1 and "_blocks(ptr %ctx, i64 0, i64 1)" in text1


def test_small_reductions_stay_on_one_thread():
    x = dg.randn(1000)
    cf = compiler.compile(lambda x: (x * x).sum(), backend="interp")
    cf(x)
    cf(x)
    g = cf.variants[0].trace.graph
    (grp,) = [gr for gr in fuse(g) if gr.kind == "reduce"]
    assert "GOMP" not in codegen.reduce_kernel(g, grp)[0]
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
        if pid == 0:  # libgomp's pool does not survive fork: the child must not hang
            print(f(x).numpy().tobytes().hex(), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DYNGRAD_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert len(out) == 2 and out[0] == out[1]


TEAM_CODE = textwrap.dedent("""
    import ctypes, sys
    from compiler.backends.llvm import jit, threads
    lib = threads.find()
    if sys.argv[1] == "lowered":  # another library sharing the runtime lowers its default
        ctypes.CDLL(lib).omp_set_num_threads(1)  # (as torch.set_num_threads(1) does)
    ir = (threads.DECLARATIONS + '''
    define void @k_omp(ptr %ctx) {
      %n = call i32 @omp_get_num_threads()
      store i32 %n, ptr %ctx
      ret void
    }
    define void @k_blocks(ptr %ctx, i64 %a, i64 %b) {
      store i32 -1, ptr %ctx
      ret void
    }
    define void @run(ptr %ctx) {
    entry:
    ''' + threads.split_call("k") + '''
      ret void
    }
    ''')
    c = jit.compile_ir(ir)
    seen = ctypes.c_int32(0)
    c.cfunc("run", None, ctypes.c_void_p)(ctypes.addressof(seen))
    print(seen.value, threads.team_size())
""")


@pytest.mark.skipif(threads.find() is None, reason="no OpenMP runtime (libgomp) here")
@pytest.mark.parametrize("case,env", [("default", {}), ("lowered", {}),
                                      ("default", {"OMP_NUM_THREADS": "3"})])
def test_the_team_size_is_the_processes_own_not_the_runtimes_current_default(case, env):
    """Kernels ask for ``team_size()`` threads explicitly: OMP_NUM_THREADS when set, else the
    CPUs the process may use — a library lowering the shared runtime's default (PyTorch's
    ``set_num_threads(1)``) does not put dyngrad's kernels on one thread."""
    run_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    run_env.update(PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", TEAM_CODE, case], env=run_env, cwd=ROOT,
                         check=True, capture_output=True, text=True, timeout=120).stdout.split()
    seen, size = int(out[0]), int(out[1])
    want = 3 if env else len(os.sched_getaffinity(0))
    assert size == want and seen == want, (seen, size)
