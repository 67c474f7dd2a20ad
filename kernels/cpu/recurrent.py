"""Recurrent cells and the steps of whole-sequence layers: the nonlinearities and the state
update fused into one pass after the recurrent product ``H @ W_hh.T`` (run on BLAS by the
launcher), and one pass back. The cells serve ``rnn_cell``/``lstm_cell``; the ``*_step``
kernels are one time step of ``rnn``/``lstm``, whose loop over time is in ``launch``.

LSTM gates are in PyTorch's order i, f, g, o along the 4*hidden axis; ``acts`` keeps the
activated gates for the backward, ``tanh_c`` the tanh of the new cell state. Each row is
cut into per-gate views indexed from 0 (so Numba drops its negative-index check and the
loops vectorise).
"""

from __future__ import annotations

from gpunn.kernels.cpu._jit import kernel
from gpunn.kernels.cpu._types import A1, A2, INT
from gpunn.kernels.cpu._vmath import select, vsigmoid, vtanh
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


# ---------------------------------------------------------------------- whole sequences
# One step of a whole-sequence layer (the backend runs the loop over time, the products on
# BLAS, and hands each step's slices of buffers it allocated once per call). ``bias`` is
# b_ih + b_hh (zeros without bias), added here rather than in a pass of its own.


@kernel(parallel=True)
def rnn_forward_step(xw, hw, bias, act, h):
    """h (B, H) = act(xw + hw + bias); xw = x_t @ W_ih.T, hw = h_{t-1} @ W_hh.T; act is an
    activation code (1 relu, 3 tanh)."""
    b_, hidden = h.shape
    zero = h.dtype.type(0)
    for r in prange(b_):
        x = xw[r]
        y = hw[r]
        out = h[r]
        if act == 1:
            for j in range(hidden):
                v = x[j] + y[j] + bias[j]
                out[j] = select(v < zero, zero, v)
        else:
            for j in range(hidden):
                out[j] = vtanh(x[j] + y[j] + bias[j])


@kernel(parallel=True)
def rnn_backward_step(dy, dh, h, act, dz):
    """dz (B, H) = (dy + dh) * act'(z), from h = act(z): the gradient of the step's
    pre-activation; dy is the output's gradient, dh the one coming back from step t+1."""
    b_, hidden = h.shape
    zero = h.dtype.type(0)
    one = h.dtype.type(1)
    for r in prange(b_):
        g = dy[r]
        d = dh[r]
        y = h[r]
        out = dz[r]
        if act == 1:
            for j in range(hidden):
                out[j] = select(y[j] > zero, g[j] + d[j], zero)
        else:
            for j in range(hidden):
                out[j] = (g[j] + d[j]) * (one - y[j] * y[j])


@kernel(parallel=True)
def lstm_forward_step(z, hw, bias, c_prev, c, h, tanh_c):
    """z (B, 4H) holds x_t @ W_ih.T on entry and the activated gates on exit: those of
    z + hw + bias (i, f, o sigmoid, g tanh); c = f*c_prev + i*g; tanh_c = tanh(c);
    h = o*tanh_c. Outputs other than z must not overlap inputs."""
    b_, hidden = c.shape
    for r in prange(b_):
        a = z[r]
        y = hw[r]
        for k in (0, 1, 3):  # sigmoid gates i, f, o
            ak = a[k * hidden : (k + 1) * hidden]
            yk, bk = y[k * hidden :], bias[k * hidden :]
            for j in range(hidden):
                ak[j] = vsigmoid(ak[j] + yk[j] + bk[j])
        a_g = a[2 * hidden : 3 * hidden]
        y_g, b_g = y[2 * hidden :], bias[2 * hidden :]
        for j in range(hidden):  # cell candidate g
            a_g[j] = vtanh(a_g[j] + y_g[j] + b_g[j])
        a_i, a_f, a_o = a[:hidden], a[hidden : 2 * hidden], a[3 * hidden :]
        cp = c_prev[r]
        cn = c[r]
        tc = tanh_c[r]
        hn = h[r]
        for j in range(hidden):
            v = a_f[j] * cp[j] + a_i[j] * a_g[j]
            cn[j] = v
            t = vtanh(v)
            tc[j] = t
            hn[j] = a_o[j] * t


@kernel(parallel=True)
def lstm_backward_step(dy, dh, dc, c_prev, acts, tanh_c, dg, dc_prev):
    """With dh_t = dy + dh (output gradient plus the one from step t+1) and
    dC = dc + dh_t * o * (1 - tanh_c^2): dg (B, 4H) = [dC g i (1-i), dC c_prev f (1-f),
    dC i (1-g^2), dh_t tanh_c o (1-o)]; dc_prev = dC * f. Outputs must not overlap inputs."""
    b_, hidden = c_prev.shape
    one = c_prev.dtype.type(1)
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
        g_y = dy[r]
        g_h = dh[r]
        g_c = dc[r]
        cp = c_prev[r]
        tc = tanh_c[r]
        prev = dc_prev[r]
        for j in range(hidden):
            i_ = a_i[j]
            f_ = a_f[j]
            g_ = a_g[j]
            o_ = a_o[j]
            t = tc[j]
            d_h = g_y[j] + g_h[j]
            d_c = g_c[j] + d_h * o_ * (one - t * t)
            d_i[j] = d_c * g_ * i_ * (one - i_)
            d_f[j] = d_c * cp[j] * f_ * (one - f_)
            d_g[j] = d_c * i_ * (one - g_ * g_)
            d_o[j] = d_h * t * o_ * (one - o_)
            prev[j] = d_c * f_


#: Argument types of every kernel here, per call form (``gpunn warmup`` compiles them
#: for each float dtype; ``{T}`` is the dtype).
SIGNATURES = {
    "rnn_cell_forward": [(A1, A1, A1)],
    "rnn_cell_backward": [(A1, A1, A1)],
    "lstm_cell_forward": [(A2, A2, A2, A2, A2, A2, A2)],
    "lstm_cell_backward": [(A2, A2, A2, A2, A2, A2, A2)],
    "rnn_forward_step": [(A2, A2, A1, INT, A2)],
    "rnn_backward_step": [(A2, A2, A2, INT, A2)],
    "lstm_forward_step": [(A2, A2, A1, A2, A2, A2, A2)],
    "lstm_backward_step": [(A2, A2, A2, A2, A2, A2, A2, A2)],
}
