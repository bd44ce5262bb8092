"""``repr`` of tensors in PyTorch's style: ``tensor([1., 2.], requires_grad=True)``."""

from __future__ import annotations

import sys

import numpy as np

from . import dtypes as _dt
from .dispatch import STATE
from .tensor import Tensor

_DEFAULT_SHOWN = {"float32": False, "int64": False, "bool": False, "float64": True}


def _float_formatter(arr: np.ndarray):
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        fmt = str
    elif np.all(finite == np.round(finite)) and np.abs(finite).max() < 1e8:
        fmt = lambda v: f"{v:.0f}."  # noqa: E731
    else:
        nonzero = np.abs(finite[finite != 0])
        big = np.abs(finite).max() >= 1e8 or (nonzero.size and nonzero.min() < 1e-4)
        fmt = (lambda v: f"{v:.4e}") if big else (lambda v: f"{v:.4f}")  # noqa: E731

    def one(v):
        if np.isnan(v):
            return "nan"
        if np.isinf(v):
            return "inf" if v > 0 else "-inf"
        return fmt(v)
    samples = [one(v) for v in (finite.min(), finite.max())] if finite.size else []
    samples += [one(v) for v in arr.ravel()[~np.isfinite(arr.ravel())][:2]]
    width = max((len(x) for x in samples), default=0)
    return lambda v: one(v).rjust(width)


def _format_array(arr: np.ndarray, indent: int) -> str:
    formatter = None
    if arr.dtype.kind == "f" and arr.size:
        formatter = {"float_kind": _float_formatter(arr)}
    elif arr.dtype == np.bool_:
        formatter = {"bool": lambda v: "True" if v else "False"}
    return np.array2string(arr, separator=", ", prefix=" " * indent, formatter=formatter,
                           threshold=1000, edgeitems=3, max_line_width=80)


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
    return "tensor(" + body + "".join(", " + e for e in extras) + ")"


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
