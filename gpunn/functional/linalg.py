"""Matrix products: matmul and the fused linear layer."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.backends.base import ACTIVATIONS
from gpunn.errors import ShapeError
from gpunn.functional.checks import broadcast_shape, check_float, check_ndim


def matmul(a, b):
    """a @ b. 2-D: (m, k) @ (k, n) -> (m, n); more dimensions broadcast as batches;
    a 1-D operand is treated as a row (left) or column (right) vector, as NumPy does."""
    check_float("matmul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(
            f"matmul: both inputs need at least 1 dimension, got {a.shape} and {b.shape}"
        )
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not fit (inner sizes differ)")
    if a.ndim == 1:
        return matmul(a.reshape(1, -1), b).reshape(b.shape[:-2] + b.shape[-1:])
    if b.ndim == 1:
        return matmul(a, b.reshape(-1, 1)).reshape(a.shape[:-1])
    broadcast_shape("matmul", a.shape[:-2], b.shape[:-2])
    return apply("matmul", a, b)


def linear(x, weight, bias=None, activation=None):
    """y = activation(x @ weight.T + bias), as one fused op.

    Args:
        x: (N, in_features), or (..., in_features) for leading batch dimensions.
        weight: (out_features, in_features).
        bias: (out_features,) or None.
        activation: None, "relu", "sigmoid" or "tanh" (applied in the same pass).
    Returns:
        (N, out_features), or (..., out_features).
    """
    check_float("linear", x, weight, bias)
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_ndim("linear", "weight", weight, 2, "(out_features, in_features)")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(
            f"linear: input of shape {x.shape} does not fit weight of shape {weight.shape} "
            f"(expected last dimension {weight.shape[1]})"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"linear: bias of shape {bias.shape} for weight of shape {weight.shape}")
    if x.ndim != 2:
        lead = x.shape[:-1]
        y = apply("linear", x.reshape(-1, x.shape[-1]), weight, bias, activation=activation)
        return y.reshape(lead + (weight.shape[0],))
    return apply("linear", x, weight, bias, activation=activation)
