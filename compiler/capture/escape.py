"""The watchdog: user code that runs outside the interpreter during a capture.

The capture interprets the user's code; the library runs natively. If native code calls
back into user code the capture does not see — a tensor hook the backward engine calls, a
user ``__eq__`` a dict lookup calls, code the interpreter refused — that code's reads are not
guarded, so the trace must not be used. This module notices: on Python 3.12+ through
``sys.monitoring`` (``PY_START``, disabled per library code object after its first start, so
it costs nothing in steady state), on 3.11 through ``sys.settrace`` on the capturing thread.
"""

from __future__ import annotations

import contextlib
import dis
import gc
import sys
import threading

from .library import is_library_code

_ACTIVE: list = []  # the watchdogs of running captures (innermost last)


class Watchdog:
    """Within ``with Watchdog(report):``, ``report(code)`` is called for each user code
    object that starts running natively on this thread."""

    def __init__(self, report) -> None:
        self.report = report
        self.thread = threading.get_ident()
        self.paused = 0

    def __enter__(self) -> Watchdog:
        _ACTIVE.append(self)
        if len(_ACTIVE) == 1:
            _install()
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)
        if not _ACTIVE:
            _uninstall()


@contextlib.contextmanager
def paused():
    """Code the capture runs natively on purpose (eager work outside the trace): no escape."""
    w = _ACTIVE[-1] if _ACTIVE else None
    if w is not None:
        w.paused += 1
    try:
        yield
    finally:
        if w is not None:
            w.paused -= 1


# The import system's protocol: finders and loaders installed by tools (setuptools' hooks)
# run when the library imports lazily; what they return is a module.
# And finalizers: ``__del__`` runs when the collector frees something, whatever the call is
# doing; it is no part of what the call computes.
_IMPORT_PROTOCOL = frozenset({"find_spec", "find_module", "exec_module", "create_module",
                              "load_module", "invalidate_caches", "get_code", "get_source",
                              "__del__"})


def _gc_callbacks() -> set:
    """The code of the collector's callbacks (``gc.callbacks``: a test framework's timer,
    say): they run when the collector does, whatever the call is doing."""
    return {getattr(cb, "__code__", None) for cb in gc.callbacks} - {None}


def _seen(code) -> bool:
    """Whether a start of ``code`` is an escape to report (and reports it)."""
    if is_library_code(code) or code.co_name in _IMPORT_PROTOCOL:
        return False
    if code in _gc_callbacks():
        return False
    w = _ACTIVE[-1] if _ACTIVE else None
    if w is None or w.paused or threading.get_ident() != w.thread:
        return False
    w.report(code)
    return True


if sys.version_info >= (3, 12):
    _mon = sys.monitoring
    _TOOL = None

    def _on_start(code, offset):
        if is_library_code(code) or code.co_name in _IMPORT_PROTOCOL:
            return _mon.DISABLE
        _seen(code)
        return None

    def _install() -> None:
        global _TOOL
        if _TOOL is None:
            for tool in (4, 3, 5):
                if _mon.get_tool(tool) is None:
                    _mon.use_tool_id(tool, "dyngrad capture")
                    _mon.register_callback(tool, _mon.events.PY_START, _on_start)
                    _TOOL = tool
                    break
            else:
                raise RuntimeError("dyngrad.compile: no sys.monitoring tool id is free for "
                                   "the capture's watchdog")
        _mon.restart_events()
        _mon.set_events(_TOOL, _mon.events.PY_START)

    def _uninstall() -> None:
        if _TOOL is not None:
            _mon.set_events(_TOOL, 0)
else:
    # sys.settrace rather than sys.setprofile: its global function sees only the start of
    # each Python frame (no C calls, no returns), and returning None asks for no line
    # events — a third of the callbacks. A debugger's tracer keeps running underneath.
    # Unlike PY_START, settrace's 'call' also comes when a generator is resumed — by the
    # collector closing one a test framework left behind, say: only a start counts (the
    # frame at a RESUME with oparg 0), as on 3.12+.
    _previous: list = []
    # id(code) -> (code, whether it is the library's: a start to ignore). Keyed by id, not
    # by the code: a code object's hash hashes its bytecode, names and constants (0.1-0.4 µs
    # on every Python call the capture makes), and two equal code objects from different
    # files are not the same code. The entry holds the code, so its id is not reused.
    _library: dict = {}
    _GENERATORS = 0x20 | 0x80 | 0x200  # CO_GENERATOR, CO_COROUTINE, CO_ASYNC_GENERATOR
    _RESUME = dis.opmap["RESUME"]

    def _resumed(frame) -> bool:
        if not frame.f_code.co_flags & _GENERATORS:
            return False
        c, i = frame.f_code.co_code, frame.f_lasti
        return not (c[i] == _RESUME and c[i + 1] == 0)

    def _trace(frame, event, arg):
        code = frame.f_code
        known = _library.get(id(code))
        if known is None:
            if len(_library) > 1 << 16:  # (bounded: programs that exec new code)
                _library.clear()
            known = _library[id(code)] = (
                code, is_library_code(code) or code.co_name in _IMPORT_PROTOCOL)
        if not known[1] and not _resumed(frame):
            _seen(code)
        prev = _previous[-1] if _previous else None
        return prev(frame, event, arg) if prev is not None else None

    def _install() -> None:
        _previous.append(sys.gettrace())
        sys.settrace(_trace)

    def _uninstall() -> None:
        sys.settrace(_previous.pop() if _previous else None)
