"""Optimizer updates (``be.sgd_update``, ``be.adam_update``): one in-place update of a
model's parameters from fixed gradients.

Sizes: "mlp" is the parameter set of the reference MLP (784-256-256-10, 270k values in
six arrays), "4x1024x1024" (GPUNN_BENCH_FULL=1) four large matrices.
"""

from .common import (
    ALL,
    PEERS,
    TIMER,
    Peer,
    backend_or_skip,
    check_dtype,
    dtypes,
    rng,
    size_names,
)

SIZES = {
    "mlp": [(256, 784), (256,), (256, 256), (256,), (10, 256), (10,)],
    "4x1024x1024": [(1024, 1024)] * 4,
}
LARGE = ("4x1024x1024",)
SGD = dict(lr=1e-3, momentum=0.9, weight_decay=1e-4)
ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-4)


class _Update:
    param_names = ["backend", "size", "dtype"]
    params = [ALL, size_names(SIZES, LARGE), dtypes()]
    timeout = 120.0
    timer = staticmethod(TIMER)

    def setup(self, backend, size, dtype):
        check_dtype(backend, dtype)
        r = rng()
        draw = lambda: [r.standard_normal(s).astype(dtype) for s in SIZES[size]]
        host_params, host_grads = draw(), draw()
        if backend in PEERS:
            peer = Peer(backend)
            params = [peer.tensor(p, grad=True) for p in host_params]
            for p, g in zip(params, host_grads):
                p.grad = peer.tensor(g)
            opt = self.torch_optimizer(peer.torch, params)
            self.update, self.sync = opt.step, peer.synchronize
        else:
            be = backend_or_skip(backend)
            params = [be.asarray(p) for p in host_params]
            grads = [be.asarray(g) for g in host_grads]
            state = [[be.zeros(p.shape, p.dtype) for p in params] for _ in range(self.slots)]
            self.update = lambda: self.gpunn_update(be, params, grads, *state)
            self.sync = be.synchronize
        self.time_update(backend, size, dtype)  # warm-up: compile, allocate

    def time_update(self, backend, size, dtype):
        self.update()
        self.sync()


class SGDMomentum(_Update):
    """SGD with momentum 0.9 and weight decay (every term of the update)."""

    slots = 1
    params = [ALL, size_names(SIZES, LARGE), dtypes(float64=True)]  # float64 training uses SGD

    def gpunn_update(self, be, params, grads, bufs):
        be.sgd_update(params, grads, bufs, **SGD)

    def torch_optimizer(self, torch, params):
        return torch.optim.SGD(params, **SGD)


class Adam(_Update):
    slots = 2

    def gpunn_update(self, be, params, grads, ms, vs):
        be.adam_update(params, grads, ms, vs, step=10, **ADAM)

    def torch_optimizer(self, torch, params):
        betas = (ADAM["beta1"], ADAM["beta2"])
        return torch.optim.Adam(
            params, lr=ADAM["lr"], betas=betas, eps=ADAM["eps"], weight_decay=ADAM["weight_decay"]
        )
