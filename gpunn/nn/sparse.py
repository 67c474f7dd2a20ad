"""Embedding: a lookup table of vectors, as PyTorch's ``nn.Embedding``."""

from __future__ import annotations

from gpunn import functional as F
from gpunn.autograd import no_grad
from gpunn.nn.module import Module, Parameter
from gpunn.tensor import randn, tensor


class Embedding(Module):
    """Rows of ``weight`` (num_embeddings, embedding_dim), drawn from N(0, 1) as PyTorch,
    picked by integer indices: input (*) -> output (*, embedding_dim).

    ``padding_idx``: that row starts at zero and gets no gradient (negative counts from
    the end).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"Embedding: padding_idx {padding_idx} is out of range for "
                    f"{num_embeddings} embeddings"
                )
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        weight = randn(num_embeddings, embedding_dim)
        if padding_idx is not None:
            keep = tensor([[0.0 if i == padding_idx else 1.0] for i in range(num_embeddings)])
            with no_grad():
                weight = weight * keep + 0.0  # + 0.0: the row holds 0, not -0
        self.weight = Parameter(weight)

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
