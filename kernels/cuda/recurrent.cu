// Recurrent cells, fused: the recurrent product H @ W_hh.T comes from cuBLAS, then ONE
// kernel applies every gate nonlinearity and the state update (forward), or every gate
// derivative (backward). The input projections of all time steps are one GEMM outside
// the cell (gpunn.nn.LSTM), so XW already holds x_t @ W_ih.T + b_ih + b_hh.

#include "common.cuh"

// H_new = tanh(XW + HW), HW = H @ W_hh.T; all (B, hidden) contiguous.
template <typename T>
__global__ void rnn_cell_forward(const T* __restrict__ XW, const T* __restrict__ HW,
                                 T* __restrict__ Hn, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Hn[i] = gpunn::tanh_(XW[i] + HW[i]); }
}

// dZ = dH_new * (1 - H_new^2): the gradient of the pre-activation, which is also XW's.
template <typename T>
__global__ void rnn_cell_backward(const T* __restrict__ dHn, const T* __restrict__ Hn,
                                  T* __restrict__ dZ, long long n) {
  GPUNN_GRID_STRIDE(i, n) { dZ[i] = gpunn::activation_grad(dHn[i], Hn[i], gpunn::ACT_TANH); }
}

// One LSTM step, gates in PyTorch's order i, f, g, o. XW, HW (B, 4*hidden); C, Hn, Cn
// (B, hidden); S (5, B, hidden) keeps i, f, g, o and tanh(C_new) for the backward.
//   i, f, o = sigmoid; g = tanh; C_new = f*C + i*g; H_new = o*tanh(C_new).
template <typename T>
__global__ void lstm_cell_forward(const T* __restrict__ XW, const T* __restrict__ HW,
                                  const T* __restrict__ C, T* __restrict__ Hn,
                                  T* __restrict__ Cn, T* __restrict__ S, long long batch,
                                  long long hidden) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 4 * hidden + j;
    const T i = gpunn::sigmoid(XW[row] + HW[row]);
    const T f = gpunn::sigmoid(XW[row + hidden] + HW[row + hidden]);
    const T g = gpunn::tanh_(XW[row + 2 * hidden] + HW[row + 2 * hidden]);
    const T o = gpunn::sigmoid(XW[row + 3 * hidden] + HW[row + 3 * hidden]);
    const T c = f * C[idx] + i * g;
    const T tc = gpunn::tanh_(c);
    Cn[idx] = c;
    Hn[idx] = o * tc;
    S[idx] = i;
    S[n + idx] = f;
    S[2 * n + idx] = g;
    S[3 * n + idx] = o;
    S[4 * n + idx] = tc;
  }
}

// Gate gradients dG (B, 4*hidden) (also XW's gradient) and dC_prev (when need_c):
//   dC = dC_new + dH_new * o * (1 - tanh_C^2)
//   dG = [dC g i (1-i), dC C f (1-f), dC i (1-g^2), dH_new tanh_C o (1-o)]; dC_prev = dC f.
template <typename T>
__global__ void lstm_cell_backward(const T* __restrict__ dHn, const T* __restrict__ dCn,
                                   const T* __restrict__ C, const T* __restrict__ S,
                                   T* __restrict__ dG, T* __restrict__ dCp, long long batch,
                                   long long hidden, int need_c) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 4 * hidden + j;
    const T i = S[idx];
    const T f = S[n + idx];
    const T g = S[2 * n + idx];
    const T o = S[3 * n + idx];
    const T tc = S[4 * n + idx];
    const T dh = dHn[idx];
    const T dc = dCn[idx] + dh * o * (T(1) - tc * tc);
    dG[row] = dc * g * i * (T(1) - i);
    dG[row + hidden] = dc * C[idx] * f * (T(1) - f);
    dG[row + 2 * hidden] = dc * i * (T(1) - g * g);
    dG[row + 3 * hidden] = dh * tc * o * (T(1) - o);
    if (need_c) dCp[idx] = dc * f;
  }
}
