"""Matrix products: the fused linear layer (matmul + bias, optionally + activation) and a
plain matmul. Sizes are "N x in x out" (linear) and "m x k x n" (matmul).
"""

from .common import ALL, OpBenchmark, dtypes, size_names

# "128x784x256": the MLP's first layer at batch 128; "4096x100x1": logistic regression.
SIZES = {
    "128x784x256": (128, 784, 256),
    "4096x100x1": (4096, 100, 1),
    "1024x1024x1024": (1024, 1024, 1024),
    "256x1024x1024": (256, 1024, 1024),  # gpunn.workloads linear-fwd / linear-fwdbwd
    "1024x4096x4096": (1024, 4096, 4096),  # a layer of mlp-wide, GPU-sized
}
LARGE = ("1024x1024x1024",)
GPU_SIZES = ("1024x4096x4096",)


class Linear(OpBenchmark):
    """Y = X @ W.T + b."""

    op = "linear"
    sizes = SIZES
    gpu_sizes = GPU_SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes(float64=True)]

    def inputs(self, rng, spec, dtype):
        n, k, m = spec
        return [
            rng.standard_normal((n, k)).astype(dtype),
            (rng.standard_normal((m, k)) / k**0.5).astype(dtype),
            rng.standard_normal(m).astype(dtype),
        ]

    def torch_forward(self, torch, x, w, b):
        return torch.nn.functional.linear(x, w, b)


class LinearReLU(Linear):
    """Y = relu(X @ W.T + b): the bias and activation fused into the linear op."""

    params = [ALL, size_names(SIZES, LARGE + ("4096x100x1",)), dtypes()]

    def op_params(self, spec):
        return {"activation": "relu"}

    def torch_forward(self, torch, x, w, b):
        return torch.relu(torch.nn.functional.linear(x, w, b))


MATMUL_SIZES = {"256x256x256": (256, 256, 256), "1024x1024x1024": (1024, 1024, 1024)}


class Matmul(OpBenchmark):
    """A (m, k) @ B (k, n)."""

    op = "matmul"
    sizes = MATMUL_SIZES
    params = [ALL, size_names(MATMUL_SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        m, k, n = spec
        return [
            rng.standard_normal((m, k)).astype(dtype),
            rng.standard_normal((k, n)).astype(dtype),
        ]

    def torch_forward(self, torch, a, b):
        return a @ b
