"""Max and average pooling over (N, C, H, W), forward and backward, parallel over planes.

Max pooling keeps the FIRST maximum in row-major window order, padding counting as -inf
(so a window's answer and its gradient's destination match NumPy's argmax), and records
where it was: the flat index y*W + x inside the plane, or -1 for a padding cell. Average
pooling divides by kh*kw, zero padding included (PyTorch's default).
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from numba import prange


@kernel(parallel=True)
def max_pool2d_forward(x, kh, kw, sy, sx, ph, pw, y, arg):
    """y (N, C, oh, ow) = window maxima; arg (same shape, int32) = their flat positions."""
    n_, c_, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = x[n, c]
        out = y[n, c]
        where = arg[n, c]
        for oy in range(oh):
            for ox in range(ow):
                best = x.dtype.type(-np.inf)
                at = np.int32(-1)
                first = True
                for i in range(kh):
                    yy = oy * sy + i - ph
                    for j in range(kw):
                        xx = ox * sx + j - pw
                        inside = 0 <= yy < h and 0 <= xx < w
                        v = plane[yy, xx] if inside else x.dtype.type(-np.inf)
                        # first maximum wins; a NaN wins over numbers (as argmax)
                        if first or v > best or (v != v and best == best):
                            best = v
                            at = np.int32(yy * w + xx) if inside else np.int32(-1)
                            first = False
                out[oy, ox] = best
                where[oy, ox] = at


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
        g = dy[n, c]
        where = arg[n, c]
        for q in range(h * w):
            plane[q] = zero
        for oy in range(oh):
            for ox in range(ow):
                at = where[oy, ox]
                if at >= 0:
                    plane[at] += g[oy, ox]


@kernel(parallel=True)
def avg_pool2d_forward(x, kh, kw, sy, sx, ph, pw, y):
    """y (N, C, oh, ow) = window sums / (kh*kw), padding cells counting as zeros."""
    n_, c_, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    count = x.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = x[n, c]
        out = y[n, c]
        for oy in range(oh):
            for ox in range(ow):
                s = x.dtype.type(0)
                for i in range(kh):
                    yy = oy * sy + i - ph
                    if yy < 0 or yy >= h:
                        continue
                    for j in range(kw):
                        xx = ox * sx + j - pw
                        if 0 <= xx < w:
                            s += plane[yy, xx]
                out[oy, ox] = s / count


@kernel(parallel=True)
def avg_pool2d_backward(dy, kh, kw, sy, sx, ph, pw, dx):
    """dx (N, C, H, W), overwritten: each dy / (kh*kw) added over its window's cells."""
    n_, c_, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    count = dx.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx[n, c]
        g = dy[n, c]
        for yy in range(h):
            for xx in range(w):
                plane[yy, xx] = zero
        for oy in range(oh):
            for ox in range(ow):
                share = g[oy, ox] / count
                for i in range(kh):
                    yy = oy * sy + i - ph
                    if yy < 0 or yy >= h:
                        continue
                    for j in range(kw):
                        xx = ox * sx + j - pw
                        if 0 <= xx < w:
                            plane[yy, xx] += share
