"""The CUDA kernels run on the CPU: a C++ emulation of the few CUDA features they use
(threads of a block as std::threads with real barriers, warp shuffles, atomics) and a
NumPy stand-in for CuPy whose RawModule compiles each .cu file with g++ and checks every
launch's arguments against the kernel's C++ signature (count, pointer or scalar, integer
or float, width). The whole op-case table then runs against the NumPy reference.

This checks what the kernels compute and how the backend calls them, not speed or the
GPU's memory model. It runs in the default suite: one subprocess (so the stand-in never
meets a real CuPy) builds every module once, one g++ per file in parallel, runs the kernels
whose threads never wait for each other one thread after another, and the rest as real
threads; about a minute on two busy cores, half of it g++.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

EMU_H = r"""// CPU emulation of the CUDA features gpunn's kernels use: each block runs as
// blockDim threads (std::thread) with real barriers; blocks run one after another.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>
#include <cstdio>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

using std::exp; using std::log; using std::log1p; using std::tanh; using std::sqrt; using std::pow; using std::fabs;

struct EmuBlock {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  double shfl[1024];
};
static EmuBlock* emu_block = nullptr;

// A kernel that never synchronises runs its threads one after another on the calling thread
// (emu_block is null then); should it synchronise after all, the emulation stops loudly.
inline EmuBlock* emu_threaded(const char* what) {
  if (!emu_block) {
    std::fprintf(stderr, "emulation: %s in a kernel run sequentially (see _threaded_kernels)\n", what);
    std::abort();
  }
  return emu_block;
}
inline void __syncthreads() { emu_threaded("__syncthreads")->block->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned emu_tid() { return threadIdx.y * blockDim.x + threadIdx.x; }

template <typename T> inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  const unsigned t = emu_tid();
  auto& bar = *emu_threaded("__shfl_xor_sync")->warps[t / 32];
  emu_block->shfl[t] = (double)v;
  bar.arrive_and_wait();
  const unsigned partner = (t & ~31u) | ((t & 31u) ^ (unsigned)lane_mask);
  T out = (T)emu_block->shfl[partner];
  bar.arrive_and_wait();
  return out;
}

static std::mutex emu_atomic_mutex;
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  std::lock_guard<std::mutex> g(emu_atomic_mutex);
  unsigned old = *p; *p = old + v; return old;
}
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  std::lock_guard<std::mutex> g(emu_atomic_mutex);
  unsigned long long old = *p; *p = old + v; return old;
}
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

template <typename T> T emu_arg(void* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }

template <typename... Args, std::size_t... I>
std::tuple<Args...> emu_unpack(void** args, std::index_sequence<I...>) {
  return std::tuple<Args...>(emu_arg<Args>(args[I])...);
}

template <typename... Args>
void emu_launch(void (*kernel)(Args...), dim3 grid, dim3 block, void** args, bool threaded) {
  auto values = emu_unpack<Args...>(args, std::index_sequence_for<Args...>{});
  blockDim = block; gridDim = grid;
  const unsigned nthreads = block.x * block.y * block.z;
  if (!threaded) {
    emu_block = nullptr;
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      for (unsigned t = 0; t < nthreads; ++t) {
        blockIdx.x = bx; blockIdx.y = 0; blockIdx.z = 0;
        threadIdx.x = t % block.x; threadIdx.y = t / block.x; threadIdx.z = 0;
        std::apply(kernel, values);
      }
    }
    return;
  }
  for (unsigned bx = 0; bx < grid.x; ++bx) {
    EmuBlock eb;
    eb.block = std::make_unique<std::barrier<>>(nthreads);
    for (unsigned w = 0; w < (nthreads + 31) / 32; ++w)
      eb.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, nthreads - 32 * w)));
    emu_block = &eb;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
      threads.emplace_back([&, t, bx]() {
        blockIdx.x = bx; blockIdx.y = 0; blockIdx.z = 0;
        threadIdx.x = t % block.x; threadIdx.y = t / block.x; threadIdx.z = 0;
        std::apply(kernel, values);
        eb.warps[t / 32]->arrive_and_drop();
        eb.block->arrive_and_drop();
      });
    }
    for (auto& th : threads) th.join();
  }
}

template <typename... Args>
int emu_signature(void (*)(Args...), int* codes) {
  int i = 0;
  ((codes[i++] = (std::is_pointer_v<Args> ? 0 : std::is_floating_point_v<Args> ? 200 : 100) + (int)sizeof(Args)), ...);
  return (int)sizeof...(Args);
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to emulate CUDA")
def test_kernels_match_reference_under_emulation(tmp_path):
    """Every op case (both float types, C and strided layouts), every update case and the
    beyond-one-grid inputs on the emulated cupy backend, against the NumPy reference; and
    every kernel of the loader's table is launched at least once on the way."""
    env = dict(os.environ, GPUNN_EMU_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


# ---------------------------------------------------------------------- the stand-in
_SYNCS = re.compile(r"__syncthreads|__shfl|warp_sum|warp_max|block_sum|grid_sum|__shared__")


def _threaded_kernels(code):
    """Kernels of translation unit ``code`` that synchronise threads (directly, or through a
    __device__ helper defined in the file, such as softmax.cu's row_max): they run as real
    threads with barriers; the rest run their threads one after another, which computes the
    same for kernels whose threads never wait for each other (a wrong guess aborts)."""
    syncing = set()
    pieces = re.split(r"(?=__global__|__device__)", code)
    while True:
        words = _SYNCS.pattern + "".join(f"|\\b{re.escape(n)}\\b" for n in sorted(syncing))
        found = set()
        for piece in pieces:
            m = re.match(r"__(?:global|device)__[^(;{]*?\b(\w+)\s*\(", piece)
            if m and re.search(words, piece[m.end() :]):
                found.add(m.group(1))
        if found <= syncing:
            return syncing
        syncing |= found


def _fake_cupy(cache):
    import ctypes
    import hashlib
    import types

    import numpy as np

    with open(os.path.join(cache, "emu.h"), "w") as f:
        f.write(EMU_H)
    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = lambda name: getattr(np, name)
    cupy.ndarray = np.ndarray

    def poisoned(shape, dtype=np.float64):
        a = np.empty(shape, dtype)
        a.fill(np.nan if a.dtype.kind == "f" else 7)  # unwritten outputs show up
        return a

    def asarray(data, dtype=None):
        if isinstance(data, np.ndarray) and (dtype is None or np.dtype(dtype) == data.dtype):
            return data
        return np.array(data, dtype=dtype, copy=True)

    cupy.empty = poisoned
    cupy.asarray = asarray
    cupy.asnumpy = lambda a: np.array(a, copy=True)

    class Pool:
        def used_bytes(self):
            return 0

        def free_bytes(self):
            return 0

    cupy.get_default_memory_pool = Pool
    cuda = types.ModuleType("cupy.cuda")
    cupy.cuda = cuda

    class OutOfMemoryError(MemoryError):
        pass

    cuda.memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cuda.runtime = types.SimpleNamespace(
        hostAllocMapped=2,
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"CPU emulation"},
        memGetInfo=lambda: (1 << 30, 1 << 31),
    )
    # One multiprocessor: grids of at most 32 blocks, so modest inputs take several trips.
    cuda.Device = lambda: types.SimpleNamespace(id=0, attributes={"MultiProcessorCount": 1})
    cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0, synchronize=lambda: None)

    class PinnedMemory:
        def __init__(self, size, flags=0):
            self.buf = np.zeros(size, np.uint8)
            self.ptr = self.buf.ctypes.data

    cuda.PinnedMemory = PinnedMemory
    core = types.ModuleType("cupy._core")
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_TF32, linalg.COMPUTE_TYPE_FP32 = 7, 4
    linalg.set_compute_type = lambda dtype, mode: None
    core._routines_linalg = linalg
    cupy._core = core

    class RawKernel:
        def __init__(self, lib, name):
            self.lib, self.name = lib, name
            codes = (ctypes.c_int * 64)()
            n = lib.gpunn_emu_signature(name.encode(), codes)
            self.codes = list(codes[:n])

        def __call__(self, grid, block, args):
            if len(args) != len(self.codes):
                raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.codes)}")
            keep, ptrs = [], (ctypes.c_void_p * len(args))()
            for i, (a, code) in enumerate(zip(args, self.codes)):
                kind, size = divmod(code, 100)
                if kind == 0:
                    if isinstance(a, np.ndarray):
                        val = np.array(a.ctypes.data, dtype=np.uint64)
                    elif isinstance(a, np.uint64):
                        val = np.array(a)
                    else:
                        raise TypeError(f"{self.name}: argument {i} must be an array")
                else:
                    if not isinstance(a, np.generic):
                        raise TypeError(f"{self.name}: argument {i} is a Python {type(a).__name__}")
                    if a.dtype.kind not in ("f" if kind == 2 else "iu") or a.dtype.itemsize != size:
                        raise TypeError(
                            f"{self.name}: argument {i} is {a.dtype}, parameter differs"
                        )
                    val = np.array(a)
                keep.append(val)
                ptrs[i] = val.ctypes.data
            g, b = grid + (1,) * (3 - len(grid)), block + (1,) * (3 - len(block))
            if self.lib.gpunn_emu_launch(self.name.encode(), g[0], b[0], b[1], ptrs):
                raise RuntimeError(f"{self.name}: no such instance")

    class RawModule:
        def __init__(self, code, options=(), name_expressions=()):
            self.names = list(name_expressions)
            src = [
                '#include "emu.h"',
                code,
                'extern "C" int gpunn_emu_launch(const char* n, '
                "unsigned gx, unsigned bx, unsigned by, void** args) {",
                " std::string s(n);",
            ]
            threaded = _threaded_kernels(code)
            for e in self.names:
                flag = "true" if e.split("<")[0] in threaded else "false"
                src.append(
                    f' if (s == "{e}") {{ emu_launch(&{e}, dim3{{gx,1,1}}, '
                    f"dim3{{bx,by,1}}, args, {flag}); return 0; }}"
                )
            src += [
                " return 1;",
                "}",
                'extern "C" int gpunn_emu_signature(const char* n, int* codes) {',
                " std::string s(n);",
            ]
            src += [f' if (s == "{e}") return emu_signature(&{e}, codes);' for e in self.names]
            src += [" return -1;", "}"]
            text = "\n".join(src)
            digest = hashlib.sha1((text + EMU_H).encode()).hexdigest()[:16]
            so = os.path.join(cache, digest + ".so")
            if not os.path.exists(so):
                cpp = os.path.join(cache, digest + ".cpp")
                with open(cpp, "w") as f:
                    f.write(text)
                cmd = [
                    "g++",
                    "-std=c++20",
                    "-O1",
                    "-pthread",
                    "-shared",
                    "-fPIC",
                    "-w",
                    "-I",
                    cache,
                    cpp,
                    "-o",
                    so,
                ]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise RuntimeError(out.stderr[-5000:])
            self.lib = ctypes.CDLL(so)
            self.lib.gpunn_emu_launch.argtypes = (
                [ctypes.c_char_p] + [ctypes.c_uint] * 3 + [ctypes.c_void_p]
            )
            self.lib.gpunn_emu_signature.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

        def get_function(self, name):
            return RawKernel(self.lib, name)

    cupy.RawModule = RawModule
    sys.modules.update(
        {"cupy": cupy, "cupy.cuda": cuda, "cupy._core": core, "cupy._core._routines_linalg": linalg}
    )
    import gpunn.kernels.cuda.workspace as ws

    ws.ptr = lambda a: a.ctypes.data


def _precompile():
    """Build every module's emulation library now, one g++ per .cu file in parallel (the
    backend's own loader then finds them in the cache)."""
    from concurrent.futures import ThreadPoolExecutor

    from gpunn.kernels.cuda import loader

    kernels = loader.KernelLoader()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(kernels.module, loader.KERNELS))


def _worker():
    _fake_cupy(os.environ.get("GPUNN_EMU_CACHE") or tempfile_dir())
    _precompile()
    from gpunn.kernels.cuda import loader

    with loader.count_launches() as launches:
        failures = _run("ops") + _run("grid")
    unlaunched = sorted(set(loader.FILE_OF) - set(launches))
    if unlaunched:
        failures.append(f"kernels no op case launched: {unlaunched}")
    print("\n".join(failures) or f"all match; {sum(launches.values())} launches")
    return 1 if failures else 0


def _run(part):
    import numpy as np

    from gpunn.backends import backend_object
    from gpunn.testing import OP_CASES, UPDATE_CASES, compare_op, compare_update

    failures = []
    if part == "ops":
        for case in OP_CASES:
            for dtype in ("float32", "float64"):
                for layout in ("C", "strided"):
                    try:
                        compare_op("cupy", case, dtype, layout)
                    except Exception as e:  # report them all
                        failures.append(f"{case.name} {dtype} {layout}: {type(e).__name__}: {e}")
        for case in UPDATE_CASES:
            for dtype in ("float32", "float64"):
                try:
                    compare_update("cupy", case, dtype)
                except Exception as e:
                    failures.append(f"{case.name} {dtype}: {type(e).__name__}: {e}")
    else:  # inputs of several grid strides: 32 blocks of 256 threads here
        be, ref = backend_object("cupy"), backend_object("numpy")
        rng = np.random.default_rng(0)
        z = rng.standard_normal((3000, 10))
        labels = rng.integers(0, 10, 3000)
        a = rng.uniform(0.5, 2, (9, 1, 40, 66))[..., ::2]
        b = rng.uniform(-2, 2, (1, 7, 40, 1))
        # 1500 positions (6 tiles of the one-block sort) over 700 rows, a third on row 5
        words = rng.integers(0, 700, (30, 50))
        words[:, ::3] = 5
        for op, args in (
            ("cross_entropy", (z, labels)),
            ("softmax", (z,)),
            ("mse_loss", (z, z[::-1].copy())),
            ("binary_cross_entropy_with_logits", (z, (z > 0) * 1.0)),
            ("pow", (a, b)),
            ("add", (a, b)),
            ("add", (z, z[1])),  # a row broadcast over rows: 16-byte packs
            ("sub", (z[:, :9].copy(), z[1, :9].copy())),  # rows of 9: element by element
            ("sigmoid", (z.ravel(),)),
            ("sigmoid", (z.ravel()[1:],)),  # a view off 16-byte alignment
            ("dropout", (z,)),
            ("embedding", (words, rng.standard_normal((700, 3)))),
        ):
            params = {"dropout": {"p": 0.3, "seed": 99}, "embedding": {"padding_idx": 3}}
            params = params.get(op, {})
            outs = []
            for k in (be, ref):
                Y, saved = getattr(k, op + "_forward")(*[k.asarray(x) for x in args], **params)
                Y_host = np.asarray(k.to_numpy(Y))  # dY differs between equal outputs
                dY = k.asarray(np.cos(Y_host + 1e-3 * np.arange(Y_host.size).reshape(Y.shape)))
                needs = tuple(np.asarray(x).dtype.kind == "f" for x in args)
                grads = getattr(k, op + "_backward")(dY, saved, needs)
                outs.append([np.asarray(k.to_numpy(x)) for x in (Y, *grads) if x is not None])
            # embedding: the same additions in the same (position) order as the reference
            rtol, atol = (0, 0) if op == "embedding" else (1e-10, 1e-12)
            for i, (g, w) in enumerate(zip(*outs)):
                if not np.allclose(g, w, rtol=rtol, atol=atol):
                    failures.append(f"{op} output {i}: max diff {np.max(np.abs(g - w))}")
        for norm_type in (2.0, 1.0, float("inf"), 3.0):  # the norm over several blocks
            outs = []
            for k in (be, ref):
                grads = [k.asarray(z * 0.1), k.asarray(a.copy()), k.asarray(b.copy())]
                total = k.clip_grad_norm_update(grads, 0.5, norm_type)
                outs.append([np.asarray(k.to_numpy(x)) for x in (total, *grads)])
            for i, (g, w) in enumerate(zip(*outs)):
                if not np.allclose(g, w, rtol=1e-10, atol=1e-12):
                    failures.append(
                        f"clip_grad_norm {norm_type} output {i}: {np.max(np.abs(g - w))}"
                    )
        # a batch walked in chunks of one image (conv) and of a few planes (pooling)
        from gpunn.kernels.cuda import launch as cuda_launch

        chunk, limit = cuda_launch.CONV_CHUNK_BYTES, cuda_launch.CHUNK_ELEMENTS
        cuda_launch.CONV_CHUNK_BYTES, cuda_launch.CHUNK_ELEMENTS = 1, 200
        try:
            for case in OP_CASES:
                if case.op in ("conv2d", "max_pool2d", "avg_pool2d"):
                    for dtype in ("float32", "float64"):
                        try:
                            compare_op("cupy", case, dtype, "C")
                        except Exception as e:
                            failures.append(f"chunked {case.name} {dtype}: {e}")
        finally:
            cuda_launch.CONV_CHUNK_BYTES, cuda_launch.CHUNK_ELEMENTS = chunk, limit
    return failures


def tempfile_dir():
    import tempfile

    return tempfile.mkdtemp(prefix="gpunn-emu-")


if __name__ == "__main__":
    sys.exit(_worker())
