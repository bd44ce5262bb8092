"""The optimizer base: PyTorch's ``param_groups``/``state`` model, with two things a tracing
compiler needs.

- Hyperparameters are read at every ``step()`` through :meth:`Optimizer.hyper`, which reports
  the number and where it came from to the active dispatch modes (so a changed ``lr`` is
  noticed, or becomes a runtime input, instead of being baked into a trace).
- ``_version`` counts structural changes (parameter groups added or their ``params``
  replaced, state loaded) and ``_hyper_version`` changes of hyperparameter values; guards check
  integers instead of walking the groups.

Step counts are 0-d float32 tensors, as in PyTorch's capturable optimizers, so bias
corrections are tensor ops rather than Python constants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..autograd.grad_mode import enable_grad, no_grad
from ..dispatch import read_scalar
from ..tensor import Tensor, zero_grads


class _Versioned(list):
    """A list that tells its optimizer when it changes (a group's ``params``, and
    ``param_groups`` itself), so that guards on ``_version`` see in-place changes too."""

    __slots__ = ("_owner",)

    def __init__(self, owner: Optimizer, items=()) -> None:
        super().__init__(items)
        self._owner = owner

    def __reduce__(self):
        return (_rebuild_versioned, (type(self), self._owner, list(self)))


def _rebuild_versioned(cls, owner, items):
    return cls(owner, items)


def _bumps(name: str):
    base = getattr(list, name)

    def method(self, *args, **kwargs):
        out = base(self, *args, **kwargs)
        owner = getattr(self, "_owner", None)
        if owner is not None:
            owner._version += 1
        return out
    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


for _name in ("append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse",
              "__setitem__", "__delitem__", "__iadd__", "__imul__"):
    setattr(_Versioned, _name, _bumps(_name))


class ParamGroup(dict):
    """A parameter group: a dict that tells its optimizer when it changes."""

    __slots__ = ("_owner",)

    def __init__(self, owner: Optimizer, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def __setitem__(self, key, value) -> None:
        structural = key == "params" or key not in self
        if key == "params" and isinstance(value, list):
            value = _Versioned(self._owner, value)
        super().__setitem__(key, value)
        owner = self._owner
        if structural:
            owner._version += 1
        else:
            owner._hyper_version += 1

    # dict's own update/setdefault bypass __setitem__; route them through it.
    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __reduce__(self):
        # keep the owner, so a deep-copied or unpickled optimizer's groups still report
        return (_rebuild_param_group, (self._owner, dict(self)))


def _rebuild_param_group(owner: Optimizer, items: dict) -> ParamGroup:
    return ParamGroup(owner, items)


class Optimizer:
    """Base class: subclasses set ``defaults`` and implement ``step``."""

    def __init__(self, params: Iterable, defaults: dict) -> None:
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list[ParamGroup] = _Versioned(self)
        self._version = 0
        self._hyper_version = 0
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyperparameters (defaults fill the rest)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params "
                                f"is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group = ParamGroup(self, self.defaults)
        dict.update(group, param_group)
        dict.__setitem__(group, "params", _Versioned(self, params))
        self.param_groups.append(group)  # (bumps _version)

    def hyper(self, group: dict, name: str) -> Any:
        """Read hyperparameter ``name`` of ``group``, observably for a tracer."""
        return read_scalar(group, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset gradients: to None (default, as in PyTorch) or to zeros in place."""
        zero_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self, closure=None):
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def _closure(self, closure):
        if closure is None:
            return None
        with enable_grad():
            return closure()

    @staticmethod
    def _grads(group: dict):
        """(parameter, gradient) for each parameter of ``group`` that has one; the gradient
        is negated when the group maximizes."""
        maximize = group.get("maximize", False)
        for p in group["params"]:
            g = p.grad
            if g is not None:
                yield p, (-g if maximize else g)

    def first_step_creates_state(self) -> bool:
        """Whether ``step()`` now would create per-parameter state: some parameter that
        requires grad has none yet. (The compiler's prediction that a call stepping this
        optimizer cannot be traced: the state made is kept in Python state. Optimizers whose
        step never makes state say so.)"""
        return any(p.requires_grad and not self.state.get(p)
                   for group in self.param_groups for p in group["params"])

    #: ``_fill_state(st, p, group) -> bool``: fill ``st`` with the state from which a
    #: ``step()`` makes exactly what a first step makes, from the parameter's shape and dtype
    #: and the group's settings, never the gradient — False (and ``st`` left empty) when
    #: there is none. Adam's, Adadelta's and RMSprop's own first steps fill this way and
    #: then update as any later step. SGD's momentum buffer starts as the gradient; a buffer
    #: of negative zeros gives that (−0·m + g is g, bit for bit, −0 and NaN included)
    #: without dampening. With it, a first step equals :meth:`prefill` followed by a step,
    #: which lets a compiled training step kept on disk run from a new process's first call
    #: (Note [a first step from a filled state] in compiler/variantcache.py). None: no fill.
    _fill_state = None

    def prefill(self, params) -> bool:
        """Fill, for each parameter among ``params`` without state, the state from which a
        ``step()`` makes what a first step makes (see ``_fill_state``), in the order
        ``step()`` would (its groups' order). False, with the state as it was, where a
        parameter's group has no such state."""
        wanted = {id(p) for p in params}
        made = []
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if id(p) in wanted and not self.state.get(p):
                        made.append((p, p in self.state))
                        if not self._fill_state(self._state_for(p), p, group):
                            for q, had in made:
                                if had:
                                    self.state[q].clear()
                                else:
                                    del self.state[q]
                            return False
        return True

    def _state_for(self, p: Tensor) -> dict:
        st = self.state.get(p)
        if st is None:
            st = self.state[p] = {}
        return st

    # ----------------------------------------------------------------- state dicts
    def state_dict(self) -> dict:
        """{'state': {index: {name: tensor or number}}, 'param_groups': [...]} with
        parameters replaced by their index, as in PyTorch."""
        index, groups, n = {}, [], 0
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                if id(p) not in index:
                    index[id(p)] = n
                    n += 1
                ids.append(index[id(p)])
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = ids
            groups.append(packed)
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (v.clone() if isinstance(v, Tensor) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for mine, theirs in zip(self.param_groups, groups):
            if len(mine["params"]) != len(theirs["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        params = [p for g in self.param_groups for p in g["params"]]
        self.state = {}
        for k, st in state_dict["state"].items():
            p = params[int(k)]
            self.state[p] = {n: (v.clone().to(p.dtype) if isinstance(v, Tensor) and
                                 v.dtype.is_floating_point and n != "step" else
                                 v.clone() if isinstance(v, Tensor) else v)
                             for n, v in st.items()}
        for mine, theirs in zip(self.param_groups, groups):
            for k, v in theirs.items():
                if k != "params":
                    dict.__setitem__(mine, k, v)
        self._version += 1

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"
