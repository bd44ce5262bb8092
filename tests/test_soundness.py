"""Soundness: issue 13's categories of silent wrong answers, one or more tests each.

Every test runs a program eagerly and compiled on identical state, changes something between
calls, and compares outputs (and, where the program trains, ``.grad``, parameters and
optimizer state) over several calls. Compiled must follow the change like eager does: by a
guard that traces again, a runtime input, or an eager fallback that says why. Complements
``test_footguns.py``.
"""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np
import pytest
from conftest import close_to_eager

import compiler
import dyngrad as dg


@pytest.fixture(autouse=True)
def seeded():
    assert compiler.config.enabled
    dg.manual_seed(1234)
    yield


def same(a, b) -> bool:
    return close_to_eager(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ memory safety


def _add_one_in_place(x):
    with dg.no_grad():
        x.add_(1.0)
    return x * 2


def _warm(cf, make, calls=3):
    for _ in range(calls):
        cf(make())
    assert sum(v.calls for v in cf.variants) >= 1, "the warm-up calls should run compiled"


def _eager_error(fn, *args):
    with pytest.raises(Exception) as eager:
        fn(*args)
    return type(eager.value)


def test_a_read_only_argument_the_function_writes_raises_like_eager():
    cf = compiler.compile(_add_one_in_place)
    _warm(cf, lambda: dg.tensor(np.zeros(4, np.float32)))
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    kind = _eager_error(_add_one_in_place, dg.from_numpy(ro))
    with pytest.raises(kind):
        cf(dg.from_numpy(ro))
    assert not ro.any(), "nothing is written before the error"
    # and the writable case still runs compiled afterwards
    before = sum(v.calls for v in cf.variants)
    x = dg.tensor(np.zeros(4, np.float32))
    assert same(cf(x)._data, np.full(4, 2.0, np.float32)) and same(x._data, np.ones(4))
    assert sum(v.calls for v in cf.variants) == before + 1


def test_an_immutable_bytes_buffer_is_never_written():
    cf = compiler.compile(_add_one_in_place)
    _warm(cf, lambda: dg.tensor(np.zeros(4, np.float32)))
    buf = bytes(16)
    with pytest.raises(Exception):
        cf(dg.from_numpy(np.frombuffer(buf, np.float32)))
    assert buf == bytes(16)


def test_a_read_only_memory_map_raises_and_the_process_survives():
    cf = compiler.compile(_add_one_in_place)
    _warm(cf, lambda: dg.tensor(np.zeros(1024, np.float32)))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.bin")
        np.zeros(1024, np.float32).tofile(path)
        mm = np.memmap(path, np.float32, mode="r", shape=(1024,))
        assert isinstance(mm.base, mmap.mmap)
        with pytest.raises(Exception):
            cf(dg.from_numpy(mm))
        del mm
        assert not np.fromfile(path, np.float32).any()


def test_a_read_only_argument_the_function_only_reads_still_runs_compiled():
    def f(x):
        return (x * 3).sum()
    cf = compiler.compile(f)
    _warm(cf, lambda: dg.tensor(np.ones(4, np.float32)))
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    before = sum(v.calls for v in cf.variants)
    assert float(cf(dg.from_numpy(ro))) == 12.0
    assert sum(v.calls for v in cf.variants) == before + 1


def test_a_captured_tensor_made_read_only_between_calls_raises_like_eager():
    arr = np.zeros(3, np.float32)
    w = dg.from_numpy(arr)

    def f(x):
        with dg.no_grad():
            w.add_(x)
        return w * 1
    cf = compiler.compile(f)
    for _ in range(3):
        cf(dg.tensor([1.0, 1.0, 1.0]))
    assert same(arr, [3, 3, 3])
    arr.flags.writeable = False
    kind = _eager_error(f, dg.tensor([1.0, 1.0, 1.0]))
    with pytest.raises(kind):
        cf(dg.tensor([1.0, 1.0, 1.0]))
    assert same(arr, [3, 3, 3])
