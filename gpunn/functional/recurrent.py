"""Recurrent ops. ``rnn`` and ``lstm`` run one layer over a whole sequence as one graph
node (what ``nn.RNN`` and ``nn.LSTM`` use). The cells are one step each, for users who
write their own recurrence: the input projection of all time steps is one ``linear``
outside the cell; a cell adds the recurrent product and applies the gates in one op."""

from __future__ import annotations

from gpunn.autograd import apply
from gpunn.errors import ShapeError
from gpunn.functional.checks import check_float


def _check_cell(op, xw, h, w_hh, gates):
    check_float(op, xw, h, w_hh)
    hidden = h.shape[-1]
    if (
        h.ndim != 2
        or w_hh.shape != (gates * hidden, hidden)
        or xw.shape != (h.shape[0], gates * hidden)
    ):
        raise ShapeError(
            f"{op}: expected xw (B, {gates}*H), h (B, H), w_hh ({gates}*H, H); got xw {xw.shape}, "
            f"h {h.shape}, w_hh {w_hh.shape}"
        )


def rnn_cell(xw, h, w_hh):
    """h' = tanh(xw + h @ w_hh.T). xw (B, H) holds x @ w_ih.T + b_ih + b_hh."""
    _check_cell("rnn_cell", xw, h, w_hh, 1)
    return apply("rnn_cell", xw, h, w_hh)


def lstm_cell(xw, h, c, w_hh):
    """One LSTM step (gates i, f, g, o). xw (B, 4H) holds x @ w_ih.T + b_ih + b_hh;
    h, c (B, H); w_hh (4H, H). Returns (h', c')."""
    _check_cell("lstm_cell", xw, h, w_hh, 4)
    check_float("lstm_cell", h, c)
    if c.shape != h.shape:
        raise ShapeError(f"lstm_cell: c of shape {c.shape} differs from h of shape {h.shape}")
    return apply("lstm_cell", xw, h, c, w_hh)


# ---------------------------------------------------------------------- whole sequences
def _check_sequence(op, x, states, w_ih, w_hh, b_ih, b_hh, gates):
    """X (T, B, I), each state (B, H), w_ih (G*H, I), w_hh (G*H, H), biases (G*H,) or None."""
    check_float(op, x, *states, w_ih, w_hh, b_ih, b_hh)
    if x.ndim != 3 or x.shape[0] < 1 or w_hh.ndim != 2:
        raise ShapeError(
            f"{op}: expected x (T, B, I) with T >= 1 and w_hh ({gates}*H, H); got x {x.shape}, "
            f"w_hh {w_hh.shape}"
        )
    t, b, i = x.shape
    hidden = w_hh.shape[1]
    rows = gates * hidden
    names = ("h0", "c0")[: len(states)]
    bad = [f"{n} {s.shape}" for n, s in zip(names, states) if s.shape != (b, hidden)]
    if w_hh.shape != (rows, hidden) or w_ih.shape != (rows, i):
        bad.append(f"w_ih {w_ih.shape}, w_hh {w_hh.shape}")
    for name, bias in (("b_ih", b_ih), ("b_hh", b_hh)):
        if bias is not None and bias.shape != (rows,):
            bad.append(f"{name} {bias.shape}")
    if bad:
        want = ", ".join(f"{n} ({b}, {hidden})" for n in names)
        raise ShapeError(
            f"{op}: x of shape {x.shape} with hidden size {hidden} needs {want}, "
            f"w_ih ({rows}, {i}), w_hh ({rows}, {hidden}), biases ({rows},); got " + "; ".join(bad)
        )


def rnn(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN layer over a whole sequence, as one graph node:
    h_t = act(x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh), act "tanh" or "relu".

    x (T, B, I); h0 (B, H); w_ih (H, I); w_hh (H, H); b_ih, b_hh (H,) or None.
    Returns (y, h_n): y (T, B, H) holds h_1 ... h_T, h_n (B, H) is h_T.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    _check_sequence("rnn", x, (h0,), w_ih, w_hh, b_ih, b_hh, 1)
    return apply("rnn", x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity)


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM layer over a whole sequence, as one graph node (gates i, f, g, o as
    PyTorch's): i, f, o = sigmoid, g = tanh of x_t @ w_ih.T + b_ih + h_{t-1} @ w_hh.T + b_hh;
    c_t = f*c_{t-1} + i*g; h_t = o*tanh(c_t).

    x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None.
    Returns (y, h_n, c_n): y (T, B, H) holds h_1 ... h_T; h_n, c_n (B, H).
    """
    _check_sequence("lstm", x, (h0, c0), w_ih, w_hh, b_ih, b_hh, 4)
    return apply("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh)
