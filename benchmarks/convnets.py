"""W7's convolutional networks, in dyngrad with PyTorch's layers and parameter names (the
mirrors copy the weights by name), and the matrix products their training steps amount to.

- :class:`MnistNet` is pytorch/examples' ``mnist/main.py`` model, layer for layer.
- :class:`SmallResNet` is a CIFAR-sized ResNet cut to two basic blocks: one keeping 16
  channels at full resolution (identity shortcut), one halving the resolution into 32
  channels (a strided 1×1 convolution with BatchNorm on the shortcut).

A convolution's bound is its im2col product: ``(N·Ho·Wo, Cin·k·k) @ (Cout, Cin·k·k)ᵀ``
forward, the same shapes for the input and weight gradients (:func:`conv_matmul`); that is
what numpy-based convolutions, dyngrad's among them, multiply.

>>> sum(p.numel() for p in MnistNet().parameters())
1199882
"""

from __future__ import annotations

import dyngrad as dg
import dyngrad.nn.functional as F
from dyngrad import nn


class MnistNet(nn.Module):
    """Conv(1→32, 3) → ReLU → Conv(32→64, 3) → ReLU → max_pool2d(2) → Dropout(0.25) →
    flatten → Linear(9216→128) → ReLU → Dropout(0.5) → Linear(128→10) → log_softmax, on
    28×28 single-channel images (pytorch/examples, unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = dg.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def mnist_matmuls(batch: int) -> list:
    """The mnist step's products, ``(M, K, N, needs_dx)`` as :func:`benchmarks.measure.
    step_bound_us` takes them (the first convolution's input needs no gradient)."""
    return [conv_matmul(batch, 28, 1, 32, 3, needs_dx=False), conv_matmul(batch, 26, 32, 64, 3),
            (batch, 9216, 128, True), (batch, 128, 10, True)]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a shortcut: the identity when the shape is
    kept, else a strided 1×1 convolution with BatchNorm."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem Conv(3→16, 3, padding 1) + BatchNorm + ReLU → BasicBlock(16, 16) →
    BasicBlock(16, 32, stride 2) → AdaptiveAvgPool2d(1) → Linear(32→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet_matmuls(batch: int, size: int) -> list:
    """The ResNet step's products at ``size``×``size`` inputs (every convolution keeps or
    halves the size: padding 1 on the 3×3 ones)."""
    half = size // 2
    return [conv_matmul(batch, size, 3, 16, 3, pad=1, needs_dx=False),
            *[conv_matmul(batch, size, 16, 16, 3, pad=1)] * 2,
            conv_matmul(batch, size, 16, 32, 3, stride=2, pad=1),
            conv_matmul(batch, half, 32, 32, 3, pad=1),
            conv_matmul(batch, size, 16, 32, 1, stride=2),
            (batch, 32, 10, True)]


def conv_matmul(batch: int, size: int, cin: int, cout: int, k: int, stride: int = 1,
                pad: int = 0, needs_dx: bool = True) -> tuple:
    """A square convolution's im2col product, ``(N·Ho·Wo, Cin·k·k, Cout, needs_dx)``.

    >>> conv_matmul(64, 28, 1, 32, 3, needs_dx=False)
    (43264, 9, 32, False)
    """
    out = (size + 2 * pad - k) // stride + 1
    return (batch * out * out, cin * k * k, cout, needs_dx)
