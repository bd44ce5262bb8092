"""Input guards: what must be true of a call for a variant's trace to stand in for it.

A variant is valid only while its guards hold: the same structure of arguments; each tensor
argument's shape, dtype, strides and ``requires_grad`` (and, when the call writes it, that it
is writable: a read-only array makes eager raise, so the call goes to eager), and which
arguments share storage;
every bound tensor alive, still over the same array (a rebound ``.data`` is noticed) and with
the same ``requires_grad``; ``.grad`` present or absent as at trace time; grad mode; anomaly
mode; module and optimizer version counters; Python numbers among the arguments and in the
closure cells and globals the function's code names (following the functions it calls).

The guards are compiled into one generated Python function, so checking them costs one call
and a few attribute reads per tensor. Note: bound tensors are checked by the *identity* of
their ndarray — an ndarray's shape, dtype and strides cannot change, and ``.data =`` is the
only way to swap it — so one ``is`` comparison covers all three.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dyngrad import dtypes as _dtypes
from dyngrad.dispatch import STATE
from dyngrad.size import Size
from dyngrad.tensor import HookEpoch, Tensor, guard_hooks

from .capture.checks import is_plain
from .capture.checks import same_plain_conditions as plain_conditions
from .capture.sources import Namer
from .generated import exec_generated
from .trace import Via

_MISSING = object()
_LEAF = "leaf"
_FLAT_SPECS: dict = {}


def flatten(args: tuple, kwargs: dict) -> tuple[list, Any]:
    """Flatten arguments into (leaves, spec). Tuples, lists and dicts are containers; the
    spec records their types, lengths and keys, and each leaf's kind."""
    if not kwargs:  # the common case: no containers, no keywords
        for a in args:
            t = type(a)
            if t is tuple or t is list or t is dict or t is Size:
                break
        else:
            n = len(args)
            spec = _FLAT_SPECS.get(n)
            if spec is None:
                spec = _FLAT_SPECS[n] = ((tuple, (_LEAF,) * n), None)
            return list(args), spec
    leaves: list = []

    def go(x):
        t = type(x)
        if t is tuple or t is list or t is Size:  # (a Size: a tuple of ints, as a shape)
            return (t, tuple(go(e) for e in x))
        if t is dict:
            return (dict, tuple((k, go(v)) for k, v in x.items()))
        leaves.append(x)
        return _LEAF
    spec = (go(args), go(kwargs) if kwargs else None)
    return leaves, spec


def unflatten(spec, leaves: list):
    it = iter(leaves)

    def go(s):
        if s is _LEAF:
            return next(it)
        t, items = s
        if t is dict:
            return {k: go(v) for k, v in items}
        if t is Size:  # (as it was passed; Size() would pin traced ints as indices)
            return tuple.__new__(Size, [go(e) for e in items])
        return t(go(e) for e in items)
    args_spec, kw_spec = spec
    return go(args_spec), (go(kw_spec) if kw_spec is not None else {})


@dataclass
class GuardSet:
    """Compiled guards: ``check(flat, spec)`` returns -1 when all hold, else the index of
    the first that failed; ``describe[i]`` says what guard i checks and ``now(i, flat)``
    reads its current value (for recompile logs)."""

    check: Callable
    describe: list
    expected: list
    now: list
    tags: list  # per guard: None, or ("number", flat index) for a number argument
    full: set = frozenset()  # guards whose description names the expected value itself
    exact: Callable | None = None  # check() with one line per guard, where ``check`` tests
    #     some guards on one line (it returns that line's first guard): see :meth:`which`

    def which(self, k: int, flat, spec) -> int:
        """The guard that failed, given that ``check`` returned ``k`` (a miss: slow path)."""
        if self.exact is None:
            return k
        j = self.exact(flat, spec)
        return k if j < 0 else j

    def text(self, i: int) -> str:
        """Guard ``i`` as ``explain()`` lists it."""
        d = self.describe[i]
        return d if i in self.full else f"{d} == {self.expected[i]!r}"

    def current(self, i: int, flat) -> Any:
        try:
            return self.now[i](flat)
        except Exception as exc:  # the object is gone, or the structure differs
            return f"<{type(exc).__name__}>"


class _Same:
    """Compares equal to an object only while it *is* the object seen at trace time (held
    by weak reference: the guard must not keep the old tensor alive)."""

    __slots__ = ("ref",)

    def __init__(self, obj) -> None:
        self.ref = weakref.ref(obj)

    def __eq__(self, other) -> bool:
        return other is self.ref()

    def __ne__(self, other) -> bool:
        return other is not self.ref()

    def __repr__(self) -> str:
        obj = self.ref()
        return "<gone>" if obj is None else f"<the same {type(obj).__name__}>"

    __hash__ = None


def build_guards(trace, flat: list, spec, dynamic_numbers: set, symbolic=None,
                 sizes=None) -> GuardSet:
    """Generate the guard function for a trace of ``fn`` called with ``flat``/``spec``.
    With ``symbolic`` (a :class:`compiler.symbolic.SymbolicDims`), the symbolic dims of the
    arguments may take any size ≥ 2, consistently with each other."""
    ns: dict[str, Any] = {"STATE": STATE, "MISSING": _MISSING, "COPYSIGN": math.copysign}
    lines = ["def check(flat, spec):"]
    describe, expected, now, tags = [], [], [], []

    full: set = set()
    merged: list[int] = []  # line numbers whose guard ``check`` tests on the line before

    def add(cond_fail: str, what: str, exp, reader, tag=None, indent: int = 4,
            names_value: bool = False, merge: bool = False) -> None:
        k = len(describe)
        if names_value:
            full.add(k)
        if merge:  # (tested as `or cond` on the previous line by check, on its own by exact)
            merged.append(len(lines))
        lines.append(f"{' ' * indent}if {cond_fail}: return {k}")
        describe.append(what)
        expected.append(exp)
        now.append(reader)
        tags.append(tag)

    namer = Namer(ns, "P")
    ns["SPEC"], ns["TENSOR"] = spec, Tensor
    add("spec != SPEC", "structure of the arguments", _spec_str(spec), lambda f: "changed")
    storages: dict[int, list] = {}
    sym_dims = symbolic.dims if symbolic is not None else {}
    written = {id(w[0]) for w in trace.writebacks}  # bindings the call writes in place
    written_args = {w[0].target for w in trace.writebacks if w[0].kind is Via.ARG}
    if symbolic is not None:
        bi, bk = symbolic.base
        lines.append(f"    d = flat[{bi}]._data.shape[{bk}] if len(flat[{bi}]._data.shape) > {bk} "
                     f"else -1")
        # (a size is served once a trace at it matched the templates: the function may read
        # the size into Python — min(n, 5), n > 3 — in ways three sizes cannot reveal)
        ns["SIZES"] = sizes if sizes is not None else set()
        add("d not in SIZES", f"symbolic size d = dim {bk} of argument {bi} is one traced",
            sorted(ns["SIZES"]), lambda f, bi=bi, bk=bk: f[bi]._data.shape[bk], ("size",))
    for i, x in enumerate(flat):
        if isinstance(x, Tensor):
            a = x._data
            ns[f"S{i}"], ns[f"D{i}"], ns[f"T{i}"] = a.shape, a.dtype, a.strides
            # (a tensor traced where a later call passes None or a number: a miss, not an
            # AttributeError from the lines below)
            add(f"not isinstance(flat[{i}], TENSOR)", f"argument {i} is a tensor", "Tensor",
                lambda f, i=i: type(f[i]).__name__)
            lines.append(f"    a = flat[{i}]._data")
            if i in sym_dims:
                shape = [sym_dims[i].get(k, n) for k, n in enumerate(a.shape)]
                expr = "(" + "".join(f"{n.a} * d + {n.b}, " if not isinstance(n, int)
                                     else f"{n}, " for n in shape) + ")"
                add(f"a.shape != {expr}", f"shape of argument {i}",
                    tuple(map(str, shape)), lambda f, i=i: f[i].shape)
                add(f"a.flags.c_contiguous is not {a.flags.c_contiguous}",
                    f"contiguity of argument {i}", a.flags.c_contiguous,
                    lambda f, i=i: f[i]._data.flags.c_contiguous)
            else:
                add(f"a.shape != S{i}", f"shape of argument {i}", a.shape,
                    lambda f, i=i: f[i].shape, ("shape", i))
                add(f"a.strides != T{i}", f"strides of argument {i}", a.strides,
                    lambda f, i=i: f[i]._data.strides)
            add(f"a.dtype is not D{i}", f"dtype of argument {i}", a.dtype.name,
                lambda f, i=i: f[i]._data.dtype.name)
            if i in written_args:  # (a read-only array: eager raises, so must the call)
                add("not a.flags.writeable", f"argument {i} is writable (the function "
                    f"writes it)", True, lambda f, i=i: f[i]._data.flags.writeable)
            add(f"flat[{i}]._requires_grad is not {x._requires_grad}",
                f"requires_grad of argument {i}", x._requires_grad,
                lambda f, i=i: f[i]._requires_grad)
            if x._requires_grad and x._node is None and trace.backward_inside:
                # a leaf at trace time: its gradient was accumulated in the graph; with
                # autograd history, backward must go on into it (a trace of that kind)
                add(f"flat[{i}]._node is not None", f"argument {i} is a leaf (no grad_fn)",
                    "a leaf", lambda f, i=i: "has a grad_fn" if f[i]._node is not None
                    else "a leaf")
            if x._requires_grad and not x._hooks and not x._post_accumulate_hooks:
                # (a hook registered later, before or after accumulation: runs eagerly)
                add(f"flat[{i}]._hooks or flat[{i}]._post_accumulate_hooks",
                    f"argument {i} has no gradient hooks", "none",
                    lambda f, i=i: f"{len(f[i]._hooks or ())} hook(s), "
                                   f"{len(f[i]._post_accumulate_hooks or ())} after "
                                   f"accumulation")
            storages.setdefault(id(x._storage), []).append(i)
        elif type(x) in (int, float) and i in dynamic_numbers:  # a runtime input
            add(f"type(flat[{i}]) is not {type(x).__name__}", f"type of argument {i}",
                type(x).__name__, lambda f, i=i: type(f[i]).__name__)
            if type(x) is int:  # (exact in the graph's float64)
                add(f"not -{1 << 52} < flat[{i}] < {1 << 52}", f"|argument {i}| < 2**52",
                    "< 2**52", lambda f, i=i: f[i])
        elif is_plain(x):  # type and value: 2 is not 2.0, -0.0 is not 0.0, np.float32(2)
            cond = " or ".join(plain_conditions(f"flat[{i}]", x, namer))
            tag = ("number", i) if type(x) in (int, float) else None
            add(cond, f"argument {i} == {x!r} ({type(x).__name__})", x,
                lambda f, i=i: f[i], tag, names_value=True)
        else:
            ns[f"O{i}"] = _ref(x)
            add(f"flat[{i}] is not O{i}()", f"identity of argument {i} "
                f"({type(x).__name__})", type(x).__name__, lambda f, i=i: type(f[i]).__name__)
    tensor_args = [i for i, x in enumerate(flat) if isinstance(x, Tensor)]
    if len(tensor_args) > 1:  # aliasing between arguments (weight tying, f(x, x))
        groups = sorted(storages.values())
        same = [f"flat[{g[0]}]._storage is not flat[{j}]._storage" for g in groups
                for j in g[1:]]
        if len(groups) <= 4:  # few groups: compare their representatives pairwise
            differ = [f"flat[{a[0]}]._storage is flat[{b[0]}]._storage"
                      for n, a in enumerate(groups) for b in groups[n + 1:]]
        else:
            ids = ", ".join(f"id(flat[{g[0]}]._storage)" for g in groups)
            differ = [f"len({{{ids}}}) != {len(groups)}"]
        add(" or ".join(same + differ), "which arguments share storage", groups,
            lambda f: "changed")
        # and where they sit in it: f(b, b[0:2]) and f(b, b[1:3]) overlap differently
        shared = [(g[0], tuple(g[1:]), _offsets(flat, g)) for g in groups if len(g) > 1]
        if shared:
            ns["SHARED"], ns["OFFSETS"] = shared, _offsets
            add("any(OFFSETS(flat, (b,) + js) != offs for b, js, offs in SHARED)",
                "offsets of arguments that share storage", [o for *_, o in shared],
                lambda f: [_offsets(f, (b,) + js) for b, js, _ in shared])
    bound_storages = set()  # (the Storage objects themselves, small and array-free: a
    for b in trace.bindings:  # set of them answers `in` without an id() call)
        obj = b.resolve(flat) if b.kind in (Via.REF, Via.GRAD) else None
        if isinstance(obj, Tensor):
            bound_storages.add(obj._storage)
    for k, b in enumerate(trace.bindings):  # an argument that views a captured tensor: at
        t = b.target() if b.kind is Via.REF else None  # the same place in it as at trace time
        if not isinstance(t, Tensor):
            continue
        for i, x in enumerate(flat):
            if isinstance(x, Tensor) and x._storage is t._storage:
                ns[f"AB{k}"] = b.target
                off = x._data.ctypes.data - t._data.ctypes.data
                add(f"AB{k}() is None or flat[{i}]._storage is not AB{k}()._storage or "
                    f"flat[{i}]._data.ctypes.data - AB{k}()._data.ctypes.data != {off}",
                    f"argument {i} views {b.name} at byte offset {off}", off,
                    lambda f, i=i, b=b: _view_offset(f[i], b.target()))
    for i, x in enumerate(flat):  # an argument must not alias a captured tensor, unless it did
        if isinstance(x, Tensor) and x._storage not in bound_storages and bound_storages:
            ns["BOUND_STORAGES"] = frozenset(bound_storages)
            add(f"flat[{i}]._storage in BOUND_STORAGES",
                f"argument {i} shares no memory with a captured tensor", "separate",
                lambda f, i=i: "shares memory")
    def grad_guard(ref, was_none: bool, name: str, alive: bool = False) -> None:
        # (alive: right after the guard that returned if ``o`` is gone; then it shares
        # that guard's line in ``check``)
        add(f"{'' if alive else 'o is None or '}o._grad is {'not ' if was_none else ''}None",
            f"{name}.grad is {'None' if was_none else 'present'}",
            "None" if was_none else "present", lambda f, ref=ref: _grad_state(ref, f),
            merge=alive)

    # a .grad guard on a bound tensor is checked right after it, through the same `o`
    by_owner: dict[int, list] = {}
    for k, (ref, _, _) in enumerate(trace.grad_guards):
        owner = ref() if isinstance(ref, weakref.ref) else None
        if owner is not None:
            by_owner.setdefault(id(owner), []).append(k)
    done_grad_guards = set()
    hook_guarded: list = []  # bound leaves assumed to have no gradient hook
    epoch = HookEpoch()  # (moved by a hook registered on any of them)
    for k, b in enumerate(trace.bindings):
        if b.kind is Via.ARG:
            continue
        ns[f"B{k}"], ns[f"A{k}"] = b.target, b.array
        if b.kind is Via.REF:
            t = b.target()
            rg = t._requires_grad if t is not None else False
            lines.append(f"    o = B{k}()")
            # (the same array object: its writability cannot have changed since the trace
            # wrote it, see Note [the tensor's array] in dyngrad/tensor.py; and no gradient
            # hook registered since: the variant's HookEpoch, below, counts those)
            if rg and t is not None and t._node is None and not t._hooks and \
                    not t._post_accumulate_hooks:
                guard_hooks(t, epoch)
                hook_guarded.append((weakref.ref(t), b.name))
            add(f"o is None or o._data is not A{k}() or o._requires_grad is not {rg}",
                f"bound tensor {b.name} (alive, same storage, requires_grad={rg})",
                "same", lambda f, k=k: _describe_ref(trace.bindings[k]))
            if rg and t is not None and t._node is not None:  # a captured non-leaf: the same
                ns[f"NODE{k}"], ns[f"NR{k}"] = weakref.ref(t._node), t._out_nr  # grad_fn, and
                add(f"o._node is not NODE{k}() or o._node.pre_hooks is not None and "  # no hook
                    f"o._node.pre_hooks.get(NR{k}) or o._node.retained is not None and "
                    f"NR{k} in o._node.retained", f"bound tensor {b.name} has the same "
                    f"grad_fn, no gradient hooks and no retain_grad()", "none",
                    lambda f, k=k: _describe_node(trace.bindings[k]))
            for j in by_owner.get(id(t), ()) if t is not None else ():
                if j not in done_grad_guards:
                    done_grad_guards.add(j)
                    grad_guard(*trace.grad_guards[j], alive=True)
        elif b.kind is Via.SOURCE:  # re-read from its location each call (effect replay)
            ns[f"BS{k}"], ns[f"BT{k}"], ns[f"BD{k}"] = b.shape, b.strides, b.dtype
            ns["TENSOR"] = Tensor
            lines.append(f"    o = B{k}(flat)")
            add(f"not isinstance(o, TENSOR) or o._data.shape != BS{k} or o._data.strides != "
                f"BT{k} or o._data.dtype is not BD{k} or o._requires_grad is not "
                f"{b.requires_grad}", f"{b.name} is a tensor of shape {b.shape}, dtype "
                f"{b.dtype}, requires_grad={b.requires_grad}", "such a tensor",
                lambda f, k=k: _describe_source(trace.bindings[k], f))
            if id(b) in written:
                add("not o._data.flags.writeable", f"{b.name} is writable (the function "
                    f"writes it)", True, lambda f, k=k: _writable_at(trace.bindings[k], f))
        elif b.kind is Via.GRAD:
            lines.append(f"    o = {_owner_expr(b.target, f'B{k}')}")
            add(f"o is None or o._grad is None or o._grad._data is not A{k}()",
                f"{b.name} (the same gradient tensor)", "same",
                lambda f, k=k: _describe_grad(trace.bindings[k], f))
        elif b.kind is Via.ARRAY:
            add(f"B{k}() is None", f"{b.name} alive", "alive", lambda f: "gone")
            if id(b) in written:
                add(f"not B{k}().flags.writeable", f"{b.name} is writable (the function "
                    f"writes it)", True, lambda f, k=k: _writable(trace.bindings[k]))
    if hook_guarded:  # (a hook registered on any of them moves the variant's epoch)
        ns["HOOKS"] = epoch
        add("HOOKS.n", "no gradient hook registered since tracing on a captured leaf",
            "none", lambda f: _hooked(hook_guarded))
    for k, (ref, was_none, name) in enumerate(trace.grad_guards):
        if k in done_grad_guards:
            continue
        ns[f"G{k}"] = ref
        lines.append(f"    o = {_owner_expr(ref, f'G{k}')}")
        grad_guard(ref, was_none, name)
    for k, (ref, version) in enumerate(trace.objects):
        ns[f"OB{k}"] = ref
        obj = ref()
        what = f"{type(obj).__name__}._version" if obj is not None else "object version"
        lines.append(f"    o = OB{k}()")
        if isinstance(version, list):  # (moved on by effect replay: see compiler/api.py)
            ns[f"OV{k}"] = version
            add(f"o is None or o._version != OV{k}[0]", what, version[0],
                lambda f, ref=ref: None if ref() is None else ref()._version)
        else:
            add(f"o is None or o._version != {version}", what, version,
                lambda f, ref=ref: None if ref() is None else ref()._version)
    for k, (ref, flag) in enumerate(trace.training):  # (not counted by the versions)
        ns[f"TR{k}"] = ref
        obj = ref()
        lines.append(f"    o = TR{k}()")
        add(f"o is None or o.training is not {flag}",
            f"{type(obj).__name__ if obj is not None else 'module'}.training", flag,
            lambda f, ref=ref: None if ref() is None else ref().training)
    for k, (ref, name, flag) in enumerate(trace.flags):  # (library flags: read_flag)
        ns[f"FL{k}"], ns[f"FV{k}"] = ref, flag
        obj = ref()
        lines.append(f"    o = FL{k}()")
        add(f"o is None or o.{name} is not FV{k}",
            f"{type(obj).__name__ if obj is not None else 'object'}.{name}", flag,
            lambda f, ref=ref, name=name: None if ref() is None else getattr(ref(), name))
    for k, src in enumerate(trace.scalar_sources):
        if isinstance(src.owner, weakref.ref):
            ns[f"SC{k}"] = src.owner
            add(f"SC{k}() is None", f"owner of scalar {src.value.name} alive", "alive",
                lambda f: "gone")
    add(f"STATE.grad_enabled is not {trace.grad_enabled}", "grad mode", trace.grad_enabled,
        lambda f: STATE.grad_enabled)
    # (the default float dtype Python floats and dtype-less factories took in the trace;
    #  set_default_dtype itself never runs inside one, so it is today's)
    ns["DTYPES"], ns["DEFAULT_FLOAT"] = _dtypes, _dtypes.get_default_dtype()
    add("DTYPES._default_float is not DEFAULT_FLOAT", "default dtype (set_default_dtype)",
        ns["DEFAULT_FLOAT"].name, lambda f: _dtypes.get_default_dtype().name)
    add(f"STATE.anomaly is not {trace.anomaly}", "anomaly mode (detect_anomaly)",
        trace.anomaly, lambda f: STATE.anomaly)
    _source_guards(trace.checks, ns, lines, add)
    lines.append("    return -1")
    exact = None
    if merged:  # the exact check, one line per guard, runs only to name a miss
        exec_generated("\n".join(lines).replace("def check(", "def exact(", 1), ns)
        exact = ns["exact"]
        for n in reversed(merged):  # `if a: return k` + `if b: return j` -> `if a or b: ...`
            head, ret = lines[n - 1].rsplit(": return ", 1)
            lines[n - 1] = f"{head} or {lines[n].strip()[3:].rsplit(': return ', 1)[0]}" \
                f": return {ret}"
            del lines[n]
    exec_generated("\n".join(lines), ns)
    return GuardSet(ns["check"], describe, expected, now, tags, full, exact)


def _source_guards(checks: list, ns: dict, lines: list, add) -> None:
    """The capture's checks on the sources the trace read (see compiler/capture): one line
    each, inside one ``try`` — a source that can no longer be read (a key removed, an
    attribute deleted) fails the guard listed last."""
    if not checks:
        return
    from .capture import guard_lines
    from .capture.checks import Equals
    lines.append("    try:")
    for cond, pre, check, reader in guard_lines(checks, ns):
        lines.extend(f"        {p}" for p in pre)
        tag = ("source", check.source.describe()) if isinstance(check, Equals) and \
            type(check.value) in (int, float) else None
        add(cond, check.describe(), check.expected(),
            lambda f, reader=reader, check=check: check.now(reader(f)), tag, indent=8,
            names_value=True)
    lines.append("    except Exception:")
    add("True", "every source the trace read can still be read", "readable",
        lambda f: "an error", indent=8)


def _offsets(flat, group) -> tuple:
    """Byte offsets of arguments ``group[1:]`` from argument ``group[0]`` (same storage)."""
    base = flat[group[0]]._data.ctypes.data
    return tuple(flat[j]._data.ctypes.data - base for j in group[1:])


def _ref(x):
    try:
        return weakref.ref(x)
    except TypeError:
        return lambda x=x: x


def _spec_str(spec) -> str:
    return repr(spec).replace("'leaf'", "·")


def _writable(b):
    obj = b.target()
    arr = obj._data if isinstance(obj, Tensor) else obj
    return None if arr is None else arr.flags.writeable


def _view_offset(x, t):
    if t is None or x._storage is not t._storage:
        return "another memory"
    return x._data.ctypes.data - t._data.ctypes.data


def _describe_source(b, flat) -> str:
    t = b.target(flat)
    if not isinstance(t, Tensor):
        return f"a {type(t).__name__}"
    return f"shape {t.shape}, dtype {t._data.dtype}, requires_grad={t._requires_grad}"


def _writable_at(b, flat):
    t = b.target(flat)
    return t._data.flags.writeable if isinstance(t, Tensor) else None


def _hooked(leaves: list) -> str:
    """Which of a variant's hook-guarded leaves have gradient hooks now."""
    named = [f"{name} ({len(t._hooks or ()) + len(t._post_accumulate_hooks or ())} hook(s))"
             for ref, name in leaves
             for t in [ref()] if t is not None and (t._hooks or t._post_accumulate_hooks)]
    return ", ".join(named) or "a hook registered and removed since"


def _describe_node(b) -> str:
    t = b.target()
    if t is None:
        return "gone"
    node = t._node
    hooks = len((node.pre_hooks or {}).get(t._out_nr, ())) if node is not None else 0
    retained = node is not None and node.retained is not None and t._out_nr in node.retained
    return f"grad_fn {type(node).__name__ if node is not None else None}, {hooks} hook(s)" \
        f"{', retain_grad()' if retained else ''}"


def _describe_ref(b) -> str:
    t = b.target()
    if t is None:
        return "gone"
    if t._data is not b.array():
        return "rebound (.data or storage changed)"
    return f"requires_grad={t._requires_grad}"


def _owner_expr(ref, name: str) -> str:
    """Code reaching a .grad owner: an argument (``("arg", i)``) or a weak reference."""
    if isinstance(ref, tuple):
        return f"flat[{ref[1]}]"
    return f"{name}()"


def _grad_state(ref, flat) -> str:
    o = flat[ref[1]] if isinstance(ref, tuple) else ref()
    if o is None:
        return "gone"
    return "None" if o._grad is None else "present"


def _describe_grad(b, flat) -> str:
    o = b.owner(flat)
    if o is None:
        return "owner gone"
    return "None" if o._grad is None else "a different tensor"
