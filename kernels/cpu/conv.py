"""2-D convolution (cross-correlation, NCHW) as im2col in cache-sized blocks, each block
multiplied by BLAS inside the same parallel kernel, and back.

Each of the T tasks of a call (one per thread; ``scratch`` has one row per task) walks its
share of the work block by block: a block is ``rows`` output rows of one image, so P_b =
rows * out_w output positions and R = C * kh * kw. The launcher sizes blocks so that a
block's column matrix and product stay in the core's cache; no full-size column matrix
ever exists, and one parallel region covers the whole op (no hand-over between Numba's
threads and BLAS's: BLAS runs one thread per task, ``threads.single_blas``).

* forward, per (image, block): ``cols (R, P_b) = im2col(x[n])``; ``prod (K, P_b) = W (K, R)
  @ cols``; ``y[n, :, block] = prod + b``.
* backward, per image and block: ``g (K, P_b) = dy[n, :, block]`` (and the bias gradient
  summed on the way); ``dW += g @ cols.T`` (one product over the batch, per task, the
  launcher adds the T partial sums); ``dcols = W.T @ g``; ``dx[n] += col2im(dcols)``.

im2col and col2im read and write the unpadded input: an offset that falls in the padding
reads zero and adds nothing. Loops run over views indexed from 0, so Numba drops its
negative-index check and LLVM can vectorise them.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, A3, A4, INT
from numba import prange


@kernel
def conv2d_im2col(x, kh, kw, sy, sx, ph, pw, oy0, oy1, ow, cols, at):
    """cols[(c*kh + i)*kw + j, at + (oy - oy0)*ow + ox] = x[c, oy*sy + i - ph, ox*sx + j - pw]
    (0 in the padding) for output rows oy0 <= oy < oy1. x (C, H, W) one image, cols
    (C*kh*kw, >= at + (oy1 - oy0)*ow)."""
    c_, h, w = x.shape
    zero = x.dtype.type(0)
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j, at:]
                # output columns whose input column ox*sx + j - pw lies inside the image
                lo = min(ow, max(0, (pw - j + sx - 1) // sx))
                hi = max(lo, min(ow, (w - 1 + pw - j) // sx + 1))
                for oy in range(oy0, oy1):
                    d = row[(oy - oy0) * ow : (oy - oy0 + 1) * ow]
                    iy = oy * sy + i - ph
                    if iy < 0 or iy >= h:
                        for q in range(ow):
                            d[q] = zero
                        continue
                    for q in range(lo):
                        d[q] = zero
                    for q in range(hi, ow):
                        d[q] = zero
                    inner = d[lo:hi]
                    s = x[c, iy, lo * sx + j - pw :]
                    if sx == 1:
                        for q in range(inner.size):
                            inner[q] = s[q]
                    else:
                        for q in range(inner.size):
                            inner[q] = s[q * sx]


@kernel
def conv2d_col2im(dcols, at, kh, kw, sy, sx, ph, pw, oy0, oy1, ow, dx):
    """The adjoint of conv2d_im2col: dx (C, H, W) += every entry of dcols (C*kh*kw,
    >= at + (oy1 - oy0)*ow) added where im2col read it (entries from the padding are
    dropped)."""
    c_, h, w = dx.shape
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = dcols[(c * kh + i) * kw + j, at:]
                lo = min(ow, max(0, (pw - j + sx - 1) // sx))
                hi = max(lo, min(ow, (w - 1 + pw - j) // sx + 1))
                for oy in range(oy0, oy1):
                    iy = oy * sy + i - ph
                    if iy < 0 or iy >= h:
                        continue
                    s = row[(oy - oy0) * ow + lo : (oy - oy0) * ow + hi]
                    d = dx[c, iy, lo * sx + j - pw :]
                    if sx == 1:
                        for q in range(s.size):
                            d[q] += s[q]
                    else:
                        for q in range(s.size):
                            d[q * sx] += s[q]


@kernel(parallel=True)
def conv2d_forward(x, w2, b, kh, kw, sy, sx, ph, pw, rows, y, scratch):
    """y (N, K, oh, ow) = b + x (N, C, H, W) cross-correlated with w2 (K, C*kh*kw); b (K,)
    or empty. The N*oh output rows of the batch are cut into blocks of ``rows`` (a block
    may span images), spread evenly over the T = scratch.shape[0] tasks; scratch
    (T, (R + K) * rows * ow) holds a task's columns and product."""
    n_ = x.shape[0]
    k_, r_ = w2.shape
    oh, ow = y.shape[2], y.shape[3]
    nt = scratch.shape[0]
    total = n_ * oh
    nb = (total + rows - 1) // rows
    zero = y.dtype.type(0)
    for t in prange(nt):
        for blk in range(t * nb // nt, (t + 1) * nb // nt):
            g0 = blk * rows
            g1 = min(total, g0 + rows)
            pb = (g1 - g0) * ow
            cols = scratch[t, : r_ * pb].reshape(r_, pb)
            prod = scratch[t, r_ * pb : (r_ + k_) * pb].reshape(k_, pb)
            g = g0
            while g < g1:  # the block's pieces, one per image
                n = g // oh
                oy0 = g % oh
                oy1 = min(oh, oy0 + g1 - g)
                at = (g - g0) * ow
                conv2d_im2col(x[n], kh, kw, sy, sx, ph, pw, oy0, oy1, ow, cols, at)
                g += oy1 - oy0
            np.dot(w2, cols, prod)
            g = g0
            while g < g1:
                n = g // oh
                oy0 = g % oh
                oy1 = min(oh, oy0 + g1 - g)
                at = (g - g0) * ow
                m = (oy1 - oy0) * ow
                out = y[n].reshape(k_, oh * ow)
                for k in range(k_):
                    bk = b[k] if b.size else zero
                    src = prod[k, at : at + m]
                    dst = out[k, oy0 * ow : oy1 * ow]
                    for q in range(m):
                        dst[q] = src[q] + bk
                g += oy1 - oy0


@kernel(parallel=True, fastmath=True)
def conv2d_backward(x, dy, w2, kh, kw, sy, sx, ph, pw, rows, dx, dw_part, db_part, scratch):
    """Gradients of conv2d_forward from dy (N, K, oh, ow): dx (N, C, H, W), overwritten;
    dw_part (T, K, R) and db_part (T, K): each task's sums of the weight and bias
    gradients (the launcher adds them up). dx, dw_part or db_part empty: not wanted.
    Each of the T = scratch.shape[0] tasks takes a contiguous range of whole images (no
    two tasks add into the same dx) and walks their output rows in blocks of ``rows``;
    scratch (T, (2R + K) * rows * ow + K * R)."""
    n_ = x.shape[0]
    k_, r_ = w2.shape
    oh, ow = dy.shape[2], dy.shape[3]
    nt = scratch.shape[0]
    zero = dy.dtype.type(0)
    want_dx, want_dw, want_db = dx.size > 0, dw_part.size > 0, db_part.size > 0
    wt = w2.T
    for t in prange(nt):
        if want_dw:
            acc = dw_part[t]
            for k in range(k_):
                for r in range(r_):
                    acc[k, r] = zero
        if want_db:
            for k in range(k_):
                db_part[t, k] = zero
        n0 = t * n_ // nt
        n1 = (t + 1) * n_ // nt
        if want_dx:
            for n in range(n0, n1):
                plane = dx[n].reshape(dx[n].size)
                for q in range(plane.size):
                    plane[q] = zero
        for g0 in range(n0 * oh, n1 * oh, rows):
            g1 = min(n1 * oh, g0 + rows)
            pb = (g1 - g0) * ow
            grad = scratch[t, : k_ * pb].reshape(k_, pb)
            cols = scratch[t, k_ * pb : (k_ + r_) * pb].reshape(r_, pb)
            g = g0
            while g < g1:  # gather the block's dy (and the bias sums), im2col
                n = g // oh
                oy0 = g % oh
                oy1 = min(oh, oy0 + g1 - g)
                at = (g - g0) * ow
                m = (oy1 - oy0) * ow
                src_n = dy[n].reshape(k_, oh * ow)
                for k in range(k_):
                    src = src_n[k, oy0 * ow : oy1 * ow]
                    dst = grad[k, at : at + m]
                    s = zero
                    for q in range(m):
                        v = src[q]
                        dst[q] = v
                        s += v
                    if want_db:
                        db_part[t, k] += s
                if want_dw:
                    conv2d_im2col(x[n], kh, kw, sy, sx, ph, pw, oy0, oy1, ow, cols, at)
                g += oy1 - oy0
            if want_dw:
                base = (k_ + 2 * r_) * pb
                prod = scratch[t, base : base + k_ * r_].reshape(k_, r_)
                np.dot(grad, cols.T, prod)
                acc = dw_part[t]
                for k in range(k_):
                    a = acc[k]
                    p = prod[k]
                    for r in range(r_):
                        a[r] += p[r]
            if want_dx:
                dcols = scratch[t, (k_ + r_) * pb : (k_ + 2 * r_) * pb].reshape(r_, pb)
                np.dot(wt, grad, dcols)
                g = g0
                while g < g1:
                    n = g // oh
                    oy0 = g % oh
                    oy1 = min(oh, oy0 + g1 - g)
                    at = (g - g0) * ow
                    conv2d_col2im(dcols, at, kh, kw, sy, sx, ph, pw, oy0, oy1, ow, dx[n])
                    g += oy1 - oy0


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "conv2d_im2col": [(A3, INT, INT, INT, INT, INT, INT, INT, INT, INT, A2, INT)],
    "conv2d_col2im": [(A2, INT, INT, INT, INT, INT, INT, INT, INT, INT, INT, A3)],
    "conv2d_forward": [(A4, A2, A1, INT, INT, INT, INT, INT, INT, INT, A4, A2)],
    "conv2d_backward": [
        (A4, A4, A2, INT, INT, INT, INT, INT, INT, INT, A4, A3, A2, A2),
    ],
}
