"""The fused linear layer around a BLAS product (the backend computes ``Z = X @ W.T``):

* forward epilogue, in place on Z: ``Y = act(Z + b)``, one pass;
* backward prologue: ``dZ = act'(dY)`` (from Y) and the bias gradient ``db = sum_rows dZ``
  in one pass; the backend then runs ``dX = dZ @ W`` and ``dW = dZ.T @ X`` on BLAS.

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
def linear_forward(z, b, act):
    """In place: z (N, M) = act(z + b); b (M,) or empty. Blocks of whole rows, about 4096
    elements each (long enough for the vectorised loops)."""
    n, m = z.shape
    flat = z.reshape(n * m)
    zero = z.dtype.type(0)
    rows = max(1, 4096 // max(m, 1))
    nblocks = (n + rows - 1) // rows
    for blk in prange(nblocks):
        r0 = blk * rows
        r1 = min(n, r0 + rows)
        if b.size:
            for r in range(r0, r1):
                row = z[r]
                for j in range(m):
                    row[j] += b[j]
        seg = flat[r0 * m : r1 * m]
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
def linear_backward(dy, y, act, dz, db, nchunks):
    """dz = dy * act'(from y) (not written when act is 0: dz is dy then); db (M,) = column
    sums of dz when db is not empty, summed in ``nchunks`` row blocks (one per task of a
    parallel loop). All 2-D (N, M) but db."""
    n, m = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    nchunks = max(1, min(n, nchunks))
    partial = np.zeros((nchunks, m), dtype=dy.dtype)
    for c in prange(nchunks):
        r0 = c * n // nchunks
        r1 = (c + 1) * n // nchunks
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
        if db.size:
            acc = partial[c]
            if m == 1:
                s = zero
                for i in range(out.size):
                    s += out[i]
                acc[0] = s
            else:
                for r in range(r0, r1):
                    row = dz[r]
                    for j in range(m):
                        acc[j] += row[j]
    if db.size:
        for j in range(m):
            s = zero
            for c in range(nchunks):
                s += partial[c, j]
            db[j] = s


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "linear_forward": [(A2, A1, INT)],
    "linear_backward": [(A2, A2, INT, A2, A1, INT)],
}
