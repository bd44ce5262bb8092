"""Introspection: ``explain`` (variants, guards, baked-in numbers, fallbacks, the IR before
and after passes, the fusion groups, the memory plan, trace and compile times) and ``show``
(the graph as DOT, and PNG)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .api import CompiledFunction, compile, describe_value_guard
from .passes.fusion import format_groups, fuse


@dataclass
class Explanation:
    name: str
    variants: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)
    recompiles: list = field(default_factory=list)
    eager_reason: str | None = None
    order: list = field(default_factory=list)  # variant numbers in the order calls try them
    target: str = ""  # the machine the LLVM backend generates code for (target.py)

    def __str__(self) -> str:
        lines = [f"=== {self.name}: {len(self.variants)} variant(s)"]
        if self.target:
            lines.append(f"native code for: {self.target}")
        if self.eager_reason:
            lines.append(f"runs eagerly: {self.eager_reason}")
        if len(self.order) > 1:
            lines.append("lookup order: variant " + ", ".join(map(str, self.order)) +
                         " (a call tries the most recently used first)")
        for v in self.variants:
            lines.append(f"--- variant {v['number']}: {v['nodes']} nodes after passes "
                         f"({v['nodes_before']} traced), {v['calls']} compiled calls, trace "
                         f"{v['trace_ms']:.1f} ms, passes+guards {v['compile_ms']:.1f} ms")
            lines.append("guards:")
            lines += [f"  {g}" for g in v["guards"]]
            if v["value_guards"]:
                lines.append("value guards (recomputed by the compiled program):")
                lines += [f"  {g}" for g in v["value_guards"]]
            if v["scalars"]:
                lines.append("runtime scalar inputs: " + ", ".join(v["scalars"]))
            if v["baked"]:
                lines.append("numbers in the graph (code constants, or values guarded above):")
                lines += [f"  {b}" for b in v["baked"]]
            lines.append("writes: " + (", ".join(v["writes"]) or "none"))
            if v["backward"]:
                lines.append("backward outside: " + v["backward"])
            for part, groups in v["groups"]:
                lines.append(f"fusion groups{part} ({len(groups)}):")
                lines += [f"  {line}" for line in format_groups(groups).splitlines()]
            lines += [f"memory{part}: {text}" for part, text in v["memory"]]
            lines += [f"backend{part}: {text}" for part, text in v["backend"]]
            lines.append("IR before passes:")
            lines.append(v["ir_before"])
            lines.append("IR after passes:")
            lines.append(v["ir_after"])
        if self.recompiles:
            lines.append("recompiles:")
            lines += [f"  {r}" for r in self.recompiles]
        if self.fallbacks:
            lines.append("eager fallbacks:")
            lines += [f"  {r}" for r in self.fallbacks]
        loops = [r for r in self.recompiles if "value guard" in r or "value of" in r]
        if len(loops) > 1:
            lines.append("note: value guards (data-dependent control flow, such as a loop's "
                         "trip count) are creating variants")
        return "\n".join(lines)


def explain(fn, *args, **kwargs) -> Explanation:
    """Describe a compiled function; with arguments, call it first (compiling it if ``fn`` is
    a plain function). Prints and returns the report."""
    cf = fn if isinstance(fn, CompiledFunction) else compile(fn)
    if args or kwargs:
        cf(*args, **kwargs)
    ex = Explanation(cf.__name__, fallbacks=list(cf.fallbacks), recompiles=cf.recompiles,
                     eager_reason=cf.eager_reason, order=[v.number for v in cf.variants])
    if cf.backend == "llvm":
        from .backends.llvm import target
        ex.target = target.current().describe()
    for v in sorted(cf.variants, key=lambda v: v.number):  # numbered in trace order
        tr = v.trace
        g = tr.graph
        ex.variants.append({
            "number": v.number, "nodes": len(g.nodes),
            "nodes_before": v.graph_before.count(" = "),
            "calls": v.calls, "trace_ms": 1e3 * v.trace_seconds,
            "compile_ms": 1e3 * v.compile_seconds,
            "guards": [v.guards.text(i) for i in range(len(v.guards.describe))],
            "value_guards": [describe_value_guard(gd) for gd in g.guards],
            "scalars": [s.value.name for s in tr.scalar_sources],
            "baked": _counted(f"{w} = {val!r}" for w, val in tr.baked),
            "writes": [b.name + (" (in place)" if done else "") for b, _, done in tr.writebacks] +
                      [f"{b.name}.grad" for b, _ in tr.grad_effects],
            "ir_before": v.graph_before, "ir_after": v.graph_after,
            "groups": _fusion_groups(v),
            "memory": _memory_plans(v),
            "backend": _backend_plans(v),
            "backward": _backward_outside(v),
        })
    print(ex)
    return ex


def _backward_outside(v) -> str:
    """How a variant whose result is differentiated after the call serves ``backward()``."""
    if v.backward is None:
        return ""
    parts = v.backward.parts
    if parts.precomputed:
        return ("the forward computes the gradients too (one scalar loss, cotangent 1); "
                "backward() hands them over, or scales them by another cotangent")
    by_reference = sum(i is not None for i in parts.saved_inputs)
    return (f"the forward saves {len(parts.saved_inputs)} value(s) for it ({by_reference} of "
            f"them inputs, kept by reference)")


def _counted(lines) -> list[str]:
    """Identical lines once each, in the order of first appearance, with their count:
    ``mul literal = 2 (×23)``."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return [line if n == 1 else f"{line} (×{n})" for line, n in counts.items()]


def _parts(v) -> list:
    """(label, executable) of the variant's graph, and of its backward part if it has one
    (for a symbolic variant: those of the size it was traced at)."""
    at = ""
    if v.sym is not None:
        i, k = v.sym.base
        at = f" (at size {v.arg_meta[i][0][k]})"
    parts = [(at, v.plan)]
    if v.backward is not None:
        parts.append((f" (backward){at}", v.backward.plan))
    return parts


def _fusion_groups(v) -> list:
    """(label, groups) of the fusion groups each part's executable runs (none on the
    interpreter, which runs node by node)."""
    return [(label, plan.groups) for label, plan in _parts(v) if plan.groups is not None]


def _memory_plans(v) -> list:
    """(label, text): the arena plan each part's executable runs with, or what it does
    instead."""
    return [(label, plan.memory.summary() if plan.memory is not None else
             "no arena: numpy allocates each value, as eager does") for label, plan in _parts(v)]


def _by_plan(plans: dict, part: int) -> str:
    """'sizes 5, 9: <how the plan runs>; size 300: ...' — the sizes grouped by what their
    executables (``plans[d][part]``) say of themselves."""
    groups: dict[str, list] = {}
    for d, p in sorted(plans.items()):
        groups.setdefault(p[part].describe(), []).append(d)
    return "; ".join(f"size{'s' if len(ds) > 1 else ''} {', '.join(map(str, ds))}: {what}"
                     for what, ds in groups.items())


def _backend_plans(v) -> list:
    """(label, text): how each part runs, as its executable describes itself — the
    interpreter, one native driver call, or which groups stay in numpy and why; for a
    symbolic variant, per size."""
    from .backends import get
    numpy = get(v.backend_name).compile_at_size is not None  # (the interpreter)
    out = []
    for (label, plan), backward in zip(_parts(v), (False, True)):
        label = " (backward)" if backward else ""
        if v.sym is None:
            out.append((label, plan.describe()))
        elif numpy:
            out.append((label, f"{plan.describe()} (symbolic sizes: plans per size)"))
        elif backward:  # the backward part: planned per size at backward()
            made = {d: (p[1],) for d, p in v.plans.items()
                    if p[1] is not None and p[1].plan is not None}
            out.append((label, f"planned per symbolic size at the first backward() — "
                               f"{_by_plan(made, 0) or 'none yet'}"))
        else:  # a native plan per size met so far (maybe one module)
            text = f"planned per symbolic size — {_by_plan(v.plans, 0) or 'none yet'}"
            fam = v.family
            if fam is not None and (fam.shared or fam.own):
                text += (f"\n  native code: {fam.shared} size(s) ran from "
                         f"{fam.templates} module(s), one per form of the code, the sizes "
                         f"read at run time; {fam.own} size(s) compiled on their own")
            out.append((label, text))
    return out


def show(fn, path, variant: int = 0) -> Path:
    """Write ``fn.variants[variant]`` (in lookup order: 0 is the most recently used) of a
    compiled function as DOT to ``path`` (and a PNG beside it when graphviz's ``dot`` or
    matplotlib is available), each fusion group (kernel) in a colour of its own. Returns the
    DOT path."""
    import shutil
    import subprocess
    cf = fn if isinstance(fn, CompiledFunction) else None
    if cf is None or not cf.variants:
        raise ValueError("show: the function has no compiled variant yet; call it first")
    v = cf.variants[variant]
    g = v.trace.graph
    groups = v.groups if v.groups is not None else fuse(g)  # (the interpreter runs none:
    #                                                          the groups LLVM would run)
    path = Path(path).with_suffix(".dot")
    path.write_text(ir.to_dot(g, cf.__name__, groups))  # a cluster per kernel
    png = path.with_suffix(".png")
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tpng", str(path), "-o", str(png)], check=False)
    else:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import networkx as nx
            G = ir.to_networkx(g)
            for n in G.nodes:
                G.nodes[n]["layer"] = 0
            for n in nx.topological_sort(G):
                for s in G.successors(n):
                    G.nodes[s]["layer"] = max(G.nodes[s]["layer"], G.nodes[n]["layer"] + 1)
            pos = nx.multipartite_layout(G, subset_key="layer", align="horizontal")
            pos = {k: (x, -y) for k, (x, y) in pos.items()}
            kernel = {g.nodes[i].out.id: k for k, grp in enumerate(groups) for i in grp.nodes}
            palette = plt.get_cmap("tab20")
            colors = [palette(kernel[n] % 20) if n in kernel else
                      ir._COLORS.get(G.nodes[n].get("kind"), "white") for n in G.nodes]
            fig, ax = plt.subplots(figsize=(12, max(4, 0.35 * len(G))))
            nx.draw_networkx(G, pos, ax=ax, node_color=colors, node_shape="s", font_size=6,
                             labels={n: G.nodes[n].get("label", n) for n in G.nodes},
                             node_size=300, arrowsize=6)
            ax.set_axis_off()
            fig.tight_layout()
            fig.savefig(png, dpi=100)
            plt.close(fig)
        except ImportError:
            pass
    return path
