"""``dyngrad.nn``: modules, layers, losses, initialisation and utilities with PyTorch's names
and semantics, all composed from the op table."""

from . import functional, init, utils
from .containers import ModuleDict, ModuleList, Sequential
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .layers import (
                     ELU,
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
from .pooling import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__all__ = ["Module", "Parameter", "Linear", "Sequential", "ModuleList", "ModuleDict",
           "Identity", "ReLU", "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "ELU", "GELU", "Softmax",
           "LogSoftmax", "Flatten", "Dropout", "LayerNorm", "Embedding", "RNNCell", "GRUCell",
           "LSTMCell", "RNN", "GRU", "LSTM", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "RMSNorm",
           "Dropout1d", "Dropout2d", "Upsample", "Unflatten", "LazyLinear", "Conv1d", "Conv2d",
           "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "SmoothL1Loss", "HuberLoss", "KLDivLoss", "MarginRankingLoss",
           "CosineSimilarity", "functional", "init", "utils"]
