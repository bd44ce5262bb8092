"""The primitive record, the eager interpreter of it, and its backward node
(:class:`PrimNode`).

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

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import dtypes as _dt
from ..autograd.graph import FREED, FREED_MSG, Node
from ..dispatch import STATE
from ..dtypes import DType
from ..tensor import Tensor

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


KINDS = ("elementwise", "reduce", "movement", "index", "matmul", "creation", "random",
         "window", "collective")  # window: reads windows of its input (convolution,
#                                   pooling); collective: an MPI collective's start or wait
#                                   (dyngrad/distributed/collectives.py)

REGISTRY: dict[str, Primitive] = {}


def registered(name: str) -> Primitive:
    """The op table's primitive called ``name`` (how a pickled primitive comes back)."""
    return REGISTRY[name]


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

    def __reduce__(self):
        # (by name: a graph unpickled from the compiler's plan cache must hold the very
        # primitive objects of this process's op table, which the passes compare by identity)
        if REGISTRY.get(self.name) is not self:
            raise TypeError(f"primitive {self.name!r} is not the op table's: not picklable")
        return (registered, (self.name,))

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
    if getattr(exc, "keep_as_is", False):  # (an error that names its op itself, and whose
        return exc  #                              type callers catch: DistBackendError)
    avals = [AbstractValue(a.shape, a.dtype) if isinstance(a, Tensor) else a for a in args]
    try:
        prim.shape(*avals, **params)
    except (RuntimeError, ValueError, TypeError, IndexError) as rule_exc:
        return rule_exc
    desc = ", ".join(repr(a) for a in avals)
    kind = type(exc) if isinstance(exc, (ValueError, TypeError, IndexError)) else RuntimeError
    return kind(f"{prim.name}: failed on inputs ({desc}) with {params or 'no parameters'}: {exc}")


class PrimNode(Node):
    """Backward of one primitive: its vjp rule applied to the saved inputs and output."""

    __slots__ = ("prim", "params", "in_meta", "needs", "saved", "versions", "saved_out",
                 "out_meta")

    def __init__(self, prim, params: dict, args: tuple, out, edges: tuple) -> None:
        Node.__init__(self, edges)
        self.prim = prim
        self.params = params
        # (shape, numpy dtype) per input; literals are ((), None)
        self.in_meta = [(a._data.shape, a._data.dtype) if hasattr(a, "_data") else ((), None)
                        for a in args]
        self.needs = [e is not None for e in edges]
        save = prim.save
        if callable(save):
            save = save(self.needs)
        if save:
            saved = [None] * len(args)
            versions = [0] * len(args)
            for i in save:
                a = saved[i] = args[i]
                if hasattr(a, "_storage"):
                    versions[i] = a._storage.version
            self.saved, self.versions = saved, versions
        else:
            self.saved = self.versions = ()
        # the output is kept by weak reference (a strong one would be a cycle out → node →
        # out); while it lives, backward uses the object itself, so identity-keyed state such
        # as forward-mode tangents still applies to it
        self.saved_out = (out._data, out._storage, out._storage.version, weakref.ref(out)) \
            if prim.save_out else None
        self.out_meta = (out._data.shape, out._data.dtype)

    @property
    def in_shapes(self) -> tuple:
        return tuple(m[0] for m in self.in_meta)

    @property
    def in_dtypes(self) -> tuple:
        return tuple(_dt._BY_NP[m[1]] if m[1] is not None else None for m in self.in_meta)

    def name(self) -> str:
        return self.prim.backward_name

    def _check(self, t, version, what):
        if t._storage.version != version:
            shape = list(t.shape)
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: [{t.dtype.name} {shape}], which is {what} of "
                f"{self.name()}, is at version {t._storage.version}; expected version {version} "
                f"instead. Hint: clone() the tensor before modifying it in place, or do the "
                f"in-place change after backward().")

    def unpack(self, create_graph: bool):
        saved = self.saved
        if saved is FREED:
            raise RuntimeError(FREED_MSG)
        for i, (s, v) in enumerate(zip(saved, self.versions)):
            if isinstance(s, Tensor):
                self._check(s, v, f"input {i}")
        out = None
        if self.saved_out is not None:
            arr, storage, version, ref = self.saved_out
            out = ref()
            if out is None or out._data is not arr or out._node is not self:
                out = Tensor._shared(arr, storage)
                if create_graph:
                    out._node, out._requires_grad = self, True
            self._check(out, version, "output 0")
        if not saved:
            saved = (None,) * len(self.in_meta)
        return saved, out

    def apply(self, grads, create_graph, retain_graph):
        xs, out = self.unpack(create_graph)
        if not retain_graph:
            self.release()
        return self.prim.vjp(self, grads[0], xs, out)

    def release(self) -> None:
        if self.saved or self.saved_out is not None:
            self.saved = FREED
            self.saved_out = None
