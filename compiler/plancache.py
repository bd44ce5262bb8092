"""The plan cache: what the passes and the backend made of a traced graph, kept on disk so that
a new process that traces the same graph skips them.

A compiled call's first trace in a process pays the trace (the step run once through the
capture and the tracer), the passes (``pipeline.lower``) and the backend's work: fusion, the
memory plan, the module's IR and its compile. The LLVM object cache (``backends/llvm/
cache.py``) saves the compile; this cache saves the rest but the trace — for W8 (nanoGPT)
about 0.8 s of a process's first calls.

Key: the SHA-256 of the trace's joint graph as pickled (every node's primitive, by name, its
parameters and literals, every value's shape and dtype, constants' bytes, value guards,
inputs, scalars and outputs, and which inputs are the backward's cotangents), of the pass
options, and of everything else the result depends on: the source of ``dyngrad`` and
``compiler`` (a changed file changes every key), the versions of Python, numpy and llvmlite,
the target machine, the ``DYNGRAD_*`` (and ``NPY_*``, ``OMP_*``, ``OPENBLAS_*``) settings,
the CPU features numpy's kernels use (the passes fold constants with numpy) and whether the
GEMM splits across threads.
Equal keys mean equal graphs under equal code — the passes are functions of those — so an
entry is what this process would make of its trace, up to choices either way is right
(a measured kernel path). Those choices are kept beside the compiled code
(``choices.py``): an entry records a digest of the decision files as they were after it was
made, and is taken only while they are the same, so a process takes the decisions the plan
was made with, as one that compiled would.

Value: the :class:`~compiler.pipeline.Lowered` graph and the backend's executables of it,
pickled together (shared objects stay shared). The guards and the in-place write-backs
are never cached: they are made from this call's objects (``pipeline.compile_trace``), and
each executable is kept per in-place choice. A driver plan keeps its layout and the key of
its module in the object cache (Note [a plan in the plan cache] in ``driver.py``); restoring
it loads that module and makes the run-time state again. Hybrid plans, symbolic variants'
forms and plans with collectives are not kept.

Anything that fails — a graph that does not pickle (a parameter that is a function defined
in a function), an unreadable or corrupt entry (its hash is checked), a module gone from the
object cache — counts as no entry: the pipeline runs as without the cache, which is also what
``DYNGRAD_PLAN_CACHE=0`` or ``DYNGRAD_CACHE=0`` selects.

``DYNGRAD_PLAN_CACHE=roundtrip`` (the test suite's stress mode) makes every plan go through
pickling and back in this process, the stored copy run instead of the one made: a plan that
depends on anything pickling loses fails the tests that use it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy

MAGIC = b"DGPLAN01"
stats = {"hits": 0, "plans": 0, "misses": 0, "stored": 0, "unkeyed": 0, "refused": 0,
         "round_trips": 0}  # (plans: executables restored with the entries hit)
_IGNORED_SETTINGS = ("DYNGRAD_LOG", "DYNGRAD_CACHE_DIR", "DYNGRAD_PLAN_CACHE",
                     "DYNGRAD_VARIANT_CACHE")


def mode() -> str:
    """'on', 'off' or 'roundtrip' (``DYNGRAD_PLAN_CACHE``; off with the disk cache off)."""
    from .backends.llvm import cache
    m = os.environ.get("DYNGRAD_PLAN_CACHE", "1").strip().lower()
    if m in ("0", "off", "false", "no"):
        return "off"
    if m == "roundtrip":
        return m
    return "on" if cache._enabled() else "off"


@dataclass
class Entry:
    """What one key holds: the lowered trace and the backend's executables of its parts,
    per ``(part, in-place writes)``; ``decisions``: the digest of the decision files the
    executables were made under; ``unkept``: executables were made that do not pickle (a
    hybrid plan), so a process that makes them again need not write the entry again."""

    lowered: object
    plans: dict = field(default_factory=dict)
    decisions: str = ""
    unkept: bool = False


@functools.cache
def _sources() -> str:
    """A digest of every Python file of ``dyngrad`` and ``compiler`` — its path and its
    bytes (~10 ms once per process; not its size and modification time: installed sources
    often carry one fixed time, as in Nix's store or a wheel built with
    ``SOURCE_DATE_EPOCH``, and a change may keep a file's size) — with the versions the
    code generator and the passes depend on."""
    import llvmlite
    import numpy
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in ("dyngrad", "compiler"):
        for f in sorted((root / package).rglob("*.py")):
            data = f.read_bytes()
            h.update(f"{f.relative_to(root)}\0{len(data)}\0".encode())
            h.update(data)
    for part in (sys.version, numpy.__version__, llvmlite.__version__, platform.machine()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


@functools.cache
def _numpy_kernels() -> tuple:
    """The CPU features numpy's own kernels run with in this process (``NPY_DISABLE_CPU_
    FEATURES`` and the like turn some off): the passes fold constants with numpy
    (``passes/fold.py``), whose exp or tanh give other bits on other kernels."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # (numpy 1.x)
        from numpy.core._multiarray_umath import __cpu_features__
    return tuple(sorted(k for k, on in __cpu_features__.items() if on))


def _setting() -> bytes:
    """What the backend's code depends on besides the graph and the sources, now."""
    from .backends.llvm import gemm, target, threads
    t = target.current()
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith(("DYNGRAD_", "OMP_", "OPENBLAS_", "NPY_"))
                 and k not in _IGNORED_SETTINGS)
    return repr((t.cpu, t.host, t.features, env, gemm.uses_threads(), threads.team(),
                 _numpy_kernels())).encode()


def _decisions() -> str:
    """A digest of the decision files (matmul, convolution, vector width) as they are now."""
    from .backends.llvm import choices, convtune, tune, widths
    h = hashlib.sha256()
    for name in (tune.FILE, convtune.FILE, widths.FILE):
        try:
            h.update(choices.path(name).read_bytes())
        except OSError:
            h.update(b"-")
        h.update(b"\0")
    return h.hexdigest()


def lookup(trace, backend, check_each: bool) -> tuple:
    """(key, entry) for ``trace`` compiled by ``backend`` with the pipeline's options: the key
    (None: the cache is off, the backend keeps no plans, or the graph does not pickle) and
    the entry stored under it (None: none; always None in round-trip mode)."""
    m = mode() if backend.keeps_plans else "off"
    if m == "off":
        return None, None
    k = key(trace, (backend.vector_math, backend.plans_memory, check_each))
    return k, (load(k) if k is not None and m == "on" else None)


def keep(k: str, lowered, plans: dict) -> Entry | None:
    """What the pipeline made of key ``k``'s trace — written to disk, or in round-trip mode
    pickled and restored here: then the restored copy, which the caller runs instead (None
    when it did not pickle)."""
    entry = Entry(lowered, plans)
    if mode() != "roundtrip":
        store(k, entry)
        return None
    copy = roundtrip(entry)
    return None if copy is entry else copy


def key(trace, options: tuple) -> str | None:
    """The key of ``trace``'s lowering and compile with ``options`` (see the module
    docstring), or None when its graph does not pickle."""
    bw = trace.backward
    try:
        graph = pickle.dumps((trace.joint, len(trace.graph.outputs),
                              None if bw is None else list(bw.cotangents), options),
                             protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - (a parameter pickle refuses: no key, no entry)
        stats["unkeyed"] += 1
        return None
    h = hashlib.sha256(graph)
    h.update(_sources().encode())
    h.update(_setting())
    return h.hexdigest()


def _path(k: str) -> Path:
    from .backends.llvm import cache
    return cache.directory() / f"{k}.plan"


def load(k: str) -> Entry | None:
    """The entry of key ``k`` whose decisions are today's, restored, or None."""
    from .backends.llvm import cache
    payload = cache._read(_path(k), MAGIC)
    if payload is None:
        stats["misses"] += 1
        return None
    if not _private(cache.directory()):  # (see _Unpickler's note)
        stats["refused"] += 1
        return None
    try:
        entry = _loads(payload)
    except Exception:  # noqa: BLE001 - (a module gone from the object cache, a symbol not
        stats["refused"] += 1  #        here, an entry of other code: as if none)
        return None
    if not isinstance(entry, Entry) or entry.decisions != _decisions():
        stats["refused"] += 1
        return None
    stats["hits"] += 1
    stats["plans"] += len(entry.plans)
    return entry


def _private(directory: Path) -> bool:
    """Whether ``directory`` is this user's and nobody else may write to it (as the cache
    makes it: 0o700). A shared or group-writable one is read for no entry."""
    try:
        st = directory.stat()
    except OSError:
        return False
    getuid = getattr(os, "getuid", None)  # (none on Windows: no owners or modes to check,
    if getuid is None:  #                    as for the object code beside it)
        return True
    return st.st_uid == getuid() and not st.st_mode & 0o022


def store(k: str, entry: Entry) -> None:
    """Write ``entry`` under ``k`` (atomically; what does not pickle is left out — an entry
    without its executables still saves the passes)."""
    from .backends.llvm import cache
    entry.decisions = _decisions()
    try:
        payload = _dumps(entry)
    except Exception:  # noqa: BLE001 - (a hybrid plan, a form's plan: kept without plans)
        kept = Entry(entry.lowered, {}, entry.decisions, unkept=True)
        try:
            payload = _dumps(kept)
        except Exception:  # noqa: BLE001
            return
    cache._write(_path(k), payload, MAGIC)
    stats["stored"] += 1


def roundtrip(obj):
    """``obj`` pickled and restored in this process (``DYNGRAD_PLAN_CACHE=roundtrip``), or
    ``obj`` itself when it does not pickle."""
    try:
        payload = _dumps(obj)
    except Exception:  # noqa: BLE001
        return obj
    try:
        copy = _loads(payload)
    except pickle.UnpicklingError:  # (a class an entry may not hold: never a hit either)
        stats["refused"] += 1
        return obj
    stats["round_trips"] += 1
    return copy


class _Pickler(pickle.Pickler):
    """Pickles numpy's built-in dtypes by name: numpy's own pickle of a dtype comes back as
    a new dtype object, and arrays made with it (a plan's outputs) would fail the guards that
    compare dtypes by identity (``a.dtype is float32``)."""

    def reducer_override(self, obj):
        if type(obj).__module__ == "numpy.dtypes" and obj.isbuiltin == 1:
            return numpy.dtype, (obj.str,)
        return NotImplemented


def _dumps(obj) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return f.getvalue()


def _loads(payload: bytes):
    return _Unpickler(io.BytesIO(payload)).load()


class _Unpickler(pickle.Unpickler):
    """Restores only the compiler's and dyngrad's own classes and the few functions and
    classes of numpy and the standard library an entry is made of (an entry is the
    compiler's own file, in a directory only the user can write; this keeps a file of
    something else from running its code).

    Note (no callable but these): an unpickler calls what ``find_class`` gives it with
    arguments of the file's choosing, so a module prefix is not a limit — ``builtins`` has
    ``exec``, and with protocol 4 a dotted name reaches any module an allowed one imported
    (``compiler.plancache`` + ``os.system``). So a name is taken only when it is plain, and
    it is one of ``FUNCTIONS`` or a class its compiler or dyngrad module defines itself.

    Note: this is not a sandbox. The cache directory holds native code the process runs:
    whoever can write there can run code as the user, with or without pickle (a driver
    plan's state alone writes the source of its generated call). So ``load`` also refuses a
    directory another user owns or others may write to."""

    PACKAGES = ("compiler.", "dyngrad.")
    FUNCTIONS = frozenset({
        ("compiler.backends.llvm.runner", "_hybrid_runner"),  # (a driver plan's fallback)
        ("dyngrad.dtypes", "as_dtype"), ("dyngrad.ops.primitive", "registered"),
        ("functools", "partial"), ("collections", "OrderedDict"),
        ("collections", "defaultdict"), ("numpy", "dtype"), ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
        ("_codecs", "encode"),
        *(("builtins", n) for n in ("slice", "range", "complex", "set", "frozenset",
                                    "bytearray", "Ellipsis", "NotImplemented")),
    })

    def find_class(self, module: str, name: str):
        if "." not in name:
            if (module, name) in self.FUNCTIONS:
                return super().find_class(module, name)
            if module.startswith(self.PACKAGES):
                obj = super().find_class(module, name)
                if isinstance(obj, type) and obj.__module__ == module:
                    return obj
        raise pickle.UnpicklingError(f"plan cache: {module}.{name} is not part of an entry")
