"""Rounding float32 arrays to the 16-bit formats of mixed precision, written against an
array module ``xp`` (NumPy or CuPy), so the CPU tests check what the GPU path computes.

bfloat16 is the top half of a float32 (sign, 8 exponent bits, 7 mantissa bits); neither
NumPy nor CuPy has it as a dtype, so its values travel as uint16 bit patterns, which cuBLAS
reads as ``CUDA_R_16BF``.
"""

from __future__ import annotations


def bfloat16_bits(xp, X):
    """uint16 bit patterns of float32 ``X`` rounded to the nearest bfloat16, ties to even
    (as CUDA's __float2bfloat16 and PyTorch's conversion); nan stays a quiet nan."""
    bits = xp.ascontiguousarray(X, dtype=xp.float32).view(xp.uint32)
    lsb = (bits >> 16) & 1
    rounded = ((bits + (0x7FFF + lsb)) >> 16).astype(xp.uint16)
    nan = xp.uint16(0x7FC0) | ((bits >> 16) & 0x8000).astype(xp.uint16)
    return xp.where(X != X, nan, rounded)


def bfloat16_values(xp, bits):
    """float32 values of uint16 bfloat16 bit patterns (exact)."""
    return (bits.astype(xp.uint32) << 16).view(xp.float32)


def gemm_bits(xp, X, dtype: str):
    """The C-contiguous operand a lower-precision GEMM reads for float32 ``X``: float16
    values for ``dtype`` "float16", bfloat16 patterns as uint16 for "bfloat16"."""
    if dtype == "float16":
        return X.astype(xp.float16, order="C")
    return bfloat16_bits(xp, X)


def round_to(xp, X, dtype: str):
    """float32 ``X`` rounded to ``dtype`` ("bfloat16" or "float16") and back to float32:
    the values a lower-precision product reads."""
    if dtype == "float16":
        return X.astype(xp.float16).astype(xp.float32)
    return bfloat16_values(xp, bfloat16_bits(xp, X)).reshape(X.shape)
