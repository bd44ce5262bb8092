"""Convolution and pooling: float64 gradchecks of every new primitive (vjp and jvp), PyTorch
as the oracle for outputs, indices and gradients, PyTorch's error messages, and a compiled
CNN training step equal to eager on both backends."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import dyngrad as dg
import dyngrad.nn as nn
import dyngrad.nn.functional as F
from dyngrad.dispatch import dispatch
from dyngrad.ops.conv import CONV, CONV_TRANSPOSE, CONV_WEIGHT_GRAD
from dyngrad.testing import gradcheck, gradgradcheck

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the oracle) not installed")
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


@pytest.fixture(autouse=True)
def _seeded():
    dg.manual_seed(0)


def leaf(*shape):
    return dg.randn(*shape, dtype=dg.float64, requires_grad=True)


# ------------------------------------------------------------------ gradchecks (vjp + jvp)

GEOMETRIES = [  # (x shape, w shape, params)
    ((2, 2, 5), (3, 2, 3), dict(stride=(1,), padding=((0, 0),), dilation=(1,), groups=1)),
    ((1, 4, 7), (4, 2, 2), dict(stride=(2,), padding=((1, 2),), dilation=(2,), groups=2)),
    ((1, 2, 5, 4), (2, 2, 3, 2), dict(stride=(1, 1), padding=((1, 1), (0, 1)),
                                      dilation=(1, 1), groups=1)),
    ((2, 2, 6, 5), (4, 1, 2, 3), dict(stride=(2, 1), padding=((0, 0), (1, 1)),
                                      dilation=(1, 2), groups=2)),
    ((1, 3, 5, 5), (3, 1, 3, 3), dict(stride=(1, 2), padding=((1, 1), (1, 1)),
                                      dilation=(1, 1), groups=3)),  # depthwise
]


def _out(xs, ws, p):
    return dispatch(CONV, dg.zeros(*xs, dtype=dg.float64), dg.zeros(*ws, dtype=dg.float64),
                    **p).shape


@pytest.mark.parametrize("xs,ws,p", GEOMETRIES)
def test_conv_gradcheck(xs, ws, p):
    assert gradcheck(lambda x, w: dispatch(CONV, x, w, **p), (leaf(*xs), leaf(*ws)))


@pytest.mark.parametrize("xs,ws,p", GEOMETRIES)
def test_conv_transpose_gradcheck(xs, ws, p):
    ys = _out(xs, ws, p)
    assert gradcheck(lambda y, w: dispatch(CONV_TRANSPOSE, y, w, size=xs[2:], **p),
                     (leaf(*ys), leaf(*ws)))


@pytest.mark.parametrize("xs,ws,p", GEOMETRIES)
def test_conv_weight_grad_gradcheck(xs, ws, p):
    gs = _out(xs, ws, p)
    assert gradcheck(lambda x, g: dispatch(CONV_WEIGHT_GRAD, x, g, kernel=ws[2:], **p),
                     (leaf(*xs), leaf(*gs)))


def test_conv2d_double_backward():
    x, w, b = leaf(1, 2, 4, 4), leaf(2, 1, 3, 3), leaf(2)
    assert gradgradcheck(lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=2), (x, w, b))


def test_conv_transpose2d_with_output_padding_gradcheck():
    x, w, b = leaf(1, 2, 3, 3), leaf(2, 2, 3, 2), leaf(2)
    assert gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1,
                                                        output_padding=1), (x, w, b))


def _distinct(*shape):
    """float64 leaf with well-separated values (no ties: max pooling is differentiable)."""
    vals = np.random.default_rng(1).permutation(int(np.prod(shape))).reshape(shape) * 0.1
    return dg.tensor(vals, dtype=dg.float64, requires_grad=True)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1,
                                                          ceil_mode=True),
                                dict(kernel_size=(2, 3), dilation=(2, 1), padding=(1, 1))])
def test_max_pool2d_gradcheck(kw):
    assert gradcheck(lambda x: F.max_pool2d(x, **kw), (_distinct(2, 2, 6, 7),))


def test_max_pool1d_and_adaptive_max_gradcheck():
    assert gradcheck(lambda x: F.max_pool1d(x, 3, 2, 1), (_distinct(2, 3, 8),))
    assert gradcheck(lambda x: F.adaptive_max_pool2d(x, (3, 2)), (_distinct(1, 2, 7, 5),))


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1,
                                                          ceil_mode=True,
                                                          count_include_pad=False)])
def test_avg_pools_gradcheck(kw):
    assert gradcheck(lambda x: F.avg_pool2d(x, **kw), (leaf(2, 2, 5, 6),))
    assert gradcheck(lambda x: F.adaptive_avg_pool2d(x, (3, None)), (leaf(1, 2, 7, 4),))


# ------------------------------------------------------------------ backward memory


def _saved(t) -> list:
    """Every tensor the backward graph of ``t`` holds, as (node name, dtype, shape)."""
    seen, out, stack = set(), [], [t._node]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        out += [(n.name(), s.dtype.name, s.shape) for s in getattr(n, "saved", ()) or ()
                if isinstance(s, dg.Tensor)]
        stack += [e[0] for e in n.next if e is not None]
    return out


def test_conv_backward_saves_its_input_and_weight_and_no_columns():
    x, w = leaf(2, 3, 8, 8), leaf(4, 3, 3, 3)
    assert _saved(F.conv2d(x, w, leaf(4))) == [
        ("ConvBackward0", "float64", (2, 3, 8, 8)), ("ConvBackward0", "float64", (4, 3, 3, 3))]


def test_max_pool_backward_saves_only_integer_indices():
    saved = _saved(F.max_pool2d(leaf(2, 3, 8, 8), 2))
    assert saved and all(dtype == "int64" for _, dtype, _ in saved), saved


# ------------------------------------------------------------------ PyTorch as the oracle


def _pair(shape, rng, grad=True):
    a = rng.standard_normal(shape)
    return dg.tensor(a, requires_grad=grad), torch.tensor(a, requires_grad=grad)


def _same(d, t, what=""):
    np.testing.assert_allclose(d.detach().numpy(), t.detach().numpy(), rtol=1e-10,
                               atol=1e-12, err_msg=what)


def _both(dfn, tfn, shapes, rng):
    """Run the function in both libraries on the same float64 inputs; compare the output
    and every input's gradient under one random cotangent."""
    pairs = [_pair(s, rng) for s in shapes]
    yd, yt = dfn(*[p[0] for p in pairs]), tfn(*[p[1] for p in pairs])
    _same(yd, yt, "forward")
    g = rng.standard_normal(tuple(yt.shape))
    (yd * dg.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    for i, (d, t) in enumerate(pairs):
        _same(d.grad, t.grad, f"grad of input {i}")


CONV2D = [  # (x, weight, kwargs)
    ((2, 4, 7, 6), (6, 2, 3, 2), dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)),
    ((2, 3, 8, 8), (4, 3, 4, 4), dict(padding="same")),  # even kernel: padding on the right
    ((1, 2, 7, 6), (4, 2, 2, 3), dict(padding="same", dilation=(2, 1))),
    ((1, 4, 5, 5), (4, 1, 3, 3), dict(groups=4, padding="same", dilation=2)),  # depthwise
    ((1, 4, 5, 5), (8, 1, 3, 3), dict(groups=4, stride=2)),  # depthwise, multiplier 2
    ((2, 3, 6, 5), (2, 3, 3, 3), dict(padding="valid", stride=(1, 2))),
    ((6, 5, 6), (4, 3, 2, 2), dict(groups=2, padding=(0, 1))),  # unbatched
]


@needs_torch
@pytest.mark.parametrize("xs,ws,kw", CONV2D)
def test_conv2d_matches_torch(xs, ws, kw):
    rng = np.random.default_rng(0)
    _both(lambda x, w, b: F.conv2d(x, w, b, **kw),
          lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kw), (xs, ws, (ws[0],)), rng)


@needs_torch
@pytest.mark.parametrize("xs,ws,kw", [
    ((2, 3, 9), (5, 3, 4), dict(stride=2, padding=2)),
    ((1, 4, 10), (4, 2, 4), dict(padding="same", groups=2, dilation=3)),
    ((4, 10), (2, 4, 3), dict()),
])
def test_conv1d_matches_torch(xs, ws, kw):
    rng = np.random.default_rng(0)
    _both(lambda x, w, b: F.conv1d(x, w, b, **kw),
          lambda x, w, b: torch.nn.functional.conv1d(x, w, b, **kw), (xs, ws, (ws[0],)), rng)


@needs_torch
@pytest.mark.parametrize("xs,ws,kw", [
    ((2, 4, 3, 3), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 3, 4), (4, 1, 2, 3), dict(stride=(2, 3), groups=2, dilation=(2, 1),
                                      output_padding=(1, 0))),
    ((1, 2, 4, 4), (2, 3, 3, 3), dict(stride=1, padding=2)),
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(stride=2, dilation=3, output_padding=2)),  # op >= s
])
def test_conv_transpose2d_matches_torch(xs, ws, kw):
    rng = np.random.default_rng(0)
    bias = (ws[1] * kw.get("groups", 1),)
    _both(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw),
          lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, **kw),
          (xs, ws, bias), rng)


MAXPOOL2D = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(2, 3), dilation=2, padding=(1, 1)),
    dict(kernel_size=2, stride=1, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 3), ceil_mode=True),
]


@needs_torch
@pytest.mark.parametrize("kw", MAXPOOL2D)
def test_max_pool2d_matches_torch_with_ties_and_indices(kw):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((2, 3, 8, 7)))  # many ties: the first maximum wins
    xd, xt = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yd, idd = F.max_pool2d(xd, return_indices=True, **kw)
    yt, idt = torch.nn.functional.max_pool2d(xt, return_indices=True, **kw)
    _same(yd, yt)
    assert idd.dtype is dg.int64 and np.array_equal(idd.numpy(), idt.numpy())
    g = rng.standard_normal(tuple(yt.shape))
    (yd * dg.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    _same(xd.grad, xt.grad)


@needs_torch
def test_max_pool_of_minus_infinity_points_inside_the_input_as_torch():
    x = np.full((1, 1, 3, 3), -np.inf)
    yd, idd = F.max_pool2d(dg.tensor(x), 2, 2, 1, return_indices=True)
    yt, idt = torch.nn.functional.max_pool2d(torch.tensor(x), 2, 2, 1, return_indices=True)
    assert np.array_equal(idd.numpy(), idt.numpy())


@needs_torch
def test_a_dilated_window_of_padding_only_gives_minus_infinity_and_torch_s_index():
    for x, kw in ((np.full((1, 1, 1, 1), 3.0), dict(kernel_size=2, stride=1, padding=1,
                                                    dilation=(1, 2))),
                  (np.arange(6.0).reshape(1, 1, 2, 3), dict(kernel_size=2, stride=1, padding=1,
                                                            dilation=(1, 2)))):
        xd = dg.tensor(x, requires_grad=True)
        yd, idd = F.max_pool2d(xd, return_indices=True, **kw)
        yt, idt = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
        _same(yd, yt)
        assert np.array_equal(idd.numpy(), idt.numpy())
        (yd * (yd > -np.inf)).sum().backward()
        assert np.isfinite(xd.grad.numpy()).all()
    assert np.isneginf(F.max_pool2d(
        dg.full((1, 1, 1, 1), 3.0), 2, 1, 1, (1, 2)).numpy()).all()


@needs_torch
def test_max_pools_propagate_nan_with_torch_s_index():
    x = np.array([[[[1.0, np.nan, 3.0, np.nan], [0.0, 5.0, np.nan, 2.0]]]])
    for fn in (lambda m, t: m.max_pool2d(t, 2, return_indices=True),
               lambda m, t: m.adaptive_max_pool2d(t, (1, 2), return_indices=True)):
        yd, idd = fn(F, dg.tensor(x))
        yt, idt = fn(torch.nn.functional, torch.tensor(x))
        assert np.array_equal(idd.numpy(), idt.numpy())
        np.testing.assert_array_equal(yd.numpy(), yt.numpy())


@needs_torch
def test_empty_batches_and_integer_inputs_as_torch():
    tf = torch.nn.functional
    for fn in (lambda m, z: m.conv2d(z((0, 2, 5, 5)), z((3, 2, 3, 3))),
               lambda m, z: m.conv_transpose2d(z((0, 2, 5, 5)), z((2, 3, 3, 3))),
               lambda m, z: m.max_pool2d(z((0, 2, 5, 5)), 2),
               lambda m, z: m.adaptive_max_pool2d(z((0, 2, 5, 5)), 2)):
        assert fn(F, dg.zeros).shape == tuple(fn(tf, torch.zeros).shape)
    x, w = np.arange(50).reshape(1, 2, 5, 5), np.arange(36).reshape(2, 2, 3, 3) % 5
    out = F.conv2d(dg.tensor(x), dg.tensor(w), stride=2)
    assert out.dtype is dg.int64
    assert np.array_equal(out.numpy(), tf.conv2d(torch.tensor(x), torch.tensor(w),
                                                 stride=2).numpy())


@needs_torch
@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=2, ceil_mode=True), dict(kernel_size=4,
                                                                          dilation=2)])
def test_max_pool1d_matches_torch(kw):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((2, 3, 11)))
    yd, idd = F.max_pool1d(dg.tensor(x), return_indices=True, **kw)
    yt, idt = torch.nn.functional.max_pool1d(torch.tensor(x), return_indices=True, **kw)
    _same(yd, yt)
    assert np.array_equal(idd.numpy(), idt.numpy())


@needs_torch
@pytest.mark.parametrize("kw", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(3, 2), ceil_mode=True),
    dict(kernel_size=2, padding=1, divisor_override=3),
])
def test_avg_pool2d_matches_torch(kw):
    rng = np.random.default_rng(0)
    _both(lambda x: F.avg_pool2d(x, **kw), lambda x: torch.nn.functional.avg_pool2d(x, **kw),
          ((2, 3, 7, 8),), rng)


@needs_torch
@pytest.mark.parametrize("size", [(3, 2), (2, None), 5, 1, (7, 4), (None, 3)])
def test_adaptive_pools_match_torch(size):
    rng = np.random.default_rng(0)
    _both(lambda x: F.adaptive_avg_pool2d(x, size),
          lambda x: torch.nn.functional.adaptive_avg_pool2d(x, size), ((2, 3, 7, 5),), rng)
    x = np.round(rng.standard_normal((2, 3, 7, 5)))
    xd, xt = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yd, idd = F.adaptive_max_pool2d(xd, size, return_indices=True)
    yt, idt = torch.nn.functional.adaptive_max_pool2d(xt, size, return_indices=True)
    _same(yd, yt)
    assert np.array_equal(idd.numpy(), idt.numpy())
    yd.sum().backward()
    yt.sum().backward()
    _same(xd.grad, xt.grad)


@needs_torch
def test_layers_initialise_as_torch_does():
    """Same shapes and bounds: kaiming_uniform(a=√5) gives U(±1/√fan_in) for the weight
    too."""
    for layer, fan_in in [(nn.Conv2d(3, 8, (3, 2), groups=1), 3 * 6),
                          (nn.Conv1d(4, 6, 5, groups=2), 2 * 5),
                          (nn.ConvTranspose2d(4, 6, 3, groups=2), 3 * 9)]:
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            a = p.detach().numpy()
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    assert nn.Conv2d(3, 8, 3).weight.shape == tuple(torch.nn.Conv2d(3, 8, 3).weight.shape)
    assert nn.ConvTranspose2d(4, 6, 3, groups=2).weight.shape == \
        tuple(torch.nn.ConvTranspose2d(4, 6, 3, groups=2).weight.shape)


@needs_torch
@pytest.mark.parametrize("make", [
    lambda m: m.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
    lambda m: m.Conv2d(4, 4, 4, padding="same", groups=4, bias=False),
    lambda m: m.Conv1d(4, 6, 3, padding="valid"),
    lambda m: m.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
    lambda m: m.MaxPool2d(3, 2, 1, ceil_mode=True),
    lambda m: m.MaxPool1d(2),
    lambda m: m.AvgPool2d(3, 2, 1, count_include_pad=False),
    lambda m: m.AdaptiveAvgPool2d((3, None)),
    lambda m: m.AdaptiveMaxPool2d(2),
])
def test_layers_compute_as_torch_s_in_float32(make):
    """Float32, the parameters copied from PyTorch's layer: outputs and gradients to float32
    rounding."""
    dl, tl = make(nn), make(torch.nn)
    with dg.no_grad():
        for (name, p), (_, q) in zip(dl.named_parameters(), tl.named_parameters(), strict=True):
            assert p.shape == tuple(q.shape), name
            p.copy_(dg.tensor(q.detach().numpy()))
    ndim = 3 if isinstance(dl, (nn.Conv1d, nn.MaxPool1d)) else 4
    x = np.random.default_rng(0).standard_normal((2, 4, 9, 8)[:ndim]).astype(np.float32)
    xd, xt = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yd, yt = dl(xd), tl(xt)
    np.testing.assert_allclose(yd.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    (yd * yd).sum().backward()
    (yt * yt).sum().backward()
    np.testing.assert_allclose(xd.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    for p, q in zip(dl.parameters(), tl.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-4)
    assert repr(dl) == repr(tl)


@needs_torch
def test_conv_transpose2d_output_size_argument_as_torch():
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
    assert layer(dg.randn(1, 2, 4, 4), output_size=(8, 8)).shape == (1, 3, 8, 8)
    assert layer(dg.randn(1, 2, 4, 4)).shape == (1, 3, 7, 7)


# ------------------------------------------------------------------ properties (vs PyTorch)

SOME = settings(max_examples=25, deadline=None)
_small = st.integers(1, 3)


@needs_torch
@SOME
@given(groups=_small, cin=_small, cout=_small, h=st.integers(1, 9), w=st.integers(1, 9),
       kh=_small, kw=_small, stride=st.tuples(_small, _small), dilation=st.tuples(_small, _small),
       padding=st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                         st.sampled_from(["same", "valid"])))
def test_conv2d_any_geometry_matches_torch(groups, cin, cout, h, w, kh, kw, stride, dilation,
                                           padding):
    if padding == "same":
        stride = (1, 1)
    pads = (0, 0) if padding == "valid" else padding
    assume(padding == "same" or all(s + 2 * p >= d * (k - 1) + 1 for s, p, d, k in
                                    zip((h, w), pads, dilation, (kh, kw))))
    rng = np.random.default_rng(0)
    kw_ = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    _both(lambda x, wt, b: F.conv2d(x, wt, b, **kw_),
          lambda x, wt, b: torch.nn.functional.conv2d(x, wt, b, **kw_),
          ((2, cin * groups, h, w), (cout * groups, cin, kh, kw), (cout * groups,)), rng)


@needs_torch
@SOME
@given(groups=_small, cin=_small, cout=_small, h=st.integers(1, 5), w=st.integers(1, 5),
       kh=_small, kw=_small, stride=st.tuples(_small, _small), dilation=st.tuples(_small, _small),
       padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       extra=st.tuples(st.integers(0, 2), st.integers(0, 2)))
def test_conv_transpose2d_any_geometry_matches_torch(groups, cin, cout, h, w, kh, kw, stride,
                                                     dilation, padding, extra):
    output_padding = tuple(min(e, max(s, d) - 1) for e, s, d in zip(extra, stride, dilation))
    assume(all((i - 1) * s - 2 * p + d * (k - 1) + 1 + o >= 1 for i, s, p, d, k, o in
               zip((h, w), stride, padding, dilation, (kh, kw), output_padding)))
    rng = np.random.default_rng(0)
    kw_ = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
               dilation=dilation)
    _both(lambda x, wt, b: F.conv_transpose2d(x, wt, b, **kw_),
          lambda x, wt, b: torch.nn.functional.conv_transpose2d(x, wt, b, **kw_),
          ((2, cin * groups, h, w), (cin * groups, cout, kh, kw), (cout * groups,)), rng)


@needs_torch
@SOME
@given(h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       stride=st.tuples(_small, _small), pad=st.tuples(st.integers(0, 2), st.integers(0, 2)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), ceil_mode=st.booleans(),
       count_include_pad=st.booleans())
def test_pools_any_geometry_match_torch(h, w, kh, kw, stride, pad, dilation, ceil_mode,
                                        count_include_pad):
    assume(2 * pad[0] <= kh and 2 * pad[1] <= kw)
    tf = torch.nn.functional
    x = np.round(np.random.default_rng(0).standard_normal((2, 2, h, w)) * 2)  # ties
    kw_ = dict(kernel_size=(kh, kw), stride=stride, padding=pad, ceil_mode=ceil_mode)
    try:
        yt, it = tf.max_pool2d(torch.tensor(x), dilation=dilation, return_indices=True, **kw_)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            F.max_pool2d(dg.tensor(x), dilation=dilation, **kw_)
        return
    yd, idd = F.max_pool2d(dg.tensor(x), dilation=dilation, return_indices=True, **kw_)
    _same(yd, yt)
    assert np.array_equal(idd.numpy(), it.numpy())
    try:
        at = tf.avg_pool2d(torch.tensor(x), count_include_pad=count_include_pad, **kw_)
    except RuntimeError:
        return
    _same(F.avg_pool2d(dg.tensor(x), count_include_pad=count_include_pad, **kw_), at)


# ------------------------------------------------------------------ errors


def test_channel_mismatch_names_the_shapes():
    with pytest.raises(RuntimeError, match=r"Given groups=1, weight of size \[2, 3, 3, 3\], "
                                           r"expected input\[1, 4, 5, 5\] to have 3 channels, "
                                           r"but got 4 channels instead"):
        F.conv2d(dg.randn(1, 4, 5, 5), dg.randn(2, 3, 3, 3))


def test_wrong_input_rank_raises_as_torch():
    with pytest.raises(RuntimeError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input "
                                           r"to conv2d, but got input of size: \[5, 5\]"):
        F.conv2d(dg.randn(5, 5), dg.randn(2, 1, 3, 3))
    with pytest.raises(RuntimeError, match="Expected 3D or 4D input tensor"):
        F.max_pool2d(dg.randn(5, 5), 2)


def test_kernel_larger_than_input_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"Kernel size can't be greater than actual input "
                                           r"size.*smaller kernel"):
        F.conv2d(dg.randn(1, 1, 2, 2), dg.randn(1, 1, 3, 3))
    with pytest.raises(RuntimeError, match="output size is too small"):
        F.max_pool2d(dg.randn(1, 1, 2, 2), 3)


def test_bias_and_groups_errors_as_torch():
    with pytest.raises(RuntimeError, match=r"Given weight of size \[3, 2, 3, 3\], expected bias "
                                           r"to be 1-dimensional with 3 elements, but got bias "
                                           r"of size \[4\] instead"):
        F.conv2d(dg.zeros(1, 2, 5, 5), dg.zeros(3, 2, 3, 3), dg.zeros(4))
    with pytest.raises(RuntimeError, match=r"Given groups=2, expected weight to be divisible "
                                           r"by 2 at dimension 0"):
        F.conv2d(dg.zeros(1, 4, 5, 5), dg.zeros(3, 2, 3, 3), groups=2)
    with pytest.raises(RuntimeError, match="stride should not be zero"):
        F.max_pool2d(dg.zeros(1, 1, 4, 4), 2, 0)


def test_argument_errors():
    with pytest.raises(RuntimeError, match="padding='same' is not supported for strided"):
        F.conv2d(dg.randn(1, 1, 5, 5), dg.randn(1, 1, 3, 3), stride=2, padding="same")
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        F.max_pool2d(dg.randn(1, 1, 5, 5), 2, padding=2)
    with pytest.raises(RuntimeError, match="output padding must be smaller"):
        F.conv_transpose2d(dg.randn(1, 1, 3, 3), dg.randn(1, 1, 3, 3), stride=2,
                           output_padding=2)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for '
                                         'ConvTranspose2d'):
        nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(RuntimeError, match="Input type \\(float32\\) and weight type "
                                           "\\(float64\\) should be the same"):
        F.conv2d(dg.randn(1, 1, 3, 3), dg.randn(1, 1, 3, 3, dtype=dg.float64))


# ------------------------------------------------------------------ models


class MnistNet(nn.Module):
    """pytorch/examples mnist's model, verbatim but for the imports."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = dg.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def test_the_pytorch_examples_mnist_model_trains_eagerly():
    model = MnistNet()
    x, target = dg.randn(4, 1, 28, 28), dg.randint(0, 10, (4,))
    loss = F.nll_loss(model(x), target)
    loss.backward()
    assert loss.shape == () and np.isfinite(loss.item())
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert model.conv1.weight.grad.abs().sum().item() > 0


def _cnn():
    dg.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def _train(backend):
    model = _cnn()
    opt = dg.optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = step if backend is None else dg.compile(step, backend=backend)
    dg.manual_seed(1)
    seen = []
    for _ in range(5):
        loss = fn(dg.randn(3, 2, 8, 8), dg.randint(0, 5, (3,)))
        seen.append([loss.detach().numpy().copy()] +
                    [p.detach().numpy().copy() for p in model.parameters()] +
                    [p.grad.numpy().copy() for p in model.parameters()])
    return seen, fn


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_a_compiled_cnn_training_step_equals_eager(backend):
    eager, _ = _train(None)
    compiled, fn = _train(backend)
    assert sum(v.calls for v in fn.variants) >= 3, fn.fallbacks  # (step 1 warms up)
    for step_e, step_c in zip(eager, compiled, strict=True):
        for e, c in zip(step_e, step_c, strict=True):
            if backend == "interp":
                assert np.array_equal(e, c)
            else:
                np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6)


class EveryLayer(nn.Module):
    """Every new function in one model: grouped 'same' conv, avg pool (ceil_mode, padding
    not counted), transposed conv with output_padding, both adaptive pools, conv1d and
    max_pool1d."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding="same", groups=2)
        self.t = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.c3 = nn.Conv1d(3, 2, 2)
        self.fc = nn.Linear(40, 5)

    def forward(self, x):
        h = F.avg_pool2d(F.relu(self.c1(x)), 3, 2, 1, ceil_mode=True, count_include_pad=False)
        h = self.t(h)
        a = F.adaptive_avg_pool2d(h, (2, 2)).flatten(1)
        m, _ = F.adaptive_max_pool2d(h, (2, 2), return_indices=True)
        s = F.max_pool1d(self.c3(F.max_pool1d(h.flatten(2), 4, ceil_mode=True)), 3)
        return self.fc(dg.cat([s.flatten(1), a, m.flatten(1)], 1))


@pytest.mark.parametrize("backend", ["interp", "llvm"])
def test_every_conv_and_pool_function_compiles_and_equals_eager(backend):
    def train(backend):
        dg.manual_seed(0)
        model = EveryLayer()
        opt = dg.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = step if backend is None else dg.compile(step, backend=backend)
        dg.manual_seed(1)
        seen = [[fn(dg.randn(3, 2, 8, 8), dg.randint(0, 5, (3,))).detach().numpy().copy()] +
                [p.detach().numpy().copy() for p in model.parameters()] for _ in range(4)]
        return seen, fn

    eager, _ = train(None)
    compiled, fn = train(backend)
    assert sum(v.calls for v in fn.variants) >= 2, fn.fallbacks
    for e, c in zip(sum(eager, []), sum(compiled, []), strict=True):
        np.testing.assert_allclose(c, e, rtol=0 if backend == "interp" else 1e-5,
                                   atol=0 if backend == "interp" else 1e-6)


@needs_torch
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("make", [
    lambda lib, mode: lib.nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode),
    lambda lib, mode: lib.nn.Conv2d(2, 3, (3, 2), padding="same", dilation=(1, 2),
                                    padding_mode=mode),
    lambda lib, mode: lib.nn.Conv1d(2, 3, 3, stride=2, padding=2, padding_mode=mode),
])
def test_padding_modes_match_torch(make, mode):
    ours, theirs = make(dg, mode), make(torch, mode)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            getattr(ours, name).data.copy_(dg.tensor(p.numpy()))
    assert repr(ours) == repr(theirs)
    shape = (2, 2, 6, 7) if isinstance(theirs, torch.nn.Conv2d) else (2, 2, 9)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xd, xt = dg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yd, yt = ours(xd), theirs(xt)
    np.testing.assert_allclose(yd.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    yd.square().sum().backward()
    yt.square().sum().backward()
    np.testing.assert_allclose(xd.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-4,
                               atol=1e-4)
