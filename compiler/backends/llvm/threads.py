"""Both cores for big kernels: a small thread pool of the backend's own, written in IR.

A kernel split across threads has a function ``@<name>_blocks(ctx, i, n)`` doing part ``i``
of ``n`` (block ``i``, or blocks ``i, i + n, ...`` of its own fixed blocks) and runs it by
``call void @dg_parallel(ptr @<name>_blocks, ptr %ctx, i64 n)`` (:func:`split_call`;
``n = 0``: one part per thread). Part boundaries depend only on the problem size — never on
which thread takes a part — so results are the same bits on any number of threads.

Note (the caller never waits for a thread that has not started): ``dg_parallel`` publishes
the job, wakes the workers and takes parts itself, each part claimed by one atomic
increment of a ticket, until none is left; then it waits only for parts *other threads
took* to finish. On an idle machine the workers, spinning for a while after each job, join
within a microsecond and the parts spread over the cores; on a busy machine — another
process holding a core, a CI runner — a worker that is not running claims nothing and the
caller does all the parts itself, at one thread's speed. A team that must meet at a
barrier (OpenMP's ``GOMP_parallel``, which this replaced) instead waits for the slowest
thread's next time slice at every kernel: W2's step went from 1.2 ms on one thread to
38 ms on two with another process on the machine (``benchmarks/threads.py``).

The protocol, in ``POOL_IR``: the ticket is ``generation << 32 | next part``; the caller
writes the job (function, context, part count), zeroes the done counter, stores the ticket
of the new generation, then bumps the futex word ``@dg_pool_gen`` and wakes sleeping
workers. A worker claims with ``atomicrmw add`` on the ticket; a ticket of a generation it
has not seen makes it read the job again (written before the ticket, and stable until every
part is done, which the caller waits for before it writes the next). A worker that finds no
part spins on ``@dg_pool_gen`` (``pause``) for ``SPIN_TICKS``, then sleeps on it
(``futex``). One job at a time: a caller that finds the pool busy (another Python thread's
kernel) runs its parts alone. Workers are daemon Python threads whose whole life is one
ctypes call into ``dg_pool_worker`` (the GIL released).

The team size is this process's own (:func:`team_size`: ``OMP_NUM_THREADS`` when set, else
the CPUs the process may run on); ``DYNGRAD_THREADS=1`` or a platform without the pool
(:func:`find` returns None) compiles kernels without splits. A forked child runs every part
on the calling thread (its team is 0: the workers did not survive the fork), the same parts,
so the same bits.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from .emit import Emitter

PAR_MIN = 1 << 18  # elements from which a reduction is split across threads
_lock = threading.Lock()
_found: list = []
_workers: list = []  # the pool's threads (daemons)

DECLARATIONS = "declare void @dg_parallel(ptr, ptr, i64)\n"
SYMBOLS = ("dg_parallel",)  # what a module declaring those calls (driver.link)
SPIN_TICKS = 1 << 22  # time-stamp counter ticks (1-4 ms) a worker spins on the futex word
#                       before it sleeps: a step's kernels follow each other closer than
#                       that, and waking a sleeping thread took ~200 µs in a VM (measured)


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


# The team size kernels may use; a forked child sets it to 0 (its pool's threads did not
# survive the fork) and its kernels then run every part on the calling thread.
_on = ctypes.c_int32(team_size())


def team() -> int:
    """The threads kernels run on now: the team size, or 0 in a forked child (every part on
    the calling thread)."""
    return _on.value


def _after_fork_in_child() -> None:
    _on.value = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def split_call(name: str, parts: int | str = 0) -> str:
    """IR running ``@<name>_blocks(ctx, i, parts)`` for every part ``i`` on the pool (``parts``
    an i64 literal or SSA value; 0: one part per thread of the team); continues in block
    ``%par.joined``."""
    return (f"  call void @dg_parallel(ptr @{name}_blocks, ptr %ctx, i64 {parts})\n"
            "  br label %par.joined\npar.joined:")


def ranges_ir(name: str, k_args: int, n, per: int, params: list | None = None) -> str:
    """``@<name>_blocks`` and ``@<name>_body(ptr %a0, ...)`` running ``@<name>_range(ptr
    %a0, ..., i64 lo, i64 hi)`` (the caller's) over ``0..n`` in ranges of ``per``, one part
    per range, on the pool (the body's ``k_args`` pointers passed through a context).
    ``params``: the body's parameter list when it is not just the pointers (an unused
    ``i64 %n`` after them)."""
    nb = -(-n // per)
    ptrs = ", ".join(f"ptr %a{k}" for k in range(k_args))
    blocks = Emitter()
    blocks.label("entry")
    for k in range(k_args):
        blocks.line(f"%x{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}")
        blocks.line(f"%a{k} = load ptr, ptr %x{k}")
    with blocks.parallel_for(nb):
        blocks.line(f"%lo = mul nuw nsw i64 %b, {per}")
        blocks.line(f"%hi0 = add nuw nsw i64 %lo, {per}")
        blocks.line(f"%lt = icmp slt i64 %hi0, {n}")
        blocks.line(f"%hi = select i1 %lt, i64 %hi0, i64 {n}")
        blocks.line(f"call void @{name}_range({ptrs}, i64 %lo, i64 %hi)")
    pack = "".join(f"  %c{k} = getelementptr inbounds ptr, ptr %ctx, i64 {k}\n"
                   f"  store ptr %a{k}, ptr %c{k}\n" for k in range(k_args))
    params = ", ".join(params or [f"ptr noalias %a{k}" for k in range(k_args)])
    return (blocks.function(f"define internal void @{name}_blocks(ptr %ctx, i64 %tid, "
                            f"i64 %nt)")
            + f"define internal void @{name}_body({params}) alwaysinline {{\n"
            f"entry:\n  %ctx = alloca [{k_args} x ptr], align 8\n" + pack
            + split_call(name, nb) + "\n  ret void\n}\n\n")


def find() -> str | None:
    """The pool's name when kernels may split across threads (its module compiled and its
    workers started on first use), or None: ``DYNGRAD_THREADS=1``, or no Linux futex."""
    if os.environ.get("DYNGRAD_THREADS", "").strip() == "1":
        return None
    with _lock:
        if not _found:
            _found.append(_start())
        return _found[0]


def set_team(n: int) -> None:
    """Run kernels on ``n`` threads from now on (the benchmarks' ``--threads``); starts
    workers if the pool has fewer."""
    if n < 1:
        raise ValueError(f"set_team: a team of {n} threads")
    if find() is not None:
        with _lock:
            _spawn(n - 1)
    _on.value = n


def _start() -> str | None:
    if not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "AMD64"):
        return None  # (the pool sleeps on a Linux futex and spins with x86's pause)
    from . import cache, jit
    jit.add_symbol("dg_threads_on", ctypes.addressof(_on))
    compiled = cache.load_or_compile(POOL_IR, t=_generic_target())
    jit.add_symbol("dg_parallel", compiled.address("dg_parallel"))
    _workers.append(compiled)  # (kept alive with its threads)
    _spawn(max(_on.value - 1, 0))
    return "dg_pool"


def _generic_target():
    """The pool's code needs no vectors: compiled for the host's base target (never the
    loop width's measurement, which is itself parallel-free)."""
    from . import target
    return target.base()


WORKER_STACK = 8 << 20  # bytes of stack per worker: kernels keep buffers on the stack
#                         (gemm's packed panels, ~160 KiB; reductions' partials)


def _spawn(n: int) -> None:
    """Start workers until the pool has ``n`` (called with ``_lock`` held), each with a
    stack of ``WORKER_STACK`` bytes whatever ``threading.stack_size`` the program set."""
    compiled = _workers[0]
    worker = compiled.cfunc("dg_pool_worker", None)
    previous = threading.stack_size(WORKER_STACK)
    try:
        while len(_workers) - 1 < n:
            t = threading.Thread(target=worker, name=f"dyngrad-pool-{len(_workers)}",
                                 daemon=True)
            t.start()
            _workers.append(t)
    finally:
        threading.stack_size(previous)


POOL_IR = r"""
@dg_threads_on = external global i32
@dg_pool_jobgen = internal global i64 0, align 64
@dg_pool_fn = internal global ptr null, align 8
@dg_pool_ctx = internal global ptr null, align 8
@dg_pool_n = internal global i64 0, align 8
@dg_pool_ticket = internal global i64 0, align 64
@dg_pool_done = internal global i64 0, align 64
@dg_pool_gen = internal global i32 0, align 64
@dg_pool_busy = internal global i32 0, align 64
@dg_pool_sleepers = internal global i32 0, align 64

declare i64 @syscall(i64, ...)
declare void @llvm.x86.sse2.pause()
declare i64 @llvm.readcyclecounter()

define internal void @dg_pool_inline(ptr %fn, ptr %ctx, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %loop]
  call void %fn(ptr %ctx, i64 %i, i64 %n)
  %i.next = add i64 %i, 1
  %more = icmp slt i64 %i.next, %n
  br i1 %more, label %loop, label %exit
exit:
  ret void
}

; Claim and run parts until the ticket gives none: a part counts only if the job read
; around it (a seqlock on @dg_pool_jobgen) is the ticket's own generation, never 0 (the
; generation of no job yet, and the mark of a job being written); generations run 1 ..
; 2^32 - 1 and wrap to 1, so the ticket's 32 bits always hold them.
define internal void @dg_pool_claim() {
entry:
  br label %claim
claim:
  %t = atomicrmw add ptr @dg_pool_ticket, i64 1 seq_cst
  %tg = lshr i64 %t, 32
  %i = and i64 %t, 4294967295
  %g1 = load atomic i64, ptr @dg_pool_jobgen seq_cst, align 8
  %fn = load atomic ptr, ptr @dg_pool_fn seq_cst, align 8
  %ctx = load atomic ptr, ptr @dg_pool_ctx seq_cst, align 8
  %n = load atomic i64, ptr @dg_pool_n seq_cst, align 8
  %g2 = load atomic i64, ptr @dg_pool_jobgen seq_cst, align 8
  %same1 = icmp eq i64 %g1, %tg
  %same2 = icmp eq i64 %g2, %tg
  %real = icmp ne i64 %tg, 0
  %left = icmp slt i64 %i, %n
  %ok0 = and i1 %same1, %same2
  %ok1 = and i1 %ok0, %real
  %ok = and i1 %ok1, %left
  br i1 %ok, label %run, label %exit
run:
  call void %fn(ptr %ctx, i64 %i, i64 %n)
  %d = atomicrmw add ptr @dg_pool_done, i64 1 seq_cst
  br label %claim
exit:
  ret void
}

define void @dg_parallel(ptr %fn, ptr %ctx, i64 %parts) {
entry:
  %on = load volatile i32, ptr @dg_threads_on
  %on64 = sext i32 %on to i64
  %auto = icmp sle i64 %parts, 0
  %n0 = select i1 %auto, i64 %on64, i64 %parts
  %none = icmp slt i64 %n0, 1
  %n = select i1 %none, i64 1, i64 %n0
  %solo = icmp sle i32 %on, 1
  %one = icmp eq i64 %n, 1
  %alone = or i1 %solo, %one
  br i1 %alone, label %inline, label %try
try:
  %cx = cmpxchg ptr @dg_pool_busy, i32 0, i32 1 seq_cst seq_cst
  %got = extractvalue { i32, i1 } %cx, 1
  br i1 %got, label %publish, label %inline
inline:
  call void @dg_pool_inline(ptr %fn, ptr %ctx, i64 %n)
  ret void
publish:
  %old = load atomic i64, ptr @dg_pool_ticket seq_cst, align 8
  %og = lshr i64 %old, 32
  %wrap = urem i64 %og, 4294967295
  %g = add i64 %wrap, 1
  store atomic i64 0, ptr @dg_pool_jobgen seq_cst, align 8
  store atomic ptr %fn, ptr @dg_pool_fn seq_cst, align 8
  store atomic ptr %ctx, ptr @dg_pool_ctx seq_cst, align 8
  store atomic i64 %n, ptr @dg_pool_n seq_cst, align 8
  store atomic i64 %g, ptr @dg_pool_jobgen seq_cst, align 8
  store atomic i64 0, ptr @dg_pool_done seq_cst, align 8
  %ticket = shl i64 %g, 32
  store atomic i64 %ticket, ptr @dg_pool_ticket seq_cst, align 8
  %wake = atomicrmw add ptr @dg_pool_gen, i32 1 seq_cst
  %sleepers = load atomic i32, ptr @dg_pool_sleepers seq_cst, align 4
  %asleep = icmp sgt i32 %sleepers, 0
  br i1 %asleep, label %wakeup, label %work
wakeup:
  %w = call i64 (i64, ...) @syscall(i64 202, ptr @dg_pool_gen, i64 129, i64 2147483647)
  br label %work
work:
  call void @dg_pool_claim()
  br label %wait
wait:
  %spins = phi i64 [0, %work], [%spins.next, %pause], [0, %give]
  %done = load atomic i64, ptr @dg_pool_done seq_cst, align 8
  %all = icmp sge i64 %done, %n
  br i1 %all, label %finish, label %pause
pause:
  call void @llvm.x86.sse2.pause()
  %spins.next = add i64 %spins, 1
  %yield = icmp ugt i64 %spins.next, 4096
  br i1 %yield, label %give, label %wait
give:
  %y = call i64 (i64, ...) @syscall(i64 24)
  br label %wait
finish:
  store atomic i32 0, ptr @dg_pool_busy seq_cst, align 4
  ret void
}

define void @dg_pool_worker() {
entry:
  %seen0 = load atomic i32, ptr @dg_pool_gen seq_cst, align 4
  br label %claim
claim:
  %seen = phi i32 [%seen0, %entry], [%gen, %spin]
  call void @dg_pool_claim()
  %t0 = call i64 @llvm.readcyclecounter()
  br label %idle
idle:
  %since = phi i64 [%t0, %claim], [%since, %spin.more], [%t1, %awake]
  %gen = load atomic i32, ptr @dg_pool_gen seq_cst, align 4
  %moved = icmp ne i32 %gen, %seen
  br i1 %moved, label %spin, label %spin.more
spin:
  br label %claim
spin.more:
  call void @llvm.x86.sse2.pause()
  %now = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %now, %since
  %tired = icmp ugt i64 %spent, SPIN_TICKS
  br i1 %tired, label %sleep, label %idle
sleep:
  %s = atomicrmw add ptr @dg_pool_sleepers, i32 1 seq_cst
  %again = load atomic i32, ptr @dg_pool_gen seq_cst, align 4
  %same = icmp eq i32 %again, %seen
  br i1 %same, label %futex, label %awake
futex:
  %seen64 = zext i32 %seen to i64
  %r = call i64 (i64, ...) @syscall(i64 202, ptr @dg_pool_gen, i64 128, i64 %seen64, ptr null)
  br label %awake
awake:
  %s2 = atomicrmw sub ptr @dg_pool_sleepers, i32 1 seq_cst
  %t1 = call i64 @llvm.readcyclecounter()
  br label %idle
}
""".replace("SPIN_TICKS", str(SPIN_TICKS))
