"""gpunn's seeded random state. Every draw happens on the host and is then moved to the
backend, so one seed gives the same parameters, dropout masks and shuffles everywhere."""

from __future__ import annotations

import numpy as np

from gpunn.backends import active_backend, backend_object
from gpunn.tensor import Tensor

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reseed gpunn's generator (parameter init, dropout, DataLoader shuffles)."""
    global _generator
    _generator = np.random.default_rng(int(seed))


def generator() -> np.random.Generator:
    """The host generator behind every random draw of gpunn."""
    return _generator


def get_rng_state() -> np.ndarray:
    """The generator's state as a uint64 array (for checkpoints; no pickling)."""
    state = _generator.bit_generator.state
    s = state["state"]
    return np.array(
        [
            s["state"] >> 64,
            s["state"] & (2**64 - 1),
            s["inc"] >> 64,
            s["inc"] & (2**64 - 1),
            state["has_uint32"],
            state["uinteger"],
        ],
        dtype=np.uint64,
    )


def set_rng_state(arr) -> None:
    """Restore a state returned by :func:`get_rng_state`."""
    a = [int(v) for v in np.asarray(arr, dtype=np.uint64)]
    _generator.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (a[0] << 64) | a[1], "inc": (a[2] << 64) | a[3]},
        "has_uint32": a[4],
        "uinteger": a[5],
    }


def next_seed() -> int:
    """A fresh 63-bit seed for counter-based kernels (dropout)."""
    return int(_generator.integers(0, 2**63 - 1))


def _place(host, dtype, backend, requires_grad):
    be = backend_object(backend) if backend is not None else active_backend()
    return Tensor(be.asarray(host.astype(dtype or np.float32)), be, requires_grad=requires_grad)


def _shape(shape):
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape


def randn(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Standard normal samples, float32 unless ``dtype`` says otherwise."""
    return _place(_generator.standard_normal(_shape(shape)), dtype, backend, requires_grad)


def rand(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1)."""
    return _place(_generator.random(_shape(shape)), dtype, backend, requires_grad)


def uniform(shape, low, high, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Uniform samples in [low, high): PyTorch's default layer initialisation."""
    return _place(_generator.uniform(low, high, tuple(shape)), dtype, backend, requires_grad)


def permutation(n: int) -> np.ndarray:
    """A random order of range(n) (host ints, for shuffling)."""
    return _generator.permutation(n)
