// Recurrent cells, fused: the recurrent product H @ W_hh.T comes from cuBLAS, then ONE
// kernel applies every gate nonlinearity and the state update (forward), or every gate
// derivative (backward). For the cells (rnn_cell, lstm_cell) the input projection is one
// GEMM outside the cell, so XW already holds x_t @ W_ih.T + b_ih + b_hh; the whole-sequence
// step kernels at the end of this file add the biases themselves.

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

// The LSTM's gate gradients at one element, shared by the cell and the sequence step: with
// the activated gates i, f, g, o, tc = tanh(C), the hidden state's gradient dh and the cell
// gradient from later dc_next, writes dZ[row + k*hidden] for the gates i, f, g, o
//   dc = dc_next + dh * o * (1 - tc^2)
//   dZ = [dc g i (1-i), dc C_prev f (1-f), dc i (1-g^2), dh tc o (1-o)]
// and returns dc (dC_prev = dc * f).
template <typename T>
__device__ __forceinline__ T lstm_gate_grads(T i, T f, T g, T o, T tc, T dh, T dc_next,
                                             T c_prev, T* __restrict__ dZ, long long row,
                                             long long hidden) {
  const T dc = dc_next + dh * o * (T(1) - tc * tc);
  dZ[row] = dc * g * i * (T(1) - i);
  dZ[row + hidden] = dc * c_prev * f * (T(1) - f);
  dZ[row + 2 * hidden] = dc * i * (T(1) - g * g);
  dZ[row + 3 * hidden] = dh * tc * o * (T(1) - o);
  return dc;
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
    const T dc = lstm_gate_grads(i, f, g, o, tc, dHn[idx], dCn[idx], C[idx], dG, row, hidden);
    if (need_c) dCp[idx] = dc * f;
  }
}

// ---------------------------------------------------------------------------------------
// Whole-sequence layers: one step of the time loop each. The backend runs the input
// projection of all steps as one GEMM into a gate buffer Z (T, B, G*H) allocated once per
// call, and per step one cuBLAS GEMM (the recurrent product HW = h_{t-1} @ W_hh.T, or
// dH = dZ_t @ W_hh backward) plus one of these kernels. Biases are added here (has_bias 0:
// b_ih and b_hh are not read). States live in (T+1, B, H) buffers whose row 0 is the
// initial state; the kernels get the step's slices.

// h (B, H) = act(xw + hw + b_ih + b_hh); act is ACT_TANH or ACT_RELU.
template <typename T>
__global__ void rnn_forward_step(const T* __restrict__ XW, const T* __restrict__ HW,
                                 const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                 T* __restrict__ H, long long batch, long long hidden,
                                 int has_bias, int act) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long j = idx % hidden;
    T z = XW[idx] + HW[idx];
    if (has_bias) z = (z + b_ih[j]) + b_hh[j];  // the reference's order of additions
    H[idx] = gpunn::activate(z, act);
  }
}

// dZ (B, H) = (dY + dH) * act'(z), from H = act(z): dY is the output's gradient at this
// step, dH the gradient that came back from step t+1.
template <typename T>
__global__ void rnn_backward_step(const T* __restrict__ dY, const T* __restrict__ dH,
                                  const T* __restrict__ H, T* __restrict__ dZ, long long n,
                                  int act) {
  GPUNN_GRID_STRIDE(idx, n) { dZ[idx] = gpunn::activation_grad(dY[idx] + dH[idx], H[idx], act); }
}

// One LSTM step, gates i, f, g, o. Z (B, 4H) holds x_t @ W_ih.T on entry and the activated
// gates on exit (each thread reads and writes its own four entries). HW (B, 4H) is
// h_{t-1} @ W_hh.T; C_prev, C, H (B, H).
//   i, f, o = sigmoid; g = tanh; C = f*C_prev + i*g; H = o*tanh(C).
template <typename T>
__global__ void lstm_forward_step(T* __restrict__ Z, const T* __restrict__ HW,
                                  const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                  const T* __restrict__ C_prev, T* __restrict__ C,
                                  T* __restrict__ H, long long batch, long long hidden,
                                  int has_bias) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 4 * hidden + j;
    T zi = Z[row] + HW[row];
    T zf = Z[row + hidden] + HW[row + hidden];
    T zg = Z[row + 2 * hidden] + HW[row + 2 * hidden];
    T zo = Z[row + 3 * hidden] + HW[row + 3 * hidden];
    if (has_bias) {  // the reference's order of additions
      zi = (zi + b_ih[j]) + b_hh[j];
      zf = (zf + b_ih[j + hidden]) + b_hh[j + hidden];
      zg = (zg + b_ih[j + 2 * hidden]) + b_hh[j + 2 * hidden];
      zo = (zo + b_ih[j + 3 * hidden]) + b_hh[j + 3 * hidden];
    }
    const T i = gpunn::sigmoid(zi);
    const T f = gpunn::sigmoid(zf);
    const T g = gpunn::tanh_(zg);
    const T o = gpunn::sigmoid(zo);
    const T c = f * C_prev[idx] + i * g;
    C[idx] = c;
    H[idx] = o * gpunn::tanh_(c);
    Z[row] = i;
    Z[row + hidden] = f;
    Z[row + 2 * hidden] = g;
    Z[row + 3 * hidden] = o;
  }
}

// The step backward. A (B, 4H) the activated gates saved by the forward; C_prev, C (B, H);
// dY the output's gradient at this step, dH the gradient from step t+1; dC (B, H) holds
// the cell gradient from step t+1 on entry and dC_prev on exit. With dh = dY + dH and
//   dc = dC + dh * o * (1 - tanh(C)^2):
//   dZ = [dc g i (1-i), dc C_prev f (1-f), dc i (1-g^2), dh tanh(C) o (1-o)]; dC_prev = dc f.
template <typename T>
__global__ void lstm_backward_step(const T* __restrict__ dY, const T* __restrict__ dH,
                                   T* __restrict__ dC, const T* __restrict__ A,
                                   const T* __restrict__ C_prev, const T* __restrict__ C,
                                   T* __restrict__ dZ, long long batch, long long hidden) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 4 * hidden + j;
    const T i = A[row];
    const T f = A[row + hidden];
    const T g = A[row + 2 * hidden];
    const T o = A[row + 3 * hidden];
    const T tc = gpunn::tanh_(C[idx]);
    const T dh = dY[idx] + dH[idx];
    dC[idx] = lstm_gate_grads(i, f, g, o, tc, dh, dC[idx], C_prev[idx], dZ, row, hidden) * f;
  }
}

// One GRU step, gates r, z, n. Z (B, 3H) holds x_t @ W_ih.T on entry and the gates r, z, n
// on exit (each thread reads and writes its own three entries). HW (B, 3H) is
// h_{t-1} @ W_hh.T; H_prev, H, HN (B, H). With gi = Z + b_ih and gh = HW + b_hh:
//   r, z = sigmoid(gi + gh); HN = gh_n; n = tanh(gi_n + r*HN); H = (1-z)*n + z*H_prev.
// b_hn stays inside r * (...), so the two biases are added apart.
template <typename T>
__global__ void gru_forward_step(T* __restrict__ Z, const T* __restrict__ HW,
                                 const T* __restrict__ b_ih, const T* __restrict__ b_hh,
                                 const T* __restrict__ H_prev, T* __restrict__ H,
                                 T* __restrict__ HN, long long batch, long long hidden,
                                 int has_bias) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 3 * hidden + j;
    T ir = Z[row], iz = Z[row + hidden], in = Z[row + 2 * hidden];
    T hr = HW[row], hz = HW[row + hidden], hn = HW[row + 2 * hidden];
    if (has_bias) {
      ir = ir + b_ih[j];
      iz = iz + b_ih[j + hidden];
      in = in + b_ih[j + 2 * hidden];
      hr = hr + b_hh[j];
      hz = hz + b_hh[j + hidden];
      hn = hn + b_hh[j + 2 * hidden];
    }
    const T r = gpunn::sigmoid(ir + hr);
    const T z = gpunn::sigmoid(iz + hz);
    const T g = gpunn::tanh_(in + r * hn);
    H[idx] = (T(1) - z) * g + z * H_prev[idx];
    HN[idx] = hn;
    Z[row] = r;
    Z[row + hidden] = z;
    Z[row + 2 * hidden] = g;
  }
}

// The step backward. A (B, 3H) the gates r, z, n saved by the forward; H_prev, HN (B, H);
// dY the output's gradient at this step, dH the product dGh_{t+1} @ W_hh; dHZ (B, H) holds
// dh_{t+1} * z_{t+1} on entry and dh_t * z_t on exit. With dh = dY + dH + dHZ:
//   dn = dh (1-z) (1-n^2); dz = dh (H_prev - n) z (1-z); dr = dn HN r (1-r);
//   dGi = [dr, dz, dn] (the input side's gate gradient); dGh = [dr, dz, dn r].
template <typename T>
__global__ void gru_backward_step(const T* __restrict__ dY, const T* __restrict__ dH,
                                  T* __restrict__ dHZ, const T* __restrict__ A,
                                  const T* __restrict__ H_prev, const T* __restrict__ HN,
                                  T* __restrict__ dGi, T* __restrict__ dGh, long long batch,
                                  long long hidden) {
  const long long n = batch * hidden;
  GPUNN_GRID_STRIDE(idx, n) {
    const long long b = idx / hidden;
    const long long j = idx - b * hidden;
    const long long row = b * 3 * hidden + j;
    const T r = A[row];
    const T z = A[row + hidden];
    const T g = A[row + 2 * hidden];
    const T dh = dY[idx] + dH[idx] + dHZ[idx];
    const T dn = dh * (T(1) - z) * (T(1) - g * g);
    const T dz = dh * (H_prev[idx] - g) * z * (T(1) - z);
    const T dr = dn * HN[idx] * r * (T(1) - r);
    dGi[row] = dr;
    dGi[row + hidden] = dz;
    dGi[row + 2 * hidden] = dn;
    dGh[row] = dr;
    dGh[row + hidden] = dz;
    dGh[row + 2 * hidden] = dn * r;
    dHZ[idx] = dh * z;
  }
}
