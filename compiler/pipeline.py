"""From a recorded call to what a backend runs.

    trace ──lower──▶ Lowered ──compile_trace(backend)──▶ Compiled
    (tracer.finish:  (the joint graph      (the guards, the write-backs done in
     immutable)       after passes, split   place, the forward and backward
                      forward/backward)     executables)

:func:`lower` is the backend-independent half: it takes the trace's joint graph (a backward
outside joined on, ``Trace.joint``), runs the passes and splits it again. The
caller may stop there — ``api.CompiledFunction`` compares a lowered trace at a new size with
a symbolic variant's templates and compiles nothing when they agree. :func:`compile_trace`
builds the guards and hands each part to the backend, whose ``compile`` fuses, plans memory
and generates code as it needs (``backends.base.Executable``).

Neither changes the :class:`~compiler.trace.Trace` it is given: the compiled trace is a new
one (``dataclasses.replace``) holding the forward graph after passes and the write-backs
marked as done in place. ``api.py`` keeps what is left: the variant cache, the call path and
the fallback policy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import collectives, ir
from .backends.base import Backend, Executable
from .guards import GuardSet, build_guards
from .partition import Split, precompute, split
from .passes import run_passes
from .passes.attention import fuse_attention
from .passes.narrow import narrow_indices
from .passes.remat import rematerialise
from .passes.views import attention_views
from .trace import Trace


@dataclass(frozen=True)
class Lowered:
    """A trace's graph made ready for a backend."""

    graph: ir.Graph  # the forward graph after passes (the joint graph's forward part)
    parts: Split | None  # the joint graph split in two, for a backward outside the call
    n_fwd: int  # how many of graph's outputs the call itself produces
    before: str  # the joint graph as recorded, and after the passes (for explain)
    after: str


@dataclass(frozen=True)
class Compiled:
    """A trace compiled for one backend: what a variant runs."""

    trace: Trace  # with the forward graph after passes and the write-backs marked
    guards: GuardSet
    plan: Executable  # the forward graph's
    backward: Executable | None  # the backward part's (a backward outside the call)
    inplace: dict  # node -> graph input its result is written into (a write-back)
    copy_outputs: set  # outputs that may alias an input: copied before write-backs


def lower(trace: Trace, vector_math: bool, plans_memory: bool = False,
          check_each: bool = False) -> Lowered:
    """Passes over the joint graph, then (a backward outside) its split into forward and
    backward parts. ``vector_math``: the backend computes transcendentals in vector code,
    not with numpy's functions — the split may then recompute them and may precompute the
    gradients of a scalar loss in the forward, and hand-written softmax attention becomes the
    fused pair (``passes/attention.py``); the interpreter keeps eager's order.
    ``plans_memory``: the backend runs from a planned arena — with the backward inside the
    call, index values it keeps to itself are narrowed to int32 (``passes/narrow.py``) and
    cheap activations are computed again for their late readers (``passes/remat.py``).
    ``check_each``: verify the graph after every pass (``config.verify_each_pass``: the test
    suite, strict mode), not only the graphs the backend gets."""
    n_fwd = len(trace.graph.outputs)
    g = trace.joint

    def checked(g):
        if check_each:
            ir.verify(g)
        return g
    before = str(checked(g))
    g = run_passes(g, check=check_each)
    collectives.check(g, trace.backward is not None)  # (Unsupported: the call runs eagerly)
    if vector_math:  # (changes the arithmetic: passes/attention.py's note)
        g = checked(fuse_attention(g))
    if plans_memory and trace.backward is None:  # (a backward outside: the split's own
        g = checked(narrow_indices(g))  #             rematerialisation, partition.py)
        g = checked(rematerialise(g))
    if vector_math:  # (attention kernels reading their operands as strided views)
        g = checked(attention_views(g))
    after = str(g)
    parts = None
    if trace.backward is not None:
        cots = list(trace.backward.cotangents)
        parts = split(g, n_fwd, cots, vector_math=vector_math)
        if vector_math:  # (the interpreter: eager's order, bit for bit)
            parts = precompute(g, n_fwd, cots, parts) or parts
        ir.verify(parts.forward)
        ir.verify(parts.backward)
        g = parts.forward
        after += "\nbackward:\n" + str(parts.backward)
    else:
        ir.verify(g)
    return Lowered(g, parts, n_fwd, before, after)


def compile_trace(trace: Trace, lowered: Lowered, backend: Backend, flat: list, spec,
                  dynamic_numbers: set, checks: list, plans: dict | None = None) -> Compiled:
    """Guards for ``trace`` (called with ``flat``/``spec``; ``checks``: the capture's
    checks on the Python sources it read) and the backend's executables of ``lowered``.
    ``plans``: executables already made of ``lowered`` (the plan cache's), per part and
    in-place writes; those made here are added to it."""
    plans = {} if plans is None else plans

    def executable(part: str, g, inplace=None) -> Executable:
        k = (part, None if inplace is None else tuple(sorted(inplace.items())))
        if k not in plans:
            plans[k] = backend.compile(g) if inplace is None else \
                backend.compile(g, inplace=inplace)
        return plans[k]
    backward = executable("backward", lowered.parts.backward) if lowered.parts is not None \
        else None
    versioned = {c.obj_id for c in checks if hasattr(c, "box")}
    trace = replace(trace, graph=lowered.graph, checks=list(checks),
                    objects=[(r, v) for r, v in trace.objects if id(r()) not in versioned],
                    training=[(r, t) for r, t in trace.training if id(r()) not in versioned])
    #  (the capture guards those objects' versions and flags by source already)
    guards = build_guards(trace, flat, spec, dynamic_numbers)
    inplace, writebacks = inplace_writes(trace, lowered.graph, lowered.n_fwd)
    trace = replace(trace, writebacks=writebacks)
    plan = executable("forward", lowered.graph, inplace)
    return Compiled(trace, guards, plan, backward, inplace,
                    aliasing_outputs(lowered.graph, lowered.n_fwd))


def inplace_writes(trace: Trace, g: ir.Graph, n_fwd: int) -> tuple[dict, list]:
    """(node -> graph input, write-backs): the write-backs that may be done in place — the
    node computing the new value of a bound input writes straight into that input's array
    — and ``trace.writebacks`` with each marked done or not ((binding, output, done)).

    Note: allowed only when no value guard is checked after that node and no later node
    can fail on data (index ops), so the transaction rule holds; when nothing later reads
    the input's old value; when the node is a numpy ufunc (which handles an output
    aliasing its operands); and when no other input shares the memory. A write-back marked
    done is not copied at commit."""
    last_guard = max((gd.after for gd in g.guards), default=0)
    last_index = max((j for j, n in enumerate(g.nodes) if n.prim.kind in ("index", "collective")),
                     default=-1)  # (a collective's wait may time out: nothing is written before)
    position = {id(n.out): j for j, n in enumerate(g.nodes)}
    input_index = {id(v): i for i, v in enumerate(g.inputs)}
    last_use: dict[int, int] = {}
    for j, n in enumerate(g.nodes):
        for x in n.inputs:
            if isinstance(x, ir.Value):
                last_use[id(x)] = j
    out_count: dict[int, int] = {}
    for v in g.outputs:
        out_count[id(v)] = out_count.get(id(v), 0) + 1
    arrays = [b.array() for b in trace.bindings]
    shared = _overlapping(arrays)
    inplace: dict[int, int] = {}
    marked: list[Any] = []
    for b, k in trace.writebacks:
        v = g.outputs[k]
        j = position.get(id(v))
        done = False
        if j is not None and k < n_fwd and j >= last_guard and j > last_index \
                and out_count[id(v)] == 1 and j not in inplace:
            node = g.nodes[j]
            inv = next((x for x in g.inputs if trace.bindings[input_index[id(x)]] is b), None)
            ufunc = getattr(node.prim.impl, "ufunc", None)
            if inv is not None and ufunc is not None and last_use.get(id(inv), -1) <= j \
                    and id(inv) not in out_count and v.shape == inv.shape \
                    and v.dtype is inv.dtype:
                i = input_index[id(inv)]
                a = arrays[i]
                if a is not None and id(a) not in shared:
                    inplace[j] = i
                    done = True
        marked.append((b, k, done))
    return inplace, marked


try:  # (numpy 2 moved it)
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy 1.x
    _byte_bounds = np.byte_bounds


def _overlapping(arrays: list) -> set:
    """ids of the arrays whose memory bounds overlap another array's (``np.may_share_memory``
    of each pair, by sorting the bounds: a step binds hundreds of arrays)."""
    bounds = sorted((lo, hi, id(a)) for a in {id(a): a for a in arrays if a is not None}.values()
                    for lo, hi in [_byte_bounds(a)] if hi > lo)
    out: set = set()
    for k, (_, hi, i) in enumerate(bounds):
        for lo2, _, j in bounds[k + 1:]:
            if lo2 >= hi:
                break
            out.update((i, j))
    return out


def aliasing_outputs(g: ir.Graph, limit: int) -> set:
    """Outputs whose array may share memory with an input (views and inputs themselves):
    they are copied before write-backs so no write-back reads memory another overwrote."""
    from_input = {id(v) for v in g.inputs}
    for n in g.nodes:
        if n.prim.view and n.inputs and isinstance(n.inputs[0], ir.Value) \
                and id(n.inputs[0]) in from_input:
            from_input.add(id(n.out))
    return {k for k, v in enumerate(g.outputs[:limit]) if id(v) in from_input}
