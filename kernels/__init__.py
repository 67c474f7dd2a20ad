"""gpunn's compute kernels."""
