"""Softmax, log-softmax and the losses, forward and backward. Losses reduce to a 0-d mean.

Sizes are (rows, classes): "128x10" is the MLP's logits (call overhead dominates),
"256x1000" an ImageNet-sized classifier head, "4096x1" logistic regression's outputs.
"""

from .common import ALL, OpBenchmark, dtypes, size_names

SIZES = {"128x10": (128, 10), "256x1000": (256, 1000), "4096x10000": (4096, 10000)}
LARGE = ("128x10", "4096x10000")  # softmax on 256x1000 by default
CE_LARGE = ("256x1000", "4096x10000")  # cross-entropy on the MLP's 128x10 by default
BINARY_SIZES = {"4096x1": (4096, 1), "65536x1": (65536, 1)}
BINARY_LARGE = ("65536x1",)


class _Rows(OpBenchmark):
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        return [(3 * rng.standard_normal(spec)).astype(dtype)]


class Softmax(_Rows):
    op = "softmax"

    def op_params(self, spec):
        return {"axis": -1}

    def torch_forward(self, torch, x):
        return torch.softmax(x, -1)


class LogSoftmax(_Rows):
    op = "log_softmax"

    def op_params(self, spec):
        return {"axis": -1}

    def torch_forward(self, torch, x):
        return torch.log_softmax(x, -1)


class CrossEntropy(_Rows):
    """Softmax cross-entropy with class-index targets (logits' gradient only)."""

    op = "cross_entropy"
    params = [ALL, size_names(SIZES, CE_LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        n, c = spec
        return [(3 * rng.standard_normal(spec)).astype(dtype), rng.integers(0, c, n)]

    def torch_forward(self, torch, z, labels):
        return torch.nn.functional.cross_entropy(z, labels)


class _Binary(OpBenchmark):
    """A loss of predictions P and float targets T, both (N, 1); gradient for P only."""

    sizes = BINARY_SIZES
    params = [ALL, size_names(BINARY_SIZES, BINARY_LARGE), dtypes()]
    grads = (True, False)

    def inputs(self, rng, spec, dtype):
        return [rng.standard_normal(spec).astype(dtype), (rng.random(spec) > 0.5).astype(dtype)]


class BinaryCrossEntropy(_Binary):
    op = "binary_cross_entropy"
    # logistic regression's loss: trained in float64 too
    params = [ALL, size_names(BINARY_SIZES, BINARY_LARGE), dtypes(float64=True)]

    def inputs(self, rng, spec, dtype):
        p = rng.uniform(0.01, 0.99, spec).astype(dtype)
        return [p, (rng.random(spec) > 0.5).astype(dtype)]

    def torch_forward(self, torch, p, t):
        return torch.nn.functional.binary_cross_entropy(p, t)


class BinaryCrossEntropyWithLogits(_Binary):
    op = "binary_cross_entropy_with_logits"

    def torch_forward(self, torch, z, t):
        return torch.nn.functional.binary_cross_entropy_with_logits(z, t)


class MSE(_Binary):
    op = "mse_loss"
    sizes = {"128x10": (128, 10), "4096x1000": (4096, 1000)}
    params = [ALL, size_names(sizes, ("4096x1000",)), dtypes()]

    def torch_forward(self, torch, p, t):
        return torch.nn.functional.mse_loss(p, t)
