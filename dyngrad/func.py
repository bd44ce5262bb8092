"""Function transforms with ``torch.func``'s names: ``grad``, ``grad_and_value``, ``vjp``,
``jvp``, ``jacrev``, ``jacfwd``, ``hessian`` and ``vmap``.

Reverse mode runs the backward engine; forward mode runs each primitive's ``jvp`` rule
(:mod:`dyngrad.forward_ad`). Transforms compose: the differentiated inputs are made with a
recorded op (an alias) rather than ``detach()``, and gradients are built with
``create_graph=True`` whenever an outer transform is watching, so ``grad(grad(f))`` and
``jacfwd(jacrev(f))`` (``hessian``) work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from .autograd import grad as _autograd_grad
from .autograd.grad_mode import enable_grad
from .dispatch import STATE
from .forward_ad import jvp as _forward_jvp
from .ops import creation as _c
from .ops import movement as _m
from .ops.elementwise import cast, eq
from .tensor import Tensor
from .vmap import vmap as _vmap

__all__ = ["grad", "grad_and_value", "vjp", "jvp", "jacrev", "jacfwd", "hessian", "vmap"]


def _alias(x: Tensor) -> Tensor:
    """A differentiable stand-in for ``x``: connected to x's graph (and to any dispatch mode's
    tangents) through a recorded reshape, and requiring grad."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a Tensor argument to differentiate, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"can only differentiate with respect to floating-point tensors, got "
                        f"{x.dtype.name}")
    with enable_grad():
        a = _m.reshape(x, x.shape)
    if not a.requires_grad:
        a.requires_grad_(True)
    return a


def _nested(args) -> bool:
    """Whether an outer transform may differentiate through this one."""
    return any(not m.transparent for m in STATE.modes) or any(
        isinstance(a, Tensor) and a.requires_grad for a in args)


def _argnums(argnums, n: int) -> tuple:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for k in nums:
        if not -n <= k < n:
            raise ValueError(f"argnums {k} out of range for {n} positional arguments")
    return tuple(k % n for k in nums)


def _run_differentiable(func, args, kwargs, argnums):
    """Call ``func`` with the ``argnums`` arguments replaced by differentiable aliases:
    (argument indices, whether to build a graph for an outer transform, args, output)."""
    nums = _argnums(argnums, len(args))
    create = _nested(args)
    args = list(args)
    for k in nums:
        args[k] = _alias(args[k])
    with enable_grad():
        out = func(*args, **kwargs)
    return nums, create, args, out


def grad_and_value(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """``(∇f, f)`` of a function returning a one-element tensor (or ``(out, aux)``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        nums, create, args, out = _run_differentiable(func, args, kwargs, argnums)
        aux = None
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise RuntimeError("grad_and_value(f, has_aux=True): f must return a "
                                   "(output, aux) tuple")
            out, aux = out
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise RuntimeError(f"grad: expected f(*args) to return a one-element tensor, got "
                               f"{getattr(out, 'shape', type(out).__name__)}; use vjp or "
                               f"jacrev for other outputs")
        if not out.requires_grad:
            gs = tuple(_c.zeros_like(args[k]) for k in nums)
        else:
            gs = _autograd_grad(out, [args[k] for k in nums], create_graph=create,
                                allow_unused=True)
            gs = tuple(g if g is not None else _c.zeros_like(args[k])
                       for g, k in zip(gs, nums))
        g = gs[0] if isinstance(argnums, int) else gs
        value = out if create else out.detach()
        return (g, (value, aux)) if has_aux else (g, value)
    return wrapper


def grad(func: Callable, argnums=0, has_aux: bool = False) -> Callable:
    """The gradient of a scalar function with respect to argument(s) ``argnums``.

    >>> dg.func.grad(lambda x: (x ** 3).sum())(dg.tensor([1.0, 2.0]))   # 3x²
    """
    gv = grad_and_value(func, argnums, has_aux)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        g, value = gv(*args, **kwargs)
        return (g, value[1]) if has_aux else g
    return wrapper


def vjp(func: Callable, *primals, has_aux: bool = False):
    """``(f(*primals), vjp_fn)``; ``vjp_fn(cotangent)`` returns one gradient per primal and
    may be called several times."""
    create = _nested(primals)
    xs = [_alias(p) for p in primals]
    with enable_grad():
        out = func(*xs)
    aux = None
    if has_aux:
        out, aux = out
    outs = out if isinstance(out, (tuple, list)) else (out,)

    def vjp_fn(*cotangents):
        cts = cotangents[0] if len(cotangents) == 1 and isinstance(cotangents[0],
                                                                   (tuple, list)) \
            else cotangents
        if len(cts) != len(outs):
            raise RuntimeError(f"vjp_fn: expected {len(outs)} cotangents, got {len(cts)}")
        live = [(o, c) for o, c in zip(outs, cts) if o.requires_grad]
        if not live:
            return tuple(_c.zeros_like(x) for x in xs)
        gs = _autograd_grad([o for o, _ in live], xs, grad_outputs=[c for _, c in live],
                            retain_graph=True, create_graph=create or _nested(cts),
                            allow_unused=True)
        return tuple(g if g is not None else _c.zeros_like(x) for g, x in zip(gs, xs))

    shown = out if create else (tuple(o.detach() for o in outs)
                                if isinstance(out, (tuple, list)) else out.detach())
    return (shown, vjp_fn, aux) if has_aux else (shown, vjp_fn)


def jvp(func: Callable, primals: tuple, tangents: tuple, has_aux: bool = False):
    """``(f(*primals), J·tangents)`` by forward-mode AD (each primitive's jvp rule)."""
    if has_aux:
        box = {}

        def f(*xs):
            out, box["aux"] = func(*xs)
            return out
        out, t = _forward_jvp(f, tuple(primals), tuple(tangents))
        return out, t, box["aux"]
    return _forward_jvp(func, tuple(primals), tuple(tangents))


def _basis(x: Tensor, k: int) -> Tensor:
    """The k-th unit tensor of x's shape, built from ops (so a tracer sees how)."""
    return _m.reshape(cast(eq(_c.arange(x.numel()), k), x.dtype), x.shape)


def jacrev(func: Callable, argnums=0) -> Callable:
    """Jacobian by reverse mode: one vjp per output element; shape out.shape + in.shape."""

    @functools.wraps(func)
    def wrapper(*args):
        nums, create, args, out = _run_differentiable(func, args, {}, argnums)
        rows = {k: [] for k in nums}
        for j in range(out.numel()):
            if out.requires_grad:
                gs = _autograd_grad(out, [args[k] for k in nums], grad_outputs=_basis(out, j),
                                    retain_graph=True, create_graph=create, allow_unused=True)
            else:
                gs = (None,) * len(nums)
            for k, g in zip(nums, gs):
                rows[k].append(g if g is not None else _c.zeros_like(args[k]))
        jacs = tuple(_m.reshape(_m.stack(rows[k]) if rows[k] else
                                _c.zeros((0,) + args[k].shape, dtype=args[k].dtype),
                                out.shape + args[k].shape) for k in nums)
        return jacs[0] if isinstance(argnums, int) else jacs
    return wrapper


def jacfwd(func: Callable, argnums=0) -> Callable:
    """Jacobian by forward mode: one jvp per input element; shape out.shape + in.shape."""

    @functools.wraps(func)
    def wrapper(*args):
        nums = _argnums(argnums, len(args))
        jacs = []
        for k in nums:
            x = args[k]
            cols = []
            out = None
            for j in range(x.numel()):
                tangents = tuple(_basis(a, j) if i == k else _c.zeros_like(a)
                                 for i, a in enumerate(args))
                out, t = _forward_jvp(func, tuple(args), tangents)
                cols.append(_m.reshape(t, (-1,)))
            if out is None:
                out = func(*args)
                jac = _c.zeros(out.shape + x.shape, dtype=out.dtype)
            else:
                jac = _m.reshape(_m.stack(cols, -1), out.shape + x.shape)
            jacs.append(jac if _nested(args) else jac.detach())
        return jacs[0] if isinstance(argnums, int) else tuple(jacs)
    return wrapper


def hessian(func: Callable, argnums=0) -> Callable:
    """Second derivatives: ``jacfwd(jacrev(f))``."""
    return jacfwd(jacrev(func, argnums), argnums)


def vmap(func: Callable, in_dims=0, out_dims=0, *, randomness: str = "error") -> Callable:
    """Map ``func`` over a batch dimension (see :mod:`dyngrad.vmap`)."""
    return _vmap(func, in_dims, out_dims, randomness=randomness)
