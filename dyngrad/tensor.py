"""Tensor and Storage.

A :class:`Tensor` is an ndarray (``_data``, possibly a view) plus a :class:`Storage` shared by
every tensor viewing the same memory. The storage carries the **version counter**: every
in-place change through any of those tensors bumps it, and tensors saved for backward check
it, so modifying a saved value through a view is caught.

Views made by movement operations (``reshape``/``view``, ``transpose``/``permute``, slicing,
``expand``) remember their base and how they were made from it, so an in-place change through a
view can be expressed functionally on the base for autograd (PyTorch's ``CopySlices``).
``.data`` and ``detach()`` share storage but are not autograd views.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import numpy as np

from . import dtypes as _dt
from .autograd.grad_mode import no_grad
from .autograd.graph import AccumulateGrad, AccumulatorHook, RemovableHandle
from .dispatch import STATE, report_attr, report_new, report_read, report_write
from .dtypes import DType

__all__ = ["Tensor", "Storage", "UPWARD", "to_array", "device", "CPU", "check_device",
           "get_default_device", "set_default_device", "to_arguments"]

# Note [devices]: dyngrad runs on the CPU only and answers as a CPU-only PyTorch build does:
# ``device`` parses and compares every device string PyTorch knows, but a tensor can only be
# made on (or moved to) the CPU. Asking for CUDA raises the AssertionError a CPU-only PyTorch
# raises ("... not compiled with CUDA enabled"), so scripts that probe for it behave alike.
# The type lives in the tensor core because ``Tensor.device`` returns it.
DEVICE_TYPES = ("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip",
                "ve", "fpga", "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia",
                "privateuseone")
NO_CUDA = "dyngrad not compiled with CUDA enabled"
NO_ACCELERATOR = "Cannot access accelerator device when none is available."


class device:
    """A device, as ``torch.device``: a type (``'cpu'``, ``'cuda'``, …) and an optional index.

    >>> dg.device("cpu"), dg.device("cuda:1"), dg.device("cuda", 0).index
    (device(type='cpu'), device(type='cuda', index=1), 0)
    """

    __slots__ = ("type", "index")

    def __init__(self, type, index: int | None = None) -> None:
        if isinstance(type, device):
            type, index = type.type, type.index
        elif isinstance(type, (int, np.integer)) and not isinstance(type, bool):
            raise RuntimeError(NO_ACCELERATOR)  # a bare index means the accelerator's
        elif not isinstance(type, str):
            raise TypeError(f"device() received an invalid combination of arguments - got "
                            f"({_builtin_type(type).__name__})")
        else:
            kind, sep, idx = type.partition(":")
            if not type:
                raise RuntimeError("Device string must not be empty")
            if kind not in DEVICE_TYPES:
                raise RuntimeError(f"Expected one of {', '.join(DEVICE_TYPES)} device type at "
                                   f"start of device string: {type}")
            if sep:
                if not idx.isdigit():
                    raise RuntimeError(f"Invalid device string: '{type}'")
                if index is not None:
                    raise RuntimeError(f"type (string) must not include an index because "
                                       f"index was passed explicitly: {type}")
                index = int(idx)
            type = kind
        if index is not None and index < 0:
            raise RuntimeError(f"Device index must not be negative, got {index}")
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "index", None if index is None else int(index))

    def __setattr__(self, name, value):
        raise AttributeError(f"attribute '{name}' of 'device' objects is not writable")

    def __repr__(self) -> str:
        if self.index is None:
            return f"device(type='{self.type}')"
        return f"device(type='{self.type}', index={self.index})"

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __eq__(self, other) -> bool:
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __reduce__(self):
        return (device, (self.type, self.index))


_builtin_type = type
CPU = device("cpu")


def check_device(dev) -> None:
    """Accept ``dev`` (None, a string, an index or a :class:`device`) if it names the CPU;
    raise as a CPU-only PyTorch does for any other device (see Note [devices])."""
    if dev is None or dev is CPU or dev == "cpu":
        return
    d = device(dev)
    if d.type == "cuda":
        raise AssertionError(NO_CUDA)
    if d.type != "cpu":
        raise RuntimeError(f"device '{d}' is not available: dyngrad computes on the CPU "
                           f"only (use device='cpu')")


def to_arguments(args: tuple, kwargs: dict) -> tuple:
    """(dtype or None, copy) of a ``.to(...)`` call in any of PyTorch's forms —
    ``to(dtype)``, ``to(device, dtype=None, non_blocking=False, copy=False)``,
    ``to(other_tensor)`` — after checking the device is the CPU (``Tensor.to`` and
    ``Module.to`` share it). A string names a device when it starts with a device type."""
    dtype = kwargs.pop("dtype", None)
    dev = kwargs.pop("device", None)
    copy = kwargs.pop("copy", False)
    kwargs.pop("non_blocking", None)
    kwargs.pop("memory_format", None)
    if kwargs:
        raise TypeError(f"to() got an unexpected keyword argument '{next(iter(kwargs))}'")
    for a in args:
        if isinstance(a, Tensor):
            dtype = a.dtype
        elif isinstance(a, bool):
            continue  # non_blocking or copy, given positionally
        elif isinstance(a, (device, int)) or \
                isinstance(a, str) and a.partition(":")[0] in DEVICE_TYPES:
            dev = a
        elif a is not None:
            dtype = a
    check_device(dev)
    return dtype, copy


def get_default_device() -> device:
    """The device new tensors are made on: always the CPU.

    >>> dg.get_default_device()
    device(type='cpu')
    """
    return CPU


def set_default_device(dev) -> None:
    """Accept the CPU (or None); any other device raises at once, as making a tensor there
    would in a CPU-only PyTorch build (PyTorch raises at the first tensor made)."""
    check_device(dev)


class Upward:
    """The calls the tensor core makes into the layers above it, bound once by
    :func:`dyngrad.methods.install` (imported last by ``dyngrad/__init__``).

    Note [calls up from the tensor core]: the core (this module) sits below the ops, autograd
    and printing, and imports none of them, so the layers form no cycle. A few of its methods
    must still call up, and each does so through a slot here rather than an import inside
    the method:

    - ``backward``: ``Tensor.backward`` runs the backward engine (``dyngrad.autograd``), which
      is built from ops;
    - ``tensor_repr``: ``repr`` formats with ``dyngrad.printing``;
    - ``cast``, ``view_scatter``, ``replay_view``: an in-place change is expressed functionally
      (a dtype cast, a scatter into a view's base, a view's history replayed on its base),
      which are ops. ``dyngrad.ops.movement.cat`` uses ``cast`` too (movement sits below
      elementwise, whose rules sum broadcast gradients with movement's ``SUM``);
    - ``grad``, ``jvp``: a primitive whose higher-order rules are autograd or forward mode
      through a composite of ops (``dyngrad.ops.attention``) calls them from the op table,
      which autograd and forward mode are built on.

    None of them is on the eager arithmetic path.
    """

    __slots__ = ("backward", "tensor_repr", "cast", "view_scatter", "replay_view", "grad",
                 "jvp")


UPWARD = Upward()


class Storage:
    """What views of one piece of memory share: the version counter (bumped by every
    in-place change) and a history counter (bumped when an in-place change gives the base a
    new backward history, so views refresh theirs)."""

    __slots__ = ("version", "hist", "__weakref__")

    def __init__(self) -> None:
        self.version = 0
        self.hist = 0


# Note [the tensor's array]: a tensor's ndarray (``_data``) is never handed to user code:
# ``numpy()``, ``__array__`` and ``from_numpy`` give or take a *view* of the same memory.
# So nothing outside dyngrad can change that array object's flags (``flags.writeable =
# False`` on a user's array leaves the tensor's own view as it was, as numpy's views do),
# and a compiled variant that checked at trace time that a captured tensor's array is
# writable needs only to check, per call, that it is still the same array object.
#
class _WeakById:
    """A map from live objects (held weakly, keyed by identity: ndarrays and tensors do not
    hash by identity) to values; an entry goes when its object does."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple] = {}  # id(obj) -> (weakref to obj, value)

    def get(self, obj):
        entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else None

    def set(self, obj, value) -> bool:
        """False when ``obj`` cannot be held weakly (then nothing is kept)."""
        k = id(obj)
        try:
            ref = weakref.ref(obj, lambda r, k=k: self._forget(k, r))
        except TypeError:
            return False
        self._entries[k] = (ref, value)
        return True

    def _forget(self, k: int, ref) -> None:
        entry = self._entries.get(k)
        if entry is not None and entry[0] is ref:
            del self._entries[k]


# The same memory handed out and taken back (``dg.from_numpy(p.numpy())``, the usual idiom)
# is the same Storage — one version counter, so autograd and compiled variants see the two
# tensors alias. numpy collapses view chains, so ``arr.base`` (or ``arr``) is the object
# owning the memory; :func:`share_storage` remembers which Storage is over it (bytes and
# other owners without weak references are not shared).
_OWNERS = _WeakById()  # memory owner -> weakref to a Storage over it


def _owner(arr: np.ndarray):
    return arr.base if arr.base is not None else arr


def share_storage(arr: np.ndarray, storage: Storage) -> None:
    """``storage`` is over ``arr``'s memory: a tensor made from it again shares it."""
    owner = _owner(arr)
    known = _OWNERS.get(owner)
    if known is None or known() is not storage:
        _OWNERS.set(owner, weakref.ref(storage))


def storage_over(arr: np.ndarray) -> Storage:
    """The Storage of a tensor over ``arr``'s memory handed out before, or a new one."""
    known = _OWNERS.get(_owner(arr))
    storage = known() if known is not None else None
    if storage is None:
        storage = Storage()
        share_storage(arr, storage)
    return storage


# A compiled variant that assumed its captured leaves have no gradient hook holds one
# HookEpoch for them all (``guard_hooks``): registering a hook on any of those leaves moves
# it, so the variant's guard is one comparison instead of one per captured parameter. The
# leaves are kept by identity, weakly, not marked by an attribute: a new instance attribute
# would slow every attribute load on a parameter.


class HookEpoch:
    """Hooks registered since tracing on the leaves one compiled variant guards."""

    __slots__ = ("n", "__weakref__")

    def __init__(self) -> None:
        self.n = 0


_HOOK_GUARDED = _WeakById()  # leaf -> WeakSet of the HookEpochs guarding it


def guard_hooks(t: Tensor, epoch: HookEpoch) -> None:
    """A compiled variant assumes leaf ``t`` has no gradient hook: registering one on it
    moves ``epoch``."""
    epochs = _HOOK_GUARDED.get(t)
    if epochs is None:
        epochs = weakref.WeakSet()
        _HOOK_GUARDED.set(t, epochs)
    epochs.add(epoch)


class Tensor:
    """An n-dimensional array with autograd. Create with :func:`dyngrad.tensor` and friends."""

    # Note: no __slots__: every field but the array and the storage has a class-level default,
    # so making a tensor (the eager hot path) sets two attributes instead of twelve.
    _requires_grad = False
    _node = None
    _out_nr = 0
    _grad = None
    _base = None
    _view_chain = ()
    _hist = 0
    _hooks = None
    _post_accumulate_hooks = None
    _accum = None
    _retains = False
    __array_priority__ = 1000  # numpy defers binary operators to us

    # ----------------------------------------------------------------- construction
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """PyTorch's legacy constructor: ``Tensor(2, 3)``, ``Tensor([1., 2.])``,
        ``Tensor(other)``, ``Tensor()`` (see :func:`legacy_init`). New code uses
        :func:`dyngrad.tensor`, :func:`dyngrad.zeros` and friends."""
        legacy_init(self, args, kwargs, None, "Tensor")

    def _init(self, arr: np.ndarray, storage: Storage) -> None:
        self._data = arr
        self._storage = storage

    @classmethod
    def _fresh(cls, arr: np.ndarray) -> Tensor:
        t = object.__new__(Tensor)
        t._init(arr, Storage())
        return t

    @classmethod
    def _constant(cls, arr: np.ndarray) -> Tensor:
        """A fresh tensor made from data rather than by an op; an active dispatch mode is told
        (a tracer bakes it in as a constant)."""
        t = object.__new__(Tensor)
        t._init(arr, Storage())
        if STATE.modes:
            report_new(t)
        return t

    @classmethod
    def _shared(cls, arr: np.ndarray, storage: Storage) -> Tensor:
        t = object.__new__(Tensor)
        t._init(arr, storage)
        return t

    def _view(self, arr: np.ndarray, prim, params: dict) -> Tensor:
        """Wrap the result of a movement op: a view sharing storage when numpy made one."""
        if not np.may_share_memory(arr, self._data):
            return Tensor._fresh(arr)
        t = object.__new__(Tensor)
        t._init(arr, self._storage)
        base = self._base if self._base is not None else self
        t._base = base
        t._view_chain = self._view_chain + ((prim, params),)
        t._hist = self._storage.hist
        return t

    # ----------------------------------------------------------------- metadata
    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def dtype(self) -> DType:
        return _dt._BY_NP[self._data.dtype]

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def device(self) -> device:
        return CPU

    @property
    def is_cuda(self) -> bool:
        return False

    @property
    def is_xpu(self) -> bool:
        return False  # (scripts test ``x.is_cuda or x.is_xpu`` before data_parallel)

    @property
    def is_cpu(self) -> bool:
        return True

    def cpu(self) -> Tensor:
        """This tensor (it is on the CPU already)."""
        return self

    def cuda(self, device=None, non_blocking: bool = False) -> Tensor:
        """Raises, as a CPU-only PyTorch does (see Note [devices])."""
        raise AssertionError(NO_CUDA)

    def size(self, dim: int | None = None):
        """The shape, or one dimension of it (PyTorch's ``size``)."""
        if dim is None:
            return self._data.shape
        return self._data.shape[_norm_dim(dim, self.ndim, "size")]

    def dim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        return self._data.size

    nelement = numel

    def element_size(self) -> int:
        return self._data.itemsize

    def stride(self, dim: int | None = None):
        """Strides in elements (as PyTorch reports them)."""
        st = tuple(s // self._data.itemsize for s in self._data.strides)
        return st if dim is None else st[_norm_dim(dim, self.ndim, "stride")]

    def is_contiguous(self) -> bool:
        return bool(self._data.flags.c_contiguous)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    @property
    def _version(self) -> int:
        return self._storage.version

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation."""
        self._refresh_view_history() if self._base is not None else None
        return self._node is None

    @property
    def grad_fn(self):
        """The backward node that produced this tensor (None on leaves)."""
        if self._base is not None:
            self._refresh_view_history()
        return self._node

    # ----------------------------------------------------------------- requires_grad
    @property
    def requires_grad(self) -> bool:
        if self._base is not None:
            self._refresh_view_history()
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if flag and self._node is not None:  # PyTorch: only requires_grad_(True) is a no-op
            raise RuntimeError("you can only change requires_grad flags of leaf variables.")
        self._set_requires_grad(bool(flag))

    def _set_requires_grad(self, flag: bool) -> None:
        if self._node is not None:
            if flag:
                return
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use "
                "a computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach().")
        if flag and not self.dtype.is_floating_point:
            raise RuntimeError(
                f"only Tensors of floating point dtype can require gradients (this one is "
                f"{self.dtype.name}); convert with .float() first")
        if STATE.modes:
            report_write(self, "requires_grad", flag)
        self._requires_grad = flag

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Set ``requires_grad`` in place and return self."""
        self._set_requires_grad(bool(requires_grad))
        return self

    # ----------------------------------------------------------------- grad
    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (leaves, and non-leaves after ``retain_grad()``)."""
        if STATE.modes:
            report_attr(self, "grad", self._grad)
        if self._grad is None and self._node is not None and not self._retains:
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. "
                "Its .grad attribute won't be populated during autograd.backward(). If you "
                "indeed want the .grad field to be populated for a non-leaf Tensor, use "
                ".retain_grad() on the non-leaf Tensor.", UserWarning, stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got "
                                f"{type(value).__name__}")
            if value.shape != self.shape:
                raise RuntimeError(f"assigned grad has data of a different size: grad shape "
                                   f"{list(value.shape)}, tensor shape {list(self.shape)}")
            if value.dtype is not self.dtype:
                raise RuntimeError(f"assigned grad has data of a different type: grad is "
                                   f"{value.dtype.name}, tensor is {self.dtype.name}")
        if STATE.modes:
            report_write(self, "grad", value)
        self._grad = value

    def _accumulate_grad(self, g: Tensor, create_graph: bool, shared: bool) -> None:
        """What backward does at a leaf (or a tensor that called retain_grad)."""
        if g.shape != self.shape:
            raise RuntimeError(f"gradient of shape {list(g.shape)} cannot be accumulated into "
                               f"a tensor of shape {list(self.shape)}")
        if STATE.modes:  # which branch below runs depends on .grad: a tracer must know
            report_attr(self, "grad", self._grad)
        if create_graph:
            self.grad = g if self._grad is None else self._grad + g
            return
        # Note: with no dispatch mode active the copy and the in-place sum below are done on
        # the arrays directly (the same numbers as the ops, without their dispatch cost); a
        # tracer sees them as ops.
        modes = STATE.modes
        if self._grad is None:
            arr = g._data
            if shared or g._base is not None or not arr.flags.c_contiguous \
                    or not arr.flags.writeable or g._storage is self._storage:
                g = g.clone() if modes else Tensor._fresh(np.array(arr, order="C"))
            if g._node is not None:
                g = g.detach()
            self.grad = g
        elif self._grad._requires_grad:
            self.grad = self._grad.detach() + g
        elif modes or self._grad._data.dtype != g._data.dtype \
                or not self._grad._data.flags.writeable:
            self._grad.add_(g)
        else:
            acc = self._grad
            np.add(acc._data, g._data, out=acc._data)
            acc._storage.version += 1

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor during backward."""
        if self._node is None:
            if not self._requires_grad:
                raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
            return
        node = self._node
        if node.retained is None:
            node.retained = {}
        node.retained[self._out_nr] = weakref.ref(self)
        self._retains = True

    @property
    def retains_grad(self) -> bool:
        return self._retains

    def register_hook(self, hook):
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor
        replaces the gradient. Returns a handle with ``remove()``."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._node is not None:
            return self._node.register_hook_for_output(self._out_nr, hook)
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        for epoch in list(_HOOK_GUARDED.get(self) or ()):  # (compiled variants assumed none)
            epoch.n += 1
        return RemovableHandle(self._hooks, hook)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(tensor)`` after backward has accumulated a gradient into this leaf's
        ``.grad`` (PyTorch's post-accumulate-grad hook: it sees the accumulated ``.grad`` and
        returns None); it runs before DDP's reducer takes the gradient, whenever it was
        registered, as in PyTorch. Returns a handle with ``remove()``.

        >>> w = dg.ones(2, requires_grad=True)
        >>> h = w.register_post_accumulate_grad_hook(lambda p: print(p.grad))
        >>> (3 * w).sum().backward()
        tensor([3., 3.])
        """
        hooks = self._post_accumulate_hook_list()
        k = len(hooks)
        while k and isinstance(hooks[k - 1], AccumulatorHook):  # (they run after this one)
            k -= 1
        hooks.insert(k, hook)
        return RemovableHandle(hooks, hook)

    def _register_accumulator_hook(self, fn, recorded: bool = False):
        """Call ``fn(tensor)`` after this leaf's post-accumulate-grad hooks, including those
        registered later (an :class:`~dyngrad.autograd.graph.AccumulatorHook`: where DDP's
        reducer takes the gradient, as PyTorch's does). Returns a handle with ``remove()``.
        ``recorded``: a tracer sees all ``fn`` does (``autograd.graph.RecordedCallback``)."""
        hooks = self._post_accumulate_hook_list()
        hook = AccumulatorHook(fn, recorded)
        hooks.append(hook)
        return RemovableHandle(hooks, hook)

    def _post_accumulate_hook_list(self) -> list:
        """This leaf's post-accumulate hooks, about to get one more: refused on a tensor that
        cannot have them; the compiled variants that assumed none are told."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self._node is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf "
                               "tensors")
        if self._post_accumulate_hooks is None:
            self._post_accumulate_hooks = []
        for epoch in list(_HOOK_GUARDED.get(self) or ()):  # (compiled variants assumed none)
            epoch.n += 1
        return self._post_accumulate_hooks

    def _accumulator(self):
        if self._accum is None:
            self._accum = AccumulateGrad(self)
        return self._accum

    def _edge(self):
        if self._base is not None:
            self._refresh_view_history()
        if self._node is not None:
            return (self._node, self._out_nr)
        if self._requires_grad:
            return (self._accumulator(), 0)
        return None

    def backward(self, gradient: Tensor | None = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is the vector v of the vector-Jacobian product vᵀ·J; it may be omitted
        only for a tensor with one element.
        """
        UPWARD.backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph,
                 inputs=inputs)

    # ----------------------------------------------------------------- data and aliases
    @property
    def data(self) -> Tensor:
        """A detached tensor sharing this one's storage (changes through it are invisible to
        autograd, as in PyTorch)."""
        alias = Tensor._shared(self._data, self._storage)
        if STATE.modes:
            report_attr(self, "data", alias)
        return alias

    @data.setter
    def data(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"data must be a Tensor, got {type(value).__name__}")
        if STATE.modes:
            report_write(self, "data", value)
        self._data = value._data
        self._storage = value._storage

    def detach(self) -> Tensor:
        """A tensor sharing storage with this one, cut out of the graph."""
        alias = Tensor._shared(self._data, self._storage)
        if STATE.modes:
            report_attr(self, "detach", alias)
        return alias

    def detach_(self) -> Tensor:
        """Cut this tensor out of the graph in place (it becomes a leaf)."""
        if self._base is not None and self._node is not None:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        if STATE.modes:
            report_write(self, "requires_grad", False)
        self._node = None
        self._requires_grad = False
        return self

    def numpy(self, *, force: bool = False) -> np.ndarray:
        """An ndarray sharing the tensor's memory (a new view each call, as PyTorch returns a
        new array object). Refuses a tensor that requires grad."""
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if STATE.modes:
            report_read(self, "numpy")
        share_storage(self._data, self._storage)
        return self._data.view()  # (never the array itself: see Note [the tensor's array])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if STATE.modes:
            report_read(self, "array")
        arr = self._data
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        if copy:
            return arr.copy()
        share_storage(arr, self._storage)
        return arr.view()  # (see Note [the tensor's array])

    def __dlpack__(self, *args, **kwargs):
        if self.requires_grad:
            raise RuntimeError("Can't export a tensor that requires grad with DLPack; "
                               "use tensor.detach() first")
        if STATE.modes:
            report_read(self, "dlpack")
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    # ----------------------------------------------------------------- value reads
    def _scalar(self, kind: str):
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted "
                               f"to Scalar (shape {list(self.shape)}); use .tolist() or index it")
        if STATE.modes:
            stand_in = report_read(self, kind)
            if stand_in is not None:
                return stand_in
        return self._data.reshape(()).item()

    def item(self):
        """The value of a one-element tensor as a Python number."""
        return self._scalar("item")

    def tolist(self):
        if STATE.modes:
            report_read(self, "tolist")
        return self._data.tolist()

    def __bool__(self) -> bool:
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with more than one value is ambiguous "
                               f"(shape {list(self.shape)}); use .any() or .all()")
        return bool(self._scalar("bool"))

    def __float__(self) -> float:
        if self._data.size != 1:  # PyTorch's error types: ValueError here, TypeError in index
            raise ValueError(f"only one element tensors can be converted to Python scalars "
                             f"(shape {list(self.shape)})")
        return float(self._scalar("float"))

    def __int__(self) -> int:
        if self._data.size != 1:
            raise ValueError(f"only one element tensors can be converted to Python scalars "
                             f"(shape {list(self.shape)})")
        return int(self._scalar("int"))

    def __index__(self) -> int:
        if self.dtype.is_floating_point or self._data.size != 1:
            raise TypeError(f"only integer tensors of a single element can be converted to an "
                            f"index (got {self.dtype.name} of shape {list(self.shape)})")
        return int(self._scalar("index"))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __format__(self, spec: str) -> str:
        if self.ndim == 0 and spec:
            return format(self._scalar("format"), spec)
        return repr(self) if not spec else format(str(self), spec)

    def __repr__(self) -> str:
        if STATE.modes:
            report_read(self, "format")
        return UPWARD.tensor_repr(self)

    __str__ = __repr__
    __hash__ = object.__hash__

    def __reduce_ex__(self, protocol):
        return (_rebuild, (self._data.copy(), self._requires_grad))

    def __deepcopy__(self, memo):
        if self._node is not None:
            raise RuntimeError("Only Tensors created explicitly by the user (graph leaves) "
                               "support the deepcopy protocol at the moment")
        t = Tensor._fresh(self._data.copy())
        t._requires_grad = self._requires_grad
        if self._grad is not None:
            t._grad = Tensor._fresh(self._grad._data.copy())
        memo[id(self)] = t
        return t

    # ----------------------------------------------------------------- in-place machinery
    def _check_inplace(self, op: str) -> None:
        if STATE.grad_enabled:
            if self._node is None and self._requires_grad:
                raise RuntimeError(
                    f"{op}: a leaf Variable that requires grad is being used in an in-place "
                    f"operation. Wrap the update in dg.no_grad() (as optimizers do) or "
                    f"clone() the tensor first.")
            base = self._base
            if base is not None and base._node is None and base._requires_grad:
                raise RuntimeError(
                    f"{op}: a view of a leaf Variable that requires grad is being used in an "
                    f"in-place operation. Wrap it in dg.no_grad() or clone() the leaf first.")
        if not self._data.flags.writeable:
            raise RuntimeError(
                f"{op}: unsupported operation: this tensor is an expanded view (more than one "
                f"element refers to a single memory location) or read-only memory. "
                f"Call .clone() before writing to it.")

    def _commit(self, new: Tensor, op: str) -> Tensor:
        """Make ``new`` (a functional result of this tensor's shape) this tensor's value:
        write the memory, bump the version, and move the backward history."""
        if new.dtype is not self.dtype:
            if not _dt.can_cast_inplace(new.dtype, self.dtype):
                raise RuntimeError(f"{op}: result type {new.dtype.name} can't be cast to the "
                                   f"desired output type {self.dtype.name}")
            new = UPWARD.cast(new, self.dtype)
        if new.shape != self.shape:
            raise RuntimeError(f"{op}: output with shape {list(self.shape)} doesn't match the "
                               f"broadcast shape {list(new.shape)}")
        graph = STATE.grad_enabled and (new._requires_grad or self._requires_grad
                                        or (self._base is not None
                                            and self._base._requires_grad))
        if graph and self._base is not None:
            base = self._base
            new_base = UPWARD.view_scatter(base, self._view_chain, new)
            np.copyto(self._data, new._data)
            self._storage.version += 1
            if STATE.modes:
                report_write(self, "inplace", new)
            base._node, base._out_nr = new_base._node, 0
            base._requires_grad = new_base._requires_grad
            self._storage.hist += 1
            return self
        np.copyto(self._data, new._data)
        self._storage.version += 1
        if STATE.modes:
            report_write(self, "inplace", new)
        if graph:
            self._node, self._out_nr = new._node, new._out_nr
            self._requires_grad = new._requires_grad
            self._storage.hist += 1
        return self

    def _refresh_view_history(self) -> None:
        """Re-derive a view's backward history after its base changed in place."""
        st = self._storage
        if self._hist == st.hist:
            return
        self._hist = st.hist
        base = self._base
        if base._requires_grad and STATE.grad_enabled:
            v = UPWARD.replay_view(base, self._view_chain)
            self._node, self._out_nr, self._requires_grad = v._node, 0, v._requires_grad
        elif base._requires_grad:
            self._requires_grad = True
_LEGACY_FORMS = ("(*, device), (Tensor other), (tuple of ints size, *, device) or (object "
                 "data, *, device)")


def _is_size(v) -> bool:
    return not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer))


def legacy_init(t: Tensor, args: tuple, kwargs: dict, dtype: DType | None, name: str) -> None:
    """Fill the new tensor ``t`` as PyTorch's legacy constructors (``torch.Tensor(...)``,
    ``torch.FloatTensor(...)``) do, in ``dtype`` (None: the default dtype):

    - no arguments: an empty 1-d tensor;
    - ints: zeros of that size (PyTorch leaves them uninitialised; zeros repeat);
    - one sequence or array: its data, converted (``Tensor([1, 2])`` is float);
    - one tensor: shares its storage, as PyTorch's alias (of ``dtype`` when one is given).

    >>> dg.Tensor(2, 3).shape, dg.Tensor([1, 2]).dtype
    ((2, 3), dyngrad.float32)
    """
    if set(kwargs) - {"device"}:
        got = ", ".join([type(a).__name__ for a in args] + [f"{k}=..." for k in kwargs])
        raise TypeError(f"{name}(): new() received an invalid combination of arguments - got "
                        f"({got}), but expected one of: {_LEGACY_FORMS}; the legacy "
                        f"constructor takes no dtype= or requires_grad= (use dyngrad.tensor("
                        f"data, dtype=..., requires_grad=...) or dyngrad.zeros(...))")
    check_device(kwargs.get("device"))
    want = dtype or _dt.get_default_dtype()
    if len(args) == 1 and isinstance(args[0], Tensor):
        other = args[0]
        if dtype is not None and other.dtype is not dtype:
            raise TypeError(f"{name}(): expected a tensor of dtype {dtype.name}, got "
                            f"{other.dtype.name} (convert it with .to(dyngrad.{dtype.name}))")
        t._init(other._data, other._storage)
        if STATE.modes:
            report_attr(other, "detach", t)
        return
    if all(_is_size(a) for a in args):
        sizes = [int(a) for a in args]
        if any(n < 0 for n in sizes):
            raise RuntimeError(f"Trying to create tensor with negative dimension "
                               f"{min(sizes)}: {sizes}")
        t._init(np.zeros(sizes if args else (0,), dtype=want.np), Storage())
    elif len(args) == 1 and isinstance(args[0], (list, tuple, np.ndarray)):
        t._init(to_array(args[0], want), Storage())
    elif len(args) == 1:
        raise TypeError(f"{name}(): new(): data must be a sequence (got "
                        f"{type(args[0]).__name__})")
    else:
        got = ", ".join(type(a).__name__ for a in args)
        raise TypeError(f"{name}(): new() received an invalid combination of arguments - got "
                        f"({got}), but expected one of: {_LEGACY_FORMS}")
    if STATE.modes:
        report_new(t)


def to_array(data, dtype=None) -> np.ndarray:
    """Copy Python or numpy data into a new array with dyngrad's dtype rules.

    >>> to_array([1.0, 2.0]).dtype
    dtype('float32')
    """
    if isinstance(data, Tensor):
        if STATE.modes:  # the copy's values come from data without an operation
            report_read(data, "copy")
        arr = data._data
        return arr.astype(_dt.as_dtype(dtype).np if dtype is not None else arr.dtype, copy=True)
    if isinstance(data, (np.ndarray, np.generic)):
        arr = np.array(data, copy=True)
        if dtype is None:
            return arr.astype(_dt.from_numpy_dtype(arr.dtype, copy=True).np, copy=False)
        return arr.astype(_dt.as_dtype(dtype).np)
    try:
        arr = np.array(data)
    except ValueError as exc:
        raise ValueError(f"tensor: could not build a tensor from the given data: {exc} (nested "
                         f"lists must be rectangular)") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"tensor: expected numbers or (nested) sequences of numbers, got "
                        f"{type(data).__name__} holding {arr.dtype}")
    if dtype is not None:
        return arr.astype(_dt.as_dtype(dtype).np)
    if arr.dtype.kind == "f":
        # Python floats become the default dtype (float32), as in PyTorch
        return arr.astype(_dt.get_default_dtype().np)
    return arr.astype(_dt.from_numpy_dtype(arr.dtype, copy=True).np, copy=False)


def zero_grads(tensors, set_to_none: bool = True) -> None:
    """Reset the ``.grad`` of each tensor: to None, or to zeros in place (what optimizers'
    and modules' ``zero_grad`` do)."""
    for t in tensors:
        if set_to_none:  # (under a tracer set and never read: a trace of the call then
            if t._grad is not None or STATE.modes:  # holds whether or not it had one —
                t.grad = None  # a new process's first training step has none yet)
        elif t.grad is None:
            continue
        else:
            with no_grad():
                t.grad.zero_()


def _rebuild(arr, requires_grad):
    t = Tensor._fresh(arr)
    t._requires_grad = requires_grad
    return t


def _norm_dim(dim: int, ndim: int, op: str) -> int:
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: Dimension out of range (expected to be in range of "
                         f"[{-n}, {n - 1}], but got {dim})")
    return dim % n
