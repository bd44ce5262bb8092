"""``dyngrad.utils.checkpoint``: activation checkpointing (PyTorch's ``torch.utils.checkpoint``).

``checkpoint(fn, *args)`` runs ``fn`` without recording its graph and runs it again, with
gradients, when backward reaches it: the activations inside ``fn`` are not kept between
forward and backward. The values and gradients are those of ``fn(*args)`` itself.

>>> import dyngrad as dg
>>> from dyngrad.utils.checkpoint import checkpoint
>>> w = dg.ones(3, requires_grad=True)
>>> x = dg.tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = checkpoint(lambda x: (x * w).tanh(), x, use_reentrant=True)
>>> y.sum().backward()
>>> w.grad.shape
dg.Size([3])
"""

from __future__ import annotations

import warnings

from ..autograd import backward as _backward
from ..autograd.engine import running_backward_accumulates
from ..autograd.function import Function
from ..autograd.grad_mode import enable_grad, no_grad
from ..dispatch import STATE
from ..nn.containers import Sequential
from ..ops.random import get_rng_state, set_rng_state
from ..tensor import Tensor

__all__ = ["checkpoint", "checkpoint_sequential"]


def _noop_context_fn():
    return _Nothing(), _Nothing()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


noop_context_fn = _noop_context_fn


def _warn_use_reentrant(name: str) -> None:
    warnings.warn(
        f"{name}: the use_reentrant parameter should be passed explicitly. Starting in "
        f"PyTorch 2.9, calling checkpoint without use_reentrant will raise an exception. "
        f"use_reentrant=False is recommended, but if you need to preserve the current "
        f"default behavior, you can pass use_reentrant=True. Refer to docs for more details "
        f"on the differences between the two variants.", stacklevel=3)


class CheckpointFunction(Function):
    """The reentrant variant: forward without a graph; backward runs the function again with
    gradients on detached copies of its tensor arguments and backpropagates through that
    (the function's parameters get their ``.grad`` there), returning the arguments'
    gradients."""

    @staticmethod
    def forward(ctx, run_function, preserve_rng_state, *args):
        if not any(isinstance(a, Tensor) and a.requires_grad for a in args):
            warnings.warn("None of the inputs have requires_grad=True. Gradients will be None",
                          stacklevel=4)
        ctx.run_function = run_function
        ctx.preserve_rng_state = preserve_rng_state
        ctx.inputs = [None if isinstance(a, Tensor) else a for a in args]
        ctx.tensor_indices = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        # (the generator's state is saved with the arguments, so that backward frees it and
        # a compiled step sees it as saved for backward, not as Python state it keeps)
        state = [get_rng_state()] if preserve_rng_state else []
        ctx.save_for_backward(*(args[i] for i in ctx.tensor_indices), *state)
        return run_function(*args)

    @staticmethod
    def backward(ctx, *grads):
        if not running_backward_accumulates():
            raise RuntimeError(
                "When use_reentrant=True, torch.utils.checkpoint is incompatible with .grad() "
                "or passing an `inputs` parameter to .backward(). To resolve this error, you "
                "can either set use_reentrant=False, or call .backward() without passing the "
                "`inputs` argument.")
        inputs = list(ctx.inputs)
        saved = ctx.saved_tensors
        for i, t in zip(ctx.tensor_indices, saved):
            inputs[i] = t
        detached = [_detached(a) for a in inputs]
        # Note: the recomputation must draw the random numbers the forward drew (a dropout
        # inside the function masks the same elements), and leave the generator where the
        # backward found it — PyTorch's fork_rng around set_rng_state.
        state = get_rng_state() if ctx.preserve_rng_state else None
        try:
            if state is not None:
                set_rng_state(saved[-1])
            with enable_grad():
                outputs = ctx.run_function(*detached)
        finally:
            if state is not None:
                set_rng_state(state)
        if isinstance(outputs, Tensor):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads)
                 if isinstance(o, Tensor) and o.requires_grad]
        if not pairs:
            raise RuntimeError("none of output has requires_grad=True, this checkpoint() is "
                               "not necessary")
        _backward([o for o, _ in pairs], [g for _, g in pairs])
        return (None, None) + tuple(a.grad if isinstance(a, Tensor) else None
                                    for a in detached)


def _under_a_mode(function, args, preserve_rng_state: bool):
    """Note: under a dispatch mode — a ``dg.compile`` trace, ``vmap``, forward AD — the
    function is not run again inside backward, where the compiler's capture would not
    follow the user's code; it runs twice at once instead: without a graph, as the forward
    does, then again from the same RNG state with its graph recorded. Its effects are
    eager's — a BatchNorm inside updates its running statistics twice, once in the forward
    and once in the recomputation, in PyTorch too — and so are its values and gradients;
    a compiled step's memory plan decides for itself what it keeps for backward. No
    gradient flows through unless an argument requires it (:class:`CheckpointFunction`)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not any(t.requires_grad for t in tensors):
        warnings.warn("None of the inputs have requires_grad=True. Gradients will be None",
                      stacklevel=4)
        with no_grad():
            return function(*args)
    state = get_rng_state() if preserve_rng_state else None
    with no_grad():
        function(*args)
    if state is not None:
        set_rng_state(state)
    return function(*args)


def _detached(a):
    if not isinstance(a, Tensor):
        return a
    d = a.detach()
    d.requires_grad_(a.requires_grad)
    return d


def checkpoint(function, *args, use_reentrant: bool | None = None,
               context_fn=noop_context_fn, determinism_check: str = "default",
               debug: bool = False, early_stop: bool = True, **kwargs):
    """``function(*args, **kwargs)``, with its activations recomputed in backward.

    ``use_reentrant=True`` (the default when it is not given, with PyTorch's warning) runs
    ``function`` without a graph and again in backward (:class:`CheckpointFunction`); it takes
    no keyword arguments for ``function`` and is incompatible with ``autograd.grad``.

    Note: ``use_reentrant=False`` records ``function``'s graph as an ordinary call does, so
    it keeps the activations (PyTorch frees them and recomputes them through saved-tensor
    hooks, which dyngrad does not have). Values, gradients, ``autograd.grad`` and keyword
    arguments behave as PyTorch's non-reentrant variant; only the memory saving is absent.

    >>> y = checkpoint(block, x, use_reentrant=False)
    """
    if use_reentrant is None:
        _warn_use_reentrant("torch.utils.checkpoint")
        use_reentrant = True
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs and use_reentrant:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))
    if use_reentrant:
        if context_fn is not noop_context_fn or debug is not False:
            raise ValueError("Passing `context_fn` or `debug` is only supported when "
                             "use_reentrant=False.")
        if STATE.modes:
            return _under_a_mode(function, args, preserve)
        return CheckpointFunction.apply(function, preserve, *args)
    forward_context, _ = context_fn()
    with forward_context:
        return function(*args, **kwargs)


def checkpoint_sequential(functions, segments: int, input, use_reentrant: bool | None = None,
                          **kwargs):
    """Run ``functions`` (an ``nn.Sequential`` or a list) on ``input`` in ``segments``
    chunks, checkpointing every chunk but the last.

    >>> y = checkpoint_sequential(model, 2, x, use_reentrant=False)
    """
    if use_reentrant is None:
        _warn_use_reentrant("torch.utils.checkpoint.checkpoint_sequential")
        use_reentrant = True
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(arg for arg in kwargs))

    def run_function(start, end, functions):
        def forward(input):
            for j in range(start, end + 1):
                input = functions[j](input)
            return input
        return forward

    if isinstance(functions, Sequential):
        functions = list(functions.children())
    segment_size = len(functions) // segments
    end = -1
    for start in range(0, segment_size * (segments - 1), segment_size):
        end = start + segment_size - 1
        input = checkpoint(run_function(start, end, functions), input,
                           use_reentrant=use_reentrant, preserve_rng_state=preserve)
    return run_function(end + 1, len(functions) - 1, functions)(input)

