"""Each model family of the lecture learns what it should, through the training job, judged
on the held-out test part. Quick versions (one seed, a few epochs, numpy reference) run by
default; the full recipes over seeds 0, 1, 2 are marked slow (``nox -s slow``)."""

import io

import numpy as np
import pytest

from gpunn import data as gdata
from gpunn import models
from gpunn import train as gtrain
from gpunn.train import train
from gpunn.training.extensions import CurvePlot

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _no_curves(monkeypatch):
    monkeypatch.setattr(CurvePlot, "draw", lambda self, t: None)


def _run(model, data, tmp_path, **kw):
    kw.setdefault("backend", "numpy")
    return train(model, data, out=str(tmp_path / "run"), progress=False, stream=io.StringIO(), **kw)


def separable(n_train=300, n_val=200, n_test=200, dim=5, margin=0.5, seed=0) -> gdata.DataSplit:
    """Points on both sides of a random hyperplane, none closer to it than ``margin``."""
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal(dim), 0.3
    w /= np.linalg.norm(w)
    n = n_train + n_val + n_test
    x = rng.standard_normal((4 * n, dim))
    score = x @ w + b
    keep = np.abs(score) > margin
    x, y = x[keep][:n].astype(np.float32), (score[keep] > 0)[:n].astype(np.int64)
    a, b = n_train, n_train + n_val
    return gdata.DataSplit(
        "separable", x[:a], y[:a], x[a:b], y[a:b], kind="tabular", num_classes=2,
        x_test=x[b:], y_test=y[b:],
    )  # fmt: skip


def test_perceptron_reaches_100_percent_on_a_linearly_separable_set(tmp_path):
    r = _run("perceptron", separable(), tmp_path)
    assert r.stopped == "converged"
    assert r.history[-1]["mistakes"] == 0 and r.history[-1]["train_loss"] == 0
    assert r.history[-1]["val_acc"] == 1.0 and r.test_acc == 1.0
    assert r.epochs < gtrain.DEFAULTS["perceptron"]["epochs"]  # stopped early


def test_perceptron_fit_stops_at_the_first_epoch_without_mistakes():
    import gpunn

    s = separable(n_train=100, n_val=10, dim=3)
    gpunn.manual_seed(0)
    p = models.Perceptron(3)
    history = p.fit(gpunn.tensor(s.x_train), gpunn.tensor(s.y_train.astype(np.float32)))
    assert history[-1] == 0 and all(m > 0 for m in history[:-1])


# ---------------------------------------------------------------------- quick (every run)
# One seed, a few epochs, on the numpy reference: the accuracy each family reaches in
# seconds, asserted on the test part with a margin below what was measured (seeds 0, 1, 2
# in the comments; the slow targets below hold the full recipes).
QUICK = [
    # (model, data, settings, test accuracy at least)
    ("logreg", "breast_cancer", {"epochs": 10}, 0.96),  # 98.2, 99.1, 98.2%
    ("mlp", "digits", {"epochs": 5}, 0.94),  # 96.1, 95.8, 96.7%
    ("cnn", "digits", {"epochs": 4}, 0.88),  # 91.9, 92.8, 93.0%
    ("rnn", "digits", {"epochs": 5}, 0.90),  # 94.4, 93.3, 94.2%
    ("lstm", "digits", {"epochs": 3}, 0.85),  # 89.4, 92.8, 92.8%
]


@pytest.mark.parametrize("model, data, settings, least", QUICK, ids=[q[0] for q in QUICK])
def test_each_family_learns_quickly(tmp_path, model, data, settings, least):
    r = _run(model, data, tmp_path, seed=0, **settings)
    assert r.test_samples > 0 and r.test_acc >= least, r.summary


def test_rnn_learns_the_adding_problem_quickly(tmp_path):
    """Length 5, 3,000 sequences, 10 epochs at a larger learning rate: test MSE 0.020,
    0.030, 0.030 (seeds 0, 1, 2) against 0.167 for always answering 1."""
    split = gdata.load_adding(n_train=3000, length=5)
    r = _run("rnn", split, tmp_path, seed=0, epochs=10, lr=1e-2, scheduler="cosine")
    assert r.test_loss < 0.06, r.summary


# ---------------------------------------------------------------------- targets (slow)
SEEDS = (0, 1, 2)
# Mean test accuracy over the seeds (benchmarks/results/train-cpu.json has the runs).
TARGETS = [
    ("logreg", "breast_cancer", 0.95),  # 97.3, 98.2, 97.3%
    ("mlp", "digits", 0.97),  # 97.8, 98.1, 98.1%
    ("rnn", "digits", 0.95),  # 96.4, 96.4, 96.4%
    ("lstm", "digits", 0.95),
]


def _over_seeds(model, data, tmp_path):
    """Test figures of the default recipe over seeds 0, 1, 2 (the training table's runs)."""
    runs = [
        train(
            model, data, seed=seed, out=str(tmp_path / f"s{seed}"), progress=False,
            stream=io.StringIO(),
        )
        for seed in SEEDS
    ]  # fmt: skip
    return [r.test_acc for r in runs], [r.test_loss for r in runs]


@pytest.mark.slow
@pytest.mark.parametrize("model, data, least", TARGETS)
def test_default_recipe_reaches_its_target(tmp_path, model, data, least):
    acc, _ = _over_seeds(model, data, tmp_path)
    assert np.mean(acc) >= least, acc


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="target not reached yet: the default recipe and four others measured 96.9-97.2% "
    "mean test accuracy over seeds 0-2 (see the training table and the commit message)",
)
def test_cnn_reaches_98_percent_on_the_digits_test_split(tmp_path):
    acc, _ = _over_seeds("cnn", "digits", tmp_path)
    assert np.mean(acc) >= 0.98, acc


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="not reached on every seed: test MSE 0.0148, 0.0117, 0.1284 for seeds 0, 1, 2 "
    "(seed 2 is still on the plateau after 30 epochs)",
)
def test_rnn_learns_the_adding_problem_at_length_20(tmp_path):
    """Always answering 1 gives a test MSE of 0.167; a network that adds gets far below."""
    _, mse = _over_seeds("rnn", "adding", tmp_path)
    assert max(mse) < 0.05, mse
