"""How gpunn compiles its CPU kernels: the disk cache, the threading layer, one decorator.

Importing this module (the kernel modules do) settles three things before any kernel
is decorated:

* the cache folder: ``GPUNN_CACHE_DIR`` becomes ``NUMBA_CACHE_DIR``; without it Numba's
  own rule applies (``__pycache__`` next to the sources, else a per-user folder). Where
  the folder cannot be written, gpunn warns once and compiles in memory (``cache=False``).
* the threading layer: a thread-safe one (TBB, else OpenMP) unless the user chose one with
  ``NUMBA_THREADING_LAYER`` or Numba's threads were already started. TBB (the ``tbb``
  wheel, a dependency on x86-64) comes first: its idle threads sleep, where OpenMP's spin
  against any other OpenMP runtime in the process, such as PyTorch's. When only
  ``workqueue`` is left (it aborts the process when two Python threads enter parallel
  code, and costs milliseconds per launch), kernels compile without ``parallel`` and
  ``prange`` runs as a plain loop, so gpunn never enters parallel code at all.
* the cache stamp: Numba keys a cached kernel on its own file only, so a kernel would keep
  stale code inlined from ``_vmath.py`` or from this file. Each cached kernel's stamp also
  covers those two files.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import tempfile
import types
import warnings
from pathlib import Path

_here = Path(__file__).resolve().parent

_cache_dir = os.environ.get("GPUNN_CACHE_DIR")
if _cache_dir:
    os.environ["NUMBA_CACHE_DIR"] = _cache_dir  # read by numba.config at its import

import numba  # noqa: E402
import numba.np.ufunc.parallel as _numba_parallel  # noqa: E402

#: Whether compiled kernels go to a disk cache; ``cache_problem`` says why not.
CACHE = True
cache_problem: str | None = None


def _writable(path: str) -> str | None:
    """None if ``path`` can hold cache files, else the reason it cannot."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def _disable_cache(reason: str) -> None:
    global CACHE, cache_problem
    if CACHE:
        CACHE = False
        cache_problem = reason
        warnings.warn(
            f"gpunn: Numba kernels cannot be cached on disk ({reason}); compiling them in "
            "memory for this process instead. Set GPUNN_CACHE_DIR to a writable folder to "
            "keep compiled kernels between runs.",
            RuntimeWarning,
            stacklevel=3,
        )


if _cache_dir:
    numba.config.CACHE_DIR = _cache_dir  # when Numba was imported before gpunn
    _why = _writable(_cache_dir)
    if _why:
        _disable_cache(f"GPUNN_CACHE_DIR={_cache_dir!r} is not writable: {_why}")


def cache_dir() -> str | None:
    """The folder kernels are cached in: GPUNN_CACHE_DIR / NUMBA_CACHE_DIR, else None
    (Numba's default: ``__pycache__`` beside the kernel sources, or a per-user folder)."""
    if not CACHE:
        return None
    return numba.config.CACHE_DIR or None


# ---------------------------------------------------------------------- threading layer
#: GNU OpenMP's spin count for Numba's threads, unless the user set OMP_WAIT_POLICY or
#: GOMP_SPINCOUNT. libgomp's default (300000 spins, milliseconds) keeps an idle Numba
#: thread burning a core after each parallel loop, right when BLAS's threads need it.
GOMP_SPINCOUNT = "10000"


def _launch_threads() -> None:
    """Start Numba's threads; libgomp reads its settings from the environment when it
    loads, so a spin count is set just for that moment (other OpenMP copies, such as
    PyTorch's, load later with the user's environment)."""
    user_set = {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ)
    if not user_set:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    try:
        _numba_parallel._launch_threads()
    finally:
        if not user_set:
            os.environ.pop("GOMP_SPINCOUNT", None)


def _preload_tbb() -> None:
    """Load the TBB library that the ``tbb`` wheel put in ``<prefix>/lib``, by its path, so
    that Numba's TBB layer finds it by name: the loader searches that folder for the
    interpreter's own prefix but not for a virtual environment's."""
    if not sys.platform.startswith("linux"):
        return
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                continue
            return


def _choose_threading_layer() -> str:
    try:
        return numba.threading_layer()  # Numba's threads already run: keep their layer
    except ValueError:
        pass
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"  # TBB, else OpenMP
        _preload_tbb()
    try:
        _launch_threads()
    except ValueError:  # no thread-safe layer could be loaded
        numba.config.THREADING_LAYER = "workqueue"
        _launch_threads()
    return numba.threading_layer()


#: The Numba threading layer in use ("tbb", "omp" or "workqueue").
THREADING_LAYER = _choose_threading_layer()
#: Whether kernels marked parallel really run ``prange`` loops on several threads.
PARALLEL = THREADING_LAYER != "workqueue"


# ---------------------------------------------------------------------- the decorator
def _source_hash() -> bytes:
    digest = hashlib.sha256()
    for name in ("_jit.py", "_vmath.py"):
        digest.update((_here / name).read_bytes())
    return digest.digest()


_DEPENDENCY_STAMP = _source_hash()

#: Every kernel dispatcher, by "module.function" ("/parallel" for parallel variants).
REGISTRY: dict[str, object] = {}

#: Floating-point flags that keep NaN and infinity semantics (no nnan/ninf/afn): FMA
#: contraction, reassociation (vectorised reductions), no signed zeros.
FASTMATH = frozenset({"contract", "reassoc", "nsz"})


def _compile(fn, parallel: bool, fastmath):
    options = dict(nogil=True, error_model="numpy", fastmath=fastmath, parallel=parallel)
    if CACHE:
        try:
            disp = numba.njit(cache=True, **options)(fn)
        except RuntimeError as e:  # "cannot cache function ...: no locator available"
            _disable_cache(str(e))
        else:
            _stamp(disp)
            return disp
    return numba.njit(cache=False, **options)(fn)


def _stamp(disp) -> None:
    """Make the cached entry of ``disp`` stale when _jit.py or _vmath.py change (Numba
    only checks the kernel's own file). Private Numba attributes: skipped if they move."""
    cache_file = getattr(getattr(disp, "_cache", None), "_cache_file", None)
    if cache_file is not None and hasattr(cache_file, "_source_stamp"):
        cache_file._source_stamp = (cache_file._source_stamp, _DEPENDENCY_STAMP)


def _renamed(fn, suffix: str):
    """A copy of ``fn`` whose qualified name ends in ``suffix``. Numba keys its disk cache on
    a function's module, name, line and code, not on the compile options: compiled from the
    same function, the serial and parallel variants would share cache entries, and a
    serial kernel could load the parallel machine code (which aborts the process under the
    workqueue layer when two Python threads call it)."""
    copy = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class ParallelKernel:
    """A kernel compiled twice from one function: ``serial`` (``prange`` as a plain loop,
    for small inputs, no thread launch) and ``parallel`` (``prange`` across threads, cached
    under its own name)."""

    def __init__(self, fn, fastmath):
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.serial = _compile(fn, False, fastmath)
        self.parallel = (
            _compile(_renamed(fn, "__parallel"), True, fastmath) if PARALLEL else self.serial
        )

    def __call__(self, *args):
        return self.serial(*args)

    def __repr__(self):
        return f"<gpunn CPU kernel {self.__name__} (serial + parallel)>"


def kernel(fn=None, *, parallel: bool = False, fastmath=False):
    """Compile ``fn`` as a gpunn CPU kernel: nopython, no GIL, NumPy's float error model
    (x/0 gives inf, not an exception), cached on disk when possible.

    ``parallel=True`` returns a :class:`ParallelKernel` (``.serial`` and ``.parallel``);
    ``fastmath=True`` allows :data:`FASTMATH` (use it for reductions).
    """

    def wrap(f):
        flags = set(FASTMATH) if fastmath else False
        name = f"{f.__module__.rsplit('.', 1)[-1]}.{f.__name__}"
        if parallel:
            k = ParallelKernel(f, flags)
            REGISTRY[name] = k.serial
            if k.parallel is not k.serial:
                REGISTRY[name + "/parallel"] = k.parallel
            return k
        disp = _compile(f, False, flags)
        REGISTRY[name] = disp
        return disp

    return wrap(fn) if fn is not None else wrap
