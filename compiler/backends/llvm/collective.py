"""The LLVM backend's collectives: the driver calls MPI itself, so a data-parallel step —
forward, backward, the bucket all-reduces, the optimizer — is one native call.

Each collective of the IR is a start and a wait (Note [collectives in the IR] in
dyngrad/distributed/collectives.py); a fusion group of its own each (``GroupKind.COLLECTIVE``),
lowered not to a kernel but to a few lines of the driver by the rule registered here for its
primitive (:data:`RULES`):

- a start copies its input into its buffer (all-reduce, broadcast: MPI works in place
  there) and issues the non-blocking call — ``MPI_Iallreduce``, ``MPI_Ibcast``,
  ``MPI_Iallgather``, ``MPI_Ireduce_scatter_block`` — with its request in the driver's own
  stack memory, and notes the time;
- after every kernel that follows, the driver tests the requests in flight (``MPI_Test``:
  MPICH moves a large message only inside MPI calls, so this is what lets the transfer
  proceed behind the rest of the backward);
- a wait tests its request until done — past the process group's timeout, counted from its
  start, the driver returns a status naming it (:data:`TIMED_OUT`), and the call raises
  ``DistBackendError`` as eager's wait does — and copies the result out.

Note [MPI handles at run time]: the MPI functions and handles (communicator, datatypes, ops,
``MPI_IN_PLACE``) are read from a table of 64-bit words (:func:`mpi_table`) that the call
passes in, in the driver's pointer table; the IR holds only positions in it, so the module
(cached on disk by its IR text) holds no handle, and one module serves any process group.
The functions come from the MPI library mpi4py loaded (its extension module resolves them),
``clock_gettime`` and ``sched_yield`` from the C library. The C types of the handles differ
between MPI libraries (MPICH: ``int``; Open MPI: pointers): the IR declares each as an
integer of its size there (what mpi4py's ``MPI._sizeof`` says), which is how the C calling
convention passes either.
"""

from __future__ import annotations

import ctypes
import math
import weakref
from dataclasses import dataclass, field

import numpy as np

from dyngrad.distributed.collectives import (
    ALL_GATHER_START,
    ALL_REDUCE_START,
    BROADCAST_START,
    COLLECTIVE_WAIT,
    IN_PLACE_STARTS,
    MPI_OPS,
    REDUCE_SCATTER_START,
    STARTED,
    mpi_op_name,
)
from dyngrad.distributed.process_group import load_mpi

from ...collectives import Collectives, starts_of
from ...dims import concrete
from ...prims import Lowerings

__all__ = ["RULES", "Emitter", "mpi_table", "TIMED_OUT", "MPI_FAILED", "describe_failure",
           "lower", "Collectives", "starts_of"]

RULES = Lowerings("LLVM collectives")

# the run-time table's words (Note [MPI handles at run time])
_FUNCTIONS = ("MPI_Iallreduce", "MPI_Ibcast", "MPI_Iallgather", "MPI_Ireduce_scatter_block",
              "MPI_Test")
(F_IALLREDUCE, F_IBCAST, F_IALLGATHER, F_IREDUCE_SCATTER, F_TEST, F_CLOCK, F_YIELD, W_IN_PLACE,
 W_COMM, W_TIMEOUT) = range(10)
_VIEWS = tuple(np.dtype(d) for d in (np.uint8, np.int8, np.int16, np.int32, np.int64,
                                     np.float32, np.float64))  # (bools travel as uint8)
W_DTYPE = 10
W_OP = W_DTYPE + len(_VIEWS)
WORDS = W_OP + len(MPI_OPS)
CLOCK_MONOTONIC = 1  # (Linux)
SPIN_NS = 2_000_000  # a wait spins this long before it yields the core between tests

TIMED_OUT = -1_000_000  # the driver returns TIMED_OUT - k: collective k's wait timed out
MPI_FAILED = -2_000_000  # MPI_FAILED - k: an MPI call of collective k returned an error
MAX_COUNT = 2**31 - 1  # (MPI counts are C ints)


def _handle_types() -> tuple:
    """The IR integer types of MPI's communicator, datatype and op handles here."""
    MPI = load_mpi()
    sizes = [MPI._sizeof(c) for c in (MPI.Comm, MPI.Datatype, MPI.Op)]
    if MPI._sizeof(MPI.Request) > 8 or any(s not in (4, 8) for s in sizes):
        raise NotImplementedError(f"LLVM collectives: MPI handles of {sizes} bytes")
    return tuple(f"i{8 * s}" for s in sizes)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def mpi_table(group) -> np.ndarray:
    """The run-time table of ``group`` (Note [MPI handles at run time]): int64 words, made
    once per process group."""
    table = _TABLES.get(group)
    if table is None:
        MPI = load_mpi()
        lib, libc = ctypes.CDLL(MPI.__file__), ctypes.CDLL(None)
        words = [ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in _FUNCTIONS]
        words += [ctypes.cast(libc.clock_gettime, ctypes.c_void_p).value,
                  ctypes.cast(libc.sched_yield, ctypes.c_void_p).value,
                  int(MPI.IN_PLACE), MPI._handleof(group.comm), int(group.timeout * 1e9)]
        words += [MPI._handleof(MPI._typedict[d.char]) for d in _VIEWS]  # (the predefined
        #                                             types mpi4py gives numpy buffers, eager's)
        words += [MPI._handleof(getattr(MPI, op)) for op in MPI_OPS]
        assert len(words) == WORDS
        table = _TABLES[group] = np.array([w & (2**64 - 1) for w in words],
                                          dtype=np.uint64).view(np.int64)
    return table


def describe_failure(status: int, cols: Collectives, group) -> str | None:
    """The message for a driver status that names a collective, or None."""
    for base in (TIMED_OUT, MPI_FAILED):
        k = base - status
        if 0 <= k < cols.count:
            if base == TIMED_OUT:
                return (f"{cols.labels[k]} (collective {k + 1} of {cols.count} in a compiled "
                        f"step) timed out on rank {group.rank()} of {group.size()} (timeout "
                        f"{group.timeout:g} s), waiting for its data from the other ranks. "
                        f"Another rank has not reached this collective: it is still "
                        f"computing, it stopped, or it calls collectives in another order. "
                        f"If a rank is just slow, raise the timeout: "
                        f"init_process_group(timeout=datetime.timedelta(...))")
            return (f"{cols.labels[k]} (collective {k + 1} of {cols.count} in a compiled step) "
                    f"failed on rank {group.rank()} of {group.size()}: an MPI call returned "
                    f"an error")
    return None


@dataclass
class Emitter:
    """Where a rule writes: the driver's ``body`` lines, ``pointer(v)`` (the IR pointer of
    a value's buffer), the run-time table's pointer ``table``, and the requests in flight."""

    body: list
    pointer: object
    table: str
    index: dict = field(default_factory=dict)  # id(start node) -> k
    pending: list = field(default_factory=list)  # k of the starts not waited for yet
    types: tuple = field(default_factory=_handle_types)
    _n: int = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"%c.{stem}{self._n}"

    def word(self, i: int, ty: str = "i64") -> str:
        p, w = self.fresh("p"), self.fresh("w")
        self.body += [f"  {p} = getelementptr inbounds i64, ptr {self.table}, i64 {i}",
                      f"  {w} = load i64, ptr {p}"]
        if ty == "i64":
            return w
        x = self.fresh("x")
        self.body.append(f"  {x} = {'inttoptr' if ty == 'ptr' else 'trunc'} i64 {w} to {ty}")
        return x

    def handles(self, view: np.dtype, op: str | None) -> tuple:
        comm_t, dt_t, op_t = self.types
        dt = f"{dt_t} {self.word(W_DTYPE + _VIEWS.index(view), dt_t)}"
        o = f"{op_t} {self.word(W_OP + MPI_OPS.index(op), op_t)}" if op is not None else None
        return f"{comm_t} {self.word(W_COMM, comm_t)}", dt, o

    def request(self, k: int) -> str:
        r = self.fresh("req")
        self.body.append(f"  {r} = getelementptr inbounds i64, ptr %mpi.req, i64 {k}")
        return r

    def now(self) -> str:
        """The monotonic clock in nanoseconds."""
        f = self.word(F_CLOCK, "ptr")
        sec, nsp, ns, t = self.fresh("s"), self.fresh("np"), self.fresh("n"), self.fresh("t")
        self.body += [f"  call i32 {f}(i32 {CLOCK_MONOTONIC}, ptr %mpi.ts)",
                      f"  {sec} = load i64, ptr %mpi.ts",
                      f"  {nsp} = getelementptr inbounds i64, ptr %mpi.ts, i64 1",
                      f"  {ns} = load i64, ptr {nsp}",
                      f"  {t}.s = mul i64 {sec}, 1000000000",
                      f"  {t} = add i64 {t}.s, {ns}"]
        return t

    def checked(self, rc: str, k: int) -> None:
        """Return MPI_FAILED - k from the driver when ``rc`` (an MPI call's) is not 0."""
        ok = self.fresh("ok")
        self.body += [f"  {ok} = icmp eq i32 {rc}, 0",
                      f"  br i1 {ok}, label {ok}.y, label {ok}.n",
                      f"{ok[1:]}.n:", f"  ret i32 {MPI_FAILED - k}", f"{ok[1:]}.y:"]

    def issue(self, k: int, fn_word: int, args: list) -> None:
        f = self.word(fn_word, "ptr")
        rc = self.fresh("rc")
        self.body.append(f"  {rc} = call i32 {f}({', '.join(args)}, ptr {self.request(k)})")
        self.checked(rc, k)
        t0 = self.fresh("t0p")
        now = self.now()
        self.body += [f"  {t0} = getelementptr inbounds i64, ptr %mpi.t0, i64 {k}",
                      f"  store i64 {now}, ptr {t0}"]
        self.pending.append(k)

    def test(self, k: int) -> str:
        """``MPI_Test`` of request k (its rc checked); the flag's value."""
        f = self.word(F_TEST, "ptr")
        rc, flag = self.fresh("rc"), self.fresh("flag")
        self.body.append(f"  {rc} = call i32 {f}(ptr {self.request(k)}, ptr %mpi.flag, "
                         f"ptr %mpi.status)")
        self.checked(rc, k)
        self.body.append(f"  {flag} = load i32, ptr %mpi.flag")
        return flag

    def progress(self) -> None:
        """Between kernels: test every request in flight (MPI progresses only in calls)."""
        for k in self.pending:
            self.test(k)

    def wait(self, k: int) -> None:
        """Test request k until done; past the timeout, return TIMED_OUT - k. Note: the
        loop spins (MPI_Test is where the transfer moves) and yields the core only after
        SPIN_NS of waiting: a rank that yields at once, on a machine where another process
        is runnable, gives that process its core for a time slice — milliseconds during
        which this rank's side of the transfer stands still (measured: an all-reduce that
        waited after some compute took twice its time)."""
        entered = self.now()
        loop = self.fresh("wait")
        self.body += [f"  br label {loop}", f"{loop[1:]}:"]
        flag = self.test(k)
        done, late, t0p, t0, el = (self.fresh(s) for s in ("done", "late", "t0p", "t0", "el"))
        spun, long_ = self.fresh("spun"), self.fresh("long")
        self.body += [f"  {done} = icmp ne i32 {flag}, 0",
                      f"  br i1 {done}, label {loop}.end, label {loop}.more", f"{loop[1:]}.more:"]
        now = self.now()
        limit = self.word(W_TIMEOUT)
        y = self.word(F_YIELD, "ptr")
        self.body += [f"  {t0p} = getelementptr inbounds i64, ptr %mpi.t0, i64 {k}",
                      f"  {t0} = load i64, ptr {t0p}",
                      f"  {el} = sub i64 {now}, {t0}",
                      f"  {late} = icmp sgt i64 {el}, {limit}",
                      f"  br i1 {late}, label {loop}.late, label {loop}.spin",
                      f"{loop[1:]}.late:", f"  ret i32 {TIMED_OUT - k}",
                      f"{loop[1:]}.spin:",
                      f"  {spun} = sub i64 {now}, {entered}",
                      f"  {long_} = icmp sgt i64 {spun}, {SPIN_NS}",
                      f"  br i1 {long_}, label {loop}.yield, label {loop}",
                      f"{loop[1:]}.yield:", f"  call i32 {y}()", f"  br label {loop}",
                      f"{loop[1:]}.end:"]
        self.pending.remove(k)

    def copy(self, dst, src, nbytes: int) -> None:
        self.body.append(f"  call void @llvm.memcpy.p0.p0.i64(ptr {dst}, ptr {src}, "
                         f"i64 {nbytes}, i1 false)")

    def entry(self, n_starts: int) -> list:
        """The driver-owned memory: requests, start times, MPI_Test's flag and status."""
        return [f"  %mpi.req = alloca [{max(n_starts, 1)} x i64], align 8",
                f"  %mpi.t0 = alloca [{max(n_starts, 1)} x i64], align 8",
                "  %mpi.flag = alloca i32, align 4",
                "  %mpi.status = alloca [16 x i64], align 8",  # (>= any MPI_Status)
                "  %mpi.ts = alloca [2 x i64], align 8"]


def _count(v) -> int:
    n = math.prod(concrete(v.shape))
    if n > MAX_COUNT:
        raise NotImplementedError(f"LLVM collectives: {n} elements exceed an MPI count")
    return n


def _view(v) -> np.dtype:
    d = v.dtype.np
    return np.dtype(np.uint8) if d == np.bool_ else d


def lower(em: Emitter, node) -> None:
    """Write ``node``'s MPI calls into the driver (its rule from :data:`RULES`)."""
    RULES.of(node.prim)(em, node)


def _fill(em: Emitter, n) -> None:
    """An in-place start's buffer: its inputs copied in, one after another."""
    out, at = n.out, 0
    for x in n.inputs:
        nbytes = _count(x) * x.dtype.itemsize
        dst = em.pointer(out)
        if at:
            dst = em.fresh("dst")
            em.body.append(f"  {dst} = getelementptr inbounds i8, ptr {em.pointer(out)}, "
                           f"i64 {at}")
        em.copy(dst, em.pointer(x), nbytes)
        at += nbytes


@RULES(ALL_REDUCE_START)
def _all_reduce(em: Emitter, n) -> None:
    k = em.index[id(n)]
    out = n.out
    _fill(em, n)
    view, op = mpi_op_name("all_reduce", n.params["op"], out.dtype.np)
    comm, dt, o = em.handles(view, op)
    em.issue(k, F_IALLREDUCE, [f"ptr {em.word(W_IN_PLACE, 'ptr')}", f"ptr {em.pointer(out)}",
                               f"i32 {_count(out)}", dt, o, comm])


@RULES(BROADCAST_START)
def _broadcast(em: Emitter, n) -> None:
    k = em.index[id(n)]
    out = n.out
    _fill(em, n)
    comm, dt, _ = em.handles(_view(out), None)
    em.issue(k, F_IBCAST, [f"ptr {em.pointer(out)}", f"i32 {_count(out)}", dt,
                           f"i32 {int(n.params['src'])}", comm])


@RULES(ALL_GATHER_START)
def _all_gather(em: Emitter, n) -> None:
    k = em.index[id(n)]
    x, out = n.inputs[0], n.out
    comm, dt, _ = em.handles(_view(x), None)
    em.issue(k, F_IALLGATHER, [f"ptr {em.pointer(x)}", f"i32 {_count(x)}", dt,
                               f"ptr {em.pointer(out)}", f"i32 {_count(x)}", dt, comm])


@RULES(REDUCE_SCATTER_START)
def _reduce_scatter(em: Emitter, n) -> None:
    k = em.index[id(n)]
    x, out = n.inputs[0], n.out
    view, op = mpi_op_name("reduce_scatter", n.params["op"], x.dtype.np)
    comm, dt, o = em.handles(view, op)
    em.issue(k, F_IREDUCE_SCATTER, [f"ptr {em.pointer(x)}", f"ptr {em.pointer(out)}",
                                    f"i32 {_count(out)}", dt, o, comm])


@RULES(COLLECTIVE_WAIT)
def _wait(em: Emitter, n) -> None:
    buf = n.inputs[0]
    k = em.index.get(id(buf.producer)) if buf.producer is not None else None
    if k is None:
        raise NotImplementedError("LLVM collectives: a wait whose input is not a start")
    em.wait(k)
    em.copy(em.pointer(n.out), em.pointer(buf), _count(buf) * buf.dtype.itemsize)


assert set(RULES) == {*STARTED, COLLECTIVE_WAIT} and set(IN_PLACE_STARTS) <= set(RULES)
