"""Data-parallel training over MPI (CPU backends) and NCCL (CUDA backend).

Launch the same script on N processes (``mpirun -n 2 python train.py`` or
``mpirun -n 2 gpunn train ...``); each process is a *rank*. Then::

    world = gpunn.distributed.init()               # rank and size from the MPI launcher
    model = gpunn.distributed.DataParallel(model)  # parameters broadcast from rank 0
    sampler = gpunn.distributed.DistributedSampler(len(dataset), seed=0)
    ...
    loss.backward()   # gradients are averaged across ranks, bucket by bucket
    opt.step()

gpunn adds no transport of its own: host buffers (numpy and numba backends) are reduced with
MPI ``Allreduce`` through mpi4py, device buffers (cupy) with NCCL through CuPy, whose unique id
is shared over MPI. Without NCCL, device buffers are staged through the host (said once).

Failure handling: an exception on one rank prints which rank failed and aborts the whole
job (``MPI_Abort``) instead of leaving the others waiting; a collective that waits longer
than ``timeout`` seconds names the ranks that have not arrived, then aborts.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

from gpunn.errors import GpunnError
from gpunn.nn.module import Module
from gpunn.tensor import Tensor

_LAUNCHER_RANK_VARS = (
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
    "MPI_LOCALRANKID",
)
_LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS")
_CHECKIN_TAG = 7031
# Before MPI_Abort: time for the launcher to forward what this rank wrote to stderr.
_FLUSH_GRACE_S = 0.5

_world = None


class DistributedError(GpunnError, RuntimeError):
    """A distributed setup or collective failed."""


def launched() -> bool:
    """True when an MPI launcher (mpirun, mpiexec, srun) started this process with more than
    one rank."""
    for var in _LAUNCHER_SIZE_VARS:
        if int(os.environ.get(var, "1") or 1) > 1:
            return True
    return False


class World:
    """The ranks of this job: ``rank``, ``size`` and the MPI communicator (None when a single
    process runs without MPI)."""

    def __init__(self, comm, timeout: float):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.timeout = timeout
        self._seq = 0
        self._nccl = None
        self._sends = []  # check-in messages in flight (their buffers must outlive them)

    # -------------------------------------------------------------- collectives
    def _wait(self, request, what: str, checkins) -> None:
        """Wait for a non-blocking MPI request; past the timeout, name the missing ranks and
        abort the job."""
        start = time.monotonic()
        polls = 0
        while not request.Test():
            polls += 1
            if polls > 100:
                time.sleep(2e-4)
            if time.monotonic() - start > self.timeout:
                if self.rank == 0:
                    missing = [r for r, req in checkins if not req.Test()]
                    who = (
                        f"rank(s) {missing} never arrived"
                        if missing
                        else "all ranks arrived but it did not finish"
                    )
                else:
                    who = "rank 0 reports which ranks are missing"
                self.abort(
                    f"collective #{self._seq} ({what}) waited more than {self.timeout:g} s: {who}"
                )

    def _checkin(self):
        """Each rank tells rank 0 it reached this collective; rank 0 keeps the receipts."""
        from mpi4py import MPI

        self._seq += 1
        tag = _CHECKIN_TAG
        if self.rank != 0:
            self._sends = [(req, buf) for req, buf in self._sends if not req.Test()]
            buf = np.array([self._seq], dtype=np.int64)
            self._sends.append((self.comm.Isend(buf, dest=0, tag=tag), buf))
            return []
        bufs = [(r, np.zeros(1, dtype=np.int64)) for r in range(1, self.size)]
        return [(r, self.comm.Irecv([buf, MPI.INT64_T], source=r, tag=tag)) for r, buf in bufs]

    def allreduce_host_(self, buf: np.ndarray, what: str) -> None:
        """Sum a host buffer over all ranks, in place."""
        if self.size == 1:
            return
        from mpi4py import MPI

        checkins = self._checkin()
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what, checkins)
        for _, req in checkins:
            req.Wait()

    def broadcast_host_(self, buf: np.ndarray, what: str, root: int = 0) -> None:
        """Copy rank ``root``'s host buffer to every rank, in place."""
        if self.size == 1:
            return
        checkins = self._checkin()
        self._wait(self.comm.Ibcast(buf, root=root), what, checkins)
        for _, req in checkins:
            req.Wait()

    def barrier(self) -> None:
        if self.size > 1:
            checkins = self._checkin()
            self._wait(self.comm.Ibarrier(), "barrier", checkins)
            for _, req in checkins:
                req.Wait()

    def abort(self, message: str, code: int = 1):
        """Print ``message`` naming this rank and end every rank of the job."""
        sys.stderr.write(f"gpunn.distributed: rank {self.rank} of {self.size}: {message}\n")
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            time.sleep(_FLUSH_GRACE_S)
            self.comm.Abort(code)
        raise DistributedError(message)

    # -------------------------------------------------------------- NCCL
    def nccl(self):
        """The NCCL communicator of this world (created on first use), or None when CuPy has
        no NCCL; then device buffers are staged through the host."""
        if self._nccl is None:
            try:
                from cupy.cuda import nccl
            except ImportError:
                self._nccl = False
                warnings.warn(
                    "gpunn.distributed: CuPy has no NCCL; device gradients are reduced through "
                    "the host with MPI",
                    stacklevel=2,
                )
                return None
            uid = nccl.get_unique_id() if self.rank == 0 else None
            if self.comm is not None:
                uid = self.comm.bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl or None


def init(timeout: float = 300.0) -> World:
    """Join the job started by the MPI launcher and return its :class:`World`.

    Reads rank and size from MPI (mpi4py). A single process started without a launcher
    gets a world of size 1 even without mpi4py. On a machine with GPUs each rank uses the
    device ``local rank % device count``. Installs an exception hook that aborts every rank
    when one raises. ``timeout``: seconds a collective may wait before naming the missing
    ranks and aborting.
    """
    global _world
    if _world is not None:
        return _world
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # no mpi4py, or no MPI library behind it
        if launched():
            raise DistributedError(
                "gpunn.distributed: started by an MPI launcher but mpi4py is not installed: "
                "pip install 'gpunn[mpi]'"
            ) from e
        _world = World(None, timeout)
        return _world
    _world = World(MPI.COMM_WORLD, timeout)
    _select_device(MPI)
    _install_excepthook(_world)
    return _world


def _select_device(MPI) -> None:
    try:
        import cupy
    except ImportError:
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver or no device
        return
    if count:
        local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        cupy.cuda.Device(local % count).use()


def _install_excepthook(world: World) -> None:
    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        if world.size > 1:
            sys.stderr.write(
                f"gpunn.distributed: rank {world.rank} raised {kind.__name__}; aborting all "
                f"{world.size} ranks\n"
            )
            sys.stderr.flush()
            time.sleep(_FLUSH_GRACE_S)
            world.comm.Abort(1)

    sys.excepthook = hook


def get_world() -> World:
    """The world after :func:`init` (a world of size 1 before it)."""
    return _world if _world is not None else World(None, 300.0)


def get_rank() -> int:
    return get_world().rank


def get_world_size() -> int:
    return get_world().size


# ------------------------------------------------------------------ sampling
class DistributedSampler:
    """Indices of this rank's shard of ``num_samples`` samples.

    Every rank draws the same permutation for a given (seed, epoch), then takes every
    ``world_size``-th index starting at its rank, so shards are disjoint. Without
    ``drop_last`` the permutation is padded with its first indices to a multiple of the
    world size, so every rank takes the same number of steps; with it, the tail is dropped.
    Call :meth:`set_epoch` each epoch for a new order.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        world = get_world()
        self.num_samples = int(num_samples)
        self.rank = world.rank if rank is None else rank
        self.world_size = world.size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"DistributedSampler: rank {self.rank} is not in [0, {self.world_size})"
            )
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)

    def indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = len(self) * self.world_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.indices().tolist())


# ------------------------------------------------------------------ data parallel
class DataParallel(Module):
    """Wraps a model so that each rank trains it on its own shard of every batch.

    At construction rank 0's parameters are broadcast to every rank. During ``backward()``,
    once every parameter of a bucket has its gradient, the bucket's gradients are flattened
    into one contiguous buffer, summed over all ranks in one collective and divided by the
    world size: a step makes a handful of collective calls, not one per parameter. With
    batch B per rank this equals training one process on batch N*B (the losses are means),
    up to floating-point reassociation.

    The wrapped model is ``.module``; save ``model.module.state_dict()``.
    """

    def __init__(self, module: Module, bucket_bytes: int = 4 << 20, world: World | None = None):
        super().__init__()
        self.module = module
        object.__setattr__(self, "world", world or get_world())
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("DataParallel: the model has no parameter that requires grad")
        self._buckets = self._make_buckets(list(reversed(params)), bucket_bytes)
        self._ready = [set() for _ in self._buckets]
        self._bucket_of = {}
        for b, bucket in enumerate(self._buckets):
            for p in bucket:
                self._bucket_of[id(p)] = b
                p.register_post_accumulate_grad_hook(self._grad_ready)
        self.bytes_per_step = sum(p.size * p.dtype.itemsize for p in params)
        self._broadcast_parameters()

    @staticmethod
    def _make_buckets(params, bucket_bytes):
        """Consecutive parameters of one dtype, up to ``bucket_bytes`` each (reverse order:
        the last layers' gradients are ready first)."""
        buckets, current, size = [], [], 0
        for p in params:
            nbytes = p.size * p.dtype.itemsize
            if current and (size + nbytes > bucket_bytes or p.dtype != current[0].dtype):
                buckets.append(current)
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(current)
        return buckets

    def forward(self, *args, **kwargs):
        return self.run(self.module, *args, **kwargs)

    def run(self, fn, *args, **kwargs):
        """``fn(*args)`` for a forward through another entry point of the wrapped model
        (e.g. ``model.logits``), with the same checks as calling the wrapper."""
        pending = [b for b, ready in enumerate(self._ready) if ready]
        if pending:
            bucket = self._buckets[pending[0]]
            waiting = [p for p in bucket if id(p) not in self._ready[pending[0]]]
            names = {id(p): n for n, p in self.module.named_parameters()}
            raise DistributedError(
                "DataParallel: the last backward left parameter(s) "
                f"{[names.get(id(p), '?') for p in waiting]} without a gradient; every "
                "parameter must take part in each step"
            )
        return fn(*args, **kwargs)

    def _grad_ready(self, p) -> None:
        b = self._bucket_of[id(p)]
        self._ready[b].add(id(p))
        if len(self._ready[b]) == len(self._buckets[b]):
            self._ready[b].clear()
            self._average(self._buckets[b], f"gradients of bucket {b}")

    def _transport(self, bucket):
        be = bucket[0].backend_object
        if be.name != "cupy":
            return "host"
        return "nccl" if self.world.nccl() is not None else "staged"

    def _average(self, bucket, what: str) -> None:
        world = self.world
        if world.size == 1:
            return
        be = bucket[0].backend_object
        flat = be.xp.concatenate([p.grad.data.reshape(-1) for p in bucket])
        kind = self._transport(bucket)
        if kind == "nccl":
            _nccl_collective(world, flat, "allReduce")
        elif kind == "staged":
            host = be.to_numpy(flat)
            world.allreduce_host_(host, what)
            flat = be.asarray(host)
        else:
            world.allreduce_host_(flat, what)
        flat /= world.size
        offset = 0
        for p in bucket:
            n = p.size
            p.grad = Tensor(flat[offset : offset + n].reshape(p.shape), be)
            offset += n

    def _broadcast_parameters(self) -> None:
        world = self.world
        if world.size == 1:
            return
        for b, bucket in enumerate(self._buckets):
            be = bucket[0].backend_object
            flat = be.xp.concatenate([p.data.reshape(-1) for p in bucket])
            kind = self._transport(bucket)
            if kind == "nccl":
                _nccl_collective(world, flat, "bcast")
            elif kind == "staged":
                host = be.to_numpy(flat)
                world.broadcast_host_(host, f"parameters of bucket {b}")
                flat = be.asarray(host)
            else:
                world.broadcast_host_(flat, f"parameters of bucket {b}")
            offset = 0
            for p in bucket:
                n = p.size
                p.set_(be.copy(flat[offset : offset + n].reshape(p.shape)))
                offset += n


def _nccl_collective(world: World, flat, kind: str) -> None:
    """Sum (allReduce) or broadcast from rank 0 (bcast) a CuPy buffer with NCCL, in place."""
    import cupy
    from cupy.cuda import nccl

    dtype = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}[
        flat.dtype
    ]
    stream = cupy.cuda.get_current_stream().ptr
    comm = world.nccl()
    if kind == "allReduce":
        comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, dtype, nccl.NCCL_SUM, stream)
    else:
        comm.bcast(flat.data.ptr, flat.size, dtype, 0, stream)
