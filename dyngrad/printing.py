"""``repr`` of tensors in PyTorch's style: ``tensor([1., 2.], requires_grad=True)``."""

from __future__ import annotations

import sys

import numpy as np

from . import dtypes as _dt
from .dispatch import STATE
from .tensor import Tensor

_DEFAULT_SHOWN = {"float32": False, "int64": False, "bool": False, "float64": True}


def _float_formatter(shown: np.ndarray):
    """PyTorch's float format, chosen from the shown values that are finite and non-zero:
    whole numbers print as ``3.``; scientific ``3.0000e+05`` when the largest magnitude
    exceeds 1e8 or 1000 times the smallest (or, for non-whole numbers, the smallest is below
    1e-4); four decimals otherwise. Every element is right-aligned to the widest of those
    values (nan and inf are not counted: ``tensor([nan, 1.])``)."""
    vals = shown[np.isfinite(shown) & (shown != 0)].astype(np.float64)
    whole = bool(np.all(vals == np.ceil(vals)))
    sci = False
    if vals.size:
        mag = np.abs(vals)
        lo, hi = mag.min(), mag.max()
        sci = hi / lo > 1000.0 or hi > 1e8 or (not whole and lo < 1e-4)

    def text(v) -> str:
        if sci:
            return f"{v:.4e}"
        if whole:
            return f"{v:.0f}" + ("." if np.isfinite(v) else "")
        return f"{v:.4f}"
    width = max((len(text(v)) for v in vals), default=1)
    return lambda v: text(v).rjust(width)


# PyTorch's print options (torch.set_printoptions' defaults)
LINE_WIDTH, THRESHOLD, EDGE_ITEMS = 80, 1000, 3


def _shown(arr: np.ndarray, summarize: bool) -> np.ndarray:
    """The elements a print shows: all, or when summarized the first and last
    ``EDGE_ITEMS`` along every dim (the formatter's width is taken over these only)."""
    if not summarize:
        return arr
    for ax, n in enumerate(arr.shape):
        if n > 2 * EDGE_ITEMS:
            arr = np.take(arr, list(range(EDGE_ITEMS)) + list(range(n - EDGE_ITEMS, n)), ax)
    return arr


def _element_formatter(arr: np.ndarray, shown: np.ndarray):
    """Each element as text, right-aligned to the widest shown one (so booleans pad to
    ``' True'`` next to a ``False``, as PyTorch prints them)."""
    if arr.dtype.kind == "f":
        return _float_formatter(shown)
    text = (lambda v: "True" if v else "False") if arr.dtype == np.bool_ else str  # noqa: E731
    width = max((len(text(v)) for v in shown.ravel()), default=0)
    return lambda v: text(v).rjust(width)


def _layout(arr: np.ndarray, fmt, width: int, indent: int, summarize: bool) -> str:
    """PyTorch's layout: a row holds as many elements as fit in ``LINE_WIDTH`` after the
    indent (each ``width`` plus ``", "``); rows of a dim > 1 are separated by one newline per
    dim below it; summarized dims show their edges around ``...``."""
    n = arr.shape[0]
    cut = summarize and n > 2 * EDGE_ITEMS
    idx = [*range(EDGE_ITEMS), None, *range(n - EDGE_ITEMS, n)] if cut else range(n)
    if arr.ndim == 1:
        items = [" ..." if i is None else fmt(arr[i]) for i in idx]
        per_line = max(1, (LINE_WIDTH - indent) // (width + 2))
        lines = [", ".join(items[k:k + per_line]) for k in range(0, len(items), per_line)]
        return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"
    rows = ["..." if i is None else _layout(arr[i], fmt, width, indent + 1, summarize)
            for i in idx]
    return "[" + ("," + "\n" * (arr.ndim - 1) + " " * (indent + 1)).join(rows) + "]"


def _format_array(arr: np.ndarray, indent: int) -> str:
    if arr.size == 0:
        return "[]"
    summarize = arr.size > THRESHOLD
    shown = _shown(arr, summarize)
    fmt = _element_formatter(arr, shown)
    if arr.ndim == 0:
        return fmt(arr[()]).strip()
    width = max(len(fmt(v)) for v in shown.ravel())
    return _layout(arr, fmt, width, indent, summarize)


def tensor_repr(t) -> str:
    body = _format_array(t._data, len("tensor("))
    extras = []
    if t.numel() == 0 and t.ndim != 1:
        extras.append(f"size={tuple(t.shape)}")
    if _DEFAULT_SHOWN.get(t.dtype.name, True) or (
            t.dtype is _dt.float64 and _dt.get_default_dtype() is _dt.float64):
        extras.append(f"dtype=dyngrad.{t.dtype.name}")
    node = t._node
    if node is not None:
        extras.append(f"grad_fn=<{node.name()}>")
    elif t._requires_grad:
        extras.append("requires_grad=True")
    return _with_suffixes("tensor(" + body, extras) + ")"


def _with_suffixes(text: str, extras: list) -> str:
    """``text, extra, ...`` with PyTorch's wrapping: an extra that would end past
    ``LINE_WIDTH`` (with two columns of slack, as PyTorch counts) starts a new line,
    indented under the data."""
    indent = len("tensor(")
    last = len(text) - text.rfind("\n") + 1
    for e in extras:
        if last + len(e) + 2 > LINE_WIDTH:
            text += ",\n" + " " * indent + e
            last = indent + len(e)
        else:
            text += ", " + e
            last += len(e) + 2
    return text


def debug_print(*args, sep: str = " ", end: str = "\n", file=None) -> None:
    """``print`` that also works inside compiled functions: a tracer records it and every
    compiled call prints the values of that call (plain ``print`` of a tensor makes a compiled
    function fall back to eager, since its data would leave the trace).

    >>> dg.debug_print("loss", loss)
    """
    for m in STATE.modes:
        m.on_debug_print(args, sep, end)
    text = sep.join(tensor_repr(a) if isinstance(a, Tensor) else str(float(a))
                    if type(a) is not float and isinstance(a, float) else str(a) for a in args)
    print(text, end=end, file=file or sys.stdout)
