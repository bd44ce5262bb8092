"""LLVM's optimisation pipeline, and a compile worker process that runs it.

This file is also run as a script (``python worker.py``: see ``farm.py``), so it imports
nothing but the standard library and llvmlite — a worker starts in a few tens of
milliseconds, without numpy or the compiler. :func:`optimize` is the one definition of the
pipeline: ``jit.py`` uses it for the modules it compiles itself, the workers for theirs, so
a module's part compiled in a worker is the code the whole module compiled in one process
would hold.

The protocol (stdin to stdout, one job at a time): a job is four length-prefixed byte
strings — its number, the target CPU's name, its feature string, the module's IR text (its
loop metadata already numbered) — and the answer is a status byte (``b"o"``: object code
follows; ``b"e"``: an error message follows), the job's number and the payload, both
length-prefixed (the parent checks the number: an answer can never be taken for another
job's). End of input ends the worker, so a worker never outlives the process that started
it for long.
"""

from __future__ import annotations

import struct
import sys

import llvmlite.binding as llvm

LENGTH = struct.Struct("<Q")


def optimize(module, tm) -> None:
    """Run LLVM's default O3 pipeline with loop and SLP vectorisation, unrolling and
    interleaving on."""
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pto.loop_interleaving = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(module, pb)


def machine(cpu: str, features: str):
    """A fresh TargetMachine for the host triple at O3, for JIT loading (an engine takes
    ownership of it, so each module gets its own)."""
    return llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=3, jit=True)


def object_code(ir_text: str, cpu: str, features: str) -> bytes:
    """Parse, verify, optimise and emit ``ir_text`` as object code."""
    mod = llvm.parse_assembly(ir_text)
    mod.verify()
    tm = machine(cpu, features)
    optimize(mod, tm)
    return tm.emit_object(mod)


def read_exactly(stream, n: int) -> bytes | None:
    """``n`` bytes from ``stream``, or None at end of input."""
    chunks, left = [], n
    while left:
        b = stream.read(left)
        if not b:
            return None
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_string(stream) -> bytes | None:
    head = read_exactly(stream, LENGTH.size)
    if head is None:
        return None
    return read_exactly(stream, LENGTH.unpack(head)[0])


def write_string(stream, data: bytes) -> None:
    stream.write(LENGTH.pack(len(data)))
    stream.write(data)


def serve(inp, out) -> None:
    """Answer jobs from ``inp`` on ``out`` until ``inp`` ends."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    while True:
        job = [read_string(inp) for _ in range(4)]
        if any(part is None for part in job):
            return
        number, cpu, features, text = (part.decode() for part in job)
        try:
            status, payload = b"o", object_code(text, cpu, features)
        except Exception as exc:  # (reported to the parent, which compiles it itself)
            status, payload = b"e", f"{type(exc).__name__}: {exc}".encode()
        out.write(status)
        write_string(out, number.encode())
        write_string(out, payload)
        out.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
