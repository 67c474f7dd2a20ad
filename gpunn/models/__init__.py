"""Ready models, one for each network family of the lecture."""

from gpunn.models.classic import MLP, LogisticRegression, Perceptron
from gpunn.models.convolutional import LeNet5
from gpunn.models.resnet import ResNet8
from gpunn.models.sequence import GRUClassifier, LSTMClassifier, RNNClassifier

__all__ = [
    "GRUClassifier",
    "LSTMClassifier",
    "LeNet5",
    "LogisticRegression",
    "MLP",
    "Perceptron",
    "RNNClassifier",
    "ResNet8",
]
