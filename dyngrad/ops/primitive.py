"""The primitive record and the eager interpreter of it.

A :class:`Primitive` is defined once and read by every interpreter: eager execution
(:meth:`Primitive.apply`), the backward engine (``vjp``), forward mode (``jvp``), and later the
tracer and the code generators (``shape``, ``kind``).

Rules' signatures:

- ``impl(*arrays, **params) -> ndarray``
- ``shape(*avals, **params) -> (shape, DType)`` — avals are anything with ``.shape``/``.dtype``
  (Tensors, or ``AbstractValue``); literal numbers appear as themselves
- ``vjp(node, g, xs, out) -> tuple`` of input gradients (Tensor or None), written with dyngrad
  operations so that double backward and tracing come for free. ``xs[i]`` is the saved input
  (None unless ``i in save``), ``out`` the saved output (None unless ``save_out``);
  ``node.params``, ``node.in_shapes``, ``node.in_dtypes`` and ``node.needs`` are available.
- ``jvp(ts, xs, out, params) -> Tensor | None`` — ``ts[i]`` is input ``i``'s tangent or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..dispatch import STATE
from ..dtypes import DType

try:  # numpy >= 2: set the error state directly (np.errstate costs ~4x more per call)
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj

    _IGNORE = _make_extobj(all="ignore")

    def quiet(fn: Callable) -> Callable:
        """``fn`` run with numpy's floating-point warnings off: like PyTorch, log(0) is -inf
        and inf - inf is nan without a warning."""
        def impl(*args, **kwargs):
            token = _extobj_contextvar.set(_IGNORE)
            try:
                return fn(*args, **kwargs)
            finally:
                _extobj_contextvar.reset(token)
        impl.__name__ = getattr(fn, "__name__", "impl")
        impl.ufunc = fn if isinstance(fn, np.ufunc) else None  # takes out= (in-place writes)
        return impl
except ImportError:  # pragma: no cover - older numpy
    def quiet(fn: Callable) -> Callable:
        def impl(*args, **kwargs):
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)
        impl.__name__ = getattr(fn, "__name__", "impl")
        impl.ufunc = fn if isinstance(fn, np.ufunc) else None
        return impl


KINDS = ("elementwise", "reduce", "movement", "index", "matmul", "creation", "random")

REGISTRY: dict[str, Primitive] = {}


class AbstractValue:
    """Shape and dtype without data (what the shape rules and a tracer work with)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape: tuple, dtype: DType) -> None:
        self.shape, self.dtype = tuple(shape), dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"{self.dtype.name}{list(self.shape)}"


@dataclass(eq=False)
class Primitive:
    name: str
    kind: str
    impl: Callable
    shape: Callable
    vjp: Callable | None = None
    jvp: Callable | None = None
    save: tuple | Callable = ()  # indices of inputs the vjp needs (or a function of which
    #                              inputs need a gradient, returning those indices)
    save_out: bool = False     # whether the vjp needs the output
    view: bool = False         # impl may return a view of input 0 (movement ops)
    doc: str = ""
    backward_name: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown primitive kind {self.kind!r}")
        if self.name in REGISTRY:
            raise ValueError(f"primitive {self.name!r} defined twice")
        REGISTRY[self.name] = self
        self.backward_name = "".join(p.capitalize() for p in self.name.split("_")) + "Backward0"

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    def abstract_eval(self, *avals, **params) -> AbstractValue:
        shape, dtype = self.shape(*avals, **params)
        return AbstractValue(shape, dtype)

    def apply(self, args: tuple, params: dict):
        """Eager execution: numpy impl, wrap, and record a backward node if needed."""
        arrays = [a._data if isinstance(a, Tensor) else
                  (a if type(a) in _PLAIN else _plain(a)) for a in args]
        try:
            out = self.impl(*arrays, **params)
        except Exception as exc:  # turn numpy's message into one naming the op and shapes
            raise op_error(self, args, params, exc) from None
        if type(out) is not np.ndarray:
            out = np.asarray(out)
        if self.view:
            result = args[0]._view(out, self, params)
        else:
            result = Tensor._fresh(out)
        if STATE.grad_enabled and self.vjp is not None:
            edges = None
            for i, a in enumerate(args):
                if isinstance(a, Tensor):
                    if a._base is not None:
                        a._refresh_view_history()
                    if a._requires_grad:
                        if edges is None:
                            edges = [None] * len(args)
                        node = a._node  # (a view's history was refreshed just above)
                        edges[i] = (node, a._out_nr) if node is not None else \
                            (a._accumulator(), 0)
            if edges is not None and out.dtype.kind == "f":
                result._node = PrimNode(self, params, args, result, edges)
                result._requires_grad = True
        return result


_PLAIN = {float, int, bool}


def _plain(x):
    """A number subclass (a tracer's scalar that remembers its source) as the plain Python
    number numpy must see: numpy treats float subclasses as float64, not as weak scalars."""
    if isinstance(x, float):
        return float(x)
    if isinstance(x, int) and not isinstance(x, bool):
        return int(x)
    return x


def op_error(prim: Primitive, args: tuple, params: dict, exc: Exception) -> Exception:
    """A clear error for a failed op: the shape rule's own message when it rejects the
    inputs, else numpy's message prefixed with the op, the input shapes and dtypes."""
    avals = [AbstractValue(a.shape, a.dtype) if isinstance(a, Tensor) else a for a in args]
    try:
        prim.shape(*avals, **params)
    except (RuntimeError, ValueError, TypeError, IndexError) as rule_exc:
        return rule_exc
    desc = ", ".join(repr(a) for a in avals)
    kind = type(exc) if isinstance(exc, (ValueError, TypeError, IndexError)) else RuntimeError
    return kind(f"{prim.name}: failed on inputs ({desc}) with {params or 'no parameters'}: {exc}")


from ..autograd.graph import PrimNode  # noqa: E402
from ..tensor import Tensor  # noqa: E402
