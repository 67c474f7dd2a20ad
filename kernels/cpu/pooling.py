"""Max and average pooling over (N, C, H, W), forward and backward, parallel over planes.

The backend pads the input first (-inf for max, 0 for average, with the same border as
the pooling's padding), so the loops have no bounds tests: for each window offset
(i, j) they sweep a whole output row against the strided view ``xp[n, c, oy*sy + i,
j::sx]``, which vectorises.

Max pooling keeps the FIRST maximum in row-major window order, padding counting as -inf
(NumPy's argmax over the window; a NaN wins over numbers, the first NaN over later ones),
and records where it was: the flat index y*W + x in the unpadded plane, or -1 for a
padding cell. Average pooling divides by kh*kw, zero padding included (PyTorch's default).
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._vmath import select
from numba import prange


@kernel(parallel=True)
def max_pool2d_forward(xp, kh, kw, sy, sx, ph, pw, h, w, y, arg):
    """y (N, C, oh, ow) = window maxima of the padded xp; arg (int32, same shape) = their
    flat positions in the unpadded (h, w) plane, -1 for padding."""
    n_, c_ = xp.shape[0], xp.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = xp[n, c]
        for oy in range(oh):
            best = y[n, c, oy]
            at = arg[n, c, oy]
            for i in range(kh):
                yy = oy * sy + i - ph  # row in the unpadded plane
                for j in range(kw):
                    src = plane[oy * sy + i, j::sx]
                    base = yy * w + j - pw
                    if i == 0 and j == 0:
                        row_ok = 0 <= yy < h
                        for ox in range(ow):
                            best[ox] = src[ox]
                            col = ox * sx + j - pw
                            ok = row_ok and 0 <= col < w
                            at[ox] = select(ok, np.int32(base + ox * sx), np.int32(-1))
                    else:
                        for ox in range(ow):
                            v = src[ox]
                            b = best[ox]
                            take = (v > b) | ((v != v) & (b == b))
                            best[ox] = select(take, v, b)
                            at[ox] = select(take, np.int32(base + ox * sx), at[ox])


@kernel(parallel=True)
def max_pool2d_backward(dy, arg, dx):
    """dx (N, C, H, W), overwritten: each dy added at its window's recorded maximum."""
    n_, c_, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx[n, c].reshape(h * w)
        for q in range(h * w):
            plane[q] = zero
        g = dy[n, c].reshape(oh * ow)
        where = arg[n, c].reshape(oh * ow)
        for q in range(oh * ow):
            at = where[q]
            if at >= 0:
                plane[at] += g[q]


@kernel(parallel=True)
def avg_pool2d_forward(xp, kh, kw, sy, sx, y):
    """y (N, C, oh, ow) = window sums of the zero-padded xp / (kh*kw)."""
    n_, c_ = xp.shape[0], xp.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    zero = y.dtype.type(0)
    count = y.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = xp[n, c]
        for oy in range(oh):
            acc = y[n, c, oy]
            for ox in range(ow):
                acc[ox] = zero
            for i in range(kh):
                for j in range(kw):
                    src = plane[oy * sy + i, j::sx]
                    for ox in range(ow):
                        acc[ox] += src[ox]
            for ox in range(ow):
                acc[ox] /= count


@kernel(parallel=True)
def avg_pool2d_backward(dy, kh, kw, sy, sx, ph, pw, dxp, dx):
    """dx (N, C, H, W) = each dy / (kh*kw) added over its window, accumulated in the padded
    scratch dxp (dx itself without padding), then cropped."""
    n_, c_, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    count = dx.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dxp[n, c]
        for yy in range(plane.shape[0]):
            row = plane[yy]
            for q in range(row.size):
                row[q] = zero
        g = dy[n, c]
        for oy in range(oh):
            gr = g[oy]
            for i in range(kh):
                for j in range(kw):
                    dst = plane[oy * sy + i, j::sx]
                    for ox in range(ow):
                        dst[ox] += gr[ox] / count
        if ph or pw:
            out = dx[n, c]
            for yy in range(h):
                s = plane[yy + ph, pw : pw + w]
                d = out[yy]
                for q in range(w):
                    d[q] = s[q]
