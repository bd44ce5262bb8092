"""A graph's kernels: :func:`module_ir` puts a kernel per fusion group in one LLVM module
(``runner.py`` and ``driver.py`` run them); :func:`run_group` runs one group on its own (the
tests' oracle path). Each group's kernel comes from the builder registered for its kind
(``emit.builds``): importing this module imports every builder module.

:func:`elementwise_kernel` emits ``void @dg_ew(ptr %args, i64 %n)``: ``args`` is an array of
buffer pointers (the group's inputs, then its outputs, in ``arg_layout`` order; one ``void**``
is the cheapest ctypes call, see LLVM_NOTES) and the kernel loops ``i`` over the flattened
iteration space (``n`` elements); see ``loops.py`` for what it supports."""

from __future__ import annotations

import ctypes
import math
import re

import numpy as np

from ...dims import concrete
from ...prims import traits
from . import attention, datamove, jit, loops, matmul, randomgen, reduce, target, threads, window  # noqa: F401

#            (importing the builder modules registers their builders)
from .emit import BUILDERS, FN_NAME, builder, constant_outputs, kernel_outputs  # noqa: F401
from .vecmath import prelude_ir

INLINE_LINES = 120  # kernels of more IR lines stay functions of their own (module_ir): a
#                    reduction's chunk and remainder loops, not an elementwise loop


def reduce_kernel(g, group) -> tuple:
    """(LLVM IR text, function name, arg layout) for a reduction fusion group, with the
    calling convention of :func:`elementwise_kernel` (``n`` is ignored: its sizes are in
    its code — numbers, or a symbolic variant's run-time numbers, see ``forms.py``)."""
    return reduce.ReduceBuilder(g, group).build()


def module_ir(g, groups, prefix: str = "dg_k", inline: bool = True) -> tuple:
    """One LLVM module holding a kernel per group (``void @<prefix><k>(ptr %args, i64 %n)``,
    as :func:`elementwise_kernel`) and the math functions they share. Returns (IR text,
    [(function name, arg layout) per group]). Raises NotImplementedError as
    :func:`elementwise_kernel` does.

    Groups whose kernels are the same code (an unrolled loop's steps, layers of one shape)
    share one function: their text, with the kernel's name taken out, is equal, and the
    arguments carry everything else. A shared body is never inlined (it is optimised once);
    ``inline=False`` keeps every body a function of its own (``noinline``) — for a driver
    calling many kernels, whose compile time would otherwise grow faster than their number.
    Even then, only kernels of at most ``INLINE_LINES`` lines of IR are inlined (the
    number of elements does not enter: it would make sizes of a symbolic variant differ in
    form): a long kernel's call costs nothing next to its loops, while inlining every kernel
    into the driver made LLVM work on one huge function (W2's module: 335 ms inlined, 280
    ms so)."""
    built, math_functions, decls = [], [], []
    by_code: dict[str, int] = {}  # kernel text without its name -> index of the first
    made = {}  # (kernels of a ``late`` builder made last, the module in the groups' order)
    for k in sorted(range(len(groups)), key=lambda k: getattr(BUILDERS.get(groups[k].kind),
                                                               "late", False)):
        b = builder(g, groups[k])
        made[k] = (b, *b.build(f"{prefix}{k}", prelude=False))
    for k in range(len(groups)):
        b, text, name, layout = made[k]
        code = re.sub(rf"@{name}(?=[_(\s])", "@KERNEL", text)
        first = by_code.setdefault(code, len(built))
        built.append((text if first == len(built) else None, name, layout, first))
        math_functions += [f for f in b.vecmath if f not in math_functions]
        decls += [d for d in b.declarations().splitlines(keepends=True) if d not in decls]
    uses = [0] * len(built)
    for *_, first in built:
        uses[first] += 1
    texts, kernels = [], []
    for k, (text, _, layout, first) in enumerate(built):
        if text is not None:
            big = text.count("\n") > INLINE_LINES
            if not inline or uses[k] > 1 or big:  # optimised on its own: compile time
                #                                    stays linear in the kernels
                text = re.sub(r"^(define internal \w+ @\w+_body\(.*\)) alwaysinline \{",
                              r"\1 noinline {", text, flags=re.M)
            texts.append(text)
        kernels.append((built[first][1], layout))
    return prelude_ir(math_functions) + "".join(decls) + "\n".join(texts), kernels


def elementwise_kernel(g, group) -> tuple:
    """(LLVM IR text, function name, arg layout) for an elementwise fusion group: the function
    is ``void @dg_ew(ptr %args, i64 %n)`` with ``args[k]`` the buffer of ``arg_layout[k]``
    (the group's inputs, C-contiguous in their own shapes, then its outputs)."""
    return loops.LoopBuilder(g, group).build()


_COMPILED: dict[tuple, tuple] = {}  # (ir_text, target) -> (Compiled, ctypes function)


def run_group(g, group, arrays, poison=None) -> list:
    """Run an elementwise or reduce group natively: ``arrays`` are the values of
    ``group.inputs``; returns freshly allocated (C-contiguous) arrays for ``group.outputs``
    (filled with ``poison`` before the kernel runs, when given: tests see an element the
    kernel did not write)."""
    text, name, layout = builder(g, group).build()
    key = (text, target.current())
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = jit.compile_ir(text)
        fn = compiled.cfunc(name, None, ctypes.c_void_p, ctypes.c_int64)
        entry = _COMPILED[key] = (compiled, fn)
    fn = entry[1]
    n_in = len(group.inputs)
    ins = []
    for v, a in zip(layout[:n_in], arrays):
        a = np.asarray(a, dtype=np.float64 if v.weak else v.dtype.np, order="C")  # (0-d too)
        if a.shape != v.shape:
            raise ValueError(f"run_group: input {v!r} has shape {a.shape}, expected {v.shape}")
        ins.append(a)
    outs = [np.empty(v.shape, dtype=v.dtype.np) if poison is None else
            np.full(v.shape, poison, dtype=v.dtype.np) for v in layout[n_in:]]
    ptrs = (ctypes.c_void_p * max(len(layout), 1))(*[a.ctypes.data for a in ins + outs])
    fn(ptrs, math.prod(group.shape))
    result = {id(v): a for v, a in zip(layout[n_in:], outs)}
    producer = {id(g.nodes[i].out): g.nodes[i] for i in group.nodes}
    for v in constant_outputs(g, group):
        result[id(v)] = constant_value(producer[id(v)])
    return [result[id(v)] for v in group.outputs]


def constant_value(n) -> np.ndarray:
    """The value of a ``full`` or ``size_of`` node (known from its params and shapes)."""
    params = concrete(n.params)  # (a symbolic variant's sizes: their numbers)
    if not traits(n.prim).reads_data:  # (size_of: only its input's shape)
        return np.asarray(n.prim.impl(np.empty(concrete(n.inputs[0].shape), np.int8),
                                      **params))
    return np.asarray(n.prim.impl(**params))


__all__ = ["elementwise_kernel", "reduce_kernel", "module_ir", "run_group", "builder",
           "lowerable", "FN_NAME"]


def lowerable(g, group) -> bool:
    if not group.kind.stands_alone:
        return False
    try:
        builder(g, group).build()
    except NotImplementedError:
        return False
    return True
