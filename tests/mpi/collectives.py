"""The collectives on 2 ranks (run by tests/test_distributed_mpi.py): every op and dtype, in
place and out of place, async, autograd through the functional forms, a compiled function
that calls one, and the cost of the ranks' agreement check."""

from __future__ import annotations

import datetime
import time
import warnings

import numpy as np
from checks import check, report, run_checks

import compiler
import dyngrad as dg
import dyngrad.distributed as dist
import dyngrad.distributed.nn.functional as dF
from dyngrad.distributed.process_group import default_group

dist.init_process_group("mpi", timeout=datetime.timedelta(seconds=60))
R, W = dist.get_rank(), dist.get_world_size()
assert W == 2, "run on 2 ranks"
Op = dist.ReduceOp

INTS = ["int64", "int32", "int16", "int8", "uint8"]
FLOATS = ["float32", "float64"]


def mine(dtype: str) -> np.ndarray:
    """This rank's values: rank 0 [1, 2, 3], rank 1 [3, 1, 2] (bool: their parity)."""
    a = np.array([[1, 2, 3], [3, 1, 2]][R])
    return (a % 2 == 1) if dtype == "bool" else a.astype(dtype)


BOTH = np.array([[1, 2, 3], [3, 1, 2]])


@check
def all_reduce_sum_of_every_dtype():
    for dtype in [*FLOATS, *INTS, "bool"]:
        t = dg.tensor(mine(dtype))
        dist.all_reduce(t)
        want = (BOTH % 2 == 1).any(0) if dtype == "bool" else BOTH.sum(0)
        assert t.dtype.name == dtype and t.tolist() == want.tolist(), (dtype, t.tolist())


@check
def all_reduce_max_min_product_avg_and_bitwise():
    cases = [(Op.MAX, BOTH.max(0)), (Op.MIN, BOTH.min(0)), (Op.PRODUCT, BOTH.prod(0))]
    for dtype in [*FLOATS, "int64", "int8"]:
        for op, want in cases:
            t = dg.tensor(mine(dtype))
            dist.all_reduce(t, op=op)
            assert t.tolist() == want.tolist(), (dtype, op, t.tolist())
    for dtype in FLOATS:
        t = dg.tensor(mine(dtype))
        dist.all_reduce(t, op=Op.AVG)
        assert t.tolist() == (BOTH.sum(0) / 2).tolist(), (dtype, t.tolist())
    for op, fn in [(Op.BAND, np.bitwise_and), (Op.BOR, np.bitwise_or),
                   (Op.BXOR, np.bitwise_xor)]:
        t = dg.tensor(mine("int32"))
        dist.all_reduce(t, op=op)
        assert t.tolist() == fn(BOTH[0], BOTH[1]).tolist(), (op, t.tolist())
    t = dg.tensor(mine("bool"))
    dist.all_reduce(t, op=Op.PRODUCT)  # (a logical and)
    assert t.tolist() == (BOTH % 2 == 1).all(0).tolist()


@check
def all_reduce_refuses_avg_of_integers_on_every_rank_before_communicating():
    seq = default_group().seq
    try:
        dist.all_reduce(dg.tensor([1, 2]), op=Op.AVG)
    except TypeError as exc:
        assert "ReduceOp.AVG of a int64 tensor" in str(exc)
    else:
        raise AssertionError("AVG of int64 did not raise")
    assert default_group().seq == seq  # (nothing was sent)


@check
def in_place_writes_bump_the_version_and_leave_a_leaf_a_leaf():
    w = dg.ones(3, requires_grad=True)
    v = w._version
    dist.all_reduce(w)
    assert w.tolist() == [2.0] * 3 and w._version == v + 1
    assert w.is_leaf and w.requires_grad and w.grad_fn is None
    x = dg.ones(3, requires_grad=True)
    y = x * 1.0
    z = y * y  # saves y for backward
    dist.all_reduce(y)
    try:
        z.sum().backward()
    except RuntimeError as exc:
        assert "modified by an inplace operation" in str(exc)
    else:
        raise AssertionError("backward through a tensor overwritten by all_reduce passed")


@check
def a_non_contiguous_tensor_is_reduced_through_a_copy_and_written_back():
    base = dg.arange(6.0).reshape(2, 3) * (R + 1)
    view = base.T
    dist.all_reduce(view)
    assert base.tolist() == (np.arange(6.0).reshape(2, 3) * 3).tolist()
    assert not view.is_contiguous()


@check
def broadcast_from_either_rank():
    for src in (0, 1):
        t = dg.tensor(mine("float32"))
        dist.broadcast(t, src=src)
        assert t.tolist() == BOTH[src].tolist(), (src, t.tolist())
    b = dg.tensor(mine("bool"))
    dist.broadcast(b, src=1)
    assert b.tolist() == (BOTH[1] % 2 == 1).tolist()


@check
def broadcast_from_a_rank_given_as_a_numpy_integer():
    best = np.argmax([1.0, 5.0])  # (np.int64(1): PyTorch takes it as a rank)
    t = dg.tensor(mine("float32"))
    dist.broadcast(t, src=best)
    assert t.tolist() == BOTH[1].tolist()
    x = dg.tensor(mine("float64"), requires_grad=True)
    assert dF.broadcast(x, src=best).tolist() == BOTH[1].tolist()


@check
def all_gather_into_a_list_and_into_one_tensor_concatenated_or_stacked():
    out = [dg.zeros(3, dtype=dg.int64) for _ in range(W)]
    dist.all_gather(out, dg.tensor(mine("int64")))
    assert [t.tolist() for t in out] == BOTH.tolist()
    flat = dg.zeros(2 * 3)
    dist.all_gather_into_tensor(flat, dg.tensor(mine("float32")))
    assert flat.tolist() == BOTH.reshape(-1).tolist()
    stacked = dg.zeros(2, 3)
    dist.all_gather_into_tensor(stacked, dg.tensor(mine("float32")))
    assert stacked.tolist() == BOTH.tolist()


@check
def all_gather_into_tensor_in_place_from_this_ranks_block_of_the_output():
    out = dg.zeros(2, 3)  # (PyTorch's in-place form: the input is this rank's row of it)
    out[R] = dg.tensor(mine("float32"))
    dist.all_gather_into_tensor(out, out[R])
    assert out.tolist() == BOTH.tolist()
    flat = dg.zeros(6, dtype=dg.int64)
    flat[3 * R:3 * R + 3] = dg.tensor(mine("int64"))
    dist.all_gather_into_tensor(flat, flat[3 * R:3 * R + 3])
    assert flat.tolist() == BOTH.reshape(-1).tolist()


@check
def reduce_scatter_from_a_list_and_from_one_tensor():
    out = dg.zeros(3)
    inputs = [dg.tensor(mine("float32")) * (k + 1) for k in range(W)]
    dist.reduce_scatter(out, inputs)
    assert out.tolist() == (BOTH.sum(0) * (R + 1)).tolist()
    out = dg.zeros(2)
    full = dg.arange(4.0) + 10 * R  # rank 0 [0 1 2 3], rank 1 [10 11 12 13]
    dist.reduce_scatter_tensor(out, full, op=Op.AVG)
    assert out.tolist() == [[5.0, 6.0], [7.0, 8.0]][R]


@check
def async_collectives_complete_in_order_and_overlap():
    ts = [dg.full((1000,), float(R + k)) for k in range(4)]
    works = [dist.all_reduce(t, async_op=True) for t in ts]
    late = dg.tensor(mine("float64"))
    works.append(dist.broadcast(late, src=1, async_op=True))
    done = [w.wait() for w in works]
    assert done == [True] * 5 and all(w.is_completed() for w in works)
    assert [t[0].item() for t in ts] == [1.0 + 2 * k for k in range(4)]
    assert late.tolist() == BOTH[1].tolist()
    w = dist.barrier(async_op=True)
    deadline = time.perf_counter() + 10
    while not w.is_completed():
        assert time.perf_counter() < deadline, "barrier never completed"
    assert w.wait(timeout=datetime.timedelta(seconds=5)) is True


@check
def functional_all_reduce_gradient_is_the_all_reduced_upstream_gradient():
    rng = np.random.default_rng(R)
    x = dg.tensor(rng.standard_normal(4), requires_grad=True)
    g = dg.tensor(rng.standard_normal(4))  # this rank's upstream gradient
    y = dF.all_reduce(x * 2.0)
    y.backward(g)
    total = g.clone()
    dist.all_reduce(total)
    assert np.allclose(x.grad.numpy(), 2 * total.numpy(), rtol=1e-15, atol=0)
    y_avg = dF.all_reduce(x, op=Op.AVG)
    x.grad = None
    y_avg.backward(g)
    assert np.allclose(x.grad.numpy(), total.numpy() / 2, rtol=1e-15, atol=0)
    assert y.grad_fn.name() == "AllReduceBackward"


@check
def functional_gradients_match_finite_differences_of_the_whole_job():
    """The job computes L = Σ_r L_r with L_r = sum(c_r * f(x_0, x_1)); each rank's gradient
    of its own input is compared with a central difference of L, evaluated by all ranks."""
    rng = np.random.default_rng(100 + R)
    x0 = rng.standard_normal(4)
    c = dg.tensor(rng.standard_normal(8))

    def losses(x):
        ag = dF.all_gather(x * x)
        y = dF.reduce_scatter(dg.empty(4, dtype=dg.float64), [ag[0] * ag[1], ag[1] + x])
        z = dF.broadcast(y * 3.0, src=1)
        s = dF.all_reduce(dg.cat([z, y]) * c)
        return s.sum()

    x = dg.tensor(x0, requires_grad=True)
    losses(x).backward()
    eps = 1e-6
    for i in range(4):
        total = []
        for sign in (1, -1):
            for who in range(W):  # every rank evaluates: only `who` moves its x_i
                shifted = x0.copy()
                if who == R:
                    shifted[i] += sign * eps
                out = dg.tensor([losses(dg.tensor(shifted)).item()], dtype=dg.float64)
                dist.all_reduce(out)
                if who == R:
                    total.append(out.item())
        numeric = (total[0] - total[1]) / (2 * eps)
        assert abs(numeric - x.grad[i].item()) < 1e-5 * max(1.0, abs(numeric)), \
            (i, numeric, x.grad[i].item())


@check
def all_reduce_max_is_not_differentiable_and_says_so():
    x = dg.ones(2, requires_grad=True)
    y = dF.all_reduce(x, op=Op.MAX)
    try:
        y.sum().backward()
    except RuntimeError as exc:
        assert "ReduceOp.MAX has no gradient here" in str(exc)
    else:
        raise AssertionError("backward through all_reduce MAX passed")


@check
def a_compiled_function_with_a_collective_compiles_and_communicates():
    def f(t):
        u = t * 2.0
        dist.all_reduce(u)
        return u + 1.0

    cf = compiler.compile(f)
    for k in range(4):
        x = dg.full((3,), float(k + R))
        assert cf(x).tolist() == f(x).tolist() == [2.0 * (2 * k + 1) + 1.0] * 3
    assert not cf.fallbacks and len(cf.variants) == 1, cf.fallbacks


@check
def barrier_and_differentiable_collectives_in_a_compiled_function_fall_back_naming_them():
    def f(t):
        dist.barrier()
        return dist.nn.functional.all_reduce(t * 2.0) + 1.0

    cf = compiler.compile(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("runs eagerly from now on")
        for k in range(3):
            x = dg.full((3,), float(k + R))
            assert cf(x).tolist() == f(x).tolist()
    assert cf.fallbacks and all("dist.barrier, an MPI collective the compiler does not "
                                "record" in r for r in cf.fallbacks), cf.fallbacks


@check
def the_agreement_check_cost():
    """Per collective: an all-reduce of 1 float32 with the check, against mpi4py's
    Iallreduce + Wait alone on the same communicator (the figures docs/distributed.md
    quotes)."""
    g = default_group()
    mpi, a = g.mpi, np.ones(1, dtype=np.float32)
    t = dg.ones(1)
    n = 300
    for _ in range(20):
        dist.all_reduce(t)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(t)
    t1 = time.perf_counter()
    dist.barrier()
    t2 = time.perf_counter()
    for _ in range(n):
        g.comm.Iallreduce(mpi.IN_PLACE, a, op=mpi.SUM).Wait()
    t3 = time.perf_counter()
    report("us_per_all_reduce_checked", (t1 - t0) / n * 1e6)
    report("us_per_all_reduce_mpi4py", (t3 - t2) / n * 1e6)


run_checks(R)
