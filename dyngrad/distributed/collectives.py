"""The collectives, each defined once as a :class:`Collective` record, and the one routine
that runs them eagerly (:func:`launch`).

Note [collectives are records, like primitives]: four collectives move tensors —
``all_reduce``, ``broadcast``, ``all_gather`` (into one tensor, concatenated along dim 0)
and ``reduce_scatter`` (from one such tensor) — plus ``barrier``. A record holds what every
interpreter needs, with the field names of :class:`~dyngrad.ops.primitive.Primitive`: its
shape rule, its numpy-level implementation (``start``: the non-blocking MPI call on
contiguous arrays; the result is in place once the request completes) and its vjp, written
with the differentiable collectives themselves (the gradient of an all-reduce SUM is an
all-reduce SUM of the gradient; of an all-gather, a reduce-scatter; of a broadcast, a sum
at the source). Eager autograd records a collective as a ``PrimNode`` of its record, as it
does a primitive. Everything else — the list forms of PyTorch's API, the in-place
``dist.all_reduce(t)``, DDP's buckets — is built on these records, so a compiler that
makes them IR operations (a start node issuing the request as soon as its input exists and
a wait node where the result is first read) has four entries to add and no other code to
learn. Those entries are at the end of this module (Note [collectives in the IR]).

Each run is preceded by the ranks' agreement check (Note [agree, then send] in work.py).
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..autograd import no_grad
from ..dispatch import STATE, dispatch, report_python_call
from ..ops.creation import zeros_like
from ..ops.primitive import Primitive, PrimNode
from ..tensor import Tensor
from .process_group import ProcessGroup, resolve_group
from .work import DistBackendError, Work, wait_all

__all__ = ["ReduceOp", "Collective", "COLLECTIVES", "ALL_REDUCE", "BROADCAST", "ALL_GATHER",
           "REDUCE_SCATTER", "BARRIER", "COMPILED_STEP", "launch", "run_differentiable",
           "check_modes", "recording", "mpi_reduction", "mpi_op_name", "MPI_OPS",
           "contiguous", "source_rank", "label", "DTYPES", "ALL_REDUCE_START",
           "BROADCAST_START", "ALL_GATHER_START", "REDUCE_SCATTER_START", "COLLECTIVE_WAIT",
           "STARTED", "IN_PLACE_STARTS", "RecordedWork", "record", "MISSED", "agree_on_step",
           "advance", "records_collectives"]


class ReduceOp(enum.Enum):
    """How ``all_reduce`` and ``reduce_scatter`` combine the ranks' values (PyTorch's
    names). ``AVG`` is the sum divided by the number of ranks (floating dtypes only); the
    bitwise ones take integer or bool tensors; on bool tensors ``SUM`` is a logical or and
    ``PRODUCT`` a logical and, as in PyTorch."""

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


_OP_CODES = {op: i for i, op in enumerate(ReduceOp)}
DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16),
          np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32), np.dtype(np.float64))
_DTYPE_CODES = {d: i for i, d in enumerate(DTYPES)}
_BITWISE = (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)
_BOOL_AS_BYTES = {ReduceOp.SUM: "MAX", ReduceOp.MAX: "MAX", ReduceOp.BOR: "MAX",
                  ReduceOp.PRODUCT: "MIN", ReduceOp.MIN: "MIN", ReduceOp.BAND: "MIN",
                  ReduceOp.BXOR: "BXOR"}
_MPI_OPS = {ReduceOp.SUM: "SUM", ReduceOp.AVG: "SUM", ReduceOp.PRODUCT: "PROD",
            ReduceOp.MIN: "MIN", ReduceOp.MAX: "MAX", ReduceOp.BAND: "BAND",
            ReduceOp.BOR: "BOR", ReduceOp.BXOR: "BXOR"}


def mpi_reduction(name: str, op, dtype: np.dtype, mpi):
    """(how to view the buffer for MPI, the MPI op) for ``op`` on ``dtype``, or an error
    naming the collective: bool tensors travel as bytes (MPI has no sum of bools)."""
    view, op_name = mpi_op_name(name, op, dtype)
    return view, getattr(mpi, op_name)


MPI_OPS = ("SUM", "PROD", "MIN", "MAX", "BAND", "BOR", "BXOR")  # (the names MPI gives them)


def mpi_op_name(name: str, op, dtype: np.dtype) -> tuple:
    """(how to view the buffer for MPI, the name of MPI's op: one of :data:`MPI_OPS`) for
    ``op`` on ``dtype``, or an error naming the collective (see :func:`mpi_reduction`)."""
    dtype = np.dtype(dtype)
    if not isinstance(op, ReduceOp):
        raise TypeError(f"{name}: op must be a dist.ReduceOp (e.g. ReduceOp.SUM), got {op!r}")
    if dtype not in _DTYPE_CODES:
        raise TypeError(f"{name}: tensors of dtype {dtype} cannot be communicated")
    if dtype == np.bool_:
        if op is ReduceOp.AVG:
            raise TypeError(f"{name}: ReduceOp.AVG of a bool tensor is not defined: use SUM "
                            f"(a logical or) or convert to float first")
        return np.dtype(np.uint8), _BOOL_AS_BYTES[op]
    if op is ReduceOp.AVG and dtype.kind != "f":
        raise TypeError(f"{name}: ReduceOp.AVG of a {dtype} tensor would not be an integer: "
                        f"use SUM and divide, or convert to float first")
    if op in _BITWISE and dtype.kind == "f":
        raise TypeError(f"{name}: ReduceOp.{op.name} needs an integer or bool tensor, got "
                        f"{dtype}")
    return dtype, _MPI_OPS[op]


def source_rank(name: str, src, world: int) -> int:
    """``src`` as a rank of a ``world``-rank job (any integer: a numpy one too, as PyTorch
    takes it), or an error naming the collective."""
    try:
        rank = operator.index(src) if not isinstance(src, bool) else None
    except TypeError:
        rank = None
    if rank is None or not 0 <= rank < world:
        raise ValueError(f"{name}: src must be a rank in 0..{world - 1}, got {src!r}")
    return rank


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` itself when MPI can use its memory, else a C-contiguous copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


# ------------------------------------------------------------------ the records


@dataclass(frozen=True, eq=False)
class Collective:
    """One collective (Note [collectives are records, like primitives]).

    - ``shape(shape, world, params) -> shape``: the output's shape from the input's;
    - ``start(group, send, recv, params) -> MPI request``: the non-blocking MPI call, on
      C-contiguous arrays (``send`` may be ``recv`` for an in-place run);
    - ``vjp(node, g, xs, out) -> (gradient,)``: the backward rule, with differentiable
      collectives (``PrimNode`` calls it as it calls a primitive's);
    - ``code``: its number in the ranks' agreement check.
    """

    name: str
    code: int
    shape: Callable
    start: Callable
    vjp: Callable | None
    doc: str = ""
    save: tuple = ()  # (the PrimNode interface: a vjp needs no saved input or output)
    save_out: bool = False

    @property
    def backward_name(self) -> str:
        return "".join(p.capitalize() for p in self.name.split("_")) + "Backward"

    def __repr__(self) -> str:
        return f"<collective {self.name}>"


def _same_shape(shape, world, params):
    return tuple(shape)


def _gathered_shape(shape, world, params):
    return (world * shape[0], *shape[1:]) if shape else (world,)


def _scattered_shape(shape, world, params):
    if not shape or shape[0] % world:
        raise ValueError(f"reduce_scatter: the input's first dimension must be a multiple of "
                         f"the world size {world}, got shape {list(shape)}")
    return (shape[0] // world, *shape[1:])


def _as_mpi(a: np.ndarray, view=None) -> np.ndarray:
    """``a`` as MPI is given it: viewed as ``view``, or bools as bytes (mpi4py would map
    them to C's bool, which MPI's reductions do not take)."""
    if view is None:
        view = np.uint8 if a.dtype == np.bool_ else a.dtype
    return a if view == a.dtype else a.view(view)


def _start_all_reduce(group, send, recv, params):
    view, op = mpi_reduction("all_reduce", params["op"], recv.dtype, group.mpi)
    src = group.mpi.IN_PLACE if send is recv else _as_mpi(send, view)
    return group.comm.Iallreduce(src, _as_mpi(recv, view), op=op)


def _start_broadcast(group, send, recv, params):
    if group.rank() == params["src"] and send is not recv:
        np.copyto(recv, send)
    return group.comm.Ibcast(_as_mpi(recv), root=params["src"])


def _start_all_gather(group, send, recv, params):
    return group.comm.Iallgather(_as_mpi(send), _as_mpi(recv))


def _start_reduce_scatter(group, send, recv, params):
    view, op = mpi_reduction("reduce_scatter", params["op"], recv.dtype, group.mpi)
    return group.comm.Ireduce_scatter_block(_as_mpi(send, view), _as_mpi(recv, view), op=op)


def _start_barrier(group, send, recv, params):
    return group.comm.Ibarrier()


def _vjp_all_reduce(node, g, xs, out):
    op = node.params["op"]
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise RuntimeError(f"all_reduce: ReduceOp.{op.name} has no gradient here; only SUM "
                           f"and AVG are differentiable (their gradient is an all_reduce of "
                           f"the gradient with the same op)")
    return (run_differentiable(ALL_REDUCE, g, {"op": op}, None),)


def _vjp_broadcast(node, g, xs, out):
    # the source's input reaches every rank: its gradient is the sum of theirs; the other
    # ranks' inputs are overwritten, so theirs is zero (every rank joins the all-reduce)
    total = run_differentiable(ALL_REDUCE, g, {"op": ReduceOp.SUM}, None)
    if resolve_group(None).rank() == node.params["src"]:
        return (total,)
    return (zeros_like(total),)


def _vjp_all_gather(node, g, xs, out):
    return (run_differentiable(REDUCE_SCATTER, g, {"op": ReduceOp.SUM}, None),)


def _vjp_reduce_scatter(node, g, xs, out):
    op = node.params["op"]
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise RuntimeError(f"reduce_scatter: ReduceOp.{op.name} has no gradient here; only "
                           f"SUM and AVG are differentiable")
    gathered = run_differentiable(ALL_GATHER, g, {}, None)
    return (gathered if op is ReduceOp.SUM else gathered * (1.0 / resolve_group(None).size()),)


ALL_REDUCE = Collective("all_reduce", 1, _same_shape, _start_all_reduce, _vjp_all_reduce,
                        "every rank gets the reduction (op) of all ranks' tensors")
BROADCAST = Collective("broadcast", 2, _same_shape, _start_broadcast, _vjp_broadcast,
                       "every rank gets rank src's tensor")
ALL_GATHER = Collective("all_gather", 3, _gathered_shape, _start_all_gather, _vjp_all_gather,
                        "every rank gets all ranks' tensors, concatenated along dim 0 in rank "
                        "order")
REDUCE_SCATTER = Collective("reduce_scatter", 4, _scattered_shape, _start_reduce_scatter,
                            _vjp_reduce_scatter, "rank r gets block r (along dim 0) of the "
                            "reduction of all ranks' tensors")
BARRIER = Collective("barrier", 5, _same_shape, _start_barrier, None,
                     "returns on every rank once all ranks have reached it")
COLLECTIVES = {c.name: c for c in (ALL_REDUCE, BROADCAST, ALL_GATHER, REDUCE_SCATTER, BARRIER)}
# a compiled step with collectives inside: the ranks agree on it as on one collective
# (:func:`agree_on_step`); its "shape" is the number of collectives it runs
COMPILED_STEP = Collective("compiled step", 6, _same_shape, None, None,
                           "a compiled call whose native code runs collectives")
_BY_CODE = {c.code: c for c in (*COLLECTIVES.values(), COMPILED_STEP)}


# ------------------------------------------------------------------ running one


def check_modes(name: str) -> None:
    """Refuse a collective under a function transform (vmap, forward-mode AD: they would
    not see it), and tell a tracer the call cannot be compiled: it falls back to eager
    rather than record a step that skips the communication."""
    for m in STATE.modes:
        if not m.transparent:
            raise RuntimeError(f"dist.{name} cannot run under {type(m).__name__} (a function "
                               f"transform would not see the communication): call it "
                               f"outside the transform")
    report_python_call(f"dist.{name}, an MPI collective the compiler does not record (a "
                       f"compiled call would skip the communication),")


def records_collectives() -> bool:
    """Whether dispatch modes are active and every one records collectives (a compiler
    tracer), asking nothing else of them."""
    modes = STATE.modes
    return bool(modes) and all(getattr(m, "records_collectives", False) for m in modes)


def recording(name: str) -> bool:
    """Whether the active dispatch modes record ``dist.<name>`` as IR operations (a compiler
    tracer: Note [collectives in the IR]) — then the caller takes the recorded path. Refuses
    function transforms as :func:`check_modes`; any other observing mode makes the call
    fall back to eager (reported), and False is returned."""
    modes = STATE.modes
    if not modes:
        return False
    if all(getattr(m, "records_collectives", False) for m in modes):
        return True
    check_modes(name)
    return False


_SHAPE_DIMS = 16  # dimensions a disagreement report shows


def _describe(seq: int, coll: Collective, op, dtype, shape, root: int) -> np.ndarray:
    """One rank's description of a collective, exchanged when the ranks disagree."""
    dims = list(shape)[:_SHAPE_DIMS]
    return np.array([seq, coll.code, _OP_CODES[op] if op is not None else -1,
                     _DTYPE_CODES.get(dtype, -1) if dtype is not None else -1,
                     root, len(shape), *dims, *[0] * (_SHAPE_DIMS - len(dims))],
                    dtype=np.int64)


def label(coll: Collective, op, dtype, shape, root: int = -1) -> str:
    """How errors name a collective: ``all_reduce SUM of float32 [4, 3]``."""
    if coll is COMPILED_STEP:
        return f"a compiled step with {shape[0]} collective(s) inside"
    text = coll.name
    if op is not None:
        text += f" {op.name}"
    if root >= 0:
        text += f" from rank {root}"
    if coll is not BARRIER:
        text += f" of {dtype} {list(shape)}"
    return text


def _read_description(d: np.ndarray) -> str:
    seq, code, op, dtype, root, ndim = (int(v) for v in d[:6])
    coll = _BY_CODE.get(code)
    if coll is None:
        return f"an unknown collective (code {code}, collective #{seq})"
    dims = [int(v) for v in d[6:6 + min(ndim, _SHAPE_DIMS)]]
    shape = dims if ndim <= _SHAPE_DIMS else dims[:-1] + ["..."]
    text = label(coll, list(ReduceOp)[op] if op >= 0 else None,
                 DTYPES[dtype] if dtype >= 0 else "?", shape, root)
    return f"{text} (collective #{seq})"


def _disagreement(group: ProcessGroup, coll: Collective, mine: np.ndarray) -> DistBackendError:
    """Every rank gathers every rank's description and raises the same error."""
    table = np.empty((group.size(), mine.size), dtype=np.int64)
    request = group.comm.Iallgather(mine, table)
    wait_all([request], group.timeout,
             lambda waited: f"{coll.name}: the ranks disagree about collective #{group.seq} "
                            f"and did not exchange their descriptions within {waited:.1f} s")
    lines = "\n".join(f"  rank {r}: {_read_description(d)}" for r, d in enumerate(table))
    return DistBackendError(
        f"{coll.name}: Detected mismatch between collectives on ranks (seen on rank "
        f"{group.rank()}):\n{lines}\nEvery rank must call the same collectives in the same "
        f"order, on tensors of the same shape and dtype.")


def launch(group: ProcessGroup, coll: Collective, send: np.ndarray | None,
           recv: np.ndarray | None, params: dict, finish: Callable) -> Work:
    """Run ``coll`` from ``send`` into ``recv`` (contiguous arrays; None for a barrier):
    start the ranks' agreement check now, the payload once every rank agrees (Note [agree,
    then send] in work.py). ``finish()`` runs when the data is in place and gives
    ``Work.result``. The caller waits, or returns the work (``async_op=True``)."""
    op = params.get("op")
    array = send if send is not None else recv
    shape = array.shape if array is not None else ()
    dtype = array.dtype if array is not None else None
    root = params.get("src", -1)
    if group.broken is not None:
        raise DistBackendError(f"{label(coll, op, dtype, shape, root)}: the process group is "
                               f"broken ({group.broken}); no collective can run any more")
    if group.checking is not None:
        group.checking.settle()  # its payload starts before this check (MPI's order rule)
    group.seq += 1
    key = (group.seq, coll.code, _OP_CODES[op] if op is not None else -1,
           _DTYPE_CODES.get(dtype, -1) if dtype is not None else -1, root,
           array.size if array is not None else 0, hash(shape) & _HASH_BITS)
    both = np.array(key + tuple(-k for k in key), dtype=np.int64)  # MAX of both halves:
    check = group.comm.Iallreduce(group.mpi.IN_PLACE, both, op=group.mpi.MAX)  # max, -min
    seq = group.seq

    def agreed():
        if (both[:_KEY] + both[_KEY:]).any():  # (max + -min: zero where every rank agrees)
            raise _disagreement(group, coll, _describe(seq, coll, op, dtype, shape, root))
        return coll.start(group, send, recv, params)

    work = Work(group, lambda: label(coll, op, dtype, shape, root), check, agreed, finish)
    group.checking = work
    work.is_completed()  # (a peer already there: the payload starts now)
    return work


_KEY = 7
_HASH_BITS = (1 << 62) - 1  # (so that the negated key cannot overflow int64)


def run_differentiable(coll: Collective, x: Tensor, params: dict, group) -> Tensor:
    """``coll`` applied out of place to ``x``, recorded for autograd as a ``PrimNode`` of
    its record (what ``dist.nn.functional`` is made of)."""
    check_modes(coll.name)
    g = resolve_group(group)
    src = contiguous(x._data)
    recv = np.empty(coll.shape(src.shape, g.size(), params), dtype=src.dtype)
    send = src
    if coll is ALL_REDUCE:  # (reduced in place in a copy: MPI reads and writes one buffer)
        np.copyto(recv, src)
        send = recv
    op = params.get("op")
    if op is not None:
        mpi_reduction(coll.name, op, src.dtype, g.mpi)  # (a bad op fails before the check)

    def finish():
        if op is ReduceOp.AVG:
            np.divide(recv, g.size(), out=recv)
        return recv

    launch(g, coll, send, recv, params, finish).wait()
    out = Tensor._fresh(recv)
    edge = x._edge() if STATE.grad_enabled else None
    if edge is not None and recv.dtype.kind == "f":
        out._node = PrimNode(coll, params, (x,), out, [edge])
        out._requires_grad = True
    return out


# ------------------------------------------------------------------ in the compiler's IR

# Note [collectives in the IR]: under a compiler tracer (a dispatch mode with
# ``records_collectives``), the in-place collectives and DDP's buckets are recorded as
# primitives of the op table, each collective two of them, so a compiled step communicates
# without leaving native code:
#
# - ``<name>_start(x, world=W, ...)`` issues the non-blocking MPI call on a buffer of its
#   own (its output), as soon as ``x`` exists: the reduction of every rank's ``x`` lands
#   there (``all_reduce`` and ``broadcast`` work in place on a copy of ``x``; ``all_gather``
#   and ``reduce_scatter`` read ``x`` while they run);
# - ``collective_wait(buffer, *kept)`` completes it and copies the result out; ``kept`` are
#   the values MPI reads until then (``x`` of an all-gather), so that a memory plan keeps
#   them, and the buffer, alive and untouched from the start to the wait.
#
# ``AVG`` is a ``SUM`` start followed by a division by the world size, recorded as eager
# divides (``x / W``: the same float operation as ``np.divide(buf, W)``). Each record's
# ``impl`` runs the collective eagerly, with the ranks' agreement check — that is what the
# tracing call and the numpy interpreter do — and returns the result at once (the wait's
# impl copies it); the LLVM backend lowers the pair to MPI calls made by the native code
# (compiler/backends/llvm/collective.py). The compiler's traits of these records
# (``compiler/prims.py``: ``communicates``) keep every pass from folding, merging, dropping
# or reordering them; the ranks agree before each compiled call that they run the same
# collectives (:func:`agree_on_step`).


def _start_shape(coll: Collective, in_place: bool):
    def shape(x, *more, world, **params):
        if more:  # (several inputs: one flat buffer of them all, in order)
            if not in_place:
                raise ValueError(f"{coll.name}_start: one input, got {1 + len(more)}")
            if any(m.dtype is not x.dtype for m in more):
                raise ValueError(f"{coll.name}_start: inputs of one dtype, got "
                                 f"{[m.dtype.name for m in (x, *more)]}")
            return (sum(math.prod(m.shape) for m in (x, *more)),), x.dtype
        return coll.shape(tuple(x.shape), world, params), x.dtype
    return shape


def _wait_shape(buffer, *kept):
    return tuple(buffer.shape), buffer.dtype


def _start_impl(coll: Collective, in_place: bool):
    def impl(x, *more, world, **params):
        g = resolve_group(None)
        if g.size() != world:
            raise DistBackendError(f"{coll.name}: recorded for {world} ranks, but the job "
                                   f"has {g.size()}")
        send = contiguous(np.asarray(x))
        if more:  # (a bucket: its tensors copied into one flat buffer)
            recv = send = np.concatenate([np.asarray(a).ravel() for a in (x, *more)])
        elif in_place:  # (reduced in place in a copy: MPI reads and writes one buffer)
            recv = send = send.copy()
        else:
            recv = np.empty(coll.shape(send.shape, world, params), dtype=send.dtype)
        if params.get("op") is not None:
            mpi_reduction(coll.name, params["op"], send.dtype, g.mpi)
        if g.agreed:  # (a compiled call the ranks agreed on: no check, as native code)
            _run_agreed(g, coll, send, recv, params)
        else:
            launch(g, coll, send, recv, params, lambda: None).wait()
        return recv  # (an AVG's sum: the division is a node of its own)
    impl.__name__ = f"{coll.name}_start"
    return impl


def _run_agreed(g: ProcessGroup, coll: Collective, send, recv, params: dict) -> None:
    """One collective of an agreed compiled call, run by a numpy executor: the payload
    alone, with the group's timeout (see :func:`agree_on_step`)."""
    g.seq += 1
    seq = g.seq
    what = label(coll, params.get("op"), send.dtype, send.shape, params.get("src", -1))

    def timed_out(waited: float) -> str:
        g.broken = f"{what} (collective #{seq}) timed out"
        return (f"{what} (collective #{seq}) timed out on rank {g.rank()} of {g.size()} after "
                f"{waited:.2f} s (timeout {g.timeout:g} s), waiting for its data from the "
                f"other ranks")

    wait_all([coll.start(g, send, recv, params)], g.timeout, timed_out)


def _wait_impl(buffer, *kept):
    return np.array(buffer, copy=True)


_STARTS = {}
for _coll, _in_place in ((ALL_REDUCE, True), (BROADCAST, True), (ALL_GATHER, False),
                         (REDUCE_SCATTER, False)):
    _STARTS[_coll] = Primitive(f"{_coll.name}_start", "collective",
                               _start_impl(_coll, _in_place), _start_shape(_coll, _in_place),
                               doc=f"start of {_coll.name}: {_coll.doc}")
ALL_REDUCE_START, BROADCAST_START = _STARTS[ALL_REDUCE], _STARTS[BROADCAST]
ALL_GATHER_START, REDUCE_SCATTER_START = _STARTS[ALL_GATHER], _STARTS[REDUCE_SCATTER]
COLLECTIVE_WAIT = Primitive("collective_wait", "collective", _wait_impl, _wait_shape,
                            doc="completes a collective's start; a copy of its result")
STARTED = {p: c for c, p in _STARTS.items()}  # start primitive -> its collective
IN_PLACE_STARTS = (ALL_REDUCE_START, BROADCAST_START)  # (MPI works on the start's buffer)


class RecordedWork:
    """What ``async_op=True`` returns under a compiler tracer: the collective's start is
    recorded; ``wait()`` records its wait and the write into the result tensor where the
    program waits (so the compiled step waits there too). A recorded work never waited for
    makes the trace fall back (the tracer is told: ``on_collective``)."""

    __slots__ = ("_finish", "what", "done", "__weakref__")

    def __init__(self, finish: Callable, what: str) -> None:
        self._finish, self.what, self.done = finish, what, False
        for m in STATE.modes:
            m.on_collective(self, True)

    def wait(self, timeout=None) -> bool:
        if not self.done:
            self.done = True
            self._finish()
            self._finish = None  # (its tensors are the trace's: nothing keeps them)
            for m in STATE.modes:
                m.on_collective(self, False)
        return True

    def is_completed(self) -> bool:
        """Records the wait (a compiled step cannot ask MPI mid-way whether it is done)."""
        return self.wait()

    def __repr__(self) -> str:
        return f"<RecordedWork {self.what}: {'waited' if self.done else 'started'}>"


def record(coll: Collective, x, params: dict, group: ProcessGroup,
           write: Callable, async_op: bool):
    """The recorded form of an in-place collective (Note [collectives in the IR]): the start
    of ``coll`` on ``x`` now; at the wait, its result (divided by the world size for AVG)
    handed to ``write(result)``, which writes it where the eager form would. Returns None,
    or a :class:`RecordedWork` with ``async_op``. ``x`` may be a list of tensors of one
    dtype (all-reduce, broadcast): they travel as one flat buffer, in order (DDP's
    bucket, without a concatenation of its own: the start copies them in)."""
    if group.broken is not None:
        raise DistBackendError(f"{coll.name}: the process group is broken ({group.broken}); "
                               f"no collective can run any more")
    w = group.size()
    start = _STARTS[coll]
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    x = xs[0]
    with no_grad():
        started = dispatch(start, *xs, world=w, **params)
    op = params.get("op")

    def finish():
        with no_grad():
            kept = () if start in IN_PLACE_STARTS else (x,)
            result = dispatch(COLLECTIVE_WAIT, started, *kept)
            if op is ReduceOp.AVG:
                result = result / w
            write(result)

    if async_op:
        return RecordedWork(finish, label(coll, op, x.dtype.np, started.shape,
                                          params.get("src", -1)))
    finish()
    return None


MISSED = 0  # the fingerprint of a rank that has no compiled variant for this call


def agree_on_step(group: ProcessGroup, fingerprint: int, count: int) -> bool:
    """Before a compiled call whose function communicates: do all ranks run compiled code
    with the same collectives? One small all-reduce, in the format of a collective's
    agreement check (Note [agree, then send] in work.py), of this call's signature — a
    compiled step, its place in the sequence, ``count`` collectives, and ``fingerprint``
    (of their kinds, ops, dtypes and sizes, in order; :data:`MISSED` when no variant's
    guards held here).

    True: every rank has the same nonzero fingerprint — run the compiled code, then
    :func:`advance` the sequence by ``count``. False: every rank is at a compiled call
    but they differ (a guard missed on some rank) — every rank runs the call eagerly, whose
    own collectives are checked one by one. A rank that is elsewhere (an eager collective,
    another point of the program) makes every rank raise the mismatch, named, as eager does.
    """
    if group.broken is not None:
        raise DistBackendError(f"a compiled step with collectives: the process group is "
                               f"broken ({group.broken}); no collective can run any more")
    if group.checking is not None:
        group.checking.settle()  # (an eager payload starts before this check: MPI's order)
    group.seq += 1
    seq = group.seq
    key = (seq, COMPILED_STEP.code, -1, -1, -1, count, fingerprint & _HASH_BITS)
    both = np.array(key + tuple(-k for k in key), dtype=np.int64)
    request = group.comm.Iallreduce(group.mpi.IN_PLACE, both, op=group.mpi.MAX)

    def timed_out(waited: float) -> str:
        group.broken = f"a compiled step (collective #{seq}) timed out"
        return (f"a compiled step with {count} collective(s) inside (collective #{seq}) timed "
                f"out on rank {group.rank()} of {group.size()} after {waited:.2f} s (timeout "
                f"{group.timeout:g} s), waiting for every rank to reach it (the ranks' "
                f"agreement check). Another rank has not reached this call: it is still "
                f"computing, it stopped, or it calls collectives in another order.")

    wait_all([request], group.timeout, timed_out)
    high, low = both[:_KEY], -both[_KEY:]
    if (high == low).all():
        return fingerprint != MISSED
    if high[0] == low[0] and high[1] == low[1] == COMPILED_STEP.code:
        return False  # (all at this compiled call: they fall back together)
    raise _disagreement(group, COMPILED_STEP,
                        _describe(seq, COMPILED_STEP, None, None, (count,), -1))


def advance(group: ProcessGroup, count: int) -> None:
    """A compiled step ran ``count`` collectives without the per-collective check (its
    ranks agreed on all of them at once): the sequence moves on as eager's would."""
    group.seq += count
