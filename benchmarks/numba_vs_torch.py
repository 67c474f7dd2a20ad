"""Step time of gpunn (numba backend, or any other) against PyTorch eager on the CPU.

One step = forward, loss, backward, SGD update (or forward + backward for the op
workloads). After warm-up (which includes Numba's compilation), gpunn and PyTorch steps
are timed alternately, so that both see the same machine load, and each is summarised
by its median; both run with the same thread count. Run:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/numba_vs_torch.py

Options: ``--threads N`` (default 2), ``--backend NAME`` (default numba), ``--repeat R``,
``--only NAME[,NAME...]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

WORKLOADS = ("logreg", "mlp", "lenet", "lstm", "conv2d", "softmax_ce")
TARGETS = {
    "logreg": 0.5,
    "mlp": 0.6,
    "lenet": 0.7,
    "lstm": 0.8,
    "conv2d": 1.0,
    "softmax_ce": 0.7,
}


def _data(name, rng):
    """Host arrays (float32 inputs, targets) for a workload."""
    if name == "logreg":
        return rng.standard_normal((4096, 100)).astype(np.float32), rng.integers(
            0, 2, (4096, 1)
        ).astype(np.float32)
    if name == "mlp":
        return rng.standard_normal((128, 784)).astype(np.float32), rng.integers(0, 10, 128)
    if name == "lenet":
        return rng.standard_normal((64, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 64)
    if name == "lstm":
        return rng.standard_normal((35, 64, 128)).astype(np.float32), rng.integers(0, 10, 64)
    if name == "conv2d":
        return rng.standard_normal((32, 32, 32, 32)).astype(np.float32), rng.standard_normal(
            (32, 64, 32, 32)
        ).astype(np.float32)
    if name == "softmax_ce":
        return (3 * rng.standard_normal((256, 1000))).astype(np.float32), rng.integers(0, 1000, 256)
    raise ValueError(name)


# ---------------------------------------------------------------------- gpunn
def gpunn_step(name, backend, x_host, y_host):
    """A closure running one step of ``name`` on gpunn ``backend``."""
    import gpunn
    from gpunn import functional as F
    from gpunn import nn, optim

    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        x = gpunn.tensor(x_host)
        y = gpunn.tensor(y_host)
        if name == "logreg":
            fc = nn.Linear(100, 1)
            params = list(fc.parameters())

            def loss_fn():
                return F.binary_cross_entropy(fc(x, activation="sigmoid"), y)

        elif name == "mlp":
            fc1, fc2, fc3 = nn.Linear(784, 256), nn.Linear(256, 256), nn.Linear(256, 10)
            params = [*fc1.parameters(), *fc2.parameters(), *fc3.parameters()]

            def loss_fn():
                h = fc2(fc1(x, activation="relu"), activation="relu")
                return F.cross_entropy(fc3(h), y)

        elif name == "lenet":
            c1, c2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
            f1, f2, f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)
            mods = (c1, c2, f1, f2, f3)
            params = [p for m in mods for p in m.parameters()]

            def loss_fn():
                h = F.max_pool2d(F.relu(c1(x)), 2)
                h = F.max_pool2d(F.relu(c2(h)), 2)
                h = h.reshape(h.shape[0], -1)
                h = f2(f1(h, activation="relu"), activation="relu")
                return F.cross_entropy(f3(h), y)

        elif name == "lstm":
            lstm, head = nn.LSTM(128, 256), nn.Linear(256, 10)
            params = [*lstm.parameters(), *head.parameters()]

            def loss_fn():
                out, (h, c) = lstm(x)
                return F.cross_entropy(head(h[0]), y)

        elif name == "conv2d":
            conv = nn.Conv2d(32, 64, 3, padding=1)
            x.requires_grad = True
            params = list(conv.parameters())

            def run():
                out = conv(x)
                out.backward(y)

            return run

        elif name == "softmax_ce":
            x.requires_grad = True

            def run():
                F.cross_entropy(x, y).backward()

            return run

        opt = optim.SGD(params, lr=0.01)

        def step():
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

        return step


# ---------------------------------------------------------------------- torch
def torch_step(name, x_host, y_host):
    import torch
    import torch.nn.functional as TF
    from torch import nn

    torch.manual_seed(0)
    x = torch.from_numpy(x_host)
    y = torch.from_numpy(y_host)
    if name == "logreg":
        model = nn.Linear(100, 1)

        def loss_fn():
            return TF.binary_cross_entropy(torch.sigmoid(model(x)), y)

    elif name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )

        def loss_fn():
            return TF.cross_entropy(model(x), y)

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

        def loss_fn():
            return TF.cross_entropy(model(x), y)

    elif name == "lstm":
        lstm, head = nn.LSTM(128, 256), nn.Linear(256, 10)
        model = nn.ModuleList([lstm, head])

        def loss_fn():
            out, (h, c) = lstm(x)
            return TF.cross_entropy(head(h[0]), y)

    elif name == "conv2d":
        conv = nn.Conv2d(32, 64, 3, padding=1)
        x.requires_grad_(True)

        def run():
            conv(x).backward(y)

        return run

    elif name == "softmax_ce":
        x.requires_grad_(True)

        def run():
            TF.cross_entropy(x, y).backward()

        return run

    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    return step


def _inner_count(step, min_time):
    t0 = time.perf_counter()
    step()
    once = max(time.perf_counter() - t0, 1e-6)
    return max(1, int(min_time / once))


def paired_times(gpunn_fn, torch_fn, rounds, warmup=3, min_time=0.02):
    """Per-step seconds of both, measured alternately (gpunn, torch, gpunn, ...) so that
    both see the same machine load; each sample averages enough steps to last about
    ``min_time``. Returns two lists of ``rounds`` samples."""
    for _ in range(warmup):
        gpunn_fn()
        torch_fn()
    ng, nt = _inner_count(gpunn_fn, min_time), _inner_count(torch_fn, min_time)
    tg, tt = [], []
    for _ in range(rounds):
        for fn, n, out in ((gpunn_fn, ng, tg), (torch_fn, nt, tt)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - t0) / n)
    return tg, tt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--repeat", type=int, default=21, help="paired samples per workload")
    parser.add_argument("--only", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)

    import torch

    import gpunn

    torch.set_num_threads(args.threads)
    gpunn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} backend={args.backend} torch={torch.__version__}")
    print(f"{'workload':<12}{'gpunn ms':>10}{'torch ms':>10}{'ratio':>8}{'target':>8}")
    for name in args.only.split(","):
        x_host, y_host = _data(name, rng)
        g = gpunn_step(name, args.backend, x_host, y_host)
        t = torch_step(name, x_host, y_host)
        samples_g, samples_t = paired_times(g, t, args.repeat)
        tg, tt = statistics.median(samples_g), statistics.median(samples_t)
        ratio = tg / tt
        flag = "ok" if ratio <= TARGETS[name] else "MISS"
        print(
            f"{name:<12}{tg * 1e3:>10.3f}{tt * 1e3:>10.3f}{ratio:>8.2f}{TARGETS[name]:>8.2f}  {flag}",
            flush=True,
        )


if __name__ == "__main__":
    main()
