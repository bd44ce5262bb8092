"""``dyngrad.nn``: modules, layers, losses, initialisation and utilities with PyTorch's names
and semantics, all composed from the op table."""

from . import functional, init, parallel, utils
from .activation import (
    ELU,
    GELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSigmoid,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softmin,
    Softplus,
    Tanh,
)
from .attention import MultiheadAttention, NonDynamicallyQuantizableLinear
from .containers import ModuleDict, ModuleList, Sequential
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .layers import (
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
    Linear,
    MarginRankingLoss,
    MSELoss,
    NLLLoss,
    SmoothL1Loss,
)
from .layout import (
    CircularPad1d,
    CircularPad2d,
    CircularPad3d,
    ConstantPad1d,
    ConstantPad2d,
    ConstantPad3d,
    PixelShuffle,
    PixelUnshuffle,
    ReflectionPad1d,
    ReflectionPad2d,
    ReflectionPad3d,
    ReplicationPad1d,
    ReplicationPad2d,
    ReplicationPad3d,
    ZeroPad1d,
    ZeroPad2d,
    ZeroPad3d,
)
from .lazy import LazyBatchNorm1d, LazyBatchNorm2d, LazyConv1d, LazyConv2d
from .module import Module
from .normalization import (
    BatchNorm1d,
    BatchNorm2d,
    Dropout1d,
    Dropout2d,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LazyLinear,
    LocalResponseNorm,
    RMSNorm,
    SyncBatchNorm,
    Unflatten,
    Upsample,
)
from .parallel import DataParallel
from .parameter import Parameter
from .pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    MaxPool1d,
    MaxPool2d,
)
from .rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = ["Module", "Parameter", "Linear", "Sequential", "ModuleList", "ModuleDict",
           "Identity", "ReLU", "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "ELU", "GELU", "Softmax",
           "LogSoftmax", "Flatten", "Dropout", "LayerNorm", "Embedding", "RNNCell", "GRUCell",
           "LSTMCell", "RNN", "GRU", "LSTM", "MSELoss", "L1Loss", "CrossEntropyLoss", "NLLLoss",
           "BCELoss", "BCEWithLogitsLoss", "BatchNorm1d", "BatchNorm2d", "GroupNorm", "RMSNorm",
           "Dropout1d", "Dropout2d", "Upsample", "Unflatten", "LazyLinear", "LazyConv1d",
           "LazyConv2d", "LazyBatchNorm1d", "LazyBatchNorm2d", "DataParallel", "parallel",
           "SyncBatchNorm",
           "Conv1d", "Conv2d",
           "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool1d",
           "AdaptiveAvgPool2d",
           "AdaptiveMaxPool2d", "SmoothL1Loss", "HuberLoss", "KLDivLoss", "MarginRankingLoss",
           "CosineSimilarity", "Hardtanh", "ReLU6", "Hardswish", "Hardsigmoid", "Mish",
           "Softplus", "PReLU", "Softmin", "LogSigmoid", "PixelShuffle", "PixelUnshuffle",
           "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d",
           "ReplicationPad2d", "ReplicationPad3d", "CircularPad1d", "CircularPad2d",
           "CircularPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ZeroPad1d",
           "ZeroPad2d", "ZeroPad3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d",
           "LocalResponseNorm", "MultiheadAttention", "NonDynamicallyQuantizableLinear",
           "Transformer", "TransformerEncoder", "TransformerEncoderLayer",
           "TransformerDecoder", "TransformerDecoderLayer", "functional", "init", "utils"]
