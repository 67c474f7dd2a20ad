// The linear layer's epilogues around cuBLAS: Z = X @ W.T comes from cuBLAS, then
//   linear_forward:  Z <- act(Z + b), in place, one pass;
//   linear_backward: dZ = act'(dY, Y) and db = column sums of dZ, one pass.
// Activation codes: gpunn::Activation (0 none, 1 relu, 2 sigmoid, 3 tanh).

#include "common.cuh"

// Y = act(Z + b) in place. Z (rows, cols) contiguous; b (cols,) when has_bias.
template <typename T>
__global__ void linear_forward(T* __restrict__ Z, const T* __restrict__ b, long long rows,
                               long long cols, int has_bias, int act) {
  const long long n = rows * cols;
  const long long stride = (long long)blockDim.x * gridDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  // The column advances by stride % cols each trip: no division per element.
  const long long col_step = stride % cols;
  for (long long col = i % cols; i < n; i += stride) {
    T z = Z[i];
    if (has_bias) z = z + b[col];
    Z[i] = gpunn::activate(z, act);
    col += col_step;
    if (col >= cols) col -= cols;
  }
}

// dZ = act'(dY, Y) (written only when write_dz) and db[c] = sum over rows of dZ[:, c]
// (when has_bias). Block (bx, by): bx consecutive columns per block, by threads walking the
// rows; the launcher picks bx = the power of two >= cols, at most 32, and bx * by = 256.
template <typename T>
__global__ void linear_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                                T* __restrict__ dZ, T* __restrict__ db, long long rows,
                                long long cols, int act, int has_bias, int write_dz) {
  __shared__ T partial[256];
  const long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  T acc = T(0);
  if (col < cols) {
    for (long long r = threadIdx.y; r < rows; r += blockDim.y) {
      const long long k = r * cols + col;
      const T g = gpunn::activation_grad(dY[k], Y[k], act);
      if (write_dz) dZ[k] = g;
      acc += g;
    }
  }
  if (!has_bias) return;
  const int t = threadIdx.y * blockDim.x + threadIdx.x;
  partial[t] = acc;
  __syncthreads();
  for (int stride = blockDim.y >> 1; stride > 0; stride >>= 1) {
    if ((int)threadIdx.y < stride) partial[t] += partial[t + stride * blockDim.x];
    __syncthreads();
  }
  if (threadIdx.y == 0 && col < cols) db[col] = partial[threadIdx.x];
}
