"""Argument types for the kernels' signature tables (``SIGNATURES`` in each kernel module),
as Numba type strings. ``{T}`` stands for the float dtype a warm-up compiles for; arrays
are C-contiguous, as the launchers hand them over."""

T = "{T}"  # a scalar of the dtype
A1 = "{T}[::1]"
A2 = "{T}[:, ::1]"
A3 = "{T}[:, :, ::1]"
A4 = "{T}[:, :, :, ::1]"
INT = "int64"  # a Python int
FLOAT = "float64"  # a Python float
BOOL = "boolean"  # a Python bool
