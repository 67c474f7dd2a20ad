"""Shared fixtures: the backend matrix every backend joins by registering."""

import os

import pytest

import gpunn
from gpunn.backends import available_backends, backend_object

# GPUNN_TEST_BACKENDS=numpy,numba restricts the matrix (e.g. on a machine with a GPU).
_wanted = os.environ.get("GPUNN_TEST_BACKENDS")
BACKENDS = [b for b in available_backends() if not _wanted or b in _wanted.split(",")]
ACCELERATED = [b for b in BACKENDS if b != "numpy"]


def _param(name):
    return pytest.param(name, marks=[pytest.mark.cuda] if name == "cupy" else [], id=name)


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", [_param(b) for b in BACKENDS])
    if "accel_backend" in metafunc.fixturenames:
        metafunc.parametrize("accel_backend", [_param(b) for b in ACCELERATED])


@pytest.fixture
def ref():
    return backend_object("numpy")


@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    gpunn.manual_seed(0)
    before = gpunn.get_backend()
    yield
    gpunn.set_backend(before)
