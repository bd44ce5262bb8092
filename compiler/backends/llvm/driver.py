"""The LLVM backend's driver: a whole graph as one native call.

When every fusion group of a graph lowers (elementwise, reduce, matmul, index, movement and
Python-number 'scalar' groups; see ``codegen``), :func:`build` makes one LLVM module holding
the kernels and a driver function ``i32 @drv(ptr %table)`` that runs them in the groups'
order — a kernel's body is inlined into it when the graph has at most ``INLINE_MAX`` groups
and no other group has the same code (such groups share one function) — checks every value
guard as soon as its group has run, and returns 0, 1 + the index of the first guard that
failed, or -1 when an index was out of range. A compiled call is then one
ctypes call (which releases the GIL) plus the input guards.

Memory: intermediates live in one arena allocated once per plan (offsets from
``compiler.passes.memory.plan_memory`` over the groups' outputs). An elementwise kernel may
write an output over an input buffer that dies in it (the planner's in-place pairs), and only
an elementwise kernel: see the note on in-place kernels below. Graph outputs alternate
between two *blocks*:
each block is a pointer table with an array per output, and calls take the blocks in turn —
a step's ``.grad`` arrays are still held while the next step runs, and free again by the one
after. An output array is reused only when nothing else references it (its reference count
says so: no tensor, view or user variable holds it); one still held is replaced in its block
by a fresh array (the holder keeps the old one). The tables keep the addresses of buffers the
runtime owns and refresh an argument's address only when a different array arrives.
Write-backs into bound inputs (parameters, optimizer state) go straight into the input's
array when nothing can fail or read the old value after their kernel (``_direct_writes``;
every guard is checked before the next kernel runs), else they are computed into a staging
buffer and copied over the input at the end of the driver, after every guard has passed —
either way a failed guard leaves the user's tensors untouched; the runtime marks them done
(no copy at commit). A call whose in-place target overlaps another input's memory runs
the runner's plan instead.

Calls of one plan from two threads at once: the second takes the runner's plan of the graph
(made on first need), never the shared arena.

Note (in-place kernels under ``noalias``): the kernels keep their pointers ``noalias`` even
when the plan gives an output the buffer of an input it overwrites. What makes that sound is
the shape of an elementwise kernel's body: at iteration ``i`` it loads every operand element
it needs, computes, and only then stores each output at ``i``; and the planner pairs an
output with an input only when every read of that input in the kernel is of element ``i``
at iteration ``i`` (no broadcast, no other view, no second pass). So the only memory the
load and the store share is element ``i``, the store depends on the load, and no reordering
``noalias`` allows can put one before the other — the argument the direct write-backs into
bound inputs below already rest on. A reduction kernel visits each element of its input
shape once in its first pass: its outputs there may run in place when it has no second pass;
when it has one, its second pass's outputs may, since per kept index the sums have read
every element before that pass loads and then stores each one, and so may the first pass's
stored values that the second pass reads back instead of computing them from those inputs
(``reduce.in_place_nodes``, ``read_back``, ``early_readers``). A convolution's input
gradient with the add it took (fusion's rule 8) stores each element of the sum right after
loading the addend's, from a sum already complete (``window.WindowBuilder._sample_params``).
Matmul, index and other window kernels read elements other than the one they write: they
get no in-place outputs.

Collectives (``GroupKind.COLLECTIVE``: an MPI collective's start or wait) make no kernel:
their rules (``collective.py``) write the MPI calls into the driver itself, with the MPI
functions and handles read from one more table entry at run time; the driver tests the
requests in flight after every kernel, and a failure with collectives inside is final
(``failed``: never rerun, its collectives may have started).

Note (what still falls back to the runner): integer convolutions (no integer GEMM:
``tests/test_lowering_table.py``), guards on non-scalar values, and graph outputs that are
computed Python numbers. Random numbers, uniform and normal, are drawn natively
(``randomgen.py``, eager's bits). Creation groups become constants made once,
and movement groups that only reshape become aliases of their source.
"""

from __future__ import annotations

import ctypes
import math
import re
import sys
import threading

import llvmlite.binding as llvm
import numpy as np

from dyngrad import dtypes as _dt
from dyngrad.distributed import process_group as _groups
from dyngrad.distributed.collectives import advance
from dyngrad.distributed.process_group import resolve_group
from dyngrad.distributed.work import DistBackendError

from ...dims import Dim, concrete
from ...dims import describe as describe_dim
from ...generated import exec_generated
from ...ir import Value
from ...passes.fusion import fuse, summed_gradient
from ...passes.memory import plan_memory, verify_plan
from ...prims import traits
from .. import base
from . import cache, codegen, collective, emit, reduce, window

ALIGN = 64
BLOCKS = 2  # output arrays kept per output (see the module docstring)


def _free_refs() -> int:
    """The reference count the generated call sees for a block's array that nothing else
    holds: the block's list, the local and the call's argument — as this interpreter counts
    them (whether loading a local takes a reference is the interpreter's choice), measured
    with code of the generated call's shape."""
    ns = {"REFS": sys.getrefcount}
    exec_generated("def probe(BL):\n    o = BL[0]\n    return REFS(o)", ns)
    return ns["probe"]([object()])


FREE_REFS = _free_refs()
INLINE_MAX = 48  # kernels inlined into the driver up to this many; beyond, calls (the
#                  optimiser's time would grow faster than the module)


class NotDrivable(NotImplementedError):
    """The graph has a group the driver cannot run natively (the runner takes it)."""


def _memtype(v) -> str:
    if v.weak:
        return "double"
    return emit.MEMTYPE[emit.LLTYPE[v.dtype.name]]


class DriverPlan(base.Executable):
    """Everything one graph's native call needs (see the module docstring): the executable
    of a graph whose every fusion group lowers."""

    def __init__(self, g, inplace: dict, make_fallback, groups: list | None = None,
                 family=None, profile: bool = False) -> None:
        self.g = g
        self.make_fallback = make_fallback  # the runner's plan as a callable, made when first
        self.fallback = None  # call while another thread holds this plan
        self.lock, self.lock_fallback = threading.Lock(), threading.Lock()
        self.persistable = family is None and not profile  # (compiler/plancache.py)
        self._layout(g, inplace, groups)
        text = self._ir(g, profile)
        self.symbols = external_symbols(text) if self.persistable else ()
        self._load(text, family)
        self.n_groups = len(self.kernels)
        self._runtime()

    # Note (a plan in the plan cache): ``compiler/plancache.py`` pickles a plan with the
    # graph it runs, so a new process that traces the same graph skips the passes and the
    # IR. What is kept is the layout — the graph, the groups, the memory plan, the pointer
    # table's slots, each value's place — and the key of the compiled module in the object
    # cache; restoring loads that module (never compiles it: a module gone from the disk
    # cache makes the restore fail, and the pipeline compiles as if the entry were not
    # there), links the libraries it calls first, and makes the run-time buffers, tables and
    # the generated call again, as __init__ does. Maps keyed by ``id()`` are kept as pairs.
    _KEPT = ("g", "make_fallback", "groups", "kernels", "memory", "arena_bytes",
             "arena_slot", "scalars_slot", "input_slots", "consts", "out_slot", "out_meta",
             "same_output", "collectives", "mpi_slot", "slots", "steps", "guard_values",
             "n_functions", "n_groups", "module_key", "symbols", "persistable")
    _BY_ID = ("where", "producer", "position", "const_outputs")

    def __getstate__(self) -> dict:
        if not self.persistable or self.collectives is not None:
            raise TypeError("a driver plan of a symbolic variant's form, a profiled one or "
                            "one with collectives is not kept in the plan cache")
        state = {k: self.__dict__[k] for k in self._KEPT}
        g = self.g
        objects = {id(v): v for n in g.nodes for v in (n.out, *n.inputs) if isinstance(v, Value)}
        objects.update((id(v), v) for v in (*g.inputs, *g.scalars, *g.outputs))
        objects.update((id(grp), grp) for grp in self.groups)
        for name in self._BY_ID:  # (every key is the id of a value or a group of this plan)
            state[name] = [(objects[k], x) for k, x in self.__dict__[name].items()]
        state["writebacks"] = [(k, i, None if buf is None else (buf.shape, buf.dtype))
                               for k, i, buf in self.writebacks]
        return state

    def __setstate__(self, state: dict) -> None:
        for name in self._BY_ID:
            state[name] = {id(obj): x for obj, x in state[name]}
        self.__dict__.update(state)
        self.fallback = None
        self.lock, self.lock_fallback = threading.Lock(), threading.Lock()
        self.ticks = None
        link(self.symbols)
        compiled = cache.loaded(self.module_key)
        if compiled is None:
            raise LookupError("the plan's compiled module is not in the object cache")
        self.compiled, self.sizes = compiled, None
        self.fn = compiled.cfunc("drv", ctypes.c_int32, ctypes.c_void_p)
        self._runtime()

    def _layout(self, g, inplace: dict, groups) -> None:
        """Where everything lives: the groups that run code, the constants, the memory plan
        (offsets in one arena), the pointer table's slots, each value's place (``where``)
        and the write-backs."""
        groups = fuse(g, inplace) if groups is None else list(groups)
        self.groups = groups  # every fusion group of g, in order (Executable.groups)
        producer = {id(n.out): k for k, n in enumerate(g.nodes)}
        out_ids = {id(v) for v in g.outputs}
        # creation groups: constants, made here by their own primitives (eager's values);
        # movement groups of reshapes only: they alias their (contiguous) source
        made: dict[int, np.ndarray] = {}
        aliases: dict[int, Value] = {}  # id(reshape output) -> the value it relabels
        for grp in groups:
            if grp.kind == "creation":
                made.update(_constants(g, grp))
            elif grp.kind == "movement" and all(
                    traits(g.nodes[i].prim).relabels and id(g.nodes[i].out) not in out_ids
                    for i in grp.nodes):  # (other movement: a copy kernel, see codegen)
                for i in grp.nodes:
                    n = g.nodes[i]
                    src = n.inputs[0]
                    aliases[id(n.out)] = aliases.get(id(src), src) if isinstance(
                        aliases.get(id(src), src), Value) else src
        steps = [0] * len(g.nodes)  # every group's place in the order (the memory plan's
        for t, grp in enumerate(groups):  # clock: views live from their group's step)
            for k in grp.nodes:
                steps[k] = t
        position = {id(grp): t for t, grp in enumerate(groups)}
        groups = [grp for grp in groups if grp.kind != "creation" and not (
            grp.kind == "movement" and all(id(g.nodes[i].out) in aliases for i in grp.nodes))]
        for v in g.outputs:
            if v.weak and id(v) in producer:
                raise NotDrivable("a computed Python number is an output")
        materialised = [v for grp in groups for v in grp.outputs]
        for v in list(aliases.values()):  # a relabelled value needs memory of its own
            if id(v) in producer and id(v) not in {id(x) for x in materialised} and \
                    id(v) not in made:
                materialised.append(v)
        one_pass = {i for grp in groups if grp.kind == "elementwise" for i in grp.nodes}
        one_pass.update(i for grp in groups if grp.kind == "reduce"
                        for i in reduce.in_place_nodes(g, grp))
        one_pass.update(grp.nodes[1] for grp in groups  # (a convolution's input gradient
                        if grp.kind == "window" and summed_gradient(g, grp))  # and its sum:
        #                                                 window.WindowBuilder._sample_params)
        early = {i for grp in groups if grp.kind == "reduce"
                 for i in reduce.early_readers(g, grp)}
        memory = plan_memory(g, materialised, ALIGN, steps=steps, inplace=one_pass.__contains__,
                             into_outputs=False, early=early.__contains__)
        verify_plan(g, memory)  # (independent liveness: no two live buffers share a byte)
        self.memory = memory
        # ------------------------------------------------------------ the pointer table
        slots: list = []  # per table entry: what fills it

        def slot(kind, key) -> int:
            slots.append((kind, key))
            return len(slots) - 1

        weak = [v for v in dict.fromkeys(materialised) if v.weak and id(v) not in out_ids]
        weak_at = {id(v): memory.arena_bytes + 8 * k for k, v in enumerate(weak)}  # (numbers:
        #                                            8 bytes each after the planned buffers)
        self.arena_bytes = memory.arena_bytes + 8 * len(weak)
        self.arena_slot = slot("arena", None)
        self.scalars_slot = slot("scalars", None)
        where: dict[int, tuple] = {}  # id(value) -> ("slot", k) | ("arena", offset)
        #                                           | ("scalar", index)
        self.input_slots = []
        for i, v in enumerate(g.inputs):
            where[id(v)] = ("slot", slot("input", i))
            self.input_slots.append(len(slots) - 1)
        for j, v in enumerate(g.scalars):
            where[id(v)] = ("scalar", j)
        self.consts = []
        self.const_outputs: dict[int, np.ndarray] = {}  # id(value) -> its constant value
        for vid, arr in made.items():  # creation groups' values
            self.consts.append(arr)
            self.const_outputs[vid] = arr
            where[vid] = ("slot", slot("const", len(self.consts) - 1))
        for grp in groups:  # constants a group hands on (full, size_of): made once, here
            for v in codegen.constant_outputs(g, grp):
                arr = np.array(codegen.constant_value(g.nodes[producer[id(v)]]), order="C")
                self.consts.append(arr)
                self.const_outputs[id(v)] = arr
                where[id(v)] = ("slot", slot("const", len(self.consts) - 1))
        for grp in groups:
            for v in grp.inputs:
                if isinstance(v, Value) and v.const is not None and id(v) not in where:
                    arr = np.ascontiguousarray(v.const, dtype=np.float64 if v.weak
                                               else v.dtype.np)
                    self.consts.append(arr)
                    where[id(v)] = ("slot", slot("const", len(self.consts) - 1))
        # graph outputs: fresh arrays (or recycled); write-backs: in place when nothing can
        # fail or read the old value after their kernel, else staged, then copied
        direct = _direct_writes(g, groups, steps, position, producer, inplace, aliases)
        self.writebacks = []  # (output index, input index, staging buffer's (shape, dtype)
        #                        or None: direct; the runtime puts the buffer in its place)
        self.out_slot: dict[int, int] = {}  # output index -> table slot (fresh arrays)
        self.out_meta: dict[int, tuple] = {}
        staged: dict[int, int] = {}  # id(value) -> staging index
        inplace = inplace or {}
        self.same_output: dict[int, int] = {}  # output index -> earlier index, same value
        first: dict[int, int] = {}
        for k, v in enumerate(g.outputs):
            if id(v) in first:
                self.same_output[k] = first[id(v)]
                continue
            first[id(v)] = k
            if id(v) not in producer or id(v) in where:
                continue  # an input or a constant passed through: the runtime has it
            j = producer[id(v)]
            if j in inplace and id(v) not in staged and j in direct:
                staged[id(v)] = len(self.writebacks)
                self.writebacks.append((k, inplace[j], None))
                where[id(v)] = ("slot", self.input_slots[inplace[j]])
            elif j in inplace and id(v) not in staged:
                staged[id(v)] = len(self.writebacks)
                self.writebacks.append((k, inplace[j], (concrete(v.shape), v.dtype.np)))
                where[id(v)] = ("slot", slot("staged", staged[id(v)]))
            elif id(v) not in where:
                self.out_slot[k] = slot("output", k)
                self.out_meta[k] = (concrete(v.shape), v.dtype.np)
                where[id(v)] = ("slot", self.out_slot[k])
        for v in materialised:
            if id(v) in where or id(v) in aliases:
                continue
            if id(v) in weak_at:
                where[id(v)] = ("arena", weak_at[id(v)])
                continue
            if v.id not in memory.offsets:
                raise NotDrivable(f"value {v!r} has no buffer in the memory plan")
            where[id(v)] = ("arena", memory.offsets[v.id])
        for vid, src in aliases.items():  # a reshape: the same memory as its source
            if id(src) not in where:
                raise NotDrivable(f"the source of a reshape, {src!r}, has no buffer")
            where[vid] = where[id(src)]
        self.where = where
        self.collectives = collective.Collectives.of(g)  # (None: the graph communicates not)
        self.mpi_slot = slot("mpi", None) if self.collectives is not None else None
        self.slots, self.kernels = slots, groups  # (the groups that run code, in order)
        self.steps, self.producer, self.position = steps, producer, position

    def _ir(self, g, profile: bool) -> str:
        """The module's IR: the kernels of the groups that run code and ``i32 @drv(ptr
        %tab)`` calling them in order, checking each value guard as soon as its group ran,
        and writing back staged values at the end."""
        groups, slots, where = self.kernels, self.slots, self.where
        steps, producer, position = self.steps, self.producer, self.position
        arena_slot, scalars_slot = self.arena_slot, self.scalars_slot
        kernel_groups = [grp for grp in groups if grp.kind != "collective"]
        text, fns = codegen.module_ir(g, kernel_groups, prefix="dg_d",
                                      inline=len(kernel_groups) <= INLINE_MAX)
        fn_of = {id(grp): f for grp, f in zip(kernel_groups, fns, strict=True)}
        body = ["define i32 @drv(ptr %tab) {", "entry:"]
        for k in range(len(slots)):
            body.append(f"  %s{k}.p = getelementptr inbounds ptr, ptr %tab, i64 {k}")
            body.append(f"  %s{k} = load ptr, ptr %s{k}.p")
        mpi = None  # (the collectives' emitter: backends/llvm/collective.py)
        if self.collectives is not None:
            starts = collective.starts_of(g)
            mpi = collective.Emitter(body, lambda v: pointer(v), f"%s{self.mpi_slot}",
                                     {id(n): k for k, n in enumerate(starts)})
            body += mpi.entry(len(starts))
        arena = f"%s{arena_slot}"
        body.append(f"  %arena = getelementptr inbounds i8, ptr {arena}, i64 0")
        self.ticks = ticks = _Ticks(len(groups)) if profile else None
        if ticks:
            body += ticks.read(len(groups), 0)

        def pointer(v) -> str:
            kind, x = where[id(v)]
            if kind == "slot":
                return f"%s{x}"
            base = "%arena" if kind == "arena" else f"%s{scalars_slot}"
            off = x if kind == "arena" else 8 * x
            name = f"%v{v.id}"
            if name not in declared:
                declared.add(name)
                body.append(f"  {name} = getelementptr inbounds i8, ptr {base}, i64 {off}")
            return name

        declared: set = set()
        guards_after: dict[int, list] = {}
        for gi, gd in enumerate(g.guards):
            p = producer.get(id(gd.value))
            t = steps[p] if p is not None else -1
            guards_after.setdefault(t, []).append(gi)
        self.guard_values = []
        fails = []

        def check(gi: int) -> None:
            gd = g.guards[gi]
            v = gd.value
            if not isinstance(v, Value) or math.prod(v.shape) != 1 or (
                    not v.weak and v.dtype not in (_dt.float32, _dt.float64, _dt.bool_)):
                raise NotDrivable(f"value guard on {v!r}")
            exp = gd.expected
            exp = exp.item() if isinstance(exp, np.ndarray) and exp.size == 1 else exp
            if not isinstance(exp, (bool, int, float)):
                raise NotDrivable("value guard with a non-scalar expected value")
            p = pointer(v)
            ty = _memtype(v)
            x = f"%g{gi}"
            body.append(f"  {x}.v = load {ty}, ptr {p}")
            if ty == "i8":
                body.append(f"  {x}.ok = icmp eq i8 {x}.v, {int(bool(exp))}")
            else:  # as the interpreter compares: the expected number rounded to the dtype
                body.append(f"  {x}.ok = fcmp oeq {ty} {x}.v, {emit.literal(float(exp), ty)}")
            body.append(f"  br i1 {x}.ok, label %g{gi}.pass, label %fail{gi}")
            body.append(f"g{gi}.pass:")
            fails.append(gi)
            self.guard_values.append((gi, v))

        pending = sorted(guards_after.items())  # (step, guards) in order

        def checks_up_to(step: int) -> None:
            while pending and pending[0][0] <= step:
                for gi in pending.pop(0)[1]:
                    check(gi)

        checks_up_to(-1)
        kernel_fails: list[str] = []
        for t, grp in enumerate(groups):
            # guards on values of groups that make no kernel (aliases, constants): before
            # the next kernel, which may write a bound input in place (_direct_writes)
            checks_up_to(position[id(grp)] - 1)
            if grp.kind == "collective":  # MPI calls in the driver itself
                body += ticks.read(t, 0) if ticks else []
                for i in grp.nodes:
                    collective.lower(mpi, g.nodes[i])
                body += ticks.read(t, 1) if ticks else []
                checks_up_to(position[id(grp)])
                continue
            name, layout = fn_of[id(grp)]
            args = [f"ptr {pointer(v)}" for v in layout]
            if grp.kind == "elementwise":
                args.append(f"i64 {math.prod(grp.shape)}")
            if ticks:
                body += ticks.read(t, 0)
            if grp.kind.may_fail:  # an index out of range, or a work buffer malloc did
                #                      not give: stop, the call runs eagerly
                body.append(f"  %st{t} = call i32 @{name}_body({', '.join(args)})")
                body += ticks.read(t, 1) if ticks else []
                body.append(f"  %st{t}.ok = icmp eq i32 %st{t}, 0")
                fail = "index.fail" if grp.kind == "index" else f"k{t}.fail"
                body.append(f"  br i1 %st{t}.ok, label %k{t}.ok, label %{fail}\nk{t}.ok:")
                if grp.kind != "index":  # (its own status: window.ALLOC_FAILED)
                    kernel_fails.append(f"k{t}.fail:\n  ret i32 %st{t}")
            else:
                body.append(f"  call void @{name}_body({', '.join(args)})")
                body += ticks.read(t, 1) if ticks else []
            if mpi is not None:
                mpi.progress()  # (the transfers in flight move on: collective.py)
            checks_up_to(position[id(grp)])
        checks_up_to(len(position))
        for k, input_index, buf in self.writebacks:  # every guard passed: write back
            if buf is None:  # (written in place by its kernel)
                continue
            v = g.outputs[k]
            body.append(f"  call void @llvm.memcpy.p0.p0.i64(ptr %s{self.input_slots[input_index]}"
                        f", ptr {pointer(v)}, i64 {math.prod(v.shape) * v.dtype.itemsize}, "
                        "i1 false)")
        if ticks:
            body += ticks.read(len(groups), 1)
        body.append("  ret i32 0")
        body.append("index.fail:\n  ret i32 -1")
        body += kernel_fails
        for gi in fails:
            body.append(f"fail{gi}:\n  ret i32 {gi + 1}")
        body.append("}")
        text += ("\ndeclare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)\n"
                 + "\n".join(body) + "\n" + (ticks.definitions() if ticks else ""))
        self.n_functions = len({name for name, _ in fns})  # kernels of the same code share
        return text

    def _load(self, text: str, family) -> None:
        """Compile the module (or take its form's template: ``family``), and its driver."""
        if family is None:
            self.module_key = cache.key(text)
            self.compiled, self.sizes = cache.keyed(self.module_key, text), None
        else:  # one symbolic variant's sizes: one module for all of a form (forms.py)
            self.compiled, self.sizes = family.module(text)
            if self.sizes is not None:  # the module's global of numbers: one call of it at
                self.lock = self.compiled.lock  # a time, whichever plan or family calls
        self.ticks = self.ticks.counters(self.compiled) if self.ticks else None
        self.fn = self.compiled.cfunc("drv", ctypes.c_int32, ctypes.c_void_p) \
            if self.sizes is None else \
            self.compiled.cfunc("drv_sized", ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
    def _runtime(self) -> None:
        """What a call uses: the arena, the scalars' buffer, the staging buffers, the
        pointer tables and output blocks, and the generated call (:meth:`_generate`)."""
        g, slots, arena_slot = self.g, self.slots, self.arena_slot
        self.arena = np.zeros(self.arena_bytes + ALIGN, np.uint8)
        self.scalar_buf = np.zeros(max(len(g.scalars), 1), np.float64)
        self.writebacks = [(k, i, None if meta is None else np.empty(*meta))
                           for k, i, meta in self.writebacks]
        self.table = (ctypes.c_void_p * max(len(slots), 1))()
        self.table[arena_slot] = (self.arena.ctypes.data + ALIGN - 1) // ALIGN * ALIGN
        self.arena_base = self.table[arena_slot] - self.arena.ctypes.data
        self.table[self.scalars_slot] = self.scalar_buf.ctypes.data
        if self.collectives is not None:  # (Note [MPI handles at run time] in collective.py)
            self.group = resolve_group(None)
            self.mpi = collective.mpi_table(self.group)
            self.table[self.mpi_slot] = self.mpi.ctypes.data
        for k, (kind, key) in enumerate(slots):
            if kind == "const":
                self.table[k] = self.consts[key].ctypes.data
            elif kind == "staged":
                self.table[k] = self.writebacks[key][2].ctypes.data
        self.last_inputs = [None] * len(g.inputs)
        self.copied: set = set()  # inputs whose table entry is a contiguous copy
        # inputs written in place (direct write-backs) and every input's bytes: a direct
        # target whose memory overlaps another input's (two tensors over one numpy array:
        # guards compare storages, not memory) runs the call on the runner's plan instead,
        # whose write-backs come after every read
        self.direct_targets = {i for _, i, buf in self.writebacks if buf is None}
        self.ranges: list = [None] * len(g.inputs)
        self.overlaps: set = set()  # (input, input) pairs whose bytes overlap
        self.overlapping = [False]
        self.out_keys = list(self.out_slot)  # output index per block position
        self.tables = [self.table] + [type(self.table).from_buffer_copy(self.table)
                                      for _ in range(BLOCKS - 1)]
        self.blocks: list[list] = [[None] * len(self.out_keys) for _ in range(BLOCKS)]
        self.parity = [0]  # the block the next call takes
        self._generate()

    # ------------------------------------------------------------------ a call
    def run(self, inputs: list, scalars: list) -> list:
        """A call (the instance's ``run`` is the generated straight-line function, see
        :meth:`_generate`)."""
        return self.call(inputs, scalars)

    def describe(self) -> str:
        arena = self.memory.arena_bytes  # (a symbolic variant's: a function of the size)
        arena = describe_dim(arena.key) if isinstance(arena, Dim) else arena
        text = f"all {self.n_groups} kernels native, run by one driver call; arena {arena} bytes"
        if self.collectives is not None:
            text += (f"; {self.collectives.count} collective(s) inside, MPI calls of the "
                     f"driver: " + ", ".join(self.collectives.labels))
        return text

    def native_kernels(self) -> tuple[int, int]:
        return self.n_groups, self.n_groups

    def _generate(self) -> None:
        """``self.call(inputs, scalars)``: the run as straight-line code — the inputs whose
        array may change checked by identity, scalars stored, the next block of output
        arrays (each free one kept, each held one replaced), the native call, the result
        list."""
        g = self.g
        ns = {"LAST": self.last_inputs, "SB": self.scalar_buf, "PAR": self.parity,
              "FN": self.fn, "LOCK": self.lock, "REFS": sys.getrefcount, "SELF": self,
              "FRESH": self._fresh_output, "SLOW": self._slow_input}
        if self.collectives is not None:  # (the group it was made for, still the one)
            ns["GROUP"], ns["GROUPS"] = self.group, _groups
            body_head = ["if GROUPS._WORLD is not GROUP: SELF.group_gone()"]
        else:
            body_head = []
        lines = ["def call(inputs, scalars):",
                 "    if not LOCK.acquire(False):  # another thread runs this plan now",
                 "        return SELF.contended(inputs, scalars)",
                 "    try:"]
        body = list(body_head)
        for i in range(len(self.input_slots)):
            body += [f"a = inputs[{i}]",
                     f"if a is not LAST[{i}]: SLOW({i}, a)"]
        if self.direct_targets:  # (see _overlap)
            ns["OVERLAP"] = self.overlapping
            body.append("if OVERLAP[0]: return SELF.staged(inputs, scalars)")
        for j in range(len(g.scalars)):
            body.append(f"SB[{j}] = scalars[{j}]")
        body += ["b = PAR[0]", f"PAR[0] = b + 1 if b < {BLOCKS - 1} else 0",
                 "TABLE = TABLES[b]", "BL = BLOCKS_[b]"]
        ns["TABLES"], ns["BLOCKS_"] = self.tables, self.blocks
        for i, k in enumerate(self.out_keys):  # free: only the block's list and this
            body += [f"o{k} = BL[{i}]",  #        code hold it (FREE_REFS)
                     f"if REFS(o{k}) != {FREE_REFS}: o{k} = FRESH(b, {i})"]
        if self.sizes is None:
            body.append("status = FN(TABLE)")
        else:  # the family's module, with this size's numbers
            ns["SIZES"] = self.sizes.ctypes.data
            body.append("status = FN(TABLE, SIZES)")
        body.append("if status: return SELF.failed(status, inputs, scalars)")
        if self.collectives is not None:  # (ran without the per-collective check)
            ns["ADVANCE"], ns["COUNT"] = advance, self.collectives.count
            body.append("ADVANCE(GROUP, COUNT)")
        if self.writebacks:  # a strided target was given a contiguous copy: the driver
            ns["COPIED"] = self.copied  # wrote into the copy, copy it over the target
            body.append("if COPIED: SELF._copy_back(inputs)")
        result = []
        wb = {k: i for k, i, _ in self.writebacks}
        for k, v in enumerate(g.outputs):
            if k in self.same_output:
                result.append(None)
            elif k in wb:
                result.append(f"inputs[{wb[k]}]")
            elif k in self.out_slot:
                result.append(f"o{k}")
            else:
                ns[f"V{k}"] = v
                result.append(f"SELF._passthrough(V{k}, inputs, scalars)")
        first = {}
        for k, j in self.same_output.items():
            result[k] = None
            first[k] = j
        body.append(f"r = [{', '.join(x or 'None' for x in result)}]")
        for k, j in first.items():
            body.append(f"r[{k}] = r[{j}]")
        body.append("return r")
        lines += [f"        {x}" for x in body]
        lines += ["    finally:", "        LOCK.release()"]
        exec_generated("\n".join(lines), ns)
        self.call = self.run = ns["call"]

    def _slow_input(self, i: int, a) -> None:
        """A different array for input ``i``: refresh its address (contiguous, right dtype)."""
        want = self.g.inputs[i].dtype.np
        if not (a.flags.c_contiguous and a.dtype == want):
            a = np.array(a, dtype=want, order="C")
            self.copied.add(i)
        else:
            self.copied.discard(i)
        address = a.ctypes.data
        for table in self.tables:
            table[self.input_slots[i]] = address
        self.last_inputs[i] = a
        if self.direct_targets:
            self._overlap(i, address, address + a.nbytes)

    def _overlap(self, i: int, lo: int, hi: int) -> None:
        """Input ``i`` now spans bytes [lo, hi): does it overlap a direct target's (or, as a
        target, any other input's)?"""
        self.ranges[i] = (lo, hi)
        self.overlaps = {p for p in self.overlaps if i not in p}
        others = range(len(self.ranges)) if i in self.direct_targets else self.direct_targets
        for j in others:
            r = self.ranges[j]
            if j != i and r is not None and r[0] < hi and lo < r[1]:
                self.overlaps.add((min(i, j), max(i, j)))
        self.overlapping[0] = bool(self.overlaps)

    def _copy_back(self, inputs: list) -> None:
        """Write-back targets that were given contiguous copies (``copied``): the driver
        wrote into the copies; copy them over the targets."""
        for _, i, _ in self.writebacks:
            if i in self.copied:
                np.copyto(inputs[i], self.last_inputs[i])

    def _fresh_output(self, b: int, i: int) -> np.ndarray:
        """A new array for position ``i`` of block ``b`` (the one there is held elsewhere,
        or none was made yet): kept in the block, its address in the block's table."""
        k = self.out_keys[i]
        shape, dtype = self.out_meta[k]
        a = np.empty(shape, dtype)
        self.blocks[b][i] = a
        self.tables[b][self.out_slot[k]] = a.ctypes.data
        return a

    @property
    def pools(self) -> dict:
        """Per output index: the (array, address) pairs its blocks hold now."""
        return {k: [(blk[i], blk[i].ctypes.data) for blk in self.blocks if blk[i] is not None]
                for i, k in enumerate(self.out_keys)}

    def group_gone(self) -> None:
        raise DistBackendError(
            "a compiled step with collectives: the process group it was compiled for is "
            "gone (destroy_process_group); call init_process_group before running it, or "
            "compile the function again")

    def failed(self, status: int, inputs, scalars):
        """The driver stopped before writing anything the caller sees: a window kernel's
        work buffer could not be allocated, or an input gradient's weight is not finite
        (window.NON_FINITE_WEIGHT) — the call runs the runner's plan instead (its
        window nodes numpy steps), so this works for a backward outside the call too — or
        an index was out of range, or a guard failed (raised: the call runs eagerly).

        With collectives inside, every failure is final: the driver may have started some
        of them, which a rerun (eager, or the runner's plan) would start again, out of step
        with the other ranks. It raises ``DistBackendError`` naming the collective (a
        timeout, an MPI error) or the failure, and the process group is broken (the job is
        aborted, as after an eager collective's timeout); the user's tensors are as they
        were (write-backs into them follow every wait, or are staged to the end)."""
        if self.collectives is not None:
            g = self.group
            msg = collective.describe_failure(status, self.collectives, g) or (
                f"a compiled step with {self.collectives.count} collective(s) inside stopped "
                f"on rank {g.rank()} of {g.size()} (status {status}: "
                f"{'an index out of range' if status == -1 else 'a kernel failed'}); its "
                f"collectives may have started, so it cannot run again eagerly: the job "
                f"ends. Run the step eagerly (compiler.disable()) to see the error's details")
            g.broken = f"a compiled step failed (status {status})"
            raise DistBackendError(msg)
        if status in (window.ALLOC_FAILED, window.NON_FINITE_WEIGHT):
            return self.contended(inputs, scalars)
        if status < 0:
            raise IndexError("an index is out of range in a compiled call (running eagerly "
                             "gives the error with its details)")
        gi = status - 1
        raise base.GuardFailed(gi, self.g.guards[gi].expected, self._guard_value(gi))

    def staged(self, inputs, scalars):
        """A call whose direct write-back target overlaps another input's memory: the
        runner's plan, which writes back after every read (as the staged driver would)."""
        return self.contended(inputs, scalars)

    def contended(self, inputs, scalars):
        """Another thread is running this plan (its arena and table are busy): run the
        graph with the runner instead (built on first need)."""
        with self.lock_fallback:
            if self.fallback is None:
                self.fallback = self.make_fallback()
        return self.fallback(inputs, scalars)

    def _passthrough(self, v, inputs, scalars):
        if id(v) in self.const_outputs:  # a fresh copy: the caller may write to it
            return self.const_outputs[id(v)].copy()
        if v in self.g.inputs:
            return inputs[self.g.inputs.index(v)]
        if v in self.g.scalars:
            return scalars[self.g.scalars.index(v)]
        if v.const is not None:
            return np.array(v.const, copy=True)
        raise AssertionError(f"driver: no value for the graph output {v!r}")  # (a bug)

    def _guard_value(self, gi: int):
        v = self.g.guards[gi].value
        kind, x = self.where[id(v)]
        if kind == "arena":
            dt = np.float64 if v.weak else v.dtype.np
            return np.frombuffer(self.arena, dt, 1, self.arena_base + x)[0]
        return "?"


class _Ticks:
    """A profiled driver's clock (``compiler.profile``): the time-stamp counter read into a
    module global before and after each of ``n`` kernels, and at the driver's entry and
    exit (``[start, end]`` pairs, the driver's own last). Only a plan built with
    ``profile=True`` has it: a normal call pays nothing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def read(self, k: int, end: int) -> list:
        """IR storing the counter as pair ``k``'s start (``end`` 0) or end (1)."""
        r = f"%tick.{k}.{end}"
        return [f"  {r} = call i64 @llvm.readcyclecounter()",
                f"  {r}.p = getelementptr inbounds [{2 * self.n + 2} x i64], ptr @dg_ticks, "
                f"i64 0, i64 {2 * k + end}",
                f"  store volatile i64 {r}, ptr {r}.p"]

    def definitions(self) -> str:
        return (f"@dg_ticks = global [{2 * self.n + 2} x i64] zeroinitializer, align 64\n"
                "declare i64 @llvm.readcyclecounter()\n"
                "define ptr @dg_ticks_at() {\nentry:\n  ret ptr @dg_ticks\n}\n")

    def counters(self, compiled) -> np.ndarray:
        """The global as an array, (kernels + 1, 2) int64 (the driver's pair last)."""
        address = compiled.cfunc("dg_ticks_at", ctypes.c_void_p)()
        buf = (ctypes.c_int64 * (2 * self.n + 2)).from_address(address)
        return np.frombuffer(buf, np.int64).reshape(self.n + 1, 2)


def _direct_writes(g, groups, steps, position, producer, inplace, aliases) -> set:
    """The nodes of ``inplace`` (node -> graph input it writes back) whose kernel may write
    straight into the input's array instead of a staging buffer copied over it at the end.

    Note (the transaction rule, in place): a kernel writing a bound input in place is the
    write the user sees. It is allowed only when every value guard is checked and every
    index kernel (which can fail) has run before that kernel — so a call that fails has
    written nothing — and when no kernel after it reads the input's old value. A reader in
    the kernel itself must read element by element in the pass that writes: an elementwise
    node of the input's own shape, in an elementwise kernel, or in a reduction's pass over
    its kept shape when that is the input's shape (a reduction's second pass over the
    reduced shape would read elements the first pass wrote: random programs found it); each
    element is then read before it is written (the kernel's pointers stay ``noalias``: the
    load of element ``i`` feeds the store of element ``i``). W2's Adam step saved a 3 MB
    copy (~190 µs) this way."""
    fails = [steps[producer[id(gd.value)]] for gd in g.guards if id(gd.value) in producer]
    fails += [position[id(grp)] for grp in groups if grp.kind.may_fail]
    if any(id(gd.value) not in producer for gd in g.guards):
        fails.append(-1)  # (a guard on an input: checked first)
    last_fail = max(fails, default=-1)
    readers: dict[int, list] = {}
    for k, n in enumerate(g.nodes):
        for x in n.inputs:
            if isinstance(x, Value):
                readers.setdefault(id(x), []).append(k)
    group_of = {i: grp for grp in groups for i in grp.nodes}  # (not creation or alias groups)

    def squeezed(shape) -> tuple:
        return tuple(x for x in shape if x != 1)

    def one_pass(grp) -> tuple | None:
        """The shape over which kernel ``grp`` reads and writes each element once, in one
        pass: an elementwise kernel's; a reduction's kept shape (its epilogue runs once per
        kept element, after every read of it — while its reduced shape is read twice when
        an epilogue over it needs the result); else None."""
        if grp.kind == "elementwise":
            return squeezed(grp.shape)
        if grp.kind == "reduce":
            return tuple(x for d, x in enumerate(grp.shape) if d not in grp.axes and x != 1)
        return None

    def read_late(v, t: int, pass_shape, aligned: bool) -> bool:
        """Whether a kernel at or after ``t`` reads ``v``'s memory other than element by
        element in kernel ``t``'s one pass (relabellings of it — aliases — read the same
        memory)."""
        for r in readers.get(id(v), []):
            n = g.nodes[r]
            if id(n.out) in aliases:
                if read_late(n.out, t, pass_shape, False):
                    return True
            elif r in group_of and steps[r] >= t and not (
                    aligned and steps[r] == t and n.prim.kind == "elementwise"
                    and pass_shape is not None and squeezed(n.out.shape) == pass_shape):
                return True
        return False

    direct = set()
    for j, i in inplace.items():
        inv = g.inputs[i]
        if j not in group_of or steps[j] <= last_fail:
            continue
        pass_shape = one_pass(group_of[j])
        if pass_shape != squeezed(inv.shape):
            pass_shape = None  # (written outside the kernel's one pass: no reader in it)
        if not read_late(inv, steps[j], pass_shape, True):
            direct.add(j)
    return direct


def _constants(g, grp) -> dict:
    """{id(value): array} for a creation group's outputs, computed by the nodes' own impls
    (only shapes of data outside the group are read, by ``size_of``)."""
    inside = {id(g.nodes[i].out) for i in grp.nodes}
    env: dict[int, np.ndarray] = {}
    for i in grp.nodes:
        n = g.nodes[i]
        args = []
        for x in n.inputs:
            if not isinstance(x, Value):
                args.append(x)
            elif id(x) in env:
                args.append(env[id(x)])
            elif x.const is not None:
                args.append(x.const)
            elif not traits(n.prim).reads_data and id(x) not in inside:
                args.append(np.empty(concrete(x.shape), np.int8))  # (its shape is all
                #                                                      size_of reads)
            else:
                raise NotDrivable(f"a creation group reads {x!r}")
        env[id(n.out)] = np.array(n.prim.impl(*args, **concrete(n.params)), order="C")
    return {id(v): env[id(v)] for v in grp.outputs}


_DECLARED = re.compile(r"^declare [^@\n]*@([\w.$]+)\(", re.M)


def external_symbols(text: str) -> tuple:
    """The functions a module's code calls outside itself and LLVM's intrinsics: what
    :func:`link` provides before a restored plan's module loads."""
    return tuple(sorted({m for m in _DECLARED.findall(text) if not m.startswith("llvm.")}))


def link(symbols) -> None:
    """Make every one of ``symbols`` resolvable before a module calling them loads (a module
    with an unresolved symbol would not load): the GEMM library of its type, the thread
    pool, numpy's BLAS — each made or loaded as the code generator does when it writes a
    call to it — or, for anything else, already in the process (libc's ``malloc``).
    Raises LookupError naming the first that is not."""
    from . import blas, gemm, threads
    gemms = {gemm.name(ty): ty for ty in ("float", "double")}
    for symbol in symbols:
        if llvm.address_of_symbol(symbol):
            continue
        if symbol in gemms:
            gemm.library(gemms[symbol])
        elif symbol in threads.SYMBOLS:
            threads.find()
        else:
            blas.find()
        if not llvm.address_of_symbol(symbol):
            raise LookupError(f"the symbol {symbol} a cached plan's module calls is not here")


def build(g, inplace: dict | None, make_fallback, groups: list | None = None,
          family=None, profile: bool = False) -> DriverPlan:
    """A :class:`DriverPlan` for ``g``, or raise :class:`NotDrivable` (or
    NotImplementedError from the code generator). ``make_fallback()`` makes the runner's
    plan of ``g``, for calls that find the plan busy in another thread. ``family``: the
    :class:`~compiler.backends.llvm.forms.Forms` of a symbolic variant's sizes (``g`` built
    with a ``compiler.dims.Dim``, its IR written inside ``dims.recording()``): the size
    runs its form's template with its own numbers. ``profile``: a module of its own whose
    driver also reads the clock around every kernel (``plan.ticks``, see ``_Ticks``)."""
    return DriverPlan(g, inplace or {}, make_fallback, groups, family, profile)
