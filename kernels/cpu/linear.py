"""The fused linear layer around a BLAS product (the backend computes ``Z = X @ W.T``):

* forward epilogue, in place on Z: ``Y = act(Z + b)``, one pass;
* backward prologue: ``dZ = act'(dY)`` (from Y) and the bias gradient ``db = sum_rows dZ``
  in one pass; the backend then runs ``dX = dZ @ W`` and ``dW = dZ.T @ X`` on BLAS.

``act`` is an activation code: 0 none, 1 relu, 2 sigmoid, 3 tanh (``ACTIVATION_CODES``).
"""

from __future__ import annotations

import numba
import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._vmath import vsigmoid, vtanh
from numba import prange

ACTIVATION_CODES = {None: 0, "relu": 1, "sigmoid": 2, "tanh": 3}


@numba.njit
def _act_rows(z, r0, r1, b, act):
    """z[r0:r1] = act(z[r0:r1] + b) for a 2-D z; b holds z.shape[1] values or none."""
    m = z.shape[1]
    zero = z.dtype.type(0)
    for r in range(r0, r1):
        row = z[r]
        if b.size:
            for j in range(m):
                row[j] += b[j]
        if act == 1:
            for j in range(m):
                v = row[j]
                row[j] = zero if v < zero else v
        elif act == 2:
            for j in range(m):
                row[j] = vsigmoid(row[j])
        elif act == 3:
            for j in range(m):
                row[j] = vtanh(row[j])


@kernel(parallel=True)
def linear_forward(z, b, act):
    """In place: z (N, M) = act(z + b); b (M,) or empty."""
    n, m = z.shape
    if m == 1:  # a column (logistic regression): one flat loop over the rows
        flat = z.reshape(n)
        bias = b[0] if b.size else z.dtype.type(0)
        zero = z.dtype.type(0)
        for i in prange(n):
            v = flat[i] + bias
            if act == 1:
                v = zero if v < zero else v
            elif act == 2:
                v = vsigmoid(v)
            elif act == 3:
                v = vtanh(v)
            flat[i] = v
        return
    chunk = 16
    for c in prange((n + chunk - 1) // chunk):
        _act_rows(z, c * chunk, min(n, (c + 1) * chunk), b, act)


@kernel(parallel=True, fastmath=True)
def linear_backward(dy, y, act, dz, db, nchunks):
    """dz = dy * act'(from y) (not written when act is 0: dz is dy then); db (M,) = column
    sums of dz when db is not empty, summed in ``nchunks`` row blocks (one per task of a
    parallel loop). All 2-D (N, M) but db."""
    n, m = dy.shape
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    nchunks = min(n, nchunks)
    partial = np.zeros((max(nchunks, 1), m), dtype=dy.dtype)
    for c in prange(nchunks):
        r0 = c * n // nchunks
        r1 = (c + 1) * n // nchunks
        acc = partial[c]
        for r in range(r0, r1):
            g = dy[r]
            h = y[r]
            out = dz[r]
            if act == 1:
                for j in range(m):
                    out[j] = g[j] if h[j] > zero else zero
            elif act == 2:
                for j in range(m):
                    out[j] = g[j] * h[j] * (one - h[j])
            elif act == 3:
                for j in range(m):
                    out[j] = g[j] * (one - h[j] * h[j])
            if db.size:
                for j in range(m):
                    acc[j] += out[j]
    if db.size:
        for j in range(m):
            db[j] = zero
        for c in range(nchunks):
            for j in range(m):
                db[j] += partial[c, j]
