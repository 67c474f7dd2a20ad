"""Layers. Each owns its parameters and calls gpunn.functional; no math of its own.
Parameter names, shapes and initialisation follow PyTorch's for the same layer."""

from __future__ import annotations

import math

from gpunn import functional as F
from gpunn.nn.module import Module, Parameter
from gpunn.tensor import uniform


def _uniform_parameter(shape, bound):
    return Parameter(uniform(shape, -bound, bound))


class Linear(Module):
    """y = x @ weight.T + bias. weight (out_features, in_features), bias (out_features,),
    both U(-1/sqrt(in), 1/sqrt(in)) as PyTorch initialises them.

    Input (N, in_features) or (..., in_features); output (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.weight = _uniform_parameter((out_features, in_features), bound)
        self.bias = _uniform_parameter((out_features,), bound) if bias else None

    def forward(self, x, activation=None):
        return F.linear(x, self.weight, self.bias, activation=activation)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Perceptron(Module):
    """One neuron with a step output: y = step(x @ weight.T + bias), y in {0, 1}.

    Input (N, in_features); output (N, 1). Parameters as Linear(in_features, 1). The step
    has no useful gradient: train it with the perceptron rule (gpunn.models.Perceptron).
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform_parameter((1, in_features), bound)
        self.bias = _uniform_parameter((1,), bound)

    def forward(self, x):
        return F.step(F.linear(x, self.weight, self.bias))

    def extra_repr(self):
        return f"in_features={self.in_features}"


class Conv2d(Module):
    """2-D convolution on NCHW input. weight (out, in, kh, kw), bias (out,), both
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in*kh*kw, as PyTorch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        bound = 1 / math.sqrt(in_channels * kh * kw)
        self.weight = _uniform_parameter((out_channels, in_channels, kh, kw), bound)
        self.bias = _uniform_parameter((out_channels,), bound) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class MaxPool2d(Module):
    """Max pooling; stride defaults to kernel_size."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    """Average pooling (zero padding counted); stride defaults to kernel_size."""

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class Flatten(Module):
    """Flattens dimensions start_dim.. into one: (N, C, H, W) -> (N, C*H*W)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return x.reshape(x.shape[: self.start_dim] + (-1,))


class Dropout(Module):
    """Inverted dropout while training; the identity after ``eval()``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Softmax(Module):
    """Softmax along ``axis`` (``dim`` is accepted as PyTorch's name for it)."""

    def __init__(self, axis: int = -1, dim: int | None = None):
        super().__init__()
        self.axis = axis if dim is None else dim

    def forward(self, x):
        return F.softmax(x, self.axis)


class LeakyReLU(Module):
    """x where x > 0, else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope  # inplace: accepted; gpunn never writes inputs

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class GELU(Module):
    """x * Phi(x) (the exact erf form), or its tanh approximation with approximate="tanh"."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Identity(Module):
    """Returns its input; takes (and ignores) any arguments, as PyTorch's."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Sequential(Module):
    """Runs its modules in order; they are registered as "0", "1", ..."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
