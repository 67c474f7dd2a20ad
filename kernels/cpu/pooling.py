"""Max and average pooling over (N, C, H, W), forward and backward, parallel over planes.

The launcher pads the input first (``max_pool2d_pad``: -inf for max, 0 for average, with
the same border as the pooling's padding), so the window loops have no bounds tests. (Windows are small:
a plain scalar loop per window measured faster than sweeping output rows per offset.)
The common 2x2 stride-2 unpadded max pooling has its own kernel, branch-free, which LLVM
vectorises along each output row: 7x faster than the window loop on LeNet's 28x28 maps.

Max pooling keeps the FIRST maximum in row-major window order, padding counting as -inf
(NumPy's argmax over the window; a NaN wins over numbers, the first NaN over later ones),
and records where it was: the flat index y*W + x in the unpadded plane, or -1 for a
padding cell. Average pooling divides by kh*kw, zero padding included (PyTorch's default).
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A4, FLOAT, INT
from gpunn.kernels.cpu._vmath import select
from numba import prange


@kernel(parallel=True)
def max_pool2d_pad(x, ph, pw, value, x_padded):
    """x_padded (N, C, >= H + ph, >= W + pw) = x at offset (ph, pw), every other entry
    ``value`` (-inf before max pooling, 0 before average pooling and convolution)."""
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
        for yy in range(h + ph, dst.shape[0]):
            row = dst[yy]
            for q in range(row.size):
                row[q] = fill


@kernel(parallel=True)
def max_pool2d_forward(x_padded, kh, kw, sy, sx, ph, pw, h, w, y, arg):
    """y (N, C, oh, ow) = window maxima of the padded x_padded; arg (int32, same shape) = their
    flat positions in the unpadded (h, w) plane, -1 for padding."""
    n_, c_ = x_padded.shape[0], x_padded.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = x_padded[n, c]
        out = y[n, c]
        where = arg[n, c]
        for oy in range(oh):
            y0 = oy * sy
            for ox in range(ow):
                x0 = ox * sx
                best = plane[y0, x0]
                bi = y0
                bj = x0
                nan = False
                for i in range(kh):
                    for j in range(kw):
                        v = plane[y0 + i, x0 + j]
                        nan |= v != v
                        if v > best:  # strict: the first maximum stays
                            best = v
                            bi = y0 + i
                            bj = x0 + j
                if nan:  # the first NaN wins (argmax): rescan backwards, keep the last seen
                    for i in range(kh - 1, -1, -1):
                        for j in range(kw - 1, -1, -1):
                            v = plane[y0 + i, x0 + j]
                            if v != v:
                                best = v
                                bi = y0 + i
                                bj = x0 + j
                yy = bi - ph
                xx = bj - pw
                out[oy, ox] = best
                where[oy, ox] = yy * w + xx if 0 <= yy < h and 0 <= xx < w else -1


@kernel(parallel=True)
def max_pool2d_2x2_forward(x, y, arg):
    """max_pool2d_forward for 2x2 windows, stride 2, no padding (the common case), with
    the same first-maximum and first-NaN rules, written with selects instead of branches
    so that LLVM vectorises it along each output row. x (N, C, H, W); y, arg (N, C, H // 2,
    W // 2)."""
    n_, c_, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = x[n, c]
        for oy in range(oh):
            r0 = plane[2 * oy]
            r1 = plane[2 * oy + 1]
            out = y[n, c, oy]
            where = arg[n, c, oy]
            top = 2 * oy * w
            for ox in range(ow):
                v0 = r0[2 * ox]
                v1 = r0[2 * ox + 1]
                v2 = r1[2 * ox]
                v3 = r1[2 * ox + 1]
                best = v0
                at = 0
                better = v1 > best
                best = select(better, v1, best)
                at = select(better, 1, at)
                better = v2 > best
                best = select(better, v2, best)
                at = select(better, w, at)
                better = v3 > best
                best = select(better, v3, best)
                at = select(better, w + 1, at)
                # a NaN wins, the first one in window order: apply them last to first
                nan = v3 != v3
                best = select(nan, v3, best)
                at = select(nan, w + 1, at)
                nan = v2 != v2
                best = select(nan, v2, best)
                at = select(nan, w, at)
                nan = v1 != v1
                best = select(nan, v1, best)
                at = select(nan, 1, at)
                nan = v0 != v0
                best = select(nan, v0, best)
                at = select(nan, 0, at)
                out[ox] = best
                where[ox] = top + 2 * ox + at


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
def avg_pool2d_forward(x_padded, kh, kw, sy, sx, y):
    """y (N, C, oh, ow) = window sums of the zero-padded x_padded / (kh*kw)."""
    n_, c_ = x_padded.shape[0], x_padded.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    count = y.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = x_padded[n, c]
        out = y[n, c]
        for oy in range(oh):
            y0 = oy * sy
            for ox in range(ow):
                x0 = ox * sx
                s = y.dtype.type(0)
                for i in range(kh):
                    for j in range(kw):
                        s += plane[y0 + i, x0 + j]
                out[oy, ox] = s / count


@kernel(parallel=True)
def avg_pool2d_backward(dy, kh, kw, sy, sx, ph, pw, dx_padded, dx):
    """dx (N, C, H, W) = each dy / (kh*kw) added over its window, accumulated in the padded
    scratch dx_padded (dx itself without padding), then cropped."""
    n_, c_, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    zero = dx.dtype.type(0)
    count = dx.dtype.type(kh * kw)
    for nc in prange(n_ * c_):
        n = nc // c_
        c = nc % c_
        plane = dx_padded[n, c]
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


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "max_pool2d_pad": [(A4, INT, INT, FLOAT, A4)],
    "max_pool2d_forward": [(A4, INT, INT, INT, INT, INT, INT, INT, INT, A4, "int32[:, :, :, ::1]")],
    "max_pool2d_2x2_forward": [(A4, A4, "int32[:, :, :, ::1]")],
    "max_pool2d_backward": [(A4, "int32[:, :, :, ::1]", A4)],
    "avg_pool2d_forward": [(A4, INT, INT, INT, INT, A4)],
    "avg_pool2d_backward": [(A4, INT, INT, INT, INT, INT, INT, A4, A4)],
}
