"""What computes each op of each accelerated backend, declared as data.

Every op of the contract (``Backend.ops()``) has exactly one kind per backend:

* ``kernel``: a gpunn kernel does the compute (``gpunn.kernels.cpu`` / ``gpunn.kernels.cuda``),
  possibly around a BLAS product (linear, convolution, recurrent cells);
* ``blas``: a BLAS / cuBLAS matrix product and nothing else (the matmul ops);
* ``library``: a routine of the array library, named after the colon;
* ``view``: an array view (or a plain copy where a view is impossible), no arithmetic;
* ``reference``: the backend inherits the readable reference of ``Backend``.

An entry is ``"kind"`` or ``"kind: detail"`` (the routine, for ``library``). A backend
overrides an op exactly when its kind is not ``reference`` (a test holds each class to its
table), ``native_ops()`` lists the ``kernel`` ops, and ``gpunn info`` prints the counts.
"""

from __future__ import annotations

KINDS = ("kernel", "blas", "library", "view", "reference")

NUMBA = {
    # elementwise
    "add_forward": "kernel",
    "add_backward": "reference",  # the gradient is dY itself, summed only where broadcast
    "sub_forward": "kernel",
    "sub_backward": "kernel",
    "mul_forward": "kernel",
    "mul_backward": "kernel",
    "div_forward": "kernel",
    "div_backward": "kernel",
    "pow_forward": "kernel",
    "pow_backward": "kernel",
    "neg_forward": "kernel",
    "neg_backward": "kernel",
    "exp_forward": "kernel",
    "exp_backward": "kernel",
    "log_forward": "kernel",
    "log_backward": "kernel",
    "cast_forward": "kernel",
    "cast_backward": "kernel",
    # activations
    "sigmoid_forward": "kernel",
    "sigmoid_backward": "kernel",
    "tanh_forward": "kernel",
    "tanh_backward": "kernel",
    "relu_forward": "kernel",
    "relu_backward": "kernel",
    "step_forward": "kernel",
    "step_backward": "kernel",
    # normalization, embedding, leaky_relu and gelu
    "leaky_relu_forward": "kernel",
    "leaky_relu_backward": "kernel",
    "gelu_forward": "kernel",
    "gelu_backward": "kernel",
    "batch_norm_forward": "kernel",
    "batch_norm_backward": "kernel",
    "layer_norm_forward": "kernel",
    "layer_norm_backward": "kernel",
    "embedding_forward": "kernel",
    "embedding_backward": "kernel: stable argsort of the indices (NumPy), then one "
    "reduction per row",
    # matrix products
    "matmul_forward": "blas",
    "matmul_backward": "blas",
    "linear_forward": "kernel: BLAS product per row block, bias and activation in one parallel kernel",
    "linear_backward": "kernel: activation grad, BLAS products and bias sums in one parallel kernel",
    # reductions and shapes
    "sum_forward": "kernel",
    "sum_backward": "kernel",
    "mean_forward": "kernel",
    "mean_backward": "kernel",
    "reshape_forward": "reference",
    "reshape_backward": "reference",
    "transpose_forward": "view",
    "transpose_backward": "view",
    "stack_forward": "reference",
    "stack_backward": "view",
    "unstack_forward": "reference",
    "unstack_backward": "reference",
    "getitem_forward": "reference",
    "getitem_backward": "kernel: scatter-add kernel (NumPy indexing of element positions "
    "for indexes other than one integer array on the first axis)",
    # softmax family and losses
    "softmax_forward": "kernel",
    "softmax_backward": "kernel",
    "log_softmax_forward": "kernel",
    "log_softmax_backward": "kernel",
    "mse_loss_forward": "kernel",
    "mse_loss_backward": "kernel",
    "binary_cross_entropy_forward": "kernel",
    "binary_cross_entropy_backward": "kernel",
    "binary_cross_entropy_with_logits_forward": "kernel",
    "binary_cross_entropy_with_logits_backward": "kernel",
    "cross_entropy_forward": "kernel",
    "cross_entropy_backward": "kernel",
    # convolution and pooling
    "conv2d_forward": "kernel: blocked im2col and BLAS products in one parallel kernel",
    "conv2d_backward": "kernel: blocked im2col / col2im and BLAS products in one parallel kernel",
    "max_pool2d_forward": "kernel",
    "max_pool2d_backward": "kernel",
    "avg_pool2d_forward": "kernel",
    "avg_pool2d_backward": "kernel",
    # dropout, recurrent cells, optimizer updates
    "dropout_forward": "kernel",
    "dropout_backward": "kernel",
    "rnn_cell_forward": "kernel: BLAS product, then the cell kernel",
    "rnn_cell_backward": "kernel: cell kernel, then BLAS products",
    "lstm_cell_forward": "kernel: BLAS product, then the fused gate kernel",
    "lstm_cell_backward": "kernel: fused gate kernel, then BLAS products",
    "rnn_forward": "kernel: one BLAS product for all inputs, then per step a BLAS product "
    "and the fused step kernel",
    "rnn_backward": "kernel: per step the fused step kernel and a BLAS product, then BLAS "
    "products over all steps",
    "lstm_forward": "kernel: one BLAS product for all inputs, then per step a BLAS product "
    "and the fused gate kernel",
    "lstm_backward": "kernel: per step the fused gate kernel and a BLAS product, then BLAS "
    "products over all steps",
    "gru_forward": "kernel: one BLAS product for all inputs, then per step a BLAS product "
    "and the fused gate kernel",
    "gru_backward": "kernel: per step the fused gate kernel and a BLAS product, then BLAS "
    "products over all steps",
    "sgd_update": "kernel",
    "adam_update": "kernel",
    "clip_grad_norm_update": "kernel",
    "clip_grad_value_update": "kernel",
}

CUPY = {
    # elementwise
    "add_forward": "kernel",
    "add_backward": "reference: cupy sum to un-broadcast (none when shapes match)",
    "sub_forward": "kernel",
    "sub_backward": "kernel: neg kernel; cupy.sum to un-broadcast",
    "mul_forward": "kernel",
    "mul_backward": "kernel",
    "div_forward": "kernel",
    "div_backward": "kernel",
    "pow_forward": "kernel",
    "pow_backward": "kernel",
    "neg_forward": "kernel",
    "neg_backward": "kernel",
    "exp_forward": "kernel",
    "exp_backward": "kernel",
    "log_forward": "kernel",
    "log_backward": "kernel",
    "cast_forward": "kernel",
    "cast_backward": "kernel",
    # activations
    "sigmoid_forward": "kernel",
    "sigmoid_backward": "kernel",
    "tanh_forward": "kernel",
    "tanh_backward": "kernel",
    "relu_forward": "kernel",
    "relu_backward": "kernel",
    "step_forward": "kernel",
    "step_backward": "reference: cupy zeros (the step's gradient is zero)",
    # normalization, embedding, leaky_relu and gelu
    "leaky_relu_forward": "kernel",
    "leaky_relu_backward": "kernel",
    "gelu_forward": "kernel",
    "gelu_backward": "kernel",
    "batch_norm_forward": "kernel",
    "batch_norm_backward": "kernel",
    "layer_norm_forward": "kernel",
    "layer_norm_backward": "kernel",
    "embedding_forward": "kernel",
    "embedding_backward": "kernel: cupy.argsort of (index, position) keys and "
    "cupy.searchsorted, then one reduction per row",
    # matrix products
    "matmul_forward": "blas: cuBLAS GEMM through gpunn's binding (cupy.matmul when "
    "batched); cublasGemmEx in float16/bfloat16 under autocast",
    "matmul_backward": "blas: cuBLAS GEMMs (as the forward); cupy sum to un-broadcast",
    "linear_forward": "kernel: cuBLAS GEMM, then the bias+activation kernel",
    "linear_backward": "kernel: activation-grad+bias-sum kernel, then cuBLAS GEMMs",
    # reductions and shapes
    "sum_forward": "reference: cupy reduction kernel",
    "sum_backward": "reference: broadcast view (no kernel)",
    "mean_forward": "reference: cupy reduction kernel",
    "mean_backward": "kernel",
    "reshape_forward": "reference: view, or cupy copy kernel for non-contiguous input",
    "reshape_backward": "reference: view, or cupy copy kernel",
    "transpose_forward": "reference: view (no kernel)",
    "transpose_backward": "view",
    "stack_forward": "reference: cupy concatenate kernel",
    "stack_backward": "view",
    "unstack_forward": "reference: views of the input (no kernel)",
    "unstack_backward": "reference: cupy concatenate kernel",
    "getitem_forward": "library: cupy indexing (a view, or CuPy's gather)",
    "getitem_backward": "reference: cupy fill + copy, or cupy.add.at for integer arrays",
    # softmax family and losses
    "softmax_forward": "kernel",
    "softmax_backward": "kernel",
    "log_softmax_forward": "kernel",
    "log_softmax_backward": "kernel",
    "mse_loss_forward": "kernel",
    "mse_loss_backward": "kernel",
    "binary_cross_entropy_forward": "kernel",
    "binary_cross_entropy_backward": "kernel",
    "binary_cross_entropy_with_logits_forward": "kernel",
    "binary_cross_entropy_with_logits_backward": "kernel",
    "cross_entropy_forward": "kernel",
    "cross_entropy_backward": "kernel",
    # convolution and pooling
    "conv2d_forward": "kernel: per chunk of images, im2col kernel, cuBLAS GEMM, output kernel",
    "conv2d_backward": "kernel: per chunk, layout kernel, cuBLAS GEMMs and GEMV, col2im kernel",
    "max_pool2d_forward": "kernel",
    "max_pool2d_backward": "kernel",
    "avg_pool2d_forward": "kernel",
    "avg_pool2d_backward": "kernel",
    # dropout, recurrent cells, optimizer updates
    "dropout_forward": "kernel",
    "dropout_backward": "kernel",
    "rnn_cell_forward": "kernel: cuBLAS GEMM, then the cell kernel",
    "rnn_cell_backward": "kernel: cell kernel, then cuBLAS GEMMs",
    "lstm_cell_forward": "kernel: cuBLAS GEMM, then the fused gate kernel",
    "lstm_cell_backward": "kernel: fused gate kernel, then cuBLAS GEMMs",
    "rnn_forward": "kernel: one cuBLAS GEMM for all inputs, then per step a GEMM and the "
    "fused step kernel",
    "rnn_backward": "kernel: per step the fused step kernel and a GEMM, then cuBLAS GEMMs "
    "over all steps and a cupy.sum",
    "lstm_forward": "kernel: one cuBLAS GEMM for all inputs, then per step a GEMM and the "
    "fused gate kernel",
    "lstm_backward": "kernel: per step the fused gate kernel and a GEMM, then cuBLAS GEMMs "
    "over all steps and a cupy.sum",
    "gru_forward": "kernel: one cuBLAS GEMM for all inputs, then per step a GEMM and the "
    "fused gate kernel",
    "gru_backward": "kernel: per step the fused gate kernel and a GEMM, then cuBLAS GEMMs "
    "over all steps and a cupy.sum",
    "sgd_update": "kernel",
    "adam_update": "kernel",
    "clip_grad_norm_update": "kernel",
    "clip_grad_value_update": "kernel",
}

#: backend name -> {op: entry}. The numpy backend is the reference itself: no table.
TABLES = {"numba": NUMBA, "cupy": CUPY}


def table(backend: str) -> dict[str, tuple[str, str]]:
    """{op: (kind, detail)} for ``backend``; every op ``reference`` for the numpy backend."""
    from gpunn.backends.base import Backend

    entries = TABLES.get(backend)
    if entries is None:
        return {op: ("reference", "") for op in Backend.ops()}
    out = {}
    for op, entry in entries.items():
        kind, _, detail = entry.partition(":")
        out[op] = (kind.strip(), detail.strip())
    return out


def ops_of_kind(backend: str, kind: str) -> list[str]:
    """Sorted names of ``backend``'s ops of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown op kind {kind!r}; kinds are {', '.join(KINDS)}")
    return sorted(op for op, (k, _) in table(backend).items() if k == kind)


def counts(backend: str) -> dict[str, int]:
    """{kind: number of ``backend``'s ops of that kind}, every kind present."""
    out = dict.fromkeys(KINDS, 0)
    for k, _ in table(backend).values():
        out[k] += 1
    return out
