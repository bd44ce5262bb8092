"""Symbolic sizes as run-time numbers of one native module (compiler/backends/llvm/sizes.py).

- the literal scanner: which numbers of an IR text may become run-time values (operands)
  and which may not (element counts of types, alignments, vector constants, intrinsic
  arguments, globals);
- a :class:`Family` on hand-written driver text: the first size compiled on its own, the
  second makes the template, later sizes run it with their own numbers; a text of another
  form, or one varying a number that must stay a constant, is compiled on its own;
- compiled training steps with a symbolic batch size: every size's step equals eager's, and
  the sizes after the second share one module (explain says so);
- the template gives the very bits of the size's own module (reductions over the symbolic
  dimension, across the chunk size, matmuls with it as M and as K), and a size whose code
  takes another form (a product crossing from inline loops to the blocked kernel) gets a
  module of its own and is still right.
"""

from __future__ import annotations

import copy
import ctypes
import struct

import numpy as np
import pytest

import compiler
import dyngrad as dg
import dyngrad.nn.functional as F
from compiler.backends.llvm import driver, jit, matmul, runner, sizes
from dyngrad import nn, optim

RTOL32 = 1e-4


@pytest.fixture(autouse=True)
def seeded():
    dg.manual_seed(7)


def hexd(x: float) -> str:
    return f"0x{struct.unpack('<Q', struct.pack('<d', x))[0]:016X}"


def sum_driver(n: int, scale: float, extra: str = "") -> str:
    """A driver storing sum(i * scale for i < n) into the table's first pointer."""
    return f"""declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
define i32 @drv(ptr %tab) {{
entry:
  %p = load ptr, ptr %tab{extra}
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %loop]
  %acc = phi double [0.0, %entry], [%a2, %loop]
  %f = sitofp i64 %i to double
  %a1 = fmul double %f, {hexd(scale)}
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


# ------------------------------------------------------------------ the literal scanner


def test_split_takes_out_numbers_but_not_names():
    text = "  %t12 = add nuw nsw i64 %i.3, 48\n  call void @dg_d7_body(ptr %s6, i64 -5)\n!9"
    skeleton, values = sizes.split(text)
    assert values == ["48", "-5"]
    assert "%t12" in skeleton and "@dg_d7_body" in skeleton and "i64" in skeleton
    assert "!9" in skeleton


@pytest.mark.parametrize("line, literal, want", [
    ("  %a = icmp slt i64 %i.next, 48\n", "48", "i64"),
    ("  %a = getelementptr inbounds float, ptr %p, i64 1024\n", "1024", "i64"),
    ("  %u = phi i64 [48, %rpad.pre], [%u.next, %rpad]\n", "48", "i64"),
    ("  call void @k(ptr %a, i64 12288)\n", "12288", "i64"),
    ("  %b = fmul float %x, 0x3FE0000000000000\n", "0x3FE0000000000000", "float"),
    ("  %p = alloca float, i64 4096, align 64\n", "4096", "i64"),
    ("  call void @llvm.memcpy.p0.p0.i64(ptr %a, ptr %b, i64 512, i1 false)\n", "512", "i64"),
    ("  %p = alloca [4096 x float], align 64\n", "4096", None),  # an element count
    ("  %p = alloca float, i64 16, align 64\n", "64", None),  # an alignment
    ("  %v = fadd <4 x float> %a, <float 1.0, float 2.0, float 2.0, float 2.0>\n", "1.0",
     None),  # a vector constant
    ("  call void @llvm.prefetch.p0(ptr %p, i32 0, i32 3, i32 1)\n", "3", None),  # immarg
    ("@g = internal global i64 48\n", "48", None),  # not inside a function
    ("  %a = add i64 %x, 0x10\n", "0x10", None),  # (no hex integers in LLVM IR)
])
def test_which_literals_may_become_run_time_values(line, literal, want):
    parts = sizes.LITERAL.split("define void @f() {\nentry:\n" + line + "}\n")
    ks = [k for k, v in enumerate(parts[1::2]) if v == literal]
    assert ks, parts
    assert sizes.literal_type(parts, ks[0]) == want


def test_encode_float_bits():
    assert sizes.encode("48", "i64") == 48 and sizes.encode("-3", "i32") == -3
    assert np.array([sizes.encode(hexd(0.5), "float")], np.int64).view(np.float32)[0] == 0.5
    assert np.array([sizes.encode(hexd(-2.25), "double")], np.int64).view(np.float64)[0] == -2.25
    assert np.array([sizes.encode("1.5", "double")], np.int64).view(np.float64)[0] == 1.5


# ------------------------------------------------------------------ a family by hand


def test_a_family_runs_every_size_from_one_template():
    fam = sizes.Family()
    want = {n: sum(i * (n / 4) for i in range(n)) for n in (5, 7, 11, 100, 2)}
    compiled5, numbers = fam.module(sum_driver(5, 5 / 4))
    assert numbers is None and fam.own == 1  # the first size: its own module
    assert run_sum(compiled5, None) == want[5]
    got = {}
    for n in (7, 11, 100, 2):
        compiled, numbers = fam.module(sum_driver(n, n / 4))
        assert numbers is not None
        got[n] = run_sum(compiled, numbers)
    assert got == {n: want[n] for n in got}
    assert (fam.own, fam.shared, fam.templates) == (1, 4, 1)
    assert len(fam.positions) == 2  # the trip count and the scale


def test_a_size_of_another_form_is_compiled_on_its_own():
    fam = sizes.Family()
    fam.module(sum_driver(5, 1.0))
    fam.module(sum_driver(6, 1.0))
    other = sum_driver(7, 1.0, extra="\n  %unused = add i64 1, 2")
    compiled, numbers = fam.module(other)
    assert numbers is None
    assert run_sum(compiled, None) == sum(range(7))
    assert (fam.own, fam.shared) == (2, 1)


def test_a_number_that_must_stay_a_constant_keeps_sizes_apart():
    def text(n):
        return sum_driver(n, 1.0, extra=f"\n  %buf = alloca [{n} x double], align 8")
    fam = sizes.Family()
    for n in (5, 6, 9):
        compiled, numbers = fam.module(text(n))
        assert numbers is None
        assert run_sum(compiled, None) == sum(range(n))
    assert fam.templates == 0 and fam.own == 3


def test_a_later_size_varying_another_number_makes_a_wider_template():
    def text(n, c):  # c: equal at the first two sizes, then not
        return sum_driver(n, 1.0, extra=f"\n  %q = getelementptr inbounds i8, ptr %p, i64 {c}")
    fam = sizes.Family()
    fam.module(text(5, 8))
    first, nums = fam.module(text(6, 8))
    assert nums is not None and len(fam.positions) == 1
    wider, nums = fam.module(text(9, 16))
    assert wider is not first and len(fam.positions) == 2 and fam.templates == 2
    assert run_sum(wider, nums) == sum(range(9))
    assert run_sum(first, np.array([7], np.int64)) == sum(range(7))  # the old one still runs


def test_the_template_is_valid_ir_with_loads_in_each_entry_block():
    text = sum_driver(5, 1.0)
    parts = sizes.LITERAL.split(text)
    ks = [k for k, v in enumerate(parts[1::2]) if v == "5"]
    t = sizes.template(text, ks, {k: "i64" for k in ks})
    assert "@dg_sizes" in t and "define i32 @drv_sized(ptr %tab, ptr %sizes)" in t
    entry = t.split("define i32 @drv(ptr %tab) {\nentry:\n", 1)[1]
    assert entry.startswith("  %dgz.0.p = getelementptr")
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
    batches = (8, 8, 9, 10, 11, 12, 13, 40, 3, 300, 12, 8, 301)
    for b in batches:
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
    assert len(shared) >= len(v.plans) - 2, (fam.own, fam.shared, sorted(v.plans))
    assert fam.templates <= 2 * len(fam.forms)  # (probes find most numbers at once)
    assert "run one module" in str(compiler.explain(cf))
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
    against a ``dynamic=False`` twin compiling every size alone: the same bits. (float32:
    float64 tanh is not lowered, the plan would not be one driver.)"""
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
    modules = {d: p[0].compiled for d, p in v.plans.items()}
    assert all(modules[big] is not m for d, m in modules.items() if d != big)
    assert len(v.family.forms) == 2


def test_probes_template_a_form_at_its_first_size():
    """The first size of a symbolic variant's family is planned with probes at nearby sizes:
    it already runs a template, and so does every later size — one LLVM compile."""
    w = dg.randn(8, 4)
    f = compiler.compile(lambda x: ((x @ w).tanh() - 0.5).square().mean(), backend="llvm")
    for b in (6, 7, 9, 10, 21, 33, 64, 11, 10, 21, 33, 64, 11):  # (traced, then planned)
        x = dg.randn(b, 8)
        want = float(((x @ w).tanh() - 0.5).square().mean())
        assert abs(float(f(x)) - want) <= RTOL32 * max(1.0, abs(want))
    (v,) = f.variants
    assert v.family.own == 0 and v.family.templates == 1, (v.family.own, v.family.templates)
    assert all(p[0].sizes is not None for p in v.plans.values())


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


def test_a_template_llvm_refuses_leaves_the_sizes_to_their_own_modules(monkeypatch):
    """Should a number the scanner lets through be one LLVM needs constant after all, the
    template fails to compile: the sizes are compiled on their own, still right."""
    def text(n):
        return sum_driver(n, 1.0, extra=f"\n  %buf = alloca double, i64 2, align {8 * n}")
    monkeypatch.setattr(sizes, "literal_type", lambda parts, k: "i64")
    fam = sizes.Family()
    for n in (1, 2, 4):
        compiled, numbers = fam.module(text(n))
        assert numbers is None
        assert run_sum(compiled, None) == sum(range(n))
    assert fam.templates == 0 and fam.own == 3


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
    return {
        "layer_norm": lambda x, i: F.layer_norm(x, (6,), weight=g) * 2.0,
        "cross_entropy": lambda x, i: F.cross_entropy(x @ w, i),
        "log_softmax_over_batch": lambda x, i: F.log_softmax(x, dim=0).sum(dim=1),
        "transposed_broadcast": lambda x, i: (x.T * x.mean(dim=1)).exp().sum(dim=0),
        "cat_and_slice": lambda x, i: dg.cat([x, x[1:] * 2.0, x[:1]], dim=0).tanh().amax(dim=0),
        "gather_rows": lambda x, i: (x.gather(1, i.reshape(-1, 1)) - x.mean()).sigmoid(),
        "where_and_clip": lambda x, i: dg.where(x > 0.1, x.sqrt().abs(), x * x).sum(),
        "dropout": lambda x, i: F.dropout(x.relu(), p=0.3, training=True).sum(dim=1),
    }


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
    assert v.family.shared >= 4, (v.family.shared, v.family.own, len(v.family.forms))


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


def test_probes_guess_matmul_choices_without_measuring(monkeypatch):
    """Probes plan products at sizes that may never run: under ``tune.guessing()`` an
    undecided shape takes the nearest decided shape's choice, is not timed and not kept."""
    from compiler.backends.llvm import tune

    def measured(*args):
        raise AssertionError("a probe's product was timed")
    monkeypatch.setattr(tune, "measure", measured)
    monkeypatch.setattr(tune, "_load", lambda: {})
    monkeypatch.setattr(tune.blas, "pool_threads", lambda b: 1)  # (BLAS on one thread)
    known = (tune.machine_key(), tune.shape_key("float32", 500, 300, 700, False, False))
    monkeypatch.setitem(tune._decided, known, "blas")
    if tune.choose("float32", 500, 300, 700, False, False) != "blas":
        pytest.skip("this machine or setting decides products without timing them")
    with tune.guessing():
        assert tune.choose("float32", 517, 300, 700, False, False) == "blas"
        assert tune.choose("float64", 517, 300, 700, False, False) == "generated"
    assert (tune.machine_key(), tune.shape_key("float32", 517, 300, 700, False, False)) \
        not in tune._decided
    with pytest.raises(AssertionError, match="timed"):  # (outside: measured as ever)
        tune.choose("float32", 517, 300, 700, False, False)


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


@pytest.mark.parametrize("name", ["float64_tanh", "randn_noise"])
def test_hybrid_plans_of_a_symbolic_variant_share_a_template_too(name):
    """A graph with a group in numpy (float64 tanh; normal random numbers) runs a hybrid
    plan: its kernels' module is a family template as well — the run holds the module's
    lock and gives it the size's numbers first — with the bits of a module per size."""
    w = dg.tensor(np.random.default_rng(5).standard_normal((6, 4)))
    fn = {"float64_tanh": lambda x: ((x @ w).tanh() * 2.0 + 1.0).sum(dim=0),
          "randn_noise": lambda x: (x @ w + dg.randn(x.shape[0], 4, dtype=dg.float64))
          .relu().sum(dim=0)}[name]
    r = np.random.default_rng(6)
    sym = against_modules_per_size(fn, lambda b: (dg.tensor(r.standard_normal((b, 6))),),
                                   (3, 4, 5, 9, 300, 17, 2, 40), rtol=1e-12, atol=1e-12,
                                   seed=1)
    (v,) = sym.variants
    assert all(isinstance(p[0], runner.HybridPlan) for p in v.plans.values())
    assert sum(p[0].sized is not None for p in v.plans.values()) >= 4
    assert v.family.templates >= 1 and v.family.shared >= 4
