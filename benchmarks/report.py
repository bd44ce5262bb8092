"""The suite's results as a terminal table and as a PNG chart."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

LEGEND = ("µs/step: median over samples (IQR); × eager: speed-up over dyngrad eager; × bound: "
          "time / the bound; × floor: time / the FLOP floor (the step's matmuls at the "
          "machine's measured peak multiply-add rate); cold / disk ms: the warm-up (3 "
          "passes over the inputs) in a new process with an empty cache / loading the "
          "compiled modules from the disk cache; peak MB: tracemalloc (numpy buffers + "
          "Python objects); var / fb: variants / fallbacks (torch.compile: graphs / graph "
          "breaks); vs eager: max relative difference of the outputs over the first calls")


def _num(x, fmt: str, width: int) -> str:
    """``x`` right-aligned in ``width`` characters, at least one of them a space (a step of
    seconds, with its IQR, once ran its two columns together)."""
    return f" {x:{width - 1}{fmt}}" if x is not None else f"{'—':>{width}}"


def header(results: dict) -> list[str]:
    """The machine, its load, threads and limits."""
    m = results["machine"]
    th = m["threads"]
    torch = f", torch {m['torch']}" if m.get("torch") else ""
    torch += f", jax {m['jax']}" if m.get("jax") else ""
    return [
        f"dyngrad benchmark suite ({results['options']['run']} run), {m['date']}",
        f"{m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, llvmlite "
        f"{m['llvmlite']} / LLVM {m['llvm']}{torch}",
        f"load average {m['load_average_start']:.2f} at the start, "
        f"{m.get('load_average_end', float('nan')):.2f} at the end (timings assume an "
        f"otherwise idle machine)",
        f"threads: BLAS {th['blas']}, LLVM kernels {th['llvm_kernels']}"
        + (f", PyTorch {th['torch']}" if th.get("torch") else "")
        + (f", XLA {th['xla']}" if th.get("xla") else ""),
        f"code generated for: {m.get('target', '?')}",
        f"this machine: peak {m.get('peak_gflops', float('nan')):.0f} GFLOP/s on "
        f"{th['llvm_kernels']} thread(s) ({m.get('peak_gflops_one', float('nan')):.0f} on one; "
        f"float32 multiply-adds), copy {m['copy_gbps']:.1f} GB/s (read + write), numpy "
        f"matmul {m['matmul_gflops']:.0f} GFLOP/s (float32 1024², {th['blas']} BLAS "
        f"thread(s))",
    ]


def workload_lines(name: str, w: dict) -> list[str]:
    """One row per mode, then the fallbacks' reasons."""
    bound, floor = w.get("bound_us"), w.get("floor_us")
    lines = [f"{name}  {w['title']}" + (f"  [bound {bound:.1f} µs: {w['bound_how']}]"
                                         if bound else "")]
    if floor:
        lines.append(f"  FLOP floor {floor:.1f} µs: the step's matmuls, {w['flops'] / 1e6:.1f} "
                     f"MFLOP, at the measured peak")
    lines.append(f"  {'mode':<14}{'µs/step':>10}{'IQR':>9}{'× eager':>9}{'× bound':>9}"
                 f"{'× floor':>9}{'cold ms':>9}{'disk ms':>9}{'peak MB':>9}{'var':>5}{'fb':>4}"
                 f"  {'vs eager'}")
    notes: dict[str, list] = {}  # note -> the modes it concerns
    for mode, e in w["modes"].items():
        if not e.get("ran"):
            lines.append(f"  {mode:<14}did not run: {e.get('error')}")
            continue
        agree = ""
        if "max_rel_diff" in e:
            agree = f"{e['max_rel_diff']:.1e} " + {True: "ok", False: "DISAGREES",
                                                   None: "not judged"}[e["agreed"]]
            if e["agreed"] is None:
                notes.setdefault(w.get("tolerance_why", "not judged"), []).append(mode)
        lines.append(
            f"  {mode:<14}{_num(e.get('us'), '.1f', 10)}{_num(e.get('iqr'), '.1f', 9)}"
            f"{_num(e.get('speedup'), '.2f', 9)}{_num(e.get('x_bound'), '.2f', 9)}"
            f"{_num(e.get('x_floor'), '.2f', 9)}{_num(e.get('first_cold_ms'), '.0f', 9)}"
            f"{_num(e.get('first_disk_ms'), '.0f', 9)}"
            f"{_num(e.get('peak_mb'), '.2f', 9)}{_num(e.get('variants'), 'd', 5)}"
            f"{_num(e.get('fallbacks'), 'd', 4)}  {agree}")
        if e.get("eager_reason"):
            notes.setdefault(f"runs eagerly from now on: {e['eager_reason']}", []).append(mode)
        for why in e.get("fallback_reasons") or []:
            notes.setdefault(f"fallback: {why}", []).append(mode)
    if "first_calls_error" in w:
        notes.setdefault(w["first_calls_error"], [])
    if "float32_drift" in w:  # (the float64 reference: what rounding alone does)
        far = ", ".join(f"{m} {e['max_rel_diff_f64']:.1e} from float64 and "
                        f"{e['max_rel_diff_all']:.1e} from eager"
                        for m, e in w["modes"].items() if "max_rel_diff_f64" in e)
        notes.setdefault(f"over {len(w['float32_drift_per_call'])} calls, eager in float32 is "
                         f"{w['float32_drift']:.1e} from eager in float64; {far}", [])
    if "ulp_drift" in w:  # (the one-ulp reference: what one rounding does)
        far = ", ".join(f"{m} {e['max_rel_diff_all']:.1e}" for m, e in w["modes"].items()
                        if "vs_ulp" in e)
        notes.setdefault(f"over {len(w['ulp_drift_per_call'])} calls, eager with its "
                         f"parameters moved by one ulp after the first step is "
                         f"{w['ulp_drift']:.1e} from eager; from eager: {far}", [])
    return lines + [f"  {', '.join(modes)}{' ' if modes else ''}{note}"
                    for note, modes in notes.items()] + goal_lines(w.get("goals", []))


def goal_lines(goals: list) -> list[str]:
    """One line per goal: its figure against the limit, and the verdict."""
    lines = []
    for g in goals:
        if g["met"] is None:
            lines.append(f"  goal: {g['goal']} — not measured: {g['why']}")
            continue
        v, lim = g["value"], g["limit"]
        fig = f"{v:.0f}{g['unit']}" if abs(v) >= 100 else \
            f"{v:.2g}{g['unit']}" if abs(v) < 0.01 else f"{v:.2f}{g['unit']}"
        lines.append(f"  goal: {g['goal']} — {fig} (limit {lim:g}{g['unit']}): "
                     + ("met" if g["met"] else "not met"))
    return lines


def jacobian_lines(r: dict) -> list[str]:
    """W6: one row per (n, m), then what the compiler cannot trace."""
    lines = [f"W6  {r['title']}: µs per Jacobian, median (faster of the two eager modes)"]
    modes = list(r["points"][0]["modes"])
    lines.append(f"  {'n':>5}{'m':>6}" + "".join(f"{m:>14}" for m in modes) + "   faster")
    for p in r["points"]:
        cells = "".join(_num(p["modes"][m].get("us"), ".0f", 14) for m in modes)
        lines.append(f"  {p['n']:>5}{p['m']:>6}{cells}   {p['faster']}")
    for kind, c in r["compiled"].items():
        if not c["supported"]:
            lines.append(f"  compiled {kind}: not supported, measured eager only — "
                         f"{c['reason']}")
    worst = max(e["max_scaled_diff"] for p in r["points"] for e in p["modes"].values())
    lines.append(f"  every Jacobian against diag(1 − tanh²(Wx))·W in float64: max "
                 f"|ΔJ|/max|J| {worst:.1e} (tolerance {r['tolerance']:.0e})")
    return lines


def sweep_lines(r: dict) -> list[str]:
    """The sweep: one row per width, flagged where compiled is slower than eager."""
    modes = list(r["points"][0]["modes"])
    lines = [f"size sweep  {r['title']}: µs per step, median",
             f"  {'width':>6}" + "".join(f"{m:>11}" for m in modes)
             + f"{'llvm×eager':>12}{'bound':>9}{'llvm×bound':>12}"]
    for p in r["points"]:
        e = p["modes"]
        cells = "".join(_num(e[m].get("us"), ".1f", 11) for m in modes)
        flag = "  COMPILED SLOWER THAN EAGER" if p["compiled_slower"] else ""
        lines.append(f"  {p['width']:>6}{cells}{_num(e['llvm'].get('speedup'), '.2f', 12)}"
                     f"{_num(p.get('bound_us'), '.1f', 9)}"
                     f"{_num(e['llvm'].get('x_bound'), '.2f', 12)}{flag}")
    slow = r["compiled_slower_at"]
    lines.append("  compiled (llvm) slower than eager at widths " + ", ".join(map(str, slow))
                 if slow else "  compiled (llvm) is faster than eager at every width")
    return lines


def table(results: dict) -> str:
    """The whole terminal report (also made from a saved JSON: ``table(json.load(f))``)."""
    lines = header(results) + ["", *textwrap.wrap(LEGEND, 96)]
    for name, w in results.get("workloads", {}).items():
        lines += ["", *workload_lines(name, w)]
    if "W6" in results:
        lines += ["", *jacobian_lines(results["W6"])]
    if "sweep" in results:
        lines += ["", *sweep_lines(results["sweep"])]
    probs = results["problems"]
    lines += ["", "every mode ran and agreed with eager" if not probs else
              "PROBLEMS:\n  " + "\n  ".join(probs),
              f"total {results['elapsed_s']:.0f} s"]
    return "\n".join(line.rstrip() for line in lines)


def plot(results: dict, path: Path) -> bool:
    """Speed-ups per workload, the size sweep and W6's forward-vs-reverse ratio as one PNG;
    False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [k for k in ("workloads", "sweep", "W6") if results.get(k)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.6), squeeze=False)
    axes = dict(zip(panels, axes[0]))
    wls = results.get("workloads", {})
    if wls:
        _workload_panel(axes["workloads"], wls)
    if "sweep" in axes:
        _sweep_panel(axes["sweep"], results["sweep"]["points"])
    if "W6" in axes:
        _jacobian_panel(axes["W6"], results["W6"]["points"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _workload_panel(ax, wls: dict) -> None:
    modes = [m for m in dict.fromkeys(m for w in wls.values() for m in w["modes"])
             if m != "eager"]
    width = 0.8 / max(len(modes), 1)
    for k, mode in enumerate(modes):
        xs = [i + k * width for i, w in enumerate(wls.values()) if "speedup" in
              w["modes"].get(mode, {})]
        ys = [w["modes"][mode]["speedup"] for w in wls.values()
              if "speedup" in w["modes"].get(mode, {})]
        ax.bar(xs, ys, width, label=mode)
    ax.set_xticks(np.arange(len(wls)) + 0.4 - width / 2, list(wls))
    ax.axhline(1, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over dyngrad eager")
    ax.set_title("workloads")
    ax.legend(fontsize=8)


def _sweep_panel(ax, pts: list) -> None:
    ws = [p["width"] for p in pts]
    for mode in pts[0]["modes"]:
        ax.plot(ws, [p["modes"][mode].get("us", np.nan) for p in pts], "o-", label=mode)
    ax.plot(ws, [p.get("bound_us", np.nan) for p in pts], "k--", label="bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden width")
    ax.set_ylabel("µs per step")
    ax.set_title("MLP step: where compiled and eager converge")
    ax.legend(fontsize=8)


def _jacobian_panel(ax, pts: list) -> None:
    ratio = [p["m"] / p["n"] for p in pts]
    for prefix, marker, label in (("", "o", "dyngrad eager"), ("torch ", "x", "torch.func"),
                                  ("jax ", "+", "jax.jit")):
        if f"{prefix}jacrev" in pts[0]["modes"]:
            ax.scatter(ratio, [p["modes"][f"{prefix}jacrev"]["us"] /
                               p["modes"][f"{prefix}jacfwd"]["us"] for p in pts],
                       marker=marker, label=label)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("m / n (outputs / inputs)")
    ax.set_ylabel("time jacrev / time jacfwd")
    ax.set_title("W6: above 1, forward mode wins")
    ax.legend(fontsize=8)
