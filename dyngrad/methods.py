"""The methods layer: every Tensor method and operator built on an op, generated from one
table (:data:`METHODS`, each method named once), and the binding of the tensor core's few
calls up the layers (``UPWARD``, see Note [calls up from the tensor core] in
``dyngrad/tensor.py``).

The layers of dyngrad, each importing only those below it:

1. the tensor core: ``dtypes``, ``dispatch``, ``autograd.graph``/``grad_mode``, ``tensor``;
2. primitives: ``ops.primitive`` and the records of ``ops.creation``, ``ops.movement``,
   ``ops.elementwise``, ``ops.bitwise``, ``ops.indexing``, ``ops.reduce``, ``ops.linalg``,
   ``ops.scan``, ``ops.random`` (in that order, each with the front-end functions and
   composites built on it);
3. composites: ``ops.composites``, ``ops.einsum``, ``ops.losses``, ``autograd`` (backward,
   grad, Function), ``printing``, ``forward_ad``, ``vmap``, ``func``, ``nn``, ``optim``;
4. this module, which ``dyngrad/__init__`` imports last and runs once (:func:`install`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from . import autograd, forward_ad, printing
from .dispatch import STATE
from .ops import bitwise as _b
from .ops import composites as _cf
from .ops import creation as _c
from .ops import elementwise as _e
from .ops import indexing as _i
from .ops import linalg as _l
from .ops import movement as _m
from .ops import random as _rnd
from .ops import reduce as _r
from .ops import scan as _s
from .ops import scatter as _sc
from .ops import unique as _u
from .ops.primitive import quiet
from .tensor import UPWARD, Tensor, to_arguments


def _binop(fn, reflected=False):
    def op(self, other):
        try:
            return fn(other, self) if reflected else fn(self, other)
        except TypeError as exc:
            if "unsupported operand" in str(exc):
                return NotImplemented
            raise
    return op


def _inplace(fn, name, reads_self=True, ufunc=None):
    def op(self, *args, **kwargs):
        self._check_inplace(name)
        if ufunc is not None and not STATE.modes and _fast_inplace(self, ufunc, args, kwargs):
            return self
        src = self
        if reads_self and STATE.grad_enabled and _records(self, args):
            # Note: the functional op may save its input for backward; give it a copy, since
            # the write below changes this tensor's memory (PyTorch saves "original self").
            src = _e.cast(self, self.dtype)
        return self._commit(fn(src, *args, **kwargs), name)
    op.__name__ = name
    op.__doc__ = f"In-place version of ``{name.rstrip('_')}`` (autograd flows through it)."
    return op


def _fast_inplace(self, ufunc, args, kwargs) -> bool:
    """Eager fast path of ``add_``/``sub_``/``mul_`` when nothing is recorded: the same numpy
    operations as the op path (``alpha`` multiplies first), written straight into the tensor.
    Returns False when the general path must run (autograd, promotion, casting, errors)."""
    if len(args) != 1 or (kwargs and set(kwargs) != {"alpha"}):
        return False
    other = args[0]
    alpha = kwargs.get("alpha", 1)
    if STATE.grad_enabled and _records(self, args):
        return False
    dst = self._data
    if isinstance(other, Tensor):
        src = other._data
        if src.dtype is not dst.dtype or not dst.flags.writeable:
            return False
    elif type(other) is float or type(other) is int:
        if dst.dtype.kind != "f" or type(alpha) not in (int, float):
            return False
        src = other
    else:
        return False
    if alpha != 1:
        if type(alpha) not in (int, float):
            return False
        src = np.multiply(src, alpha)
    try:
        if np.broadcast_shapes(np.shape(src), dst.shape) != dst.shape:
            return False  # the general path raises the shape error
    except ValueError:
        return False
    ufunc(dst, src, out=dst)
    self._storage.version += 1
    return True


def _records(self, args) -> bool:
    if self._requires_grad or (self._base is not None and self._base._requires_grad):
        return True
    return any(isinstance(a, Tensor) and a._requires_grad for a in args)


def _fill(self, value):
    if isinstance(value, Tensor):
        if value.ndim:
            raise RuntimeError(f"fill_ only supports 0-dimension value tensor but got tensor "
                               f"with {value.ndim} dimensions")
        return _m.expand(_e.cast(value, self.dtype), self.shape)
    return _c.full(self.shape, value, dtype=self.dtype)


def _zero(self):
    return _c.zeros(self.shape, dtype=self.dtype)


def _copy(self, src):
    if not isinstance(src, Tensor):
        src = _c.tensor(src, dtype=self.dtype)
    if src.dtype is not self.dtype or (src._requires_grad and src._node is None):
        src = _e.cast(src, self.dtype)  # _commit adopts src's history; a leaf has none
    return _m.expand(src, self.shape) if src.shape != self.shape else src


def _uniform(self, a=0.0, b=1.0, *, generator=None):
    return _rnd.rand(self.shape, dtype=self.dtype, generator=generator) * (b - a) + a


def _bernoulli_fill(self, p=0.5, *, generator=None):
    return _rnd.bernoulli(self, p, generator=generator)


def _bernoulli_method(self, p=None, *, generator=None):
    return _rnd.bernoulli(self, p, generator=generator)


def _normal(self, mean=0.0, std=1.0, *, generator=None):
    return _rnd.randn(self.shape, dtype=self.dtype, generator=generator) * std + mean


def _to(self, *args, **kwargs):
    """``Tensor.to``: ``to(dtype)``, ``to(device, dtype=None)``, ``to(other)``, with
    ``non_blocking=`` (no effect) and ``copy=`` (a new tensor even when nothing changes)."""
    dtype, copy = to_arguments(args, kwargs)
    if dtype is None or _e._dt.as_dtype(dtype) is self.dtype:
        return _clone(self) if copy else self
    return _e.cast(self, dtype)


@_r.keepdims_alias
def _sum_method(self, dim=None, keepdim=False, dtype=None):
    return _r.sum(self, dim, keepdim, dtype=dtype)


def _view_method(self, *shape):
    return _m.view(self, *shape)


def _reshape_method(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return _m.reshape(self, shape)


def _setitem(self, key, value):
    _i.setitem(self, key, value)


def _clone(self):
    return _e.cast(self, self.dtype)


def _masked_fill_(self, mask, value):
    self._check_inplace("masked_fill_")
    return self._commit(_e.masked_fill(self, mask, value), "masked_fill_")


def _scatter_add_(self, dim, index, src):
    self._check_inplace("scatter_add_")
    return self._commit(_i.scatter_add_dim(self, dim, index, src), "scatter_add_")


def _scatter_(self, dim, index, src=None, *, value=None, reduce=None):
    self._check_inplace("scatter_")
    return self._commit(_sc.scatter_dim(self, dim, index, src, value=value, reduce=reduce),
                        "scatter_")


def _index_add_(self, dim, index, source, *, alpha=1):
    self._check_inplace("index_add_")
    return self._commit(_i.index_add(self, dim, index, source, alpha=alpha), "index_add_")


class Kind(Enum):
    """How a row of :data:`METHODS` becomes a Tensor attribute."""

    METHOD = "method"        # the op itself: ``t.exp()`` is ``exp(t)``
    OPERATOR = "operator"    # ``t + u`` is ``add(t, u)``; NotImplemented for foreign operands
    REFLECTED = "reflected"  # ``2 - t`` is ``sub(2, t)``
    INPLACE = "inplace"      # ``t.add_(u)``: the op's result written into ``t``
    OVERWRITE = "overwrite"  # in place without reading ``t`` (``zero_``): saves no copy of it
    PROPERTY = "property"    # ``t.T``


@dataclass(frozen=True)
class Method:
    """One Tensor attribute made from an op.

    >>> Method("add_", _e.add, Kind.INPLACE, fast=np.add).build()   # Tensor.add_
    """

    name: str
    op: Callable
    kind: Kind = Kind.METHOD
    fast: np.ufunc | None = None  # in place: the ufunc of the eager fast path (see
    #                               _fast_inplace), when nothing is recorded
    doc: str | None = None        # a property's docstring

    def build(self):
        kind = self.kind
        if kind is Kind.METHOD:
            return self.op
        if kind is Kind.OPERATOR or kind is Kind.REFLECTED:
            return _binop(self.op, reflected=kind is Kind.REFLECTED)
        if kind is Kind.PROPERTY:
            return property(self.op, doc=self.doc)
        return _inplace(self.op, self.name, reads_self=kind is Kind.INPLACE,
                        ufunc=quiet(self.fast) if self.fast is not None else None)


def _rows(kind: Kind, **ops: Callable) -> tuple:
    return tuple(Method(name, op, kind) for name, op in ops.items())


METHODS: tuple[Method, ...] = (
    *_rows(
        Kind.METHOD,
        # arithmetic
        add=_e.add, sub=_e.sub, mul=_e.mul, div=_e.div, pow=_e.pow,
        true_divide=_e.div, floor_divide=_e.floor_divide, remainder=_e.remainder,
        maximum=_e.maximum, minimum=_e.minimum,
        eq=_e.eq, ne=_e.ne, lt=_e.lt, le=_e.le, gt=_e.gt, ge=_e.ge,
        neg=_e.neg, abs=_e.abs, sign=_e.sign, floor=_e.floor, ceil=_e.ceil,
        round=_e.round, exp=_e.exp, log=_e.log, log1p=_e.log1p, sqrt=_e.sqrt,
        rsqrt=_e.rsqrt, sin=_e.sin, cos=_e.cos, tanh=_e.tanh, erf=_e.erf,
        asin=_e.asin, acos=_e.acos, atan=_e.atan, atan2=_e.atan2, arcsin=_e.asin,
        arccos=_e.acos, arctan=_e.atan, arctan2=_e.atan2,
        sigmoid=_e.sigmoid, relu=_e.relu, reciprocal=_e.reciprocal, square=_e.square,
        clamp=_e.clamp, clip=_e.clamp, masked_fill=_e.masked_fill,
        logical_and=_e.logical_and, logical_or=_e.logical_or, logical_not=_e.logical_not,
        logical_xor=_e.logical_xor, lerp=_e.lerp, addcmul=_e.addcmul, addcdiv=_e.addcdiv,
        bitwise_and=_b.bitwise_and, bitwise_or=_b.bitwise_or, bitwise_xor=_b.bitwise_xor,
        bitwise_not=_b.bitwise_not, bitwise_left_shift=_b.bitwise_left_shift,
        bitwise_right_shift=_b.bitwise_right_shift,
        # reductions
        sum=_sum_method, mean=_r.mean, var=_r.var, std=_r.std, amax=_r.amax,
        amin=_r.amin, max=_r.max, min=_r.min, argmax=_r.argmax, argmin=_r.argmin,
        logsumexp=_r.logsumexp, norm=_r.norm, prod=_r.prod, all=_r.all, any=_r.any,
        softmax=_r.softmax, log_softmax=_r.log_softmax,
        # movement
        reshape=_reshape_method, view=_view_method, expand=_m.expand,
        expand_as=_m.expand_as, broadcast_to=_m.expand, permute=_m.permute,
        view_as=lambda self, other: self.view(other.shape),
        transpose=_m.transpose, squeeze=_m.squeeze, unsqueeze=_m.unsqueeze,
        flatten=_m.flatten, narrow=_m.narrow, split=_m.split, chunk=_m.chunk,
        unbind=_m.unbind, repeat=_m.repeat, contiguous=_m.contiguous,
        # indexing and linear algebra
        gather=lambda self, dim, index: _i.take_along_dim(self, index, dim),
        take_along_dim=lambda self, indices, dim: _i.take_along_dim(self, indices, dim),
        index_select=_i.index_select, scatter_add=_i.scatter_add_dim, index_add=_i.index_add,
        scatter=_sc.scatter_dim,
        nonzero=_i.nonzero, argwhere=_i.nonzero, unique=_u.unique,
        unique_consecutive=_u.unique_consecutive,
        matmul=_l.matmul, mm=_l.mm, bmm=_l.bmm, dot=_l.dot, outer=_l.outer,
        # tensor functions (dyngrad/ops/composites.py, scan.py)
        tril=_cf.tril, triu=_cf.triu, t=_cf.t, swapaxes=_cf.swapaxes, swapdims=_cf.swapdims,
        sinh=_cf.sinh, cosh=_cf.cosh, trunc=_cf.trunc, fix=_cf.trunc,
        asinh=_cf.asinh, acosh=_cf.acosh, atanh=_cf.atanh, arcsinh=_cf.asinh,
        arccosh=_cf.acosh, arctanh=_cf.atanh,
        isnan=_cf.isnan, isinf=_cf.isinf, isfinite=_cf.isfinite, log2=_cf.log2,
        isclose=_cf.isclose, allclose=_cf.allclose, equal=_cf.equal,
        log10=_cf.log10, mv=_l.mv,
        repeat_interleave=_cf.repeat_interleave, roll=_cf.roll,
        new_zeros=_cf.new_zeros, new_ones=_cf.new_ones, new_full=_cf.new_full,
        new_empty=_cf.new_empty, new_tensor=_cf.new_tensor,
        cumsum=_s.cumsum, cumprod=_s.cumprod, sort=_s.sort, argsort=_s.argsort,
        topk=_s.topk, msort=_s.msort,
        bernoulli=_bernoulli_method, multinomial=_rnd.multinomial,
        # conversion
        clone=_clone, to=_to, type=_cf.type_,
        float=lambda self: _to(self, "float32"), double=lambda self: _to(self, "float64"),
        long=lambda self: _to(self, "int64"), bool=lambda self: _to(self, "bool"),
        int=lambda self: _to(self, "int32"), short=lambda self: _to(self, "int16"),
        char=lambda self: _to(self, "int8"), byte=lambda self: _to(self, "uint8"),
        __setitem__=_setitem, __getitem__=_i.getitem,
        masked_fill_=_masked_fill_,
        scatter_add_=_scatter_add_, index_add_=_index_add_, scatter_=_scatter_,
        # unary operators
        __neg__=_e.neg, __abs__=_e.abs, __pos__=lambda self: self,
        __invert__=_b.invert,
    ),
    *_rows(
        Kind.OPERATOR,
        __add__=_e.add, __sub__=_e.sub, __mul__=_e.mul, __truediv__=_e.div,
        __floordiv__=_e.floor_divide, __mod__=_e.remainder, __pow__=_e.pow,
        __matmul__=_l.matmul,
        __eq__=_e.eq, __ne__=_e.ne, __lt__=_e.lt, __le__=_e.le, __gt__=_e.gt, __ge__=_e.ge,
        __and__=_b.bitwise_and, __or__=_b.bitwise_or, __xor__=_b.bitwise_xor,
        __lshift__=_b.bitwise_left_shift, __rshift__=_b.bitwise_right_shift,
    ),
    *_rows(
        Kind.REFLECTED,
        __radd__=_e.add, __rsub__=_e.sub, __rmul__=_e.mul, __rtruediv__=_e.div,
        __rfloordiv__=_e.floor_divide, __rmod__=_e.remainder, __rpow__=_e.pow,
        __rmatmul__=_l.matmul,
        __rand__=_b.bitwise_and, __ror__=_b.bitwise_or, __rxor__=_b.bitwise_xor,
        __rlshift__=_b.bitwise_left_shift, __rrshift__=_b.bitwise_right_shift,
    ),
    Method("add_", _e.add, Kind.INPLACE, fast=np.add),
    Method("sub_", _e.sub, Kind.INPLACE, fast=np.subtract),
    Method("mul_", _e.mul, Kind.INPLACE, fast=np.multiply),
    Method("__iadd__", _e.add, Kind.INPLACE, fast=np.add),
    Method("__isub__", _e.sub, Kind.INPLACE, fast=np.subtract),
    Method("__imul__", _e.mul, Kind.INPLACE, fast=np.multiply),
    *_rows(
        Kind.INPLACE,
        __itruediv__=_e.div, div_=_e.div, pow_=_e.pow,
        clamp_=_e.clamp, clip_=_e.clamp, neg_=_e.neg, abs_=_e.abs, exp_=_e.exp,
        log_=_e.log, sqrt_=_e.sqrt, tanh_=_e.tanh, sigmoid_=_e.sigmoid,
        asin_=_e.asin, acos_=_e.acos, atan_=_e.atan, atan2_=_e.atan2, arcsin_=_e.asin,
        arccos_=_e.acos, arctan_=_e.atan, arctan2_=_e.atan2,
        relu_=_e.relu, lerp_=_e.lerp, addcmul_=_e.addcmul, addcdiv_=_e.addcdiv,
        tril_=_cf.tril, triu_=_cf.triu, trunc_=_cf.trunc, fix_=_cf.trunc,
        cumsum_=_s.cumsum,
        logical_and_=_e.logical_and, logical_or_=_e.logical_or, logical_xor_=_e.logical_xor,
        logical_not_=_e.logical_not,
        bitwise_and_=_b.bitwise_and, bitwise_or_=_b.bitwise_or, bitwise_xor_=_b.bitwise_xor,
        bitwise_not_=_b.bitwise_not, bitwise_left_shift_=_b.bitwise_left_shift,
        bitwise_right_shift_=_b.bitwise_right_shift,
        __iand__=_b.bitwise_and, __ior__=_b.bitwise_or, __ixor__=_b.bitwise_xor,
        __ilshift__=_b.bitwise_left_shift, __irshift__=_b.bitwise_right_shift,
    ),
    *_rows(
        Kind.OVERWRITE,
        zero_=_zero, fill_=_fill, copy_=_copy, uniform_=_uniform, normal_=_normal,
        bernoulli_=_bernoulli_fill,
    ),
    Method("T", _m.T, Kind.PROPERTY, doc="All dims reversed (matrix transpose for 2-d)."),
    Method("mT", _m.mT, Kind.PROPERTY, doc="The last two dims swapped."),
)


def install() -> None:
    """Attach every row of :data:`METHODS` to :class:`Tensor` and bind the tensor core's
    upward calls. ``dyngrad/__init__`` runs it once, after importing every layer.

    >>> install()   # (idempotent: the same attributes again)
    """
    for m in METHODS:
        setattr(Tensor, m.name, m.build())
    UPWARD.backward = autograd.backward
    UPWARD.tensor_repr = printing.tensor_repr
    UPWARD.cast = _e.cast
    UPWARD.view_scatter = _i.view_scatter
    UPWARD.replay_view = _i.replay_view
    UPWARD.grad = autograd.grad
    UPWARD.jvp = forward_ad.jvp


__all__ = ["METHODS", "Method", "Kind", "install"]
