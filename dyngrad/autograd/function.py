"""``dyngrad.autograd.Function``: custom operations with a user-written backward."""

from __future__ import annotations

from ..dispatch import STATE
from ..tensor import Tensor
from .grad_mode import no_grad
from .graph import FREED, FREED_MSG, Node


class FunctionCtx(Node):
    """The ``ctx`` passed to ``forward``/``backward``; it is also the backward node."""

    __slots__ = ("fn", "to_save", "versions", "needs_input_grad", "n_out", "out_meta",
                 "in_shapes", "in_meta", "materialize", "non_differentiable", "__dict__")

    def __init__(self, fn, needs: tuple, edges: tuple, in_shapes: tuple) -> None:
        super().__init__(edges)
        self.fn = fn
        self.to_save = ()
        self.versions = ()
        self.needs_input_grad = needs
        self.n_out = 1
        self.out_meta = []
        self.in_shapes = in_shapes
        self.in_meta = [(s, None) for s in in_shapes]
        self.materialize = True
        self.non_differentiable = set()

    @property
    def n_outputs(self) -> int:
        return self.n_out

    def name(self) -> str:
        return f"{self.fn.__name__}Backward"

    def save_for_backward(self, *tensors) -> None:
        """Keep tensors for backward; in-place changes to them before backward are caught."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save tensors, but argument was "
                                f"of type {type(t).__name__}")
        self.to_save = tuple(tensors)
        self.versions = tuple(t._storage.version if t is not None else 0 for t in tensors)

    @property
    def saved_tensors(self) -> tuple:
        if self.to_save is FREED:
            raise RuntimeError(FREED_MSG)
        for i, (t, v) in enumerate(zip(self.to_save, self.versions)):
            if t is not None and t._storage.version != v:
                raise RuntimeError(
                    f"one of the variables needed for gradient computation has been modified "
                    f"by an inplace operation: saved tensor {i} of {self.name()} is at version "
                    f"{t._storage.version}; expected version {v} instead.")
        return self.to_save

    def mark_non_differentiable(self, *tensors) -> None:
        self.non_differentiable.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize = bool(value)

    def release(self) -> None:
        if self.to_save:
            self.to_save = FREED

    def apply(self, grads, create_graph, retain_graph):
        if not self.materialize:
            grads = [g for g in grads]
        out = self.fn.backward(self, *grads)
        if not isinstance(out, tuple):
            out = (out,)
        n_in = len(self.next)
        if len(out) < n_in:
            raise RuntimeError(f"function {self.name()} returned an incorrect number of "
                               f"gradients (expected {n_in}, got {len(out)})")
        if not retain_graph:
            self.release()
        return tuple(out[:n_in])


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grads)``; call
    ``MyFn.apply(*args)``.

    >>> class Exp(dg.autograd.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         y = x.exp(); ctx.save_for_backward(y); return y
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (y,) = ctx.saved_tensors; return g * y
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a Function subclass must implement forward(ctx, ...)")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("a Function subclass must implement backward(ctx, ...) to "
                                  "be differentiated")

    @classmethod
    def apply(cls, *args, **kwargs):
        tensors = [a for a in args if isinstance(a, Tensor)]
        edges = tuple(a._edge() if isinstance(a, Tensor) else None for a in args)
        needs = tuple(e is not None for e in edges)
        record = STATE.grad_enabled and any(needs)
        in_shapes = tuple(getattr(a, "shape", ()) for a in args)
        ctx = FunctionCtx(cls, needs, tuple(e for e in edges) if record else (), in_shapes)
        with no_grad():
            outputs = cls.forward(ctx, *args, **kwargs)
        single = not isinstance(outputs, tuple)
        outs = (outputs,) if single else outputs
        if not record:
            return outputs
        ctx.next = edges
        wrapped = []
        for i, o in enumerate(outs):
            if isinstance(o, Tensor):
                if any(o is t for t in tensors):  # an input returned as is: give it a new alias
                    o = Tensor._shared(o._data, o._storage)
                ctx.out_meta.append((o.shape, o.dtype))
                if o.dtype.is_floating_point and id(o) not in ctx.non_differentiable:
                    o._node, o._out_nr, o._requires_grad = ctx, i, True
            else:
                ctx.out_meta.append(((), None))
            wrapped.append(o)
        ctx.n_out = len(outs)
        return wrapped[0] if single else tuple(wrapped)
