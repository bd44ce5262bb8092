"""The LLVM matmul code generator (llvm/matmul.py) against numpy: each node's own
``impl`` (``P["matmul"].impl(a, b, ta=..., tb=...)``, what the interpreter runs).

Both paths are checked — the generated row loops (``use_blas=False``) and the call into
numpy's bundled OpenBLAS (``use_blas=True``, skipped when ``blas.find()`` finds none) — for
float32 and float64, 2-d and batched operands with broadcast batch dims, row and column
vectors as matrices, K=1, K=0, a BLAS-sized product, every transpose-flag combination. The
products sum in another order than numpy's, so results are compared within a tolerance
relative to max|C| (1e-5 float32, 1e-12 float64). Every kernel writes into an output with
sentinel bytes before and after it, which must survive.

Also: ``DYNGRAD_BLAS=0``, the ``BLAS_MIN_WORK`` switch between the paths (seen in the IR), and
end-to-end ``compiler.compile(..., backend="llvm")`` matmuls and a Linear layer's forward and
backward against eager.
"""

from __future__ import annotations

import copy
import ctypes

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import blas, codegen, driver, jit, runner
from compiler.backends.llvm import matmul as llvm_matmul
from compiler.ir import Graph, Value
from compiler.passes.fusion import fuse
from dyngrad import nn
from dyngrad.dtypes import _BY_NP
from dyngrad.ops import REGISTRY as P

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
    builder = codegen._MatmulBuilder(g, grp, use_blas=use_blas)
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
    "batched-broadcast": ((3, 1, 4, 6), (2, 6, 5)),
    "batch-a-only": ((2, 3, 4, 6), (6, 5)),
    "batch-b-only": ((4, 6), (2, 3, 6, 5)),
    "row-1xk": ((1, 9), (9, 7)),
    "col-kx1": ((8, 9), (9, 1)),
    "k1": ((6, 1), (1, 5)),
    "blas-sized": ((128, 200), (200, 64)),
    "wide-b": ((4, 300), (300, 300)),  # tb: B too big for the generated path's transposed copy
}
FLAGS = [(False, False), (False, True), (True, False), (True, True)]
PATHS = [pytest.param(False, id="loops"), pytest.param(True, id="blas", marks=needs_blas)]


@pytest.mark.parametrize("use_blas", PATHS)
@pytest.mark.parametrize("ta,tb", FLAGS, ids=["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matmul_kernel_matches_numpy(dtype, case, ta, tb, use_blas):
    rng = np.random.default_rng([list(CASES).index(case), int(ta), int(tb)])
    sa, sb = CASES[case]
    a, b = physical(rng, sa, ta, dtype), physical(rng, sb, tb, dtype)
    got, text = run_matmul(a, b, ta, tb, use_blas=use_blas)
    want = P["matmul"].impl(a, b, ta=ta, tb=tb)
    assert_close(got, want, dtype)
    gemm = blas.find().gemm(np.dtype(dtype).name) if use_blas else None
    assert (gemm is not None and f"@{gemm}(" in text) == bool(use_blas)
    if tb and not use_blas:  # a transposed B is copied to a stack buffer when small enough
        k, n = sb[-2:]
        small = k * n * np.dtype(dtype).itemsize <= llvm_matmul._TRANSPOSE_BYTES
        assert ("%bt.tmp = alloca" in text) == small


@pytest.mark.parametrize("use_blas", PATHS)
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_matmul_of_one_input_with_itself(dtype, tb, use_blas):
    """``x @ x`` / ``x @ x.T``: A and B are one buffer (both only read)."""
    x = np.random.default_rng(3).standard_normal((12, 12)).astype(dtype)
    got, _ = run_matmul(x, x, False, tb, use_blas=use_blas, same=True)
    assert_close(got, P["matmul"].impl(x, x, ta=False, tb=tb), dtype)


@pytest.mark.parametrize("ta,tb", FLAGS, ids=["nn", "nt", "tn", "tt"])
def test_empty_inner_dimension_gives_zeros_on_the_loop_path(ta, tb):
    rng = np.random.default_rng(0)
    a, b = physical(rng, (3, 0), ta, np.float32), physical(rng, (0, 4), tb, np.float32)
    got, _ = run_matmul(a, b, ta, tb, use_blas=False)
    np.testing.assert_array_equal(got, np.zeros((3, 4), np.float32))


@needs_blas
def test_empty_inner_dimension_is_not_sent_to_blas():
    g, grp = matmul_graph((3, 0), (0, 4), np.float32)
    with pytest.raises(NotImplementedError, match="empty inner"):
        codegen._MatmulBuilder(g, grp, use_blas=True).build()


@pytest.mark.parametrize("use_blas", PATHS)
def test_empty_output_writes_nothing(use_blas):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((0, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    got, _ = run_matmul(a, b, use_blas=use_blas)
    assert got.shape == (0, 4)


def test_unsupported_dtypes_are_refused():
    g, grp = matmul_graph((3, 4), (4, 5), np.int64)
    with pytest.raises(NotImplementedError, match="dtype"):
        codegen._MatmulBuilder(g, grp)


# ------------------------------------------------------------------ BLAS: found, switched off


def test_dyngrad_blas_0_turns_blas_off(monkeypatch):
    monkeypatch.setattr(blas, "_found", [])  # (restored: the cached search result)
    for off in ("0", "off", "false", "no", " 0 "):
        monkeypatch.setenv("DYNGRAD_BLAS", off)
        assert blas.find() is None
        assert blas._found == [], "DYNGRAD_BLAS=0 should not even search"
        g, grp = matmul_graph((128, 200), (200, 64), np.float32)
        for use_blas in (None, True):
            b = codegen._MatmulBuilder(g, grp, use_blas=use_blas)
            assert b.blas is None
            assert "gemm" not in b.build()[0]
    rng = np.random.default_rng(1)
    a, bb = rng.standard_normal((128, 200)), rng.standard_normal((200, 64))
    got, text = run_matmul(a.astype(np.float32), bb.astype(np.float32), use_blas=True)
    assert "gemm" not in text
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


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_blas_from_blas_min_work_on(dtype):
    """Below ``BLAS_MIN_WORK`` multiply-adds the generated loops (no gemm in the IR); from it
    on, a call of the gemm routine."""
    m = n = 16
    k_at = -(-llvm_matmul.BLAS_MIN_WORK // (m * n))  # the smallest K reaching the threshold
    gemm = blas.find().gemm(np.dtype(dtype).name)
    rng = np.random.default_rng(2)
    for k, expect in ((k_at - 1, False), (k_at, True)):
        assert (m * n * k >= llvm_matmul.BLAS_MIN_WORK) == expect
        g, grp = matmul_graph((m, k), (k, n), dtype)
        b = codegen._MatmulBuilder(g, grp)
        text = b.build()[0]
        assert (b.blas is not None) == expect
        assert (f"call void @{gemm}(" in text) == expect
        assert (f"declare void @{gemm}(" in text) == expect
        x, y = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        got, _ = run_matmul(x, y)
        assert_close(got, x @ y, dtype)
    # the module of several groups declares the routine once
    g, grp = matmul_graph((m, k_at), (k_at, n), dtype)
    text, _ = codegen.module_ir(g, [grp, grp])
    assert text.count(f"declare void @{gemm}(") == 1


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
    assert isinstance(v.plan, driver.DriverPlan), runner.describe(v.plan)
    assert runner.native_kernels(v.plan) == (1, 1)
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
    assert isinstance(v.plan, driver.DriverPlan), runner.describe(v.plan)

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
    assert isinstance(v.plan, driver.DriverPlan), runner.describe(v.plan)
    assert isinstance(v.backward.plan, driver.DriverPlan), runner.describe(v.backward.plan)
