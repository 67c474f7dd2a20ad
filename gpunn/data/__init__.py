"""Data: TensorDataset and DataLoader, and the data sets ``gpunn train`` knows.

* ``load_breast_cancer()``, ``load_digits()``: shipped with scikit-learn (``pip install
  'gpunn[data]'``), standardized, with a seeded stratified train/validation/test split.
* ``load_mnist()``, ``load_fashion_mnist()``: IDX files from the data folder
  (``GPUNN_DATA``, default ``<user cache>/gpunn/data``), downloaded and verified on first
  use; the official test images are the test part. ``read_idx`` / ``write_idx`` read and
  write the format itself.
* ``load_adding()``, ``load_parity()``: synthetic sequence tasks generated from a seed.

``load(name)`` loads any of them by name; ``DATASETS`` says what each one is.
"""

from __future__ import annotations

from gpunn.data.idx import (
    DataUnavailableError,
    IDXError,
    data_home,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    write_idx,
)
from gpunn.data.loader import DataLoader, TensorDataset
from gpunn.data.sklearn_sets import load_breast_cancer, load_digits
from gpunn.data.split import DataSplit
from gpunn.data.synthetic import adding_problem, load_adding, load_parity, parity

# name -> (kind, task, classes, loader): what a model needs to know before loading anything
DATASETS = {
    "breast_cancer": ("tabular", "classification", 2, load_breast_cancer),
    "digits": ("image", "classification", 10, load_digits),
    "mnist": ("image", "classification", 10, load_mnist),
    "fashion_mnist": ("image", "classification", 10, load_fashion_mnist),
    "adding": ("sequence", "regression", None, load_adding),
    "parity": ("sequence", "classification", 2, load_parity),
}


def load(name: str, **kwargs) -> DataSplit:
    """The data set called ``name`` (one of :data:`DATASETS`) as a :class:`DataSplit`."""
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return DATASETS[name][3](**kwargs)


__all__ = [
    "DATASETS",
    "DataLoader",
    "DataSplit",
    "DataUnavailableError",
    "IDXError",
    "TensorDataset",
    "adding_problem",
    "data_home",
    "load",
    "load_adding",
    "load_breast_cancer",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_parity",
    "parity",
    "read_idx",
    "write_idx",
]
