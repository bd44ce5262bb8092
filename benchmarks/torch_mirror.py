"""The workloads written in PyTorch, from the dyngrad instance's weights and data.

Optional: :func:`available` is False when torch does not import, and the suite then leaves
the PyTorch modes out. PyTorch runs on ``THREADS[0]`` intra-op threads, as every framework
in the suite does (``--threads``). ``torch.compile`` uses the default
backend (inductor); the suite points its cache at a fresh directory, so the first call of
each workload is cold (but later workloads find inductor's modules already imported).
"""

from __future__ import annotations

from . import nanogpt
from .workloads import VOCAB, W4_INPUTS, Instance

_torch: list = []  # [module or None] once imported
THREADS = [1]  # intra-op threads (the suite sets it before the first import)


def torch():
    """The torch module, imported on first use (None when it is not installed)."""
    if not _torch:
        try:
            import torch as t
            t.set_num_threads(THREADS[0])
            _torch.append(t)
        except ImportError:
            _torch.append(None)
    return _torch[0]


def available() -> bool:
    """Whether torch imports."""
    return torch() is not None


def version() -> str | None:
    t = torch()
    return None if t is None else t.__version__


def tensor(x):
    """A dyngrad tensor as a torch tensor (copied; requires_grad kept)."""
    t = torch()
    out = t.from_numpy(x.detach().numpy().copy())
    return out.requires_grad_() if x.requires_grad else out


def _copy_model(model, tmodel):
    """Copy the dyngrad model's parameters into ``tmodel``, matched by name, and its mode
    (training or eval)."""
    t = torch()
    ours = dict(model.named_parameters())
    theirs = dict(tmodel.named_parameters())
    if set(ours) != set(theirs):
        raise AssertionError(f"parameter names differ: {sorted(ours)} vs {sorted(theirs)}")
    with t.no_grad():
        for name, p in theirs.items():
            p.copy_(t.from_numpy(ours[name].detach().numpy().copy()))
    return tmodel.train(model.training)


HYPERPARAMETERS = {"SGD": ("lr", "momentum"), "Adam": ("lr", "betas", "eps"),
                   "Adadelta": ("lr", "rho", "eps")}  # what the mirrors copy, per optimizer


def _optimizer(opt, params):
    """The dyngrad optimizer's kind and hyperparameters (:data:`HYPERPARAMETERS`; the rest
    at their defaults, which dyngrad shares)."""
    t = torch()
    kind = type(opt).__name__
    if kind not in HYPERPARAMETERS:
        raise NotImplementedError(f"no PyTorch mirror for optimizer {kind}")
    group = opt.param_groups[0]
    return getattr(t.optim, kind)(params, **{h: group[h] for h in HYPERPARAMETERS[kind]})


def _train_step(model, opt, loss_fn):
    def step(*args):
        opt.zero_grad()
        loss = loss_fn(model, *args)
        loss.backward()
        opt.step()
        return loss
    return step


def _sequential(model):
    """nn.Sequential of Linear / Tanh / ReLU, layer for layer."""
    t = torch()
    layers = []
    for m in model:
        kind = type(m).__name__
        if kind == "Linear":
            layers.append(t.nn.Linear(m.in_features, m.out_features))
        else:
            layers.append(getattr(t.nn, kind)())
    return _copy_model(model, t.nn.Sequential(*layers))


def mlp(inst: Instance) -> tuple:
    """W1, W2 and the sweep: an nn.Sequential MLP step (MSE + SGD, or cross-entropy +
    Adam when the targets are class indices)."""
    t = torch()
    tm = _sequential(inst.model)
    calls = [tuple(tensor(a) for a in c) for c in inst.calls]
    classes = not calls[0][1].is_floating_point()
    loss = (lambda m, x, y: t.nn.functional.cross_entropy(m(x), y)) if classes else \
        (lambda m, x, y: t.nn.functional.mse_loss(m(x), y))
    return _train_step(tm, _optimizer(inst.opt, tm.parameters()), loss), calls


def elementwise(inst: Instance) -> tuple:
    """W3."""
    def step(x):
        x.grad = None
        loss = ((x * 1.5 + 0.5).tanh() * x.sigmoid() - (-x * x).exp()).sum()
        loss.backward()
        return loss
    return step, [tuple(tensor(a) for a in c) for c in inst.calls]


def control_flow(inst: Instance) -> tuple:
    """W4: the very same step (the d2l function uses only methods torch tensors have too),
    on torch tensors."""
    t = torch()
    assert len(inst.calls) == len(W4_INPUTS)
    return inst.step, [(t.tensor(float(v), requires_grad=True),) for v in W4_INPUTS]


def language_model(inst: Instance) -> tuple:
    """W5: Embedding → GRU → Linear, cross-entropy, Adam."""
    t = torch()
    m = inst.model

    class LM(t.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = t.nn.Embedding(m.emb.num_embeddings, m.emb.embedding_dim)
            self.rnn = t.nn.GRU(m.rnn.input_size, m.rnn.hidden_size)
            self.out = t.nn.Linear(m.out.in_features, m.out.out_features)

        def forward(self, tokens):
            h, _ = self.rnn(self.emb(tokens))
            return self.out(h)
    tm = _copy_model(m, LM())

    def loss(model, tokens, targets):
        return t.nn.functional.cross_entropy(model(tokens).reshape(-1, VOCAB),
                                             targets.reshape(-1))
    calls = [tuple(tensor(a) for a in c) for c in inst.calls]
    return _train_step(tm, _optimizer(inst.opt, tm.parameters()), loss), calls


def _image_step(inst: Instance, tmodel, loss_name: str) -> tuple:
    """A convnet step on ``inst``'s images and labels, ``tmodel`` given the dyngrad
    model's weights."""
    t = torch()
    loss = getattr(t.nn.functional, loss_name)
    tm = _copy_model(inst.model, tmodel)
    calls = [tuple(tensor(a) for a in c) for c in inst.calls]
    return _train_step(tm, _optimizer(inst.opt, tm.parameters()),
                       lambda model, x, y: loss(model(x), y)), calls


def mnist(inst: Instance) -> tuple:
    """W7a: pytorch/examples' mnist ``Net``, as written there; nll_loss, Adadelta."""
    t = torch()
    nn, F = t.nn, t.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            x = t.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
            x = self.dropout2(F.relu(self.fc1(x)))
            return F.log_softmax(self.fc2(x), dim=1)
    return _image_step(inst, Net(), "nll_loss")


def resnet(inst: Instance) -> tuple:
    """W7b: the small ResNet (benchmarks/convnets.py), module for module; cross-entropy,
    SGD with momentum."""
    t = torch()
    nn, F = t.nn, t.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class SmallResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))
    return _image_step(inst, SmallResNet(), "cross_entropy")


def gpt(inst: Instance) -> tuple:
    """W8: nanoGPT's own model.py on PyTorch (benchmarks/nanogpt.py: the corpus's port with
    its import lines turned back), the weights copied by name; nanoGPT's
    ``configure_optimizers`` (AdamW over its decayed and undecayed groups), ``clip_grad_norm_``,
    and the learning rate of ``train.py``'s schedule set into the groups before each step,
    outside what ``torch.compile`` compiles (:func:`compiled`), as the dyngrad modes do."""
    t = torch()
    train = inst.train
    tm = _copy_model(inst.model, nanogpt.GPT(inst.model.config, framework="torch"))
    opt = nanogpt.configure_optimizers(tm, train)

    def inner(x, y):
        _, loss = tm(x, y)
        loss.backward()
        t.nn.utils.clip_grad_norm_(tm.parameters(), train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    around = nanogpt.scheduled(opt, train)
    step = around(inner)
    step.inner, step.around = inner, around
    return step, [tuple(tensor(a) for a in c) for c in inst.calls]


MIRRORS = {"mlp": mlp, "elementwise": elementwise, "control_flow": control_flow,
           "language_model": language_model, "mnist": mnist,
           "resnet": resnet, "gpt": gpt}  # by Workload.kind


def compiled(step):
    """``torch.compile(step)`` (the default backend). A step made as ``around(inner)`` (it
    has both: W8, whose learning rate is set around the work) has ``inner`` compiled and
    ``around`` kept in Python, as :class:`~benchmarks.workloads.Instance` does for dyngrad's
    compiled modes."""
    if hasattr(step, "around"):
        return step.around(torch().compile(step.inner))
    return torch().compile(step)


def reset_compiler() -> None:
    """Forget torch.compile's caches and counters (between workloads)."""
    t = torch()
    t._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()


def compile_counts() -> dict:
    """torch.compile's graphs (its variants) and graph breaks (its fallbacks to Python)
    since :func:`reset_compiler`."""
    from torch._dynamo.utils import counters
    return {"variants": int(counters["stats"].get("unique_graphs", 0)),
            "fallbacks": int(sum(counters["graph_break"].values()))}


def jacobian(kind: str, w, x) -> tuple:
    """W6: ``torch.func.jacfwd``/``jacrev`` of tanh(W x) (``w`` an array, ``x`` a dyngrad
    tensor); returns ``(fn, calls)``."""
    t = torch()
    wt = t.from_numpy(w)
    return getattr(t.func, kind)(lambda x: t.tanh(wt @ x)), [(tensor(x),)]
