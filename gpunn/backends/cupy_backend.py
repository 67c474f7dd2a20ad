"""The CUDA backend: CuPy arrays, cuBLAS for matrix products, gpunn's own kernels for the rest.

Every op of the backend contract is overridden here (``REFERENCE_OPS`` is empty): matrix
products are cuBLAS GEMMs through CuPy, everything a training step spends time in is a
kernel of ``gpunn.kernels.cuda`` (named after the op: ``relu_forward<float>``), and the
bookkeeping ops (reductions by axis, reshapes, stacking, indexing) run on CuPy's own GPU
routines, listed with the routine in ``CUPY_ROUTINES``. Nothing falls back to the host.

Launches are asynchronous. The only host round trips are the ones the caller asks for
(``Tensor.numpy()``, ``.item()``, ``synchronize()``): cross-entropy validates its labels
inside the kernel and reports a bad one through host-mapped memory, which the backend
reads at its next synchronisation (or right away with ``gpunn.cuda.set_eager_checks``).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools

import numpy as np

from gpunn.backends import lowp as _lowp
from gpunn.backends.base import Backend, _is_basic_index
from gpunn.errors import BackendError, DeviceMemoryError
from gpunn.kernels.cuda.loader import ACTIVATION_CODES, DTYPES, KernelLoader

try:
    import cupy

    _IMPORT_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the environment
    cupy = None
    _IMPORT_ERROR = e

BLOCK = 256  # threads per block of the 1-D kernels
_WARPS = BLOCK // 32  # rows per block of the warp-per-row kernels

#: Ops that inherit the xp-generic reference code of ``Backend``: none.
REFERENCE_OPS: dict[str, str] = {}

#: Ops (or parts of ops) that run on a CuPy routine instead of a gpunn kernel. Each is one
#: GPU pass (a cuBLAS call, a CuPy reduction, copy or view); none touches the host.
CUPY_ROUTINES = {
    "matmul_forward": "cuBLAS GEMM (cupy.matmul, batched when broadcasting)",
    "matmul_backward": "cuBLAS GEMMs; cupy sum to un-broadcast batch dimensions",
    "linear_forward": "cuBLAS GEMM, then gpunn's bias+activation epilogue",
    "linear_backward": "gpunn's activation-grad+bias-sum kernel, then cuBLAS GEMMs",
    "conv2d_forward": "gpunn im2col, cuBLAS GEMM, gpunn bias+layout kernel",
    "conv2d_backward": "gpunn layout kernel, cuBLAS GEMMs (dW, dcol) and GEMV (db), gpunn col2im",
    "rnn_cell_forward": "cuBLAS GEMM (h @ W_hh.T), then gpunn's fused cell kernel",
    "rnn_cell_backward": "gpunn's fused cell kernel, then cuBLAS GEMMs",
    "lstm_cell_forward": "cuBLAS GEMM (h @ W_hh.T), then gpunn's fused cell kernel",
    "lstm_cell_backward": "gpunn's fused cell kernel, then cuBLAS GEMMs",
    "sum_forward": "cupy reduction kernel",
    "sum_backward": "broadcast view (no kernel)",
    "mean_forward": "cupy reduction kernel",
    "reshape_forward": "view, or cupy copy kernel for non-contiguous input",
    "reshape_backward": "view, or cupy copy kernel",
    "transpose_forward": "view (no kernel)",
    "transpose_backward": "view (no kernel)",
    "stack_forward": "cupy concatenate kernel",
    "stack_backward": "views of the gradient (no kernel)",
    "unstack_forward": "views of the input (no kernel)",
    "unstack_backward": "cupy concatenate kernel",
    "getitem_forward": "cupy indexing (view, or gather kernel)",
    "getitem_backward": "cupy fill + copy, or cupy.add.at for integer arrays",
    "step_backward": "cupy zeros (the step's gradient is zero)",
    "add_backward": "cupy sum to un-broadcast (none when shapes match)",
    "sub_backward": "gpunn neg kernel; cupy sum to un-broadcast",
}

_INT32_MAX = 2**31 - 1


def _oom_guard(name, fn):
    """Turn CuPy's out-of-memory error inside ``fn`` into a DeviceMemoryError naming ``name``."""

    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except _OOM_ERRORS as e:
            raise _memory_error(name, e) from e

    return guarded


_OOM_ERRORS = (cupy.cuda.memory.OutOfMemoryError,) if cupy is not None else ()


def _memory_error(op: str, e) -> DeviceMemoryError:
    asked = getattr(e, "_size", None)
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
    except Exception:  # pragma: no cover - the device is in trouble
        free = total = None
    pool = cupy.get_default_memory_pool()
    asked_s = f"{asked:,} bytes" if asked is not None else "an unknown number of bytes"
    free_s = f"{free:,} bytes free of {total:,}" if free is not None else "free memory unknown"
    return DeviceMemoryError(
        f"{op}: out of GPU memory: asked for {asked_s}; {free_s} on the device; CuPy's pool "
        f"holds {pool.used_bytes():,} bytes in use and {pool.free_bytes():,} cached "
        f"(free cached blocks with cupy.get_default_memory_pool().free_all_blocks())"
    )


def _c(X):
    """X itself when C-contiguous, else a contiguous copy (one CuPy copy kernel)."""
    return X if X.flags.c_contiguous else cupy.ascontiguousarray(X)


def _ptr(a) -> int:
    """Device address of array ``a``'s first element."""
    return a.data.ptr


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else ()


def _collapse(out_shape, operands):
    """Collapse a broadcast to at most 4 dimensions. ``operands``: arrays (or None for a
    Python scalar). Returns ((d0, d1, d2, d3), [strides of each array, 4 each]) or None
    when more than 4 dimensions remain."""
    nd = len(out_shape)
    keep = [k for k in range(nd) if out_shape[k] != 1]
    strides = []
    for X in operands:
        if X is None:
            strides.append([0] * len(keep))
            continue
        s = [0] * nd
        off = nd - X.ndim
        item = X.itemsize
        for k in range(X.ndim):
            if X.shape[k] != 1:
                s[off + k] = X.strides[k] // item
        strides.append([s[k] for k in keep])
    dims: list[int] = []
    merged: list[list[int]] = [[] for _ in operands]
    for k, d in enumerate(out_shape[i] for i in keep):
        if dims and all(m[-1] == st[k] * d for m, st in zip(merged, strides)):
            dims[-1] *= d
            for m, st in zip(merged, strides):
                m[-1] = st[k]
        else:
            dims.append(d)
            for m, st in zip(merged, strides):
                m.append(st[k])
    if len(dims) > 4:
        return None
    pad = 4 - len(dims)
    return [1] * pad + dims, [[0] * pad + m for m in merged]


class CupyBackend(Backend):
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
        #: Raise bad cross-entropy labels before the launch (one host sync per call) instead
        #: of at the next synchronisation. Set with gpunn.cuda.set_eager_checks.
        self.eager_checks = False
        # Host-mapped error slots the kernels write: [flag, bad label, number of classes].
        # Pinned memory is mapped into the device's address space at the same address
        # (unified addressing), so kernels write it directly and the host reads it in place.
        self._err_mem = cupy.cuda.PinnedMemory(3 * 8, cupy.cuda.runtime.hostAllocMapped)
        self._err_host = np.ctypeslib.as_array((ctypes.c_int64 * 3).from_address(self._err_mem.ptr))
        self._err_host[:] = 0
        self._err_dev = np.uint64(self._err_mem.ptr)
        self._scratch: dict = {}  # (stream, dtype) -> (partials, counter) for grid sums
        self._tables: dict = {}  # optimizer pointer tables, keyed by their contents
        self._ones: dict = {}  # dtype -> a ones vector for bias gradients (GEMV)
        from gpunn import cuda as _cuda_settings

        _cuda_settings._apply(self)

    # ------------------------------------------------------------------ arrays and devices
    def asarray(self, data, dtype=None):
        """A device array; host data is copied to the device (asynchronously, staged
        through pinned memory)."""
        return cupy.asarray(data, dtype=dtype)

    def to_numpy(self, X) -> np.ndarray:
        """A host copy of device array ``X`` (waits for the work that produces it)."""
        out = cupy.asnumpy(X)
        self._raise_pending()
        return out

    def is_native(self, X) -> bool:
        return isinstance(X, cupy.ndarray)

    def synchronize(self) -> None:
        """Wait for the current stream, then report any error a kernel flagged."""
        cupy.cuda.get_current_stream().synchronize()
        self._raise_pending()

    def check_labels(self, op: str, labels, num_classes: int) -> None:
        """The cross-entropy kernel checks its labels itself; a bad one is raised at the next
        synchronisation as IndexError. With ``eager_checks`` they are checked here (a sync)."""
        self._raise_pending()
        if self.eager_checks:
            super().check_labels(op, labels, num_classes)

    def _raise_pending(self) -> None:
        err = self._err_host
        if err[0]:
            label, classes = int(err[1]), int(err[2])
            err[:] = 0
            raise IndexError(
                f"cross_entropy: target holds class indices outside [0, {classes}): found "
                f"{label} (detected on the GPU by the cross-entropy kernel of an earlier "
                "call; that loss is NaN)"
            )

    # ------------------------------------------------------------------ launching
    def _grid(self, n: int) -> tuple:
        return (max(1, min((n + BLOCK - 1) // BLOCK, self._max_blocks)),)

    def _launch(self, stem, dtype, n, args):
        self._kernels(stem, dtype)(self._grid(n), (BLOCK,), args)

    def _row_grid(self, rows: int) -> tuple:
        return (max(1, min((rows + _WARPS - 1) // _WARPS, self._max_blocks)),)

    def _grid_sum_scratch(self, dtype):
        key = (cupy.cuda.get_current_stream().ptr, dtype)
        s = self._scratch.get(key)
        if s is None:
            s = (cupy.empty(self._max_blocks, dtype), cupy.zeros(1, np.uint32))
            self._scratch[key] = s
        return s

    # ------------------------------------------------------------------ elementwise
    def _binary(self, stem, A, B):
        """Y = A op B with NumPy broadcasting; A or B may be a Python scalar."""
        a_arr, b_arr = isinstance(A, cupy.ndarray), isinstance(B, cupy.ndarray)
        dtype = (A if a_arr else B).dtype
        t = dtype.type
        a_val = t(0) if a_arr else t(A)
        b_val = t(0) if b_arr else t(B)
        flags = (0 if a_arr else 1) | (0 if b_arr else 2)
        if a_arr and b_arr:
            out_shape = A.shape if A.shape == B.shape else np.broadcast_shapes(A.shape, B.shape)
        else:
            out_shape = (A if a_arr else B).shape
        out_shape = tuple(out_shape)
        Y = cupy.empty(out_shape, dtype)
        n = Y.size
        if n == 0:
            return Y
        arrays = [X for X, is_arr in ((A, a_arr), (B, b_arr)) if is_arr]
        if all(X.shape == out_shape and X.flags.c_contiguous for X in arrays):
            dims, (sa, sb) = [1, 1, 1, n], [[0] * 4, [0] * 4]
            flags |= 4
        else:
            layout = _collapse(out_shape, [A if a_arr else None, B if b_arr else None])
            if layout is None:  # more than 4 dimensions after collapsing: materialise
                if a_arr:
                    A = cupy.ascontiguousarray(cupy.broadcast_to(A, out_shape))
                if b_arr:
                    B = cupy.ascontiguousarray(cupy.broadcast_to(B, out_shape))
                dims, (sa, sb) = [1, 1, 1, n], [[0] * 4, [0] * 4]
                flags |= 4
            else:
                dims, (sa, sb) = layout
        i64 = np.int64
        self._launch(
            stem,
            dtype,
            n,
            (
                A if a_arr else Y,
                B if b_arr else Y,
                Y,
                a_val,
                b_val,
                np.int32(flags),
                i64(n),
                i64(dims[1]),
                i64(dims[2]),
                i64(dims[3]),
                *(i64(s) for s in sa),
                *(i64(s) for s in sb),
            ),
        )
        return Y

    def _unary(self, stem, X):
        X = _c(X)
        Y = cupy.empty(X.shape, X.dtype)
        if X.size:
            self._launch(stem, X.dtype, X.size, (X, Y, np.int64(X.size)))
        return Y

    def _unary_backward(self, stem, dY, S):
        dY, S = _c(dY), _c(S)
        dX = cupy.empty(S.shape, S.dtype)
        if S.size:
            self._launch(stem, S.dtype, S.size, (dY, S, dX, np.int64(S.size)))
        return dX

    def add_forward(self, A, B):
        return self._binary("add_forward", A, B), (_shape(A), _shape(B))

    def add_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(dY, b_shape) if needs[1] else None,
        )

    def sub_forward(self, A, B):
        return self._binary("sub_forward", A, B), (_shape(A), _shape(B))

    def sub_backward(self, dY, saved, needs):
        a_shape, b_shape = saved
        return (
            self.unbroadcast(dY, a_shape) if needs[0] else None,
            self.unbroadcast(self._unary("neg_forward", dY), b_shape) if needs[1] else None,
        )

    def mul_forward(self, A, B):
        return self._binary("mul_forward", A, B), (A, B)

    def mul_backward(self, dY, saved, needs):
        A, B = saved
        return (
            self.unbroadcast(self._binary("mul_forward", dY, B), _shape(A)) if needs[0] else None,
            self.unbroadcast(self._binary("mul_forward", dY, A), _shape(B)) if needs[1] else None,
        )

    def div_forward(self, A, B):
        Y = self._binary("div_forward", A, B)
        return Y, (A, B, Y)

    def div_backward(self, dY, saved, needs):
        A, B, Y = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(self._binary("div_forward", dY, B), _shape(A))
        if needs[1]:
            dB = self.unbroadcast(self._strided_backward("div_backward", dY, Y, None, B), B.shape)
        return dA, dB

    def pow_forward(self, A, B):
        Y = self._binary("pow_forward", A, B)
        return Y, (A, B, Y)

    def pow_backward(self, dY, saved, needs):
        """dA = dY * B * A**(B-1); dB = dY * Y * log(A), 0 where A <= 0; one pass for both."""
        A, B, Y = saved
        if not (needs[0] or needs[1]):
            return None, None
        dA, dB = self._strided_backward("pow_backward", dY, Y, A, B, need=needs)
        return (
            self.unbroadcast(dA, _shape(A)) if needs[0] else None,
            self.unbroadcast(dB, _shape(B)) if needs[1] else None,
        )

    def _strided_backward(self, stem, dY, Y, A, B, need=(False, True)):
        """Launch div_backward (dB of A / B) or pow_backward (dA and dB of A ** B): dY and Y
        full-size, A and B strided over Y's shape or Python scalars."""
        dY, Y = _c(dY), _c(Y)
        dtype, shape, n = Y.dtype, Y.shape, Y.size
        t = dtype.type
        i64 = np.int64
        a_arr, b_arr = isinstance(A, cupy.ndarray), isinstance(B, cupy.ndarray)
        layout = _collapse(shape, [A if a_arr else None, B if b_arr else None])
        if layout is None:
            A = cupy.ascontiguousarray(cupy.broadcast_to(A, shape)) if a_arr else A
            B = cupy.ascontiguousarray(cupy.broadcast_to(B, shape)) if b_arr else B
            layout = _collapse(shape, [A if a_arr else None, B if b_arr else None])
            if layout is None:  # contiguous full-size operands: flat indexing
                layout = (
                    [1, 1, 1, n],
                    [
                        [0, 0, 0, 1] if a_arr else [0] * 4,
                        [0, 0, 0, 1] if b_arr else [0] * 4,
                    ],
                )
        dims, (sa, sb) = layout
        geometry = (i64(n), i64(dims[1]), i64(dims[2]), i64(dims[3]))
        if stem == "div_backward":
            dB = cupy.empty(shape, dtype)
            if n:
                self._launch(stem, dtype, n, (dY, Y, B, dB, *geometry, *(i64(s) for s in sb)))
            return dB
        dA = cupy.empty(shape, dtype) if need[0] else None
        dB = cupy.empty(shape, dtype) if need[1] else None
        if n:
            flags = (0 if a_arr else 1) | (0 if b_arr else 2)
            self._launch(
                stem,
                dtype,
                n,
                (
                    dY,
                    Y,
                    A if a_arr else Y,
                    B if b_arr else Y,
                    dA if dA is not None else Y,
                    dB if dB is not None else Y,
                    t(0) if a_arr else t(A),
                    t(0) if b_arr else t(B),
                    np.int32(flags),
                    np.int32((1 if need[0] else 0) | (2 if need[1] else 0)),
                    *geometry,
                    *(i64(s) for s in sa),
                    *(i64(s) for s in sb),
                ),
            )
        return dA, dB

    def neg_forward(self, X):
        return self._unary("neg_forward", X), None

    def neg_backward(self, dY, saved, needs):
        return (self._unary("neg_forward", dY),)

    def exp_forward(self, X):
        Y = self._unary("exp_forward", X)
        return Y, Y

    def exp_backward(self, dY, saved, needs):
        return (self._unary_backward("exp_backward", dY, saved),)

    def log_forward(self, X):
        return self._unary("log_forward", X), X

    def log_backward(self, dY, saved, needs):
        return (self._unary_backward("log_backward", dY, saved),)

    def cast_forward(self, X, dtype):
        return self._cast(X, np.dtype(dtype)), X.dtype

    def cast_backward(self, dY, saved, needs):
        return (self._cast(dY, saved),)

    def _cast(self, X, dtype):
        if X.dtype in DTYPES and dtype in DTYPES and dtype != X.dtype:
            X = _c(X)
            Y = cupy.empty(X.shape, dtype)
            if X.size:
                self._launch("cast_forward", X.dtype, X.size, (X, Y, np.int64(X.size)))
            return Y
        return X.astype(dtype)  # same dtype (a copy) or a non-float dtype: CuPy's cast kernel

    # ------------------------------------------------------------------ activations
    def sigmoid_forward(self, X):
        Y = self._unary("sigmoid_forward", X)
        return Y, Y

    def sigmoid_backward(self, dY, saved, needs):
        return (self._unary_backward("sigmoid_backward", dY, saved),)

    def tanh_forward(self, X):
        Y = self._unary("tanh_forward", X)
        return Y, Y

    def tanh_backward(self, dY, saved, needs):
        return (self._unary_backward("tanh_backward", dY, saved),)

    def relu_forward(self, X):
        Y = self._unary("relu_forward", X)
        return Y, Y

    def relu_backward(self, dY, saved, needs):
        return (self._unary_backward("relu_backward", dY, saved),)

    def step_forward(self, X):
        return self._unary("step_forward", X), X.shape

    def step_backward(self, dY, saved, needs):
        return (cupy.zeros(saved, dtype=dY.dtype),)

    # ------------------------------------------------------------------ mixed precision
    # Written and compiled, not yet run on a GPU.
    def autocast(self, dtype):
        """Within it, the float32 products of linear, matmul and conv2d round their inputs
        to ``dtype`` and multiply with cuBLAS in float32 accumulation (see gpunn.amp)."""
        return _autocast_scope(dtype)

    def _mm(self, A, B):
        """A @ B (cupy.matmul), or under autocast for float32 operands the lower-precision
        product: one cublasGemmEx for 2-D operands; batched ones multiply their rounded
        values in float32 (the same numbers, without the speed-up)."""
        dtype = _LOWP.get()
        if dtype is None or A.dtype != np.float32 or B.dtype != np.float32:
            return cupy.dot(A, B) if A.ndim == 2 and B.ndim == 2 else cupy.matmul(A, B)
        if A.ndim == 2 and B.ndim == 2:
            return _lowp_gemm(A, B, dtype)
        return cupy.matmul(_lowp.round_to(cupy, A, dtype), _lowp.round_to(cupy, B, dtype))

    # ------------------------------------------------------------------ matrix products
    def matmul_forward(self, A, B):
        return self._mm(A, B), (A, B)

    def matmul_backward(self, dY, saved, needs):
        A, B = saved
        dA = dB = None
        if needs[0]:
            dA = self.unbroadcast(self._mm(dY, B.swapaxes(-1, -2)), A.shape)
        if needs[1]:
            dB = self.unbroadcast(self._mm(A.swapaxes(-1, -2), dY), B.shape)
        return dA, dB

    def linear_forward(self, X, W, b, activation=None):
        """Z = X @ W.T by cuBLAS, then bias and activation in one in-place pass."""
        Z = self._mm(X, W.T)
        act = ACTIVATION_CODES[activation]
        rows, cols = Z.shape
        if (b is not None or act) and Z.size:
            self._launch(
                "linear_forward",
                Z.dtype,
                Z.size,
                (
                    Z,
                    _c(b) if b is not None else Z,
                    np.int64(rows),
                    np.int64(cols),
                    np.int32(b is not None),
                    np.int32(act),
                ),
            )
        return Z, (X, W, Z, act, b is not None)

    def linear_backward(self, dY, saved, needs):
        """dZ = act'(dY) and db = column sums of dZ in one kernel; dX, dW by cuBLAS."""
        X, W, Y, act, has_bias = saved
        dY = _c(dY)
        rows, cols = Y.shape
        need_db = has_bias and needs[2]
        db = None
        if need_db:
            db = cupy.empty(cols, Y.dtype)
            dZ = cupy.empty_like(dY) if act else dY
            if rows == 0:
                db.fill(0)
            elif cols:
                bx = min(32, 1 << (cols - 1).bit_length())
                self._kernels("linear_backward", Y.dtype)(
                    ((cols + bx - 1) // bx,),
                    (bx, BLOCK // bx),
                    (
                        dY,
                        Y,
                        dZ,
                        db,
                        np.int64(rows),
                        np.int64(cols),
                        np.int32(act),
                        np.int32(1),
                        np.int32(1 if act else 0),
                    ),
                )
        elif act:
            stem = {1: "relu_backward", 2: "sigmoid_backward", 3: "tanh_backward"}[act]
            dZ = self._unary_backward(stem, dY, Y)
        else:
            dZ = dY
        dX = self._mm(dZ, W) if needs[0] else None
        dW = self._mm(dZ.T, X) if needs[1] else None
        return dX, dW, db

    # ------------------------------------------------------------------ reductions and shapes
    def sum_forward(self, X, axis=None, keepdims=False):
        return cupy.sum(X, axis=axis, keepdims=keepdims), (X.shape, axis, keepdims)

    def sum_backward(self, dY, saved, needs):
        shape, axis, keepdims = saved
        if axis is not None and not keepdims:
            dY = cupy.expand_dims(dY, axis)
        return (cupy.broadcast_to(dY, shape),)

    def mean_forward(self, X, axis=None, keepdims=False):
        Y = cupy.mean(X, axis=axis, keepdims=keepdims)
        count = X.size // max(Y.size, 1) if X.size else 0
        return Y, (X.shape, axis, keepdims, count)

    def mean_backward(self, dY, saved, needs):
        shape, axis, keepdims, count = saved
        (dX,) = self.sum_backward(dY, (shape, axis, keepdims), needs)
        return (self._binary("div_forward", dX, count),)

    def reshape_forward(self, X, shape):
        return X.reshape(shape), X.shape

    def reshape_backward(self, dY, saved, needs):
        return (dY.reshape(saved),)

    def transpose_forward(self, X, axes):
        return X.transpose(axes), axes

    def transpose_backward(self, dY, saved, needs):
        return (dY.transpose(tuple(np.argsort(saved))),)

    def unstack_forward(self, X, axis=0):
        """Views of X, one per index along ``axis``: no copy."""
        lead = (slice(None),) * axis
        return tuple(X[lead + (k,)] for k in range(X.shape[axis])), axis

    def unstack_backward(self, dY, saved, needs):
        return (cupy.stack(dY, axis=saved),)

    def stack_forward(self, *Xs, axis=0):
        return cupy.stack(Xs, axis=axis), (len(Xs), axis)

    def stack_backward(self, dY, saved, needs):
        """Views of dY, one per input: no copy."""
        n, axis = saved
        lead = (slice(None),) * axis
        return tuple(dY[lead + (k,)] if needs[k] else None for k in range(n))

    def getitem_forward(self, X, index):
        index = self._device_index(index, X.shape)
        return X[index], (X.shape, index)

    def getitem_backward(self, dY, saved, needs):
        shape, index = saved
        dX = cupy.zeros(shape, dtype=dY.dtype)
        if _is_basic_index(index):
            dX[index] = dY
        else:
            cupy.add.at(dX, index, dY)
        return (dX,)

    def _device_index(self, index, shape):
        """Host integer/boolean arrays in ``index`` moved to the device, after NumPy has
        checked them against ``shape`` (CuPy would wrap out-of-range indices silently)."""
        items = index if isinstance(index, tuple) else (index,)
        if not any(isinstance(i, (np.ndarray, cupy.ndarray, list)) for i in items):
            return index
        host = tuple(cupy.asnumpy(i) if isinstance(i, cupy.ndarray) else i for i in items)
        np.broadcast_to(np.empty((), np.int8), shape)[host if isinstance(index, tuple) else host[0]]
        moved = tuple(cupy.asarray(i) if isinstance(i, (np.ndarray, list)) else i for i in items)
        return moved if isinstance(index, tuple) else moved[0]

    # ------------------------------------------------------------------ softmax family
    def _rows(self, X, axis):
        """X with ``axis`` moved last, contiguous, as (rows, cols); and whether it moved."""
        axis = axis % X.ndim
        moved = axis != X.ndim - 1
        Xm = cupy.ascontiguousarray(cupy.moveaxis(X, axis, -1)) if moved else _c(X)
        return Xm, axis, moved

    def _row_kernel(self, stem, *arrays):
        out = cupy.empty(arrays[0].shape, arrays[0].dtype)
        cols = out.shape[-1] if out.ndim else 1
        rows = out.size // cols if cols else 0
        if out.size:
            self._kernels(stem, out.dtype)(
                self._row_grid(rows), (BLOCK,), (*arrays, out, np.int64(rows), np.int64(cols))
            )
        return out

    def _softmax_like(self, stem, X, axis):
        Xm, axis, moved = self._rows(X, axis)
        Ym = self._row_kernel(stem, Xm)
        Y = cupy.ascontiguousarray(cupy.moveaxis(Ym, -1, axis)) if moved else Ym
        return Y, (Ym, axis, moved)

    def _softmax_like_backward(self, stem, dY, saved):
        Ym, axis, moved = saved
        dYm = cupy.ascontiguousarray(cupy.moveaxis(dY, axis, -1)) if moved else _c(dY)
        dXm = self._row_kernel(stem, dYm, Ym)
        return (cupy.ascontiguousarray(cupy.moveaxis(dXm, -1, axis)) if moved else dXm,)

    def softmax_forward(self, X, axis=-1):
        return self._softmax_like("softmax_forward", X, axis)

    def softmax_backward(self, dY, saved, needs):
        return self._softmax_like_backward("softmax_backward", dY, saved)

    def log_softmax_forward(self, X, axis=-1):
        return self._softmax_like("log_softmax_forward", X, axis)

    def log_softmax_backward(self, dY, saved, needs):
        return self._softmax_like_backward("log_softmax_backward", dY, saved)

    # ------------------------------------------------------------------ losses
    def _loss_forward(self, stem, n, arrays, out_arrays=(), grid_n=None):
        """Launch a loss kernel that ends in a grid-wide sum; returns the 0-d loss."""
        dtype = arrays[0].dtype
        loss = cupy.empty((), dtype)
        partials, counter = self._grid_sum_scratch(dtype)
        grid = self._grid(n) if grid_n is None else grid_n
        self._kernels(stem, dtype)(
            grid, (BLOCK,), (*arrays, *out_arrays, loss, partials, counter, np.int64(n))
        )
        return loss

    def mse_forward(self, P, T):
        P, T = _c(P), _c(T)
        D = cupy.empty(P.shape, P.dtype)
        loss = self._loss_forward("mse_forward", P.size, (P, T), (D,))
        return loss, D

    def mse_backward(self, dY, saved, needs):
        D = saved
        dP = cupy.empty(D.shape, D.dtype) if needs[0] else None
        dT = cupy.empty(D.shape, D.dtype) if needs[1] else None
        if (needs[0] or needs[1]) and D.size:
            need = (1 if needs[0] else 0) | (2 if needs[1] else 0)
            self._launch(
                "mse_backward",
                D.dtype,
                D.size,
                (
                    D,
                    dY,
                    dP if dP is not None else D,
                    dT if dT is not None else D,
                    np.int64(D.size),
                    np.int32(need),
                ),
            )
        return dP, dT

    def binary_cross_entropy_forward(self, P, T):
        P, T = _c(P), _c(T)
        return self._loss_forward("binary_cross_entropy_forward", P.size, (P, T)), (P, T)

    def binary_cross_entropy_backward(self, dY, saved, needs):
        return self._pair_loss_backward("binary_cross_entropy_backward", dY, saved, needs)

    def binary_cross_entropy_with_logits_forward(self, Z, T):
        Z, T = _c(Z), _c(T)
        stem = "binary_cross_entropy_with_logits_forward"
        return self._loss_forward(stem, Z.size, (Z, T)), (Z, T)

    def binary_cross_entropy_with_logits_backward(self, dY, saved, needs):
        stem = "binary_cross_entropy_with_logits_backward"
        return self._pair_loss_backward(stem, dY, saved, needs)

    def _pair_loss_backward(self, stem, dY, saved, needs):
        X, T = saved
        dX = cupy.empty(X.shape, X.dtype) if needs[0] else None
        dT = cupy.empty(X.shape, X.dtype) if needs[1] else None
        if (needs[0] or needs[1]) and X.size:
            need = (1 if needs[0] else 0) | (2 if needs[1] else 0)
            self._launch(
                stem,
                X.dtype,
                X.size,
                (
                    X,
                    T,
                    dY,
                    dX if dX is not None else X,
                    dT if dT is not None else X,
                    np.int64(X.size),
                    np.int32(need),
                ),
            )
        return dX, dT

    def cross_entropy_forward(self, Z, labels):
        """log-softmax and the mean NLL in one launch; bad labels are flagged by the kernel."""
        Z = _c(Z)
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        labels = _c(labels)
        rows, cols = Z.shape
        logp = cupy.empty(Z.shape, Z.dtype)
        loss = cupy.empty((), Z.dtype)
        partials, counter = self._grid_sum_scratch(Z.dtype)
        self._kernels("cross_entropy_forward", Z.dtype)(
            self._row_grid(rows),
            (BLOCK,),
            (
                Z,
                labels,
                logp,
                loss,
                partials,
                counter,
                np.int64(rows),
                np.int64(cols),
                self._err_dev,
            ),
        )
        return loss, (logp, labels)

    def cross_entropy_backward(self, dY, saved, needs):
        logp, labels = saved
        dZ = cupy.empty(logp.shape, logp.dtype)
        rows, cols = logp.shape
        if needs[0] and dZ.size:
            self._launch(
                "cross_entropy_backward",
                logp.dtype,
                dZ.size,
                (logp, labels, dY, dZ, np.int64(rows), np.int64(cols)),
            )
        return (dZ if needs[0] else None, None)

    # ------------------------------------------------------------------ convolution and pooling
    @staticmethod
    def _check_int32(op, *sizes):
        if max(sizes) > _INT32_MAX:
            raise ValueError(
                f"{op}: an intermediate of {max(sizes):,} elements exceeds the CUDA kernels' "
                "32-bit indexing; split the batch"
            )

    def conv2d_forward(self, X, W, b, stride=(1, 1), padding=(0, 0)):
        """im2col (gpunn kernel), one cuBLAS GEMM, then bias and NCHW layout (gpunn kernel)."""
        X, W = _c(X), _c(W)
        n, c, h, w = X.shape
        k, _, kh, kw = W.shape
        (sh, sw), (ph, pw) = stride, padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        p = oh * ow
        ckk = c * kh * kw
        self._check_int32("conv2d", ckk * n * p, X.size, n * k * p)
        col = cupy.empty((ckk, n * p), X.dtype)
        i32 = np.int32
        geometry = (
            i32(n),
            i32(c),
            i32(h),
            i32(w),
            i32(kh),
            i32(kw),
            i32(sh),
            i32(sw),
            i32(ph),
            i32(pw),
            i32(oh),
            i32(ow),
        )
        if col.size:
            self._launch("conv2d_im2col", X.dtype, col.size, (X, col, *geometry))
        Ymat = self._mm(W.reshape(k, ckk), col)
        Y = cupy.empty((n, k, oh, ow), X.dtype)
        if Y.size:
            self._launch(
                "conv2d_output",
                X.dtype,
                Y.size,
                (
                    Ymat,
                    _c(b) if b is not None else Ymat,
                    Y,
                    i32(n),
                    i32(k),
                    i32(p),
                    i32(b is not None),
                ),
            )
        return Y, (X.shape, W, col, geometry, b is not None)

    def conv2d_backward(self, dY, saved, needs):
        x_shape, W, col, geometry, has_bias = saved
        n, _, _, _, _, _, _, _, _, _, oh, ow = (int(g) for g in geometry)
        k = W.shape[0]
        p = oh * ow
        dtype = W.dtype
        dY = _c(dY)
        dYt = cupy.empty((k, n * p), dtype)
        if dYt.size:
            i32 = np.int32
            self._launch("conv2d_grad_output", dtype, dYt.size, (dY, dYt, i32(n), i32(k), i32(p)))
        dX = dW = db = None
        if needs[0]:
            dcol = self._mm(W.reshape(k, -1).T, dYt)
            dX = cupy.empty(x_shape, dtype)
            if dX.size:
                self._launch("conv2d_col2im", dtype, dX.size, (dcol, dX, *geometry))
        if needs[1]:
            dW = self._mm(dYt, col.T).reshape(W.shape)
        if has_bias and needs[2]:
            db = cupy.dot(dYt, self._ones_vector(n * p, dtype))
        return dX, dW, db

    def _ones_vector(self, size, dtype):
        ones = self._ones.get(dtype)
        if ones is None or ones.size < size:
            ones = cupy.ones(max(size, 1024), dtype)
            self._ones[dtype] = ones
        return ones[:size]

    def _pool_geometry(self, op, X, kernel_size, stride, padding):
        n, c, h, w = X.shape
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        self._check_int32(op, X.size, n * c * oh * ow)
        i32 = np.int32
        geometry = (
            i32(n * c),
            i32(h),
            i32(w),
            i32(kh),
            i32(kw),
            i32(sh),
            i32(sw),
            i32(ph),
            i32(pw),
            i32(oh),
            i32(ow),
        )
        return (n, c, oh, ow), geometry

    def max_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        X = _c(X)
        out_shape, geometry = self._pool_geometry("max_pool2d", X, kernel_size, stride, padding)
        Y = cupy.empty(out_shape, X.dtype)
        arg = cupy.empty(out_shape, np.int32)
        if Y.size:
            self._launch("max_pool2d_forward", X.dtype, Y.size, (X, Y, arg, *geometry))
        return Y, (X.shape, arg, geometry)

    def max_pool2d_backward(self, dY, saved, needs):
        x_shape, arg, geometry = saved
        dY = _c(dY)
        dX = cupy.empty(x_shape, dY.dtype)
        if dX.size:
            self._launch("max_pool2d_backward", dY.dtype, dX.size, (dY, arg, dX, *geometry))
        return (dX,)

    def avg_pool2d_forward(self, X, kernel_size, stride, padding=(0, 0)):
        X = _c(X)
        out_shape, geometry = self._pool_geometry("avg_pool2d", X, kernel_size, stride, padding)
        Y = cupy.empty(out_shape, X.dtype)
        if Y.size:
            self._launch("avg_pool2d_forward", X.dtype, Y.size, (X, Y, *geometry))
        return Y, (X.shape, geometry)

    def avg_pool2d_backward(self, dY, saved, needs):
        x_shape, geometry = saved
        dY = _c(dY)
        dX = cupy.empty(x_shape, dY.dtype)
        if dX.size:
            self._launch("avg_pool2d_backward", dY.dtype, dX.size, (dY, dX, *geometry))
        return (dX,)

    # ------------------------------------------------------------------ dropout
    def dropout_forward(self, X, p, seed):
        """Inverted dropout; the mask is splitmix64(seed, flat index), as the reference draws
        it, recomputed in the backward instead of stored."""
        X = _c(X)
        scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
        args = (np.int64(X.size), np.uint64(seed), np.float64(p), X.dtype.type(scale))
        Y = cupy.empty(X.shape, X.dtype)
        if X.size:
            self._launch("dropout_forward", X.dtype, X.size, (X, Y, *args))
        return Y, args

    def dropout_backward(self, dY, saved, needs):
        dY = _c(dY)
        dX = cupy.empty(dY.shape, dY.dtype)
        if dY.size:
            self._launch("dropout_backward", dY.dtype, dY.size, (dY, dX, *saved))
        return (dX,)

    # ------------------------------------------------------------------ recurrent cells
    def rnn_cell_forward(self, XW, H, W_hh):
        """h' = tanh(XW + H @ W_hh.T): one cuBLAS GEMM and one fused kernel."""
        HW = cupy.dot(H, W_hh.T)
        XW = _c(XW)
        Hn = cupy.empty(HW.shape, HW.dtype)
        if Hn.size:
            self._launch("rnn_cell_forward", Hn.dtype, Hn.size, (XW, HW, Hn, np.int64(Hn.size)))
        return Hn, (H, W_hh, Hn)

    def rnn_cell_backward(self, dY, saved, needs):
        H, W_hh, Hn = saved
        dZ = self._unary_backward("rnn_cell_backward", dY, Hn)
        dH = cupy.dot(dZ, W_hh) if needs[1] else None
        dW = cupy.dot(dZ.T, H) if needs[2] else None
        return (dZ if needs[0] else None), dH, dW

    def lstm_cell_forward(self, XW, H, C, W_hh):
        """One LSTM step: the recurrent GEMM by cuBLAS, then ONE kernel for all four gates
        and the state update."""
        HW = cupy.dot(H, W_hh.T)
        XW, C = _c(XW), _c(C)
        batch, hidden = C.shape
        out = cupy.empty((7, batch, hidden), C.dtype)  # H_new, C_new, then i, f, g, o, tanh(C_new)
        Hn, Cn, S = out[0], out[1], out[2:]
        if C.size:
            self._launch(
                "lstm_cell_forward",
                C.dtype,
                C.size,
                (XW, HW, C, Hn, Cn, S, np.int64(batch), np.int64(hidden)),
            )
        return (Hn, Cn), (H, C, W_hh, S)

    def lstm_cell_backward(self, dY, saved, needs):
        dHn, dCn = _c(dY[0]), _c(dY[1])
        H, C, W_hh, S = saved
        batch, hidden = C.shape
        dG = cupy.empty((batch, 4 * hidden), C.dtype)
        dCp = cupy.empty(C.shape, C.dtype) if needs[2] else None
        if C.size:
            self._launch(
                "lstm_cell_backward",
                C.dtype,
                C.size,
                (
                    dHn,
                    dCn,
                    C,
                    S,
                    dG,
                    dCp if dCp is not None else dG,
                    np.int64(batch),
                    np.int64(hidden),
                    np.int32(1 if needs[2] else 0),
                ),
            )
        dH = cupy.dot(dG, W_hh) if needs[1] else None
        dW = cupy.dot(dG.T, H) if needs[3] else None
        return (dG if needs[0] else None), dH, dCp, dW

    # ------------------------------------------------------------------ optimizer updates
    def _pointer_table(self, columns, sizes):
        """A device array of uint64: each column's data pointers (0 for None), then sizes.
        Cached by content, so a steady training loop uploads nothing."""
        key = (
            tuple(tuple(0 if a is None else _ptr(a) for a in col) for col in columns),
            tuple(sizes),
        )
        table = self._tables.get(key)
        if table is None:
            words = [w for col in key[0] for w in col] + list(sizes)
            table = cupy.asarray(np.array(words, dtype=np.uint64))
            if len(self._tables) >= 256:
                self._tables.clear()
            self._tables[key] = table
        return table

    def _by_dtype(self, *columns):
        """Group parameter positions by dtype: {dtype: [i, ...]}."""
        groups: dict = {}
        for i, p in enumerate(columns[0]):
            groups.setdefault(p.dtype, []).append(i)
        return groups

    def _fused_update(self, stem, columns, scalars):
        """One launch per dtype over all parameters: ``columns`` = (params, grads, state...)."""
        params = columns[0]
        for p in params:
            if not p.flags.c_contiguous:
                raise ValueError(f"{stem}: parameters must be contiguous to update in place")
        for dtype, idx in self._by_dtype(*columns).items():
            cols = [[columns[0][i] for i in idx]]
            cols += [[None if c[i] is None else _c(c[i]) for i in idx] for c in columns[1:]]
            sizes = [columns[0][i].size for i in idx]
            if not any(sizes):
                continue
            table = self._pointer_table(cols, sizes)
            t = dtype.type
            args = (
                table,
                np.int32(len(idx)),
                *(t(s) if isinstance(s, float) else s for s in scalars),
            )
            self._launch(stem, dtype, max(sizes), args)

    def sgd_update(self, params, grads, bufs, lr, momentum, weight_decay, nesterov=False):
        """One fused launch over every parameter (per dtype): weight decay, momentum, step."""
        self._fused_update(
            "sgd_update",
            (params, grads, bufs),
            (
                float(lr),
                float(momentum),
                float(weight_decay),
                np.int32(momentum != 0),
                np.int32(weight_decay != 0),
                np.int32(bool(nesterov)),
            ),
        )

    def adam_update(
        self, params, grads, ms, vs, step, lr, beta1, beta2, eps, weight_decay, decoupled=False
    ):
        """One fused launch over every parameter (per dtype), as PyTorch's Adam or AdamW."""
        bias1 = 1 - beta1**step
        bias2_sqrt = (1 - beta2**step) ** 0.5
        l2 = bool(weight_decay) and not decoupled
        self._fused_update(
            "adam_update",
            (params, grads, ms, vs),
            (
                float(lr / bias1),
                float(beta1),
                float(1 - beta1),
                float(beta2),
                float(1 - beta2),
                float(bias2_sqrt),
                float(eps),
                float(weight_decay),
                np.int32(l2),
                float(1 - lr * weight_decay),
                np.int32(bool(weight_decay) and bool(decoupled)),
            ),
        )

    _NORM_CODES = {1.0: 1, 2.0: 2}

    def clip_grad_norm_update(self, grads, max_norm, norm_type, error_if_nonfinite=False):
        """Two launches over every gradient (one dtype), no host read unless
        ``error_if_nonfinite``: the reduction writes the norm and the scale factor to the
        device, the scaling reads the factor there."""
        dtype = grads[0].dtype
        for g in grads:
            if not g.flags.c_contiguous:
                raise ValueError("clip_grad_norm_: gradients must be contiguous to scale in place")
        total = cupy.zeros((), dtype)
        coef = cupy.empty((), dtype)
        sizes = [g.size for g in grads]
        norm_type = float(norm_type)
        code = 0 if norm_type == float("inf") else self._NORM_CODES.get(norm_type, 3)
        partials, counter = self._grid_sum_scratch(np.dtype(np.float64))
        table = self._pointer_table([list(grads)], sizes)
        self._kernels("clip_grad_norm_reduce", dtype)(
            self._grid(max(sizes)),
            (BLOCK,),
            (
                table,
                np.int32(len(grads)),
                np.int32(code),
                np.float64(norm_type),
                dtype.type(max_norm),
                partials,
                counter,
                total,
                coef,
            ),
        )
        if error_if_nonfinite and not bool(cupy.isfinite(total)):
            raise RuntimeError(
                f"clip_grad_norm_: the total norm of order {norm_type} of the gradients is "
                f"{float(total)}, so they cannot be clipped (error_if_nonfinite=True)"
            )
        if any(sizes):
            self._launch(
                "clip_grad_norm_scale", dtype, max(sizes), (table, np.int32(len(grads)), coef)
            )
        return total

    def clip_grad_value_update(self, grads, clip_value):
        """One launch per dtype over every gradient."""
        self._fused_update("clip_grad_value_update", (grads,), (float(clip_value),))


# ---------------------------------------------------------------------- mixed precision
_LOWP: contextvars.ContextVar = contextvars.ContextVar("gpunn_cupy_lowp", default=None)

# cuBLAS and CUDA library constants (library_types.h, cublas_api.h)
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_OP_N, _CUBLAS_COMPUTE_32F, _CUBLAS_GEMM_DEFAULT = 0, 68, -1
_ONE_ZERO = np.array([1.0, 0.0], np.float32)  # alpha, beta (host pointer mode)


@contextlib.contextmanager
def _autocast_scope(dtype):
    token = _LOWP.set(dtype)
    try:
        yield
    finally:
        _LOWP.reset(token)


def _lowp_gemm(A, B, dtype):
    """float32 (m, k) @ (k, n) with both inputs rounded to ``dtype`` ("float16" or
    "bfloat16"), float32 accumulation and a float32 (m, n) result: one cublasGemmEx.
    Row-major C = A @ B is column-major C^T = B^T @ A^T, so B goes first."""
    from cupy.cuda import cublas, device

    m, k = A.shape
    n = B.shape[1]
    if m * n == 0 or k == 0:
        return cupy.zeros((m, n), np.float32)
    C = cupy.empty((m, n), np.float32)
    if dtype == "float16":
        a, b, code = A.astype(np.float16, order="C"), B.astype(np.float16, order="C"), _CUDA_R_16F
    else:
        a, b, code = _lowp.bfloat16_bits(cupy, A), _lowp.bfloat16_bits(cupy, B), _CUDA_R_16BF
    alpha = _ONE_ZERO.ctypes.data
    cublas.gemmEx(
        device.get_cublas_handle(),
        _CUBLAS_OP_N,
        _CUBLAS_OP_N,
        n,
        m,
        k,
        alpha,
        _ptr(b),
        code,
        n,
        _ptr(a),
        code,
        k,
        alpha + 4,
        _ptr(C),
        _CUDA_R_32F,
        n,
        _CUBLAS_COMPUTE_32F,
        _CUBLAS_GEMM_DEFAULT,
    )
    return C


# Every op (and the allocating utilities) reports running out of GPU memory as a
# DeviceMemoryError naming the op, the bytes asked for and the bytes free.
# (Only methods this class defines are wrapped, so ``native_ops()`` stays truthful.)
for _name in [n for n in Backend.ops() if n in CupyBackend.__dict__] + ["asarray"]:
    setattr(CupyBackend, _name, _oom_guard(_name, CupyBackend.__dict__[_name]))
for _name in ("copy", "zeros", "full", "astype"):
    setattr(CupyBackend, _name, _oom_guard(_name, getattr(Backend, _name)))
del _name
