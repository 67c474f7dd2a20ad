"""Captured steps (gpunn.cuda.graphed) and the cuBLAS binding behind them.

Without a GPU: the capture plan; the refusals of host work while a step is captured (the
real methods of the cupy backend and of autograd, on a backend stub whose capturing flag
is set); the binding's arguments (row-major to column-major, transposes, leading
dimensions, dtype to function, stream and workspace binding), checked by a stand-in
library that records every call and computes each GEMM in NumPy from the pointers, as
cuBLAS reads them; the library's load errors; GraphedStep's input and hyper-parameter
checks; the state the warm-up changes, restored; and the training command's flag. Under
the CUDA emulation of tests/test_cuda_emulated.py (g++): every product op case through the
binding, and graphed() with a stand-in for stream capture (launches recorded, replayed).

On a GPU (skipped with the reason "no CUDA device" elsewhere): 100 captured steps
against 100 eager ones, bit for bit, and a captured ``.item()`` refused.
"""

import ctypes
import io
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import gpunn
from gpunn import nn
from gpunn.backends import Backend, backend_object, why_unavailable
from gpunn.cuda import cublas, graphs
from gpunn.errors import CaptureError, CublasError

_wanted = os.environ.get("GPUNN_TEST_BACKENDS")
# (not asked in the emulation worker below: the stand-in CuPy must be the first one seen)
_gpu = __name__ != "__main__" and why_unavailable("cupy") is None
_gpu = _gpu and (not _wanted or "cupy" in _wanted.split(","))
gpu_only = pytest.mark.skipif(not _gpu, reason="no CUDA device")


# ---------------------------------------------------------------------- the capture plan
def _stems():
    suffixes = ("_forward", "_backward", "_update")
    return {next(op[: -len(s)] for s in suffixes if op.endswith(s)) for op in Backend.ops()}


def test_capture_plan_covers_every_op_of_the_contract():
    plan = gpunn.cuda.capture_plan()
    assert set(plan) == _stems()
    assert plan["linear"] is None and plan["conv2d"] is None and plan["lstm"] is None
    assert plan["sgd"] is None and plan["cross_entropy"] is None
    assert plan["adam"] is None and plan["dropout"] is None  # replayed host values
    assert plan["embedding"] is None  # gpunn's own sort
    assert all(why is None for why in plan.values())
    with pytest.raises(ValueError, match="unknown op stems"):
        gpunn.cuda.capture_plan(["linear", "nope"])


def test_capture_plan_of_models_and_step_blockers():
    from gpunn import models

    mlp = models.MLP(8, (4,), 3)
    assert gpunn.cuda.blockers(mlp) == {}
    dropped = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    assert gpunn.cuda.blockers(dropped) == {}  # dropout's seed is replayed
    words = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert gpunn.cuda.blockers(words) == {}
    assert gpunn.cuda.step_blockers(mlp) == []
    assert gpunn.cuda.step_blockers(mlp, amp="bfloat16") == []
    assert gpunn.cuda.step_blockers(words, amp="float16") == []  # skipped on the device


# ---------------------------------------------------------------------- replayed host values
class _HostWords(np.ndarray):
    """Host memory standing for the device words, at address 4096 (CuPy's .data.ptr)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=4096)


class _FakeWords:
    """_ReplayedWords without a device: slots are offsets from address 4096."""

    def __init__(self):
        self.draws, self.after = [], []
        self.device = np.zeros(8, np.uint64).view(_HostWords)

    add = graphs._ReplayedWords.add
    settle = graphs._ReplayedWords.settle
    name = "train_step"


def test_replayed_values_are_plain_outside_a_capture_and_keep_their_draw_inside(monkeypatch):
    counter = iter(range(100, 200))
    assert type(graphs.replayed(lambda: next(counter))) is int
    words = _FakeWords()
    monkeypatch.setattr(graphs, "_capture", words)
    first, second = graphs.replayed(lambda: 7), graphs.replayed(lambda: next(counter))
    assert (first, first.slot, second, second.slot) == (7, 4096, 101, 4104)
    lr = graphs.replayed(lambda: 0.5)
    assert type(lr) is graphs.ReplayedFloat and (lr, lr.slot) == (0.5, 4112)
    words.device[2] = np.float64(0.75).view(np.uint64)  # what a replay's copy writes
    assert lr.word.shape == () and lr.word.dtype == np.float64 and lr.word == 0.75
    assert [d() for d in words.draws] == [7, 102, 0.5]  # a replay draws again, in order
    with pytest.raises(CaptureError, match="64 unsigned bits, got -1"):
        graphs.replayed(lambda: -1)
    monkeypatch.setattr(graphs, "MAX_REPLAYED", 3)
    with pytest.raises(CaptureError, match="draws more than 3 host values"):
        graphs.replayed(lambda: 1)


def test_dropout_and_adam_draw_through_replayed(monkeypatch):
    """While a step is captured, dropout's seed, Adam's learning rate, beta1 and step count
    reach the backend as replayed values whose draws, called again, advance the generator
    and the step counts as an eager step does, and read the hyper-parameters of the
    moment."""
    from gpunn import random

    gpunn.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    opt = gpunn.optim.Adam(model.parameters())
    seen = {}
    numpy_be = backend_object("numpy")
    monkeypatch.setattr(
        type(numpy_be), "adam_update", lambda self, *a, **k: seen.update(step=a[4], lr=a[5])
    )
    words = _FakeWords()
    monkeypatch.setattr(graphs, "_capture", words)
    state = random.get_rng_state()
    opt.zero_grad()
    model(gpunn.randn(3, 4)).sum().backward()
    opt.step()
    monkeypatch.setattr(graphs, "_capture", None)
    assert isinstance(seen["step"], graphs.ReplayedInt) and seen["step"] == 1
    assert isinstance(seen["lr"], graphs.ReplayedFloat) and seen["lr"] == 1e-3
    assert len(words.draws) == 4  # the seed, the learning rate, beta1, the step count
    random.set_rng_state(state)
    gpunn.randn(3, 4)  # what the step drew before dropout's seed
    drop_seed = random.next_seed()
    random.set_rng_state(state)
    gpunn.randn(3, 4)
    assert words.draws[0]() == drop_seed  # the replay's seed: the eager step's
    opt.lr = 0.25  # what a schedule does between steps
    assert words.draws[1]() == 0.25
    opt.param_groups[0]["beta1"] = 0.85  # what one-cycle does
    assert words.draws[2]() == 0.85
    assert words.draws[3]() == 2 and all(st["step"] == 2 for st in opt.state)


# ---------------------------------------------------------------------- refusals
class _Workspace:
    capturing = False

    def raise_pending(self):
        pass


def _capturing_backend(monkeypatch):
    """A cupy backend object without CuPy: its launch.Device is real (the capture flag,
    the refusal), everything device-side is absent, so a refused path must raise before
    it would touch the device."""
    from gpunn.kernels.cuda import launch

    from gpunn.backends import cupy_backend

    dev = object.__new__(launch.Device)
    dev.workspace, dev.blas, dev.blas_error, dev.tf32 = _Workspace(), None, "no library", False
    dev._capturing = None
    be = object.__new__(cupy_backend.CupyBackend)
    be._dev, be.eager_checks = dev, False
    fake_cupy = types.SimpleNamespace(ndarray=np.ndarray)  # device arrays: NumPy's here
    monkeypatch.setattr(cupy_backend, "cupy", fake_cupy)
    be.capturing = "train_step"
    assert dev.workspace.capturing is True
    return be


def test_host_work_inside_a_captured_step_is_refused_naming_the_op(monkeypatch):
    be = _capturing_backend(monkeypatch)
    t = gpunn.Tensor._wrap(np.zeros(3, np.float32), be, False)
    x = np.ones((4, 3), np.float32)
    cases = {
        "to_numpy": lambda: t.numpy(),
        "to_numpy ": lambda: gpunn.Tensor._wrap(np.zeros((), np.float32), be, False).item(),
        "synchronize": be.synchronize,
        "asarray": lambda: be.asarray([1.0, 2.0]),
        "getitem": lambda: be.getitem_forward(x, np.array([0, 2])),
        "clip_grad_norm_": lambda: be.clip_grad_norm_update([x], 1.0, 2.0, True),
        "matmul": lambda: be.matmul_forward(x, x.T),  # without the binding
    }
    for op, call in cases.items():
        with pytest.raises(CaptureError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{op.strip()} cannot be captured"), message
        assert "'train_step'" in message
    be.eager_checks = True
    with pytest.raises(CaptureError, match="cross_entropy cannot be captured.*labels"):
        be.check_labels("cross_entropy", np.array([0, 1]), 3)
    be.capturing = None  # the flag off: the same stub reaches the device code
    with pytest.raises(AttributeError):
        be.synchronize()


def test_unscale_grads_leaves_the_found_inf_flag_on_the_device(monkeypatch):
    """The float16 scaler's unscale on the cupy backend: CuPy's own operations (captured on
    a GPU), the flag an array, never read on the host; a replayed factor is read from its
    word."""
    from gpunn.backends import cupy_backend

    be = _capturing_backend(monkeypatch)
    be.capturing = None
    fake = types.SimpleNamespace(
        ndarray=np.ndarray, stack=np.stack, isfinite=np.isfinite, zeros=np.zeros
    )
    monkeypatch.setattr(cupy_backend, "cupy", fake)
    monkeypatch.setattr(cupy_backend.L, "cupy", fake)
    a, b = np.full(3, 4.0, np.float32), np.array([2.0, np.inf])
    found = be.unscale_grads([a, b], 0.25)
    # (NumPy's reductions give scalars where CuPy's give 0-d arrays)
    assert not isinstance(found, bool) and found.shape == () and bool(found)
    assert a.tolist() == [1.0, 1.0, 1.0] and b[0] == 0.5
    inv = graphs.ReplayedFloat(0.25, 4096)
    inv.word = np.array(0.5)  # the word a replay wrote: it wins over the capture's value
    found = be.unscale_grads([a], inv)
    assert a.tolist() == [0.5, 0.5, 0.5] and not bool(found)
    assert not bool(be.unscale_grads([], 0.5))


def test_on_host_runs_at_once_eagerly_and_after_each_replay_when_captured(monkeypatch):
    seen = []
    graphs.on_host([np.array(False), np.array(True)], seen.append)
    assert seen == [True]
    words = _FakeWords()
    monkeypatch.setattr(graphs, "_capture", words)
    flag = np.array(False)
    graphs.on_host([flag], seen.append)
    graphs.on_host([], lambda found: seen.append(("none", found)))
    assert seen == [True]  # deferred while capturing
    monkeypatch.setattr(graphs, "_capture", None)
    words.settle()  # what GraphedStep does after a replay
    flag[...] = True  # the next replay found an inf
    words.settle()
    assert seen == [True, False, ("none", False), True, ("none", False)]


class _CountedFlag:
    """A 0-d flag that counts its host reads."""

    def __init__(self, value):
        self.value, self.reads = value, 0

    def __bool__(self):
        self.reads += 1
        return self.value


def test_after_a_replay_each_flag_is_read_once(monkeypatch):
    words = _FakeWords()
    monkeypatch.setattr(graphs, "_capture", words)
    flag, seen = _CountedFlag(True), []
    graphs.on_host([flag], seen.append)
    graphs.on_host([flag], seen.append)
    monkeypatch.setattr(graphs, "_capture", None)
    words.settle()
    assert seen == [True, True] and flag.reads == 1


def test_a_captured_float16_step_leaves_its_host_side_to_after_the_replay(monkeypatch):
    """GradScaler and Adam inside a (stand-in) capture on the numpy backend: the step
    returns None, the scale and step count wait for the replay's flag, and each replay
    asks for the same two actions (Adam's count, the scaler's update), not more."""
    p = nn.Parameter(gpunn.tensor(np.ones(3, np.float32)))
    opt = gpunn.optim.Adam([p], lr=0.1)
    scaler = gpunn.amp.GradScaler(init_scale=8.0, growth_interval=1)
    words = _FakeWords()
    monkeypatch.setattr(graphs, "_capture", words)
    p.grad = gpunn.tensor(np.full(3, 8.0, np.float32))  # what scale(loss).backward() gave
    assert scaler.step(opt) is None
    scaler.update()
    monkeypatch.setattr(graphs, "_capture", None)
    assert len(words.after) == 2 and scaler.get_scale() == 8.0
    assert opt.state[0]["step"] == 1  # drawn at the capture: _Snapshot puts it back
    words.settle()  # a replay without inf: the count stays, the scale grows
    assert opt.state[0]["step"] == 1 and scaler.get_scale() == 16.0
    words.after = [([np.array(True)], action) for _, action in words.after]
    words.settle()  # a replay that found inf: the count taken back, the scale backed off
    assert "step" not in opt.state[0] and scaler.get_scale() == 8.0


def test_grad_scaler_refuses_a_host_skip_inside_a_capture(monkeypatch):
    """An optimizer whose step takes no found_inf is skipped on the host: refused while a
    step is captured, named."""

    class Plain(gpunn.optim.SGD):
        takes_found_inf = False

    p = nn.Parameter(gpunn.tensor(np.ones(2)))
    p.grad = gpunn.tensor(np.ones(2))
    scaler = gpunn.amp.GradScaler(init_scale=2.0)
    monkeypatch.setattr(graphs, "_capture", _FakeWords())
    with pytest.raises(CaptureError, match="Plain.step takes no found_inf"):
        scaler.step(Plain([p], lr=0.1))


def test_batch_norm_momentum_none_is_refused_while_capturing(monkeypatch):
    be = _capturing_backend(monkeypatch)
    x, c = np.ones((4, 2, 3), np.float32), np.zeros(2, np.float32)
    with pytest.raises(CaptureError, match="batch_norm cannot be captured.*momentum=None"):
        be.batch_norm_forward(x, c, c, c, c.copy(), np.zeros((), np.int64), True, None)


def test_a_captured_backward_refuses_to_add_to_an_earlier_gradient():
    """Accumulating would make a new array every replay; the step must zero_grad first."""
    numpy_be = backend_object("numpy")
    be = type("Capturing", (type(numpy_be),), {"capturing": "step"})()
    w = gpunn.Tensor._wrap(np.ones(3), be, True)
    (w * 2.0).sum().backward()  # the first gradient: a fresh array, allowed
    with pytest.raises(CaptureError, match="already has a gradient.*zero_grad"):
        (w * 2.0).sum().backward()


def test_graphed_refuses_inputs_off_the_cupy_backend():
    x = gpunn.tensor(np.ones((2, 3), np.float32), backend="numpy")
    with pytest.raises(CaptureError, match=r"input 0 is 'numpy'.*cupy backend only"):
        gpunn.cuda.graphed(lambda x: x, x)
    with pytest.raises(CaptureError, match="give the step's example inputs"):
        gpunn.cuda.graphed(lambda: None)


# ---------------------------------------------------------------------- the cuBLAS binding
class FakeCublas:
    """A stand-in for the cuBLAS library: records every call; its GEMMs read their operands
    column-major from the pointers (as cuBLAS does) and write C in NumPy."""

    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail or {}
        for name in cublas.SIGNATURES:
            setattr(self, name, self._function(name))

    def _function(self, name):
        def fn(*args):
            self.calls.append((name, args))
            if name in self.fail:
                return self.fail[name]
            if name == "cublasCreate_v2":
                args[0]._obj.value = 0xC0FFEE
            elif name.endswith("gemm_v2"):
                self._gemm(np.float32 if name == "cublasSgemm_v2" else np.float64, *args)
            elif name.endswith("StridedBatched"):
                self._batched(np.float32 if name.startswith("cublasS") else np.float64, *args)
            elif name == "cublasGemmEx":
                self._gemm_ex(*args)
            return 0

        return fn  # a plain function: the binding sets argtypes on it

    @staticmethod
    def _colmajor(ptr, dtype, rows, cols, ld):
        item = np.dtype(dtype).itemsize
        n = (cols - 1) * ld + rows
        flat = np.frombuffer((ctypes.c_char * (n * item)).from_address(ptr), dtype, n)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, ld * item))

    def _operands(self, dtype, ta, tb, m, n, k, A, lda, B, ldb):
        a = self._colmajor(A, dtype, *((m, k) if ta == 0 else (k, m)), lda)
        b = self._colmajor(B, dtype, *((k, n) if tb == 0 else (n, k)), ldb)
        return (a if ta == 0 else a.T), (b if tb == 0 else b.T)

    @staticmethod
    def _one_zero(ctype, alpha, beta):
        assert ctype.from_address(alpha).value == 1.0 and ctype.from_address(beta).value == 0.0

    def _gemm(self, dtype, handle, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        self._one_zero(ctypes.c_float if dtype == np.float32 else ctypes.c_double, alpha, beta)
        a, b = self._operands(dtype, ta, tb, m, n, k, A, lda, B, ldb)
        c = self._colmajor(C, dtype, m, n, ldc)
        c[...] = a.astype(np.float64) @ b.astype(np.float64)

    def _batched(self, dtype, handle, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C,
                 ldc, sc, count):  # fmt: skip
        self._one_zero(ctypes.c_float if dtype == np.float32 else ctypes.c_double, alpha, beta)
        item = np.dtype(dtype).itemsize
        for i in range(count):
            a, b = self._operands(dtype, ta, tb, m, n, k, A + i * sa * item, lda,
                                  B + i * sb * item, ldb)  # fmt: skip
            c = self._colmajor(C + i * sc * item, dtype, m, n, ldc)
            c[...] = a.astype(np.float64) @ b.astype(np.float64)

    def _gemm_ex(self, handle, ta, tb, m, n, k, alpha, A, atype, lda, B, btype, ldb, beta, C,
                 ctype, ldc, compute, algo):  # fmt: skip
        self._one_zero(ctypes.c_float, alpha, beta)
        assert atype == btype and ctype == cublas.CUDA_R_32F and compute == cublas.COMPUTE_32F
        half = atype == cublas.CUDA_R_16F
        a, b = self._operands(np.float16 if half else np.uint16, ta, tb, m, n, k, A, lda, B, ldb)
        if not half:  # bfloat16 bit patterns: the top half of a float32's
            a, b = [(x.astype(np.uint32) << 16).view(np.float32) for x in (a, b)]
        c = self._colmajor(C, np.float32, m, n, ldc)
        c[...] = a.astype(np.float64) @ b.astype(np.float64)


def _blas(fail=None):
    lib = FakeCublas(fail)
    return cublas.Cublas(lib, (0x1000, cublas.WORKSPACE_BYTES)), lib


def _layouts(rng, shape, dtype):
    """The same matrix as: C-contiguous, a transposed view, rows of a wider array."""
    m = rng.standard_normal(shape).astype(dtype)
    wide = np.zeros((shape[0], shape[1] + 3), dtype)
    wide[:, : shape[1]] = m
    return {"C": m, "T": np.ascontiguousarray(m.T).T, "rows": wide[:, : shape[1]]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_computes_row_major_products_in_every_layout(dtype):
    blas, lib = _blas()
    rng = np.random.default_rng(0)
    for m, k, n in ((5, 7, 3), (1, 4, 6), (6, 4, 1), (3, 1, 2)):
        for la, A in _layouts(rng, (m, k), dtype).items():
            for lb, B in _layouts(rng, (k, n), dtype).items():
                C = np.full((m, n), np.nan, dtype)
                blas.gemm(A, B, C, stream=5)
                np.testing.assert_allclose(C, A @ B, rtol=1e-5, err_msg=f"{la} @ {lb}")
    names = {name for name, _ in lib.calls if "gemm" in name}
    assert names == {"cublasSgemm_v2" if dtype == "float32" else "cublasDgemm_v2"}


def test_gemm_arguments_swap_the_operands_and_pass_transposes_and_leading_dims():
    blas, lib = _blas()
    A = np.ones((5, 7), np.float32)  # C-contiguous: op N, ld 7
    Wt = np.ones((3, 7), np.float32).T  # a transposed view (7, 3): op T, ld 7
    C = np.empty((5, 3), np.float32)
    blas.gemm(A, Wt, C, stream=9)
    name, args = lib.calls[-1]
    assert name == "cublasSgemm_v2"
    handle, ta, tb, m, n, k, _, pa, lda, pb, ldb, _, pc, ldc = args
    assert handle == 0xC0FFEE
    # column-major C^T (3 x 5) = B^T (3 x 7) @ A^T (7 x 5): B's memory first
    assert (ta, tb, m, n, k) == (cublas.OP_T, cublas.OP_N, 3, 5, 7)
    assert (pa, lda) == (Wt.ctypes.data, 7) and (pb, ldb) == (A.ctypes.data, 7)
    assert (pc, ldc) == (C.ctypes.data, 3)


def test_operand_takes_views_without_copies_and_refuses_what_cuBLAS_cannot_read():
    x = np.zeros((6, 8), np.float32)
    assert cublas.operand(x) == (cublas.OP_N, 8)
    assert cublas.operand(x.T) == (cublas.OP_T, 8)
    assert cublas.operand(x[:, :5]) == (cublas.OP_N, 8)
    assert cublas.operand(x[1:2]) == (cublas.OP_N, 8)
    assert cublas.operand(x[:, ::2]) is None  # no unit stride in either direction
    assert cublas.operand(x[::-1]) is None


def test_the_handle_binds_stream_and_workspace_once_per_stream_and_follows_tf32():
    blas, lib = _blas()
    a32, a64 = np.ones((2, 2), np.float32), np.ones((2, 2))
    for stream, A, tf32 in ((7, a32, False), (7, a32, False), (8, a32, True), (8, a64, True)):
        blas.gemm(A, A, np.empty_like(A), stream, tf32)
    setup = [(n, a[1:]) for n, a in lib.calls if not n.endswith("gemm_v2")]
    assert setup == [
        ("cublasCreate_v2", ()),
        ("cublasSetStream_v2", (7,)),
        ("cublasSetWorkspace_v2", (0x1000, cublas.WORKSPACE_BYTES)),
        ("cublasSetMathMode", (cublas.DEFAULT_MATH,)),
        # a new stream resets cuBLAS's workspace: set again
        ("cublasSetStream_v2", (8,)),
        ("cublasSetWorkspace_v2", (0x1000, cublas.WORKSPACE_BYTES)),
        ("cublasSetMathMode", (cublas.TF32_TENSOR_OP_MATH,)),
        # float64 products never use TF32
        ("cublasSetMathMode", (cublas.DEFAULT_MATH,)),
    ]


def test_gemm_checks_shapes_and_handles_empty_products():
    blas, lib = _blas()
    with pytest.raises(ValueError, match=r"gemm: \(2, 3\) float32 @ \(2, 3\)"):
        blas.gemm(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32), np.empty((2, 3)), 0)
    C = np.full((2, 3), np.nan, np.float32)
    blas.gemm(np.ones((2, 0), np.float32), np.ones((0, 3), np.float32), C, 0)
    assert (C == 0).all() and not any("gemm" in n for n, _ in lib.calls)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_gemm_takes_strided_and_broadcast_batches_in_one_call(dtype):
    from gpunn.kernels.cuda import launch

    blas, lib = _blas()
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 5, 3)).astype(dtype)
    cases = {
        "contiguous": (A, rng.standard_normal((4, 3, 2)).astype(dtype)),
        "shared B": (A, np.broadcast_to(rng.standard_normal((3, 2)).astype(dtype), (4, 3, 2))),
        "transposed A": (np.ascontiguousarray(A.swapaxes(1, 2)).swapaxes(1, 2), A[:, :3, :2]),
    }
    for name, (a, b) in cases.items():
        C = np.full((4, 5, 2), np.nan, dtype)
        blas.gemm_batched(a, b, C, stream=3)
        np.testing.assert_allclose(C, a @ b, rtol=1e-5, err_msg=name)
    batched = [args for n, args in lib.calls if n.endswith("StridedBatched")]
    assert len(batched) == 3 and {n for n, _ in lib.calls if "gemm" in n.lower()} == {
        "cublasSgemmStridedBatched" if dtype == "float32" else "cublasDgemmStridedBatched"
    }
    assert batched[1][9] == 0  # the shared B (cuBLAS's first operand): batch stride 0
    assert batched[2][1:3] == (0, 1)  # B's memory first (op N); A transposed: op T
    with pytest.raises(ValueError, match="gemm_batched: batch strides"):
        blas.gemm_batched(A, A[:, :3, :2], np.empty((4, 2, 5, 2), dtype)[:, 0], stream=3)
    # the launcher's view of broadcast batch dimensions: one stride, or none
    assert launch._single_stride((2, 3), (24, 8)) == 8
    assert launch._single_stride((2, 3), (0, 0)) == 0
    assert launch._single_stride((2, 1, 3), (24, 999, 8)) == 8
    assert launch._single_stride((2, 3), (8, 0)) is None


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_gemm_ex_reads_low_precision_bits_and_writes_float32(low):
    from gpunn.kernels.lowp import bfloat16_bits, round_to

    blas, lib = _blas()
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((4, 3))
    B = B.astype(np.float32)
    if low == "float16":
        a, b = A.astype(np.float16), B.astype(np.float16)
    else:
        a, b = bfloat16_bits(np, A), bfloat16_bits(np, B)
    C = np.full((5, 3), np.nan, np.float32)
    blas.gemm_ex(a, b, C, low, stream=2)
    want = round_to(np, A, low).astype(np.float64) @ round_to(np, B, low)
    np.testing.assert_allclose(C, want, rtol=1e-6)
    ((name, args),) = [c for c in lib.calls if c[0] == "cublasGemmEx"]
    assert args[8] == args[11] == cublas.LOW_TYPES[low][1] and args[15] == cublas.CUDA_R_32F
    with pytest.raises(ValueError, match=r"operands must be .* bits, the output float32"):
        blas.gemm_ex(A, B, C, low, stream=2)


def test_cublas_errors_name_the_call_and_the_status():
    with pytest.raises(CublasError, match=r"cublasCreate_v2 failed: CUBLAS_STATUS_NOT_INIT"):
        _blas(fail={"cublasCreate_v2": 1})
    blas, _ = _blas(fail={"cublasSgemm_v2": 7})
    with pytest.raises(CublasError, match=r"cublasSgemm_v2 failed: .*INVALID_VALUE \(7\)"):
        a = np.ones((2, 2), np.float32)
        blas.gemm(a, a, np.empty_like(a), 0)
    lib = FakeCublas()
    del lib.cublasSetWorkspace_v2
    with pytest.raises(CublasError, match="has no cublasSetWorkspace_v2"):
        cublas.Cublas(lib, (0, 0))


def test_a_missing_library_gives_a_clear_error(monkeypatch):
    import ctypes.util

    def not_found(name):
        raise RuntimeError(f'Failure finding "lib{name}.so"')

    def no_such_file(name, *a, **k):
        raise OSError(f"{name}: cannot open shared object file")

    pathfinder = types.SimpleNamespace(load_nvidia_dynamic_lib=not_found)
    monkeypatch.setitem(sys.modules, "cuda", types.SimpleNamespace(pathfinder=pathfinder))
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(ctypes, "CDLL", no_such_file)
    with pytest.raises(CublasError) as info:
        cublas.load_library()
    message = str(info.value)
    assert message.startswith("cuBLAS library not found (cuda.pathfinder: Failure finding")
    assert "libcublas.so.13: cannot open" in message and "libcublas.so.12" in message
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)  # not installed
    with pytest.raises(CublasError, match=r"\(cuda.pathfinder: not installed; "):
        cublas.load_library()


# ---------------------------------------------------------------------- GraphedStep checks
def _static(*shapes, dtype="float32"):
    return [gpunn.tensor(np.zeros(s, dtype), backend="numpy") for s in shapes]


def test_graphed_step_checks_inputs_before_replaying():
    step = graphs.GraphedStep("train_step", _static((4, 3), (4,)), None, graph=None)
    step.check_inputs(_static((4, 3), (4,)))
    with pytest.raises(CaptureError, match="takes 2 inputs, got 1"):
        step.check_inputs(_static((4, 3)))
    with pytest.raises(CaptureError) as info:
        step.check_inputs(_static((5, 3), (4,)))
    assert str(info.value).startswith("train_step: input 0 is (5, 3) float32 on 'numpy'; ")
    assert "captured with (4, 3) float32 on 'numpy'" in str(info.value)
    with pytest.raises(CaptureError, match="input 1 is \\(4,\\) float64"):
        step.check_inputs(_static((4, 3)) + _static((4,), dtype="float64"))
    with pytest.raises(CaptureError, match="input 0 is \\(4, 3\\) float64 on 'ndarray'"):
        step.check_inputs([np.zeros((4, 3)), _static((4,))[0]])


def test_graphed_step_takes_scheduled_hyper_parameters_and_refuses_others():
    model = nn.Linear(3, 2)
    opt = gpunn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    step = graphs.GraphedStep("s", _static((2, 3)), None, None, optimizers=[opt])
    step.check_hyper()
    opt.lr = 0.05  # what a schedule does: replays read it anew
    opt.param_groups[0]["momentum"] = 0.85  # what one-cycle does
    step.check_hyper()
    opt.param_groups[0]["momentum"] = 0.0  # no momentum: another path of the update
    with pytest.raises(
        CaptureError, match=r"SGD's hyper-parameters changed.*momentum != 0 of group 0: True"
    ):
        step.check_hyper()
    opt.param_groups[0]["momentum"] = 0.9
    opt.param_groups[0]["weight_decay"] = 0.0
    with pytest.raises(CaptureError, match=r"weight_decay of group 0: 0.01 -> 0.0"):
        step.check_hyper()


def test_the_warm_up_state_is_restored_in_place():
    """What graphed() does around the warm-up, on the numpy backend: parameters and
    buffers back to their values, in the same arrays; momentum created meanwhile zero."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    opt = gpunn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    arrays = {k: v.data for k, v in model.named_parameters()}
    saved = graphs._Snapshot([model, opt])
    x, y = gpunn.randn(8, 4), gpunn.tensor(np.arange(8) % 2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert any(not np.array_equal(v.numpy(), before[k]) for k, v in model.state_dict().items())
    saved.restore()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    assert all(p.data is arrays[k] for k, p in model.named_parameters())
    for st in opt.state:
        assert not st["momentum_buffer"].numpy().any()
    assert all(not p.grad.numpy().any() for p in model.parameters())


# ---------------------------------------------------------------------- gpunn train
def test_cuda_graph_flag_parses_and_needs_the_cupy_backend(tmp_path):
    from gpunn.cli import build_parser
    from gpunn.train import TrainError, train

    parse = build_parser().parse_args
    assert parse(["train"]).cuda_graph is None
    assert parse(["train", "--cuda-graph"]).cuda_graph is True
    assert parse(["train", "--no-cuda-graph"]).cuda_graph is False
    with pytest.raises(TrainError, match="--cuda-graph needs the cupy backend.*'numpy'"):
        train("logreg", "breast_cancer", backend="numpy", cuda_graph=True, out=str(tmp_path))
    result = train(
        "logreg", "breast_cancer", backend="numpy", epochs=1, cuda_graph=False,
        out=str(tmp_path), progress=False, stream=io.StringIO(),
    )  # fmt: skip
    assert result.config["cuda_graph"] is False and result.epochs == 1


def test_cuda_graph_flag_error_from_the_command_line(tmp_path, capsys):
    from gpunn.cli import main

    status = main(["train", "--backend", "numpy", "--cuda-graph", "--out", str(tmp_path)])
    assert status != 0
    assert "--cuda-graph needs the cupy backend" in capsys.readouterr().err


def test_the_step_gpunn_train_captures_is_its_eager_step(tmp_path):
    """Trainer._train_step (what --cuda-graph captures) changes the model exactly as the
    eager gradient rule does, here on the numpy backend, with clipping."""
    from gpunn import data as gdata
    from gpunn.train import Trainer, resolve_settings

    options = {"model": "mlp", "data": "digits", "backend": "numpy", "optimizer": "sgd"}
    settings = resolve_settings({**options, "clip": 0.5, "cuda_graph": None})
    split = gdata.load("digits")
    states = []
    for captured in (False, True):
        trainer = Trainer(settings, split, str(tmp_path), stream=io.StringIO())
        with gpunn.use_backend("numpy"):
            trainer.setup()
            assert trainer.use_graph is False and trainer.graphed_step(None, None) is None
            for b in range(3):
                x, y = trainer.loader.fetch(np.arange(32 * b, 32 * b + 32))
                if captured:
                    trainer._train_step(x, y)
                else:
                    trainer.rule.step(trainer, x, y)
        states.append({k: v.numpy() for k, v in trainer.model.state_dict().items()})
    for k in states[0]:
        np.testing.assert_array_equal(states[1][k], states[0][k], err_msg=k)


# ---------------------------------------------------------------------- gpunn bench
def test_bench_adds_captured_rows_for_gpu_training_steps_only(monkeypatch):
    """The rows a GPU run gets (workload builders stubbed: no GPU here); a step that
    cannot be captured loses its row with a note, the run goes on."""
    from gpunn import bench, workloads

    built = []

    def fake(kind):
        def build(name, where, scale=1, lr=0.01, graph=False):
            built.append((kind, name, where, graph))
            if graph and kind == "gpunn" and name == "lstm":
                raise CaptureError("lstm: not today")
            return workloads.Workload(name, 8, 1.0, lambda: None, lambda: None, lambda: 0.0)

        return build

    monkeypatch.setattr(workloads, "build", fake("gpunn"))
    monkeypatch.setattr(workloads, "build_torch", fake("torch"))
    notes = []
    rows = lambda name, backends, torch: [  # noqa: E731
        r.row.backend for r in bench._runners(name, backends, torch, 1, False, notes.append)
    ]
    torch = object()
    assert rows("mlp", ["cupy"], torch) == ["cupy", "cupy+graph", "torch-cuda", "torch-cuda+graph"]
    assert rows("lstm", ["cupy"], torch) == ["cupy", "torch-cuda", "torch-cuda+graph"]
    assert notes == ["note: lstm: no cupy+graph row: CaptureError: lstm: not today"]
    assert rows("linear-fwd", ["cupy"], torch) == ["cupy", "torch-cuda"]  # ops: no graph
    assert rows("mlp", ["numpy", "numba"], torch) == ["numpy", "numba", "torch"]
    peers = [r.row.is_peer for r in bench._runners("mlp", ["cupy"], torch, 1, False)]
    assert peers == [False, False, True, False]  # torch eager stays the one peer


# ---------------------------------------------------------------------- on a GPU
class _PairScores(nn.Module):
    """Batched products: each sequence's positions scored against each other, averaged."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x):  # (B, T, 6) -> (B, T)
        h = self.proj(x)
        return (h @ h.transpose(0, 2, 1)).mean(axis=2)


def _problem(name, dtype):
    """(model, loss, x, y) of a small training problem; ``name`` ending in "-bf16" or
    "-fp16": its step runs under bfloat16 or float16 autocast (see _train)."""
    from gpunn import models

    rng = np.random.default_rng(1)
    name = name.removesuffix("-bf16").removesuffix("-fp16")
    if name == "logreg":
        model, loss = models.LogisticRegression(20), nn.BCELoss()
        x = rng.standard_normal((64, 20))
        y = (x[:, :1] > 0).astype(dtype)
    elif name in ("mlp", "mlp-dropout"):
        dropout = 0.3 if name == "mlp-dropout" else 0.0
        model, loss = models.MLP(32, (16, 16), 10, dropout=dropout), nn.CrossEntropyLoss()
        x, y = rng.standard_normal((16, 32)), rng.integers(0, 10, 16)
    elif name == "bag":
        model = nn.Sequential(nn.Embedding(12, 6), nn.Flatten(), nn.Linear(24, 3))
        loss, x, y = nn.CrossEntropyLoss(), rng.integers(0, 12, (5, 4)), rng.integers(0, 3, 5)
        return (model.double() if dtype == "float64" else model), loss, x, y
    elif name == "pairs":
        model, loss = _PairScores(), nn.CrossEntropyLoss()
        x, y = rng.standard_normal((3, 5, 6)), rng.integers(0, 5, 3)
    elif name in ("lstm", "gru"):
        kind = models.LSTMClassifier if name == "lstm" else models.GRUClassifier
        model, loss = kind(6, 8, 10, num_layers=2), nn.CrossEntropyLoss()
        x, y = rng.standard_normal((4, 5, 6)), rng.integers(0, 10, 4)
    else:
        model, loss = models.LeNet5(), nn.CrossEntropyLoss()
        x, y = rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8)
    model = model.double() if dtype == "float64" else model
    return model, loss, x.astype(dtype), y


def _train(name, dtype, optimizer, captured, steps=100, schedule=None):
    """(losses, state) of ``steps`` steps, eager or captured; the state holds the model's,
    the optimizer's step counts and, under float16, the loss scale after every step (its
    first steps overflow in float16 and are skipped, the next ones grow it again)."""
    low = {"-bf16": "bfloat16", "-fp16": "float16"}.get(name[-5:])
    gpunn.manual_seed(0)
    with gpunn.use_backend("cupy"):
        model, loss_fn, x_host, y_host = _problem(name, dtype)
        opt = optimizer(model.parameters())
        scaler = gpunn.amp.GradScaler(
            init_scale=2.0**24, backoff_factor=0.25, growth_interval=2, enabled=low == "float16"
        )
        scheduler = schedule(opt) if schedule else None
        batches = [
            (x_host * (1 + 0.01 * i) if x_host.dtype.kind == "f" else np.roll(x_host, i), y_host)
            for i in range(steps)
        ]

        def step(x, y):
            opt.zero_grad()
            with gpunn.autocast(low or "bfloat16", enabled=low is not None):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return loss

        x, y = gpunn.tensor(batches[0][0]), gpunn.tensor(batches[0][1])
        state = (model, opt, scaler)
        run = gpunn.cuda.graphed(step, x, y, state=state) if captured else step
        losses, scales = [], []
        for xb, yb in batches:
            losses.append(run(gpunn.tensor(xb), gpunn.tensor(yb)).item())
            scales.append(scaler.get_scale())
            if scheduler is not None:
                scheduler.step()
        out = {k: v.numpy() for k, v in model.state_dict().items()}
        out["loss scale after each step"] = np.array(scales)
        out["optimizer step counts"] = np.array([st.get("step", -1) for st in opt.state])
        return losses, out


SGD_MOMENTUM = lambda params: gpunn.optim.SGD(params, lr=0.01, momentum=0.9)  # noqa: E731
ADAM = lambda params: gpunn.optim.Adam(params, lr=0.01)  # noqa: E731
ADAMW = lambda params: gpunn.optim.AdamW(params, lr=0.01, weight_decay=0.1)  # noqa: E731
STEP_LR = lambda opt: gpunn.optim.lr_scheduler.StepLR(opt, 2, 0.5)  # noqa: E731
ONE_CYCLE = lambda opt: gpunn.optim.lr_scheduler.OneCycleLR(opt, 0.05, 10)  # noqa: E731
#: (problem, optimizer, schedule) of runs whose captured steps must equal eager ones: SGD's
#: pointer tables; Adam's replayed step count; dropout's replayed seeds; AdamW's decoupled
#: decay; the learning rates (and one-cycle's momentum or beta1) a schedule sets between
#: replays.
CAPTURED_RUNS = {
    "logreg-sgd": ("logreg", SGD_MOMENTUM, None),
    "mlp-sgd-onecycle": ("mlp", SGD_MOMENTUM, ONE_CYCLE),
    "mlp-dropout-adam": ("mlp-dropout", ADAM, None),
    "mlp-adam-onecycle": ("mlp", ADAM, ONE_CYCLE),
    "logreg-adamw-steplr": ("logreg", ADAMW, STEP_LR),
    "lenet-sgd": ("lenet", SGD_MOMENTUM, None),
    "lstm-adam": ("lstm", ADAM, None),
    "gru-sgd-onecycle": ("gru", SGD_MOMENTUM, ONE_CYCLE),
    "pairs-adam": ("pairs", ADAM, None),  # batched matmul
    "bag-sgd": ("bag", SGD_MOMENTUM, None),  # embedding
    "mlp-bf16-sgd": ("mlp-bf16", SGD_MOMENTUM, None),  # autocast: GemmEx
    "lenet-bf16-adam": ("lenet-bf16", ADAM, None),
    # float16 with GradScaler: overflowing steps skipped on the device, the scale adapted
    # and Adam's step count taken back on the host after each replay
    "mlp-fp16-adam": ("mlp-fp16", ADAM, None),
    "lenet-fp16-sgd": ("lenet-fp16", SGD_MOMENTUM, None),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "run",
    [
        *CAPTURED_RUNS.items(),
        ("lenet-adam", ("lenet", ADAM, None)),
    ],
    ids=lambda run: run[0],
)
@gpu_only
@pytest.mark.cuda
def test_captured_steps_match_eager_steps_bit_for_bit(run, dtype):
    name, optimizer, schedule = run[1]
    eager_losses, eager_state = _train(name, dtype, optimizer, False, schedule=schedule)
    graph_losses, graph_state = _train(name, dtype, optimizer, True, schedule=schedule)
    assert graph_losses == eager_losses
    for k in eager_state:
        np.testing.assert_array_equal(graph_state[k], eager_state[k], err_msg=k)


@pytest.mark.parametrize(
    "optimizer, scheduler, amp",
    [("sgd", "none", None), ("adam", "onecycle", "bfloat16"), ("adam", "none", "float16")],
)
@gpu_only
@pytest.mark.cuda
def test_gpunn_train_with_and_without_cuda_graph_gives_the_same_run(
    tmp_path, optimizer, scheduler, amp
):
    from gpunn.train import train

    runs = []
    for flag in (False, True):
        result = train(
            "mlp", "digits", backend="cupy", optimizer=optimizer, scheduler=scheduler,
            amp=amp, epochs=2, cuda_graph=flag, out=str(tmp_path / str(flag)),
            progress=False, stream=io.StringIO(),
        )  # fmt: skip
        state = {k: v.numpy() for k, v in result.model.state_dict().items()}
        runs.append(([h["train_loss"] for h in result.history], state))
    assert runs[1][0] == runs[0][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[1][1][k], runs[0][1][k], err_msg=k)


@gpu_only
@pytest.mark.cuda
def test_item_inside_a_captured_step_is_refused_on_the_gpu():
    with gpunn.use_backend("cupy"):
        model = nn.Linear(4, 2)
        x = gpunn.randn(3, 4)

        def step(x):
            return model(x).sum().item()

        with pytest.raises(
            CaptureError, match=r"to_numpy cannot be captured .*\(step '.*\.step'\)"
        ):
            gpunn.cuda.graphed(step, x)
        assert model(x).sum().item() == model(x).sum().item()  # the device still works


# ---------------------------------------------------------------------- the binding, emulated
_needs_gxx = pytest.mark.skipif(
    shutil.which("g++") is None, reason="needs g++ (C++20) to emulate CUDA"
)


@pytest.fixture(scope="module")
def emu_cache(tmp_path_factory):
    """One folder of compiled emulation modules for the tests of this file."""
    return str(tmp_path_factory.mktemp("emu"))


def _emulated(part, cache):
    env = dict(os.environ, GPUNN_EMU_CACHE=cache)
    proc = subprocess.run(
        [sys.executable, __file__, part], capture_output=True, text=True, env=env, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


@_needs_gxx
def test_every_product_of_the_cupy_backend_goes_through_the_binding(emu_cache):
    """The cupy backend under the NumPy stand-in for CuPy (tests/test_cuda_emulated.py),
    with the stand-in cuBLAS library above as its binding's library and CuPy's own
    products poisoned: every op case with a matrix product (linear, conv2d, matmul, the
    recurrent cells and layers), forward and backward, float32 and float64, both layouts,
    against the NumPy reference; and the backend's start-up check, which keeps a binding
    whose products differ from CuPy's out. Checks the routing and the arguments, not a GPU."""
    assert "all match" in _emulated("binding", emu_cache)


@_needs_gxx
def test_replays_of_a_captured_step_match_eager_steps_under_the_emulation(emu_cache):
    """graphed() and GraphedStep under the stand-in, with a stand-in for CUDA's stream
    capture: while a stream captures, every launch of gpunn's kernels, every GEMM of the
    binding, every captured host-to-device copy and every operation of CuPy's own on the
    arrays the graph's pool handed out (ufuncs, sums, copies, assignments: what CuPy would
    launch as its kernels) is recorded, and a replay runs the records in order (what a
    CUDA graph does: the same addresses and scalars every time; the replayed host values
    copied before it). CAPTURED_RUNS (logreg and mlp with SGD and momentum, mlp with
    dropout and Adam, mlp with SGD or Adam under one-cycle, logreg with AdamW and a step
    schedule, LeNet with SGD, a two-layer LSTM with Adam, a two-layer GRU with SGD under
    one-cycle), float32 and float64: 6 replays equal 6 eager steps bit for bit; and
    ``gpunn train --cuda-graph`` (mlp on digits with Adam, one-cycle and bfloat16 autocast,
    the last smaller batch of each epoch eager on the same state) equals the run without it. The
    stand-in's memory pool keeps what it allocated, as CuPy's does. Checks gpunn's side of
    a capture (stable addresses, the state restored, the pointer tables, the replayed
    values, the inputs copied), not CUDA's."""
    out = _emulated("capture", emu_cache)
    assert "replays match" in out


GEMM_OPS = ("linear", "conv2d", "matmul", "rnn_cell", "lstm_cell", "rnn", "lstm", "gru")


def _binding_worker():
    sys.path.insert(0, os.path.dirname(__file__))
    import test_cuda_emulated

    test_cuda_emulated._fake_cupy(os.environ["GPUNN_EMU_CACHE"])
    import cupy  # the stand-in

    from gpunn.backends import cupy_backend

    failures, for_cupy = [], cublas.for_cupy
    # the backend's start-up check of the binding: a function that "succeeds" but computes
    # nothing is caught by the product that uses it
    for broken, said in (
        (None, ""),
        ("cublasDgemm_v2", "(float64) differs from CuPy's"),
        ("cublasSgemmStridedBatched", "batched product (float32) differs"),
        ("cublasGemmEx", "float16 GemmEx product differs"),
    ):
        lib = FakeCublas()
        if broken:
            setattr(lib, broken, lambda *args: 0)
        cublas.for_cupy = lambda lib=lib: cublas.Cublas(lib, (0, cublas.WORKSPACE_BYTES))
        blas, why = cupy_backend._load_blas()
        if (blas is None) != bool(broken) or said not in why:
            failures.append(f"start-up check, broken {broken}: {blas}, {why!r}")
    cublas.for_cupy = for_cupy

    def poisoned(*args, **kwargs):
        raise AssertionError("a product went through CuPy, not gpunn's cuBLAS binding")

    cupy.dot = cupy.matmul = poisoned
    test_cuda_emulated._precompile()
    from gpunn.testing import OP_CASES, compare_op

    be = backend_object("cupy")
    lib = FakeCublas()
    be._dev.blas = cublas.Cublas(lib, (0, cublas.WORKSPACE_BYTES))
    ran = 0
    for case in OP_CASES:
        if case.op not in GEMM_OPS:
            continue
        for dtype in ("float32", "float64"):
            for layout in ("C", "strided"):
                ran += 1
                try:
                    compare_op("cupy", case, dtype, layout)
                except Exception as e:
                    failures.append(f"{case.name} {dtype} {layout}: {type(e).__name__}: {e}")
    gemms = sum(1 for name, _ in lib.calls if name.endswith("gemm_v2"))
    print("\n".join(failures) or f"all match: {ran} cases, {gemms} GEMMs through the binding")
    return 1 if failures or not gemms else 0


def _install_capture_stand_in():
    """Streams, capture and graphs for the stand-in CuPy: records instead of launches."""
    import contextlib

    import cupy  # the stand-in
    from gpunn.kernels.cuda import loader

    capture = {"ops": None}

    def deferred(run):
        def call(*args, **kwargs):
            if capture["ops"] is None:
                return run(*args, **kwargs)
            capture["ops"].append(lambda: run(*args, **kwargs))
            return 0

        return call

    class Graph:
        def __init__(self, ops):
            self.ops = ops

        def launch(self, stream=None):
            for op in self.ops:
                op()

    stack = []

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = id(self)

        def __enter__(self):
            stack.append(self)
            return self

        def __exit__(self, *exc):
            stack.pop()

        def begin_capture(self, mode=None):
            capture["ops"] = []

        def end_capture(self):
            ops, capture["ops"] = capture["ops"], None
            return Graph(ops)

        def record(self, event=None):
            return event

        def wait_event(self, event):
            pass

        def synchronize(self):
            pass

    class Pinned(bytearray):
        @property
        def ptr(self):
            return ctypes.addressof((ctypes.c_char * len(self)).from_buffer(self))

    stack.append(Stream())
    cuda = cupy.cuda
    cuda.Stream, cuda.get_current_stream = Stream, lambda: stack[-1]

    class Pool:  # holds every array allocated through it for its own life, as CuPy's does
        def __init__(self):
            self.arrays = []

        def malloc(self, make, *args, **kwargs):
            self.arrays.append(make(*args, **kwargs))
            return self.arrays[-1]

    def record(op):
        if capture["ops"] is not None:
            capture["ops"].append(op)

    def arrays_in(items):
        for x in items:
            if isinstance(x, (list, tuple)):
                yield from arrays_in(x)
            elif isinstance(x, np.ndarray):
                yield x

    def plain(a):  # also inside lists and tuples (np.concatenate's arrays)
        if isinstance(a, (list, tuple)):
            return type(a)(plain(x) for x in a)
        return a.view(np.ndarray) if isinstance(a, Recorded) else a

    class Recorded(np.ndarray):
        """The stand-in's device arrays (and their views). CuPy's own kernels (ufuncs,
        reductions, copies, assignments, fills) are captured on a GPU, but the stand-in
        runs them at once with NumPy: on these arrays they are also recorded while a stream
        captures, so replays run them again, in order with the recorded launches."""

        def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
            inputs = tuple(plain(x) for x in inputs)
            outs = None if out is None else tuple(plain(o) for o in out)
            result = getattr(ufunc, method)(*inputs, out=outs, **kwargs)
            if isinstance(result, np.ndarray):
                target = outs if outs is not None else (result,)
                record(lambda: getattr(ufunc, method)(*inputs, out=target, **kwargs))
                return result.view(Recorded)
            if result is None:  # in place (ufunc.at)
                record(lambda: getattr(ufunc, method)(*inputs, **kwargs))
            if isinstance(result, np.generic):  # one value: CuPy's is a 0-d device array
                out = np.array(result).view(Recorded)
                record(lambda: np.copyto(plain(out), getattr(ufunc, method)(*inputs, **kwargs)))
                return out
            return result

        def __array_function__(self, func, types, args, kwargs):
            args = tuple(plain(a) for a in args)
            kwargs = {k: plain(v) for k, v in kwargs.items()}
            result = func(*args, **kwargs)
            arrays = list(arrays_in((*args, *kwargs.values())))
            if result is None:  # in place (copyto, place, put)
                record(lambda: func(*args, **kwargs))
            elif isinstance(result, np.ndarray):
                if not any(np.shares_memory(result, a) for a in arrays):  # not a view
                    record(lambda: np.copyto(result, func(*args, **kwargs)))
                return result.view(Recorded)
            elif isinstance(result, np.generic):  # one value: CuPy's is a 0-d device array
                out = np.array(result).view(Recorded)
                record(lambda: np.copyto(plain(out), func(*args, **kwargs)))
                return out
            return result

        def __setitem__(self, key, value):
            value = plain(value)
            np.ndarray.__setitem__(plain(self), key, value)
            record(lambda: np.ndarray.__setitem__(plain(self), key, value))

        def copy(self, order="C"):
            out = np.ndarray.copy(plain(self), order).view(Recorded)
            record(lambda: np.copyto(plain(out), plain(self)))
            return out

        def astype(self, dtype, *args, **kwargs):
            out = np.ndarray.astype(plain(self), dtype, *args, **kwargs)
            if out is plain(self):
                return self
            record(lambda: np.copyto(out, plain(self), casting="unsafe"))
            return out.view(Recorded)

    def copying(make):  # cupy.array, cupy.ascontiguousarray: a recorded copy, if any
        def call(a, *args, **kwargs):
            out = make(a, *args, **kwargs)
            if out is a or not isinstance(a, np.ndarray):
                return out
            source, out = plain(a), out.view(Recorded)
            record(lambda: np.copyto(plain(out), source, casting="unsafe"))
            return out

        return call

    def device(make, fill=None):  # the stand-in's constructors: Recorded arrays
        def call(*args, **kwargs):
            out = make(*args, **kwargs)
            if not isinstance(out, np.ndarray):
                return out
            out = out.view(Recorded)
            if fill is not None:
                record(lambda: plain(out).fill(fill))
            return out

        return call

    cupy.array = copying(cupy.array)
    cupy.ascontiguousarray = copying(cupy.ascontiguousarray)
    cupy.empty, cupy.asarray = device(cupy.empty), device(cupy.asarray)
    cupy.zeros, cupy.ones = device(cupy.zeros, 0), device(cupy.ones, 1)

    @contextlib.contextmanager
    def using_allocator(malloc):
        empty, zeros = cupy.empty, cupy.zeros

        cupy.empty = lambda *a, **k: malloc(empty, *a, **k)
        cupy.zeros = lambda *a, **k: malloc(zeros, *a, **k)
        try:
            yield
        finally:
            cupy.empty, cupy.zeros = empty, zeros

    class Event:  # the stand-in runs every copy at once: an event is always reached
        def __init__(self, **flags):
            self.synchronized = 0

        def synchronize(self):
            self.synchronized += 1

    cuda.Event = Event
    cuda.MemoryPool, cuda.using_allocator = Pool, using_allocator
    cuda.alloc_pinned_memory = Pinned
    cuda.runtime.memcpyHostToDevice = 1
    cuda.runtime.memcpyAsync = deferred(lambda dst, src, n, kind, s: ctypes.memmove(dst, src, n))
    loader.KernelLoader.launch = deferred(loader.KernelLoader.launch)
    return capture, deferred


def _capture_worker():
    sys.path.insert(0, os.path.dirname(__file__))
    import test_cuda_emulated

    test_cuda_emulated._fake_cupy(os.environ["GPUNN_EMU_CACHE"])
    capture, deferred = _install_capture_stand_in()
    test_cuda_emulated._precompile()
    be = backend_object("cupy")
    lib = FakeCublas()
    for name in cublas.SIGNATURES:  # the products: recorded while a stream captures
        if "gemm" in name.lower():
            setattr(lib, name, deferred(getattr(lib, name)))
    be._dev.blas = cublas.Cublas(lib, (0, cublas.WORKSPACE_BYTES))
    failures = []
    for run, (name, optimizer, schedule) in CAPTURED_RUNS.items():
        for dtype in ("float32", "float64"):
            eager_losses, eager_state = _train(name, dtype, optimizer, False, 6, schedule)
            graph_losses, graph_state = _train(name, dtype, optimizer, True, 6, schedule)
            scales = eager_state["loss scale after each step"]
            if (
                name.endswith("-fp16")
                and dtype == "float32"
                and not (np.diff(scales).min() < 0 < np.diff(scales).max())
            ):  # the run must skip steps and take steps, or it checks nothing of either
                failures.append(f"{run} {dtype}: no skipped and grown steps: {scales}")
            if graph_losses != eager_losses:
                failures.append(f"{run} {dtype}: losses {graph_losses} != {eager_losses}")
            for k in eager_state:
                if not np.array_equal(graph_state[k], eager_state[k]):
                    failures.append(f"{run} {dtype}: {k} differs")
    with gpunn.use_backend("cupy"):  # a refusal leaves the stream and the state as they were
        model = nn.Linear(4, 2)
        before = model.weight.numpy().copy()

        def step(x):
            return model(x).sum().item()

        try:
            gpunn.cuda.graphed(step, gpunn.randn(3, 4))
            failures.append(".item() was captured")
        except CaptureError as e:
            if "to_numpy cannot be captured" not in str(e) or capture["ops"] is not None:
                failures.append(f"refusal: {e}")
        if not np.array_equal(model.weight.numpy(), before):
            failures.append("the refused capture changed the model")
    import tempfile

    from gpunn.train import train

    for amp in ("bfloat16", "float16"):
        runs = []  # gpunn train: replays, and the last smaller batch eager on the same state
        for flag in (False, True):
            result = train(
                "mlp", "digits", backend="cupy", optimizer="adam", epochs=2, batch_size=100,
                hidden=[16], scheduler="onecycle", amp=amp, cuda_graph=flag,
                out=tempfile.mkdtemp(), progress=False, stream=io.StringIO(),
            )  # fmt: skip
            state = {k: v.numpy() for k, v in result.model.state_dict().items()}
            runs.append(([h["train_loss"] for h in result.history], state))
        if runs[1][0] != runs[0][0] or any(
            not np.array_equal(runs[1][1][k], runs[0][1][k]) for k in runs[0][1]
        ):
            failures.append(f"gpunn train --cuda-graph --amp {amp}: {runs[1][0]} != {runs[0][0]}")
    tables = len(be._dev.workspace._graph_tables)
    print("\n".join(failures) or f"replays match eager steps bit for bit ({tables} pointer "
          "tables copied by captured copies)")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    worker = {"binding": _binding_worker, "capture": _capture_worker}[sys.argv[1]]
    sys.exit(worker())
