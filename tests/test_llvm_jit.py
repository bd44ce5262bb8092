"""The LLVM JIT layer: compile, call, vectorise, reload object code."""

import ctypes
import re

import numpy as np
import pytest

llvm_jit = pytest.importorskip("compiler.backends.llvm.jit")
from conftest import packed_bits  # noqa: E402

from compiler.backends.llvm import target  # noqa: E402

SAXPY = """
define void @saxpy(float* noalias %x, float* noalias %y, float %a, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %px = getelementptr float, float* %x, i64 %i
  %py = getelementptr float, float* %y, i64 %i
  %vx = load float, float* %px
  %vy = load float, float* %py
  %m = fmul float %vx, %a
  %s = fadd float %m, %vy
  store float %s, float* %py
  %i1 = add i64 %i, 1
  %c = icmp slt i64 %i1, %n
  br i1 %c, label %loop, label %exit
exit:
  ret void
}
"""

PTR = ctypes.c_void_p


def test_compiled_kernel_computes_saxpy():
    c = llvm_jit.compile_ir(SAXPY)
    f = c.cfunc("saxpy", None, PTR, PTR, ctypes.c_float, ctypes.c_int64)
    x = np.arange(1000, dtype=np.float32)
    y = np.ones(1000, dtype=np.float32)
    f(x.ctypes.data, y.ctypes.data, 2.0, x.size)
    np.testing.assert_array_equal(y, 2 * np.arange(1000, dtype=np.float32) + 1)


def test_simple_kernel_uses_vectors_of_the_width_the_target_asked_for():
    t = target.current()
    asm = llvm_jit.assembly(SAXPY)
    # packed (vector) multiplies, not scalar mulss, as wide as the target's loop vectors
    # (its widest registers, or on AVX-512 the measured 256/512: target.py, widths.py)
    assert max(packed_bits(asm, "mulps"), default=0) == t.loop_bits, asm[:2000]
    assert t.loop_bits <= t.vector_bits


def test_object_code_reloads_into_a_fresh_engine():
    c = llvm_jit.compile_ir(SAXPY, keep_object=True)
    assert c.object_code
    again = llvm_jit.load_object(c.object_code)
    f = again.cfunc("saxpy", None, PTR, PTR, ctypes.c_float, ctypes.c_int64)
    x = np.full(17, 3, np.float32)
    y = np.zeros(17, np.float32)
    f(x.ctypes.data, y.ctypes.data, 0.5, 17)
    np.testing.assert_array_equal(y, np.full(17, 1.5, np.float32))


def test_every_module_gets_a_unique_name():
    a, b = llvm_jit.compile_ir(SAXPY), llvm_jit.compile_ir(SAXPY)
    assert a.module.name != b.module.name


def test_missing_function_is_a_clear_error():
    c = llvm_jit.compile_ir(SAXPY)
    with pytest.raises(KeyError, match="nope"):
        c.address("nope")


def test_loop_marks_become_distinct_interleaving_loop_ids():
    """Kernels mark a loop's back edge with ``!DG_INTERLEAVE`` (the same text in equal
    kernels); compiling numbers each mark as a loop ID of its own asking for interleaving,
    and the marked saxpy still computes the same."""
    two = SAXPY.replace("label %exit\n", "label %exit, !llvm.loop !DG_INTERLEAVE\n") + \
        SAXPY.replace("@saxpy", "@saxpy2").replace(
            "label %exit\n", "label %exit, !llvm.loop !DG_INTERLEAVE\n")
    text = llvm_jit.number_loop_metadata(two)
    assert "DG_INTERLEAVE" not in text
    ids = re.findall(r"!llvm\.loop !(\d+)", text)
    assert len(ids) == 2 and ids[0] != ids[1]
    for i in ids:
        assert f"!{i} = distinct !{{!{i}, " in text
    assert f'i32 {llvm_jit.INTERLEAVE}}}' in text and "llvm.loop.interleave.count" in text
    assert llvm_jit.number_loop_metadata(SAXPY) == SAXPY
    c = llvm_jit.compile_ir(two)
    x, y = np.arange(1000, dtype=np.float32), np.ones(1000, np.float32)
    c.cfunc("saxpy2", None, PTR, PTR, ctypes.c_float, ctypes.c_int64)(
        x.ctypes.data, y.ctypes.data, 2.0, 1000)
    np.testing.assert_array_equal(y, 2 * np.arange(1000, dtype=np.float32) + 1)


def test_long_loops_calling_vector_math_are_interleaved_and_others_are_not():
    from compiler.backends.llvm import emit
    assert emit.interleaved(["tanh"], 4096) and emit.interleaved(["exp"], 256)
    assert not emit.interleaved([], 1 << 20)  # plain arithmetic: LLVM's own choice
    assert not emit.interleaved(["tanh"], 64)  # short: the remainder would do the work
