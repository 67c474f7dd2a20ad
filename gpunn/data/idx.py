"""IDX files (the format of MNIST and Fashion-MNIST), and the two data sets themselves.

An IDX file is: two zero bytes, a type code, the number of dimensions, each dimension as
a big-endian uint32, then the values in C order, big-endian. The data sets are read from
the data folder (``GPUNN_DATA``, default ``<user cache>/gpunn/data``), downloaded there
from the official locations on first use, and verified against their published MD5 sums.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request

import numpy as np

from gpunn.data.split import DataSplit, standardize, stratified_split

# type code -> dtype (big-endian on disk)
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_TYPES.items()}


class IDXError(ValueError):
    """A file is not a well-formed IDX file."""


def _open(path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw (told apart by its first bytes).

    Returns an array in native byte order with the file's type and shape. Raises
    :class:`IDXError` naming the file when the header is not IDX or the data is short or
    too long.
    """
    path = os.fspath(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise IDXError(f"{path}: cannot read it as an IDX file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXError(f"{path}: not an IDX file (it must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise IDXError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        raise IDXError(
            f"{path}: IDX header announces shape {shape} of {dtype.newbyteorder('=')} "
            f"({expected} bytes) but the file holds {got} bytes of data"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path, array) -> None:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file,
    gzip-compressed when ``path`` ends in ``.gz``."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _IDX_CODES:
        raise TypeError(f"write_idx: IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, _IDX_CODES[dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    body = np.ascontiguousarray(array, dtype=dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


# ---------------------------------------------------------------------- the data folder
def user_cache_dir() -> str:
    """The per-user cache folder of this platform."""
    if sys.platform == "win32":
        return os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches")
    return os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")


def data_home() -> str:
    """Where data sets are kept: ``GPUNN_DATA``, else ``<user cache>/gpunn/data``."""
    return os.environ.get("GPUNN_DATA") or os.path.join(user_cache_dir(), "gpunn", "data")


# name -> title, download locations (official first), files with their MD5 sums
IDX_SETS = {
    "mnist": {
        "title": "MNIST",
        "urls": (
            "http://yann.lecun.com/exdb/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        "files": {
            "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
    },
    "fashion_mnist": {
        "title": "Fashion-MNIST",
        "urls": (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        "files": {
            "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        },
    },
}


class DataUnavailableError(FileNotFoundError):
    """A data file is neither in the data folder nor downloadable; the message says where
    to put which file."""


def file_digest(path, algorithm: str = "md5") -> str:
    """Hex digest of a file (``md5`` or ``sha256``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_ok(path, expected: str) -> bool:
    algorithm = "sha256" if len(expected) == 64 else "md5"
    return file_digest(path, algorithm) == expected


def _urlopen(url, timeout):
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (fixed https/http URLs)


def _download(url: str, dest: str, expected: str, quiet: bool = False) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file; keep it only when its checksum
    is ``expected``."""
    folder = os.path.dirname(dest)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(dest), suffix=".part")
    try:
        if not quiet:
            print(f"gpunn: downloading {url}", file=sys.stderr, flush=True)
        with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=30) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        if not _checksum_ok(tmp, expected):
            raise OSError(f"checksum mismatch for {url} (expected {expected})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _raw_name(gz_name: str) -> str:
    return gz_name[: -len(".gz")]


def fetch_idx_file(name: str, part: str, download: bool = True, quiet: bool = False) -> str:
    """Path of file ``part`` (``train_images``, ...) of IDX data set ``name``: the
    verified ``.gz`` in the data folder, or an uncompressed copy placed there by the user,
    downloading the ``.gz`` first when neither is there."""
    spec = IDX_SETS[name]
    gz_name, md5 = spec["files"][part]
    folder = os.path.join(data_home(), name)
    gz_path = os.path.join(folder, gz_name)
    raw_path = os.path.join(folder, _raw_name(gz_name))
    if os.path.exists(gz_path):
        if not _checksum_ok(gz_path, md5):
            raise DataUnavailableError(
                f"{spec['title']}: {gz_path} does not have the published MD5 sum {md5} "
                f"(a partial download or another file): delete it to download it again, "
                f"or put the uncompressed {_raw_name(gz_name)} there instead"
            )
        return gz_path
    if os.path.exists(raw_path):
        return raw_path  # placed by the user; its header and shape are checked on reading
    if not download:
        reason = "downloading was not allowed (download=False)"
    elif os.environ.get("GPUNN_OFFLINE", "") not in ("", "0"):
        reason = "downloading is switched off (GPUNN_OFFLINE is set)"
    else:
        problems = []
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            problems.append(f"cannot create {folder}: {e}")
        else:
            for base in spec["urls"]:
                try:
                    _download(base + gz_name, gz_path, md5, quiet=quiet)
                    return gz_path
                except (OSError, urllib.error.URLError) as e:
                    problems.append(f"{base + gz_name}: {getattr(e, 'reason', e)}")
        reason = "could not be downloaded: " + "; ".join(problems)
    raise DataUnavailableError(
        f"{spec['title']} file {gz_name} is missing and {reason}.\n"
        f"Download it from {' or '.join(u + gz_name for u in spec['urls'])} and put it at\n"
        f"    {gz_path}\n"
        f"(the uncompressed {_raw_name(gz_name)} works too), or set GPUNN_DATA to a folder "
        f"that holds {name}/{gz_name}."
    )


def _read_pair(name: str, images_part: str, labels_part: str, download: bool, quiet: bool):
    title = IDX_SETS[name]["title"]
    images = read_idx(fetch_idx_file(name, images_part, download, quiet))
    labels = read_idx(fetch_idx_file(name, labels_part, download, quiet))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IDXError(
            f"{title}: {images_part} has shape {images.shape} and {labels_part} shape "
            f"{labels.shape}; expected (N, rows, cols) images and N labels"
        )
    return images, labels.astype(np.int64)


def load_idx_set(
    name: str, download: bool = True, quiet: bool = False, val_fraction: float = 1 / 12
) -> DataSplit:
    """MNIST-style data set ``name`` ("mnist" or "fashion_mnist"): the official test
    images are the test part; a stratified, seeded ``val_fraction`` of the official
    training images (5,000 of 60,000) is the validation part, the rest trains. Pixels
    scaled to [0, 1] and standardized with the training part's mean and deviation.
    Images (N, 1, 28, 28)."""
    if name not in IDX_SETS:
        raise KeyError(f"unknown IDX data set {name!r}; choose from {', '.join(IDX_SETS)}")
    x_all, y_all = _read_pair(name, "train_images", "train_labels", download, quiet)
    x_test, y_test = _read_pair(name, "test_images", "test_labels", download, quiet)
    scale = np.float32(1.0 / 255.0 if x_all.dtype == np.uint8 else 1.0)
    tr, va = stratified_split(y_all, val_fraction, seed=0)
    x_train, x_val, x_test = standardize(
        x_all[tr].astype(np.float32) * scale,
        x_all[va].astype(np.float32) * scale,
        x_test.astype(np.float32) * scale,
        per_feature=False,
    )
    title = IDX_SETS[name]["title"]
    h, w = x_train.shape[1:]
    return DataSplit(
        name,
        x_train[:, None],
        y_all[tr],
        x_val[:, None],
        y_all[va],
        kind="image",
        num_classes=10,
        description=f"{title}: {h}x{w} images, 10 classes",
        x_test=x_test[:, None],
        y_test=y_test,
    )


def load_mnist(download: bool = True, quiet: bool = False) -> DataSplit:
    """MNIST handwritten digits (60,000 training and 10,000 test images of 28x28)."""
    return load_idx_set("mnist", download, quiet)


def load_fashion_mnist(download: bool = True, quiet: bool = False) -> DataSplit:
    """Fashion-MNIST clothing images (60,000 training and 10,000 test images of 28x28)."""
    return load_idx_set("fashion_mnist", download, quiet)
