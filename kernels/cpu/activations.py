"""Activations forward and backward: sigmoid, tanh, relu, step, leaky_relu, gelu. 1-D
contiguous arrays; the derivatives of the first four are written in terms of the forward
output ``y``, those of leaky_relu and gelu in terms of the input ``x`` (what the backend
saves for each)."""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, FLOAT
from gpunn.kernels.cpu._vmath import select, vexp, vsigmoid, vtanh
from numba import njit, prange


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


# erf without a libm call per element (Numba's math.erf is a scalar call, about 25 ns per
# element), so the exact GELU loops vectorise: Chebyshev series in float64, gpunn's own
# interpolants (numpy.polynomial.chebyshev.chebinterpolate of 40-digit values):
# erf(x) / x as a series in t = x^2 / 2 - 1 for |x| < 2 (degree 18), and erfc(x) exp(x^2)
# in t = |x| / 2 - 2 for 2 <= |x| < 6 (degree 20); erf is +-1 in float64 beyond 6.
# Measured against 40-digit values: relative error below 3e-15 for |x| < 2, absolute
# error below 2e-16 above (tests/test_numba_backend.py checks it against SciPy).
_ERF_SMALL = np.array(
    (
        0.7415552820424018,
        -0.301071073386595,
        0.06899483068983148,
        -0.01391627126472214,
        0.0024207995224334003,
        -0.000365863968584781,
        4.8620984432327273e-05,
        -5.7492565580986644e-06,
        6.113243580182913e-07,
        -5.8991015411694776e-08,
        5.207009326637178e-09,
        -4.2329763670853467e-10,
        3.188126955415938e-11,
        -2.236270379400645e-12,
        1.4722725962344971e-13,
        -9.252832418389133e-15,
        1.1335961409330546e-15,
        -1.2855213969343918e-16,
        2.8339903523326366e-16,
    )
)
_ERFC_LARGE = np.array(
    (
        0.15454893254411423,
        -0.07674006034821483,
        0.01849487416970198,
        -0.004337233595514157,
        0.0009916839077237917,
        -0.0002214489070308456,
        4.836760032116419e-05,
        -1.0346098326612906e-05,
        2.169871943140474e-06,
        -4.466493754718256e-07,
        9.031674377639395e-08,
        -1.795533945511524e-08,
        3.5120800084568135e-09,
        -6.763532254068601e-10,
        1.283184427750468e-10,
        -2.3997012330609604e-11,
        4.425916714814147e-12,
        -8.054287668148956e-13,
        1.4458082739908118e-13,
        -2.5563230402746785e-14,
        4.098017333975623e-15,
    )
)


@njit(inline="always")
def _chebyshev(c, t):
    """sum_k c[k] T_k(t) by Clenshaw's recurrence."""
    b1 = 0.0
    b2 = 0.0
    for k in range(c.size - 1, 0, -1):
        b1, b2 = 2.0 * t * b1 - b2 + c[k], b1
    return c[0] + t * b1 - b2


@njit(inline="always")
def _erf64(x):
    """erf of a float64, branch-free (both series are evaluated, one is selected)."""
    a = abs(x)
    small = a * _chebyshev(_ERF_SMALL, 0.5 * a * a - 1.0)
    large = 1.0 - vexp(-a * a) * _chebyshev(_ERFC_LARGE, 0.5 * a - 2.0)
    r = select(a < 2.0, small, select(a < 6.0, large, 1.0))
    r = select(x < 0.0, -r, r)
    return select(a == a, r, a)  # NaN stays NaN


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
            out[i] = half * v * (one + x.dtype.type(_erf64(np.float64(v * r))))


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
            cdf = half * (one + x.dtype.type(_erf64(np.float64(v * r))))
            dx[i] = dy[i] * (cdf + v * q * vexp(-half * v * v))


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
