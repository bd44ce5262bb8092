"""Variants kept across processes (compiler/variantcache.py), attacked: programs whose one
change between processes a kept variant must not miss. Each case fills a cache with the
program's ``a`` version, then runs its ``b`` version in a new process over a copy of that
cache and in one with ``DYNGRAD_PLAN_CACHE=0``: the two must agree (to float32 rounding),
and differ from ``a`` (or the test could not fail)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.xdist_group("variant_cache")

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
    print(json.dumps({"out": out, "stats": variantcache.stats}))
""")


def _run(tmp: Path, body: str, which: str, cache_dir: Path, keep: bool) -> dict:
    prog = tmp / "program.py"
    prog.write_text(HEAD + textwrap.dedent(body) + TAIL)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
           "DYNGRAD_PLAN_CACHE": "1" if keep else "0", "DYNGRAD_CACHE_DIR": str(cache_dir)}
    p = subprocess.run([sys.executable, str(prog), which], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _check(tmp: Path, body: str) -> tuple[dict, dict]:
    """The ``b`` program over a cache ``a`` filled agrees with ``b`` without the cache:
    (``a``'s result, ``b``'s over the cache)."""
    base = _run(tmp, body, "a", tmp / "cache", True)
    shutil.copytree(tmp / "cache", tmp / "plain")
    got = _run(tmp, body, "b", tmp / "cache", True)
    want = _run(tmp, body, "b", tmp / "plain", False)
    assert not np.allclose(want["out"], base["out"])  # (the change shows)
    np.testing.assert_allclose(got["out"], want["out"], rtol=2e-6)
    return base, got


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
