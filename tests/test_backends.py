"""Every accelerated backend against the NumPy reference, op by op, and its coverage."""

import pytest

import gpunn
from gpunn import backends
from gpunn.backends import Backend, backend_object
from gpunn.backends.numpy_backend import NumpyBackend
from gpunn.testing import OP_CASES, UPDATE_CASES, compare_op, compare_update


@pytest.mark.parametrize("layout", ["C", "strided"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", OP_CASES, ids=repr)
def test_op_matches_reference(accel_backend, case, dtype, layout):
    compare_op(accel_backend, case, dtype, layout, seed=3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", UPDATE_CASES, ids=repr)
def test_update_matches_reference(accel_backend, case, dtype):
    compare_update(accel_backend, case, dtype, seed=5)


def test_every_contract_op_has_a_case():
    covered = {c.op for c in OP_CASES} | {c.op for c in UPDATE_CASES}
    stems = {n.rsplit("_", 1)[0] for n in Backend.ops() if not n.endswith("_update")}
    stems |= {n for n in Backend.ops() if n.endswith("_update")}
    assert stems <= covered, f"ops without a test case: {sorted(stems - covered)}"


def test_reference_backend_is_complete():
    """The numpy backend is the reference itself: it overrides nothing, runs no gpunn kernel,
    and every op of the contract is written in Backend, a backward beside each forward."""
    be = backend_object("numpy")
    assert [n for n in vars(type(be)) if n in Backend.ops()] == []
    assert be.native_ops() == []
    for name in Backend.ops():
        assert callable(vars(Backend).get(name)), name
        if name.endswith("_forward"):
            assert callable(vars(Backend).get(name.replace("_forward", "_backward"))), name


# ---------------------------------------------------------------------- the helpers can fail
# Each fake backend below is the reference with one deliberate defect; each helper must
# catch it. Before these checks, every one of these defects passed.
class _OneFewerGradient(NumpyBackend):
    name = "broken"

    def mul_backward(self, dY, saved, needs):
        return super().mul_backward(dY, saved, needs)[:1]


class _GradientNotAskedFor(NumpyBackend):
    name = "broken"

    def add_backward(self, dY, saved, needs):
        return super().add_backward(dY, saved, (True, True))


class _WrongWhenOnlySomeNeeded(NumpyBackend):
    """Right when every gradient is asked for, wrong when only dA is."""

    name = "broken"

    def matmul_backward(self, dY, saved, needs):
        dA, dB = super().matmul_backward(dY, saved, needs)
        return (dA if needs[1] else 2 * dA), dB


class _OneElementInsteadOf0d(NumpyBackend):
    name = "broken"

    def mean_forward(self, X, axis=None, keepdims=False):
        Y, saved = super().mean_forward(X, axis, keepdims)
        return Y.reshape(1) if Y.ndim == 0 else Y, saved

    def mean_backward(self, dY, saved, needs):
        return super().mean_backward(dY.reshape(()) if dY.shape == (1,) else dY, saved, needs)


def _case(name):
    return next(c for c in OP_CASES if c.name == name)


def test_compare_op_fails_when_a_gradient_is_missing():
    with pytest.raises(AssertionError, match="1 gradients for 2 inputs"):
        compare_op(_OneFewerGradient(), _case("mul(4, 5)(4, 5)"))


def test_compare_op_fails_on_a_gradient_that_was_not_asked_for():
    compare_op(_GradientNotAskedFor(), _case("add(4, 5)(4, 5)"))  # every gradient asked for
    with pytest.raises(AssertionError, match="input 1, which was not asked for"):
        compare_op(_GradientNotAskedFor(), _case("add(4, 5)(4, 5)-grad-first-only"))


def test_run_case_asks_for_some_gradients_only():
    compare_op(_WrongWhenOnlySomeNeeded(), _case("matmul-2d"))
    with pytest.raises(AssertionError, match="backward input 0"):
        compare_op(_WrongWhenOnlySomeNeeded(), _case("matmul-2d-grad-first-only"))


def test_compare_backends_fails_on_a_wrong_output_shape(monkeypatch):
    monkeypatch.setitem(backends._instances, "broken", _OneElementInsteadOf0d())

    def fn(x):
        return x.mean()

    with pytest.raises(AssertionError, match=r"output 0 has shape \(1,\)"):
        gpunn.testing.compare_backends(fn, [gpunn.randn(3, 4)], backends=["broken"])


def test_every_multi_input_case_has_partial_gradient_variants():
    names = {c.name for c in OP_CASES}
    for base in ("linear-relu-n6-bias", "conv2d-n2c3", "lstm-cell", "mse", "stack-0"):
        for tag in ("first", "last"):
            assert any(n.startswith(base) and n.endswith(f"-grad-{tag}-only") for n in names)
