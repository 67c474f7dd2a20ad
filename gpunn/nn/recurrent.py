"""RNN and LSTM layers with PyTorch's parameter names, shapes and conventions."""

from __future__ import annotations

import math

from gpunn import functional as F
from gpunn.errors import ShapeError
from gpunn.nn.module import Module, Parameter
from gpunn.tensor import uniform, zeros


class _Recurrent(Module):
    """What RNN and LSTM share: parameters as PyTorch names them, input checks, initial
    states, and the stack of layers (each layer one whole-sequence op, PyTorch's dropout
    on the outputs of every layer but the last while training)."""

    gates = 1

    def __init__(
        self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0
    ):
        super().__init__()
        if not 0 <= dropout <= 1:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout = float(dropout)
        bound = 1 / math.sqrt(hidden_size)
        rows = self.gates * hidden_size
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", Parameter(uniform((rows, n_in), -bound, bound)))
            setattr(self, f"weight_hh_l{k}", Parameter(uniform((rows, hidden_size), -bound, bound)))
            if bias:
                setattr(self, f"bias_ih_l{k}", Parameter(uniform((rows,), -bound, bound)))
                setattr(self, f"bias_hh_l{k}", Parameter(uniform((rows,), -bound, bound)))

    def _check_input(self, x):
        if x.ndim != 3 or x.shape[2] != self.input_size:
            layout = "(batch, seq, feature)" if self.batch_first else "(seq, batch, feature)"
            raise ShapeError(
                f"{type(self).__name__}: input must be {layout} with feature = "
                f"{self.input_size}, got shape {x.shape}"
            )
        return x.transpose(1, 0, 2) if self.batch_first else x

    def _initial(self, state, batch, name, like):
        """Per layer (batch, hidden) initial states: zeros, or the layers of ``state``."""
        shape = (self.num_layers, batch, self.hidden_size)
        if state is None:
            zero = zeros((batch, self.hidden_size), dtype=like.dtype, backend=like.backend)
            return [zero] * self.num_layers
        if state.shape != shape:
            raise ShapeError(
                f"{type(self).__name__}: {name} must have shape {shape}, got {state.shape}"
            )
        if self.num_layers == 1:
            return [state.reshape(shape[1:])]
        return [state[k] for k in range(self.num_layers)]

    def _weights(self, k):
        """(w_ih, w_hh, b_ih, b_hh) of layer k; biases None without bias."""
        b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else None
        return getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}"), b_ih, b_hh

    def _layers(self, x, states, step):
        """Run every layer on x (seq, batch, feature): ``step(x, states_k, k)`` -> (y,
        finals_k). Returns the last layer's output (in the caller's layout) and each final
        state stacked over layers."""
        finals = []
        for k in range(self.num_layers):
            if k and self.dropout and self.training:
                x = F.dropout(x, self.dropout, True)
            x, last = step(x, [s[k] for s in states], k)
            finals.append(last)
        out = x.transpose(1, 0, 2) if self.batch_first else x
        stacked = []
        for j in range(len(states)):
            layer_states = [f[j] for f in finals]
            if len(layer_states) == 1:
                stacked.append(layer_states[0].reshape((1, *layer_states[0].shape)))
            else:
                stacked.append(F.stack(layer_states, axis=0))
        return out, stacked

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"


class RNN(_Recurrent):
    """Elman RNN: h_t = act(x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh), act tanh or relu.

    Input (seq, batch, input_size), or (batch, seq, input_size) with batch_first;
    h0 (num_layers, batch, hidden). Returns (output, h_n): output (seq, batch, hidden)
    (batch first with batch_first), h_n (num_layers, batch, hidden). Each layer is one
    whole-sequence op (``F.rnn``); ``dropout`` applies to every layer's output but the
    last while training, as PyTorch's.
    """

    gates = 1

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        dropout=0.0,
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout)
        self.nonlinearity = nonlinearity

    def forward(self, x, h0=None):
        x = self._check_input(x)
        h0s = self._initial(h0, x.shape[1], "h0", x)

        def step(x, states, k):
            y, h = F.rnn(x, states[0], *self._weights(k), nonlinearity=self.nonlinearity)
            return y, (h,)

        out, (h_n,) = self._layers(x, [h0s], step)
        return out, h_n


class LSTM(_Recurrent):
    """LSTM with gates in PyTorch's order i, f, g, o.

    Input (seq, batch, input_size), or batch first; (h0, c0) each (num_layers, batch,
    hidden). Returns (output, (h_n, c_n)) with PyTorch's shapes. Each layer is one
    whole-sequence op (``F.lstm``); ``dropout`` as in PyTorch.
    """

    gates = 4

    def forward(self, x, state=None):
        h0, c0 = (None, None) if state is None else state
        x = self._check_input(x)
        batch = x.shape[1]
        h0s = self._initial(h0, batch, "h0", x)
        c0s = self._initial(c0, batch, "c0", x)

        def step(x, states, k):
            y, h, c = F.lstm(x, states[0], states[1], *self._weights(k))
            return y, (h, c)

        out, (h_n, c_n) = self._layers(x, [h0s, c0s], step)
        return out, (h_n, c_n)
