"""Which code is the library's and which the user's, and what the library promises.

The capture interprets the user's code and runs the library's natively. "The library" is
dyngrad and the compiler, the standard library, and numpy, llvmlite and networkx: code whose
functions are not rebound between calls, whose classes are not patched, and whose objects
keep their Python state behind version counters (modules, optimizers) or in tensors the
tracer binds. Everything else — the program, its helper modules, third-party model code —
is the user's, and each value it reads is guarded.

Note: library code that calls back into user code (``Module.__call__`` calling ``forward``,
``no_grad`` used as a decorator, ``func.grad(f)``) is interpreted too, so the callback's
reads are seen: see :func:`calls_user_code`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import sysconfig
import types

import numpy as np

import dyngrad

from ..generated import FILENAME


def _dirs() -> tuple:
    packages = {os.path.dirname(dyngrad.__file__),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # compiler/
                os.path.dirname(np.__file__)}
    for package in ("llvmlite", "networkx"):  # (found without importing them)
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            packages.add(os.path.dirname(spec.origin))
    stdlib = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib")} - {None}
    return tuple(os.path.realpath(p) + os.sep for p in packages), \
        tuple(os.path.realpath(p) + os.sep for p in stdlib)


_PACKAGES, _STDLIB = _dirs()
_by_file: dict[str, bool] = {}


def is_library_file(filename: str) -> bool:
    """Whether code from ``filename`` is the library's (see the module docstring): the
    packages named there, and the standard library without its site-packages."""
    r = _by_file.get(filename)
    if r is None:
        if filename.startswith("<frozen ") or filename == FILENAME:
            r = True
        elif filename.startswith("<"):
            r = False  # exec'd or interactive code: the user's
        else:
            path = os.path.realpath(filename)
            r = path.startswith(_PACKAGES) or (
                path.startswith(_STDLIB) and "site-packages" not in path
                and "dist-packages" not in path)
        _by_file[filename] = r
    return r


def is_library_code(code: types.CodeType) -> bool:
    if code.co_filename == "<string>":  # made by exec: a namedtuple's or dataclass's method?
        return code in _generated_library_code()
    return is_library_file(code.co_filename)


_GENERATED: set = set()
_SCANNED: set = set()


def _generated_library_code() -> set:
    """Code objects the library made with exec: the ``__new__`` of its namedtuples and the
    methods ``dataclasses`` wrote for its dataclasses (found by scanning its modules once
    each) — also those its classes inherit from a namedtuple made inline, as the standard
    library's ``class TokenInfo(collections.namedtuple(...))`` (tokenize, which
    ``inspect.signature`` runs: numpy.ma's import does, so a first ``np.unique`` inside a
    trace did)."""
    for name, mod in list(sys.modules.items()):
        if name in _SCANNED or mod is None:
            continue
        _SCANNED.add(name)  # (once each, library or not)
        if not is_library_module(mod):
            continue
        for cls in list(vars(mod).values()):
            if not isinstance(cls, type) or getattr(cls, "__module__", None) != name:
                continue
            for klass in cls.__mro__[:-1]:  # (not object)
                for attr in vars(klass).values():
                    fn = getattr(attr, "__func__", attr)
                    code = getattr(fn, "__code__", None)
                    if code is not None and code.co_filename == "<string>":
                        _GENERATED.add(code)
    return _GENERATED


def is_library_module(mod: types.ModuleType) -> bool:
    d = getattr(mod, "__dict__", None)  # (not getattr: a module may define __getattr__)
    f = d.get("__file__") if isinstance(d, dict) else None
    name = d.get("__name__", "") if isinstance(d, dict) else ""
    if not isinstance(f, str):  # built-in and namespace modules
        return name in sys.builtin_module_names or str(name).split(".")[0] in \
            ("dyngrad", "compiler", "numpy")
    return is_library_file(f)


def is_library_type(t: type) -> bool:
    """Classes defined by the library (or built in)."""
    mod = sys.modules.get(t.__module__)
    if mod is None:
        return t.__module__ == "builtins"
    return is_library_module(mod)


def is_library_function(fn) -> bool:
    code = getattr(fn, "__code__", None)
    return code is None or is_library_code(code)


# ----------------------------------------------------------------- library that calls back

_INLINE: set = set()


def _inline_defaults() -> None:
    from dyngrad import nn
    _INLINE.update({nn.Module.__call__, nn.Sequential.forward, nn.Module.apply})


def is_user_callable(x) -> bool:
    """A callable whose body is the user's (a function, a method, an object with a
    ``__call__`` of its own, a module)."""
    if isinstance(x, types.FunctionType):
        return not is_library_code(x.__code__)
    if isinstance(x, types.MethodType):
        return is_user_callable(x.__func__)
    if isinstance(x, functools.partial):
        return is_user_callable(x.func)
    if isinstance(x, type):
        return not is_library_type(x)
    if isinstance(x, dyngrad.nn.Module):
        return True
    call = next((k.__dict__["__call__"] for k in type(x).__mro__ if "__call__" in k.__dict__),
                None)
    return isinstance(call, types.FunctionType) and not is_library_code(call.__code__)


def calls_user_code(fn: types.FunctionType, args, kwargs) -> bool:
    """Whether a library function must be interpreted: it is one that runs callbacks
    (``Module.__call__``), or a user callable reaches it through its arguments or closure."""
    if not _INLINE:
        _inline_defaults()
    if fn in _INLINE or _closes_over_user_code(fn, 3):
        return True
    return any(_reaches_user_code(a) for a in args) or \
        any(_reaches_user_code(a) for a in kwargs.values())


def _reaches_user_code(x) -> bool:
    return is_user_callable(x) or isinstance(x, types.FunctionType) and \
        _closes_over_user_code(x, 3)


def _closes_over_user_code(fn, depth: int) -> bool:
    """A user callable in ``fn``'s closure (or ``__wrapped__``), or in the closure of a
    library function there (``func.grad(f)`` wraps a wrapper of ``f``)."""
    inner = [getattr(fn, "__wrapped__", None)]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            inner.append(cell.cell_contents)
        except ValueError:
            continue
    for x in inner:
        if x is None or x is fn:
            continue
        if is_user_callable(x):
            return True
        if depth > 0 and isinstance(x, types.FunctionType) and _closes_over_user_code(
                x, depth - 1):
            return True
    return False
