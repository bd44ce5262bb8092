"""Decisions measured once per machine, kept beside the compiled-code cache.

A decision file is JSON, ``{machine key: {decision key: entry}}``, in ``cache.directory()``
(``matmul-choices.json`` of ``tune.py``, ``vector-width.json`` of ``widths.py``), so a later
process on the same machine takes the same decisions without measuring — and its results,
where a decision could change them, stay reproducible. Nothing is read or written with the
disk cache off (``DYNGRAD_CACHE=0``). A file that cannot be read or parsed counts as empty
(and is rewritten by the next decision); writes merge with what other processes wrote and
replace the file atomically; a directory that cannot be written keeps the decision for this
process only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..base import SettingError
from . import cache


def setting(name: str, modes: tuple, default: str = "measure") -> str:
    """The environment variable ``name`` that forces a decision (``DYNGRAD_MATMUL``,
    ``DYNGRAD_CONV``), lower-cased and checked against ``modes``."""
    m = os.environ.get(name, default).strip().lower() or default
    if m not in modes:
        raise SettingError(f"{name}={m!r}: expected one of {', '.join(modes)}")
    return m


@functools.cache
def digest(source: Path) -> str:
    """A digest of a kernel generator's source, for the keys of decisions measured against
    its kernels: they are taken again when its code changes."""
    return hashlib.sha256(source.read_bytes()).hexdigest()[:12]


def path(file: str) -> Path:
    return cache.directory() / file


def load(file: str) -> dict:
    """Every stored decision of ``file``, or {} (none, disabled, unreadable, not ours)."""
    if not cache._enabled():
        return {}
    try:
        data = json.loads(path(file).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup(file: str, machine: str, key: str) -> dict | None:
    """The stored entry of one decision, or None."""
    entry = load(file).get(machine, {})
    entry = entry.get(key) if isinstance(entry, dict) else None
    return entry if isinstance(entry, dict) else None


def store(file: str, machine: str, key: str, entry: dict, keep: tuple = ()) -> dict:
    """Add one decision to ``file`` (merged with what is there; atomic) and return the entry
    that stands: with ``keep`` (the valid choices), one another process stored meanwhile
    whose ``"choice"`` is among them stays, and is returned — two processes measuring one
    shape at once then both take the first one's answer."""
    if not cache._enabled():
        return entry
    data = load(file)
    if not isinstance(data.get(machine), dict):
        data[machine] = {}
    there = data[machine].get(key)
    if keep and isinstance(there, dict) and there.get("choice") in keep:
        return there
    data[machine][key] = entry
    d = path(file).parent
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path(file))
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # (a read-only directory: the decision holds for this process)
    return entry


def remove(file: str) -> None:
    try:
        path(file).unlink()
    except OSError:
        pass
