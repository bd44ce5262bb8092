"""Fidelity of the capture's bytecode interpreter (:mod:`compiler.capture`): each small
function below runs natively and under ``capture.run(None, ...)``, and the two outcomes — the
result, or the exception's type, message, cause and context — must be the same.

Each case also states whether the capture follows the function (``refused=None``: the whole
call was interpreted, so the comparison tests the interpreter) or refuses it (a substring of
the reason: the code runs natively, and the result must still be the native one).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from compiler import capture

CASES: list = []


def case(*args, refused=None, marks=(), **kwargs):
    """Register the decorated function as a case called with ``args``/``kwargs``."""
    def register(fn):
        CASES.append(pytest.param(fn, args, kwargs, refused, id=fn.__name__, marks=marks))
        return fn
    return register


def chain(exc, depth=3):
    """An exception with its cause and context, as comparable data."""
    if exc is None or depth == 0:
        return None
    return (type(exc).__name__, str(exc), chain(exc.__cause__, depth - 1),
            chain(exc.__context__, depth - 1), exc.__suppress_context__)


def outcome(call):
    """What a call did: ('ok', type, value) or ('raise', type, message). (How an exception
    that leaves the capture is chained is tested apart, see test_escaping_exception_chain;
    the cases that catch one compare its chain with :func:`chain`.)"""
    try:
        r = call()
    except Exception as exc:  # noqa: BLE001 - compared with the other run's
        return ("raise", type(exc), str(exc))
    return ("ok", type(r), r)


def run_both(fn, args, kwargs):
    native = outcome(lambda: fn(*copy.deepcopy(args), **copy.deepcopy(kwargs)))
    caps = []

    def captured():
        r, cap = capture.run(None, fn, list(copy.deepcopy(args)), copy.deepcopy(kwargs))
        caps.append(cap)
        return r
    return native, outcome(captured), caps


# ----------------------------------------------------------------- loops


@case(10)
def loop_break_continue_else(n):
    out = []
    for i in range(n):
        if i % 3 == 0:
            continue
        if i > 7:
            break
        out.append(i)
    else:
        out.append("no break")
    for j in range(3):
        out.append(j)
    else:
        out.append("else ran")
    return out


@case(20)
def while_break_else(n):
    i, acc = 0, []
    while i < n:
        i += 1
        if i % 2:
            continue
        acc.append(i)
        if len(acc) == 4:
            break
    else:
        acc.append(-1)
    k = 3
    while k:
        k -= 1
    else:
        acc.append("done")
    return acc, i, k


@case([[1, 2], [3, 4, 5], []])
def nested_loops_labelled_exit(rows):
    found = None
    for r, row in enumerate(rows):
        for c, v in enumerate(row):
            if v == 4:
                found = (r, c)
                break
        else:
            continue
        break
    return found


# ----------------------------------------------------------------- comprehensions


@case(6)
def comprehensions(n):
    sq = [i * i for i in range(n) if i % 2 == 0]
    st = {i % 3 for i in range(n)}
    dc = {i: str(i) for i in range(n) if i}
    gen = sum(i for i in range(n))
    nested = [(i, j) for i in range(3) for j in range(i) if (i + j) % 2]
    inner = [[j for j in range(i)] for i in range(4)]
    return sq, st, dc, gen, nested, inner


@case(4)
def comprehension_scoping(n):
    i = "outer"
    xs = [i for i in range(n)]
    k = 10
    ys = [x + k for x in xs]
    return i, xs, ys


@case()
def comprehension_raises():
    return [1 // (i - 2) for i in range(4)]


# ----------------------------------------------------------------- generators


def _countdown(n):
    while n > 0:
        yield n
        n -= 1
    return "finished"


def _delegating(n):
    r = yield from _countdown(n)
    yield r


def _accumulator():
    total = 0
    while True:
        x = yield total
        if x is None:
            break
        total += x
    return total


@case(4)
def generator_basic(n):
    g = _countdown(n)
    first = next(g)
    rest = list(g)
    return first, rest, list(_countdown(0))


@case(3)
def generator_return_value(n):
    g = _countdown(n)
    for _ in g:
        pass
    try:
        next(g)
    except StopIteration as e:
        return "stopped", e.value
    return None


@case(3)
def generator_manual_stop_value(n):
    g = _countdown(n)
    out = []
    while True:
        try:
            out.append(next(g))
        except StopIteration as e:
            out.append(e.value)
            break
    return out


@case(3, refused="yield from")
def generator_yield_from(n):
    return list(_delegating(n))


@case([1, 2, 3])
def generator_send(xs):
    g = _accumulator()
    out = [next(g)]
    for x in xs:
        out.append(g.send(x))
    try:
        g.send(None)
    except StopIteration as e:
        out.append(("returned", e.value))
    return out


@case(5)
def generator_expression_lazy(n):
    seen = []

    def log(i):
        seen.append(i)
        return i * 2
    g = (log(i) for i in range(n))
    first = next(g)
    before = list(seen)
    rest = list(g)
    return first, before, rest, seen


@case(3)
def generator_in_builtins(n):
    return max(x * 2 for x in range(n)), any(x > 1 for x in range(n)), \
        dict((str(i), i) for i in range(n)), sorted(-x for x in range(n))


def _bad_gen():
    yield 1
    raise StopIteration("inner")


@case()
def generator_stopiteration_is_runtimeerror():
    return list(_bad_gen())


# ----------------------------------------------------------------- closures and scopes


@case(3)
def closures_nonlocal(n):
    count = 0

    def bump(k=1):
        nonlocal count
        count += k
        return count
    for _ in range(n):
        bump()
    bump(10)

    def make_adders():
        return [lambda x, i=i: x + i for i in range(3)]
    late = [lambda: j for j in range(3)]
    return count, [f(10) for f in make_adders()], [f() for f in late]


@case(5)
def closure_counter_factory(n):
    def counter():
        c = 0

        def inc():
            nonlocal c
            c += 1
            return c
        return inc
    a, b = counter(), counter()
    for _ in range(n):
        a()
    return a(), b()


_GLOBAL_COUNTER = 0


@case(4)
def global_statement(n):
    global _GLOBAL_COUNTER
    _GLOBAL_COUNTER = 0
    for i in range(n):
        _GLOBAL_COUNTER += i
    result = _GLOBAL_COUNTER
    _GLOBAL_COUNTER = 0
    return result


@case()
def del_statements():
    a = [1, 2, 3, 4]
    d = {"x": 1, "y": 2}
    del a[1]
    del a[-1:]
    del d["x"]
    b = 5
    del b
    try:
        return b  # noqa: F821 - deleted on purpose
    except UnboundLocalError:
        return a, d, "unbound"


@case()
def unbound_local():
    if False:
        x = 1
    return x  # noqa: F821


@case()
def name_error():
    return undefined_name_here  # noqa: F821


# ----------------------------------------------------------------- arguments


def _signature(a, b=2, *args, c, d=4, **kw):
    return a, b, args, c, d, sorted(kw.items())


def _posonly(a, b, /, c=3):
    return a, b, c


@case()
def default_and_kwonly_args():
    return (_signature(1, c=3), _signature(1, 2, 3, 4, c=5, d=6, e=7),
            _signature(a=0, c=0, z=1), _posonly(1, 2), _posonly(1, 2, c=9))


@case()
def star_calls():
    a = (1, 2, 3)
    k = {"c": 5, "e": 6}
    return (_signature(*a, **k), _signature(*[0], **{"c": 1}), _signature(0, *(), c=1, **{}),
            max(*a), "{}-{}".format(*"ab"))


@case()
def missing_argument():
    return _signature(1)


@case()
def unexpected_keyword():
    return _posonly(1, 2, zz=3)


@case()
def too_many_positional():
    return _posonly(1, 2, 3, 4)


@case()
def duplicate_keyword_from_star():
    return _signature(1, c=2, **{"c": 3})


@case()
def unpacking():
    a, *b, c = range(6)
    (x, y), z = (1, 2), 3
    first, *_ = "hello"
    *init, last = [1]
    merged = {**{"a": 1, "b": 2}, **{"b": 3}, "c": 4}
    joined = [*a_list(), *range(2), *"xy"]
    st = {*range(3), *[2, 5]}
    tup = (*range(2), 9)
    return a, b, c, x, y, z, first, init, last, merged, joined, st, tup


def a_list():
    return [7, 8]


@case()
def unpack_wrong_count():
    a, b = [1, 2, 3]
    return a, b


@case()
def unpack_not_enough():
    a, b, *c, d = [1, 2]
    return a, b, c, d


# ----------------------------------------------------------------- expressions


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"

    def __str__(self):
        return f"<{self.x},{self.y}>"

    def __format__(self, spec):
        return f"P[{spec}]"


@case(3.14159, "txt", 42)
def fstrings(x, s, n):
    p = Point(1, 2)
    width = 8
    return [f"{x:.2f}", f"{s!r}", f"{s!s:>6}", f"{n:#x}", f"{n:{width}d}|", f"{p}", f"{p!r}",
            f"{p!s}", f"{p:spec}", f"{'é'!a}", f"{x=}", f"{n:,}", f"{s:^{width}}", f"{{}}{n}"]


@case([3, 0, 5, 0, 2])
def walrus(xs):
    out = [y for x in xs if (y := x * 2)]
    i = 0
    while (v := xs[i]) != 5:
        i += 1
    return out, y, v, i


@case(5)
def chained_comparisons_and_ternary(n):
    a = 1 < n <= 5
    b = 1 < n < 3
    c = 0 <= n != 5
    d = "big" if n > 3 else "small"
    e = [("even" if i % 2 == 0 else "odd") for i in range(3)]
    f = n and n - 1 or -1
    g = None or [] or "last"
    return a, b, c, d, e, f, g, not n, -n, ~n, +n


@case()
def chained_comparison_calls_once():
    calls = []

    def v(x):
        calls.append(x)
        return x
    r = v(1) < v(2) < v(0) < v(5)
    return r, calls


@case(6)
def slicing(n):
    xs = list(range(n))[::-1]
    s = "abcdefgh"
    return (xs[::-1], xs[-2::-2], xs[1:-1], xs[:100], s[::-3], s[-3:], s[5:1:-1],
            xs[slice(1, None, 2)], xs[-1], tuple(xs)[2:4])


@case([5, 4, 3, 2, 1, 0])
def slicing_argument(xs):
    return xs[::-1], xs[1:], xs[-2::-2], tuple(xs)[2:4]


_GLOBAL_LIST = [1, 2, 3]


@case()
def slice_assignment_global():
    _GLOBAL_LIST[1:2] = [9, 9]
    r = list(_GLOBAL_LIST)
    _GLOBAL_LIST[:] = [1, 2, 3]
    return r


@case(3)
def slice_assignment(n):
    xs = list(range(1, n + 1))
    xs[1:2] = [9, 9, 9]
    xs[::2] = [0] * len(xs[::2])
    ys = list(range(6))
    del ys[::3]
    return xs, ys


@case()
def index_error():
    return [1, 2][5]


@case()
def key_error():
    return {"a": 1}["b"]


@case()
def zero_division():
    return 1 / 0


@case()
def type_error_operator():
    return 1 + "a"


@case("Hello, World")
def string_methods(s):
    return (s.lower(), s.upper(), s.split(", "), "-".join(["a", "b"]), s.replace("l", "L", 2),
            s.startswith("He"), s.find("o"), s.strip("Hd"), s.center(16, "*"),
            s.partition(","), "%s=%d" % ("x", 3),  # noqa: UP031
            "{0}{1}{0}".format("a", "b"),
            s.encode()[:3], s.title(), s.count("l"), s.zfill(14), s[::-1].casefold())


@case([3, 1, 2])
def builtins_iteration(xs):
    words = ["bb", "a", "ccc"]
    return (sorted(words, key=lambda w: len(w)), sorted(xs, reverse=True),
            list(map(lambda x: x * 2, xs)), list(filter(lambda x: x > 1, xs)),
            list(zip(xs, words)), list(enumerate(words, start=1)), min(words, key=len),
            list(map(str, xs)), list(reversed(xs)), dict(zip(words, xs)),
            sum(xs, 10), all(xs), list(zip(*[[1, 2], [3, 4]])), sorted(words, key=str.upper))


@case(7)
def lambda_defaults(n):
    f = lambda x, y=n, *rest, z=2, **kw: (x, y, rest, z, kw)  # noqa: E731
    return f(1), f(1, 2, 3, z=4, w=5), (lambda: n)(), (lambda *a: a)(1, 2)


@case(10)
def recursion(n):
    def fib(k):
        return k if k < 2 else fib(k - 1) + fib(k - 2)
    return [fib(i) for i in range(n)], _fact(n)


def _fact(n):
    return 1 if n <= 1 else n * _fact(n - 1)


@case(2)
def import_inside(n):
    import math as m
    import os.path
    from math import sqrt
    return m.floor(2.5), sqrt(n), os.path.basename("/a/b.c"), math.pi > 3


@case()
def getattr_setattr_hasattr():
    p = Point(1, 2)
    x, z, missing = "x", "z", "missing"
    setattr(p, z, 3)
    out = [getattr(p, x), getattr(p, z), getattr(p, "w", "default"), hasattr(p, "y"),
           hasattr(p, "nope")]
    delattr(p, z)
    out.append(hasattr(p, z))
    try:
        getattr(p, missing)
    except AttributeError as e:
        out.append(type(e).__name__)
    return out


@case()
def isinstance_checks():
    p = Point(0, 0)
    return (isinstance(p, Point), isinstance(1, (str, int)), isinstance(True, int),
            isinstance(p, object), issubclass(bool, int), type(p) is Point,
            isinstance(ValueError(), Exception))


# ----------------------------------------------------------------- match


@case([0, 1, 2, "x"])
def match_literal(xs):
    out = []
    for x in xs:
        match x:
            case 0:
                out.append("zero")
            case 1 | 2:
                out.append("small")
            case _:
                out.append("other")
    return out


@case([[1], [1, 2], (3, 4, 5), [], "ab"], refused="match statement")
def match_sequence(xs):
    out = []
    for x in xs:
        match x:
            case []:
                out.append("empty")
            case [a]:
                out.append(("one", a))
            case [a, b]:
                out.append(("two", a + b))
            case [a, *rest]:
                out.append(("many", a, rest))
            case _:
                out.append("nomatch")
    return out


@case([{"kind": "add", "x": 1, "y": 2}, {"kind": "neg", "x": 5}, {"kind": "?"}],
      refused="match statement")
def match_mapping(xs):
    out = []
    for d in xs:
        match d:
            case {"kind": "add", "x": x, "y": y}:
                out.append(x + y)
            case {"kind": "neg", "x": x, **rest}:
                out.append((-x, rest))
            case _:
                out.append(None)
    return out


@case([Point(0, 0), Point(1, 5), Point(3, -1), 7], refused="match statement")
def match_class_and_guard(xs):
    out = []
    for p in xs:
        match p:
            case Point(x=0, y=0):
                out.append("origin")
            case Point(x=x, y=y) if y > x:
                out.append(("above", x, y))
            case Point():
                out.append("point")
            case int(n):
                out.append(("int", n))
    return out


# ----------------------------------------------------------------- exceptions


@case(0)
def try_except_else_finally(n):
    log = []
    for d in (1, 0):
        try:
            log.append(10 // d)
        except ZeroDivisionError as e:
            log.append(("zde", str(e)))
        else:
            log.append("else")
        finally:
            log.append("finally")
    try:
        e  # noqa: F821 - the handler's name is deleted after it
    except NameError:
        log.append("e deleted")
    return log


@case()
def reraise():
    try:
        try:
            {}["k"]
        except KeyError:
            raise
    except LookupError as e:
        return "outer", type(e).__name__, e.args


@case()
def reraise_escapes():
    try:
        [][0]
    except IndexError:
        raise


@case()
def raise_from():
    try:
        int("x")
    except ValueError as e:
        raise RuntimeError("conversion failed") from e


@case()
def raise_from_none():
    try:
        int("x")
    except ValueError:
        raise KeyError("k") from None


@case()
def raise_in_handler_has_context():
    try:
        1 / 0
    except ZeroDivisionError:
        raise ValueError("while handling")  # noqa: B904 - on purpose


@case()
def raise_class_and_instance():
    out = []
    for exc in (ValueError, TypeError("t"), KeyError):
        try:
            raise exc
        except Exception as e:
            out.append((type(e).__name__, e.args))
    return out


@case()
def raise_non_exception():
    raise 42  # noqa: B016 - on purpose


class MyError(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


@case(7)
def user_exception_class(n):
    try:
        raise MyError(n)
    except MyError as e:
        return e.code, str(e), e.args


@case()
def user_exception_escapes():
    raise MyError(3)


@case(6)
def finally_in_loop_break_return(n):
    log = []
    for i in range(n):
        try:
            if i == 1:
                continue
            if i == 3:
                break
            log.append(i)
        finally:
            log.append(("f", i))

    def inner():
        try:
            return "try"
        finally:
            log.append("inner finally")

    def override():
        try:
            return "try"
        finally:
            return "finally"  # noqa: B012 - on purpose

    def swallow():
        for _ in range(2):
            try:
                raise ValueError
            finally:
                break  # noqa: B012 - on purpose
        return "swallowed"
    return log, inner(), override(), swallow()


@case(5)
def nested_try_in_loop(n):
    out = []
    for i in range(n):
        try:
            try:
                if i % 2:
                    raise ValueError(i)
                out.append(("ok", i))
            except ValueError as e:
                if e.args[0] == 3:
                    raise TypeError("three") from e
                out.append(("inner", i))
            finally:
                out.append(("fin", i))
        except TypeError as e:
            out.append(("outer", str(e), type(e.__cause__).__name__))
            if i == 3:
                return out
    return out


@case(3)
def except_tuple_and_order(n):
    out = []
    for exc in (KeyError("k"), IndexError("i"), ZeroDivisionError("z")):
        try:
            raise exc
        except (KeyError, ZeroDivisionError) as e:
            out.append(("kz", str(e)))
        except LookupError as e:
            out.append(("lookup", str(e)))
    return out


@case(3)
def assert_failing(n):
    assert n > 0, "positive"
    assert n < 2, f"too big: {n}"
    return n


@case(3)
def assert_without_message(n):
    assert n == 0
    return n


@case()
def exception_in_callee_caught():
    def boom(x):
        return x["missing"]
    try:
        boom({})
    except KeyError as e:
        return "caught", repr(e)


@case()
def nested_function_raise_propagates():
    def a():
        return b()

    def b():
        raise OSError("disk")
    return a()


@case()
def exception_chains_caught():
    out = []

    def failing(kind):
        try:
            {}["key"]
        except KeyError as e:
            if kind == "from":
                raise ValueError("from") from e
            if kind == "none":
                raise ValueError("none") from None
            if kind == "context":
                raise ValueError("context")  # noqa: B904 - on purpose
            if kind == "bare":
                raise
            if kind == "callee":
                return helper_raises()
            if kind == "native":
                return 1 // 0
        return None

    def helper_raises():
        raise OSError("in callee")
    for kind in ("from", "none", "context", "bare", "callee", "native"):
        try:
            failing(kind)
        except Exception as e:  # noqa: BLE001
            out.append(chain(e))
    return out


@case()
def exception_chain_in_finally_and_with():
    out = []
    try:
        try:
            raise KeyError("first")
        finally:
            out.append("cleanup")
    except KeyError as e:
        out.append(chain(e))
    try:
        with Recorder([]):
            try:
                raise ValueError("a")
            except ValueError:
                raise TypeError("b") from None
    except TypeError as e:
        out.append(chain(e))
    try:
        try:
            raise ValueError("outer")
        except ValueError as outer:
            try:
                raise KeyError("inner")
            except KeyError:
                raise outer from None
    except ValueError as e:
        out.append(chain(e))
    return out


@case()
def stopiteration_chains():
    out = []
    try:
        list(_bad_gen())
    except RuntimeError as e:
        out.append(chain(e))
    it = iter(Countdown(1))
    out.append(next(it))
    out.append(next(it, "default"))
    try:
        next(_user_stop())
    except StopIteration as e:
        out.append(("stop", e.args))
    try:
        next(iter([]))
    except StopIteration as e:
        out.append(("empty", e.args))
    g = _countdown(1)
    out.append([next(g), next(g, "d"), next(g, "d")])
    return out


class _UserStop:
    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration("user message")


def _user_stop():
    return _UserStop()


@case(refused="except*")
def exception_group():
    try:
        raise ExceptionGroup("many", [ValueError("v"), KeyError("k")])  # noqa: F821
    except* ValueError as eg:
        caught = [str(e) for e in eg.exceptions]
    except* KeyError:
        pass
    return caught


@case()
def exception_group_plain_except():
    try:
        raise ExceptionGroup("many", [ValueError("v")])  # noqa: F821
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e), [str(x) for x in e.exceptions]


def _kwonly(a, *, b, c):
    return a, b, c


def _three(a, b, c):
    return a, b, c


@case()
def argument_errors_caught():
    out = []
    calls = [lambda: _three(1), lambda: _three(), lambda: _kwonly(1), lambda: _kwonly(1, b=2),
             lambda: _kwonly(1, 2, b=3), lambda: _three(1, 2, 3, 4), lambda: _three(1, a=2),
             lambda: _posonly(1, b=2), lambda: _posonly(1), lambda: _fact(),
             lambda: _fact(1, 2), lambda: (lambda: 0)(1), lambda: _signature(**{"a": 1}),
             lambda: _kwonly(1, 2, 3, b=4, c=5)]
    for c in calls:
        try:
            out.append(c())
        except TypeError as e:
            out.append(str(e))
    return out


@case()
def star_argument_errors():
    out = []
    for bad in (lambda: _signature(*1), lambda: _signature(**1), lambda: _signature(1, **[1]),
                lambda: _signature(1, **{"c": 1}, **{"c": 2})):
        try:
            out.append(bad())
        except TypeError as e:
            out.append(str(e))
    return out


def _gen_with_finally(log):
    try:
        yield 1
        yield 2
    finally:
        log.append("gen finally")


@case()
def generator_try_finally():
    log = []
    for x in _gen_with_finally(log):
        log.append(x)
    return log


def _gen_pairs(n):
    for i in range(n):
        yield i, i * i


@case(4)
def generator_unpack_and_chain(n):
    d = dict(_gen_pairs(n))
    a, b, *rest = (x for x, _ in _gen_pairs(n))
    nested = list(sum(p) for p in _gen_pairs(n))
    inner = [list(_countdown(k)) for k in range(3)]
    return d, a, b, rest, nested, inner, sorted(_countdown(n), key=lambda v: -v)


@case()
def generator_send_before_start():
    g = _accumulator()
    try:
        g.send(5)
    except TypeError as e:
        return str(e)
    return None


def _catching_gen():
    try:
        yield 1
    except ValueError as e:
        yield f"caught {e}"
    yield "after"


@case()
def generator_throw_and_close():
    g = _catching_gen()
    out = [next(g), g.throw(ValueError("v")), next(g)]
    log = []
    h = _gen_with_finally(log)
    out.append(next(h))
    h.close()
    out.append(list(log))
    h.close()
    out.append(next(h, "closed"))
    g2 = _catching_gen()
    next(g2)
    try:
        g2.throw(KeyError("k"))
    except KeyError as e:
        out.append(chain(e))
    out.append(next(g2, "finished"))
    return out


# ----------------------------------------------------------------- with


class Recorder:
    def __init__(self, log, suppress=False):
        self.log, self.suppress = log, suppress

    def __enter__(self):
        self.log.append("enter")
        return self

    def __exit__(self, et, ev, tb):
        self.log.append(("exit", et.__name__ if et else None, str(ev) if ev else None))
        return self.suppress


@case()
def with_statements():
    log = []
    with Recorder(log) as r:
        log.append(r is not None)
    with Recorder(log, suppress=True):
        raise ValueError("suppressed")
    try:
        with Recorder(log):
            raise KeyError("kept")
    except KeyError:
        log.append("propagated")
    for i in range(3):
        with Recorder(log):
            if i == 1:
                continue
            if i == 2:
                break
    return log


@case()
def with_return_inside():
    log = []

    def f():
        with Recorder(log):
            return "returned"
    return f(), log


@case()
def with_multiple_and_contextlib():
    log = []
    with Recorder(log) as a, Recorder(log) as b:
        log.append(a is not b)
    with contextlib.suppress(ZeroDivisionError):
        1 / 0
    return log


@case()
def with_exception_escapes():
    log = []
    with Recorder(log):
        raise RuntimeError(str(log))


@contextlib.contextmanager
def _managed(log):
    log.append("in")
    try:
        yield len(log)
    except ValueError as e:
        log.append(f"handled {e}")
    finally:
        log.append("out")


@case(refused="ran outside the capture")  # (the generator starts in native code)
def contextmanager_generator():
    log = []
    with _managed(log) as n:
        log.append(n)
    with _managed(log):
        raise ValueError("x")
    try:
        with _managed(log):
            raise KeyError("k")
    except KeyError:
        log.append("propagated")
    return log


# ----------------------------------------------------------------- classes


class Base:
    def __init__(self, v):
        self.v = v

    def describe(self):
        return f"Base({self.v})"

    @property
    def double(self):
        return self.v * 2

    @double.setter
    def double(self, value):
        self.v = value // 2

    @staticmethod
    def static(x):
        return x + 1

    @classmethod
    def make(cls, v):
        return cls(v)


class Child(Base):
    def __init__(self, v, w):
        super().__init__(v)
        self.w = w

    def describe(self):
        return "Child:" + super().describe()

    def old_style(self):
        return super(Child, self).describe()  # noqa: UP008 - the two-argument form


class Vec:
    def __init__(self, *xs):
        self.xs = list(xs)

    def __getitem__(self, i):
        return self.xs[i]

    def __len__(self):
        return len(self.xs)

    def __iter__(self):
        return iter(self.xs)

    def __bool__(self):
        return any(self.xs)

    def __eq__(self, other):
        return isinstance(other, Vec) and self.xs == other.xs

    def __add__(self, other):
        if isinstance(other, Vec):
            return Vec(*(a + b for a, b in zip(self.xs, other.xs)))
        if isinstance(other, int):
            return Vec(*(a + other for a in self.xs))
        return NotImplemented

    def __radd__(self, other):
        return self.__add__(other)

    def __contains__(self, x):
        return x in self.xs

    def __neg__(self):
        return Vec(*(-a for a in self.xs))

    def __repr__(self):
        return f"Vec{tuple(self.xs)}"

    __hash__ = None


class Countdown:
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return self

    def __next__(self):
        if self.n <= 0:
            raise StopIteration
        self.n -= 1
        return self.n


@case(3)
def inheritance_and_super(n):
    c = Child(n, "w")
    b = Base.make(n)
    d = Child.make  # a classmethod bound to the subclass
    try:
        d(1)
    except TypeError as e:
        missing = str(e)
    return (c.describe(), c.old_style(), b.describe(), c.double, Base.static(n),
            c.static(1), missing, isinstance(c, Base), Child.describe(c), c.v, c.w)


@case(5, refused="ran outside the capture")  # (the setter runs natively)
def property_setter(n):
    b = Base(n)
    b.double = 20
    return b.v, b.double


@case()
def user_dunders():
    a, b = Vec(1, 2), Vec(3, 4)
    return (f"{a + b!r}", f"{a + 1!r}", f"{1 + a!r}", a[1], a[-1], len(a), list(a),
            not Vec(0, 0), not a, a == Vec(1, 2), a != b, a == 3, 2 in a, 9 in a,
            f"{-a!r}", [x * 2 for x in a], "yes" if Vec(0) else "no", sorted(Vec(3, 1, 2)),
            max(Vec(1, 5), key=lambda v: -v), list(zip(Vec(1, 2), Vec(3, 4))),
            f"{max(Vec(1), Vec(2, 0), key=lambda v: len(v))!r}")


@case(refused="ran outside the capture")  # (these builtins call the dunders natively)
def builtins_calling_user_dunders():
    a, b = Vec(1, 2), Vec(3, 4)
    return (repr(Vec(1, 2)), str(Point(1, 2)), list(reversed(Vec(1, 2, 3))), bool(Vec(0)),
            f"{Config(1.0)!r}", f"{sum([a, b], Vec(0, 0))!r}", f"{sum([a, b], 0)!r}",
            f"{sum([a, b], start=Vec(1, 1))!r}", f"{max(Vec(1), Vec(2, 0), key=len)!r}")


@case()
def user_dunder_unsupported():
    return Vec(1) + "s"


@case(4)
def user_iterator_protocol(n):
    out = []
    for i in Countdown(n):
        out.append(i)
    x, y = Countdown(2)
    return out, list(Countdown(3)), x, y, max(Countdown(5))


@case(3, refused="class statement")
def class_defined_inside(n):
    class Local(Base):
        scale = n

        def describe(self):
            return f"Local {self.v * self.scale} {super().describe()}"
    return Local(2).describe()


_Pair = namedtuple("_Pair", "a b")


class Pair(_Pair):
    def total(self):
        return self.a + self.b


@case(2, 3)
def namedtuple_method(a, b):
    p = Pair(a, b)
    q = p._replace(b=10)
    x, y = p
    return p.total(), q.total(), x, y, p[0], tuple(p), p._asdict(), p == (a, b)


@dataclasses.dataclass
class Config:
    lr: float
    steps: int = 3
    tags: list = dataclasses.field(default_factory=list)

    def scaled(self, k):
        return dataclasses.replace(self, lr=self.lr * k)


@case(0.5)
def dataclass_usage(lr):
    c = Config(lr, tags=["a"])
    c.steps += 1
    return (c.lr, c.steps, c.tags, c == Config(lr, 4, ["a"]), f"{Config(1.0).lr}",
            dataclasses.fields(c)[0].name)


@case(0.5, refused="ran outside the capture")  # (replace calls the class natively)
def dataclass_replace(lr):
    d = Config(lr).scaled(2)
    return d.lr, d.steps, dataclasses.asdict(d)


@case(2, refused="class statement")
def dataclass_defined_inside(n):
    @dataclasses.dataclass
    class Item:
        x: int
        y: int = n
    return repr(Item(1)), Item(1) == Item(1, n)


# ----------------------------------------------------------------- decorators, partial


def traced(fn):
    log = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        log.append((fn.__name__, args, kwargs))
        return fn(*args, **kwargs)
    wrapper.log = log
    return wrapper


@traced
def _decorated(a, b=1):
    return a * b


@case(3)
def decorators(n):
    @traced
    def local(x):
        return x + n

    def twice(fn):
        return lambda x: fn(fn(x))

    @twice
    def inc(x):
        return x + 1
    return (_decorated(n, b=2), local(1), local.log, local.__name__, inc(n),
            _decorated.__wrapped__(2))


@case(4)
def partials(n):
    p = functools.partial(_signature, 1, c=n)
    q = functools.partial(p, 2, d=9)
    add = functools.partial(lambda a, b: a - b, b=1)
    return p(), p(5, x=1), q(), add(n), list(map(functools.partial(pow, 2), range(n))), \
        functools.reduce(lambda a, b: a * b, range(1, n + 1))


@case(3)
def methods_as_values(n):
    c = Child(n, 0)
    m = c.describe
    fs = [str.upper, "x".join, c.describe, Base.describe]
    return m(), fs[0]("a"), fs[1]("ab"), fs[2](), fs[3](c), getattr(c, "de" + "scribe")()


# ----------------------------------------------------------------- a small "model"


class Layer:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def __call__(self, x):
        return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(self.w, self.b)]


class Model:
    def __init__(self):
        self.layers = [Layer([[1, 2], [3, 4]], [0, 1]), Layer([[1, -1]], [2])]
        self.training = True

    def forward(self, x, *, relu=True):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if relu and i < len(self.layers) - 1:
                x = [max(v, 0) for v in x]
        return x

    __call__ = forward


@case([1, -2])
def small_model(x):
    m = Model()
    out = m(x)
    outs = {k: m(x, relu=k) for k in (True, False)}
    sizes = {f"l{i}": len(layer.b) for i, layer in enumerate(m.layers)}
    stats = {"mean": sum(out) / len(out), **sizes}
    return out, outs, stats, m.forward.__name__


# ----------------------------------------------------------------- the tests


@pytest.mark.parametrize("fn, args, kwargs, refused", CASES)
def test_fidelity(fn, args, kwargs, refused):
    native, captured, caps = run_both(fn, args, kwargs)
    assert captured == native
    if caps:  # (it returned)
        reason = caps[0].refused
        if refused is None:
            assert reason is None, reason
        else:
            assert reason is not None and refused in reason, reason


async def _coro(x):
    return x + 1


def _calls_coro(x):
    c = _coro(x)
    try:
        c.send(None)
    except StopIteration as e:
        return e.value
    return None


def test_coroutine_function_is_refused():
    r, cap = capture.run(None, _coro, [1], {})
    try:
        assert type(r).__name__ == "coroutine"  # made natively, as the program would
        assert cap.refused is not None and "coroutine" in cap.refused, cap.refused
        assert "_coro" in cap.refused
    finally:
        r.close()


def test_coroutine_called_from_interpreted_code():
    r, cap = capture.run(None, _calls_coro, [1], {})
    assert r == _calls_coro(1) == 2
    assert cap.refused is not None and "coroutine" in cap.refused, cap.refused


def test_generator_state_persists_across_runs():
    # a generator made natively, driven by interpreted code: the capture sees its state
    g = _countdown(5)
    next(g)

    def drain(it):
        return list(it)
    r, _ = capture.run(None, drain, [g], {})
    assert r == [4, 3, 2, 1]


def _raises_from():
    try:
        {}["k"]
    except KeyError as e:
        raise ValueError("v") from e


def test_escaping_exception_chain():
    try:
        _raises_from()
    except ValueError as e:
        native = chain(e)
    with pytest.raises(ValueError) as info:
        capture.run(None, _raises_from, [], {})
    assert chain(info.value) == native


def test_exception_type_and_message_escape():
    with pytest.raises(ValueError, match="^v$") as info:
        capture.run(None, _raises_from, [], {})
    assert type(info.value) is ValueError


def test_code_the_library_inherits_from_an_inline_namedtuple_is_the_library_s():
    """numpy.ma's first import (``np.unique`` makes it) runs ``inspect.signature``, which
    builds tokenize's ``TokenInfo`` — a class deriving from a namedtuple made inline, whose
    ``__new__`` exec made: library code, not an escape (capture/library.py scans the bases
    of the library's classes too)."""
    code = ("import sys, numpy as np, dyngrad as dg\n"
            "assert 'numpy.ma' not in sys.modules\n"
            "def f(x):\n"
            "    np.unique(np.array([2, 1, 2]))\n"
            "    return x + 1\n"
            "cf = dg.compile(f)\n"
            "for _ in range(3): cf(dg.ones(2))\n"
            "assert 'numpy.ma' in sys.modules\n"
            "assert cf.fallbacks == [] and [v.calls for v in cf.variants] == [2], "
            "(cf.fallbacks, [v.calls for v in cf.variants])\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_first_trace_in_a_fresh_process_records_no_escape():
    """An assignment through an index (``index_put``) used ``np.unique``, whose first call
    imports numpy.ma: in a fresh process that import's own code ran inside the first trace
    and was flagged as code outside the capture (a fallback, and one more trace)."""
    code = ("import sys, dyngrad as dg\n"
            "assert 'numpy.ma' not in sys.modules\n"
            "def f(x):\n"
            "    a = dg.full((1, 5), -1e4); a[0][3] = 0.0; a[0][[1, 1]] = 2.0\n"
            "    return x + a\n"
            "cf = dg.compile(f)\n"
            "for _ in range(3): cf(dg.ones(1, 5))\n"
            "assert cf.fallbacks == [] and [v.calls for v in cf.variants] == [2], "
            "(cf.fallbacks, [v.calls for v in cf.variants])\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
