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
        top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
        toplevel = [n for n in names if n.endswith("top_level.txt")]
        declared = zf.read(toplevel[0]).decode().split() if toplevel else sorted(top)
    if top != {"gpunn"} or declared != ["gpunn"]:
        session.error(f"wheel top-level packages are {sorted(top)} (top_level.txt: {declared}); expected only gpunn")
    if any(n.startswith("kernels/") for n in names):
        session.error("wheel contains a top-level kernels/ folder")
    sources = sorted(glob.glob(os.path.join(ROOT, "kernels", "cuda", "*.cu")))
    missing = [
        os.path.basename(s) for s in sources
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
    session.run("asv", "run", "--python=same", "--quick", "--show-stderr", "--dry-run", *session.posargs)
