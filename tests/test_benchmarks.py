"""``python -m benchmarks --quick`` is the suite's CI smoke test: every workload runs in
every mode and agrees with eager, the sweep covers its sizes, W7 reports its goals — never
a timing asserted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W7a", "W7b", "W8")


# the tests that read the quick run share one worker (``make test``'s ``--dist loadgroup``),
# and the run (~100 s) is made once per session: a module fixture is made again whenever
# the worker ran another module's tests in between, which xdist's order allows
ONE_QUICK_RUN = pytest.mark.xdist_group("benchmarks_quick_run")


@pytest.fixture(scope="session")
def quick(tmp_path_factory):
    """The quick run's JSON (one run for every test here), in a fresh cache directory."""
    tmp = tmp_path_factory.mktemp("bench")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", TMPDIR=str(tmp),
               DYNGRAD_CACHE_DIR=str(tmp / "cache"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json",
                           str(tmp / "quick.json"), "--plot", str(tmp / "quick.png")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "quick.json").read_text()), proc.stdout, tmp


@ONE_QUICK_RUN
def test_quick_run_reports_no_problems_and_prints_the_table(quick):
    results, out, tmp = quick
    assert results["problems"] == []
    assert "every mode ran and agreed with eager" in out
    for name in WORKLOADS:
        assert f"\n{name}  " in out
    assert (tmp / "quick.png").exists()


def expected_modes(name: str) -> set:
    modes = {"eager", "interp", "llvm"}
    if name == "W1":
        modes.add("numpy")  # (the hand-written step)
    if HAS_TORCH:
        modes.add("torch")  # (torch.compile only in the full run)
    if HAS_JAX:
        modes.add("jax")  # (the optional mirror: where JAX is installed)
    return modes


@pytest.mark.parametrize("name", list(WORKLOADS))
@ONE_QUICK_RUN
def test_every_mode_of_every_workload_ran_and_agreed_with_eager(quick, name):
    w = quick[0]["workloads"][name]
    modes = w["modes"]
    assert set(modes) == expected_modes(name)
    for mode, e in modes.items():
        assert e["ran"], (mode, e.get("error"))
        assert e["us"] > 0 and e["samples"] >= 1
        if mode == "eager":
            continue
        if e["tolerance"] is None:  # (W7a's PyTorch: its own dropout masks) said why
            assert e["agreed"] is None and mode in ("torch", "jax") and w["tolerance_why"], \
                mode
        else:
            assert e["agreed"] and e["max_rel_diff"] <= e["tolerance"], mode


@pytest.mark.parametrize("name", list(WORKLOADS))
@ONE_QUICK_RUN
def test_compiled_modes_ran_compiled_with_variants_and_first_call_figures(quick, name):
    modes = quick[0]["workloads"][name]["modes"]
    for mode in ("interp", "llvm"):
        e = modes[mode]
        assert e["compiled_calls"] > 0 and e["variants"] >= 1 and e["eager_reason"] is None
        assert e["fallbacks"] >= 0 and e["recompiles"] >= 0
        assert "first_cold_ms" in e
    assert "first_disk_ms" in modes["llvm"]
    for when in ("cold", "disk"):  # (the first compile: the warm-up less its steps)
        assert modes["llvm"][f"compile_{when}_ms"] < modes["llvm"][f"first_{when}_ms"]
    assert "peak_mb" in modes["eager"] and "peak_mb" in modes["llvm"]


@ONE_QUICK_RUN
def test_w5_makes_one_variant_per_sequence_length(quick):
    w5 = quick[0]["workloads"]["W5"]
    lengths = {shapes[0][0] for shapes in w5["inputs"]}
    assert len(lengths) == len(w5["inputs"]) >= 2
    assert w5["modes"]["llvm"]["variants"] >= len(lengths)


@pytest.mark.parametrize("name, n_goals", [("W7a", 6), ("W7b", 6), ("W8", 8)])
@ONE_QUICK_RUN
def test_w7_and_w8_compare_twenty_steps_with_eager_and_report_every_goal(quick, name,
                                                                         n_goals):
    """The convnets' and nanoGPT's goals are judged from the run's figures — each met,
    missed, or not measured with a reason — and never fail it (no verdict asserted here)."""
    w = quick[0]["workloads"][name]
    assert w["compared_calls"] == 20
    llvm = w["modes"]["llvm"]
    assert len(llvm["rel_diff_per_call"]) == 20
    assert llvm["max_rel_diff_all"] == max(llvm["rel_diff_per_call"])
    assert len(w["goals"]) == n_goals
    for g in w["goals"]:
        assert g["met"] in (True, False, None), g
        assert (g["value"] is None) == (g["met"] is None) and (g["met"] is not None
                                                               or g["why"]), g
    assert any(g["value"] is not None for g in w["goals"])  # (first calls, agreement)
    if name == "W7b":  # agreement judged against the float64 run: both distances kept
        assert len(w["float32_drift_per_call"]) == 20
        assert llvm["vs_float64"] == llvm["max_rel_diff_f64"] / w["float32_drift"]


@ONE_QUICK_RUN
def test_w8_one_variant_over_the_run_and_every_step_compiled_after_the_first(quick):
    """The suite counts W8's variants after hundreds of steps, each with its own learning
    rate: still one, never recompiled; the goal saying so is met."""
    llvm = quick[0]["workloads"]["W8"]["modes"]["llvm"]
    assert llvm["variants"] == 1 and llvm["recompiles"] == 0
    assert llvm["fallbacks"] <= 1  # (the first call, which creates AdamW's state)
    goal = next(g for g in quick[0]["workloads"]["W8"]["goals"] if "one variant" in g["goal"])
    assert goal["value"] == 1 and goal["met"] is True


def test_w8_lr_schedule_and_clipping_do_not_recompile_and_equal_eager():
    """W8 sets train.py's learning rate into AdamW's groups before every step, outside the
    compiled step: the optimizer reads it as a run-time number, so after the warm-up (one
    call that creates AdamW's state, one traced call) the step keeps one variant and
    every later call runs compiled with that step's rate — equal to eager, which a rate
    baked in at the trace would not be."""
    import compiler
    from benchmarks import measure, nanogpt, workloads
    w8 = workloads.WORKLOADS["W8"]
    ours, theirs = w8.build(True), w8.build(True)
    cf = compiler.compile(ours.step, backend="llvm")
    run, eager = ours.runnable(cf), theirs.runnable()
    n = 12
    lrs, variants, losses, eager_losses = [], [], [], []
    for _ in range(n):
        losses.append(run(*ours.calls[0]))
        eager_losses.append(eager(*theirs.calls[0]))
        lrs.append([g["lr"] for g in ours.opt.param_groups])
        variants.append(len(cf.variants))
    train = ours.train
    assert lrs == [[nanogpt.get_lr(k, train)] * 2 for k in range(n)]  # a new rate each step
    assert len(set(lr for lr, _ in lrs)) == n
    assert variants == [1] * n and not cf.recompiles and cf.eager_reason is None
    assert sum(v.calls for v in cf.variants) == n - 1  # (the first call traced it)
    assert measure.max_rel_diff(eager_losses, losses) <= 1e-4
    decayed, plain = ours.opt.param_groups  # nanoGPT's groups: 2-D parameters decayed
    assert decayed["weight_decay"] == train.weight_decay and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"])
    assert all(p.dim() < 2 for p in plain["params"]) and plain["params"]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_w7a_mirror_equals_eager_with_dropout_off(framework):
    """The suite cannot judge W7a's mirrors (their dropout masks are their own); with
    dropout off (the model in eval mode: it has no BatchNorm) they equal eager."""
    if not (HAS_TORCH if framework == "torch" else HAS_JAX):
        pytest.skip(f"{framework} is not installed")
    from benchmarks import measure, workloads
    mirror = importlib.import_module(f"benchmarks.{framework}_mirror")
    inst = workloads.WORKLOADS["W7a"].build(True)
    inst.model.eval()
    step, calls = mirror.MIRRORS["mnist"](inst)  # (before eager's steps change the weights)
    theirs = [step(*calls[0]) for _ in range(4)]
    ours = [inst.step(*inst.calls[0]) for _ in range(4)]
    assert measure.max_rel_diff(ours, theirs) <= 1e-4


@ONE_QUICK_RUN
def test_w6_measures_both_modes_eager_and_compiled_at_every_size(quick):
    w6 = quick[0]["W6"]
    sizes = w6["sizes"]
    assert len(sizes) >= 2 and sizes[0] < sizes[-1]
    assert {(p["n"], p["m"]) for p in w6["points"]} == {(n, m) for n in sizes for m in sizes}
    for kind, c in w6["compiled"].items():  # compile(func.jacfwd(f)) / jacrev traced whole
        assert c["supported"] and c["agreed"], (kind, c)
    for p in w6["points"]:
        for kind in ("jacfwd", "jacrev", "jacfwd llvm", "jacrev llvm"):
            assert p["modes"][kind]["agreed"] and p["modes"][kind]["us"] > 0, (p, kind)


@ONE_QUICK_RUN
def test_the_size_sweep_covers_its_widths_in_eager_and_compiled(quick):
    sweep = quick[0]["sweep"]
    assert [p["width"] for p in sweep["points"]] == sweep["widths"]
    assert sweep["widths"][0] == 16 and sweep["widths"][-1] >= 1024
    for p in sweep["points"]:
        for mode in ("eager", "llvm", "numpy"):
            assert p["modes"][mode]["ran"], (p["width"], mode)
        assert p["modes"]["llvm"]["agreed"]
        assert isinstance(p["compiled_slower"], bool)  # flagged, never asserted


@ONE_QUICK_RUN
def test_the_machine_limits_are_measured_in_the_same_run(quick):
    m = quick[0]["machine"]
    assert m["copy_gbps"] > 0 and m["matmul_gflops"] > 0
    assert quick[0]["workloads"]["W2"]["bound_us"] > 0


def test_symbolic_sizes_quick_run_shares_modules_and_agrees_with_eager(tmp_path):
    """``benchmarks/symbolic_sizes.py --quick``: every new batch size's first two steps agree
    with eager on both paths, and the symbolic one ran them on shared template modules."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    out = tmp_path / "sizes.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "symbolic_sizes.py"),
                           "--quick", "--json", str(out), "--plot", str(tmp_path / "s.png")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["rows"] and all(r["shared_agrees"] and r["alone_agrees"] for r in res["rows"])
    assert res["templates"] >= 1 and res["own_sizes"] == 0
    assert res["shared_sizes"] >= len(res["rows"])
    assert "first, second ms" in proc.stdout


def test_first_calls_compare_cold_code_on_disk_and_plans_on_disk(tmp_path):
    """``benchmarks.firstcall --compare``: new processes started cold, with the compiled
    code on disk and with code, plans and variants on disk — the last restores its plans
    and variants and traces nothing (never a timing asserted)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    env.pop("DYNGRAD_PLAN_CACHE", None)  # (each process is given its own setting)
    png = tmp_path / "first.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.firstcall", "W2", "--compare",
                           "--quick", "--repeats", "1", "--plot", str(png)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])["W2"]
    assert runs["cold"]["cache_compiled"] >= 1 and runs["cold"]["plans_restored"] == 0
    assert runs["disk, objects only"]["cache_compiled"] == 0
    assert runs["disk, objects only"]["plans_restored"] == 0
    last = runs["disk, objects, plans, variants"]
    assert last["plans_restored"] == runs["cold"]["variants"]
    assert last["variants_restored"] == runs["cold"]["variants"] and last["trace_ms"] == 0
    assert png.exists()


def test_profiles_quick_run_prints_a_table_and_writes_a_trace_per_workload(tmp_path):
    """``benchmarks/profiles.py --quick``: compiler.profile of each workload's compiled
    step, its table printed, its Chrome trace written (never a timing asserted)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profiles.py"), "--quick",
                           "--only", "W1,W2", "--steps", "2", "--out", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("=== profile of step: one native driver call") == 2
    for name in ("W1", "W2"):
        trace = json.loads((tmp_path / f"{name}.json").read_text())
        assert any(e["cat"] == "matmul" for e in trace["traceEvents"])


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch mirror needs torch")
def test_the_nanogpt_model_modules_stay_importable_by_name():
    """torch.compile resolves the model's functions' module by name (``sys.modules``); the
    corpus loader unregisters what it ran, so W8's loader registers the modules it keeps
    (W8's torch.compile mirror failed with ModuleNotFoundError without it)."""
    from benchmarks import nanogpt
    for framework in ("dyngrad", "torch"):
        mod = nanogpt.model_module(framework)
        assert sys.modules[mod.__name__] is mod
        assert sys.modules[mod.GPT.forward.__module__] is mod


def test_the_data_parallel_model_hides_buckets_behind_the_backward_only_when_it_can():
    """benchmarks/scaling.py's model: one machine pays nothing; a single bucket is ready
    only at the backward's end (all exposed); an early bucket hides behind the rest of the
    backward; a ring's latency grows with the machines, recursive halving's with their
    logarithm; and a quick run measures both workloads and writes its rows."""
    from benchmarks import scaling
    mib = scaling.MB
    one = scaling.Step("one", 10e-3, 3e-3, 7e-3, 1e-3, 0.0, 1, [4 * mib])
    r = scaling.data_parallel(one, 1, 1e9, 1e-5)
    assert r["efficiency"] == 1.0 and r["allreduce_ms"] == 0.0
    r = scaling.data_parallel(one, 8, 1e9, 1e-5)
    assert r["exposed_ms"] == pytest.approx(r["allreduce_ms"])  # nothing to hide behind
    two = scaling.Step("two", 10e-3, 3e-3, 7e-3, 1e-3, 0.0, 1, [1 * mib, 1 * mib])
    r = scaling.data_parallel(two, 8, 1e9, 1e-5)
    first = scaling.allreduce_seconds(mib, 8, 1e9, 1e-5) * 1e3
    assert r["exposed_ms"] == pytest.approx(r["allreduce_ms"] - first)  # the first hides
    ring = [scaling.data_parallel(two, p, 1e9, 1e-5)["allreduce_ms"] for p in (8, 512)]
    halving = [scaling.data_parallel(two, p, 1e9, 1e-5, "halving")["allreduce_ms"]
               for p in (8, 512)]
    assert ring[1] > 5 * ring[0] and halving[1] < 1.5 * halving[0]
    assert scaling.messages(512, "ring") == 1022 and scaling.messages(512, "halving") == 18


def test_scaling_quick_run(tmp_path):
    out = tmp_path / "scaling.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--quick",
                          "--steps", "2", "--json", str(out)], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    assert [s["name"] for s in data["steps"]] == ["W2", "W8"]
    assert all(s["forward_s"] > 0 and s["after_s"] > 0 and s["buckets"] for s in data["steps"])
    assert len(data["rows"]) == 2 * len(scaling_networks()) * 3


def scaling_networks():
    from benchmarks import scaling
    return scaling.NETWORKS


@pytest.mark.mpi
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                    reason="the dist extra (mpi4py, mpich) is not installed")
def test_distributed_quick_run_compares_two_ranks_with_two_threads(tmp_path):
    out = tmp_path / "distributed.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--distributed", "--quick",
                          "--only", "W2", "--json", str(out)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| W2 |" in run.stdout
    (w2,) = json.loads(out.read_text())["workloads"]
    assert w2["one_native_call"] and w2["buckets_bytes"]
    assert w2["one_rank_two_threads_s"] > 0 and w2["two_ranks_one_thread_s"] > 0
    assert 0.0 <= w2["hidden"] <= 1.0 and w2["allreduce_s"] > 0
