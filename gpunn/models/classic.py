"""The perceptron, logistic regression and multi-layer perceptrons."""

from __future__ import annotations

from gpunn import functional as F
from gpunn import nn
from gpunn.autograd import no_grad


class Perceptron(nn.Module):
    """Rosenblatt's perceptron: one neuron, y = step(w . x + b) in {0, 1}.

    It learns by the perceptron rule, not by gradients: for each misclassified sample,
    w += lr * (y - y_hat) * x and b += lr * (y - y_hat). On linearly separable data the
    rule stops making mistakes after finitely many updates; :meth:`fit` stops at the
    first epoch without a mistake.

    Input (N, in_features); output (N, 1) of 0/1 values.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.neuron = nn.Perceptron(in_features)

    def forward(self, x):
        return self.neuron(x)

    def fit_epoch(self, x, y, lr: float = 1.0) -> int:
        """One pass of the perceptron rule over the rows of x (N, in) with labels y (N,) in
        {0, 1}; returns the number of mistakes made."""
        w, b = self.neuron.weight, self.neuron.bias
        mistakes = 0
        with no_grad():
            for n in range(x.shape[0]):
                xn = x[n : n + 1]
                err = y[n : n + 1].reshape(1, 1) - F.step(F.linear(xn, w, b))
                e = err.item()
                if e != 0:
                    mistakes += 1
                    w.data = (w + lr * err * xn).data
                    b.data = (b + lr * err.reshape(1)).data
        return mistakes

    def fit(self, x, y, lr: float = 1.0, max_epochs: int = 100) -> list[int]:
        """Repeat :meth:`fit_epoch` until an epoch makes no mistake (or max_epochs);
        returns the mistakes per epoch."""
        history = []
        for _ in range(max_epochs):
            history.append(self.fit_epoch(x, y, lr))
            if history[-1] == 0:
                break
        return history


class LogisticRegression(nn.Module):
    """Logistic regression as a single neuron: z = W x + b, a = sigmoid(z).

    Trained with binary cross-entropy, whose gradient is dL/dz = a - y, so
    dJ/dW = (1/n)(A - Y) X^T and dJ/db = mean(A - Y). ``forward`` returns the probability
    a, shape (N, 1); ``logits`` returns z.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def logits(self, x):
        return self.linear(x)

    def forward(self, x):
        return self.linear(x, activation="sigmoid")


class MLP(nn.Module):
    """A multi-layer perceptron: hidden Linear layers, each followed by an activation
    (fused into the layer's op), then a linear output layer (logits).

    ``MLP(784, [256, 256], 10)``: shallow with one or two hidden layers, deep with more.
    Input (N, in_features); output (N, out_features). Parameters are named
    ``hidden.<k>.weight`` and ``output.weight``.
    """

    def __init__(
        self,
        in_features: int,
        hidden=(256, 256),
        out_features: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        sizes = [in_features, *hidden]
        self.activation = activation
        self.hidden = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])])
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(sizes[-1], out_features)

    def forward(self, x):
        for layer in self.hidden:
            x = self.drop(layer(x, activation=self.activation))
        return self.output(x)
