"""DataSplit: a data set divided into training, validation and test arrays, with what a
model needs to know about it (task, classes, layout).

The three parts have three jobs: the model learns from the training part, the validation
part is there for choices (watching epochs, trying settings), and the test part is looked
at once, at the end, to say how well the finished model does on data that chose nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpunn.data.loader import TensorDataset

KINDS = ("tabular", "image", "sequence")
TASKS = ("classification", "regression")


@dataclass
class DataSplit:
    """Training, validation and test arrays of one data set, on the host.

    Attributes:
        name: the data set's name (``"digits"``).
        x_train, y_train, x_val, y_val: features (float32) and targets: int64 class indices
            for classification, float32 (N, 1) values for regression.
        x_test, y_test: the held-out test part, same layout (None: the set has none).
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
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"DataSplit: kind must be one of {KINDS}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"DataSplit: task must be one of {TASKS}, got {self.task!r}")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError(f"DataSplit {self.name}: give both x_test and y_test, or neither")
        for part in ("train", "val", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x is not None and len(x) != len(y):
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

    @property
    def test(self) -> TensorDataset | None:
        return None if self.x_test is None else TensorDataset(self.x_test, self.y_test)

    def __repr__(self):
        return (
            f"DataSplit({self.name!r}, train {self.x_train.shape}, val {self.x_val.shape}, "
            + (f"test {self.x_test.shape}, " if self.x_test is not None else "")
            + f"{self.kind}, {self.task}"
            + (f", {self.num_classes} classes" if self.num_classes else "")
            + ")"
        )


def stratified_split(y: np.ndarray, *fractions: float, seed: int = 0):
    """Index arrays of a seeded, stratified split: each class divided in the same
    proportions. ``stratified_split(y, 0.1, 0.2, seed=0)`` returns (rest, part of 10%,
    part of 20%): the first array gets what the fractions leave. Every array is in a seeded
    random order."""
    if not fractions or any(not 0 < f < 1 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"fractions must be in (0, 1) and sum below 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for k, f in enumerate(fractions, start=1):
            count = int(round(len(members) * f))
            parts[k].append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return tuple(rng.permutation(np.concatenate(p)) for p in parts)


def standardize(x_train: np.ndarray, *others: np.ndarray, per_feature: bool = True):
    """Scale ``x_train`` and every array of ``others`` by the training part's mean and
    standard deviation: per feature (columns of tabular data) or one mean and deviation for
    all values (images, so that pixels keep their relative brightness). Constant features
    are only centred. Returns the scaled arrays, float32, in the order given."""
    axis = 0 if per_feature else None
    mean = x_train.mean(axis=axis, dtype=np.float64)
    std = x_train.std(axis=axis, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return tuple(((x - mean) / std).astype(np.float32) for x in (x_train, *others))
