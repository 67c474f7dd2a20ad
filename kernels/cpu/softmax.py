"""The softmax family and cross-entropy, fused: each forward reads its input once or
twice and each backward writes its gradient in one pass.

Softmax and log-softmax take 3-D views (outer, n, inner) and reduce over the middle axis;
``inner == 1`` (the last axis) is the fast, row-wise case. cross_entropy_forward returns
the sum of its terms (float64 accumulation); the backend divides by the count.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, A3, T
from gpunn.kernels.cpu._vmath import vexp, vlog
from numba import prange


# ---------------------------------------------------------------------- row maximum
@kernel(fastmath=True)
def softmax_row_max(x):
    """The largest entry of the 1-D array x (-inf if empty); NaN entries are passed over (the
    exp that follows turns them into NaN sums). Eight running maxima side by side, which
    LLVM turns into one vector register: a single running maximum is a chain of compares
    it does not vectorise, and took twice as long as the exp pass that follows."""
    n = x.size
    if n == 0:
        return x.dtype.type(-np.inf)
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    k = 0
    while k + 8 <= n:
        v = x[k : k + 8]
        m0 = v[0] if v[0] > m0 else m0
        m1 = v[1] if v[1] > m1 else m1
        m2 = v[2] if v[2] > m2 else m2
        m3 = v[3] if v[3] > m3 else m3
        m4 = v[4] if v[4] > m4 else m4
        m5 = v[5] if v[5] > m5 else m5
        m6 = v[6] if v[6] > m6 else m6
        m7 = v[7] if v[7] > m7 else m7
        k += 8
    mx = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    while k < n:
        mx = x[k] if x[k] > mx else mx
        k += 1
    return mx


# ---------------------------------------------------------------------- softmax
@kernel(parallel=True, fastmath=True)
def softmax_forward(x, y):
    """y = softmax(x) over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = x.shape
    if inner == 1:
        x2, y2 = x.reshape(outer, n), y.reshape(outer, n)
        for o in prange(outer):
            xr = x2[o]
            yr = y2[o]
            mx = softmax_row_max(xr)
            s = x.dtype.type(0)
            for k in range(n):
                e = vexp(xr[k] - mx)
                yr[k] = e
                s += e
            inv = x.dtype.type(1) / s
            for k in range(n):
                yr[k] *= inv
        return
    for o in prange(outer):
        xo = x[o]
        yo = y[o]
        mx = xo[0].copy()
        for k in range(1, n):
            for i in range(inner):
                mx[i] = max(mx[i], xo[k, i])
        s = np.zeros(inner, dtype=x.dtype)
        for k in range(n):
            for i in range(inner):
                e = vexp(xo[k, i] - mx[i])
                yo[k, i] = e
                s[i] += e
        for i in range(inner):
            s[i] = x.dtype.type(1) / s[i]
        for k in range(n):
            for i in range(inner):
                yo[k, i] *= s[i]


@kernel(parallel=True, fastmath=True)
def softmax_backward(dy, y, dx):
    """dx = y * (dy - sum(dy * y)) over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = y.shape
    if inner == 1:
        g2, y2, d2 = dy.reshape(outer, n), y.reshape(outer, n), dx.reshape(outer, n)
        for o in prange(outer):
            g = g2[o]
            yr = y2[o]
            out = d2[o]
            s = y.dtype.type(0)
            for k in range(n):
                s += g[k] * yr[k]
            for k in range(n):
                out[k] = yr[k] * (g[k] - s)
        return
    for o in prange(outer):
        g = dy[o]
        yo = y[o]
        out = dx[o]
        s = np.zeros(inner, dtype=y.dtype)
        for k in range(n):
            for i in range(inner):
                s[i] += g[k, i] * yo[k, i]
        for k in range(n):
            for i in range(inner):
                out[k, i] = yo[k, i] * (g[k, i] - s[i])


# ---------------------------------------------------------------------- log-softmax
@kernel(parallel=True, fastmath=True)
def log_softmax_forward(x, y):
    """y = x - max - log(sum(exp(x - max))) over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = x.shape
    if inner == 1:
        x2, y2 = x.reshape(outer, n), y.reshape(outer, n)
        for o in prange(outer):
            xr = x2[o]
            yr = y2[o]
            mx = softmax_row_max(xr)
            s = x.dtype.type(0)
            for k in range(n):
                s += vexp(xr[k] - mx)
            ls = vlog(s)
            for k in range(n):
                yr[k] = (xr[k] - mx) - ls
        return
    for o in prange(outer):
        xo = x[o]
        yo = y[o]
        mx = xo[0].copy()
        for k in range(1, n):
            for i in range(inner):
                mx[i] = max(mx[i], xo[k, i])
        s = np.zeros(inner, dtype=x.dtype)
        for k in range(n):
            for i in range(inner):
                s[i] += vexp(xo[k, i] - mx[i])
        for i in range(inner):
            s[i] = vlog(s[i])
        for k in range(n):
            for i in range(inner):
                yo[k, i] = (xo[k, i] - mx[i]) - s[i]


@kernel(parallel=True, fastmath=True)
def log_softmax_backward(dy, y, dx):
    """dx = dy - exp(y) * sum(dy) over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = y.shape
    if inner == 1:
        g2, y2, d2 = dy.reshape(outer, n), y.reshape(outer, n), dx.reshape(outer, n)
        for o in prange(outer):
            g = g2[o]
            yr = y2[o]
            out = d2[o]
            s = y.dtype.type(0)
            for k in range(n):
                s += g[k]
            for k in range(n):
                out[k] = g[k] - vexp(yr[k]) * s
        return
    for o in prange(outer):
        g = dy[o]
        yo = y[o]
        out = dx[o]
        s = np.zeros(inner, dtype=y.dtype)
        for k in range(n):
            for i in range(inner):
                s[i] += g[k, i]
        for k in range(n):
            for i in range(inner):
                out[k, i] = g[k, i] - vexp(yo[k, i]) * s[i]


# ---------------------------------------------------------------------- cross-entropy
@kernel(parallel=True, fastmath=True)
def cross_entropy_forward(z, labels, e, inv_sum):
    """Sum over rows of logsumexp(z[r]) - z[r, labels[r]]. Keeps for the backward
    e = exp(z - rowmax) and inv_sum[r] = 1 / sum(e[r]), so softmax = e * inv_sum.
    z, e (N, C); labels (N,) integers."""
    n, c = z.shape
    total = 0.0
    for r in prange(n):
        zr = z[r]
        er = e[r]
        mx = softmax_row_max(zr)
        s = z.dtype.type(0)
        for k in range(c):
            v = vexp(zr[k] - mx)
            er[k] = v
            s += v
        inv_sum[r] = z.dtype.type(1) / s
        total += (mx + vlog(s)) - zr[labels[r]]
    return total


@kernel(parallel=True)
def cross_entropy_backward(e, inv_sum, labels, g, dz):
    """dz = (softmax(z) - onehot(labels)) * g with softmax(z) = e * inv_sum per row."""
    n, c = e.shape
    for r in prange(n):
        er = e[r]
        out = dz[r]
        scale = inv_sum[r] * g
        for k in range(c):
            out[k] = er[k] * scale
        out[labels[r]] -= g


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "softmax_row_max": [(A1,)],
    "softmax_forward": [(A3, A3)],
    "softmax_backward": [(A3, A3, A3)],
    "log_softmax_forward": [(A3, A3)],
    "log_softmax_backward": [(A3, A3, A3)],
    "cross_entropy_forward": [(A2, "int64[::1]", A2, A1)],
    "cross_entropy_backward": [(A2, A1, "int64[::1]", T, A2)],
}
