"""Sizes as values: a :class:`Dim` is a size computed from a symbolic dimension (a batch
size), which code generation handles like the int it equals while it remembers how it was
computed.

A symbolic variant (``compiler/symbolic.py``) serves every size of one dimension ``d``. For
a size, the LLVM backend builds its graph with ``d`` a ``Dim`` (:func:`dim`): shapes,
strides, trip counts, arena offsets and byte counts derived from it are Dims too, by the
arithmetic below. Every decision code generation takes on them — a comparison, a truth test,
``int()`` or ``range()`` — sees the number they are equal to at this size, exactly as with
plain ints. What differs is how a Dim is *written into IR*: inside :func:`recording`,
formatting a Dim gives a placeholder, ``%dgz.<slot>.<number>`` (one slot per distinct
expression), instead of its number. The text with its numbers taken out is the *template*:
two sizes whose code made the same decisions write the same template, and the backend
compiles it once, reading each slot from a module global filled per call with that size's
numbers (``backends/llvm/forms.py``).

Why that is sound, by construction: a size's template together with the numbers its own
placeholders carry *is* the program code generation wrote for that size — whatever it did
with the Dims, the only thing taken out of its text is the numbers, and they are put back at
run time. A number that reached the text without going through a Dim (an ``int()`` of one,
say) stays in the template, so sizes that disagree on it get different templates, never one
wrong module. Nothing is extrapolated from one size to another; there are no probes and no
comparison of texts beyond equality.

Each Dim's expression is kept in a canonical form — a polynomial in ``d`` over integer
coefficients, with anything else (floor division, remainders, true division) an opaque atom
of the polynomial — so the same size computed two ways is one slot.
"""

from __future__ import annotations

import contextlib
import math
import struct
import threading
from collections.abc import Iterator

import numpy as np

from dyngrad.ops.movement import SymbolicSize

_D = ("d",)  # the symbolic dimension's atom


def _mono_key(mono: tuple) -> tuple:
    return mono if len(mono) < 2 else tuple(sorted(mono, key=hash))


def _poly_of(x) -> dict:
    """{monomial: coefficient} of an int or a Dim (monomials: sorted tuples of atoms)."""
    if isinstance(x, Dim):
        return dict(x.key)
    return {(): x} if x else {}


def _make(poly: dict, value):
    """A Dim for ``poly`` (an int when it is constant)."""
    terms = [(m, c) for m, c in poly.items() if c]
    if len(terms) > 1:  # (an order of its own: the same polynomial, the same key; hash is
        terms.sort(key=_term_order)  # as good as any within a process, and keys never leave it)
    terms = tuple(terms)
    if not terms:
        return 0
    if len(terms) == 1 and terms[0][0] == ():
        return terms[0][1]
    return Dim(terms, value)


def _atom(op: str, a, b, value):
    """A Dim that is one opaque atom ``(op, a, b)`` (a and b: keys of Dims, or numbers)."""
    ka = a.key if isinstance(a, Dim) else a
    kb = b.key if isinstance(b, Dim) else b
    return Dim((((((op, ka, kb),), 1),)), value)


def _term_order(term) -> int:
    return hash(term[0])


_INTLIKE = (int, np.integer)
_OK = (int, np.integer)


def _ok(o) -> bool:
    """A Dim or an integer (not a bool): what size arithmetic takes."""
    t = type(o)
    if t is int or t is Dim:
        return True
    return isinstance(o, _OK) and not isinstance(o, (bool, np.bool_)) or isinstance(o, Dim)


class Dim:
    """A size derived from the symbolic dimension, equal to the int ``value`` at the size
    being compiled (or a float, for a true division). Behaves as that number for every
    decision; formats as a placeholder inside :func:`recording` (see the module docstring).
    """

    __slots__ = ("key", "value")

    def __init__(self, key: tuple, value) -> None:
        self.key, self.value = key, value

    # ---------------------------------------------------------------- arithmetic
    def __add__(self, o):
        if isinstance(o, float) or isinstance(self.value, float) or \
                isinstance(_value(o), float):
            if not (_ok(o) or isinstance(o, float)):
                return NotImplemented
            return _atom("+", self, o, self.value + _value(o))
        if not _ok(o):
            return NotImplemented
        p = _poly_of(self)
        for m, c in _poly_of(o).items():
            p[m] = p.get(m, 0) + int(c)
        return _make(p, self.value + int(_value(o)))

    __radd__ = __add__

    def __sub__(self, o):
        if isinstance(o, float) or isinstance(self.value, float) or \
                isinstance(_value(o), float):
            return _atom("-", self, o, self.value - _value(o)) \
                if _ok(o) or isinstance(o, float) else NotImplemented
        if not _ok(o):
            return NotImplemented
        p = _poly_of(self)
        for m, c in _poly_of(o).items():
            p[m] = p.get(m, 0) - int(c)
        return _make(p, self.value - int(_value(o)))

    def __rsub__(self, o):
        return (-self) + o if _ok(o) else _atom("-", o, self, o - self.value) \
            if isinstance(o, float) else NotImplemented

    def __neg__(self):
        if isinstance(self.value, float):
            return _atom("*", self, -1, -self.value)
        return _make({m: -c for m, c in self.key}, -self.value)

    def __pos__(self):
        return self

    def __mul__(self, o):
        if isinstance(o, float):
            return self._float("*", o)
        if not _ok(o):
            return NotImplemented
        if isinstance(self.value, float) or isinstance(_value(o), float):
            return _atom("*", self, o, self.value * _value(o))
        p: dict = {}
        for m1, c1 in self.key:
            for m2, c2 in _poly_of(o).items():
                m = _mono_key(m1 + m2)
                p[m] = p.get(m, 0) + c1 * int(c2)
        return _make(p, self.value * _value(o))

    __rmul__ = __mul__

    def __floordiv__(self, o):
        if not _ok(o):
            return NotImplemented
        v = self.value // _value(o)
        if isinstance(o, _INTLIKE) and o > 0 and not isinstance(self.value, float) and \
                all(c % o == 0 for _, c in self.key):
            return _make({m: c // int(o) for m, c in self.key}, v)  # (exact for every d)
        return _atom("//", self, o, v)

    def __rfloordiv__(self, o):
        return _atom("//", o, self, o // self.value) if _ok(o) else NotImplemented

    def __mod__(self, o):
        if not _ok(o):
            return NotImplemented
        v = self.value % _value(o)
        if isinstance(o, _INTLIKE) and o > 0 and not isinstance(self.value, float) and \
                all(c % o == 0 for m, c in self.key if m):
            return v  # (the same for every d: only the constant term counts)
        return _atom("%", self, o, v)

    def __rmod__(self, o):
        return _atom("%", o, self, o % self.value) if _ok(o) else NotImplemented

    def __divmod__(self, o):
        q = self // o
        return NotImplemented if q is NotImplemented else (q, self - q * o)

    def __rdivmod__(self, o):
        q = o // self
        return NotImplemented if q is NotImplemented else (q, o - q * self)

    def __truediv__(self, o):
        if not (_ok(o) or isinstance(o, float)):
            return NotImplemented
        return _atom("/", self, o, self.value / _value(o))

    def __rtruediv__(self, o):
        if not (_ok(o) or isinstance(o, float)):
            return NotImplemented
        return _atom("/", o, self, o / self.value)

    def __pow__(self, o):
        if isinstance(o, int) and o >= 0:
            r = 1
            for _ in range(o):
                r = r * self
            return r
        return NotImplemented

    def _float(self, op: str, o: float):
        return _atom(op, self, o, {"+": self.value + o, "-": self.value - o,
                                   "*": self.value * o}[op])

    def __abs__(self):
        return self if self.value >= 0 else -self

    # ---------------------------------------------------------------- as a number
    def __index__(self) -> int:
        if isinstance(self.value, float):
            raise TypeError("a float size is not an index")
        return self.value

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    # comparisons: as its number would compare (with anything)
    def __eq__(self, o):
        return self.value == (o.value if type(o) is Dim else o)

    def __ne__(self, o):
        return self.value != (o.value if type(o) is Dim else o)

    def __lt__(self, o):
        return self.value < (o.value if type(o) is Dim else o)

    def __le__(self, o):
        return self.value <= (o.value if type(o) is Dim else o)

    def __gt__(self, o):
        return self.value > (o.value if type(o) is Dim else o)

    def __ge__(self, o):
        return self.value >= (o.value if type(o) is Dim else o)

    def __hash__(self) -> int:
        return hash(self.value)  # (equal to its number: dict keys behave as with ints)

    def __round__(self, n=None):
        return round(self.value, n)

    def __trunc__(self):
        return math.trunc(self.value)

    def __ceil__(self):
        return math.ceil(self.value)

    def __floor__(self):
        return math.floor(self.value)

    def bit_length(self) -> int:
        return int(self.value).bit_length()

    # ---------------------------------------------------------------- as text
    def __format__(self, spec: str) -> str:
        rec = current()
        if rec is None or spec:
            return format(self.value, spec)
        return rec.placeholder(self)

    def __str__(self) -> str:
        return self.__format__("")

    def __repr__(self) -> str:
        return f"Dim({describe(self.key)} = {self.value})"


SymbolicSize.register(Dim)  # (dyngrad's shape rules keep it as it is)


def _value(x):
    return x.value if isinstance(x, Dim) else x


def dim(d: int) -> Dim:
    """The symbolic dimension itself, at size ``d``."""
    return Dim((((_D,), 1),), int(d))


def concrete(x):
    """``x`` with every Dim replaced by its number (tuples, lists and dicts looked into)."""
    if isinstance(x, Dim):
        return x.value
    if isinstance(x, tuple):
        return tuple(concrete(e) for e in x)
    if isinstance(x, list):
        return [concrete(e) for e in x]
    if isinstance(x, dict):
        return {k: concrete(e) for k, e in x.items()}
    return x


def describe(key) -> str:
    """An expression key as text: ``2·d + 1``, ``(d·784 // 16)``."""
    if not isinstance(key, tuple) or not key or key == _D:
        return "d" if key == _D else str(key)
    if isinstance(key[0], str):  # an atom (op, a, b)
        op, a, b = key
        return f"({describe(a)} {op} {describe(b)})"
    terms = []
    for mono, c in key:
        factors = "·".join(describe(a) for a in mono)
        terms.append(str(c) if not mono else factors if c == 1 else f"{c}·{factors}")
    return " + ".join(terms)


# ------------------------------------------------------------------ placeholders
PREFIX = "%dgz."


class Recording:
    """The Dims written into IR while it is active: slot per distinct expression, and the
    number each has at this size."""

    def __init__(self) -> None:
        self.slots: dict[tuple, int] = {}
        self.numbers: list = []  # per slot, its number at this size

    def placeholder(self, x: Dim) -> str:
        s = self.slots.get(x.key)
        if s is None:
            s = self.slots[x.key] = len(self.numbers)
            self.numbers.append(x.value)
        return f"{PREFIX}{s}.{_tag(x.value)}"


def _tag(v) -> str:
    """A number as a name part (the placeholder carries it: a text made by this recording
    never equals one of another size by accident, and Python-side caches keyed by text see
    the number as with ints)."""
    if isinstance(v, float):
        return "f" + struct.pack("<d", v).hex()
    return str(v) if v >= 0 else f"m{-v}"


_local = threading.local()


def current() -> Recording | None:
    """The active recording, if any."""
    return getattr(_local, "rec", None)


@contextlib.contextmanager
def recording() -> Iterator[Recording]:
    """Dims formatted inside become placeholders (see the module docstring)."""
    outer = current()
    rec = _local.rec = Recording()
    try:
        yield rec
    finally:
        _local.rec = outer
