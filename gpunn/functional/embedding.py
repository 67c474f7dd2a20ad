"""Embedding lookup, as PyTorch's ``embedding``."""

from __future__ import annotations

from gpunn.autograd import apply, backend_of
from gpunn.errors import DTypeError, ShapeError
from gpunn.functional.checks import check_float


def embedding(input, weight, padding_idx=None):
    """Rows of ``weight`` picked by the indices in ``input``.

    Args:
        input: an integer tensor of any shape, values in [0, num_embeddings).
        weight: (num_embeddings, embedding_dim), float.
        padding_idx: a row that gets no gradient (negative counts from the end), or None.
    Returns:
        (*input.shape, embedding_dim). The gradient of a row is the sum of the output
        gradients at the positions that picked it (the same on every backend).
    """
    op = "embedding"
    check_float(op, weight)
    if weight.ndim != 2:
        raise ShapeError(
            f"{op}: weight must be 2-d (num_embeddings, embedding_dim), got shape {weight.shape}"
        )
    if input.dtype.kind not in "iu":
        raise DTypeError(
            f"{op}: input must hold integer indices, got dtype {input.dtype} (convert with .long())"
        )
    backend_of(op, (input, weight))
    rows = weight.shape[0]
    if padding_idx is not None:
        if not -rows <= padding_idx < rows:
            raise ValueError(
                f"{op}: padding_idx {padding_idx} is out of range for weight of shape "
                f"{weight.shape}"
            )
        padding_idx = padding_idx % rows
    input.backend_object.check_indices(op, input.data, rows)
    return apply(op, input, weight, padding_idx=padding_idx)
