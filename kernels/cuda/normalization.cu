// Batch normalisation and layer normalisation, forward and backward.
//
// Batch norm reads its (N, C, *) input as (N, C, S), S the product of the spatial sizes,
// and reduces per channel over N and S: one block per channel (striding over channels),
// sums in double, two-pass statistics (the mean, then the squared deviations from it).
// Layer norm reads its input as (M, D) rows and reduces per row, one warp per row. Every
// sum is taken in a fixed order, so results repeat bit for bit from run to run.

#include "common.cuh"

namespace gpunn {

// A block-wide double sum that every thread of the block receives.
__device__ __forceinline__ double block_sum_all(double v, double* scratch, double* result) {
  v = block_sum(v, scratch);
  if (threadIdx.x == 0) *result = v;
  __syncthreads();
  const double out = *result;
  __syncthreads();  // result may be written again by the next call
  return out;
}

// The elements j = start, start + step, ... of one channel of an (N, C, S) array, walked as
// (i, k) = (j / S, j % S) without a division per element: the element's offset is
// (i * C + ch) * S + k, and j < N * S exactly while i < N.
struct ChannelWalk {
  long long i, k, di, dk, s;
  __device__ __forceinline__ ChannelWalk(long long start, long long step, long long s_) : s(s_) {
    i = start / s, k = start % s, di = step / s, dk = step % s;
  }
  __device__ __forceinline__ void advance() {
    k += dk, i += di;
    if (k >= s) k -= s, ++i;
  }
};

// Row r handled by this thread's warp, stepping over the grid (warp-uniform).
#define GPUNN_NORM_WARP_ROWS(r, rows)                                                      \
  for (long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; r < (rows); \
       r += ((long long)gridDim.x * blockDim.x) >> 5)

}  // namespace gpunn

// Per channel of X (N, C, S): mean and biased variance over N and S.
template <typename T>
__global__ void batch_norm_stats(const T* __restrict__ X, T* __restrict__ mean,
                                 T* __restrict__ var, long long n, long long c, long long s) {
  __shared__ double scratch[32];
  __shared__ double result;
  const long long count = n * s;
  for (long long ch = blockIdx.x; ch < c; ch += gridDim.x) {
    double acc = 0.0;
    for (gpunn::ChannelWalk w(threadIdx.x, blockDim.x, s); w.i < n; w.advance()) {
      acc += (double)X[(w.i * c + ch) * s + w.k];
    }
    const double m = gpunn::block_sum_all(acc, scratch, &result) / (double)count;
    double acc2 = 0.0;
    for (gpunn::ChannelWalk w(threadIdx.x, blockDim.x, s); w.i < n; w.advance()) {
      const double d = (double)X[(w.i * c + ch) * s + w.k] - m;
      acc2 += d * d;
    }
    const double v = gpunn::block_sum_all(acc2, scratch, &result) / (double)count;
    if (threadIdx.x == 0) {
      mean[ch] = T(m);
      var[ch] = T(v);
    }
  }
}

// In place: running = (1 - factor) * running + factor * batch statistic, the variance times
// ``unbias`` (M / (M - 1): the unbiased estimate).
template <typename T>
__global__ void batch_norm_running(const T* __restrict__ mean, const T* __restrict__ var,
                                   T* __restrict__ running_mean, T* __restrict__ running_var,
                                   long long c, double factor, double unbias) {
  const double keep = 1.0 - factor;
  GPUNN_GRID_STRIDE(ch, c) {
    running_mean[ch] = T(keep * (double)running_mean[ch] + factor * (double)mean[ch]);
    running_var[ch] = T(keep * (double)running_var[ch] + factor * ((double)var[ch] * unbias));
  }
}

// Y = (X - mean) * invstd * weight + bias per channel, invstd = 1 / sqrt(var + eps); also
// writes invstd (C,). ``flags``: 1 = weight given, 2 = bias given.
template <typename T>
__global__ void batch_norm_forward(const T* __restrict__ X, const T* __restrict__ mean,
                                   const T* __restrict__ var, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ Y,
                                   T* __restrict__ invstd, long long n, long long c,
                                   long long s, double eps, int flags) {
  GPUNN_GRID_WALK(i, w, n * c * s, n, c, s) {
    const long long ch = w.c2;
    const T inv = T(1.0 / sqrt((double)var[ch] + eps));
    const T scale = (flags & 1) ? inv * weight[ch] : inv;
    const T shift = (flags & 2) ? bias[ch] : T(0);
    Y[i] = (X[i] - mean[ch]) * scale + shift;
    if (i < c) invstd[i] = T(1.0 / sqrt((double)var[i] + eps));
  }
}

// Per channel: the sums of dY and of dY * xhat over N and S (xhat = (X - mean) * invstd),
// and from them dbias = sum(dY), dweight = sum(dY * xhat) and dX: in training (batch
// statistics) scale * (dY - sum(dY) / M - xhat * sum(dY * xhat) / M), else dY * scale, with
// scale = weight * invstd. The running statistics' gradients: zero in training, else
// dmean = -scale * sum(dY), dvar = -scale * invstd * sum(dY * xhat) / 2.
// ``flags``: 1 = weight given, 2 = training; ``need``: 1 dX, 2 dweight, 4 dbias, 8 dmean,
// 16 dvar (outputs not needed are never written).
template <typename T>
__global__ void batch_norm_backward(const T* __restrict__ dY, const T* __restrict__ X,
                                    const T* __restrict__ mean, const T* __restrict__ invstd,
                                    const T* __restrict__ weight, T* __restrict__ dX,
                                    T* __restrict__ dweight, T* __restrict__ dbias,
                                    T* __restrict__ dmean, T* __restrict__ dvar, long long n,
                                    long long c, long long s, int flags, int need) {
  __shared__ double scratch[32];
  __shared__ double result;
  const long long count = n * s;
  const bool training = (flags & 2) != 0;
  for (long long ch = blockIdx.x; ch < c; ch += gridDim.x) {
    const T m = mean[ch];
    const T inv = invstd[ch];
    double sdy = 0.0, sdyx = 0.0;
    for (gpunn::ChannelWalk w(threadIdx.x, blockDim.x, s); w.i < n; w.advance()) {
      const long long at = (w.i * c + ch) * s + w.k;
      const double g = (double)dY[at];
      sdy += g;
      sdyx += g * (double)((X[at] - m) * inv);
    }
    sdy = gpunn::block_sum_all(sdy, scratch, &result);
    sdyx = gpunn::block_sum_all(sdyx, scratch, &result);
    const T scale = (flags & 1) ? inv * weight[ch] : inv;
    if (threadIdx.x == 0) {
      if (need & 2) dweight[ch] = T(sdyx);
      if (need & 4) dbias[ch] = T(sdy);
      if (need & 8) dmean[ch] = training ? T(0) : T(-(double)scale * sdy);
      if (need & 16) dvar[ch] = training ? T(0) : T(-0.5 * (double)scale * (double)inv * sdyx);
    }
    if (need & 1) {
      const double a = sdy / (double)count, b = sdyx / (double)count;
      for (gpunn::ChannelWalk w(threadIdx.x, blockDim.x, s); w.i < n; w.advance()) {
        const long long at = (w.i * c + ch) * s + w.k;
        if (training) {
          dX[at] = T((double)scale * ((double)dY[at] - a - (double)(X[at] - m) * (double)inv * b));
        } else {
          dX[at] = dY[at] * scale;
        }
      }
    }
  }
}

// Per row of X (M, D), one warp per row: Y = (X - mean) * invstd * weight + bias; writes
// mean and invstd (M,). ``flags``: 1 = weight given, 2 = bias given.
template <typename T>
__global__ void layer_norm_forward(const T* __restrict__ X, const T* __restrict__ weight,
                                   const T* __restrict__ bias, T* __restrict__ Y,
                                   T* __restrict__ mean, T* __restrict__ invstd,
                                   long long rows, long long d, double eps, int flags) {
  const int lane = threadIdx.x & 31;
  GPUNN_NORM_WARP_ROWS(r, rows) {
    const T* x = X + r * d;
    T* y = Y + r * d;
    double acc = 0.0;
    for (long long k = lane; k < d; k += 32) acc += (double)x[k];
    const double m = gpunn::warp_sum(acc) / (double)d;
    double acc2 = 0.0;
    for (long long k = lane; k < d; k += 32) {
      const double t = (double)x[k] - m;
      acc2 += t * t;
    }
    const double inv = 1.0 / sqrt(gpunn::warp_sum(acc2) / (double)d + eps);
    const T mr = T(m), ir = T(inv);
    if (lane == 0) {
      mean[r] = mr;
      invstd[r] = ir;
    }
    for (long long k = lane; k < d; k += 32) {
      T v = (x[k] - mr) * ir;
      if (flags & 1) v = v * weight[k];
      if (flags & 2) v = v + bias[k];
      y[k] = v;
    }
  }
}

// Per row, one warp per row: g = dY * weight (dY without weight), xhat = (X - mean) * invstd,
// dX = invstd * (g - mean(g) - xhat * mean(g * xhat)). ``flags``: 1 = weight given.
template <typename T>
__global__ void layer_norm_backward(const T* __restrict__ dY, const T* __restrict__ X,
                                    const T* __restrict__ mean, const T* __restrict__ invstd,
                                    const T* __restrict__ weight, T* __restrict__ dX,
                                    long long rows, long long d, int flags) {
  const int lane = threadIdx.x & 31;
  GPUNN_NORM_WARP_ROWS(r, rows) {
    const T* x = X + r * d;
    const T* gy = dY + r * d;
    T* out = dX + r * d;
    const T m = mean[r], inv = invstd[r];
    double sg = 0.0, sgx = 0.0;
    for (long long k = lane; k < d; k += 32) {
      const T g = (flags & 1) ? gy[k] * weight[k] : gy[k];
      sg += (double)g;
      sgx += (double)g * (double)((x[k] - m) * inv);
    }
    const double a = gpunn::warp_sum(sg) / (double)d;
    const double b = gpunn::warp_sum(sgx) / (double)d;
    for (long long k = lane; k < d; k += 32) {
      const T g = (flags & 1) ? gy[k] * weight[k] : gy[k];
      out[k] = T((double)inv * ((double)g - a - (double)(x[k] - m) * (double)inv * b));
    }
  }
}

// Column sums over the rows: dweight = sum(dY * xhat), dbias = sum(dY). ``need``: 1 dweight,
// 2 dbias. Blocks of (32, 8) threads: threadIdx.x picks one of the block's 32 columns,
// threadIdx.y one of 8 row lanes that sums rows y, y + 8, ... in order; the 8 lanes are then
// added in order, so the result repeats bit for bit.
template <typename T>
__global__ void layer_norm_affine_grad(const T* __restrict__ dY, const T* __restrict__ X,
                                       const T* __restrict__ mean, const T* __restrict__ invstd,
                                       T* __restrict__ dweight, T* __restrict__ dbias,
                                       long long rows, long long d, int need) {
  __shared__ double part_w[8][32];
  __shared__ double part_b[8][32];
  const long long k = (long long)blockIdx.x * 32 + threadIdx.x;
  double sw = 0.0, sb = 0.0;
  if (k < d) {
    for (long long r = threadIdx.y; r < rows; r += 8) {
      const T g = dY[r * d + k];
      sb += (double)g;
      sw += (double)g * (double)((X[r * d + k] - mean[r]) * invstd[r]);
    }
  }
  part_w[threadIdx.y][threadIdx.x] = sw;
  part_b[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && k < d) {
    double tw = 0.0, tb = 0.0;
    for (int y = 0; y < 8; ++y) {
      tw += part_w[y][threadIdx.x];
      tb += part_b[y][threadIdx.x];
    }
    if (need & 1) dweight[k] = T(tw);
    if (need & 2) dbias[k] = T(tb);
  }
}
