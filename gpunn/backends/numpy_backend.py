"""The NumPy reference backend: the oracle every other backend is held to."""

from gpunn.backends.base import Backend


class NumpyBackend(Backend):
    """Plain NumPy; every op is the readable reference of :class:`Backend`."""

    name = "numpy"
