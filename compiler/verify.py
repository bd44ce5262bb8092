"""``verify=N``: snapshot what a variant touches, so a compiled call can be replayed eagerly
from the same state and the two compared."""

from __future__ import annotations

import numpy as np

from dyngrad.tensor import Tensor


class Snapshot:
    """Copies of every bound tensor's data and of the ``.grad`` fields of the tensors whose
    gradients the function reads or sets."""

    def __init__(self, trace, flat) -> None:
        self.tensors = []
        seen = set()
        for b in trace.bindings:
            obj = b.resolve(flat)
            if obj is not None and id(obj) not in seen:
                seen.add(id(obj))
                arr = obj if isinstance(obj, np.ndarray) else obj._data
                self.tensors.append((b.name, arr, arr.copy()))
        self.grads = []
        owners = [flat[ref[1]] if isinstance(ref, tuple) else ref()
                  for ref, _, _ in trace.grad_guards]
        owners += [b.resolve(flat) for b, _ in trace.grad_effects]
        for o in owners:
            if o is not None and id(o) not in seen:
                seen.add(id(o))
                g = o._grad
                self.grads.append((o, g, None if g is None else g._data.copy()))

    def restore(self) -> None:
        for _, arr, copy in self.tensors:
            np.copyto(arr, copy)
        for o, g, copy in self.grads:
            o._grad = g
            if g is not None:
                np.copyto(g._data, copy)


def snapshot(trace, flat) -> Snapshot:
    return Snapshot(trace, flat)


# (rtol, atol) per float dtype for backends whose results are not eager's bits (the LLVM
# backend: vector math within a few ulps, sums in its own order); the interpreter is exact
TOLERANCES = {np.dtype(np.float32): (1e-5, 1e-6), np.dtype(np.float64): (1e-12, 1e-14)}


def _same(a: np.ndarray, b: np.ndarray, exact: bool = True) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if np.array_equal(a, b, equal_nan=True):
        return True
    tol = None if exact else TOLERANCES.get(a.dtype)
    return tol is not None and bool(np.allclose(a, b, rtol=tol[0], atol=tol[1],
                                                equal_nan=True))


def _flat(x, out, path="result"):
    if isinstance(x, Tensor):
        out.append((path, x._data))
    elif isinstance(x, (tuple, list)):
        for i, e in enumerate(x):
            _flat(e, out, f"{path}[{i}]")
    elif isinstance(x, dict):
        for k, e in x.items():
            _flat(e, out, f"{path}[{k!r}]")
    else:
        out.append((path, x))
    return out


def compare(compiled, eager, state_compiled: Snapshot, state_eager: Snapshot,
            exact: bool = True) -> list:
    """Differences between a compiled call and an eager call (empty when equal): bit for
    bit, or with ``exact=False`` within :data:`TOLERANCES`."""
    problems = []
    a, b = _flat(compiled, []), _flat(eager, [])
    if len(a) != len(b):
        problems.append("the results have different structure")
    for (path, x), (_, y) in zip(a, b):
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                    and _same(x, y, exact)):
                problems.append(f"{path} differs")
        elif x != y and not (x != x and y != y) and (exact or not isinstance(x, float) or
                                                     not _same(np.float64(x), np.float64(y),
                                                               exact)):
            problems.append(f"{path}: {x!r} vs {y!r}")
    for (name, _, x), (_, _, y) in zip(state_compiled.tensors, state_eager.tensors):
        if not _same(x, y, exact):
            problems.append(f"state of {name} differs (max abs difference "
                            f"{np.max(np.abs(x.astype(float) - y.astype(float))):.3g})")
    for (o, _, x), (_, _, y) in zip(state_compiled.grads, state_eager.grads):
        if (x is None) != (y is None) or (x is not None and not _same(x, y, exact)):
            problems.append(f".grad of a {list(o.shape)} tensor differs")
    return problems
