"""Differentiable ops. Each validates its inputs, then runs through ``autograd.apply``,
which calls ``<op>_forward`` / ``<op>_backward`` on the inputs' backend."""

from gpunn.functional.activations import (
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    softmax,
    step,
    tanh,
)
from gpunn.functional.conv import avg_pool2d, conv2d, max_pool2d
from gpunn.functional.dropout import dropout
from gpunn.functional.elementwise import add, div, exp, log, mul, neg, pow, sub
from gpunn.functional.embedding import embedding
from gpunn.functional.linalg import linear, matmul
from gpunn.functional.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    mse_loss,
)
from gpunn.functional.normalization import batch_norm, layer_norm
from gpunn.functional.recurrent import lstm, lstm_cell, rnn, rnn_cell
from gpunn.functional.shape import getitem, mean, reshape, stack, sum, transpose, unstack

__all__ = [
    "add",
    "avg_pool2d",
    "batch_norm",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "conv2d",
    "cross_entropy",
    "div",
    "dropout",
    "embedding",
    "exp",
    "gelu",
    "getitem",
    "layer_norm",
    "leaky_relu",
    "linear",
    "log",
    "log_softmax",
    "lstm",
    "lstm_cell",
    "matmul",
    "max_pool2d",
    "mean",
    "mse_loss",
    "mul",
    "neg",
    "pow",
    "relu",
    "reshape",
    "rnn",
    "rnn_cell",
    "sigmoid",
    "softmax",
    "stack",
    "step",
    "sub",
    "sum",
    "tanh",
    "transpose",
    "unstack",
]
