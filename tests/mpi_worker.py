"""Run by tests/test_distributed.py under `mpiexec -n 2`: one scenario per invocation."""

import sys
import time

import numpy as np

import gpunn
from gpunn import distributed as dist
from gpunn import nn


def data(n=64, d=10, classes=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


def train(backend, out, steps=4, batch=8):
    """Each rank trains on its shard; rank 0 saves the parameters."""
    world = dist.init(timeout=60)
    X, y = data()
    gpunn.manual_seed(1)
    with gpunn.use_backend(backend):
        model = gpunn.models.MLP(10, (16,), 3).double()
    ddp = dist.DataParallel(model)
    opt = gpunn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sampler = dist.DistributedSampler(len(X), seed=5)
    idx = sampler.indices()
    for s in range(steps):
        part = idx[s * batch : (s + 1) * batch]
        xb = gpunn.tensor(X[part], backend=backend)
        yb = gpunn.tensor(y[part], backend=backend)
        opt.zero_grad()
        nn.CrossEntropyLoss()(ddp(xb), yb).backward()
        opt.step()
    if world.rank == 0:
        gpunn.save(model.state_dict(), out)
        print(f"bytes reduced per step: {ddp.bytes_per_step}")


def fail():
    world = dist.init(timeout=60)
    world.barrier()
    if world.rank == 1:
        raise ValueError("deliberate failure on rank 1")
    time.sleep(30)  # rank 0 would wait here; the abort must end it


def hang():
    world = dist.init(timeout=2)
    if world.rank == 1:
        time.sleep(30)  # never reaches the collective
    world.allreduce_host_(np.ones(3), "test sum")


if __name__ == "__main__":
    scenario = sys.argv[1]
    if scenario == "train":
        train(sys.argv[2], sys.argv[3])
    elif scenario == "fail":
        fail()
    elif scenario == "hang":
        hang()
