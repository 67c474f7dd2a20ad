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

import math
import os

import numpy as np

# _jit first: it sets the cache folder and the threading layer before any kernel compiles
from gpunn.kernels.cpu import _jit  # isort: skip
import numba  # noqa: E402

from gpunn import threads as _threads  # noqa: E402
from gpunn.backends.base import Backend  # noqa: E402
from gpunn.kernels.codes import ACTIVATION_CODES  # noqa: E402
from gpunn.kernels.cpu import activations as _act  # noqa: E402
from gpunn.kernels.cpu import dropout as _drop  # noqa: E402
from gpunn.kernels.cpu import elementwise as _ew  # noqa: E402
from gpunn.kernels.cpu import launch  # noqa: E402
from gpunn.kernels.cpu import losses as _loss  # noqa: E402
from gpunn.kernels.cpu import recurrent as _rec  # noqa: E402
from gpunn.kernels.cpu import softmax as _sm  # noqa: E402
from gpunn.kernels.cpu import threads as _cpu_threads  # noqa: E402
from gpunn.kernels.cpu.launch import binary, blas, c, shape_of, unary, unary_backward  # noqa: E402
from gpunn.kernels.cpu.threads import HEAVY, PARALLEL_MIN_SIZE, clear_workspaces  # noqa: E402, F401
from gpunn.kernels.cpu.warmup import kernel_report, warmup  # noqa: E402, F401 (gpunn warmup)


class _NormalizationOps:
    """The normalisation, embedding and leaky_relu / gelu ops of NumbaBackend, each over its
    kernels in gpunn.kernels.cpu (normalization, embedding, activations)."""

    def leaky_relu_forward(self, X, negative_slope=0.01):
        slope = float(negative_slope)
        return launch.activation_forward(_act.leaky_relu_forward, X, slope), (X, slope)

    def leaky_relu_backward(self, dY, saved, needs):
        X, slope = saved
        return (launch.activation_backward(_act.leaky_relu_backward, dY, c(X), slope),)

    def gelu_forward(self, X, approximate="none"):
        tanh_form = approximate == "tanh"
        X = c(X)
        return launch.activation_forward(_act.gelu_forward, X, tanh_form, HEAVY), (X, tanh_form)

    def gelu_backward(self, dY, saved, needs):
        X, tanh_form = saved
        return (launch.activation_backward(_act.gelu_backward, dY, X, tanh_form, HEAVY),)

    def batch_norm_forward(
        self,
        X,
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked,
        training=True,
        momentum=0.1,
        eps=1e-5,
    ):
        if training:
            Y, X3, mean, var, invstd = launch.batch_norm_forward(X, weight, bias, None, None, eps)
            if num_batches_tracked is not None:
                num_batches_tracked += 1
            if running_mean is not None:
                factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
                count = X3.shape[0] * X3.shape[2]
                launch.batch_norm_running(mean, var, factor, count, running_mean, running_var)
        else:
            Y, X3, mean, var, invstd = launch.batch_norm_forward(
                X, weight, bias, running_mean, running_var, eps
            )
        return Y, (X3, mean, invstd, weight, training)

    def batch_norm_backward(self, dY, saved, needs):
        X3, mean, invstd, weight, training = saved
        return (*launch.batch_norm_backward(dY, X3, mean, invstd, weight, training, needs), None)

    def layer_norm_forward(self, X, weight, bias, normalized_shape, eps=1e-5):
        d = math.prod(normalized_shape)
        Y, X2, mean, invstd = launch.layer_norm_forward(X, weight, bias, d, eps)
        return Y, (X2, mean, invstd, weight, tuple(normalized_shape))

    def layer_norm_backward(self, dY, saved, needs):
        X2, mean, invstd, weight, shape = saved
        dX, dW, dB = launch.layer_norm_backward(dY, X2, mean, invstd, weight, needs)
        return (
            dX,
            None if dW is None else dW.reshape(shape),
            None if dB is None else dB.reshape(shape),
        )

    def embedding_forward(self, indices, weight, padding_idx=None):
        Y, idx = launch.embedding_forward(indices, weight)
        return Y, (idx, weight.shape, padding_idx)

    def embedding_backward(self, dY, saved, needs):
        idx, shape, padding_idx = saved
        return None, launch.embedding_backward(dY, idx, shape, padding_idx) if needs[1] else None


class NumbaBackend(_NormalizationOps, Backend):
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

    # ------------------------------------------------------------------ convolution and pooling
    def conv2d_forward(self, X, W, b, stride=(1, 1), padding=(0, 0)):
        return launch.conv2d_forward(X, W, b, stride, padding), (
            X,
            W,
            stride,
            padding,
            b is not None,
        )

    def conv2d_backward(self, dY, saved, needs):
        X, W, stride, padding, has_bias = saved
        needs = (needs[0], needs[1], has_bias and needs[2])
        return launch.conv2d_backward(dY, X, W, stride, padding, needs)

    def max_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        Y, arg = launch.max_pool2d_forward(X, kernel_size, stride, padding)
        return Y, (X.shape, arg)

    def max_pool2d_backward(self, dY, saved, needs):
        return (launch.max_pool2d_backward(dY, *saved),)

    def avg_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        Y = launch.avg_pool2d_forward(X, kernel_size, stride, padding)
        return Y, (X.shape, kernel_size, stride, padding)

    def avg_pool2d_backward(self, dY, saved, needs):
        return (launch.avg_pool2d_backward(dY, *saved),)

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, X, p, seed):
        return launch.dropout_forward(X, p, seed)  # (Y, mask)

    def dropout_backward(self, dY, saved, needs):
        return (unary_backward(_drop.dropout_backward, dY, saved),)

    # ------------------------------------------------------------------ recurrent cells
    def rnn_cell_forward(self, XW, H, W_hh):
        H, W_hh = blas(H), blas(W_hh)
        H_new = launch.rnn_cell_forward(XW, H @ W_hh.T)
        return H_new, (H, W_hh, H_new)

    def rnn_cell_backward(self, dY, saved, needs):
        H, W_hh, H_new = saved
        dZ = unary_backward(_rec.rnn_cell_backward, dY, H_new)
        dH = dZ @ W_hh if needs[1] else None
        dW = dZ.T @ H if needs[2] else None
        return (dZ if needs[0] else None), dH, dW

    def lstm_cell_forward(self, XW, H, C, W_hh):
        H, W_hh = blas(H), blas(W_hh)
        acts, C_new, H_new, tanh_C = launch.lstm_cell_forward(XW, H @ W_hh.T, C)
        return (H_new, C_new), (H, C, W_hh, acts, tanh_C)

    def lstm_cell_backward(self, dY, saved, needs):
        H, C, W_hh, acts, tanh_C = saved
        dG, dC = launch.lstm_cell_backward(*dY, C, acts, tanh_C, needs[2])
        dH = dG @ W_hh if needs[1] else None
        dW = dG.T @ H if needs[3] else None
        return (dG if needs[0] else None), dH, dC, dW

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params, grads, bufs, lr, momentum, weight_decay, nesterov=False):
        launch.sgd_update(params, grads, bufs, lr, momentum, weight_decay, nesterov)

    def adam_update(
        self, params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay, decoupled=False
    ):
        beta1, beta2, lr, weight_decay = float(beta1), float(beta2), float(lr), float(weight_decay)
        bias1, bias2_sqrt = 1 - beta1**step, (1 - beta2**step) ** 0.5
        scalars = (beta1, 1 - beta1, beta2, 1 - beta2, lr / bias1, bias2_sqrt, float(eps))
        if decoupled:
            scalars += (0.0, 1 - lr * weight_decay)
        else:
            scalars += (weight_decay, 1.0)
        launch.adam_update(params, grads, ms, vs, scalars)

    def clip_grad_norm_update(self, grads, max_norm, norm_type, error_if_nonfinite=False):
        return launch.clip_grad_norm_update(grads, max_norm, norm_type, error_if_nonfinite)

    def clip_grad_value_update(self, grads, clip_value):
        launch.clip_grad_value_update(grads, clip_value)

    # ------------------------------------------------------------------ whole-sequence recurrent
    # The loops over time are in gpunn.kernels.cpu.launch (rnn_forward, ...): per step one
    # BLAS product and one fused step kernel; the weight gradients as single products.

    def rnn_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh"):
        code = ACTIVATION_CODES[nonlinearity]
        X2, Hall = launch.rnn_forward(X, H0, W_ih, W_hh, b_ih, b_hh, code)
        T = X.shape[0]
        return (Hall[1:], Hall[T]), (X2, W_ih, W_hh, Hall, code, b_ih is not None, b_hh is not None)

    def rnn_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, code, has_b_ih, has_b_hh = saved
        dZ, dH0 = launch.rnn_backward(dY[0], dY[1], W_hh, Hall, code, needs[1])
        return _sequence_grads(dZ, X2, W_ih, Hall, needs, (dH0,), has_b_ih, has_b_hh)

    def lstm_forward(self, X, H0, C0, W_ih, W_hh, b_ih, b_hh):
        X2, Hall, Call, acts, tanh_c = launch.lstm_forward(X, H0, C0, W_ih, W_hh, b_ih, b_hh)
        T = X.shape[0]
        saved = (X2, W_ih, W_hh, Hall, Call, acts, tanh_c, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T], Call[T]), saved

    def lstm_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, Call, acts, tanh_c, has_b_ih, has_b_hh = saved
        dZ, dH0, dC0 = launch.lstm_backward(*dY, W_hh, Call, acts, tanh_c, needs[1])
        return _sequence_grads(dZ, X2, W_ih, Hall, needs, (dH0, dC0), has_b_ih, has_b_hh)

    def gru_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh):
        X2, Hall, acts, hn = launch.gru_forward(X, H0, W_ih, W_hh, b_ih, b_hh)
        T = X.shape[0]
        saved = (X2, W_ih, W_hh, Hall, acts, hn, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T]), saved

    def gru_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, acts, hn, has_b_ih, has_b_hh = saved
        dGi, dGh, dH0 = launch.gru_backward(*dY, W_hh, Hall, acts, hn, needs[1])
        return _sequence_grads(dGi, X2, W_ih, Hall, needs, (dH0,), has_b_ih, has_b_hh, dGh)


def _sequence_grads(dZ, X2, W_ih, Hall, needs, state_grads, has_b_ih, has_b_hh, dZ_hh=None):
    """The gradients of a whole-sequence op in contract order: (dX, the initial states',
    dW_ih, dW_hh, db_ih, db_hh), None where not needed. dZ_hh: the recurrent side's gate
    gradient where it differs from the input side's dZ (the GRU's)."""
    k = len(state_grads)
    dX, dW_ih, dW_hh, db_ih, db_hh = launch.sequence_weight_grads(
        dZ,
        X2,
        W_ih,
        Hall,
        needs[0],
        needs[k + 1],
        needs[k + 2],
        has_b_ih and needs[k + 3],
        has_b_hh and needs[k + 4],
        dZ_hh,
    )
    return (
        dX,
        *(g if needs[1 + i] else None for i, g in enumerate(state_grads)),
        dW_ih,
        dW_hh,
        db_ih,
        db_hh,
    )


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
