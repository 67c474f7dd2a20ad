"""Does PyTorch learn what gpunn learns, with the same model and the same budget?

For the recurrent rows of the training table (the RNN on the adding problem at length 20,
the LSTM on it, and the LSTM on 8-bit parity) this trains gpunn (``gpunn train`` with its
defaults) and PyTorch on the same data, from the same initial parameters (gpunn's,
copied key for key), with the same optimizer, learning rate, schedule, weight decay,
batch size and number of epochs, and reports both on the same test part. The sample order
differs (each framework shuffles with its own generator).

    python benchmarks/parity_torch.py        # writes benchmarks/results/parity-torch.json

Needs PyTorch (CPU is enough).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

CASES = [("rnn", "adding"), ("lstm", "adding"), ("lstm", "parity")]
SEEDS = (0, 1, 2)
DEFAULT_FILE = os.path.join(os.path.dirname(__file__), "results", "parity-torch.json")


def torch_run(settings, split, state, seed):
    """Train PyTorch's twin of the gpunn model whose initial parameters are ``state``;
    returns (test loss, test accuracy) as gpunn's trainer measures them."""
    import torch

    from gpunn.training.specs import SPECS

    spec = SPECS[settings["model"]]
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    x = torch.from_numpy(spec.layout(split.x_train, split.kind))
    y = torch.from_numpy(spec.targets(split.y_train, split.task))
    xt = torch.from_numpy(spec.layout(split.x_test, split.kind))
    yt = spec.targets(split.y_test, split.task)
    cell = torch.nn.RNN if settings["model"] == "rnn" else torch.nn.LSTM
    hidden = settings["hidden"][0]
    outputs = 1 if split.task == "regression" else split.num_classes

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(x.shape[2], hidden, batch_first=True)
            self.head = torch.nn.Linear(hidden, outputs)

        def forward(self, inp):
            return self.head(self.rnn(inp)[0][:, -1])

    model = Twin()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    opt = torch.optim.Adam(
        model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
    )
    loss_fn = torch.nn.MSELoss() if split.task == "regression" else torch.nn.CrossEntropyLoss()
    bs, epochs = settings["batch_size"], settings["epochs"]
    nb = math.ceil(len(x) / bs)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for b in range(nb):
            if settings["scheduler"] == "cosine":
                for g in opt.param_groups:
                    g["lr"] = (
                        settings["lr"]
                        * 0.5
                        * (1 + math.cos(math.pi * (epoch * nb + b) / (epochs * nb)))
                    )
            idx = order[b * bs : (b + 1) * bs]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = model(xt)
        test_loss = float(loss_fn(out, torch.from_numpy(yt)))
    objective = spec.objective_for(split.task)
    tol = split.info.get("tolerance", 0.04)
    return test_loss, float(objective.correct(out.numpy(), yt, tol).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--file", default=DEFAULT_FILE)
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--backend", default="numba")
    p.add_argument(
        "--gpunn-from",
        metavar="FILE",
        help="take gpunn's test figures from a training-table file (its runs with the same "
        "model, data and seed, on --backend where present) instead of training gpunn again",
    )
    args = p.parse_args(argv)
    import torch

    import gpunn
    from gpunn import data as gdata
    from gpunn.train import build_model, resolve_settings, train

    seeds = [int(s) for s in args.seeds.split(",")]
    table = None
    if args.gpunn_from:
        with open(args.gpunn_from, encoding="utf-8") as f:
            table = json.load(f)["runs"]
    results = {
        "command": "python benchmarks/parity_torch.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "versions": {
            "python": platform.python_version(), "gpunn": gpunn.__version__,
            "torch": torch.__version__, "numpy": np.__version__,
        },
        "gpunn_backend": args.backend,
        "gpunn_from": os.path.basename(args.gpunn_from) if args.gpunn_from else None,
        "runs": [],
    }  # fmt: skip
    for model, data in CASES:
        split = gdata.load(data)
        for seed in seeds:
            settings = resolve_settings({"model": model, "data": data, "seed": seed})
            settings["backend"] = args.backend
            gpunn.manual_seed(seed)  # the initial parameters gpunn's trainer starts from
            with gpunn.use_backend("numpy"):
                x0 = gpunn.train.SPECS[model].layout(split.x_train, split.kind)
                state = {
                    k: v.numpy() for k, v in build_model(settings, split, x0).state_dict().items()
                }
            if table is not None:
                rows = [
                    r for r in table if (r["model"], r["data"], r["seed"]) == (model, data, seed)
                ]
                rows.sort(key=lambda r: r["backend"] != args.backend)
                if not rows:
                    continue
                g_loss, g_acc, g_backend = (
                    rows[0]["test_loss"],
                    rows[0]["test_acc"],
                    rows[0]["backend"],
                )
            else:
                with tempfile.TemporaryDirectory() as out:
                    r = train(model, split, backend=args.backend, seed=seed, out=out,
                              progress=False, stream=io.StringIO())  # fmt: skip
                g_loss, g_acc, g_backend = r.test_loss, r.test_acc, args.backend
            t_loss, t_acc = torch_run(settings, split, state, seed)
            row = {
                "model": model, "data": data, "seed": seed, "epochs": settings["epochs"],
                "gpunn_backend": g_backend, "gpunn_test_loss": g_loss, "gpunn_test_acc": g_acc,
                "torch_test_loss": t_loss, "torch_test_acc": t_acc,
            }  # fmt: skip
            results["runs"].append(row)
            print(
                f"{model}/{data} seed {seed}: test loss gpunn {g_loss:.4f} torch "
                f"{t_loss:.4f}; test acc gpunn {g_acc:.3f} torch {t_acc:.3f}",
                flush=True,
            )
            with open(args.file, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
                f.write("\n")
    print(f"wrote {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
