"""Inverted dropout with the counter-based mask every gpunn backend shares.

Element i is kept when the top 24 bits of splitmix64(seed, i), scaled to [0, 1), are at
least p (``gpunn.backends.base.splitmix64`` / ``dropout_keep_mask``); kept elements are
scaled by 1/(1 - p). All arithmetic on the hash is uint64, as in the reference.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, FLOAT, T
from numba import prange

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@kernel(parallel=True)
def dropout_forward(x, seed, p, scale, out, mask):
    """mask[i] = scale if element i is kept else 0; out = x * mask. x, out, mask 1-D;
    seed a uint64, p a float64, scale of x's dtype."""
    zero = x.dtype.type(0)
    for i in prange(x.size):
        z = seed + (np.uint64(i) + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        u = np.float64(z >> np.uint64(40)) * (1.0 / 16777216.0)
        m = scale if u >= p else zero
        mask[i] = m
        out[i] = x[i] * m


@kernel(parallel=True)
def dropout_backward(dy, mask, dx):
    for i in prange(dx.size):
        dx[i] = dy[i] * mask[i]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "dropout_forward": [(A1, "uint64", FLOAT, T, A1, A1)],
    "dropout_backward": [(A1, A1, A1)],
}
