"""The harness of the variant cache's attack tests (tests/test_variant_cache_review*.py): a
program run in new processes — its ``a`` version fills a cache, its ``b`` version runs over
a copy of that cache and in a process with ``DYNGRAD_PLAN_CACHE=0`` — printing ``out`` (its
results) and the variant cache's counters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PRINT = '\nprint(json.dumps({"out": out, "stats": variantcache.stats}))\n'


def run(tmp: Path, program: str, which: str, cache_dir: Path, keep: bool) -> dict:
    """``program`` (which defines ``out``) as version ``which``, over ``cache_dir``, with
    (``keep``) or without the plan and variant caches."""
    prog = tmp / "program.py"
    prog.write_text(program + PRINT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1",
           "DYNGRAD_PLAN_CACHE": "1" if keep else "0", "DYNGRAD_CACHE_DIR": str(cache_dir)}
    p = subprocess.run([sys.executable, str(prog), which], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def check(tmp: Path, program: str) -> tuple[dict, dict]:
    """The ``b`` version over a cache the ``a`` version filled agrees with ``b`` without the
    cache, and differs from ``a`` (or the test could not fail): (``a``'s result, ``b``'s
    over the cache)."""
    base = run(tmp, program, "a", tmp / "cache", True)
    shutil.copytree(tmp / "cache", tmp / "plain")
    got = run(tmp, program, "b", tmp / "cache", True)
    want = run(tmp, program, "b", tmp / "plain", False)
    assert not np.allclose(want["out"], base["out"])  # (the change shows)
    np.testing.assert_allclose(got["out"], want["out"], rtol=2e-6)
    return base, got
