"""The Numba CPU backend: every op against the reference (serial and parallel kernels),
its coverage, whole models against the reference, threads, warm-up and the disk cache."""

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import gpunn
from gpunn import functional as F
from gpunn import nn, optim
from gpunn.backends import backend_object, why_unavailable
from gpunn.testing import OP_CASES, UPDATE_CASES, compare_op, compare_update

pytestmark = pytest.mark.skipif(
    why_unavailable("numba") is not None, reason=f"numba backend: {why_unavailable('numba')}"
)

if why_unavailable("numba") is None:
    from gpunn.kernels.cpu import _jit, launch
    from gpunn.kernels.cpu import threads as cpu_threads

    from gpunn.backends import numba_backend as nb


@pytest.fixture
def parallel_kernels(monkeypatch):
    """Run every op on the parallel kernel variants, however small its input."""
    if not _jit.PARALLEL:
        pytest.skip(f"threading layer {_jit.THREADING_LAYER}: kernels are serial")
    monkeypatch.setattr(cpu_threads, "par_min", 0)


# ---------------------------------------------------------------------- op by op
@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", OP_CASES, ids=repr)
def test_op_matches_reference(case, dtype, layout):
    compare_op("numba", case, dtype, layout, seed=11)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parallel_kernels_match_reference(parallel_kernels, dtype):
    for case in OP_CASES:
        for layout in ("C", "strided"):
            compare_op("numba", case, dtype, layout, seed=12)
    for case in UPDATE_CASES:
        compare_update("numba", case, dtype, seed=13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", UPDATE_CASES, ids=repr)
def test_update_matches_reference(case, dtype):
    compare_update("numba", case, dtype, seed=14)


@pytest.mark.parametrize("block_bytes", [1, 1 << 12, 1 << 30])
@pytest.mark.parametrize("par_min", [0, float("inf")])
def test_convolution_blocks_and_tasks(monkeypatch, block_bytes, par_min):
    """Blocks of one output row (one tile row for Winograd), blocks spanning several
    images, one block for the whole batch; serial, and parallel with two tasks (more tasks
    than images included)."""
    monkeypatch.setattr(launch, "CONV_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(launch, "WINOGRAD_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(cpu_threads, "par_min", par_min)
    monkeypatch.setattr(cpu_threads, "num_threads", 2)
    for case in (c for c in OP_CASES if c.op == "conv2d"):
        for dtype in ("float32", "float64"):
            compare_op("numba", case, dtype, "strided", seed=15)


def test_winograd_runs_the_3x3_cases_forward_and_backward(monkeypatch):
    """The op table's 3x3 stride-1 cases with 8+ channels go through Winograd F(2x2, 3x3),
    forward and backward (so the comparisons above check that path), asked for exactly
    the gradients the case wants; fewer channels or another kernel size do not."""
    forwards, backwards = [], []
    real_forward, real_backward = launch.conv2d_winograd, launch.conv2d_winograd_backward

    def spy_forward(X, W, b, padding):
        forwards.append(W.shape)
        return real_forward(X, W, b, padding)

    def spy_backward(dY, X, W, padding, needs):
        backwards.append(tuple(needs))
        return real_backward(dY, X, W, padding, needs)

    monkeypatch.setattr(launch, "conv2d_winograd", spy_forward)
    monkeypatch.setattr(launch, "conv2d_winograd_backward", spy_backward)
    winograd_cases = 0
    for case in (c for c in OP_CASES if c.op == "conv2d"):
        forwards.clear()
        backwards.clear()
        compare_op("numba", case, "float32", "C", seed=16)
        x, w, b = case.make(np.random.default_rng(0), np.float32)[:3]
        fits = w.shape[2:] == (3, 3) and case.params["stride"] == (1, 1)
        fits = fits and min(x.shape[1], w.shape[0]) >= launch.WINOGRAD_MIN_CHANNELS
        if fits:
            winograd_cases += 1
            needs = tuple(case.needs or (True, True, True))
            assert forwards == [w.shape], case.name
            assert backwards == [(needs[0], needs[1], b is not None and needs[2])], case.name
        else:
            assert not forwards and not backwards, case.name
    assert winograd_cases >= 3


@pytest.mark.parametrize(
    "window, padding",
    [((3, 2), (0, 0)), ((3, 2), (1, 1)), ((3, 2), (1, 0)), ((2, 2), (0, 0))],
)
def test_max_pool_ties_infinities_and_nan_follow_the_reference(window, padding):
    """The first maximum in row-major window order wins (padding counts as -inf), as the
    reference's argmax: ties, -inf inputs and NaN send the gradient to the same cell.
    2x2 windows of stride 2 run the branch-free kernel, the others the general one."""
    be, ref = backend_object("numba"), backend_object("numpy")
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        x = rng.integers(0, 3, (2, 3, 7, 6)).astype(dtype)  # many ties
        x[0, 0, :3, :3] = -np.inf
        x[1, 2, 2, 2] = np.nan
        x[1, 1, 4:, 3:] = np.nan
        stride = (2, 2) if window == (2, 2) else (2, 1)
        args = dict(kernel_size=window, stride=stride, padding=padding)
        y, s = be.max_pool2d_forward(x, **args)
        y_ref, s_ref = ref.max_pool2d_forward(x, **args)
        np.testing.assert_array_equal(y, y_ref)
        dy = rng.standard_normal(y.shape).astype(dtype)
        np.testing.assert_allclose(  # overlapping windows add up in another order
            be.max_pool2d_backward(dy, s, (True,))[0],
            ref.max_pool2d_backward(dy, s_ref, (True,))[0],
            rtol=1e-6 if dtype == np.float32 else 1e-14,
        )


def _scaled(tol, reference):
    """``tol`` with its atol relative to the reference's largest magnitude: sums of hundreds
    of float32 products, blocked differently by two BLAS builds, differ by a few ulp of
    their largest terms, not of each (possibly cancelled) result."""
    return dict(tol, atol=tol["atol"] * max(1.0, float(np.abs(reference).max())))


def test_large_inputs_take_the_parallel_path_and_match():
    """Sizes above PARALLEL_MIN_SIZE, with shapes that do not divide evenly."""
    be, ref = backend_object("numba"), backend_object("numpy")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
        X = rng.standard_normal((523, 301)).astype(dtype)
        W = rng.standard_normal((129, 301)).astype(dtype)
        b = rng.standard_normal(129).astype(dtype)
        for act in (None, "relu", "sigmoid", "tanh"):
            Y, s = be.linear_forward(X, W, b, act)
            Yr, sr = ref.linear_forward(X, W, b, act)
            np.testing.assert_allclose(Y, Yr, **_scaled(tol, Yr))
            dY = rng.standard_normal(Y.shape).astype(dtype)
            for g, gr in zip(
                be.linear_backward(dY, s, (1, 1, 1)), ref.linear_backward(dY, sr, (1, 1, 1))
            ):
                np.testing.assert_allclose(g, gr, **_scaled(tol, gr))
        Z = (4 * rng.standard_normal((300, 1001))).astype(dtype)
        labels = rng.integers(0, 1001, 300)
        L, s = be.cross_entropy_forward(Z, labels)
        Lr, sr = ref.cross_entropy_forward(Z, labels)
        np.testing.assert_allclose(L, Lr, **tol)
        np.testing.assert_allclose(
            be.cross_entropy_backward(np.asarray(dtype(1.5)), s, (True, False))[0],
            ref.cross_entropy_backward(np.asarray(dtype(1.5)), sr, (True, False))[0],
            **tol,
        )
        x = rng.standard_normal((7, 5, 33, 37)).astype(dtype)
        for op in ("sum", "mean"):
            for axis in (None, (0, 2), 3, (1, 2, 3)):
                y, s = getattr(be, f"{op}_forward")(x, axis=axis, keepdims=False)
                np.testing.assert_allclose(y, getattr(x, op)(axis=axis), **tol)


def test_vector_math_is_accurate_over_the_whole_range():
    """exp/log/sigmoid/tanh kernels (own vectorisable versions) within a few ulp of float64
    results rounded to the dtype, with inf, -inf and NaN as NumPy gives them."""
    be = backend_object("numba")
    for dtype in (np.float32, np.float64):
        eps = np.finfo(dtype).eps
        grid = np.concatenate(
            [
                np.linspace(-800, 800, 20001),
                np.linspace(-1, 1, 20001),
                np.logspace(-300, 300, 2001),
                -np.logspace(-300, 300, 2001),
                [0.0, -0.0, np.inf, -np.inf, np.nan],
            ]
        )
        with np.errstate(all="ignore"):
            x = grid.astype(dtype)
            wide = x.astype(np.longdouble)  # the "exact" values, rounded to dtype below
            checks = {
                "exp": (be.exp_forward, np.exp),
                "log": (be.log_forward, np.log),
                "sigmoid": (be.sigmoid_forward, lambda v: 1 / (1 + np.exp(-v))),
                "tanh": (be.tanh_forward, np.tanh),
            }
            for name, (op, exact) in checks.items():
                got = op(x)[0].astype(np.float64)
                want = exact(wide).astype(dtype).astype(np.float64)
                same_special = (got == want) | (np.isnan(got) & np.isnan(want))
                normal = np.isfinite(want) & (np.abs(want) >= np.finfo(dtype).tiny)
                assert same_special[~np.isfinite(want)].all(), name
                err = np.abs(got[normal] - want[normal]) / np.abs(want[normal])
                assert err.max() <= 4 * eps, (name, dtype, err.max() / eps)
                tiny = np.isfinite(want) & ~normal
                assert (np.abs(got[tiny]) <= np.finfo(dtype).tiny).all(), name


# ---------------------------------------------------------------------- coverage
def test_warmup_compiles_every_kernel_for_both_dtypes():
    report = nb.warmup()
    assert report["kernels"] == len(_jit.REGISTRY) > 30
    assert report["missing"] == []
    assert report["signatures"] >= 2 * report["kernels"]


def test_every_kernel_has_a_signature_table_entry():
    import pkgutil

    from gpunn.kernels import cpu
    from gpunn.kernels.cpu import warmup

    plumbing = {"launch", "threads", "warmup"}
    modules = {m.name for m in pkgutil.iter_modules(cpu.__path__)} - plumbing
    assert set(warmup.MODULES) == {m for m in modules if not m.startswith("_")}
    table = warmup.table()
    kernels = {key.split("/")[0] for key in _jit.REGISTRY}
    assert kernels == set(table), (sorted(kernels - set(table)), sorted(set(table) - kernels))
    assert all(table[key] for key in table)


def test_after_warmup_no_op_compiles_a_new_signature(monkeypatch):
    """The table holds the exact argument types the launchers pass: once warmed up, the
    whole op table (both layouts and dtypes, serial and parallel variants) runs without
    compiling anything."""
    from gpunn.testing.cases import run_case, run_update

    nb.warmup()
    before = {name: len(d.signatures) for name, d in _jit.REGISTRY.items()}
    be = backend_object("numba")
    for par_min in (float("inf"), 0):
        monkeypatch.setattr(cpu_threads, "par_min", par_min)
        for dtype in ("float32", "float64"):
            for case in OP_CASES:
                for layout in ("C", "strided"):
                    run_case(be, case, dtype, layout)
            for case in UPDATE_CASES:
                run_update(be, case, dtype)
    after = {name: len(d.signatures) for name, d in _jit.REGISTRY.items()}
    grown = {
        name: [str(s) for s in _jit.REGISTRY[name].signatures]
        for name in after
        if after[name] != before[name]
    }
    assert not grown, grown


def test_cache_stamp_covers_shared_kernel_code():
    from gpunn.kernels.cpu import activations

    if not _jit.CACHE:
        pytest.skip(f"no disk cache here: {_jit.cache_problem}")
    stamp = activations.sigmoid_forward.serial._cache._cache_file._source_stamp
    assert isinstance(stamp, tuple) and stamp[1] == _jit._DEPENDENCY_STAMP


# ---------------------------------------------------------------------- whole models
def _train(backend, build, make_batch, steps=4, lr=0.05, dtype="float32"):
    gpunn.manual_seed(7)
    with gpunn.use_backend(backend):
        model = build()
        if dtype == "float64":
            model.double()
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        x, y = make_batch(np.random.default_rng(3), dtype)  # one batch, learnt step by step
        x, y = gpunn.tensor(x), gpunn.tensor(y)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return np.array(losses), {k: v.numpy() for k, v in model.state_dict().items()}


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(20, 32)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(32, 16)
        self.fc3 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.drop(self.fc1(x, activation="relu"))
        h = F.tanh(self.fc2(h))
        return self.fc3(h)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.avg_pool2d(F.sigmoid(self.c2(h)), 1)
        return self.fc(h.reshape(h.shape[0], -1))


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.head(h[0] + out.mean(axis=0))


MODELS = {
    "mlp": (
        _MLP,
        lambda rng, dt: (rng.standard_normal((16, 20)).astype(dt), rng.integers(0, 5, 16)),
    ),
    "convnet": (
        _ConvNet,
        lambda rng, dt: (rng.standard_normal((5, 1, 12, 12)).astype(dt), rng.integers(0, 3, 5)),
    ),
    "lstm": (
        _LSTMNet,
        lambda rng, dt: (rng.standard_normal((7, 3, 6)).astype(dt), rng.integers(0, 4, 3)),
    ),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_matches_the_reference(name, dtype):
    build, batch = MODELS[name]
    ref_losses, ref_state = _train("numpy", build, batch, dtype=dtype)
    losses, state = _train("numba", build, batch, dtype=dtype)
    rtol = 2e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(losses, ref_losses, rtol=rtol)
    assert losses[-1] < losses[0]
    for key in ref_state:
        np.testing.assert_allclose(
            state[key], ref_state[key], rtol=rtol, atol=rtol * 1e-1, err_msg=key
        )


# ---------------------------------------------------------------------- threads
def test_two_python_threads_train_at_once(parallel_kernels):
    """Parallel kernels entered from two Python threads at once must not abort the process
    (Numba's workqueue layer would) and must give each thread its own right answer."""
    build, batch = MODELS["mlp"]
    expected = _train_in_thread(build, batch)
    results, errors = {}, []
    start = threading.Barrier(2)

    def worker(k):
        try:
            start.wait()
            results[k] = _train_in_thread(build, batch)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(2):
        np.testing.assert_allclose(results[k], expected, rtol=1e-5)


_seed_lock = threading.Lock()


def _train_in_thread(build, batch, steps=30):
    # manual_seed is process-wide: build under a lock; eval() so that dropout draws no seeds
    with _seed_lock:
        gpunn.manual_seed(7)
        with gpunn.use_backend("numba"):
            model = build()
    model.eval()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(3)
    losses = []
    for _ in range(steps):
        x, y = batch(rng, "float32")
        x, y = gpunn.tensor(x, backend="numba"), gpunn.tensor(y, backend="numba")
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def test_thread_count_reaches_numba():
    import numba

    before = gpunn.get_num_threads()
    try:
        gpunn.set_num_threads(1)
        assert numba.get_num_threads() == 1
        assert cpu_threads.par_min == float("inf")  # one thread: serial kernels only
        gpunn.set_num_threads(10_000)  # clamped to the threads Numba launched
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        gpunn.set_num_threads(1)
        seen = []

        def other():  # Numba's count is per thread: the backend applies gpunn's there too
            cpu_threads.sync_threads()
            seen.append(numba.get_num_threads())

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen == [1]
    finally:
        gpunn.set_num_threads(before)


def test_threading_layer_is_thread_safe_or_kernels_are_serial():
    assert _jit.THREADING_LAYER in ("tbb", "omp", "workqueue")
    assert _jit.PARALLEL == (_jit.THREADING_LAYER != "workqueue")


def test_the_tbb_dependency_gives_the_tbb_layer():
    """gpunn depends on the tbb wheel on x86-64; its library sits in <prefix>/lib, which the
    loader does not search for a virtual environment, so gpunn loads it by path. Either way
    Numba must end up on TBB (its OpenMP layer spins against PyTorch's)."""
    import importlib.metadata

    try:
        importlib.metadata.version("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed (gpunn needs it on x86-64 only)")
    if "NUMBA_THREADING_LAYER" in os.environ:
        pytest.skip("NUMBA_THREADING_LAYER chooses the layer")
    assert _jit.THREADING_LAYER == "tbb"


def test_workqueue_layer_runs_serial_kernels_from_two_threads():
    """With the workqueue layer (not thread-safe: it aborts the process), gpunn compiles no
    parallel loops, so two training threads still run."""
    code = textwrap.dedent("""
        import threading
        import numpy as np
        import gpunn
        from gpunn import functional as F, nn, optim
        from gpunn.kernels.cpu import _jit
        gpunn.set_backend("numba")
        print("LAYER", _jit.THREADING_LAYER, _jit.PARALLEL)
        def train(out, k):
            model = nn.Linear(300, 300)
            opt = optim.SGD(model.parameters(), lr=0.01)
            x = gpunn.tensor(np.ones((400, 300), np.float32))
            for _ in range(20):
                opt.zero_grad()
                F.tanh(model(x, activation="sigmoid")).mean().backward()
                opt.step()
            out[k] = True
        out = {}
        ts = [threading.Thread(target=train, args=(out, k)) for k in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print("DONE", sorted(out))
    """)
    proc = _run_python(code, {"NUMBA_THREADING_LAYER": "workqueue"})
    assert proc.returncode == 0, proc.stderr
    assert "LAYER workqueue False" in proc.stdout
    assert "DONE [0, 1]" in proc.stdout


# ---------------------------------------------------------------------- the disk cache
def _run_python(code, env_extra, timeout=300):
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


_SMALL_STEP = textwrap.dedent("""
    import warnings
    warnings.simplefilter("default")
    import numpy as np
    import gpunn
    x = gpunn.tensor(np.arange(6.0, dtype=np.float32) - 3, backend="numba", requires_grad=True)
    y = gpunn.functional.relu(x).sum()
    y.backward()
    print("RESULT", y.item(), x.grad.numpy().tolist())
""")


def test_unwritable_cache_dir_warns_once_and_still_computes(tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a path under a file
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        cache = blocker / "cache"
    else:
        cache = tmp_path / "read-only"
        cache.mkdir()
        cache.chmod(0o555)
    proc = _run_python(_SMALL_STEP, {"GPUNN_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr
    assert "RESULT 3.0 [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]" in proc.stdout
    assert proc.stderr.count("cannot be cached on disk") == 1, proc.stderr


def test_cache_dir_setting_is_used(tmp_path):
    cache = tmp_path / "kernels"
    proc = _run_python(
        _SMALL_STEP
        + "\nfrom gpunn.kernels.cpu import _jit\nimport numba\n"
        + "print('DIR', _jit.cache_dir(), numba.config.CACHE_DIR)\n",
        {"GPUNN_CACHE_DIR": str(cache)},
    )
    assert proc.returncode == 0, proc.stderr
    assert f"DIR {cache} {cache}" in proc.stdout
    assert any(p.suffix == ".nbi" for p in cache.rglob("*")), "no cache index written"


def test_gelu_erf_series_matches_scipy():
    """The branch-free erf behind the exact GELU kernels, against SciPy's, in float64: a
    relative error below 1e-14 where |x| < 2, an absolute one below 1e-15 beyond; infinities
    and NaN as erf's."""
    import numba
    from gpunn.kernels.cpu import activations as A
    from scipy.special import erf

    @numba.njit
    def run(x, out):
        for i in range(x.size):
            out[i] = A._erf64(x[i])

    x = np.concatenate([np.linspace(-7, 7, 100001), [1e-300, -1e-20, 2.0, 6.0, -6.0]])
    got = np.empty_like(x)
    run(x, got)
    want = erf(x)
    small = np.abs(x) < 2
    rel = np.abs(got[small] - want[small]) / np.maximum(np.abs(want[small]), 1e-300)
    assert rel.max() < 1e-14
    assert np.abs(got[~small] - want[~small]).max() < 1e-15
    special = np.array([np.inf, -np.inf, np.nan, 0.0])
    out = np.empty_like(special)
    run(special, out)
    np.testing.assert_array_equal(out, [1.0, -1.0, np.nan, 0.0])
