"""Layers, losses and the Module container."""

from gpunn.nn import functional
from gpunn.nn.layers import (
    GELU,
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Perceptron,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from gpunn.nn.losses import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from gpunn.nn.module import Module, Parameter
from gpunn.nn.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from gpunn.nn.recurrent import LSTM, RNN
from gpunn.nn.sparse import Embedding

__all__ = [
    "AvgPool2d",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Embedding",
    "Flatten",
    "GELU",
    "Identity",
    "LSTM",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "Parameter",
    "Perceptron",
    "RNN",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "functional",
]
