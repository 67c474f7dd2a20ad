"""``gpunn bench``: time gpunn's backends against PyTorch on the workloads of
``gpunn.workloads``: training steps (forward, loss, backward, SGD update) and single ops
(forward, or forward + backward), and on a GPU the fused elementwise kernels' bandwidth.

Every backend asked for, and the peer, runs the same workload in this one process: each
is warmed up, then they take turns, one sample each per round, so drifts in machine load
hit all of them alike. Rounds go on until every median is stable (its relative spread over
the last few rounds is under ``--tolerance``), or ``--max-rounds`` / ``--max-time`` is
reached.

The table gives, per workload and backend: the median time per step, the fastest and
slowest sample, samples (training examples) per second, the time relative to the peer
(``vs torch``: below 1 is faster than PyTorch), and GFLOP/s of the step's matrix products
and convolutions (``workloads.flops``), on the CPU also as a fraction of this machine's
NumPy float32 matmul rate (``sgemm``), measured at the start and the end of the run.
``--scale`` (repeatable) multiplies the batch sizes; ``--tf32 off|on|both`` sets TF32 on
both sides of a GPU run. ``--bandwidth`` (default with the cupy backend) times each fused
elementwise kernel as a fraction of the device-to-device copy rate measured in the same run.
On a GPU every training step also runs captured into a CUDA graph, by gpunn
(``cupy+graph``: :func:`gpunn.cuda.graphed`) and by PyTorch (``torch-cuda+graph``:
``torch.cuda.CUDAGraph``), both compared to PyTorch eager; on the CPU these rows are not
produced (CUDA graphs need a GPU). The captured rows are written, not yet run on a GPU.

    gpunn bench --against torch --threads 2 --json bench.json
    gpunn bench --workload mlp --backend numba --against torch
    gpunn bench --backend cupy --against torch --scale 1 --scale 8 --tf32 both
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from gpunn import workloads

PEERS = ("torch",)
INSTALL_TORCH = "pip install torch"
STABLE_WINDOW = 5  # rounds over which a median must hold still
SGEMM_N = 1024
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


class BenchError(Exception):
    """A request that cannot run here (the message says why and what to do)."""


@dataclass
class Row:
    """One line of the table (and one entry of the JSON ``results``)."""

    workload: str
    backend: str  # a gpunn backend, or the peer: "torch" (CPU) / "torch-cuda"
    device: str  # "cpu" or "cuda"
    is_peer: bool
    batch: int
    flops: float
    samples_ms: list = field(default_factory=list, repr=False)
    kind: str = "step"  # "step" (training step) or "op" (see gpunn.workloads)
    scale: float = 1
    tf32: bool | None = None  # TF32 allowed on both sides (GPU rows); None on the CPU
    steps_per_sample: int = 1
    rounds: int = 0
    stable: bool = False
    median_ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    spread: float = 0.0  # interquartile range of the samples / median
    samples_per_s: float = 0.0
    gflops: float | None = None
    sgemm_fraction: float | None = None
    ratio_to_peer: float | None = None
    peer: str | None = None
    loss: float | None = None


# ---------------------------------------------------------------------------- machine


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl), else NumPy's build
    configuration. Each: {"name", "version", "threads", "used_by"}."""
    try:
        import threadpoolctl
    except ImportError:
        return [_numpy_blas()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pools = threadpoolctl.threadpool_info()
    out = []
    for pool in pools:
        if pool.get("user_api") != "blas":
            continue
        path = pool.get("filepath", "")
        used_by = next((p for p in ("numpy", "scipy", "torch") if p in path), "")
        name = pool.get("internal_api", "?")
        if pool.get("architecture"):
            name += f" ({pool['architecture']})"
        out.append(
            dict(
                name=name,
                version=pool.get("version"),
                threads=pool.get("num_threads"),
                used_by=used_by,
            )
        )
    return out or [_numpy_blas()]


def _numpy_blas() -> dict:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return dict(
            name=blas.get("name"), version=blas.get("version"), threads=None, used_by="numpy"
        )
    except Exception:  # older NumPy: no dict mode
        return dict(name="unknown", version=None, threads=None, used_by="numpy")


def describe_blas(pools: list[dict]) -> str:
    parts = []
    for p in pools:
        text = p["name"] + (f" {p['version']}" if p.get("version") else "")
        if p.get("threads"):
            text += f", {p['threads']} threads"
        if p.get("used_by"):
            text += f" [{p['used_by']}]"
        parts.append(text)
    return "; ".join(dict.fromkeys(parts))


def gpu_name(backends, torch) -> str | None:
    """The GPU's name where a GPU backend runs, else None."""
    if "cupy" not in backends:
        return None
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        if torch is not None and torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return "unknown CUDA device"


def sgemm_gflops(n: int = SGEMM_N, repeat: int = 15) -> float:
    """NumPy float32 (n x n) @ (n x n) rate in GFLOP/s: the best of ``repeat`` products
    after two warm-ups, i.e. what this machine's BLAS reaches at the current thread count
    (a best, not a median: a busy neighbour can only slow a product down)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    times = []
    for k in range(repeat + 2):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / min(times) / 1e9


# ---------------------------------------------------------------------------- timing


class Runner:
    """One backend (or the peer) on one workload: warm-up, calibration, samples."""

    def __init__(self, row: Row, workload):
        self.row = row
        self.w = workload

    def warm_up(self, seconds: float = 0.2, steps: int = 3) -> float:
        """Run at least ``steps`` steps and ``seconds``; return the seconds of the last."""
        t_end = time.perf_counter() + seconds
        k = 0
        while k < steps or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            self.w.step()
            self.w.sync()
            last = time.perf_counter() - t0
            k += 1
        return last

    def sample(self) -> float:
        """Milliseconds per step over ``steps_per_sample`` back-to-back steps."""
        n = self.row.steps_per_sample
        self.w.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            self.w.step()
        self.w.sync()
        return (time.perf_counter() - t0) / n * 1e3


def _medians_stable(history: list[float], tolerance: float) -> bool:
    recent = history[-STABLE_WINDOW:]
    if len(recent) < STABLE_WINDOW:
        return False
    mid = statistics.median(recent)
    return (max(recent) - min(recent)) <= tolerance * mid


def run_workload(runners, args, log) -> None:
    """Warm every runner up, then sample them in turn until their medians settle."""
    for r in runners:
        last = r.warm_up()
        r.row.steps_per_sample = max(1, round(args.sample_time / max(last, 1e-6)))
    history = {id(r): [] for r in runners}
    t_start = time.perf_counter()
    for k in range(args.max_rounds):
        order = runners[k % len(runners) :] + runners[: k % len(runners)]
        for r in order:
            gc.collect()
            r.row.samples_ms.append(r.sample())
            history[id(r)].append(statistics.median(r.row.samples_ms))
        rounds = k + 1
        stable = [_medians_stable(history[id(r)], args.tolerance) for r in runners]
        if rounds >= args.min_rounds and all(stable):
            break
        if time.perf_counter() - t_start > args.max_time and rounds >= args.min_rounds:
            break
    for r, ok in zip(runners, stable):
        r.row.rounds = rounds
        r.row.stable = ok
        if not ok:
            recent = history[id(r)][-STABLE_WINDOW:]
            spread = (max(recent) - min(recent)) / statistics.median(recent)
            log(
                f"note: {r.row.workload}/{r.row.backend}: median not stable after {rounds} "
                f"rounds (spread {spread:.1%} over the last {len(recent)})"
            )


def summarise(rows: list[Row], sgemm: float) -> None:
    for row in rows:
        s = row.samples_ms
        row.median_ms = statistics.median(s)
        row.min_ms, row.max_ms = min(s), max(s)
        if len(s) >= 2:
            q1, _, q3 = statistics.quantiles(s, n=4)
            row.spread = (q3 - q1) / row.median_ms
        row.samples_per_s = row.batch / (row.median_ms / 1e3)
        if row.flops:
            row.gflops = row.flops / (row.median_ms / 1e3) / 1e9
            if row.device == "cpu" and sgemm:
                row.sgemm_fraction = row.gflops / sgemm
    peers = {_peer_key(r): r for r in rows if r.is_peer}
    for row in rows:
        peer = peers.get(_peer_key(row))
        if peer is not None and not row.is_peer:
            row.peer = peer.backend
            row.ratio_to_peer = row.median_ms / peer.median_ms


def _peer_key(row: Row):
    return (row.workload, row.device, row.scale, row.tf32)


# ---------------------------------------------------------------------------- output


def format_table(rows: list[Row], peer: str | None) -> str:
    vs = f"vs {peer}" if peer else "vs peer"
    scales = len({r.scale for r in rows}) > 1 or any(r.scale != 1 for r in rows)
    tf32 = any(r.tf32 is not None for r in rows)
    head = ["workload", "backend"]
    head += ["scale"] * scales + ["tf32"] * tf32
    head += ["batch", "ms/step", "min-max ms", "samples/s", vs, "GFLOP/s", "% sgemm", "rounds"]
    lines = []
    for r in rows:
        ratio = (
            "peer" if r.is_peer else ("-" if r.ratio_to_peer is None else f"{r.ratio_to_peer:.2f}")
        )
        cells = [r.workload, r.backend]
        cells += [f"{r.scale:g}"] * scales
        cells += ["-" if r.tf32 is None else ("on" if r.tf32 else "off")] * tf32
        cells += [
            str(r.batch),
            _ms(r.median_ms),
            f"{_ms(r.min_ms)}-{_ms(r.max_ms)}",
            f"{r.samples_per_s:,.0f}",
            ratio,
            "-" if r.gflops is None else f"{r.gflops:.1f}",
            "-" if r.sgemm_fraction is None else f"{r.sgemm_fraction:.0%}",
            f"{r.rounds}" + ("" if r.stable else "*"),
        ]
        lines.append(cells)
    return _columns(head, lines, left=2)


def _columns(head, lines, left=1) -> str:
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(x) for x in lines]
    return "\n".join(out)


def format_bandwidth(bw: dict) -> str:
    head = ["fused kernel", "ms", "GB/s", "of copy"]
    lines = [
        [k["kernel"], "-", "-", "error: " + k["error"]]
        if "error" in k
        else [k["kernel"], f"{k['ms']:.3f}", f"{k['gb_per_s']:.0f}", f"{k['fraction_of_copy']:.0%}"]
        for k in bw["kernels"]
    ]
    return (
        f"device-to-device copy: {bw['copy_gb_per_s']:.0f} GB/s ({bw['array_mib']} MiB float32 "
        "arrays, bytes read + written, median of CUDA-event samples)\n" + _columns(head, lines)
    )


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def header_lines(info: dict) -> list[str]:
    m = info["machine"]
    v = info["versions"]
    return [
        "gpunn bench: a step = a training step (forward, loss, backward, SGD update) or one "
        "op (forward, or forward + backward); float32",
        f"CPU      {m['cpu']} ({m['cpus']} CPUs available to this process, "
        f"{m['cpus_total']} in the machine)",
        f"threads  {m['threads']} (gpunn.set_num_threads"
        + (", torch.set_num_threads" if v.get("torch") else "")
        + ", BLAS pools)"
        + (
            f"; Numba threading layer {m['numba_threading_layer']}"
            if m.get("numba_threading_layer")
            else ""
        ),
        f"BLAS     {m['blas']}",
        f"GPU      {m['gpu'] or 'none used'}",
        f"sgemm    {info['sgemm_gflops_start']:.1f} GFLOP/s at the start (NumPy float32 "
        f"{SGEMM_N}x{SGEMM_N} matmul, best of 15, {m['threads']} threads)",
        "versions " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
    ]


FOOTER = (
    "ms/step: median over the rounds; min-max: fastest and slowest sample. vs {peer}: this "
    "row's time / {peer}'s on the same device, scale and TF32 setting, in the same run "
    "(below 1 is faster). GFLOP/s counts the matrix products and convolutions of the step; "
    "% sgemm relates it to the sgemm line. rounds marked * did not reach a stable median."
)


# ---------------------------------------------------------------------------- GPU bandwidth


def event_ms(fn, reps: int = 15, inner: int = 10, warmup: int = 3) -> float:
    """Median GPU milliseconds per ``fn()`` from CUDA events around ``inner`` back-to-back
    calls (the host's launch cost hides behind the queued kernels)."""
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


def bench_bandwidth(mib: int = 256) -> dict:
    """The copy rate and each fused kernel's rate (GB/s, bytes read + written) and its
    fraction of the copy's, all in this run. A kernel that fails gets an "error" entry."""
    import cupy

    from gpunn.backends import backend_object

    cases = workloads.bandwidth_cases(backend_object("cupy"), mib)
    copy, moved = cases.pop("copy")
    copy_ms = event_ms(copy)
    copy_gbs = moved / copy_ms / 1e6
    kernels = []
    for name, (fn, moved) in cases.items():
        try:
            ms = event_ms(fn)
        except Exception as e:  # report it in the table, keep timing the others
            kernels.append({"kernel": name, "error": f"{type(e).__name__}: {e}"})
            continue
        gbs = moved / ms / 1e6
        kernels.append(
            {"kernel": name, "ms": ms, "gb_per_s": gbs, "fraction_of_copy": gbs / copy_gbs}
        )
    del cases, copy
    cupy.get_default_memory_pool().free_all_blocks()
    return {"array_mib": mib, "copy_ms": copy_ms, "copy_gb_per_s": copy_gbs, "kernels": kernels}


# ---------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpunn bench",
        description="Time training steps and ops of gpunn.workloads on gpunn's backends, "
        "optionally against PyTorch, in one process.",
    )
    p.add_argument(
        "--workload",
        action="append",
        choices=workloads.ALL,
        help="a workload (repeat for several; default: the training steps and ops of "
        f"every device, plus on a GPU {', '.join(workloads.GPU_ONLY)}). A GPU-sized "
        "workload named here also runs on the CPU backends (use a small --scale)",
    )
    p.add_argument(
        "--ops", action="store_true", help="only the op workloads (forward, forward + backward)"
    )
    p.add_argument(
        "--backend", action="append", help="a gpunn backend (repeat; default: all available)"
    )
    p.add_argument("--against", choices=PEERS, help="time PyTorch eager on the same workloads")
    p.add_argument(
        "--threads", type=int, help="CPU threads for gpunn, PyTorch and BLAS (default: gpunn's)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--scale",
        type=float,
        action="append",
        help="multiply every batch size (repeat for several; default 1)",
    )
    p.add_argument(
        "--tf32",
        choices=("off", "on", "both"),
        default="off",
        help="TF32 in float32 products on the GPU, for gpunn and PyTorch alike (default off)",
    )
    p.add_argument(
        "--bandwidth",
        action=argparse.BooleanOptionalAction,
        help="time the fused elementwise kernels against the device-to-device copy "
        "(default: on when the cupy backend runs)",
    )
    p.add_argument("--min-rounds", type=int, default=7, help="default 7")
    p.add_argument("--max-rounds", type=int, default=60, help="default 60")
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.03,
        help="stop once each median moved less than this fraction over the last "
        f"{STABLE_WINDOW} rounds (default 0.03)",
    )
    p.add_argument(
        "--max-time",
        type=float,
        default=60.0,
        help="seconds of sampling per workload before giving up on stability (default 60)",
    )
    p.add_argument(
        "--sample-time",
        type=float,
        default=0.05,
        help="seconds one sample should last; short steps repeat (default 0.05)",
    )
    return p


def _import_peer(peer: str, backends: list[str]):
    """The peer's module, or BenchError saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise BenchError(
            f"gpunn bench: cannot compare against {peer}: PyTorch is not installed here "
            f"({e}). Install it with `{INSTALL_TORCH}` (the CPU build is enough for the CPU "
            "backends), or run without --against to time gpunn alone."
        ) from e
    if "cupy" in backends and not torch.cuda.is_available():
        raise BenchError(
            "gpunn bench: cannot compare the cupy backend against torch: this PyTorch has no "
            f"CUDA device (torch {torch.__version__}). Install a CUDA build of PyTorch "
            f"(`{INSTALL_TORCH}` on a machine with a CUDA driver), or drop --against."
        )
    return torch


def _select_backends(asked) -> list[str]:
    from gpunn.backends import available_backends, why_unavailable

    if not asked:
        return available_backends()
    for name in asked:
        reason = why_unavailable(name)
        if reason is not None:
            raise BenchError(f"gpunn bench: {reason}")
    return list(dict.fromkeys(asked))


def _select_workloads(args, gpu: bool) -> list[str]:
    if args.workload:
        return list(dict.fromkeys(args.workload))
    names = [] if args.ops else list(workloads.NAMES)
    names += workloads.OPS
    if gpu:
        names += [n for n in workloads.GPU_ONLY if not args.ops or workloads.spec(n).kind == "op"]
    return names


def _versions(torch) -> dict:
    import gpunn

    out = {"gpunn": gpunn.__version__, "numpy": np.__version__}
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        import cupy

        out["cupy"] = cupy.__version__
    except ImportError:
        pass
    if torch is not None:
        out["torch"] = torch.__version__
        if torch.cuda.is_available():
            out["torch_cudnn"] = torch.backends.cudnn.version()
    out["python"] = platform.python_version()
    return out


def _numba_threading_layer(backends) -> str | None:
    """Numba's threading layer ("tbb", "omp" or "workqueue") when the numba backend runs:
    under "omp" its threads spin against PyTorch's OpenMP threads in the same process."""
    if "numba" not in backends:
        return None
    from gpunn.kernels.cpu import _jit

    return _jit.THREADING_LAYER


def _thread_limits(n: int):
    try:
        import threadpoolctl
    except ImportError:
        return contextlib.nullcontext()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return threadpoolctl.threadpool_limits(limits=n)


def _set_tf32(flag: bool, torch) -> None:
    """TF32 in float32 products: gpunn's cupy backend and PyTorch's matmul and cuDNN."""
    import gpunn.cuda

    gpunn.cuda.set_tf32(flag)
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = flag
        torch.backends.cudnn.allow_tf32 = flag


def _free_gpu(torch) -> None:
    try:
        import cupy
    except ImportError:
        return
    cupy.cuda.get_current_stream().synchronize()
    cupy.get_default_memory_pool().free_all_blocks()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _check(args) -> str | None:
    if args.min_rounds < 1 or args.max_rounds < args.min_rounds:
        return "--min-rounds must be >= 1 and --max-rounds >= --min-rounds"
    if any(sc <= 0 for sc in args.scale or [1]):
        return "--scale must be > 0"
    return None


def main(argv=None) -> int:
    """Run ``gpunn bench`` with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    import gpunn

    problem = _check(args)
    if problem:
        log(f"gpunn bench: {problem}")
        return 2
    try:
        backends = _select_backends(args.backend)
        torch = _import_peer(args.against, backends) if args.against else None
    except BenchError as e:
        log(str(e))
        return 2
    gpu = "cupy" in backends
    if args.tf32 != "off" and not gpu:
        log("gpunn bench: --tf32 on/both needs the cupy backend (TF32 is a GPU setting)")
        return 2
    names = _select_workloads(args, gpu)
    scales = list(dict.fromkeys(args.scale or [1.0]))
    tf32s = {"off": [False], "on": [True], "both": [False, True]}[args.tf32]
    threads = args.threads or gpunn.get_num_threads()
    gpunn.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)

    with _thread_limits(threads):
        pools = blas_info()
        info = {
            "command": "gpunn bench " + " ".join(sys.argv[1:] if argv is None else argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {
                "cpu": cpu_name(),
                "cpus": gpunn.threads.available_cpus(),
                "cpus_total": os.cpu_count(),
                "threads": threads,
                "numba_threading_layer": _numba_threading_layer(backends),
                "blas": describe_blas(pools),
                "blas_pools": pools,
                "gpu": gpu_name(backends, torch),
                "system": f"{platform.system()} {platform.machine()}",
            },
            "versions": _versions(torch),
            # set by some environments to tune OpenBLAS; None: unset for this run
            "blas_environment": {k: os.environ.get(k) for k in BLAS_VARS},
            "sgemm_gflops_start": sgemm_gflops(),
            "peer": args.against,
            "workloads": {n: workloads.spec(n).about for n in names},
            "settings": {
                "backends": backends,
                "scales": scales,
                "tf32": args.tf32,
                "min_rounds": args.min_rounds,
                "max_rounds": args.max_rounds,
                "tolerance": args.tolerance,
                "max_time": args.max_time,
                "sample_time": args.sample_time,
            },
            "errors": [],
        }
        print("\n".join(header_lines(info)), file=out, flush=True)
        rows: list[Row] = []
        # first: it takes a second, and a stage time limit must not cut it off
        if gpu and (args.bandwidth or args.bandwidth is None):
            try:
                info["bandwidth"] = bench_bandwidth()
            except Exception as e:
                info["errors"].append(f"bandwidth: {type(e).__name__}: {e}")
                log(f"error: bandwidth: {type(e).__name__}: {e}")
        elif args.bandwidth:
            log("note: --bandwidth needs the cupy backend; no bandwidth rows")
        if not gpu:
            log(
                "note: no cupy+graph or torch-cuda+graph rows: captured steps are CUDA graphs, "
                "which need the cupy backend (a GPU)"
            )
        for tf32 in tf32s:
            gpu_pass = tf32 != tf32s[0]  # a second TF32 pass changes nothing on the CPU
            if gpu:
                _set_tf32(tf32, torch)
            for scale in scales:
                for name in names:
                    rows += _run_one(
                        name,
                        backends,
                        torch,
                        scale,
                        tf32 if gpu else None,
                        gpu_pass,
                        args,
                        info,
                        log,
                    )
                    _write_json(args.json, info, rows)
        # again at the end: a busy neighbour at the start must not inflate "% sgemm"
        info["sgemm_gflops_end"] = sgemm_gflops()
        info["sgemm_gflops"] = max(info["sgemm_gflops_start"], info["sgemm_gflops_end"])
        summarise(rows, info["sgemm_gflops"])
    print(
        f"sgemm    {info['sgemm_gflops']:.1f} GFLOP/s, the better of the start "
        f"({info['sgemm_gflops_start']:.1f}) and the end ({info['sgemm_gflops_end']:.1f}) of "
        "the run: the 100% of the % sgemm column",
        file=out,
    )
    print(file=out)
    if "bandwidth" in info:
        print(format_bandwidth(info["bandwidth"]), file=out)
        print(file=out)
    for e in info["errors"]:
        print(f"error: {e}", file=out)
    print(format_table(rows, args.against), file=out)
    print(file=out)
    print(FOOTER.format(peer=args.against or "peer"), file=out, flush=True)
    if args.json:
        _write_json(args.json, info, rows)
        print(f"wrote {args.json}", file=out)
    return 0


def _run_one(name, backends, torch, scale, tf32, gpu_pass, args, info, log) -> list[Row]:
    """Time one workload at one scale and TF32 setting on every backend and the peer; a
    failure is recorded in info["errors"] and the run goes on. ``gpu_pass``: the second
    TF32 pass, which only the GPU backends run. GPU-sized workloads run on the CPU
    backends only when named with --workload."""
    spec = workloads.spec(name)
    devices = ["cuda" if be == "cupy" else "cpu" for be in backends]
    keep = [
        be
        for be, dev in zip(backends, devices)
        if (dev == "cuda" or not gpu_pass) and (dev == "cuda" or not spec.gpu_only or args.workload)
    ]
    if not keep:
        return []
    label = f"{name} x{scale:g}" + ("" if tf32 is None else f" tf32 {'on' if tf32 else 'off'}")
    runners = []
    try:
        runners = _runners(name, keep, torch, scale, tf32, log)
        run_workload(runners, args, log)
        for r in runners:
            r.row.loss = float(r.w.loss())
            if not np.isfinite(r.row.loss):
                log(f"warning: {name}/{r.row.backend}: loss is {r.row.loss}")
        rows = [r.row for r in runners]
    except Exception as e:  # keep going: report what ran, say what did not
        info["errors"].append(f"{label}: {type(e).__name__}: {e}")
        log(f"error: {label}: {type(e).__name__}: {e}")
        rows = []
    finally:
        del runners  # the workloads' arrays
        if "cupy" in keep:
            gc.collect()
            _free_gpu(torch)
    if rows:
        log(f"{label}: done ({rows[0].rounds} rounds)")
    return rows


def _write_json(path, info, rows) -> None:
    """Write what ran so far (a run cut short by a time limit keeps its finished rows)."""
    if not path:
        return
    summarise(rows, info.get("sgemm_gflops") or info["sgemm_gflops_start"])
    data = dict(info)
    data["results"] = [
        {k: v for k, v in asdict(r).items() if k != "samples_ms"} | {"samples_ms": r.samples_ms}
        for r in rows
    ]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


#: The rows of training steps captured into CUDA graphs, after their eager rows.
GRAPH_ROWS = {"cupy": "cupy+graph", "torch-cuda": "torch-cuda+graph"}


def _runners(name, backends, torch, scale, tf32, log=print) -> list[Runner]:
    """The runners of one workload: each backend, the peer on each device, and on a GPU,
    for training steps, the step captured into a CUDA graph by gpunn (``cupy+graph``) and
    by PyTorch (``torch-cuda+graph``, compared to PyTorch eager like the rest); a step
    that cannot be captured is logged and left out."""
    kind = workloads.spec(name).kind
    runners = []

    def add(label, device, is_peer, build, graph=False):
        try:
            w = build(graph=True) if graph else build()
        except Exception as e:
            if not graph:
                raise
            log(f"note: {name}: no {label} row: {type(e).__name__}: {e}")
            return
        row = Row(name, label, device, is_peer, w.batch, w.flops, kind=kind, scale=scale)
        row.tf32 = tf32 if device == "cuda" else None
        runners.append(Runner(row, w))

    for be in backends:
        device = "cuda" if be == "cupy" else "cpu"
        build = functools.partial(workloads.build, name, be, scale)
        add(be, device, False, build)
        if be == "cupy" and kind == "step":
            add(GRAPH_ROWS["cupy"], device, False, build, graph=True)
    if torch is not None:
        devices = dict.fromkeys("cuda" if be == "cupy" else "cpu" for be in backends)
        for device in devices:
            build = functools.partial(workloads.build_torch, name, device, scale)
            label = "torch" if device == "cpu" else "torch-cuda"
            add(label, device, True, build)
            if device == "cuda" and kind == "step":
                add(GRAPH_ROWS[label], device, False, build, graph=True)
    return runners


if __name__ == "__main__":
    sys.exit(main())
