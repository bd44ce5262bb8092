"""The LLVM matmul code generator (llvm/matmul.py, gemm.py, tune.py) against numpy: each
node's own ``impl`` (``P["matmul"].impl(a, b, ta=..., tb=...)``, what the interpreter runs).

Both paths are checked — the generated register-blocked kernel (``use_blas=False``) and the
call into numpy's bundled OpenBLAS (``use_blas=True``, skipped when ``blas.find()`` finds
none) — for float32 and float64, 2-d and batched operands with broadcast batch dims, row and
column vectors as matrices, K=1, K=0, odd sizes (1, 3, 17, 65), the register tile's and the
blocks' edges, every transpose-flag combination. The kernels are run two ways: whole graphs'
kernels (``MatmulBuilder``) and, for the many shapes, ``tune.product`` (the kernels behind
one compiled module, shapes at run time). The products sum in another order than numpy's, so
results are compared with numpy's float64 product within a tolerance relative to max|C|
(1e-5 float32, 1e-12 float64). Every builder kernel writes into an output with sentinel bytes
before and after it, which must survive.

The generated kernel's sum order depends on nothing but the operands: the bits are the same
for every transpose layout, for a product cut to its first rows, and with 1, 2 or 3 threads.

Also: ``DYNGRAD_BLAS=0``, ``DYNGRAD_MATMUL``, the measured choice kept in the process and in
the cache directory's file (a corrupt file ignored), and end-to-end
``compiler.compile(..., backend="llvm")`` matmuls and a Linear layer's forward and backward
against eager.
"""

from __future__ import annotations

import copy
import ctypes
import json
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
from compiler.backends.llvm import blas, driver, emit, gemm, jit, matmul, threads, tune
from compiler.ir import Graph, Value
from compiler.passes.fusion import fuse
from dyngrad import nn
from dyngrad.dtypes import _BY_NP
from dyngrad.ops import REGISTRY as P

ROOT = Path(__file__).resolve().parents[1]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
PAD = 256  # sentinel bytes on each side of an output buffer
SENTINEL = 0xA5
HAVE_BLAS = blas.find() is not None
needs_blas = pytest.mark.skipif(not HAVE_BLAS, reason="numpy has no bundled OpenBLAS here")


@pytest.fixture(autouse=True)
def seeded():
    assert compiler.config.enabled
    dg.manual_seed(1234)
    yield
    assert compiler.config.enabled


# ------------------------------------------------------------------ helpers


def op(g: Graph, name: str, *inputs, **params) -> Value:
    avals = [x.aval() if isinstance(x, Value) else x for x in inputs]
    shape, dtype = P[name].shape(*avals, **params)
    return g.add_node(P[name], list(inputs), params, shape, dtype)


def matmul_graph(a_shape, b_shape, dtype, ta=False, tb=False, same=False):
    """A graph of one matmul node on two inputs (``same``: ``x @ op(x)``, one input)."""
    g = Graph()
    x = g.add_input(tuple(a_shape), _BY_NP[np.dtype(dtype)], "a")
    y = x if same else g.add_input(tuple(b_shape), _BY_NP[np.dtype(dtype)], "b")
    c = op(g, "matmul", x, y, ta=ta, tb=tb)
    g.outputs = [c]
    groups = fuse(g)
    assert len(groups) == 1 and groups[0].kind == "matmul", groups
    return g, groups[0]


_COMPILED: dict = {}


def compile_kernel(text: str, name: str):
    fn = _COMPILED.get(text)
    if fn is None:
        compiled = jit.compile_ir(text)
        fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
        _COMPILED[text] = fn = (compiled, fn)
    return fn[1]


class Guarded:
    """An output buffer with ``PAD`` sentinel bytes before and after it (64-byte aligned)."""

    def __init__(self, shape, dtype) -> None:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.raw = np.full(nbytes + 2 * PAD + 64, SENTINEL, np.uint8)
        self.lo = PAD + (-(self.raw.ctypes.data + PAD)) % 64
        self.hi = self.lo + nbytes
        self.array = self.raw[self.lo:self.hi].view(dtype).reshape(shape)

    def intact(self) -> bool:
        return bool((self.raw[:self.lo] == SENTINEL).all() and
                    (self.raw[self.hi:] == SENTINEL).all())


def run_matmul(a, b, ta=False, tb=False, use_blas=None, same=False):
    """(result, IR text): the generated kernel run on ``a``, ``b`` (physical layouts)."""
    g, grp = matmul_graph(a.shape, b.shape, a.dtype, ta, tb, same)
    builder = matmul.MatmulBuilder(g, grp, use_blas=use_blas)
    text, name, layout = builder.build()
    fn = compile_kernel(text, name)
    out = Guarded(g.outputs[0].shape, a.dtype)
    feeds = {id(g.inputs[0]): a} if same else {id(g.inputs[0]): a, id(g.inputs[1]): b}
    arrays = [feeds[id(v)] if id(v) in feeds else out.array for v in layout]
    assert len(layout) == len(grp.inputs) + 1
    fn((ctypes.c_void_p * len(layout))(*[x.ctypes.data for x in arrays]), 0)
    assert out.intact(), "the kernel wrote outside its output buffer"
    return out.array, text


def physical(rng, logical_shape, transposed, dtype):
    """A C-contiguous operand whose last two dims are swapped when ``transposed``."""
    shape = tuple(logical_shape)
    if transposed:
        shape = shape[:-2] + (shape[-1], shape[-2])
    return rng.standard_normal(shape).astype(dtype)


def assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
    err = float(np.max(np.abs(got.astype(np.float64) - want), initial=0.0))
    assert err <= RTOL[dtype] * scale, f"max error {err:.3g} vs max|C| {scale:.3g}"


# ------------------------------------------------------------------ the generated kernel

# (op(A) shape, op(B) shape): the logical operands, before any transpose flag
CASES = {
    "2d": ((5, 7), (7, 3)),
    "odd-tails": ((17, 33), (33, 19)),
    "odd-1-3-17-65": ((65, 17), (17, 3)),
    "batched-broadcast": ((3, 1, 4, 6), (2, 6, 5)),
    "batch-a-only": ((2, 3, 4, 6), (6, 5)),
    "batch-b-only": ((4, 6), (2, 3, 6, 5)),
    "row-1xk": ((1, 9), (9, 7)),
    "col-kx1": ((8, 9), (9, 1)),
    "k1": ((6, 1), (1, 5)),
    "blas-sized": ((128, 200), (200, 64)),
    "wide-b": ((4, 300), (300, 300)),
}
FLAGS = [(False, False), (False, True), (True, False), (True, True)]
PATHS = [pytest.param(False, id="generated"), pytest.param(True, id="blas", marks=needs_blas)]
DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("use_blas", PATHS)
@pytest.mark.parametrize("ta,tb", FLAGS, ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matmul_kernel_matches_numpy(dtype, case, ta, tb, use_blas):
    rng = np.random.default_rng([list(CASES).index(case), int(ta), int(tb)])
    sa, sb = CASES[case]
    a, b = physical(rng, sa, ta, dtype), physical(rng, sb, tb, dtype)
    got, text = run_matmul(a, b, ta, tb, use_blas=use_blas)
    want = P["matmul"].impl(a.astype(np.float64), b.astype(np.float64), ta=ta, tb=tb)
    assert_close(got, want.astype(dtype), dtype)
    gemm_ = blas.find().gemm(np.dtype(dtype).name) if use_blas else None
    assert (gemm_ is not None and f"@{gemm_}(" in text) == bool(use_blas)
    assert (f"@{gemm.name(emit.LLTYPE[np.dtype(dtype).name])}(" in text) != bool(use_blas)


@pytest.mark.parametrize("use_blas", PATHS)
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_matmul_of_one_input_with_itself(dtype, tb, use_blas):
    """``x @ x`` / ``x @ x.T``: A and B are one buffer (both only read)."""
    x = np.random.default_rng(3).standard_normal((12, 12)).astype(dtype)
    got, _ = run_matmul(x, x, False, tb, use_blas=use_blas, same=True)
    assert_close(got, P["matmul"].impl(x, x, ta=False, tb=tb), dtype)


@pytest.mark.parametrize("use_blas", PATHS)
@pytest.mark.parametrize("ta,tb", FLAGS, ids=["nn", "nt", "tn", "tt"])
def test_empty_inner_dimension_gives_zeros_and_is_never_sent_to_blas(ta, tb, use_blas):
    rng = np.random.default_rng(0)
    a, b = physical(rng, (2, 3, 0), ta, np.float32), physical(rng, (0, 4), tb, np.float32)
    got, text = run_matmul(a, b, ta, tb, use_blas=use_blas)
    np.testing.assert_array_equal(got, np.zeros((2, 3, 4), np.float32))
    assert "gemm64_" not in text  # (BLAS would leave C as it was)


@pytest.mark.parametrize("use_blas", PATHS)
def test_empty_output_writes_nothing(use_blas):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((0, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    got, _ = run_matmul(a, b, use_blas=use_blas)
    assert got.shape == (0, 4)


def test_integer_products_take_the_loops_and_bool_is_refused():
    g, grp = matmul_graph((3, 4), (4, 5), np.int64)
    assert matmul.MatmulBuilder(g, grp, use_blas=True).small  # (no BLAS for integers)
    g = Graph()  # (eager refuses a bool product, as PyTorch: built past the shape rule)
    x = g.add_input((3, 4), dg.bool, "a")
    g.outputs = [g.add_node(P["matmul"], [x, x], {"ta": False, "tb": True}, (3, 3), dg.bool)]
    with pytest.raises(NotImplementedError, match="dtype"):
        matmul.MatmulBuilder(g, fuse(g)[0])


# ------------------------------------------------------------------ many shapes, both kernels

# (M, N, K): odd sizes, every edge of the register tile (MR rows, NR columns), of the row
# block (MC), of the k block (KC), and sizes where the product splits across threads
MR, NR = gemm.MR, gemm.NV * gemm.lanes("float")
SHAPES = sorted({
    (1, 1, 1), (3, 17, 65), (65, 3, 17), (17, 65, 1), (1, 65, 3), (65, 1, 17),
    *((m, NR, 5) for m in (1, 2, 3, 4, 5, 6, 7, MR, MR + 1, 2 * MR - 1)),
    *((MR, n, 7) for n in (1, NR - 1, NR + 1, 2 * NR, 2 * NR + 3)),
    (gemm.MC - 1, NR + 5, 9), (gemm.MC + 3, 2 * NR - 1, 4), (2 * gemm.MC + 1, 3, 2),
    (9, 33, gemm.KC["float"]), (9, 33, gemm.KC["float"] + 1), (5, 3, 2 * gemm.KC["double"] + 7),
    (130, 100, 97), (300, 130, 900),  # (from PAR_WORK multiply-adds: on the team)
})


@pytest.mark.parametrize("path", ["generated", pytest.param("blas", marks=needs_blas)])
@pytest.mark.parametrize("ta,tb", FLAGS, ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_both_kernels_match_numpy_at_tile_and_block_edges(dtype, ta, tb, path):
    rng = np.random.default_rng([int(ta), int(tb)])
    for m, n, k in SHAPES:
        a, b = physical(rng, (m, k), ta, dtype), physical(rng, (k, n), tb, dtype)
        got = tune.product(path, a, b, ta, tb)
        want = P["matmul"].impl(a.astype(np.float64), b.astype(np.float64), ta=ta, tb=tb)
        assert_close(got, want.astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_generated_kernel_bits_depend_on_the_operands_alone(dtype):
    """Every C element is one fused multiply-add chain over k in order: the same bits for
    every transpose layout of the operands and for a product cut to its first rows."""
    rng = np.random.default_rng(7)
    for m, n, k in ((3, 17, 65), (MR + 1, NR + 1, gemm.KC["float"] + 3), (130, 100, 97)):
        x, y = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        ref = tune.product("generated", x, y)
        for ta, tb in FLAGS[1:]:
            a = np.ascontiguousarray(x.T) if ta else x
            b = np.ascontiguousarray(y.T) if tb else y
            assert tune.product("generated", a, b, ta, tb).tobytes() == ref.tobytes(), (ta, tb)
        rows = m // 2 + 1
        assert tune.product("generated", x, y, rows=rows).tobytes() == ref[:rows].tobytes()


@pytest.mark.parametrize("path", ["generated", pytest.param("blas", marks=needs_blas)])
def test_nan_and_inf_propagate(path):
    rng = np.random.default_rng(8)
    for dtype in DTYPES:
        a = rng.standard_normal((MR + 3, 40)).astype(dtype)
        b = rng.standard_normal((40, NR + 3)).astype(dtype)
        a[1, 5], a[MR + 2, 0], b[7, NR + 2], b[3, 0] = np.nan, np.inf, -np.inf, np.nan
        got = tune.product(path, a, b)
        with np.errstate(invalid="ignore"):
            want = a.astype(np.float64) @ b.astype(np.float64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))


def test_generated_kernel_gives_the_same_bits_with_any_number_of_threads(tmp_path):
    code = textwrap.dedent("""
        import hashlib, numpy as np
        from compiler.backends.llvm import gemm, tune
        rng = np.random.default_rng(0)
        h = hashlib.sha256()
        for m, n, k, ta, tb in ((300, 260, 520, False, False), (259, 277, 501, True, True)):
            assert m * n * k >= gemm.PAR_WORK
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
            h.update(tune.product("generated", a, b, ta, tb).tobytes())
        print(gemm.name("float"), h.hexdigest())
    """)
    runs = {}
    for label, extra in {"no team": {"DYNGRAD_THREADS": "1"}, "1": {"OMP_NUM_THREADS": "1"},
                         "2": {"OMP_NUM_THREADS": "2"}, "3": {"OMP_NUM_THREADS": "3"}}.items():
        env = {k: v for k, v in os.environ.items() if k not in ("DYNGRAD_THREADS",
                                                                  "OMP_NUM_THREADS")}
        env.update(PYTHONPATH=str(ROOT), DYNGRAD_CACHE_DIR=str(tmp_path), **extra)
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                             capture_output=True, text=True, timeout=300).stdout.split()
        runs[label] = out
    assert len({h for _, h in runs.values()}) == 1, runs
    if threads.find() is not None:
        assert runs["no team"][0].endswith("f32") and runs["2"][0].endswith("_mt"), runs


# ------------------------------------------------------------------ BLAS: found, switched off


def test_dyngrad_blas_0_turns_blas_off(monkeypatch):
    monkeypatch.setattr(blas, "_found", [])  # (restored: the cached search result)
    for off in ("0", "off", "false", "no", " 0 "):
        monkeypatch.setenv("DYNGRAD_BLAS", off)
        assert blas.find() is None
        assert blas._found == [], "DYNGRAD_BLAS=0 should not even search"
        g, grp = matmul_graph((128, 200), (200, 64), np.float32)
        for use_blas in (None, True):
            b = matmul.MatmulBuilder(g, grp, use_blas=use_blas)
            assert b.blas is None
            assert "gemm64_" not in b.build()[0]
        assert tune.choose("float32", 512, 512, 512, False, False) == "generated"
    rng = np.random.default_rng(1)
    a, bb = rng.standard_normal((128, 200)), rng.standard_normal((200, 64))
    got, text = run_matmul(a.astype(np.float32), bb.astype(np.float32), use_blas=True)
    assert "gemm64_" not in text
    assert_close(got, (a.astype(np.float32) @ bb.astype(np.float32)), np.float32)
    monkeypatch.setenv("DYNGRAD_BLAS", "1")
    found = blas.find()  # searched again, and cached
    assert blas._found == [found]
    assert found is None or found.sgemm in blas.declaration(found, "float32")


@needs_blas
def test_found_blas_names_the_64_bit_cblas_gemms():
    b = blas.find()
    assert b.gemm("float32") == b.sgemm and b.gemm("float64") == b.dgemm
    assert b.sgemm.endswith("64_") and "sgemm" in b.sgemm and "dgemm" in b.dgemm
    assert b.sgemm in blas.declaration(b, "float32") and "float" in blas.declaration(b, "float32")
    assert b.dgemm in blas.declaration(b, "float64") and "double" in \
        blas.declaration(b, "float64")
    assert blas.pool_threads(b) >= 1


# ------------------------------------------------------------------ the choice


@pytest.fixture
def choices(monkeypatch, tmp_path):
    """A fresh decision file and process memory; ``measure`` counted (and fast: a fixed
    verdict, BLAS for K = 100 and the generated kernel otherwise); one BLAS thread."""
    monkeypatch.setenv("DYNGRAD_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DYNGRAD_CACHE", raising=False)
    monkeypatch.delenv("DYNGRAD_MATMUL", raising=False)
    monkeypatch.setattr(tune, "_decided", {})
    monkeypatch.setattr(blas, "pool_threads", lambda b: 1)
    calls = []

    def measure(dt, m, n, k, ta, tb):
        calls.append((dt, m, n, k, ta, tb))
        choice = "blas" if k == 100 else "generated"
        return {"blas": 1e-6, "generated": 2e-6, "rows": m, "choice": choice}
    monkeypatch.setattr(tune, "measure", measure)
    return calls


@needs_blas
def test_the_measured_choice_is_kept_in_the_process_and_on_disk(choices, tmp_path):
    args = ("float32", 128, 256, 100, False, True)
    assert tune.choose(*args) == "blas" and len(choices) == 1
    assert tune.choose(*args) == "blas" and len(choices) == 1  # (the process's dict)
    data = json.loads((tmp_path / tune.FILE).read_text())
    assert data[tune.machine_key()][tune.shape_key(*args)]["choice"] == "blas"
    tune.forget()  # a new process, as far as the decisions go: read from the file
    assert tune.choose(*args) == "blas" and len(choices) == 1
    assert tune.choose("float32", 128, 256, 101, False, True) == "generated"
    assert len(choices) == 2  # (another shape: measured, and added to the file)
    data = json.loads((tmp_path / tune.FILE).read_text())
    assert len(data[tune.machine_key()]) == 2


@needs_blas
def test_a_decision_another_process_stored_during_the_measurement_stands(choices, tmp_path,
                                                                          monkeypatch):
    """Two processes that measure one shape at once (two runs started together on a fresh
    cache) take the first decision stored, not each its own (BLAS and the generated kernel
    add in other orders), and the file keeps that one."""
    from compiler.backends.llvm import choices as stored
    args = ("float32", 128, 256, 100, False, True)  # (measured here: BLAS)
    real = tune.measure

    def measure(*a):  # (meanwhile, another process stores its decision)
        stored.store(tune.FILE, tune.machine_key(), tune.shape_key(*args),
                     {"choice": "generated"})
        return real(*a)
    monkeypatch.setattr(tune, "measure", measure)
    assert tune.choose(*args) == "generated"
    data = json.loads((tmp_path / tune.FILE).read_text())
    assert data[tune.machine_key()][tune.shape_key(*args)]["choice"] == "generated"


@needs_blas
@pytest.mark.parametrize("junk", [b"{not json", b"[1, 2]", b'{"x": 3}', b"\xff\xfe", b""])
def test_a_corrupt_decision_file_is_ignored_and_rewritten(choices, tmp_path, junk):
    (tmp_path / tune.FILE).write_bytes(junk)
    args = ("float64", 64, 64, 100, True, False)
    assert tune.choose(*args) == "blas" and len(choices) == 1
    data = json.loads((tmp_path / tune.FILE).read_text())
    assert data[tune.machine_key()][tune.shape_key(*args)]["choice"] == "blas"


@needs_blas
def test_no_decision_file_with_the_disk_cache_off(choices, tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGRAD_CACHE", "0")
    assert tune.choose("float32", 128, 256, 100, False, False) == "blas"
    assert not (tmp_path / tune.FILE).exists()


@needs_blas
def test_shapes_the_generated_kernel_clearly_wins_are_not_measured(choices, monkeypatch):
    assert tune.choose("float32", 8, 8, 100, False, False) == "generated"  # tiny
    assert tune.choose("float32", 128, 128, 0, False, False) == "generated"  # K = 0
    assert tune.choose("float32", 0, 128, 100, False, False) == "generated"  # empty
    if threads.find() is not None:  # two pools that would fight: the team's kernel
        monkeypatch.setattr(blas, "pool_threads", lambda b: 2)
        assert tune.choose("float32", 128, 256, 100, False, False) == "generated"
    assert choices == []


@needs_blas
def test_dyngrad_matmul_forces_a_path(choices, monkeypatch):
    g, grp = matmul_graph((2, 128, 100), (100, 64), np.float32)
    sgemm = blas.find().sgemm
    monkeypatch.setenv("DYNGRAD_MATMUL", "generated")
    assert tune.choose("float32", 128, 64, 100, False, False) == "generated"
    assert sgemm not in matmul.MatmulBuilder(g, grp).build()[0]
    monkeypatch.setenv("DYNGRAD_MATMUL", "blas")
    assert tune.choose("float32", 2, 2, 2, False, False) == "blas"
    assert f"call void @{sgemm}(" in matmul.MatmulBuilder(g, grp).build()[0]
    assert tune.choose("float32", 2, 2, 0, False, False) == "generated"  # (K = 0: never)
    monkeypatch.setenv("DYNGRAD_MATMUL", "measure")
    assert tune.choose("float32", 128, 64, 100, False, False) == "blas"
    assert len(choices) == 1
    monkeypatch.setenv("DYNGRAD_MATMUL", "fastest")
    with pytest.raises(ValueError, match="DYNGRAD_MATMUL='fastest'.*measure, blas, generated"):
        tune.choose("float32", 128, 64, 100, False, False)


@needs_blas
def test_measuring_times_both_kernels_within_a_few_milliseconds():
    t = time.perf_counter()
    r = tune.measure("float32", 1024, 1024, 1024, False, True)  # (timed on its first rows)
    assert time.perf_counter() - t < 0.5
    assert r["rows"] < 1024 and r["choice"] in ("blas", "generated")
    assert r["blas"] > 0 and r["generated"] > 0  # (seconds per whole product)


# ------------------------------------------------------------------ end to end


def compiled_matmul(a, b):
    cf = compiler.compile(lambda x, y: x @ y, backend="llvm")
    cf(a, b)  # traced
    out = cf(a, b)  # the plan
    v = cf.variants[0]
    assert v.calls >= 1
    return out, v


@pytest.mark.parametrize("sa,sb,dtype", [
    ((5, 7), (7, 3), np.float32),
    ((3, 1, 4, 6), (2, 6, 5), np.float32),
    ((1, 9), (9, 7), np.float64),
    ((8, 9), (9, 1), np.float32),
    ((128, 200), (200, 64), np.float32),
    ((128, 200), (200, 64), np.float64),
])
def test_compiled_matmul_matches_eager(sa, sb, dtype):
    rng = np.random.default_rng(4)
    a = dg.tensor(rng.standard_normal(sa).astype(dtype))
    b = dg.tensor(rng.standard_normal(sb).astype(dtype))
    out, v = compiled_matmul(a, b)
    assert isinstance(v.plan, driver.DriverPlan), v.plan.describe()
    assert v.plan.native_kernels() == (1, 1)
    want = (a @ b).numpy()
    assert_close(out.numpy(), want, dtype)


def test_compiled_transposed_operands_match_eager():
    """``x.T @ y`` and ``x @ y.T`` as the user writes them (the transposes become flags or
    movement groups: whatever the plan, the result is eager's)."""
    rng = np.random.default_rng(5)
    x = dg.tensor(rng.standard_normal((9, 6)).astype(np.float32))
    y = dg.tensor(rng.standard_normal((9, 4)).astype(np.float32))
    z = dg.tensor(rng.standard_normal((4, 6)).astype(np.float32))
    f = compiler.compile(lambda x, y, z: (x.T @ y, x @ z.T), backend="llvm")
    for _ in range(2):
        p, q = f(x, y, z)
    assert_close(p.numpy(), x.numpy().T @ y.numpy(), np.float32)
    assert_close(q.numpy(), x.numpy() @ z.numpy().T, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("width", [(16, 8), (200, 64)], ids=["small", "blas-sized"])
def test_linear_layer_forward_and_backward_match_eager(dtype, width):
    """A Linear layer's loss and .grad computed inside the compiled call (the joint graph),
    and, separately, its forward compiled with the backward run outside."""
    n_in, n_out = width
    dg.manual_seed(0)
    lin1 = nn.Linear(n_in, n_out)
    if dtype is np.float64:
        lin1 = lin1.double()
    lin2 = copy.deepcopy(lin1)

    def make(lin):
        def step(x):
            for p in lin.parameters():
                p.grad = None
            out = lin(x)
            loss = (out * out).mean()
            loss.backward()
            return loss
        return step

    eager, comp = make(lin1), compiler.compile(make(lin2), backend="llvm")
    rng = np.random.default_rng(6)
    for _ in range(3):
        x = dg.tensor(rng.standard_normal((128, n_in)).astype(dtype))
        l1, l2 = eager(x), comp(x)
        assert_close(np.asarray(l2.item()), np.asarray(l1.item()), dtype)
        for p1, p2 in zip(lin1.parameters(), lin2.parameters()):
            assert_close(p2.grad.numpy(), p1.grad.numpy(), dtype)
    v = comp.variants[0]
    assert v.calls >= 1
    assert isinstance(v.plan, driver.DriverPlan), v.plan.describe()

    # forward compiled, backward outside (the backward plan runs on .backward())
    fwd = compiler.compile(lambda x: lin2(x), backend="llvm")
    for _ in range(3):
        x = dg.tensor(rng.standard_normal((128, n_in)).astype(dtype))
        for lin, f in ((lin1, lin1), (lin2, fwd)):
            for p in lin.parameters():
                p.grad = None
            out = f(x)
            (out * out).sum().backward()
        assert_close(out.detach().numpy(), lin1(x).detach().numpy(), dtype)
        for p1, p2 in zip(lin1.parameters(), lin2.parameters()):
            assert_close(p2.grad.numpy(), p1.grad.numpy(), dtype)
    v = fwd.variants[0]
    assert v.calls >= 1 and v.backward is not None
    assert isinstance(v.plan, driver.DriverPlan), v.plan.describe()
    assert isinstance(v.backward.plan, driver.DriverPlan), v.backward.plan.describe()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("sa,sb", [((32, 16), (16, 32)), ((3, 5), (5, 17)), ((1, 1), (1, 1)),
                                   ((2, 4, 7), (7, 9)), ((32, 32), (32, 32)), ((4, 0), (0, 6))])
def test_small_products_are_loops_of_their_shape_with_the_generated_kernels_bits(
        dtype, ta, tb, sa, sb, monkeypatch):
    """Up to SMALL_WORK multiply-adds a product is written out for its shape (no call into
    the general kernel); each element is the same fma chain over k, so the bits are the
    generated kernel's."""
    monkeypatch.delenv("DYNGRAD_MATMUL", raising=False)
    rng = np.random.default_rng(5)
    a = physical(rng, sa, ta, dtype)
    b = physical(rng, sb, tb, dtype)
    small, text = run_matmul(a, b, ta, tb)
    assert matmul.SMALL_WORK >= sa[-2] * sb[-1] * sa[-1]
    assert f"@{gemm.name(emit.LLTYPE[np.dtype(dtype).name])}(" not in text
    general, text_g = run_matmul(a, b, ta, tb, use_blas=False)
    assert f"@{gemm.name(emit.LLTYPE[np.dtype(dtype).name])}(" in text_g
    np.testing.assert_array_equal(small, general)
    want = np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)
    assert_close(small, want, dtype)


@pytest.mark.parametrize("shapes", [((12, 4, 64, 32), (12, 4, 32, 64)),
                                    ((3, 20, 32, 16), (20, 16, 64)),  # broadcast batch, small
                                    ((5, 7, 60, 30), (5, 7, 60, 40))])
def test_a_batch_of_small_products_splits_across_threads_with_the_same_bits(shapes):
    """Entries too small to split their own rows (attention's per-head products) run as
    ranges of entries on the pool's threads: every entry whole on one thread, so the bits
    are the same on 1, 2 and 3 threads, and equal the generated kernel's one at a time."""
    from compiler.backends.llvm import codegen
    sa, sb = shapes
    r = np.random.default_rng(5)
    a = dg.tensor(r.standard_normal(sa).astype(np.float32))
    b = dg.tensor(r.standard_normal(sb).astype(np.float32))
    if sa == (5, 7, 60, 30):
        fn = (lambda a, b: a.mT @ b)  # (a transposed operand)
    else:
        fn = (lambda a, b: a @ b)
    before = threads.team()
    outs = []
    try:
        for team in (1, 2, 3):
            threads.set_team(team)
            f = compiler.compile(lambda a, b: fn(a, b) * 1.0, backend="llvm")
            outs.append(f(a, b).numpy())
            outs.append(f(a, b).numpy())
            if team == 2 and threads.find() is not None:
                v = f.variants[0]
                (mm,) = [grp for grp in v.plan.groups if grp.kind == "matmul"]
                text, _ = codegen.module_ir(v.trace.graph, [mm])
                assert "_range(" in text and "@dg_parallel" in text
    finally:
        threads.set_team(max(before, 1))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    np.testing.assert_allclose(outs[0], fn(a, b).numpy(), rtol=1e-5, atol=1e-5)
