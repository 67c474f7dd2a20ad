"""Numba @njit CPU kernels, one module per op family."""
