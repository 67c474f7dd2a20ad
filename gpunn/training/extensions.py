"""Extensions of the training loop: each is called as ``ext(event, trainer)`` at the
loop's events and does one job.

Events, in order: ``start`` (model, optimizer and loader exist), then per epoch
``epoch_start``, ``batch_end`` after every update and ``epoch_end`` after validation
(``trainer.history[-1]`` is the epoch's record); at the end one of ``finish``,
``interrupt`` (Ctrl-C) or ``diverged`` (a NaN or infinite loss). An extension may return a
sentence for the user from ``interrupt`` and ``diverged``.

* :class:`Checkpoint`: ``checkpoint`` and ``config.json``; restores them on resume, marks
  the last consistent point of an epoch and saves it on Ctrl-C.
* :class:`MetricsLog`: ``metrics.jsonl``, one line per epoch.
* :class:`ProgressReport`: the header, a progress bar per epoch (tqdm) or one line each.
* :class:`CurvePlot`: ``curves.png`` (matplotlib), drawn when the run stops.

Under MPI every rank runs the extensions (all of them restore and keep the history); only
the writer (rank 0) writes or prints.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np

import gpunn
from gpunn.errors import CheckpointError
from gpunn.random import get_rng_state, set_rng_state


class Extension:
    """Base: ``ext(event, trainer)`` calls ``ext.on_<event>(trainer)`` if it exists."""

    def __call__(self, event: str, trainer):
        method = getattr(self, "on_" + event, None)
        return None if method is None else method(trainer)


def write_text(path: str, text: str) -> None:
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


# ---------------------------------------------------------------------- checkpoint
class Checkpoint(Extension):
    """The run's resumable state: ``checkpoint`` (parameters ``model.<name>``, optimizer
    state ``optimizer.<key>``, epoch, batches done in an unfinished epoch with its sample
    order and partial sums, gpunn's random state), written atomically after every epoch
    and on Ctrl-C, and ``config.json`` (the settings resume reads).

    ``explicit``: settings the user gave on this run, which win over the saved optimizer's.
    """

    def __init__(self, out: str, resume: bool, explicit=()):
        self.out, self.resume, self.explicit = out, resume, set(explicit)
        self.path = os.path.join(out, "checkpoint")
        self.point = None  # the last consistent state inside an epoch, see mark
        self.config_written = False

    def on_start(self, t):
        if self.resume:
            self.restore(t)
        else:
            self.write_config(t)

    def mark(self, t):
        """Remember that ``t.done`` batches of epoch ``t.epoch`` are done."""
        self.point = {
            "epoch": t.epoch,
            "batch": t.done,
            "order": t.order,
            "rng_state": get_rng_state(),
            "partial": np.array([t.loss_sum, t.seen, t.elapsed], dtype=np.float64),
        }

    on_epoch_start = on_batch_end = mark

    def on_epoch_end(self, t):
        self.save(t, t.epoch)
        self.point = None

    def on_interrupt(self, t) -> str:
        resume = f"gpunn train --out {self.out} --resume"
        if t.updating or self.point is None:
            kept = (
                f"{self.path} keeps epoch {t.epoch}"
                if os.path.exists(self.path)
                else "no checkpoint was written"
            )
            return f"interrupted; {kept}. Resume with: {resume}"
        p = self.point
        self.save(t, p["epoch"], p["batch"], p["order"], p["rng_state"], p["partial"])
        where = f"epoch {p['epoch'] + 1}, after batch {p['batch']}/{len(t.loader)}"
        if p["batch"] == 0:
            where = f"the end of epoch {p['epoch']}"
        return f"interrupted at {where}; checkpoint written to {self.path}. Resume with: {resume}"

    def on_diverged(self, t) -> str:
        if t.epoch:
            return f"{self.path} still holds epoch {t.epoch}, the last good state"
        return "no checkpoint was written (it diverged in the first epoch)"

    def write_config(self, t):
        if not t.writer:
            return
        cfg = dict(t.settings)
        cfg.update(
            gpunn_version=gpunn.__version__,
            data_description=t.split.description,
            train_samples=len(t.split.x_train),
            val_samples=len(t.split.x_val),
        )
        if self.resume and t.start_epoch:
            cfg["resumed_at_epoch"] = t.start_epoch
        write_text(os.path.join(self.out, "config.json"), json.dumps(cfg, indent=2) + "\n")
        self.config_written = True

    def save(self, t, epoch, batch=0, order=None, rng_state=None, partial=None):
        if not t.writer:
            return
        state = {f"model.{k}": v for k, v in t.model.state_dict().items()}
        if t.optimizer is not None:
            state.update({f"optimizer.{k}": v for k, v in t.optimizer.state_dict().items()})
        state["epoch"] = np.array(epoch, dtype=np.int64)
        state["batch"] = np.array(batch, dtype=np.int64)
        state["rng_state"] = get_rng_state() if rng_state is None else rng_state
        if batch:
            state["order"] = np.asarray(order, dtype=np.int64)
            state["partial"] = partial
        gpunn.save(state, self.path)
        if not self.config_written:  # a resumed run keeps the old config until it saves
            self.write_config(t)

    def restore(self, t):
        """Load the checkpoint into ``t``'s model, optimizer and random state, and set
        where the loop starts (``t.epoch``, ``t.done``, ``t.order``, partial sums)."""
        state = {k: v.numpy() for k, v in gpunn.load(self.path, backend="numpy").items()}
        self._check_parameters(t, state)
        t.model.load_state_dict(
            {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        )
        opt = {k[len("optimizer.") :]: v for k, v in state.items() if k.startswith("optimizer.")}
        if t.optimizer is not None:
            kind = "adam" if "beta1" in opt else "sgd" if "lr" in opt else None
            if kind != t.settings["optimizer"]:
                raise CheckpointError(
                    f"{self.path} holds {kind or 'no'} optimizer state, this run uses "
                    f"{t.settings['optimizer']}; pass --optimizer {kind or 'sgd'}"
                )
            t.optimizer.load_state_dict(opt)
            for key in ("lr", "momentum"):  # explicit settings win over the saved ones
                if key in self.explicit and hasattr(t.optimizer, key):
                    setattr(t.optimizer, key, float(t.settings[key] or 0.0))
        set_rng_state(state["rng_state"])
        t.epoch = t.start_epoch = int(state["epoch"])
        t.done = int(state.get("batch", 0))
        if t.done:
            t.order = state["order"]
            t.loss_sum, t.seen, t.elapsed = (float(v) for v in state["partial"])
            t.seen = int(t.seen)

    def _check_parameters(self, t, state):
        saved = read_config(self.out) or {}
        origin = ""
        if saved:
            origin = (
                f" ({os.path.join(self.out, 'config.json')} says it trained "
                f"{saved.get('model')} on {saved.get('data')})"
            )
        stored = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        mine = dict(t.model.named_parameters())
        name, head = t.settings["model"], f"{self.path} was written by another model{origin}"
        for pname, p in mine.items():
            if pname not in stored:
                listed = ", ".join(list(stored)[:4]) or "no parameters"
                more = ", ..." if len(stored) > 4 else ""
                raise CheckpointError(
                    f"{head}: this {name} model has parameter {pname!r}, the checkpoint does "
                    f"not (it holds {listed}{more})"
                )
            if tuple(stored[pname].shape) != p.shape:
                raise CheckpointError(
                    f"{head}: parameter {pname!r} has shape {tuple(stored[pname].shape)} there "
                    f"and {p.shape} in this {name} model"
                )
        for pname in stored:
            if pname not in mine:
                raise CheckpointError(
                    f"{head}: it has parameter {pname!r}, which this {name} model lacks"
                )


# ---------------------------------------------------------------------- metrics
class MetricsLog(Extension):
    """``metrics.jsonl``: one JSON line per epoch. On resume, the records up to the
    checkpoint's epoch become the trainer's history again."""

    def __init__(self, out: str, resume: bool):
        self.path = os.path.join(out, "metrics.jsonl")
        self.out, self.resume = out, resume

    def on_start(self, t):
        if self.resume:
            t.history = [m for m in read_metrics(self.out) if m["epoch"] <= t.epoch]
        if t.writer:
            write_text(self.path, "".join(json.dumps(m) + "\n" for m in t.history))

    def on_epoch_end(self, t):
        if t.writer:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(t.history[-1]) + "\n")


# ---------------------------------------------------------------------- progress
def _fmt_rate(rate: float) -> str:
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


class ProgressReport(Extension):
    """The run's header, then per epoch a tqdm bar (``bars=True`` and tqdm installed) or
    one line with the losses, the validation accuracy and the speed."""

    def __init__(self, bars: bool = True):
        self.bars, self.bar, self.headed = bars, None, False

    def on_epoch_start(self, t):
        if not self.headed:
            self.headed = True
            t.say(self.header(t))
        if not (self.bars and t.writer):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self.bars = False
            return
        self.bar = tqdm(
            total=len(t.order),
            initial=t.seen,
            desc=f"epoch {t.epoch + 1}/{t.settings['epochs']}",
            unit=" samples",
            unit_scale=True,
            leave=True,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def header(self, t) -> str:
        s, split = t.settings, t.split
        shape = "x".join(str(d) for d in t.x_train.shape[1:])
        how = "perceptron rule" if s["optimizer"] is None else s["optimizer"]
        text = (
            f"gpunn train: {s['model']} on {s['data']} ({len(split.x_train)} train / "
            f"{len(split.x_val)} val samples of {shape}), backend {s['backend']}, {how} "
            f"lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs -> {t.out}"
        )
        if t.ranks > 1:
            text += f"\ndata parallel on {t.ranks} ranks: batch {s['batch_size']} per rank"
        if t.start_epoch or t.done:
            at = f"epoch {t.epoch + 1}" + (f", batch {t.done + 1}" if t.done else "")
            text += f"\nresuming from {os.path.join(t.out, 'checkpoint')} at {at}"
        return text

    def on_batch_end(self, t):
        if self.bar is not None:
            self.bar.update(t.batch_samples)
            self.bar.set_postfix_str(f"loss {t.loss_sum / t.seen:.4f}", refresh=False)

    def on_epoch_end(self, t):
        m = t.history[-1]
        line = (
            f"loss {m['train_loss']:.4f}, val_loss {m['val_loss']:.4f}, "
            f"val_acc {m['val_acc']:.2%}, {_fmt_rate(m['samples_per_s'])} samples/s"
        )
        if self.bar is not None:
            self.bar.set_postfix_str(line.rsplit(", ", 1)[0])  # the bar shows samples/s itself
            self.close()
        else:
            t.say(f"epoch {m['epoch']}/{t.settings['epochs']}: {line}, {m['epoch_time_s']:.2f} s")

    def close(self, t=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    on_interrupt = on_diverged = on_finish = close


# ---------------------------------------------------------------------- curves
class CurvePlot(Extension):
    """``curves.png``: loss and validation accuracy per epoch, drawn when the run stops.
    Without matplotlib it says so once per process and draws nothing."""

    warned = False

    def __init__(self, out: str):
        self.path = os.path.join(out, "curves.png")

    def on_finish(self, t):
        if t.writer and t.history:
            self.draw(t)

    on_interrupt = on_diverged = on_finish

    def draw(self, t):
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not CurvePlot.warned:
                CurvePlot.warned = True
                t.say(
                    "matplotlib is not installed, so no curves.png is drawn "
                    "(pip install 'gpunn[plot]'); everything else is written as usual"
                )
            return
        h = t.history
        epochs = [m["epoch"] for m in h]
        fig = Figure(figsize=(9, 3.6))
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        ax1.plot(epochs, [m["train_loss"] for m in h], "o-", label="train")
        ax1.plot(epochs, [m["val_loss"] for m in h], "o-", label="validation")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel(t.rule.loss_label)
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.plot(epochs, [100 * m["val_acc"] for m in h], "o-", color="C2")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("validation accuracy (%)")
        ax2.grid(alpha=0.3)
        fig.suptitle(f"{t.settings['model']} on {t.settings['data']}")
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.88, wspace=0.3)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".curves", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
