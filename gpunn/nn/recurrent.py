"""RNN and LSTM layers with PyTorch's parameter names, shapes and conventions."""

from __future__ import annotations

import math

from gpunn import functional as F
from gpunn.errors import ShapeError
from gpunn.nn.module import Module, Parameter
from gpunn.tensor import uniform, zeros


class _Recurrent(Module):
    gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
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
        shape = (self.num_layers, batch, self.hidden_size)
        if state is None:
            return zeros(shape, dtype=like.dtype, backend=like.backend)
        if state.shape != shape:
            raise ShapeError(
                f"{type(self).__name__}: {name} must have shape {shape}, got {state.shape}"
            )
        return state

    def _projection(self, x, k):
        """x (T, B, n_in) -> x @ w_ih.T + b_ih + b_hh for every step at once: (T, B, gates*H)."""
        bias = None
        if self.bias:
            bias = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")
        return F.linear(x, getattr(self, f"weight_ih_l{k}"), bias)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"


class RNN(_Recurrent):
    """Elman RNN with tanh: h_t = tanh(x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh).

    Input (seq, batch, input_size), or (batch, seq, input_size) with batch_first;
    h0 (num_layers, batch, hidden). Returns (output, h_n): output (seq, batch, hidden)
    (batch first with batch_first), h_n (num_layers, batch, hidden).
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
    ):
        if nonlinearity != "tanh":
            raise ValueError(f"RNN: only nonlinearity='tanh' is supported, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first)

    def forward(self, x, h0=None):
        x = self._check_input(x)
        h0 = self._initial(h0, x.shape[1], "h0", x)
        finals = []
        for k in range(self.num_layers):
            xw = self._projection(x, k)
            w_hh = getattr(self, f"weight_hh_l{k}")
            h = h0[k]
            hs = []
            for xw_t in F.unstack(xw, 0):
                h = F.rnn_cell(xw_t, h, w_hh)
                hs.append(h)
            finals.append(h)
            x = F.stack(hs, axis=0)
        out = x.transpose(1, 0, 2) if self.batch_first else x
        return out, F.stack(finals, axis=0)


class LSTM(_Recurrent):
    """LSTM with gates in PyTorch's order i, f, g, o.

    Input (seq, batch, input_size), or batch first; (h0, c0) each (num_layers, batch,
    hidden). Returns (output, (h_n, c_n)) with PyTorch's shapes.
    """

    gates = 4

    def forward(self, x, state=None):
        x = self._check_input(x)
        h0, c0 = (None, None) if state is None else state
        h0 = self._initial(h0, x.shape[1], "h0", x)
        c0 = self._initial(c0, x.shape[1], "c0", x)
        h_finals, c_finals = [], []
        for k in range(self.num_layers):
            xw = self._projection(x, k)
            w_hh = getattr(self, f"weight_hh_l{k}")
            h, c = h0[k], c0[k]
            hs = []
            for xw_t in F.unstack(xw, 0):
                h, c = F.lstm_cell(xw_t, h, c, w_hh)
                hs.append(h)
            h_finals.append(h)
            c_finals.append(c)
            x = F.stack(hs, axis=0)
        out = x.transpose(1, 0, 2) if self.batch_first else x
        return out, (F.stack(h_finals, axis=0), F.stack(c_finals, axis=0))
