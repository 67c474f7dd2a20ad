"""Bar chart (PNG), Markdown tables and the README's performance block from ``gpunn bench
--json`` output.

    python benchmarks/plot_bench.py benchmarks/results/bench-cpu.json --readme README.md

writes the chart beside the JSON (``bench-cpu.png``) and rewrites, in README.md, the block
between ``<!-- gpunn bench: benchmarks/results/bench-cpu.json -->`` and
``<!-- end gpunn bench -->``: the command and file, the machine, the sgemm rate at the
start and end of the run, and the table, every figure taken from the JSON.
``--markdown`` prints the tables instead; ``--no-plot`` skips the chart (no matplotlib).

The chart: one group of bars per workload, one bar per gpunn backend (and TF32 setting):
its time per step divided by the peer's (PyTorch on the same device, thread count, batch
and TF32 setting, in the same run), on a log scale, so 0.5 is twice as fast as PyTorch.

Not a benchmark module: asv collects nothing here (matplotlib is imported only to plot).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_JSON = os.path.join(HERE, "results", "bench-cpu.json")
END = "<!-- end gpunn bench -->"


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not any(r.get("ratio_to_peer") for r in data["results"]):
        raise SystemExit(
            f"{path}: no ratios to a peer in it; run `gpunn bench --against torch --json FILE`"
        )
    return data


def peer_label(data) -> str:
    """The peer rows' name ("torch", "torch-cuda"), or "peer" when there are none."""
    names = list(dict.fromkeys(r["backend"] for r in data["results"] if r["is_peer"]))
    return "/".join(names) or data.get("peer") or "peer"


def _case(r, many_scales) -> str:
    """A table line / a bar group: the workload, with its batch scale when several ran."""
    return r["workload"] + (f" x{r.get('scale', 1):g}" if many_scales else "")


def _series(r) -> str:
    """A column / a bar colour: the backend, with TF32 where it was on."""
    return r["backend"] + (" TF32" if r.get("tf32") else "")


def _layout(data):
    """(cases in run order, gpunn series in run order, {(case, series): row})."""
    results = data["results"]
    many = len({r.get("scale", 1) for r in results}) > 1
    rows = {(_case(r, many), _series(r)): r for r in results}
    cases = list(dict.fromkeys(_case(r, many) for r in results))
    series = list(dict.fromkeys(_series(r) for r in results if not r["is_peer"]))
    return cases, series, rows


def _peer_row(rows, case, series):
    """The peer row that a gpunn series' ratio refers to (same case and TF32 setting)."""
    tf32 = series.endswith(" TF32")
    for (c, _), r in rows.items():
        if c == case and r["is_peer"] and bool(r.get("tf32")) == tf32:
            return r
    return None


def subtitle(data) -> str:
    m, v = data["machine"], data["versions"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}{gpu}, {m['threads']} threads; gpunn {v['gpunn']}, torch {v.get('torch')}"


def plot(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases, series, rows = _layout(data)
    peer = peer_label(data)
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(cases) + 2.5, 4.4), dpi=120)
    ratios = []
    for k, name in enumerate(series):
        xs, ys = [], []
        for i, case in enumerate(cases):
            ratio = rows.get((case, name), {}).get("ratio_to_peer")
            if ratio:
                xs.append(i + (k - (len(series) - 1) / 2) * width)
                ys.append(ratio)
        ratios += ys
        # bars grow from the peer's line at 1: up when slower, down when faster
        bars = ax.bar(xs, [y - 1 for y in ys], width * 0.92, bottom=1, label=f"gpunn {name}")
        for bar, y in zip(bars, ys):
            ax.annotate(
                f"{y:.2f}",
                (bar.get_x() + bar.get_width() / 2, y),
                ha="center",
                va="bottom" if y >= 1 else "top",
                fontsize=7,
                xytext=(0, 2 if y >= 1 else -2),
                textcoords="offset points",
            )
    ax.axhline(1.0, color="0.2", lw=1, ls="--", label=f"{peer} (= 1)")
    ax.set_yscale("log")
    low, high = min(ratios + [1.0]) / 1.6, max(ratios + [1.0]) * 1.6
    ax.set_ylim(low, high)
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if low <= t <= high]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(range(len(cases)), cases, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"time per step / {peer}'s  (lower is faster)")
    ax.set_title(f"gpunn vs {peer}, time per step\n{subtitle(data)}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def markdown(data: dict) -> str:
    """One line per workload (and batch scale): the peer's ms/step, then per gpunn backend
    (and TF32 setting) its ms/step and its ratio to the peer; on the CPU also the best
    backend's fraction of the sgemm rate. A bandwidth table follows where one was run."""
    cases, series, rows = _layout(data)
    peer = peer_label(data)
    tf32 = any(s.endswith(" TF32") for s in series)
    peers = ["", " TF32"] if tf32 else [""]
    head = ["workload", "batch"] + [f"{peer}{t} ms" for t in peers]
    for s in series:
        head += [f"{s} ms", f"{s} / {peer}"]
    cpu = any(r.get("sgemm_fraction") for r in data["results"] if not r["is_peer"])
    if cpu:
        head += [f"{series[-1]} % sgemm"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for case in cases:
        some = next(r for (c, _), r in rows.items() if c == case)
        cells = [case, str(some["batch"])]
        for t in peers:
            p = _peer_row(rows, case, series[0] + t if series else t)
            cells.append(_ms(p["median_ms"]) if p else "-")
        for s in series:
            r = rows.get((case, s))
            ratio = r.get("ratio_to_peer") if r else None
            cells += [_ms(r["median_ms"]) if r else "-", f"{ratio:.2f}" if ratio else "-"]
        if cpu:
            r = rows.get((case, series[-1]))
            frac = r.get("sgemm_fraction") if r else None
            cells.append(f"{frac:.0%}" if frac else "-")
        lines.append("| " + " | ".join(cells) + " |")
    bw = data.get("bandwidth")
    if bw:
        lines += ["", bandwidth_markdown(bw)]
    return "\n".join(lines)


def bandwidth_markdown(bw: dict) -> str:
    ok = [k for k in bw["kernels"] if "error" not in k]
    lines = [
        f"Fused elementwise kernels against the device-to-device copy, {bw['copy_gb_per_s']:.0f} "
        f"GB/s in the same run ({bw['array_mib']} MiB float32 arrays, bytes read + written)"
        + (
            f": {min(k['fraction_of_copy'] for k in ok):.0%} to "
            f"{max(k['fraction_of_copy'] for k in ok):.0%} of it."
            if ok
            else "."
        ),
        "",
        "| fused kernel | GB/s | of copy |",
        "|---|---:|---:|",
    ]
    for k in bw["kernels"]:
        if "error" in k:
            lines.append(f"| {k['kernel']} | error: {k['error']} | - |")
        else:
            lines.append(f"| {k['kernel']} | {k['gb_per_s']:.0f} | {k['fraction_of_copy']:.0%} |")
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def readme_block(data: dict, json_rel: str, png_rel: str | None) -> str:
    """The README's block for one results file: every figure from ``data``."""
    m = data["machine"]
    v = data["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("gpunn", "torch", "numpy", "numba") if v.get(k))
    start, end = data.get("sgemm_gflops_start"), data.get("sgemm_gflops_end")
    sgemm = (
        f"NumPy's float32 sgemm ran at {start:.0f} GFLOP/s at the start of the run and "
        f"{end:.0f} at its end"
        if start and end
        else f"NumPy's float32 sgemm ran at {data['sgemm_gflops']:.0f} GFLOP/s"
    )
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    text = [
        f"From `{_command(data)}` (written to `{json_rel}` on {data['created'][:10]}; table by "
        f"`python benchmarks/plot_bench.py {json_rel} --readme README.md`): {m['cpu']}, "
        f"{m['cpus']} CPUs, {m['threads']} threads, {m['blas']}{gpu}; {versions}. {sgemm}. "
        "Time per step in ms (median of the samples) and as a ratio to PyTorch's, measured "
        "in turns in the same run (below 1 is faster); `% sgemm` is the last backend's "
        "matrix-product and convolution rate as a fraction of the better sgemm figure.",
        "",
        markdown(data),
    ]
    if png_rel:
        text += ["", f"![gpunn vs PyTorch]({png_rel})"]
    if data.get("errors"):
        text += ["", "Workloads that failed in this run: " + "; ".join(data["errors"])]
    return "\n".join(text)


def _command(data) -> str:
    """The command as run: with ``env -u`` for the OpenBLAS tuning variables the run
    recorded as unset (files from before that record: the command alone)."""
    env = data.get("blas_environment") or {}
    unset = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in env and env[k] is None]
    return (
        "".join(f"env -u {k} " if i == 0 else f"-u {k} " for i, k in enumerate(unset))
        + (data["command"])
    )


def update_readme(readme: str, data: dict, json_path: str, png_path: str | None) -> None:
    """Replace the block that starts with ``<!-- gpunn bench: <json path> -->``."""
    json_rel = os.path.relpath(os.path.abspath(json_path), ROOT)
    png_rel = os.path.relpath(os.path.abspath(png_path), ROOT) if png_path else None
    start = f"<!-- gpunn bench: {json_rel} -->"
    with open(readme) as f:
        text = f.read()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no block `{start} ... {END}` to replace")
    block = f"{start}\n{readme_block(data, json_rel, png_rel)}\n{END}"
    text = pattern.sub(lambda _: block, text, count=1)
    with open(readme, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="?", default=DEFAULT_JSON, help="gpunn bench --json output")
    p.add_argument("-o", "--output", help="PNG to write (default: the JSON's name, .png)")
    p.add_argument("--no-plot", action="store_true", help="no chart (needs no matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the Markdown tables")
    p.add_argument("--readme", metavar="FILE", help="rewrite this results file's block in FILE")
    args = p.parse_args(argv)
    data = load(args.json)
    out = None
    if not args.no_plot:
        out = args.output or os.path.splitext(args.json)[0] + ".png"
        plot(data, out)
        print(f"wrote {out}")
    if args.readme:
        update_readme(args.readme, data, args.json, out)
        print(f"updated {args.readme}")
    if args.markdown:
        print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
