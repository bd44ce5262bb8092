"""Functional forms that move elements without arithmetic, with PyTorch's semantics and
errors (re-exported by ``dyngrad.nn.functional``): ``pad`` in its four modes,
``pixel_shuffle`` and ``pixel_unshuffle``. All are compositions of the op table (constant
padding, gathers, reshapes and permutes), so they differentiate, trace and compile as their
parts do.

Note [padding modes as gathers]: 'reflect', 'replicate' and 'circular' differ only in which
input position each output position reads. For a dim of size n padded by (lo, hi), output
position o reads p = o − lo, mapped into [0, n) by the mode (reflect: mirror about the end
elements, excluding them; replicate: clamp; circular: modulo). So each padded dim is one
``index_select`` with a constant index: its gradient is the matching scatter-add, with no
rule of its own to get wrong, and negative padding (cropping) falls out of the same formula.
"""

from __future__ import annotations

from .. import dtypes as _dt
from ..ops import creation as _c
from ..ops import indexing as _i
from ..ops import movement as _m
from ..tensor import Tensor

_SOURCE = {
    "reflect": lambda p, n: -p if p < 0 else (2 * (n - 1) - p if p >= n else p),
    "replicate": lambda p, n: min(max(p, 0), n - 1),
}


def _source(mode: str, lo: int, hi: int, n: int) -> list:
    """The input position each output position reads along one dim (see the Note); circular
    padding wraps within the part a negative pad leaves, as PyTorch's."""
    if mode == "circular":
        a, b = max(-lo, 0), n - max(-hi, 0)
        if b <= a:
            raise RuntimeError("Padding value causes wrapping around more than once.")
        return [a + (p - a) % (b - a) for p in range(-lo, n + hi)]
    return [_SOURCE[mode](p, n) for p in range(-lo, n + hi)]
_SUPPORTED = ("Supported combinations for non-constant padding:\n"
              "  - 2D or 3D input: padding size = 2 (pads last dimension)\n"
              "  - 3D or 4D input: padding size = 4 (pads last 2 dimensions)\n"
              "  - 4D or 5D input: padding size = 6 (pads last 3 dimensions)")


def _check_pad_arguments(input: Tensor, pad, mode: str, value) -> tuple:
    """PyTorch's checks of ``F.pad``'s arguments, in its order; the pads as a tuple."""
    pad = tuple(pad)
    for k, p in enumerate(pad):
        if isinstance(p, bool) or not isinstance(p, int) and not hasattr(p, "__index__"):
            raise TypeError(f"pad(): argument 'pad' (position 2) must be tuple of ints, but "
                            f"found element of type {type(p).__name__} at pos {k}")
    if mode not in ("constant", "circular", *_SOURCE):
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) // 2 > input.ndim:
        raise RuntimeError(f"Padding length should be less than or equal to two times the "
                           f"input dimension but got padding length {len(pad)} and input of "
                           f"dimension {input.ndim}")
    if mode != "constant":
        if value is not None and value != 0:
            raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument')
        nd = len(pad) // 2
        if nd not in (1, 2, 3) or input.ndim not in (nd + 1, nd + 2):
            raise NotImplementedError(f"Padding size {len(pad)} is not supported for "
                                      f"{input.ndim}D input tensor.\n{_SUPPORTED}")
    return tuple(int(p) for p in pad)


def pad(input: Tensor, pad, mode: str = "constant", value: float | None = None) -> Tensor:
    """PyTorch's ``F.pad``: ``pad`` lists (left, right) pairs starting from the LAST dim;
    negative entries crop. ``mode`` 'constant' (fills ``value``, any number of dims),
    'reflect', 'replicate' or 'circular' (the last 1, 2 or 3 dims of an input with one or
    two more; see Note [padding modes as gathers]).

    >>> F.pad(dg.tensor([[1., 2., 3.]]), (2, 1), mode="reflect")
    tensor([[3., 2., 1., 2., 3., 2.]])
    """
    pad = _check_pad_arguments(input, pad, mode, value)
    pairs = [(pad[2 * k], pad[2 * k + 1]) for k in range(len(pad) // 2)]  # last dim first
    if mode == "constant":
        full = [(0, 0)] * input.ndim
        for k, (lo, hi) in enumerate(pairs):
            if input.shape[input.ndim - 1 - k] + min(lo, 0) + min(hi, 0) < 0:
                raise RuntimeError("narrow(): length must be non-negative.")  # (PyTorch's)
            full[input.ndim - 1 - k] = (lo, hi)
        return _m.pad(input, full, value=0.0 if value is None else value)
    if mode != "circular" and 0 in input.shape[1:]:
        raise RuntimeError(f"Expected {len(pairs) + 1}D or {len(pairs) + 2}D (batch mode) "
                           f"tensor with possibly 0 batch size and other non-zero dimensions "
                           f"for input, but got: {list(input.shape)}")
    out = input
    for k, (lo, hi) in enumerate(pairs):
        d = input.ndim - 1 - k
        n = input.shape[d]
        if mode == "reflect" and (lo >= n or hi >= n):
            raise RuntimeError(f"Argument #{4 + 2 * k}: Padding size should be less than the "
                               f"corresponding input dimension, but got: padding ({lo}, {hi}) "
                               f"at dimension {d} of input {list(input.shape)}")
        if mode == "circular" and (lo > n or hi > n):
            raise RuntimeError("Padding value causes wrapping around more than once.")
        if n + lo + hi <= 0 and (mode != "circular" or n + lo + hi < 0):
            dim = "DHW"[d - input.ndim + 3] if d >= input.ndim - 3 else str(d)
            raise RuntimeError(f"input ({dim}: {n}) is too small. Calculated output {dim}: "
                               f"{n + lo + hi}")
        if lo == hi == 0:
            continue
        source = _source(mode, lo, hi, n)
        out = _i.index_select(out, d, _c.tensor(source, dtype=_dt.int64))
    return out


def _check_factor(input: Tensor, factor: int, op: str, what: str) -> None:
    if input.ndim < 3:
        raise RuntimeError(f"{op} expects input to have at least 3 dimensions, but got input "
                           f"with {input.ndim} dimension(s)")
    if factor <= 0:
        raise RuntimeError(f"{op} expects a positive {what}, but got {factor}")


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """(*, C·r², H, W) → (*, C, H·r, W·r): each group of r² channels becomes an r×r block.

    >>> F.pixel_shuffle(dg.randn(1, 8, 3, 3), 2).shape
    (1, 2, 6, 6)
    """
    r = upscale_factor
    _check_factor(input, r, "pixel_shuffle", "upscale_factor")
    *batch, c, h, w = input.shape
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be "
                           f"divisible by the square of upscale_factor, but input.size(-3)={c} "
                           f"is not divisible by {r * r}")
    b = len(batch)
    x = input.reshape(*batch, c // (r * r), r, r, h, w)
    x = x.permute(*range(b), b, b + 3, b + 1, b + 4, b + 2)
    return x.reshape(*batch, c // (r * r), h * r, w * r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """(*, C, H·r, W·r) → (*, C·r², H, W), the inverse of :func:`pixel_shuffle`.

    >>> F.pixel_unshuffle(dg.randn(1, 2, 6, 6), 2).shape
    (1, 8, 3, 3)
    """
    r = downscale_factor
    _check_factor(input, r, "pixel_unshuffle", "downscale_factor")
    *batch, c, h, w = input.shape
    for name, size, dim in (("height", h, -2), ("width", w, -1)):
        if size % r:
            raise RuntimeError(f"pixel_unshuffle expects {name} to be divisible by "
                               f"downscale_factor, but input.size({dim})={size} is not "
                               f"divisible by {r}")
    b = len(batch)
    x = input.reshape(*batch, c, h // r, r, w // r, r)
    x = x.permute(*range(b), b, b + 2, b + 4, b + 1, b + 3)
    return x.reshape(*batch, c * r * r, h // r, w // r)
