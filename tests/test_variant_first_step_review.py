"""Attacks on the first step from disk (Note [a first step from a filled state] in
compiler/variantcache.py): a step whose native code reaches the optimizer's state other than
through an argument that is the optimizer itself — an object or container holding it, or
the state dict — must keep its first call eager (filling early would show)."""

from __future__ import annotations

import pytest
from test_variant_first_step import FILLING, _agree, _program, _runs


@pytest.mark.parametrize("setup, before", [
    # (native code given a namespace, a list or a scheduler that holds the optimizer)
    ("NS = types.SimpleNamespace(o=opt)", "n = len(operator.attrgetter('o.state')(NS))"),
    ("L = [opt]", "n = len(copy.deepcopy(L)[0].state)"),
    ("L = [opt]", "n = len(list(map(optim.Optimizer.state_dict, L))[0]['state'])"),
    ("S = optim.lr_scheduler.StepLR(opt, 10)",
     "n = len(operator.attrgetter('optimizer.state')(S))"),
    # (a namespace holding the state dict itself, read natively)
    ("NS = types.SimpleNamespace(s=opt.state)", "n = len(operator.attrgetter('s')(NS))"),
    # (an operator: SimpleNamespace's __eq__ compares the state dict it holds)
    ("NS = types.SimpleNamespace(s=opt.state)",
     "n = 4 * (NS != types.SimpleNamespace(s={}))"),
    # (len, truth and iteration of a library mapping over the state dict)
    ("import collections\nCM = collections.ChainMap(opt.state)", "n = len(CM)"),
    ("import collections\nCM = collections.ChainMap(opt.state)", "n = 4 if CM else 0"),
    ("import collections\nCM = collections.ChainMap(opt.state)", "n = sum(1 for _ in CM)"),
    # (a mapping found through a tensor's attribute, which the capture reads without a
    # source, unpacked: Capture.saw)
    ("model[0].weight.opt_state = opt.state", "n = len({**model[0].weight.opt_state})"),
])
def test_native_code_that_reaches_the_state_keeps_the_first_call_eager(tmp_path, setup,
                                                                       before):
    program = _program(FILLING["adamw"], before, ", n").replace(
        "\ncalls = ", f"\nimport copy, operator, types\n{setup}\ncalls = ", 1)
    fill, got, want = _runs(tmp_path, program)
    assert want["out"]["calls"][0][1] == 0 and want["out"]["calls"][1][1] != 0
    assert got["out"]["first_eager"]
    _agree(got["out"], want["out"])
