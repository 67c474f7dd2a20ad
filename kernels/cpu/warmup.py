"""Ahead-of-time compilation of every CPU kernel, from the signature tables beside them.

Each kernel module declares ``SIGNATURES``: kernel name -> the argument types of each form
the launchers call it with (``gpunn.kernels.cpu._types``; ``{T}`` is the float dtype).
:func:`warmup` compiles every entry for float32 and float64, serial and parallel variants
(loaded from the disk cache when it holds them), so adding a test case changes nothing here.
"""

from __future__ import annotations

import importlib

from gpunn.kernels.cpu import _jit
from numba.core import sigutils

#: The kernel modules, one per op family.
MODULES = (
    "elementwise",
    "activations",
    "linear",
    "conv",
    "pooling",
    "softmax",
    "losses",
    "recurrent",
    "optim",
    "dropout",
    "shape",
    "normalization",
    "embedding",
)
DTYPES = ("float32", "float64")


def table() -> dict[str, list[tuple[str, ...]]]:
    """{"module.kernel": [argument type strings per call form]} over every kernel module."""
    out = {}
    for name in MODULES:
        module = importlib.import_module(f"gpunn.kernels.cpu.{name}")
        for kernel, forms in module.SIGNATURES.items():
            out[f"{name}.{kernel}"] = forms
    return out


def _dispatchers(key):
    """The compiled variants of kernel ``key`` ("module.kernel"): serial, and parallel
    where Numba runs parallel loops."""
    module, name = key.split(".")
    kern = getattr(importlib.import_module(f"gpunn.kernels.cpu.{module}"), name)
    serial = getattr(kern, "serial", kern)
    parallel = getattr(kern, "parallel", serial)
    return [serial] if parallel is serial else [serial, parallel]


def warmup(verbose: bool = False) -> dict:
    """Compile every kernel of the table for float32 and float64, serial and parallel
    variants. Returns :func:`kernel_report`."""
    for dtype in DTYPES:
        if verbose:
            print(f"gpunn warmup: compiling the CPU kernels for {dtype}", flush=True)
        for key, forms in table().items():
            for form in forms:
                sig = sigutils.normalize_signature(
                    "(" + ", ".join(t.format(T=dtype) for t in form) + ",)"
                )[0]
                for disp in _dispatchers(key):
                    disp.compile(sig)
    return kernel_report()


def kernel_report() -> dict:
    """{"kernels": number of kernel dispatchers, "signatures": compiled signatures,
    "missing": kernels lacking a float32 or a float64 version (empty after warmup)}."""
    table()  # imports every kernel module, so the registry is complete
    missing = []
    signatures = 0
    for name, disp in _jit.REGISTRY.items():
        sigs = disp.signatures
        signatures += len(sigs)
        text = " ".join(str(s) for s in sigs)
        if "float32" not in text or "float64" not in text:
            missing.append(name)
    return {"kernels": len(_jit.REGISTRY), "signatures": signatures, "missing": missing}
