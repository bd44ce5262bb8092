"""dyngrad — an eager, define-by-run autograd on numpy with PyTorch's semantics.

>>> import dyngrad as dg
>>> x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> x.grad
tensor([2., 4., 6.])
"""

from __future__ import annotations

import math

# Note [the layers]: each module imports only the layers below it (tests/test_layers.py):
# the tensor core (dtypes, dispatch, autograd.graph and autograd.grad_mode, tensor), the op
# table (primitives and the composites on them), autograd's backward and printing, and last
# the methods layer, which attaches Tensor's methods generated from its table and binds the
# core's upward calls (dyngrad/methods.py). `autograd` is imported first: the package spans
# two layers (its graph and grad modes are below the tensor core, backward above the ops), so
# it must be entered from the top, not from the tensor core importing its graph.
from . import autograd

# isort: split
from . import (
    accelerator,
    amp,
    backends,
    cuda,
    dispatch,
    distributed,
    distributions,
    dtypes,
    forward_ad,
    func,
    jit,
    linalg,
    nn,
    optim,
    printing,
    special,
    testing,
    utils,
    xpu,
)
from . import methods as _methods
from . import ops as _ops
from .amp import autocast, is_autocast_enabled
from .autograd.grad_mode import (
    enable_grad,
    inference_mode,
    is_grad_enabled,
    is_inference_mode_enabled,
    no_grad,
    set_grad_enabled,
)
from .dtypes import (
    bool_,
    float32,
    float64,
    get_default_dtype,
    int8,
    int16,
    int32,
    int64,
    set_default_dtype,
    uint8,
)
from .ops.bitwise import (
    bitwise_and,
    bitwise_left_shift,
    bitwise_not,
    bitwise_or,
    bitwise_right_shift,
    bitwise_xor,
)
from .ops.composites import (
    acosh,
    allclose,
    arccosh,
    arcsinh,
    arctanh,
    asinh,
    atanh,
    cosh,
    equal,
    fix,
    isclose,
    isfinite,
    isinf,
    isnan,
    log2,
    log10,
    meshgrid,
    repeat_interleave,
    roll,
    sinh,
    swapaxes,
    swapdims,
    t,
    tril,
    triu,
    trunc,
)
from .ops.creation import (
    arange,
    as_tensor,
    empty,
    empty_like,
    from_dlpack,
    from_numpy,
    full,
    full_like,
    linspace,
    ones,
    ones_like,
    tensor,
    zeros,
    zeros_like,
)
from .ops.einsum import einsum
from .ops.elementwise import (
    abs,
    acos,
    add,
    arccos,
    arcsin,
    arctan,
    arctan2,
    asin,
    atan,
    atan2,
    ceil,
    clamp,
    cos,
    div,
    eq,
    erf,
    exp,
    floor,
    floor_divide,
    ge,
    gelu,
    gt,
    le,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    logical_xor,
    lt,
    masked_fill,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    reciprocal,
    relu,
    remainder,
    round,
    rsqrt,
    sigmoid,
    sign,
    sin,
    sqrt,
    square,
    sub,
    tanh,
    where,
)
from .ops.indexing import eye, index_add, index_select, nonzero, one_hot, take_along_dim
from .ops.linalg import bmm, dot, matmul, mm, mv, outer
from .ops.movement import (
    broadcast_to,
    cat,
    chunk,
    concat,
    expand,
    flatten,
    narrow,
    permute,
    reshape,
    split,
    squeeze,
    stack,
    transpose,
    unbind,
    unsqueeze,
)
from .ops.random import (
    Generator,
    bernoulli,
    get_rng_state,
    initial_seed,
    manual_seed,
    multinomial,
    normal,
    rand,
    rand_like,
    randint,
    randint_like,
    randn,
    randn_like,
    randperm,
    set_rng_state,
)
from .ops.reduce import (
    all,
    amax,
    amin,
    any,
    argmax,
    argmin,
    log_softmax,
    logsumexp,
    max,
    mean,
    min,
    norm,
    prod,
    softmax,
    std,
    sum,
    var,
)
from .ops.scan import argsort, cumprod, cumsum, msort, sort, topk
from .ops.unique import unique, unique_consecutive
from .printing import debug_print
from .serialization import load, save
from .size import Size
from .tensor import Tensor, device, get_default_device, set_default_device
from .tensor_types import (
    BoolTensor,
    ByteTensor,
    CharTensor,
    DoubleTensor,
    FloatTensor,
    IntTensor,
    LongTensor,
    ShortTensor,
)

_methods.install()

bool = bool_
float = float32
double = float64
long = int64
int = int32
short = int16

def compile(fn=None, **options):
    """``compiler.compile`` (imported lazily: dyngrad itself never imports the compiler)."""
    from compiler import compile as _compile
    return _compile(fn, **options)


clip = clamp


def gather(input, dim, index):
    """``torch.gather``: out[i][j] = input[i][index[i][j]] for dim=1 (see Tensor.gather)."""
    return take_along_dim(input, index, dim)


argwhere = nonzero


pi = math.pi  # torch.pi, torch.e, torch.inf, torch.nan
e = math.e
inf = math.inf
nan = math.nan


def scatter_add(input, dim, index, src):
    """``torch.scatter_add`` (see Tensor.scatter_add)."""
    return input.scatter_add(dim, index, src)


def scatter(input, dim, index, src=None, *, value=None, reduce=None):
    """``torch.scatter`` (see Tensor.scatter)."""
    return input.scatter(dim, index, src, value=value, reduce=reduce)


def spmm(input, mat2):
    """``torch.spmm``: a matrix product whose first operand PyTorch allows sparse; dyngrad
    has dense tensors only, so it is ``mm`` (a sparse operand raises there)."""
    if getattr(input, "is_sparse", False) or not isinstance(input, Tensor):
        raise NotImplementedError("spmm: dyngrad has no sparse tensors (pass a dense matrix; "
                                  "to_dense() in PyTorch)")
    return mm(input, mat2)


fix_seed = manual_seed


def numel(input) -> int:
    """The number of elements of ``input`` (``Tensor.numel``)."""
    return input.numel()

__version__ = "0.1.0"

__all__ = [
    "Tensor", "FloatTensor", "DoubleTensor", "LongTensor", "IntTensor", "ShortTensor",
    "CharTensor", "ByteTensor", "BoolTensor", "tensor", "as_tensor", "from_numpy", "from_dlpack",
    "zeros", "ones", "full",
    "empty", "arange", "linspace", "eye", "zeros_like", "ones_like", "full_like", "empty_like",
    "rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm",
    "manual_seed", "initial_seed", "get_rng_state", "set_rng_state", "Generator",
    "float32", "float64", "int64", "bool_", "get_default_dtype", "set_default_dtype",
    "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "inference_mode",
    "is_inference_mode_enabled", "save", "load",
    "autograd", "testing", "special", "dtypes", "dispatch", "nn", "optim", "utils", "func",
    "forward_ad", "debug_print", "compile", "jit",
    "device", "get_default_device", "set_default_device", "cuda", "accelerator", "backends",
    "amp", "autocast", "is_autocast_enabled", "xpu",
    "add", "sub", "mul", "div", "pow", "neg", "abs", "sign", "floor", "ceil", "round", "exp",
    "log", "log1p", "sqrt", "rsqrt", "sin", "cos", "tanh", "erf", "sigmoid", "relu", "gelu",
    "reciprocal", "square", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "where",
    "clamp", "clip", "masked_fill", "floor_divide", "remainder", "logical_and", "logical_or",
    "logical_not", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not",
    "bitwise_left_shift", "bitwise_right_shift",
    "sum", "mean", "var", "std", "amax", "amin", "max", "min", "argmax", "argmin", "logsumexp",
    "norm", "prod", "softmax", "log_softmax", "all", "any",
    "reshape", "expand", "broadcast_to", "permute", "transpose", "squeeze", "unsqueeze",
    "flatten", "narrow", "cat", "concat", "stack", "split", "chunk", "unbind",
    "matmul", "mm", "bmm", "dot", "outer", "gather", "take_along_dim", "index_select",
    "scatter_add", "scatter", "index_add", "spmm", "nonzero", "argwhere", "unique",
    "unique_consecutive", "Size",
    "one_hot",
    "tril", "triu", "t", "swapaxes", "swapdims", "meshgrid", "sinh", "cosh", "trunc", "fix",
    "asinh", "acosh", "atanh", "arcsinh", "arccosh", "arctanh",
    "isnan", "isinf", "isfinite", "isclose", "allclose", "equal", "log2", "log10", "mv", "pi",
    "e", "inf", "nan",
    "repeat_interleave", "einsum", "cumsum", "cumprod", "sort", "argsort", "topk", "msort",
    "numel", "normal", "bernoulli", "multinomial", "int32", "int16", "int8", "uint8",
]
