"""``einsum`` as a composition: diagonals by masking, sums over letters no one else needs,
and each pair of operands contracted as one batched ``matmul`` between two permutes and
reshapes — so its gradient and its compiled form are those ops'.

Note (what is supported): subscripts are letters, with at most one ``...`` per operand (the
broadcast dims, aligned from the right); the output is explicit (``->``) or implicit (the
letters used once, in alphabetical order, after ``...``). Operands are contracted left to
right. A letter of size 1 broadcasts against the same letter of another size, as in PyTorch.
"""

from __future__ import annotations

import math

from ..dispatch import dispatch
from ..tensor import Tensor
from . import elementwise as _e
from . import movement as _m
from .creation import arange
from .linalg import matmul
from .movement import SUM

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _parse(equation: str, operands: tuple) -> tuple[list, str]:
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(operands):
        raise ValueError("einsum(): more operands were provided than specified in the "
                         "equation" if len(terms) < len(operands) else
                         "einsum(): fewer operands were provided than specified in the "
                         "equation")
    free = [c for c in _LETTERS if c not in eq]
    n_ell = 0
    for term, x in zip(terms, operands):
        if "..." in term:
            n_ell = max(n_ell, x.ndim - (len(term) - 3))
    ell = "".join(free[:n_ell])
    subs = []
    for k, (term, x) in enumerate(zip(terms, operands)):
        if "..." in term:
            head, _, tail = term.partition("...")
            if "." in head + tail:
                raise ValueError("einsum(): found '.' for operand that is not part of any "
                                 "ellipsis")
            n = x.ndim - len(head) - len(tail)
            if n < 0:
                raise RuntimeError(f"einsum(): the number of subscripts in the equation "
                                   f"({len(head) + len(tail)}) is more than the number of "
                                   f"dimensions ({x.ndim}) for operand {k}")
            term = head + ell[n_ell - n:] + tail
        elif len(term) != x.ndim:
            raise RuntimeError(f"einsum(): the number of subscripts in the equation "
                               f"({len(term)}) does not match the number of dimensions "
                               f"({x.ndim}) for operand {k} and no ellipsis was given")
        for c in term:
            if c not in _LETTERS:
                raise RuntimeError(f"einsum(): invalid subscript given at index "
                                   f"{equation.index(c)} in the equation string, subscripts "
                                   f"must be in [a-zA-Z]")
        subs.append(term)
    if arrow:
        out = rhs.replace("...", ell)
        for c in out:
            if c not in "".join(subs):
                raise RuntimeError(f"einsum(): output subscript {c} does not appear in the "
                                   f"equation for any input operand")
            if out.count(c) > 1:
                raise RuntimeError(f"einsum(): output subscript {c} appears more than once "
                                   f"in the output")
    else:
        every = "".join(subs)
        out = ell + "".join(sorted(c for c in set(every) if every.count(c) == 1
                                   and c not in ell))
    return subs, out


def _diagonal(x: Tensor, sub: str) -> tuple[Tensor, str]:
    """Merge repeated letters of one operand (``ii`` → its diagonal ``i``)."""
    while True:
        dup = next((c for c in sub if sub.count(c) > 1), None)
        if dup is None:
            return x, sub
        a = sub.index(dup)
        b = sub.index(dup, a + 1)
        n = x.shape[a]
        if x.shape[b] != n:
            raise RuntimeError(f"einsum(): subscript {dup} is repeated for operand but the "
                               f"sizes don't match, {x.shape[b]} != {n}")
        shape = [1] * x.ndim
        shape[a] = shape[b] = n
        i = _m.reshape(arange(n), tuple(n if k == a else 1 for k in range(x.ndim)))
        j = _m.reshape(arange(n), tuple(n if k == b else 1 for k in range(x.ndim)))
        x = dispatch(SUM, _e.where(_e.eq(i, j), x, 0), axes=(b,), keepdims=False)
        sub = sub[:b] + sub[b + 1:]


def _sum_letters(x: Tensor, sub: str, keep: set) -> tuple[Tensor, str]:
    axes = tuple(k for k, c in enumerate(sub) if c not in keep)
    if not axes:
        return x, sub
    return (dispatch(SUM, x, axes=axes, keepdims=False),
            "".join(c for c in sub if c in keep))


def _sizes(subs: list, xs: list) -> dict:
    size: dict = {}
    for k, (sub, x) in enumerate(zip(subs, xs)):
        for c, s in zip(sub, x.shape):
            seen = size.get(c)
            if seen is None or seen == 1:
                size[c] = s
            elif s != seen and s != 1:
                raise RuntimeError(f"einsum(): subscript {c} has size {s} for operand {k} "
                                   f"which does not broadcast with previously seen size "
                                   f"{seen}")
    return size


def _arrange(x: Tensor, sub: str, order: str, size: dict) -> Tensor:
    """x's dims permuted to ``order`` and broadcast to the letters' sizes."""
    x = _m.permute(x, tuple(sub.index(c) for c in order)) if sub != order else x
    target = tuple(size[c] for c in order)
    return _m.expand(x, target) if x.shape != target else x


def _contract(a, sa, b, sb, keep: set, size: dict):
    """``a`` (letters ``sa``) with ``b``: batch letters in both and kept, contracted letters
    in both and not kept, the rest each side's own; one matmul."""
    batch = "".join(c for c in sa if c in sb and c in keep)
    inner = "".join(c for c in sa if c in sb and c not in keep)
    left = "".join(c for c in sa if c not in sb)
    right = "".join(c for c in sb if c not in sa)
    a = _arrange(a, sa, batch + left + inner, size)
    b = _arrange(b, sb, batch + inner + right, size)
    nb, nl, ni, nr = (math.prod(size[c] for c in s) for s in (batch, left, inner, right))
    y = matmul(_m.reshape(a, (nb, nl, ni)), _m.reshape(b, (nb, ni, nr)))
    letters = batch + left + right
    return _m.reshape(y, tuple(size[c] for c in letters)), letters


def einsum(equation: str, *operands) -> Tensor:
    """Einstein summation (PyTorch's ``einsum``; see the module's note for what is covered).

    >>> dg.einsum("bij,bjk->bik", a, b)   # a batched matmul
    >>> dg.einsum("ii->", m)              # the trace
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands:
        raise ValueError("einsum(): must provide at least one operand")
    subs, out = _parse(equation, operands)
    xs = list(operands)
    for k in range(len(xs)):
        xs[k], subs[k] = _diagonal(xs[k], subs[k])
    size = _sizes(subs, xs)
    for k in range(len(xs)):  # letters only this operand has and the output drops
        others = set(out).union(*(subs[m] for m in range(len(xs)) if m != k))
        xs[k], subs[k] = _sum_letters(xs[k], subs[k], others)
    x, sub = xs[0], subs[0]
    for k in range(1, len(xs)):
        keep = set(out).union(*subs[k + 1:])
        x, sub = _contract(x, sub, xs[k], subs[k], keep, size)
    x, sub = _sum_letters(x, sub, set(out))
    return _arrange(x, sub, out, size)


__all__ = ["einsum"]
