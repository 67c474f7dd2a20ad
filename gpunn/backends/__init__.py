"""Backend registry: which backends exist, which can run here, and which one is active.

The active backend only decides where *new* tensors are created. An op always runs on
the backend its inputs live on (``backend_of``), so tensors already on a device stay there.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

from gpunn.backends.base import Backend
from gpunn.errors import BackendError

# name -> (module, class). A backend joins by adding a line here.
_KNOWN = {
    "numpy": ("gpunn.backends.numpy_backend", "NumpyBackend"),
    "numba": ("gpunn.backends.numba_backend", "NumbaBackend"),
    "cupy": ("gpunn.backends.cupy_backend", "CupyBackend"),
}

_instances: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}
_default = os.environ.get("GPUNN_BACKEND", "numpy")
_active: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpunn_backend", default=None)


def known_backends() -> list[str]:
    """Every backend gpunn has, available here or not."""
    return list(_KNOWN)


def backend_object(name: str) -> Backend:
    """The backend instance called ``name``; raises :class:`BackendError` saying why it
    cannot run here (unknown name, missing package, no device)."""
    be = _instances.get(name)
    if be is not None:
        return be
    if name not in _KNOWN:
        raise BackendError(
            f"unknown backend {name!r}; available backends: {', '.join(available_backends())} "
            f"(gpunn knows {', '.join(_KNOWN)})"
        )
    if name in _unavailable:
        raise BackendError(_unavailable[name])
    module, cls = _KNOWN[name]
    try:
        be = getattr(importlib.import_module(module), cls)()
    except BackendError as e:
        _unavailable[name] = str(e)
        raise
    except ImportError as e:
        _unavailable[name] = f"backend {name!r} is unavailable: {e}"
        raise BackendError(_unavailable[name]) from e
    _instances[name] = be
    return be


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, reference first."""
    names = []
    for name in _KNOWN:
        try:
            backend_object(name)
        except BackendError:
            continue
        names.append(name)
    return names


def why_unavailable(name: str) -> str | None:
    """None if backend ``name`` runs here, else the reason it does not."""
    try:
        backend_object(name)
    except BackendError as e:
        return str(e)
    return None


def get_backend() -> str:
    """Name of the active backend: the innermost ``use_backend``, else ``set_backend``'s,
    else the environment variable ``GPUNN_BACKEND``, else ``"numpy"``."""
    return _active.get() or _default


def set_backend(name: str) -> None:
    """Make ``name`` the backend new tensors and parameters are created on."""
    global _default
    backend_object(name)
    _default = name


@contextlib.contextmanager
def use_backend(name: str):
    """``with gpunn.use_backend("numba"):`` creates new tensors on ``name`` inside the block.
    A context variable: other threads and tasks keep their own setting."""
    backend_object(name)
    token = _active.set(name)
    try:
        yield backend_object(name)
    finally:
        _active.reset(token)


def active_backend() -> Backend:
    """The active backend's instance."""
    return backend_object(get_backend())


__all__ = [
    "Backend",
    "active_backend",
    "available_backends",
    "backend_object",
    "get_backend",
    "known_backends",
    "set_backend",
    "use_backend",
    "why_unavailable",
]
