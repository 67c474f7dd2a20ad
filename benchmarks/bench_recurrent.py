"""The recurrent layers: one step of the cells, and whole layers over a sequence.

Cells, forward and backward: the input projection (X @ W_ih.T plus both biases) is done
outside the cell for the whole sequence, as gpunn's RNN and LSTM layers do, so the cell's
input is XW. Sizes are "batch x hidden": "64x256" is the reference LSTM workload's cell.

Layers (``nn.RNN``, ``nn.LSTM`` and PyTorch's), forward and forward + backward over a
sequence, through the public layer API (whatever ops the layer uses inside): batch 64,
input 128, sequence length T in {35, 100} and hidden size in {256, 512}; "T35-h256" is the
reference workloads' layer.
"""

import numpy as np

import gpunn

from .common import ALL, PEERS, TIMER, OpBenchmark, Peer, backend_or_skip, dtypes, rng, size_names

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


# name -> (T, batch, input, hidden)
LAYER_SIZES = {
    "T35-h256": (35, 64, 128, 256),
    "T100-h256": (100, 64, 128, 256),
    "T35-h512": (35, 64, 128, 512),
    "T100-h512": (100, 64, 128, 512),
}
LAYER_LARGE = ("T100-h512",)


class _Layer:
    """One recurrent layer over a (T, batch, input) float32 sequence from h0 = 0."""

    cell = ""  # the layer's name in gpunn.nn and torch.nn
    params = [ALL, size_names(LAYER_SIZES, LAYER_LARGE)]
    param_names = ["backend", "size"]
    timeout = 300.0
    timer = staticmethod(TIMER)

    def setup(self, backend, size):
        t, b, n_in, hidden = LAYER_SIZES[size]
        r = rng()
        x = r.standard_normal((t, b, n_in)).astype(np.float32)
        dy = r.standard_normal((t, b, hidden)).astype(np.float32)
        if backend in PEERS:
            peer = Peer(backend)
            torch = peer.torch
            torch.manual_seed(0)
            layer = getattr(torch.nn, self.cell)(n_in, hidden).to(peer.device)
            X, dY = peer.tensor(x, grad=True), peer.tensor(dy)
            no_grad, self.sync = torch.no_grad, peer.synchronize
        else:
            be = backend_or_skip(backend)
            gpunn.manual_seed(0)
            with gpunn.use_backend(backend):
                layer = getattr(gpunn.nn, self.cell)(n_in, hidden)
                X, dY = gpunn.tensor(x, requires_grad=True), gpunn.tensor(dy)
            no_grad, self.sync = gpunn.no_grad, be.synchronize
        leaves = [X, *layer.parameters()]

        def forward():
            with no_grad():
                layer(X)

        def forward_backward():
            for leaf in leaves:
                leaf.grad = None
            out, _ = layer(X)
            out.backward(dY)

        self.forward, self.forward_backward = forward, forward_backward
        forward()  # warm-up: compile, allocate
        forward_backward()
        self.sync()

    def time_forward(self, backend, size):
        self.forward()
        self.sync()

    def time_forward_backward(self, backend, size):
        self.forward_backward()
        self.sync()


class RNNLayer(_Layer):
    """nn.RNN (tanh) over the sequence."""

    cell = "RNN"


class LSTMLayer(_Layer):
    """nn.LSTM over the sequence."""

    cell = "LSTM"
