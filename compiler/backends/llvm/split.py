"""A module's IR text cut into parts that LLVM compiles independently (``farm.py`` compiles
them at once, one per core).

A part is a module of its own. The module's *roots* — its functions with external linkage:
the kernels' entry points and the driver — are dealt out to the parts, heaviest first, each
to the lightest part so far (by lines of IR). An internal function lives in the part of its
*home*: of the roots that reach it, the one reaching the least code (a kernel's body is
reached by its kernel's entry and by the driver, which calls every body: its home is the
kernel). Each part then holds:

- every top-level line that defines nothing (declarations of intrinsics and runtime
  functions, attributes, type definitions);
- its roots and the internal functions homed with them;
- a copy of every internal constant, always-inlined function and short function
  (``COPY_LINES``) it uses (internal symbols never clash between objects);
- a declaration of every function of another part it calls; such a function, if internal,
  loses its internal linkage in its own part. The objects are loaded into one engine, which
  links them.

The code of every function is what the whole module's compile makes of it — the same IR
through the same pipeline; the cut changes only which calls cross an object boundary (calls
to ``noinline`` bodies, never inlined anyway), and floating-point code is never
reassociated, so the results are the same bits (a test compares them). A module with
mutable internal state (``@x = internal global``: a template's ``@dg_sizes``, forms.py) is
not cut — a copy per part would split its state — and neither is one whose text this module
does not recognise: :func:`split` returns None and the module is compiled whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SYMBOL = re.compile(r"@([A-Za-z_.$][\w.$]*)")
_DEFINE = re.compile(r"define\s+(?P<head>[^@]*)@(?P<name>[A-Za-z_.$][\w.$]*)\(")
_GLOBAL = re.compile(r"@(?P<name>[A-Za-z_.$][\w.$]*)\s*=\s*(?P<rest>.*)")


@dataclass(eq=False)
class _Item:
    """A top-level definition: a function (its lines, ``{`` to ``}``) or a global."""

    name: str
    lines: list
    internal: bool
    function: bool
    refs: set = field(default_factory=set)  # names of the definitions it mentions


def _declaration(define_line: str) -> str | None:
    """``declare`` for a function defined by ``define_line``: its return type, name and
    parameter list; None when the line is not one this module reads."""
    m = _DEFINE.match(define_line)
    if m is None:
        return None
    start = m.end() - 1
    depth = 0
    for k in range(start, len(define_line)):
        ch = define_line[k]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return f"declare {m.group('head')}@{m.group('name')}" \
                       f"{define_line[start:k + 1]}"
    return None


def _parse(text: str) -> tuple[list, list] | None:
    """(header lines, definitions) of ``text``, or None if it holds something not cut."""
    header, items = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("define "):
            m = _DEFINE.match(line)
            if m is None:
                return None
            j = i
            while j < len(lines) and lines[j] != "}":
                j += 1
            if j == len(lines):
                return None
            items.append(_Item(m.group("name"), lines[i:j + 1],
                               "internal" in m.group("head").split() or
                               "private" in m.group("head").split(), True))
            i = j + 1
            continue
        g = _GLOBAL.match(line)
        if g is not None:
            words = g.group("rest").split()
            if not words or words[0] not in ("internal", "private") or "constant" not in words:
                return None  # mutable or visible state: not cut
            items.append(_Item(g.group("name"), [line], True, False))
        elif line.startswith("@"):
            return None
        else:
            header.append(line)
        i += 1
    names = {it.name for it in items}
    for it in items:
        body = "\n".join(it.lines[1:] if it.function else [it.lines[0].split("=", 1)[1]])
        it.refs = {s for s in _SYMBOL.findall(body) if s in names and s != it.name}
    return header, items


def split(text: str, parts: int) -> list[str] | None:
    """``text`` as ``parts`` module texts that together define its functions (fewer when it
    has fewer roots), or None when it is not cut (see the module docstring)."""
    if parts < 2:
        return None
    parsed = _parse(text)
    if parsed is None:
        return None
    header, items = parsed
    by_name = {it.name: it for it in items}
    roots = [it for it in items if it.function and not it.internal]
    if len(roots) < 2:
        return None
    reach = {}
    for r in roots:  # the internal definitions each root reaches
        seen, todo = set(), [r.name]
        while todo:
            for x in by_name[todo.pop()].refs:
                if x not in seen and by_name[x].internal:
                    seen.add(x)
                    todo.append(x)
        reach[r.name] = seen
    # an internal function's home: the root reaching it with the least code (a kernel's
    # entry, not the driver that calls every kernel's body)
    home: dict[str, str] = {}
    for r in sorted(roots, key=lambda r: (sum(len(by_name[x].lines) for x in reach[r.name]),
                                          r.name), reverse=True):
        for x in reach[r.name]:
            home[x] = r.name
    weight = {r.name: len(r.lines) for r in roots}
    for x, r in home.items():
        if not _copied(by_name[x]):
            weight[r] += len(by_name[x].lines)
    bins: list[list] = [[] for _ in range(min(parts, len(roots)))]
    load = [0] * len(bins)
    part_of: dict[str, int] = {}
    for r in sorted(roots, key=lambda r: (-weight[r.name], r.name)):
        k = load.index(min(load))
        bins[k].append(r.name)
        load[k] += weight[r.name]
        part_of[r.name] = k
    for x, r in home.items():
        part_of[x] = part_of[r]
    texts, exported, declared = [], set(), []
    for k in range(len(bins)):
        mine: set = set()
        outside: set = set()  # another part's functions this one calls
        todo = [n for n in part_of if part_of[n] == k]
        while todo:
            n = todo.pop()
            if n in mine:
                continue
            mine.add(n)
            for x in by_name[n].refs:
                it = by_name[x]
                if part_of.get(x, k) == k or _copied(it):
                    todo.append(x)
                else:
                    outside.add(x)
        exported |= {x for x in outside if by_name[x].internal}
        declared.append((mine, outside))
    for k, (mine, outside) in enumerate(declared):
        decls = []
        for x in sorted(outside):
            d = _declaration(_exported(by_name[x].lines[0]))
            if d is None:
                return None
            decls.append(d)
        body = []
        for it in items:
            if it.name not in mine:
                continue
            if it.name in exported and part_of[it.name] == k:  # defined here, called there
                body.append(_exported(it.lines[0]))
                body.extend(it.lines[1:])
            else:
                body.extend(it.lines)
        texts.append("\n".join(header + decls + body) + "\n")
    return texts


def _copied(it: _Item) -> bool:
    """Whether a definition is copied into every part that uses it rather than called
    across parts: constants, functions meant to be inlined, and small functions — never a
    ``noinline`` one (a kernel's body: copied with it, its own callees would be called
    across parts where the whole module inlines them)."""
    head = it.lines[0]
    return not it.function or (it.internal and (
        "alwaysinline" in head or (len(it.lines) <= COPY_LINES and "noinline" not in head)))


COPY_LINES = 40  # an internal function this short is compiled again where used


def _exported(define_line: str) -> str:
    """A definition's first line with its internal linkage removed (it is called from
    another part)."""
    return re.sub(r"^define\s+(internal|private)\s+", "define ", define_line)
