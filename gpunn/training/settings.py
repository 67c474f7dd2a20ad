"""Settings of a training run: the defaults of each model on each data set, checks of
what the user asked for, and the backend it runs on. Everything here runs before any
training starts and raises :class:`TrainError` for settings that cannot work."""

from __future__ import annotations

import os
import sys
import tempfile

from gpunn import data as gdata
from gpunn.backends import available_backends, why_unavailable
from gpunn.training.specs import SPECS, TrainError, refusal

MODELS = tuple(SPECS)
DATASETS = tuple(gdata.DATASETS)
OPTIMIZERS = ("sgd", "adam", "adamw")
MODEL_INFO = {name: spec.info for name, spec in SPECS.items()}
DEFAULTS = {name: dict(spec.defaults) for name, spec in SPECS.items()}
DEFAULT_MOMENTUM = 0.9  # for sgd, unless the model's defaults say otherwise
SETTINGS = ("model", "data", "backend", "epochs", "batch_size", "lr", "optimizer", "momentum")
SETTINGS += ("hidden", "seed", "threads", "weight_decay", "scheduler", "clip", "amp")
SETTINGS += ("cuda_graph",)
#: --scheduler choices (gpunn.optim.lr_scheduler, stepped after every update); runs saved
#: before "none" was the name say "constant"
SCHEDULERS = ("none", "step", "cosine", "onecycle")
AMP = ("bfloat16", "float16")
ADAMW_WEIGHT_DECAY = 1e-2  # PyTorch's AdamW default, when --weight-decay is not given


def default_backend() -> str:
    """numba where it runs, else the numpy reference."""
    return "numba" if "numba" in available_backends() else "numpy"


def defaults_for(model: str, data: str) -> dict:
    """The default settings of ``model`` on ``data``."""
    spec = SPECS[model]
    out = {"momentum": None, "hidden": None, "weight_decay": None, "scheduler": "none"}
    out.update(clip=None, amp=None)
    out.update({**spec.defaults, **spec.per_data.get(data, {})})
    if out.get("optimizer") == "sgd" and out.get("momentum") is None:
        out["momentum"] = DEFAULT_MOMENTUM
    return out


def check_compatible(model: str, data) -> None:
    """Raise TrainError saying why ``model`` cannot learn ``data`` (a name or DataSplit)."""
    if isinstance(data, gdata.DataSplit):
        name, kind, task, classes = data.name, data.kind, data.task, data.num_classes
    else:
        name = data
        kind, task, classes, _ = gdata.DATASETS[data]
    why = refusal(SPECS[model], name, kind, task, classes)
    if why is not None:
        raise TrainError(why)


def resolve_settings(options: dict, saved: dict | None = None) -> dict:
    """Fill in unset options (None): from the saved config when resuming, else from the
    model's defaults on the data set; then check every value."""
    chosen = {k: v for k, v in options.items() if v is not None}
    saved = saved or {}
    model = chosen.get("model") or saved.get("model") or "logreg"
    data = chosen.get("data") or saved.get("data") or "breast_cancer"
    data_name = data.name if isinstance(data, gdata.DataSplit) else data
    if model not in SPECS:
        raise TrainError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if not isinstance(data, gdata.DataSplit) and data not in DATASETS:
        raise TrainError(f"unknown data set {data!r}; choose from {', '.join(DATASETS)}")
    spec = SPECS[model]
    if saved.get("model") == model and saved.get("data") == data_name:
        base = {k: saved.get(k) for k in SETTINGS}
    else:
        base = {**defaults_for(model, data_name), "seed": 0, "backend": None, "threads": None}
    s = {**base, **chosen, "model": model, "data": data_name}
    if not spec.update.uses_optimizer:
        s["optimizer"] = s["momentum"] = None
    elif s.get("optimizer") is None:
        s["optimizer"] = "adam"
    if s.get("optimizer") not in (None, *OPTIMIZERS):
        raise TrainError(
            f"unknown optimizer {s['optimizer']!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    if s["optimizer"] == "sgd" and s.get("momentum") is None:
        s["momentum"] = spec.defaults.get("momentum", DEFAULT_MOMENTUM)
    if s.get("hidden") is not None:
        s["hidden"] = [int(h) for h in s["hidden"]]
        if spec.one_hidden and len(s["hidden"]) != 1:
            raise TrainError(f"{model} takes one hidden size, got {s['hidden']}")
        if any(h < 1 for h in s["hidden"]):
            raise TrainError(f"hidden sizes must be >= 1, got {s['hidden']}")
    for key in ("epochs", "batch_size"):
        if int(s[key]) < 1:
            raise TrainError(f"--{key.replace('_', '-')} must be >= 1, got {s[key]}")
        s[key] = int(s[key])
    if not float(s["lr"]) > 0:
        raise TrainError(f"--lr must be > 0, got {s['lr']}")
    s["lr"] = float(s["lr"])
    if s.get("momentum") is not None and not 0 <= float(s["momentum"]) < 1:
        raise TrainError(f"--momentum must be in [0, 1), got {s['momentum']}")
    s["seed"] = int(s.get("seed") or 0)
    if s.get("weight_decay") is None:  # (runs saved before it had none)
        s["weight_decay"] = ADAMW_WEIGHT_DECAY if s["optimizer"] == "adamw" else 0.0
    s["weight_decay"] = float(s["weight_decay"])
    if not s["weight_decay"] >= 0:
        raise TrainError(f"--weight-decay must be >= 0, got {s['weight_decay']}")
    s["scheduler"] = {None: "none", "constant": "none"}.get(s.get("scheduler"), s.get("scheduler"))
    if s["scheduler"] not in SCHEDULERS:
        raise TrainError(
            f"unknown scheduler {s['scheduler']!r}; choose from {', '.join(SCHEDULERS)}"
        )
    if s.get("clip") is not None:
        s["clip"] = float(s["clip"])
        if not s["clip"] > 0:
            raise TrainError(f"--clip must be > 0 (a gradient norm), got {s['clip']}")
    if s.get("amp") not in (None, *AMP):
        raise TrainError(f"unknown --amp {s['amp']!r}; choose from {', '.join(AMP)}")
    if not spec.update.uses_optimizer and (s.get("clip") or s.get("scheduler") != "none"):
        raise TrainError(
            f"{model} learns by the perceptron rule, without gradients or an optimizer: "
            "--clip and --scheduler do not apply"
        )
    s["clip"], s["amp"] = s.get("clip"), s.get("amp")
    if s.get("cuda_graph") not in (None, True, False):
        raise TrainError(f"cuda_graph must be True, False or None (auto), got {s['cuda_graph']!r}")
    s["cuda_graph"] = s.get("cuda_graph")
    return s


def check_cuda_graph(settings: dict, explicit: bool) -> None:
    """``--cuda-graph`` needs the cupy backend: an explicit request elsewhere raises
    TrainError; one saved by a resumed run that now trains elsewhere falls back to auto."""
    if settings.get("cuda_graph") and settings["backend"] != "cupy":
        if explicit:
            raise TrainError(
                f"--cuda-graph needs the cupy backend: a CUDA graph replays GPU work, and this "
                f"run trains on {settings['backend']!r} (drop --cuda-graph, or pass "
                "--backend cupy on a machine with a GPU)"
            )
        settings["cuda_graph"] = None
    if settings.get("cuda_graph") and not SPECS[settings["model"]].update.uses_optimizer:
        raise TrainError(
            f"--cuda-graph: {settings['model']} learns by the perceptron rule, sample by "
            "sample on the host; only gradient steps are captured"
        )


def choose_backend(name: str | None, explicit: bool) -> str:
    """The backend to train on: ``name`` if it runs here; a saved run's backend that does
    not run here falls back to the default with a note; an explicit one raises."""
    if name is None:
        return default_backend()
    reason = why_unavailable(name)
    if reason is None:
        return name
    if not explicit:
        fallback = default_backend()
        print(
            f"gpunn train: the run used backend {name!r}, which is unavailable here "
            f"({reason}); continuing on {fallback!r}",
            file=sys.stderr,
        )
        return fallback
    raise TrainError(f"backend {name!r} cannot run here: {reason}")


def check_writable(out: str) -> None:
    """Create ``out`` if needed and make sure files can be written there."""
    try:
        os.makedirs(out, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".gpunn-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainError(
            f"cannot write to the output folder {out!r}: {e.strerror or e}; choose another "
            "with --out DIR"
        ) from None
