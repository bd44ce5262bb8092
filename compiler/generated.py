"""Code the compiler generates (guard functions, call paths, drivers, source readers).

It is compiled under one file name, so the capture's watchdog knows it for the library's own
code when it runs during a trace (a compiled function called inside another's trace checks
its guards natively).
"""

from __future__ import annotations

FILENAME = "<dyngrad generated>"


def exec_generated(source: str, ns: dict) -> None:
    """``exec`` generated ``source`` in ``ns``."""
    exec(compile(source, FILENAME, "exec"), ns)  # noqa: S102 - generated, no user text


def eval_generated(source: str, ns: dict):
    """``eval`` a generated expression in ``ns``."""
    return eval(compile(source, FILENAME, "eval"), ns)  # noqa: S307 - generated, no user text
