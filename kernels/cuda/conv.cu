// Convolution as im2col + one cuBLAS GEMM, NCHW, over chunks of images: the launcher walks
// a batch in chunks whose column matrix stays within a memory budget and whose every index
// fits in 32 bits (conv2d_chunks), and hands each kernel the chunk's first image, so these
// kernels use int arithmetic and N below is the chunk's image count.
//
// Convolution layout. For X (N, C, H, W) and weight (K, C, kh, kw), the column matrix is
//   col (C*kh*kw, N*P),  P = OH*OW,  col[(c*kh + i)*kw + j, n*P + oh*OW + ow]
//     = X[n, c, oh*sh - ph + i, ow*sw - pw + j]   (0 outside the image),
// so W.reshape(K, C*kh*kw) @ col is the output as (K, N*P), which conv2d_output turns
// into (N, K, OH, OW) with the bias added. The backward turns dY into (K, N*P)
// (conv2d_grad_output), takes dW = dYt @ col.T and dcol = W.T @ dYt from cuBLAS, and
// gathers dX from dcol (conv2d_col2im): each input element sums the column entries that
// read it, in kernel-offset order, with no atomics, so results are deterministic.

#include "common.cuh"

template <typename T>
__global__ void conv2d_im2col(const T* __restrict__ X, T* __restrict__ col, int N, int C, int H,
                              int W, int kh, int kw, int sh, int sw, int ph, int pw, int OH,
                              int OW) {
  const int P = OH * OW;
  const int NP = N * P;
  const int total = C * kh * kw * NP;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int q = idx % NP;
    const int row = idx / NP;
    const int n = q / P;
    const int p = q - n * P;
    const int oh = p / OW;
    const int ow = p - oh * OW;
    const int j = row % kw;
    const int i = (row / kw) % kh;
    const int c = row / (kw * kh);
    const int h = oh * sh - ph + i;
    const int w = ow * sw - pw + j;
    col[idx] = (h >= 0 && h < H && w >= 0 && w < W) ? X[((n * C + c) * H + h) * W + w] : T(0);
  }
}

// Y (N, K, P) from the GEMM's (K, N*P), plus bias[k] when has_bias.
template <typename T>
__global__ void conv2d_output(const T* __restrict__ Ymat, const T* __restrict__ bias,
                              T* __restrict__ Y, int N, int K, int P, int has_bias) {
  const int total = N * K * P;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int p = idx % P;
    const int k = (idx / P) % K;
    const int n = idx / (P * K);
    T y = Ymat[k * (N * P) + n * P + p];
    if (has_bias) y = y + bias[k];
    Y[idx] = y;
  }
}

// dYt (K, N*P) from dY (N, K, P): the layout the weight and input GEMMs need.
template <typename T>
__global__ void conv2d_grad_output(const T* __restrict__ dY, T* __restrict__ dYt, int N, int K,
                                   int P) {
  const int total = N * K * P;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int p = idx % P;
    const int k = (idx / P) % K;
    const int n = idx / (P * K);
    dYt[k * (N * P) + n * P + p] = dY[idx];
  }
}

// dX[n, c, h, w] = sum over kernel offsets (i, j) whose window covers (h, w) of
// dcol[(c*kh + i)*kw + j, n*P + oh*OW + ow].
template <typename T>
__global__ void conv2d_col2im(const T* __restrict__ dcol, T* __restrict__ dX, int N, int C,
                              int H, int W, int kh, int kw, int sh, int sw, int ph, int pw,
                              int OH, int OW) {
  const int P = OH * OW;
  const int NP = N * P;
  const int total = N * C * H * W;
  GPUNN_GRID_STRIDE32(idx, total) {
    const int w = idx % W;
    const int h = (idx / W) % H;
    const int c = (idx / (W * H)) % C;
    const int n = idx / (W * H * C);
    T acc = T(0);
    for (int i = 0; i < kh; ++i) {
      const int y = h + ph - i;
      if (y < 0 || y % sh != 0 || y / sh >= OH) continue;
      const int oh = y / sh;
      for (int j = 0; j < kw; ++j) {
        const int x = w + pw - j;
        if (x < 0 || x % sw != 0 || x / sw >= OW) continue;
        acc += dcol[((c * kh + i) * kw + j) * NP + n * P + oh * OW + x / sw];
      }
    }
    dX[idx] = acc;
  }
}
