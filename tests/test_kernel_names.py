"""The CPU and CUDA kernel trees mirror each other: the same family modules (file stems),
and for every kernel of one tree a kernel of the same name in the other, unless the table
below lists it as backend-specific with the reason.

Read from the sources (``ast`` for kernels/cpu, the loader's parser for the .cu files), so
this needs neither Numba compilation nor a GPU.
"""

import ast
import os
from importlib import resources

from gpunn.kernels.cuda import loader

CPU_DIR = str(resources.files("gpunn.kernels.cpu"))

#: The family modules both trees have (kernels/cpu/<family>.py, kernels/cuda/<family>.cu).
FAMILIES = (
    "elementwise",
    "activations",
    "linear",
    "conv",
    "pooling",
    "softmax",
    "losses",
    "recurrent",
    "optim",
    "dropout",
    "normalization",
    "embedding",
)

#: Modules only one tree has, and why.
MODULE_ONLY = {
    ("cpu", "shape"): "sum, mean's backward and getitem's scatter: the cupy backend runs "
    "these on CuPy's reductions and indexing (gpunn.backends.kinds)",
}

#: Kernels only one tree has, and why.
KERNEL_ONLY = {
    ("cpu", "conv2d_forward"): "the whole CPU convolution in one parallel kernel that calls "
    "BLAS per cache-sized block; the GPU launches im2col, cuBLAS and conv2d_output",
    ("cpu", "conv2d_backward"): "as conv2d_forward: one CPU kernel around BLAS calls; the "
    "GPU launches conv2d_grad_output, im2col, cuBLAS and col2im",
    ("cuda", "embedding_backward_order"): "the GPU's counting sort of the positions by "
    "index (one block, capturable); the numba backend sorts them with NumPy on the host",
    ("cuda", "conv2d_output"): "the GPU's layout + bias pass after cuBLAS; the CPU kernel "
    "adds the bias on each block it copies out",
    ("cuda", "conv2d_grad_output"): "the GPU's layout + bias-gradient pass before cuBLAS; the "
    "CPU kernel gathers each block of dY itself",
    ("cpu", "conv2d_winograd"): "Winograd F(2x2, 3x3) for the CPU's 3x3 stride-1 "
    "convolutions, which are bound by BLAS flops; the GPU runs every convolution as "
    "implicit GEMM or im2col + cuBLAS",
    ("cpu", "conv2d_winograd_weights"): "part of conv2d_winograd (CPU only)",
    ("cpu", "conv2d_winograd_input"): "part of conv2d_winograd (CPU only)",
    ("cpu", "conv2d_winograd_output"): "part of conv2d_winograd (CPU only)",
    ("cpu", "conv2d_winograd_backward"): "the gradients of conv2d_winograd (CPU only)",
    ("cpu", "conv2d_winograd_input_backward"): "part of conv2d_winograd_backward (CPU only)",
    ("cpu", "conv2d_winograd_rows"): "part of conv2d_winograd_backward (CPU only)",
    ("cpu", "conv2d_winograd_scratch"): "cuts a task's scratch for the Winograd kernels",
    ("cpu", "conv2d_winograd_grad_output"): "part of conv2d_winograd_backward (CPU only)",
    ("cpu", "conv2d_winograd_weights_backward"): "part of conv2d_winograd_backward (CPU only)",
    ("cpu", "softmax_row_max"): "the CPU's vectorised row maximum inside the softmax "
    "kernels; a CUDA block reduces its row with warp shuffles instead",
    ("cpu", "max_pool2d_2x2_forward"): "the CPU's branch-free 2x2 stride-2 max pooling, "
    "vectorised along rows; a CUDA thread per output has no branches to remove",
    ("cpu", "max_pool2d_pad"): "the CPU pooling kernels read a padded copy of the input; the "
    "CUDA pooling kernels test bounds instead",
    ("cpu", "step_backward"): "fills zeros in a preallocated gradient; cupy inherits the "
    "reference (cupy.zeros)",
    ("cpu", "sum_forward"): "cupy uses CuPy's reduction (see MODULE_ONLY)",
    ("cpu", "sum_backward"): "cupy uses a broadcast view (see MODULE_ONLY)",
    ("cpu", "getitem_backward"): "cupy uses cupy.add.at (see MODULE_ONLY)",
    ("cuda", "exp_backward"): "dY * Y in one kernel; the numba backend reuses its "
    "mul_forward kernel",
    ("cuda", "log_backward"): "dY / X; the numba backend launches its div_forward kernel",
}


def _is_kernel(fn: ast.FunctionDef) -> bool:
    """A public function decorated with the kernel decorator (``kernel`` or ``kernel(...)``)
    or Numba's ``njit``."""
    if fn.name.startswith("_"):
        return False
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name in ("kernel", "njit"):
            return True
    return False


def cpu_tree() -> dict[str, list[str]]:
    """family module stem -> public kernels, for every module of kernels/cpu that has any."""
    out = {}
    for name in sorted(os.listdir(CPU_DIR)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        with open(os.path.join(CPU_DIR, name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        found = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and _is_kernel(n)]
        if found:  # helper modules (launchers, threads, warmup) define no kernel
            out[name[:-3]] = found
    return out


def cuda_tree() -> dict[str, list[str]]:
    """file stem -> every __global__ kernel, for every .cu file."""
    return {name[:-3]: loader.declared_kernels(name)[1] for name in loader.source_files()}


def _mirror_problems(cpu: dict, cuda: dict) -> list[str]:
    problems = []
    trees = {"cpu": cpu, "cuda": cuda}
    for side, other in (("cpu", "cuda"), ("cuda", "cpu")):
        for module in sorted(set(trees[side]) - set(trees[other])):
            if (side, module) not in MODULE_ONLY:
                problems.append(f"module {module} is in kernels/{side} only, and not listed")
    kernels = {side: {k for ks in tree.values() for k in ks} for side, tree in trees.items()}
    for side, other in (("cpu", "cuda"), ("cuda", "cpu")):
        for k in sorted(kernels[side] - kernels[other]):
            if (side, k) not in KERNEL_ONLY:
                problems.append(f"kernel {k} is in kernels/{side} only, and not listed")
    for (side, k), _ in KERNEL_ONLY.items():
        if k not in kernels[side]:
            problems.append(f"KERNEL_ONLY lists {side} kernel {k}, which {side} lacks")
        elif k in kernels["cuda" if side == "cpu" else "cpu"]:
            problems.append(f"KERNEL_ONLY lists {k} as {side}-only but both trees have it")
    for (side, m), _ in MODULE_ONLY.items():
        if m not in trees[side]:
            problems.append(f"MODULE_ONLY lists {side} module {m}, which {side} lacks")
    # a kernel in both trees sits in the same family module
    for k in kernels["cpu"] & kernels["cuda"]:
        where = {side: [m for m, ks in tree.items() if k in ks] for side, tree in trees.items()}
        if where["cpu"] != where["cuda"]:
            problems.append(
                f"kernel {k}: kernels/cpu/{where['cpu']} but kernels/cuda/{where['cuda']}"
            )
    return problems


def test_cuda_tree_has_the_families():
    assert sorted(cuda_tree()) == sorted(FAMILIES)


def test_cpu_and_cuda_kernel_names_mirror():
    cpu = cpu_tree()
    assert set(FAMILIES) <= set(cpu), (
        f"kernels/cpu lacks families {sorted(set(FAMILIES) - set(cpu))}"
    )
    problems = _mirror_problems(cpu, cuda_tree())
    assert not problems, "\n".join(problems)


def test_the_mirror_check_catches_a_stray_name():
    """_mirror_problems itself: an unlisted one-sided kernel, a misplaced one, a stale entry."""
    cuda = cuda_tree()
    cpu = {m: list(ks) for m, ks in cuda.items()}
    for (side, k), _ in KERNEL_ONLY.items():
        if side == "cuda":
            for ks in cpu.values():
                if k in ks:
                    ks.remove(k)
    cpu["conv"] += ["conv2d_forward", "conv2d_backward", "conv2d_winograd"]
    parts = ("weights", "input", "output", "backward", "grad_output", "weights_backward")
    parts += ("input_backward", "rows", "scratch")
    cpu["conv"] += [f"conv2d_winograd_{part}" for part in parts]
    cpu["softmax"] += ["softmax_row_max"]
    cpu["pooling"] += ["max_pool2d_pad", "max_pool2d_2x2_forward"]
    cpu["activations"] += ["step_backward"]
    cpu["shape"] = ["sum_forward", "sum_backward", "getitem_backward"]
    assert _mirror_problems(cpu, cuda) == []
    cpu["activations"].append("mish_forward")
    cpu["pooling"].remove("max_pool2d_forward")
    cpu["losses"].append("max_pool2d_forward")
    problems = _mirror_problems(cpu, cuda)
    assert "kernel mish_forward is in kernels/cpu only, and not listed" in problems
    assert any("kernel max_pool2d_forward: kernels/cpu/['losses']" in p for p in problems)
