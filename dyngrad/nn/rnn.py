"""Recurrent layers: RNNCell, GRUCell, LSTMCell and multi-layer GRU / LSTM with PyTorch's
equations, weight layout (gates stacked in ``weight_ih``/``weight_hh``), parameter names and
initialisation U(−1/√hidden, 1/√hidden)."""

from __future__ import annotations

import math

from .. import dtypes as _dt
from ..ops import creation as _c
from ..ops import elementwise as _e
from ..ops import movement as _m
from ..tensor import Tensor
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
                 dtype=None) -> None:
        super().__init__()
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
                 nonlinearity: str = "tanh", dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(input_size, hidden_size, bias, dtype)
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
    cell_class: type = GRUCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype=None) -> None:
        super().__init__()
        if bidirectional:
            raise NotImplementedError(f"{type(self).__name__}: bidirectional=True is not "
                                      f"supported yet; run two layers over x and x reversed")
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, \
            num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        gates = self.cell_class.gates
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            setattr(self, f"weight_ih_l{layer}", _param(gates * hidden_size, in_size,
                                                        dtype=dtype))
            setattr(self, f"weight_hh_l{layer}", _param(gates * hidden_size, hidden_size,
                                                        dtype=dtype))
            if bias:
                setattr(self, f"bias_ih_l{layer}", _param(gates * hidden_size, dtype=dtype))
                setattr(self, f"bias_hh_l{layer}", _param(gates * hidden_size, dtype=dtype))
        stdv = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    @property
    def _flat_weights_names(self) -> list:
        """PyTorch's names of the parameters, layer by layer (d2l's ``init_seq2seq`` walks
        them): ``weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_ih_l1, ...``."""
        kinds = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        return [f"{k}_l{layer}" for layer in range(self.num_layers) for k in kinds]

    @property
    def _flat_weights(self) -> list:
        """The parameters in :attr:`_flat_weights_names`' order."""
        return [self._parameters[name] for name in self._flat_weights_names]

    def _layer_params(self, layer: int) -> tuple:
        g = self.__dict__
        return (g[f"weight_ih_l{layer}"], g[f"weight_hh_l{layer}"],
                g.get(f"bias_ih_l{layer}"), g.get(f"bias_hh_l{layer}"))

    def _step(self, x, state, params):
        raise NotImplementedError(f"{type(self).__name__} must implement _step()")

    def _run(self, input: Tensor, states: list) -> tuple:
        """input (seq, batch, features) → output (seq, batch, hidden), final states."""
        seq = input.shape[0]
        layer_in = input
        finals = []
        for layer in range(self.num_layers):
            params = self._layer_params(layer)
            state = states[layer]
            outs = []
            for t in range(seq):
                state = self._step(layer_in[t], state, params)
                outs.append(state[0] if isinstance(state, tuple) else state)
            layer_in = _m.stack(outs, 0)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
            finals.append(state)
        return layer_in, finals

    def _prepare(self, input: Tensor):
        if input.ndim not in (2, 3) or input.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected input of shape (seq, batch, "
                             f"{self.input_size}) (batch first: (batch, seq, "
                             f"{self.input_size})) or unbatched (seq, {self.input_size}), "
                             f"got {list(input.shape)}")
        unbatched = input.ndim == 2
        if unbatched:
            input = _m.unsqueeze(input, 1)
        elif self.batch_first:
            input = _m.transpose(input, 0, 1)
        return input, unbatched

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
        return s


def _split_layers(h: Tensor | None, num_layers: int, batch: int, hidden: int, dtype,
                  unbatched: bool) -> list:
    if h is None:
        return [_c.zeros((batch, hidden), dtype=dtype) for _ in range(num_layers)]
    if unbatched:
        h = _m.unsqueeze(h, 1)
    if h.shape != (num_layers, batch, hidden):
        raise RuntimeError(f"Expected hidden size {(num_layers, batch, hidden)}, got "
                           f"{tuple(h.shape)}")
    return list(_m.unbind(h, 0))


class GRU(_RNNBase):
    """Multi-layer GRU: ``output, h_n = gru(x, h0)``."""

    cell_class = GRUCell

    def _step(self, x, h, params):
        return gru_step(x, h, *params)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple:
        x, unbatched = self._prepare(input)
        states = _split_layers(hx, self.num_layers, x.shape[1], self.hidden_size, x.dtype,
                               unbatched)
        out, finals = self._run(x, states)
        h_n = _m.stack(finals, 0)
        return self._finish(out, unbatched), (_m.squeeze_dims(h_n, (1,)) if unbatched
                                              else h_n)


class LSTM(_RNNBase):
    """Multi-layer LSTM: ``output, (h_n, c_n) = lstm(x, (h0, c0))``."""

    cell_class = LSTMCell

    def _step(self, x, state, params):
        return lstm_step(x, state[0], state[1], *params)

    def forward(self, input: Tensor, hx: tuple | None = None) -> tuple:
        x, unbatched = self._prepare(input)
        h0, c0 = (None, None) if hx is None else hx
        hs = _split_layers(h0, self.num_layers, x.shape[1], self.hidden_size, x.dtype,
                           unbatched)
        cs = _split_layers(c0, self.num_layers, x.shape[1], self.hidden_size, x.dtype,
                           unbatched)
        out, finals = self._run(x, list(zip(hs, cs)))
        h_n = _m.stack([s[0] for s in finals], 0)
        c_n = _m.stack([s[1] for s in finals], 0)
        if unbatched:
            h_n, c_n = _m.squeeze_dims(h_n, (1,)), _m.squeeze_dims(c_n, (1,))
        return self._finish(out, unbatched), (h_n, c_n)


class RNN(_RNNBase):
    """Multi-layer Elman RNN with tanh (or relu): ``output, h_n = rnn(x, h0)``."""

    cell_class = RNNCell

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
                             f"'relu'.")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype)
        self.nonlinearity = nonlinearity

    def _step(self, x, h, params):
        return rnn_step(x, h, *params, self.nonlinearity)

    forward = GRU.forward
