"""Mixed precision: ``autocast`` and the float16 loss scaler ``GradScaler``.

Inside ``with gpunn.autocast("bfloat16"):`` (or ``"float16"``) the matrix products of
``linear``, ``matmul`` and ``conv2d`` on float32 inputs may run in the lower precision: their
inputs are rounded to it, the products accumulate in float32 and the outputs are float32,
as are the weights (the float32 master copy the optimizer updates) and every other op.
(PyTorch's autocast returns these ops' outputs in the lower dtype; gpunn keeps the outputs
float32 so the rest of the graph needs no casts.) The backward of such an op runs in the
same precision as its forward, wherever ``backward()`` is called.

Which backend does what:

* CPU backends (numpy, numba) accept the context and compute in float32: results are
  exactly those without it.
* cupy rounds to float16 or bfloat16 and multiplies with cuBLAS (``gemmEx``, float32
  accumulation). Written and compiled, not yet run on a GPU.

float16's narrow range makes small gradients underflow; ``GradScaler`` multiplies the loss
by a large factor before ``backward()``, divides the gradients by it before the step, skips
steps whose gradients overflowed and adapts the factor, as PyTorch's ``GradScaler``.
"""

from __future__ import annotations

import contextvars
import math

from gpunn.cuda import graphs
from gpunn.errors import BackendError, CaptureError

__all__ = ["AUTOCAST_OPS", "GradScaler", "autocast", "autocast_dtype"]

#: The ops whose products autocast lowers (by their op stem).
AUTOCAST_OPS = frozenset({"linear", "matmul", "conv2d"})
LOW_DTYPES = ("bfloat16", "float16")

_current: contextvars.ContextVar = contextvars.ContextVar("gpunn_autocast", default=None)


def autocast_dtype() -> str | None:
    """The lower precision in force ("bfloat16" or "float16"), or None outside autocast."""
    return _current.get()


class autocast:
    """``with gpunn.autocast("bfloat16"):`` lower the precision of linear, matmul and conv2d
    (see the module's docstring). Nests: the innermost context wins, and
    ``enabled=False`` turns autocast off inside an enclosing one."""

    def __init__(self, dtype="bfloat16", enabled=True):
        dtype = str(dtype).replace("torch.", "")
        if dtype not in LOW_DTYPES:
            raise ValueError(f"autocast: dtype must be one of {LOW_DTYPES}, got {dtype!r}")
        self.dtype = dtype
        self.enabled = bool(enabled)
        self._tokens: list = []

    def __enter__(self):
        self._tokens.append(_current.set(self.dtype if self.enabled else None))
        return self

    def __exit__(self, *exc):
        _current.reset(self._tokens.pop())
        return False


class GradScaler:
    """Loss scaling for float16 training, as PyTorch's ``GradScaler``::

        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)        # optional: before clipping the true gradients
        scaler.step(optimizer)            # skipped if a gradient is inf or nan
        scaler.update()                   # backoff after an overflow, growth after
                                          # growth_interval clean steps

    The scale factor lives on the host (a Python float). ``unscale_`` leaves whether any
    gradient is inf or nan on the device, as a flag; gpunn's optimizers take the flag and
    skip their update on the device (``optimizer.step(found_inf=flag)``), and the host
    reads it once the update is queued (:func:`gpunn.cuda.on_host`: at once in an eager
    step, after every replay of a captured one), to undo the step count and adapt the
    scale. So the same code runs eagerly and inside a CUDA graph. ``enabled=False`` makes
    every method a pass-through, so one script serves both precisions.
    """

    def __init__(
        self,
        init_scale=2.0**16,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=2000,
        enabled=True,
    ):
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor}")
        self.enabled = bool(enabled)
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0
        # id(optimizer) -> its found-inf flag (a 0-d bool array) or None (no gradients),
        # for the optimizers unscaled since the last update()
        self._found: dict = {}

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def is_enabled(self) -> bool:
        return self.enabled

    def scale(self, outputs):
        """``outputs`` (a tensor) times the scale factor; unchanged when disabled."""
        if not self.enabled:
            return outputs
        return outputs * graphs.replayed(lambda: self._scale)

    def unscale_(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale factor, in place, and keep on the
        device whether any is inf or nan. At most once per optimizer between two
        ``update()`` calls."""
        if not self.enabled:
            return
        if id(optimizer) in self._found:
            raise RuntimeError(
                "GradScaler.unscale_: already called for this optimizer since the last update()"
            )
        grads = [p for p in optimizer.params if p.grad is not None]
        backends = sorted({p.backend for p in grads})
        if len(backends) > 1:
            raise BackendError(
                f"GradScaler.unscale_: the optimizer's gradients live on several backends: "
                f"{backends}"
            )
        inv = graphs.replayed(lambda: 1.0 / self._scale)
        self._found[id(optimizer)] = (
            grads[0].backend_object.unscale_grads([p.grad.data for p in grads], inv)
            if grads
            else None
        )

    def step(self, optimizer):
        """Unscale (if not done yet) and step ``optimizer`` unless a gradient is inf or nan.
        Returns whether the optimizer stepped; None inside a captured step, where that is
        decided anew at every replay. An optimizer whose ``step`` takes no ``found_inf``
        (see :class:`gpunn.optim.Optimizer`) is skipped on the host instead, which a
        captured step cannot do."""
        if not self.enabled:
            optimizer.step()
            return True
        if id(optimizer) not in self._found:
            self.unscale_(optimizer)
        flag = self._found[id(optimizer)]
        if flag is None:  # no gradients: nothing to skip
            optimizer.step()
            return True
        if getattr(optimizer, "takes_found_inf", False):
            optimizer.step(found_inf=flag)
            return None if graphs.capturing() else not bool(flag)
        if graphs.capturing():
            raise CaptureError(
                f"GradScaler.step: {type(optimizer).__name__}.step takes no found_inf, so "
                "an overflowing step is skipped on the host, which a captured step cannot do"
            )
        if bool(flag):
            return False
        optimizer.step()
        return True

    def update(self, new_scale=None) -> None:
        """Adapt the scale factor: times backoff_factor if this step found inf or nan, times
        growth_factor after growth_interval steps in a row without; or set it to
        ``new_scale``. (In a captured step: after every replay, from its flags.)"""
        if not self.enabled:
            return
        unscaled = bool(self._found)
        flags = [f for f in self._found.values() if f is not None]
        self._found = {}
        graphs.on_host(flags, lambda found: self._adapt(found, unscaled, new_scale))

    def _adapt(self, found: bool, unscaled: bool, new_scale) -> None:
        if new_scale is not None:
            self._scale = float(new_scale)
        elif found:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        elif unscaled:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                grown = self._scale * self.growth_factor
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0

    def state_dict(self) -> dict:
        """Flat: scale, growth_factor, backoff_factor, growth_interval, growth_tracker."""
        from gpunn.tensor import tensor  # (gpunn.autograd imports this module)

        values = {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "growth_tracker": self._growth_tracker,
        }
        return {k: tensor(float(v), dtype="float64", backend="numpy") for k, v in values.items()}

    def load_state_dict(self, state) -> None:
        def value(key):
            v = state[key]
            return float(v.numpy() if hasattr(v, "numpy") else v)

        self._scale = value("scale")
        self.growth_factor = value("growth_factor")
        self.backoff_factor = value("backoff_factor")
        self.growth_interval = int(value("growth_interval"))
        self._growth_tracker = int(value("growth_tracker"))
