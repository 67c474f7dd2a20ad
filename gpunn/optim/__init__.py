"""Optimizers: SGD (with Nesterov), Adam and AdamW with PyTorch's update rules."""

from gpunn.optim.optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]
