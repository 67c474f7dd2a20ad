"""Every accelerated backend against the NumPy reference, op by op, and its coverage."""

import pytest

from gpunn.backends import Backend, backend_object
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
