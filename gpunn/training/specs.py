"""The table of models ``gpunn train`` knows: one :class:`ModelSpec` per model says how to
build it, how its input and targets are laid out, which loss and metric judge it, which
update rule trains it, which data it can learn and its default settings.

The trainer, ``gpunn graph`` and the command line read this table; none of them tests a
model's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from gpunn import functional as F
from gpunn import models
from gpunn.errors import GpunnError


class TrainError(GpunnError):
    """Settings that cannot work (model and data that do not fit, an unusable backend or
    output folder, nothing to resume): raised before any training starts."""


# ---------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class Objective:
    """A loss and the metric reported beside it.

    ``loss(output, target)`` returns a 0-d tensor (None: the loss is the error rate, for a
    model without one); ``correct(output, target, tolerance)`` takes host arrays and returns
    one bool per sample.
    """

    name: str
    loss: Callable | None
    correct: Callable
    title: str


OBJECTIVES = {
    "cross_entropy": Objective(
        "cross_entropy",
        F.cross_entropy,
        lambda out, y, tol: out.argmax(axis=1) == y,
        "cross-entropy",
    ),
    "bce_with_logits": Objective(
        "bce_with_logits",
        F.binary_cross_entropy_with_logits,
        lambda out, y, tol: (out > 0) == (y > 0.5),
        "binary cross-entropy of sigmoid(W x + b)",
    ),
    "mse": Objective(
        "mse",
        F.mse_loss,
        lambda out, y, tol: np.abs(out - y) < tol,
        "mean squared error",
    ),
    "error_rate": Objective(
        "error_rate",
        None,
        lambda out, y, tol: out.reshape(-1) == y,
        "output step(w . x + b) (trained by the perceptron rule, no loss)",
    ),
}


# ---------------------------------------------------------------------- update rules
class GradientRule:
    """Forward, loss, backward, optimizer step."""

    uses_optimizer = True
    data_parallel = True
    loss_label = "loss"

    def step(self, trainer, x, y) -> float:
        graphed = trainer.graphed_step(x, y)
        if graphed is not None:  # the whole step as one CUDA graph (gpunn.cuda.graphed)

            def replay():
                loss = graphed(x, y)
                trainer.step_schedule()
                return loss

            return trainer.guarded_update(replay).item()
        with trainer.autocast():
            loss = trainer.objective.loss(trainer.forward(x), y)
        value = loss.item()
        if not np.isfinite(value):
            return value
        trainer.optimizer.zero_grad()
        trainer.scaler.scale(loss).backward()

        def update():
            trainer.apply_update()
            trainer.step_schedule()

        trainer.guarded_update(update)
        return value

    def record(self, record: dict, trainer) -> None:
        record["lr"] = trainer.lr

    def converged(self, record: dict) -> bool:
        return False


class PerceptronRule:
    """Rosenblatt's rule, sample by sample; the loss is the fraction of mistakes. It is
    sequential, so under MPI every rank runs it whole (and rank 0 writes)."""

    uses_optimizer = False
    data_parallel = False
    loss_label = "error rate"

    def step(self, trainer, x, y) -> float:
        lr = trainer.settings["lr"]
        mistakes = trainer.guarded_update(lambda: trainer.model.fit_epoch(x, y, lr))
        return mistakes / x.shape[0]

    def record(self, record: dict, trainer) -> None:
        record["mistakes"] = int(round(record["train_loss"] * trainer.seen))

    def converged(self, record: dict) -> bool:
        return record["mistakes"] == 0


RULES = {"gradient": GradientRule(), "perceptron": PerceptronRule()}


# ---------------------------------------------------------------------- layouts
def flat(x: np.ndarray, kind: str) -> np.ndarray:
    """(N, ...) -> (N, features)."""
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def as_is(x: np.ndarray, kind: str) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def steps(x: np.ndarray, kind: str) -> np.ndarray:
    """Sequences stay (N, T, F); images (N, C, H, W) are read row by row: step r holds row r
    of every channel, (N, H, C*W)."""
    if kind != "image":
        return as_is(x, kind)
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(n, h, c * w), dtype=np.float32)


TARGETS = {
    "index": lambda y: np.asarray(y, dtype=np.int64),
    "column": lambda y: np.asarray(y, dtype=np.float32).reshape(len(y), 1),
    "label": lambda y: np.asarray(y, dtype=np.float32).reshape(len(y)),
    "values": lambda y: np.asarray(y, dtype=np.float32).reshape(len(y), -1),
}


# ---------------------------------------------------------------------- builders
def _build_cnn(settings, split, x, outputs):
    c, h, w = x.shape[1:]
    if h != w:
        raise TrainError(f"cnn (LeNet-5) takes square images, {split.name} has {h}x{w}")
    return models.LeNet5(in_channels=c, num_classes=outputs, image_size=h)


def _build_resnet(settings, split, x, outputs):
    return models.ResNet8(in_channels=x.shape[1], num_classes=outputs)


def _build_recurrent(cls):
    def build(settings, split, x, outputs):
        return cls(x.shape[2], (settings.get("hidden") or [64])[0], outputs)

    return build


# ---------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ModelSpec:
    """Everything the training job knows about one model.

    Attributes:
        name, info: the ``--model`` choice and one line about it.
        build: ``(settings, split, x_train, outputs) -> Module``.
        layout: host array (N, ...) of the data set -> the model's input.
        target: key of :data:`TARGETS` for classification data (regression data always
            takes ``"values"``, float32 (N, k)).
        objective: key of :data:`OBJECTIVES` on classification data (``"mse"`` on regression).
        forward: the method whose output the objective judges (logits, not probabilities).
        rule: key of :data:`RULES`.
        kinds: data kinds it reads; ``two_classes``: it separates two classes only;
            ``one_hidden``: ``--hidden`` takes one size (the recurrent state).
        noun, reads: words for error messages ("a recurrent network", "reads a sequence").
        defaults: settings that train it well in seconds; ``per_data``: what differs on a
            data set.
    """

    name: str
    info: str
    build: Callable
    layout: Callable
    target: str
    objective: str
    rule: str = "gradient"
    forward: str = "__call__"
    kinds: tuple = ("tabular", "image", "sequence")
    two_classes: bool = False
    one_hidden: bool = False
    noun: str = ""
    reads: str = ""
    defaults: dict = field(default_factory=dict)
    per_data: dict = field(default_factory=dict)

    def objective_for(self, task: str) -> Objective:
        return OBJECTIVES["mse" if task == "regression" else self.objective]

    def targets(self, y: np.ndarray, task: str) -> np.ndarray:
        return TARGETS["values" if task == "regression" else self.target](y)

    def output_fn(self, model) -> Callable:
        return model if self.forward == "__call__" else getattr(model, self.forward)

    @property
    def update(self):
        return RULES[self.rule]


_IDX = {"epochs": 10, "batch_size": 128}  # MNIST-sized sets: fewer, larger batches
SPECS = {
    "perceptron": ModelSpec(
        "perceptron",
        "one neuron with a step output, trained by the perceptron rule",
        lambda s, split, x, k: models.Perceptron(x.shape[1]),
        flat,
        target="label",
        objective="error_rate",
        rule="perceptron",
        two_classes=True,
        noun="a perceptron",
        defaults={"epochs": 50, "batch_size": 64, "lr": 1.0, "optimizer": None},
    ),
    "logreg": ModelSpec(
        "logreg",
        "logistic regression: one sigmoid neuron, binary cross-entropy",
        lambda s, split, x, k: models.LogisticRegression(x.shape[1]),
        flat,
        target="column",
        objective="bce_with_logits",
        forward="logits",
        two_classes=True,
        noun="logistic regression",
        defaults={"epochs": 30, "batch_size": 32, "lr": 0.1, "optimizer": "sgd", "momentum": 0.0},
        per_data={"parity": {"epochs": 10}},
    ),
    "mlp": ModelSpec(
        "mlp",
        "multi-layer perceptron (hidden ReLU layers)",
        lambda s, split, x, k: models.MLP(x.shape[1], s.get("hidden") or [128], k),
        flat,
        target="index",
        objective="cross_entropy",
        defaults={
            "epochs": 20,
            "batch_size": 32,
            "lr": 1e-3,
            "optimizer": "adam",
            "hidden": [256, 128],
        },  # fmt: skip
        per_data={
            "mnist": _IDX,
            "fashion_mnist": _IDX,
            "adding": {"lr": 3e-3, "hidden": [128, 64]},
        },
    ),
    "cnn": ModelSpec(
        "cnn",
        "LeNet-5 style convolutional network",
        _build_cnn,
        as_is,
        target="index",
        objective="cross_entropy",
        kinds=("image",),
        noun="a convolutional network",
        reads="needs images (N, C, H, W) with neighbouring pixels",
        defaults={
            "epochs": 50,
            "batch_size": 32,
            "lr": 4e-3,
            "optimizer": "adam",
            "weight_decay": 1e-3,
            "scheduler": "cosine",
        },
        per_data={
            "mnist": {"epochs": 3, "batch_size": 64, "lr": 1e-3},
            "fashion_mnist": {"epochs": 5, "batch_size": 64, "lr": 1e-3},
        },
    ),
    "resnet": ModelSpec(
        "resnet",
        "ResNet-8: residual blocks with batch norm, global average pooling",
        _build_resnet,
        as_is,
        target="index",
        objective="cross_entropy",
        kinds=("image",),
        noun="a convolutional network",
        reads="needs images (N, C, H, W) with neighbouring pixels",
        # AdamW, cosine schedule, clipping at norm 1: on digits 10 epochs reach the plain
        # cnn's test accuracy (README, training from the command line)
        defaults={
            "epochs": 10,
            "batch_size": 32,
            "lr": 3e-3,
            "optimizer": "adamw",
            "weight_decay": 5e-4,
            "scheduler": "cosine",
            "clip": 1.0,
        },
        per_data={
            "mnist": {"epochs": 3, "batch_size": 128},
            "fashion_mnist": {"epochs": 5, "batch_size": 128},
            "cifar10": {"epochs": 30, "batch_size": 128, "lr": 2e-3},
        },
    ),
    "rnn": ModelSpec(
        "rnn",
        "Elman RNN reading the input step by step",
        _build_recurrent(models.RNNClassifier),
        steps,
        target="index",
        objective="cross_entropy",
        kinds=("image", "sequence"),
        one_hidden=True,
        noun="a recurrent network",
        reads="reads a sequence step by step (images are read row by row)",
        defaults={"epochs": 20, "batch_size": 64, "lr": 3e-3, "optimizer": "adam", "hidden": [64]},
        per_data={
            "mnist": {"epochs": 5, "batch_size": 128, "lr": 1e-3, "hidden": [128]},
            "fashion_mnist": {"epochs": 5, "batch_size": 128, "lr": 1e-3, "hidden": [128]},
            # length 20 learns late (the loss leaves 0.16 after ~12 epochs); the cosine
            # schedule's small steps at the end halve the final error (one seed: test MSE
            # 0.025 constant, 0.016 cosine)
            "adding": {"epochs": 30, "lr": 3e-3, "scheduler": "cosine", "clip": 1.0},
        },
    ),
    "lstm": ModelSpec(
        "lstm",
        "LSTM reading the input step by step",
        _build_recurrent(models.LSTMClassifier),
        steps,
        target="index",
        objective="cross_entropy",
        kinds=("image", "sequence"),
        one_hidden=True,
        noun="a recurrent network",
        reads="reads a sequence step by step (images are read row by row)",
        defaults={"epochs": 10, "batch_size": 64, "lr": 1e-2, "optimizer": "adam", "hidden": [64]},
        per_data={
            "mnist": {"epochs": 3, "batch_size": 128, "lr": 3e-3, "hidden": [128]},
            "fashion_mnist": {"epochs": 5, "batch_size": 128, "lr": 3e-3, "hidden": [128]},
            "adding": {"epochs": 10, "lr": 3e-3},
        },
    ),
}
# the GRU trains on the LSTM's recipe (not tuned for it)
SPECS["gru"] = replace(
    SPECS["lstm"],
    name="gru",
    info="GRU reading the input step by step",
    build=_build_recurrent(models.GRUClassifier),
)

# what a data kind is, and the models made for it, for error messages
KIND_WORDS = {
    "tabular": ("tabular: a vector of unordered features", "logreg or mlp"),
    "image": ("made of images", "cnn or resnet"),
    "sequence": ("made of sequences", "rnn or lstm"),
}


def refusal(spec: ModelSpec, name: str, kind: str, task: str, classes) -> str | None:
    """Why ``spec``'s model cannot learn data set ``name``, or None when it can."""
    head = f"{spec.name} cannot learn {name}:"
    if spec.two_classes and task == "regression":
        return (
            f"{head} {name} is a regression task (a real-valued target), and {spec.noun} is "
            "one neuron that separates two classes; use --model rnn, lstm or mlp"
        )
    if spec.two_classes and classes != 2:
        return (
            f"{head} {spec.noun} is one neuron that separates two classes, and {name} has "
            f"{classes}; use --model mlp, cnn, rnn or lstm"
        )
    if kind not in spec.kinds:
        what, hint = KIND_WORDS[kind]
        return f"{head} {spec.noun} {spec.reads}, and {name} is {what}; use --model {hint}"
    return None
