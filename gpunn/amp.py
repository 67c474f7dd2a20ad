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

    The scale factor lives on the host (a Python float); ``unscale_`` reads whether all
    gradients are finite back to the host (one sync per step on the GPU). ``enabled=False``
    makes every method a pass-through, so one script serves both precisions.
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
        self._unscaled: dict[int, bool] = {}  # id(optimizer) -> found inf, since update()

    def get_scale(self) -> float:
        return self._scale if self.enabled else 1.0

    def is_enabled(self) -> bool:
        return self.enabled

    def scale(self, outputs):
        """``outputs`` (a tensor) times the scale factor; unchanged when disabled."""
        return outputs * self._scale if self.enabled else outputs

    def unscale_(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale factor, in place, and note whether
        any is inf or nan. At most once per optimizer between two ``update()`` calls."""
        if not self.enabled:
            return
        if id(optimizer) in self._unscaled:
            raise RuntimeError(
                "GradScaler.unscale_: already called for this optimizer since the last update()"
            )
        inv = 1.0 / self._scale
        by_backend: dict = {}  # backend name -> (backend, gradient arrays)
        for p in optimizer.params:
            if p.grad is not None:
                g = p.grad.data
                g *= g.dtype.type(inv)
                by_backend.setdefault(p.backend, (p.backend_object, []))[1].append(g)
        found_inf = any(not be.all_finite(*gs) for be, gs in by_backend.values())
        self._unscaled[id(optimizer)] = found_inf

    def step(self, optimizer) -> bool:
        """Unscale (if not done yet) and step ``optimizer`` unless a gradient is inf or nan.
        Returns whether the optimizer stepped."""
        if not self.enabled:
            optimizer.step()
            return True
        if id(optimizer) not in self._unscaled:
            self.unscale_(optimizer)
        if self._unscaled[id(optimizer)]:
            return False
        optimizer.step()
        return True

    def update(self, new_scale=None) -> None:
        """Adapt the scale factor: times backoff_factor if this step found inf or nan, times
        growth_factor after growth_interval steps in a row without; or set it to
        ``new_scale``."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale)
        elif any(self._unscaled.values()):
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        elif self._unscaled:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                grown = self._scale * self.growth_factor
                if math.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
        self._unscaled = {}

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
