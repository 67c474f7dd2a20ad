"""One knob for the CPU backends' thread count."""

from __future__ import annotations

import os

_num_threads: int | None = None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get_num_threads() -> int:
    """Threads the CPU backends use: set_num_threads, else GPUNN_NUM_THREADS, else the CPUs
    this process may use."""
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("GPUNN_NUM_THREADS")
    return max(1, int(env)) if env else available_cpus()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the CPU backends' parallel kernels (and their BLAS calls)."""
    global _num_threads
    if int(n) < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads = int(n)
    for hook in _hooks:
        hook(_num_threads)


_hooks: list = []


def on_change(hook) -> None:
    """Call ``hook(n)`` whenever the thread count changes (backends register here)."""
    _hooks.append(hook)
