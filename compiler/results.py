"""How a compiled call's result is made from its outputs: the result spec the tracer writes
(``Tracer._result_spec``) and the runtime builds on every call, a tree of the records below.

Each record builds its part of the result (:meth:`Spec.build`) and says how the generated
call path builds it (:meth:`Spec.expr`: source text over ``outs``, the graph's output arrays,
and ``flat``, the flattened arguments); records without a fast form are built by ``BUILD``.

Note (the result aliases as eager's does): a tensor returned twice is one object; a returned
view of another returned tensor, an argument or a captured tensor is made again at call time
by replaying its movement ops on that tensor's array; an argument or captured tensor comes
back as itself, and a returned ``.grad`` as its owner's ``.grad`` after the call's effects.
Tensors returned twice or viewed by another are built first, into slots (:class:`Let`,
:class:`Ref`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dyngrad.autograd.graph import _FREED_MSG, Node
from dyngrad.tensor import Storage, Tensor


class Spec:
    """A part of the result."""

    def build(self, outs: list, flat: list, grad_node=None, env=None) -> Any:
        raise NotImplementedError(type(self).__name__)  # (every record defines it)

    def expr(self, ns: dict, lines: list) -> str:
        """Source text building this part in the generated call path; ``lines`` receives
        statements that must run first (slots). By default, a call of :meth:`build`."""
        return f"{bind(ns, 'SPEC', self)}.build(outs, flat)"

    def children(self) -> tuple:
        return ()

    def holds_views(self) -> bool:
        """Whether the result rebuilds a view (its movement ops hold the traced sizes)."""
        return isinstance(self, View) or any(c.holds_views() for c in self.children())


@dataclass(frozen=True)
class Fresh(Spec):
    """A new tensor over output ``k``."""

    k: int

    def build(self, outs, flat, grad_node=None, env=None):
        return fresh(outs[self.k])

    def expr(self, ns, lines):
        return f"FRESH(outs[{self.k}])"


@dataclass(frozen=True)
class GradOut(Spec):
    """A differentiable output: its grad_fn (output ``nr`` of ``grad_node``) runs the
    compiled backward."""

    nr: int
    k: int

    def build(self, outs, flat, grad_node=None, env=None):
        t = fresh(outs[self.k])
        t._node, t._out_nr, t._requires_grad = grad_node, self.nr, True
        return t


@dataclass(frozen=True)
class Spent(Spec):
    """A loss a backward() inside the call already ran through, as eager returns it: a
    second backward raises."""

    k: int
    name: str

    def build(self, outs, flat, grad_node=None, env=None):
        return spent_tensor(outs[self.k], spent_node(self.name))

    def expr(self, ns, lines):
        ns["SPENT"] = spent_tensor
        return f"SPENT(outs[{self.k}], {bind(ns, 'GRAPH', spent_node(self.name))})"


@dataclass(frozen=True)
class Number(Spec):
    """A Python number computed in the graph (``float`` or ``int`` of output ``k``)."""

    k: int
    type: type

    def build(self, outs, flat, grad_node=None, env=None):
        return self.type(outs[self.k])

    def expr(self, ns, lines):
        return f"{self.type.__name__}(outs[{self.k}])"


@dataclass(frozen=True)
class Input(Spec):
    """An argument or captured tensor, returned as itself."""

    binding: Any  # trace.Binding

    def build(self, outs, flat, grad_node=None, env=None):
        return self.binding.resolve(flat)


@dataclass(frozen=True)
class Alias(Spec):
    """A new tensor over an argument's or captured tensor's memory (``x.detach()``,
    ``p.data``)."""

    binding: Any  # trace.Binding
    requires_grad: bool

    def build(self, outs, flat, grad_node=None, env=None):
        obj = self.binding.resolve(flat)
        t = Tensor._shared(obj._data, obj._storage)
        t._requires_grad = self.requires_grad
        return t


@dataclass(frozen=True)
class GradOf(Spec):
    """A returned ``.grad``: its owner's, once the call's effects are done (the guards have
    seen the owner alive)."""

    owner: Any  # weak reference to the owner, or ("arg", flat index)

    def build(self, outs, flat, grad_node=None, env=None):
        owner = flat[self.owner[1]] if isinstance(self.owner, tuple) else self.owner()
        return owner._grad


@dataclass(frozen=True)
class Const(Spec):
    """A Python value returned as it was (a number, a string, None, an object kept)."""

    value: Any

    def build(self, outs, flat, grad_node=None, env=None):
        return self.value


@dataclass(frozen=True)
class Let(Spec):
    """``slots`` built first, in order (``Ref(n)`` reads slot n), then ``body``."""

    slots: tuple
    body: Spec

    def build(self, outs, flat, grad_node=None, env=None):
        env = []
        for s in self.slots:
            env.append(s.build(outs, flat, grad_node, env))
        return self.body.build(outs, flat, grad_node, env)

    def expr(self, ns, lines):
        for n, s in enumerate(self.slots):
            lines.append(f"e{n} = {s.expr(ns, lines)}")
        return self.body.expr(ns, lines)

    def children(self):
        return (*self.slots, self.body)


@dataclass(frozen=True)
class Ref(Spec):
    """Slot ``n`` of the enclosing :class:`Let`."""

    n: int

    def build(self, outs, flat, grad_node=None, env=None):
        return env[self.n]

    def expr(self, ns, lines):
        return f"e{self.n}"


@dataclass(frozen=True)
class View(Spec):
    """A view of ``base`` (a spec) made again by its movement ``ops``. ``role``: ("plain",
    requires_grad), ("grad", output number of the compiled backward) or ("spent", name)."""

    base: Spec
    ops: tuple
    role: tuple

    def build(self, outs, flat, grad_node=None, env=None):
        return view_of(self.base.build(outs, flat, grad_node, env), self.ops, self.role,
                       grad_node)

    def expr(self, ns, lines):
        name = bind(ns, "VSPEC", self)
        ns["VIEW"] = view_of
        return f"VIEW({self.base.expr(ns, lines)}, {name}.ops, {name}.role)"

    def children(self):
        return (self.base,)


@dataclass(frozen=True)
class Seq(Spec):
    """A tuple or list of parts."""

    type: type  # tuple or list
    items: tuple

    def build(self, outs, flat, grad_node=None, env=None):
        return self.type(s.build(outs, flat, grad_node, env) for s in self.items)

    def expr(self, ns, lines):
        if self.type is tuple:
            return "(" + "".join(s.expr(ns, lines) + ", " for s in self.items) + ")"
        return "[" + ", ".join(s.expr(ns, lines) for s in self.items) + "]"

    def children(self):
        return self.items


@dataclass(frozen=True)
class NamedTuple(Spec):
    """A namedtuple of class ``type``."""

    type: type
    items: tuple

    def build(self, outs, flat, grad_node=None, env=None):
        return self.type(*(s.build(outs, flat, grad_node, env) for s in self.items))

    def expr(self, ns, lines):
        return f"{bind(ns, 'NT', self.type)}(" + "".join(s.expr(ns, lines) + ", "
                                                        for s in self.items) + ")"

    def children(self):
        return self.items


@dataclass(frozen=True)
class Dict(Spec):
    """A dict: its keys as they were, its values built."""

    keys: tuple
    items: tuple

    def build(self, outs, flat, grad_node=None, env=None):
        return {k: s.build(outs, flat, grad_node, env) for k, s in zip(self.keys, self.items)}

    def expr(self, ns, lines):
        name = bind(ns, "KEYS", self.keys)
        return "{" + ", ".join(f"{name}[{i}]: {s.expr(ns, lines)}"
                               for i, s in enumerate(self.items)) + "}"

    def children(self):
        return self.items


def bind(ns: dict, prefix: str, value) -> str:
    """A new name in the generated code's namespace ``ns`` for ``value``."""
    k = 0
    while f"{prefix}{k}" in ns:
        k += 1
    ns[f"{prefix}{k}"] = value
    return f"{prefix}{k}"


# ------------------------------------------------------------------ the tensors made


def replay_view_array(arr: np.ndarray, ops: tuple) -> np.ndarray:
    """``arr`` through the movement ops of a view chain (``Tensor._view_chain``), as their
    numpy impls give it: the same view eager made when ``arr`` has the layout it had."""
    for prim, params in ops:
        arr = prim.impl(arr, **params)
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
    return arr


def fresh(arr: np.ndarray) -> Tensor:
    t = object.__new__(Tensor)
    t._data, t._storage = arr, Storage()
    return t


class SpentGraph(Node):
    """The grad_fn of a returned tensor whose graph a backward() inside the compiled call
    already used and freed: a second backward raises as eager's would."""

    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        super().__init__(())
        self.label = label

    def name(self) -> str:
        return self.label

    def apply(self, grads, create_graph, retain_graph):
        raise RuntimeError(_FREED_MSG)


_SPENT: dict = {}


def spent_node(name: str) -> SpentGraph:
    node = _SPENT.get(name)
    if node is None:
        node = _SPENT[name] = SpentGraph(name)  # stateless: one per name will do
    return node


def spent_tensor(arr: np.ndarray, node: SpentGraph) -> Tensor:
    t = object.__new__(Tensor)
    t._data, t._storage, t._node, t._requires_grad = arr, Storage(), node, True
    return t


def view_of(base: Tensor, ops: tuple, role: tuple, grad_node=None) -> Tensor:
    """The view of ``base`` that ``ops`` (movement ops) make, as eager makes it: over
    ``base``'s storage, with its root as ``_base``."""
    t = Tensor._shared(replay_view_array(base._data, ops), base._storage)
    t._base = base._base if base._base is not None else base
    t._view_chain = base._view_chain + ops
    t._hist = base._storage.hist
    if role[0] == "grad":
        t._node, t._out_nr, t._requires_grad = grad_node, role[1], True
    elif role[0] == "spent":
        t._node, t._requires_grad = spent_node(role[1]), True
    else:
        t._requires_grad = role[1]
    return t
