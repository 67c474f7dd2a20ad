// Activations and their gradients on contiguous arrays of n elements: sigmoid, tanh,
// relu and the Heaviside step, through common.cuh's vectorised map1/map2. The formulas are common.cuh's activate/activation_grad,
// which linear_forward/linear_backward fuse into their epilogues.

#include "common.cuh"

template <typename T>
__global__ void sigmoid_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return gpunn::sigmoid(x); });
}

// dX = dY * Y * (1 - Y).
template <typename T>
__global__ void sigmoid_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                                 T* __restrict__ dX, long long n) {
  gpunn::map2(dY, Y, dX, n, [](T dy, T y) { return gpunn::activation_grad(dy, y, gpunn::ACT_SIGMOID); });
}

template <typename T>
__global__ void tanh_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return gpunn::tanh_(x); });
}

// dX = dY * (1 - Y * Y).
template <typename T>
__global__ void tanh_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                              T* __restrict__ dX, long long n) {
  gpunn::map2(dY, Y, dX, n, [](T dy, T y) { return gpunn::activation_grad(dy, y, gpunn::ACT_TANH); });
}

template <typename T>
__global__ void relu_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return gpunn::activate(x, gpunn::ACT_RELU); });
}

// dX = dY where Y > 0, else 0.
template <typename T>
__global__ void relu_backward(const T* __restrict__ dY, const T* __restrict__ Y,
                              T* __restrict__ dX, long long n) {
  gpunn::map2(dY, Y, dX, n, [](T dy, T y) { return gpunn::activation_grad(dy, y, gpunn::ACT_RELU); });
}

// Heaviside step: 1 where x >= 0, else 0. Its gradient is zero (no kernel needed).
template <typename T>
__global__ void step_forward(const T* __restrict__ X, T* __restrict__ Y, long long n) {
  gpunn::map1(X, Y, n, [](T x) { return x >= T(0) ? T(1) : T(0); });
}
