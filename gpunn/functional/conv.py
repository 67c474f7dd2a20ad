"""2-D convolution and pooling on NCHW tensors."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.errors import ShapeError
from gpunn.functional.checks import check_float, check_ndim, pair


def _out_size(op, size, k, s, p):
    out = (size + 2 * p - k) // s + 1
    if out < 1:
        raise ShapeError(
            f"{op}: a {k}-wide window with padding {p} does not fit an input of size {size}"
        )
    return out


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """Cross-correlation as PyTorch's conv2d.

    Args:
        x: (N, C, H, W). weight: (K, C, kh, kw). bias: (K,) or None.
        stride, padding: an int or an (y, x) pair.
    Returns:
        (N, K, out_h, out_w) with out = (in + 2*padding - k) // stride + 1.
    """
    check_float("conv2d", x, weight, bias)
    check_ndim("conv2d", "input", x, 4, "(N, C, H, W)")
    check_ndim("conv2d", "weight", weight, 4, "(out_channels, in_channels, kh, kw)")
    stride, padding = pair("conv2d", "stride", stride), pair("conv2d", "padding", padding)
    if min(stride) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {stride}")
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"conv2d: input of shape {x.shape} has {x.shape[1]} channels but weight of shape "
            f"{weight.shape} expects {weight.shape[1]}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ShapeError(f"conv2d: bias of shape {bias.shape} for weight of shape {weight.shape}")
    for d in (0, 1):
        _out_size("conv2d", x.shape[2 + d], weight.shape[2 + d], stride[d], padding[d])
    return apply("conv2d", x, weight, bias, stride=stride, padding=padding)


def _pool_args(op, x, kernel_size, stride, padding):
    check_float(op, x)
    check_ndim(op, "input", x, 4, "(N, C, H, W)")
    kernel = pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None else pair(op, "stride", stride)
    padding = pair(op, "padding", padding)
    if min(kernel) < 1 or min(stride) < 1:
        raise ValueError(f"{op}: kernel_size and stride must be >= 1, got {kernel}, {stride}")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half of kernel_size {kernel}")
    for d in (0, 1):
        _out_size(op, x.shape[2 + d], kernel[d], stride[d], padding[d])
    return kernel, stride, padding


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over each window. x (N, C, H, W) -> (N, C, out_h, out_w); stride defaults to
    kernel_size; padding counts as -inf."""
    k, s, p = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    return apply("max_pool2d", x, kernel_size=k, stride=s, padding=p)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window (zero padding counted, as PyTorch's default)."""
    k, s, p = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    return apply("avg_pool2d", x, kernel_size=k, stride=s, padding=p)
