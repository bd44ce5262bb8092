"""A large module compiled in parts at once (compiler/backends/llvm/split.py, farm.py,
worker.py): the parts are complete modules that together define every function once; the
code computes the bits the whole module's would; a worker that fails, or a module that
cannot be cut, leaves the module compiled whole; the disk cache stores and loads the
parts' objects."""

from __future__ import annotations

import re
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import cache, codegen, farm, jit, split
from dyngrad import nn, optim


@pytest.fixture
def no_disk(monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE", "0")
    monkeypatch.setattr(cache, "_memory", {})
    monkeypatch.setattr(cache, "_recent", type(cache._recent)())


def _model_step(seed: int = 0):
    dg.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(32, 5))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return model, step


def _train(workers: int, monkeypatch) -> tuple:
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", str(workers))
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    model, step = _model_step()
    cf = compiler.compile(step, backend="llvm")
    r = np.random.default_rng(1)
    losses = []
    for _ in range(4):
        x = dg.tensor(r.standard_normal((4, 3, 8, 8)).astype(np.float32))
        y = dg.tensor(r.integers(0, 5, 4))
        losses.append(cf(x, y).item())
    assert sum(v.calls for v in cf.variants) >= 2  # (the first call makes the momentum)
    return losses, [p.detach().numpy().copy() for p in model.parameters()], \
        [b.numpy().copy() for b in model.buffers()]


def test_a_step_compiled_in_parts_computes_the_bits_of_the_whole_module(no_disk,
                                                                         monkeypatch):
    before = dict(farm.stats)
    parted = _train(1, monkeypatch)
    assert farm.stats["split"] > before["split"]  # (it was cut, and not by falling back)
    assert farm.stats["fallbacks"] == before["fallbacks"]
    cache._memory.clear()
    cache._recent.clear()
    cut = farm.stats["split"]
    whole = _train(0, monkeypatch)
    assert farm.stats["split"] == cut  # (compiled whole)
    for a, b in zip(parted, whole):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def _module_text(monkeypatch) -> str:
    """The LLVM IR of a compiled training step's module."""
    texts = []
    real = jit.compile_ir

    def keep(text, **kw):
        texts.append(text)
        return real(text, **kw)
    monkeypatch.setattr(jit, "compile_ir", keep)
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "0")
    _, step = _model_step()
    cf = compiler.compile(step, backend="llvm")
    cf(dg.randn(4, 3, 8, 8), dg.tensor(np.arange(4)))
    cf(dg.randn(4, 3, 8, 8), dg.tensor(np.arange(4)))
    return max(texts, key=len)


def _defined(text: str) -> dict:
    return {m.group(2): m.group(1) for m in
            re.finditer(r"^define\s+([^@]*)@([\w.$]+)\(", text, re.MULTILINE)}


def test_the_parts_are_modules_that_define_every_root_once(no_disk, monkeypatch):
    text = _module_text(monkeypatch)
    whole = _defined(text)
    roots = {n for n, head in whole.items() if "internal" not in head.split()}
    parts = split.split(text, 3)
    assert parts is not None and len(parts) == 3
    jit.init()
    defined_roots: list = []
    for p in parts:
        mod = llvm.parse_assembly(jit.number_loop_metadata(p))
        mod.verify()  # (every symbol a part uses is defined or declared in it)
        here = _defined(p)
        defined_roots += [n for n, head in here.items() if "internal" not in head.split()]
    # each root once; functions called across parts are made visible in their one part
    assert sorted(set(defined_roots)) == sorted(defined_roots)
    assert roots <= set(defined_roots)
    sizes = [p.count("\n") for p in parts]
    assert max(sizes) < 0.8 * text.count("\n")  # (the driver's callees stay with their
    #                                               kernels: no part holds nearly everything)


def test_a_module_with_mutable_state_or_one_root_is_not_cut():
    state = ("@dg_sizes = internal global [2 x i64] zeroinitializer, align 8\n"
             "define void @a() {\nentry:\n  ret void\n}\n"
             "define void @b() {\nentry:\n  ret void\n}\n")
    assert split.split(state, 2) is None
    one = "define void @a() {\nentry:\n  ret void\n}\n"
    assert split.split(one, 2) is None
    two = one + "define void @b() {\nentry:\n  call void @a()\n  ret void\n}\n"
    parts = split.split(two, 2)
    assert parts is not None and sum("declare void @a()" in p for p in parts) == 1
    assert split.split(two, 1) is None


def test_a_failing_worker_leaves_the_module_compiled_whole(no_disk, monkeypatch, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.stdin.buffer.read(10)\nsys.exit(3)\n")
    real = farm.worker.__file__
    farm.shutdown()  # (workers already running would be used otherwise)
    before = dict(farm.stats)
    try:
        farm.worker.__file__ = str(broken)
        losses, params, _ = _train(1, monkeypatch)
    finally:
        farm.worker.__file__ = real
        farm.shutdown()
    assert farm.stats["fallbacks"] > before["fallbacks"]
    assert all(np.isfinite(losses))
    cache._memory.clear()
    cache._recent.clear()
    ref_losses, ref_params, _ = _train(0, monkeypatch)
    assert losses == ref_losses
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)


def test_objects_of_parts_are_stored_and_loaded_back_from_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(cache, "_memory", {})
    monkeypatch.setattr(cache, "_recent", type(cache._recent)())
    monkeypatch.setattr(cache, "_disabled", [])
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "1")
    text = ("define i32 @f(i32 %x) noinline {\nentry:\n  %y = add i32 %x, 1\n  ret i32 %y\n}\n"
            "define i32 @g(i32 %x) {\nentry:\n  %y = call i32 @f(i32 %x)\n"
            "  %z = mul i32 %y, 3\n  ret i32 %z\n}\n")
    import ctypes
    c1 = cache.load_or_compile(text)
    assert c1.object_code.startswith(b"DGPARTS1")
    cache._memory.clear()
    cache._recent.clear()
    hits = cache.stats["disk_hits"]
    c2 = cache.load_or_compile(text)
    assert cache.stats["disk_hits"] == hits + 1
    assert c2.cfunc("g", ctypes.c_int32, ctypes.c_int32)(4) == 15


def test_the_number_of_workers_is_checked(monkeypatch):
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "two")
    with pytest.raises(ValueError, match="DYNGRAD_COMPILE_WORKERS"):
        farm.workers_wanted()
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "0")
    assert farm.workers_wanted() == 0
    monkeypatch.delenv("DYNGRAD_COMPILE_WORKERS")
    assert 0 <= farm.workers_wanted() <= farm.MAX_WORKERS


def test_a_worker_runs_the_pipeline_of_this_process():
    """The worker script imports nothing of the compiler (it starts in milliseconds)."""
    import subprocess
    code = ("import runpy, sys; sys.argv=['w']; m = runpy.run_path(" +
            repr(farm.worker.__file__) + ", run_name='not_main'); "
            "print(sorted(k for k in sys.modules if k.startswith(('compiler', 'dyngrad', "
            "'numpy'))))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "[]"
    assert codegen is not None  # (codegen builds the modules the farm cuts)


def test_a_forked_child_starts_its_own_workers_and_leaves_its_parents(no_disk, monkeypatch):
    import os
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "1")
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    two = ("define i32 @f2(i32 %x) noinline {\nentry:\n  %y = add i32 %x, 2\n  ret i32 %y\n}\n"
           "define i32 @g2(i32 %x) {\nentry:\n  %y = call i32 @f2(i32 %x)\n  ret i32 %y\n}\n")
    jit.compile_ir(two)  # the parent's worker, started
    parent = list(farm._pool)
    assert parent
    pid = os.fork()
    if pid == 0:  # the child: compile (its own worker), then leave without atexit
        code = 1
        try:
            jit.compile_ir(two.replace("@f2", "@f3").replace("@g2", "@g3"))
            code = 0 if farm._pool and farm._pool[0] not in parent else 2
        finally:
            farm.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(w.proc.poll() is None for w in parent)  # (the parent's still serve it)
    before = farm.stats["split"]
    jit.compile_ir(two.replace("@f2", "@f4").replace("@g2", "@g4"))
    assert farm.stats["split"] == before + 1


_TWO = ("define i32 @f{k}(i32 %x) noinline {{\nentry:\n  %y = add i32 %x, {k}\n  ret i32 %y\n}}\n"
        "define i32 @g{k}(i32 %x) {{\nentry:\n  %y = call i32 @f{k}(i32 %x)\n  ret i32 %y\n}}\n")


def _g(compiled, k: int) -> int:
    import ctypes
    return compiled.cfunc(f"g{k}", ctypes.c_int32, ctypes.c_int32)(0)


def test_after_a_failed_compile_no_answer_is_taken_for_a_later_modules(monkeypatch):
    """A compile that fails in this process while a worker holds its other part, then a
    worker that times out: the modules after each get their own code (an answer left in a
    worker would otherwise be read as the next module's part)."""
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "2")
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    bad = _TWO.format(k=100) + "define i32 @h100(i32 %x) {\nentry:\n  ret i32 %oops\n}\n"
    with pytest.raises(RuntimeError):  # (the LLVM parse error of the in-process part)
        jit.compile_ir(bad)
    assert _g(jit.compile_ir(_TWO.format(k=2)), 2) == 2
    assert _g(jit.compile_ir(_TWO.format(k=3)), 3) == 3
    monkeypatch.setattr(farm, "TIMEOUT_S", 0.0)
    before = farm.stats["fallbacks"]
    assert _g(jit.compile_ir(_TWO.format(k=4) + _TWO.format(k=40)), 4) == 4  # (whole)
    assert farm.stats["fallbacks"] == before + 1
    monkeypatch.setattr(farm, "TIMEOUT_S", 300.0)
    assert _g(jit.compile_ir(_TWO.format(k=5) + _TWO.format(k=50)), 50) == 50


def test_a_worker_that_stalls_mid_answer_is_dropped_at_the_deadline(monkeypatch, tmp_path):
    stall = tmp_path / "stall.py"
    stall.write_text("import sys, time\nsys.stdin.buffer.read(8)\n"
                     "sys.stdout.buffer.write(b'o'); sys.stdout.buffer.flush()\n"
                     "time.sleep(60)\n")
    real = farm.worker.__file__
    farm.shutdown()
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "1")
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    monkeypatch.setattr(farm, "TIMEOUT_S", 1.0)
    import time
    t = time.monotonic()
    try:
        farm.worker.__file__ = str(stall)
        assert _g(jit.compile_ir(_TWO.format(k=6) + _TWO.format(k=60)), 6) == 6
    finally:
        farm.worker.__file__ = real
        farm.shutdown()
    assert time.monotonic() - t < 20


def test_a_python_that_cannot_start_workers_compiles_in_the_process(monkeypatch):
    farm.shutdown()
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "1")
    monkeypatch.setattr(farm, "MIN_LINES", 0)
    monkeypatch.setattr(farm, "_unavailable", [])
    monkeypatch.setattr(sys, "executable", None)
    assert _g(jit.compile_ir(_TWO.format(k=7) + _TWO.format(k=70)), 7) == 7
    assert farm._unavailable  # remembered: not tried again in this process


def test_the_products_kernel_is_prepared_on_another_thread(monkeypatch):
    """gemm.prepare starts the kernel's compile on a thread (a graph with products calls it
    before its passes); library() then returns that kernel, and a failure in the thread is
    raised by library()'s own call, not lost."""
    import threading

    from compiler.backends.llvm import gemm
    monkeypatch.setattr(gemm, "_libraries", {})
    started = []
    real_thread = threading.Thread

    def spy(*a, **kw):
        t = real_thread(*a, **kw)
        if t.name.startswith("dyngrad-gemm"):
            started.append(t)
        return t
    monkeypatch.setattr(threading, "Thread", spy)
    gemm.prepare("float")
    gemm.prepare("float")  # (under way: no second thread)
    assert len(started) == 1
    started[0].join(timeout=120)
    lib = gemm.library("float")
    assert gemm.library("float") is lib
    gemm.prepare("float")  # (made: no thread)
    assert len(started) == 1

    def broken(*a, **kw):
        raise RuntimeError("no kernel today")
    monkeypatch.setattr(gemm, "_libraries", {})
    monkeypatch.setattr(gemm.cache, "load_or_compile", broken)
    gemm.prepare("double")
    started[-1].join(timeout=60)
    with pytest.raises(RuntimeError, match="no kernel today"):
        gemm.library("double")


def test_a_large_graph_starts_the_workers_before_its_module_reaches_llvm(monkeypatch):
    """``runner.compile_graph`` of a graph of ``PRESTART_NODES`` nodes or more starts the
    workers (``farm.prestart``) before the fusion, layout and IR that come before LLVM;
    none when workers are off; a smaller graph starts none."""
    from compiler.backends.llvm import runner
    started = []
    monkeypatch.setattr(farm, "_workers", lambda n: started.append(n) or [])
    from compiler import ir
    from dyngrad.ops import REGISTRY
    g = ir.Graph()
    x = g.add_input((3,), dg.float32, "x")
    g.outputs = [g.add_node(REGISTRY["exp"], [x], {}, (3,), dg.float32)]
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "1")
    runner.compile_graph(g)
    assert started == []  # (a small graph)
    monkeypatch.setattr(farm, "PRESTART_NODES", 1)
    monkeypatch.setattr(farm, "_unavailable", [])
    runner.compile_graph(g)
    assert started == [1]
    monkeypatch.setenv("DYNGRAD_COMPILE_WORKERS", "0")
    runner.compile_graph(g)
    assert started == [1]
