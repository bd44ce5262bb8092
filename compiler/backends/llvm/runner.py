"""The LLVM backend's executor, first stage: native kernels for the elementwise fusion groups,
numpy for everything else.

:func:`compile_graph` partitions the graph with :func:`compiler.passes.fusion.fuse`, lowers
every elementwise group the code generator supports (float32 and bool; see ``codegen``) into
one LLVM module per graph — a kernel per group, the vector math shared — and keeps the other
groups as the interpreter's steps, the very ``impl`` each primitive runs eagerly. :func:`run`
has the interpreter's interface (``run(plan, inputs, scalars) -> outputs``, raising
``GuardFailed``), so a variant swaps one for the other.

Note (what is not native yet, and why results can differ from eager): reductions, matmul,
indexing, movement, random and scalar groups still run their numpy steps, one Python step
each, and every call allocates its kernels' outputs (no arena yet); a single native driver
per variant comes when every group lowers. Within a native kernel, ``+ - * /``, ``sqrt``,
comparisons, ``where``, ``maximum``/``minimum`` are IEEE operations in numpy's order and give
eager's bits; ``exp log tanh erf sin cos`` are the vecmath polynomials, within the ulp bounds
documented in ``vecmath`` of the correctly rounded result — not bit-identical to numpy's.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import threading

import numpy as np

from ...passes.fusion import fuse
from .. import interp
from . import codegen, jit

GuardFailed = interp.GuardFailed
_KERNEL = object()  # tags a native step in the plan's step list
_CHECKS = object()  # tags a step that only checks value guards

_modules: dict[str, jit.Compiled] = {}  # IR hash -> compiled module (shared by variants)
_lock = threading.Lock()


def _lowerable(g, group) -> bool:
    if group.kind != "elementwise":
        return False
    try:
        codegen.elementwise_kernel(g, group)
    except NotImplementedError:
        return False
    return True


def _module(text: str) -> jit.Compiled:
    key = hashlib.sha256(text.encode()).hexdigest()
    with _lock:
        compiled = _modules.get(key)
        if compiled is None:
            compiled = _modules[key] = jit.compile_ir(text)
    return compiled


def _in_node_order(g, group, inplace: dict, users: dict) -> bool:
    """Can ``group`` run as one kernel at the position of its last node, every other node
    keeping its place? Yes when nothing outside it reads its outputs before that position and
    no other node writes a graph input in place in between (the kernel reads the old value)."""
    members = set(group.nodes)
    first, last = group.nodes[0], group.nodes[-1]
    for i in group.nodes:
        if any(u not in members and u <= last for u in users.get(i, ())):
            return False
    return not any(k not in members and first < k < last for k in inplace)


def compile_graph(g, inplace: dict | None = None):
    """A plan for :func:`run`: the interpreter's plan — its steps in node order, so in-place
    write-backs keep their safety — with each lowerable elementwise group's nodes replaced by
    one native kernel call at the position of the group's last node."""
    inplace = inplace or {}
    iplan, slot = interp.compile_with_slots(g, inplace=inplace)
    steps, outs, tail, base, n_in, n_sc = iplan
    producer = {id(n.out): k for k, n in enumerate(g.nodes)}
    users: dict[int, list] = {}
    for k, n in enumerate(g.nodes):
        for x in n.inputs:
            if id(x) in producer:
                users.setdefault(producer[id(x)], []).append(k)
    groups = fuse(g)
    native = [grp for grp in groups
              if _in_node_order(g, grp, inplace, users) and _lowerable(g, grp)]
    kernel_at = {}
    if native:
        text, fns = codegen.module_ir(g, native)
        compiled = _module(text)
        for grp, (name, layout) in zip(native, fns, strict=True):
            fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
            n_in_k = len(grp.inputs)
            ins = tuple((slot[id(v)], v.shape, np.float64 if v.weak else v.dtype.np)
                        for v in layout[:n_in_k])  # (a Python number: one float64)
            kouts = tuple((slot[id(v)], v.shape, v.dtype.np, inplace.get(producer[id(v)]))
                          for v in layout[n_in_k:])
            kernel_at[grp.nodes[-1]] = (_KERNEL, fn, ins, kouts, math.prod(grp.shape),
                                        ctypes.c_void_p * max(len(layout), 1))
    lowered = {i for grp in native for i in grp.nodes}
    order = []
    for k, step in enumerate(steps):
        if k not in lowered:
            order.append(step)
            continue
        if step[6]:  # the value guards due before this node
            order.append((_CHECKS, step[6]))
        if k in kernel_at:
            order.append(kernel_at[k])
    return (order, outs, tail, base, n_in, n_sc), len(native), len(groups)


def _check(checks, env) -> None:
    for gi, s, expected in checks:
        if not interp._same(expected, env[s]):
            raise GuardFailed(gi, expected, env[s])


def run(plan, inputs: list, scalars: list) -> list:
    """Execute: returns the output arrays (raises GuardFailed)."""
    (steps, outs, tail, base, n_in, n_sc), _, _ = plan
    env = base[:]
    env[:n_in] = inputs
    env[n_in:n_in + n_sc] = scalars
    for step in steps:
        if step[0] is _CHECKS:
            _check(step[1], env)
            continue
        if step[0] is _KERNEL:
            _, fn, ins, kouts, n, ptr_array = step
            arrays = []
            for s, shape, dtype in ins:
                a = np.asarray(env[s], dtype=dtype, order="C")  # (0-d stays 0-d)
                if a.shape != shape:  # a Python number or a 0-d array for a (1,) buffer
                    a = np.ascontiguousarray(np.broadcast_to(a, shape))
                arrays.append(a)
            results = [np.empty(shape, dtype=dtype) for _, shape, dtype, _ in kouts]
            fn(ptr_array(*[a.ctypes.data for a in arrays + results]), n)  # (per call:
            #                                              thread-safe, the arrays stay alive)
            for (s, _, _, target), r in zip(kouts, results, strict=True):
                if target is not None:  # a write-back the runtime does in place
                    np.copyto(inputs[target], r)
                    r = inputs[target]
                env[s] = r
            continue
        impl, ins, params, out, target, weak, checks = step
        _check(checks, env)
        args = [env[i] for i in ins]
        if target is not None:
            env[out] = impl(*args, out=inputs[target], **params)
            continue
        r = impl(*args, **params)
        if weak:  # Python-number arithmetic: keep a Python number, as eager does
            env[out] = r.item() if hasattr(r, "item") else r
        else:
            env[out] = r if type(r) is np.ndarray else np.asarray(r)
    _check(tail, env)
    return [env[i] for i in outs]


def describe(plan) -> str:
    """How much of a plan runs natively."""
    _, n_native, n_groups = plan
    return f"{n_native} of {n_groups} kernels native (elementwise); the rest run in numpy"
