"""The elementwise losses, fused: each forward returns the sum of its terms (float64
accumulation; the backend divides by the count) and each backward writes both gradients
in one pass. ``g`` is the upstream gradient times 1/N (2/N for mse_loss); a gradient
array that is empty is not wanted and is skipped.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, T
from gpunn.kernels.cpu._vmath import vexp, vlog, vlog1p, vsigmoid
from numba import prange


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
def mse_loss_forward(p, t):
    """Sum of (p - t)^2."""
    total = 0.0
    for i in prange(p.size):
        d = p[i] - t[i]
        total += d * d
    return total


@kernel(parallel=True)
def mse_loss_backward(p, t, g, dp, dt):
    """dp = g (p - t), dt = -dp; ``g`` carries 2/N. Empty outputs are skipped."""
    for i in prange(p.size):
        d = g * (p[i] - t[i])
        if dp.size:
            dp[i] = d
        if dt.size:
            dt[i] = -d


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "mse_loss_forward": [(A1, A1)],
    "mse_loss_backward": [(A1, A1, T, A1, A1)],
    "binary_cross_entropy_forward": [(A1, A1)],
    "binary_cross_entropy_backward": [(A1, A1, T, A1, A1)],
    "binary_cross_entropy_with_logits_forward": [(A1, A1)],
    "binary_cross_entropy_with_logits_backward": [(A1, A1, T, A1, A1)],
}
