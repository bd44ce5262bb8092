"""``dyngrad.nn``: modules, layers, losses, initialisation and utilities with PyTorch's names
and semantics, all composed from the op table."""

from . import functional, init, utils
from .containers import ModuleDict, ModuleList, Sequential
from .layers import (
                     GELU,
                     BCELoss,
                     BCEWithLogitsLoss,
                     CrossEntropyLoss,
                     Dropout,
                     Embedding,
                     Flatten,
                     Identity,
                     L1Loss,
                     LayerNorm,
                     LeakyReLU,
                     Linear,
                     LogSoftmax,
                     MSELoss,
                     NLLLoss,
                     ReLU,
                     Sigmoid,
                     SiLU,
                     Softmax,
                     Tanh,
)
from .module import Module
from .normalization import (
    BatchNorm1d,
    BatchNorm2d,
    Dropout1d,
    Dropout2d,
    GroupNorm,
    LazyLinear,
    RMSNorm,
    Unflatten,
    Upsample,
)
from .parameter import Parameter
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["Module", "Parameter", "Linear", "Sequential", "ModuleList", "ModuleDict",
           "Identity", "ReLU", "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "GELU", "Softmax",
           "LogSoftmax", "Flatten", "Dropout", "LayerNorm", "Embedding", "RNNCell", "GRUCell",
           "LSTMCell", "RNN", "GRU", "LSTM", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "RMSNorm",
           "Dropout1d", "Dropout2d", "Upsample", "Unflatten", "LazyLinear", "functional",
           "init", "utils"]
