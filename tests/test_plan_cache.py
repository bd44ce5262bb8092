"""The plan cache (compiler/plancache.py): a new process that traces a graph an earlier one
compiled takes the passes' and the backend's work from disk — with the bits of a process that
did it all itself; an entry that is corrupt, made under other decisions, whose compiled module
is gone, or that holds anything but the compiler's own classes is never used; a driver plan
restored has everything a plan made here has.

(The rest of the suite runs with ``DYNGRAD_PLAN_CACHE=roundtrip``: every plan it compiles is
pickled and restored, and the restored copy runs — see tests/conftest.py.)"""

from __future__ import annotations

import io
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
from compiler import plancache
from compiler.backends.llvm import cache

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("plan_cache")  # (one worker makes `first`, once)

# A training step with convolutions, BatchNorm (buffers written back), pooling, a linear
# layer, Adam: every kind of kernel the driver runs, optimizer state and write-backs.
STEP = textwrap.dedent("""
    import json, sys
    import numpy as np
    import dyngrad as dg, dyngrad.nn as nn, compiler
    from compiler import plancache
    width = int(sys.argv[1])
    dg.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 16, 10))
    opt = dg.optim.Adam(model.parameters(), lr=1e-2)
    x = dg.randn(4, 3, 8, 8)
    y = dg.tensor(np.arange(4) % 10)

    @compiler.compile
    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    losses = [step(x, y).item() for _ in range(5)]
    state = [p.detach().numpy().tobytes().hex() for p in model.state_dict().values()]
    print(json.dumps({"losses": [float(v).hex() for v in losses], "state": state,
                      "stats": plancache.stats, "variants": len(step.variants),
                      "passes_s": [v.compile_seconds for v in step.variants]}))
""")


@pytest.fixture(autouse=True)
def _plans_alone(monkeypatch):
    """Plans, not variants (tests/test_variant_cache.py): with the variant cache a new
    process would not trace, and its second call would run compiled where one that traced
    returns the trace's (eager) numbers — not the bits these tests compare."""
    monkeypatch.setenv("DYNGRAD_VARIANT_CACHE", "0")


def _process(cache_dir: Path, width: int = 4, mode: str = "1") -> dict:
    env = dict(os.environ, DYNGRAD_CACHE_DIR=str(cache_dir), DYNGRAD_PLAN_CACHE=mode,
               PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", STEP, str(width)], capture_output=True,
                         text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_run(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"]
    assert a["state"] == b["state"]
    assert a["variants"] == b["variants"]


@pytest.fixture(scope="session")
def first(tmp_path_factory):
    """A cache directory a first process filled, with that process's results."""
    d = tmp_path_factory.mktemp("plans")
    return d, _process(d)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_new_process_takes_the_plan_with_the_bits_of_one_that_compiled(first, tmp_path):
    d, one = first
    assert one["stats"]["stored"] >= 1 and one["stats"]["hits"] == 0
    two = _process(_copy(d, tmp_path / "c"))
    assert two["stats"]["hits"] == one["stats"]["stored"] and two["stats"]["stored"] == 0
    assert two["stats"]["plans"] == two["variants"]  # (each variant's driver plan restored)
    _same_run(one, two)
    # and a process without the cache computes the same
    _same_run(one, _process(tmp_path / "none", mode="0"))
    assert not list((tmp_path / "none").glob("*.plan"))


def test_another_graph_is_another_key(first, tmp_path):
    d, one = first
    other = _process(_copy(d, tmp_path / "c"), width=5)
    assert other["stats"]["hits"] == 0 and other["stats"]["stored"] >= 1


def _other_decisions(c: Path) -> None:
    (c / "vector-width.json").write_text(json.dumps({"another machine": {}}))


def _corrupt(c: Path) -> None:
    for p in c.glob("*.plan"):
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))


def _open_to_others(c: Path) -> None:
    c.chmod(0o777)


def _modules_gone(c: Path) -> None:
    for p in c.glob("*.o"):
        p.unlink()


@pytest.mark.parametrize("tamper, counted", [
    (_other_decisions, "refused"),  # made under other decisions: not taken
    (_corrupt, "stored"),  # removed by its hash check, and made again
    (_open_to_others, "refused"),  # a directory others may write: read for no entry
    (_modules_gone, "refused"),  # its compiled module gone from the object cache
], ids=["other decisions", "corrupt", "open to others", "module gone"])
def test_an_entry_that_cannot_be_trusted_is_not_taken(first, tmp_path, tamper, counted):
    d, one = first
    c = _copy(d, tmp_path / "c")
    tamper(c)
    two = _process(c)
    assert two["stats"]["hits"] == 0 and two["stats"][counted] >= 1
    _same_run(one, two)


def test_an_entry_of_foreign_classes_runs_no_code(tmp_path, monkeypatch):
    """A file under an entry's name that unpickles anything but the compiler's, dyngrad's or
    numpy's classes is refused before it is built."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    cache._write(plancache._path("k" * 64), pickle.dumps(Evil()), plancache.MAGIC)
    assert plancache.load("k" * 64) is None
    assert not marker.exists()


@pytest.mark.parametrize("call", ["eval", "exec_generated", "npz"])
def test_the_unpickler_builds_only_what_an_entry_is_made_of(call):
    from numpy.lib import npyio

    from compiler.generated import exec_generated
    fn, args = {"eval": (eval, ("1",)), "exec_generated": (exec_generated, ("x = 1", {})),
                "npz": (npyio.NpzFile, ("nothing",))}[call]

    class Call:
        def __reduce__(self):
            return fn, args
    with pytest.raises(pickle.UnpicklingError, match="not part of an entry"):
        plancache._Unpickler(io.BytesIO(pickle.dumps(Call()))).load()
    # while an entry's own pieces come back, numpy's dtypes as numpy's own objects
    parts = [np.arange(3, dtype=np.float32)[::2], np.float64(2.5), slice(1, None), {1, 2},
             1j, dg.float32, np.dtype(np.int64)]
    back = plancache._Unpickler(io.BytesIO(plancache._dumps(parts))).load()
    assert back[0].dtype is np.dtype(np.float32) and back[6] is np.dtype(np.int64)
    assert back[5] is dg.float32 and back[2:5] == parts[2:5]
    np.testing.assert_array_equal(back[0], parts[0])


def _payload_calling(module: str, name: str, argument: str) -> bytes:
    """A pickle (protocol 4) that calls ``module.name(argument)`` while it loads."""
    def text(s: str) -> bytes:
        b = s.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b
    return (pickle.PROTO + b"\x04" + text(module) + text(name) + pickle.STACK_GLOBAL
            + text(argument) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)


@pytest.mark.parametrize("module, name", [
    ("builtins", "exec"),  # (builtins is allowed, for slice and Ellipsis)
    ("compiler.plancache", "os.system"),  # (a dotted name: an allowed module's import)
    ("numpy", "testing._private.utils.os.system"),
])
def test_an_entry_calling_a_builtin_or_an_allowed_modules_import_runs_no_code(
        module, name, tmp_path, monkeypatch):
    """Only the compiler's own classes and the few functions an entry is made of are
    restored: not ``exec``, not ``os.system`` reached through a module the cache allows."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()" if name == "exec" else f"touch {marker}"
    cache._write(plancache._path("e" * 64), _payload_calling(module, name, code),
                 plancache.MAGIC)
    assert plancache.load("e" * 64) is None
    assert not marker.exists()


# A function whose constants the passes fold with numpy's own exp and tanh: their bits are
# numpy's, which depend on the SIMD kernels numpy dispatches to on this machine.
FOLDED = textwrap.dedent("""
    import json
    import numpy as np
    import dyngrad as dg, compiler
    from compiler import plancache
    C = np.linspace(-3, 3, 4096)

    @compiler.compile
    def f(x):
        return x + dg.tensor(C).exp() + dg.tensor(C.astype(np.float32)).tanh().double()

    x = dg.zeros(4096, dtype=dg.float64)
    out = [f(x) for _ in range(2)][-1]
    print(json.dumps({"bits": out.numpy().tobytes().hex(), "hits": plancache.stats["hits"]}))
""")


def _numpy_without_its_simd_kernels() -> dict:
    """The environment that makes numpy run its baseline kernels instead of the ones it
    dispatches to on this CPU (``NPY_DISABLE_CPU_FEATURES``)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__
    except ImportError:  # (numpy 1.x)
        from numpy.core._multiarray_umath import __cpu_dispatch__
    return {"NPY_DISABLE_CPU_FEATURES": " ".join(__cpu_dispatch__)}


def _folded(cache_dir: Path, **env) -> dict:
    env = dict(os.environ, DYNGRAD_CACHE_DIR=str(cache_dir), DYNGRAD_PLAN_CACHE="1",
               PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", FOLDED], capture_output=True, text=True,
                         env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_process_whose_numpy_runs_other_kernels_folds_its_own_constants(tmp_path):
    """The passes fold constants with numpy (``passes/fold.py``), so a lowered graph holds
    numpy's bits of this process; a process whose numpy dispatches to other SIMD kernels
    (``NPY_DISABLE_CPU_FEATURES``: other bits of exp and tanh) must not take the plan of
    one that did not — it gets the bits of a process that compiled everything itself."""
    plain = _numpy_without_its_simd_kernels()
    first = _folded(tmp_path / "shared")
    fresh = _folded(tmp_path / "fresh", **plain)
    if fresh["bits"] == first["bits"]:
        pytest.skip("numpy's kernels give the same bits either way on this machine")
    after = _folded(tmp_path / "shared", **plain)
    assert after["bits"] == fresh["bits"]


FOLD_LIMIT = "MAX_FOLD_ELEMENTS = 1 << 16"


def _nodes_after_passes(root: Path, cache_dir: Path) -> list:
    """The nodes of ``FOLDED``'s variant, run from the sources under ``root``."""
    script = FOLDED.replace("print(json.dumps({", "print(json.dumps({'nodes': [n.prim.name "
                            "for n in f.variants[0].trace.graph.nodes], ")
    env = dict(os.environ, DYNGRAD_CACHE_DIR=str(cache_dir), DYNGRAD_PLAN_CACHE="1",
               PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["nodes"]


def test_changed_sources_of_the_same_size_and_time_are_other_code(tmp_path):
    """Installed sources often carry one fixed modification time (Nix's store, wheels and
    images built with ``SOURCE_DATE_EPOCH``): a changed pass whose file keeps its size is
    other code all the same, and its process makes its own plan."""
    import shutil
    root = tmp_path / "src"
    for package in ("dyngrad", "compiler"):
        shutil.copytree(ROOT / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for f in root.rglob("*"):
        os.utime(f, (315532800, 315532800))  # (1980-01-01, as in a reproducible wheel)
    assert "exp" not in _nodes_after_passes(root, tmp_path / "cache")  # (folded)
    fold = root / "compiler" / "passes" / "fold.py"
    text = fold.read_text()
    assert FOLD_LIMIT in text
    fold.write_text(text.replace(FOLD_LIMIT, FOLD_LIMIT.replace("16", "10")))
    os.utime(fold, (315532800, 315532800))
    assert "exp" in _nodes_after_passes(root, tmp_path / "fresh")  # (now too large to fold)
    assert "exp" in _nodes_after_passes(root, tmp_path / "cache")


def _mlp_step():
    dg.manual_seed(1)
    lin = dg.nn.Linear(6, 3)
    opt = dg.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)

    def step(x):
        opt.zero_grad()
        loss = dg.tanh(lin(x)).square().mean()
        loss.backward()
        opt.step()
        return loss
    return step, lin


def test_in_one_process_a_second_compile_restores_the_plan(tmp_path, monkeypatch):
    """The same step compiled twice in one process with the cache on: the second compile
    restores the first's plan from disk — a plan with every attribute of one made here, and
    the same results call after call."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DYNGRAD_PLAN_CACHE", "1")
    x = dg.randn(5, 6)
    results, plans = [], []
    for _ in range(2):
        step, lin = _mlp_step()
        before = dict(plancache.stats)
        cf = compiler.compile(step, backend="llvm")
        outs = [cf(x) for _ in range(4)]
        # (numpy's dtypes come back as numpy's own objects: guards compare them by identity)
        assert all(o._data.dtype is np.dtype(np.float32) for o in outs)
        results.append([o.item() for o in outs] + [lin.weight.detach().numpy().copy()])
        plans.append(cf.variants[0].plan)
        after = {k: plancache.stats[k] - before[k] for k in before}
    assert after["hits"] == 1, after
    made, restored = plans
    assert type(made).__name__ == "DriverPlan" and type(restored) is type(made)
    assert set(vars(restored)) == set(vars(made))
    assert restored.module_key == made.module_key
    assert callable(restored.make_fallback())  # (the runner's plan, for a busy arena)
    assert all(meta[1] is np.dtype(np.float32) for meta in restored.out_meta.values())
    assert results[0][:4] == results[1][:4]
    np.testing.assert_array_equal(results[0][4], results[1][4])


def test_the_cache_off_reads_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DYNGRAD_PLAN_CACHE", "0")
    step, _ = _mlp_step()
    compiler.compile(step, backend="llvm")(dg.randn(5, 6))
    assert not list(tmp_path.glob("*.plan"))
    assert plancache.mode() == "off"


def test_an_entry_whose_plans_do_not_pickle_keeps_the_lowering_once(tmp_path, monkeypatch):
    """A plan that does not pickle (a hybrid plan's numpy steps) is left out: the entry keeps
    the lowering, marked, so the processes that compile the plan again do not rewrite it."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    tmp_path.chmod(0o700)
    plancache.store("e" * 64, plancache.Entry(["the lowering"], {("forward", None): lambda: 0}))
    entry = plancache.load("e" * 64)
    assert entry.lowered == ["the lowering"] and entry.plans == {} and entry.unkept
