"""CIFAR-10 from its binary distribution (``cifar-10-binary.tar.gz``).

The archive holds ``cifar-10-batches-bin/data_batch_1.bin`` .. ``data_batch_5.bin`` (10,000
training images each) and ``test_batch.bin`` (10,000 test images). Each file is a run of
3073-byte records: the label (0-9), then the 32x32 image as 1024 red, 1024 green and 1024
blue bytes, each plane row by row. The archive is kept in ``<data folder>/cifar10/``,
downloaded there on first use and verified against its published MD5 sum, exactly as the
MNIST files are; the six .bin files are read straight from it. A user may instead place the
extracted ``cifar-10-batches-bin`` folder there.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from gpunn.data.idx import fetch_file
from gpunn.data.split import DataSplit, stratified_split

CIFAR10 = {
    "title": "CIFAR-10",
    "urls": ("https://www.cs.toronto.edu/~kriz/",),
    "archive": ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
    "folder": "cifar-10-batches-bin",
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
RECORD = 1 + 3 * 32 * 32


class CIFARError(ValueError):
    """A CIFAR-10 batch file is not a run of 3073-byte records with labels 0-9."""


def read_cifar_batch(raw: bytes, name: str = "CIFAR-10 batch"):
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) from the bytes of one .bin file."""
    if len(raw) % RECORD:
        raise CIFARError(f"{name}: {len(raw)} bytes is not a whole number of {RECORD}-byte records")
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.size and labels.max() > 9:
        raise CIFARError(f"{name}: label {int(labels.max())} outside 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def write_cifar_batch(path, images, labels) -> None:
    """Write uint8 images (N, 3, 32, 32) and labels (N,) as one CIFAR-10 .bin file."""
    images = np.asarray(images, np.uint8).reshape(len(labels), -1)
    if images.shape[1] != RECORD - 1:
        raise ValueError(f"write_cifar_batch: images must be (N, 3, 32, 32), got {images.shape}")
    out = np.concatenate([np.asarray(labels, np.uint8)[:, None], images], axis=1)
    with open(path, "wb") as f:
        f.write(out.tobytes())


def _read_files(path: str, names) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches ``names`` from the archive at ``path`` or from an extracted folder."""
    folder = CIFAR10["folder"]
    if os.path.isdir(path):
        out = []
        for n in names:
            f = os.path.join(path, n)
            if not os.path.exists(f):
                raise CIFARError(f"CIFAR-10: {f} is missing from the placed folder")
            with open(f, "rb") as fh:
                out.append(read_cifar_batch(fh.read(), f))
        return out
    try:
        with tarfile.open(path, "r:gz") as tar:
            out = []
            for n in names:
                member = tar.extractfile(f"{folder}/{n}")
                if member is None:
                    raise CIFARError(f"CIFAR-10: {path} holds no file {folder}/{n}")
                out.append(read_cifar_batch(member.read(), f"{path}:{folder}/{n}"))
            return out
    except KeyError:
        raise CIFARError(f"CIFAR-10: {path} lacks one of {folder}/{', '.join(names)}") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CIFARError(f"CIFAR-10: cannot read {path} as a .tar.gz archive: {e}") from None


def load_cifar10(
    download: bool = True, quiet: bool = False, val_fraction: float = 0.1
) -> DataSplit:
    """CIFAR-10: 32x32 color images, 10 classes. The official test batch is the test part;
    a stratified, seeded ``val_fraction`` of the 50,000 training images (5,000) is the
    validation part, the rest trains. Pixels scaled to [0, 1] and standardized per channel
    with the training part's mean and deviation. Images (N, 3, 32, 32) float32."""
    name, md5 = CIFAR10["archive"]
    path = fetch_file(
        CIFAR10["title"],
        "cifar10",
        name,
        md5,
        CIFAR10["urls"],
        download,
        quiet,
        placed=CIFAR10["folder"],
        placed_note=f"the extracted {CIFAR10['folder']} folder works too",
    )
    train = _read_files(path, CIFAR10["train"])
    test = _read_files(path, CIFAR10["test"])
    x_all = np.concatenate([x for x, _ in train]).astype(np.float32) / np.float32(255)
    y_all = np.concatenate([y for _, y in train])
    x_test = np.concatenate([x for x, _ in test]).astype(np.float32) / np.float32(255)
    y_test = np.concatenate([y for _, y in test])
    tr, va = stratified_split(y_all, val_fraction, seed=0)
    x_train = x_all[tr]
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)[:, None, None]
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)[:, None, None]
    std = np.where(std > 0, std, 1.0)
    scaled = [((x - mean) / std).astype(np.float32) for x in (x_train, x_all[va], x_test)]
    return DataSplit(
        "cifar10",
        scaled[0],
        y_all[tr],
        scaled[1],
        y_all[va],
        kind="image",
        num_classes=10,
        description="CIFAR-10: 32x32 color images, 10 classes",
        info={"classes": CLASSES},
        x_test=scaled[2],
        y_test=y_test,
    )
