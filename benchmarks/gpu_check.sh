#!/usr/bin/env bash
# The GPU check of the cupy backend, in one go, on a machine with a CUDA GPU, CuPy, NumPy,
# Numba, PyTorch and pytest already installed (no network needed):
#   1. install gpunn from this checkout (editable, no dependencies, no build isolation);
#   2. compile every kernel instance on the device (CuPy caches them on disk);
#   3. the CUDA test suite against the NumPy reference, then the backend-parametrised suites
#      and the reference's own finite-difference checks, with GPUNN_TEST_BACKENDS=numpy,cupy;
#   4. benchmarks/gpu_bench.py: the reference workloads against PyTorch CUDA eager, and the
#      fused kernels' bandwidth against the device-to-device copy.
# Logs and results go to $OUT (default ./gpu-out); the benchmark table is printed last.
# Stage time limits (seconds) can be changed: T_TESTS, T_BENCH, T_OTHER.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T_TESTS=${T_TESTS:-120}
T_BENCH=${T_BENCH:-120}
T_OTHER=${T_OTHER:-120}
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start))s] $*"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c "import sys, numpy, cupy, torch; print(sys.version); print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

stamp "install"
if ! $PY -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/pip.log" 2>&1; then
  # Fallback without pip: the same layout the wheel has (gpunn/kernels from kernels/).
  tail -5 "$OUT/pip.log"
  site=$(mktemp -d)
  cp -r gpunn "$site/" && cp -r kernels "$site/gpunn/kernels"
  export PYTHONPATH="$site"
  echo "pip install failed; using PYTHONPATH=$site"
fi

stamp "compile every kernel instance on the device"
$PY - <<'EOF' 2>&1 | tee -a "$OUT/env.txt"
import time
t0 = time.perf_counter()
from gpunn.backends import backend_object
be = backend_object("cupy")
be._kernels.precompile()
print(f"device {be.device_name}: {be._max_blocks} max blocks; kernels compiled and loaded in {time.perf_counter() - t0:.1f}s")
EOF

stamp "CUDA tests"
GPUNN_TEST_BACKENDS=numpy,cupy timeout "$T_TESTS" $PY -m pytest -q -p no:cacheprovider \
  --maxfail=40 -rfE tests/test_cuda_backend.py tests/test_cuda_loader.py > "$OUT/pytest_cuda.log" 2>&1
echo "pytest (CUDA suite) exit $?" >> "$OUT/pytest_cuda.log"

stamp "benchmarks"
timeout "$T_BENCH" $PY benchmarks/gpu_bench.py --out "$OUT" > "$OUT/bench.log" 2>&1
echo "gpu_bench exit $?" >> "$OUT/bench.log"

stamp "backend-parametrised suites with cupy, and the reference gradients"
GPUNN_TEST_BACKENDS=numpy,cupy timeout "$T_OTHER" $PY -m pytest -q -p no:cacheprovider \
  --maxfail=40 -rfE -k "cupy or reference" --ignore=tests/test_distributed.py \
  --ignore=tests/test_cuda_backend.py --ignore=tests/test_cuda_loader.py tests \
  > "$OUT/pytest_other.log" 2>&1
echo "pytest (other suites) exit $?" >> "$OUT/pytest_other.log"

stamp "done"
echo "== CUDA tests"; grep -E "^(FAILED|ERROR)|passed|failed|exit" "$OUT/pytest_cuda.log" | tail -45
echo "== other suites"; grep -E "^(FAILED|ERROR)|passed|failed|exit" "$OUT/pytest_other.log" | tail -25
echo "== bench log"; grep -E "ERROR|Traceback|exit" "$OUT/bench.log" | tail -10
echo
cat "$OUT/gpu_bench.md" 2>/dev/null || tail -30 "$OUT/bench.log"
