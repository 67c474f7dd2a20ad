"""Integer codes that Python launchers pass to kernels, shared by both kernel trees.

One table per enum. ``kernels/cuda/common.cuh`` declares the same values for the CUDA
kernels; a test holds the header to this table.
"""

#: The fused activation of ``linear`` (and of any kernel with an activation epilogue).
#: Keys are the names the API takes; ``None`` is the identity.
ACTIVATION_CODES = {None: 0, "relu": 1, "sigmoid": 2, "tanh": 3}

#: The names in code order, for messages and for ``gpunn.functional`` validation.
ACTIVATIONS = tuple(ACTIVATION_CODES)
