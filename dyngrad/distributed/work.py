"""A collective in flight (:class:`Work`, what ``async_op=True`` returns) and how a rank waits
for MPI: with a deadline, so a rank whose peers never arrive raises instead of hanging.

Note [agree, then send]: every collective is two non-blocking MPI calls. First a small
all-reduce of the collective's signature (its number in the sequence, which collective,
the reduction, the dtype, the element count and a hash of the shape) with MAX and MIN in
one call; only when every rank has the same signature does the payload start. A mismatch
is named (the ranks then gather each other's descriptions and raise the same error), never
a wrong sum or an MPI crash from unequal counts. MPI requires every rank to start its
collectives in the same order: a work's payload is started before the next collective's
check (``ProcessGroup.checking`` is the one work whose check may be in flight), so each rank
issues check₁, payload₁, check₂, payload₂, … whatever the timing. Payloads overlap freely.

Waiting spins on ``MPI_Test`` (yielding the core) for the first 50 ms — sleeping between
tests would slow MPICH's large transfers, which progress only inside MPI calls — then
sleeps up to a millisecond between tests, so a rank waiting for a slow peer idles.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from datetime import timedelta

__all__ = ["Work", "DistBackendError", "wait_all", "pause", "as_seconds"]

SPIN_SECONDS = 0.05
MAX_SLEEP = 1e-3


class DistBackendError(RuntimeError):
    """A collective failed on this rank: its peers disagreed about it or did not reach it in
    time (PyTorch's ``torch.distributed.DistBackendError``)."""

    keep_as_is = True  # (raised inside a primitive's impl under a tracer: not rewrapped)


def pause(waited: float) -> None:
    """Idle briefly while an MPI request is pending, ``waited`` seconds so far."""
    if waited < SPIN_SECONDS:
        os.sched_yield()
    else:
        time.sleep(min(MAX_SLEEP, waited / 100))


def as_seconds(timeout) -> float:
    """A timeout given as a ``timedelta`` (PyTorch's type) or a number of seconds."""
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if seconds <= 0:
        raise ValueError(f"a timeout must be positive, got {timeout}")
    return seconds


def wait_all(requests: list, seconds: float, message: Callable[[float], str]) -> None:
    """Wait for MPI ``requests``; after ``seconds``, raise :class:`DistBackendError` with
    ``message(waited)``."""
    start = time.perf_counter()
    pending = list(requests)
    while True:
        pending = [r for r in pending if not r.Test()]
        if not pending:
            return
        waited = time.perf_counter() - start
        if waited >= seconds:
            raise DistBackendError(message(waited))
        pause(waited)


class State(enum.Enum):
    CHECKING = "waiting for every rank to reach it (the ranks' agreement check)"
    SENDING = "waiting for its data from the other ranks"
    DONE = "done"
    FAILED = "failed"


class Work:
    """One collective in flight, from :func:`all_reduce` and friends with ``async_op=True``
    (PyTorch's ``Work``): ``wait()`` blocks until its result is in place (at most the
    group's timeout, or ``timeout`` given here); ``is_completed()`` asks without blocking.

    >>> w = dist.all_reduce(t, async_op=True)   # doctest: +SKIP
    >>> ...                                     # compute meanwhile
    >>> w.wait()                                # t now holds the sum over ranks
    True

    Built by the collectives module: ``check`` is the agreement check's request (Note
    [agree, then send]); ``agreed()`` validates its result (raising on a mismatch) and
    starts the payload, returning its request; ``finish()`` puts the result in place.
    """

    __slots__ = ("group", "_describe", "seq", "started", "state", "request", "_agreed",
                 "_finish", "result")

    def __init__(self, group, describe: Callable, check, agreed: Callable,
                 finish: Callable) -> None:
        self.group = group
        self._describe = describe  # () -> "all_reduce SUM of float32 [4, 3]" (for errors)
        self.seq = group.seq
        self.started = time.perf_counter()
        self.state = State.CHECKING
        self.request = check
        self._agreed, self._finish = agreed, finish
        self.result = None

    @property
    def what(self) -> str:
        return self._describe()

    def __repr__(self) -> str:
        return f"<Work {self.what} (collective #{self.seq}): {self.state.name.lower()}>"

    def is_completed(self) -> bool:
        """Whether the result is in place; advances the collective without blocking."""
        return self._step()

    def wait(self, timeout=None) -> bool:
        """Block until the result is in place. Past the deadline (``timeout`` from now if
        given, as a ``timedelta`` or seconds; else the group's timeout from the start of the
        collective) raise :class:`DistBackendError` naming the collective, the rank and the
        time waited; the group is broken from then on (see Note [one failing rank ends the
        job] in process_group.py)."""
        if timeout is None:
            limit, since = self.group.timeout, self.started
        else:
            limit, since = as_seconds(timeout), time.perf_counter()
        while not self._step():
            now = time.perf_counter()
            if now - since >= limit:
                self._timed_out(now - self.started, limit)
            pause(now - since)
        return True

    def settle(self) -> None:
        """Block until the payload has started (what the next collective needs first)."""
        limit = self.group.timeout
        while self.state is State.CHECKING:
            if self._step():
                return
            now = time.perf_counter()
            if now - self.started >= limit:
                self._timed_out(now - self.started, limit)
            pause(now - self.started)

    def _step(self) -> bool:
        state = self.state
        if state is State.DONE:
            return True
        if state is State.FAILED:
            raise DistBackendError(f"{self.what} (collective #{self.seq}) failed earlier")
        if state is State.CHECKING:
            if not self.request.Test():
                return False
            self.group.checking = None
            try:
                self.request = self._agreed()
            except BaseException:
                self.state = State.FAILED
                raise
            self.state = State.SENDING
        if not self.request.Test():
            return False
        self.result = self._finish()
        self.state = State.DONE
        return True

    def _timed_out(self, waited: float, limit: float) -> None:
        g = self.group
        msg = (f"{self.what} (collective #{self.seq}) timed out on rank {g.rank()} of "
               f"{g.size()} after {waited:.2f} s (timeout {limit:g} s), {self.state.value}. "
               f"Another rank has not reached this collective: it is still computing, it "
               f"stopped, or it calls collectives in another order. If a rank is just slow, "
               f"raise the timeout: init_process_group(timeout=datetime.timedelta(...))")
        self.state = State.FAILED
        g.broken = f"{self.what} (collective #{self.seq}) timed out"
        raise DistBackendError(msg)
