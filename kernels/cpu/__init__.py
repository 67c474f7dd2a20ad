"""Numba @njit CPU kernels, one module per op family (import them as
``gpunn.kernels.cpu.<module>``; the backend is ``gpunn.backends.numba_backend``).

elementwise, activations, linear, softmax (softmax family and losses), conv, pooling,
dropout, recurrent, optim, shape (reductions and index scatters). ``_jit`` holds the
decorator, the disk cache and threading-layer setup; ``_vmath`` the vectorisable
exp/log/sigmoid/tanh the kernels share. Kernels compute into arrays they are handed.
"""
