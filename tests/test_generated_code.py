"""The compiler's generated code (compiler/generated.py): compiled once per source in a
process, and with the plan cache on, kept marshalled beside the plans so that a new process
restoring a variant does not compile its guards and call path again; an entry that does not
read back is compiled again, and a directory others may write to is not read."""

from __future__ import annotations

import os

import pytest

from compiler import generated
from compiler.backends.llvm import cache


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(d))
    monkeypatch.setenv("DYNGRAD_PLAN_CACHE", "1")
    monkeypatch.setattr(generated, "_codes", {})
    return d


def _run(source: str) -> int:
    ns: dict = {}
    generated.exec_generated(source, ns)
    return ns["f"]()


def test_the_code_is_kept_on_disk_and_read_back(cache_on, monkeypatch):
    src = "def f():\n    return 41 + 1\n"
    assert _run(src) == 42
    (entry,) = cache_on.glob("*.code")
    monkeypatch.setattr(generated, "_codes", {})  # (a new process)
    compiled = []
    real = compile
    monkeypatch.setattr("builtins.compile", lambda *a, **k: compiled.append(a) or real(*a, **k))
    assert _run(src) == 42
    assert compiled == []  # read back, not compiled
    assert generated.eval_generated("6 * 7", {}) == 42
    assert len(compiled) == 1  # (another source, another mode: compiled)


def test_an_entry_that_does_not_read_back_is_compiled_again(cache_on, monkeypatch):
    src = "def f():\n    return 7\n"
    assert _run(src) == 7
    (entry,) = cache_on.glob("*.code")
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0xFF  # (the checksum no longer holds)
    entry.write_bytes(bytes(data))
    assert cache._read(entry, generated._MAGIC) is None  # (rejected, and removed)
    monkeypatch.setattr(generated, "_codes", {})
    assert _run(src) == 7  # compiled again
    assert cache._read(entry, generated._MAGIC) is not None  # and kept again


def test_no_disk_entry_in_roundtrip_mode_or_a_shared_directory(cache_on, monkeypatch):
    monkeypatch.setenv("DYNGRAD_PLAN_CACHE", "roundtrip")
    assert _run("def f():\n    return 1\n") == 1
    assert list(cache_on.glob("*.code")) == []
    monkeypatch.setenv("DYNGRAD_PLAN_CACHE", "1")
    os.chmod(cache_on, 0o777)
    assert _run("def f():\n    return 2\n") == 2
    assert list(cache_on.glob("*.code")) == []


def test_clear_cache_removes_the_kept_code(cache_on):
    import compiler
    assert _run("def f():\n    return 3\n") == 3
    assert len(list(cache_on.glob("*.code"))) == 1
    assert compiler.clear_cache() == 1
    assert list(cache_on.glob("*.code")) == []
