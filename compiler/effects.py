"""Effect replay: the Python side effects of a traced call, made again by each compiled call.

The capture records the changes a call makes to Python state from before it —
attribute and item stores, globals, closure cells, list/dict/set mutators, print — with
the values stored; those values leave the graph beside the result (the out_spec is
``(result, [payloads])``), and after each compiled call the changes are made again, in
order, with this call's values. A location the call writes that it also read at entry is
not covered by its owner's version: a tensor there is re-read each call (a 'source'
binding: ``self.hidden = h.detach()``), a tuple of tensors and numbers (an LSTM's ``(h,
c)``) has its length guarded and each item treated so, a number is guarded by value (or is
a runtime input once it changed), anything else by identity. A module the call stores attributes
on has its version bumped as in eager; its guards expect the version after the call's own
stores (the delta is checked at trace time to be exactly those stores).
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import TYPE_CHECKING

from dyngrad.tensor import Tensor

from .generated import exec_generated

if TYPE_CHECKING:
    from .trace import Trace, Tracer


def plan_effects(trace: Trace, cap, tracer: Tracer, dynamic: set) -> Trace:
    """After ``tracer.finish``: the trace with its effect entries and the version boxes to
    move on (a new Trace: the finished one is not changed); the bindings of re-read
    locations and the guards on the locations' entry values are set up on the way. Counters
    found are added to ``dynamic`` (runtime inputs from the next trace)."""
    from .capture.checks import Equals, Identity, TupleOf, is_plain
    from .capture.sources import Item
    from .trace import Via, slot_key
    entries = []
    stores: dict = {}
    for e in cap.effects:
        target = e.target
        if e.kind in ("setattr", "delattr"):
            stores[id(target)] = stores.get(id(target), 0) + 1
            try:
                target = weakref.ref(target)
            except TypeError:
                pass
        entries.append((e.kind, target, e.key))
        if e.entry is None or e.kind in ("method", "print"):
            continue
        value, src = e.entry
        if isinstance(value, Tensor):
            b = _rebindable(tracer, value, slot_key, Via)
            if b is not None:  # (one with autograd history stays bound by identity: a new
                #                 one traces again)
                b.now_at(_source_reader(src), str(src), value._requires_grad)
                cap.checks.pop(("id", src), None)
                continue
        items = _tuple_items(tracer, value, slot_key, Via, is_plain)
        if items is not None:
            # a tuple of tensors and numbers (an LSTM's (h, c)): its length guarded, each
            # tensor the trace read re-read from its place, each number guarded by value
            cap.checks.pop(("id", src), None)
            cap.guard(TupleOf(src, len(value)))
            for i, (x, b) in enumerate(items):
                item = Item(src, i)
                if b is not None:
                    b.now_at(_source_reader(item), str(item), x._requires_grad)
                elif not isinstance(x, Tensor):
                    cap.guard(Equals(item, x))
            continue
        if e.runtime:
            continue  # a runtime input: read each call
        key = ("eq", src) if is_plain(value) else ("id", src)
        if key not in cap.checks:  # (a module attribute is otherwise covered by the version)
            cap.guard(Equals(src, value) if is_plain(value) else Identity(src, value))
        if type(value) in (int, float) and type(value) is type(e.value) and e.value != value:
            dynamic.add(src.describe())  # a counter: a runtime input from the next trace
    updates = list(trace.version_updates)
    objects = list(trace.objects)
    for check, ref, n in cap.version_objects:
        obj = ref()
        if obj is not None and obj._version - check.version == n:
            check.box[0] = obj._version
            object.__setattr__(check, "moving", True)  # (its guard reads the box)
            updates.append((check.box, ref))
    for k, (ref, version) in enumerate(objects):  # modules the tracer saw called
        obj = ref()
        n = stores.get(id(obj), 0) if obj is not None else 0
        if n and obj._version - version == n:
            box = [obj._version]
            objects[k] = (ref, box)
            updates.append((box, ref))
    return replace(trace, effects=entries, version_updates=updates, objects=objects)


def _rebindable(tracer, value, slot_key, Via):
    """The binding of a tensor the trace read and a replayed store replaces, when it can
    be re-read from its place each call (bound by reference, no autograd history)."""
    b = tracer.input_binding.get(slot_key(value))
    if b is not None and b.kind is Via.REF and b.target() is value and not value._requires_grad:
        return b
    return None


def _tuple_items(tracer, value, slot_key, Via, is_plain) -> list | None:
    """For a non-empty tuple of numbers and tensors whose tensors the trace either did not
    read or can re-read (:func:`_rebindable`): ``[(item, its binding or None)]``; else
    None (the tuple stays guarded by identity)."""
    if type(value) is not tuple or not value:
        return None
    items = []
    for x in value:
        if isinstance(x, Tensor):
            b = _rebindable(tracer, x, slot_key, Via)
            if b is None and tracer.input_binding.get(slot_key(x)) is not None:
                return None  # (read, but with autograd history or not by reference)
            items.append((x, b))
        elif is_plain(x):
            items.append((x, None))
        else:
            return None
    return items


def _source_reader(src):
    """A function of ``flat`` reading ``src``'s current value (None when it cannot)."""
    from .capture.sources import Namer
    ns: dict = {}
    e = src.expr(Namer(ns))
    exec_generated(f"def read(flat):\n    try:\n        return {e}\n"
                   f"    except Exception:\n        return None", ns)
    return ns["read"]


def continue_backward(continuation, flat: list, outs: list) -> None:
    """The backward a call ran inside, continued eagerly into its arguments' autograd
    history with the gradients the compiled graph computed for them (Tracer note)."""
    from dyngrad.autograd import backward
    roots, retain = continuation
    backward([flat[i] for i, _ in roots], [Tensor._fresh(outs[k]) for _, k in roots],
             retain_graph=retain)


def replay(trace: Trace, values: list) -> None:
    """Make the call's Python effects again with this call's values (see above)."""
    for (kind, target, key), v in zip(trace.effects, values):
        if type(target) is weakref.ref:
            target = target()
        if kind == "setattr":
            setattr(target, key, v)
        elif kind in ("setitem", "global"):
            target[key] = v
        elif kind == "cell":
            target.cell_contents = v
        elif kind == "delcell":
            del target.cell_contents
        elif kind == "method":
            getattr(target, key)(*v[0], **v[1])
        elif kind == "print":
            print(*v[0], **v[1])
        elif kind == "delattr":
            delattr(target, key)
        elif kind in ("delitem", "delglobal"):
            del target[key]
        else:
            raise AssertionError(kind)
    for box, ref in trace.version_updates:
        o = ref()
        if o is not None:
            box[0] = o._version
