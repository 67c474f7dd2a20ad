"""Reductions, reshapes, transposes and indexing."""

from __future__ import annotations

from math import prod

from gpunn.autograd import apply
from gpunn.errors import ShapeError
from gpunn.functional.checks import check_float


def _norm_axis(op, x, axis):
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -x.ndim <= a < max(x.ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of shape {x.shape}")
    axes = tuple(sorted(a % max(x.ndim, 1) for a in axes))
    if len(set(axes)) != len(axes):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return axes[0] if len(axes) == 1 else axes


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (an int, a tuple, or None for all)."""
    check_float("sum", x)
    return apply("sum", x, axis=_norm_axis("sum", x, axis), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (an int, a tuple, or None for all)."""
    check_float("mean", x)
    return apply("mean", x, axis=_norm_axis("mean", x, axis), keepdims=keepdims)


def reshape(x, shape):
    """The same values in a new shape; one dimension may be -1."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    known = prod(s for s in shape if s != -1)
    if shape.count(-1) > 1 or (
        -1 in shape and (known == 0 or x.size % known) or -1 not in shape and known != x.size
    ):
        raise ShapeError(f"reshape: cannot reshape a tensor of shape {x.shape} into {shape}")
    if -1 in shape:
        shape = tuple(x.size // known if s == -1 else s for s in shape)
    if shape == x.shape:
        return x
    return apply("reshape", x, shape=shape)


def transpose(x, axes=None):
    """Permute axes as NumPy does; None reverses them."""
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: {axes} is not a permutation of the axes of shape {x.shape}")
    return apply("transpose", x, axes=axes)


def getitem(x, index):
    """x[index]: ints, slices, None, Ellipsis and integer arrays (as NumPy)."""
    from gpunn.tensor import Tensor

    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    if x.dtype.kind != "f":
        be = x.backend_object
        return Tensor(be.asarray(x.data[index]), be)  # (NumPy gives a scalar for one element)
    try:
        return apply("getitem", x, index=index)
    except IndexError as e:
        raise IndexError(f"getitem: {e} (tensor of shape {x.shape})") from None


def stack(tensors, axis=0):
    """Join tensors of one shape along a new axis."""
    from gpunn.functional.checks import check_float

    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    check_float("stack", *tensors)
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(f"stack: tensors must share one shape, got {sorted(shapes)}")
    axis = axis % (tensors[0].ndim + 1)
    return apply("stack", *tensors, axis=axis)


def unstack(x, axis=0):
    """Split ``x`` along ``axis`` into a tuple of ``x.shape[axis]`` tensors (the inverse of
    :func:`stack`). Cheaper than indexing step by step: its backward is one stack."""
    check_float("unstack", x)
    if x.ndim == 0:
        raise ShapeError("unstack: needs a tensor with at least one dimension")
    axis = axis % x.ndim
    outs = apply("unstack", x, axis=axis)
    return outs if isinstance(outs, tuple) else (outs,)
