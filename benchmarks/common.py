"""What every benchmark module shares: the parameter grid, the backends and the PyTorch
peer, seeded inputs, and the base class that times an op's forward and backward.

The default grid is small: large sizes, and float64 for ops that are not trained in
float64, join it only with ``GPUNN_BENCH_FULL=1``. The backend axis is fixed; a backend
that cannot run here raises ``NotImplementedError`` in ``setup``, which asv shows as
skipped ("n/a"), and so does the PyTorch peer where PyTorch (or CUDA) is missing.

Inputs are drawn from fixed seeds. **Append only**: changing a size or a seed changes
what an existing benchmark measures and breaks its history; add a new size instead.
"""

from __future__ import annotations

import abc
import importlib.util
import os
import time
import timeit

import numpy as np

import gpunn
from gpunn.backends import backend_object, why_unavailable

# gpunn's backends, then the PyTorch peer series on the CPU and on CUDA.
BACKENDS = ["numpy", "numba", "cupy"]
PEERS = ["torch", "torch-cuda"]
ALL = BACKENDS + PEERS
GPU = {"cupy", "torch-cuda"}

DTYPES = ["float32", "float64"]
FULL = os.environ.get("GPUNN_BENCH_FULL") == "1"
THREADS = int(os.environ.get("GPUNN_BENCH_THREADS", "1"))


def _preimport() -> None:
    """asv forks every benchmark process from a server that has imported this suite, so
    what is imported here is paid once instead of once per process (PyTorch alone takes
    seconds): PyTorch, where installed. Never a backend: a CUDA context does not survive
    ``fork``, and neither does an OpenMP thread pool (importing gpunn's Numba backend
    starts Numba's threads). peakmem_ results include PyTorch's modules: compare them
    within one environment (asv does), not across environments with and without it."""
    if importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401


_preimport()


def _nvidia_device_present() -> bool:
    """True when the kernel driver lists an NVIDIA GPU: a cheap test that avoids importing
    PyTorch or CuPy just to learn that CUDA is absent."""
    return os.path.exists("/dev/nvidiactl") or os.path.isdir("/proc/driver/nvidia/gpus")


def _timer():
    """Wall-clock seconds, or with GPUNN_BENCH_TIMER=process this process's CPU seconds.

    CPU time does not count the moments other programs hold the core, so comparisons on a
    shared machine stop flagging their load as regressions (`nox -s bench_compare` uses
    it). It equals the step's time only for single-threaded CPU work: it is ignored with
    GPUNN_BENCH_THREADS > 1 and where a GPU is present (waiting for a GPU costs no CPU).
    """
    wanted = os.environ.get("GPUNN_BENCH_TIMER", "wall")
    if wanted == "process" and THREADS == 1 and not _nvidia_device_present():
        return time.process_time
    return timeit.default_timer


TIMER = _timer()


def skip(reason: str):
    """Raise asv's skip signal from ``setup``."""
    raise NotImplementedError(reason)


def pin_blas_threads() -> None:
    """Hold every BLAS/OpenMP pool of this process to THREADS threads (threadpoolctl).
    The environment variables set in ``benchmarks/__init__`` do not reach a library that
    was loaded before the suite was imported; in asv's virtualenvs some processes ended up
    with a second OpenBLAS thread, and each small product then waited ~4 ms for it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=THREADS)


def torch_or_skip(device: str = "cpu"):
    """The ``torch`` module, set to ``THREADS`` threads; skips when PyTorch is missing or,
    for ``device="cuda"``, when it has no CUDA device."""
    if importlib.util.find_spec("torch") is None:
        skip("PyTorch is not installed (the peer series is optional)")
    if device == "cuda" and not _nvidia_device_present():
        skip("no NVIDIA GPU here")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        skip("PyTorch has no CUDA device here")
    torch.set_num_threads(THREADS)
    pin_blas_threads()
    return torch


def backend_or_skip(name: str):
    """gpunn's backend ``name`` set to ``THREADS`` threads; skips with the registry's
    reason when it cannot run here."""
    if name in GPU and not _nvidia_device_present():
        skip(f"no NVIDIA GPU here (backend {name!r})")  # without importing CuPy
    reason = why_unavailable(name)
    if reason is not None:
        skip(reason)
    gpunn.set_num_threads(THREADS)
    pin_blas_threads()
    return backend_object(name)


def size_names(sizes: dict, large=()) -> list[str]:
    """The size names of the grid: the large ones only with GPUNN_BENCH_FULL=1."""
    return [name for name in sizes if FULL or name not in large]


def dtypes(float64: bool = False) -> list[str]:
    """float32, plus float64 where users train in it (``float64=True``) or in a full run."""
    return DTYPES if float64 or FULL else DTYPES[:1]


def check_dtype(backend: str, dtype: str):
    if dtype == "float64" and backend in GPU:
        skip("float64 is not benchmarked on the GPU")


def check_gpu_size(backend: str, size, gpu_sizes) -> None:
    if size in gpu_sizes and backend not in GPU and not FULL:
        skip(f"size {size} is sized for a GPU; CPU backends run it with GPUNN_BENCH_FULL=1")


def rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


class Peer:
    """Arrays and a synchronize for the PyTorch peer on ``device`` ("cpu" or "cuda")."""

    def __init__(self, backend: str):
        self.device = "cuda" if backend == "torch-cuda" else "cpu"
        self.torch = torch_or_skip(self.device)

    def tensor(self, host, grad=False):
        if not isinstance(host, np.ndarray):
            return host
        t = self.torch.from_numpy(np.array(host, order="C")).to(self.device)  # 0-d stays 0-d
        return t.requires_grad_(grad and host.dtype.kind == "f")

    def synchronize(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()


class OpBenchmark(abc.ABC):
    """Times ``be.<op>_forward`` and ``be.<op>_backward`` of one op, and the same op in
    PyTorch (the peer: forward with autograd recording, then ``torch.autograd.grad``).

    A subclass sets ``op``, ``sizes`` (size name -> the spec ``inputs`` and ``op_params``
    read), ``params = [ALL, size_names(SIZES, LARGE), dtypes(...)]`` and implements
    ``inputs`` and ``torch_forward``. ``setup`` builds the inputs on the device and calls
    forward and backward once, so JIT/NVRTC compilation and first allocations stay out of
    the timed region; every timed call ends with a synchronize.

    The class is abstract, so asv collects only its concrete subclasses.
    """

    op: str = ""
    sizes: dict = {}
    gpu_sizes: tuple = ()  # sizes made for a GPU: CPU backends run them only in a full run
    param_names = ["backend", "size", "dtype"]
    timeout = 120.0
    timer = staticmethod(TIMER)

    grads: tuple | None = None  # which inputs get gradients; None: every float array

    @abc.abstractmethod
    def inputs(self, rng, spec, dtype) -> list:
        """Host inputs (ndarrays, Python scalars or None) in the op's positional order."""

    def op_params(self, spec) -> dict:
        """Keyword settings of the op (stride, axis, activation...)."""
        return {}

    @abc.abstractmethod
    def torch_forward(self, torch, *tensors):
        """The same computation in PyTorch (``self.spec`` holds the size's settings);
        returns a tensor or a tuple of tensors."""

    def setup(self, backend, size, dtype):
        check_dtype(backend, dtype)
        check_gpu_size(backend, size, self.gpu_sizes)
        self.spec = self.sizes[size]
        host = self.inputs(rng(), self.spec, np.dtype(dtype))
        needs = self.grads or tuple(isinstance(x, np.ndarray) and x.dtype.kind == "f" for x in host)
        if backend in PEERS:
            self._setup_peer(backend, host, needs, size)
        else:
            self._setup_gpunn(backend, host, needs, size)
        self.time_forward(backend, size, dtype)  # warm-up: compile, allocate
        self.time_backward(backend, size, dtype)

    def _setup_gpunn(self, backend, host, needs, size):
        be = backend_or_skip(backend)
        args = [be.asarray(x) if isinstance(x, np.ndarray) else x for x in host]
        params = self.op_params(self.spec)
        forward = getattr(be, self.op + "_forward")
        backward = getattr(be, self.op + "_backward")
        Y, saved = forward(*args, **params)
        dY = _like(Y, be.asarray, seed=2)
        self.sync = be.synchronize
        self.forward = lambda: forward(*args, **params)
        self.backward = lambda: backward(dY, saved, needs)

    def _setup_peer(self, backend, host, needs, size):
        peer = Peer(backend)
        torch = peer.torch
        args = [peer.tensor(x, grad=n) for x, n in zip(host, needs)]
        wrt = [a for a, n in zip(args, needs) if n]
        Y = self.torch_forward(torch, *args)
        Ys = Y if isinstance(Y, tuple) else (Y,)
        dYs = _like(tuple(y.detach().cpu().numpy() for y in Ys), peer.tensor, seed=2)
        self.sync = peer.synchronize
        self.forward = lambda: self.torch_forward(torch, *args)
        self.backward = lambda: torch.autograd.grad(Ys, wrt, dYs, retain_graph=True)

    def time_forward(self, backend, size, dtype):
        self.forward()
        self.sync()

    def time_backward(self, backend, size, dtype):
        self.backward()
        self.sync()


def _like(Y, convert, seed):
    """Random gradients shaped like ``Y`` (an array or a tuple of arrays), converted."""
    r = rng(seed)
    if isinstance(Y, tuple):
        return tuple(_like(y, convert, seed + 1 + k) for k, y in enumerate(Y))
    host = np.asarray(Y if isinstance(Y, np.ndarray) else _host(Y))
    return convert(np.asarray(r.standard_normal(host.shape), dtype=host.dtype))


def _host(Y):
    """A host copy of a backend array (NumPy, CuPy) for its shape and dtype."""
    get = getattr(Y, "get", None)
    return get() if get is not None else np.asarray(Y)
