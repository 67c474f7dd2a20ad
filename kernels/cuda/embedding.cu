// Embedding lookup and its gradient.
//
// The backward is a per-row reduction over the positions sorted by index (equal indices in
// increasing position): one thread per (row, column) adds its row's positions in order, so
// the result is the same on every run and equals the reference's scatter-add, with no
// atomics.

#include "common.cuh"

// Y[p, e] = W[indices[p], e]: indices (P,) in [0, V), W (V, E), Y (P, E). An index outside
// [0, V) gives a row of NaN and is reported through ``error`` (error[0] = 2, error[1] = the
// index, error[2] = V), the host-mapped slots the backend reads at its next synchronisation.
template <typename T>
__global__ void embedding_forward(const long long* __restrict__ indices, const T* __restrict__ W,
                                  T* __restrict__ Y, long long positions, long long e,
                                  long long rows, long long* __restrict__ error) {
  GPUNN_GRID_STRIDE(i, positions * e) {
    const long long r = indices[i / e];
    if (r < 0 || r >= rows) {
      error[1] = r;
      error[2] = rows;
      error[0] = 2;
      Y[i] = gpunn::quiet_nan<T>();
    } else {
      Y[i] = W[r * e + i % e];
    }
  }
}

// dW (V, E), overwritten: row r is the sum of dY[order[q]] for q in [bounds[r], bounds[r+1]),
// the positions holding index r in increasing order; row ``padding_idx`` (-1: none) is zero.
template <typename T>
__global__ void embedding_backward(const T* __restrict__ dY, const long long* __restrict__ order,
                                   const long long* __restrict__ bounds, T* __restrict__ dW,
                                   long long rows, long long e, long long padding_idx) {
  GPUNN_GRID_STRIDE(i, rows * e) {
    const long long r = i / e, k = i % e;
    T acc = T(0);
    if (r != padding_idx) {
      for (long long q = bounds[r]; q < bounds[r + 1]; ++q) acc += dY[order[q] * e + k];
    }
    dW[i] = acc;
  }
}
