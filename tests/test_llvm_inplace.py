"""In-place kernels in the LLVM driver (``compiler/backends/llvm/driver.py``, the note on
in-place kernels under ``noalias``): an elementwise kernel, or a reduction's first pass, may
write an output over an input buffer that dies in it.

Each step here runs twice from identical state: as compiled, and with the driver's plan made
without in-place pairs. The two must agree bit for bit — the kernels are the same, only where
their outputs go differs — and the first must really have written something in place. A
kernel that read an element after storing over it would show here as a difference.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver
from dyngrad import nn, optim


def _without_in_place(monkeypatch) -> None:
    real = driver.plan_memory

    def plan(*args, **kwargs):
        kwargs["inplace"] = False
        return real(*args, **kwargs)
    monkeypatch.setattr(driver, "plan_memory", plan)


def _run(make, steps: int, monkeypatch=None):
    """(losses, parameters after ``steps`` steps, the plan's memory) for the step ``make``
    builds, compiled on the LLVM backend (without in-place pairs when ``monkeypatch``)."""
    if monkeypatch is not None:
        _without_in_place(monkeypatch)
    step, params, batches = make()
    f = compiler.compile(step, backend="llvm")
    losses = [f(*batches[k % len(batches)]).item() for k in range(steps)]
    plans = [v.plan for v in f.variants if v.calls]
    assert plans and all(isinstance(p, driver.DriverPlan) for p in plans), \
        [p.describe() for p in plans]
    return losses, [p.detach().numpy().copy() for p in params], plans[0].memory


def _training(model_fn, opt_fn, shape, classes, dtype=dg.float32, n_batches=2):
    def make():
        dg.manual_seed(0)
        model = model_fn().to(dtype)
        opt = opt_fn(model.parameters())
        r = np.random.default_rng(1)
        batches = [(dg.tensor(r.standard_normal(shape)).to(dtype),
                    dg.tensor(r.integers(0, classes, shape[0]))) for _ in range(n_batches)]

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step, list(model.parameters()), batches
    return make


class _ConvNet(nn.Module):  # conv -> relu -> conv -> relu -> max-pool -> linear
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
        return self.fc(dg.flatten(x, 1))


class _BatchNormNet(nn.Module):  # conv -> batch norm -> relu, twice, with a residual add
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)) + h)
        return self.fc(h.mean((2, 3)))


CASES = {
    "conv-relu-pool": _training(_ConvNet, lambda ps: optim.Adadelta(ps, lr=1.0),
                                (3, 1, 10, 10), 5),
    "batch-norm": _training(_BatchNormNet, lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                            (4, 2, 7, 7), 3),
    "batch-norm-float64": _training(_BatchNormNet, lambda ps: optim.Adam(ps, lr=1e-2),
                                    (4, 2, 6, 5), 3, dtype=dg.float64),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_in_place_kernels_give_the_bits_of_separate_buffers(case, monkeypatch):
    losses, params, memory = _run(CASES[case], 4)
    assert memory.inplace, "nothing was written in place: the test tests nothing"
    with monkeypatch.context() as m:
        losses0, params0, memory0 = _run(CASES[case], 4, m)
    assert memory0.inplace == [] and memory0.arena_bytes >= memory.arena_bytes
    assert losses == losses0
    for p, p0 in zip(params, params0, strict=True):
        assert np.array_equal(p, p0)


@pytest.mark.parametrize("width", [6, 300])
def test_a_reduction_with_a_second_pass_writes_its_prologue_over_no_input(width):
    """``p = 2·y`` and ``q = y / sum(p)`` in one reduction kernel: ``q``'s second pass reads
    ``y`` again after the first pass stored ``p``, so ``p`` must not take ``y``'s buffer
    (the planner alone would allow it: every read of ``y`` is at its index). ``q`` may: the
    second pass reads each element of ``y`` just before it stores that element of ``q``."""
    w = dg.tensor(np.random.default_rng(2).standard_normal((width, width)))

    def fn(x):
        y = x @ w  # a buffer, dying in the reduction kernel below
        p = y * 2.0
        q = y / p.sum(1, keepdim=True)
        return (p @ w + q @ w).sum()

    x = dg.tensor(np.random.default_rng(3).standard_normal((5, width)))
    f = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        got = f(x)
    want = fn(x)
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-12)
    (v,) = f.variants
    g = v.trace.graph
    seen = 0
    for grp in v.plan.groups:
        if grp.kind == "reduce":
            seen += 1
            written = {b for a, b in v.plan.memory.inplace
                       for i in grp.nodes if g.nodes[i].out.id == b}
            summed = {x.id for i in grp.nodes if g.nodes[i].prim.name == "sum"
                      for x in g.nodes[i].inputs}
            assert summed and not written & summed, (grp, written)
    assert seen


def test_explain_counts_the_buffers_written_in_place(capsys):
    step, params, batches = CASES["conv-relu-pool"]()
    f = compiler.compile(step, backend="llvm")
    for k in range(3):
        f(*batches[k % 2])
    compiler.explain(f)
    out = capsys.readouterr().out
    memory = [line for line in out.splitlines() if "arena" in line and "written in place" in line]
    assert memory and " 0 written in place" not in memory[0], out
    assert copy.copy(f.variants[-1].plan.memory.inplace)


def test_a_reduction_writes_its_second_pass_over_an_input_dying_there():
    """``q = y - max(y)`` (a softmax's shift): the second pass reads each element of ``y``
    just before it stores that element of ``q``, and the max read every element of a row
    before — so ``q`` takes ``y``'s buffer (a batch norm's backward writes its gradient over
    the centred input it read last the same way), with the same bits."""
    w = dg.tensor(np.random.default_rng(2).standard_normal((40, 40)))

    def fn(x):
        y = x @ w  # a buffer, dying in the reduction kernel below
        q = y - y.max(1, keepdim=True).values
        return (q @ w).sum()

    x = dg.tensor(np.random.default_rng(3).standard_normal((6, 40)))

    _matmul_written_over_by_sub(fn, x)


@pytest.mark.parametrize("rows,width", [(10, 24), (300, 40)])
def test_a_stored_prologue_value_is_read_back_and_written_over_its_input(rows, width):
    """A batch norm's shape in one reduction kernel: ``c = y - mean`` is stored (read later),
    ``var = mean(c²)`` reduced, ``z = c / sqrt(var)`` the second pass. That pass reads
    ``c`` back instead of computing it from ``y`` again, so ``c`` may take ``y``'s buffer —
    with the bits of separate buffers."""
    rng = np.random.default_rng(7)
    w = dg.tensor(rng.standard_normal((width, width)))
    mean = dg.tensor(rng.standard_normal((1, width)))

    def fn(x):
        y = x @ w  # a buffer, dying in the reduction kernel below
        c = y - mean
        z = c / (c * c).mean(0, keepdim=True).sqrt()
        return (z @ w).sum() + (c @ w).sum()

    x = dg.tensor(rng.standard_normal((rows, width)))

    _matmul_written_over_by_sub(fn, x)


def _matmul_written_over_by_sub(fn, x) -> None:
    """Compiled ``fn(x)``: a product's buffer is taken over by a ``sub`` (the plan's pair),
    the result is eager's to rounding, and the bits of a plan without in-place pairs."""
    got, pairs = _compiled_with_pairs(fn, x)
    assert ("matmul", "sub") in pairs, pairs
    np.testing.assert_allclose(got, fn(x).item(), rtol=1e-12)
    with pytest.MonkeyPatch.context() as m:
        _without_in_place(m)
        got0, pairs0 = _compiled_with_pairs(fn, x)
    assert not pairs0 and got == got0


def _compiled_with_pairs(fn, x) -> tuple:
    """``fn(x)`` compiled, its second call's result, and the plan's in-place pairs as
    (primitive of the input's producer, primitive of the node writing over it)."""
    f = compiler.compile(fn, backend="llvm")
    for _ in range(2):
        got = f(x).item()
    (v,) = f.variants
    by_id = {n.out.id: n for n in v.trace.graph.nodes}
    return got, [(by_id[a].prim.name, by_id[b].prim.name) for a, b in v.plan.memory.inplace]


@pytest.mark.parametrize("shape,axes", [
    ((4, 3, 16, 16), (0, 2, 3)),   # runs of 256 per channel: the run form
    ((4, 3, 14, 14), (0, 2, 3)),   # runs of 196: the split form
    ((8, 16, 24, 24), (0, 2, 3)),  # 16 channels x 4608: the kept elements across threads
    ((6, 5, 7), (0,)),             # over a leading axis, trailing ones kept: no columns
    ((40, 3, 70), (2,)),           # a layer norm's shape
])
@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
def test_second_passes_over_buffers_dying_there_in_every_form(shape, axes, dtype):
    """A batch norm's second kernel, ``c = y - mean`` stored and read later, ``var`` its sum
    of squares, ``z = c / sqrt(var)`` its second pass, over the kernel's forms (runs, split
    runs, kept elements split across the threads, reductions over leading or trailing axes):
    ``c`` takes ``y``'s buffer, with the bits of separate buffers and of a second pass that
    computes ``c`` again (which keeps ``c`` out of ``y``'s buffer)."""
    from compiler.backends.llvm import reduce as R
    rng = np.random.default_rng(12)
    n = shape[0]
    rest = int(np.prod(shape[1:]))
    w = dg.tensor(rng.standard_normal((5, rest)), dtype=dtype)
    mean = dg.tensor(rng.standard_normal(tuple(1 if d in axes else s
                                               for d, s in enumerate(shape))), dtype=dtype)
    m = dg.tensor(rng.standard_normal((rest, 3)), dtype=dtype)

    def fn(x):
        y = (x @ w).reshape(shape)  # a buffer, dying in the reduction kernel below
        c = y - mean
        z = c / ((c * c).mean(axes, keepdim=True) + 1).sqrt()
        return (z.reshape(n, -1) @ m).tanh().sum() + (c.reshape(n, -1) @ m).sum()

    x = dg.tensor(rng.standard_normal((n, 5)), dtype=dtype)

    got, pairs = _compiled_with_pairs(fn, x)
    assert ("matmul", "sub") in pairs or ("reshape", "sub") in pairs, pairs
    rel = 1e-5 if dtype is dg.float32 else 1e-12
    np.testing.assert_allclose(got, fn(x).item(), rtol=rel)
    with pytest.MonkeyPatch.context() as mp:
        _without_in_place(mp)
        got0, pairs0 = _compiled_with_pairs(fn, x)
    assert not pairs0 and got == got0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(R, "read_back", lambda *a: frozenset())
        got1, pairs1 = _compiled_with_pairs(fn, x)
    assert ("matmul", "sub") not in pairs1 and got == got1
