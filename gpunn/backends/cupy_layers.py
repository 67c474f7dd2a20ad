"""The layer ops of the CUDA backend, mixed into :class:`CupyBackend`: linear, convolution,
pooling, dropout, recurrent cells and whole-sequence layers, optimizer updates and gradient
clipping, mixed precision, normalisation, embedding, leaky_relu and gelu.

Each is a few cuBLAS products (through ``launch.matmul``: gpunn's cuBLAS binding, which a
CUDA graph can capture; autocast lowers them) around gpunn's kernels, launched by
``gpunn.kernels.cuda.launch``. ``cupy_backend.py`` holds the backend class itself (arrays,
elementwise ops, reductions, softmax and losses).
"""

from __future__ import annotations

import functools

import numpy as np

from gpunn.backends.base import sequence_grads
from gpunn.kernels.codes import ACTIVATION_CODES
from gpunn.kernels.cuda import launch as L

try:
    import cupy
except ImportError:  # pragma: no cover - depends on the environment; cupy_backend says why
    cupy = None

_c = L.contiguous


def _slot(value) -> np.uint64:
    """The device word a captured step's replays write ``value`` to (gpunn.cuda.graphs.
    replayed), as the kernels take it; 0 (read the value passed) outside a capture."""
    return np.uint64(getattr(value, "slot", 0))


def _sequence_grads(dev, *args):
    return sequence_grads(functools.partial(L.sequence_weight_grads, dev), *args)


class LayerOps:
    """The layer ops of CupyBackend (linear, convolution, pooling, dropout, recurrent cells
    and whole-sequence layers, optimizer updates, normalisation, embedding, leaky_relu and
    gelu): cuBLAS products around gpunn kernels. ``self._dev`` is the backend's launch.Device."""

    # ------------------------------------------------------------------ linear
    def linear_forward(self, X, W, b, activation=None):
        """Z = X @ W.T by cuBLAS, then bias and activation in one in-place pass."""
        Z = L.matmul(self._dev, X, W.T)
        act = ACTIVATION_CODES[activation]
        L.linear_forward(self._dev, Z, b, act)
        return Z, (X, W, Z, act, b is not None)

    def linear_backward(self, dY, saved, needs):
        """dZ = act'(dY) and db = column sums of dZ in one kernel; dX, dW by cuBLAS."""
        X, W, Y, act, has_bias = saved
        dZ, db = L.linear_backward(self._dev, dY, Y, act, has_bias and needs[2])
        dX = L.matmul(self._dev, dZ, W) if needs[0] else None
        dW = L.matmul(self._dev, dZ.T, X) if needs[1] else None
        return dX, dW, db

    # ------------------------------------------------------------------ convolution and pooling
    def conv2d_forward(self, X, W, b, stride=(1, 1), padding=(0, 0)):
        """Per chunk of images (L.conv2d_chunks): im2col (gpunn kernel), one cuBLAS GEMM,
        then bias and NCHW layout (gpunn kernel). The column matrix is kept for the
        backward when one chunk held the whole batch."""
        X, W = _c(X), _c(W)
        geometry = L.conv2d_geometry(X, W, stride, padding)
        k, oh, ow = W.shape[0], geometry[10], geometry[11]
        W2 = W.reshape(k, -1)
        Y = cupy.empty((X.shape[0], k, oh, ow), X.dtype)
        chunks = L.conv2d_chunks(geometry, k, X.itemsize)
        col = None
        for n0, n1 in chunks:
            col = L.conv2d_im2col(self._dev, X, geometry, n0, n1)
            L.conv2d_output(self._dev, L.matmul(self._dev, W2, col), b, Y, n0, n1)
        kept = col if len(chunks) == 1 else None
        return Y, (X, W, geometry, chunks, kept, b is not None)

    def conv2d_backward(self, dY, saved, needs):
        X, W, geometry, chunks, kept, has_bias = saved
        k = W.shape[0]
        W2 = W.reshape(k, -1)
        dY = _c(dY)
        dX = cupy.empty(X.shape, X.dtype) if needs[0] else None
        dW = cupy.zeros(W2.shape, W.dtype) if needs[1] else None
        db = cupy.zeros(k, W.dtype) if has_bias and needs[2] else None
        for n0, n1 in chunks:
            dYt = L.conv2d_grad_output(self._dev, dY, n0, n1)
            if dX is not None:
                L.conv2d_col2im(self._dev, L.matmul(self._dev, W2.T, dYt), dX, geometry, n0, n1)
            if dW is not None:
                col = kept if kept is not None else L.conv2d_im2col(self._dev, X, geometry, n0, n1)
                dW += L.matmul(self._dev, dYt, col.T)
            if db is not None:
                ones = self._dev.workspace.ones(dYt.shape[1], W.dtype).reshape(-1, 1)
                db += L.matmul(self._dev, dYt, ones).reshape(k)
        return dX, None if dW is None else dW.reshape(W.shape), db

    def max_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        return L.max_pool2d_forward(self._dev, _c(X), kernel_size, stride, padding)

    def max_pool2d_backward(self, dY, saved, needs):
        return (L.max_pool2d_backward(self._dev, _c(dY), *saved),)

    def avg_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        return L.avg_pool2d_forward(self._dev, _c(X), kernel_size, stride, padding)

    def avg_pool2d_backward(self, dY, saved, needs):
        return (L.avg_pool2d_backward(self._dev, _c(dY), *saved),)

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, X, p, seed):
        """Inverted dropout; the mask is splitmix64(seed, flat index), as the reference draws
        it, recomputed in the backward instead of stored."""
        return L.dropout_forward(self._dev, _c(X), p, seed, _slot(seed))

    def dropout_backward(self, dY, saved, needs):
        return (L.dropout_backward(self._dev, _c(dY), saved),)

    # ------------------------------------------------------------------ recurrent cells
    def rnn_cell_forward(self, XW, H, W_hh):
        """h' = tanh(XW + H @ W_hh.T): one cuBLAS GEMM and one fused kernel."""
        HW = L.matmul(self._dev, H, W_hh.T)
        Hn = L.map2(self._dev, "rnn_cell_forward", XW, HW)
        return Hn, (H, W_hh, Hn)

    def rnn_cell_backward(self, dY, saved, needs):
        H, W_hh, Hn = saved
        dZ = L.map2(self._dev, "rnn_cell_backward", dY, Hn)
        dH = L.matmul(self._dev, dZ, W_hh) if needs[1] else None
        dW = L.matmul(self._dev, dZ.T, H) if needs[2] else None
        return (dZ if needs[0] else None), dH, dW

    def lstm_cell_forward(self, XW, H, C, W_hh):
        """One LSTM step: the recurrent GEMM by cuBLAS, then ONE kernel for all four gates
        and the state update."""
        C = _c(C)  # saved: the backward kernel reads it flat
        Hn, Cn, S = L.lstm_cell_forward(self._dev, _c(XW), L.matmul(self._dev, H, W_hh.T), C)
        return (Hn, Cn), (H, C, W_hh, S)

    def lstm_cell_backward(self, dY, saved, needs):
        H, C, W_hh, S = saved
        dG, dCp = L.lstm_cell_backward(self._dev, _c(dY[0]), _c(dY[1]), C, S, needs[2])
        dH = L.matmul(self._dev, dG, W_hh) if needs[1] else None
        dW = L.matmul(self._dev, dG.T, H) if needs[3] else None
        return (dG if needs[0] else None), dH, dCp, dW

    # ------------------------------------------------------------------ whole-sequence recurrent
    # The loops over time are in gpunn.kernels.cuda.launch (rnn_forward, ...): per step one
    # cuBLAS GEMM and one fused step kernel, forward and backward; the weight gradients as
    # one GEMM each over all steps.

    def rnn_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh"):
        act = ACTIVATION_CODES[nonlinearity]
        X2, Hall = L.rnn_forward(self._dev, X, H0, W_ih, W_hh, b_ih, b_hh, act)
        saved = (X2, W_ih, W_hh, Hall, act, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[X.shape[0]]), saved

    def rnn_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, act, has_b_ih, has_b_hh = saved
        dZ, dH0 = L.rnn_backward(self._dev, dY[0], dY[1], W_hh, Hall, act, needs[1])
        return _sequence_grads(self._dev, dZ, X2, W_ih, Hall, needs, (dH0,), has_b_ih, has_b_hh)

    def lstm_forward(self, X, H0, C0, W_ih, W_hh, b_ih, b_hh):
        X2, Hall, Call, Z = L.lstm_forward(self._dev, X, H0, C0, W_ih, W_hh, b_ih, b_hh)
        T = X.shape[0]
        saved = (X2, W_ih, W_hh, Hall, Call, Z, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T], Call[T]), saved

    def lstm_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, Call, Z, has_b_ih, has_b_hh = saved
        dZ, dH0, dC0 = L.lstm_backward(self._dev, *dY, W_hh, Call, Z, needs[1])
        return _sequence_grads(self._dev, dZ, X2, W_ih, Hall, needs, (dH0, dC0), has_b_ih, has_b_hh)

    def gru_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh):
        X2, Hall, Z, HN = L.gru_forward(self._dev, X, H0, W_ih, W_hh, b_ih, b_hh)
        T = X.shape[0]
        saved = (X2, W_ih, W_hh, Hall, Z, HN, b_ih is not None, b_hh is not None)
        return (Hall[1:], Hall[T]), saved

    def gru_backward(self, dY, saved, needs):
        X2, W_ih, W_hh, Hall, Z, HN, has_b_ih, has_b_hh = saved
        dGi, dGh, dH0 = L.gru_backward(self._dev, *dY, W_hh, Hall, Z, HN, needs[1])
        return _sequence_grads(
            self._dev, dGi, X2, W_ih, Hall, needs, (dH0,), has_b_ih, has_b_hh, dGh
        )

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(
        self, params, grads, bufs, lr, momentum, weight_decay, nesterov=False, skip=None
    ):
        """One fused launch over every parameter (per dtype): weight decay, momentum, step; in
        a captured step the learning rate and momentum come from the device words its
        replays refresh (``.slot``, see gpunn.cuda.graphs.replayed). ``skip`` (a 0-d bool
        array) is read by the kernel, which then changes nothing."""
        flags = (np.int32(momentum != 0), np.int32(weight_decay != 0), np.int32(bool(nesterov)))
        scalars = (float(lr), _slot(lr), float(momentum), _slot(momentum), float(weight_decay))
        scalars += (*flags, L.skip_flag(skip))
        L.fused_update(self._dev, "sgd_update", (params, grads, bufs), scalars)

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
        """One fused launch over every parameter (per dtype), as PyTorch's Adam or AdamW. The
        bias corrections are computed on the device from ``step``, ``lr`` and ``beta1``: in a
        captured step, from the device words its replays refresh (``.slot``, see
        gpunn.cuda.graphs.replayed). ``skip`` (a 0-d bool array) is read by the kernel,
        which then changes nothing."""
        l2, shrink = bool(weight_decay) and not decoupled, bool(weight_decay) and decoupled
        scalars = (float(eps), float(weight_decay), np.int32(l2), np.int32(shrink))
        scalars += (np.float64(lr), _slot(lr), np.float64(beta1), _slot(beta1))
        scalars += (np.float64(beta2), np.float64(weight_decay), np.uint64(step), _slot(step))
        scalars += (L.skip_flag(skip),)
        L.fused_update(self._dev, "adam_update", (params, grads, ms, vs), scalars)

    def clip_grad_norm_update(self, grads, max_norm, norm_type, error_if_nonfinite=False):
        """Two launches over every gradient; the norm and the scale factor stay on the device."""
        if error_if_nonfinite:
            self._dev.refuse_capture(
                "clip_grad_norm_", "error_if_nonfinite=True reads the norm on the host"
            )
        return L.clip_grad_norm(self._dev, grads, max_norm, norm_type, error_if_nonfinite)

    def clip_grad_value_update(self, grads, clip_value):
        """One fused launch per dtype over every gradient."""
        L.fused_update(self._dev, "clip_grad_value_update", (grads,), (float(clip_value),))

    # ------------------------------------------------------------------ mixed precision
    # Written and checked under a NumPy stand-in; not yet run on a GPU.
    def autocast(self, dtype):
        """Within it, the float32 products of linear, matmul and conv2d round their inputs
        to ``dtype`` and multiply with cuBLAS in float32 accumulation (see gpunn.amp)."""
        return L.autocast_scope(dtype)

    def matmul_forward(self, A, B):
        return L.matmul(self._dev, A, B), (A, B)

    def matmul_backward(self, dY, saved, needs):
        A, B = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(L.matmul(self._dev, dY, B.swapaxes(-1, -2)), A.shape)
        if needs[1]:
            dB = self.unbroadcast(L.matmul(self._dev, A.swapaxes(-1, -2), dY), B.shape)
        return dA, dB

    # ------------------------------------------------------------------ normalization, embedding
    # (and the activations leaky_relu and gelu)
    def leaky_relu_forward(self, X, negative_slope=0.01):
        X = _c(X)
        slope = X.dtype.type(negative_slope)
        return L.activation_forward(self._dev, "leaky_relu_forward", X, slope), (X, slope)

    def leaky_relu_backward(self, dY, saved, needs):
        X, slope = saved
        return (L.activation_backward(self._dev, "leaky_relu_backward", dY, X, slope),)

    def gelu_forward(self, X, approximate="none"):
        X, form = _c(X), np.int32(approximate == "tanh")
        return L.activation_forward(self._dev, "gelu_forward", X, form), (X, form)

    def gelu_backward(self, dY, saved, needs):
        X, form = saved
        return (L.activation_backward(self._dev, "gelu_backward", dY, X, form),)

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
        """Batch statistics (one block per channel), running statistics updated in place,
        then one normalising pass; outside training the running statistics normalise."""
        if training and momentum is None and running_mean is not None:
            self._dev.refuse_capture(
                "batch_norm", "momentum=None reads the batch counter on the host"
            )
        X = _c(X)
        if training:
            Y, mean, var, invstd = L.batch_norm_forward(self._dev, X, weight, bias, None, None, eps)
            if num_batches_tracked is not None:
                num_batches_tracked += 1
            if running_mean is not None:
                # momentum=None reads the counter on the host (a synchronisation, as PyTorch)
                factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
                count = X.size // X.shape[1]
                L.batch_norm_running(self._dev, mean, var, factor, count, running_mean, running_var)
        else:
            Y, mean, var, invstd = L.batch_norm_forward(
                self._dev, X, weight, bias, running_mean, running_var, eps
            )
        return Y, (X, mean, invstd, weight, training)

    def batch_norm_backward(self, dY, saved, needs):
        X, mean, invstd, weight, training = saved
        grads = L.batch_norm_backward(self._dev, dY, X, mean, invstd, weight, training, needs)
        return (*grads, None)

    def layer_norm_forward(self, X, weight, bias, normalized_shape, eps=1e-5):
        d = int(np.prod(normalized_shape))
        X2 = _c(X).reshape(-1, d)
        Y2, mean, invstd = L.layer_norm_forward(self._dev, X2, weight, bias, eps)
        return Y2.reshape(X.shape), (X2, mean, invstd, weight, tuple(normalized_shape))

    def layer_norm_backward(self, dY, saved, needs):
        X2, mean, invstd, weight, shape = saved
        dX, dW, dB = L.layer_norm_backward(
            self._dev, _c(dY).reshape(X2.shape), X2, mean, invstd, weight, needs
        )
        return (
            None if dX is None else dX.reshape(dY.shape),
            None if dW is None else dW.reshape(shape),
            None if dB is None else dB.reshape(shape),
        )

    def embedding_forward(self, indices, weight, padding_idx=None):
        Y, idx = L.embedding_forward(self._dev, indices, weight)
        return Y, (idx, tuple(weight.shape), padding_idx)

    def embedding_backward(self, dY, saved, needs):
        idx, shape, padding_idx = saved
        dW = L.embedding_backward(self._dev, dY, idx, shape, padding_idx) if needs[1] else None
        return None, dW
