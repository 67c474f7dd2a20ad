"""The CUDA backend: CuPy arrays, cuBLAS for matrix products, gpunn's own kernels for the rest.

Everything a training step spends time in is a kernel of ``gpunn.kernels.cuda`` (named after
the op: ``relu_forward<float>``), launched through ``gpunn.kernels.cuda.launch``; matrix
products are cuBLAS GEMMs through gpunn's own binding (``gpunn.cuda.cublas``, which a CUDA
graph can capture; CuPy's where it does not load); the bookkeeping ops (reductions by axis, reshapes,
stacking, indexing) run on CuPy's own GPU routines or inherit the reference code of
``Backend``, which CuPy runs on the device; ``gpunn.backends.kinds`` names the kind and the
routine of every op. The one op that touches the host is ``getitem`` with an integer
or boolean index array: the index is copied to the host and checked there, since CuPy would
wrap out-of-range indices silently.

Launches are asynchronous. The only other host round trips are the ones the caller asks for
(``Tensor.numpy()``, ``.item()``, ``synchronize()``), and batch norm's cumulative average
(``momentum=None`` reads the batch counter, as PyTorch does): cross-entropy validates its
labels, and embedding its indices, inside the kernel and report a bad one through host-mapped
memory, which the backend reads at its next synchronisation (or right away with
``gpunn.cuda.set_eager_checks``).
"""

from __future__ import annotations

import functools

import numpy as np

from gpunn.backends.base import Backend
from gpunn.backends.cupy_layers import LayerOps
from gpunn.errors import BackendError
from gpunn.kernels import lowp
from gpunn.kernels.cuda import launch as L
from gpunn.kernels.cuda.launch import BLOCK  # noqa: F401  (public: threads per block)
from gpunn.kernels.cuda.loader import KernelLoader
from gpunn.kernels.cuda.workspace import memory_error

try:
    import cupy

    _IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the environment
    cupy = None
    _IMPORT_ERROR = e

_c = L.contiguous


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else ()


class CupyBackend(LayerOps, Backend):
    """CuPy arrays on the current CUDA device; see the module docstring."""

    name = "cupy"
    xp = cupy

    def __init__(self):
        if cupy is None:
            if isinstance(_IMPORT_ERROR, ModuleNotFoundError) and _IMPORT_ERROR.name == "cupy":
                raise BackendError("CuPy is not installed: pip install 'gpunn[cuda13]' (or cuda12)")
            raise BackendError(f"cupy: CuPy failed to import: {_IMPORT_ERROR}")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:
            raise BackendError(f"cupy: no CUDA device found ({e})") from None
        if count < 1:
            raise BackendError("cupy: no CUDA device found")
        device = cupy.cuda.Device()
        self.device_name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"].decode()
        self._max_blocks = int(device.attributes["MultiProcessorCount"]) * 32
        self._kernels = KernelLoader()
        blas, blas_error = _load_blas()
        self._dev = L.Device(self._kernels, self._max_blocks, blas, blas_error)
        #: Raise bad cross-entropy labels before the launch (one host sync per call) instead
        #: of at the next synchronisation. Set with gpunn.cuda.set_eager_checks.
        self.eager_checks = False
        from gpunn.cuda import settings as _cuda_settings

        _cuda_settings._apply(self)

    # ------------------------------------------------------------------ arrays and devices
    @property
    def capturing(self):
        """The name of the step being captured into a CUDA graph (set by
        :func:`gpunn.cuda.graphed` for the capture), or None. While it is set, every path
        that would wait for the device or move data between host and device raises
        :class:`~gpunn.errors.CaptureError` naming the op instead."""
        return self._dev.capturing

    @capturing.setter
    def capturing(self, name) -> None:
        self._dev.capturing = name

    def asarray(self, data, dtype=None):
        """A device array; host data is copied to the device (asynchronously, staged
        through pinned memory)."""
        if not isinstance(data, cupy.ndarray):
            self._dev.refuse_capture("asarray", "it copies host data to the device")
        return cupy.asarray(data, dtype=dtype)

    def to_numpy(self, X) -> np.ndarray:
        """A host copy of device array ``X`` (waits for the work that produces it)."""
        self._dev.refuse_capture(
            "to_numpy", "it reads a device value on the host (.numpy(), .item(), float(t))"
        )
        out = cupy.asnumpy(X)
        self._dev.workspace.raise_pending()
        return out

    def is_native(self, X) -> bool:
        return isinstance(X, cupy.ndarray)

    def unscale_grads(self, grads, inv):
        """In place, g *= inv for every gradient (CuPy's own kernels, capturable: in a
        captured step ``inv`` is replayed and read from its device word), and the found-inf
        flag as a 0-d bool array on the device: no host read (the float16 GradScaler's)."""
        for g in grads:
            g *= L.scalar_operand(inv, g.dtype)
        if not grads:
            return cupy.zeros((), bool)
        return ~cupy.stack([cupy.isfinite(g).all() for g in grads]).all()

    def synchronize(self) -> None:
        """Wait for the current stream, then report any error a kernel flagged."""
        self._dev.refuse_capture("synchronize", "it waits for the device")
        cupy.cuda.get_current_stream().synchronize()
        self._dev.workspace.raise_pending()

    def check_labels(self, op: str, labels, num_classes: int) -> None:
        """The cross-entropy kernel checks its labels itself; a bad one is raised at the next
        synchronisation as IndexError. With ``eager_checks`` they are checked here (a sync)."""
        self._dev.workspace.raise_pending()
        if self.eager_checks:
            self._dev.refuse_capture(op, "eager label checks read the labels on the host")
            super().check_labels(op, labels, num_classes)

    def check_indices(self, op: str, indices, size: int) -> None:
        """The embedding kernel checks its indices itself, as cross-entropy its labels."""
        self._dev.workspace.raise_pending()
        if self.eager_checks:
            self._dev.refuse_capture(op, "eager index checks read the indices on the host")
            super().check_indices(op, indices, size)

    # ------------------------------------------------------------------ elementwise
    def add_forward(self, A, B):
        return L.binary(self._dev, "add_forward", A, B), (_shape(A), _shape(B))

    def sub_forward(self, A, B):
        return L.binary(self._dev, "sub_forward", A, B), (_shape(A), _shape(B))

    def sub_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(L.unary(self._dev, "neg_forward", dY), b_shape) if needs[1] else None,
        )

    def mul_forward(self, A, B):
        return L.binary(self._dev, "mul_forward", A, B), (A, B)

    def mul_backward(self, dY, saved, needs):
        A, B = saved
        mul = functools.partial(L.binary, self._dev, "mul_forward")
        return (
            self.unbroadcast(mul(dY, B), _shape(A)) if needs[0] else None,
            self.unbroadcast(mul(dY, A), _shape(B)) if needs[1] else None,
        )

    def div_forward(self, A, B):
        Y = L.binary(self._dev, "div_forward", A, B)
        return Y, (A, B, Y)

    def div_backward(self, dY, saved, needs):
        A, B, Y = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(L.binary(self._dev, "div_forward", dY, B), _shape(A))
        if needs[1]:
            dB = self.unbroadcast(L.div_backward(self._dev, dY, Y, B), B.shape)
        return dA, dB

    def pow_forward(self, A, B):
        Y = L.binary(self._dev, "pow_forward", A, B)
        return Y, (A, B, Y)

    def pow_backward(self, dY, saved, needs):
        """dA = dY * B * A**(B-1); dB = dY * Y * log(A), 0 where A <= 0; one pass for both."""
        A, B, Y = saved
        if not (needs[0] or needs[1]):
            return None, None
        dA, dB = L.pow_backward(self._dev, dY, Y, A, B, needs)
        return (
            self.unbroadcast(dA, _shape(A)) if needs[0] else None,
            self.unbroadcast(dB, _shape(B)) if needs[1] else None,
        )

    def neg_forward(self, X):
        return L.unary(self._dev, "neg_forward", X), None

    def neg_backward(self, dY, saved, needs):
        return (L.unary(self._dev, "neg_forward", dY),)

    def exp_forward(self, X):
        Y = L.unary(self._dev, "exp_forward", X)
        return Y, Y

    def exp_backward(self, dY, saved, needs):
        return (L.map2(self._dev, "exp_backward", dY, saved),)

    def log_forward(self, X):
        return L.unary(self._dev, "log_forward", X), X

    def log_backward(self, dY, saved, needs):
        return (L.map2(self._dev, "log_backward", dY, saved),)

    def cast_forward(self, X, dtype):
        return L.cast_forward(self._dev, X, np.dtype(dtype)), X.dtype

    def cast_backward(self, dY, saved, needs):
        return (L.cast_forward(self._dev, dY, saved),)

    # ------------------------------------------------------------------ activations
    def sigmoid_forward(self, X):
        Y = L.unary(self._dev, "sigmoid_forward", X)
        return Y, Y

    def sigmoid_backward(self, dY, saved, needs):
        return (L.map2(self._dev, "sigmoid_backward", dY, saved),)

    def tanh_forward(self, X):
        Y = L.unary(self._dev, "tanh_forward", X)
        return Y, Y

    def tanh_backward(self, dY, saved, needs):
        return (L.map2(self._dev, "tanh_backward", dY, saved),)

    def relu_forward(self, X):
        Y = L.unary(self._dev, "relu_forward", X)
        return Y, Y

    def relu_backward(self, dY, saved, needs):
        return (L.map2(self._dev, "relu_backward", dY, saved),)

    def step_forward(self, X):
        return L.unary(self._dev, "step_forward", X), X.shape

    # ------------------------------------------------------------------ reductions and shapes
    def mean_backward(self, dY, saved, needs):
        shape, axis, keepdims, count = saved
        (dX,) = self.sum_backward(dY, (shape, axis, keepdims), needs)
        return (L.binary(self._dev, "div_forward", dX, count),)

    def transpose_backward(self, dY, saved, needs):
        return (dY.transpose(tuple(np.argsort(saved))),)

    def stack_backward(self, dY, saved, needs):
        """Views of dY, one per input: no copy."""
        n, axis = saved
        lead = (slice(None),) * axis
        return tuple(dY[lead + (k,)] if needs[k] else None for k in range(n))

    def getitem_forward(self, X, index):
        """X[index]; integer or boolean index arrays are checked on the host (a copy)."""
        items = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, (np.ndarray, cupy.ndarray, list)) for i in items):
            self._dev.refuse_capture("getitem", "an index array is checked on the host")
        index = L.getitem_index(index, X.shape)
        return X[index], (X.shape, index)

    # ------------------------------------------------------------------ softmax family
    def softmax_forward(self, X, axis=-1):
        return L.rows_forward(self._dev, "softmax_forward", X, axis)

    def softmax_backward(self, dY, saved, needs):
        return (L.rows_backward(self._dev, "softmax_backward", dY, saved),)

    def log_softmax_forward(self, X, axis=-1):
        return L.rows_forward(self._dev, "log_softmax_forward", X, axis)

    def log_softmax_backward(self, dY, saved, needs):
        return (L.rows_backward(self._dev, "log_softmax_backward", dY, saved),)

    def cross_entropy_forward(self, Z, labels):
        """log-softmax and the mean NLL in one launch; bad labels are flagged by the kernel."""
        labels = _c(labels if labels.dtype == np.int64 else labels.astype(np.int64))
        loss, logp = L.cross_entropy_forward(self._dev, _c(Z), labels)
        return loss, (logp, labels)

    def cross_entropy_backward(self, dY, saved, needs):
        logp, labels = saved
        return (L.cross_entropy_backward(self._dev, dY, logp, labels) if needs[0] else None, None)

    # ------------------------------------------------------------------ losses
    def mse_loss_forward(self, P, T):
        P, T = _c(P), _c(T)
        D = cupy.empty(P.shape, P.dtype)
        return L.loss_forward(self._dev, "mse_loss_forward", P.size, (P, T), (D,)), D

    def mse_loss_backward(self, dY, saved, needs):
        return L.mse_loss_backward(self._dev, dY, saved, needs)

    def binary_cross_entropy_forward(self, P, T):
        P, T = _c(P), _c(T)
        return L.loss_forward(self._dev, "binary_cross_entropy_forward", P.size, (P, T)), (P, T)

    def binary_cross_entropy_backward(self, dY, saved, needs):
        stem = "binary_cross_entropy_backward"
        return L.pair_loss_backward(self._dev, stem, dY, *saved, needs)

    def binary_cross_entropy_with_logits_forward(self, Z, T):
        Z, T = _c(Z), _c(T)
        stem = "binary_cross_entropy_with_logits_forward"
        return L.loss_forward(self._dev, stem, Z.size, (Z, T)), (Z, T)

    def binary_cross_entropy_with_logits_backward(self, dY, saved, needs):
        stem = "binary_cross_entropy_with_logits_backward"
        return L.pair_loss_backward(self._dev, stem, dY, *saved, needs)


def _load_blas():
    """(gpunn's cuBLAS binding, "") or (None, why it is not used): it did not load, or its
    products of small integer-valued matrices (plain and transposed, float32 and float64;
    batched with a shared operand; float16 and bfloat16 GemmEx), which every method gives
    exactly, differ from CuPy's. ``GPUNN_CUBLAS=cupy`` turns it off. Without it, products
    go through CuPy's cuBLAS and no step with a product can be captured."""
    import os

    from gpunn.cuda import cublas
    from gpunn.errors import CublasError

    if os.environ.get("GPUNN_CUBLAS", "").lower() == "cupy":
        return None, "GPUNN_CUBLAS=cupy turned gpunn's cuBLAS binding off"
    try:
        blas = cublas.for_cupy()
        stream = cupy.cuda.get_current_stream().ptr
        for dtype in (np.float32, np.float64):
            A = cupy.arange(12, dtype=dtype).reshape(3, 4) - 5
            B = cupy.arange(20, dtype=dtype).reshape(5, 4) % 7
            for a, b in ((A, B.T), (B, A.T), (A.T, A)):
                C = cupy.empty((a.shape[0], b.shape[1]), dtype)
                blas.gemm(a, b, C, stream)
                if not bool((C == cupy.dot(a, b)).all()):
                    raise CublasError(f"its product {a.shape} @ {b.shape} ({dtype.__name__}) "
                                      "differs from CuPy's")  # fmt: skip
            A3 = cupy.stack([A, A[::-1], -A])  # (3, 3, 4) @ a shared (4, 5)
            C3 = cupy.empty((3, 3, 5), dtype)
            blas.gemm_batched(A3, cupy.broadcast_to(B.T, (3, 4, 5)), C3, stream)
            if not bool((C3 == cupy.matmul(A3, B.T)).all()):
                raise CublasError(f"its batched product ({dtype.__name__}) differs from CuPy's")
        A, B = A.astype(np.float32), B.astype(np.float32)
        for low in ("float16", "bfloat16"):
            C = cupy.empty((3, 5), np.float32)
            a, b = lowp.gemm_bits(cupy, A, low), lowp.gemm_bits(cupy, B.T, low)
            blas.gemm_ex(a, b, C, low, stream)
            if not bool((C == cupy.dot(A, B.T)).all()):
                raise CublasError(f"its {low} GemmEx product differs from CuPy's")
        return blas, ""
    except CublasError as e:
        return None, f"gpunn's cuBLAS binding is not used: {e}"


def _oom_guard(name, fn):
    """Turn CuPy's out-of-memory error inside ``fn`` into a DeviceMemoryError naming ``name``."""
    oom = cupy.cuda.memory.OutOfMemoryError if cupy is not None else ()

    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except oom as e:
            raise memory_error(name, e) from e

    return guarded


# Every op, inherited or not, and the allocating utilities report running out of GPU memory
# as a DeviceMemoryError naming the op, the bytes asked for and the bytes free.
for _name in [*Backend.ops(), "asarray", "copy", "zeros", "full", "astype"]:
    setattr(CupyBackend, _name, _oom_guard(_name, getattr(CupyBackend, _name)))
del _name
