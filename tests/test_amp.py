"""Mixed precision: the autocast context (nesting, which ops it reaches, float32 on the CPU
backends, backward in the forward's precision), bfloat16 rounding, the CuPy GEMM call under
a NumPy stand-in, and GradScaler's logic with fake overflows (against torch's when present)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gpunn.kernels.lowp import bfloat16_bits, round_to

import gpunn
from gpunn import amp, nn
from gpunn.backends import backend_object


def test_autocast_nests_and_restores():
    assert amp.autocast_dtype() is None
    with gpunn.autocast("bfloat16"):
        assert amp.autocast_dtype() == "bfloat16"
        with gpunn.autocast("float16"):
            assert amp.autocast_dtype() == "float16"
            with gpunn.autocast("float16", enabled=False):
                assert amp.autocast_dtype() is None
            assert amp.autocast_dtype() == "float16"
        assert amp.autocast_dtype() == "bfloat16"
    assert amp.autocast_dtype() is None
    with pytest.raises(ValueError, match="autocast: dtype must be one of"):
        gpunn.autocast("int8")


def test_autocast_reaches_linear_matmul_conv2d_forward_and_backward_only(monkeypatch):
    """A spy on the numpy backend: which op calls run inside ``be.autocast``, and in which
    precision; the backward runs in its forward's precision though called outside."""
    be = backend_object("numpy")
    inside, calls = [None], []

    class Scope:
        def __init__(self, dtype):
            self.dtype = dtype

        def __enter__(self):
            inside[0] = self.dtype

        def __exit__(self, *exc):
            inside[0] = None

    monkeypatch.setattr(be, "autocast", Scope, raising=False)
    for op in ("linear", "matmul", "conv2d", "relu", "mse_loss", "add"):
        for part in ("_forward", "_backward"):
            original = getattr(be, op + part)

            def spy(*args, _name=op + part, _original=original, **kw):
                calls.append((_name, inside[0]))
                return _original(*args, **kw)

            monkeypatch.setattr(be, op + part, spy, raising=False)
    with gpunn.use_backend("numpy"):
        gpunn.manual_seed(0)
        conv, lin = nn.Conv2d(1, 2, 3), nn.Linear(8, 3)
        x = gpunn.randn(2, 1, 4, 4)
        m = gpunn.randn(3, 3, requires_grad=True)
        with gpunn.autocast("float16"):
            h = conv(x).relu().reshape(2, 8)
            y = lin(h) @ m + 1.0
            loss = nn.functional.mse_loss(y, gpunn.zeros(2, 3))
        loss.backward()
    seen = dict(calls)
    for op in ("linear", "matmul", "conv2d"):
        assert seen[op + "_forward"] == "float16" and seen[op + "_backward"] == "float16", op
    for op in ("relu", "mse_loss", "add"):
        assert seen[op + "_forward"] is None and seen[op + "_backward"] is None, op


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cpu_backends_keep_float32_under_autocast(backend, dtype):
    if backend == "cupy":
        pytest.skip("cupy lowers the precision under autocast; this checks the CPU backends")
    results = []
    for lowp in (None, dtype):
        gpunn.manual_seed(1)
        with gpunn.use_backend(backend):
            model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
            x = gpunn.randn(5, 1, 4, 4)
            with gpunn.autocast(lowp or "bfloat16", enabled=lowp is not None):
                out = model(x)
            out.sum().backward()
        assert out.dtype == "float32"
        results.append([out.numpy()] + [p.grad.numpy() for p in model.parameters()])
    for a, b in zip(*results):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_bfloat16_rounding_matches_torch():
    torch = pytest.importorskip("torch", reason="PyTorch's bfloat16 conversion is the oracle")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20000) * 10.0 ** rng.uniform(-40, 38, 20000)).astype(np.float32)
    x = np.concatenate([x, np.float32([np.inf, -np.inf, 0.0, -0.0, 3.4e38, 1e-45, 1.00390625])])
    ours = bfloat16_bits(np, x)
    theirs = torch.tensor(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(round_to(np, np.float32([np.nan, -np.nan]), "bfloat16")).all()
    assert np.float32(1.00390625) == round_to(np, np.float32([1.00390625]), "float16")[0]


# ---------------------------------------------------------------------- the CuPy path
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cupy_lowp_gemm_under_a_numpy_stand_in(tmp_path, dtype):
    """The cupy backend's linear, matmul and conv2d under autocast with a NumPy CuPy and the
    stand-in cuBLAS of tests/test_cuda_graphs.py behind gpunn's binding, whose
    cublasGemmEx computes in NumPy from the pointers (column-major, as cuBLAS reads its
    arguments): checks the calls' shapes, leading dimensions, types and operand order, not
    a GPU."""
    env = dict(os.environ, GPUNN_EMU_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, __file__, dtype], capture_output=True, text=True, env=env, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "gemmEx calls:" in proc.stdout


def _gemm_worker(dtype):
    sys.path.insert(0, os.path.dirname(__file__))
    import test_cuda_emulated

    test_cuda_emulated._fake_cupy(os.environ["GPUNN_EMU_CACHE"])
    from test_cuda_graphs import FakeCublas

    from gpunn.cuda import cublas

    lib = FakeCublas()  # its cublasGemmEx computes in NumPy from the pointers, column-major
    code = cublas.CUDA_R_16F if dtype == "float16" else cublas.CUDA_R_16BF
    be, ref = backend_object("cupy"), backend_object("numpy")
    be._dev.blas = cublas.Cublas(lib, (0, cublas.WORKSPACE_BYTES))
    rng = np.random.default_rng(0)
    X, W, b = (rng.standard_normal(s).astype(np.float32) for s in ((7, 5), (3, 5), (3,)))
    img, K = rng.standard_normal((2, 2, 5, 5)).astype(np.float32), rng.standard_normal((4, 2, 3, 3))
    K = K.astype(np.float32)
    lo = lambda a: round_to(np, a, dtype)  # noqa: E731
    failures = []

    def check(name, got, want, dtype=np.float32):
        got = np.asarray(got)
        if got.dtype != dtype or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            failures.append(f"{name}: {got.dtype}, max diff {np.max(np.abs(got - want))}")

    with be.autocast(dtype):
        Y, saved = be.linear_forward(X, W, b, activation="relu")
        dX, dW, db = be.linear_backward(np.ones_like(Y), saved, (True, True, True))
        M, _ = be.matmul_forward(X, W.T.copy())
        Yc, saved_c = be.conv2d_forward(img, K, None, (1, 1), (1, 1))
    Z = lo(X).astype(np.float64) @ lo(W).astype(np.float64).T + b
    check("linear forward", Y, np.maximum(Z, 0))
    dZ = (Z > 0).astype(np.float64)
    check("linear dX", dX, lo(dZ.astype(np.float32)) @ lo(W))
    check("linear dW", dW, lo(dZ.astype(np.float32)).T @ lo(X))
    check("matmul", M, lo(X).astype(np.float64) @ lo(W).T)
    want_c, _ = ref.conv2d_forward(lo(img).astype(np.float64), lo(K).astype(np.float64), None,
                                   (1, 1), (1, 1))  # fmt: skip
    check("conv2d forward", Yc, want_c)
    calls = [args for name, args in lib.calls if name == "cublasGemmEx"]
    if not calls or any(args[8] != code or args[11] != code for args in calls):
        failures.append(f"GemmEx calls {len(calls)}, operand types {[a[8] for a in calls]}")
    Y64, _ = be.linear_forward(X.astype(np.float64), W.astype(np.float64), None)
    check("float64 untouched", Y64, X.astype(np.float64) @ W.astype(np.float64).T, np.float64)
    if sum(name == "cublasGemmEx" for name, _ in lib.calls) != len(calls):
        failures.append("float64 went through the low-precision GEMM")
    print("gemmEx calls:", [args[3:6] for args in calls])
    print("\n".join(failures) or "all match")
    return 1 if failures else 0


# ---------------------------------------------------------------------- GradScaler
def _model_and_opt():
    gpunn.manual_seed(0)
    model = nn.Linear(3, 2)
    return model, gpunn.optim.SGD(model.parameters(), lr=0.1)


def _fill_grads(model, scale, overflow):
    for p in model.parameters():
        g = np.full(p.shape, 2.0 * scale, np.float32)
        if overflow:
            g.ravel()[0] = np.inf
        p.grad = gpunn.tensor(g)


def test_grad_scaler_skips_overflowing_steps_and_adapts_the_scale():
    model, opt = _model_and_opt()
    scaler = gpunn.amp.GradScaler(init_scale=8.0, growth_interval=2)
    before = [p.numpy().copy() for p in model.parameters()]
    _fill_grads(model, scaler.get_scale(), overflow=True)
    assert scaler.step(opt) is False
    for p, b in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), b)  # skipped
    scaler.update()
    assert scaler.get_scale() == 4.0
    for _ in range(2):
        _fill_grads(model, scaler.get_scale(), overflow=False)
        scaler.unscale_(opt)
        np.testing.assert_array_equal(model.weight.grad.numpy(), 2.0)  # the true gradient
        with pytest.raises(RuntimeError, match="already called for this optimizer"):
            scaler.unscale_(opt)
        assert scaler.step(opt) is True
        scaler.update()
    assert scaler.get_scale() == 8.0  # grown after growth_interval clean steps
    np.testing.assert_allclose(model.weight.numpy(), before[0] - 2 * 0.1 * 2.0, rtol=1e-6)


def test_grad_scaler_scales_the_loss_and_round_trips_its_state():
    scaler = gpunn.amp.GradScaler(init_scale=4.0)
    loss = gpunn.tensor(np.float32(1.5))
    assert float(scaler.scale(loss).numpy()) == 6.0
    other = gpunn.amp.GradScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.get_scale() == 4.0
    off = gpunn.amp.GradScaler(enabled=False)
    assert off.scale(loss) is loss and off.get_scale() == 1.0


def test_grad_scaler_follows_torchs_scale_sequence():
    torch = pytest.importorskip("torch", reason="torch.amp.GradScaler is the oracle")
    pattern = [False, True, False, False, False, True, True, False, False, False, False]
    model, opt = _model_and_opt()
    ours = gpunn.amp.GradScaler(init_scale=1024.0, growth_interval=3)
    tp = torch.nn.Parameter(torch.zeros(3))
    topt = torch.optim.SGD([tp], lr=0.1)
    theirs = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for overflow in pattern:
        theirs.scale(torch.tensor(1.0))  # (torch creates its scale factor on first use)
        _fill_grads(model, ours.get_scale(), overflow)
        g = torch.full((3,), 2.0 * theirs.get_scale())
        if overflow:
            g[0] = float("inf")
        tp.grad = g
        ours.step(opt)
        theirs.step(topt)
        ours.update()
        theirs.update()
        assert ours.get_scale() == theirs.get_scale()


if __name__ == "__main__":
    sys.exit(_gemm_worker(sys.argv[1]))
