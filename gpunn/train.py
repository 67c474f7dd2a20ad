"""The training job behind ``gpunn train``: a model of the lecture on a data set, with a
progress bar, validation each epoch, checkpoints, exact resume and training curves.

A run writes into its folder (``--out``, default ``runs/<model>-<data>``):

* ``config.json``: every setting of the run (after defaults), and the gpunn version;
* ``metrics.jsonl``: one JSON line per epoch (losses, validation accuracy, time, speed);
* ``checkpoint``: ``gpunn.save`` file with the model's parameters (``model.<name>``), the
  optimizer's state (``optimizer.<key>``), the epoch, the position inside an interrupted
  epoch and gpunn's random state; written atomically after every epoch;
* ``curves.png``: loss and accuracy per epoch (needs matplotlib, ``gpunn[plot]``).

Resuming (``resume=True``) restores all of it, so a run interrupted after any epoch, or
by Ctrl-C inside one, ends with exactly the parameters of a run that was never
interrupted. Python API: :func:`train` returns a :class:`TrainResult`.

The pieces live in :mod:`gpunn.training`: the model table (``specs``), the settings
(``settings``), the loop (``loop``) and its extensions (``extensions``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import numpy as np

import gpunn
from gpunn import data as gdata
from gpunn import distributed as dist
from gpunn.backends import backend_object
from gpunn.errors import BackendError
from gpunn.training.extensions import (
    Checkpoint,
    CurvePlot,
    MetricsLog,
    ProgressReport,
    read_config,
    read_metrics,
    write_text,
)
from gpunn.training.loop import (
    Trainer,
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    build_optimizer,
)
from gpunn.training.settings import (
    DATASETS,
    DEFAULTS,
    MODEL_INFO,
    MODELS,
    OPTIMIZERS,
    check_compatible,
    check_cuda_graph,
    check_writable,
    choose_backend,
    default_backend,
    defaults_for,
    resolve_settings,
)
from gpunn.training.specs import SPECS, TrainError

__all__ = [
    "DATASETS", "DEFAULTS", "MODELS", "MODEL_INFO", "OPTIMIZERS", "SPECS", "TrainError",
    "TrainResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "build_model",
    "build_optimizer", "check_compatible", "default_backend", "defaults_for",
    "prepare_arrays", "read_config", "read_metrics", "resolve_settings", "result_record",
    "train",
]  # fmt: skip


def prepare_arrays(model: str, split: gdata.DataSplit):
    """Host arrays (x_train, y_train, x_val, y_val) laid out for ``model`` (see its spec)."""
    spec = SPECS[model]
    return (
        spec.layout(split.x_train, split.kind),
        spec.targets(split.y_train, split.task),
        spec.layout(split.x_val, split.kind),
        spec.targets(split.y_val, split.task),
    )


def build_model(settings: dict, split: gdata.DataSplit, x_train: np.ndarray):
    """The model of ``settings['model']`` sized for ``split``."""
    outputs = 1 if split.task == "regression" else split.num_classes
    return SPECS[settings["model"]].build(settings, split, x_train, outputs)


def train(
    model: str | None = None,
    data=None,
    *,
    backend: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    momentum: float | None = None,
    hidden=None,
    seed: int | None = None,
    threads: int | None = None,
    weight_decay: float | None = None,
    scheduler: str | None = None,
    clip: float | None = None,
    amp: str | None = None,
    cuda_graph: bool | None = None,
    out: str | None = None,
    resume: bool = False,
    callbacks=(),
    progress: bool = True,
    stream=None,
    json_path: str | None = None,
) -> TrainResult:
    """Train ``model`` (one of :data:`MODELS`) on ``data`` (a name from :data:`DATASETS`, or
    a :class:`gpunn.data.DataSplit`) and write the run into ``out``.

    Unset options take the model's defaults (:data:`DEFAULTS`), or, with ``resume=True``,
    the settings saved in ``out/config.json``. ``callbacks`` are extra extensions, called
    as ``cb(event, trainer)`` after the built-in ones (events: see
    :mod:`gpunn.training.extensions`).

    Raises :class:`TrainError` before training for settings that cannot work,
    :class:`TrainingDiverged` when the loss turns NaN or infinite, and
    :class:`TrainingInterrupted` (a KeyboardInterrupt) after saving on Ctrl-C.
    ``json_path``: also write :func:`result_record` of the finished run there.
    ``cuda_graph``: capture the training step into a CUDA graph and replay it (cupy only;
    None: where every op of the step can be captured, see :func:`gpunn.cuda.step_blockers`).
    """
    stream = stream or sys.stdout
    options = {
        "model": model, "data": data, "backend": backend, "epochs": epochs,
        "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "momentum": momentum,
        "hidden": list(hidden) if hidden is not None else None, "seed": seed,
        "threads": threads, "weight_decay": weight_decay, "scheduler": scheduler,
        "clip": clip, "amp": amp, "cuda_graph": cuda_graph,
    }  # fmt: skip
    explicit = {k for k, v in options.items() if v is not None}
    split = data if isinstance(data, gdata.DataSplit) else None
    data_name = split.name if split is not None else (data or "breast_cancer")
    out = out or os.path.join("runs", f"{model or 'logreg'}-{data_name}")
    checkpoint = os.path.join(out, "checkpoint")
    saved = None
    if resume:
        if not os.path.exists(checkpoint):
            raise TrainError(f"nothing to resume: {checkpoint} does not exist")
        saved = read_config(out)
    settings = resolve_settings(options, saved)
    try:
        settings["backend"] = choose_backend(settings["backend"], "backend" in explicit)
    except BackendError as e:
        raise TrainError(str(e)) from None
    check_cuda_graph(settings, "cuda_graph" in explicit)
    check_compatible(settings["model"], split if split is not None else settings["data"])
    world = dist.init() if dist.launched() else None
    writer = world is None or world.rank == 0
    if not writer:
        progress, stream = False, open(os.devnull, "w")  # noqa: SIM115 (lives for the run)
    check_writable(out)
    if writer and not resume and os.path.exists(checkpoint):
        print(
            f"gpunn train: {out} holds an earlier run; starting afresh over it "
            "(pass --resume to continue it instead)",
            file=stream,
        )
        for stale in ("checkpoint", "curves.png", "metrics.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, stale))
    if split is None:
        split = gdata.load(settings["data"])
    check_compatible(settings["model"], split)
    backend_object(settings["backend"])
    extensions = [
        Checkpoint(out, resume, explicit),
        MetricsLog(out, resume),
        ProgressReport(bars=progress),
        CurvePlot(out),
        *callbacks,
    ]
    result = Trainer(settings, split, out, extensions, stream, world).run()
    if json_path is not None and writer:
        write_text(json_path, json.dumps(result_record(result), indent=2) + "\n")
    return result


def result_record(result: TrainResult) -> dict:
    """A finished run as plain data: its settings, the final epoch's validation loss and
    accuracy, the test loss and accuracy (measured once, at the end), the best validation
    accuracy (picked on validation: not an estimate of anything) and the mean seconds per
    training epoch."""
    times = [m["epoch_time_s"] for m in result.history]
    return {
        "settings": result.config,
        "gpunn_version": gpunn.__version__,
        "epochs": result.epochs,
        "stopped": result.stopped,
        "final_val_loss": result.val_loss,
        "final_val_acc": result.val_acc,
        "test_loss": result.test_loss,
        "test_acc": result.test_acc,
        "test_samples": result.test_samples,
        "best_val_acc": result.best_acc,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": sum(times) / len(times) if times else None,
        "elapsed_s": result.elapsed,
    }
