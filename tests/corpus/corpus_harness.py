"""Load the corpus programs under dyngrad or under PyTorch, and run each one's quick form.

A corpus file is a public PyTorch program whose import lines alone were changed to dyngrad's;
its header lists each change as ``# port: <original>  ->  <ported>``. :func:`source` undoes
those lines to get the original program back for PyTorch, so both libraries run the same text.

Note: the two libraries draw different random numbers from the same seed, so a program's
initial weights and data would differ between them. :func:`shared_random` makes both draw
from one numpy generator instead: while a program is loaded and its quick form runs,
``randn``, ``randn_like``, ``rand``, ``multinomial`` and ``Tensor.uniform_``/``normal_``
(which every ``nn.init`` function and every layer's ``reset_parameters`` reach) are replaced,
from the test side, by functions drawing from ``numpy.random.default_rng(seed)``. The programs
are not edited for this.

A quick form is a function ``quick(lib, compiled) -> {name: array}``: a few training steps or
a forward/backward through the program's own classes and functions, with small synthetic data.
``compiled=True`` (dyngrad only) runs the same thing with ``dg.compile`` on the program's step
function, or on its model's forward where the program has no step function.

>>> out = run_quick("tutorials_polynomial_optim", "dyngrad")
>>> sorted(out)[:2]
['bias', 'loss']
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

CORPUS = Path(__file__).resolve().parent
PORT_LINE = re.compile(r"^# port: (?P<original>.+?)  ->  (?P<ported>.+)$")


def library(lib: str) -> types.ModuleType:
    """``"dyngrad"`` or ``"torch"`` as a module (raises ImportError where torch is absent)."""
    return importlib.import_module(lib)


def ports(name: str) -> list[tuple[str, str]]:
    """The (original, ported) import lines a corpus file's header declares."""
    text = (CORPUS / f"{name}.py").read_text()
    return [(m["original"], m["ported"]) for m in map(PORT_LINE.match, text.splitlines()) if m]


def source(name: str, lib: str) -> str:
    """The program's text: as ported for ``"dyngrad"``; with the original imports for torch."""
    text = (CORPUS / f"{name}.py").read_text()
    if lib == "dyngrad":
        return text
    # (only lines that now import dyngrad go back: torchvision, absent here, stays out, and
    # micrograd's engine is still imported from its vendored copy)
    undo = {ported: original for original, ported in ports(name) if "dyngrad" in ported}
    lines = text.splitlines()
    body = [i for i, line in enumerate(lines) if not line.startswith("# port: ")]
    for i in body:
        if lines[i].rstrip() in undo:
            lines[i] = undo[lines[i].rstrip()]
    return "\n".join(lines) + "\n"


def load(name: str, lib: str, until: str | None = None, skip: tuple[str, str] | None = None,
         namespace: dict | None = None) -> types.ModuleType:
    """Execute the program as a module (not as ``__main__``: its command-line entry point does
    not run; a script whose work is at module level runs it). Its prints are swallowed.

    ``until``: execute only the lines before the first one that starts with this text (a
    tutorial whose module-level training takes too long for a test: its definitions and data
    run, and the quick form runs a few of its steps itself).

    ``skip=(first, next)``: leave out the lines from the first one starting with ``first`` up
    to the next one starting with ``next`` (a script that parses ``sys.argv`` and builds a
    torchvision dataset at module level), with ``namespace`` supplying the globals they would
    have made (``opt``, ``device``, the loaders); the line count stays, so tracebacks point at
    the program's own lines."""
    module = types.ModuleType(f"corpus_{name}_{lib}")
    module.__file__ = str(CORPUS / f"{name}.py")
    module.__dict__.update(namespace or {})
    if str(CORPUS) not in sys.path:  # (micrograd's tests import its engine, vendored here)
        sys.path.insert(0, str(CORPUS))
    text = source(name, lib)
    lines = text.splitlines(keepends=True)
    if skip is not None:
        first = next(i for i, line in enumerate(lines) if line.startswith(skip[0]))
        stop = next(i for i in range(first, len(lines)) if lines[i].startswith(skip[1]))
        lines[first:stop] = ["\n"] * (stop - first)
    if until is not None:
        lines = lines[:next(i for i, line in enumerate(lines) if line.startswith(until))]
    text = "".join(lines)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # (upstream docstrings' "\s":
        warnings.simplefilter("ignore", DeprecationWarning)  # the warning before 3.12)
        code = compile(text, module.__file__, "exec")
    sys.modules[module.__name__] = module  # (dataclasses look their module up there)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@contextlib.contextmanager
def shared_random(lib: str, seed: int = 0, own_randn_like: bool = False):
    """Within the block, ``lib``'s random tensors come from ``numpy.random.default_rng(seed)``
    (see the module's note): the same numbers under dyngrad and under PyTorch.
    ``own_randn_like``: leave ``randn_like`` drawing from the library's own generator (a
    compiled step that calls it: a shared draw would be baked into the trace as a constant)."""
    t = library(lib)
    rng = np.random.default_rng(seed)
    dtypes = {t.float32: np.float32, t.float64: np.float64}

    def shape_of(size):
        return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) \
            else tuple(size)

    def factory(draw):
        def make(*size, dtype=None, requires_grad=False, **_):
            dtype = dtype or t.get_default_dtype()
            out = t.tensor(draw(shape_of(size)).astype(dtypes[dtype]), dtype=dtype)
            return out.requires_grad_(requires_grad)
        return make

    def fill(draw):
        def fill_(self, a=0.0, b=1.0, generator=None):
            with t.no_grad():
                self.copy_(t.tensor(draw(a, b, tuple(self.shape)), dtype=self.dtype))
            return self
        return fill_

    def multinomial(probs, num_samples, replacement=False, *, generator=None, out=None):
        # one draw per row by inverting the cumulative distribution at a uniform number
        if num_samples != 1:
            raise NotImplementedError("shared_random's multinomial draws one sample a row")
        p = np.asarray(numpy(probs), np.float64)
        cdf = np.cumsum(p, axis=-1)
        u = rng.random(p.shape[:-1] + (1,)) * cdf[..., -1:]
        return t.tensor(np.minimum((cdf <= u).sum(-1, keepdims=True), p.shape[-1] - 1))

    saved = {"randn": t.randn, "rand": t.rand, "multinomial": t.multinomial,
             "randn_like": t.randn_like}
    saved_methods = {"uniform_": t.Tensor.uniform_, "normal_": t.Tensor.normal_}
    t.randn = factory(rng.standard_normal)
    if not own_randn_like:
        t.randn_like = lambda x, *, dtype=None, **_: t.randn(*x.shape, dtype=dtype or x.dtype)
    t.rand = factory(rng.random)
    t.multinomial = multinomial
    t.Tensor.uniform_ = fill(lambda a, b, shape: rng.uniform(a, b, shape))
    t.Tensor.normal_ = fill(lambda mean, std, shape: rng.normal(mean, std, shape))
    try:
        yield rng
    finally:
        for k, v in saved.items():
            setattr(t, k, v)
        for k, v in saved_methods.items():
            setattr(t.Tensor, k, v)


def numpy(x) -> np.ndarray:
    """A tensor (either library's) or number as a numpy array."""
    if hasattr(x, "detach"):
        return x.detach().numpy().copy()
    return np.asarray(x)


def parameters(model) -> dict[str, np.ndarray]:
    return {k: numpy(v) for k, v in model.state_dict().items()}


COMPILED: list = []  # the compiled functions the quick forms made (the tests check each compiled)


def compile_if(lib: str, compiled: bool, fn: Callable) -> Callable:
    """``dg.compile(fn)`` for a compiled run, else ``fn``."""
    if not compiled:
        return fn
    COMPILED.append(library(lib).compile(fn))
    return COMPILED[-1]


def third_call(fn: Callable, *args):
    """``fn(*args)`` three times, the last result: a compiled function runs its first call
    eagerly and traces and compiles the second, so the third replays compiled code."""
    for _ in range(3):
        out = fn(*args)
    return out


# ---------------------------------------------------------------- the quick forms
# Each takes the library's name and whether to compile, and returns named arrays to compare.

def quick_mnist(lib, compiled):
    """pytorch/examples mnist: its ``Net`` and ``train``/``test`` for one short epoch on 16
    random 28×28 images (batches of 8), with ``Adadelta(lr=1.0)`` and ``StepLR`` as ``main``
    builds them, on ``device="cpu"`` (a string, which PyTorch accepts; ``main`` makes a
    ``torch.device``). Dropout is switched off from the test side (p = 0) so that PyTorch and
    dyngrad see the same network; the compiled run compiles the model's forward."""
    return mnist_like(lib, compiled, "examples_mnist", seed=1)


def mnist_like(lib, compiled, program, seed):
    t = library(lib)
    with shared_random(lib, seed) as rng:
        m = load(program, lib)
        x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
        y = rng.integers(0, 10, 16)
        device = "cpu"
        model = m.Net().to(device)
        model.dropout1.p = model.dropout2.p = 0.0
        forward = compile_if(lib, compiled, model)
        data = t.utils.data.TensorDataset(t.tensor(x), t.tensor(y))
        loader = t.utils.data.DataLoader(data, batch_size=8)
        optimizer = m.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = m.StepLR(optimizer, step_size=1, gamma=0.7)
        args = SimpleNamespace(log_interval=1, dry_run=False)
        m.train(args, model, device, loader, optimizer, 1)
        if program == "examples_mnist":
            m.test(model, device, loader)
        else:
            m.test(args, model, device, loader)
        scheduler.step()
        model.eval()
        return {"output": numpy(third_call(forward, t.tensor(x))), **parameters(model)}


def quick_regression(lib, compiled):
    """pytorch/examples regression: the script itself (it trains at module level until the
    smooth-L1 loss is below 1e-3, a few hundred small batches); then the learned ``fc`` on a
    batch of its own ``get_batch``, compiled or not. Against PyTorch only the targets and the
    convergence are compared (``REGRESSION_RUN``): float32 rounding decides in which batch the
    loss first drops below the threshold, and the weights learned by then differ."""
    with shared_random(lib, 2):
        m = load("examples_regression", lib)
        batch_x, _ = m.get_batch()
        fc = compile_if(lib, compiled, m.fc)
        return {"W_target": numpy(m.W_target), "b_target": numpy(m.b_target),
                "converged": np.asarray(m.loss < 1e-3), "batches": np.asarray(m.batch_idx),
                "loss": np.asarray(m.loss), "output": numpy(third_call(fc, batch_x)),
                **parameters(m.fc)}


REGRESSION_RUN = ("batches", "loss", "output", "weight", "bias")


def quick_mnist_rnn(lib, compiled):
    """pytorch/examples mnist_rnn: as mnist (its ``Net`` is an LSTM over the image's rows,
    BatchNorm1d, Dropout2d, two linear layers; its ``test`` takes ``args`` too)."""
    return mnist_like(lib, compiled, "examples_mnist_rnn", seed=7)


def small_graph(lib, rng, nodes=12, features=6, classes=3):
    """A random undirected graph with self-loops in the shape load_cora returns: features
    (rows scaled to sum 1), labels, a dense adjacency with ones, and D^-1/2 A D^-1/2 as the GCN
    uses it; index tensors for the training and validation nodes."""
    t = library(lib)
    x = rng.random((nodes, features)).astype(np.float32)
    x /= x.sum(1, keepdims=True)
    a = (rng.random((nodes, nodes)) < 0.3).astype(np.float32)
    a = np.maximum(np.maximum(a, a.T), np.eye(nodes, dtype=np.float32))
    d = 1 / np.sqrt(a.sum(1))
    return SimpleNamespace(
        features=t.tensor(x), labels=t.tensor(rng.integers(0, classes, nodes)),
        adj=t.tensor(a), adj_normalized=t.tensor((d[:, None] * a * d[None, :]).astype(np.float32)),
        idx_train=t.tensor(np.arange(0, 8)), idx_val=t.tensor(np.arange(8, 12)),
        features_dim=features, classes=classes)


def graph_network(lib, compiled, program, seed, make_model, adjacency):
    """Three epochs of the program's own ``train_iter`` (Adam with weight decay, NLLLoss, as
    its main) on :func:`small_graph`; then its ``test``, and the forward compiled or not."""
    t = library(lib)
    with shared_random(lib, seed) as rng:
        m = load(program, lib)
        g = small_graph(lib, rng)
        model = make_model(m, g)
        optimizer = m.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
        criterion = m.nn.NLLLoss()
        inputs = (g.features, getattr(g, adjacency))
        for epoch in range(3):
            m.train_iter(epoch + 1, model, optimizer, criterion, inputs, g.labels,
                         g.idx_train, g.idx_val, 1)
        loss, accuracy = m.test(model, criterion, inputs, g.labels, g.idx_val)
        forward = compile_if(lib, compiled, model)
        with t.no_grad():
            output = third_call(forward, *inputs)
        return {"test_loss": np.asarray(loss), "test_accuracy": np.asarray(accuracy),
                "output": numpy(output), **parameters(model)}


def quick_gcn(lib, compiled):
    """pytorch/examples gcn: ``GCN(6, 8, 3)`` without dropout on a 12-node graph (a dense
    normalised adjacency: its ``load_cora`` makes a sparse one)."""
    return graph_network(lib, compiled, "examples_gcn", 8,
                         lambda m, g: m.GCN(g.features_dim, 8, g.classes, True, 0.0),
                         "adj_normalized")


def quick_gat(lib, compiled):
    """pytorch/examples gat: ``GAT`` with 2 heads of 8, no dropout, on a 12-node graph."""
    return graph_network(lib, compiled, "examples_gat", 9,
                         lambda m, g: m.GAT(in_features=g.features_dim, n_hidden=8, n_heads=2,
                                            num_classes=g.classes, concat=False, dropout=0.0),
                         "adj")


def image_to_image(lib, compiled, program, seed, make_model, in_shape, out_shape):
    """Three Adam steps of an image-to-image network on one random image towards a random
    target with ``nn.MSELoss`` (the loss super_resolution's main uses); the compiled run
    compiles the step."""
    t = library(lib)
    with shared_random(lib, seed) as rng:
        m = load(program, lib)
        model = make_model(m)
        x = t.tensor(rng.standard_normal(in_shape).astype(np.float32))
        y = t.tensor(rng.standard_normal(out_shape).astype(np.float32))
        optimizer = t.optim.Adam(model.parameters(), lr=1e-3)
        criterion = t.nn.MSELoss()

        def step(x, y):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(x, y)) for _ in range(3)]
        return {"losses": np.array(losses), **parameters(model)}


def quick_super_resolution(lib, compiled):
    """pytorch/examples super_resolution/model.py: ``Net(upscale_factor=2)`` (four
    convolutions, orthogonal initialisation, PixelShuffle), 8×8 to 16×16, three Adam steps."""
    return image_to_image(lib, compiled, "examples_super_resolution_model", 14,
                          lambda m: m.Net(upscale_factor=2), (1, 1, 8, 8), (1, 1, 16, 16))


def quick_fast_neural_style(lib, compiled):
    """pytorch/examples fast_neural_style's ``TransformerNet`` (reflection-padded
    convolutions, InstanceNorm2d, residual blocks, nearest upsampling) on a 16×16 image,
    three Adam steps towards a random image (its main's loss needs VGG from torchvision)."""
    return image_to_image(lib, compiled, "examples_fast_neural_style_transformer_net", 15,
                          lambda m: m.TransformerNet(), (1, 3, 16, 16), (1, 3, 16, 16))


def sine_waves(n=4, length=16, period=20, seed=2):
    """The data of time_sequence_prediction/generate_sine_wave.py, smaller (it saves N=100
    waves of L=1000 to a file the script loads)."""
    rng = np.random.default_rng(seed)
    x = np.arange(length) + rng.integers(-4 * period, 4 * period, n).reshape(n, 1)
    return np.sin(x / 1.0 / period).astype("float64")


def quick_time_sequence(lib, compiled):
    """pytorch/examples time_sequence_prediction: its float64 two-layer ``Sequence`` LSTM on
    4 sine waves of 16 points, ``nn.MSELoss``: three forward/backward steps with SGD (the
    script's LBFGS is the separate form below), then a prediction 5 steps into the future. The
    compiled run compiles the training step."""
    t = library(lib)
    data = sine_waves()
    with shared_random(lib, 0):
        m = load("examples_time_sequence_prediction", lib)
        inp, target = t.from_numpy(data[1:, :-1]), t.from_numpy(data[1:, 1:])
        seq = m.Sequence()
        seq.double()
        criterion = m.nn.MSELoss()
        optimizer = m.optim.SGD(seq.parameters(), lr=0.5)

        def step(inp, target):
            optimizer.zero_grad()
            loss = criterion(seq(inp), target)
            loss.backward()
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(inp, target)) for _ in range(3)]
        with t.no_grad():
            pred = seq(t.from_numpy(data[:1, :-1]), future=5)
        return {"losses": np.array(losses), "prediction": numpy(pred), **parameters(seq)}


def quick_time_sequence_lbfgs(lib, compiled):
    """pytorch/examples time_sequence_prediction, the script's own loop: one
    ``optim.LBFGS(lr=0.8)`` step with its closure (LBFGS runs eagerly: not compiled)."""
    t = library(lib)
    data = sine_waves()
    with shared_random(lib, 0):
        m = load("examples_time_sequence_prediction", lib)
        inp, target = t.from_numpy(data[1:, :-1]), t.from_numpy(data[1:, 1:])
        seq = m.Sequence()
        seq.double()
        criterion = m.nn.MSELoss()
        optimizer = m.optim.LBFGS(seq.parameters(), lr=0.8, max_iter=4)

        def closure():
            optimizer.zero_grad()
            loss = criterion(seq(inp), target)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        return {"loss": numpy(loss), **parameters(seq)}


def quick_word_language_model(lib, compiled):
    """pytorch/examples word_language_model: ``RNNModel('LSTM', ntoken=20, ninp=8, nhid=8,
    nlayers=2, dropout=0)`` with ``init_hidden`` and three steps of main.py's ``train`` loop
    body (``zero_grad``, forward with the detached hidden state, ``NLLLoss``, backward,
    ``clip_grad_norm_(0.25)``, ``p.data.add_(p.grad, alpha=-lr)``, lr 20) on a (5, 3) batch of
    tokens; the compiled run compiles that step."""
    t = library(lib)
    with shared_random(lib, 3) as rng:
        m = load("examples_word_language_model", lib)
        model = m.RNNModel("LSTM", 20, 8, 8, 2, dropout=0.0)
        tokens = rng.integers(0, 20, (6, 3))
        data, targets = t.tensor(tokens[:-1].copy()), t.tensor(tokens[1:].reshape(-1).copy())
        criterion = m.nn.NLLLoss()

        def step(data, targets, hidden):
            model.zero_grad()
            hidden = tuple(h.detach() for h in hidden)  # (main.py's repackage_hidden)
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            t.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20)
            return loss, hidden

        step = compile_if(lib, compiled, step)
        hidden, losses = model.init_hidden(3), []
        for _ in range(3):
            loss, hidden = step(data, targets, hidden)
            losses.append(numpy(loss))
        return {"losses": np.array(losses), **parameters(model)}


def quick_word_language_model_transformer(lib, compiled):
    """pytorch/examples word_language_model's ``TransformerModel(ntoken=20, ninp=8, nhead=2,
    nhid=16, nlayers=2, dropout=0)`` (an ``nn.Transformer`` subclass with its own causal
    mask, ``log(tril(ones))``) and three steps of main.py's ``train`` loop body for it. The
    model runs in eval mode: ``nn.Transformer``'s own layers keep their default dropout 0.1,
    which the example does not pass on. Its parameters are set from one draw each, in
    state-dict order, since the libraries' initialisers draw differently."""
    t = library(lib)
    with shared_random(lib, 4) as rng:
        m = load("examples_word_language_model", lib)
        model = m.TransformerModel(20, 8, 2, 16, 2, dropout=0.0).eval()
        with t.no_grad():
            for p in model.parameters():
                p.copy_(t.tensor(rng.uniform(-0.3, 0.3, tuple(p.shape)).astype(np.float32)))
        tokens = rng.integers(0, 20, (6, 3))
        data, targets = t.tensor(tokens[:-1].copy()), t.tensor(tokens[1:].reshape(-1).copy())
        criterion = m.nn.NLLLoss()

        def step(data, targets):
            model.zero_grad()
            loss = criterion(model(data).view(-1, 20), targets)
            loss.backward()
            t.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20)
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(data, targets)) for _ in range(3)]
        return {"losses": np.array(losses), **parameters(model)}


def quick_nanogpt(lib, compiled):
    """nanoGPT model.py: a 2-layer, 2-head, 32-wide GPT (block 16, vocabulary 32, no dropout),
    its ``configure_optimizers`` (AdamW with and without weight decay), three training steps
    on random tokens; the compiled run compiles the step."""
    t = library(lib)
    with shared_random(lib, 4) as rng:
        m = load("nanogpt_model", lib)
        config = m.GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=32,
                             dropout=0.0, bias=True)
        model = m.GPT(config)
        tokens = rng.integers(0, 32, (2, 17))  # (contiguous x and y, as its train.py makes)
        x, y = t.tensor(tokens[:, :-1].copy()), t.tensor(tokens[:, 1:].copy())
        optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")

        def step(x, y):
            optimizer.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(x, y)) for _ in range(3)]
        # (parameters only: without F.scaled_dot_product_attention the model keeps a causal
        # mask buffer that PyTorch's flash path does not have)
        return {"losses": np.array(losses),
                **{k: numpy(v) for k, v in model.named_parameters()}}


def quick_micrograd(lib, compiled):
    """micrograd's tests: each checks the library's values and gradients against micrograd's
    own scalar engine (float64) and asserts they agree; they return nothing to compare."""
    m = load("micrograd_test_engine", lib)
    m.test_sanity_check()
    m.test_more_ops()
    return {}


def quick_polynomial_optim(lib, compiled):
    """pytorch/tutorials polynomial_optim: the script (2000 SGD steps at module level); then
    its model on its inputs, compiled or not."""
    with shared_random(lib, 5):
        m = load("tutorials_polynomial_optim", lib)
        model = compile_if(lib, compiled, m.model)
        layer = m.model[0]
        return {"loss": numpy(m.loss), "output": numpy(third_call(model, m.xx)),
                "weight": numpy(layer.weight), "bias": numpy(layer.bias)}


def quick_polynomial_autograd(lib, compiled):
    """pytorch/tutorials polynomial_autograd: the script (2000 manual gradient steps on four
    scalar tensors, at module level); then its polynomial on its inputs."""
    with shared_random(lib, 6):
        m = load("tutorials_polynomial_autograd", lib)

        def poly(x):
            return m.a + m.b * x + m.c * x ** 2 + m.d * x ** 3

        poly = compile_if(lib, compiled, poly)
        return {"loss": numpy(m.loss), "output": numpy(third_call(poly, m.x)),
                **{k: numpy(getattr(m, k)) for k in "abcd"}}


def quick_polynomial_nn(lib, compiled):
    """pytorch/tutorials polynomial_nn: the script (2000 manual updates of a Sequential's
    parameters, at module level); then its model on its inputs, compiled or not."""
    with shared_random(lib, 10):
        m = load("tutorials_polynomial_nn", lib)
        model = compile_if(lib, compiled, m.model)
        return {"loss": numpy(m.loss), "output": numpy(third_call(model, m.xx)),
                **parameters(m.model)}


def quick_polynomial_module(lib, compiled):
    """pytorch/tutorials polynomial_module: the script (its ``Polynomial3`` module, 2000 SGD
    steps at module level); then the model on its inputs, compiled or not."""
    with shared_random(lib, 11):
        m = load("tutorials_polynomial_module", lib)
        model = compile_if(lib, compiled, m.model)
        return {"loss": numpy(m.loss), "output": numpy(third_call(model, m.x)),
                **parameters(m.model)}


def quick_polynomial_custom_function(lib, compiled):
    """pytorch/tutorials polynomial_custom_function: the script (a custom
    ``autograd.Function``, 2000 manual steps at module level); then its polynomial on its
    inputs through the Function, compiled or not."""
    with shared_random(lib, 12):
        m = load("tutorials_polynomial_custom_function", lib)

        def poly(x):
            return m.a + m.b * m.LegendrePolynomial3.apply(m.c + m.d * x)

        poly = compile_if(lib, compiled, poly)
        return {"loss": numpy(m.loss), "output": numpy(third_call(poly, m.x)),
                **{k: numpy(getattr(m, k)) for k in "abcd"}}


def quick_bilstm_crf(lib, compiled):
    """pytorch/tutorials nlp/advanced_tutorial (Bi-LSTM CRF): its definitions and toy data
    (the script up to its model; its 300 epochs at module level take 26 s under dyngrad), then
    three epochs of its training loop body on both sentences (``zero_grad``,
    ``neg_log_likelihood`` — a bidirectional LSTM and the CRF's forward algorithm, Python loops
    over the words and tags with ``max`` and ``log_sum_exp`` — ``backward``, SGD with weight
    decay), then its Viterbi decode (``model(sentence)`` under ``no_grad``, as the script
    checks its predictions). Each step draws the LSTM's initial state with ``torch.randn``
    (``init_hidden``). The compiled run compiles the training step. (Not the decode: its
    ``init_hidden`` draws come from :func:`shared_random`, numpy numbers that a trace bakes in
    as constants, so a compiled decode would replay the traced call's draws; dyngrad's own
    ``randn`` stays a random draw in compiled code.)"""
    t = library(lib)
    with shared_random(lib, 16):
        m = load("tutorials_nlp_advanced", lib, until="model = BiLSTM_CRF(")
        model = m.BiLSTM_CRF(len(m.word_to_ix), m.tag_to_ix, m.EMBEDDING_DIM, m.HIDDEN_DIM)
        optimizer = m.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)

        def step(sentence_in, targets):
            model.zero_grad()
            loss = model.neg_log_likelihood(sentence_in, targets)
            loss.backward()
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = []
        for _ in range(3):
            for sentence, tags in m.training_data:
                sentence_in = m.prepare_sequence(sentence, m.word_to_ix)
                targets = t.tensor([m.tag_to_ix[tag] for tag in tags], dtype=t.long)
                losses.append(numpy(step(sentence_in, targets)))
        with t.no_grad():
            score, path = model(m.prepare_sequence(m.training_data[0][0], m.word_to_ix))
        return {"losses": np.array(losses), "path_score": numpy(score),
                "path": np.array(path), **parameters(model)}


def quick_lstm_tagger(lib, compiled):
    """pytorch/tutorials nlp/sequence_models_tutorial: the script (an LSTM stepped word by
    word, then its ``LSTMTagger`` trained 300 epochs with SGD on two sentences, at module
    level); then the tagger on its first sentence under ``no_grad``, compiled or not, three
    times from a fresh ``init_hidden`` (its forward stores the LSTM's state in
    ``self.hidden``, and the next call starts from it)."""
    t = library(lib)
    with shared_random(lib, 17):
        m = load("tutorials_nlp_sequence_models", lib)
        forward = compile_if(lib, compiled, m.model)
        m.model.hidden = m.model.init_hidden()
        with t.no_grad():
            scores = third_call(forward, m.inputs)
        return {"out": numpy(m.out), "h": numpy(m.hidden[0]), "c": numpy(m.hidden[1]),
                "loss": numpy(m.loss), "tag_scores": numpy(m.tag_scores),
                "scores": numpy(scores), "state": numpy(m.model.hidden[0]),
                **parameters(m.model)}


def quick_ngram(lib, compiled):
    """pytorch/tutorials nlp/word_embeddings_tutorial: the script (its
    ``NGramLanguageModeler`` trained 10 epochs with SGD on the trigrams of a sonnet, one
    trigram a step, at module level); then the model on a context, compiled or not."""
    t = library(lib)
    with shared_random(lib, 18):
        m = load("tutorials_nlp_word_embeddings", lib)
        forward = compile_if(lib, compiled, m.model)
        context = t.tensor([3, 5], dtype=t.long)
        return {"losses": np.array([numpy(x) for x in m.losses]),
                "hello_embed": numpy(m.hello_embed),
                "log_probs": numpy(third_call(forward, context)), **parameters(m.model)}


def quick_bow_classifier(lib, compiled):
    """pytorch/tutorials nlp/deep_learning_tutorial: the script (affine maps, nonlinearities,
    softmax, then its ``BoWClassifier`` trained 100 epochs with SGD and ``NLLLoss``, at module
    level); then the classifier on its last bag-of-words vector, compiled or not."""
    with shared_random(lib, 19):
        m = load("tutorials_nlp_deep_learning", lib)
        forward = compile_if(lib, compiled, m.model)
        return {"test_log_probs": numpy(m.log_probs), "loss": numpy(m.loss),
                "log_probs": numpy(third_call(forward, m.bow_vec)), **parameters(m.model)}


def quick_lenet(lib, compiled):
    """pytorch/tutorials blitz/neural_networks_tutorial: the script (LeNet on a random 32×32
    image: ``backward`` with random gradients, ``MSELoss`` against ``arange(1, 11)``, one SGD
    step, at module level); then the network on the image, compiled or not."""
    with shared_random(lib, 20):
        m = load("tutorials_blitz_neural_networks", lib)
        forward = compile_if(lib, compiled, m.net)
        grads = {f"{k}.grad": numpy(p.grad) for k, p in m.net.named_parameters()}
        return {"out": numpy(m.out), "loss": numpy(m.loss),
                "output": numpy(third_call(forward, m.input)), **grads,
                **parameters(m.net)}


def quick_mingpt(lib, compiled):
    """karpathy/minGPT mingpt/model.py: ``GPT`` with 2 layers, 2 heads, 32 channels,
    vocabulary 16, block 8, no dropout; its ``configure_optimizers`` (AdamW, weight decay 0.1
    on the Linear weights only, the defaults of its trainer), three steps of its trainer's loop
    body (``model(x, y)``, ``zero_grad(set_to_none=True)``, backward, ``clip_grad_norm_(1.0)``,
    step) on random tokens; then ``generate`` 5 tokens greedily and 5 sampled
    (``multinomial`` draws from :func:`shared_random`). The compiled run compiles the step."""
    t = library(lib)
    with shared_random(lib, 21) as rng:
        m = load("mingpt_model", lib)
        config = m.GPT.get_default_config()
        config.model_type = None
        config.n_layer, config.n_head, config.n_embd = 2, 2, 32
        config.vocab_size, config.block_size = 16, 8
        config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = 0.0
        model = m.GPT(config)
        train_config = m.CN(learning_rate=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        optimizer = model.configure_optimizers(train_config)
        tokens = rng.integers(0, 16, (2, 9))
        x, y = t.tensor(tokens[:, :-1].copy()), t.tensor(tokens[:, 1:].copy())

        def step(x, y):
            logits, loss = model(x, y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            t.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(x, y)) for _ in range(3)]
        model.eval()
        greedy = model.generate(x[:, :3], 5, do_sample=False)
        sampled = model.generate(x[:, :3], 5, do_sample=True, top_k=4)
        return {"losses": np.array(losses), "greedy": numpy(greedy), "sampled": numpy(sampled),
                **{k: numpy(v) for k, v in model.named_parameters()}}


def quick_cifar_resnet(lib, compiled):
    """kuangliu/pytorch-cifar models/resnet.py: ``ResNet18()`` (BasicBlocks, stride-2
    convolutions, BatchNorm, 1×1 shortcut convolutions) on two random 32×32 images: three
    steps of its main.py's training loop body (SGD with momentum 0.9 and weight decay 5e-4,
    ``nn.CrossEntropyLoss``), then the network in eval mode (running statistics). The
    compiled run compiles the step. The learning rate is 0.01, not main.py's 0.1: at 0.1 the
    second step turns float32 rounding (5e-6 in the first step's gradients) into 1% in some
    weights, in PyTorch against itself as much as against dyngrad (in float64 the two agree
    to 1e-14 at lr 0.1)."""
    t = library(lib)
    with shared_random(lib, 22) as rng:
        m = load("pytorch_cifar_resnet", lib)
        net = m.ResNet18()
        x = t.tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
        y = t.tensor(rng.integers(0, 10, 2))
        criterion = t.nn.CrossEntropyLoss()
        optimizer = t.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step(inputs, targets):
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            return loss, outputs.max(1)[1]

        step = compile_if(lib, compiled, step)
        net.train()
        results = [step(x, y) for _ in range(3)]
        net.eval()
        with t.no_grad():
            output = net(x)
        return {"losses": np.array([numpy(loss) for loss, _ in results]),
                "predicted": np.array([numpy(p) for _, p in results]),
                "eval_output": numpy(output), **parameters(net)}


def quick_dcgan(lib, compiled):
    """pytorch/examples dcgan: the script with its argument parsing and dataset lines left out
    (the harness supplies ``opt`` with ``--nz 8 --ngf 4 --ndf 4 --batchSize 2``, ``nc = 3``
    and the CPU device) and stopped before its training loop: its ``weights_init``,
    ``Generator`` (ConvTranspose2d with stride 2, BatchNorm2d, ReLU, Tanh), ``Discriminator``
    (strided Conv2d, LeakyReLU in place, Sigmoid), ``BCELoss``, ``fixed_noise`` and its two
    Adam optimizers run as written. Then the generator on ``fixed_noise`` and three
    iterations of its loop body (a discriminator update on a random 64×64 batch and on a fake
    one, a generator update; ``errD``, ``errG`` and the ``.item()`` means it prints); the
    compiled run compiles the loop body. (The body returns ``errD`` and ``errG`` detached: a
    compiled function that returns a tensor whose graph it ran backward through falls back to
    eager, see STATUS.md.)"""
    t = library(lib)
    opt = SimpleNamespace(netG="", netD="", batchSize=2, lr=0.0002, beta1=0.5)
    namespace = {"opt": opt, "device": t.device("cpu"), "ngpu": 1, "nz": 8, "ngf": 4, "ndf": 4,
                 "nc": 3}
    with shared_random(lib, 23) as rng:
        m = load("examples_dcgan", lib, skip=("parser = argparse", "# custom weights init"),
                 namespace=namespace, until="if opt.dry_run:")
        netD, netG, criterion, device = m.netD, m.netG, m.criterion, m.device
        real_label, fake_label, nz = m.real_label, m.fake_label, m.nz

        def iteration(real_cpu, noise):
            # (the body of its ``for i, data in enumerate(dataloader, 0)``, without the prints
            # and image files)
            netD.zero_grad()
            batch_size = real_cpu.size(0)
            label = t.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            m.optimizerD.step()
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            m.optimizerG.step()
            return errD.detach(), errG.detach(), D_x, D_G_z1, D_G_z2

        with t.no_grad():
            fake = netG(m.fixed_noise)  # (as initialised by weights_init)
        iteration = compile_if(lib, compiled, iteration)
        stats = []
        for _ in range(3):
            real = t.tensor(rng.uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32))
            noise = t.randn(2, nz, 1, 1, device=device)
            stats.append([float(numpy(v)) for v in iteration(real, noise)])
        return {"stats": np.array(stats), "fake": numpy(fake),
                **{f"G.{k}": v for k, v in parameters(netG).items()},
                **{f"D.{k}": v for k, v in parameters(netD).items()}}


def mnist_like_images(lib, rng, batches, batch_size):
    """A DataLoader over random 28×28 images in [0, 1] (what ``transforms.ToTensor`` makes of
    MNIST) with random labels."""
    t = library(lib)
    x = rng.random((batches * batch_size, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batches * batch_size)
    data = t.utils.data.TensorDataset(t.tensor(x), t.tensor(y))
    return t.utils.data.DataLoader(data, batch_size=batch_size)


VAE_LAYERS = [f"{layer}.{p}" for layer in ["fc1", "fc21", "fc22", "fc3", "fc4"]
              for p in ["weight", "bias"]]


def vae_namespace(lib, rng, saved):
    """What vae/main.py's argument parsing and MNIST loaders would have made, smaller; its
    ``save_image`` records the images instead of writing files."""
    t = library(lib)
    args = SimpleNamespace(batch_size=4, epochs=1, no_accel=True, seed=1, log_interval=1)
    return {"args": args, "device": t.device("cpu"),
            "train_loader": mnist_like_images(lib, rng, 2, 4),
            "test_loader": mnist_like_images(lib, rng, 1, 4),
            "save_image": lambda tensor, filename, **_: saved.append(numpy(tensor))}


def quick_vae(lib, compiled):
    """pytorch/examples vae: the script with its argument parsing and MNIST loaders left out
    (the harness supplies ``args``, two training batches and one test batch of four random
    images, and a ``save_image`` that records its image); its ``VAE``, Adam optimizer and
    ``loss_function`` (binary cross-entropy plus the KL divergence) as written. Then its own
    ``train(1)`` and ``test(1)``, and ``decode`` of a sample as its main does. The
    reparameterisation's ``torch.randn_like`` draws from :func:`shared_random`, so PyTorch sees
    the same noise; not compiled (a shared draw would be baked into the trace as a constant:
    ``examples_vae:seeded`` compiles the step with the library's own generator)."""
    t = library(lib)
    saved = []
    with shared_random(lib, 24) as rng:
        m = load("examples_vae", lib, skip=("parser = argparse", "class VAE"),
                 namespace=vae_namespace(lib, rng, saved))
        m.train(1)
        m.test(1)
        with t.no_grad():
            sample = m.model.decode(t.randn(64, 20).to(m.device)).cpu()
        return {"comparison": saved[0], "sample": numpy(sample), **parameters(m.model)}


def quick_vae_seeded(lib, compiled):
    """pytorch/examples vae with the library's own generator (``torch.manual_seed(1)``, the
    script's ``--seed``) behind ``randn_like``: three steps of its ``train`` loop body
    (``zero_grad``, ``model(data)``, ``loss_function``, backward, Adam) on one batch of four
    random images; the compiled run compiles that step (a compiled call draws the same numbers
    as an eager one). PyTorch draws other numbers from its seed, so against PyTorch only the
    encoder's first ``mu`` and ``logvar`` (before any noise) are compared; the losses and the
    trained weights are compared compiled against eager only."""
    t = library(lib)
    with shared_random(lib, 25, own_randn_like=True) as rng:
        m = load("examples_vae", lib, skip=("parser = argparse", "class VAE"),
                 namespace=vae_namespace(lib, rng, []))
        data, _ = next(iter(m.train_loader))
        with t.no_grad():
            mu, logvar = m.model.encode(data.view(-1, 784))
        t.manual_seed(1)

        def step(data):
            m.optimizer.zero_grad()
            recon_batch, mu, logvar = m.model(data)
            loss = m.loss_function(recon_batch, data, mu, logvar)
            loss.backward()
            m.optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(data)) for _ in range(3)]
        return {"mu": numpy(mu), "logvar": numpy(logvar), "losses": np.array(losses),
                **parameters(m.model)}


# torchvision 0.10.0's model files, each ported on its own (their one relative import, of
# load_state_dict_from_url, serves only pretrained=True and is left out).

def image_classifier(lib, compiled, program, seed, make_model, shape, float64=False,
                     loss_of=None, lr=0.01, train=None):
    """Three steps of the training loop body of torchvision's references/classification
    (``zero_grad``, forward, ``nn.CrossEntropyLoss``, backward, SGD with momentum 0.9 and
    weight decay 1e-4, at ``lr`` 0.01) on a batch of random images, then the network in eval mode
    (running statistics). Dropout is switched off from the test side (p = 0), as for mnist.
    ``float64``: the model and data in float64 (``model.double()``), for networks where
    BatchNorm over a batch of two turns float32 rounding into differences beyond the
    tolerance in PyTorch against itself (see STATUS.md). ``loss_of(criterion, output, y)``:
    the loss of a model whose training output is not a tensor; ``train(model)``: puts it in
    training mode (``model.train()`` by default). The compiled run compiles the step."""
    t = library(lib)
    with shared_random(lib, seed) as rng:
        m = load(program, lib)
        model = make_model(m)
        for module in model.modules():
            if isinstance(module, t.nn.Dropout):
                module.p = 0.0
        dtype = np.float64 if float64 else np.float32
        if float64:
            model.double()
        x = t.tensor(rng.standard_normal(shape).astype(dtype))
        y = t.tensor(rng.integers(0, 10, shape[0]))
        criterion = t.nn.CrossEntropyLoss()
        optimizer = t.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        loss_of = loss_of or (lambda criterion, output, target: criterion(output, target))

        def step(image, target):
            optimizer.zero_grad()
            output = model(image)
            loss = loss_of(criterion, output, target)
            loss.backward()
            optimizer.step()
            return loss

        step = compile_if(lib, compiled, step)
        (train or (lambda model: model.train()))(model)
        losses = [numpy(step(x, y)) for _ in range(3)]
        model.eval()
        with t.no_grad():
            output = model(x)
        return {"losses": np.array(losses), "eval_output": numpy(output), **parameters(model)}


def quick_mobilenetv2(lib, compiled):
    """torchvision's ``MobileNetV2(num_classes=10, width_mult=0.25)`` (``_make_divisible``
    channel counts, depthwise 3×3 convolutions with ``groups``, ReLU6, inverted residuals)
    on four 48×48 images, in float64: BatchNorm over the few values of its last blocks
    amplifies rounding, so that in float32 PyTorch differs from its own float64 result by
    1e2 times the float32 tolerance after three steps (dyngrad as much); in float64 the two
    libraries agree to 1e-11."""
    return image_classifier(lib, compiled, "torchvision_mobilenetv2", 30,
                            lambda m: m.MobileNetV2(num_classes=10, width_mult=0.25),
                            (4, 3, 48, 48), float64=True)


def quick_mnasnet(lib, compiled):
    """torchvision's ``MNASNet(0.5, num_classes=10)`` (its ``_stack`` of inverted residuals,
    BatchNorm with momentum 3e-4, kaiming_uniform_ with ``nonlinearity="sigmoid"``) on four
    48×48 images at lr 0.001, in float64 for the reason given for MobileNetV2 (and compared
    at rtol 1e-7: its 17 BatchNorms still carry the rounding to 1e-10); then a round trip of its
    ``state_dict`` through ``load_state_dict``, which calls its own
    ``_load_from_state_dict`` (checking the saved ``version`` metadata)."""
    t = library(lib)
    out = image_classifier(lib, compiled, "torchvision_mnasnet", 31,
                           lambda m: m.MNASNet(0.5, num_classes=10), (4, 3, 48, 48),
                           float64=True, lr=0.001)
    with shared_random(lib, 32):
        m = load("torchvision_mnasnet", lib)
        a, b = m.MNASNet(0.5, num_classes=10), m.MNASNet(0.5, num_classes=10)
        b.load_state_dict(a.state_dict())
        with t.no_grad():
            x = t.ones(1, 3, 32, 32)
            out["reloaded"] = numpy(a.eval()(x) - b.eval()(x))
    return out


def quick_shufflenetv2(lib, compiled):
    """torchvision's ``ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=10)``
    (``channel_shuffle``: ``view``, ``torch.transpose``, ``contiguous``; ``chunk``; the
    global pool as ``x.mean([2, 3])``) on four 64×64 images (at two 32×32 ones, its last
    BatchNorms see two values each and amplify float32 rounding beyond the tolerance)."""
    return image_classifier(lib, compiled, "torchvision_shufflenetv2", 33,
                            lambda m: m.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128],
                                                     num_classes=10), (4, 3, 64, 64))


def quick_squeezenet(lib, compiled):
    """torchvision's ``SqueezeNet("1_1", num_classes=10)`` (Fire modules concatenating 1×1
    and 3×3 expansions, max pooling with ``ceil_mode=True``, ``init.kaiming_uniform_`` and a
    final convolution initialised with ``init.normal_``) on two 32×32 images."""
    return image_classifier(lib, compiled, "torchvision_squeezenet", 34,
                            lambda m: m.SqueezeNet("1_1", num_classes=10), (2, 3, 32, 32))


def quick_densenet(lib, compiled):
    """torchvision's ``DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
    bn_size=2, num_classes=10, memory_efficient=True)``: each dense layer's bottleneck runs
    through ``torch.utils.checkpoint.checkpoint`` (reentrant, with PyTorch's warning that
    ``use_reentrant`` was not passed), guarded by ``torch.jit.is_scripting()``; its layers
    are ``torch.jit.unused`` and ``torch.jit._overload_method``-decorated. Two 32×32
    images."""
    return image_classifier(
        lib, compiled, "torchvision_densenet", 35,
        lambda m: m.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                             bn_size=2, num_classes=10, memory_efficient=True),
        (2, 3, 32, 32))


def googlenet_loss(criterion, outputs, target):
    """GoogLeNet's training loss with its two auxiliary classifiers weighted 0.3 (the
    paper's), read from the ``GoogLeNetOutputs`` namedtuple its training forward returns."""
    return criterion(outputs.logits, target) + 0.3 * (
        criterion(outputs.aux_logits1, target) + criterion(outputs.aux_logits2, target))


def quick_googlenet(lib, compiled):
    """torchvision's ``GoogLeNet(num_classes=10, aux_logits=True, transform_input=True,
    init_weights=False)`` (Inception blocks, max pooling with ``ceil_mode=True``, the two
    auxiliary classifiers with ``adaptive_avg_pool2d``, a ``namedtuple`` output in training
    and plain logits in eval) on four 32×32 images, in float64 (its last Inception blocks
    normalise 1×1 maps over the batch, which turns float32 rounding into 1e-4 in PyTorch
    against itself; in float64 the libraries agree to 1e-10). ``init_weights=False``: its own
    initialisation draws 10 million numbers from ``scipy.stats.truncnorm`` (3 s, in PyTorch
    too; the FutureWarning it gives says as much), so the layers keep their defaults. The
    auxiliary classifiers run in eval mode: each applies ``F.dropout(x, 0.7,
    training=self.training)``, whose draws differ between the libraries (a module's ``p``
    cannot be set to 0 from outside)."""
    def train(model):
        model.train()
        model.aux1.eval()
        model.aux2.eval()

    return image_classifier(
        lib, compiled, "torchvision_googlenet", 36,
        lambda m: m.GoogLeNet(num_classes=10, aux_logits=True, transform_input=True,
                              init_weights=False), (4, 3, 32, 32), float64=True,
        loss_of=googlenet_loss, train=train)


def quick_resnext(lib, compiled):
    """torchvision's ``ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8,
    zero_init_residual=True, replace_stride_with_dilation=[False, True, True])``: a ResNeXt
    of grouped 3×3 convolutions whose last two stages dilate instead of striding, its last
    BatchNorm in each block initialised to zero; two 16×16 images."""
    return image_classifier(
        lib, compiled, "torchvision_resnet", 37,
        lambda m: m.ResNet(m.Bottleneck, [1, 1, 1, 1], num_classes=10, groups=4,
                           width_per_group=8, zero_init_residual=True,
                           replace_stride_with_dilation=[False, True, True]), (2, 3, 16, 16))


# d2l-ai/d2l-en's library d2l/torch.py (Dive into Deep Learning 0.17.6): the functions and
# classes its chapters save with #@save, run by the quick forms as the chapters run them.

class AnimatorRecord:
    """Stands in for d2l's ``Animator`` (which draws with IPython's display, not installed):
    records the points the training functions plot."""

    def __init__(self, **kwargs):
        self.points = []

    def add(self, x, y):
        self.points.extend([x, *(float(v) for v in y if v is not None)])


def quick_d2l_train_ch6(lib, compiled):
    """d2l's ``train_ch6`` (the LeNet chapter's training function: ``net.apply`` with
    ``xavier_uniform_``, ``try_gpu``, SGD, ``nn.CrossEntropyLoss``, its ``Accumulator``,
    ``accuracy`` — ``argmax``, ``astype`` as ``Tensor.type`` — and ``evaluate_accuracy_gpu``)
    for one epoch on a small ResNet of its ``Residual`` blocks (as the ResNet chapter stacks
    them, narrower: 1→8 channels with a 1×1 shortcut at stride 2, then 8→8), with ten random
    16×16 images in batches of two (``train_ch6`` plots every fifth of an epoch, so it needs
    five) from its own ``load_array`` (``is_train=False``: in order, since a shuffle draws
    from each library's own generator). Its ``Animator`` is replaced by
    :class:`AnimatorRecord` from the test side; the recorded losses and accuracies are
    compared. The compiled run compiles the trained network's forward (``train_ch6`` is one
    loop with its prints and timer)."""
    t = library(lib)
    with shared_random(lib, 40) as rng:
        m = load("d2l_torch", lib)
        animators = []
        m.Animator = lambda **kwargs: animators.append(AnimatorRecord(**kwargs)) or animators[-1]
        x = t.tensor(rng.standard_normal((10, 1, 16, 16)).astype(np.float32))
        y = t.tensor(rng.integers(0, 10, 10))
        train_iter = m.load_array((x, y), 2, is_train=False)
        test_iter = m.load_array((x[:4], y[:4]), 2, is_train=False)
        nn = m.nn
        net = nn.Sequential(m.Residual(1, 8, use_1x1conv=True, strides=2), m.Residual(8, 8),
                            nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(8, 10))
        m.train_ch6(net, train_iter, test_iter, 1, 0.1, m.try_gpu())
        net.eval()
        forward = compile_if(lib, compiled, net)
        with t.no_grad():
            output = third_call(forward, x[:2])
        return {"animator": np.array(animators[0].points), "output": numpy(output),
                **parameters(net)}


def d2l_bert_batch(lib, rng, batch=4, length=10, vocab=20, predictions=3):
    """A batch as d2l's ``_WikiTextDataset`` pads them: token and segment ids, float32 valid
    lengths, the positions to predict with their weights (0 for padding) and labels, and the
    next-sentence labels."""
    t = library(lib)
    valid = rng.integers(6, length + 1, batch)
    tokens = rng.integers(0, vocab, (batch, length))
    segments = (np.arange(length)[None, :] >= valid[:, None] // 2).astype(np.int64)
    positions = np.stack([rng.choice(np.arange(1, v), predictions, replace=False)
                          for v in valid])
    weights = np.ones((batch, predictions), np.float32)
    weights[:, -1] = rng.integers(0, 2, batch)
    return (t.tensor(tokens), t.tensor(segments), t.tensor(valid.astype(np.float32)),
            t.tensor(positions), t.tensor(weights),
            t.tensor(rng.integers(0, vocab, (batch, predictions))),
            t.tensor(rng.integers(0, 2, batch)))


def quick_d2l_bert(lib, compiled):
    """d2l's ``BERTModel`` (``BERTEncoder`` of ``EncoderBlock``s: ``MultiHeadAttention`` with
    ``transpose_qkv``, ``DotProductAttention`` and ``masked_softmax`` over float valid
    lengths — ``repeat_interleave`` and ``sequence_mask``'s ``X[~mask] = value`` —,
    ``AddNorm``, ``PositionWiseFFN``; a learnable position embedding read through ``.data``;
    ``MaskLM`` gathering ``X[batch_idx, pred_positions]``; ``NextSentencePred``), 16 wide with
    2 heads and 2 layers on a vocabulary of 20, and three steps of the BERT chapter's
    ``train_bert`` loop body (Adam, ``nn.CrossEntropyLoss``, its ``_get_batch_loss_bert``)
    on one batch of four sequences of ten tokens, then the encoding of the batch. The
    compiled run compiles the step."""
    t = library(lib)
    with shared_random(lib, 41) as rng:
        m = load("d2l_torch", lib)
        vocab_size = 20
        net = m.BERTModel(vocab_size, num_hiddens=16, norm_shape=[16], ffn_num_input=16,
                          ffn_num_hiddens=32, num_heads=2, num_layers=2, dropout=0.0,
                          max_len=16, key_size=16, query_size=16, value_size=16,
                          hid_in_features=16, mlm_in_features=16, nsp_in_features=16)
        loss = t.nn.CrossEntropyLoss()
        trainer = t.optim.Adam(net.parameters(), lr=1e-3)
        batch = d2l_bert_batch(lib, rng)

        def step(*batch):
            trainer.zero_grad()
            mlm_l, nsp_l, total = m._get_batch_loss_bert(net, loss, vocab_size, *batch)
            total.backward()
            trainer.step()
            return mlm_l, nsp_l

        step = compile_if(lib, compiled, step)
        losses = [[numpy(v) for v in step(*batch)] for _ in range(3)]
        with t.no_grad():
            encoded, _, nsp = net(batch[0], batch[1], batch[2])
        return {"losses": np.array(losses), "encoded": numpy(encoded), "nsp": numpy(nsp),
                **parameters(net)}


def quick_d2l_transformer_encoder(lib, compiled):
    """d2l's ``TransformerEncoder`` (``Embedding`` scaled by ``math.sqrt``, the sinusoidal
    ``PositionalEncoding`` built with ``torch.pow(10000, ...)`` and strided assignments, and
    its ``EncoderBlock``s with valid lengths) under a linear layer, trained as the seq2seq
    chapter's ``train_seq2seq`` trains: its ``xavier_init_weights`` through ``net.apply``,
    Adam, ``MaskedSoftmaxCELoss`` (a ``CrossEntropyLoss`` subclass that sets
    ``reduction='none'`` and masks with ``sequence_mask``), ``l.sum().backward()`` and its
    ``grad_clipping(net, 1)``; three steps on four sequences of eight tokens, labelling each
    token. The compiled run compiles the step."""
    t = library(lib)
    with shared_random(lib, 42) as rng:
        m = load("d2l_torch", lib)

        class Tagger(t.nn.Module):  # (the harness's: an encoder and a dense layer)
            def __init__(self):
                super().__init__()
                self.encoder = m.TransformerEncoder(
                    vocab_size=12, key_size=16, query_size=16, value_size=16,
                    num_hiddens=16, norm_shape=[16], ffn_num_input=16, ffn_num_hiddens=32,
                    num_heads=4, num_layers=2, dropout=0.0)
                self.dense = t.nn.Linear(16, 12)

            def forward(self, X, valid_lens):
                return self.dense(self.encoder(X, valid_lens))

        net = Tagger()
        net.apply(lambda module: t.nn.init.xavier_uniform_(module.weight)
                  if type(module) is t.nn.Linear else None)
        optimizer = t.optim.Adam(net.parameters(), lr=0.005)
        loss = m.MaskedSoftmaxCELoss()
        X = t.tensor(rng.integers(0, 12, (4, 8)))
        Y = t.tensor(rng.integers(0, 12, (4, 8)))
        valid_lens = t.tensor(rng.integers(3, 9, 4))

        def step(X, Y, valid_lens):
            optimizer.zero_grad()
            Y_hat = net(X, valid_lens)
            per_sequence = loss(Y_hat, Y, valid_lens)
            per_sequence.sum().backward()
            m.grad_clipping(net, 1)
            optimizer.step()
            return per_sequence

        step = compile_if(lib, compiled, step)
        losses = [numpy(step(X, Y, valid_lens)) for _ in range(3)]
        weights = [numpy(w) for w in net.encoder.attention_weights]
        return {"losses": np.array(losses), "attention_weights": np.array(weights),
                **parameters(net)}


NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "charlotte", "mia", "amelia"]


def makemore(model_type: str):
    """karpathy/makemore: the ``--type`` model (``ModelConfig`` with 2 layers, 2 heads, 16
    channels) on eight names through its own ``CharDataset``, three steps of its training loop
    (``model(X, Y)``, ``zero_grad(set_to_none=True)``, backward, AdamW as its main builds it);
    the compiled run compiles that step."""
    def quick(lib, compiled):
        t = library(lib)
        with shared_random(lib, 13):
            m = load("makemore", lib)
            chars = sorted(set("".join(NAMES)))
            dataset = m.CharDataset(NAMES, chars, max(map(len, NAMES)))
            config = m.ModelConfig(vocab_size=dataset.get_vocab_size(),
                                   block_size=dataset.get_output_length(),
                                   n_layer=2, n_head=2, n_embd=16, n_embd2=16)
            model = {"transformer": m.Transformer, "bow": m.BoW, "mlp": m.MLP,
                     "bigram": m.Bigram, "rnn": lambda c: m.RNN(c, cell_type="rnn"),
                     "gru": lambda c: m.RNN(c, cell_type="gru")}[model_type](config)
            optimizer = t.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01,
                                      betas=(0.9, 0.99), eps=1e-8)
            X, Y = (t.stack(column) for column in zip(*(dataset[i] for i in range(len(NAMES)))))

            def step(X, Y):
                logits, loss = model(X, Y)
                model.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                return loss

            step = compile_if(lib, compiled, step)
            losses = [numpy(step(X, Y)) for _ in range(3)]
            return {"losses": np.array(losses), **parameters(model)}
    quick.__doc__ = makemore.__doc__.replace("the ``--type`` model", f"``--type {model_type}``")
    return quick


@dataclass(frozen=True)
class QuickForm:
    """One way of running one corpus program: its file, the quick form, the float32 (or
    float64) tolerance its comparisons use, and whether it has a compiled variant."""
    name: str
    program: str
    run: Callable[[str, bool], dict[str, np.ndarray]]
    rtol: float = 1e-4
    atol: float = 1e-5
    compiles: bool = True
    not_against_torch: tuple[str, ...] = ()  # results compared with eager only (the reason
    # is in the quick form's docstring)


# Note: in self-attention the key projection's bias gets a gradient of exactly zero (softmax
# ignores a shift shared by a whole row), so numerically rounding noise, and Adam divides that
# noise by its own root mean square: each step moves those entries by up to ±lr whatever the
# noise's sign. Two correct implementations may differ there by 2·lr per step, so the
# transformer forms trained with Adam allow that much (their losses do not feel it).
def adam_noise_atol(lr: float, steps: int = 3) -> float:
    return 2 * lr * steps


FORMS = {f.name: f for f in [
    QuickForm("examples_mnist", "examples_mnist", quick_mnist),
    QuickForm("examples_mnist_rnn", "examples_mnist_rnn", quick_mnist_rnn),
    QuickForm("examples_gcn", "examples_gcn", quick_gcn),
    QuickForm("examples_gat", "examples_gat", quick_gat),
    QuickForm("examples_super_resolution_model", "examples_super_resolution_model",
              quick_super_resolution),
    # (every convolution's bias feeds an InstanceNorm, which subtracts it again: its gradient
    # is exactly zero, and Adam turns the rounding noise into ±lr steps, as nanoGPT's)
    QuickForm("examples_fast_neural_style_transformer_net",
              "examples_fast_neural_style_transformer_net", quick_fast_neural_style,
              atol=adam_noise_atol(1e-3)),
    QuickForm("examples_regression", "examples_regression", quick_regression,
              not_against_torch=REGRESSION_RUN),
    QuickForm("examples_time_sequence_prediction", "examples_time_sequence_prediction",
              quick_time_sequence, rtol=1e-9, atol=1e-11),
    QuickForm("examples_time_sequence_prediction:lbfgs", "examples_time_sequence_prediction",
              quick_time_sequence_lbfgs, rtol=1e-9, atol=1e-11, compiles=False),
    QuickForm("examples_word_language_model", "examples_word_language_model",
              quick_word_language_model),
    QuickForm("examples_word_language_model:transformer", "examples_word_language_model",
              quick_word_language_model_transformer),
    QuickForm("nanogpt_model", "nanogpt_model", quick_nanogpt, atol=adam_noise_atol(1e-3)),
    QuickForm("micrograd_test_engine", "micrograd_test_engine", quick_micrograd,
              compiles=False),
    *(QuickForm(f"makemore:{kind}", "makemore", makemore(kind),
                atol=adam_noise_atol(5e-4) if kind == "transformer" else 1e-5)
      for kind in ["bigram", "mlp", "rnn", "gru", "bow", "transformer"]),
    QuickForm("tutorials_polynomial_optim", "tutorials_polynomial_optim",
              quick_polynomial_optim),
    QuickForm("tutorials_polynomial_nn", "tutorials_polynomial_nn", quick_polynomial_nn),
    QuickForm("tutorials_polynomial_module", "tutorials_polynomial_module",
              quick_polynomial_module),
    QuickForm("tutorials_polynomial_custom_function", "tutorials_polynomial_custom_function",
              quick_polynomial_custom_function),
    QuickForm("tutorials_polynomial_autograd", "tutorials_polynomial_autograd",
              quick_polynomial_autograd),
    QuickForm("tutorials_nlp_advanced", "tutorials_nlp_advanced", quick_bilstm_crf),
    QuickForm("tutorials_nlp_sequence_models", "tutorials_nlp_sequence_models",
              quick_lstm_tagger),
    QuickForm("tutorials_nlp_word_embeddings", "tutorials_nlp_word_embeddings", quick_ngram),
    QuickForm("tutorials_nlp_deep_learning", "tutorials_nlp_deep_learning",
              quick_bow_classifier),
    QuickForm("tutorials_blitz_neural_networks", "tutorials_blitz_neural_networks",
              quick_lenet),
    QuickForm("mingpt_model", "mingpt_model", quick_mingpt, atol=adam_noise_atol(1e-3)),
    QuickForm("pytorch_cifar_resnet", "pytorch_cifar_resnet", quick_cifar_resnet),
    # (Adam moves a weight by about lr whatever its gradient's size, so the float32 noise in
    # the generator's smallest gradients, 1e-5 with 1e-6 of noise, becomes up to 2·lr a step;
    # in float64 the gradients agree with PyTorch's to 3e-15)
    QuickForm("examples_dcgan", "examples_dcgan", quick_dcgan, atol=adam_noise_atol(2e-4)),
    QuickForm("examples_vae", "examples_vae", quick_vae, compiles=False),
    QuickForm("examples_vae:seeded", "examples_vae", quick_vae_seeded,
              not_against_torch=("losses", *VAE_LAYERS)),
    QuickForm("torchvision_mobilenetv2", "torchvision_mobilenetv2", quick_mobilenetv2,
              rtol=1e-9, atol=1e-11),
    # (float64, and still 1e-10 apart after three steps: see quick_mnasnet; not compiled:
    # its inverted residuals compile as MobileNetV2's do, and the compile costs 13 s of CI)
    QuickForm("torchvision_mnasnet", "torchvision_mnasnet", quick_mnasnet, rtol=1e-7,
              atol=1e-9, compiles=False),
    QuickForm("torchvision_shufflenetv2", "torchvision_shufflenetv2", quick_shufflenetv2),
    QuickForm("torchvision_squeezenet", "torchvision_squeezenet", quick_squeezenet),
    QuickForm("torchvision_densenet", "torchvision_densenet", quick_densenet),
    QuickForm("torchvision_googlenet", "torchvision_googlenet", quick_googlenet, rtol=1e-7,
              atol=1e-9),
    QuickForm("torchvision_resnet", "torchvision_resnet", quick_resnext),
    QuickForm("d2l_torch:train_ch6", "d2l_torch", quick_d2l_train_ch6),
    QuickForm("d2l_torch:bert", "d2l_torch", quick_d2l_bert, atol=adam_noise_atol(1e-3)),
    QuickForm("d2l_torch:transformer_encoder", "d2l_torch", quick_d2l_transformer_encoder,
              atol=adam_noise_atol(5e-3)),
]}


def run_quick(name: str, lib: str, compiled: bool = False) -> dict[str, np.ndarray]:
    """Run one quick form under ``lib`` ("dyngrad" or "torch"); the programs' prints are
    swallowed. PyTorch runs on one thread (two would oversubscribe CI's two cores)."""
    with contextlib.redirect_stdout(io.StringIO()), one_torch_thread(lib):
        return FORMS[name].run(lib, compiled)


@contextlib.contextmanager
def one_torch_thread(lib: str):
    if lib != "torch":
        yield
        return
    t = library(lib)
    threads = t.get_num_threads()
    t.set_num_threads(1)
    try:
        yield
    finally:
        t.set_num_threads(threads)


def mismatches(form: QuickForm, got: dict, want: dict, against_torch: bool = False) -> list[str]:
    """The names whose arrays differ beyond the form's tolerance (or are missing), with the
    largest difference."""
    if against_torch:
        got, want = ({k: v for k, v in d.items() if k not in form.not_against_torch}
                     for d in (got, want))
    out = [f"{k}: missing" for k in sorted(set(got) ^ set(want))]
    for k in sorted(set(got) & set(want)):
        a, b = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        if a.shape != b.shape:
            out.append(f"{k}: shape {a.shape} != {b.shape}")
        elif not np.allclose(a, b, rtol=form.rtol, atol=form.atol):
            out.append(f"{k}: largest difference {np.max(np.abs(a - b)):.3g}")
    return out


def first_error(name: str, lib: str = "dyngrad", compiled: bool = False) -> str | None:
    """``None`` if the quick form runs, else its error as ``Type: message`` (first line)."""
    try:
        run_quick(name, lib, compiled)
    except Exception as e:  # noqa: BLE001 - any failure is the status being reported
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
