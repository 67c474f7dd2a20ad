// Inverted dropout on contiguous arrays of n elements, the mask drawn by splitmix64 (common.cuh).

#include "common.cuh"

// Inverted dropout: Y = X * scale where element i is kept (see dropout_keep), else 0. The
// mask is a function of (seed, i) alone, so the backward recomputes it instead of storing it.
template <typename T>
__global__ void dropout_forward(const T* __restrict__ X, T* __restrict__ Y, long long n,
                                unsigned long long seed, double p, T scale) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = X[i] * (gpunn::dropout_keep(seed, i, p) ? scale : T(0)); }
}

template <typename T>
__global__ void dropout_backward(const T* __restrict__ dY, T* __restrict__ dX, long long n,
                                 unsigned long long seed, double p, T scale) {
  GPUNN_GRID_STRIDE(i, n) { dX[i] = dY[i] * (gpunn::dropout_keep(seed, i, p) ? scale : T(0)); }
}
