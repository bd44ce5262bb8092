"""What d2l.ai's own library (``d2l/torch.py``) takes from PyTorch (issue 15): every name
it binds at import, and the layers its chapters build networks from — the lazy layers
(``LazyConv2d``, ``LazyBatchNorm2d``, ``LazyLinear``), ``nn.DataParallel`` (with no
accelerator its forward is its module's) and ``nonzero``. The name lists were read from
d2l-ai/d2l-en at 23d7a5ae (``d2l/torch.py``)."""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import dyngrad as dg
from compiler.backends.llvm import driver
from dyngrad import nn

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")

# the aliases d2l/torch.py binds at import (its last lines), and the torch.* / nn.* / F.*
# names its functions use
D2L_ALIASES = ["ones_like", "ones", "zeros_like", "zeros", "tensor", "arange", "meshgrid",
               "sin", "sinh", "cos", "cosh", "tanh", "linspace", "exp", "log", "normal",
               "rand", "randn", "matmul", "int32", "int64", "float32", "cat", "stack", "abs",
               "eye", "sigmoid", "bmm"]
D2L_TORCH = ["argmax", "bmm", "cat", "device", "float32", "int64", "long", "manual_seed",
             "no_grad", "nonzero", "ones", "rand", "randn", "repeat_interleave", "save",
             "load", "stack", "sum", "tensor", "zeros", "arange", "cuda.device_count",
             "cuda.is_available", "utils.data.DataLoader", "utils.data.TensorDataset",
             "optim.SGD", "optim.Adam", "exp", "log", "softmax", "matmul", "randint",
             "normal", "meshgrid", "linspace", "abs", "sigmoid", "eye", "ones_like",
             "zeros_like", "tanh", "sin", "cos", "sinh", "cosh", "int32"]
D2L_NN = ["Module", "Sequential", "Linear", "LazyLinear", "LazyConv2d", "LazyBatchNorm2d",
          "Conv2d", "BatchNorm2d", "ReLU", "Flatten", "MaxPool2d", "AvgPool2d",
          "AdaptiveAvgPool2d", "Dropout", "CrossEntropyLoss", "MSELoss", "Embedding", "GRU",
          "LSTM", "RNN", "LayerNorm", "Parameter", "DataParallel", "parallel", "init",
          "functional", "Softmax", "Tanh", "Sigmoid"]


def _get(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


@pytest.mark.parametrize("name", sorted(set(D2L_ALIASES + D2L_TORCH)))
def test_d2l_torch_names_exist(name):
    assert _get(dg, name) is not None


@pytest.mark.parametrize("name", D2L_NN)
def test_d2l_nn_names_exist(name):
    assert _get(nn, name) is not None


def _d2l_lenet():
    """d2l's LeNet (chapter 7.6): lazy layers, sigmoid, average pooling."""
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5, padding=2), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.LazyConv2d(16, kernel_size=5), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.LazyLinear(120), nn.Sigmoid(), nn.LazyLinear(84), nn.Sigmoid(),
        nn.LazyLinear(10))


def test_lazy_layers_become_their_classes_and_keep_their_parameter_objects():
    dg.manual_seed(0)
    net = nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(),
                        nn.Identity(), nn.Flatten(),
                        nn.LazyLinear(5))
    params = list(net.parameters())
    opt = dg.optim.SGD(net.parameters(), lr=0.1)
    y = net(dg.randn(3, 2, 6, 6))
    assert y.shape == (3, 5)
    assert [type(m).__name__ for m in net] == ["Conv2d", "BatchNorm2d", "ReLU", "Identity",
                                               "Flatten", "Linear"]
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert net[0].weight.shape == (4, 2, 3, 3) and net[1].running_var.shape == (4,)
    y.sum().backward()
    opt.step()
    assert net[0].weight.grad is not None and net[1].num_batches_tracked.item() == 1
    c1 = nn.LazyConv1d(4, 3, groups=2)
    assert c1(dg.randn(2, 6, 9)).shape == (2, 4, 7) and c1.weight.shape == (4, 3, 3)
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.LazyConv1d(4, 3, groups=2)(dg.randn(2, 5, 9))
    bn = nn.LazyBatchNorm1d(affine=False)
    assert bn(dg.randn(4, 3)).shape == (4, 3) and bn.weight is None


@needs_torch
def test_d2l_lenet_with_lazy_layers_matches_torch():
    ours = _d2l_lenet()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    ours(dg.tensor(x))  # (materialises the lazy layers)
    theirs = torch.nn.Sequential(
        torch.nn.LazyConv2d(6, kernel_size=5, padding=2), torch.nn.Sigmoid(),
        torch.nn.AvgPool2d(kernel_size=2, stride=2),
        torch.nn.LazyConv2d(16, kernel_size=5), torch.nn.Sigmoid(),
        torch.nn.AvgPool2d(kernel_size=2, stride=2), torch.nn.Flatten(),
        torch.nn.LazyLinear(120), torch.nn.Sigmoid(), torch.nn.LazyLinear(84),
        torch.nn.Sigmoid(), torch.nn.LazyLinear(10))
    theirs(torch.tensor(x))
    assert repr(ours) == repr(theirs)
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    np.testing.assert_allclose(ours(dg.tensor(x)).detach().numpy(),
                               theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_compiled_step_of_a_lazy_network_equals_eager():
    def train(compiled: bool):
        dg.manual_seed(0)
        net = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(),
                            nn.Flatten(), nn.LazyLinear(3))
        opt = dg.optim.SGD(net.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = compiler.compile(step, backend="llvm") if compiled else step
        dg.manual_seed(1)
        out = [fn(dg.randn(4, 2, 6, 6), dg.randint(0, 3, (4,))).item() for _ in range(4)]
        return out, [p.detach().numpy().copy() for p in net.parameters()], fn

    (le, pe, _), (lc, pc, fn) = train(False), train(True)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    for a, b in zip(pc, pe, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert sum(v.calls for v in fn.variants) >= 2, fn.fallbacks


@needs_torch
def test_nonzero_and_argwhere_match_torch():
    for a in [np.array([[0, 3], [4, 0]]), np.array(5), np.array(0.0), np.zeros((2, 0, 3)),
              np.array([True, False, True])]:
        d, t = dg.tensor(a), torch.tensor(a)
        assert np.array_equal(dg.nonzero(d).numpy(), torch.nonzero(t).numpy())
        assert dg.nonzero(d).shape == tuple(torch.nonzero(t).shape)
        assert np.array_equal(d.argwhere().numpy(), t.argwhere().numpy())
        for x, y in zip(d.nonzero(as_tuple=True), t.nonzero(as_tuple=True), strict=True):
            assert np.array_equal(x.numpy(), y.numpy())


def test_nonzero_in_a_compiled_function_is_guarded_on_the_data():
    fn = lambda x: (x * 2)[x.nonzero(as_tuple=True)].sum()  # noqa: E731
    f = compiler.compile(fn)
    for a in ([0.0, 1, 2], [3.0, 0, 0], [0.0, 1, 2], [5.0, 5, 5]):
        x = dg.tensor(a)
        assert f(x).item() == fn(x).item()


def test_data_parallel_on_a_machine_without_an_accelerator_is_its_module():
    m = nn.DataParallel(nn.Linear(3, 2), device_ids=None)
    assert m.device_ids == [] and list(m.state_dict()) == ["module.weight", "module.bias"]
    x = dg.ones(4, 3)
    assert np.array_equal(m(x).detach().numpy(), m.module(x).detach().numpy())
    assert nn.parallel.DataParallel is nn.DataParallel


# ------------------------------------------------------------------ what its chapters call


def test_rnn_flat_weights_names_are_pytorch_s_and_d2l_s_init_walks_them():
    """d2l's ``init_seq2seq`` initialises a GRU through ``_flat_weights_names``."""
    for cls, kw in ((nn.GRU, {}), (nn.LSTM, {"bias": False}), (nn.RNN, {})):
        ours = cls(3, 4, num_layers=2, **kw)
        assert ours._flat_weights_names == [n for n, _ in ours.named_parameters()]
        assert all(w is ours._parameters[n]
                   for w, n in zip(ours._flat_weights, ours._flat_weights_names))
        if torch is not None:
            assert ours._flat_weights_names == \
                getattr(torch.nn, cls.__name__)(3, 4, num_layers=2, **kw)._flat_weights_names
    g = nn.GRU(3, 4)
    for name in g._flat_weights_names:  # d2l's loop, verbatim but for the import
        if "weight" in name:
            nn.init.xavier_uniform_(g._parameters[name])
    assert abs(float(g.weight_ih_l0.std())) > 0


def test_save_and_load_lists_and_tuples_of_tensors(tmp_path):
    x, y = dg.arange(4), dg.zeros(4)
    dg.save([x, y], tmp_path / "x-files")  # d2l's read-write chapter
    x2, y2 = dg.load(tmp_path / "x-files")
    assert np.array_equal(x2.numpy(), x.numpy()) and np.array_equal(y2.numpy(), y.numpy())
    nested = {"a": (x, [y, 3]), "b": [], "c": ()}
    got = dg.load(_saved(nested, tmp_path / "nested"))
    assert isinstance(got["a"], tuple) and isinstance(got["a"][1], list)
    assert got["a"][1][1] == 3 and got["b"] == [] and got["c"] == ()
    assert np.array_equal(got["a"][0].numpy(), x.numpy())
    with pytest.raises(TypeError, match="dicts, lists and tuples of tensors, got set"):
        dg.save({x}, tmp_path / "bad")


def _saved(obj, path):
    dg.save(obj, path)
    return path


def test_lazy_layers_take_their_sizes_from_a_checkpoint_before_their_first_call(tmp_path):
    """d2l's read-write chapter: ``clone = MLP(); clone.load_state_dict(torch.load(f))``
    with lazy layers never called — as PyTorch, the checkpoint's shapes make them."""
    def make():
        return nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d(), nn.ReLU(),
                             nn.Flatten(), nn.LazyLinear(2))
    dg.manual_seed(0)
    net = make()
    x = dg.randn(2, 3, 6, 6)
    net(x)
    dg.save(net.state_dict(), tmp_path / "mlp.params")
    clone = make()
    params_before = list(clone.parameters())
    clone.load_state_dict(dg.load(tmp_path / "mlp.params"))
    assert [type(m).__name__ for m in clone] == ["Conv2d", "BatchNorm2d", "ReLU", "Flatten",
                                                 "Linear"]
    assert all(p is q for p, q in zip(params_before, clone.parameters()))  # (kept objects)
    net.eval()
    clone.eval()
    assert np.array_equal(clone(x).detach().numpy(), net(x).detach().numpy())


def test_a_value_s_leading_size_one_dims_are_dropped_on_assignment():
    """d2l's sequence chapter: ``preds[i] = model(x)`` with a (1, 1) result."""
    cases = [((5,), 2, (1, 1)), ((2, 3), 0, (1, 3)), ((2, 3), (slice(0, 1),), (1, 1, 3)),
             ((4,), slice(0, 2), (1, 2))]
    for shape, key, vshape in cases:
        ours = dg.zeros(*shape)
        ours[key] = dg.ones(*vshape)
        want = np.zeros(shape, np.float32)
        want[key] = 1.0
        assert np.array_equal(ours.numpy(), want), (shape, key, vshape)
    w = dg.ones(1, 1, requires_grad=True)
    x = dg.zeros(3)
    x[1] = w * 2
    x.sum().backward()
    assert w.grad.tolist() == [[2.0]]
    with pytest.raises(RuntimeError, match="cannot be broadcast|cannot be assigned"):
        dg.zeros(3)[0] = dg.ones(2, 1)


@needs_torch
@pytest.mark.parametrize("shape, out", [((2, 3, 7), 1), ((2, 3, 7), 3), ((3, 10), (4,)),
                                        ((1, 2, 5), 5)])
def test_adaptive_avg_pool1d_matches_pytorch_with_gradients(shape, out):
    """d2l's sentiment CNN: ``nn.AdaptiveAvgPool1d(1)`` over each channel."""
    from dyngrad.testing import gradcheck
    x = np.random.default_rng(0).standard_normal(shape)
    ours = dg.tensor(x, requires_grad=True)
    theirs = torch.tensor(x, requires_grad=True)
    y, ty = nn.AdaptiveAvgPool1d(out)(ours), torch.nn.AdaptiveAvgPool1d(out)(theirs)
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12)
    (y * y).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)
    assert gradcheck(lambda t: dg.nn.functional.adaptive_avg_pool1d(t, out),
                     (dg.tensor(x, requires_grad=True),))
    with pytest.raises(ValueError, match="adaptive_avg_pool1d: expected a 2-d"):
        dg.nn.functional.adaptive_avg_pool1d(dg.ones(2, 2, 2, 2), 1)


# ------------------------------------------------------------------ bidirectional RNNs


class _BiRNN(nn.Module):
    """d2l's sentiment-analysis model (chapter 16.2), small: embeddings, a two-layer
    bidirectional LSTM, and a classifier on the first and last steps' outputs."""

    def __init__(self, vocab_size=12, embed_size=6, num_hiddens=5, num_layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.encoder = nn.LSTM(embed_size, num_hiddens, num_layers=num_layers,
                               bidirectional=True)
        self.decoder = nn.Linear(4 * num_hiddens, 2)

    def forward(self, inputs):
        embeddings = self.embedding(inputs.T)
        self.encoder.flatten_parameters()
        outputs, _ = self.encoder(embeddings)
        encoding = dg.cat((outputs[0], outputs[-1]), dim=1)
        return self.decoder(encoding)


def test_a_compiled_training_step_of_d2l_s_bidirectional_lstm_equals_eager():
    def train(compiled: bool):
        dg.manual_seed(0)
        net = _BiRNN()
        opt = dg.optim.Adam(net.parameters(), lr=0.01)

        def step(x, y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return loss

        fn = compiler.compile(step) if compiled else step
        r = np.random.default_rng(1)
        out, grads = [], []
        for _ in range(4):
            x = dg.tensor(r.integers(0, 12, size=(3, 7)))   # (batch, steps) as d2l feeds it
            y = dg.tensor(r.integers(0, 2, size=(3,)))
            out.append(fn(x, y).item())
            grads.append([p.grad.numpy().copy() for p in net.parameters()])
        return out, grads, [p.detach().numpy().copy() for p in net.parameters()], fn

    (le, ge, pe, _), (lc, gc, pc, fn) = train(False), train(True)
    np.testing.assert_allclose(lc, le, rtol=1e-5)
    for step_e, step_c in zip(ge, gc, strict=True):
        for a, b in zip(step_c, step_e, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(pc, pe, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the first call traces again once Adam has made its state; the rest run compiled, as
    # one native driver call (no kernel left to numpy in a hybrid plan)
    assert sum(v.calls for v in fn.variants) >= 2, fn.fallbacks
    plan = fn.variants[-1].plan
    assert isinstance(plan, driver.DriverPlan), plan.describe()


# ------------------------------------------------------------------ unique


UNIQUE_INPUTS = [np.array([2, 1, 3, 1, 2, 5]), np.array([[1, 2], [0, 5], [1, 2]]),
                 np.array(3), np.array([True, False, True]), np.zeros((0, 3)),
                 np.array([-0.0, 0.0, 0.0]), np.array([0.0, -0.0]),
                 np.array([np.nan, 1.0, np.nan, 1.0]),
                 np.random.default_rng(0).integers(0, 2, (4, 3, 5)),
                 np.array([1, 1, 2, 2, 3, 1, 1, 2])]
UNIQUE_OPTIONS = [{}, {"return_inverse": True}, {"return_counts": True},
                  {"return_inverse": True, "return_counts": True}]


def _same_as_torch(ours, theirs):
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for d, t in zip(ours, theirs, strict=True):
        assert d.shape == tuple(t.shape) and d.dtype.name == str(t.dtype).split(".")[-1]
        assert not d.requires_grad
        a, b = d.numpy(), t.numpy()
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), (a, b)
        if a.dtype.kind == "f":
            assert np.array_equal(np.signbit(a), np.signbit(b))      # -0.0 kept as PyTorch


@needs_torch
@pytest.mark.parametrize("a", UNIQUE_INPUTS, ids=range(len(UNIQUE_INPUTS)))
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("fn", ["unique", "unique_consecutive"])
def test_unique_and_unique_consecutive_match_torch(a, dim, fn):
    if fn == "unique" and dim is not None and a.dtype.kind == "f" and np.isnan(a).any():
        return  # PyTorch's order of slices holding NaN is an artefact (the module says)
    t = torch.tensor(a)
    d = dg.tensor(a)
    for kw in UNIQUE_OPTIONS:
        try:
            theirs = getattr(torch, fn)(t, dim=dim, **kw)
        except (IndexError, RuntimeError) as e:
            with pytest.raises(type(e)):
                getattr(dg, fn)(d, dim=dim, **kw)
            continue
        _same_as_torch(getattr(dg, fn)(d, dim=dim, **kw), theirs)
        _same_as_torch(getattr(d, fn)(dim=dim, **kw), theirs)              # the method


def test_unique_sorts_and_counts_as_pytorch_documents():
    out, inverse, counts = dg.unique(dg.tensor([2, 1, 3, 1]), sorted=False,
                                     return_inverse=True, return_counts=True)
    assert out.tolist() == [1, 2, 3] and inverse.tolist() == [1, 0, 2, 0]
    assert counts.tolist() == [2, 1, 1]
    rows, inv = dg.unique(dg.tensor([[1, 2], [0, 5], [1, 2]]), dim=0, return_inverse=True)
    assert rows.tolist() == [[0, 5], [1, 2]] and inv.tolist() == [1, 0, 1]
    assert dg.unique(dg.tensor([[1, 2], [2, 1]])).tolist() == [1, 2]       # flattened
    nan = dg.unique(dg.tensor([float("nan"), 1.0, float("nan")]), return_counts=True)
    assert nan[1].tolist() == [1, 1, 1]                    # NaN is never equal to NaN
    assert dg.unique_consecutive(dg.tensor([1, 1, 2, 1])).tolist() == [1, 2, 1]


def test_unique_of_a_tensor_requiring_grad_is_a_constant():
    x = dg.tensor([1.0, 2.0, 1.0], requires_grad=True)
    u = dg.unique(x)
    assert not u.requires_grad and u.grad_fn is None


def test_unique_errors_name_the_op_and_the_shape():
    with pytest.raises(IndexError, match=r"unique: Dimension out of range \(expected to be in "
                                         r"range of \[-2, 1\], but got 2\)"):
        dg.unique(dg.zeros(2, 3), dim=2)
    with pytest.raises(IndexError, match="Dimension specified as 0 but tensor has no dim"):
        dg.unique(dg.tensor(3.0), dim=0)
    with pytest.raises(RuntimeError, match=r"0 sized dimensions.*\[2, 0\]"):
        dg.unique_consecutive(dg.zeros(2, 0), dim=0)


def test_unique_in_a_compiled_function_is_guarded_on_the_data():
    def fn(x):
        values, counts = x.unique(return_counts=True)
        return (values * counts).sum()
    f = compiler.compile(fn)
    for a in ([1.0, 1, 2], [3.0, 0, 0], [1.0, 1, 2], [5.0, 5, 5]):
        x = dg.tensor(a)
        assert f(x).item() == fn(x).item()


# ------------------------------------------------------------------ Size


def test_size_is_a_tuple_that_prints_and_counts_as_torch_size():
    s = dg.Size([2, 3])
    assert isinstance(s, tuple) and s == (2, 3) and s == dg.zeros(2, 3).shape
    assert repr(s) == str(s) == f"{s}" == "dyngrad.Size([2, 3])"
    assert s.numel() == 6 and dg.Size().numel() == 1 and repr(dg.Size()) == "dyngrad.Size([])"
    assert type(s[0]) is int and type(s[:1]) is dg.Size
    assert type(s + (4,)) is dg.Size and type((4,) + s) is dg.Size and s * 2 == (2, 3, 2, 3)
    assert hash(s) == hash((2, 3)) and dg.Size([dg.tensor(3)]) == (3,)
    if torch is not None:
        for t in (torch.Size([2, 3]), torch.Size([]), torch.Size([7])):
            ours = dg.Size(t)
            assert repr(ours) == repr(t).replace("torch.", "dyngrad.")
            assert ours.numel() == t.numel() and ours == t


def test_size_is_taken_wherever_a_shape_is():
    s, x = dg.Size([2, 3]), dg.zeros(2, 3)
    for made in (dg.zeros(s), dg.ones(s), dg.randn(s), dg.full(s, 2.0), x.new_zeros(s),
                 x.reshape(dg.Size([3, 2])).reshape(s), x.view(dg.Size([6])).view(s),
                 dg.zeros(1, 3).expand(s)):
        assert made.shape == s


def test_size_rejects_what_torch_size_rejects():
    with pytest.raises(TypeError, match=r"Size\(\) takes an iterable of 'int' \(item 0 is "
                                        r"'float'\)"):
        dg.Size([2.0])
    with pytest.raises(TypeError, match="'int' object is not iterable"):
        dg.Size(3)


def test_shape_stays_a_plain_tuple():
    """Tensor.shape and size() are tuples (see dyngrad/size.py for why)."""
    x = dg.zeros(2, 3)
    assert type(x.shape) is tuple and type(x.size()) is tuple


def test_a_size_argument_to_a_compiled_function_is_one_variant():
    """A Size argument is flattened as the tuple of ints it is (each int guarded by value):
    a new Size of the same ints is the same variant, other ints trace another, and a tuple
    of the same ints is not a Size (its structure differs: the function may ask)."""
    f = compiler.compile(lambda x, s: (x.reshape(s) * 2).sum() + float(type(s) is tuple))
    x = dg.arange(6.0).reshape(2, 3)
    for _ in range(4):
        assert f(x, dg.Size([3, 2])).item() == 30.0
    assert len(f.variants) == 1 and f.variants[0].calls >= 2
    assert f(x, dg.Size([6])).item() == 30.0 and len(f.variants) == 2
    assert f(x, (3, 2)).item() == 31.0 and len(f.variants) == 3


def test_a_method_of_a_size_argument_reads_its_ints_as_the_argument_leaves_they_are():
    """``s.numel()`` binds the argument container itself: its ints are read as the leaves
    the argument spec numbers (guarded there), never through ``s.numel.__self__[i]`` — an
    argument container has no expression of its own, and the guard builder raised TypeError
    out of the compiled call."""
    f = compiler.compile(lambda x, s: x * s.numel(), backend="interp")
    for v in [(2, 3), (2, 3), (3, 4), (2, 3)]:
        assert f(dg.ones(2), dg.Size(v)).tolist() == [float(v[0] * v[1])] * 2
    assert len(f.variants) == 2


def test_the_ints_of_a_size_argument_become_runtime_numbers_as_a_tuples_do():
    """An int seen to change becomes a runtime input; rebuilding the Size for the trace must
    not pin those traced ints as indices (``Size()`` calls ``operator.index`` on each), or
    every new value traces a variant of its own, up to the cache limit."""
    def fn(x, s):
        return x * s[0] + s[1]
    for make in (tuple, dg.Size):
        f = compiler.compile(fn, backend="interp")
        for k in range(2, 8):
            assert f(dg.ones(2), make([k, 5])).tolist() == [k + 5.0] * 2
        assert len(f.variants) == 2, (make, f.misses)
