"""The backward engine: an iterative topological walk of the backward graph.

Dependencies are counted by an explicit-stack traversal from the roots, then nodes run when
every gradient they will receive has arrived (Kahn's algorithm), newest node first among the
ready ones — PyTorch's order. Nothing recurses, so a chain of 100,000 operations works.

A leaf's gradient is accumulated into ``.grad``, then the leaf's post-accumulate-grad hooks
run; callbacks queued during the walk (:func:`queue_callback`) run once it is over, before
``backward()`` returns — where data-parallel training waits for its all-reduces.
"""

from __future__ import annotations

import heapq
import threading

import numpy as np

from ..dispatch import STATE, report_python_call
from ..ops.creation import zeros
from ..tensor import Tensor
from .grad_mode import set_grad_enabled
from .graph import AccumulateGrad, Node


def _reachable(roots: list[Node]) -> dict[Node, int]:
    """Number of incoming edges of every node reachable from ``roots``."""
    deps: dict[Node, int] = {}
    seen = set()
    stack = list(roots)
    for r in roots:
        seen.add(r)
    while stack:
        node = stack.pop()
        for e in node.next:
            if e is None:
                continue
            nxt = e[0]
            deps[nxt] = deps.get(nxt, 0) + 1
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return deps


def _needed(roots: list[Node], deps: dict, targets: set) -> set:
    """Nodes from which some target node can be reached (for autograd.grad's pruning):
    walk a topological order (Kahn's) backwards, so children are decided before parents."""
    remaining = dict(deps)
    order, queue = [], [r for r in roots if remaining.get(r, 0) == 0]
    while queue:
        node = queue.pop()
        order.append(node)
        for e in node.next:
            if e is not None:
                remaining[e[0]] -= 1
                if remaining[e[0]] == 0:
                    queue.append(e[0])
    needed = set()
    for node in reversed(order):
        if node in targets or any(e is not None and e[0] in needed for e in node.next):
            needed.add(node)
    return needed


def _accumulate(buf: list, i: int, g) -> None:
    if buf[i] is None:
        buf[i] = g
    else:
        buf[i] = buf[i] + g


def _check_nan(node: Node, grads) -> None:
    for i, g in enumerate(grads):
        if g is not None and g.dtype.is_floating_point and np.isnan(g._data).any():
            where = "".join(node.trace) if node.trace else "(unknown: create the graph inside " \
                "detect_anomaly() to record where)\n"
            raise RuntimeError(
                f"Function '{node.name()}' returned nan values in its {i}th output.\n"
                f"The forward operation was created at:\n{where}")


class _Running(threading.local):
    """The callback lists of the backward passes running on this thread, innermost last (a
    hook may run a backward pass of its own)."""

    def __init__(self) -> None:
        self.callbacks: list[list] = []
        self.accumulates: list[bool] = []  # (per pass: into every leaf's .grad, no inputs=)


_RUNNING = _Running()


def queue_callback(callback) -> None:
    """Run ``callback()`` when the backward pass running now has finished its walk, before
    ``backward()`` returns (PyTorch's ``Variable._execution_engine.queue_callback``).
    Callbacks run in the order queued, after every gradient has been accumulated into
    ``.grad``; one may queue another. Only a hook (or a ``Function.backward``) can call it.

    >>> def hook(grad):
    ...     dg.autograd.queue_callback(lambda: print("backward done"))
    >>> y = 2 * dg.ones(2, requires_grad=True); h = y.register_hook(hook)
    >>> y.sum().backward()
    backward done
    """
    if not _RUNNING.callbacks:
        raise RuntimeError("Final callbacks can only be installed during backward pass.")
    _RUNNING.callbacks[-1].append(callback)


def running_backward_accumulates() -> bool:
    """Whether the innermost backward pass running now accumulates into every leaf's
    ``.grad`` (``backward()`` without ``inputs=``), rather than being ``autograd.grad`` or a
    ``backward(inputs=...)`` — reentrant checkpointing needs the former (PyTorch's
    ``_is_checkpoint_valid``)."""
    return bool(_RUNNING.accumulates) and _RUNNING.accumulates[-1]


def run_backward(roots: list, grads: list, *, retain_graph: bool, create_graph: bool,
                 inputs: tuple | None = None, allow_unused: bool = False,
                 accumulate: bool = False):
    """Propagate ``grads`` from the ``roots`` tensors, then run the queued callbacks.

    Without ``inputs``, gradients accumulate into leaves' ``.grad`` (``Tensor.backward``).
    With ``inputs``, the gradient reaching each input is returned instead and no ``.grad`` is
    touched (``autograd.grad``) — unless ``accumulate``, when it is accumulated into each
    input's ``.grad`` (``backward(inputs=...)``) and nothing is returned.
    """
    callbacks: list = []
    _RUNNING.callbacks.append(callbacks)
    _RUNNING.accumulates.append(inputs is None)
    try:
        out = _walk(roots, grads, retain_graph, create_graph, inputs, allow_unused)
        if accumulate:
            for t, g in zip(inputs, out):
                if g is not None:
                    accumulate_into(t, g, create_graph, True)
            out = None
        k = 0
        while k < len(callbacks):  # (a callback may queue another)
            if STATE.modes and not getattr(callbacks[k], "recorded", False):
                report_python_call("a callback queued for the end of backward")
            callbacks[k]()
            k += 1
    finally:
        _RUNNING.callbacks.pop()
        _RUNNING.accumulates.pop()
    return out


def accumulate_into(leaf: Tensor, g: Tensor, create_graph: bool, shared: bool) -> None:
    """Add ``g`` to ``leaf.grad``, then run the leaf's post-accumulate-grad hooks."""
    leaf._accumulate_grad(g, create_graph, shared)
    if leaf._post_accumulate_hooks:
        if STATE.modes and not all(getattr(h, "recorded", False)
                                   for h in leaf._post_accumulate_hooks):
            report_python_call("a post-accumulate-grad hook on a leaf")
        for hook in list(leaf._post_accumulate_hooks):
            if hook(leaf) is not None:
                raise RuntimeError(
                    f"Tensor post accumulate grad hooks should return None. (The hook "
                    f"{getattr(hook, '__qualname__', hook)!s} returned a value: it may change "
                    f"the tensor's .grad in place; a hook that replaces the gradient is "
                    f"registered with register_hook.)")


def _walk(roots: list, grads: list, retain_graph: bool, create_graph: bool,
          inputs: tuple | None, allow_unused: bool):
    """The walk itself (see :func:`run_backward`)."""
    for m in STATE.modes:
        m.on_backward(roots, retain_graph)
    start: dict[Node, list] = {}
    shared = set()  # ids of gradient tensors that other code may also hold
    for t, g in zip(roots, grads):
        e = t._edge()
        if e is None:
            continue
        shared.add(id(g))
        node, nr = e
        buf = start.setdefault(node, [None] * node.n_outputs)
        _accumulate(buf, nr, g)

    capture = None
    if inputs is not None:
        capture = {}
        for k, t in enumerate(inputs):
            e = t._edge()
            if e is None:
                if not allow_unused:
                    raise RuntimeError(
                        f"One of the differentiated Tensors (input {k}) does not require grad")
                continue
            capture.setdefault(e, []).append(k)
        results = [None] * len(inputs)

    root_nodes = list(start)
    deps = _reachable(root_nodes)
    needed = None
    if capture is not None:
        needed = _needed(root_nodes, deps, {n for n, _ in capture})

    # A mode may stop the walk at nodes it does not own (a tracer, at the graph its
    # arguments bring): such a node gets its gradients handed over instead of running.
    boundary = None
    if capture is None:
        for m in STATE.modes:
            at = getattr(m, "backward_boundary", None)
            if at:
                boundary = (m, at)
    buffers: dict[Node, list] = dict(start)
    ready = [(-n.seq, id(n), n) for n in root_nodes if deps.get(n, 0) == 0]
    heapq.heapify(ready)
    anomaly = STATE.anomaly
    with set_grad_enabled(create_graph):
        while ready:
            _, _, node = heapq.heappop(ready)
            buf = buffers.pop(node)
            if boundary is not None and id(node) in boundary[1]:
                boundary[0].on_boundary(node, buf, retain_graph)
                _release_children(node, deps, buffers, ready, True, skip=True)
                continue
            # hooks on the node's outputs, then retain_grad
            if node.pre_hooks:
                if STATE.modes and any(node.pre_hooks.values()):
                    report_python_call(f"a tensor hook on the output of {node.name()}")
                for nr, hooks in node.pre_hooks.items():
                    for hook in list(hooks):
                        if buf[nr] is not None:
                            new = hook(buf[nr])
                            if new is not None:
                                buf[nr] = new
                                shared.add(id(new))
            if node.retained:
                for nr, ref in node.retained.items():
                    t = ref()
                    if t is not None and buf[nr] is not None:
                        t._accumulate_grad(buf[nr], create_graph, id(buf[nr]) in shared)
                        shared.add(id(buf[nr]))
            if capture is not None:
                for nr in range(len(buf)):
                    for k in capture.get((node, nr), ()):
                        results[k] = buf[nr]
                if node not in needed or isinstance(node, AccumulateGrad):
                    _release_children(node, deps, buffers, ready, retain_graph, skip=True)
                    continue
            if isinstance(node, AccumulateGrad):
                leaf = node.leaf()
                if leaf is not None:
                    g = buf[0]
                    if STATE.modes and leaf._hooks:
                        report_python_call("a tensor hook on a leaf")
                    for hook in list(leaf._hooks or ()):
                        new = hook(g)
                        if new is not None:
                            g = new
                            shared.add(id(g))
                    accumulate_into(leaf, g, create_graph, id(g) in shared)
                continue
            if len(buf) > 1 and None in buf:
                buf = [b if b is not None else _zeros_for(node, i) for i, b in enumerate(buf)]
            in_grads = node.apply(buf, create_graph, retain_graph)
            if anomaly and STATE.anomaly_check_nan:
                _check_nan(node, in_grads)
            meta = node.in_meta
            sent = buf[:]  # gradients this node passes on; one sent twice is shared
            for i, e in enumerate(node.next):
                if e is None:
                    continue
                nxt = e[0]
                g = in_grads[i]
                if g is not None:
                    if not isinstance(g, Tensor):
                        raise TypeError(f"{node.name()} returned {type(g).__name__} as a "
                                        f"gradient; expected a Tensor or None")
                    if g._data.shape != meta[i][0]:
                        raise RuntimeError(
                            f"Function {node.name()} returned an invalid gradient at index "
                            f"{i} - got {list(g.shape)} but expected shape compatible with "
                            f"{list(meta[i][0])}")
                    for prev in sent:
                        if prev is g:
                            shared.add(id(g))
                            break
                    sent.append(g)
                    b = buffers.get(nxt)
                    if b is None:
                        b = buffers[nxt] = [None] * nxt.n_outputs
                    nr = e[1]
                    if b[nr] is None:
                        b[nr] = g
                    else:
                        b[nr] = b[nr] + g
                left = deps[nxt] - 1
                deps[nxt] = left
                if not left:
                    if nxt in buffers:
                        heapq.heappush(ready, (-nxt.seq, id(nxt), nxt))
                    else:
                        _release_children(nxt, deps, buffers, ready, retain_graph, skip=True)
    if boundary is not None:
        boundary[0].boundary_done(retain_graph)
    if capture is not None:
        for k, r in enumerate(results):
            if r is None and not allow_unused:
                raise RuntimeError(
                    f"One of the differentiated Tensors (input {k}) appears to not have been "
                    f"used in the graph. Set allow_unused=True if this is the desired behavior.")
        return tuple(results)
    return None


def _zeros_for(node: Node, i: int):
    shape, dtype = node.out_meta[i]
    return zeros(shape, dtype=dtype)


def _release_children(node, deps, buffers, ready, retain_graph, skip):
    """A node that receives no gradient: its children lose one dependency each."""
    stack = [node]
    while stack:
        n = stack.pop()
        if not retain_graph:
            n.release()
        for e in n.next:
            if e is None:
                continue
            nxt = e[0]
            deps[nxt] -= 1
            if deps[nxt] == 0:
                if nxt in buffers:
                    heapq.heappush(ready, (-nxt.seq, id(nxt), nxt))
                else:
                    stack.append(nxt)
