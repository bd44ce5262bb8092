"""Draw the figures of docs/compiler.md: the compiler's pipeline, and what ``compiler.show``
makes of a small compiled function.

    python docs/draw_pipeline.py [--out DIR]

Writes ``pipeline.png`` (drawn here with matplotlib: boxes are stages, each named after the
module that implements it) and ``fused_graph.png`` (``compiler.show`` of the softmax example
in docs/compiler.md: its nodes coloured by fusion group, i.e. by kernel) into DIR, by default
this script's directory. Needs matplotlib and networkx (``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (x, y, width, height, title, lines, module, colour); y is the box's top edge
COMPILE = "#e8eaf6"  # compile time: once per variant
RUN = "#e8f4ea"  # every call
EAGER = "#fdebd0"  # the eager way out
L, M, R, W = 0.3, 4.95, 9.6, 4.1  # the three columns and their width
BOXES = {
    "call": (M, 12.0, W, 0.9, "fn(*args)", ["a call of the compiled function"], "api.py", RUN),
    "guards": (M, 10.5, W, 1.2, "input guards",
               ["per variant, one generated function:", "shapes, dtypes, identities, versions,",
                "grad mode, Python numbers (~1 µs)"], "guards.py", RUN),
    "run": (R, 10.5, W, 1.2, "run the variant's executable",
            ["LLVM: one native driver call, value", "guards checked inside; interp: numpy"],
            "backends/", RUN),
    "commit": (R, 8.8, W, 1.0, "commit, then return",
               ["write-backs into bound tensors,", ".grad effects; fresh outputs"],
               "api.py", RUN),
    "trace": (L, 10.5, W, 1.2, "trace: run the call eagerly",
              ["a dispatch mode records every op:", "forward, backward(), optimizer step"],
              "trace.py", COMPILE),
    "graph": (L, 8.8, W, 1.1, "frozen Trace → joint graph",
              ["Nodes over Values, one op table; a", "backward after the call joined on"],
              "trace.py, ir.py", COMPILE),
    "passes": (L, 7.3, W, 1.1, "lower: the passes",
               ["fold → cse → dce → schedule_guards,", "each verified (no reassociation)"],
               "pipeline.py, passes/", COMPILE),
    "split": (L, 5.8, W, 1.1, "lower: the split",
              ["forward / backward, for a backward()", "after the call: saved values, remat"],
              "partition.py", COMPILE),
    "fuse": (L, 4.3, W, 1.1, "compile_trace",
             ["input guards; write-backs done in", "place; each part to the backend"],
             "pipeline.py, guards.py", COMPILE),
    "backend": (M, 4.3, W, 1.1, "backend.compile(graph)",
                ["a graph in, an Executable out: run,", "describe(), its groups and memory"],
                "backends/base.py", COMPILE),
    "variant": (R, 4.3, W, 1.1, "new variant cached",
                ["guards + executables; up to", "cache_limit (8) per function"], "api.py",
                COMPILE),
    "interp": (L, 2.4, W, 1.2, "interp",
               ["each node's own numpy impl, in", "eager's order: eager's bits (the oracle)"],
               "backends/interp.py", COMPILE),
    "llvm": (M, 2.4, W, 1.2, "llvm (the default)",
             ["fusion, memory plan, a kernel per group;", "symbolic sizes as run-time numbers"],
             "backends/llvm/", COMPILE),
    "cache": (R, 2.4, W, 1.2, "JIT + disk cache",
              ["llvmlite MCJIT; object code kept", "in ~/.cache/dyngrad for next time"],
              "llvm/jit.py, cache.py", COMPILE),
    "driver": (M, 0.8, 2.0, 1.0, "driver", ["all groups native:", "one call, one arena"],
               "llvm/driver.py", COMPILE),
    "hybrid": (M + 2.1, 0.8, 2.0, 1.0, "hybrid", ["native kernels", "and numpy steps"],
               "llvm/runner.py", COMPILE),
    "eager": (M, 7.3, W, 1.0, "run eagerly",
              ["the function as written: eager's", "result; the reason is recorded"],
              "api.py", EAGER),
}
# (from, to, label): a straight arrow between the facing edges of two boxes
ARROWS = [
    ("call", "guards", ""), ("guards", "run", "hit"), ("run", "commit", ""),
    ("guards", "trace", "miss"), ("trace", "graph", ""), ("graph", "passes", ""),
    ("passes", "split", ""), ("split", "fuse", ""), ("fuse", "backend", ""),
    ("backend", "variant", ""), ("backend", "interp", ""), ("backend", "llvm", ""),
    ("llvm", "cache", ""), ("llvm", "driver", ""), ("llvm", "hybrid", ""),
]
# dashed: a value guard's miss (back to the guards of the next variant, nothing
# written yet) and the ways out to eager: (start, end, label, label position)
TO_EAGER = [
    ((R, 9.55), (M + W, 9.55), "", None),
    ((L + W, 9.6), (M, 6.8), "cannot be traced:\n.numpy(), print,\nhooks…", (M + 0.12, 8.5)),
    ((R + 0.5, 4.3), (M + W - 0.4, 6.3), "cache_limit reached", (M + 3.5, 5.2)),
]


def _anchor(box, side: str) -> tuple:
    x, y, w, h = box[:4]
    return {"top": (x + w / 2, y), "bottom": (x + w / 2, y - h), "left": (x, y - h / 2),
            "right": (x + w, y - h / 2)}[side]


def _sides(a, b) -> tuple:
    """The facing edges of boxes ``a`` and ``b``."""
    ax, ay, aw, ah = a[:4]
    bx, by, bw, bh = b[:4]
    if ay - ah >= by:  # a above b
        return "bottom", "top"
    if by - bh >= ay:
        return "top", "bottom"
    return ("right", "left") if ax < bx else ("left", "right")


def draw_pipeline(path: Path) -> None:
    """The figure at the top of docs/compiler.md."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    fig, ax = plt.subplots(figsize=(14, 12.9))
    ax.set_xlim(0, 14)
    ax.set_ylim(-0.4, 12.5)
    ax.set_axis_off()
    for x, y, w, h, title, lines, module, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y - h), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=colour, edgecolor="#555555", lw=1))
        ax.text(x + 0.12, y - 0.1, title, ha="left", va="top", fontsize=11.5, weight="bold")
        ax.text(x + w - 0.1, y - 0.12, module, ha="right", va="top", fontsize=8,
                family="monospace", color="#555555")
        ax.text(x + 0.12, y - 0.42, "\n".join(lines), ha="left", va="top", fontsize=9,
                linespacing=1.3)
    for a, b, label in ARROWS:
        A, B = BOXES[a], BOXES[b]
        sa, sb = _sides(A, B)
        p, q = _anchor(A, sa), _anchor(B, sb)
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="-|>", color="#333333",
                                                        lw=1.2, shrinkA=2, shrinkB=2))
        if label:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + 0.1, label, ha="center",
                    va="bottom", fontsize=8.5, style="italic", color="#333333")
    for p, q, label, at in TO_EAGER:
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="-|>", color="#b35900",
                                                        lw=1.1, ls="--", shrinkA=2, shrinkB=2))
        if label:
            ax.text(*at, label, fontsize=8.5, style="italic", color="#b35900", ha="left",
                    va="center")
    ax.text(M + 2.2, 8.5, "value guard failed:\nnothing written yet;\nnext variant, or miss",
            fontsize=8.5, style="italic", color="#b35900", ha="left", va="center")
    ax.legend(handles=[Patch(facecolor=RUN, edgecolor="#555555", label="every call"),
                       Patch(facecolor=COMPILE, edgecolor="#555555",
                             label="once per variant (the first call, a guard miss)"),
                       Patch(facecolor=EAGER, edgecolor="#555555", label="the eager way out")],
              loc="lower right", fontsize=9.5, frameon=False)
    ax.set_title("dyngrad's compiler: compiler.compile(fn)", fontsize=14, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def draw_fused_graph(path: Path) -> None:
    """``compiler.show`` of the softmax step traced in docs/compiler.md."""
    sys.path.insert(0, str(ROOT))
    import compiler
    import dyngrad as dg
    import dyngrad.nn.functional as F

    dg.manual_seed(0)
    w = dg.randn(4, 3, requires_grad=True)

    @compiler.compile(backend="interp")  # the graph and its groups do not depend on it
    def step(x):
        w.grad = None
        loss = F.softmax(x @ w, 1).pow(2).sum()
        loss.backward()
        return loss

    step(dg.randn(8, 4))
    with tempfile.TemporaryDirectory() as tmp:
        dot = compiler.show(step, Path(tmp) / "fused_graph.dot")
        png = dot.with_suffix(".png")
        if not png.exists():
            raise RuntimeError("compiler.show wrote no PNG (needs graphviz or matplotlib)")
        shutil.copyfile(png, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="directory for the PNGs (default: docs/)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg")
    draw_pipeline(args.out / "pipeline.png")
    draw_fused_graph(args.out / "fused_graph.png")
    print(f"wrote {args.out / 'pipeline.png'} and {args.out / 'fused_graph.png'}")


if __name__ == "__main__":
    main()
