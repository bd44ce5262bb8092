"""Which kernel a convolution shape gets: the column path or the direct (staged) one
(``window.py``), by measurement, once per machine — as ``tune.py`` chooses a matmul's.

:func:`choose` answers ``"columns"`` or ``"direct"`` for one direction of one convolution
(``conv``, ``conv_transpose``, ``conv_weight_grad``; the dtype and the geometry of one
sample, and whether the batch has one sample or more — a lone sample runs on the caller's
thread with its GEMMs split across the pool, a batch a part per thread). ``window.py``
asks only where both kernels apply. The rule answers without measuring where it is
plainly right (:func:`rule`); elsewhere :func:`race` times the two kernels ``window.py``
compiled for a slice of the batch (``SAMPLES`` samples, both in one small module),
alternately for about ``BUDGET_S`` seconds and ``ROUNDS`` runs at least; the faster
minimum wins, and a tie within ``TIE_MARGIN`` goes to the direct path (no column buffer).
The timing modules are compiled ahead, on a thread, from the start of the graph's compile
(``window.prepare``).

Decisions are kept for the process and in ``conv-choices.json`` in the compiled-code
cache's directory (``choices.py``; not with ``DYNGRAD_CACHE=0``), under a key naming the
CPU and the kernels' code (digests of ``window.py`` and ``gemm.py``), so a later process
takes the same kernels without measuring (and one that measured while another stored its
decision takes that decision). That matters for results, not only for speed: the two paths
of the forward convolution give the same bits, but those of the input gradient and the
weight gradient add in different orders (see ``window.py``), so where a measurement could
pick either, the stored decision is what keeps a machine's results reproducible. The key
leaves the thread settings out for that reason: a decision measured with two threads
holds for one (the paths' own bits do not depend on the thread count, so neither do the
results), at the price of a path timed for another thread count. A fresh cache directory,
or ``DYNGRAD_CACHE=0``, measures again and may take the other path of a near tie: results
then agree to rounding only. A file that cannot be read or parsed is ignored (and rewritten at the
next decision). A forked child whose threads are off (``threads.py``) decides for itself but
does not write its decisions: its timings are of one thread.

``DYNGRAD_CONV=columns|direct|measure`` (default ``measure``) forces a path where both
apply, for tests and debugging; ``rule`` takes the direct path wherever it applies,
unmeasured (what ``window.py`` did before this choice).

Note (what is measured, and what it costs): a decision costs the compile of both kernels
(~0.1 s a direction on the 2-core Zen 4 machine, LLVM's time; hidden in part by
``window.prepare``) and a few milliseconds of timing — so only shapes where the answer is
not plain are measured. Timed per sample on that machine (the best of 0.1 s of runs, on
two samples and on the whole batch), the direct path took 0.29–0.68 of the column path's
time in every direction with 16 output channels (W7b's stem and first block), 0.37–0.93
with 32 (W7b's strided block, its 1x1 shortcut included: not measured either,
``DIRECT_BELOW``), and 0.28–1.0 for W7a's conv1 (one input channel: 9 window elements);
with 64 channels and 288 window elements (W7a's conv2, 32→64 at 26x26) the column path
was faster — its input gradient and weight gradient by 1.23–1.31x, the forward by
1.04–1.08x (a tie). A slice of two samples ranked every shape's paths as the whole batch
of 32 or 64 did, so the decision holds for every batch size of a shape. W7b's first
compile thus measures nothing; W7a's waits ~0.2 s for its conv2's three timing modules
(on a loaded machine), once per machine and cache directory.

Note (a timing that fails): measuring is an optimisation, and both paths are right, so a
race that raises (its module failing to compile, say) does not fail the compile it serves:
by then the traced call has run the function's effects (an optimizer's step), and raising
would leave them done with the user's call failed. The shape takes the direct path — the
answer before this choice existed — for the process, with a warning; nothing is stored, so
a later process measures again.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

from . import choices, gemm, target, threads

MODES = ("measure", "columns", "direct", "rule")
PATHS = ("columns", "direct")
FILE = "conv-choices.json"
SAMPLES = 2  # samples a measurement times (a batch's slice; one part per thread of two)
BUDGET_S = 0.004  # seconds of timing per shape, after one warm-up run of each kernel
ROUNDS = 5  # timed runs of each kernel at least (a slow shape: more than the budget; a
#            shared machine's pauses fall on some runs, rarely on the best of five)
TIE_MARGIN = 0.05  # the other path must be this much faster to beat the rule's answer
DIRECT_BELOW = 64  # a GEMM side (channels per group, window elements) under which the
#                   direct path is taken unmeasured (see the Note)

_decided: dict[tuple, str] = {}  # (machine key, shape key) -> "columns" | "direct"
_lock = threading.Lock()


def mode() -> str:
    """``DYNGRAD_CONV``, checked."""
    return choices.setting("DYNGRAD_CONV", MODES)


def rule(direction: str, geo) -> str | None:
    """The answer taken without measuring, or None where it is not plain (``geo``: a
    ``window.Geometry``): the direct path when the column path's GEMM has a side below
    ``DIRECT_BELOW`` — a group's output channels, or its window elements (``rows``) —
    where writing and packing the columns costs as much as the products they feed.
    Example: W7b's 16→16 convolutions are ``"direct"``, W7a's 32→64 ``None``."""
    return "direct" if min(geo.og, geo.rows) < DIRECT_BELOW else None


def choose(direction: str, shape: str, plain: str | None, race) -> str:
    """``"columns"`` or ``"direct"`` for one convolution direction (see the module
    docstring): ``shape`` names it (dtype, geometry, one sample or many), ``plain`` is
    :func:`rule`'s answer, and ``race()`` times both kernels, returning ``{path: seconds}``.
    Example: ``choose("conv", "f32 16x16x3x3 ...", None, lambda: {"columns": 1e-4,
    "direct": 2e-4})`` is ``"columns"`` (then stored)."""
    forced = mode()
    if forced in PATHS:
        return forced
    if plain is not None or forced == "rule":
        return plain or "direct"
    key = (machine_key(), f"{direction} {shape}")
    with _lock:
        choice = _decided.get(key)
        if choice is None:
            entry = choices.lookup(FILE, *key)
            choice = entry.get("choice") if entry else None
            if choice not in PATHS:
                try:
                    seconds = race()
                except Exception as exc:  # Note (a timing that fails)
                    choice = "direct"
                    warnings.warn(f"dyngrad: timing the convolution paths of {direction} "
                                  f"{shape} raised {type(exc).__name__}: {exc}; it takes the "
                                  f"direct path (not stored)", RuntimeWarning, stacklevel=2)
                else:
                    entry = choices.lookup(FILE, *key)  # (another process may have stored
                    stored = entry.get("choice") if entry else None  # one meanwhile: the
                    if stored in PATHS:  # first stands, so both take the same kernels)
                        choice = stored
                    else:
                        choice = pick(seconds)
                        if threads.team():  # (a forked child's timings are of one thread)
                            choices.store(FILE, *key, {"choice": choice, **{
                                f"{p}_us": round(seconds[p] * 1e6, 2) for p in PATHS}})
            _decided[key] = choice
    return choice


def wanted(direction: str, shape: str, plain: str | None) -> bool:
    """Whether :func:`choose` would measure this shape now (for ``window.prepare``)."""
    if plain is not None or mode() != "measure":
        return False
    key = (machine_key(), f"{direction} {shape}")
    if key in _decided:
        return False
    entry = choices.lookup(FILE, *key)
    return not entry or entry.get("choice") not in PATHS


def pick(seconds: dict, default: str = "direct") -> str:
    """The faster path of ``seconds`` (``{path: seconds}``); within ``TIE_MARGIN``,
    ``default``. Example: ``pick({"columns": 1.0, "direct": 1.02})`` is ``"direct"``."""
    other = "columns" if default == "direct" else "direct"
    return other if seconds[other] * (1 + TIE_MARGIN) < seconds[default] else default


def race(calls: dict) -> dict:
    """The best seconds per call of each of ``calls`` (``{path: zero-argument function}``),
    run alternately for about ``BUDGET_S`` and at least ``ROUNDS`` times each, after one
    warm-up call each."""
    for f in calls.values():  # warm-up: first touches, the pool's threads waking
        f()
    best = dict.fromkeys(calls, float("inf"))
    start, rounds = time.perf_counter(), 0
    while rounds < ROUNDS or time.perf_counter() - start <= BUDGET_S:
        rounds += 1
        for p, f in calls.items():
            t = time.perf_counter()
            f()
            best[p] = min(best[p], time.perf_counter() - t)
    return best


def machine_key() -> str:
    """The CPU and the kernels' code the timings hold for (not the thread settings: see
    the module docstring)."""
    return (f"{target.current().machine_key()} window "
            f"{choices.digest(Path(__file__).parent / 'window.py')} gemm {gemm.version()} "
            f"cpus={os.cpu_count()}")


def forget(disk: bool = False) -> None:
    """Forget this process's decisions (and, with ``disk``, remove the file)."""
    with _lock:
        _decided.clear()
    if disk:
        choices.remove(FILE)
