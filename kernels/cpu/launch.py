"""Launchers of the CPU kernels: the plumbing between an op of the Numba backend and its
kernels. Each launcher takes NumPy arrays, makes them contiguous where a kernel needs it,
allocates the outputs, picks the serial or parallel variant (``threads.pick``), chunks
work where it pays, and calls the kernel. Launchers are named by op stem
(``conv2d_forward`` launches the pieces of a convolution); the backend's op methods decide
what to save for the backward and which gradients to return.

Kernels are looked up on their modules at call time (``_ew.add_forward``), so a test can
wrap them.
"""

from __future__ import annotations

import math
from numbers import Number

import numpy as np
from gpunn.kernels.cpu import activations as _act
from gpunn.kernels.cpu import conv as _conv
from gpunn.kernels.cpu import dropout as _drop
from gpunn.kernels.cpu import elementwise as _ew
from gpunn.kernels.cpu import embedding as _emb
from gpunn.kernels.cpu import linear as _lin
from gpunn.kernels.cpu import normalization as _norm
from gpunn.kernels.cpu import optim as _opt
from gpunn.kernels.cpu import pooling as _pool
from gpunn.kernels.cpu import recurrent as _rec
from gpunn.kernels.cpu import shape as _shape
from gpunn.kernels.cpu import softmax as _sm
from gpunn.kernels.cpu import threads as _threads
from gpunn.kernels.cpu.threads import HEAVY, pick, workspace

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
#: An empty array per dtype: what a kernel gets for an output that is not wanted.
EMPTY = {_F32: np.empty(0, _F32), _F64: np.empty(0, _F64)}
EMPTY2 = {_F32: np.empty((0, 0), _F32), _F64: np.empty((0, 0), _F64)}
EMPTY3 = {d: np.empty((0, 0, 0), d) for d in (_F32, _F64)}
EMPTY4 = {d: np.empty((0, 0, 0, 0), d) for d in (_F32, _F64)}


# ---------------------------------------------------------------------- contiguity
def c(X):
    """X as a C-contiguous array (X itself when it is one)."""
    return X if X.flags.c_contiguous else np.ascontiguousarray(X)


def blas(X):
    """X as an operand BLAS takes without NumPy's slow fallback loop."""
    flags = X.flags
    return X if flags.c_contiguous or flags.f_contiguous else np.ascontiguousarray(X)


def shape_of(X):
    return X.shape if isinstance(X, np.ndarray) else ()


def scalar(X, dtype):
    """A Python number or a size-1 array as a scalar of ``dtype``."""
    return dtype.type(X if isinstance(X, Number) else X.reshape(-1)[0])


# ---------------------------------------------------------------------- elementwise
def _operand(X, shape, size, dtype):
    """A binary op's operand as a flat array of ``size`` elements, or of one (a scalar:
    the kernel broadcasts it)."""
    if not isinstance(X, np.ndarray):
        return np.full(1, X, dtype)
    if X.size == size:  # same shape, or one that only differs by size-1 axes
        return X.ravel()
    if X.size == 1:
        return X.reshape(1)
    return np.ascontiguousarray(np.broadcast_to(X, shape)).reshape(size)


def _broadcast(A, B):
    """(shape, size, dtype) of a binary op's result."""
    if isinstance(A, np.ndarray):
        dtype = A.dtype
        if isinstance(B, np.ndarray) and B.shape != A.shape:
            shape = np.broadcast_shapes(A.shape, B.shape)
        else:
            shape = A.shape
    else:
        dtype, shape = B.dtype, B.shape
    return shape, math.prod(shape), dtype


def binary(kern, A, B):
    """kern(a, b, out) with A, B arrays or Python scalars, broadcast as NumPy does."""
    shape, size, dtype = _broadcast(A, B)
    out = np.empty(shape, dtype)
    pick(kern, size)(
        _operand(A, shape, size, dtype), _operand(B, shape, size, dtype), out.reshape(size)
    )
    return out


def unary(kern, X, cost=1, dtype=None):
    """kern(x, out) over X's elements; ``out`` of ``dtype`` (X's by default)."""
    out = np.empty(X.shape, X.dtype if dtype is None else dtype)
    pick(kern, X.size * cost)(X.ravel(), out.reshape(-1))
    return out


def unary_backward(kern, dY, Y):
    """kern(dy, y, dx): a gradient from dY and the saved output Y, elementwise."""
    dX = np.empty(Y.shape, Y.dtype)
    pick(kern, dX.size)(dY.ravel(), Y.ravel(), dX.reshape(-1))
    return dX


def div_backward(dY, Y, B):
    """dB of A / B at full size (before un-broadcasting): -dY * Y / B."""
    shape, size = Y.shape, Y.size
    db = np.empty(shape, Y.dtype)
    pick(_ew.div_backward, size)(
        dY.ravel(), Y.ravel(), _operand(B, shape, size, Y.dtype), db.reshape(size)
    )
    return db


def pow_backward(dY, A, B, Y, needs):
    """(dA, dB) of A ** B at full size, None where not needed; one pass for both."""
    shape, size, dtype = Y.shape, Y.size, Y.dtype
    da = np.empty(shape, dtype) if needs[0] else None
    db = np.empty(shape, dtype) if needs[1] else None
    pick(_ew.pow_backward, size)(
        dY.ravel(),
        _operand(A, shape, size, dtype),
        _operand(B, shape, size, dtype),
        Y.ravel(),
        EMPTY[dtype] if da is None else da.reshape(size),
        EMPTY[dtype] if db is None else db.reshape(size),
    )
    return da, db


def step_backward(shape, dtype):
    dX = np.empty(shape, dtype)
    _act.step_backward(dX.reshape(-1))
    return dX


# ---------------------------------------------------------------------- linear
#: Multiply-adds that count as one element of work when a linear kernel picks its serial
#: or parallel variant (parallel from PARALLEL_MIN_SIZE * 16 = 4M multiply-adds).
LINEAR_MACS_PER_ELEMENT = 16


def linear_forward(X, W, b, code):
    """Y (..., out) = act(X @ W.T + b); b None for no bias."""
    X, W = c(X), c(W)
    X2 = X.reshape(-1, X.shape[-1])
    Z = np.empty((X2.shape[0], W.shape[0]), X.dtype)
    kern, tasks = _tasks(_lin.linear_forward, Z.size * W.shape[1] // LINEAR_MACS_PER_ELEMENT)
    with _threads.single_blas():
        kern(X2, W, EMPTY[X.dtype] if b is None else b.ravel(), code, tasks, Z)
    return Z.reshape(X.shape[:-1] + (W.shape[0],))


def linear_backward(dY, X, W, Y, code, needs):
    """(dX, dW, db) of linear_forward, None where ``needs`` is false (needs[2]: a bias
    exists and its gradient is wanted)."""
    X, W = c(X), c(W)
    k, m, dtype = W.shape[1], W.shape[0], X.dtype
    X2, dY2, Y2 = X.reshape(-1, k), c(dY).reshape(-1, m), Y.reshape(-1, m)
    n = X2.shape[0]
    dZ = np.empty((n, m), dtype) if code else dY2
    dX = np.empty((n, k), dtype) if needs[0] else EMPTY2[dtype]
    dW = np.empty((m, k), dtype) if needs[1] else EMPTY2[dtype]
    db = np.empty(m, dtype) if needs[2] else EMPTY[dtype]
    scratch = workspace("linear", (n * m,), dtype) if needs[1] or needs[2] else EMPTY[dtype]
    kern, tasks = _tasks(_lin.linear_backward, n * m * k // LINEAR_MACS_PER_ELEMENT)
    with _threads.single_blas():
        kern(dY2, Y2, code, X2, W, tasks, dZ, dX, dW, db, scratch)
    return (
        dX.reshape(X.shape) if needs[0] else None,
        dW if needs[1] else None,
        db if needs[2] else None,
    )


# ---------------------------------------------------------------------- sum and mean
def sum_forward(X, axis, keepdims, mean):
    """Sum (or mean) of X over ``axis`` with one sum_forward pass per run of adjacent
    reduced axes. Returns (Y, plan): plan lists each pass's (outer, mid, inner)."""
    ndim = X.ndim
    if axis is None:
        axes = tuple(range(ndim))
    elif isinstance(axis, int):
        axes = (axis % max(ndim, 1),)
    else:
        axes = tuple(sorted(a % max(ndim, 1) for a in axis))
    if keepdims:
        out_shape = tuple(1 if i in axes else s for i, s in enumerate(X.shape))
    else:
        out_shape = tuple(s for i, s in enumerate(X.shape) if i not in axes)
    dims = list(X.shape)
    reduced = [i in axes for i in range(ndim)]
    plan = []
    cur = c(X)
    total = math.prod(X.shape[i] for i in axes) if ndim else 1
    divisor = X.dtype.type(total if mean else 1)
    while True in reduced:
        end = len(reduced) - reduced[::-1].index(True)
        start = end
        while start > 0 and reduced[start - 1]:
            start -= 1
        outer, mid, inner = (
            math.prod(dims[:start]),
            math.prod(dims[start:end]),
            math.prod(dims[end:]),
        )
        plan.append((outer, mid, inner))
        last = True not in reduced[:start]
        out = np.empty((outer, inner), X.dtype)
        pick(_shape.sum_forward, outer * mid * inner)(
            cur.reshape(outer, mid, inner), divisor if last else X.dtype.type(1), out
        )
        cur = out
        del dims[start:end], reduced[start:end]
    if not plan:  # no axis to reduce (a 0-d input): a copy
        cur = X.copy()
    return cur.reshape(out_shape), plan


def sum_backward(dY, x_shape, plan, count):
    """The gradient of sum_forward: dY repeated back over the reduced axes (divided by
    ``count`` for a mean), one sum_backward pass per forward pass, in reverse order."""
    dtype = dY.dtype
    if not plan:
        return c(dY).reshape(x_shape).copy()
    divisor = dtype.type(count)
    cur = c(dY)
    for k, (outer, mid, inner) in enumerate(reversed(plan)):
        out = np.empty((outer, mid, inner), dtype)
        pick(_shape.sum_backward, out.size)(
            cur.reshape(outer, inner), divisor if k == 0 else dtype.type(1), out
        )
        cur = out
    return cur.reshape(x_shape)


# ---------------------------------------------------------------------- getitem
def getitem_backward(dY, shape, index):
    """dX of X[index]: zeros of ``shape`` with dY added where the index read (repeated
    positions add up). One scatter-add kernel for every kind of index: rows for a 1-D
    integer array on the first axis, else the flat positions the index selects (found by
    indexing an array of positions the same way), one element per row."""
    if isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu":
        rows, width = shape[0], math.prod(shape[1:])
        positions = np.ascontiguousarray(index, dtype=np.int64)
    else:
        rows, width = math.prod(shape), 1
        positions = np.arange(rows, dtype=np.int64).reshape(shape)[index].reshape(-1)
    dX = np.empty(shape, dY.dtype)
    _shape.getitem_backward(
        c(dY).reshape(positions.size, width), positions, dX.reshape(rows, width)
    )
    return dX


# ---------------------------------------------------------------------- softmax family, losses
def _around(shape, axis):
    """(outer, n, inner): ``shape`` seen as three axes around ``axis``."""
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def softmax_forward(kern, X, axis):
    """Y = kern over ``axis`` (softmax_forward or log_softmax_forward); returns (Y, the 3-D
    shape the backward reuses)."""
    shape3 = _around(X.shape, axis % X.ndim)
    Y = np.empty(X.shape, X.dtype)
    pick(kern, X.size * HEAVY)(c(X).reshape(shape3), Y.reshape(shape3))
    return Y, shape3


def softmax_backward(kern, dY, Y, shape3):
    dX = np.empty(Y.shape, Y.dtype)
    pick(kern, Y.size)(c(dY).reshape(shape3), Y.reshape(shape3), dX.reshape(shape3))
    return dX


def _mean(total, count, dtype):
    """A loss's 0-d mean from the float64 sum of its terms."""
    return np.array(total / count if count else math.nan, dtype=dtype)


def loss_forward(kern, A, B, cost=HEAVY):
    """The 0-d mean of an elementwise loss ``kern(a, b) -> sum``; A, B flat."""
    return _mean(pick(kern, A.size * cost)(A, B), A.size, A.dtype)


def loss_backward(kern, dY, A, B, shape, needs, scale=1):
    """The two gradients of an elementwise mean loss, ``kern(a, b, g, da, db)`` with
    g = dY * scale / N; A, B flat, gradients reshaped to ``shape`` (None if not needed)."""
    dtype = A.dtype
    g = scalar(dY, dtype) * dtype.type(scale) / dtype.type(max(A.size, 1))
    da = np.empty(A.size, dtype) if needs[0] else EMPTY[dtype]
    db = np.empty(A.size, dtype) if needs[1] else EMPTY[dtype]
    pick(kern, A.size)(A, B, g, da, db)
    return (da.reshape(shape) if needs[0] else None, db.reshape(shape) if needs[1] else None)


def cross_entropy_forward(Z, labels):
    """(loss, E, inv_sum, labels): E = exp(Z - rowmax), inv_sum = 1 / row sums of E."""
    Z = c(Z)
    if labels.dtype != np.int64 or not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    E = np.empty(Z.shape, Z.dtype)
    inv_sum = np.empty(Z.shape[0], Z.dtype)
    total = pick(_sm.cross_entropy_forward, Z.size * HEAVY)(Z, labels, E, inv_sum)
    return _mean(total, Z.shape[0], Z.dtype), E, inv_sum, labels


def cross_entropy_backward(dY, E, inv_sum, labels):
    dtype = E.dtype
    g = scalar(dY, dtype) / dtype.type(max(E.shape[0], 1))
    dZ = np.empty(E.shape, dtype)
    pick(_sm.cross_entropy_backward, E.size)(E, inv_sum, labels, g, dZ)
    return dZ


# ---------------------------------------------------------------------- convolution
#: Bytes of one task's convolution block (its column matrix, product and gradients):
#: sized to stay in a core's level-2 cache, where BLAS runs several times faster on these
#: thin products than on a column matrix of the whole batch.
CONV_BLOCK_BYTES = 512 << 10
#: Bytes of one task's Winograd block (its transformed input and gradient tiles and their
#: products): larger than CONV_BLOCK_BYTES, since the 16 products per block are thin (a
#: reduction over C, or over the block's tiles) and run faster on more tiles; measured
#: on the benchmark convolution, one thread: 12.6 ms backward at 512 KiB, 11.1 at 2 MiB.
WINOGRAD_BLOCK_BYTES = 2 << 20
#: Fewest input and output channels for which a 3x3 stride-1 convolution runs as Winograd
#: F(2x2, 3x3) rather than im2col: below it the 16 products are too thin to pay for the
#: transforms.
WINOGRAD_MIN_CHANNELS = 8


def _conv_geometry(x_shape, w_shape, stride, padding):
    n, ch, h, w = x_shape
    k, _, kh, kw = w_shape
    (sy, sx), (ph, pw) = stride, padding
    return (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1, ch * kh * kw


def _conv_rows(total, ow, per_position, tasks):
    """Output rows per block (of ``total`` rows, images after images): as many as keep
    ``per_position`` bytes per output position within CONV_BLOCK_BYTES, at least one, the
    blocks as even as a multiple of ``tasks`` blocks makes them."""
    rows = max(1, CONV_BLOCK_BYTES // max(per_position * ow, 1))
    blocks = -(-total // rows)
    blocks = -(-blocks // tasks) * tasks
    return max(1, -(-total // blocks))


def _tasks(kern, work):
    """(variant, tasks): the kernel variant for ``work`` elements and its task count."""
    variant = pick(kern, work)
    return variant, (_threads.num_threads if variant is kern.parallel else 1)


def _winograd_fits(x_shape, w_shape, stride, padding):
    """Whether Winograd F(2x2, 3x3) runs this convolution: 3x3, stride 1, and channels
    enough that the 16 products pay for the transforms."""
    c, k = x_shape[1], w_shape[0]
    return (
        tuple(w_shape[2:]) == (3, 3)
        and tuple(stride) == (1, 1)
        and min(c, k) >= WINOGRAD_MIN_CHANNELS
    )


def _winograd_blocks(tasks, th, tw, ch, k, dtype, per_row_extra, extra):
    """(trows, scratch): tile rows per block, as many as keep a block's transformed input
    and products within WINOGRAD_BLOCK_BYTES, and the tasks' scratch (T, 16 (C + K) tb + even
    and odd column rows + per_row_extra * trows + extra), tb = trows * tw."""
    per_row = (16 * (ch + k) * tw + per_row_extra) * dtype.itemsize
    trows = max(1, min(th, WINOGRAD_BLOCK_BYTES // per_row))
    size = (16 * (ch + k) * tw + per_row_extra) * trows + 2 * (2 * trows + 2) * (tw + 1)
    return trows, workspace("conv", (tasks, size + extra), dtype)


def conv2d_winograd(X, W, b, padding):
    """Y (N, K, oh, ow) of a 3x3 stride-1 convolution by Winograd F(2x2, 3x3): the input
    padded (and to an even tile count) once, the weights transformed once, then one
    parallel kernel over blocks of tile rows."""
    n, ch, h, w = X.shape
    k, dtype = W.shape[0], X.dtype
    ph, pw = padding
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    x_padded = padded(X, ph, pw, 0.0, (2 * th + 2, 2 * tw + 2), "winograd_x")
    u = np.empty((16, k, ch), dtype)
    _conv.conv2d_winograd_weights(W, u)
    Y = np.empty((n, k, oh, ow), dtype)
    kern, tasks = _tasks(_conv.conv2d_winograd, Y.size * ch * 4)
    trows, scratch = _winograd_blocks(tasks, th, tw, ch, k, dtype, 4 * tw, 0)
    with _threads.single_blas():
        kern(x_padded, u, EMPTY[dtype] if b is None else b.ravel(), trows, Y, scratch)
    return Y


def conv2d_winograd_backward(dY, X, W, padding, needs):
    """(dX, dW, db) of a 3x3 stride-1 convolution by Winograd F(2x2, 3x3), None where
    ``needs`` is false: one parallel kernel over the tiles, each task a range of whole
    images, computes dX and each task's sums for dW and db; the launcher adds the tasks'
    sums and transforms dW's back (G^T dU G)."""
    n, ch, h, w = X.shape
    k, oh, ow = dY.shape[1:]
    dtype = X.dtype
    th, tw = -(-oh // 2), -(-ow // 2)
    x_padded = X
    if needs[1]:
        x_padded = padded(X, *padding, 0.0, (2 * th + 2, 2 * tw + 2), "winograd_x")
    dy_padded = padded(dY, 0, 0, 0.0, (2 * th, 2 * tw), "winograd_dy")
    kern, tasks = _tasks(_conv.conv2d_winograd_backward, dY.size * ch * 8)
    tasks = min(tasks, n)
    trows, scratch = _winograd_blocks(tasks, th, tw, ch, k, dtype, 6 * tw, k * ch + 6 * (tw + 1))
    du_part = np.empty((tasks, 16, k, ch), dtype) if needs[1] else EMPTY4[dtype]
    db_part = np.empty((tasks, k), dtype) if needs[2] else EMPTY2[dtype]
    dX, planes, ut = EMPTY4[dtype], EMPTY4[dtype], EMPTY3[dtype]
    if needs[0]:
        dX = np.empty(X.shape, dtype)
        planes = workspace("winograd_dx", (tasks, ch, 2 * th + 2, 2 * tw + 2), dtype)
        u = np.empty((16, k, ch), dtype)
        _conv.conv2d_winograd_weights(W, u)
        ut = np.ascontiguousarray(u.transpose(0, 2, 1))
    with _threads.single_blas():
        kern(x_padded, dy_padded, ut, *padding, trows, du_part, db_part, dX, planes, scratch)
    dW = None
    if needs[1]:
        dW = np.empty(W.shape, dtype)
        _conv.conv2d_winograd_weights_backward(du_part.sum(axis=0), dW)
    return (
        dX if needs[0] else None,
        dW,
        db_part.sum(axis=0) if needs[2] else None,
    )


def conv2d_forward(X, W, b, stride, padding):
    """Y (N, K, oh, ow) of the convolution: Winograd where it fits, else one kernel over
    blocks of output rows, each block's columns multiplied by BLAS in the task that built
    them."""
    X, W = c(X), c(W)
    if _winograd_fits(X.shape, W.shape, stride, padding):
        return conv2d_winograd(X, W, b, padding)
    oh, ow, r = _conv_geometry(X.shape, W.shape, stride, padding)
    k, dtype = W.shape[0], X.dtype
    Y = np.empty((X.shape[0], k, oh, ow), dtype)
    kern, tasks = _tasks(_conv.conv2d_forward, Y.size * r)
    rows = _conv_rows(Y.shape[0] * oh, ow, (r + k) * dtype.itemsize, tasks)
    scratch = workspace("conv", (tasks, (r + k) * rows * ow), dtype)
    bias = EMPTY[dtype] if b is None else b.ravel()
    x_padded = padded(X, *padding, 0.0)
    with _threads.single_blas():
        kern(x_padded, W.reshape(k, r), bias, *W.shape[2:], *stride, rows, Y, scratch)
    return Y


def conv2d_backward(dY, X, W, stride, padding, needs):
    """(dX, dW, db) of the convolution, None where ``needs`` is false (needs[2]: a bias
    exists and its gradient is wanted). Winograd where it fits, else one kernel; the
    launcher adds up the per-task weight and bias gradients."""
    X, W, n = c(X), c(W), X.shape[0]
    oh, ow, r = _conv_geometry(X.shape, W.shape, stride, padding)
    k, dtype = W.shape[0], X.dtype
    if _winograd_fits(X.shape, W.shape, stride, padding):
        return conv2d_winograd_backward(c(dY), X, W, padding, needs)
    kern, tasks = _tasks(_conv.conv2d_backward, dY.size * r * 2)
    tasks = min(tasks, n)
    rows = _conv_rows(n * oh, ow, (2 * r + k) * dtype.itemsize, 1)
    dX = np.empty(X.shape, dtype) if needs[0] else EMPTY4[dtype]
    dw_part = np.empty((tasks, k, r), dtype) if needs[1] else EMPTY3[dtype]
    db_part = np.empty((tasks, k), dtype) if needs[2] else EMPTY2[dtype]
    scratch = workspace("conv", (tasks, (2 * r + k) * rows * ow + k * r), dtype)
    x_padded = padded(X, *padding, 0.0) if needs[1] else X
    with _threads.single_blas():
        kern(
            x_padded,
            c(dY),
            W.reshape(k, r),
            *W.shape[2:],
            *stride,
            *padding,
            rows,
            dX,
            dw_part,
            db_part,
            scratch,
        )
    return (
        dX if needs[0] else None,
        dw_part.sum(axis=0).reshape(W.shape) if needs[1] else None,
        db_part.sum(axis=0) if needs[2] else None,
    )


def padded(X, ph, pw, value, size=None, name="xpad"):
    """X (contiguous, N, C, H, W) at offset (ph, pw) of an (N, C, *size) copy in this
    thread's workspace ``name``, every other entry ``value``; size (H + 2 ph, W + 2 pw)
    unless given. X itself when that copy would equal it."""
    n, ch, h, w = X.shape
    size = tuple(size or (h + 2 * ph, w + 2 * pw))
    if size == (h, w) and not (ph or pw):
        return X
    x_padded = workspace(name, (n, ch, *size), X.dtype)
    pick(_pool.max_pool2d_pad, x_padded.size)(X, ph, pw, value, x_padded)
    return x_padded


# ---------------------------------------------------------------------- pooling
def _pool_shape(x_shape, kernel_size, stride, padding):
    n, ch, h, w = x_shape
    (kh, kw), (sy, sx), (ph, pw) = kernel_size, stride, padding
    oh, ow = (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1
    return (n, ch, oh, ow), (kh, kw, sy, sx, ph, pw)


def max_pool2d_forward(X, kernel_size, stride, padding):
    """(Y, arg): the window maxima and where each was (flat index in the plane, or -1)."""
    X = c(X)
    out_shape, (kh, kw, sy, sx, ph, pw) = _pool_shape(X.shape, kernel_size, stride, padding)
    Y = np.empty(out_shape, X.dtype)
    arg = np.empty(out_shape, np.int32)
    if (kh, kw, sy, sx, ph, pw) == (2, 2, 2, 2, 0, 0):
        pick(_pool.max_pool2d_2x2_forward, X.size)(X, Y, arg)
        return Y, arg
    x_padded = padded(X, ph, pw, -math.inf)
    pick(_pool.max_pool2d_forward, X.size)(
        x_padded, kh, kw, sy, sx, ph, pw, X.shape[2], X.shape[3], Y, arg
    )
    return Y, arg


def max_pool2d_backward(dY, x_shape, arg):
    dX = np.empty(x_shape, dY.dtype)
    pick(_pool.max_pool2d_backward, dX.size)(c(dY), arg, dX)
    return dX


def avg_pool2d_forward(X, kernel_size, stride, padding):
    X = c(X)
    out_shape, (kh, kw, sy, sx, ph, pw) = _pool_shape(X.shape, kernel_size, stride, padding)
    Y = np.empty(out_shape, X.dtype)
    pick(_pool.avg_pool2d_forward, X.size)(padded(X, ph, pw, 0.0), kh, kw, sy, sx, Y)
    return Y


def avg_pool2d_backward(dY, x_shape, kernel_size, stride, padding):
    n, ch, h, w = x_shape
    (kh, kw), (sy, sx), (ph, pw) = kernel_size, stride, padding
    dX = np.empty(x_shape, dY.dtype)
    shape = (n, ch, h + 2 * ph, w + 2 * pw)
    dx_padded = dX if not (ph or pw) else workspace("dxpad", shape, dY.dtype)
    pick(_pool.avg_pool2d_backward, dX.size)(c(dY), kh, kw, sy, sx, ph, pw, dx_padded, dX)
    return dX


# ---------------------------------------------------------------------- dropout
def dropout_forward(X, p, seed):
    """(Y, mask): mask holds 0 or 1/(1-p) per element, from the (seed, index) hash."""
    dtype = X.dtype
    scale = dtype.type(0.0 if p >= 1 else 1.0 / (1.0 - p))
    Y = np.empty(X.shape, dtype)
    mask = np.empty(X.shape, dtype)
    pick(_drop.dropout_forward, X.size)(
        X.ravel(), np.uint64(seed), float(p), scale, Y.reshape(-1), mask.reshape(-1)
    )
    return Y, mask


# ---------------------------------------------------------------------- recurrent cells
def rnn_cell_forward(XW, HW):
    """H_new = tanh(XW + HW), HW the recurrent product."""
    # a separate output: written over HW in place, the loop would not vectorise (LLVM
    # sees two arrays that overlap and falls back to its scalar loop)
    H_new = np.empty(HW.shape, HW.dtype)
    pick(_rec.rnn_cell_forward, HW.size * HEAVY)(XW.ravel(), HW.reshape(-1), H_new.reshape(-1))
    return H_new


def lstm_cell_forward(XW, HW, C):
    """(acts, C_new, H_new, tanh_C) of one LSTM step; HW the recurrent product (B, 4*hidden)."""
    C = c(C)
    dtype = HW.dtype
    acts = np.empty(HW.shape, dtype)  # not HW itself: see rnn_cell_forward
    C_new = np.empty(C.shape, dtype)
    H_new = np.empty(C.shape, dtype)
    tanh_C = np.empty(C.shape, dtype)
    pick(_rec.lstm_cell_forward, acts.size * HEAVY)(c(XW), HW, C, acts, C_new, H_new, tanh_C)
    return acts, C_new, H_new, tanh_C


def lstm_cell_backward(dH_new, dC_new, C, acts, tanh_C, need_dc):
    """(dG, dC): the gate gradients (B, 4*hidden) and, with ``need_dc``, the previous cell's."""
    dtype = acts.dtype
    dG = np.empty(acts.shape, dtype)
    dC = np.empty(C.shape, dtype) if need_dc else None
    pick(_rec.lstm_cell_backward, dG.size)(
        c(dH_new), c(dC_new), c(C), acts, tanh_C, dG, EMPTY2[dtype] if dC is None else dC
    )
    return dG, dC


# ---------------------------------------------------------------------- whole-sequence recurrent
# One layer over the whole sequence: the input projection of all T steps as one BLAS
# product; per step the recurrent product into a buffer allocated once per call and one
# fused step kernel (biases folded in); backward per step one fused kernel and one product
# for dh; then dX, dW_ih and dW_hh as one product each over all T*B rows and the bias
# gradient as one column sum. States live in (T+1, B, H) buffers whose row 0 is the
# initial state, so h_{t-1} of every step is one contiguous (T*B, H) block.
#
# Threads: each step's product runs on BLAS's threads and its fused kernel serially (the
# gate arrays of one step are small). Measured on the lstm workload (2 threads, a quiet AMD
# EPYC, OpenBLAS SkylakeX): 22 ms per training step this way against 34 ms with the time
# loop split into one block of batch rows per thread on single-threaded BLAS (no barrier per
# step), which only won while other jobs loaded the machine.


def _sequence_input(X, W_ih, b_ih, b_hh):
    """(X as (T*B, I), the input projection of every step (T, B, G*H) as one product,
    b_ih + b_hh (zeros without biases))."""
    T, B, n_in = X.shape
    X2 = c(X).reshape(T * B, n_in)
    XW = (X2 @ blas(W_ih).T).reshape(T, B, W_ih.shape[0])
    bias = np.zeros(W_ih.shape[0], XW.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias += b
    return X2, XW, bias


def rnn_forward(X, H0, W_ih, W_hh, b_ih, b_hh, code):
    """(X2, Hall): X as (T*B, I) and the states (T+1, B, H), Hall[0] = H0, Hall[t+1] = h_t."""
    X2, XW, bias = _sequence_input(X, W_ih, b_ih, b_hh)
    T, B, hidden = XW.shape
    Hall = np.empty((T + 1, B, hidden), XW.dtype)
    Hall[0] = H0
    Wt = blas(W_hh).T
    kern = _rec.rnn_forward_step.serial

    HW = np.empty((B, hidden), XW.dtype)
    for t in range(T):
        np.matmul(Hall[t], Wt, out=HW)
        kern(XW[t], HW, bias, code, Hall[t + 1])

    return X2, Hall


def rnn_backward(dY, dh_n, W_hh, Hall, code, need_dh0):
    """(dZ, dH0): every step's pre-activation gradient (T, B, H), in this thread's workspace,
    and the initial state's gradient (the last product is skipped without ``need_dh0``)."""
    T, B, hidden = Hall.shape[0] - 1, Hall.shape[1], Hall.shape[2]
    dY = c(dY)
    dZ = workspace("rnn_dz", (T, B, hidden), Hall.dtype)
    dh = np.array(dh_n, dtype=Hall.dtype, order="C")
    W_hh = blas(W_hh)
    kern = _rec.rnn_backward_step.serial

    for t in range(T - 1, -1, -1):
        kern(dY[t], dh, Hall[t + 1], code, dZ[t])
        if t or need_dh0:
            np.matmul(dZ[t], W_hh, out=dh)

    return dZ, dh


def lstm_forward(X, H0, C0, W_ih, W_hh, b_ih, b_hh):
    """(X2, Hall, Call, acts, tanh_c): X as (T*B, I); states (T+1, B, H) with row 0 the
    initial ones; the activated gates (T, B, 4H) and tanh(c_t) (T, B, H) for the backward."""
    X2, acts, bias = _sequence_input(X, W_ih, b_ih, b_hh)  # the gates, once activated
    T, B, hidden = acts.shape[0], acts.shape[1], acts.shape[2] // 4
    dtype = acts.dtype
    Hall = np.empty((T + 1, B, hidden), dtype)
    Call = np.empty((T + 1, B, hidden), dtype)
    Hall[0] = H0
    Call[0] = C0
    tanh_c = np.empty((T, B, hidden), dtype)
    Wt = blas(W_hh).T
    kern = _rec.lstm_forward_step.serial

    HW = np.empty((B, 4 * hidden), dtype)
    for t in range(T):
        np.matmul(Hall[t], Wt, out=HW)
        kern(
            acts[t],
            HW,
            bias,
            Call[t],
            Call[t + 1],
            Hall[t + 1],
            tanh_c[t],
        )

    return X2, Hall, Call, acts, tanh_c


def lstm_backward(dY, dh_n, dc_n, W_hh, Call, acts, tanh_c, need_dh0):
    """(dZ, dH0, dC0): every step's gate gradient (T, B, 4H), in this thread's workspace,
    and the initial states' gradients (the last product is skipped without ``need_dh0``)."""
    T = acts.shape[0]
    dtype = acts.dtype
    dY = c(dY)
    dZ = workspace("lstm_dz", acts.shape, dtype)
    dh = np.array(dh_n, dtype=dtype, order="C")
    dcs = [np.array(dc_n, dtype=dtype, order="C"), np.empty(dh.shape, dtype)]
    W_hh = blas(W_hh)
    kern = _rec.lstm_backward_step.serial

    for t in range(T - 1, -1, -1):  # dc in dcs[(T - 1 - t) % 2], dc_prev in the other
        dc, dc_prev = dcs[(T - 1 - t) % 2], dcs[(T - t) % 2]
        kern(
            dY[t],
            dh,
            dc,
            Call[t],
            acts[t],
            tanh_c[t],
            dZ[t],
            dc_prev,
        )
        if t or need_dh0:
            np.matmul(dZ[t], W_hh, out=dh)

    return dZ, dh, dcs[T % 2]


def gru_forward(X, H0, W_ih, W_hh, b_ih, b_hh):
    """(X2, Hall, acts, hn): X as (T*B, I); the states (T+1, B, H) with row 0 the initial
    one; the gates r, z, n (T, B, 3H) and W_hn h_{t-1} + b_hn (T, B, H) for the backward."""
    X2, acts, _ = _sequence_input(X, W_ih, None, None)  # the gates, once activated
    T, B, hidden = acts.shape[0], acts.shape[1], acts.shape[2] // 3
    dtype = acts.dtype
    zero = np.zeros(3 * hidden, dtype)  # b_hn sits inside r * (...): the biases stay apart
    b_i = zero if b_ih is None else c(b_ih)
    b_h = zero if b_hh is None else c(b_hh)
    Hall = np.empty((T + 1, B, hidden), dtype)
    Hall[0] = H0
    hn = np.empty((T, B, hidden), dtype)
    Wt = blas(W_hh).T
    kern = _rec.gru_forward_step.serial

    HW = np.empty((B, 3 * hidden), dtype)
    for t in range(T):
        np.matmul(Hall[t], Wt, out=HW)
        kern(acts[t], HW, b_i, b_h, Hall[t], Hall[t + 1], hn[t])

    return X2, Hall, acts, hn


def gru_backward(dY, dh_n, W_hh, Hall, acts, hn, need_dh0):
    """(dGi, dGh, dH0): every step's gate gradient on the input side and on the recurrent
    side (T, B, 3H; they differ in the n part, which r scales), in this thread's
    workspaces, and the initial state's gradient (None without ``need_dh0``)."""
    T = acts.shape[0]
    dtype = acts.dtype
    dY = c(dY)
    dGi = workspace("gru_dgi", acts.shape, dtype)
    dGh = workspace("gru_dgh", acts.shape, dtype)
    dh = np.array(dh_n, dtype=dtype, order="C")  # the product dGh_{t+1} @ W_hh
    dhz = [np.zeros(dh.shape, dtype), np.empty(dh.shape, dtype)]  # dh_{t+1} * z_{t+1}
    W_hh = blas(W_hh)
    kern = _rec.gru_backward_step.serial

    for t in range(T - 1, -1, -1):  # dhz in dhz[(T - 1 - t) % 2], the next in the other
        dz_in, dz_out = dhz[(T - 1 - t) % 2], dhz[(T - t) % 2]
        kern(
            dY[t],
            dh,
            dz_in,
            Hall[t],
            acts[t],
            hn[t],
            dGi[t],
            dGh[t],
            dz_out,
        )
        if t or need_dh0:
            np.matmul(dGh[t], W_hh, out=dh)

    return dGi, dGh, (dh + dhz[T % 2] if need_dh0 else None)


def sequence_weight_grads(
    dZ, X2, W_ih, Hall, need_dx, need_w_ih, need_w_hh, need_b_ih, need_b_hh, dZ_hh=None
):
    """(dX, dW_ih, dW_hh, db_ih, db_hh) from every step's pre-activation gradient dZ
    (T, B, G*H), and dZ_hh where the recurrent side's differs (the GRU's): one product each
    over all T*B rows, each bias one column sum; None where not needed."""
    T, B, rows = dZ.shape
    dZ2 = dZ.reshape(T * B, rows)
    dZh2 = dZ2 if dZ_hh is None else dZ_hh.reshape(T * B, rows)
    dX = (dZ2 @ blas(W_ih)).reshape(T, B, X2.shape[1]) if need_dx else None
    dW_ih = dZ2.T @ X2 if need_w_ih else None
    dW_hh = None
    if need_w_hh:
        # (H_prev.T @ dZ).T, not dZ.T @ H_prev: OpenBLAS took 3 ms against 9 ms for the
        # lstm workload's (2240 x 1024).T @ (2240 x 256) on 2 threads
        dW_hh = np.ascontiguousarray((Hall[:T].reshape(T * B, Hall.shape[2]).T @ dZh2).T)
    db_ih = dZ2.sum(axis=0) if need_b_ih else None
    db_hh = None
    if need_b_hh:
        db_hh = db_ih.copy() if need_b_ih and dZ_hh is None else dZh2.sum(axis=0)
    return dX, dW_ih, dW_hh, db_ih, db_hh


# ---------------------------------------------------------------------- optimizer updates
class _inplace:
    """``with _inplace(a) as flat:`` a 1-D view of ``a`` to update in place; a contiguous
    copy for a strided ``a``, written back on exit. None stays None."""

    __slots__ = ("array", "flat")

    def __init__(self, array):
        self.array = array

    def __enter__(self):
        a = self.array
        if a is None:
            self.flat = None
        elif a.flags.c_contiguous:
            self.flat = a.reshape(-1)
        else:
            self.flat = np.ascontiguousarray(a).reshape(-1)
        return self.flat

    def __exit__(self, *exc):
        a = self.array
        if a is not None and not a.flags.c_contiguous:
            a[...] = self.flat.reshape(a.shape)
        return False


def sgd_update(params, grads, bufs, lr, momentum, weight_decay, nesterov):
    """The SGD kernel once per parameter, in place (strided ones through a copy)."""
    scalars = (float(lr), float(momentum), float(weight_decay), bool(nesterov))
    for p, g, buf in zip(params, grads, bufs):
        with _inplace(p) as pf, _inplace(buf) as bf:
            empty = EMPTY[p.dtype] if bf is None else bf
            pick(_opt.sgd_update, pf.size)(pf, _flat(g), empty, *scalars)


def adam_update(params, grads, ms, vs, scalars):
    """The Adam kernel once per parameter, in place; ``scalars`` as the kernel takes them."""
    for p, g, m, v in zip(params, grads, ms, vs):
        with _inplace(p) as pf, _inplace(m) as mf, _inplace(v) as vf:
            pick(_opt.adam_update, pf.size)(pf, _flat(g), mf, vf, *scalars)


def _flat(a):
    """A contiguous 1-D view (or copy) of ``a``."""
    return np.ascontiguousarray(a).reshape(-1)


def clip_grad_norm_update(grads, max_norm, norm_type, error_if_nonfinite):
    """The reduction kernel once per gradient, summed here in float64; the norm and scale
    factor in the gradients' dtype (as the reference); the scaling kernel in place."""
    dtype = grads[0].dtype
    t = dtype.type
    parts = [pick(_opt.clip_grad_norm_reduce, g.size)(_flat(g), float(norm_type)) for g in grads]
    if any(a != a for a in parts):
        total = math.nan
    elif norm_type == math.inf:
        total = max(parts, default=0.0)
    else:
        total = math.fsum(parts) ** (1.0 / norm_type)
    total = np.asarray(total, dtype=dtype)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
            f"{float(total)}, so they cannot be clipped (error_if_nonfinite=True)"
        )
    coef = np.minimum(t(max_norm) / (total + t(1e-6)), t(1)).reshape(1)
    for g in grads:
        with _inplace(g) as gf:
            pick(_opt.clip_grad_norm_scale, gf.size)(gf, coef)
    return total


def clip_grad_value_update(grads, clip_value):
    """The clamping kernel once per gradient, in place."""
    for g in grads:
        with _inplace(g) as gf:
            pick(_opt.clip_grad_value_update, gf.size)(gf, float(clip_value))


# ---------------------------------------------------------------------- normalization, embedding
# (and the activations leaky_relu and gelu)
def activation_forward(kern, X, setting, cost=1):
    """kern(x, setting, out) over X's elements (leaky_relu's slope, gelu's form)."""
    out = np.empty(X.shape, X.dtype)
    pick(kern, X.size * cost)(c(X).reshape(-1), setting, out.reshape(-1))
    return out


def activation_backward(kern, dY, X, setting, cost=1):
    """kern(dy, x, setting, dx): the gradient from dY and the saved input X."""
    dX = np.empty(X.shape, X.dtype)
    pick(kern, X.size * cost)(c(dY).reshape(-1), X.reshape(-1), setting, dX.reshape(-1))
    return dX


def _channels(X):
    """X (N, C, *) as a contiguous (N, C, S) array."""
    return c(X).reshape(X.shape[0], X.shape[1], -1)


def batch_norm_forward(X, weight, bias, mean, var, eps):
    """(Y, X3, mean, var, invstd) of batch norm with per-channel ``mean`` and ``var`` (None
    for the batch statistics, computed here); X3 is the contiguous (N, C, S) input."""
    X3 = _channels(X)
    dtype = X.dtype
    n, ch, s = X3.shape
    if mean is None:
        mean, var = np.empty(ch, dtype), np.empty(ch, dtype)
        pick(_norm.batch_norm_stats, X3.size)(X3, mean, var)
    else:
        mean, var = c(mean), c(var)
    Y = np.empty(X.shape, dtype)
    invstd = np.empty(ch, dtype)
    empty = EMPTY[dtype]
    pick(_norm.batch_norm_forward, X3.size)(
        X3,
        mean,
        var,
        empty if weight is None else c(weight),
        empty if bias is None else c(bias),
        float(eps),
        Y.reshape(n, ch, s),
        invstd,
    )
    return Y, X3, mean, var, invstd


def batch_norm_running(mean, var, factor, count, running_mean, running_var):
    """Update the running statistics in place from the batch's (through a contiguous copy
    where they are strided)."""
    with _inplace(running_mean) as rm, _inplace(running_var) as rv:
        _norm.batch_norm_running(mean, var, float(factor), count / (count - 1), rm, rv)


def batch_norm_backward(dY, X3, mean, invstd, weight, training, needs):
    """(dX, dweight, dbias, dmean, dvar), None where ``needs`` is false."""
    dtype = X3.dtype
    ch = X3.shape[1]
    dX = np.empty(X3.shape, dtype) if needs[0] else None
    outs = [np.empty(ch, dtype) if need else None for need in needs[1:5]]
    empty = EMPTY[dtype]
    pick(_norm.batch_norm_backward, X3.size)(
        c(dY).reshape(X3.shape),
        X3,
        mean,
        invstd,
        empty if weight is None else c(weight),
        bool(training),
        np.empty((0, 0, 0), dtype) if dX is None else dX,
        *[empty if o is None else o for o in outs],
    )
    return (None if dX is None else dX.reshape(dY.shape), *outs)


def layer_norm_forward(X, weight, bias, d, eps):
    """(Y, X2, mean, invstd): X seen as (M, d) rows, each normalised."""
    X2 = c(X).reshape(-1, d)
    dtype = X.dtype
    rows = X2.shape[0]
    Y = np.empty(X.shape, dtype)
    mean, invstd = np.empty(rows, dtype), np.empty(rows, dtype)
    empty = EMPTY[dtype]
    pick(_norm.layer_norm_forward, X2.size)(
        X2,
        empty if weight is None else c(weight).reshape(-1),
        empty if bias is None else c(bias).reshape(-1),
        float(eps),
        Y.reshape(rows, d),
        mean,
        invstd,
    )
    return Y, X2, mean, invstd


def layer_norm_backward(dY, X2, mean, invstd, weight, needs):
    """(dX, dweight, dbias): dX shaped as dY, the others flat (d,); None where ``needs``
    is false."""
    dtype = X2.dtype
    d = X2.shape[1]
    dY2 = c(dY).reshape(X2.shape)
    empty = EMPTY[dtype]
    w = empty if weight is None else c(weight).reshape(-1)
    dX = dW = dB = None
    if needs[0]:
        dX = np.empty(X2.shape, dtype)
        pick(_norm.layer_norm_backward, X2.size)(dY2, X2, mean, invstd, w, dX)
        dX = dX.reshape(dY.shape)
    if needs[1] or needs[2]:
        dW = np.empty(d, dtype) if needs[1] else None
        dB = np.empty(d, dtype) if needs[2] else None
        pick(_norm.layer_norm_affine_grad, X2.size)(
            dY2, X2, mean, invstd, empty if dW is None else dW, empty if dB is None else dB
        )
    return dX, dW, dB


def embedding_forward(indices, weight):
    """(Y, flat indices): Y (*indices.shape, E) the rows of ``weight`` the indices pick."""
    idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
    weight = c(weight)
    Y = np.empty(indices.shape + (weight.shape[1],), weight.dtype)
    pick(_emb.embedding_forward, Y.size)(idx, weight, Y.reshape(idx.size, weight.shape[1]))
    return Y, idx


def embedding_backward(dY, idx, shape, padding_idx):
    """dweight (V, E): positions sorted by index (stable), then one reduction per row."""
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(shape[0] + 1), side="left")
    dW = np.empty(shape, dY.dtype)
    pick(_emb.embedding_backward, dY.size)(
        c(dY).reshape(idx.size, shape[1]),
        order.astype(np.int64, copy=False),
        bounds.astype(np.int64, copy=False),
        -1 if padding_idx is None else int(padding_idx),
        dW,
    )
    return dW
