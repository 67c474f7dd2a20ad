"""Developer sessions: `nox -l` lists them. CI runs the README's test command plus
`nox -s lint build cuda_compile`."""

import glob
import os
import shutil
import sys
import zipfile

import nox

nox.options.sessions = ["lint", "tests"]
ROOT = os.path.dirname(os.path.abspath(__file__))


@nox.session
def tests(session):
    """Install gpunn with its test extra in a fresh virtualenv and run the default suite."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def slow(session):
    """Run the long cases (accuracy targets on shipped data sets) marked `slow`."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session(venv_backend="none")
def lint(session):
    """ruff check and ruff format --check over the whole tree."""
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def build(session):
    """Build the wheel; assert its only top-level package is gpunn and the .cu files are in it."""
    out = os.path.join(ROOT, "dist")
    shutil.rmtree(out, ignore_errors=True)
    session.run(sys.executable, "-m", "build", "--wheel", "--outdir", out, ROOT)
    (wheel,) = glob.glob(os.path.join(out, "*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top = {
            n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))
        }
        toplevel = [n for n in names if n.endswith("top_level.txt")]
        declared = zf.read(toplevel[0]).decode().split() if toplevel else sorted(top)
    if top != {"gpunn"} or declared != ["gpunn"]:
        session.error(
            f"wheel top-level packages are {sorted(top)} (top_level.txt: {declared}); expected only gpunn"
        )
    if any(n.startswith("kernels/") for n in names):
        session.error("wheel contains a top-level kernels/ folder")
    sources = sorted(glob.glob(os.path.join(ROOT, "kernels", "cuda", "*.cu")))
    missing = [
        os.path.basename(s)
        for s in sources
        if f"gpunn/kernels/cuda/{os.path.basename(s)}" not in names
    ]
    if missing:
        session.error(f"wheel lacks CUDA sources: {missing}")
    session.log(f"{os.path.basename(wheel)}: top level gpunn only; {len(sources)} .cu files inside")


@nox.session(venv_backend="none")
def cuda_compile(session):
    """Compile every CUDA kernel instance the loader can ask for, with nvcc (sm_80, sm_90)
    and with NVRTC as CuPy calls it, warnings as errors. Needs no GPU."""
    sources = glob.glob(os.path.join(ROOT, "kernels", "cuda", "*.cu"))
    if not sources:
        session.log("cuda_compile: kernels/cuda holds no .cu file yet; nothing to compile")
        return
    session.run(sys.executable, "-m", "gpunn.kernels.cuda.compile_check", *session.posargs)


@nox.session(venv_backend="none")
def bench(session):
    """A quick asv pass over the suite on the current environment (no timing judged)."""
    session.run("asv", "machine", "--yes")
    session.run("asv", "check", "--python=same")
    session.run(
        "asv", "run", "--python=same", "--quick", "--show-stderr", "--dry-run", *session.posargs
    )


@nox.session(venv_backend="none")
def bench_compare(session):
    """asv continuous, main against the working tree; fails if a benchmark got slower by
    more than the factor (2). `-- BASE [HEAD]` picks commits, other args go to asv.

    The working tree (tracked and untracked files, as `git add -A` sees them) becomes a
    commit object no branch points to; HEAD, the index and the files are left alone. asv
    builds both commits into a virtualenv under .asv/env and prints the benchmarks that
    changed: Ratio = after/before, `+` slower beyond the factor (the session fails), `-`
    faster, `x` failed on head. CPU rows are timed in CPU seconds (GPUNN_BENCH_TIMER=
    process; `wall` restores wall-clock). benchmarks/README.md explains the table.
    """
    import subprocess
    import tempfile

    args = list(session.posargs)
    revs = []
    while args and not args[0].startswith("-") and len(revs) < 2:
        revs.append(args.pop(0))
    base = revs[0] if revs else "main"
    head = revs[1] if len(revs) > 1 else None
    if not any(a in ("-f", "--factor") or a.startswith("--factor=") for a in args):
        args = ["--factor", "2", *args]

    def git(*cmd, env=None):
        done = subprocess.run(
            ["git", *cmd], cwd=ROOT, env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    if head is None:
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, GIT_INDEX_FILE=os.path.join(tmp, "index"))
            git("read-tree", "HEAD", env=env)
            git("add", "-A", env=env)
            tree = git("write-tree", env=env)
        env = dict(os.environ)
        for who in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{who}_NAME", "gpunn bench_compare")
            env.setdefault(f"GIT_{who}_EMAIL", "bench@localhost")
        head = git("commit-tree", tree, "-p", "HEAD", "-m", "bench_compare: working tree", env=env)
        session.log(f"working tree snapshot: commit {head[:12]} (HEAD, index and files untouched)")
    session.log(f"comparing {base} (before) with {head} (after); {' '.join(args)}")
    session.run("asv", "machine", "--yes")
    # CPU seconds, not wall seconds, on CPU-only machines: other programs' load is not ours
    timer = {"GPUNN_BENCH_TIMER": os.environ.get("GPUNN_BENCH_TIMER", "process")}
    session.run("asv", "continuous", "--interleave-rounds", base, head, *args, env=timer)


@nox.session(venv_backend="none")
def bench_publish(session):
    """asv publish: the HTML site of the results in .asv/results, written to .asv/html
    (git-ignored). `-- --preview` also serves it on a local port."""
    preview = "--preview" in session.posargs
    args = [a for a in session.posargs if a != "--preview"]
    if not os.path.isdir(os.path.join(ROOT, ".asv", "results")):
        session.error(
            "no results in .asv/results yet: run `asv run` or `nox -s bench_compare` first"
        )
    session.run("asv", "publish", *args)
    session.log(
        "site written to .asv/html (open index.html, or `nox -s bench_publish -- --preview`)"
    )
    if preview:
        session.run("asv", "preview")
