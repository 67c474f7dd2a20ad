"""The backend contract, and the readable reference implementation of every op.

A backend turns arrays into arrays. gpunn's autograd engine calls it through one
convention, so that every backend can be enumerated, compared and timed op by op:

* ``<op>_forward(*arrays, **params) -> (Y, saved)``. ``Y`` is one array, or a tuple
  of arrays for ops with several outputs (``lstm_cell``). ``saved`` is opaque: only
  the same backend's ``<op>_backward`` reads it.
* ``<op>_backward(dY, saved, needs) -> grads``: one gradient per positional input of
  the forward, ``None`` where ``needs[i]`` is false. ``dY`` is a tuple for ops with
  several outputs. Gradients of broadcast inputs are already reduced to the input's
  shape.
* ``<op>_update(...)``: optimizer updates, in place on the parameters.

Validation of shapes and dtypes happens before a backend is called (in
``gpunn.functional``); a backend may assume its inputs fit the op. Accelerated
backends subclass :class:`Backend` and override ops with their own kernels; what
computes each op of each backend is declared in ``gpunn.backends.kinds``, and a test
holds every backend class to its table.

This class is also the reference: plain array code that mirrors the formulas,
written against ``self.xp`` (NumPy here). Clarity beats speed in this file.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from gpunn.kernels.codes import ACTIVATIONS  # noqa: F401 (the activation names, one table)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# splitmix64 constants: the counter-based generator behind dropout masks. Every
# backend computes the same mask from the same (seed, element index).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(seed: int, index):
    """uint64 hash of (seed, index): the n-th output of splitmix64 seeded with ``seed``.

    ``index`` is a uint64 array; returns a uint64 array of the same shape. Shared by
    the reference and the Numba kernels so both draw identical dropout masks.
    """
    z = np.uint64(seed) + (index + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def dropout_keep_mask(seed: int, size: int, p: float):
    """Boolean keep-mask of ``size`` elements: element i is kept when its uniform draw,
    the top 24 bits of ``splitmix64(seed, i)`` scaled to [0, 1), is at least ``p``."""
    bits = splitmix64(seed, np.arange(size, dtype=np.uint64)) >> np.uint64(40)
    return bits.astype(np.float64) * (1.0 / (1 << 24)) >= p


def sequence_grads(
    weight_grads, dZ, X2, W_ih, Hall, needs, state_grads, has_b_ih, has_b_hh, dZ_hh=None
):
    """The gradients of a whole-sequence op in contract order: (dX, the initial states',
    dW_ih, dW_hh, db_ih, db_hh), None where not needed. dZ_hh: the recurrent side's gate
    gradient where it differs from the input side's dZ (the GRU's). ``weight_grads``: the
    backend's launcher that computes dX, dW_ih, dW_hh and the bias gradients over all steps
    (shared by the accelerated backends; the reference computes its own in its loop)."""
    k = len(state_grads)
    dX, dW_ih, dW_hh, db_ih, db_hh = weight_grads(
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


class Backend:
    """The contract every backend implements, and the NumPy reference for all of it."""

    name = "base"
    xp = np

    # ------------------------------------------------------------------ arrays
    def asarray(self, data, dtype=None):
        """A native array from host data (an ndarray, list or scalar); copies only if needed."""
        return self.xp.asarray(data, dtype=dtype)

    def to_numpy(self, X) -> np.ndarray:
        """A host ndarray with the values of native array ``X``."""
        return np.asarray(X)

    def is_native(self, X) -> bool:
        return isinstance(X, self.xp.ndarray)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype):
        return self.xp.full(shape, value, dtype=dtype)

    def copy(self, X):
        return self.xp.array(X, copy=True)

    def astype(self, X, dtype):
        return X.astype(dtype)

    def argmax(self, X, axis):
        return self.xp.argmax(X, axis=axis)

    def unscale_grads(self, grads, inv):
        """Multiply every array of ``grads`` by ``inv`` (rounded to its dtype) in place, and
        return whether any element of them is then inf or nan, as a 0-d bool array of this
        backend (the float16 loss scaler's found-inf flag, which the optimizers' updates
        take as ``skip``)."""
        found = False
        for g in grads:
            g *= g.dtype.type(inv)
            found = found or not bool(self.xp.isfinite(g).all())
        return self.xp.asarray(found)

    def check_labels(self, op: str, labels, num_classes: int) -> None:
        """Raise IndexError naming ``op`` unless every label is in [0, num_classes)."""
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise IndexError(
                f"{op}: target holds class indices outside [0, {num_classes}): "
                f"min {int(labels.min())}, max {int(labels.max())}"
            )

    def autocast(self, dtype: str):
        """A context in which ``linear``, ``matmul`` and ``conv2d`` (forward and backward) may
        compute in ``dtype`` ("bfloat16" or "float16"), as ``gpunn.autocast`` asks. The CPU
        backends keep float32: this reference returns a context that changes nothing."""
        return contextlib.nullcontext()

    def check_indices(self, op: str, indices, size: int) -> None:
        """Raise IndexError naming ``op`` unless every index is in [0, size)."""
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise IndexError(
                f"{op}: input holds indices outside [0, {size}): "
                f"min {int(indices.min())}, max {int(indices.max())}"
            )

    def synchronize(self) -> None:
        """Wait until queued work is done (a no-op on the CPU)."""

    def unbroadcast(self, G, shape):
        """Sum ``G`` over the axes along which an input of ``shape`` was broadcast."""
        if G.shape == tuple(shape):
            return G
        extra = G.ndim - len(shape)
        axes = tuple(range(extra)) + tuple(
            extra + i for i, n in enumerate(shape) if n == 1 and G.shape[extra + i] != 1
        )
        return G.sum(axis=axes, keepdims=True).reshape(shape) if axes else G.reshape(shape)

    @classmethod
    def ops(cls) -> list[str]:
        """Names of every op of the contract (``relu_forward``, ``sgd_update``, ...)."""
        suffixes = ("_forward", "_backward", "_update")
        return sorted(n for n in dir(Backend) if n.endswith(suffixes))

    def native_ops(self) -> list[str]:
        """The ops this backend runs on gpunn's own kernels: those of kind ``kernel`` in
        ``gpunn.backends.kinds`` (none for the NumPy reference)."""
        from gpunn.backends.kinds import ops_of_kind

        return ops_of_kind(self.name, "kernel")

    # ------------------------------------------------------------------ elementwise
    # Binary ops take arrays or Python scalars (at least one array) and broadcast.

    def add_forward(self, A, B):
        return A + B, (np.shape(A), np.shape(B))

    def add_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(dY, b_shape) if needs[1] else None,
        )

    def sub_forward(self, A, B):
        return A - B, (np.shape(A), np.shape(B))

    def sub_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(-dY, b_shape) if needs[1] else None,
        )

    def mul_forward(self, A, B):
        return A * B, (A, B)

    def mul_backward(self, dY, saved, needs):
        A, B = saved
        return (
            self.unbroadcast(dY * B, np.shape(A)) if needs[0] else None,
            self.unbroadcast(dY * A, np.shape(B)) if needs[1] else None,
        )

    def div_forward(self, A, B):
        Y = A / B
        return Y, (A, B, Y)

    def div_backward(self, dY, saved, needs):
        A, B, Y = saved
        return (
            self.unbroadcast(dY / B, np.shape(A)) if needs[0] else None,
            self.unbroadcast(-dY * Y / B, np.shape(B)) if needs[1] else None,
        )

    def pow_forward(self, A, B):
        Y = A**B
        return Y, (A, B, Y)

    def pow_backward(self, dY, saved, needs):
        """d(A**B)/dA = B * A**(B-1); d(A**B)/dB = A**B * log(A), taken as 0 where A <= 0."""
        A, B, Y = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(dY * B * A ** (B - 1), np.shape(A))
        if needs[1]:
            xp = self.xp
            log_A = xp.log(xp.where(A > 0, A, 1))
            dB = self.unbroadcast(dY * Y * log_A, np.shape(B))
        return dA, dB

    def neg_forward(self, X):
        return -X, None

    def neg_backward(self, dY, saved, needs):
        return (-dY,)

    def exp_forward(self, X):
        Y = self.xp.exp(X)
        return Y, Y

    def exp_backward(self, dY, saved, needs):
        return (dY * saved,)

    def log_forward(self, X):
        return self.xp.log(X), X

    def log_backward(self, dY, saved, needs):
        return (dY / saved,)

    def cast_forward(self, X, dtype):
        return X.astype(dtype), X.dtype

    def cast_backward(self, dY, saved, needs):
        return (dY.astype(saved),)

    # ------------------------------------------------------------------ activations
    def sigmoid_forward(self, X):
        """sigmoid(x) = 1 / (1 + exp(-x)), computed as exp(-log(1 + exp(-x))) so it never overflows."""
        Y = self.xp.exp(-self.xp.logaddexp(0, -X)).astype(X.dtype, copy=False)
        return Y, Y

    def sigmoid_backward(self, dY, saved, needs):
        Y = saved
        return (dY * Y * (1 - Y),)

    def tanh_forward(self, X):
        Y = self.xp.tanh(X)
        return Y, Y

    def tanh_backward(self, dY, saved, needs):
        Y = saved
        return (dY * (1 - Y * Y),)

    def relu_forward(self, X):
        Y = self.xp.maximum(X, 0)
        return Y, Y

    def relu_backward(self, dY, saved, needs):
        return (dY * (saved > 0),)

    def step_forward(self, X):
        """Heaviside step: 1 where x >= 0, else 0 (the perceptron's output)."""
        return (X >= 0).astype(X.dtype), X.shape

    def step_backward(self, dY, saved, needs):
        # NOTE: the step's derivative is zero wherever it exists; the perceptron learns
        # by its own rule, not by gradients.
        return (self.xp.zeros(saved, dtype=dY.dtype),)

    # ------------------------------------------------------------------ normalization, embedding
    # (and the activations leaky_relu and gelu)
    def leaky_relu_forward(self, X, negative_slope=0.01):
        """x where x > 0, else negative_slope * x."""
        return self.xp.where(X > 0, X, X * negative_slope), (X, negative_slope)

    def leaky_relu_backward(self, dY, saved, needs):
        X, negative_slope = saved
        return (self.xp.where(X > 0, dY, dY * negative_slope),)

    def gelu_forward(self, X, approximate="none"):
        """x * Phi(x), Phi the standard normal CDF: 0.5 x (1 + erf(x / sqrt(2))). With
        ``approximate="tanh"``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
        if approximate == "tanh":
            T = self.xp.tanh(_GELU_K * (X + _GELU_C * X**3))
            return 0.5 * X * (1 + T), (X, approximate)
        from scipy.special import erf

        return 0.5 * X * (1 + erf(X / _SQRT_2)), (X, approximate)

    def gelu_backward(self, dY, saved, needs):
        """exact: Phi(x) + x phi(x), phi the normal density; tanh: the derivative of the
        tanh form, 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
        X, approximate = saved
        xp = self.xp
        if approximate == "tanh":
            T = xp.tanh(_GELU_K * (X + _GELU_C * X**3))
            dT = _GELU_K * (1 + 3 * _GELU_C * X * X)
            return (dY * (0.5 * (1 + T) + 0.5 * X * (1 - T * T) * dT),)
        from scipy.special import erf

        Phi = 0.5 * (1 + erf(X / _SQRT_2))
        phi = xp.exp(-0.5 * X * X) / _SQRT_2PI
        return (dY * (Phi + X * phi),)

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
        """Normalise each channel of X (N, C, *) and scale and shift it, as PyTorch's
        batch_norm: Y = (X - mean) / sqrt(var + eps) * weight + bias per channel.

        ``training``: mean and var are the batch statistics over every axis but 1, var the
        biased one; when ``running_mean`` / ``running_var`` (C,) are given they are updated
        in place, running = (1 - f) * running + f * batch, with the unbiased variance
        (M / (M - 1) times the biased one, M = X.size / C); f is ``momentum``, or
        1 / num_batches_tracked (a cumulative mean) when ``momentum`` is None. The 0-d
        int64 ``num_batches_tracked``, when given, is incremented in place first.
        Otherwise the running statistics normalise. weight, bias: (C,) or None.
        """
        xp = self.xp
        axes = (0,) + tuple(range(2, X.ndim))
        if training:
            mean, var = X.mean(axis=axes), X.var(axis=axes)
            if num_batches_tracked is not None:
                num_batches_tracked += 1
            if running_mean is not None:
                f = 1.0 / float(num_batches_tracked) if momentum is None else momentum
                m = X.size // X.shape[1]
                running_mean *= 1 - f
                running_mean += f * mean
                running_var *= 1 - f
                running_var += f * var * (m / (m - 1))
        else:
            mean, var = running_mean, running_var
        invstd = 1 / xp.sqrt(var + eps)
        Xhat = (X - _per_channel(mean, X.ndim)) * _per_channel(invstd, X.ndim)
        Y = Xhat if weight is None else Xhat * _per_channel(weight, X.ndim)
        if bias is not None:
            Y = Y + _per_channel(bias, X.ndim)
        return Y, (Xhat, invstd, weight, training)

    def batch_norm_backward(self, dY, saved, needs):
        """dX with the batch statistics' own gradients in training; dweight, dbias; and,
        when asked for, the gradients of the running statistics (zero in training, where
        the output does not depend on them)."""
        Xhat, invstd, weight, training = saved
        xp = self.xp
        axes = (0,) + tuple(range(2, dY.ndim))
        sum_dy = dY.sum(axis=axes)
        sum_dy_xhat = (dY * Xhat).sum(axis=axes)
        scale = invstd if weight is None else weight * invstd
        dX = d_mean = d_var = None
        if needs[0]:
            if training:
                m = dY.size // dY.shape[1]
                dX = _per_channel(scale, dY.ndim) * (
                    dY
                    - _per_channel(sum_dy / m, dY.ndim)
                    - Xhat * _per_channel(sum_dy_xhat / m, dY.ndim)
                )
            else:
                dX = dY * _per_channel(scale, dY.ndim)
        if needs[3]:
            d_mean = xp.zeros_like(invstd) if training else -scale * sum_dy
        if needs[4]:
            d_var = xp.zeros_like(invstd) if training else -0.5 * scale * invstd * sum_dy_xhat
        dW = sum_dy_xhat if needs[1] else None
        dB = sum_dy if needs[2] else None
        return dX, dW, dB, d_mean, d_var, None

    def layer_norm_forward(self, X, weight, bias, normalized_shape, eps=1e-5):
        """Normalise X over its last len(normalized_shape) axes, then scale and shift:
        Y = (X - mean) / sqrt(var + eps) * weight + bias, var the biased variance.
        weight, bias: ``normalized_shape`` or None."""
        axes = tuple(range(X.ndim - len(normalized_shape), X.ndim))
        mean = X.mean(axis=axes, keepdims=True)
        invstd = 1 / self.xp.sqrt(X.var(axis=axes, keepdims=True) + eps)
        Xhat = (X - mean) * invstd
        Y = Xhat if weight is None else Xhat * weight
        if bias is not None:
            Y = Y + bias
        return Y, (Xhat, invstd, weight, axes)

    def layer_norm_backward(self, dY, saved, needs):
        Xhat, invstd, weight, axes = saved
        lead = tuple(range(dY.ndim - len(axes)))
        dX = None
        if needs[0]:
            G = dY if weight is None else dY * weight  # dL/dXhat
            dX = invstd * (
                G
                - G.mean(axis=axes, keepdims=True)
                - Xhat * (G * Xhat).mean(axis=axes, keepdims=True)
            )
        dW = (dY * Xhat).sum(axis=lead) if needs[1] else None
        dB = dY.sum(axis=lead) if needs[2] else None
        return dX, dW, dB

    def embedding_forward(self, indices, weight, padding_idx=None):
        """Rows of ``weight`` (V, E) picked by the integer ``indices`` (any shape):
        Y (*indices.shape, E). ``padding_idx`` only matters to the backward."""
        return weight[indices], (indices, weight.shape, padding_idx)

    def embedding_backward(self, dY, saved, needs):
        """dweight: each row the sum of dY over the positions that picked it, added in
        position order; the ``padding_idx`` row gets none."""
        indices, shape, padding_idx = saved
        if not needs[1]:
            return None, None
        dW = self.xp.zeros(shape, dtype=dY.dtype)
        self.xp.add.at(dW, indices.reshape(-1), dY.reshape(-1, shape[1]))
        if padding_idx is not None:
            dW[padding_idx] = 0
        return None, dW

    # ------------------------------------------------------------------ matrix products
    def matmul_forward(self, A, B):
        """A (..., m, k) @ B (..., k, n) -> (..., m, n), batch dimensions broadcast."""
        return A @ B, (A, B)

    def matmul_backward(self, dY, saved, needs):
        A, B = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(dY @ B.swapaxes(-1, -2), A.shape)
        if needs[1]:
            dB = self.unbroadcast(A.swapaxes(-1, -2) @ dY, B.shape)
        return dA, dB

    def linear_forward(self, X, W, b, activation=None):
        """Y = act(X @ W.T + b). X (N, in), W (out, in), b (out,) or None -> Y (N, out)."""
        Z = X @ W.T
        if b is not None:
            Z = Z + b
        Y = self._activate(Z, activation)
        return Y, (X, W, Y, activation, b is not None)

    def linear_backward(self, dY, saved, needs):
        X, W, Y, activation, has_bias = saved
        dZ = self._activation_grad(dY, Y, activation)
        dX = dZ @ W if needs[0] else None
        dW = dZ.T @ X if needs[1] else None
        db = dZ.sum(axis=0) if has_bias and needs[2] else None
        return dX, dW, db

    def _activate(self, Z, activation):
        if activation is None:
            return Z
        return getattr(self, activation + "_forward")(Z)[0]

    def _activation_grad(self, dY, Y, activation):
        """dL/dZ from dL/dY for Y = act(Z); each activation's derivative is a function of Y."""
        if activation is None:
            return dY
        return getattr(self, activation + "_backward")(dY, Y, (True,))[0]

    # ------------------------------------------------------------------ reductions and shapes
    def sum_forward(self, X, axis=None, keepdims=False):
        Y = self.xp.asarray(X.sum(axis=axis, keepdims=keepdims))
        return Y, (X.shape, axis, keepdims)

    def sum_backward(self, dY, saved, needs):
        shape, axis, keepdims = saved
        if axis is not None and not keepdims:
            dY = self.xp.expand_dims(dY, axis)
        return (self.xp.broadcast_to(dY, shape),)

    def mean_forward(self, X, axis=None, keepdims=False):
        Y = self.xp.asarray(X.mean(axis=axis, keepdims=keepdims))
        count = X.size // max(Y.size, 1) if X.size else 0
        return Y, (X.shape, axis, keepdims, count)

    def mean_backward(self, dY, saved, needs):
        shape, axis, keepdims, count = saved
        (dX,) = self.sum_backward(dY, (shape, axis, keepdims), needs)
        return (dX / count,)

    def reshape_forward(self, X, shape):
        return X.reshape(shape), X.shape

    def reshape_backward(self, dY, saved, needs):
        return (dY.reshape(saved),)

    def transpose_forward(self, X, axes):
        return X.transpose(axes), axes

    def transpose_backward(self, dY, saved, needs):
        return (dY.transpose(np.argsort(saved)),)

    def stack_forward(self, *Xs, axis=0):
        """Join arrays of one shape along a new ``axis``."""
        return self.xp.stack(Xs, axis=axis), (len(Xs), axis)

    def stack_backward(self, dY, saved, needs):
        n, axis = saved
        return tuple(self.xp.take(dY, k, axis=axis) if needs[k] else None for k in range(n))

    def unstack_forward(self, X, axis=0):
        """Split X along ``axis`` into ``X.shape[axis]`` arrays (views): the inverse of stack.
        One op for a whole sequence, so the backward is one stack rather than one scatter
        into a full-size zero array per step."""
        lead = (slice(None),) * axis
        return tuple(X[lead + (k,)] for k in range(X.shape[axis])), axis

    def unstack_backward(self, dY, saved, needs):
        return (self.xp.stack(dY, axis=saved),)

    def getitem_forward(self, X, index):
        return X[index], (X.shape, index)

    def getitem_backward(self, dY, saved, needs):
        """Scatter dY back into zeros of the input's shape; repeated indices add up."""
        shape, index = saved
        dX = self.xp.zeros(shape, dtype=dY.dtype)
        if _is_basic_index(index):
            dX[index] = dY
        else:
            self.xp.add.at(dX, index, dY)
        return (dX,)

    # ------------------------------------------------------------------ softmax family
    def softmax_forward(self, X, axis=-1):
        """exp(x - max) / sum(exp(x - max)) along ``axis``."""
        E = self.xp.exp(X - X.max(axis=axis, keepdims=True))
        Y = E / E.sum(axis=axis, keepdims=True)
        return Y, (Y, axis)

    def softmax_backward(self, dY, saved, needs):
        Y, axis = saved
        return (Y * (dY - (dY * Y).sum(axis=axis, keepdims=True)),)

    def log_softmax_forward(self, X, axis=-1):
        """x - logsumexp(x) along ``axis``, with the max subtracted first for stability."""
        shifted = X - X.max(axis=axis, keepdims=True)
        Y = shifted - self.xp.log(self.xp.exp(shifted).sum(axis=axis, keepdims=True))
        return Y, (Y, axis)

    def log_softmax_backward(self, dY, saved, needs):
        Y, axis = saved
        return (dY - self.xp.exp(Y) * dY.sum(axis=axis, keepdims=True),)

    # ------------------------------------------------------------------ losses (0-d means)
    def mse_loss_forward(self, P, T):
        """mean((P - T)^2); P and T of one shape."""
        D = P - T
        return self.xp.asarray((D * D).mean()), D

    def mse_loss_backward(self, dY, saved, needs):
        D = saved
        dP = dY * 2 * D / D.size
        return (dP if needs[0] else None, -dP if needs[1] else None)

    def binary_cross_entropy_forward(self, P, T):
        """-mean(T log P + (1 - T) log(1 - P)), each log clamped at -100 as PyTorch does."""
        xp = self.xp
        with np.errstate(divide="ignore"):  # log(0) = -inf, clamped next
            log_p = xp.maximum(xp.log(P), -100)
            log_1mp = xp.maximum(xp.log(1 - P), -100)
        L = -(T * log_p + (1 - T) * log_1mp).mean()
        return xp.asarray(L), (P, T, log_p, log_1mp)

    def binary_cross_entropy_backward(self, dY, saved, needs):
        P, T, log_p, log_1mp = saved
        n = P.size
        dP = dT = None
        if needs[0]:
            dP = dY * (P - T) / self.xp.maximum(P * (1 - P), 1e-12) / n
        if needs[1]:
            dT = dY * (log_1mp - log_p) / n
        return dP, dT

    def binary_cross_entropy_with_logits_forward(self, Z, T):
        """mean(max(z, 0) - z*t + log(1 + exp(-|z|))): BCE of sigmoid(z), never overflowing."""
        xp = self.xp
        L = (xp.maximum(Z, 0) - Z * T + xp.log1p(xp.exp(-xp.abs(Z)))).mean()
        return xp.asarray(L), (Z, T)

    def binary_cross_entropy_with_logits_backward(self, dY, saved, needs):
        Z, T = saved
        n = Z.size
        dZ = dY * (self.sigmoid_forward(Z)[0] - T) / n if needs[0] else None
        dT = dY * -Z / n if needs[1] else None
        return dZ, dT

    def cross_entropy_forward(self, Z, labels):
        """-mean_n log softmax(Z)[n, labels[n]]. Z (N, C) logits, labels (N,) int in [0, C)."""
        logp, _ = self.log_softmax_forward(Z, axis=1)
        n = Z.shape[0]
        L = -logp[self.xp.arange(n), labels].mean()
        return self.xp.asarray(L), (logp, labels)

    def cross_entropy_backward(self, dY, saved, needs):
        """dL/dZ = (softmax(Z) - onehot(labels)) / N."""
        logp, labels = saved
        n = logp.shape[0]
        dZ = self.xp.exp(logp)
        dZ[self.xp.arange(n), labels] -= 1
        return (dZ * (dY / n), None)

    # ------------------------------------------------------------------ convolution and pooling
    def conv2d_forward(self, X, W, b, stride=(1, 1), padding=(0, 0)):
        """Cross-correlation as PyTorch's conv2d. X (N, C, H, W), W (K, C, kh, kw), b (K,) or
        None -> Y (N, K, out_h, out_w), out = (in + 2*pad - k) // stride + 1."""
        Xcol = self._windows(X, W.shape[2:], stride, padding, 0)  # (N, C, out_h, out_w, kh, kw)
        Y = self.xp.tensordot(Xcol, W, axes=([1, 4, 5], [1, 2, 3]))  # (N, out_h, out_w, K)
        Y = Y.transpose(0, 3, 1, 2)
        if b is not None:
            Y = Y + b.reshape(1, -1, 1, 1)
        return self.xp.ascontiguousarray(Y), (X.shape, W, Xcol, stride, padding, b is not None)

    def conv2d_backward(self, dY, saved, needs):
        x_shape, W, Xcol, stride, padding, has_bias = saved
        dX = dW = db = None
        if needs[0]:
            dX = self._scatter_windows(
                x_shape,
                stride,
                padding,
                W.shape[2:],
                lambda i, j: self.xp.tensordot(dY, W[:, :, i, j], axes=([1], [0])).transpose(
                    0, 3, 1, 2
                ),
            )
        if needs[1]:
            dW = self.xp.tensordot(dY, Xcol, axes=([0, 2, 3], [0, 2, 3]))  # (K, C, kh, kw)
        if has_bias and needs[2]:
            db = dY.sum(axis=(0, 2, 3))
        return dX, dW, db

    def max_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        """Max over each window; padding counts as -inf. X (N, C, H, W) -> (N, C, out_h, out_w)."""
        kh, kw = kernel_size
        win = self._windows(X, kernel_size, stride, padding, -np.inf)
        flat = win.reshape(win.shape[:4] + (kh * kw,))
        arg = flat.argmax(axis=-1)  # first maximum in row-major window order
        Y = self.xp.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
        return Y, (X.shape, arg, kernel_size, stride, padding)

    def max_pool2d_backward(self, dY, saved, needs):
        x_shape, arg, (kh, kw), stride, padding = saved
        dX = self._scatter_windows(
            x_shape, stride, padding, (kh, kw), lambda i, j: dY * (arg == i * kw + j)
        )
        return (dX,)

    def avg_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        """Mean over each window, zero padding included in the count (PyTorch's default)."""
        win = self._windows(X, kernel_size, stride, padding, 0)
        return win.mean(axis=(4, 5)), (X.shape, kernel_size, stride, padding)

    def avg_pool2d_backward(self, dY, saved, needs):
        x_shape, (kh, kw), stride, padding = saved
        share = dY / (kh * kw)
        return (self._scatter_windows(x_shape, stride, padding, (kh, kw), lambda i, j: share),)

    def _windows(self, X, kernel_size, stride, padding, pad_value):
        """View of every (kh, kw) window of the padded X: (N, C, out_h, out_w, kh, kw)."""
        xp = self.xp
        (ph, pw), (sy, sx) = padding, stride
        Xp = xp.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
        win = xp.lib.stride_tricks.sliding_window_view(Xp, tuple(kernel_size), axis=(2, 3))
        return win[:, :, ::sy, ::sx]

    def _scatter_windows(self, x_shape, stride, padding, kernel_size, part):
        """dX for a windowed op: for each kernel offset (i, j), add ``part(i, j)`` (shaped
        (N, C, out_h, out_w)) at the input positions that offset reads, then crop the padding."""
        n, c, h, w = x_shape
        (ph, pw), (sy, sx), (kh, kw) = padding, stride, kernel_size
        dXp = None
        for i in range(kh):
            for j in range(kw):
                G = part(i, j)
                if dXp is None:
                    dXp = self.xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=G.dtype)
                out_h, out_w = G.shape[2:]
                dXp[:, :, i : i + sy * out_h : sy, j : j + sx * out_w : sx] += G
        return self.xp.ascontiguousarray(dXp[:, :, ph : ph + h, pw : pw + w])

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, X, p, seed):
        """Inverted dropout: keep each element with probability 1 - p and scale it by 1/(1 - p).
        The mask comes from :func:`dropout_keep_mask` (seed, element index), identical on
        every backend."""
        keep = self.asarray(dropout_keep_mask(seed, X.size, p).reshape(X.shape))
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        mask = keep.astype(X.dtype) * X.dtype.type(scale)
        return X * mask, mask

    def dropout_backward(self, dY, saved, needs):
        return (dY * saved,)

    # ------------------------------------------------------------------ recurrent cells
    def rnn_cell_forward(self, XW, H, W_hh):
        """H_new = tanh(XW + H @ W_hh.T). XW (B, hidden) is the input projection with both
        biases; H (B, hidden); W_hh (hidden, hidden)."""
        H_new = self.xp.tanh(XW + H @ W_hh.T)
        return H_new, (H, W_hh, H_new)

    def rnn_cell_backward(self, dY, saved, needs):
        H, W_hh, H_new = saved
        dZ = dY * (1 - H_new * H_new)
        dH = dZ @ W_hh if needs[1] else None
        dW = dZ.T @ H if needs[2] else None
        return (dZ if needs[0] else None), dH, dW

    def lstm_cell_forward(self, XW, H, C, W_hh):
        """One LSTM step, gates in PyTorch's order i, f, g, o.

        G = XW + H @ W_hh.T (B, 4*hidden); i, f, o = sigmoid; g = tanh;
        C_new = f*C + i*g; H_new = o*tanh(C_new). Returns ((H_new, C_new), saved).
        """
        hidden = H.shape[1]
        G = XW + H @ W_hh.T
        i = self.sigmoid_forward(G[:, :hidden])[0]
        f = self.sigmoid_forward(G[:, hidden : 2 * hidden])[0]
        g = self.xp.tanh(G[:, 2 * hidden : 3 * hidden])
        o = self.sigmoid_forward(G[:, 3 * hidden :])[0]
        C_new = f * C + i * g
        tanh_C = self.xp.tanh(C_new)
        H_new = o * tanh_C
        return (H_new, C_new), (H, C, W_hh, i, f, g, o, tanh_C)

    def lstm_cell_backward(self, dY, saved, needs):
        dH_new, dC_new = dY
        H, C, W_hh, i, f, g, o, tanh_C = saved
        dC = dC_new + dH_new * o * (1 - tanh_C * tanh_C)
        dG = self.xp.concatenate(
            [
                dC * g * i * (1 - i),  # input gate
                dC * C * f * (1 - f),  # forget gate
                dC * i * (1 - g * g),  # cell candidate
                dH_new * tanh_C * o * (1 - o),  # output gate
            ],
            axis=1,
        )
        dH = dG @ W_hh if needs[1] else None
        dC_prev = dC * f if needs[2] else None
        dW = dG.T @ H if needs[3] else None
        return (dG if needs[0] else None), dH, dC_prev, dW

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(
        self, params, grads, bufs, lr, momentum, weight_decay, nesterov=False, skip=None
    ):
        """In place, per parameter, as PyTorch's SGD without dampening:
        g = grad + weight_decay*p; with momentum: buf = momentum*buf + g, then
        g = buf (or g = g + momentum*buf with ``nesterov``); p -= lr*g.
        ``bufs`` holds zero-initialised arrays when momentum is used, else Nones.
        ``skip``: None, or a 0-d bool array; when true, nothing changes."""
        if skip is not None and bool(skip):
            return
        for p, g, buf in zip(params, grads, bufs):
            if weight_decay:
                g = g + weight_decay * p
            if momentum:
                buf *= momentum
                buf += g
                g = g + momentum * buf if nesterov else buf
            p -= lr * g

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
        """In place, per parameter, as PyTorch's Adam (weight decay an L2 term added to the
        gradient) or, with ``decoupled``, as its AdamW (p *= 1 - lr*weight_decay first):
        m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
        p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
        ``skip``: None, or a 0-d bool array; when true, nothing changes."""
        if skip is not None and bool(skip):
            return
        xp = self.xp
        bias1 = 1 - beta1**step
        bias2_sqrt = (1 - beta2**step) ** 0.5
        for p, g, m, v in zip(params, grads, ms, vs):
            if weight_decay and decoupled:
                p *= 1 - lr * weight_decay
            elif weight_decay:
                g = g + weight_decay * p
            m *= beta1
            m += (1 - beta1) * g
            v *= beta2
            v += (1 - beta2) * g * g
            p -= (lr / bias1) * m / (xp.sqrt(v) / bias2_sqrt + eps)

    def clip_grad_norm_update(self, grads, max_norm, norm_type, error_if_nonfinite=False):
        """The ``norm_type``-norm of all ``grads`` together (as if concatenated; ``inf``: the
        largest magnitude), and every gradient scaled in place by
        min(max_norm / (norm + 1e-6), 1), as PyTorch's clip_grad_norm_. The powers are summed
        in float64; the norm, a 0-d array of the gradients' (one) dtype, stays on the device
        and so does the scale factor. ``error_if_nonfinite``: RuntimeError if the norm is
        nan or inf (the only host read), before anything is scaled."""
        xp = self.xp
        dtype = grads[0].dtype
        if norm_type == float("inf"):
            parts = [xp.max(xp.abs(g)).astype(xp.float64) for g in grads if g.size]
            total = xp.max(xp.stack(parts)) if parts else xp.zeros((), xp.float64)
        else:
            parts = [xp.sum(xp.abs(g.astype(xp.float64)) ** norm_type) for g in grads]
            total = xp.sum(xp.stack(parts)) ** (1.0 / norm_type)
        total = xp.asarray(total, dtype=dtype)
        if error_if_nonfinite and not bool(xp.isfinite(total)):
            raise RuntimeError(
                f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                f"{float(total)}, so they cannot be clipped (error_if_nonfinite=True)"
            )
        coef = xp.minimum(dtype.type(max_norm) / (total + dtype.type(1e-6)), dtype.type(1))
        with np.errstate(invalid="ignore"):  # an inf norm makes inf * 0 = nan, as in PyTorch
            for g in grads:
                g *= coef
        return total

    def clip_grad_value_update(self, grads, clip_value):
        """Every gradient clamped in place to [-clip_value, clip_value] (nan stays nan)."""
        for g in grads:
            self.xp.clip(g, -clip_value, clip_value, out=g)

    # ------------------------------------------------------------------ whole-sequence recurrent
    # One layer over a whole sequence as one op: X (T, B, I), initial states (B, H), weights
    # and biases laid out as PyTorch's (W_ih (G*H, I), W_hh (G*H, H), b_ih, b_hh (G*H,) or
    # None; G = 1 for the RNN, 4 for the LSTM with gates i, f, g, o, 3 for the GRU with
    # gates r, z, n). The reference is the lecture's equations, one step after the other.

    def rnn_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh"):
        """h_t = act(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh), act tanh or relu.
        Returns ((Y (T, B, H), h_T (B, H)), saved); Y holds h_1 ... h_T."""
        hs = [H0]
        for t in range(X.shape[0]):
            Z = X[t] @ W_ih.T + hs[-1] @ W_hh.T
            if b_ih is not None:
                Z = Z + b_ih
            if b_hh is not None:
                Z = Z + b_hh
            hs.append(self.xp.tanh(Z) if nonlinearity == "tanh" else self.xp.maximum(Z, 0))
        Y = self.xp.stack(hs[1:])
        saved = (X, H0, W_ih, W_hh, Y, nonlinearity, b_ih is not None, b_hh is not None)
        return (Y, hs[-1]), saved

    def rnn_backward(self, dY, saved, needs):
        """Back-propagation through time: from the last step to the first,
        dZ_t = (dY_t + dh_t) * act'(h_t), dh_{t-1} = dZ_t @ W_hh, and every weight's
        gradient summed over the steps."""
        dY_seq, dh = dY
        X, H0, W_ih, W_hh, Y, nonlinearity, has_b_ih, has_b_hh = saved
        xp = self.xp
        dX = xp.zeros(X.shape, X.dtype)
        dW_ih = xp.zeros(W_ih.shape, W_ih.dtype)
        dW_hh = xp.zeros(W_hh.shape, W_hh.dtype)
        db = xp.zeros(W_hh.shape[0], W_hh.dtype)
        for t in reversed(range(X.shape[0])):
            h_prev = H0 if t == 0 else Y[t - 1]
            dh = dY_seq[t] + dh
            if nonlinearity == "tanh":
                dZ = dh * (1 - Y[t] * Y[t])
            else:
                dZ = dh * (Y[t] > 0)
            dX[t] = dZ @ W_ih
            dW_ih += dZ.T @ X[t]
            dW_hh += dZ.T @ h_prev
            db += dZ.sum(axis=0)
            dh = dZ @ W_hh
        return (
            dX if needs[0] else None,
            dh if needs[1] else None,
            dW_ih if needs[2] else None,
            dW_hh if needs[3] else None,
            db if has_b_ih and needs[4] else None,
            db.copy() if has_b_hh and needs[5] else None,
        )

    def lstm_forward(self, X, H0, C0, W_ih, W_hh, b_ih, b_hh):
        """z_t = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh, cut into gates i, f, g, o;
        i, f, o = sigmoid, g = tanh; c_t = f*c_{t-1} + i*g; h_t = o*tanh(c_t).
        Returns ((Y (T, B, H), h_T, c_T), saved); Y holds h_1 ... h_T."""
        hidden = H0.shape[1]
        h, c = H0, C0
        hs, cs, gates = [], [], []
        for t in range(X.shape[0]):
            Z = X[t] @ W_ih.T + h @ W_hh.T
            if b_ih is not None:
                Z = Z + b_ih
            if b_hh is not None:
                Z = Z + b_hh
            i = self.sigmoid_forward(Z[:, :hidden])[0]
            f = self.sigmoid_forward(Z[:, hidden : 2 * hidden])[0]
            g = self.xp.tanh(Z[:, 2 * hidden : 3 * hidden])
            o = self.sigmoid_forward(Z[:, 3 * hidden :])[0]
            c = f * c + i * g
            h = o * self.xp.tanh(c)
            hs.append(h)
            cs.append(c)
            gates.append((i, f, g, o))
        Y = self.xp.stack(hs)
        saved = (X, H0, C0, W_ih, W_hh, Y, cs, gates, b_ih is not None, b_hh is not None)
        return (Y, h, c), saved

    def lstm_backward(self, dY, saved, needs):
        """Back-propagation through time, from the last step to the first:
        dh = dY_t + dh_t; dc = dc_t + dh * o * (1 - tanh(c_t)^2);
        dZ = [dc g i (1-i), dc c_{t-1} f (1-f), dc i (1-g^2), dh tanh(c_t) o (1-o)];
        dh_{t-1} = dZ @ W_hh, dc_{t-1} = dc * f; every weight's gradient summed over steps."""
        dY_seq, dh, dc = dY
        X, H0, C0, W_ih, W_hh, Y, cs, gates, has_b_ih, has_b_hh = saved
        xp = self.xp
        dX = xp.zeros(X.shape, X.dtype)
        dW_ih = xp.zeros(W_ih.shape, W_ih.dtype)
        dW_hh = xp.zeros(W_hh.shape, W_hh.dtype)
        db = xp.zeros(W_hh.shape[0], W_hh.dtype)
        for t in reversed(range(X.shape[0])):
            i, f, g, o = gates[t]
            h_prev = H0 if t == 0 else Y[t - 1]
            c_prev = C0 if t == 0 else cs[t - 1]
            tanh_c = xp.tanh(cs[t])
            dh = dY_seq[t] + dh
            dc = dc + dh * o * (1 - tanh_c * tanh_c)
            dZ = xp.concatenate(
                [
                    dc * g * i * (1 - i),  # input gate
                    dc * c_prev * f * (1 - f),  # forget gate
                    dc * i * (1 - g * g),  # cell candidate
                    dh * tanh_c * o * (1 - o),  # output gate
                ],
                axis=1,
            )
            dX[t] = dZ @ W_ih
            dW_ih += dZ.T @ X[t]
            dW_hh += dZ.T @ h_prev
            db += dZ.sum(axis=0)
            dh = dZ @ W_hh
            dc = dc * f
        return (
            dX if needs[0] else None,
            dh if needs[1] else None,
            dc if needs[2] else None,
            dW_ih if needs[3] else None,
            dW_hh if needs[4] else None,
            db if has_b_ih and needs[5] else None,
            db.copy() if has_b_hh and needs[6] else None,
        )

    def gru_forward(self, X, H0, W_ih, W_hh, b_ih, b_hh):
        """Gates r, z, n as PyTorch's, with gi = x_t @ W_ih.T + b_ih and
        gh = h_{t-1} @ W_hh.T + b_hh cut into (r, z, n) parts:
        r = sigmoid(gi_r + gh_r); z = sigmoid(gi_z + gh_z); n = tanh(gi_n + r * gh_n);
        h_t = (1 - z) * n + z * h_{t-1}.
        Returns ((Y (T, B, H), h_T), saved); Y holds h_1 ... h_T."""
        hidden = H0.shape[1]
        h = H0
        hs, steps = [], []
        for t in range(X.shape[0]):
            gi = X[t] @ W_ih.T
            gh = h @ W_hh.T
            if b_ih is not None:
                gi = gi + b_ih
            if b_hh is not None:
                gh = gh + b_hh
            r = self.sigmoid_forward(gi[:, :hidden] + gh[:, :hidden])[0]
            z = self.sigmoid_forward(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])[0]
            hn = gh[:, 2 * hidden :]
            n = self.xp.tanh(gi[:, 2 * hidden :] + r * hn)
            h = (1 - z) * n + z * h
            hs.append(h)
            steps.append((r, z, n, hn))
        Y = self.xp.stack(hs)
        saved = (X, H0, W_ih, W_hh, Y, steps, b_ih is not None, b_hh is not None)
        return (Y, h), saved

    def gru_backward(self, dY, saved, needs):
        """Back-propagation through time, from the last step to the first, with
        dh = dY_t + dh_t: dn = dh (1-z) (1-n^2); dz = dh (h_{t-1} - n) z (1-z);
        dr = dn gh_n r (1-r). The input side's gate gradient is [dr, dz, dn], the recurrent
        side's [dr, dz, dn * r] (r multiplies W_hn h + b_hn); dh_{t-1} = dh z + that @ W_hh."""
        dY_seq, dh = dY
        X, H0, W_ih, W_hh, Y, steps, has_b_ih, has_b_hh = saved
        xp = self.xp
        dX = xp.zeros(X.shape, X.dtype)
        dW_ih = xp.zeros(W_ih.shape, W_ih.dtype)
        dW_hh = xp.zeros(W_hh.shape, W_hh.dtype)
        db_ih = xp.zeros(W_ih.shape[0], W_ih.dtype)
        db_hh = xp.zeros(W_hh.shape[0], W_hh.dtype)
        for t in reversed(range(X.shape[0])):
            r, z, n, hn = steps[t]
            h_prev = H0 if t == 0 else Y[t - 1]
            dh = dY_seq[t] + dh
            dn = dh * (1 - z) * (1 - n * n)
            dz = dh * (h_prev - n) * z * (1 - z)
            dr = dn * hn * r * (1 - r)
            dGi = xp.concatenate([dr, dz, dn], axis=1)
            dGh = xp.concatenate([dr, dz, dn * r], axis=1)
            dX[t] = dGi @ W_ih
            dW_ih += dGi.T @ X[t]
            dW_hh += dGh.T @ h_prev
            db_ih += dGi.sum(axis=0)
            db_hh += dGh.sum(axis=0)
            dh = dh * z + dGh @ W_hh
        return (
            dX if needs[0] else None,
            dh if needs[1] else None,
            dW_ih if needs[2] else None,
            dW_hh if needs[3] else None,
            db_ih if has_b_ih and needs[4] else None,
            db_hh if has_b_hh and needs[5] else None,
        )


#: GELU's constants (Python floats, so float32 stays float32): sqrt(2), sqrt(2 pi), and
#: the tanh form's sqrt(2 / pi) and cubic coefficient.
_SQRT_2 = math.sqrt(2)
_SQRT_2PI = math.sqrt(2 * math.pi)
_GELU_K = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def _per_channel(v, ndim):
    """A (C,) array shaped (1, C, 1, ...) to broadcast over an (N, C, *) array of ``ndim``."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _is_basic_index(index) -> bool:
    """True when ``index`` selects without integer arrays (so no element repeats)."""
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)
