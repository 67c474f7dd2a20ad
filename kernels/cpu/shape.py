"""Reductions and index scatters. Reshape, transpose, stack and basic indexing move no
arithmetic: the backend does them with NumPy views and copies.

The reductions work on a 3-D view (outer, mid, inner) and reduce over the middle axis;
the backend brings any set of axes to that form (one pass per run of reduced axes).
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A2, A3, T
from numba import prange


@kernel(parallel=True, fastmath=True)
def sum_forward(x, divisor, out):
    """out (outer, inner) = sum of x (outer, mid, inner) over the middle axis / divisor."""
    outer, mid, inner = x.shape
    if inner == 1:
        for o in prange(outer):
            s = x.dtype.type(0)
            for k in range(mid):
                s += x[o, k, 0]
            out[o, 0] = s / divisor
        return
    zero = x.dtype.type(0)
    for o in prange(outer):
        acc = out[o]
        for i in range(inner):
            acc[i] = zero
        for k in range(mid):
            row = x[o, k]
            for i in range(inner):
                acc[i] += row[i]
        for i in range(inner):
            acc[i] /= divisor


@kernel(parallel=True)
def sum_backward(dy, divisor, dx):
    """dx (outer, mid, inner) = dy (outer, inner) / divisor, repeated along the middle axis."""
    outer, mid, inner = dx.shape
    for o in prange(outer):
        src = dy[o]
        for k in range(mid):
            dst = dx[o, k]
            for i in range(inner):
                dst[i] = src[i] / divisor


@kernel
def getitem_backward(dy, index, dx):
    """dx (rows, width), overwritten: dx[index[k]] += dy[k] for every k (repeated indices
    add up). Serial: two k may hit one row."""
    zero = dx.dtype.type(0)
    rows, width = dx.shape
    for r in range(rows):
        for q in range(width):
            dx[r, q] = zero
    for k in range(index.size):
        r = index[k]
        if r < 0:
            r += rows
        for q in range(width):
            dx[r, q] += dy[k, q]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "sum_forward": [(A3, T, A2)],
    "sum_backward": [(A2, T, A3)],
    "getitem_backward": [(A2, "int64[::1]", A2)],
}
