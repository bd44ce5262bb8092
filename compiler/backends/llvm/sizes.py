"""One native module for every size of a symbolic dimension.

A variant made symbolic (``compiler/symbolic.py``) gets a graph, a memory plan and a driver
per concrete size, cheaply, in Python. Their LLVM IR texts differ only in numbers — trip
counts, strides, arena offsets, BLAS arguments — where the code generator made the same
choices at both sizes (the same kernels, vector widths, loop forms and paths). A
:class:`Family` splits each size's text into its *skeleton* (the text with every numeric
literal taken out) and its literals; sizes with the same skeleton are one *form*. The literal
positions whose numbers differ between a form's sizes become run-time values: each such
position in a function reads its slot of a module global ``@dg_sizes`` (loaded once, in the
function's entry block) instead of the literal, and ``i32 @drv_sized(ptr %tab, ptr %sizes)``
copies a size's numbers into the global and runs the driver (a hybrid plan's kernels' module,
which has no driver, gets ``void @dg_set_sizes(ptr %sizes)``, called before its kernels).
That *template* is compiled once (and cached on disk like any module); every size of the
form runs it with its own numbers — read from its own IR text, so nothing is extrapolated:
the template computes at that size exactly what the size's own text would, bit for bit. A
new size costs only the Python that writes its IR.

Which numbers vary is learnt from *probes*: when a form's first size arrives, the family asks
``near()`` (set by the caller) for graphs at nearby sizes and compares their texts, so the
first size already runs a template. A probe is never run; one of another form teaches
nothing. A later size varying a number the template kept constant gets a wider template
(plans already made keep theirs).

A number that varies where LLVM needs a constant (a type's element count, an alignment, a
vector constant, an intrinsic's argument) keeps the sizes apart: such sizes are compiled on
their own, as is a size of a new form once ``FORMS`` forms exist, and so is every size if
LLVM refuses the template.

The sizes running a template share its global, so they share the module's lock
(``jit.Compiled.lock``): one call of that native code at a time, as for one plan. The lock
belongs to the module, not to the family: two functions of the same code (two models, two
closures) make the same template text, and the memory cache gives both the one module.
"""

from __future__ import annotations

import re
import struct
import threading

import numpy as np

from . import cache

# a numeric literal: not part of a name (%t12, @dg_d3, !7, #0, i64, label k3.ok)
LITERAL = re.compile(r"""(?<![\w%@!#.$"\-])(0x[0-9A-Fa-f]+|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"""
                     r"""(?![\w.])""")  # (hex: a float's bits, never signed)
_TYPE = re.compile(r"(?<![%@\w.])(i8|i16|i32|i64|float|double)(?![\w.])")
_INTS = ("i8", "i16", "i32", "i64")


def split(text: str) -> tuple[str, list[str]]:
    """(skeleton, literals): the text with each numeric literal replaced by a NUL, and the
    literals in order."""
    parts = LITERAL.split(text)
    return "\0".join(parts[0::2]), parts[1::2]


def literal_type(parts: list[str], k: int) -> str | None:
    """The LLVM type of literal ``k`` (``parts`` from ``LITERAL.split``) when it may be
    replaced by a run-time value of that type, else None: it must be an operand of an
    instruction inside a function (an indented line), not a type's element count (``N x``),
    an alignment, part of a vector constant (``<...>``), or an argument of an intrinsic
    other than memcpy's length."""
    i = 2 * k + 1
    after = parts[i + 1]
    if re.match(r"\s*x\s", after):
        return None
    before, j = [], i - 1
    while j >= 0:  # the line up to the literal (earlier literals on it included)
        before.append(parts[j])
        if "\n" in parts[j]:
            break
        j -= 1
    line = "".join(reversed(before)).rsplit("\n", 1)[-1]
    if not line.startswith("  ") or re.search(r"\balign\s*$", line):
        return None
    if line.count("<") > line.count(">") or ("switch" in line) or (
            "@llvm." in line and "@llvm.memcpy" not in line and "@llvm.memset" not in line):
        return None
    types = _TYPE.findall(line)
    if not types:
        return None
    ty = types[-1]
    value = parts[i]
    is_int = re.fullmatch(r"-?\d+", value) is not None
    if (ty in _INTS) != is_int:
        return None
    return ty


def encode(value: str, ty: str) -> int:
    """A literal as the int64 its slot holds: an integer itself; a float's bits (float32
    bits in the low half: the slot is read as a ``float`` there)."""
    if ty in _INTS:
        return int(value)
    x = struct.unpack("<d", struct.pack("<Q", int(value, 16)))[0] \
        if value.lower().startswith("0x") else float(value)
    if ty == "float":
        return int(np.float32(x).view(np.uint32))
    return int(np.float64(x).view(np.int64))


def template(text: str, positions: list[int], types: dict[int, str]) -> str:
    """The module of ``text`` with the literals at ``positions`` read from ``@dg_sizes``
    (slot s for the s-th position), ``@dg_set_sizes`` and, for a driver, ``@drv_sized``."""
    parts = LITERAL.split(text)
    slot = {p: s for s, p in enumerate(positions)}
    for p, s in slot.items():
        parts[2 * p + 1] = f"%dgz.{s}"
    lines = "".join(parts).split("\n")
    out: list[str] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.startswith("define "):
            out.append(line)
            k += 1
            continue
        end = k
        while not lines[end].startswith("}"):
            end += 1
        body = lines[k + 1:end]
        used = sorted({int(m) for m in re.findall(r"%dgz\.(\d+)\b", "\n".join(body))})
        loads = []
        for s in used:
            ty = types[positions[s]]
            loads.append(f"  %dgz.{s}.p = getelementptr inbounds i64, ptr @dg_sizes, i64 {s}")
            loads.append(f"  %dgz.{s} = load {ty}, ptr %dgz.{s}.p")
        at = 1 if body and body[0].rstrip().endswith(":") else 0
        out.append(line)
        out += body[:at] + loads + body[at:]
        k = end
    n = max(len(positions), 1)
    copy = (f"  call void @llvm.memcpy.p0.p0.i64(ptr @dg_sizes, ptr %sizes, i64 {8 * n}, "
            "i1 false)\n")
    out.append(f"@dg_sizes = internal global [{n} x i64] zeroinitializer, align 8")
    if "declare void @llvm.memcpy.p0.p0.i64(" not in text:
        out.append("declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)")
    out.append("define void @dg_set_sizes(ptr %sizes) {\nentry:\n" + copy + "  ret void\n}")
    if re.search(r"^define i32 @drv\(", text, re.M):
        out.append("define i32 @drv_sized(ptr %tab, ptr %sizes) {\nentry:\n" + copy
                   + "  %st = call i32 @drv(ptr %tab)\n  ret i32 %st\n}")
    return "\n".join(out) + "\n"


class _Form:
    """The sizes whose texts share one skeleton: the first one's literals, the lifted
    positions and their template."""

    def __init__(self, values: list[str]) -> None:
        self.first = values
        self.positions: list[int] = []  # lifted literal positions (slot order)
        self.types: dict[int, str] = {}
        self.compiled = None  # the template module, once two sizes made one


class Family:
    """The driver modules of one symbolic variant's sizes (see the module docstring). Sizes
    whose code takes another form (another skeleton: a product crossing from inline loops to
    the blocked kernel) start a form of their own, which the sizes of that form share in
    turn."""

    FORMS = 8  # skeletons kept per family (beyond, a size of a new form compiles alone)

    def __init__(self, inplace: dict | None = None) -> None:
        self._build = threading.Lock()
        self.inplace = inplace or {}
        self.near = None  # () -> graphs at other sizes near the one being planned (probes)
        self.forms: dict[str, _Form] = {}
        self.shared = 0  # sizes served by a template
        self.own = 0  # sizes compiled on their own
        self.templates = 0  # templates compiled

    @property
    def positions(self) -> list[int]:
        """The run-time numbers of the family's templates, all forms together."""
        return [p for f in self.forms.values() for p in f.positions]

    def module(self, text: str):
        """(compiled module, size numbers or None) for a size's driver text: a template
        with the numbers for its slots (call ``drv_sized``), or the text's own module (call
        ``drv``)."""
        skeleton, values = split(text)
        with self._build:
            form = self.forms.get(skeleton)
            differ = []
            if form is None and len(self.forms) < self.FORMS:
                form = self.forms[skeleton] = _Form(values)
                differ = self._probe(skeleton, values)
            elif form is not None:
                differ = [k for k, (a, b) in enumerate(zip(form.first, values)) if a != b]
            if form is not None:
                if differ and not set(differ) <= set(form.positions):
                    self._retemplate(form, text, differ)
                if form.compiled is not None and set(differ) <= set(form.positions):
                    self.shared += 1  # (differ empty: a size met again, or the first)
                    numbers = np.array([encode(values[p], form.types[p])
                                        for p in form.positions], np.int64)
                    return form.compiled, numbers
            self.own += 1
        return cache.load_or_compile(text), None

    def _probe(self, skeleton: str, values: list[str]) -> list[int]:
        """The literal positions that differ at the probe sizes (``near``) whose code has
        this form: lifted at once, so that the form's first size already runs a template
        (one LLVM compile for the form, not one for its first size and one per number that
        first varies later). Probes are only read for which numbers vary — never run — so
        a probe of a wrong shape costs a template a run-time number too many at worst."""
        from . import tune
        from .driver import module_text
        differ: set[int] = set()
        for g in (self.near() if self.near is not None else ()):
            try:
                with tune.guessing():  # (no timing of products that may never run)
                    text = module_text(g, self.inplace)
            except Exception:  # noqa: BLE001 - a probe that fails teaches nothing
                continue
            if text is None:
                continue
            sk, vals = split(text)
            if sk == skeleton:
                differ |= {k for k, (a, b) in enumerate(zip(values, vals)) if a != b}
        return sorted(differ)

    def _retemplate(self, form: _Form, text: str, differ: list[int]) -> None:
        """A template lifting ``differ`` (and what the form's last one lifted), if every one
        of those literals can be a run-time value."""
        positions = sorted(set(differ) | set(form.positions))
        parts = LITERAL.split(text)
        types = {}
        for p in positions:
            ty = literal_type(parts, p)
            if ty is None:
                return
            types[p] = ty
        try:
            compiled = cache.load_or_compile(template(text, positions, types))
        except RuntimeError:  # LLVM refused it (a number it needs constant after all):
            return            # the sizes compile on their own
        form.compiled, form.positions, form.types = compiled, positions, types
        self.templates += 1
