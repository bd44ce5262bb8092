"""Compiling one large module on several cores: its parts (``split.py``) go to worker
processes while this process compiles one itself, and the objects load into one engine.

Why processes: LLVM's optimiser and code generator take most of a cold start (W7b's ResNet
step: ~1.4 s of ~2.3 s for one 17,000-line module) and llvmlite serialises LLVM calls behind
one global lock, so threads would take turns. A worker (``worker.py``, run as a script:
llvmlite and the standard library only) starts in tens of milliseconds and is kept for the
process's later modules; it is started on the first module worth cutting (``MIN_LINES``).

How many: one worker per CPU this process may run on beyond the first, at most
``MAX_WORKERS``; ``DYNGRAD_COMPILE_WORKERS=N`` sets the number (0: every module is compiled
in this process, as before). Nothing about the result depends on it: a part's object code
is what the whole module's compile makes of those functions, and the disk cache stores the
objects under the whole text's key.

Failures never fail a compile: a worker that cannot start, dies, answers an error or takes
longer than ``TIMEOUT_S`` is dropped, and the module is compiled whole in this process
(``stats`` counts how often).
"""

from __future__ import annotations

import atexit
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import split, worker

MIN_LINES = 2500  # a module shorter than this compiles in well under 0.3 s: not cut
MAX_WORKERS = 7
TIMEOUT_S = 300.0  # a part's compile (the largest take ~1 s): a worker past this is dropped
stats = {"split": 0, "parts": 0, "fallbacks": 0}
_PACKED = b"DGPARTS1"  # object code of several parts, as one payload (see pack)
_COUNT = struct.Struct("<I")


def workers_wanted() -> int:
    env = os.environ.get("DYNGRAD_COMPILE_WORKERS", "").strip()
    if env:
        try:
            return max(0, min(int(env), 64))
        except ValueError:
            raise ValueError(f"DYNGRAD_COMPILE_WORKERS must be a whole number of worker "
                             f"processes (0 turns them off), got {env!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_WORKERS))


class _Worker:
    """One worker process and its pipes (a job at a time)."""

    def __init__(self) -> None:
        # -P: the script's directory (this package's) is not put first on sys.path
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(worker.__file__))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, close_fds=True)

    def send(self, cpu: str, features: str, text: str) -> threading.Thread:
        """Write the job from a thread (a pipe holds 64 KiB; the part is larger), returned
        so the caller can join it."""
        def write():
            try:
                for part in (cpu.encode(), features.encode(), text.encode()):
                    worker.write_string(self.proc.stdin, part)
                self.proc.stdin.flush()
            except OSError:
                pass  # (the read below finds the worker gone)
        th = threading.Thread(target=write, daemon=True)
        th.start()
        return th

    def receive(self, deadline: float) -> bytes:
        """The object code answered, or RuntimeError (an error, an exit, the deadline)."""
        out = self.proc.stdout
        left = deadline - time.monotonic()
        ready, _, _ = select.select([out], [], [], max(left, 0.0))
        if not ready:
            raise RuntimeError(f"a compile worker took over {TIMEOUT_S:.0f} s")
        status = out.read(1)
        payload = worker.read_string(out)
        if status == b"o" and payload is not None:
            return payload
        raise RuntimeError("a compile worker failed: " +
                           (payload.decode(errors="replace") if payload else "it exited"))

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_pool: list[_Worker] = []
_pool_lock = threading.Lock()
_owner: list = [os.getpid()]  # the process the pool's workers answer


def _workers(n: int) -> list[_Worker]:
    """``n`` live workers (started as needed). A forked child (a DataLoader's worker) never
    writes to its parent's workers: their pipes are the parent's, so it starts its own."""
    if _owner[0] != os.getpid():
        _pool.clear()
        _owner[0] = os.getpid()
    alive = [w for w in _pool if w.proc.poll() is None]
    _pool[:] = alive
    while len(_pool) < n:
        _pool.append(_Worker())
    return _pool[:n]


def _drop(w: _Worker) -> None:
    try:
        w.proc.kill()
    except OSError:
        pass
    if w in _pool:
        _pool.remove(w)


@atexit.register
def shutdown() -> None:
    """End every worker (their input closes; they exit)."""
    with _pool_lock:
        if _owner[0] == os.getpid():  # (a forked child leaves its parent's workers be)
            for w in _pool:
                w.close()
        _pool.clear()


def pack(objects: list) -> bytes:
    """Several object files as one payload (one object stays as it is)."""
    if len(objects) == 1:
        return objects[0]
    return _PACKED + _COUNT.pack(len(objects)) + b"".join(
        worker.LENGTH.pack(len(o)) + o for o in objects)


def unpack(payload: bytes) -> list:
    """The object files of a payload made by :func:`pack`."""
    if not payload.startswith(_PACKED):
        return [payload]
    (n,), pos, out = _COUNT.unpack_from(payload, len(_PACKED)), \
        len(_PACKED) + _COUNT.size, []
    for _ in range(n):
        (size,) = worker.LENGTH.unpack_from(payload, pos)
        pos += worker.LENGTH.size
        out.append(payload[pos:pos + size])
        pos += size
    return out


def compile_parts(ir_text: str, cpu: str, features: str, number) -> list | None:
    """The object files of ``ir_text`` compiled in parts at once, or None when it is not
    worth cutting, cannot be cut or a worker failed (then compile it whole).
    ``number``: the loop-metadata numbering each part's text goes through."""
    if ir_text.count("\n") < MIN_LINES:
        return None
    n = workers_wanted()
    if n == 0:
        return None
    texts = split.split(ir_text, n + 1)
    if texts is None:
        return None
    texts = [number(t) for t in texts]
    with _pool_lock:
        try:
            ws = _workers(len(texts) - 1)
        except OSError:
            stats["fallbacks"] += 1
            return None
        writers = [w.send(cpu, features, t) for w, t in zip(ws, texts[1:])]
        mine = worker.object_code(texts[0], cpu, features)
        deadline = time.monotonic() + TIMEOUT_S
        objects = [mine]
        for w, th in zip(ws, writers):
            try:
                objects.append(w.receive(deadline))
            except (RuntimeError, OSError, ValueError):
                _drop(w)
                stats["fallbacks"] += 1
                return None
            finally:
                th.join(timeout=1)
    stats["split"] += 1
    stats["parts"] += len(objects)
    return objects
