"""gpunn's asv suite: one ``bench_<family>.py`` per op family plus whole training steps.

Run from the repository root (where asv.conf.json is); ``benchmarks/README.md`` has the
commands. This package is imported once by asv's forkserver before any benchmark runs,
so nothing here may touch a GPU (a CUDA context does not survive ``fork``).
"""

import os

# Pin BLAS and OpenMP pools before NumPy (or PyTorch) is imported, so every process asv
# starts uses the same thread count. GPUNN_BENCH_THREADS changes it (default 1: the
# steadiest numbers; `gpunn bench --threads N` is the tool for parallel scaling).
_threads = os.environ.get("GPUNN_BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads)
