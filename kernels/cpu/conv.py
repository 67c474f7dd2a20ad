"""2-D convolution (cross-correlation, NCHW) as im2col + BLAS products, and back.

The backend walks the batch in chunks of G images whose column matrix stays in cache
(P = out_h * out_w, R = C * kh * kw), and runs the products on BLAS:

* forward: ``cols (R, G*P) = im2col(x[chunk])``; ``Yt (K, G*P) = W (K, R) @ cols``;
  ``y[chunk] (G, K, P) = Yt`` transposed, plus the bias (``conv2d_forward``).
* backward: ``dYt (K, G*P)`` = dy[chunk] transposed, with the bias gradient added up in
  the same pass (``conv2d_backward``); ``dW += cols @ dYt.T``; ``dcols = W.T @ dYt``;
  ``dx[chunk] = col2im(dcols)`` (adds the overlapping windows back, drops the padding).

``conv2d_direct_forward`` computes the forward without BLAS: faster for very few
channels (a first layer on grey images), where the products are too thin for BLAS.

Loops run over views indexed from 0, so Numba drops its negative-index check and LLVM
can vectorise the copies.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from numba import njit, prange


@njit(inline="always")
def _valid(size, k, s, p, j):
    """[lo, hi): the outputs o whose input o*s + j - p lies in [0, size), k outputs in all."""
    lo = 0
    while lo < k and lo * s + j - p < 0:
        lo += 1
    hi = k
    while hi > lo and (hi - 1) * s + j - p >= size:
        hi -= 1
    return lo, hi


@kernel(parallel=True)
def conv2d_im2col(x, kh, kw, sy, sx, ph, pw, oh, ow, cols):
    """cols[(c*kh + i)*kw + j, n*P + oy*ow + ox] = x[n, c, oy*sy + i - ph, ox*sx + j - pw],
    zero outside x. x (G, C, H, W); cols (C*kh*kw, G*oh*ow)."""
    g_, c_, h, w = x.shape
    zero = x.dtype.type(0)
    rows = cols.reshape(cols.shape[0], g_ * oh, ow)
    for r in prange(c_ * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        lo, hi = _valid(w, ow, sx, pw, j)
        plane = rows[r]
        for n in range(g_):
            xn = x[n, c]
            for oy in range(oh):
                dst = plane[n * oh + oy]
                yy = oy * sy + i - ph
                if yy < 0 or yy >= h:
                    dst[:] = zero
                    continue
                src = xn[yy]
                dst[:lo] = zero
                if sx == 1:
                    dst[lo:hi] = src[lo + j - pw : hi + j - pw]
                else:
                    for q in range(lo, hi):
                        dst[q] = src[q * sx + j - pw]
                dst[hi:] = zero


@kernel(parallel=True)
def conv2d_col2im(dcols, kh, kw, sy, sx, ph, pw, oh, ow, dx):
    """dx (G, C, H, W), overwritten: every window offset's share of dcols added back where
    conv2d_im2col read it (the adjoint of conv2d_im2col)."""
    g_, c_, h, w = dx.shape
    zero = dx.dtype.type(0)
    rows = dcols.reshape(dcols.shape[0], g_ * oh, ow)
    for nc in prange(g_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx[n, c]
        plane[:] = zero
        for i in range(kh):
            for j in range(kw):
                lo, hi = _valid(w, ow, sx, pw, j)
                src_plane = rows[(c * kh + i) * kw + j]
                for oy in range(oh):
                    yy = oy * sy + i - ph
                    if yy < 0 or yy >= h:
                        continue
                    src = src_plane[n * oh + oy]
                    if sx == 1:
                        dst = plane[yy, lo + j - pw : hi + j - pw]
                        seg = src[lo:hi]
                        for q in range(hi - lo):
                            dst[q] += seg[q]
                    else:
                        row = plane[yy]
                        for q in range(lo, hi):
                            row[q * sx + j - pw] += src[q]


@kernel(parallel=True)
def conv2d_forward(yt, b, y):
    """y (G, K, P) = yt (K, G*P) transposed, plus b (K,) (empty: no bias)."""
    g_, k_, p = y.shape
    for nk in prange(g_ * k_):
        n = nk // k_
        k = nk % k_
        src = yt[k, n * p : (n + 1) * p]
        dst = y[n, k]
        if b.size:
            bk = b[k]
            for q in range(p):
                dst[q] = src[q] + bk
        else:
            dst[:] = src


@kernel(parallel=True, fastmath=True)
def conv2d_backward(dy, dyt, db):
    """dyt (K, G*P) = dy (G, K, P) transposed; db (K,) += sums of dy over G and P when db
    is not empty."""
    g_, k_, p = dy.shape
    for k in prange(k_):
        s = dy.dtype.type(0)
        for n in range(g_):
            src = dy[n, k]
            dst = dyt[k, n * p : (n + 1) * p]
            for q in range(p):
                v = src[q]
                dst[q] = v
                s += v
        if db.size:
            db[k] += s


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
        out[:] = b[k] if b.size else zero
        for c in range(c_):
            plane = x[n, c]
            for i in range(kh):
                for j in range(kw):
                    wv = wt[k, c, i, j]
                    lo, hi = _valid(w, ow, sx, pw, j)
                    for oy in range(oh):
                        yy = oy * sy + i - ph
                        if yy < 0 or yy >= h:
                            continue
                        if sx == 1:
                            src = plane[yy, lo + j - pw : hi + j - pw]
                            dst = out[oy, lo:hi]
                            for q in range(hi - lo):
                                dst[q] += wv * src[q]
                        else:
                            src_row = plane[yy]
                            dst_row = out[oy]
                            for q in range(lo, hi):
                                dst_row[q] += wv * src_row[q * sx + j - pw]
