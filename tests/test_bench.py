"""`gpunn bench` (gpunn.bench.main): the table and JSON on one tiny run, the refusal when
the peer is missing, and the plot script's inputs. No timing is judged here."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import gpunn
from gpunn import bench, workloads

FAST = ["--min-rounds", "2", "--max-rounds", "3", "--max-time", "1", "--sample-time", "0.002"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _keep_thread_count(monkeypatch):
    # main() sets gpunn's thread count; give it back afterwards
    monkeypatch.setattr(gpunn.threads, "_num_threads", gpunn.threads._num_threads)


def _run(argv, capsys):
    status = bench.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_one_workload_numpy_no_peer(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    threads = str(gpunn.get_num_threads())
    argv = ["--workload", "logreg", "--backend", "numpy", "--threads", threads, "--json", str(path)]
    status, out, err = _run(argv + FAST, capsys)
    assert status == 0, err
    for word in ("CPU", "threads", "BLAS", "GPU", "sgemm", "GFLOP/s"):
        assert word in out
    table = out[out.index("workload") :].splitlines()
    assert table[0].split()[:4] == ["workload", "backend", "batch", "ms/step"]
    assert "vs peer" in table[0] and "samples/s" in table[0] and "min-max ms" in table[0]
    (row,) = [line for line in table if line.startswith("logreg")]
    assert row.split()[1:3] == ["numpy", "4096"]

    data = json.loads(path.read_text())
    assert data["peer"] is None
    assert data["machine"]["threads"] == int(threads)
    assert data["machine"]["cpu"] and data["machine"]["blas"]
    assert data["sgemm_gflops"] > 0
    assert data["versions"]["gpunn"] == gpunn.__version__
    (result,) = data["results"]
    assert result["workload"] == "logreg" and result["backend"] == "numpy"
    assert result["batch"] == 4096 and not result["is_peer"]
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["samples_per_s"] == pytest.approx(4096 / (result["median_ms"] / 1e3))
    assert result["gflops"] > 0 and result["sgemm_fraction"] > 0
    assert result["ratio_to_peer"] is None
    assert 2 <= result["rounds"] <= 3 and len(result["samples_ms"]) == result["rounds"]


def test_refuses_without_the_peer(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    status, out, err = _run(
        ["--workload", "logreg", "--backend", "numpy", "--against", "torch"], capsys
    )
    assert status == 2
    assert "cannot compare against torch" in err and "pip install torch" in err
    assert "ms/step" not in out  # nothing was timed


def test_unavailable_backend_is_named(capsys):
    status, _, err = _run(["--workload", "logreg", "--backend", "nosuch"], capsys)
    assert status == 2 and "nosuch" in err


def test_ratio_is_time_over_the_peers_time():
    rows = [
        bench.Row("mlp", "numpy", "cpu", False, 128, 1e9, samples_ms=[4.0, 2.0, 3.0]),
        bench.Row("mlp", "torch", "cpu", True, 128, 1e9, samples_ms=[1.0, 1.5, 2.0]),
    ]
    bench.summarise(rows, sgemm=100.0)
    ours, peer = rows
    assert ours.median_ms == 3.0 and ours.ratio_to_peer == pytest.approx(2.0)
    assert ours.peer == "torch" and peer.ratio_to_peer is None
    assert ours.gflops == pytest.approx(1e9 / 3e-3 / 1e9)
    assert ours.sgemm_fraction == pytest.approx(ours.gflops / 100.0)


def test_plot_script_reads_bench_json(tmp_path):
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "plot_bench", os.path.join(ROOT, "benchmarks", "plot_bench.py")
    )
    plot_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_bench)
    rows = [
        bench.Row("mlp", "numpy", "cpu", False, 128, 1e9, samples_ms=[4.0]),
        bench.Row("mlp", "torch", "cpu", True, 128, 1e9, samples_ms=[2.0]),
    ]
    bench.summarise(rows, sgemm=100.0)
    data = {
        "peer": "torch",
        "machine": {"cpu": "test CPU", "threads": 2, "gpu": None},
        "versions": {"gpunn": gpunn.__version__, "torch": "x"},
        "results": [vars(r) for r in rows],
    }
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(data))
    assert plot_bench.main([str(src), "-o", str(tmp_path / "bench.png")]) == 0
    assert (tmp_path / "bench.png").stat().st_size > 0
    table = plot_bench.markdown(plot_bench.load(str(src)))
    assert "| mlp | 128 | 2 | 4 | 2.00 |" in table


def test_gpu_sized_workload_runs_on_the_cpu_when_named_with_a_small_scale(tmp_path, capsys):
    path = tmp_path / "bench.json"
    argv = ["--workload", "conv28x128-b32", "--workload", "softmax_ce-fwdbwd"]
    argv += ["--backend", "numpy", "--scale", "0.05", "--scale", "0.1", "--json", str(path)]
    status, out, err = _run(argv + FAST, capsys)
    assert status == 0, err
    data = json.loads(path.read_text())
    got = {(r["workload"], r["scale"], r["batch"], r["kind"]) for r in data["results"]}
    assert got == {
        ("conv28x128-b32", 0.05, 2, "op"),
        ("conv28x128-b32", 0.1, 3, "op"),
        ("softmax_ce-fwdbwd", 0.05, 13, "op"),
        ("softmax_ce-fwdbwd", 0.1, 26, "op"),
    }
    assert data["errors"] == [] and data["machine"]["cpus_total"] >= data["machine"]["cpus"]
    assert data["sgemm_gflops_start"] > 0 and data["sgemm_gflops_end"] > 0
    for r in data["results"]:
        assert r["tf32"] is None and r["spread"] >= 0
    assert "scale" in out[out.index("workload") :].splitlines()[0]


def test_default_selection_leaves_gpu_sized_workloads_to_the_gpu():
    args = bench._parser().parse_args([])
    cpu = bench._select_workloads(args, gpu=False)
    assert set(cpu) == set(workloads.NAMES) | set(workloads.OPS)
    assert not set(cpu) & set(workloads.GPU_ONLY)
    assert set(bench._select_workloads(args, gpu=True)) == set(workloads.ALL)
    ops = bench._select_workloads(bench._parser().parse_args(["--ops"]), gpu=True)
    assert all(workloads.spec(n).kind == "op" for n in ops) and "conv56x64-b128" in ops


def test_a_failing_workload_is_reported_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    real = workloads.build

    def build(name, backend, scale=1, lr=0.01):
        if name == "softmax_ce-fwd":
            raise MemoryError("out of device memory (test)")
        return real(name, backend, scale, lr)

    monkeypatch.setattr(workloads, "build", build)
    path = tmp_path / "bench.json"
    argv = ["--workload", "softmax_ce-fwd", "--workload", "softmax_ce-fwdbwd"]
    status, out, err = _run(argv + ["--backend", "numpy", "--json", str(path)] + FAST, capsys)
    assert status == 0
    data = json.loads(path.read_text())
    assert [r["workload"] for r in data["results"]] == ["softmax_ce-fwdbwd"]
    (error,) = data["errors"]
    assert "softmax_ce-fwd" in error and "out of device memory" in error
    assert "error: softmax_ce-fwd" in out


def test_tf32_needs_the_gpu(capsys):
    status, _, err = _run(["--backend", "numpy", "--tf32", "both"], capsys)
    assert status == 2 and "cupy" in err


def test_bandwidth_table_shows_fractions_and_errors():
    bw = {
        "array_mib": 256,
        "copy_gb_per_s": 4000.0,
        "kernels": [
            {"kernel": "relu_forward", "ms": 0.1, "gb_per_s": 3600.0, "fraction_of_copy": 0.9},
            {"kernel": "lstm_cell", "error": "AttributeError: no launcher"},
        ],
    }
    text = bench.format_bandwidth(bw)
    assert "4000 GB/s" in text and "90%" in text and "error: AttributeError" in text


@pytest.mark.parametrize("name", workloads.OPS + ("conv56x64-b32",))
def test_op_workloads_compute_the_same_thing_in_gpunn_and_torch(name):
    """Same data, same parameters, same definition: the outputs agree."""
    pytest.importorskip("torch")
    ours = workloads.build(name, "numpy", scale=0.05)
    peer = workloads.build_torch(name, "cpu", scale=0.05)
    ours.step()
    peer.step()
    assert ours.batch == peer.batch and ours.flops == peer.flops
    assert ours.loss() == pytest.approx(peer.loss(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("name", [n for n in workloads.ALL if workloads.spec(n).kind == "step"])
def test_step_workloads_have_the_same_parameters_on_both_sides(name):
    torch = pytest.importorskip("torch")
    from gpunn import nn

    with gpunn.use_backend("numpy"):
        model, _ = workloads._gpunn_model(name)
    theirs, _ = workloads._torch_model(torch.nn, name)
    ours = sorted(tuple(p.shape) for p in model.parameters())
    assert ours == sorted(tuple(p.shape) for p in theirs.parameters())
    assert isinstance(model, nn.Module)
    w = workloads.build(name, "numpy", scale=1 / 64 if workloads.spec(name).gpu_only else 0.05)
    w.step()
    assert np.isfinite(w.loss())


def _plot_bench():
    spec = importlib.util.spec_from_file_location(
        "plot_bench", os.path.join(ROOT, "benchmarks", "plot_bench.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_block_is_rebuilt_from_the_json_alone(tmp_path):
    plot_bench = _plot_bench()
    rows = [
        bench.Row("lenet", "numba", "cpu", False, 64, 1e9, samples_ms=[6.0, 7.0, 8.0]),
        bench.Row("lenet", "torch", "cpu", True, 64, 1e9, samples_ms=[4.0]),
    ]
    bench.summarise(rows, sgemm=200.0)
    data = {
        "command": "gpunn bench --against torch --threads 2 --json x.json",
        "created": "2026-11-29T12:00:00+0000",
        "peer": "torch",
        "machine": {"cpu": "Test CPU 9000", "cpus": 2, "threads": 2, "blas": "b", "gpu": None},
        "versions": {"gpunn": "9.9", "torch": "2.13"},
        "blas_environment": {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None},
        "sgemm_gflops_start": 150.0,
        "sgemm_gflops_end": 200.0,
        "results": [vars(r) for r in rows],
    }
    src = tmp_path / "bench-cpu.json"
    src.write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- gpunn bench: "
        + os.path.relpath(src, ROOT)
        + " -->\nold figures 0.69\n<!-- end gpunn bench -->\nafter\n"
    )
    plot_bench.main([str(src), "--no-plot", "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "0.69" not in text
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE gpunn bench --against torch" in text
    assert "Test CPU 9000" in text and "150 GFLOP/s" in text and "200 at its end" in text
    assert "| lenet | 64 | 4 | 7 | 1.75 | 71% |" in text


def test_readme_refuses_a_file_without_its_block(tmp_path):
    plot_bench = _plot_bench()
    readme = tmp_path / "README.md"
    readme.write_text("no block\n")
    with pytest.raises(SystemExit, match="no block"):
        plot_bench.update_readme(str(readme), {}, str(tmp_path / "x.json"), None)


def test_gpu_table_has_a_column_per_tf32_setting_and_the_bandwidth_range():
    plot_bench = _plot_bench()
    rows = []
    for scale in (1, 8):
        for tf32, ours, theirs in ((False, 3.0, 2.0), (True, 2.0, 2.0)):
            for be, ms, peer in (("cupy", ours, False), ("torch-cuda", theirs, True)):
                row = bench.Row("mlp-wide", be, "cuda", peer, 1024 * scale, 1e9, [ms])
                row.scale, row.tf32 = scale, tf32
                rows.append(row)
    bench.summarise(rows, sgemm=100.0)
    bw = {
        "array_mib": 256,
        "copy_gb_per_s": 4000.0,
        "kernels": [
            {"kernel": "relu_forward", "ms": 1, "gb_per_s": 3800.0, "fraction_of_copy": 0.95},
            {"kernel": "add (row broadcast)", "ms": 1, "gb_per_s": 1800, "fraction_of_copy": 0.45},
        ],
    }
    data = {"peer": "torch", "results": [vars(r) for r in rows], "bandwidth": bw}
    table = plot_bench.markdown(data)
    assert "| mlp-wide x1 | 1024 | 2 | 2 | 3 | 1.50 | 2 | 1.00 |" in table
    assert "| mlp-wide x8 | 8192 |" in table and "cupy TF32 / torch-cuda" in table
    assert "45% to 95% of it" in table and "% sgemm" not in table


def test_second_tf32_pass_and_unnamed_gpu_workloads_leave_the_cpu_alone():
    args = bench._parser().parse_args(["--backend", "numpy"])
    info = {"errors": []}
    assert bench._run_one("mlp", ["numpy"], None, 1, None, True, args, info, print) == []
    assert bench._run_one("resnet", ["numpy"], None, 1, None, False, args, info, print) == []
    assert info["errors"] == []


def test_ratios_pair_rows_of_the_same_scale_and_tf32_setting():
    rows = []
    for tf32, ours, theirs in ((False, 4.0, 2.0), (True, 3.0, 1.0)):
        for be, ms, peer in (("cupy", ours, False), ("torch-cuda", theirs, True)):
            row = bench.Row("mlp", be, "cuda", peer, 128, 0.0, [ms], tf32=tf32)
            rows.append(row)
    bench.summarise(rows, sgemm=0.0)
    assert [r.ratio_to_peer for r in rows if not r.is_peer] == [2.0, 3.0]


def test_bandwidth_cases_call_the_backend_contract(monkeypatch):
    """No GPU here: CuPy's few calls are stood in for by NumPy, and the cases run on the
    reference backend, which checks every op's signature and the byte counts' sizes."""
    import types

    from gpunn.backends import backend_object

    shim = types.SimpleNamespace(
        random=types.SimpleNamespace(default_rng=np.random.default_rng),
        empty_like=np.empty_like,
        empty=np.empty,
        cuda=types.SimpleNamespace(
            get_current_stream=lambda: types.SimpleNamespace(ptr=0),
            runtime=types.SimpleNamespace(memcpyDeviceToDevice=3, memcpyAsync=None),
        ),
    )
    monkeypatch.setitem(sys.modules, "cupy", shim)
    be = backend_object("numpy")
    cases = workloads.bandwidth_cases(be, mib=1)
    n = 2**20 // 4
    assert cases.pop("copy")[1] == 2 * n * 4  # a device pointer copy: not run here
    for name, (fn, moved) in cases.items():
        assert moved >= 2 * n * 4 * 0.99, name
        if "epilogue" in name or "lstm_cell" in name:
            continue  # launched through the cupy backend's launcher, by kernel stem
        fn()
