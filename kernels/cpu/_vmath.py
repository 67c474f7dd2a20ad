"""exp, expm1, log, log1p, sigmoid and tanh that LLVM can vectorise, in float32 and float64.

Numba lowers ``math.exp`` to a libm call per element, which keeps a loop scalar; this
llvmlite build has no SVML. These versions are plain arithmetic (a range reduction, a
polynomial, and building 2**n from its bits), so a loop over them compiles to AVX
instructions. Accuracy: within about 2 ulp of the correctly rounded result over the whole
range (tests/test_numba_vmath.py checks it against float64), with inf, -inf and NaN
handled as libm does; results below the smallest normal number may flush to zero.

Each function is a Numba overload with one body per float type, so float32 stays float32
(every constant is cast to the argument's type). Call them from kernels only.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


# ---------------------------------------------------------------------- bit casts
@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret an int32 (int64) as a float32 (float64)."""
    if bits == types.int32:
        sig, llty = types.float32(bits), ir.FloatType()
    elif bits == types.int64:
        sig, llty = types.float64(bits), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return sig, codegen


@intrinsic
def _float_to_bits(typingctx, x):
    """Reinterpret a float32 (float64) as an int32 (int64)."""
    if x == types.float32:
        sig, llty = types.int32(x), ir.IntType(32)
    elif x == types.float64:
        sig, llty = types.int64(x), ir.IntType(64)
    else:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llty)

    return sig, codegen


@intrinsic
def select(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM select: no branch, so loops over it vectorise and
    inlining it leaves no control flow behind."""
    if not isinstance(cond, types.Boolean) or a != b:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return a(cond, a, b), codegen


# ---------------------------------------------------------------------- exp core
# exp(x) = 2**n * exp(r), n = round(x / ln 2), |r| <= ln(2)/2, ln 2 split in two parts so
# that n * LN2_HI is exact. expm1(r) = r + r^2/2! + ... : degree 7 for float32 (error
# < 2e-8 relative), degree 13 for float64 (< 2e-17).
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(2, 14))


@njit(inline="always")
def _exp_core32(x):
    """(scale, q, top): exp(x) = scale * (1 + q) * (2 if top else 1), x clamped to range."""
    xc = min(max(x, np.float32(-87.5)), np.float32(88.75))
    n = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
    r = (xc - n * np.float32(0.693145751953125)) - n * np.float32(1.428606765330187e-06)
    q = r + r * r * (
        np.float32(_INV_FACT[0])
        + r
        * (
            np.float32(_INV_FACT[1])
            + r
            * (
                np.float32(_INV_FACT[2])
                + r
                * (
                    np.float32(_INV_FACT[3])
                    + r * (np.float32(_INV_FACT[4]) + r * np.float32(_INV_FACT[5]))
                )
            )
        )
    )
    # n reaches 128 just below the overflow threshold: split off one factor 2
    top = n > np.float32(127.0)
    scale = _bits_to_float(np.int32((np.int32(min(n, np.float32(127.0))) + 127) << 23))
    return scale, q, top


@njit(inline="always")
def _exp_core64(x):
    xc = min(max(x, -709.0), 709.79)
    n = np.floor(xc * 1.4426950408889634 + 0.5)
    r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10
    p = _INV_FACT[11]
    p = _INV_FACT[10] + r * p
    p = _INV_FACT[9] + r * p
    p = _INV_FACT[8] + r * p
    p = _INV_FACT[7] + r * p
    p = _INV_FACT[6] + r * p
    p = _INV_FACT[5] + r * p
    p = _INV_FACT[4] + r * p
    p = _INV_FACT[3] + r * p
    p = _INV_FACT[2] + r * p
    p = _INV_FACT[1] + r * p
    p = _INV_FACT[0] + r * p
    q = r + r * r * p
    top = n > 1023.0
    scale = _bits_to_float(np.int64((np.int32(min(n, 1023.0)) + 1023) << 52))
    return scale, q, top


def vexp(x):
    """e**x (use inside kernels)."""
    raise NotImplementedError("vexp is callable from Numba kernels only")


def vexpm1(x):
    """e**x - 1, accurate near 0 (use inside kernels)."""
    raise NotImplementedError("vexpm1 is callable from Numba kernels only")


def vlog(x):
    """Natural logarithm (use inside kernels)."""
    raise NotImplementedError("vlog is callable from Numba kernels only")


def vlog1p(x):
    """log(1 + x), accurate near 0 (use inside kernels)."""
    raise NotImplementedError("vlog1p is callable from Numba kernels only")


def vsigmoid(x):
    """1 / (1 + e**-x), never overflowing (use inside kernels)."""
    raise NotImplementedError("vsigmoid is callable from Numba kernels only")


def vtanh(x):
    """Hyperbolic tangent (use inside kernels)."""
    raise NotImplementedError("vtanh is callable from Numba kernels only")


@overload(vexp, inline="always")
def _vexp(x):
    if x == types.float32:

        def impl(x):
            s, q, top = _exp_core32(x)
            y = s + s * q
            y = select(top, y * np.float32(2.0), y)
            y = select(x < np.float32(-87.5), np.float32(0.0), y)
            y = select(x > np.float32(88.72284), np.float32(np.inf), y)
            return select(x != x, x, y)

        return impl
    if x == types.float64:

        def impl(x):
            s, q, top = _exp_core64(x)
            y = s + s * q
            y = select(top, y * 2.0, y)
            y = select(x < -709.0, 0.0, y)
            y = select(x > 709.782712893384, np.inf, y)
            return select(x != x, x, y)

        return impl


@overload(vexpm1, inline="always")
def _vexpm1(x):
    if x == types.float32:

        def impl(x):
            s, q, top = _exp_core32(x)
            y = s * q + (s - np.float32(1.0))  # = 2**n * expm1(r) + (2**n - 1), exact at n = 0
            y = select(top, (s + s * q) * np.float32(2.0), y)
            y = select(x < np.float32(-87.5), np.float32(-1.0), y)
            y = select(x > np.float32(88.72284), np.float32(np.inf), y)
            return select(x != x, x, y)

        return impl
    if x == types.float64:

        def impl(x):
            s, q, top = _exp_core64(x)
            y = s * q + (s - 1.0)
            y = select(top, (s + s * q) * 2.0, y)
            y = select(x < -709.0, -1.0, y)
            y = select(x > 709.782712893384, np.inf, y)
            return select(x != x, x, y)

        return impl


# ---------------------------------------------------------------------- log
# log(x) = e*ln 2 + log(m), m in [sqrt(1/2), sqrt(2)), log(m) = 2 atanh(s), s = (m-1)/(m+1),
# |s| <= 0.1716: 2 (s + s^3/3 + s^5/5 + ...), to s^9 for float32, s^21 for float64.
@overload(vlog, inline="always")
def _vlog(x):
    if x == types.float32:

        def impl(x):
            tiny = x < np.float32(1.1754944e-38)
            xs = select(tiny, x * np.float32(8388608.0), x)  # denormals: scale by 2**23 first
            bits = _float_to_bits(xs)
            e = np.float32(np.int32(((bits >> 23) & 0xFF) - 127))
            m = _bits_to_float(np.int32((bits & 0x7FFFFF) | 0x3F800000))
            big = m > np.float32(1.4142135)
            m = select(big, m * np.float32(0.5), m)
            e = select(big, e + np.float32(1.0), e)
            e = select(tiny, e - np.float32(23.0), e)
            s = (m - np.float32(1.0)) / (m + np.float32(1.0))
            z = s * s
            p = np.float32(1.0 / 9.0)
            p = np.float32(1.0 / 7.0) + z * p
            p = np.float32(1.0 / 5.0) + z * p
            p = np.float32(1.0 / 3.0) + z * p
            log_m = s * np.float32(2.0) + s * np.float32(2.0) * z * p
            y = e * np.float32(0.693145751953125) + (log_m + e * np.float32(1.428606765330187e-06))
            y = select(x == np.float32(0.0), np.float32(-np.inf), y)
            y = select(x < np.float32(0.0), np.float32(np.nan), y)
            y = select(x == np.float32(np.inf), x, y)
            return select(x != x, x, y)

        return impl
    if x == types.float64:

        def impl(x):
            tiny = x < 2.2250738585072014e-308
            xs = select(tiny, x * 4503599627370496.0, x)  # 2**52
            bits = _float_to_bits(xs)
            e = np.float64(np.int32(((bits >> 52) & 0x7FF) - 1023))
            m = _bits_to_float(np.int64((bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000))
            big = m > 1.4142135623730951
            m = select(big, m * 0.5, m)
            e = select(big, e + 1.0, e)
            e = select(tiny, e - 52.0, e)
            s = (m - 1.0) / (m + 1.0)
            z = s * s
            p = 1.0 / 21.0
            p = 1.0 / 19.0 + z * p
            p = 1.0 / 17.0 + z * p
            p = 1.0 / 15.0 + z * p
            p = 1.0 / 13.0 + z * p
            p = 1.0 / 11.0 + z * p
            p = 1.0 / 9.0 + z * p
            p = 1.0 / 7.0 + z * p
            p = 1.0 / 5.0 + z * p
            p = 1.0 / 3.0 + z * p
            log_m = 2.0 * s + 2.0 * s * z * p
            y = e * 6.93147180369123816490e-01 + (log_m + e * 1.90821492927058770002e-10)
            y = select(x == 0.0, -np.inf, y)
            y = select(x < 0.0, np.nan, y)
            y = select(x == np.inf, x, y)
            return select(x != x, x, y)

        return impl


def _log1p_impl(T):
    one = T(1.0)

    def impl(x):
        w = one + x
        # log(w) * x / (w - 1) corrects the rounding of 1 + x (Goldberg's trick)
        y = vlog(w) * (x / (w - one))
        y = select(w == one, x, y)
        return select(w != np.inf, y, w)

    return impl


@overload(vlog1p, inline="always")
def _vlog1p(x):
    if x == types.float32:
        return _log1p_impl(np.float32)
    if x == types.float64:
        return _log1p_impl(np.float64)


# ---------------------------------------------------------------------- sigmoid, tanh
def _sigmoid_impl(T):
    one = T(1.0)
    zero = T(0.0)

    def impl(x):
        z = vexp(-abs(x))  # in (0, 1]: never overflows
        s = one / (one + z)
        return select(x >= zero, s, z * s)

    return impl


@overload(vsigmoid, inline="always")
def _vsigmoid(x):
    if x == types.float32:
        return _sigmoid_impl(np.float32)
    if x == types.float64:
        return _sigmoid_impl(np.float64)


def _tanh_impl(T, clamp):
    two, zero, big = T(2.0), T(0.0), T(clamp)

    def impl(x):
        # tanh|x| = e / (e + 2), e = expm1(2|x|): accurate near 0; |x| is clamped where
        # tanh rounds to 1 anyway
        a = min(abs(x), big)
        e = vexpm1(two * a)
        t = e / (e + two)
        y = select(x >= zero, t, -t)
        return select(x != x, x, y)

    return impl


@overload(vtanh, inline="always")
def _vtanh(x):
    if x == types.float32:
        return _tanh_impl(np.float32, 10.0)
    if x == types.float64:
        return _tanh_impl(np.float64, 20.0)
