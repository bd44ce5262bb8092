"""A new process's first training step, run by a variant kept on disk (Note [a first step
from a filled state] in compiler/variantcache.py): the optimizer's state is filled as a
first ``step()`` would fill it, then the steady variant runs — with the bits of a process
that ran that first step eagerly, in outputs, parameters and optimizer state (values, keys
and order). Where filling early could be seen — the function reads the state, hands the
optimizer to other code, or its optimizer's first step is no fill (SGD with dampening) —
the first step stays eager; where the filled variant is refused, the state is emptied first."""

from __future__ import annotations

import shutil
import textwrap

import numpy as np
import pytest
from _variant_programs import run

PROGRAM = textwrap.dedent("""
    import json, sys
    import numpy as np
    import dyngrad as dg, dyngrad.nn as nn, dyngrad.optim as optim, compiler
    from compiler import variantcache

    which = sys.argv[1]
    dg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = {OPT}
    rng = np.random.default_rng(1)
    BATCH = {BATCH}
    xs = [dg.tensor(rng.standard_normal((BATCH, 4)).astype(np.float32)) for _ in range(4)]
    ys = [dg.tensor(rng.standard_normal((BATCH, 3)).astype(np.float32)) for _ in range(4)]

    @compiler.compile
    def step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        {BEFORE}
        opt.step()
        return loss{RETURN}

    calls = [step(xs[0], ys[0])]
    first_eager = sum(v.calls for v in step.variants) == 0  # (no variant served it: a
    calls += [step(x, y) for x, y in zip(xs[1:], ys[1:])]  # trace or eager, not compiled)
    out = {{
        "calls": [float(c) if not isinstance(c, tuple) else [float(e) for e in c]
                  for c in calls],
        "params": [p.detach().numpy().ravel().tolist() for p in model.parameters()],
        "state": [[k, v.numpy().ravel().tolist()] for st in opt.state.values()
                  for k, v in st.items()],
        "order": [i for p in opt.state for i, q in enumerate(model.parameters()) if q is p],
        "first_eager": first_eager,
    }}
""")


def _program(opt: str, before: str = "pass", ret: str = "", batch: str = "16") -> str:
    return PROGRAM.format(OPT=opt, BEFORE=before, RETURN=ret, BATCH=batch)


def _agree(got: dict, want: dict) -> None:
    """The same state, in keys and order, and the same numbers to float32 rounding (from
    the second call on one run's steps are compiled where the other's were eager)."""
    assert [k for k, _ in got["state"]] == [k for k, _ in want["state"]]
    assert got["order"] == want["order"]
    for part in ("calls", "params"):
        np.testing.assert_allclose(np.hstack(got[part]), np.hstack(want[part]), rtol=1e-5,
                                   atol=1e-6, err_msg=part)
    np.testing.assert_allclose(np.hstack([v for _, v in got["state"]]),
                               np.hstack([v for _, v in want["state"]]), rtol=2e-4,
                               atol=1e-9, err_msg="state")  # (centered RMSprop's momentum
    #  divides by √(E[g²] − E[g]²): rounding grows there; a wrong fill is off by O(1))


def _runs(tmp_path, program: str):
    """(the filling run, the run over its cache, the run without a cache) of ``program``;
    the filling run is the one without a cache where the program's versions are the same
    (a cold process traces what one without the cache traces)."""
    fill = run(tmp_path, program, "a", tmp_path / "cache", True)
    shutil.copytree(tmp_path / "cache", tmp_path / "plain")
    got = run(tmp_path, program, "b", tmp_path / "cache", True)
    same = "which" not in program.split("which = sys.argv[1]", 1)[1]
    want = fill if same else run(tmp_path, program, "b", tmp_path / "plain", False)
    return fill, got, want


FILLING = {
    "adamw": "optim.AdamW(model.parameters(), lr=1e-2)",
    "adam-amsgrad": "optim.Adam(model.parameters(), lr=1e-2, amsgrad=True, weight_decay=0.1)",
    "adadelta": "optim.Adadelta(model.parameters(), lr=1.0)",
    "rmsprop": "optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9, centered=True)",
    "sgd-momentum": "optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)",
    "sgd-nesterov": "optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True, "
                    "weight_decay=1e-3)",
    "two-groups": "optim.Adam([{'params': model[0].parameters()}, "
                  "{'params': model[2].parameters(), 'lr': 1e-3}], lr=1e-2)",
}


@pytest.mark.parametrize("name", FILLING)
def test_the_first_step_runs_the_kept_variant_with_eagers_bits(tmp_path, name):
    fill, got, want = _runs(tmp_path, _program(FILLING[name]))
    assert fill["out"]["first_eager"] and want["out"]["first_eager"]
    assert not got["out"]["first_eager"], "the first call ran eagerly over a filled cache"
    assert got["stats"]["restored"] == 1 and got["stats"]["refused"] == 0
    _agree(got["out"], want["out"])
    np.testing.assert_array_equal(got["out"]["calls"][0], want["out"]["calls"][0])


@pytest.mark.parametrize("before, ret", [
    ("n = len(opt.state)", ", n"),  # (eager's first call sees no state: 0)
    ("n = sum(len(s) for s in opt.state.values())", ", n"),
    ("n = len(opt.state_dict()['state'])", ", n"),
    ("n = float(sum(t.sum() for s in STATES.values() for t in s.values()))", ", n"),
])
def test_a_step_that_sees_the_state_keeps_its_first_call_eager(tmp_path, before, ret):
    program = _program(FILLING["adamw"], before, ret).replace(  # (STATES: a global that
        "\ncalls = ", "\nSTATES = opt.state\ncalls = ", 1)  # is the optimizer's state)
    fill, got, want = _runs(tmp_path, program)
    assert got["out"]["first_eager"]  # (the filled first call would have answered otherwise)
    _agree(got["out"], want["out"])
    assert want["out"]["calls"][0][1] == 0 and want["out"]["calls"][1][1] != 0


def test_sgd_with_dampening_has_no_fill_and_its_first_step_stays_eager(tmp_path):
    # (a first step's buffer is the gradient, undamped; a later one damps it)
    fill, got, want = _runs(tmp_path, _program(
        "optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, dampening=0.5)"))
    assert got["out"]["first_eager"] and got["stats"]["restored"] == 1
    _agree(got["out"], want["out"])


@pytest.mark.parametrize("opt, batch", [
    # another state made (amsgrad's fourth tensor): refused after filling
    ("optim.Adam(model.parameters(), lr=1e-2, amsgrad=which == 'b')", "16"),
    # another batch (the arguments differ): refused after filling
    ("optim.Adam(model.parameters(), lr=1e-2)", "16 if which == 'a' else 8"),
])
def test_a_refused_fill_leaves_the_state_empty_for_eager(tmp_path, opt, batch):
    fill, got, want = _runs(tmp_path, _program(opt, batch=batch))
    assert got["out"]["first_eager"]
    _agree(got["out"], want["out"])
    assert fill["out"]["state"] != want["out"]["state"]  # (the change shows)


def test_a_refused_fill_is_undone_before_eager_looks_at_the_state(tmp_path):
    # (the kept variant's trace never read the state; this process's call reads it: the
    #  DEBUG guard refuses the variant after its state was filled, and eager must see none)
    program = _program(FILLING["adamw"], "n = len(opt.state) if DEBUG else -1", ", n").replace(
        "\nwhich = sys.argv[1]\n", "\nwhich = sys.argv[1]\nDEBUG = which == 'b'\n", 1)
    fill, got, want = _runs(tmp_path, program)
    assert got["out"]["first_eager"] and got["stats"]["refused"] >= 1
    assert [c[1] for c in got["out"]["calls"]] == [0, 4, 4, 4]
    _agree(got["out"], want["out"])


def test_a_guarded_read_of_the_state_refuses_the_fill_even_if_unrecorded(tmp_path):
    # (the second layer: the filling process's records of what the call read are wiped, as
    #  if it read the state through a path they miss; the guard on len(opt.state) is still
    #  in the manifest, and it fails on the empty state the first call's eager run sees)
    program = _program(FILLING["adamw"], "n = len(opt.state)", ", n").replace(
        "\nwhich = sys.argv[1]\n", "\nwhich = sys.argv[1]\nif which == 'a':\n"
        "    from compiler.capture.session import Capture\n"
        "    Capture.note_reads = lambda self: None\n", 1)
    fill, got, want = _runs(tmp_path, program)
    assert got["out"]["first_eager"] and got["stats"]["refused"] >= 1
    assert [c[1] for c in got["out"]["calls"]] == [0, 4, 4, 4]
    _agree(got["out"], want["out"])


def test_a_value_guard_failing_after_the_fill_empties_the_state_for_eager(tmp_path):
    # (the kept variant took the branch where the loss is large, reading no state; this
    #  process's first loss is small: the value guard fails inside the native code after
    #  the fill, and eager's branch reads the state, which must be empty again)
    program = _program(
        FILLING["adamw"],
        "n = -1.0 if bool(loss.detach() > 0.5) else float(len(opt.state))", ", n").replace(
        "\ncalls = ", "\nif which == 'b':\n    xs = [x * 0.0 for x in xs]\n"
        "    ys = [y * 0.0 for y in ys]\ncalls = ", 1)
    program = program.replace('"first_eager":', '"variants": len(step.variants),\n'
                              '    "first_eager":', 1)
    fill, got, want = _runs(tmp_path, program)
    assert [c[1] for c in fill["out"]["calls"]] == [-1.0] * 4  # (the traced branch)
    assert got["out"]["first_eager"] and got["stats"]["restored"] == 1
    assert got["out"]["calls"][0][1] == 0.0  # (eager saw no state)
    assert got["out"]["variants"] == want["out"]["variants"]  # (the filled one is gone)
    _agree(got["out"], want["out"])
