"""What the programs run on 2 ranks share: ``@check`` functions run in order on every rank
(each must call the same collectives on every rank, asserting only after them), and each
rank writes ``rank<r>.json`` into the directory ``$MPI_TEST_RESULTS`` (mpiexec would mix
the ranks' lines on its one stdout): per check, "ok" or what failed, plus the figures a
check reports with ``report(name, value)``."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

CHECKS: list = []
FIGURES: dict = {}


def check(fn):
    CHECKS.append(fn)
    return fn


def report(name: str, value) -> None:
    FIGURES[name] = value


def run_checks(rank: int) -> None:
    results = {}
    for fn in CHECKS:
        try:
            fn()
            results[fn.__name__] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            results[fn.__name__] = f"failed: {type(exc).__name__}: {exc}\n" + \
                traceback.format_exc(limit=-3)
    text = json.dumps({"checks": results, "figures": FIGURES})
    where = os.environ.get("MPI_TEST_RESULTS")
    if where:
        (Path(where) / f"rank{rank}.json").write_text(text)
    else:
        print(f"rank {rank}: {text}")
