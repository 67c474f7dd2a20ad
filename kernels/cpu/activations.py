"""Activations forward and backward: sigmoid, tanh, relu, step. 1-D contiguous arrays;
each derivative is written in terms of the forward output ``y`` (what the backend saves)."""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1
from gpunn.kernels.cpu._vmath import select, vsigmoid, vtanh
from numba import prange


@kernel(parallel=True)
def sigmoid_forward(x, out):
    for i in prange(out.size):
        out[i] = vsigmoid(x[i])


@kernel(parallel=True)
def sigmoid_backward(dy, y, dx):
    one = y.dtype.type(1)
    for i in prange(dx.size):
        dx[i] = dy[i] * y[i] * (one - y[i])


@kernel(parallel=True)
def tanh_forward(x, out):
    for i in prange(out.size):
        out[i] = vtanh(x[i])


@kernel(parallel=True)
def tanh_backward(dy, y, dx):
    one = y.dtype.type(1)
    for i in prange(dx.size):
        dx[i] = dy[i] * (one - y[i] * y[i])


@kernel(parallel=True)
def relu_forward(x, out):
    zero = x.dtype.type(0)
    for i in prange(out.size):
        v = x[i]
        out[i] = select(v < zero, zero, v)  # NaN stays NaN, as np.maximum


@kernel(parallel=True)
def relu_backward(dy, y, dx):
    zero = y.dtype.type(0)
    for i in prange(dx.size):
        dx[i] = select(y[i] > zero, dy[i], zero)


@kernel(parallel=True)
def step_forward(x, out):
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for i in prange(out.size):
        out[i] = select(x[i] >= zero, one, zero)


@kernel
def step_backward(dx):
    """The step's derivative: zero wherever it exists."""
    zero = dx.dtype.type(0)
    for i in range(dx.size):
        dx[i] = zero


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "sigmoid_forward": [(A1, A1)],
    "sigmoid_backward": [(A1, A1, A1)],
    "tanh_forward": [(A1, A1)],
    "tanh_backward": [(A1, A1, A1)],
    "relu_forward": [(A1, A1)],
    "relu_backward": [(A1, A1, A1)],
    "step_forward": [(A1, A1)],
    "step_backward": [(A1,)],
}
