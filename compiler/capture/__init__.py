"""The capture front end: the tracing call runs through a bytecode interpreter that knows
where every Python value came from (see DESIGN.md, "Capture and guards").

``run(tracer, fn, args, kwargs)`` calls ``fn`` as the tracing call — the tracer records its
tensor operations as when it runs natively — and returns its result and the
:class:`Capture`: the checks on the sources the call read (``guard_lines`` turns them into
lines of the variant's guard function), the side effects it made on Python state, and the
reason the trace cannot be used, if any.

Understood CPython versions: 3.11, 3.12 and 3.13 (``SUPPORTED``). On any other, ``compile``
warns once at decoration time and the function runs eagerly (strict mode raises).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from dyngrad.size import Size

from ..generated import eval_generated
from .checks import Check
from .escape import Watchdog
from .frame import PY, SUPPORTED, Raised  # noqa: F401 - (PY: for messages)
from .session import Capture, Effect
from .sources import ArgTree, Flat, Held, Namer

__all__ = ["Capture", "Effect", "SUPPORTED", "available", "run", "guard_lines"]



def available() -> bool:
    """Whether this interpreter's bytecode is one the capture understands."""
    from . import frame
    return frame.PY in SUPPORTED


def _arg_sources(cap: Capture, fn, args: tuple, kwargs: dict):
    """Sources for the call's arguments, in the order :func:`compiler.guards.flatten`
    numbers their leaves: leaves are :class:`Flat`, containers :class:`ArgTree`."""
    try:
        names = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        names = []
    counter = [0]

    def go(x, path: tuple, name: str):
        t = type(x)
        if t is tuple or t is list or t is Size:  # (as compiler.guards.flatten numbers them)
            s = ArgTree(path, name)
            cap.arg_paths[path] = s
            cap.objects[s] = x  # (a method read from it binds it: x.numel() reads x's leaves)
            for i, e in enumerate(x):
                cap.arg_paths[path + (i,)] = go(e, path + (i,), f"{name}[{i}]")
            return s
        if t is dict:
            s = ArgTree(path, name)
            cap.arg_paths[path] = s
            cap.objects[s] = x
            for k, e in x.items():
                cap.arg_paths[path + (k,)] = go(e, path + (k,), f"{name}[{k!r}]")
            return s
        s = Flat(counter[0], name)
        counter[0] += 1
        cap.note_root(x, s)
        return s

    asrc = [go(a, ("a", i), names[i] if i < len(names) else f"args[{i}]")
            for i, a in enumerate(args)]
    ksrc = {k: go(v, ("k", k), k) for k, v in kwargs.items()}
    return asrc, ksrc


def run(tracer, fn: Callable, args: tuple, kwargs: dict, dynamic=frozenset(), flat=(),
        fill=None):
    """Call ``fn(*args, **kwargs)`` under the capture: (result, :class:`Capture`). The
    program's exceptions propagate as they would natively. ``flat``: the flattened
    arguments, as the guards index them (numpy arrays among them copied into tensors get
    their values guarded: ``Capture.guard_copies``). ``fill``: optimizer state filled for
    a first step, which the capture guards (Note [a first call from a filled state] in
    compiler/firstfill.py)."""
    cap = Capture(tracer, frozenset(dynamic))
    cap.fill = fill
    asrc, ksrc = _arg_sources(cap, fn, args, kwargs)
    top = Held(fn, getattr(fn, "__qualname__", "the compiled function"))
    cap.note_root(fn, top)
    exc = None
    try:
        with Watchdog(cap.escaped):
            result, _ = cap.call(None, fn, top, list(args), asrc, dict(kwargs), ksrc)
        cap.guard_copies(list(flat))
        cap.note_reads()
        cap.summarize()
    except Raised as r:
        exc = r.exc  # (raised below, outside the handler: its cause and context stay the
        #             program's)
    finally:
        cap.plain_effects()
        cap.release()
    if exc is not None:
        try:
            raise exc
        finally:
            del exc
    return result, cap


def guard_lines(checks: list[Check], ns: dict) -> list[tuple[str, list[str], Check, Any]]:
    """For each check: (failing condition, lines that must run before it, the check, a
    reader of the source's current value). Sources shared by several checks are read once
    into a local (``s0``, ``s1``…) before their first use."""
    namer = Namer(ns)
    uses: dict = {}

    def chain(src):
        while src is not None:
            yield src
            src = getattr(src, "base", None)

    for c in checks:
        for s in chain(c.source):
            uses[s] = uses.get(s, 0) + 1
    temps: dict = {}
    out = []
    for c in checks:
        pre: list[str] = []

        def render(src):
            t = temps.get(src)
            if t is not None:
                return t
            base = getattr(src, "base", None)
            if base is None:
                e = src.expr(namer)
            else:  # the parent rendered (maybe into a local), then this step on it
                e = _with_base(src, render(base), namer)
            if uses.get(src, 0) > 1 and not isinstance(src, Flat):
                t = f"s{len(temps)}"
                temps[src] = t
                pre.append(f"{t} = {e}")
                return t
            return e

        e = render(c.source)
        full = c.source.expr(namer)
        out.append((c.condition(e, namer), pre, c, _Reader(f"lambda flat: {full}", ns)))
    return out


class _Reader:
    """A source's reader, compiled when first called: only a miss's message reads it."""

    __slots__ = ("text", "ns", "fn")

    def __init__(self, text: str, ns: dict) -> None:
        self.text, self.ns, self.fn = text, ns, None

    def __call__(self, flat):
        if self.fn is None:
            self.fn = eval_generated(self.text, self.ns)
        return self.fn(flat)


def _with_base(src, base_expr: str, namer: Namer) -> str:
    """``src``'s expression with its base replaced by ``base_expr``."""
    class _Fixed:
        def __init__(self, e):
            self.e = e

        def expr(self, namer):
            return self.e
    import dataclasses
    fields = {f.name: getattr(src, f.name) for f in dataclasses.fields(src)}
    fields["base"] = _Fixed(base_expr)
    clone = object.__new__(type(src))
    for k, v in fields.items():
        object.__setattr__(clone, k, v)
    return clone.expr(namer)


def describe_args(flat: list) -> list:  # (kept small: used by explain)
    return [type(x).__name__ for x in flat]


_ = (ArgTree, Effect)
