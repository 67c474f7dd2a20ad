"""Bar chart (PNG) and Markdown table from ``gpunn bench --json`` output.

    python benchmarks/plot_bench.py benchmarks/results/bench-cpu.json \\
        -o benchmarks/results/bench-cpu.png --markdown

One group of bars per workload, one bar per gpunn backend: its time per training step
divided by the peer's (PyTorch on the same device, same thread count), on a log scale,
so 0.5 is twice as fast as PyTorch and 2 half as fast. ``--markdown`` prints the table
README's "Performance" section shows.

Not a benchmark module: asv collects nothing here (matplotlib is imported only to plot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_JSON = os.path.join(HERE, "results", "bench-cpu.json")


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


def _layout(data):
    """(workloads in run order, gpunn backends in run order, {(workload, backend): row})."""
    rows = {(r["workload"], r["backend"]): r for r in data["results"]}
    names = list(dict.fromkeys(r["workload"] for r in data["results"]))
    backends = list(dict.fromkeys(r["backend"] for r in data["results"] if not r["is_peer"]))
    return names, backends, rows


def subtitle(data) -> str:
    m, v = data["machine"], data["versions"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}{gpu}, {m['threads']} threads; gpunn {v['gpunn']}, torch {v.get('torch')}"


def plot(data: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, backends, rows = _layout(data)
    peer = peer_label(data)
    width = 0.8 / max(len(backends), 1)
    fig, ax = plt.subplots(figsize=(1.9 * len(names) + 2.5, 4.2), dpi=120)
    ratios = []
    for k, be in enumerate(backends):
        xs, ys = [], []
        for i, name in enumerate(names):
            ratio = rows.get((name, be), {}).get("ratio_to_peer")
            if ratio:
                xs.append(i + (k - (len(backends) - 1) / 2) * width)
                ys.append(ratio)
        ratios += ys
        # bars grow from the peer's line at 1: up when slower, down when faster
        bars = ax.bar(xs, [y - 1 for y in ys], width * 0.92, bottom=1, label=f"gpunn {be}")
        for bar, y in zip(bars, ys):
            ax.annotate(
                f"{y:.2f}",
                (bar.get_x() + bar.get_width() / 2, y),
                ha="center",
                va="bottom" if y >= 1 else "top",
                fontsize=8,
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
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"time per step / {peer}'s  (lower is faster)")
    ax.set_title(f"gpunn training step vs {peer}\n{subtitle(data)}", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def markdown(data: dict) -> str:
    """One line per workload: the peer's ms/step, then each backend's ms/step and ratio."""
    names, backends, rows = _layout(data)
    peer = peer_label(data)
    head = ["workload", "batch", f"{peer} ms/step"]
    for be in backends:
        head += [f"{be} ms/step", f"{be} / {peer}"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name in names:
        peer_row = next((r for (w, _), r in rows.items() if w == name and r["is_peer"]), None)
        some = peer_row or next(r for (w, _), r in rows.items() if w == name)
        cells = [name, str(some["batch"]), _ms(peer_row["median_ms"]) if peer_row else "-"]
        for be in backends:
            r = rows.get((name, be))
            ratio = r.get("ratio_to_peer") if r else None
            cells += [_ms(r["median_ms"]) if r else "-", f"{ratio:.2f}" if ratio else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="?", default=DEFAULT_JSON, help="gpunn bench --json output")
    p.add_argument("-o", "--output", help="PNG to write (default: the JSON's name, .png)")
    p.add_argument("--markdown", action="store_true", help="also print the Markdown table")
    args = p.parse_args(argv)
    data = load(args.json)
    out = args.output or os.path.splitext(args.json)[0] + ".png"
    plot(data, out)
    print(f"wrote {out}")
    if args.markdown:
        print()
        print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
