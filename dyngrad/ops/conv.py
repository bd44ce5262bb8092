"""Convolution: three primitives closed under differentiation, and PyTorch's ``conv1d``,
``conv2d`` and ``conv_transpose2d`` composed from them.

- ``conv(x, w)``: x (N, C, *S), w (O, C/groups, *K) -> (N, O, *P), cross-correlation with
  ``stride``, ``padding`` ((lo, hi) per spatial dim), ``dilation`` and ``groups``;
- ``conv_transpose(y, w)``: its adjoint in x, y (N, O, *P) -> (N, C, *size) — the input
  gradient of ``conv`` and PyTorch's transposed convolution (``size`` carries
  ``output_padding``);
- ``conv_weight_grad(x, g)``: its adjoint in w, (N, C, *S) and (N, O, *P) -> (O, C/groups,
  *K).

Each is bilinear, so every vjp and jvp is one of the three again (double backward comes
for free).

Note (backward memory): as in PyTorch, ``conv`` saves its input and weight, never an im2col
buffer — the column matrix is a temporary of the impl, rebuilt by ``conv_weight_grad`` in
backward.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import dtypes as _dt
from ..dispatch import dispatch
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .primitive import Primitive, quiet

# ------------------------------------------------------------------ numpy kernels


def padded(x: np.ndarray, padding: tuple, value: float = 0.0) -> np.ndarray:
    """``x`` with ``padding`` ((lo, hi) per trailing spatial dim) added around its planes."""
    if not any(lo or hi for lo, hi in padding):
        return x
    return np.pad(x, ((0, 0),) * (x.ndim - len(padding)) + tuple(padding),
                  constant_values=value)


def windows(xp: np.ndarray, out: tuple, kernel: tuple, stride: tuple,
            dilation: tuple) -> np.ndarray:
    """A read-only view (*lead, *out, *kernel) of the windows of ``xp``'s trailing
    ``len(kernel)`` dims: no copy."""
    nd = len(kernel)
    lead, st = xp.shape[:-nd], xp.strides
    sp = st[-nd:]
    return as_strided(xp, lead + tuple(out) + tuple(kernel),
                      st[:-nd] + tuple(s * k for s, k in zip(sp, stride)) +
                      tuple(s * d for s, d in zip(sp, dilation)), writeable=False)


def out_size(size: int, lo: int, hi: int, k: int, stride: int, dilation: int) -> int:
    """Window positions along one dim (PyTorch's floor formula)."""
    return (size + lo + hi - dilation * (k - 1) - 1) // stride + 1


def _offsets(kernel: tuple, dilation: tuple, stride: tuple, out: tuple):
    """Each kernel offset and the strided slices of the padded input it reads."""
    for k in np.ndindex(*kernel):
        yield k, tuple(slice(ki * d, ki * d + st * (p - 1) + 1, st)
                       for ki, d, st, p in zip(k, dilation, stride, out))


def _columns(x, padding, out, kernel, stride, dilation, groups) -> np.ndarray:
    """The (groups, C/groups·K, N·P) column matrix of x's windows (a temporary), copied one
    kernel offset at a time: each copy moves whole rows of the input."""
    n, c, nd = x.shape[0], x.shape[1], len(kernel)
    xp = padded(x, padding)
    xp = xp.reshape((n, groups, c // groups) + xp.shape[2:])
    cols = np.empty((groups, c // groups) + tuple(kernel) + (n,) + tuple(out), x.dtype)
    to_cols = (1, 2, 0, *range(3, 3 + nd))
    for k, at in _offsets(kernel, dilation, stride, out):
        cols[(slice(None), slice(None)) + k] = xp[(slice(None),) * 3 + at].transpose(to_cols)
    return cols.reshape(groups, c // groups * math.prod(kernel), n * math.prod(out))


def _by_group(g: np.ndarray, groups: int) -> np.ndarray:
    """(N, O, *P) as the (groups, O/groups, N·P) matrix the column products use."""
    n, o = g.shape[:2]
    p = math.prod(g.shape[2:])
    return g.reshape(n, groups, o // groups, p).transpose(1, 2, 0, 3).reshape(
        groups, o // groups, n * p)


def _conv_impl(x, w, stride, padding, dilation, groups):
    kernel, nd, n = w.shape[2:], w.ndim - 2, x.shape[0]
    out = tuple(out_size(s, lo, hi, k, st, d) for s, (lo, hi), k, st, d
                in zip(x.shape[2:], padding, kernel, stride, dilation))
    cols = _columns(x, padding, out, kernel, stride, dilation, groups)
    og = w.shape[0] // groups
    res = np.matmul(w.reshape(groups, og, -1), cols)  # (G, O/G, N·P)
    res = res.reshape((groups, og, n) + out).transpose(2, 0, 1, *range(3, nd + 3))
    return np.ascontiguousarray(res).reshape((n, w.shape[0]) + out)


def _conv_transpose_impl(y, w, stride, padding, dilation, groups, size):
    n, nd = y.shape[0], w.ndim - 2
    og, cg, kernel, out = y.shape[1] // groups, w.shape[1], w.shape[2:], y.shape[2:]
    wm = w.reshape(groups, og, -1).transpose(0, 2, 1)
    cols = np.matmul(wm, _by_group(y, groups))  # (G, C/G·K, N·P)
    cols = cols.reshape((groups, cg) + kernel + (n,) + out)
    full = tuple(max(lo + s + hi, (p - 1) * st + d * (k - 1) + 1) for s, (lo, hi), p, st, d, k
                 in zip(size, padding, out, stride, dilation, kernel))
    xp = np.zeros((n, groups, cg) + full, dtype=y.dtype)
    for k, at in _offsets(kernel, dilation, stride, out):  # col2im: offsets add their planes
        xp[(slice(None),) * 3 + at] += cols[(slice(None), slice(None)) + k].transpose(
            (2, 0, 1, *range(3, nd + 3)))
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(padding, size))
    return np.ascontiguousarray(xp[(Ellipsis,) + crop]).reshape((n, groups * cg) + tuple(size))


def _conv_weight_grad_impl(x, g, stride, padding, dilation, groups, kernel):
    o, out = g.shape[1], g.shape[2:]
    cols = _columns(x, padding, out, kernel, stride, dilation, groups)
    dw = np.matmul(_by_group(g, groups), cols.transpose(0, 2, 1))
    return dw.reshape((o, x.shape[1] // groups) + tuple(kernel))


# ------------------------------------------------------------------ shape rules


def _float_pair(op: str, a, b) -> None:
    if a.dtype is not b.dtype or a.dtype is _dt.bool_:
        raise RuntimeError(f"{op}: expected numeric operands of one dtype, got "
                           f"{a.dtype.name} and {b.dtype.name}")


def _conv_rule(x, w, stride, padding, dilation, groups):
    nd = len(stride)
    _float_pair("conv", x, w)
    if x.ndim != nd + 2 or w.ndim != nd + 2 or x.shape[1] != w.shape[1] * groups \
            or w.shape[0] % groups:
        raise RuntimeError(f"conv: input {list(x.shape)} and weight {list(w.shape)} do not "
                           f"fit a {nd}-d convolution with groups={groups}")
    out = tuple(out_size(s, lo, hi, k, st, d) for s, (lo, hi), k, st, d
                in zip(x.shape[2:], padding, w.shape[2:], stride, dilation))
    if min(out, default=1) < 1:
        raise RuntimeError(f"conv: input {list(x.shape)} with padding {list(padding)} is "
                           f"smaller than the dilated kernel {list(w.shape[2:])}")
    return (x.shape[0], w.shape[0]) + out, x.dtype


def _conv_transpose_rule(y, w, stride, padding, dilation, groups, size):
    _float_pair("conv_transpose", y, w)
    if y.ndim != len(stride) + 2 or y.shape[1] != w.shape[0]:
        raise RuntimeError(f"conv_transpose: input {list(y.shape)} does not fit weight "
                           f"{list(w.shape)}")
    return (y.shape[0], w.shape[1] * groups) + tuple(size), y.dtype


def _conv_weight_grad_rule(x, g, stride, padding, dilation, groups, kernel):
    _float_pair("conv_weight_grad", x, g)
    return (g.shape[1], x.shape[1] // groups) + tuple(kernel), x.dtype


# ------------------------------------------------------------------ derivatives


def _fit(t: Tensor, spatial: tuple) -> Tensor:
    """``t`` cut to ``spatial`` trailing sizes (a conv of a transposed conv's output with
    ``output_padding`` >= stride has positions the original never had)."""
    if tuple(t.shape[2:]) == tuple(spatial):
        return t
    return t[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def _geometry(p: dict) -> dict:
    return {k: p[k] for k in ("stride", "padding", "dilation", "groups")}


def _conv_vjp(n, g, xs, y):
    # Note: the weight gradient first. It is the last reader of the saved input, which then
    # dies before the input gradient (as large) is made: a compiled step's arena holds two
    # activations there, not three (the input may be recomputed just for it,
    # compiler/passes/remat.py).
    x, w = xs
    p = _geometry(n.params)
    gw = dispatch(CONV_WEIGHT_GRAD, x, g, kernel=n.in_shapes[1][2:], **p) \
        if n.needs[1] else None
    gx = dispatch(CONV_TRANSPOSE, g, w, size=n.in_shapes[0][2:], **p) if n.needs[0] else None
    return gx, gw


def _conv_jvp(ts, xs, y, p):
    parts = [dispatch(CONV, ts[0], xs[1], **p) if ts[0] is not None else None,
             dispatch(CONV, xs[0], ts[1], **p) if ts[1] is not None else None]
    return _sum(parts)


def _conv_transpose_vjp(n, g, xs, out):
    y, w = xs
    p = _geometry(n.params)
    gy = _fit(dispatch(CONV, g, w, **p), n.in_shapes[0][2:]) if n.needs[0] else None
    gw = dispatch(CONV_WEIGHT_GRAD, g, y, kernel=n.in_shapes[1][2:], **p) \
        if n.needs[1] else None
    return gy, gw


def _conv_transpose_jvp(ts, xs, out, p):
    return _sum([dispatch(CONV_TRANSPOSE, ts[0], xs[1], **p) if ts[0] is not None else None,
                 dispatch(CONV_TRANSPOSE, xs[0], ts[1], **p) if ts[1] is not None else None])


def _conv_weight_grad_vjp(n, c, xs, out):
    x, g = xs
    p = _geometry(n.params)
    gx = dispatch(CONV_TRANSPOSE, g, c, size=n.in_shapes[0][2:], **p) if n.needs[0] else None
    gg = _fit(dispatch(CONV, x, c, **p), n.in_shapes[1][2:]) if n.needs[1] else None
    return gx, gg


def _conv_weight_grad_jvp(ts, xs, out, p):
    return _sum([dispatch(CONV_WEIGHT_GRAD, ts[0], xs[1], **p) if ts[0] is not None else None,
                 dispatch(CONV_WEIGHT_GRAD, xs[0], ts[1], **p) if ts[1] is not None else None])


def _sum(parts: list):
    parts = [t for t in parts if t is not None]
    return parts[0] if len(parts) == 1 else _e.add(*parts) if parts else None


CONV = Primitive("conv", "window", quiet(_conv_impl), _conv_rule, vjp=_conv_vjp,
                 jvp=_conv_jvp, save=_e.save_other,
                 doc="N-d cross-correlation of x (N, C, *S) with w (O, C/groups, *K); "
                     "``padding`` is (lo, hi) per spatial dim")
CONV_TRANSPOSE = Primitive(
    "conv_transpose", "window", quiet(_conv_transpose_impl), _conv_transpose_rule,
    vjp=_conv_transpose_vjp, jvp=_conv_transpose_jvp, save=_e.save_other,
    doc="the adjoint of conv in x: (N, O, *P) -> (N, C, *size) with conv's weight")
CONV_WEIGHT_GRAD = Primitive(
    "conv_weight_grad", "window", quiet(_conv_weight_grad_impl), _conv_weight_grad_rule,
    vjp=_conv_weight_grad_vjp, jvp=_conv_weight_grad_jvp, save=_e.save_other,
    doc="the adjoint of conv in w: x (N, C, *S) and g (N, O, *P) -> (O, C/groups, *K)")


# ------------------------------------------------------------------ PyTorch's functions


def ntuple(v, n: int, name: str, op: str) -> tuple:
    """An int or an n-sequence of ints as an n-tuple."""
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n or not all(isinstance(i, int) for i in t):
        raise RuntimeError(f"{op}: expected {name} to be a single integer value or a list of "
                           f"{n} values to match the convolution dimensions, but got "
                           f"{name}={list(t) if isinstance(v, (tuple, list)) else v}")
    return t


def _check_input(op: str, input: Tensor, weight: Tensor, nd: int) -> bool:
    """Whether ``input`` is unbatched; raises PyTorch's error for a wrong rank."""
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{op}: Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input "
                           f"to {op}, but got input of size: {list(input.shape)}")
    if weight.ndim != nd + 2:
        raise RuntimeError(f"{op}: expected a {nd + 2}-d weight (out_channels, "
                           f"in_channels/groups, *kernel_size), got {list(weight.shape)}")
    return input.ndim == nd + 1


def _with_bias(out: Tensor, bias: Tensor | None, nd: int, weight: Tensor) -> Tensor:
    if bias is None:
        return out
    if bias.ndim != 1 or bias.shape[0] != out.shape[1]:
        raise RuntimeError(f"Given weight of size {list(weight.shape)}, expected bias to be "
                           f"1-dimensional with {out.shape[1]} elements, but got bias of size "
                           f"{list(bias.shape)} instead")
    return out + _m.reshape(bias, (-1,) + (1,) * nd)


def _promote(op: str, input: Tensor, weight: Tensor) -> None:
    if input.dtype is not weight.dtype:
        raise RuntimeError(f"{op}: Input type ({input.dtype.name}) and weight type "
                           f"({weight.dtype.name}) should be the same")
    if input.dtype is _dt.bool_:
        raise RuntimeError(f"{op}: \"{op}\" not implemented for 'Bool'")


def conv(input: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation,
         groups: int, nd: int, op: str) -> Tensor:
    """PyTorch's ``conv{nd}d``: argument checks with PyTorch's messages, 'same'/'valid'
    padding, unbatched input, bias."""
    unbatched = _check_input(op, input, weight, nd)
    if unbatched:
        input = _m.unsqueeze(input, 0)
    _promote(op, input, weight)
    stride = ntuple(stride, nd, "stride", op)
    dilation = ntuple(dilation, nd, "dilation", op)
    if groups < 1:
        raise RuntimeError(f"{op}: non-positive groups is not supported")
    if weight.shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, expected weight to be divisible by "
                           f"{groups} at dimension 0, but got weight of size "
                           f"{list(weight.shape)} instead")
    kernel = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pairs = ((0, 0),) * nd
        elif padding == "same":
            if any(s != 1 for s in stride):
                raise RuntimeError(f"{op}: padding='same' is not supported for strided "
                                   f"convolutions")
            # the total d·(k-1) split with the odd element on the right, as PyTorch does
            pairs = tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2)
                          for d, k in zip(dilation, kernel))
        else:
            raise RuntimeError(f"{op}: Invalid padding string '{padding}', should be one of "
                               f"['valid', 'same']")
    else:
        pairs = tuple((p, p) for p in ntuple(padding, nd, "padding", op))
        if min(min(pairs)) < 0:
            raise RuntimeError(f"{op}: negative padding is not supported")
    if input.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected "
            f"input{list(input.shape)} to have {weight.shape[1] * groups} channels, but got "
            f"{input.shape[1]} channels instead")
    for s, (lo, hi), k, d in zip(input.shape[2:], pairs, kernel, dilation):
        if s + lo + hi < d * (k - 1) + 1:
            padded_sizes = " x ".join(str(s + lo + hi)
                                      for s, (lo, hi) in zip(input.shape[2:], pairs))
            kernel_sizes = " x ".join(str(d * (k - 1) + 1) for k, d in zip(kernel, dilation))
            raise RuntimeError(
                f"Calculated padded input size per channel: ({padded_sizes}). Kernel size: "
                f"({kernel_sizes}). Kernel size can't be greater than actual input size (in "
                f"{op}, input {list(input.shape)}: use a larger input, more padding or a "
                f"smaller kernel)")
    out = dispatch(CONV, input, weight, stride=stride, padding=pairs, dilation=dilation,
                   groups=groups)
    out = _with_bias(out, bias, nd, weight)
    return _m.squeeze_dims(out, (0,)) if unbatched else out


def conv1d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """PyTorch's ``F.conv1d``: input (N, C, L) or (C, L), weight (O, C/groups, K).

    >>> conv1d(dg.randn(1, 2, 5), dg.randn(3, 2, 3), padding='same').shape
    (1, 3, 5)
    """
    return conv(input, weight, bias, stride, padding, dilation, groups, 1, "conv1d")


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """PyTorch's ``F.conv2d``: input (N, C, H, W) or (C, H, W), weight (O, C/groups, kh, kw).

    >>> conv2d(dg.randn(1, 3, 8, 8), dg.randn(4, 3, 3, 3), stride=2).shape
    (1, 4, 3, 3)
    """
    return conv(input, weight, bias, stride, padding, dilation, groups, 2, "conv2d")


def conv_transpose(input: Tensor, weight: Tensor, bias, stride, padding, output_padding,
                   groups: int, dilation, nd: int, op: str) -> Tensor:
    """PyTorch's ``conv_transpose{nd}d``; weight (C_in, C_out/groups, *K)."""
    unbatched = _check_input(op, input, weight, nd)
    if unbatched:
        input = _m.unsqueeze(input, 0)
    _promote(op, input, weight)
    stride = ntuple(stride, nd, "stride", op)
    dilation = ntuple(dilation, nd, "dilation", op)
    padding = ntuple(padding, nd, "padding", op)
    output_padding = ntuple(output_padding, nd, "output_padding", op)
    if groups < 1 or weight.shape[0] % groups:
        raise RuntimeError(f"{op}: groups must be a positive integer dividing in_channels "
                           f"({weight.shape[0]}), got groups={groups}")
    if input.shape[1] != weight.shape[0]:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected "
            f"input{list(input.shape)} to have {weight.shape[0]} channels, but got "
            f"{input.shape[1]} channels instead")
    for op_, s, d in zip(output_padding, stride, dilation):
        if op_ >= s and op_ >= d:
            raise RuntimeError(f"{op}: output padding must be smaller than either stride or "
                               f"dilation, but got output_padding={list(output_padding)}, "
                               f"stride={list(stride)}, dilation={list(dilation)}")
    size = tuple((p - 1) * s - 2 * pad + d * (k - 1) + 1 + o for p, s, pad, d, k, o in
                 zip(input.shape[2:], stride, padding, dilation, weight.shape[2:],
                     output_padding))
    if min(size) < 1:
        raise RuntimeError(f"{op}: the output size {list(size)} for input "
                           f"{list(input.shape)} is too small: use less padding")
    out = dispatch(CONV_TRANSPOSE, input, weight, stride=stride,
                   padding=tuple((p, p) for p in padding), dilation=dilation, groups=groups,
                   size=size)
    out = _with_bias(out, bias, nd, weight)
    return _m.squeeze_dims(out, (0,)) if unbatched else out


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """PyTorch's ``F.conv_transpose2d``: weight (C_in, C_out/groups, kh, kw).

    >>> conv_transpose2d(dg.randn(1, 4, 3, 3), dg.randn(4, 2, 3, 3), stride=2).shape
    (1, 2, 7, 7)
    """
    return conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                          dilation, 2, "conv_transpose2d")


__all__ = ["CONV", "CONV_TRANSPOSE", "CONV_WEIGHT_GRAD", "conv1d", "conv2d",
           "conv_transpose2d"]
