"""Elementwise arithmetic and activations: forward and backward of one op each.

Sizes are (rows, columns): "128x256" is an MLP hidden layer's activations at batch 128,
"4096x4096" (GPUNN_BENCH_FULL=1) a large tensor where memory bandwidth decides.
"""

from .common import ALL, OpBenchmark, dtypes, size_names

SIZES = {"128x256": (128, 256), "4096x4096": (4096, 4096)}
LARGE = ("4096x4096",)


class _Unary(OpBenchmark):
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        return [rng.standard_normal(spec).astype(dtype)]


class Add(OpBenchmark):
    """X (N, F) + b (F,): the broadcast bias add, whose backward sums over rows."""

    op = "add"
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        return [
            rng.standard_normal(spec).astype(dtype),
            rng.standard_normal(spec[1:]).astype(dtype),
        ]

    def torch_forward(self, torch, a, b):
        return a + b


class Mul(OpBenchmark):
    """X * Y, both (N, F)."""

    op = "mul"
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        return [rng.standard_normal(spec).astype(dtype), rng.standard_normal(spec).astype(dtype)]

    def torch_forward(self, torch, a, b):
        return a * b


class Exp(_Unary):
    op = "exp"

    def torch_forward(self, torch, x):
        return torch.exp(x)


class Sigmoid(_Unary):
    op = "sigmoid"
    params = [ALL, size_names(SIZES, LARGE), dtypes(float64=True)]  # logreg trains in float64

    def torch_forward(self, torch, x):
        return torch.sigmoid(x)


class Tanh(_Unary):
    op = "tanh"

    def torch_forward(self, torch, x):
        return torch.tanh(x)


class Relu(_Unary):
    op = "relu"

    def torch_forward(self, torch, x):
        return torch.relu(x)
