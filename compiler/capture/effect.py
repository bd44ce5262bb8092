"""A change a traced call makes to Python state that existed before it (see
``session.Capture``): recorded by the capture, replayed after every compiled call
(``compiler/effects.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sources import Source


@dataclass
class Effect:
    """A change the call made to Python state that existed before it (replayed after every
    compiled call, or the reason the trace is refused)."""

    kind: str  # 'setattr', 'delattr', 'setitem', 'delitem', 'global', 'cell', 'method'
    target: Any  # the object (or globals dict, or cell)
    key: Any  # attribute name, item key, global name, method name
    value: Any  # the value stored (or the method's arguments)
    where: str
    what: str  # the target's source, for messages
    src: Source | None = None  # the location written (its value at entry may be read)
    entry: Any = None  # (value, source) the location held at entry, if the call read it
    runtime: bool = False  # that entry value is a runtime input of the trace
    payload: Any = None  # the value (or the method's/print's arguments) to replay, made by
    #                      :meth:`Capture.summarize`: containers made in the call rebuilt,
    #                      objects from before the call as Kept


# the mutators of builtin containers whose result tells nothing of the contents: replayed
# without a guard on what the container holds
BLIND_MUTATORS = frozenset({"append", "extend", "insert", "clear", "add", "update",
                            "discard", "appendleft", "extendleft"})
