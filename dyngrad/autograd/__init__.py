"""Reverse-mode automatic differentiation: ``backward``, ``grad``, custom ``Function``s,
grad modes and anomaly detection."""

from __future__ import annotations

from ..ops.creation import ones_like, tensor
from ..ops.elementwise import cast
from ..tensor import Tensor
from .engine import queue_callback, run_backward
from .function import Function, FunctionCtx
from .grad_mode import (
    detect_anomaly,
    enable_grad,
    is_anomaly_enabled,
    is_grad_enabled,
    no_grad,
    set_detect_anomaly,
    set_grad_enabled,
)
from .graph import AccumulateGrad, Node

__all__ = ["backward", "grad", "Function", "FunctionCtx", "Node", "AccumulateGrad",
           "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "detect_anomaly",
           "set_detect_anomaly", "is_anomaly_enabled", "queue_callback"]


def _as_list(x) -> list:
    if isinstance(x, Tensor):
        return [x]
    return list(x)


def _make_grads(outputs: list, grads: list, create_graph: bool) -> list:
    out = []
    for i, (t, g) in enumerate(zip(outputs, grads)):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs: output {i} has "
                    f"shape {list(t.shape)}. Pass gradient= (the vector v of the product "
                    f"vᵀ·J, e.g. dg.ones_like(y)) or reduce first (y.sum().backward()).")
            g = ones_like(t)
        else:
            if not isinstance(g, Tensor):
                g = tensor(g, dtype=t.dtype)
            if g.shape != t.shape:
                raise RuntimeError(f"Mismatch in shape: grad_output[{i}] has a shape of "
                                   f"{list(g.shape)} and output[{i}] has a shape of "
                                   f"{list(t.shape)}.")
            if g.dtype is not t.dtype:
                g = cast(g, t.dtype)
        out.append(g)
    return out


def _check_outputs(outputs: list, op: str) -> None:
    for i, t in enumerate(outputs):
        if not t.requires_grad:
            raise RuntimeError(f"{op}: element {i} of tensors does not require grad and does not "
                               f"have a grad_fn (it was created under no_grad(), detached, or "
                               f"from tensors without requires_grad=True)")


def backward(tensors, grad_tensors=None, retain_graph: bool | None = None,
             create_graph: bool = False, inputs=None) -> None:
    """Accumulate gradients of ``tensors`` into the ``.grad`` of the leaves (or of
    ``inputs`` only)."""
    outputs = _as_list(tensors)
    grads = [None] * len(outputs) if grad_tensors is None else _as_list(grad_tensors) \
        if not hasattr(grad_tensors, "_data") else [grad_tensors]
    if len(grads) != len(outputs):
        raise RuntimeError(f"got {len(grads)} gradients for {len(outputs)} tensors")
    _check_outputs(outputs, "backward")
    grads = _make_grads(outputs, grads, create_graph)
    if retain_graph is None:
        retain_graph = create_graph
    if inputs is not None:
        run_backward(outputs, grads, retain_graph=retain_graph, create_graph=create_graph,
                     inputs=tuple(_as_list(inputs)), allow_unused=True, accumulate=True)
        return
    run_backward(outputs, grads, retain_graph=retain_graph, create_graph=create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph: bool | None = None,
         create_graph: bool = False, allow_unused: bool = False) -> tuple:
    """Gradients of ``outputs`` with respect to ``inputs``, returned (not accumulated).

    >>> (gx,) = dg.autograd.grad(y, [x], create_graph=True)   # for higher order
    """
    outs = _as_list(outputs)
    ins = _as_list(inputs)
    grads = [None] * len(outs) if grad_outputs is None else _as_list(grad_outputs)
    _check_outputs(outs, "autograd.grad")
    grads = _make_grads(outs, grads, create_graph)
    if retain_graph is None:
        retain_graph = create_graph
    for i, t in enumerate(ins):
        if not t.requires_grad:
            raise RuntimeError(f"One of the differentiated Tensors (input {i}) does not "
                               f"require grad")
    return run_backward(outs, grads, retain_graph=retain_graph, create_graph=create_graph,
                        inputs=tuple(ins), allow_unused=allow_unused)
