"""The training loop: epochs of updates, validation after each, events for extensions.

What a run writes, how it resumes and how it reports are extensions
(:mod:`gpunn.training.extensions`); what the model is and how it learns comes from its
:class:`~gpunn.training.specs.ModelSpec`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import gpunn
import gpunn.cuda
from gpunn import amp, nn, optim
from gpunn import data as gdata
from gpunn import distributed as dist
from gpunn.data.synthetic import ADDING_TOLERANCE
from gpunn.errors import CaptureError, GpunnError
from gpunn.optim import lr_scheduler
from gpunn.training.specs import SPECS, TrainError

EVAL_BATCH = 512


class TrainingDiverged(GpunnError, FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; ``.message`` says what was saved and how to resume."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _Diverged(Exception):
    def __init__(self, value, where):
        super().__init__(value, where)
        self.value, self.where = value, where


@dataclass
class TrainResult:
    """What :func:`gpunn.train.train` returns."""

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
    val_loss: float = float("nan")  # of the final epoch
    val_acc: float = float("nan")
    test_loss: float = float("nan")  # on the test part, measured once at the end
    test_acc: float = float("nan")
    test_samples: int = 0


def build_optimizer(settings: dict, model):
    """SGD, Adam or AdamW over ``model``'s parameters; None for a rule without an optimizer."""
    if not SPECS[settings["model"]].update.uses_optimizer:
        return None
    params, lr, decay = list(model.parameters()), settings["lr"], settings["weight_decay"]
    if settings["optimizer"] == "sgd":
        return optim.SGD(params, lr=lr, momentum=settings["momentum"] or 0.0, weight_decay=decay)
    if settings["optimizer"] == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=decay)
    return optim.Adam(params, lr=lr, weight_decay=decay)


def build_scheduler(settings: dict, optimizer, steps_per_epoch: int):
    """The ``--scheduler`` of the run, stepped after every update (``steps_per_epoch``
    updates an epoch), or None: ``step`` multiplies the rate by 0.1 after each third of
    the run; ``cosine`` falls from ``lr`` to 0 along half a cosine over the run;
    ``onecycle`` rises to ``lr`` over the first 30% of the run and falls to lr/25/1e4
    (PyTorch's OneCycleLR, momentum or beta1 cycling between 0.85 and 0.95)."""
    name = settings["scheduler"]
    if optimizer is None or name == "none":
        return None
    total = settings["epochs"] * steps_per_epoch
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=max(1, total // 3), gamma=0.1)
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return lr_scheduler.OneCycleLR(optimizer, max_lr=settings["lr"], total_steps=total)


class Trainer:
    """One run: ``Trainer(settings, split, out, extensions).run()``.

    State the extensions read: ``epoch`` (completed epochs), ``batch`` (index of the last
    batch), ``done`` (batches done in this epoch), ``order`` (this epoch's sample order),
    ``loss_sum``, ``seen``, ``elapsed`` (this epoch so far), ``history`` (one record per
    epoch), ``model``, ``optimizer``, ``loader``, ``updating``.
    """

    def __init__(self, settings, split, out, extensions=(), stream=None, world=None):
        self.settings, self.split, self.out = settings, split, out
        self.spec = SPECS[settings["model"]]
        self.rule = self.spec.update
        self.objective = self.spec.objective_for(split.task)
        self.tolerance = split.info.get("tolerance", ADDING_TOLERANCE)
        self.extensions = list(extensions)
        self.stream = stream or sys.stdout
        self.world = world  # under MPI every rank trains its shard; rank 0 alone writes
        self.writer = world is None or world.rank == 0
        self.net, self.ranks = None, 1
        self.history: list[dict] = []
        self.epoch = self.start_epoch = self.batch = self.done = 0
        self.order, self.loss_sum, self.seen, self.elapsed = None, 0.0, 0, 0.0
        self.batch_samples = 0
        self.updating = self._interrupt_pending = False

    def say(self, text: str) -> None:
        if self.writer:
            print(text, file=self.stream, flush=True)

    def emit(self, event: str) -> list[str]:
        """Call every extension with ``event``; the sentences they return."""
        said = [ext(event, self) for ext in self.extensions]
        return [s for s in said if s]

    @property
    def lr(self) -> float:
        return self.optimizer.lr if self.optimizer is not None else self.settings["lr"]

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        s, spec = self.settings, self.spec
        gpunn.manual_seed(s["seed"])
        if s.get("threads"):
            gpunn.set_num_threads(int(s["threads"]))
        kind, task = self.split.kind, self.split.task
        self.x_train = spec.layout(self.split.x_train, kind)
        self.y_train = spec.targets(self.split.y_train, task)
        self.x_val = spec.layout(self.split.x_val, kind)
        self.y_val = spec.targets(self.split.y_val, task)
        outputs = 1 if task == "regression" else self.split.num_classes
        self.model = spec.build(s, self.split, self.x_train, outputs)
        self.optimizer = build_optimizer(s, self.model)
        if self.world is not None and self.world.size > 1 and self.rule.data_parallel:
            self.net = dist.DataParallel(self.model, world=self.world)
            self.ranks = self.world.size
        self.loader = gdata.DataLoader(
            gdata.TensorDataset(self.x_train, self.y_train), s["batch_size"] * self.ranks, True
        )
        self.scheduler = build_scheduler(s, self.optimizer, len(self.loader))
        self.scaler = amp.GradScaler(enabled=s.get("amp") == "float16")
        self.graphed, self.use_graph = None, self._graph_choice()

    # -------------------------------------------------------------- captured steps
    def _graph_choice(self) -> bool:
        """Whether training steps run as a CUDA graph: ``--cuda-graph`` asks for it (an
        error when the step cannot be captured), ``--no-cuda-graph`` refuses it, and by
        default it is on for the cupy backend when nothing in the step is known to block
        a capture (:func:`gpunn.cuda.step_blockers`)."""
        s, want = self.settings, self.settings.get("cuda_graph")
        if want is False or s["backend"] != "cupy" or not self.rule.uses_optimizer:
            return False
        why = gpunn.cuda.step_blockers(self.model, amp=s.get("amp"))
        if self.net is not None:
            why.append("data-parallel training averages gradients through MPI on the host")
        if why and want:
            raise TrainError("--cuda-graph: the step cannot be captured: " + "; ".join(why))
        if why:
            self.say(f"note: training steps run eagerly, not as a CUDA graph ({why[0]})")
        return not why

    def _train_step(self, x, y):
        """The gradient step as a function of the batch, for capture: forward, loss,
        zero_grad, backward, the update (clipping, optimizer); returns the loss."""
        with self.autocast():
            loss = self.objective.loss(self.forward(x), y)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.apply_update()
        return loss

    def graphed_step(self, x, y):
        """The captured training step for a batch like (x, y), captured at the first call
        (the warm-up's changes undone, so the first replay is the first step), or None:
        graphs off, a batch of another shape (the last, smaller one runs eagerly), or, by
        default, a step that turned out not to be capturable (said once, then eager)."""
        if not self.use_graph:
            return None
        if self.graphed is None:
            try:
                self.graphed = gpunn.cuda.graphed(
                    self._train_step, x, y, state=(self.model, self.optimizer, self.scaler)
                )
            except CaptureError as e:
                if self.settings.get("cuda_graph"):
                    raise TrainError(f"--cuda-graph: {e}") from None
                self.say(f"note: training steps run eagerly, not as a CUDA graph: {e}")
                self.use_graph = False
                return None
        static = self.graphed.static_inputs
        if (x.shape, y.shape) != (static[0].shape, static[1].shape):
            return None
        return self.graphed

    def autocast(self):
        """The ``--amp`` precision for the forward pass (float32 on the CPU backends)."""
        dtype = self.settings.get("amp")
        return amp.autocast(dtype or "bfloat16", enabled=dtype is not None)

    def apply_update(self) -> None:
        """After backward: unscale (float16 loss scaling), clip the gradients' norm to
        ``--clip``, step the optimizer (skipped by the scaler on inf/nan gradients)."""
        if self.settings.get("clip"):
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def step_schedule(self) -> None:
        """After an update: step the learning-rate schedule. Kept out of the step a CUDA
        graph captures: its replays read the learning rate the schedule sets."""
        if self.scheduler is not None:
            self.scheduler.step()

    def forward(self, x):
        fn = self.spec.output_fn(self.model)
        return self.net.run(fn, x) if self.net is not None else fn(x)

    def guarded_update(self, fn):
        """Run a parameter update; a Ctrl-C arriving meanwhile is held until it is done."""
        self.updating = True
        result = fn()  # an exception leaves `updating` set: the parameters may be torn
        self.updating = False
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt
        return result

    @contextlib.contextmanager
    def _sigint_guard(self):
        if not (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            yield
            return

        def handler(signum, frame):
            if not self.updating:
                raise KeyboardInterrupt
            self._interrupt_pending = True

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    # -------------------------------------------------------------- evaluation
    def evaluate(self, x_host, y_host) -> tuple[float, float]:
        """(mean loss, accuracy) on host arrays, in evaluation mode, without a graph.
        Without a loss (the perceptron) the loss is the error rate."""
        self.model.eval()
        loss_sum, hits, n = 0.0, 0, len(x_host)
        loader = gdata.DataLoader(gdata.TensorDataset(x_host, y_host), EVAL_BATCH)
        try:
            with gpunn.no_grad():
                for idx in loader.batch_indices(loader.epoch_order()):
                    x, y = loader.fetch(idx)
                    out = self.forward(x)
                    right = int(
                        self.objective.correct(out.numpy(), y_host[idx], self.tolerance).sum()
                    )
                    hits += right
                    if self.objective.loss is None:
                        loss_sum += len(idx) - right
                    else:
                        loss_sum += self.objective.loss(out, y).item() * len(idx)
        finally:
            self.model.train()
        return loss_sum / max(n, 1), hits / max(n, 1)

    # -------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        with gpunn.use_backend(self.settings["backend"]):
            self.setup()
            self.emit("start")
            return self._loop()

    def _loop(self) -> TrainResult:
        epochs, t_run, stopped = self.settings["epochs"], time.perf_counter(), "completed"
        if self.epoch >= epochs and not self.done:
            stopped = "already done"
            self.say(
                f"the checkpoint already holds {self.epoch} epochs (--epochs {epochs}); "
                "pass a larger --epochs to train further"
            )
        elif self.history and self.rule.converged(self.history[-1]):
            stopped = "converged"
            self.say("the perceptron had already converged (an epoch without mistakes)")
        try:  # overflow in a diverging run is reported once, as a non-finite loss
            with (
                self._sigint_guard(),
                np.errstate(over="ignore", invalid="ignore", divide="ignore"),
            ):
                while stopped == "completed" and self.epoch < epochs:
                    self._epoch()
                    self.epoch += 1
                    self.done, self.order, self.loss_sum, self.seen, self.elapsed = (
                        0,
                        None,
                        0.0,
                        0,
                        0.0,
                    )
                    self.emit("epoch_end")
                    if self.rule.converged(self.history[-1]):
                        stopped = "converged"
                        self.say(f"converged: epoch {self.epoch} made no mistake")
        except KeyboardInterrupt:
            raise TrainingInterrupted("; ".join(self.emit("interrupt"))) from None
        except _Diverged as d:
            kept = "; ".join(self.emit("diverged"))
            ep, b, nb = d.where
            raise TrainingDiverged(
                f"the loss became {d.value} at epoch {ep}, batch {b}/{nb}: training diverged "
                f"(is --lr {self.settings['lr']:g} too large?). Stopped; {kept}."
            ) from None
        self.emit("finish")
        test = (float("nan"), float("nan"))
        if self.split.x_test is not None:  # looked at once, after every choice was made
            kind, task = self.split.kind, self.split.task
            x, y = (
                self.spec.layout(self.split.x_test, kind),
                self.spec.targets(self.split.y_test, task),
            )
            test = self.evaluate(x, y)
        return self._result(stopped, time.perf_counter() - t_run, test)

    def _epoch(self) -> None:
        loader, nb = self.loader, len(self.loader)
        if self.order is None:
            self.order = loader.epoch_order()
        self.emit("epoch_start")
        t0, before = time.perf_counter(), self.elapsed
        for b, idx in enumerate(loader.batch_indices(self.order, self.done), start=self.done):
            self.batch, self.batch_samples = b, len(idx)
            if self.net is not None:  # this rank's share of the global batch
                idx = idx[self.world.rank :: self.world.size]
            x, y = loader.fetch(idx)
            value = self.rule.step(self, x, y)
            if not math.isfinite(value):
                raise _Diverged(value, (self.epoch + 1, b + 1, nb))
            self.loss_sum += value * len(idx)
            self.seen += len(idx)
            self.done, self.elapsed = b + 1, before + time.perf_counter() - t0
            self.emit("batch_end")
        val_loss, val_acc = self.evaluate(self.x_val, self.y_val)
        if not math.isfinite(val_loss):
            raise _Diverged(val_loss, (self.epoch + 1, nb, nb))
        rate = self.seen * self.ranks / self.elapsed if self.elapsed > 0 else float("inf")
        record = {
            "epoch": self.epoch + 1,
            "train_loss": self.loss_sum / max(self.seen, 1),
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epoch_time_s": round(self.elapsed, 4),
            "samples_per_s": round(rate, 1),
        }
        self.rule.record(record, self)
        self.history.append(record)

    def _result(self, stopped, elapsed, test) -> TrainResult:
        s, h = self.settings, self.history
        best = max(h, key=lambda m: m["val_acc"], default=None)
        last = h[-1] if h else {"val_loss": float("nan"), "val_acc": float("nan")}
        what = "accuracy"
        if self.split.task == "regression":
            what = f"accuracy (|error| < {self.tolerance:g})"
        text = f"done: final val {what} {last['val_acc']:.2%}"
        n_test = 0 if self.split.x_test is None else len(self.split.x_test)
        if n_test:
            text += f", test {what} {test[1]:.2%} ({n_test} held-out samples)"
            if self.split.task == "regression":
                text += f", test MSE {test[0]:.4f}"
        if best is not None:
            text += f"; best val {best['val_acc']:.2%} at epoch {best['epoch']} (picked on val)"
        text += (
            f"; {len(h)} epochs, {elapsed:.1f} s on {s['backend']} ({stopped}); "
            f"{s['model']} on {s['data']} -> {self.out}"
        )
        self.say(text)
        return TrainResult(
            self.model, list(h), best["val_acc"] if best else float("nan"),
            best["epoch"] if best else 0, self.epoch, elapsed, s["backend"], self.out, dict(s),
            stopped, text, last["val_loss"], last["val_acc"], test[0], test[1], n_test,
        )  # fmt: skip
