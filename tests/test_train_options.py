"""gpunn train's --optimizer adamw, --scheduler, --clip, --amp and the resnet model: what
they set up, that they change the run as asked, and exact resume with each."""

import io

import numpy as np
import pytest

import gpunn
from gpunn import data as gdata
from gpunn import train as gtrain
from gpunn.optim import lr_scheduler
from gpunn.train import TrainError, TrainingInterrupted, train
from gpunn.training import extensions
from gpunn.training.loop import Trainer


@pytest.fixture(autouse=True)
def _no_curves(monkeypatch):
    monkeypatch.setattr(extensions.CurvePlot, "draw", lambda self, t: None)


@pytest.fixture(scope="module")
def tiny_digits():
    s = gdata.load_digits()
    return gdata.DataSplit(
        "digits", s.x_train[:192], s.y_train[:192], s.x_val[:64], s.y_val[:64], kind="image",
        num_classes=10,
    )  # fmt: skip


def _quiet(**kw):
    kw.setdefault("backend", "numpy")
    kw.setdefault("progress", False)
    kw.setdefault("stream", io.StringIO())
    return kw


def _state(result):
    return {k: v.numpy() for k, v in result.model.state_dict().items()}


def _assert_same(a, b):
    sa, sb = _state(a), _state(b)
    assert list(sa) == list(sb)
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), f"{k} differs"


def test_settings_of_the_new_options():
    s = gtrain.resolve_settings({"model": "resnet", "data": "digits"})
    assert (s["optimizer"], s["scheduler"], s["clip"], s["amp"]) == ("adamw", "cosine", 1.0, None)
    s = gtrain.resolve_settings({"model": "mlp", "data": "digits", "optimizer": "adamw"})
    assert s["weight_decay"] == 0.01  # PyTorch's AdamW default
    assert gtrain.resolve_settings({"model": "mlp", "optimizer": "adam"})["weight_decay"] == 0.0
    assert gtrain.resolve_settings({"model": "mlp", "scheduler": "constant"})["scheduler"] == "none"
    for bad, message in (
        ({"scheduler": "linear"}, "unknown scheduler 'linear'; choose from none, step"),
        ({"clip": 0.0}, "--clip must be > 0"),
        ({"amp": "int8"}, "unknown --amp 'int8'"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose from sgd, adam, adamw"),
    ):
        with pytest.raises(TrainError, match=message):
            gtrain.resolve_settings({"model": "mlp", **bad})
    with pytest.raises(TrainError, match="perceptron rule.*--clip and --scheduler do not apply"):
        gtrain.resolve_settings({"model": "perceptron", "clip": 1.0})


@pytest.mark.parametrize(
    "name, cls", [("step", "StepLR"), ("cosine", "CosineAnnealingLR"), ("onecycle", "OneCycleLR")]
)
def test_each_scheduler_sets_the_lr_of_every_update(tiny_digits, tmp_path, name, cls):
    seen = []

    def spy(event, t):
        if event == "start":
            assert type(t.scheduler).__name__ == cls
        if event == "batch_end":
            seen.append(t.optimizer.lr)

    kw = _quiet(epochs=3, batch_size=64, lr=0.01, optimizer="sgd", scheduler=name)
    train("mlp", tiny_digits, out=str(tmp_path), callbacks=[spy], **kw)
    assert len(seen) == 9 and len(set(seen)) > 1  # 3 batches an epoch, changed as it went
    if name == "cosine":  # lr * (1 + cos(pi * k / 9)) / 2 after update k
        want = [0.01 * (1 + np.cos(np.pi * k / 9)) / 2 for k in range(1, 10)]
        np.testing.assert_allclose(seen, want, rtol=1e-12, atol=1e-15)
    if name == "step":
        assert seen[:2] == [0.01, 0.01] and seen[2] == pytest.approx(0.001)
    if name == "onecycle":
        # the lr of the last update (set after update 8 of 9) is lr / 25 / 1e4
        assert max(seen) == pytest.approx(0.01, rel=0.05) and seen[-2] == pytest.approx(4e-8)


def test_clip_bounds_the_gradient_norm_before_every_step(tiny_digits, tmp_path, monkeypatch):
    norms = []
    real_step = gpunn.optim.SGD.step

    def step(self):
        g = [p.grad.numpy().ravel() for p in self.params if p.grad is not None]
        norms.append(float(np.linalg.norm(np.concatenate(g))))
        real_step(self)

    monkeypatch.setattr(gpunn.optim.SGD, "step", step)
    kw = _quiet(epochs=1, batch_size=64, lr=0.5, optimizer="sgd")
    train("mlp", tiny_digits, out=str(tmp_path / "a"), **kw)
    unclipped = list(norms)
    norms.clear()
    train("mlp", tiny_digits, out=str(tmp_path / "b"), clip=0.05, **kw)
    assert max(unclipped) > 0.05 and max(norms) <= 0.05 * (1 + 1e-5)


def test_amp_on_the_cpu_keeps_float32_results(tiny_digits, tmp_path):
    kw = _quiet(epochs=1, batch_size=64)
    plain = train("cnn", tiny_digits, out=str(tmp_path / "a"), **kw)
    bf16 = train("cnn", tiny_digits, out=str(tmp_path / "b"), amp="bfloat16", **kw)
    f16 = train("cnn", tiny_digits, out=str(tmp_path / "c"), amp="float16", **kw)
    _assert_same(plain, bf16)
    _assert_same(plain, f16)  # the loss scaler divides exactly what it multiplied


@pytest.mark.parametrize(
    "model, extra",
    [
        ("resnet", {}),
        ("mlp", {"optimizer": "sgd", "scheduler": "onecycle", "clip": 0.5}),
        ("mlp", {"optimizer": "adamw", "scheduler": "step", "amp": "float16"}),
    ],
)
def test_ctrl_c_and_resume_reproduce_the_run_with_the_new_options(
    tiny_digits, tmp_path, model, extra
):
    kw = _quiet(epochs=2, batch_size=64, **extra)
    whole = train(model, tiny_digits, out=str(tmp_path / "whole"), **kw)
    out = str(tmp_path / "cut")

    def ctrl_c(event, t):
        if event == "batch_end" and t.epoch == 1 and t.batch == 0:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(model, tiny_digits, out=out, callbacks=[ctrl_c], **kw)
    resumed = train(data=tiny_digits, out=out, resume=True, **_quiet())
    _assert_same(whole, resumed)  # batch norm's running statistics included
    assert [m["lr"] for m in resumed.history] == [m["lr"] for m in whole.history]


def test_resnet_reads_images_only():
    with pytest.raises(TrainError, match="resnet cannot learn breast_cancer"):
        gtrain.check_compatible("resnet", "breast_cancer")
    gtrain.check_compatible("resnet", "cifar10")
    assert Trainer is not None and lr_scheduler.CosineAnnealingLR is not None


def test_resnet_trains_on_a_placed_cifar10(tmp_path, monkeypatch):
    """`gpunn train --model resnet --data cifar10` end to end, on a tiny CIFAR-10 the test
    writes into the data folder (3x32x32 images through the whole network)."""
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "data"))
    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in gdata.cifar.CIFAR10["train"] + gdata.cifar.CIFAR10["test"]:
        x = rng.integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
        gdata.write_cifar_batch(folder / name, x, np.arange(6) % 3)
    r = train("resnet", "cifar10", out=str(tmp_path / "run"), **_quiet(epochs=1, batch_size=8))
    assert r.test_samples == 6 and 0 <= r.test_acc <= 1
    assert r.config["optimizer"] == "adamw" and r.config["scheduler"] == "cosine"
