"""The benchmark workloads: what ``gpunn bench`` and the asv suite time, built for gpunn on
any backend and for PyTorch (the peer) on CPU or CUDA from the same definitions, so both
sides run exactly the same work (float32, random data from a fixed seed).

Two kinds:

* ``step``: one training step = forward, loss, backward, SGD update. The four reference
  workloads of the design (logreg, mlp, lenet, lstm), an Elman RNN of the LSTM's sizes,
  and the GPU-sized ones: a 4096-4096-4096 MLP at batch 1024 and a small ResNet-style
  network (two residual blocks conv-relu-conv + identity, no batch norm).
* ``op``: one op, forward only (``-fwd``, under ``no_grad``) or forward and backward
  (``-fwdbwd``, input and parameter gradients): conv2d, softmax cross-entropy, linear, and
  the 3x3 convolutions of ResNet's stages.

``build(name, backend, scale=1)`` and ``build_torch(name, device, scale=1)`` return a
:class:`Workload` whose ``step()`` runs once and ``sync()`` waits for it. ``scale``
multiplies the batch size (the GPU runs use 1 and 8; below 1 shrinks a GPU-sized workload
to something a CPU can run). Workloads marked ``gpu_only`` are sized for a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Spec:
    """What one workload is: its kind, base batch size and a one-line description."""

    name: str
    kind: str  # "step" or "op"
    batch: int
    about: str
    gpu_only: bool = False


_SPECS = [
    Spec("logreg", "step", 4096, "logistic regression, X 4096x100 full batch, sigmoid + BCE"),
    Spec("mlp", "step", 128, "MLP 784-256-256-10, ReLU, softmax cross-entropy, batch 128"),
    Spec("lenet", "step", 64, "LeNet-5 on 1x28x28, batch 64, softmax cross-entropy"),
    Spec("lstm", "step", 64, "LSTM seq 35, batch 64, input 128, hidden 256, linear head to 10"),
    Spec("rnn", "step", 64, "Elman RNN (tanh) seq 35, batch 64, input 128, hidden 256, head to 10"),
    Spec("conv2d-fwd", "op", 32, "conv2d 32x32, 32->64 channels, 3x3 pad 1, batch 32, forward"),
    Spec("conv2d-fwdbwd", "op", 32, "the same conv2d, forward + backward"),
    Spec("softmax_ce-fwd", "op", 256, "softmax cross-entropy 256x1000, forward (the loss)"),
    Spec("softmax_ce-fwdbwd", "op", 256, "softmax cross-entropy 256x1000, forward + backward"),
    Spec("linear-fwd", "op", 256, "linear 1024->1024 with bias, batch 256, forward"),
    Spec("linear-fwdbwd", "op", 256, "linear 1024->1024, batch 256, forward + backward"),
    Spec("mlp-wide", "step", 1024, "MLP 4096-4096-4096, ReLU, cross-entropy, batch 1024", True),
    Spec(
        "resnet",
        "step",
        32,
        "ResNet-style: block(64ch 56x56), conv 64->128 stride 2, block(128ch 28x28), "
        "avg pool, linear to 10; block = conv3x3-relu-conv3x3 + identity, relu; batch 32",
        True,
    ),
    Spec("conv56x64-b32", "op", 32, "conv2d 56x56, 64->64, 3x3 pad 1, batch 32, fwd+bwd", True),
    Spec("conv56x64-b128", "op", 128, "conv2d 56x56, 64->64, 3x3 pad 1, batch 128, fwd+bwd", True),
    Spec("conv28x128-b32", "op", 32, "conv2d 28x28, 128->128, 3x3 pad 1, batch 32, fwd+bwd", True),
    Spec(
        "conv28x128-b128", "op", 128, "conv2d 28x28, 128->128, 3x3 pad 1, batch 128, fwd+bwd", True
    ),
]
SPEC = {s.name: s for s in _SPECS}
ALL = tuple(SPEC)
# The training steps every device runs (the asv TrainStep grid and the CPU default).
NAMES = tuple(s.name for s in _SPECS if s.kind == "step" and not s.gpu_only)
OPS = tuple(s.name for s in _SPECS if s.kind == "op" and not s.gpu_only)
GPU_ONLY = tuple(s.name for s in _SPECS if s.gpu_only)
# name -> (batch size, description): kept for older callers
SPECS = {s.name: (s.batch, s.about) for s in _SPECS}

# op workloads: name -> (op, shapes); conv: (C, H, W, K, kernel, padding)
_CONV = {
    "conv2d": (32, 32, 32, 64, 3, 1),
    "conv56x64": (64, 56, 56, 64, 3, 1),
    "conv28x128": (128, 28, 28, 128, 3, 1),
}
SOFTMAX_CLASSES = 1000
LINEAR = (1024, 1024)


@dataclass
class Workload:
    name: str
    batch: int
    flops: float  # matrix-product and convolution flops of one step
    step: Callable[[], None]
    sync: Callable[[], None]
    loss: Callable[[], float]  # the last step's loss (op workloads: the output's mean)


def spec(name: str) -> Spec:
    try:
        return SPEC[name]
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; choose from {', '.join(ALL)}") from None


def batch_of(name: str, scale: float = 1) -> int:
    """The batch size of ``name`` at ``scale`` (at least 1)."""
    return max(1, round(spec(name).batch * scale))


def _op_parts(name: str) -> tuple[str, bool]:
    """("conv2d", True) for "conv2d-fwdbwd": the op's definition key and whether the
    backward runs. The ResNet convolutions run forward + backward."""
    base, _, mode = name.partition("-")
    if base in _CONV and base != "conv2d":
        return base, True
    return base, mode == "fwdbwd"


# ---------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=1)
def _data(name, batch, seed=0):
    """Host inputs and targets for one batch of workload ``name``. The last call's arrays
    are kept, so gpunn and its peer, built one after the other, share one draw (the
    largest take seconds to draw); nothing writes to them."""
    rng = np.random.default_rng(seed)
    s = spec(name)

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    if name == "logreg":
        x = normal(batch, 100)
        return x, (x[:, :1] > 0).astype(np.float32)
    if name == "mlp":
        return normal(batch, 784), rng.integers(0, 10, batch)
    if name == "lenet":
        return normal(batch, 1, 28, 28), rng.integers(0, 10, batch)
    if name in ("lstm", "rnn"):
        return normal(batch, 35, 128), rng.integers(0, 10, batch)
    if name == "mlp-wide":
        return normal(batch, 4096), rng.integers(0, 4096, batch)
    if name == "resnet":
        return normal(batch, 64, 56, 56), rng.integers(0, 10, batch)
    assert s.kind == "op", name
    base, _ = _op_parts(name)
    if base in _CONV:
        c, h, w, k, kk, pad = _CONV[base]
        ho, wo = h + 2 * pad - kk + 1, w + 2 * pad - kk + 1
        return normal(batch, c, h, w), normal(batch, k, ho, wo)
    if base == "softmax_ce":
        return 3 * normal(batch, SOFTMAX_CLASSES), rng.integers(0, SOFTMAX_CLASSES, batch)
    if base == "linear":
        return normal(batch, LINEAR[0]), normal(batch, LINEAR[1])
    raise KeyError(name)


def _op_params(name, seed=1):
    """Host weight and bias of an op workload (None for softmax cross-entropy)."""
    rng = np.random.default_rng(seed)
    base, _ = _op_parts(name)
    if base in _CONV:
        c, _, _, k, kk, _ = _CONV[base]
        bound = 1 / np.sqrt(c * kk * kk)
        w = rng.uniform(-bound, bound, (k, c, kk, kk)).astype(np.float32)
        return w, rng.uniform(-bound, bound, k).astype(np.float32)
    if base == "linear":
        n_in, n_out = LINEAR
        bound = 1 / np.sqrt(n_in)
        w = rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32)
        return w, rng.uniform(-bound, bound, n_out).astype(np.float32)
    return None


def flops(name: str, batch: int) -> float:
    """Multiply-add flops (2 per MAC) of the matrix products and convolutions in one step;
    a backward adds twice the forward's (input and weight gradients). 0 when there are none
    (softmax cross-entropy)."""

    def conv(n, c, h, w, k, kk, pad=0, stride=1):
        ho = (h + 2 * pad - kk) // stride + 1
        wo = (w + 2 * pad - kk) // stride + 1
        return 2 * n * k * ho * wo * c * kk * kk

    s = spec(name)
    if s.kind == "op":
        base, backward = _op_parts(name)
        if base in _CONV:
            c, h, w, k, kk, pad = _CONV[base]
            fwd = conv(batch, c, h, w, k, kk, pad)
        elif base == "linear":
            fwd = 2 * batch * LINEAR[0] * LINEAR[1]
        else:
            fwd = 0
        return (3.0 if backward else 1.0) * fwd
    if name == "logreg":
        fwd = 2 * batch * 100
    elif name == "mlp":
        fwd = 2 * batch * (784 * 256 + 256 * 256 + 256 * 10)
    elif name == "lenet":
        fwd = conv(batch, 1, 28, 28, 6, 5, 2) + conv(batch, 6, 14, 14, 16, 5)
        fwd += 2 * batch * (400 * 120 + 120 * 84 + 84 * 10)
    elif name in ("lstm", "rnn"):
        gates = 4 if name == "lstm" else 1
        fwd = 2 * batch * 35 * (128 + 256) * gates * 256 + 2 * batch * 256 * 10
    elif name == "mlp-wide":
        fwd = 2 * batch * 2 * 4096 * 4096
    elif name == "resnet":
        fwd = 2 * conv(batch, 64, 56, 56, 64, 3, 1) + conv(batch, 64, 56, 56, 128, 3, 1, 2)
        fwd += 2 * conv(batch, 128, 28, 28, 128, 3, 1) + 2 * batch * 128 * 10
    else:
        raise KeyError(name)
    return 3.0 * fwd


# ---------------------------------------------------------------------------- models
# Each definition takes the framework's ``nn`` namespace (gpunn.nn or torch.nn: the same
# layer names and signatures), so the gpunn model and its PyTorch peer are one text.


def _sequence_classifier(nn, cell):
    class SequenceClassifier(nn.Module):
        """cell(128 -> 256) over the sequence, a linear head on the last hidden state."""

        def __init__(self):
            super().__init__()
            self.rnn = cell(128, 256, batch_first=True)
            self.head = nn.Linear(256, 10)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    return SequenceClassifier()


def _residual_block(nn, channels):
    class Residual(nn.Module):
        """relu(conv3x3(relu(conv3x3(x))) + x), channels kept."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv2(self.relu(self.conv1(x))) + x)

    return Residual()


def _resnet(nn):
    return nn.Sequential(
        _residual_block(nn, 64),
        nn.Conv2d(64, 128, 3, stride=2, padding=1),
        nn.ReLU(),
        _residual_block(nn, 128),
        nn.AvgPool2d(28),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def _torch_model(nn, name):
    """PyTorch's model for a training-step workload (gpunn's side uses gpunn.models where
    the model ships with gpunn, built to the same layers)."""
    if name == "logreg":
        return nn.Sequential(nn.Linear(100, 1), nn.Sigmoid()), nn.BCELoss()
    if name in ("mlp", "mlp-wide"):
        a, h, out = (784, (256, 256), 10) if name == "mlp" else (4096, (4096,), 4096)
        layers, sizes = [], [a, *h]
        for n_in, n_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], out)), nn.CrossEntropyLoss()
    if name == "lenet":
        model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )
        return model, nn.CrossEntropyLoss()
    if name in ("lstm", "rnn"):
        cell = nn.LSTM if name == "lstm" else nn.RNN
        return _sequence_classifier(nn, cell), nn.CrossEntropyLoss()
    if name == "resnet":
        return _resnet(nn), nn.CrossEntropyLoss()
    raise KeyError(name)


def _gpunn_model(name):
    from gpunn import models, nn

    if name == "logreg":
        return models.LogisticRegression(100), nn.BCELoss()
    if name == "mlp":
        return models.MLP(784, (256, 256), 10), nn.CrossEntropyLoss()
    if name == "mlp-wide":
        return models.MLP(4096, (4096,), 4096), nn.CrossEntropyLoss()
    if name == "lenet":
        return models.LeNet5(), nn.CrossEntropyLoss()
    if name == "lstm":
        return models.LSTMClassifier(128, 256, 10), nn.CrossEntropyLoss()
    if name == "rnn":
        return models.RNNClassifier(128, 256, 10), nn.CrossEntropyLoss()
    return _torch_model(nn, name)  # the shared definition, built from gpunn.nn


def _op(F, name):
    """The op of an op workload, from the framework's functional module ``F``
    (gpunn.functional or torch.nn.functional: the same names and signatures here)."""
    base, _ = _op_parts(name)
    if base in _CONV:
        pad = _CONV[base][5]
        return lambda x, w, b: F.conv2d(x, w, b, 1, pad)
    if base == "linear":
        return F.linear
    return F.cross_entropy


# ---------------------------------------------------------------------------- builders


def _training_step(model, criterion, opt, x, y):
    last = {}

    def step():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        last["loss"] = loss

    return step, lambda: float(last["loss"].item())


def _make_op_step(name, batch, op, tensor, no_grad):
    """step() and loss() of an op workload; ``tensor(host, grad)`` makes a framework tensor."""
    _, backward = _op_parts(name)
    x_host, other = _data(name, batch)
    params = _op_params(name)
    x = tensor(x_host, backward)
    if params is None:  # softmax cross-entropy: the loss of x against labels
        y = tensor(other, False)
        args, leaves = (x, y), [x]
    else:
        w, b = (tensor(p, backward) for p in params)
        args, leaves = (x, w, b), [x, w, b]
        grad_out = tensor(other, False)
    last = {}

    def step():
        if not backward:
            with no_grad():
                last["out"] = op(*args)
            return
        for t in leaves:
            t.grad = None
        out = op(*args)
        if params is None:
            out.backward()
        else:
            out.backward(grad_out)
        last["out"] = out

    return step, lambda: float(last["out"].mean().item())


def _graphed_step(model, criterion, opt, x, y):
    """step() and loss() of a training-step workload captured by gpunn.cuda.graphed."""
    import gpunn.cuda

    def train_step(x, y):
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        return loss

    graphed = gpunn.cuda.graphed(train_step, x, y, state=(model, opt))
    last = {}

    def step():
        last["loss"] = graphed(x, y)

    return step, lambda: float(last["loss"].item())


def _torch_graphed_step(torch, model, criterion, opt, x, y):
    """step() and loss() of a training step captured by PyTorch's CUDA graphs: warm-up on
    a side stream, gradients set to None so the captured backward allocates them from the
    graph's pool, then one capture of forward, backward and update on static copies of the
    inputs; each step copies the batch into them and replays (as gpunn's GraphedStep does)."""
    static_x, static_y = x.clone(), y.clone()

    def train_step():
        loss = criterion(model(static_x), static_y)
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            train_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = train_step()

    def step():
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()

    return step, lambda: float(static_loss.item())


def build(
    name: str, backend: str, scale: float = 1, lr: float = 0.01, graph: bool = False
) -> Workload:
    """The workload on a gpunn backend, parameters from seed 0. ``graph``: a training step
    captured into a CUDA graph by :func:`gpunn.cuda.graphed` (cupy only)."""
    import gpunn
    from gpunn import functional as F
    from gpunn.backends import backend_object

    batch = batch_of(name, scale)
    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        if spec(name).kind == "op":

            def tensor(host, grad):
                return gpunn.tensor(host, requires_grad=grad)

            step, loss = _make_op_step(name, batch, _op(F, name), tensor, gpunn.no_grad)
        else:
            x_host, y_host = _data(name, batch)
            model, criterion = _gpunn_model(name)
            x, y = gpunn.tensor(x_host), gpunn.tensor(y_host)
            opt = gpunn.optim.SGD(model.parameters(), lr=lr)
            make = _graphed_step if graph else _training_step
            step, loss = make(model, criterion, opt, x, y)
    be = backend_object(backend)
    return Workload(name, batch, flops(name, batch), step, be.synchronize, loss)


def build_torch(
    name: str, device: str = "cpu", scale: float = 1, lr: float = 0.01, graph: bool = False
) -> Workload:
    """The same workload in PyTorch eager mode (the reference peer); ``graph``: a training
    step captured by ``torch.cuda.CUDAGraph`` (CUDA only)."""
    import torch
    import torch.nn.functional as TF
    from torch import nn

    batch = batch_of(name, scale)
    torch.manual_seed(0)
    if spec(name).kind == "op":

        def tensor(host, grad):
            t = torch.from_numpy(host).to(device)
            return t.requires_grad_(True) if grad else t

        step, loss = _make_op_step(name, batch, _op(TF, name), tensor, torch.no_grad)
    else:
        x_host, y_host = _data(name, batch)
        model, criterion = _torch_model(nn, name)
        model = model.to(device)
        x = torch.from_numpy(x_host).to(device)
        y = torch.from_numpy(y_host).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        if graph:
            step, loss = _torch_graphed_step(torch, model, criterion, opt, x, y)
        else:
            step, loss = _training_step(model, criterion, opt, x, y)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    return Workload(name, batch, flops(name, batch), step, sync, loss)


# ---------------------------------------------------------------------------- bandwidth


def bandwidth_cases(be, mib: int = 256) -> dict:
    """The fused elementwise kernels of a GPU backend ``be`` on float32 arrays of ``mib``
    MiB: {name: (callable, bytes it must move: each input read once, each output written
    once)}, plus "copy", the device-to-device copy that is the ceiling. Arrays are random
    (never zeros: a kernel can run faster on them)."""
    import cupy

    n = mib * 2**20 // 4
    f32 = 4
    rng = cupy.random.default_rng(0)
    a = rng.standard_normal(n, dtype=np.float32)
    b = a.copy()  # the copy's target, and the parameter the optimizer cases update
    g = rng.standard_normal(n, dtype=np.float32)
    stream = cupy.cuda.get_current_stream()

    def copy():
        cupy.cuda.runtime.memcpyAsync(
            b.data.ptr, a.data.ptr, a.nbytes, cupy.cuda.runtime.memcpyDeviceToDevice, stream.ptr
        )

    rows = 2**16
    cols = n // rows
    Z = a.reshape(rows, cols)
    bias = rng.standard_normal(cols, dtype=np.float32)
    buf = rng.standard_normal(n, dtype=np.float32)  # momentum
    m, v = rng.standard_normal(n, dtype=np.float32), rng.random(n, dtype=np.float32)
    Zc = Z.copy()
    hidden = 1024
    batch = n // (4 * hidden)
    xw = a[: batch * 4 * hidden].reshape(batch, 4 * hidden)
    hw = g[: batch * 4 * hidden].reshape(batch, 4 * hidden)
    c = b[: batch * hidden].reshape(batch, hidden)
    hn, cn = cupy.empty_like(c), cupy.empty_like(c)
    gates = cupy.empty((5, batch, hidden), np.float32)
    # The epilogue and the LSTM gate kernel have no op of their own (the GEMM comes
    # first); they are launched through the CUDA launcher, by kernel stem.
    from gpunn.kernels.cuda import launch as cuda_launch

    def launch(stem, dtype, n, args):
        cuda_launch.launch(be._dev, stem, dtype, n, args)

    return {
        "copy": (copy, 2 * n * f32),
        "relu_forward": (lambda: be.relu_forward(a), 2 * n * f32),
        "sigmoid_forward": (lambda: be.sigmoid_forward(a), 2 * n * f32),
        "relu_backward": (lambda: be.relu_backward(g, a, (True,)), 3 * n * f32),
        "add_forward (same shape)": (lambda: be.add_forward(a, g), 3 * n * f32),
        "add_forward (row broadcast)": (lambda: be.add_forward(Z, bias), 2 * n * f32),
        "linear epilogue (bias+relu, in place)": (
            lambda: launch(
                "linear_forward",
                Zc.dtype,
                Zc.size,
                (Zc, bias, np.int64(rows), np.int64(cols), np.int32(1), np.int32(1)),
            ),
            2 * n * f32,
        ),
        "dropout_forward": (lambda: be.dropout_forward(a, 0.5, 1234), 2 * n * f32),
        "sgd_update (momentum, wd)": (
            lambda: be.sgd_update([b], [g], [buf], 1e-3, 0.9, 1e-4),
            5 * n * f32,
        ),
        "adam_update": (
            lambda: be.adam_update([b], [g], [m], [v], 1, 1e-3, 0.9, 0.999, 1e-8, 0.0),
            7 * n * f32,
        ),
        "lstm_cell gates+state (fused kernel)": (
            lambda: launch(
                "lstm_cell_forward",
                xw.dtype,
                c.size,
                (xw, hw, c, hn, cn, gates, np.int64(batch), np.int64(hidden)),
            ),
            (4 + 4 + 1 + 1 + 1 + 5) * batch * hidden * f32,
        ),
    }
