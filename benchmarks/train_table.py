"""The README's training table: every model of it trained with its defaults on every
available backend over three seeds, written to one results file, and the table printed
from that file.

    python benchmarks/train_table.py                 # train, write benchmarks/results/train-cpu.json
    python benchmarks/train_table.py --readme        # print the README table from that file

Each run is ``gpunn train --model M --data D --backend B --seed S`` with every other
setting at its default (through :func:`gpunn.train.train`, the same code as the command).
A run records the final epoch's validation accuracy, the test accuracy (measured once, at
the end, on the held-out test part) and the mean seconds per training epoch. For the
adding task, a regression, the test mean squared error stands for the accuracy.

The file also holds the machine (CPU model, cores) and the versions. Timings on a shared
machine are rough; accuracies do not depend on the load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time

# (model, data) in the order of the README table
TABLE = [
    ("logreg", "breast_cancer"),
    ("perceptron", "breast_cancer"),
    ("mlp", "digits"),
    ("cnn", "digits"),
    ("rnn", "digits"),
    ("lstm", "digits"),
    ("rnn", "adding"),
    ("lstm", "parity"),
]
SEEDS = (0, 1, 2)
DEFAULT_FILE = os.path.join(os.path.dirname(__file__), "results", "train-cpu.json")


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system()}


def versions() -> dict:
    import numpy

    import gpunn

    out = {"python": platform.python_version(), "numpy": numpy.__version__}
    out["gpunn"] = gpunn.__version__
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        out["numba"] = None
    return out


def _order(backend: str) -> int:
    return ["numpy", "numba", "cupy"].index(backend) if backend in ("numpy", "numba", "cupy") else 9


def run_all(backends, seeds, table, path, keep=(), commands=()) -> dict:
    """Train every (model, data) of ``table`` on every backend and seed; ``keep``: rows of
    an earlier file to carry over (other models), written first."""
    from gpunn.train import result_record, train

    results = {
        # every command that wrote rows of this file, the last one last
        "commands": [*commands, " ".join(["python benchmarks/train_table.py", *sys.argv[1:]])],
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine(),
        "versions": versions(),
        "seeds": list(seeds),
        "backends": sorted({*backends, *(r["backend"] for r in keep)}, key=_order),
        "runs": list(keep),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for model, data in table:
            for backend in backends:
                for seed in seeds:
                    out = os.path.join(tmp, f"{model}-{data}-{backend}-{seed}")
                    r = train(
                        model, data, backend=backend, seed=seed, out=out, progress=False,
                        stream=io.StringIO(),
                    )  # fmt: skip
                    rec = result_record(r)
                    row = {"model": model, "data": data, "backend": backend, "seed": seed}
                    row.update({k: v for k, v in rec.items() if k != "gpunn_version"})
                    results["runs"].append(row)
                    print(
                        f"{model}/{data} {backend} seed {seed}: final val "
                        f"{rec['final_val_acc']:.4f}, test {rec['test_acc']:.4f} "
                        f"(loss {rec['test_loss']:.4f}), {rec['seconds_per_epoch']:.3f} s/epoch",
                        flush=True,
                    )
                    with open(path, "w", encoding="utf-8") as f:  # keep what is done so far
                        json.dump(results, f, indent=1)
                        f.write("\n")
    return results


def _pct(values) -> str:
    mean = sum(values) / len(values)
    lo, hi = min(values), max(values)
    if hi - lo < 5e-5:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f}% ({100 * lo:.1f}-{100 * hi:.1f})"


def _mse(values) -> str:
    mean = sum(values) / len(values)
    return f"MSE {mean:.4f} ({min(values):.4f}-{max(values):.4f})"


def readme_table(results: dict) -> str:
    """The markdown table: per model and data, the test and final validation accuracy over
    the seeds (mean, and min-max when they differ) per backend, and s/epoch per backend."""
    backends = results["backends"]
    head = ["model / data"]
    head += [f"test, {b}" for b in backends] + [f"final val, {b}" for b in backends]
    head += [f"{b} s/epoch" for b in backends]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    pairs = dict.fromkeys((r["model"], r["data"]) for r in results["runs"])
    rank = {pair: k for k, pair in enumerate(TABLE)}
    for model, data in sorted(pairs, key=lambda pair: rank.get(pair, len(TABLE))):
        rows = [r for r in results["runs"] if (r["model"], r["data"]) == (model, data)]
        regression = data == "adding"
        cells = [f"{model} / {data}"]
        for key in ("test", "final_val"):
            for b in backends:
                mine = [r for r in rows if r["backend"] == b]
                if not mine:
                    cells.append("not run")
                    continue
                if regression:
                    cell = _mse([r[f"{key}_loss"] for r in mine])
                else:
                    cell = _pct([r[f"{key}_acc"] for r in mine])
                if len(mine) < len(results["seeds"]):
                    cell += f", {len(mine)} of {len(results['seeds'])} seeds"
                cells.append(cell)
        for b in backends:
            times = [r["seconds_per_epoch"] for r in rows if r["backend"] == b]
            cells.append(f"{sum(times) / len(times):.2g}" if times else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", action="store_true", help="print the README table from FILE")
    p.add_argument("--file", default=DEFAULT_FILE, help="the results file (default: %(default)s)")
    p.add_argument("--backends", help="comma-separated (default: every available one)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="default: %(default)s")
    p.add_argument(
        "--models",
        help="comma-separated model/data pairs to (re)train on --backends, keeping the "
        "file's other rows (default: the whole table)",
    )
    args = p.parse_args(argv)
    if args.readme:
        with open(args.file, encoding="utf-8") as f:
            print(readme_table(json.load(f)))
        return 0
    import gpunn

    backends = args.backends.split(",") if args.backends else gpunn.available_backends()
    table = TABLE
    if args.models:
        table = [tuple(pair.split("/")) for pair in args.models.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(os.path.dirname(os.path.abspath(args.file)), exist_ok=True)
    keep, commands = [], []
    if args.models and os.path.exists(args.file):  # redo some rows, keep the others
        with open(args.file, encoding="utf-8") as f:
            earlier = json.load(f)
            commands = earlier.get("commands", [earlier.get("command")])
            redo = {(m, d, b) for m, d in table for b in backends}
            keep = [r for r in earlier["runs"] if (r["model"], r["data"], r["backend"]) not in redo]
    run_all(backends, seeds, table, args.file, keep, commands)
    print(f"wrote {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
