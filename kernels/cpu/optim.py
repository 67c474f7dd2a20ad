"""Optimizer updates, in place, one pass per parameter, with PyTorch's formulas (and the
reference's order of operations, so float32 results round alike). Scalars arrive as
Python floats and are cast to the parameter's dtype first (as NumPy does with a Python
scalar). Arrays are 1-D views of the parameter and its state.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, BOOL, FLOAT
from numba import prange


@kernel(parallel=True)
def sgd_update(p, g, buf, lr, momentum, weight_decay, nesterov):
    """g' = g + weight_decay*p; with momentum (buf not empty): buf = momentum*buf + g',
    p -= lr*buf (nesterov: p -= lr*(g' + momentum*buf)); else p -= lr*g'."""
    t = p.dtype.type
    lr, momentum, weight_decay = t(lr), t(momentum), t(weight_decay)
    zero = t(0)
    for i in prange(p.size):
        d = g[i]
        if weight_decay != zero:
            d = d + weight_decay * p[i]
        if buf.size:
            b = buf[i] * momentum + d
            buf[i] = b
            d = d + momentum * b if nesterov else b
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
    decay,
):
    """p *= decay (AdamW's 1 - lr*weight_decay; 1 for Adam); g' = g + weight_decay*p (0 for
    AdamW); m = beta1*m + (1-beta1)*g'; v = beta2*v + (1-beta2)*g'*g';
    p -= step_size * m / (sqrt(v) / bias2_sqrt + eps), step_size = lr / (1 - beta1^t)."""
    t = p.dtype.type
    beta1, one_minus_beta1, beta2 = t(beta1), t(one_minus_beta1), t(beta2)
    one_minus_beta2, step_size, bias2_sqrt = t(one_minus_beta2), t(step_size), t(bias2_sqrt)
    eps, weight_decay, decay = t(eps), t(weight_decay), t(decay)
    zero, one = t(0), t(1)
    for i in prange(p.size):
        if decay != one:
            p[i] = p[i] * decay
        d = g[i]
        if weight_decay != zero:
            d = d + weight_decay * p[i]
        mi = m[i] * beta1 + one_minus_beta1 * d
        vi = v[i] * beta2 + one_minus_beta2 * d * d
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi) / bias2_sqrt + eps)


@kernel(parallel=True)
def clip_grad_norm_reduce(g, norm_type):
    """sum(|g|^norm_type) in float64 (norm_type inf: max |g|, nan if any element is nan)."""
    acc = 0.0
    if norm_type == np.inf:
        for i in range(g.size):
            a = abs(np.float64(g[i]))
            if not a <= acc:  # larger, or nan
                acc = a
                if a != a:
                    break
        return acc
    if norm_type == 2.0:
        for i in prange(g.size):
            a = np.float64(g[i])
            acc += a * a
    elif norm_type == 1.0:
        for i in prange(g.size):
            acc += abs(np.float64(g[i]))
    else:
        for i in prange(g.size):
            acc += abs(np.float64(g[i])) ** norm_type
    return acc


@kernel(parallel=True)
def clip_grad_norm_scale(g, coef):
    """g *= coef (coef: a one-element array of g's dtype)."""
    c = coef[0]
    for i in prange(g.size):
        g[i] = g[i] * c


@kernel(parallel=True)
def clip_grad_value_update(g, clip_value):
    """g = min(max(g, -clip_value), clip_value); nan stays nan."""
    t = g.dtype.type
    hi = t(clip_value)
    lo = -hi
    for i in prange(g.size):
        x = g[i]
        if x > hi:
            g[i] = hi
        elif x < lo:
            g[i] = lo


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "sgd_update": [(A1, A1, A1, FLOAT, FLOAT, FLOAT, BOOL)],
    "adam_update": [(A1, A1, A1, A1) + (FLOAT,) * 9],
    "clip_grad_norm_reduce": [(A1, FLOAT)],
    "clip_grad_norm_scale": [(A1, A1)],
    "clip_grad_value_update": [(A1, FLOAT)],
}
