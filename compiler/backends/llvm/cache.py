"""Compiled modules: in memory for this process, and object code on disk for the next one.

A module is keyed by its LLVM IR text, llvmlite's and LLVM's versions and the target it was
made for (``target.py``: the CPU names, the host's and the target's, and every feature, the
loop vector width included): object code is only ever loaded for the target it was made
for, and never on a CPU that lacks a feature it may use. The
disk cache lives in ``DYNGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/dyngrad``, else
``~/.cache/dyngrad``, created private to the user (mode 0700; entries 0600). An entry is
``MAGIC, sha256(payload), len(payload), payload``; one whose header, length or hash does not
match (truncated, corrupted, written by something else) is never loaded: it is removed and
the module compiled again. Entries are written to a temporary file and renamed, so a reader
never sees half an entry. ``DYNGRAD_CACHE=0`` turns the disk cache off; a directory that
cannot be created or written turns it off for the process (the compiler still works).
:func:`clear` removes every entry (``compiler.clear_cache()``).

Note (the memory cache is bounded): a module is found in memory while anything still holds
it — the plans of live variants hold their modules (a driver plan its ``jit.Compiled``,
every native function pointer its module: ``jit.Compiled.cfunc``) — and one module serves
every equal text, so sizes of a symbolic variant that share a template share its lock and
its ``@dg_sizes`` (forms.py). Beyond that the cache keeps only the ``MEMORY_MODULES`` most
recently used modules (at most ``MEMORY_BYTES`` of object code) alive on its own: the
modules of dropped functions are freed, and come back from disk if needed again.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from . import jit, target

MAGIC = b"DGOBJ001"
_HEADER = struct.Struct("<8s32sQ")
MEMORY_MODULES = 4  # modules the memory cache keeps alive on its own (least recently used
MEMORY_BYTES = 256 << 20  # go first), and at most this much of their object code
_memory: weakref.WeakValueDictionary[str, jit.Compiled] = weakref.WeakValueDictionary()
#         key -> every module of this process still alive (held by a plan, or by _recent)
_recent: OrderedDict[str, jit.Compiled] = OrderedDict()  # the most recently used, last
_lock = threading.Lock()
_disabled: list = []  # a reason once the disk cache failed for this process
stats = {"memory_hits": 0, "disk_hits": 0, "compiled": 0, "rejected": 0}


def directory() -> Path:
    """Where the disk cache lives (see the module docstring)."""
    env = os.environ.get("DYNGRAD_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dyngrad"


def _enabled() -> bool:
    return not _disabled and os.environ.get("DYNGRAD_CACHE", "1").strip().lower() not in (
        "0", "off", "false", "no")


def key(ir_text: str, t=None) -> str:
    t = target.current() if t is None else t
    h = hashlib.sha256()
    for part in (ir_text, llvmlite.__version__, ".".join(map(str, llvm.llvm_version_info)),
                 jit.pipeline(), t.cpu, t.host, t.features):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _path(k: str) -> Path:
    return directory() / f"{k}.o"


def _read(path: Path, magic_want: bytes = MAGIC) -> bytes | None:
    """The payload of a valid entry, or None (missing or invalid: an invalid one is
    removed)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    ok = len(data) >= _HEADER.size
    if ok:
        magic, digest, length = _HEADER.unpack_from(data)
        payload = data[_HEADER.size:]
        ok = magic == magic_want and length == len(payload) and \
            hashlib.sha256(payload).digest() == digest
    if not ok:
        stats["rejected"] += 1
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return payload


def _write(path: Path, payload: bytes, magic: bytes = MAGIC) -> None:
    d = path.parent
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".o")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_HEADER.pack(magic, hashlib.sha256(payload).digest(), len(payload)))
                f.write(payload)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # read-only home, full disk...: no disk cache this process
        _disabled.append(f"{d}: {exc}")


def load_or_compile(ir_text, name: str | None = None, t=None) -> jit.Compiled:
    """The compiled module of ``ir_text``: from memory, from disk (no LLVM optimisation or
    code generation), or compiled now (and stored). ``ir_text`` may be a function making
    the text, with ``name`` a string that stands for it in the key (everything the text
    depends on besides the target): then the text is made only when the module is compiled
    — ``gemm.library``'s ~20 ms of building its text are saved on a disk hit. ``t``: the
    target (default ``target.current()``)."""
    return keyed(key(name if callable(ir_text) else ir_text, t), ir_text, t)


def keyed(k: str, ir_text, t=None) -> jit.Compiled:
    """:func:`load_or_compile` of a text whose key is ``k`` already."""
    with _lock:
        compiled = _known(k, t)
        if compiled is None:
            compiled = jit.compile_ir(ir_text() if callable(ir_text) else ir_text,
                                      keep_object=_enabled(), target=t)
            stats["compiled"] += 1
            if compiled.object_code is not None:
                _write(_path(k), compiled.object_code)
            _memory[k] = compiled
            _used(k, compiled)
        return compiled


def loaded(k: str, t=None) -> jit.Compiled | None:
    """The module of key ``k`` from memory or from disk, or None: never compiled here (a
    plan restored from the plan cache, ``compiler/plancache.py``, names its module by key)."""
    with _lock:
        return _known(k, t)


def _known(k: str, t) -> jit.Compiled | None:
    """(with ``_lock`` held) The module of key ``k`` from memory or disk, or None."""
    compiled = _memory.get(k)
    if compiled is not None:
        stats["memory_hits"] += 1
    else:
        payload = _read(_path(k)) if _enabled() else None
        if payload is None:
            return None
        compiled = jit.load_object(payload, target=t)
        stats["disk_hits"] += 1
        _memory[k] = compiled
    _used(k, compiled)
    return compiled


def _used(k: str, compiled: jit.Compiled) -> None:
    """Mark ``compiled`` the most recently used module; let the least recently used beyond
    ``MEMORY_MODULES`` modules or ``MEMORY_BYTES`` bytes go (they live on while a plan holds
    them). Called with ``_lock`` held."""
    _recent[k] = compiled
    _recent.move_to_end(k)
    size = sum(len(c.object_code or b"") for c in _recent.values())
    while len(_recent) > 1 and (len(_recent) > MEMORY_MODULES or size > MEMORY_BYTES):
        _, old = _recent.popitem(last=False)
        size -= len(old.object_code or b"")


def clear(memory: bool = False) -> int:
    """Remove every disk cache entry (and, with ``memory``, forget this process's compiled
    modules — running variants keep theirs). Returns the number of files removed."""
    n = 0
    d = directory()
    if d.is_dir():
        for p in d.iterdir():
            if p.suffix in (".o", ".plan", ".vars", ".code") and (p.name.startswith(".tmp-") or
                                                len(p.stem) == 64):
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
    if memory:
        with _lock:
            _memory.clear()
            _recent.clear()
    return n
