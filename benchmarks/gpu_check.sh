#!/usr/bin/env bash
# The GPU check, in one go, on a machine with a CUDA GPU, CuPy, NumPy, Numba, PyTorch (a CUDA
# build) and pytest already installed (no network needed):
#   1. install gpunn from this checkout (editable, no dependencies, no build isolation);
#   2. compile every kernel instance on the device (CuPy caches them on disk);
#   3. the CUDA test suite against the NumPy reference (GPUNN_TEST_BACKENDS=numpy,cupy);
#   4. `gpunn bench --backend cupy --against torch`: every workload of gpunn.workloads at
#      the base and 8x batch, TF32 off and on (both sides), and the fused elementwise
#      kernels as a fraction of the device-to-device copy rate, all in one run; every
#      training step also captured into a CUDA graph by gpunn (cupy+graph) and by PyTorch
#      (torch-cuda+graph), beside PyTorch eager; the JSON is written after every workload,
#      so a stage cut short keeps what finished;
#   5. the backend-parametrised suites with cupy, and the reference gradients.
# Logs and results go to $OUT (default ./gpu-out): env.txt, pip.log, pytest_cuda.log,
# bench.log, bench-gpu.json, bench-gpu.md, pytest_other.log. The short table is printed last.
# Stage time limits (seconds): T_TESTS, T_BENCH, T_OTHER; BENCH_ARGS adds gpunn bench options
# (e.g. BENCH_ARGS="--workload mlp --workload lstm").
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T_TESTS=${T_TESTS:-150}
T_BENCH=${T_BENCH:-300}
T_OTHER=${T_OTHER:-60}
start=$(date +%s)
stamp() { echo "[$(($(date +%s) - start))s] $*"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $PY -c "import sys, numpy, cupy, torch; print(sys.version); print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__)"
  git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20
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
$PY - <<'PYEOF' 2>&1 | tee -a "$OUT/env.txt"
import time
t0 = time.perf_counter()
from gpunn.backends import backend_object
be = backend_object("cupy")
be._kernels.precompile()
print(f"device {be.device_name}: kernels compiled and loaded in {time.perf_counter() - t0:.1f}s")
PYEOF

stamp "CUDA tests"
GPUNN_TEST_BACKENDS=numpy,cupy timeout "$T_TESTS" $PY -m pytest -q -p no:cacheprovider \
  --maxfail=40 -rfE tests/test_cuda_backend.py tests/test_cuda_loader.py tests/test_cuda_graphs.py \
  > "$OUT/pytest_cuda.log" 2>&1
echo "pytest (CUDA suite) exit $?" >> "$OUT/pytest_cuda.log"

stamp "gpunn bench"
# shellcheck disable=SC2086
timeout "$T_BENCH" $PY -m gpunn.cli bench --backend cupy --against torch --scale 1 --scale 8 \
  --tf32 both --min-rounds 5 --max-time 3 --json "$OUT/bench-gpu.json" ${BENCH_ARGS:-} \
  > "$OUT/bench.log" 2>&1
echo "gpunn bench exit $?" >> "$OUT/bench.log"
$PY benchmarks/plot_bench.py "$OUT/bench-gpu.json" --no-plot --markdown > "$OUT/bench-gpu.md" 2>&1

stamp "backend-parametrised suites with cupy, and the reference gradients"
GPUNN_TEST_BACKENDS=numpy,cupy timeout "$T_OTHER" $PY -m pytest -q -p no:cacheprovider \
  --maxfail=40 -rfE -k "cupy or reference" --ignore=tests/test_distributed.py \
  --ignore=tests/test_cuda_backend.py --ignore=tests/test_cuda_loader.py \
  --ignore=tests/test_cuda_graphs.py tests \
  > "$OUT/pytest_other.log" 2>&1
echo "pytest (other suites) exit $?" >> "$OUT/pytest_other.log"

stamp "done"
echo "== CUDA tests"; grep -E "^(FAILED|ERROR)|passed|failed|exit" "$OUT/pytest_cuda.log" | tail -45
echo "== other suites"; grep -E "^(FAILED|ERROR)|passed|failed|exit" "$OUT/pytest_other.log" | tail -25
echo "== bench log"; grep -E "^error|Traceback|exit" "$OUT/bench.log" | tail -10
echo
cat "$OUT/bench-gpu.md"
