"""Finite-difference checks of reverse-mode (vjp) and forward-mode (jvp) derivatives.

>>> x = dg.randn(3, dtype=dg.float64, requires_grad=True)
>>> dg.testing.gradcheck(lambda x: (x * x.sin()).sum(), (x,))
True
"""

from __future__ import annotations

import warnings

import numpy as np

from .autograd import grad as _grad
from .autograd.grad_mode import enable_grad, no_grad
from .forward_ad import jvp
from .tensor import Tensor

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError", "assert_close"]


class GradcheckError(RuntimeError):
    """A derivative disagrees with finite differences."""


def _outputs(out) -> list:
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o for o in outs if isinstance(o, Tensor) and o.dtype.is_floating_point]


def _flat_values(fn, inputs) -> np.ndarray:
    with no_grad():
        outs = _outputs(fn(*inputs))
    if not outs:
        return np.zeros(0)
    return np.concatenate([o._data.astype(np.float64).reshape(-1) for o in outs])


def _numerical(fn, inputs, i, eps) -> np.ndarray:
    x = inputs[i]
    if not x._data.flags.c_contiguous:
        raise GradcheckError(f"gradcheck: input {i} must be contiguous")
    flat = x._data.reshape(-1)
    cols = []
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        fp = _flat_values(fn, inputs)
        flat[k] = orig - eps
        fm = _flat_values(fn, inputs)
        flat[k] = orig
        cols.append((fp - fm) / (2 * eps))
    n_out = _flat_values(fn, inputs).size
    return np.stack(cols, axis=1) if cols else np.zeros((n_out, 0))


def _unit(tensors, which: int, k: int) -> list:
    """Zeros shaped like ``tensors``, with a 1 at flat element ``k`` of tensor ``which``."""
    out = []
    for m, t in enumerate(tensors):
        v = np.zeros(t.shape, dtype=t._data.dtype)
        if m == which:
            v.reshape(-1)[k] = 1
        out.append(Tensor._fresh(v))
    return out


def _analytical(fn, inputs, diff) -> list:
    with enable_grad():
        outs = _outputs(fn(*inputs))
    sizes = [o.numel() for o in outs]
    jac = [np.zeros((sum(sizes), inputs[i].numel())) for i in diff]
    row = 0
    for oi, o in enumerate(outs):
        for j in range(o.numel()):
            vs = _unit(outs, oi, j)
            live = [(o2, v) for o2, v in zip(outs, vs) if o2.requires_grad]
            if live:
                gs = _grad([o2 for o2, _ in live], [inputs[i] for i in diff],
                           grad_outputs=[v for _, v in live], retain_graph=True,
                           allow_unused=True)
                for k, g in enumerate(gs):
                    if g is not None:
                        jac[k][row] = g._data.astype(np.float64).reshape(-1)
            row += 1
    return jac


def _forward(fn, inputs, diff) -> list:
    jac = []
    for i in diff:
        x = inputs[i]
        cols = []
        for k in range(x.numel()):
            tangents = _unit(inputs, i, k)
            with no_grad():
                out, tout = jvp(fn, tuple(inputs), tuple(tangents))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            touts = tout if isinstance(out, (tuple, list)) else (tout,)
            col = [t._data.astype(np.float64).reshape(-1) for o, t in zip(outs, touts)
                   if isinstance(o, Tensor) and o.dtype.is_floating_point]
            cols.append(np.concatenate(col) if col else np.zeros(0))
        jac.append(np.stack(cols, axis=1) if cols else None)
    return jac


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              check_forward_ad: bool = True, check_backward_ad: bool = True,
              raise_exception: bool = True) -> bool:
    """Compare ``fn``'s vjp (and jvp) Jacobians with central finite differences.

    ``inputs`` are tensors; those with ``requires_grad`` are checked (use float64)."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    diff = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not diff:
        raise ValueError("gradcheck expects at least one input tensor to require gradient")
    for i in diff:
        if inputs[i].dtype.name != "float64":
            warnings.warn(f"gradcheck: input {i} is {inputs[i].dtype.name}, not float64; "
                          f"finite differences will be imprecise", stacklevel=2)
    numerical = [_numerical(fn, inputs, i, eps) for i in diff]
    checks = []
    if check_backward_ad:
        checks.append(("backward (vjp)", _analytical(fn, inputs, diff)))
    if check_forward_ad:
        checks.append(("forward (jvp)", _forward(fn, inputs, diff)))
    for what, jacs in checks:
        for i, num, ana in zip(diff, numerical, jacs):
            if ana is None:
                continue
            if num.shape != ana.shape or not np.allclose(ana, num, atol=atol, rtol=rtol):
                diffmax = np.abs(ana - num).max() if num.shape == ana.shape else float("nan")
                msg = (f"Jacobian mismatch for output wrt input {i} in {what} mode "
                       f"(max abs difference {diffmax:.3e}):\nnumerical:\n{num}\n"
                       f"analytical:\n{ana}")
                if raise_exception:
                    raise GradcheckError(msg)
                return False
    return True


def gradgradcheck(fn, inputs, grad_outputs=None, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, check_forward_ad: bool = False,
                  raise_exception: bool = True) -> bool:
    """Check second derivatives: gradcheck of (inputs, v) ↦ vᵀ·J built with
    ``create_graph=True``."""
    inputs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    diff = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    with no_grad():
        outs = _outputs(fn(*inputs))
    if grad_outputs is None:
        rng = np.random.default_rng(0)
        grad_outputs = [Tensor._fresh(rng.standard_normal(o.shape).astype(o._data.dtype))
                        for o in outs]
        for g in grad_outputs:
            g.requires_grad_(True)
    n = len(inputs)

    def vjp_fn(*args):
        xs, vs = args[:n], args[n:]
        with enable_grad():
            ys = _outputs(fn(*xs))
            gs = _grad(ys, [xs[i] for i in diff], grad_outputs=list(vs), create_graph=True,
                       allow_unused=True)
        return tuple(g for g in gs if g is not None)

    return gradcheck(vjp_fn, tuple(inputs) + tuple(grad_outputs), eps=eps, atol=atol,
                     rtol=rtol, check_forward_ad=check_forward_ad,
                     raise_exception=raise_exception)


def assert_close(actual, expected, *, rtol: float | None = None, atol: float | None = None,
                 equal_nan: bool = False) -> None:
    """Assert two tensors (or arrays) are equal within dtype-appropriate tolerances."""
    a = actual._data if isinstance(actual, Tensor) else np.asarray(actual)
    e = expected._data if isinstance(expected, Tensor) else np.asarray(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {e.shape}")
    if rtol is None:
        rtol = 1.3e-6 if a.dtype == np.float32 else 1e-7
    if atol is None:
        atol = 1e-5 if a.dtype == np.float32 else 1e-7
    if not np.allclose(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan):
        bad = np.abs(a.astype(np.float64) - e.astype(np.float64))
        raise AssertionError(f"tensors not close: max abs difference {np.nanmax(bad):.3e} "
                             f"(rtol={rtol}, atol={atol})")
