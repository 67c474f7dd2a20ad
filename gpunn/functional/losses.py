"""Losses, each reduced to a 0-d mean."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.errors import DTypeError, ShapeError
from gpunn.functional.checks import check_float, check_ndim


def _same_shape(op, input, target):
    check_float(op, input, target)
    if input.shape != target.shape:
        raise ShapeError(
            f"{op}: input of shape {input.shape} and target of shape {target.shape} differ"
        )


def mse_loss(input, target):
    """mean((input - target)^2). Both of one shape."""
    _same_shape("mse_loss", input, target)
    return apply("mse_loss", input, target)


def binary_cross_entropy(input, target):
    """-mean(t log p + (1 - t) log(1 - p)) for probabilities ``input`` in [0, 1]."""
    _same_shape("binary_cross_entropy", input, target)
    return apply("binary_cross_entropy", input, target)


def binary_cross_entropy_with_logits(input, target):
    """binary_cross_entropy(sigmoid(input), target), computed without overflow."""
    _same_shape("binary_cross_entropy_with_logits", input, target)
    return apply("binary_cross_entropy_with_logits", input, target)


def cross_entropy(input, target):
    """-mean log softmax(input)[n, target[n]].

    Args:
        input: (N, C) logits, float.
        target: (N,) class indices, an integer tensor with values in [0, C).
    """
    op = "cross_entropy"
    check_float(op, input)
    check_ndim(op, "input", input, 2, "(N, C) logits")
    if target.dtype.kind not in "iu":
        raise DTypeError(
            f"{op}: target must hold integer class indices, got dtype {target.dtype} "
            "(convert with .long())"
        )
    if target.shape != input.shape[:1]:
        raise ShapeError(
            f"{op}: target of shape {target.shape} for input of shape {input.shape} "
            f"(expected ({input.shape[0]},))"
        )
    if target.backend != input.backend:
        from gpunn.autograd import backend_of

        backend_of(op, (input, target))
    target.backend_object.check_labels(op, target.data, input.shape[1])
    return apply(op, input, target)
