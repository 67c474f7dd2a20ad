"""Sequence classifiers: a recurrent layer reads the sequence, a linear head classifies
its last hidden state."""

from __future__ import annotations

from gpunn import nn


class _SequenceClassifier(nn.Module):
    cell = None

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, num_layers: int = 1):
        super().__init__()
        self.rnn = self.cell(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        """x (batch, seq, input_size) -> logits (batch, num_classes)."""
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class RNNClassifier(_SequenceClassifier):
    """An Elman RNN: one hidden state, updated by h_t = tanh(W x_t + U h_{t-1} + b), carries
    what the network has read so far. Images can be read row by row as a sequence."""

    cell = nn.RNN


class LSTMClassifier(_SequenceClassifier):
    """An LSTM: input, forget and output gates decide what enters, stays in and leaves a
    memory cell, which lets gradients survive long sequences."""

    cell = nn.LSTM


class GRUClassifier(_SequenceClassifier):
    """A GRU: a reset gate decides how much of the state feeds the candidate, an update gate
    how much of the state is kept; like the LSTM it lets gradients survive long sequences,
    with one state and three gates instead of two states and four."""

    cell = nn.GRU
