"""The corpus of public PyTorch programs (tests/corpus/), ported by changing only their imports.

Each runnable quick form runs under dyngrad eager, under PyTorch (where it is installed) with
the original imports and the same initial weights and data (corpus_harness.shared_random), and
compiled; the comparisons use each form's tolerance (corpus_harness.FORMS): float32 programs
rtol 1e-4, atol 1e-5 (measured: at most 5e-7 relative after 2000 SGD steps); float64 programs
rtol 1e-9, atol 1e-11; compiled against eager: the same on the LLVM backend, bit for bit on
the interpreter (DYNGRAD_BACKEND=interp). Forms that need a feature dyngrad lacks are in
NOT_YET with the error they stop at; when a feature lands, their test fails: move the form to
RUNNABLE and update tests/corpus/STATUS.md (``python tests/corpus/run.py`` prints it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import on_llvm

CORPUS = Path(__file__).resolve().parent / "corpus"
sys.path.insert(0, str(CORPUS))

import corpus_harness as harness  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None

RUNNABLE = [
    "examples_mnist",
    "examples_mnist_rnn",
    "examples_gat",
    "examples_gcn",
    "examples_super_resolution_model",
    "examples_fast_neural_style_transformer_net",
    "examples_regression",
    "examples_time_sequence_prediction",
    "examples_time_sequence_prediction:lbfgs",
    "nanogpt_model",
    "micrograd_test_engine",
    *[f"makemore:{kind}" for kind in ["bigram", "mlp", "rnn", "gru", "bow", "transformer"]],
    "tutorials_polynomial_optim",
    "tutorials_polynomial_nn",
    "tutorials_polynomial_module",
    "tutorials_polynomial_custom_function",
    "tutorials_polynomial_autograd",
    "tutorials_nlp_advanced",
    "tutorials_nlp_sequence_models",
    "tutorials_nlp_word_embeddings",
    "tutorials_nlp_deep_learning",
    "tutorials_blitz_neural_networks",
    "mingpt_model",
    "examples_word_language_model",
    "examples_word_language_model:transformer",
    "pytorch_cifar_resnet",
    "examples_dcgan",
    "examples_vae",
    "examples_vae:seeded",
    "torchvision_mobilenetv2",
    "torchvision_mnasnet",
    "torchvision_shufflenetv2",
    "torchvision_squeezenet",
    "torchvision_densenet",
    "torchvision_googlenet",
    "torchvision_resnet",
    "d2l_torch:train_ch6",
    "d2l_torch:bert",
    "d2l_torch:transformer_encoder",
]

# form -> the start of the error its quick form stops at under dyngrad today
NOT_YET: dict[str, str] = {}

PROGRAM_FILES = sorted(p.stem for p in CORPUS.glob("*.py") if p.stem not in (
    "corpus_harness", "run", "micrograd_engine", "mingpt_utils"))


def test_every_quick_form_is_either_runnable_or_not_yet():
    assert not set(RUNNABLE) & set(NOT_YET)
    assert sorted([*RUNNABLE, *NOT_YET]) == sorted(harness.FORMS)
    assert sorted({f.program for f in harness.FORMS.values()}) == PROGRAM_FILES


@pytest.mark.parametrize("program", PROGRAM_FILES)
def test_program_names_its_source_and_licence_and_changes_only_import_lines(program):
    text = (CORPUS / f"{program}.py").read_text()
    assert "# Source: https://github.com/" in text and "# Licence: " in text
    ports = harness.ports(program)
    assert ports, "a corpus program lists the import lines it changed"
    body = [line for line in text.splitlines() if not line.startswith("# port: ")]
    for original, ported in ports:
        assert ported.startswith(("import ", "from ", "# import ", "# from ")), ported
        assert original.startswith(("import ", "from ")), original
        assert ported in body, f"declared port not in the program: {ported}"
    changed = {ported for _, ported in ports}
    assert [line for line in body if "dyngrad" in line and line not in changed] == []
    original = harness.source(program, "torch").splitlines()
    assert [line for line in original if "dyngrad" in line and not line.startswith("#")] == []


@pytest.mark.parametrize("name", RUNNABLE)
def test_program_runs_under_dyngrad_and_matches_pytorch(name):
    form = harness.FORMS[name]
    ours = harness.run_quick(name, "dyngrad")
    if not HAS_TORCH:
        pytest.skip("PyTorch not installed: ran under dyngrad only")
    theirs = harness.run_quick(name, "torch")
    assert harness.mismatches(form, ours, theirs, against_torch=True) == []


# compiled forms whose compile alone takes 20-55 s on CI's 2-core machine (GoogLeNet's 57
# convolutions, MobileNetV2's 52): run by `make test` and tests/corpus/run.py, not in CI's
# budget (CI=true)
HEAVY = {"torchvision_googlenet", "torchvision_mobilenetv2"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
    for n in RUNNABLE if harness.FORMS[n].compiles])
def test_program_compiled_matches_eager(name):
    if name in HEAVY and os.environ.get("CI"):
        pytest.skip("a compile-heavy form: run outside CI (make test, tests/corpus/run.py)")
    # bit for bit on the interpreter; on the LLVM backend within the form's tolerance
    form = harness.FORMS[name] if on_llvm() else replace(harness.FORMS[name], rtol=0, atol=0)
    eager = harness.run_quick(name, "dyngrad")
    harness.COMPILED.clear()
    compiled = harness.run_quick(name, "dyngrad", compiled=True)
    assert harness.COMPILED and all(f.variants for f in harness.COMPILED), \
        "the compiled run never compiled (it stayed eager)"
    assert harness.mismatches(form, compiled, eager) == []


@pytest.mark.parametrize("name", list(NOT_YET))
def test_not_yet_program_still_fails_with_its_recorded_reason(name):
    error = harness.first_error(name)
    assert error is not None, (
        f"{name} runs now: move it from NOT_YET to RUNNABLE in tests/test_corpus.py and "
        "update tests/corpus/STATUS.md (python tests/corpus/run.py)")
    assert error.startswith(NOT_YET[name]), (
        f"{name} now stops at a different error: {error!r} (was {NOT_YET[name]!r}); update "
        "NOT_YET and tests/corpus/STATUS.md")


def test_status_table_lists_every_form_and_every_reason():
    status = (CORPUS / "STATUS.md").read_text()
    for name in harness.FORMS:
        assert f"`{name}`" in status, name
    for reason in NOT_YET.values():
        assert reason.split(": ", 1)[1] in status, reason


def test_run_script_prints_a_status_row_per_form(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(CORPUS.parents[1]))
    proc = subprocess.run([sys.executable, str(CORPUS / "run.py"), "micrograd", "regression"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["examples_regression", "micrograd_test_engine"]
    assert "| yes |" in rows[0] and "| yes |" in rows[1]
