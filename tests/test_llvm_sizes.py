"""Symbolic sizes as run-time numbers of one native module per form of the code
(compiler/dims.py, compiler/backends/llvm/forms.py).

- Dims: arithmetic keeps one canonical expression per size (one slot), decisions see the
  number, and inside ``dims.recording()`` a Dim is written as a placeholder;
- the template: placeholders become loads typed by their instruction; sizes where LLVM
  needs a constant (element counts of types, alignments, vector constants, intrinsic
  arguments, globals) make the text untemplatable;
- :class:`Forms` on a hand-written driver: every size of one form runs one module with its
  own numbers; a number written without a Dim makes a form of its own;
- compiled training steps with a symbolic batch size: every size's step equals eager's, and
  the sizes share modules (explain says so);
- a template gives the very bits of the size's own module (reductions over the symbolic
  dimension, across the chunk size, matmuls with it as M and as K), and a size whose code
  takes another form (a product crossing from inline loops to the blocked kernel) gets a
  module of its own and is still right.
"""

from __future__ import annotations

import copy
import ctypes

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler import dims
from compiler.backends.base import Untemplatable
from compiler.backends.llvm import driver, emit, forms, jit, matmul, runner
from dyngrad import nn, optim

RTOL32 = 1e-4


@pytest.fixture(autouse=True)
def seeded():
    dg.manual_seed(7)


def sum_driver(n, scale, extra: str = "") -> str:
    """A driver storing sum(i * scale for i < n) into the table's first pointer (``n`` and
    ``scale`` ints/floats or Dims)."""
    return f"""declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
define i32 @drv(ptr %tab) {{
entry:
  %p = load ptr, ptr %tab{extra}
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %loop]
  %acc = phi double [0.0, %entry], [%a2, %loop]
  %f = sitofp i64 %i to double
  %a1 = fmul double %f, {emit.literal(scale, "double")}
  %a2 = fadd double %acc, %a1
  %i.next = add nuw nsw i64 %i, 1
  %more = icmp slt i64 %i.next, {n}
  br i1 %more, label %loop, label %exit
exit:
  store double %a2, ptr %p
  ret i32 0
}}
"""


def run_sum(compiled, numbers) -> float:
    out = np.zeros(1)
    tab = (ctypes.c_void_p * 1)(out.ctypes.data)
    if numbers is None:
        fn = compiled.cfunc("drv", ctypes.c_int32, ctypes.c_void_p)
        assert fn(tab) == 0
    else:
        fn = compiled.cfunc("drv_sized", ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
        assert fn(tab, numbers.ctypes.data) == 0
    return float(out[0])


# ------------------------------------------------------------------ Dims


def test_a_dim_decides_as_its_number_and_keeps_one_expression_per_size():
    d = dims.dim(100)
    a = (d * 784 * 4 + 63) // 64 * 64
    b = 4 * (784 * d)
    assert a == 313600 and b == 313600 and hash(d) == hash(100) and d > 99 and not d < 100
    assert (b - d * 3136) == 0 and isinstance(b - d * 3136, int)  # (constant: an int)
    assert np.zeros((d, 3)).shape == (100, 3) and list(range(dims.dim(3))) == [0, 1, 2]
    assert divmod(d, 7) == (14, 2) and (1.0 / d) == 0.01 and -(-d // 4096) == 1
    assert dims.concrete({"shape": (d, 5)}) == {"shape": (100, 5)}
    with dims.recording() as rec:
        text = f"{b} {d * 3136} {d} {7} {1.0 / d}"
    slots = text.split()
    assert slots[0] == slots[1] != slots[2]  # the same size computed two ways: one slot
    assert slots[0].startswith(dims.PREFIX) and slots[3] == "7"
    assert rec.numbers == [313600, 100, 0.01]
    assert f"{d}" == "100" and f"{d:5d}" == "  100"  # (no recording: its number)


# ------------------------------------------------------------------ the template


@pytest.mark.parametrize("line, ty", [
    ("%x = add i64 %y, {}", "i64"),
    ("%x = icmp slt i32 %y, {}", "i32"),
    ("%x = getelementptr inbounds float, ptr %p, i64 {}", "i64"),
    ("%x = fmul double %y, {}", "double"),
    ("%x = fmul float %y, {}", "float"),
    ("call void @llvm.memcpy.p0.p0.i64(ptr %p, ptr %q, i64 {}, i1 false)", "i64"),
    ("%x = alloca float, i64 {}, align 64", "i64"),
])
def test_a_placeholder_becomes_a_load_of_its_instructions_type(line, ty):
    text = f"define void @f(ptr %p, ptr %q) {{\nentry:\n  {line.format('%dgz.0.5')}\n" \
           "  ret void\n}\n"
    t, entries = forms.template(text)
    assert entries == [(0, ty)]
    assert f"%dgz.0.{ty} = load {ty}, ptr %dgz.0.{ty}.p" in t and "%dgz.0.5" not in t
    assert "define void @dg_set_sizes(ptr %sizes)" in t


@pytest.mark.parametrize("line", [
    "%x = alloca [{} x float], align 64",
    "%x = alloca float, i64 2, align {}",
    "%x = add <2 x i64> %y, <i64 1, i64 {}>",
    "%x = call float @llvm.powi.f32.i32(float %y, i32 {})",
    "switch i64 %y, label %exit [ i64 {}, label %exit ]",
])
def test_a_size_where_llvm_needs_a_constant_is_untemplatable(line):
    text = f"define void @f(i64 %y) {{\nentry:\n  {line.format('%dgz.0.5')}\n" \
           "  br label %exit\nexit:\n  ret void\n}\n"
    with pytest.raises(Untemplatable):
        forms.template(text)
    with pytest.raises(Untemplatable):  # (a global's initializer)
        forms.template("@g = global i64 %dgz.0.5\n" + text.replace("%dgz.0.5", "1"))


def test_encoding_of_each_type_and_a_number_out_of_its_range():
    assert forms.encode(48, "i64") == 48 and forms.encode(-3, "i32") == -3
    assert np.array([forms.encode(0.5, "float")], np.int64).view(np.float32)[0] == 0.5
    assert np.array([forms.encode(-2.25, "double")], np.int64).view(np.float64)[0] == -2.25
    assert np.array([forms.encode(7, "double")], np.int64).view(np.float64)[0] == 7.0
    with pytest.raises(Untemplatable):
        forms.encode(1 << 31, "i32")
    with pytest.raises(Untemplatable):
        forms.encode(0.5, "i64")


# ------------------------------------------------------------------ forms by hand


def test_every_size_of_one_form_runs_one_module_with_its_own_numbers():
    fam = forms.Forms()
    modules = set()
    for n in (5, 7, 11, 100, 2):
        d = dims.dim(n)
        with dims.recording():
            compiled, numbers = fam.module(sum_driver(d, d / 4))
        modules.add(id(compiled))
        assert numbers is not None and len(numbers) == 2  # the trip count and the scale
        assert run_sum(compiled, numbers) == sum(i * (n / 4) for i in range(n))
    assert len(modules) == 1 and (fam.templates, fam.shared, fam.own) == (1, 5, 0)


def test_a_number_written_without_a_dim_makes_a_form_of_its_own():
    fam = forms.Forms()
    for n in (5, 6, 9):  # (the scale written as a plain number: part of the template)
        with dims.recording():
            compiled, numbers = fam.module(sum_driver(dims.dim(n), float(n)))
        assert run_sum(compiled, numbers) == sum(i * float(n) for i in range(n))
    assert fam.templates == 3 and fam.shared == 3
    with dims.recording():  # nothing depends on the size: the text's own module
        compiled, numbers = fam.module(sum_driver(4, 1.0))
    assert numbers is None and run_sum(compiled, None) == 6.0


def test_a_template_llvm_refuses_is_untemplatable(monkeypatch):
    """Should a placeholder the scanner lets through be one LLVM needs constant after all,
    the template does not compile: Untemplatable (the pipeline then compiles the size with
    its numbers)."""
    monkeypatch.setattr(forms, "_type_at", lambda line, start, end: "i64")
    fam = forms.Forms()
    d = dims.dim(4)
    with dims.recording(), pytest.raises(Untemplatable):
        fam.module(sum_driver(d, 1.0, extra=f"\n  %buf = alloca double, i64 2, align {d * 8}"))


def test_the_template_is_valid_ir_with_loads_in_each_entry_block():
    with dims.recording():
        t, entries = forms.template(sum_driver(dims.dim(5), 1.0))
    assert entries == [(0, "i64")]
    assert "define i32 @drv_sized(ptr %tab, ptr %sizes)" in t
    entry = t.split("define i32 @drv(ptr %tab) {\nentry:\n", 1)[1]
    assert entry.startswith("  %dgz.0.i64.p = getelementptr")
    compiled = jit.compile_ir(t)
    assert run_sum(compiled, np.array([12], np.int64)) == sum(range(12))


# ------------------------------------------------------------------ compiled steps


def mlp_step(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def test_a_symbolic_batch_size_shares_one_module_and_matches_eager(capsys):
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    twin = copy.deepcopy(model)
    cf = compiler.compile(mlp_step(model, optim.Adam(model.parameters(), lr=1e-2)),
                          backend="llvm")
    eager = mlp_step(twin, optim.Adam(twin.parameters(), lr=1e-2))
    batches = (8, 8, 9, 10, 11, 11, 12, 12, 13, 13, 40, 40, 3, 3, 300, 300, 301, 301, 8)
    for b in batches:  # (a new size: traced, then planned)
        x, y = dg.randn(b, 12), dg.randint(0, 5, (b,))
        got, want = float(cf(x, y)), float(eager(x, y))
        assert abs(got - want) <= RTOL32 * max(1.0, abs(want)), (b, got, want)
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-3,
                                   atol=1e-5)
    (v,) = cf.variants
    fam = v.family
    assert v.sym is not None and fam is not None
    assert all(isinstance(p[0], driver.DriverPlan) for p in v.plans.values())
    shared = [d for d, p in v.plans.items() if p[0].sizes is not None]
    assert len(shared) == len(v.plans) - 1 and fam.own == 0, (fam.own, sorted(v.plans))
    assert v.plans[10][0] is v.plan  # (the traced size: its own executable)
    assert fam.templates <= len(shared) - 2, (fam.templates, sorted(shared))
    assert "ran from" in str(compiler.explain(cf))
    capsys.readouterr()


def pure(x, w1, w2):
    """Reductions over the symbolic dim (sums of rows, across the reduce chunk of 256),
    products with it as M (x @ w1) and as K (h.T @ x), softmax along the fixed dim."""
    h = (x @ w1).tanh()
    s = F.softmax(h, dim=1)
    return (s * x.sum(dim=1, keepdim=True)).sum(dim=0), h.T @ x, (h @ w2).amax(dim=0)


def _outputs(result) -> list:
    return [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]


def against_modules_per_size(fn, args_at, sizes, rtol, atol, seed=0):
    """``fn`` compiled as users get it (symbolic after three sizes: template modules) and
    with ``dynamic=False`` (a module per size), called with ``args_at(b)`` at each size:
    the same bits, and eager's values within ``rtol``/``atol`` (random draws from
    ``manual_seed(seed)`` in all three). Returns the symbolic compiled function."""
    sym = compiler.compile(fn, backend="llvm")
    alone = compiler.compile(fn, backend="llvm", dynamic=False, cache_limit=64)
    for b in sizes:
        args = args_at(b)
        for f in (sym, alone):  # (a new trace's first call returns eager's result)
            dg.manual_seed(seed)
            f(*args)
        results = []
        for f in (sym, alone, fn):
            dg.manual_seed(seed)
            results.append(_outputs(f(*args)))
        for got, own, want in zip(*results, strict=True):
            np.testing.assert_array_equal(got, own, err_msg=f"batch {b}")
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"batch {b}")
    return sym


def test_the_template_gives_the_bits_of_each_sizes_own_module():
    """One symbolic variant (sizes after the first two of its family run the template)
    against a ``dynamic=False`` twin compiling every size alone: the same bits (float32)."""
    dtype = np.float32
    r = np.random.default_rng(0)
    w1 = dg.tensor(r.standard_normal((6, 8)).astype(dtype))
    w2 = dg.tensor(r.standard_normal((8, 3)).astype(dtype))
    sym = against_modules_per_size(
        pure, lambda b: (dg.tensor(r.standard_normal((b, 6)).astype(dtype)), w1, w2),
        (4, 5, 6, 7, 255, 256, 257, 300, 513, 2, 31), rtol=1e-4, atol=1e-4)
    (v,) = sym.variants
    assert v.family.shared >= 4, (v.family.own, v.family.shared)


def test_a_product_crossing_to_the_blocked_kernel_starts_a_form_of_its_own():
    """x @ w is inline loops up to SMALL_WORK multiply-adds, the blocked kernel (or BLAS)
    beyond: that size's code has another form, so it gets a module of its own — right."""
    w = dg.randn(16, 16)
    f = compiler.compile(lambda x: (x @ w).relu().sum(dim=1), backend="llvm")
    big = 2 * matmul.SMALL_WORK // 256
    for b in (4, 5, 6, 7, 9, big, 10, 9, big, 10):  # (a new size: traced, then planned)
        x = dg.randn(b, 16)
        np.testing.assert_allclose(f(x).numpy(), (x @ w).relu().sum(dim=1).numpy(),
                                   rtol=1e-4, atol=1e-4)
    (v,) = f.variants
    modules = {d: p[0].compiled for d, p in v.plans.items() if p[0] is not v.plan}
    assert all(modules[big] is not m for d, m in modules.items() if d != big)
    assert len({id(m) for m in modules.values()}) == v.family.templates >= 2


def test_the_sizes_of_one_form_compile_once():
    """Sizes whose code makes the same decisions write the same template: one LLVM compile
    serves them all, each with its own numbers."""
    w = dg.randn(8, 4)
    f = compiler.compile(lambda x: ((x @ w).tanh() - 0.5).square().mean(), backend="llvm")
    for b in (6, 7, 9, 10, 21, 33, 64, 11, 10, 21, 33, 64, 11):  # (traced, then planned)
        x = dg.randn(b, 8)
        want = float(((x @ w).tanh() - 0.5).square().mean())
        assert abs(float(f(x)) - want) <= RTOL32 * max(1.0, abs(want))
    (v,) = f.variants
    assert v.family.own == 0 and v.family.templates == 1, (v.family.own, v.family.templates)
    assert all(p[0].sizes is not None for p in v.plans.values() if p[0] is not v.plan)


def test_two_threads_calling_two_sizes_of_one_family():
    """The sizes share the module's global of numbers, so they share one lock: a call that
    finds it held runs the runner's plan of its size instead — each thread gets its own
    size's answers."""
    import threading

    w = dg.randn(8, 4)

    def g(x):
        return (x @ w).relu().sum(dim=0)
    f = compiler.compile(g, backend="llvm")
    xs = {b: dg.randn(b, 8) for b in (5, 6, 7, 10, 12)}
    for b in (5, 6, 7, 10, 12, 10, 12):  # (a new size: traced, then planned)
        f(xs[b])
    (v,) = f.variants
    assert v.plans[10][0].lock is v.plans[12][0].lock
    errors = []

    def work(b):
        want = g(xs[b]).numpy()
        for _ in range(200):
            got = f(xs[b]).numpy()
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                errors.append((b, got, want))
    threads = [threading.Thread(target=work, args=(b,)) for b in (10, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_backward_outside_a_symbolic_variant_runs_natively_per_size(capsys):
    """A compiled model whose output's loss is taken outside (a non-scalar output: the
    backward part runs at backward()), over changing batch sizes: every .grad equals
    eager's, the backward part of each size is a native plan made at its first backward(),
    and the sizes' backward modules form a family too."""
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    cf = compiler.compile(lambda x: model(x), backend="llvm")
    for b in (5, 6, 7, 9, 11, 13, 16, 9, 11, 13, 16):  # (a new size: traced, then planned)
        x, target = dg.randn(b, 6), dg.randn(b, 3)
        for m in (model, twin):
            for p in m.parameters():
                p.grad = None
        out = cf(x)
        ((out - target) ** 2).sum().backward()
        ((twin(x) - target) ** 2).sum().backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-4, atol=1e-5)
    (v,) = cf.variants
    assert v.sym is not None and v.backward is not None
    made = {d: p[1].plan for d, p in v.plans.items() if p[1] is not None}
    assert all(isinstance(p, driver.DriverPlan) for p in made.values()), made
    assert len(made) >= 4 and v.bw_family is not None and v.bw_family.shared >= 2
    assert "at the first backward()" in str(compiler.explain(cf))
    capsys.readouterr()


def _programs():
    r = np.random.default_rng(3)
    w = dg.tensor(r.standard_normal((6, 5)).astype(np.float32))
    g = dg.tensor(r.standard_normal(6).astype(np.float32))
    wc = dg.tensor(r.standard_normal((4, 2, 3, 3)).astype(np.float32), requires_grad=True)
    sc = dg.tensor(r.standard_normal((1, 2, 1, 1)).astype(np.float32), requires_grad=True)
    return {
        "layer_norm": lambda x, i: F.layer_norm(x, (6,), weight=g) * 2.0,
        "cross_entropy": lambda x, i: F.cross_entropy(x @ w, i),
        "log_softmax_over_batch": lambda x, i: F.log_softmax(x, dim=0).sum(dim=1),
        "transposed_broadcast": lambda x, i: (x.T * x.mean(dim=1)).exp().sum(dim=0),
        "cat_and_slice": lambda x, i: dg.cat([x, x[1:] * 2.0, x[:1]], dim=0).tanh().amax(dim=0),
        "gather_rows": lambda x, i: (x.gather(1, i.reshape(-1, 1)) - x.mean()).sigmoid(),
        "where_and_clip": lambda x, i: dg.where(x > 0.1, x.sqrt().abs(), x * x).sum(),
        "dropout": lambda x, i: F.dropout(x.relu(), p=0.3, training=True).sum(dim=1),
        "conv_and_its_gradients": lambda x, i: _conv_grads(x, wc, sc),
    }


def _conv_grads(x, wc, sc):
    """A strided convolution over a symbolic batch and its input and weight gradients (the
    window kernels' sample loops and staging take the size at run time)."""
    y = F.conv2d(x.reshape(-1, 2, 1, 3) * sc, wc, padding=1, stride=(1, 2))
    gw, gs = dg.autograd.grad((y * y).sum(), (wc, sc))
    return (y.sum(dim=(1, 2, 3)) + gw.sum() + gs.sum()).detach()


@pytest.mark.parametrize("name", sorted(_programs()))
def test_programs_over_many_batch_sizes_give_their_own_modules_bits(name):
    """Each program compiled as users get it (symbolic after three sizes: template modules)
    and with ``dynamic=False`` (a module per size): at every size the same bits, and
    eager's values within float32 tolerance; the later sizes ran on shared modules."""
    r = np.random.default_rng(11)
    sym = against_modules_per_size(
        _programs()[name], lambda b: (dg.tensor(r.standard_normal((b, 6)).astype(np.float32)),
                                      dg.tensor(r.integers(0, 5, b))),
        (3, 4, 5, 9, 300, 17, 2, 64), rtol=1e-4, atol=1e-5)
    (v,) = sym.variants
    assert v.sym is not None and v.family is not None
    assert v.family.shared >= 4, (v.family.shared, v.family.own, v.family.templates)


@pytest.mark.parametrize("symbolic", ["kept", "reduced"])
def test_column_reductions_over_a_symbolic_size_sum_as_the_sizes_own_module(symbolic):
    """A reduction over leading dims keeping trailing ones (the column form, in tiles when
    its partials outgrow the stack) decides its form at the size's number, symbolic or not:
    the batch kept (``x.T`` summed over its rows, more kept elements than a tile at the
    largest size) or summed out (a bias gradient of 4200 features) — each size sums in its
    own module's order, the same bits (a symbolic size used to take the strided walk)."""
    r = np.random.default_rng(5)
    if symbolic == "kept":
        fn, sizes, width = (lambda x: (x.T * 1.5).sum(dim=0)), (3, 4, 5, 300, 17, 4500), 6
    else:
        fn, sizes, width = (lambda x: (x * 1.5).sum(dim=0)), (3, 4, 5, 9, 33, 2), 4200
    against_modules_per_size(
        fn, lambda b: (dg.tensor((r.standard_normal((b, width)) * 1e3).astype(np.float32)),),
        sizes, rtol=1e-4, atol=1e-2)


def test_a_symbolic_variant_fuses_a_size_into_the_kernels_of_its_own_module():
    """A symbolic variant's graph at a size (``symbolic.concrete_graph``) keeps what the
    passes marked — the values computed again for their late readers (``Graph.recomputed``,
    remat's copies), and the index values narrowed to int32 — so fusion keeps
    those copies out of earlier kernels there too: the size runs the kernels its own module
    has (they used to join the bias gradient's reduction in the symbolic variant only)."""
    def make():
        dg.manual_seed(0)
        m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 10))
        opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    r = np.random.default_rng(0)
    sym = compiler.compile(make(), backend="llvm")
    alone = compiler.compile(make(), backend="llvm", dynamic=False, cache_limit=16)
    for b in (64, 96, 128, 160, 128):
        x = dg.tensor(r.standard_normal((b, 32)).astype(np.float32))
        y = dg.tensor(r.integers(0, 10, b))
        sym(x, y), alone(x, y)
    (v,) = sym.variants
    own = next(w for w in alone.variants
               if any(i.shape == (128, 32) for i in w.trace.graph.inputs))
    assert v.sym is not None and own.trace.graph.recomputed
    sized = v.plans[128][0]
    assert sized.g.recomputed == own.trace.graph.recomputed
    assert sized.g.narrowed == own.trace.graph.narrowed
    assert sorted(tuple(grp.nodes) for grp in sized.groups) == \
        sorted(tuple(grp.nodes) for grp in own.groups)  # (in an order of their own: the
    #                                                      schedule counts no symbolic bytes)


def test_two_functions_of_the_same_code_share_the_template_and_its_lock():
    """Two closures of one function over their own weights make the same template text:
    the memory cache gives both one module — one global of numbers — so their plans share
    the module's lock, and two threads calling different sizes of each get their own
    answers (the blocked reduction's worker threads read the numbers late in the call)."""
    import threading

    def make():
        w = dg.randn(1031)

        def g(x):
            return (x * w).sum()
        return g
    g1, g2 = make(), make()
    f1, f2 = (compiler.compile(g, backend="llvm") for g in (g1, g2))
    xs = {b: dg.randn(b, 1031) for b in (4, 5, 6, 300, 700)}
    for f, sizes_ in ((f1, (4, 5, 6, 300)), (f2, (4, 5, 6, 700))):
        for b in sizes_:
            f(xs[b]), f(xs[b])
    p1, p2 = f1.variants[0].plans[300][0], f2.variants[0].plans[700][0]
    assert p1.sizes is not None and p2.sizes is not None
    assert p1.compiled is p2.compiled and p1.lock is p2.lock
    errors = []

    def work(f, g, b):
        want = float(g(xs[b]))
        for _ in range(300):
            got = float(f(xs[b]))
            if not abs(got - want) <= 1e-3 * max(1.0, abs(want)):
                errors.append((b, got, want))
    threads = [threading.Thread(target=work, args=(f1, g1, 300)),
               threading.Thread(target=work, args=(f2, g2, 700))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_the_output_blocks_reference_count_is_measured_for_this_interpreter():
    """A block's array is reused only when the generated call sees no holder but the
    block and itself: the count it compares with is measured at import, for the
    interpreter running it (a held array must never count as free)."""
    import sys
    ns = {"REFS": sys.getrefcount}
    exec("def probe(BL):\n    o = BL[0]\n    return REFS(o)", ns)
    held = object()  # (this local holds it)
    assert ns["probe"]([object()]) == driver.FREE_REFS
    assert ns["probe"]([held]) == driver.FREE_REFS + 1


def test_a_symbolic_variant_keeps_the_plans_of_a_bounded_number_of_sizes(monkeypatch):
    """Every size's plan holds an arena and output arrays: past ``PLANS_KEPT`` sizes the
    oldest is dropped (and made again, from the shared module, if it returns)."""
    from compiler.api import Variant
    monkeypatch.setattr(Variant, "PLANS_KEPT", 4)
    w = dg.randn(5, 3)

    def g(x):
        return (x @ w).tanh().sum(dim=0)
    f = compiler.compile(g, backend="llvm")
    for b in (3, 4, 5, 6, 7, 8, 9, 10, 11, 3, 12, 4, 5):  # (5: the family's first size)
        x = dg.randn(b, 5)
        f(x)
        np.testing.assert_allclose(f(x).numpy(), g(x).numpy(), rtol=1e-5, atol=1e-6)
    (v,) = f.variants
    assert len(v.plans) <= 4 and {12, 4, 5} <= set(v.plans)
    fam = v.family  # (the returning sizes ran the template again, with no compile)
    assert fam.templates == 1 and fam.own == 0, (fam.templates, fam.own)


@pytest.mark.parametrize("name", ["int64_conv", "int64_conv_and_noise"])
def test_hybrid_plans_of_a_symbolic_variant_share_a_template_too(name):
    """A graph with a group in numpy (an int64 convolution) runs a hybrid plan: its kernels'
    module is a family template as well — the run holds the module's lock and gives it the
    size's numbers first — with the bits of a module per size (random numbers too, which a
    hybrid plan draws in numpy)."""
    w = dg.tensor(np.random.default_rng(5).standard_normal((6, 4)))
    wi = dg.tensor(np.array([[[1, -2]]]))

    def conv(x):
        return F.conv1d(((x @ w) * 4.0).to(dg.int64)[:, None], wi).to(dg.float64)
    fn = {"int64_conv": lambda x: conv(x).sum(dim=0),
          "int64_conv_and_noise": lambda x: (conv(x)[:, 0] + dg.randn(x.shape[0], 3,
                                                                       dtype=dg.float64))
          .relu().sum(dim=0)}[name]
    r = np.random.default_rng(6)
    sym = against_modules_per_size(fn, lambda b: (dg.tensor(r.standard_normal((b, 6))),),
                                   (3, 4, 5, 9, 300, 17, 2, 40), rtol=1e-12, atol=1e-12,
                                   seed=1)
    (v,) = sym.variants
    assert all(isinstance(p[0], runner.HybridPlan) for p in v.plans.values())
    assert sum(p[0].sized is not None for p in v.plans.values()) >= 4
    assert v.family.templates >= 1 and v.family.shared >= 4


def test_sizes_called_in_turn_each_run_the_shared_module_with_their_own_numbers():
    """Two sizes of one form, called alternately (the template's global holds the last
    call's numbers): every call gives its own size's answer."""
    w = dg.randn(8, 4)

    def g(x):
        return ((x @ w).tanh() * x.sum(dim=1, keepdim=True)).mean(dim=0)
    f = compiler.compile(g, backend="llvm")
    xs = {b: dg.randn(b, 8) for b in (5, 6, 7, 10, 12)}
    for b in (5, 6, 7, 10, 12):  # (symbolic from the third size; each new size traced)
        f(xs[b])
    for _ in range(3):
        for b in (10, 12):
            np.testing.assert_allclose(f(xs[b]).numpy(), g(xs[b]).numpy(), rtol=1e-5,
                                       atol=1e-6)
    (v,) = f.variants
    assert v.plans[10][0].compiled is v.plans[12][0].compiled
    assert v.plans[10][0].sizes is not None and \
        not np.array_equal(v.plans[10][0].sizes, v.plans[12][0].sizes)


def test_a_size_whose_code_cannot_be_a_template_is_compiled_with_its_numbers(monkeypatch):
    """When a size's IR cannot be a template (here: every placeholder refused), the size is
    compiled with its numbers — a module of its own — and is still right."""
    def refuse(line, start, end):
        raise Untemplatable("refused by the test")
    monkeypatch.setattr(forms, "_type_at", refuse)
    w = dg.randn(8, 4)

    def g(x):  # (a mean: the size is a float constant of the code, 1/n)
        return (x @ w).relu().mean(dim=0)
    f = compiler.compile(g, backend="llvm")
    for b in (5, 6, 7, 10, 10, 12, 12):
        x = dg.randn(b, 8)
        np.testing.assert_allclose(f(x).numpy(), g(x).numpy(), rtol=1e-5, atol=1e-6)
    (v,) = f.variants
    assert v.family.own >= 2 and v.family.templates == 0 and not f.fallbacks
    assert all(p[0].sizes is None for p in v.plans.values())


def test_a_size_finding_its_shared_module_busy_runs_its_own_hybrid_plan():
    """The sizes of one form share the module's lock: a call that finds it held builds the
    runner's plan of its size — with the size's numbers written in (here a mean: 1/n as a
    float constant) — and gives its own answer."""
    w = dg.randn(8, 4)

    def g(x):
        return (x @ w).tanh().mean(dim=0)
    f = compiler.compile(g, backend="llvm")
    xs = {b: dg.randn(b, 8) for b in (5, 6, 7, 10, 12)}
    for b in (5, 6, 7, 10, 12, 10, 12):
        f(xs[b])
    (v,) = f.variants
    p10, p12 = v.plans[10][0], v.plans[12][0]
    assert p10.lock is p12.lock
    assert p10.lock.acquire(blocking=False)
    try:
        np.testing.assert_allclose(f(xs[12]).numpy(), g(xs[12]).numpy(), rtol=1e-5, atol=1e-6)
        assert isinstance(p12.fallback.__self__, runner.HybridPlan) and not f.fallbacks
    finally:
        p10.lock.release()


def test_the_traced_size_runs_the_executable_compiled_for_it():
    """When three traces make a variant symbolic, the executable compiled for the last one
    serves its size: nothing is compiled again for it, and explain labels it."""
    w = dg.randn(8, 4)
    f = compiler.compile(lambda x: (x @ w).relu().sum(dim=0), backend="llvm")
    for b in (5, 6, 7, 7):
        f(dg.randn(b, 8))
    (v,) = f.variants
    assert v.sym is not None and v.plans[7][0] is v.plan
