"""gpunn's cupy backend against PyTorch CUDA eager, on one GPU, in one run.

    python benchmarks/gpu_bench.py [--out DIR] [--scales 1 8] [--repeats 7]

1. The reference workloads of gpunn.workloads (logreg, mlp, lenet, lstm) at each scale:
   one training step = forward, loss, backward, SGD update. Each side is warmed up first
   (kernel compilation, memory pools, cuBLAS handles), then timed in samples of several
   steps, CUDA-synchronised before and after, alternating gpunn and PyTorch sample by
   sample; the median time per step is reported.
2. Bandwidth: the device-to-device copy (cudaMemcpyAsync) as the ceiling, and gpunn's fused
   elementwise kernels as a fraction of it (bytes each must read and write once, over the
   kernel's median time from CUDA events).

Writes gpu_bench.json and gpu_bench.md to --out (default: $OUT, else the current folder) and
prints the table last. Not an asv benchmark (no time_* functions); it needs a CUDA GPU,
CuPy and PyTorch with CUDA.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time


def _sync_all():
    import cupy
    import torch

    cupy.cuda.get_current_stream().synchronize()
    torch.cuda.synchronize()


def _free_memory():
    import cupy
    import torch

    _sync_all()
    cupy.get_default_memory_pool().free_all_blocks()
    torch.cuda.empty_cache()


def _time_steps(w, steps):
    w.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        w.step()
    w.sync()
    return (time.perf_counter() - t0) / steps


def bench_workload(name, scale, repeats, sample_s):
    """Median seconds per training step for gpunn (cupy) and PyTorch (cuda), alternating."""
    from gpunn.workloads import build, build_torch

    g = build(name, "cupy", scale)
    t = build_torch(name, "cuda", scale)
    for w in (g, t):  # warm-up: compile, fill pools, create handles
        for _ in range(3):
            w.step()
        w.sync()
    one = max(_time_steps(g, 2), _time_steps(t, 2))
    steps = max(2, min(200, math.ceil(sample_s / max(one, 1e-6))))
    gs, ts = [], []
    for _ in range(repeats):
        gs.append(_time_steps(g, steps))
        ts.append(_time_steps(t, steps))
    result = {
        "workload": name,
        "scale": scale,
        "batch": g.batch,
        "steps_per_sample": steps,
        "samples": repeats,
        "gpunn_ms": 1e3 * statistics.median(gs),
        "torch_ms": 1e3 * statistics.median(ts),
        "gpunn_ms_min_max": [1e3 * min(gs), 1e3 * max(gs)],
        "torch_ms_min_max": [1e3 * min(ts), 1e3 * max(ts)],
        "gpunn_loss": float(g.loss()),
        "torch_loss": float(t.loss()),
        "gflops_per_step": g.flops / 1e9,
    }
    result["ratio"] = result["gpunn_ms"] / result["torch_ms"]
    del g, t
    _free_memory()
    return result


def _event_time(fn, reps=15, inner=10, warmup=3):
    """Median GPU milliseconds per fn() from CUDA events around ``inner`` back-to-back calls
    (so the host's launch overhead hides behind the queued kernels)."""
    import cupy

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / inner)
    return statistics.median(times)


def bench_bandwidth(mib=256):
    """Copy bandwidth and each fused kernel's bandwidth (GB/s, bytes read + written)."""
    import cupy
    import numpy as np
    from gpunn.kernels.cuda.launch import launch

    from gpunn.backends import backend_object

    be = backend_object("cupy")
    n = mib * 2**20 // 4
    rng = cupy.random.default_rng(0)
    a = rng.standard_normal(n, dtype=np.float32)
    b = cupy.empty_like(a)
    stream = cupy.cuda.get_current_stream()
    nbytes = a.nbytes

    def copy():
        cupy.cuda.runtime.memcpyAsync(
            b.data.ptr, a.data.ptr, nbytes, cupy.cuda.runtime.memcpyDeviceToDevice, stream.ptr
        )

    copy_ms = _event_time(copy)
    copy_gbs = 2 * nbytes / copy_ms / 1e6
    rows = 2**16
    cols = n // rows
    Z = a.reshape(rows, cols)
    bias = rng.standard_normal(cols, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    buf = cupy.zeros(n, np.float32)
    m, v = cupy.zeros(n, np.float32), cupy.ones(n, np.float32)
    Zc = Z.copy()
    hidden = 1024
    batch = n // (4 * hidden)
    xw = a[: batch * 4 * hidden].reshape(batch, 4 * hidden)
    hw = g[: batch * 4 * hidden].reshape(batch, 4 * hidden)
    c = b[: batch * hidden].reshape(batch, hidden)
    hn, cn = cupy.empty_like(c), cupy.empty_like(c)
    gates = cupy.empty((5, batch, hidden), np.float32)
    f32 = 4
    cases = {
        # name: (callable, bytes moved)
        "relu_forward": (lambda: be.relu_forward(a), 2 * n * f32),
        "sigmoid_forward": (lambda: be.sigmoid_forward(a), 2 * n * f32),
        "relu_backward": (lambda: be.relu_backward(g, a, (True,)), 3 * n * f32),
        "add_forward (same shape)": (lambda: be.add_forward(a, g), 3 * n * f32),
        "add_forward (row broadcast)": (lambda: be.add_forward(Z, bias), 2 * n * f32),
        "linear epilogue (bias+relu, in place)": (
            lambda: launch(
                be._dev,
                "linear_forward",
                Zc.dtype,
                Zc.size,
                (Zc, bias, np.int64(rows), np.int64(cols), np.int32(1), np.int32(1)),
            ),
            2 * n * f32,
        ),
        "dropout_forward": (lambda: be.dropout_forward(a, 0.5, 1234), 2 * n * f32),
        "sgd_update (momentum, wd)": (
            lambda: be.sgd_update([b], [g], [buf], 1e-3, 0.9, 1e-4),
            5 * n * f32,
        ),
        "adam_update": (
            lambda: be.adam_update([b], [g], [m], [v], 1, 1e-3, 0.9, 0.999, 1e-8, 0.0),
            7 * n * f32,
        ),
        "lstm_cell gates+state (fused kernel)": (
            lambda: launch(
                be._dev,
                "lstm_cell_forward",
                xw.dtype,
                c.size,
                (xw, hw, c, hn, cn, gates, np.int64(batch), np.int64(hidden)),
            ),
            (4 + 4 + 1 + 1 + 1 + 5) * batch * hidden * f32,
        ),
    }
    kernels = []
    for name, (fn, moved) in cases.items():
        ms = _event_time(fn)
        gbs = moved / ms / 1e6
        kernels.append(
            {"kernel": name, "ms": ms, "gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs}
        )
        stream.synchronize()
    return {"array_mib": mib, "copy_ms": copy_ms, "copy_gb_per_s": copy_gbs, "kernels": kernels}


def environment():
    import cupy
    import numpy
    import torch

    import gpunn
    import gpunn.cuda

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {
        "date": datetime.date.today().isoformat(),
        "card": props["name"].decode(),
        "torch_card": torch.cuda.get_device_name(0),
        "sm_count": props["multiProcessorCount"],
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "driver": cupy.cuda.runtime.driverGetVersion(),
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "python": platform.python_version(),
        "gpunn": gpunn.__version__,
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gpunn_tf32": gpunn.cuda.tf32_enabled(),
        "torch_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "torch_cudnn": torch.backends.cudnn.version(),
    }


TARGETS = {("mlp", 1): 1.0, ("lstm", 1): 1.0, ("lenet", 1): 1.5}


def target(name, scale):
    return TARGETS.get((name, scale), 1.5 if scale >= 8 else None)


def table(results) -> str:
    env = results["environment"]
    lines = [
        f"gpunn (cupy) vs PyTorch {env['torch']} CUDA eager on {env['card']}, "
        f"{env['date']}; float32, SGD; median ms per training step",
        "",
        "| workload | batch | gpunn ms | torch ms | gpunn/torch | target | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results["workloads"]:
        tgt = target(r["workload"], r["scale"])
        met = "-" if tgt is None else ("yes" if r["ratio"] <= tgt else "no")
        lines.append(
            f"| {r['workload']} x{r['scale']} | {r['batch']} | {r['gpunn_ms']:.3f} | "
            f"{r['torch_ms']:.3f} | {r['ratio']:.2f} | {tgt if tgt else '-'} | {met} |"
        )
    bw = results.get("bandwidth")
    if bw:
        lines += [
            "",
            f"Device-to-device copy: {bw['copy_gb_per_s']:.0f} GB/s "
            f"({bw['array_mib']} MiB arrays, read + write counted); target >= 70% for fused kernels",
            "",
            "| fused kernel | GB/s | of copy | met |",
            "| --- | ---: | ---: | :---: |",
        ]
        for k in bw["kernels"]:
            met = "yes" if k["fraction_of_copy"] >= 0.7 else "no"
            lines.append(
                f"| {k['kernel']} | {k['gb_per_s']:.0f} | {100 * k['fraction_of_copy']:.0f}% "
                f"| {met} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workloads", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sample-seconds", type=float, default=0.05)
    parser.add_argument("--skip-bandwidth", action="store_true")
    args = parser.parse_args(argv)

    from gpunn.workloads import NAMES

    results = {"environment": environment(), "workloads": [], "errors": []}
    print(json.dumps(results["environment"]), flush=True)
    for name in args.workloads or NAMES:
        for scale in args.scales:
            t0 = time.perf_counter()
            try:
                r = bench_workload(name, scale, args.repeats, args.sample_seconds)
            except Exception as e:  # keep going: report what ran
                results["errors"].append(f"{name} x{scale}: {type(e).__name__}: {e}")
                print("ERROR", results["errors"][-1], flush=True)
                continue
            results["workloads"].append(r)
            print(
                f"{name} x{scale}: gpunn {r['gpunn_ms']:.3f} ms, torch {r['torch_ms']:.3f} ms, "
                f"ratio {r['ratio']:.2f} (losses {r['gpunn_loss']:.4f} / {r['torch_loss']:.4f}; "
                f"{time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    if not args.skip_bandwidth:
        try:
            results["bandwidth"] = bench_bandwidth()
            _free_memory()
        except Exception as e:
            results["errors"].append(f"bandwidth: {type(e).__name__}: {e}")
            print("ERROR", results["errors"][-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(results, f, indent=1)
    text = table(results)
    if results["errors"]:
        text += "\n\nErrors:\n" + "\n".join(f"- {e}" for e in results["errors"])
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
