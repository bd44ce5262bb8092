"""Attention against PyTorch: ``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``
and the transformer modules, with weights copied from torch's modules by name (torch's
state dict loaded into dyngrad's), for every mask convention, returned weights, batch_first
both ways, kdim/vdim, add_bias_kv/add_zero_attn, and encoder/decoder stacks. Forward values
and the gradients of inputs and parameters are compared, in float64 to 1e-10 relative.
Dropout is off (p=0 or eval mode) except where its being applied is the point.

Also: fully masked rows (zeros from SDPA, NaN from MultiheadAttention's weights path, as
PyTorch 2.13), the errors for bad shapes and masks, ``generate_square_subsequent_mask``,
PyTorch's defaults and initialisation, and a compiled training step of a small encoder
against eager. torch is an optional oracle: this file skips without it.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _footgun_compare import assert_same, compiled_calls  # noqa: E402

import compiler  # noqa: E402
import dyngrad as dg  # noqa: E402
from dyngrad import nn, optim  # noqa: E402

F = dg.nn.functional
TF = torch.nn.functional
TOL64 = dict(rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ helpers


@pytest.fixture
def rng(request):
    """A generator seeded from the test id, so every case is reproducible."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def twin(expr: str):
    """The torch module built by ``expr`` (float64) and its dyngrad twin with torch's
    weights: ``expr`` is evaluated against each library's ``nn``."""
    torch.manual_seed(0)
    tm = eval(expr, {"nn": torch.nn, "F": TF, "f64": torch.float64})
    m = eval(expr, {"nn": dg.nn, "F": F, "f64": dg.float64})
    m.load_state_dict({k: dg.from_numpy(v.detach().numpy().copy())
                       for k, v in tm.state_dict().items()})
    return m, tm


class Const:
    """An input array that is not a leaf (a mask whose gradient is not compared: PyTorch's
    detected causal hint drops the mask from the graph, see Note [causal detection] in
    dyngrad/nn/transformer.py)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def pair(x: np.ndarray, grad: bool = True):
    """dyngrad and torch tensors of the same values (float arrays become leaves)."""
    d = dg.from_numpy(x.copy())
    t = torch.from_numpy(x.copy())
    if grad and x.dtype.kind == "f":
        d.requires_grad_(True)
        t.requires_grad_(True)
    return d, t


def flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in flat(x)]
    return [out]


def check(fn, arrays: list, m=None, tm=None, grads: bool = True, rng=None):
    """Run ``fn(lib, module, *xs)`` in both libraries and compare outputs (NaN where torch
    has NaN), then push one random cotangent through every output and compare the gradients
    of the float inputs and of the parameters by name."""
    pairs = [pair(a) if isinstance(a, np.ndarray) else pair(a.array, grad=False)
             if isinstance(a, Const) else (a, a) for a in arrays]
    ds, ts = [p[0] for p in pairs], [p[1] for p in pairs]
    dout, tout = flat(fn(dg, m, *ds)), flat(fn(torch, tm, *ts))
    assert len(dout) == len(tout)
    for i, (d, t) in enumerate(zip(dout, tout)):
        if t is None:
            assert d is None, f"output {i}: torch gives None"
            continue
        assert tuple(d.shape) == tuple(t.shape), f"output {i}: {d.shape} vs {tuple(t.shape)}"
        np.testing.assert_allclose(d.detach().numpy(), t.detach().numpy(), equal_nan=True,
                                   err_msg=f"output {i}", **TOL64)
    if not grads:
        return dout
    rng = rng or np.random.default_rng(7)
    dl, tl = 0.0, 0.0
    for d, t in zip(dout, tout):
        if t is not None:
            v = rng.standard_normal(tuple(t.shape))
            dl = dl + (d * dg.from_numpy(v)).sum()
            tl = tl + (t * torch.from_numpy(v)).sum()
    dl.backward()
    tl.backward()
    for i, (d, t) in enumerate(zip(ds, ts)):
        if isinstance(d, dg.Tensor) and d.requires_grad:
            assert (d.grad is None) == (t.grad is None), f"grad of input {i}: None"
            if d.grad is None:
                continue
            np.testing.assert_allclose(d.grad.numpy(), t.grad.numpy(),
                                       err_msg=f"grad of input {i}", **TOL64)
    if m is not None:
        tp = dict(tm.named_parameters())
        for name, p in m.named_parameters():
            assert (p.grad is None) == (tp[name].grad is None), f"grad of {name}: None"
            if p.grad is not None:
                np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(),
                                           err_msg=f"grad of {name}", **TOL64)
    return dout


def randn(rng, *shape):
    return rng.standard_normal(shape)


# ------------------------------------------------------------------ scaled_dot_product_attention


def _mask_bool(rng, *shape, dead_row=True):
    m = rng.random(shape) > 0.4
    if dead_row:
        m[..., 1, :] = False  # a query row attending to nothing
    return m


SDPA = {
    "plain": ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 5), {}),
    "ev_differs_l_ne_s": ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7), {}),
    "unbatched_2d": ((4, 5), (6, 5), (6, 3), {}),
    "three_leading_dims": ((2, 2, 3, 4, 5), (2, 2, 3, 6, 5), (2, 2, 3, 6, 5), {}),
    "broadcast_batch": ((3, 2, 4, 5), (1, 2, 6, 5), (1, 2, 6, 5), {}),
    "scale": ((2, 4, 5), (2, 6, 5), (2, 6, 5), {"scale": 0.3}),
    "causal_l_lt_s": ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 5), {"is_causal": True}),
    "causal_l_gt_s": ((2, 3, 6, 5), (2, 3, 4, 5), (2, 3, 4, 5), {"is_causal": True}),
    "causal_square": ((2, 3, 5, 5), (2, 3, 5, 5), (2, 3, 5, 5), {"is_causal": True}),
    "gqa": ((2, 6, 4, 5), (2, 2, 6, 5), (2, 3, 6, 7), {"enable_gqa": True}),
    "gqa_unbatched_heads": ((4, 4, 5), (2, 6, 5), (2, 6, 5), {"enable_gqa": True}),
}


@pytest.mark.parametrize("case", sorted(SDPA))
def test_sdpa_matches_torch(case, rng):
    qs, ks, vs, kw = SDPA[case]
    check(lambda lib, _m, q, k, v: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, **kw), [randn(rng, *qs), randn(rng, *ks), randn(rng, *vs)])


@pytest.mark.parametrize("mask_shape", [(4, 6), (3, 4, 6), (2, 1, 4, 6), (1, 6)])
def test_sdpa_bool_mask_attends_where_true_and_fully_masked_rows_give_zeros(mask_shape, rng):
    mask = _mask_bool(rng, *mask_shape, dead_row=len(mask_shape) > 1 and mask_shape[-2] > 1)
    out = check(lambda lib, _m, q, k, v, m: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=m), [randn(rng, 2, 3, 4, 5), randn(rng, 2, 3, 6, 5),
                                randn(rng, 2, 3, 6, 5), mask])
    if mask_shape[-2] > 1:
        assert np.all(out[0].detach().numpy()[..., 1, :] == 0.0)


def test_sdpa_float_mask_is_added_and_an_all_minus_inf_row_gives_zeros(rng):
    fm = randn(rng, 4, 6)
    fm[1] = -np.inf
    fm[2, :3] = -np.inf
    out = check(lambda lib, _m, q, k, v, m: lib.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=m), [randn(rng, 2, 4, 5), randn(rng, 2, 6, 5),
                                randn(rng, 2, 6, 5), fm])
    assert np.all(out[0].detach().numpy()[:, 1] == 0.0)


def test_sdpa_fully_masked_row_has_zero_gradient_not_nan(rng):
    q = dg.tensor(randn(rng, 3, 4), requires_grad=True)
    k = dg.tensor(randn(rng, 5, 4), requires_grad=True)
    mask = dg.tensor(np.array([[True] * 5, [False] * 5, [True, False, True, False, True]]))
    F.scaled_dot_product_attention(q, k, k, attn_mask=mask).sum().backward()
    assert np.all(np.isfinite(k.grad.numpy())) and np.all(q.grad.numpy()[1] == 0.0)


def test_sdpa_dropout_is_applied_outside_training_as_torch_does(rng):
    q, k = dg.tensor(randn(rng, 2, 8, 4)), dg.tensor(randn(rng, 2, 8, 4))
    with dg.no_grad():
        plain = F.scaled_dot_product_attention(q, k, k)
        dropped = F.scaled_dot_product_attention(q, k, k, dropout_p=0.5)
        gone = F.scaled_dot_product_attention(q, k, k, dropout_p=1.0)
    assert not np.allclose(plain.numpy(), dropped.numpy())
    np.testing.assert_array_equal(gone.numpy(), 0.0)


def test_sdpa_scale_is_keyword_only():
    x = dg.randn(2, 3, 4)
    with pytest.raises(TypeError):
        F.scaled_dot_product_attention(x, x, x, None, 0.0, False, 0.5)


SDPA_ERRORS = {
    "mask_and_causal": (((2, 4, 5), (2, 6, 5), (2, 6, 5)), {"attn_mask": "bool",
                                                          "is_causal": True},
                        "Explicit attn_mask should not be set when is_causal=True"),
    "gqa_heads_do_not_divide": (((1, 3, 2, 4), (1, 2, 5, 4), (1, 2, 5, 4)),
                                {"enable_gqa": True}, "must divide the number of heads"),
    "heads_differ_without_gqa": (((1, 3, 2, 4), (1, 2, 5, 4), (1, 2, 5, 4)), {},
                                 "enable_gqa=True"),
    "key_embedding_differs": (((2, 4, 5), (2, 6, 3), (2, 6, 5)), {},
                              "same embedding dimension"),
    "value_length_differs": (((2, 4, 5), (2, 6, 5), (2, 7, 5)), {},
                             "same sequence length"),
    "one_dimensional": (((5,), (5,), (5,)), {}, "at least 2 dimensional"),
    "mask_shape": (((2, 4, 5), (2, 6, 5), (2, 6, 5)), {"attn_mask": (3, 6)},
                   r"attn_mask of shape \[3, 6\] does not broadcast"),
    "int_mask": (((2, 4, 5), (2, 6, 5), (2, 6, 5)), {"attn_mask": "int"},
                 "Expected attn_mask dtype to be bool"),
    "dropout_p": (((2, 4, 5), (2, 6, 5), (2, 6, 5)), {"dropout_p": 1.5},
                  "dropout probability"),
}


@pytest.mark.parametrize("case", sorted(SDPA_ERRORS))
def test_sdpa_bad_input_raises_naming_the_problem(case):
    shapes, kw, message = SDPA_ERRORS[case]
    kw = dict(kw)
    if kw.get("attn_mask") == "bool":
        kw["attn_mask"] = dg.ones(4, 6, dtype=dg.bool_)
    elif kw.get("attn_mask") == "int":
        kw["attn_mask"] = dg.ones(4, 6, dtype=dg.int64)
    elif isinstance(kw.get("attn_mask"), tuple):
        kw["attn_mask"] = dg.ones(*kw["attn_mask"], dtype=dg.bool_)
    q, k, v = (dg.randn(*s) for s in shapes)
    with pytest.raises(RuntimeError, match=message):
        F.scaled_dot_product_attention(q, k, v, **kw)


# ------------------------------------------------------------------ MultiheadAttention


def _mha_call(query, key="self", value=None, **kw):
    """fn(lib, module, q[, k, v][, masks]) calling the module; masks are passed by name."""
    names = [n for n in ("key_padding_mask", "attn_mask") if kw.get(n) is not None]
    fixed = {n: v for n, v in kw.items() if n not in names}

    def fn(lib, m, *xs):
        if key == "self":
            q = k = v = xs[0]
            rest = xs[1:]
        elif key == "kv":
            q, k = xs[0], xs[1]
            v, rest = k, xs[2:]
        else:
            q, k, v = xs[:3]
            rest = xs[3:]
        return m(q, k, v, **dict(zip(names, rest)), **fixed)
    return fn, names


def _bool(rng, *shape, dead=None):
    m = rng.random(shape) > 0.6
    if dead is not None:
        m[dead] = True
    return m


# (constructor, L, S, N, batch_first, input kind, forward kwargs builder)
MHA = {
    "self_weights_averaged": ("nn.MultiheadAttention(8, 2, dtype=f64)", {}),
    "self_weights_per_head": ("nn.MultiheadAttention(8, 2, dtype=f64)",
                              {"average_attn_weights": False}),
    "self_no_weights": ("nn.MultiheadAttention(8, 2, dtype=f64)", {"need_weights": False}),
    "batch_first": ("nn.MultiheadAttention(8, 4, batch_first=True, dtype=f64)", {}),
    "batch_first_no_weights": ("nn.MultiheadAttention(8, 4, batch_first=True, dtype=f64)",
                               {"need_weights": False}),
    "no_bias": ("nn.MultiheadAttention(8, 2, bias=False, dtype=f64)", {}),
    "bias_kv_zero_attn": ("nn.MultiheadAttention(8, 2, add_bias_kv=True, add_zero_attn=True,"
                          " dtype=f64)", {}),
    "bias_kv_zero_attn_no_weights": ("nn.MultiheadAttention(8, 2, add_bias_kv=True, "
                                     "add_zero_attn=True, dtype=f64)",
                                     {"need_weights": False}),
}


@pytest.mark.parametrize("case", sorted(MHA))
@pytest.mark.parametrize("masks", ["none", "bool_attn", "float_attn_3d", "bool_kpm",
                                   "float_kpm", "both"])
def test_multihead_self_attention_matches_torch(case, masks, rng):
    expr, kw = MHA[case]
    m, tm = twin(expr)
    L, N, E = 5, 3, 8
    bf = m.batch_first
    x = randn(rng, N, L, E) if bf else randn(rng, L, N, E)
    extra = {}
    if masks in ("bool_attn", "both"):
        extra["attn_mask"] = _bool(rng, L, L)
    if masks == "float_attn_3d":
        extra["attn_mask"] = randn(rng, N * m.num_heads, L, L)
    if masks in ("bool_kpm", "both"):
        extra["key_padding_mask"] = _bool(rng, N, L)
    if masks == "float_kpm":
        extra["key_padding_mask"] = randn(rng, N, L)
    fn, names = _mha_call("x", **kw, **extra)
    arrays = [x] + [extra[n] for n in names]
    out = check(fn, arrays, m, tm, grads=True)
    assert (out[1] is None) == (kw.get("need_weights") is False)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_cross_attention_with_kdim_vdim_matches_torch(need_weights, rng):
    m, tm = twin("nn.MultiheadAttention(8, 2, kdim=6, vdim=3, dtype=f64)")
    assert m.in_proj_weight is None and tuple(m.k_proj_weight.shape) == (8, 6)
    fn, names = _mha_call("q", "sep", need_weights=need_weights,
                          key_padding_mask=_bool(rng, 3, 7))
    check(fn, [randn(rng, 4, 3, 8), randn(rng, 7, 3, 6), randn(rng, 7, 3, 3),
               _bool(rng, 3, 7)], m, tm)


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_encoder_decoder_attention_matches_torch(batch_first, rng):
    m, tm = twin(f"nn.MultiheadAttention(8, 2, batch_first={batch_first}, dtype=f64)")
    fn, _ = _mha_call("q", "kv", attn_mask=_bool(rng, 4, 7))
    q = randn(rng, 3, 4, 8) if batch_first else randn(rng, 4, 3, 8)
    kv = randn(rng, 3, 7, 8) if batch_first else randn(rng, 7, 3, 8)
    check(fn, [q, kv, _bool(rng, 4, 7)], m, tm)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_unbatched_inputs_match_torch(need_weights, rng):
    m, tm = twin("nn.MultiheadAttention(8, 2, batch_first=True, dtype=f64)")
    fn, names = _mha_call("x", need_weights=need_weights, key_padding_mask=_bool(rng, 5),
                          attn_mask=randn(rng, 2, 5, 5), average_attn_weights=False)
    check(fn, [randn(rng, 5, 8), _bool(rng, 5), randn(rng, 2, 5, 5)], m, tm)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_is_causal_with_its_mask_matches_torch(need_weights, rng):
    m, tm = twin("nn.MultiheadAttention(8, 2, dtype=f64)")
    causal = np.triu(np.full((5, 5), -np.inf), 1)
    fn, _ = _mha_call("x", need_weights=need_weights, is_causal=True, attn_mask=causal)
    check(fn, [randn(rng, 5, 3, 8), causal], m, tm)


def test_multihead_fully_masked_row_is_nan_with_weights_and_zero_attention_without(rng):
    """PyTorch 2.13: the explicit weights path softmaxes a row of -inf into NaN; the SDPA
    path gives zero attention (the output is then out_proj's bias)."""
    m, tm = twin("nn.MultiheadAttention(8, 2, dtype=f64)")
    kpm = np.zeros((3, 5), dtype=bool)
    kpm[1] = True  # sample 1 may attend to nothing
    x = randn(rng, 5, 3, 8)
    fn, _ = _mha_call("x", key_padding_mask=kpm)
    out = check(fn, [x, kpm], m, tm, grads=False)
    assert np.all(np.isnan(out[0].detach().numpy()[:, 1]))
    fn, _ = _mha_call("x", key_padding_mask=kpm, need_weights=False)
    out = check(fn, [x, kpm], m, tm)
    np.testing.assert_allclose(out[0].detach().numpy()[:, 1],
                               np.broadcast_to(m.out_proj.bias.detach().numpy(), (5, 8)))


def test_multihead_parameters_and_state_dict_keys_are_torchs():
    for kw in ["", ", kdim=6, vdim=3", ", bias=False, add_bias_kv=True"]:
        tm = eval(f"nn.MultiheadAttention(8, 2{kw})", {"nn": torch.nn})
        m = eval(f"nn.MultiheadAttention(8, 2{kw})", {"nn": dg.nn})
        assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == \
            [(n, tuple(p.shape)) for n, p in tm.named_parameters()]
        assert list(m.state_dict()) == list(tm.state_dict())
        assert type(m.out_proj).__name__ == "NonDynamicallyQuantizableLinear"
        assert isinstance(m.out_proj, nn.Linear)


def test_multihead_initialisation_is_xavier_uniform_with_zero_biases():
    m = nn.MultiheadAttention(64, 4, add_bias_kv=True)
    bound = np.sqrt(6.0 / (64 + 3 * 64))
    w = m.in_proj_weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    np.testing.assert_array_equal(m.in_proj_bias.detach().numpy(), 0.0)
    np.testing.assert_array_equal(m.out_proj.bias.detach().numpy(), 0.0)
    assert m.bias_k.detach().numpy().std() > 0


MHA_ERRORS = {
    "embed_dim": (lambda: (dg.randn(5, 3, 6),), {}, AssertionError,
                  "expecting embedding dimension of 8, but got 6"),
    "attn_mask_2d_shape": (lambda: (dg.randn(5, 3, 8),), {"attn_mask": (4, 5)},
                           RuntimeError, r"2D attn_mask is \[4, 5\], but should be \[5, 5\]"),
    "attn_mask_3d_shape": (lambda: (dg.randn(5, 3, 8),), {"attn_mask": (3, 5, 5)},
                           RuntimeError, r"but should be \[6, 5, 5\]"),
    "key_padding_mask_shape": (lambda: (dg.randn(5, 3, 8),), {"key_padding_mask": (3, 4)},
                               AssertionError, r"key_padding_mask of shape \[3, 5\]"),
    "key_padding_mask_rank": (lambda: (dg.randn(5, 3, 8),), {"key_padding_mask": (3,)},
                              AssertionError, "to be `None` or 2-D"),
    "is_causal_without_mask": (lambda: (dg.randn(5, 3, 8),), {"is_causal": True},
                               RuntimeError, "Need attn_mask if specifying the is_causal"),
    "int_mask": (lambda: (dg.randn(5, 3, 8),), {"attn_mask": "int"}, AssertionError,
                 "only bool and floating types of attn_mask"),
    "query_rank": (lambda: (dg.randn(8),), {}, AssertionError,
                   "unbatched 2D or batched 3D"),
}


@pytest.mark.parametrize("case", sorted(MHA_ERRORS))
def test_multihead_bad_input_raises_naming_the_problem(case):
    make, kw, exc, message = MHA_ERRORS[case]
    kw = dict(kw)
    for name in ("attn_mask", "key_padding_mask"):
        if kw.get(name) == "int":
            kw[name] = dg.ones(5, 5, dtype=dg.int64)
        elif isinstance(kw.get(name), tuple):
            kw[name] = dg.zeros(*kw[name], dtype=dg.bool_)
    (x,) = make()
    with pytest.raises(exc, match=message):
        nn.MultiheadAttention(8, 2)(x, x, x, **kw)


def test_multihead_heads_must_divide_embed_dim():
    with pytest.raises(AssertionError, match="embed_dim must be divisible by num_heads"):
        nn.MultiheadAttention(10, 3)


# ------------------------------------------------------------------ transformer modules


def test_generate_square_subsequent_mask_matches_torch():
    for sz in (1, 4):
        np.testing.assert_array_equal(
            nn.Transformer.generate_square_subsequent_mask(sz).numpy(),
            torch.nn.Transformer.generate_square_subsequent_mask(sz).numpy())
    assert nn.Transformer.generate_square_subsequent_mask(3, dtype=dg.float64).dtype \
        is dg.float64


LAYER = "d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, dtype=f64"


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["'relu'", "'gelu'", "F.silu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_stack_matches_torch(norm_first, activation, batch_first, rng):
    m, tm = twin(f"nn.TransformerEncoder(nn.TransformerEncoderLayer({LAYER}, "
                 f"activation={activation}, norm_first={norm_first}, "
                 f"batch_first={batch_first}), num_layers=2, norm=nn.LayerNorm(8, "
                 f"dtype=f64), enable_nested_tensor=False)")
    L, N = 5, 3
    x = randn(rng, N, L, 8) if batch_first else randn(rng, L, N, 8)
    mask = np.triu(np.full((L, L), -np.inf), 1)
    kpm = _bool(rng, N, L)
    kpm[:, 0] = False  # every query keeps key 0 (no NaN rows)
    check(lambda lib, mod, x, msk, kpm: mod(x, mask=msk, src_key_padding_mask=kpm),
          [x, Const(mask), kpm], m, tm)


@pytest.mark.parametrize("is_causal", [None, True])
def test_encoder_with_causal_mask_and_hint_matches_torch(is_causal, rng):
    m, tm = twin(f"nn.TransformerEncoder(nn.TransformerEncoderLayer({LAYER}), 2)")
    mask = np.triu(np.full((5, 5), -np.inf), 1)
    check(lambda lib, mod, x, msk: mod(x, mask=msk, is_causal=is_causal),
          [randn(rng, 5, 3, 8), Const(mask)], m, tm)


def test_encoder_in_eval_mode_with_dropout_matches_torch(rng):
    m, tm = twin("nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, "
                 "dtype=f64), 2)")
    m.eval()
    tm.eval()
    check(lambda lib, mod, x, msk: mod(x, src_key_padding_mask=msk),
          [randn(rng, 5, 3, 8), np.array([[False] * 5, [False] * 3 + [True] * 2,
                                          [False] * 4 + [True]])], m, tm)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["'relu'", "'gelu'"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_stack_matches_torch(norm_first, activation, batch_first, rng):
    m, tm = twin(f"nn.TransformerDecoder(nn.TransformerDecoderLayer({LAYER}, "
                 f"activation={activation}, norm_first={norm_first}, "
                 f"batch_first={batch_first}), num_layers=2, norm=nn.LayerNorm(8, "
                 f"dtype=f64))")
    T, S, N = 4, 6, 3
    tgt = randn(rng, N, T, 8) if batch_first else randn(rng, T, N, 8)
    mem = randn(rng, N, S, 8) if batch_first else randn(rng, S, N, 8)
    tgt_mask = np.triu(np.ones((T, T), dtype=bool), 1)  # bool: True is not allowed
    mem_kpm = _bool(rng, N, S)
    mem_kpm[:, 0] = False
    check(lambda lib, mod, t, mm, tmask, kpm: mod(t, mm, tgt_mask=tmask,
                                                   memory_key_padding_mask=kpm),
          [tgt, mem, tgt_mask, mem_kpm], m, tm)


@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_matches_torch(batch_first, rng):
    m, tm = twin(f"nn.Transformer(d_model=8, nhead=2, num_encoder_layers=2, "
                 f"num_decoder_layers=1, dim_feedforward=16, dropout=0.0, "
                 f"batch_first={batch_first}, dtype=f64)")
    S, T, N = 6, 4, 2
    src = randn(rng, N, S, 8) if batch_first else randn(rng, S, N, 8)
    tgt = randn(rng, N, T, 8) if batch_first else randn(rng, T, N, 8)
    tgt_mask = np.triu(np.full((T, T), -np.inf), 1)
    src_kpm = np.array([[False] * S, [False] * (S - 2) + [True] * 2])
    check(lambda lib, mod, s, t, tmask, kpm: mod(
        s, t, tgt_mask=tmask, src_key_padding_mask=kpm, memory_key_padding_mask=kpm,
        tgt_is_causal=True), [src, tgt, Const(tgt_mask), src_kpm], m, tm)


def test_transformer_defaults_and_submodule_names_are_torchs():
    m, tm = nn.Transformer(num_encoder_layers=1, num_decoder_layers=1), \
        torch.nn.Transformer(num_encoder_layers=1, num_decoder_layers=1)
    assert [(n, tuple(p.shape)) for n, p in m.named_parameters()] == \
        [(n, tuple(p.shape)) for n, p in tm.named_parameters()]
    assert [n for n, _ in m.named_modules()] == [n for n, _ in tm.named_modules()]
    layer = m.encoder.layers[0]
    assert (layer.linear1.out_features, layer.dropout.p, layer.norm1.eps,
            layer.self_attn.num_heads, layer.self_attn.batch_first, layer.norm_first) == \
        (2048, 0.1, 1e-5, 8, False, False)
    assert layer.activation is F.relu and m.d_model == 512
    # every matrix re-initialised xavier-uniform, as PyTorch's _reset_parameters
    w = layer.linear1.weight.detach().numpy()
    assert np.abs(w).max() <= np.sqrt(6.0 / (512 + 2048))


def test_encoder_clones_the_layer_deeply():
    layer = nn.TransformerEncoderLayer(8, 2, 16)
    enc = nn.TransformerEncoder(layer, 3)
    ws = [lay.linear1.weight for lay in enc.layers]
    assert len({id(w) for w in ws}) == 3 and all(lay is not layer for lay in enc.layers)
    np.testing.assert_array_equal(ws[0].detach().numpy(), ws[2].detach().numpy())
    with dg.no_grad():
        ws[0].fill_(1.0)
    assert not np.any(ws[1].detach().numpy() == 1.0)
    assert enc.num_layers == 3 and enc.norm is None


def test_bad_activation_and_feature_sizes_raise():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanh"):
        nn.TransformerEncoderLayer(8, 2, activation="tanh")
    model = nn.Transformer(8, 2, 1, 1, 16)
    with pytest.raises(RuntimeError, match="the feature number of src and tgt must be equal "
                                           "to d_model"):
        model(dg.randn(5, 2, 8), dg.randn(4, 2, 6))
    with pytest.raises(RuntimeError, match="the batch number of src and tgt must be equal"):
        model(dg.randn(5, 2, 8), dg.randn(4, 3, 8))


def test_encoder_state_dict_loads_from_torch_and_back():
    torch.manual_seed(0)
    tm = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16), 2,
                                     enable_nested_tensor=False)
    m = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 2)
    res = m.load_state_dict({k: dg.from_numpy(v.numpy().copy())
                             for k, v in tm.state_dict().items()})
    assert not res.missing_keys and not res.unexpected_keys
    tm.load_state_dict({k: torch.from_numpy(v.numpy().copy())
                        for k, v in m.state_dict().items()})


# ------------------------------------------------------------------ compiled


def test_compiled_encoder_training_step_equals_eager():
    dg.manual_seed(0)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.TransformerEncoder(
                nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2)
            self.head = nn.Linear(16, 1)

        def forward(self, x, mask):
            return self.head(self.encoder(x, mask=mask)).squeeze(-1)

    m1 = Model()
    m2 = copy.deepcopy(m1)
    # SGD, not Adam: the key bias's true gradient is zero (it adds a constant to each row
    # of scores), so its computed gradient is rounding noise that Adam would scale to lr
    o1, o2 = (optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (m1, m2))

    def step_of(m, o):
        def step(x, mask, y):
            o.zero_grad()
            loss = F.mse_loss(m(x, mask), y)
            loss.backward()
            o.step()
            return loss
        return step

    eager, compiled = step_of(m1, o1), compiler.compile(step_of(m2, o2))
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    r = np.random.default_rng(0)
    for i in range(4):  # step 0 makes the momentum buffers (eager), step 1 traces
        x = dg.tensor(r.standard_normal((4, 6, 16)).astype(np.float32))
        y = dg.tensor(r.standard_normal((4, 6)).astype(np.float32))
        assert_same(eager(x, mask, y), compiled(x, mask, y), f"loss {i}")
        for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters(), strict=True):
            assert_same(p, q, f"{n} after step {i}")
    assert compiled_calls(compiled) >= 2
