"""Recurrent layers: RNNCell, GRUCell, LSTMCell and multi-layer, optionally bidirectional
RNN / GRU / LSTM with PyTorch's equations, weight layout (gates stacked in
``weight_ih``/``weight_hh``), parameter names and initialisation U(−1/√hidden, 1/√hidden)."""

from __future__ import annotations

import math
import warnings

from .. import dtypes as _dt
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..tensor import Tensor, check_device
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


def _param(*shape, dtype=None) -> Parameter:
    return Parameter(_c.zeros(shape, dtype=dtype or _dt.get_default_dtype()))


def rnn_step(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity: str = "tanh"):
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return _e.tanh(pre) if nonlinearity == "tanh" else _e.relu(pre)


def gru_step(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step with PyTorch's gate order (r, z, n)."""
    i_r, i_z, i_n = _m.chunk(F.linear(x, w_ih, b_ih), 3, -1)
    h_r, h_z, h_n = _m.chunk(F.linear(h, w_hh, b_hh), 3, -1)
    r = _e.sigmoid(i_r + h_r)
    z = _e.sigmoid(i_z + h_z)
    n = _e.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step with PyTorch's gate order (i, f, g, o); returns (h', c')."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = _m.chunk(gates, 4, -1)
    c2 = _e.sigmoid(f) * c + _e.sigmoid(i) * _e.tanh(g)
    return _e.sigmoid(o) * _e.tanh(c2), c2


class _CellBase(Module):
    gates = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        check_device(device)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        g = self.gates * hidden_size
        self.weight_ih = _param(g, input_size, dtype=dtype)
        self.weight_hh = _param(g, hidden_size, dtype=dtype)
        if bias:
            self.bias_ih = _param(g, dtype=dtype)
            self.bias_hh = _param(g, dtype=dtype)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    def _zeros(self, input: Tensor) -> Tensor:
        batch = input.shape[:-1]
        return _c.zeros(batch + (self.hidden_size,), dtype=input.dtype)

    def _check(self, input: Tensor) -> None:
        if input.ndim not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input of shape (batch, "
                             f"{self.input_size}) or ({self.input_size},), got "
                             f"{list(input.shape)}")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        return s + (f", nonlinearity={nonlinearity}" if nonlinearity != "tanh" else "")


class RNNCell(_CellBase):
    """h' = tanh(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh) (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        self._check(input)
        h = self._zeros(input) if hx is None else hx
        return rnn_step(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        self.nonlinearity)


class GRUCell(_CellBase):
    """r = σ(W_ir x + b_ir + W_hr h + b_hr), z = σ(W_iz x + b_iz + W_hz h + b_hz),
    n = tanh(W_in x + b_in + r·(W_hn h + b_hn)), h' = (1 − z)·n + z·h."""

    gates = 3

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        self._check(input)
        h = self._zeros(input) if hx is None else hx
        return gru_step(input, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTMCell(_CellBase):
    """i, f, g, o = σ, σ, tanh, σ of x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh (in that order);
    c' = f·c + i·g, h' = o·tanh(c'). Returns (h', c')."""

    gates = 4

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        self._check(input)
        if hx is None:
            h = c = self._zeros(input)
        else:
            h, c = hx
        return lstm_step(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih,
                         self.bias_hh)


class _RNNBase(Module):
    """The multi-layer, optionally bidirectional recurrence shared by RNN, GRU and LSTM.

    Note: parameters are made in PyTorch's order — layer by layer, and within a layer the
    forward direction's ``weight_ih, weight_hh, bias_ih, bias_hh`` then the reverse
    direction's (suffix ``_reverse``) — and initialised in that order, so that under the same
    seed the names, the state dict's keys and the draws line up with PyTorch's. A layer after
    the first reads the previous layer's output: ``num_directions * hidden_size`` features.
    """

    cell_class: type = GRUCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__()
        check_device(device)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout <= 1:
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=2)
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: "
                            f"{type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size and self.cell_class is not LSTMCell:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable "
                             "projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, \
            num_layers
        self.proj_size = proj_size
        real = proj_size or hidden_size  # (the size of h: the projection's, if any)
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bool(bidirectional)
        gates = self.cell_class.gates * hidden_size
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else real * self.num_directions
            for sfx in self._suffixes(layer):
                setattr(self, f"weight_ih{sfx}", _param(gates, in_size, dtype=dtype))
                setattr(self, f"weight_hh{sfx}", _param(gates, real, dtype=dtype))
                if bias:
                    setattr(self, f"bias_ih{sfx}", _param(gates, dtype=dtype))
                    setattr(self, f"bias_hh{sfx}", _param(gates, dtype=dtype))
                if proj_size:
                    setattr(self, f"weight_hr{sfx}", _param(proj_size, hidden_size,
                                                            dtype=dtype))
        stdv = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer: int) -> tuple:
        """``("_l0",)``, or ``("_l0", "_l0_reverse")`` when bidirectional."""
        return (f"_l{layer}", f"_l{layer}_reverse")[:self.num_directions]

    @property
    def _flat_weights_names(self) -> list:
        """PyTorch's names of the parameters, layer by layer and direction by direction
        (d2l's ``init_seq2seq`` walks them): ``weight_ih_l0, weight_hh_l0, bias_ih_l0,
        bias_hh_l0, [weight_ih_l0_reverse, ...,] weight_ih_l1, ...``."""
        kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ()) \
            + (("weight_hr",) if self.proj_size else ())
        return [k + sfx for layer in range(self.num_layers) for sfx in self._suffixes(layer)
                for k in kinds]

    @property
    def _flat_weights(self) -> list:
        """The parameters in :attr:`_flat_weights_names`' order."""
        return [self._parameters[name] for name in self._flat_weights_names]

    def flatten_parameters(self) -> None:
        """Nothing to do: PyTorch packs the weights into one buffer for cuDNN here (a no-op
        on the CPU too); d2l's sentiment model calls it before every forward."""

    def _direction_params(self, sfx: str) -> tuple:
        g = self.__dict__
        return (g[f"weight_ih{sfx}"], g[f"weight_hh{sfx}"], g.get(f"bias_ih{sfx}"),
                g.get(f"bias_hh{sfx}")) + ((g[f"weight_hr{sfx}"],) if self.proj_size else ())

    def _step(self, x, state, params):
        raise NotImplementedError(f"{type(self).__name__} must implement _step()")

    def _run(self, input: Tensor, states: list) -> tuple:
        """input (seq, batch, features) → output (seq, batch, directions * hidden) and the
        final states, in ``h_n``'s order: layer 0 forward, layer 0 reverse, layer 1, ...

        The reverse direction reads the sequence from its last step to its first; its output
        at step t is the state after reading x[t], so output[t] holds both directions'
        states at t (forward first)."""
        seq = input.shape[0]
        layer_in = input
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(self._suffixes(layer)):
                params = self._direction_params(sfx)
                state = states[layer * self.num_directions + d]
                out_t = [None] * seq
                for t in (range(seq - 1, -1, -1) if d else range(seq)):
                    state = self._step(layer_in[t], state, params)
                    out_t[t] = state[0] if isinstance(state, tuple) else state
                outs.append(out_t)
                finals.append(state)
            layer_in = _m.stack(outs[0], 0) if len(outs) == 1 else _join_directions(*outs)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        return layer_in, finals

    def _prepare(self, input: Tensor):
        name = type(self).__name__
        if input.ndim not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.ndim}D "
                             f"instead (input of shape {list(input.shape)})")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.shape[-1]} (input of shape "
                               f"{list(input.shape)})")
        unbatched = input.ndim == 2
        if unbatched:
            input = _m.unsqueeze(input, 1)
        elif self.batch_first:
            input = _m.transpose(input, 0, 1)
        return input, unbatched

    def _initial_states(self, hx: Tensor | None, batch: int, dtype, unbatched: bool,
                        which: str = "hidden", size: int | None = None) -> list:
        """``hx`` of shape (num_layers * num_directions, batch, size) (unbatched: without
        the batch dim; ``size`` the hidden size unless given) split into one state per layer
        and direction; zeros when omitted."""
        n = self.num_layers * self.num_directions
        size = size or self.hidden_size
        if hx is None:
            return [_c.zeros((batch, size), dtype=dtype) for _ in range(n)]
        if unbatched:
            hx = _m.unsqueeze(hx, 1)
        expected = (n, batch, size)
        if tuple(hx.shape) != expected:  # PyTorch's words (unbatched: with the batch dim 1)
            raise RuntimeError(f"{type(self).__name__}: Expected {which} size {expected}, got "
                               f"{list(hx.shape)}")
        return list(_m.unbind(hx, 0))

    def _finish(self, out: Tensor, unbatched: bool) -> Tensor:
        if unbatched:
            return _m.squeeze_dims(out, (1,))
        return _m.transpose(out, 0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s


def _join_directions(fwd: list, rev: list) -> Tensor:
    """The steps' states of both directions, (batch, hidden) each, as one contiguous
    (seq, batch, 2 * hidden) output: output[t] = [fwd[t], rev[t]].

    Note: written as one ``cat`` of the 2 * seq states in output order, then a reshape and a
    transpose, rather than ``cat((stack(fwd), stack(rev)), -1)``: the gradient of that form
    is a slice of a slice per step, a chain of index maps read by many kernels, which the
    compiler's fuser makes one movement group with many outputs — one the LLVM backend does
    not lower, so a compiled training step ran as a hybrid plan. This form's gradient is one
    transpose and then a slice per step, and the whole step is native. Eager costs the
    same."""
    seq, (batch, hidden) = len(fwd), fwd[0].shape
    flat = _m.cat([h for pair in zip(fwd, rev) for h in pair], -1)  # (batch, seq * 2H)
    return _m.contiguous(_m.transpose(_m.reshape(flat, (batch, seq, 2 * hidden)), 0, 1))


def _check_state_dims(name: str, unbatched: bool, *states) -> None:
    """PyTorch's check that the states have the input's batchedness (2-D with unbatched
    input, 3-D with batched)."""
    want = 2 if unbatched else 3
    given = [s for s in states if s is not None]
    if all(s.ndim == want for s in given):
        return
    kind = "unbatched 2-D" if unbatched else "batched 3-D"
    if len(states) == 1:
        raise RuntimeError(f"{name}: For {kind} input, hx should also be {want}-D but got "
                           f"{given[0].ndim}-D tensor")
    dims = ", ".join(f"{s.ndim}-D" for s in given)
    raise RuntimeError(f"{name}: For {kind} input, hx and cx should also be {want}-D but got "
                       f"({dims}) tensors")


class GRU(_RNNBase):
    """Multi-layer GRU: ``output, h_n = gru(x, h0)``; with ``bidirectional=True`` the output's
    last dim is ``2 * hidden_size`` (forward then reverse) and ``h_n`` holds
    ``num_layers * 2`` states (layer 0 forward, layer 0 reverse, layer 1 forward, ...).

    >>> out, h_n = nn.GRU(8, 16, num_layers=2, bidirectional=True)(dg.randn(5, 3, 8))
    >>> out.shape, h_n.shape
    ((5, 3, 32), (4, 3, 16))
    """

    cell_class = GRUCell

    def _step(self, x, h, params):
        return gru_step(x, h, *params)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple:
        x, unbatched = self._prepare(input)
        _check_state_dims(type(self).__name__, unbatched, hx)
        states = self._initial_states(hx, x.shape[1], x.dtype, unbatched)
        out, finals = self._run(x, states)
        h_n = _m.stack(finals, 0)
        return self._finish(out, unbatched), (_m.squeeze_dims(h_n, (1,)) if unbatched
                                              else h_n)


class LSTM(_RNNBase):
    """Multi-layer LSTM: ``output, (h_n, c_n) = lstm(x, (h0, c0))``; bidirectional as
    :class:`GRU` (d2l's sentiment model: ``nn.LSTM(100, 100, num_layers=2,
    bidirectional=True)``). With ``proj_size`` > 0, PyTorch's projections: each step's
    ``h = (o ∘ tanh(c)) W_hrᵀ`` has ``proj_size`` features (``weight_hr_l{k}``, after the
    biases in the parameters' order), ``c`` keeps ``hidden_size``, and ``h0``, ``h_n``,
    the output and the next layer's input have ``proj_size`` (per direction).

    >>> out, (h_n, c_n) = nn.LSTM(8, 16, bidirectional=True)(dg.randn(5, 3, 8))
    >>> out.shape, h_n.shape, c_n.shape
    ((5, 3, 32), (2, 3, 16), (2, 3, 16))
    """

    cell_class = LSTMCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype)

    def _step(self, x, state, params):
        h, c = lstm_step(x, state[0], state[1], *params[:4])
        return (F.linear(h, params[4]) if self.proj_size else h), c

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        x, unbatched = self._prepare(input)
        h0, c0 = (None, None) if hx is None else hx
        _check_state_dims(type(self).__name__, unbatched, h0, c0)
        batch = x.shape[1]
        hs = self._initial_states(h0, batch, x.dtype, unbatched, size=self.proj_size or None)
        cs = self._initial_states(c0, batch, x.dtype, unbatched, "hidden[1]")
        out, finals = self._run(x, list(zip(hs, cs)))
        h_n = _m.stack([s[0] for s in finals], 0)
        c_n = _m.stack([s[1] for s in finals], 0)
        if unbatched:
            h_n, c_n = _m.squeeze_dims(h_n, (1,)), _m.squeeze_dims(c_n, (1,))
        return self._finish(out, unbatched), (h_n, c_n)


class RNN(_RNNBase):
    """Multi-layer Elman RNN with tanh (or relu): ``output, h_n = rnn(x, h0)``; bidirectional
    as :class:`GRU`."""

    cell_class = RNNCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def _step(self, x, h, params):
        return rnn_step(x, h, *params, self.nonlinearity)

    forward = GRU.forward
