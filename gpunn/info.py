"""``gpunn info``: versions, backends (or why one cannot run), threads, caches, op kinds."""

from __future__ import annotations

import importlib
import os
import platform
import sys


def _version(module: str) -> str | None:
    """The version of an installed module, or None when it is not installed."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    except Exception as e:  # a broken installation: say so rather than crash
        return f"broken ({type(e).__name__}: {e})"
    return str(getattr(mod, "__version__", "unknown version"))


def _cuda_version(code: int) -> str:
    """CUDA's integer version (12040) as text (12.4)."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def cuda_report() -> dict:
    """CuPy's version and what it sees: runtime, driver, devices (each field may be None)."""
    out = {"cupy": _version("cupy"), "runtime": None, "driver": None, "devices": [], "error": None}
    if out["cupy"] is None or out["cupy"].startswith("broken"):
        return out
    import cupy

    runtime = cupy.cuda.runtime
    try:
        out["runtime"] = _cuda_version(cupy.cuda.get_local_runtime_version())
    except Exception:
        pass
    try:
        driver = runtime.driverGetVersion()
        out["driver"] = _cuda_version(driver) if driver else "none"
        out["runtime"] = _cuda_version(runtime.runtimeGetVersion())
        for i in range(runtime.getDeviceCount()):
            props = runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            gib = props["totalGlobalMem"] / 2**30
            out["devices"].append(
                f"{i}: {name} ({gib:.0f} GiB, sm_{props['major']}{props['minor']})"
            )
    except Exception as e:  # no driver, no device
        out["error"] = str(e).strip() or type(e).__name__
    return out


def backend_report() -> list[tuple[str, str | None, object]]:
    """(name, reason it is unavailable or None, backend instance or None) per backend."""
    from gpunn.backends import backend_object, known_backends, why_unavailable

    rows = []
    for name in known_backends():
        reason = why_unavailable(name)
        rows.append((name, reason, None if reason else backend_object(name)))
    return rows


def numba_report() -> dict:
    """Numba's settings as gpunn uses them: threads, threading layer, cache folder."""
    from gpunn.threads import get_num_threads

    out = {"threads": get_num_threads()}
    try:
        import numba
    except ImportError as e:
        out["error"] = str(e)
        return out
    out["max_threads"] = numba.config.NUMBA_NUM_THREADS
    out["threading_layer"] = numba.config.THREADING_LAYER
    out["cache"] = numba.config.CACHE_DIR or "Numba's default (__pycache__ beside the sources)"
    try:
        from gpunn.backends import numba_backend

        info = getattr(numba_backend, "info", None)
        if info is not None:
            details = info()
            out["threads"] = details.get("threads", out["threads"])
            out["threading_layer"] = details.get("threading_layer", out["threading_layer"])
            out["cache"] = details.get("cache", out["cache"])
            if details.get("cache_problem"):
                out["cache_problem"] = details["cache_problem"]
    except Exception as e:  # the backend is unavailable: report Numba's own settings
        out["backend_error"] = str(e)
    return out


def op_kind_lines(backends, unavailable=(), list_ops: bool = False) -> list[str]:
    """Per backend: how many ops of each kind (``gpunn.backends.kinds``), and every op that is
    not a gpunn kernel with its kind and routine; with ``list_ops`` the kernel ops too.
    Tables are data, so a backend in ``unavailable`` is listed too, marked as such."""
    from gpunn.backends import Backend, kinds

    lines = [f"op kinds ({len(Backend.ops())} ops in the backend contract):"]
    for name in backends:
        if name not in kinds.TABLES:
            lines.append(f"  {name}: every op is the reference")
            continue
        table = kinds.table(name)
        tally = ", ".join(f"{n} {kind}" for kind, n in kinds.counts(name).items() if n)
        label = f"{name} (unavailable here)" if name in unavailable else name
        lines.append(f"  {label}: {tally}")
        for op, (kind, detail) in sorted(table.items()):
            if kind != "kernel":
                lines.append(f"    {op}: {kind}" + (f" - {detail}" if detail else ""))
        if list_ops:
            lines.append("    kernel ops: " + ", ".join(kinds.ops_of_kind(name, "kernel")))
    return lines


def report(list_ops: bool = False) -> str:
    """The text ``gpunn info`` prints."""
    import gpunn
    from gpunn.backends import get_backend
    from gpunn.data import data_home

    lines = [f"gpunn {gpunn.__version__}"]
    lines.append(
        f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})"
    )
    lines.append(f"platform {platform.platform()}, {os.cpu_count()} CPUs")
    for label, module, extra in (
        ("NumPy", "numpy", None),
        ("Numba", "numba", None),
        ("SciPy", "scipy", None),
        ("CuPy", "cupy", "pip install 'gpunn[cuda13]' or 'gpunn[cuda12]'"),
        ("scikit-learn", "sklearn", "pip install 'gpunn[data]'"),
        ("tqdm", "tqdm", "pip install 'gpunn[data]'"),
        ("matplotlib", "matplotlib", "pip install 'gpunn[plot]'"),
    ):
        version = _version(module)
        text = version if version else "not installed" + (f" ({extra})" if extra else "")
        lines.append(f"{label} {text}")
    cuda = cuda_report()
    if cuda["cupy"] is None:
        lines.append("CUDA: not used (CuPy is not installed)")
    elif cuda["error"]:
        runtime = f"runtime {cuda['runtime']} (CuPy's), " if cuda["runtime"] else ""
        driver = f"driver {cuda['driver']}, " if cuda["driver"] else ""
        lines.append(f"CUDA: {runtime}{driver}no usable device: {cuda['error']}")
    else:
        lines.append(
            f"CUDA runtime {cuda['runtime']}, driver {cuda['driver']}; devices: "
            + (", ".join(cuda["devices"]) or "none")
        )

    lines.append("")
    lines.append("backends:")
    rows = backend_report()
    for name, reason, _ in rows:
        if reason is None:
            lines.append(f"  {name}: available" + (" (the reference)" if name == "numpy" else ""))
        else:
            reason = reason if reason.startswith(f"{name}:") else f"{name}: {reason}"
            lines.append(f"  {reason}")
    from gpunn.train import default_backend

    env = os.environ.get("GPUNN_BACKEND")
    lines.append(
        f"  active backend: {get_backend()}"
        + (f" (GPUNN_BACKEND={env})" if env else "")
        + f"; gpunn train uses {default_backend()} unless --backend says otherwise"
    )

    nb = numba_report()
    lines.append("")
    if "error" in nb:
        lines.append(f"numba: not importable ({nb['error']})")
    else:
        lines.append(
            f"numba: {nb['threads']} threads (of {nb['max_threads']} launched), threading "
            f"layer {nb['threading_layer']}, cache folder {nb['cache']}"
        )
        if nb.get("cache_problem"):
            lines.append(f"  cache problem: {nb['cache_problem']}")
    lines.append(
        f"data folder: {data_home()}" + (" (GPUNN_DATA)" if os.environ.get("GPUNN_DATA") else "")
    )

    lines.append("")
    unavailable = [name for name, reason, _ in rows if reason]
    lines += op_kind_lines([name for name, _, _ in rows], unavailable, list_ops)
    lines.append("")
    lines += capture_lines(dict((n, r) for n, r, _ in rows).get("cupy"))
    return "\n".join(lines)


def capture_lines(cupy_reason: str | None) -> list[str]:
    """What a training step captured into a CUDA graph (gpunn.cuda.graphed, gpunn train
    --cuda-graph) may contain, per gpunn.cuda.capture_plan, and where the matrix products
    go (gpunn's cuBLAS binding, which capture needs)."""
    from gpunn.cuda import capture_plan

    plan = capture_plan()
    ok = [op for op, why in plan.items() if why is None]
    lines = [
        f"CUDA graphs (cupy only; not yet run on a GPU): {len(ok)} of {len(plan)} ops capturable"
    ]
    lines += [f"  not capturable: {op}: {why}" for op, why in plan.items() if why is not None]
    lines.append(
        "  refused inside a captured step: .item()/.numpy()/synchronize, eager label "
        "checks, index arrays, batch norm with momentum=None, clip error_if_nonfinite, "
        "products without gpunn's cuBLAS binding"
    )
    if cupy_reason is None:
        from gpunn.backends import backend_object

        dev = backend_object("cupy")._dev
        where = "gpunn's cuBLAS binding" if dev.blas is not None else dev.blas_error
        lines.append(f"  matrix products: {where}")
    return lines
