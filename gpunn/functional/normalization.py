"""Batch normalisation and layer normalisation, with PyTorch's signatures and defaults."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.errors import DTypeError, ShapeError
from gpunn.functional.checks import check_float


def _check_vector(op, name, v, size, of):
    if v is not None and tuple(v.shape) != (size,):
        raise ShapeError(f"{op}: {name} of shape {v.shape} for {of} (expected ({size},))")


def batch_norm(
    input,
    running_mean,
    running_var,
    weight=None,
    bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    num_batches_tracked=None,
):
    """Batch normalisation per channel, as PyTorch's ``batch_norm``.

    Args:
        input: (N, C) or (N, C, *): C channels.
        running_mean, running_var: (C,) or None (both or neither). Outside training they
            normalise; in training they are updated in place from the batch statistics,
            running = (1 - momentum) * running + momentum * batch, with the unbiased
            variance of the batch.
        weight, bias: (C,) or None.
        training: normalise with the batch statistics (mean and biased variance over
            every axis but 1).
        momentum: the running statistics' update factor; None for a cumulative mean
            (factor 1 / num_batches_tracked, which then must be given).
        num_batches_tracked: a 0-d int64 counter incremented in place in training (the
            layers' buffer; not in PyTorch's functional signature).
    Returns:
        A tensor of input's shape.
    """
    op = "batch_norm"
    check_float(op, input, weight, bias, running_mean, running_var)
    if input.ndim < 2:
        raise ShapeError(f"{op}: input must be (N, C) or (N, C, *), got shape {input.shape}")
    channels = input.shape[1]
    of = f"input of shape {input.shape} ({channels} channels)"
    for name, v in (
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        _check_vector(op, name, v, channels, of)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(
            f"{op}: running_mean and running_var must be given outside training "
            "(training=False normalises with them)"
        )
    if training and input.size // max(channels, 1) <= 1:
        raise ValueError(
            f"{op}: expected more than 1 value per channel when training, got input of "
            f"shape {input.shape}"
        )
    if num_batches_tracked is not None and (
        num_batches_tracked.dtype.kind not in "iu" or num_batches_tracked.ndim != 0
    ):
        raise DTypeError(
            f"{op}: num_batches_tracked must be a 0-d integer tensor, got dtype "
            f"{num_batches_tracked.dtype} and shape {num_batches_tracked.shape}"
        )
    if momentum is None and training and running_mean is not None and num_batches_tracked is None:
        raise ValueError(f"{op}: momentum=None (a cumulative mean) needs num_batches_tracked")
    return apply(
        op,
        input,
        weight,
        bias,
        running_mean,
        running_var,
        num_batches_tracked,
        training=bool(training),
        momentum=None if momentum is None else float(momentum),
        eps=float(eps),
    )


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the last ``len(normalized_shape)`` axes, as PyTorch's
    ``layer_norm``: (x - mean) / sqrt(var + eps) * weight + bias, var the biased variance.

    Args:
        input: (*, *normalized_shape).
        normalized_shape: an int or a tuple of ints.
        weight, bias: of shape ``normalized_shape``, or None.
    Returns:
        A tensor of input's shape.
    """
    op = "layer_norm"
    check_float(op, input, weight, bias)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or not all(isinstance(n, int) and n > 0 for n in shape):
        raise ValueError(f"{op}: normalized_shape must hold positive ints, got {normalized_shape}")
    if input.ndim < len(shape) or tuple(input.shape[input.ndim - len(shape) :]) != shape:
        raise ShapeError(
            f"{op}: input of shape {input.shape} does not end in normalized_shape {shape}"
        )
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != shape:
            raise ShapeError(f"{op}: {name} of shape {v.shape}, expected normalized_shape {shape}")
    return apply(op, input, weight, bias, normalized_shape=shape, eps=float(eps))
