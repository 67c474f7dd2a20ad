"""Elementwise arithmetic: add, sub, mul, div, pow, neg, exp, log, cast.

Every array is 1-D and C-contiguous; the backend flattens and broadcasts. In a binary
kernel each operand either has ``out.size`` elements or a single one (a scalar operand,
broadcast here without a copy). Operands of every other broadcast are expanded by the
backend first.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1
from gpunn.kernels.cpu._vmath import vexp, vlog
from numba import prange


@kernel(parallel=True)
def add_forward(a, b, out):
    n = out.size
    if a.size == n and b.size == n:
        for i in prange(n):
            out[i] = a[i] + b[i]
    elif b.size == 1:
        s = b[0]
        for i in prange(n):
            out[i] = a[i] + s
    else:
        s = a[0]
        for i in prange(n):
            out[i] = s + b[i]


@kernel(parallel=True)
def sub_forward(a, b, out):
    n = out.size
    if a.size == n and b.size == n:
        for i in prange(n):
            out[i] = a[i] - b[i]
    elif b.size == 1:
        s = b[0]
        for i in prange(n):
            out[i] = a[i] - s
    else:
        s = a[0]
        for i in prange(n):
            out[i] = s - b[i]


@kernel(parallel=True)
def mul_forward(a, b, out):
    n = out.size
    if a.size == n and b.size == n:
        for i in prange(n):
            out[i] = a[i] * b[i]
    elif b.size == 1:
        s = b[0]
        for i in prange(n):
            out[i] = a[i] * s
    else:
        s = a[0]
        for i in prange(n):
            out[i] = s * b[i]


@kernel(parallel=True)
def div_forward(a, b, out):
    n = out.size
    if a.size == n and b.size == n:
        for i in prange(n):
            out[i] = a[i] / b[i]
    elif b.size == 1:
        s = b[0]
        for i in prange(n):
            out[i] = a[i] / s
    else:
        s = a[0]
        for i in prange(n):
            out[i] = s / b[i]


@kernel(parallel=True)
def div_backward(dy, y, b, db):
    """db = -dy * y / b (the divisor's gradient before unbroadcasting)."""
    n = db.size
    if b.size == n:
        for i in prange(n):
            db[i] = -dy[i] * y[i] / b[i]
    else:
        s = b[0]
        for i in prange(n):
            db[i] = -dy[i] * y[i] / s


@kernel(parallel=True)
def pow_forward(a, b, out):
    n = out.size
    if a.size == n and b.size == n:
        for i in prange(n):
            out[i] = a[i] ** b[i]
    elif b.size == 1:
        s = b[0]
        if s == 2:
            for i in prange(n):
                out[i] = a[i] * a[i]
        else:
            for i in prange(n):
                out[i] = a[i] ** s
    else:
        s = a[0]
        for i in prange(n):
            out[i] = s ** b[i]


@kernel(parallel=True)
def pow_backward(dy, a, b, y, da, db):
    """da = dy * b * a**(b - 1); db = dy * y * log(a), 0 where a <= 0. ``a`` and ``b``
    hold ``dy.size`` elements or one; ``da`` / ``db`` are empty when not wanted."""
    n = dy.size
    one = dy.dtype.type(1)
    zero = dy.dtype.type(0)
    if da.size:
        if a.size == n and b.size == n:
            for i in prange(n):
                da[i] = dy[i] * b[i] * a[i] ** (b[i] - one)
        elif b.size == 1:
            s = b[0]
            for i in prange(n):
                da[i] = dy[i] * s * a[i] ** (s - one)
        else:
            s = a[0]
            for i in prange(n):
                da[i] = dy[i] * b[i] * s ** (b[i] - one)
    if db.size:
        if a.size == n:
            for i in prange(n):
                la = vlog(a[i]) if a[i] > zero else zero
                db[i] = dy[i] * y[i] * la
        else:
            la = vlog(a[0]) if a[0] > zero else zero
            for i in prange(n):
                db[i] = dy[i] * y[i] * la


@kernel(parallel=True)
def neg_forward(x, out):
    for i in prange(out.size):
        out[i] = -x[i]


@kernel(parallel=True)
def exp_forward(x, out):
    for i in prange(out.size):
        out[i] = vexp(x[i])


@kernel(parallel=True)
def log_forward(x, out):
    for i in prange(out.size):
        out[i] = vlog(x[i])


@kernel(parallel=True)
def cast_forward(x, out):
    """out = x converted to out's dtype."""
    for i in prange(out.size):
        out[i] = x[i]


__all__ = [
    "add_forward",
    "cast_forward",
    "div_backward",
    "div_forward",
    "exp_forward",
    "log_forward",
    "mul_forward",
    "neg_forward",
    "pow_backward",
    "pow_forward",
    "sub_forward",
]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "add_forward": [(A1, A1, A1)],
    "sub_forward": [(A1, A1, A1)],
    "mul_forward": [(A1, A1, A1)],
    "div_forward": [(A1, A1, A1)],
    "div_backward": [(A1, A1, A1, A1)],
    "pow_forward": [(A1, A1, A1)],
    "pow_backward": [(A1, A1, A1, A1, A1, A1)],
    "neg_forward": [(A1, A1)],
    "exp_forward": [(A1, A1)],
    "log_forward": [(A1, A1)],
    "cast_forward": [(A1, "float32[::1]"), (A1, "float64[::1]")],
}
