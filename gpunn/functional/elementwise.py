"""Elementwise arithmetic with NumPy broadcasting: add, sub, mul, div, pow, neg, exp, log."""

from __future__ import annotations

from numbers import Number

from gpunn.autograd import apply
from gpunn.functional.checks import broadcast_shape, check_float, shape_of


def _binary(op, a, b):
    if isinstance(a, Number) and isinstance(b, Number):
        raise TypeError(f"{op}: at least one input must be a gpunn Tensor")
    check_float(op, a, b)
    broadcast_shape(op, shape_of(a), shape_of(b))
    return apply(op, a, b)


def add(a, b):
    """a + b, broadcast. Either may be a Python scalar."""
    return _binary("add", a, b)


def sub(a, b):
    """a - b, broadcast."""
    return _binary("sub", a, b)


def mul(a, b):
    """a * b, broadcast."""
    return _binary("mul", a, b)


def div(a, b):
    """a / b, broadcast."""
    return _binary("div", a, b)


def pow(a, b):  # noqa: A001  (the operator's name)
    """a ** b, broadcast."""
    return _binary("pow", a, b)


def neg(x):
    """-x."""
    check_float("neg", x)
    return apply("neg", x)


def exp(x):
    """e ** x."""
    check_float("exp", x)
    return apply("exp", x)


def log(x):
    """Natural logarithm."""
    check_float("log", x)
    return apply("log", x)
