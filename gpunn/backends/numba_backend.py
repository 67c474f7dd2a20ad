"""The Numba CPU backend: gpunn's own Numba kernels, BLAS for matrix products.

Arrays are NumPy ndarrays. Each op method hands its arrays to a launcher of
``gpunn.kernels.cpu.launch`` (contiguity, output allocation, serial or parallel variant,
chunking), which calls the kernels of ``gpunn.kernels.cpu`` (one module per op family);
matrix products go to BLAS through NumPy's ``@``. This file keeps the op methods: what each
op saves for its backward and which gradients it returns.

Compilation: kernels compile on first use and are cached on disk (``GPUNN_CACHE_DIR``,
else Numba's default folder; see ``gpunn.kernels.cpu._jit``). :func:`warmup` compiles all
of them ahead of time for float32 and float64 from the signature tables beside them
(``gpunn.kernels.cpu.warmup``). Threads: ``gpunn.set_num_threads(n)`` /
``GPUNN_NUM_THREADS`` set Numba's thread count and BLAS's (``gpunn.kernels.cpu.threads``).

What computes each op (a gpunn kernel, BLAS, a view, or the inherited reference) is
declared in ``gpunn.backends.kinds``; ops whose reference code is already right for NumPy
arrays (reshapes, stacking, indexing) are inherited, not repeated here.
"""

from __future__ import annotations

import os

import numpy as np

# _jit first: it sets the cache folder and the threading layer before any kernel compiles
from gpunn.kernels.cpu import _jit  # isort: skip
import numba  # noqa: E402

from gpunn import threads as _threads  # noqa: E402
from gpunn.backends.base import Backend  # noqa: E402
from gpunn.backends.numba_layers import LayerOps  # noqa: E402
from gpunn.kernels.codes import ACTIVATION_CODES  # noqa: E402
from gpunn.kernels.cpu import activations as _act  # noqa: E402
from gpunn.kernels.cpu import elementwise as _ew  # noqa: E402
from gpunn.kernels.cpu import launch  # noqa: E402
from gpunn.kernels.cpu import losses as _loss  # noqa: E402
from gpunn.kernels.cpu import softmax as _sm  # noqa: E402
from gpunn.kernels.cpu import threads as _cpu_threads  # noqa: E402
from gpunn.kernels.cpu.launch import binary, blas, shape_of, unary, unary_backward  # noqa: E402
from gpunn.kernels.cpu.threads import HEAVY, PARALLEL_MIN_SIZE, clear_workspaces  # noqa: E402, F401
from gpunn.kernels.cpu.warmup import kernel_report, warmup  # noqa: E402, F401 (gpunn warmup)


class NumbaBackend(LayerOps, Backend):
    """CPU backend on Numba kernels (``prange``-parallel) and BLAS matrix products."""

    name = "numba"
    xp = np

    def __init__(self):
        # BLAS keeps its own default unless a thread count was asked for
        explicit = "GPUNN_NUM_THREADS" in os.environ or _threads._num_threads is not None
        _cpu_threads.apply_threads(_threads.get_num_threads(), blas=explicit)

    # ------------------------------------------------------------------ elementwise
    def add_forward(self, A, B):
        return binary(_ew.add_forward, A, B), (shape_of(A), shape_of(B))

    def sub_forward(self, A, B):
        return binary(_ew.sub_forward, A, B), (shape_of(A), shape_of(B))

    def sub_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        dB = unary(_ew.neg_forward, self.unbroadcast(dY, b_shape)) if needs[1] else None
        return (self.unbroadcast(dY, a_shape) if needs[0] else None, dB)

    def mul_forward(self, A, B):
        return binary(_ew.mul_forward, A, B), (A, B)

    def mul_backward(self, dY, saved, needs):
        A, B = saved
        return (
            self.unbroadcast(binary(_ew.mul_forward, dY, B), shape_of(A)) if needs[0] else None,
            self.unbroadcast(binary(_ew.mul_forward, dY, A), shape_of(B)) if needs[1] else None,
        )

    def div_forward(self, A, B):
        Y = binary(_ew.div_forward, A, B)
        return Y, (A, B, Y)

    def div_backward(self, dY, saved, needs):
        A, B, Y = saved
        dA = self.unbroadcast(binary(_ew.div_forward, dY, B), shape_of(A)) if needs[0] else None
        dB = self.unbroadcast(launch.div_backward(dY, Y, B), B.shape) if needs[1] else None
        return dA, dB

    def pow_forward(self, A, B):
        Y = binary(_ew.pow_forward, A, B)
        return Y, (A, B, Y)

    def pow_backward(self, dY, saved, needs):
        A, B, Y = saved
        da, db = launch.pow_backward(dY, A, B, Y, needs)
        return (
            None if da is None else self.unbroadcast(da, A.shape),
            None if db is None else self.unbroadcast(db, B.shape),
        )

    def neg_forward(self, X):
        return unary(_ew.neg_forward, X), None

    def neg_backward(self, dY, saved, needs):
        return (unary(_ew.neg_forward, dY),)

    def exp_forward(self, X):
        Y = unary(_ew.exp_forward, X, HEAVY)
        return Y, Y

    def exp_backward(self, dY, saved, needs):
        return (binary(_ew.mul_forward, dY, saved),)

    def log_forward(self, X):
        return unary(_ew.log_forward, X, HEAVY), X

    def log_backward(self, dY, saved, needs):
        return (binary(_ew.div_forward, dY, saved),)

    def cast_forward(self, X, dtype):
        return unary(_ew.cast_forward, X, dtype=dtype), X.dtype

    def cast_backward(self, dY, saved, needs):
        return (unary(_ew.cast_forward, dY, dtype=saved),)

    # ------------------------------------------------------------------ activations
    def sigmoid_forward(self, X):
        Y = unary(_act.sigmoid_forward, X, HEAVY)
        return Y, Y

    def sigmoid_backward(self, dY, saved, needs):
        return (unary_backward(_act.sigmoid_backward, dY, saved),)

    def tanh_forward(self, X):
        Y = unary(_act.tanh_forward, X, HEAVY)
        return Y, Y

    def tanh_backward(self, dY, saved, needs):
        return (unary_backward(_act.tanh_backward, dY, saved),)

    def relu_forward(self, X):
        Y = unary(_act.relu_forward, X)
        return Y, Y

    def relu_backward(self, dY, saved, needs):
        return (unary_backward(_act.relu_backward, dY, saved),)

    def step_forward(self, X):
        return unary(_act.step_forward, X), X.shape

    def step_backward(self, dY, saved, needs):
        return (launch.step_backward(saved, dY.dtype),)

    # ------------------------------------------------------------------ matrix products
    def matmul_forward(self, A, B):
        return blas(A) @ blas(B), (A, B)

    def matmul_backward(self, dY, saved, needs):
        A, B = saved
        dY = blas(dY)
        dA = self.unbroadcast(dY @ blas(B).swapaxes(-1, -2), A.shape) if needs[0] else None
        dB = self.unbroadcast(blas(A).swapaxes(-1, -2) @ dY, B.shape) if needs[1] else None
        return dA, dB

    def linear_forward(self, X, W, b, activation=None):
        code = ACTIVATION_CODES[activation]
        Y = launch.linear_forward(X, W, b, code)
        return Y, (X, W, Y, code, b is not None)

    def linear_backward(self, dY, saved, needs):
        X, W, Y, code, has_bias = saved
        return launch.linear_backward(
            dY, X, W, Y, code, (needs[0], needs[1], has_bias and needs[2])
        )

    # ------------------------------------------------------------------ reductions and shapes
    def sum_forward(self, X, axis=None, keepdims=False):
        Y, plan = launch.sum_forward(X, axis, keepdims, mean=False)
        return Y, (X.shape, plan, 1)  # divisor 1

    def sum_backward(self, dY, saved, needs):
        return (launch.sum_backward(dY, *saved),)

    def mean_forward(self, X, axis=None, keepdims=False):
        Y, plan = launch.sum_forward(X, axis, keepdims, mean=True)
        count = X.size // max(Y.size, 1) if X.size else 0
        return Y, (X.shape, plan, count)

    def mean_backward(self, dY, saved, needs):
        return (launch.sum_backward(dY, *saved),)

    def transpose_forward(self, X, axes):
        inverse = tuple(int(a) for a in np.argsort(axes)) if axes is not None else None
        return X.transpose(axes), inverse

    def transpose_backward(self, dY, saved, needs):
        return (dY.transpose(saved),)

    def stack_backward(self, dY, saved, needs):
        n, axis = saved
        lead = (slice(None),) * axis
        return tuple(dY[lead + (k,)] if needs[k] else None for k in range(n))

    def getitem_backward(self, dY, saved, needs):
        return (launch.getitem_backward(dY, *saved),)

    # ------------------------------------------------------------------ softmax family
    def softmax_forward(self, X, axis=-1):
        Y, shape3 = launch.softmax_forward(_sm.softmax_forward, X, axis)
        return Y, (Y, shape3)

    def softmax_backward(self, dY, saved, needs):
        return (launch.softmax_backward(_sm.softmax_backward, dY, *saved),)

    def log_softmax_forward(self, X, axis=-1):
        Y, shape3 = launch.softmax_forward(_sm.log_softmax_forward, X, axis)
        return Y, (Y, shape3)

    def log_softmax_backward(self, dY, saved, needs):
        return (launch.softmax_backward(_sm.log_softmax_backward, dY, *saved),)

    # ------------------------------------------------------------------ losses (0-d means)
    def mse_loss_forward(self, P, T):
        P, T, shape = P.ravel(), T.ravel(), P.shape
        return launch.loss_forward(_loss.mse_loss_forward, P, T, cost=1), (P, T, shape)

    def mse_loss_backward(self, dY, saved, needs):
        # the reference's dP = dY * 2 * D / N, dT = -dP
        return launch.loss_backward(_loss.mse_loss_backward, dY, *saved, needs, scale=2)

    def binary_cross_entropy_forward(self, P, T):
        P, T, shape = P.ravel(), T.ravel(), P.shape
        return launch.loss_forward(_loss.binary_cross_entropy_forward, P, T), (P, T, shape)

    def binary_cross_entropy_backward(self, dY, saved, needs):
        return launch.loss_backward(_loss.binary_cross_entropy_backward, dY, *saved, needs)

    def binary_cross_entropy_with_logits_forward(self, Z, T):
        Z, T, shape = Z.ravel(), T.ravel(), Z.shape
        kern = _loss.binary_cross_entropy_with_logits_forward
        return launch.loss_forward(kern, Z, T), (Z, T, shape)

    def binary_cross_entropy_with_logits_backward(self, dY, saved, needs):
        kern = _loss.binary_cross_entropy_with_logits_backward
        return launch.loss_backward(kern, dY, *saved, needs)

    def cross_entropy_forward(self, Z, labels):
        L, E, inv_sum, labels = launch.cross_entropy_forward(Z, labels)
        return L, (E, inv_sum, labels)

    def cross_entropy_backward(self, dY, saved, needs):
        return (launch.cross_entropy_backward(dY, *saved), None)


def info() -> dict:
    """Settings of this backend, for ``gpunn info``."""
    from gpunn.backends import backend_object

    backend_object("numba")  # applies the thread count
    return {
        "numba": numba.__version__,
        "threading_layer": _jit.THREADING_LAYER,
        "parallel_kernels": _jit.PARALLEL,
        "threads": _cpu_threads.num_threads,
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "cache": _jit.cache_dir() or ("numba default" if _jit.CACHE else "off"),
        "cache_problem": _jit.cache_problem,
        "kernels": len(_jit.REGISTRY),
    }


_threads.on_change(_cpu_threads.apply_threads)
