"""Variants kept across processes (compiler/variantcache.py): a new process's first calls
restore a variant an earlier process traced, with the bits of a process that traced it
itself — and never when what the variant assumed differs in the new process.

Each case runs the same training program twice in fresh processes with one change: once
over a cache an unchanged program filled, once with no cache at all. The two must agree — to
the bit when both traced, to float32 rounding when one restored (its second call runs
compiled, where a trace returns eager's numbers) — and the change must change the result (or
the test could not fail). A change the
variant did not assume (the learning rate: a run-time input) is restored; every other one is
refused and traced again.

(The rest of the suite runs with ``DYNGRAD_PLAN_CACHE=roundtrip``: every variant it traces is
also kept, restored against the same objects and run in its place — see tests/conftest.py.)"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler import plancache, variantcache
from compiler.backends.llvm import cache

ROOT = Path(__file__).resolve().parents[1]

NETDEF = textwrap.dedent("""
    import dyngrad.nn as nn

    class Net(nn.Module):
        def __init__(self, scale, act, width, tied):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
            if tied:
                self.b.weight = self.a.weight
            self.c, self.bn = nn.Linear(6, width), nn.BatchNorm1d(width)
            self.d = nn.Linear(width, 3)
            self.drop = nn.Dropout(0.25)
            self.scale, self.act = scale, act

        def forward(self, x):
            h = self.act(self.b(self.a(x)))
            return self.d(self.drop(self.act(self.bn(self.c(h))))) * self.scale
""")

PROGRAM = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import numpy as np
    import dyngrad as dg, dyngrad.nn as nn, compiler
    import dyngrad.nn.functional as F
    from compiler import variantcache
    import netdef

    change = sys.argv[1]
    SCALE = 2.0 if change == "global" else 1.0
    dg.manual_seed(0)
    model = netdef.Net(scale=3.0 if change == "scale" else 2.0,
                       act=F.gelu if change == "act" else F.relu,
                       width=12 if change == "width" else 8, tied=change == "tied")
    if change == "dtype":
        model = model.double()
    if change == "eval":
        model.eval()
    opt = dg.optim.SGD(model.parameters(), lr=5e-2 if change == "lr" else 1e-2, momentum=0.9)
    x = dg.randn(5, 6, dtype=dg.float64 if change == "dtype" else dg.float32)
    y = dg.tensor(np.arange(5) % 3)

    @compiler.compile
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x) * SCALE, y)
        loss.backward()
        opt.step()
        return loss

    losses = [step(x, y).item() for _ in range(4)]
    state = [t.detach().numpy().tobytes().hex() for t in model.state_dict().values()]
    state.append(dg.get_rng_state().numpy().tobytes().hex())  # (dropout draws)
    print(json.dumps({"losses": [float(v).hex() for v in losses], "state": state,
                      "stats": variantcache.stats, "traced": sum(v.trace_seconds > 0
                                                                 for v in step.variants)}))
""")


def _run(tmp: Path, change: str, cache_dir: Path, netdef: str = NETDEF,
         keep: bool = True) -> dict:
    """The program with ``change`` in a new process, over ``cache_dir`` (``keep``: with the
    plan and variant caches; without, only the compiled code and the kernel decisions are
    read from it, so both runs make the same kernel choices)."""
    (tmp / "prog").mkdir(exist_ok=True)
    (tmp / "prog" / "netdef.py").write_text(netdef)
    (tmp / "prog" / "program.py").write_text(PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
           "DYNGRAD_PLAN_CACHE": "1" if keep else "0", "DYNGRAD_CACHE_DIR": str(cache_dir)}
    p = subprocess.run([sys.executable, str(tmp / "prog" / "program.py"), change,
                        str(tmp / "prog")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def filled(tmp_path_factory):
    """A cache filled by the unchanged program, and that program's result."""
    tmp = tmp_path_factory.mktemp("variants")
    base = _run(tmp, "none", tmp / "cache")
    assert base["stats"]["stored"] >= 1, base["stats"]
    return tmp, base


def _close(got: dict, want: dict) -> None:
    """Equal to float32 rounding: the restored process runs its second call compiled, where
    the one that traced returns the trace's (eager) numbers."""
    np.testing.assert_allclose([float.fromhex(v) for v in got["losses"]],
                               [float.fromhex(v) for v in want["losses"]], rtol=2e-6)
    assert got["state"][-1] == want["state"][-1], "the random state (dropout) must be equal"
    for a, b in zip(got["state"], want["state"], strict=True):
        x, y = bytes.fromhex(a), bytes.fromhex(b)
        if x != y:
            np.testing.assert_allclose(np.frombuffer(x, np.float32), np.frombuffer(y, np.float32),
                                       rtol=1e-5, atol=1e-6)


def _copy_cache(filled_dir: Path, tmp: Path, name: str = "cache") -> Path:
    import shutil
    dst = tmp / name
    shutil.copytree(filled_dir / "cache", dst)
    return dst


pytestmark = pytest.mark.xdist_group("variant_cache")


def test_a_new_process_restores_the_variant_with_the_same_bits(filled, tmp_path):
    src, base = filled
    again = _run(tmp_path, "none", _copy_cache(src, tmp_path))
    fresh = _run(tmp_path, "none", _copy_cache(src, tmp_path, "plain"), keep=False)
    assert again["stats"]["restored"] >= 1 and again["traced"] == 0, again["stats"]
    assert fresh["losses"] == base["losses"] and fresh["state"] == base["state"]
    _close(again, fresh)


def test_a_changed_learning_rate_is_a_runtime_input_restored(filled, tmp_path):
    src, base = filled
    got = _run(tmp_path, "lr", _copy_cache(src, tmp_path))
    want = _run(tmp_path, "lr", _copy_cache(src, tmp_path, "plain"), keep=False)
    assert got["stats"]["restored"] >= 1, got["stats"]
    assert got["state"] != base["state"]  # (the change shows)
    _close(got, want)


@pytest.mark.parametrize("change", ["scale", "act", "width", "tied", "dtype", "eval", "global"])
def test_a_changed_assumption_is_refused_and_traced(filled, tmp_path, change):
    """A module attribute's value, a function in a module's state, a parameter's shape,
    weight tying, the dtype, the training flag, a global the step reads."""
    src, base = filled
    got = _run(tmp_path, change, _copy_cache(src, tmp_path))
    want = _run(tmp_path, change, _copy_cache(src, tmp_path, "plain"), keep=False)
    assert got["losses"] != base["losses"] or got["state"] != base["state"]
    assert got["losses"] == want["losses"] and got["state"] == want["state"], change
    assert got["stats"]["restored"] == 0 and got["traced"] >= 1, got["stats"]


def test_changed_class_code_under_the_same_name_is_refused(filled, tmp_path):
    src, base = filled
    other = NETDEF.replace("* self.scale", "* self.scale * 1.5")
    got = _run(tmp_path, "none", _copy_cache(src, tmp_path), other)
    want = _run(tmp_path, "none", _copy_cache(src, tmp_path, "plain"), other, keep=False)
    assert got["losses"] != base["losses"]
    assert got["losses"] == want["losses"] and got["state"] == want["state"]
    assert got["stats"]["restored"] == 0, got["stats"]


def test_a_corrupt_or_foreign_manifest_is_never_used(filled, tmp_path):
    src, base = filled
    d = _copy_cache(src, tmp_path)
    files = list(d.glob("*.vars"))
    assert files
    marker = tmp_path / "ran"
    for f in files:  # a well-framed file whose manifest would run code if unpickled
        evil = pickle.dumps(_Evil(str(marker)))
        cache._write(f, plancache._dumps([plancache._dumps((evil, []))]), variantcache.MAGIC)
    got = _run(tmp_path, "none", d)
    assert not marker.exists()
    assert got["losses"] == base["losses"] and got["stats"]["restored"] == 0
    for f in files:  # and bytes that are no manifest at all
        f.write_bytes(b"garbage")
    got = _run(tmp_path, "none", d)
    assert got["losses"] == base["losses"] and got["stats"]["restored"] == 0


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_in_process_the_round_trip_restores_against_the_same_objects():
    """The suite's mode: a variant traced is kept, restored here and run in its place."""
    assert plancache.mode() == "roundtrip"
    w = dg.randn(3, 3, requires_grad=True)
    opt = dg.optim.SGD([w], lr=0.1)

    @compiler.compile(backend="llvm")
    def step(x):
        opt.zero_grad()
        loss = (x @ w).square().mean()
        loss.backward()
        opt.step()
        return loss

    before = dict(variantcache.stats)
    x = dg.randn(4, 3)
    w0 = w.detach().clone()
    for _ in range(3):
        step(x)
    assert variantcache.stats["restored"] > before["restored"]
    w1 = w0.clone().requires_grad_()
    ref = dg.optim.SGD([w1], lr=0.1)
    for _ in range(3):
        ref.zero_grad()
        (x @ w1).square().mean().backward()
        ref.step()
    np.testing.assert_allclose(w1.detach().numpy(), w.detach().numpy(), atol=1e-6)


def test_a_variant_that_replays_python_effects_is_not_kept():
    class Counter(dg.nn.Module):
        def __init__(self):
            super().__init__()
            self.h = dg.zeros(2)

        def forward(self, x):
            self.h = self.h + x  # (a store into Python state: replayed, not kept)
            return self.h.sum()

    m = Counter()
    cf = compiler.compile(m.forward, backend="llvm")
    before = variantcache.stats["unkept"]
    for _ in range(3):
        cf(dg.ones(2))
    assert variantcache.stats["unkept"] > before
    assert m.h.tolist() == [3.0, 3.0]
