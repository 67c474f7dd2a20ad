"""The Numba CPU backend: every op of the contract on gpunn's own kernels.

Arrays are NumPy ndarrays. Each op makes its inputs contiguous, allocates its outputs and
hands both to a kernel from ``gpunn.kernels.cpu`` (one module per op family); matrix
products go to BLAS through NumPy's ``@``. Kernels that loop over many elements come in a
serial and a parallel variant; an op picks the parallel one from ``PARALLEL_MIN_SIZE``
elements up, where spreading the loop over threads beats the cost of waking them.

Compilation: kernels compile on first use and are cached on disk (``GPUNN_CACHE_DIR``,
else Numba's default folder; see ``gpunn.kernels.cpu._jit``). :func:`warmup` compiles all
of them ahead of time for float32 and float64. Threads: ``gpunn.set_num_threads(n)`` /
``GPUNN_NUM_THREADS`` set Numba's thread count (clamped to the threads Numba launched)
and, when threadpoolctl is installed, BLAS's.

Which ops fall back to the NumPy reference, and why, is data: :data:`REFERENCE_OPS`.
"""

from __future__ import annotations

import math
import os
import threading
from numbers import Number

import numpy as np

# _jit first: it sets the cache folder and the threading layer before any kernel compiles
from gpunn.kernels.cpu import _jit  # isort: skip
import numba  # noqa: E402

from gpunn import threads as _threads  # noqa: E402
from gpunn.backends.base import Backend, _is_basic_index  # noqa: E402
from gpunn.kernels.cpu import activations as _act  # noqa: E402
from gpunn.kernels.cpu import conv as _conv  # noqa: E402
from gpunn.kernels.cpu import dropout as _drop  # noqa: E402
from gpunn.kernels.cpu import elementwise as _ew  # noqa: E402
from gpunn.kernels.cpu import linear as _lin  # noqa: E402
from gpunn.kernels.cpu import optim as _opt  # noqa: E402
from gpunn.kernels.cpu import pooling as _pool  # noqa: E402
from gpunn.kernels.cpu import recurrent as _rec  # noqa: E402
from gpunn.kernels.cpu import shape as _shape  # noqa: E402
from gpunn.kernels.cpu import softmax as _sm  # noqa: E402

#: Ops that call the NumPy reference, each with the reason. Every other op is native.
REFERENCE_OPS = {
    "getitem_backward": (
        "advanced indexes other than one integer array on the first axis (boolean masks, "
        "several index arrays) scatter with the reference's np.add.at; basic indexes and "
        "x[int_array] use the backend's own code"
    ),
}

#: Work (elements, times _HEAVY for kernels that evaluate exp/log/tanh per element) from
#: which an op runs the parallel variant of its kernel, when Numba has a thread-safe
#: threading layer and more than one thread; GPUNN_NUMBA_PARALLEL_MIN sets it. Each
#: parallel loop ends in a barrier, and barriers alternating with BLAS's own threads
#: cost dearly on a busy machine: only loops with plenty of work are split.
PARALLEL_MIN_SIZE = int(os.environ.get("GPUNN_NUMBA_PARALLEL_MIN", 1 << 18))
_HEAVY = 4

_ACTIVATIONS = _lin.ACTIVATION_CODES
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_EMPTY = {_F32: np.empty(0, _F32), _F64: np.empty(0, _F64)}
_EMPTY2 = {_F32: np.empty((0, 0), _F32), _F64: np.empty((0, 0), _F64)}


# ---------------------------------------------------------------------- threads
_par_min = math.inf  # set by _apply_threads
_numba_threads = 1
_generation = 0
_local = threading.local()  # per Python thread: applied generation, workspaces


def _apply_threads(n: int, blas: bool = True) -> None:
    """The on_change hook of gpunn.threads: Numba's thread count (clamped to the threads
    Numba launched) and, with ``blas``, BLAS's (through threadpoolctl when installed)."""
    global _numba_threads, _generation, _par_min
    _numba_threads = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_numba_threads)
    _generation += 1
    _local.generation = _generation
    _par_min = PARALLEL_MIN_SIZE if _jit.PARALLEL and _numba_threads > 1 else math.inf
    if blas:
        _set_blas_threads(int(n))


def _set_blas_threads(n: int) -> None:
    try:
        import threadpoolctl
    except ImportError:
        return
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")


def _sync_threads() -> None:
    """Numba's thread count is per Python thread: apply gpunn's in this thread once."""
    if getattr(_local, "generation", -1) != _generation:
        numba.set_num_threads(_numba_threads)
        _local.generation = _generation


def _pick(kern, n):
    """The serial or the parallel variant of ``kern`` for an op on ``n`` elements."""
    if n >= _par_min:
        _sync_threads()
        return kern.parallel
    return kern.serial


def _workspace(name, shape, dtype):
    """A scratch array of ``shape`` reused by this Python thread (contents undefined)."""
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    size = math.prod(shape)
    key = (name, dtype)
    buf = spaces.get(key)
    if buf is None or buf.size < size:
        buf = spaces[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def clear_workspaces() -> None:
    """Free this thread's scratch arrays (convolution buffers)."""
    _local.spaces = {}


# ---------------------------------------------------------------------- array helpers
def _flat(X):
    """X as a 1-D C-contiguous array (a view when X is contiguous)."""
    return X.ravel()


def _c(X):
    return X if X.flags.c_contiguous else np.ascontiguousarray(X)


def _blas(X):
    """X as an operand BLAS takes without NumPy's slow fallback loop."""
    flags = X.flags
    return X if flags.c_contiguous or flags.f_contiguous else np.ascontiguousarray(X)


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


def _binary(kern, A, B):
    """kern(a, b, out) with A, B arrays or Python scalars, broadcast as NumPy does."""
    shape, size, dtype = _broadcast(A, B)
    out = np.empty(shape, dtype)
    _pick(kern, size)(
        _operand(A, shape, size, dtype), _operand(B, shape, size, dtype), out.reshape(size)
    )
    return out


def _unary(kern, X, cost=1):
    out = np.empty(X.shape, X.dtype)
    _pick(kern, X.size * cost)(X.ravel(), out.reshape(-1))
    return out


def _shape_of(X):
    return X.shape if isinstance(X, np.ndarray) else ()


def _scalar(X, dtype):
    """A Python number or a size-1 array as a scalar of ``dtype``."""
    return dtype.type(X if isinstance(X, Number) else X.reshape(-1)[0])


class NumbaBackend(Backend):
    """CPU backend on Numba kernels (``prange``-parallel) and BLAS matrix products."""

    name = "numba"
    xp = np

    def __init__(self):
        # BLAS keeps its own default unless a thread count was asked for
        explicit = "GPUNN_NUM_THREADS" in os.environ or _threads._num_threads is not None
        _apply_threads(_threads.get_num_threads(), blas=explicit)

    # ------------------------------------------------------------------ elementwise
    def add_forward(self, A, B):
        return _binary(_ew.add_forward, A, B), (_shape_of(A), _shape_of(B))

    def add_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(dY, b_shape) if needs[1] else None,
        )

    def sub_forward(self, A, B):
        return _binary(_ew.sub_forward, A, B), (_shape_of(A), _shape_of(B))

    def sub_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        dB = None
        if needs[1]:
            dB = _unary(_ew.neg_forward, self.unbroadcast(dY, b_shape))
        return (self.unbroadcast(dY, a_shape) if needs[0] else None, dB)

    def mul_forward(self, A, B):
        return _binary(_ew.mul_forward, A, B), (A, B)

    def mul_backward(self, dY, saved, needs):
        A, B = saved
        return (
            self.unbroadcast(_binary(_ew.mul_forward, dY, B), _shape_of(A)) if needs[0] else None,
            self.unbroadcast(_binary(_ew.mul_forward, dY, A), _shape_of(B)) if needs[1] else None,
        )

    def div_forward(self, A, B):
        Y = _binary(_ew.div_forward, A, B)
        return Y, (A, B, Y)

    def div_backward(self, dY, saved, needs):
        A, B, Y = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(_binary(_ew.div_forward, dY, B), _shape_of(A))
        if needs[1]:
            shape, size = Y.shape, Y.size
            db = np.empty(shape, Y.dtype)
            _pick(_ew.div_backward, size)(
                _flat(dY), Y.ravel(), _operand(B, shape, size, Y.dtype), db.reshape(size)
            )
            dB = self.unbroadcast(db, B.shape)
        return dA, dB

    def pow_forward(self, A, B):
        Y = _binary(_ew.pow_forward, A, B)
        return Y, (A, B, Y)

    def pow_backward(self, dY, saved, needs):
        A, B, Y = saved
        shape, size, dtype = Y.shape, Y.size, Y.dtype
        da = np.empty(shape, dtype) if needs[0] else None
        db = np.empty(shape, dtype) if needs[1] else None
        _pick(_ew.pow_backward, size)(
            _flat(dY),
            _operand(A, shape, size, dtype),
            _operand(B, shape, size, dtype),
            Y.ravel(),
            _EMPTY[dtype] if da is None else da.reshape(size),
            _EMPTY[dtype] if db is None else db.reshape(size),
        )
        return (
            None if da is None else self.unbroadcast(da, A.shape),
            None if db is None else self.unbroadcast(db, B.shape),
        )

    def neg_forward(self, X):
        return _unary(_ew.neg_forward, X), None

    def neg_backward(self, dY, saved, needs):
        return (_unary(_ew.neg_forward, dY),)

    def exp_forward(self, X):
        Y = _unary(_ew.exp_forward, X, _HEAVY)
        return Y, Y

    def exp_backward(self, dY, saved, needs):
        return (_binary(_ew.mul_forward, dY, saved),)

    def log_forward(self, X):
        return _unary(_ew.log_forward, X, _HEAVY), X

    def log_backward(self, dY, saved, needs):
        return (_binary(_ew.div_forward, dY, saved),)

    def cast_forward(self, X, dtype):
        out = np.empty(X.shape, dtype)
        _pick(_ew.cast_forward, X.size)(X.ravel(), out.reshape(-1))
        return out, X.dtype

    def cast_backward(self, dY, saved, needs):
        out = np.empty(dY.shape, saved)
        _pick(_ew.cast_forward, dY.size)(dY.ravel(), out.reshape(-1))
        return (out,)

    def unbroadcast(self, G, shape):
        """Sum G over broadcast axes (NumPy's reduction); G itself when shapes match."""
        if G.shape == tuple(shape):
            return G
        return super().unbroadcast(G, shape)

    # ------------------------------------------------------------------ activations
    def sigmoid_forward(self, X):
        Y = _unary(_act.sigmoid_forward, X, _HEAVY)
        return Y, Y

    def sigmoid_backward(self, dY, saved, needs):
        dX = np.empty(saved.shape, saved.dtype)
        _pick(_act.sigmoid_backward, dX.size)(_flat(dY), saved.ravel(), dX.reshape(-1))
        return (dX,)

    def tanh_forward(self, X):
        Y = _unary(_act.tanh_forward, X, _HEAVY)
        return Y, Y

    def tanh_backward(self, dY, saved, needs):
        dX = np.empty(saved.shape, saved.dtype)
        _pick(_act.tanh_backward, dX.size)(_flat(dY), saved.ravel(), dX.reshape(-1))
        return (dX,)

    def relu_forward(self, X):
        Y = _unary(_act.relu_forward, X)
        return Y, Y

    def relu_backward(self, dY, saved, needs):
        dX = np.empty(saved.shape, saved.dtype)
        _pick(_act.relu_backward, dX.size)(_flat(dY), saved.ravel(), dX.reshape(-1))
        return (dX,)

    def step_forward(self, X):
        return _unary(_act.step_forward, X), X.shape

    def step_backward(self, dY, saved, needs):
        dX = np.empty(saved, dY.dtype)
        _act.step_backward(dX.reshape(-1))
        return (dX,)

    # ------------------------------------------------------------------ matrix products
    def matmul_forward(self, A, B):
        return _blas(A) @ _blas(B), (A, B)

    def matmul_backward(self, dY, saved, needs):
        A, B = saved
        dY = _blas(dY)
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(dY @ _blas(B).swapaxes(-1, -2), A.shape)
        if needs[1]:
            dB = self.unbroadcast(_blas(A).swapaxes(-1, -2) @ dY, B.shape)
        return dA, dB

    def linear_forward(self, X, W, b, activation=None):
        X, W = _blas(X), _blas(W)
        Z = X @ W.T  # BLAS; a new C-contiguous (N, out) array
        code = _ACTIVATIONS[activation]
        if code or b is not None:
            bias = _EMPTY[Z.dtype] if b is None else b.ravel()
            _pick(_lin.linear_forward, Z.size * (_HEAVY if code > 1 else 1))(Z, bias, code)
        return Z, (X, W, Z, code, b is not None)

    def linear_backward(self, dY, saved, needs):
        X, W, Y, code, has_bias = saved
        dY = _c(dY)
        dZ = np.empty(Y.shape, Y.dtype) if code else dY
        db = np.empty(Y.shape[1], Y.dtype) if has_bias and needs[2] else None
        if code or db is not None:
            kern = _pick(_lin.linear_backward, dY.size)
            chunks = 4 * _numba_threads if kern is _lin.linear_backward.parallel else 1
            kern(dY, Y, code, dZ, _EMPTY[Y.dtype] if db is None else db, chunks)
        dX = dZ @ W if needs[0] else None
        dW = dZ.T @ X if needs[1] else None
        return dX, dW, db

    # ------------------------------------------------------------------ reductions and shapes
    def sum_forward(self, X, axis=None, keepdims=False):
        Y, plan = _reduce(X, axis, keepdims, mean=False)
        return Y, (X.shape, plan, 1)  # divisor 1

    def sum_backward(self, dY, saved, needs):
        return (_expand(dY, *saved),)

    def mean_forward(self, X, axis=None, keepdims=False):
        Y, plan = _reduce(X, axis, keepdims, mean=True)
        count = X.size // max(Y.size, 1) if X.size else 0
        return Y, (X.shape, plan, count)

    def mean_backward(self, dY, saved, needs):
        return (_expand(dY, *saved),)

    def reshape_forward(self, X, shape):
        return X.reshape(shape), X.shape

    def reshape_backward(self, dY, saved, needs):
        return (dY.reshape(saved),)

    def transpose_forward(self, X, axes):
        inverse = tuple(int(a) for a in np.argsort(axes)) if axes is not None else None
        return X.transpose(axes), inverse

    def transpose_backward(self, dY, saved, needs):
        return (dY.transpose(saved),)

    def unstack_forward(self, X, axis=0):
        lead = (slice(None),) * axis
        return tuple(X[lead + (k,)] for k in range(X.shape[axis])), axis

    def unstack_backward(self, dY, saved, needs):
        return (np.stack(dY, axis=saved),)

    def stack_forward(self, *Xs, axis=0):
        return np.stack(Xs, axis=axis), (len(Xs), axis)

    def stack_backward(self, dY, saved, needs):
        n, axis = saved
        lead = (slice(None),) * axis
        return tuple(dY[lead + (k,)] if needs[k] else None for k in range(n))

    def getitem_forward(self, X, index):
        return X[index], (X.shape, index)

    def getitem_backward(self, dY, saved, needs):
        shape, index = saved
        if _is_basic_index(index):
            dX = np.zeros(shape, dY.dtype)
            dX[index] = dY
            return (dX,)
        if isinstance(index, np.ndarray) and index.ndim == 1 and index.dtype.kind in "iu":
            rows, width = shape[0], math.prod(shape[1:])
            dX = np.empty(shape, dY.dtype)
            _shape.getitem_backward(
                _c(dY).reshape(index.size, width),
                np.ascontiguousarray(index, dtype=np.int64),
                dX.reshape(rows, width),
            )
            return (dX,)
        return super().getitem_backward(dY, saved, needs)  # REFERENCE_OPS

    # ------------------------------------------------------------------ softmax family
    def softmax_forward(self, X, axis=-1):
        return self._softmax(X, axis, False)

    def softmax_backward(self, dY, saved, needs):
        return (self._softmax_grad(dY, saved, False),)

    def log_softmax_forward(self, X, axis=-1):
        return self._softmax(X, axis, True)

    def log_softmax_backward(self, dY, saved, needs):
        return (self._softmax_grad(dY, saved, True),)

    def _softmax(self, X, axis, log):
        axis %= X.ndim
        shape3 = _around(X.shape, axis)
        Y = np.empty(X.shape, X.dtype)
        _pick(_sm.softmax_forward, X.size * _HEAVY)(_c(X).reshape(shape3), Y.reshape(shape3), log)
        return Y, (Y, shape3)

    def _softmax_grad(self, dY, saved, log):
        Y, shape3 = saved
        dX = np.empty(Y.shape, Y.dtype)
        _pick(_sm.softmax_backward, Y.size)(
            _c(dY).reshape(shape3), Y.reshape(shape3), dX.reshape(shape3), log
        )
        return dX

    # ------------------------------------------------------------------ losses (0-d means)
    def mse_forward(self, P, T):
        shape = P.shape
        P, T = P.ravel(), T.ravel()
        total = _pick(_sm.mse_forward, P.size)(P, T)
        return _mean(total, P.size, P.dtype), (P, T, shape)

    def mse_backward(self, dY, saved, needs):
        P, T, shape = saved
        dtype = P.dtype
        # reference: dP = dY * 2 * D / N, dT = -dP
        g = _scalar(dY, dtype) * dtype.type(2) / dtype.type(max(P.size, 1))
        dP = np.empty(P.size, dtype) if needs[0] else _EMPTY[dtype]
        dT = np.empty(P.size, dtype) if needs[1] else _EMPTY[dtype]
        _pick(_sm.mse_backward, P.size)(P, T, g, dP, dT)
        return (
            dP.reshape(shape) if needs[0] else None,
            dT.reshape(shape) if needs[1] else None,
        )

    def binary_cross_entropy_forward(self, P, T):
        shape = P.shape
        P, T = P.ravel(), T.ravel()
        total = _pick(_sm.binary_cross_entropy_forward, P.size * _HEAVY)(P, T)
        return _mean(total, P.size, P.dtype), (P, T, shape)

    def binary_cross_entropy_backward(self, dY, saved, needs):
        P, T, shape = saved
        return _loss_grads(_sm.binary_cross_entropy_backward, dY, P, T, shape, needs)

    def binary_cross_entropy_with_logits_forward(self, Z, T):
        shape = Z.shape
        Z, T = Z.ravel(), T.ravel()
        total = _pick(_sm.binary_cross_entropy_with_logits_forward, Z.size * _HEAVY)(Z, T)
        return _mean(total, Z.size, Z.dtype), (Z, T, shape)

    def binary_cross_entropy_with_logits_backward(self, dY, saved, needs):
        Z, T, shape = saved
        return _loss_grads(_sm.binary_cross_entropy_with_logits_backward, dY, Z, T, shape, needs)

    def cross_entropy_forward(self, Z, labels):
        Z = _c(Z)
        if labels.dtype != np.int64 or not labels.flags.c_contiguous:
            labels = np.ascontiguousarray(labels, dtype=np.int64)
        E = np.empty(Z.shape, Z.dtype)
        inv_sum = np.empty(Z.shape[0], Z.dtype)
        total = _pick(_sm.cross_entropy_forward, Z.size * _HEAVY)(Z, labels, E, inv_sum)
        return _mean(total, Z.shape[0], Z.dtype), (E, inv_sum, labels)

    def cross_entropy_backward(self, dY, saved, needs):
        E, inv_sum, labels = saved
        dtype = E.dtype
        g = _scalar(dY, dtype) / dtype.type(max(E.shape[0], 1))
        dZ = np.empty(E.shape, dtype)
        _pick(_sm.cross_entropy_backward, E.size)(E, inv_sum, labels, g, dZ)
        return (dZ, None)

    # ------------------------------------------------------------------ convolution and pooling
    def conv2d_forward(self, X, W, b, stride=(1, 1), padding=(0, 0)):
        X, W = _c(X), _c(W)
        n, c, h, w = X.shape
        k, _, kh, kw = W.shape
        (sy, sx), (ph, pw) = stride, padding
        oh, ow = (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1
        dtype = X.dtype
        bias = _EMPTY[dtype] if b is None else b.ravel()
        Y = np.empty((n, k, oh, ow), dtype)
        xp = _padded(X, ph, pw, 0.0, keep=True)  # kept for the backward's im2col
        if _conv_direct(c, k, kh * kw):
            _pick(_conv.conv2d_direct_forward, Y.size * c)(xp, W, bias, sy, sx, Y)
        else:
            r, p = c * kh * kw, oh * ow
            W2, Y3 = W.reshape(k, r), Y.reshape(n, k, p)
            for n0, n1 in _chunks(n, r * p * dtype.itemsize):
                cols = _workspace("cols", (r, (n1 - n0) * p), dtype)
                _pick(_conv.conv2d_im2col, cols.size)(xp[n0:n1], kh, kw, sy, sx, oh, ow, cols)
                yt = _workspace("yt", (k, (n1 - n0) * p), dtype)
                np.matmul(W2, cols, out=yt)
                _pick(_conv.conv2d_forward, yt.size)(yt, bias, Y3[n0:n1])
        return Y, (xp, X.shape, W, stride, padding, b is not None, (oh, ow))

    def conv2d_backward(self, dY, saved, needs):
        xp, x_shape, W, (sy, sx), (ph, pw), has_bias, (oh, ow) = saved
        n, c, h, w = x_shape
        k, _, kh, kw = W.shape
        r, p, dtype = c * kh * kw, oh * ow, xp.dtype
        W2, dY3 = W.reshape(k, r), _c(dY).reshape(n, k, p)
        db = np.zeros(k, dtype) if has_bias and needs[2] else None
        dWt = np.zeros((r, k), dtype) if needs[1] else None  # dW transposed: (C*kh*kw, K)
        dX = np.empty(x_shape, dtype) if needs[0] else None
        Wt = np.ascontiguousarray(W2.T) if dX is not None else None  # faster BLAS operand
        for n0, n1 in _chunks(n, r * p * dtype.itemsize):
            cp = (n1 - n0) * p
            dyt = _workspace("dyt", (k, cp), dtype)
            _pick(_conv.conv2d_backward, dyt.size)(
                dY3[n0:n1], dyt, _EMPTY[dtype] if db is None else db
            )
            if dWt is not None:
                cols = _workspace("cols", (r, cp), dtype)
                _pick(_conv.conv2d_im2col, cols.size)(xp[n0:n1], kh, kw, sy, sx, oh, ow, cols)
                dWt += cols @ dyt.T  # this orientation: OpenBLAS is slow on dyt @ cols.T
            if dX is not None:
                dcols = _workspace("dcols", (r, cp), dtype)
                np.matmul(Wt, dyt, out=dcols)
                dx = dX[n0:n1]
                dxp = (
                    dx
                    if not (ph or pw)
                    else _workspace("dxpad", (n1 - n0, c, h + 2 * ph, w + 2 * pw), dtype)
                )
                _pick(_conv.conv2d_col2im, dcols.size)(
                    dcols, kh, kw, sy, sx, ph, pw, oh, ow, dxp, dx
                )
        dW = None if dWt is None else np.ascontiguousarray(dWt.T).reshape(W.shape)
        return dX, dW, db

    def max_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        X = _c(X)
        n, c, oh, ow, (kh, kw, sy, sx, ph, pw) = _pool_shape(X.shape, kernel_size, stride, padding)
        Y = np.empty((n, c, oh, ow), X.dtype)
        arg = np.empty((n, c, oh, ow), np.int32)
        xp = _padded(X, ph, pw, -math.inf)
        _pick(_pool.max_pool2d_forward, X.size)(
            xp, kh, kw, sy, sx, ph, pw, X.shape[2], X.shape[3], Y, arg
        )
        return Y, (X.shape, arg)

    def max_pool2d_backward(self, dY, saved, needs):
        x_shape, arg = saved
        dX = np.empty(x_shape, dY.dtype)
        _pick(_pool.max_pool2d_backward, dX.size)(_c(dY), arg, dX)
        return (dX,)

    def avg_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        X = _c(X)
        n, c, oh, ow, args = _pool_shape(X.shape, kernel_size, stride, padding)
        kh, kw, sy, sx, ph, pw = args
        Y = np.empty((n, c, oh, ow), X.dtype)
        _pick(_pool.avg_pool2d_forward, X.size)(_padded(X, ph, pw, 0.0), kh, kw, sy, sx, Y)
        return Y, (X.shape, args)

    def avg_pool2d_backward(self, dY, saved, needs):
        x_shape, (kh, kw, sy, sx, ph, pw) = saved
        n, c, h, w = x_shape
        dX = np.empty(x_shape, dY.dtype)
        dxp = (
            dX if not (ph or pw) else _workspace("dxpad", (n, c, h + 2 * ph, w + 2 * pw), dY.dtype)
        )
        _pick(_pool.avg_pool2d_backward, dX.size)(_c(dY), kh, kw, sy, sx, ph, pw, dxp, dX)
        return (dX,)

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, X, p, seed):
        dtype = X.dtype
        scale = dtype.type(0.0 if p >= 1 else 1.0 / (1.0 - p))
        Y = np.empty(X.shape, dtype)
        mask = np.empty(X.shape, dtype)
        _pick(_drop.dropout_forward, X.size)(
            X.ravel(), np.uint64(seed), float(p), scale, Y.reshape(-1), mask.reshape(-1)
        )
        return Y, mask

    def dropout_backward(self, dY, saved, needs):
        dX = np.empty(saved.shape, saved.dtype)
        _pick(_drop.dropout_backward, dX.size)(_flat(dY), saved.reshape(-1), dX.reshape(-1))
        return (dX,)

    # ------------------------------------------------------------------ recurrent cells
    def rnn_cell_forward(self, XW, H, W_hh):
        H, W_hh = _blas(H), _blas(W_hh)
        HW = H @ W_hh.T
        # a separate output: written over HW in place, the loop would not vectorise (LLVM
        # sees two arrays that overlap and falls back to its scalar loop)
        H_new = np.empty(HW.shape, HW.dtype)
        _pick(_rec.rnn_cell_forward, HW.size * _HEAVY)(
            XW.ravel(), HW.reshape(-1), H_new.reshape(-1)
        )
        return H_new, (H, W_hh, H_new)

    def rnn_cell_backward(self, dY, saved, needs):
        H, W_hh, H_new = saved
        dZ = np.empty(H_new.shape, H_new.dtype)
        _pick(_rec.rnn_cell_backward, dZ.size)(_flat(dY), H_new.reshape(-1), dZ.reshape(-1))
        dH = dZ @ W_hh if needs[1] else None
        dW = dZ.T @ H if needs[2] else None
        return dZ, dH, dW

    def lstm_cell_forward(self, XW, H, C, W_hh):
        H, W_hh, C = _blas(H), _blas(W_hh), _c(C)
        HW = H @ W_hh.T  # the recurrent product, (B, 4*hidden)
        dtype = HW.dtype
        acts = np.empty(HW.shape, dtype)  # not HW itself: see rnn_cell_forward
        C_new = np.empty(C.shape, dtype)
        H_new = np.empty(C.shape, dtype)
        tanh_C = np.empty(C.shape, dtype)
        _pick(_rec.lstm_cell_forward, acts.size * _HEAVY)(_c(XW), HW, C, acts, C_new, H_new, tanh_C)
        return (H_new, C_new), (H, C, W_hh, acts, tanh_C)

    def lstm_cell_backward(self, dY, saved, needs):
        dH_new, dC_new = dY
        H, C, W_hh, acts, tanh_C = saved
        dtype = acts.dtype
        dG = np.empty(acts.shape, dtype)
        dC = np.empty(C.shape, dtype) if needs[2] else None
        _pick(_rec.lstm_cell_backward, dG.size)(
            _c(dH_new), _c(dC_new), C, acts, tanh_C, dG, _EMPTY2[dtype] if dC is None else dC
        )
        dH = dG @ W_hh if needs[1] else None
        dW = dG.T @ H if needs[3] else None
        return dG, dH, dC, dW

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params, grads, bufs, lr, momentum, weight_decay):
        lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
        for p, g, buf in zip(params, grads, bufs):
            if p.flags.c_contiguous and (buf is None or buf.flags.c_contiguous):
                _pick(_opt.sgd_update, p.size)(
                    p.reshape(-1),
                    g.ravel(),
                    _EMPTY[p.dtype] if buf is None else buf.reshape(-1),
                    lr,
                    momentum,
                    weight_decay,
                )
                continue
            with _inplace(p) as pf, _inplace(buf) as bf:
                _pick(_opt.sgd_update, pf.size)(
                    pf, g.ravel(), _EMPTY[p.dtype] if bf is None else bf, lr, momentum, weight_decay
                )

    def adam_update(self, params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay):
        beta1, beta2 = float(beta1), float(beta2)
        scalars = (
            beta1,
            1 - beta1,
            beta2,
            1 - beta2,
            lr / (1 - beta1**step),
            (1 - beta2**step) ** 0.5,
            float(eps),
            float(weight_decay),
        )
        for p, g, m, v in zip(params, grads, ms, vs):
            with _inplace(p) as pf, _inplace(m) as mf, _inplace(v) as vf:
                _pick(_opt.adam_update, pf.size)(pf, g.ravel(), mf, vf, *scalars)

    # ------------------------------------------------------------------ whole-sequence recurrent
    # One layer over the whole sequence: the input projection of all T steps as one BLAS
    # product; per step the recurrent product into a buffer allocated once per call and one
    # fused step kernel (biases folded in); backward per step one fused kernel and one
    # product for dh; then dX, dW_ih, dW_hh and the bias gradient each as one product or
    # reduction over all T*B rows. States live in (T+1, B, H) buffers whose row 0 is the
    # initial state, so h_{t-1} of every step is one contiguous (T*B, H) block.

    def rnn_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh"):
        X2, XW, bias, W_hh = _sequence_input(X, W_ih, W_hh, b_ih, b_hh)
        T, B, hidden = X.shape[0], X.shape[1], W_hh.shape[1]
        code = _ACTIVATIONS[nonlinearity]
        Hall = np.empty((T + 1, B, hidden), XW.dtype)
        Hall[0] = H0
        HW = np.empty((B, hidden), XW.dtype)
        kern = _pick(_rec.rnn_forward_step, B * hidden)  # as in lstm_forward
        Wt = W_hh.T
        for t in range(T):
            np.matmul(Hall[t], Wt, out=HW)
            kern(XW[t], HW, bias, code, Hall[t + 1])
        saved = (X2, W_ih, W_hh, Hall, code, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T]), saved

    def rnn_backward(self, dY, saved, needs):
        dY_seq, dh_n = _c(dY[0]), dY[1]
        X2, W_ih, W_hh, Hall, code, has_b_ih, has_b_hh = saved
        T, B, hidden = Hall.shape[0] - 1, Hall.shape[1], Hall.shape[2]
        dZ = _workspace("rnn_dz", (T, B, hidden), Hall.dtype)  # read by _sequence_grads only
        dh = np.array(dh_n, dtype=Hall.dtype, order="C")
        kern = _pick(_rec.rnn_backward_step, B * hidden)
        for t in range(T - 1, -1, -1):
            kern(dY_seq[t], dh, Hall[t + 1], code, dZ[t])
            if t or needs[1]:
                np.matmul(dZ[t], W_hh, out=dh)
        return _sequence_grads(dZ, X2, W_ih, Hall, needs, (dh,), has_b_ih, has_b_hh)

    def lstm_forward(self, X, H0, C0, W_ih, W_hh, b_ih, b_hh):
        X2, XW, bias, W_hh = _sequence_input(X, W_ih, W_hh, b_ih, b_hh)
        T, B, hidden = X.shape[0], X.shape[1], W_hh.shape[1]
        dtype = XW.dtype
        Hall = np.empty((T + 1, B, hidden), dtype)
        Call = np.empty((T + 1, B, hidden), dtype)
        Hall[0] = H0
        Call[0] = C0
        acts = XW  # the gate buffer: each step's input projection becomes its gates
        tanh_c = np.empty((T, B, hidden), dtype)
        HW = np.empty((B, 4 * hidden), dtype)
        # per step the kernel alternates with a BLAS product, so it is split over threads
        # only from PARALLEL_MIN_SIZE gates up (without the _HEAVY weight): on the lstm
        # workload (64 x 1024 gates) the parallel variant measured no faster on 2 threads
        # (forward + backward 100 ms min either way, median 387 against 342 ms, loaded host)
        kern = _pick(_rec.lstm_forward_step, B * 4 * hidden)
        Wt = W_hh.T
        for t in range(T):
            np.matmul(Hall[t], Wt, out=HW)
            kern(acts[t], HW, bias, Call[t], Call[t + 1], Hall[t + 1], tanh_c[t])
        saved = (X2, W_ih, W_hh, Hall, Call, acts, tanh_c, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T], Call[T]), saved

    def lstm_backward(self, dY, saved, needs):
        dY_seq, dh_n, dc_n = _c(dY[0]), dY[1], dY[2]
        X2, W_ih, W_hh, Hall, Call, acts, tanh_c, has_b_ih, has_b_hh = saved
        T, B, hidden = tanh_c.shape
        dtype = acts.dtype
        dG = _workspace("lstm_dz", acts.shape, dtype)  # read by _sequence_grads only
        dh = np.array(dh_n, dtype=dtype, order="C")
        dc = np.array(dc_n, dtype=dtype, order="C")
        dc_prev = np.empty(dc.shape, dtype)
        kern = _pick(_rec.lstm_backward_step, dG[0].size)
        for t in range(T - 1, -1, -1):
            kern(dY_seq[t], dh, dc, Call[t], acts[t], tanh_c[t], dG[t], dc_prev)
            if t or needs[1]:
                np.matmul(dG[t], W_hh, out=dh)
            dc, dc_prev = dc_prev, dc
        return _sequence_grads(dG, X2, W_ih, Hall, needs, (dh, dc), has_b_ih, has_b_hh)


# ---------------------------------------------------------------------- helpers of the ops
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


def _sequence_input(X, W_ih, W_hh, b_ih, b_hh):
    """What a whole-sequence forward starts from: (X as (T*B, I), the input projection of
    every step (T, B, G*H) as one product, bias = b_ih + b_hh (zeros without), W_hh)."""
    T, B, n_in = X.shape
    X2 = _c(X).reshape(T * B, n_in)
    W_ih = _blas(W_ih)
    XW = (X2 @ W_ih.T).reshape(T, B, W_ih.shape[0])
    bias = np.zeros(W_ih.shape[0], XW.dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            bias += b
    return X2, XW, bias, _blas(W_hh)


def _sequence_grads(dZ, X2, W_ih, Hall, needs, state_grads, has_b_ih, has_b_hh):
    """The gradients of a whole-sequence op from the pre-activation gradients dZ (T, B, G*H)
    of every step: dX, dW_ih and dW_hh as one product each over all T*B rows, the bias
    gradient as one column sum; ``state_grads`` are those of the initial states."""
    T, B, rows = dZ.shape
    dZ2 = dZ.reshape(T * B, rows)
    n_state = len(state_grads)
    dX = (dZ2 @ _blas(W_ih)).reshape(T, B, X2.shape[1]) if needs[0] else None
    dW_ih = dZ2.T @ X2 if needs[n_state + 1] else None
    dW_hh = None
    if needs[n_state + 2]:
        # (H_prev.T @ dZ).T, not dZ.T @ H_prev: OpenBLAS took 3 ms against 9 ms for the
        # lstm workload's (2240 x 1024).T @ (2240 x 256) on 2 threads
        dW_hh = np.ascontiguousarray((Hall[:T].reshape(T * B, Hall.shape[2]).T @ dZ2).T)
    want_b = (has_b_ih and needs[n_state + 3], has_b_hh and needs[n_state + 4])
    db = dZ2.sum(axis=0) if any(want_b) else None
    states = tuple(g if needs[1 + k] else None for k, g in enumerate(state_grads))
    return (
        dX,
        *states,
        dW_ih,
        dW_hh,
        db if want_b[0] else None,
        (db.copy() if want_b[0] else db) if want_b[1] else None,
    )


def _mean(total, count, dtype):
    """A loss's 0-d mean from the float64 sum of its terms."""
    return np.array(total / count if count else math.nan, dtype=dtype)


def _loss_grads(kern, dY, A, B, shape, needs):
    """The two gradients of an elementwise mean loss; ``kern(a, b, g, da, db)``."""
    dtype = A.dtype
    g = _scalar(dY, dtype) / dtype.type(max(A.size, 1))
    da = np.empty(A.size, dtype) if needs[0] else _EMPTY[dtype]
    db = np.empty(A.size, dtype) if needs[1] else _EMPTY[dtype]
    _pick(kern, A.size)(A, B, g, da, db)
    return (da.reshape(shape) if needs[0] else None, db.reshape(shape) if needs[1] else None)


def _around(shape, axis):
    """(outer, n, inner): ``shape`` seen as three axes around ``axis``."""
    return (math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


def _reduce(X, axis, keepdims, mean):
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
    cur = _c(X)
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
        _pick(_shape.sum_forward, outer * mid * inner)(
            cur.reshape(outer, mid, inner), divisor if last else X.dtype.type(1), out
        )
        cur = out
        del dims[start:end], reduced[start:end]
    if not plan:  # no axis to reduce (a 0-d input): a copy
        cur = X.copy()
    return cur.reshape(out_shape), plan


def _expand(dY, x_shape, plan, count):
    """The gradient of _reduce: dY repeated back over the reduced axes (divided by
    ``count`` for a mean), one sum_backward pass per forward pass, in reverse order."""
    dtype = dY.dtype
    if not plan:
        return _c(dY).reshape(x_shape).copy()
    divisor = dtype.type(count)
    cur = _c(dY)
    for k, (outer, mid, inner) in enumerate(reversed(plan)):
        out = np.empty((outer, mid, inner), dtype)
        _pick(_shape.sum_backward, out.size)(
            cur.reshape(outer, inner), divisor if k == 0 else dtype.type(1), out
        )
        cur = out
    return cur.reshape(x_shape)


def _padded(X, ph, pw, value, keep=False):
    """X (contiguous) with a border of ``value``: X itself without padding, else a copy in
    this thread's workspace (a new array with ``keep``)."""
    if not (ph or pw):
        return X
    n, c, h, w = X.shape
    shape = (n, c, h + 2 * ph, w + 2 * pw)
    xp = np.empty(shape, X.dtype) if keep else _workspace("xpad", shape, X.dtype)
    _pick(_conv.conv2d_pad, xp.size)(X, ph, pw, value, xp)
    return xp


def _pool_shape(x_shape, kernel_size, stride, padding):
    n, c, h, w = x_shape
    (kh, kw), (sy, sx), (ph, pw) = kernel_size, stride, padding
    oh, ow = (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1
    return n, c, oh, ow, (kh, kw, sy, sx, ph, pw)


#: Bytes of im2col columns per chunk of images: bounds the scratch memory a thread keeps
#: (``clear_workspaces`` frees it). Cache-sized chunks measured no faster on one thread,
#: and the more chunks, the more hand-overs between Numba's threads and BLAS's, which
#: cost dearly on a busy machine: 2 MB chunks made a 2-thread step 4x slower than one
#: 38 MB chunk.
CONV_CHUNK_BYTES = 32 << 20


def _chunks(n, bytes_per_image):
    """[n0, n1) ranges covering n images, each about CONV_CHUNK_BYTES of columns."""
    g = max(1, min(n, CONV_CHUNK_BYTES // max(bytes_per_image, 1)))
    return [(n0, min(n, n0 + g)) for n0 in range(0, n, g)]


#: Forced convolution algorithm ("direct" / "im2col") or None (choose by shape).
_CONV_ALGORITHM: str | None = None


def _conv_direct(channels, filters, taps):
    """Whether to run the direct convolution kernel instead of im2col + BLAS. Measured
    (float32, one thread): im2col + BLAS was faster on every shape tried, LeNet's first
    layer (1 -> 6 channels, 5x5, 28x28) included (3 ms against 7 ms for a batch of 64),
    so the direct kernel only runs when ``_CONV_ALGORITHM`` asks for it."""
    return _CONV_ALGORITHM == "direct"


# ---------------------------------------------------------------------- warm-up
def warmup(verbose: bool = False) -> dict:
    """Compile every kernel ahead of time for float32 and float64, serial and parallel
    variants, by running the op table of ``gpunn.testing`` through this backend.

    Returns {"kernels": number of kernel dispatchers, "signatures": compiled signatures,
    "missing": names lacking a float32 or a float64 version (should be empty)}.
    """
    from gpunn.backends import backend_object
    from gpunn.testing.cases import OP_CASES, UPDATE_CASES, run_case, run_update

    global _par_min, _CONV_ALGORITHM
    be = backend_object("numba")
    saved = _par_min, _CONV_ALGORITHM
    conv_cases = [case for case in OP_CASES if case.op == "conv2d"]
    try:
        for par_min in (math.inf, 0):
            _par_min = par_min
            for dtype in ("float32", "float64"):
                if verbose:
                    variant = "serial" if par_min else "parallel"
                    print(f"gpunn warmup: compiling {variant} kernels for {dtype}", flush=True)
                for case in OP_CASES:
                    run_case(be, case, dtype)
                for case in UPDATE_CASES:
                    run_update(be, case, dtype)
                for algorithm in ("direct", "im2col"):
                    _CONV_ALGORITHM = algorithm
                    for case in conv_cases:
                        run_case(be, case, dtype)
                _CONV_ALGORITHM = saved[1]
    finally:
        _par_min, _CONV_ALGORITHM = saved
    return kernel_report()


def kernel_report() -> dict:
    """How many kernels exist, how many signatures are compiled, and which kernels lack a
    float32 or a float64 version."""
    missing = []
    signatures = 0
    for name, disp in _jit.REGISTRY.items():
        sigs = disp.signatures
        signatures += len(sigs)
        text = " ".join(str(s) for s in sigs)
        if "float32" not in text or "float64" not in text:
            missing.append(name)
    return {"kernels": len(_jit.REGISTRY), "signatures": signatures, "missing": missing}


def info() -> dict:
    """Settings of this backend, for ``gpunn info``."""
    from gpunn.backends import backend_object

    backend_object("numba")  # applies the thread count
    return {
        "numba": numba.__version__,
        "threading_layer": _jit.THREADING_LAYER,
        "parallel_kernels": _jit.PARALLEL,
        "threads": _numba_threads,
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "cache": _jit.cache_dir() or ("numba default" if _jit.CACHE else "off"),
        "cache_problem": _jit.cache_problem,
        "kernels": len(_jit.REGISTRY),
        "reference_ops": sorted(REFERENCE_OPS),
    }


_threads.on_change(_apply_threads)
