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
    """Host arrays for the op workloads (the reference workloads make their own data in
    gpunn.workloads)."""
    if name == "conv2d":
        return rng.standard_normal((32, 32, 32, 32)).astype(np.float32), rng.standard_normal(
            (32, 64, 32, 32)
        ).astype(np.float32)
    if name == "softmax_ce":
        return (3 * rng.standard_normal((256, 1000))).astype(np.float32), rng.integers(0, 1000, 256)
    raise ValueError(name)


# ---------------------------------------------------------------------- gpunn
def gpunn_step(name, backend, x_host, y_host):
    """A closure running one forward + backward of op workload ``name`` on gpunn ``backend``."""
    import gpunn
    from gpunn import functional as F
    from gpunn import nn

    gpunn.manual_seed(0)
    with gpunn.use_backend(backend):
        x = gpunn.tensor(x_host, requires_grad=True)
        y = gpunn.tensor(y_host)
        if name == "conv2d":
            conv = nn.Conv2d(32, 64, 3, padding=1)
            return lambda: conv(x).backward(y)
        return lambda: F.cross_entropy(x, y).backward()


# ---------------------------------------------------------------------- torch
def torch_step(name, x_host, y_host):
    """The same op workload in PyTorch."""
    import torch
    import torch.nn.functional as TF
    from torch import nn

    torch.manual_seed(0)
    x = torch.from_numpy(x_host).requires_grad_(True)
    y = torch.from_numpy(y_host)
    if name == "conv2d":
        conv = nn.Conv2d(32, 64, 3, padding=1)
        return lambda: conv(x).backward(y)
    return lambda: TF.cross_entropy(x, y).backward()


def steps(name, backend):
    """(gpunn step, PyTorch step) for ``name``: a reference workload from gpunn.workloads
    (forward, loss, backward, SGD update) or an op workload (forward + backward)."""
    from gpunn import workloads

    if name in workloads.NAMES:
        return workloads.build(name, backend).step, workloads.build_torch(name).step
    x_host, y_host = _data(name, np.random.default_rng(0))
    return gpunn_step(name, backend, x_host, y_host), torch_step(name, x_host, y_host)


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
    print(f"threads={args.threads} backend={args.backend} torch={torch.__version__}")
    print(f"{'workload':<12}{'gpunn ms':>10}{'torch ms':>10}{'ratio':>8}{'target':>8}")
    for name in args.only.split(","):
        g, t = steps(name, args.backend)
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
