"""Finite-difference check of autograd's gradients, in float64."""

from __future__ import annotations

import numpy as np

from gpunn.autograd import no_grad
from gpunn.errors import GpunnError
from gpunn.tensor import Tensor


class GradcheckError(GpunnError, AssertionError):
    """Autograd's gradient and the finite-difference estimate disagree."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3) -> bool:
    """Check d(fn(*inputs))/d(input) for every float input with ``requires_grad``.

    The inputs are copied to float64. For an output y, the checked scalar is
    sum(y * R) with a fixed random R, so every output element takes part. Each element of
    each input is moved by +-eps (central differences). Returns True, or raises
    GradcheckError naming the input and the largest mismatch.
    """
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    xs = []
    for x in inputs:
        if isinstance(x, Tensor) and x.dtype.kind == "f":
            be = x.backend_object
            copy = be.copy(be.astype(x.data, np.float64))
            xs.append(Tensor(copy, be, requires_grad=x.requires_grad))
        else:
            xs.append(x)
    checked = [i for i, x in enumerate(xs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    rng = np.random.default_rng(1234)
    weights = None

    def scalar(outs):
        nonlocal weights
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        if weights is None:
            weights = [
                Tensor(o.backend_object.asarray(rng.standard_normal(o.shape)), o.backend_object)
                for o in outs
            ]
        total = None
        for o, w in zip(outs, weights):
            part = (o * w).sum()
            total = part if total is None else total + part
        return total

    scalar(fn(*xs)).backward()
    for i in checked:
        x = xs[i]
        analytic = x.grad.numpy() if x.grad is not None else np.zeros(x.shape)
        numeric = np.zeros(x.shape)
        flat = x.data.reshape(-1)  # a view: the inputs were copied to contiguous arrays
        with no_grad():
            for k in range(x.size):
                old = flat[k].item()
                flat[k] = old + eps
                up = scalar(fn(*xs)).item()
                flat[k] = old - eps
                down = scalar(fn(*xs)).item()
                flat[k] = old
                numeric.reshape(-1)[k] = (up - down) / (2 * eps)
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            k = np.unravel_index(np.argmax(err - rtol * np.abs(numeric)), x.shape)
            raise GradcheckError(
                f"gradcheck: input {i} (shape {x.shape}): {int(bad.sum())} of {x.size} elements "
                f"differ; largest at index {tuple(int(v) for v in k)}: autograd {analytic[k]:.6g}, "
                f"finite differences {numeric[k]:.6g}"
            )
    return True
