// Inverted dropout on contiguous arrays of n elements, the mask drawn by splitmix64 (common.cuh).

#include "common.cuh"

// Inverted dropout: Y = X * scale where element i is kept (see dropout_keep), else 0. The
// mask is a function of (seed, i) alone, so the backward recomputes it instead of storing it.
// seed_slot: null, or the device word a captured step's replays refresh (gpunn::replayed).
template <typename T>
__global__ void dropout_forward(const T* __restrict__ X, T* __restrict__ Y, long long n,
                                unsigned long long seed,
                                const unsigned long long* __restrict__ seed_slot, double p,
                                T scale) {
  const unsigned long long s = gpunn::replayed(seed, seed_slot);
  GPUNN_GRID_STRIDE(i, n) { Y[i] = X[i] * (gpunn::dropout_keep(s, i, p) ? scale : T(0)); }
}

template <typename T>
__global__ void dropout_backward(const T* __restrict__ dY, T* __restrict__ dX, long long n,
                                 unsigned long long seed,
                                 const unsigned long long* __restrict__ seed_slot, double p,
                                 T scale) {
  const unsigned long long s = gpunn::replayed(seed, seed_slot);
  GPUNN_GRID_STRIDE(i, n) { dX[i] = dY[i] * (gpunn::dropout_keep(s, i, p) ? scale : T(0)); }
}
