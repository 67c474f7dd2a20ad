"""Launch gpunn's CUDA kernels: the plumbing between a backend op and its kernels.

One function per op stem (or per family of kernels with one calling convention): it picks
the grid, packs the arguments as the kernel's C++ signature wants them (``np.int64`` for
``long long``, the array's float type for ``T``), allocates the outputs and launches through
the loader, so every launch is counted by :func:`gpunn.kernels.cuda.loader.count_launches`.
Shapes are the caller's to check; these functions only guard the kernels' index widths.

Every function takes a :class:`Device`: the kernel loader, the grid cap and the
:class:`~gpunn.kernels.cuda.workspace.Workspace` of one backend. Needs CuPy and a device.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import numpy as np
from gpunn.kernels import lowp
from gpunn.kernels.cuda.workspace import Workspace
from gpunn.kernels.cuda.workspace import ptr as address

try:
    import cupy
except ImportError:  # pragma: no cover - the backend reports the missing CuPy
    cupy = None

BLOCK = 256  # threads per block of the 1-D kernels
WARPS = BLOCK // 32  # rows per block of the warp-per-row kernels
INT32_MAX = 2**31 - 1
#: Elements of the largest chunk a conv or pooling kernel indexes (its int arithmetic);
#: a test lowers it to walk small batches in several chunks.
CHUNK_ELEMENTS = INT32_MAX

# Flags of the strided elementwise kernels (common.cuh's OperandFlags).
A_SCALAR, B_SCALAR, CONTIGUOUS, ROW_B = 1, 2, 4, 8

i32, i64 = np.int32, np.int64


class Device:
    """What the launchers need of one backend: ``kernels`` (a KernelLoader), ``max_blocks``
    (the grid cap: 32 blocks per multiprocessor), ``workspace``, and for the matrix
    products ``blas`` (gpunn's cuBLAS binding, :class:`gpunn.cuda.cublas.Cublas`, or None
    where it did not load: ``blas_error`` says why), ``tf32`` (float32 products may use
    TF32) and ``capturing`` (the name of the step being captured into a CUDA graph, or
    None: set by :func:`gpunn.cuda.graphed`)."""

    def __init__(self, kernels, max_blocks: int, blas=None, blas_error: str = ""):
        self.kernels = kernels
        self.max_blocks = max_blocks
        self.workspace = Workspace(max_blocks)
        self.blas = blas
        self.blas_error = blas_error
        self.tf32 = False
        self._capturing = None

    @property
    def capturing(self):
        return self._capturing

    @capturing.setter
    def capturing(self, name) -> None:
        self._capturing = name
        self.workspace.capturing = name is not None

    def refuse_capture(self, op: str, why: str) -> None:
        """Raise CaptureError naming ``op`` when a step is being captured: ``why`` says what
        in it cannot be part of a CUDA graph."""
        if self.capturing is not None:
            from gpunn.errors import CaptureError

            raise CaptureError(
                f"{op} cannot be captured into a CUDA graph (step {self.capturing!r}): {why}"
            )


def contiguous(X):
    """X itself when C-contiguous, else a contiguous copy (one CuPy copy kernel)."""
    return X if X.flags.c_contiguous else cupy.ascontiguousarray(X)


def grid(dev: Device, n: int) -> tuple:
    """Blocks for n elements of a grid-stride kernel: one per BLOCK elements, capped."""
    return (max(1, min((n + BLOCK - 1) // BLOCK, dev.max_blocks)),)


def row_grid(dev: Device, rows: int) -> tuple:
    """Blocks for a warp-per-row kernel over ``rows`` rows, capped."""
    return (max(1, min((rows + WARPS - 1) // WARPS, dev.max_blocks)),)


def launch(dev: Device, stem: str, dtype, n: int, args: tuple) -> None:
    """A grid-stride kernel over n elements, BLOCK threads per block."""
    dev.kernels.launch(stem, dtype, grid(dev, n), (BLOCK,), args)


def check_int32(op: str, *sizes: int) -> None:
    """Raise when one image (one plane for pooling) exceeds the 32-bit indexing of the conv
    and pooling kernels; larger batches are walked in chunks that fit."""
    if max(sizes) > INT32_MAX:
        raise ValueError(
            f"{op}: one image needs an intermediate of {max(sizes):,} elements, beyond the "
            "CUDA kernels' 32-bit indexing"
        )


# ---------------------------------------------------------------------- elementwise
def collapse(out_shape, operands):
    """Collapse a broadcast to at most 4 dimensions. ``operands``: arrays (or None for a
    Python scalar). Returns ((d0, d1, d2, d3), [strides of each array, 4 each]) or None
    when more than 4 dimensions remain."""
    nd = len(out_shape)
    keep = [k for k in range(nd) if out_shape[k] != 1]
    strides = []
    for X in operands:
        if X is None:
            strides.append([0] * len(keep))
            continue
        s = [0] * nd
        off = nd - X.ndim
        item = X.itemsize
        for k in range(X.ndim):
            if X.shape[k] != 1:
                s[off + k] = X.strides[k] // item
        strides.append([s[k] for k in keep])
    dims: list[int] = []
    merged: list[list[int]] = [[] for _ in operands]
    for k, d in enumerate(out_shape[i] for i in keep):
        if dims and all(m[-1] == st[k] * d for m, st in zip(merged, strides)):
            dims[-1] *= d
            for m, st in zip(merged, strides):
                m[-1] = st[k]
        else:
            dims.append(d)
            for m, st in zip(merged, strides):
                m.append(st[k])
    if len(dims) > 4:
        return None
    pad = 4 - len(dims)
    return [1] * pad + dims, [[0] * pad + m for m in merged]


def binary(dev: Device, stem: str, A, B):
    """Y = A op B (add_forward ... pow_forward) with NumPy broadcasting; A or B may be a
    Python scalar (a replayed one of a captured step: its device word, cast to the other
    operand's dtype, as a 0-d operand)."""
    dtype = (A if isinstance(A, cupy.ndarray) else B).dtype
    A, B = scalar_operand(A, dtype), scalar_operand(B, dtype)
    a_arr, b_arr = isinstance(A, cupy.ndarray), isinstance(B, cupy.ndarray)
    t = dtype.type
    a_val = t(0) if a_arr else t(A)
    b_val = t(0) if b_arr else t(B)
    flags = (0 if a_arr else A_SCALAR) | (0 if b_arr else B_SCALAR)
    if a_arr and b_arr:
        out_shape = A.shape if A.shape == B.shape else np.broadcast_shapes(A.shape, B.shape)
    else:
        out_shape = (A if a_arr else B).shape
    out_shape = tuple(out_shape)
    Y = cupy.empty(out_shape, dtype)
    n = Y.size
    if n == 0:
        return Y
    arrays = [X for X, is_arr in ((A, a_arr), (B, b_arr)) if is_arr]
    if all(X.shape == out_shape and X.flags.c_contiguous for X in arrays):
        dims, (sa, sb) = [1, 1, 1, n], [[0] * 4, [0] * 4]
        flags |= CONTIGUOUS
    else:
        layout = collapse(out_shape, [A if a_arr else None, B if b_arr else None])
        if layout is None:  # more than 4 dimensions after collapsing: materialise
            if a_arr:
                A = cupy.ascontiguousarray(cupy.broadcast_to(A, out_shape))
            if b_arr:
                B = cupy.ascontiguousarray(cupy.broadcast_to(B, out_shape))
            dims, (sa, sb) = [1, 1, 1, n], [[0] * 4, [0] * 4]
            flags |= CONTIGUOUS
        else:
            dims, (sa, sb) = layout
            if (
                a_arr
                and b_arr
                and dims[:2] == [1, 1]
                and sa == [0, 0, dims[3], 1]
                and sb == [0, 0, 0, 1]
            ):
                flags |= ROW_B  # contiguous A, B one row repeated over A's rows
    args = (A if a_arr else Y, B if b_arr else Y, Y, a_val, b_val, i32(flags), i64(n))
    geometry = (*(i64(d) for d in dims[1:]), *(i64(s) for s in sa), *(i64(s) for s in sb))
    launch(dev, stem, dtype, n, args + geometry)
    return Y


def scalar_operand(X, dtype):
    """An operand of an elementwise operation in ``dtype``: an array as it is, a Python
    scalar rounded to ``dtype``, a replayed float (gpunn.cuda.graphs.replayed, in a
    captured step) as its device word cast to ``dtype``, 0-d (read at every replay)."""
    if isinstance(X, cupy.ndarray):
        return X
    word = getattr(X, "word", None)
    return np.dtype(dtype).type(X) if word is None else word.astype(dtype)


def unary(dev: Device, stem: str, X):
    """Y = f(X) for a one-input map (neg_forward, exp_forward, relu_forward, ...)."""
    X = contiguous(X)
    Y = cupy.empty(X.shape, X.dtype)
    if X.size:
        launch(dev, stem, X.dtype, X.size, (X, Y, i64(X.size)))
    return Y


def map2(dev: Device, stem: str, A, B):
    """out = f(A, B) elementwise, A and B of one shape: the backward of a one-input map from
    dY and its saved array (exp_backward(dY, Y), ...), or rnn_cell_forward(XW, HW)."""
    A, B = contiguous(A), contiguous(B)
    out = cupy.empty(B.shape, B.dtype)
    if B.size:
        launch(dev, stem, B.dtype, B.size, (A, B, out, i64(B.size)))
    return out


def _strided_layout(shape, A, B):
    """(A, B, dims, strides) for operands A, B (arrays or Python scalars) read over ``shape``."""
    a_arr, b_arr = isinstance(A, cupy.ndarray), isinstance(B, cupy.ndarray)
    layout = collapse(shape, [A if a_arr else None, B if b_arr else None])
    if layout is None:
        A = cupy.ascontiguousarray(cupy.broadcast_to(A, shape)) if a_arr else A
        B = cupy.ascontiguousarray(cupy.broadcast_to(B, shape)) if b_arr else B
        layout = collapse(shape, [A if a_arr else None, B if b_arr else None])
        if layout is None:  # contiguous full-size operands: flat indexing
            n = int(np.prod(shape))
            full = [0, 0, 0, 1]
            layout = ([1, 1, 1, n], [full if a_arr else [0] * 4, full if b_arr else [0] * 4])
    dims, strides = layout
    return A, B, dims, strides


def div_backward(dev: Device, dY, Y, B):
    """dB of Y = A / B before un-broadcasting: -dY * Y / B, B strided over Y's shape."""
    dY, Y = contiguous(dY), contiguous(Y)
    _, B, dims, (_, sb) = _strided_layout(Y.shape, None, B)
    dB = cupy.empty(Y.shape, Y.dtype)
    if Y.size:
        geometry = (i64(Y.size), *(i64(d) for d in dims[1:]), *(i64(s) for s in sb))
        launch(dev, "div_backward", Y.dtype, Y.size, (dY, Y, B, dB, *geometry))
    return dB


def pow_backward(dev: Device, dY, Y, A, B, need):
    """(dA, dB) of Y = A ** B before un-broadcasting, in one pass; ``need`` says which.
    A and B are strided over Y's shape or Python scalars."""
    dY, Y = contiguous(dY), contiguous(Y)
    a_arr, b_arr = isinstance(A, cupy.ndarray), isinstance(B, cupy.ndarray)
    A, B, dims, (sa, sb) = _strided_layout(Y.shape, A, B)
    t = Y.dtype.type
    dA = cupy.empty(Y.shape, Y.dtype) if need[0] else None
    dB = cupy.empty(Y.shape, Y.dtype) if need[1] else None
    if Y.size:
        flags = (0 if a_arr else A_SCALAR) | (0 if b_arr else B_SCALAR)
        args = (
            dY,
            Y,
            A if a_arr else Y,
            B if b_arr else Y,
            dA if dA is not None else Y,
            dB if dB is not None else Y,
            t(0) if a_arr else t(A),
            t(0) if b_arr else t(B),
            i32(flags),
            i32((1 if need[0] else 0) | (2 if need[1] else 0)),
            i64(Y.size),
            *(i64(d) for d in dims[1:]),
            *(i64(s) for s in sa),
            *(i64(s) for s in sb),
        )
        launch(dev, "pow_backward", Y.dtype, Y.size, args)
    return dA, dB


def cast_forward(dev: Device, X, dtype):
    """X as ``dtype``: gpunn's kernel between float32 and float64, else CuPy's cast."""
    from gpunn.kernels.cuda.loader import DTYPES

    if X.dtype in DTYPES and dtype in DTYPES and dtype != X.dtype:
        X = contiguous(X)
        Y = cupy.empty(X.shape, dtype)
        if X.size:
            launch(dev, "cast_forward", X.dtype, X.size, (X, Y, i64(X.size)))
        return Y
    return X.astype(dtype)  # same dtype (a copy) or a non-float dtype: CuPy's cast kernel


# ---------------------------------------------------------------------- linear
def linear_forward(dev: Device, Z, b, act: int) -> None:
    """Z += b, then Z = act(Z), in place on the GEMM result Z (rows, cols)."""
    rows, cols = Z.shape
    if (b is not None or act) and Z.size:
        bias = contiguous(b) if b is not None else Z
        args = (Z, bias, i64(rows), i64(cols), i32(b is not None), i32(act))
        launch(dev, "linear_forward", Z.dtype, Z.size, args)


def linear_backward(dev: Device, dY, Y, act: int, need_db: bool):
    """(dZ, db): dZ = act'(dY) given Y = act(Z), db = column sums of dZ (None unless
    ``need_db``), in one kernel when db is needed."""
    from gpunn.kernels.codes import ACTIVATION_CODES

    dY = contiguous(dY)
    rows, cols = Y.shape
    if not need_db:
        if not act:
            return dY, None
        name = next(k for k, v in ACTIVATION_CODES.items() if v == act)
        return map2(dev, name + "_backward", dY, Y), None
    db = cupy.empty(cols, Y.dtype)
    dZ = cupy.empty_like(dY) if act else dY
    if rows == 0:
        db.fill(0)
    elif cols:
        bx = min(32, 1 << (cols - 1).bit_length())
        flags = (i32(act), i32(1), i32(1 if act else 0))
        args = (dY, Y, dZ, db, i64(rows), i64(cols), *flags)
        dev.kernels.launch(
            "linear_backward", Y.dtype, ((cols + bx - 1) // bx,), (bx, BLOCK // bx), args
        )
    return dZ, db


def getitem_index(index, shape):
    """``index`` with host integer/boolean arrays moved to the device, after NumPy has
    checked them against ``shape`` (CuPy would wrap out-of-range indices silently). Device
    index arrays are copied to the host for the check: a synchronisation."""
    items = index if isinstance(index, tuple) else (index,)
    if not any(isinstance(i, (np.ndarray, cupy.ndarray, list)) for i in items):
        return index
    host = tuple(cupy.asnumpy(i) if isinstance(i, cupy.ndarray) else i for i in items)
    np.broadcast_to(np.empty((), np.int8), shape)[host if isinstance(index, tuple) else host[0]]
    moved = tuple(cupy.asarray(i) if isinstance(i, (np.ndarray, list)) else i for i in items)
    return moved if isinstance(index, tuple) else moved[0]


# ---------------------------------------------------------------------- softmax and losses
def rows(dev: Device, stem: str, *arrays):
    """A warp-per-row kernel (softmax_forward, softmax_backward, log_softmax_*) over the last
    axis of contiguous ``arrays``; returns its output, shaped as arrays[0]."""
    out = cupy.empty(arrays[0].shape, arrays[0].dtype)
    cols = out.shape[-1] if out.ndim else 1
    n_rows = out.size // cols if cols else 0
    if out.size:
        args = (*arrays, out, i64(n_rows), i64(cols))
        dev.kernels.launch(stem, out.dtype, row_grid(dev, n_rows), (BLOCK,), args)
    return out


def rows_forward(dev: Device, stem: str, X, axis: int):
    """(Y, saved): a row kernel (softmax_forward, log_softmax_forward) over ``axis`` of X,
    the axis moved last (and back) when it is not last already."""
    axis = axis % X.ndim
    moved = axis != X.ndim - 1
    Xm = cupy.ascontiguousarray(cupy.moveaxis(X, axis, -1)) if moved else contiguous(X)
    Ym = rows(dev, stem, Xm)
    Y = cupy.ascontiguousarray(cupy.moveaxis(Ym, -1, axis)) if moved else Ym
    return Y, (Ym, axis, moved)


def rows_backward(dev: Device, stem: str, dY, saved):
    """dX of a row kernel (softmax_backward, log_softmax_backward) from rows_forward's saved."""
    Ym, axis, moved = saved
    dYm = cupy.ascontiguousarray(cupy.moveaxis(dY, axis, -1)) if moved else contiguous(dY)
    dXm = rows(dev, stem, dYm, Ym)
    return cupy.ascontiguousarray(cupy.moveaxis(dXm, -1, axis)) if moved else dXm


def loss_forward(dev: Device, stem: str, n: int, arrays, out_arrays=()):
    """A loss kernel over n elements ending in a grid-wide sum; returns the 0-d loss."""
    dtype = arrays[0].dtype
    loss = cupy.empty((), dtype)
    partials, counter = dev.workspace.grid_sum_scratch(dtype)
    args = (*arrays, *out_arrays, loss, partials, counter, i64(n))
    dev.kernels.launch(stem, dtype, grid(dev, n), (BLOCK,), args)
    return loss


def mse_loss_backward(dev: Device, dY, D, needs):
    """(dP, dT) from the saved difference D = P - T and the 0-d dY on the device."""
    return _pair_backward(dev, "mse_loss_backward", (D, dY), D, needs)


def pair_loss_backward(dev: Device, stem: str, dY, X, T, needs):
    """(dX, dT) of binary_cross_entropy[_with_logits] from the saved inputs."""
    return _pair_backward(dev, stem, (X, T, dY), X, needs)


def _pair_backward(dev, stem, inputs, like, needs):
    dX = cupy.empty(like.shape, like.dtype) if needs[0] else None
    dT = cupy.empty(like.shape, like.dtype) if needs[1] else None
    if (needs[0] or needs[1]) and like.size:
        need = (1 if needs[0] else 0) | (2 if needs[1] else 0)
        outs = (dX if dX is not None else like, dT if dT is not None else like)
        launch(dev, stem, like.dtype, like.size, (*inputs, *outs, i64(like.size), i32(need)))
    return dX, dT


def cross_entropy_forward(dev: Device, Z, labels):
    """(loss, log-softmax of Z) in one launch; a label outside [0, classes) is flagged in
    the workspace's error slots (the loss is then NaN)."""
    n_rows, cols = Z.shape
    logp = cupy.empty(Z.shape, Z.dtype)
    loss = cupy.empty((), Z.dtype)
    partials, counter = dev.workspace.grid_sum_scratch(Z.dtype)
    err = dev.workspace.err_dev
    args = (Z, labels, logp, loss, partials, counter, i64(n_rows), i64(cols), err)
    dev.kernels.launch("cross_entropy_forward", Z.dtype, row_grid(dev, n_rows), (BLOCK,), args)
    return loss, logp


def cross_entropy_backward(dev: Device, dY, logp, labels):
    """dZ = (softmax - onehot) * dY / rows."""
    dZ = cupy.empty(logp.shape, logp.dtype)
    n_rows, cols = logp.shape
    if dZ.size:
        args = (logp, labels, dY, dZ, i64(n_rows), i64(cols))
        launch(dev, "cross_entropy_backward", logp.dtype, dZ.size, args)
    return dZ


# ---------------------------------------------------------------------- convolution and pooling
#: Bytes of the column matrix of one chunk of images: the convolution walks a large batch in
#: chunks, so its full column matrix never exists (a batch of 128 at 56x56x64, 3x3, would
#: need 925 MB), and every index inside a chunk fits the kernels' 32-bit arithmetic.
CONV_CHUNK_BYTES = 256 << 20


def conv2d_geometry(X, W, stride, padding):
    """(n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow) of a convolution, as Python ints."""
    n, c, h, w = X.shape
    k, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)


def conv2d_chunks(geometry, k: int, itemsize: int) -> list[tuple[int, int]]:
    """[n0, n1) ranges of images: each chunk's column matrix within CONV_CHUNK_BYTES (at
    least one image), and its input, column and output element counts below 2^31."""
    n, c, h, w, kh, kw, _, _, _, _, oh, ow = geometry
    col, x, y = c * kh * kw * oh * ow, c * h * w, k * oh * ow
    check_int32("conv2d", col, x, y)  # one image must fit: the kernels index in 32 bits
    g = min(CONV_CHUNK_BYTES // max(col * itemsize, 1), CHUNK_ELEMENTS // max(col, x, y, 1))
    g = max(1, min(n, g))
    return [(n0, min(n, n0 + g)) for n0 in range(0, n, g)]


def _geometry_args(geometry, n0: int, n1: int) -> tuple:
    """The kernels' int32 geometry tuple for the chunk of images [n0, n1)."""
    return tuple(i32(v) for v in (n1 - n0, *geometry[1:]))


def conv2d_im2col(dev: Device, X, geometry, n0: int, n1: int):
    """col (C*kh*kw, G*P): the column matrix of the images [n0, n1) of contiguous X."""
    _, c, _, _, kh, kw, _, _, _, _, oh, ow = geometry
    col = cupy.empty((c * kh * kw, (n1 - n0) * oh * ow), X.dtype)
    if col.size:
        args = (X[n0:n1], col, *_geometry_args(geometry, n0, n1))
        launch(dev, "conv2d_im2col", X.dtype, col.size, args)
    return col


def conv2d_output(dev: Device, Ymat, b, Y, n0: int, n1: int) -> None:
    """Y[n0:n1] (G, K, OH, OW) from the GEMM's (K, G*P), plus b[k] when b is given."""
    _, k, oh, ow = Y.shape
    if Ymat.size:
        bias = contiguous(b) if b is not None else Ymat
        args = (Ymat, bias, Y[n0:n1], i32(n1 - n0), i32(k), i32(oh * ow), i32(b is not None))
        launch(dev, "conv2d_output", Y.dtype, Ymat.size, args)


def conv2d_grad_output(dev: Device, dY, n0: int, n1: int):
    """dYt (K, G*P) from dY[n0:n1] (G, K, OH, OW) of contiguous dY: the backward GEMMs'
    layout."""
    _, k, oh, ow = dY.shape
    dYt = cupy.empty((k, (n1 - n0) * oh * ow), dY.dtype)
    if dYt.size:
        args = (dY[n0:n1], dYt, i32(n1 - n0), i32(k), i32(oh * ow))
        launch(dev, "conv2d_grad_output", dY.dtype, dYt.size, args)
    return dYt


def conv2d_col2im(dev: Device, dcol, dX, geometry, n0: int, n1: int) -> None:
    """dX[n0:n1] gathered from the column gradient dcol of those images."""
    if dcol.size:
        args = (dcol, dX[n0:n1], *_geometry_args(geometry, n0, n1))
        launch(dev, "conv2d_col2im", dcol.dtype, dX[n0:n1].size, args)


def pool2d_geometry(op: str, X, kernel_size, stride, padding):
    """((n, c, oh, ow), geometry (n*c, h, w, kh, kw, sh, sw, ph, pw, oh, ow) as Python ints)."""
    n, c, h, w = X.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    check_int32(op, h * w, oh * ow)  # one plane must fit: the kernels index in 32 bits
    return (n, c, oh, ow), (n * c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)


def _pool_launch(dev: Device, stem: str, geometry, per_element, arrays) -> None:
    """Launch a pooling kernel over chunks of planes whose input and output element counts
    stay below 2^31 (the kernels index in 32 bits; a larger batch takes several launches).
    ``arrays``: each (array viewed as (planes, rest)), sliced per chunk; ``per_element``
    says which array's size is the grid's."""
    planes, h, w, *_, oh, ow = geometry
    step = max(1, CHUNK_ELEMENTS // max(h * w, oh * ow, 1))
    dtype = arrays[per_element].dtype
    for p0 in range(0, planes, step):
        p1 = min(planes, p0 + step)
        chunk = [a[p0:p1] for a in arrays]
        args = (*chunk, *(i32(v) for v in (p1 - p0, *geometry[1:])))
        launch(dev, stem, dtype, chunk[per_element].size, args)


def _planes(A, planes: int):
    return A.reshape(planes, -1)


def max_pool2d_forward(dev: Device, X, kernel_size, stride, padding):
    """(Y, saved): window maxima of contiguous X and the argmax offsets for the backward."""
    shape, geometry = pool2d_geometry("max_pool2d", X, kernel_size, stride, padding)
    Y = cupy.empty(shape, X.dtype)
    arg = cupy.empty(shape, np.int32)
    if Y.size:
        nc = geometry[0]
        _pool_launch(
            dev,
            "max_pool2d_forward",
            geometry,
            1,
            [_planes(X, nc), _planes(Y, nc), _planes(arg, nc)],
        )
    return Y, (X.shape, arg, geometry)


def max_pool2d_backward(dev: Device, dY, x_shape, arg, geometry):
    dX = cupy.empty(x_shape, dY.dtype)
    if dX.size:
        nc = geometry[0]
        _pool_launch(
            dev,
            "max_pool2d_backward",
            geometry,
            2,
            [_planes(dY, nc), _planes(arg, nc), _planes(dX, nc)],
        )
    return dX


def avg_pool2d_forward(dev: Device, X, kernel_size, stride, padding):
    """(Y, saved): window means of contiguous X, zero padding counted."""
    shape, geometry = pool2d_geometry("avg_pool2d", X, kernel_size, stride, padding)
    Y = cupy.empty(shape, X.dtype)
    if Y.size:
        nc = geometry[0]
        _pool_launch(dev, "avg_pool2d_forward", geometry, 1, [_planes(X, nc), _planes(Y, nc)])
    return Y, (X.shape, geometry)


def avg_pool2d_backward(dev: Device, dY, x_shape, geometry):
    dX = cupy.empty(x_shape, dY.dtype)
    if dX.size:
        nc = geometry[0]
        _pool_launch(dev, "avg_pool2d_backward", geometry, 1, [_planes(dY, nc), _planes(dX, nc)])
    return dX


# ---------------------------------------------------------------------- dropout
def dropout_forward(dev: Device, X, p: float, seed: int, seed_slot: int = 0):
    """(Y, saved) of inverted dropout on contiguous X; saved is the kernel's scalar tail.
    ``seed_slot``: 0, or in a captured step the device word its replays write the seed to
    (see gpunn.cuda.graphs.replayed), which the kernels then read instead of ``seed``."""
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    args = (i64(X.size), np.uint64(seed), np.uint64(seed_slot), np.float64(p), X.dtype.type(scale))
    Y = cupy.empty(X.shape, X.dtype)
    if X.size:
        launch(dev, "dropout_forward", X.dtype, X.size, (X, Y, *args))
    return Y, args


def dropout_backward(dev: Device, dY, saved):
    """dX from contiguous dY and dropout_forward's saved: the same mask, recomputed."""
    dX = cupy.empty(dY.shape, dY.dtype)
    if dY.size:
        launch(dev, "dropout_backward", dY.dtype, dY.size, (dY, dX, *saved))
    return dX


# ---------------------------------------------------------------------- recurrent cells
def lstm_cell_forward(dev: Device, XW, HW, C):
    """(H_new, C_new, S): the four gates and the state update in one kernel; S (5, B, H)
    holds i, f, g, o and tanh(C_new) for the backward."""
    batch, hidden = C.shape
    out = cupy.empty((7, batch, hidden), C.dtype)  # H_new, C_new, then S
    Hn, Cn, S = out[0], out[1], out[2:]
    if C.size:
        args = (XW, HW, C, Hn, Cn, S, i64(batch), i64(hidden))
        launch(dev, "lstm_cell_forward", C.dtype, C.size, args)
    return Hn, Cn, S


def lstm_cell_backward(dev: Device, dHn, dCn, C, S, need_dc: bool):
    """(dG (B, 4H), dC_prev or None) in one kernel."""
    batch, hidden = C.shape
    dG = cupy.empty((batch, 4 * hidden), C.dtype)
    dCp = cupy.empty(C.shape, C.dtype) if need_dc else None
    if C.size:
        args = (dHn, dCn, C, S, dG, dCp if dCp is not None else dG)
        args += (i64(batch), i64(hidden), i32(1 if need_dc else 0))
        launch(dev, "lstm_cell_backward", C.dtype, C.size, args)
    return dG, dCp


# ---------------------------------------------------------------------- whole-sequence recurrent
# One layer over the whole sequence: the input projection of every step as one cuBLAS GEMM
# into a gate buffer allocated once per call; per step one GEMM (h_{t-1} @ W_hh.T) and one
# fused step kernel (biases folded in) forward, one fused kernel and one GEMM (dZ_t @ W_hh)
# backward; then dX, dW_ih and dW_hh as one GEMM each over all T*B rows and the bias
# gradient as one column sum. States live in (T+1, B, H) buffers whose row 0 is the initial
# state, so h_{t-1} of every step is one contiguous (T*B, H) block. GEMMs go through
# matmul into preallocated outputs (one cuBLAS call each).


def _sequence_input(dev: Device, X, W_ih, W_hh, b_ih, b_hh):
    """(X as (T*B, I), the gate buffer (T, B, G*H) holding every step's input projection
    (one GEMM), W_hh.T contiguous, the kernels' bias arguments (b_ih, b_hh, has_bias))."""
    T, B, n_in = X.shape
    X2 = contiguous(X).reshape(T * B, n_in)
    Z = matmul(dev, X2, contiguous(W_ih).T).reshape(T, B, W_ih.shape[0])
    W_hhT = cupy.ascontiguousarray(W_hh.T)
    if b_ih is None and b_hh is None:
        return X2, Z, W_hhT, (Z, Z, i32(0))  # the bias pointers are not read
    zero = cupy.zeros(W_ih.shape[0], X.dtype) if b_ih is None or b_hh is None else None
    b_i = zero if b_ih is None else contiguous(b_ih)
    b_h = zero if b_hh is None else contiguous(b_hh)
    return X2, Z, W_hhT, (b_i, b_h, i32(1))


def rnn_forward(dev: Device, X, H0, W_ih, W_hh, b_ih, b_hh, act: int):
    """(X2, Hall): X as (T*B, I) and the states (T+1, B, H), Hall[0] = H0, Hall[t+1] = h_t."""
    T, B, _ = X.shape
    hidden = W_hh.shape[1]
    X2, XW, W_hhT, (b_i, b_h, has_b) = _sequence_input(dev, X, W_ih, W_hh, b_ih, b_hh)
    Hall = cupy.empty((T + 1, B, hidden), X.dtype)
    Hall[0] = H0
    HW = cupy.empty((B, hidden), X.dtype)
    for t in range(T):
        matmul(dev, Hall[t], W_hhT, out=HW)
        if HW.size:
            args = (XW[t], HW, b_i, b_h, Hall[t + 1], i64(B), i64(hidden), has_b, i32(act))
            launch(dev, "rnn_forward_step", X.dtype, HW.size, args)
    return X2, Hall


def rnn_backward(dev: Device, dY, dh_n, W_hh, Hall, act: int, need_dh0: bool):
    """(dZ, dH0): every step's pre-activation gradient (T, B, H) and the initial state's
    (the last GEMM is skipped without ``need_dh0``)."""
    T, B, hidden = Hall.shape[0] - 1, Hall.shape[1], Hall.shape[2]
    dY = contiguous(dY)
    dH = cupy.array(dh_n, dtype=Hall.dtype, order="C")
    dZ = cupy.empty((T, B, hidden), Hall.dtype)
    W_hh = contiguous(W_hh)
    for t in range(T - 1, -1, -1):
        if dH.size:
            args = (dY[t], dH, Hall[t + 1], dZ[t], i64(dH.size), i32(act))
            launch(dev, "rnn_backward_step", Hall.dtype, dH.size, args)
        if t or need_dh0:
            matmul(dev, dZ[t], W_hh, out=dH)
    return dZ, dH


def lstm_forward(dev: Device, X, H0, C0, W_ih, W_hh, b_ih, b_hh):
    """(X2, Hall, Call, Z): X as (T*B, I); states (T+1, B, H) with row 0 the initial ones;
    Z (T, B, 4H) the activated gates of every step, for the backward."""
    T, B, _ = X.shape
    hidden = W_hh.shape[1]
    X2, Z, W_hhT, (b_i, b_h, has_b) = _sequence_input(dev, X, W_ih, W_hh, b_ih, b_hh)
    Hall = cupy.empty((T + 1, B, hidden), X.dtype)
    Call = cupy.empty((T + 1, B, hidden), X.dtype)
    Hall[0] = H0
    Call[0] = C0
    HW = cupy.empty((B, 4 * hidden), X.dtype)
    for t in range(T):
        matmul(dev, Hall[t], W_hhT, out=HW)
        if HW.size:
            args = (Z[t], HW, b_i, b_h, Call[t], Call[t + 1], Hall[t + 1])
            args += (i64(B), i64(hidden), has_b)
            launch(dev, "lstm_forward_step", X.dtype, B * hidden, args)
    return X2, Hall, Call, Z


def lstm_backward(dev: Device, dY, dh_n, dc_n, W_hh, Call, Z, need_dh0: bool):
    """(dZ, dH0, dC0): every step's gate gradient (T, B, 4H) and the initial states' (the
    last GEMM is skipped without ``need_dh0``)."""
    T, B, hidden = Call.shape[0] - 1, Call.shape[1], Call.shape[2]
    dY = contiguous(dY)
    dH = cupy.array(dh_n, dtype=Z.dtype, order="C")
    dC = cupy.array(dc_n, dtype=Z.dtype, order="C")  # dC_t in, dC_{t-1} out
    dZ = cupy.empty(Z.shape, Z.dtype)
    W_hh = contiguous(W_hh)
    for t in range(T - 1, -1, -1):
        if dH.size:
            args = (dY[t], dH, dC, Z[t], Call[t], Call[t + 1], dZ[t], i64(B), i64(hidden))
            launch(dev, "lstm_backward_step", Z.dtype, dH.size, args)
        if t or need_dh0:
            matmul(dev, dZ[t], W_hh, out=dH)
    return dZ, dH, dC


def gru_forward(dev: Device, X, H0, W_ih, W_hh, b_ih, b_hh):
    """(X2, Hall, Z, HN): X as (T*B, I); the states (T+1, B, H) with row 0 the initial one;
    Z (T, B, 3H) the gates r, z, n of every step and HN (T, B, H) W_hn h_{t-1} + b_hn, for
    the backward."""
    T, B, _ = X.shape
    hidden = W_hh.shape[1]
    X2, Z, W_hhT, (b_i, b_h, has_b) = _sequence_input(dev, X, W_ih, W_hh, b_ih, b_hh)
    Hall = cupy.empty((T + 1, B, hidden), X.dtype)
    Hall[0] = H0
    HN = cupy.empty((T, B, hidden), X.dtype)
    HW = cupy.empty((B, 3 * hidden), X.dtype)
    for t in range(T):
        matmul(dev, Hall[t], W_hhT, out=HW)
        if HW.size:
            args = (Z[t], HW, b_i, b_h, Hall[t], Hall[t + 1], HN[t])
            args += (i64(B), i64(hidden), has_b)
            launch(dev, "gru_forward_step", X.dtype, B * hidden, args)
    return X2, Hall, Z, HN


def gru_backward(dev: Device, dY, dh_n, W_hh, Hall, Z, HN, need_dh0: bool):
    """(dGi, dGh, dH0): every step's gate gradient on the input side and on the recurrent
    side (T, B, 3H; they differ in the n part, which r scales) and the initial state's
    (None without ``need_dh0``; the last GEMM is then skipped)."""
    T, B, hidden = HN.shape
    dY = contiguous(dY)
    dH = cupy.array(dh_n, dtype=Z.dtype, order="C")  # the GEMM dGh_{t+1} @ W_hh
    dHZ = cupy.zeros((B, hidden), Z.dtype)  # dh_{t+1} * z_{t+1} in, dh_t * z_t out
    dGi = cupy.empty(Z.shape, Z.dtype)
    dGh = cupy.empty(Z.shape, Z.dtype)
    W_hh = contiguous(W_hh)
    for t in range(T - 1, -1, -1):
        if dH.size:
            args = (dY[t], dH, dHZ, Z[t], Hall[t], HN[t], dGi[t], dGh[t], i64(B), i64(hidden))
            launch(dev, "gru_backward_step", Z.dtype, dH.size, args)
        if t or need_dh0:
            matmul(dev, dGh[t], W_hh, out=dH)
    return dGi, dGh, (dH + dHZ if need_dh0 else None)


def sequence_weight_grads(
    dev: Device, dZ, X2, W_ih, Hall, need_dx, need_w_ih, need_w_hh, need_b_ih, need_b_hh, dZ_hh=None
):
    """(dX, dW_ih, dW_hh, db_ih, db_hh) from every step's pre-activation gradient dZ
    (T, B, G*H), and dZ_hh where the recurrent side's differs (the GRU's): one GEMM each
    over all T*B rows, each bias one column sum; None where not needed."""
    T, B, rows = dZ.shape
    dZ2 = dZ.reshape(T * B, rows)
    dZh2 = dZ2 if dZ_hh is None else dZ_hh.reshape(T * B, rows)
    dX = matmul(dev, dZ2, contiguous(W_ih)).reshape(T, B, X2.shape[1]) if need_dx else None
    dW_ih = matmul(dev, dZ2.T, X2) if need_w_ih else None
    H_prev = Hall[:T].reshape(T * B, Hall.shape[2])
    dW_hh = matmul(dev, dZh2.T, H_prev) if need_w_hh else None
    db_ih = dZ2.sum(axis=0) if need_b_ih else None
    db_hh = None
    if need_b_hh:
        db_hh = db_ih.copy() if need_b_ih and dZ_hh is None else dZh2.sum(axis=0)
    return dX, dW_ih, dW_hh, db_ih, db_hh


# ---------------------------------------------------------------------- optimizer updates
def skip_flag(flag) -> np.uint64:
    """The address of ``flag`` (a 0-d bool array: skip the update when true), or 0 (null:
    never skip), as the update kernels take it."""
    if flag is None:
        return np.uint64(0)
    if flag.dtype != np.bool_ or flag.size != 1:
        raise ValueError(f"optimizer update: skip must be a 0-d bool array, got {flag.dtype} "
                         f"{flag.shape}")  # fmt: skip
    return np.uint64(address(flag))


def fused_update(dev: Device, stem: str, columns, scalars) -> None:
    """sgd_update / adam_update: one launch per dtype over all parameters. ``columns`` =
    (params, grads, state...), lists of equal length (None for absent state); ``scalars``:
    Python floats (passed as the parameters' float type), numpy integers and numpy floats
    (passed as they are)."""
    params = columns[0]
    for p in params:
        if not p.flags.c_contiguous:
            raise ValueError(f"{stem}: parameters must be contiguous to update in place")
    groups: dict = {}
    for i, p in enumerate(params):
        groups.setdefault(p.dtype, []).append(i)
    for dtype, idx in groups.items():
        cols = [[params[i] for i in idx]]
        cols += [[None if c[i] is None else contiguous(c[i]) for i in idx] for c in columns[1:]]
        sizes = [params[i].size for i in idx]
        if not any(sizes):
            continue
        table = dev.workspace.pointer_table(cols, sizes)
        t = dtype.type
        args = (table, i32(len(idx)), *(t(s) if type(s) is float else s for s in scalars))
        launch(dev, stem, dtype, max(sizes), args)


def clip_grad_norm(dev: Device, grads, max_norm: float, norm_type: float, check: bool):
    """clip_grad_norm_update: the reduction kernel over all gradients (one dtype) writes the
    0-d norm and the scale factor on the device, the scaling kernel reads the factor there;
    no host read unless ``check`` (error_if_nonfinite). Returns the 0-d norm."""
    for g in grads:
        if not g.flags.c_contiguous:
            raise ValueError("clip_grad_norm_: gradients must be contiguous to scale in place")
    dtype = grads[0].dtype
    total, coef = cupy.zeros((), dtype), cupy.empty((), dtype)
    sizes = [g.size for g in grads]
    norm_type = float(norm_type)
    code = 0 if norm_type == math.inf else {1.0: 1, 2.0: 2}.get(norm_type, 3)
    partials, counter = dev.workspace.grid_sum_scratch(np.dtype(np.float64))
    table = dev.workspace.pointer_table([list(grads)], sizes)
    args = (table, i32(len(grads)), i32(code), np.float64(norm_type), dtype.type(max_norm))
    args += (partials, counter, total, coef)
    dev.kernels.launch("clip_grad_norm_reduce", dtype, grid(dev, max(sizes)), (BLOCK,), args)
    if check and not bool(cupy.isfinite(total)):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
            f"{float(total)}, so they cannot be clipped (error_if_nonfinite=True)"
        )
    if any(sizes):
        launch(dev, "clip_grad_norm_scale", dtype, max(sizes), (table, i32(len(grads)), coef))
    return total


# ---------------------------------------------------------------------- mixed precision
# Written and checked under a NumPy stand-in for CuPy and cuBLAS; not yet run on a GPU.
_LOWP: contextvars.ContextVar = contextvars.ContextVar("gpunn_cuda_lowp", default=None)


@contextlib.contextmanager
def autocast_scope(dtype):
    """Within it, :func:`matmul` lowers float32 products to ``dtype``."""
    token = _LOWP.set(dtype)
    try:
        yield
    finally:
        _LOWP.reset(token)


def matmul(dev: Device, A, B, out=None):
    """A @ B through gpunn's cuBLAS binding (``dev.blas``) on the current stream, which a
    CUDA graph can capture: float32/float64 2-D operands as one GEMM (``out`` (m, n) with
    contiguous rows receives it when given), batched ones (..., m, k) @ (..., k, n), their
    batch dimensions broadcast, as one strided-batched GEMM. Operands whose strides cuBLAS
    cannot take are copied first. Under :func:`autocast_scope`, for float32 operands: 2-D
    ones rounded to float16 or bfloat16 and multiplied with float32 accumulation into a
    float32 result by one cublasGemmEx; batched ones multiply their rounded values in
    float32 (the same numbers without the speed-up). Other dtypes, or no binding:
    cupy.dot / cupy.matmul, which CuPy refuses while a stream is capturing."""
    from gpunn.kernels.cuda.loader import DTYPES

    low = _LOWP.get()
    if low is not None and A.dtype == np.float32 and B.dtype == np.float32:
        if dev.blas is not None and A.ndim == 2 and B.ndim == 2 and out is None:
            return _lowp_gemm(dev, A, B, low)
        A, B = lowp.round_to(cupy, A, low), lowp.round_to(cupy, B, low)
    if dev.blas is not None and A.dtype == B.dtype in DTYPES:
        stream = cupy.cuda.get_current_stream().ptr
        if A.ndim == 2 and B.ndim == 2:
            A, B = _gemm_operand(A), _gemm_operand(B)
            if out is None:
                out = cupy.empty((A.shape[0], B.shape[1]), A.dtype)
            dev.blas.gemm(A, B, out, stream, dev.tf32)
            return out
        if out is None:
            batch = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
            C = cupy.empty(batch + (A.shape[-2], B.shape[-1]), A.dtype)
            count = math.prod(batch)
            A3, B3 = _batched_operand(A, batch, count), _batched_operand(B, batch, count)
            C3 = C.reshape((count,) + C.shape[-2:])
            dev.blas.gemm_batched(A3, B3, C3, stream, dev.tf32)
            return C
    why = "non-float products" if dev.blas is not None else dev.blas_error
    dev.refuse_capture("matmul", f"the product goes through CuPy's cuBLAS ({why})")
    if out is not None:
        return cupy.matmul(A, B, out=out)
    return cupy.dot(A, B) if A.ndim == 2 and B.ndim == 2 else cupy.matmul(A, B)


def _gemm_operand(X):
    """2-D ``X`` as cuBLAS can read it: itself, or a contiguous copy."""
    from gpunn.cuda.cublas import operand

    return X if operand(X) is not None else cupy.ascontiguousarray(X)


def _batched_operand(X, batch: tuple, count: int):
    """``X`` (..., r, c) broadcast to ``batch`` as a (count, r, c) view whose matrices lie one
    stride apart (0 for a matrix every product shares), copied where its strides allow no
    such view or cuBLAS cannot read its matrices."""
    from gpunn.cuda.cublas import operand

    X = cupy.broadcast_to(X, batch + X.shape[-2:])
    item = X.itemsize
    step = _single_stride(X.shape[:-2], X.strides[:-2])
    if step is None or step % item or (X.size and operand(X[(0,) * len(batch)]) is None):
        X, step = cupy.ascontiguousarray(X), X.shape[-2] * X.shape[-1] * item
    return cupy.lib.stride_tricks.as_strided(X, (count,) + X.shape[-2:], (step,) + X.strides[-2:])


def _single_stride(shape: tuple, strides: tuple):
    """The byte stride between consecutive entries of the flattened dimensions ``shape``
    (strides ``strides``) when one stride serves them all, else None."""
    step = None
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size == 1:
            continue
        if step is None:
            step, span = stride, stride * size
        elif stride == span:
            span = stride * size
        else:
            return None
    return 0 if step is None else step


def _lowp_gemm(dev: Device, A, B, low: str):
    """float32 (m, k) @ (k, n), inputs rounded to ``low``, float32 accumulation and result:
    one cublasGemmEx through the binding."""
    a, b = lowp.gemm_bits(cupy, A, low), lowp.gemm_bits(cupy, B, low)
    C = cupy.empty((A.shape[0], B.shape[1]), np.float32)
    dev.blas.gemm_ex(a, b, C, low, cupy.cuda.get_current_stream().ptr)
    return C


# ---------------------------------------------------------------------- normalization, embedding
# (and the activations leaky_relu and gelu)
def activation_forward(dev: Device, stem: str, X, setting):
    """Y = f(X) for leaky_relu_forward (setting: the slope, as X's float type) and
    gelu_forward (setting: 1 for the tanh form), X contiguous."""
    Y = cupy.empty(X.shape, X.dtype)
    if X.size:
        launch(dev, stem, X.dtype, X.size, (X, Y, i64(X.size), setting))
    return Y


def activation_backward(dev: Device, stem: str, dY, X, setting):
    """dX of leaky_relu / gelu from dY and the saved contiguous input X."""
    dY = contiguous(dY)
    dX = cupy.empty(X.shape, X.dtype)
    if X.size:
        launch(dev, stem, X.dtype, X.size, (dY, X, dX, i64(X.size), setting))
    return dX


def _channel_blocks(dev: Device, c: int) -> tuple:
    """One block per channel of the batch norm reductions, capped."""
    return (max(1, min(c, dev.max_blocks)),)


def batch_norm_forward(dev: Device, X, weight, bias, mean, var, eps):
    """(Y, X, mean, var, invstd) of batch norm on contiguous X (N, C, *), with per-channel
    ``mean`` and ``var`` (None: the batch statistics, computed here)."""
    n, c = X.shape[0], X.shape[1]
    s = X.size // max(n * c, 1)
    dtype = X.dtype
    if mean is None:
        mean, var = cupy.empty(c, dtype), cupy.empty(c, dtype)
        if X.size:
            args = (X, mean, var, i64(n), i64(c), i64(s))
            dev.kernels.launch("batch_norm_stats", dtype, _channel_blocks(dev, c), (BLOCK,), args)
    else:
        mean, var = contiguous(mean), contiguous(var)
    Y = cupy.empty(X.shape, dtype)
    invstd = cupy.empty(c, dtype)
    if X.size:
        flags = (1 if weight is not None else 0) | (2 if bias is not None else 0)
        w = contiguous(weight) if weight is not None else mean
        b = contiguous(bias) if bias is not None else mean
        args = (X, mean, var, w, b, Y, invstd, i64(n), i64(c), i64(s), np.float64(eps), i32(flags))
        launch(dev, "batch_norm_forward", dtype, X.size, args)
    return Y, mean, var, invstd


def batch_norm_running(dev: Device, mean, var, factor, count, running_mean, running_var):
    """Update contiguous running statistics in place from the batch's."""
    for r in (running_mean, running_var):
        if not r.flags.c_contiguous:
            raise ValueError("batch_norm: running statistics must be contiguous to update in place")
    c = mean.size
    args = (mean, var, running_mean, running_var, i64(c), np.float64(factor))
    launch(dev, "batch_norm_running", mean.dtype, c, args + (np.float64(count / (count - 1)),))


def batch_norm_backward(dev: Device, dY, X, mean, invstd, weight, training, needs):
    """(dX, dweight, dbias, dmean, dvar), None where ``needs`` is false."""
    n, c = X.shape[0], X.shape[1]
    s = X.size // max(n * c, 1)
    dtype = X.dtype
    dX = cupy.empty(X.shape, dtype) if needs[0] else None
    outs = [cupy.empty(c, dtype) if need else None for need in needs[1:5]]
    need = sum(1 << k for k, flag in enumerate(needs[:5]) if flag)
    if need and c:
        dY = contiguous(dY)
        flags = (1 if weight is not None else 0) | (2 if training else 0)
        w = contiguous(weight) if weight is not None else mean
        ptrs = [o if o is not None else mean for o in (dX, *outs)]
        args = (dY, X, mean, invstd, w, *ptrs, i64(n), i64(c), i64(s), i32(flags), i32(need))
        dev.kernels.launch("batch_norm_backward", dtype, _channel_blocks(dev, c), (BLOCK,), args)
    return (dX, *outs)


def layer_norm_forward(dev: Device, X2, weight, bias, eps):
    """(Y2, mean, invstd) of layer norm over the rows of contiguous X2 (rows, d)."""
    rows, d = X2.shape
    dtype = X2.dtype
    Y2 = cupy.empty(X2.shape, dtype)
    mean, invstd = cupy.empty(rows, dtype), cupy.empty(rows, dtype)
    if X2.size:
        flags = (1 if weight is not None else 0) | (2 if bias is not None else 0)
        w = contiguous(weight) if weight is not None else X2
        b = contiguous(bias) if bias is not None else X2
        args = (X2, w, b, Y2, mean, invstd, i64(rows), i64(d), np.float64(eps), i32(flags))
        dev.kernels.launch("layer_norm_forward", dtype, row_grid(dev, rows), (BLOCK,), args)
    return Y2, mean, invstd


def layer_norm_backward(dev: Device, dY2, X2, mean, invstd, weight, needs):
    """(dX2, dweight, dbias) over the rows of X2 (rows, d): dX2 (rows, d), the others flat
    (d,); None where ``needs`` is false."""
    rows, d = X2.shape
    dtype = X2.dtype
    dY2 = contiguous(dY2)
    dX = dW = dB = None
    if needs[0]:
        dX = cupy.empty(X2.shape, dtype)
        if X2.size:
            w = contiguous(weight) if weight is not None else X2
            args = (dY2, X2, mean, invstd, w, dX, i64(rows), i64(d), i32(weight is not None))
            dev.kernels.launch("layer_norm_backward", dtype, row_grid(dev, rows), (BLOCK,), args)
    if needs[1] or needs[2]:
        dW = cupy.empty(d, dtype) if needs[1] else None
        dB = cupy.empty(d, dtype) if needs[2] else None
        if d:
            need = (1 if needs[1] else 0) | (2 if needs[2] else 0)
            outs = (dW if dW is not None else X2, dB if dB is not None else X2)
            args = (dY2, X2, mean, invstd, *outs, i64(rows), i64(d), i32(need))
            blocks = ((d + 31) // 32,)
            dev.kernels.launch("layer_norm_affine_grad", dtype, blocks, (32, 8), args)
    return dX, dW, dB


def embedding_forward(dev: Device, indices, weight):
    """(Y, flat int64 indices): Y (*indices.shape, E), the rows the indices pick."""
    idx = cupy.ascontiguousarray(indices.reshape(-1), dtype=np.int64)
    weight = contiguous(weight)
    e = weight.shape[1]
    Y = cupy.empty(tuple(indices.shape) + (e,), weight.dtype)
    if Y.size:
        rows, err = i64(weight.shape[0]), dev.workspace.err_dev
        args = (idx, weight, Y, i64(idx.size), i64(e), rows, err)
        launch(dev, "embedding_forward", weight.dtype, Y.size, args)
    return Y, idx


def embedding_backward(dev: Device, dY, idx, shape, padding_idx):
    """dweight (V, E): the positions ordered by (index, position) by gpunn's counting sort
    (one block), then one thread per element of dweight adds its row's positions in that
    order."""
    rows, e = shape
    p = idx.size
    order = cupy.empty(p, np.int64)
    bounds = cupy.empty(rows + 1, np.int64)
    cursor = cupy.empty(max(rows, 1), np.int64)
    args = (idx, order, bounds, cursor, i64(p), i64(rows))
    dev.kernels.launch("embedding_backward_order", dY.dtype, (1,), (BLOCK,), args)
    dW = cupy.empty(shape, dY.dtype)
    if dW.size:
        pad = -1 if padding_idx is None else int(padding_idx)
        args = (contiguous(dY), order, bounds, dW, i64(rows), i64(e), i64(pad))
        launch(dev, "embedding_backward", dY.dtype, dW.size, args)
    return dW
