"""numpy's own BLAS, found at run time, for generated code to call.

numpy's wheels bundle OpenBLAS (``numpy.libs/libscipy_openblas64_*.so``, CBLAS symbols
``scipy_cblas_sgemm64_`` / ``scipy_cblas_dgemm64_`` with 64-bit integers). Its location and
names are numpy-internal, so :func:`find` looks for them and returns None when they are
absent — the matmul code generator then uses its own loops. ``DYNGRAD_BLAS=0`` turns the
BLAS path off (how the tests exercise both paths).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from dataclasses import dataclass

import llvmlite.binding as llvm
import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112  # the CBLAS enum values

_lock = threading.Lock()
_found: list = []  # [Blas | None] once searched


@dataclass(frozen=True)
class Blas:
    path: str
    sgemm: str  # symbol names
    dgemm: str

    def gemm(self, dtype_name: str) -> str:
        return self.sgemm if dtype_name == "float32" else self.dgemm


def _candidates() -> list:
    root = os.path.dirname(os.path.dirname(np.__file__))
    return sorted(glob.glob(os.path.join(root, "numpy.libs", "libscipy_openblas*.so*")) +
                  glob.glob(os.path.join(root, "numpy", ".libs", "libscipy_openblas*.so*")))


def find() -> Blas | None:
    """numpy's bundled OpenBLAS, loaded into the process for the JIT to link against, or
    None (not found, its symbols differ, or ``DYNGRAD_BLAS=0``)."""
    if os.environ.get("DYNGRAD_BLAS", "1").strip() in ("0", "off", "false", "no"):
        return None
    with _lock:
        if not _found:
            _found.append(_search())
        return _found[0]


def _search() -> Blas | None:
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix in ("64_", ""):
            s, d = f"scipy_cblas_sgemm{suffix}", f"scipy_cblas_dgemm{suffix}"
            if hasattr(lib, s) and hasattr(lib, d) and suffix == "64_":  # 64-bit ints only
                llvm.load_library_permanently(path)
                return Blas(path, s, d)
    return None


def declaration(blas: Blas, dtype_name: str) -> str:
    """The LLVM declaration of the gemm routine for ``dtype_name``."""
    t = "float" if dtype_name == "float32" else "double"
    return (f"declare void @{blas.gemm(dtype_name)}(i32, i32, i32, i64, i64, i64, {t}, ptr, "
            f"i64, ptr, i64, {t}, ptr, i64)\n")


def pool_threads(blas: Blas) -> int:
    """The number of threads of the library's own pool (``OPENBLAS_NUM_THREADS``, else one
    per CPU), as it reports it."""
    fn = getattr(ctypes.CDLL(blas.path), "scipy_openblas_get_num_threads64_", None)
    return int(fn()) if fn is not None else os.cpu_count() or 1


def set_pool_threads(blas: Blas, n: int) -> None:
    """Give the library's own pool ``n`` threads (what ``OPENBLAS_NUM_THREADS`` sets when
    it loads; the benchmarks' ``--threads``)."""
    fn = getattr(ctypes.CDLL(blas.path), "scipy_openblas_set_num_threads64_", None)
    if fn is None:
        raise RuntimeError(f"{os.path.basename(blas.path)} cannot set its thread count")
    fn(int(n))
