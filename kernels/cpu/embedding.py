"""Embedding lookup and its gradient.

The backward is a per-row reduction over the positions sorted by index (a stable sort:
equal indices keep their order), so every row's gradient is summed in position order by
one thread: the same result for any thread count, and the same order as the reference's
scatter-add.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A2, INT
from numba import prange

I1 = "int64[::1]"


@kernel(parallel=True)
def embedding_forward(indices, weight, y):
    """y[p] = weight[indices[p]]: indices (P,) in [0, V), weight (V, E), y (P, E)."""
    e = weight.shape[1]
    for p in prange(indices.size):
        src = weight[indices[p]]
        dst = y[p]
        for k in range(e):
            dst[k] = src[k]


@kernel(parallel=True)
def embedding_backward(dy, order, bounds, padding_idx, dw):
    """dw (V, E), overwritten: row r is the sum of dy[order[q]] for q in
    [bounds[r], bounds[r + 1]), the positions holding index r in increasing order; the
    row ``padding_idx`` (-1 for none) stays zero. dy (P, E)."""
    rows, e = dw.shape
    zero = dw.dtype.type(0)
    for r in prange(rows):
        out = dw[r]
        for k in range(e):
            out[k] = zero
        if r == padding_idx:
            continue
        for q in range(bounds[r], bounds[r + 1]):
            src = dy[order[q]]
            for k in range(e):
                out[k] += src[k]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "embedding_forward": [(I1, A2, A2)],
    "embedding_backward": [(A2, I1, I1, INT, A2)],
}
