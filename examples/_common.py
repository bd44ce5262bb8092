"""What the examples share: a progress bar, a short form of ``compiler.explain``, and
matplotlib (the ``examples`` extra) opened and figures saved.

The scripts run as ``python examples/<name>.py``, so this directory is on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import io

import compiler

LONG = ("baked in", "fusion groups", "IR before passes", "IR after passes")
HEADERS = LONG + ("===", "---", "lookup order", "guards:", "value guards", "runtime scalar",
                  "writes:", "backward outside", "memory", "backend", "recompiles:",
                  "eager fallbacks:", "note:")


def pyplot(say=print):
    """``matplotlib.pyplot`` on the Agg backend, or None (said) when matplotlib is absent."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("(matplotlib not installed: no figure; `pip install matplotlib`)")
        return None
    return plt


def save(fig, path, what: str = "plot", dpi: int = 110, say=print) -> None:
    """Write ``fig`` to ``path`` (its directory made), close it, say where."""
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    say(f"{what} written to {path}")


def progress(iterable, total: int, unit: str):
    """A tqdm bar over ``iterable`` (the ``examples`` extra), or the iterable itself."""
    try:
        from tqdm import tqdm
        return tqdm(iterable, total=total, ncols=88, unit=unit)
    except ImportError:
        return iterable


def explain_text(cf, full: bool = False, guards_shown: tuple | None = None) -> str:
    """``compiler.explain(cf)``'s report; unless ``full``, with the long sections (the IR,
    the fusion groups, the baked literals) reduced to their line counts — and, with
    ``guards_shown`` (line prefixes), of the input guards only those lines, the rest
    counted."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compiler.explain(cf)
    if full:
        return buf.getvalue()
    long = LONG + (("guards:",) if guards_shown is not None else ())
    out, skipped, eliding, section = [], 0, False, ""
    for line in buf.getvalue().splitlines() + ["==="]:
        if line.startswith(HEADERS):
            if skipped:
                more = "more " if section == "guards:" else ""
                out.append(f"  … {skipped} {more}lines (--explain-full prints them)")
            skipped, section = 0, line
            out.append(line)
            eliding = line.startswith(long)
        elif eliding and not (section == "guards:" and line.startswith(guards_shown or ())):
            skipped += 1
        else:
            out.append(line)
    return "\n".join(out[:-1])
