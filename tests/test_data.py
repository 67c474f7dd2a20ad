"""gpunn.data: datasets, the loader, the IDX reader, MNIST files, synthetic tasks.

No test touches the network: every download goes through a stub."""

import gzip
import hashlib
import io
import struct
import sys
import urllib.error

import numpy as np
import pytest

import gpunn
from gpunn import data as gdata
from gpunn.data import idx as gidx


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path):
    """Point the data folder at a temporary one and make every download fail."""

    def offline(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(gidx, "_urlopen", offline)
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("GPUNN_OFFLINE", raising=False)


# ---------------------------------------------------------------------- TensorDataset
def test_tensor_dataset_rows_and_batches():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    ds = gdata.TensorDataset(x, y)
    assert len(ds) == 10
    xi, yi = ds[3]
    np.testing.assert_array_equal(xi, [6, 7])
    assert yi == 3
    xb, yb = ds[np.array([1, 4])]
    np.testing.assert_array_equal(yb, [1, 4])
    assert xb.shape == (2, 2)


def test_tensor_dataset_takes_tensors_and_checks_lengths():
    ds = gdata.TensorDataset(gpunn.ones(4, 3), gpunn.tensor(np.arange(4)))
    assert isinstance(ds.arrays[0], np.ndarray) and ds.arrays[1].dtype == np.int64
    with pytest.raises(ValueError, match="same first dimension"):
        gdata.TensorDataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="at least one"):
        gdata.TensorDataset()


# ---------------------------------------------------------------------- DataLoader
def _labels_of(loader):
    return [y.numpy().tolist() for _, y in loader]


def test_loader_batches_cover_every_sample_once():
    x = np.arange(10, dtype=np.float32)[:, None]
    loader = gdata.DataLoader(gdata.TensorDataset(x, np.arange(10)), batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 == len(batches)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert sum(_labels_of(loader), []) == list(range(10))  # no shuffle: in order
    xb, yb = batches[0]
    assert isinstance(xb, gpunn.Tensor) and xb.dtype == np.float32 and yb.dtype == np.int64
    assert xb.backend == gpunn.get_backend() and not xb.requires_grad


def test_loader_drop_last():
    loader = gdata.DataLoader(gdata.TensorDataset(np.zeros((10, 1))), 4, drop_last=True)
    assert len(loader) == 2
    assert [b[0].shape[0] for b in loader] == [4, 4]


def test_loader_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        gdata.DataLoader(gdata.TensorDataset(np.zeros(3)), 0)


def test_loader_batches_are_copies_on_the_requested_backend(backend):
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    loader = gdata.DataLoader(gdata.TensorDataset(x, np.arange(6)), 3, backend=backend)
    xb, yb = next(iter(loader))
    assert xb.backend == backend and yb.backend == backend
    host = xb.numpy()
    np.testing.assert_array_equal(host, x[:3])
    if backend == "numpy":
        assert not np.shares_memory(xb.data, x)  # the one copy of the batch
    with gpunn.use_backend(backend):
        xb2, _ = next(iter(gdata.DataLoader(gdata.TensorDataset(x, np.arange(6)), 3)))
    assert xb2.backend == backend


def test_shuffle_follows_manual_seed_and_changes_every_epoch():
    ds = gdata.TensorDataset(np.zeros((50, 1)), np.arange(50))
    gpunn.manual_seed(3)
    loader = gdata.DataLoader(ds, 50, shuffle=True)
    first, second = _labels_of(loader)[0], _labels_of(loader)[0]
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first != second
    gpunn.manual_seed(3)
    again = gdata.DataLoader(ds, 50, shuffle=True)
    assert _labels_of(again)[0] == first and _labels_of(again)[0] == second


def test_seeded_loader_depends_only_on_seed_and_epoch():
    ds = gdata.TensorDataset(np.zeros((30, 1)), np.arange(30))
    a = gdata.DataLoader(ds, 30, shuffle=True, seed=7)
    orders = [_labels_of(a)[0] for _ in range(3)]
    assert orders[0] != orders[1] != orders[2]
    gpunn.manual_seed(123)  # the global generator plays no part
    b = gdata.DataLoader(ds, 30, shuffle=True, seed=7)
    b.set_epoch(2)
    assert _labels_of(b)[0] == orders[2]


def test_loader_stacks_samples_of_any_dataset():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i, i * i], dtype=np.float32), np.int64(i % 2)

    xb, yb = next(iter(gdata.DataLoader(Squares(), 5)))
    np.testing.assert_array_equal(xb.numpy()[:, 1], [0, 1, 4, 9, 16])
    np.testing.assert_array_equal(yb.numpy(), [0, 1, 0, 1, 0])


# ---------------------------------------------------------------------- scikit-learn sets
def test_breast_cancer_is_standardized_and_split_by_seed():
    pytest.importorskip("sklearn")
    s = gdata.load_breast_cancer()
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    assert s.x_train.shape[1] == 30 and len(s.x_train) + len(s.x_val) + len(s.x_test) == 569
    assert len(s.x_val) == pytest.approx(0.1 * 569, abs=2)
    assert len(s.x_test) == pytest.approx(0.2 * 569, abs=2)
    np.testing.assert_allclose(s.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s.x_train.std(axis=0), 1, atol=1e-4)
    assert (s.kind, s.task, s.num_classes) == ("tabular", "classification", 2)
    # stratified: both parts keep the class balance
    assert abs(s.y_train.mean() - s.y_val.mean()) < 0.02
    assert abs(s.y_train.mean() - s.y_test.mean()) < 0.02
    again, other = gdata.load_breast_cancer(seed=0), gdata.load_breast_cancer(seed=1)
    np.testing.assert_array_equal(again.x_val, s.x_val)
    np.testing.assert_array_equal(again.x_test, s.x_test)
    assert not np.array_equal(other.x_test, s.x_test)


def test_stratified_split_parts_are_disjoint_and_keep_the_classes():
    y = np.repeat(np.arange(3), [50, 30, 20])
    rest, val, test = gdata.split.stratified_split(y, 0.1, 0.2, seed=3)
    together = np.concatenate([rest, val, test])
    assert sorted(together.tolist()) == list(range(100))  # every sample once
    assert np.bincount(y[test]).tolist() == [10, 6, 4]  # 20% of each class
    assert np.bincount(y[val]).tolist() == [5, 3, 2]
    again = gdata.split.stratified_split(y, 0.1, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (rest, val, test)))
    with pytest.raises(ValueError, match="sum below 1"):
        gdata.split.stratified_split(y, 0.5, 0.5)


def test_digits_are_images():
    pytest.importorskip("sklearn")
    s = gdata.load_digits()
    assert s.x_train.shape[1:] == (1, 8, 8) and s.kind == "image" and s.num_classes == 10
    assert s.x_train.dtype == np.float32 and s.y_val.dtype == np.int64
    assert abs(float(s.x_train.mean())) < 1e-4 and abs(float(s.x_train.std()) - 1) < 1e-3
    assert set(np.unique(s.y_val)) == set(range(10))
    assert s.x_test.shape[1:] == (1, 8, 8) and set(np.unique(s.y_test)) == set(range(10))


def test_load_by_name_and_unknown_name():
    assert gdata.load("parity").name == "parity"
    with pytest.raises(KeyError, match="choose from breast_cancer, digits"):
        gdata.load("cifar")


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install 'gpunn\[data\]'"):
        gdata.load_digits()


# ---------------------------------------------------------------------- IDX files
def _idx_bytes(code, shape, payload):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_read_idx_of_hand_written_files(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(_idx_bytes(0x08, (2, 3, 4), images.tobytes()))
    np.testing.assert_array_equal(gdata.read_idx(raw), images)
    values = np.array([1.5, -2.25, 1e6], dtype=np.float32)
    gz = tmp_path / "values-idx1.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(0x0D, (3,), values.astype(">f4").tobytes())))
    out = gdata.read_idx(gz)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)
    ints = np.array([[1, -2], [70000, 5]], dtype=np.int32)
    (tmp_path / "i").write_bytes(_idx_bytes(0x0C, (2, 2), ints.astype(">i4").tobytes()))
    np.testing.assert_array_equal(gdata.read_idx(tmp_path / "i"), ints)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_write_then_read_idx(tmp_path, dtype, name):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    gdata.write_idx(tmp_path / name, arr)
    back = gdata.read_idx(tmp_path / name)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    with open(tmp_path / name, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")


def test_write_idx_refuses_other_dtypes(tmp_path):
    with pytest.raises(TypeError, match="int64"):
        gdata.write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "two zero bytes"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "type code 0x07"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
        (_idx_bytes(0x08, (2, 2), b"\x00" * 3), "holds 3 bytes"),
        (_idx_bytes(0x08, (2,), b"\x00" * 5), "holds 5 bytes"),
        (b"\x1f\x8b\x08garbage", "cannot read it"),
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(gdata.IDXError, match=message) as err:
        gdata.read_idx(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------- MNIST files
def _place_mnist(folder, n_train=12, n_test=6, compress=False, seed=0):
    """Write a tiny MNIST-shaped data set as the user would place it."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, arr in parts.items():
        gdata.write_idx(folder / (name + (".gz" if compress else "")), arr)
    return parts


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_data_set_from_files_the_user_placed(tmp_path, name):
    parts = _place_mnist(tmp_path / "data" / name, n_train=120)
    s = gdata.load_mnist() if name == "mnist" else gdata.load_fashion_mnist()
    # the official test images are the test part; 1/12 of the training images validate
    assert s.x_train.shape == (110, 1, 28, 28) and s.x_val.shape == (10, 1, 28, 28)
    assert s.x_test.shape == (6, 1, 28, 28)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int64
    np.testing.assert_array_equal(s.y_test, parts["t10k-labels-idx1-ubyte"])
    assert sorted(s.y_val.tolist()) == list(range(10))  # stratified: one of each class
    assert abs(float(s.x_train.mean())) < 1e-4 and abs(float(s.x_train.std()) - 1) < 1e-3
    # the standardization is the training part's one
    tr, _ = gdata.split.stratified_split(parts["train-labels-idx1-ubyte"], 1 / 12, seed=0)
    pixels = parts["t10k-images-idx3-ubyte"][0] / 255.0
    train_px = parts["train-images-idx3-ubyte"][tr] / 255.0
    expected = (pixels - train_px.mean()) / train_px.std()
    np.testing.assert_allclose(s.x_test[0, 0], expected, rtol=1e-4, atol=1e-4)


def test_missing_mnist_file_without_network_says_where_to_put_it(tmp_path):
    with pytest.raises(gdata.DataUnavailableError) as err:
        gdata.load_mnist()
    text = str(err.value)
    target = tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz"
    assert str(target) in text
    assert "network disabled in tests" in text
    assert "yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz" in text
    assert "GPUNN_DATA" in text and "uncompressed train-images-idx3-ubyte" in text


def test_offline_switches_and_download_false(monkeypatch):
    def fail(url, timeout):  # pragma: no cover - must not be called
        raise AssertionError("no download expected")

    monkeypatch.setattr(gidx, "_urlopen", fail)
    with pytest.raises(gdata.DataUnavailableError, match="download=False"):
        gdata.load_fashion_mnist(download=False)
    monkeypatch.setenv("GPUNN_OFFLINE", "1")
    with pytest.raises(gdata.DataUnavailableError, match="GPUNN_OFFLINE"):
        gdata.load_mnist()


def _serve(monkeypatch, files, calls):
    """Serve ``files`` (name -> bytes) as if from the download locations."""

    def fake(url, timeout):
        calls.append(url)
        name = url.rsplit("/", 1)[1]
        if name not in files:
            raise urllib.error.URLError("404")
        return io.BytesIO(files[name])

    monkeypatch.setattr(gidx, "_urlopen", fake)


def _tiny_mnist_gz(tmp_path):
    staging = tmp_path / "staging"
    _place_mnist(staging, compress=True)
    return {p.name: p.read_bytes() for p in staging.iterdir()}


def test_download_verifies_checksums_and_keeps_good_files(monkeypatch, tmp_path):
    blobs = _tiny_mnist_gz(tmp_path)
    spec = {
        part: (name, hashlib.md5(blobs[name]).hexdigest())
        for part, (name, _) in gidx.IDX_SETS["mnist"]["files"].items()
    }
    monkeypatch.setitem(gidx.IDX_SETS["mnist"], "files", spec)
    calls = []
    _serve(monkeypatch, blobs, calls)
    s = gdata.load_mnist(quiet=True)
    assert s.x_train.shape == (12, 1, 28, 28)
    assert len(calls) == 4 and calls[0].startswith(gidx.IDX_SETS["mnist"]["urls"][0])
    folder = tmp_path / "data" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)  # no partial files
    calls.clear()
    gdata.load_mnist(quiet=True)  # now cached
    assert calls == []


def test_download_with_a_wrong_checksum_is_discarded(monkeypatch, tmp_path):
    blobs = _tiny_mnist_gz(tmp_path)  # not the official files: their MD5 sums differ
    calls = []
    _serve(monkeypatch, blobs, calls)
    with pytest.raises(gdata.DataUnavailableError, match="checksum mismatch"):
        gdata.load_mnist(quiet=True)
    assert len(calls) == len(gidx.IDX_SETS["mnist"]["urls"])  # every location was tried
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_a_placed_gz_with_the_wrong_checksum_is_refused(tmp_path):
    _place_mnist(tmp_path / "data" / "mnist", compress=True)
    with pytest.raises(gdata.DataUnavailableError, match="published MD5 sum"):
        gdata.load_mnist()


def test_mismatched_images_and_labels(tmp_path):
    folder = tmp_path / "data" / "mnist"
    _place_mnist(folder)
    gdata.write_idx(folder / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(gdata.IDXError, match="expected"):
        gdata.load_mnist()


def test_data_home_default_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUNN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert gdata.data_home() == str(tmp_path / "cache" / "gpunn" / "data")
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "mine"))
    assert gdata.data_home() == str(tmp_path / "mine")


# ---------------------------------------------------------------------- synthetic tasks
def test_adding_problem():
    x, y = gdata.adding_problem(100, 10, seed=4)
    assert x.shape == (100, 10, 2) and y.shape == (100, 1) and x.dtype == np.float32
    markers = x[:, :, 1]
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :5].sum(axis=1) == 1).all() and (markers[:, 5:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1), rtol=1e-6)
    x2, y2 = gdata.adding_problem(100, 10, seed=4)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, gdata.adding_problem(100, 10, seed=5)[0])
    with pytest.raises(ValueError, match="length"):
        gdata.adding_problem(3, 1)


def test_parity():
    x, y = gdata.parity(200, 9, seed=1)
    assert x.shape == (200, 9, 1) and y.dtype == np.int64
    np.testing.assert_array_equal(y, x[:, :, 0].sum(axis=1).astype(int) % 2)
    assert set(np.unique(y)) == {0, 1}


def test_synthetic_splits():
    a = gdata.load_adding()
    assert (a.kind, a.task, a.num_classes) == ("sequence", "regression", None)
    assert a.info["tolerance"] == 0.04
    assert a.info["length"] == 20 and a.x_test.shape == (1000, 20, 2)
    p = gdata.load_parity(n_train=50, n_val=20, n_test=30, length=5)
    assert p.x_train.shape == (50, 5, 1) and p.num_classes == 2 and len(p.x_test) == 30
    assert not np.array_equal(p.x_train[:20], p.x_val)  # validation is drawn separately
    assert not np.array_equal(p.x_val, p.x_test[:20])  # and so is the test part


def test_data_split_validates():
    with pytest.raises(ValueError, match="kind"):
        gdata.DataSplit("x", np.zeros((2, 1)), np.zeros(2), np.zeros((1, 1)), np.zeros(1), "3d")
    with pytest.raises(ValueError, match="samples"):
        gdata.DataSplit(
            "x", np.zeros((2, 1)), np.zeros(3), np.zeros((1, 1)), np.zeros(1), "tabular"
        )
    s = gdata.DataSplit(
        "x",
        np.zeros((4, 2, 3)),
        np.array([0, 1, 2, 1]),
        np.zeros((1, 2, 3)),
        np.zeros(1, int),
        "sequence",
    )
    assert s.num_classes == 3 and s.num_features == 6 and len(s.train) == 4
    assert s.test is None
    with pytest.raises(ValueError, match="x_test and y_test"):
        gdata.DataSplit("x", s.x_train, s.y_train, s.x_val, s.y_val, "sequence", x_test=s.x_val)
