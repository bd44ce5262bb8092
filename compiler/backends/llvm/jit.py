"""The JIT layer of the LLVM backend: LLVM IR text in, native function addresses out.

Facts this relies on (measured with llvmlite 0.50 / LLVM 22, see ../shared/LLVM_NOTES.md):
``llvm.initialize()`` raises, so only the native target, asm printer and parser are
initialised; the optimiser is the new pass manager (``create_pipeline_tuning_options`` with
loop and SLP vectorisation on, ``create_pass_builder``); every MCJIT engine takes ownership of
its TargetMachine, so each gets a fresh one; every module gets a unique name (an object cache
keyed by name would otherwise return the wrong object); object code from ``emit_object`` can
be loaded into a fresh engine in milliseconds, which is what the disk cache will use.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import threading
from dataclasses import dataclass, field

import llvmlite.binding as llvm

from . import farm, split, target, worker
from .worker import machine, optimize  # (the pipeline's one definition: workers run it too)

_target = target  # (the module, where a parameter is named target)

_names = itertools.count()

# Note [one thread in LLVM at a time]: llvmlite parses, optimises and links in LLVM's global
# context, which is not thread-safe, and a thread does use it while another does: the GEMM
# kernel compiles on a thread of its own (gemm.prepare) while the main thread loads a module
# from the disk cache, or drops a plan — and an engine's disposal deletes its modules from
# that context. Every use goes through this lock: compiling, loading, symbols, addresses,
# and disposal (Compiled.__del__). It is the innermost lock: nothing taken under it waits
# for another of the compiler's locks.
LLVM = threading.RLock()


def init() -> None:
    """Initialise LLVM's native target once per process."""
    target.init_llvm()


def target_machine(t=None):
    """A fresh TargetMachine for ``t`` (a ``target.Target``; default ``target.current()``:
    the host CPU with its features, or what ``DYNGRAD_TARGET`` names), optimising at O3.
    Fresh each time: an execution engine takes ownership of it."""
    t = target.current() if t is None else t
    return machine(t.cpu, t.features)


def unique_name(prefix: str = "dg") -> str:
    return f"{prefix}_{next(_names)}"


@dataclass(eq=False)
class Compiled:
    """A finalized engine and the addresses of its functions (kept alive together)."""

    engine: object
    module: object
    object_code: bytes | None
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by a call of code
    #   with module state (a template's @dg_sizes, see forms.py): one module, one lock,
    #   whoever shares it (the memory cache hands one module to every equal text)

    def __del__(self) -> None:  # (the engine disposed under the lock: see the Note)
        engine, lock = self.engine, LLVM
        if engine is not None and lock is not None:
            try:
                with lock:
                    engine.close()
            except Exception:  # noqa: BLE001 - (interpreter shutdown: nothing to race)
                pass

    def address(self, name: str) -> int:
        with LLVM:
            addr = self.engine.get_function_address(name)
        if not addr:
            raise KeyError(f"no function {name!r} in the compiled module")
        return addr

    def cfunc(self, name: str, restype, *argtypes):
        """The function as a ctypes callable (a call through it releases the GIL). It holds
        this module: the code stays while the callable lives, whoever else drops the
        module (the memory cache keeps only the recently used ones: cache.py)."""
        fn = ctypes.CFUNCTYPE(restype, *argtypes)(self.address(name))
        fn.module = self
        return fn


LOOP_TOKEN = "!DG_INTERLEAVE"
SCALAR_LOOP = "!DG_SCALAR"
ROLLED_LOOP = "!DG_ROLLED"
INTERLEAVE = 4
_NO_UNROLL = '!{!"llvm.loop.unroll.disable"}'
_LOOP_HINTS = {LOOP_TOKEN: [f'!{{!"llvm.loop.interleave.count", i32 {INTERLEAVE}}}'],
               SCALAR_LOOP: ['!{!"llvm.loop.vectorize.enable", i1 false}', _NO_UNROLL],
               ROLLED_LOOP: [_NO_UNROLL]}


def pipeline() -> str:
    """How a module's text becomes code besides the text itself — this module's source: the
    passes, the loop hints, the target machine's options; part of the disk cache's key."""
    if not _pipeline:
        import hashlib
        from pathlib import Path
        h = hashlib.sha256()
        for f in (__file__, worker.__file__, split.__file__, farm.__file__):  # (the pass
            #                        pipeline is worker.py's; the parts, split and farm's)
            h.update(Path(f).read_bytes())
        _pipeline.append(h.hexdigest()[:16])
    return _pipeline[0]


_pipeline: list = []


def number_loop_metadata(ir_text: str) -> str:
    """The IR with each loop mark on a back edge made a loop ID of its own: ``!DG_INTERLEAVE``
    (codegen's) asks for ``INTERLEAVE``-fold interleaving; ``!DG_SCALAR`` for no
    vectorisation and no unrolling, ``!DG_ROLLED`` for no unrolling (gemm's loops, written
    with explicit vectors: unrolling them gained nothing and cost a quarter of the module's
    compile time) — LLVM needs a distinct numbered node per loop; kernels write the marks so
    that equal kernels stay equal text."""
    marks = [m for m in _LOOP_HINTS if m in ir_text]
    if not marks:
        return ir_text
    base = 1 + max((int(m) for m in re.findall(r"!(\d+)\b", ir_text)), default=-1)
    nodes = list(dict.fromkeys(h for m in marks for h in _LOOP_HINTS[m]))
    node = {h: base + k for k, h in enumerate(nodes)}
    defs = [f"!{node[h]} = {h}" for h in nodes]
    out, n = [], base + len(nodes)
    for piece in re.split(f"({'|'.join(map(re.escape, marks))})", ir_text):
        if piece in _LOOP_HINTS:
            out.append(f"!{n}")
            refs = "".join(f", !{node[h]}" for h in _LOOP_HINTS[piece])
            defs.append(f"!{n} = distinct !{{!{n}{refs}}}")
            n += 1
        else:
            out.append(piece)
    return "".join(out) + "\n" + "\n".join(defs) + "\n"


def compile_ir(ir_text: str, *, name: str | None = None, keep_object: bool = False,
               target=None) -> Compiled:
    """Parse, verify, optimise and JIT-compile LLVM IR text (for ``target``, default
    ``target.current()``)."""
    with LLVM:
        return _compile_ir(ir_text, name, keep_object, target)


def add_symbol(name: str, address: int) -> None:
    """Make ``address`` the symbol ``name`` for modules compiled from now on."""
    with LLVM:
        llvm.add_symbol(name, address)


def _compile_ir(ir_text: str, name, keep_object: bool, target) -> Compiled:
    init()
    t = _target.current() if target is None else target
    objects = farm.compile_parts(ir_text, t.cpu, t.features, number_loop_metadata)
    if objects is not None:  # a large module compiled in parts at once (farm.py)
        compiled = load_object(farm.pack(objects), t)
        if not keep_object:
            compiled.object_code = None
        return compiled
    mod = llvm.parse_assembly(number_loop_metadata(ir_text))
    mod.name = name or unique_name()
    mod.verify()
    tm = target_machine(target)
    optimize(mod, tm)
    if keep_object:  # code generated once: the engine loads the very object that is kept
        return load_object(tm.emit_object(mod), target)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return Compiled(engine, mod, None)


def load_object(object_code: bytes, target=None) -> Compiled:
    """A fresh engine running previously emitted object code (no LLVM optimisation or code
    generation: the disk cache's fast path)."""
    with LLVM:
        return _load_object(object_code, target)


def _load_object(object_code: bytes, target) -> Compiled:
    init()
    empty = llvm.parse_assembly("")
    empty.name = unique_name("obj")
    engine = llvm.create_mcjit_compiler(empty, target_machine(target))
    for obj in farm.unpack(object_code):  # (a module compiled in parts: one engine links
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))  # their objects)
    engine.finalize_object()
    return Compiled(engine, empty, object_code)


def assembly(ir_text: str, target=None) -> str:
    """The assembly of optimised IR for ``target`` (default ``target.current()``; tests
    check that kernels vectorise, ``target._probe`` what a named CPU has)."""
    with LLVM:
        init()
        mod = llvm.parse_assembly(number_loop_metadata(ir_text))
        mod.name = unique_name("asm")
        mod.verify()
        tm = target_machine(target)
        optimize(mod, tm)
        return tm.emit_assembly(mod)
