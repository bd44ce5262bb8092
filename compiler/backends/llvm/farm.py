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
import itertools
import os
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..base import SettingError
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
            raise SettingError(f"DYNGRAD_COMPILE_WORKERS must be a whole number of worker "
                             f"processes (0 turns them off), got {env!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, MAX_WORKERS))


class _Worker:
    """One worker process and its pipes (a job at a time; each answer names its job)."""

    def __init__(self) -> None:
        # -P: the script's directory (this package's) is not put first on sys.path
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(worker.__file__))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, close_fds=True)
        self.inbox = b""  # bytes read but not yet parsed

    def send(self, job: int, cpu: str, features: str, text: str) -> threading.Thread:
        """Write job number ``job`` from a thread (a pipe holds 64 KiB; a part is larger),
        returned so the caller can join it."""
        def write():
            try:
                for part in (str(job).encode(), cpu.encode(), features.encode(),
                             text.encode()):
                    worker.write_string(self.proc.stdin, part)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # (the read below finds the worker gone)
        th = threading.Thread(target=write, daemon=True)
        th.start()
        return th

    def _take(self, n: int, deadline: float) -> bytes:
        """``n`` bytes of the answer, read as they come until ``deadline`` (RuntimeError
        past it, or when the worker's output ends)."""
        fd = self.proc.stdout.fileno()
        while len(self.inbox) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0.0))
            if not ready:
                raise RuntimeError(f"a compile worker took over {TIMEOUT_S:.0f} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError("a compile worker exited")
            self.inbox += chunk
        out, self.inbox = self.inbox[:n], self.inbox[n:]
        return out

    def receive(self, job: int, deadline: float) -> bytes:
        """The object code of job ``job``, or RuntimeError (an error answered, an answer to
        another job, an exit, the deadline)."""
        status = self._take(1, deadline)
        (size,) = worker.LENGTH.unpack(self._take(worker.LENGTH.size, deadline))
        answered = int(self._take(size, deadline))
        (size,) = worker.LENGTH.unpack(self._take(worker.LENGTH.size, deadline))
        payload = self._take(size, deadline)
        if answered != job:
            raise RuntimeError(f"a compile worker answered job {answered}, not {job}")
        if status != b"o":
            raise RuntimeError("a compile worker failed: " + payload.decode(errors="replace"))
        return payload

    def close(self) -> None:
        """Close its input (it exits at the end of its input)."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except (OSError, ValueError):
                pass


_pool: list[_Worker] = []
_pool_lock = threading.Lock()
_jobs = itertools.count(1)
_unavailable: list = []  # why workers cannot start in this process (then none are tried)


def _workers(n: int) -> list[_Worker]:
    """``n`` live workers (started as needed); OSError if one cannot start."""
    _pool[:] = [w for w in _pool if w.proc.poll() is None]
    while len(_pool) < n:
        try:
            _pool.append(_Worker())
        except (OSError, TypeError, ValueError) as exc:  # (no usable sys.executable)
            _unavailable.append(f"{type(exc).__name__}: {exc}")
            raise OSError(_unavailable[-1]) from None
    return _pool[:n]


def _drop(ws: list) -> None:
    """End workers whose answers can no longer be trusted to match their jobs."""
    for w in ws:
        w.close()
        try:
            w.proc.kill()
            w.proc.wait(timeout=1)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if w in _pool:
            _pool.remove(w)


def _forget_in_child() -> None:
    """In a forked child: the parent's workers are the parent's. Close the child's copies
    of their pipes (so the parent's workers see their input end when the parent closes it,
    not when the child exits too) and start afresh, with a lock no parent thread holds."""
    global _pool_lock
    for w in _pool:
        for f in (w.proc.stdin, w.proc.stdout):
            try:
                os.close(f.fileno())
            except (OSError, ValueError):
                pass
    _pool.clear()
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def shutdown() -> None:
    """End every worker: their input closes and they exit (killed after a second)."""
    with _pool_lock:
        for w in _pool:
            w.close()
        for w in _pool:
            try:
                w.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        _pool.clear()


def prestart() -> None:
    """Start the workers a module worth cutting will use, ahead of it: a graph this large
    (``runner.compile_graph``) spends a few hundred milliseconds in fusion, layout and IR
    before its module reaches LLVM, time in which a worker starts (~80 ms: Python and
    llvmlite) off the compile's critical path. Nothing is started when none would be used."""
    if workers_wanted() == 0 or _unavailable or getattr(sys, "frozen", False):
        return
    with _pool_lock:
        try:
            _workers(workers_wanted())
        except OSError:
            pass  # (compile_parts finds ``_unavailable`` and compiles whole)


PRESTART_NODES = 200  # a graph this large makes a module of MIN_LINES or more, unless its
#                      nodes are all elementwise (W8: 1,798 nodes, 13,490 lines; W7a's
#                      convolutions: 259 nodes, 6,771 lines; W1's MLP: 49 nodes, 1,394)


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
    (n,) = _COUNT.unpack_from(payload, len(_PACKED))
    pos, out = len(_PACKED) + _COUNT.size, []
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
    if n == 0 or _unavailable or getattr(sys, "frozen", False):  # (a frozen app's
        return None  # executable is the app itself, not Python)
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
        jobs = [next(_jobs) for _ in ws]
        writers = [w.send(j, cpu, features, t) for w, j, t in zip(ws, jobs, texts[1:])]
        done = False
        try:
            objects = [worker.object_code(texts[0], cpu, features)]
            deadline = time.monotonic() + TIMEOUT_S
            for w, j in zip(ws, jobs):
                objects.append(w.receive(j, deadline))
            done = True
        except RuntimeError:
            stats["fallbacks"] += 1
            return None
        finally:
            for th in writers:
                th.join(timeout=1)
            if not done:  # (an error, an exception in this part, an interrupt: jobs may
                _drop(ws)  # be left unanswered in the workers — never read them later)
    stats["split"] += 1
    stats["parts"] += len(objects)
    return objects
