"""The cupy backend on a real GPU, held to the NumPy reference: every op case in float32 and
float64 and both memory layouts, inputs larger than one grid, dropout masks bit for bit,
optimizer updates, whole models trained step by step, errors, DLPack and TF32.

Skipped, with the reason "no CUDA device", where CuPy or a GPU is missing.
"""

import os

import numpy as np
import pytest

import gpunn
from gpunn.backends import backend_object, why_unavailable
from gpunn.backends.base import dropout_keep_mask
from gpunn.testing import OP_CASES, UPDATE_CASES, compare_backends, compare_op, compare_update

_wanted = os.environ.get("GPUNN_TEST_BACKENDS")
_ready = why_unavailable("cupy") is None and (not _wanted or "cupy" in _wanted.split(","))

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not _ready, reason="no CUDA device")]

DTYPES = ("float32", "float64")


@pytest.fixture(scope="module")
def be():
    return backend_object("cupy")


@pytest.fixture(scope="module")
def ref():
    return backend_object("numpy")


def _big(be, waves=3):
    """An element count beyond one full grid of the backend's launches."""
    from gpunn.backends.cupy_backend import BLOCK

    return be._max_blocks * BLOCK * waves + 17


# ---------------------------------------------------------------------- coverage
def test_native_ops_are_the_kernel_ops_of_the_kinds_table(be):
    from gpunn.backends import kinds

    assert be.native_ops() == kinds.ops_of_kind("cupy", "kernel")


def test_every_kernel_instance_loads(be):
    be._kernels.precompile()


# ---------------------------------------------------------------------- op table
@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", OP_CASES, ids=repr)
def test_op_matches_reference(case, dtype, layout):
    compare_op("cupy", case, dtype, layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", UPDATE_CASES, ids=repr)
def test_update_matches_reference(case, dtype):
    compare_update("cupy", case, dtype)


# ---------------------------------------------------------------------- beyond one grid
def _pair(be, ref, fn):
    """Run fn on both backends (it gets the backend) and return host results."""
    out = fn(be)
    want = fn(ref)
    to = lambda xs: [None if x is None else np.asarray(be.to_numpy(x)) for x in xs]
    return to(out), [None if x is None else np.asarray(x) for x in want]


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_beyond_one_grid(be, ref, dtype):
    rng = np.random.default_rng(1)
    n = _big(be)
    x = rng.standard_normal(n).astype(dtype)
    dy = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal((1, 7)).astype(dtype)
    a2 = rng.standard_normal((n // 7 + 1, 7)).astype(dtype)
    for op in ("relu", "sigmoid", "tanh", "exp", "neg"):

        def run(k, op=op):
            Y, saved = getattr(k, op + "_forward")(k.asarray(x))
            (dX,) = getattr(k, op + "_backward")(k.asarray(dy), saved, (True,))
            return Y, dX

        got, want = _pair(be, ref, run)
        for g, w in zip(got, want):
            tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(g, w, **tol, err_msg=op)

    def add(k):
        Y, saved = k.add_forward(k.asarray(a2), k.asarray(b))
        return [Y, *k.add_backward(Y, saved, (True, True))]

    got, want = _pair(be, ref, add)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4 if dtype == "float32" else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_beyond_one_grid(be, ref, dtype):
    """4-d broadcasts (and a strided operand) whose output spans several grid strides, so
    the kernels' coordinate walk carries across every dimension."""
    rng = np.random.default_rng(6)
    waves = _big(be) // (7 * 130 * 41) + 2
    a = rng.uniform(0.5, 2.0, (waves, 1, 130, 82)).astype(dtype)[..., ::2]  # strided view
    b = rng.uniform(-2.0, 2.0, (1, 7, 130, 1)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for op in ("add", "sub", "mul", "div", "pow"):

        def run(k, op=op):
            A, B = k.asarray(np.ascontiguousarray(a)), k.asarray(b)
            if k is be:
                A = k.asarray(np.ascontiguousarray(np.repeat(a, 2, axis=-1)))[..., ::2]
            Y, saved = getattr(k, op + "_forward")(A, B)
            dY = k.asarray(np.cos(np.asarray(k.to_numpy(Y))))
            return [Y, *getattr(k, op + "_backward")(dY, saved, (True, True))]

        got, want = _pair(be, ref, run)
        for i, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, **tol, err_msg=f"{op} output {i}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_and_rows_beyond_one_grid(be, ref, dtype):
    rng = np.random.default_rng(2)
    rows = _big(be, 1) // 8 * 3 + 5  # several blocks of 8 warps, several trips each
    z = (2 * rng.standard_normal((rows, 10))).astype(dtype)
    labels = rng.integers(0, 10, rows)
    p = rng.uniform(0.05, 0.95, _big(be)).astype(dtype)
    t = rng.uniform(0, 1, p.size).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == "float32" else dict(rtol=1e-9, atol=1e-12)
    noise = np.random.default_rng(3).standard_normal(z.size + p.size).astype(dtype)

    for op, inputs in (
        ("cross_entropy", (z, labels)),
        ("log_softmax", (z,)),
        ("softmax", (z,)),
        ("mse_loss", (p, t)),
        ("binary_cross_entropy", (p, t)),
        ("binary_cross_entropy_with_logits", (z.ravel(), (z.ravel() > 0).astype(dtype))),
    ):

        def run(k, op=op, inputs=inputs, noise=noise):
            args = [k.asarray(a) for a in inputs]
            Y, saved = getattr(k, op + "_forward")(*args)
            dY = k.asarray(np.full(Y.shape, 0.5, dtype) + noise[: Y.size].reshape(Y.shape))
            needs = tuple(a.dtype.kind == "f" for a in inputs)
            return [Y, *getattr(k, op + "_backward")(dY, saved, needs)]

        got, want = _pair(be, ref, run)
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_allclose(g, w, **tol, err_msg=op)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_conv_pool_lstm_at_size(be, ref, dtype):
    rng = np.random.default_rng(4)
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    x = rng.standard_normal((2048, 96)).astype(dtype)
    w = (0.1 * rng.standard_normal((200, 96))).astype(dtype)
    bias = rng.standard_normal(200).astype(dtype)
    img = rng.standard_normal((16, 3, 30, 30)).astype(dtype)
    kern = (0.2 * rng.standard_normal((8, 3, 5, 5))).astype(dtype)
    kb = rng.standard_normal(8).astype(dtype)
    xw = rng.standard_normal((128, 4 * 96)).astype(dtype)
    h = rng.standard_normal((128, 96)).astype(dtype)
    c = rng.standard_normal((128, 96)).astype(dtype)
    whh = (0.1 * rng.standard_normal((4 * 96, 96))).astype(dtype)

    def linear(k):
        Y, s = k.linear_forward(k.asarray(x), k.asarray(w), k.asarray(bias), activation="tanh")
        return [Y, *k.linear_backward(k.asarray(np.cos(np.asarray(k.to_numpy(Y)))), s, (1, 1, 1))]

    def conv(k):
        Y, s = k.conv2d_forward(k.asarray(img), k.asarray(kern), k.asarray(kb), (2, 1), (2, 1))
        dY = k.asarray(np.sin(np.asarray(k.to_numpy(Y))))
        P, ps = k.max_pool2d_forward(Y, (3, 3), (2, 2), (1, 1))
        A, As = k.avg_pool2d_forward(Y, (2, 3), (1, 2), (1, 1))
        dP = k.max_pool2d_backward(k.asarray(np.cos(np.asarray(k.to_numpy(P)))), ps, (True,))
        dA = k.avg_pool2d_backward(k.asarray(np.cos(np.asarray(k.to_numpy(A)))), As, (True,))
        return [Y, P, A, *dP, *dA, *k.conv2d_backward(dY, s, (1, 1, 1))]

    def lstm(k):
        (H, C), s = k.lstm_cell_forward(k.asarray(xw), k.asarray(h), k.asarray(c), k.asarray(whh))
        dH = k.asarray(np.cos(np.asarray(k.to_numpy(H))))
        dC = k.asarray(np.sin(np.asarray(k.to_numpy(C))))
        return [H, C, *k.lstm_cell_backward((dH, dC), s, (1, 1, 1, 1))]

    for name, fn in (("linear", linear), ("conv/pool", conv), ("lstm", lstm)):
        got, want = _pair(be, ref, fn)
        for i, (g, wt) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, wt, **tol, err_msg=f"{name} output {i}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers_beyond_one_grid(be, ref, dtype):
    rng = np.random.default_rng(5)
    shapes = [(_big(be),), (3, 5), (1,), (257, 129)]
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    draw = lambda: [rng.standard_normal(s).astype(dtype) for s in shapes]
    p0, g0, m0, v0 = draw(), draw(), draw(), [np.abs(a) for a in draw()]
    for opt in ("sgd", "adam"):
        results = []
        for k in (be, ref):
            p = [k.asarray(a.copy()) for a in p0]
            g = [k.asarray(a) for a in g0]
            m = [k.asarray(a.copy()) for a in m0]
            v = [k.asarray(a.copy()) for a in v0]
            for step in (1, 2, 3):
                if opt == "sgd":
                    k.sgd_update(p, g, m, 0.05, 0.9, 0.01)
                else:
                    k.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.99, 1e-8, 0.05)
            results.append([np.asarray(k.to_numpy(a)) for a in p + m + v])
        for i, (a, b) in enumerate(zip(*results)):
            np.testing.assert_allclose(a, b, **tol, err_msg=f"{opt} array {i}")


# ---------------------------------------------------------------------- dropout
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_mask_equals_reference_bit_for_bit(be, dtype, p):
    n = _big(be)
    seed = 2**62 + 12345
    Y, saved = be.dropout_forward(be.asarray(np.ones(n, dtype)), p, seed)
    keep = dropout_keep_mask(seed, n, p)
    want = keep.astype(dtype) * np.dtype(dtype).type(1.0 / (1.0 - p))
    assert np.array_equal(be.to_numpy(Y), want)
    (dX,) = be.dropout_backward(be.asarray(np.full(n, 2, dtype)), saved, (True,))
    assert np.array_equal(be.to_numpy(dX), 2 * want)


def test_dropout_same_seed_same_mask_as_numpy_backend():
    x = np.random.default_rng(0).standard_normal((33, 77)).astype(np.float32)
    outs = []
    for name in ("numpy", "cupy"):
        gpunn.manual_seed(11)
        t = gpunn.tensor(x, backend=name)
        outs.append(gpunn.functional.dropout(t, 0.3).numpy())
    assert np.array_equal(outs[0], outs[1])


# ---------------------------------------------------------------------- whole models
def _train(name, backend, model_fn, x, y, loss_fn, opt_fn, steps, dtype):
    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        model = model_fn()
        if dtype == "float64":
            model.double()
        xt, yt = gpunn.tensor(x), gpunn.tensor(y)
    opt = opt_fn(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model", ["logreg", "mlp", "lenet", "lstm", "rnn"])
def test_training_agrees_with_reference(model, dtype):
    from gpunn import models, nn

    rng = np.random.default_rng(0)
    if model == "logreg":
        x = rng.standard_normal((64, 10)).astype(dtype)
        y = (x[:, :1] > 0).astype(dtype)
        make, loss = lambda: models.LogisticRegression(10), nn.BCELoss()
    elif model == "mlp":
        x = rng.standard_normal((32, 20)).astype(dtype)
        y = rng.integers(0, 5, 32)
        make, loss = lambda: models.MLP(20, (16, 16), 5, dropout=0.2), nn.CrossEntropyLoss()
    elif model == "lenet":
        x = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
        y = rng.integers(0, 10, 4)
        make, loss = lambda: models.LeNet5(), nn.CrossEntropyLoss()
    elif model == "lstm":
        x = rng.standard_normal((6, 7, 5)).astype(dtype)
        y = rng.integers(0, 3, 6)
        make, loss = lambda: models.LSTMClassifier(5, 8, 3), nn.CrossEntropyLoss()
    else:
        x = rng.standard_normal((6, 7, 5)).astype(dtype)
        y = rng.integers(0, 3, 6)
        make, loss = lambda: models.RNNClassifier(5, 8, 3), nn.CrossEntropyLoss()
    opts = {
        "sgd": lambda ps: gpunn.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
        "adam": lambda ps: gpunn.optim.Adam(ps, lr=1e-3, weight_decay=1e-3),
    }
    tol = dict(rtol=2e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    for opt_name, opt in opts.items():
        ref_losses, ref_state = _train(model, "numpy", make, x, y, loss, opt, 4, dtype)
        got_losses, got_state = _train(model, "cupy", make, x, y, loss, opt, 4, dtype)
        np.testing.assert_allclose(got_losses, ref_losses, **tol, err_msg=f"{model} {opt_name}")
        for k in ref_state:
            np.testing.assert_allclose(got_state[k], ref_state[k], **tol, err_msg=f"{k} {opt_name}")


def test_compare_backends_reports_small_differences():
    from gpunn import models

    gpunn.manual_seed(0)
    model = models.LeNet5()
    x = gpunn.randn(2, 1, 28, 28)
    report = compare_backends(model, [x], backends=["cupy"])
    assert max(report["cupy"].values()) < 1e-4


# ---------------------------------------------------------------------- errors and devices
def test_out_of_memory_names_op_and_bytes(be):
    import cupy

    from gpunn.errors import DeviceMemoryError

    huge = cupy.broadcast_to(cupy.ones(1, cupy.float32), (2**41,))  # 8 TiB once contiguous
    with pytest.raises(DeviceMemoryError) as info:
        be.relu_forward(huge)
    msg = str(info.value)
    assert "relu_forward" in msg and "bytes" in msg and "free" in msg
    assert isinstance(info.value, MemoryError)
    y, _ = be.relu_forward(be.asarray(np.array([-1.0, 2.0], np.float32)))  # still usable
    assert be.to_numpy(y).tolist() == [0.0, 2.0]


def test_bad_labels_raise_at_next_sync_and_eagerly(be):
    import gpunn.cuda

    z = gpunn.tensor(np.zeros((3, 4), np.float32), backend="cupy", requires_grad=True)
    bad = gpunn.tensor(np.array([0, 4, 1]), backend="cupy")
    loss = gpunn.functional.cross_entropy(z, bad)
    with pytest.raises(IndexError, match=r"cross_entropy.*\[0, 4\).*4"):
        loss.item()
    ok = gpunn.functional.cross_entropy(z, gpunn.tensor(np.array([0, 3, 1]), backend="cupy"))
    assert np.isfinite(ok.item())
    gpunn.cuda.set_eager_checks(True)
    try:
        with pytest.raises(IndexError, match="cross_entropy"):
            gpunn.functional.cross_entropy(z, bad)
    finally:
        gpunn.cuda.set_eager_checks(False)


def test_bad_embedding_indices_raise_at_next_sync_and_eagerly(be):
    import gpunn.cuda

    w = gpunn.tensor(np.ones((5, 3), np.float32), backend="cupy", requires_grad=True)
    bad = gpunn.tensor(np.array([0, 5, 1]), backend="cupy")
    y = gpunn.functional.embedding(bad, w)
    with pytest.raises(IndexError, match=r"embedding.*\[0, 5\).*found 5"):
        y.numpy()
    ok = gpunn.functional.embedding(gpunn.tensor(np.array([4, 0]), backend="cupy"), w)
    assert np.all(ok.numpy() == 1)
    gpunn.cuda.set_eager_checks(True)
    try:
        with pytest.raises(IndexError, match=r"embedding: input holds indices outside"):
            gpunn.functional.embedding(bad, w)
    finally:
        gpunn.cuda.set_eager_checks(False)


def test_moves_between_backends_copy(be):
    from gpunn import models

    gpunn.manual_seed(0)
    model = models.MLP(6, (5,), 3)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    model.to("cupy")
    assert all(p.backend == "cupy" for p in model.parameters())
    t = gpunn.tensor(np.arange(6.0, dtype=np.float32), backend="cupy")
    host = t.to("numpy")
    host.data[0] = 100.0
    assert t.numpy()[0] == 0.0
    model.to("numpy")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k])


def test_tf32_is_opt_in_and_within_its_stated_accuracy(be):
    import gpunn.cuda

    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 512)).astype(np.float32)
    b = rng.standard_normal((512, 512)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    err = lambda y: np.linalg.norm(be.to_numpy(y) - exact) / np.linalg.norm(exact)
    assert not gpunn.cuda.tf32_enabled()
    y32, _ = be.matmul_forward(be.asarray(a), be.asarray(b))
    assert err(y32) < 1e-5
    gpunn.cuda.set_tf32(True)
    try:
        ytf, _ = be.matmul_forward(be.asarray(a), be.asarray(b))
        assert err(ytf) < 1e-2
    finally:
        gpunn.cuda.set_tf32(False)
    y_again, _ = be.matmul_forward(be.asarray(a), be.asarray(b))
    assert err(y_again) < 1e-5


def test_dlpack_round_trip_with_cupy_and_torch(be):
    import cupy

    t = gpunn.tensor(np.arange(12, dtype=np.float32).reshape(3, 4), backend="cupy")
    c = cupy.from_dlpack(t)
    c[0, 0] = 42.0
    assert t.numpy()[0, 0] == 42.0  # shared memory, no copy
    back = gpunn.from_dlpack(c, backend="cupy")
    assert back.data.data.ptr == t.data.data.ptr
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    tt = torch.from_dlpack(t)
    assert tt.is_cuda and tt.data_ptr() == t.data.data.ptr
    tt[1, 1] = -1.0
    assert t.numpy()[1, 1] == -1.0
    src = torch.arange(6, dtype=torch.float64, device="cuda").reshape(2, 3)
    g = gpunn.from_dlpack(src, backend="cupy")
    assert g.data.data.ptr == src.data_ptr()
    np.testing.assert_array_equal(g.numpy(), src.cpu().numpy())
