"""What torchvision's model files take from PyTorch beyond layers (found by the corpus's
torchvision_* programs): the TorchScript markers (``torch.jit.unused``,
``torch.jit._overload_method``, ``torch.jit.is_scripting()``), no-ops outside TorchScript,
and activation checkpointing (``torch.utils.checkpoint``, which DenseNet's
``memory_efficient=True`` runs each bottleneck through)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dyngrad as dg
from dyngrad import nn
from dyngrad.utils.checkpoint import checkpoint, checkpoint_sequential

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional oracle
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is the oracle here")


# ---------------------------------------------------------------- torch.jit markers

def test_jit_markers_are_no_ops_outside_torchscript():
    def f(x):
        return x + 1

    assert dg.jit.unused(f) is f and dg.jit.export(f) is f and dg.jit.ignore(f) is f
    assert dg.jit.ignore(drop=True)(f) is f and dg.jit._overload_method(f) is f
    assert dg.jit.is_scripting() is False and dg.jit.is_tracing() is False
    assert dg.jit.annotate(list[int], []) == []


def test_an_overloaded_method_is_the_definition_that_follows_its_overloads():
    # (DenseNet's _DenseLayer.forward: two @_overload_method stubs, then the real one)
    class Layer(nn.Module):
        @dg.jit._overload_method
        def forward(self, input: list) -> dg.Tensor:
            pass

        @dg.jit._overload_method
        def forward(self, input: dg.Tensor) -> dg.Tensor:  # noqa: F811
            pass

        def forward(self, input):  # noqa: F811
            return input * 2

    assert Layer()(dg.ones(2)).tolist() == [2.0, 2.0]


def test_jit_ignore_takes_a_bool_as_pytorch_does():
    with pytest.raises(RuntimeError, match="must be a bool or a function"):
        dg.jit.ignore("yes")


def test_jit_script_and_trace_raise_and_name_dg_compile():
    for make in (dg.jit.script, dg.jit.trace):
        with pytest.raises(RuntimeError, match="no TorchScript.*dyngrad.compile"):
            make(nn.Linear(2, 2))


# ---------------------------------------------------------------- torch.utils.checkpoint

def block_of(lib, w):
    def block(x, scale):
        return (x @ w).tanh() * scale
    return block


@needs_torch
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_gives_the_values_and_gradients_of_the_plain_call_as_torch(reentrant):
    rng = np.random.default_rng(0)
    x0, w0 = rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    results = []
    for lib, ckpt in ((dg, checkpoint), (torch, torch.utils.checkpoint.checkpoint)):
        x = lib.tensor(x0, requires_grad=True)
        w = lib.tensor(w0, requires_grad=True)
        y = ckpt(block_of(lib, w), x, 2.0, use_reentrant=reentrant)
        (y * y).sum().backward()
        results.append([y.detach().numpy(), x.grad.numpy(), w.grad.numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_reentrant_checkpoint_runs_the_function_again_in_backward_without_a_graph_first():
    calls = []
    w = dg.ones(3, requires_grad=True)

    def block(x):
        calls.append(dg.is_grad_enabled())
        return x * w

    y = checkpoint(block, dg.ones(3, requires_grad=True), use_reentrant=True)
    assert calls == [False]
    y.sum().backward()
    assert calls == [False, True] and w.grad.tolist() == [1.0, 1.0, 1.0]


def test_checkpoint_gradients_agree_with_finite_differences():
    # (by backward(): gradcheck's autograd.grad is what the reentrant form refuses, in
    # PyTorch too)
    rng = np.random.default_rng(1)
    w0, x0 = rng.standard_normal((4, 4)), rng.standard_normal((3, 4))

    def loss(x, w):
        return checkpoint(block_of(dg, w), x, 0.5, use_reentrant=True).pow(2).sum()

    x, w = dg.tensor(x0, requires_grad=True), dg.tensor(w0, requires_grad=True)
    loss(x, w).backward()
    for arg, grad in ((0, x.grad.numpy()), (1, w.grad.numpy())):
        numeric = np.zeros_like(grad)
        for i in np.ndindex(grad.shape):
            values = []
            for h in (1e-6, -1e-6):
                args = [x0.copy(), w0.copy()]
                args[arg][i] += h
                with dg.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # (no input requires grad here)
                    values.append(loss(*map(dg.tensor, args)).item())
            numeric[i] = (values[0] - values[1]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_checkpoint_without_use_reentrant_warns_as_torch_and_is_reentrant():
    with pytest.warns(UserWarning, match="use_reentrant parameter should be passed"):
        y = checkpoint(lambda x: x * 2, dg.ones(2, requires_grad=True))
    assert y.grad_fn.name() == "CheckpointFunctionBackward"


def test_reentrant_checkpoint_with_no_input_requiring_grad_warns():
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"):
        checkpoint(lambda x: x * 2, dg.ones(2), use_reentrant=True)


def test_reentrant_checkpoint_refuses_autograd_grad_and_keyword_arguments():
    x = dg.ones(2, requires_grad=True)
    y = checkpoint(lambda x: x * x, x, use_reentrant=True).sum()
    with pytest.raises(RuntimeError, match="incompatible with .grad"):
        dg.autograd.grad(y, [x])
    with pytest.raises(ValueError, match="Unexpected keyword arguments: scale"):
        checkpoint(lambda x, scale: x * scale, x, use_reentrant=True, scale=2.0)
    with pytest.raises(ValueError, match="only supported when use_reentrant=False"):
        checkpoint(lambda x: x, x, use_reentrant=True, debug=True)
    # the non-reentrant form takes both
    (g,) = dg.autograd.grad(checkpoint(lambda x, scale: x * scale, x, use_reentrant=False,
                                       scale=3.0).sum(), [x])
    assert g.tolist() == [3.0, 3.0]


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_recomputes_dropout_with_the_forward_s_mask(reentrant):
    dg.manual_seed(0)
    x = dg.ones(1000, requires_grad=True)
    y = checkpoint(lambda x: nn.functional.dropout(x, 0.5, training=True), x,
                   use_reentrant=reentrant)
    after_forward = dg.get_rng_state()
    y.sum().backward()
    # the gradient is the forward's mask (times 2), and backward leaves the generator alone
    np.testing.assert_array_equal(x.grad.numpy(), y.detach().numpy())
    np.testing.assert_array_equal(dg.get_rng_state().numpy(), after_forward.numpy())


@needs_torch
def test_checkpoint_sequential_matches_torch():
    rng = np.random.default_rng(3)
    layers = [rng.standard_normal((4, 4)) for _ in range(4)]
    x0 = rng.standard_normal((2, 4))
    results = []
    for lib, ckpt in ((dg, checkpoint_sequential),
                      (torch, torch.utils.checkpoint.checkpoint_sequential)):
        model = lib.nn.Sequential(*[lib.nn.Linear(4, 4, bias=False).double() for _ in layers])
        with lib.no_grad():
            for m, w in zip(model, layers):
                m.weight.copy_(lib.tensor(w))
        x = lib.tensor(x0, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = ckpt(model, 2, x)
        y.pow(2).sum().backward()
        results.append([y.detach().numpy(), x.grad.numpy(), model[0].weight.grad.numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_a_compiled_step_through_a_checkpoint_equals_eager(input_requires_grad):
    # (DenseNet's form: the checkpointed function is the user's closure, here with a
    # BatchNorm whose running statistics the recomputation updates a second time, in eager
    # as in PyTorch; see checkpoint._under_a_mode. An input that does not require grad lets
    # no gradient through to the parameters inside, compiled as in eager)
    def run(compiled):
        dg.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
        opt = dg.optim.SGD(model.parameters(), lr=0.1)

        def step(x):
            def bottleneck(x):
                return model[1](model[0](x))

            opt.zero_grad()
            hidden = checkpoint(bottleneck, x, use_reentrant=True)
            loss = model[2](hidden).pow(2).mean()
            loss.backward()
            opt.step()
            return loss

        fn = dg.compile(step) if compiled else step
        x = dg.tensor(np.random.default_rng(4).standard_normal((3, 4)), dtype=dg.float32,
                      requires_grad=input_requires_grad)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (no input requires grad, in one case)
            losses = [fn(x).item() for _ in range(3)]
        return losses, model[0].weight.detach().numpy(), x.grad, fn, \
            model[1].running_mean.numpy().copy()

    eager, w_eager, g_eager, _, mean_eager = run(False)
    got, w_got, g_got, fn, mean_got = run(True)
    assert fn.variants
    np.testing.assert_allclose(mean_got, mean_eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, eager, rtol=1e-6)
    np.testing.assert_allclose(w_got, w_eager, rtol=1e-6, atol=1e-7)
    assert (g_got is None) == (g_eager is None) == (not input_requires_grad)
    if input_requires_grad:
        np.testing.assert_allclose(g_got.numpy(), g_eager.numpy(), rtol=1e-6, atol=1e-7)
    else:
        assert np.array_equal(w_eager, model_weight_at_start())


def model_weight_at_start():
    dg.manual_seed(0)
    return nn.Linear(4, 8).weight.detach().numpy()


# ---------------------------------------------------------------- _load_from_state_dict

def versioned_block(lib):
    """A layer whose format version 2 renamed ``w`` to ``weight``: its override converts a
    version-1 state dict, as torchvision's MNASNet patches its version-1 stem."""
    class Block(lib.nn.Module):
        _version = 2

        def __init__(self):
            super().__init__()
            self.weight = lib.nn.Parameter(lib.zeros(2))
            self.seen = []

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                  missing_keys, unexpected_keys, error_msgs):
            self.seen.append((prefix, local_metadata.get("version")))
            if local_metadata.get("version") == 1 and prefix + "w" in state_dict:
                state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)

    return Block


@needs_torch
def test_load_state_dict_calls_each_module_s_load_from_state_dict_as_torch():
    results = []
    for lib in (dg, torch):
        Block = versioned_block(lib)
        model = lib.nn.Sequential(lib.nn.Linear(2, 2), Block())
        saved = model.state_dict()
        assert dict(saved._metadata) == {"": {"version": 1}, "0": {"version": 1},
                                         "1": {"version": 2}}
        # a version-1 checkpoint: the old name, converted by the override
        old = type(saved)((k.replace("1.weight", "1.w"), v + 1) for k, v in saved.items())
        old._metadata = type(saved._metadata)(saved._metadata)
        old._metadata["1"] = {"version": 1}
        keys = model.load_state_dict(old)
        results.append((list(model[1].seen), list(keys.missing_keys), list(keys.unexpected_keys),
                        model[1].weight.detach().numpy().copy()))
        # without metadata (a plain dict) the override sees no version
        model.load_state_dict(dict(model.state_dict()))
        results.append(model[1].seen[-1])
    assert results[0][0] == results[2][0] == [("1.", 1)]
    assert results[0][1:3] == results[2][1:3] == ([], [])
    np.testing.assert_array_equal(results[0][3], results[2][3])
    assert results[1] == results[3] == ("1.", None)


def test_a_key_under_a_child_that_names_nothing_is_unexpected_there():
    model = nn.Sequential(nn.Linear(2, 2))
    keys = model.load_state_dict({**model.state_dict(), "0.junk": dg.zeros(1)}, strict=False)
    assert keys.unexpected_keys == ["0.junk"] and keys.missing_keys == []


def test_save_and_load_keep_a_state_dict_s_format_versions(tmp_path):
    # (torch.save keeps _metadata; without it a model like MNASNet, whose override asserts
    # the version, could not load its own checkpoint)
    Block = versioned_block(dg)
    model = nn.Sequential(nn.Linear(2, 2), Block())
    dg.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.npz")
    loaded = dg.load(tmp_path / "ckpt.npz")
    assert loaded["epoch"] == 3 and list(loaded["model"]) == list(model.state_dict())
    assert dict(loaded["model"]._metadata) == {"": {"version": 1}, "0": {"version": 1},
                                               "1": {"version": 2}}
    model.load_state_dict(loaded["model"])
    assert model[1].seen == [("1.", 2)]
