// Losses that reduce to a 0-d mean, each forward one launch (elementwise terms and a
// deterministic grid-wide sum, gpunn::grid_sum) and each backward one elementwise launch
// that reads the 0-d upstream gradient dY from device memory (no host round trip).
// need bit 0: write the gradient of the first input; bit 1: of the second.

#include "common.cuh"

// loss = mean((P - Tg)^2); D = P - Tg is kept for the backward.
template <typename T>
__global__ void mse_loss_forward(const T* __restrict__ P, const T* __restrict__ Tg,
                                 T* __restrict__ D, T* __restrict__ loss,
                                 T* __restrict__ partials, unsigned int* __restrict__ counter,
                                 long long n) {
  T acc = T(0);
  GPUNN_GRID_STRIDE(i, n) {
    const T d = P[i] - Tg[i];
    D[i] = d;
    acc += d * d;
  }
  T total;
  if (gpunn::grid_sum(acc, partials, counter, &total) && threadIdx.x == 0) loss[0] = total / T(n);
}

// dP = dY * 2 * D / n; dT = -dP.
template <typename T>
__global__ void mse_loss_backward(const T* __restrict__ D, const T* __restrict__ dY,
                                  T* __restrict__ dP, T* __restrict__ dT, long long n, int need) {
  const T dy2 = dY[0] * T(2);
  GPUNN_GRID_STRIDE(i, n) {
    const T g = dy2 * D[i] / T(n);
    if (need & 1) dP[i] = g;
    if (need & 2) dT[i] = -g;
  }
}

// loss = -mean(t log p + (1 - t) log(1 - p)), each log clamped at -100 (as PyTorch).
template <typename T>
__global__ void binary_cross_entropy_forward(const T* __restrict__ P, const T* __restrict__ Tg,
                                             T* __restrict__ loss, T* __restrict__ partials,
                                             unsigned int* __restrict__ counter, long long n) {
  T acc = T(0);
  GPUNN_GRID_STRIDE(i, n) {
    const T p = P[i];
    const T t = Tg[i];
    const T log_p = gpunn::maximum(gpunn::log_(p), T(-100));
    const T log_1mp = gpunn::maximum(gpunn::log_(T(1) - p), T(-100));
    acc += t * log_p + (T(1) - t) * log_1mp;
  }
  T total;
  if (gpunn::grid_sum(acc, partials, counter, &total) && threadIdx.x == 0) {
    loss[0] = -(total / T(n));
  }
}

// dP = dY * (P - T) / max(P (1 - P), 1e-12) / n; dT = dY * (log(1 - P) - log(P)) / n.
template <typename T>
__global__ void binary_cross_entropy_backward(const T* __restrict__ P, const T* __restrict__ Tg,
                                              const T* __restrict__ dY, T* __restrict__ dP,
                                              T* __restrict__ dT, long long n, int need) {
  const T dy = dY[0];
  const T floor = T(1e-12);
  GPUNN_GRID_STRIDE(i, n) {
    const T p = P[i];
    if (need & 1) dP[i] = dy * (p - Tg[i]) / gpunn::maximum(p * (T(1) - p), floor) / T(n);
    if (need & 2) {
      const T log_p = gpunn::maximum(gpunn::log_(p), T(-100));
      const T log_1mp = gpunn::maximum(gpunn::log_(T(1) - p), T(-100));
      dT[i] = dy * (log_1mp - log_p) / T(n);
    }
  }
}

// loss = mean(max(z, 0) - z t + log(1 + exp(-|z|))): BCE of sigmoid(z), never overflowing.
template <typename T>
__global__ void binary_cross_entropy_with_logits_forward(
    const T* __restrict__ Z, const T* __restrict__ Tg, T* __restrict__ loss,
    T* __restrict__ partials, unsigned int* __restrict__ counter, long long n) {
  T acc = T(0);
  GPUNN_GRID_STRIDE(i, n) {
    const T z = Z[i];
    acc += gpunn::maximum(z, T(0)) - z * Tg[i] + gpunn::log1p_(gpunn::exp_(-gpunn::abs_(z)));
  }
  T total;
  if (gpunn::grid_sum(acc, partials, counter, &total) && threadIdx.x == 0) loss[0] = total / T(n);
}

// dZ = dY * (sigmoid(Z) - T) / n; dT = dY * -Z / n.
template <typename T>
__global__ void binary_cross_entropy_with_logits_backward(const T* __restrict__ Z,
                                                          const T* __restrict__ Tg,
                                                          const T* __restrict__ dY,
                                                          T* __restrict__ dZ, T* __restrict__ dT,
                                                          long long n, int need) {
  const T dy = dY[0];
  GPUNN_GRID_STRIDE(i, n) {
    const T z = Z[i];
    if (need & 1) dZ[i] = dy * (gpunn::sigmoid(z) - Tg[i]) / T(n);
    if (need & 2) dT[i] = dy * -z / T(n);
  }
}
