"""``compiler.profile(fn, *args, steps=N)``: where a compiled step's time goes, kernel by
kernel — what ``torch.profiler`` users expect.

The function is called ``warmup`` times (tracing and compiling its variants), then
``steps`` times as usual (the step time as the user gets it), then ``steps`` times with
the variant serving these arguments running a *profiled plan*: the same kernels, built
again with the clock read around each one (the LLVM driver reads the time-stamp counter
in native code; a hybrid plan reads ``perf_counter`` between its groups). Normal calls
never run timing code: the profiled plan is a module of its own, put in place for the
profiled calls and taken out after them. The calls are real: a training step trains
``warmup + 2 * steps`` times.

Reported per kernel (a fusion group): calls, total and mean time, share of the native
step; its work — FLOPs (a matmul 2·M·N·K; an elementwise operation one per element, a
vecmath function the floating-point instructions of its polynomial, ``vecmath.flops``; a
reduction one per element reduced) and compulsory bytes (every input buffer read once,
every output written once) — as GFLOP/s and GB/s, against the machine's measured peak
multiply-add rate and copy bandwidth (``backends/llvm/machine.py``). And the Python side
of a call: each profiled call's wall time minus its native time (guards, argument tables,
outputs, write-backs).

:meth:`Profile.table` is what ``profile`` prints; :meth:`Profile.chrome_trace` writes
Chrome-trace JSON (open it in https://ui.perfetto.dev or ``chrome://tracing``);
:meth:`Profile.plot` a bar chart (PNG; needs matplotlib).

Example::

    >>> prof = compiler.profile(train_step, x, y, steps=50)      # doctest: +SKIP
    >>> prof.chrome_trace("step.json"); prof.plot("step.png")   # doctest: +SKIP

Only the call itself is profiled: a variant's backward part that runs at a later
``backward()`` (backward outside the compiled function) is not timed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .api import CompiledFunction, compile


@dataclass
class KernelStats:
    """One kernel (fusion group) of the profiled plan."""

    index: int
    kind: str
    label: str  # what it computes, short
    native: bool  # runs as native code (else numpy, in a hybrid plan)
    flops: float  # per call
    bytes: float  # per call (compulsory traffic)
    seconds: list = field(default_factory=list)  # per profiled call
    late: bool = False  # computes what the call's own backward() (or what follows it) does

    @property
    def calls(self) -> int:
        return len(self.seconds)

    @property
    def total(self) -> float:
        return float(sum(self.seconds))

    @property
    def mean(self) -> float:
        return self.total / max(self.calls, 1)

    @property
    def gflops(self) -> float:
        return self.flops / self.mean / 1e9 if self.mean else 0.0

    @property
    def gbps(self) -> float:
        return self.bytes / self.mean / 1e9 if self.mean else 0.0


@dataclass
class Profile:
    """What :func:`profile` measured (see the module docstring)."""

    name: str
    kernels: list  # KernelStats, in the order the plan runs them
    step_seconds: float  # median wall time of a normal call (the user's view)
    native_seconds: float  # mean time inside the profiled plan (the driver's own pair)
    timeline: list  # per profiled call: (call start, call end, plan rows (n + 1, 2)) in s
    peak_flops: float  # the machine's measured limits
    bandwidth: float
    threads: int
    target: str
    plan: str  # "one native driver call" or "hybrid plan (N of M groups native)"

    @property
    def overhead_seconds(self) -> float:
        """The Python side of a call: each profiled call's wall time minus its native time
        (the same call's two clocks), the median over the calls."""
        gaps = [(end - start) - (rows[-1, 1] - rows[-1, 0])
                for start, end, rows in self.timeline if rows is not None]
        return max(float(np.median(gaps)), 0.0) if gaps else 0.0

    def table(self, top: int | None = None) -> str:
        """The report ``profile`` prints: a row per kernel (the ``top`` slowest, else all),
        then the step's totals."""
        calls = self.kernels[0].calls if self.kernels else 0
        head = (f"=== profile of {self.name}: {self.plan}, {calls} profiled calls\n"
                f"machine: {self.target}; peak {self.peak_flops / 1e9:.0f} GFLOP/s on "
                f"{self.threads} thread(s) (float32 multiply-adds), copy "
                f"{self.bandwidth / 1e9:.1f} GB/s (one thread)\n")
        cols = (f"{'#':>3} {'kernel':<44} {'calls':>5} {'total ms':>9} {'mean µs':>9} "
                f"{'% step':>6} {'GFLOP/s':>8} {'% peak':>6} {'GB/s':>7} {'% bw':>5}")
        rows = sorted(self.kernels, key=lambda k: -k.total)
        rows = rows[:top] if top else sorted(rows, key=lambda k: k.index)
        native = self.native_seconds
        lines = [head + cols, "-" * len(cols)]
        for k in rows:
            pct = 100 * k.mean / native if native else 0.0
            gf = f"{k.gflops:8.1f} {100 * k.gflops * 1e9 / self.peak_flops:5.0f}%" \
                if k.flops else f"{'—':>8} {'':>6}"
            gb = f"{k.gbps:7.1f} {100 * k.gbps * 1e9 / self.bandwidth:4.0f}%" if k.bytes \
                else f"{'—':>7} {'':>5}"
            label = (k.label if k.native else "numpy: " + k.label)[:44]
            lines.append(f"{k.index:>3} {label:<44} {k.calls:>5} {1e3 * k.total:>9.3f} "
                         f"{1e6 * k.mean:>9.2f} {pct:>5.1f}% {gf} {gb}")
        kernels = sum(k.mean for k in self.kernels)
        flops = sum(k.flops for k in self.kernels)
        lines += ["-" * len(cols),
                  f"step (as called, median): {1e6 * self.step_seconds:.2f} µs; profiled: "
                  f"native {1e6 * native:.2f} µs (kernels {1e6 * kernels:.2f}, between them "
                  f"{1e6 * max(native - kernels, 0):.2f}) + Python side "
                  f"{1e6 * self.overhead_seconds:.2f} µs (guards, arguments, outputs)",
                  f"work: {flops / 1e6:.2f} MFLOP per step, {flops / native / 1e9:.1f} GFLOP/s "
                  f"over the native step ({100 * flops / native / self.peak_flops:.0f}% of "
                  f"peak); FLOP floor at peak {1e6 * flops / self.peak_flops:.2f} µs"
                  if native else "work: —"]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def chrome_trace(self, path) -> Path:
        """Write the profiled calls as Chrome-trace JSON (``traceEvents``: one slice per
        call, its native part and each kernel, in µs); returns the path."""
        events = []
        t0 = self.timeline[0][0] if self.timeline else 0.0
        us = lambda t: round((t - t0) * 1e6, 3)  # noqa: E731
        for s, (start, end, rows) in enumerate(self.timeline):
            events.append({"name": f"{self.name} (call {s})", "ph": "X", "pid": 1, "tid": 1,
                           "ts": us(start), "dur": round((end - start) * 1e6, 3),
                           "cat": "call"})
            if rows is None:
                continue
            a, b = rows[-1]
            events.append({"name": "native plan", "ph": "X", "pid": 1, "tid": 1, "ts": us(a),
                           "dur": round((b - a) * 1e6, 3), "cat": "plan"})
            for k, (ka, kb) in zip(self.kernels, rows[:-1]):
                events.append({"name": f"#{k.index} {k.label}", "ph": "X", "pid": 1,
                               "tid": 1, "ts": us(ka), "dur": round((kb - ka) * 1e6, 3),
                               "cat": k.kind, "args": {"flops": k.flops, "bytes": k.bytes}})
        path = Path(path)
        path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ns",
                                    "otherData": {"target": self.target}}))
        return path

    def plot(self, path, top: int = 15) -> Path:
        """A bar chart of the ``top`` kernels' mean times and the Python side (PNG)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise RuntimeError("Profile.plot needs matplotlib (pip install matplotlib, or "
                               "the 'examples' extra)") from exc
        rows = sorted(self.kernels, key=lambda k: -k.total)[:top]
        labels = [f"#{k.index} {k.label[:40]}" for k in rows] + ["Python side of the call"]
        values = [1e6 * k.mean for k in rows] + [1e6 * self.overhead_seconds]
        colors = {"matmul": "tab:red", "elementwise": "tab:blue", "reduce": "tab:green"}
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
        ax.barh(range(len(labels)), values,
                color=[colors.get(k.kind, "tab:gray") for k in rows] + ["tab:orange"])
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        for i, k in enumerate(rows):
            note = f"{k.gflops:.0f} GFLOP/s" if k.kind == "matmul" else f"{k.gbps:.1f} GB/s"
            ax.text(values[i], i, f" {100 * k.mean / self.native_seconds:.0f}%, {note}",
                    va="center", fontsize=7)
        ax.set_xlabel("µs per call")
        ax.set_title(f"{self.name}: {1e6 * self.step_seconds:.1f} µs per step "
                     f"({self.target.split(';')[0]})", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def profile(fn, *args, steps: int = 20, warmup: int = 3, **kwargs) -> Profile:
    """Profile ``fn(*args, **kwargs)`` kernel by kernel (see the module docstring); prints
    and returns the :class:`Profile`. ``fn`` is a compiled function, or a plain function
    compiled here. Needs the LLVM backend. Example::

        prof = compiler.profile(step, x, y, steps=50)
    """
    from .backends.llvm import machine, target

    if steps < 1:
        raise ValueError(f"profile: steps must be at least 1, got {steps}")
    cf = fn if isinstance(fn, CompiledFunction) else compile(fn)
    if cf.backend != "llvm":
        raise ValueError(f"profile: {cf.__name__} is compiled for backend {cf.backend!r}; "
                         f"the profiler times native kernels: compile it with backend='llvm'")
    for _ in range(max(warmup, 1)):
        cf(*args, **kwargs)
    variant = _serving(cf, args, kwargs)
    step = _median_wall(cf, args, kwargs, steps)
    swaps = _profiled_plans(variant, args, kwargs)
    prof_plan = swaps[0][2]
    kernels = [_stats(k, prof_plan.plan.g if prof_plan.native else variant.trace.graph, grp,
                      prof_plan.native, prof_plan)
               for k, grp in enumerate(prof_plan.groups)]
    timeline, natives = [], []
    origin_tsc, origin = machine.tsc(), time.perf_counter()  # (the clocks lined up)
    hz = machine.tsc_hz()
    try:
        for put, _, profiled in swaps:
            put(profiled.plan)
        for _ in range(steps):
            a = time.perf_counter()
            cf(*args, **kwargs)
            b = time.perf_counter()
            rows = prof_plan.seconds()
            if rows is not None and prof_plan.native:  # TSC seconds -> perf_counter's
                rows = rows - origin_tsc / hz + origin
            timeline.append((a, b, rows))
            if rows is not None:
                natives.append(rows[-1, 1] - rows[-1, 0])
                for k, (ka, kb) in zip(kernels, rows[:-1]):
                    k.seconds.append(kb - ka)
    finally:
        for put, original, _ in swaps:
            put(original)
    if not natives:
        raise RuntimeError(f"profile: no profiled call of {cf.__name__} ran its compiled "
                           f"plan to the end (guards failed: the calls ran eagerly)")
    runner_plan = "one native driver call" if prof_plan.native else \
        f"hybrid plan ({sum(k.native for k in kernels)} of {len(kernels)} groups native)"
    result = Profile(cf.__name__, kernels, step, float(np.mean(natives)), timeline,
                     machine.peak_flops(), machine.copy_bandwidth(), machine.team_threads(),
                     target.current().describe(), runner_plan)
    print(result)
    return result


def _serving(cf: CompiledFunction, args, kwargs):
    """The variant that serves a call with these arguments (its call count moves)."""
    before = {id(v): v.calls for v in cf.variants}
    cf(*args, **kwargs)
    moved = [v for v in cf.variants if v.calls != before.get(id(v), 0)]
    if not moved:
        why = cf.eager_reason or (cf.fallbacks[-1] if cf.fallbacks else "no variant served it")
        raise RuntimeError(f"profile: the call of {cf.__name__} ran eagerly ({why}); nothing "
                           f"compiled to profile")
    return moved[0]


def _median_wall(cf, args, kwargs, steps: int) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        cf(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _profiled_plans(v, args, kwargs) -> list:
    """[(put(plan), original plan, runner.Profiled)] for the variant's forward plan at
    the size these arguments have."""
    from .backends.llvm import driver, runner
    from .guards import flatten
    if v.sym is None:
        return [(v.use_plan, v.plan, runner.profiled(v.trace.graph, v.inplace, v.groups))]
    size = v.sym.size(flatten(args, kwargs)[0])  # (a symbolic variant: this size's plan,
    fwd, bwd = v.plans[size]  #                     made by the calls before)
    if fwd.__class__ is not driver.DriverPlan:
        raise NotImplementedError("profile: a variant with symbolic sizes whose plan is not "
                                  "one native driver call (compile with dynamic=False)")

    def put_sized(plan):
        v.plans[size] = (plan, bwd)
    return [(put_sized, fwd, runner.profiled(fwd.g, v.inplace))]


def _stats(k: int, g, grp, native: bool, prof) -> KernelStats:
    flops, nbytes = _work(g, grp)
    if not prof.native:
        from .backends.llvm import codegen
        native = codegen.lowerable(g, grp)
    return KernelStats(k, grp.kind, _label(g, grp), native, flops, nbytes,
                       late=max(grp.nodes, default=-1) >= g.late_from())


def _label(g, grp) -> str:
    """What a group computes, short: its primitives (a matmul with its shape)."""
    nodes = [g.nodes[i] for i in grp.nodes]
    if grp.kind == "matmul":
        n = next(n for n in nodes if n.prim.kind == "matmul")
        a, b = n.inputs[0], n.inputs[1]
        return (f"matmul {'x'.join(map(str, a.shape))}{'ᵀ' if n.params.get('ta') else ''} @ "
                f"{'x'.join(map(str, b.shape))}{'ᵀ' if n.params.get('tb') else ''}")
    names = [n.prim.name for n in nodes if n.prim.kind != "movement"] or \
        [n.prim.name for n in nodes]
    counted = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    ops = " ".join(name if c == 1 else f"{name}×{c}" for name, c in counted.items())
    return f"{grp.kind} {'x'.join(map(str, grp.shape)) or '()'}: {ops}"


def _work(g, grp) -> tuple[float, float]:
    """(FLOPs, compulsory bytes) of one call of a group (see the module docstring)."""
    from .backends.llvm import vecmath, window
    from .ir import Value

    def nbytes(v) -> float:
        if not isinstance(v, Value):
            return 0.0
        return math.prod(v.shape) * (8 if v.weak or v.dtype is None else v.dtype.np.itemsize)

    traffic = sum(nbytes(v) for v in grp.inputs) + sum(nbytes(v) for v in grp.outputs)
    flops = 0.0
    for i in grp.nodes:
        n = g.nodes[i]
        out = math.prod(n.out.shape)
        if n.prim.kind == "matmul":
            a = n.inputs[0]
            flops += 2 * out * (a.shape[-2] if n.params.get("ta") else a.shape[-1])
        elif n.prim.kind == "reduce":
            flops += math.prod(n.inputs[0].shape)
        elif n.prim.kind == "elementwise":
            fn = vecmath.PRIMITIVES.get(n.prim)
            vector_math = fn is not None and n.out.dtype is not None \
                and n.out.dtype.np == np.float32  # (float32 only: vecmath's functions)
            flops += out * (vecmath.flops(fn) if vector_math else 1)
        elif n.prim.kind == "window":
            flops += window.flops(n)
    return flops, traffic
