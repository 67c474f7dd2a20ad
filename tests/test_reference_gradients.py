"""The reference backend against finite differences, for every op case, in float64.

Every other backend is compared with the reference, so this is what makes all of them right.
"""

import numpy as np
import pytest

from gpunn.backends import backend_object
from gpunn.testing import OP_CASES
from gpunn.testing.cases import input_needs

EPS = 1e-6


def _scalar(be, case, inputs, weights):
    Y, _ = getattr(be, case.op + "_forward")(*inputs, **case.params)
    Ys = Y if isinstance(Y, tuple) else (Y,)
    return sum(float((y * w).sum()) for y, w in zip(Ys, weights))


@pytest.mark.parametrize("case", [c for c in OP_CASES if c.op != "cast"], ids=repr)
def test_reference_backward_matches_finite_differences(case):
    ref = backend_object("numpy")
    rng = np.random.default_rng(7)
    inputs = case.make(rng, np.float64)
    Y, saved = getattr(ref, case.op + "_forward")(*inputs, **case.params)
    Ys = Y if isinstance(Y, tuple) else (Y,)
    weights = tuple(rng.standard_normal(y.shape) for y in Ys)
    needs = input_needs(case, inputs)
    grads = getattr(ref, case.op + "_backward")(
        weights if isinstance(Y, tuple) else weights[0], saved, needs
    )
    assert len(grads) == len(inputs), f"{case.name}: one gradient per input"
    checked = 0
    for i, x in enumerate(inputs):
        if not needs[i]:
            assert grads[i] is None, f"{case.name}: a gradient for input {i}, not asked for"
            continue
        numeric = np.zeros_like(x)
        for k in range(x.size):
            old = x.flat[k]
            x.flat[k] = old + EPS
            up = _scalar(ref, case, inputs, weights)
            x.flat[k] = old - EPS
            down = _scalar(ref, case, inputs, weights)
            x.flat[k] = old
            numeric.flat[k] = (up - down) / (2 * EPS)
        if case.op == "embedding" and case.params.get("padding_idx") is not None:
            numeric[case.params["padding_idx"]] = 0  # PyTorch's rule: no gradient, though read
        assert grads[i] is not None, f"{case.name}: no gradient for input {i}"
        assert grads[i].shape == x.shape
        np.testing.assert_allclose(
            grads[i], numeric, rtol=1e-5, atol=1e-6, err_msg=f"{case.name}: input {i}"
        )
        checked += 1
    assert checked > 0


def test_cast_backward_returns_the_input_dtype():
    ref = backend_object("numpy")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y, saved = ref.cast_forward(x, np.float64)
    assert y.dtype == np.float64
    (dx,) = ref.cast_backward(np.ones_like(y), saved, (True,))
    assert dx.dtype == np.float32 and np.array_equal(dx, np.ones((2, 3)))
