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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import gpunn
from gpunn import data as gdata
from gpunn import distributed as dist
from gpunn import functional as F
from gpunn import models, optim
from gpunn.backends import available_backends, backend_object, why_unavailable
from gpunn.errors import BackendError, CheckpointError, GpunnError
from gpunn.random import get_rng_state, set_rng_state

MODELS = ("perceptron", "logreg", "mlp", "cnn", "rnn", "lstm")
DATASETS = tuple(gdata.DATASETS)
OPTIMIZERS = ("sgd", "adam")

MODEL_INFO = {
    "perceptron": "one neuron with a step output, trained by the perceptron rule",
    "logreg": "logistic regression: one sigmoid neuron, binary cross-entropy",
    "mlp": "multi-layer perceptron (hidden ReLU layers)",
    "cnn": "LeNet-5 style convolutional network",
    "rnn": "Elman RNN reading the input step by step",
    "lstm": "LSTM reading the input step by step",
}

# Per model: settings that train it well on the small shipped data sets in seconds.
DEFAULTS = {
    "perceptron": {"epochs": 50, "batch_size": 64, "lr": 1.0, "optimizer": None},
    "logreg": {"epochs": 30, "batch_size": 32, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0},
    "mlp": {"epochs": 20, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "hidden": [256, 128]},
    "cnn": {"epochs": 20, "batch_size": 32, "lr": 2e-3, "optimizer": "adam"},
    "rnn": {"epochs": 20, "batch_size": 64, "lr": 3e-3, "optimizer": "adam", "hidden": [64]},
    "lstm": {"epochs": 10, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "hidden": [64]},
}
# (model, data) -> settings that differ from the model's defaults on that data set
OVERRIDES = {
    ("mlp", "mnist"): {"epochs": 10, "batch_size": 128, "hidden": [256, 128]},
    ("mlp", "fashion_mnist"): {"epochs": 10, "batch_size": 128, "hidden": [256, 128]},
    ("cnn", "mnist"): {"epochs": 3, "batch_size": 64, "lr": 1e-3},
    ("cnn", "fashion_mnist"): {"epochs": 5, "batch_size": 64, "lr": 1e-3},
    ("rnn", "mnist"): {"epochs": 5, "batch_size": 128, "lr": 1e-3, "hidden": [128]},
    ("rnn", "fashion_mnist"): {"epochs": 5, "batch_size": 128, "lr": 1e-3, "hidden": [128]},
    ("lstm", "mnist"): {"epochs": 3, "batch_size": 128, "lr": 3e-3, "hidden": [128]},
    ("lstm", "fashion_mnist"): {"epochs": 5, "batch_size": 128, "lr": 3e-3, "hidden": [128]},
    ("logreg", "parity"): {"epochs": 10},
    ("mlp", "adding"): {"lr": 3e-3, "hidden": [128, 64]},
    ("rnn", "adding"): {"epochs": 30, "lr": 3e-3},
    ("lstm", "adding"): {"epochs": 10, "lr": 3e-3},
}
DEFAULT_MOMENTUM = 0.9  # for sgd on models other than logistic regression
EVAL_BATCH = 512
SETTINGS = ("model", "data", "backend", "epochs", "batch_size", "lr", "optimizer", "momentum")
SETTINGS += ("hidden", "seed", "threads")

_curves_warned = False


class TrainError(GpunnError):
    """Settings that cannot work (model and data that do not fit, an unusable backend or
    output folder, nothing to resume): raised before any training starts."""


class TrainingDiverged(GpunnError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; ``.message`` says what was saved and how to resume."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: object
    history: list = field(default_factory=list)
    best_acc: float = float("nan")
    best_epoch: int = 0
    epochs: int = 0
    elapsed: float = 0.0
    backend: str = "numpy"
    out: str = ""
    config: dict = field(default_factory=dict)
    stopped: str = "completed"
    summary: str = ""


# ---------------------------------------------------------------------- settings
def default_backend() -> str:
    """numba where it runs, else the numpy reference."""
    return "numba" if "numba" in available_backends() else "numpy"


def defaults_for(model: str, data: str) -> dict:
    """The default settings of ``model`` on ``data``."""
    out = {"momentum": None, "hidden": None}
    out.update(DEFAULTS[model])
    out.update(OVERRIDES.get((model, data), {}))
    if out.get("optimizer") == "sgd" and out.get("momentum") is None:
        out["momentum"] = DEFAULT_MOMENTUM
    return out


def _data_traits(data) -> tuple:
    """(kind, task, classes, sample shape or None) of a data set name or DataSplit."""
    if isinstance(data, gdata.DataSplit):
        return data.kind, data.task, data.num_classes, data.sample_shape
    kind, task, classes, _ = gdata.DATASETS[data]
    return kind, task, classes, None


def check_compatible(model: str, data) -> None:
    """Raise TrainError saying why ``model`` cannot learn data set ``data``."""
    name = data.name if isinstance(data, gdata.DataSplit) else data
    kind, task, classes, _ = _data_traits(data)
    if model in ("perceptron", "logreg"):
        neuron = "a perceptron" if model == "perceptron" else "logistic regression"
        if task == "regression":
            raise TrainError(
                f"{model} cannot learn {name}: {name} is a regression task (a real-valued "
                f"target), and {neuron} is one neuron that separates two classes; "
                "use --model rnn, lstm or mlp"
            )
        if classes != 2:
            raise TrainError(
                f"{model} cannot learn {name}: {neuron} is one neuron that separates two "
                f"classes, and {name} has {classes}; use --model mlp, cnn, rnn or lstm"
            )
    if model == "cnn" and kind != "image":
        what = (
            "tabular (one vector of features per sample)"
            if kind == "tabular"
            else ("made of sequences")
        )
        hint = "logreg or mlp" if kind == "tabular" else "rnn or lstm"
        raise TrainError(
            f"cnn cannot learn {name}: a convolutional network needs images (N, C, H, W) with "
            f"neighbouring pixels, and {name} is {what}; use --model {hint}"
        )
    if model in ("rnn", "lstm") and kind == "tabular":
        raise TrainError(
            f"{model} cannot learn {name}: a recurrent network reads a sequence step by "
            f"step (images are read row by row), and {name} is tabular: a vector of "
            "unordered features; use --model logreg or mlp"
        )


def resolve_settings(options: dict, saved: dict | None = None) -> dict:
    """Fill in unset options (None): from the saved config when resuming, else from the
    model's defaults on the data set."""
    chosen = {k: v for k, v in options.items() if v is not None}
    model = chosen.get("model") or (saved or {}).get("model") or "logreg"
    data = chosen.get("data") or (saved or {}).get("data") or "breast_cancer"
    if isinstance(data, gdata.DataSplit):
        data_name = data.name
    else:
        data_name = data
    if model not in MODELS:
        raise TrainError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if not isinstance(data, gdata.DataSplit) and data not in DATASETS:
        raise TrainError(f"unknown data set {data!r}; choose from {', '.join(DATASETS)}")
    if saved and saved.get("model") == model and saved.get("data") == data_name:
        base = {k: saved.get(k) for k in SETTINGS}
    else:
        base = defaults_for(model, data_name)
        base.update(seed=0, backend=None, threads=None)
    settings = {**base, **chosen, "model": model, "data": data_name}
    if settings.get("optimizer") is None and model != "perceptron":
        settings["optimizer"] = "adam"
    if settings.get("optimizer") == "sgd" and settings.get("momentum") is None:
        settings["momentum"] = 0.0 if model == "logreg" else DEFAULT_MOMENTUM
    if model == "perceptron":
        settings["optimizer"] = None
        settings["momentum"] = None
    if settings.get("optimizer") not in (None, *OPTIMIZERS):
        raise TrainError(
            f"unknown optimizer {settings['optimizer']!r}; choose from {', '.join(OPTIMIZERS)}"
        )
    if settings.get("hidden") is not None:
        settings["hidden"] = [int(h) for h in settings["hidden"]]
        if model in ("rnn", "lstm") and len(settings["hidden"]) != 1:
            raise TrainError(f"{model} takes one hidden size, got {settings['hidden']}")
        if any(h < 1 for h in settings["hidden"]):
            raise TrainError(f"hidden sizes must be >= 1, got {settings['hidden']}")
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if int(settings[key]) < low:
            raise TrainError(f"--{key.replace('_', '-')} must be >= {low}, got {settings[key]}")
        settings[key] = int(settings[key])
    if not float(settings["lr"]) > 0:
        raise TrainError(f"--lr must be > 0, got {settings['lr']}")
    settings["lr"] = float(settings["lr"])
    if settings.get("momentum") is not None and not 0 <= float(settings["momentum"]) < 1:
        raise TrainError(f"--momentum must be in [0, 1), got {settings['momentum']}")
    settings["seed"] = int(settings.get("seed") or 0)
    return settings


def _choose_backend(settings: dict, explicit: bool) -> str:
    name = settings.get("backend")
    if name is None:
        return default_backend()
    reason = why_unavailable(name)
    if reason is None:
        return name
    if not explicit:  # the saved run's backend does not run here: use the default one
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


def _write_text(path: str, text: str) -> None:
    """Write a text file atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_config(out: str) -> dict | None:
    """The config.json of the run in ``out``, or None."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_metrics(out: str) -> list[dict]:
    """The per-epoch records of the run in ``out`` (empty if none)."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------- model and data
def prepare_arrays(model: str, split: gdata.DataSplit):
    """Host arrays shaped for ``model``: flat vectors for perceptron/logreg/mlp, images for
    the cnn, sequences (images read row by row) for rnn/lstm; targets as the loss wants."""

    def inputs(x):
        if model in ("perceptron", "logreg", "mlp"):
            return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
        if model in ("rnn", "lstm") and split.kind == "image":
            n, c, h, w = x.shape  # row r of every channel is step r
            return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(n, h, c * w))
        return np.ascontiguousarray(x, dtype=np.float32)

    def targets(y):
        if split.task == "regression":
            return np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        if model == "logreg":
            return np.asarray(y, dtype=np.float32).reshape(len(y), 1)
        if model == "perceptron":
            return np.asarray(y, dtype=np.float32).reshape(len(y))
        return np.asarray(y, dtype=np.int64)

    return (
        inputs(split.x_train),
        targets(split.y_train),
        inputs(split.x_val),
        targets(split.y_val),
    )


def build_model(settings: dict, split: gdata.DataSplit, x_train: np.ndarray):
    """The model of ``settings['model']`` sized for ``split``."""
    model = settings["model"]
    outputs = 1 if split.task == "regression" else split.num_classes
    hidden = settings.get("hidden")
    if model == "perceptron":
        return models.Perceptron(x_train.shape[1])
    if model == "logreg":
        return models.LogisticRegression(x_train.shape[1])
    if model == "mlp":
        return models.MLP(x_train.shape[1], hidden or [128], outputs)
    if model == "cnn":
        c, h, w = x_train.shape[1:]
        if h != w:
            raise TrainError(f"cnn (LeNet-5) takes square images, {split.name} has {h}x{w}")
        return models.LeNet5(in_channels=c, num_classes=outputs, image_size=h)
    cls = models.RNNClassifier if model == "rnn" else models.LSTMClassifier
    return cls(x_train.shape[2], (hidden or [64])[0], outputs)


def build_optimizer(settings: dict, model):
    if settings["model"] == "perceptron":
        return None
    params = list(model.parameters())
    if settings["optimizer"] == "sgd":
        return optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"] or 0.0)
    return optim.Adam(params, lr=settings["lr"])


# ---------------------------------------------------------------------- the loop
class _Diverged(Exception):
    def __init__(self, value, where):
        super().__init__(value, where)
        self.value, self.where = value, where


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


class Trainer:
    """One run of the training job; :func:`train` builds and runs it."""

    def __init__(
        self, settings, split, out, resume, explicit, callbacks, progress, stream, world=None
    ):
        self.settings = settings
        # Under an MPI launcher every rank trains on its shard of each batch; rank 0 alone
        # prints and writes files.
        self.world = world
        self.writer = world is None or world.rank == 0
        self.net = None  # the DataParallel wrapper when several ranks train
        self.ranks = 1
        self.split = split
        self.out = out
        self.resume = resume
        self.explicit = explicit
        self.callbacks = list(callbacks or ())
        self.progress = progress
        self.stream = stream
        self.checkpoint_path = os.path.join(out, "checkpoint")
        self.history: list[dict] = []
        self.epoch = 0  # completed epochs
        self.batch = 0
        self.loss = float("nan")
        self._updating = False
        self._interrupt_pending = False
        self._point = None  # where an interrupted run would resume, see _mark
        self._config_written = False
        self._start_epoch = 0

    # -------------------------------------------------------------- helpers
    def say(self, text: str) -> None:
        if self.writer:
            print(text, file=self.stream, flush=True)

    def _emit(self, event: str) -> None:
        for cb in self.callbacks:
            cb(event, self)

    def _mark(self, epoch, batch, order, loss_sum, seen, elapsed) -> None:
        """Remember a consistent state: ``batch`` batches of epoch ``epoch`` are done."""
        self._point = {
            "epoch": epoch,
            "batch": batch,
            "order": order,
            "rng_state": get_rng_state(),
            "partial": np.array([loss_sum, seen, elapsed], dtype=np.float64),
        }

    def _update(self, fn):
        """Run a parameter update; a Ctrl-C arriving meanwhile is held until it is done."""
        self._updating = True
        result = fn()  # an exception leaves _updating set: the parameters may be torn
        self._updating = False
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt
        return result

    @contextlib.contextmanager
    def _sigint_guard(self):
        installed = (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        )
        if not installed:
            yield
            return

        def handler(signum, frame):
            if self._updating:
                self._interrupt_pending = True
            else:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    # -------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epoch, batch=0, order=None, rng_state=None, partial=None):
        if not self.writer:
            return
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.optimizer is not None:
            state.update({f"optimizer.{k}": v for k, v in self.optimizer.state_dict().items()})
        state["epoch"] = np.array(epoch, dtype=np.int64)
        state["batch"] = np.array(batch, dtype=np.int64)
        state["rng_state"] = get_rng_state() if rng_state is None else rng_state
        if batch:
            state["order"] = np.asarray(order, dtype=np.int64)
            state["partial"] = partial
        gpunn.save(state, self.checkpoint_path)
        if self.resume and not self._config_written:
            self._write_config(self._start_epoch)
        self._config_written = True

    def _restore(self):
        path = self.checkpoint_path
        state = {k: v.numpy() for k, v in gpunn.load(path, backend="numpy").items()}
        saved_cfg = read_config(self.out) or {}
        origin = ""
        if saved_cfg:
            origin = (
                f" ({os.path.join(self.out, 'config.json')} says it trained "
                f"{saved_cfg.get('model')} on {saved_cfg.get('data')})"
            )
        stored = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        mine = dict(self.model.named_parameters())
        name = self.settings["model"]
        for pname, p in mine.items():
            if pname not in stored:
                raise CheckpointError(
                    f"{path} was written by another model{origin}: this {name} model has "
                    f"parameter {pname!r}, the checkpoint does not (it holds "
                    f"{', '.join(list(stored)[:4]) or 'no parameters'}"
                    f"{', ...' if len(stored) > 4 else ''})"
                )
            if tuple(stored[pname].shape) != p.shape:
                raise CheckpointError(
                    f"{path} was written by another model{origin}: parameter {pname!r} has "
                    f"shape {tuple(stored[pname].shape)} there and {p.shape} in this {name} "
                    "model"
                )
        for pname in stored:
            if pname not in mine:
                raise CheckpointError(
                    f"{path} was written by another model{origin}: it has parameter "
                    f"{pname!r}, which this {name} model lacks"
                )
        self.model.load_state_dict(stored)
        opt_state = {
            k[len("optimizer.") :]: v for k, v in state.items() if k.startswith("optimizer.")
        }
        if self.optimizer is not None:
            kind = "adam" if "beta1" in opt_state else "sgd" if "lr" in opt_state else None
            if kind != self.settings["optimizer"]:
                raise CheckpointError(
                    f"{path} holds {kind or 'no'} optimizer state, this run uses "
                    f"{self.settings['optimizer']}; pass --optimizer {kind or 'sgd'}"
                )
            self.optimizer.load_state_dict(opt_state)
            for key in ("lr", "momentum"):  # explicit settings win over the saved ones
                if key in self.explicit and hasattr(self.optimizer, key):
                    setattr(self.optimizer, key, float(self.settings[key] or 0.0))
        set_rng_state(state["rng_state"])
        epoch = int(state["epoch"])
        batch = int(state.get("batch", 0))
        order = state.get("order") if batch else None
        partial = state.get("partial") if batch else None
        return epoch, batch, order, partial

    # -------------------------------------------------------------- evaluation
    def _loss_and_hits(self, out, y, y_host):
        """Batch loss (a 0-d tensor) and the number of right answers."""
        model = self.settings["model"]
        if self.split.task == "regression":
            loss = F.mse_loss(out, y)
            tol = self.split.info.get("tolerance", gdata.synthetic.ADDING_TOLERANCE)
            hits = int((np.abs(out.numpy() - y_host) < tol).sum())
        elif model == "logreg":
            loss = F.binary_cross_entropy_with_logits(out, y)
            hits = int(((out.numpy() > 0) == (y_host > 0.5)).sum())
        else:
            loss = F.cross_entropy(out, y)
            hits = int((out.numpy().argmax(axis=1) == y_host).sum())
        return loss, hits

    def _forward(self, x):
        fn = self.model.logits if self.settings["model"] == "logreg" else self.model
        return self.net.run(fn, x) if self.net is not None else fn(x)

    def evaluate(self, x_host, y_host) -> tuple[float, float]:
        """(mean loss, accuracy) on host arrays, in evaluation mode, without a graph. For
        the perceptron the loss is the error rate."""
        self.model.eval()
        loss_sum, hits, n = 0.0, 0, len(x_host)
        loader = gdata.DataLoader(gdata.TensorDataset(x_host, y_host), EVAL_BATCH)
        try:
            with gpunn.no_grad():
                for idx in loader.batch_indices(loader.epoch_order()):
                    x, y = loader.fetch(idx)
                    if self.settings["model"] == "perceptron":
                        wrong = int((self.model(x).numpy().reshape(-1) != y_host[idx]).sum())
                        loss_sum += wrong
                        hits += len(idx) - wrong
                        continue
                    loss, h = self._loss_and_hits(self._forward(x), y, y_host[idx])
                    loss_sum += loss.item() * len(idx)
                    hits += h
        finally:
            self.model.train()
        return loss_sum / max(n, 1), hits / max(n, 1)

    # -------------------------------------------------------------- one epoch
    def _train_epoch(self, epoch, order, start, partial):
        s = self.settings
        loader = self.loader
        nb = len(loader)
        y_host = self.y_train
        loss_sum, seen, before = (0.0, 0, 0.0) if partial is None else partial
        seen = int(seen)
        total = len(order)
        bar = self._bar(epoch, total, seen)
        t0 = time.perf_counter()
        try:
            for b, idx in enumerate(loader.batch_indices(order, start), start=start):
                self.batch = b
                if self.net is not None:  # this rank's share of the global batch
                    global_count, idx = len(idx), idx[self.world.rank :: self.world.size]
                x, y = loader.fetch(idx)
                if s["model"] == "perceptron":
                    mistakes = self._update(lambda x=x, y=y: self.model.fit_epoch(x, y, s["lr"]))
                    value = mistakes / len(idx)
                else:
                    loss, _ = self._loss_and_hits(self._forward(x), y, y_host[idx])
                    value = loss.item()
                    if not math.isfinite(value):
                        raise _Diverged(value, (epoch + 1, b + 1, nb))
                    self.optimizer.zero_grad()
                    loss.backward()
                    self._update(self.optimizer.step)
                loss_sum += value * len(idx)
                seen += len(idx)
                step = global_count if self.net is not None else len(idx)
                self.loss = loss_sum / seen
                elapsed = before + time.perf_counter() - t0
                self._mark(epoch, b + 1, order, loss_sum, seen, elapsed)
                if bar is not None:
                    bar.update(step)
                    bar.set_postfix_str(f"loss {self.loss:.4f}", refresh=False)
                self._emit("batch_end")
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        train_time = before + time.perf_counter() - t0
        return loss_sum / max(seen, 1), seen, train_time, bar

    def _bar(self, epoch, total, initial):
        if not self.progress or not self.writer:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch + 1}/{self.settings['epochs']}",
            unit=" samples",
            unit_scale=True,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    # -------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        s = self.settings
        gpunn.manual_seed(s["seed"])
        if s.get("threads"):
            gpunn.set_num_threads(int(s["threads"]))
        x_train, y_train, x_val, y_val = prepare_arrays(s["model"], self.split)
        self.y_train = y_train
        with gpunn.use_backend(s["backend"]):
            self.model = build_model(s, self.split, x_train)
            self.optimizer = build_optimizer(s, self.model)
            if self.world is not None and self.world.size > 1 and s["model"] != "perceptron":
                # the perceptron rule is sequential: every rank runs it whole, rank 0 writes
                self.net = dist.DataParallel(self.model, world=self.world)
                self.ranks = self.world.size
            self.loader = gdata.DataLoader(
                gdata.TensorDataset(x_train, y_train), s["batch_size"] * self.ranks, shuffle=True
            )
            start_epoch, start_batch, order, partial = 0, 0, None, None
            if self.resume:
                start_epoch, start_batch, order, partial = self._restore()
                kept = [m for m in read_metrics(self.out) if m["epoch"] <= start_epoch]
                self.history = kept
            self._start_epoch = start_epoch
            if not self.resume:  # a resumed run rewrites it with its first checkpoint
                self._write_config(start_epoch)
            self._write_metrics()
            self.epoch = start_epoch
            return self._loop(start_epoch, start_batch, order, partial, x_val, y_val)

    def _write_config(self, start_epoch):
        if not self.writer:
            return
        cfg = dict(self.settings)
        cfg.update(
            gpunn_version=gpunn.__version__,
            data_description=self.split.description,
            train_samples=len(self.split.x_train),
            val_samples=len(self.split.x_val),
        )
        if start_epoch:
            cfg["resumed_at_epoch"] = start_epoch
        _write_text(os.path.join(self.out, "config.json"), json.dumps(cfg, indent=2) + "\n")

    def _write_metrics(self):
        if not self.writer:
            return
        lines = "".join(json.dumps(m) + "\n" for m in self.history)
        _write_text(os.path.join(self.out, "metrics.jsonl"), lines)

    def _append_metrics(self, record):
        if not self.writer:
            return
        self.history.append(record)
        with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _header(self, start_epoch, start_batch):
        s, split = self.settings, self.split
        shape = "x".join(str(d) for d in self.loader.dataset.arrays[0].shape[1:])
        how = "perceptron rule" if s["model"] == "perceptron" else s["optimizer"]
        text = (
            f"gpunn train: {s['model']} on {s['data']} ({len(split.x_train)} train / "
            f"{len(split.x_val)} val samples of {shape}), backend {s['backend']}, {how} "
            f"lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs -> {self.out}"
        )
        if self.ranks > 1:
            text += f"\ndata parallel on {self.ranks} ranks: batch {s['batch_size']} per rank"
        if start_epoch or start_batch:
            at = f"epoch {start_epoch + 1}" + (f", batch {start_batch + 1}" if start_batch else "")
            text += f"\nresuming from {self.checkpoint_path} at {at}"
        self.say(text)

    def _loop(self, start_epoch, start_batch, order, partial, x_val, y_val):
        s = self.settings
        total_epochs = s["epochs"]
        t_run = time.perf_counter()
        stopped = "completed"
        if start_epoch >= total_epochs and not start_batch:
            stopped = "already done"
            self.say(
                f"the checkpoint already holds {start_epoch} epochs (--epochs {total_epochs}); "
                "pass a larger --epochs to train further"
            )
        elif self.history and s["model"] == "perceptron" and self.history[-1]["mistakes"] == 0:
            stopped = "converged"
            self.say("the perceptron had already converged (an epoch without mistakes)")
        else:
            self._header(start_epoch, start_batch)
        epoch = start_epoch
        try:
            # overflow in a diverging run is reported once, as a non-finite loss, below
            with (
                self._sigint_guard(),
                np.errstate(over="ignore", invalid="ignore", divide="ignore"),
            ):
                while stopped == "completed" and epoch < total_epochs:
                    self._run_epoch(epoch, order, start_batch, partial, x_val, y_val)
                    order, start_batch, partial = None, 0, None
                    epoch += 1
                    self.epoch = epoch
                    self._emit("epoch_end")
                    if s["model"] == "perceptron" and self.history[-1]["mistakes"] == 0:
                        stopped = "converged"
                        self.say(f"converged: epoch {epoch} made no mistake")
        except KeyboardInterrupt:
            raise self._interrupted() from None
        except _Diverged as d:
            self._write_curves()
            ep, b, nb = d.where
            kept = self.epoch
            keeps = (
                f"{self.checkpoint_path} still holds epoch {kept}, the last good state"
                if kept
                else "no checkpoint was written (it diverged in the first epoch)"
            )
            raise TrainingDiverged(
                f"the loss became {d.value} at epoch {ep}, batch {b}/{nb}: training diverged "
                f"(is --lr {s['lr']:g} too large?). Stopped; {keeps}."
            ) from None
        self._write_curves()
        return self._result(stopped, time.perf_counter() - t_run)

    def _run_epoch(self, epoch, order, start_batch, partial, x_val, y_val):
        if order is None:
            order = self.loader.epoch_order()
        self._mark(epoch, start_batch, order, *(partial if partial is not None else (0, 0, 0)))
        train_loss, seen, train_time, bar = self._train_epoch(epoch, order, start_batch, partial)
        val_loss, val_acc = self.evaluate(x_val, y_val)
        if not math.isfinite(val_loss):
            if bar is not None:
                bar.close()
            raise _Diverged(val_loss, (epoch + 1, len(self.loader), len(self.loader)))
        rate = seen * self.ranks / train_time if train_time > 0 else float("inf")
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_time_s": round(train_time, 4),
            "samples_per_s": round(rate, 1),
        }
        if self.settings["model"] == "perceptron":
            record["mistakes"] = int(round(train_loss * seen))
        else:
            record["lr"] = self.settings["lr"]
        line = (
            f"loss {train_loss:.4f}, val_loss {val_loss:.4f}, val_acc {val_acc:.2%}, "
            f"{_fmt_rate(rate)} samples/s"
        )
        if bar is not None:
            bar.set_postfix_str(line.rsplit(", ", 1)[0])  # the bar shows samples/s itself
            bar.close()
        else:
            self.say(f"epoch {epoch + 1}/{self.settings['epochs']}: {line}, {train_time:.2f} s")
        self._append_metrics(record)
        self._save_checkpoint(epoch + 1)
        self._point = None

    def _interrupted(self) -> TrainingInterrupted:
        resume = f"gpunn train --out {self.out} --resume"
        self._write_curves()
        if self._updating or self._point is None:
            kept = (
                f"{self.checkpoint_path} keeps epoch {self.epoch}"
                if os.path.exists(self.checkpoint_path)
                else "no checkpoint was written"
            )
            return TrainingInterrupted(f"interrupted; {kept}. Resume with: {resume}")
        p = self._point
        self._save_checkpoint(p["epoch"], p["batch"], p["order"], p["rng_state"], p["partial"])
        where = f"epoch {p['epoch'] + 1}, after batch {p['batch']}/{len(self.loader)}"
        if p["batch"] == 0:
            where = f"the end of epoch {p['epoch']}"
        return TrainingInterrupted(
            f"interrupted at {where}; checkpoint written to {self.checkpoint_path}. "
            f"Resume with: {resume}"
        )

    def _write_curves(self):
        if not self.writer:
            return
        global _curves_warned
        if not self.history:
            return
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not _curves_warned:
                _curves_warned = True
                self.say(
                    "matplotlib is not installed, so no curves.png is drawn "
                    "(pip install 'gpunn[plot]'); everything else is written as usual"
                )
            return
        epochs = [m["epoch"] for m in self.history]
        fig = Figure(figsize=(9, 3.6))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        loss_name = "error rate" if self.settings["model"] == "perceptron" else "loss"
        ax1.plot(epochs, [m["train_loss"] for m in self.history], "o-", label="train")
        ax1.plot(epochs, [m["val_loss"] for m in self.history], "o-", label="validation")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel(loss_name)
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.plot(epochs, [100 * m["val_acc"] for m in self.history], "o-", color="C2")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("validation accuracy (%)")
        ax2.grid(alpha=0.3)
        fig.suptitle(f"{self.settings['model']} on {self.settings['data']}")
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88, wspace=0.3)
        path = os.path.join(self.out, "curves.png")
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".curves", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _result(self, stopped, elapsed) -> TrainResult:
        s = self.settings
        best = max(self.history, key=lambda m: m["val_acc"], default=None)
        best_acc = best["val_acc"] if best else float("nan")
        best_epoch = best["epoch"] if best else 0
        what = "accuracy"
        if self.split.task == "regression":
            tol = self.split.info.get("tolerance", gdata.synthetic.ADDING_TOLERANCE)
            what = f"accuracy (|error| < {tol:g})"
        ran = len(self.history)
        summary = (
            f"done: best val {what} {best_acc:.2%} at epoch {best_epoch}; "
            f"{ran} epochs, {elapsed:.1f} s on {s['backend']} ({stopped}); "
            f"{s['model']} on {s['data']} -> {self.out}"
        )
        self.say(summary)
        return TrainResult(
            model=self.model,
            history=list(self.history),
            best_acc=best_acc,
            best_epoch=best_epoch,
            epochs=self.epoch,
            elapsed=elapsed,
            backend=s["backend"],
            out=self.out,
            config=dict(s),
            stopped=stopped,
            summary=summary,
        )


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
    out: str | None = None,
    resume: bool = False,
    callbacks=(),
    progress: bool = True,
    stream=None,
) -> TrainResult:
    """Train ``model`` (one of :data:`MODELS`) on ``data`` (a name from :data:`DATASETS`, or
    a :class:`gpunn.data.DataSplit`) and write the run into ``out``.

    Unset options take the model's defaults (:data:`DEFAULTS`), or, with ``resume=True``,
    the settings saved in ``out/config.json``. ``callbacks`` are called as
    ``cb(event, trainer)`` with ``event`` "batch_end" or "epoch_end".

    Raises :class:`TrainError` before training for settings that cannot work,
    :class:`TrainingDiverged` when the loss turns NaN or infinite, and
    :class:`TrainingInterrupted` (a KeyboardInterrupt) after saving on Ctrl-C.
    """
    stream = stream or sys.stdout
    options = {
        "model": model,
        "data": data,
        "backend": backend,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "hidden": list(hidden) if hidden is not None else None,
        "seed": seed,
        "threads": threads,
    }
    explicit = {k for k, v in options.items() if v is not None}
    split = data if isinstance(data, gdata.DataSplit) else None
    model_name = model or "logreg"
    data_name = split.name if split is not None else (data or "breast_cancer")
    if out is None:
        out = os.path.join("runs", f"{model_name}-{data_name}")
    saved = None
    if resume:
        if not os.path.exists(os.path.join(out, "checkpoint")):
            raise TrainError(f"nothing to resume: {os.path.join(out, 'checkpoint')} does not exist")
        saved = read_config(out)
    settings = resolve_settings(options, saved)
    try:
        settings["backend"] = _choose_backend(settings, "backend" in explicit)
    except BackendError as e:
        raise TrainError(str(e)) from None
    check_compatible(settings["model"], split if split is not None else settings["data"])
    world = dist.init() if dist.launched() else None
    if world is not None and world.rank != 0:
        progress, stream = False, open(os.devnull, "w")  # noqa: SIM115 (lives for the run)
    check_writable(out)
    if (
        (world is None or world.rank == 0)
        and not resume
        and os.path.exists(os.path.join(out, "checkpoint"))
    ):
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
    trainer = Trainer(settings, split, out, resume, explicit, callbacks, progress, stream, world)
    return trainer.run()
