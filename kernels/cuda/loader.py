"""Find, compile and cache gpunn's CUDA kernels.

Each ``.cu`` file of this package holds kernels templated on the float type ``T``. One
table, :data:`KERNELS`, says which kernels each file defines, and one table,
:data:`DTYPES`, which template instance serves which NumPy dtype; together they give
every name expression (``relu_forward<float>``) that CuPy compiles and that
``python -m gpunn.kernels.cuda.compile_check`` checks without a GPU.

A file is compiled the first time one of its kernels is launched, through
``cupy.RawModule`` (NVRTC) with :data:`NVRTC_OPTIONS` and the file's name expressions;
CuPy caches the binary on disk (``CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``).
Importing this module needs neither CuPy nor a GPU.
"""

from __future__ import annotations

import re
from collections import Counter
from contextlib import contextmanager
from importlib import resources

import numpy as np
from gpunn.kernels import codes

#: dtype -> the C++ type of its template instance. The one place a dtype picks a kernel.
DTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}

#: The activation codes of common.cuh's ``gpunn::Activation`` (re-exported: the one table is
#: gpunn.kernels.codes).
ACTIVATION_CODES = codes.ACTIVATION_CODES

#: The header every file includes; the loader pastes it in place of the include line.
HEADER = "common.cuh"

#: source file -> the kernels it defines (each ``template <typename T> __global__``). The
#: file stems are the family modules of kernels/cpu; a kernel is named ``<op>_<forward|
#: backward|update>`` or ``<op>_<piece>`` (tests/test_kernel_names.py holds both trees to it).
KERNELS = {
    "elementwise.cu": (
        "add_forward",
        "sub_forward",
        "mul_forward",
        "div_forward",
        "pow_forward",
        "div_backward",
        "pow_backward",
        "neg_forward",
        "exp_forward",
        "exp_backward",
        "log_forward",
        "log_backward",
        "cast_forward",
    ),
    "activations.cu": (
        "sigmoid_forward",
        "sigmoid_backward",
        "tanh_forward",
        "tanh_backward",
        "relu_forward",
        "relu_backward",
        "step_forward",
        "leaky_relu_forward",
        "leaky_relu_backward",
        "gelu_forward",
        "gelu_backward",
    ),
    "linear.cu": ("linear_forward", "linear_backward"),
    "conv.cu": ("conv2d_im2col", "conv2d_output", "conv2d_grad_output", "conv2d_col2im"),
    "pooling.cu": (
        "max_pool2d_forward",
        "max_pool2d_backward",
        "avg_pool2d_forward",
        "avg_pool2d_backward",
    ),
    "softmax.cu": (
        "softmax_forward",
        "softmax_backward",
        "log_softmax_forward",
        "log_softmax_backward",
        "cross_entropy_forward",
        "cross_entropy_backward",
    ),
    "losses.cu": (
        "mse_loss_forward",
        "mse_loss_backward",
        "binary_cross_entropy_forward",
        "binary_cross_entropy_backward",
        "binary_cross_entropy_with_logits_forward",
        "binary_cross_entropy_with_logits_backward",
    ),
    "recurrent.cu": (
        "rnn_cell_forward",
        "rnn_cell_backward",
        "lstm_cell_forward",
        "lstm_cell_backward",
        "rnn_forward_step",
        "rnn_backward_step",
        "lstm_forward_step",
        "lstm_backward_step",
        "gru_forward_step",
        "gru_backward_step",
    ),
    "optim.cu": (
        "sgd_update",
        "adam_update",
        "clip_grad_norm_reduce",
        "clip_grad_norm_scale",
        "clip_grad_value_update",
    ),
    "dropout.cu": ("dropout_forward", "dropout_backward"),
    "normalization.cu": (
        "batch_norm_stats",
        "batch_norm_running",
        "batch_norm_forward",
        "batch_norm_backward",
        "layer_norm_forward",
        "layer_norm_backward",
        "layer_norm_affine_grad",
    ),
    "embedding.cu": ("embedding_forward", "embedding_backward", "embedding_backward_order"),
}

#: Options gpunn passes to NVRTC. CuPy appends ``-arch=sm_XY`` for the device, ``-ftz=true``
#: and ``--device-as-default-execution-space`` (see :data:`CUPY_ADDED_OPTIONS`).
#: ``--fmad=false`` keeps a*b + c as two roundings, as NumPy computes it.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false")

#: What CuPy 14 adds to the options of a RawModule compiled with NVRTC (besides the arch).
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

_INCLUDE = re.compile(r'^#include "' + re.escape(HEADER) + r'"\s*$', re.MULTILINE)
_KERNEL = re.compile(r"template <typename T>\s*__global__\s+void\s+(\w+)\s*\(")
_GLOBAL = re.compile(r"__global__\s+void\s+(\w+)\s*\(")


def read_source(name: str) -> str:
    """The text of ``name`` (a .cu or .cuh file of this package)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def source_files() -> list[str]:
    """Every .cu file shipped in this package."""
    root = resources.files(__package__)
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".cu"))


def module_source(name: str) -> str:
    """The full translation unit of ``name``: the header pasted where it is included."""
    body = read_source(name)
    header = read_source(HEADER)
    if not _INCLUDE.search(body):
        raise ValueError(f"{name} does not include {HEADER}")
    return _INCLUDE.sub(lambda _: header, body, count=1)


def declared_kernels(name: str) -> tuple[list[str], list[str]]:
    """(templated kernels, all __global__ functions) defined in ``name``, in file order."""
    body = read_source(name)
    return _KERNEL.findall(body), _GLOBAL.findall(body)


def instance_name(stem: str, dtype) -> str:
    """The name expression of kernel ``stem`` for arrays of ``dtype``."""
    return f"{stem}<{DTYPES[np.dtype(dtype)]}>"


def name_expressions(name: str) -> list[str]:
    """Every template instance of file ``name`` that the backend may launch."""
    return [f"{stem}<{ctype}>" for stem in KERNELS[name] for ctype in DTYPES.values()]


FILE_OF = {stem: name for name, stems in KERNELS.items() for stem in stems}

# The counters of the open count_launches() blocks; empty (one falsy test per launch) otherwise.
_counters: list[Counter] = []


@contextmanager
def count_launches():
    """Count kernel launches made through :meth:`KernelLoader.launch` inside the block.

    Yields a ``collections.Counter`` of kernel name (``"lstm_cell_forward"``, both dtypes
    together) -> launches so far; blocks may nest, each counts what runs inside it. Only
    gpunn's own kernels are counted: cuBLAS products and CuPy routines launch outside the
    loader::

        with count_launches() as launches:
            model(x).sum().backward()
        assert launches["lstm_cell_forward"] == T
    """
    counts: Counter = Counter()
    _counters.append(counts)
    try:
        yield counts
    finally:
        _counters.remove(counts)


class KernelLoader:
    """``loader(stem, dtype)`` -> the compiled ``cupy.RawKernel`` of that instance.

    Modules are compiled lazily, one per .cu file, the first time any of their kernels is
    asked for; functions are cached per (stem, dtype). Needs CuPy and a device.
    """

    def __init__(self, options=NVRTC_OPTIONS):
        self.options = tuple(options)
        self._modules: dict[str, object] = {}
        self._functions: dict[tuple[str, np.dtype], object] = {}

    def __call__(self, stem: str, dtype):
        fn = self._functions.get((stem, dtype))
        if fn is None:
            fn = self._load(stem, np.dtype(dtype))
            self._functions[(stem, dtype)] = fn
        return fn

    def launch(self, stem: str, dtype, grid: tuple, block: tuple, args: tuple) -> None:
        """Launch instance ``stem<dtype>`` on ``grid`` x ``block`` threads with ``args`` (on
        the current stream), counted by any open :func:`count_launches` block."""
        self(stem, dtype)(grid, block, args)
        for counts in _counters:
            counts[stem] += 1

    def module(self, name: str):
        """The RawModule of file ``name`` (compiled on first use of a kernel)."""
        mod = self._modules.get(name)
        if mod is None:
            import cupy

            mod = cupy.RawModule(
                code=module_source(name),
                options=self.options,
                name_expressions=name_expressions(name),
            )
            self._modules[name] = mod
        return mod

    def _load(self, stem: str, dtype: np.dtype):
        if dtype not in DTYPES:
            from gpunn.errors import DTypeError

            raise DTypeError(
                f"{stem}: no CUDA kernel for dtype {dtype}; kernels exist for "
                f"{', '.join(str(d) for d in DTYPES)}"
            )
        try:
            name = FILE_OF[stem]
        except KeyError:
            raise KeyError(f"no CUDA kernel named {stem!r}") from None
        return self.module(name).get_function(instance_name(stem, dtype))

    def precompile(self) -> None:
        """Compile every module and load every instance now (e.g. before timing)."""
        for stems in KERNELS.values():
            for stem in stems:
                for dtype in DTYPES:
                    self(stem, dtype)
