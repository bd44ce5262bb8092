"""The exercises of d2l.ai §2.5 (automatic differentiation) that the seed notes left unsolved,
worked with dyngrad for f(x) = log(x²)·sin(x) + 1/x.

    python examples/d2l_autograd_exercises.py [--out DIR] [--dot PATH] [--quick]

(a) The dependency (computation) graph of f. A ``DispatchMode`` records every primitive
    dyngrad runs — which tensors each call consumed and produced — during the forward pass
    and during ``backward()``. The records become a networkx DiGraph, written as DOT text
    (``d2l_f_graph.dot``; render it with ``dot -Tpng`` if graphviz is at hand) and drawn
    with matplotlib in topological layers (``d2l_f_graph.png``). The backward half shows
    that reverse mode is just more graph: the chain rule applied to the recorded ops.
(b) df/dx by forward accumulation (``dg.func.jvp`` and ``dyngrad.forward_ad.jvp``) and by
    reverse accumulation (``backward``), both checked against the closed form
    f'(x) = 2 sin(x)/x + log(x²) cos(x) − 1/x² at 2,000 points.
(c) The second derivative by ``dg.func.grad`` of ``dg.func.grad`` and by ``dg.func.hessian``,
    checked against f''(x) = 4 cos(x)/x − 2 sin(x)/x² − log(x²) sin(x) + 2/x³.
(d) sin(x) and its autodiff derivative over [−2π, 2π] (``backward`` on a vector x with
    ``gradient=ones``, and with ``.sum()``) beside cos(x) (``d2l_derivatives.png``, which also
    plots f, f' and f'' from (b) and (c)).
(e) When each mode is cheaper: ``dg.func.jacfwd`` versus ``dg.func.jacrev`` on
    y = tanh(W x), W of shape m×n, over n, m ∈ {1, 4, 16, 64}: a table, the conclusion and
    a plot of time against n and against m (``d2l_modes.png``).

Every claim is asserted. Figures go next to this script unless --out says otherwise. Takes
about ten seconds (``--quick``: fewer timing repeats).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

# Tiny matmuls: waking BLAS worker threads costs more than the work they take over (and on a
# busy 2-core machine they contend with other processes: 10x slower steps were measured), so
# use one thread unless the environment says otherwise. Must precede numpy's import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pyplot, save  # noqa: E402

import dyngrad as dg  # noqa: E402
from dyngrad import forward_ad  # noqa: E402
from dyngrad.dispatch import DispatchMode, dispatch, push_mode, suspend  # noqa: E402


def f(x):
    """f(x) = log(x²)·sin(x) + 1/x, elementwise."""
    return (x ** 2).log() * x.sin() + 1 / x


def df_closed(x: np.ndarray) -> np.ndarray:
    return 2 * np.sin(x) / x + np.log(x ** 2) * np.cos(x) - 1 / x ** 2


def d2f_closed(x: np.ndarray) -> np.ndarray:
    return (4 * np.cos(x) / x - 2 * np.sin(x) / x ** 2 - np.log(x ** 2) * np.sin(x)
            + 2 / x ** 3)


def progress(iterable, desc: str, total: int | None = None):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, ncols=80)


def heading(title: str) -> None:
    print(f"\n{title}\n" + "─" * len(title))


def max_rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


# ------------------------------------------------------------------------------ (a) graph


class OpRecorder(DispatchMode):
    """Records each primitive call: its name, its arguments (tensors or literal numbers),
    its parameters and its output, tagged with the current ``phase``.

    Note: the records hold references to the tensors, so ``id()`` stays a valid name for
    each value while the recorder lives."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.phase = "forward"

    def dispatch(self, prim, args, params):
        with suspend(self):
            out = dispatch(prim, *args, **params)
        self.calls.append((self.phase, prim.name, args, params, out))
        return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def build_graph(x0: float = 1.5):
    """Record f at x0 (forward) and its backward; return the DiGraph and x.grad.

    Nodes are values: the input x, and the output of every recorded call (labelled with the
    op, its literal arguments and the value). Edges point from a value to the values computed
    from it; a dashed 'seed' edge links f to the backward's initial gradient df/df = 1."""
    import networkx as nx

    x = dg.tensor(x0, dtype=dg.float64, requires_grad=True)
    rec = OpRecorder()
    with push_mode(rec):
        y = f(x)
        rec.phase = "backward"
        y.backward()
    g = nx.DiGraph()
    names = {id(x): "x"}
    g.add_node("x", label=f"x\n{x0:g}", phase="input")
    counters = {"forward": 0, "backward": 0}
    for phase, op, args, params, out in rec.calls:
        counters[phase] += 1
        name = f"{'v' if phase == 'forward' else 'g'}{counters[phase]}"
        srcs, shown = [], []
        for a in args:
            if isinstance(a, dg.Tensor):
                src = names.get(id(a))
                if src is None:  # a tensor made outside the recorded calls
                    src = names[id(a)] = f"t{len(names)}"
                    g.add_node(src, label=f"{src}\n{a.item():.4g}", phase="input")
                srcs.append(src)
                shown.append(src)
            else:
                shown.append(_fmt(a))
        if op == "full":
            shown = [_fmt(params["value"])]
        names[id(out)] = name
        g.add_node(name, label=f"{name} = {op}({', '.join(shown)})\n{out.item():.4g}",
                   phase=phase, op=op)
        for src in srcs:
            g.add_edge(src, name, kind="data")
        if phase == "backward" and op == "full":
            g.add_edge(names[id(y)], name, kind="seed")
    f_name, grad_name = names[id(y)], names.get(id(x.grad))
    g.nodes[f_name]["label"] = g.nodes[f_name]["label"].replace(f"{f_name} =", "f =")
    if grad_name is not None:
        g.nodes[grad_name]["label"] = g.nodes[grad_name]["label"].replace(
            f"{grad_name} =", "x.grad =")
    # Longest-path layers, with every backward value placed after f: the backward pass
    # starts from the seed df/df = 1, even for values (cos x, 2x) that do not depend on it.
    order = list(nx.topological_sort(g))
    for backward in (False, True):   # forward values first: they fix f's layer
        for n in order:
            d = g.nodes[n]
            if (d["phase"] == "backward") != backward:
                continue
            d["layer"] = max((g.nodes[p]["layer"] + 1 for p in g.predecessors(n)), default=0)
            if backward:
                d["layer"] = max(d["layer"], g.nodes[f_name]["layer"] + 1)
    return g, x.grad.item(), counters


def to_dot(g) -> str:
    """The graph as graphviz DOT text, forward and backward in two clusters."""
    style = {"input": 'shape=ellipse, style=filled, fillcolor="#d9e8f5"',
             "forward": 'shape=box, style="rounded,filled", fillcolor="#cfe3cf"',
             "backward": 'shape=box, style="rounded,filled", fillcolor="#f7d9bf"'}
    lines = ["digraph f {", "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
             '  label="f(x) = log(x²)·sin(x) + 1/x: forward ops (green) and the backward '
             'ops dyngrad ran for it (orange)";']
    for cluster in ("forward", "backward"):
        lines.append(f"  subgraph cluster_{cluster} {{")
        lines.append(f'    label="{cluster}";')
        for n, d in g.nodes(data=True):
            in_cluster = d["phase"] == cluster or (cluster == "forward" and
                                                   d["phase"] == "input")
            if in_cluster:
                label = d["label"].replace("\n", "\\n").replace('"', '\\"')
                lines.append(f'    {n} [label="{label}", {style[d["phase"]]}];')
        lines.append("  }")
    for a, b, d in g.edges(data=True):
        extra = ' [style=dashed, label="df/df = 1"]' if d["kind"] == "seed" else ""
        lines.append(f"  {a} -> {b}{extra};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def layered_positions(g) -> dict:
    """x = the node's layer; y = its rank within the layer, ordered by the barycentre of its
    neighbours in the previous (then the next) layer to reduce edge crossings — a small
    Sugiyama-style layout."""
    layers: dict[int, list] = {}
    for n in g:
        layers.setdefault(g.nodes[n]["layer"], []).append(n)
    keys = sorted(layers)
    rank = {n: i for k in keys for i, n in enumerate(layers[k])}

    def centred(k):
        return {n: i - (len(layers[k]) - 1) / 2 for i, n in enumerate(layers[k])}

    for _ in range(4):
        for seq, nbrs in ((keys[1:], g.predecessors), (keys[-2::-1], g.successors)):
            for k in seq:
                y = {}
                for k2 in keys:
                    y.update(centred(k2))
                bary = {n: np.mean([y[m] for m in nbrs(n)]) if list(nbrs(n)) else y[n]
                        for n in layers[k]}
                layers[k].sort(key=lambda n: (bary[n], rank[n]))
                rank.update({n: i for i, n in enumerate(layers[k])})
    pos = {}
    for k in keys:
        for n, y in centred(k).items():
            pos[n] = (float(k), -y)
    return pos


def draw_graph(g, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    import networkx as nx

    fwd = g.subgraph(n for n, d in g.nodes(data=True) if d["phase"] != "backward")
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(15, 11),
                                 gridspec_kw={"height_ratios": [1, 1.5]})
    colors = {"input": "#d9e8f5", "forward": "#cfe3cf", "backward": "#f7d9bf"}
    for ax, sub, title in (
            (a1, fwd, "(a) dependency graph of f(x) = log(x²)·sin(x) + 1/x, recorded at "
                      "x = 1.5 (the forward ops)"),
            (a2, g, "forward + backward: the ops dyngrad ran for f.backward() "
                    "(orange; g-nodes are gradients, dashed: the seed df/df = 1)")):
        layers = {n: g.nodes[n]["layer"] for n in sub}
        sub = nx.DiGraph(sub)
        nx.set_node_attributes(sub, layers, "layer")
        pos = layered_positions(sub)
        near, far = [], []   # edges to the next layer are straight; longer ones are arcs
        for a, b, d in sub.edges(data=True):
            if d["kind"] == "data":
                (near if layers[b] - layers[a] == 1 else far).append((a, b))
        seed_edges = [(a, b) for a, b, d in sub.edges(data=True) if d["kind"] == "seed"]
        margin = dict(node_size=0, min_source_margin=38, min_target_margin=38)
        nx.draw_networkx_edges(sub, pos, edgelist=near, ax=ax, arrows=True,
                               arrowsize=11, edge_color="#777777", width=0.9, **margin)
        nx.draw_networkx_edges(sub, pos, edgelist=far, ax=ax, arrows=True,
                               arrowsize=11, edge_color="#777777", width=0.9,
                               connectionstyle="arc3,rad=0.12", **margin)
        nx.draw_networkx_edges(sub, pos, edgelist=seed_edges, ax=ax, arrows=True,
                               arrowsize=11, style="dashed", edge_color="#c0504d",
                               width=1.4, **margin)
        for n, (px, py) in pos.items():
            d = sub.nodes[n]
            ax.text(px, py, d["label"], ha="center", va="center", fontsize=7.5, zorder=3,
                    bbox=dict(boxstyle="round,pad=0.3", fc=colors[d["phase"]], ec="#555555"))
        ax.set_title(title, fontsize=10.5)
        ax.margins(x=0.06, y=0.12)
        ax.axis("off")
    fig.tight_layout()
    save(fig, path, "graph drawing", dpi=100)


def exercise_graph(out_dir: Path, dot_path: Path) -> None:
    heading("(a) the computation graph of f, recorded by a DispatchMode")
    g, grad, counters = build_graph(1.5)
    print(f"  forward: {counters['forward']} primitive calls, backward: "
          f"{counters['backward']}; {g.number_of_nodes()} values, {g.number_of_edges()} edges")
    for n in sorted((n for n, d in g.nodes(data=True) if d["phase"] != "backward"),
                    key=lambda n: g.nodes[n]["layer"]):
        preds = ", ".join(g.predecessors(n)) or "—"
        print(f"    {g.nodes[n]['label'].splitlines()[0]:<22} from {preds}")
    assert counters["forward"] == 6          # pow, log, sin, mul, div, add
    assert abs(grad - df_closed(np.array(1.5))) < 1e-12
    dot_path.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(to_dot(g))
    print(f"  DOT text written to {dot_path} (x.grad at 1.5 = {grad:.6f} = f'(1.5))")
    draw_graph(g, out_dir / "d2l_f_graph.png")


# ------------------------------------------------------------------------------ (b), (c)


def sample_points(n: int = 2000) -> np.ndarray:
    """Points on [−10, 10] away from the pole at 0."""
    xs = np.linspace(-10, 10, n)
    return xs[np.abs(xs) > 0.05]


def exercise_first_derivative() -> dict:
    heading("(b) df/dx by forward and by reverse accumulation")
    xs = sample_points()
    x = dg.tensor(xs)                                          # float64
    _, fwd1 = dg.func.jvp(f, (x,), (dg.ones_like(x),))          # J·1, J diagonal
    _, fwd2 = forward_ad.jvp(f, (x,), (dg.ones_like(x),))
    xr = x.clone().requires_grad_()
    f(xr).sum().backward()                                      # 1ᵀ·J
    rev = xr.grad.numpy()
    exact = df_closed(xs)
    errs = {"dg.func.jvp (forward)": max_rel_err(fwd1.numpy(), exact),
            "forward_ad.jvp (forward)": max_rel_err(fwd2.numpy(), exact),
            "backward (reverse)": max_rel_err(rev, exact)}
    for k, e in errs.items():
        print(f"  {k:<26} max relative error vs closed form over {len(xs)} points: {e:.1e}")
        assert e < 1e-12, k
    print("  ⇒ both modes apply the chain rule exactly (to rounding): forward pushes dx/dx = 1 "
          "through the ops\n    in execution order, reverse pulls df/df = 1 back through them "
          "in reverse order.")
    return {"x": xs, "df": rev}


def exercise_second_derivative() -> dict:
    heading("(c) the second derivative: grad of grad, and hessian")
    xs = sample_points()
    x = dg.tensor(xs)
    # f acts elementwise, so the gradient of Σf is f' at every point, and the gradient of
    # Σf' is f''.
    fprime = dg.func.grad(lambda x: f(x).sum())
    f2 = dg.func.grad(lambda x: fprime(x).sum())(x).numpy()
    exact = d2f_closed(xs)
    e1 = max_rel_err(f2, exact)
    print(f"  grad(grad(f)) at {len(xs)} points: max relative error {e1:.1e}")
    assert e1 < 1e-10
    pts = np.array([-7.0, -2.5, -0.3, 0.4, 1.0, 3.3, 9.0])
    hx = dg.tensor(pts)
    H = dg.func.hessian(lambda x: f(x).sum())(hx).numpy()
    e2 = max_rel_err(np.diag(H), d2f_closed(pts))
    off = float(np.abs(H - np.diag(np.diag(H))).max())
    print(f"  hessian of Σf at {len(pts)} points: diagonal max relative error {e2:.1e}, "
          f"largest off-diagonal {off:.1e}")
    assert e2 < 1e-10 and off == 0.0
    for p in (0.4, 3.3):
        h = dg.func.hessian(f)(dg.tensor(p, dtype=dg.float64)).item()
        print(f"  hessian(f)(x={p}) = {h:.10f}   closed form {d2f_closed(np.array(p)):.10f}")
        assert abs(h - d2f_closed(np.array(p))) < 1e-9 * max(1, abs(h))
    print("  ⇒ gradients are built from differentiable ops (create_graph), so differentiating "
          "again just works;\n    the Hessian of an elementwise function is diagonal.")
    return {"x": xs, "d2f": f2}


# ------------------------------------------------------------------------------ (d)


def exercise_sin(out_dir: Path, first: dict, second: dict) -> None:
    heading("(d) d/dx sin(x) by autodiff over [−2π, 2π]")
    x = dg.linspace(-2 * math.pi, 2 * math.pi, 201, dtype=dg.float64, requires_grad=True)
    y = x.sin()
    y.backward(gradient=dg.ones_like(y))      # vᵀJ with v = 1: J is diagonal, so cos(x)
    by_ones = x.grad.clone()
    x.grad = None
    x.sin().sum().backward()
    xs = x.detach().numpy()
    e = max_rel_err(by_ones.numpy(), np.cos(xs))
    print(f"  backward(gradient=ones) vs cos(x): max error {e:.1e}; "
          f"equals .sum().backward(): {bool(np.array_equal(by_ones.numpy(), x.grad.numpy()))}")
    assert e < 1e-15 and np.array_equal(by_ones.numpy(), x.grad.numpy())
    plt = pyplot()
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    a1.plot(xs, np.sin(xs), label="sin(x)", color="tab:blue")
    a1.plot(xs, np.cos(xs), label="cos(x) (closed form)", color="tab:gray", lw=4, alpha=0.4)
    a1.plot(xs, by_ones.numpy(), "--", label="d sin/dx by backward(gradient=ones)",
            color="tab:orange")
    a1.set_xticks(np.arange(-2, 2.5, 0.5) * math.pi,
                  ["−2π", "−3π/2", "−π", "−π/2", "0", "π/2", "π", "3π/2", "2π"])
    a1.axhline(0, color="k", lw=0.5)
    a1.set(title="(d) sin and its autodiff derivative", xlabel="x")
    a1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    xf = first["x"]
    for arr, label, color in ((None, "f(x)", "tab:blue"),
                              (first["df"], "f′(x) by backward", "tab:orange"),
                              (second["d2f"], "f″(x) by grad(grad(f))", "tab:green")):
        vals = f(dg.tensor(xf)).numpy() if arr is None else arr
        for side in (xf < 0, xf > 0):
            a2.plot(xf[side], vals[side], color=color, label=label if side[-1] else None)
    pts = np.linspace(-9.5, 9.5, 20)
    a2.plot(pts, df_closed(pts), "o", mfc="none", color="tab:orange", ms=5,
            label="closed-form f′")
    a2.plot(pts, d2f_closed(pts), "s", mfc="none", color="tab:green", ms=5,
            label="closed-form f″")
    a2.set(ylim=(-8, 8), xlabel="x",
           title="(b, c) f(x) = log(x²)·sin(x) + 1/x and its derivatives")
    a2.axhline(0, color="k", lw=0.5)
    a2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    fig.tight_layout()
    path = out_dir / "d2l_derivatives.png"
    save(fig, path, "  figure")


# ------------------------------------------------------------------------------ (e)


def time_jacobian(jac, w, x, repeat: int) -> float:
    best = float("inf")
    fn = jac(lambda x: (w @ x).tanh())
    fn(x)
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def exercise_modes(out_dir: Path, quick: bool) -> None:
    heading("(e) when is each mode cheaper? jacfwd vs jacrev of y = tanh(W x), W: m×n")
    sizes = [1, 4, 16, 64]
    repeat = 2 if quick else 5
    rng = np.random.default_rng(0)
    t = {"fwd": np.zeros((4, 4)), "rev": np.zeros((4, 4))}   # [i_n, i_m]
    grid = [(i, j) for i in range(4) for j in range(4)]
    for i, j in progress(grid, "timing jacfwd/jacrev", total=len(grid)):
        n, m = sizes[i], sizes[j]
        w = dg.tensor(rng.standard_normal((m, n)) / math.sqrt(n))
        x = dg.tensor(rng.standard_normal(n))
        jf = dg.func.jacfwd(lambda x: (w @ x).tanh())(x).numpy()
        jr = dg.func.jacrev(lambda x: (w @ x).tanh())(x).numpy()
        exact = (1 - np.tanh(w.numpy() @ x.numpy()) ** 2)[:, None] * w.numpy()
        assert max_rel_err(jf, exact) < 1e-12 and max_rel_err(jr, exact) < 1e-12
        t["fwd"][i, j] = time_jacobian(dg.func.jacfwd, w, x, repeat)
        t["rev"][i, j] = time_jacobian(dg.func.jacrev, w, x, repeat)
    print("  time in ms for the whole m×n Jacobian (best of "
          f"{repeat}); 'faster' names the cheaper mode")
    print(f"  {'n':>4}{'m':>5}{'jacfwd':>10}{'jacrev':>10}{'faster':>9}")
    for i, j in grid:
        tf, tr = t["fwd"][i, j] * 1e3, t["rev"][i, j] * 1e3
        print(f"  {sizes[i]:>4}{sizes[j]:>5}{tf:>10.2f}{tr:>10.2f}"
              f"{'fwd' if tf < tr else 'rev':>9}")
    # growth over the range: ×64 in n at fixed m, and ×64 in m at fixed n (means over the
    # other size)
    fwd_n = np.mean(t["fwd"][-1, :] / t["fwd"][0, :])
    fwd_m = np.mean(t["fwd"][:, -1] / t["fwd"][:, 0])
    rev_n = np.mean(t["rev"][-1, :] / t["rev"][0, :])
    rev_m = np.mean(t["rev"][:, -1] / t["rev"][:, 0])
    print(f"\n  going from 1 to 64 inputs multiplies jacfwd's time by {fwd_n:.0f}×, "
          f"jacrev's by {rev_n:.1f}×")
    print(f"  going from 1 to 64 outputs multiplies jacrev's time by {rev_m:.0f}×, "
          f"jacfwd's by {fwd_m:.1f}×")
    print("  ⇒ forward mode costs one pass per INPUT (a jvp per column of J), reverse mode one "
          "pass per OUTPUT\n    (a vjp per row of J). Use forward when n < m, reverse when "
          "m < n — a scalar loss of many\n    parameters (m = 1) is the extreme case, which "
          "is why deep learning uses reverse mode.")
    assert fwd_n > 8 and rev_m > 8 and fwd_m < 3 and rev_n < 3
    assert t["fwd"][0, -1] < t["rev"][0, -1] and t["rev"][-1, 0] < t["fwd"][-1, 0]
    plt = pyplot()
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5.4), sharey=True)
    shades = ["#9ecae1", "#6baed6", "#3182bd", "#08519c"]
    oranges = ["#fdd0a2", "#fdae6b", "#f16913", "#a63603"]
    for k, s in enumerate(sizes):
        a1.plot(sizes, t["fwd"][:, k] * 1e3, "o-", color=shades[k], label=f"jacfwd, m={s}")
        a1.plot(sizes, t["rev"][:, k] * 1e3, "s--", color=oranges[k], label=f"jacrev, m={s}")
        a2.plot(sizes, t["fwd"][k, :] * 1e3, "o-", color=shades[k], label=f"jacfwd, n={s}")
        a2.plot(sizes, t["rev"][k, :] * 1e3, "s--", color=oranges[k], label=f"jacrev, n={s}")
    a1.set(xscale="log", yscale="log", xlabel="n (inputs)", ylabel="time per Jacobian (ms)",
           title="time vs number of inputs n\n(forward grows with n, reverse does not)")
    a2.set(xscale="log", xlabel="m (outputs)",
           title="time vs number of outputs m\n(reverse grows with m, forward does not)")
    for ax in (a1, a2):
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.legend(fontsize=7.5, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.suptitle("y = tanh(W x): dg.func.jacfwd (blue, solid) vs dg.func.jacrev "
                 "(orange, dashed)", fontsize=11)
    fig.tight_layout()
    path = out_dir / "d2l_modes.png"
    save(fig, path, "  figure")


def main(argv=None) -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=here, help="folder for the PNG figures")
    ap.add_argument("--dot", type=Path, default=None,
                    help="path of the DOT file (default: OUT/d2l_f_graph.dot)")
    ap.add_argument("--quick", action="store_true", help="fewer timing repeats")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    exercise_graph(args.out, args.dot or args.out / "d2l_f_graph.dot")
    first = exercise_first_derivative()
    second = exercise_second_derivative()
    exercise_sin(args.out, first, second)
    exercise_modes(args.out, args.quick)
    print("\nall exercises checked.")


if __name__ == "__main__":
    main()
