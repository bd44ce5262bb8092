"""The machine the LLVM backend generates code for (compiler/backends/llvm/target.py) and the
loop vector width decided on it (widths.py): behaviour on whatever CPU runs the tests, and on
the CPUs DYNGRAD_TARGET emulates — never an assumption about the CPU a test was written on."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import llvmlite.binding as llvm
import numpy as np
import pytest
from conftest import packed_bits

import compiler
import dyngrad as dg
from compiler.backends.llvm import cache, choices, jit, target, widths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = """
define void @scale(ptr noalias %x, ptr noalias %y, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr float, ptr %x, i64 %i
  %py = getelementptr float, ptr %y, i64 %i
  %v = load float, ptr %px
  %m = fmul float %v, 3.0
  store float %m, ptr %py
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %exit
exit:
  ret void
}
"""


@pytest.fixture
def retarget(monkeypatch, tmp_path):
    """Set DYNGRAD_TARGET / DYNGRAD_VECTOR_WIDTH for one test (a fresh cache directory; the
    resolved target is forgotten before and after)."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_memory", {})
    monkeypatch.setattr(widths, "_decisions", {})

    def set_target(spec: str | None = None, width: str | None = None) -> target.Target:
        for var, value in ((target.ENV, spec), (target.WIDTH_ENV, width)):
            if value is None:
                monkeypatch.delenv(var, raising=False)
            else:
                monkeypatch.setenv(var, value)
        target.reset()
        return target.current()

    yield set_target
    monkeypatch.undo()
    target.reset()


def host_lacks() -> str | None:
    """A feature LLVM knows and this CPU does not have (None if it has them all)."""
    return next((f for f, on in sorted(llvm.get_host_cpu_features().items()) if not on), None)


def run_kernel(compiled) -> np.ndarray:
    import ctypes
    f = compiled.cfunc("scale", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    x = np.arange(100, dtype=np.float32)
    y = np.empty_like(x)
    f(x.ctypes.data, y.ctypes.data, x.size)
    return y


# ------------------------------------------------------------------ the host


def test_the_default_target_is_the_host_with_every_feature_it_reports(retarget):
    t = retarget()
    assert not t.emulated and t.cpu == t.host == llvm.get_host_cpu_name()
    host = llvm.get_host_cpu_features()
    for f, on in host.items():
        assert (f"+{f}" if on else f"-{f}") in t.features.split(",")
    assert t.vector_bits in (128, 256, 512)
    assert t.vector_bits == (512 if host.get("avx512f") else 256 if host.get("avx") else 128)
    assert t.fma == bool(host.get("fma"))


def test_the_probe_reads_the_hosts_registers_and_fma_as_its_features_say(retarget):
    t = retarget()
    host = llvm.get_host_cpu_features()
    positive = ",".join(f"+{f}" if on else f"-{f}" for f, on in host.items())
    assert target._probe(t.host, positive, "host") == (t.vector_bits, t.fma)


def test_describe_names_the_cpu_the_vectors_and_how_the_width_was_chosen(retarget):
    t = retarget()
    text = t.describe()
    assert t.cpu in text and f"{t.vector_bits}-bit vectors" in text
    assert f"loops {t.loop_bits}-bit" in text and t.width_how in text


def test_explain_says_which_target_the_code_was_built_for(capsys):
    cf = compiler.compile(lambda x: (x * 2).sum(), backend="llvm")
    ex = compiler.explain(cf, dg.ones(8))
    assert ex.target == target.current().describe()
    assert f"native code for: {ex.target}" in capsys.readouterr().out


# ------------------------------------------------------------------ emulated CPUs


def test_an_avx2_only_target_uses_256_bit_vectors_and_runs_here(retarget):
    t = retarget("x86-64-v3")
    assert t.emulated and t.cpu == "x86-64-v3" and t.vector_bits == 256 and t.fma
    assert t.loop_bits == 256 and t.width_how == "the target's widest"
    assert max(packed_bits(jit.assembly(KERNEL), "mulps")) == 256
    np.testing.assert_array_equal(run_kernel(jit.compile_ir(KERNEL)),
                                  3 * np.arange(100, dtype=np.float32))


def test_an_emulated_target_never_gets_a_feature_the_host_lacks(retarget):
    lacking = host_lacks()
    if lacking is None:
        pytest.skip("this CPU has every feature LLVM knows")
    t = retarget("x86-64-v3")
    assert f"-{lacking}" in t.features.split(",")
    assert f"+{lacking}" not in t.features.split(",")


def test_a_feature_can_be_turned_off(retarget):
    t = retarget("x86-64-v3:-fma")
    assert not t.fma and "-fma" in t.features.split(",")
    assert "vfmadd" not in jit.assembly(KERNEL)


def test_asking_for_a_feature_the_host_lacks_is_an_error_naming_it(retarget):
    lacking = host_lacks()
    if lacking is None:
        pytest.skip("this CPU has every feature LLVM knows")
    with pytest.raises(target.TargetError, match=f"has no '{lacking}'.*could not run here"):
        retarget(f"x86-64-v3:+{lacking}")


@pytest.mark.parametrize("spec, message", [
    ("not-a-cpu", "not a recognized processor"),
    ("x86-64-v3:+not-a-feature", "not a recognized feature"),
    ("pentium4", "64-bit code"),  # known to LLVM, 32-bit only: LLVM would abort the process
    ("x86-64-v3:fma", "is not '\\+name' or '-name'"),
])
def test_a_target_llvm_cannot_serve_is_a_clear_error_not_a_crash(retarget, spec, message):
    with pytest.raises(target.TargetError, match=message) as info:
        retarget(spec)
    assert target.ENV in str(info.value)


def test_the_target_is_resolved_again_after_reset(retarget):
    assert retarget("x86-64-v3").cpu == "x86-64-v3"
    assert not retarget().emulated


# ------------------------------------------------------------------ the loop width


def avx512_or_skip(t):
    if t.vector_bits != 512:
        pytest.skip("the target has no 512-bit vectors: one loop width, nothing to decide")


def test_on_avx512_the_loop_width_is_measured_once_and_kept_per_machine(retarget, tmp_path,
                                                                        monkeypatch):
    t = retarget()
    avx512_or_skip(t)
    assert t.loop_bits in (256, 512) and t.width_how.startswith("measured")
    stored = json.loads((tmp_path / widths.FILE).read_text())
    entry = stored[t.machine_key()][widths.KEY]
    assert entry["bits"] == t.loop_bits
    assert set(entry) >= {f"{c}_us" for c in widths.CLASSES}
    # a new process (this one, its decisions forgotten) reads it back without measuring
    monkeypatch.setattr(widths, "_decisions", {})
    monkeypatch.setattr(widths, "measure", lambda t: pytest.fail("measured again"))
    assert retarget().loop_bits == t.loop_bits


@pytest.mark.parametrize("ratios, bits", [
    ((0.8, 0.8, 0.8), 512), ((1.0, 1.0, 1.0), 512),  # a tie: the wider vectors
    ((1.02, 1.02, 1.02), 512), ((1.2, 1.1, 1.05), 256),
    ((0.6, 1.2, 1.2), 512),  # the geometric mean decides: 0.94
])
def test_the_width_follows_the_geometric_mean_of_the_measured_ratios(ratios, bits):
    seconds = {}
    for c, r in zip(widths.CLASSES, ratios):
        seconds[c, 256], seconds[c, 512] = 1e-5, r * 1e-5
    decision = widths.choose(seconds)
    assert decision["bits"] == bits
    assert decision["ratio"] == pytest.approx(np.prod(ratios) ** (1 / 3), abs=1e-4)


def test_a_forced_width_is_used_and_an_impossible_one_refused(retarget):
    t = retarget()
    avx512_or_skip(t)
    for bits in (256, 512):
        t = retarget(width=str(bits))
        assert t.loop_bits == bits and t.width_how == target.WIDTH_ENV
        assert max(packed_bits(jit.assembly(KERNEL), "mulps")) == bits
    with pytest.raises(target.TargetError, match="256-bit vectors at most"):
        retarget("x86-64-v3", width="512")
    for bad in ("wide", "128"):
        with pytest.raises(target.TargetError, match="expected 256 or 512"):
            retarget(width=bad)


def test_the_loop_width_never_changes_a_result(retarget):
    """Elementwise math, vecmath polynomials, reductions and matmuls give the same bits with
    256- and 512-bit loops (no fast-math; reductions fold fixed 16-lane vectors)."""
    avx512_or_skip(retarget())
    rng = np.random.default_rng(0)
    x = dg.tensor(rng.standard_normal((64, 300)).astype(np.float32))
    w = dg.tensor(rng.standard_normal((300, 40)).astype(np.float32))

    def f(x, w):
        h = dg.tanh(x * 1.5 + 0.5) * dg.sigmoid(x) - dg.exp(-x * x)
        return (h @ w).relu().sum(1), h.sum(), (h * h).amax(0)

    results = []
    for bits in ("256", "512"):
        retarget(width=bits)
        cf = compiler.compile(f, backend="llvm")
        results.append([r.numpy().copy() for r in cf(x, w)])
        assert cf.variants and not cf.fallbacks
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ------------------------------------------------------------------ the disk cache


def test_a_cache_entry_made_for_one_target_is_never_loaded_for_another(retarget):
    retarget()
    cache.load_or_compile(KERNEL)
    compiled, hits = cache.stats["compiled"], cache.stats["disk_hits"]
    cache._memory.clear()
    y = run_kernel(cache.load_or_compile(KERNEL))  # same target: from disk
    assert cache.stats["disk_hits"] == hits + 1
    retarget("x86-64-v3")
    cache._memory.clear()
    z = run_kernel(cache.load_or_compile(KERNEL))  # another target: compiled anew
    assert cache.stats["compiled"] == compiled + 1 and cache.stats["disk_hits"] == hits + 1
    np.testing.assert_array_equal(y, z)


def test_clear_cache_forgets_the_width_decision(retarget, tmp_path):
    t = retarget()
    avx512_or_skip(t)
    assert (tmp_path / widths.FILE).exists()
    compiler.clear_cache()
    assert not (tmp_path / widths.FILE).exists() and not widths._decisions


def test_decision_files_ignore_junk_and_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    (tmp_path / "x.json").write_text("{not json")
    assert choices.load("x.json") == {}
    choices.store("x.json", "m1", "k", {"a": 1})
    choices.store("x.json", "m2", "k", {"b": 2})
    assert choices.lookup("x.json", "m1", "k") == {"a": 1}
    assert choices.lookup("x.json", "m2", "k") == {"b": 2}
    assert choices.lookup("x.json", "m3", "k") is None


def test_a_misconfigured_target_in_a_fresh_process_raises_at_the_first_compile(tmp_path):
    """The error reaches the user at the first compiled call, naming the variable."""
    code = textwrap.dedent("""
        import dyngrad as dg, compiler
        f = compiler.compile(lambda x: x * 2, backend="llvm")
        try:
            f(dg.ones(3))
        except ValueError as exc:
            print("ERROR", exc)
        else:
            print("NO ERROR")
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, target.ENV: "not-a-cpu",
           "DYNGRAD_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" in proc.stdout and target.ENV in proc.stdout, proc.stdout + proc.stderr


def test_dataclass_is_frozen_and_hashable():
    t = target.base()
    assert hash(t) == hash(dataclasses.replace(t))
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.cpu = "x"
