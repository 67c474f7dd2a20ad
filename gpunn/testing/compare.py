"""Hold a backend to the NumPy reference: op by op, or a whole model at once."""

from __future__ import annotations

import numpy as np

from gpunn.backends import Backend, available_backends, backend_object
from gpunn.testing.cases import OpCase, UpdateCase, input_needs, run_case, run_update, tolerance


def _assert_close(what, got, want, rtol, atol):
    if want is None and got is None:
        return
    if (want is None) != (got is None):
        raise AssertionError(f"{what}: one side is None (got {type(got)}, want {type(want)})")
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, reference {want.shape}")
    if got.dtype != want.dtype:
        raise AssertionError(f"{what}: dtype {got.dtype}, reference {want.dtype}")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _check_count(what, got, want):
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} arrays, reference {len(want)}")


def _check_needs(what, grads, needs):
    """One gradient per input; None exactly where the input's gradient was not asked for."""
    if len(grads) != len(needs):
        raise AssertionError(f"{what}: {len(grads)} gradients for {len(needs)} inputs")
    for i, (g, need) in enumerate(zip(grads, needs)):
        if need and g is None:
            raise AssertionError(f"{what}: no gradient for input {i}, which needs one")
        if not need and g is not None:
            raise AssertionError(f"{what}: a gradient for input {i}, which was not asked for")


def compare_op(backend, case: OpCase, dtype="float32", layout="C", seed=0) -> None:
    """Run ``case`` on ``backend`` (a name or a Backend instance) and on the reference;
    raise AssertionError naming the pass (forward output k, backward input i), the backend,
    dtype and case on any difference: in values, shapes, dtypes, the number of outputs or
    gradients, or a gradient present where it was not asked for (or missing where it was)."""
    be = backend if isinstance(backend, Backend) else backend_object(backend)
    ref = backend_object("numpy")
    inputs, Y, G, _ = run_case(be, case, dtype, layout, seed)
    _, Y_ref, G_ref, _ = run_case(ref, case, dtype, "C", seed)
    tol = tolerance(case, dtype)
    label = f"{case.op} [{case.name}] on {be.name}, {np.dtype(dtype).name}, {layout}"
    needs = input_needs(case, inputs)
    _check_needs(f"{label}: reference backward", G_ref, needs)
    _check_needs(f"{label}: backward", G, needs)
    _check_count(f"{label}: forward outputs", Y, Y_ref)
    for k, (y, r) in enumerate(zip(Y, Y_ref)):
        _assert_close(f"{label}: forward output {k}", y, r, **tol)
    for i, (g, r) in enumerate(zip(G, G_ref)):
        _assert_close(f"{label}: backward input {i}", g, r, **tol)


def compare_update(backend, case: UpdateCase, dtype="float32", seed=0) -> None:
    """Apply one optimizer update on ``backend`` (a name or a Backend instance) and on the
    reference and compare."""
    be = backend if isinstance(backend, Backend) else backend_object(backend)
    ref = backend_object("numpy")
    p, slots = run_update(be, case, dtype, seed)
    p_ref, slots_ref = run_update(ref, case, dtype, seed)
    rtol, atol = (1e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)
    label = f"{case.op} [{case.name}] on {be.name}, {np.dtype(dtype).name}"
    _check_count(f"{label}: parameters", p, p_ref)
    _check_count(f"{label}: state slots", slots, slots_ref)
    for i, (a, b) in enumerate(zip(p, p_ref)):
        _assert_close(f"{label}: parameter {i}", a, b, rtol, atol)
    for s, (xs, ys) in enumerate(zip(slots, slots_ref)):
        _check_count(f"{label}: state {s}", xs, ys)
        for i, (a, b) in enumerate(zip(xs, ys)):
            _assert_close(f"{label}: state {s} of parameter {i}", a, b, rtol, atol)


def compare_backends(model_or_fn, inputs, backends=None, params=None):
    """Run forward and backward of a model (or a function of tensors) on every available
    backend from the same parameters and inputs, and report the largest deviation from the
    NumPy reference.

    Args:
        model_or_fn: an ``nn.Module`` (its parameters are copied to each backend) or a
            function of tensors.
        inputs: a list of tensors (or arrays); they are copied to each backend.
        backends: names to compare (default: every available backend but numpy).
        params: for a function, extra tensors that require grad (e.g. weights).
    Returns:
        {backend: {"output 0": max abs diff, "grad <name>": max abs diff, ...}}. The scalar
        that is differentiated is the sum of every output times fixed random weights.
    Raises:
        AssertionError when a backend's outputs or gradients differ from the reference's in
        shape, dtype or number (values are reported, not judged).
    """
    from gpunn.nn.module import Module
    from gpunn.tensor import Tensor, tensor

    host_inputs = [x.numpy() if isinstance(x, Tensor) else np.asarray(x) for x in inputs]
    if isinstance(model_or_fn, Module):
        state = {k: v.numpy() for k, v in model_or_fn.state_dict().items()}
    else:
        state = {f"param {i}": p.numpy() for i, p in enumerate(params or [])}
    names = backends or [b for b in available_backends() if b != "numpy"]

    def run(name):
        xs = [tensor(h, backend=name, requires_grad=h.dtype.kind == "f") for h in host_inputs]
        if isinstance(model_or_fn, Module):
            model = model_or_fn
            model.to(name)
            model.load_state_dict(state)
            model.zero_grad()
            outs = model(*xs)
            named = dict(model.named_parameters())
        else:
            ps = [tensor(state[k], backend=name, requires_grad=True) for k in state]
            outs = model_or_fn(*xs, *ps)
            named = dict(zip(state, ps))
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        flat = []
        for o in outs:
            flat.extend(o if isinstance(o, (tuple, list)) else [o])
        rng = np.random.default_rng(0)
        total = None
        for o in flat:
            w = tensor(rng.standard_normal(o.shape).astype(o.dtype), backend=name)
            part = (o * w).sum()
            total = part if total is None else total + part
        total.backward()
        result = {f"output {k}": o.numpy() for k, o in enumerate(flat)}
        result.update({f"grad {n}": p.grad.numpy() for n, p in named.items() if p.grad is not None})
        result.update(
            {f"grad input {i}": x.grad.numpy() for i, x in enumerate(xs) if x.grad is not None}
        )
        return result

    home = (
        model_or_fn.parameters().__next__().backend
        if isinstance(model_or_fn, Module) and state
        else None
    )
    try:
        reference = run("numpy")
        report = {}
        for name in names:
            got = run(name)
            if set(got) != set(reference):
                raise AssertionError(
                    f"{name}: entries {sorted(got)}, the reference has {sorted(reference)}"
                )
            for k, v in reference.items():
                if got[k].shape != v.shape or got[k].dtype != v.dtype:
                    raise AssertionError(
                        f"{name}: {k} has shape {got[k].shape} and dtype {got[k].dtype}, "
                        f"the reference {v.shape} and {v.dtype}"
                    )
            report[name] = {
                k: float(np.max(np.abs(got[k] - v))) if v.size else 0.0
                for k, v in reference.items()
            }
    finally:
        if home is not None:
            model_or_fn.to(home)
            model_or_fn.load_state_dict(state)
    return report
