"""``save``/``load`` of tensors and (nested) dicts, lists and tuples of tensors as ``.npz`` —
data only, never pickled code."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from .tensor import Tensor, check_device, device

_SEP = "/"
_META_PREFIXES, _META_VERSIONS = "__metadata_prefixes__", "__metadata_versions__"


def _flatten(obj, prefix: str, out: dict) -> None:
    if isinstance(obj, Tensor):
        out[prefix or "__tensor__"] = obj.detach()._data
    elif isinstance(obj, dict):
        if not obj:
            out[prefix + _SEP + "__empty_dict__"] = np.zeros(0)
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:  # (a state dict's format versions, as torch.save keeps them)
            head = prefix + _SEP if prefix else ""
            out[head + _META_PREFIXES] = np.array(list(metadata), dtype=np.str_)
            out[head + _META_VERSIONS] = np.array(
                [m.get("version", -1) if isinstance(m, dict) and m.get("version") is not None
                 else -1 for m in metadata.values()], dtype=np.int64)
        for k, v in obj.items():
            if not isinstance(k, str) or _SEP in k or k.startswith("__"):
                raise TypeError(f"save: dict keys must be strings without '{_SEP}' and not "
                                f"starting with '__' (got {k!r})")
            _flatten(v, f"{prefix}{_SEP}{k}" if prefix else k, out)
    elif isinstance(obj, (list, tuple)):  # (d2l's read-write chapter: save([x, y], f))
        head = prefix + _SEP if prefix else ""
        out[head + ("__list__" if isinstance(obj, list) else "__tuple__")] = np.array(len(obj))
        for i, v in enumerate(obj):
            _flatten(v, f"{head}__item{i}", out)
    elif isinstance(obj, (int, float, bool)) and prefix:
        out[prefix + _SEP + "__scalar__"] = np.array(obj)
    else:
        raise TypeError(f"save: can only save tensors and (nested) dicts, lists and tuples "
                        f"of tensors, got {type(obj).__name__} at "
                        f"{prefix or 'the top level'!r}")


def _sequences(d):
    """The loaded nested dicts with each saved list or tuple made one again, and each saved
    state dict an OrderedDict with its ``_metadata`` again."""
    if not isinstance(d, dict):
        return d
    if _META_PREFIXES in d:
        prefixes, versions = d.pop(_META_PREFIXES), d.pop(_META_VERSIONS)
        out = OrderedDict((k, _sequences(v)) for k, v in d.items())
        out._metadata = OrderedDict(
            (str(p), {"version": int(v)} if v >= 0 else {}) for p, v in zip(prefixes, versions))
        return out
    d = {k: _sequences(v) for k, v in d.items()}
    for kind, make in (("__list__", list), ("__tuple__", tuple)):
        if kind in d:
            return make(d[f"__item{i}"] for i in range(int(d[kind])))
    return d


def save(obj, f) -> None:
    """Write a tensor or a (nested) dict, list or tuple of tensors to ``f`` (a path or a
    binary file).

    >>> dg.save({"w": w, "b": b}, "params.npz")
    """
    arrays: dict = {}
    _flatten(obj, "", arrays)
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            np.savez(fh, **arrays)
    else:
        np.savez(f, **arrays)


def load(f, map_location=None, *, weights_only: bool | None = None, mmap=None,
         **pickle_load_args) -> Tensor | dict:
    """Read what :func:`save` wrote (arrays only: ``allow_pickle`` stays off).

    PyTorch's keywords are accepted: the file never holds code, so ``weights_only`` (True,
    False or None) reads the same data; ``map_location`` may name the CPU (a string or a
    device; another device raises as ``.to`` does) or be a dict or a function, which have
    nothing to remap.

    >>> model.load_state_dict(dg.load("params.npz", map_location="cpu", weights_only=True))
    """
    if isinstance(map_location, (str, device)):
        check_device(map_location)
    with np.load(f, allow_pickle=False) as data:
        keys = list(data.keys())
        if keys == ["__tensor__"]:
            return Tensor._fresh(data["__tensor__"].copy())
        out: dict = {}
        for key in keys:
            parts = key.split(_SEP)
            d = out
            for p in parts[:-1]:
                d = d.setdefault(p, {})
            leaf = parts[-1]
            if leaf == "__empty_dict__":
                continue
            if leaf in ("__list__", "__tuple__"):
                d[leaf] = int(data[key])
                continue
            if leaf in (_META_PREFIXES, _META_VERSIONS):
                d[leaf] = data[key]
                continue
            if leaf == "__scalar__":
                *path, = parts[:-1]
                d_parent = out
                for p in path[:-1]:
                    d_parent = d_parent[p]
                d_parent[path[-1]] = data[key].item()
                continue
            d[leaf] = Tensor._fresh(data[key].copy())
        return _sequences(out)
