"""What a capture guards about a source: its identity, its value, a version counter.

Each check renders the condition under which it *fails*, as Python text over the guard
function's namespace (see :class:`compiler.capture.sources.Namer`); the guard function of a
variant is one straight line of such tests. ``describe()`` is the line ``explain()`` prints:
``G['scale'][0] == 2.0 (float)``, ``id(G['act'])``, ``L['model']._version == 3``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from .sources import Namer, Source

# Values compared by type and value; anything else is compared by identity.
PLAIN = (int, float, bool, str, bytes, complex, type(None), type(Ellipsis))


def is_plain(x: Any) -> bool:
    """A value a guard compares by type and value (numbers, strings, None, numpy scalars,
    and tuples or slices of them)."""
    t = type(x)
    if t in PLAIN or isinstance(x, np.generic):
        return True
    if t is tuple:
        return all(is_plain(e) for e in x)
    if t is slice:
        return is_plain(x.start) and is_plain(x.stop) and is_plain(x.step)
    return False


def same_plain_conditions(e: str, value: Any, namer: Namer) -> list[str]:
    """Conditions (any true = different) that ``e`` differs from ``value`` in type or value:
    ``2`` is not ``2.0``, ``-0.0`` is not ``0.0``, NaN equals NaN."""
    t = type(value)
    if value is None or t is bool or value is Ellipsis:
        return [f"{e} is not {value!r}"]
    tn = namer.name(t, "T") if t not in (int, float, str, bytes, complex, tuple, slice) \
        else t.__name__
    conds = [f"type({e}) is not {tn}"]
    if t is tuple:
        conds.append(f"len({e}) != {len(value)}")
        for i, x in enumerate(value):
            conds += same_plain_conditions(f"{e}[{i}]", x, namer)
        return conds
    if t is slice:
        for part in ("start", "stop", "step"):
            conds += same_plain_conditions(f"{e}.{part}", getattr(value, part), namer)
        return conds
    if isinstance(value, (float, np.floating)) or t is complex:
        if value != value:  # NaN: equal to NaN only
            return conds + [f"{e} == {e}"]
        v = namer.name(value, "V")
        conds.append(f"{e} != {v}")
        if t is not complex and value == 0:  # the sign of zero shows (1/x, atan2, copysign)
            sign = math.copysign(1.0, float(value))
            conds.append(f"COPYSIGN(1.0, {e}) != {sign!r}")
        return conds
    conds.append(f"{e} != {namer.name(value, 'V')}")
    return conds


class Check:
    """One guarded fact about a source."""

    source: Source

    def condition(self, e: str, namer: Namer) -> str:
        """Python text, true when the check fails, given the source's expression ``e``."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def key(self) -> tuple:
        """Equal keys: the same check (recorded once per variant)."""
        raise NotImplementedError

    def now(self, value: Any) -> Any:
        """What the check compares, read from the source's current value (for messages)."""
        return value


@dataclass(frozen=True, eq=False)
class Equals(Check):
    """The source holds a value of the same type and value."""

    source: Source
    value: Any

    def condition(self, e: str, namer: Namer) -> str:
        return " or ".join(same_plain_conditions(e, self.value, namer))

    def describe(self) -> str:
        return f"{self.source} == {self.value!r} ({type(self.value).__name__})"

    def key(self) -> tuple:
        return ("eq", self.source)

    def expected(self) -> Any:
        return self.value


@dataclass(frozen=True, eq=False)
class Identity(Check):
    """The source holds the very object seen (held weakly when it can be)."""

    source: Source
    obj: Any

    def __post_init__(self) -> None:
        try:
            ref = weakref.ref(self.obj)
        except TypeError:
            ref = None
        object.__setattr__(self, "ref", ref)

    def condition(self, e: str, namer: Namer) -> str:
        if self.ref is not None:
            return f"{e} is not {namer.name(self.ref, 'W')}()"
        return f"{e} is not {namer.name(self.obj, 'I')}"

    def describe(self) -> str:
        return f"id({self.source}) ({_what(self.obj)})"

    def key(self) -> tuple:
        return ("id", self.source)

    def expected(self) -> Any:
        return _what(self.obj)

    def now(self, value: Any) -> Any:
        return _what(value)


@dataclass(frozen=True, eq=False)
class TupleOf(Check):
    """The source holds a tuple of ``length`` items (a location the call stores a new tuple
    in each time — ``self.hidden = (h, c)`` — whose items are guarded or re-read one by
    one: ``compiler.effects``)."""

    source: Source
    length: int

    def condition(self, e: str, namer: Namer) -> str:
        return f"type({e}) is not tuple or len({e}) != {self.length}"

    def describe(self) -> str:
        return f"{self.source} is a tuple of {self.length}"

    def key(self) -> tuple:
        return ("id", self.source)  # (it replaces the identity check on the tuple)

    def expected(self) -> Any:
        return f"a tuple of {self.length}"

    def now(self, value: Any) -> Any:
        return f"a tuple of {len(value)}" if type(value) is tuple else _what(value)


@dataclass(frozen=True, eq=False)
class Version(Check):
    """The source's ``_version`` counter (a module's: every attribute assignment bumps it).

    The expected version sits in a one-element list: a variant that replays attribute
    stores on the object (which bump its version as in eager) moves it on after each call
    by exactly its own stores (see ``compiler.api``'s effect replay)."""

    source: Source
    version: int

    obj_id: int = 0  # id() of the object at trace time (compiler.api drops the tracer's
    #                   own version guard on the same object)

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", [self.version])
        object.__setattr__(self, "seen", {})  # attribute -> value the trace read (messages)

    def condition(self, e: str, namer: Namer) -> str:
        if getattr(self, "moving", False):  # (set by effect replay: see the docstring)
            return f"{e}._version != {namer.name(self.box, 'VB')}[0]"
        return f"{e}._version != {self.box[0]}"

    def describe(self) -> str:
        return f"{self.source}._version == {self.box[0]}"

    def key(self) -> tuple:
        return ("version", self.source)

    def expected(self) -> Any:
        return self.box[0]

    def now(self, value: Any) -> Any:
        """The version now, with the attributes the trace read that changed since."""
        v = getattr(value, "_version", None)
        d = getattr(value, "__dict__", {})
        changed = [f"{self.source}.{k}: {old!r} -> {d.get(k, '<deleted>')!r}"
                   for k, old in self.seen.items()
                   if d.get(k, _GONE) is not old and not _same_value(d.get(k, _GONE), old)]
        return f"{v} ({'; '.join(changed)})" if changed else v


_GONE = object()


def _same_value(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - (arrays, odd __eq__: not the same)
        return False


@dataclass(frozen=True, eq=False)
class Contents(Check):
    """The source holds a numpy array with the values it had when the trace copied it into a
    tensor (``dg.tensor(ARR)``: the values are baked into the graph, and ``ARR[...] = v``
    keeps the array's identity)."""

    source: Source
    values: np.ndarray

    def condition(self, e: str, namer: Namer) -> str:
        return f"not {namer.name(same_array, 'SAME_ARRAY')}({e}, {namer.name(self.values, 'AV')})"

    def describe(self) -> str:
        return f"{self.source} holds the values the trace copied ({self.values.dtype}" \
               f"{list(self.values.shape)})"

    def key(self) -> tuple:
        return ("contents", self.source)

    def expected(self) -> Any:
        return "the traced values"

    def now(self, value: Any) -> Any:
        return "the traced values" if same_array(value, self.values) else "other values"


def same_array(a, b: np.ndarray) -> bool:
    """Whether ``a`` is an array of ``b``'s shape, dtype and values (NaN equal to NaN)."""
    return type(a) is np.ndarray and a.shape == b.shape and a.dtype == b.dtype and \
        bool(np.array_equal(a, b, equal_nan=b.dtype.kind in "fc"))


EXACT = 1 << 52  # an int runtime input must stay below this: exact in the graph's float64


@dataclass(frozen=True, eq=False)
class SmallInt(Check):
    """An int runtime input stays within float64's exact range."""

    source: Source

    def condition(self, e: str, namer: Namer) -> str:
        return f"not -{EXACT} < {e} < {EXACT}"

    def describe(self) -> str:
        return f"|{self.source}| < 2**52 (an int runtime input: exact in float64)"

    def key(self) -> tuple:
        return ("small", self.source)

    def expected(self) -> Any:
        return "< 2**52"


def _what(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    t = type(obj).__name__
    return f"{t} {name}" if isinstance(name, str) else f"a {t}"
