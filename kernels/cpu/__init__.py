"""Numba @njit CPU kernels, one module per op family (import them as
``gpunn.kernels.cpu.<module>``; the backend is ``gpunn.backends.numba_backend``).

Families, as in ``kernels/cuda``: elementwise, activations, linear, conv, pooling, softmax
(softmax, log-softmax, cross-entropy), losses (mse_loss, the binary cross-entropies),
recurrent, optim, dropout; plus shape (reductions and index scatters). A kernel is named
``<op stem>_<forward|backward|update>``, or ``<op stem>_<piece>`` for one piece of an op
(``conv2d_im2col``). ``_jit`` holds the decorator, the disk cache and threading-layer
setup; ``_vmath`` the vectorisable exp/log/sigmoid/tanh the kernels share. Kernels compute
into arrays they are handed.
"""
