"""The process group: MPI's world, this process's rank in it, the collectives' timeout, and
the rule that an uncaught exception on one rank ends the job on every rank.

MPI (through mpi4py) is imported by :func:`init_process_group`, never by ``import dyngrad``:
the ``dist`` extra (``pip install -e '.[dist]'``) brings mpi4py and MPICH's wheel, whose
``mpiexec`` starts the ranks (``python -m dyngrad.distributed.run -n 2 train.py``).

Note [one failing rank ends the job]: MPI does not notice a rank that dies of an exception —
the others wait in their next collective forever (MPICH's ``mpiexec`` only cleans up after
a rank that calls ``MPI_Abort`` or is killed by a signal). So :func:`init_process_group`
installs an ``excepthook`` that prints the traceback, each line prefixed with the rank, and
calls ``MPI_Abort``: ``mpiexec`` then ends every rank and exits with a nonzero status. A
collective that times out raises, and is then such an uncaught exception; one caught by
the program leaves the group broken (every later collective raises at once) and the job
is aborted at exit, so no rank waits for it. A ``destroy_process_group()`` that runs while
the exception passes (``try: train() finally: dist.destroy_process_group()``, as PyTorch
scripts clean up) keeps the hook: the other ranks may still be waiting in a collective of
the group, so the exception, uncaught, must still end the job.
"""

from __future__ import annotations

import array
import atexit
import fcntl
import importlib.util
import os
import stat
import sys
import termios
import time
import traceback
import warnings
from datetime import timedelta

from .work import DistBackendError, wait_all

__all__ = ["ProcessGroup", "DEFAULT_TIMEOUT", "is_available", "load_mpi", "init_process_group",
           "destroy_process_group", "is_initialized", "get_rank", "get_world_size",
           "get_backend", "default_group", "resolve_group", "wait_until_read"]

DEFAULT_TIMEOUT = timedelta(minutes=30)  # (PyTorch's default for its CPU backends)
INSTALL_HINT = "pip install -e '.[dist]'"
NOT_INITIALIZED = ("Default process group has not been initialized, please make sure to call "
                   "init_process_group.")
OUTPUT_FDS = (1, 2)  # this rank's stdout and stderr: pipes that mpiexec reads
OUTPUT_WAIT = 2.0  # at most this long, before aborting, for mpiexec to read them


def is_available() -> bool:
    """Whether data-parallel training can run here: mpi4py is installed (the ``dist``
    extra). Importing nothing, it does not start MPI.

    >>> dg.distributed.is_available() in (True, False)
    True
    """
    return importlib.util.find_spec("mpi4py") is not None


def load_mpi():
    """mpi4py's ``MPI`` module (its import initialises MPI), or an error naming the extra."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            f"dyngrad.distributed needs mpi4py and an MPI library, which are not installed "
            f"({exc}): install the 'dist' extra ({INSTALL_HINT}), which brings mpi4py and "
            f"MPICH's wheel with its own mpiexec") from None
    return MPI


class ProcessGroup:
    """The ranks that take part in collectives: a duplicate of MPI's world communicator
    (so the program's own mpi4py calls cannot be matched with dyngrad's), the timeout, and
    the number of collectives issued so far (compared between ranks before each one).

    ``rank()`` and ``size()`` as PyTorch's ``ProcessGroup``.
    """

    def __init__(self, mpi, comm, timeout: timedelta) -> None:
        self.mpi = mpi
        self.comm = comm
        self.timeout = timeout.total_seconds()
        self.seq = 0
        self.checking = None  # the Work whose agreement check is in flight, if any
        self.broken: str | None = None  # why no collective can run any more
        self.agreed = False  # inside a compiled call the ranks agreed on: its collectives
        #                      run without their own check (collectives.agree_on_step)
        self._rank, self._size = comm.Get_rank(), comm.Get_size()

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"ProcessGroup(backend='mpi', rank={self._rank}, size={self._size})"

    def abort(self) -> None:
        """End every rank of the job now (``MPI_Abort``; ``mpiexec`` kills the others), once
        ``mpiexec`` has read what this rank wrote (see :func:`wait_until_read`)."""
        sys.stdout.flush()
        sys.stderr.flush()
        wait_until_read(OUTPUT_FDS, OUTPUT_WAIT)
        self.mpi.COMM_WORLD.Abort(1)
        os._exit(1)  # (MPICH's Abort may return to the caller while the job is torn down)


def wait_until_read(fds, limit: float) -> None:
    """Wait, at most ``limit`` seconds, until the pipes ``fds`` hold nothing unread: MPICH's
    ``mpiexec`` drops what a rank wrote and it had not read yet when that rank aborts the
    job, and that is the traceback naming the error (a file or a terminal is not waited
    for)."""
    deadline = time.monotonic() + limit
    unread = array.array("i", [0])
    for fd in fds:
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            fcntl.ioctl(fd, termios.FIONREAD, unread)
            while unread[0] and time.monotonic() < deadline:
                time.sleep(0.002)
                fcntl.ioctl(fd, termios.FIONREAD, unread)
        except OSError:  # (closed, or no such query here: nothing to wait for)
            continue


_WORLD: ProcessGroup | None = None
_ENDING: ProcessGroup | None = None  # destroyed while an exception passed (see the Note)
_previous_hook = None


def default_group() -> ProcessGroup:
    """The group ``init_process_group`` made (PyTorch's error when there is none)."""
    if _WORLD is None:
        raise ValueError(NOT_INITIALIZED)
    return _WORLD


def resolve_group(group) -> ProcessGroup:
    """``group=None`` is the default group; dyngrad has only that one."""
    world = default_group()
    if group is None or group is world:
        return world
    raise ValueError(f"dyngrad.distributed has one process group (the world, made by "
                     f"init_process_group); got {group!r}: pass group=None")


def init_process_group(backend: str | None = None, init_method: str | None = None,
                       timeout: timedelta | None = None, world_size: int = -1, rank: int = -1,
                       store=None, group_name: str = "", pg_options=None,
                       device_id=None) -> None:
    """Join the job's ranks: after this, :func:`get_rank` and :func:`get_world_size` answer
    and collectives run. The ranks and their number come from the launcher
    (``python -m dyngrad.distributed.run -n 2 train.py``, which wraps ``mpiexec``); a
    script started without it is rank 0 of 1. ``timeout`` (a ``datetime.timedelta``, 30
    minutes by default) bounds every collective's wait. Installs the ``excepthook`` that
    ends the job when one rank raises (Note [one failing rank ends the job]).
    ``init_method``, ``store``, ``group_name``, ``pg_options`` and ``device_id`` are
    accepted, for PyTorch scripts, and unused: ``mpiexec`` tells every rank what they would.

    >>> import dyngrad.distributed as dist
    >>> dist.init_process_group("mpi", timeout=datetime.timedelta(minutes=5))  # doctest: +SKIP
    """
    global _WORLD, _ENDING, _previous_hook
    if _WORLD is not None:
        raise ValueError("trying to initialize the default process group twice!")
    if backend is not None and str(backend).lower() != "mpi":
        raise ValueError(
            f"init_process_group: backend {backend!r} is not available: dyngrad.distributed "
            f"runs on MPI only: pass backend='mpi' (or nothing) and start the ranks with "
            f"python -m dyngrad.distributed.run -n N your_script.py")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if not isinstance(timeout, timedelta):
        raise TypeError(f"Expected timeout argument to be of type datetime.timedelta, got "
                        f"{type(timeout).__name__}")
    if timeout.total_seconds() <= 0:
        raise ValueError(f"init_process_group: timeout must be positive, got {timeout}")
    if world_size != -1 or rank != -1:
        warnings.warn(f"For MPI backend, world_size ({world_size}) and rank ({rank}) are "
                      f"ignored since they are assigned by the MPI runtime.", stacklevel=2)
    mpi = load_mpi()
    comm, request = mpi.COMM_WORLD.Idup()
    world = mpi.COMM_WORLD
    try:
        wait_all([request], timeout.total_seconds(),
                 lambda waited: f"init_process_group on rank {world.Get_rank()} of "
                                f"{world.Get_size()}: not every rank joined within "
                                f"{waited:.1f} s (timeout {timeout}): did every rank call "
                                f"init_process_group?")
    except DistBackendError as exc:  # (no group yet to be broken: end the job now)
        sys.stderr.write(f"[rank {world.Get_rank()}] {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        wait_until_read(OUTPUT_FDS, OUTPUT_WAIT)
        world.Abort(1)
        raise
    _WORLD = ProcessGroup(mpi, comm, timeout)
    _ENDING = None
    if sys.excepthook is not _abort_on_uncaught:  # (still there after destroy_process_group)
        _previous_hook = sys.excepthook
    sys.excepthook = _abort_on_uncaught
    atexit.unregister(_abort_if_broken)
    atexit.register(_abort_if_broken)  # (after mpi4py's own: so it runs before MPI_Finalize)


def destroy_process_group(group=None) -> None:
    """Leave the group: later collectives raise until :func:`init_process_group` is called
    again. MPI itself stays initialised (mpi4py finalises it at exit). Restores the
    ``excepthook`` — unless an exception is passing (called from a ``finally`` or ``except``
    block): if it ends this rank, the job is still aborted (Note [one failing rank ends the
    job]).

    >>> dist.destroy_process_group()  # doctest: +SKIP
    """
    global _WORLD, _ENDING
    world = resolve_group(group)
    if world.checking is not None:  # (an agreement check in flight: let it finish)
        world.checking.wait()
    world.comm.Free()
    _WORLD = None
    if sys.exc_info()[1] is not None:  # (the other ranks may wait for this one)
        _ENDING = world
    elif sys.excepthook is _abort_on_uncaught:
        sys.excepthook = _previous_hook


def is_initialized() -> bool:
    """Whether :func:`init_process_group` has run (and no ``destroy_process_group`` since)."""
    return _WORLD is not None


def get_rank(group=None) -> int:
    """This process's rank, 0 to ``get_world_size() - 1``."""
    return resolve_group(group).rank()


def get_world_size(group=None) -> int:
    """The number of ranks in the job."""
    return resolve_group(group).size()


def get_backend(group=None) -> str:
    """``'mpi'``: the only backend."""
    resolve_group(group)
    return "mpi"


def _abort_on_uncaught(kind, value, tb) -> None:
    """The excepthook of Note [one failing rank ends the job]."""
    world = _WORLD if _WORLD is not None else _ENDING
    if world is None:  # (destroyed since: an ordinary exit)
        (_previous_hook or sys.__excepthook__)(kind, value, tb)
        return
    r = world.rank()
    text = "".join(traceback.format_exception(kind, value, tb)) + \
        f"dyngrad.distributed: {kind.__name__} on rank {r} ends the job: aborting all " \
        f"{world.size()} ranks (MPI_Abort)\n"
    sys.stderr.write("".join(f"[rank {r}] {line}" for line in text.splitlines(True)))
    world.abort()  # (one write, flushed before: mpiexec may stop reading once it aborts)


def _abort_if_broken() -> None:
    """A rank that caught a collective's timeout and exits would leave the others waiting:
    end the job instead."""
    world = _WORLD
    if world is not None and world.broken is not None:
        sys.stderr.write(f"[rank {world.rank()}] dyngrad.distributed: exiting with a broken "
                         f"process group ({world.broken}): aborting the job\n")
        world.abort()

