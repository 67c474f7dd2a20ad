// Embedding lookup and its gradient.
//
// The backward is a per-row reduction over the positions sorted by index (equal indices in
// increasing position): one thread per (row, column) adds its row's positions in order, so
// the result is the same on every run and equals the reference's scatter-add, with no
// atomics on floats. The sort is gpunn's own (embedding_backward_order), so the backward
// runs no library call and a CUDA graph can capture it.

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

// The positions of ``indices`` (P,) sorted by index, equal indices in increasing position,
// as a counting sort in ONE block (blockDim.x <= EMBEDDING_TILE threads): order (P,) the
// positions, bounds (rows + 1,) where row r's run starts (bounds[rows] = P); cursor (rows,)
// scratch. Indices outside [0, rows) (the forward reported them) are left out. Steps: count
// each row's positions (integer atomics: the counts do not depend on their order), an
// exclusive scan of the counts, then the positions placed tile by tile, each at its row's
// cursor plus the number of equal indices before it in its tile. T is not read.
#define EMBEDDING_TILE 256
template <typename T>
__global__ void embedding_backward_order(const long long* __restrict__ indices,
                                         long long* __restrict__ order,
                                         long long* __restrict__ bounds,
                                         long long* __restrict__ cursor, long long positions,
                                         long long rows) {
  __shared__ long long tile[EMBEDDING_TILE];
  const long long t = threadIdx.x, threads = blockDim.x;
  for (long long r = t; r < rows; r += threads) cursor[r] = 0;
  __syncthreads();
  for (long long p = t; p < positions; p += threads) {
    const long long r = indices[p];
    if (r >= 0 && r < rows) atomicAdd((unsigned long long*)&cursor[r], 1ULL);
  }
  __syncthreads();
  // exclusive scan: thread t sums its chunk of rows, thread 0 scans the sums
  const long long chunk = (rows + threads - 1) / threads;
  const long long r0 = t * chunk < rows ? t * chunk : rows;
  const long long r1 = r0 + chunk < rows ? r0 + chunk : rows;
  long long sum = 0;
  for (long long r = r0; r < r1; ++r) sum += cursor[r];
  tile[t] = sum;
  __syncthreads();
  if (t == 0) {
    long long run = 0;
    for (long long k = 0; k < threads; ++k) {
      const long long s = tile[k];
      tile[k] = run;
      run += s;
    }
    bounds[rows] = run;
  }
  __syncthreads();
  long long start = tile[t];
  for (long long r = r0; r < r1; ++r) {
    const long long count = cursor[r];
    bounds[r] = start;
    cursor[r] = start;
    start += count;
  }
  __syncthreads();
  for (long long base = 0; base < positions; base += threads) {
    const long long p = base + t;
    const long long r = p < positions ? indices[p] : -1;
    tile[t] = r;
    __syncthreads();
    const bool valid = r >= 0 && r < rows;
    long long before = 0;
    bool last = true;
    if (valid) {
      const long long n = positions - base < threads ? positions - base : threads;
      for (long long k = 0; k < n; ++k) {
        if (tile[k] == r) {
          if (k < t) ++before;
          if (k > t) last = false;
        }
      }
      order[cursor[r] + before] = p;
    }
    __syncthreads();
    if (valid && last) cursor[r] += before + 1;
    __syncthreads();
  }
}
