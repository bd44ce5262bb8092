"""Comparisons shared by the compiled-versus-eager tests (``test_compiler.py``, the footgun
corpora ``test_footguns_*.py``, ``test_random_sources.py``): compiled results against eager ones,
within :func:`conftest.close_to_eager` (bit for bit on the interpreter)."""

from __future__ import annotations

import numpy as np
from conftest import close_numbers, close_to_eager

import dyngrad as dg


def assert_same(a, b, what="value"):
    """``a`` (eager) and ``b`` (compiled) hold the same values: tensors of the same dtype and
    shape and close values, nested tuples/lists/dicts of them, or Python numbers/None."""
    if isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b), f"{what}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{i}]")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{what}: {a!r} vs {b!r}"
        for k in a:
            assert_same(a[k], b[k], f"{what}[{k!r}]")
    elif isinstance(a, dg.Tensor):
        assert isinstance(b, dg.Tensor), f"{what}: tensor vs {type(b).__name__}"
        x, y = a._data, b._data
        assert x.dtype == y.dtype and x.shape == y.shape, \
            f"{what}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        assert close_to_eager(np.asarray(x), np.asarray(y)), f"{what}: {x} vs {y}"
    elif a is None or b is None:
        assert a is None and b is None, f"{what}: {a!r} vs {b!r}"
    elif isinstance(a, float) and a != a:  # NaN: NaN of the same type
        assert type(b) is type(a) and b != b, f"{what}: {a!r} vs {b!r}"
    else:
        assert type(a) is type(b), f"{what}: {type(a).__name__} vs {type(b).__name__}"
        assert close_numbers(a, b), f"{what}: {a!r} vs {b!r}"


def assert_same_model(m1, m2, what="model"):
    """Every parameter and its ``.grad`` of two modules agree."""
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters(), strict=True):
        assert_same(p, q, f"{what}.{n}")
        assert_same(p.grad, q.grad, f"{what}.{n}.grad")


def compiled_calls(cf) -> int:
    """Calls a compiled function served from a variant (not traced, not eager)."""
    return sum(v.calls for v in cf.variants)


def t(*values, dtype=None):
    return dg.tensor(list(values), dtype=dtype)
