"""gpunn: a deep-learning engine whose layers run on a NumPy reference, Numba CPU kernels
or CUDA kernels through CuPy, switchable at run time."""

import numpy as _np

from gpunn import distributed, functional, models, nn, optim, testing
from gpunn.autograd import enable_grad, is_grad_enabled, no_grad
from gpunn.backends import available_backends, get_backend, set_backend, use_backend
from gpunn.cuda import set_tf32
from gpunn.errors import (
    BackendError,
    CheckpointError,
    DTypeError,
    GpunnError,
    GraphError,
    ShapeError,
)
from gpunn.gradcheck import gradcheck
from gpunn.random import manual_seed
from gpunn.serialization import load, save
from gpunn.tensor import Tensor, from_dlpack, ones, rand, randn, tensor, zeros
from gpunn.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

float32 = _np.dtype("float32")
float64 = _np.dtype("float64")
int64 = _np.dtype("int64")

__all__ = [
    "BackendError",
    "CheckpointError",
    "DTypeError",
    "GpunnError",
    "GraphError",
    "ShapeError",
    "Tensor",
    "available_backends",
    "distributed",
    "enable_grad",
    "float32",
    "float64",
    "from_dlpack",
    "functional",
    "get_backend",
    "get_num_threads",
    "gradcheck",
    "int64",
    "is_grad_enabled",
    "load",
    "manual_seed",
    "models",
    "nn",
    "no_grad",
    "ones",
    "optim",
    "rand",
    "randn",
    "save",
    "set_backend",
    "set_num_threads",
    "set_tf32",
    "tensor",
    "testing",
    "use_backend",
    "zeros",
]
