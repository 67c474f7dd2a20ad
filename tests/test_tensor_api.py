"""The Tensor API and the backend registry, including the errors users meet first."""

import os
import subprocess
import sys

import numpy as np
import pytest

import gpunn
from gpunn.errors import BackendError, DTypeError, ShapeError


def test_dtypes_follow_pytorch_conventions(backend):
    assert gpunn.tensor([1.0, 2.0], backend=backend).dtype == np.float32
    assert gpunn.tensor([1, 2], backend=backend).dtype == np.int64
    assert gpunn.tensor(np.zeros(3, np.float64), backend=backend).dtype == np.float64
    assert gpunn.tensor(np.arange(3), backend=backend).dtype == np.int64
    assert gpunn.zeros(2, 3, backend=backend).dtype == np.float32
    assert gpunn.randn(2, dtype="float64", backend=backend).dtype == np.float64


def test_tensor_copies_its_input():
    host = np.ones(3, np.float32)
    t = gpunn.tensor(host)
    host[0] = 5
    assert t.numpy()[0] == 1


def test_properties_and_conversions(backend):
    t = gpunn.tensor(np.arange(6, dtype=np.float32).reshape(2, 3), backend=backend)
    assert t.shape == (2, 3) and t.ndim == 2 and t.backend == backend and len(t) == 2
    assert t.sum().item() == 15.0
    np.testing.assert_array_equal(t.T.numpy(), np.arange(6).reshape(2, 3).T)
    np.testing.assert_array_equal(t.transpose(1, 0).numpy(), np.arange(6).reshape(2, 3).T)
    np.testing.assert_array_equal(t.reshape(3, 2).numpy(), np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(t[:, 1:3].numpy(), [[1, 2], [4, 5]])
    np.testing.assert_array_equal(t[1].numpy(), [3, 4, 5])
    assert t.double().dtype == np.float64 and t.long().dtype == np.int64
    np.testing.assert_array_equal(t.argmax(axis=1).numpy(), [2, 2])
    assert "backend=" in repr(t)


def test_operators_with_scalars_on_both_sides(backend):
    x = gpunn.tensor([1.0, 2.0, 4.0], backend=backend)
    np.testing.assert_allclose((2.0 - x).numpy(), [1, 0, -2])
    np.testing.assert_allclose((8.0 / x).numpy(), [8, 4, 2])
    np.testing.assert_allclose((x**2).numpy(), [1, 4, 16])
    np.testing.assert_allclose((2.0**x).numpy(), [2, 4, 16])
    np.testing.assert_allclose((-x).numpy(), [-1, -2, -4])
    assert (x * 3).dtype == np.float32


def test_sum_and_mean_take_int_or_tuple_axes(backend):
    x = gpunn.tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4), backend=backend)
    assert x.sum(axis=(0, 2)).shape == (3,)
    assert x.mean(axis=1, keepdims=True).shape == (2, 1, 4)
    np.testing.assert_allclose(x.mean(axis=-1).numpy(), np.arange(24).reshape(2, 3, 4).mean(-1))


def test_to_moves_between_backends():
    for name in gpunn.available_backends():
        t = gpunn.tensor([1.0, 2.0], requires_grad=True).to(name)
        assert t.backend == name and t.requires_grad
        np.testing.assert_array_equal(t.to("numpy").numpy(), [1.0, 2.0])


def test_use_backend_is_scoped_and_set_backend_is_global():
    with gpunn.use_backend("numpy"):
        assert gpunn.get_backend() == "numpy"
    gpunn.set_backend("numpy")
    assert gpunn.tensor([1.0]).backend == "numpy"


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(BackendError, match=r"unknown backend 'tpu'.*available backends: numpy"):
        gpunn.set_backend("tpu")


def test_cupy_without_cuda_says_why_and_how_to_install():
    reason = gpunn.backends.why_unavailable("cupy")
    if reason is None:
        pytest.skip("CuPy and a CUDA device are present, so the cupy backend is available")
    assert "cupy" in reason.lower()
    assert "pip install" in reason or "no CUDA device" in reason
    with pytest.raises(BackendError):
        gpunn.set_backend("cupy")


def test_environment_variable_picks_the_default_backend():
    code = "import gpunn; print(gpunn.get_backend(), gpunn.tensor([1.0]).backend)"
    env = dict(os.environ, GPUNN_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["numpy", "numpy"], out.stderr


def test_mixing_backends_names_both():
    others = [b for b in gpunn.available_backends() if b != "numpy"]
    if not others:
        pytest.skip("only the numpy backend is available here")
    a = gpunn.tensor([1.0, 2.0], backend="numpy")
    b = gpunn.tensor([1.0, 2.0], backend=others[0])
    with pytest.raises(BackendError, match=rf"add: .*'numpy'.*'{others[0]}'"):
        a + b


def test_shape_errors_name_the_op_and_both_shapes():
    with pytest.raises(ShapeError, match=r"add: shapes \(2, 3\) and \(4,\) do not broadcast"):
        gpunn.zeros(2, 3) + gpunn.zeros(4)
    with pytest.raises(ShapeError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        gpunn.zeros(2, 3) @ gpunn.zeros(4, 5)
    with pytest.raises(
        ShapeError, match=r"reshape: cannot reshape a tensor of shape \(2, 3\) into \(4,\)"
    ):
        gpunn.zeros(2, 3).reshape(4)


def test_integer_and_mixed_dtypes_are_refused_by_float_ops():
    with pytest.raises(DTypeError, match="exp: input 0 has dtype int64"):
        gpunn.tensor([1, 2]).exp()
    with pytest.raises(DTypeError, match="mul: inputs mix float32 and float64"):
        gpunn.zeros(2) * gpunn.zeros(2, dtype="float64")
    with pytest.raises(DTypeError):
        gpunn.tensor([1, 2], requires_grad=True)


def test_dlpack_round_trip_with_numpy():
    t = gpunn.tensor([1.0, 2.0, 3.0])
    arr = np.from_dlpack(t)
    np.testing.assert_array_equal(arr, [1, 2, 3])
    back = gpunn.from_dlpack(np.arange(3.0))
    assert back.dtype == np.float64 and back.numpy()[2] == 2.0


def test_tensor_exposes_its_backend_object(backend):
    x = gpunn.zeros(2, backend=backend)
    be = x.backend_object
    assert be.name == x.backend == backend and be.is_native(x.data)


def test_to_moves_a_leaf_in_place_with_its_gradient():
    x = gpunn.tensor([1.0, 2.0], backend="numpy", requires_grad=True)
    (x * x).sum().backward()
    other = [b for b in gpunn.available_backends() if b != "numpy"] or ["numpy"]
    assert x.to_(other[0]) is x
    assert x.backend == other[0] and x.grad.backend == other[0] and x.requires_grad
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])
    with pytest.raises(gpunn.GraphError, match="only leaf tensors"):
        (x * 2).to_("numpy" if other[0] != "numpy" else "numba")


def test_set_replaces_the_data_of_a_leaf(backend):
    x = gpunn.zeros(3, backend=backend, requires_grad=True)
    be = x.backend_object
    assert x.set_(be.asarray(np.ones((2, 2), np.float64))) is x
    assert x.shape == (2, 2) and x.dtype == np.float64
    with pytest.raises(TypeError, match="native"):
        x.set_([1.0])
    with pytest.raises(DTypeError):
        x.set_(be.asarray(np.arange(3)))
    with pytest.raises(gpunn.GraphError, match="only leaf tensors"):
        (x + 1).set_(be.asarray(np.ones(2)))


def test_random_draws_are_tensors_on_the_requested_backend(backend):
    gpunn.manual_seed(3)
    a = gpunn.randn(2, 3, backend=backend)
    gpunn.manual_seed(3)
    b = gpunn.randn((2, 3), backend="numpy", dtype="float64")
    assert a.backend == backend and a.dtype == np.float32 and b.shape == (2, 3)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert gpunn.rand(backend=backend).shape == ()
    creation = sys.modules["gpunn.tensor"]  # the public names live beside zeros and ones
    assert (gpunn.randn, gpunn.rand, gpunn.zeros) == (creation.randn, creation.rand, creation.zeros)


def test_random_module_imports_nothing_from_gpunn():
    import ast
    import inspect

    import gpunn.random

    tree = ast.parse(inspect.getsource(gpunn.random))
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    ]
    assert not [m for m in imported if m and m.split(".")[0] == "gpunn"], imported
