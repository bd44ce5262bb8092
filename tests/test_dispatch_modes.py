"""Dispatch modes: a mode sees every operation (forward, backward's vjp ops, optimizer
updates), every read of tensor data into Python and every change of state; modes nest; and
the mode stack survives exceptions."""

from __future__ import annotations

import numpy as np
import pytest

import dyngrad as dg
from dyngrad.dispatch import STATE, DispatchMode, active_modes, dispatch, push_mode, suspend
from dyngrad.forward_ad import jvp


class Recorder(DispatchMode):
    """Records op names, reads (tensor, kind) and writes (tensor, what, value)."""

    def __init__(self, name="rec", log=None):
        self.name = name
        self.ops: list[str] = []
        self.reads: list[tuple] = []
        self.writes: list[tuple] = []
        self.log = log  # shared list to see the order across modes

    def dispatch(self, prim, args, params):
        self.ops.append(prim.name)
        if self.log is not None:
            self.log.append((self.name, prim.name))
        return super().dispatch(prim, args, params)

    def on_read(self, tensor, kind):
        self.reads.append((tensor, kind))

    def on_write(self, tensor, what, value):
        self.writes.append((tensor, what, value))

    def read_kinds(self):
        return [k for _, k in self.reads]

    def write_kinds(self):
        return [w for _, w, _ in self.writes]

    def clear(self):
        self.ops.clear()
        self.reads.clear()
        self.writes.clear()


@pytest.fixture(autouse=True)
def no_mode_leaks():
    assert active_modes() == ()
    yield
    assert active_modes() == ()


# --------------------------------------------------------------------------- operations


def test_recording_mode_sees_every_forward_op():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    x = dg.tensor([3.0, 4.0])
    with push_mode(Recorder()) as rec:
        y = (w * x).exp().sum()
    assert rec.ops == ["mul", "exp", "sum"]
    assert y.item() == pytest.approx(np.exp(3.0) + np.exp(8.0))


def test_recording_mode_sees_creation_and_promotion_ops():
    with push_mode(Recorder()) as rec:
        z = dg.zeros(3)
        i = dg.arange(3)
        _ = i + z        # int64 + float32: a cast, then the add
    assert rec.ops == ["full", "iota", "cast", "add"]


def test_mode_result_equals_eager_result():
    dg.manual_seed(0)
    a = dg.randn(3, 4)
    b = dg.randn(4, 2)
    eager = (a @ b).tanh().sum(1)
    with push_mode(Recorder()) as rec:
        moded = (a @ b).tanh().sum(1)
    np.testing.assert_array_equal(eager.numpy(), moded.numpy())
    assert rec.ops == ["matmul", "tanh", "sum"]


def test_backward_ops_go_through_dispatch():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    x = dg.tensor([3.0, 4.0])
    y = (w * x).exp().sum()
    with push_mode(Recorder()) as rec:
        y.backward()
    # the seed gradient (ones) and the vjp rules: sum's (broadcast back), exp's (·y), mul's (·x)
    assert rec.ops[0] == "full"
    assert "broadcast" in rec.ops
    assert rec.ops.count("mul") == 2
    assert rec.ops[-1] == "mul"
    np.testing.assert_allclose(w.grad.numpy(), np.array([3.0, 4.0]) * np.exp([3.0, 8.0]),
                               rtol=1e-6)


def test_whole_step_forward_backward_and_update_is_seen():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    x = dg.tensor([3.0, 4.0])
    with push_mode(Recorder()) as rec:
        loss = ((w * x) ** 2).mean()
        n_forward = len(rec.ops)
        loss.backward()
        n_backward = len(rec.ops) - n_forward
        with dg.no_grad():
            w.sub_(0.1 * w.grad)
        update = rec.ops[n_forward + n_backward:]
    assert n_forward >= 3 and n_backward >= 3
    assert update == ["mul", "sub"]
    inplace = [(t, v) for t, what, v in rec.writes if what == "inplace"]
    assert len(inplace) == 1 and inplace[0][0] is w
    np.testing.assert_allclose(w.detach().numpy(), [1.0 - 0.1 * 9.0, 2.0 - 0.1 * 32.0],
                               rtol=1e-6)


def test_autograd_grad_with_create_graph_ops_go_through_dispatch():
    x = dg.tensor(2.0, requires_grad=True)
    y = x * x * x
    with push_mode(Recorder()) as rec:
        (g,) = dg.autograd.grad(y, x, create_graph=True)
    assert rec.ops.count("mul") >= 4
    assert g.requires_grad and g.item() == pytest.approx(12.0)


def test_mode_can_replace_an_op():
    class Doubler(DispatchMode):
        def dispatch(self, prim, args, params):
            out = super().dispatch(prim, args, params)
            if prim.name == "exp":
                with suspend(self):
                    out = out * 2.0
            return out

    with push_mode(Doubler()):
        y = dg.tensor([0.0]).exp()
    assert y.tolist() == [2.0]


# --------------------------------------------------------------------------- reads


def _read_kind(action):
    with push_mode(Recorder()) as rec:
        action()
    return rec.read_kinds()


@pytest.mark.parametrize("kind,action", [
    ("bool", lambda t: bool(t[0])),
    ("bool", lambda t: 1 if t[0] > 0 else 0),
    ("item", lambda t: t[0].item()),
    ("float", lambda t: float(t[1])),
    ("int", lambda t: int(t[2])),
    ("tolist", lambda t: t.tolist()),
    ("numpy", lambda t: t.numpy()),
    ("array", lambda t: np.asarray(t)),
    ("format", lambda t: repr(t)),
    ("format", lambda t: str(t)),
    ("format", lambda t: f"{t[0]:.3f}"),
    ("index", lambda t: list(range(dg.tensor(2)))),
    ("index", lambda t: [1, 2, 3][dg.tensor(1)]),
    ("dlpack", lambda t: np.from_dlpack(t)),
    ("nonzero", lambda t: t[t > 1.5]),
])
def test_value_reads_are_reported_with_their_kind(kind, action):
    t = dg.tensor([1.0, 2.0, 3.0])
    kinds = _read_kind(lambda: action(t))
    assert kinds == [kind]


def test_read_reports_the_tensor_that_was_read():
    t = dg.tensor([1.0, 2.0])
    s = t.sum()
    with push_mode(Recorder()) as rec:
        s.item()
        t.tolist()
    assert [r[0] for r in rec.reads] == [s, t] or \
        [id(r[0]) for r in rec.reads] == [id(s), id(t)]


def test_nonzero_read_reports_the_mask():
    t = dg.tensor([1.0, 2.0, 3.0])
    mask = t > 1.5
    with push_mode(Recorder()) as rec:
        out = t[mask]
    assert [(id(r), k) for r, k in rec.reads] == [(id(mask), "nonzero")]
    assert out.tolist() == [2.0, 3.0]


def test_ops_without_reads_report_none():
    t = dg.tensor([1.0, 2.0, 3.0])
    with push_mode(Recorder()) as rec:
        _ = (t * 2).sum(), t[1:], t.reshape(3, 1), t.detach()
    assert rec.reads == []


def test_data_dependent_python_control_flow_is_visible_to_modes():
    x = dg.tensor([1.0, -2.0])
    with push_mode(Recorder()) as rec:
        b = x * 2
        while b.abs().sum() < 100:
            b = b * 2
    assert rec.read_kinds().count("bool") == 5 + 1
    assert b.abs().sum().item() == 192.0


# --------------------------------------------------------------------------- writes


def test_backward_setting_grad_is_reported():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    loss = (w * w).sum()
    with push_mode(Recorder()) as rec:
        loss.backward()
    grads = [(t, v) for t, what, v in rec.writes if what == "grad"]
    assert len(grads) == 1 and grads[0][0] is w and grads[0][1] is w.grad


def test_backward_accumulating_into_existing_grad_is_an_inplace_write_on_it():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    buf = w.grad
    loss = (w * w).sum()
    with push_mode(Recorder()) as rec:
        loss.backward()
    assert [(t is buf, what) for t, what, _ in rec.writes] == [(True, "inplace")]
    assert w.grad.tolist() == [4.0, 8.0]


def test_user_setting_and_clearing_grad_is_reported():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    g = dg.ones(2)
    with push_mode(Recorder()) as rec:
        w.grad = g
        w.grad = None
    assert [(t is w, what, v) for t, what, v in rec.writes] == \
        [(True, "grad", g), (True, "grad", None)]


def test_zeroing_grad_in_place_is_reported():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    (w * w).sum().backward()
    with push_mode(Recorder()) as rec:
        w.grad.zero_()
    assert rec.write_kinds() == ["inplace"]


def test_assigning_data_is_reported():
    w = dg.tensor([1.0, 2.0], requires_grad=True)
    new = dg.tensor([5.0, 6.0])
    with push_mode(Recorder()) as rec:
        w.data = new
    assert [(t is w, what, v is new) for t, what, v in rec.writes] == [(True, "data", True)]
    assert w.tolist() == [5.0, 6.0]


def test_requires_grad_changes_are_reported():
    t = dg.tensor([1.0])
    with push_mode(Recorder()) as rec:
        t.requires_grad_(True)
        t.requires_grad = False
        t.requires_grad_()
        (t * 2).detach_()
    assert [(what, v) for _, what, v in rec.writes] == \
        [("requires_grad", True), ("requires_grad", False), ("requires_grad", True),
         ("requires_grad", False)]


@pytest.mark.parametrize("name,action", [
    ("add_", lambda t: t.add_(1.0)),
    ("mul_", lambda t: t.mul_(2.0)),
    ("setitem", lambda t: t.__setitem__(0, 5.0)),
    ("setitem_slice", lambda t: t.__setitem__(slice(1, None), dg.tensor([7.0, 8.0]))),
    ("iadd", lambda t: t.__iadd__(1.0)),
    ("zero_", lambda t: t.zero_()),
    ("copy_", lambda t: t.copy_(dg.tensor([1.0, 1.0, 1.0]))),
    ("view_add_", lambda t: t[1:].add_(1.0)),
])
def test_in_place_changes_are_reported(name, action):
    t = dg.tensor([1.0, 2.0, 3.0])
    expected = t.numpy().copy()
    with push_mode(Recorder()) as rec:
        action(t)
    assert rec.write_kinds() == ["inplace"]
    written, _, value = rec.writes[0]
    assert written._storage is t._storage
    assert isinstance(value, dg.Tensor) and value.shape == written.shape
    assert not np.array_equal(t.numpy(), expected) or name in ("copy_",)


def test_in_place_under_mode_gives_same_values_as_eager():
    for record in (False, True):
        t = dg.tensor([1.0, 2.0, 3.0, 4.0])
        if record:
            with push_mode(Recorder()):
                t[1:3] = dg.tensor([9.0, 9.0])
                t += 1
        else:
            t[1:3] = dg.tensor([9.0, 9.0])
            t += 1
        assert t.tolist() == [2.0, 10.0, 10.0, 5.0]
        assert t._version == 2


# --------------------------------------------------------------------------- nesting


def test_modes_nest_top_sees_op_first_and_default_passes_it_down():
    log = []
    with push_mode(Recorder("outer", log)) as outer:
        with push_mode(Recorder("inner", log)) as inner:
            assert active_modes() == (outer, inner)
            dg.tensor([1.0]).exp()
    assert log == [("inner", "exp"), ("outer", "exp")]
    assert inner.ops == outer.ops == ["exp"]


def test_suspend_routes_ops_issued_by_a_mode_to_the_one_below():
    log = []

    class Expander(Recorder):
        """Turns every exp into exp and an extra add, issued while suspended."""

        def dispatch(self, prim, args, params):
            self.ops.append(prim.name)
            log.append((self.name, prim.name))
            with suspend(self):
                assert self not in active_modes()
                out = dispatch(prim, *args, **params)
                if prim.name == "exp":
                    out = out + 0.0
            assert self in active_modes()
            return out

    with push_mode(Recorder("below", log)) as below:
        with push_mode(Expander("top")) as top:
            dg.tensor([0.0]).exp()
    assert top.ops == ["exp"]
    assert below.ops == ["exp", "add"]
    assert log == [("top", "exp"), ("below", "exp"), ("below", "add")]


def test_suspend_takes_the_modes_above_off_too():
    a, b, c = Recorder("a"), Recorder("b"), Recorder("c")
    with push_mode(a), push_mode(b), push_mode(c):
        with suspend(b):
            assert active_modes() == (a,)
            dg.zeros(1)
        assert active_modes() == (a, b, c)
    assert a.ops == ["full"] and b.ops == [] and c.ops == []


def test_reads_and_writes_are_reported_to_every_active_mode():
    t = dg.tensor([1.0, 2.0])
    with push_mode(Recorder("outer")) as outer, push_mode(Recorder("inner")) as inner:
        t.tolist()
        t.add_(1.0)
    for m in (outer, inner):
        assert m.read_kinds() == ["tolist"]
        assert m.write_kinds() == ["inplace"]


def test_forward_mode_nests_over_a_recording_mode():
    x = dg.tensor([0.5, 1.0], dtype=dg.float64)
    v = dg.tensor([1.0, 0.0], dtype=dg.float64)
    with push_mode(Recorder()) as rec:
        y, dy = jvp(lambda t: (t * t).sin(), (x,), (v,))
    # the recorder below JvpMode sees the primal ops and the tangent (jvp rule) ops
    assert rec.ops[:2] == ["mul", "sin"] or {"mul", "sin"} <= set(rec.ops)
    assert rec.ops.count("cos") == 1
    np.testing.assert_allclose(dy.numpy(), [2 * 0.5 * np.cos(0.25), 0.0])


def test_same_mode_object_can_be_pushed_twice_in_sequence():
    rec = Recorder()
    with push_mode(rec):
        dg.zeros(1)
    with push_mode(rec):
        dg.ones(1)
    assert rec.ops == ["full", "full"]


# --------------------------------------------------------------------------- robustness


def test_no_mode_pushed_means_an_empty_stack():
    assert active_modes() == ()
    assert STATE.modes == []
    y = dg.tensor([1.0]) + 1.0
    assert y.tolist() == [2.0]


def test_stack_restored_after_exception_in_user_code():
    rec = Recorder()
    with pytest.raises(ValueError, match="boom"):
        with push_mode(rec):
            dg.zeros(2)
            raise ValueError("boom")
    assert active_modes() == ()


def test_stack_restored_after_op_error_inside_mode():
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with push_mode(Recorder()):
            dg.ones(2, 3) @ dg.ones(4, 5)
    assert active_modes() == ()


def test_stack_restored_after_exception_in_the_mode_itself():
    class Refuses(DispatchMode):
        def dispatch(self, prim, args, params):
            raise RuntimeError(f"refused {prim.name}")

        def on_read(self, tensor, kind):
            raise RuntimeError(f"refused read {kind}")

    t = dg.tensor([1.0])
    with pytest.raises(RuntimeError, match="refused exp"):
        with push_mode(Refuses()):
            t.exp()
    with pytest.raises(RuntimeError, match="refused read bool"):
        with push_mode(Refuses()):
            bool(t)
    assert active_modes() == ()
    assert t.exp().tolist() == pytest.approx([np.e])


def test_stack_restored_after_exception_while_suspended():
    class Fails(DispatchMode):
        def dispatch(self, prim, args, params):
            with suspend(self):
                raise RuntimeError("inside suspend")

    outer = Recorder()
    with push_mode(outer):
        with pytest.raises(RuntimeError, match="inside suspend"):
            with push_mode(Fails()):
                dg.zeros(1)
        assert active_modes() == (outer,)
    assert active_modes() == ()


def test_stack_restored_after_failing_backward_inside_mode():
    x = dg.tensor([1.0], requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        with push_mode(Recorder()):
            y.backward()
    assert active_modes() == ()


def test_modes_exited_out_of_order_raise():
    a, b = Recorder("a"), Recorder("b")
    ctx_a, ctx_b = push_mode(a), push_mode(b)
    ctx_a.__enter__()
    ctx_b.__enter__()
    with pytest.raises(RuntimeError, match="out of order"):
        ctx_a.__exit__(None, None, None)
    ctx_b.__exit__(None, None, None)   # b is on top: it leaves normally
    assert active_modes() == (a,)
    STATE.modes.remove(a)  # the broken stack is the test's own doing; reset it


def test_grad_mode_is_independent_of_dispatch_modes():
    x = dg.tensor([1.0], requires_grad=True)
    with push_mode(Recorder()):
        with dg.no_grad():
            assert not (x * 2).requires_grad
        assert (x * 2).requires_grad
