"""Optimizers: SGD and Adam with PyTorch's update rules."""

from gpunn.optim.optimizer import SGD, Adam, Optimizer

__all__ = ["SGD", "Adam", "Optimizer"]
