"""A small residual network for 32x32 images (CIFAR-10), and smaller ones (8x8 digits)."""

from __future__ import annotations

from gpunn import functional as F
from gpunn import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (He et al., 2016):
    relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)). The first convolution has stride
    ``stride``; when that or the channel count changes the shape, the shortcut is a 1x1
    convolution with the same stride and a batch norm (``shortcut``), else the identity.
    Convolutions have no bias (the batch norm that follows has one). (N, in, H, W) ->
    (N, out, H/stride, W/stride)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet8(nn.Module):
    """ResNet-8: a 3x3 convolution stem (conv, batch norm, ReLU; ``width`` channels), three
    stages of one basic block each (``width``, 2*``width`` and 4*``width`` channels, the last
    two halving the resolution), global average pooling and a linear classifier: 7
    convolutions and the linear layer.

    Input (N, in_channels, H, W), 32x32 for CIFAR-10 (8x8 digits work too: 8 -> 4 -> 2);
    output (N, num_classes) logits. Parameter names follow PyTorch's ResNets (``conv1``,
    ``bn1``, ``layer1.conv1``, ``layer2.shortcut.0``, ``fc``).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(axis=(2, 3)))  # global average pooling
