"""Tensor: a backend's native array plus what autograd needs to know about it."""

from __future__ import annotations

import numpy as np

from gpunn import autograd
from gpunn import random as _random
from gpunn.backends import active_backend, backend_object
from gpunn.errors import DTypeError, GraphError
from gpunn.tensor_math import TensorMath


class Tensor(TensorMath):
    """An n-dimensional array on one backend, with an optional gradient.

    Create tensors with :func:`gpunn.tensor`, :func:`gpunn.zeros`, :func:`gpunn.randn`.
    ``.data`` is the backend's native array (an ndarray, or a CuPy array on "cupy").
    """

    __slots__ = (
        "data",
        "_be",
        "_requires_grad",
        "grad",
        "_node",
        "_out_index",
        "_hooks",
        "__weakref__",
    )

    def __init__(self, data, backend=None, requires_grad=False):
        be = backend_object(backend) if isinstance(backend, str) else (backend or active_backend())
        if not be.is_native(data):
            raise TypeError(
                f"Tensor expects a native {be.name} array; use gpunn.tensor(data) to convert"
            )
        self.data = data
        self._be = be
        self.grad = None
        self._node = None
        self._out_index = 0
        self._hooks = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, data, be, requires_grad):
        t = object.__new__(cls)
        t.data = data
        t._be = be
        t._requires_grad = requires_grad
        t.grad = None
        t._node = None
        t._out_index = 0
        t._hooks = None
        return t

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        """Name of the backend the data lives on."""
        return self._be.name

    @property
    def backend_object(self):
        """The :class:`~gpunn.backends.Backend` instance the data lives on: its ops, its
        array module ``xp`` and its allocation helpers (``zeros``, ``asarray``, ``copy``)."""
        return self._be

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return int(self.data.size)

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and self.data.dtype.kind != "f":
            raise DTypeError(f"only floating-point tensors can require grad, not {self.data.dtype}")
        if not value and self._node is not None:
            raise GraphError(
                "requires_grad can only be switched off on leaf tensors; use .detach()"
            )
        self._requires_grad = bool(value)

    def register_post_accumulate_grad_hook(self, hook) -> None:
        """Call ``hook(tensor)`` after each backward pass has added to this leaf's ``.grad``
        (once per pass, however often the leaf was used)."""
        if self._node is not None:
            raise GraphError("hooks can only be registered on leaf tensors")
        self._hooks = (self._hooks or ()) + (hook,)

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        """The node that made this tensor (None for leaves)."""
        return self._node

    # ------------------------------------------------------------------ conversions
    def numpy(self) -> np.ndarray:
        """The values as a host ndarray (a copy for device backends)."""
        return self._be.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, not shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same data, cut off from the graph (never requires grad)."""
        return Tensor._wrap(self.data, self._be, False)

    def to(self, backend: str) -> Tensor:
        """A copy on ``backend`` (the tensor itself when already there). The copy is a leaf
        that keeps ``requires_grad``."""
        be = backend_object(backend)
        if be is self._be:
            return self
        data = be.asarray(self.numpy())
        return Tensor._wrap(data, be, self._requires_grad)

    def to_(self, backend: str) -> Tensor:
        """Move this leaf to ``backend`` in place (data and gradient); returns self. What
        ``Module.to`` uses, so that references to the tensor (an optimizer's) stay valid."""
        be = backend_object(backend)
        if be is self._be:
            return self
        self._check_leaf("to_")
        data = be.asarray(self.numpy())
        grad = None if self.grad is None else self.grad.to(backend)
        self.data, self._be, self.grad = data, be, grad
        return self

    def set_(self, data) -> Tensor:
        """Replace this leaf's data in place by ``data``, a native array of the tensor's
        backend (any shape or float dtype); returns self. The gradient is left as it is:
        reset it when the shape or dtype changes."""
        self._check_leaf("set_")
        if not self._be.is_native(data):
            raise TypeError(
                f"set_: expected a native {self._be.name} array, got {type(data).__name__}"
            )
        if self._requires_grad and data.dtype.kind != "f":
            raise DTypeError(f"set_: a tensor that requires grad cannot hold {data.dtype} data")
        self.data = data
        return self

    def _check_leaf(self, what: str) -> None:
        if self._node is not None:
            raise GraphError(
                f"{what}: only leaf tensors can change in place (this one is the output of "
                f"{self._node.op!r}); use .detach() first"
            )

    def astype(self, dtype) -> Tensor:
        """A differentiable cast between float dtypes; other casts are plain copies."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if dtype.kind == "f" and self.dtype.kind == "f":
            return autograd.apply("cast", self, dtype=dtype)
        return Tensor._wrap(self._be.astype(self.data, dtype), self._be, False)

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def long(self) -> Tensor:
        return self.astype(np.int64)

    def argmax(self, axis=None) -> Tensor:
        """Index of the largest value along ``axis`` (int64; not differentiable)."""
        return Tensor._wrap(self._be.argmax(self.data, axis), self._be, False)

    # ------------------------------------------------------------------ autograd
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Compute the gradient of this tensor with respect to every leaf that requires grad,
        adding it to the leaf's ``.grad``. ``grad`` defaults to 1 for a one-element tensor."""
        if not self._requires_grad:
            raise GraphError(
                "backward() on a tensor that does not require grad (no input of the graph "
                "had requires_grad=True, or it was computed under no_grad())"
            )
        if grad is None:
            if self.size != 1:
                raise GraphError(
                    f"backward() on a non-scalar tensor of shape {self.shape} needs a gradient "
                    "of the same shape: call backward(grad) or reduce to a scalar first"
                )
            g = self._be.full(self.data.shape, 1, self.dtype)
        else:
            g = grad.data if isinstance(grad, Tensor) else self._be.asarray(grad, self.dtype)
            if tuple(g.shape) != self.shape:
                raise GraphError(
                    f"backward(): gradient of shape {tuple(g.shape)} for a tensor of shape "
                    f"{self.shape}"
                )
        autograd.backward(self, g, retain_graph=retain_graph)

    def __repr__(self):
        grad = ", requires_grad=True" if self._requires_grad else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, backend={self.backend!r}, dtype={self.dtype}{grad})"

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __dlpack__(self, *args, **kwargs):
        """Export the data through DLPack (zero-copy) to PyTorch, CuPy or NumPy."""
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()


def _default_float_dtype(data):
    """Python floats become float32; arrays and integers keep their dtype (as PyTorch does)."""
    if isinstance(data, np.ndarray) or hasattr(data, "__array_interface__"):
        return None
    arr = np.asarray(data)
    return np.float32 if arr.dtype == np.float64 else None


def tensor(data, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """A new leaf tensor with a copy of ``data`` on ``backend`` (default: the active one).

    ``data``: a nested list, a scalar, an ndarray (its dtype is kept), or a Tensor.
    Python floats default to float32, Python ints to int64.
    """
    be = backend_object(backend) if backend is not None else active_backend()
    if isinstance(data, Tensor):
        host = data.numpy()
    elif be.is_native(data):
        host = data
    else:
        host = np.asarray(data)
        if dtype is None:
            dtype = _default_float_dtype(data)
    arr = be.copy(be.asarray(host, dtype=dtype))
    return Tensor(arr, be, requires_grad=requires_grad)


def from_dlpack(obj, backend=None) -> Tensor:
    """A tensor sharing memory with ``obj`` (a PyTorch, CuPy or NumPy array) via DLPack."""
    be = backend_object(backend) if backend is not None else active_backend()
    return Tensor(be.xp.from_dlpack(obj), be)


def _filled(shape, value, dtype, backend, requires_grad):
    shape = _shape(shape)
    be = backend_object(backend) if backend is not None else active_backend()
    arr = be.full(shape, value, np.dtype(dtype or np.float32))
    return Tensor(arr, be, requires_grad=requires_grad)


def _shape(shape) -> tuple:
    """``f(2, 3)`` and ``f((2, 3))`` both mean shape (2, 3)."""
    return tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape


def _from_host(host, dtype, backend, requires_grad) -> Tensor:
    be = backend_object(backend) if backend is not None else active_backend()
    arr = be.asarray(np.asarray(host).astype(dtype or np.float32))
    return Tensor(arr, be, requires_grad=requires_grad)


def zeros(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """A tensor of zeros, float32 unless ``dtype`` says otherwise."""
    return _filled(shape, 0, dtype, backend, requires_grad)


def ones(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """A tensor of ones, float32 unless ``dtype`` says otherwise."""
    return _filled(shape, 1, dtype, backend, requires_grad)


# Random tensors: drawn on the host from gpunn's one generator, then moved to the backend,
# so the same seed gives the same values on every backend.
def randn(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Standard normal samples, float32 unless ``dtype`` says otherwise."""
    draw = _random.generator().standard_normal(_shape(shape))
    return _from_host(draw, dtype, backend, requires_grad)


def rand(*shape, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Uniform samples in [0, 1), float32 unless ``dtype`` says otherwise."""
    return _from_host(_random.generator().random(_shape(shape)), dtype, backend, requires_grad)


def uniform(shape, low, high, dtype=None, backend=None, requires_grad=False) -> Tensor:
    """Uniform samples in [low, high): PyTorch's default layer initialisation."""
    draw = _random.generator().uniform(low, high, tuple(shape))
    return _from_host(draw, dtype, backend, requires_grad)
