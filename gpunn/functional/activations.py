"""Activations and the softmax family."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.functional.checks import check_float


def _unary(op, x):
    check_float(op, x)
    return apply(op, x)


def sigmoid(x):
    """1 / (1 + exp(-x)), stable for large |x|."""
    return _unary("sigmoid", x)


def tanh(x):
    """Hyperbolic tangent."""
    return _unary("tanh", x)


def relu(x):
    """max(x, 0)."""
    return _unary("relu", x)


def step(x):
    """Heaviside step: 1 where x >= 0, else 0. Its gradient is zero (the perceptron
    learns by its own rule)."""
    return _unary("step", x)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x."""
    check_float("leaky_relu", x)
    return apply("leaky_relu", x, negative_slope=float(negative_slope))


def gelu(x, approximate="none"):
    """x * Phi(x), Phi the standard normal CDF (through erf); ``approximate="tanh"``:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    check_float("gelu", x)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply("gelu", x, approximate=approximate)


def _axis(op, x, axis):
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor of shape {x.shape}")
    return axis % x.ndim


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis`` (the maximum is subtracted first)."""
    check_float("softmax", x)
    return apply("softmax", x, axis=_axis("softmax", x, axis))


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along ``axis``."""
    check_float("log_softmax", x)
    return apply("log_softmax", x, axis=_axis("log_softmax", x, axis))
