"""The reference workloads of the design: one training step = forward, loss, backward,
SGD update, float32, random data from a fixed seed. Built for gpunn on any backend, and
for PyTorch (the peer) on CPU or CUDA, so both are timed on exactly the same work.

``build(name, backend, scale=1)`` and ``build_torch(name, device, scale=1)`` return a
:class:`Workload` whose ``step()`` runs one training step and ``sync()`` waits for it.
``scale`` multiplies the batch size (the GPU runs use 1 and 8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NAMES = ("logreg", "mlp", "lenet", "lstm")

# name -> (batch size, description)
SPECS = {
    "logreg": (4096, "logistic regression, X 4096x100 full batch, sigmoid + BCE"),
    "mlp": (128, "MLP 784-256-256-10, ReLU, softmax cross-entropy, batch 128"),
    "lenet": (64, "LeNet-5 on 1x28x28, batch 64, softmax cross-entropy"),
    "lstm": (64, "LSTM seq 35, batch 64, input 128, hidden 256, linear head to 10"),
}


@dataclass
class Workload:
    name: str
    batch: int
    flops: float  # matrix-product and convolution flops of one training step
    step: Callable[[], None]
    sync: Callable[[], None]
    loss: Callable[[], float]


def _data(name, batch, seed=0):
    """Host inputs and targets for one batch of workload ``name``."""
    rng = np.random.default_rng(seed)
    if name == "logreg":
        x = rng.standard_normal((batch, 100)).astype(np.float32)
        return x, (x[:, :1] > 0).astype(np.float32)
    if name == "mlp":
        return rng.standard_normal((batch, 784)).astype(np.float32), rng.integers(0, 10, batch)
    if name == "lenet":
        return rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), rng.integers(
            0, 10, batch
        )
    if name == "lstm":
        return rng.standard_normal((batch, 35, 128)).astype(np.float32), rng.integers(0, 10, batch)
    raise KeyError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}")


def flops(name: str, batch: int) -> float:
    """Multiply-add flops (2 per MAC) of the matrix products and convolutions in one
    training step: forward, plus twice that for the backward (input and weight grads)."""
    if name == "logreg":
        fwd = 2 * batch * 100
    elif name == "mlp":
        fwd = 2 * batch * (784 * 256 + 256 * 256 + 256 * 10)
    elif name == "lenet":
        conv1 = 2 * batch * 6 * 28 * 28 * 25
        conv2 = 2 * batch * 16 * 10 * 10 * 6 * 25
        fwd = conv1 + conv2 + 2 * batch * (400 * 120 + 120 * 84 + 84 * 10)
    elif name == "lstm":
        fwd = 2 * batch * 35 * (128 + 256) * 4 * 256 + 2 * batch * 256 * 10
    else:
        raise KeyError(name)
    return 3.0 * fwd


def _gpunn_model(name):
    from gpunn import models, nn

    if name == "logreg":
        return models.LogisticRegression(100), nn.BCELoss()
    if name == "mlp":
        return models.MLP(784, (256, 256), 10), nn.CrossEntropyLoss()
    if name == "lenet":
        return models.LeNet5(), nn.CrossEntropyLoss()
    return models.LSTMClassifier(128, 256, 10), nn.CrossEntropyLoss()


def build(name: str, backend: str, scale: int = 1, lr: float = 0.01) -> Workload:
    """The workload on a gpunn backend, parameters from seed 0."""
    import gpunn
    from gpunn.backends import backend_object

    batch = SPECS[name][0] * scale
    x_host, y_host = _data(name, batch)
    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        model, criterion = _gpunn_model(name)
        x = gpunn.tensor(x_host)
        y = gpunn.tensor(y_host)
    opt = gpunn.optim.SGD(model.parameters(), lr=lr)
    last = {}

    def step():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        last["loss"] = loss

    be = backend_object(backend)
    return Workload(
        name, batch, flops(name, batch), step, be.synchronize, lambda: last["loss"].item()
    )


def build_torch(name: str, device: str = "cpu", scale: int = 1, lr: float = 0.01) -> Workload:
    """The same workload in PyTorch eager mode (the reference peer)."""
    import torch
    from torch import nn

    batch = SPECS[name][0] * scale
    x_host, y_host = _data(name, batch)
    torch.manual_seed(0)
    if name == "logreg":
        model = nn.Sequential(nn.Linear(100, 1), nn.Sigmoid())
        criterion = nn.BCELoss()
    elif name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        criterion = nn.CrossEntropyLoss()
    elif name == "lenet":
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
        criterion = nn.CrossEntropyLoss()
    else:

        class LSTMHead(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.LSTM(128, 256, batch_first=True)
                self.head = nn.Linear(256, 10)

            def forward(self, x):
                out, _ = self.rnn(x)
                return self.head(out[:, -1])

        model = LSTMHead()
        criterion = nn.CrossEntropyLoss()
    model = model.to(device)
    x = torch.from_numpy(x_host).to(device)
    y = torch.from_numpy(y_host).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    last = {}

    def step():
        opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        opt.step()
        last["loss"] = loss

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    return Workload(name, batch, flops(name, batch), step, sync, lambda: last["loss"].item())
