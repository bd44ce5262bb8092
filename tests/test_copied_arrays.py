"""A numpy array copied into a tensor inside a compiled function (``dg.tensor(ARR)``) has its
values baked into the graph: changing the array in place between calls keeps its identity,
so the variant must guard the values themselves (compiled must equal eager)."""

from __future__ import annotations

import warnings

import numpy as np
from _footgun_compare import compiled_calls

import compiler
import dyngrad as dg

ARR = np.arange(4, dtype=np.float32)


def _both(f, args_of, change, calls: int = 4):
    """Results of ``f`` eagerly and compiled, calling ``change(i)`` after call ``i``."""
    cf = compiler.compile(f)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(calls):
            out.append((f(*args_of(i)).item(), cf(*args_of(i)).item()))
            change(i)
    return out, cf


def test_a_global_array_changed_in_place_between_calls():
    w = dg.ones(4)

    def f(x):
        return (x * dg.tensor(ARR) * w).sum()

    def change(i):
        ARR[i] += 10.0
    x = dg.ones(4)
    out, cf = _both(f, lambda i: (x,), change)
    ARR[:] = np.arange(4)
    assert [a for a, _ in out] == [b for _, b in out] == [6.0, 16.0, 26.0, 36.0]
    assert any("holds the values the trace copied" in r for r in cf.recompiles)


def test_an_argument_array_changed_in_place_and_an_unchanged_one_served():
    arr = np.ones(3, dtype=np.float32)

    def g(a):
        return dg.tensor(a).sum()

    def change(i):
        if i == 0:
            arr[1] += 1
    out, cf = _both(g, lambda i: (arr,), change)
    assert [a for a, _ in out] == [b for _, b in out] == [3.0, 4.0, 4.0, 4.0]
    assert compiled_calls(cf) >= 1  # (unchanged values: the variant serves the call)


def test_a_view_of_a_module_array():
    class M(dg.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = np.ones((2, 3), dtype=np.float32)

        def forward(self, x):
            return (dg.tensor(self.table[1, :]) * x).sum()

    m = M()

    def change(i):
        m.table[1, 0] += 1
    x = dg.ones(3)
    out, _ = _both(m, lambda i: (x,), change)
    assert [a for a, _ in out] == [b for _, b in out] == [3.0, 4.0, 5.0, 6.0]


def test_an_array_changed_after_the_copy_inside_the_call_runs_eagerly():
    buf = np.zeros(2, dtype=np.float32)

    def h(x):
        t = dg.tensor(buf)
        buf[:] += 1.0  # (the next call copies other values)
        return (t + x).sum()

    eager = []  # (eager and compiled both change buf: run them one after the other)
    for _ in range(4):
        eager.append(h(dg.ones(2)).item())
    buf[:] = 0
    cf2 = compiler.compile(h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = [cf2(dg.ones(2)).item() for _ in range(4)]
    assert compiled == eager == [2.0, 4.0, 6.0, 8.0]
    assert any("changes a numpy array after copying it" in r for r in cf2.fallbacks)
