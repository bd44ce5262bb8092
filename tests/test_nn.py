"""``dyngrad.nn``: every module's shapes, repr, parameter names, state dicts, copies, version
counter, train/eval, initialisation, finite-difference gradients, and agreement with PyTorch
(outputs and parameter gradients, weights copied across by name).

Modules that exist in both libraries are written once as a constructor expression evaluated
against ``dg.nn`` or ``torch.nn``, so the same line builds both twins. torch is an optional
oracle: tests that need it call ``pytest.importorskip("torch")``. float32 results may differ
from torch's by twice dyngrad's rounding-error bound, derived per element by
``tolerance.ErrorBound`` (tests/tolerance.py); float64 ones by 1e-10 relative.
"""

from __future__ import annotations

import copy
import math
import re
from collections import OrderedDict

import numpy as np
import pytest
from tolerance import TORCH_GELU_ERF, ErrorBound, assert_within

import dyngrad as dg
from dyngrad.dispatch import DispatchMode, push_mode
from dyngrad.testing import gradcheck

nn = dg.nn
F = dg.nn.functional


# ------------------------------------------------------------------ helpers


def arr(*shape, seed=0, dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def leaf(*shape, seed=0, dtype=np.float64) -> dg.Tensor:
    return dg.tensor(arr(*shape, seed=seed, dtype=dtype), requires_grad=True)


def build(expr: str, lib):
    """Evaluate a constructor like ``"nn.Linear(3, 4)"`` against ``lib.nn``."""
    return eval(expr, {"nn": lib.nn, "torch": lib, "dg": lib})


def to_torch(x: dg.Tensor):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.detach().numpy().copy())
    return t.requires_grad_(True) if x.requires_grad else t


def torch_twin(m: nn.Module, tm):
    """Copy ``m``'s parameters into torch module ``tm`` by name (and match its dtype)."""
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v.numpy().copy()) for k, v in m.state_dict().items()}
    if {p.dtype for p in m.parameters()} == {dg.float64}:
        tm.double()  # (first: loading float64 values into float32 parameters rounds them)
    tm.load_state_dict(sd)
    return tm


def flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in flat(x)]
    return [out]


def close(d, t, what="", eb: ErrorBound | None = None):
    """dyngrad ``d`` equals torch ``t``: float64 to 1e-10 relative (1e-12 absolute near 0),
    far above float64 rounding; float32 to twice the error bound of ``d``, which must have
    been computed under ``eb`` (tests/tolerance.py: each library is within it of the
    exact result)."""
    a = d.detach().numpy() if isinstance(d, dg.Tensor) else np.asarray(d)
    b = t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs torch {b.shape}"
    if a.dtype == np.float32:
        assert eb is not None, f"{what}: a float32 comparison needs the error analysis"
        assert_within(a, b, 2 * eb.bound(d), what)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=what)


def assert_module_matches_torch(m, tm, inputs: list, extra_abs: dict | None = None):
    """Run both modules on the same inputs, push the same random cotangent through every
    float output, and compare outputs, input gradients and parameter gradients by name.
    dyngrad runs under an :class:`ErrorBound` (``extra_abs``: see there), which gives the
    float32 tolerances."""
    torch = pytest.importorskip("torch")
    t_inputs = [to_torch(x) if isinstance(x, dg.Tensor) else
                tuple(to_torch(y) for y in x) if isinstance(x, tuple) else x for x in inputs]
    eb = ErrorBound(extra_abs)
    with eb:
        out = flat(m(*inputs))
    t_out = flat(tm(*t_inputs))
    assert len(out) == len(t_out)
    rng = np.random.default_rng(7)
    d_loss, t_loss = 0.0, 0.0
    for i, (o, to) in enumerate(zip(out, t_out)):
        close(o, to, f"output {i}", eb)
        v = rng.standard_normal(o.shape).astype(o.detach().numpy().dtype)
        d_loss = d_loss + (o * dg.tensor(v)).sum()
        t_loss = t_loss + (to * torch.from_numpy(v)).sum()
    with eb:
        d_loss.backward()
    t_loss.backward()
    for x, tx in zip(flat(inputs), flat(t_inputs)):
        if isinstance(x, dg.Tensor) and x.requires_grad:
            close(x.grad, tx.grad, "input grad", eb)
    t_params = dict(tm.named_parameters())
    for name, p in m.named_parameters():
        close(p.grad, t_params[name].grad, f"grad of {name}", eb)


class ReadForbidden(DispatchMode):
    """Fails on any read of tensor data into Python (a value-dependent branch)."""

    def on_read(self, tensor, kind):
        raise AssertionError(f"value read ({kind}) of a tensor of shape {tensor.shape}")


# ------------------------------------------------------------------ forward shapes


SHAPES = [
    ("nn.Linear(3, 4)", (2, 3), (2, 4)),
    ("nn.Linear(3, 4, bias=False)", (5, 2, 3), (5, 2, 4)),
    ("nn.Linear(3, 1)", (3,), (1,)),
    ("nn.Identity(7, foo=1)", (2, 3), (2, 3)),
    ("nn.ReLU()", (2, 3), (2, 3)),
    ("nn.Tanh()", (4,), (4,)),
    ("nn.Sigmoid()", (2, 3), (2, 3)),
    ("nn.SiLU()", (2, 3), (2, 3)),
    ("nn.LeakyReLU(0.2)", (2, 3), (2, 3)),
    ("nn.GELU()", (2, 3), (2, 3)),
    ("nn.GELU(approximate='tanh')", (2, 3), (2, 3)),
    ("nn.Softmax(dim=1)", (2, 3), (2, 3)),
    ("nn.LogSoftmax(dim=-1)", (2, 3, 4), (2, 3, 4)),
    ("nn.Flatten()", (2, 3, 4), (2, 12)),
    ("nn.Flatten(0, 1)", (2, 3, 4), (6, 4)),
    ("nn.Dropout(0.3)", (2, 3), (2, 3)),
    ("nn.LayerNorm(4)", (2, 3, 4), (2, 3, 4)),
    ("nn.LayerNorm((3, 4), elementwise_affine=False)", (2, 3, 4), (2, 3, 4)),
    ("nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))", (4, 3), (4, 2)),
    ("nn.RNNCell(3, 4)", (2, 3), (2, 4)),
    ("nn.RNNCell(3, 4, nonlinearity='relu')", (3,), (4,)),
    ("nn.GRUCell(3, 4)", (2, 3), (2, 4)),
]


@pytest.mark.parametrize("expr,in_shape,out_shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_forward_shape(expr, in_shape, out_shape):
    m = build(expr, dg)
    y = m(dg.tensor(arr(*in_shape, dtype=np.float32)))
    assert y.shape == out_shape
    assert y.dtype is dg.float32


def test_softmax_without_dim_picks_pytorchs_implicit_dim():
    x = dg.randn(2, 3)
    np.testing.assert_allclose(nn.Softmax()(x).numpy().sum(1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(nn.Softmax()(dg.randn(2, 3, 4)).numpy().sum(0), np.ones((3, 4)),
                               rtol=1e-6)


def test_embedding_forward_shape_and_rows():
    e = nn.Embedding(10, 3)
    idx = dg.tensor([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
    y = e(idx)
    assert y.shape == (2, 5, 3)
    np.testing.assert_array_equal(y.detach().numpy()[1, 0], e.weight.detach().numpy()[9])


def test_embedding_rejects_float_indices():
    with pytest.raises(RuntimeError, match="int64"):
        nn.Embedding(4, 2)(dg.tensor([0.0, 1.0]))


def test_lstm_cell_returns_hidden_and_cell_state():
    h, c = nn.LSTMCell(3, 4)(dg.randn(2, 3))
    assert h.shape == c.shape == (2, 4)
    h, c = nn.LSTMCell(3, 4)(dg.randn(3))
    assert h.shape == c.shape == (4,)


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_layer_output_shapes(cls, batch_first):
    m = getattr(nn, cls)(3, 5, num_layers=2, batch_first=batch_first)
    x = dg.randn(2, 7, 3) if batch_first else dg.randn(7, 2, 3)   # batch 2, seq 7
    out, state = m(x)
    assert out.shape == ((2, 7, 5) if batch_first else (7, 2, 5))
    for s in (state if cls == "LSTM" else (state,)):
        assert s.shape == (2, 2, 5)                                # (layers, batch, hidden)


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_recurrent_layer_accepts_unbatched_input(cls):
    m = getattr(nn, cls)(3, 5, num_layers=2)
    out, state = m(dg.randn(7, 3))
    assert out.shape == (7, 5)
    for s in (state if cls == "LSTM" else (state,)):
        assert s.shape == (2, 5)


def test_recurrent_layer_rejects_wrong_feature_size_and_hidden_shape():
    with pytest.raises(RuntimeError, match=re.escape(
            "GRU: input.size(-1) must be equal to input_size. Expected 3, got 6")):
        nn.GRU(3, 4)(dg.randn(5, 2, 6))
    with pytest.raises(ValueError, match="LSTM: Expected input to be 2D or 3D, got 4D"):
        nn.LSTM(3, 4)(dg.randn(5, 2, 1, 3))
    with pytest.raises(RuntimeError, match=re.escape(
            "Expected hidden size (2, 2, 4), got [1, 2, 4]")):
        nn.GRU(3, 4, num_layers=2)(dg.randn(5, 2, 3), dg.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match=re.escape(
            "Expected hidden size (2, 2, 4), got [1, 2, 4]")):       # 2 = 1 layer * 2 dirs
        nn.GRU(3, 4, bidirectional=True)(dg.randn(5, 2, 3), dg.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match=re.escape(
            "Expected hidden[1] size (2, 2, 4), got [1, 2, 4]")):
        nn.LSTM(3, 4, bidirectional=True)(dg.randn(5, 2, 3), (dg.zeros(2, 2, 4),
                                                               dg.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match="GRUCell: expected input"):
        nn.GRUCell(3, 4)(dg.randn(2, 5))


def test_recurrent_state_must_match_the_input_s_batchedness():
    with pytest.raises(RuntimeError, match="For unbatched 2-D input, hx should also be 2-D "
                                           "but got 3-D tensor"):
        nn.GRU(3, 4)(dg.randn(5, 3), dg.zeros(1, 1, 4))
    with pytest.raises(RuntimeError, match=re.escape(
            "For batched 3-D input, hx and cx should also be 3-D but got (3-D, 2-D) tensors")):
        nn.LSTM(3, 4)(dg.randn(5, 2, 3), (dg.zeros(1, 2, 4), dg.zeros(1, 4)))


def test_recurrent_layer_arguments_are_checked_as_pytorch_does():
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        nn.GRU(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers must be greater than zero"):
        nn.LSTM(3, 4, num_layers=0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        nn.RNN(3, 0)
    with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
        nn.LSTM(3, 4.0)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        nn.GRU(3, 4, dropout=0.5)


def test_rnn_nonlinearity_is_validated():
    assert nn.RNN(3, 4, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        nn.RNN(3, 4, nonlinearity="gelu")


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_bidirectional_output_has_both_directions_and_states_are_layer_major(cls,
                                                                             batch_first):
    m = getattr(nn, cls)(3, 5, num_layers=2, batch_first=batch_first, bidirectional=True)
    x = dg.randn(2, 7, 3) if batch_first else dg.randn(7, 2, 3)   # batch 2, seq 7
    out, state = m(x)
    assert out.shape == ((2, 7, 10) if batch_first else (7, 2, 10))
    for s in (state if cls == "LSTM" else (state,)):
        assert s.shape == (4, 2, 5)                    # (layers * directions, batch, hidden)
    h_n = (state[0] if cls == "LSTM" else state).detach().numpy()
    o = out.detach().numpy()
    o = o.transpose(1, 0, 2) if batch_first else o                # (seq, batch, 2 * hidden)
    np.testing.assert_array_equal(h_n[2], o[-1, :, :5])      # last layer forward: at the end
    np.testing.assert_array_equal(h_n[3], o[0, :, 5:])       # last layer reverse: at t = 0


def test_bidirectional_layers_after_the_first_read_both_directions():
    m = nn.LSTM(3, 4, num_layers=3, bidirectional=True)
    assert m.weight_ih_l0.shape == m.weight_ih_l0_reverse.shape == (16, 3)
    assert m.weight_ih_l1.shape == m.weight_ih_l2_reverse.shape == (16, 8)
    assert m.weight_hh_l1_reverse.shape == (16, 4)
    assert m._flat_weights_names == [n for n, _ in m.named_parameters()]
    assert list(m.state_dict()) == m._flat_weights_names
    assert len(m._flat_weights) == 24


def test_bidirectional_unbatched_input_and_given_state():
    m = nn.GRU(3, 4, num_layers=2, bidirectional=True)
    x, h0 = dg.randn(6, 3), dg.randn(4, 4)
    out, h_n = m(x, h0)
    assert out.shape == (6, 8) and h_n.shape == (4, 4)
    out_b, h_b = m(x.unsqueeze(1), h0.unsqueeze(1))               # the same with a batch of 1
    np.testing.assert_allclose(out.detach().numpy(), out_b.detach().numpy()[:, 0], rtol=1e-6)
    np.testing.assert_allclose(h_n.detach().numpy(), h_b.detach().numpy()[:, 0], rtol=1e-6)


@pytest.mark.parametrize("layers, bidirectional, batch_first", [(1, False, False),
                                                                (2, True, True),
                                                                (2, False, False)])
def test_lstm_with_projections_equals_torch(layers, bidirectional, batch_first):
    """``proj_size``: h = (o ∘ tanh(c)) W_hrᵀ with ``proj_size`` features per direction, c
    with ``hidden_size``; parameter names and order (``weight_hr`` after the biases), state
    shapes, outputs, given states and every gradient as PyTorch's (float64)."""
    torch = pytest.importorskip("torch")
    m = nn.LSTM(5, 7, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                proj_size=3, dtype=dg.float64)
    tm = torch_twin(m, torch.nn.LSTM(5, 7, num_layers=layers, bidirectional=bidirectional,
                                     batch_first=batch_first, proj_size=3).double())
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert m._flat_weights_names == [n for n, _ in m.named_parameters()]
    d = 2 if bidirectional else 1
    x = leaf(2, 4, 5) if batch_first else leaf(4, 2, 5)
    h0, c0 = leaf(layers * d, 2, 3, seed=1), leaf(layers * d, 2, 7, seed=2)
    out, (h, c) = m(x, (h0, c0))
    tout, (th, tc) = tm(to_torch(x), (to_torch(h0), to_torch(c0)))
    assert out.shape[-1] == 3 * d and h.shape == (layers * d, 2, 3) and c.shape[-1] == 7
    for a, b in ((out, tout), (h, th), (c, tc)):
        close(a, b)
    w = arr(*out.shape, seed=3)
    (out * dg.tensor(w)).sum().backward()
    (tout * torch.from_numpy(w)).sum().backward()
    for (n, p), (_, tp) in zip(m.named_parameters(), tm.named_parameters()):
        close(p.grad, tp.grad, n)
    out2, _ = m(x)  # zero states: h0 of proj_size, c0 of hidden_size
    assert out2.shape == out.shape
    with pytest.raises(ValueError, match="smaller than hidden_size"):
        nn.LSTM(5, 4, proj_size=4)
    with pytest.raises(ValueError, match="only supported for LSTM"):
        nn.GRU(5, 4, proj_size=2)
    assert "proj_size=3" in repr(m)


def test_lstm_with_projections_compiles_to_eager():
    """A training step of a bidirectional two-layer LSTM with projections, compiled: equal
    losses, gradients and parameters to eager's over calls, with the input changed between
    them (the first call traces, the later ones run compiled)."""
    import compiler
    dg.manual_seed(0)
    m1 = nn.LSTM(5, 7, num_layers=2, proj_size=3, bidirectional=True)
    m2 = copy.deepcopy(m1)
    o1, o2 = dg.optim.SGD(m1.parameters(), lr=0.1), dg.optim.SGD(m2.parameters(), lr=0.1)

    def step(m, o, x):
        o.zero_grad()
        out, (_, c) = m(x)
        loss = out.square().mean() + c.square().mean()
        loss.backward()
        o.step()
        return loss
    cf = compiler.compile(lambda x: step(m2, o2, x))
    for k in range(4):
        x = dg.tensor(arr(4, 2, 5, seed=k).astype(np.float32))
        np.testing.assert_allclose(cf(x).detach().numpy(), step(m1, o1, x).detach().numpy(),
                                   rtol=1e-6)
        for p, q in zip(m1.parameters(), m2.parameters()):
            np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-5,
                                       atol=1e-7)
            np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert sum(v.calls for v in cf.variants) >= 2


def test_linear_rejects_mismatched_input_features():
    with pytest.raises(RuntimeError, match="in_features"):
        nn.Linear(3, 4)(dg.randn(2, 5))


# ------------------------------------------------------------------ repr


REPRS = {
    "nn.Linear(3, 4)": "Linear(in_features=3, out_features=4, bias=True)",
    "nn.Linear(3, 4, bias=False)": "Linear(in_features=3, out_features=4, bias=False)",
    "nn.ReLU()": "ReLU()",
    "nn.Identity()": "Identity()",
    "nn.LeakyReLU()": "LeakyReLU(negative_slope=0.01)",
    "nn.GELU(approximate='tanh')": "GELU(approximate='tanh')",
    "nn.Softmax(dim=1)": "Softmax(dim=1)",
    "nn.LogSoftmax(dim=-1)": "LogSoftmax(dim=-1)",
    "nn.Flatten()": "Flatten(start_dim=1, end_dim=-1)",
    "nn.Dropout(0.25)": "Dropout(p=0.25, inplace=False)",
    "nn.LayerNorm(4)": "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)",
    "nn.LayerNorm((2, 3), elementwise_affine=False)":
        "LayerNorm((2, 3), eps=1e-05, elementwise_affine=False, bias=False)",
    "nn.Embedding(10, 3)": "Embedding(10, 3)",
    "nn.Embedding(10, 3, padding_idx=-1)": "Embedding(10, 3, padding_idx=9)",
    "nn.RNNCell(3, 4)": "RNNCell(3, 4)",
    "nn.RNNCell(3, 4, bias=False, nonlinearity='relu')":
        "RNNCell(3, 4, bias=False, nonlinearity=relu)",
    "nn.GRUCell(3, 4)": "GRUCell(3, 4)",
    "nn.LSTMCell(3, 4, bias=False)": "LSTMCell(3, 4, bias=False)",
    "nn.GRU(3, 4)": "GRU(3, 4)",
    "nn.LSTM(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.5)":
        "LSTM(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.5)",
    "nn.RNN(3, 4, num_layers=3)": "RNN(3, 4, num_layers=3)",
    "nn.GRU(3, 4, bidirectional=True)": "GRU(3, 4, bidirectional=True)",
    "nn.LSTM(3, 4, 2, batch_first=True, dropout=0.1, bidirectional=True)":
        "LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.1, bidirectional=True)",
    "nn.MSELoss()": "MSELoss()",
    "nn.CrossEntropyLoss(label_smoothing=0.1)": "CrossEntropyLoss()",
    "nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Tanh(), nn.Dropout()))":
        "Sequential(\n  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): Sequential(\n    (0): Tanh()\n    (1): Dropout(p=0.5, inplace=False)\n  )\n)",
    "nn.ModuleList([nn.ReLU(), nn.Sigmoid()])":
        "ModuleList(\n  (0): ReLU()\n  (1): Sigmoid()\n)",
    "nn.ModuleDict({'enc': nn.Linear(1, 2)})":
        "ModuleDict(\n  (enc): Linear(in_features=1, out_features=2, bias=True)\n)",
}


@pytest.mark.parametrize("expr", list(REPRS))
def test_repr_matches_pytorch_format(expr):
    assert repr(build(expr, dg)) == REPRS[expr]


@pytest.mark.parametrize("expr", list(REPRS))
def test_repr_equals_torch_repr(expr):
    torch = pytest.importorskip("torch")
    assert repr(build(expr, dg)) == repr(build(expr, torch))


def test_parameter_repr_says_parameter_containing():
    p = nn.Parameter(dg.tensor([1.0, 2.0]))
    assert repr(p).startswith("Parameter containing:\ntensor([1., 2.], requires_grad=True)")


# ------------------------------------------------------------------ parameters and names


PARAM_EXPRS = [
    "nn.Linear(3, 4)",
    "nn.Linear(3, 4, bias=False)",
    "nn.LayerNorm(4)",
    "nn.LayerNorm(4, elementwise_affine=False)",
    "nn.LayerNorm(4, bias=False)",
    "nn.Embedding(6, 2)",
    "nn.RNNCell(3, 4)",
    "nn.GRUCell(3, 4, bias=False)",
    "nn.LSTMCell(3, 4)",
    "nn.RNN(3, 4, num_layers=2)",
    "nn.GRU(3, 4, num_layers=2, bias=False)",
    "nn.LSTM(3, 4, num_layers=3)",
    "nn.RNN(3, 4, bidirectional=True)",
    "nn.GRU(3, 4, num_layers=2, bidirectional=True, bias=False)",
    "nn.LSTM(3, 4, num_layers=3, bidirectional=True)",
    "nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))",
    "nn.ModuleDict({'a': nn.Linear(1, 2), 'b': nn.ModuleList([nn.GRUCell(2, 2)])})",
]


@pytest.mark.parametrize("expr", PARAM_EXPRS)
def test_named_parameters_names_and_shapes_equal_torch(expr):
    torch = pytest.importorskip("torch")
    mine = [(n, tuple(p.shape)) for n, p in build(expr, dg).named_parameters()]
    theirs = [(n, tuple(p.shape)) for n, p in build(expr, torch).named_parameters()]
    assert mine == theirs


def test_lstm_parameter_names_and_stacked_gate_shapes():
    m = nn.LSTM(3, 5, num_layers=2)
    assert {n: p.shape for n, p in m.named_parameters()} == {
        "weight_ih_l0": (20, 3), "weight_hh_l0": (20, 5), "bias_ih_l0": (20,),
        "bias_hh_l0": (20,), "weight_ih_l1": (20, 5), "weight_hh_l1": (20, 5),
        "bias_ih_l1": (20,), "bias_hh_l1": (20,)}


def test_nested_parameter_names_are_dotted_paths():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))
    assert [n for n, _ in m.named_parameters()] == ["0.weight", "0.bias", "2.0.weight",
                                                    "2.0.bias"]
    assert [n for n, _ in m.named_parameters(prefix="net")][0] == "net.0.weight"
    assert list(m.parameters(recurse=False)) == []


def test_parameters_require_grad_and_are_leaves():
    for p in nn.GRU(2, 3).parameters():
        assert isinstance(p, nn.Parameter) and p.requires_grad and p.is_leaf


def test_parameter_shares_storage_with_the_tensor_it_wraps():
    t = dg.zeros(3)
    p = nn.Parameter(t)
    with dg.no_grad():
        t.add_(1.0)
    np.testing.assert_array_equal(p.detach().numpy(), [1.0, 1.0, 1.0])
    assert nn.Parameter(t, requires_grad=False).requires_grad is False


def test_assigning_a_plain_tensor_over_a_parameter_raises():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'weight'"):
        m.weight = dg.zeros(2, 2)
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]


def test_assigning_before_super_init_names_the_fix():
    class Bad(nn.Module):
        def __init__(self):
            self.x = 1

    with pytest.raises(AttributeError, match=re.escape("call super().__init__() first")):
        Bad()


def test_children_modules_and_named_modules():
    inner = nn.Linear(1, 1)
    m = nn.Sequential(inner, nn.Sequential(inner, nn.ReLU()))
    assert list(m.children())[0] is inner and len(list(m.children())) == 2
    assert [n for n, _ in m.named_modules()] == ["", "0", "1", "1.1"]   # inner once
    assert len(list(m.modules())) == 4


def test_buffers_persistent_and_not():
    m = nn.Module()
    m.register_buffer("running", dg.zeros(2))
    m.register_buffer("scratch", dg.ones(2), persistent=False)
    assert [n for n, _ in m.named_buffers()] == ["running", "scratch"]
    assert list(m.state_dict()) == ["running"]
    assert list(m.parameters()) == []
    m.running = dg.ones(2)   # reassigning a buffer keeps it a buffer
    np.testing.assert_array_equal(m.state_dict()["running"].numpy(), [1.0, 1.0])
    with pytest.raises(TypeError, match="buffer"):
        m.running = 3.0


def test_module_without_forward_names_the_missing_method():
    with pytest.raises(NotImplementedError, match='missing the required "forward"'):
        nn.Module()(dg.zeros(1))


def test_forward_hook_sees_output_and_can_replace_it_then_be_removed():
    m = nn.Linear(2, 2)
    seen = []
    handle = m.register_forward_hook(lambda mod, args, out: seen.append(mod) or out * 0.0)
    x = dg.randn(1, 2)
    assert m(x).abs().sum().item() == 0.0 and seen == [m]
    handle.remove()
    assert m(x).abs().sum().item() > 0.0


def test_zero_grad_to_none_and_to_zeros():
    m = nn.Linear(2, 2)
    m(dg.randn(3, 2)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert all(np.all(p.grad.numpy() == 0) for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_requires_grad_and_apply_visit_every_parameter_and_module():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    visited = []
    assert m.apply(visited.append) is m
    assert visited == [m[0], m[1][0], m[1], m]      # children first, as in PyTorch


def test_double_and_float_convert_parameters_in_place():
    m = nn.Linear(2, 3)
    w = m.weight
    m.double()
    assert m.weight is w and w.dtype is dg.float64 and m.bias.dtype is dg.float64
    assert m(dg.randn(1, 2, dtype=dg.float64)).dtype is dg.float64
    m.float()
    assert w.dtype is dg.float32 and w.requires_grad


# ------------------------------------------------------------------ containers


def test_sequential_indexing_slicing_len_iter_append():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    s = nn.Sequential(a, b)
    assert s[0] is a and s[-1] is b and len(s) == 2
    s.append(c)
    assert list(s) == [a, b, c]
    sub = s[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c]
    assert [n for n, _ in sub.named_parameters()] == ["2.weight", "2.bias"]  # keeps names
    with pytest.raises(IndexError):
        s[3]


def test_sequential_with_ordered_dict_names_its_modules():
    s = nn.Sequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.Tanh()))
    assert [n for n, _ in s.named_parameters()] == ["fc.weight", "fc.bias"]
    assert s.fc is s[0]


def test_module_list_registers_parameters_and_supports_list_ops():
    ml = nn.ModuleList([nn.Linear(1, 1) for _ in range(2)])
    ml.append(nn.Linear(1, 2))
    ml.insert(0, nn.Linear(1, 3))
    assert [m.out_features for m in ml] == [3, 1, 1, 2]
    assert len(list(ml.parameters())) == 8
    ml[1] = nn.Identity()
    assert len(list(ml.parameters())) == 6 and isinstance(ml[1], nn.Identity)
    assert isinstance(ml[1:], nn.ModuleList) and len(ml[1:]) == 3
    with pytest.raises(NotImplementedError):
        ml(dg.zeros(1))


def test_module_dict_registers_and_deletes():
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    md["b"] = nn.Linear(1, 2)
    assert list(md) == ["a", "b"] and "b" in md and len(md) == 2
    assert [n for n, _ in md.named_parameters()] == ["a.weight", "a.bias", "b.weight",
                                                     "b.bias"]
    del md["a"]
    assert list(md.keys()) == ["b"] and len(list(md.parameters())) == 2


# ------------------------------------------------------------------ state dicts


def test_state_dict_round_trip_reproduces_outputs():
    dg.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))
    dg.manual_seed(1)
    b = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))
    x = dg.randn(5, 3)
    assert not np.allclose(a(x).detach().numpy(), b(x).detach().numpy())
    params_before = list(b.parameters())
    res = b.load_state_dict(a.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    np.testing.assert_array_equal(a(x).detach().numpy(), b(x).detach().numpy())
    assert list(b.parameters()) == params_before        # loaded in place, same objects


def test_state_dict_keys_order_and_detached_shared_storage():
    m = nn.GRU(2, 3, num_layers=2)
    sd = m.state_dict()
    assert list(sd) == [n for n, _ in m.named_parameters()]
    w = sd["weight_ih_l0"]
    assert not w.requires_grad
    with dg.no_grad():
        w.fill_(0.5)
    assert np.all(m.weight_ih_l0.detach().numpy() == 0.5)
    assert m.state_dict(keep_vars=True)["weight_ih_l0"] is m.weight_ih_l0


def test_load_state_dict_missing_key_raises_with_its_name():
    m = nn.Linear(2, 2)
    sd = m.state_dict()
    del sd["bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: 'bias'"):
        m.load_state_dict(sd)


def test_load_state_dict_unexpected_key_raises_with_its_name():
    m = nn.Linear(2, 2)
    sd = m.state_dict()
    sd["extra"] = dg.zeros(1)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: 'extra'"):
        m.load_state_dict(sd)


def test_load_state_dict_size_mismatch_raises_even_when_not_strict():
    m = nn.Linear(2, 2)
    sd = nn.Linear(3, 2).state_dict()
    with pytest.raises(RuntimeError, match=r"size mismatch for weight: copying a param with "
                                           r"shape \[2, 3\].*current model is \[2, 2\]"):
        m.load_state_dict(sd, strict=False)


def test_load_state_dict_not_strict_loads_the_rest_and_reports_keys():
    m = nn.Linear(2, 2)
    w_before = m.weight.detach().numpy().copy()
    res = m.load_state_dict({"bias": dg.ones(2), "junk": dg.zeros(1)}, strict=False)
    assert res == (["weight"], ["junk"])
    assert res.missing_keys == ["weight"] and res.unexpected_keys == ["junk"]
    np.testing.assert_array_equal(m.bias.detach().numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(m.weight.detach().numpy(), w_before)


def test_load_state_dict_failure_leaves_module_unchanged():
    m = nn.Linear(2, 2)
    before = {k: v.numpy().copy() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError):
        m.load_state_dict({"weight": dg.zeros(2, 2)})           # bias missing
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_persistent_buffers_round_trip_and_dtype_is_kept():
    src, dst = nn.Module(), nn.Module()
    src.register_buffer("count", dg.tensor([3.0, 4.0], dtype=dg.float64))
    dst.register_buffer("count", dg.zeros(2))
    dst.load_state_dict(src.state_dict())
    assert dst.count.dtype is dg.float32
    np.testing.assert_array_equal(dst.count.numpy(), [3.0, 4.0])


def test_load_state_dict_accepts_numpy_arrays():
    m = nn.Linear(2, 1)
    m.load_state_dict({"weight": np.array([[1.0, 2.0]], np.float32),
                       "bias": np.array([0.5], np.float32)})
    assert m(dg.tensor([[1.0, 1.0]])).item() == 3.5


def test_state_dict_loads_into_torch_and_back():
    torch = pytest.importorskip("torch")
    m = nn.LSTM(3, 4, num_layers=2)
    tm = torch.nn.LSTM(3, 4, num_layers=2)
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy()) for k, v in
                        m.state_dict().items()})
    m2 = nn.LSTM(3, 4, num_layers=2)
    m2.load_state_dict({k: dg.tensor(v.numpy()) for k, v in tm.state_dict().items()})
    for (n, p), (_, q) in zip(m.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=n)


# ------------------------------------------------------------------ deepcopy


def test_deepcopy_is_independent():
    m = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    m[0](dg.randn(1, 2)).sum().backward()
    c = copy.deepcopy(m)
    for (n, p), (_, q) in zip(m.named_parameters(), c.named_parameters()):
        assert p is not q and isinstance(q, nn.Parameter) and q.requires_grad
        np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=n)
    np.testing.assert_array_equal(c[0].weight.grad.numpy(), m[0].weight.grad.numpy())
    with dg.no_grad():
        c[0].weight.fill_(9.0)
    c[0].weight.grad.zero_()
    assert not np.any(m[0].weight.detach().numpy() == 9.0)
    assert np.any(m[0].weight.grad.numpy() != 0)
    assert c[0].weight is c.state_dict(keep_vars=True)["0.weight"]   # attribute = registry


def test_deepcopy_keeps_tied_weights_tied():
    enc, dec = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    dec.weight = enc.weight
    m = nn.Sequential(enc, dec)
    c = copy.deepcopy(m)
    assert c[0].weight is c[1].weight and c[0].weight is not enc.weight
    assert len(list(c.parameters())) == 1


def test_deepcopy_copies_buffers_and_training_flag():
    m = nn.Module()
    m.register_buffer("b", dg.ones(2))
    m.eval()
    c = copy.deepcopy(m)
    assert c.b is not m.b and not c.training
    with dg.no_grad():
        c.b.zero_()
    np.testing.assert_array_equal(m.b.numpy(), [1.0, 1.0])


# ------------------------------------------------------------------ version counter


def test_every_attribute_assignment_bumps_version():
    m = nn.Linear(2, 2)
    v = m._version
    m.some_flag = True
    assert m._version == v + 1
    m.weight = nn.Parameter(dg.zeros(2, 2))
    assert m._version == v + 2
    m.sub = nn.ReLU()
    m.register_buffer("buf", dg.zeros(1))
    m.add_module("other", nn.Tanh())
    assert m._version == v + 5
    del m.some_flag
    assert m._version == v + 6


def test_reading_and_calling_do_not_bump_version():
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    v = m._version, m[0]._version
    _ = m[0].weight, m.training
    m(dg.randn(1, 2)).sum().backward()
    assert (m._version, m[0]._version) == v


def test_train_and_eval_set_the_flags_without_bumping_versions_outside_a_trace():
    """Compiled functions guard ``training`` beside ``_version`` (Note [training is not
    counted by _version]), so an evaluation between compiled training steps leaves their
    variant valid; a direct assignment still bumps, as any attribute's."""
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    before = [mod._version for mod in m.modules()]
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    assert [mod._version for mod in m.modules()] == before
    m[1].training = False
    assert m[1]._version == before[2] + 1


def test_train_and_eval_inside_a_trace_bump_the_versions_they_change():
    """Inside a trace (a dispatch mode active) a change of the flag bumps the version: the
    library method runs natively there and a compiled call would not repeat it."""
    from dyngrad.dispatch import DispatchMode, push_mode
    m = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    before = [mod._version for mod in m.modules()]
    with push_mode(DispatchMode()):
        m.train()  # (no change: no bump)
        assert [mod._version for mod in m.modules()] == before
        m.eval()
    assert all(mod._version == b + 1 for mod, b in zip(m.modules(), before))


# ------------------------------------------------------------------ train / eval, dropout


def test_train_eval_set_the_flag_recursively():
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout()))
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    with pytest.raises(ValueError, match="boolean"):
        m.train("yes")


def test_dropout_is_identity_in_eval_mode():
    d = nn.Dropout(0.5).eval()
    x = dg.randn(100)
    np.testing.assert_array_equal(d(x).numpy(), x.numpy())
    np.testing.assert_array_equal(F.dropout(x, 0.5, training=False).numpy(), x.numpy())


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_zeroes_fraction_p_and_scales_the_rest(p):
    dg.manual_seed(0)
    n = 200_000
    x = dg.ones(n)
    y = nn.Dropout(p)(x).numpy()
    zeroed = np.mean(y == 0)
    assert abs(zeroed - p) < 4 * math.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - p), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02                     # unbiased in expectation


def test_dropout_is_reproducible_under_manual_seed_and_varies_between_calls():
    d = nn.Dropout(0.5)
    x = dg.ones(64)
    dg.manual_seed(3)
    a, b = d(x).numpy(), d(x).numpy()
    dg.manual_seed(3)
    np.testing.assert_array_equal(d(x).numpy(), a)
    assert not np.array_equal(a, b)


def test_dropout_gradient_is_the_scaled_mask():
    dg.manual_seed(1)
    x = dg.randn(50, requires_grad=True)
    y = F.dropout(x, 0.4)
    y.sum().backward()
    mask = y.detach().numpy() != 0
    np.testing.assert_allclose(x.grad.numpy(), mask / 0.6, rtol=1e-6)


def test_dropout_edge_probabilities_and_errors():
    x = dg.randn(10)
    np.testing.assert_array_equal(nn.Dropout(0.0)(x).numpy(), x.numpy())
    assert np.all(nn.Dropout(1.0)(x).numpy() == 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(x, -0.1)


def test_recurrent_dropout_only_between_layers_and_only_in_training():
    dg.manual_seed(0)
    m = nn.GRU(3, 4, num_layers=2, dropout=0.9)
    x = dg.randn(5, 2, 3)
    m.eval()
    ref = m(x)[0].detach().numpy()
    np.testing.assert_array_equal(m(x)[0].detach().numpy(), ref)
    m.train()
    dg.manual_seed(1)
    a = m(x)[0].detach().numpy()
    dg.manual_seed(1)
    np.testing.assert_array_equal(m(x)[0].detach().numpy(), a)
    assert not np.allclose(a, ref)
    with pytest.warns(UserWarning, match="dropout"):
        one = nn.GRU(3, 4, num_layers=1, dropout=0.9)   # nothing between layers: no dropout
    np.testing.assert_array_equal(one(x)[0].detach().numpy(),
                                  one.eval()(x)[0].detach().numpy())


# ------------------------------------------------------------------ embedding, tying


def test_embedding_padding_row_is_zero_and_gets_zero_grad():
    e = nn.Embedding(5, 3, padding_idx=2)
    assert np.all(e.weight.detach().numpy()[2] == 0)
    idx = dg.tensor([[2, 0, 2], [1, 0, 4]])
    e(idx).sum().backward()
    g = e.weight.grad.numpy()
    np.testing.assert_array_equal(g[2], 0.0)
    np.testing.assert_array_equal(g[:, 0], [2.0, 1.0, 0.0, 0.0, 1.0])   # per-row counts


def test_embedding_negative_padding_idx_counts_from_the_end():
    e = nn.Embedding(5, 3, padding_idx=-1)
    assert e.padding_idx == 4
    with pytest.raises(AssertionError, match="Padding_idx must be within"):
        nn.Embedding(5, 3, padding_idx=5)


def test_tied_parameter_appears_once_and_accumulates_both_gradients():
    enc, dec = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    dec.weight = enc.weight
    m = nn.Sequential(OrderedDict(enc=enc, dec=dec))
    assert [n for n, _ in m.named_parameters()] == ["enc.weight"]
    assert len(list(m.named_parameters(remove_duplicate=False))) == 2
    assert list(m.state_dict()) == ["enc.weight", "dec.weight"]      # as in PyTorch
    idx = dg.tensor([1, 3])
    m(idx).sum().backward()
    w = enc.weight.detach().numpy()
    expected = np.zeros_like(w)
    expected[[1, 3]] += 1.0 * w.sum(0)                   # through the lookup: dL/dh = Σ W rows
    expected += (w[1] + w[3])[None, :]                   # through the projection
    np.testing.assert_allclose(enc.weight.grad.numpy(), expected, rtol=1e-5)


# ------------------------------------------------------------------ default initialisation


def _within(p, bound):
    """All values in [-bound, bound], and (for a large tensor) spread across the range."""
    a = p.detach().numpy()
    spread = a.size < 200 or (a.max() > 0.9 * bound and a.min() < -0.9 * bound)
    return a.min() >= -bound and a.max() <= bound and spread


def test_linear_default_init_is_uniform_in_one_over_sqrt_in():
    dg.manual_seed(0)
    m = nn.Linear(64, 128)
    bound = 1 / math.sqrt(64)
    assert _within(m.weight, bound) and _within(m.bias, bound)
    assert abs(m.weight.detach().numpy().var() - bound ** 2 / 3) < 0.1 * bound ** 2 / 3


@pytest.mark.parametrize("expr", ["nn.RNNCell(8, 16)", "nn.GRUCell(8, 16)",
                                  "nn.LSTMCell(8, 16)", "nn.RNN(8, 16, num_layers=2)",
                                  "nn.GRU(8, 16, num_layers=2)", "nn.LSTM(8, 16, num_layers=2)"])
def test_recurrent_default_init_is_uniform_in_one_over_sqrt_hidden(expr):
    dg.manual_seed(0)
    m = build(expr, dg)
    for n, p in m.named_parameters():
        assert _within(p, 1 / math.sqrt(16)), n


def test_embedding_default_init_is_standard_normal():
    dg.manual_seed(0)
    w = nn.Embedding(1000, 64).weight.detach().numpy()
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1.0) < 0.01


def test_layer_norm_default_init_is_ones_and_zeros():
    ln = nn.LayerNorm(5)
    np.testing.assert_array_equal(ln.weight.detach().numpy(), np.ones(5))
    np.testing.assert_array_equal(ln.bias.detach().numpy(), np.zeros(5))


def test_default_init_is_reproducible_under_manual_seed():
    dg.manual_seed(5)
    a = nn.LSTM(3, 4).state_dict()
    dg.manual_seed(5)
    b = nn.LSTM(3, 4).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())


# ------------------------------------------------------------------ init functions


@pytest.fixture
def big():
    dg.manual_seed(0)
    return dg.empty(400, 500)     # fan_in 500, fan_out 400; 200k samples


def _stats(t):
    a = t.detach().numpy().astype(np.float64)
    return a.mean(), a.std(), a.min(), a.max()


def test_uniform_and_normal_statistics(big):
    init = nn.init
    assert init.uniform_(big, -2.0, 4.0) is big
    mean, std, lo, hi = _stats(big)
    assert lo >= -2.0 and hi <= 4.0 and abs(mean - 1.0) < 0.02
    assert abs(std - 6 / math.sqrt(12)) < 0.01
    init.normal_(big, 3.0, 0.5)
    mean, std, _, _ = _stats(big)
    assert abs(mean - 3.0) < 0.005 and abs(std - 0.5) < 0.005


def test_constant_zeros_ones(big):
    init = nn.init
    assert np.all(init.constant_(big, 0.25).numpy() == 0.25)
    assert np.all(init.zeros_(big).numpy() == 0)
    assert np.all(init.ones_(big).numpy() == 1)


def test_xavier_statistics(big):
    init = nn.init
    a = 2.0 * math.sqrt(6.0 / 900)
    init.xavier_uniform_(big, gain=2.0)
    _, std, lo, hi = _stats(big)
    assert -a <= lo and hi <= a and abs(std - a / math.sqrt(3)) < 0.01 * a
    init.xavier_normal_(big)
    _, std, _, _ = _stats(big)
    assert abs(std - math.sqrt(2.0 / 900)) < 0.01 * math.sqrt(2.0 / 900)


@pytest.mark.parametrize("mode,fan", [("fan_in", 500), ("fan_out", 400)])
def test_kaiming_statistics(big, mode, fan):
    init = nn.init
    std = math.sqrt(2.0) / math.sqrt(fan)
    init.kaiming_uniform_(big, mode=mode, nonlinearity="relu")
    _, s, lo, hi = _stats(big)
    bound = std * math.sqrt(3)
    assert -bound <= lo and hi <= bound and abs(s - std) < 0.01 * std
    init.kaiming_normal_(big, mode=mode, nonlinearity="relu")
    assert abs(_stats(big)[1] - std) < 0.01 * std
    init.kaiming_uniform_(big, a=math.sqrt(5))        # Linear's default: bound 1/√fan_in
    assert _stats(big)[3] <= 1 / math.sqrt(500)


def test_calculate_gain_values():
    g = nn.init.calculate_gain
    assert g("linear") == g("sigmoid") == g("conv2d") == 1.0
    assert g("tanh") == pytest.approx(5 / 3)
    assert g("relu") == pytest.approx(math.sqrt(2))
    assert g("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01 ** 2)))
    assert g("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert g("selu") == 0.75
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        g("swish")


def test_init_errors_and_no_graph():
    init = nn.init
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(dg.empty(3))
    with pytest.raises(ValueError, match="fan_in, fan_out"):
        init.kaiming_normal_(dg.empty(3, 3), mode="fan_avg")
    w = nn.Parameter(dg.empty(3, 3))
    init.kaiming_uniform_(w)
    assert w.is_leaf and w.requires_grad and w.grad_fn is None


def test_init_is_reproducible_under_manual_seed():
    a, b = dg.empty(4, 4), dg.empty(4, 4)
    dg.manual_seed(11)
    nn.init.xavier_normal_(a)
    dg.manual_seed(11)
    nn.init.xavier_normal_(b)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------------------ gradcheck through layers


def _gradcheck_module(m, x, *state, forward_ad=True):
    """Finite-difference check of ``m(x)`` (or ``m(x, h)``, or ``m(x, (h, c))`` for two state
    tensors) with respect to the input, the state AND every parameter.

    A fixed random projection turns the outputs into one scalar, so the check costs one
    backward per evaluation rather than one per output element."""
    n_in = 1 + len(state)
    weights = {}

    def fn(*args):
        x, st = args[0], args[1:n_in]
        outs = flat(m(x) if not st else m(x, st[0]) if len(st) == 1 else m(x, tuple(st)))
        total = 0.0
        for i, o in enumerate(outs):
            if i not in weights:
                weights[i] = dg.tensor(arr(*o.shape, seed=100 + i))
            total = total + (o * weights[i]).sum()
        return total

    assert gradcheck(fn, (x, *state, *m.parameters()), check_forward_ad=forward_ad)


LAYER_CHECKS = [
    "nn.Linear(3, 2)", "nn.Linear(3, 2, bias=False)", "nn.ReLU()", "nn.Tanh()",
    "nn.Sigmoid()", "nn.SiLU()", "nn.LeakyReLU(0.1)", "nn.GELU()",
    "nn.GELU(approximate='tanh')", "nn.Softmax(dim=1)", "nn.LogSoftmax(dim=0)",
    "nn.Flatten(0)", "nn.Identity()", "nn.LayerNorm(3)",
    "nn.LayerNorm((2, 3), elementwise_affine=False)",
    "nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))",
]


@pytest.mark.parametrize("expr", LAYER_CHECKS)
def test_gradcheck_layer(expr):
    dg.manual_seed(0)
    m = build(expr, dg).double()
    x = leaf(2, 3) if "(2, 3)" not in expr else leaf(4, 2, 3)
    if "ReLU" in expr:          # keep away from the kink
        x = dg.tensor(arr(2, 3) + np.sign(arr(2, 3)) * 0.1, requires_grad=True)
    _gradcheck_module(m, x)


def test_gradcheck_dropout_with_a_fixed_seed():
    d = nn.Dropout(0.4)

    def fn(x):
        dg.manual_seed(0)       # the same mask at every evaluation
        return d(x)

    assert gradcheck(fn, (leaf(3, 4),))


def test_gradcheck_embedding_weight():
    # With padding_idx the padding row's gradient is zero by definition (not the finite
    # difference), so the check uses indices that avoid it.
    dg.manual_seed(0)
    e = nn.Embedding(4, 2, padding_idx=1).double()
    idx = dg.tensor([[0, 3, 3], [2, 0, 2]])
    assert gradcheck(lambda w: e(idx), (e.weight,))


CELL_CHECKS = [("nn.RNNCell(2, 3)", False), ("nn.RNNCell(2, 3, nonlinearity='relu')", True),
               ("nn.GRUCell(2, 3)", False), ("nn.GRUCell(2, 3, bias=False)", True),
               ("nn.LSTMCell(2, 3)", False), ("nn.LSTMCell(2, 3)", True)]


@pytest.mark.parametrize("expr,with_state", CELL_CHECKS)
def test_gradcheck_cell(expr, with_state):
    dg.manual_seed(0)
    m = build(expr, dg).double()
    x = leaf(2, 2)
    if not with_state:
        _gradcheck_module(m, x, forward_ad="LSTM" in expr)
    elif "LSTM" in expr:
        _gradcheck_module(m, x, leaf(2, 3, seed=1), leaf(2, 3, seed=2), forward_ad=True)
    else:
        _gradcheck_module(m, x, leaf(2, 3, seed=1), forward_ad="relu" in expr)


RNN_CHECKS = [(cls, bf, st) for cls in ("RNN", "GRU", "LSTM") for bf in (False, True)
              for st in (False, True)]


@pytest.mark.parametrize("cls,batch_first,with_state", RNN_CHECKS)
def test_gradcheck_two_layer_recurrent(cls, batch_first, with_state):
    dg.manual_seed(0)
    m = getattr(nn, cls)(2, 2, num_layers=2, batch_first=batch_first).double()
    x = leaf(2, 3, 2)                          # (seq 2, batch 3) or (batch 2, seq 3)
    batch = 2 if batch_first else 3
    forward_ad = not batch_first and with_state   # the jvp check is slow; once per class
    if not with_state:
        _gradcheck_module(m, x, forward_ad=forward_ad)
    elif cls == "LSTM":
        _gradcheck_module(m, x, leaf(2, batch, 2, seed=1), leaf(2, batch, 2, seed=2),
                          forward_ad=forward_ad)
    else:
        _gradcheck_module(m, x, leaf(2, batch, 2, seed=1), forward_ad=forward_ad)


BIDIRECTIONAL_CHECKS = [("RNN", False, False), ("GRU", True, True), ("LSTM", False, True),
                        ("LSTM", True, False)]


@pytest.mark.parametrize("cls,batch_first,with_state", BIDIRECTIONAL_CHECKS)
def test_gradcheck_two_layer_bidirectional_recurrent(cls, batch_first, with_state):
    dg.manual_seed(0)
    m = getattr(nn, cls)(2, 2, num_layers=2, batch_first=batch_first,
                         bidirectional=True).double()
    x = leaf(2, 3, 2)                          # (seq 2, batch 3) or (batch 2, seq 3)
    batch = 2 if batch_first else 3
    if not with_state:
        _gradcheck_module(m, x, forward_ad=False)
    elif cls == "LSTM":
        _gradcheck_module(m, x, leaf(4, batch, 2, seed=1), leaf(4, batch, 2, seed=2),
                          forward_ad=False)
    else:
        _gradcheck_module(m, x, leaf(4, batch, 2, seed=1), forward_ad=False)


def test_gradcheck_unbatched_bidirectional_lstm():
    dg.manual_seed(0)
    m = nn.LSTM(2, 2, bidirectional=True).double()
    _gradcheck_module(m, leaf(3, 2), leaf(2, 2, seed=1), leaf(2, 2, seed=2), forward_ad=True)


def test_gradcheck_relu_rnn():
    dg.manual_seed(0)
    m = nn.RNN(2, 2, 2, "relu").double()
    _gradcheck_module(m, leaf(2, 3, 2), forward_ad=False)


def test_gradcheck_unbatched_lstm():
    dg.manual_seed(0)
    m = nn.LSTM(2, 2).double()
    _gradcheck_module(m, leaf(3, 2), leaf(1, 2, seed=1), leaf(1, 2, seed=2),
                      forward_ad=False)


def _targets():
    return {
        "float": dg.tensor(arr(3, 4, seed=9)),
        "prob": dg.tensor(1 / (1 + np.exp(-arr(3, 4, seed=9)))),
        "class": dg.tensor([0, 3, 1]),
        "class_ignored": dg.tensor([0, -100, 2]),
        "soft": dg.tensor(np.exp(arr(3, 4, seed=9)) / np.exp(arr(3, 4, seed=9)).sum(1,
                                                                                   keepdims=True)),
    }


LOSS_CHECKS = [
    ("nn.MSELoss()", "logits", "float"),
    ("nn.MSELoss(reduction='sum')", "logits", "float"),
    ("nn.L1Loss()", "logits", "float"),
    ("nn.L1Loss(reduction='none')", "logits", "float"),
    ("nn.CrossEntropyLoss()", "logits", "class"),
    ("nn.CrossEntropyLoss(reduction='none')", "logits", "class"),
    ("nn.CrossEntropyLoss(label_smoothing=0.2)", "logits", "class_ignored"),
    ("nn.CrossEntropyLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))",
     "logits", "class_ignored"),
    ("nn.CrossEntropyLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64), "
     "label_smoothing=0.1)", "logits", "class"),
    ("nn.CrossEntropyLoss(label_smoothing=0.1)", "logits", "soft"),
    ("nn.NLLLoss()", "logits", "class"),
    ("nn.NLLLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))", "logits",
     "class_ignored"),
    ("nn.NLLLoss(reduction='sum')", "logits", "class"),
    ("nn.BCELoss()", "prob", "prob"),
    ("nn.BCELoss(reduction='sum')", "prob", "float_01"),
    ("nn.BCEWithLogitsLoss()", "logits", "prob"),
    ("nn.BCEWithLogitsLoss(pos_weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))",
     "logits", "prob"),
]


def _loss_inputs(kind_in, kind_t):
    x = leaf(3, 4) if kind_in == "logits" else \
        dg.tensor(1 / (1 + np.exp(-arr(3, 4))), requires_grad=True)
    t = dg.tensor(np.random.default_rng(4).uniform(size=(3, 4))) if kind_t == "float_01" \
        else _targets()[kind_t]
    return x, t


@pytest.mark.parametrize("expr,kind_in,kind_t", LOSS_CHECKS, ids=[c[0] for c in LOSS_CHECKS])
def test_gradcheck_loss(expr, kind_in, kind_t):
    loss = build(expr, dg)
    x, t = _loss_inputs(kind_in, kind_t)
    assert gradcheck(lambda x: loss(x, t), (x,))


def test_gradcheck_loss_with_respect_to_float_targets():
    x, t = leaf(3, 4), leaf(3, 4, seed=5)
    assert gradcheck(lambda x, t: nn.MSELoss()(x, t), (x, t))
    assert gradcheck(lambda x, t: nn.BCEWithLogitsLoss()(x, t.sigmoid()), (x, t))


# ------------------------------------------------------------------ PyTorch oracle: modules


ORACLE_MODULES = [
    ("nn.Linear(3, 4)", [(5, 3)]),
    ("nn.Linear(3, 4, bias=False)", [(2, 5, 3)]),
    ("nn.LayerNorm(4)", [(2, 3, 4)]),
    ("nn.LayerNorm((3, 4), eps=1e-3)", [(2, 3, 4)]),
    ("nn.LayerNorm(4, elementwise_affine=False)", [(3, 4)]),
    ("nn.RNNCell(3, 4)", [(2, 3)]),
    ("nn.RNNCell(3, 4, nonlinearity='relu')", [(2, 3), (2, 4)]),
    ("nn.GRUCell(3, 4)", [(2, 3)]),
    ("nn.GRUCell(3, 4, bias=False)", [(2, 3), (2, 4)]),
    ("nn.GRUCell(3, 4)", [(3,), (4,)]),
    ("nn.LSTMCell(3, 4)", [(2, 3)]),
    ("nn.LSTMCell(3, 4)", [(2, 3), ((2, 4), (2, 4))]),
    ("nn.RNN(3, 4, num_layers=2)", [(5, 2, 3)]),
    ("nn.RNN(3, 4, num_layers=2, batch_first=True)", [(2, 5, 3), (2, 2, 4)]),
    ("nn.GRU(3, 4, num_layers=2)", [(5, 2, 3), (2, 2, 4)]),
    ("nn.GRU(3, 4, num_layers=2, batch_first=True, bias=False)", [(2, 5, 3)]),
    ("nn.GRU(3, 4)", [(5, 3), (1, 4)]),
    ("nn.RNN(3, 4, 2, 'relu', batch_first=True)", [(2, 5, 3)]),
    ("nn.LSTM(3, 4, num_layers=2)", [(5, 2, 3), ((2, 2, 4), (2, 2, 4))]),
    ("nn.LSTM(3, 4, num_layers=2, batch_first=True)", [(2, 5, 3)]),
    ("nn.LSTM(3, 4, num_layers=3, batch_first=True)", [(2, 5, 3), ((3, 2, 4), (3, 2, 4))]),
    ("nn.LSTM(3, 4)", [(5, 3)]),
    ("nn.RNN(3, 4, bidirectional=True)", [(5, 2, 3)]),
    ("nn.RNN(3, 4, 2, 'relu', batch_first=True, bidirectional=True)", [(2, 5, 3), (4, 2, 4)]),
    ("nn.GRU(3, 4, num_layers=2, bidirectional=True)", [(5, 2, 3), (4, 2, 4)]),
    ("nn.GRU(3, 4, bidirectional=True, bias=False)", [(5, 3)]),
    ("nn.GRU(3, 4, num_layers=2, bidirectional=True)", [(5, 3), (4, 4)]),
    ("nn.LSTM(3, 4, bidirectional=True)", [(5, 2, 3)]),
    ("nn.LSTM(3, 4, num_layers=2, bidirectional=True)", [(5, 2, 3), ((4, 2, 4), (4, 2, 4))]),
    ("nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)", [(2, 5, 3)]),
    ("nn.LSTM(3, 4, num_layers=3, bidirectional=True)", [(5, 3), ((6, 4), (6, 4))]),
    ("nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2))",
     [(5, 3)]),
]


def _oracle_inputs(spec, dtype):
    out = []
    for k, s in enumerate(spec):
        if isinstance(s[0], tuple):
            out.append(tuple(leaf(*ss, seed=10 * k + j, dtype=dtype) for j, ss in enumerate(s)))
        else:
            out.append(leaf(*s, seed=k, dtype=dtype))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("expr,spec", ORACLE_MODULES, ids=[e for e, _ in ORACLE_MODULES])
def test_module_outputs_and_parameter_grads_equal_torch(expr, spec, dtype):
    torch = pytest.importorskip("torch")
    dg.manual_seed(0)
    m = build(expr, dg)
    if dtype == np.float64:
        m.double()
    tm = torch_twin(m, build(expr, torch))
    slack = TORCH_GELU_ERF if "GELU" in expr else None  # torch's GELU approximates erf
    assert_module_matches_torch(m, tm, _oracle_inputs(spec, dtype), slack)


@pytest.mark.parametrize("padding_idx", [None, 0, -2])
def test_embedding_output_and_grad_equal_torch(padding_idx):
    torch = pytest.importorskip("torch")
    m = nn.Embedding(6, 3, padding_idx=padding_idx).double()
    tm = torch_twin(m, torch.nn.Embedding(6, 3, padding_idx=padding_idx))
    idx = np.array([[0, 4, 4], [5, 0, 1]])
    y, ty = m(dg.tensor(idx)), tm(torch.from_numpy(idx))
    close(y, ty)
    v = arr(2, 3, 3, seed=3)
    (y * dg.tensor(v)).sum().backward()
    (ty * torch.from_numpy(v)).sum().backward()
    close(m.weight.grad, tm.weight.grad)


def test_bidirectional_lstm_dropout_is_between_layers_and_matches_torch_in_eval():
    torch = pytest.importorskip("torch")
    expr = "nn.LSTM(3, 4, num_layers=2, dropout=0.5, bidirectional=True)"
    m = build(expr, dg).double()
    tm = torch_twin(m, build(expr, torch)).eval()
    x = dg.tensor(arr(5, 2, 3))
    dg.manual_seed(3)
    a = m(x)[0].detach().numpy()
    dg.manual_seed(3)
    np.testing.assert_array_equal(m(x)[0].detach().numpy(), a)
    assert not np.allclose(a, m.eval()(x)[0].detach().numpy())   # training: dropout applied
    assert_module_matches_torch(m, tm, [leaf(5, 2, 3)])


def test_gru_eval_with_dropout_equals_torch_eval():
    torch = pytest.importorskip("torch")
    m = nn.GRU(3, 4, num_layers=2, dropout=0.5).double().eval()
    tm = torch_twin(m, torch.nn.GRU(3, 4, num_layers=2, dropout=0.5)).eval()
    assert_module_matches_torch(m, tm, [leaf(5, 2, 3)])


# ------------------------------------------------------------------ PyTorch oracle: losses


ORACLE_LOSSES = [
    ("nn.MSELoss()", "logits", "float"),
    ("nn.MSELoss(reduction='none')", "logits", "float"),
    ("nn.L1Loss(reduction='sum')", "logits", "float"),
    ("nn.CrossEntropyLoss()", "logits", "class"),
    ("nn.CrossEntropyLoss(reduction='sum', label_smoothing=0.3)", "logits", "class"),
    ("nn.CrossEntropyLoss(ignore_index=3)", "logits", "class"),
    ("nn.CrossEntropyLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64), "
     "label_smoothing=0.2)", "logits", "class_ignored"),
    ("nn.CrossEntropyLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64), "
     "reduction='none')", "logits", "class_ignored"),
    ("nn.CrossEntropyLoss(label_smoothing=0.1)", "logits", "soft"),
    ("nn.CrossEntropyLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))",
     "logits", "soft"),
    ("nn.NLLLoss()", "logits", "class_ignored"),
    ("nn.NLLLoss(weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))", "logits",
     "class_ignored"),
    ("nn.NLLLoss(reduction='none', ignore_index=0)", "logits", "class"),
    ("nn.BCELoss()", "prob", "prob"),
    ("nn.BCELoss(reduction='none')", "prob", "float_01"),
    ("nn.BCEWithLogitsLoss()", "logits", "prob"),
    ("nn.BCEWithLogitsLoss(reduction='sum', "
     "pos_weight=dg.tensor([1.0, 2.0, 0.5, 3.0], dtype=dg.float64))", "logits", "prob"),
]


@pytest.mark.parametrize("expr,kind_in,kind_t", ORACLE_LOSSES, ids=[c[0] for c in ORACLE_LOSSES])
def test_loss_module_value_and_grad_equal_torch(expr, kind_in, kind_t):
    torch = pytest.importorskip("torch")
    x, t = _loss_inputs(kind_in, kind_t)
    loss, t_loss = build(expr, dg), build(expr, torch)
    tx = to_torch(x)
    y, ty = loss(x, t), t_loss(tx, torch.from_numpy(t.numpy().copy()))
    close(y, ty)
    v = arr(*y.shape, seed=2)
    (y * dg.tensor(v)).sum().backward()
    (ty * torch.from_numpy(v)).sum().backward()
    close(x.grad, tx.grad)


# ------------------------------------------------------------------ PyTorch oracle: functional


def _f_cases():
    """(name, fn(F, lib, *xs), input arrays). Float arrays become leaves requiring grad;
    class weights are constants built inside ``fn`` with ``lib.tensor(W4)`` (torch refuses
    gradients for them)."""
    cls = np.array([0, 3, 1])
    ign = np.array([0, -100, 2])
    soft = np.exp(arr(3, 4, seed=9))
    soft /= soft.sum(1, keepdims=True)
    prob = 1 / (1 + np.exp(-arr(3, 4, seed=8)))
    x34, x5 = arr(3, 4), arr(2, 4, 5, seed=1)
    sp_t = np.array([[0, 1, 2, 3, 0], [3, 2, 1, 0, -100]])
    return [
        ("relu", lambda F, L, x: F.relu(x), [x34]),
        ("gelu", lambda F, L, x: F.gelu(x), [x34]),
        ("gelu_tanh", lambda F, L, x: F.gelu(x, approximate="tanh"), [x34]),
        ("sigmoid", lambda F, L, x: F.sigmoid(x), [x34]),
        ("tanh", lambda F, L, x: F.tanh(x), [x34]),
        ("silu", lambda F, L, x: F.silu(x), [x34]),
        ("leaky_relu", lambda F, L, x: F.leaky_relu(x, 0.2), [x34]),
        ("logsigmoid", lambda F, L, x: F.logsigmoid(x * 30.0), [x34]),
        ("softmax", lambda F, L, x: F.softmax(x, dim=0), [x34]),
        ("log_softmax", lambda F, L, x: F.log_softmax(x, dim=-1), [x5]),
        ("linear", lambda F, L, x, w, b: F.linear(x, w, b), [x34, arr(2, 4, seed=2),
                                                            arr(2, seed=3)]),
        ("linear_no_bias", lambda F, L, x, w: F.linear(x, w), [x5, arr(3, 5, seed=2)]),
        ("embedding", lambda F, L, w, i: F.embedding(i, w, padding_idx=1),
         [arr(4, 3), np.array([[1, 2], [3, 1]])]),
        ("layer_norm", lambda F, L, x, w, b: F.layer_norm(x, (4, 5), w, b, 1e-4),
         [x5, arr(4, 5, seed=2), arr(4, 5, seed=3)]),
        ("layer_norm_plain", lambda F, L, x: F.layer_norm(x, (4,)), [x34]),
        ("normalize", lambda F, L, x: F.normalize(x, dim=0), [x34]),
        ("normalize_p1", lambda F, L, x: F.normalize(x, p=1.0, dim=-1), [x5]),
        ("pad", lambda F, L, x: F.pad(x, (1, 2, 0, 1), value=0.5), [x5]),
        ("one_hot", lambda F, L, i: F.one_hot(i, 5), [np.array([0, 4, 2])]),
        ("mse_loss", lambda F, L, x, y: F.mse_loss(x, y), [x34, arr(3, 4, seed=5)]),
        ("mse_loss_none", lambda F, L, x, y: F.mse_loss(x, y, reduction="none"),
         [x34, arr(3, 4, seed=5)]),
        ("l1_loss", lambda F, L, x, y: F.l1_loss(x, y, reduction="sum"),
         [x34, arr(3, 4, seed=5)]),
        ("cross_entropy", lambda F, L, x, t: F.cross_entropy(x, t), [x34, cls]),
        ("cross_entropy_sum", lambda F, L, x, t: F.cross_entropy(x, t, reduction="sum"),
         [x34, cls]),
        ("cross_entropy_none", lambda F, L, x, t: F.cross_entropy(x, t, reduction="none"),
         [x34, ign]),
        ("cross_entropy_ignore", lambda F, L, x, t: F.cross_entropy(x, t, ignore_index=3),
         [x34, cls]),
        ("cross_entropy_smooth", lambda F, L, x, t: F.cross_entropy(x, t,
                                                                    label_smoothing=0.25),
         [x34, ign]),
        ("cross_entropy_weight", lambda F, L, x, t: F.cross_entropy(x, t, weight=L.tensor(W4)),
         [x34, ign]),
        ("cross_entropy_weight_smooth_sum",
         lambda F, L, x, t: F.cross_entropy(x, t, weight=L.tensor(W4), label_smoothing=0.1,
                                               reduction="sum"), [x34, ign]),
        ("cross_entropy_weight_smooth_none",
         lambda F, L, x, t: F.cross_entropy(x, t, weight=L.tensor(W4), label_smoothing=0.1,
                                               reduction="none"), [x34, ign]),
        ("cross_entropy_probs", lambda F, L, x, p: F.cross_entropy(x, p), [x34, soft]),
        ("cross_entropy_probs_smooth_weight",
         lambda F, L, x, p: F.cross_entropy(x, p, weight=L.tensor(W4), label_smoothing=0.2),
         [x34, soft]),
        ("cross_entropy_spatial", lambda F, L, x, t: F.cross_entropy(x, t), [x5, sp_t]),
        ("cross_entropy_spatial_weight_smooth",
         lambda F, L, x, t: F.cross_entropy(x, t, weight=L.tensor(W4), label_smoothing=0.1),
         [x5, sp_t]),
        ("nll_loss", lambda F, L, x, t: F.nll_loss(F.log_softmax(x, 1), t), [x34, ign]),
        ("nll_loss_weight_none", lambda F, L, x, t: F.nll_loss(x, t, weight=L.tensor(W4),
                                                                  reduction="none"),
         [x34, cls]),
        ("nll_loss_weight", lambda F, L, x, t: F.nll_loss(x, t, weight=L.tensor(W4)), [x34, ign]),
        ("bce", lambda F, L, p, y: F.binary_cross_entropy(p, y), [prob, soft]),
        ("bce_weight", lambda F, L, p, y: F.binary_cross_entropy(p, y, weight=L.ones(4) * 2,
                                                                 reduction="sum"),
         [prob, soft]),
        ("bce_logits", lambda F, L, x, y: F.binary_cross_entropy_with_logits(x, y),
         [x34, prob]),
        ("bce_logits_pos_weight", lambda F, L, x, y:
            F.binary_cross_entropy_with_logits(x, y, pos_weight=L.tensor(W4)), [x34, prob]),
        ("bce_logits_weight_none", lambda F, L, x, y:
            F.binary_cross_entropy_with_logits(x, y, weight=L.tensor(W4), reduction="none"),
         [x34, prob]),
    ]


W4 = np.array([1.0, 2.0, 0.5, 3.0])
F_CASES = _f_cases()


@pytest.mark.parametrize("name,fn,arrays", F_CASES, ids=[c[0] for c in F_CASES])
def test_functional_value_and_grad_equal_torch(name, fn, arrays):
    torch = pytest.importorskip("torch")
    xs = [dg.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    txs = [to_torch(x) for x in xs]
    y = fn(F, dg, *xs)
    ty = fn(torch.nn.functional, torch, *txs)
    close(y, ty, name)
    assert y.dtype.name == str(ty.dtype).split(".")[-1]
    if not y.dtype.is_floating_point:
        return
    v = arr(*y.shape, seed=2)
    (y * dg.tensor(v)).sum().backward()
    (ty * torch.from_numpy(v)).sum().backward()
    for i, (x, tx) in enumerate(zip(xs, txs)):
        if x.requires_grad:
            close(x.grad, tx.grad, f"{name}: grad of input {i}")


# ------------------------------------------------------------------ no value reads


TRACE_MODULES = [(e, s) for e, s, _ in SHAPES] + [(e, spec[0]) for e, spec in ORACLE_MODULES]


@pytest.mark.parametrize("expr,shape", TRACE_MODULES, ids=[e for e, _ in TRACE_MODULES])
def test_module_forward_and_backward_read_no_tensor_values(expr, shape):
    """Nothing in a layer branches on tensor values, so a tracer can record it whole."""
    dg.manual_seed(0)
    m = build(expr, dg)
    x = dg.randn(*shape, requires_grad=True)
    with push_mode(ReadForbidden()):
        sum(o.sum() for o in flat(m(x))).backward()
    assert x.grad is not None


def test_embedding_and_losses_read_no_tensor_values():
    e = nn.Embedding(5, 3, padding_idx=1)
    with push_mode(ReadForbidden()):
        e(dg.tensor([[0, 1, 4]])).sum().backward()
    for expr, kind_in, kind_t in ORACLE_LOSSES:
        x, t = _loss_inputs(kind_in, kind_t)
        with push_mode(ReadForbidden()):
            build(expr, dg)(x, t).sum().backward()


# ------------------------------------------------------------------ gradient clipping


def _model_with_grads(seed=0):
    dg.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    (m(dg.randn(5, 3)) ** 2).sum().backward()
    return m


@pytest.mark.parametrize("max_norm", [0.1, 1e6])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_equals_torch(max_norm, norm_type):
    torch = pytest.importorskip("torch")
    m = _model_with_grads()
    tm = torch_twin(m, torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                                          torch.nn.Linear(4, 2)))
    for p, tp in zip(m.parameters(), tm.parameters()):
        tp.grad = torch.from_numpy(p.grad.numpy().copy())
    with ErrorBound() as eb:  # float32: the tolerances are its error bounds
        total = nn.utils.clip_grad_norm_(m.parameters(), max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(tm.parameters(), max_norm, norm_type)
    close(total, t_total, "total norm", eb)
    for p, tp in zip(m.parameters(), tm.parameters()):
        close(p.grad, tp.grad, "clipped grad", eb)


def test_clip_grad_norm_bounds_the_norm_and_returns_the_old_one():
    m = _model_with_grads()
    grads = np.concatenate([p.grad.numpy().ravel() for p in m.parameters()])
    total = nn.utils.clip_grad_norm_(m.parameters(), 0.5)
    assert total.item() == pytest.approx(np.linalg.norm(grads), rel=1e-5)
    new = np.concatenate([p.grad.numpy().ravel() for p in m.parameters()])
    assert np.linalg.norm(new) == pytest.approx(0.5, rel=1e-5)


def test_clip_grad_norm_reads_no_tensor_values():
    m = _model_with_grads()
    with push_mode(ReadForbidden()):
        total = nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        nn.utils.clip_grad_norm_(m.parameters(), 0.5, norm_type=math.inf)
    assert total.shape == ()


def test_clip_grad_norm_edge_cases():
    p = nn.Parameter(dg.tensor([3.0, 4.0]))
    assert nn.utils.clip_grad_norm_([p], 1.0).item() == 0.0       # no grads yet
    p.grad = dg.tensor([3.0, 4.0])
    assert nn.utils.clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)   # a lone tensor
    p.grad = dg.tensor([math.inf, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


def test_clip_grad_value_clamps_every_element():
    m = _model_with_grads()
    nn.utils.clip_grad_value_(m.parameters(), 0.01)
    for p in m.parameters():
        assert np.abs(p.grad.numpy()).max() <= 0.01
    with push_mode(ReadForbidden()):
        nn.utils.clip_grad_value_(m.parameters(), 0.001)


def test_parameters_to_vector_and_back():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    vec = nn.utils.parameters_to_vector(m.parameters())
    assert vec.shape == (3 * 4 + 4 + 4 * 2 + 2,)
    np.testing.assert_array_equal(vec.detach().numpy()[:12],
                                  m[0].weight.detach().numpy().ravel())
    nn.utils.vector_to_parameters(dg.arange(vec.shape[0]).float(), m.parameters())
    np.testing.assert_array_equal(m[1].bias.detach().numpy(), [24.0, 25.0])
    assert m[1].bias.requires_grad and m[1].bias.is_leaf



def test_orthogonal_trunc_normal_eye_and_dirac_inits():
    from dyngrad.nn import init
    dg.manual_seed(0)
    for shape in [(3, 5), (5, 3), (4, 2, 3, 3)]:
        w = init.orthogonal_(dg.empty(*shape), gain=2.0).numpy().reshape(shape[0], -1)
        small = w @ w.T if shape[0] <= w.shape[1] else w.T @ w
        np.testing.assert_allclose(small, 4 * np.eye(len(small)), atol=1e-5)
    g1, g2 = dg.Generator().manual_seed(3), dg.Generator().manual_seed(3)
    assert np.array_equal(init.orthogonal_(dg.empty(4, 4), generator=g1).numpy(),
                          init.orthogonal_(dg.empty(4, 4), generator=g2).numpy())
    t = init.trunc_normal_(dg.empty(20000), mean=1.0, std=2.0, a=0.0, b=1.5).numpy()
    assert t.min() >= 0.0 and t.max() <= 1.5 and 0.7 < t.mean() < 0.8  # (E = 0.7537...)
    with pytest.raises(ValueError, match="exceeds"):
        init.trunc_normal_(dg.empty(3), a=1.0, b=0.0)
    assert np.array_equal(init.eye_(dg.empty(2, 3)).numpy(), np.eye(2, 3))
    w = init.dirac_(dg.empty(4, 2, 3, 3), groups=2)
    x = dg.randn(1, 4, 5, 5)
    y = dg.nn.functional.conv2d(x, w, padding=1, groups=2).numpy()
    np.testing.assert_array_equal(y[:, [0, 2]], x.numpy()[:, [0, 2]])
    with pytest.raises(ValueError, match="2 or more"):
        init.orthogonal_(dg.empty(3))


@pytest.mark.parametrize("shapes", [((2, 4, 0), (3, 0)), ((2, 4, 5), (0, 5)),
                                    ((0, 4, 5), (3, 5)), ((2, 3, 4, 5), (6, 5))])
def test_linear_folds_leading_dims_and_keeps_empty_dims_working(shapes):
    """F.linear over (..., in) folds the leading dims into rows (and its weight gradient is
    one product over them); inputs or weights with a zero-size dim still work, as in
    PyTorch (a reshape to (-1, 0) would not)."""
    torch = pytest.importorskip("torch")
    xs, ws = shapes
    r = np.random.default_rng(0)
    x = dg.tensor(r.standard_normal(xs), requires_grad=True)
    w = dg.tensor(r.standard_normal(ws), requires_grad=True)
    y = F.linear(x, w)
    g = r.standard_normal(y.shape)
    y.backward(dg.tensor(g))
    tx = torch.tensor(x.detach().numpy(), requires_grad=True)
    tw = torch.tensor(w.detach().numpy(), requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw)
    ty.backward(torch.tensor(g))
    assert y.shape == tuple(ty.shape)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy(), rtol=1e-12, atol=1e-12)
