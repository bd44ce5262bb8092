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
        tensors sharing storage, unless ``keep_vars``)."""
        out = OrderedDict() if destination is None else destination
        for mprefix, m in self.named_modules(prefix=prefix.rstrip("."), remove_duplicate=False):
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
        A lazy layer not yet called takes its inferred size from the checkpoint (PyTorch's
        ``LazyModuleMixin``): its parameters are made at the checkpoint's shapes first."""
        for name, m in list(self.named_modules()):
            size_from = getattr(m, "_lazy_size_from", None)
            if size_from is not None and getattr(m, "_materialize", None) is not None:
                size = size_from(state_dict, f"{name}." if name else "")
                if size:
                    m._materialize(size)
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        for k, t in own.items():
            if k in state_dict:
                src = state_dict[k]
                if not isinstance(src, Tensor):
                    src = _c.tensor(src)
                if src.shape != t.shape:
                    errors.append(f"size mismatch for {k}: copying a param with shape "
                                  f"{list(src.shape)} from checkpoint, the shape in current "
                                  f"model is {list(t.shape)}.")
        if strict and (missing or unexpected):
            if missing:
                errors.append("Missing key(s) in state_dict: " + ", ".join(map(repr, missing)))
            if unexpected:
                errors.append("Unexpected key(s) in state_dict: " +
                              ", ".join(map(repr, unexpected)))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        with no_grad():
            for k, t in own.items():
                if k in state_dict:
                    t.copy_(state_dict[k])
        return _IncompatibleKeys(missing, unexpected)

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
