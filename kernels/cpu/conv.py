"""2-D convolution (cross-correlation, NCHW): 3x3 stride-1 convolutions with enough
channels by Winograd F(2x2, 3x3) (the section at the end), every other one as im2col in
cache-sized blocks, each block multiplied by BLAS inside the same parallel kernel, and
back.

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

im2col reads a padded copy of the input (made once per call by the launcher, or the input
itself without padding); col2im writes the unpadded input gradient, dropping what falls in
the padding. Loops run over views indexed from 0, so Numba drops its negative-index
check and LLVM can vectorise them.
"""

from __future__ import annotations

import numpy as np
from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, A3, A4, INT
from numba import prange


@kernel
def conv2d_im2col(xp, kh, kw, sy, sx, oy0, oy1, ow, cols, at):
    """cols[(c*kh + i)*kw + j, at + (oy - oy0)*ow + ox] = xp[c, oy*sy + i, ox*sx + j] for
    output rows oy0 <= oy < oy1. xp (C, Hp, Wp) one image with its padding already in
    place (the launcher pads once per call), cols (C*kh*kw, >= at + (oy1 - oy0)*ow)."""
    c_ = xp.shape[0]
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j, at:]
                for oy in range(oy0, oy1):
                    d = row[(oy - oy0) * ow : (oy - oy0 + 1) * ow]
                    s = xp[c, oy * sy + i, j:]
                    if sx == 1:
                        for q in range(ow):
                            d[q] = s[q]
                    else:
                        for q in range(ow):
                            d[q] = s[q * sx]


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
def conv2d_forward(xp, w2, b, kh, kw, sy, sx, rows, y, scratch):
    """y (N, K, oh, ow) = b + xp (N, C, Hp, Wp), the padded input, cross-correlated with
    w2 (K, C*kh*kw); b (K,) or empty. The N*oh output rows of the batch are cut into blocks of ``rows`` (a block
    may span images), spread evenly over the T = scratch.shape[0] tasks; scratch
    (T, (R + K) * rows * ow) holds a task's columns and product."""
    n_ = xp.shape[0]
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
                conv2d_im2col(xp[n], kh, kw, sy, sx, oy0, oy1, ow, cols, at)
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
def conv2d_backward(xp, dy, w2, kh, kw, sy, sx, ph, pw, rows, dx, dw_part, db_part, scratch):
    """Gradients of conv2d_forward from dy (N, K, oh, ow), xp the padded input (N, C, H +
    2 ph, W + 2 pw): dx (N, C, H, W), overwritten;
    dw_part (T, K, R) and db_part (T, K): each task's sums of the weight and bias
    gradients (the launcher adds them up). dx, dw_part or db_part empty: not wanted.
    Each of the T = scratch.shape[0] tasks takes a contiguous range of whole images (no
    two tasks add into the same dx) and walks their output rows in blocks of ``rows``;
    scratch (T, (2R + K) * rows * ow + K * R)."""
    n_ = xp.shape[0]
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
                    conv2d_im2col(xp[n], kh, kw, sy, sx, oy0, oy1, ow, cols, at)
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


# ---------------------------------------------------------------------- Winograd F(2x2, 3x3)
# A 3x3 stride-1 convolution computed tile by tile: each 2x2 block of output comes from a
# 4x4 block of (padded) input d as A^T [(G g G^T) * (B^T d B)] A, where * multiplies
# elementwise and the sum over input channels runs inside. Per tile and channel pair that
# is 16 multiplications instead of 36: the 16 entries become 16 products (K, C) @ (C, T)
# over a block of T tiles, 2.25 times fewer flops than im2col's product. The transforms
# only add and subtract (G also halves), so float32 results stay within a few ulps of
# the direct sums.
#
#     B^T = [1  0 -1  0]     G = [1    0    0]     A^T = [1  1  1  0]
#           [0  1  1  0]         [1/2  1/2  1/2]         [0  1 -1 -1]
#           [0 -1  1  0]         [1/2 -1/2  1/2]
#           [0  1  0 -1]         [0    0    1]


@kernel(fastmath=True)
def conv2d_winograd_weights(w, u):
    """u (16, K, C): G w[k, c] G^T for w (K, C, 3, 3), entry (i, j) of the 4x4 result at
    u[4 i + j]."""
    k_, c_ = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    for k in range(k_):
        for c in range(c_):
            g = w[k, c]
            for i in range(4):  # row i of G g, then times G^T
                if i == 0:
                    a0, a1, a2 = g[0, 0], g[0, 1], g[0, 2]
                elif i == 3:
                    a0, a1, a2 = g[2, 0], g[2, 1], g[2, 2]
                else:
                    sign = w.dtype.type(1 if i == 1 else -1)
                    a0 = half * (g[0, 0] + sign * g[1, 0] + g[2, 0])
                    a1 = half * (g[0, 1] + sign * g[1, 1] + g[2, 1])
                    a2 = half * (g[0, 2] + sign * g[1, 2] + g[2, 2])
                u[4 * i, k, c] = a0
                u[4 * i + 1, k, c] = half * (a0 + a1 + a2)
                u[4 * i + 2, k, c] = half * (a0 - a1 + a2)
                u[4 * i + 3, k, c] = a2


@kernel(fastmath=True)
def conv2d_winograd_input(xp, ty0, ty1, tw, eo, v):
    """v (16, C, T): B^T d B of the 4x4 input tiles of tile rows ty0 <= ty < ty1 of one
    padded image xp (C, >= 2 ty1 + 2, >= 2 tw + 2); tile (ty, tx) starts at xp[:, 2 ty,
    2 tx] and is column (ty - ty0) tw + tx of v. eo (2, 2 (ty1 - ty0) + 2, tw + 1): scratch
    for the even and odd columns of the rows read, so that every loop below is unit-stride."""
    c_ = xp.shape[0]
    nr = 2 * (ty1 - ty0) + 2
    for c in range(c_):
        x = xp[c]
        for rr in range(nr):
            src = x[2 * ty0 + rr]
            even = eo[0, rr]
            odd = eo[1, rr]
            for q in range(tw + 1):
                even[q] = src[2 * q]
                odd[q] = src[2 * q + 1]
        for ty in range(ty0, ty1):
            j = 2 * (ty - ty0)
            base = (ty - ty0) * tw
            for i in range(4):  # row i of B^T d is row ra + sign * row rb of d
                if i == 0:
                    ra, rb, sign = j, j + 2, -1
                elif i == 1:
                    ra, rb, sign = j + 1, j + 2, 1
                elif i == 2:
                    ra, rb, sign = j + 2, j + 1, -1
                else:
                    ra, rb, sign = j + 1, j + 3, -1
                s = xp.dtype.type(sign)
                ea, eb, oa, ob = eo[0, ra], eo[0, rb], eo[1, ra], eo[1, rb]
                v0 = v[4 * i, c, base : base + tw]
                v1 = v[4 * i + 1, c, base : base + tw]
                v2 = v[4 * i + 2, c, base : base + tw]
                v3 = v[4 * i + 3, c, base : base + tw]
                for tx in range(tw):  # columns 2 tx .. 2 tx + 3 of that row, times B
                    e0 = ea[tx] + s * eb[tx]
                    e1 = ea[tx + 1] + s * eb[tx + 1]
                    o0 = oa[tx] + s * ob[tx]
                    o1 = oa[tx + 1] + s * ob[tx + 1]
                    v0[tx] = e0 - e1
                    v1[tx] = o0 + e1
                    v2[tx] = e1 - o0
                    v3[tx] = o0 - o1


@kernel(fastmath=True)
def conv2d_winograd_output(m, b, ty0, ty1, tw, buf, y):
    """y (K, oh, ow) for the tiles of tile rows ty0 <= ty < ty1: A^T m[:, k, t] A (+ b[k])
    from m (16, K, T) laid out as conv2d_winograd_input's v; b (K,) or empty; buf (4, T) scratch.
    Outputs past oh or ow (the last tile of an odd size) are dropped."""
    k_, oh, ow = y.shape
    zero = y.dtype.type(0)
    tb = (ty1 - ty0) * tw
    y00, y01, y10, y11 = buf[0], buf[1], buf[2], buf[3]
    half = ow // 2
    for k in range(k_):
        bk = b[k] if b.size else zero
        m0, m1, m2, m3 = m[0, k], m[1, k], m[2, k], m[3, k]
        m4, m5, m6, m7 = m[4, k], m[5, k], m[6, k], m[7, k]
        m8, m9, m10, m11 = m[8, k], m[9, k], m[10, k], m[11, k]
        m12, m13, m14, m15 = m[12, k], m[13, k], m[14, k], m[15, k]
        for t in range(tb):
            s1 = m1[t] + m5[t] + m9[t]
            s2 = m2[t] + m6[t] + m10[t]
            d1 = m5[t] - m9[t] - m13[t]
            d2 = m6[t] - m10[t] - m14[t]
            y00[t] = (m0[t] + m4[t] + m8[t]) + s1 + s2 + bk
            y01[t] = s1 - s2 - (m3[t] + m7[t] + m11[t]) + bk
            y10[t] = (m4[t] - m8[t] - m12[t]) + d1 + d2 + bk
            y11[t] = d1 - d2 - (m7[t] - m11[t] - m15[t]) + bk
        for ty in range(ty0, ty1):
            base = (ty - ty0) * tw
            oy = 2 * ty
            for r in range(2):
                if oy + r >= oh:
                    break
                left = y00 if r == 0 else y10
                right = y01 if r == 0 else y11
                dst = y[k, oy + r]
                for q in range(half):
                    dst[2 * q] = left[base + q]
                    dst[2 * q + 1] = right[base + q]
                if ow % 2:
                    dst[ow - 1] = left[base + half]


@kernel
def conv2d_winograd_scratch(row, c_, k_, rows, tw):
    """(v (16, C, T), m (16, K, T), eo (2, 2 rows + 2, tw + 1), rest): a task's scratch
    row cut for a block of ``rows`` tile rows (T = rows * tw), in that order; rest is
    what follows eo."""
    tb = rows * tw
    at = 16 * c_ * tb
    v = row[:at].reshape(16, c_, tb)
    m = row[at : at + 16 * k_ * tb].reshape(16, k_, tb)
    at += 16 * k_ * tb
    ne = 2 * (2 * rows + 2) * (tw + 1)
    eo = row[at : at + ne].reshape(2, 2 * rows + 2, tw + 1)
    return v, m, eo, row[at + ne :]


@kernel(parallel=True)
def conv2d_winograd(xp, u, b, trows, y, scratch):
    """y (N, K, oh, ow) = b + the 3x3 stride-1 cross-correlation of the padded input xp
    (N, C, >= 2 th + 2, >= 2 tw + 2), th = ceil(oh / 2), tw = ceil(ow / 2), zero beyond
    the image and its padding; u (16, K, C) from conv2d_winograd_weights; b (K,) or empty. Each
    image's tile rows are cut into blocks of ``trows``, spread evenly over the T =
    scratch.shape[0] tasks; scratch (T, 16 (C + K) tb + 2 (2 trows + 2)(tw + 1) + 4 tb),
    tb = trows * tw, holds a task's transformed input, products and transform scratch.
    BLAS runs one thread per task (the launcher's ``single_blas``)."""
    n_, c_ = xp.shape[0], xp.shape[1]
    k_ = u.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    th = (oh + 1) // 2
    tw = (ow + 1) // 2
    nt = scratch.shape[0]
    per = (th + trows - 1) // trows
    nb = n_ * per
    for task in prange(nt):
        for blk in range(task * nb // nt, (task + 1) * nb // nt):
            n = blk // per
            ty0 = (blk % per) * trows
            ty1 = min(th, ty0 + trows)
            tb = (ty1 - ty0) * tw
            v, m, eo, rest = conv2d_winograd_scratch(scratch[task], c_, k_, ty1 - ty0, tw)
            buf = rest[: 4 * tb].reshape(4, tb)
            conv2d_winograd_input(xp[n], ty0, ty1, tw, eo, v)
            for e in range(16):
                np.dot(u[e], v[e], m[e])
            conv2d_winograd_output(m, b, ty0, ty1, tw, buf, y[n])


# The gradients. Y is linear in U = G g G^T and in V_t = B^T d_t B, and Z_t = A dY_t A^T
# (the transformed output gradient) serves both: dL/dU = sum over tiles of Z_t * V_t
# (16 products (K, T) @ (T, C) per block, then dL/dg = G^T (dL/dU) G), and dL/dV_t =
# U^T Z_t (16 products (C, K) @ (K, T)), which the adjoint of the input transform, B .
# B^T, adds into the input gradient tile by tile.


@kernel(fastmath=True)
def conv2d_winograd_grad_output(dyp, ty0, ty1, tw, split, z, db):
    """z (16, K, T): A dY_t A^T of the 2x2 gradient tiles of tile rows ty0 <= ty < ty1 of
    one image's dyp (K, >= 2 ty1, >= 2 tw), zero past the output, laid out as
    conv2d_winograd_input's v; db (K,) += the sum of those tiles' gradients (empty: not
    wanted). split (4, >= T): scratch for the tiles' four entries, gathered first so that
    the transform runs as unit-stride loops over all the block's tiles."""
    k_ = dyp.shape[0]
    tb = (ty1 - ty0) * tw
    want_db = db.size > 0
    a, b, c, d = split[0], split[1], split[2], split[3]
    for k in range(k_):
        for ty in range(ty0, ty1):
            r0 = dyp[k, 2 * ty]
            r1 = dyp[k, 2 * ty + 1]
            base = (ty - ty0) * tw
            for tx in range(tw):
                a[base + tx] = r0[2 * tx]
                b[base + tx] = r0[2 * tx + 1]
                c[base + tx] = r1[2 * tx]
                d[base + tx] = r1[2 * tx + 1]
        # rows of A dY: (a, b), (a + c, b + d), (a - c, b - d), (-c, -d); each row (p, q)
        # times A^T is (p, p + q, p - q, -q)
        for i in range(4):
            z0, z1, z2, z3 = z[4 * i, k], z[4 * i + 1, k], z[4 * i + 2, k], z[4 * i + 3, k]
            for t in range(tb):
                if i == 0:
                    p, q = a[t], b[t]
                elif i == 1:
                    p, q = a[t] + c[t], b[t] + d[t]
                elif i == 2:
                    p, q = a[t] - c[t], b[t] - d[t]
                else:
                    p, q = -c[t], -d[t]
                z0[t] = p
                z1[t] = p + q
                z2[t] = p - q
                z3[t] = -q
        if want_db:
            s = dyp.dtype.type(0)
            for t in range(tb):
                s += (a[t] + b[t]) + (c[t] + d[t])
            db[k] += s


@kernel(fastmath=True)
def conv2d_winograd_input_backward(g, ty0, ty1, tw, buf, dxp):
    """The adjoint of conv2d_winograd_input: dxp (C, >= 2 ty1 + 2, >= 2 tw + 2) += B g_t B^T
    for every tile t of tile rows ty0 <= ty < ty1, g (16, C, T) laid out as that kernel's
    v (neighbouring tiles overlap by two rows or columns: their parts add up). buf (6,
    >= max(T, tw + 1)) scratch: one row of every tile's 4x4 result, then a row's even and
    odd columns, so that every loop is unit-stride.

        B = [ 1  0  0  0]
            [ 0  1 -1  1]
            [-1  1  1  0]
            [ 0  0  0 -1]
    """
    c_ = dxp.shape[0]
    tb = (ty1 - ty0) * tw
    q0, q1, q2, q3, even, odd = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]
    for c in range(c_):
        for r in range(4):
            # row r of B g over all the block's tiles: g's rows 0 | 1 - 2 + 3 | 1 + 2 - 0 |
            # -3 (row i of a tile's g is entries 4 i .. 4 i + 3)
            if r == 0:
                conv2d_winograd_rows(g, c, tb, 0, 0, 0, 1, 0, 0, q0, q1, q2, q3)
            elif r == 1:
                conv2d_winograd_rows(g, c, tb, 4, 8, 12, 1, -1, 1, q0, q1, q2, q3)
            elif r == 2:
                conv2d_winograd_rows(g, c, tb, 4, 8, 0, 1, 1, -1, q0, q1, q2, q3)
            else:
                conv2d_winograd_rows(g, c, tb, 12, 12, 12, -1, 0, 0, q0, q1, q2, q3)
            for ty in range(ty0, ty1):
                # column 2 q of row 2 ty + r takes entry 0 of tile q and entry 2 of tile
                # q - 1; column 2 q + 1 entries 1 and 3
                t = (ty - ty0) * tw
                even[0] = q0[t]
                odd[0] = q1[t]
                for q in range(1, tw):
                    even[q] = q0[t + q] + q2[t + q - 1]
                    odd[q] = q1[t + q] + q3[t + q - 1]
                even[tw] = q2[t + tw - 1]
                odd[tw] = q3[t + tw - 1]
                row = dxp[c, 2 * ty + r]
                for q in range(tw + 1):
                    row[2 * q] += even[q]
                    row[2 * q + 1] += odd[q]


@kernel(fastmath=True)
def conv2d_winograd_rows(g, c, tb, ea, eb, ec, sa, sb, sc, q0, q1, q2, q3):
    """For the tiles t < tb of channel c of g (16, C, T): the row a = sa g[ea + j] + sb
    g[eb + j] + sc g[ec + j] (j = 0..3) of B g, times B^T: q0 = a0, q1 = a1 - a2 + a3,
    q2 = a1 + a2 - a0, q3 = -a3 (part of conv2d_winograd_input_backward)."""
    one = g.dtype.type(sa)
    two = g.dtype.type(sb)
    three = g.dtype.type(sc)
    x0, x1, x2, x3 = g[ea, c], g[ea + 1, c], g[ea + 2, c], g[ea + 3, c]
    y0, y1, y2, y3 = g[eb, c], g[eb + 1, c], g[eb + 2, c], g[eb + 3, c]
    z0, z1, z2, z3 = g[ec, c], g[ec + 1, c], g[ec + 2, c], g[ec + 3, c]
    for t in range(tb):
        a0 = one * x0[t] + two * y0[t] + three * z0[t]
        a1 = one * x1[t] + two * y1[t] + three * z1[t]
        a2 = one * x2[t] + two * y2[t] + three * z2[t]
        a3 = one * x3[t] + two * y3[t] + three * z3[t]
        q0[t] = a0
        q1[t] = a1 - a2 + a3
        q2[t] = a1 + a2 - a0
        q3[t] = -a3


@kernel(parallel=True)
def conv2d_winograd_backward(xp, dyp, ut, ph, pw, trows, du_part, db_part, dx, planes, scratch):
    """The gradients of conv2d_winograd from one pass over the tiles, each task taking a
    range of whole images (no two tasks add into the same dx):

    * du_part (T, 16, K, C): each task's sum of dL/dU = (A dY_t A^T) * V_t over its tiles
      (V_t = B^T d_t B of the padded input xp (N, C, >= 2 th + 2, >= 2 tw + 2));
    * db_part (T, K): each task's sum of the output gradient dyp (N, K, >= 2 th, >= 2 tw),
      zero past the output;
    * dx (N, C, H, W), overwritten: per tile B [U^T (A dY_t A^T)] B^T added into a padded
      plane (planes (T, C, Hp, Wp), a task's), cropped at (ph, pw); ut (16, C, K) = U
      transposed per entry.

    du_part, db_part or dx empty: not wanted. Blocks of ``trows`` tile rows as in
    conv2d_winograd; scratch (T, 16 (C + K) tb + 2 (2 trows + 2)(tw + 1) + K C + 6 (tb +
    tw + 1))."""
    n_, c_ = xp.shape[0], xp.shape[1]
    k_ = dyp.shape[1]
    th = dyp.shape[2] // 2
    tw = dyp.shape[3] // 2
    nt = scratch.shape[0]
    zero = xp.dtype.type(0)
    want_dw, want_db, want_dx = du_part.size > 0, db_part.size > 0, dx.size > 0
    for task in prange(nt):
        if want_dw:
            acc = du_part[task].reshape(du_part[task].size)
            for i in range(acc.size):
                acc[i] = zero
        db = db_part[task] if want_db else db_part.reshape(0)
        for k in range(db.size):
            db[k] = zero
        for n in range(task * n_ // nt, (task + 1) * n_ // nt):
            if want_dx:
                plane = planes[task].reshape(planes[task].size)
                for i in range(plane.size):
                    plane[i] = zero
            for ty0 in range(0, th, trows):
                ty1 = min(th, ty0 + trows)
                tb = (ty1 - ty0) * tw
                v, z, eo, rest = conv2d_winograd_scratch(scratch[task], c_, k_, ty1 - ty0, tw)
                prod = rest[: k_ * c_].reshape(k_, c_)
                # eo's space (and what follows it) is free outside the input transform
                after_z = scratch[task, 16 * (c_ + k_) * tb :]
                split = after_z[: 4 * tb].reshape(4, tb)
                conv2d_winograd_grad_output(dyp[n], ty0, ty1, tw, split, z, db)
                if want_dw:
                    conv2d_winograd_input(xp[n], ty0, ty1, tw, eo, v)
                    for e in range(16):
                        np.dot(z[e], v[e].T, prod)
                        a = du_part[task, e]
                        for k in range(k_):
                            for c in range(c_):
                                a[k, c] += prod[k, c]
                if want_dx:  # v and eo are free again: U^T (A dY A^T), then B . B^T
                    for e in range(16):
                        np.dot(ut[e], z[e], v[e])
                    width = max(tb, tw + 1)
                    buf = after_z[: 6 * width].reshape(6, width)
                    conv2d_winograd_input_backward(v, ty0, ty1, tw, buf, planes[task])
            if want_dx:
                h, w = dx.shape[2], dx.shape[3]
                for c in range(c_):
                    for yy in range(h):
                        src = planes[task, c, yy + ph, pw : pw + w]
                        dst = dx[n, c, yy]
                        for q in range(w):
                            dst[q] = src[q]


@kernel(fastmath=True)
def conv2d_winograd_weights_backward(du, dw):
    """dw (K, C, 3, 3) = G^T M G with M (4x4) = du[:, k, c] (entry (i, j) at du[4 i + j]):
    the adjoint of conv2d_winograd_weights."""
    k_, c_ = dw.shape[0], dw.shape[1]
    half = dw.dtype.type(0.5)
    one = dw.dtype.type(1)
    zero = dw.dtype.type(0)
    for k in range(k_):
        for c in range(c_):
            g = dw[k, c]
            m = du[:, k, c]
            for r in range(3):  # row r of G^T M (rows of G^T: (1, .5, .5, 0), (0, .5, -.5, 0),
                # (0, .5, .5, 1)), then times G
                ca = one if r == 0 else zero
                cc = -half if r == 1 else half
                cd = one if r == 2 else zero
                t0 = ca * m[0] + half * m[4] + cc * m[8] + cd * m[12]
                t1 = ca * m[1] + half * m[5] + cc * m[9] + cd * m[13]
                t2 = ca * m[2] + half * m[6] + cc * m[10] + cd * m[14]
                t3 = ca * m[3] + half * m[7] + cc * m[11] + cd * m[15]
                g[r, 0] = t0 + half * (t1 + t2)
                g[r, 1] = half * (t1 - t2)
                g[r, 2] = half * (t1 + t2) + t3


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "conv2d_im2col": [(A3, INT, INT, INT, INT, INT, INT, INT, A2, INT)],
    "conv2d_col2im": [(A2, INT, INT, INT, INT, INT, INT, INT, INT, INT, INT, A3)],
    "conv2d_forward": [(A4, A2, A1, INT, INT, INT, INT, INT, A4, A2)],
    "conv2d_backward": [
        (A4, A4, A2, INT, INT, INT, INT, INT, INT, INT, A4, A3, A2, A2),
    ],
    "conv2d_winograd_weights": [(A4, A3)],
    "conv2d_winograd_input": [(A3, INT, INT, INT, A3, A3)],
    "conv2d_winograd_output": [(A3, A1, INT, INT, INT, A2, A3)],
    "conv2d_winograd_scratch": [(A1, INT, INT, INT, INT)],
    "conv2d_winograd": [(A4, A3, A1, INT, A4, A2)],
    "conv2d_winograd_grad_output": [(A3, INT, INT, INT, A2, A3, A1)],
    "conv2d_winograd_input_backward": [(A3, INT, INT, INT, A2, A3)],
    "conv2d_winograd_rows": [(A3, INT, INT, INT, INT, INT, INT, INT, INT, A1, A1, A1, A1)],
    "conv2d_winograd_backward": [(A4, A4, A3, INT, INT, INT, A4, A2, A4, A4, A2)],
    "conv2d_winograd_weights_backward": [(A3, A4)],
}
