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

// ---------------------------------------------------------------- leaky_relu and gelu
// Their gradients are written in terms of the input X (what the backend saves).
namespace gpunn {
__device__ __forceinline__ float erf_(float x) { return erff(x); }
__device__ __forceinline__ double erf_(double x) { return erf(x); }
}  // namespace gpunn

// Y = X where X > 0, else negative_slope * X.
template <typename T>
__global__ void leaky_relu_forward(const T* __restrict__ X, T* __restrict__ Y, long long n,
                                   T negative_slope) {
  GPUNN_GRID_STRIDE(i, n) { Y[i] = X[i] > T(0) ? X[i] : X[i] * negative_slope; }
}

template <typename T>
__global__ void leaky_relu_backward(const T* __restrict__ dY, const T* __restrict__ X,
                                    T* __restrict__ dX, long long n, T negative_slope) {
  GPUNN_GRID_STRIDE(i, n) { dX[i] = X[i] > T(0) ? dY[i] : dY[i] * negative_slope; }
}

// 0.5 x (1 + erf(x / sqrt(2))), or with ``tanh_form`` 0.5 x (1 + tanh(k (x + c x^3))),
// k = sqrt(2 / pi), c = 0.044715.
template <typename T>
__global__ void gelu_forward(const T* __restrict__ X, T* __restrict__ Y, long long n,
                             int tanh_form) {
  const T half = T(0.5), one = T(1);
  const T k = T(0.7978845608028654), c = T(0.044715), r = T(0.7071067811865476);
  GPUNN_GRID_STRIDE(i, n) {
    const T v = X[i];
    Y[i] = tanh_form ? half * v * (one + gpunn::tanh_(k * (v + c * v * v * v)))
                     : half * v * (one + gpunn::erf_(v * r));
  }
}

// exact: Phi(x) + x phi(x); tanh form: 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
template <typename T>
__global__ void gelu_backward(const T* __restrict__ dY, const T* __restrict__ X,
                              T* __restrict__ dX, long long n, int tanh_form) {
  const T half = T(0.5), one = T(1);
  const T k = T(0.7978845608028654), c = T(0.044715), three_c = T(3 * 0.044715);
  const T r = T(0.7071067811865476), q = T(0.3989422804014327);
  GPUNN_GRID_STRIDE(i, n) {
    const T v = X[i];
    if (tanh_form) {
      const T t = gpunn::tanh_(k * (v + c * v * v * v));
      const T dt = k * (one + three_c * v * v);
      dX[i] = dY[i] * (half * (one + t) + half * v * (one - t * t) * dt);
    } else {
      const T cdf = half * (one + gpunn::erf_(v * r));
      dX[i] = dY[i] * (cdf + v * q * gpunn::exp_(-half * v * v));
    }
  }
}
