"""The fused attention pair (``dyngrad/ops/attention.py``): float64 gradchecks of both
primitives (vjp and jvp), PyTorch as the oracle for the output, the row logsumexp and the
gradients, when ``scaled_dot_product_attention`` takes the fused path, and compiled steps
against eager — on the interpreter bit for bit, on LLVM (the flash kernel of
``compiler/backends/llvm/attention.py``) to float rounding: several calls, masks changing
between calls as data, causal on and off, L != S, gradients of q, k and v, parameters after
optimizer steps, and the same bits on one thread and two."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import compiler
import dyngrad as dg
from dyngrad import nn, optim
from dyngrad.dispatch import DispatchMode, dispatch, push_mode, suspend
from dyngrad.ops.attention import FLASH_ATTENTION, FLASH_ATTENTION_BACKWARD, flash_attention
from dyngrad.testing import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) not installed")
F = dg.nn.functional


@pytest.fixture(autouse=True)
def _seeded():
    dg.manual_seed(0)


def leaf(*shape):
    return dg.randn(*shape, dtype=dg.float64, requires_grad=True)


def bool_mask(*shape, dead_row: int | None = None, seed: int = 0):
    m = np.random.default_rng(seed).random(shape) > 0.4
    if dead_row is not None:
        m[..., dead_row, :] = False
    return dg.tensor(m)


# ------------------------------------------------------------------ gradchecks (vjp + jvp)

CASES = {  # name: (q, k, v shapes, causal)
    "plain": ((2, 3, 4), (2, 5, 4), (2, 5, 3), False),
    "causal_l_lt_s": ((2, 3, 4), (2, 5, 4), (2, 5, 3), True),
    "causal_l_gt_s": ((1, 2, 5, 3), (1, 2, 3, 3), (1, 2, 3, 2), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flash_attention_gradcheck(case):
    qs, ks, vs, causal = CASES[case]
    assert gradcheck(lambda q, k, v: dispatch(FLASH_ATTENTION, q, k, v, scale=0.7,
                                              causal=causal), (leaf(*qs), leaf(*ks), leaf(*vs)))


def test_flash_attention_with_bool_mask_and_dead_row_gradcheck():
    # the output without its logsumexp column (-inf on the dead row: no finite differences)
    m = bool_mask(3, 5, dead_row=0)
    assert gradcheck(lambda q, k, v: flash_attention(q, k, v, m, 0.7, False),
                     (leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 3)))


def test_flash_attention_float_mask_gets_its_gradient_gradcheck():
    assert gradcheck(lambda q, k, v, fm: dispatch(FLASH_ATTENTION, q, k, v, fm, scale=0.5,
                                                  causal=True),
                     (leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 3), leaf(3, 5)))


@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_backward_gradcheck(causal):
    q, k, v, do = leaf(2, 3, 4), leaf(2, 5, 4), leaf(2, 5, 3), leaf(2, 3, 4)
    m = bool_mask(3, 5)
    m[:, 0] = True  # no dead row: the packed output is finite
    o = dispatch(FLASH_ATTENTION, q, k, v, m, scale=0.6, causal=causal).detach()
    assert gradcheck(lambda q, k, v, o, do: dispatch(FLASH_ATTENTION_BACKWARD, q, k, v, o, do, m,
                                                     scale=0.6, causal=causal),
                     (q, k, v, o.requires_grad_(), do))


def test_sdpa_fused_gradgradcheck():
    assert gradgradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                         (leaf(1, 2, 3, 4), leaf(1, 2, 4, 4), leaf(1, 2, 4, 3)))


# ------------------------------------------------------------------ PyTorch as the oracle


@needs_torch
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_flash_attention_output_logsumexp_and_grads_match_torch(causal, mask):
    if causal and mask is not None:
        pytest.skip("SDPA takes a mask or is_causal, not both")
    r = np.random.default_rng(1)
    q, k, v = r.standard_normal((2, 3, 4, 5)), r.standard_normal((2, 3, 6, 5)), \
        r.standard_normal((2, 3, 6, 7))
    m = None
    if mask == "bool":
        m = r.random((4, 6)) > 0.5
        m[2] = False  # a dead row
    elif mask == "float":
        m = r.standard_normal((3, 4, 6))
        m[:, 1] = -np.inf
    dq, dk, dv = (dg.tensor(a, requires_grad=True) for a in (q, k, v))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    dm = None if m is None else dg.tensor(m)
    tm = None if m is None else torch.tensor(m)
    packed = dispatch(FLASH_ATTENTION, dq, dk, dv, *([] if m is None else [dm]), scale=0.4,
                      causal=causal)
    out = F.scaled_dot_product_attention(dq, dk, dv, attn_mask=dm, is_causal=causal, scale=0.4)
    tout = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm,
                                                            is_causal=causal, scale=0.4)
    s = (tq @ tk.transpose(-2, -1)) * 0.4
    if causal:
        s = s.masked_fill(~torch.ones(4, 6, dtype=torch.bool).tril(), -np.inf)
    if m is not None:
        s = s.masked_fill(~tm, -np.inf) if mask == "bool" else s + tm
    np.testing.assert_allclose(packed.detach().numpy()[..., -1],
                               torch.logsumexp(s, -1).detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-10,
                               atol=1e-12)
    g = r.standard_normal(tout.shape)
    (out * dg.tensor(g)).sum().backward()
    (tout * torch.tensor(g)).sum().backward()
    for a, b, name in ((dq, tq, "q"), (dk, tk, "k"), (dv, tv, "v")):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
        assert np.all(np.isfinite(a.grad.numpy()))


# ------------------------------------------------------------------ when SDPA fuses


class Record(DispatchMode):
    """Names the primitives dispatched under it."""

    def __init__(self) -> None:
        self.names: list = []

    def dispatch(self, prim, args, params):
        self.names.append(prim.name)
        with suspend(self):
            return dispatch(prim, *args, **params)


def _prims_of(fn) -> list:
    mode = Record()
    with push_mode(mode):
        fn()
    return mode.names


def test_sdpa_fuses_without_dropout_and_keeps_the_composite_with_it():
    q = dg.randn(2, 4, 3)
    assert "flash_attention" in _prims_of(lambda: F.scaled_dot_product_attention(q, q, q))
    dropped = _prims_of(lambda: F.scaled_dot_product_attention(q, q, q, dropout_p=0.5))
    assert "flash_attention" not in dropped


def test_sdpa_keeps_the_composite_for_a_float_mask_that_requires_grad():
    q, fm = dg.randn(2, 4, 3), dg.zeros(4, 4, requires_grad=True)
    assert "flash_attention" not in _prims_of(
        lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=fm))
    assert "flash_attention" in _prims_of(
        lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=fm.detach()))



def test_sdpa_with_an_empty_batch_has_empty_gradients():
    q, k, v = leaf(0, 2, 5, 4), leaf(0, 2, 7, 4), leaf(0, 2, 7, 6)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()
    assert out.shape == (0, 2, 5, 6)
    assert (q.grad.shape, k.grad.shape, v.grad.shape) == (q.shape, k.shape, v.shape)
    dq, = dg.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), [q],
                           create_graph=True)
    assert dq.shape == q.shape


@needs_torch
def test_sdpa_with_an_empty_head_dim_attends_uniformly_as_torch():
    r = np.random.default_rng(2)
    q, k, v = np.zeros((2, 5, 0)), np.zeros((2, 7, 0)), r.standard_normal((2, 7, 3))
    for causal in (False, True):
        dv, tv = dg.tensor(v, requires_grad=True), torch.tensor(v, requires_grad=True)
        out = F.scaled_dot_product_attention(dg.tensor(q), dg.tensor(k), dv, is_causal=causal)
        tout = torch.nn.functional.scaled_dot_product_attention(
            torch.tensor(q), torch.tensor(k), tv, is_causal=causal)
        out.sum().backward()
        tout.sum().backward()
        np.testing.assert_allclose(out.detach().numpy(), tout.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(dv.grad.numpy(), tv.grad.numpy(), rtol=1e-12)

def test_flash_attention_rejects_mismatched_shapes_naming_them():
    with pytest.raises(RuntimeError, match=r"flash_attention.*\[2, 3, 4\]"):
        dispatch(FLASH_ATTENTION, dg.randn(2, 3, 4), dg.randn(2, 5, 3), dg.randn(2, 5, 3),
                 scale=1.0, causal=False)


# ------------------------------------------------------------------ compiled against eager


class Attend(nn.Module):
    """One projection to q, k, v, heads, SDPA: a mask (data) and is_causal as arguments."""

    def __init__(self, E=16, H=2):
        super().__init__()
        self.qkv, self.H = nn.Linear(E, 3 * E), H

    def forward(self, x, mask, causal):
        B, T, E = x.shape
        q, k, v = self.qkv(x).split(E, 2)
        q, k, v = (t.reshape(B, T, self.H, E // self.H).transpose(1, 2) for t in (q, k, v))
        kv = slice(0, T - 2) if mask is not None and mask.shape[-1] != T else slice(None)
        y = F.scaled_dot_product_attention(q, k[:, :, kv], v[:, :, kv], attn_mask=mask,
                                           is_causal=causal)
        return y.transpose(1, 2).reshape(B, T, E)


def _steps(backend, dtype=dg.float32):
    dg.manual_seed(0)
    m1 = Attend().to(dtype)
    m2 = copy.deepcopy(m1)
    # SGD, not Adam: the key bias's true gradient is zero (it shifts whole rows of scores),
    # so its computed gradient is rounding noise that Adam would scale up to lr
    o1, o2 = (optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (m1, m2))

    def step_of(m, o):
        def step(x, mask, causal):
            o.zero_grad()
            loss = (m(x, mask, causal) ** 2).mean()
            loss.backward()
            o.step()
            return loss
        return step

    return m1, m2, step_of(m1, o1), compiler.compile(step_of(m2, o2), backend=backend)


def _compare(m1, m2, eager, compiled, calls, exact: bool, dtype=np.float32, tol=2e-5):
    r = np.random.default_rng(3)
    for i, (shape, mask_shape, causal) in enumerate(calls):
        x = dg.tensor(r.standard_normal(shape).astype(dtype))
        mask = None if mask_shape is None else dg.tensor(r.random(mask_shape) > 0.3)
        a, b = eager(x, mask, causal), compiled(x, mask, causal)
        pairs = [(a, b)] + [(p.grad, q.grad) for p, q in zip(m1.parameters(), m2.parameters())] \
            + [(p, q) for p, q in zip(m1.parameters(), m2.parameters())]
        for k, (u, w) in enumerate(pairs):
            u, w = u.detach().numpy(), w.detach().numpy()
            if exact:
                np.testing.assert_array_equal(u, w, err_msg=f"call {i}, value {k}")
            else:
                np.testing.assert_allclose(u, w, rtol=tol, atol=tol, err_msg=f"call {i}, value {k}")


CALLS = ([((3, 8, 16), None, True)] * 3 + [((3, 8, 16), None, False)] * 2
         + [((3, 8, 16), (8, 8), False)] * 3 + [((2, 8, 16), (2, 1, 8, 6), False)] * 3
         + [((3, 8, 16), None, True)])


def test_compiled_sdpa_on_the_interpreter_equals_eager_bit_for_bit():
    m1, m2, eager, compiled = _steps("interp")
    _compare(m1, m2, eager, compiled, CALLS, exact=True)
    assert sum(v.calls for v in compiled.variants) >= 6


def test_compiled_sdpa_on_llvm_equals_eager_to_float_rounding():
    m1, m2, eager, compiled = _steps("llvm")
    _compare(m1, m2, eager, compiled, CALLS, exact=False)
    assert sum(v.calls for v in compiled.variants) >= 6


def test_compiled_sdpa_on_llvm_in_float64_is_close_to_eager():
    m1, m2, eager, compiled = _steps("llvm", dg.float64)
    _compare(m1, m2, eager, compiled, CALLS[:6], exact=False, dtype=np.float64, tol=1e-11)


def _kernel_grads(q, k, v, mask, causal, scale):
    """The output and the gradients of q, k, v of SDPA weighted by a fixed cotangent."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    w = dg.cos(dg.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


KERNEL_CASES = {  # name: (q, k, v shapes, mask shape or kind, causal)
    "causal_l_lt_s": ((2, 3, 40, 8), (2, 3, 70, 8), (2, 3, 70, 5), None, True),
    "causal_l_gt_s_blocks": ((1, 2, 100, 16), (1, 2, 70, 16), (1, 2, 70, 16), None, True),
    "bool_mask_dead_rows_broadcast": ((2, 3, 33, 8), (2, 3, 65, 8), (2, 3, 65, 8),
                                      ("bool", (3, 1, 65)), False),
    "bool_mask_full": ((2, 2, 9, 4), (2, 2, 130, 4), (2, 2, 130, 6), ("bool", (2, 2, 9, 130)),
                       False),
    "float_mask": ((2, 2, 17, 8), (2, 2, 20, 8), (2, 2, 20, 8), ("float", (17, 20)), False),
    "unbatched": ((12, 8), (7, 8), (7, 3), None, False),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_llvm_flash_kernels_match_eager(case, dtype):
    qs, ks, vs, mask_kind, causal = KERNEL_CASES[case]
    r = np.random.default_rng(11)
    q, k, v = (dg.tensor(r.standard_normal(s).astype(dtype)) for s in (qs, ks, vs))
    mask = None
    if mask_kind is not None:
        kind, shape = mask_kind
        if kind == "bool":
            m = r.random(shape) > 0.5
            if shape[-2] > 1:
                m[..., 0, :] = False  # a dead row
            mask = dg.tensor(m)
        else:
            m = r.standard_normal(shape).astype(dtype)
            m[3] = -np.inf
            m[4, :7] = -np.inf
            mask = dg.tensor(m)
    fn = compiler.compile(lambda q, k, v, mask: _kernel_grads(q, k, v, mask, causal, 0.3),
                          backend="llvm")
    want = _kernel_grads(q, k, v, mask, causal, 0.3)
    for _ in range(2):
        got = fn(q, k, v, mask)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b, what in zip(want, got, ("out", "dq", "dk", "dv")):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=tol, atol=tol, err_msg=what)
    text = str(compiler.explain(fn, q, k, v, mask))
    assert "all" in text and "kernels native" in text, text


def test_llvm_flash_kernels_give_the_same_bits_on_one_thread_and_two():
    from compiler.backends.llvm import threads
    if threads.find() is None:
        pytest.skip("no thread pool here (DYNGRAD_THREADS=1 or not Linux x86-64)")
    r = np.random.default_rng(12)
    q, k, v = (dg.tensor(r.standard_normal((3, 4, 70, 16)).astype(np.float32))
               for _ in range(3))
    before = threads.team()
    results = []
    try:
        for team in (1, 2):
            threads.set_team(team)
            f = compiler.compile(lambda q, k, v: _kernel_grads(q, k, v, None, True, None),
                                 backend="llvm")
            results.append([t.numpy() for t in f(q, k, v)])
            results.append([t.numpy() for t in f(q, k, v)])
    finally:
        threads.set_team(max(before, 1))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ hand-written attention


class SlowAttention(nn.Module):
    """nanoGPT's CausalSelfAttention with ``flash = False``: the composite the compiler
    recognises (``compiler/passes/attention.py``)."""

    def __init__(self, C=16, H=2, T=8, keep_probs=False):
        super().__init__()
        self.c_attn, self.n_head, self.keep_probs = nn.Linear(C, 3 * C), H, keep_probs
        self.register_buffer("bias", dg.tril(dg.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return (y, att) if self.keep_probs else y


def _slow_steps(keep_probs=False):
    dg.manual_seed(0)
    m1 = SlowAttention(keep_probs=keep_probs)
    m2 = copy.deepcopy(m1)
    o1, o2 = (optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (m1, m2))

    def step_of(m, o):
        def step(x):
            o.zero_grad()
            out = m(x)
            y = out[0] if keep_probs else out
            loss = (y ** 2).mean() + (out[1].sum() * 0.0 if keep_probs else 0.0)
            loss.backward()
            o.step()
            return loss
        return step

    return m1, m2, step_of(m1, o1), compiler.compile(step_of(m2, o2), backend="llvm")


def _graph_prims(compiled) -> str:
    return "\n".join(str(v.trace.graph) for v in compiled.variants)


def test_nanogpt_slow_path_compiles_to_the_fused_pair_and_equals_eager():
    m1, m2, eager, compiled = _slow_steps()
    r = np.random.default_rng(4)
    for i in range(6):
        x = dg.tensor(r.standard_normal((3, 8, 16)).astype(np.float32))
        np.testing.assert_allclose(compiled(x).item(), eager(x).item(), rtol=2e-5)
        for p, q in zip(m1.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=2e-5,
                                       atol=2e-6, err_msg=f"step {i}")
    text = _graph_prims(compiled)
    assert "= flash_attention " in text and "= flash_attention_backward " in text
    assert "= exp " not in text and "= max " not in text


def test_slow_path_whose_probabilities_are_used_elsewhere_is_left_alone():
    m1, m2, eager, compiled = _slow_steps(keep_probs=True)
    r = np.random.default_rng(5)
    for _ in range(4):
        x = dg.tensor(r.standard_normal((3, 8, 16)).astype(np.float32))
        np.testing.assert_allclose(compiled(x).item(), eager(x).item(), rtol=2e-5)
    assert "= flash_attention" not in _graph_prims(compiled)


def test_slow_path_mask_is_data_fully_masked_rows_give_nan_as_eager():
    """The causal buffer changed in place between calls (a row masked entirely: the plain
    softmax's NaN, in the output and in the gradients), with one compiled variant."""
    dg.manual_seed(0)
    m = SlowAttention()

    def outputs(x):
        y = m(x)
        (y * y).sum().backward()
        return y, x.grad

    compiled = compiler.compile(outputs, backend="llvm")
    r = np.random.default_rng(6)
    for i, dead in enumerate([None, None, 3, None, 5, 0]):
        with dg.no_grad():
            m.bias.copy_(dg.tril(dg.ones(8, 8)).view(1, 1, 8, 8))
            if dead is not None:
                m.bias[0, 0, dead] = 0.0
        xs = r.standard_normal((2, 8, 16)).astype(np.float32)
        want = outputs(dg.tensor(xs, requires_grad=True))
        got = compiled(dg.tensor(xs, requires_grad=True))
        for a, b, what in zip(want, got, ("y", "x.grad")):
            a, b = a.detach().numpy(), b.detach().numpy()
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{what} {i}")
            np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=f"{what} {i}")
    assert len(compiled.variants) == 1 and "= flash_attention " in _graph_prims(compiled)


def test_interpreter_keeps_the_slow_path_as_written():
    dg.manual_seed(0)
    m = SlowAttention()
    compiled = compiler.compile(lambda x: m(x).sum(), backend="interp")
    x = dg.randn(2, 8, 16)
    compiled(x)
    compiled(x)
    assert "= flash_attention" not in _graph_prims(compiled)


def test_slow_path_without_a_backward_is_fused_too():
    """Inference (no_grad): the forward alone becomes flash_attention; a fully masked row
    is NaN as eager's."""
    dg.manual_seed(0)
    m = SlowAttention()
    with dg.no_grad():
        m.bias[0, 0, 2] = 0.0

    def infer(x):
        with dg.no_grad():
            return m(x)

    compiled = compiler.compile(infer, backend="llvm")
    r = np.random.default_rng(7)
    for _ in range(3):
        x = dg.tensor(r.standard_normal((2, 8, 16)).astype(np.float32))
        want, got = infer(x).numpy(), compiled(x).numpy()
        np.testing.assert_array_equal(np.isnan(want), np.isnan(got))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    text = _graph_prims(compiled)
    assert "= flash_attention " in text and "= flash_attention_backward" not in text



class MaskedAttention(SlowAttention):
    """The slow path with the mask a data input (True: masked), as a padding mask is."""

    def forward(self, x, masked):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(masked, float("-inf")), dim=-1)
        return (att @ v).transpose(1, 2).contiguous().view(B, T, C)


def test_slow_path_fully_masked_row_gives_nan_only_where_eager_does_in_the_gradients():
    """A row masked entirely: the plain softmax's probabilities are NaN (so the gradient of
    v is NaN), but the hand-written backward's ``where(mask, 0, ·)`` zeroes that row's score
    gradient, so the gradients reaching q and k stay finite in eager — and must when the
    pair is fused too (the projection's q and k rows of its weight gradient)."""
    dg.manual_seed(0)
    m = MaskedAttention()

    def grads(x, masked):
        for p in m.parameters():
            p.grad = None
        (m(x, masked) ** 2).mean().backward()
        return [p.grad for p in m.parameters()]

    compiled = compiler.compile(grads, backend="llvm")
    r = np.random.default_rng(1)
    masked = r.random((3, 2, 8, 8)) > 0.6
    masked[..., 0, :] = True  # query 0 sees no key
    masked = dg.tensor(masked)
    x = dg.tensor(r.standard_normal((3, 8, 16)).astype(np.float32))
    want = grads(x, masked)
    for _ in range(2):  # (the first call runs eagerly while it is traced)
        got = compiled(x, masked)
    assert "= flash_attention_backward " in _graph_prims(compiled)
    for a, b, what in zip(want, got, ("weight", "bias")):
        a, b = a.numpy(), b.numpy()
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=what)
        np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6, err_msg=what)


@pytest.mark.parametrize("dtype", [dg.float32, dg.float64])
@pytest.mark.parametrize("L,S,causal,masked", [(64, 64, True, False), (40, 80, False, False),
                                               (96, 96, True, False), (48, 90, False, True)])
def test_half_width_tiles_give_the_full_tiles_bits(L, S, causal, masked, dtype, monkeypatch):
    """A key block of at most ``HALF`` visible keys (a causal row block's last, a ragged
    end) computes tiles half as wide (``attention._halves``): each kept column's sums are
    the same chains, so the output and the gradients are the full tiles' bits."""
    from compiler.backends.llvm import attention as A
    rng = np.random.default_rng(11)
    q, k, v = (dg.tensor(rng.standard_normal(s), dtype=dtype, requires_grad=True)
               for s in ((2, 3, L, 16), (2, 3, S, 16), (2, 3, S, 16)))
    do = dg.tensor(rng.standard_normal((2, 3, L, 16)), dtype=dtype)
    mask = dg.tensor(rng.random((L, S)) > 0.3) if masked else None

    def step(q, k, v, do):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return (y,) + dg.autograd.grad((y * do).sum(), (q, k, v))

    def run():
        cf = compiler.compile(step, backend="llvm")
        for _ in range(2):
            out = [t.detach().numpy().copy() for t in cf(q, k, v, do)]
        (var,) = cf.variants
        g = var.trace.graph
        assert any(g.nodes[i].prim is FLASH_ATTENTION_BACKWARD
                   for grp in var.plan.groups if grp.kind == "window" for i in grp.nodes)
        return out

    got = run()
    monkeypatch.setattr(A, "HALF", 0)
    full = run()
    for a, b in zip(got, full, strict=True):
        assert np.array_equal(a, b)
    want = [t.detach().numpy() for t in step(q, k, v, do)]
    tol = 2e-5 if dtype is dg.float32 else 1e-12
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
