"""Variants kept across processes (compiler/variantcache.py), attacked: programs whose one
change between processes a kept variant must not miss. Each case fills a cache with the
program's ``a`` version, then runs its ``b`` version in a new process over a copy of that
cache and in one with ``DYNGRAD_PLAN_CACHE=0``: the two must agree (to float32 rounding),
and differ from ``a`` (or the test could not fail)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from _variant_programs import check

HEAD = textwrap.dedent("""
    import functools, json, sys
    import dyngrad as dg, dyngrad.nn as nn, compiler
    import dyngrad.nn.functional as F
    from compiler import variantcache
    B = sys.argv[1] == "b"
    dg.manual_seed(0)
""")

TAIL = textwrap.dedent("""
    x = dg.randn(3, 4)
    out = [step(x).item() for _ in range(3)]
""")


def _check(tmp: Path, body: str) -> tuple[dict, dict]:
    return check(tmp, HEAD + textwrap.dedent(body) + TAIL)


def test_a_partial_global_calling_another_function(tmp_path):
    """The capture takes a partial's ``func`` as known with the partial (immutable within a
    process); across processes the object at the same path is another partial."""
    base, got = _check(tmp_path, """
        ACT = functools.partial(F.gelu if B else F.relu)
        lin = nn.Linear(4, 4)

        @compiler.compile
        def step(x):
            return ACT(lin(x)).sum()
    """)
    assert base["stats"]["stored"] >= 1 and got["stats"]["restored"] == 0, got["stats"]


@pytest.mark.parametrize("act", [
    "functools.partial(F.gelu if B else F.relu)",  # (the capture takes its func as fixed)
    "(lambda h: h * 3.0) if B else (lambda h: h * 2.0)",  # (no name to find it by)
], ids=["partial", "lambda"])
def test_a_module_attribute_calling_other_code(tmp_path, act):
    """A module attribute is covered by the module's version; its fingerprint must tell a
    partial of another function, or another lambda, apart — or refuse."""
    base, got = _check(tmp_path, f"""
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 4)
                self.act = {act}

            def forward(self, x):
                return self.act(self.lin(x))

        m = M()

        @compiler.compile
        def step(x):
            return m(x).sum()
    """)
    if "partial" in act:
        assert base["stats"]["stored"] >= 1
    assert got["stats"]["restored"] == 0, got["stats"]


def test_a_numpy_global_with_other_values(tmp_path):
    """``dg.tensor(ARR)`` bakes the array's values into the graph; the capture guards the
    array's identity, which across processes is a path and a signature."""
    base, got = _check(tmp_path, """
        import numpy as np
        ARR = np.arange(1.0, 5.0, dtype=np.float32) * (3.0 if B else 1.0)
        lin = nn.Linear(4, 4)

        @compiler.compile
        def step(x):
            return (lin(x) * dg.tensor(ARR)).sum()
    """)
    assert base["stats"]["stored"] >= 1 and got["stats"]["restored"] == 0, got["stats"]


def test_a_library_function_patched_at_startup(tmp_path):
    """The capture takes the library's modules as frozen (their code is the plan cache's
    key), but a program may replace one of their functions before anything is compiled."""
    base, got = _check(tmp_path, """
        if B:
            F.relu = F.gelu
        lin = nn.Linear(4, 4)

        @compiler.compile
        def step(x):
            return F.relu(lin(x)).sum()
    """)
    assert base["stats"]["stored"] >= 1 and got["stats"]["restored"] == 0, got["stats"]
