"""TensorDataset and DataLoader: host arrays in, batches of tensors on the active backend out.

The data stays on the host. For each batch the loader indexes the host arrays once (a
copy, in the batch's order) and hands that copy to the backend in one transfer, so a
batch costs one host copy and, on a GPU, one host-to-device copy.
"""

from __future__ import annotations

import math

import numpy as np

from gpunn import random as _random
from gpunn.backends import active_backend, backend_object
from gpunn.tensor import Tensor


def _host(value) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.numpy()
    return np.asarray(value)


class TensorDataset:
    """Samples are the rows of one or more arrays (or tensors) of the same length.

    ``TensorDataset(x, y)[i]`` is ``(x[i], y[i])``; an index array or a slice gives the
    batch ``(x[idx], y[idx])``. The arrays are kept on the host (tensors are copied there).

    >>> ds = TensorDataset(np.zeros((10, 3), np.float32), np.arange(10))
    >>> len(ds), ds[np.array([0, 2])][1]
    (10, array([0, 2]))
    """

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_host(a) for a in arrays)
        lengths = {a.shape[0] if a.ndim else None for a in self.arrays}
        if None in lengths or len(lengths) != 1:
            shapes = ", ".join(str(a.shape) for a in self.arrays)
            raise ValueError(
                f"TensorDataset: every array needs the same first dimension, got shapes {shapes}"
            )

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def __repr__(self):
        shapes = ", ".join(f"{a.shape} {a.dtype}" for a in self.arrays)
        return f"TensorDataset({shapes})"


class DataLoader:
    """Iterate over a dataset in batches of tensors.

    Args:
        dataset: a :class:`TensorDataset`, or any object with ``__len__`` and
            ``__getitem__(i)`` returning a tuple of arrays (they are stacked per batch).
        batch_size: samples per batch (the last one may be smaller).
        shuffle: visit the samples in a new random order every epoch.
        seed: with ``None`` the order comes from gpunn's generator (``gpunn.manual_seed``,
            saved in checkpoints); with an int, epoch ``e``'s order is a function of
            ``(seed, e)`` alone (see :meth:`set_epoch`).
        drop_last: skip a last batch smaller than ``batch_size``.
        backend: where batches are created (default: the active backend at iteration time).

    Each iteration is one epoch and yields ``(x, y)`` tensors (as many tensors as the
    dataset has arrays).
    """

    def __init__(
        self,
        dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        backend: str | None = None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = None if seed is None else int(seed)
        self.drop_last = bool(drop_last)
        self.backend = backend
        self.epoch = 0
        if backend is not None:
            backend_object(backend)  # unknown or unavailable: say so now

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (for a seeded loader, its order)."""
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """The sample order of the next epoch (int64 host array), and advance the epoch."""
        n = len(self.dataset)
        if not self.shuffle:
            order = np.arange(n, dtype=np.int64)
        elif self.seed is None:
            order = _random.permutation(n).astype(np.int64)
        else:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(n)
        self.epoch += 1
        return order

    def batch_indices(self, order: np.ndarray, start: int = 0):
        """The index arrays of the batches of ``order``, from batch number ``start`` on."""
        for b in range(start, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]

    def fetch(self, indices) -> tuple:
        """The batch of samples ``indices`` as tensors: one host copy, one transfer."""
        be = backend_object(self.backend) if self.backend is not None else active_backend()
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.dataset, TensorDataset):
            parts = [np.take(a, indices, axis=0) for a in self.dataset.arrays]
        else:
            samples = [self.dataset[int(i)] for i in indices]
            if not isinstance(samples[0], tuple | list):
                samples = [(s,) for s in samples]
            parts = [np.stack([np.asarray(s[k]) for s in samples]) for k in range(len(samples[0]))]
        # np.take / np.stack made fresh contiguous copies: wrap them without copying again
        return tuple(Tensor(be.asarray(np.ascontiguousarray(p)), be) for p in parts)

    def __iter__(self):
        order = self.epoch_order()
        for idx in self.batch_indices(order):
            yield self.fetch(idx)

    def __repr__(self):
        return (
            f"DataLoader({self.dataset!r}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})"
        )
