"""Every backend holds to the contract of gpunn.backends.base: an override has the base
method's parameters, no backend adds op-like methods outside the contract, and every CPU
kernel is named after an op stem."""

import importlib
import inspect

import pytest

from gpunn.backends import Backend, why_unavailable

CLASSES = {
    "numpy": ("gpunn.backends.numpy_backend", "NumpyBackend"),
    "numba": ("gpunn.backends.numba_backend", "NumbaBackend"),
    "cupy": ("gpunn.backends.cupy_backend", "CupyBackend"),  # imports without CuPy
}


def backend_class(name):
    module, cls = CLASSES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        pytest.skip(f"{module} does not import here: {e}")


def parameters(fn):
    """(name, kind, default) of every parameter, ``self`` included."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_overrides_keep_the_contract_signature(name):
    cls = backend_class(name)
    checked = 0
    for op in Backend.ops():
        method = getattr(cls, op)
        if method is getattr(Backend, op):
            continue
        assert parameters(method) == parameters(getattr(Backend, op)), (
            f"{name}.{op}{inspect.signature(method)} differs from the contract's "
            f"{op}{inspect.signature(getattr(Backend, op))}"
        )
        checked += 1
    assert checked > 0 or name == "numpy"


def test_the_signature_check_sees_a_changed_default():
    class Drifted(Backend):
        def softmax_forward(self, X, axis=1):
            return super().softmax_forward(X, axis)

    assert parameters(Drifted.softmax_forward) != parameters(Backend.softmax_forward)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_no_op_like_method_outside_the_contract(name):
    cls = backend_class(name)
    ops = set(Backend.ops())
    own = {
        n
        for klass in cls.__mro__
        if klass is not Backend and issubclass(klass, Backend)
        for n in vars(klass)
        if not n.startswith("_") and n.endswith(("_forward", "_backward", "_update"))
    }
    assert own <= ops, f"{name} has op-like methods outside the contract: {sorted(own - ops)}"


@pytest.mark.skipif(why_unavailable("numba") is not None, reason="the numba backend is unavailable")
def test_every_cpu_kernel_is_named_after_an_op_stem():
    """``<op stem>_<forward|backward|update>`` or ``<op stem>_<piece>`` (conv2d_im2col)."""
    from gpunn.kernels.cpu import warmup

    stems = {op.rsplit("_", 1)[0] for op in Backend.ops()} | {
        op for op in Backend.ops() if op.endswith("_update")
    }
    for key in warmup.table():
        kernel = key.split(".")[1]
        assert kernel in Backend.ops() or any(kernel.startswith(s + "_") for s in stems), key
