"""``Module``: the base of layers and models — parameters, buffers, submodules, train/eval,
state dicts — with a version counter the compiler can guard on."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from typing import Any

from ..autograd.grad_mode import no_grad
from ..dispatch import STATE, report_object, report_python_call
from ..dtypes import as_dtype
from ..ops import creation as _c
from ..tensor import NO_CUDA, Tensor, to_arguments, zero_grads
from .parameter import Parameter

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
_PENDING_COPIES: list = []  # (per load_state_dict running: the copies its checks allowed)


def _format_version(module) -> int:
    """The state-dict format version a module's class declares as ``_version`` (PyTorch's
    class attribute, 1 unless a class says otherwise). dyngrad's instances keep their own
    ``_version``, the count of changes a compiled call guards: the class's is read here."""
    for k in type(module).__mro__:
        v = k.__dict__.get("_version")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return 1


class Module:
    """Base class for all layers and models. Subclasses call ``super().__init__()`` and
    implement ``forward``; calling the module calls ``forward``.

    Note: every attribute assignment bumps ``_version`` (parameters, submodules and plain
    attributes alike), so a compiled function can check one integer per module instead of
    re-reading every attribute it used — and the ``training`` flag, which ``train()`` and
    ``eval()`` set without a bump (Note [training is not counted by _version]).
    Registered parameters, buffers and submodules also live in the instance ``__dict__``
    so reading them is an ordinary attribute lookup.
    """

    training: bool

    def __init__(self) -> None:
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["_forward_hooks"] = OrderedDict()
        d["_version"] = 0
        d["training"] = True

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        params = d.get("_parameters")
        if params is None:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() call "
                                 f"(call super().__init__() first)")
        buffers, modules = d["_buffers"], d["_modules"]
        if isinstance(value, Parameter):
            buffers.pop(name, None), modules.pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None), buffers.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter "
                                f"'{name}' (dg.nn.Parameter or None expected)")
            params[name] = None
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module "
                                f"'{name}' (dg.nn.Module or None expected)")
            modules[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                f"(dg.Tensor or None expected)")
            buffers[name] = value
        d[name] = value
        d["_version"] += 1

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for reg in ("_parameters", "_buffers", "_modules"):
            d[reg].pop(name, None)
        d["_non_persistent"].discard(name)
        object.__delattr__(self, name)
        d["_version"] += 1

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (dg.nn.Parameter or None required)")
        self.__dict__["_parameters"][name] = param
        self.__dict__[name] = param
        self.__dict__["_version"] += 1

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """A tensor that is part of the module's state but not trained (running statistics,
        masks); it is in ``state_dict()`` unless ``persistent=False``."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (dg.Tensor or None required)")
        self.__dict__["_buffers"][name] = tensor
        if not persistent:
            self.__dict__["_non_persistent"].add(name)
        self.__dict__[name] = tensor
        self.__dict__["_version"] += 1

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self.__dict__["_modules"][name] = module
        self.__dict__[name] = module
        self.__dict__["_version"] += 1

    register_module = add_module

    # ----------------------------------------------------------------- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"Module [{type(self).__name__}] is missing the required "
                                  f"\"forward\" function")

    def __call__(self, *args, **kwargs):
        if STATE.modes:
            report_object(self)
        out = self.forward(*args, **kwargs)
        if self._forward_hooks:
            if STATE.modes:
                report_python_call(f"a forward hook of {type(self).__name__}")
            for hook in list(self._forward_hooks.values()):
                res = hook(self, args, out)
                if res is not None:
                    out = res
        return out

    def register_forward_hook(self, hook):
        """``hook(module, args, output)`` after each forward; a returned value replaces the
        output. Returns a handle with ``remove()``."""
        key = object()
        self._forward_hooks[key] = hook
        self.__dict__["_version"] += 1  # (a compiled call guards the version, not the hooks)

        class _Handle:
            def remove(_self):
                if self._forward_hooks.pop(key, None) is not None:
                    self.__dict__["_version"] += 1
        return _Handle()

    # ----------------------------------------------------------------- traversal
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if self in memo:
                return
            memo.add(self)
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name,
                                       remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and m not in seen:
                seen.add(m)
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def _named_members(self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, t in m.__dict__[registry].items():
                if t is None or (remove_duplicate and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{mprefix}.{name}" if mprefix else name), t

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True):
        """(name, parameter) pairs; a parameter shared by two modules appears once."""
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True):
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    # ----------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        """Set training mode (affects Dropout) on this module and its children.

        Note [training is not counted by _version]: outside a trace this sets the flag
        without bumping ``_version``, and a compiled function guards every module's
        ``training`` beside its version. A training loop that evaluates now and then
        (``model.eval()`` … ``model.train()``, as nanoGPT's ``estimate_loss``) comes back
        to the very state its compiled step was traced in, and the step's variant still
        serves it; were the flag counted, every evaluation would move the versions and
        the step would trace again after each, until ``cache_limit`` left it eager. Inside
        a trace (a dispatch mode is active) a change still bumps the version: a library
        method runs natively there, so a compiled call would not repeat the change, and
        the moved version makes the next call trace again rather than skip it.
        """
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        tracing = bool(STATE.modes)
        for m in self.modules():
            if m.training is not mode:  # (model.train() every epoch: no change, no bump)
                d = m.__dict__
                d["training"] = mode
                if tracing:
                    d["_version"] += 1
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (to None by default, as in PyTorch)."""
        zero_grads(self.parameters(), set_to_none)

    def apply(self, fn) -> Module:
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def to(self, *args, **kwargs) -> Module:
        """Convert floating parameters and buffers in place: ``to(dtype)``, ``to(device)``,
        ``to(device, dtype)``, ``to(tensor)`` (its dtype), with ``non_blocking=`` accepted.
        Only the CPU is a device (see Note [devices] in dyngrad/tensor.py).

        >>> model.to("cpu").to(dg.float64)
        """
        dtype, _ = to_arguments(args, dict(kwargs))
        if dtype is None:
            return self
        dt = as_dtype(dtype)
        if not dt.is_floating_point:
            raise TypeError(f"nn.Module.to only accepts floating point or complex dtypes, but got "
                            f"desired dtype={dt!r}")
        with no_grad():
            for t in list(self.parameters()) + list(self.buffers()):
                if t.dtype.is_floating_point and t.dtype is not dt:
                    t.data = t.data.to(dt)
                    if t.grad is not None:
                        t.grad = t.grad.to(dt)
        return self

    def cpu(self) -> Module:
        """This module (its tensors are on the CPU already)."""
        return self

    def cuda(self, device=None) -> Module:
        """Raises, as in a CPU-only PyTorch build (see Note [devices] in dyngrad/tensor.py)."""
        raise AssertionError(NO_CUDA)

    def float(self) -> Module:
        return self.to("float32")

    def double(self) -> Module:
        return self.to("float64")

    # ----------------------------------------------------------------- state
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """An ordered dict name → tensor of parameters and persistent buffers (detached
        tensors sharing storage, unless ``keep_vars``). As PyTorch's, it carries
        ``_metadata``: each module's prefix → ``{"version": ...}``, the format version its
        class declares (``_version``), which ``_load_from_state_dict`` overrides read."""
        out = OrderedDict() if destination is None else destination
        if destination is None:
            out._metadata = OrderedDict()
        metadata = getattr(out, "_metadata", None)
        for mprefix, m in self.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False):
            if metadata is not None:
                metadata[mprefix] = {"version": _format_version(m)}
            for name, p in m._parameters.items():
                if p is not None:
                    out[f"{mprefix}.{name}" if mprefix else name] = p if keep_vars \
                        else p.detach()
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{mprefix}.{name}" if mprefix else name] = b if keep_vars \
                        else b.detach()
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy tensors into this module's parameters and buffers (in place, under
        no_grad). Returns (missing_keys, unexpected_keys); with ``strict`` either raises.
        Each module loads its part through ``_load_from_state_dict`` (PyTorch's protocol, which
        models override: torchvision's MNASNet reads the saved format version there), with
        its prefix and its ``_metadata`` entry.

        Note: nothing is copied until every module has checked its part: a load that raises
        leaves the model as it was (PyTorch's may have copied some tensors by then).

        A lazy layer not yet called takes its inferred size from the checkpoint (PyTorch's
        ``LazyModuleMixin``): its parameters are made at the checkpoint's shapes first."""
        for name, m in list(self.named_modules()):
            size_from = getattr(m, "_lazy_size_from", None)
            if size_from is not None and getattr(m, "_materialize", None) is not None:
                size = size_from(state_dict, f"{name}." if name else "")
                if size:
                    m._materialize(size)
        metadata = getattr(state_dict, "_metadata", None)
        missing, unexpected, errors = [], [], []
        copies: list = []
        _PENDING_COPIES.append(copies)
        try:
            def load(module, local_state_dict, prefix=""):
                local_metadata = {} if metadata is None else metadata.get(prefix[:-1], {})
                module._load_from_state_dict(local_state_dict, prefix, local_metadata, True,
                                             missing, unexpected, errors)
                for name, child in module._modules.items():
                    if child is not None:
                        child_prefix = f"{prefix}{name}."
                        load(child, {k: v for k, v in local_state_dict.items()
                                     if k.startswith(child_prefix)}, child_prefix)
            load(self, state_dict)
        finally:
            _PENDING_COPIES.pop()
        if strict and (missing or unexpected):
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: " +
                              ", ".join(map(repr, unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: " +
                              ", ".join(map(repr, missing)))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        with no_grad():
            for t, value in copies:
                t.copy_(value)
        return _IncompatibleKeys(missing, unexpected)

    def _load_from_state_dict(self, state_dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        """Load this module's own parameters and persistent buffers (not its children's)
        from ``state_dict`` under ``prefix``, as PyTorch's: a missing key goes to
        ``missing_keys``, a key of this module naming nothing to ``unexpected_keys`` (when
        ``strict``), a shape mismatch to ``error_msgs``. Override it to convert an older
        format (``local_metadata["version"]``); call ``super()`` for the rest. Within
        ``load_state_dict`` the copies wait until every module has checked its part."""
        local = {**{k: p for k, p in self._parameters.items() if p is not None},
                 **{k: b for k, b in self._buffers.items()
                    if b is not None and k not in self._non_persistent}}
        for name, t in local.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor):
                value = _c.tensor(value)
            if value.shape != t.shape:
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{list(value.shape)} from checkpoint, the shape in current "
                                  f"model is {list(t.shape)}.")
                continue
            if _PENDING_COPIES:
                _PENDING_COPIES[-1].append((t, value))
            else:
                with no_grad():
                    t.copy_(value)
        if strict:
            for key in state_dict:
                if key.startswith(prefix):
                    head = key[len(prefix):].split(".", 1)[0]
                    if head not in self._modules and head not in local:
                        unexpected_keys.append(key)

    # ----------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {sub}")
        body = type(self).__name__ + "("
        if not self._modules:
            return body + extra + ")"
        return body + "\n  " + "\n  ".join(lines) + "\n)"
