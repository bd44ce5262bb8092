"""The examples and the benchmark run end to end (each asserts its own claims)."""

import os
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


def test_train_mlp_reaches_accuracy(tmp_path):
    out = run([str(ROOT / "examples/train_mlp.py"), "--plot", str(tmp_path / "m.png")],
              tmp_path)
    assert "accuracy" in out


@pytest.mark.slow
def test_eager_overhead_benchmark_quick(tmp_path):
    out = run([str(ROOT / "benchmarks/eager_overhead.py"), "--quick", "--json",
               str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")], tmp_path)
    assert (tmp_path / "b.json").exists() and "training step" in out
