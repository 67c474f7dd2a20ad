"""DataSplit: a data set divided into training and validation arrays, with what a model
needs to know about it (task, classes, layout)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpunn.data.loader import TensorDataset

KINDS = ("tabular", "image", "sequence")
TASKS = ("classification", "regression")


@dataclass
class DataSplit:
    """Training and validation arrays of one data set, on the host.

    Attributes:
        name: the data set's name (``"digits"``).
        x_train, y_train, x_val, y_val: features (float32) and targets: int64 class indices
            for classification, float32 (N, 1) values for regression.
        kind: ``"tabular"`` (N, F), ``"image"`` (N, C, H, W) or ``"sequence"`` (N, T, F).
        task: ``"classification"`` or ``"regression"``.
        num_classes: classes of a classification task (None for regression).
        description: one line for logs.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    kind: str
    task: str = "classification"
    num_classes: int | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DataSplit: kind must be one of {KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"DataSplit: task must be one of {TASKS}, got {self.task!r}")
        for part in ("train", "val"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if len(x) != len(y):
                raise ValueError(
                    f"DataSplit {self.name}: x_{part} has {len(x)} samples, y_{part} {len(y)}"
                )
        if self.task == "classification" and self.num_classes is None:
            self.num_classes = int(max(self.y_train.max(), self.y_val.max())) + 1

    @property
    def sample_shape(self) -> tuple:
        """Shape of one sample: (F,), (C, H, W) or (T, F)."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_features(self) -> int:
        """Values per sample (what a flat model takes)."""
        return int(np.prod(self.sample_shape))

    @property
    def train(self) -> TensorDataset:
        return TensorDataset(self.x_train, self.y_train)

    @property
    def val(self) -> TensorDataset:
        return TensorDataset(self.x_val, self.y_val)

    def __repr__(self):
        return (
            f"DataSplit({self.name!r}, train {self.x_train.shape}, val {self.x_val.shape}, "
            f"{self.kind}, {self.task}"
            + (f", {self.num_classes} classes" if self.num_classes else "")
            + ")"
        )


def stratified_split(y: np.ndarray, val_fraction: float, seed: int):
    """Train and validation index arrays: each class split in the same proportion, both in
    a seeded random order."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(members) * val_fraction))
        val.append(members[:k])
        train.append(members[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def standardize(x_train: np.ndarray, x_val: np.ndarray, per_feature: bool = True):
    """Scale both parts by the training part's mean and standard deviation: per feature
    (columns of tabular data) or one mean and deviation for all values (images, so that
    pixels keep their relative brightness). Constant features are only centred."""
    axis = 0 if per_feature else None
    mean = x_train.mean(axis=axis, dtype=np.float64)
    std = x_train.std(axis=axis, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_val - mean) / std).astype(np.float32),
    )
