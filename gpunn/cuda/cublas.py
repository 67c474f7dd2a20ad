"""A thin ctypes binding of cuBLAS: the matrix products of the cupy backend.

Why not CuPy's own: CuPy refuses every cuBLAS call while a stream is capturing (its wrapper
of ``cublasSetStream`` raises NotImplementedError then), so a step with a matrix product
could not be captured into a CUDA graph. cuBLAS itself supports capture when it is given a
workspace of the caller's, so this binding keeps its own handle, points it at the stream of
each call and at a workspace that lives as long as the backend (longer than every graph),
and sets the math mode (TF32 or not, :func:`gpunn.cuda.set_tf32`).

The cupy backend runs every float32/float64 2-D product through it, captured or not, so a
captured step runs exactly the GEMMs of an eager step. Arrays are row-major; cuBLAS is
column-major, and a row-major (m, n) array is the column-major (n, m) matrix of its
transpose, so C = A @ B is computed as C^T = B^T @ A^T: B's memory is cuBLAS's first
operand. A transposed view (F-contiguous) is passed untransposed with op T instead of
copied.

Importing this module needs neither cuBLAS nor a GPU; :func:`load_library` finds the
library (through ``cuda.pathfinder``, which knows where NVIDIA's wheels and CUDA toolkits
put it, then the system's loader) and raises :class:`~gpunn.errors.CublasError` saying
where it looked.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

from gpunn.errors import CublasError

OP_N, OP_T = 0, 1  # cublasOperation_t
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3  # cublasMath_t
#: Bytes of the workspace handed to cuBLAS (what NVIDIA recommends for Hopper).
WORKSPACE_BYTES = 32 << 20
INT32_MAX = 2**31 - 1

#: cudaDataType_t of the operands of cublasGemmEx, and its compute type and algorithm.
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
COMPUTE_32F, GEMM_DEFAULT = 68, -1
#: The lower precisions gemm_ex reads: name -> (NumPy dtype of the operands' bits, type).
LOW_TYPES = {
    "float16": (np.dtype(np.float16), CUDA_R_16F),
    "bfloat16": (np.dtype(np.uint16), CUDA_R_16BF),
}

_c = ctypes
_P, _I, _L = _c.c_void_p, _c.c_int, _c.c_longlong
_GEMM_ARGS = (_P, _I, _I, _I, _I, _I, _P, _P, _I, _P, _I, _P, _P, _I)
# handle, op A, op B, m, n, k, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC, count
_BATCHED_ARGS = (_P, _I, _I, _I, _I, _I, _P, _P, _I, _L, _P, _I, _L, _P, _P, _I, _L, _I)
# handle, op A, op B, m, n, k, alpha, A, type, lda, B, type, ldb, beta, C, type, ldc, compute, algo
_EX_ARGS = (_P, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I, _I)
#: The functions used, with their C argument types (cublas_api.h); each returns a status.
SIGNATURES = {
    "cublasCreate_v2": (_c.POINTER(_c.c_void_p),),
    "cublasSetStream_v2": (_c.c_void_p, _c.c_void_p),
    "cublasSetWorkspace_v2": (_c.c_void_p, _c.c_void_p, _c.c_size_t),
    "cublasSetMathMode": (_c.c_void_p, _c.c_int),
    "cublasSgemm_v2": _GEMM_ARGS,
    "cublasDgemm_v2": _GEMM_ARGS,
    "cublasSgemmStridedBatched": _BATCHED_ARGS,
    "cublasDgemmStridedBatched": _BATCHED_ARGS,
    "cublasGemmEx": _EX_ARGS,
}
#: dtype -> (GEMM function, its strided-batched form, ctypes type of alpha and beta).
GEMMS = {
    np.dtype(np.float32): ("cublasSgemm_v2", "cublasSgemmStridedBatched", _c.c_float),
    np.dtype(np.float64): ("cublasDgemm_v2", "cublasDgemmStridedBatched", _c.c_double),
}
_STATUS = {
    1: "NOT_INITIALIZED",
    3: "ALLOC_FAILED",
    7: "INVALID_VALUE",
    8: "ARCH_MISMATCH",
    11: "MAPPING_ERROR",
    13: "EXECUTION_FAILED",
    14: "INTERNAL_ERROR",
    15: "NOT_SUPPORTED",
    16: "LICENSE_ERROR",
}


def load_library():
    """The cuBLAS shared library as a ctypes.CDLL; CublasError saying where it looked."""
    tried = []
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        path = load_nvidia_dynamic_lib("cublas").abs_path
        if path:
            return ctypes.CDLL(path)
        tried.append("cuda.pathfinder: loaded, but without a path")
    except ImportError:
        tried.append("cuda.pathfinder: not installed")
    except Exception as e:  # DynamicLibNotFoundError and OSError
        tried.append(f"cuda.pathfinder: {e}".splitlines()[0])
    for name in (ctypes.util.find_library("cublas"), "libcublas.so.13", "libcublas.so.12"):
        if name is None:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            tried.append(f"{name}: {e}")
    raise CublasError("cuBLAS library not found (" + "; ".join(tried) + ")")


def _address(X) -> int:
    """Device address of a CuPy array's first element (of a NumPy array's, for tests)."""
    data = X.data
    return data.ptr if hasattr(data, "ptr") else X.ctypes.data


def operand(X):
    """(op, leading dimension) that hands row-major 2-D ``X`` to cuBLAS without a copy, or
    None when its strides allow neither (the caller copies it). Rows of contiguous
    elements go as they are (op N, ld = row stride); a transposed view (columns of
    contiguous elements) goes as op T, ld = column stride."""
    rows, cols = X.shape
    item = X.itemsize
    s0, s1 = X.strides
    if X.size == 0:  # nothing is read
        return OP_N, max(1, cols)
    if cols <= 1 or s1 == item:  # rows of contiguous elements
        if rows <= 1:
            return OP_N, max(1, cols)
        if s0 % item == 0 and s0 // item >= max(1, cols):
            return OP_N, s0 // item
    if rows <= 1 or s0 == item:  # columns of contiguous elements
        if cols <= 1:
            return OP_T, max(1, rows)
        if s1 % item == 0 and s1 // item >= max(1, rows):
            return OP_T, s1 // item
    return None


class Cublas:
    """One cuBLAS handle with its workspace; :meth:`gemm` runs one product on a stream.

    ``lib``: the library (:func:`load_library`, or a stand-in that records calls);
    ``workspace``: (device address, bytes) of memory that must outlive every graph that
    captures a product of this handle (the backend keeps it for its whole life)."""

    def __init__(self, lib, workspace: tuple[int, int]):
        self.lib = lib
        self._fns = {}
        for name, argtypes in SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise CublasError(f"cuBLAS library has no {name}") from None
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
            self._fns[name] = fn
        handle = ctypes.c_void_p()
        self._call("cublasCreate_v2", ctypes.byref(handle))
        self.handle = handle.value
        self.workspace = workspace
        self._stream = None  # the stream last bound (cuBLAS keeps it)
        self._math = None
        self._scalars = {t: (ctype(1.0), ctype(0.0)) for t, (_, _, ctype) in GEMMS.items()}

    def _call(self, name: str, *args) -> None:
        status = self._fns[name](*args)
        if status:
            label = _STATUS.get(status, "unknown status")
            raise CublasError(f"{name} failed: CUBLAS_STATUS_{label} ({status})")

    def bind(self, stream: int, tf32: bool) -> None:
        """Point the handle at ``stream`` (a cudaStream_t as int) and the workspace, and set
        the math mode. Setting a stream resets cuBLAS's workspace to its own pool, so the
        workspace is set again after every change of stream."""
        if stream != self._stream:
            self._call("cublasSetStream_v2", self.handle, stream)
            self._call("cublasSetWorkspace_v2", self.handle, *self.workspace)
            self._stream = stream
        mode = TF32_TENSOR_OP_MATH if tf32 else DEFAULT_MATH
        if mode != self._math:
            self._call("cublasSetMathMode", self.handle, mode)
            self._math = mode

    def _layout(self, A, B, C, name: str):
        """(m, n, k, (op, ld) of A, (op, ld) of B, ldc) of row-major 2-D C = A @ B: A (m, k)
        and B (k, n) as :func:`operand` accepts them, C with contiguous rows. ValueError
        naming ``name`` otherwise."""
        (m, k), (k2, n) = A.shape, B.shape
        if k2 != k or tuple(C.shape) != (m, n):
            raise ValueError(f"{name}: {A.shape} @ {B.shape} into {C.shape}")
        a, b = operand(A), operand(B)
        if a is None or b is None:
            raise ValueError(f"{name}: operand strides {A.strides} / {B.strides} need a copy")
        ldc = C.strides[0] // C.itemsize if m > 1 else max(1, n)
        if (n > 1 and C.strides[1] != C.itemsize) or ldc < max(1, n):
            raise ValueError(f"{name}: the output's strides {C.strides} are not row-major")
        if max(m, n, k, a[1], b[1], ldc) > INT32_MAX:
            raise ValueError(f"{name}: {(m, k)} @ {(k, n)} exceeds cuBLAS's 32-bit sizes")
        return m, n, k, a, b, ldc

    def _check_float(self, name: str, *arrays) -> None:
        if not all(X.dtype == arrays[0].dtype for X in arrays) or arrays[0].dtype not in GEMMS:
            shapes = " @ ".join(f"{X.shape} {X.dtype}" for X in arrays[:2])
            raise ValueError(f"{name}: {shapes} into {arrays[2].shape} {arrays[2].dtype}")

    def _start(self, C, m: int, n: int, k: int, stream: int, tf32: bool) -> bool:
        """Whether an (m, k) @ (k, n) product into C has work for cuBLAS: none when C is
        empty, and C is zeroed here when k is 0; else the handle is bound to ``stream``."""
        if m == 0 or n == 0:
            return False
        if k == 0:
            C.fill(0)
            return False
        self.bind(stream, tf32 and C.dtype == np.float32)
        return True

    def gemm(self, A, B, C, stream: int, tf32: bool = False) -> None:
        """C = A @ B on ``stream``: A (m, k), B (k, n), C (m, n) row-major 2-D arrays of one
        float dtype (float32 or float64); A and B as :func:`operand` accepts them, C with
        contiguous rows. Nothing is checked on the device; shapes are checked here."""
        self._check_float("gemm", A, B, C)
        m, n, k, a, b, ldc = self._layout(A, B, C, "gemm")
        if not self._start(C, m, n, k, stream, tf32):
            return
        fn, _, _ = GEMMS[np.dtype(C.dtype)]
        one, zero = self._scalars[np.dtype(C.dtype)]
        # row-major C = A @ B is column-major C^T = B^T @ A^T: B's memory goes first
        self._call(fn, self.handle, b[0], a[0], n, m, k, ctypes.addressof(one),
                   _address(B), b[1], _address(A), a[1], ctypes.addressof(zero), _address(C),
                   ldc)  # fmt: skip

    def gemm_batched(self, A, B, C, stream: int, tf32: bool = False) -> None:
        """C[i] = A[i] @ B[i] for every i on ``stream``, as one strided-batched GEMM: A
        (batch, m, k), B (batch, k, n), C (batch, m, n) of one float dtype; each operand's
        matrices as :func:`operand` accepts them, one batch stride apart (0: the same
        matrix for every i, a broadcast); C's matrices contiguous and consecutive."""
        self._check_float("gemm_batched", A, B, C)
        if not (A.ndim == B.ndim == C.ndim == 3 and A.shape[0] == B.shape[0] == C.shape[0]):
            raise ValueError(f"gemm_batched: {A.shape} @ {B.shape} into {C.shape}")
        count = C.shape[0]
        if count == 0 or C.size == 0:
            return
        m, n, k, a, b, ldc = self._layout(A[0], B[0], C[0], "gemm_batched")
        item = C.itemsize
        strides = [X.strides[0] // item for X in (A, B, C)]
        if any(X.strides[0] % item for X in (A, B, C)) or strides[2] != m * n or ldc != n:
            raise ValueError(f"gemm_batched: batch strides {[X.strides[0] for X in (A, B, C)]}")
        if count > INT32_MAX:
            raise ValueError(f"gemm_batched: {count} products exceed cuBLAS's 32-bit count")
        if not self._start(C, m, n, k, stream, tf32):
            return
        _, fn, _ = GEMMS[np.dtype(C.dtype)]
        one, zero = self._scalars[np.dtype(C.dtype)]
        self._call(fn, self.handle, b[0], a[0], n, m, k, ctypes.addressof(one),
                   _address(B), b[1], strides[1], _address(A), a[1], strides[0],
                   ctypes.addressof(zero), _address(C), ldc, strides[2], count)  # fmt: skip

    def gemm_ex(self, A, B, C, low: str, stream: int) -> None:
        """C = A @ B on ``stream`` with float32 accumulation: A (m, k) and B (k, n) the bits
        of ``low`` values (float16 arrays, or uint16 arrays of bfloat16 patterns: see
        :data:`LOW_TYPES`), C (m, n) float32; one cublasGemmEx."""
        bits, code = LOW_TYPES[low]
        if not (A.dtype == B.dtype == bits and C.dtype == np.float32):
            raise ValueError(
                f"gemm_ex({low}): {A.shape} {A.dtype} @ {B.shape} {B.dtype} into "
                f"{C.shape} {C.dtype}; operands must be {bits} bits, the output float32"
            )
        m, n, k, a, b, ldc = self._layout(A, B, C, f"gemm_ex({low})")
        if not self._start(C, m, n, k, stream, False):
            return
        one, zero = self._scalars[np.dtype(np.float32)]
        self._call("cublasGemmEx", self.handle, b[0], a[0], n, m, k, ctypes.addressof(one),
                   _address(B), code, b[1], _address(A), code, a[1], ctypes.addressof(zero),
                   _address(C), CUDA_R_32F, ldc, COMPUTE_32F, GEMM_DEFAULT)  # fmt: skip


def for_cupy() -> Cublas:
    """A Cublas over the library found by :func:`load_library`, with a workspace of
    :data:`WORKSPACE_BYTES` from CuPy (kept on the object). Needs CuPy and a device."""
    import cupy

    lib = load_library()
    buf = cupy.empty(WORKSPACE_BYTES, np.uint8)
    blas = Cublas(lib, (buf.data.ptr, WORKSPACE_BYTES))
    blas.workspace_buffer = buf
    return blas
