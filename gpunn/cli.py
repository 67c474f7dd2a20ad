"""The ``gpunn`` command: train, info, graph, warmup, bench.

``main(argv)`` returns the exit status: 0 success, 1 a failed run (diverged, missing
piece), 2 bad input (argparse's convention), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys

import gpunn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 128,64, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive integers, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_train(sub) -> None:
    from gpunn.backends import known_backends
    from gpunn.train import DATASETS, MODEL_INFO, MODELS, OPTIMIZERS
    from gpunn.training.settings import SCHEDULERS

    models = "; ".join(f"{k}: {v}" for k, v in MODEL_INFO.items())
    p = sub.add_parser(
        "train",
        help="train a model on a data set, with progress, checkpoints and resume",
        description=(
            "Train one of the lecture's models. Unset options take per-model defaults that "
            "train well in seconds; with --resume, the settings saved in DIR. Writes "
            "DIR/config.json, DIR/metrics.jsonl, DIR/checkpoint and DIR/curves.png. Reports "
            "the final epoch's validation accuracy and the test accuracy, measured once at "
            "the end on a held-out part that chose nothing."
        ),
        epilog=(
            f"models: {models}. data: breast_cancer, digits (scikit-learn, pip install "
            "'gpunn[data]'); mnist, fashion_mnist, cifar10 (files in $GPUNN_DATA, downloaded on "
            "first use); adding, parity (synthetic sequences). Ctrl-C saves a checkpoint; "
            "--resume continues it exactly."
        ),
    )
    p.add_argument("--model", choices=MODELS, help="the model (default: logreg)")
    p.add_argument("--data", choices=DATASETS, help="the data set (default: breast_cancer)")
    p.add_argument(
        "--backend",
        choices=known_backends(),
        help="where to train (default: numba if available, else numpy)",
    )
    p.add_argument("--epochs", type=_positive_int, help="epochs to train in all")
    p.add_argument("--batch-size", type=_positive_int, help="samples per batch")
    p.add_argument("--lr", type=_positive_float, help="learning rate")
    p.add_argument(
        "--optimizer", choices=OPTIMIZERS, help="sgd, adam or adamw (decoupled weight decay)"
    )
    p.add_argument("--momentum", type=float, help="momentum of sgd (default 0.9; 0 for logreg)")
    p.add_argument(
        "--hidden", type=_sizes, help="hidden sizes: 256,128 for mlp; one size for rnn/lstm"
    )
    p.add_argument("--seed", type=int, help="seed of parameters, shuffles, dropout (default 0)")
    p.add_argument("--threads", type=_positive_int, help="threads of the CPU backends")
    p.add_argument(
        "--weight-decay",
        type=float,
        help="L2 penalty added to the gradient (sgd, adam) or decoupled decay (adamw); "
        "default per model (0, or 0.01 for adamw)",
    )
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="learning rate over the run, changed after every update: none (constant), "
        "step (x0.1 after each third), cosine (from --lr down to 0), onecycle (up to --lr "
        "over 30%%, then down)",
    )
    p.add_argument(
        "--clip", type=_positive_float, metavar="NORM", help="clip the gradients' norm to NORM"
    )
    p.add_argument(
        "--amp",
        choices=("bfloat16", "float16"),
        help="mixed precision for linear/matmul/conv on cupy (float16 with loss scaling); "
        "the CPU backends accept it and compute in float32",
    )
    p.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run each training step as one captured CUDA graph (cupy only; default: on "
        "for cupy when every op of the step can be captured, see `gpunn info`)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/MODEL-DATA)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in DIR from its checkpoint"
    )
    p.add_argument(
        "--no-progress", action="store_true", help="one line per epoch instead of progress bars"
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write the result (final val and test accuracy, s/epoch) as JSON to FILE",
    )
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from gpunn.data import DataUnavailableError, IDXError
    from gpunn.errors import CheckpointError
    from gpunn.train import TrainError, TrainingDiverged, TrainingInterrupted, train

    try:
        train(
            args.model,
            args.data,
            backend=args.backend,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            momentum=args.momentum,
            hidden=args.hidden,
            seed=args.seed,
            threads=args.threads,
            weight_decay=args.weight_decay,
            scheduler=args.scheduler,
            clip=args.clip,
            amp=args.amp,
            cuda_graph=args.cuda_graph,
            out=args.out,
            resume=args.resume,
            progress=not args.no_progress,
            json_path=args.json,
        )
    except TrainingInterrupted as e:
        print(f"\ngpunn train: {e.message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second Ctrl-C while the checkpoint was being written
        print("\ngpunn train: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as e:
        print(f"gpunn train: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (TrainError, CheckpointError) as e:
        print(f"gpunn train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataUnavailableError, IDXError, ImportError) as e:
        print(f"gpunn train: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="versions, backends and why one is unavailable, threads, native ops",
        description="Print versions, each backend's availability (or why not), Numba's "
        "threads and cache, and which ops each backend implements natively.",
    )
    p.add_argument("--ops", action="store_true", help="list every op, not only the counts")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from gpunn.info import report

    print(report(list_ops=args.ops))
    return EXIT_OK


def _add_graph(sub) -> None:
    p = sub.add_parser(
        "graph",
        help="draw a computational graph as Graphviz DOT (and SVG/PNG with `dot`)",
        description=(
            "Write the computational graph of an expression or of a model's loss as Graphviz "
            "DOT, and as SVG or PNG when Graphviz's `dot` program is installed. With no "
            "arguments: the lecture's J = 4(x + y*z) at x=2, y=3, z=4, with forward values "
            "and backward gradients on the edges."
        ),
    )
    p.add_argument("--expr", help="an expression such as '4*(x + y*z)' or 'sigmoid(w*x + b)'")
    p.add_argument(
        "--at",
        help="values of the expression's variables, e.g. x=2,y=3,z=4 (unset ones are 1)",
    )
    from gpunn.train import DATASETS, MODELS

    p.add_argument("--model", choices=MODELS, help="draw this model's loss on a small batch")
    p.add_argument(
        "--data",
        choices=DATASETS,
        help="the data set for --model (default: breast_cancer for perceptron/logreg, else digits)",
    )
    p.add_argument("--batch", type=_positive_int, default=2, help="batch size for --model")
    p.add_argument("--out", "-o", default=None, help="output .dot file (default: graph.dot)")
    p.add_argument(
        "--format", choices=("svg", "png", "none"), default="svg", help="also render with dot"
    )
    p.set_defaults(func=_cmd_graph)


def _cmd_graph(args) -> int:
    from gpunn.graph import GraphError, run

    try:
        return run(
            expr=args.expr,
            at=args.at,
            model=args.model,
            data=args.data,
            batch=args.batch,
            out=args.out,
            fmt=args.format,
        )
    except GraphError as e:
        print(f"gpunn graph: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _add_warmup(sub) -> None:
    p = sub.add_parser(
        "warmup",
        help="compile the numba backend's kernels ahead of time",
        description="Compile every kernel of the numba backend for float32 and float64 into "
        "its on-disk cache, so the first training step does not wait for the compiler.",
    )
    p.set_defaults(func=_cmd_warmup)


def _cmd_warmup(args) -> int:
    import time

    from gpunn.backends import why_unavailable

    reason = why_unavailable("numba")
    if reason is not None:
        print(f"gpunn warmup: the numba backend is not available: {reason}", file=sys.stderr)
        return EXIT_FAILED
    from gpunn.backends import numba_backend

    warmup = getattr(numba_backend, "warmup", None)
    if warmup is None:
        print(
            "gpunn warmup: the numba backend is not available for warm-up: it has no "
            "warmup() in this version",
            file=sys.stderr,
        )
        return EXIT_FAILED
    t0 = time.perf_counter()
    report = warmup(verbose=True)
    took = time.perf_counter() - t0
    if isinstance(report, dict) and "kernels" in report:
        extra = f"{report['kernels']} kernels, {report.get('signatures', '?')} signatures"
        missing = report.get("missing")
        if missing:
            extra += f"; lacking float32 or float64: {', '.join(missing)}"
        print(f"gpunn warmup: {extra} compiled in {took:.1f} s")
    else:
        print(f"gpunn warmup: done in {took:.1f} s")
    return EXIT_OK


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time the reference workloads on each backend (see `gpunn bench --help`)",
        add_help=False,
        description="Delegates to gpunn.bench.",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    try:
        from gpunn import bench
    except ModuleNotFoundError as e:
        if e.name not in ("gpunn.bench",):
            raise
        print(
            "gpunn bench: not available in this version of gpunn (the gpunn.bench module is "
            "missing)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    status = bench.main(args.bench_args)
    return int(status or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpunn",
        description="gpunn: a deep-learning engine with NumPy, Numba and CUDA backends.",
    )
    parser.add_argument("--version", action="version", version=f"gpunn {gpunn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_info(sub)
    _add_graph(sub)
    _add_warmup(sub)
    _add_bench(sub)
    return parser


def main(argv=None) -> int:
    """Run the ``gpunn`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["bench"]:  # hand every later argument to gpunn.bench untouched
        return _cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
