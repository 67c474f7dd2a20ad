"""CIFAR-10's binary format and data set, on small files the tests write (no network)."""

import hashlib
import io
import tarfile
import urllib.error

import numpy as np
import pytest

from gpunn import data as gdata
from gpunn.data import cifar as gcifar
from gpunn.data import idx as gidx


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    def offline(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(gidx, "_urlopen", offline)
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("GPUNN_OFFLINE", raising=False)


def _batches(n=4, seed=0):
    """name -> (images, labels) of a tiny CIFAR-10: n records per batch file."""
    rng = np.random.default_rng(seed)
    names = gcifar.CIFAR10["train"] + gcifar.CIFAR10["test"]
    return {
        name: (
            rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8),
            rng.integers(0, 10, n).astype(np.uint8),
        )
        for name in names
    }


def _archive(tmp_path, batches) -> bytes:
    staging = tmp_path / "staging" / "cifar-10-batches-bin"
    staging.mkdir(parents=True)
    for name, (x, y) in batches.items():
        gdata.write_cifar_batch(staging / name, x, y)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-bin")
    return buf.getvalue()


def test_record_layout_label_then_red_green_blue_planes():
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0, 0, 1], img[0, 1, 2, 0], img[0, 2, 31, 31] = 11, 22, 33
    raw = bytes([7]) + img.tobytes()
    assert raw[1 + 1] == 11 and raw[1 + 1024 + 64] == 22 and raw[-1] == 33
    x, y = gdata.read_cifar_batch(raw)
    np.testing.assert_array_equal(x, img)
    assert y.tolist() == [7] and y.dtype == np.int64


@pytest.mark.parametrize(
    "raw, message",
    [(b"\x00" * 3072, "whole number of 3073-byte records"), (b"\x0a" + b"\x00" * 3072, "label 10")],
)
def test_malformed_batches_are_refused(raw, message):
    with pytest.raises(gdata.CIFARError, match=message):
        gdata.read_cifar_batch(raw)


def test_download_verifies_the_archive_caches_it_and_standardizes(monkeypatch, tmp_path):
    batches = _batches(n=10)
    blob = _archive(tmp_path, batches)
    name = gcifar.CIFAR10["archive"][0]
    monkeypatch.setitem(gcifar.CIFAR10, "archive", (name, hashlib.md5(blob).hexdigest()))
    calls = []

    def serve(url, timeout):
        calls.append(url)
        return io.BytesIO(blob)

    monkeypatch.setattr(gidx, "_urlopen", serve)
    s = gdata.load("cifar10", quiet=True)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert len(s.x_train) + len(s.x_val) == 50 and len(s.x_val) > 0
    assert s.x_train.shape[1:] == (3, 32, 32) and s.x_test.shape == (10, 3, 32, 32)
    assert s.x_train.dtype == np.float32 and s.num_classes == 10
    np.testing.assert_array_equal(s.y_test, batches["test_batch.bin"][1])
    all_x = np.concatenate([batches[n][0] for n in gcifar.CIFAR10["train"]]) / 255.0
    all_y = np.concatenate([batches[n][1] for n in gcifar.CIFAR10["train"]])
    tr, va = gdata.split.stratified_split(all_y, 0.1, seed=0)
    np.testing.assert_array_equal(s.y_train, all_y[tr])
    mean, std = all_x[tr].mean(axis=(0, 2, 3)), all_x[tr].std(axis=(0, 2, 3))
    expected = (batches["test_batch.bin"][0] / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(s.x_test, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "data" / "cifar10").iterdir()) == [name]
    calls.clear()
    gdata.load_cifar10(quiet=True)  # cached now
    assert calls == []


def test_a_wrong_checksum_is_discarded(monkeypatch, tmp_path):
    blob = _archive(tmp_path, _batches())  # not the official archive: its MD5 differs
    monkeypatch.setattr(gidx, "_urlopen", lambda url, timeout: io.BytesIO(blob))
    with pytest.raises(gdata.DataUnavailableError, match="checksum mismatch"):
        gdata.load_cifar10(quiet=True)
    assert list((tmp_path / "data" / "cifar10").iterdir()) == []


def test_missing_archive_offline_says_where_to_put_it(monkeypatch, tmp_path):
    with pytest.raises(gdata.DataUnavailableError) as err:
        gdata.load_cifar10()
    text = str(err.value)
    assert str(tmp_path / "data" / "cifar10" / "cifar-10-binary.tar.gz") in text
    assert "network disabled in tests" in text and "GPUNN_DATA" in text
    assert "cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in text
    assert "extracted cifar-10-batches-bin folder" in text
    monkeypatch.setenv("GPUNN_OFFLINE", "1")
    with pytest.raises(gdata.DataUnavailableError, match="GPUNN_OFFLINE"):
        gdata.load_cifar10()


def test_an_extracted_folder_the_user_placed(tmp_path):
    batches = _batches(n=3, seed=1)
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (x, y) in batches.items():
        gdata.write_cifar_batch(folder / name, x, y)
    s = gdata.load_cifar10()
    assert len(s.x_train) + len(s.x_val) == 15
    np.testing.assert_array_equal(s.y_test, batches["test_batch.bin"][1])
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(gdata.CIFARError, match="data_batch_3.bin is missing"):
        gdata.load_cifar10()
