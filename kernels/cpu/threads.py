"""Threads and scratch memory of the CPU kernels.

``gpunn.set_num_threads(n)`` / ``GPUNN_NUM_THREADS`` reach :func:`apply_threads`: Numba's
thread count (clamped to the threads Numba launched) and BLAS's (through threadpoolctl). Kernels that loop over many elements come in a serial and a parallel variant;
:func:`pick` chooses the parallel one from :data:`PARALLEL_MIN_SIZE` elements of work up.
:func:`workspace` hands out scratch arrays kept per Python thread.
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
from gpunn.kernels.cpu import _jit

#: Work (elements, times HEAVY for kernels that evaluate exp/log/tanh per element) from
#: which an op runs the parallel variant of its kernel, when Numba has a thread-safe
#: threading layer and more than one thread; GPUNN_NUMBA_PARALLEL_MIN sets it. Each
#: parallel loop ends in a barrier, so small loops stay serial. 1 << 16 measured best of
#: 1 << 16 and 1 << 18 on a quiet 2-core AMD EPYC at 2 threads (lenet step 3.06 against
#: 3.26 ms, softmax cross-entropy 256x1000 forward + backward 0.121 against 0.131 ms, logreg
#: and mlp unchanged).
PARALLEL_MIN_SIZE = int(os.environ.get("GPUNN_NUMBA_PARALLEL_MIN", 1 << 16))
#: The work factor of a kernel that evaluates exp, log or tanh per element.
HEAVY = 4

#: The work from which :func:`pick` runs parallel variants (set by :func:`apply_threads`;
#: infinite with one thread or without a thread-safe layer).
par_min = math.inf
#: Numba's thread count as gpunn set it.
num_threads = 1
_generation = 0
_local = threading.local()  # per Python thread: applied generation, workspaces


def apply_threads(n: int, blas: bool = True) -> None:
    """Use ``n`` threads: Numba's count (clamped to the threads Numba launched) and, with
    ``blas``, BLAS's (every BLAS library loaded, through threadpoolctl)."""
    global num_threads, _generation, par_min
    num_threads = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(num_threads)
    _generation += 1
    _local.generation = _generation
    par_min = PARALLEL_MIN_SIZE if _jit.PARALLEL and num_threads > 1 else math.inf
    if blas:
        set_blas_threads(int(n))


def set_blas_threads(n: int) -> None:
    import threadpoolctl

    _kernel_blas()  # SciPy's BLAS loaded first, so that it is limited too
    threadpoolctl.threadpool_limits(limits=n, user_api="blas")


class single_blas:
    """``with single_blas():`` BLAS runs one thread inside the block, each library's count
    restored on exit: for kernels that call BLAS themselves. In a parallel kernel, BLAS
    threads nested in Numba's would only compete for the same cores; in a serial one (a
    small product) waking BLAS's threads costs more than they save, and on a busy machine
    far more (a 64x400x120 product took 36 ms on two BLAS threads at load 70)."""

    __slots__ = ("saved",)

    def __enter__(self):
        libs = _kernel_blas()
        self.saved = [lib.num_threads for lib in libs]
        for lib, n in zip(libs, self.saved):
            if n != 1:
                lib.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        for lib, n in zip(_kernel_blas(), self.saved):
            if n != 1:
                lib.set_num_threads(n)
        return False


_blas_libs = None


def _kernel_blas():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process, found once,
    after the BLAS that Numba's ``np.dot`` calls (SciPy's) is loaded."""
    global _blas_libs
    if _blas_libs is None:
        import scipy.linalg.cython_blas  # noqa: F401 (loads the BLAS kernels call)
        import threadpoolctl

        controller = threadpoolctl.ThreadpoolController()
        _blas_libs = controller.select(user_api="blas").lib_controllers
    return _blas_libs


def sync_threads() -> None:
    """Numba's thread count is per Python thread: apply gpunn's in this thread once."""
    if getattr(_local, "generation", -1) != _generation:
        numba.set_num_threads(num_threads)
        _local.generation = _generation


def pick(kern, n):
    """The serial or the parallel variant of ``kern`` for an op on ``n`` elements of work."""
    if n >= par_min:
        sync_threads()
        return kern.parallel
    return kern.serial


def workspace(name, shape, dtype):
    """A scratch array of ``shape`` reused by this Python thread (contents undefined)."""
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    size = math.prod(shape)
    key = (name, dtype)
    buf = spaces.get(key)
    if buf is None or buf.size < size:
        buf = spaces[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def clear_workspaces() -> None:
    """Free this thread's scratch arrays (convolution buffers)."""
    _local.spaces = {}
