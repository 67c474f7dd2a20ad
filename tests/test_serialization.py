"""gpunn.save / gpunn.load: no pickle, atomic, clear errors."""

import os
import pickle

import numpy as np
import pytest

import gpunn
from gpunn.errors import CheckpointError


def test_round_trip_keeps_values_and_dtypes(tmp_path):
    path = tmp_path / "weights"
    gpunn.save({"w": gpunn.randn(3, 4), "labels": np.arange(5), "x64": np.ones(2)}, path)
    assert os.listdir(tmp_path) == ["weights"]  # exactly path, no temporary left
    out = gpunn.load(path)
    assert out["w"].shape == (3, 4) and out["w"].dtype == np.float32
    assert out["labels"].dtype == np.int64 and out["x64"].dtype == np.float64


def test_load_onto_each_backend(tmp_path):
    gpunn.save({"w": gpunn.ones(2)}, tmp_path / "f")
    for name in gpunn.available_backends():
        assert gpunn.load(tmp_path / "f", backend=name)["w"].backend == name


def test_save_refuses_values_that_are_not_arrays(tmp_path):
    with pytest.raises(TypeError, match="value of 'epoch' is a int"):
        gpunn.save({"epoch": 3}, tmp_path / "f")
    with pytest.raises(TypeError, match="object arrays"):
        gpunn.save({"o": np.array([object()])}, tmp_path / "f")
    assert not os.listdir(tmp_path)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    gpunn.save({"w": gpunn.ones(3)}, path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        gpunn.save({"w": gpunn.zeros(3)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(gpunn.load(path)["w"].numpy(), np.ones(3))
    assert os.listdir(tmp_path) == ["ck"]


def test_missing_truncated_and_foreign_files_raise_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        gpunn.load(tmp_path / "nope")
    good = tmp_path / "good"
    gpunn.save({"w": gpunn.randn(100)}, good)
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not a readable gpunn checkpoint"):
        gpunn.load(truncated)
    text = tmp_path / "text"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        gpunn.load(text)


def test_a_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        gpunn.load(path)
    arr_path = tmp_path / "objects.npz"
    np.savez(arr_path, a=np.array([Evil()], dtype=object))
    with pytest.raises(CheckpointError):
        gpunn.load(arr_path)
    assert not marker.exists()
