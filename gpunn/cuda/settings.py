"""Settings of the CUDA (``"cupy"``) backend. Importing this module needs neither CuPy nor
a GPU; a setting made before the backend starts is applied when it starts."""

from __future__ import annotations

import numpy as np

_settings = {"tf32": False, "eager_checks": False}


def set_tf32(flag: bool) -> None:
    """Allow (``True``) or forbid (``False``, the default) TF32 tensor cores in float32
    matrix products on the cupy backend: ``matmul``, ``linear``, ``conv2d``'s GEMMs and the
    recurrent cells' products.

    Accuracy: TF32 rounds each operand to 10 explicit mantissa bits (float32 keeps 23)
    and accumulates in float32, so a product's relative error grows from about 1e-7 to
    about 1e-3 (typically 3e-4 relative in the Frobenius norm for unit-scale data); the
    range stays float32's. Results then no longer match the NumPy reference to gpunn's
    float32 test tolerances (rtol 1e-4). float64 products are never affected.
    """
    _settings["tf32"] = bool(flag)
    _apply_tf32()


def tf32_enabled() -> bool:
    """Whether float32 matrix products may use TF32 (see :func:`set_tf32`)."""
    return _settings["tf32"]


def set_eager_checks(flag: bool) -> None:
    """Check cross-entropy labels before the launch (``True``: one host synchronisation per
    call) instead of inside the kernel (``False``, the default: a bad label makes that loss
    NaN and raises IndexError at the backend's next synchronisation, e.g. ``loss.item()``)."""
    _settings["eager_checks"] = bool(flag)
    be = _started_backend()
    if be is not None:
        be.eager_checks = bool(flag)


def _started_backend():
    from gpunn.backends import _instances

    return _instances.get("cupy")


def _apply_tf32() -> None:
    """Tell the started backend's cuBLAS binding and CuPy's own products (used where the
    binding does not load)."""
    be = _started_backend()
    if be is None:
        return  # applied by _apply when the backend starts
    be._dev.tf32 = _settings["tf32"]
    from cupy._core import _routines_linalg as linalg

    mode = linalg.COMPUTE_TYPE_TF32 if _settings["tf32"] else linalg.COMPUTE_TYPE_FP32
    linalg.set_compute_type(np.float32, mode)


def _apply(backend) -> None:
    """Called by CupyBackend.__init__: bring a new backend in line with the settings."""
    from cupy._core import _routines_linalg as linalg

    backend.eager_checks = _settings["eager_checks"]
    backend._dev.tf32 = _settings["tf32"]
    mode = linalg.COMPUTE_TYPE_TF32 if _settings["tf32"] else linalg.COMPUTE_TYPE_FP32
    linalg.set_compute_type(np.float32, mode)
