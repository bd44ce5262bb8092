"""Sources: where a Python value the trace used came from, as an expression a guard re-reads.

A source is a small immutable tree: roots (an argument, a global, a closure cell, a builtin,
an object the capture holds) and steps from them (an attribute, an item, a pure call such as
``len``). ``expr()`` renders it as Python text over the guard function's namespace — the same
lookups the code did, so a guard sees what the code would see now — and ``describe()`` renders
it the way Dynamo writes sources: ``G['scale'][0]``, ``L['self'].temperature``.

Objects a root needs (a globals dict, a cell, a held object) are put into the namespace by a
:class:`Namer`, which gives each distinct object one name.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Any


class Namer:
    """Gives objects names in a generated function's namespace, one name per object."""

    def __init__(self, ns: dict, prefix: str = "K") -> None:
        self.ns = ns
        self.prefix = prefix
        self._names: dict[int, str] = {}

    def name(self, obj: Any, hint: str | None = None) -> str:
        key = id(obj)
        n = self._names.get(key)
        if n is None:
            n = f"{hint or self.prefix}{len(self._names)}"
            while n in self.ns:  # never shadow a name the guard function already uses
                n += "_"
            self._names[key] = n
            self.ns[n] = obj
        return n


def _literal(key: Any) -> bool:
    """A key that renders as its own repr (an int, str, bool, None or a tuple of them)."""
    if type(key) in (int, str, bool) or key is None:
        return True
    return type(key) is tuple and all(_literal(k) for k in key)


class Source:
    """Where a value came from. Subclasses are frozen dataclasses (hashable, comparable).

    Note (hashes): a source is a chain (``L['self'].blocks[0].attn.weight``) and the capture
    looks sources up in dicts all the time, so a step's hash is computed once and kept in
    the instance (``_hash``, not a field: equality and ``repr`` ignore it); it is never
    stale, since a source is immutable and its held objects are keyed by identity.
    """

    __slots__ = ()

    def expr(self, namer: Namer) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def root(self) -> Source:
        return self

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, eq=False)
class Flat(Source):
    """Leaf ``index`` of the flattened arguments of the compiled call (``name`` for humans)."""

    index: int
    name: str

    def expr(self, namer: Namer) -> str:
        return f"flat[{self.index}]"

    def describe(self) -> str:
        return f"L[{self.name!r}]"

    def __eq__(self, other) -> bool:
        return type(other) is Flat and other.index == self.index

    def __hash__(self) -> int:
        return hash(("flat", self.index))


@dataclass(frozen=True, eq=False)
class ArgTree(Source):
    """A tuple, list or dict argument: its structure is checked by the argument spec."""

    path: tuple
    name: str

    def expr(self, namer: Namer) -> str:
        raise TypeError("an argument container is checked by the argument spec")

    def describe(self) -> str:
        return f"L[{self.name!r}]"

    def __eq__(self, other) -> bool:
        return type(other) is ArgTree and other.path == self.path

    def __hash__(self) -> int:
        return hash(("argtree", self.path))


class _ByIdentity(Source):
    """A root that holds an object (a globals dict, a cell, a function): equal when it holds
    the same object."""

    __slots__ = ()

    def _key(self):
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((type(self).__name__, self._key()))
            object.__setattr__(self, "_hash", h)
        return h


@dataclass(frozen=True, eq=False)
class Global(_ByIdentity):
    """``globals[name]`` of a function (``module`` names the module for humans)."""

    globals: dict
    name: str
    module: str

    def _key(self):
        return (id(self.globals), self.name)

    def expr(self, namer: Namer) -> str:
        return f"{namer.name(self.globals, 'G')}[{self.name!r}]"

    def describe(self) -> str:
        return f"G[{self.name!r}]" if not self.module else f"G[{self.module}][{self.name!r}]"


@dataclass(frozen=True, eq=False)
class Builtin(_ByIdentity):
    """A builtin a function's code names: it is what the name means while ``globals`` does
    not define it."""

    globals: dict
    builtins: dict
    name: str

    def _key(self):
        return (id(self.globals), self.name)

    def expr(self, namer: Namer) -> str:
        g = namer.name(self.globals, "G")
        b = namer.name(self.builtins, "B")
        return f"({g}[{self.name!r}] if {self.name!r} in {g} else {b}[{self.name!r}])"

    def describe(self) -> str:
        return f"builtins.{self.name}"


@dataclass(frozen=True, eq=False)
class Cell(_ByIdentity):
    """The contents of closure cell ``name`` of ``owner`` (a function's qualified name)."""

    cell: Any
    name: str
    owner: str

    def _key(self):
        return id(self.cell)

    def expr(self, namer: Namer) -> str:
        return f"{namer.name(self.cell, 'C')}.cell_contents"

    def describe(self) -> str:
        return f"C[{self.name!r}]"  # (a closure cell of {owner})


@dataclass(frozen=True, eq=False)
class Held(_ByIdentity):
    """An object the capture holds itself: the compiled function, a module imported in the
    code (``what`` says which)."""

    obj: Any
    what: str

    def _key(self):
        return id(self.obj)

    def expr(self, namer: Namer) -> str:
        return namer.name(self.obj, "O")

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class Attr(Source):
    """``base.name``."""

    base: Source
    name: str

    def expr(self, namer: Namer) -> str:
        b = self.base.expr(namer)
        if self.name.isidentifier() and not keyword.iskeyword(self.name):
            if self.name.startswith("__") and not self.name.endswith("__"):
                return f"getattr({b}, {self.name!r})"  # (no name mangling in the guard)
            return f"{b}.{self.name}"
        return f"getattr({b}, {self.name!r})"

    def describe(self) -> str:
        return f"{self.base.describe()}.{self.name}"

    def root(self) -> Source:
        return self.base.root()

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.base, self.name))
            object.__setattr__(self, "_hash", h)
        return h


@dataclass(frozen=True, eq=False)
class Item(Source):
    """``base[key]``; a key that is not a literal (a tensor keying ``opt.state``) is held."""

    base: Source
    key: Any

    def expr(self, namer: Namer) -> str:
        b = self.base.expr(namer)
        if _literal(self.key):
            return f"{b}[{self.key!r}]"
        return f"{b}[{namer.name(self.key, 'K')}]"

    def describe(self) -> str:
        k = repr(self.key) if _literal(self.key) else f"<{type(self.key).__name__}>"
        return f"{self.base.describe()}[{k}]"

    def root(self) -> Source:
        return self.base.root()

    def _key(self):
        return (self.base, self.key if _literal(self.key) else ("id", id(self.key)))

    def __eq__(self, other) -> bool:
        return type(other) is Item and other._key() == self._key()

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(("item", self._key()))
            object.__setattr__(self, "_hash", h)
        return h


@dataclass(frozen=True, eq=False)
class Call(Source):
    """A pure function of a source, re-run by the guard: ``len(base)``, ``tuple(base)`` (a
    dict's keys), ``base.get('k', default)``, ``type(base)``."""

    fn: str  # the function's name in the guard namespace's builtins, or a method name
    base: Source
    args: tuple = ()
    method: bool = False

    def expr(self, namer: Namer) -> str:
        b = self.base.expr(namer)
        args = "".join(f", {a!r}" for a in self.args)
        if self.method:
            return f"{b}.{self.fn}({args[2:]})"
        return f"{self.fn}({b}{args})"

    def describe(self) -> str:
        b = self.base.describe()
        args = "".join(f", {a!r}" for a in self.args)
        return f"{b}.{self.fn}({args[2:]})" if self.method else f"{self.fn}({b}{args})"

    def root(self) -> Source:
        return self.base.root()

    def _key(self):
        return (self.fn, self.base, self.args, self.method)

    def __eq__(self, other) -> bool:
        return type(other) is Call and other._key() == self._key()

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(("call", self._key()))
            object.__setattr__(self, "_hash", h)
        return h


def literal_key(key: Any) -> bool:
    """Whether ``key`` can key an :class:`Item` by value (else it is held by identity)."""
    return _literal(key)
