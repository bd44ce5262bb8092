"""The convolution's two kernels per direction (``compiler/backends/llvm/window.py``: the
column path and the direct, staged one) and the measured choice between them
(``convtune.py``).

Each path, forced with ``DYNGRAD_CONV``, matches eager in every direction — forward, input
gradient, weight gradient — over strides, paddings, dilations, groups, 1-d and 2-d. The
forward convolution's two paths give the same bits; the gradients' add in other orders and
agree within rounding, so the choice between them is kept: in the process, and in
``conv-choices.json`` beside the compiled code, which a second process reads instead of
measuring (a corrupt file is ignored and rewritten). Nothing here assumes the CPU: the
timings are replaced by fixed verdicts wherever a test depends on the answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import prims as P
from compiler.backends.llvm import convtune, window
from compiler.ir import Node, Value
from dyngrad.dtypes import float32

ROOT = Path(__file__).resolve().parents[1]

# (n, cin, cout, size, kernel, stride, padding, dilation, groups) per spatial dims
CASES_2D = [
    (3, 4, 6, (9, 11), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (3, 4, 6, (9, 11), (3, 3), (2, 2), (1, 1), (1, 1), 2),
    (2, 6, 6, (8, 8), (3, 3), (1, 1), (2, 2), (2, 2), 3),
    (2, 3, 5, (10, 10), (2, 2), (3, 3), (0, 0), (1, 1), 1),
    (1, 4, 8, (7, 9), (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (4, 8, 64, (7, 7), (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 4, 4, (9, 9), (1, 1), (2, 2), (0, 0), (1, 1), 4),  # depthwise, strided 1x1
    (2, 5, 7, (12, 12), (3, 3), (4, 3), (2, 1), (1, 1), 1),
]
CASES_1D = [
    (3, 4, 6, (17,), (3,), (1,), (1,), (1,), 1),
    (2, 6, 4, (20,), (5,), (2,), (2,), (1,), 2),
    (2, 3, 3, (16,), (3,), (1,), (3,), (2,), 3),
]
CASES = CASES_2D + CASES_1D


def _conv(case):
    *_, stride, padding, dilation, groups = case
    conv = F.conv2d if len(stride) == 2 else F.conv1d
    return lambda x, w: conv(x, w, stride=stride, padding=padding, dilation=dilation,
                             groups=groups)


def _arrays(case, dtype):
    n, cin, cout, size, kernel, *_, groups = case
    r = np.random.default_rng(0)
    return [r.standard_normal((n, cin, *size)).astype(dtype),
            r.standard_normal((cout, cin // groups, *kernel)).astype(dtype)]


def _step(fn):
    """``fn``'s output and both inputs' gradients of a weighted sum of it."""
    def run(x, w):
        y = fn(x, w)
        wts = dg.cos(dg.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        return (y, *dg.autograd.grad((y * wts).sum(), (x, w)))
    return run


def _compiled(case, arrays, path, monkeypatch) -> list:
    monkeypatch.setenv("DYNGRAD_CONV", path)
    xs = [dg.tensor(a, requires_grad=True) for a in arrays]
    f = compiler.compile(_step(_conv(case)), backend="llvm")
    for _ in range(2):
        got = f(*xs)
    return [g.detach().numpy() for g in got]


def _eager(case, arrays) -> list:
    xs = [dg.tensor(a, requires_grad=True) for a in arrays]
    return [g.detach().numpy() for g in _step(_conv(case))(*xs)]


@pytest.mark.parametrize("path", ["columns", "direct"])
@pytest.mark.parametrize("case", CASES)
def test_each_forced_path_matches_eager_in_every_direction(case, path, monkeypatch):
    arrays = _arrays(case, np.float64)
    for got, want in zip(_compiled(case, arrays, path, monkeypatch), _eager(case, arrays),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_the_forward_paths_give_the_same_bits_and_the_gradients_agree(case, dtype,
                                                                       monkeypatch):
    arrays = _arrays(case, dtype)
    (y_c, dx_c, dw_c), (y_d, dx_d, dw_d) = (_compiled(case, arrays, p, monkeypatch)
                                            for p in ("columns", "direct"))
    np.testing.assert_array_equal(y_c, y_d)
    tol = 2e-5 if dtype == np.float32 else 1e-12  # (other sum orders: rounding apart)
    for a, b in ((dx_c, dx_d), (dw_c, dw_d)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())


def _built(prim, case, path, monkeypatch) -> str:
    """The IR of one direction's kernel of ``case`` (float32) with ``DYNGRAD_CONV=path``."""
    monkeypatch.setenv("DYNGRAD_CONV", path)
    return window.node_builder(_node(prim, case)).build()[0]


def _node(prim, case):
    """A ``prim`` node of ``case``'s convolution (the graph's shapes, float32)."""
    n_, cin, cout, size, kernel, stride, padding, dilation, groups = case
    out = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))
    x, w, y = (n_, cin, *size), (cout, cin // groups, *kernel), (n_, cout, *out)
    params = {"stride": stride, "padding": tuple((p, p) for p in padding),
              "dilation": dilation, "groups": groups}
    shapes = {P.CONV: ((x, w), y), P.CONV_TRANSPOSE: ((y, w), x),
              P.CONV_WEIGHT_GRAD: ((x, y), w)}[prim]
    ins = [Value(k, s, float32) for k, s in enumerate(shapes[0])]
    return Node(prim, ins, params, Value(2, shapes[1], float32))


@pytest.mark.parametrize("prim", [P.CONV, P.CONV_TRANSPOSE, P.CONV_WEIGHT_GRAD],
                         ids=lambda p: p.name)
def test_dyngrad_conv_forces_the_path_where_both_apply(prim, monkeypatch):
    case = CASES_2D[1]  # strided, grouped: both kernels in every direction
    columns = _built(prim, case, "columns", monkeypatch)
    direct = _built(prim, case, "direct", monkeypatch)
    assert "@dg_gemm" in columns and "@dg_gemm" not in direct
    one_by_one = (2, 4, 8, (5, 5), (1, 1), (1, 1), (0, 0), (1, 1), 1)  # a GEMM as it is
    assert _built(prim, one_by_one, "direct", monkeypatch) == \
        _built(prim, one_by_one, "columns", monkeypatch)
    monkeypatch.setenv("DYNGRAD_CONV", "fastest")
    with pytest.raises(ValueError, match="DYNGRAD_CONV='fastest'.*measure, columns, direct"):
        _built(prim, case, "fastest", monkeypatch)


# ------------------------------------------------------------------ the decision


@pytest.fixture
def decisions(monkeypatch, tmp_path):
    """A fresh decision file and process memory; the races counted, each a fixed verdict."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DYNGRAD_CACHE", raising=False)
    monkeypatch.delenv("DYNGRAD_CONV", raising=False)
    monkeypatch.setattr(convtune, "_decided", {})
    monkeypatch.setattr(convtune.threads, "team", lambda: 2)
    return []


def _race(calls, verdict):
    def race():
        calls.append(verdict)
        return {"columns": 1e-4, "direct": 2e-4} if verdict == "columns" else \
            {"columns": 2e-4, "direct": 1e-4}
    return race


def test_a_measured_choice_is_kept_in_the_process_and_on_disk(decisions, tmp_path):
    assert convtune.choose("conv", "shape A", None, _race(decisions, "columns")) == "columns"
    assert convtune.choose("conv", "shape A", None, _race(decisions, "direct")) == "columns"
    assert len(decisions) == 1  # (the process's dict)
    data = json.loads((tmp_path / convtune.FILE).read_text())
    entry = data[convtune.machine_key()]["conv shape A"]
    assert entry["choice"] == "columns" and entry["columns_us"] == 100.0
    convtune.forget()  # a new process, as far as the decisions go: read from the file
    assert convtune.choose("conv", "shape A", None, _race(decisions, "direct")) == "columns"
    assert len(decisions) == 1
    assert convtune.choose("conv_transpose", "shape A", None,
                           _race(decisions, "direct")) == "direct"
    assert len(decisions) == 2  # (another direction: measured, added to the file)
    assert len(json.loads((tmp_path / convtune.FILE).read_text())[convtune.machine_key()]) == 2


@pytest.mark.parametrize("junk", [b"{not json", b"[1, 2]", b'{"x": 3}', b"\xff\xfe", b"",
                                  b'{"KEY": {"conv shape B": {"choice": "fastest"}}}'])
def test_a_corrupt_decision_file_is_ignored_and_rewritten(decisions, tmp_path, junk):
    junk = junk.replace(b"KEY", json.dumps(convtune.machine_key())[1:-1].encode())
    (tmp_path / convtune.FILE).write_bytes(junk)
    assert convtune.choose("conv", "shape B", None, _race(decisions, "columns")) == "columns"
    assert len(decisions) == 1
    data = json.loads((tmp_path / convtune.FILE).read_text())
    assert data[convtune.machine_key()]["conv shape B"]["choice"] == "columns"


def test_no_decision_file_with_the_disk_cache_off(decisions, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE", "0")
    assert convtune.choose("conv", "shape C", None, _race(decisions, "columns")) == "columns"
    assert not (tmp_path / convtune.FILE).exists()


def test_a_forked_child_decides_without_writing(decisions, tmp_path, monkeypatch):
    monkeypatch.setattr(convtune.threads, "team", lambda: 0)  # (its timings: one thread)
    assert convtune.choose("conv", "shape D", None, _race(decisions, "columns")) == "columns"
    assert not (tmp_path / convtune.FILE).exists()


def test_a_tie_goes_to_the_direct_path():
    assert convtune.pick({"columns": 1.0, "direct": 1.0 + convtune.TIE_MARGIN / 2}) == "direct"
    assert convtune.pick({"columns": 1.0, "direct": 1.0 + 2 * convtune.TIE_MARGIN}) == "columns"


def test_shapes_the_rule_answers_are_not_measured_and_forcing_wins(decisions, monkeypatch):
    assert convtune.choose("conv", "shape E", "direct", _race(decisions, "columns")) == "direct"
    monkeypatch.setenv("DYNGRAD_CONV", "columns")
    assert convtune.choose("conv", "shape E", "direct", _race(decisions, "direct")) == "columns"
    monkeypatch.setenv("DYNGRAD_CONV", "rule")
    assert convtune.choose("conv", "shape F", None, _race(decisions, "columns")) == "direct"
    assert decisions == []
    few = window.Geometry(8, 16, 16, 1, 8, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1)  # 16 channels
    many = window.Geometry(8, 64, 64, 1, 8, 8, 3, 3, 8, 8, 1, 1, 1, 1, 1, 1)
    assert convtune.rule("conv", few) == "direct" and convtune.rule("conv", many) is None


def test_a_race_times_both_kernels_of_a_slice_of_the_batch():
    """(Its cost — a compile of ~0.1 s and milliseconds of timing on an idle machine — is
    measured by benchmarks/firstcall, not asserted here.)"""
    n = _node(P.CONV, (32, 64, 64, (12, 12), (3, 3), (1, 1), (1, 1), (1, 1), 1))
    seconds = window.race(n)
    assert set(seconds) == {"columns", "direct"} and min(seconds.values()) > 0
    lone = _node(P.CONV_WEIGHT_GRAD, (1, 64, 64, (12, 12), (3, 3), (2, 2), (1, 1), (1, 1), 1))
    assert min(window.race(lone).values()) > 0  # (one sample: its GEMMs split instead)
    assert "n=1 " in window._shape_key("float", window.geometry(lone))


SCRIPT = textwrap.dedent("""
    import json, numpy as np
    import compiler, dyngrad as dg
    import dyngrad.nn.functional as F
    from compiler.backends.llvm import window
    races = []
    real = window.race
    window.race = lambda n, geo: races.append(n.prim.name) or real(n, geo)
    r = np.random.default_rng(0)
    x = dg.tensor(r.standard_normal((4, 8, 9, 9)).astype(np.float32), requires_grad=True)
    w = dg.tensor(r.standard_normal((64, 8, 3, 3)).astype(np.float32), requires_grad=True)
    def step(x, w):
        y = F.conv2d(x, w, padding=1)
        return (y, *dg.autograd.grad((y * y).sum(), (x, w)))
    f = compiler.compile(step, backend="llvm")
    for _ in range(2):
        out = f(x, w)
    np.save(__import__("sys").argv[1], np.concatenate([o.detach().numpy().ravel() for o in out]))
    print(json.dumps(races))
""")


def test_a_second_process_takes_the_stored_decisions_without_measuring(tmp_path):
    env = {**os.environ, "DYNGRAD_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    env.pop("DYNGRAD_CONV", None)
    env.pop("DYNGRAD_CACHE", None)
    races = []
    for k in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / f"r{k}.npy")],
                             env=env, cwd=ROOT, check=True, capture_output=True, text=True)
        races.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert sorted(races[0]) == ["conv", "conv_transpose", "conv_weight_grad"]
    assert races[1] == []
    stored = json.loads((tmp_path / "cache" / convtune.FILE).read_text())
    assert len(next(iter(stored.values()))) == 3
    np.testing.assert_array_equal(np.load(tmp_path / "r0.npy"), np.load(tmp_path / "r1.npy"))


def test_the_timing_modules_are_compiled_ahead_by_prepare(decisions, monkeypatch):
    made, raced = [], []
    module = window._timing_module
    monkeypatch.setattr(window, "_timing_module", lambda n, geo: made.append(
        threading.current_thread().name) or module(n, geo))
    real = window.race
    monkeypatch.setattr(window, "race", lambda n, geo: raced.append(n.prim) or real(n, geo))
    case = (3, 8, 64, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1)  # (measured: 64 channels)
    arrays = _arrays(case, np.float32)
    monkeypatch.setattr(convtune, "forget", lambda disk=False: None)
    got = _compiled(case, arrays, "measure", monkeypatch)
    assert sorted(p.name for p in raced) == ["conv", "conv_transpose", "conv_weight_grad"]
    assert made == ["dyngrad-conv-race"] * 3  # (each race took the module prepared for it)
    assert window._timing_jobs == {}
    for g, w in zip(got, _eager(case, arrays), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_a_timing_that_fails_takes_the_direct_path_and_the_call_runs(decisions, tmp_path,
                                                                     monkeypatch):
    """Timing is an optimisation: a timing module that fails to compile (on ``prepare``'s
    thread, then again where the decision is asked) must not fail the user's call — which
    has run the traced function's effects by then — nor print a thread's traceback. The
    shape takes the direct path (the rule's default), with a warning, and nothing is
    stored."""
    def broken(n, geo):
        raise RuntimeError("the timing module did not compile")
    monkeypatch.setattr(window, "_timing_module", broken)
    uncaught = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    case = (3, 8, 64, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1)  # (measured: 64 channels)
    arrays = _arrays(case, np.float32)
    with pytest.warns(RuntimeWarning, match="timing.*did not compile.*direct path"):
        got = _compiled(case, arrays, "measure", monkeypatch)
    for g, w in zip(got, _eager(case, arrays), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
    assert set(convtune._decided.values()) == {"direct"} and len(convtune._decided) == 3
    assert uncaught == [] and not (tmp_path / convtune.FILE).exists()
    assert window._timing_jobs == {}


def test_a_decision_another_process_stored_during_the_race_stands(decisions, tmp_path):
    """Two processes that measure one shape at once (two runs started together on a fresh
    cache) must not take different kernels — the gradients' bits differ between them — nor
    leave the file with the last one's: the first decision stored stands for both."""
    from compiler.backends.llvm import choices

    def race():  # (meanwhile, another process stores its decision)
        choices.store(convtune.FILE, convtune.machine_key(), "conv shape G",
                      {"choice": "direct"})
        return {"columns": 1e-4, "direct": 2e-4}
    assert convtune.choose("conv", "shape G", None, race) == "direct"
    data = json.loads((tmp_path / convtune.FILE).read_text())
    assert data[convtune.machine_key()]["conv shape G"]["choice"] == "direct"


def test_a_decision_holds_for_every_thread_setting(monkeypatch):
    """The two paths' gradients differ in their bits, so the decision key leaves the thread
    settings out: a machine's stored decision is taken whatever ``DYNGRAD_THREADS`` or
    ``OMP_NUM_THREADS`` say, and the thread count never changes results."""
    before = convtune.machine_key()
    monkeypatch.setenv("DYNGRAD_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert convtune.machine_key() == before


def test_a_timing_kernel_that_fails_is_a_failed_race_not_a_fast_one():
    """A timing kernel's nonzero status (a column buffer not allocated) raises, which the
    choice turns into the direct path with a warning (as any failed race)."""
    window._ran(0, "columns")
    with pytest.raises(RuntimeError, match="columns kernel returned status -2"):
        window._ran(-2, "columns")
