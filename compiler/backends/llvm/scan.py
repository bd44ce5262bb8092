"""LLVM IR for the primitives that read along one axis in order (kind 'index', one node per
group): the running sums and products ``cumsum`` and ``cumprod``, and the stable ``argsort``.
Each rule writes the body of ``datamove.IndexBuilder``'s kernel (which registers them) from
its entry block to its ``ret i32 0``; ``b`` is that builder (an ``Emitter``), ``ptr`` maps
``id(value)`` to its pointer parameter.

The input may have any dyngrad dtype: the narrow integers and bool are read as their own
width and widened here, so a scan of an int32 or bool tensor needs no cast kernel before it.
The array is seen as ``(pre, n, post)`` around the axis (a 0-d array as one element).
"""

from __future__ import annotations

import math

# dtype -> (type in memory, how it widens to the scan's i64: sext/zext, None for floats)
_ELEMENT = {"float32": ("float", None), "float64": ("double", None), "int64": ("i64", None),
            "int32": ("i32", "sext"), "int16": ("i16", "sext"), "int8": ("i8", "sext"),
            "uint8": ("i8", "zext"), "bool": ("i8", "zext")}
_BLOCK = 256  # running values kept per column block when the axis is not the last one
_MAX_SORTED = (1 << 31) - 1  # argsort keeps its permutations as i32 (see stable_argsort)


def _unsupported(n, what: str) -> NotImplementedError:
    return NotImplementedError(f"LLVM index codegen: {n.prim.name} {what}")


def _around(n) -> tuple:
    """(pre, n, post): the sizes before, along and after the node's axis."""
    shape = n.inputs[0].shape
    if not shape:
        return 1, 1, 1
    axis = n.params["axis"] % len(shape)
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _element(n):
    dt = n.inputs[0].dtype.name
    if dt not in _ELEMENT:
        raise _unsupported(n, f"on dtype {dt}")
    return _ELEMENT[dt]


def _load(b, ty: str, p: str, off) -> str:
    a = b.emit(f"getelementptr inbounds {ty}, ptr {p}, i64 {off}")
    return b.emit(f"load {ty}, ptr {a}")


def _store(b, ty: str, v: str, p: str, off) -> None:
    a = b.emit(f"getelementptr inbounds {ty}, ptr {p}, i64 {off}")
    b.line(f"store {ty} {v}, ptr {a}")


def _running(op: str, what: str):
    """The rule of a running ``op`` (``add``: cumsum, ``mul``: cumprod)."""

    def rule(b, n, ptr: dict) -> None:
        mem, widen = _element(n)
        pre, size, post = _around(n)
        acc = "double" if widen is None and mem != "i64" else "i64"
        out = "float" if mem == "float" else acc
        combine = op if acc == "i64" else f"f{op}"
        reverse = bool(n.params.get("reverse", False))
        px, po = ptr[id(n.inputs[0])], ptr[id(n.out)]

        def read(off) -> str:
            v = _load(b, mem, px, off)
            if mem == "float":
                return b.emit(f"fpext float {v} to double")
            return b.emit(f"{widen} {mem} {v} to i64") if widen else v

        def write(v: str, off) -> None:
            if out != acc:
                v = b.emit(f"fptrunc double {v} to float")
            _store(b, out, v, po, off)

        def along(t):  # the position along the axis of the t-th element taken
            return b.emit(f"sub i64 {size - 1}, {t}") if reverse else t

        b.label("entry")
        if pre * size * post == 0:
            b.line("ret i32 0")
            return
        if post != 1:
            b.line(f"%run = alloca [{_BLOCK} x {acc}], align 64")
        with b.loop("%p", pre, block="p.loop", exit="done", latch="p.end"):
            row = b.emit(f"mul i64 %p, {size * post}")
            if post == 1:  # one running value per row, carried by the loop
                first = b.emit(f"add i64 {row}, {along(0)}")
                v0 = read(first)
                write(v0, first)
                if size > 1:
                    with b.loop("%t", size, start=1, block="t.loop", exit="p.end",
                                carry=[("%acc", acc, v0)]) as lp:
                        at = b.emit(f"add i64 {row}, {along('%t')}")
                        v = b.emit(f"{combine} {acc} %acc, {read(at)}")
                        write(v, at)
                        lp.next = [v]
            else:
                _columns(b, row, size, post, along, read, write, combine, acc)
        b.line("ret i32 0")

    rule.__doc__ = (
        f"``{what}``, eager's values exactly: the first element copied (so a leading -0.0 "
        "stays), then each combined with the running value in order along the axis — "
        "numpy's ``accumulate`` — in float64 for float32 data (PyTorch's and eager's "
        "accumulator; each result rounded to float32 once), int64 for integers and bools "
        "(wrapping, as numpy's). Along the last axis a row is one loop carrying the running "
        f"value; along another, the columns after the axis are taken in blocks of {_BLOCK}, "
        "their running values in a stack buffer, so the loop over a block's columns reads "
        "and writes contiguous memory and vectorises.")
    return rule


def _columns(b, row, size, post, along, read, write, combine, acc) -> None:
    """The running values of the columns after the axis, a block at a time (``%run``)."""
    with b.loop("%c", post, step=_BLOCK, block="c.loop", exit="p.end", latch="c.end"):
        width = b.min(b.emit(f"sub i64 {post}, %c"), _BLOCK)
        first = b.emit(f"add i64 {row}, {b.emit(f'mul i64 {along(0)}, {post}')}")
        first = b.emit(f"add i64 {first}, %c")
        with b.loop("%r0", width, block="r0.loop", exit="r0.end"):
            at = b.emit(f"add i64 {first}, %r0")
            v0 = read(at)
            _store(b, acc, v0, "%run", "%r0")
            write(v0, at)
        if size > 1:
            with b.loop("%t", size, start=1, block="t.loop", exit="c.end", latch="t.end"):
                line = b.emit(f"mul i64 {along('%t')}, {post}")
                line = b.emit(f"add i64 {b.emit(f'add i64 {row}, {line}')}, %c")
                with b.loop("%r", width, block="r.loop", exit="t.end"):
                    at = b.emit(f"add i64 {line}, %r")
                    v = b.emit(f"{combine} {acc} {_load(b, acc, '%run', '%r')}, {read(at)}")
                    _store(b, acc, v, "%run", "%r")
                    write(v, at)


running_sum = _running("add", "cumsum")
running_product = _running("mul", "cumprod")


def _less(b, ty: str, descending: bool, a: str, c: str) -> str:
    """Whether key ``a`` sorts strictly before key ``c``: eager's order — ascending with
    NaN last, descending with NaN first (NaNs, and -0.0 with 0.0, tie)."""
    if ty == "i64":
        return b.emit(f"icmp {'sgt' if descending else 'slt'} i64 {a}, {c}")
    strict = b.emit(f"fcmp {'ogt' if descending else 'olt'} {ty} {a}, {c}")
    nan_a, nan_c = b.emit(f"fcmp uno {ty} {a}, {a}"), b.emit(f"fcmp uno {ty} {c}, {c}")
    num = b.emit(f"xor i1 {nan_a if not descending else nan_c}, true")
    by_nan = b.emit(f"and i1 {num}, {nan_c if not descending else nan_a}")
    return b.emit(f"or i1 {strict}, {by_nan}")


def stable_argsort(b, n, ptr: dict) -> None:
    """``argsort``, eager's permutation exactly: a stable bottom-up merge sort of each line
    along the axis (on ties the earlier element first; the order of :func:`_less`).

    Note: no scratch memory. A line's output is ``size`` int64 slots; each slot holds, while
    sorting, two int32 entries — the permutation being read in one half and the one being
    written in the other — and at the end the slot becomes the int64 index its finished half
    holds. So a line of any length sorts in place, touching only its own output."""
    mem, widen = _element(n)
    pre, size, post = _around(n)
    if size > _MAX_SORTED:
        raise _unsupported(n, f"along an axis of {size} elements (int32 permutations)")
    px, po = ptr[id(n.inputs[0])], ptr[id(n.out)]
    descending = bool(n.params["descending"])
    b.label("entry")
    if pre * size * post == 0:
        b.line("ret i32 0")
        return
    with b.loop("%p", pre, block="p.loop", exit="done", latch="p.end"):
        with b.loop("%q", post, block="q.loop", exit="p.end", latch="q.end"):
            base = b.emit(f"add i64 {b.emit(f'mul i64 %p, {size * post}')}, %q")
            if size == 1:
                _store(b, "i64", "0", po, base)
            else:
                _merge_sort(b, base, size, post, mem, widen, descending, px, po)
    b.line("ret i32 0")


def _merge_sort(b, base, size, post, mem, widen, descending, px, po) -> None:
    """Sort the line of ``size`` elements from ``base`` (stride ``post``), its permutation
    written as int64 over the same positions of the output (see :func:`stable_argsort`)."""
    key = "i64" if widen is not None or mem == "i64" else mem
    base2 = b.emit(f"shl i64 {base}, 1")

    def slot(j, half) -> str:  # the int32 entry j of permutation `half` (0 or 1)
        at = b.emit(f"add i64 {base2}, {b.emit(f'mul i64 {j}, {2 * post}')}")
        at = b.emit(f"add i64 {at}, {half}")
        return b.emit(f"getelementptr inbounds i32, ptr {po}, i64 {at}")

    def entry(j, valid: str, half: str) -> str:  # (an exhausted run reads %lo instead)
        j = b.emit(f"select i1 {valid}, i64 {j}, i64 %lo")
        return b.emit(f"load i32, ptr {slot(j, half)}")

    def key_of(e: str) -> str:  # the key of the element an int32 entry names
        j = b.emit(f"zext i32 {e} to i64")
        v = _load(b, mem, px, b.emit(f"add i64 {base}, {b.emit(f'mul i64 {j}, {post}')}"))
        return b.emit(f"{widen} {mem} {v} to i64") if widen else v

    with b.loop("%j0", size, block="init", exit="pass.pre"):
        b.line(f"store i32 {b.emit('trunc i64 %j0 to i32')}, ptr {slot('%j0', 0)}")
    b.jump("pass.head")
    b.label("pass.head")  # widths 1, 2, 4, ...: runs of %w merged pairwise, %src -> %dst
    b.line("%w = phi i64 [1, %pass.pre], [%w.next, %lo.end]")
    b.line("%src = phi i64 [0, %pass.pre], [%dst, %lo.end]")
    b.line("%dst = xor i64 %src, 1")
    b.branch(b.emit(f"icmp slt i64 %w, {size}"), "pass.body", "pass.done")
    b.label("pass.body")
    b.line("%w2 = shl i64 %w, 1")
    with b.loop("%lo", size, step="%w2", block="lo.loop", exit="lo.end"):
        mid = b.min(b.emit("add i64 %lo, %w"), size)
        hi = b.min(b.emit("add i64 %lo, %w2"), size)
        with b.loop("%o", hi, start="%lo", block="m.loop", exit="m.end",
                    carry=[("%mi", "i64", "%lo"), ("%mk", "i64", mid)]) as lp:
            left = b.emit(f"icmp slt i64 %mi, {mid}")
            right = b.emit(f"icmp slt i64 %mk, {hi}")
            ei, ek = entry("%mi", left, "%src"), entry("%mk", right, "%src")
            before = _less(b, key, descending, key_of(ek), key_of(ei))
            # the right run's entry only when it sorts strictly before the left's: stable
            take = b.emit(f"or i1 {b.emit(f'xor i1 {left}, true')}, {before}")
            take = b.emit(f"and i1 {right}, {take}")
            chosen = b.emit(f"select i1 {take}, i32 {ek}, i32 {ei}")
            b.line(f"store i32 {chosen}, ptr {slot('%o', '%dst')}")
            step = b.emit(f"zext i1 {take} to i64")
            lp.next = [b.emit(f"sub i64 {b.emit('add i64 %mi, 1')}, {step}"),
                       b.emit(f"add i64 %mk, {step}")]
    b.line("%w.next = shl i64 %w, 1")
    b.jump("pass.head")
    b.label("pass.done")
    with b.loop("%j1", size, block="widen", exit="q.end"):
        v = b.emit(f"load i32, ptr {slot('%j1', '%src')}")
        at = b.emit(f"add i64 {base}, {b.emit(f'mul i64 %j1, {post}')}")
        _store(b, "i64", b.emit(f"zext i32 {v} to i64"), po, at)


__all__ = ["running_sum", "running_product", "stable_argsort"]
