"""How many launches a whole-sequence recurrent layer makes per time step on the CUDA
backend: at most 2 forward (the recurrent GEMM and the fused step kernel) and 3 backward.

Runs without a GPU: CuPy is replaced by the NumPy stand-in of test_cuda_emulated, with
kernels that do nothing (nothing is compiled), counted by the loader's ``count_launches``,
and a ``cupy.matmul`` that counts its GEMMs (cuBLAS calls launch outside the loader). The
values computed are meaningless here; the emulation test checks them. Runs in a subprocess
so the stand-in never meets a real CuPy.
"""

import ast
import os
import subprocess
import sys

import numpy as np

STEPS = (3, 11)


def test_launches_per_time_step(tmp_path):
    env = dict(os.environ, GPUNN_EMU_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    counts = ast.literal_eval(
        proc.stdout.strip().splitlines()[-1]
    )  # {(op, T, pass): (kernels, gemms)}
    for op in ("rnn", "lstm"):
        for direction, most in (("forward", 2), ("backward", 3)):
            (k0, g0), (k1, g1) = (counts[(op, t, direction)] for t in STEPS)
            steps = STEPS[1] - STEPS[0]
            per_step = (k1 + g1 - k0 - g0) / steps
            assert per_step <= most, (op, direction, counts)
            # one fused kernel and one GEMM per step; the rest is per call, not per step
            assert (k1 - k0, g1 - g0) == (steps, steps), (op, direction, counts)


def _worker():
    sys.path.insert(0, os.path.dirname(__file__))
    import tempfile

    import test_cuda_emulated as emu

    emu._fake_cupy(os.environ.get("GPUNN_EMU_CACHE") or tempfile.mkdtemp())
    cupy = sys.modules["cupy"]
    gemms = [0]

    class Kernel:
        def __call__(self, grid, block, args):
            pass

    class Module:  # compiles nothing: every kernel only counts
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


if __name__ == "__main__":
    _worker()
