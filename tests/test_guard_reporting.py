"""What the compiler says about its variants and their guards: which guard made a call trace
again (value guards named like explain names them, with the traced value and the one seen),
that a miss costs no message nobody reads, the order in which a call tries the variants
(most recently used first) against the stable numbers explain gives them (trace order), how
explain describes the LLVM plan that was built, and its baked-in numbers counted once each.
"""

from __future__ import annotations

import logging
import re
import warnings

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import api
from compiler.backends.llvm import driver


@pytest.fixture(autouse=True)
def compilation_enabled():
    assert compiler.config.enabled
    dg.manual_seed(1234)
    yield
    assert compiler.config.enabled, "a test left compilation disabled"


def sign_branch(x):
    if x.sum() > 0:  # SIGN_BRANCH: a value guard
        return x * 2
    return x * 3


BRANCH_LINE = sign_branch.__code__.co_firstlineno + 1
POS, NEG = dg.tensor([1.0, 2.0]), dg.tensor([-1.0, -2.0])


def compiled_calls(cf) -> int:
    return sum(v.calls for v in cf.variants)


def guard_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dyngrad.compiler"]


@pytest.fixture
def log_guards(monkeypatch, caplog):
    """DYNGRAD_LOG=guards for one test: the log lines of guard misses, captured."""
    monkeypatch.setattr(api, "_LOG_TOPICS", {"guards"})
    with caplog.at_level(logging.INFO, logger="dyngrad.compiler"):
        yield caplog


# ------------------------------------------------------------------ value guards named


def test_cache_limit_warning_names_the_value_guard_with_its_traced_and_new_value():
    cf = compiler.compile(sign_branch, cache_limit=1)
    cf(POS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(cf(NEG).numpy(), sign_branch(NEG).numpy())
    (msg,) = [str(w.message) for w in caught if "dyngrad.compile" in str(w.message)]
    assert "cache_limit (1) reached; last miss: value guard 'bool at " \
           f"test_guard_reporting.py:{BRANCH_LINE}: %" in msg, msg
    assert re.search(r": %\d+ == array\(True\)' of variant 1 failed: now array\(False\)$",
                     msg), msg
    assert cf.eager_reason in msg


def test_recompiles_name_the_value_guard_as_explain_lists_it(capsys):
    cf = compiler.compile(sign_branch)
    cf(POS)
    cf(NEG)  # variant 1's value guard fails: traced again
    (why,) = cf.recompiles
    (miss,) = cf.misses  # the raw facts the text is made from
    assert miss.variant == 1 and miss.guard.kind == "bool"
    assert miss.expected == np.array(True) and miss.got == np.array(False)
    ex = compiler.explain(cf)
    capsys.readouterr()
    listed = {g for v in ex.variants for g in v["value_guards"]}
    described = why.split("'")[1]
    assert described in listed and described.startswith(
        f"bool at test_guard_reporting.py:{BRANCH_LINE}: %")
    assert why == f"value guard '{described}' of variant 1 failed: now array(False)"


def test_recompiles_still_name_input_guards_with_traced_and_new_values():
    cf = compiler.compile(lambda x: x * 2)
    cf(dg.ones(3))
    cf(dg.ones(4))
    assert cf.recompiles == ["guard 'shape of argument 0' of variant 1 failed: traced (3,), "
                             "now (4,)"]


# ------------------------------------------------------------------ the cost of a miss


def test_a_value_guard_miss_formats_no_message_while_logging_is_off(monkeypatch):
    cf = compiler.compile(sign_branch)
    cf(POS)
    cf(NEG)  # two variants: from now on each call on the other path misses in one first
    formatted = []
    monkeypatch.setattr(api, "_short", lambda x, width=80: formatted.append(x) or "...")
    monkeypatch.setattr(api, "_LOG_TOPICS", set())
    for _ in range(3):
        cf(POS)
        cf(NEG)
    assert compiled_calls(cf) == 6 and len(cf.variants) == 2
    assert formatted == []  # (two numpy reprs per miss, before)


def test_a_value_guard_miss_is_logged_by_name_when_guards_are_logged(log_guards):
    cf = compiler.compile(sign_branch)
    cf(POS)
    cf(NEG)
    log_guards.clear()
    cf(POS)  # the variant of NEG, used last, is tried first: its value guard fails
    (line,) = guard_log(log_guards)
    assert re.fullmatch(rf"value guard 'bool at test_guard_reporting\.py:{BRANCH_LINE}: "
                        r"%\d+ == array\(False\)' of variant 2 failed: now array\(True\)",
                        line), line


# ------------------------------------------------------------------ the order of variants


def test_a_newly_traced_variant_is_tried_first_by_the_next_call(log_guards):
    cf = compiler.compile(sign_branch)
    cf(POS)
    cf(NEG)  # traced: variant 2
    assert [v.number for v in cf.variants] == [2, 1]
    log_guards.clear()
    cf(NEG)  # served by variant 2 at once: no value-guard miss in variant 1 first
    assert guard_log(log_guards) == []
    assert [v.calls for v in cf.variants] == [1, 0]


def three_way(x):
    s = x.sum()
    if s > 10:
        return x * 2
    if s > 0:
        return x * 3
    return x * 4


def test_the_lookup_order_is_most_recently_used_first_and_a_miss_does_not_reorder():
    cf = compiler.compile(three_way)
    big, small, neg = dg.tensor([20.0]), dg.tensor([1.0]), dg.tensor([-1.0])
    cf(big)
    cf(small)
    assert [v.number for v in cf.variants] == [2, 1]
    cf(neg)  # both fail a value guard (their input guards hold): traced, tried first next
    assert [v.number for v in cf.variants] == [3, 2, 1]
    cf(big)  # variants 3 and 2 fail a value guard, 1 serves
    assert [v.number for v in cf.variants] == [1, 3, 2]
    cf(small)
    assert [v.number for v in cf.variants] == [2, 1, 3]
    assert [v.calls for v in sorted(cf.variants, key=lambda v: v.number)] == [1, 1, 0]


def test_explain_numbers_variants_in_trace_order_and_says_the_lookup_order(capsys):
    cf = compiler.compile(sign_branch)
    cf(POS)  # variant 1: x.sum() > 0 traced as True
    cf(NEG)  # variant 2: False
    cf(NEG)
    cf(POS)  # variant 1 used last: tried first
    text = str(compiler.explain(cf))
    capsys.readouterr()
    assert "lookup order: variant 1, 2 (a call tries the most recently used first)" in text
    one, two = text.split("--- variant 1:")[1].split("--- variant 2:")
    assert "== array(True)" in one and "== array(False)" in two
    cf(NEG)  # the lookup order changes; the numbers do not
    text = str(compiler.explain(cf))
    capsys.readouterr()
    assert "lookup order: variant 2, 1" in text
    one, two = text.split("--- variant 1:")[1].split("--- variant 2:")
    assert "== array(True)" in one and "== array(False)" in two


def test_variants_are_numbered_again_from_1_after_reset():
    cf = compiler.compile(sign_branch)
    cf(POS)
    cf(NEG)
    cf.reset()
    cf(NEG)
    assert [v.number for v in cf.variants] == [1]


# ------------------------------------------------------------------ explain's report


def test_explain_counts_identical_baked_numbers_once_in_order_of_first_appearance(capsys):
    cf = compiler.compile(lambda x: x * 2 * 2 + 1 + x * 2)
    ex = compiler.explain(cf, dg.ones(3))
    capsys.readouterr()
    assert ex.variants[0]["baked"] == ["mul literal = 2 (×3)", "add literal = 1"]
    assert "  mul literal = 2 (×3)\n  add literal = 1\n" in str(ex)


def cross_entropy_step():
    w = dg.randn(4, 3, requires_grad=True)

    def loss(x, y):
        w.grad = None
        out = F.cross_entropy(x @ w, y)
        out.backward()
        return out
    return loss


def test_explain_lists_no_numpy_group_when_one_driver_call_runs_the_index_ops(capsys):
    cf = compiler.compile(cross_entropy_step(), backend="llvm")
    x, y = dg.randn(8, 4), dg.randint(0, 3, (8,))
    for _ in range(3):
        cf(x, y)
    (v,) = cf.variants
    assert isinstance(v.plan, driver.DriverPlan)
    assert any(grp.kind == "index" for grp in v.groups)  # (the driver runs them natively)
    ex = compiler.explain(cf)
    capsys.readouterr()
    (text,) = [t for label, t in ex.variants[0]["backend"] if label == ""]
    assert text == v.plan.describe() and "in numpy" not in text


def test_explain_lists_the_numpy_groups_of_a_hybrid_plan_with_the_reason(capsys):
    step = cross_entropy_step()
    w = dg.ones(1, 4, 2, dtype=dg.int64)
    cf = compiler.compile(lambda x, y: (step(x, y), F.conv1d((x * 4).to(dg.int64).t()[None],
                                                             w).sum()), backend="llvm")
    x, y = dg.rand(8, 4), dg.randint(0, 3, (8,))
    for _ in range(3):
        cf(x, y)
    (v,) = cf.variants
    assert not isinstance(v.plan, driver.DriverPlan)  # an int64 convolution does not lower
    ex = compiler.explain(cf)
    capsys.readouterr()
    (text,) = [t for label, t in ex.variants[0]["backend"] if label == ""]
    numpy_lines = text.splitlines()[1:]
    assert any("a int64 convolution" in line for line in numpy_lines), text
    assert any("[index" in line and "lowers, but runs in numpy in a hybrid plan" in line
               for line in numpy_lines), text
