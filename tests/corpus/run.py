"""Run every corpus program's quick form (runnable or not) and print the status table.

    PYTHONPATH=. python tests/corpus/run.py          # all forms
    PYTHONPATH=. python tests/corpus/run.py nanogpt  # the forms whose name contains "nanogpt"

Columns: dyngrad eager (runs, or the first error); against PyTorch with the original imports
and the same initial weights and data (where torch is installed); compiled against eager.
Use it after a feature lands, then move the forms that now run to RUNNABLE in
tests/test_corpus.py and update STATUS.md.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus_harness as harness  # noqa: E402


def attempt(fn):
    """``(result, None)`` or ``(None, "Type: first line")``."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - any failure is the status being reported
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def status_row(name: str, has_torch: bool) -> list[str]:
    form = harness.FORMS[name]
    t0 = time.perf_counter()
    ours, error = attempt(lambda: harness.run_quick(name, "dyngrad"))
    seconds = time.perf_counter() - t0
    if error:
        return [name, "no", "—", "—", f"{seconds:.2f}", error]
    versus = "torch not installed"
    if has_torch:
        theirs, terr = attempt(lambda: harness.run_quick(name, "torch"))
        versus = f"torch fails: {terr}" if terr else (
            "; ".join(harness.mismatches(form, ours, theirs, against_torch=True)) or "equal")
    compiled = "not applicable"
    if form.compiles:
        got, cerr = attempt(lambda: harness.run_quick(name, "dyngrad", compiled=True))
        compiled = f"fails: {cerr}" if cerr else (
            "; ".join(harness.mismatches(form, got, ours)) or "equal")
    return [name, "yes", versus, compiled, f"{seconds:.2f}", ""]


def main(argv: list[str]) -> int:
    has_torch = importlib.util.find_spec("torch") is not None
    names = [n for n in harness.FORMS if not argv or any(a in n for a in argv)]
    header = ["quick form", "runs", "vs PyTorch", "compiled vs eager", "eager s",
              "first error under dyngrad"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        row = status_row(name, has_torch)
        row[0] = f"`{row[0]}`"
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
