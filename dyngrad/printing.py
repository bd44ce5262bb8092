"""``repr`` of tensors in PyTorch's style: ``tensor([1., 2.], requires_grad=True)``."""

from __future__ import annotations

import numpy as np

from . import dtypes as _dt

_DEFAULT_SHOWN = {"float32": False, "int64": False, "bool": False, "float64": True}


def _format_array(arr: np.ndarray, indent: int) -> str:
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        integral = finite.size and np.all(finite == np.round(finite)) and \
            np.abs(finite).max() < 1e8
        if arr.size == 0:
            formatter = None
        elif integral:
            formatter = {"float_kind": lambda v: f"{v:.0f}." if np.isfinite(v) else
                         ("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"))}
        else:
            big = finite.size and (np.abs(finite).max() >= 1e8 or
                                   np.abs(finite[finite != 0]).min(initial=1.0) < 1e-4)
            formatter = {"float_kind": (lambda v: f"{v:.4e}") if big else
                         (lambda v: f"{v:.4f}")}
        return np.array2string(arr, separator=", ", prefix=" " * indent, formatter=formatter,
                               threshold=1000, edgeitems=3, max_line_width=80)
    if arr.dtype == np.bool_:
        return np.array2string(arr, separator=", ", prefix=" " * indent, threshold=1000,
                               formatter={"bool": lambda v: "True" if v else "False"})
    return np.array2string(arr, separator=", ", prefix=" " * indent, threshold=1000)


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
