"""``gpunn.nn.functional``: the differentiable ops, under PyTorch's module name."""

from gpunn.functional import *  # noqa: F403
from gpunn.functional import __all__  # noqa: F401
