"""The layer ops of the Numba backend, mixed into :class:`NumbaBackend`: convolution and
pooling, dropout, recurrent cells and whole-sequence layers, optimizer updates and gradient
clipping, normalisation, embedding, leaky_relu and gelu.

Each hands its arrays to a launcher of ``gpunn.kernels.cpu.launch``, which runs gpunn's
kernels (and BLAS products where the op has them). ``numba_backend.py`` holds the backend
class itself (elementwise ops, activations, matrix products, reductions, softmax, losses).
"""

from __future__ import annotations

import functools
import math

from gpunn.backends.base import sequence_grads
from gpunn.kernels.codes import ACTIVATION_CODES
from gpunn.kernels.cpu import activations as _act
from gpunn.kernels.cpu import dropout as _drop
from gpunn.kernels.cpu import launch
from gpunn.kernels.cpu import recurrent as _rec
from gpunn.kernels.cpu.launch import blas, c, unary_backward
from gpunn.kernels.cpu.threads import HEAVY

_sequence_grads = functools.partial(sequence_grads, launch.sequence_weight_grads)


class LayerOps:
    """The layer ops of NumbaBackend: convolution and pooling, dropout, recurrent cells and
    whole-sequence layers, optimizer updates and gradient clipping, normalisation, embedding,
    leaky_relu and gelu, each over its launcher in gpunn.kernels.cpu.launch."""

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
    def sgd_update(
        self, params, grads, bufs, lr, momentum, weight_decay, nesterov=False, skip=None
    ):
        if skip is not None and bool(skip):
            return
        launch.sgd_update(params, grads, bufs, lr, momentum, weight_decay, nesterov)

    def adam_update(
        self,
        params,
        grads,
        ms,
        vs,
        step,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled=False,
        skip=None,
    ):
        if skip is not None and bool(skip):
            return
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
