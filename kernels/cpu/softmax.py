"""The softmax family and the losses, fused: each forward reads its input once or twice
and each backward writes its gradient in one pass.

Softmax and log-softmax take 3-D views (outer, n, inner) and reduce over the middle axis;
``inner == 1`` (the last axis) is the fast, row-wise case. Losses return the sum of their
terms (float64 accumulation); the backend divides by the count.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._vmath import vexp, vlog, vlog1p, vsigmoid
from numba import prange


# ---------------------------------------------------------------------- softmax, log-softmax
@kernel(parallel=True, fastmath=True)
def softmax_forward(x, y, log):
    """y = softmax(x) (log-softmax when ``log``) over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = x.shape
    if inner == 1:
        x2, y2 = x.reshape(outer, n), y.reshape(outer, n)
        for o in prange(outer):
            xr = x2[o]
            yr = y2[o]
            mx = x.dtype.type(-np.inf)
            for k in range(n):
                mx = max(mx, xr[k])
            s = x.dtype.type(0)
            for k in range(n):
                e = vexp(xr[k] - mx)
                yr[k] = e
                s += e
            if log:
                ls = vlog(s)
                for k in range(n):
                    yr[k] = (xr[k] - mx) - ls
            else:
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
        if log:
            for i in range(inner):
                s[i] = vlog(s[i])
            for k in range(n):
                for i in range(inner):
                    yo[k, i] = (xo[k, i] - mx[i]) - s[i]
        else:
            for i in range(inner):
                s[i] = x.dtype.type(1) / s[i]
            for k in range(n):
                for i in range(inner):
                    yo[k, i] *= s[i]


@kernel(parallel=True, fastmath=True)
def softmax_backward(dy, y, dx, log):
    """softmax: dx = y * (dy - sum(dy * y)); log-softmax: dx = dy - exp(y) * sum(dy).
    Over axis 1 of (outer, n, inner) arrays."""
    outer, n, inner = y.shape
    if inner == 1:
        g2, y2, d2 = dy.reshape(outer, n), y.reshape(outer, n), dx.reshape(outer, n)
        for o in prange(outer):
            g = g2[o]
            yr = y2[o]
            out = d2[o]
            s = y.dtype.type(0)
            if log:
                for k in range(n):
                    s += g[k]
                for k in range(n):
                    out[k] = g[k] - vexp(yr[k]) * s
            else:
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
                s[i] += g[k, i] if log else g[k, i] * yo[k, i]
        for k in range(n):
            for i in range(inner):
                if log:
                    out[k, i] = g[k, i] - vexp(yo[k, i]) * s[i]
                else:
                    out[k, i] = yo[k, i] * (g[k, i] - s[i])


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
        mx = z.dtype.type(-np.inf)
        for k in range(c):
            mx = max(mx, zr[k])
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


# ---------------------------------------------------------------------- binary cross-entropy
@kernel(parallel=True, fastmath=True)
def binary_cross_entropy_forward(p, t):
    """Sum of -(t log p + (1 - t) log(1 - p)), each log clamped at -100 (as PyTorch)."""
    one = p.dtype.type(1)
    floor = p.dtype.type(-100)
    total = 0.0
    for i in prange(p.size):
        lp = max(vlog(p[i]), floor)
        l1p = max(vlog(one - p[i]), floor)
        total += -(t[i] * lp + (one - t[i]) * l1p)
    return total


@kernel(parallel=True)
def binary_cross_entropy_backward(p, t, g, dp, dt):
    """dp = g (p - t) / max(p (1 - p), 1e-12); dt = g (log(1 - p) - log p), logs clamped
    at -100. ``g`` carries 1/N; dp / dt are empty when not wanted."""
    one = p.dtype.type(1)
    floor = p.dtype.type(-100)
    eps = p.dtype.type(1e-12)
    if dp.size:
        for i in prange(p.size):
            dp[i] = g * (p[i] - t[i]) / max(p[i] * (one - p[i]), eps)
    if dt.size:
        for i in prange(p.size):
            dt[i] = g * (max(vlog(one - p[i]), floor) - max(vlog(p[i]), floor))


@kernel(parallel=True, fastmath=True)
def binary_cross_entropy_with_logits_forward(z, t):
    """Sum of max(z, 0) - z t + log(1 + exp(-|z|))."""
    zero = z.dtype.type(0)
    total = 0.0
    for i in prange(z.size):
        v = z[i]
        total += max(v, zero) - v * t[i] + vlog1p(vexp(-abs(v)))
    return total


@kernel(parallel=True)
def binary_cross_entropy_with_logits_backward(z, t, g, dz, dt):
    """dz = g (sigmoid(z) - t); dt = -g z. Empty outputs are skipped."""
    if dz.size:
        for i in prange(z.size):
            dz[i] = g * (vsigmoid(z[i]) - t[i])
    if dt.size:
        for i in prange(z.size):
            dt[i] = -g * z[i]


# ---------------------------------------------------------------------- mean squared error
@kernel(parallel=True, fastmath=True)
def mse_forward(p, t):
    """Sum of (p - t)^2."""
    total = 0.0
    for i in prange(p.size):
        d = p[i] - t[i]
        total += d * d
    return total


@kernel(parallel=True)
def mse_backward(p, t, g, dp, dt):
    """dp = g (p - t), dt = -dp; ``g`` carries 2/N. Empty outputs are skipped."""
    for i in prange(p.size):
        d = g * (p[i] - t[i])
        if dp.size:
            dp[i] = d
        if dt.size:
            dt[i] = -d
