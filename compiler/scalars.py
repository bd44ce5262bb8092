"""Python numbers the tracer follows: :class:`TracedScalar` (a float: an optimizer
hyperparameter, an ``.item()`` result, a float source seen to change) and
:class:`TracedInt` (an int source or argument seen to change, such as a step counter).
Arithmetic on them is recorded as scalar graph nodes by their tracer
(:meth:`compiler.trace.Tracer.scalar_op`); any other use of their value guards it.
"""

from __future__ import annotations

from . import prims as P
from .ir import Value
from .prims import traits


class _Recorded:
    """The operators both traced numbers record: ``+ - * /`` through ``_arith`` and the
    comparisons through ``_cmp`` (each class says what it records and what it guards)."""

    __slots__ = ()

    def __add__(self, o):
        return self._arith(o, P.ADD)

    def __radd__(self, o):
        return self._arith(o, P.ADD, True)

    def __sub__(self, o):
        return self._arith(o, P.SUB)

    def __rsub__(self, o):
        return self._arith(o, P.SUB, True)

    def __mul__(self, o):
        return self._arith(o, P.MUL)

    def __rmul__(self, o):
        return self._arith(o, P.MUL, True)

    def __truediv__(self, o):
        return self._arith(o, P.DIV)

    def __rtruediv__(self, o):
        return self._arith(o, P.DIV, True)

    def __eq__(self, o):
        return self._cmp(o, P.EQ)

    def __ne__(self, o):
        return self._cmp(o, P.NE)

    def __lt__(self, o):
        return self._cmp(o, P.LT)

    def __le__(self, o):
        return self._cmp(o, P.LE)

    def __gt__(self, o):
        return self._cmp(o, P.GT)

    def __ge__(self, o):
        return self._cmp(o, P.GE)


class TracedScalar(_Recorded, float):
    """A Python float whose origin the tracer knows (an optimizer hyperparameter): arithmetic
    with it is recorded as scalar graph nodes; comparing or truth-testing it records a value
    guard, since that decides Python control flow."""

    __slots__ = ("_tracer", "_value")

    def __new__(cls, x: float, tracer, value: Value):  # (tracer: a compiler.trace.Tracer)
        s = float.__new__(cls, x)
        s._tracer, s._value = tracer, value
        return s

    def _arith(self, other, prim, reflected=False):
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        return self._tracer.scalar_op(prim, a, b)

    def __pow__(self, o):
        return self._arith(o, P.POW)

    def __rpow__(self, o):
        return self._arith(o, P.POW, True)

    def __neg__(self):
        return self._tracer.scalar_op(P.NEG, self)

    def __pos__(self):
        return self

    def _cmp(self, other, prim):
        """Record the comparison and guard its *outcome* (not the number: a changed lr that
        compares the same way needs no new trace)."""
        if not isinstance(other, (int, float)) or isinstance(other, bool):
            return NotImplemented
        return self._tracer.scalar_compare(prim, self, other)

    def __bool__(self):
        return self._tracer.scalar_compare(P.NE, self, 0.0)

    def __int__(self):
        self._tracer.guard_scalar(self, "int")
        return int(float(self))

    def _printed(self, spec=""):
        self._tracer.unsupported = (f"a number read with .item() is printed or formatted at "
                                    f"{self._tracer.where()}; use dg.debug_print inside compiled "
                                    f"functions")
        return format(float(self), spec)

    def __format__(self, spec):
        return self._printed(spec)

    def __str__(self):
        return self._printed()

    def __repr__(self):
        return repr(float(self))

    __hash__ = float.__hash__


def raw_number(x):
    """A traced number's value, without a guard."""
    return x._v if type(x) is TracedInt else float(x) if isinstance(x, TracedScalar) else x


_EXACT = 1 << 52  # ints below this (and their sums) are exact in float64


class TracedInt(_Recorded):
    """An int that is a runtime input of the graph (an int source or argument seen to
    change, such as a step counter). Not an ``int`` subclass on purpose: native code that
    uses its value (an index, a range, a shape, a hash, a format) must go through a dunder,
    and each such dunder guards the value (the trace then holds for that value only). ``+ -
    *`` with ints are recorded (exact in the graph's float64 up to 2**53), with floats give
    a :class:`TracedScalar`; comparisons and truth record a guard on their outcome; the
    capture shows it to the program as an ``int`` (``isinstance``, ``type``)."""

    __slots__ = ("_v", "_tracer", "_value")

    def __init__(self, v: int, tracer, value: Value) -> None:
        self._v, self._tracer, self._value = v, tracer, value

    def _pin(self, what: str) -> int:
        self._tracer.guard_scalar(self, what)
        return self._v

    def _arith(self, other, prim, reflected=False):
        t = type(other)
        if t is bool or not (t is int or t is TracedInt or isinstance(other, float)):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        if max(abs(raw_number(a)), abs(raw_number(b))) >= _EXACT and not isinstance(other, float):
            # float64 is not exact this far out: the values are guarded, the result plain
            va, vb = (x._pin(prim.name) if type(x) is TracedInt else x for x in (a, b))
            return traits(prim).python(va, vb)
        r = self._tracer.scalar_op(prim, a, b)
        if prim is P.DIV or isinstance(other, float):
            return r
        v = traits(prim).python(raw_number(a), raw_number(b))
        if not isinstance(r, TracedScalar):  # (the trace is finished: plain arithmetic)
            return v
        if abs(v) >= _EXACT:  # not exact in float64: the operands are guarded instead
            for x in (a, b):
                if type(x) is TracedInt:
                    x._pin(prim.name)
            return v
        return TracedInt(v, self._tracer, r._value)

    def __neg__(self):
        r = self._tracer.scalar_op(P.NEG, self)
        return TracedInt(-self._v, self._tracer, r._value) if isinstance(r, TracedScalar) \
            else -self._v

    def __pos__(self):
        return self

    def __abs__(self):
        r = self._tracer.scalar_op(P.ABS, self)
        return TracedInt(abs(self._v), self._tracer, r._value) if isinstance(r, TracedScalar) \
            else abs(self._v)

    def _cmp(self, other, prim):
        t = type(other)
        if t is not int and t is not bool and t is not TracedInt and \
                not isinstance(other, float):
            return NotImplemented
        return self._tracer.scalar_compare(prim, self, other)

    def __bool__(self):
        return self._tracer.scalar_compare(P.NE, self, 0)

    # every other use reads the value: guarded
    def __index__(self):
        return self._pin("used as an index")

    def __int__(self):
        return self._pin("int")

    def __float__(self):
        return float(self._pin("float"))

    def __hash__(self):
        return hash(self._pin("hashed"))

    def __format__(self, spec):
        return format(self._pin("formatted"), spec)

    def __str__(self):
        return str(self._pin("str"))

    def __repr__(self):
        return repr(self._pin("repr"))

    def __getattr__(self, name):  # int's other methods (bit_length, to_bytes, ...)
        if name.startswith("__") or not hasattr(int, name):
            raise AttributeError(f"'int' object has no attribute {name!r}")
        return getattr(self._pin(name), name)


def _pinned(op: str):
    def method(self, *others):
        return getattr(self._pin(op), op)(*(raw_number(o) if type(o) is TracedInt else o
                                            for o in others))
    method.__name__ = op
    return method


for _op in ("__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__pow__", "__rpow__",
            "__divmod__", "__rdivmod__", "__lshift__", "__rlshift__", "__rshift__",
            "__rrshift__", "__and__", "__rand__", "__or__", "__ror__", "__xor__", "__rxor__",
            "__invert__", "__round__", "__trunc__", "__floor__", "__ceil__"):
    setattr(TracedInt, _op, _pinned(_op))
