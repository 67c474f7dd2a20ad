"""Recurrent cells: the nonlinearities and the state update fused into one pass after
the recurrent product ``H @ W_hh.T`` (run on BLAS by the backend), and one pass back.

LSTM gates are in PyTorch's order i, f, g, o along the 4*hidden axis; ``acts`` keeps the
activated gates for the backward, ``tanh_c`` the tanh of the new cell state. Each row is
cut into per-gate views indexed from 0 (so Numba drops its negative-index check and the
loops vectorise).
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2
from gpunn.kernels.cpu._vmath import vsigmoid, vtanh
from numba import prange


@kernel(parallel=True)
def rnn_cell_forward(xw, hw, h_new):
    """h_new = tanh(xw + hw); hw = H @ W_hh.T. 1-D arrays."""
    for i in prange(h_new.size):
        h_new[i] = vtanh(xw[i] + hw[i])


@kernel(parallel=True)
def rnn_cell_backward(dy, h_new, dz):
    """dz = dy * (1 - h_new^2), the gradient of the pre-activation. 1-D arrays."""
    one = dy.dtype.type(1)
    for i in prange(dz.size):
        dz[i] = dy[i] * (one - h_new[i] * h_new[i])


@kernel(parallel=True)
def lstm_cell_forward(xw, hw, c, acts, c_new, h_new, tanh_c):
    """acts (B, 4H) = activated gates of xw + hw; c_new = f*c + i*g; tanh_c = tanh(c_new);
    h_new = o*tanh_c. Outputs must not overlap inputs (the loops would not vectorise)."""
    b_, hidden = c.shape
    for r in prange(b_):
        a = acts[r]
        x = xw[r]
        h = hw[r]
        for k in (0, 1, 3):  # sigmoid gates i, f, o
            ak, xk, hk = a[k * hidden : (k + 1) * hidden], x[k * hidden :], h[k * hidden :]
            for j in range(hidden):
                ak[j] = vsigmoid(xk[j] + hk[j])
        a_g, x_g, h_g = a[2 * hidden : 3 * hidden], x[2 * hidden :], h[2 * hidden :]
        for j in range(hidden):  # cell candidate g
            a_g[j] = vtanh(x_g[j] + h_g[j])
        a_i, a_f, a_o = a[:hidden], a[hidden : 2 * hidden], a[3 * hidden :]
        cr = c[r]
        cn = c_new[r]
        tc = tanh_c[r]
        hn = h_new[r]
        for j in range(hidden):
            v = a_f[j] * cr[j] + a_i[j] * a_g[j]
            cn[j] = v
            t = vtanh(v)
            tc[j] = t
            hn[j] = a_o[j] * t


@kernel(parallel=True)
def lstm_cell_backward(dh, dc, c, acts, tanh_c, dg, dc_prev):
    """dg (B, 4H): gradient of the pre-activation gates; dc_prev = dC * f (skipped when
    empty), with dC = dc + dh * o * (1 - tanh_c^2)."""
    b_, hidden = c.shape
    one = c.dtype.type(1)
    for r in prange(b_):
        a = acts[r]
        a_i, a_f, a_g, a_o = (
            a[:hidden],
            a[hidden : 2 * hidden],
            a[2 * hidden : 3 * hidden],
            a[3 * hidden :],
        )
        out = dg[r]
        d_i, d_f, d_g, d_o = (
            out[:hidden],
            out[hidden : 2 * hidden],
            out[2 * hidden : 3 * hidden],
            out[3 * hidden :],
        )
        g_h = dh[r]
        g_c = dc[r]
        cr = c[r]
        tc = tanh_c[r]
        for j in range(hidden):
            i_ = a_i[j]
            f_ = a_f[j]
            g_ = a_g[j]
            o_ = a_o[j]
            t = tc[j]
            d_c = g_c[j] + g_h[j] * o_ * (one - t * t)
            d_i[j] = d_c * g_ * i_ * (one - i_)
            d_f[j] = d_c * cr[j] * f_ * (one - f_)
            d_g[j] = d_c * i_ * (one - g_ * g_)
            d_o[j] = g_h[j] * t * o_ * (one - o_)
        if dc_prev.size:
            prev = dc_prev[r]
            for j in range(hidden):
                t = tc[j]
                prev[j] = (g_c[j] + g_h[j] * a_o[j] * (one - t * t)) * a_f[j]


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "rnn_cell_forward": [(A1, A1, A1)],
    "rnn_cell_backward": [(A1, A1, A1)],
    "lstm_cell_forward": [(A2, A2, A2, A2, A2, A2, A2)],
    "lstm_cell_backward": [(A2, A2, A2, A2, A2, A2, A2)],
}
