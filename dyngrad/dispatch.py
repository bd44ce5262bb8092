"""The single dispatch point and the stack of dispatch modes.

Every tensor operation ends in :func:`dispatch`. With no mode pushed (plain eager), that is
one truthiness check of a list and a call of the primitive's numpy ``impl``. A mode — the
tracer, forward-mode AD, a test spy — is pushed with :func:`push_mode` and then sees every
operation (``dispatch``), every read of tensor data into Python (``on_read``) and every change
of state a trace must replay (``on_write``: ``.grad``, ``.data``, ``requires_grad``, in-place
updates).

Note: modes form a stack. The top mode receives an operation; if it issues operations of its
own (a jvp rule, the eager computation it wraps) while suspended with :func:`suspend`, those go
to the mode below. Reads and writes are reported to every active mode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DispatchMode", "dispatch", "push_mode", "suspend", "active_modes", "read_scalar",
           "report_read", "report_write", "report_new", "report_attr", "report_object",
           "read_flag"]


class _State(threading.local):
    """Per-thread autograd state (like PyTorch's thread-local grad mode)."""

    def __init__(self) -> None:
        self.grad_enabled = True
        self.modes: list[DispatchMode] = []
        self.anomaly = False
        self.anomaly_check_nan = True


STATE = _State()


class DispatchMode:
    """Base class of dispatch modes. Override what you need."""

    transparent = False  # True: the mode only records or observes operations (a tracer, a
    #                      spy), so a function transform under it builds no graph for it
    def dispatch(self, prim, args: tuple, params: dict):
        """Handle one operation. The default runs it (with this mode suspended)."""
        with suspend(self):
            return dispatch(prim, *args, **params)

    def on_read(self, tensor, kind: str) -> Any:
        """Python is reading ``tensor``'s data (``kind``: 'bool', 'item', 'numpy', ...).
        For 'item' and 'float' a mode may return a number to use instead."""

    def on_write(self, tensor, what: str, value: Any) -> None:
        """State change: ``what`` is 'grad', 'data', 'requires_grad' or 'inplace'."""

    def on_new(self, tensor, shared_array=None) -> None:
        """A tensor was made from data (``dg.tensor``, a constant inside an op), not by an op;
        ``shared_array`` is the numpy array it shares memory with (``from_numpy``), if any."""

    def on_copied(self, array) -> None:
        """A numpy array's values were copied into a new tensor (``dg.tensor(arr)``): a
        tracer bakes them in, so it must notice when they change."""

    def on_attr(self, owner: Any, name: str, value: Any) -> None:
        """Tensor-valued attribute ``owner.name`` was read (``p.grad``), giving ``value``."""

    def on_python_call(self, what: str) -> None:
        """User Python code runs from inside dyngrad (a tensor hook, a forward hook): a
        tracer cannot replay its side effects."""

    def on_debug_print(self, args: tuple, sep: str, end: str) -> None:
        """``dg.debug_print(*args)`` is printing."""

    def on_collective(self, work: Any, started: bool) -> None:
        """A recorded collective with ``async_op=True`` was started (``started``), or
        waited for (a mode with ``records_collectives``; see dyngrad/distributed)."""

    def on_flag(self, owner: Any, name: str, value: Any) -> None:
        """Library code decided what to run from the flag ``owner.name`` (``value``), which
        no version counter covers (DDP's ``require_backward_grad_sync``): a trace guards it.
        Library code reports a flag before it changes it, too (``no_sync()``)."""

    def on_backward(self, roots: list, retain_graph: bool) -> None:
        """The backward engine starts from ``roots``."""

    def on_object(self, obj: Any) -> None:
        """A stateful object with a ``_version`` counter (a module, an optimizer) was used."""

    def on_scalar(self, owner: Any, key: Any, value: Any) -> Any:
        """A Python number was read from ``owner[key]`` (an optimizer hyperparameter, a
        module attribute) through a tracked accessor. Return the value to use — a tracer may
        substitute a runtime input for it."""
        return value


def dispatch(prim, *args, **params):
    """Run primitive ``prim`` on ``args`` (Tensors or literal numbers) with ``params``."""
    modes = STATE.modes
    if modes:
        return modes[-1].dispatch(prim, args, params)
    return prim.apply(args, params)


def report_read(tensor, kind: str) -> Any:
    """Tell the modes Python reads ``tensor``; a mode may return a stand-in for the number
    read (a tracer returns a number that remembers where it came from). None: no stand-in."""
    out = None
    for m in STATE.modes:
        r = m.on_read(tensor, kind)
        if r is not None:
            out = r
    return out


def report_write(tensor, what: str, value: Any) -> None:
    for m in STATE.modes:
        m.on_write(tensor, what, value)


def report_python_call(what: str) -> None:
    for m in STATE.modes:
        m.on_python_call(what)


def report_new(tensor, shared_array=None) -> None:
    for m in STATE.modes:
        m.on_new(tensor, shared_array)


def report_copied(array) -> None:
    for m in STATE.modes:
        m.on_copied(array)


def report_attr(owner: Any, name: str, value: Any) -> None:
    for m in STATE.modes:
        m.on_attr(owner, name, value)


def report_object(obj: Any) -> None:
    for m in STATE.modes:
        m.on_object(obj)


def read_scalar(owner: Any, key: Any) -> Any:
    """Read ``owner[key]`` and tell the active modes where the number came from
    (optimizers read hyperparameters through this, so a tracer can guard on them or make them
    runtime inputs instead of baking them in)."""
    value = owner[key]
    for m in STATE.modes:
        value = m.on_scalar(owner, key, value)
    return value


def read_flag(owner: Any, name: str) -> Any:
    """``getattr(owner, name)``, told to the active modes (see ``DispatchMode.on_flag``): a
    bool or None (a tracer guards it by identity)."""
    value = getattr(owner, name)
    for m in STATE.modes:
        m.on_flag(owner, name, value)
    return value


def active_modes() -> tuple:
    return tuple(STATE.modes)


@contextmanager
def push_mode(mode: DispatchMode) -> Iterator[DispatchMode]:
    """Make ``mode`` the top of the dispatch-mode stack for the duration of the block."""
    STATE.modes.append(mode)
    try:
        yield mode
    finally:
        if not STATE.modes or STATE.modes[-1] is not mode:
            raise RuntimeError("dispatch modes were exited out of order")
        STATE.modes.pop()


class suspend:  # (lower case: a context manager, named as contextlib.suppress is)
    """Temporarily take ``mode`` (and anything above it) off the stack::

        with suspend(self):  # inside a mode: run the operation below it
            out = dispatch(prim, *args, **params)

    (A class rather than a ``@contextmanager`` generator: a tracer enters it around every
    operation it records, and the generator's machinery is four more Python calls each.)"""

    __slots__ = ("mode", "modes", "saved")

    def __init__(self, mode: DispatchMode) -> None:
        self.mode = mode

    def __enter__(self) -> None:
        modes = self.modes = STATE.modes
        i = len(modes) - 1 - modes[::-1].index(self.mode)
        self.saved = modes[i:]
        del modes[i:]

    def __exit__(self, *exc) -> None:
        self.modes.extend(self.saved)
