"""Learning-rate schedules, as ``torch.optim.lr_scheduler``: StepLR, CosineAnnealingLR,
OneCycleLR and LambdaLR, with PyTorch's formulas (step by step the same floats).

A scheduler sets ``group["lr"]`` of its optimizer's parameter groups. Build it after the
optimizer (that applies the epoch-0 value), call ``optimizer.step()`` and then
``scheduler.step()`` once per epoch (OneCycleLR: once per batch). ``state_dict()`` is flat
(name -> tensor) so it saves with ``gpunn.save``; ``load_state_dict`` restores the position
in the schedule and puts the last scheduled rates back into the groups, so a resumed run
continues exactly.
"""

from __future__ import annotations

import math

import numpy as np

from gpunn.optim.optimizer import Optimizer, _host
from gpunn.tensor import tensor

__all__ = ["CosineAnnealingLR", "LRScheduler", "LambdaLR", "OneCycleLR", "StepLR"]


class LRScheduler:
    """The common part: ``base_lrs`` (each group's ``initial_lr``), ``last_epoch`` (steps
    taken; 0 after construction) and :meth:`get_lr`, which subclasses define."""

    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: {type(optimizer).__name__} is not an Optimizer"
            )
        self.optimizer = optimizer
        for i, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(
                    f"{type(self).__name__}: param_groups[{i}] has no 'initial_lr', needed to "
                    f"start at last_epoch={last_epoch}; load the optimizer's state first"
                )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._initial = True
        self.step()
        self._initial = False

    def get_lr(self) -> list[float]:
        """The rates for ``last_epoch`` (just advanced), one per group."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one step and set every group's lr."""
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        """The rates the last :meth:`step` set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        """``last_epoch``, ``step_count`` (0-d) and ``base_lrs``, ``last_lr`` (one per group)."""
        return {
            "last_epoch": tensor(self.last_epoch, dtype="int64", backend="numpy"),
            "step_count": tensor(self._step_count, dtype="int64", backend="numpy"),
            "base_lrs": tensor(np.array(self.base_lrs, np.float64), backend="numpy"),
            "last_lr": tensor(np.array(self._last_lr, np.float64), backend="numpy"),
        }

    def load_state_dict(self, state) -> None:
        """Restore from :meth:`state_dict` output, and set each group's lr to ``last_lr``."""
        last_lr = [float(x) for x in np.asarray(_host(state["last_lr"])).ravel()]
        if len(last_lr) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: state for {len(last_lr)} parameter "
                f"groups, the optimizer has {len(self.optimizer.param_groups)}"
            )
        self.last_epoch = int(_host(state["last_epoch"]))
        self._step_count = int(_host(state["step_count"]))
        self.base_lrs = [float(x) for x in np.asarray(_host(state["base_lrs"])).ravel()]
        self._last_lr = last_lr
        for group, lr in zip(self.optimizer.param_groups, last_lr):
            group["lr"] = lr


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size:
            return [g["lr"] for g in groups]
        return [g["lr"] * self.gamma for g in groups]


class CosineAnnealingLR(LRScheduler):
    """Cosine from the initial rate down to ``eta_min`` over ``T_max`` steps (and back up
    over the next ``T_max``, and so on), computed from the previous rate as PyTorch does:
    eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        groups, t, T, lo = self.optimizer.param_groups, self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return [g["lr"] for g in groups]
        if self._step_count == 1 and t > 0:  # started part-way (last_epoch given)
            return [lo + (b - lo) * (1 + math.cos(t * math.pi / T)) / 2 for b in self.base_lrs]
        if (t - 1 - T) % (2 * T) == 0:  # the bottom of a cycle: climb again
            return [
                g["lr"] + (b - lo) * (1 - math.cos(math.pi / T)) / 2
                for b, g in zip(self.base_lrs, groups)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (g["lr"] - lo) + lo for g in groups]


class LambdaLR(LRScheduler):
    """lr = initial lr * ``lr_lambda(step)``; one function, or one per group."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas, got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [b * f(self.last_epoch) for f, b in zip(self.lr_lambdas, self.base_lrs)]


class OneCycleLR(LRScheduler):
    """The one-cycle policy: the rate rises from max_lr/div_factor to ``max_lr`` over the
    first ``pct_start`` of ``total_steps`` (or ``epochs * steps_per_epoch``) steps, then
    falls to initial/final_div_factor (``three_phase``: back to the initial rate first);
    with ``cycle_momentum`` the momentum (SGD) or beta1 (Adam) moves the opposite way between
    ``max_momentum`` and ``base_momentum``. Step it once per batch."""

    def __init__(
        self,
        optimizer,
        max_lr,
        total_steps=None,
        epochs=None,
        steps_per_epoch=None,
        pct_start=0.3,
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e4,
        three_phase=False,
        last_epoch=-1,
    ):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OneCycleLR: {type(optimizer).__name__} is not an Optimizer")
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if int(total_steps) <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be > 0, got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        self.total_steps = int(total_steps)
        self.anneal = _cos if anneal_strategy == "cos" else _linear
        up = float(pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        # (end step, start lr key, end lr key, start momentum key, end momentum key)
        if three_phase:
            self.phases = [
                (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (
                    float(2 * pct_start * self.total_steps) - 2,
                    "max_lr",
                    "initial_lr",
                    "base_momentum",
                    "max_momentum",
                ),  # fmt: skip
                (last, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self.phases = [
                (up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                (last, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        groups = optimizer.param_groups
        max_lrs = _per_group("max_lr", max_lr, groups)
        if last_epoch == -1:
            for group, top in zip(groups, max_lrs):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = top
                group["min_lr"] = group["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            hyper = type(optimizer).hyper
            if "momentum" not in hyper and "beta1" not in hyper:
                raise ValueError(
                    f"OneCycleLR: cycle_momentum needs an optimizer with momentum or beta1; "
                    f"{type(optimizer).__name__} has neither"
                )
            self.momentum_key = "beta1" if "beta1" in hyper else "momentum"
            tops = _per_group("max_momentum", max_momentum, groups)
            bases = _per_group("base_momentum", base_momentum, groups)
            if last_epoch == -1:
                for group, top, base in zip(groups, tops, bases):
                    group[self.momentum_key] = top
                    group["max_momentum"], group["base_momentum"] = top, base
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(
                f"OneCycleLR: stepped {t} times, but total_steps is {self.total_steps}"
            )
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for k, (end, lr0, lr1, m0, m1) in enumerate(self.phases):
                if t <= end or k == len(self.phases) - 1:
                    pct = (t - start) / (end - start)
                    lrs.append(self.anneal(group[lr0], group[lr1], pct))
                    if self.cycle_momentum:
                        group[self.momentum_key] = self.anneal(group[m0], group[m1], pct)
                    break
                start = end
        return lrs


def _cos(start, end, pct):
    """Cosine from ``start`` (pct 0) to ``end`` (pct 1)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _linear(start, end, pct):
    return (end - start) * pct + start


def _per_group(name, value, groups):
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(
                f"OneCycleLR: expected {len(groups)} values of {name}, got {len(value)}"
            )
        return list(value)
    return [value] * len(groups)
