"""CUDA C++ kernels (*.cu) and the loader that compiles them through CuPy."""
