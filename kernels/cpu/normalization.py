"""Batch normalisation and layer normalisation, forward and backward.

Batch norm works on a 3-D view (N, C, S) of its (N, C, *) input, S the product of the
spatial sizes, and reduces per channel over N and S; layer norm on a 2-D view (M, D)
and reduces per row. Sums are accumulated in float64, statistics are two-pass (the mean,
then the squared deviations from it), as the reference's ``mean`` and ``var``.
"""

from __future__ import annotations

import math

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, A3, FLOAT
from numba import prange


# ---------------------------------------------------------------------- batch norm
@kernel(parallel=True, fastmath=True)
def batch_norm_stats(x, mean, var):
    """Per channel of x (N, C, S): mean and biased variance over N and S."""
    n, c, s = x.shape
    for ch in prange(c):
        acc = 0.0
        for i in range(n):
            row = x[i, ch]
            for k in range(s):
                acc += row[k]
        m = acc / (n * s)
        acc2 = 0.0
        for i in range(n):
            row = x[i, ch]
            for k in range(s):
                d = row[k] - m
                acc2 += d * d
        mean[ch] = m
        var[ch] = acc2 / (n * s)


@kernel
def batch_norm_running(mean, var, factor, unbias, running_mean, running_var):
    """In place: running = (1 - factor) * running + factor * batch statistic, the variance
    times ``unbias`` (M / (M - 1): the unbiased estimate)."""
    keep = 1.0 - factor
    for ch in range(mean.size):
        running_mean[ch] = keep * running_mean[ch] + factor * mean[ch]
        running_var[ch] = keep * running_var[ch] + factor * (var[ch] * unbias)


@kernel(parallel=True)
def batch_norm_forward(x, mean, var, weight, bias, eps, y, invstd):
    """y = (x - mean) * invstd * weight + bias per channel, invstd = 1 / sqrt(var + eps);
    writes invstd (C,). weight, bias: (C,), or empty for none."""
    n, c, s = x.shape
    for ch in range(c):
        invstd[ch] = 1.0 / math.sqrt(var[ch] + eps)
    for j in prange(n * c):
        i, ch = j // c, j % c
        scale = invstd[ch] * weight[ch] if weight.size else invstd[ch]
        shift = bias[ch] if bias.size else y.dtype.type(0)
        m = mean[ch]
        src = x[i, ch]
        dst = y[i, ch]
        for k in range(s):
            dst[k] = (src[k] - m) * scale + shift


@kernel(parallel=True, fastmath=True)
def batch_norm_backward(dy, x, mean, invstd, weight, training, dx, dweight, dbias, dmean, dvar):
    """Per channel: the sums of dy and of dy * xhat over N and S, and from them
    dbias = sum(dy), dweight = sum(dy * xhat) and dx: in training (batch statistics)
    scale * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M), else dy * scale, with
    scale = weight * invstd. The running statistics' gradients: zero in training, else
    dmean = -scale * sum(dy), dvar = -scale * invstd * sum(dy * xhat) / 2. An output that
    is empty is not wanted."""
    n, c, s = x.shape
    count = n * s
    for ch in prange(c):
        m = mean[ch]
        inv = invstd[ch]
        sdy = 0.0
        sdyx = 0.0
        for i in range(n):
            g = dy[i, ch]
            row = x[i, ch]
            for k in range(s):
                sdy += g[k]
                sdyx += g[k] * ((row[k] - m) * inv)
        if dbias.size:
            dbias[ch] = sdy
        if dweight.size:
            dweight[ch] = sdyx
        scale = inv * weight[ch] if weight.size else inv
        if dmean.size:
            dmean[ch] = 0.0 if training else -scale * sdy
        if dvar.size:
            dvar[ch] = 0.0 if training else -0.5 * scale * inv * sdyx
        if dx.size:
            a = sdy / count
            b = sdyx / count
            for i in range(n):
                g = dy[i, ch]
                row = x[i, ch]
                out = dx[i, ch]
                for k in range(s):
                    if training:
                        out[k] = scale * (g[k] - a - (row[k] - m) * inv * b)
                    else:
                        out[k] = g[k] * scale


# ---------------------------------------------------------------------- layer norm
@kernel(parallel=True, fastmath=True)
def layer_norm_forward(x, weight, bias, eps, y, mean, invstd):
    """Per row of x (M, D): y = (x - mean) * invstd * weight + bias; writes mean and
    invstd (M,). weight, bias: (D,), or empty for none."""
    rows, d = x.shape
    for r in prange(rows):
        row = x[r]
        acc = 0.0
        for k in range(d):
            acc += row[k]
        m = acc / d
        acc2 = 0.0
        for k in range(d):
            t = row[k] - m
            acc2 += t * t
        inv = 1.0 / math.sqrt(acc2 / d + eps)
        mean[r] = m
        invstd[r] = inv
        mr, ir = mean[r], invstd[r]
        out = y[r]
        for k in range(d):
            v = (row[k] - mr) * ir
            if weight.size:
                v = v * weight[k]
            if bias.size:
                v = v + bias[k]
            out[k] = v


@kernel(parallel=True, fastmath=True)
def layer_norm_backward(dy, x, mean, invstd, weight, dx):
    """Per row: g = dy * weight (dy without weight), xhat = (x - mean) * invstd,
    dx = invstd * (g - mean(g) - xhat * mean(g * xhat))."""
    rows, d = x.shape
    for r in prange(rows):
        row = x[r]
        gr = dy[r]
        m = mean[r]
        inv = invstd[r]
        sg = 0.0
        sgx = 0.0
        for k in range(d):
            g = gr[k] * weight[k] if weight.size else gr[k]
            sg += g
            sgx += g * ((row[k] - m) * inv)
        a = sg / d
        b = sgx / d
        out = dx[r]
        for k in range(d):
            g = gr[k] * weight[k] if weight.size else gr[k]
            out[k] = inv * (g - a - (row[k] - m) * inv * b)


#: Rows per partial sum of layer_norm_affine_grad: at least AFFINE_ROWS, and more when
#: there are so many rows that there would be over AFFINE_CHUNKS partials. Fixed by the
#: shape alone, so the result does not depend on the thread count.
AFFINE_ROWS = 64
AFFINE_CHUNKS = 256


@kernel(parallel=True, fastmath=True)
def layer_norm_affine_grad(dy, x, mean, invstd, dweight, dbias):
    """Column sums over the rows: dweight = sum(dy * xhat), dbias = sum(dy) (each (D,), or
    empty for not wanted). Each chunk of rows sums into its own float64 partial (parallel
    over chunks), then the partials are added in chunk order."""
    rows, d = x.shape
    step = max(AFFINE_ROWS, (rows + AFFINE_CHUNKS - 1) // AFFINE_CHUNKS)
    chunks = (rows + step - 1) // step
    pw = np.zeros((chunks, d))
    pb = np.zeros((chunks, d))
    for c in prange(chunks):
        aw = pw[c]
        ab = pb[c]
        for r in range(c * step, min(rows, (c + 1) * step)):
            xr = x[r]
            gr = dy[r]
            m = mean[r]
            inv = invstd[r]
            for k in range(d):
                g = gr[k]
                ab[k] += g
                aw[k] += g * ((xr[k] - m) * inv)
    for c in range(1, chunks):
        pw[0] += pw[c]
        pb[0] += pb[c]
    if dweight.size:
        for k in range(d):
            dweight[k] = pw[0, k]
    if dbias.size:
        for k in range(d):
            dbias[k] = pb[0, k]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "batch_norm_stats": [(A3, A1, A1)],
    "batch_norm_running": [(A1, A1, FLOAT, FLOAT, A1, A1)],
    "batch_norm_forward": [(A3, A1, A1, A1, A1, FLOAT, A3, A1)],
    "batch_norm_backward": [(A3, A3, A1, A1, A1, "boolean", A3, A1, A1, A1, A1)],
    "layer_norm_forward": [(A2, A1, A1, FLOAT, A2, A1, A1)],
    "layer_norm_backward": [(A2, A2, A1, A1, A1, A2)],
    "layer_norm_affine_grad": [(A2, A2, A1, A1, A1, A1)],
}
