"""Shared test settings. The compiled tests compare compiled results with eager ones through
:func:`close_to_eager`: bit for bit on the interpreter; on the LLVM backend
(``DYNGRAD_BACKEND=llvm``, how CI runs the compiled tests a second time) float32 values may
differ by the vector math's few ulps, compounded over the test's steps."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np

import compiler
from compiler.verify import TOLERANCES

# a compiler error while compiling a trace is a bug: raised, not a warning and an eager
# fallback as users get it (tests that check that fallback turn this off)
compiler.api.config.raise_compile_errors = True
compiler.api.config.verify_each_pass = True

# the LLVM backend's disk cache: one fresh directory per test session (not ~/.cache)
os.environ.setdefault("DYNGRAD_CACHE_DIR", tempfile.mkdtemp(prefix="dyngrad-test-cache-"))
# the plan cache (compiler/plancache.py): every plan of the suite is pickled and restored,
# and the variant runs the restored copy — never another test's plan (tests change the
# compiler's settings in ways its keys do not see); tests/test_plan_cache.py tests the cache
# across processes
os.environ.setdefault("DYNGRAD_PLAN_CACHE", "roundtrip")

# tolerances on the LLVM backend: verify= checks one call from identical state within
# compiler.verify.TOLERANCES (float32 vecmath is within 2.4 ulp of the correctly rounded
# result, sums and matmuls add in the kernels' own order); the compiled tests run several
# training steps without resynchronising, and an adaptive optimizer (RMSprop's division by
# the root of a small running mean) amplifies those differences step after step: ten times
# the one-call tolerance.
(LLVM_RTOL, LLVM_ATOL), (LLVM_RTOL64, LLVM_ATOL64) = (
    (10 * r, 10 * a) for r, a in TOLERANCES.values())


def on_llvm() -> bool:
    return compiler.config.backend == "llvm"


def close_to_eager(x: np.ndarray, y: np.ndarray) -> bool:
    """Equal bit for bit (NaNs included) — or, on the LLVM backend, float arrays within the
    tolerances above."""
    if np.array_equal(x, y, equal_nan=True):
        return True
    if not on_llvm() or x.dtype != y.dtype:
        return False
    if x.dtype == np.float32:
        return bool(np.allclose(x, y, rtol=LLVM_RTOL, atol=LLVM_ATOL, equal_nan=True))
    if x.dtype == np.float64:
        return bool(np.allclose(x, y, rtol=LLVM_RTOL64, atol=LLVM_ATOL64, equal_nan=True))
    return False


def close_numbers(a, b) -> bool:
    """Python numbers: equal, or on the LLVM backend within float32 tolerance."""
    if a == b:
        return True
    return on_llvm() and isinstance(a, float) and isinstance(b, float) and \
        abs(a - b) <= LLVM_ATOL + LLVM_RTOL * abs(b)


_REGISTER_BITS = {"x": 128, "y": 256, "z": 512}


def packed_bits(asm: str, mnemonic: str) -> set[int]:
    """The register widths (128, 256, 512) that the packed instruction ``mnemonic``
    ('mulps' also matches its VEX/EVEX form 'vmulps') uses in x86 assembly."""
    bits: set[int] = set()
    for line in asm.splitlines():
        m = re.match(rf"\s*v?{mnemonic}\s+(.*)", line)
        if m:
            bits |= {_REGISTER_BITS[r] for r in re.findall(r"%([xyz])mm\d+", m.group(1))}
    return bits


def pytest_collection_modifyitems(config, items):
    """``--dist loadgroup`` (``make test``): the tests of one ``xdist_group`` go to one
    worker, so a session fixture they share (the quick benchmark run, ~130 s) is made once.
    pytest-xdist 3.8 marks them by suffixing ``item._nodeid``, which pytest 9.2 no longer
    reads (a node's id is ``item._id``): the groups were silently ignored, every worker made
    the fixture. The suffix is set here where pytest reads it (a no-op where xdist's own
    took, and without loadgroup)."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # (a pytest before 9.2: xdist's own suffix works)
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
