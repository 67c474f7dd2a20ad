"""gpunn's exceptions. Each names the op or layer and the offending shapes, dtypes or backends."""


class GpunnError(Exception):
    """Base class of gpunn's errors."""


class BackendError(GpunnError, RuntimeError):
    """A backend is unknown or cannot run here, or inputs live on different backends."""


class ShapeError(GpunnError, ValueError):
    """Input shapes do not fit an op or layer."""


class DTypeError(GpunnError, TypeError):
    """An input's dtype does not fit an op (integers into a float op, float32 with float64)."""


class GraphError(GpunnError, RuntimeError):
    """Misuse of the autograd graph (backward twice through a freed graph, non-scalar root)."""


class CheckpointError(GpunnError, ValueError):
    """A file is missing, truncated or not a gpunn checkpoint, or a state_dict does not fit."""


class DeviceMemoryError(GpunnError, MemoryError):
    """The GPU ran out of memory: names the op, the bytes asked for and the bytes free."""


class CaptureError(GpunnError, RuntimeError):
    """A step cannot be captured into a CUDA graph (host work, a non-capturable op) or
    replayed (inputs of another shape, dtype or backend, changed hyper-parameters)."""


class CublasError(BackendError):
    """gpunn's cuBLAS binding cannot load or a cuBLAS call failed (names the call)."""
