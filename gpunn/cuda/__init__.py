"""CUDA settings of the cupy backend and captured steps.

* Settings (:mod:`gpunn.cuda.settings`): :func:`set_tf32`, :func:`tf32_enabled`,
  :func:`set_eager_checks`; importing them needs neither CuPy nor a GPU, and a setting
  made before the backend starts is applied when it starts.
* Captured steps (:mod:`gpunn.cuda.graphs`): :func:`graphed` captures a training step into
  a CUDA graph and returns a :class:`GraphedStep` that replays it; :func:`capture_plan`
  says which ops a captured step may contain; :func:`replayed` and :func:`on_host` carry a
  step's host values into its replays and its device flags back out. Not yet run on a
  GPU.
* :mod:`gpunn.cuda.cublas`: the ctypes binding of cuBLAS the cupy backend's matrix
  products go through (capturable, unlike CuPy's).
"""

from gpunn.cuda.graphs import (
    GraphedStep,
    blockers,
    capture_plan,
    graphed,
    on_host,
    replayed,
    step_blockers,
)
from gpunn.cuda.settings import set_eager_checks, set_tf32, tf32_enabled

__all__ = [
    "GraphedStep",
    "blockers",
    "capture_plan",
    "graphed",
    "on_host",
    "replayed",
    "set_eager_checks",
    "set_tf32",
    "step_blockers",
    "tf32_enabled",
]
