"""Loss modules; each returns a 0-d mean."""

from __future__ import annotations

from gpunn import functional as F
from gpunn.nn.module import Module


class MSELoss(Module):
    """mean((input - target)^2)."""

    def forward(self, input, target):
        return F.mse_loss(input, target)


class BCELoss(Module):
    """Binary cross-entropy of probabilities."""

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target)


class BCEWithLogitsLoss(Module):
    """Binary cross-entropy of sigmoid(input), computed stably from logits."""

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target)


class CrossEntropyLoss(Module):
    """Softmax cross-entropy of (N, C) logits against (N,) integer class indices."""

    def forward(self, input, target):
        return F.cross_entropy(input, target)
