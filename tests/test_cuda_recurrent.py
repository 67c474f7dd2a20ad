"""The CUDA backend's whole-sequence recurrent layers, without a GPU.

* Launches per time step: at most 2 forward (the recurrent GEMM and the fused step kernel)
  and 3 backward. CuPy is replaced by the NumPy stand-in of test_cuda_emulated, with
  kernels that do nothing (nothing is compiled), counted by the loader's
  ``count_launches``, and a ``cupy.matmul`` that counts its GEMMs (cuBLAS calls launch
  outside the loader).
* Layers larger than one grid (the stand-in's grid is 32 blocks of 256 threads) against the
  reference, with the kernels compiled by g++ under test_cuda_emulated's emulation (the
  op-case table there only has small layers).

Each part runs in a subprocess so the stand-in never meets a real CuPy.
"""

import ast
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

STEPS = (3, 11)


def _run(part, tmp_path):
    env = dict(os.environ, GPUNN_EMU_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, __file__, part], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


def test_launches_per_time_step(tmp_path):
    counts = ast.literal_eval(_run("launches", tmp_path))  # {(op, T, pass): (kernels, gemms)}
    for op in ("rnn", "lstm"):
        for direction, most in (("forward", 2), ("backward", 3)):
            (k0, g0), (k1, g1) = (counts[(op, t, direction)] for t in STEPS)
            steps = STEPS[1] - STEPS[0]
            per_step = (k1 + g1 - k0 - g0) / steps
            assert per_step <= most, (op, direction, counts)
            # one fused kernel and one GEMM per step; the rest is per call, not per step
            assert (k1 - k0, g1 - g0) == (steps, steps), (op, direction, counts)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to emulate CUDA")
def test_layers_beyond_one_grid_match_the_reference(tmp_path):
    assert _run("grid", tmp_path) == "all match"


def _stand_in():
    sys.path.insert(0, os.path.dirname(__file__))
    import tempfile

    import test_cuda_emulated as emu

    emu._fake_cupy(os.environ.get("GPUNN_EMU_CACHE") or tempfile.mkdtemp())
    return sys.modules["cupy"]


def _launches():
    cupy = _stand_in()
    gemms = [0]

    class Kernel:
        def __call__(self, grid, block, args):
            pass

    class Module:  # compiles nothing: every kernel does nothing
        def __init__(self, code, options=(), name_expressions=()):
            pass

        def get_function(self, name):
            return Kernel()

    def matmul(a, b, out=None):
        gemms[0] += 1
        return np.matmul(a, b, out=out)

    cupy.RawModule = Module
    cupy.matmul = matmul
    cupy.empty = lambda shape, dtype=np.float64: np.zeros(shape, dtype)

    from gpunn.kernels.cuda.loader import count_launches

    from gpunn.backends import backend_object

    be = backend_object("cupy")
    rng = np.random.default_rng(0)
    counts = {}
    for op, gates in (("rnn", 1), ("lstm", 4)):
        for steps in STEPS:
            b, n_in, h = 3, 4, 5
            x = rng.standard_normal((steps, b, n_in))
            states = [np.zeros((b, h))] * (2 if op == "lstm" else 1)
            weights = [rng.standard_normal((gates * h, n_in)), rng.standard_normal((gates * h, h))]
            biases = [np.zeros(gates * h), np.zeros(gates * h)]
            gemms[0] = 0
            with count_launches() as launches:
                Y, saved = getattr(be, op + "_forward")(x, *states, *weights, *biases)
            counts[(op, steps, "forward")] = (sum(launches.values()), gemms[0])
            gemms[0] = 0
            dY = tuple(np.ones(y.shape) for y in Y)
            with count_launches() as launches:
                getattr(be, op + "_backward")(dY, saved, (True,) * (5 + len(states)))
            counts[(op, steps, "backward")] = (sum(launches.values()), gemms[0])
    print(repr(counts))


def _grid():
    _stand_in()
    from gpunn.backends import backend_object

    be, ref = backend_object("cupy"), backend_object("numpy")
    rng = np.random.default_rng(1)
    failures = []
    # B*H = 9000 elements per step: beyond one pass of 32 blocks x 256 threads
    t, b, n_in, h = 3, 30, 7, 300
    for op, gates, params in (
        ("lstm", 4, {}),
        ("rnn", 1, {"nonlinearity": "tanh"}),
        ("rnn", 1, {"nonlinearity": "relu"}),
    ):
        states = [0.5 * rng.standard_normal((b, h)) for _ in range(2 if op == "lstm" else 1)]
        args = [
            rng.standard_normal((t, b, n_in)),
            *states,
            0.1 * rng.standard_normal((gates * h, n_in)),
            0.05 * rng.standard_normal((gates * h, h)),
            0.1 * rng.standard_normal(gates * h),
            0.1 * rng.standard_normal(gates * h),
        ]
        outs = []
        for k in (be, ref):
            Y, saved = getattr(k, op + "_forward")(*[k.asarray(a) for a in args], **params)
            dY = tuple(k.asarray(np.cos(np.asarray(k.to_numpy(y)))) for y in Y)
            grads = getattr(k, op + "_backward")(dY, saved, (True,) * len(args))
            outs.append([np.asarray(k.to_numpy(a)) for a in (*Y, *grads)])
        for i, (g, w) in enumerate(zip(*outs)):
            if not np.allclose(g, w, rtol=1e-9, atol=1e-11):
                failures.append(f"{op} {params} output {i}: max diff {np.max(np.abs(g - w))}")
    print("\n".join(failures) or "all match")


if __name__ == "__main__":
    {"launches": _launches, "grid": _grid}[sys.argv[1]]()
