"""The training job (gpunn.train): outputs, exact resume, Ctrl-C, NaN stop, bad settings.

All on the numpy reference backend with small runs; accuracy targets live in
test_models.py."""

import io
import json
import os
import signal
import sys

import numpy as np
import pytest

import gpunn
from gpunn import data as gdata
from gpunn import train as gtrain
from gpunn.errors import CheckpointError
from gpunn.train import TrainError, TrainingDiverged, TrainingInterrupted, train
from gpunn.training import settings as gsettings
from gpunn.training.extensions import CurvePlot

pytest.importorskip("sklearn")


def _quiet(**kw):
    kw.setdefault("backend", "numpy")
    kw.setdefault("progress", False)
    kw.setdefault("stream", io.StringIO())
    return kw


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _params(result):
    return {k: v.numpy() for k, v in result.model.state_dict().items()}


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert list(pa) == list(pb)
    for k in pa:
        assert pa[k].dtype == pb[k].dtype
        assert np.array_equal(pa[k], pb[k]), f"{k} differs"


@pytest.fixture(autouse=True)
def _no_curves(request, monkeypatch):
    """Drawing curves.png costs a few tenths of a second per run: only where tested."""
    if "curves" not in request.node.name and "matplotlib" not in request.node.name:
        monkeypatch.setattr(CurvePlot, "draw", lambda self, t: None)


@pytest.fixture(scope="module")
def small_digits():
    """A 400-sample slice of digits: quick epochs that still learn."""
    s = gdata.load_digits()
    return gdata.DataSplit(
        "digits",
        s.x_train[:400],
        s.y_train[:400],
        s.x_val[:150],
        s.y_val[:150],
        kind="image",
        num_classes=10,
    )


# ---------------------------------------------------------------------- outputs
def test_run_writes_config_metrics_checkpoint_and_curves(tmp_path):
    out = tmp_path / "run"
    stream = io.StringIO()
    r = train("logreg", "breast_cancer", epochs=3, out=str(out), **_quiet(stream=stream))
    assert sorted(os.listdir(out)) == ["checkpoint", "config.json", "curves.png", "metrics.jsonl"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "logreg" and cfg["data"] == "breast_cancer"
    assert cfg["epochs"] == 3 and cfg["optimizer"] == "sgd" and cfg["backend"] == "numpy"
    assert cfg["gpunn_version"] == gpunn.__version__
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_acc", "epoch_time_s", "samples_per_s"):
        assert all(isinstance(m[key], float) for m in lines), key
    state = gpunn.load(out / "checkpoint")
    assert int(state["epoch"].item()) == 3 and int(state["batch"].item()) == 0
    assert {"model.linear.weight", "model.linear.bias", "optimizer.lr", "rng_state"} <= set(state)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = stream.getvalue()
    assert "epoch 3/3: loss" in text and "val_acc" in text and "samples/s" in text
    summary = text.strip().splitlines()[-1]
    assert summary == r.summary
    assert "final val accuracy" in summary and "on numpy" in summary and " s " in summary
    assert "test accuracy" in summary and "(picked on val)" in summary
    assert r.best_acc == max(m["val_acc"] for m in lines) and r.epochs == 3
    assert r.val_acc == lines[-1]["val_acc"] and r.test_samples == 113  # 20% of each class of 569
    assert 0.5 < r.test_acc <= 1.0


def test_progress_bar_shows_loss_and_rate(tmp_path, capsys):
    pytest.importorskip("tqdm")
    train("logreg", "breast_cancer", epochs=2, out=str(tmp_path), **_quiet(progress=True))
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "samples/s" in err and "loss" in err and "val_acc" in err


def test_without_matplotlib_it_says_so_once_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setattr(CurvePlot, "warned", False)
    stream = io.StringIO()
    train("logreg", "breast_cancer", epochs=2, out=str(tmp_path / "a"), **_quiet(stream=stream))
    train("logreg", "breast_cancer", epochs=2, out=str(tmp_path / "b"), **_quiet(stream=stream))
    assert stream.getvalue().count("matplotlib is not installed") == 1
    assert "gpunn[plot]" in stream.getvalue()
    assert not (tmp_path / "a" / "curves.png").exists()
    assert (tmp_path / "b" / "checkpoint").exists()


def test_same_seed_same_run_other_seed_other_run(tmp_path, small_digits):
    kw = _quiet(epochs=2, batch_size=64)
    a = train("mlp", small_digits, out=str(tmp_path / "a"), seed=5, **kw)
    b = train("mlp", small_digits, out=str(tmp_path / "b"), seed=5, **kw)
    c = train("mlp", small_digits, out=str(tmp_path / "c"), seed=6, **kw)
    _assert_same_params(a, b)
    assert not np.array_equal(_params(a)["output.weight"], _params(c)["output.weight"])


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize("model", ["mlp", "rnn"])
def test_resume_after_epoch_k_is_bitwise_an_uninterrupted_run(tmp_path, small_digits, model):
    kw = _quiet(epochs=4, batch_size=64, optimizer="adam")
    whole = train(model, small_digits, out=str(tmp_path / "whole"), **kw)
    part = str(tmp_path / "part")
    train(model, small_digits, out=part, **{**kw, "epochs": 2})
    resumed = train(model, small_digits, out=part, resume=True, **kw)
    _assert_same_params(whole, resumed)
    assert [m["val_loss"] for m in resumed.history] == [m["val_loss"] for m in whole.history]
    assert len(gtrain.read_metrics(part)) == 4
    assert json.loads((tmp_path / "part" / "config.json").read_text())["resumed_at_epoch"] == 2


def test_resume_with_sgd_momentum_and_the_saved_settings(tmp_path, small_digits):
    kw = _quiet(batch_size=50, optimizer="sgd", lr=0.05, momentum=0.9)
    whole = train("mlp", small_digits, out=str(tmp_path / "w"), epochs=3, **kw)
    part = str(tmp_path / "p")
    train("mlp", small_digits, out=part, epochs=1, **kw)
    # only --epochs on resume: everything else comes from config.json
    resumed = train(data=small_digits, out=part, resume=True, epochs=3, **_quiet())
    assert resumed.config["optimizer"] == "sgd" and resumed.config["batch_size"] == 50
    _assert_same_params(whole, resumed)


def test_ctrl_c_inside_an_epoch_saves_and_resumes_exactly(tmp_path, small_digits):
    kw = _quiet(epochs=3, batch_size=32)
    whole = train("mlp", small_digits, out=str(tmp_path / "whole"), **kw)
    out = str(tmp_path / "cut")

    def ctrl_c(event, trainer):
        if event == "batch_end" and trainer.epoch == 1 and trainer.batch == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as err:
        train("mlp", small_digits, out=out, callbacks=[ctrl_c], **kw)
    assert isinstance(err.value, KeyboardInterrupt)
    assert "epoch 2, after batch 5/13" in err.value.message and "--resume" in err.value.message
    state = gpunn.load(os.path.join(out, "checkpoint"))
    assert int(state["epoch"].item()) == 1 and int(state["batch"].item()) == 5
    assert len(gtrain.read_metrics(out)) == 1
    resumed = train(data=small_digits, out=out, resume=True, **_quiet())
    _assert_same_params(whole, resumed)
    assert [m["train_loss"] for m in resumed.history] == [m["train_loss"] for m in whole.history]


def test_a_real_sigint_is_caught_between_steps(tmp_path, small_digits):
    out = str(tmp_path / "sig")

    def press_ctrl_c(event, trainer):
        if event == "batch_end" and trainer.epoch == 0 and trainer.batch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="checkpoint written"):
        train("mlp", small_digits, out=out, epochs=2, callbacks=[press_ctrl_c], **_quiet())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    state = gpunn.load(os.path.join(out, "checkpoint"))
    assert int(state["batch"].item()) in (3, 4)  # after the step that saw the signal


def test_interrupt_during_an_update_keeps_the_last_checkpoint(tmp_path, small_digits, monkeypatch):
    out = str(tmp_path / "upd")
    train("mlp", small_digits, out=out, epochs=1, **_quiet())
    before = _read(os.path.join(out, "checkpoint"))
    calls = {"n": 0}
    real_step = gpunn.optim.Adam.step

    def step(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if Ctrl-C hit half-way through the update
        real_step(self)

    monkeypatch.setattr(gpunn.optim.Adam, "step", step)
    with pytest.raises(TrainingInterrupted, match="keeps epoch 1"):
        train(data=small_digits, out=out, resume=True, epochs=2, **_quiet())
    assert _read(os.path.join(out, "checkpoint")) == before


def test_interrupt_at_an_epoch_end(tmp_path, small_digits):
    def stop(event, trainer):
        if event == "epoch_end":
            raise KeyboardInterrupt

    out = str(tmp_path / "end")
    with pytest.raises(TrainingInterrupted, match="keeps epoch 1"):
        train("mlp", small_digits, out=out, epochs=3, callbacks=[stop], **_quiet())
    r = train(data=small_digits, out=out, resume=True, **_quiet())
    assert r.epochs == 3 and len(r.history) == 3


def test_resume_when_already_done_and_without_a_checkpoint(tmp_path):
    out = str(tmp_path / "done")
    train("logreg", "breast_cancer", epochs=2, out=out, **_quiet())
    stream = io.StringIO()
    r = train(out=out, resume=True, **_quiet(stream=stream))
    assert r.stopped == "already done" and "pass a larger --epochs" in stream.getvalue()
    with pytest.raises(TrainError, match="nothing to resume"):
        train(out=str(tmp_path / "none"), resume=True, **_quiet())


def test_a_fresh_run_replaces_an_earlier_one(tmp_path):
    out = str(tmp_path / "again")
    train("logreg", "breast_cancer", epochs=3, out=out, **_quiet())
    stream = io.StringIO()
    train("logreg", "breast_cancer", epochs=1, out=out, **_quiet(stream=stream))
    assert "starting afresh" in stream.getvalue()
    assert len(gtrain.read_metrics(out)) == 1
    assert int(gpunn.load(os.path.join(out, "checkpoint"))["epoch"].item()) == 1


def test_a_checkpoint_of_another_model_names_the_first_mismatch(tmp_path, small_digits):
    out = str(tmp_path / "m")
    train("mlp", small_digits, out=out, epochs=1, **_quiet())
    with pytest.raises(CheckpointError, match=r"mlp on digits.*parameter .linear.weight."):
        train("logreg", "breast_cancer", out=out, resume=True, **_quiet())
    with pytest.raises(CheckpointError, match=r"'hidden.0.weight' has shape \(256, 64\) there"):
        train("mlp", small_digits, out=out, resume=True, hidden=[32], **_quiet())
    with pytest.raises(CheckpointError, match="holds adam optimizer state, this run uses sgd"):
        train("mlp", small_digits, out=out, resume=True, optimizer="sgd", **_quiet())


# ---------------------------------------------------------------------- NaN
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, small_digits):
    out = str(tmp_path / "nan")
    kw = _quiet(optimizer="sgd", momentum=0.9, batch_size=32)
    train("mlp", small_digits, out=out, epochs=2, lr=0.05, **kw)
    ckpt = os.path.join(out, "checkpoint")
    before = _read(ckpt)
    with pytest.raises(TrainingDiverged) as err:
        train(data=small_digits, out=out, resume=True, epochs=5, lr=1e6, **_quiet())
    text = str(err.value)
    assert "epoch 3, batch" in text and "diverged" in text and "--lr 1e+06" in text
    assert f"{ckpt} still holds epoch 2" in text
    assert _read(ckpt) == before
    assert len(gtrain.read_metrics(out)) == 2


def test_nan_in_the_first_epoch(tmp_path):
    s = gdata.load_breast_cancer()
    s.x_train = s.x_train.copy()
    s.x_train[5, 3] = np.nan
    with pytest.raises(TrainingDiverged, match="became nan at epoch 1.*no checkpoint was written"):
        train("logreg", s, out=str(tmp_path), epochs=2, batch_size=500, **_quiet())
    assert not (tmp_path / "checkpoint").exists()


# ---------------------------------------------------------------------- settings
def test_defaults_per_model():
    for model in gtrain.MODELS:
        s = gtrain.resolve_settings({"model": model, "data": "digits"})
        assert s["epochs"] >= 1 and s["batch_size"] >= 1 and s["lr"] > 0
        assert (s["optimizer"] is None) == (model == "perceptron")
    assert gtrain.resolve_settings({"model": "logreg"})["momentum"] == 0.0
    assert gtrain.resolve_settings({"model": "mlp", "optimizer": "sgd"})["momentum"] == 0.9
    s = gtrain.resolve_settings({"model": "cnn", "data": "digits", "lr": 0.5, "seed": 3})
    assert s["lr"] == 0.5 and s["seed"] == 3 and s["optimizer"] == "adam"
    with pytest.raises(TrainError, match="one hidden size"):
        gtrain.resolve_settings({"model": "lstm", "hidden": [3, 4]})


@pytest.mark.parametrize(
    "model, data, message",
    [
        ("cnn", "breast_cancer", "cnn cannot learn breast_cancer: a convolutional network"),
        ("cnn", "parity", "made of sequences; use --model rnn or lstm"),
        ("logreg", "digits", "separates two classes, and digits has 10"),
        ("perceptron", "mnist", "separates two classes, and mnist has 10"),
        ("logreg", "adding", "adding is a regression task"),
        ("rnn", "breast_cancer", "rnn cannot learn breast_cancer: a recurrent network"),
        ("lstm", "breast_cancer", "tabular"),
    ],
)
def test_models_that_cannot_take_a_data_set_say_why(tmp_path, model, data, message):
    with pytest.raises(TrainError, match=message):
        train(model, data, out=str(tmp_path), **_quiet())
    assert os.listdir(tmp_path) == []  # refused before writing anything


@pytest.mark.parametrize(
    "model, data",
    [("mlp", "breast_cancer"), ("mlp", "parity"), ("rnn", "digits"), ("cnn", "digits")],
)
def test_every_sensible_pair_is_accepted(model, data):
    gtrain.check_compatible(model, data)


def test_unusable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(TrainError, match="cannot write to the output folder"):
        train("logreg", "breast_cancer", out=str(blocker / "run"), **_quiet())


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere"
)
def test_read_only_output_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(TrainError, match="Permission denied"):
            train("logreg", "breast_cancer", out=str(ro), **_quiet())
    finally:
        ro.chmod(0o700)


def test_unavailable_backend_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(gsettings, "why_unavailable", lambda name: "cupy: no CUDA device found")
    with pytest.raises(TrainError, match="backend 'cupy' cannot run here: cupy: no CUDA device"):
        train("logreg", "breast_cancer", out=str(tmp_path), **_quiet(backend="cupy"))


def test_default_backend_is_numba_when_it_runs(monkeypatch):
    monkeypatch.setattr(gsettings, "available_backends", lambda: ["numpy", "numba"])
    assert gtrain.default_backend() == "numba"
    monkeypatch.setattr(gsettings, "available_backends", lambda: ["numpy"])
    assert gtrain.default_backend() == "numpy"


def test_images_are_read_row_by_row_by_recurrent_models():
    s = gdata.load_digits()
    x, y, _, _ = gtrain.prepare_arrays("lstm", s)
    assert x.shape == (len(s.x_train), 8, 8) and y.dtype == np.int64
    np.testing.assert_array_equal(x[0, 3], s.x_train[0, 0, 3])  # step 3 is row 3
    flat = gtrain.prepare_arrays("logreg", gdata.load_breast_cancer())
    assert flat[1].shape[1:] == (1,) and flat[1].dtype == np.float32
