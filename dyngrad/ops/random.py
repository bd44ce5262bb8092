"""Counter-based random numbers: Philox-4x32-10 with the generator's state in a tensor.

The ``random`` primitive maps (state, shape, distribution) to numbers with no hidden state:
the state tensor ``[seed, offset]`` is an input, and the generator advances ``offset`` with an
ordinary in-place op afterwards (by one counter value per 32-bit word drawn: see
:func:`advance`). A tracer therefore sees the state as a bound input and its
update as a write, and compiled code can reproduce eager's numbers exactly.

Each counter value yields four 32-bit words. float32 uniforms use 24 bits of one word,
float64 uniforms 53 bits of two; normals use Box–Muller on two float64 uniforms, with log and
cos of our own (``boxmuller.py``) rather than numpy's CPU-specific ones, so that compiled
code draws eager's normals bit for bit too.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..autograd.grad_mode import no_grad
from ..dispatch import STATE, dispatch
from ..tensor import Tensor, check_device
from .boxmuller import box_muller
from .creation import arange, full, maybe_requires_grad, shape_arg, size_keyword, zeros
from .elementwise import cast, eq, floor, le, log1p, lt, minimum, where
from .indexing import scatter_add
from .movement import reshape
from .primitive import Primitive
from .reduce import sum as _sum
from .scan import argsort, cumsum, topk

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def philox4x32(counter_lo: np.ndarray, counter_hi: np.ndarray, seed: int) -> np.ndarray:
    """Philox-4x32-10 of 64-bit counters (lo, hi words) under a 64-bit key; returns an
    (n, 4) array of uint32 words."""
    c0 = counter_lo & _MASK
    c1 = counter_lo >> _S32
    c2 = counter_hi & _MASK
    c3 = counter_hi >> _S32
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> _S32, p0 & _MASK
        hi1, lo1 = p1 >> _S32, p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


_WORDS = {("uniform", "float32"): 1, ("uniform", "float64"): 2, ("normal", "float32"): 4,
          ("normal", "float64"): 4}


def blocks_needed(shape: tuple, dist: str, dtype) -> int:
    """Counter values one call reads (four words each)."""
    n = int(np.prod(shape))
    return -(-n * _WORDS[(dist, dtype.name)] // 4)


def advance(shape: tuple, dist: str, dtype) -> int:
    """How far one call moves the generator's offset: one counter value per word drawn —
    more than the call reads (:func:`blocks_needed`), so that the step is linear in the
    number of elements: a compiled function whose batch size changes keeps one variant
    (``compiler/symbolic.py`` fits sizes that are affine in the size)."""
    return int(np.prod(shape)) * _WORDS[(dist, dtype.name)]


def _words(state: np.ndarray, n_words: int) -> np.ndarray:
    seed, offset = int(state[0]), int(state[1])
    blocks = -(-n_words // 4)
    ctr = np.arange(blocks, dtype=np.uint64) + np.uint64(offset & 0xFFFFFFFFFFFFFFFF)
    return philox4x32(ctr, np.zeros_like(ctr), seed).reshape(-1)[:n_words]


def _u53(w: np.ndarray) -> np.ndarray:
    a = (w[0::2] >> np.uint32(5)).astype(np.float64)
    b = (w[1::2] >> np.uint32(6)).astype(np.float64)
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)


def _random_impl(state, shape, dist, dtype):
    n = int(np.prod(shape))
    w = _words(state, n * _WORDS[(dist, dtype.name)])
    if dist == "uniform":
        if dtype is _dt.float32:
            out = (w >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
        else:
            out = _u53(w)
    else:
        u = _u53(w)
        out = box_muller(1.0 - u[0::2], u[1::2])  # (1 − u: exact, in (0, 1])
    return out.astype(dtype.np, copy=False).reshape(shape)


def _random_rule(state, shape, dist, dtype):
    if tuple(state.shape) != (2,) or state.dtype is not _dt.int64:
        raise TypeError("random: the state must be an int64 tensor [seed, offset]")
    if (dist, dtype.name) not in _WORDS:
        raise TypeError(f"random: unsupported distribution {dist!r} for {dtype.name}")
    return tuple(shape), dtype


RANDOM = Primitive("random", "random", _random_impl, _random_rule,
                   doc="Philox-4x32-10 numbers from a [seed, offset] state tensor; "
                       "dist 'uniform' in [0, 1) or 'normal'")

DEFAULT_SEED = 67280421310721  # PyTorch's default seed, so fresh processes agree


class Generator:
    """A random generator whose whole state is an int64 tensor ``[seed, offset]``."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.state = Tensor._constant(np.array([seed, 0], dtype=np.int64))

    def manual_seed(self, seed: int) -> Generator:
        with no_grad():
            self.state.copy_(Tensor._constant(np.array([int(seed) & 0x7FFFFFFFFFFFFFFF, 0],
                                                    dtype=np.int64)))
        return self

    def initial_seed(self) -> int:
        return int(self.state._data[0])

    def get_state(self) -> Tensor:
        return self.state.clone()

    def set_state(self, state: Tensor) -> None:
        with no_grad():
            self.state.copy_(state)

    def sample(self, shape: tuple, dist: str, dtype) -> Tensor:
        """Draw numbers and advance the offset (an in-place op a tracer records)."""
        out = dispatch(RANDOM, self.state, shape=tuple(shape), dist=dist, dtype=dtype)
        step = advance(shape, dist, dtype)
        if step:
            with no_grad():  # [0, 1] · step: the step a parameter (a traced `full`)
                self.state.add_(Tensor._constant(np.array([0, 1], dtype=np.int64))
                                * full((), step, dtype=_dt.int64))
        return out


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (same seed → same numbers, eager or compiled)."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state() -> Tensor:
    return default_generator.get_state()


def set_rng_state(state: Tensor) -> None:
    default_generator.set_state(state)


def _gen(generator):
    return default_generator if generator is None else generator


def _float_dtype(dtype):
    d = _dt.as_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    if not d.is_floating_point:
        raise TypeError(f"random: expected a floating dtype, got {d.name}")
    return d


def rand(*size, dtype=None, generator=None, requires_grad: bool = False,
         device=None, **kw) -> Tensor:
    """Uniform numbers in [0, 1) (sizes positional or as ``size=``)."""
    size = size_keyword(size, kw, "rand")
    t = _gen(generator).sample(shape_arg(size, "rand"), "uniform", _float_dtype(dtype))
    return maybe_requires_grad(t, requires_grad, device)


def randn(*size, dtype=None, generator=None, requires_grad: bool = False,
          device=None, **kw) -> Tensor:
    """Standard normal numbers (sizes positional or as ``size=``)."""
    size = size_keyword(size, kw, "randn")
    t = _gen(generator).sample(shape_arg(size, "randn"), "normal", _float_dtype(dtype))
    return maybe_requires_grad(t, requires_grad, device)


def randint(low, high=None, size=(), *, dtype=None, generator=None, device=None) -> Tensor:
    """Integers uniform in [low, high)."""
    check_device(device)
    if high is None:
        low, high = 0, low
    if high <= low:
        raise RuntimeError(f"randint: expected low < high, got low={low}, high={high}")
    shape = shape_arg((tuple(size),) if not isinstance(size, int) else (size,), "randint")
    u = _gen(generator).sample(shape, "uniform", _dt.float64)
    return cast(floor(u * float(high - low)) + float(low), dtype or _dt.int64)


def rand_like(x: Tensor, *, dtype=None, device=None) -> Tensor:
    return rand(x.shape, dtype=dtype or x.dtype, device=device)


def randn_like(x: Tensor, *, dtype=None, device=None) -> Tensor:
    return randn(x.shape, dtype=dtype or x.dtype, device=device)


def randint_like(x: Tensor, low, high=None, *, dtype=None, device=None) -> Tensor:
    return randint(low, high, x.shape, dtype=dtype or x.dtype, device=device)


def randperm(n: int, *, generator=None, dtype=None, device=None,
             requires_grad: bool = False) -> Tensor:
    """A random permutation of 0..n-1: the stable argsort of n float64 uniforms.

    Note (the same permutation eager or compiled): the sort is the ``argsort`` primitive
    (dyngrad/ops/scan.py), numpy's stable argsort, so a tracer records it like any op — a
    compiled call draws new uniforms and sorts them as eager does, at any ``n``.

    >>> dg.manual_seed(0); p = dg.randperm(5)   # a permutation of 0..4, int64
    """
    check_device(device)
    n = int(n)
    if n < 0:
        raise RuntimeError(f"randperm: n must be non-negative, got {n}")
    u = _gen(generator).sample((n,), "uniform", _dt.float64)
    perm = argsort(u)
    if dtype is not None and _dt.as_dtype(dtype) is not _dt.int64:
        perm = cast(perm, dtype)
    return maybe_requires_grad(perm, requires_grad)


def stable_argsort(u: Tensor) -> Tensor:
    """``np.argsort(u, kind="stable")`` of a 1-d tensor without NaNs, from elementwise ops,
    sums and a scatter (no sorting primitive): element i's rank counts the j with
    (u[j], j) < (u[i], i); the permutation puts i at its rank. Quadratic in ``len(u)``: a
    reference for the ``argsort`` primitive, for backends without it."""
    n = u.shape[0]
    with no_grad():  # (counts up to n are exact in float64)
        f = arange(n, dtype=_dt.float64)
        ui, uj = reshape(u, (n, 1)), reshape(u, (1, n))
        before = where(eq(uj, ui), lt(reshape(f, (1, n)), reshape(f, (n, 1))), lt(uj, ui))
        rank = cast(_sum(cast(before, _dt.float64), 1), _dt.int64)
        return scatter_add(zeros(n, dtype=_dt.int64), rank, arange(n))


# ------------------------------------------------------------------ distributions
#
# Note (drawn, then composed): each distribution below draws uniforms or normals through
# `Generator.sample` (the `random` primitive, traced with the generator's state as an input)
# and shapes them with ordinary ops, so a compiled function draws fresh numbers on every call,
# the same numbers eager draws from the same seed. Argument checks that read values (a
# negative std, a probability outside [0, 1]) run eagerly only: under a dispatch mode (a
# tracer) reading them would bake one call's data into the compiled code.


def _checks_values() -> bool:
    return not STATE.modes


def _zero_grad_link(out: Tensor, *inputs) -> Tensor:
    """``out`` in the graph of ``inputs`` with a zero gradient (PyTorch's normal and
    bernoulli: the result requires grad, the gradient is zero). ``where`` of an all-false
    mask adds exactly 0 whatever the input holds (inf, nan)."""
    if not STATE.grad_enabled:
        return out
    for x in inputs:
        if isinstance(x, Tensor) and x.requires_grad:
            never = lt(full(out.shape, 1.0, dtype=out.dtype), 0.0)
            out = out + where(never, x, 0.0)
    return out


def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None,
           requires_grad: bool = False) -> Tensor:
    """Normal numbers with the given ``mean`` and ``std`` (numbers or tensors, broadcast
    together; ``size`` when both are numbers). As in PyTorch the result requires grad when
    ``mean`` or ``std`` does, with a zero gradient.

    >>> dg.normal(dg.zeros(3), 2.0)          # three draws of N(0, 4)
    >>> dg.normal(0.0, 1.0, size=(2, 2))
    """
    tensors = [x for x in (mean, std) if isinstance(x, Tensor)]
    if not tensors:
        if size is None:
            raise TypeError("normal() missing the required argument 'size' when mean and std "
                            "are numbers")
        if std < 0:
            raise RuntimeError(f"normal expects std >= 0.0, but found std {std}")
        d = _float_dtype(dtype)
        shape = shape_arg((tuple(size),) if not isinstance(size, int) else (size,), "normal")
        out = _gen(generator).sample(shape, "normal", d) * float(std) + float(mean)
        return maybe_requires_grad(out, requires_grad)
    if size is not None and tuple(size) != _broadcast_shape(mean, std):
        raise RuntimeError(f"normal: size {list(size)} given with tensor mean/std of shape "
                           f"{list(_broadcast_shape(mean, std))}; leave size out")
    d = _float_dtype(dtype if dtype is not None else tensors[0].dtype
                     if tensors[0].dtype.is_floating_point else None)
    if isinstance(std, Tensor) and _checks_values() and std.numel() and \
            bool((std._data < 0).any()):
        raise RuntimeError("normal expects all elements of std >= 0.0")
    if not isinstance(std, Tensor) and std < 0:
        raise RuntimeError(f"normal expects std >= 0.0, but found std {std}")
    shape = _broadcast_shape(mean, std)
    m = mean.detach() if isinstance(mean, Tensor) else mean
    s = std.detach() if isinstance(std, Tensor) else std
    out = _gen(generator).sample(shape, "normal", d) * s + m
    if out.dtype is not d:
        out = cast(out, d)
    return _zero_grad_link(out, mean, std)


def _broadcast_shape(*xs) -> tuple:
    return tuple(np.broadcast_shapes(*(tuple(x.shape) for x in xs if isinstance(x, Tensor))))


def _check_probabilities(p: Tensor) -> None:
    if _checks_values() and p.numel():
        data = p._data
        if not bool(((data >= 0) & (data <= 1)).all()):
            raise RuntimeError("bernoulli: expected every probability p to satisfy "
                               "0 <= p <= 1 (PyTorch: Expected p_in >= 0 && p_in <= 1 to be "
                               "true, but got false.)")


def bernoulli(input: Tensor, p=None, *, generator=None) -> Tensor:
    """1 with probability ``input`` (or the number ``p``), else 0, in input's dtype.

    >>> dg.bernoulli(dg.full((4,), 0.5))      # e.g. tensor([1., 0., 0., 1.])
    """
    dtype = input.dtype if input.dtype.is_floating_point else _dt.get_default_dtype()
    if p is None:
        if not input.dtype.is_floating_point:
            raise RuntimeError(f"bernoulli: expected a floating-point tensor of "
                               f"probabilities, got {input.dtype.name}")
        prob = input.detach()
        _check_probabilities(prob)
    else:
        if isinstance(p, Tensor):
            _check_probabilities(p)
            prob = p.detach()
        elif not 0 <= p <= 1:
            raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
        else:
            prob = float(p)
    shape = input.shape if p is None or not isinstance(p, Tensor) else \
        _broadcast_shape(input, p)
    u = _gen(generator).sample(shape, "uniform", _dt.float64)
    out = cast(lt(u, prob), input.dtype if p is not None else dtype)
    return _zero_grad_link(out, input) if p is None and out.dtype.is_floating_point else out


def multinomial(input: Tensor, num_samples: int, replacement: bool = False, *,
                generator=None) -> Tensor:
    """Category indices drawn with probabilities proportional to the rows of ``input`` (1-d
    or 2-d, non-negative weights), int64.

    With replacement each draw inverts the cumulative weights at a uniform number; without,
    the ``num_samples`` categories with the smallest exponential keys E/w are taken (the
    exponential-race view of sampling without replacement), in that order.

    >>> dg.multinomial(dg.tensor([0.1, 0.0, 0.9]), 4, replacement=True)  # e.g. [2, 2, 0, 2]
    """
    if input.ndim not in (1, 2):
        raise RuntimeError(f"prob_dist must be 1 or 2 dim, got a tensor of shape "
                           f"{list(input.shape)}")
    if not input.dtype.is_floating_point:
        raise RuntimeError(f"multinomial only supports floating-point dtypes for input, got: "
                           f"{input.dtype.name}")
    k = int(num_samples)
    if k <= 0:
        raise RuntimeError("cannot sample n_sample <= 0 samples")
    n = input.shape[-1]
    if not replacement and k > n:
        raise RuntimeError("cannot sample n_sample > prob_dist.size(-1) samples without "
                           "replacement")
    w = input.detach()
    if _checks_values() and w.numel():
        data = w._data
        if not bool(np.isfinite(data).all()) or bool((data < 0).any()):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if bool((data.sum(-1) <= 0).any()):
            raise RuntimeError("invalid multinomial distribution (sum of probabilities <= 0)")
    rows = w if w.ndim == 2 else reshape(w, (1, n))
    r = rows.shape[0]
    w64 = cast(rows, _dt.float64)
    if replacement:
        cdf = cumsum(w64, 1)                                           # (r, n)
        u = _gen(generator).sample((r, k), "uniform", _dt.float64)
        target = u * reshape(_sum(w64, 1), (r, 1))                     # (r, k)
        below = le(reshape(cdf, (r, 1, n)), reshape(target, (r, k, 1)))
        idx = _sum(cast(below, _dt.int64), 2)
        idx = minimum(idx, n - 1)
    else:
        u = _gen(generator).sample((r, n), "uniform", _dt.float64)
        keys = -log1p(-u) / w64       # exponential / weight; zero weight: inf (drawn last)
        idx = topk(keys, k, 1, largest=False).indices
    return idx if input.ndim == 2 else reshape(idx, (k,))
