"""Backward-graph nodes: the base :class:`Node`, and one gradient accumulator per leaf (the
node of a recorded primitive, ``PrimNode``, lives beside the primitive record in
``dyngrad/ops/primitive.py``; this module sits below the tensor core and knows no Tensor).

A node knows the edges to the nodes that produced its inputs (``next``), the tensors its
backward rule needs (``saved``, with the storage version each had when saved) and the hooks
registered on its outputs. Leaves are reached through an :class:`AccumulateGrad` node that
adds the incoming gradient to ``leaf.grad``.

Note: saved tensors are checked against their storage's version counter when unpacked, so
an in-place change through *any* view sharing the storage is caught at backward time, and
they are dropped as soon as the node has run (unless ``retain_graph``), which is what frees
activation memory during backward.
"""

from __future__ import annotations

import itertools
import traceback
import weakref

from ..dispatch import STATE

_seq = itertools.count()

FREED = object()

FREED_MSG = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")
_FREED_MSG = FREED_MSG  # (the name compiler/ imports)


class Node:
    """Base of backward nodes. Subclasses implement :meth:`apply`."""

    __slots__ = ("next", "seq", "pre_hooks", "retained", "trace", "__weakref__")
    n_outputs = 1

    def __init__(self, next_edges: tuple) -> None:
        self.next = next_edges
        self.seq = next(_seq)
        self.pre_hooks = None  # {out_nr: [hook, ...]}
        self.retained = None  # {out_nr: weakref to the tensor that called retain_grad()}
        self.trace = traceback.format_stack()[:-3] if STATE.anomaly else None

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.name()}>"

    def apply(self, grads: list, create_graph: bool, retain_graph: bool) -> tuple:
        raise NotImplementedError(f"{self.name()} has no backward")

    def release(self) -> None:
        """Free saved tensors (after a backward without retain_graph)."""

    # torch-compatible introspection
    @property
    def next_functions(self) -> tuple:
        return tuple((e[0], e[1]) if e is not None else (None, 0) for e in self.next)

    def register_hook_for_output(self, out_nr: int, hook) -> RemovableHandle:
        if self.pre_hooks is None:
            self.pre_hooks = {}
        hooks = self.pre_hooks.setdefault(out_nr, [])
        hooks.append(hook)
        return RemovableHandle(hooks, hook)


class RemovableHandle:
    """Returned by ``register_hook``; ``remove()`` unregisters the hook."""

    __slots__ = ("_hooks", "_hook")

    def __init__(self, hooks: list, hook) -> None:
        self._hooks, self._hook = hooks, hook

    def remove(self) -> None:
        if self._hook in self._hooks:
            self._hooks.remove(self._hook)




class AccumulatorHook:
    """A hook on a leaf's gradient accumulator: ``fn(leaf)`` after the leaf's own
    post-accumulate-grad hooks, whenever those were registered — PyTorch's post hook on the
    ``AccumulateGrad`` node, where its DDP reducer copies the gradient into a bucket (so it
    sees what the tensor's hooks left in ``.grad``). Registered with
    ``Tensor._register_accumulator_hook``; kept at the end of the leaf's post-accumulate hook
    list, so the engine and the compiler's hook guards treat it as one of them."""

    __slots__ = ("fn", "recorded")

    def __init__(self, fn, recorded: bool = False) -> None:
        self.fn = fn
        self.recorded = recorded  # see RecordedCallback

    def __call__(self, leaf) -> None:
        return self.fn(leaf)


class RecordedCallback:
    """A library callable run by the backward engine (a hook, an end-of-backward callback)
    whose every effect a tracer sees: tensor operations and collectives it records, and
    Python state of its own that ends each step as it began (DDP's reducer: Note [DDP under
    a compiler tracer]). The engine does not make a trace fall back for it, as it does for
    a user's hook."""

    __slots__ = ("fn",)
    recorded = True

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args) -> None:
        return self.fn(*args)


class AccumulateGrad(Node):
    """Adds the incoming gradient to a leaf's ``.grad`` (running the leaf's hooks first)."""

    __slots__ = ("leaf",)

    def __init__(self, leaf) -> None:
        super().__init__(())
        self.leaf = weakref.ref(leaf)

    def name(self) -> str:
        return "AccumulateGrad"

    @property
    def variable(self):
        return self.leaf()
