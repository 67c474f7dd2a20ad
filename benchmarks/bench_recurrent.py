"""One step of the recurrent cells, forward and backward. The input projection (X @ W_ih.T
plus both biases) is done outside the cell for the whole sequence, as gpunn's RNN and LSTM
layers do, so the cell's input is XW.

Sizes are "batch x hidden": "64x256" is the reference LSTM workload's cell.
"""

from .common import ALL, OpBenchmark, dtypes, size_names

SIZES = {"64x256": (64, 256), "512x1024": (512, 1024)}
LARGE = ("512x1024",)


class RNNCell(OpBenchmark):
    """H' = tanh(XW + H @ W_hh.T)."""

    op = "rnn_cell"
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        b, h = spec
        return [
            rng.standard_normal((b, h)).astype(dtype),
            rng.standard_normal((b, h)).astype(dtype),
            (rng.standard_normal((h, h)) / h**0.5).astype(dtype),
        ]

    def torch_forward(self, torch, xw, h, w_hh):
        return torch.tanh(xw + h @ w_hh.T)


class LSTMCell(OpBenchmark):
    """Gates i, f, g, o from XW + H @ W_hh.T; C' = f*C + i*g; H' = o*tanh(C').

    The peer writes the same cell out in eager PyTorch ops (its fused cell would also
    do the input projection, which gpunn does outside the cell)."""

    op = "lstm_cell"
    sizes = SIZES
    params = [ALL, size_names(SIZES, LARGE), dtypes()]

    def inputs(self, rng, spec, dtype):
        b, h = spec
        return [
            rng.standard_normal((b, 4 * h)).astype(dtype),
            rng.standard_normal((b, h)).astype(dtype),
            rng.standard_normal((b, h)).astype(dtype),
            (rng.standard_normal((4 * h, h)) / h**0.5).astype(dtype),
        ]

    def torch_forward(self, torch, xw, h, c, w_hh):
        i, f, g, o = (xw + h @ w_hh.T).chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        return o * torch.tanh(c_new), c_new
