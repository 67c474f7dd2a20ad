"""Optimizers. The update arithmetic is a backend op (``sgd_update``, ``adam_update``), so
accelerated backends apply it in one fused pass."""

from __future__ import annotations

from gpunn.errors import BackendError, CheckpointError
from gpunn.tensor import Tensor, tensor, zeros


def _host(value):
    """A host array from a Tensor or an array."""
    return value.numpy() if isinstance(value, Tensor) else value


class Optimizer:
    """Holds the parameters and their per-parameter state.

    ``state[i]`` maps slot names to tensors on parameter i's backend (and ``"step"`` to an
    int); a slot follows its parameter when the parameter moves (``Module.to``).
    ``state_dict()`` is flat (name -> Tensor or 0-d array), so ``gpunn.save`` can write it.
    """

    hyper: tuple[str, ...] = ()
    slots: tuple[str, ...] = ()

    def __init__(self, params, **hyper):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for name, value in hyper.items():
            if value < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {value}")
            setattr(self, name, value)
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (gradients accumulate until this is called)."""
        for p in self.params:
            p.grad = None

    def _with_grads(self):
        """(index, parameter) for every parameter that has a gradient; all on one backend."""
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        backends = {p.backend for _, p in live}
        if len(backends) > 1:
            raise BackendError(
                f"{type(self).__name__}.step: parameters live on several backends: {sorted(backends)}"
            )
        return live

    def _slot(self, i, p, name):
        """The native array of state ``name`` of parameter i: moved to the parameter's
        backend if the parameter moved; zeros on first use or after a change of shape or
        dtype."""
        slot = self.state[i].get(name)
        if slot is None or slot.shape != p.shape or slot.dtype != p.dtype:
            slot = self.state[i][name] = zeros(p.shape, dtype=p.dtype, backend=p.backend)
        return slot.to_(p.backend).data

    def step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Flat mapping: hyper-parameters as 0-d arrays, ``state.<i>.<slot>`` as tensors."""
        out = {
            name: tensor(getattr(self, name), dtype="float64", backend="numpy")
            for name in self.hyper
        }
        for i, st in enumerate(self.state):
            for name, value in st.items():
                key = f"state.{i}.{name}"
                if name == "step":
                    out[key] = tensor(value, dtype="int64", backend="numpy")
                else:
                    out[key] = value.detach()
        return out

    def load_state_dict(self, state) -> None:
        """Restore from :meth:`state_dict` output (values may be tensors or arrays); copies."""
        for name in self.hyper:
            if name in state:
                setattr(self, name, float(_host(state[name])))
        self.state = [{} for _ in self.params]
        for key, value in state.items():
            if not key.startswith("state."):
                continue
            _, index, name = key.split(".", 2)
            i = int(index)
            if i >= len(self.params):
                raise CheckpointError(
                    f"{type(self).__name__}.load_state_dict: {key!r} names parameter {i}, but "
                    f"the optimizer has {len(self.params)}"
                )
            p = self.params[i]
            host = _host(value)
            if name == "step":
                self.state[i][name] = int(host)
                continue
            if host.shape != p.shape:
                raise CheckpointError(
                    f"{type(self).__name__}.load_state_dict: {key!r} has shape {host.shape}, "
                    f"parameter {i} has shape {p.shape}"
                )
            self.state[i][name] = tensor(host, dtype=p.dtype, backend=p.backend)


class SGD(Optimizer):
    """Stochastic gradient descent, as PyTorch's SGD without dampening or Nesterov:
    g = grad + weight_decay*p; buf = momentum*buf + g; p -= lr*buf."""

    hyper = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self) -> None:
        live = self._with_grads()
        if not live:
            return
        be = live[0][1].backend_object
        bufs = [self._slot(i, p, "momentum_buffer") if self.momentum else None for i, p in live]
        be.sgd_update(
            [p.data for _, p in live],
            [p.grad.data for _, p in live],
            bufs,
            float(self.lr),
            float(self.momentum),
            float(self.weight_decay),
        )


class Adam(Optimizer):
    """Adam, as PyTorch's (weight_decay adds an L2 term to the gradient)."""

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(
            params, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay
        )

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def step(self) -> None:
        live = self._with_grads()
        if not live:
            return
        be = live[0][1].backend_object
        groups: dict[int, list] = {}  # parameters that have taken the same number of steps
        for i, p in live:
            self.state[i]["step"] = self.state[i].get("step", 0) + 1
            groups.setdefault(self.state[i]["step"], []).append((i, p))
        for step, members in groups.items():
            be.adam_update(
                [p.data for _, p in members],
                [p.grad.data for _, p in members],
                [self._slot(i, p, "exp_avg") for i, p in members],
                [self._slot(i, p, "exp_avg_sq") for i, p in members],
                step,
                float(self.lr),
                float(self.beta1),
                float(self.beta2),
                float(self.eps),
                float(self.weight_decay),
            )
