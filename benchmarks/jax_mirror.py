"""The workloads written in JAX, each step one ``jax.jit``, from the dyngrad instance's
weights and data.

Optional: :func:`available` is False when jax does not import, and the suite leaves the
mode out. XLA runs on ``THREADS[0]`` threads (``XLA_FLAGS``, unless already set), as every
framework in the suite does (``--threads``). A step keeps its parameters and optimizer
state between calls and waits for its result (``block_until_ready``: JAX dispatches
asynchronously). W4's Python ``while``/``if`` on values cannot be traced by ``jit``: it is
rewritten with
``lax.while_loop``/``lax.cond``, and differentiated in forward mode (reverse mode does not
go through ``while_loop``); the step returns the function's value, like the others.
"""

from __future__ import annotations

import itertools
import os

from . import nanogpt
from .workloads import VOCAB, Instance

_jax: list = []
THREADS = [1]  # XLA's threads (the suite sets it before the first import)


def jax():
    """The jax module, imported on first use (None when it is not installed)."""
    if not _jax:
        n = THREADS[0]
        os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen={str(n > 1).lower()} "
                              f"intra_op_parallelism_threads={n}")
        try:
            import jax as j
            _jax.append(j)
        except ImportError:
            _jax.append(None)
    return _jax[0]


def available() -> bool:
    """Whether jax imports."""
    return jax() is not None


def version() -> str | None:
    j = jax()
    return None if j is None else j.__version__


def _array(x):
    return jax().numpy.asarray(x.detach().numpy())


def _params(model) -> dict:
    return {name: _array(p) for name, p in model.named_parameters()}


def _optimizer(opt):
    """(init, update) of the dyngrad optimizer's kind: SGD (with its momentum), Adam
    (PyTorch's defaults) or Adadelta (its rho and eps), as PyTorch writes them."""
    j = jax()
    jnp = j.numpy
    group = opt.param_groups[0]
    lr = group["lr"]
    kind = type(opt).__name__
    if kind == "SGD" and group["momentum"] == 0:
        return (lambda p: ()), (lambda p, g, s: (j.tree.map(lambda w, d: w - lr * d, p, g), s))
    if kind == "SGD":  # (PyTorch's first buffer is g itself: μ·0 + g)
        mu = group["momentum"]

        def sgd(p, g, buf):
            buf = j.tree.map(lambda b, d: mu * b + d, buf, g)
            return j.tree.map(lambda w, b: w - lr * b, p, buf), buf
        return (lambda p: j.tree.map(jnp.zeros_like, p)), sgd
    if kind == "Adadelta":
        rho, eps = group["rho"], group["eps"]

        def adadelta(p, g, s):
            v, u = s
            v = j.tree.map(lambda v, g: rho * v + (1 - rho) * g * g, v, g)
            delta = j.tree.map(lambda v, u, g: jnp.sqrt(u + eps) / jnp.sqrt(v + eps) * g,
                               v, u, g)
            u = j.tree.map(lambda u, d: rho * u + (1 - rho) * d * d, u, delta)
            return j.tree.map(lambda w, d: w - lr * d, p, delta), (v, u)
        return (lambda p: (j.tree.map(jnp.zeros_like, p),) * 2), adadelta
    if kind != "Adam":
        raise NotImplementedError(f"no JAX mirror for optimizer {kind}")
    b1, b2, eps = 0.9, 0.999, 1e-8

    def init(p):
        zeros = j.tree.map(jnp.zeros_like, p)
        return (jnp.zeros((), jnp.float32), zeros, zeros)

    def update(p, g, s):
        t, m, v = s
        t = t + 1
        m = j.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = j.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
        step = lr / (1 - b1 ** t)
        root = jnp.sqrt(1 - b2 ** t)
        p = j.tree.map(lambda w, m, v: w - step * m / (jnp.sqrt(v) / root + eps), p, m, v)
        return p, (t, m, v)
    return init, update


def _train(loss_fn, params: dict, opt, calls: list, carried=None) -> tuple:
    """A stateful step around one jitted (loss, grad, update). With ``carried`` — what the
    step carries besides the parameters and the optimizer's state (dropout's key,
    BatchNorm's running statistics) — ``loss_fn(p, carried, *args)`` returns ``(loss,
    carried)``; without, ``loss_fn(p, *args)`` the loss."""
    j = jax()
    init, update = _optimizer(opt)
    f = loss_fn if carried is not None else (lambda p, c, *args: (loss_fn(p, *args), c))

    @j.jit
    def jitted(p, s, c, *args):
        (loss, c), g = j.value_and_grad(f, has_aux=True)(p, c, *args)
        p, s = update(p, g, s)
        return p, s, c, loss
    state = {"p": params, "s": init(params), "c": () if carried is None else carried}

    def step(*args):
        state["p"], state["s"], state["c"], loss = jitted(state["p"], state["s"], state["c"],
                                                          *args)
        return loss.block_until_ready()
    step.jitted = jitted
    return step, calls


def mlp(inst: Instance) -> tuple:
    """W1, W2 and the sweep: the Sequential's Linear layers with Tanh or ReLU between."""
    j = jax()
    jnp = j.numpy
    layers = []
    for i, m in enumerate(inst.model):
        kind = type(m).__name__
        layers.append((str(i), kind))
    calls = [tuple(_array(a) for a in c) for c in inst.calls]
    classes = not jnp.issubdtype(calls[0][1].dtype, jnp.floating)

    def loss(p, x, y):
        h = x
        for name, kind in layers:
            if kind == "Linear":
                h = h @ p[f"{name}.weight"].T + p[f"{name}.bias"]
            else:
                h = jnp.tanh(h) if kind == "Tanh" else j.nn.relu(h)
        if classes:
            return -jnp.mean(jnp.take_along_axis(j.nn.log_softmax(h), y[:, None], 1))
        return jnp.mean((h - y) ** 2)
    return _train(loss, _params(inst.model), inst.opt, calls)


def elementwise(inst: Instance) -> tuple:
    """W3: value and gradient of the sum."""
    j = jax()
    jnp = j.numpy

    def f(x):
        return jnp.sum(jnp.tanh(x * 1.5 + 0.5) * j.nn.sigmoid(x) - jnp.exp(-x * x))
    jitted = j.jit(j.value_and_grad(f))

    def step(x):
        loss, g = jitted(x)
        g.block_until_ready()
        return loss
    step.jitted = jitted
    return step, [tuple(_array(a) for a in c) for c in inst.calls]


def control_flow(inst: Instance) -> tuple:
    """W4 with ``lax.while_loop`` and ``lax.cond``; the derivative by ``jax.jvp``."""
    j = jax()
    jnp, lax = j.numpy, j.lax

    def f(a):
        b = lax.while_loop(lambda b: jnp.sqrt(jnp.sum(b * b)) < 1000, lambda b: b * 2, a * 2)
        return lax.cond(jnp.sum(b) > 0, lambda b: b, lambda b: 100 * b, b)
    jitted = j.jit(lambda a: j.jvp(f, (a,), (jnp.ones_like(a),)))

    def step(a):
        d, grad = jitted(a)
        grad.block_until_ready()
        return d
    step.jitted = jitted
    return step, [tuple(_array(a) for a in c) for c in inst.calls]


def language_model(inst: Instance) -> tuple:
    """W5: embedding → GRU (PyTorch's gate order r, z, n) → linear, cross-entropy, Adam; the
    loop over time steps unrolled by ``jit`` (one compilation per length)."""
    j = jax()
    jnp = j.numpy
    hidden = inst.model.rnn.hidden_size

    def loss(p, tokens, targets):
        x = p["emb.weight"][tokens]
        h = jnp.zeros((tokens.shape[1], hidden), x.dtype)
        outs = []
        for t in range(tokens.shape[0]):
            gi = x[t] @ p["rnn.weight_ih_l0"].T + p["rnn.bias_ih_l0"]
            gh = h @ p["rnn.weight_hh_l0"].T + p["rnn.bias_hh_l0"]
            i_r, i_z, i_n = jnp.split(gi, 3, -1)
            h_r, h_z, h_n = jnp.split(gh, 3, -1)
            r, z = j.nn.sigmoid(i_r + h_r), j.nn.sigmoid(i_z + h_z)
            n = jnp.tanh(i_n + r * h_n)
            h = (1 - z) * n + z * h
            outs.append(h)
        logits = jnp.stack(outs) @ p["out.weight"].T + p["out.bias"]
        logp = j.nn.log_softmax(logits.reshape(-1, VOCAB))
        return -jnp.mean(jnp.take_along_axis(logp, targets.reshape(-1)[:, None], 1))
    calls = [tuple(_array(a) for a in c) for c in inst.calls]
    return _train(loss, _params(inst.model), inst.opt, calls)


def _conv(x, w, b=None, stride: int = 1, pad: int = 0):
    """PyTorch's conv2d: NCHW input, OIHW weight."""
    lax = jax().lax
    y = lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y if b is None else y + b[None, :, None, None]


def _nll(logits, y):
    """Cross-entropy of logits against class indices (log_softmax + nll_loss)."""
    j = jax()
    logp = j.nn.log_softmax(logits)
    return -j.numpy.mean(j.numpy.take_along_axis(logp, y[:, None], 1))


def mnist(inst: Instance) -> tuple:
    """W7a: pytorch/examples' mnist Net; dropout's masks from a key the step carries (no
    dropout when the dyngrad model is in eval mode)."""
    j = jax()
    jnp, lax = j.numpy, j.lax
    training = inst.model.training

    def dropout(key, h, rate):
        if not training:
            return h
        return jnp.where(j.random.bernoulli(key, 1 - rate, h.shape), h / (1 - rate), 0)

    def loss(p, key, x, y):
        key, k1, k2 = j.random.split(key, 3)
        h = j.nn.relu(_conv(x, p["conv1.weight"], p["conv1.bias"]))
        h = j.nn.relu(_conv(h, p["conv2.weight"], p["conv2.bias"]))
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        h = dropout(k1, h, 0.25).reshape(h.shape[0], -1)
        h = dropout(k2, j.nn.relu(h @ p["fc1.weight"].T + p["fc1.bias"]), 0.5)
        return _nll(h @ p["fc2.weight"].T + p["fc2.bias"], y), key
    calls = [tuple(_array(a) for a in c) for c in inst.calls]
    return _train(loss, _params(inst.model), inst.opt, calls, j.random.key(0))


def resnet(inst: Instance) -> tuple:
    """W7b: the small ResNet; BatchNorm as PyTorch trains it (batch statistics, running ones
    updated with momentum 0.1 and the unbiased variance), the running ones carried."""
    j = jax()
    jnp = j.numpy

    def bn(p, stats, name, x):
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        n = x.size // x.shape[1]
        stats[f"{name}.running_mean"] = 0.9 * stats[f"{name}.running_mean"] + 0.1 * mean
        stats[f"{name}.running_var"] = (0.9 * stats[f"{name}.running_var"]
                                        + 0.1 * var * n / (n - 1))
        scale = p[f"{name}.weight"] / jnp.sqrt(var + 1e-5)
        return ((x - mean[None, :, None, None]) * scale[None, :, None, None]
                + p[f"{name}.bias"][None, :, None, None])

    def block(p, stats, name, x, stride):
        out = j.nn.relu(bn(p, stats, f"{name}.bn1",
                           _conv(x, p[f"{name}.conv1.weight"], stride=stride, pad=1)))
        out = bn(p, stats, f"{name}.bn2", _conv(out, p[f"{name}.conv2.weight"], pad=1))
        if f"{name}.shortcut.0.weight" in p:
            x = bn(p, stats, f"{name}.shortcut.1",
                   _conv(x, p[f"{name}.shortcut.0.weight"], stride=stride))
        return j.nn.relu(out + x)

    def loss(p, stats, x, y):
        stats = dict(stats)
        h = j.nn.relu(bn(p, stats, "stem.1", _conv(x, p["stem.0.weight"], pad=1)))
        h = block(p, stats, "layers.1", block(p, stats, "layers.0", h, 1), 2)
        logits = h.mean((2, 3)) @ p["fc.weight"].T + p["fc.bias"]
        return _nll(logits, y), j.lax.stop_gradient(stats)
    stats = {name: _array(b) for name, b in inst.model.named_buffers()
             if not name.endswith("num_batches_tracked")}
    calls = [tuple(_array(a) for a in c) for c in inst.calls]
    return _train(loss, _params(inst.model), inst.opt, calls, stats)


def gpt(inst: Instance) -> tuple:
    """W8: nanoGPT written out — LayerNorm, causal softmax attention per head, exact (erf)
    GELU, the head tied to the token embedding (one parameter, as named by the dyngrad
    model, so its two gradients add) — with ``clip_grad_norm_`` and AdamW over nanoGPT's
    groups written as PyTorch computes them; the learning rate of ``train.py``'s schedule
    is an argument of the jitted step (a traced number: one compilation)."""
    j = jax()
    jnp = j.numpy
    cfg, train = inst.model.config, inst.train
    n_head, hs = cfg.n_head, cfg.n_embd // cfg.n_head

    def linear(p, name, x):
        y = x @ p[f"{name}.weight"].T
        return y + p[f"{name}.bias"] if cfg.bias else y

    def layer_norm(p, name, x):
        mean = x.mean(-1, keepdims=True)
        y = (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
        y = y * p[f"{name}.weight"]
        return y + p[f"{name}.bias"] if cfg.bias else y

    def attention(p, name, x):
        B, T, C = x.shape
        q, k, v = (a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
                   for a in jnp.split(linear(p, f"{name}.c_attn", x), 3, -1))
        scores = q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(jnp.float32(hs))
        scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
        y = j.nn.softmax(scores, -1) @ v
        return linear(p, f"{name}.c_proj", y.transpose(0, 2, 1, 3).reshape(B, T, C))

    def loss(p, idx, targets):
        x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][:idx.shape[1]]
        for i in range(cfg.n_layer):
            h = f"transformer.h.{i}"
            x = x + attention(p, f"{h}.attn", layer_norm(p, f"{h}.ln_1", x))
            m = j.nn.gelu(linear(p, f"{h}.mlp.c_fc", layer_norm(p, f"{h}.ln_2", x)),
                          approximate=False)
            x = x + linear(p, f"{h}.mlp.c_proj", m)
        logits = layer_norm(p, "transformer.ln_f", x) @ p["transformer.wte.weight"].T
        return _nll(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    params = _params(inst.model)
    decay = {name: train.weight_decay if w.ndim >= 2 else 0.0 for name, w in params.items()}
    (b1, b2), eps = train.betas, 1e-8

    @j.jit
    def jitted(p, s, lr, x, y):
        value, g = j.value_and_grad(loss)(p, x, y)
        norm = jnp.sqrt(sum(jnp.sum(d * d) for d in j.tree.leaves(g)))
        g = j.tree.map(lambda d: d * jnp.minimum(train.grad_clip / (norm + 1e-6), 1.0), g)
        t, m, v = s
        t = t + 1
        m = j.tree.map(lambda m, d: m + (d - m) * (1 - b1), m, g)
        v = j.tree.map(lambda v, d: b2 * v + (1 - b2) * d * d, v, g)
        step, root = lr / (1 - b1 ** t), jnp.sqrt(1 - b2 ** t)
        p = {n: w * (1 - lr * decay[n]) - step * m[n] / (jnp.sqrt(v[n]) / root + eps)
             for n, w in p.items()}
        return p, (t, m, v), value
    zeros = j.tree.map(jnp.zeros_like, params)
    state = {"p": params, "s": (jnp.zeros((), jnp.float32), zeros, zeros)}
    it = itertools.count()

    def run(x, y):
        lr = nanogpt.get_lr(next(it), train)
        state["p"], state["s"], value = jitted(state["p"], state["s"], lr, x, y)
        return value.block_until_ready()
    run.jitted = jitted
    return run, [tuple(_array(a) for a in c) for c in inst.calls]


MIRRORS = {"mlp": mlp, "elementwise": elementwise, "control_flow": control_flow,
           "language_model": language_model, "mnist": mnist,
           "resnet": resnet, "gpt": gpt}  # by Workload.kind


def variants(step) -> int | None:
    """How many specialisations ``jit`` compiled for the step (None if jax hides it)."""
    size = getattr(getattr(step, "jitted", None), "_cache_size", None)
    return size() if callable(size) else None


def jacobian(kind: str, w, x) -> tuple:
    """W6: ``jax.jit(jax.jacfwd/jacrev)`` of tanh(W x); returns ``(fn, calls)``."""
    j = jax()
    wj = j.numpy.asarray(w)
    jitted = j.jit(getattr(j, kind)(lambda x: j.numpy.tanh(wj @ x)))
    return (lambda x: jitted(x).block_until_ready()), [(_array(x),)]
