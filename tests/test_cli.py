"""The ``gpunn`` command: every subcommand and flag, through ``main(argv)`` and, once each
for the console script, a subprocess."""

import json
import os
import shutil
import subprocess
import sys
import types
import urllib.error

import numpy as np
import pytest

import gpunn
from gpunn import cli
from gpunn import train as gtrain
from gpunn.data import idx as gidx
from gpunn.training import settings as gsettings
from gpunn.training.extensions import CurvePlot

pytest.importorskip("sklearn")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Run in a temporary folder with a temporary data folder and no network."""

    def offline(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(gidx, "_urlopen", offline)
    monkeypatch.setenv("GPUNN_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(CurvePlot, "draw", lambda self, t: None)


def _train(*flags):
    return cli.main(["train", "--backend", "numpy", "--no-progress", *flags])


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _config(out):
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)


# ---------------------------------------------------------------------- train
def test_train_defaults_logreg_on_breast_cancer(capsys):
    assert _train("--epochs", "2") == 0
    out = capsys.readouterr().out
    assert "logreg on breast_cancer" in out and "epoch 2/2" in out
    assert "test accuracy" in out.strip().splitlines()[-1]
    cfg = _config(os.path.join("runs", "logreg-breast_cancer"))
    assert (cfg["model"], cfg["data"], cfg["optimizer"], cfg["lr"]) == (
        "logreg",
        "breast_cancer",
        "sgd",
        0.1,
    )


def test_train_every_flag_lands_in_the_run(tmp_path):
    out = str(tmp_path / "flags")
    status = _train(
        "--model", "mlp", "--data", "digits", "--epochs", "1", "--batch-size", "100",
        "--lr", "0.02", "--optimizer", "sgd", "--momentum", "0.5", "--hidden", "16,8",
        "--seed", "7", "--threads", "1", "--out", out,
    )  # fmt: skip
    assert status == 0
    cfg = _config(out)
    expected = {
        "model": "mlp", "data": "digits", "backend": "numpy", "epochs": 1, "batch_size": 100,
        "lr": 0.02, "optimizer": "sgd", "momentum": 0.5, "hidden": [16, 8], "seed": 7,
        "threads": 1,
    }  # fmt: skip
    assert {k: cfg[k] for k in expected} == expected
    state = gpunn.load(os.path.join(out, "checkpoint"))
    assert state["model.hidden.0.weight"].shape == (16, 64)
    assert float(state["optimizer.momentum"].item()) == 0.5
    assert gpunn.get_num_threads() == 1
    gpunn.set_num_threads(os.cpu_count() or 1)


def test_train_resume_continues_to_the_same_parameters(tmp_path):
    flags = ["--model", "mlp", "--data", "digits", "--batch-size", "128", "--hidden", "32"]
    assert _train(*flags, "--epochs", "3", "--out", "whole") == 0
    assert _train(*flags, "--epochs", "1", "--out", "part") == 0
    assert _train("--out", "part", "--resume", "--epochs", "3") == 0
    a, b = gpunn.load("whole/checkpoint"), gpunn.load("part/checkpoint")
    assert int(b["epoch"].item()) == 3
    for key in a:
        if key.startswith(("model.", "optimizer.")):
            assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_train_each_model_runs_one_epoch(tmp_path, monkeypatch):
    real_load = gtrain.gdata.load

    def small(name, **kw):  # a slice of each data set keeps this quick
        s = real_load(name, **kw)
        s.x_train, s.y_train, s.x_val, s.y_val = (
            s.x_train[:300],
            s.y_train[:300],
            s.x_val[:100],
            s.y_val[:100],
        )
        return s

    monkeypatch.setattr(gtrain.gdata, "load", small)
    for model, data in [
        ("perceptron", "breast_cancer"),
        ("cnn", "digits"),
        ("rnn", "parity"),
        ("lstm", "adding"),
    ]:
        out = str(tmp_path / model)
        assert _train("--model", model, "--data", data, "--epochs", "1", "--out", out) == 0
        assert len(gtrain.read_metrics(out)) == 1


def test_train_progress_bars(capsys):
    pytest.importorskip("tqdm")
    assert cli.main(["train", "--backend", "numpy", "--epochs", "1", "--out", "bar"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "samples/s" in err


def test_unknown_choices_list_the_choices(capsys):
    for flag, value, listed in [
        ("--model", "svm", "'perceptron', 'logreg', 'mlp', 'cnn', 'rnn', 'lstm'"),
        ("--data", "cifar", "'breast_cancer', 'digits', 'mnist'"),
        ("--backend", "tpu", "'numpy', 'numba', 'cupy'"),
        ("--optimizer", "lbfgs", "'sgd', 'adam'"),
    ]:
        with pytest.raises(SystemExit) as exc:
            cli.main(["train", flag, value])
        assert exc.value.code == 2
        assert listed in capsys.readouterr().err


def test_bad_numbers_are_refused(capsys):
    for flags in (["--epochs", "0"], ["--lr", "-1"], ["--hidden", "12,x"], ["--batch-size", "a"]):
        with pytest.raises(SystemExit):
            cli.main(["train", *flags])
        assert "error" in capsys.readouterr().err


def test_unavailable_backend_says_why(monkeypatch, capsys):
    monkeypatch.setattr(gsettings, "why_unavailable", lambda name: "cupy: no CUDA device found")
    assert cli.main(["train", "--backend", "cupy"]) == 2
    err = capsys.readouterr().err
    assert "backend 'cupy' cannot run here: cupy: no CUDA device found" in err


def test_model_that_cannot_take_the_data(capsys):
    assert _train("--model", "cnn", "--data", "breast_cancer") == 2
    err = capsys.readouterr().err
    assert "cnn cannot learn breast_cancer" in err and "tabular" in err
    assert not os.path.exists("runs")


def test_checkpoint_of_another_model(capsys):
    assert _train("--model", "mlp", "--data", "digits", "--epochs", "1", "--out", "r") == 0
    assert _train("--model", "logreg", "--data", "breast_cancer", "--out", "r", "--resume") == 2
    err = capsys.readouterr().err
    assert "written by another model" in err and "'linear.weight'" in err


def test_resume_without_checkpoint(capsys):
    assert _train("--out", "nothing", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unwritable_out_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _train("--out", str(tmp_path / "file" / "run")) == 2
    captured = capsys.readouterr()
    assert "cannot write to the output folder" in captured.err
    assert "epoch" not in captured.out


def test_missing_mnist_says_where_to_put_it(tmp_path, capsys):
    assert _train("--model", "mlp", "--data", "mnist", "--out", "m") == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz") in err


def test_mnist_and_fashion_mnist_from_placed_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("mnist", "fashion_mnist"):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for prefix, n in (("train", 120), ("t10k", 20)):
            images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
            gidx.write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
            gidx.write_idx(
                folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8)
            )
        out = str(tmp_path / name)
        assert _train("--model", "mlp", "--data", name, "--epochs", "1", "--out", out) == 0
        assert _config(out)["train_samples"] == 110  # 1/12 of each class validates


def test_nan_loss_exits_with_a_message(capsys):
    flags = ["--model", "mlp", "--data", "digits", "--optimizer", "sgd", "--out", "nan"]
    assert _train(*flags, "--epochs", "1", "--lr", "0.01") == 0
    with open("nan/checkpoint", "rb") as f:
        before = f.read()
    assert _train("--out", "nan", "--resume", "--epochs", "3", "--lr", "1e6") == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "still holds epoch 1" in err
    with open("nan/checkpoint", "rb") as f:
        assert f.read() == before


def test_ctrl_c_exits_130_after_saving(monkeypatch, capsys):
    real_emit = gtrain.Trainer.emit

    def emit(self, event):
        said = real_emit(self, event)
        if event == "batch_end" and self.batch == 3:
            raise KeyboardInterrupt
        return said

    monkeypatch.setattr(gtrain.Trainer, "emit", emit)
    assert _train("--model", "mlp", "--data", "digits", "--out", "cc") == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 1, after batch 4" in err and "gpunn train --out cc --resume" in err
    assert os.path.exists("cc/checkpoint")


# ---------------------------------------------------------------------- info
def test_info_lists_versions_backends_threads_and_ops(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for text in (f"gpunn {gpunn.__version__}", "Python 3.", "NumPy ", "Numba ", "CuPy ", "CUDA"):
        assert text in out, text
    assert "numpy: available (the reference)" in out
    for name in gpunn.backends.known_backends():
        assert f"  {name}:" in out
    from gpunn.backends import why_unavailable

    if why_unavailable("cupy"):
        assert "cupy: " + why_unavailable("cupy").removeprefix("cupy: ") in out
    assert "threads" in out and "threading layer" in out and "cache folder" in out
    n = len(gpunn.backends.Backend.ops())
    assert f"op kinds ({n} ops in the backend contract)" in out
    assert "numpy: every op is the reference" in out
    from gpunn.backends import kinds

    for name in kinds.TABLES:  # the counts, then every op that is not a gpunn kernel
        tally = ", ".join(f"{c} {k}" for k, c in kinds.counts(name).items() if c)
        assert f": {tally}\n" in out
        for op, (kind, _) in kinds.table(name).items():
            assert (f"    {op}: {kind}" in out) == (kind != "kernel"), (name, op)


def test_info_ops_lists_every_op(capsys):
    assert cli.main(["info", "--ops"]) == 0
    out = capsys.readouterr().out
    assert "relu_forward" in out and "adam_update" in out


def test_info_names_an_unavailable_backend(monkeypatch, capsys):
    from gpunn import info

    real = info.backend_report

    def fake():
        return [
            (n, "cupy: no CUDA device found", None) if n == "cupy" else (n, r, b)
            for n, r, b in real()
        ]

    monkeypatch.setattr(info, "backend_report", fake)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "  cupy: no CUDA device found" in out and "  cupy (unavailable here): " in out


# ---------------------------------------------------------------------- graph
def test_graph_default_is_the_lecture_example(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")  # no dot program
    assert cli.main(["graph"]) == 0
    out = capsys.readouterr().out
    assert "J = 56; dJ/dx = 4, dJ/dy = 16, dJ/dz = 12" in out
    assert "dot program is not installed" in out
    dot = _text("graph.dot")
    assert dot.startswith("digraph")
    for label in ("x = 2\\ndJ/dx = 4", "y = 3\\ndJ/dy = 16", "z = 4\\ndJ/dz = 12"):
        assert label in dot
    assert "u = 12\\ndJ/du = 4" in dot and "v = 14\\ndJ/dv = 4" in dot
    assert "J = 56\\ndJ/dJ = 1" in dot


def test_graph_of_an_expression(capsys):
    assert cli.main(["graph", "--expr", "x*x + exp(y)", "--at", "x=3,y=0", "-o", "e.dot"]) == 0
    out = capsys.readouterr().out
    assert "J = 10; dJ/dx = 6, dJ/dy = 1" in out
    assert "x = 3\\ndJ/dx = 6" in _text("e.dot")


def test_graph_renders_with_dot_when_present(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n# fake graphviz: dot -Tsvg in -o out\necho "<svg/>" > "$4"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ["PATH"])
    assert cli.main(["graph", "-o", "g/lecture.dot", "--format", "png"]) == 0
    assert "wrote g/lecture.png" in capsys.readouterr().out
    assert _text("g/lecture.png").strip() == "<svg/>"


def test_graph_of_a_model_loss(capsys):
    assert cli.main(["graph", "--model", "mlp", "--data", "digits", "--format", "none"]) == 0
    out = capsys.readouterr().out
    assert "mlp on digits: cross-entropy" in out
    dot = _text("graph.dot")
    assert 'label="hidden.0.weight"' in dot and "cross_entropy" in dot
    assert "|dloss/dhidden.0.weight|" in dot


def test_graph_bad_input(capsys):
    assert cli.main(["graph", "--expr", "__import__('os')"]) == 2
    assert "cannot draw" in capsys.readouterr().err
    assert cli.main(["graph", "--expr", "x +"]) == 2
    assert cli.main(["graph", "--at", "x=two"]) == 2
    assert cli.main(["graph", "--model", "cnn", "--data", "breast_cancer"]) == 2
    assert "cnn cannot learn" in capsys.readouterr().err


# ---------------------------------------------------------------------- warmup, bench
def test_warmup_calls_the_numba_backend(monkeypatch, capsys):
    from gpunn.backends import why_unavailable

    if why_unavailable("numba"):
        assert cli.main(["warmup"]) == 1
        assert "numba backend is not available" in capsys.readouterr().err
        return
    from gpunn.backends import numba_backend

    calls = []
    monkeypatch.setattr(
        numba_backend,
        "warmup",
        lambda verbose=False: (
            calls.append(verbose) or {"kernels": 3, "signatures": 6, "missing": []}
        ),
        raising=False,
    )
    assert cli.main(["warmup"]) == 0
    assert calls == [True] and "3 kernels, 6 signatures" in capsys.readouterr().out
    monkeypatch.delattr(numba_backend, "warmup")
    assert cli.main(["warmup"]) == 1
    assert "not available" in capsys.readouterr().err


def test_warmup_without_numba(monkeypatch, capsys):
    import gpunn.backends as backends

    monkeypatch.setattr(backends, "why_unavailable", lambda name: "No module named 'numba'")
    assert cli.main(["warmup"]) == 1
    assert "numba backend is not available: No module named 'numba'" in capsys.readouterr().err


def test_bench_delegates_every_argument(monkeypatch):
    seen = []
    fake = types.ModuleType("gpunn.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "gpunn.bench", fake)
    monkeypatch.setattr(gpunn, "bench", fake, raising=False)
    assert cli.main(["bench", "--workload", "mlp", "--help"]) == 0
    assert seen == [["--workload", "mlp", "--help"]]


def test_bench_missing_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gpunn.bench", None)
    monkeypatch.delattr(gpunn, "bench", raising=False)  # an earlier import sets the attribute
    assert cli.main(["bench"]) == 1
    assert "gpunn.bench module is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------- the program
def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    for command in ("train", "info", "graph", "warmup", "bench"):
        assert command in err


def test_console_script_runs(tmp_path):
    exe = shutil.which("gpunn")
    cmd = [exe] if exe else [sys.executable, "-m", "gpunn.cli"]
    env = {**os.environ, "GPUNN_DATA": str(tmp_path / "data")}
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.strip() == f"gpunn {gpunn.__version__}"
    run = subprocess.run(
        [*cmd, "train", "--backend", "numpy", "--epochs", "2", "--no-progress", "--out", "sub"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "best val accuracy" in run.stdout
    assert sorted(os.listdir(tmp_path / "sub"))[:3] == ["checkpoint", "config.json", "curves.png"]
