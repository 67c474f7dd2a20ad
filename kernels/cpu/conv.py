"""2-D convolution (cross-correlation, NCHW) as im2col + one BLAS product, and back.

The backend runs three products on BLAS around these kernels, with P = out_h * out_w and
R = C * kh * kw:

* forward: ``cols (R, N*P) = im2col(x)``; ``Yt (K, N*P) = W (K, R) @ cols``;
  ``y (N, K, P) = Yt`` transposed, plus the bias (``conv2d_forward``).
* backward: ``dYt (K, N*P)`` = dy transposed, and the bias gradient, in one pass
  (``conv2d_backward``); ``dW = dYt @ cols.T``; ``dcols = W.T @ dYt``;
  ``dx = col2im(dcols)`` (adds the overlapping windows back, crops the padding).

One product each for the whole batch keeps BLAS efficient; the transposes ride along
passes that are needed anyway (the bias). ``conv2d_direct_forward`` computes the forward
without BLAS: faster for very few channels (a first layer on grey images).
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from numba import prange


@kernel(parallel=True)
def conv2d_im2col(x, kh, kw, sy, sx, ph, pw, oh, ow, cols):
    """cols[(c*kh + i)*kw + j, n*P + oy*ow + ox] = x[n, c, oy*sy + i - ph, ox*sx + j - pw],
    zero outside x. x (N, C, H, W); cols (C*kh*kw, N*oh*ow)."""
    n_, c_, h, w = x.shape
    p = oh * ow
    zero = x.dtype.type(0)
    for r in prange(c_ * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        # the output columns whose input column ox*sx + j - pw falls inside [0, w)
        lo = 0
        while lo < ow and lo * sx + j - pw < 0:
            lo += 1
        hi = ow
        while hi > lo and (hi - 1) * sx + j - pw >= w:
            hi -= 1
        dst = cols[r]
        for n in range(n_):
            for oy in range(oh):
                base = n * p + oy * ow
                yy = oy * sy + i - ph
                if yy < 0 or yy >= h:
                    for ox in range(ow):
                        dst[base + ox] = zero
                    continue
                src = x[n, c, yy]
                for ox in range(lo):
                    dst[base + ox] = zero
                if sx == 1:
                    off = j - pw
                    for ox in range(lo, hi):
                        dst[base + ox] = src[ox + off]
                else:
                    for ox in range(lo, hi):
                        dst[base + ox] = src[ox * sx + j - pw]
                for ox in range(hi, ow):
                    dst[base + ox] = zero


@kernel(parallel=True)
def conv2d_col2im(dcols, kh, kw, sy, sx, ph, pw, oh, ow, dx):
    """dx[n, c] = sum over the window offsets of dcols, the adjoint of conv2d_im2col.
    dx (N, C, H, W) is overwritten."""
    n_, c_, h, w = dx.shape
    p = oh * ow
    zero = dx.dtype.type(0)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx[n, c]
        for yy in range(h):
            for xx in range(w):
                plane[yy, xx] = zero
        for i in range(kh):
            for j in range(kw):
                src = dcols[(c * kh + i) * kw + j]
                lo = 0
                while lo < ow and lo * sx + j - pw < 0:
                    lo += 1
                hi = ow
                while hi > lo and (hi - 1) * sx + j - pw >= w:
                    hi -= 1
                for oy in range(oh):
                    yy = oy * sy + i - ph
                    if yy < 0 or yy >= h:
                        continue
                    row = plane[yy]
                    base = n * p + oy * ow
                    if sx == 1:
                        off = j - pw
                        for ox in range(lo, hi):
                            row[ox + off] += src[base + ox]
                    else:
                        for ox in range(lo, hi):
                            row[ox * sx + j - pw] += src[base + ox]


@kernel(parallel=True)
def conv2d_forward(yt, b, y):
    """y (N, K, P) = yt (K, N*P) transposed, plus b (K,) (empty: no bias)."""
    n_, k_, p = y.shape
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        src = yt[k, n * p : (n + 1) * p]
        dst = y[n, k]
        if b.size:
            bk = b[k]
            for q in range(p):
                dst[q] = src[q] + bk
        else:
            for q in range(p):
                dst[q] = src[q]


@kernel(parallel=True, fastmath=True)
def conv2d_backward(dy, dyt, db):
    """dyt (K, N*P) = dy (N, K, P) transposed; db (K,) = sums of dy over N and P when db
    is not empty."""
    n_, k_, p = dy.shape
    for k in prange(k_):
        dst = dyt[k]
        s = dy.dtype.type(0)
        for n in range(n_):
            src = dy[n, k]
            for q in range(p):
                v = src[q]
                dst[n * p + q] = v
                s += v
        if db.size:
            db[k] = s


@kernel(parallel=True, fastmath=True)
def conv2d_direct_forward(x, wt, b, sy, sx, ph, pw, y):
    """y[n, k] = b[k] + sum_{c,i,j} w[k, c, i, j] x[n, c, oy*sy + i - ph, ox*sx + j - pw]
    without im2col. x (N, C, H, W), wt (K, C, kh, kw), b (K,) or empty, y (N, K, oh, ow)."""
    n_, c_, h, w = x.shape
    k_, _, kh, kw = wt.shape
    oh, ow = y.shape[2], y.shape[3]
    zero = x.dtype.type(0)
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        out = y[n, k]
        bk = b[k] if b.size else zero
        for oy in range(oh):
            for ox in range(ow):
                out[oy, ox] = bk
        for c in range(c_):
            plane = x[n, c]
            for i in range(kh):
                for oy in range(oh):
                    yy = oy * sy + i - ph
                    if yy < 0 or yy >= h:
                        continue
                    src = plane[yy]
                    dst = out[oy]
                    for j in range(kw):
                        wv = wt[k, c, i, j]
                        lo = 0
                        while lo < ow and lo * sx + j - pw < 0:
                            lo += 1
                        hi = ow
                        while hi > lo and (hi - 1) * sx + j - pw >= w:
                            hi -= 1
                        if sx == 1:
                            off = j - pw
                            for ox in range(lo, hi):
                                dst[ox] += wv * src[ox + off]
                        else:
                            for ox in range(lo, hi):
                                dst[ox] += wv * src[ox * sx + j - pw]
