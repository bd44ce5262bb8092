"""Variants kept across processes (compiler/variantcache.py), attacked again: a second
review's cases. As in tests/test_variant_cache_review.py, each case fills a cache with the
program's ``a`` version, then runs its ``b`` version in a new process over a copy of that
cache and with ``DYNGRAD_PLAN_CACHE=0``: the two must agree (to float32 rounding), and
differ from ``a`` (or the test could not fail)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _variant_programs import check

HEAD = textwrap.dedent("""
    import json, sys
    import dyngrad as dg, dyngrad.nn as nn, compiler
    import dyngrad.nn.functional as F
    from compiler import variantcache
    B = sys.argv[1] == "b"
    dg.manual_seed(0)
    m = nn.Linear(4, 4)
    x = dg.randn(3, 4)
""")


def _check(tmp: Path, body: str) -> tuple[dict, dict]:
    return check(tmp, HEAD + textwrap.dedent(body))


# A restored variant's guards are built from the new call's arguments (build_guards reads
# the expected shapes, values and identities from ``flat``): what the traced call's
# arguments were must be compared by the manifest itself.
ARGUMENTS = {
    "a constant number": """
        @compiler.compile
        def f(a, s, k=1.0):
            return (m(a) * s + k).sum()
        out = [f(x, s, k=2.0).item() for s in (1.0, 2.0, 3.0)] if not B else \\
            [f(x, s, k=3).item() for s in (5, 7, 9)]
    """,
    "a string": """
        @compiler.compile
        def f(a, mode):
            return m(a).sum() if mode == "sum" else m(a).mean()
        out = [f(x, "mean" if B else "sum").item() for _ in range(2)]
    """,
    "the same tensor twice, then two": """
        @compiler.compile
        def f(a, b):
            return (m(a) * b).sum()
        y = dg.randn(3, 4) * 2
        out = [f(x, y if B else x).item() for _ in range(2)]
    """,
    "a tensor read only for its shape": """
        @compiler.compile
        def f(a, b):
            return m(a).sum() * b.shape[0]
        y = dg.randn(5 if B else 2, 4)
        out = [f(x, y).item() for _ in range(2)]
    """,
    "a captured tensor passed as the argument": """
        w = dg.ones(4)

        @compiler.compile
        def f(a):
            w.mul_(2.0)  # (eager reads the doubled values through an alias)
            return (a * 1.0).sum()
        arg = w if B else dg.ones(4)
        out = [f(arg).item() for _ in range(2)]
    """,
    "a library function": """
        @compiler.compile
        def f(a, act):
            return act(m(a)).sum()
        out = [f(x, F.gelu if B else F.relu).item() for _ in range(2)]
    """,
}


@pytest.mark.parametrize("case", list(ARGUMENTS))
def test_an_argument_other_than_the_traced_calls(tmp_path, case):
    _check(tmp_path, ARGUMENTS[case])


def test_another_default_dtype(tmp_path):
    """``build_guards`` guards the default dtype it finds when it runs (within a process,
    the trace's): a restored variant's would be the new process's."""
    _check(tmp_path, """
        if B:
            dg.set_default_dtype(dg.float64)

        @compiler.compile
        def f(a):
            return m(a).sum() * 0 + dg.ones(2) / 3

        out = [float(f(x).detach().numpy()[0].astype("float64") * 3 - 1) * 1e8
               for _ in range(2)]
    """)
