"""The LLVM backend's compiled-module cache (compiler/backends/llvm/cache.py): object code on
disk keyed by IR, versions and CPU; invalid entries detected, removed and rebuilt — never
loaded; a second process skips LLVM."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.backends.llvm import cache, target

IR = """
define void @add1(ptr noalias %x, ptr noalias %y, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %loop]
  %px = getelementptr float, ptr %x, i64 %i
  %py = getelementptr float, ptr %y, i64 %i
  %v = load float, ptr %px
  %r = fadd float %v, 1.0
  store float %r, ptr %py
  %i.next = add i64 %i, 1
  %more = icmp slt i64 %i.next, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}
"""


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_memory", {})
    monkeypatch.setattr(cache, "_disabled", [])
    return d


def _ir(tag: str) -> str:  # a distinct module per test (the key is the IR text)
    return IR.replace("@add1", f"@add1_{tag}")


def _run(compiled, tag: str) -> np.ndarray:
    import ctypes
    fn = compiled.cfunc(f"add1_{tag}", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    x = np.arange(5, dtype=np.float32)
    y = np.empty_like(x)
    fn(x.ctypes.data, y.ctypes.data, 5)
    return y


def test_a_compiled_module_is_stored_and_loaded_back_without_llvm(fresh_cache):
    before = dict(cache.stats)
    c1 = cache.load_or_compile(_ir("a"))
    assert cache.stats["compiled"] == before["compiled"] + 1
    files = list(fresh_cache.glob("*.o"))
    assert len(files) == 1
    cache._memory.clear()  # as a new process would
    c2 = cache.load_or_compile(_ir("a"))
    assert cache.stats["disk_hits"] == before["disk_hits"] + 1
    assert c2.module is not c1.module
    np.testing.assert_array_equal(_run(c2, "a"), np.arange(5) + 1.0)


def test_the_directory_and_entries_are_private_to_the_user(fresh_cache):
    cache.load_or_compile(_ir("b"))
    assert stat.S_IMODE(os.stat(fresh_cache).st_mode) == 0o700
    for f in fresh_cache.glob("*.o"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "empty"])
def test_an_invalid_entry_is_never_loaded_but_removed_and_rebuilt(fresh_cache, damage):
    cache.load_or_compile(_ir(damage))
    (entry,) = fresh_cache.glob("*.o")
    data = entry.read_bytes()
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "flipped":
        data = data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:]
    elif damage == "foreign":
        data = b"ELF-not-ours" + data[12:]
    else:
        data = b""
    entry.write_bytes(data)
    cache._memory.clear()
    rejected, compiled = cache.stats["rejected"], cache.stats["compiled"]
    c = cache.load_or_compile(_ir(damage))
    assert cache.stats["rejected"] == rejected + 1 and cache.stats["compiled"] == compiled + 1
    np.testing.assert_array_equal(_run(c, damage), np.arange(5) + 1.0)
    assert cache._read(entry) is not None  # rebuilt, valid again


def test_the_key_changes_with_the_cpu_and_the_ir(fresh_cache, monkeypatch):
    k = cache.key(_ir("c"))
    assert cache.key(_ir("c2")) != k
    t = target.current()
    for other in (dataclasses.replace(t, cpu="some-other-cpu"),
                  dataclasses.replace(t, host="some-other-host"),
                  dataclasses.replace(t, features=t.features + ",-avx2")):
        monkeypatch.setattr(target, "current", lambda other=other: other)
        assert cache.key(_ir("c")) != k


def test_clear_cache_removes_every_entry(fresh_cache):
    cache.load_or_compile(_ir("d"))
    cache.load_or_compile(_ir("e"))
    choices = [fresh_cache / f for f in ("matmul-choices.json", "conv-choices.json")]
    for f in choices:  # the measured matmul kernels and convolution paths go too
        f.write_text("{}")
    assert compiler.clear_cache() == 2
    assert list(fresh_cache.glob("*.o")) == [] and not any(f.exists() for f in choices)


def test_an_unwritable_directory_turns_the_disk_cache_off_not_the_compiler(tmp_path,
                                                                           monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(cache, "_memory", {})
    monkeypatch.setattr(cache, "_disabled", [])
    c = cache.load_or_compile(_ir("f"))
    np.testing.assert_array_equal(_run(c, "f"), np.arange(5) + 1.0)
    assert cache._disabled  # and the reason is kept


def test_a_second_process_loads_the_compiled_step_from_disk(tmp_path):
    code = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, "benchmarks")
        from compile_overhead import w1
        import dyngrad as dg, compiler
        from compiler.backends.llvm import cache
        x, y = dg.randn(32, 16), dg.randn(32, 1)
        cf = compiler.compile(w1(), backend="llvm")
        for _ in range(3):
            cf(x, y)
        print(cache.stats["compiled"], cache.stats["disk_hits"])
    """)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DYNGRAD_CACHE_DIR=str(tmp_path / "c"), PYTHONPATH=str(root))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, timeout=300, check=True, cwd=root).stdout.split()
            for _ in range(2)]
    (compiled1, hits1), (compiled2, hits2) = [(int(a), int(b)) for a, b in runs]
    assert compiled1 >= 1 and hits1 == 0
    assert compiled2 == 0 and hits2 == compiled1
