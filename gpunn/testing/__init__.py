"""Helpers that hold a backend to the NumPy reference; the test suite uses them, and users
can run them on their own models before switching backends."""

from gpunn.testing.cases import OP_CASES, UPDATE_CASES, OpCase, UpdateCase, run_case, run_update
from gpunn.testing.compare import compare_backends, compare_op, compare_update

__all__ = [
    "OP_CASES",
    "OpCase",
    "UPDATE_CASES",
    "UpdateCase",
    "compare_backends",
    "compare_op",
    "compare_update",
    "run_case",
    "run_update",
]
