"""Input checks shared by the functional ops: each error names the op and what it got."""

from __future__ import annotations

from numbers import Number

from gpunn.errors import DTypeError, ShapeError


def _tensor_type():
    from gpunn.tensor import Tensor

    return Tensor


def check_float(op: str, *xs) -> None:
    """Every Tensor among ``xs`` is float32 or float64, all of one dtype."""
    Tensor = _tensor_type()
    dtype = None
    for i, x in enumerate(xs):
        if x is None or isinstance(x, Number):
            continue
        if not isinstance(x, Tensor):
            raise TypeError(f"{op}: input {i} must be a gpunn Tensor, not {type(x).__name__}")
        if x.dtype.kind != "f":
            raise DTypeError(
                f"{op}: input {i} has dtype {x.dtype}; {op} takes float32 or float64 "
                "(convert with .float())"
            )
        if dtype is None:
            dtype = x.dtype
        elif x.dtype != dtype:
            raise DTypeError(
                f"{op}: inputs mix {dtype} and {x.dtype}; convert one with .float() or .double()"
            )


def check_ndim(op: str, name: str, x, ndims, layout: str = "") -> None:
    ndims = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if x.ndim not in ndims:
        want = " or ".join(f"{n}-d" for n in ndims)
        hint = f" {layout}" if layout else ""
        raise ShapeError(f"{op}: {name} must be {want}{hint}, got shape {x.shape}")


def broadcast_shape(op: str, a, b) -> tuple:
    """The NumPy broadcast of two shapes, or a ShapeError naming both."""
    result = []
    for i in range(1, max(len(a), len(b)) + 1):
        m = a[-i] if i <= len(a) else 1
        n = b[-i] if i <= len(b) else 1
        if m != n and m != 1 and n != 1:
            raise ShapeError(f"{op}: shapes {tuple(a)} and {tuple(b)} do not broadcast")
        result.append(max(m, n) if m and n else 0)
    return tuple(reversed(result))


def pair(op: str, name: str, value) -> tuple[int, int]:
    """An int or a pair of ints as a pair of non-negative ints."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints >= 0, got {value}")
    return value


def shape_of(x) -> tuple:
    return () if isinstance(x, Number) else tuple(x.shape)
