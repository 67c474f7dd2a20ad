"""Optimizer updates, in place, one pass per parameter, with PyTorch's formulas (and the
reference's order of operations, so float32 results round alike). Scalars arrive as
Python floats and are cast to the parameter's dtype first (as NumPy does with a Python
scalar). Arrays are 1-D views of the parameter and its state.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, FLOAT
from numba import prange


@kernel(parallel=True)
def sgd_update(p, g, buf, lr, momentum, weight_decay):
    """g' = g + weight_decay*p; with momentum (buf not empty): buf = momentum*buf + g',
    p -= lr*buf; else p -= lr*g'."""
    t = p.dtype.type
    lr, momentum, weight_decay = t(lr), t(momentum), t(weight_decay)
    zero = t(0)
    for i in prange(p.size):
        d = g[i]
        if weight_decay != zero:
            d = d + weight_decay * p[i]
        if buf.size:
            d = buf[i] * momentum + d
            buf[i] = d
        p[i] -= lr * d


@kernel(parallel=True)
def adam_update(
    p,
    g,
    m,
    v,
    beta1,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,
    bias2_sqrt,
    eps,
    weight_decay,
):
    """m = beta1*m + (1-beta1)*g; v = beta2*v + (1-beta2)*g*g;
    p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), step_size = lr / (1 - beta1^t)."""
    t = p.dtype.type
    beta1, one_minus_beta1, beta2 = t(beta1), t(one_minus_beta1), t(beta2)
    one_minus_beta2, step_size, bias2_sqrt = t(one_minus_beta2), t(step_size), t(bias2_sqrt)
    eps, weight_decay = t(eps), t(weight_decay)
    zero = t(0)
    for i in prange(p.size):
        d = g[i]
        if weight_decay != zero:
            d = d + weight_decay * p[i]
        mi = m[i] * beta1 + one_minus_beta1 * d
        vi = v[i] * beta2 + one_minus_beta2 * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bias2_sqrt + eps)


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "sgd_update": [(A1, A1, A1, FLOAT, FLOAT, FLOAT)],
    "adam_update": [(A1, A1, A1, A1) + (FLOAT,) * 8],
}
