"""Synthetic sequence tasks for recurrent networks, generated from a seed.

Both need memory across time steps, which is what recurrent networks are for: a
feed-forward network only sees them when the whole sequence is flattened into one input.
"""

from __future__ import annotations

import numpy as np

from gpunn.data.split import DataSplit

# Hochreiter & Schmidhuber (1997): an adding-problem answer counts as right when its
# absolute error is below 0.04.
ADDING_TOLERANCE = 0.04


def adding_problem(n: int, length: int, seed: int = 0):
    """The adding problem: ``x`` (n, length, 2) holds random values in [0, 1) (channel 0)
    and a marker (channel 1) that is 1 at exactly two steps, one in each half of the
    sequence; ``y`` (n, 1) is the sum of the two marked values. Predicting 1 always gives
    a mean squared error of about 0.167; a network that solves it gets far below 0.01."""
    if length < 2:
        raise ValueError(f"adding_problem: length must be >= 2, got {length}")
    rng = np.random.default_rng(seed)
    values = rng.random((n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


def parity(n: int, length: int, seed: int = 0):
    """Parity: ``x`` (n, length, 1) random bits; ``y`` (n,) int64 is 1 when the number of
    ones is odd. Every bit matters, so no single step decides the answer."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, length))
    return bits.astype(np.float32)[:, :, None], (bits.sum(axis=1) % 2).astype(np.int64)


def load_adding(
    n_train: int = 5000, n_val: int = 1000, n_test: int = 1000, length: int = 20, seed: int = 0
):
    """The adding problem as a regression data set (see :func:`adding_problem`); the three
    parts are drawn from seeds ``seed``, ``seed + 1`` and ``seed + 2``."""
    parts = [adding_problem(n, length, seed + k) for k, n in enumerate((n_train, n_val, n_test))]
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = parts
    return DataSplit(
        "adding",
        x_train,
        y_train,
        x_val,
        y_val,
        kind="sequence",
        task="regression",
        description=f"adding problem: sequences of {length} steps, sum of 2 marked values",
        info={"tolerance": ADDING_TOLERANCE, "length": length},
        x_test=x_test,
        y_test=y_test,
    )


def load_parity(
    n_train: int = 4000, n_val: int = 1000, n_test: int = 1000, length: int = 8, seed: int = 0
):
    """Parity of random bit strings as a 2-class data set (see :func:`parity`); the three
    parts are drawn from seeds ``seed``, ``seed + 1`` and ``seed + 2``."""
    parts = [parity(n, length, seed + k) for k, n in enumerate((n_train, n_val, n_test))]
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = parts
    return DataSplit(
        "parity",
        x_train,
        y_train,
        x_val,
        y_val,
        kind="sequence",
        num_classes=2,
        description=f"parity of {length} random bits, 2 classes",
        info={"length": length},
        x_test=x_test,
        y_test=y_test,
    )
