"""Layers, losses and the Module container."""

from gpunn.nn import functional, utils
from gpunn.nn.layers import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
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
from gpunn.nn.recurrent import LSTM, RNN

__all__ = [
    "AvgPool2d",
    "BCELoss",
    "BCEWithLogitsLoss",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "LSTM",
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
    "utils",
]
