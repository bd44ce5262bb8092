"""Backward-graph nodes: one per recorded operation, plus one gradient accumulator per leaf.

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

_FREED_MSG = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")


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


class PrimNode(Node):
    """Backward of one primitive: its vjp rule applied to the saved inputs and output."""

    __slots__ = ("prim", "params", "in_meta", "needs", "saved", "versions", "saved_out",
                 "out_meta")

    def __init__(self, prim, params: dict, args: tuple, out, edges: tuple) -> None:
        Node.__init__(self, edges)
        self.prim = prim
        self.params = params
        # (shape, numpy dtype) per input; literals are ((), None)
        self.in_meta = [(a._data.shape, a._data.dtype) if hasattr(a, "_data") else ((), None)
                        for a in args]
        self.needs = [e is not None for e in edges]
        save = prim.save
        if callable(save):
            save = save(self.needs)
        if save:
            saved = [None] * len(args)
            versions = [0] * len(args)
            for i in save:
                a = saved[i] = args[i]
                if hasattr(a, "_storage"):
                    versions[i] = a._storage.version
            self.saved, self.versions = saved, versions
        else:
            self.saved = self.versions = ()
        # the output is kept by weak reference (a strong one would be a cycle out → node →
        # out); while it lives, backward uses the object itself, so identity-keyed state such
        # as forward-mode tangents still applies to it
        self.saved_out = (out._data, out._storage, out._storage.version, weakref.ref(out)) \
            if prim.save_out else None
        self.out_meta = (out._data.shape, out._data.dtype)

    @property
    def in_shapes(self) -> tuple:
        return tuple(m[0] for m in self.in_meta)

    @property
    def in_dtypes(self) -> tuple:
        from ..dtypes import _BY_NP
        return tuple(_BY_NP[m[1]] if m[1] is not None else None for m in self.in_meta)

    def name(self) -> str:
        return self.prim.backward_name

    def _check(self, t, version, what):
        if t._storage.version != version:
            shape = list(t.shape)
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [{t.dtype.name} {shape}], which is {what} of "
                f"{self.name()}, is at version {t._storage.version}; expected version {version} "
                f"instead. Hint: clone() the tensor before modifying it in place, or do the "
                f"in-place change after backward().")

    def unpack(self, create_graph: bool):
        from ..tensor import Tensor
        saved = self.saved
        if saved is FREED:
            raise RuntimeError(_FREED_MSG)
        for i, (s, v) in enumerate(zip(saved, self.versions)):
            if isinstance(s, Tensor):
                self._check(s, v, f"input {i}")
        out = None
        if self.saved_out is not None:
            arr, storage, version, ref = self.saved_out
            out = ref()
            if out is None or out._data is not arr or out._node is not self:
                out = Tensor._shared(arr, storage)
                if create_graph:
                    out._node, out._requires_grad = self, True
            self._check(out, version, "output 0")
        if not saved:
            saved = (None,) * len(self.in_meta)
        return saved, out

    def apply(self, grads, create_graph, retain_graph):
        xs, out = self.unpack(create_graph)
        if not retain_graph:
            self.release()
        return self.prim.vjp(self, grads[0], xs, out)

    def release(self) -> None:
        if self.saved or self.saved_out is not None:
            self.saved = FREED
            self.saved_out = None


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
