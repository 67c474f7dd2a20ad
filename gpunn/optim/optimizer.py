"""Optimizers. The update arithmetic is a backend op (``sgd_update``, ``adam_update``), so
accelerated backends apply it in one fused pass."""

from __future__ import annotations

import functools

from gpunn.cuda.graphs import on_host, replayed
from gpunn.errors import BackendError, CheckpointError
from gpunn.tensor import Tensor, tensor, zeros


def _host(value):
    """A host array from a Tensor or an array."""
    return value.numpy() if isinstance(value, Tensor) else value


class Optimizer:
    """Holds the parameters, their per-parameter state and the parameter groups.

    ``params`` is an iterable of parameters, or (as in PyTorch) of dicts
    ``{"params": [...], "lr": ..., ...}``, one per group; a group's missing settings take
    the constructor's. ``param_groups`` is that list of dicts (a scheduler changes a group's
    ``"lr"``); reading ``opt.lr`` gives the first group's value, setting it sets every group's.
    ``state[i]`` maps slot names to tensors on parameter i's backend (and ``"step"`` to an
    int), i counting parameters over all groups in order; a slot follows its parameter when
    the parameter moves (``Module.to``). ``state_dict()`` is flat (name -> Tensor or 0-d
    array), so ``gpunn.save`` can write it.
    """

    hyper: tuple[str, ...] = ()
    slots: tuple[str, ...] = ()
    #: Whether ``step(found_inf=flag)`` skips the update on the device when ``flag`` (a
    #: 0-d bool array on the parameters' backend, the float16 loss scaler's) is true, so
    #: that a captured step can hold it (gpunn.amp.GradScaler).
    takes_found_inf = False

    def __init__(self, params, **defaults):
        items = list(params)
        groups = items if items and all(isinstance(g, dict) for g in items) else [{"params": items}]
        self.param_groups: list[dict] = []
        self.params: list = []
        for group in groups:
            group = dict(group)
            group["params"] = list(group["params"])
            for name in self.hyper:
                group.setdefault(name, defaults[name])
            self._check_group(group)
            self.param_groups.append(group)
            self.params.extend(group["params"])
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        self.state: list[dict] = [{} for _ in self.params]

    def _check_group(self, group) -> None:
        for name in self.hyper:
            if group[name] < 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {group[name]}")

    def __getattr__(self, name):
        groups = self.__dict__.get("param_groups")
        if groups and name in type(self).hyper:
            return groups[0][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in type(self).hyper and "param_groups" in self.__dict__:
            for group in self.param_groups:
                group[name] = value
        else:
            super().__setattr__(name, value)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (gradients accumulate until this is called)."""
        for p in self.params:
            p.grad = None

    def _live_groups(self):
        """(group, [(index, parameter), ...]) for every group, listing the parameters that
        have a gradient; all of them on one backend (else BackendError). Groups without
        such parameters are left out."""
        out, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            live = [(start + k, p) for k, p in enumerate(group["params"]) if p.grad is not None]
            start += n
            if live:
                out.append((group, live))
        backends = {p.backend for _, live in out for _, p in live}
        if len(backends) > 1:
            raise BackendError(
                f"{type(self).__name__}.step: parameters live on several backends: {sorted(backends)}"
            )
        return out

    def _slot(self, i, p, name):
        """The native array of state ``name`` of parameter i: moved to the parameter's
        backend if the parameter moved; zeros on first use or after a change of shape or
        dtype."""
        slot = self.state[i].get(name)
        if slot is None or slot.shape != p.shape or slot.dtype != p.dtype:
            slot = self.state[i][name] = zeros(p.shape, dtype=p.dtype, backend=p.backend)
        return slot.to_(p.backend).data

    def step(self, found_inf=None) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Flat mapping: the first group's hyper-parameters as 0-d arrays under their names,
        group g's (g >= 1) under ``group.<g>.<name>``, and ``state.<i>.<slot>`` as tensors."""
        out = {}
        for g, group in enumerate(self.param_groups):
            prefix = f"group.{g}." if g else ""
            for name in self.hyper:
                out[prefix + name] = tensor(float(group[name]), dtype="float64", backend="numpy")
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
        for key, value in state.items():
            if key.startswith("group."):
                _, g, name = key.split(".", 2)
                if int(g) >= len(self.param_groups):
                    raise CheckpointError(
                        f"{type(self).__name__}.load_state_dict: {key!r} names parameter group "
                        f"{g}, but the optimizer has {len(self.param_groups)}"
                    )
                if name in self.hyper:
                    self.param_groups[int(g)][name] = float(_host(value))
            elif key in self.hyper:
                self.param_groups[0][key] = float(_host(value))
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
    """Stochastic gradient descent, as PyTorch's SGD without dampening:
    g = grad + weight_decay*p; buf = momentum*buf + g; p -= lr*buf
    (``nesterov``: p -= lr*(g + momentum*buf), which needs momentum > 0)."""

    hyper = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )

    def _check_group(self, group) -> None:
        super()._check_group(group)
        if group["nesterov"] and not group["momentum"] > 0:
            raise ValueError(
                f"SGD: nesterov momentum needs momentum > 0, got momentum={group['momentum']}"
            )

    takes_found_inf = True

    def step(self, found_inf=None) -> None:
        """One update of every parameter that has a gradient; skipped on the device when
        ``found_inf`` (a 0-d bool array on the parameters' backend) is true."""
        for group, live in self._live_groups():
            momentum = _scheduled(group, "momentum")
            be = live[0][1].backend_object
            bufs = [self._slot(i, p, "momentum_buffer") if momentum else None for i, p in live]
            be.sgd_update(
                [p.data for _, p in live],
                [p.grad.data for _, p in live],
                bufs,
                _scheduled(group, "lr"),
                momentum,
                float(group["weight_decay"]),
                bool(group["nesterov"]),
                skip=found_inf,
            )


class Adam(Optimizer):
    """Adam, as PyTorch's: weight_decay adds an L2 term to the gradient, or, with
    ``decoupled_weight_decay`` (what :class:`AdamW` sets), shrinks the parameter by
    lr*weight_decay before the step."""

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        decoupled_weight_decay=False,
    ):
        super().__init__(
            [_split_betas(g) for g in params] if _is_groups(params) else params,
            lr=lr,
            beta1=betas[0],
            beta2=betas[1],
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
        )

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    takes_found_inf = True

    def step(self, found_inf=None) -> None:
        """One update of every parameter that has a gradient; skipped on the device when
        ``found_inf`` (a 0-d bool array on the parameters' backend) is true, and then the
        step counts are put back once the flag is read (gpunn.cuda.graphs.on_host)."""
        for group, live in self._live_groups():
            be = live[0][1].backend_object
            by_count: dict[int, list] = {}  # parameters that have taken the same number of steps
            for i, p in live:
                by_count.setdefault(self.state[i].get("step", 0), []).append((i, p))
            lr, beta1 = _scheduled(group, "lr"), _scheduled(group, "beta1")
            for members in by_count.values():
                # a captured step counts again at every replay (see gpunn.cuda.graphs)
                indices = [i for i, _ in members]
                step = replayed(functools.partial(self._count_step, indices))
                be.adam_update(
                    [p.data for _, p in members],
                    [p.grad.data for _, p in members],
                    [self._slot(i, p, "exp_avg") for i, p in members],
                    [self._slot(i, p, "exp_avg_sq") for i, p in members],
                    step,
                    lr,
                    beta1,
                    float(group["beta2"]),
                    float(group["eps"]),
                    float(group["weight_decay"]),
                    bool(group["decoupled_weight_decay"]),
                    skip=found_inf,
                )
                if found_inf is not None:
                    on_host([found_inf], functools.partial(self._uncount_step, indices))

    def _count_step(self, indices) -> int:
        """Add one to the step count of parameters ``indices`` (all at the same count);
        return the new count."""
        for i in indices:
            self.state[i]["step"] = self.state[i].get("step", 0) + 1
        return self.state[indices[0]]["step"]

    def _uncount_step(self, indices, skipped: bool) -> None:
        """Take back the count _count_step added when the update was ``skipped``."""
        if skipped:
            for i in indices:
                self.state[i]["step"] -= 1
                if not self.state[i]["step"]:
                    del self.state[i]["step"]


class AdamW(Adam):
    """AdamW, as PyTorch's: Adam with decoupled weight decay (p *= 1 - lr*weight_decay,
    then the Adam step on the plain gradient), weight_decay 1e-2 by default."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay, decoupled_weight_decay=True)


def _scheduled(group: dict, key: str) -> float:
    """The group's hyper-parameter ``key`` (``"lr"``; ``"momentum"`` or ``"beta1"``, which
    one-cycle moves), read anew at every replay of a captured step, so a schedule that
    changes it between steps works (see gpunn.cuda.graphs.replayed)."""
    return replayed(lambda: float(group[key]))


def _is_groups(params) -> bool:
    return isinstance(params, (list, tuple)) and bool(params) and isinstance(params[0], dict)


def _split_betas(group: dict) -> dict:
    """A PyTorch-style group's ``"betas": (b1, b2)`` as gpunn's ``beta1`` and ``beta2``."""
    group = dict(group)
    if "betas" in group:
        group["beta1"], group["beta2"] = group.pop("betas")
    return group
