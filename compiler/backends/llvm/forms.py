"""One native module for the sizes of a symbolic variant: templates made by code generation.

A symbolic variant's graph is built, for each size, with its symbolic dimension a
:class:`compiler.dims.Dim`, and its IR is written inside :func:`compiler.dims.recording`:
every size-dependent number — a trip count, a stride, an arena offset, a byte count, a
``1/n`` — is written as a placeholder ``%dgz.<slot>.<number>`` (see ``compiler/dims.py``).
:func:`template` turns such a text into the module's *template*: each placeholder becomes a
register loaded, in its function's entry block, from a module global ``@dg_sizes`` — as the
LLVM type its instruction takes it in — and ``i32 @drv_sized(ptr %tab, ptr %sizes)`` copies a
size's numbers into the global and runs the driver (a hybrid plan's kernels' module, which
has no driver, gets ``void @dg_set_sizes(ptr %sizes)``, called before its kernels).

Sizes whose code made the same decisions write the same template, so the module cache
(``cache.py``, keyed by the text) compiles it once and every such size runs it with its own
numbers. That is sound by construction: a size's template run with the numbers its own
placeholders carried is the program code generation wrote for that size. Sizes whose code
differs (a product that crosses to the blocked kernel, a loop that goes parallel) write
another template: a *form* of their own, compiled once for all of its sizes.

A placeholder where LLVM needs a constant (a type's element count, an alignment, a vector
constant, an intrinsic's argument, a global) raises :class:`Untemplatable`; the caller then
writes the size's IR with its numbers (``compiler.api.Variant``): a module of its own.

The sizes running a template share its global, so they share the module's lock
(``jit.Compiled.lock``): one call of that native code at a time. The lock belongs to the
module: two functions of the same code (two models, two closures) write the same template,
and the memory cache gives both the one module.
"""

from __future__ import annotations

import re
import threading

import numpy as np

from ... import dims
from ..base import Untemplatable
from . import cache

PLACEHOLDER = re.compile(r"%dgz\.(\d+)\.(\w+)")
_TYPE = re.compile(r"(?<![%@\w.])(i1|i8|i16|i32|i64|float|double)(?![\w.])")
_BITS = {"i8": 8, "i16": 16, "i32": 32, "i64": 64}


def _type_at(line: str, start: int, end: int) -> str:
    """The LLVM type a placeholder at ``start`` of an instruction line is read as (the last
    type named before it on the line), or raise Untemplatable where a run-time value may not
    stand."""
    before = line[:start]
    if not line.startswith("  ") or re.search(r"\balign\s*$", before) or \
            re.match(r"\s*x\s", line[end:]) or before.count("<") > before.count(">") \
            or "switch" in before or (
                "@llvm." in before and "@llvm.memcpy" not in before and
                "@llvm.memset" not in before):
        raise Untemplatable(f"a size where LLVM needs a constant: {line.strip()[:80]}")
    types = _TYPE.findall(before)
    if not types or types[-1] == "i1":
        raise Untemplatable(f"a size of no number type: {line.strip()[:80]}")
    return types[-1]


def template(text: str) -> tuple[str, list[tuple[int, str]]]:
    """(template text, its ``@dg_sizes`` entries as (slot, type)) of an IR text with
    placeholders (see the module docstring); raises Untemplatable."""
    entries: dict[tuple[int, str], int] = {}
    lines = text.split("\n")
    out: list[str] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.startswith("define "):
            if PLACEHOLDER.search(line.split(";", 1)[0]):
                raise Untemplatable(f"a size outside a function: {line.strip()[:80]}")
            out.append(PLACEHOLDER.sub("?", line))  # (in a comment)
            k += 1
            continue
        end = k
        while not lines[end].startswith("}"):
            end += 1
        used: dict[tuple[int, str], int] = {}
        body = []
        for b in lines[k + 1:end]:
            code, sep, comment = b.partition(";")
            parts, last = [], 0
            for m in PLACEHOLDER.finditer(code):
                ty = _type_at(code, m.start(), m.end())
                key = (int(m.group(1)), ty)
                used[key] = entries.setdefault(key, len(entries))
                parts += [code[last:m.start()], f"%dgz.{key[0]}.{ty}"]
                last = m.end()
            body.append("".join(parts) + code[last:] + sep + PLACEHOLDER.sub("?", comment))
        loads = []
        for (slot, ty), index in sorted(used.items(), key=lambda e: e[1]):
            r = f"%dgz.{slot}.{ty}"
            loads += [f"  {r}.p = getelementptr inbounds i64, ptr @dg_sizes, i64 {index}",
                      f"  {r} = load {ty}, ptr {r}.p"]
        at = 1 if body and body[0].rstrip().endswith(":") else 0
        out.append(line)
        out += body[:at] + loads + body[at:]
        k = end
    if not entries:
        return text, []
    n = len(entries)
    copy = (f"  call void @llvm.memcpy.p0.p0.i64(ptr @dg_sizes, ptr %sizes, i64 {8 * n}, "
            "i1 false)\n")
    out.append(f"@dg_sizes = internal global [{n} x i64] zeroinitializer, align 8")
    if "declare void @llvm.memcpy.p0.p0.i64(" not in text:
        out.append("declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
    out.append("define void @dg_set_sizes(ptr %sizes) {\nentry:\n" + copy + "  ret void\n}")
    if re.search(r"^define i32 @drv\(", text, re.M):
        out.append("define i32 @drv_sized(ptr %tab, ptr %sizes) {\nentry:\n" + copy
                   + "  %st = call i32 @drv(ptr %tab)\n  ret i32 %st\n}")
    return "\n".join(out) + "\n", sorted(entries, key=entries.get)


def encode(value, ty: str) -> int:
    """A number as the int64 its ``@dg_sizes`` entry holds for a load of type ``ty``: an
    integer itself (in range of ``ty``), a float's bits (float32 bits in the low half)."""
    if ty in _BITS:
        if isinstance(value, float) or not -(1 << (_BITS[ty] - 1)) <= value < 1 << (_BITS[ty] - 1):
            raise Untemplatable(f"the size {value!r} read as {ty}")
        return int(value)
    if ty == "float":
        return int(np.float32(value).view(np.uint32))
    return int(np.float64(value).view(np.int64))


class Forms:
    """The templates one symbolic variant's sizes have run (one per part: the forward, the
    backward outside): how many sizes each served, and how many sizes were compiled on their
    own — what ``explain`` reports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served: dict[str, int] = {}  # template text -> sizes it served
        self.own = 0  # sizes whose IR could not be a template

    def module(self, text: str):
        """(compiled module, numbers or None) for a size's IR written inside
        ``dims.recording()``: its template and this size's numbers (call ``drv_sized`` /
        ``dg_set_sizes`` with them), or the text's own module when nothing in it depends on
        the size. Raises Untemplatable."""
        rec = dims.current()
        t, entries = template(text)
        if not entries or rec is None:
            return cache.load_or_compile(text), None
        numbers = np.array([encode(rec.numbers[slot], ty) for slot, ty in entries], np.int64)
        try:
            compiled = cache.load_or_compile(t)
        except RuntimeError as exc:  # (LLVM refused it: a number it needs constant after all)
            raise Untemplatable(str(exc)) from exc
        with self._lock:
            self.served[t] = self.served.get(t, 0) + 1
        return compiled, numbers

    def compiled_alone(self) -> None:
        """Count a size whose IR could not be a template (compiled with its numbers)."""
        with self._lock:
            self.own += 1

    @property
    def shared(self) -> int:
        """Sizes served by a template."""
        return sum(self.served.values())

    @property
    def templates(self) -> int:
        return len(self.served)
