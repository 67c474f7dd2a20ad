// Activations and their gradients on contiguous arrays of n elements: sigmoid, tanh,
// relu and the Heaviside step. The formulas are common.cuh's activate/activation_grad,
// which linear_forward/linear_backward fuse into their epilogues.

#include "common.cuh"

template <typename T>
__global__ void sigmoid_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = gpunn::sigmoid(X[i]); }
}

// dX = dY * Y * (1 - Y).
template <typename T>
__global__ void sigmoid_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                                 T* __restrict__ dX, long long n) {
  GPUNN_GRID_STRIDE(i, n) { dX[i] = gpunn::activation_grad(dY[i], Y[i], gpunn::ACT_SIGMOID); }
}

template <typename T>
__global__ void tanh_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = gpunn::tanh_(X[i]); }
}

// dX = dY * (1 - Y * Y).
template <typename T>
__global__ void tanh_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                              T* __restrict__ dX, long long n) {
  GPUNN_GRID_STRIDE(i, n) { dX[i] = gpunn::activation_grad(dY[i], Y[i], gpunn::ACT_TANH); }
}

template <typename T>
__global__ void relu_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = gpunn::activate(X[i], gpunn::ACT_RELU); }
}

// dX = dY where Y > 0, else 0.
template <typename T>
__global__ void relu_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                              T* __restrict__ dX, long long n) {
  GPUNN_GRID_STRIDE(i, n) { dX[i] = gpunn::activation_grad(dY[i], Y[i], gpunn::ACT_RELU); }
}

// Heaviside step: 1 where x >= 0, else 0. Its gradient is zero (no kernel needed).
template <typename T>
__global__ void step_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = X[i] >= T(0) ? T(1) : T(0); }
}
