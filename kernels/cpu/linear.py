"""The fused linear layer: BLAS products called from inside parallel kernels, with the bias,
the activation and its derivative applied to each task's block while it is in cache.

* forward: ``Y = act(X @ W.T + b)``; each task multiplies a block of rows and finishes it.
* backward: ``dZ = act'(dY)`` (from Y) and ``dX = dZ @ W`` per block of rows; then per block
  of output features ``dW = dZ.T @ X`` and ``db = column sums of dZ``.

One parallel region per phase, in Numba's threads only: BLAS runs one thread per task
(``threads.single_blas``), so no work passes between two thread pools.
``act`` is an activation code of ``gpunn.kernels.codes.ACTIVATION_CODES`` (0 none, 1 relu,
2 sigmoid, 3 tanh).
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, INT
from gpunn.kernels.cpu._vmath import select, vsigmoid, vtanh
from numba import prange

# Loops run over views from index 0: Numba then knows the index is not negative and
# leaves out its wraparound check, which would keep LLVM from vectorising the loop.


@kernel(parallel=True)
def linear_forward(x, w, b, act, tasks, z):
    """z (N, M) = act(x (N, K) @ w (M, K).T + b); b (M,) or empty. ``tasks`` blocks of
    rows, one BLAS product each."""
    n, m = z.shape
    zero = z.dtype.type(0)
    for t in prange(tasks):
        r0 = t * n // tasks
        r1 = (t + 1) * n // tasks
        if r1 == r0:
            continue
        np.dot(x[r0:r1], w.T, z[r0:r1])
        if b.size:
            for r in range(r0, r1):
                row = z[r]
                for j in range(m):
                    row[j] += b[j]
        seg = z.reshape(n * m)[r0 * m : r1 * m]
        if act == 1:
            for i in range(seg.size):
                v = seg[i]
                seg[i] = select(v < zero, zero, v)
        elif act == 2:
            for i in range(seg.size):
                seg[i] = vsigmoid(seg[i])
        elif act == 3:
            for i in range(seg.size):
                seg[i] = vtanh(seg[i])


@kernel(parallel=True, fastmath=True)
def linear_backward(dy, y, act, x, w, tasks, dz, dx, dw, db, scratch):
    """Gradients of linear_forward from dy (N, M) and its output y: dz = dy * act'(y)
    (N, M; written only when act is not 0, dz is dy then), dx (N, K) = dz @ w, dw (M, K) =
    dz.T @ x, db (M,) = column sums of dz. dx, dw, db empty: not wanted. scratch (N * M):
    each task's columns of dz, gathered contiguous for its product."""
    n, m = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    for t in prange(tasks):  # rows: act', dx
        r0 = t * n // tasks
        r1 = (t + 1) * n // tasks
        if r1 == r0:
            continue
        if act:
            g = dy.reshape(n * m)[r0 * m : r1 * m]
            h = y.reshape(n * m)[r0 * m : r1 * m]
            out = dz.reshape(n * m)[r0 * m : r1 * m]
            if act == 1:
                for i in range(out.size):
                    out[i] = select(h[i] > zero, g[i], zero)
            elif act == 2:
                for i in range(out.size):
                    out[i] = g[i] * h[i] * (one - h[i])
            elif act == 3:
                for i in range(out.size):
                    out[i] = g[i] * (one - h[i] * h[i])
        if dx.size:
            np.dot(dz[r0:r1], w, dx[r0:r1])
    if dw.size or db.size:
        for t in prange(tasks):  # output features: dw, db
            m0 = t * m // tasks
            m1 = (t + 1) * m // tasks
            if m1 == m0:
                continue
            cols = scratch[n * m0 : n * m1].reshape(n, m1 - m0)
            for r in range(n):
                src = dz[r, m0:m1]
                dst = cols[r]
                for j in range(m1 - m0):
                    dst[j] = src[j]
            if db.size:
                part = db[m0:m1]
                for j in range(m1 - m0):
                    part[j] = zero
                for r in range(n):
                    src = cols[r]
                    for j in range(m1 - m0):
                        part[j] += src[j]
            if dw.size:
                np.dot(cols.T, x, dw[m0:m1])


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "linear_forward": [(A2, A2, A1, INT, INT, A2)],
    "linear_backward": [(A2, A2, INT, A2, A2, INT, A2, A2, A2, A1, A1)],
}
