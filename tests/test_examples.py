"""The examples and the benchmark run end to end (each asserts its own claims)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_seeds_tour_runs(tmp_path):
    out = run([str(ROOT / "examples/seeds_tour.py"), "--plot", str(tmp_path / "t.png")],
              tmp_path)
    assert "retain_graph" in out


def test_d2l_exercises_run(tmp_path):
    out = run([str(ROOT / "examples/d2l_autograd_exercises.py"), "--out", str(tmp_path),
               "--dot", str(tmp_path / "f.dot"), "--quick"], tmp_path)
    assert (tmp_path / "f.dot").read_text().startswith(("digraph", "strict digraph"))
    assert "reverse" in out.lower()


def test_train_mlp_trains_eager_and_compiled_twins_to_the_same_losses(tmp_path):
    out = run([str(ROOT / "examples/train_mlp.py"), "--plot", str(tmp_path / "m.png")],
              tmp_path)  # (the script asserts > 95% accuracy and equal losses itself)
    worst = float(re.search(r"largest relative difference (\S+)", out).group(1))
    assert worst < 1e-3
    eager = float(re.search(r"^  eager\s+(\d+)", out, re.M).group(1))
    compiled = float(re.search(r"^  compiled \(llvm\)\s+(\d+)", out, re.M).group(1))
    assert eager > 0 and compiled > 0  # (the table is there; timings are not asserted)
    assert (tmp_path / "m.png").stat().st_size > 0


def test_digits_compiled_step_reaches_accuracy_and_matches_eager(tmp_path):
    pytest.importorskip("sklearn")
    out = run([str(ROOT / "examples/digits.py"), "--quick", "--plot", str(tmp_path / "d.png")],
              tmp_path)  # (the script asserts > 90% in quick mode and losses equal to eager's)
    acc = float(re.search(r"test accuracy ([\d.]+)% compiled", out).group(1))
    assert acc > 90.0
    assert float(re.search(r"loss difference from eager over all steps: (\S+)",
                           out).group(1)) < 1e-3
    assert "compiled variants: 2" in out  # the full batches and the last, smaller one
    assert (tmp_path / "d.png").stat().st_size > 0


def test_cnn_digits_lenet_and_resnet_train_compiled_beside_eager(tmp_path):
    pytest.importorskip("sklearn")
    out = run([str(ROOT / "examples/cnn_digits.py"), "--quick", "--plot",
               str(tmp_path / "c.png")], tmp_path)  # (the script asserts its claims)
    for name in ("LeNet", "ResNet"):
        acc = float(re.search(rf"^{name}: \d+ steps; test accuracy ([\d.]+)% compiled", out,
                              re.M).group(1))
        assert acc > 80.0, out
    assert (tmp_path / "c.png").stat().st_size > 0


def test_control_flow_variants_agree_with_eager_and_explain_shows_value_guards(tmp_path):
    out = run([str(ROOT / "examples/control_flow.py"), "--quick", "--plot",
               str(tmp_path / "c.png")], tmp_path)
    assert "value guards (recomputed by the compiled program)" in out
    assert re.search(r"bool at control_flow\.py:\d+: %\d+ == array\(False\)", out)
    assert "traced variant 2" in out and "cache_limit reached" in out
    assert float(re.search(r"compiled vs eager \(f\(a\) and grad\): (\S+)", out).group(1)) \
        < 1e-6
    assert (tmp_path / "c.png").stat().st_size > 0


def test_char_rnn_one_variant_per_bucket(tmp_path):
    out = run([str(ROOT / "examples/char_rnn.py"), "--quick", "--plot",
               str(tmp_path / "r.png")], tmp_path)
    assert "=== train_step: 2 variant(s)" in out
    assert "shape of argument 0 == (32, 4)" in out and "shape of argument 0 == (32, 8)" in out
    assert float(re.search(r"largest relative difference (\S+)", out).group(1)) < 1e-4
    assert "The compiler " in out  # the sampled text
    assert (tmp_path / "r.png").stat().st_size > 0


def test_nanogpt_char_trains_compiled_in_one_variant_equal_to_eager_and_samples(tmp_path):
    out = run([str(ROOT / "examples/nanogpt_char.py"), "--quick", "--plot",
               str(tmp_path / "g.png")], tmp_path)  # (the script asserts its claims)
    assert "=== train_step: 1 variant(s)" in out  # (the lr set before every step)
    assert "backend: all " in out and "kernels native, run by one driver call" in out
    assert float(re.search(r"largest relative difference (\S+)", out).group(1)) < 1e-4
    first, last = map(float, re.search(r"training loss ([\d.]+) \(first 10 steps\) → "
                                       r"([\d.]+) \(last 20\)", out).groups())
    assert last < first - 0.3, out
    sample = out.split("sampled (temperature 0.8, top_k 20):\n", 1)[1]
    assert sample.startswith("def ") and len(sample.split("\nplot written")[0]) >= 84
    assert (tmp_path / "g.png").stat().st_size > 0


@pytest.mark.slow
def test_eager_overhead_benchmark_quick(tmp_path):
    out = run([str(ROOT / "benchmarks/eager_overhead.py"), "--quick", "--json",
               str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")], tmp_path)
    assert (tmp_path / "b.json").exists() and "training step" in out
