"""Whole training steps of the reference workloads (forward, loss, backward, SGD update;
see ``gpunn.workloads``), their peak memory, and the cold-start costs a user waits for:
``import gpunn``, and the first training step with an empty and with a filled kernel cache.

These catch the regressions that only show in the glue between ops (graph bookkeeping,
allocation, dispatch), which the per-op modules cannot see.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from gpunn import workloads

from .common import (
    ALL,
    BACKENDS,
    FULL,
    GPU,
    PEERS,
    THREADS,
    TIMER,
    Peer,
    backend_or_skip,
    skip,
)

WORKLOADS = [n for n in workloads.ALL if workloads.spec(n).kind == "step"]
# Kernel caches: gpunn's own, Numba's (cache=True) and CuPy's (NVRTC modules).
CACHE_VARS = ("GPUNN_CACHE_DIR", "NUMBA_CACHE_DIR", "CUPY_CACHE_DIR")


class TrainStep:
    """One training step at the reference batch size (scale 1) and at 8x the batch, where
    a GPU is no longer launch-bound (scale 8 runs on the GPU, and on the CPU only with
    GPUNN_BENCH_FULL=1). Every training-step workload of gpunn.workloads; the GPU-sized
    ones (mlp-wide, resnet) run on the GPU backends only."""

    params = [ALL, WORKLOADS, [1, 8]]
    param_names = ["backend", "workload", "scale"]
    timeout = 300.0
    timer = staticmethod(TIMER)

    def setup(self, backend, workload, scale):
        if scale != 1 and backend not in GPU and not FULL:
            skip("8x batch on the CPU runs with GPUNN_BENCH_FULL=1")
        if workloads.spec(workload).gpu_only and backend not in GPU:
            skip(f"{workload} is sized for a GPU (gpunn bench --workload {workload} --scale 0.05)")
        if backend in PEERS:
            peer = Peer(backend)
            self.w = workloads.build_torch(workload, peer.device, scale)
        else:
            backend_or_skip(backend)
            self.w = workloads.build(workload, backend, scale)
        for _ in range(2):  # warm-up: compile, allocate, fill the optimizer state
            self.w.step()
        self.w.sync()

    def time_step(self, backend, workload, scale):
        self.w.step()
        self.w.sync()

    def peakmem_step(self, backend, workload, scale):
        self.w.step()
        self.w.sync()


class CapturedTrainStep:
    """The same training steps captured into one CUDA graph and replayed: gpunn's
    (``gpunn.cuda.graphed``, backend cupy) and PyTorch's (``torch.cuda.CUDAGraph``, backend
    torch-cuda), to compare with TrainStep's eager rows of the same run. GPU only."""

    params = [["cupy", "torch-cuda"], WORKLOADS, [1, 8]]
    param_names = ["backend", "workload", "scale"]
    timeout = 300.0
    timer = staticmethod(TIMER)

    def setup(self, backend, workload, scale):
        if backend == "torch-cuda":
            peer = Peer(backend)
            self.w = workloads.build_torch(workload, peer.device, scale, graph=True)
        else:
            backend_or_skip(backend)
            self.w = workloads.build(workload, backend, scale, graph=True)
        for _ in range(2):  # the capture happened in build; two replays to settle
            self.w.step()
        self.w.sync()

    def time_step(self, backend, workload, scale):
        self.w.step()
        self.w.sync()


def timeraw_import_gpunn():
    """A fresh interpreter importing gpunn (no backend is loaded until used)."""
    return "import gpunn"


def _first_step_code(backend, workload):
    return f"""
import gpunn
from gpunn import workloads
w = workloads.build({workload!r}, {backend!r})
w.step()
w.sync()
"""


def _point_caches_code(path_source):
    """Source that points every kernel cache at the folder the Python expression
    ``path_source`` names, before gpunn is imported."""
    return f"""
import os
for var in {CACHE_VARS!r}:
    os.environ[var] = {path_source}
os.environ["GPUNN_NUM_THREADS"] = {str(THREADS)!r}
"""


class _FirstStep:
    """Seconds from a fresh interpreter to the end of the first training step: import
    gpunn, build the workload, one step (JIT compilation or cache loading included)."""

    params = [BACKENDS, list(workloads.NAMES) if FULL else ["mlp"]]
    param_names = ["backend", "workload"]
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0.0
    timeout = 900.0

    def setup(self, backend, workload):
        backend_or_skip(backend)
        self.root = tempfile.mkdtemp(prefix="gpunn-bench-cache-")

    def teardown(self, backend, workload):
        if getattr(self, "root", None):  # absent when setup skipped
            shutil.rmtree(self.root, ignore_errors=True)


class FirstStepColdCache(_FirstStep):
    """Every sample starts from an empty kernel cache: the full compile."""

    def timeraw_first_step(self, backend, workload):
        fresh = f"import tempfile\n_cache = tempfile.mkdtemp(dir={self.root!r})\n"
        return _first_step_code(backend, workload), fresh + _point_caches_code("_cache")


class FirstStepWarmCache(_FirstStep):
    """The kernel cache was filled by an earlier process: what every later run pays."""

    def setup(self, backend, workload):
        super().setup(backend, workload)
        code = _point_caches_code(repr(self.root)) + _first_step_code(backend, workload)
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))

    def timeraw_first_step(self, backend, workload):
        return _first_step_code(backend, workload), _point_caches_code(repr(self.root))
