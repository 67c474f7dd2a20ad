"""Recurrent cells: the nonlinearities and the state update fused into one pass after
the recurrent product ``H @ W_hh.T`` (run on BLAS by the backend), and one pass back.

LSTM gates are in PyTorch's order i, f, g, o along the 4*hidden axis; ``acts`` keeps the
activated gates for the backward, ``tanh_c`` the tanh of the new cell state.
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._vmath import vsigmoid, vtanh
from numba import prange


@kernel(parallel=True)
def rnn_cell_forward(xw, hw, h_new):
    """h_new = tanh(xw + hw); hw = H @ W_hh.T. 1-D arrays (h_new may be hw itself)."""
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
    h_new = o*tanh_c. acts may be hw itself (overwritten in place)."""
    b_, hidden = c.shape
    for r in prange(b_):
        a = acts[r]
        x = xw[r]
        h = hw[r]
        for j in range(hidden):
            a[j] = vsigmoid(x[j] + h[j])
        for j in range(hidden, 2 * hidden):
            a[j] = vsigmoid(x[j] + h[j])
        for j in range(2 * hidden, 3 * hidden):
            a[j] = vtanh(x[j] + h[j])
        for j in range(3 * hidden, 4 * hidden):
            a[j] = vsigmoid(x[j] + h[j])
        cr = c[r]
        cn = c_new[r]
        tc = tanh_c[r]
        hn = h_new[r]
        for j in range(hidden):
            v = a[hidden + j] * cr[j] + a[j] * a[2 * hidden + j]
            cn[j] = v
            t = vtanh(v)
            tc[j] = t
            hn[j] = a[3 * hidden + j] * t


@kernel(parallel=True)
def lstm_cell_backward(dh, dc, c, acts, tanh_c, dg, dc_prev):
    """dg (B, 4H): gradient of the pre-activation gates; dc_prev = dC * f (skipped when
    empty), with dC = dc + dh * o * (1 - tanh_c^2)."""
    b_, hidden = c.shape
    one = c.dtype.type(1)
    for r in prange(b_):
        a = acts[r]
        out = dg[r]
        g_h = dh[r]
        g_c = dc[r]
        cr = c[r]
        tc = tanh_c[r]
        for j in range(hidden):
            i_ = a[j]
            f_ = a[hidden + j]
            g_ = a[2 * hidden + j]
            o_ = a[3 * hidden + j]
            t = tc[j]
            d_c = g_c[j] + g_h[j] * o_ * (one - t * t)
            out[j] = d_c * g_ * i_ * (one - i_)
            out[hidden + j] = d_c * cr[j] * f_ * (one - f_)
            out[2 * hidden + j] = d_c * i_ * (one - g_ * g_)
            out[3 * hidden + j] = g_h[j] * t * o_ * (one - o_)
            if dc_prev.size:
                dc_prev[r, j] = d_c * f_
