"""Optimizers: SGD (with Nesterov), Adam and AdamW with PyTorch's update rules, and
learning-rate schedules (``gpunn.optim.lr_scheduler``)."""

from gpunn.optim import lr_scheduler
from gpunn.optim.optimizer import SGD, Adam, AdamW, Optimizer

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "lr_scheduler"]
