"""The CUDA kernel loader's tables, checked without a GPU: every .cu kernel is listed, every
listed kernel exists and is launched by the backend, every dtype has its instance, and NVRTC
compiles every instance exactly as CuPy will."""

import re
from importlib import resources

import numpy as np
import pytest
from gpunn.kernels import codes
from gpunn.kernels.cuda import compile_check, loader

from gpunn.backends.base import ACTIVATIONS, FLOAT_DTYPES


def test_table_matches_the_sources():
    assert compile_check.check_table() == []


def test_every_float_dtype_has_an_instance():
    assert set(loader.DTYPES) == set(FLOAT_DTYPES)
    assert sorted(loader.DTYPES.values()) == ["double", "float"]


def test_name_expressions_cover_every_kernel_and_dtype():
    for name, stems in loader.KERNELS.items():
        exprs = loader.name_expressions(name)
        assert len(exprs) == len(set(exprs)) == len(stems) * len(loader.DTYPES)
        for stem in stems:
            for dtype in loader.DTYPES:
                assert loader.instance_name(stem, dtype) in exprs


def test_kernel_names_are_unique_across_files():
    stems = [s for stems in loader.KERNELS.values() for s in stems]
    assert len(stems) == len(set(stems)) == len(loader.FILE_OF)


def test_sources_ship_as_package_data_and_paste_the_header():
    files = loader.source_files()
    assert files == sorted(loader.KERNELS)
    assert resources.files("gpunn.kernels.cuda").joinpath(loader.HEADER).is_file()
    for name in files:
        src = loader.module_source(name)
        assert '#include "common.cuh"' not in src
        assert "GPUNN_COMMON_CUH" in src


def test_launch_counter_counts_per_kernel_name_without_a_gpu():
    """KernelLoader.launch counts inside count_launches() blocks (nested ones too), with the
    compiled function mocked; outside any block nothing is recorded."""
    calls = []
    kernels = loader.KernelLoader()
    kernels._load = lambda stem, dtype: lambda grid, block, args: calls.append((stem, grid, args))
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    kernels.launch("relu_forward", f32, (1,), (256,), ("x",))  # not counted
    with loader.count_launches() as outer:
        kernels.launch("relu_forward", f32, (2,), (256,), ("y",))
        with loader.count_launches() as inner:
            kernels.launch("relu_forward", f64, (1,), (256,), ())
            kernels.launch("lstm_cell_forward", f32, (1,), (256,), ())
        kernels.launch("sgd_update", f32, (1,), (256,), ())
    kernels.launch("relu_forward", f32, (1,), (256,), ())  # not counted
    assert inner == {"relu_forward": 1, "lstm_cell_forward": 1}
    assert outer == {"relu_forward": 2, "lstm_cell_forward": 1, "sgd_update": 1}
    assert len(calls) == 6 and calls[1] == ("relu_forward", (2,), ("y",))
    assert loader._counters == []


def test_backend_names_only_listed_kernels():
    """Every kernel name the launch code and the backend pass is in the loader's table.
    (That every kernel IS launched is checked by running the op table under emulation:
    tests/test_cuda_emulated.py.)"""
    for pkg, name in (("gpunn.backends", "cupy_backend.py"), ("gpunn.kernels.cuda", "launch.py")):
        text = resources.files(pkg).joinpath(name).read_text()
        quoted = set(re.findall(r'"([a-z][a-z0-9_]*)"', text))
        kernel_like = {q for q in quoted if re.search(r"_(forward|backward|update)$|^conv2d_", q)}
        unknown = kernel_like - set(loader.FILE_OF) - _ops_named_in_docs()
        assert not unknown, f"{name} names kernels the loader lacks: {sorted(unknown)}"


def _ops_named_in_docs():
    from gpunn.backends.base import Backend

    return set(Backend.ops())


def test_inherited_ops_are_listed_and_guarded():
    """The kinds table's cupy "reference" ops are exactly the ops CupyBackend inherits from
    the reference (each still wrapped by the out-of-memory guard)."""
    from gpunn.backends import cupy_backend as cb
    from gpunn.backends import kinds
    from gpunn.backends.base import Backend

    inherited = set()
    for op in Backend.ops():
        fn = getattr(cb.CupyBackend, op)
        assert hasattr(fn, "__wrapped__"), f"{op} is not wrapped by the out-of-memory guard"
        if fn.__wrapped__ is getattr(Backend, op):
            inherited.add(op)
    assert inherited == set(kinds.ops_of_kind("cupy", "reference"))


def test_activation_codes_match_the_header():
    """common.cuh's ``enum Activation`` holds exactly gpunn.kernels.codes.ACTIVATION_CODES."""
    header = loader.read_source(loader.HEADER)
    (body,) = re.findall(r"enum Activation \{([^}]*)\}", header)
    enum = {name.lower(): int(value) for name, value in re.findall(r"ACT_(\w+) = (\d+)", body)}
    assert len(enum) == body.count("=")
    assert {str(k).lower(): v for k, v in codes.ACTIVATION_CODES.items()} == enum
    assert loader.ACTIVATION_CODES is codes.ACTIVATION_CODES
    assert set(codes.ACTIVATION_CODES) == set(ACTIVATIONS)


def test_loader_rejects_other_dtypes_without_cupy():
    from gpunn.errors import DTypeError

    with pytest.raises(DTypeError, match="float32"):
        loader.KernelLoader()("relu_forward", np.dtype(np.int32))


def test_importing_gpunn_needs_no_cupy():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import gpunn, gpunn.cuda, gpunn.kernels.cuda.loader\n"
        "from gpunn.backends import why_unavailable\n"
        "print(why_unavailable('cupy'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "CuPy is not installed: pip install 'gpunn[cuda13]' (or cuda12)" in out.stdout


def test_nvrtc_compiles_every_instance_as_cupy_will():
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    assert compile_check.check_nvrtc() == []


def test_ptxas_report_parsing():
    log = (
        "ptxas info    : Compiling entry function '_Z12relu_forwardIfEvPKT_PS0_x' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z12relu_forwardIfEvPKT_PS0_x\n"
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
        "ptxas info    : Used 12 registers, used 0 barriers, 372 bytes cmem[0]\n"
    )
    report = compile_check.parse_ptxas(log)
    assert report == {
        "relu_forward<float>": {
            "registers": 12,
            "stack": 8,
            "spill_stores": 4,
            "spill_loads": 4,
        }
    }
