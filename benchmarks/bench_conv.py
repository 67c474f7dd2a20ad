"""2-d convolution (cross-correlation, NCHW), forward and backward (input, weight and
bias gradients).

Sizes: LeNet-5's two convolutions at batch 64 (im2col on the CPU), a small 3x3 layer
(Winograd F(2x2, 3x3) on the CPU), (GPUNN_BENCH_FULL=1) a 3x3 layer of a small ResNet-like
network, and the 3x3 layers of ResNet's 56x56 and 28x28 stages at batch
32 and 128 (on the GPU; on the CPU only with GPUNN_BENCH_FULL=1).
"""

from .common import ALL, OpBenchmark, dtypes, size_names

# name -> (N, C, H, W, K, kh, kw, stride, padding)
SIZES = {
    "lenet-conv1": (64, 1, 28, 28, 6, 5, 5, 1, 2),
    "lenet-conv2": (64, 6, 14, 14, 16, 5, 5, 1, 0),
    "16x16x16x16-k16-3x3": (16, 16, 16, 16, 16, 3, 3, 1, 1),
    "32x32x32x32-k64-3x3": (32, 32, 32, 32, 64, 3, 3, 1, 1),
    # ResNet stages (gpunn.workloads conv56x64-b32 ... conv28x128-b128), GPU-sized
    "resnet-56x56-64-b32": (32, 64, 56, 56, 64, 3, 3, 1, 1),
    "resnet-56x56-64-b128": (128, 64, 56, 56, 64, 3, 3, 1, 1),
    "resnet-28x28-128-b32": (32, 128, 28, 28, 128, 3, 3, 1, 1),
    "resnet-28x28-128-b128": (128, 128, 28, 28, 128, 3, 3, 1, 1),
}
# default grid: lenet-conv2 and the small 3x3 layer (+ GPU sizes)
LARGE = ("lenet-conv1", "32x32x32x32-k64-3x3")
GPU_SIZES = tuple(name for name in SIZES if name.startswith("resnet-"))


class Conv2d(OpBenchmark):
    op = "conv2d"
    sizes = SIZES
    gpu_sizes = GPU_SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]
    timeout = 300.0

    def inputs(self, rng, spec, dtype):
        n, c, h, w, k, kh, kw, _, _ = spec
        fan_in = c * kh * kw
        return [
            rng.standard_normal((n, c, h, w)).astype(dtype),
            (rng.standard_normal((k, c, kh, kw)) / fan_in**0.5).astype(dtype),
            rng.standard_normal(k).astype(dtype),
        ]

    def op_params(self, spec):
        stride, padding = spec[7], spec[8]
        return {"stride": (stride, stride), "padding": (padding, padding)}

    def torch_forward(self, torch, x, w, b):
        stride, padding = self.spec[7], self.spec[8]
        return torch.nn.functional.conv2d(x, w, b, stride=stride, padding=padding)
