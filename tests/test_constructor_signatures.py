"""Layer and loss constructors take PyTorch's arguments in PyTorch's order (found by
pytorch/examples' mnist_forward_forward, whose ``Layer(nn.Linear)`` passes ``bias, device,
dtype`` on positionally, and by a sweep of every layer both libraries have): ``device=``
on every layer that makes parameters, the deprecated ``size_average``/``reduce`` of the loss
modules, their ``weight`` as a buffer, ``Embedding``'s ``max_norm``, ``_weight`` and
``from_pretrained``; and ``dg.xpu``, which such scripts ask next to CUDA and MPS."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import dyngrad as dg
from dyngrad import nn

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")

# (keyword-only here, positional in PyTorch: never passed positionally in practice)
KEYWORD_ONLY_HERE = {"LazyBatchNorm1d": {"bias"}, "LazyBatchNorm2d": {"bias"},
                     "SyncBatchNorm": {"bias"}}


def _positional(sig) -> list[str]:
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]


@needs_torch
def test_every_layer_takes_pytorch_s_positional_arguments_in_its_order():
    names = sorted(n for n in dir(torch.nn) if isinstance(getattr(torch.nn, n), type)
                   and issubclass(getattr(torch.nn, n), torch.nn.Module) and hasattr(dg.nn, n))
    assert len(names) > 80
    wrong = []
    for name in names:
        try:
            theirs = inspect.signature(getattr(torch.nn, name).__init__)
            ours = inspect.signature(getattr(dg.nn, name).__init__)
        except (TypeError, ValueError):
            continue
        if any(p.kind is p.VAR_KEYWORD for p in ours.parameters.values()):
            continue
        mine = set(ours.parameters)
        missing = {p for p in list(theirs.parameters)[1:] if p not in mine} - \
            {"args", "kwargs", "factory_kwargs"} - KEYWORD_ONLY_HERE.get(name, set())
        pos_t, pos_d = _positional(theirs), _positional(ours)
        if missing or (pos_t and pos_d[:len(pos_t)] != pos_t and name not in KEYWORD_ONLY_HERE):
            wrong.append(f"{name}: torch {pos_t}, dyngrad {pos_d}, missing {sorted(missing)}")
    assert wrong == []


@pytest.mark.parametrize("make", [
    lambda device: nn.Linear(2, 3, True, device),
    lambda device: nn.Conv1d(1, 2, 3, device=device),
    lambda device: nn.Conv2d(1, 2, 3, device=device),
    lambda device: nn.ConvTranspose2d(1, 2, 3, device=device),
    lambda device: nn.LayerNorm(4, device=device),
    lambda device: nn.Embedding(3, 2, device=device),
    lambda device: nn.BatchNorm2d(3, device=device),
    lambda device: nn.LSTM(2, 3, device=device),
    lambda device: nn.GRUCell(2, 3, device=device),
    lambda device: nn.LazyLinear(3, device=device),
    lambda device: nn.MultiheadAttention(4, 2, device=device),
    lambda device: nn.TransformerEncoderLayer(4, 2, 8, device=device),
    lambda device: nn.PReLU(device=device),
], ids=["Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "LayerNorm", "Embedding",
        "BatchNorm2d", "LSTM", "GRUCell", "LazyLinear", "MultiheadAttention",
        "TransformerEncoderLayer", "PReLU"])
def test_layers_take_the_cpu_as_device_and_refuse_cuda_as_a_cpu_only_torch(make):
    make("cpu")
    make(dg.device("cpu"))
    with pytest.raises(AssertionError, match="not compiled with CUDA enabled"):
        make("cuda")


def test_linear_subclass_passing_bias_device_dtype_on_positionally():
    # (mnist_forward_forward's Layer)
    class Layer(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device, dtype)

    layer = Layer(3, 2, True, None, dg.float64)
    assert layer.weight.dtype is dg.float64 and layer.bias.shape == (2,)


@needs_torch
def test_loss_modules_take_the_deprecated_size_average_and_reduce_as_torch():
    rng = np.random.default_rng(0)
    x, y, w = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1]), np.array([0.2, 1.0, 3.0])
    p, t = 1 / (1 + np.exp(-x)), (x > 0) * 1.0
    results = []
    for lib in (dg, torch):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mse = lib.nn.MSELoss(False)  # size_average=False: a sum
            assert "reduction='sum'" in str(caught[0].message)
            ce = lib.nn.CrossEntropyLoss(lib.tensor(w), None, 1)  # ignore_index third
            nll = lib.nn.NLLLoss(lib.tensor(w), reduce=False)
        bce = lib.nn.BCELoss(lib.tensor(w))
        logits = lib.nn.BCEWithLogitsLoss(lib.tensor(w), pos_weight=lib.tensor(w))
        results.append([mse(lib.tensor(x), lib.tensor(x * 0)).item(),
                        ce(lib.tensor(x), lib.tensor(y)).item(),
                        nll(lib.tensor(x), lib.tensor(y)).numpy(),
                        bce(lib.tensor(p), lib.tensor(t)).item(),
                        logits(lib.tensor(x), lib.tensor(t)).item(),
                        sorted(ce.state_dict()), sorted(logits.state_dict())])
    for a, b in zip(*results):
        if isinstance(a, list):
            assert a == b
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12)


@needs_torch
def test_embedding_max_norm_renormalises_the_rows_it_looks_up_as_torch():
    w = np.random.default_rng(1).standard_normal((5, 3)) * 2
    results = []
    for lib in (dg, torch):
        emb = lib.nn.Embedding.from_pretrained(lib.tensor(w), freeze=False, max_norm=1.5)
        out = emb(lib.tensor([[0, 2, 2], [4, 0, 1]]))
        (out * lib.arange(3.0)).sum().backward()
        results.append([out.detach().numpy(), emb.weight.detach().numpy(),
                        emb.weight.grad.numpy(), repr(emb)])
        frozen = lib.nn.Embedding.from_pretrained(lib.tensor(w), padding_idx=1)
        assert not frozen.weight.requires_grad and frozen.padding_idx == 1
    for a, b in zip(*results):
        if isinstance(a, str):
            assert a == b
        else:
            np.testing.assert_allclose(a, b, rtol=1e-12)
    # the rows looked up are at most max_norm long now; the one never looked up is as it was
    assert np.all(np.linalg.norm(results[0][1][[0, 1, 2, 4]], axis=1) <= 1.5 + 1e-9)
    assert np.linalg.norm(w[[0, 2, 4]], axis=1).max() > 1.5
    np.testing.assert_array_equal(results[0][1][3], w[3])


def test_embedding_checks_as_torch_and_refuses_what_it_cannot_do():
    with pytest.raises(AssertionError, match="Shape of weight does not match"):
        nn.Embedding(3, 2, _weight=dg.zeros(2, 2))
    with pytest.raises(AssertionError, match="expected to be 2-dimensional"):
        nn.Embedding.from_pretrained(dg.zeros(3))
    with pytest.raises(NotImplementedError, match="no sparse tensors"):
        nn.Embedding(3, 2, sparse=True)
    with pytest.raises(NotImplementedError, match="scale_grad_by_freq"):
        nn.functional.embedding(dg.tensor([0]), dg.zeros(3, 2), scale_grad_by_freq=True)


def test_xpu_answers_as_a_torch_built_without_it():
    assert dg.xpu.is_available() is False and dg.xpu.device_count() == 0
    dg.xpu.manual_seed(0)
    with pytest.raises(AssertionError, match="not compiled with XPU enabled"):
        dg.xpu.synchronize()


@needs_torch
def test_init_functions_take_torch_s_arguments_and_keep_its_deprecated_names():
    # (pytorch/examples' siamese_network calls torch.nn.init.xavier_uniform(m.weight))
    for name in [n for n in dir(torch.nn.init) if not n.startswith("_")]:
        theirs = getattr(torch.nn.init, name)
        if not inspect.isfunction(theirs):
            continue
        ours = getattr(dg.nn.init, name)
        if name.endswith("_"):
            assert list(inspect.signature(ours).parameters) == \
                list(inspect.signature(theirs).parameters), name
    for old in ["uniform", "normal", "constant", "eye", "dirac", "xavier_uniform",
                "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "sparse"]:
        w = dg.empty(4, 3, 3) if old == "dirac" else dg.empty(4, 3)
        args = (0.5,) if old in ("constant", "sparse") else ()
        with pytest.warns(FutureWarning, match=f"`nn.init.{old}` is now deprecated in favor "
                                               f"of `nn.init.{old}_`"):
            assert getattr(dg.nn.init, old)(w, *args) is w


def test_init_draws_from_the_generator_it_is_given():
    draws = [dg.nn.init.kaiming_uniform_(dg.empty(3, 4), generator=dg.Generator().manual_seed(5))
             for _ in range(2)]
    np.testing.assert_array_equal(draws[0].numpy(), draws[1].numpy())
    dg.nn.init.xavier_normal_(tensor=dg.empty(2, 2), gain=2.0)  # (the name torch gives it)


def test_sparse_init_zeros_the_same_number_of_entries_per_column_as_torch():
    dg.manual_seed(0)
    w = dg.nn.init.sparse_(dg.empty(10, 4), sparsity=0.25, std=0.5)
    assert (w == 0).sum(0).tolist() == [3, 3, 3, 3]   # ceil(0.25 · 10)
    with pytest.raises(ValueError, match="Only tensors with 2 dimensions"):
        dg.nn.init.sparse_(dg.empty(2, 2, 2), 0.5)
