"""Code the compiler generates (guard functions, call paths, drivers, source readers).

It is compiled under one file name, so the capture's watchdog knows it for the library's own
code when it runs during a trace (a compiled function called inside another's trace checks
its guards natively).

Compiling it is a visible part of a restored variant's first call (W8's guards and call path:
~16 ms in six sources), so with the plan cache on (``DYNGRAD_PLAN_CACHE``, ``plancache.mode()
== "on"``) the code object of each source is kept beside the plans, marshalled, under a key
of the source text, its mode and the interpreter's bytecode magic — and in the process, by
the same key. An entry that does not read back (checksum, magic, marshal) is compiled again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import types

FILENAME = "<dyngrad generated>"
_MAGIC = b"DGCODE01"
_codes: dict[str, types.CodeType] = {}  # key -> code, this process's


def _compiled(source: str, mode: str) -> types.CodeType:
    """The code object of ``source`` compiled in ``mode`` under :data:`FILENAME`: from this
    process's memo, the disk cache (plan cache on), or ``compile``."""
    h = hashlib.sha256(importlib.util.MAGIC_NUMBER + mode.encode() + b"\0")
    h.update(source.encode())
    key = h.hexdigest()
    code = _codes.get(key)
    if code is not None:
        return code
    from .backends.llvm import cache
    path = _disk_path(key, cache)
    payload = None if path is None else cache._read(path, _MAGIC)
    if payload is not None:
        try:
            code = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):
            code = None
        if not isinstance(code, types.CodeType) or code.co_filename != FILENAME:
            code = None
    if code is None:
        code = compile(source, FILENAME, mode)
        if path is not None:
            cache._write(path, marshal.dumps(code), _MAGIC)
    if len(_codes) > 4096:  # (a long-lived process tracing without end: bounded)
        _codes.clear()
    _codes[key] = code
    return code


def _disk_path(key: str, cache):
    """Where the code of ``key`` is kept in ``cache``'s directory, or None (the plan cache
    not on, or a directory others can write to)."""
    from . import plancache
    if plancache.mode() != "on":
        return None
    d = cache.directory()
    if not plancache._private(d):
        return None
    return d / f"{key}.code"


def exec_generated(source: str, ns: dict) -> None:
    """``exec`` generated ``source`` in ``ns``."""
    exec(_compiled(source, "exec"), ns)  # noqa: S102 - generated, no user text


def eval_generated(source: str, ns: dict):
    """``eval`` a generated expression in ``ns``."""
    return eval(_compiled(source, "eval"), ns)  # noqa: S307 - generated, no user text
