"""2-D convolution (cross-correlation, NCHW) as im2col + BLAS products, and back.

The backend walks the batch in chunks of G images whose column matrix stays in cache
(P = out_h * out_w, R = C * kh * kw), and runs the products on BLAS:

* forward: ``x_padded = pad(x[chunk])``; ``cols (R, G*P) = im2col(x_padded)``;
  ``Yt (K, G*P) = W (K, R) @ cols``; ``y[chunk] (G, K, P) = Yt`` transposed, plus the
  bias (``conv2d_output``).
* backward: ``dYt (K, G*P)`` = dy[chunk] transposed, with the bias gradient added up in
  the same pass (``conv2d_grad_output``); ``dW += cols @ dYt.T``; ``dcols = W.T @ dYt``;
  ``dx[chunk] = col2im(dcols)`` (adds the overlapping windows back, drops the padding).

Working on a zero-padded copy of the input removes every bounds test from the inner
loops: each kernel offset (i, j) reads the strided 2-D view ``x_padded[n, c, i::sy, j::sx]``.
Loops run over views indexed from 0, so Numba drops its negative-index check and LLVM
can vectorise them. ``conv2d_direct_forward`` computes the forward without BLAS: faster
for very few channels (a first layer on grey images), where the products are too thin.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, A3, A4, FLOAT, INT
from numba import prange


@kernel(parallel=True)
def conv2d_pad(x, ph, pw, value, x_padded):
    """x_padded (G, C, H + 2ph, W + 2pw) = x with a border of ``value``."""
    g_, c_, h, w = x.shape
    fill = x.dtype.type(value)
    for nc in prange(g_ * c_):
        n = nc // c_
        c = nc % c_
        src = x[n, c]
        dst = x_padded[n, c]
        for yy in range(ph):
            row = dst[yy]
            for q in range(row.size):
                row[q] = fill
        for yy in range(h):
            row = dst[yy + ph]
            for q in range(pw):
                row[q] = fill
            inner = row[pw : pw + w]
            s = src[yy]
            for q in range(w):
                inner[q] = s[q]
            tail = row[pw + w :]
            for q in range(tail.size):
                tail[q] = fill
        for yy in range(h + ph, h + 2 * ph):
            row = dst[yy]
            for q in range(row.size):
                row[q] = fill


@kernel(parallel=True)
def conv2d_im2col(x_padded, kh, kw, sy, sx, oh, ow, cols):
    """cols[(c*kh + i)*kw + j, n*P + oy*ow + ox] = x_padded[n, c, oy*sy + i, ox*sx + j].
    x_padded (G, C, Hp, Wp) is the padded input; cols (C*kh*kw, G*oh*ow)."""
    g_, c_ = x_padded.shape[0], x_padded.shape[1]
    blocks = cols.reshape(cols.shape[0], g_, oh, ow)
    for r in prange(c_ * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for n in range(g_):
            src = x_padded[n, c, i::sy, j::sx]
            dst = blocks[r, n]
            for oy in range(oh):
                s = src[oy]
                d = dst[oy]
                for ox in range(ow):
                    d[ox] = s[ox]


@kernel(parallel=True)
def conv2d_col2im(dcols, kh, kw, sy, sx, ph, pw, oh, ow, dx_padded, dx):
    """dx (G, C, H, W) = the adjoint of pad + im2col: every window offset's share of dcols
    added back where it was read, accumulated in the padded scratch dx_padded (G, C, Hp, Wp;
    dx_padded may be dx itself when there is no padding), then cropped."""
    g_, c_, h, w = dx.shape
    zero = dx.dtype.type(0)
    blocks = dcols.reshape(dcols.shape[0], g_, oh, ow)
    for nc in prange(g_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx_padded[n, c]
        for yy in range(plane.shape[0]):
            row = plane[yy]
            for q in range(row.size):
                row[q] = zero
        for i in range(kh):
            for j in range(kw):
                dst = plane[i::sy, j::sx]
                src = blocks[(c * kh + i) * kw + j, n]
                for oy in range(oh):
                    s = src[oy]
                    d = dst[oy]
                    for ox in range(ow):
                        d[ox] += s[ox]
        if ph or pw:
            out = dx[n, c]
            for yy in range(h):
                s = plane[yy + ph, pw : pw + w]
                d = out[yy]
                for q in range(w):
                    d[q] = s[q]


@kernel(parallel=True)
def conv2d_output(yt, b, y):
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
            for q in range(p):
                dst[q] = src[q]


@kernel(parallel=True, fastmath=True)
def conv2d_grad_output(dy, dyt, db):
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
def conv2d_direct_forward(x_padded, wt, b, sy, sx, y):
    """y[n, k] = b[k] + sum_{c,i,j} w[k, c, i, j] x_padded[n, c, oy*sy + i, ox*sx + j] without
    im2col. x_padded (N, C, Hp, Wp) padded input, wt (K, C, kh, kw), b (K,) or empty,
    y (N, K, oh, ow)."""
    n_, c_ = x_padded.shape[0], x_padded.shape[1]
    k_, _, kh, kw = wt.shape
    oh, ow = y.shape[2], y.shape[3]
    zero = y.dtype.type(0)
    for nk in prange(n_ * k_):
        n = nk // k_
        k = nk % k_
        out = y[n, k]
        bk = b[k] if b.size else zero
        for oy in range(oh):
            d = out[oy]
            for ox in range(ow):
                d[ox] = bk
        for c in range(c_):
            for i in range(kh):
                for j in range(kw):
                    wv = wt[k, c, i, j]
                    src = x_padded[n, c, i::sy, j::sx]
                    for oy in range(oh):
                        s = src[oy]
                        d = out[oy]
                        for ox in range(ow):
                            d[ox] += wv * s[ox]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "conv2d_pad": [(A4, INT, INT, FLOAT, A4)],
    "conv2d_im2col": [(A4, INT, INT, INT, INT, INT, INT, A2)],
    "conv2d_col2im": [(A2, INT, INT, INT, INT, INT, INT, INT, INT, A4, A4)],
    "conv2d_output": [(A2, A1, A3)],
    "conv2d_grad_output": [(A3, A2, A1)],
    "conv2d_direct_forward": [(A4, A4, A1, INT, INT, A4)],
}
