"""Data-parallel training on 2 ranks of this machine (MPI from the project's test extra)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gpunn
from gpunn import distributed as dist
from gpunn import nn

WORKER = os.path.join(os.path.dirname(__file__), "mpi_worker.py")
MPIEXEC = shutil.which("mpiexec")

try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY,
    reason="no MPI: install the test extra (mpi4py and mpich) to run the 2-rank tests",
)


def _launcher_env():
    """This environment without a parent launcher's variables; Open MPI (where it is the MPI
    found) may run as root, as tests in containers do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_"))}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env


def mpirun(*args, timeout=120):
    env = _launcher_env()
    return subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_sampler_shards_are_disjoint_and_cover_the_data():
    shards = [dist.DistributedSampler(10, seed=3, rank=r, world_size=3).indices() for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to a multiple of the world size
    assert set(np.concatenate(shards)) == set(range(10))
    first = dist.DistributedSampler(10, seed=3, rank=0, world_size=3)
    again = dist.DistributedSampler(10, seed=3, rank=0, world_size=3)
    np.testing.assert_array_equal(first.indices(), again.indices())
    first.set_epoch(1)
    assert not np.array_equal(first.indices(), again.indices())
    dropped = [
        dist.DistributedSampler(10, seed=3, rank=r, world_size=3, drop_last=True).indices()
        for r in range(3)
    ]
    assert [len(s) for s in dropped] == [3, 3, 3]
    assert len(set(np.concatenate(dropped))) == 9


def test_single_process_world_without_launcher():
    world = dist.init()
    assert (world.rank, world.size) == (0, 1)
    model = gpunn.models.MLP(4, (3,), 2)
    ddp = dist.DataParallel(model)
    nn.CrossEntropyLoss()(ddp(gpunn.randn(5, 4)), gpunn.tensor([0, 1, 0, 1, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert ddp.bytes_per_step == sum(p.size * 4 for p in model.parameters())


def test_unused_parameter_is_reported_on_the_next_forward():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x)

    ddp = dist.DataParallel(TwoHeads())
    ddp(gpunn.randn(2, 3)).sum().backward()
    with pytest.raises(dist.DistributedError, match="without a gradient"):
        ddp(gpunn.randn(2, 3))


@needs_mpi
def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path, backend):
    out = tmp_path / "params"
    run = mpirun(WORKER, "train", backend, str(out))
    assert run.returncode == 0, run.stderr
    assert "bytes reduced per step" in run.stdout
    got = gpunn.load(out)

    # the same training in one process, batch 16 = the union of both ranks' batches of 8
    X, y = _worker_data()
    gpunn.manual_seed(1)
    model = gpunn.models.MLP(10, (16,), 3).double()
    opt = gpunn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    shards = [dist.DistributedSampler(64, seed=5, rank=r, world_size=2).indices() for r in range(2)]
    for s in range(4):
        part = np.concatenate([sh[s * 8 : (s + 1) * 8] for sh in shards])
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(gpunn.tensor(X[part])), gpunn.tensor(y[part])).backward()
        opt.step()
    for name, p in model.state_dict().items():
        np.testing.assert_allclose(
            got[name].numpy(), p.numpy(), rtol=1e-10, atol=1e-12, err_msg=name
        )


def _worker_data():
    sys.path.insert(0, os.path.dirname(WORKER))
    try:
        import mpi_worker
    finally:
        sys.path.pop(0)
    return mpi_worker.data()


@needs_mpi
def test_a_rank_that_raises_ends_every_rank_with_a_message():
    run = mpirun(WORKER, "fail", timeout=60)
    assert run.returncode != 0
    assert "deliberate failure on rank 1" in run.stderr
    assert "rank 1 raised ValueError; aborting all 2 ranks" in run.stderr


@needs_mpi
def test_a_collective_that_times_out_names_the_missing_rank():
    run = mpirun(WORKER, "hang", timeout=60)
    assert run.returncode != 0
    assert "rank(s) [1] never arrived" in run.stderr


@needs_mpi
def test_gpunn_train_on_two_ranks_writes_once_and_resumes(tmp_path):
    out = tmp_path / "run"
    env = _launcher_env()
    cmd = [
        MPIEXEC,
        "-n",
        "2",
        sys.executable,
        "-m",
        "gpunn.cli",
        "train",
        "--model",
        "mlp",
        "--data",
        "digits",
        "--backend",
        "numpy",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("gpunn train: mlp on digits") == 1  # rank 0 alone prints
    assert "data parallel on 2 ranks" in first.stdout
    written = set(os.listdir(out)) - {"curves.png"}  # the plot needs the optional matplotlib
    assert written == {"checkpoint", "config.json", "metrics.jsonl"}
    cmd[cmd.index("--epochs") + 1] = "2"
    second = subprocess.run(
        cmd + ["--resume"], capture_output=True, text=True, timeout=300, env=env
    )
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def _cuda_device_present():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda_device_present(), reason="no CUDA device")
def test_nccl_collectives_in_a_single_gpu_world():
    import cupy

    world = dist.World(None, timeout=60)  # one rank, no MPI needed
    assert world.nccl() is not None, "CuPy has no NCCL"
    buf = cupy.arange(1000, dtype=cupy.float32)
    dist._nccl_collective(world, buf, "allReduce")  # a sum over one rank: unchanged
    dist._nccl_collective(world, buf, "bcast")
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(buf), np.arange(1000, dtype=np.float32))
    with gpunn.use_backend("cupy"):
        model = gpunn.models.MLP(6, (5,), 2)
    ddp = dist.DataParallel(model, world=world)
    assert ddp._transport(ddp._buckets[0]) == "nccl"
    loss = nn.CrossEntropyLoss()(
        ddp(gpunn.randn(4, 6, backend="cupy")), gpunn.tensor([0, 1, 1, 0], backend="cupy")
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.backend == "cupy" for p in model.parameters())
