"""Recurrent cells. The input projection of all time steps is one ``linear`` outside the
cell; a cell adds the recurrent product and applies the gates in one op."""

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
