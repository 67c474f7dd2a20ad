"""Training helpers over parameters' gradients, as ``torch.nn.utils``: gradient clipping.

Each is one backend op over the list of gradients (``clip_grad_norm_update``,
``clip_grad_value_update``), so the norm is one fused reduction and nothing is read back to
the host per parameter (on the GPU, nothing at all unless ``error_if_nonfinite``).
"""

from __future__ import annotations

import math

from gpunn.errors import BackendError, DTypeError
from gpunn.tensor import Tensor, tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(op, parameters):
    """The native gradients of ``parameters`` (a tensor or an iterable of them) that have
    one, and their backend; they must share one backend and one dtype."""
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    live = [p for p in params if p.grad is not None]
    backends = sorted({p.backend for p in live})
    if len(backends) > 1:
        raise BackendError(f"{op}: gradients live on several backends: {backends}")
    dtypes = sorted({str(p.grad.dtype) for p in live})
    if len(dtypes) > 1:
        raise DTypeError(f"{op}: gradients of several dtypes: {dtypes}; clip each dtype apart")
    return [p.grad.data for p in live], (live[0].backend_object if live else None)


def clip_grad_norm_(
    parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None
) -> Tensor:
    """Scale the gradients of ``parameters`` in place so that their ``norm_type``-norm, taken
    over all of them together, is at most ``max_norm``: each is multiplied by
    min(max_norm / (total_norm + 1e-6), 1), as PyTorch does.

    ``norm_type``: a float > 0, or ``inf`` (``float("inf")`` or ``"inf"``) for the largest
    magnitude. ``error_if_nonfinite``: raise RuntimeError, before scaling, if the total norm
    is nan or inf (this reads the norm on the host). ``foreach`` is accepted for PyTorch's
    signature; gpunn always uses its fused op.

    Returns the total norm before clipping as a 0-d tensor of the gradients' dtype and
    backend (0.0 on the default backend when no parameter has a gradient).
    """
    norm_type = float(norm_type)
    if not (norm_type > 0 or norm_type == math.inf):
        raise ValueError(f"clip_grad_norm_: norm_type must be > 0 or inf, got {norm_type}")
    max_norm = float(max_norm)
    grads, be = _grads("clip_grad_norm_", parameters)
    if not grads:
        return tensor(0.0)
    total = be.clip_grad_norm_update(grads, max_norm, norm_type, bool(error_if_nonfinite))
    return Tensor._wrap(total, be, False)


def clip_grad_value_(parameters, clip_value, foreach=None) -> None:
    """Clamp the gradients of ``parameters`` in place to [-clip_value, clip_value], as
    PyTorch's ``clip_grad_value_`` (``foreach`` accepted for its signature)."""
    clip_value = float(clip_value)
    if clip_value < 0:
        raise ValueError(f"clip_grad_value_: clip_value must be >= 0, got {clip_value}")
    grads, be = _grads("clip_grad_value_", parameters)
    if grads:
        be.clip_grad_value_update(grads, clip_value)
