"""A guided tour of the autograd behaviours described in the seed notes, run on dyngrad.

    python examples/seeds_tour.py [--plot PATH]

The notes in shared/seeds/ (a reader's notes on d2l.ai §2.5 and PyTorch's autograd tutorial)
describe eleven behaviours. This script walks through them in the notes' order; for each it
prints a heading, the result of running the code and a one-line explanation, and it *asserts*
every claim, so the tour fails loudly if dyngrad ever stops behaving like PyTorch:

 1. requires_grad is set on leaves only — and why (persistent gradient buffers for parameters)
 2. grad_fn and is_leaf
 3. .grad accumulates until zeroed; micro-batch accumulation equals the big batch
 4. backward on a non-scalar needs gradient=v (computes vᵀJ); v = 1 equals .sum().backward()
 5. retain_graph
 6. .grad of a non-leaf is None (with a warning) unless retain_grad()
 7. no_grad and detach
 8. from_numpy shares memory: A += 1 versus A = A + 1 (ids differ, memory is shared)
 9. dynamic graphs: Python control flow in the d2l function f(a); a.grad == f(a)/a
10. in-place operations and the version-counter error
11. forward versus reverse mode: jvp and backward on the same function, and which is cheaper

It saves a figure (default examples/seeds_tour.png): the d2l control-flow function's gradient,
a staircase because every value of a builds a different graph, and the measured cost of
forward versus reverse mode for a many-inputs→one-output and a one-input→many-outputs function.
Runs in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

# Tiny matmuls: waking BLAS worker threads costs more than the work they take over (and on a
# busy 2-core machine they contend with other processes: 10x slower steps were measured), so
# use one thread unless the environment says otherwise. Must precede numpy's import.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import pyplot, save  # noqa: E402

import dyngrad as dg  # noqa: E402
from dyngrad.forward_ad import jvp  # noqa: E402

say = print
TOTAL = 11


def heading(n: int, title: str) -> None:
    say(f"\n[{n}/{TOTAL}] {title}\n" + "─" * (len(title) + 8))


def show(code: str, value) -> None:
    """Print a line of code and what it evaluated to."""
    text = str(value).replace("\n", "\n      ")
    say(f"  >>> {code}\n      {text}")


def why(text: str) -> None:
    say(f"  ⇒ {text}")


def progress(iterable, desc: str):
    """A tqdm progress bar when tqdm is installed, else the plain iterable."""
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, ncols=80)


def raises(fn, exc=RuntimeError) -> str:
    """Run ``fn``, assert it raises ``exc``, return the first line of the message."""
    try:
        fn()
    except exc as err:
        return str(err).splitlines()[0]
    raise AssertionError(f"{fn} did not raise {exc.__name__}")


def close(a, b, tol=1e-6) -> bool:
    a = np.asarray(a.detach().numpy() if isinstance(a, dg.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().numpy() if isinstance(b, dg.Tensor) else b, dtype=np.float64)
    return a.shape == b.shape and np.allclose(a, b, rtol=tol, atol=tol)


def short(msg: str, n: int = 110) -> str:
    return msg if len(msg) <= n else msg[:n] + " …"


# ------------------------------------------------------------------------------ sections


def requires_grad_on_leaves() -> None:
    heading(1, "requires_grad on leaves only — gradient buffers for parameters")
    x = dg.arange(4.0, requires_grad=True)
    show("x = dg.arange(4.0, requires_grad=True); x.grad", x.grad)
    assert x.grad is None
    why("no buffer yet: .grad is allocated by the first backward, not by reading it.")
    y = 2 * dg.dot(x, x)
    y.backward()
    buf = x.grad
    show("y = 2 * dg.dot(x, x); y.backward(); x.grad", x.grad)
    assert close(x.grad, [0.0, 4.0, 8.0, 12.0])
    why("dy/dx = 4x lands in x.grad, a buffer that belongs to the leaf x.")
    (2 * dg.dot(x, x)).backward()
    show("(2 * dg.dot(x, x)).backward(); x.grad is buf", x.grad is buf)
    assert x.grad is buf
    why("the next backward adds into the same buffer, and x.grad.zero_() keeps it: only "
        "leaves (the parameters) own such persistent buffers. (optimizer.zero_grad() sets "
        ".grad to None by default, as in PyTorch, so the next backward allocates afresh.)")
    h = x * 2
    msg = raises(lambda: setattr(h, "requires_grad", False))
    show("h = x * 2; h.requires_grad = False", f"RuntimeError: {short(msg)}")
    why("h is computed (not a leaf): whether it needs a gradient follows from its inputs; "
        "use h.detach() for a copy that does not.")
    msg = raises(lambda: h.requires_grad_(False))
    show("h.requires_grad_(False)", f"RuntimeError: {short(msg)}")
    why("the method checks for a leaf too (one note thought only the attribute did).")
    msg = raises(lambda: x.requires_grad(True), TypeError)
    show("x.requires_grad(True)", f"TypeError: {short(msg)}")
    why("requires_grad is a bool attribute; the setter method is requires_grad_().")
    msg = raises(lambda: dg.tensor([1, 2]).requires_grad_())
    show("dg.tensor([1, 2]).requires_grad_()", f"RuntimeError: {short(msg)}")
    why("only floating-point leaves can have gradients.")


def grad_fn_and_is_leaf() -> None:
    heading(2, "grad_fn and is_leaf")
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    c = dg.tensor([3.0, 4.0])
    loss = (x * c).sum()
    show("x.is_leaf, x.grad_fn", (x.is_leaf, x.grad_fn))
    show("loss = (x * c).sum(); loss.is_leaf, loss.grad_fn", (loss.is_leaf, loss.grad_fn))
    show("loss.grad_fn.next_functions", loss.grad_fn.next_functions)
    assert x.is_leaf and x.grad_fn is None
    assert not loss.is_leaf and loss.grad_fn.name() == "SumBackward0"
    assert loss.grad_fn.next_functions[0][0].name() == "MulBackward0"
    why("a result remembers the op that made it (grad_fn) and, through next_functions, the "
        "whole graph back to the leaves; leaves have grad_fn None.")
    d = c * 2
    with dg.no_grad():
        e = x * 2
    show("(c * 2).grad_fn, (c * 2).is_leaf; under no_grad (x * 2).is_leaf",
         (d.grad_fn, d.is_leaf, e.is_leaf))
    assert d.grad_fn is None and d.is_leaf and e.is_leaf and not e.requires_grad
    why("nothing is recorded when no input requires grad (or grad mode is off): such "
        "results are leaves.")


def grad_accumulation() -> None:
    heading(3, ".grad accumulates; zero it — and micro-batches add up to the big batch")
    x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for _ in range(3):
        (x * x).sum().backward()
    show("3 × (x * x).sum().backward(); x.grad", x.grad)
    assert close(x.grad, 3 * 2 * np.array([1.0, 2.0, 3.0]))
    why("each backward ADDS 2x to x.grad; that is why training loops call zero_grad().")
    x.grad.zero_()
    show("x.grad.zero_()", x.grad)
    assert close(x.grad, [0.0, 0.0, 0.0])

    dg.manual_seed(0)
    X = dg.randn(8, 3, dtype=dg.float64)
    t = dg.randn(8, dtype=dg.float64)
    w = dg.tensor([0.1, -0.2, 0.3], dtype=dg.float64, requires_grad=True)
    ((X @ w - t) ** 2).mean().backward()
    big = w.grad.clone()
    w.grad = None
    for xb, tb in zip(X.split(2), t.split(2)):        # 4 micro-batches of 2
        (((xb @ w - tb) ** 2).mean() / 4).backward()  # scale each by 1/#micro-batches
    show("grad of the batch-of-8 loss", big)
    show("sum of 4 micro-batch backward() calls (no zero_grad between)", w.grad)
    assert close(w.grad, big, 1e-12)
    why("gradient accumulation: the big batch's gradient without holding the big batch's "
        "activations in memory at once.")


def non_scalar_backward() -> None:
    heading(4, "backward on a non-scalar needs gradient= (vᵀJ)")
    x = dg.arange(4.0, requires_grad=True)
    y = x * x
    msg = raises(lambda: y.backward(retain_graph=True))
    show("y = x * x; y.backward()", f"RuntimeError: {short(msg)}")
    why("the Jacobian of y is 4×4; backward computes a vector-Jacobian product, so it "
        "needs the vector.")
    v = dg.tensor([1.0, 0.0, 10.0, 0.5])
    y.backward(gradient=v, retain_graph=True)
    show("y.backward(gradient=v) with v = [1, 0, 10, 0.5]; x.grad", x.grad)
    assert close(x.grad, v.numpy() * 2 * x.detach().numpy())
    why("x.grad = vᵀ·J = v ⊙ 2x (J is diagonal here).")
    x.grad = None
    y.backward(gradient=dg.ones_like(y))
    ones = x.grad
    x.grad = None
    (x * x).sum().backward()
    show("gradient=ones_like(y)  vs  y.sum().backward()", (ones, x.grad))
    assert close(ones, x.grad)
    why("v = 1 is the same as summing first: .sum() is the usual way to say it.")


def retain_graph() -> None:
    heading(5, "retain_graph")
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    msg = raises(y.backward)
    show("y = (x.exp() * x).sum(); y.backward(); y.backward()", f"RuntimeError: {short(msg)}")
    why("backward frees the intermediate values it saved (here exp(x)), so a graph can be "
        "walked once.")
    x.grad = None
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.clone()
    y.backward()
    show("y.backward(retain_graph=True); y.backward(); x.grad / first", x.grad / first)
    assert close(x.grad, 2 * first.numpy())
    why("retain_graph=True keeps them for a second pass — which accumulates into .grad again.")


def non_leaf_grad() -> None:
    heading(6, ".grad of a non-leaf (a warning) and retain_grad")
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    (h * h).sum().backward()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = h.grad
    show("h = x * 3; (h * h).sum().backward(); h.grad", value)
    assert value is None and caught and issubclass(caught[0].category, UserWarning)
    say(f"      UserWarning: {short(str(caught[0].message), 96)}")
    why("only leaves keep gradients; an intermediate's gradient is passed on and dropped.")
    h = x * 3
    h.retain_grad()
    (h * h).sum().backward()
    show("h = x * 3; h.retain_grad(); (h * h).sum().backward(); h.grad", h.grad)
    assert close(h.grad, [6.0, 12.0])
    why("retain_grad() asks to keep it (useful for debugging activations).")


def no_grad_and_detach() -> None:
    heading(7, "no_grad and detach")
    x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with dg.no_grad():
        z = x ** 2
    show("with dg.no_grad(): z = x ** 2;  z.requires_grad", z.requires_grad)
    assert not z.requires_grad
    why("nothing is recorded: for evaluation, and for optimizer updates of parameters.")
    y = x * x
    u = y.detach()
    show("u = (x * x).detach(); u.requires_grad, shares memory with y",
         (u.requires_grad, np.shares_memory(u.numpy(), y.detach().numpy())))
    assert not u.requires_grad and np.shares_memory(u.numpy(), y.detach().numpy())
    (u * x).sum().backward()
    show("(u * x).sum().backward(); x.grad   (d2l: u is a constant)", x.grad)
    assert close(x.grad, u)
    why("detach cuts the graph: the gradient treats u as a constant, not as x².")
    w = dg.tensor([1.0, 1.0], requires_grad=True)
    frozen = dg.tensor([2.0, 2.0], requires_grad=True).requires_grad_(False)
    (w * frozen).sum().backward()
    show("a frozen parameter (requires_grad_(False)): frozen.grad", frozen.grad)
    assert frozen.grad is None and close(w.grad, [2.0, 2.0])
    why("freezing = turning requires_grad off on a leaf: it gets no buffer and no gradient.")


def from_numpy_memory() -> None:
    heading(8, "from_numpy shares memory: A += 1 versus A = A + 1")
    A = np.array([1.0, 2.0, 3.0])
    B = dg.from_numpy(A)
    show("A = np.array([1., 2., 3.]); B = dg.from_numpy(A); id(A) == id(B)", id(A) == id(B))
    assert id(A) != id(B)
    show("np.shares_memory(A, B.numpy())", np.shares_memory(A, B.numpy()))
    assert np.shares_memory(A, B.numpy())
    why("two Python objects (an ndarray and a Tensor) over one block of memory.")
    A += 1
    show("A += 1; B", B)
    assert B.tolist() == [2.0, 3.0, 4.0]
    why("in place: numpy writes into the shared memory, so B sees it.")
    A = A + 1
    show("A = A + 1; B, A", (B, A))
    assert B.tolist() == [2.0, 3.0, 4.0] and A.tolist() == [3.0, 4.0, 5.0]
    why("A + 1 makes a NEW array and rebinds the name A; B still views the old memory "
        "(kept alive by B — nothing leaks).")
    B.add_(10)
    C = np.asarray(B)
    show("B.add_(10); np.asarray(B)", C)
    assert C.tolist() == [12.0, 13.0, 14.0]
    why("it works both ways: in-place tensor ops are visible through numpy views.")


def d2l_f(a):
    """d2l §2.5.4: a function whose graph depends on its input's value."""
    b = a * 2
    while b.norm() < 1000:
        b = b * 2
    if b.sum() > 0:
        c = b
    else:
        c = 100 * b
    return c


def graph_depth(t) -> int:
    """Number of backward nodes reachable from ``t.grad_fn``."""
    seen, stack = set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(n for n, _ in node.next_functions)
    return len(seen)


def dynamic_graph() -> None:
    heading(9, "dynamic graphs: Python control flow (d2l's f(a))")
    say("      def f(a):\n          b = a * 2\n          while b.norm() < 1000: b = b * 2\n"
        "          c = b if b.sum() > 0 else 100 * b\n          return c")
    dg.manual_seed(42)
    a = dg.randn((), requires_grad=True)
    d = d2l_f(a)
    d.backward()
    show("a = dg.randn((), requires_grad=True); d = f(a); d.backward(); a.grad, d / a",
         (a.grad, (d / a).detach()))
    assert close(a.grad, (d / a).detach(), 1e-5)
    why("for a fixed path through the loop and the if, f(a) = k·a, so df/da = k = f(a)/a — "
        "that is how d2l checks the answer.")
    sizes = {}
    for v in (0.001, 0.5, -0.5, 300.0):
        t = dg.tensor(v, requires_grad=True)
        sizes[v] = graph_depth(d2l_f(t))
    show("backward nodes recorded for a = 0.001, 0.5, -0.5, 300", list(sizes.values()))
    assert sizes[0.001] > sizes[0.5] > sizes[300.0] and sizes[-0.5] == sizes[0.5] + 1
    why("each call records the ops that actually ran: more doublings for small |a|, one extra "
        "multiply on the negative branch. The graph is rebuilt on every forward pass.")
    t0 = time.perf_counter()
    for _ in range(200):
        t = dg.randn((), requires_grad=True)
        d2l_f(t).backward()
    per = (time.perf_counter() - t0) / 200 * 1e6
    show("building the graph and running backward, per call", f"{per:.0f} µs")
    why("rebuilding is cheap bookkeeping next to real tensor work; the price is Python "
        "overhead per op, which matters only for tiny ops (see benchmarks/).")


def in_place_and_versions() -> None:
    heading(10, "in-place operations and the version counter")
    x = dg.tensor([1.0, 2.0], requires_grad=True)
    e = x.exp()
    show("e = x.exp(); e._version", e._version)
    e.add_(1)
    show("e.add_(1); e._version", e._version)
    assert e._version == 1
    msg = raises(lambda: e.sum().backward())
    show("e.sum().backward()", f"RuntimeError: {short(msg, 150)}")
    assert "ExpBackward0" in msg and "version 1" in msg
    why("exp saved its output for backward (d exp = exp); the in-place add changed it, the "
        "version counter noticed, and backward refuses to use a wrong value.")
    msg = raises(lambda: x.mul_(2))
    show("x.mul_(2)   (x is a leaf that requires grad)", f"RuntimeError: {short(msg)}")
    with dg.no_grad():
        x.mul_(2)
    show("with dg.no_grad(): x.mul_(2); x", x)
    assert x.tolist() == [2.0, 4.0]
    why("parameters are updated in place only under no_grad — exactly what optimizers do.")
    y = x * 1.0
    z = y + 3            # add saves nothing of y ...
    y.mul_(2)            # ... so changing y afterwards is harmless
    z.sum().backward()
    show("y = x * 1; z = y + 3; y.mul_(2); z.sum().backward(); x.grad", x.grad)
    assert close(x.grad, [1.0, 1.0])
    why("only changes to tensors that backward actually needs are errors.")


def time_min(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_vs_reverse() -> dict:
    heading(11, "forward versus reverse mode")
    x = dg.tensor([0.3, -1.2, 2.0], dtype=dg.float64, requires_grad=True)
    g = lambda x: (x.sin() * x.exp()).sum()
    v = dg.tensor([1.0, 2.0, -1.0], dtype=dg.float64)
    g(x).backward()
    _, dir_deriv = jvp(g, (x.detach(),), (v,))
    show("g(x) = Σ sin(x)·exp(x); backward: x.grad", x.grad)
    show("jvp(g, (x,), (v,)) with v = [1, 2, -1]", dir_deriv)
    assert close(dir_deriv, float((x.grad * v).sum()), 1e-12)
    why("reverse mode gives the whole gradient ∇g (one row vᵀJ per pass); forward mode gives "
        "one directional derivative J·v per pass — here ∇g·v, the same number.")

    n = m = 64
    xs = dg.randn(n, dtype=dg.float64)
    loss = lambda x: (x.tanh() * x).sum()                          # R^n -> R

    def rev_loss():
        xl = xs.clone().requires_grad_()
        loss(xl).backward()
        return xl.grad

    def fwd_loss():
        eye = dg.eye(n, dtype=dg.float64)
        return dg.stack([jvp(loss, (xs,), (eye[i],))[1] for i in range(n)])

    c = dg.arange(1.0, m + 1.0, dtype=dg.float64)
    curve = lambda s: (s * c).sin()                                  # R -> R^m
    s0 = dg.tensor(0.7, dtype=dg.float64)

    def fwd_curve():
        return jvp(curve, (s0,), (dg.ones_like(s0),))[1]

    def rev_curve():
        s = s0.clone().requires_grad_()
        y = curve(s)
        rows = []
        for i in range(m):
            (gi,) = dg.autograd.grad(y[i], s, retain_graph=True)
            rows.append(gi)
        return dg.stack(rows)

    assert close(rev_loss(), fwd_loss(), 1e-12) and close(fwd_curve(), rev_curve(), 1e-12)
    times = {"loss R^64→R": (time_min(fwd_loss), time_min(rev_loss)),
             "curve R→R^64": (time_min(fwd_curve), time_min(rev_curve))}
    for name, (tf, tr) in times.items():
        show(f"full derivative of {name}: forward, reverse",
             f"{tf * 1e3:.2f} ms, {tr * 1e3:.2f} ms")
    (f1, r1), (f2, r2) = times.values()
    assert f1 > 3 * r1 and r2 > 3 * f2
    why("forward mode needs one pass per INPUT, reverse one per OUTPUT: reverse wins for a "
        "loss (many parameters → one number), forward for few inputs and many outputs. "
        "Forward mode can drop each intermediate as soon as its tangent is made; reverse must "
        "save them until backward.")
    return times


SECTIONS = [requires_grad_on_leaves, grad_fn_and_is_leaf, grad_accumulation,
            non_scalar_backward, retain_graph, non_leaf_grad, no_grad_and_detach,
            from_numpy_memory, dynamic_graph, in_place_and_versions, forward_vs_reverse]


# ------------------------------------------------------------------------------ figure


def staircase():
    """a, f(a)/a and a.grad for the d2l function over both signs and 5 decades of |a|."""
    mags = np.logspace(-3, 2.5, 120)
    rows = {}
    for sign in (1.0, -1.0):
        grads, ratios = [], []
        for v in progress(mags, f"figure: f(a) for {'+' if sign > 0 else '-'}|a|"):
            a = dg.tensor(sign * v, dtype=dg.float64, requires_grad=True)
            d = d2l_f(a)
            d.backward()
            grads.append(abs(a.grad.item()))
            ratios.append(abs((d / a).item()))
        rows[sign] = (np.array(grads), np.array(ratios))
    return mags, rows


def plot(path: Path, times: dict) -> None:
    plt = pyplot(say)
    if plt is None:
        return
    mags, rows = staircase()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for sign, color, label in ((1.0, "tab:blue", "a > 0"), (-1.0, "tab:red", "a < 0")):
        grads, ratios = rows[sign]
        a1.step(mags, grads, where="mid", color=color, label=f"|df/da| by backward, {label}")
        a1.plot(mags[::6], ratios[::6], "o", ms=4, mfc="none", color=color,
                label=f"|f(a)/a|, {label}")
    a1.set(xscale="log", yscale="log", xlabel="|a|", ylabel="|df/da|",
           title="d2l f(a): each a builds its own graph\n(one doubling per step of the stair)")
    a1.legend(fontsize=8, loc="upper right")
    names = list(times)
    xpos = np.arange(len(names))
    fwd = [times[k][0] * 1e3 for k in names]
    rev = [times[k][1] * 1e3 for k in names]
    b1 = a2.bar(xpos - 0.2, fwd, 0.4, label="forward mode (jvp per input)")
    b2 = a2.bar(xpos + 0.2, rev, 0.4, label="reverse mode (backward per output)")
    a2.bar_label(b1, fmt="%.2f ms", fontsize=8)
    a2.bar_label(b2, fmt="%.2f ms", fontsize=8)
    a2.set_xticks(xpos, ["loss  ℝ⁶⁴→ℝ\n(64 inputs, 1 output)",
                         "curve  ℝ→ℝ⁶⁴\n(1 input, 64 outputs)"])
    a2.set(yscale="log", ylabel="time for the full derivative (ms)",
           title="forward vs reverse mode, same derivative")
    a2.legend(fontsize=8, loc="upper center")
    a2.margins(y=0.25)
    fig.tight_layout()
    say("")
    save(fig, path, "figure", say=say)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, default=Path(__file__).with_suffix(".png"),
                    help="where to save the figure (PNG)")
    args = ap.parse_args(argv)
    assert len(SECTIONS) == TOTAL
    times = None
    for section in SECTIONS:
        out = section()
        times = out if out is not None else times
    print(f"\nall {len(SECTIONS)} behaviours checked.")
    plot(args.plot, times)


if __name__ == "__main__":
    main()
