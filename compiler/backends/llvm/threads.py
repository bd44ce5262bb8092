"""Both cores for big kernels: the system's OpenMP runtime (libgomp), called from IR.

``GOMP_parallel(fn, data, T, 0)`` runs ``fn(data)`` on a team of ``T`` threads (about 0.4 µs
per region, measured: LLVM_NOTES.md); each thread takes blocks ``t, t + T, t + 2T, ...`` of
work whose boundaries depend only on the problem size, so results are the same whatever the
number of threads. ``T`` is this process's own choice (:func:`team_size`: ``OMP_NUM_THREADS``
when set, else the CPUs the process may run on), passed explicitly: a library sharing the
runtime and lowering its default (``torch.set_num_threads(1)`` does) does not change it.
libgomp is not on every machine: :func:`find` returns None when it is missing — or when
``DYNGRAD_THREADS=1`` — and kernels then stay on one thread (the tests run both ways). A
process forked after kernels ran runs them on one thread (:func:`split_call`).
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
                "declare i32 @omp_get_num_threads()\n"
                "@dg_threads_on = external global i32\n")

def team_size() -> int:
    """Threads per team: ``OMP_NUM_THREADS`` (its first number) when set, else the CPUs this
    process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The team size while kernels may start OpenMP teams; a forked child sets it to 0 (libgomp's
# thread pool does not survive fork: a child starting a team would hang) and its kernels then
# run their blocks on the calling thread — the same blocks, so the same bits.
_on = ctypes.c_int32(team_size())


def _after_fork_in_child() -> None:
    _on.value = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def split_call(name: str) -> str:
    """IR running ``@<name>_omp`` on the team, or ``@<name>_blocks(ctx, 0, 1)`` here when
    threads are off in this process; continues in block ``%par.joined``."""
    return ("  %par.on = load volatile i32, ptr @dg_threads_on\n"
            "  %par.yes = icmp ne i32 %par.on, 0\n"
            "  br i1 %par.yes, label %par.team, label %par.here\npar.team:\n"
            f"  call void @GOMP_parallel(ptr @{name}_omp, ptr %ctx, i32 %par.on, i32 0)\n"
            "  br label %par.joined\npar.here:\n"
            f"  call void @{name}_blocks(ptr %ctx, i64 0, i64 1)\n"
            "  br label %par.joined\npar.joined:")


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
    llvm.add_symbol("dg_threads_on", ctypes.addressof(_on))  # (resolved when code loads)
    return name
