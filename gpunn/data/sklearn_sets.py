"""The two data sets that ship inside scikit-learn (an optional extra of gpunn)."""

from __future__ import annotations

import numpy as np

from gpunn.data.split import DataSplit, standardize, stratified_split

INSTALL_HINT = "pip install 'gpunn[data]'"


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as e:
        raise ImportError(
            f"this data set ships with scikit-learn, which is not installed ({e}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return datasets


def load_breast_cancer(val_fraction=0.1, test_fraction=0.2, seed: int = 0) -> DataSplit:
    """Wisconsin breast cancer: 569 tumours, 30 measurements each, malignant (0) or benign
    (1). A stratified, seeded train / validation / test split (70/10/20%); features
    standardized with the training part's mean and deviation per feature. Binary
    classification, tabular (N, 30)."""
    raw = _sklearn_datasets().load_breast_cancer()
    x = raw.data.astype(np.float64)
    y = raw.target.astype(np.int64)
    tr, va, te = stratified_split(y, val_fraction, test_fraction, seed=seed)
    x_train, x_val, x_test = standardize(x[tr], x[va], x[te], per_feature=True)
    return DataSplit(
        "breast_cancer",
        x_train,
        y[tr],
        x_val,
        y[va],
        kind="tabular",
        num_classes=2,
        description="breast cancer (scikit-learn): 30 features, 2 classes",
        x_test=x_test,
        y_test=y[te],
    )


def load_digits(val_fraction=0.1, test_fraction=0.2, seed: int = 0) -> DataSplit:
    """Handwritten digits: 1,797 images of 8x8 pixels (values 0..16), classes 0-9.
    A stratified, seeded train / validation / test split (70/10/20%); pixels standardized
    with one mean and deviation from the training part. Images (N, 1, 8, 8)."""
    raw = _sklearn_datasets().load_digits()
    x = raw.images.astype(np.float64)[:, None, :, :]
    y = raw.target.astype(np.int64)
    tr, va, te = stratified_split(y, val_fraction, test_fraction, seed=seed)
    x_train, x_val, x_test = standardize(x[tr], x[va], x[te], per_feature=False)
    return DataSplit(
        "digits",
        x_train,
        y[tr],
        x_val,
        y[va],
        kind="image",
        num_classes=10,
        description="digits (scikit-learn): 8x8 images, 10 classes",
        x_test=x_test,
        y_test=y[te],
    )
