"""gpunn.save / gpunn.load: flat name -> array files in NumPy's .npz format, read with
``allow_pickle=False`` (no code from a file ever runs) and written atomically."""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from gpunn.errors import CheckpointError
from gpunn.tensor import Tensor, tensor


def save(mapping, path) -> None:
    """Write ``mapping`` (str -> Tensor or ndarray) to exactly ``path``.

    The data goes to a temporary file beside ``path``, is flushed to disk, then renamed
    over ``path``: a crash mid-write leaves the previous file intact and no temporary file.
    """
    if not hasattr(mapping, "items"):
        raise TypeError(
            f"save: expected a mapping of names to tensors, got {type(mapping).__name__}"
        )
    arrays = {}
    for name, value in mapping.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save: keys must be non-empty strings, got {name!r}")
        if isinstance(value, Tensor):
            arrays[name] = value.numpy()
        elif isinstance(value, np.ndarray) and value.dtype != object:
            arrays[name] = value
        else:
            raise TypeError(
                f"save: value of {name!r} is a {type(value).__name__}; only gpunn Tensors and "
                "NumPy arrays (not object arrays) can be saved"
            )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
                for name, arr in arrays.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(
                            member, np.asarray(arr, order="C"), allow_pickle=False
                        )
            f.flush()
            os.fsync(f.fileno())
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path, backend=None) -> dict:
    """Read a file written by :func:`save` (or any .npz of plain arrays) into a dict of
    tensors on ``backend`` (default: the active one). Raises CheckpointError for a
    missing, truncated or foreign file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"load: no such file: {path}")
    try:
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise CheckpointError(
                    f"load: {path} is a single .npy array, not a gpunn checkpoint"
                )
            with data:
                arrays = {name: data[name] for name in data.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(
            f"load: {path} is not a readable gpunn checkpoint (truncated, corrupted or another "
            f"format): {e}"
        ) from None
    return {name: tensor(arr, backend=backend) for name, arr in arrays.items()}
