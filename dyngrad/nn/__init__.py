"""``dyngrad.nn``: modules, layers, losses, initialisation and utilities with PyTorch's names
and semantics, all composed from the op table."""

from . import functional, init, utils
from .containers import ModuleDict, ModuleList, Sequential
from .layers import (
                     GELU,
                     BCELoss,
                     BCEWithLogitsLoss,
                     CosineSimilarity,
                     CrossEntropyLoss,
                     Dropout,
                     Embedding,
                     Flatten,
                     HuberLoss,
                     Identity,
                     KLDivLoss,
                     L1Loss,
                     LayerNorm,
                     LeakyReLU,
                     Linear,
                     LogSoftmax,
                     MarginRankingLoss,
                     MSELoss,
                     NLLLoss,
                     ReLU,
                     Sigmoid,
                     SiLU,
                     SmoothL1Loss,
                     Softmax,
                     Tanh,
)
from .module import Module
from .parameter import Parameter
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["Module", "Parameter", "Linear", "Sequential", "ModuleList", "ModuleDict",
           "Identity", "ReLU", "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "GELU", "Softmax",
           "LogSoftmax", "Flatten", "Dropout", "LayerNorm", "Embedding", "RNNCell", "GRUCell",
           "LSTMCell", "RNN", "GRU", "LSTM", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "functional", "init", "utils", "SmoothL1Loss",
           "HuberLoss", "KLDivLoss", "MarginRankingLoss", "CosineSimilarity"]
