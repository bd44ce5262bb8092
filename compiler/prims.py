"""The primitives as the compiler sees them: every primitive record of ``dyngrad.ops`` under
one name here, and the traits the passes and backends ask of them, in one table.

Nothing else in ``compiler/`` names a primitive by a string: a pass asks a trait
(``traits(n.prim).role``), a backend looks its lowering rule up by the record itself (see
``compiler/backends/llvm/lowering.py``), and code that builds a node names the record
(``prims.RESHAPE``). A new elementwise primitive needs no entry here unless it is costly to
recompute (``transcendental``) or has a Python-number form the tracer records (``python``);
:data:`TRAITS` gives every registered primitive a default from its kind.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from dyngrad.distributed.collectives import (
    ALL_GATHER_START,
    ALL_REDUCE_START,
    BROADCAST_START,
    COLLECTIVE_WAIT,
    REDUCE_SCATTER_START,
)
from dyngrad.ops import REGISTRY
from dyngrad.ops.attention import FLASH_ATTENTION, FLASH_ATTENTION_BACKWARD
from dyngrad.ops.bitwise import (
    BITWISE_AND,
    BITWISE_LEFT_SHIFT,
    BITWISE_NOT,
    BITWISE_OR,
    BITWISE_RIGHT_SHIFT,
    BITWISE_XOR,
)
from dyngrad.ops.conv import CONV, CONV_TRANSPOSE, CONV_WEIGHT_GRAD
from dyngrad.ops.creation import FULL, IOTA
from dyngrad.ops.elementwise import (
    ABS,
    ACOS,
    ADD,
    ASIN,
    ATAN,
    ATAN2,
    CAST,
    CEIL,
    COS,
    DIV,
    EQ,
    ERF,
    EXP,
    FLOOR,
    GE,
    GT,
    LE,
    LOG,
    LOG1P,
    LT,
    MAXIMUM,
    MINIMUM,
    MUL,
    NE,
    NEG,
    POW,
    ROUND,
    SIGMOID,
    SIGN,
    SIN,
    SQRT,
    SUB,
    TANH,
    WHERE,
)
from dyngrad.ops.indexing import GATHER, INDEX_CHECK, SCATTER_ADD
from dyngrad.ops.linalg import MATMUL
from dyngrad.ops.movement import BROADCAST, CONCAT, PAD, PERMUTE, RESHAPE, SLICE
from dyngrad.ops.pool import ADAPTIVE_MAX_INDICES, MAX_POOL_INDICES
from dyngrad.ops.primitive import Primitive
from dyngrad.ops.random import RANDOM
from dyngrad.ops.reduce import MAX, SIZE_OF, SUM
from dyngrad.ops.scan import ARGSORT, CUMPROD, CUMSUM

__all__ = [
    "Traits", "TRAITS", "traits", "Primitive", "Lowerings", "ABS", "ACOS", "ADD",
    "ADAPTIVE_MAX_INDICES", "ALL_GATHER_START", "ALL_REDUCE_START", "ARGSORT",
    "BROADCAST_START", "COLLECTIVE_WAIT", "REDUCE_SCATTER_START", "ASIN", "ATAN", "ATAN2",
    "BITWISE_AND",
    "BITWISE_LEFT_SHIFT", "BITWISE_NOT", "BITWISE_OR", "BITWISE_RIGHT_SHIFT", "BITWISE_XOR",
    "BROADCAST", "CAST", "CEIL",
    "CONCAT", "CONV", "CONV_TRANSPOSE",
    "CONV_WEIGHT_GRAD", "COS", "CUMPROD", "CUMSUM", "DIV", "EQ", "ERF", "EXP",
    "FLASH_ATTENTION", "FLASH_ATTENTION_BACKWARD", "FLOOR", "FULL",
    "GATHER", "GE", "GT", "INDEX_CHECK", "IOTA", "LE", "LOG", "LOG1P", "LT", "MATMUL", "MAX",
    "MAX_POOL_INDICES", "MAXIMUM", "MINIMUM", "MUL", "NE", "NEG", "PAD", "PERMUTE", "POW",
    "RANDOM", "RESHAPE", "ROUND", "SCATTER_ADD", "SIGMOID", "SIGN", "SIN", "SIZE_OF", "SLICE",
    "SQRT", "SUB", "SUM", "TANH", "WHERE",
]

# Fusion roles (compiler/passes/fusion.py): what a node is to a loop over its shape.
ELEMENTWISE = "elementwise"  # one element out per element in: fuses into any loop
REDUCTION = "reduction"  # combines elements along axes (a relabelling over size-1 axes)
CONSTANT = "constant"  # known from its parameters and shapes alone (no data read)
MAP = "map"  # an index map of its input (reshape, broadcast, a unit-step slice)
OWN = "own"  # a kernel of its own kind (matmul, index, movement, random, creation, window)


@dataclass(frozen=True)
class Traits:
    """What the compiler needs to know of a primitive besides its record."""

    role: str
    transcendental: bool = False  # costly to recompute per element (partition.py)
    reads_data: bool = True  # False: reads only its input's shape (size_of)
    relabels: bool = False  # a reshape: the same elements in the same order
    window: bool = False  # reads a window of its input: positions shift (slice)
    map_if: Callable | None = None  # role MAP only for nodes passing this test
    python: Callable | None = None  # the operation on Python floats (the tracer's numbers)
    identity: float | None = None  # a reduction's identity element
    recompute_work: Callable | None = None  # node -> multiply-adds per output element, for
    #   a kernel of its own whose every element is computed the same way wherever it runs
    #   (its bits depend only on its inputs, shapes and parameters): passes/remat.py may
    #   compute it again when that is cheap
    value_range: Callable | None = None  # (node, its inputs' ranges) -> (lo, hi), bounds of
    #   an integer output's values (an input's range: (lo, hi) or None when unknown; a
    #   Python int n's is (n, n)), or None: passes/narrow.py narrows int64 values it bounds
    dtype_param: str | None = None  # the parameter naming the output's dtype, when one does
    #   (else the output's dtype follows the inputs' by the shape rule)
    index_inputs: tuple = ()  # inputs read only as indices, which may be int32 (the kernels
    #   widen each as they read it)
    communicates: bool = False  # an MPI collective's start or wait (Note [collectives in
    #   the IR] in dyngrad/distributed/collectives.py): every rank must run it, in program
    #   order — never folded, merged, dropped or recomputed, and no collective is moved
    #   ahead of another (passes/fold.py, cse.py, dce.py, fusion.py)

    def maps(self, node) -> bool:
        """Whether ``node`` is an index map of its input (fusion reads it through one)."""
        return self.role == MAP and (self.map_if is None or self.map_if(node))


def _unit_steps(node) -> bool:
    return all(s == 1 for s in node.params["steps"])


def _same_range(node, ranges) -> tuple | None:
    """A view's, or a bounds check's (it raises on anything outside): its input's."""
    return ranges[0]


def _corners(op: Callable) -> Callable:
    """The range of ``op`` (+, -, x: extreme at a corner of its operands' box)."""
    def rule(node, ranges) -> tuple | None:
        if len(ranges) != 2 or None in ranges:
            return None
        ends = [op(a, b) for a in ranges[0] for b in ranges[1]]
        return min(ends), max(ends)
    return rule


def _either_range(node, ranges) -> tuple | None:
    """``where``'s: the union of its two choices'."""
    a, b = ranges[1:]
    return None if a is None or b is None else (min(a[0], b[0]), max(a[1], b[1]))


def _iota_range(node, ranges) -> tuple | None:
    p = node.params
    if not all(isinstance(v, int) for v in (p["start"], p["step"])):
        return None
    ends = (p["start"], p["start"] + p["step"] * max(node.out.shape[p["axis"]] - 1, 0))
    return min(ends), max(ends)


def _full_range(node, ranges) -> tuple | None:
    v = node.params["value"]
    return (v, v) if isinstance(v, int) else None


def _pool_range(node, ranges) -> tuple:
    """``max_pool_indices``': a flat position within its input's plane — or, for a window
    of padding only, its clipped start, which may lie in the padding below or right
    (bounded by each dim grown by its padding and a dilated window)."""
    p = node.params
    spatial = node.inputs[0].shape[-len(p["kernel"]):]
    grown = [s + lo + hi + d * k for s, (lo, hi), d, k
             in zip(spatial, p["padding"], p["dilation"], p["kernel"])]
    return 0, math.prod(grown) - 1


def _adaptive_range(node, ranges) -> tuple:
    """``adaptive_max_indices``': a flat position within its input's plane."""
    return 0, math.prod(node.inputs[0].shape[-len(node.params["output_size"]):]) - 1


def _conv_work(node) -> int:
    """A convolution's multiply-adds per output element: its weight's (in channels per
    group) x window."""
    return math.prod(node.inputs[1].shape[1:])


_OWN_TRAITS: dict[Primitive, Traits] = {
    SIZE_OF: Traits(CONSTANT, reads_data=False),
    SUM: Traits(REDUCTION, identity=0.0),
    MAX: Traits(REDUCTION, identity=-math.inf),
    FULL: Traits(CONSTANT, value_range=_full_range, dtype_param="dtype"),
    IOTA: Traits(OWN, value_range=_iota_range, dtype_param="dtype"),
    RESHAPE: Traits(MAP, relabels=True, value_range=_same_range),
    BROADCAST: Traits(MAP, value_range=_same_range),
    SLICE: Traits(MAP, window=True, map_if=_unit_steps, value_range=_same_range),
    PERMUTE: Traits(OWN, value_range=_same_range),
    MAX_POOL_INDICES: Traits(OWN, value_range=_pool_range, dtype_param="dtype"),
    ADAPTIVE_MAX_INDICES: Traits(OWN, value_range=_adaptive_range, dtype_param="dtype"),
    INDEX_CHECK: Traits(OWN, value_range=_same_range),
    GATHER: Traits(OWN, index_inputs=(1,)),
    SCATTER_ADD: Traits(OWN, index_inputs=(1,)),
    CONV: Traits(OWN, recompute_work=_conv_work),
    # the fused attention pair: kernels of their own (backends/llvm/attention.py); the
    # forward is not recomputed (its output carries the logsumexp the backward reads)
    FLASH_ATTENTION: Traits(OWN),
    FLASH_ATTENTION_BACKWARD: Traits(OWN),
    EXP: Traits(ELEMENTWISE, transcendental=True),
    LOG: Traits(ELEMENTWISE, transcendental=True),
    LOG1P: Traits(ELEMENTWISE, transcendental=True),
    TANH: Traits(ELEMENTWISE, transcendental=True),
    SIGMOID: Traits(ELEMENTWISE, transcendental=True),
    ERF: Traits(ELEMENTWISE, transcendental=True),
    SIN: Traits(ELEMENTWISE, transcendental=True),
    COS: Traits(ELEMENTWISE, transcendental=True),
    ASIN: Traits(ELEMENTWISE, transcendental=True),
    ACOS: Traits(ELEMENTWISE, transcendental=True),
    ATAN: Traits(ELEMENTWISE, transcendental=True),
    ATAN2: Traits(ELEMENTWISE, transcendental=True),
    POW: Traits(ELEMENTWISE, transcendental=True, python=operator.pow),
    ADD: Traits(ELEMENTWISE, python=operator.add, value_range=_corners(operator.add)),
    SUB: Traits(ELEMENTWISE, python=operator.sub, value_range=_corners(operator.sub)),
    MUL: Traits(ELEMENTWISE, python=operator.mul, value_range=_corners(operator.mul)),
    WHERE: Traits(ELEMENTWISE, value_range=_either_range),
    DIV: Traits(ELEMENTWISE, python=operator.truediv),
    NEG: Traits(ELEMENTWISE, python=operator.neg),
    ABS: Traits(ELEMENTWISE, python=operator.abs),
    SQRT: Traits(ELEMENTWISE, python=math.sqrt),  # (the tracer guards x >= 0)
    EQ: Traits(ELEMENTWISE, python=operator.eq),
    NE: Traits(ELEMENTWISE, python=operator.ne),
    LT: Traits(ELEMENTWISE, python=operator.lt),
    LE: Traits(ELEMENTWISE, python=operator.le),
    GT: Traits(ELEMENTWISE, python=operator.gt),
    GE: Traits(ELEMENTWISE, python=operator.ge),
    # an MPI collective, a start and a wait (backends/llvm/collective.py)
    ALL_REDUCE_START: Traits(OWN, communicates=True),
    BROADCAST_START: Traits(OWN, communicates=True),
    ALL_GATHER_START: Traits(OWN, communicates=True),
    REDUCE_SCATTER_START: Traits(OWN, communicates=True),
    COLLECTIVE_WAIT: Traits(OWN, communicates=True),
    # scans and sorting: kernels of their own (kind 'index'; the LLVM backend's are in
    # backends/llvm/scan.py)
    CUMSUM: Traits(OWN),
    CUMPROD: Traits(OWN),
    ARGSORT: Traits(OWN),
}


def _default(prim: Primitive) -> Traits:
    return Traits(ELEMENTWISE if prim.kind == "elementwise" else OWN)


TRAITS: dict[Primitive, Traits] = {p: _OWN_TRAITS.get(p) or _default(p)
                                   for p in REGISTRY.values()}


def traits(prim: Primitive) -> Traits:
    """The traits of ``prim`` (a primitive registered after this module was imported gets
    its kind's default)."""
    t = TRAITS.get(prim)
    if t is None:
        t = TRAITS[prim] = _default(prim)
    return t


class Lowerings(dict):
    """A backend's lowering rules for one kind of kernel, keyed by primitive record:
    ``@rules(prims.EXP)`` registers a rule; ``rules.of(prim)`` finds it or raises
    NotImplementedError naming the primitive (the group then runs in numpy)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def __call__(self, *prims: Primitive):
        def register(rule):
            for p in prims:
                if p in self:
                    raise ValueError(f"{self.what}: a second lowering of {p.name}")
                self[p] = rule
            return rule
        return register

    def of(self, prim: Primitive, what: str = ""):
        rule = self.get(prim)
        if rule is None:
            raise NotImplementedError(f"{self.what}: no lowering of primitive {prim.name!r}"
                                      f"{' ' + what if what else ''}")
        return rule
