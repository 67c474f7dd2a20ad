"""Activations forward and backward: sigmoid, tanh, relu, step, leaky_relu, gelu. 1-D
contiguous arrays; the derivatives of the first four are written in terms of the forward
output ``y``, those of leaky_relu and gelu in terms of the input ``x`` (what the backend
saves for each)."""

from __future__ import annotations

import math

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, FLOAT
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


# ---------------------------------------------------------------------- leaky_relu and gelu
# Their derivatives are written in terms of the input ``x`` (what the backend saves).
@kernel(parallel=True)
def leaky_relu_forward(x, negative_slope, out):
    zero = x.dtype.type(0)
    slope = x.dtype.type(negative_slope)
    for i in prange(out.size):
        v = x[i]
        out[i] = select(v > zero, v, v * slope)


@kernel(parallel=True)
def leaky_relu_backward(dy, x, negative_slope, dx):
    zero = x.dtype.type(0)
    slope = x.dtype.type(negative_slope)
    for i in prange(dx.size):
        dx[i] = select(x[i] > zero, dy[i], dy[i] * slope)


#: GELU's constants: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi) and the tanh form's cubic term.
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_GELU_K = 0.7978845608028654
_GELU_C = 0.044715


@kernel(parallel=True)
def gelu_forward(x, tanh_form, out):
    """0.5 x (1 + erf(x / sqrt(2))), or with ``tanh_form`` 0.5 x (1 + tanh(k (x + c x^3)))."""
    half = x.dtype.type(0.5)
    one = x.dtype.type(1)
    if tanh_form:
        k = x.dtype.type(_GELU_K)
        c = x.dtype.type(_GELU_C)
        for i in prange(out.size):
            v = x[i]
            out[i] = half * v * (one + vtanh(k * (v + c * v * v * v)))
    else:
        r = x.dtype.type(_SQRT1_2)
        for i in prange(out.size):
            v = x[i]
            out[i] = half * v * (one + math.erf(v * r))


@kernel(parallel=True)
def gelu_backward(dy, x, tanh_form, dx):
    """exact: Phi(x) + x phi(x); tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)."""
    half = x.dtype.type(0.5)
    one = x.dtype.type(1)
    if tanh_form:
        k = x.dtype.type(_GELU_K)
        c = x.dtype.type(_GELU_C)
        three_c = x.dtype.type(3 * _GELU_C)
        for i in prange(dx.size):
            v = x[i]
            t = vtanh(k * (v + c * v * v * v))
            dt = k * (one + three_c * v * v)
            dx[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * dt)
    else:
        r = x.dtype.type(_SQRT1_2)
        q = x.dtype.type(_INV_SQRT_2PI)
        for i in prange(dx.size):
            v = x[i]
            cdf = half * (one + math.erf(v * r))
            dx[i] = dy[i] * (cdf + v * q * math.exp(-half * v * v))


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
    "leaky_relu_forward": [(A1, FLOAT, A1)],
    "leaky_relu_backward": [(A1, A1, FLOAT, A1)],
    "gelu_forward": [(A1, "boolean", A1)],
    "gelu_backward": [(A1, A1, "boolean", A1)],
}
