"""gpunn's seeded random state. Every draw happens on the host and is then moved to the
backend, so one seed gives the same parameters, dropout masks and shuffles everywhere.

This module holds only the host generator and imports nothing from gpunn; the functions
that build tensors from its draws (``randn``, ``rand``, ``uniform``) live beside ``zeros``
and ``ones`` in :mod:`gpunn.tensor`."""

from __future__ import annotations

import numpy as np

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


def permutation(n: int) -> np.ndarray:
    """A random order of range(n) (host ints, for shuffling)."""
    return _generator.permutation(n)
