"""Data-dependent control flow under the compiler: d2l.ai's ``f`` (§2.5.4), forward and
backward, compiled as written.

    python examples/control_flow.py [--calls N] [--quick] [--explain-full] [--plot PATH]

``f`` doubles its input until the norm reaches 1000 (a ``while`` whose trip count depends on
the value of ``a``) and then branches on the sign of the sum. A tracer cannot follow a
branch it has not seen, so the compiler records the path the first call took and turns each
``bool()`` of a tensor into a *value guard*: the compiled program recomputes the condition
and checks that it still comes out as traced. ``compiler.explain`` lists them.

When an input takes another path — another trip count, or the other branch — a value guard
fails part-way through the compiled program. Nothing has been written yet (a compiled call
commits its writes only after its last guard), so the call is simply traced again into a new
*variant*, running eagerly as it does. Each path (trip count × sign) is one variant. After
``cache_limit`` variants (8 by default; 4 here, to show it in a few calls) the next new path
makes the function run eagerly from then on, with one warning naming the guard. Whatever the
path, every result and every gradient equals eager's: the script prints them side by side and
asserts it. A call tries the variants in turn (the one that served last first); a wrong one
runs until its first failing value guard, so a replay costs a little more for each variant
tried before the right one.

The inputs: first a stream drawn from four paths (|a| in two ranges of magnitude, either
sign) — four variants, traced once each and replayed after that; then magnitudes spread over
five decades, whose new trip counts exhaust the cache. The plot (default: control_flow.png
next to this script) shows each call's path and its time, eager and compiled, marking the
calls that traced a new variant and those that ran eagerly.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import explain_text, progress, pyplot, save  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402


def f(a):  # d2l.ai §2.5.4, as written there
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    if b.sum() > 0:
        c = b
    else:
        c = 100 * b
    return c


def step(a):
    """Forward and backward: ``d = f(a)`` and ``a.grad`` (= d/a, as f is linear on each path)."""
    a.grad = None
    d = f(a)
    d.backward()
    return d


def trips(a: float) -> int:
    """How many times f's loop body runs for a scalar ``a`` (in float32, as f computes)."""
    b, k = np.float32(a) * np.float32(2), 0
    while abs(b) < 1000:
        b, k = b * np.float32(2), k + 1
    return k


def inputs(n_known: int, n_new: int, seed: int = 0) -> list[float]:
    """``n_known`` inputs from four paths (10 or 8 doublings, either sign), then ``n_new``
    magnitudes spread over 0.01–100 (other trip counts)."""
    r = np.random.default_rng(seed)
    known = [r.choice([-1, 1]) * (r.uniform(0.5, 0.95) if r.random() < 0.5 else
                                  r.uniform(2.0, 3.8)) for _ in range(n_known)]
    new = [r.choice([-1, 1]) * 10 ** r.uniform(-2, 2) for _ in range(n_new)]
    return [float(np.float32(v)) for v in known + new]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40, help="calls on the four known paths")
    ap.add_argument("--new", type=int, default=8, help="calls on new paths after them")
    ap.add_argument("--cache-limit", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="16 + 4 calls (for the tests)")
    ap.add_argument("--explain-full", action="store_true",
                    help="print explain()'s whole report (the IR of every variant)")
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"))
    args = ap.parse_args(argv)
    n_known, n_new = (16, 4) if args.quick else (args.calls, args.new)

    cf = compiler.compile(step, cache_limit=args.cache_limit)
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for v in progress(inputs(n_known, n_new), n_known + n_new, "call"):
            a_eager = dg.tensor(v, requires_grad=True)
            a_comp = dg.tensor(v, requires_grad=True)
            t0 = time.perf_counter()
            d_eager = step(a_eager)
            t1 = time.perf_counter()
            order = list(cf.variants)  # tried in this order (the last one to serve first)
            before = {id(var): var.calls for var in order}
            was_eager = cf.eager_reason is not None
            t2 = time.perf_counter()
            d_comp = cf(a_comp)
            t3 = time.perf_counter()
            served = [k for k, var in enumerate(order) if var.calls > before[id(var)]]
            if len(cf.variants) > len(before):
                event = "traced"
            elif served:
                event = "compiled"
            elif cf.eager_reason is not None and not was_eager:
                event = "limit"  # the new path that exhausted cache_limit
            else:
                event = "eager"
            rows.append(dict(a=v, trips=trips(v), event=event, variants=len(cf.variants),
                             misses=served[0] if served else len(order),
                             d_eager=d_eager.item(), d_comp=d_comp.item(),
                             g_eager=a_eager.grad.item(), g_comp=a_comp.grad.item(),
                             t_eager=t1 - t0, t_comp=t3 - t2))

    print(f"\n{'call':>4} {'a':>10} {'trips':>5} {'f(a) eager':>14} {'f(a) compiled':>14} "
          f"{'grad eager':>11} {'grad compiled':>13}  what the compiled call did")
    what = {"traced": "a guard failed: traced variant {variants}",
            "compiled": "replayed a variant",
            "limit": "new path, cache_limit reached: ran eagerly",
            "eager": "ran eagerly (the function stays eager)"}
    for i, r in enumerate(rows):
        if i == 0:
            note = "first call: traced variant 1"
        else:
            note = what[r["event"]].format(**r)
        if r["event"] == "compiled" and r["misses"]:
            note += f" (after {r['misses']} other{'s' * (r['misses'] > 1)} failed a value guard)"
        print(f"{i:4d} {r['a']:10.4f} {r['trips']:5d} {r['d_eager']:14.6g} {r['d_comp']:14.6g} "
              f"{r['g_eager']:11.6g} {r['g_comp']:13.6g}  {note}")
    for w in caught:
        print(f"warning: {w.message}")

    print("\ncompiler.explain(step):")
    print(explain_text(cf, args.explain_full))

    rel = max(max(abs(r["d_comp"] - r["d_eager"]) / abs(r["d_eager"]),
                  abs(r["g_comp"] - r["g_eager"]) / abs(r["g_eager"])) for r in rows)
    replays = [r for r in rows if r["event"] == "compiled"]
    eager_us = np.median([r["t_eager"] for r in rows]) * 1e6
    replay_us = np.median([r["t_comp"] for r in replays]) * 1e6 if replays else float("nan")
    paths = len({(r["trips"], r["d_eager"] > 0) for r in rows})
    print(f"\n{len(rows)} calls over {paths} paths: {len(cf.variants)} variants traced, "
          f"{len(replays)} compiled replays, "
          f"{sum(r['event'] in ('limit', 'eager') for r in rows)} eager calls after the "
          f"cache limit")
    print(f"median time per call: eager {eager_us:.0f} µs, compiled replay {replay_us:.0f} µs")
    print(f"largest relative difference compiled vs eager (f(a) and grad): {rel:.1e}")
    assert rel < 1e-6, f"compiled results differ from eager by {rel:.1e}"
    assert replays, "no call replayed a compiled variant"
    assert len(cf.variants) <= args.cache_limit
    plot(args.plot, rows, args.cache_limit)
    return {"rows": rows, "variants": len(cf.variants), "max_rel_diff": rel,
            "eager_us": eager_us, "replay_us": replay_us}


def plot(path: Path, rows: list, cache_limit: int) -> None:
    plt = pyplot()
    if plt is None:
        return
    i = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6.4), sharex=True,
                                 gridspec_kw={"height_ratios": [1, 1.6]})
    pos = np.array([r["d_eager"] > 0 for r in rows])
    tr = np.array([r["trips"] for r in rows])
    a1.scatter(i[pos], tr[pos], marker="^", color="tab:green", label="sum > 0: c = b")
    a1.scatter(i[~pos], tr[~pos], marker="v", color="tab:purple", label="else: c = 100·b")
    a1.set(ylabel="loop trip count", title="the path each call takes through f")
    a1.legend(fontsize=8, loc="upper left")
    a2.plot(i, [r["t_eager"] * 1e6 for r in rows], ".-", color="0.6", lw=0.8,
            label="eager step")
    misses = sorted({r["misses"] for r in rows if r["event"] == "compiled"})
    for m in misses:  # variants are tried in turn: a wrong one runs until a value guard fails
        sel = [k for k, r in enumerate(rows) if r["event"] == "compiled" and r["misses"] == m]
        a2.scatter(sel, [rows[k]["t_comp"] * 1e6 for k in sel], s=22, zorder=3,
                   color=plt.get_cmap("Blues")(0.95 - 0.5 * m / max(misses[-1], 1)),
                   label=f"compiled: replayed a variant, {m} wrong one{'s' * (m != 1)} "
                         f"tried first")
    style = {"traced": ("*", "tab:red", "compiled: a guard failed, traced a new variant"),
             "limit": ("X", "black", f"new path beyond cache_limit={cache_limit}"),
             "eager": ("s", "tab:orange", "compiled function, now eager")}
    for event, (marker, color, label) in style.items():
        sel = [k for k, r in enumerate(rows) if r["event"] == event]
        if sel:
            a2.scatter(sel, [rows[k]["t_comp"] * 1e6 for k in sel], marker=marker, color=color,
                       s=60 if event in ("traced", "limit") else 22, zorder=3, label=label)
    a2.set(yscale="log", xlabel="call", ylabel="time per call (µs)",
           title="f(a) and its gradient: one wall-clock sample per call")
    a2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
