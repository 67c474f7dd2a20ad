"""Max and average pooling, forward and backward.

Sizes: LeNet-5's first pooling (2x2, stride 2, batch 64) and (GPUNN_BENCH_FULL=1) a 3x3
stride-2 padded pooling on a larger feature map.
"""

from .common import ALL, OpBenchmark, dtypes, size_names

# name -> ((N, C, H, W), kernel, stride, padding)
SIZES = {
    "lenet-pool1": ((64, 6, 28, 28), 2, 2, 0),
    "32x64x64x64-3x3s2p1": ((32, 64, 64, 64), 3, 2, 1),
}
LARGE = ("32x64x64x64-3x3s2p1",)


class _Pool(OpBenchmark):
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        return [rng.standard_normal(spec[0]).astype(dtype)]

    def op_params(self, spec):
        _, k, s, p = spec
        return {"kernel_size": (k, k), "stride": (s, s), "padding": (p, p)}


class MaxPool2d(_Pool):
    op = "max_pool2d"

    def torch_forward(self, torch, x):
        _, k, s, p = self.spec
        return torch.nn.functional.max_pool2d(x, k, s, p)


class AvgPool2d(_Pool):
    op = "avg_pool2d"

    def torch_forward(self, torch, x):
        _, k, s, p = self.spec
        return torch.nn.functional.avg_pool2d(x, k, s, p)
