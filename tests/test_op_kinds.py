"""The op kinds of gpunn.backends.kinds hold: every op has one, a backend overrides exactly
the ops that are not "reference", no override repeats the reference, and every Numba op
declared "kernel" really calls a gpunn kernel (and no other Numba op does)."""

import ast
import importlib
import inspect
import textwrap

import numpy as np
import pytest

from gpunn.backends import Backend, kinds, why_unavailable
from gpunn.testing import OP_CASES, UPDATE_CASES
from gpunn.testing.cases import run_case, run_update

CLASSES = {
    "numba": ("gpunn.backends.numba_backend", "NumbaBackend"),
    "cupy": ("gpunn.backends.cupy_backend", "CupyBackend"),  # imports without CuPy
}


def backend_class(name):
    module, cls = CLASSES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:  # numba missing: the numba backend cannot even be imported
        pytest.skip(f"{module} does not import here: {e}")


def test_tables_cover_exactly_the_accelerated_backends():
    assert set(kinds.TABLES) == set(CLASSES)


@pytest.mark.parametrize("name", sorted(kinds.TABLES))
def test_every_contract_op_has_exactly_one_kind(name):
    table = kinds.table(name)
    assert sorted(table) == Backend.ops()
    for op, (kind, detail) in table.items():
        assert kind in kinds.KINDS, (op, kind)
        if kind == "library":
            assert detail, f"{name}.{op}: a library op names its routine"
    assert sum(kinds.counts(name).values()) == len(Backend.ops())


@pytest.mark.parametrize("name", sorted(kinds.TABLES))
def test_a_backend_overrides_exactly_its_non_reference_ops(name):
    cls = backend_class(name)
    table = kinds.table(name)
    for op in Backend.ops():
        # inspect.unwrap: the cupy backend wraps every op, inherited or not, in its
        # out-of-memory guard
        overridden = inspect.unwrap(getattr(cls, op)) is not getattr(Backend, op)
        assert overridden == (table[op][0] != "reference"), (
            f"{name}.{op}: declared {table[op][0]!r} but "
            + ("overridden" if overridden else "inherited")
        )


def test_native_ops_are_the_kernel_ops():
    assert Backend().native_ops() == []
    for name in kinds.TABLES:
        cls = backend_class(name)
        kernel_ops = kinds.ops_of_kind(name, "kernel")
        assert cls.native_ops(cls.__new__(cls)) == kernel_ops
        assert len(kernel_ops) > len(Backend.ops()) // 2


# ---------------------------------------------------------------------- repeats of the reference
class _ArrayModule(ast.NodeTransformer):
    """Name every array module alike: ``self.xp``, ``xp``, ``np``, ``numpy``, ``cupy``."""

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr == "xp":
            return ast.copy_location(ast.Name("xp", node.ctx), node)
        return node

    def visit_Name(self, node):
        if node.id in ("np", "numpy", "cupy"):
            return ast.copy_location(ast.Name("xp", node.ctx), node)
        return node


def normalized_body(fn) -> str:
    """The body of ``fn`` as an AST dump: no docstring, comments or layout, and every
    array module spelt ``xp``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    module = _ArrayModule().visit(ast.Module(body=body, type_ignores=[]))
    return ast.dump(module)


def repeats_of_the_reference(cls) -> set[str]:
    """The ops ``cls`` overrides with a body equal to the reference's."""
    own = {op: inspect.unwrap(getattr(cls, op)) for op in Backend.ops()}
    return {
        op
        for op, fn in own.items()
        if fn is not getattr(Backend, op)
        and normalized_body(fn) == normalized_body(getattr(Backend, op))
    }


def test_the_repeat_check_finds_a_copied_method():
    class Copier(Backend):
        def reshape_forward(self, X, shape):
            """Another docstring."""
            # a comment
            return X.reshape(shape), X.shape

        def stack_forward(self, *Xs, axis=0):
            return np.stack(Xs, axis=axis), (len(Xs), axis)

        def neg_forward(self, X):
            return X * -1, None  # different code: not a repeat

    assert repeats_of_the_reference(Copier) == {"reshape_forward", "stack_forward"}


@pytest.mark.parametrize("name", sorted(kinds.TABLES))
def test_no_override_repeats_the_reference(name):
    repeats = repeats_of_the_reference(backend_class(name))
    assert not repeats, f"{name} repeats the reference in {sorted(repeats)}"


# ---------------------------------------------------------------------- numba: kernels at run time
class _Counted:
    """A kernel (a dispatcher, or a ParallelKernel with .serial and .parallel) whose every
    call is logged against the backend op running at the time."""

    def __init__(self, kern, log):
        self._log = log
        self.serial = self._wrap(getattr(kern, "serial", kern))
        self.parallel = self._wrap(getattr(kern, "parallel", kern))

    def _wrap(self, fn):
        def call(*args):
            self._log["calls"].add(self._log["stack"][-1] if self._log["stack"] else None)
            return fn(*args)

        return call

    def __call__(self, *args):
        return self.serial(*args)


def _called_inside_kernels(module) -> set[str]:
    """Names that the functions of ``module`` call by their bare name: kernels one kernel
    calls from inside another (Numba compiles those calls, so they cannot be wrapped)."""
    tree = ast.parse(inspect.getsource(module))
    return {
        node.func.id
        for fn in tree.body
        if isinstance(fn, ast.FunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }


@pytest.mark.skipif(why_unavailable("numba") is not None, reason="the numba backend is unavailable")
def test_numba_kernel_ops_call_a_gpunn_kernel_and_no_other_op_does(monkeypatch):
    from gpunn.kernels.cpu import _jit

    from gpunn.backends.numba_backend import NumbaBackend

    log = {"stack": [], "calls": set()}
    kernels = {key.split("/")[0] for key in _jit.REGISTRY}  # "module.function"
    wrapped = 0
    for key in sorted(kernels):
        module, name = key.split(".")
        module = importlib.import_module(f"gpunn.kernels.cpu.{module}")
        if name in _called_inside_kernels(module):
            continue  # a compiled caller needs the kernel itself; the caller is counted
        monkeypatch.setattr(module, name, _Counted(getattr(module, name), log))
        wrapped += 1
    assert wrapped > 30

    def tracing(op, method):
        def run(self, *args, **kwargs):
            log["stack"].append(op)
            try:
                return method(self, *args, **kwargs)
            finally:
                log["stack"].pop()

        return run

    probe_cls = type(
        "Probe",
        (NumbaBackend,),
        {op: tracing(op, getattr(NumbaBackend, op)) for op in Backend.ops()},
    )
    be = probe_cls()
    for case in OP_CASES:
        for dtype in ("float32", "float64"):
            run_case(be, case, dtype)
    for case in UPDATE_CASES:
        run_update(be, case, "float32")
    kernel_ops = set(kinds.ops_of_kind("numba", "kernel"))
    assert kernel_ops - log["calls"] == set(), "declared kernel, but no gpunn kernel ran"
    assert log["calls"] - kernel_ops == set(), "a gpunn kernel ran in an op not declared kernel"
