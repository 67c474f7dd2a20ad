// The softmax family along the last axis of a contiguous (rows, cols) array, one warp per
// row (the launcher moves another axis last first), and cross-entropy fused with its
// log-softmax: one launch computes the per-row log-probabilities and the mean loss.

#include "common.cuh"

namespace gpunn {

// Row r handled by this thread's warp, stepping over the grid: warp-uniform, so the
// shuffles inside the loop always see the whole warp.
#define GPUNN_WARP_ROWS(r, rows)                                                         \
  for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < (rows); \
       r += ((long long)gridDim.x * blockDim.x) >> 5)

template <typename T> __device__ __forceinline__ T row_max(const T* x, long long cols, int lane) {
  T m = neg_inf<T>();
  for (long long c = lane; c < cols; c += 32) m = maximum(m, x[c]);
  return warp_max(m);
}

}  // namespace gpunn

// Y = exp(X - max) / sum(exp(X - max)) per row.
template <typename T>
__global__ void softmax_forward(const T* __restrict__ X, T* __restrict__ Y, long long rows,
                                long long cols) {
  const int lane = threadIdx.x & 31;
  GPUNN_WARP_ROWS(r, rows) {
    const T* x = X + r * cols;
    T* y = Y + r * cols;
    const T m = gpunn::row_max(x, cols, lane);
    T s = T(0);
    for (long long c = lane; c < cols; c += 32) {
      const T e = gpunn::exp_(x[c] - m);
      y[c] = e;
      s += e;
    }
    s = gpunn::warp_sum(s);
    for (long long c = lane; c < cols; c += 32) y[c] = y[c] / s;
  }
}

// dX = Y * (dY - sum(dY * Y)) per row.
template <typename T>
__global__ void softmax_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                                 T* __restrict__ dX, long long rows, long long cols) {
  const int lane = threadIdx.x & 31;
  GPUNN_WARP_ROWS(r, rows) {
    const long long base = r * cols;
    T dot = T(0);
    for (long long c = lane; c < cols; c += 32) dot += dY[base + c] * Y[base + c];
    dot = gpunn::warp_sum(dot);
    for (long long c = lane; c < cols; c += 32) dX[base + c] = Y[base + c] * (dY[base + c] - dot);
  }
}

// Y = (X - max) - log(sum(exp(X - max))) per row.
template <typename T>
__global__ void log_softmax_forward(const T* __restrict__ X, T* __restrict__ Y, long long rows,
                                    long long cols) {
  const int lane = threadIdx.x & 31;
  GPUNN_WARP_ROWS(r, rows) {
    const T* x = X + r * cols;
    const T m = gpunn::row_max(x, cols, lane);
    T s = T(0);
    for (long long c = lane; c < cols; c += 32) s += gpunn::exp_(x[c] - m);
    const T log_s = gpunn::log_(gpunn::warp_sum(s));
    for (long long c = lane; c < cols; c += 32) Y[r * cols + c] = (x[c] - m) - log_s;
  }
}

// dX = dY - exp(Y) * sum(dY) per row.
template <typename T>
__global__ void log_softmax_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                                     T* __restrict__ dX, long long rows, long long cols) {
  const int lane = threadIdx.x & 31;
  GPUNN_WARP_ROWS(r, rows) {
    const long long base = r * cols;
    T s = T(0);
    for (long long c = lane; c < cols; c += 32) s += dY[base + c];
    s = gpunn::warp_sum(s);
    for (long long c = lane; c < cols; c += 32) dX[base + c] = dY[base + c] - gpunn::exp_(Y[base + c]) * s;
  }
}

// loss[0] = -mean_r logp[r, labels[r]], with logp = log_softmax(Z) written for the backward.
// A label outside [0, cols) makes its row's term NaN and is reported through ``error``
// (error[0] = 1, error[1] = the label, error[2] = cols), host-mapped memory the backend reads at its next
// synchronisation, so no host round trip is needed to validate labels. ``partials`` (one
// slot per block) and ``counter`` (zero) serve the grid-wide sum (gpunn::grid_sum).
template <typename T>
__global__ void cross_entropy_forward(const T* __restrict__ Z, const long long* __restrict__ labels,
                                      T* __restrict__ logp, T* __restrict__ loss,
                                      T* __restrict__ partials, unsigned int* __restrict__ counter,
                                      long long rows, long long cols,
                                      long long* __restrict__ error) {
  const int lane = threadIdx.x & 31;
  T picked = T(0);  // this warp's sum of logp[r, labels[r]] (kept in lane 0)
  GPUNN_WARP_ROWS(r, rows) {
    const T* z = Z + r * cols;
    const T m = gpunn::row_max(z, cols, lane);
    T s = T(0);
    for (long long c = lane; c < cols; c += 32) s += gpunn::exp_(z[c] - m);
    const T log_s = gpunn::log_(gpunn::warp_sum(s));
    for (long long c = lane; c < cols; c += 32) logp[r * cols + c] = (z[c] - m) - log_s;
    if (lane == 0) {
      const long long label = labels[r];
      if (label < 0 || label >= cols) {
        error[1] = label;
        error[2] = cols;
        error[0] = 1;
        picked += gpunn::quiet_nan<T>();
      } else {
        picked += (z[label] - m) - log_s;
      }
    }
  }
  T total;
  if (gpunn::grid_sum(picked, partials, counter, &total) && threadIdx.x == 0) {
    loss[0] = -(total / T(rows));
  }
}

// dZ = (exp(logp) - onehot(labels)) * (dY / rows); dY is the 0-d upstream gradient.
template <typename T>
__global__ void cross_entropy_backward(const T* __restrict__ logp,
                                       const long long* __restrict__ labels,
                                       const T* __restrict__ dY, T* __restrict__ dZ,
                                       long long rows, long long cols) {
  const T scale = dY[0] / T(rows);
  const long long n = rows * cols;
  GPUNN_GRID_STRIDE(i, n) {
    const long long r = i / cols;
    const long long c = i - r * cols;
    T p = gpunn::exp_(logp[i]);
    if (labels[r] == c) p = p - T(1);
    dZ[i] = p * scale;
  }
}
