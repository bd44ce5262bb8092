"""Forward-mode differentiation through each primitive's ``jvp`` rule.

:class:`JvpMode` is a dispatch mode: it runs every operation normally and, when an input has
a tangent, applies the primitive's jvp rule to produce the output's tangent. Jvp rules are
written with dyngrad operations, so they may themselves be differentiated (nested modes form
a stack, like JAX's levels).
"""

from __future__ import annotations

from .dispatch import DispatchMode, active_modes, dispatch, push_mode, suspend
from .ops.creation import zeros_like
from .ops.indexing import replay_view, view_scatter
from .tensor import Tensor

__all__ = ["JvpMode", "jvp"]


class JvpMode(DispatchMode):
    """Carries tangents (by tensor identity) alongside the ordinary computation."""

    def __init__(self) -> None:
        self.tangents: dict[int, tuple] = {}
        self.view_tangents: dict[int, tuple] = {}  # id(view) -> (view, base tangent, tangent)

    def set_tangent(self, t: Tensor, tangent: Tensor) -> None:
        self.tangents[id(t)] = (t, tangent)

    def tangent(self, t) -> Tensor | None:
        base = getattr(t, "_base", None)
        if base is not None:
            t_base = self.tangent(base)
            if t_base is not None:
                return self._view_tangent(t, t_base)
        entry = self.tangents.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def _view_tangent(self, view: Tensor, t_base: Tensor) -> Tensor:
        """The same view of the base's tangent.

        Note: a view's tangent is derived from its base's on every read (cached per base
        tangent), because an in-place write through the base or another view replaces the
        base's tangent without touching this view, as ``_refresh_view_history`` does for
        the backward history."""
        cached = self.view_tangents.get(id(view))
        if cached is not None and cached[0] is view and cached[1] is t_base:
            return cached[2]
        if self in active_modes():
            with suspend(self):
                t_view = replay_view(t_base, view._view_chain)
        else:
            t_view = replay_view(t_base, view._view_chain)
        self.view_tangents[id(view)] = (view, t_base, t_view)
        return t_view

    def dispatch(self, prim, args, params):
        with suspend(self):
            out = dispatch(prim, *args, **params)
            ts = [self.tangent(a) if isinstance(a, Tensor) else None for a in args]
            if any(t is not None for t in ts):
                if prim.jvp is None:
                    if out.dtype.is_floating_point and prim.kind not in ("creation", "random"):
                        raise RuntimeError(f"forward-mode AD: primitive {prim.name} has no "
                                           f"jvp rule")
                else:
                    if prim.view and out._base is not None:
                        pass  # a view is a new tensor object; its tangent is set below
                    t_out = prim.jvp(ts, args, out, params)
                    if t_out is not None:
                        self.set_tangent(out, t_out)
        return out

    def on_write(self, tensor, what, value):
        if what != "inplace" or not isinstance(value, Tensor):
            return
        t_new = self.tangent(value)
        base = tensor._base
        if base is None:
            if t_new is not None:
                self.set_tangent(tensor, t_new)
            else:
                self.tangents.pop(id(tensor), None)
            return
        t_base = self.tangent(base)
        if t_new is None and t_base is None:
            return
        with suspend(self):  # the base's tangent gets the view's region replaced
            t_base = t_base if t_base is not None else zeros_like(base)
            t_view = t_new if t_new is not None else zeros_like(tensor)
            self.set_tangent(base, view_scatter(t_base, tensor._view_chain, t_view))
            self.set_tangent(tensor, t_view)


def jvp(fn, primals: tuple, tangents: tuple):
    """(fn(*primals), J·tangents) by forward-mode AD.

    >>> y, dy = jvp(lambda x: x.sin(), (x,), (dg.ones_like(x),))
    """
    mode = JvpMode()
    with push_mode(mode):
        for p, t in zip(primals, tangents):
            if t.shape != p.shape:
                raise RuntimeError(f"jvp: tangent shape {list(t.shape)} does not match primal "
                                   f"shape {list(p.shape)}")
            mode.set_tangent(p, t)
        out = fn(*primals)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    touts = tuple(mode.tangent(o) if mode.tangent(o) is not None else zeros_like(o)
                  for o in outs)
    return out, (touts if isinstance(out, (tuple, list)) else touts[0])
