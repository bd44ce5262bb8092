"""Both cores for big kernels: the system's OpenMP runtime (libgomp), called from IR.

``GOMP_parallel(fn, data, 0, 0)`` runs ``fn(data)`` on every thread of the runtime's team
(about 0.4 µs per region, measured: LLVM_NOTES.md); each thread takes blocks ``t, t + T,
t + 2T, ...`` of work whose boundaries depend only on the problem size, so results are the
same whatever the number of threads. libgomp is not on every machine: :func:`find` returns
None when it is missing — or when ``DYNGRAD_THREADS=1`` — and kernels then stay on one
thread (the tests run both ways).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

import llvmlite.binding as llvm

PAR_MIN = 1 << 18  # elements from which a reduction is split across threads
_lock = threading.Lock()
_found: list = []

DECLARATIONS = ("declare void @GOMP_parallel(ptr, ptr, i32, i32)\n"
                "declare i32 @omp_get_thread_num()\n"
                "declare i32 @omp_get_num_threads()\n")


def find() -> str | None:
    """The path of libgomp, loaded for the JIT to link against, or None (see above)."""
    if os.environ.get("DYNGRAD_THREADS", "").strip() == "1":
        return None
    with _lock:
        if not _found:
            _found.append(_search())
        return _found[0]


def _search() -> str | None:
    name = ctypes.util.find_library("gomp")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if not all(hasattr(lib, s) for s in ("GOMP_parallel", "omp_get_thread_num",
                                             "omp_get_num_threads")):
            return None
        llvm.load_library_permanently(name)
    except OSError:
        return None
    return name
